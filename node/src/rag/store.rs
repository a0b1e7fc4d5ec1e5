//! Persistent corpora: a fjall database under `rag.corpora_dir` holding,
//! per corpus, its record (embedding model, RAG-009), its documents, its
//! chunks (text and source) and their vectors. A document is written in one
//! batch with all of its chunks, so a crash never leaves half a document.
//! On open every corpus is read back into its in-memory [`CorpusIndex`]
//! (which quantises its vectors as they load).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use serde::{Deserialize, Serialize};

use super::RagError;
use super::chunk::Chunk;
use super::index::{ChunkRef, CorpusIndex, DocMeta, Filter, Hit};

/// What a corpus records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusRecord {
    /// The exact name of the embedding model that builds its index.
    pub model: String,
}

/// What a corpus records about one ingested document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocRecord {
    /// Filterable fields.
    pub meta: DocMeta,
    /// Chunks indexed.
    pub chunks: u32,
    /// Tokens indexed (estimated).
    pub tokens: u64,
    /// Id of the `rag.document.ingested` event.
    pub event_id: String,
    /// Position of its first chunk in the corpus.
    pub first: u32,
    /// The format it was read as.
    pub format: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkRecord {
    doc_cid: String,
    chunk_id: String,
    page: u32,
    text: String,
}

/// One corpus: its record and its index.
pub struct Corpus {
    name: String,
    record: CorpusRecord,
    index: RwLock<CorpusIndex>,
    size: AtomicU64,
    chunks_ks: Keyspace,
    docs_ks: Keyspace,
}

impl std::fmt::Debug for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corpus")
            .field("name", &self.name)
            .field("model", &self.record.model)
            .finish_non_exhaustive()
    }
}

fn doc_key(corpus: &str, cid: &str) -> Vec<u8> {
    format!("{corpus}/{cid}").into_bytes()
}

fn chunk_key(corpus: &str, seq: u32) -> Vec<u8> {
    let mut k = format!("{corpus}/").into_bytes();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_of(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Corpus {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The embedding model its index was built with (RAG-009).
    pub fn model(&self) -> &str {
        &self.record.model
    }

    /// (documents, chunks).
    pub fn counts(&self) -> (usize, usize) {
        let idx = self.read();
        (idx.docs().len(), idx.len())
    }

    /// Bytes the corpus's records take (keys and values as written).
    pub fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The most common document language (empty when none).
    pub fn language_majority(&self) -> String {
        let idx = self.read();
        let mut n: BTreeMap<&str, usize> = BTreeMap::new();
        for d in idx.docs() {
            if !d.language.is_empty() {
                *n.entry(&d.language).or_default() += 1;
            }
        }
        n.into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map(|(l, _)| l.to_string())
            .unwrap_or_default()
    }

    /// A stored document's record.
    pub fn document(&self, cid: &str) -> Result<Option<DocRecord>, RagError> {
        match self.docs_ks.get(doc_key(&self.name, cid))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| {
                RagError::Internal(format!("document record of {cid} in {}: {e}", self.name))
            })?)),
            None => Ok(None),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CorpusIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CorpusIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Hybrid search (see [`CorpusIndex::search`]).
    pub fn search(&self, q: &[f32], text: &str, k: usize, filter: Option<&Filter>) -> Vec<Hit> {
        self.read().search(q, text, k, filter)
    }

    /// The exact dense top `k` (the benchmark's baseline).
    pub fn exact(&self, q: &[f32], k: usize) -> Vec<(u32, f32)> {
        self.read().exact(q, k, None)
    }

    /// The dense top `k` of an unfiltered search (through the quantised
    /// scan on a large corpus; the benchmark measures its recall).
    pub fn dense(&self, q: &[f32], k: usize) -> Vec<(u32, f32)> {
        self.read().dense_top(q, k)
    }

    /// A hit's chunk: its source, its document and its text.
    pub fn resolve(&self, chunk: u32) -> Result<(ChunkRef, DocMeta, String), RagError> {
        let (c, d) = {
            let idx = self.read();
            let (c, d) = idx
                .chunk(chunk)
                .ok_or_else(|| RagError::Internal(format!("chunk {chunk} out of range")))?;
            (c.clone(), d.clone())
        };
        let text = match self.chunks_ks.get(chunk_key(&self.name, chunk))? {
            Some(v) => {
                serde_json::from_slice::<ChunkRecord>(&v)
                    .map_err(|e| RagError::Internal(format!("chunk record {chunk}: {e}")))?
                    .text
            }
            None => String::new(),
        };
        Ok((c, d, text))
    }
}

/// All corpora of a node.
pub struct RagStore {
    db: Database,
    corpora_ks: Keyspace,
    docs_ks: Keyspace,
    chunks_ks: Keyspace,
    vectors_ks: Keyspace,
    corpora: RwLock<BTreeMap<String, Arc<Corpus>>>,
}

impl std::fmt::Debug for RagStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RagStore").finish_non_exhaustive()
    }
}

impl RagStore {
    /// Opens (or creates) the store in `dir` and loads every corpus.
    pub fn open(dir: &Path) -> Result<Arc<Self>, RagError> {
        std::fs::create_dir_all(dir).map_err(|e| RagError::Io(dir.display().to_string(), e))?;
        let db = crate::storage::open_database(dir)?;
        let corpora_ks = db.keyspace("corpora", KeyspaceCreateOptions::default)?;
        let docs_ks = db.keyspace("docs", KeyspaceCreateOptions::default)?;
        let chunks_ks = db.keyspace("chunks", KeyspaceCreateOptions::default)?;
        let vectors_ks = db.keyspace("vectors", KeyspaceCreateOptions::default)?;
        let store = Arc::new(Self {
            db,
            corpora_ks,
            docs_ks,
            chunks_ks,
            vectors_ks,
            corpora: RwLock::new(BTreeMap::new()),
        });
        let mut names = Vec::new();
        for item in store.corpora_ks.iter() {
            let (k, v) = item.into_inner()?;
            let name = String::from_utf8_lossy(&k).to_string();
            let record: CorpusRecord = serde_json::from_slice(&v)
                .map_err(|e| RagError::Internal(format!("corpus record {name}: {e}")))?;
            names.push((name, record));
        }
        for (name, record) in names {
            let corpus = store.load(&name, record)?;
            store
                .corpora
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name, corpus);
        }
        Ok(store)
    }

    fn load(&self, name: &str, record: CorpusRecord) -> Result<Arc<Corpus>, RagError> {
        let started = std::time::Instant::now();
        let mut docs: Vec<DocRecord> = Vec::new();
        let mut size = 0u64;
        for item in self.docs_ks.prefix(format!("{name}/")) {
            let (k, v) = item.into_inner()?;
            size += (k.len() + v.len()) as u64;
            docs.push(
                serde_json::from_slice(&v)
                    .map_err(|e| RagError::Internal(format!("document record in {name}: {e}")))?,
            );
        }
        docs.sort_by_key(|d| d.first);
        let mut index = CorpusIndex::new(0);
        for d in docs {
            let mut chunks = Vec::with_capacity(d.chunks as usize);
            for seq in d.first..d.first + d.chunks {
                let key = chunk_key(name, seq);
                let (Some(c), Some(v)) = (self.chunks_ks.get(&key)?, self.vectors_ks.get(&key)?)
                else {
                    return Err(RagError::Internal(format!(
                        "corpus {name}: chunk {seq} of {} is missing",
                        d.meta.doc_cid
                    )));
                };
                size += (2 * key.len() + c.len() + v.len()) as u64;
                let c: ChunkRecord = serde_json::from_slice(&c)
                    .map_err(|e| RagError::Internal(format!("chunk record {seq}: {e}")))?;
                chunks.push((
                    ChunkRef {
                        doc: 0,
                        chunk_id: c.chunk_id,
                        page: c.page,
                    },
                    c.text,
                    vector_of(&v),
                ));
            }
            index.add_document(d.meta, chunks)?;
        }
        if !index.is_empty() {
            tracing::info!(
                corpus = name,
                docs = index.docs().len(),
                chunks = index.len(),
                ms = started.elapsed().as_millis() as u64,
                "corpus loaded"
            );
        }
        Ok(Arc::new(Corpus {
            name: name.to_string(),
            record,
            index: RwLock::new(index),
            size: AtomicU64::new(size),
            chunks_ks: self.chunks_ks.clone(),
            docs_ks: self.docs_ks.clone(),
        }))
    }

    /// Creates a corpus built with `model`, or returns the existing one (an
    /// existing corpus keeps the model it was built with).
    pub fn create(&self, name: &str, model: &str) -> Result<Arc<Corpus>, RagError> {
        super::check_name(name)?;
        let mut all = self.corpora.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.get(name) {
            if c.model() != model {
                tracing::warn!(
                    corpus = name,
                    built_with = c.model(),
                    configured = model,
                    "the corpus keeps the embedding model it was built with"
                );
            }
            return Ok(c.clone());
        }
        let record = CorpusRecord {
            model: model.to_string(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| RagError::Internal(e.to_string()))?;
        self.corpora_ks.insert(name.as_bytes(), value)?;
        let corpus = Arc::new(Corpus {
            name: name.to_string(),
            record,
            index: RwLock::new(CorpusIndex::new(0)),
            size: AtomicU64::new(0),
            chunks_ks: self.chunks_ks.clone(),
            docs_ks: self.docs_ks.clone(),
        });
        all.insert(name.to_string(), corpus.clone());
        Ok(corpus)
    }

    /// A corpus by name.
    pub fn get(&self, name: &str) -> Option<Arc<Corpus>> {
        self.corpora
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every corpus, by name.
    pub fn list(&self) -> Vec<Arc<Corpus>> {
        self.corpora
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Stores and indexes a document with its chunks and their vectors.
    /// Returns the stored record; when the document is already in the
    /// corpus, returns that one and changes nothing.
    pub fn add_document(
        &self,
        corpus: &Arc<Corpus>,
        mut record: DocRecord,
        chunks: Vec<(Chunk, Vec<f32>)>,
    ) -> Result<(DocRecord, bool), RagError> {
        // Under the index's write lock: positions are assigned in order and
        // two ingests of one document cannot both store it.
        let mut idx = corpus.write();
        if let Some(existing) = corpus.document(&record.meta.doc_cid)? {
            return Ok((existing, false));
        }
        if let Some((_, v)) = chunks.first()
            && idx.dim() != 0
            && v.len() != idx.dim()
        {
            return Err(RagError::Internal(format!(
                "the embedding model returned {} dimensions; corpus {} holds {}",
                v.len(),
                corpus.name,
                idx.dim()
            )));
        }
        let first = idx.len() as u32;
        record.first = first;
        record.chunks = chunks.len() as u32;
        let mut batch = self.db.batch();
        let mut size = 0u64;
        let mut refs = Vec::with_capacity(chunks.len());
        for (i, (c, v)) in chunks.into_iter().enumerate() {
            let key = chunk_key(&corpus.name, first + i as u32);
            let rec = ChunkRecord {
                doc_cid: record.meta.doc_cid.clone(),
                chunk_id: c.id.clone(),
                page: c.page,
                text: c.text.clone(),
            };
            let value = serde_json::to_vec(&rec).map_err(|e| RagError::Internal(e.to_string()))?;
            let vb = vector_bytes(&v);
            size += (2 * key.len() + value.len() + vb.len()) as u64;
            batch.insert(&self.chunks_ks, key.clone(), value);
            batch.insert(&self.vectors_ks, key, vb);
            refs.push((
                ChunkRef {
                    doc: 0,
                    chunk_id: c.id,
                    page: c.page,
                },
                c.text,
                v,
            ));
        }
        let dk = doc_key(&corpus.name, &record.meta.doc_cid);
        let dv = serde_json::to_vec(&record).map_err(|e| RagError::Internal(e.to_string()))?;
        size += (dk.len() + dv.len()) as u64;
        batch.insert(&self.docs_ks, dk, dv);
        batch.commit()?;
        idx.add_document(record.meta.clone(), refs)?;
        corpus.size.fetch_add(size, Ordering::Relaxed);
        drop(idx);
        Ok((record, true))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(cid: &str) -> DocRecord {
        DocRecord {
            meta: DocMeta {
                doc_cid: cid.into(),
                title: "T".into(),
                language: "en".into(),
                metadata: BTreeMap::new(),
            },
            chunks: 0,
            tokens: 10,
            event_id: "e".into(),
            first: 0,
            format: "text".into(),
        }
    }

    fn chunk(i: usize, text: &str) -> Chunk {
        Chunk {
            id: format!("ch_{:03}", i + 1),
            page: 1,
            text: text.into(),
            tokens: 2,
        }
    }

    #[test]
    fn documents_survive_a_reopen_and_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RagStore::open(dir.path()).unwrap();
            let c = store.create("community", "m").unwrap();
            let (_, fresh) = store
                .add_document(
                    &c,
                    rec("blake3:a"),
                    vec![
                        (chunk(0, "rain water"), vec![1.0, 0.0]),
                        (chunk(1, "solar panel"), vec![0.0, 1.0]),
                    ],
                )
                .unwrap();
            assert!(fresh);
            let (again, fresh) = store
                .add_document(
                    &c,
                    rec("blake3:a"),
                    vec![(chunk(0, "other"), vec![1.0, 0.0])],
                )
                .unwrap();
            assert!(!fresh);
            assert_eq!(again.chunks, 2);
            // A vector of the wrong size is refused, nothing stored.
            assert!(
                store
                    .add_document(
                        &c,
                        rec("blake3:b"),
                        vec![(chunk(0, "x"), vec![1.0, 0.0, 0.0])]
                    )
                    .is_err()
            );
            assert!(c.document("blake3:b").unwrap().is_none());
        }
        let store = RagStore::open(dir.path()).unwrap();
        let c = store.get("community").unwrap();
        assert_eq!(c.model(), "m");
        assert_eq!(c.counts(), (1, 2));
        assert!(c.size_bytes() > 0);
        let hits = c.search(&[0.0, 1.0], "solar", 1, None);
        let (r, d, text) = c.resolve(hits[0].chunk).unwrap();
        assert_eq!(
            (r.chunk_id.as_str(), d.doc_cid.as_str(), text.as_str()),
            ("ch_002", "blake3:a", "solar panel")
        );
        // An existing corpus keeps its model.
        assert_eq!(store.create("community", "other").unwrap().model(), "m");
        assert!(store.create("Bad Name", "m").is_err());
    }
}
