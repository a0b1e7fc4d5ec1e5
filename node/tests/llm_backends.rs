//! HTTP LLM backends behind `llm.chat` / `llm.complete` (issue 10): an
//! OpenAI-compatible and an Anthropic backend against local mock servers
//! that speak those streaming formats, one registry entry listing every
//! model, model routing, stop sequences, limits, errors, cancellation,
//! queueing and a call served by a peer's backend. No local model needed.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use prost::Message;
use serde_json::{Value, json};

use hearthnet_node::config::{LlmBackend, LlmBackendKind};
use hearthnet_node::services::llm_http::{GenRequest, HttpBackend, Kind, StopKind};
use hearthnet_node::{NodeBuilder, RunningNode};
use hearthnet_sdk::proto::hearthnet::bus::v1::{PayloadEncoding, frame};
use hearthnet_sdk::proto::hearthnet::common::v1::Error as WireError;
use hearthnet_sdk::proto::hearthnet::llm::v1 as llm;

const GPT: &str = "mock/gpt";
const CLAUDE: &str = "mock/claude";
const OPENAI_PATH: &str = "/v1/chat/completions";
const ANTHROPIC_PATH: &str = "/v1/messages";

// ---------------------------------------------------------------- mock ---

/// One request a mock received.
#[derive(Debug, Clone)]
struct Recorded {
    path: &'static str,
    headers: HeaderMap,
    body: Value,
}

/// What the mock saw.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Recorded>>,
    /// Set when a never-ending response body is dropped (the client left).
    dropped: AtomicBool,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// Sets `dropped` when the body stream holding it goes away.
struct DropFlag(Arc<Seen>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

/// A server speaking both APIs: OpenAI's under `/v1/chat/completions`,
/// Anthropic's under `/v1/messages`. The last user message picks what it
/// answers: `split…` (a stop sequence `STOP` split across two events),
/// `length…` (ends at the token limit), `nousage…` (no usage reported),
/// `429…`, `500…`, `slow…` (a tick every 50 ms, forever), `hold…` (slow,
/// counting concurrent requests), anything else `Hello there!`.
struct Mock {
    base: String,
    seen: Arc<Seen>,
}

impl Mock {
    async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route(OPENAI_PATH, post(openai))
            .route(ANTHROPIC_PATH, post(anthropic))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base: format!("http://{addr}"),
            seen,
        }
    }

    fn openai_url(&self) -> String {
        format!("{}/v1", self.base)
    }

    fn anthropic_url(&self) -> String {
        self.base.clone()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.seen.requests.lock().unwrap().clone()
    }

    fn last(&self) -> Recorded {
        self.requests().pop().expect("the mock got no request")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
}

async fn openai(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: String) -> Response {
    reply(Api::OpenAi, seen, headers, body)
}

async fn anthropic(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: String) -> Response {
    reply(Api::Anthropic, seen, headers, body)
}

struct Script {
    pieces: Vec<&'static str>,
    length: bool,
    usage: Option<u64>,
}

fn script(prompt: &str) -> Script {
    if prompt.starts_with("split") {
        Script {
            pieces: vec!["The answer ", "is ST", "OP", " and more"],
            length: false,
            usage: Some(9),
        }
    } else if prompt.starts_with("length") {
        Script {
            pieces: vec!["one", " two"],
            length: true,
            usage: Some(2),
        }
    } else if prompt.starts_with("nousage") {
        Script {
            pieces: vec!["a", "b", "c"],
            length: false,
            usage: None,
        }
    } else {
        Script {
            pieces: vec!["Hel", "lo", " there", "!"],
            length: false,
            usage: Some(7),
        }
    }
}

fn reply(api: Api, seen: Arc<Seen>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let path = match api {
        Api::OpenAi => OPENAI_PATH,
        Api::Anthropic => ANTHROPIC_PATH,
    };
    seen.requests.lock().unwrap().push(Recorded {
        path,
        headers,
        body: body.clone(),
    });
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let stream = body["stream"].as_bool().unwrap_or(false);
    if prompt.starts_with("429") {
        let err = match api {
            Api::OpenAi => {
                json!({ "error": { "message": "slow down", "type": "rate_limit_exceeded" } })
            }
            Api::Anthropic => {
                json!({ "type": "error", "error": { "type": "rate_limit_error", "message": "slow down" } })
            }
        };
        return json_reply(429, err, &[("retry-after", "2")]);
    }
    if prompt.starts_with("500") {
        return json_reply(
            500,
            json!({ "error": { "message": "boom", "type": "server_error" } }),
            &[],
        );
    }
    if prompt.starts_with("slow") {
        return slow(api, seen);
    }
    let s = script(&prompt);
    if !stream {
        let text: String = s.pieces.concat();
        let body = match api {
            Api::OpenAi => json!({
                "id": "c1", "object": "chat.completion",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": text },
                              "finish_reason": if s.length { "length" } else { "stop" } }],
                "usage": s.usage.map(|n| json!({ "prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n })),
            }),
            Api::Anthropic => json!({
                "id": "msg_1", "type": "message", "role": "assistant",
                "content": [{ "type": "text", "text": text }],
                "stop_reason": if s.length { "max_tokens" } else { "end_turn" },
                "usage": { "input_tokens": 10, "output_tokens": s.usage.unwrap_or(0) },
            }),
        };
        return json_reply(200, body, &[]);
    }
    let events = match api {
        Api::OpenAi => openai_events(&s),
        Api::Anthropic => anthropic_events(&s),
    };
    // Each event goes out in two HTTP chunks.
    let chunks: Vec<String> = events.into_iter().flat_map(halves).collect();
    if prompt.starts_with("hold") {
        let now = seen.active.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_active.fetch_max(now, Ordering::SeqCst);
        return sse(paced(chunks, seen));
    }
    sse(Body::from_stream(futures::stream::iter(
        chunks.into_iter().map(Ok::<String, Infallible>),
    )))
}

fn openai_events(s: &Script) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({ "id": "c1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }], "usage": null })
    };
    let mut events = vec![chunk(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    )];
    for p in &s.pieces {
        events.push(chunk(json!({ "content": p }), Value::Null));
    }
    events.push(chunk(
        json!({}),
        json!(if s.length { "length" } else { "stop" }),
    ));
    if let Some(n) = s.usage {
        events.push(json!({ "id": "c1", "object": "chat.completion.chunk", "choices": [],
                            "usage": { "prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n } }));
    }
    let mut out: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push("data: [DONE]\n\n".into());
    out
}

/// Anthropic's events, with CRLF line ends (allowed by the SSE format).
fn anthropic_event(name: &str, data: &Value) -> String {
    format!("event: {name}\r\ndata: {data}\r\n\r\n")
}

fn anthropic_start() -> String {
    anthropic_event(
        "message_start",
        &json!({ "type": "message_start", "message": { "id": "msg_1", "type": "message",
                 "role": "assistant", "content": [], "model": "m", "stop_reason": null,
                 "usage": { "input_tokens": 10, "output_tokens": 1 } } }),
    )
}

fn anthropic_delta(text: &str) -> String {
    anthropic_event(
        "content_block_delta",
        &json!({ "type": "content_block_delta", "index": 0,
                 "delta": { "type": "text_delta", "text": text } }),
    )
}

fn anthropic_events(s: &Script) -> Vec<String> {
    let mut out = vec![
        anthropic_start(),
        anthropic_event(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": 0,
                     "content_block": { "type": "text", "text": "" } }),
        ),
        anthropic_event("ping", &json!({ "type": "ping" })),
    ];
    for p in &s.pieces {
        out.push(anthropic_delta(p));
    }
    out.push(anthropic_event(
        "content_block_stop",
        &json!({ "type": "content_block_stop", "index": 0 }),
    ));
    let mut delta = json!({ "type": "message_delta",
        "delta": { "stop_reason": if s.length { "max_tokens" } else { "end_turn" }, "stop_sequence": null } });
    if let Some(n) = s.usage {
        delta["usage"] = json!({ "output_tokens": n });
    }
    out.push(anthropic_event("message_delta", &delta));
    out.push(anthropic_event(
        "message_stop",
        &json!({ "type": "message_stop" }),
    ));
    out
}

/// A text cut in two at a character boundary near its middle.
fn halves(s: String) -> Vec<String> {
    let mid = s
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= s.len() / 2)
        .unwrap_or(s.len());
    [&s[..mid], &s[mid..]]
        .into_iter()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

fn json_reply(status: u16, body: Value, headers: &[(&str, &str)]) -> Response {
    let mut r = axum::http::Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

fn sse(body: Body) -> Response {
    axum::http::Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap()
}

/// Chunks 30 ms apart; the request stops counting as active just before
/// the last one goes out.
fn paced(chunks: Vec<String>, seen: Arc<Seen>) -> Body {
    use futures::StreamExt;
    let total = chunks.len();
    let s = futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            if i + 1 == total {
                seen.active.fetch_sub(1, Ordering::SeqCst);
            }
            Ok::<String, Infallible>(c)
        }
    });
    Body::from_stream(s)
}

/// A tick every 50 ms, forever; `dropped` is set when the body goes away.
fn slow(api: Api, seen: Arc<Seen>) -> Response {
    use futures::StreamExt;
    let head = match api {
        Api::OpenAi => Vec::new(),
        Api::Anthropic => vec![anthropic_start()],
    };
    let ticks = futures::stream::unfold((0u64, DropFlag(seen)), move |(i, flag)| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = format!("tick{i} ");
        let event = match api {
            Api::OpenAi => format!(
                "data: {}\n\n",
                json!({ "choices": [{ "index": 0, "delta": { "content": text }, "finish_reason": null }] })
            ),
            Api::Anthropic => anthropic_delta(&text),
        };
        Some((event, (i + 1, flag)))
    });
    let s = futures::stream::iter(head)
        .chain(ticks)
        .map(Ok::<String, Infallible>);
    sse(Body::from_stream(s))
}

// ---------------------------------------------------------------- node ---

fn backend(kind: LlmBackendKind, name: &str, url: &str, model: &str) -> LlmBackend {
    LlmBackend {
        kind,
        name: name.into(),
        url: Some(url.into()),
        model: Some(model.into()),
        api_key_env: None,
        max_concurrent: Some(2),
        ctx: Some(4096),
    }
}

/// The usual pair: `mock/gpt` (OpenAI-compatible, remote id `gpt-remote`)
/// and `mock/claude` (Anthropic, `claude-remote`), both on `mock`.
fn both(mock: &Mock) -> Vec<LlmBackend> {
    vec![
        backend(
            LlmBackendKind::Openai,
            GPT,
            &mock.openai_url(),
            "gpt-remote",
        ),
        LlmBackend {
            ctx: Some(200_000),
            ..backend(
                LlmBackendKind::Anthropic,
                CLAUDE,
                &mock.anthropic_url(),
                "claude-remote",
            )
        },
    ]
}

async fn llm_node(
    n: u8,
    dir: &std::path::Path,
    backends: Vec<LlmBackend>,
    members: &[u8],
) -> RunningNode {
    let mut c = common::config(dir);
    c.models.enabled = false;
    c.llm.backends = backends;
    c.trust.members = members
        .iter()
        .map(|m| common::key(*m).node_id().to_string())
        .collect();
    NodeBuilder::new(c)
        .key(common::key(n))
        .start()
        .await
        .unwrap()
}

/// Everything a call answered.
#[derive(Debug, Default)]
struct Answer {
    pieces: Vec<String>,
    done: Option<llm::DoneFrame>,
    error: Option<WireError>,
}

impl Answer {
    fn text(&self) -> String {
        self.pieces.concat()
    }

    fn done(&self) -> &llm::DoneFrame {
        assert!(self.error.is_none(), "{:?}", self.error);
        self.done.as_ref().expect("a done frame")
    }

    fn error(&self) -> &WireError {
        self.error.as_ref().expect("an error")
    }
}

/// Reads one `llm.chat`/`llm.complete` call to its end.
async fn read_call(node: &RunningNode, capability: &str, payload: Vec<u8>) -> Answer {
    use tokio_stream::StreamExt;
    let chat = capability == "llm.chat";
    let mut s = node
        .bus()
        .call_as_self(capability, "1.0", PayloadEncoding::Proto, payload, None);
    let mut a = Answer::default();
    while let Some(f) = s.next().await {
        match f.kind {
            Some(frame::Kind::Data(d)) => {
                let (token, done) = if chat {
                    match llm::ChatResponse::decode(d.as_slice())
                        .unwrap()
                        .frame
                        .unwrap()
                    {
                        llm::chat_response::Frame::Token(t) => (Some(t), None),
                        llm::chat_response::Frame::Done(d) => (None, Some(d)),
                        other => panic!("unexpected frame {other:?}"),
                    }
                } else {
                    match llm::CompleteResponse::decode(d.as_slice())
                        .unwrap()
                        .frame
                        .unwrap()
                    {
                        llm::complete_response::Frame::Token(t) => (Some(t), None),
                        llm::complete_response::Frame::Done(d) => (None, Some(d)),
                    }
                };
                if let Some(t) = token {
                    assert!(!t.text.is_empty(), "LLM-013: empty token frame");
                    assert!(a.done.is_none(), "a token after done");
                    a.pieces.push(t.text);
                }
                if let Some(d) = done {
                    assert!(a.done.is_none(), "two done frames");
                    a.done = Some(d);
                }
            }
            Some(frame::Kind::Error(e)) => a.error = Some(e),
            _ => {}
        }
    }
    a
}

fn chat_payload(model: &str, messages: Vec<(llm::Role, &str)>, input: llm::ChatInput) -> Vec<u8> {
    llm::ChatRequest {
        params: Some(llm::ChatParams {
            model: model.into(),
            ..Default::default()
        }),
        input: Some(llm::ChatInput {
            messages: messages
                .into_iter()
                .map(|(role, content)| llm::ChatMessage {
                    role: role as i32,
                    content: content.into(),
                    ..Default::default()
                })
                .collect(),
            ..input
        }),
    }
    .encode_to_vec()
}

async fn chat(node: &RunningNode, model: &str, text: &str, input: llm::ChatInput) -> Answer {
    read_call(
        node,
        "llm.chat",
        chat_payload(model, vec![(llm::Role::User, text)], input),
    )
    .await
}

async fn complete(
    node: &RunningNode,
    model: &str,
    prompt: &str,
    input: llm::CompleteInput,
) -> Answer {
    let payload = llm::CompleteRequest {
        params: Some(llm::CompleteParams {
            model: model.into(),
            ctx: None,
        }),
        input: Some(llm::CompleteInput {
            prompt: prompt.into(),
            ..input
        }),
    }
    .encode_to_vec();
    read_call(node, "llm.complete", payload).await
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

const SYSTEM: &str = "You are a helpful assistant.";

// --------------------------------------------------------------- tests ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_entry_advertises_every_backend_model() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    let caps = node.bus().local_capabilities();
    for name in ["llm.chat", "llm.complete"] {
        let entries: Vec<_> = caps.iter().filter(|(c, _, _)| c.name == name).collect();
        assert_eq!(entries.len(), 1, "one entry for {name} (decision 0040)");
        let (_, params, max) = entries[0];
        assert_eq!(params["model"], GPT, "the first backend is the default");
        assert_eq!(params["models"], format!("{GPT},{CLAUDE}"));
        assert_eq!(params["backend"], "openai,anthropic");
        assert_eq!(params["ctx"], "200000", "the largest context window");
        assert_eq!(params["tools_supported"], "false");
        assert!(
            !params.contains_key("requires_internet"),
            "loopback backends need no internet"
        );
        assert_eq!(*max, 8, "twice each backend's max_concurrent");
    }
    assert!(mock.requests().is_empty(), "nothing is called at start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_backend_streams_a_chat() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    let a = chat(
        &node,
        GPT,
        "hello",
        llm::ChatInput {
            max_tokens: Some(50),
            temperature: Some(0.2),
            seed: Some(5),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        a.pieces,
        ["Hel", "lo", " there", "!"],
        "one frame per delta"
    );
    let done = a.done();
    assert_eq!(done.tokens_out, 7, "LLM-015: usage.completion_tokens");
    assert_eq!(done.stop_reason, llm::StopReason::End as i32);
    let r = mock.last();
    assert_eq!(r.path, OPENAI_PATH);
    assert_eq!(r.body["model"], "gpt-remote");
    assert_eq!(r.body["max_tokens"], 50);
    assert_eq!(r.body["temperature"], 0.2);
    assert_eq!(r.body["top_p"], 0.95, "LLM-009 default");
    assert_eq!(r.body["seed"], 5);
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["stream_options"]["include_usage"], true);
    assert_eq!(
        r.body["messages"],
        json!([{ "role": "system", "content": SYSTEM }, { "role": "user", "content": "hello" }])
    );
    assert!(
        r.headers.get("authorization").is_none(),
        "no key configured"
    );

    // Without usage, tokens_out counts the deltas.
    let a = chat(&node, GPT, "nousage", llm::ChatInput::default()).await;
    assert_eq!(a.text(), "abc");
    assert_eq!(a.done().tokens_out, 3);
    assert_eq!(mock.last().body["max_tokens"], 1024, "LLM-009 default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_backend_streams_a_chat() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    let a = read_call(
        &node,
        "llm.chat",
        chat_payload(
            CLAUDE,
            vec![
                (llm::Role::System, "Be terse."),
                (llm::Role::User, "first"),
                (llm::Role::Assistant, "ok"),
                (llm::Role::User, "hello"),
            ],
            llm::ChatInput::default(),
        ),
    )
    .await;
    assert_eq!(a.pieces, ["Hel", "lo", " there", "!"]);
    assert_eq!(a.done().tokens_out, 7, "usage.output_tokens");
    assert_eq!(a.done().stop_reason, llm::StopReason::End as i32);
    let r = mock.last();
    assert_eq!(r.path, ANTHROPIC_PATH);
    assert_eq!(r.body["model"], "claude-remote");
    assert_eq!(r.body["max_tokens"], 1024);
    assert_eq!(r.body["system"], "Be terse.");
    assert_eq!(
        r.body["messages"],
        json!([
            { "role": "user", "content": "first" },
            { "role": "assistant", "content": "ok" },
            { "role": "user", "content": "hello" }
        ])
    );
    assert_eq!(r.body["temperature"], 0.7);
    assert!(r.body.get("top_p").is_none(), "top_p only when asked for");
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.headers["anthropic-version"], "2023-06-01");

    // A chat without a system message gets the configured one.
    chat(&node, CLAUDE, "hello", llm::ChatInput::default()).await;
    assert_eq!(mock.last().body["system"], SYSTEM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstreamed_answers_are_one_token_frame() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    for model in [GPT, CLAUDE] {
        let a = chat(
            &node,
            model,
            "hello",
            llm::ChatInput {
                stream: Some(false),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(a.pieces, ["Hello there!"], "LLM-014 ({model})");
        assert_eq!(a.done().tokens_out, 7);
        assert_eq!(a.done().stop_reason, llm::StopReason::End as i32);
        let r = mock.last();
        assert_eq!(r.body["stream"], false);
        assert!(r.body.get("stream_options").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_the_model_they_name() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    chat(&node, CLAUDE, "hello", llm::ChatInput::default())
        .await
        .done();
    assert_eq!(mock.last().path, ANTHROPIC_PATH);
    chat(&node, GPT, "hello", llm::ChatInput::default())
        .await
        .done();
    assert_eq!(mock.last().path, OPENAI_PATH);
    // Empty: the default model.
    chat(&node, "", "hello", llm::ChatInput::default())
        .await
        .done();
    assert_eq!(mock.last().body["model"], "gpt-remote");
    // Byte for byte (LLM-004): neither a remote id nor another spelling.
    let before = mock.requests().len();
    for wanted in ["mock/none", "gpt-remote", "mock/GPT", "mock/gpt "] {
        let a = chat(&node, wanted, "hello", llm::ChatInput::default()).await;
        assert_eq!(a.error().code, "not_found", "{wanted}");
        assert!(a.pieces.is_empty());
    }
    assert_eq!(
        mock.requests().len(),
        before,
        "refused before any backend call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_are_cut_here_and_never_sent() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    for model in [GPT, CLAUDE] {
        for stream in [true, false] {
            let a = chat(
                &node,
                model,
                "split",
                llm::ChatInput {
                    stop: vec!["STOP".into()],
                    stream: Some(stream),
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(a.text(), "The answer is ", "{model} stream={stream}");
            for p in &a.pieces {
                assert!(!p.contains("ST"), "LLM-011: {p:?}");
            }
            assert_eq!(
                a.done().stop_reason,
                llm::StopReason::StopSequence as i32,
                "{model} stream={stream}"
            );
            let r = mock.last();
            assert!(r.body.get("stop").is_none());
            assert!(r.body.get("stop_sequences").is_none());
        }
    }
    // Without the stop sequence the whole text comes through.
    let a = chat(&node, GPT, "split", llm::ChatInput::default()).await;
    assert_eq!(a.text(), "The answer is STOP and more");
    assert_eq!(a.done().stop_reason, llm::StopReason::End as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_limit_ends_with_max_tokens() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    for model in [GPT, CLAUDE] {
        for stream in [true, false] {
            let a = chat(
                &node,
                model,
                "length",
                llm::ChatInput {
                    max_tokens: Some(2),
                    stream: Some(stream),
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(a.text(), "one two");
            let done = a.done();
            assert_eq!(
                done.stop_reason,
                llm::StopReason::MaxTokens as i32,
                "LLM-010"
            );
            assert_eq!(done.tokens_out, 2);
            assert_eq!(mock.last().body["max_tokens"], 2);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_complete_sends_the_prompt_as_one_user_message() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), both(&mock), &[]).await;
    for (model, path) in [(GPT, OPENAI_PATH), (CLAUDE, ANTHROPIC_PATH)] {
        let a = complete(&node, model, "hello", llm::CompleteInput::default()).await;
        assert_eq!(a.text(), "Hello there!");
        assert_eq!(a.done().tokens_out, 7);
        let r = mock.last();
        assert_eq!(r.path, path);
        assert_eq!(
            r.body["messages"],
            json!([{ "role": "user", "content": "hello" }])
        );
        assert!(r.body.get("system").is_none(), "no system prompt");
        assert_eq!(r.body["max_tokens"], 256, "LLM-009 default");
    }
    let a = complete(&node, "mock/none", "hello", llm::CompleteInput::default()).await;
    assert_eq!(a.error().code, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_map_to_protocol_codes() {
    let mock = Mock::start().await;
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone_url = format!("http://127.0.0.1:{closed}/v1");
    let mut backends = both(&mock);
    backends.push(backend(
        LlmBackendKind::Openai,
        "mock/gone",
        &gone_url,
        "gone",
    ));
    let dir = tempfile::tempdir().unwrap();
    let node = llm_node(1, dir.path(), backends, &[]).await;
    for model in [GPT, CLAUDE] {
        let a = chat(&node, model, "429", llm::ChatInput::default()).await;
        assert_eq!(a.error().code, "rate_limited", "{model}");
        assert_eq!(a.error().retry_after_ms, 2000, "{model}");
        assert!(a.error().message.contains("slow down"), "{:?}", a.error());
        let a = chat(&node, model, "500", llm::ChatInput::default()).await;
        assert_eq!(a.error().code, "internal_error", "{model}");
    }
    // LLM-007: advertised, but the backend cannot run it now.
    let a = chat(&node, "mock/gone", "hello", llm::ChatInput::default()).await;
    assert_eq!(a.error().code, "not_implemented");
    assert!(
        a.error().message.contains(&gone_url),
        "names the URL: {}",
        a.error().message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_closes_the_backend_stream() {
    use tokio_stream::StreamExt;
    for model in [GPT, CLAUDE] {
        let mock = Mock::start().await;
        let dir = tempfile::tempdir().unwrap();
        let node = llm_node(1, dir.path(), both(&mock), &[]).await;
        let mut s = node.bus().call_as_self(
            "llm.chat",
            "1.0",
            PayloadEncoding::Proto,
            chat_payload(
                model,
                vec![(llm::Role::User, "slow")],
                llm::ChatInput::default(),
            ),
            None,
        );
        let mut tokens = 0;
        while tokens < 2 {
            let f = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("tokens keep coming")
                .expect("the stream is open");
            if let Some(frame::Kind::Data(_)) = f.kind {
                tokens += 1;
            }
        }
        assert!(!mock.seen.dropped.load(Ordering::SeqCst));
        drop(s);
        // LLM-016: the HTTP request to the backend is given up.
        eventually("the backend seeing the disconnect", || {
            mock.seen.dropped.load(Ordering::SeqCst)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_a_backends_limit_wait_their_turn() {
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let one_at_a_time = LlmBackend {
        max_concurrent: Some(1),
        ..backend(
            LlmBackendKind::Openai,
            GPT,
            &mock.openai_url(),
            "gpt-remote",
        )
    };
    let node = llm_node(1, dir.path(), vec![one_at_a_time], &[]).await;
    let (a, b) = tokio::join!(
        chat(&node, GPT, "hold a", llm::ChatInput::default()),
        chat(&node, GPT, "hold b", llm::ChatInput::default()),
    );
    assert_eq!(a.text(), "Hello there!");
    assert_eq!(b.text(), "Hello there!");
    assert_eq!(mock.requests().len(), 2);
    assert_eq!(
        mock.seen.max_active.load(Ordering::SeqCst),
        1,
        "the second call waited for the first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serves_a_completion_from_its_http_backend() {
    use tokio_stream::StreamExt;
    let mock = Mock::start().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // B has the backends and counts A as a member; A has no model at all.
    let b = llm_node(2, db.path(), both(&mock), &[1]).await;
    let a = llm_node(1, da.path(), Vec::new(), &[2]).await;
    assert!(
        !a.bus()
            .local_capabilities()
            .iter()
            .any(|(c, _, _)| c.name == "llm.chat"),
        "A serves no LLM"
    );
    a.add_peer(&b.url());
    for _ in 0..100 {
        if !a.bus().peers().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let req = llm::CompleteRequest {
        params: Some(llm::CompleteParams {
            model: CLAUDE.into(),
            ctx: None,
        }),
        input: Some(llm::CompleteInput {
            prompt: "hello".into(),
            max_tokens: Some(8),
            ..Default::default()
        }),
    };
    let mut s = a.bus().call_as_self(
        "llm.complete",
        "1.0",
        PayloadEncoding::Proto,
        req.encode_to_vec(),
        None,
    );
    let mut text = String::new();
    let mut done = None;
    while let Some(f) = s.next().await {
        match f.kind {
            Some(frame::Kind::Data(d)) => {
                match llm::CompleteResponse::decode(d.as_slice()).unwrap().frame {
                    Some(llm::complete_response::Frame::Token(t)) => text.push_str(&t.text),
                    Some(llm::complete_response::Frame::Done(d)) => done = Some(d),
                    None => {}
                }
            }
            Some(frame::Kind::Error(e)) => panic!("{e:?}"),
            _ => {}
        }
    }
    assert_eq!(text, "Hello there!");
    assert_eq!(done.unwrap().tokens_out, 7);
    assert_eq!(mock.last().body["max_tokens"], 8);
    let traces = a.bus().traces().recent(10, "llm.complete");
    let b_id = common::key(2).node_id().to_string();
    assert!(
        traces.iter().any(|t| t.peer == b_id),
        "served by B: {traces:?}"
    );
}

// ------------------------------------------------ the client on its own ---

fn hello(stream: bool) -> GenRequest {
    GenRequest {
        messages: vec![("user".into(), "hello".into())],
        max_tokens: 16,
        stream,
        ..Default::default()
    }
}

async fn pieces_of(
    b: &HttpBackend,
    req: &GenRequest,
) -> (Vec<String>, hearthnet_node::services::llm_http::Generated) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let g = b
        .generate(req, &tokio_util::sync::CancellationToken::new(), tx)
        .await
        .unwrap();
    let mut pieces = Vec::new();
    while let Ok(p) = rx.try_recv() {
        pieces.push(p);
    }
    (pieces, g)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_go_in_each_apis_header() {
    let mock = Mock::start().await;
    let oa = HttpBackend::new(
        Kind::OpenAi,
        &mock.openai_url(),
        "gpt-remote",
        Some("sk-test".into()),
    )
    .unwrap();
    let (pieces, g) = pieces_of(&oa, &hello(true)).await;
    assert_eq!(pieces.concat(), "Hello there!");
    assert_eq!((g.tokens_out, g.stop), (7, StopKind::End));
    let r = mock.last();
    assert_eq!(r.headers["authorization"], "Bearer sk-test");
    assert!(r.headers.get("x-api-key").is_none());

    let an = HttpBackend::new(
        Kind::Anthropic,
        &mock.anthropic_url(),
        "claude-remote",
        Some("sk-ant-test".into()),
    )
    .unwrap();
    let (pieces, g) = pieces_of(&an, &hello(false)).await;
    assert_eq!(pieces, ["Hello there!"]);
    assert_eq!((g.tokens_out, g.stop), (7, StopKind::End));
    let r = mock.last();
    assert_eq!(r.headers["x-api-key"], "sk-ant-test");
    assert_eq!(r.headers["anthropic-version"], "2023-06-01");
    assert!(r.headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_generation_and_the_request() {
    for kind in [Kind::OpenAi, Kind::Anthropic] {
        let mock = Mock::start().await;
        let url = match kind {
            Kind::OpenAi => mock.openai_url(),
            Kind::Anthropic => mock.anthropic_url(),
        };
        let b = HttpBackend::new(kind, &url, "m", None).unwrap();
        let req = GenRequest {
            messages: vec![("user".into(), "slow".into())],
            ..hello(true)
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { b.generate(&req, &cancel, tx).await }
        });
        for _ in 0..2 {
            let p = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(p.starts_with("tick"), "{p:?}");
        }
        cancel.cancel();
        let g = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the generation ends soon after the cancel")
            .unwrap()
            .unwrap();
        assert_eq!(g.stop, StopKind::Cancelled);
        eventually("the backend seeing the disconnect", || {
            mock.seen.dropped.load(Ordering::SeqCst)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_stops_the_generation() {
    let mock = Mock::start().await;
    let b = HttpBackend::new(Kind::OpenAi, &mock.openai_url(), "m", None).unwrap();
    let req = GenRequest {
        messages: vec![("user".into(), "slow".into())],
        ..hello(true)
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        b.generate(&req, &tokio_util::sync::CancellationToken::new(), tx)
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    drop(rx);
    let g = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the generation ends once nobody reads")
        .unwrap()
        .unwrap();
    assert_eq!(g.stop, StopKind::Cancelled);
    eventually("the backend seeing the disconnect", || {
        mock.seen.dropped.load(Ordering::SeqCst)
    })
    .await;
}
