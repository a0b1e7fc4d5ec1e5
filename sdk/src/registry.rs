//! The capability registry, event types and error codes, generated from the
//! custom options of `protocol/proto`.

/// Stream shape of a capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Streaming {
    /// One request, one response.
    Unary,
    /// One request, a stream of response frames.
    Server,
    /// A stream of request frames, one response.
    Client,
    /// Frames in both directions.
    Bidi,
}

/// One capability of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Dotted name, e.g. `llm.chat`.
    pub name: &'static str,
    /// `MAJOR.MINOR`.
    pub version: &'static str,
    /// `experimental`, `beta`, `stable` or `deprecated`.
    pub stability: &'static str,
    /// `unknown`, `member`, `trusted`, `anchor` or `self`.
    pub min_trust: &'static str,
    /// Stream shape.
    pub streaming: Streaming,
    /// gRPC service full name.
    pub service: &'static str,
    /// rpc name.
    pub method: &'static str,
    /// Request message full name (one client frame when client-streaming).
    pub request: &'static str,
    /// Response message full name (one server frame when server-streaming).
    pub response: &'static str,
    /// Error wire names it may return beyond the universal ones.
    pub errors: &'static [&'static str],
    /// Event types it may emit.
    pub events: &'static [&'static str],
    /// Spec clause ids.
    pub clauses: &'static [&'static str],
    /// Whether repeating a call is safe.
    pub idempotent: bool,
    /// Default deadline in seconds (0 = bus default).
    pub timeout_seconds: u32,
    /// Default concurrency limit (0 = provider-defined).
    pub max_concurrent: u32,
    /// `blake3:` + hex schema hash of its request/response shapes.
    pub schema_hash: &'static str,
}

impl Capability {
    /// `(major, minor)` of the version.
    pub fn version_numbers(&self) -> (u32, u32) {
        parse_version(self.version).unwrap_or((0, 0))
    }

    /// Whether this capability satisfies a request for `name@>=min` (same
    /// major, minor at least `min`'s).
    pub fn satisfies(&self, name: &str, min: (u32, u32)) -> bool {
        let (major, minor) = self.version_numbers();
        self.name == name && major == min.0 && minor >= min.1
    }
}

/// One event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// Dotted type, e.g. `market.post.created`.
    pub event_type: &'static str,
    /// Pub-sub topic.
    pub topic: &'static str,
    /// Payload message full name.
    pub payload: &'static str,
    /// Whether the event never leaves the node.
    pub local_only: bool,
    /// Whether it is published to subscribers without being logged.
    pub ephemeral: bool,
}

mod generated {
    use super::{Capability, EventType, Streaming};
    include!(concat!(env!("OUT_DIR"), "/registry.rs"));
}

pub use generated::DESCRIPTOR_HASH;

/// Every capability of the protocol, sorted by name.
pub fn registry() -> &'static [Capability] {
    generated::CAPABILITIES
}

/// The capability with this name (newest major if several).
pub fn capability(name: &str) -> Option<&'static Capability> {
    registry()
        .iter()
        .filter(|c| c.name == name)
        .max_by_key(|c| c.version_numbers())
}

/// Every event type.
pub fn events() -> &'static [EventType] {
    generated::EVENTS
}

/// Parses `MAJOR.MINOR`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    let ok = |s: &str| {
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    if !ok(a) || !ok(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Facts about one error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCodeInfo {
    /// The enum value.
    pub code: crate::proto::hearthnet::common::v1::ErrorCode,
    /// Wire name, e.g. `not_found`.
    pub wire_name: &'static str,
    /// HTTP status of the HTTP binding.
    pub http_status: u16,
    /// Whether retrying may succeed.
    pub retryable: bool,
    /// Protocol phase that introduced it.
    pub phase: u8,
}

/// Every error code, in enum order.
pub fn error_codes() -> impl Iterator<Item = ErrorCodeInfo> {
    generated::ERROR_CODES
        .iter()
        .filter_map(|&(n, wire_name, http_status, retryable, phase)| {
            Some(ErrorCodeInfo {
                code: crate::proto::hearthnet::common::v1::ErrorCode::try_from(n).ok()?,
                wire_name,
                http_status,
                retryable,
                phase,
            })
        })
}

/// Looks an error code up by its wire name (`not_found`).
pub fn error_code(wire_name: &str) -> Option<ErrorCodeInfo> {
    error_codes().find(|e| e.wire_name == wire_name)
}

impl crate::proto::hearthnet::common::v1::ErrorCode {
    /// The snake_case wire name (`not_found`); `internal_error` for `Unspecified`.
    pub fn wire_name(self) -> &'static str {
        error_codes()
            .find(|e| e.code == self)
            .map_or("internal_error", |e| e.wire_name)
    }

    /// Parses a wire name.
    pub fn from_wire_name(name: &str) -> Option<Self> {
        error_code(name).map(|e| e.code)
    }
}
