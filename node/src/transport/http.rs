//! The HTTP/JSON binding: `POST /bus/v1/call` with `X-HearthNet-*` headers
//! (JSON bodies validated against the published schemas at the edge, SSE for
//! streams), `GET /manifest`, `GET /metrics`, `GET /health`, `GET /ready`
//! (decision 0043).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use tokio_stream::StreamExt;

use hearthnet_sdk::identity::SignatureBytes;
use hearthnet_sdk::proto::hearthnet::bus::v1::{CallRequest, PayloadEncoding, frame};
use hearthnet_sdk::registry::{self, Streaming};
use hearthnet_sdk::wkt::Timestamp;

use crate::bus::{Bus, Inbound, check_json};
use crate::error::CallError;

/// The peer address of a connection, set by the server loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// The bus.
    pub bus: Bus,
    /// Accept unsigned calls from loopback (decision 0041).
    pub allow_unsigned_loopback: bool,
    /// Serve `/metrics`.
    pub metrics_enabled: bool,
    /// The blob store, for `GET /files/{cid}`.
    pub blobs: Option<std::sync::Arc<crate::blobs::BlobStore>>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/bus/v1/call", post(call))
        .route(
            "/bus/v1/open",
            post(open).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/files/{cid}", get(download))
        .route("/manifest", get(manifest))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .with_state(state)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn error_response(e: &CallError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_string(&e.to_wire()).unwrap_or_else(|_| "{}".into());
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-hearthnet-request-id", v);
    }
    if e.retry_after_ms > 0 {
        let secs = e.retry_after_ms.div_ceil(1000);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            h.insert("retry-after", v);
        }
    }
    resp
}

/// Builds the `CallRequest` an HTTP request stands for.
fn build_call(
    state: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(CallRequest, Option<Duration>), CallError> {
    let capability = header(headers, "x-hearthnet-capability")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CallError::bad_request("X-HearthNet-Capability is missing"))?
        .to_string();
    let min_version = match header(headers, "x-hearthnet-capability-version") {
        Some(v) => v.to_string(),
        None => registry::capability(&capability)
            .map(|c| format!("{}.0", c.version_numbers().0))
            .unwrap_or_else(|| "1.0".into()),
    };
    let timeout = match header(headers, "x-hearthnet-deadline-ms") {
        Some(v) => Some(Duration::from_millis(v.parse().map_err(|_| {
            CallError::bad_request("X-HearthNet-Deadline-Ms is not a number")
        })?)),
        None => None,
    };
    let text =
        std::str::from_utf8(&body).map_err(|_| CallError::bad_request("body is not UTF-8"))?;
    // Edge validation against the published schema (BUS-032).
    if let Some(cap) = registry::capability(&capability) {
        check_json(
            cap.request,
            if text.trim().is_empty() { "{}" } else { text },
        )?;
    }
    let payload = if text.trim().is_empty() {
        b"{}".to_vec()
    } else {
        body.to_vec()
    };
    let signature = header(headers, "x-hearthnet-signature");
    let mut call = CallRequest {
        capability,
        min_version,
        request_id: header(headers, "x-hearthnet-request-id")
            .map(str::to_string)
            .unwrap_or_else(|| ulid::Ulid::new().to_string()),
        caller: header(headers, "x-hearthnet-from")
            .unwrap_or("")
            .to_string(),
        community: header(headers, "x-hearthnet-community")
            .unwrap_or("")
            .to_string(),
        timestamp: None,
        encoding: PayloadEncoding::Json as i32,
        payload,
        schema_hash: header(headers, "x-hearthnet-schema-hash")
            .unwrap_or("")
            .to_string(),
        token: header(headers, "x-hearthnet-token")
            .unwrap_or("")
            .to_string(),
        signature: Vec::new(),
    };
    match signature {
        Some(sig) => {
            let ts = header(headers, "x-hearthnet-timestamp")
                .ok_or_else(|| CallError::bad_request("X-HearthNet-Timestamp is missing"))?;
            call.timestamp = Some(
                Timestamp::parse(ts)
                    .map_err(|e| CallError::bad_request(format!("X-HearthNet-Timestamp: {e}")))?,
            );
            call.signature = parse_signature(sig)?;
        }
        None => {
            if !(state.allow_unsigned_loopback && peer.ip().is_loopback()) {
                return Err(CallError::new(
                    hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode::InvalidSignature,
                    "X-HearthNet-Signature is missing (unsigned calls are accepted only from loopback)",
                ));
            }
            // The local operator: the node signs the call as itself.
            call.timestamp = Some(Timestamp::now());
            if call.community.is_empty() {
                call.community = String::new();
            }
            state.bus.sign(&mut call);
        }
    }
    Ok((call, timeout))
}

fn parse_signature(text: &str) -> Result<Vec<u8>, CallError> {
    if let Ok(s) = text.parse::<SignatureBytes>() {
        return Ok(s.0.to_vec());
    }
    let raw = text.strip_prefix("ed25519:").unwrap_or(text);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(raw))
        .ok()
        .filter(|b| b.len() == 64)
        .ok_or_else(|| CallError::bad_request("X-HearthNet-Signature is not a 64-byte signature"))
}

async fn call(
    State(state): State<HttpState>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = header(&headers, "x-hearthnet-request-id")
        .unwrap_or("")
        .to_string();
    let (call, timeout) = match build_call(&state, peer, &headers, body) {
        Ok(c) => c,
        Err(e) => return error_response(&e, &rid),
    };
    let request_id = call.request_id.clone();
    let streaming =
        registry::capability(&call.capability).is_some_and(|c| c.streaming != Streaming::Unary);
    let wants_sse = header(&headers, "accept").is_some_and(|a| a.contains("text/event-stream"));
    let frames = state.bus.serve(
        call,
        Inbound {
            timeout,
            input: None,
        },
    );
    if streaming || wants_sse {
        let events = frames.map(|f| {
            let ev = match f.kind {
                Some(frame::Kind::Data(d)) => Event::default()
                    .event("data")
                    .data(String::from_utf8_lossy(&d).replace('\n', " ")),
                Some(frame::Kind::Progress(p)) => Event::default()
                    .event("progress")
                    .data(serde_json::to_string(&p).unwrap_or_default()),
                Some(frame::Kind::Done(d)) => Event::default()
                    .event("done")
                    .data(serde_json::to_string(&d).unwrap_or_default()),
                Some(frame::Kind::Error(e)) => Event::default()
                    .event("error")
                    .data(serde_json::to_string(&e).unwrap_or_default()),
                Some(frame::Kind::Ack(_)) | None => Event::default().comment("ignored"),
            };
            Ok::<_, Infallible>(ev.id(f.seq.to_string()))
        });
        let mut resp = Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-hearthnet-request-id", v);
        }
        return resp;
    }
    unary_response(frames, &request_id).await
}

/// A unary answer: the data frame is the body; the `done` signature goes in
/// headers (decision 0043).
async fn unary_response(
    mut frames: tokio_stream::wrappers::ReceiverStream<
        hearthnet_sdk::proto::hearthnet::bus::v1::Frame,
    >,
    request_id: &str,
) -> Response {
    let request_id = request_id.to_string();
    let mut data = None;
    while let Some(f) = frames.next().await {
        match f.kind {
            Some(frame::Kind::Data(d)) => data = Some(d),
            Some(frame::Kind::Error(e)) => {
                return error_response(&CallError::from_wire(&e), &request_id);
            }
            Some(frame::Kind::Done(done)) => {
                let mut resp = (StatusCode::OK, data.take().unwrap_or_default()).into_response();
                let h = resp.headers_mut();
                h.insert("content-type", HeaderValue::from_static("application/json"));
                for (name, value) in [
                    ("x-hearthnet-request-id", request_id.clone()),
                    ("x-hearthnet-from", done.signer.clone()),
                    (
                        "x-hearthnet-signature",
                        SignatureBytes::from_slice(&done.signature)
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                    ),
                ] {
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        h.insert(name, v);
                    }
                }
                return resp;
            }
            _ => {}
        }
    }
    error_response(
        &CallError::internal("stream ended without a terminal frame"),
        &request_id,
    )
}

/// Longest line of a `/bus/v1/open` body (one client message as JSON).
const OPEN_LINE_MAX: usize = 2 * hearthnet_sdk::constants::BUS_MAX_MESSAGE_BYTES as usize;

/// `POST /bus/v1/open`: a client-streaming call as NDJSON, one client
/// message per line, the first being the request (decision 0044); the body
/// is read as it arrives, so uploads are not held in memory. The answer is
/// one signed JSON body. Bidi capabilities are gRPC-only.
async fn open(
    State(state): State<HttpState>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let rid = header(&headers, "x-hearthnet-request-id")
        .unwrap_or("")
        .to_string();
    let cap = header(&headers, "x-hearthnet-capability").and_then(registry::capability);
    match cap.map(|c| c.streaming) {
        Some(Streaming::Client) => {}
        Some(Streaming::Bidi) => {
            return error_response(
                &CallError::new(
                    hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode::NotImplemented,
                    "bidirectional capabilities are served over gRPC Open only (decision 0044)",
                ),
                &rid,
            );
        }
        _ => {
            return error_response(
                &CallError::bad_request(
                    "/bus/v1/open carries client-streaming capabilities; use /bus/v1/call",
                ),
                &rid,
            );
        }
    }
    let mut chunks = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    // Lines as they arrive: Ok(Some(line)), Ok(None) at the end.
    async fn next_line(
        chunks: &mut axum::body::BodyDataStream,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, CallError> {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let line = line.trim_ascii().to_vec();
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(line));
            }
            if buf.len() > OPEN_LINE_MAX {
                return Err(CallError::bad_request(format!(
                    "a line of the body is longer than {OPEN_LINE_MAX} bytes"
                )));
            }
            match chunks.next().await {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(CallError::bad_request(format!("body: {e}"))),
                None => {
                    let rest = std::mem::take(buf);
                    let rest = rest.trim_ascii();
                    return Ok((!rest.is_empty()).then(|| rest.to_vec()));
                }
            }
        }
    }
    let first = match next_line(&mut chunks, &mut buf).await {
        Ok(Some(l)) => l,
        Ok(None) => return error_response(&CallError::bad_request("empty body"), &rid),
        Err(e) => return error_response(&e, &rid),
    };
    let (call, timeout) = match build_call(&state, peer, &headers, Bytes::from(first)) {
        Ok(c) => c,
        Err(e) => return error_response(&e, &rid),
    };
    let request_id = call.request_id.clone();
    let (tx, rx) =
        tokio::sync::mpsc::channel(hearthnet_sdk::constants::STREAM_WINDOW_FRAMES as usize);
    let frames = state.bus.serve(
        call,
        Inbound {
            timeout,
            input: Some(rx),
        },
    );
    // Feed the remaining lines while the provider works.
    tokio::spawn(async move {
        let mut seq = 0u64;
        while let Ok(Some(line)) = next_line(&mut chunks, &mut buf).await {
            if tx.send((seq, line)).await.is_err() {
                return;
            }
            seq += 1;
        }
    });
    unary_response(frames, &request_id).await
}

/// `GET /files/{cid}`: the operator downloads a blob over plain HTTP from
/// loopback, whole or one byte range (`Range: bytes=a-b`), every byte
/// verified against the CID on the way out; `?name=` sets the file name
/// offered to the browser, refused when it is a path or too long.
async fn download(
    State(state): State<HttpState>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    axum::extract::Path(cid): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !(state.allow_unsigned_loopback && peer.ip().is_loopback()) {
        return error_response(
            &CallError::new(
                hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode::Unauthorized,
                "downloads over plain HTTP are for the local operator; use file.read",
            ),
            "",
        );
    }
    if let Some(name) = q.get("name")
        && let Err(e) = crate::blobs::validate_name(name)
    {
        return error_response(&CallError::bad_request(e.to_string()), "");
    }
    let Some(store) = state.blobs.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let range = header(&headers, "range").map(str::to_string);
    let c = cid.clone();
    let result = tokio::task::spawn_blocking(move || {
        let size = store.stat(&c)?.size;
        let (start, end) = match range.as_deref().and_then(parse_range) {
            Some((a, b)) => (a.min(size), b.map_or(size, |b| (b + 1).min(size))),
            None => (0, size),
        };
        if start > end {
            return Err(crate::blobs::BlobError::Range { start, end, size });
        }
        Ok((
            store.read_bytes(&c, start, end)?,
            start,
            end,
            size,
            range.is_some(),
        ))
    })
    .await;
    match result {
        Ok(Ok((data, start, end, size, partial))) => {
            let mut resp = (
                if partial {
                    StatusCode::PARTIAL_CONTENT
                } else {
                    StatusCode::OK
                },
                data,
            )
                .into_response();
            let h = resp.headers_mut();
            h.insert(
                "content-type",
                HeaderValue::from_static("application/octet-stream"),
            );
            if partial
                && end > start
                && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1))
            {
                h.insert("content-range", v);
            }
            if let Some(name) = q.get("name")
                && let Ok(v) = HeaderValue::from_str(&format!(
                    "attachment; filename=\"{}\"",
                    name.replace('"', "")
                ))
            {
                h.insert("content-disposition", v);
            }
            resp
        }
        Ok(Err(crate::blobs::BlobError::NotFound(_))) => error_response(
            &CallError::new(
                hearthnet_sdk::proto::hearthnet::common::v1::ErrorCode::NotFound,
                format!("no blob {cid}"),
            ),
            "",
        ),
        Ok(Err(crate::blobs::BlobError::Range { .. })) => {
            StatusCode::RANGE_NOT_SATISFIABLE.into_response()
        }
        Ok(Err(e)) => error_response(&CallError::internal(e.to_string()), ""),
        Err(e) => error_response(&CallError::internal(e.to_string()), ""),
    }
}

/// `bytes=a-b` or `bytes=a-` (one range).
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = b.trim();
    Some((
        a,
        if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        },
    ))
}

async fn manifest(State(state): State<HttpState>) -> Response {
    use hearthnet_sdk::proto::hearthnet::node::v1::{ManifestRequest, ManifestResponse};
    let resp: Result<ManifestResponse, _> = state
        .bus
        .unary("node.manifest", "1.0", &ManifestRequest::default())
        .await;
    match resp {
        // The body is the JSON of `ManifestOutput` (decision 0043): the
        // signed envelope's bytes and its expiry.
        Ok(r) => (
            [("content-type", "application/json")],
            serde_json::to_string(&r.output.unwrap_or_default()).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => error_response(&e, ""),
    }
}

async fn ready(State(state): State<HttpState>) -> Response {
    if state.bus.local_capabilities().is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no capability registered\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    if !state.metrics_enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.bus.metrics().encode(),
    )
        .into_response()
}
