//! The capability registry, event types and error codes read from the custom
//! options in `hearthnet/options/v1/options.proto`.

use prost_reflect::{DynamicMessage, MethodDescriptor, ReflectMessage};
use serde_json::{Value, json};

use crate::{Error, Protocol};

const CAPABILITY_EXT: &str = "hearthnet.options.v1.capability";
const EVENT_EXT: &str = "hearthnet.options.v1.event";
const ERROR_EXT: &str = "hearthnet.options.v1.error_code";
/// Full name of the error code enum.
pub const ERROR_ENUM: &str = "hearthnet.common.v1.ErrorCode";

/// One capability, as described by its rpc's options.
#[derive(Debug, Clone, PartialEq)]
pub struct Capability {
    /// Dotted name, e.g. `llm.chat`.
    pub name: String,
    /// `MAJOR.MINOR`.
    pub version: String,
    /// `experimental` / `beta` / `stable` / `deprecated`.
    pub stability: String,
    /// `unknown` / `member` / `trusted` / `anchor` / `self`.
    pub min_trust: String,
    /// `unary` / `server` / `client` / `bidi`.
    pub streaming: String,
    /// gRPC service full name.
    pub service: String,
    /// rpc name.
    pub method: String,
    /// Full name of the request message (one client frame when client-streaming).
    pub request: String,
    /// Full name of the response message (one server frame when server-streaming).
    pub response: String,
    /// Error wire names the capability may return beyond the universal ones.
    pub errors: Vec<String>,
    /// Event types it may emit.
    pub events: Vec<String>,
    /// Spec clause ids.
    pub clauses: Vec<String>,
    /// Whether repeating a call is safe.
    pub idempotent: bool,
    /// Default deadline in seconds (0 = bus default).
    pub timeout_seconds: u32,
    /// Default concurrency limit (0 = provider-defined).
    pub max_concurrent: u32,
    /// `blake3:` + hex over the canonical form of its request/response schemas.
    pub schema_hash: String,
    /// The rpc's doc comment.
    pub doc: String,
    /// `file:line:column` of the rpc.
    pub location: String,
}

/// One event type.
#[derive(Debug, Clone, PartialEq)]
pub struct EventType {
    /// Dotted type, e.g. `market.post.created`.
    pub event_type: String,
    /// Pub-sub topic.
    pub topic: String,
    /// Payload message full name.
    pub payload: String,
    /// Whether it never leaves the node.
    pub local_only: bool,
    /// Whether it is published to subscribers without being logged.
    pub ephemeral: bool,
    /// Spec clause ids.
    pub clauses: Vec<String>,
    /// Doc comment of the payload message.
    pub doc: String,
}

/// One error code.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorCodeInfo {
    /// Enum value name, e.g. `ERROR_CODE_NOT_FOUND`.
    pub enum_name: String,
    /// Enum number.
    pub number: i32,
    /// Wire name, e.g. `not_found`.
    pub wire_name: String,
    /// HTTP status of the HTTP binding.
    pub http_status: u32,
    /// Whether retrying may succeed.
    pub retryable: bool,
    /// Phase that introduced it.
    pub phase: u32,
    /// Doc comment.
    pub doc: String,
}

fn ext_message(
    opts: &DynamicMessage,
    pool: &prost_reflect::DescriptorPool,
    ext: &str,
) -> Option<DynamicMessage> {
    let ext = pool.get_extension_by_name(ext)?;
    if !opts.has_extension(&ext) {
        return None;
    }
    opts.get_extension(&ext).as_message().cloned()
}

fn get_str(m: &DynamicMessage, f: &str) -> String {
    m.get_field_by_name(f)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
fn get_u32(m: &DynamicMessage, f: &str) -> u32 {
    m.get_field_by_name(f).and_then(|v| v.as_u32()).unwrap_or(0)
}
fn get_bool(m: &DynamicMessage, f: &str) -> bool {
    m.get_field_by_name(f)
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}
fn get_list(m: &DynamicMessage, f: &str) -> Vec<String> {
    m.get_field_by_name(f)
        .and_then(|v| {
            v.as_list().map(|l| {
                l.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}
/// Enum option value as the lowercase suffix after the enum prefix, e.g. `stable`.
fn get_enum(m: &DynamicMessage, f: &str, prefix: &str) -> String {
    let Some(field) = m.descriptor().get_field_by_name(f) else {
        return String::new();
    };
    let Some(n) = m.get_field(&field).as_enum_number() else {
        return String::new();
    };
    let Some(e) = field.kind().as_enum().cloned() else {
        return String::new();
    };
    e.get_value(n)
        .map(|v| v.name().trim_start_matches(prefix).to_ascii_lowercase())
        .unwrap_or_default()
}

fn rpc_streaming(m: &MethodDescriptor) -> &'static str {
    match (m.is_client_streaming(), m.is_server_streaming()) {
        (false, false) => "unary",
        (false, true) => "server",
        (true, false) => "client",
        (true, true) => "bidi",
    }
}

fn capability_of(p: &Protocol, m: &MethodDescriptor) -> Option<Capability> {
    let opts = ext_message(&m.options(), p.pool(), CAPABILITY_EXT)?;
    let request = m.input().full_name().to_owned();
    let response = m.output().full_name().to_owned();
    let mut cap = Capability {
        name: get_str(&opts, "name"),
        version: get_str(&opts, "version"),
        stability: get_enum(&opts, "stability", "STABILITY_"),
        min_trust: get_enum(&opts, "min_trust", "TRUST_LEVEL_"),
        streaming: rpc_streaming(m).to_owned(),
        service: m.parent_service().full_name().to_owned(),
        method: m.name().to_owned(),
        request,
        response,
        errors: get_list(&opts, "errors"),
        events: get_list(&opts, "events"),
        clauses: get_list(&opts, "clauses"),
        idempotent: get_bool(&opts, "idempotent"),
        timeout_seconds: get_u32(&opts, "timeout_seconds"),
        max_concurrent: get_u32(&opts, "max_concurrent"),
        schema_hash: String::new(),
        doc: crate::comment(&m.parent_file(), m.path()),
        location: crate::location(&m.parent_file(), m.path()),
    };
    cap.schema_hash = schema_hash(p, &cap);
    Some(cap)
}

/// Declared streaming option (may be empty when unset).
fn declared_streaming(p: &Protocol, m: &MethodDescriptor) -> String {
    ext_message(&m.options(), p.pool(), CAPABILITY_EXT)
        .map(|o| get_enum(&o, "streaming", "STREAMING_"))
        .unwrap_or_default()
}

/// The schema hash of a capability: `blake3:` + hex of BLAKE3 over the
/// canonical JSON (sorted keys, no whitespace) of
/// `{"name", "version", "streaming", "request_schema", "response_schema"}`,
/// where the schemas are the generated ones **without** doc text. Doc
/// comments therefore never change a hash; any change to the JSON contract does.
pub fn schema_hash(p: &Protocol, cap: &Capability) -> String {
    let req = p.schema(&cap.request, false).unwrap_or(Value::Null);
    let resp = p.schema(&cap.response, false).unwrap_or(Value::Null);
    let doc = json!({
        "name": cap.name,
        "version": cap.version,
        "streaming": cap.streaming,
        "request_schema": req,
        "response_schema": resp,
    });
    format!(
        "blake3:{}",
        blake3::hash(canonical_json(&doc).as_bytes()).to_hex()
    )
}

/// Canonical JSON: object keys sorted by UTF-16... here by bytes (all our keys
/// are ASCII), no insignificant whitespace.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(v)).unwrap_or_default()
}

pub(crate) fn capabilities(p: &Protocol) -> Vec<Capability> {
    let mut out: Vec<Capability> = p
        .pool()
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .filter_map(|m| capability_of(p, &m))
        .collect();
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    out
}

pub(crate) fn events(p: &Protocol) -> Vec<EventType> {
    let mut out: Vec<EventType> = p
        .messages()
        .into_iter()
        .filter_map(|m| {
            let o = ext_message(&m.options(), p.pool(), EVENT_EXT)?;
            let event_type = get_str(&o, "type");
            let topic = match get_str(&o, "topic") {
                t if t.is_empty() => event_type.clone(),
                t => t,
            };
            Some(EventType {
                event_type,
                topic,
                payload: m.full_name().to_owned(),
                local_only: get_bool(&o, "local_only"),
                ephemeral: get_bool(&o, "ephemeral"),
                clauses: get_list(&o, "clauses"),
                doc: crate::comment(&m.parent_file(), m.path()),
            })
        })
        .collect();
    out.sort_by(|a, b| a.event_type.cmp(&b.event_type));
    out
}

pub(crate) fn error_codes(p: &Protocol) -> Vec<ErrorCodeInfo> {
    let Some(e) = p.pool().get_enum_by_name(ERROR_ENUM) else {
        return Vec::new();
    };
    e.values()
        .filter_map(|v| {
            let o = ext_message(&v.options(), p.pool(), ERROR_EXT)?;
            Some(ErrorCodeInfo {
                enum_name: v.name().to_owned(),
                number: v.number(),
                wire_name: get_str(&o, "wire_name"),
                http_status: get_u32(&o, "http_status"),
                retryable: get_bool(&o, "retryable"),
                phase: get_u32(&o, "phase"),
                doc: crate::comment(&v.parent_file(), v.path()),
            })
        })
        .collect()
}

/// Hard consistency checks run on every compile: declared errors and events
/// exist, the streaming option agrees with the rpc, the major version matches
/// the package, and names are unique.
pub(crate) fn check(p: &Protocol) -> Result<(), Error> {
    let codes: Vec<String> = error_codes(p).into_iter().map(|c| c.wire_name).collect();
    let events: Vec<String> = events(p).into_iter().map(|e| e.event_type).collect();
    let mut seen = std::collections::BTreeSet::new();
    for s in p.pool().services() {
        for m in s.methods() {
            let Some(cap) = capability_of(p, &m) else {
                continue;
            };
            let fail = |message: String| Error::Options {
                location: cap.location.clone(),
                message,
            };
            for e in &cap.errors {
                if !codes.contains(e) {
                    return Err(fail(format!(
                        "capability {} declares unknown error code `{e}`",
                        cap.name
                    )));
                }
            }
            for e in &cap.events {
                if !events.contains(e) {
                    return Err(fail(format!(
                        "capability {} declares unknown event type `{e}`",
                        cap.name
                    )));
                }
            }
            let declared = declared_streaming(p, &m);
            if !declared.is_empty() && declared != "unspecified" && declared != cap.streaming {
                return Err(fail(format!(
                    "capability {} declares streaming `{declared}` but the rpc is `{}`",
                    cap.name, cap.streaming
                )));
            }
            let major = cap.version.split('.').next().unwrap_or_default();
            let pkg_major = s.package_name().rsplit('.').next().unwrap_or_default();
            if format!("v{major}") != pkg_major {
                return Err(fail(format!(
                    "capability {}@{} lives in package {} (major must match)",
                    cap.name,
                    cap.version,
                    s.package_name()
                )));
            }
            if !seen.insert((cap.name.clone(), major.to_owned())) {
                return Err(fail(format!("capability {} is defined twice", cap.name)));
            }
        }
    }
    Ok(())
}

/// `registry.json`: capabilities, events and error codes with the protocol version.
pub fn registry_json(p: &Protocol) -> String {
    let caps: Vec<Value> = p
        .capabilities()
        .into_iter()
        .map(|c| {
            json!({
                "name": c.name, "version": c.version, "stability": c.stability,
                "min_trust": c.min_trust, "streaming": c.streaming,
                "service": c.service, "method": c.method,
                "request": c.request, "response": c.response,
                "errors": c.errors, "events": c.events, "clauses": c.clauses,
                "idempotent": c.idempotent, "timeout_seconds": c.timeout_seconds,
                "max_concurrent": c.max_concurrent, "schema_hash": c.schema_hash,
            })
        })
        .collect();
    let events: Vec<Value> = p
        .events()
        .into_iter()
        .map(|e| json!({"type": e.event_type, "topic": e.topic, "payload": e.payload, "local_only": e.local_only, "ephemeral": e.ephemeral, "clauses": e.clauses}))
        .collect();
    let errors: Vec<Value> = p
        .error_codes()
        .into_iter()
        .map(|e| json!({"code": e.wire_name, "enum": e.enum_name, "number": e.number, "http_status": e.http_status, "retryable": e.retryable, "phase": e.phase}))
        .collect();
    let constants: Vec<Value> = p
        .constants()
        .iter()
        .map(|c| json!({"name": c.name, "value": c.value, "unit": c.unit, "phase": c.phase, "area": c.area}))
        .collect();
    crate::pretty(&json!({
        "$comment": "@generated by hearthnet-codegen; do not edit. Regenerate with `cargo run -p hearthnet-codegen -- generate`.",
        "capabilities": caps,
        "events": events,
        "errors": errors,
        "constants": constants,
    }))
}
