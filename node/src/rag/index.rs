//! The in-memory search index of one corpus: unit vectors searched
//! exactly or, past [`ANN_MIN_CHUNKS`], through a scalar-quantised copy
//! (one signed byte per dimension and a scale per vector) whose candidates
//! are rescored exactly; an Okapi BM25 inverted index over the chunk texts;
//! and the document table the metadata filters read (RAG-014…017).
//!
//! Retrieval is hybrid: the best [`candidates`] chunks by cosine
//! similarity and the best by BM25 are fused by reciprocal rank
//! (`1 / (60 + rank)` summed over both lists); the fused value is the
//! `score` a query returns. With a filter, both lists are computed over the
//! matching documents' chunks only, so the filter applies before the
//! top-`k` cut (RAG-014).
//!
//! The quantised scan reads a quarter of the bytes of the exact one and
//! needs no build: it is kept up to date as documents arrive.

use std::collections::{BTreeMap, HashMap};

use super::RagError;

/// Chunks from which the quantised scan is used.
pub const ANN_MIN_CHUNKS: usize = 20_000;
/// Quantised candidates rescored exactly, per result wanted.
const RESCORE: usize = 8;
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

/// The dot product of two quantised vectors.
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let tail: i32 = ra
        .iter()
        .zip(rb)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// A vector as signed bytes and the scale that maps them back.
fn quantize(v: &[f32], out: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    out.extend(
        v.iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
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
        // Scores in a dense array (a query touches many chunks); `touched`
        // lists the chunks that have one.
        let mut acc = vec![0f32; self.lens.len()];
        let mut touched: Vec<u32> = Vec::new();
        let norm = BM25_K1 * BM25_B / avg.max(1.0);
        let base = BM25_K1 * (1.0 - BM25_B);
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
                let s = idf * f * (BM25_K1 + 1.0) / (f + base + norm * len);
                let slot = &mut acc[c as usize];
                if *slot == 0.0 {
                    touched.push(c);
                }
                *slot += s;
            }
        }
        let mut all: Vec<(u32, f32)> = touched.into_iter().map(|c| (c, acc[c as usize])).collect();
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
    /// The vectors as signed bytes, and each one's scale.
    codes: Vec<i8>,
    scales: Vec<f32>,
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
            codes: Vec::new(),
            scales: Vec::new(),
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
            let scale = quantize(&v, &mut self.codes);
            self.scales.push(scale);
            self.chunks.push(c);
        }
        Ok(())
    }

    /// Whether a document is indexed.
    pub fn has_doc(&self, cid: &str) -> bool {
        self.by_cid.contains_key(cid)
    }

    fn allowed_docs(&self, filter: Option<&Filter>) -> Option<Vec<bool>> {
        let f = filter.filter(|f| !f.is_empty())?;
        Some(self.docs.iter().map(|d| f.matches(d)).collect())
    }

    /// The `n` chunks most similar to `q` by exact scan, best first.
    pub fn exact(&self, q: &[f32], n: usize, allowed: Option<&[bool]>) -> Vec<(u32, f32)> {
        if self.dim == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(n * 2);
        let mut floor = f32::NEG_INFINITY;
        for (i, v) in self.vectors.chunks_exact(self.dim).enumerate() {
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

    /// The `n` chunks most similar to `q` through the quantised copy: the
    /// best `RESCORE × n` by quantised dot product (the scan split over the
    /// machine's cores), rescored exactly.
    pub fn approximate(&self, q: &[f32], n: usize, allowed: Option<&[bool]>) -> Vec<(u32, f32)> {
        if self.dim == 0 || q.len() != self.dim {
            return Vec::new();
        }
        let mut qc = Vec::with_capacity(self.dim);
        // The query's own scale is the same for every chunk: ranks only.
        quantize(q, &mut qc);
        let m = n * RESCORE;
        let len = self.len();
        let parts = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .clamp(1, 8)
            .min(len.div_ceil(10_000).max(1));
        let step = len.div_ceil(parts);
        let mut best: Vec<(u32, f32)> = if parts == 1 {
            self.scan_quantised(&qc, 0..len, m, allowed)
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..parts)
                    .map(|p| {
                        let range = p * step..((p + 1) * step).min(len);
                        let qc = &qc;
                        scope.spawn(move || self.scan_quantised(qc, range, m, allowed))
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        top_n(&mut best, m);
        let mut out: Vec<(u32, f32)> = best
            .into_iter()
            .map(|(i, _)| {
                let at = i as usize * self.dim;
                (i, dot(q, &self.vectors[at..at + self.dim]))
            })
            .collect();
        top_n(&mut out, n);
        out
    }

    /// The best `m` of the chunks in `range` by quantised dot product.
    fn scan_quantised(
        &self,
        qc: &[i8],
        range: std::ops::Range<usize>,
        m: usize,
        allowed: Option<&[bool]>,
    ) -> Vec<(u32, f32)> {
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(m * 2);
        let mut floor = f32::NEG_INFINITY;
        let codes = &self.codes[range.start * self.dim..range.end * self.dim];
        for (j, code) in codes.chunks_exact(self.dim).enumerate() {
            let i = range.start + j;
            if let Some(a) = allowed
                && !a[self.chunks[i].doc as usize]
            {
                continue;
            }
            let s = dot_i8(qc, code) as f32 * self.scales[i];
            if s > floor || best.len() < m {
                best.push((i as u32, s));
                if best.len() >= m * 2 {
                    top_n(&mut best, m);
                    floor = best.last().map_or(f32::NEG_INFINITY, |b| b.1);
                }
            }
        }
        top_n(&mut best, m);
        best
    }

    /// Dense candidates: an exact scan of a small corpus, the quantised
    /// scan with exact rescoring of a large one.
    fn dense(&self, q: &[f32], n: usize, allowed: Option<&[bool]>) -> Vec<(u32, f32)> {
        if self.len() >= ANN_MIN_CHUNKS {
            self.approximate(q, n, allowed)
        } else {
            self.exact(q, n, allowed)
        }
    }

    /// The dense top `n` as search computes it without a filter.
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
    fn the_quantised_scan_agrees_with_the_exact_scan() {
        let dim = 384;
        let mut idx = CorpusIndex::new(dim);
        let chunks: Vec<_> = (0..4000u64)
            .map(|i| (chunk_ref(&format!("ch_{i}")), String::new(), unit(i, dim)))
            .collect();
        idx.add_document(doc("blake3:a", "en", "1"), chunks)
            .unwrap();
        // Recall@10 of the quantised scan against the exact one.
        let mut found = 0;
        for q in 0..50u64 {
            let query = unit(q * 61 + 7, dim);
            let exact = idx.exact(&query, 10, None);
            let approx = idx.approximate(&query, 10, None);
            assert_eq!(approx.len(), 10);
            found += exact
                .iter()
                .filter(|e| approx.iter().any(|a| a.0 == e.0))
                .count();
            // Rescored exactly: the scores are the true similarities.
            for (i, s) in &approx {
                let at = *i as usize * dim;
                assert!((s - dot(&query, &idx.vectors[at..at + dim])).abs() < 1e-6);
            }
        }
        assert!(found >= 490, "recall@10 {found}/500");
        // A stored vector finds itself first; a filter excludes documents.
        assert_eq!(idx.approximate(&unit(2999, dim), 1, None)[0].0, 2999);
        assert!(idx.approximate(&unit(1, dim), 5, Some(&[false])).is_empty());
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a = unit(1, 37);
        let b = unit(2, 37);
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-5);
    }
}
