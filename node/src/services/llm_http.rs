//! HTTP LLM backends behind `llm.chat` / `llm.complete`
//! ([`super::llm::LlmService`]): OpenAI-compatible servers (Ollama,
//! llama.cpp server, LM Studio, vLLM, OpenAI) and Anthropic's Messages API,
//! streamed (server-sent events) or whole.
//!
//! - OpenAI-compatible: `POST {url}/chat/completions`, where `url` ends in
//!   `/v1`; `Authorization: Bearer KEY` when a key is configured. Streaming
//!   asks for `stream_options.include_usage`, so `tokens_out` is the
//!   server's `usage.completion_tokens` when it sends one (LLM-015).
//! - Anthropic: `POST {url}/v1/messages` with `x-api-key` and
//!   `anthropic-version: 2023-06-01`; system messages are joined into the
//!   top-level `system`. Anthropic has no `seed`; `top_p` is sent only when
//!   the caller set it, because recent Claude models refuse a request that
//!   sets both `temperature` and `top_p`.
//! - `llm.complete` goes to the same chat endpoint with the prompt as one
//!   user message: the legacy `/completions` endpoint is missing from many
//!   servers and from Anthropic, and served models are chat-tuned.
//! - Stop sequences are never sent to the server (an OpenAI-style server's
//!   stop looks like a natural end). They are found here, in the text as it
//!   arrives: text that could be the start of a stop sequence is held back,
//!   and on a match the text before it is sent, the response is dropped and
//!   the generation ends with [`StopKind::StopSequence`] (LLM-011).
//! - Cancelling the token or dropping the piece receiver drops the response,
//!   which closes the connection, so the server stops generating (LLM-016).
//!
//! Nothing here trusts the server: malformed data is an error, never a
//! panic.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode;

use crate::error::CallError;

/// Temperature when a call sets none (LLM-009).
pub(crate) const DEFAULT_TEMPERATURE: f32 = 0.7;
/// Top-p when a call sets none (LLM-009).
pub(crate) const DEFAULT_TOP_P: f32 = 0.95;
/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest whole (non-streamed) response body read.
const MAX_BODY: usize = 16 << 20;
/// Largest error body read for its message.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Largest server-sent-events line.
const MAX_SSE_LINE: usize = 4 << 20;
/// The Anthropic API version spoken.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The protocol a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OpenAI-compatible chat completions (Ollama, llama.cpp server,
    /// LM Studio, vLLM, OpenAI).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
}

impl Kind {
    /// The name advertised in the capability's `backend` param.
    pub fn name(self) -> &'static str {
        match self {
            Kind::OpenAi => "openai",
            Kind::Anthropic => "anthropic",
        }
    }

    /// The base URL used when none is configured: a local Ollama
    /// (`http://127.0.0.1:11434/v1`) or `https://api.anthropic.com`.
    pub fn default_url(self) -> &'static str {
        match self {
            Kind::OpenAi => "http://127.0.0.1:11434/v1",
            Kind::Anthropic => "https://api.anthropic.com",
        }
    }
}

/// One generation: the messages and sampling settings of a call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenRequest {
    /// `(role, content)` pairs; roles `system`, `user`, `assistant`, `tool`.
    pub messages: Vec<(String, String)>,
    /// Most tokens to generate (passed to the server as `max_tokens`).
    pub max_tokens: u32,
    /// Sampling temperature; `None` is 0.7 (LLM-009).
    pub temperature: Option<f32>,
    /// Nucleus sampling; `None` is 0.95 for OpenAI-compatible servers and
    /// the server's own default for Anthropic.
    pub top_p: Option<f32>,
    /// Sampling seed (OpenAI-compatible servers only).
    pub seed: Option<i64>,
    /// Stop sequences, matched here (never sent to the server).
    pub stop: Vec<String>,
    /// Whether to ask the server for a stream of events (else one body).
    pub stream: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// The model ended its turn.
    End,
    /// `max_tokens` was reached.
    MaxTokens,
    /// A stop sequence appeared.
    StopSequence,
    /// The call was cancelled or the receiver of the text went away.
    Cancelled,
}

/// What a generation produced besides its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    /// Tokens generated: the server's usage count when it reports one,
    /// else the number of text deltas received (streamed) or an estimate of
    /// one token per four characters (whole).
    pub tokens_out: u32,
    /// Why it ended.
    pub stop: StopKind,
}

/// A failed generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend's configuration is unusable (a bad URL, an API key that
    /// is not a valid header value).
    #[error("{0}")]
    Config(String),
    /// The server could not be reached (refused, unresolvable, connect
    /// timeout).
    #[error("the model's backend {url} cannot be reached: {detail}")]
    Unreachable {
        /// The backend's base URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The server refused this node's credentials (HTTP 401/403).
    #[error("the model's backend {url} refused this node's API key (HTTP {status}): {detail}")]
    Auth {
        /// The backend's base URL.
        url: String,
        /// HTTP status, or 0 when reported inside a stream.
        status: u16,
        /// The server's message.
        detail: String,
    },
    /// The server does not have the model (HTTP 404).
    #[error("the model's backend {url} does not have the model (HTTP 404): {detail}")]
    Missing {
        /// The backend's base URL.
        url: String,
        /// The server's message.
        detail: String,
    },
    /// The server asks to slow down (HTTP 429, Anthropic's 529, a rate
    /// limit or overload error event).
    #[error("the model's backend {url} is rate limited or overloaded: {detail}")]
    RateLimited {
        /// The backend's base URL.
        url: String,
        /// The server's message.
        detail: String,
        /// From `retry-after-ms` / `retry-after`; 0 when unknown.
        retry_after_ms: u64,
    },
    /// The server refused the request (another HTTP 4xx).
    #[error("the model's backend {url} refused the request (HTTP {status}): {detail}")]
    Refused {
        /// The backend's base URL.
        url: String,
        /// HTTP status, or 0 when reported inside a stream.
        status: u16,
        /// The server's message.
        detail: String,
    },
    /// The server failed (HTTP 5xx, a broken or malformed response).
    #[error("the model's backend {url} failed: {detail}")]
    Failed {
        /// The backend's base URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl From<BackendError> for CallError {
    /// `not_implemented` when the backend cannot run the model now
    /// (unreachable, key refused, model missing: LLM-007), `rate_limited`,
    /// `bad_request` for other refusals, `internal_error` otherwise.
    fn from(e: BackendError) -> Self {
        let message = e.to_string();
        match e {
            BackendError::Unreachable { .. }
            | BackendError::Auth { .. }
            | BackendError::Missing { .. } => CallError::new(ErrorCode::NotImplemented, message),
            BackendError::RateLimited { retry_after_ms, .. } => {
                CallError::new(ErrorCode::RateLimited, message).retry_after(retry_after_ms)
            }
            BackendError::Refused { .. } => CallError::bad_request(message),
            BackendError::Config(_) | BackendError::Failed { .. } => CallError::internal(message),
        }
    }
}

/// A client for one model on one HTTP server.
pub struct HttpBackend {
    kind: Kind,
    url: String,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    requires_internet: bool,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl HttpBackend {
    /// A backend for `model` (the id the server knows) at `url`: for
    /// [`Kind::OpenAi`] the base up to and including `/v1`
    /// (`http://127.0.0.1:11434/v1`), for [`Kind::Anthropic`] the API's root
    /// (`https://api.anthropic.com`; a trailing `/v1` is accepted).
    /// Loopback and LAN servers are reached without the environment's proxy.
    pub fn new(
        kind: Kind,
        url: &str,
        model: &str,
        api_key: Option<String>,
    ) -> Result<Self, BackendError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| BackendError::Config(format!("`{url}` is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BackendError::Config(format!(
                "`{url}` is not an http:// or https:// URL"
            )));
        }
        let Some(host) = parsed.host_str() else {
            return Err(BackendError::Config(format!("`{url}` names no host")));
        };
        let requires_internet = is_internet_host(host);
        if model.is_empty() {
            return Err(BackendError::Config(format!("no model id for {url}")));
        }
        let base = url.trim_end_matches('/').to_string();
        let endpoint = match kind {
            Kind::OpenAi => format!("{base}/chat/completions"),
            Kind::Anthropic if base.ends_with("/v1") => format!("{base}/messages"),
            Kind::Anthropic => format!("{base}/v1/messages"),
        };
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if !requires_internet {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| BackendError::Config(format!("HTTP client for {url}: {}", chain(&e))))?;
        Ok(Self {
            kind,
            url: base,
            endpoint,
            model: model.to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            requires_internet,
            client,
        })
    }

    /// The protocol it speaks.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The base URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the server is outside the LAN: a public IP address or a
    /// dotted host name outside `.local`, `.lan`, `.home.arpa`, `.internal`
    /// and `.localhost`.
    pub fn requires_internet(&self) -> bool {
        self.requires_internet
    }

    /// Runs one generation, sending each piece of text (never empty, never
    /// part of a stop sequence) to `pieces` as it arrives; a whole response
    /// is one piece. Ends with [`StopKind::Cancelled`] as soon as `cancel`
    /// fires or `pieces`' receiver is dropped, dropping the HTTP response.
    pub async fn generate(
        &self,
        req: &GenRequest,
        cancel: &CancellationToken,
        pieces: mpsc::Sender<String>,
    ) -> Result<Generated, BackendError> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(Generated { tokens_out: 0, stop: StopKind::Cancelled }),
            r = self.run(req, pieces) => r,
        }
    }

    async fn run(
        &self,
        req: &GenRequest,
        pieces: mpsc::Sender<String>,
    ) -> Result<Generated, BackendError> {
        let body = match self.kind {
            Kind::OpenAi => self.openai_body(req),
            Kind::Anthropic => self.anthropic_body(req),
        };
        let mut rb = self.client.post(self.endpoint.as_str()).json(&body);
        match self.kind {
            Kind::OpenAi => {
                if let Some(key) = &self.api_key {
                    rb = rb.bearer_auth(key);
                }
            }
            Kind::Anthropic => {
                if let Some(key) = &self.api_key {
                    rb = rb.header("x-api-key", key.as_str());
                }
                rb = rb.header("anthropic-version", ANTHROPIC_VERSION);
            }
        }
        if req.stream {
            rb = rb.header(reqwest::header::ACCEPT, "text/event-stream");
        }
        let resp = rb.send().await.map_err(|e| self.send_error(&e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp).await);
        }
        let mut out = Emitter::new(&req.stop, pieces);
        match (self.kind, req.stream) {
            (Kind::OpenAi, true) => self.openai_stream(resp, &mut out).await,
            (Kind::OpenAi, false) => self.openai_whole(resp, &mut out).await,
            (Kind::Anthropic, true) => self.anthropic_stream(resp, &mut out).await,
            (Kind::Anthropic, false) => self.anthropic_whole(resp, &mut out).await,
        }
    }

    fn openai_body(&self, req: &GenRequest) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|(role, content)| json!({ "role": role, "content": content }))
            .collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("messages".into(), Value::Array(messages));
        body.insert("max_tokens".into(), json!(req.max_tokens));
        body.insert(
            "temperature".into(),
            number(req.temperature.unwrap_or(DEFAULT_TEMPERATURE)),
        );
        body.insert("top_p".into(), number(req.top_p.unwrap_or(DEFAULT_TOP_P)));
        if let Some(seed) = req.seed {
            body.insert("seed".into(), json!(seed));
        }
        body.insert("stream".into(), json!(req.stream));
        if req.stream {
            body.insert("stream_options".into(), json!({ "include_usage": true }));
        }
        Value::Object(body)
    }

    fn anthropic_body(&self, req: &GenRequest) -> Value {
        let system: Vec<&str> = req
            .messages
            .iter()
            .filter(|(role, _)| role == "system")
            .map(|(_, content)| content.as_str())
            .collect();
        let messages: Vec<Value> = req
            .messages
            .iter()
            .filter(|(role, _)| role != "system")
            .map(|(role, content)| json!({ "role": role, "content": content }))
            .collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(self.model));
        body.insert("max_tokens".into(), json!(req.max_tokens));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        body.insert("messages".into(), Value::Array(messages));
        body.insert(
            "temperature".into(),
            number(req.temperature.unwrap_or(DEFAULT_TEMPERATURE)),
        );
        if let Some(top_p) = req.top_p {
            body.insert("top_p".into(), number(top_p));
        }
        body.insert("stream".into(), json!(req.stream));
        Value::Object(body)
    }

    /// The server-sent events of the response's next chunk, and whether
    /// the body has ended.
    async fn next_events(
        &self,
        resp: &mut reqwest::Response,
        sse: &mut SseParser,
    ) -> Result<(Vec<SseEvent>, bool), BackendError> {
        match resp.chunk().await.map_err(|e| self.broken(&e))? {
            Some(bytes) => Ok((sse.push(&bytes).map_err(|m| self.failed(m))?, false)),
            None => Ok((sse.finish().into_iter().collect(), true)),
        }
    }

    async fn openai_stream(
        &self,
        mut resp: reqwest::Response,
        out: &mut Emitter,
    ) -> Result<Generated, BackendError> {
        let mut sse = SseParser::default();
        let mut usage: Option<u64> = None;
        let mut finish: Option<String> = None;
        let mut done = false;
        while !done {
            let (events, eof) = self.next_events(&mut resp, &mut sse).await?;
            for ev in events {
                if ev.data.trim() == "[DONE]" {
                    done = true;
                    break;
                }
                let c: OaBody = serde_json::from_str(&ev.data)
                    .map_err(|e| self.failed(format!("malformed stream event: {e}")))?;
                if let Some(err) = c.error {
                    return Err(self.event_error(&err));
                }
                if let Some(n) = c.usage.and_then(|u| u.completion_tokens) {
                    usage = Some(n);
                }
                if let Some(choice) = c.choices.into_iter().next() {
                    if let Some(text) = choice.delta.and_then(|d| d.content)
                        && let Flow::Stop(stop) = out.text(&text).await
                    {
                        return Ok(out.generated(None, stop));
                    }
                    if let Some(f) = choice.finish_reason {
                        finish = Some(f);
                    }
                }
            }
            if eof {
                break;
            }
        }
        if !done && finish.is_none() {
            return Err(self.failed("the stream ended before the answer was complete".into()));
        }
        if !out.flush().await {
            return Ok(out.generated(None, StopKind::Cancelled));
        }
        let stop = match finish.as_deref() {
            Some("length") => StopKind::MaxTokens,
            _ => StopKind::End,
        };
        Ok(out.generated(usage, stop))
    }

    async fn openai_whole(
        &self,
        resp: reqwest::Response,
        out: &mut Emitter,
    ) -> Result<Generated, BackendError> {
        let body = self.read_body(resp).await?;
        let c: OaBody = serde_json::from_slice(&body)
            .map_err(|e| self.failed(format!("malformed response: {e}")))?;
        if let Some(err) = c.error {
            return Err(self.event_error(&err));
        }
        let usage = c.usage.and_then(|u| u.completion_tokens);
        let Some(choice) = c.choices.into_iter().next() else {
            return Err(self.failed("the response has no choices".into()));
        };
        let text = choice.message.and_then(|m| m.content).unwrap_or_default();
        let stop = match choice.finish_reason.as_deref() {
            Some("length") => StopKind::MaxTokens,
            _ => StopKind::End,
        };
        Ok(out.whole(&text, usage, stop).await)
    }

    async fn anthropic_stream(
        &self,
        mut resp: reqwest::Response,
        out: &mut Emitter,
    ) -> Result<Generated, BackendError> {
        let mut sse = SseParser::default();
        let mut usage: Option<u64> = None;
        let mut reason: Option<String> = None;
        let mut done = false;
        while !done {
            let (events, eof) = self.next_events(&mut resp, &mut sse).await?;
            for ev in events {
                let e: AnEvent = serde_json::from_str(&ev.data)
                    .map_err(|e| self.failed(format!("malformed stream event: {e}")))?;
                let kind = if e.kind.is_empty() { ev.event } else { e.kind };
                match kind.as_str() {
                    "content_block_delta" => {
                        if let Some(delta) = e.delta
                            && delta.kind.as_deref() == Some("text_delta")
                            && let Some(text) = delta.text
                            && let Flow::Stop(stop) = out.text(&text).await
                        {
                            return Ok(out.generated(None, stop));
                        }
                    }
                    "message_delta" => {
                        if let Some(r) = e.delta.and_then(|d| d.stop_reason) {
                            reason = Some(r);
                        }
                        if let Some(n) = e.usage.and_then(|u| u.output_tokens) {
                            usage = Some(n);
                        }
                    }
                    "message_stop" => {
                        done = true;
                        break;
                    }
                    "error" => {
                        let err = e.error.unwrap_or_default();
                        return Err(self.api_error(&err.kind, &err.message, 0));
                    }
                    // message_start, content_block_start/stop, ping.
                    _ => {}
                }
            }
            if eof {
                break;
            }
        }
        if !done && reason.is_none() {
            return Err(self.failed("the stream ended before the answer was complete".into()));
        }
        if !out.flush().await {
            return Ok(out.generated(None, StopKind::Cancelled));
        }
        Ok(out.generated(usage, anthropic_stop(reason.as_deref())))
    }

    async fn anthropic_whole(
        &self,
        resp: reqwest::Response,
        out: &mut Emitter,
    ) -> Result<Generated, BackendError> {
        let body = self.read_body(resp).await?;
        let m: AnMessage = serde_json::from_slice(&body)
            .map_err(|e| self.failed(format!("malformed response: {e}")))?;
        if let Some(err) = m.error {
            return Err(self.api_error(&err.kind, &err.message, 0));
        }
        let text: String = m
            .content
            .iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text.as_deref())
            .collect();
        let usage = m.usage.and_then(|u| u.output_tokens);
        Ok(out
            .whole(&text, usage, anthropic_stop(m.stop_reason.as_deref()))
            .await)
    }

    /// Reads a whole response body, at most [`MAX_BODY`] bytes.
    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, BackendError> {
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.broken(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(self.failed(format!("the response is over {MAX_BODY} bytes")));
            }
        }
        Ok(body)
    }

    /// The error of a response with a non-success status.
    async fn status_error(&self, mut resp: reqwest::Response) -> BackendError {
        let status = resp.status().as_u16();
        let retry_after_ms = retry_after(resp.headers());
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let detail = error_detail(&body);
        let url = self.url.clone();
        match status {
            401 | 403 => BackendError::Auth {
                url,
                status,
                detail,
            },
            404 => BackendError::Missing { url, detail },
            429 | 529 => BackendError::RateLimited {
                url,
                detail,
                retry_after_ms,
            },
            400..=499 => BackendError::Refused {
                url,
                status,
                detail,
            },
            _ => BackendError::Failed {
                url,
                detail: format!("HTTP {status}: {detail}"),
            },
        }
    }

    /// An error object inside an OpenAI-style body or stream.
    fn event_error(&self, err: &Value) -> BackendError {
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .or_else(|| err.as_str())
            .map_or_else(|| err.to_string(), str::to_string);
        let kind = err.get("type").and_then(Value::as_str).unwrap_or_default();
        self.api_error(kind, &message, 0)
    }

    /// An error reported by type name (Anthropic's `error.type`, also used
    /// by OpenAI-style servers).
    fn api_error(&self, kind: &str, message: &str, retry_after_ms: u64) -> BackendError {
        let url = self.url.clone();
        let detail = if message.is_empty() {
            kind.to_string()
        } else {
            message.to_string()
        };
        match kind {
            "rate_limit_error" | "overloaded_error" | "rate_limit_exceeded" => {
                BackendError::RateLimited {
                    url,
                    detail,
                    retry_after_ms,
                }
            }
            "authentication_error" | "permission_error" => BackendError::Auth {
                url,
                status: 0,
                detail,
            },
            "not_found_error" => BackendError::Missing { url, detail },
            "invalid_request_error" => BackendError::Refused {
                url,
                status: 0,
                detail,
            },
            _ => BackendError::Failed { url, detail },
        }
    }

    fn send_error(&self, e: &reqwest::Error) -> BackendError {
        if e.is_builder() {
            return BackendError::Config(format!("request to {}: {}", self.url, chain(e)));
        }
        BackendError::Unreachable {
            url: self.url.clone(),
            detail: chain(e),
        }
    }

    fn broken(&self, e: &reqwest::Error) -> BackendError {
        self.failed(format!("the response broke off: {}", chain(e)))
    }

    fn failed(&self, detail: String) -> BackendError {
        BackendError::Failed {
            url: self.url.clone(),
            detail,
        }
    }
}

fn anthropic_stop(reason: Option<&str>) -> StopKind {
    match reason {
        Some("max_tokens") => StopKind::MaxTokens,
        Some("stop_sequence") => StopKind::StopSequence,
        _ => StopKind::End,
    }
}

/// An `f32` as the JSON number it reads as (`0.7`, not `0.699999988079071`);
/// not-a-number and infinities are `null`, which the server refuses.
fn number(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// An error and its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cur = c.source();
    }
    text
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds; 0 when absent.
fn retry_after(headers: &reqwest::header::HeaderMap) -> u64 {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = get("retry-after-ms") {
        return ms.ceil() as u64;
    }
    get("retry-after").map_or(0, |s| (s * 1000.0).ceil() as u64)
}

/// The message of an error body: `error.message` (OpenAI, Anthropic),
/// `error` as a string (Ollama), `message`, else the text, cut short.
fn error_detail(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let found = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .or_else(|| v.get("error").and_then(Value::as_str))
            .or_else(|| v.get("message").and_then(Value::as_str))
            .or_else(|| v.get("detail").and_then(Value::as_str));
        if let Some(m) = found {
            return m.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no details".into();
    }
    let mut cut: String = text.chars().take(500).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// Whether a URL host is outside the LAN (see
/// [`HttpBackend::requires_internet`]).
fn is_internet_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(a) => {
                !(a.is_loopback() || a.is_private() || a.is_link_local() || a.is_unspecified())
            }
            std::net::IpAddr::V6(a) => {
                !(a.is_loopback()
                    || a.is_unique_local()
                    || a.is_unicast_link_local()
                    || a.is_unspecified())
            }
        };
    }
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    let local = h == "localhost"
        || !h.contains('.')
        || [".localhost", ".local", ".lan", ".home.arpa", ".internal"]
            .iter()
            .any(|s| h.ends_with(s));
    !local
}

/// Estimated tokens of a text: one per four characters.
fn estimate_tokens(text: &str) -> u64 {
    text.chars().count().div_ceil(4) as u64
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether to keep reading.
enum Flow {
    Go,
    Stop(StopKind),
}

/// Sends text through the stop-sequence scanner and counts deltas.
struct Emitter {
    scan: StopScanner,
    pieces: mpsc::Sender<String>,
    deltas: u64,
}

impl Emitter {
    fn new(stop: &[String], pieces: mpsc::Sender<String>) -> Self {
        Self {
            scan: StopScanner::new(stop),
            pieces,
            deltas: 0,
        }
    }

    /// One delta of text from the server.
    async fn text(&mut self, text: &str) -> Flow {
        if text.is_empty() {
            return Flow::Go;
        }
        self.deltas += 1;
        let (ready, hit) = self.scan.push(text);
        if !ready.is_empty() && self.pieces.send(ready).await.is_err() {
            return Flow::Stop(StopKind::Cancelled);
        }
        if hit {
            Flow::Stop(StopKind::StopSequence)
        } else {
            Flow::Go
        }
    }

    /// Sends the held-back text at a natural end; false when the receiver
    /// has gone.
    async fn flush(&mut self) -> bool {
        let rest = self.scan.finish();
        rest.is_empty() || self.pieces.send(rest).await.is_ok()
    }

    /// A whole response's text.
    async fn whole(&mut self, text: &str, usage: Option<u64>, stop: StopKind) -> Generated {
        let tokens = usage.unwrap_or_else(|| estimate_tokens(text));
        let stop = match self.text(text).await {
            Flow::Stop(s) => s,
            Flow::Go => {
                if self.flush().await {
                    stop
                } else {
                    StopKind::Cancelled
                }
            }
        };
        Generated {
            tokens_out: to_u32(tokens),
            stop,
        }
    }

    fn generated(&self, usage: Option<u64>, stop: StopKind) -> Generated {
        Generated {
            tokens_out: to_u32(usage.unwrap_or(self.deltas)),
            stop,
        }
    }
}

/// Finds stop sequences in text that arrives in pieces, holding back any
/// tail that could be the start of one.
#[derive(Debug, Clone, Default)]
struct StopScanner {
    stops: Vec<String>,
    held: String,
}

impl StopScanner {
    fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds text. Returns the text that can be sent now and whether a stop
    /// sequence was found; on a match the text returned is everything
    /// before the earliest one and the rest is dropped.
    fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.held), false);
        }
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let mut ready = std::mem::take(&mut self.held);
            ready.truncate(at);
            return (ready, true);
        }
        // The longest tail that is a proper prefix of a stop sequence stays.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let kept = self.held.split_off(keep_from);
        (std::mem::replace(&mut self.held, kept), false)
    }

    /// The held-back text, at a natural end of generation.
    fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SseEvent {
    /// The `event:` field; empty when absent.
    event: String,
    /// The `data:` lines, joined with newlines.
    data: String,
}

/// A server-sent-events parser over arbitrary chunks (LF or CRLF lines).
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Adds a chunk; returns the events it completes.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = String::from_utf8_lossy(strip_cr(&self.buf[start..end])).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line) {
                events.push(ev);
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_SSE_LINE {
            return Err(format!("a stream line is over {MAX_SSE_LINE} bytes"));
        }
        Ok(events)
    }

    /// At the end of the body: a last line without its newline, and the
    /// event it leaves pending.
    fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(strip_cr(&rest)).into_owned();
            if let Some(ev) = self.line(&line) {
                return Some(ev);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if !std::mem::replace(&mut self.has_data, false) {
            return None;
        }
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

// --- wire shapes (only the fields read; everything optional) ---

/// An OpenAI-style response body or stream chunk.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OaBody {
    choices: Vec<OaChoice>,
    usage: Option<OaUsage>,
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OaChoice {
    delta: Option<OaMessage>,
    message: Option<OaMessage>,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OaMessage {
    content: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OaUsage {
    completion_tokens: Option<u64>,
}

/// An Anthropic stream event.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnEvent {
    #[serde(rename = "type")]
    kind: String,
    delta: Option<AnDelta>,
    usage: Option<AnUsage>,
    error: Option<AnError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnDelta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnUsage {
    output_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

/// An Anthropic whole response.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnMessage {
    content: Vec<AnBlock>,
    stop_reason: Option<String>,
    usage: Option<AnUsage>,
    error: Option<AnError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AnBlock {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c).unwrap());
        }
        out.extend(p.finish());
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn sse_events_survive_any_chunking() {
        let text: &[u8] = b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: a comment\n\ndata: x\ndata:y\n\nevent: ping\ndata: {}\n\ndata: [DONE]\n\n".as_slice();
        let want = vec![
            ev("message_start", "{\"a\":1}"),
            ev("", "x\ny"),
            ev("ping", "{}"),
            ev("", "[DONE]"),
        ];
        assert_eq!(feed(&[text]), want);
        // Every split point, including inside "\r\n" and inside a field name.
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(feed(&[a, b]), want, "cut at {cut}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(feed(&bytes), want);
    }

    #[test]
    fn sse_last_event_without_blank_line_is_kept() {
        assert_eq!(
            feed(&[b"data: a\n\ndata: b".as_slice()]),
            vec![ev("", "a"), ev("", "b")]
        );
        assert_eq!(feed(&[b"event: x\n\n".as_slice()]), Vec::<SseEvent>::new());
    }

    #[test]
    fn sse_multibyte_text_split_inside_a_character() {
        let text = "data: {\"t\":\"héllo ✓\"}\n\n".as_bytes();
        for cut in 0..text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(feed(&[a, b]), vec![ev("", "{\"t\":\"héllo ✓\"}")]);
        }
    }

    fn scan(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopScanner::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (ready, hit) = s.push(p);
            out.push_str(&ready);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&s.finish());
        (out, false)
    }

    #[test]
    fn stop_sequence_split_across_pieces_is_never_sent() {
        assert_eq!(
            scan(&["STOP"], &["The answer ", "is ST", "OP", " and more"]),
            ("The answer is ".into(), true)
        );
        let stops = vec!["STOP".to_string()];
        let mut s = StopScanner::new(&stops);
        // "ST" is held back until it is known not to start "STOP".
        assert_eq!(s.push("is ST"), ("is ".into(), false));
        assert_eq!(s.push("AR"), ("STAR".into(), false));
    }

    #[test]
    fn stop_scanner_edge_cases() {
        assert_eq!(scan(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(scan(&[""], &["a", "b"]), ("ab".into(), false));
        // A prefix that never completes is sent at the end.
        assert_eq!(scan(&["STOP"], &["go ST"]), ("go ST".into(), false));
        // The earliest of several stop sequences wins.
        assert_eq!(scan(&["b", "ab"], &["xab"]), ("x".into(), true));
        // At the very start.
        assert_eq!(scan(&["\n\n"], &["\n", "\nrest"]), (String::new(), true));
        // Multibyte text around a multibyte stop.
        assert_eq!(scan(&["→"], &["é", "è→ü"]), ("éè".into(), true));
    }

    #[test]
    fn error_details_come_from_known_shapes() {
        assert_eq!(
            error_detail(br#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#),
            "bad key"
        );
        assert_eq!(
            error_detail(br#"{"error":"model \"x\" not found, try pulling it first"}"#),
            "model \"x\" not found, try pulling it first"
        );
        assert_eq!(error_detail(b"  upstream down \n"), "upstream down");
        assert_eq!(error_detail(b""), "no details");
        let long = "é".repeat(600);
        assert_eq!(error_detail(long.as_bytes()).chars().count(), 501);
    }

    #[test]
    fn endpoints_and_internet_hosts() {
        let b = HttpBackend::new(Kind::OpenAi, "http://127.0.0.1:11434/v1/", "m", None).unwrap();
        assert_eq!(b.endpoint, "http://127.0.0.1:11434/v1/chat/completions");
        assert!(!b.requires_internet());
        let b = HttpBackend::new(Kind::Anthropic, "https://api.anthropic.com", "m", None).unwrap();
        assert_eq!(b.endpoint, "https://api.anthropic.com/v1/messages");
        assert!(b.requires_internet());
        let b = HttpBackend::new(Kind::Anthropic, "http://[::1]:9/v1", "m", None).unwrap();
        assert_eq!(b.endpoint, "http://[::1]:9/v1/messages");
        assert!(!b.requires_internet());
        for local in [
            "localhost",
            "ollama",
            "box.lan",
            "gpu.local",
            "10.0.0.7",
            "192.168.1.2",
        ] {
            assert!(!is_internet_host(local), "{local}");
        }
        for remote in ["api.openai.com", "8.8.8.8", "example.org."] {
            assert!(is_internet_host(remote), "{remote}");
        }
        assert!(HttpBackend::new(Kind::OpenAi, "ftp://x/v1", "m", None).is_err());
        assert!(HttpBackend::new(Kind::OpenAi, "not a url", "m", None).is_err());
        assert!(HttpBackend::new(Kind::OpenAi, "http://x/v1", "", None).is_err());
    }

    #[test]
    fn errors_map_to_protocol_codes() {
        let url = "http://h/v1".to_string();
        let code = |e: BackendError| CallError::from(e).code;
        assert_eq!(
            code(BackendError::Unreachable {
                url: url.clone(),
                detail: "refused".into()
            }),
            ErrorCode::NotImplemented
        );
        assert_eq!(
            code(BackendError::Missing {
                url: url.clone(),
                detail: String::new()
            }),
            ErrorCode::NotImplemented
        );
        let e = CallError::from(BackendError::RateLimited {
            url: url.clone(),
            detail: String::new(),
            retry_after_ms: 2000,
        });
        assert_eq!((e.code, e.retry_after_ms), (ErrorCode::RateLimited, 2000));
        assert_eq!(
            code(BackendError::Refused {
                url: url.clone(),
                status: 400,
                detail: String::new()
            }),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(BackendError::Failed {
                url,
                detail: String::new()
            }),
            ErrorCode::InternalError
        );
    }

    #[test]
    fn floats_are_sent_as_written() {
        assert_eq!(number(0.7).to_string(), "0.7");
        assert_eq!(number(0.95).to_string(), "0.95");
        assert_eq!(number(1.0).to_string(), "1.0");
        assert_eq!(number(f32::NAN), Value::Null);
    }

    #[test]
    fn request_bodies() {
        let req = GenRequest {
            messages: vec![
                ("system".into(), "be brief".into()),
                ("system".into(), "be kind".into()),
                ("user".into(), "hi".into()),
            ],
            max_tokens: 9,
            temperature: None,
            top_p: None,
            seed: Some(3),
            stop: vec!["x".into()],
            stream: true,
        };
        let oa = HttpBackend::new(Kind::OpenAi, "http://h/v1", "gpt", None).unwrap();
        let body = oa.openai_body(&req);
        assert_eq!(body["model"], "gpt");
        assert_eq!(body["max_tokens"], 9);
        assert_eq!(body["seed"], 3);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"].as_array().unwrap().len(), 3);
        assert!(body.get("stop").is_none(), "stop sequences stay here");
        let an = HttpBackend::new(Kind::Anthropic, "http://h", "claude", None).unwrap();
        let body = an.anthropic_body(&req);
        assert_eq!(body["system"], "be brief\n\nbe kind");
        assert_eq!(
            body["messages"],
            json!([{ "role": "user", "content": "hi" }])
        );
        assert!(body.get("top_p").is_none());
        assert!(body.get("seed").is_none());
        assert!(body.get("stop_sequences").is_none());
    }
}
