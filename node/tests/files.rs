//! Files between nodes (M07): `file.*` over gRPC (`Call` and `Open`) and
//! HTTP, interrupted uploads and downloads that resume, corruption in
//! transit, and replication that recovers after a holder leaves.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hearthnet_node::blobs::{BlobStore, CHUNK_BYTES, chunk_count};
use hearthnet_node::services::files::Holder;
use hearthnet_node::{NodeBuilder, RunningNode};
use hearthnet_sdk::client::{CallItem, Client, ClientError};
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::community::v1 as cm;
use hearthnet_sdk::proto::hearthnet::file::v1 as pb;

fn id(n: u8) -> String {
    common::key(n).node_id().to_string()
}

fn cid(data: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(data).to_hex())
}

fn bytes(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 131 + salt as usize) % 251) as u8)
        .collect()
}

/// A node without a community that trusts the given keys.
async fn plain_node(n: u8, dir: &std::path::Path, trusted: &[u8]) -> RunningNode {
    let mut c = common::config(dir);
    c.trust.trusted = trusted.iter().map(|t| id(*t)).collect();
    c.file.min_free_bytes = 0;
    NodeBuilder::new(c)
        .key(common::key(n))
        .start()
        .await
        .unwrap()
}

fn manifest(data: &[u8]) -> pb::PutManifest {
    pb::PutManifest {
        cid: cid(data),
        size_bytes: data.len() as u64,
        chunk_size_bytes: CHUNK_BYTES as u32,
        chunks: chunks_of(data)
            .iter()
            .enumerate()
            .map(|(i, c)| pb::ChunkRef {
                i: i as u32,
                cid: cid(c),
            })
            .collect(),
    }
}

fn chunks_of(data: &[u8]) -> Vec<&[u8]> {
    if data.is_empty() {
        vec![&data[..0]]
    } else {
        data.chunks(CHUNK_BYTES as usize).collect()
    }
}

fn put_chunk(data: &[u8], i: usize) -> Vec<u8> {
    let c = chunks_of(data)[i];
    pb::PutRequest {
        frame: Some(pb::put_request::Frame::Chunk(pb::PutChunk {
            i: i as u32,
            cid: cid(c),
            data: c.to_vec(),
        })),
    }
    .encode_to_vec()
}

/// Pushes `data` with `file.put`, sending only chunk indices in `send`.
async fn put(client: &Client, data: &[u8], send: &[usize]) -> Result<pb::PutResponse, ClientError> {
    let first = pb::PutRequest {
        frame: Some(pb::put_request::Frame::Manifest(manifest(data))),
    };
    let call = client.request(
        "file.put",
        "1.0",
        PayloadEncoding::Proto,
        first.encode_to_vec(),
    );
    let (mut sink, mut stream) = client.open(call, None).await?;
    for &i in send {
        match sink.send(put_chunk(data, i)).await {
            Ok(()) => {}
            // Refused early: the stream below carries the node's reason.
            Err(ClientError::Ended) => break,
            Err(e) => return Err(e),
        }
    }
    sink.finish();
    let mut out = None;
    while let Some(item) = stream.next().await? {
        if let CallItem::Data(d) = item {
            out = Some(pb::PutResponse::decode(d.as_slice()).unwrap());
        }
    }
    Ok(out.unwrap())
}

/// Reads a blob with `file.read` (plain frames) and reassembles it.
async fn read(
    client: &Client,
    cid: &str,
) -> Result<(pb::ManifestFrame, Vec<u8>, u32), ClientError> {
    let req = pb::ReadRequest {
        params: Some(pb::ReadParams {}),
        input: Some(pb::ReadInput {
            cid: cid.to_string(),
            ..Default::default()
        }),
    };
    let call = client.request(
        "file.read",
        "1.1",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
    );
    let mut s = client.send(call, None).await?;
    let (mut m, mut data, mut done) = (None, Vec::new(), 0);
    while let Some(item) = s.next().await? {
        if let CallItem::Data(d) = item {
            match pb::ReadResponse::decode(d.as_slice())
                .unwrap()
                .frame
                .unwrap()
            {
                pb::read_response::Frame::Manifest(x) => m = Some(x),
                pb::read_response::Frame::Chunk(c) => {
                    assert_eq!(cid_of(&c.data), c.cid, "chunk {} matches its CID", c.i);
                    data.extend_from_slice(&c.data);
                }
                pb::read_response::Frame::Done(d) => done = d.chunks,
            }
        }
    }
    Ok((m.unwrap_or_default(), data, done))
}

fn cid_of(d: &[u8]) -> String {
    cid(d)
}

async fn stat(client: &Client, c: &str) -> Result<pb::StatOutput, ClientError> {
    let r: pb::StatResponse = client
        .unary(
            "file.stat",
            "1.0",
            &pb::StatRequest {
                params: Some(pb::StatParams {}),
                input: Some(pb::CidInput { cid: c.to_string() }),
            },
        )
        .await?;
    Ok(r.output.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_read_stat_pin_delete_for_edge_sizes() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = plain_node(2, db.path(), &[1]).await;
    let _a = plain_node(1, da.path(), &[]).await;
    let client = common::client(&b, 1).await;
    // Zero-length, exactly one 16 KiB group, one full chunk and a few chunks.
    for (k, n) in [
        0usize,
        16_384,
        CHUNK_BYTES as usize,
        2 * CHUNK_BYTES as usize + 5,
    ]
    .into_iter()
    .enumerate()
    {
        let data = bytes(n, k as u8);
        let count = chunk_count(n as u64) as usize;
        let r = put(&client, &data, &(0..count).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(r.output.unwrap().received, count as u32, "size {n}");
        let s = stat(&client, &cid(&data)).await.unwrap();
        assert_eq!(
            (s.size_bytes, s.chunk_count, s.pins),
            (n as u64, count as u32, 1)
        );
        let (m, back, done) = read(&client, &cid(&data)).await.unwrap();
        assert_eq!(back, data, "size {n} reads back");
        assert_eq!(
            (m.size_bytes, m.chunks.len(), done),
            (n as u64, count, count as u32)
        );
        // FILE-015: pushing it again succeeds.
        put(&client, &data, &(0..count).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    // A chunk CID reads as one chunk (FILE-001).
    let big = bytes(2 * CHUNK_BYTES as usize + 5, 3);
    let second = &big[CHUNK_BYTES as usize..2 * CHUNK_BYTES as usize];
    let (_, back, done) = read(&client, &cid(second)).await.unwrap();
    assert_eq!((back.as_slice(), done), (second, 1));
    // A verified read of chunk 1 only, checked against the blob CID alone.
    let req = pb::ReadRequest {
        params: Some(pb::ReadParams {}),
        input: Some(pb::ReadInput {
            cid: cid(&big),
            verified: true,
            chunks: vec![1],
        }),
    };
    let call = client.request(
        "file.read",
        "1.1",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
    );
    let mut s = client.send(call, None).await.unwrap();
    let check = tempfile::tempdir().unwrap();
    let store = BlobStore::open(check.path(), 0).unwrap();
    let mut partial = store.partial(&cid(&big), big.len() as u64, "").unwrap();
    let mut frames = 0;
    while let Some(item) = s.next().await.unwrap() {
        if let CallItem::Data(d) = item
            && let Some(pb::read_response::Frame::Chunk(c)) =
                pb::ReadResponse::decode(d.as_slice()).unwrap().frame
        {
            assert!(c.data.is_empty() && !c.encoded.is_empty());
            partial.accept_verified(c.i, &c.encoded).unwrap();
            frames += 1;
        }
    }
    assert_eq!((frames, partial.missing()), (1, vec![0, 2]));
    // file.list with a prefix, pins and delete (operator calls on B).
    let list: pb::ListResponse = client
        .unary(
            "file.list",
            "1.0",
            &pb::ListRequest {
                params: Some(pb::ListParams {}),
                input: Some(pb::ListInput {
                    prefix: cid(&big)[..12].to_string(),
                }),
            },
        )
        .await
        .unwrap();
    assert!(list.output.unwrap().cids.contains(&cid(&big)));
    let input = Some(pb::CidInput { cid: cid(&big) });
    let r: pb::UnpinResponse = b
        .bus()
        .unary(
            "file.unpin",
            "1.0",
            &pb::UnpinRequest {
                params: None,
                input: input.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.output.unwrap().pins, 0);
    let r: pb::PinResponse = b
        .bus()
        .unary(
            "file.pin",
            "1.0",
            &pb::PinRequest {
                params: None,
                input: input.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.output.unwrap().pins, 1);
    // Pin and delete are the operator's: a trusted peer is refused.
    let e = client
        .unary::<_, pb::DeleteResponse>(
            "file.delete",
            "1.0",
            &pb::DeleteRequest {
                params: None,
                input: input.clone(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.wire_code(), Some("unauthorized"));
    let r: pb::DeleteResponse = b
        .bus()
        .unary(
            "file.delete",
            "1.0",
            &pb::DeleteRequest {
                params: None,
                input: input.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.output.unwrap().freed_bytes, big.len() as u64);
    assert_eq!(
        stat(&client, &cid(&big)).await.unwrap_err().wire_code(),
        Some("not_found")
    );
    assert_eq!(
        read(&client, &cid(&big)).await.unwrap_err().wire_code(),
        Some("not_found")
    );
    // The HTTP binding streams file.read as server-sent events.
    let small = bytes(1000, 9);
    put(&client, &small, &[0]).await.unwrap();
    let body = format!(r#"{{"params":{{}},"input":{{"cid":"{}"}}}}"#, cid(&small));
    let (status, _, sse) = common::http(
        b.addr(),
        "POST",
        "/bus/v1/call",
        &[
            ("X-HearthNet-Capability", "file.read"),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{sse}");
    assert!(
        sse.contains("\"manifest\"") && sse.contains("\"chunk\"") && sse.contains("\"done\""),
        "{sse}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_puts_are_refused_with_their_codes() {
    let db = tempfile::tempdir().unwrap();
    let b = plain_node(2, db.path(), &[1]).await;
    let client = common::client(&b, 1).await;
    let data = bytes(CHUNK_BYTES as usize + 10, 1);
    let open = |first: pb::PutRequest| {
        let client = client.clone();
        async move {
            let call = client.request(
                "file.put",
                "1.0",
                PayloadEncoding::Proto,
                first.encode_to_vec(),
            );
            client.open(call, None).await.unwrap()
        }
    };
    let outcome = |mut s: hearthnet_sdk::client::CallStream| async move {
        loop {
            match s.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => return e.wire_code().map(str::to_string),
            }
        }
    };
    // A first frame that is not the manifest.
    let (mut sink, s) = open(pb::PutRequest::decode(put_chunk(&data, 0).as_slice()).unwrap()).await;
    sink.finish();
    assert_eq!(outcome(s).await.as_deref(), Some("bad_request"));
    // A manifest with the wrong chunk size (FILE-010).
    let mut m = manifest(&data);
    m.chunk_size_bytes = 1024;
    let (mut sink, s) = open(pb::PutRequest {
        frame: Some(pb::put_request::Frame::Manifest(m)),
    })
    .await;
    sink.finish();
    assert_eq!(outcome(s).await.as_deref(), Some("bad_request"));
    // Chunk data that does not hash to its CID.
    let (mut sink, s) = open(pb::PutRequest {
        frame: Some(pb::put_request::Frame::Manifest(manifest(&data))),
    })
    .await;
    let mut bad = pb::PutRequest::decode(put_chunk(&data, 0).as_slice()).unwrap();
    if let Some(pb::put_request::Frame::Chunk(c)) = &mut bad.frame {
        c.data[7] ^= 1;
    }
    sink.send(bad.encode_to_vec()).await.unwrap();
    sink.finish();
    assert_eq!(outcome(s).await.as_deref(), Some("bad_request"));
    // file.put through Call instead of Open (decision 0044).
    let call = client.request(
        "file.put",
        "1.0",
        PayloadEncoding::Proto,
        pb::PutRequest {
            frame: Some(pb::put_request::Frame::Manifest(manifest(&data))),
        }
        .encode_to_vec(),
    );
    let s = client.send(call, None).await.unwrap();
    assert_eq!(outcome(s).await.as_deref(), Some("bad_request"));
    // A member that is not trusted may not push.
    let stranger = common::client(&b, 9).await;
    let e = put(&stranger, &data, &[0, 1]).await.unwrap_err();
    assert_eq!(e.wire_code(), Some("unauthorized"));
    // Not a CID.
    let e = stat(&client, "blake3:../../etc/passwd").await.unwrap_err();
    assert_eq!(e.wire_code(), Some("bad_request"));
    assert!(!b.files().store().has(&cid(&data)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_put_resumes_with_only_the_missing_chunks() {
    let db = tempfile::tempdir().unwrap();
    let b = plain_node(2, db.path(), &[1, 3]).await;
    let client = common::client(&b, 1).await;
    let data = bytes(5 * CHUNK_BYTES as usize + 77, 4);
    // The upload stops after three of six chunks.
    let e = put(&client, &data, &[0, 1, 2]).await.unwrap_err();
    assert_eq!(e.wire_code(), Some("bad_request"));
    assert!(!b.files().store().has(&cid(&data)));
    let resume = |client: Client, data: Vec<u8>| async move {
        let start = pb::PutResumeRequest {
            frame: Some(pb::put_resume_request::Frame::Start(pb::PutResumeStart {
                params: Some(pb::PutResumeParams {}),
                input: Some(pb::PutResumeInput {
                    manifest_cid: cid(&data),
                    client_id: "01J00000000000000000000000".into(),
                }),
            })),
        };
        let call = client.request(
            "file.put.resume",
            "1.0",
            PayloadEncoding::Proto,
            start.encode_to_vec(),
        );
        let (mut sink, mut s) = client.open(call, None).await?;
        let mut missing = None;
        let mut done = None;
        while let Some(item) = s.next().await? {
            let CallItem::Data(d) = item else { continue };
            match pb::PutResumeResponse::decode(d.as_slice())
                .unwrap()
                .frame
                .unwrap()
            {
                pb::put_resume_response::Frame::Ready(r) => {
                    for &i in &r.missing {
                        let c = chunks_of(&data)[i as usize];
                        let frame = pb::PutResumeRequest {
                            frame: Some(pb::put_resume_request::Frame::Chunk(pb::PutChunk {
                                i,
                                cid: cid(c),
                                data: c.to_vec(),
                            })),
                        };
                        sink.send(frame.encode_to_vec()).await?;
                    }
                    sink.finish();
                    missing = Some(r.missing);
                }
                pb::put_resume_response::Frame::Done(d) => done = Some(d.received),
            }
        }
        Ok::<_, ClientError>((missing.unwrap(), done.unwrap()))
    };
    // Another trusted caller has no upload of this blob to resume.
    let other = common::client(&b, 3).await;
    let e = resume(other, data.clone()).await.unwrap_err();
    assert_eq!(e.wire_code(), Some("not_found"));
    // The uploader resumes: the server asks for exactly the missing chunks.
    let (missing, received) = resume(client.clone(), data.clone()).await.unwrap();
    assert_eq!(missing, vec![3, 4, 5]);
    assert_eq!(received, 3);
    assert_eq!(b.files().store().read(&cid(&data)).unwrap(), data);
    // FILE-015: resuming a held blob succeeds with nothing missing.
    let (missing, received) = resume(client, data.clone()).await.unwrap();
    assert_eq!((missing, received), (vec![], 0));
}

/// What the proxy does to the holder's bytes.
#[derive(Clone, Copy)]
enum Fault {
    /// Flip the byte at this offset of all answer bytes, counted over every
    /// connection.
    Corrupt(usize),
    /// Close every connection once this many answer bytes passed in total.
    Cut(usize),
}

/// A TCP proxy in front of `target` that injects `fault` into the bytes
/// coming back from the holder.
async fn proxy(target: std::net::SocketAddr, fault: Fault) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let total = total.clone();
            tokio::spawn(async move {
                let (mut ri, mut wi) = inbound.into_split();
                let (mut ro, mut wo) = outbound.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut ri, &mut wo).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match ro.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let t = total.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                    match fault {
                        Fault::Corrupt(at) if (t..t + n).contains(&at) => buf[at - t] ^= 0x5a,
                        Fault::Cut(after) if t + n > after => break,
                        _ => {}
                    }
                    if wi.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    addr
}

fn holder(n: u8, addr: std::net::SocketAddr) -> Holder {
    Holder {
        node: id(n),
        endpoint: format!("http://{addr}"),
    }
}

/// Nodes without a community where everybody is trusted by everybody.
async fn trusted_node(n: u8, dir: &std::path::Path) -> RunningNode {
    plain_node(n, dir, &[1, 2, 3, 4]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_use_two_holders_and_refetch_a_corrupted_chunk() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = trusted_node(1, dirs[0].path()).await;
    let b = trusted_node(2, dirs[1].path()).await;
    let c = trusted_node(3, dirs[2].path()).await;
    let data = bytes(12 * CHUNK_BYTES as usize + 999, 7);
    let blob = a.files().add_bytes(data.clone()).await.unwrap();
    assert_eq!(b.files().add_bytes(data.clone()).await.unwrap(), blob);
    // One byte flipped about 600 KB into what A sends to C (inside a chunk
    // frame whichever batch A serves).
    let bad_a = proxy(a.addr(), Fault::Corrupt(600_000)).await;
    let report = c
        .files()
        .fetch(&blob, Some(vec![holder(1, bad_a), holder(2, b.addr())]))
        .await
        .unwrap();
    assert_eq!(report.corrupt_chunks, 1, "{report:?}");
    assert_eq!(report.chunks_fetched, 13, "the bad chunk is fetched again");
    assert_eq!(
        report.per_holder.len(),
        2,
        "both holders served: {report:?}"
    );
    assert_eq!(c.files().store().read(&blob).unwrap(), data);
    assert_eq!(c.files().store().stat(&blob).unwrap().pins, 1);
    let origin = c.files().store().origin(&blob).unwrap();
    assert!(
        origin.starts_with("fetched from ") && origin.contains(&id(2)),
        "{origin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_killed_half_way_resumes_without_resending_verified_chunks() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = trusted_node(1, dirs[0].path()).await;
    let data = bytes(40 * CHUNK_BYTES as usize, 8);
    let blob = a.files().add_bytes(data.clone()).await.unwrap();
    let b_dir = dirs[1].path().to_path_buf();
    // The connection dies after ~half the blob, and every retry too.
    let cut = proxy(a.addr(), Fault::Cut(data.len() / 2)).await;
    {
        let b = trusted_node(2, &b_dir).await;
        let e = b
            .files()
            .fetch(&blob, Some(vec![holder(1, cut)]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("failed 3 times"), "{e}");
        assert!(!b.files().store().has(&blob));
        b.shutdown().await;
    }
    // After a restart, the download resumes from the verified chunks.
    let b = trusted_node(2, &b_dir).await;
    let report = b
        .files()
        .fetch(&blob, Some(vec![holder(1, a.addr())]))
        .await
        .unwrap();
    assert!(report.chunks_resumed >= 10, "{report:?}");
    assert_eq!(
        report.chunks_resumed + report.chunks_fetched,
        40,
        "{report:?}"
    );
    assert!(report.bytes_fetched <= (40 - u64::from(report.chunks_resumed)) * CHUNK_BYTES);
    assert_eq!(b.files().store().read(&blob).unwrap(), data);
}

async fn community_node(n: u8, dir: &std::path::Path) -> RunningNode {
    let mut c = common::config(dir);
    c.community.community_id = Some(id(1));
    c.community.sync_interval_seconds = 1;
    c.discovery.refresh_seconds = 1;
    c.discovery.prune_seconds = 3;
    c.file.replica = n != 1;
    c.file.replication_interval_seconds = 1;
    c.file.min_free_bytes = 0;
    NodeBuilder::new(c)
        .key(common::key(n))
        .start()
        .await
        .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_reaches_three_copies_and_recovers_when_a_holder_leaves() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = community_node(1, dirs[0].path()).await;
    let mut others = Vec::new();
    for n in 2..=4u8 {
        let node = community_node(n, dirs[n as usize - 1].path()).await;
        let req = cm::InviteRequest {
            params: Some(Default::default()),
            input: Some(cm::InviteInput {
                invitee_node_id: id(n),
                ..Default::default()
            }),
        };
        let _: cm::InviteResponse = a
            .bus()
            .unary("community.invite", "1.0", &req)
            .await
            .unwrap();
        node.join_community(&a.url()).await.unwrap();
        others.push(node);
    }
    let all: Vec<&RunningNode> = std::iter::once(&a).chain(others.iter()).collect();
    for x in &all {
        for y in &all {
            if x.addr() != y.addr() {
                x.add_peer(&y.url());
            }
        }
    }
    let data = bytes(3 * CHUNK_BYTES as usize + 5, 11);
    let blob = a.files().add_bytes(data.clone()).await.unwrap();
    let holds = |n: &RunningNode| n.files().store().has(&blob);
    until("three copies", || {
        all.iter().filter(|n| holds(n)).count() == 3
    })
    .await;
    until("A sees three holders", || {
        a.files().holders(&blob).len() == 3
    })
    .await;
    // One replica holder leaves; the remaining replica takes its place.
    let leaving = others.iter().position(&holds).unwrap();
    let gone = others.remove(leaving);
    let gone_id = gone.bus().node_id().to_string();
    gone.shutdown().await;
    until("a new copy", || others.iter().all(&holds)).await;
    for n in &others {
        assert_eq!(n.files().store().read(&blob).unwrap(), data);
    }
    until("A sees the new holder", || {
        let h = a.files().holders(&blob);
        h.len() == 4 && h.contains(&gone_id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_binding_uploads_ndjson_and_downloads_ranges() {
    use base64::Engine as _;
    let db = tempfile::tempdir().unwrap();
    let b = plain_node(2, db.path(), &[]).await;
    let data = bytes(CHUNK_BYTES as usize + 1234, 5);
    let m = manifest(&data);
    let mut body = serde_json::json!({ "manifest": {
        "cid": m.cid, "sizeBytes": m.size_bytes.to_string(), "chunkSizeBytes": m.chunk_size_bytes,
        "chunks": m.chunks.iter().map(|c| serde_json::json!({"i": c.i, "cid": c.cid})).collect::<Vec<_>>(),
    }})
    .to_string();
    for (i, c) in chunks_of(&data).iter().enumerate() {
        body.push('\n');
        body.push_str(
            &serde_json::json!({ "chunk": {
                "i": i, "cid": cid(c), "data": base64::engine::general_purpose::STANDARD.encode(c),
            }})
            .to_string(),
        );
    }
    let (status, head, out) = common::http(
        b.addr(),
        "POST",
        "/bus/v1/open",
        &[
            ("X-HearthNet-Capability", "file.put"),
            ("Content-Type", "application/x-ndjson"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{head}\n{out}");
    assert!(out.contains("\"received\":2"), "{out}");
    assert!(
        head.to_ascii_lowercase().contains("x-hearthnet-signature"),
        "{head}"
    );
    assert_eq!(b.files().store().read(&cid(&data)).unwrap(), data);
    // Bidi capabilities are gRPC-only on this path.
    let (status, _, out) = common::http(
        b.addr(),
        "POST",
        "/bus/v1/open",
        &[("X-HearthNet-Capability", "file.put.resume")],
        b"{}",
    )
    .await;
    assert_eq!(status, 501, "{out}");
    // Downloads: whole, one range, refused names.
    let path = format!("/files/{}", cid(&data));
    let raw = |path: String, range: Option<&'static str>| {
        let addr = b.addr();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
            let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{range}\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8_lossy(&out[..split]).to_string();
            (head, out[split + 4..].to_vec())
        }
    };
    let (head, got) = raw(format!("{path}?name=report.pdf"), None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("report.pdf"), "{head}");
    assert_eq!(got, data);
    let (head, got) = raw(path.clone(), Some("bytes=262140-262149")).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.contains(&format!("bytes 262140-262149/{}", data.len())),
        "{head}"
    );
    assert_eq!(got, data[262_140..262_150]);
    for bad in ["..%2Fetc%2Fpasswd", "a%2Fb", &"x".repeat(300)] {
        let (head, _) = raw(format!("{path}?name={bad}"), None).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{bad}: {head}");
    }
    let (head, _) = raw(format!("/files/{}", cid(b"absent")), None).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
