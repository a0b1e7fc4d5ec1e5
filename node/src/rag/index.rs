//! The in-memory search index of one corpus: unit vectors searched
//! exactly or through an HNSW graph (`instant-distance`), an Okapi BM25
//! inverted index over the chunk texts, and the document table the
//! metadata filters read (RAG-014…017).
//!
//! Retrieval is hybrid: the best [`candidates`] chunks by cosine
//! similarity and the best by BM25 are fused by reciprocal rank
//! (`1 / (60 + rank)` summed over both lists); the fused value is the
//! `score` a query returns. With a filter, both lists are computed exactly
//! over the matching documents' chunks only, so the filter applies before
//! the top-`k` cut (RAG-014).
//!
//! The HNSW graph is built (in the background, see `store`) once a corpus
//! holds [`ANN_MIN_CHUNKS`] chunks; chunks added after the last build are
//! searched exactly until the next one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use instant_distance::{Builder, HnswMap, Search};

use super::RagError;

/// Chunks from which the approximate index is used.
pub const ANN_MIN_CHUNKS: usize = 20_000;
/// The reciprocal-rank-fusion constant.
const RRF_K: f32 = 60.0;
const BM25_K1: f32 = 1.2;
const BM25_B: f32 = 0.75;

/// How many candidates each retriever contributes for a top-`k` query.
pub fn candidates(k: usize) -> usize {
    (k * 4).max(50)
}

/// Words of a text for BM25: lowercased runs of letters and digits,
/// without a short list of English function words.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
}

const STOP: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "i", "if",
    "in", "is", "it", "its", "my", "of", "on", "or", "so", "that", "the", "this", "to", "was",
    "we", "what", "when", "where", "which", "who", "why", "with", "you", "your",
];

/// A document as the filter sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DocMeta {
    /// CID of the source blob.
    pub doc_cid: String,
    /// Title given at ingest.
    pub title: String,
    /// Language given at ingest.
    pub language: String,
    /// Ingest metadata.
    pub metadata: BTreeMap<String, String>,
}

impl DocMeta {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "language" => Some(&self.language),
            "title" => Some(&self.title),
            "doc_cid" => Some(&self.doc_cid),
            other => self.metadata.get(other).map(String::as_str),
        }
    }
}

/// Where a chunk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    /// Index of its document in the corpus's table.
    pub doc: u32,
    /// Its id within the document.
    pub chunk_id: String,
    /// The page it starts on.
    pub page: u32,
}

/// A parsed `rag.query` filter (RAG-014…017).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    exact: Vec<(String, String)>,
    min: Vec<(String, f64)>,
    max: Vec<(String, f64)>,
}

impl Filter {
    /// Parses the filter map; a `min_`/`max_` value that is not a decimal
    /// number is refused (RAG-017).
    pub fn parse(map: &HashMap<String, String>) -> Result<Self, RagError> {
        let mut f = Self::default();
        let mut entries: Vec<(&String, &String)> = map.iter().collect();
        entries.sort();
        for (k, v) in entries {
            let bound = k
                .strip_prefix("min_")
                .map(|f| (true, f))
                .or_else(|| k.strip_prefix("max_").map(|f| (false, f)));
            match bound {
                Some((is_min, field)) if !field.is_empty() => {
                    let n = decimal(v).ok_or_else(|| {
                        RagError::BadRequest(format!(
                            "filter `{k}` needs a decimal number, not `{v}`"
                        ))
                    })?;
                    if is_min {
                        f.min.push((field.to_string(), n));
                    } else {
                        f.max.push((field.to_string(), n));
                    }
                }
                _ => f.exact.push((k.clone(), v.clone())),
            }
        }
        Ok(f)
    }

    /// Whether the filter is empty.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.min.is_empty() && self.max.is_empty()
    }

    /// Whether a document satisfies every entry (RAG-015, RAG-016).
    pub fn matches(&self, doc: &DocMeta) -> bool {
        self.exact
            .iter()
            .all(|(k, v)| doc.get(k) == Some(v.as_str()))
            && self
                .min
                .iter()
                .all(|(k, n)| doc.get(k).and_then(decimal).is_some_and(|x| x >= *n))
            && self
                .max
                .iter()
                .all(|(k, n)| doc.get(k).and_then(decimal).is_some_and(|x| x <= *n))
    }
}

/// A decimal number: digits with an optional sign and fraction (no
/// exponents, no `inf`/`nan`).
fn decimal(s: &str) -> Option<f64> {
    let t = s.trim();
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let ok = !body.is_empty()
        && body.chars().all(|c| c.is_ascii_digit() || c == '.')
        && body.chars().filter(|c| *c == '.').count() <= 1
        && body.chars().any(|c| c.is_ascii_digit());
    if ok { t.parse().ok() } else { None }
}

#[derive(Debug, Clone)]
struct Point(Arc<[f32]>);

impl instant_distance::Point for Point {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

/// The dot product (cosine similarity of unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes, so the compiler vectorises without fast-math.
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// An HNSW graph over the first `len` chunks of a corpus.
pub struct Ann {
    map: HnswMap<Point, u32>,
    len: usize,
}

impl std::fmt::Debug for Ann {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ann").field("len", &self.len).finish()
    }
}

impl Ann {
    /// Builds the graph over `vectors` (`dim` floats each). Takes seconds
    /// per ten thousand vectors: run it off the async runtime.
    pub fn build(vectors: &[f32], dim: usize) -> Self {
        let points: Vec<Point> = vectors.chunks_exact(dim).map(|v| Point(v.into())).collect();
        let len = points.len();
        let values: Vec<u32> = (0..len as u32).collect();
        let map = Builder::default()
            .ef_construction(100)
            .ef_search(128)
            .seed(0x4845_4152_5448)
            .build(points, values);
        Self { map, len }
    }

    /// Chunks it covers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Okapi BM25 over chunk texts.
#[derive(Debug, Default)]
struct Bm25 {
    postings: HashMap<String, Vec<(u32, u16)>>,
    lens: Vec<u32>,
    total: u64,
}

impl Bm25 {
    fn add(&mut self, chunk: u32, text: &str) {
        let mut tf: HashMap<String, u16> = HashMap::new();
        let mut len = 0u32;
        for w in words(text) {
            len += 1;
            let e = tf.entry(w).or_default();
            *e = e.saturating_add(1);
        }
        for (w, n) in tf {
            self.postings.entry(w).or_default().push((chunk, n));
        }
        self.lens.push(len);
        self.total += u64::from(len);
    }

    fn top(&self, query: &str, n: usize, allowed: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)> {
        let count = self.lens.len() as f32;
        if count == 0.0 {
            return Vec::new();
        }
        let avg = self.total as f32 / count;
        let mut terms: Vec<String> = words(query).collect();
        terms.sort();
        terms.dedup();
        let mut acc: HashMap<u32, f32> = HashMap::new();
        for t in &terms {
            let Some(list) = self.postings.get(t) else {
                continue;
            };
            let df = list.len() as f32;
            let idf = ((count - df + 0.5) / (df + 0.5) + 1.0).ln();
            for &(c, f) in list {
                if !allowed(c) {
                    continue;
                }
                let f = f32::from(f);
                let len = self.lens[c as usize] as f32;
                let s = idf * f * (BM25_K1 + 1.0)
                    / (f + BM25_K1 * (1.0 - BM25_B + BM25_B * len / avg.max(1.0)));
                *acc.entry(c).or_default() += s;
            }
        }
        let mut all: Vec<(u32, f32)> = acc.into_iter().collect();
        top_n(&mut all, n);
        all
    }
}

/// Keeps the `n` best `(chunk, score)` pairs, best first, ties by chunk.
fn top_n(v: &mut Vec<(u32, f32)>, n: usize) {
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if v.len() > n && n > 0 {
        v.select_nth_unstable_by(n - 1, cmp);
        v.truncate(n);
    }
    v.sort_by(cmp);
}

/// One result of a search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The chunk's position in the corpus.
    pub chunk: u32,
    /// The fused score; higher is better.
    pub score: f32,
}

/// The index of one corpus.
#[derive(Debug)]
pub struct CorpusIndex {
    dim: usize,
    vectors: Vec<f32>,
    chunks: Vec<ChunkRef>,
    docs: Vec<DocMeta>,
    by_cid: HashMap<String, u32>,
    bm25: Bm25,
    ann: Option<Arc<Ann>>,
    /// Whether a graph build is running.
    pub building: bool,
}

impl CorpusIndex {
    /// An empty index of `dim`-dimensional vectors (0: set by the first
    /// document).
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            vectors: Vec::new(),
            chunks: Vec::new(),
            docs: Vec::new(),
            by_cid: HashMap::new(),
            bm25: Bm25::default(),
            ann: None,
            building: false,
        }
    }

    /// Vector dimension (0 while empty).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Chunks indexed.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Documents indexed.
    pub fn docs(&self) -> &[DocMeta] {
        &self.docs
    }

    /// A chunk's source.
    pub fn chunk(&self, i: u32) -> Option<(&ChunkRef, &DocMeta)> {
        let c = self.chunks.get(i as usize)?;
        Some((c, self.docs.get(c.doc as usize)?))
    }

    /// Adds a document's chunks (`texts`, `vectors` in the same order).
    pub fn add_document(
        &mut self,
        doc: DocMeta,
        chunks: Vec<(ChunkRef, String, Vec<f32>)>,
    ) -> Result<(), RagError> {
        if let Some((_, _, v)) = chunks.first()
            && self.dim == 0
        {
            self.dim = v.len();
        }
        if chunks.iter().any(|(_, _, v)| v.len() != self.dim) {
            return Err(RagError::Internal(format!(
                "vectors of this corpus have {} dimensions",
                self.dim
            )));
        }
        let d = self.docs.len() as u32;
        self.by_cid.insert(doc.doc_cid.clone(), d);
        self.docs.push(doc);
        for (mut c, text, v) in chunks {
            c.doc = d;
            let i = self.chunks.len() as u32;
            self.bm25.add(i, &text);
            self.vectors.extend_from_slice(&v);
            self.chunks.push(c);
        }
        Ok(())
    }

    /// Whether a document is indexed.
    pub fn has_doc(&self, cid: &str) -> bool {
        self.by_cid.contains_key(cid)
    }

    /// Whether a (re)build of the graph is due: past [`ANN_MIN_CHUNKS`],
    /// with a quarter of the chunks (at least 5,000) outside the graph.
    pub fn ann_due(&self) -> bool {
        let n = self.len();
        let covered = self.ann.as_ref().map_or(0, |a| a.len());
        !self.building && n >= ANN_MIN_CHUNKS && n - covered >= (covered / 4).max(5_000)
    }

    /// A copy of the vectors for a graph build.
    pub fn vectors_snapshot(&self) -> (Vec<f32>, usize) {
        (self.vectors.clone(), self.dim)
    }

    /// Installs a built graph.
    pub fn install_ann(&mut self, ann: Ann) {
        self.ann = Some(Arc::new(ann));
        self.building = false;
    }

    /// Chunks the graph covers.
    pub fn ann_len(&self) -> usize {
        self.ann.as_ref().map_or(0, |a| a.len())
    }

    fn allowed_docs(&self, filter: Option<&Filter>) -> Option<Vec<bool>> {
        let f = filter.filter(|f| !f.is_empty())?;
        Some(self.docs.iter().map(|d| f.matches(d)).collect())
    }

    /// The `n` chunks most similar to `q` by exact scan, best first.
    pub fn exact(
        &self,
        q: &[f32],
        n: usize,
        allowed: Option<&[bool]>,
        from: usize,
    ) -> Vec<(u32, f32)> {
        if self.dim == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(n * 2);
        let mut floor = f32::NEG_INFINITY;
        for (i, v) in self.vectors.chunks_exact(self.dim).enumerate().skip(from) {
            if let Some(a) = allowed
                && !a[self.chunks[i].doc as usize]
            {
                continue;
            }
            let s = dot(q, v);
            if s > floor || best.len() < n {
                best.push((i as u32, s));
                if best.len() >= n * 2 {
                    top_n(&mut best, n);
                    floor = best.last().map_or(f32::NEG_INFINITY, |b| b.1);
                }
            }
        }
        top_n(&mut best, n);
        best
    }

    /// Dense candidates: the graph over the chunks it covers plus an exact
    /// scan of the rest; an exact scan of everything under a filter.
    fn dense(&self, q: &[f32], n: usize, allowed: Option<&[bool]>) -> Vec<(u32, f32)> {
        match (&self.ann, allowed) {
            (Some(ann), None) if q.len() == self.dim => {
                let mut search = Search::default();
                let mut out: Vec<(u32, f32)> = ann
                    .map
                    .search(&Point(q.into()), &mut search)
                    .take(n)
                    .map(|item| (*item.value, 1.0 - item.distance))
                    .collect();
                out.extend(self.exact(q, n, None, ann.len()));
                top_n(&mut out, n);
                out
            }
            _ => self.exact(q, n, allowed, 0),
        }
    }

    /// The dense top `n` as search computes it without a filter: the graph
    /// (when built) plus an exact scan of the chunks it does not cover.
    pub fn dense_top(&self, q: &[f32], n: usize) -> Vec<(u32, f32)> {
        self.dense(q, n, None)
    }

    /// Hybrid search: the top `k` chunks for a query vector and its text.
    pub fn search(&self, q: &[f32], text: &str, k: usize, filter: Option<&Filter>) -> Vec<Hit> {
        let n = candidates(k);
        let allowed = self.allowed_docs(filter);
        let dense = self.dense(q, n, allowed.as_deref());
        let chunks = &self.chunks;
        let keep = |c: u32| {
            allowed
                .as_ref()
                .is_none_or(|a| a[chunks[c as usize].doc as usize])
        };
        let sparse = self.bm25.top(text, n, &keep);
        let mut fused: HashMap<u32, f32> = HashMap::new();
        for list in [&dense, &sparse] {
            for (rank, (c, _)) in list.iter().enumerate() {
                *fused.entry(*c).or_default() += 1.0 / (RRF_K + rank as f32 + 1.0);
            }
        }
        let mut all: Vec<(u32, f32)> = fused.into_iter().collect();
        top_n(&mut all, k);
        all.into_iter()
            .map(|(chunk, score)| Hit { chunk, score })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        v
    }

    fn doc(cid: &str, lang: &str, year: &str) -> DocMeta {
        DocMeta {
            doc_cid: cid.into(),
            title: format!("title {cid}"),
            language: lang.into(),
            metadata: [("year".to_string(), year.to_string())].into(),
        }
    }

    fn chunk_ref(id: &str) -> ChunkRef {
        ChunkRef {
            doc: 0,
            chunk_id: id.into(),
            page: 1,
        }
    }

    #[test]
    fn filters_follow_rag_015_to_017() {
        let d = doc("blake3:aa", "de", "2004");
        let f = |pairs: &[(&str, &str)]| {
            Filter::parse(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert!(
            f(&[("language", "de"), ("min_year", "2000")])
                .unwrap()
                .matches(&d)
        );
        assert!(!f(&[("language", "en")]).unwrap().matches(&d));
        assert!(!f(&[("max_year", "2003.5")]).unwrap().matches(&d));
        assert!(f(&[("max_year", "2004")]).unwrap().matches(&d));
        // A document without the key does not match.
        assert!(!f(&[("author", "x")]).unwrap().matches(&d));
        assert!(!f(&[("min_pages", "1")]).unwrap().matches(&d));
        // Non-numeric bounds are refused.
        for bad in ["abc", "1e3", "", "nan", "1.2.3"] {
            assert!(
                matches!(f(&[("min_year", bad)]), Err(RagError::BadRequest(_))),
                "{bad}"
            );
        }
        // A non-numeric value in the document does not match a bound.
        let odd = doc("blake3:bb", "de", "circa 2000");
        assert!(!f(&[("min_year", "1")]).unwrap().matches(&odd));
    }

    #[test]
    fn hybrid_search_finds_by_meaning_and_by_word() {
        let dim = 32;
        let mut idx = CorpusIndex::new(0);
        for d in 0..20u64 {
            let chunks = (0..5u64)
                .map(|c| {
                    let text = format!("document {d} chunk {c} word{d}x{c}");
                    (
                        chunk_ref(&format!("ch_{c:03}")),
                        text,
                        unit(d * 10 + c, dim),
                    )
                })
                .collect();
            let lang = if d % 2 == 0 { "en" } else { "de" };
            idx.add_document(
                doc(&format!("blake3:{d:02}"), lang, &format!("{}", 2000 + d)),
                chunks,
            )
            .unwrap();
        }
        // The vector of doc 7 chunk 3 with unrelated words: dense finds it.
        let hits = idx.search(&unit(73, dim), "nothing matches", 3, None);
        assert_eq!(hits[0].chunk, 7 * 5 + 3);
        // A rare word with an unrelated vector: BM25 finds it.
        let hits = idx.search(&unit(9999, dim), "word12x4", 3, None);
        assert_eq!(hits[0].chunk, 12 * 5 + 4);
        // Ranks are by descending score.
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        // The filter applies before the cut: the best German chunk for an
        // English chunk's vector is still returned, k of them.
        let f = Filter::parse(&[("language".to_string(), "de".to_string())].into()).unwrap();
        let hits = idx.search(&unit(73 - 10, dim), "document", 5, Some(&f));
        assert_eq!(hits.len(), 5);
        for h in &hits {
            let (_, d) = idx.chunk(h.chunk).unwrap();
            assert_eq!(d.language, "de");
        }
        assert!(idx.has_doc("blake3:07") && !idx.has_doc("blake3:99"));
    }

    #[test]
    fn the_graph_agrees_with_the_exact_scan() {
        let dim = 24;
        let mut idx = CorpusIndex::new(dim);
        let chunks: Vec<_> = (0..3000u64)
            .map(|i| (chunk_ref(&format!("ch_{i}")), String::new(), unit(i, dim)))
            .collect();
        idx.add_document(doc("blake3:a", "en", "1"), chunks)
            .unwrap();
        let (v, d) = idx.vectors_snapshot();
        idx.install_ann(Ann::build(&v[..2500 * d], d));
        assert_eq!(idx.ann_len(), 2500);
        // Recall of the graph (plus the exact tail) against the exact scan.
        let mut found = 0;
        for q in 0..50u64 {
            let query = unit(q * 61 + 7, dim);
            let exact = idx.exact(&query, 10, None, 0);
            let approx = idx.dense(&query, 10, None);
            found += exact
                .iter()
                .filter(|e| approx.iter().any(|a| a.0 == e.0))
                .count();
        }
        assert!(found >= 450, "recall@10 {found}/500");
        // A chunk outside the graph is found through the exact tail.
        let hits = idx.dense(&unit(2999, dim), 1, None);
        assert_eq!(hits[0].0, 2999);
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a = unit(1, 37);
        let b = unit(2, 37);
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
    }
}
