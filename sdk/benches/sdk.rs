//! SDK benchmarks (criterion). Each group measures its baseline in the same
//! run, and the ratios are printed at the end:
//!
//! * `validate`: JSON Schema `is_valid` of a ~1 KiB `llm.chat` request vs
//!   parsing the same text with `serde_json` (baseline);
//! * `codec`: protobuf encode/decode vs canonical JSON encode/decode of the
//!   same message;
//! * `generator`: generating every artefact from `protocol/proto` vs compiling
//!   the protos alone with protox (baseline).
//!
//! Run: `cargo bench -p hearthnet-sdk --bench sdk`.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::Criterion;
use hearthnet_sdk::proto::hearthnet::llm::v1::{
    ChatInput, ChatMessage, ChatParams, ChatRequest, Role,
};
use prost::Message;

fn request() -> ChatRequest {
    let long = "Our community garden needs volunteers on Saturday morning to water the beds, fix the fence by the gate and sort the seed library. ";
    ChatRequest {
        params: Some(ChatParams {
            model: "smollm2-135m-instruct".into(),
            ctx: Some(2048),
            ..Default::default()
        }),
        input: Some(ChatInput {
            messages: vec![
                ChatMessage {
                    role: Role::System as i32,
                    content: "You are a helpful neighbourhood assistant. Answer briefly.".into(),
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::User as i32,
                    content: long.repeat(5),
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::Assistant as i32,
                    content: "Sure - what would you like to know about it?".into(),
                    ..Default::default()
                },
                ChatMessage {
                    role: Role::User as i32,
                    content: "Who should I ask about the keys to the shed?".into(),
                    ..Default::default()
                },
            ],
            max_tokens: Some(256),
            temperature: Some(0.7),
            top_p: Some(0.95),
            stop: vec!["</s>".into()],
            seed: Some(42),
            stream: Some(true),
            ..Default::default()
        }),
    }
}

fn benches(c: &mut Criterion) {
    let req = request();
    let text = hearthnet_sdk::json::to_json(&req);
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    eprintln!(
        "llm.chat request: {} bytes of JSON, {} bytes of protobuf",
        text.len(),
        req.encoded_len()
    );
    let validator =
        hearthnet_sdk::validate::validator("hearthnet.llm.v1.ChatRequest").expect("validator");
    assert!(validator.is_valid(&value));

    let mut g = c.benchmark_group("validate");
    g.bench_function("is_valid", |b| {
        b.iter(|| validator.is_valid(black_box(&value)))
    });
    g.bench_function("serde_json_parse", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&text)).expect("json"))
    });
    g.finish();

    let bytes = req.encode_to_vec();
    let mut g = c.benchmark_group("codec");
    g.bench_function("proto_encode", |b| {
        b.iter(|| black_box(&req).encode_to_vec())
    });
    g.bench_function("proto_decode", |b| {
        b.iter(|| ChatRequest::decode(black_box(bytes.as_slice())).expect("decode"))
    });
    g.bench_function("json_encode", |b| {
        b.iter(|| serde_json::to_string(black_box(&req)).expect("encode"))
    });
    g.bench_function("json_decode", |b| {
        b.iter(|| hearthnet_sdk::json::from_json::<ChatRequest>(black_box(&text)).expect("decode"))
    });
    g.finish();

    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../protocol/proto");
    let mut g = c.benchmark_group("generator");
    g.sample_size(10);
    g.bench_function("protox_compile", |b| {
        b.iter(|| {
            let mut compiler = protox::Compiler::new([&root]).expect("compiler");
            compiler.include_imports(true).include_source_info(true);
            for f in proto_files(&root) {
                compiler.open_file(f).expect("open");
            }
            compiler.encode_file_descriptor_set()
        })
    });
    g.bench_function("all_artefacts", |b| {
        b.iter(|| {
            hearthnet_codegen::Protocol::compile(&root)
                .expect("compile")
                .artefacts()
        })
    });
    g.finish();
}

fn proto_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "proto") {
                out.push(p.strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

fn median_ns(dir: &Path, group: &str, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(group).join(id).join("new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("criterion");
    let mut c = Criterion::default()
        .output_directory(&dir)
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    let m = |g: &str, id: &str| median_ns(&dir, g, id);
    println!("\nmedians and ratios (same run):");
    if let (Some(v), Some(p)) = (m("validate", "is_valid"), m("validate", "serde_json_parse")) {
        println!(
            "  validate: is_valid {v:.0} ns; serde_json parse of the same text {p:.0} ns; ratio {:.2}",
            v / p
        );
    }
    for op in ["encode", "decode"] {
        if let (Some(pb), Some(js)) = (
            m("codec", &format!("proto_{op}")),
            m("codec", &format!("json_{op}")),
        ) {
            println!(
                "  codec {op}: protobuf {pb:.0} ns; JSON {js:.0} ns; JSON/protobuf {:.1}x",
                js / pb
            );
        }
    }
    if let (Some(all), Some(base)) = (
        m("generator", "all_artefacts"),
        m("generator", "protox_compile"),
    ) {
        println!(
            "  generator: all artefacts {:.1} ms; protox compile alone {:.1} ms; ratio {:.2}",
            all / 1e6,
            base / 1e6,
            all / base
        );
    }
}
