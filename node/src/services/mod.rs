//! Services that ship with every node. Each implements
//! [`crate::bus::Service`] and registers with the bus at start-up.

pub mod builtin;
pub mod chat;
pub mod conformance;
#[cfg(feature = "models")]
pub mod embed;
pub mod files;
pub mod llm;
pub mod llm_http;
pub mod market;
pub mod rag;
#[cfg(feature = "models")]
pub mod rerank;

/// The services of the local models that are present: `embed.text` and
/// `rerank.text` (`llm.chat`/`llm.complete` come from [`llm_service`]). A
/// model whose files are missing is skipped
/// with a warning naming `hearthnet models fetch`; nothing is downloaded
/// here (the CLI provisions on `run`).
#[cfg(feature = "models")]
pub async fn local_models(
    config: &crate::config::Config,
) -> Vec<std::sync::Arc<dyn crate::bus::Service>> {
    use crate::models::provision::{self, MINILM};
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
            let name = config.embedding.model.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                crate::models::bert::Embedder::load(&dir, &name)
            })
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
    // llm.chat / llm.complete: `llm_service`, which also serves HTTP backends.
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

/// `llm.chat` and `llm.complete`: one service for every configured HTTP
/// backend (`llm.backends`, in order; the first is the default model) and
/// the local GGUF model (last; when the build has the `models` feature,
/// `models.enabled` is on and its file is present). `None` when there is no
/// model at all. A backend that cannot be set up is skipped with a warning;
/// one that cannot be reached is still advertised and answers
/// `not_implemented` until it can (LLM-007).
pub async fn llm_service(
    config: &crate::config::Config,
) -> Option<std::sync::Arc<dyn crate::bus::Service>> {
    use crate::config::LlmBackendKind;
    use llm_http::{HttpBackend, Kind};
    let mut service = llm::LlmService::new(&config.llm.system_prompt);
    for (i, b) in config.llm.backends.iter().enumerate() {
        if b.name.is_empty() {
            tracing::warn!(
                backend = i,
                "llm.backends entry not served: it has no name (the advertised model name)"
            );
            continue;
        }
        let kind = match b.kind {
            LlmBackendKind::Openai => Kind::OpenAi,
            LlmBackendKind::Anthropic => Kind::Anthropic,
        };
        let url = b.url.as_deref().unwrap_or(kind.default_url());
        let remote = b.model.as_deref().unwrap_or(&b.name);
        let api_key = match &b.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => Some(key),
                _ => {
                    tracing::warn!(
                        model = %b.name,
                        env = %var,
                        "llm backend: the API key variable is unset or empty; calling without a key"
                    );
                    None
                }
            },
            None => None,
        };
        match HttpBackend::new(kind, url, remote, api_key) {
            Ok(backend) => {
                tracing::info!(
                    model = %b.name,
                    backend = kind.name(),
                    url = %backend.url(),
                    "llm backend"
                );
                service = service.with_http(
                    &b.name,
                    backend,
                    b.ctx.unwrap_or(DEFAULT_BACKEND_CTX),
                    b.max_concurrent.unwrap_or(DEFAULT_BACKEND_CONCURRENCY),
                );
            }
            Err(e) => tracing::warn!(model = %b.name, error = %e, "llm backend not served"),
        }
    }
    #[cfg(feature = "models")]
    if let Some(model) = local_llm(config).await {
        service = service.with_local(&config.llm.model, model);
    }
    if service.is_empty() {
        return None;
    }
    let service: std::sync::Arc<dyn crate::bus::Service> = std::sync::Arc::new(service);
    Some(service)
}

/// Context window advertised for an HTTP backend without `ctx`.
const DEFAULT_BACKEND_CTX: u32 = 8192;
/// Calls sent to one HTTP backend at once without `max_concurrent`.
const DEFAULT_BACKEND_CONCURRENCY: u32 = 4;

/// The local GGUF model, when models are enabled and its file is present
/// (`llm.model_path`, else the provisioned SmolLM2 when `llm.model` names
/// it); a missing or broken file is a warning.
#[cfg(feature = "models")]
async fn local_llm(config: &crate::config::Config) -> Option<crate::models::gguf::ChatModel> {
    use crate::models::provision::{self, SMOLLM2};
    if !config.models.enabled {
        return None;
    }
    let llm_file = config.llm.model_path.clone().or_else(|| {
        if config.llm.model != SMOLLM2.name {
            return None;
        }
        let root = config.models_dir().ok()?;
        provision::find(&root, &SMOLLM2).map(|d| d.join(SMOLLM2.files[0]))
    });
    let Some(path) = llm_file else {
        tracing::warn!(
            model = %config.llm.model,
            "local LLM not served: no model file (run `hearthnet models fetch` or set llm.model_path)"
        );
        return None;
    };
    let loaded =
        tokio::task::spawn_blocking(move || crate::models::gguf::ChatModel::load(&path)).await;
    match loaded {
        Ok(Ok(m)) => Some(m),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "local LLM not served: the model does not load");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "local LLM not served");
            None
        }
    }
}
