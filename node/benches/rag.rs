//! `rag.query` over a large corpus (issue 10): p50 latency of a query
//! through the bus (gRPC client → node → `embed.text` with the real MiniLM
//! → hybrid search) over 100,000 chunks, against the baseline of the same
//! client embedding the same query text with `embed.text` alone, measured
//! in the same run. Also, in process, the hybrid search alone, the
//! quantised dense scan against the exact one, and its recall@10.
//!
//! The corpus is synthetic (1,000 documents of 100 chunks of about 100
//! words, random unit vectors) and is written straight into the store; only
//! the queries use the model. Needs `hearthnet models fetch`.
//! Run: `cargo bench -p hearthnet --bench rag` (`-- --quick`: 20,000 chunks).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Instant;

use hearthnet_node::NodeBuilder;
use hearthnet_node::rag::chunk::Chunk;
use hearthnet_node::rag::index::DocMeta;
use hearthnet_node::rag::store::{DocRecord, RagStore};
use hearthnet_sdk::client::Client;
use hearthnet_sdk::identity::SecretKey;
use hearthnet_sdk::proto::hearthnet::embed::v1 as embed;
use hearthnet_sdk::proto::hearthnet::rag::v1 as rag;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const DIM: usize = 384;
const CHUNKS_PER_DOC: usize = 100;
const WORDS: &[&str] = &[
    "water",
    "rain",
    "garden",
    "tomato",
    "seed",
    "bread",
    "starter",
    "flour",
    "battery",
    "solar",
    "panel",
    "radio",
    "channel",
    "bicycle",
    "tube",
    "puncture",
    "compost",
    "heat",
    "bees",
    "honey",
    "winter",
    "salt",
    "cabbage",
    "jar",
    "burn",
    "cold",
    "filter",
    "roof",
    "barrel",
    "ladder",
    "neighbour",
    "library",
    "school",
    "market",
    "bridge",
    "river",
    "storm",
    "power",
    "kitchen",
    "oven",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM)
            .map(|_| (self.next() % 20_000) as f32 / 10_000.0 - 1.0)
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }
    fn text(&mut self) -> String {
        (0..100)
            .map(|_| {
                let i = self.next() as usize;
                if i.is_multiple_of(3) {
                    format!("w{}", i % 20_000)
                } else {
                    WORDS[i % WORDS.len()].to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const QUESTIONS: &[&str] = &[
    "How do I filter rain water from the roof?",
    "What keeps a sourdough starter alive while I am away?",
    "How big a battery for a balcony solar panel?",
    "Which channel do we use on the radio in a storm?",
    "How do I find the puncture in a bicycle tube?",
    "How much salt goes into sauerkraut?",
    "When do I turn the compost heap?",
    "How do I feed bees in winter?",
];

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let docs = if quick { 200 } else { 1_000 };
    let n = docs * CHUNKS_PER_DOC;
    let root = directories::BaseDirs::new()
        .unwrap()
        .cache_dir()
        .join("hearthnet")
        .join("models");
    let dir = tempfile::tempdir().unwrap();
    let corpora = dir.path().join("corpora");

    // The corpus, written straight into the store.
    let t = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    {
        let store = RagStore::open(&corpora).unwrap();
        let corpus = store.create("community", MINILM).unwrap();
        for d in 0..docs {
            let chunks: Vec<(Chunk, Vec<f32>)> = (0..CHUNKS_PER_DOC)
                .map(|i| {
                    let text = rng.text();
                    (
                        Chunk {
                            id: format!("ch_{:03}", i + 1),
                            page: 1,
                            tokens: 133,
                            text,
                        },
                        rng.unit(),
                    )
                })
                .collect();
            let record = DocRecord {
                meta: DocMeta {
                    doc_cid: format!("blake3:{:064x}", d + 1),
                    title: format!("Document {d}"),
                    language: "en".into(),
                    metadata: [("year".to_string(), (2000 + d % 25).to_string())].into(),
                },
                chunks: 0,
                tokens: 13_300,
                event_id: String::new(),
                first: 0,
                format: "text".into(),
            };
            store.add_document(&corpus, record, chunks).unwrap();
        }
    }
    println!(
        "corpus: {docs} documents, {n} chunks written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = common::loopback_config(dir.path());
        c.models.enabled = true;
        c.models.dir = Some(root);
        c.rag.corpora = vec!["community".into()];
        c.rag.corpora_dir = Some(corpora);
        let t = Instant::now();
        let node = NodeBuilder::new(c)
            .key(SecretKey::from_seed([1; 32]))
            .start()
            .await
            .unwrap();
        println!(
            "node start (store read back into memory): {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let store = node.rag().unwrap().clone();
        let corpus = store.get("community").unwrap();
        assert_eq!(corpus.counts().1, n);

        // In process: the hybrid search (quantised scan + BM25), the
        // quantised dense scan and the exact one.
        let mut qrng = Rng(7);
        let queries: Vec<Vec<f32>> = (0..200).map(|_| qrng.unit()).collect();
        let mut hybrid = Vec::new();
        let mut exact = Vec::new();
        let mut quantised = Vec::new();
        let mut recall = 0usize;
        for (i, q) in queries.iter().enumerate() {
            let text = QUESTIONS[i % QUESTIONS.len()];
            let t = Instant::now();
            let hits = corpus.search(q, text, 5, None);
            hybrid.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(hits.len(), 5);
            let t = Instant::now();
            let truth = corpus.exact(q, 10);
            exact.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let ann = corpus.dense(q, 10);
            quantised.push(t.elapsed().as_secs_f64() * 1e3);
            recall += truth.iter().filter(|t| ann.iter().any(|a| a.0 == t.0)).count();
        }
        println!(
            "in process over {n} chunks: hybrid search (quantised scan + BM25, k=5) p50 {:.2} ms; dense top 10: exact scan p50 {:.2} ms, quantised scan + exact rescoring p50 {:.2} ms; recall@10 vs exact {:.3}",
            p50(hybrid),
            p50(exact),
            p50(quantised),
            recall as f64 / (10.0 * queries.len() as f64)
        );

        // Through the bus, with the real model embedding each query.
        let client = Client::connect(&node.url(), SecretKey::from_seed([1; 32]))
            .await
            .unwrap();
        let query = |q: &str, filter: bool| rag::QueryRequest {
            params: Some(rag::QueryParams {
                corpus: "community".into(),
            }),
            input: Some(rag::QueryInput {
                query: q.into(),
                k: Some(5),
                filter: if filter {
                    [("language".to_string(), "en".to_string())].into()
                } else {
                    Default::default()
                },
                include_text: Some(true),
            }),
        };
        let embed_req = |q: &str| embed::EmbedTextRequest {
            params: Some(embed::EmbedTextParams {
                model: MINILM.into(),
            }),
            input: Some(embed::EmbedTextInput {
                texts: vec![q.into()],
                normalize: Some(true),
            }),
        };
        // Warm up both paths.
        for q in QUESTIONS {
            let _: rag::QueryResponse = client
                .unary("rag.query", "1.0", &query(q, false))
                .await
                .unwrap();
        }
        let rounds = if quick { 40 } else { 200 };
        let (mut base, mut hnsw, mut scan) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            let q = QUESTIONS[i % QUESTIONS.len()];
            let t = Instant::now();
            let _: embed::EmbedTextResponse =
                client.unary("embed.text", "1.0", &embed_req(q)).await.unwrap();
            base.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let r: rag::QueryResponse = client
                .unary("rag.query", "1.0", &query(q, false))
                .await
                .unwrap();
            hnsw.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(r.output.unwrap().chunks.len(), 5);
            let t = Instant::now();
            let r: rag::QueryResponse = client
                .unary("rag.query", "1.0", &query(q, true))
                .await
                .unwrap();
            scan.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(r.output.unwrap().chunks.len(), 5);
        }
        let (base, hnsw, scan) = (p50(base), p50(hnsw), p50(scan));
        println!(
            "over gRPC, {rounds} queries: embed.text of the query alone p50 {base:.2} ms (baseline); rag.query p50 {hnsw:.2} ms ({:.2}× the baseline, retrieval adds {:.2} ms; goal ≤ 20 ms); rag.query with a filter matching every document p50 {scan:.2} ms",
            hnsw / base,
            hnsw - base
        );
        node.shutdown().await;
    });
}
