//! Community logs between real nodes on loopback: joining as a pending
//! invitee, sync rounds, a partition healed without loss, hostile sync
//! callers, topic subscriptions and chat store-and-forward.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message;

use hearthnet_node::events::sync;
use hearthnet_node::{NodeBuilder, RunningNode};
use hearthnet_sdk::client::{CallItem, ClientError};
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::chat::v1 as chat;
use hearthnet_sdk::proto::hearthnet::community::v1 as cm;
use hearthnet_sdk::proto::hearthnet::event::v1 as ev;
use hearthnet_sdk::proto::hearthnet::market::v1 as market;

fn id(n: u8) -> String {
    common::key(n).node_id().to_string()
}

async fn start(n: u8, dir: &std::path::Path, root: u8) -> RunningNode {
    let mut c = common::config(dir);
    c.community.community_id = Some(id(root));
    c.community.sync_interval_seconds = 86_400;
    NodeBuilder::new(c)
        .key(common::key(n))
        .start()
        .await
        .unwrap()
}

async fn invite(by: &RunningNode, who: u8) {
    let req = cm::InviteRequest {
        params: Some(Default::default()),
        input: Some(cm::InviteInput {
            invitee_node_id: id(who),
            ..Default::default()
        }),
    };
    let _: cm::InviteResponse = by
        .bus()
        .unary("community.invite", "1.0", &req)
        .await
        .unwrap();
}

async fn post(node: &RunningNode, title: &str) -> String {
    let req = market::CreatePostRequest {
        params: Some(Default::default()),
        input: Some(market::CreatePostInput {
            client_id: title.to_string(),
            category: market::PostCategory::Offer as i32,
            title: title.to_string(),
            body: format!("body of {title}"),
            ..Default::default()
        }),
    };
    let r: market::CreatePostResponse = node.bus().unary("market.post", "1.0", &req).await.unwrap();
    r.output.unwrap().event_id
}

async fn list(node: &RunningNode) -> Vec<String> {
    let req = market::ListPostsRequest {
        params: Some(Default::default()),
        input: Some(market::ListPostsInput {
            limit: Some(500),
            ..Default::default()
        }),
    };
    let r: market::ListPostsResponse = node.bus().unary("market.list", "1.0", &req).await.unwrap();
    r.output
        .unwrap()
        .posts
        .into_iter()
        .map(|p| format!("{} {} {}", p.event_id, p.author, p.title))
        .collect()
}

async fn round(from: &RunningNode, to: &RunningNode) -> sync::RoundStats {
    sync::round(from.events().unwrap(), &to.url())
        .await
        .unwrap()
}

fn ids(node: &RunningNode) -> BTreeSet<String> {
    node.events().unwrap().ids().unwrap().into_iter().collect()
}

/// A (root) invites B and C; both join through A as pending invitees.
async fn community(dirs: &[tempfile::TempDir; 3]) -> [RunningNode; 3] {
    let a = start(1, dirs[0].path(), 1).await;
    let b = start(2, dirs[1].path(), 1).await;
    let c = start(3, dirs[2].path(), 1).await;
    invite(&a, 2).await;
    invite(&a, 3).await;
    b.join_community(&a.url()).await.unwrap();
    c.join_community(&a.url()).await.unwrap();
    round(&b, &a).await;
    round(&c, &a).await;
    for n in [&a, &b, &c] {
        let m = n.events().unwrap().membership();
        for who in [1, 2, 3] {
            assert!(m.is_member(&id(who)), "{who} is a member everywhere");
        }
    }
    [a, b, c]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_without_loss_in_one_round() {
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let [a, b, c] = community(&dirs).await;
    // Split {A} | {B, C}: nobody is a peer of anybody on the bus, so no
    // pushes cross; B and C sync with each other by hand.
    let mut written = BTreeSet::new();
    for i in 0..20 {
        let (ta, tb, tc) = (format!("a{i}"), format!("b{i}"), format!("c{i}"));
        let (x, y, z) = tokio::join!(post(&a, &ta), post(&b, &tb), post(&c, &tc));
        written.extend([x, y, z]);
        if i % 5 == 4 {
            round(&b, &c).await;
        }
    }
    round(&b, &c).await;
    assert_eq!(ids(&b), ids(&c));
    assert_ne!(ids(&a), ids(&b), "the partition kept A apart");
    // Heal: one round from A to each side.
    let s1 = round(&a, &b).await;
    let s2 = round(&a, &c).await;
    assert!(s1.fetched >= 40 && s1.pushed >= 20, "{s1:?}");
    assert_eq!(s2.refused, 0, "{s2:?}");
    let all = ids(&a);
    assert_eq!(all, ids(&b));
    assert_eq!(all, ids(&c));
    for w in &written {
        assert!(all.contains(w), "event {w} lost");
    }
    // Same views everywhere.
    let la = list(&a).await;
    assert_eq!(la.len(), 60);
    assert_eq!(la, list(&b).await);
    assert_eq!(la, list(&c).await);
    let ma = a.events().unwrap().membership();
    assert_eq!(ma, b.events().unwrap().membership());
    assert_eq!(ma, c.events().unwrap().membership());
    for n in [a, b, c] {
        assert!(n.events().unwrap().verify_stored().is_ok());
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_refuses_strangers_oversized_batches_and_garbage() {
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let [a, b, c] = community(&dirs).await;
    let before = ids(&a);
    // A stranger (key 7) is neither member nor invitee.
    let stranger = common::client(&a, 7).await.with_community(id(1));
    let heads = ev::SyncHeadsRequest::default();
    let err = stranger
        .unary::<_, ev::SyncHeadsResponse>("event.sync.heads", "1.0", &heads)
        .await
        .unwrap_err();
    assert_eq!(err.wire_code(), Some("unauthorized"), "{err}");
    // A member pushing 257 events.
    let member = common::client(&a, 2).await.with_community(id(1));
    let big = ev::SyncPushRequest {
        params: None,
        input: Some(ev::SyncPushInput {
            events: vec![ev::SignedEvent::default(); 257],
        }),
    };
    let err = member
        .unary::<_, ev::SyncPushResponse>("event.sync.push", "1.0", &big)
        .await
        .unwrap_err();
    assert_eq!(err.wire_code(), Some("bad_request"), "{err}");
    // Garbage events are refused one by one; the store is untouched.
    let junk = ev::SyncPushRequest {
        params: None,
        input: Some(ev::SyncPushInput {
            events: vec![
                ev::SignedEvent {
                    event: vec![0xde, 0xad, 0xbe, 0xef],
                    signature: vec![0; 64],
                },
                ev::SignedEvent::default(),
            ],
        }),
    };
    let out = member
        .unary::<_, ev::SyncPushResponse>("event.sync.push", "1.0", &junk)
        .await
        .unwrap()
        .output
        .unwrap();
    assert_eq!(out.accepted, 0);
    assert_eq!(out.rejected.len(), 2);
    assert!(
        out.rejected
            .iter()
            .all(|r| r.reason == ev::SyncRejectReason::Malformed as i32)
    );
    // A payload that is not a push request at all.
    let call = member.request(
        "event.sync.push",
        "1.0",
        PayloadEncoding::Proto,
        vec![0xff; 9],
    );
    let mut stream = member.send(call, None).await.unwrap();
    let err = loop {
        match stream.next().await {
            Err(e) => break e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("garbage accepted"),
        }
    };
    assert!(matches!(err, ClientError::Remote(_)), "{err}");
    assert_eq!(err.wire_code(), Some("bad_request"));
    // Bad topic filters.
    let mut stream = common::subscribe(&member, &["market*"]).await.unwrap();
    let err = stream.next().await.unwrap_err();
    assert_eq!(err.wire_code(), Some("bad_request"));
    assert_eq!(ids(&a), before);
    // The HTTP binding serves the same capabilities (loopback operator).
    let (status, _, body) = common::http(
        a.addr(),
        "POST",
        "/bus/v1/call",
        &[
            ("X-HearthNet-Capability", "event.sync.heads"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["output"]["heads"].as_array().unwrap().len(), 3, "{body}");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_receive_new_events_on_their_topics() {
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let [a, b, c] = community(&dirs).await;
    let member = common::client(&a, 2).await.with_community(id(1));
    let mut stream = common::subscribe(&member, &["marketplace.*"])
        .await
        .unwrap();
    // Let the subscription register, then post.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let posted = post(&a, "ladder").await;
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let CallItem::Data(data) = item else {
        panic!("expected a data frame, got {item:?}")
    };
    let frame = ev::SubscribeResponse::decode(data.as_slice()).unwrap();
    let Some(ev::subscribe_response::Frame::Message(m)) = frame.frame else {
        panic!("no message")
    };
    assert_eq!(m.topic, "marketplace.post.created");
    assert_eq!(m.r#type, "market.post.created");
    let Some(ev::topic_message::Body::Event(se)) = m.body else {
        panic!("log events travel as signed events")
    };
    assert_eq!(
        format!("blake3:{}", blake3::hash(&se.encode_to_vec()).to_hex()),
        posted
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

async fn history(node: &RunningNode) -> Vec<chat::ChatMessage> {
    let req = chat::HistoryRequest {
        params: Some(Default::default()),
        input: Some(Default::default()),
    };
    let r: chat::HistoryResponse = node.bus().unary("chat.history", "1.0", &req).await.unwrap();
    r.output.unwrap().messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_an_offline_member_through_a_third_node() {
    let dirs = [
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    ];
    let [a, b, c] = community(&dirs).await;
    // C goes offline.
    c.shutdown().await;
    let req = chat::SendRequest {
        params: Some(Default::default()),
        input: Some(chat::SendInput {
            client_id: "m1".into(),
            recipient: id(3),
            body: "the generator is free on Saturday".into(),
            attachments: vec![],
        }),
    };
    let sent: chat::SendResponse = a.bus().unary("chat.send", "1.0", &req).await.unwrap();
    let sent = sent.output.unwrap();
    assert_eq!(sent.delivered, chat::DeliveryStatus::Queued as i32);
    // B holds it for C; A goes offline.
    round(&b, &a).await;
    a.shutdown().await;
    // C comes back and syncs with B only.
    let c = start(3, dirs[2].path(), 1).await;
    round(&c, &b).await;
    let got = history(&c).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "the generator is free on Saturday");
    assert_eq!(got[0].from, id(1));
    // C's node acknowledges; the receipt travels back through B to A.
    let mut acked = false;
    for _ in 0..50 {
        if c.events().unwrap().ids().unwrap().len() > ids(&b).len() {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(acked, "C appended a delivery receipt");
    round(&c, &b).await;
    let a = start(1, dirs[0].path(), 1).await;
    round(&a, &b).await;
    let mine = history(&a).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].event_id, sent.event_id);
    assert!(
        mine[0].delivered_at.is_some(),
        "A sees C's delivery receipt"
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
