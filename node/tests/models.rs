//! The default local models through the bus (issue 10): MiniLM embeddings,
//! SmolLM2 chat and completion, sampling controls, and a call served by a
//! peer's model. The models are provisioned by `hearthnet models fetch`
//! (run by the test command's setup) into `~/.cache/hearthnet/models`.

#![cfg(feature = "models")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use prost::Message;

use hearthnet_node::{NodeBuilder, RunningNode};
use hearthnet_sdk::client::CallItem;
use hearthnet_sdk::proto::hearthnet::bus::v1::PayloadEncoding;
use hearthnet_sdk::proto::hearthnet::embed::v1 as embed;
use hearthnet_sdk::proto::hearthnet::llm::v1 as llm;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const SMOLLM2: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

fn models_dir() -> std::path::PathBuf {
    std::env::var_os("HEARTHNET_MODELS_DIR")
        .map(Into::into)
        .unwrap_or_else(|| {
            directories::BaseDirs::new()
                .unwrap()
                .cache_dir()
                .join("hearthnet")
                .join("models")
        })
}

async fn model_node(n: u8, dir: &std::path::Path) -> RunningNode {
    model_node_trusting(n, dir, &[]).await
}

async fn model_node_trusting(n: u8, dir: &std::path::Path, members: &[u8]) -> RunningNode {
    let mut c = common::config(dir);
    c.trust.members = members
        .iter()
        .map(|m| common::key(*m).node_id().to_string())
        .collect();
    c.models.enabled = true;
    c.models.dir = Some(models_dir());
    let node = NodeBuilder::new(c)
        .key(common::key(n))
        .start()
        .await
        .unwrap();
    let names: Vec<String> = node
        .bus()
        .local_capabilities()
        .into_iter()
        .map(|(c, _, _)| c.name.to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "llm.chat") && names.iter().any(|n| n == "embed.text"),
        "models missing under {}: run `hearthnet models fetch` ({names:?})",
        models_dir().display()
    );
    node
}

async fn embed(
    node: &RunningNode,
    texts: &[&str],
    model: &str,
) -> Result<embed::EmbedTextResponse, hearthnet_node::error::CallError> {
    node.bus()
        .unary(
            "embed.text",
            "1.0",
            &embed::EmbedTextRequest {
                params: Some(embed::EmbedTextParams {
                    model: model.into(),
                }),
                input: Some(embed::EmbedTextInput {
                    texts: texts.iter().map(|t| t.to_string()).collect(),
                    normalize: None,
                }),
            },
        )
        .await
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs one chat call through `client`; returns (text, frames, done).
async fn chat(
    client: &hearthnet_sdk::client::Client,
    question: &str,
    input: llm::ChatInput,
) -> (String, usize, llm::DoneFrame) {
    let req = llm::ChatRequest {
        params: Some(llm::ChatParams {
            model: SMOLLM2.into(),
            ..Default::default()
        }),
        input: Some(llm::ChatInput {
            messages: vec![llm::ChatMessage {
                role: llm::Role::User as i32,
                content: question.into(),
                ..Default::default()
            }],
            ..input
        }),
    };
    let call = client.request(
        "llm.chat",
        "1.1",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
    );
    let mut s = client.send(call, None).await.unwrap();
    let (mut text, mut frames, mut done) = (String::new(), 0, None);
    while let Some(item) = s.next().await.unwrap() {
        if let CallItem::Data(d) = item {
            match llm::ChatResponse::decode(d.as_slice())
                .unwrap()
                .frame
                .unwrap()
            {
                llm::chat_response::Frame::Token(t) => {
                    assert!(!t.text.is_empty(), "LLM-013");
                    text.push_str(&t.text);
                    frames += 1;
                }
                llm::chat_response::Frame::Done(d) => done = Some(d),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }
    (text, frames, done.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_puts_cat_near_kitten_and_far_from_stocks() {
    let dir = tempfile::tempdir().unwrap();
    let node = model_node(1, dir.path()).await;
    let r = embed(
        &node,
        &[
            "A cat sits on the mat.",
            "A kitten is resting on a rug.",
            "The stock market fell sharply today.",
        ],
        MINILM,
    )
    .await
    .unwrap();
    let out = r.output.unwrap();
    assert_eq!(out.dim, 384);
    let v: Vec<Vec<f32>> = out.embeddings.into_iter().map(|e| e.values).collect();
    for e in &v {
        assert!((cos(e, e) - 1.0).abs() < 1e-4, "normalised (EMBED-005)");
    }
    let (kitten, stocks) = (cos(&v[0], &v[1]), cos(&v[0], &v[2]));
    assert!(
        kitten > stocks + 0.3,
        "cat/kitten {kitten} vs cat/stocks {stocks}"
    );
    assert_eq!(r.meta.unwrap().model, MINILM);
    // The same text gives the same vector (EMBED-007), alone or in a batch.
    let again = embed(&node, &["A cat sits on the mat."], MINILM)
        .await
        .unwrap();
    let a = &again.output.unwrap().embeddings[0].values;
    assert!(a.iter().zip(&v[0]).all(|(x, y)| (x - y).abs() < 1e-4));
    // Names match byte for byte (EMBED-002); limits (EMBED-001).
    let e = embed(&node, &["x"], "all-MiniLM-L6-v2").await.unwrap_err();
    assert_eq!(e.code.wire_name(), "not_found");
    let e = embed(&node, &[], MINILM).await.unwrap_err();
    assert_eq!(e.code.wire_name(), "bad_request");
    let long = "é".repeat(8193);
    let e = embed(&node, &[long.as_str()], MINILM).await.unwrap_err();
    assert_eq!(e.code.wire_name(), "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_knows_the_capital_of_france_and_keeps_to_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let node = model_node(1, dir.path()).await;
    let client = common::client(&node, 1).await;
    let greedy = llm::ChatInput {
        temperature: Some(0.0),
        max_tokens: Some(24),
        ..Default::default()
    };
    let (text, frames, done) =
        chat(&client, "What is the capital of France?", greedy.clone()).await;
    assert!(text.contains("Paris"), "{text:?}");
    assert!(frames > 1, "streamed token by token");
    assert!(done.tokens_out > 0 && done.tokens_out <= 24);
    // Same seed, same tokens (LLM-012).
    let sampled = llm::ChatInput {
        temperature: Some(0.9),
        seed: Some(42),
        max_tokens: Some(16),
        ..Default::default()
    };
    let (a, _, _) = chat(&client, "Tell me about bread.", sampled.clone()).await;
    let (b, _, _) = chat(&client, "Tell me about bread.", sampled).await;
    assert_eq!(a, b);
    // max_tokens (LLM-010).
    let (_, _, done) = chat(
        &client,
        "Write a long story about a dragon.",
        llm::ChatInput {
            temperature: Some(0.0),
            max_tokens: Some(5),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(done.tokens_out, 5);
    assert_eq!(done.stop_reason, llm::StopReason::MaxTokens as i32);
    // A stop sequence ends the answer and is not sent (LLM-011).
    let (text, _, done) = chat(
        &client,
        "What is the capital of France?",
        llm::ChatInput {
            stop: vec!["Paris".into()],
            ..greedy.clone()
        },
    )
    .await;
    assert!(!text.contains("Paris"), "{text:?}");
    assert_eq!(done.stop_reason, llm::StopReason::StopSequence as i32);
    // Not streamed: one token frame (LLM-014).
    let (text, frames, _) = chat(
        &client,
        "What is the capital of France?",
        llm::ChatInput {
            stream: Some(false),
            ..greedy
        },
    )
    .await;
    assert_eq!(frames, 1);
    assert!(text.contains("Paris"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_from_a_node_without_models_is_served_by_a_peer() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // B has the model and counts A as a member; A has no models.
    let b = model_node_trusting(2, db.path(), &[1]).await;
    let mut c = common::config(da.path());
    c.trust.members = vec![common::key(2).node_id().to_string()];
    let a = NodeBuilder::new(c)
        .key(common::key(1))
        .start()
        .await
        .unwrap();
    a.add_peer(&b.url());
    for _ in 0..100 {
        if !a.bus().peers().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let req = llm::CompleteRequest {
        params: Some(llm::CompleteParams {
            model: SMOLLM2.into(),
            ctx: None,
        }),
        input: Some(llm::CompleteInput {
            prompt: "The capital of France is".into(),
            max_tokens: Some(8),
            temperature: Some(0.0),
            ..Default::default()
        }),
    };
    let mut s = a.bus().call_as_self(
        "llm.complete",
        "1.0",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
        None,
    );
    let mut text = String::new();
    use tokio_stream::StreamExt;
    while let Some(f) = s.next().await {
        match f.kind {
            Some(hearthnet_sdk::proto::hearthnet::bus::v1::frame::Kind::Data(d)) => {
                if let Some(llm::complete_response::Frame::Token(t)) =
                    llm::CompleteResponse::decode(d.as_slice()).unwrap().frame
                {
                    text.push_str(&t.text);
                }
            }
            Some(hearthnet_sdk::proto::hearthnet::bus::v1::frame::Kind::Error(e)) => {
                panic!("{e:?}")
            }
            _ => {}
        }
    }
    assert!(text.contains("Paris"), "{text:?}");
    let traces = a.bus().traces().recent(10, "llm.complete");
    let b_id = common::key(2).node_id().to_string();
    assert!(
        traces.iter().any(|t| t.peer == b_id),
        "served by B: {traces:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_uses_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = model_node(1, dir.path()).await;
    let tools = std::env::var_os("HEARTHNET_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            directories::BaseDirs::new()
                .unwrap()
                .cache_dir()
                .join("hearthnet")
                .join("tools")
        });
    let python = tools.join("venv").join("bin").join("python");
    let script = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../scripts/openai_check.py");
    let base = format!("http://{}/v1", node.addr());
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&base)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} (run scripts/setup.sh): {e}", python.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("openai_check: ok"), "{text}");
}

#[test]
fn generation_stops_at_the_first_token_after_a_cancel() {
    use hearthnet_node::models::gguf::{ChatModel, Sampler, Stop};
    let path = hearthnet_node::models::provision::find(
        &models_dir(),
        &hearthnet_node::models::provision::SMOLLM2,
    )
    .expect("run `hearthnet models fetch`")
    .join(hearthnet_node::models::provision::SMOLLM2.files[0]);
    let mut m = ChatModel::load(&path).unwrap();
    let prompt = m
        .render(&[("user".into(), "Write a long story about a dragon.".into())])
        .unwrap();
    let ids = m.encode(&prompt).unwrap();
    let s = Sampler {
        max_tokens: 500,
        temperature: 0.0,
        top_p: 1.0,
        seed: 7,
        stop: Vec::new(),
    };
    // The caller goes away after three pieces of text (LLM-016).
    let mut pieces = 0;
    let (n, stop) = m
        .generate(&ids, &s, |_| {
            pieces += 1;
            pieces < 3
        })
        .unwrap();
    assert_eq!(stop, Stop::Cancelled);
    assert!(n <= 4, "{n} tokens generated after the cancel");
    // The prompt must fit the context window with max_tokens (LLM-005).
    let too_long = Sampler {
        max_tokens: u32::try_from(m.ctx()).unwrap(),
        ..s
    };
    let e = m.generate(&ids, &too_long, |_| true).unwrap_err();
    assert!(e.to_string().contains("context window"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_text_orders_documents_with_the_fallback_scorer() {
    use hearthnet_sdk::proto::hearthnet::rerank::v1 as rr;
    let dir = tempfile::tempdir().unwrap();
    let node = model_node(1, dir.path()).await;
    let doc = |id: &str, text: &str| rr::RerankDocument {
        id: id.into(),
        text: text.into(),
    };
    let req = |model: &str, docs: Vec<rr::RerankDocument>, top_k: Option<u32>| rr::TextRequest {
        params: Some(rr::TextParams {
            model: model.into(),
        }),
        input: Some(rr::TextInput {
            query: "where can I borrow a ladder".into(),
            documents: docs,
            top_k,
        }),
    };
    let docs = vec![
        doc("oven", "The community oven bakes bread on Sundays."),
        doc(
            "shed",
            "Ladders and tools can be borrowed from the shed; ask to borrow a ladder.",
        ),
        doc("bike", "Bicycle repairs on Saturdays."),
    ];
    let r: rr::TextResponse = node
        .bus()
        .unary("rerank.text", "1.0", &req("", docs.clone(), Some(2)))
        .await
        .unwrap();
    let ranked = r.output.unwrap().ranked;
    assert_eq!(ranked.len(), 2, "top_k");
    assert_eq!(ranked[0].id, "shed");
    assert!(ranked[0].score > ranked[1].score);
    assert_eq!(r.meta.unwrap().model, "hearthnet/bm25");
    let e = node
        .bus()
        .unary::<_, rr::TextResponse>(
            "rerank.text",
            "1.0",
            &req("BAAI/bge-reranker-v2-m3", docs, None),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code.wire_name(), "model_not_found");
    let e = node
        .bus()
        .unary::<_, rr::TextResponse>("rerank.text", "1.0", &req("", Vec::new(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code.wire_name(), "bad_request");
}
