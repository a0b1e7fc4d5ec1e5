//! `llm.chat` and `llm.complete` (M04, `protocol/spec/llm.md`) on every model
//! this node serves: the local GGUF model (feature `models`) and HTTP
//! backends (OpenAI-compatible servers and Anthropic, [`super::llm_http`]).
//!
//! The bus holds one entry per capability and node (decision 0040), so one
//! service serves them all: `params.model` is the first (default) model,
//! `params.models` lists every name, and a call picks its model with
//! `params.model`, compared byte for byte (LLM-004; empty: the default).
//! Streaming token frames, `max_tokens`, temperature, top-p and seed, stop
//! sequences, cancellation.
//!
//! - A chat without a system message gets the configured system prompt, on
//!   every model (empty: none is added, and the local model's template uses
//!   its own default).
//! - `llm.complete` runs the local model on the raw prompt; an HTTP backend
//!   gets the prompt as one user message to its chat endpoint.
//! - Queueing: the local model generates one call at a time (a fair lock);
//!   an HTTP backend runs at most its `max_concurrent` calls at once (a fair
//!   semaphore). Further calls wait in arrival order, up to the entry's
//!   concurrency limit (8 for the local model plus twice each backend's
//!   `max_concurrent`, at most 64); beyond it the bus refuses them.
//! - `requires_internet`: the param is `true` when any backend is outside
//!   the LAN; the entry is withdrawn while the node is offline only when
//!   every model needs the internet.

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::llm::v1 as pb;

use super::llm_http::{GenRequest, HttpBackend, StopKind};
use crate::bus::{Offer, Request, Service, Sink};
use crate::error::CallError;
#[cfg(feature = "models")]
use crate::models::ModelError;
#[cfg(feature = "models")]
use crate::models::gguf::{ChatModel, Sampler, Stop};

/// Defaults of LLM-009.
const CHAT_MAX_TOKENS: u32 = 1024;
const COMPLETE_MAX_TOKENS: u32 = 256;
#[cfg(feature = "models")]
const TEMPERATURE: f32 = super::llm_http::DEFAULT_TEMPERATURE;
#[cfg(feature = "models")]
const TOP_P: f32 = super::llm_http::DEFAULT_TOP_P;
/// Calls admitted for the local model: one generates, the others wait.
#[cfg(feature = "models")]
const LOCAL_ADMITTED: u32 = 8;
/// Most calls the entry admits at once, whatever the backends.
const MAX_ADMITTED: u32 = 64;

/// The LLM service over the models of this node.
pub struct LlmService {
    system_prompt: Arc<str>,
    /// The default model first.
    models: Vec<Arc<Model>>,
}

impl std::fmt::Debug for LlmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        f.debug_struct("LlmService")
            .field("models", &names)
            .finish_non_exhaustive()
    }
}

/// One advertised model and what runs it.
struct Model {
    name: String,
    ctx: usize,
    /// Calls this model adds to the entry's concurrency limit.
    admitted: u32,
    engine: Engine,
}

enum Engine {
    /// The local model; a fair lock, so waiting calls are served in order.
    #[cfg(feature = "models")]
    Local(Arc<tokio::sync::Mutex<ChatModel>>),
    /// An HTTP backend and its slots (a fair semaphore).
    Http {
        backend: Arc<HttpBackend>,
        slots: Arc<Semaphore>,
    },
}

impl Model {
    fn backend(&self) -> &'static str {
        match &self.engine {
            #[cfg(feature = "models")]
            Engine::Local(_) => "candle-gguf",
            Engine::Http { backend, .. } => backend.kind().name(),
        }
    }

    fn requires_internet(&self) -> bool {
        match &self.engine {
            #[cfg(feature = "models")]
            Engine::Local(_) => false,
            Engine::Http { backend, .. } => backend.requires_internet(),
        }
    }

    fn check_ctx(&self, ctx: Option<u32>) -> Result<(), CallError> {
        if let Some(c) = ctx
            && c as usize > self.ctx
        {
            return Err(CallError::bad_request(format!(
                "ctx {c} exceeds this model's context window of {} tokens",
                self.ctx
            )));
        }
        Ok(())
    }

    async fn run(
        &self,
        job: Job,
        cancel: CancellationToken,
        out: Sink,
        started: Instant,
    ) -> Result<(), CallError> {
        match &self.engine {
            #[cfg(feature = "models")]
            Engine::Local(engine) => run_local(engine, job, cancel, out, started).await,
            Engine::Http { backend, slots } => {
                run_http(backend, slots, job, cancel, out, started).await
            }
        }
    }
}

/// What to generate from.
enum Text {
    /// `(role, content)` messages of a chat.
    Chat(Vec<(String, String)>),
    /// The prompt of a completion.
    Prompt(String),
}

/// One generation request, from either capability.
struct Job {
    text: Text,
    max_tokens: u32,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Vec<String>,
    stream: bool,
    chat: bool,
}

impl LlmService {
    /// A service without models yet; `system_prompt` is used when a chat
    /// has no system message (empty: none is added).
    pub fn new(system_prompt: &str) -> Self {
        Self {
            system_prompt: Arc::from(system_prompt),
            models: Vec::new(),
        }
    }

    /// Adds the local GGUF model under `name`, its publisher's identifier.
    #[cfg(feature = "models")]
    pub fn with_local(self, name: &str, model: ChatModel) -> Self {
        let ctx = model.ctx();
        self.add(Model {
            name: name.to_string(),
            ctx,
            admitted: LOCAL_ADMITTED,
            engine: Engine::Local(Arc::new(tokio::sync::Mutex::new(model))),
        })
    }

    /// Adds an HTTP backend under the advertised `name`, with a context
    /// window of `ctx` tokens and at most `max_concurrent` calls sent to it
    /// at once (at least 1).
    pub fn with_http(
        self,
        name: &str,
        backend: HttpBackend,
        ctx: u32,
        max_concurrent: u32,
    ) -> Self {
        let max = max_concurrent.max(1);
        self.add(Model {
            name: name.to_string(),
            ctx: ctx as usize,
            admitted: max.saturating_mul(2),
            engine: Engine::Http {
                backend: Arc::new(backend),
                slots: Arc::new(Semaphore::new(max as usize)),
            },
        })
    }

    /// Whether no model has been added.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The advertised model names, the default first.
    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    fn add(mut self, model: Model) -> Self {
        if model.name.is_empty() || model.name.contains(',') {
            tracing::warn!(
                model = %model.name,
                "LLM model not served: its name is empty or holds a comma (names are listed comma-separated)"
            );
        } else if self.models.iter().any(|m| m.name == model.name) {
            tracing::warn!(
                model = %model.name,
                "LLM model not served: another model already has that name"
            );
        } else {
            self.models.push(Arc::new(model));
        }
        self
    }
}

fn stop_reason(s: StopKind) -> pb::StopReason {
    match s {
        StopKind::End => pb::StopReason::End,
        StopKind::MaxTokens => pb::StopReason::MaxTokens,
        StopKind::StopSequence => pb::StopReason::StopSequence,
        StopKind::Cancelled => pb::StopReason::Cancelled,
    }
}

#[cfg(feature = "models")]
fn local_stop_reason(s: Stop) -> pb::StopReason {
    match s {
        Stop::End => pb::StopReason::End,
        Stop::MaxTokens => pb::StopReason::MaxTokens,
        Stop::StopSequence => pb::StopReason::StopSequence,
        Stop::Cancelled => pb::StopReason::Cancelled,
    }
}

#[cfg(feature = "models")]
fn model_error(e: ModelError) -> CallError {
    match e {
        ModelError::Input(m) => CallError::bad_request(m),
        other => CallError::internal(other.to_string()),
    }
}

/// Sampling settings with the defaults of LLM-009; no seed picks one.
#[cfg(feature = "models")]
fn sampler(
    max_tokens: u32,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Vec<String>,
) -> Sampler {
    Sampler {
        max_tokens,
        temperature: f64::from(temperature.unwrap_or(TEMPERATURE)),
        top_p: f64::from(top_p.unwrap_or(TOP_P)),
        seed: seed.map_or_else(rand::random, |s| s as u64),
        stop,
    }
}

fn gone() -> CallError {
    CallError::new(ErrorCode::Timeout, "the caller went away")
}

/// A `token` frame of either capability.
fn token_frame(chat: bool, text: String) -> Vec<u8> {
    let token = pb::TokenFrame {
        text,
        logprob: None,
    };
    if chat {
        prost::Message::encode_to_vec(&pb::ChatResponse {
            frame: Some(pb::chat_response::Frame::Token(token)),
        })
    } else {
        prost::Message::encode_to_vec(&pb::CompleteResponse {
            frame: Some(pb::complete_response::Frame::Token(token)),
        })
    }
}

/// The `done` frame of either capability.
fn done_frame(chat: bool, tokens_out: u32, stop: pb::StopReason, started: Instant) -> Vec<u8> {
    let done = pb::DoneFrame {
        tokens_out,
        stop_reason: stop as i32,
        ms: started.elapsed().as_millis() as u64,
    };
    if chat {
        prost::Message::encode_to_vec(&pb::ChatResponse {
            frame: Some(pb::chat_response::Frame::Done(done)),
        })
    } else {
        prost::Message::encode_to_vec(&pb::CompleteResponse {
            frame: Some(pb::complete_response::Frame::Done(done)),
        })
    }
}

/// The model a call asks for (LLM-004: byte for byte; empty: the default).
fn pick(models: &[Arc<Model>], wanted: &str) -> Result<Arc<Model>, CallError> {
    let found = if wanted.is_empty() {
        models.first()
    } else {
        models.iter().find(|m| m.name == wanted)
    };
    found.cloned().ok_or_else(|| {
        let served: Vec<String> = models.iter().map(|m| format!("`{}`", m.name)).collect();
        CallError::new(
            ErrorCode::NotFound,
            format!(
                "model `{wanted}` is not served here (this node serves {})",
                served.join(", ")
            ),
        )
    })
}

/// Decodes and checks a call (LLM-001, 002, 004, 005, 009) and picks its model.
fn prepare(
    models: &[Arc<Model>],
    system_prompt: &str,
    req: &Request,
) -> Result<(Arc<Model>, Job), CallError> {
    match req.capability.name {
        "llm.chat" => {
            let r: pb::ChatRequest = req.decode()?;
            let params = r.params.unwrap_or_default();
            let model = pick(models, &params.model)?;
            model.check_ctx(params.ctx)?;
            let input = r.input.unwrap_or_default();
            if input.messages.is_empty() {
                return Err(CallError::bad_request("messages is empty"));
            }
            let mut msgs = Vec::new();
            for m in &input.messages {
                let role = match pb::Role::try_from(m.role) {
                    Ok(pb::Role::System) => "system",
                    Ok(pb::Role::User) => "user",
                    Ok(pb::Role::Assistant) => "assistant",
                    Ok(pb::Role::Tool) => "tool",
                    _ => {
                        return Err(CallError::bad_request(
                            "a message has no role (ROLE_UNSPECIFIED)",
                        ));
                    }
                };
                if !m.parts.is_empty() {
                    return Err(CallError::new(
                        ErrorCode::NotFound,
                        format!("{} does not take images or parts", model.name),
                    ));
                }
                msgs.push((role.to_string(), m.content.clone()));
            }
            if !system_prompt.is_empty() && !msgs.iter().any(|(r, _)| r == "system") {
                msgs.insert(0, ("system".to_string(), system_prompt.to_string()));
            }
            if !msgs.iter().any(|(r, _)| r == "user") {
                return Err(CallError::bad_request("messages hold no user message"));
            }
            if !input.tools.is_empty() {
                return Err(CallError::new(
                    ErrorCode::NotImplemented,
                    format!("{} is served without tool calling", model.name),
                ));
            }
            let job = Job {
                text: Text::Chat(msgs),
                max_tokens: input.max_tokens.unwrap_or(CHAT_MAX_TOKENS),
                temperature: input.temperature,
                top_p: input.top_p,
                seed: input.seed,
                stop: input.stop,
                stream: input.stream.unwrap_or(true),
                chat: true,
            };
            Ok((model, job))
        }
        "llm.complete" => {
            let r: pb::CompleteRequest = req.decode()?;
            let params = r.params.unwrap_or_default();
            let model = pick(models, &params.model)?;
            model.check_ctx(params.ctx)?;
            let input = r.input.unwrap_or_default();
            if input.prompt.is_empty() {
                return Err(CallError::bad_request("prompt is empty"));
            }
            let job = Job {
                text: Text::Prompt(input.prompt),
                max_tokens: input.max_tokens.unwrap_or(COMPLETE_MAX_TOKENS),
                temperature: input.temperature,
                top_p: input.top_p,
                seed: input.seed,
                stop: input.stop,
                stream: input.stream.unwrap_or(true),
                chat: false,
            };
            Ok((model, job))
        }
        other => Err(CallError::new(
            ErrorCode::NotFound,
            format!("{other} is not served here"),
        )),
    }
}

/// Generates on the local model in a blocking thread, one call at a time.
#[cfg(feature = "models")]
async fn run_local(
    engine: &Arc<tokio::sync::Mutex<ChatModel>>,
    job: Job,
    cancel: CancellationToken,
    out: Sink,
    started: Instant,
) -> Result<(), CallError> {
    use std::sync::atomic::{AtomicBool, Ordering};

    // Waits here for its turn on the model.
    let engine = engine.clone().lock_owned().await;
    let Job {
        text,
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        stream,
        chat,
    } = job;
    let prompt = match text {
        Text::Chat(msgs) => engine.render(&msgs).map_err(model_error)?,
        Text::Prompt(p) => p,
    };
    let sampler = sampler(max_tokens, temperature, top_p, seed, stop);
    let stopped = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let flag = stopped.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let mut engine = engine;
        let ids = engine.encode(&prompt)?;
        engine.generate(&ids, &sampler, |piece| {
            !flag.load(Ordering::Relaxed) && tx.blocking_send(piece.to_string()).is_ok()
        })
    });
    let mut whole = String::new();
    let mut gone_away = false;
    loop {
        tokio::select! {
            piece = rx.recv() => match piece {
                Some(p) if stream => {
                    if out.send_bytes(token_frame(chat, p)).await.is_err() {
                        stopped.store(true, Ordering::Relaxed);
                        gone_away = true;
                    }
                }
                Some(p) => whole.push_str(&p),
                None => break,
            },
            _ = cancel.cancelled(), if !gone_away => {
                // LLM-016: stop generating at once.
                stopped.store(true, Ordering::Relaxed);
                gone_away = true;
            }
        }
    }
    let (tokens_out, stop) = worker
        .await
        .map_err(|e| CallError::internal(e.to_string()))?
        .map_err(model_error)?;
    if gone_away {
        return Err(gone());
    }
    if !stream && !whole.is_empty() {
        out.send_bytes(token_frame(chat, whole)).await?;
    }
    out.send_bytes(done_frame(
        chat,
        tokens_out,
        local_stop_reason(stop),
        started,
    ))
    .await
}

/// Generates on an HTTP backend once one of its slots is free.
async fn run_http(
    backend: &HttpBackend,
    slots: &Semaphore,
    job: Job,
    cancel: CancellationToken,
    out: Sink,
    started: Instant,
) -> Result<(), CallError> {
    // Waits here, in arrival order, for a slot on the backend.
    let _slot = tokio::select! {
        slot = slots.acquire() => slot.map_err(|_| CallError::internal("the backend was shut down"))?,
        _ = cancel.cancelled() => return Err(gone()),
    };
    let Job {
        text,
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        stream,
        chat,
    } = job;
    let messages = match text {
        Text::Chat(msgs) => msgs,
        Text::Prompt(p) => vec![("user".to_string(), p)],
    };
    let request = GenRequest {
        messages,
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        stream,
    };
    let (tx, mut rx) = mpsc::channel::<String>(64);
    // Dropping this future (the caller went away) drops the HTTP response.
    let generation = backend.generate(&request, &cancel, tx);
    tokio::pin!(generation);
    let mut result = None;
    let mut whole = String::new();
    loop {
        tokio::select! {
            r = &mut generation, if result.is_none() => result = Some(r),
            piece = rx.recv() => match piece {
                Some(p) if stream => {
                    if out.send_bytes(token_frame(chat, p)).await.is_err() {
                        return Err(gone());
                    }
                }
                Some(p) => whole.push_str(&p),
                // The generation has finished and every piece is in.
                None => break,
            },
        }
    }
    let generated = match result {
        Some(r) => r,
        None => generation.await,
    }
    .map_err(CallError::from)?;
    if generated.stop == StopKind::Cancelled {
        return Err(gone());
    }
    if !stream && !whole.is_empty() {
        out.send_bytes(token_frame(chat, whole)).await?;
    }
    out.send_bytes(done_frame(
        chat,
        generated.tokens_out,
        stop_reason(generated.stop),
        started,
    ))
    .await
}

impl Service for LlmService {
    fn name(&self) -> &str {
        "llm"
    }

    fn offers(&self) -> Vec<Offer> {
        let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        let mut backends: Vec<&str> = Vec::new();
        for m in &self.models {
            let b = m.backend();
            if !backends.contains(&b) {
                backends.push(b);
            }
        }
        let ctx = self.models.iter().map(|m| m.ctx).max().unwrap_or(0);
        let admitted = self
            .models
            .iter()
            .fold(0u32, |n, m| n.saturating_add(m.admitted))
            .min(MAX_ADMITTED);
        let internet_any = self.models.iter().any(|m| m.requires_internet());
        let internet_all =
            !self.models.is_empty() && self.models.iter().all(|m| m.requires_internet());
        let models = names.join(",");
        let backend = backends.join(",");
        let mut offers = Offer::all(&["llm.chat", "llm.complete"]);
        for o in &mut offers {
            for (k, v) in [
                ("model", names.first().copied().unwrap_or_default()),
                ("models", models.as_str()),
                ("backend", backend.as_str()),
                ("modalities", "text"),
                ("tools_supported", "false"),
            ] {
                o.params.insert(k.into(), v.into());
            }
            o.params.insert("ctx".into(), ctx.to_string());
            if internet_any {
                o.params.insert("requires_internet".into(), "true".into());
            }
            o.max_concurrent = admitted;
            o.requires_internet = internet_all;
        }
        offers
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let models = self.models.clone();
        let system_prompt = self.system_prompt.clone();
        async move {
            let (model, job) = prepare(&models, &system_prompt, &req)?;
            let started = Instant::now();
            model.run(job, req.cancel, out, started).await
        }
        .boxed()
    }
}
