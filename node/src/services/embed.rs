//! `embed.text` (M11, `protocol/spec/embed.md`) on a local BERT encoder.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;

use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::embed::v1 as pb;

use crate::bus::{Offer, Request, Service, Sink};
use crate::error::CallError;
use crate::models::bert::Embedder;

/// Most texts per call (EMBED-001).
const MAX_TEXTS: usize = 256;
/// Longest text, in Unicode scalar values (EMBED-001, EMBED-004).
const MAX_CHARS: usize = 8192;
/// Texts per forward pass.
const BATCH: usize = 32;

/// The embedding service over one model.
pub struct EmbedService {
    model: String,
    embedder: Arc<Mutex<Embedder>>,
    dim: usize,
}

impl std::fmt::Debug for EmbedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedService")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl EmbedService {
    /// Serves `embedder` under the publisher's model name (EMBED-003).
    pub fn new(model: &str, embedder: Embedder) -> Arc<Self> {
        let dim = embedder.dim();
        Arc::new(Self {
            model: model.to_string(),
            embedder: Arc::new(Mutex::new(embedder)),
            dim,
        })
    }

    async fn serve(
        model: String,
        embedder: Arc<Mutex<Embedder>>,
        req: Request,
        out: Sink,
    ) -> Result<(), CallError> {
        let started = Instant::now();
        let r: pb::EmbedTextRequest = req.decode()?;
        let wanted = r.params.unwrap_or_default().model;
        // EMBED-002: byte for byte, no aliases.
        if !wanted.is_empty() && wanted != model {
            return Err(CallError::new(
                ErrorCode::NotFound,
                format!("model `{wanted}` is not served here (this node serves `{model}`)"),
            ));
        }
        let input = r.input.unwrap_or_default();
        if input.texts.is_empty() || input.texts.len() > MAX_TEXTS {
            return Err(CallError::bad_request(format!(
                "texts must hold 1 to {MAX_TEXTS} strings, not {}",
                input.texts.len()
            )));
        }
        if let Some((i, t)) = input
            .texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.chars().count() > MAX_CHARS)
        {
            return Err(CallError::bad_request(format!(
                "text {i} has {} characters; the limit is {MAX_CHARS}",
                t.chars().count()
            )));
        }
        let normalize = input.normalize.unwrap_or(true);
        let texts = input.texts;
        let vectors = tokio::task::spawn_blocking(move || {
            let e = embedder.lock().unwrap_or_else(|e| e.into_inner());
            let mut all = Vec::with_capacity(texts.len());
            for batch in texts.chunks(BATCH) {
                all.extend(e.embed(batch, normalize)?);
            }
            Ok::<_, crate::models::ModelError>(all)
        })
        .await
        .map_err(|e| CallError::internal(e.to_string()))?
        .map_err(|e| CallError::internal(e.to_string()))?;
        let dim = vectors.first().map_or(0, Vec::len) as u32;
        out.send(&pb::EmbedTextResponse {
            output: Some(pb::EmbedTextOutput {
                embeddings: vectors
                    .into_iter()
                    .map(|values| pb::Embedding { values })
                    .collect(),
                dim,
            }),
            meta: Some(pb::EmbedTextMeta {
                model,
                ms: started.elapsed().as_millis() as u64,
            }),
        })
        .await
    }
}

impl Service for EmbedService {
    fn name(&self) -> &str {
        "embed"
    }

    fn offers(&self) -> Vec<Offer> {
        let mut offers = Offer::all(&["embed.text"]);
        for o in &mut offers {
            o.params.insert("model".into(), self.model.clone());
            o.params.insert("dim".into(), self.dim.to_string());
        }
        offers
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        Self::serve(self.model.clone(), self.embedder.clone(), req, out).boxed()
    }
}
