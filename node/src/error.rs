//! Call errors as they travel: a protocol error code plus details, turned into
//! the wire `Error` object at the transport boundary.

use hearthnet_sdk::proto::hearthnet::common::v1::{Error as WireError, ErrorCode};

/// A failed call: the protocol error code and what the caller needs to act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.wire_name())]
pub struct CallError {
    /// The protocol error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// When to retry, for `rate_limited` and `capacity_exceeded`.
    pub retry_after_ms: u64,
    /// The provider's schema hash, for `schema_mismatch`.
    pub schema_hash_expected: String,
    /// JSON pointers of invalid fields, for `bad_request` from the schema check.
    pub pointers: Vec<String>,
}

impl CallError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
            schema_hash_expected: String::new(),
            pointers: Vec::new(),
        }
    }

    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `internal_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }

    /// Sets `retry_after_ms`.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = ms;
        self
    }

    /// The wire error object.
    pub fn to_wire(&self) -> WireError {
        WireError {
            code: self.code.wire_name().to_string(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
            alt_capabilities: Vec::new(),
            alt_nodes: Vec::new(),
            schema_hash_expected: self.schema_hash_expected.clone(),
            pointers: self.pointers.clone(),
        }
    }

    /// Rebuilds an error received from a peer; unknown codes become `internal_error`.
    pub fn from_wire(e: &WireError) -> Self {
        let code = ErrorCode::from_wire_name(&e.code).unwrap_or(ErrorCode::InternalError);
        Self {
            code,
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
            schema_hash_expected: e.schema_hash_expected.clone(),
            pointers: e.pointers.clone(),
        }
    }

    /// Whether the failure is the provider's fault (counts against its health).
    pub fn is_provider_fault(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::InternalError | ErrorCode::Timeout | ErrorCode::Partition
        )
    }

    /// HTTP status of the code (its `http_status` option).
    pub fn http_status(&self) -> u16 {
        hearthnet_sdk::registry::error_code(self.code.wire_name())
            .map(|i| i.http_status)
            .unwrap_or(500)
    }
}

/// Exit code of the `hearthnet` command for a wire error code (decision 0041).
pub fn exit_code(code: &str) -> u8 {
    match code {
        "not_found" => 6,
        "bad_request" | "schema_mismatch" => 7,
        "timeout" => 8,
        "partition" => 9,
        "rate_limited" | "capacity_exceeded" => 5,
        "invalid_signature" | "unauthorized" | "revoked" | "expired" | "not_federated" => 4,
        c if c.starts_with("token_") => 4,
        _ => 1,
    }
}
