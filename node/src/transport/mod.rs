//! Transport: one TCP port serving gRPC (HTTP/2) and the HTTP/JSON binding
//! (HTTP/1.1 or HTTP/2), with TCP_NODELAY on every socket, a cap on
//! connections, a first-byte timeout for connections that send nothing,
//! message size limits and graceful shutdown that lets in-flight calls finish.

pub mod grpc;
pub mod http;
pub mod openai;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use hearthnet_sdk::constants as k;
use hearthnet_sdk::proto::hearthnet::bus::v1::bus_service_server::BusServiceServer;

use crate::bus::Bus;
use http::{HttpState, PeerAddr};

/// Limits of the server loop.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// A connection silent for this long after opening is closed.
    pub first_byte_timeout: Duration,
    /// How long shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
}

/// Builds the combined router: gRPC bus, health, reflection and HTTP routes.
pub fn app(bus: Bus, state: HttpState) -> axum::Router {
    let grpc = BusServiceServer::new(grpc::GrpcBus::new(bus))
        .max_decoding_message_size(k::BUS_MAX_MESSAGE_BYTES as usize)
        .max_encoding_message_size(k::BUS_MAX_MESSAGE_BYTES as usize);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // The bus is serving as soon as the router exists.
    tokio::spawn(async move {
        health_reporter
            .set_serving::<BusServiceServer<grpc::GrpcBus>>()
            .await;
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(served_descriptors())
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .ok();
    let mut routes = tonic::service::Routes::new(grpc).add_service(health);
    if let Some(r) = reflection {
        routes = routes.add_service(r);
    }
    routes
        .into_axum_router()
        .merge(http::router(state.clone()))
        .merge(openai::router(state))
        .layer(axum::extract::DefaultBodyLimit::max(
            k::BUS_MAX_MESSAGE_BYTES as usize,
        ))
}

/// The descriptors of what this server actually serves over gRPC: the bus
/// file and its imports. The capability services of the catalogue are
/// reached through `BusService`, so reflection does not list them; their
/// message types are in the published `protocol/generated/descriptor.binpb`.
fn served_descriptors() -> prost_types::FileDescriptorSet {
    use prost::Message;
    let all =
        prost_types::FileDescriptorSet::decode(hearthnet_sdk::DESCRIPTOR_SET).unwrap_or_default();
    let by_name: std::collections::HashMap<String, &prost_types::FileDescriptorProto> =
        all.file.iter().map(|f| (f.name().to_string(), f)).collect();
    let mut wanted = vec!["hearthnet/bus/v1/bus.proto".to_string()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if seen.insert(name.clone())
            && let Some(f) = by_name.get(&name)
        {
            wanted.extend(f.dependency.iter().cloned());
        }
    }
    prost_types::FileDescriptorSet {
        file: all
            .file
            .iter()
            .filter(|f| seen.contains(f.name()))
            .cloned()
            .collect(),
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits up to
/// the grace period for open connections (and their calls) to finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let first_byte = limits.first_byte_timeout;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let mut probe = [0u8; 1];
            match tokio::time::timeout(first_byte, stream.peek(&mut probe)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    tracing::debug!(%peer, "closing a connection that sent nothing");
                    return;
                }
            }
            let svc =
                app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req.map(axum::body::Body::new)
                });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(first_byte)
                .max_buf_size(64 * 1024);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .adaptive_window(true)
                .max_header_list_size(64 * 1024);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
        }
    }
}

/// The address a listener is bound to, as a peer-facing URL.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
