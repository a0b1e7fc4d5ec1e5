//! `rag.query`, `rag.ingest` and `rag.list_corpora` (M05,
//! `protocol/spec/rag.md`). Documents come from the node's blob store;
//! embeddings come **through the bus** (`embed.text` with the corpus's
//! model, RAG-009), so a node without a local embedding model uses a
//! peer's; results may be reordered by `rerank.text`, also through the bus,
//! when `rag.rerank` is on.
//!
//! Corpora are created by the operator (`rag.corpora`, RAG-007); the
//! corpus `personal` always exists, serves only the operator and is never
//! advertised (RAG-008).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::embed::v1 as embed;
use hearthnet_sdk::proto::hearthnet::rag::v1 as pb;
use hearthnet_sdk::proto::hearthnet::rerank::v1 as rerank;

use crate::blobs::{BlobError, BlobStore};
use crate::bus::{Bus, LOCAL_CORPORA, Offer, Request, Service, Sink, Trust, WeakBus};
use crate::error::CallError;
use crate::events::EventLog;
use crate::rag::index::{DocMeta, Filter};
use crate::rag::store::{Corpus, DocRecord, RagStore};
use crate::rag::{self, RagError};

/// The operator's private corpus.
pub const PERSONAL: &str = "personal";
/// Most chunks a query returns (RAG-005 `k_max`).
pub const K_MAX: u32 = 20;
const K_DEFAULT: u32 = 5;
/// Texts per `embed.text` call.
const EMBED_BATCH: usize = 32;
/// `embed.text` takes at most this many characters per text (EMBED-001).
const EMBED_MAX_CHARS: usize = 8192;
/// Largest document `rag.ingest` reads.
pub const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Settings of the RAG service.
#[derive(Debug, Clone)]
pub struct RagSettings {
    /// Corpora created for the community (besides `personal`).
    pub corpora: Vec<String>,
    /// Embedding model of new corpora and of the advertised entry.
    pub embedding_model: String,
    /// Reorder results with `rerank.text`.
    pub rerank: bool,
}

/// The RAG service.
pub struct RagService {
    store: Arc<RagStore>,
    blobs: Arc<BlobStore>,
    bus: WeakBus,
    log: Option<EventLog>,
    settings: RagSettings,
    /// Ingests run one at a time (the idempotency check and the event).
    ingest: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RagService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RagService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn rag_err(e: RagError) -> CallError {
    e.into()
}

/// Embedding failures: the provider is unreachable or refuses the model
/// (RAG-001 `partition`).
fn embed_err(model: &str, e: CallError) -> CallError {
    match e.code {
        ErrorCode::BadRequest | ErrorCode::InternalError => CallError::new(
            ErrorCode::InternalError,
            format!("embed.text ({model}) failed: {}", e.message),
        ),
        _ => CallError::new(
            ErrorCode::Partition,
            format!(
                "no reachable embed.text provider with the corpus's model `{model}`: {}",
                e.message
            ),
        ),
    }
}

impl RagService {
    /// Opens the corpora (creating the configured ones and `personal`).
    pub fn new(
        store: Arc<RagStore>,
        blobs: Arc<BlobStore>,
        bus: &Bus,
        log: Option<EventLog>,
        settings: RagSettings,
    ) -> Result<Arc<Self>, RagError> {
        store.create(PERSONAL, &settings.embedding_model)?;
        for c in &settings.corpora {
            store.create(c, &settings.embedding_model)?;
        }
        Ok(Arc::new(Self {
            store,
            blobs,
            bus: bus.downgrade(),
            log,
            settings,
            ingest: tokio::sync::Mutex::new(()),
        }))
    }

    /// The corpora.
    pub fn store(&self) -> &Arc<RagStore> {
        &self.store
    }

    fn bus(&self) -> Result<Bus, CallError> {
        self.bus
            .upgrade()
            .ok_or_else(|| CallError::new(ErrorCode::Partition, "the node is shutting down"))
    }

    /// Corpora listed in `rag.query`'s `corpora`: configured, non-empty and
    /// built with the advertised model (RAG-006).
    fn advertised_corpora(&self) -> Vec<String> {
        self.settings
            .corpora
            .iter()
            .filter_map(|n| self.store.get(n))
            .filter(|c| c.counts().0 > 0 && c.model() == self.settings.embedding_model)
            .map(|c| c.name().to_string())
            .collect()
    }

    fn query_params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("corpora".into(), self.advertised_corpora().join(",")),
            (
                "embedding_model".into(),
                self.settings.embedding_model.clone(),
            ),
            ("k_max".into(), K_MAX.to_string()),
            (LOCAL_CORPORA.into(), PERSONAL.into()),
        ])
    }

    fn ingest_params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("corpora_available".into(), self.settings.corpora.join(",")),
            (LOCAL_CORPORA.into(), PERSONAL.into()),
        ])
    }

    /// The corpus a caller may use, or `not_found`.
    fn corpus_for(&self, name: &str, trust: Trust) -> Result<Arc<Corpus>, CallError> {
        rag::check_name(name).map_err(rag_err)?;
        let allowed = if name == PERSONAL {
            trust == Trust::Operator
        } else {
            self.settings.corpora.iter().any(|c| c == name)
        };
        allowed
            .then(|| self.store.get(name))
            .flatten()
            .ok_or_else(|| {
                CallError::new(
                    ErrorCode::NotFound,
                    format!("corpus `{name}` is not served here"),
                )
            })
    }

    /// Embeds texts through the bus with `model`.
    async fn embed(&self, model: &str, texts: &[String]) -> Result<Vec<Vec<f32>>, CallError> {
        let bus = self.bus()?;
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(EMBED_BATCH) {
            let req = embed::EmbedTextRequest {
                params: Some(embed::EmbedTextParams {
                    model: model.to_string(),
                }),
                input: Some(embed::EmbedTextInput {
                    texts: batch
                        .iter()
                        .map(|t| t.chars().take(EMBED_MAX_CHARS).collect())
                        .collect(),
                    normalize: Some(true),
                }),
            };
            let resp: embed::EmbedTextResponse = bus
                .unary("embed.text", "1.0", &req)
                .await
                .map_err(|e| embed_err(model, e))?;
            let vectors = resp.output.unwrap_or_default().embeddings;
            if vectors.len() != batch.len() {
                return Err(CallError::internal(format!(
                    "embed.text returned {} vectors for {} texts",
                    vectors.len(),
                    batch.len()
                )));
            }
            out.extend(vectors.into_iter().map(|v| v.values));
        }
        Ok(out)
    }

    async fn query(&self, req: Request) -> Result<pb::QueryResponse, CallError> {
        let started = Instant::now();
        let r: pb::QueryRequest = req.decode()?;
        let name = r.params.unwrap_or_default().corpus;
        let input = r.input.unwrap_or_default();
        if input.query.trim().is_empty() {
            return Err(CallError::bad_request("query is empty"));
        }
        let k = input.k.unwrap_or(K_DEFAULT);
        if k > K_MAX {
            return Err(CallError::bad_request(format!(
                "k {k} is above k_max {K_MAX}"
            )));
        }
        let corpus = self.corpus_for(&name, req.trust)?;
        if corpus.counts().0 == 0 {
            return Err(CallError::new(
                ErrorCode::NotFound,
                format!("corpus `{name}` holds no documents yet"),
            ));
        }
        let filter = Filter::parse(&input.filter).map_err(rag_err)?;
        let q = self
            .embed(corpus.model(), std::slice::from_ref(&input.query))
            .await?
            .pop()
            .unwrap_or_default();
        let wanted = if self.settings.rerank {
            (k as usize * 3).max(20)
        } else {
            k as usize
        };
        let hits = {
            let corpus = corpus.clone();
            let text = input.query.clone();
            tokio::task::spawn_blocking(move || {
                corpus.search(&q, &text, wanted, (!filter.is_empty()).then_some(&filter))
            })
            .await
            .map_err(|e| CallError::internal(e.to_string()))?
        };
        let mut resolved = Vec::with_capacity(hits.len());
        for h in &hits {
            let (c, d, text) = corpus.resolve(h.chunk).map_err(rag_err)?;
            resolved.push((h.score, c, d, text));
        }
        if self.settings.rerank && resolved.len() > 1 {
            match self.rerank(&input.query, &resolved).await {
                Ok(order) => {
                    resolved = order
                        .into_iter()
                        .filter_map(|(i, s)| {
                            resolved.get(i).cloned().map(|mut r| {
                                r.0 = s;
                                r
                            })
                        })
                        .collect();
                }
                Err(e) => tracing::warn!(error = %e, "rerank.text failed; keeping the fused order"),
            }
        }
        resolved.truncate(k as usize);
        let include_text = input.include_text.unwrap_or(true);
        let chunks = resolved
            .into_iter()
            .enumerate()
            .map(|(i, (score, c, d, text))| pb::RetrievedChunk {
                rank: i as u32 + 1,
                score,
                text: if include_text { text } else { String::new() },
                metadata: Some(pb::ChunkMetadata {
                    doc_cid: d.doc_cid,
                    doc_title: d.title,
                    page: c.page,
                    chunk_id: c.chunk_id,
                }),
            })
            .collect();
        Ok(pb::QueryResponse {
            output: Some(pb::QueryOutput { chunks }),
            meta: Some(pb::QueryMeta {
                corpus: name,
                ms: started.elapsed().as_millis() as u64,
                embedding_model: corpus.model().to_string(),
            }),
        })
    }

    /// The reranked order of `resolved`: (index, score), best first.
    async fn rerank(
        &self,
        query: &str,
        resolved: &[(f32, crate::rag::index::ChunkRef, DocMeta, String)],
    ) -> Result<Vec<(usize, f32)>, CallError> {
        let req = rerank::TextRequest {
            params: Some(rerank::TextParams::default()),
            input: Some(rerank::TextInput {
                query: query.to_string(),
                documents: resolved
                    .iter()
                    .enumerate()
                    .map(|(i, r)| rerank::RerankDocument {
                        id: i.to_string(),
                        text: r.3.clone(),
                    })
                    .collect(),
                top_k: Some(resolved.len() as u32),
            }),
        };
        let resp: rerank::TextResponse = self.bus()?.unary("rerank.text", "1.0", &req).await?;
        Ok(resp
            .output
            .unwrap_or_default()
            .ranked
            .into_iter()
            .filter_map(|d| d.id.parse::<usize>().ok().map(|i| (i, d.score)))
            .collect())
    }

    async fn ingest(&self, req: Request) -> Result<pb::IngestResponse, CallError> {
        let started = Instant::now();
        let r: pb::IngestRequest = req.decode()?;
        let name = r.params.unwrap_or_default().corpus;
        let input = r.input.unwrap_or_default();
        let corpus = self.corpus_for(&name, req.trust)?;
        let cid = input.doc_cid.clone();
        if !crate::blobs::is_cid(&cid) {
            return Err(CallError::bad_request(format!(
                "doc_cid `{}` is not a blake3: CID",
                cid.escape_debug()
            )));
        }
        let _one_at_a_time = self.ingest.lock().await;
        let respond = |rec: &DocRecord| pb::IngestResponse {
            output: Some(pb::IngestOutput {
                doc_cid: rec.meta.doc_cid.clone(),
                chunks_indexed: rec.chunks,
                tokens_indexed: rec.tokens,
            }),
            meta: Some(pb::IngestMeta {
                corpus: name.clone(),
                ms: started.elapsed().as_millis() as u64,
                ingest_event_id: rec.event_id.clone(),
            }),
        };
        // RAG-002: a repeated (corpus, doc_cid) returns the first output.
        if let Some(rec) = corpus.document(&cid).map_err(rag_err)? {
            return Ok(respond(&rec));
        }
        let size = match self.blobs.stat(&cid) {
            Ok(info) => info.size,
            Err(BlobError::NotFound(_)) => {
                return Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("blob {cid} is not in this node's store (put it with file.put first)"),
                ));
            }
            Err(BlobError::Name(m)) => return Err(CallError::bad_request(m)),
            Err(e) => return Err(CallError::bad_request(format!("doc_cid: {e}"))),
        };
        if size > MAX_DOCUMENT_BYTES {
            return Err(CallError::bad_request(format!(
                "the document has {size} bytes; rag.ingest reads at most {MAX_DOCUMENT_BYTES}"
            )));
        }
        let blobs = self.blobs.clone();
        let format = input.metadata.get("format").cloned();
        let read_cid = cid.clone();
        let (format, chunks) = tokio::task::spawn_blocking(move || {
            let bytes = blobs
                .read(&read_cid)
                .map_err(|e| CallError::internal(format!("reading {read_cid}: {e}")))?;
            rag::prepare(&bytes, format.as_deref()).map_err(rag_err)
        })
        .await
        .map_err(|e| CallError::internal(e.to_string()))??;
        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        let vectors = self.embed(corpus.model(), &texts).await?;
        let tokens: u64 = chunks.iter().map(|c| u64::from(c.tokens)).sum();
        let event = pb::DocumentIngestedEvent {
            corpus: name.clone(),
            doc_cid: cid.clone(),
            title: input.title.clone(),
            language: input.language.clone(),
            chunks: chunks.len() as u32,
        };
        let event_id = self.emit(&name, &event)?;
        let mut metadata: BTreeMap<String, String> = input.metadata.into_iter().collect();
        metadata.remove("format");
        let record = DocRecord {
            meta: DocMeta {
                doc_cid: cid,
                title: input.title,
                language: input.language,
                metadata,
            },
            chunks: chunks.len() as u32,
            tokens,
            event_id,
            first: 0,
            format: format.name().to_string(),
        };
        let store = self.store.clone();
        let c2 = corpus.clone();
        let (stored, _) = tokio::task::spawn_blocking(move || {
            store.add_document(&c2, record, chunks.into_iter().zip(vectors).collect())
        })
        .await
        .map_err(|e| CallError::internal(e.to_string()))?
        .map_err(rag_err)?;
        tracing::info!(
            corpus = %name,
            doc = %stored.meta.doc_cid,
            chunks = stored.chunks,
            format = %stored.format,
            "document ingested"
        );
        if let Ok(bus) = self.bus() {
            bus.set_params("rag.query", 1, self.query_params());
        }
        Ok(respond(&stored))
    }

    /// Appends `rag.document.ingested` to the community log (RAG-013) and
    /// returns its id. Without a community (or `personal`), nothing is
    /// logged and the id is the CID of the event's payload.
    fn emit(&self, corpus: &str, event: &pb::DocumentIngestedEvent) -> Result<String, CallError> {
        let payload = event.encode_to_vec();
        if corpus != PERSONAL
            && let Some(log) = &self.log
        {
            match log.append("rag.document.ingested", payload.clone()) {
                Ok(a) => return Ok(a.id),
                Err(e) => tracing::warn!(error = %e, "rag.document.ingested not logged"),
            }
        }
        Ok(format!("blake3:{}", blake3::hash(&payload).to_hex()))
    }

    fn list(&self, req: &Request) -> pb::ListCorporaResponse {
        let started = Instant::now();
        let mut names = self.advertised_corpora();
        if req.trust == Trust::Operator {
            names.push(PERSONAL.to_string());
        }
        let corpora = names
            .iter()
            .filter_map(|n| self.store.get(n))
            .map(|c| {
                let (docs, chunks) = c.counts();
                pb::Corpus {
                    name: c.name().to_string(),
                    docs: docs as u32,
                    chunks: chunks as u64,
                    size_bytes: c.size_bytes(),
                    language_majority: c.language_majority(),
                }
            })
            .collect();
        pb::ListCorporaResponse {
            output: Some(pb::ListCorporaOutput { corpora }),
            meta: Some(pb::ListCorporaMeta {
                ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    async fn serve(self: Arc<Self>, req: Request, out: Sink) -> Result<(), CallError> {
        match req.capability.name {
            "rag.query" => out.send(&self.query(req).await?).await,
            "rag.ingest" => out.send(&self.ingest(req).await?).await,
            "rag.list_corpora" => out.send(&self.list(&req)).await,
            other => Err(CallError::new(
                ErrorCode::NotFound,
                format!("{other} is not served here"),
            )),
        }
    }
}

/// A handle the bus holds; the service itself lives in an `Arc`.
#[derive(Debug)]
pub struct RagHandle(pub Arc<RagService>);

impl Service for RagHandle {
    fn name(&self) -> &str {
        "rag"
    }

    fn offers(&self) -> Vec<Offer> {
        let mut offers = Offer::all(&["rag.query", "rag.ingest", "rag.list_corpora"]);
        for o in &mut offers {
            o.params = match o.capability.name {
                "rag.query" => self.0.query_params(),
                "rag.ingest" => self.0.ingest_params(),
                _ => BTreeMap::new(),
            };
        }
        offers
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        self.0.clone().serve(req, out).boxed()
    }
}
