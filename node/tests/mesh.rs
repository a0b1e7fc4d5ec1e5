//! Three nodes on loopback: A calls a capability only B has; the call is
//! routed, signed and verified at each hop; B's service starts failing, B's
//! entry is quarantined, and A reroutes to C.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use futures::future::BoxFuture;

use hearthnet_node::NodeBuilder;
use hearthnet_node::bus::{Offer, Request, Service, Sink};
use hearthnet_node::error::CallError;
use hearthnet_sdk::client::{CallItem, ClientError};
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::diag::v1 as diag;
use prost::Message;

/// `diag.echo` that fails with `internal_error` while `failing` is set.
struct Flaky {
    me: String,
    failing: Arc<AtomicBool>,
}

impl Service for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn offers(&self) -> Vec<Offer> {
        vec![Offer::of("diag.echo").unwrap()]
    }
    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let failing = self.failing.load(Ordering::SeqCst);
        let me = self.me.clone();
        async move {
            if failing {
                return Err(CallError::internal("flaky is failing"));
            }
            let r: diag::EchoRequest = req.decode()?;
            out.send(&diag::EchoResponse {
                output: Some(diag::EchoOutput {
                    text: r.input.unwrap_or_default().text,
                    data: Vec::new(),
                    served_by: me,
                }),
                meta: None,
            })
            .await
        }
        .boxed()
    }
}

async fn echo(
    c: &hearthnet_sdk::client::Client,
    text: &str,
) -> Result<(String, String), ClientError> {
    let req = diag::EchoRequest {
        params: None,
        input: Some(diag::EchoInput {
            text: text.into(),
            ..Default::default()
        }),
    };
    let call = c.request(
        "diag.echo",
        "1.0",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
    );
    let mut s = c.send(call, None).await?;
    let mut served_by = String::new();
    let mut signer = String::new();
    while let Some(item) = s.next().await? {
        match item {
            CallItem::Data(d) => {
                let r = diag::EchoResponse::decode(d.as_slice()).unwrap();
                let out = r.output.unwrap();
                assert_eq!(out.text, text);
                served_by = out.served_by;
            }
            CallItem::Done(done) => signer = done.signer,
            CallItem::Progress(_) => {}
        }
    }
    Ok((served_by, signer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_signed_quarantined_and_rerouted() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ka, kb, kc) = (common::key(1), common::key(2), common::key(3));
    let (ida, idb, idc) = (
        ka.node_id().to_string(),
        kb.node_id().to_string(),
        kc.node_id().to_string(),
    );

    let failing = Arc::new(AtomicBool::new(false));
    let a = NodeBuilder::new(common::config(dirs[0].path()))
        .key(ka)
        .diag(false)
        .start()
        .await
        .unwrap();
    let b = NodeBuilder::new(common::config(dirs[1].path()))
        .key(kb)
        .diag(false)
        .service(Arc::new(Flaky {
            me: idb.clone(),
            failing: failing.clone(),
        }))
        .start()
        .await
        .unwrap();
    let c = common::node(3, dirs[2].path()).await;

    // A knows only B so far; B's manifest is fetched and verified.
    assert_eq!(a.refresh_peer(&b.url()).await.unwrap(), idb);

    // The operator of A (A's own key) calls through A.
    let client = common::client(&a, 1).await.verify_every_done(true);
    let (served_by, signer) = echo(&client, "hello").await.unwrap();
    assert_eq!(served_by, idb, "served by B");
    assert_eq!(
        signer, idb,
        "B signed the transcript; the client verified it"
    );

    // B saw the call signed by A (the forwarding node), with the same trace id.
    let b_traces = b.bus().traces().recent(10, "diag.echo");
    let a_traces = a.bus().traces().recent(10, "diag.echo");
    assert_eq!(
        b_traces[0].trace_id, a_traces[0].trace_id,
        "request id propagated"
    );
    assert_eq!(b_traces[0].peer, ida, "B served A as caller");
    assert_eq!(a_traces[0].peer, idb, "A routed to B");

    // A service on A reaching the mesh through its bus gets the same route.
    let r: diag::EchoResponse = a
        .bus()
        .unary(
            "diag.echo",
            "1.0",
            &diag::EchoRequest {
                params: None,
                input: Some(diag::EchoInput {
                    text: "from a service".into(),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.output.unwrap().served_by, idb);

    // A call signed by someone else is served by A locally only: A has no
    // diag.echo, so a stranger cannot use A as a forwarding hop.
    let stranger = common::client(&a, 9).await;
    let err = echo(&stranger, "x").await.unwrap_err();
    assert_eq!(err.wire_code(), Some("not_found"));

    // B starts failing: A sees internal_error until B is quarantined
    // (HEALTH_MIN_SAMPLES outcomes below the threshold).
    failing.store(true, Ordering::SeqCst);
    let min = hearthnet_sdk::constants::HEALTH_MIN_SAMPLES as usize;
    // Two successes are already in A's window for B (the operator's call and
    // the service's), so min − 2 failures fill it to HEALTH_MIN_SAMPLES
    // outcomes with a success rate of 2/min.
    for i in 0..min - 2 {
        let err = echo(&client, "x").await.unwrap_err();
        assert_eq!(err.wire_code(), Some("internal_error"), "call {i}");
    }
    let health = a.bus().remote_capabilities();
    let b_echo = health
        .iter()
        .find(|r| r.node == idb && r.name == "diag.echo")
        .unwrap();
    assert!(b_echo.quarantined, "B is quarantined: {b_echo:?}");
    let metrics = a.bus().metrics().encode();
    assert!(
        metrics.contains("hearthnet_quarantines_total 1"),
        "{metrics}"
    );
    let err = echo(&client, "x").await.unwrap_err();
    assert_eq!(
        err.wire_code(),
        Some("partition"),
        "only a quarantined provider"
    );

    // C appears; A reroutes to it.
    assert_eq!(a.refresh_peer(&c.url()).await.unwrap(), idc);
    for _ in 0..3 {
        let (served_by, signer) = echo(&client, "again").await.unwrap();
        assert_eq!(served_by, idc);
        assert_eq!(signer, idc);
    }

    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_provider_is_preferred_and_failover_is_transparent_for_idempotent_calls() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = common::node(11, dirs[0].path()).await;
    let b = common::node(12, dirs[1].path()).await;
    a.refresh_peer(&b.url()).await.unwrap();
    let client = common::client(&a, 11).await;
    let (served_by, _) = echo(&client, "local").await.unwrap();
    assert_eq!(served_by, a.bus().node_id().to_string(), "local preference");

    // A node whose only peer for a capability is unreachable answers partition.
    let c = NodeBuilder::new(common::config(dirs[2].path()))
        .key(common::key(13))
        .diag(false)
        .start()
        .await
        .unwrap();
    c.refresh_peer(&b.url()).await.unwrap();
    b.shutdown().await;
    let client_c = common::client(&c, 13).await;
    let err = echo(&client_c, "x").await.unwrap_err();
    assert_eq!(err.wire_code(), Some("partition"), "{err}");
    a.shutdown().await;
    c.shutdown().await;
}

/// A service that panics on every call.
struct Panicky;

impl Service for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }
    fn offers(&self) -> Vec<Offer> {
        vec![Offer::of("diag.echo").unwrap()]
    }
    fn call(&self, _req: Request, _out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        async move { panic!("service bug") }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_service_is_an_internal_error_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeBuilder::new(common::config(dir.path()))
        .key(common::key(20))
        .diag(false)
        .service(Arc::new(Panicky))
        .start()
        .await
        .unwrap();
    let client = common::client(&node, 20).await;
    for _ in 0..3 {
        let err = echo(&client, "x").await.unwrap_err();
        assert_eq!(err.wire_code(), Some("internal_error"));
    }
    let v: hearthnet_sdk::proto::hearthnet::protocol::v1::ListVersionsResponse = client
        .unary(
            "protocol.version.list",
            "1.0",
            &hearthnet_sdk::proto::hearthnet::protocol::v1::ListVersionsRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(v.output.unwrap().preferred, hearthnet_sdk::PROTOCOL_VERSION);
    node.shutdown().await;
}

/// `trans.text` (member trust) with one slot, held until `release` fires.
struct Busy {
    entered: tokio::sync::mpsc::Sender<()>,
    release: Arc<tokio::sync::Notify>,
}

impl Service for Busy {
    fn name(&self) -> &str {
        "busy"
    }
    fn offers(&self) -> Vec<Offer> {
        let mut o = Offer::of("trans.text").unwrap();
        o.max_concurrent = 1;
        vec![o]
    }
    fn call(&self, _req: Request, _out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let (entered, release) = (self.entered.clone(), self.release.clone());
        async move {
            let _ = entered.send(()).await;
            release.notified().await;
            Err(CallError::internal("released"))
        }
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_trust_is_refused_before_it_learns_the_provider_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut entered) = tokio::sync::mpsc::channel(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let mut config = common::config(dir.path());
    config.trust.members = vec![
        common::key(2).node_id().to_string(),
        common::key(3).node_id().to_string(),
    ];
    let node = NodeBuilder::new(config)
        .key(common::key(1))
        .service(Arc::new(Busy {
            entered: tx,
            release: release.clone(),
        }))
        .start()
        .await
        .unwrap();
    let code = |n: u8| {
        let url = node.url();
        async move {
            let c = hearthnet_sdk::client::Client::connect(&url, common::key(n))
                .await
                .unwrap();
            let call = c.request("trans.text", "1.0", PayloadEncoding::Proto, Vec::new());
            let mut s = c.send(call, None).await.unwrap();
            loop {
                match s.next().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(e) => return e.wire_code().map(str::to_string),
                }
            }
        }
    };
    let holder = tokio::spawn(code(2));
    entered.recv().await.unwrap();
    // The one slot is taken: a member hears `capacity_exceeded`, a stranger
    // `unauthorized` (BUS-044 before BUS-047).
    assert_eq!(code(3).await.as_deref(), Some("capacity_exceeded"));
    assert_eq!(code(9).await.as_deref(), Some("unauthorized"));
    release.notify_one();
    assert_eq!(holder.await.unwrap().as_deref(), Some("internal_error"));
}
