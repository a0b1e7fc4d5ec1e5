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
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text)
}

pub(crate) fn json_to_proto<T: Message + DeserializeOwned>(json: &str) -> Result<Vec<u8>, serde_json::Error> {
    let msg: T = serde_json::from_str(json)?;
    Ok(msg.encode_to_vec())
}

pub(crate) fn proto_to_json<T: Message + Default + Serialize>(bytes: &[u8]) -> Result<String, ConvertError> {
    let msg = T::decode(bytes).map_err(|source| ConvertError::Proto { message: std::any::type_name::<T>().to_owned(), source })?;
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
        .map_err(|source| ConvertError::Json { message: message.to_owned(), source })
}

/// Decodes protobuf bytes of the named message and returns its canonical JSON.
pub fn proto_bytes_to_json(message: &str, bytes: &[u8]) -> Result<String, ConvertError> {
    dispatch::proto_to_json_by_name(message, bytes)
        .ok_or_else(|| ConvertError::UnknownMessage(message.to_owned()))?
}
