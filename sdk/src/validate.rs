//! JSON Schema validation of capability payloads against the published
//! schemas (generated from the descriptors, draft 2020-12).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::registry;

/// Which side of a capability a payload belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The request (or one client frame, for client-streaming capabilities).
    Request,
    /// The response (or one server frame, for server-streaming capabilities).
    Response,
}

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer of the offending value (`""` is the root).
    pub pointer: String,
    /// JSON pointer into the schema of the failing keyword.
    pub schema_pointer: String,
    /// What is wrong.
    pub message: String,
}

/// Validation failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// No such capability in the registry.
    #[error("unknown capability `{0}`")]
    UnknownCapability(String),
    /// No such message in the protocol.
    #[error("unknown message `{0}`")]
    UnknownMessage(String),
    /// The text is not JSON at all.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Parser message.
        message: String,
    },
    /// The JSON does not match the schema.
    #[error("{} schema violation(s), first at `{}`: {}", .0.len(), .0.first().map_or("", |v| v.pointer.as_str()), .0.first().map_or("", |v| v.message.as_str()))]
    Invalid(Vec<Violation>),
}

impl ValidationError {
    /// The violations (empty unless `Invalid`).
    pub fn violations(&self) -> &[Violation] {
        match self {
            ValidationError::Invalid(v) => v,
            _ => &[],
        }
    }
}

mod generated {
    include!(concat!(env!("OUT_DIR"), "/schemas.rs"));
}

/// The JSON Schema of a message, parsed (cached).
pub fn message_schema(message: &str) -> Option<&'static Value> {
    static PARSED: OnceLock<HashMap<&'static str, Value>> = OnceLock::new();
    PARSED
        .get_or_init(|| {
            generated::SCHEMAS
                .iter()
                .filter_map(|(n, text)| serde_json::from_str(text).ok().map(|v| (*n, v)))
                .collect()
        })
        .get(message)
}

/// The JSON Schema of a capability's request or response.
pub fn schema(capability: &str, direction: Direction) -> Option<&'static Value> {
    let cap = registry::capability(capability)?;
    message_schema(match direction {
        Direction::Request => cap.request,
        Direction::Response => cap.response,
    })
}

/// A compiled validator for a message (cached per message, built once).
pub fn validator(message: &str) -> Option<&'static jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, &'static jsonschema::Validator>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = map.get(message) {
        return Some(v);
    }
    let schema = message_schema(message)?;
    let compiled = jsonschema::options()
        .should_validate_formats(false)
        .build(schema)
        .ok()?;
    let leaked: &'static jsonschema::Validator = Box::leak(Box::new(compiled));
    map.insert(message.to_owned(), leaked);
    Some(leaked)
}

/// Validates a parsed JSON value against a message's schema.
pub fn validate_message_value(message: &str, value: &Value) -> Result<(), ValidationError> {
    let v =
        validator(message).ok_or_else(|| ValidationError::UnknownMessage(message.to_owned()))?;
    let violations: Vec<Violation> = v
        .iter_errors(value)
        .map(|e| Violation {
            pointer: e.instance_path().to_string(),
            schema_pointer: e.schema_path().to_string(),
            message: e.to_string(),
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ValidationError::Invalid(violations))
    }
}

/// Validates JSON text against a capability's request or response schema,
/// returning every violation with its JSON pointer.
pub fn validate_json(
    capability: &str,
    direction: Direction,
    text: &str,
) -> Result<(), ValidationError> {
    let cap = registry::capability(capability)
        .ok_or_else(|| ValidationError::UnknownCapability(capability.to_owned()))?;
    let message = match direction {
        Direction::Request => cap.request,
        Direction::Response => cap.response,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| ValidationError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    validate_message_value(message, &value)
}
