//! Blob store ingest against plain BLAKE3 hashing of the same bytes,
//! measured in the same run (issue 9's first benchmark; baseline for the
//! single-pass ingest still to come).
//!
//! Run: `cargo bench -p hearthnet --bench blobs` (`-- --quick` for 16 MiB).

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use hearthnet_node::blobs::BlobStore;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mib: usize = if quick { 16 } else { 256 };
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let t = Instant::now();
    let h = blake3::hash(&data);
    let hash_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ob = hearthnet_node::blobs::outboard(&data);
    let outboard_s = t.elapsed().as_secs_f64();
    assert_eq!(ob.root, h);
    let dir = std::env::temp_dir().join(format!("hearthnet-bench-blobs-{}", std::process::id()));
    let store = BlobStore::open(&dir, 0).unwrap();
    let t = Instant::now();
    let cid = store.put(data.as_slice()).unwrap();
    let put_s = t.elapsed().as_secs_f64();
    assert_eq!(cid, hearthnet_node::blobs::cid_text(&h));
    let rate = |s: f64| mib as f64 / s;
    println!(
        "{mib} MiB: plain blake3::hash {:.0} MiB/s; outboard (16 KiB groups) {:.0} MiB/s; BlobStore::put (hash, write, fsync, outboard, rename) {:.0} MiB/s; ingest ratio {:.2} (goal ≥ 0.8)",
        rate(hash_s),
        rate(outboard_s),
        rate(put_s),
        hash_s / put_s
    );
    let _ = std::fs::remove_dir_all(dir);
}
