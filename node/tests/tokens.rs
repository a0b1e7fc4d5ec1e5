//! Capability tokens on calls (BUS-048, decision 0098): a member's token lets
//! a stranger call a member capability; a bad token is refused with its code
//! and a token from an issuer without trust adds nothing.

#![allow(clippy::unwrap_used)]

mod common;

use hearthnet_node::NodeBuilder;
use hearthnet_sdk::client::Client;
use hearthnet_sdk::proto::hearthnet::auth::v1::{CapabilityToken, TokenScope};
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::node::v1 as node;
use hearthnet_sdk::token;
use hearthnet_sdk::wkt::Timestamp;
use prost::Message;

fn claims(sub: u8, exp_in: i64, scope: &str) -> CapabilityToken {
    let now = Timestamp::now().seconds;
    CapabilityToken {
        sub: common::key(sub).node_id().to_string(),
        iat: now - 7200,
        exp: now + exp_in,
        jti: ulid::Ulid::new().to_string(),
        scope: Some(TokenScope {
            capabilities: vec![scope.into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `node.capabilities` by key 9 with `token`: the wire code, or `None`.
async fn call(client: &Client, token: &str) -> Option<String> {
    let mut call = client.request(
        "node.capabilities",
        "1.0",
        PayloadEncoding::Proto,
        node::CapabilitiesRequest::default().encode_to_vec(),
    );
    call.token = token.to_string();
    hearthnet_sdk::signing::sign_call(&common::key(9), &mut call);
    let mut s = client.send(call, None).await.unwrap();
    loop {
        match s.next().await {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => return Some(e.wire_code().unwrap_or("?").to_string()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_lend_member_trust_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.trust.trusted = vec![common::key(2).node_id().to_string()];
    let n = NodeBuilder::new(config)
        .key(common::key(1))
        .start()
        .await
        .unwrap();
    let stranger = common::client(&n, 9).await;
    let issue = |by: u8, c: CapabilityToken| token::issue(&common::key(by), c).unwrap();

    assert_eq!(call(&stranger, "").await.as_deref(), Some("unauthorized"));
    let good = issue(2, claims(9, 600, "node.capabilities@1.0"));
    assert_eq!(
        call(&stranger, &good).await,
        None,
        "served with member trust"
    );
    // The operator's own tokens count too.
    let own = issue(1, claims(9, 600, "node.capabilities@1.0"));
    assert_eq!(call(&stranger, &own).await, None);

    let expired = issue(2, claims(9, -3600, "node.capabilities@1.0"));
    assert_eq!(
        call(&stranger, &expired).await.as_deref(),
        Some("token_expired")
    );
    let other_scope = issue(2, claims(9, 600, "diag.echo@1.0"));
    assert_eq!(
        call(&stranger, &other_scope).await.as_deref(),
        Some("token_scope_insufficient")
    );
    let for_someone_else = issue(2, claims(8, 600, "node.capabilities@1.0"));
    assert_eq!(
        call(&stranger, &for_someone_else).await.as_deref(),
        Some("unauthorized")
    );
    let self_issued = issue(9, claims(9, 600, "node.capabilities@1.0"));
    assert_eq!(
        call(&stranger, &self_issued).await.as_deref(),
        Some("unauthorized")
    );
    let mut wrong_aud = claims(9, 600, "node.capabilities@1.0");
    wrong_aud.aud = common::key(7).node_id().to_string();
    let wrong_aud = issue(2, wrong_aud);
    assert_eq!(
        call(&stranger, &wrong_aud).await.as_deref(),
        Some("unauthorized")
    );
    let mut forged = good.clone().into_bytes();
    let i = forged.len() - 40;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(
        call(&stranger, &forged).await.as_deref(),
        Some("token_invalid")
    );
    assert_eq!(
        call(&stranger, "hntoken://v1/nope").await.as_deref(),
        Some("bad_request")
    );
}
