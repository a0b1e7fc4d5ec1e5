//! The generated gRPC code works end to end: a `BusService` server on
//! loopback answers `Call` with typed frames that the generated client reads.

use std::pin::Pin;

use hearthnet_sdk::proto::hearthnet::bus::v1::{
    CallRequest, CallResponse, Done, Frame, OpenRequest, OpenResponse,
    bus_service_client::BusServiceClient,
    bus_service_server::{BusService, BusServiceServer},
    frame,
};
use hearthnet_sdk::proto::hearthnet::embed::v1::{
    EmbedTextOutput, EmbedTextRequest, EmbedTextResponse, Embedding,
};
use prost::Message;
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

struct Echo;

type FrameStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl BusService for Echo {
    type CallStream = FrameStream<CallResponse>;
    type OpenStream = FrameStream<OpenResponse>;

    async fn call(
        &self,
        request: Request<CallRequest>,
    ) -> Result<Response<Self::CallStream>, Status> {
        let call = request.into_inner();
        if call.capability != "embed.text" {
            return Err(Status::not_found(call.capability));
        }
        let req = EmbedTextRequest::decode(call.payload.as_slice())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let texts = req.input.map(|i| i.texts).unwrap_or_default();
        let out = EmbedTextResponse {
            output: Some(EmbedTextOutput {
                embeddings: texts
                    .iter()
                    .map(|t| Embedding {
                        values: vec![t.len() as f32],
                    })
                    .collect(),
                dim: 1,
            }),
            meta: None,
        };
        let frames = vec![
            Ok(CallResponse {
                frame: Some(Frame {
                    seq: 0,
                    kind: Some(frame::Kind::Data(out.encode_to_vec())),
                }),
            }),
            Ok(CallResponse {
                frame: Some(Frame {
                    seq: 1,
                    kind: Some(frame::Kind::Done(Done {
                        frames: 1,
                        ..Default::default()
                    })),
                }),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(frames))))
    }

    async fn open(
        &self,
        _request: Request<Streaming<OpenRequest>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        Err(Status::unimplemented("open"))
    }
}

#[tokio::test]
async fn bus_call_round_trips_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BusServiceServer::new(Echo))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut client = BusServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let payload: EmbedTextRequest = hearthnet_sdk::json::from_json(
        r#"{"params":{"model":"m"},"input":{"texts":["hello","hi"]}}"#,
    )
    .expect("json");
    let call = CallRequest {
        capability: "embed.text".into(),
        min_version: "1.0".into(),
        payload: payload.encode_to_vec(),
        ..Default::default()
    };
    let mut stream = client.call(call).await.expect("call").into_inner();
    let mut frames = Vec::new();
    while let Some(f) = stream.next().await {
        frames.push(f.expect("frame").frame.expect("frame set"));
    }
    assert_eq!(frames.len(), 2);
    let Some(frame::Kind::Data(data)) = &frames[0].kind else {
        panic!("first frame is data: {:?}", frames[0])
    };
    let resp = EmbedTextResponse::decode(data.as_slice()).expect("typed response");
    let values: Vec<f32> = resp
        .output
        .expect("output")
        .embeddings
        .iter()
        .map(|e| e.values[0])
        .collect();
    assert_eq!(values, vec![5.0, 2.0]);
    assert!(matches!(frames[1].kind, Some(frame::Kind::Done(_))));

    let err = client
        .call(CallRequest {
            capability: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("not found");
    assert_eq!(err.code(), tonic::Code::NotFound);
    server.abort();
}
