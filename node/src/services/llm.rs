//! `llm.chat` and `llm.complete` (M04, `protocol/spec/llm.md`) on a local
//! GGUF model: streaming token frames, `max_tokens`, temperature, top-p and
//! seed, stop sequences, cancellation within a token. One model instance
//! generates at a time; other calls wait their turn (bounded by the
//! capability's concurrency limit), in arrival order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::FutureExt;
use futures::future::BoxFuture;

use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;
use hearthnet_sdk::proto::hearthnet::llm::v1 as pb;

use crate::bus::{Offer, Request, Service, Sink};
use crate::error::CallError;
use crate::models::ModelError;
use crate::models::gguf::{ChatModel, Sampler, Stop};

/// Defaults of LLM-009.
const CHAT_MAX_TOKENS: u32 = 1024;
const COMPLETE_MAX_TOKENS: u32 = 256;
const TEMPERATURE: f32 = 0.7;
const TOP_P: f32 = 0.95;

/// The LLM service over one local model.
pub struct LlmService {
    model: String,
    system_prompt: String,
    ctx: usize,
    /// The model; a fair lock, so waiting calls are served in order.
    engine: Arc<tokio::sync::Mutex<ChatModel>>,
}

impl std::fmt::Debug for LlmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmService")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

fn stop_reason(s: Stop) -> pb::StopReason {
    match s {
        Stop::End => pb::StopReason::End,
        Stop::MaxTokens => pb::StopReason::MaxTokens,
        Stop::StopSequence => pb::StopReason::StopSequence,
        Stop::Cancelled => pb::StopReason::Cancelled,
    }
}

fn model_error(e: ModelError) -> CallError {
    match e {
        ModelError::Input(m) => CallError::bad_request(m),
        other => CallError::internal(other.to_string()),
    }
}

/// Sampling settings with the defaults of LLM-009; no seed picks one.
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

/// One generation request, from either capability.
struct Job {
    prompt: String,
    sampler: Sampler,
    stream: bool,
    chat: bool,
}

impl LlmService {
    /// Serves `model` under the publisher's name; `system_prompt` is used
    /// when a chat has no system message (empty: the template's own).
    pub fn new(name: &str, system_prompt: &str, model: ChatModel) -> Arc<Self> {
        Arc::new(Self {
            model: name.to_string(),
            system_prompt: system_prompt.to_string(),
            ctx: model.ctx(),
            engine: Arc::new(tokio::sync::Mutex::new(model)),
        })
    }

    fn check_model(&self, wanted: &str) -> Result<(), CallError> {
        // LLM-004: byte for byte.
        if !wanted.is_empty() && wanted != self.model {
            return Err(CallError::new(
                ErrorCode::NotFound,
                format!(
                    "model `{wanted}` is not served here (this node serves `{}`)",
                    self.model
                ),
            ));
        }
        Ok(())
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

    async fn serve(self: Arc<Self>, req: Request, out: Sink) -> Result<(), CallError> {
        let job = match req.capability.name {
            "llm.chat" => {
                let r: pb::ChatRequest = req.decode()?;
                let params = r.params.unwrap_or_default();
                self.check_model(&params.model)?;
                self.check_ctx(params.ctx)?;
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
                            format!("{} does not take images or parts", self.model),
                        ));
                    }
                    msgs.push((role.to_string(), m.content.clone()));
                }
                if !self.system_prompt.is_empty() && !msgs.iter().any(|(r, _)| r == "system") {
                    msgs.insert(0, ("system".to_string(), self.system_prompt.clone()));
                }
                if !msgs.iter().any(|(r, _)| r == "user") {
                    return Err(CallError::bad_request("messages hold no user message"));
                }
                if !input.tools.is_empty() {
                    return Err(CallError::new(
                        ErrorCode::NotImplemented,
                        format!("{} is served without tool calling", self.model),
                    ));
                }
                let prompt = self
                    .engine
                    .lock()
                    .await
                    .render(&msgs)
                    .map_err(model_error)?;
                Job {
                    prompt,
                    sampler: sampler(
                        input.max_tokens.unwrap_or(CHAT_MAX_TOKENS),
                        input.temperature,
                        input.top_p,
                        input.seed,
                        input.stop,
                    ),
                    stream: input.stream.unwrap_or(true),
                    chat: true,
                }
            }
            "llm.complete" => {
                let r: pb::CompleteRequest = req.decode()?;
                let params = r.params.unwrap_or_default();
                self.check_model(&params.model)?;
                self.check_ctx(params.ctx)?;
                let input = r.input.unwrap_or_default();
                if input.prompt.is_empty() {
                    return Err(CallError::bad_request("prompt is empty"));
                }
                Job {
                    prompt: input.prompt,
                    sampler: sampler(
                        input.max_tokens.unwrap_or(COMPLETE_MAX_TOKENS),
                        input.temperature,
                        input.top_p,
                        input.seed,
                        input.stop,
                    ),
                    stream: input.stream.unwrap_or(true),
                    chat: false,
                }
            }
            other => {
                return Err(CallError::new(
                    ErrorCode::NotFound,
                    format!("{other} is not served here"),
                ));
            }
        };
        self.run(job, req.cancel, out).await
    }

    async fn run(
        &self,
        job: Job,
        cancel: tokio_util::sync::CancellationToken,
        out: Sink,
    ) -> Result<(), CallError> {
        let started = Instant::now();
        // Waits here for its turn on the model.
        let engine = self.engine.clone().lock_owned().await;
        let stopped = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
        let flag = stopped.clone();
        let Job {
            prompt,
            sampler,
            stream,
            chat,
        } = job;
        let worker = tokio::task::spawn_blocking(move || {
            let mut engine = engine;
            let ids = engine.encode(&prompt)?;
            engine.generate(&ids, &sampler, |piece| {
                !flag.load(Ordering::Relaxed) && tx.blocking_send(piece.to_string()).is_ok()
            })
        });
        let frame = |text: String| -> Vec<u8> {
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
        };
        let mut whole = String::new();
        let mut gone = false;
        loop {
            tokio::select! {
                piece = rx.recv() => match piece {
                    Some(p) if stream => {
                        if out.send_bytes(frame(p)).await.is_err() {
                            stopped.store(true, Ordering::Relaxed);
                            gone = true;
                        }
                    }
                    Some(p) => whole.push_str(&p),
                    None => break,
                },
                _ = cancel.cancelled(), if !gone => {
                    // LLM-016: stop generating at once.
                    stopped.store(true, Ordering::Relaxed);
                    gone = true;
                }
            }
        }
        let (tokens_out, stop) = worker
            .await
            .map_err(|e| CallError::internal(e.to_string()))?
            .map_err(model_error)?;
        if gone {
            return Err(CallError::new(ErrorCode::Timeout, "the caller went away"));
        }
        if !stream && !whole.is_empty() {
            out.send_bytes(frame(whole)).await?;
        }
        let done = pb::DoneFrame {
            tokens_out,
            stop_reason: stop_reason(stop) as i32,
            ms: started.elapsed().as_millis() as u64,
        };
        let bytes = if chat {
            prost::Message::encode_to_vec(&pb::ChatResponse {
                frame: Some(pb::chat_response::Frame::Done(done)),
            })
        } else {
            prost::Message::encode_to_vec(&pb::CompleteResponse {
                frame: Some(pb::complete_response::Frame::Done(done)),
            })
        };
        out.send_bytes(bytes).await
    }
}

impl Service for LlmService {
    fn name(&self) -> &str {
        "llm"
    }

    fn offers(&self) -> Vec<Offer> {
        let mut offers = Offer::all(&["llm.chat", "llm.complete"]);
        for o in &mut offers {
            for (k, v) in [
                ("model", self.model.as_str()),
                ("models", self.model.as_str()),
                ("backend", "candle-gguf"),
                ("modalities", "text"),
                ("tools_supported", "false"),
            ] {
                o.params.insert(k.into(), v.into());
            }
            o.params.insert("ctx".into(), self.ctx.to_string());
            // One model instance: a few calls may wait, more are refused.
            o.max_concurrent = 8;
        }
        offers
    }

    fn call(&self, req: Request, out: Sink) -> BoxFuture<'static, Result<(), CallError>> {
        let this = Arc::new(Self {
            model: self.model.clone(),
            system_prompt: self.system_prompt.clone(),
            ctx: self.ctx,
            engine: self.engine.clone(),
        });
        this.serve(req, out).boxed()
    }
}
