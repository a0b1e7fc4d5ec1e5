//! `rerank.text` (M24, `protocol/spec/media.md` RERANK-001): a candle
//! cross-encoder when `rerank.model_path` names one, otherwise the
//! documented fallback scorer `hearthnet/bm25`: Okapi BM25 (k1 = 1.2,
//! b = 0.75) of the query's words over the submitted documents, with the
//! inverse document frequencies taken from those documents. Words are
//! lowercased runs of letters and digits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;

use hearthnet_sdk::constants as k;
use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::rerank::v1 as pb;

use crate::bus::{Offer, Request, Service, Sink};
use crate::error::CallError;
use crate::models::cross::CrossEncoder;

/// Name of the fallback scorer.
pub const BM25: &str = "hearthnet/bm25";
const DEFAULT_TOP_K: usize = 10;

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// BM25 scores of `docs` for `query`, the statistics taken from `docs`.
pub fn bm25(query: &str, docs: &[String]) -> Vec<f32> {
    let (k1, b) = (1.2f32, 0.75f32);
    let tokenized: Vec<Vec<String>> = docs.iter().map(|d| words(d)).collect();
    let n = docs.len() as f32;
    let avg = tokenized.iter().map(Vec::len).sum::<usize>() as f32 / n.max(1.0);
    let mut df: HashMap<&str, f32> = HashMap::new();
    for t in &tokenized {
        let mut seen: Vec<&str> = t.iter().map(String::as_str).collect();
        seen.sort_unstable();
        seen.dedup();
        for w in seen {
            *df.entry(w).or_default() += 1.0;
        }
    }
    let q = words(query);
    tokenized
        .iter()
        .map(|t| {
            let len = t.len() as f32;
            q.iter()
                .map(|w| {
                    let f = t.iter().filter(|x| *x == w).count() as f32;
                    if f == 0.0 {
                        return 0.0;
                    }
                    let d = df.get(w.as_str()).copied().unwrap_or(0.0);
                    let idf = ((n - d + 0.5) / (d + 0.5) + 1.0).ln();
                    idf * f * (k1 + 1.0) / (f + k1 * (1.0 - b + b * len / avg.max(1.0)))
                })
                .sum()
        })
        .collect()
}

/// The rerank service.
pub struct RerankService {
    model: String,
    cross: Option<Arc<Mutex<CrossEncoder>>>,
}

impl std::fmt::Debug for RerankService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RerankService")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl RerankService {
    /// With a cross-encoder served as `model`, or the BM25 fallback.
    pub fn new(cross: Option<(String, CrossEncoder)>) -> Arc<Self> {
        Arc::new(match cross {
            Some((model, c)) => Self {
                model,
                cross: Some(Arc::new(Mutex::new(c))),
            },
            None => Self {
                model: BM25.into(),
                cross: None,
            },
        })
    }

    async fn serve(
        model: String,
        cross: Option<Arc<Mutex<CrossEncoder>>>,
        req: Request,
        out: Sink,
    ) -> Result<(), CallError> {
        let started = Instant::now();
        let r: pb::TextRequest = req.decode()?;
        let wanted = r.params.unwrap_or_default().model;
        if !wanted.is_empty() && wanted != model {
            return Err(CallError::new(
                ErrorCode::ModelNotFound,
                format!("rerank model `{wanted}` is not served here (this node serves `{model}`)"),
            ));
        }
        let input = r.input.unwrap_or_default();
        let max = k::RERANK_MAX_DOCS as usize;
        if input.query.trim().is_empty()
            || input.documents.is_empty()
            || input.documents.len() > max
        {
            return Err(CallError::bad_request(format!(
                "a query and 1 to {max} documents are needed ({} given)",
                input.documents.len()
            )));
        }
        let texts: Vec<String> = input.documents.iter().map(|d| d.text.clone()).collect();
        let query = input.query.clone();
        let (scores, truncated) = match cross {
            Some(c) => tokio::task::spawn_blocking(move || {
                c.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .score(&query, &texts)
            })
            .await
            .map_err(|e| CallError::internal(e.to_string()))?
            .map_err(|e| CallError::internal(e.to_string()))?,
            None => (bm25(&query, &texts), 0),
        };
        // Highest first; equal scores keep input order (stable sort).
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let top = input.top_k.map_or(DEFAULT_TOP_K, |n| n as usize);
        let ranked = order
            .into_iter()
            .take(top)
            .map(|i| pb::RankedDocument {
                id: input.documents[i].id.clone(),
                score: scores[i],
            })
            .collect();
        out.send(&pb::TextResponse {
            output: Some(pb::TextOutput { ranked }),
            meta: Some(pb::TextMeta {
                ms: started.elapsed().as_millis() as u64,
                model,
                truncated,
            }),
        })
        .await
    }
}

impl Service for RerankService {
    fn name(&self) -> &str {
        "rerank"
    }

    fn offers(&self) -> Vec<Offer> {
        let mut offers = Offer::all(&["rerank.text"]);
        for o in &mut offers {
            o.params.insert("model".into(), self.model.clone());
        }
        offers
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        Self::serve(self.model.clone(), self.cross.clone(), req, out).boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bm25_puts_the_document_about_the_query_first() {
        let docs: Vec<String> = [
            "The bakery on Mill Street sells sourdough bread every morning.",
            "Bicycle repair workshop: bring your bike on Saturdays.",
            "Bread, bread and more bread: the community oven bakes on Sundays.",
            "Ladders and tools can be borrowed from the shed.",
        ]
        .map(String::from)
        .to_vec();
        let s = bm25("fresh bread", &docs);
        assert!(s[2] > s[0] && s[0] > 0.0, "{s:?}");
        assert_eq!(s[1], 0.0);
        assert_eq!(s[3], 0.0);
        // Case and punctuation do not matter.
        assert_eq!(bm25("BREAD!", &docs), bm25("bread", &docs));
    }
}
