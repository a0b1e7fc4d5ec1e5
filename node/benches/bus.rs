//! Bus benchmarks, each against its baseline measured in the same run:
//!
//! 1. bare tonic echo (the `DiagService` rpc served directly by tonic) vs a
//!    signed `Bus.Call` of `diag.echo` through a node over loopback — p50/p99
//!    latency with 1 call in flight and throughput with 64 in flight;
//! 2. in-process bus call (`Bus::call_in_process`) vs calling the service
//!    directly;
//! 3. resident memory of an idle `hearthnet run` (this build's binary).
//!
//! Run: `cargo bench -p hearthnet --bench bus`. Results go to
//! `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prost::Message;
use tonic::{Request, Response, Status};

use diag::diag_service_client::DiagServiceClient;
use diag::diag_service_server::{DiagService, DiagServiceServer};
use hearthnet_node::NodeBuilder;
use hearthnet_node::bus::{Offer, Service, Sink};
use hearthnet_node::config::Config;
use hearthnet_node::error::CallError;
use hearthnet_sdk::client::{CallItem, Client};
use hearthnet_sdk::identity::SecretKey;
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::diag::v1 as diag;

struct Bare;

#[tonic::async_trait]
impl DiagService for Bare {
    async fn echo(
        &self,
        r: Request<diag::EchoRequest>,
    ) -> Result<Response<diag::EchoResponse>, Status> {
        let input = r.into_inner().input.unwrap_or_default();
        Ok(Response::new(diag::EchoResponse {
            output: Some(diag::EchoOutput {
                text: input.text,
                data: input.data,
                served_by: "bare".into(),
            }),
            meta: None,
        }))
    }
    type EchoStreamStream = tokio_stream::Empty<Result<diag::EchoStreamResponse, Status>>;
    async fn echo_stream(
        &self,
        _r: Request<diag::EchoStreamRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
}

fn request() -> diag::EchoRequest {
    diag::EchoRequest {
        params: None,
        input: Some(diag::EchoInput {
            text: "x".repeat(64),
            ..Default::default()
        }),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency<F, Fut>(n: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

async fn throughput<F, Fut>(inflight: usize, dur: Duration, f: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let f = f.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                f().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / dur.as_secs_f64()
}

async fn signed_echo(c: &Client) {
    let call = c.request(
        "diag.echo",
        "1.0",
        PayloadEncoding::Proto,
        request().encode_to_vec(),
    );
    let mut s = c.send(call, None).await.unwrap();
    let mut got = false;
    while let Some(item) = s.next().await.unwrap() {
        if let CallItem::Data(_) = item {
            got = true;
        }
    }
    assert!(got);
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, secs) = if quick { (300, 1) } else { (3000, 5) };
    rt.block_on(async move {
        // Baseline: bare tonic.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(DiagServiceServer::new(Bare))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap()
            .tcp_nodelay(true).connect().await.unwrap();
        let bare = DiagServiceClient::new(channel);

        // The node, called with its own key (the operator is not rate limited).
        let dir = std::env::temp_dir().join(format!("hearthnet-bench-{}", std::process::id()));
        let mut config = Config::default();
        config.transport.host = "127.0.0.1".into();
        config.transport.port = 0;
        config.paths.data_dir = Some(dir.clone());
        config.emergency.enabled = false;
        config.models.enabled = false;
        let key = SecretKey::from_seed([7; 32]);
        let node = NodeBuilder::new(config).key(SecretKey::from_seed([7; 32])).start().await.unwrap();
        let signed = Client::connect(&node.url(), key).await.unwrap();

        let b = bare.clone();
        let (bp50, bp99) = latency(n, || { let mut b = b.clone(); async move { b.echo(request()).await.unwrap(); } }).await;
        let s = signed.clone();
        let (sp50, sp99) = latency(n, || { let s = s.clone(); async move { signed_echo(&s).await } }).await;
        let b = bare.clone();
        let bt = throughput(64, Duration::from_secs(secs), move || { let mut b = b.clone(); async move { b.echo(request()).await.unwrap(); } }).await;
        let s = signed.clone();
        let st = throughput(64, Duration::from_secs(secs), move || { let s = s.clone(); async move { signed_echo(&s).await } }).await;
        let s = signed.clone().verify_every_done(true);
        let st_all = throughput(64, Duration::from_secs(secs), move || { let s = s.clone(); async move { signed_echo(&s).await } }).await;

        println!("## Bus over loopback (diag.echo, 64-byte text)");
        println!("| | bare tonic | signed Bus.Call | ratio |");
        println!("|---|---|---|---|");
        println!("| p50 latency, 1 in flight | {:.1} µs | {:.1} µs | {:.2}× |", bp50.as_secs_f64() * 1e6, sp50.as_secs_f64() * 1e6, sp50.as_secs_f64() / bp50.as_secs_f64());
        println!("| p99 latency, 1 in flight | {:.1} µs | {:.1} µs | {:.2}× |", bp99.as_secs_f64() * 1e6, sp99.as_secs_f64() * 1e6, sp99.as_secs_f64() / bp99.as_secs_f64());
        println!("| throughput, 64 in flight | {bt:.0} calls/s | {st:.0} calls/s | {:.2}× (goal ≥ 0.60×) |", st / bt);
        println!("| throughput, 64 in flight, client verifies every `done` | {bt:.0} calls/s | {st_all:.0} calls/s | {:.2}× |", st_all / bt);
        println!();
        println!("Signed calls: the client signs, the node batch-verifies the call signature and signs `done`; the client checks `done`'s signature where decision 0043 requires it (diag.echo is idempotent and emits no events), or always in the last row. Client and node share this machine's cores.");

        // The floor set by per-call signatures: what bare tonic would reach if
        // the only added work were the client's signature, the node's
        // (batched) verification and the node's `done` signature.
        let key = SecretKey::from_seed([9; 32]);
        let mut calls: Vec<_> = (0..64)
            .map(|_| signed.request("diag.echo", "1.0", PayloadEncoding::Proto, request().encode_to_vec()))
            .collect();
        for c in &mut calls {
            hearthnet_sdk::signing::sign_call(&key, c);
        }
        let rounds = if quick { 20 } else { 200 };
        let t = Instant::now();
        for _ in 0..rounds {
            for c in &mut calls {
                hearthnet_sdk::signing::sign_call(&key, c);
            }
        }
        let sign = t.elapsed().as_secs_f64() / (rounds * 64) as f64;
        let refs: Vec<_> = calls.iter().collect();
        let t = Instant::now();
        for _ in 0..rounds {
            assert!(hearthnet_sdk::signing::verify_calls_batch(&refs).iter().all(Result::is_ok));
        }
        let batch = t.elapsed().as_secs_f64() / (rounds * 64) as f64;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let bound = 1.0 / (1.0 / bt + (2.0 * sign + batch) / cores);
        println!();
        println!("Per-call signature work measured in this run: sign {:.1} µs, batch verify {:.1} µs per call; on {cores} cores bare tonic plus only that work would reach {:.0} calls/s, a ratio of {:.2}× — the ceiling for per-call Ed25519 on this machine.", sign * 1e6, batch * 1e6, bound, bound / bt);

        // In-process: the bus path vs the service called directly.
        let svc = hearthnet_node::services::builtin::Diag::new(node.bus());
        let payload = request().encode_to_vec();
        let iters = if quick { 20_000 } else { 200_000 };
        let direct = {
            let t = Instant::now();
            for _ in 0..iters {
                let (sink, mut rx) = sink_channel();
                let req = hearthnet_node::bus::Request {
                    capability: Offer::of("diag.echo").unwrap().capability,
                    payload: payload.clone(),
                    caller: *node.bus().node_id(),
                    trust: hearthnet_node::bus::Trust::Operator,
                    request_id: String::new(),
                    deadline: Instant::now() + Duration::from_secs(5),
                    cancel: Default::default(),
                    input: None,
                };
                call_direct(&svc, req, sink).await.unwrap();
                assert!(rx.try_recv().is_ok());
            }
            t.elapsed() / iters
        };
        let via_bus = {
            let t = Instant::now();
            for _ in 0..iters {
                node.bus().call_in_process("diag.echo", "1.0", payload.clone()).await.unwrap();
            }
            t.elapsed() / iters
        };
        println!();
        println!("## In-process call (diag.echo)");
        println!("| direct service call | through the bus | overhead (goal ≤ 5 µs) |");
        println!("|---|---|---|");
        println!("| {:.2} µs | {:.2} µs | {:.2} µs |", direct.as_secs_f64() * 1e6, via_bus.as_secs_f64() * 1e6, (via_bus.as_secs_f64() - direct.as_secs_f64()) * 1e6);
        node.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });

    // Idle RSS of the real binary.
    let bin = env!("CARGO_BIN_EXE_hearthnet");
    let home = std::env::temp_dir().join(format!("hearthnet-bench-rss-{}", std::process::id()));
    let mut child = std::process::Command::new(bin)
        .arg("run")
        .env("HEARTHNET_DATA_DIR", home.join("data"))
        .env("HEARTHNET_CONFIG_DIR", home.join("config"))
        .env("HEARTHNET__TRANSPORT__HOST", "127.0.0.1")
        .env("HEARTHNET__TRANSPORT__PORT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&home);
    println!();
    println!(
        "## Idle `hearthnet run` ({})",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    match rss {
        Some(k) => println!("RSS after 3 s: {:.1} MiB (goal ≤ 40 MB)", k as f64 / 1024.0),
        None => println!("RSS: unavailable (no /proc)"),
    }
}

fn sink_channel() -> (Sink, tokio::sync::mpsc::Receiver<hearthnet_node::bus::Item>) {
    Sink::pair(4)
}

fn call_direct(
    svc: &Arc<hearthnet_node::services::builtin::Diag>,
    req: hearthnet_node::bus::Request,
    sink: Sink,
) -> BoxFuture<'static, Result<(), CallError>> {
    svc.call(req, sink)
}
