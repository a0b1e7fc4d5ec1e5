//! Event log benchmarks, each against a baseline measured in the same run:
//!
//! 1. append: `EventLog::append` (sign, check, one atomic write per event)
//!    vs raw fjall inserts of the same bytes, one write batch per event with
//!    the same durability; and ingest of pre-signed events in batches of 256
//!    (batch signature verification, all checks) vs raw fjall batches of the
//!    same bytes;
//! 2. sync: node B (a member) runs one sync round against node A holding
//!    N events (default 100,000) over loopback, through a byte-counting TCP
//!    proxy: events/s, and bytes on the wire / bytes of the events.
//!
//! Run: `cargo bench -p hearthnet --bench events` (`-- --quick` for 10,000
//! events). Results go to `docs/benchmarks.md`.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hearthnet_node::NodeBuilder;
use hearthnet_node::config::Config;
use hearthnet_node::events::{Durability, EventLog};
use hearthnet_sdk::identity::SecretKey;
use hearthnet_sdk::proto::hearthnet::community::v1 as cm;
use hearthnet_sdk::proto::hearthnet::event::v1::{Event, SignedEvent};
use hearthnet_sdk::proto::hearthnet::market::v1 as market;
use hearthnet_sdk::signing::{self, Domain};
use hearthnet_sdk::wkt::Timestamp;

fn post(n: u64) -> Vec<u8> {
    market::PostCreatedEvent {
        client_id: format!("{n:020}"),
        category: market::PostCategory::Offer as i32,
        title: format!("Lending a ladder, item {n}"),
        body: "Aluminium, 3 m, pick up any evening this week.".into(),
        location: None,
        tags: vec!["tools".into()],
        ttl_seconds: 604_800,
    }
    .encode_to_vec()
}

fn config(dir: &std::path::Path, community: &str) -> Config {
    let mut c = common::loopback_config(dir);
    c.community.community_id = Some(community.to_string());
    c.community.sync_interval_seconds = 86_400;
    c
}

fn raw_fjall(dir: &std::path::Path, raws: &[Vec<u8>], batch: usize) -> f64 {
    let db = Database::builder(dir).open().unwrap();
    let ks = db.keyspace("raw", KeyspaceCreateOptions::default).unwrap();
    let t = Instant::now();
    for chunk in raws.chunks(batch) {
        let mut b = db.batch().durability(Some(PersistMode::Buffer));
        for r in chunk {
            b.insert(&ks, blake3::hash(r).as_bytes().to_vec(), r.clone());
        }
        b.commit().unwrap();
    }
    raws.len() as f64 / t.elapsed().as_secs_f64()
}

/// `n` events of one author signed ahead of time: `first` (its seq 1, the
/// join) followed by posts.
fn presigned(key: &SecretKey, community: &str, first: Vec<u8>, n: u64) -> Vec<Vec<u8>> {
    let mut prev = format!("blake3:{}", blake3::hash(&first).to_hex());
    let mut out = vec![first];
    for seq in 2..=n {
        let ev = Event {
            schema_version: 1,
            community: community.to_string(),
            author: key.node_id().to_string(),
            seq,
            prev: prev.clone(),
            lamport: seq + 10,
            wall_clock: Some(Timestamp::now()),
            r#type: "market.post.created".into(),
            payload: post(seq),
        };
        let event = ev.encode_to_vec();
        let signature = signing::sign_envelope(key, Domain::Event, &event).to_vec();
        let raw = SignedEvent { event, signature }.encode_to_vec();
        prev = format!("blake3:{}", blake3::hash(&raw).to_hex());
        out.push(raw);
    }
    out
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    c: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy to `target` counting the bytes in both directions.
async fn proxy(target: std::net::SocketAddr, counter: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            inbound.set_nodelay(true).unwrap();
            let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
            outbound.set_nodelay(true).unwrap();
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pump(ri, wo, counter.clone()));
            tokio::spawn(pump(ro, wi, counter.clone()));
        }
    });
    addr
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n_sync: u64 = if quick { 10_000 } else { 100_000 };
    let n_append: u64 = if quick { 2_000 } else { 20_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = std::env::temp_dir().join(format!("hearthnet-bench-events-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();

    // 1a. append vs raw fjall, one write per event.
    let root = SecretKey::from_seed([1; 32]);
    let community = root.node_id().to_string();
    let log = EventLog::open(
        &base.join("append"),
        Durability::Process,
        Arc::new(SecretKey::from_seed([1; 32])),
        &community,
        "bench",
    )
    .unwrap();
    log.start();
    let t = Instant::now();
    let mut raws = Vec::new();
    for n in 0..n_append {
        let a = log.append("market.post.created", post(n)).unwrap();
        raws.push(log.get_raw(&a.id).unwrap());
    }
    let append_rate = n_append as f64 / t.elapsed().as_secs_f64();
    let raw_rate = raw_fjall(&base.join("raw1"), &raws, 1);
    let sign = {
        let t = Instant::now();
        for r in raws.iter().take(2000) {
            std::hint::black_box(signing::sign_envelope(&root, Domain::Event, r));
        }
        t.elapsed().as_secs_f64() / 2000.0
    };
    println!(
        "append (sign + checks + write, 1 per batch): {append_rate:.0} events/s; raw fjall same bytes: {raw_rate:.0}/s; ratio {:.2}; signing alone {:.1} µs/event",
        append_rate / raw_rate,
        sign * 1e6
    );

    // 1b. ingest of pre-signed events (batches of 256) vs raw fjall batches.
    let member = SecretKey::from_seed([2; 32]);
    let ing = EventLog::open(
        &base.join("ingest"),
        Durability::Process,
        Arc::new(SecretKey::from_seed([9; 32])),
        &community,
        "bench",
    )
    .unwrap();
    // The root's created and invite, then the member's chain from its join.
    let mut setup = membership_setup(&root, &member, &community);
    let join = setup.pop().unwrap();
    ing.ingest(setup).unwrap();
    let chain = presigned(&member, &community, join, n_append);
    let t = Instant::now();
    for c in chain.chunks(256) {
        let r = ing.ingest(c.to_vec()).unwrap();
        assert_eq!(r.stored as usize, c.len());
    }
    let ingest_rate = chain.len() as f64 / t.elapsed().as_secs_f64();
    let raw_batch = raw_fjall(&base.join("raw2"), &chain, 256);
    println!(
        "ingest (verify + checks + write, 256 per batch): {ingest_rate:.0} events/s; raw fjall same bytes: {raw_batch:.0}/s; ratio {:.2}",
        ingest_rate / raw_batch
    );

    // 2. sync between two nodes.
    rt.block_on(async move {
        let a = NodeBuilder::new(config(&base.join("a"), &community))
            .key(SecretKey::from_seed([1; 32]))
            .start()
            .await
            .unwrap();
        let b = NodeBuilder::new(config(&base.join("b"), &community))
            .key(SecretKey::from_seed([3; 32]))
            .start()
            .await
            .unwrap();
        let invite = cm::InviteRequest {
            params: Some(Default::default()),
            input: Some(cm::InviteInput {
                invitee_node_id: SecretKey::from_seed([3; 32]).node_id().to_string(),
                ..Default::default()
            }),
        };
        let _: cm::InviteResponse = a.bus().unary("community.invite", "1.0", &invite).await.unwrap();
        b.join_community(&a.url()).await.unwrap();
        let alog = a.events().unwrap().clone();
        let started = Instant::now();
        let mut payload_bytes = 0u64;
        for n in 0..n_sync {
            let ap = alog.append("market.post.created", post(n)).unwrap();
            payload_bytes += alog.get_raw(&ap.id).unwrap().len() as u64;
        }
        eprintln!("generated {n_sync} events on A in {:.1} s", started.elapsed().as_secs_f64());
        // Let A's views catch up first, so the runs below measure sync only.
        alog.catch_up(|_| ());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // The serving side alone: drain one fetch of everything, no ingest.
        {
            use hearthnet_sdk::client::Client;
            use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
            use hearthnet_sdk::proto::hearthnet::event::v1 as ev;
            let client = Client::connect(&a.url(), SecretKey::from_seed([3; 32]))
                .await
                .unwrap()
                .with_community(community.clone());
            let req = ev::SyncFetchRequest {
                params: None,
                input: Some(ev::SyncFetchInput {
                    ranges: vec![ev::SeqRange {
                        author: community.clone(),
                        from_seq: 1,
                        to_seq: 0,
                    }],
                }),
            };
            let t = Instant::now();
            let call = client.request("event.sync.fetch", "1.0", PayloadEncoding::Proto, req.encode_to_vec());
            let mut s = client.send(call, None).await.unwrap();
            let mut frames = 0;
            while let Some(_item) = s.next().await.unwrap() {
                frames += 1;
            }
            println!(
                "serving alone: {frames} frames of {n_sync} events in {:.2} s = {:.0} events/s",
                t.elapsed().as_secs_f64(),
                n_sync as f64 / t.elapsed().as_secs_f64()
            );
        }
        let counter = Arc::new(AtomicU64::new(0));
        let paddr = proxy(a.addr(), counter.clone()).await;
        let blog = b.events().unwrap().clone();
        let before = blog.len().unwrap();
        let t = Instant::now();
        let stats = hearthnet_node::events::sync::round(&blog, &format!("http://{paddr}"))
            .await
            .unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(blog.len().unwrap() - before, n_sync);
        let t = Instant::now();
        blog.catch_up(|_| ());
        let fold = t.elapsed().as_secs_f64();
        assert_eq!(stats.fetched, n_sync);
        let wire = counter.load(Ordering::Relaxed);
        println!(
            "sync of {n_sync} events A→B over loopback: {secs:.2} s = {:.0} events/s (goal ≥ 50,000); wire {wire} B / event bytes {payload_bytes} B = {:.3} (goal ≤ 1.3)",
            n_sync as f64 / secs,
            wire as f64 / payload_bytes as f64
        );
        println!(
            "then folding them into B's views (membership, market, chat): {fold:.2} s = {:.0} events/s",
            n_sync as f64 / fold
        );
        a.shutdown().await;
        b.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("hearthnet-bench-events-{}", std::process::id())),
    );
}

/// The root's `community.created` and invite, and the member's join.
fn membership_setup(root: &SecretKey, member: &SecretKey, community: &str) -> Vec<Vec<u8>> {
    let sign = |key: &SecretKey, seq: u64, prev: &str, lamport: u64, ty: &str, payload: Vec<u8>| {
        let ev = Event {
            schema_version: 1,
            community: community.to_string(),
            author: key.node_id().to_string(),
            seq,
            prev: prev.to_string(),
            lamport,
            wall_clock: Some(Timestamp::now()),
            r#type: ty.into(),
            payload,
        };
        let event = ev.encode_to_vec();
        let signature = signing::sign_envelope(key, Domain::Event, &event).to_vec();
        SignedEvent { event, signature }.encode_to_vec()
    };
    let created = sign(
        root,
        1,
        "",
        1,
        "community.created",
        cm::CommunityCreatedEvent::default().encode_to_vec(),
    );
    let invite = sign(
        root,
        2,
        &format!("blake3:{}", blake3::hash(&created).to_hex()),
        2,
        "community.member.invited",
        cm::MemberInvitedEvent {
            invitee_node_id: member.node_id().to_string(),
            initial_level: 1,
            expires_at: Some(Timestamp {
                seconds: Timestamp::now().seconds + 3600,
                nanos: 0,
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let join = presigned_join(
        member,
        community,
        &format!("blake3:{}", blake3::hash(&invite).to_hex()),
    );
    vec![created, invite, join]
}

fn presigned_join(member: &SecretKey, community: &str, invite: &str) -> Vec<u8> {
    let manifest =
        hearthnet_sdk::records::seal_node_manifest(member, Default::default(), Timestamp::now());
    let ev = Event {
        schema_version: 1,
        community: community.to_string(),
        author: member.node_id().to_string(),
        seq: 1,
        prev: String::new(),
        lamport: 3,
        wall_clock: Some(Timestamp::now()),
        r#type: "community.member.joined".into(),
        payload: cm::MemberJoinedEvent {
            invite_event_id: invite.to_string(),
            node_manifest: Some(manifest),
        }
        .encode_to_vec(),
    };
    let event = ev.encode_to_vec();
    let signature = signing::sign_envelope(member, Domain::Event, &event).to_vec();
    SignedEvent { event, signature }.encode_to_vec()
}
