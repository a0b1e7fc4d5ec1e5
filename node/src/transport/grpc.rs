//! The gRPC binding: `hearthnet.bus.v1.BusService` (`Call`, `Open`).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use hearthnet_sdk::proto::hearthnet::bus::v1::bus_service_server::BusService;
use hearthnet_sdk::proto::hearthnet::bus::v1::{
    CallRequest, CallResponse, Frame, OpenRequest, OpenResponse, frame, open_request,
};

use crate::bus::{Bus, Inbound, error_frame};
use crate::error::CallError;

/// The `BusService` implementation over a [`Bus`].
#[derive(Debug, Clone)]
pub struct GrpcBus {
    bus: Bus,
}

impl GrpcBus {
    /// Serves `bus`.
    pub fn new(bus: Bus) -> Self {
        Self { bus }
    }
}

/// Parses the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type CallStream = Pin<Box<dyn Stream<Item = Result<CallResponse, Status>> + Send>>;
type OpenStream = Pin<Box<dyn Stream<Item = Result<OpenResponse, Status>> + Send>>;

#[tonic::async_trait]
impl BusService for GrpcBus {
    type CallStream = CallStream;
    type OpenStream = OpenStream;

    async fn call(
        &self,
        request: Request<CallRequest>,
    ) -> Result<Response<Self::CallStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let frames = self.bus.serve(
            request.into_inner(),
            Inbound {
                timeout,
                input: None,
            },
        );
        let out = frames.map(|frame| Ok(CallResponse { frame: Some(frame) }));
        Ok(Response::new(Box::pin(out)))
    }

    async fn open(
        &self,
        request: Request<Streaming<OpenRequest>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let mut incoming = request.into_inner();
        let first = incoming.next().await;
        let call = match first {
            Some(Ok(OpenRequest {
                kind: Some(open_request::Kind::Call(call)),
            })) => call,
            Some(Err(status)) => return Err(status),
            _ => {
                let e = CallError::bad_request("the first message of Open must be a call header");
                let one = tokio_stream::once(Ok(OpenResponse {
                    frame: Some(error_frame(0, &e)),
                }));
                return Ok(Response::new(Box::pin(one)));
            }
        };
        // Client frames after the header go to the service (data) or are
        // ignored (acks: this provider does not wait for them); a second
        // call header is a protocol violation (BUS-004) and ends the stream
        // with bad_request.
        let (in_tx, in_rx) =
            tokio::sync::mpsc::channel(hearthnet_sdk::constants::STREAM_WINDOW_FRAMES as usize);
        let (bad_tx, mut bad_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            while let Some(Ok(m)) = incoming.next().await {
                match m.kind {
                    Some(open_request::Kind::Call(_)) => {
                        let _ = bad_tx.send(());
                        return;
                    }
                    Some(open_request::Kind::Frame(Frame {
                        seq,
                        kind: Some(frame::Kind::Data(bytes)),
                    })) => {
                        let Ok(()) = in_tx.send((seq, bytes)).await else {
                            return;
                        };
                    }
                    // The client gave up: end its input.
                    Some(open_request::Kind::Frame(Frame {
                        kind: Some(frame::Kind::Error(_)),
                        ..
                    })) => return,
                    _ => {}
                }
            }
        });
        let frames = self.bus.serve(
            call,
            Inbound {
                timeout,
                input: Some(in_rx),
            },
        );
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        tokio::spawn(async move {
            let mut frames = frames;
            let mut seq = 0u64;
            let mut watching = true;
            loop {
                tokio::select! {
                    f = frames.next() => match f {
                        Some(frame) => {
                            seq = frame.seq + 1;
                            if tx.send(Ok(OpenResponse { frame: Some(frame) })).await.is_err() { return; }
                        }
                        None => return,
                    },
                    bad = &mut bad_rx, if watching => {
                        if bad.is_ok() {
                            let e = CallError::bad_request("a second call header on one Open stream");
                            let _ = tx.send(Ok(OpenResponse { frame: Some(error_frame(seq, &e)) })).await;
                            return;
                        }
                        watching = false;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
