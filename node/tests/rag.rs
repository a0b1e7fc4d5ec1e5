//! RAG (issue 10, M05): ingest of Markdown, text, HTML and PDF from the
//! blob store, embeddings through the bus, hybrid retrieval, filters,
//! idempotent ingest, persistence, corpus advertisement and listing, errors
//! of RAG-001…017, a query served by a peer, and the shipped ten-question
//! corpus on the real MiniLM model.
//!
//! Most tests use a test embedding service (`test/hash-embed`: hashed bags
//! of words), so they need no model files; the ten-question test needs the
//! provisioned MiniLM (feature `models`).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use hearthnet_node::bus::{Offer, Request, Service, Sink};
use hearthnet_node::error::CallError;
use hearthnet_node::{NodeBuilder, RunningNode};
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::embed::v1 as embed;
use hearthnet_sdk::proto::hearthnet::rag::v1 as rag;
use hearthnet_sdk::proto::hearthnet::rerank::v1 as rerank;

const HASH_MODEL: &str = "test/hash-embed";
const DIM: usize = 64;

fn data(name: &str) -> PathBuf {
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/data/rag")
    .join(name)
}

/// `embed.text` over hashed bags of words: texts sharing words are close.
struct HashEmbed;

fn hash_vector(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; DIM];
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let h = blake3::hash(w.to_lowercase().as_bytes());
        let b = h.as_bytes();
        v[b[0] as usize % DIM] += if b[1] & 1 == 0 { 1.0 } else { -1.0 };
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter().map(|x| x / n).collect()
}

impl Service for HashEmbed {
    fn name(&self) -> &str {
        "hash-embed"
    }

    fn offers(&self) -> Vec<Offer> {
        let mut o = Offer::all(&["embed.text"]);
        o[0].params.insert("model".into(), HASH_MODEL.into());
        o
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        async move {
            let r: embed::EmbedTextRequest = req.decode()?;
            let texts = r.input.unwrap_or_default().texts;
            let embeddings = texts
                .iter()
                .map(|t| embed::Embedding {
                    values: hash_vector(t),
                })
                .collect();
            out.send(&embed::EmbedTextResponse {
                output: Some(embed::EmbedTextOutput {
                    embeddings,
                    dim: DIM as u32,
                }),
                meta: Some(embed::EmbedTextMeta {
                    model: HASH_MODEL.into(),
                    ms: 0,
                }),
            })
            .await
        }
        .boxed()
    }
}

async fn rag_node(n: u8, dir: &Path, embedder: bool, members: &[u8]) -> RunningNode {
    let mut c = common::config(dir);
    c.rag.corpora = vec!["community".into(), "library".into()];
    c.rag.embedding_model = Some(HASH_MODEL.into());
    c.trust.members = members
        .iter()
        .map(|m| common::key(*m).node_id().to_string())
        .collect();
    let mut b = NodeBuilder::new(c).key(common::key(n));
    if embedder {
        b = b.service(Arc::new(HashEmbed));
    }
    b.start().await.unwrap()
}

fn put(node: &RunningNode, name: &str) -> String {
    let bytes = std::fs::read(data(name)).unwrap();
    node.files().store().put(bytes.as_slice()).unwrap()
}

async fn ingest(
    node: &RunningNode,
    corpus: &str,
    cid: &str,
    title: &str,
    meta: &[(&str, &str)],
) -> Result<rag::IngestResponse, CallError> {
    node.bus()
        .unary(
            "rag.ingest",
            "1.0",
            &rag::IngestRequest {
                params: Some(rag::IngestParams {
                    corpus: corpus.into(),
                }),
                input: Some(rag::IngestInput {
                    doc_cid: cid.into(),
                    title: title.into(),
                    language: meta
                        .iter()
                        .find(|(k, _)| *k == "language")
                        .map_or("en", |(_, v)| *v)
                        .into(),
                    metadata: meta
                        .iter()
                        .filter(|(k, _)| *k != "language")
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
            },
        )
        .await
}

async fn query(
    node: &RunningNode,
    corpus: &str,
    q: &str,
    k: Option<u32>,
    filter: &[(&str, &str)],
) -> Result<rag::QueryResponse, CallError> {
    node.bus()
        .unary(
            "rag.query",
            "1.0",
            &rag::QueryRequest {
                params: Some(rag::QueryParams {
                    corpus: corpus.into(),
                }),
                input: Some(rag::QueryInput {
                    query: q.into(),
                    k,
                    filter: filter
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    include_text: None,
                }),
            },
        )
        .await
}

fn code(r: Result<impl std::fmt::Debug, CallError>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code,
    }
}

fn params_of(node: &RunningNode, cap: &str) -> std::collections::BTreeMap<String, String> {
    node.bus()
        .local_capabilities()
        .into_iter()
        .find(|(c, _, _)| c.name == cap)
        .map(|(_, p, _)| p)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_query_filters_errors_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = rag_node(1, dir.path(), true, &[]).await;

    // Nothing ingested yet: no corpus advertised, ingest targets offered.
    assert_eq!(params_of(&node, "rag.query")["corpora"], "");
    assert_eq!(params_of(&node, "rag.query")["k_max"], "20");
    assert_eq!(params_of(&node, "rag.query")["embedding_model"], HASH_MODEL);
    assert_eq!(
        params_of(&node, "rag.ingest")["corpora_available"],
        "community,library"
    );
    assert!(!params_of(&node, "rag.query").contains_key("local.corpora"));
    let generation = node.bus().generation();

    let md = put(&node, "rainwater-harvesting.md");
    let first = ingest(&node, "community", &md, "Rainwater", &[("year", "2021")])
        .await
        .unwrap();
    let out = first.output.clone().unwrap();
    assert_eq!(out.doc_cid, md);
    assert!(
        out.chunks_indexed >= 1 && out.tokens_indexed > 100,
        "{out:?}"
    );
    let event_id = first.meta.clone().unwrap().ingest_event_id;
    assert!(event_id.starts_with("blake3:"), "{event_id}");
    // RAG-006: advertised after the first ingest, in a new manifest.
    assert_eq!(params_of(&node, "rag.query")["corpora"], "community");
    assert!(node.bus().generation() > generation);

    // RAG-002: the same document again returns the first output.
    let again = ingest(&node, "community", &md, "Other title", &[])
        .await
        .unwrap();
    assert_eq!(again.output, first.output);
    assert_eq!(again.meta.unwrap().ingest_event_id, event_id);

    let txt = put(&node, "bicycle-puncture-repair.txt");
    ingest(
        &node,
        "community",
        &txt,
        "Punctures",
        &[("language", "de"), ("year", "2010")],
    )
    .await
    .unwrap();
    let html = put(&node, "two-way-radio-etiquette.html");
    ingest(&node, "community", &html, "Radio", &[("year", "2015")])
        .await
        .unwrap();
    let pdf = put(&node, "balcony-solar-power.pdf");
    let p = ingest(&node, "community", &pdf, "Solar", &[("year", "2023")])
        .await
        .unwrap();
    assert!(p.output.unwrap().chunks_indexed >= 2, "a 3-page PDF");

    // Retrieval: the puncture document for a puncture question.
    let r = query(
        &node,
        "community",
        "inner tube puncture patch",
        Some(3),
        &[],
    )
    .await
    .unwrap();
    let chunks = r.output.unwrap().chunks;
    assert!(!chunks.is_empty() && chunks.len() <= 3);
    let m = chunks[0].metadata.clone().unwrap();
    assert_eq!(m.doc_cid, txt);
    assert_eq!(m.doc_title, "Punctures");
    assert!(m.chunk_id.starts_with("ch_"));
    assert!(!chunks[0].text.is_empty());
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.rank, i as u32 + 1);
    }
    assert!(chunks.windows(2).all(|w| w[0].score >= w[1].score));
    let meta = r.meta.unwrap();
    assert_eq!(
        (meta.corpus.as_str(), meta.embedding_model.as_str()),
        ("community", HASH_MODEL)
    );
    // The HTML page's scripts and styles are not indexed.
    let r = query(&node, "community", "radio emergency break", Some(20), &[])
        .await
        .unwrap();
    for c in r.output.unwrap().chunks {
        assert!(
            !c.text.contains("function(") && !c.text.contains("{color"),
            "{}",
            c.text
        );
    }
    // The PDF's later pages are kept (RAG-010).
    let r = query(
        &node,
        "community",
        "battery days of autonomy",
        Some(20),
        &[],
    )
    .await
    .unwrap();
    let pages: Vec<u32> = r
        .output
        .unwrap()
        .chunks
        .iter()
        .filter_map(|c| c.metadata.clone())
        .filter(|m| m.doc_cid == pdf)
        .map(|m| m.page)
        .collect();
    assert!(pages.iter().any(|p| *p >= 2), "pages {pages:?}");

    // Filters apply before the cut (RAG-014…016).
    let r = query(&node, "community", "water", Some(20), &[("language", "de")])
        .await
        .unwrap();
    let docs: Vec<String> = r
        .output
        .unwrap()
        .chunks
        .into_iter()
        .map(|c| c.metadata.unwrap().doc_cid)
        .collect();
    assert!(
        !docs.is_empty() && docs.iter().all(|d| *d == txt),
        "{docs:?}"
    );
    let r = query(
        &node,
        "community",
        "water",
        Some(20),
        &[("min_year", "2015"), ("max_year", "2021")],
    )
    .await
    .unwrap();
    let mut docs: Vec<String> = r
        .output
        .unwrap()
        .chunks
        .into_iter()
        .map(|c| c.metadata.unwrap().doc_cid)
        .collect();
    docs.sort();
    docs.dedup();
    let mut want = vec![md.clone(), html.clone()];
    want.sort();
    assert_eq!(docs, want);
    let r = query(&node, "community", "water", None, &[("author", "nobody")])
        .await
        .unwrap();
    assert!(r.output.unwrap().chunks.is_empty());
    // include_text false leaves the text out.
    let r: rag::QueryResponse = node
        .bus()
        .unary(
            "rag.query",
            "1.0",
            &rag::QueryRequest {
                params: Some(rag::QueryParams {
                    corpus: "community".into(),
                }),
                input: Some(rag::QueryInput {
                    query: "water".into(),
                    k: Some(2),
                    include_text: Some(false),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    let chunks = r.output.unwrap().chunks;
    assert_eq!(chunks.len(), 2);
    assert!(chunks.iter().all(|c| c.text.is_empty()));

    // Errors.
    assert_eq!(
        code(query(&node, "community", "  ", None, &[]).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(query(&node, "community", "x", Some(21), &[]).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(query(&node, "Bad_Name", "x", None, &[]).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(query(&node, "elsewhere", "x", None, &[]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(query(&node, "library", "x", None, &[]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(query(&node, "community", "x", None, &[("min_year", "soon")]).await),
        ErrorCode::BadRequest
    );
    let scanned = put(&node, "scanned.pdf");
    let e = ingest(&node, "community", &scanned, "Scan", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("ocr.pdf"), "{}", e.message);
    let garbage = node
        .files()
        .store()
        .put(&b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer"[..])
        .unwrap();
    assert_eq!(
        code(ingest(&node, "community", &garbage, "G", &[]).await),
        ErrorCode::BadRequest
    );
    let missing = format!("blake3:{}", "0".repeat(64));
    assert_eq!(
        code(ingest(&node, "community", &missing, "M", &[]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(ingest(&node, "nope", &md, "M", &[]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(ingest(&node, "system", &md, "M", &[]).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(ingest(&node, "community", "not-a-cid", "M", &[]).await),
        ErrorCode::BadRequest
    );

    // The operator's personal corpus: usable, listed only to the operator,
    // never advertised.
    ingest(&node, "personal", &txt, "Mine", &[]).await.unwrap();
    assert_eq!(params_of(&node, "rag.query")["corpora"], "community");
    let list: rag::ListCorporaResponse = node
        .bus()
        .unary(
            "rag.list_corpora",
            "1.0",
            &rag::ListCorporaRequest::default(),
        )
        .await
        .unwrap();
    let corpora = list.output.unwrap().corpora;
    let names: Vec<&str> = corpora.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["community", "personal"]);
    assert_eq!(corpora[0].docs, 4);
    assert!(corpora[0].chunks >= 5 && corpora[0].size_bytes > 1000);
    assert_eq!(corpora[0].language_majority, "en");

    // Everything survives a restart.
    let before = query(
        &node,
        "community",
        "inner tube puncture patch",
        Some(3),
        &[],
    )
    .await
    .unwrap()
    .output;
    node.shutdown().await;
    let node = rag_node(1, dir.path(), true, &[]).await;
    assert_eq!(params_of(&node, "rag.query")["corpora"], "community");
    let after = query(
        &node,
        "community",
        "inner tube puncture patch",
        Some(3),
        &[],
    )
    .await
    .unwrap()
    .output;
    assert_eq!(before, after);
    let again = ingest(&node, "community", &md, "Rainwater", &[])
        .await
        .unwrap();
    assert_eq!(again.meta.unwrap().ingest_event_id, event_id);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_embedding_provider_queries_are_partition() {
    let dir = tempfile::tempdir().unwrap();
    let node = rag_node(1, dir.path(), false, &[]).await;
    let md = put(&node, "hot-composting.md");
    // Ingest needs embeddings too.
    let e = ingest(&node, "community", &md, "Compost", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Partition, "{}", e.message);
    node.shutdown().await;
    // Ingested while an embedder was there, queried when it is gone.
    let node = rag_node(1, dir.path(), true, &[]).await;
    ingest(&node, "community", &md, "Compost", &[])
        .await
        .unwrap();
    node.shutdown().await;
    let node = rag_node(1, dir.path(), false, &[]).await;
    let e = query(&node, "community", "compost", None, &[])
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Partition, "{}", e.message);
    assert!(e.message.contains(HASH_MODEL), "{}", e.message);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_for_a_corpus_held_by_a_peer_is_routed_there() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = rag_node(2, db.path(), true, &[1]).await;
    let md = put(&b, "preserving-the-harvest.md");
    ingest(&b, "community", &md, "Preserving", &[])
        .await
        .unwrap();
    // A serves RAG but holds none of B's documents and has no embedder.
    let mut c = common::config(da.path());
    c.rag.corpora = vec!["library".into()];
    c.trust.members = vec![common::key(2).node_id().to_string()];
    let a = NodeBuilder::new(c)
        .key(common::key(1))
        .start()
        .await
        .unwrap();
    a.add_peer(&b.url());
    for _ in 0..100 {
        let listed = a.bus().remote_capabilities().iter().any(|r| {
            r.name == "rag.query" && r.params.get("corpora").is_some_and(|c| c == "community")
        });
        if listed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = query(&a, "community", "sauerkraut salt cabbage", Some(2), &[])
        .await
        .unwrap();
    let chunks = r.output.unwrap().chunks;
    assert_eq!(chunks[0].metadata.clone().unwrap().doc_cid, md);
    // A corpus nobody serves.
    assert_eq!(
        code(query(&a, "elsewhere", "x", None, &[]).await),
        ErrorCode::NotFound
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[cfg(feature = "models")]
fn models_dir() -> PathBuf {
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

/// The shipped corpus and its ten questions on the real MiniLM: the right
/// document first for at least nine.
#[cfg(feature = "models")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_questions_on_the_shipped_corpus() {
    #[derive(serde::Deserialize)]
    struct Question {
        question: String,
        doc: String,
        answer_hint: String,
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = common::config(dir.path());
    c.models.enabled = true;
    c.models.dir = Some(models_dir());
    c.rag.corpora = vec!["community".into()];
    let node = NodeBuilder::new(c)
        .key(common::key(1))
        .start()
        .await
        .unwrap();
    let questions: Vec<Question> =
        serde_json::from_slice(&std::fs::read(data("questions.json")).unwrap()).unwrap();
    assert_eq!(questions.len(), 10);
    let mut cids: HashMap<String, String> = HashMap::new();
    for q in &questions {
        let cid = put(&node, &q.doc);
        ingest(&node, "community", &cid, &q.doc, &[]).await.unwrap();
        cids.insert(cid, q.doc.clone());
    }
    let mut right = 0;
    let mut report = Vec::new();
    for q in &questions {
        let r = query(&node, "community", &q.question, Some(5), &[])
            .await
            .unwrap();
        let chunks = r.output.unwrap().chunks;
        let docs: Vec<&str> = chunks
            .iter()
            .map(|c| cids[&c.metadata.as_ref().unwrap().doc_cid].as_str())
            .collect();
        let first_ok = docs.first() == Some(&q.doc.as_str());
        if first_ok {
            right += 1;
            // The cited chunk of the right document holds the answer.
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            let hint = norm(&q.answer_hint);
            let any = chunks
                .iter()
                .filter(|c| cids[&c.metadata.as_ref().unwrap().doc_cid] == q.doc)
                .any(|c| norm(&c.text).contains(&hint));
            assert!(any, "no chunk of {} holds `{}`", q.doc, q.answer_hint);
        }
        report.push(format!(
            "{} {} -> {docs:?}",
            if first_ok { "ok  " } else { "MISS" },
            q.question
        ));
    }
    eprintln!("{}", report.join("\n"));
    assert!(right >= 9, "{right}/10 right first:\n{}", report.join("\n"));
    node.shutdown().await;
}

/// `rerank.text` that puts documents mentioning "sauerkraut" first (score
/// 1) and the rest after (score 0), keeping their order.
struct SauerkrautRerank;

impl Service for SauerkrautRerank {
    fn name(&self) -> &str {
        "sauerkraut-rerank"
    }

    fn offers(&self) -> Vec<Offer> {
        let mut o = Offer::all(&["rerank.text"]);
        o[0].params.insert("model".into(), "test/sauerkraut".into());
        o
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        async move {
            let r: rerank::TextRequest = req.decode()?;
            let docs = r.input.unwrap_or_default().documents;
            let mut ranked: Vec<rerank::RankedDocument> = docs
                .iter()
                .map(|d| rerank::RankedDocument {
                    id: d.id.clone(),
                    score: if d.text.to_lowercase().contains("sauerkraut") {
                        1.0
                    } else {
                        0.0
                    },
                })
                .collect();
            ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
            out.send(&rerank::TextResponse {
                output: Some(rerank::TextOutput { ranked }),
                meta: Some(rerank::TextMeta {
                    ms: 0,
                    model: "test/sauerkraut".into(),
                    truncated: 0,
                }),
            })
            .await
        }
        .boxed()
    }
}

/// With `rag.rerank` on, `rag.query` returns the reranker's order and
/// scores; off, the fused order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_reorders_the_fused_results() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = Vec::new();
    for (i, on) in [false, true].into_iter().enumerate() {
        let mut c = common::config(dirs[i].path());
        c.rag.corpora = vec!["community".into()];
        c.rag.embedding_model = Some(HASH_MODEL.into());
        c.rag.rerank = on;
        let node = NodeBuilder::new(c)
            .key(common::key(10 + i as u8))
            .service(Arc::new(HashEmbed))
            .service(Arc::new(SauerkrautRerank))
            .start()
            .await
            .unwrap();
        for doc in [
            "sourdough-bread-guide.md",
            "preserving-the-harvest.md",
            "hot-composting.md",
        ] {
            let cid = put(&node, doc);
            ingest(&node, "community", &cid, doc, &[]).await.unwrap();
        }
        nodes.push(node);
    }
    let ask = "How do I keep my sourdough starter alive?";
    let plain = query(&nodes[0], "community", ask, Some(3), &[])
        .await
        .unwrap();
    let plain = plain.output.unwrap().chunks;
    assert_eq!(
        plain[0].metadata.clone().unwrap().doc_title,
        "sourdough-bread-guide.md"
    );
    let reranked = query(&nodes[1], "community", ask, Some(3), &[])
        .await
        .unwrap();
    let reranked = reranked.output.unwrap().chunks;
    assert_eq!(reranked.len(), 3);
    assert_eq!(
        reranked[0].metadata.clone().unwrap().doc_title,
        "preserving-the-harvest.md"
    );
    assert_eq!(reranked[0].score, 1.0);
    assert!(reranked[0].text.to_lowercase().contains("sauerkraut"));
    assert_eq!(
        reranked.iter().map(|c| c.rank).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for n in nodes {
        n.shutdown().await;
    }
}
