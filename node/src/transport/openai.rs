//! OpenAI-compatible endpoints (BUS-033, M24): `GET /v1/models`,
//! `POST /v1/embeddings` and `POST /v1/chat/completions` (with `stream`),
//! carried out as `embed.text` and `llm.chat` calls on the bus, so a peer's
//! model may answer. Like unsigned bus calls they are the local operator's:
//! served to loopback callers when `transport.allow_unsigned_loopback` is on.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost::Message;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use hearthnet_sdk::proto::hearthnet::bus::v1::{PayloadEncoding, frame};
use hearthnet_sdk::proto::hearthnet::embed::v1 as embed;
use hearthnet_sdk::proto::hearthnet::llm::v1 as llm;

use crate::error::CallError;
use crate::transport::http::{HttpState, PeerAddr};

/// The `/v1/*` routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat))
        .with_state(state)
}

/// An OpenAI-style error body.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": { "message": message.into(), "type": kind, "code": kind } })),
    )
        .into_response()
}

fn from_call(e: &CallError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.code.wire_name(), e.message.clone())
}

fn local_only(state: &HttpState, peer: SocketAddr) -> Option<Response> {
    (!(state.allow_unsigned_loopback && peer.ip().is_loopback())).then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the OpenAI-compatible endpoints serve the local operator (loopback); other callers use the bus",
        )
    })
}

/// The operator's request body: refused from other hosts, then parsed.
fn parse_local<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    peer: SocketAddr,
    body: &[u8],
) -> Result<T, Box<Response>> {
    if let Some(r) = local_only(state, peer) {
        return Err(Box::new(r));
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            e.to_string(),
        ))
    })
}

/// Model names from the `llm.chat` and `embed.text` offers of this node
/// and its peers.
async fn models(
    State(state): State<HttpState>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
) -> Response {
    if let Some(r) = local_only(&state, peer) {
        return r;
    }
    let mut names = std::collections::BTreeMap::new();
    for (cap, params, _) in state.bus.local_capabilities() {
        if matches!(cap.name, "llm.chat" | "embed.text") {
            for m in params.get("models").or(params.get("model")).into_iter() {
                for name in m.split(',') {
                    names.insert(name.to_string(), state.bus.node_id().to_string());
                }
            }
        }
    }
    for rc in state.bus.remote_capabilities() {
        if matches!(rc.name.as_str(), "llm.chat" | "embed.text") {
            for m in rc
                .params
                .get("models")
                .or(rc.params.get("model"))
                .into_iter()
            {
                for name in m.split(',') {
                    names.entry(name.to_string()).or_insert(rc.node.clone());
                }
            }
        }
    }
    let data: Vec<Value> = names
        .into_iter()
        .map(|(id, node)| json!({ "id": id, "object": "model", "created": 0, "owned_by": node }))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `input` of `/v1/embeddings`: one text or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbeddingsBody {
    #[serde(default)]
    model: String,
    input: Texts,
}

async fn embeddings(
    State(state): State<HttpState>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    body: axum::body::Bytes,
) -> Response {
    let body: EmbeddingsBody = match parse_local(&state, peer, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let texts = match body.input {
        Texts::One(t) => vec![t],
        Texts::Many(v) => v,
    };
    let req = embed::EmbedTextRequest {
        params: Some(embed::EmbedTextParams { model: body.model }),
        input: Some(embed::EmbedTextInput {
            texts,
            normalize: None,
        }),
    };
    let resp: Result<embed::EmbedTextResponse, CallError> =
        state.bus.unary("embed.text", "1.0", &req).await;
    match resp {
        Ok(r) => {
            let out = r.output.unwrap_or_default();
            let data: Vec<Value> = out
                .embeddings
                .into_iter()
                .enumerate()
                .map(|(i, e)| json!({ "object": "embedding", "index": i, "embedding": e.values }))
                .collect();
            Json(json!({
                "object": "list",
                "data": data,
                "model": r.meta.map(|m| m.model).unwrap_or_default(),
                "usage": { "prompt_tokens": 0, "total_tokens": 0 },
            }))
            .into_response()
        }
        Err(e) => from_call(&e),
    }
}

#[derive(Deserialize)]
struct ChatMessageBody {
    role: String,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(default)]
    model: String,
    messages: Vec<ChatMessageBody>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stream: bool,
}

/// Text of an OpenAI message `content`: a string, or text parts.
fn content_text(v: Option<Value>) -> Result<String, String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => return Err("only text content parts are supported".into()),
                }
            }
            Ok(out)
        }
        Some(_) => Err("content must be a string or a list of text parts".into()),
    }
}

fn finish_reason(stop: i32) -> &'static str {
    match llm::StopReason::try_from(stop) {
        Ok(llm::StopReason::MaxTokens) => "length",
        Ok(llm::StopReason::ToolCalls) => "tool_calls",
        _ => "stop",
    }
}

async fn chat(
    State(state): State<HttpState>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    body: axum::body::Bytes,
) -> Response {
    let body: ChatBody = match parse_local(&state, peer, &body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut messages = Vec::new();
    for m in body.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => llm::Role::System,
            "user" => llm::Role::User,
            "assistant" => llm::Role::Assistant,
            "tool" => llm::Role::Tool,
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("unknown role `{other}`"),
                );
            }
        };
        let content = match content_text(m.content) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", e),
        };
        messages.push(llm::ChatMessage {
            role: role as i32,
            content,
            ..Default::default()
        });
    }
    let model = body.model.clone();
    let req = llm::ChatRequest {
        params: Some(llm::ChatParams {
            model: body.model,
            ..Default::default()
        }),
        input: Some(llm::ChatInput {
            messages,
            max_tokens: body.max_completion_tokens.or(body.max_tokens),
            temperature: body.temperature,
            top_p: body.top_p,
            stop: match body.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            seed: body.seed,
            stream: Some(true),
            ..Default::default()
        }),
    };
    let frames = state.bus.call_as_self(
        "llm.chat",
        "1.1",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
        None,
    );
    let id = format!("chatcmpl-{}", ulid::Ulid::new());
    let created = hearthnet_sdk::wkt::Timestamp::now().seconds;
    // Bus frames → (text piece | finish | error).
    enum Piece {
        Text(String),
        Done(llm::DoneFrame),
        Error(CallError),
    }
    let pieces = frames.filter_map(|f| match f.kind {
        Some(frame::Kind::Data(d)) => match llm::ChatResponse::decode(d.as_slice()).ok()?.frame? {
            llm::chat_response::Frame::Token(t) => Some(Piece::Text(t.text)),
            llm::chat_response::Frame::Done(d) => Some(Piece::Done(d)),
            _ => None,
        },
        Some(frame::Kind::Error(e)) => Some(Piece::Error(CallError::from_wire(&e))),
        _ => None,
    });
    if body.stream {
        let (id2, model2) = (id.clone(), model.clone());
        let chunk = move |delta: Value, finish: Option<&str>| {
            json!({
                "id": id2, "object": "chat.completion.chunk", "created": created, "model": model2,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            })
            .to_string()
        };
        let first = chunk(json!({ "role": "assistant", "content": "" }), None);
        let events = tokio_stream::once(first)
            .chain(pieces.map(move |p| {
                match p {
                    Piece::Text(t) => chunk(json!({ "content": t }), None),
                    Piece::Done(d) => chunk(json!({}), Some(finish_reason(d.stop_reason))),
                    Piece::Error(e) => {
                        json!({ "error": { "message": e.message, "type": e.code.wire_name() } })
                            .to_string()
                    }
                }
            }))
            .chain(tokio_stream::once("[DONE]".to_string()))
            .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
        return Sse::new(events).into_response();
    }
    let mut text = String::new();
    let mut done = None;
    tokio::pin!(pieces);
    while let Some(p) = pieces.next().await {
        match p {
            Piece::Text(t) => text.push_str(&t),
            Piece::Done(d) => done = Some(d),
            Piece::Error(e) => return from_call(&e),
        }
    }
    let done = done.unwrap_or_default();
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": finish_reason(done.stop_reason),
        }],
        "usage": { "prompt_tokens": 0, "completion_tokens": done.tokens_out, "total_tokens": done.tokens_out },
    }))
    .into_response()
}
