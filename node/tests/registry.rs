//! `protocol.registry.list` and `protocol.registry.announce` (PROTO-004/005):
//! the node's own entry, signed announcements, conflicts kept, filters, bad
//! signatures and descriptors refused, entries kept across a restart.

#![allow(clippy::unwrap_used)]

mod common;

use hearthnet_node::NodeBuilder;
use hearthnet_sdk::client::Client;
use hearthnet_sdk::proto::hearthnet::conformance::v1::{ReportRef, Verdict};
use hearthnet_sdk::proto::hearthnet::protocol::v1 as proto;
use hearthnet_sdk::records::sign_registry_announce;

fn descriptor(name: &str, versions: &[&str]) -> proto::ImplementationDescriptor {
    proto::ImplementationDescriptor {
        name: name.into(),
        vendor: "example.org".into(),
        version: "0.3.0".into(),
        protocol_versions: versions.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

async fn announce(
    client: &Client,
    key: u8,
    input: proto::AnnounceRegistryInput,
    sign: bool,
) -> Result<proto::RegistryEntry, hearthnet_sdk::client::ClientError> {
    let mut input = input;
    if sign {
        sign_registry_announce(&common::key(key), &mut input);
    }
    let r: proto::AnnounceRegistryResponse = client
        .unary(
            "protocol.registry.announce",
            "1.0",
            &proto::AnnounceRegistryRequest {
                params: None,
                input: Some(input),
            },
        )
        .await?;
    Ok(r.output.unwrap().entry.unwrap())
}

async fn list(client: &Client, input: proto::ListRegistryInput) -> Vec<proto::RegistryEntry> {
    let r: proto::ListRegistryResponse = client
        .unary(
            "protocol.registry.list",
            "1.0",
            &proto::ListRegistryRequest {
                params: None,
                input: Some(input),
            },
        )
        .await
        .unwrap();
    r.output.unwrap().entries
}

fn names(entries: &[proto::RegistryEntry]) -> Vec<(String, String)> {
    let mut v: Vec<_> = entries
        .iter()
        .map(|e| (e.descriptor.clone().unwrap().name, e.node.clone()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_are_verified_kept_filtered_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::node(1, dir.path()).await;
    let me = node.bus().node_id().to_string();
    let (a, b) = (
        common::client(&node, 5).await,
        common::client(&node, 6).await,
    );
    let id = |n: u8| common::key(n).node_id().to_string();

    // The node lists itself first, with no reports yet.
    let all = list(&a, Default::default()).await;
    assert_eq!(names(&all), vec![("hearthnet-rs".into(), me.clone())]);
    assert_eq!(all[0].source, proto::RegistrySource::Local as i32);

    // Two nodes announce the same name: both entries are kept (PROTO-004).
    let passing = ReportRef {
        report_cid: format!("blake3:{}", "ab".repeat(32)),
        overall: Verdict::Pass as i32,
        ..Default::default()
    };
    let e = announce(
        &a,
        5,
        proto::AnnounceRegistryInput {
            descriptor: Some(descriptor("hearthnet-py", &["0.1.0"])),
            reports: vec![passing],
            signature: vec![],
        },
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        (e.node.as_str(), e.source),
        (id(5).as_str(), proto::RegistrySource::Peer as i32)
    );
    announce(
        &b,
        6,
        proto::AnnounceRegistryInput {
            descriptor: Some(descriptor("hearthnet-py", &["9.0.0"])),
            ..Default::default()
        },
        true,
    )
    .await
    .unwrap();
    let all = list(&a, Default::default()).await;
    assert_eq!(all.len(), 3);
    // Filters: protocol major and passing reports.
    let major9 = list(
        &a,
        proto::ListRegistryInput {
            protocol_major: Some(9),
            passing_only: false,
        },
    )
    .await;
    assert_eq!(names(&major9), vec![("hearthnet-py".into(), id(6))]);
    let passing = list(
        &a,
        proto::ListRegistryInput {
            protocol_major: None,
            passing_only: true,
        },
    )
    .await;
    assert_eq!(names(&passing), vec![("hearthnet-py".into(), id(5))]);

    // A signature by another key, or none, is invalid_signature (PROTO-005).
    let forged = announce(
        &b,
        5,
        proto::AnnounceRegistryInput {
            descriptor: Some(descriptor("forged", &["0.1.0"])),
            ..Default::default()
        },
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(forged.wire_code(), Some("invalid_signature"));
    let unsigned = announce(
        &b,
        6,
        proto::AnnounceRegistryInput {
            descriptor: Some(descriptor("unsigned", &["0.1.0"])),
            ..Default::default()
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(unsigned.wire_code(), Some("invalid_signature"));
    // A descriptor without a name or with a malformed version.
    for d in [
        descriptor("", &["0.1.0"]),
        descriptor("x", &["1.0"]),
        descriptor("x", &[]),
    ] {
        let e = announce(
            &b,
            6,
            proto::AnnounceRegistryInput {
                descriptor: Some(d),
                ..Default::default()
            },
            true,
        )
        .await
        .unwrap_err();
        assert_eq!(e.wire_code(), Some("protocol_descriptor_invalid"));
    }
    assert_eq!(list(&a, Default::default()).await.len(), 3);

    // Entries survive a restart.
    node.shutdown().await;
    let node = NodeBuilder::new(common::config(dir.path()))
        .key(common::key(1))
        .start()
        .await
        .unwrap();
    let a = common::client(&node, 5).await;
    let all = list(&a, Default::default()).await;
    assert_eq!(
        names(&all),
        vec![
            ("hearthnet-py".into(), id(5)),
            ("hearthnet-py".into(), id(6)),
            ("hearthnet-rs".into(), me),
        ]
    );
}
