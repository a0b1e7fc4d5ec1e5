//! Services that ship with every node. Each implements
//! [`crate::bus::Service`] and registers with the bus at start-up.

pub mod builtin;
pub mod chat;
#[cfg(feature = "models")]
pub mod embed;
pub mod files;
#[cfg(feature = "models")]
pub mod llm;
pub mod market;
#[cfg(feature = "models")]
pub mod rerank;

/// The services of the local models that are present: `embed.text` and
/// `llm.chat`/`llm.complete`. A model whose files are missing is skipped
/// with a warning naming `hearthnet models fetch`; nothing is downloaded
/// here (the CLI provisions on `run`).
#[cfg(feature = "models")]
pub async fn local_models(
    config: &crate::config::Config,
) -> Vec<std::sync::Arc<dyn crate::bus::Service>> {
    use crate::models::provision::{self, MINILM, SMOLLM2};
    let mut out: Vec<std::sync::Arc<dyn crate::bus::Service>> = Vec::new();
    if !config.models.enabled {
        return out;
    }
    let root = config.models_dir().ok();
    let find = |spec: &provision::ModelSpec, name: &str| {
        root.as_ref()
            .filter(|_| name == spec.name)
            .and_then(|r| provision::find(r, spec))
    };
    let embed_dir = config
        .embedding
        .model_path
        .clone()
        .or_else(|| find(&MINILM, &config.embedding.model));
    match embed_dir {
        Some(dir) => {
            let loaded =
                tokio::task::spawn_blocking(move || crate::models::bert::Embedder::load(&dir))
                    .await;
            match loaded {
                Ok(Ok(e)) => out.push(embed::EmbedService::new(&config.embedding.model, e)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "embed.text not served: the model does not load")
                }
                Err(e) => tracing::warn!(error = %e, "embed.text not served"),
            }
        }
        None => tracing::warn!(
            model = %config.embedding.model,
            "embed.text not served: no model files (run `hearthnet models fetch` or set embedding.model_path)"
        ),
    }
    let llm_file = config
        .llm
        .model_path
        .clone()
        .or_else(|| find(&SMOLLM2, &config.llm.model).map(|d| d.join(SMOLLM2.files[0])));
    match llm_file {
        Some(path) => {
            let loaded =
                tokio::task::spawn_blocking(move || crate::models::gguf::ChatModel::load(&path))
                    .await;
            match loaded {
                Ok(Ok(m)) => out.push(llm::LlmService::new(
                    &config.llm.model,
                    &config.llm.system_prompt,
                    m,
                )),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "llm.chat not served: the model does not load")
                }
                Err(e) => tracing::warn!(error = %e, "llm.chat not served"),
            }
        }
        None => tracing::warn!(
            model = %config.llm.model,
            "llm.chat not served: no model file (run `hearthnet models fetch` or set llm.model_path)"
        ),
    }
    // rerank.text: a configured cross-encoder, else the BM25 fallback.
    let cross = match config.rerank.model_path.clone() {
        Some(dir) => {
            match tokio::task::spawn_blocking(move || {
                crate::models::cross::CrossEncoder::load(&dir)
            })
            .await
            {
                Ok(Ok(c)) => Some((config.rerank.model.clone(), c)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rerank cross-encoder does not load; serving the BM25 fallback");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rerank cross-encoder; serving the BM25 fallback");
                    None
                }
            }
        }
        None => None,
    };
    out.push(rerank::RerankService::new(cross));
    out
}
