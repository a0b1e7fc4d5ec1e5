//! Local model benchmarks (issue 10), each against its baseline in the same
//! run:
//!
//! 1. Decode speed of `llm.chat` through the bus (gRPC client → node →
//!    candle) against calling the candle model directly (goal: bus overhead
//!    ≤ 10 %).
//! 2. Embeddings per second at batch 32, directly and through `embed.text`.
//!
//! Needs the default models (`hearthnet models fetch`).
//! Run: `cargo bench -p hearthnet --bench models` (`-- --quick`: fewer tokens).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Instant;

use prost::Message;

use hearthnet_node::NodeBuilder;
use hearthnet_node::models::bert::Embedder;
use hearthnet_node::models::gguf::{ChatModel, Sampler};
use hearthnet_node::models::provision::{self, MINILM, SMOLLM2};
use hearthnet_sdk::client::{CallItem, Client};
use hearthnet_sdk::identity::SecretKey;
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::embed::v1 as embed;
use hearthnet_sdk::proto::hearthnet::llm::v1 as llm;

const QUESTION: &str = "Write a long story about a dragon who learns to bake bread.";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let tokens: u32 = if quick { 32 } else { 128 };
    let runs = if quick { 2 } else { 3 };
    let root = directories::BaseDirs::new()
        .unwrap()
        .cache_dir()
        .join("hearthnet")
        .join("models");
    let gguf = provision::find(&root, &SMOLLM2)
        .expect("run `hearthnet models fetch` first")
        .join(SMOLLM2.files[0]);
    let minilm = provision::find(&root, &MINILM).expect("run `hearthnet models fetch` first");

    // 1a. Direct: the same prompt the service builds, greedy, fixed length.
    let mut model = ChatModel::load(&gguf).unwrap();
    let prompt = model
        .render(&[
            ("system".into(), "You are a helpful assistant.".into()),
            ("user".into(), QUESTION.into()),
        ])
        .unwrap();
    let ids = model.encode(&prompt).unwrap();
    let sampler = Sampler {
        max_tokens: tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: 1,
        stop: Vec::new(),
    };
    let mut direct = f64::MAX;
    let mut direct_tokens = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let (n, _) = model.generate(&ids, &sampler, |_| true).unwrap();
        direct = direct.min(t.elapsed().as_secs_f64());
        direct_tokens = n;
    }
    let embedder = Embedder::load(&minilm, MINILM.name).unwrap();
    let texts: Vec<String> = (0..32)
        .map(|i| {
            format!("Sentence number {i} about neighbours sharing ladders, bread and bicycles.")
        })
        .collect();
    let t = Instant::now();
    let reps = if quick { 3 } else { 10 };
    for _ in 0..reps {
        assert_eq!(embedder.embed(&texts, true).unwrap().len(), 32);
    }
    let embed_direct = f64::from(reps * 32) / t.elapsed().as_secs_f64();
    drop(model);
    drop(embedder);

    // 1b. Through the bus.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut c = common::loopback_config(dir.path());
        c.models.enabled = true;
        c.models.dir = Some(root.clone());
        let node = NodeBuilder::new(c)
            .key(SecretKey::from_seed([1; 32]))
            .start()
            .await
            .unwrap();
        let client = Client::connect(&node.url(), SecretKey::from_seed([1; 32])).await.unwrap();
        let req = llm::ChatRequest {
            params: Some(llm::ChatParams::default()),
            input: Some(llm::ChatInput {
                messages: vec![llm::ChatMessage {
                    role: llm::Role::User as i32,
                    content: QUESTION.into(),
                    ..Default::default()
                }],
                max_tokens: Some(tokens),
                temperature: Some(0.0),
                ..Default::default()
            }),
        };
        let mut bus = f64::MAX;
        let mut bus_tokens = 0;
        for _ in 0..runs {
            let call = client.request("llm.chat", "1.1", PayloadEncoding::Proto, req.encode_to_vec());
            let t = Instant::now();
            let mut s = client.send(call, None).await.unwrap();
            while let Some(item) = s.next().await.unwrap() {
                if let CallItem::Data(d) = item
                    && let Some(llm::chat_response::Frame::Done(d)) =
                        llm::ChatResponse::decode(d.as_slice()).unwrap().frame
                {
                    bus_tokens = d.tokens_out;
                }
            }
            bus = bus.min(t.elapsed().as_secs_f64());
        }
        let (dr, br) = (f64::from(direct_tokens) / direct, f64::from(bus_tokens) / bus);
        println!(
            "decode ({tokens} tokens max, greedy, best of {runs}): direct candle {dr:.1} tok/s ({direct_tokens} tokens); llm.chat over gRPC {br:.1} tok/s ({bus_tokens} tokens); bus overhead {:.1} % (goal ≤ 10 %)",
            (dr / br - 1.0) * 100.0
        );
        let ereq = embed::EmbedTextRequest {
            params: Some(embed::EmbedTextParams::default()),
            input: Some(embed::EmbedTextInput {
                texts: texts.clone(),
                normalize: None,
            }),
        };
        let t = Instant::now();
        for _ in 0..reps {
            let r: embed::EmbedTextResponse = client.unary("embed.text", "1.0", &ereq).await.unwrap();
            assert_eq!(r.output.unwrap().embeddings.len(), 32);
        }
        let embed_bus = f64::from(reps * 32) / t.elapsed().as_secs_f64();
        println!(
            "embeddings at batch 32: direct {embed_direct:.0}/s; embed.text over gRPC {embed_bus:.0}/s"
        );
        node.shutdown().await;
    });
}
