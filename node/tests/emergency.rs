//! The connectivity detector against local DNS probe servers: all probes
//! answering → ONLINE; probes failing → DEGRADED → OFFLINE after the
//! debounce, with the event log switched to its emergency cadence; recovery
//! → ONLINE; operator overrides.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hearthnet_node::NodeBuilder;
use hearthnet_sdk::proto::hearthnet::emergency::v1 as pb;

/// A DNS responder on loopback that answers NOERROR while `up`.
async fn responder(up: Arc<AtomicBool>) -> std::net::SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if !up.load(Ordering::SeqCst) || n < 12 {
                continue;
            }
            let mut r = buf[..n].to_vec();
            r[2] = 0x81; // QR, RD
            r[3] = 0x80; // RA, NOERROR
            let _ = sock.send_to(&r, from).await;
        }
    });
    addr
}

async fn status(node: &hearthnet_node::RunningNode) -> pb::EmergencyState {
    let r: pb::StatusResponse = node
        .bus()
        .unary("emergency.status", "1.0", &pb::StatusRequest::default())
        .await
        .unwrap();
    r.output.unwrap().state.unwrap()
}

async fn wait_mode(
    node: &hearthnet_node::RunningNode,
    mode: pb::Mode,
    limit: Duration,
) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if status(node).await.mode == mode as i32 {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "mode {mode:?} not reached within {limit:?}: {:?}",
        status(node).await
    );
}

fn set_request(o: pb::ModeOverride) -> pb::SetModeRequest {
    pb::SetModeRequest {
        params: None,
        input: Some(pb::SetModeInput {
            r#override: o as i32,
        }),
    }
}

async fn set_mode(
    node: &hearthnet_node::RunningNode,
    o: pb::ModeOverride,
) -> Result<pb::SetModeResponse, hearthnet_node::error::CallError> {
    node.bus()
        .unary("emergency.mode.set", "1.0", &set_request(o))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_drive_the_mode_and_overrides_win() {
    let up = Arc::new(AtomicBool::new(true));
    let a = responder(up.clone()).await;
    let b = responder(up.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = common::config(dir.path());
    c.community.community_id = Some(common::key(1).node_id().to_string());
    c.emergency.enabled = true;
    c.emergency.probe_targets = vec![
        format!("dns://{a}/probe.test"),
        format!("dns://{b}/probe.test"),
    ];
    c.emergency.transition_debounce_seconds = 3;
    c.emergency.online_recovery_seconds = 1;
    c.emergency.probe_interval_online_seconds = 1;
    c.emergency.probe_interval_offline_seconds = 1;
    let node = NodeBuilder::new(c)
        .key(common::key(1))
        .start()
        .await
        .unwrap();
    let log = node.events().unwrap().clone();

    wait_mode(&node, pb::Mode::Online, Duration::from_secs(10)).await;
    let s = status(&node).await;
    assert_eq!(s.probe_results.len(), 2);
    assert!(s.probe_results.values().all(|ok| *ok));
    assert!(!log.offline());

    // Both probes fail: degraded at once, offline after the debounce.
    up.store(false, Ordering::SeqCst);
    wait_mode(&node, pb::Mode::Degraded, Duration::from_secs(10)).await;
    let took = wait_mode(&node, pb::Mode::Offline, Duration::from_secs(20)).await;
    eprintln!("DEGRADED → OFFLINE after {took:?} (debounce 3 s, probe timeout 2 s)");
    assert!(
        log.offline(),
        "the event log syncs at the emergency cadence"
    );
    assert!(status(&node).await.probe_results.values().all(|ok| !*ok));

    // Recovery.
    up.store(true, Ordering::SeqCst);
    wait_mode(&node, pb::Mode::Online, Duration::from_secs(15)).await;
    assert!(!log.offline());

    // Overrides.
    let r: pb::SetModeResponse = set_mode(&node, pb::ModeOverride::ForceOffline)
        .await
        .unwrap();
    assert_eq!(
        r.output.unwrap().state.unwrap().mode,
        pb::Mode::Offline as i32
    );
    assert!(log.offline());
    let err = node
        .bus()
        .unary::<_, pb::SetModeResponse>(
            "emergency.mode.set",
            "1.0",
            &set_request(pb::ModeOverride::Unspecified),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code.wire_name(), "bad_request");
    let _: pb::SetModeResponse = set_mode(&node, pb::ModeOverride::Auto).await.unwrap();
    assert_eq!(status(&node).await.mode, pb::Mode::Online as i32);
    // A signed call from another node is refused.
    let other = common::client(&node, 9).await;
    let err = other
        .unary::<_, pb::StatusResponse>("emergency.status", "1.0", &pb::StatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.wire_code(), Some("unauthorized"));
    node.shutdown().await;
}

/// A provider that needs the internet (like a cloud LLM backend).
struct Cloud;

impl hearthnet_node::bus::Service for Cloud {
    fn name(&self) -> &str {
        "cloud"
    }
    fn offers(&self) -> Vec<hearthnet_node::bus::Offer> {
        let mut o = hearthnet_node::bus::Offer::of("llm.chat").unwrap();
        o.requires_internet = true;
        vec![o]
    }
    fn call(
        &self,
        _req: hearthnet_node::bus::Request,
        _out: hearthnet_node::bus::Sink,
    ) -> futures::future::BoxFuture<'static, Result<(), hearthnet_node::error::CallError>> {
        Box::pin(async {
            Err(hearthnet_node::error::CallError::internal(
                "not in this test",
            ))
        })
    }
}

fn remote_llm(node: &hearthnet_node::RunningNode) -> bool {
    node.bus()
        .remote_capabilities()
        .iter()
        .any(|c| c.name == "llm.chat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_suspends_internet_capabilities_and_peers_see_it() {
    use hearthnet_sdk::proto::hearthnet::discovery::v1 as dpb;
    let up = Arc::new(AtomicBool::new(true));
    let probe = responder(up.clone()).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let community = common::key(1).node_id().to_string();
    let mut ca = common::config(da.path());
    ca.community.community_id = Some(community.clone());
    ca.emergency.enabled = true;
    ca.emergency.probe_targets = vec![format!("dns://{probe}/probe.test")];
    ca.emergency.probe_interval_online_seconds = 1;
    let a = NodeBuilder::new(ca)
        .key(common::key(1))
        .service(Arc::new(Cloud))
        .start()
        .await
        .unwrap();
    let mut cb = common::config(db.path());
    cb.community.community_id = Some(community);
    cb.discovery.refresh_seconds = 1;
    let b = NodeBuilder::new(cb)
        .key(common::key(2))
        .start()
        .await
        .unwrap();
    wait_mode(&a, pb::Mode::Online, Duration::from_secs(10)).await;

    // B adds A by hand (DISC-001) and lists it (DISC-002).
    let add = dpb::PeerAddRequest {
        params: None,
        input: Some(dpb::PeerAddInput {
            host: "127.0.0.1".into(),
            port: u32::from(a.addr().port()),
            node_id: common::key(1).node_id().to_string(),
            persist: false,
        }),
    };
    let added: dpb::PeerAddResponse = b
        .bus()
        .unary("discovery.peer.add", "1.0", &add)
        .await
        .unwrap();
    assert_eq!(
        added.output.unwrap().node_id,
        common::key(1).node_id().to_string()
    );
    let wrong = dpb::PeerAddRequest {
        params: None,
        input: Some(dpb::PeerAddInput {
            node_id: common::key(5).node_id().to_string(),
            ..add.input.clone().unwrap()
        }),
    };
    let err = b
        .bus()
        .unary::<_, dpb::PeerAddResponse>("discovery.peer.add", "1.0", &wrong)
        .await
        .unwrap_err();
    assert_eq!(err.code.wire_name(), "bad_request");
    let listed: dpb::PeersResponse = b
        .bus()
        .unary("discovery.peers", "1.0", &dpb::PeersRequest::default())
        .await
        .unwrap();
    let peers = listed.output.unwrap().peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].source, dpb::PeerSource::Manual as i32);
    assert!(remote_llm(&b), "B sees A's llm.chat");

    // A's operator subscribes to the local-only messages (EVT-041).
    use hearthnet_sdk::proto::hearthnet::event::v1 as ev;
    use prost::Message;
    let operator = common::client(&a, 1)
        .await
        .with_community(common::key(1).node_id().to_string());
    let mut stream = common::subscribe(&operator, &["emergency.*", "capability.*"])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A goes offline: llm.chat leaves its offers and B's routing.
    let _: pb::SetModeResponse = set_mode(&a, pb::ModeOverride::ForceOffline).await.unwrap();
    assert!(!a.bus().local_offers().iter().any(|o| o.name == "llm.chat"));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let hearthnet_sdk::client::CallItem::Data(d) = item else {
            continue;
        };
        let Some(ev::subscribe_response::Frame::Message(m)) =
            ev::SubscribeResponse::decode(d.as_slice()).unwrap().frame
        else {
            continue;
        };
        let Some(ev::topic_message::Body::Payload(p)) = m.body else {
            panic!("local-only messages carry the bare payload")
        };
        if m.r#type == "emergency.mode.changed" {
            let changed = pb::ModeChangedEvent::decode(p.as_slice()).unwrap();
            assert_eq!(changed.mode, pb::Mode::Offline as i32);
            assert!(!changed.online);
        }
        seen.push(m.r#type);
    }
    seen.sort();
    assert_eq!(seen, ["capability.deregistered", "emergency.mode.changed"]);
    let t = Instant::now();
    while remote_llm(&b) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "B never saw A go offline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Back online: restored on A and at B.
    let _: pb::SetModeResponse = set_mode(&a, pb::ModeOverride::Auto).await.unwrap();
    assert!(a.bus().local_offers().iter().any(|o| o.name == "llm.chat"));
    let t = Instant::now();
    while !remote_llm(&b) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "B never saw A come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}
