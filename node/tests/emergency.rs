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
    let set = |o: pb::ModeOverride| pb::SetModeRequest {
        params: None,
        input: Some(pb::SetModeInput {
            r#override: o as i32,
        }),
    };
    let r: pb::SetModeResponse = node
        .bus()
        .unary(
            "emergency.mode.set",
            "1.0",
            &set(pb::ModeOverride::ForceOffline),
        )
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
            &set(pb::ModeOverride::Unspecified),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code.wire_name(), "bad_request");
    let _: pb::SetModeResponse = node
        .bus()
        .unary("emergency.mode.set", "1.0", &set(pb::ModeOverride::Auto))
        .await
        .unwrap();
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
