//! gRPC health checking and server reflection, as grpcurl uses them.

#![allow(clippy::unwrap_used)]

mod common;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_list_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(90, dir.path()).await;
    let channel = tonic::transport::Endpoint::from_shared(node.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    // The reporter is set right after start; poll briefly for it.
    let mut status = ServingStatus::Unknown;
    for _ in 0..50 {
        let r = health
            .check(HealthCheckRequest {
                service: "hearthnet.bus.v1.BusService".into(),
            })
            .await;
        if let Ok(r) = r {
            status = r.into_inner().status();
            if status == ServingStatus::Serving {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"hearthnet.bus.v1.BusService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("hearthnet.llm")),
        "catalogue services are reached through the bus, not listed: {names:?}"
    );

    // The descriptor of the bus service resolves with its dependencies.
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "hearthnet.bus.v1.BusService".into(),
        )),
    };
    let mut stream = ServerReflectionClient::new(
        tonic::transport::Endpoint::from_shared(node.url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
    .server_reflection_info(tokio_stream::iter(vec![req]))
    .await
    .unwrap()
    .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else {
        panic!("no descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    node.shutdown().await;
}
