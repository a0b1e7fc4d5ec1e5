//! Signing benchmarks: HearthNet envelopes vs bare ed25519-dalek on the same
//! bytes, measured in the same run; prints our overhead at the end.
//!
//! Run: `cargo bench -p hearthnet-sdk --bench signing`.

use std::hint::black_box;
use std::path::Path;

use criterion::Criterion;
use ed25519_dalek::{Signer, Verifier};
use hearthnet_sdk::identity::{NodeId, SecretKey};
use hearthnet_sdk::signing::{self, Domain};

const PAYLOAD: usize = 1024;

fn benches(c: &mut Criterion) {
    let key = SecretKey::from_seed([9; 32]);
    let id = key.node_id();
    let vk = key.dalek().verifying_key();
    let payload = vec![0x5au8; PAYLOAD];
    let ours = signing::sign_envelope(&key, Domain::Event, &payload);
    let bare = key.dalek().sign(&payload);

    let mut g = c.benchmark_group("sign");
    g.bench_function("hearthnet_envelope", |b| {
        b.iter(|| signing::sign_envelope(&key, Domain::Event, black_box(&payload)))
    });
    g.bench_function("dalek_bare", |b| {
        b.iter(|| key.dalek().sign(black_box(&payload)))
    });
    g.finish();

    let mut g = c.benchmark_group("verify");
    g.bench_function("hearthnet_envelope", |b| {
        b.iter(|| {
            signing::verify_envelope(&id, Domain::Event, black_box(&payload), &ours).expect("valid")
        })
    });
    g.bench_function("dalek_bare", |b| {
        b.iter(|| vk.verify(black_box(&payload), &bare).expect("valid"))
    });
    g.bench_function("dalek_bare_strict", |b| {
        b.iter(|| vk.verify_strict(black_box(&payload), &bare).expect("valid"))
    });
    g.finish();

    for n in [64usize, 256] {
        let keys: Vec<SecretKey> = (0..n)
            .map(|i| SecretKey::from_seed(*blake3::hash(&i.to_be_bytes()).as_bytes()))
            .collect();
        let ids: Vec<NodeId> = keys.iter().map(SecretKey::node_id).collect();
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; PAYLOAD]).collect();
        let our_sigs: Vec<[u8; 64]> = keys
            .iter()
            .zip(&payloads)
            .map(|(k, p)| signing::sign_envelope(k, Domain::Event, p))
            .collect();
        let bare_sigs: Vec<ed25519_dalek::Signature> = keys
            .iter()
            .zip(&payloads)
            .map(|(k, p)| k.dalek().sign(p))
            .collect();
        let vks: Vec<ed25519_dalek::VerifyingKey> =
            keys.iter().map(|k| k.dalek().verifying_key()).collect();
        let items: Vec<(NodeId, Domain, &[u8], &[u8])> = ids
            .iter()
            .zip(&payloads)
            .zip(&our_sigs)
            .map(|((i, p), s)| (*i, Domain::Event, p.as_slice(), s.as_slice()))
            .collect();
        let msgs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let mut g = c.benchmark_group(format!("batch_{n}"));
        g.sample_size(20);
        g.bench_function("hearthnet_envelopes", |b| {
            b.iter(|| signing::verify_envelopes_batch(black_box(&items)).expect("valid"))
        });
        g.bench_function("dalek_bare", |b| {
            b.iter(|| {
                ed25519_dalek::verify_batch(black_box(&msgs), &bare_sigs, &vks).expect("valid")
            })
        });
        g.finish();
    }
}

fn median_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(group).join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("criterion-signing");
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    println!("\nmedians, {PAYLOAD}-byte payloads (same run); overhead = ours / bare - 1:");
    for (group, ours, bare) in [
        ("sign", "hearthnet_envelope", "dalek_bare"),
        ("verify", "hearthnet_envelope", "dalek_bare_strict"),
        ("batch_64", "hearthnet_envelopes", "dalek_bare"),
        ("batch_256", "hearthnet_envelopes", "dalek_bare"),
    ] {
        if let (Some(o), Some(b)) = (median_ns(&dir, group, ours), median_ns(&dir, group, bare)) {
            let per = if group.starts_with("batch") {
                group
                    .trim_start_matches("batch_")
                    .parse::<f64>()
                    .unwrap_or(1.0)
            } else {
                1.0
            };
            println!(
                "  {group}: ours {:.1} us, bare {:.1} us per envelope; overhead {:+.1}%",
                o / per / 1e3,
                b / per / 1e3,
                (o / b - 1.0) * 100.0
            );
        }
    }
    if let (Some(s), Some(l)) = (
        median_ns(&dir, "verify", "dalek_bare_strict"),
        median_ns(&dir, "verify", "dalek_bare"),
    ) {
        println!(
            "  (verify_strict vs verify: {:+.1}%)",
            (s / l - 1.0) * 100.0
        );
    }
}
