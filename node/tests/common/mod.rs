//! Shared helpers for the node's integration tests: in-process nodes on
//! loopback with fixed keys, signed clients and a tiny HTTP/1.1 client.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use hearthnet_node::config::Config;
use hearthnet_node::{NodeBuilder, RunningNode};
use hearthnet_sdk::client::Client;
use hearthnet_sdk::identity::SecretKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A deterministic key.
pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// A loopback configuration on a free port with its own data directory.
pub fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.transport.host = "127.0.0.1".into();
    c.transport.port = 0;
    c.transport.first_byte_timeout_seconds = 1;
    c.transport.shutdown_grace_seconds = 5;
    c.discovery.mdns_enabled = false;
    c.discovery.udp_enabled = false;
    c.emergency.enabled = false;
    // Tests that need models turn them on; the rest start fast.
    c.models.enabled = false;
    c.paths.data_dir = Some(dir.to_path_buf());
    c
}

/// Starts a node with key `n` and default services.
pub async fn node(n: u8, dir: &std::path::Path) -> RunningNode {
    NodeBuilder::new(config(dir))
        .key(key(n))
        .start()
        .await
        .unwrap()
}

/// A client for `node` signing as key `n`.
pub async fn client(node: &RunningNode, n: u8) -> Client {
    Client::connect(&node.url(), key(n)).await.unwrap()
}

/// A client with a shared key.
pub async fn client_with(node: &RunningNode, k: Arc<SecretKey>) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(node.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Client::with_channel(channel, k)
}

/// One HTTP/1.1 exchange: returns (status, headers text, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Opens an `event.subscribe` stream on `client` for `topics`.
pub async fn subscribe(
    client: &Client,
    topics: &[&str],
) -> Result<hearthnet_sdk::client::CallStream, hearthnet_sdk::client::ClientError> {
    use hearthnet_sdk::proto::hearthnet::event::v1 as ev;
    use prost::Message;
    let sub = ev::SubscribeRequest {
        params: None,
        input: Some(ev::SubscribeInput {
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }),
    };
    let call = client.request(
        "event.subscribe",
        "1.0",
        hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding::Proto,
        sub.encode_to_vec(),
    );
    client.send(call, None).await
}
