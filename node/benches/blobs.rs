//! Blob benchmarks, each against its baseline measured in the same run:
//!
//! 1. Ingest: `BlobStore::put_file` (one pass: hash tree, outboard, sparse
//!    write) against plain `blake3` hashing of the same file read the same
//!    way (goal ≥ 0.8×).
//! 2. Transfer: a verified multi-source download of the blob between two
//!    nodes on loopback (`FileService::fetch`: `file.read@1.1` verified chunk
//!    streams, every 16 KiB group checked, written to disk, outboard kept)
//!    against a raw TCP copy of the same bytes from file to file (goal ≥ 0.7×).
//!
//! Run: `cargo bench -p hearthnet --bench blobs` (1 GiB transfer, 256 MiB
//! ingest; `-- --quick` for 64 MiB each).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use hearthnet_node::NodeBuilder;
use hearthnet_node::blobs::{BlobStore, cid_text};
use hearthnet_node::config::Config;
use hearthnet_node::services::files::Holder;
use hearthnet_sdk::identity::SecretKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn random_file(path: &Path, mib: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

/// Reads a file in 1 MiB steps and hashes it: the ingest baseline.
fn hash_file(path: &Path) -> blake3::Hash {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return h.finalize();
        }
        h.update(&buf[..n]);
    }
}

fn best(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn config(dir: &Path, trusted: &str) -> Config {
    let mut c = common::loopback_config(dir);
    c.trust.trusted = vec![trusted.to_string()];
    c.file.min_free_bytes = 0;
    c
}

/// A raw TCP copy of `src` into `dst` over loopback (read file → socket →
/// file), returning how long it took.
async fn raw_copy(src: &Path, dst: &Path) -> Duration {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let src = src.to_path_buf();
    let t = Instant::now();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut f = tokio::fs::File::open(src).await.unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
        s.shutdown().await.unwrap();
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = tokio::fs::File::create(dst).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await.unwrap();
    }
    out.flush().await.unwrap();
    server.await.unwrap();
    t.elapsed()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (ingest_mib, transfer_mib) = if quick { (64, 64) } else { (256, 1024) };
    let work = std::env::temp_dir().join(format!("hearthnet-bench-blobs-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    // 1. Ingest.
    let src = work.join("ingest.bin");
    random_file(&src, ingest_mib);
    let expected = hash_file(&src);
    let hash_t = best(5, || {
        let t = Instant::now();
        assert_eq!(hash_file(&src), expected);
        t.elapsed()
    });
    let put_t = best(5, || {
        let dir = work.join("store");
        let _ = std::fs::remove_dir_all(&dir);
        let store = BlobStore::open(&dir, 0).unwrap();
        let t = Instant::now();
        let cid = store.put_file(&src).unwrap();
        let el = t.elapsed();
        assert_eq!(cid, cid_text(&expected));
        el
    });
    let fsync_t = best(3, || {
        let dir = work.join("store-fsync");
        let _ = std::fs::remove_dir_all(&dir);
        let store = BlobStore::open(&dir, 0).unwrap().fsync(true);
        let t = Instant::now();
        store.put_file(&src).unwrap();
        t.elapsed()
    });
    let rate = |mib: usize, d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "ingest {ingest_mib} MiB (best of 5): plain blake3 of the file {:.0} MiB/s; BlobStore::put_file {:.0} MiB/s; ratio {:.2} (goal ≥ 0.8); with fsync {:.0} MiB/s",
        rate(ingest_mib, hash_t),
        rate(ingest_mib, put_t),
        hash_t.as_secs_f64() / put_t.as_secs_f64(),
        rate(ingest_mib, fsync_t),
    );
    let _ = std::fs::remove_dir_all(work.join("store"));
    let _ = std::fs::remove_dir_all(work.join("store-fsync"));
    let _ = std::fs::remove_file(&src);

    // 2. Transfer.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let src = work.join("transfer.bin");
        random_file(&src, transfer_mib);
        let ka = SecretKey::from_seed([1; 32]);
        let kb = SecretKey::from_seed([2; 32]);
        let a = NodeBuilder::new(config(&work.join("a"), &kb.node_id().to_string()))
            .key(SecretKey::from_seed([1; 32]))
            .start()
            .await
            .unwrap();
        let cid = a.files().add_file(&src).await.unwrap();
        // Chunk CIDs are computed after storing; let that finish first.
        let store = a.files().store().clone();
        let c = cid.clone();
        tokio::task::spawn_blocking(move || store.chunk_cids(&c).unwrap()).await.unwrap();
        let data_file = {
            let hex = cid.trim_start_matches("blake3:");
            work.join("a").join("blobs").join("data").join(&hex[..2]).join(hex)
        };
        let mut raw_t = Duration::MAX;
        let mut fetch_t = Duration::MAX;
        for round in 0..3 {
            let dst = work.join("raw.bin");
            raw_t = raw_t.min(raw_copy(&data_file, &dst).await);
            let _ = std::fs::remove_file(&dst);
            let bdir = work.join(format!("b{round}"));
            let b = NodeBuilder::new(config(&bdir, &ka.node_id().to_string()))
                .key(SecretKey::from_seed([2; 32]))
                .start()
                .await
                .unwrap();
            let holder = Holder {
                node: ka.node_id().to_string(),
                endpoint: a.url(),
            };
            let t = Instant::now();
            let report = b.files().fetch(&cid, Some(vec![holder])).await.unwrap();
            fetch_t = fetch_t.min(t.elapsed());
            assert_eq!(report.chunks_fetched as usize, transfer_mib * 4);
            b.shutdown().await;
            let _ = std::fs::remove_dir_all(&bdir);
        }
        println!(
            "transfer {transfer_mib} MiB on loopback (best of 3): raw TCP file-to-file copy {:.0} MiB/s; verified fetch between two nodes {:.0} MiB/s; ratio {:.2} (goal ≥ 0.7)",
            rate(transfer_mib, raw_t),
            rate(transfer_mib, fetch_t),
            raw_t.as_secs_f64() / fetch_t.as_secs_f64(),
        );
        a.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&work);
}
