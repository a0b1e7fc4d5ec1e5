//! Conversions between typed messages, protobuf bytes and canonical proto3 JSON.
//!
//! The canonical JSON mapping of a message is its JSON wire form (DESIGN.md
//! §3): lowerCamelCase keys, 64-bit integers as strings, bytes as base64, enums
//! by name, default values omitted.

use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

/// Conversion failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The JSON text is not a valid instance of the message.
    #[error("invalid JSON for {message}: {source}")]
    Json {
        /// Message full name.
        message: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// The bytes are not a valid protobuf encoding of the message.
    #[error("invalid protobuf for {message}: {source}")]
    Proto {
        /// Message full name.
        message: String,
        /// Cause.
        source: prost::DecodeError,
    },
    /// No such message in the protocol.
    #[error("unknown message {0}")]
    UnknownMessage(String),
}

/// Canonical JSON text of a message.
pub fn to_json<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).unwrap_or_default()
}

/// Parses canonical (or any proto3-accepted) JSON into a message.
///
/// Numbers with a zero fraction (`1.0`, `1e2`) count as integers, as in JSON
/// Schema's data model and the proto3 JSON spec (decision 0004); the text is
/// read into a [`serde_json::Value`] first, so a repeated key keeps its last
/// value, as a schema validator sees it.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_str(text)?;
    normalize_numbers(&mut value);
    T::deserialize(value)
}

/// Parses a JSON value into a message (see [`from_json`]).
pub fn from_json_value<T: DeserializeOwned>(
    mut value: serde_json::Value,
) -> Result<T, serde_json::Error> {
    normalize_numbers(&mut value);
    T::deserialize(value)
}

/// Rewrites floats with a zero fraction that fit a 64-bit integer as integers.
pub fn normalize_numbers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            const I64: std::ops::Range<f64> =
                -9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0;
            const U64: std::ops::Range<f64> = 0.0..18_446_744_073_709_551_616.0;
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && I64.contains(&f) => *v = Value::from(f as i64),
                Some(f) if f.fract() == 0.0 && U64.contains(&f) => *v = Value::from(f as u64),
                _ => {}
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_numbers),
        Value::Object(m) => m.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

pub(crate) fn json_to_proto<T: Message + DeserializeOwned>(
    json: &str,
) -> Result<Vec<u8>, serde_json::Error> {
    let msg: T = from_json(json)?;
    Ok(msg.encode_to_vec())
}

pub(crate) fn proto_to_json<T: Message + Default + Serialize>(
    bytes: &[u8],
) -> Result<String, ConvertError> {
    let msg = T::decode(bytes).map_err(|source| ConvertError::Proto {
        message: std::any::type_name::<T>().to_owned(),
        source,
    })?;
    Ok(to_json(&msg))
}

mod dispatch {
    use super::{json_to_proto, proto_to_json};
    include!(concat!(env!("OUT_DIR"), "/dispatch.rs"));
}

/// Full names of every HearthNet message.
pub fn message_names() -> &'static [&'static str] {
    dispatch::MESSAGE_NAMES
}

/// Decodes JSON as the named message (with the same decoder the node uses)
/// and returns its protobuf encoding.
pub fn json_to_proto_bytes(message: &str, json: &str) -> Result<Vec<u8>, ConvertError> {
    dispatch::json_to_proto_by_name(message, json)
        .ok_or_else(|| ConvertError::UnknownMessage(message.to_owned()))?
        .map_err(|source| ConvertError::Json {
            message: message.to_owned(),
            source,
        })
}

/// Decodes protobuf bytes of the named message and returns its canonical JSON.
pub fn proto_bytes_to_json(message: &str, bytes: &[u8]) -> Result<String, ConvertError> {
    dispatch::proto_to_json_by_name(message, bytes)
        .ok_or_else(|| ConvertError::UnknownMessage(message.to_owned()))?
}
