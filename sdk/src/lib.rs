//! # hearthnet-sdk
//!
//! Everything an implementation of the HearthNet protocol needs, generated from
//! `protocol/proto` at build time:
//!
//! * [`proto`]: prost message types and tonic clients/servers for every package,
//!   with canonical proto3 JSON (`serde`) implementations from pbjson;
//! * [`registry`]: the capability registry (name, version, stability, trust,
//!   streaming shape, errors, events, schema hash), events and error codes;
//! * [`validate`]: JSON Schema validation of capability requests and responses,
//!   reporting every violation with its JSON pointer;
//! * [`json`]: conversions between typed messages, protobuf bytes and JSON.
//!
//! ```
//! use hearthnet_sdk::{registry, validate::{validate_json, Direction}};
//!
//! let cap = registry::capability("embed.text").expect("in the registry");
//! assert_eq!(cap.version, "1.0");
//! let ok = r#"{"params":{"model":"all-minilm-l6-v2"},"input":{"texts":["hello"]}}"#;
//! validate_json("embed.text", Direction::Request, ok).expect("valid");
//! let bad = r#"{"params":{"model":7}}"#;
//! let errors = validate_json("embed.text", Direction::Request, bad).unwrap_err();
//! assert_eq!(errors.violations()[0].pointer, "/params/model");
//! ```
//!
//! The node and the conformance runner use only this crate; other languages use
//! the artefacts exported by `hearthnet-codegen export`.

#![forbid(unsafe_code)]

/// Protocol constants generated from `protocol/constants.json`.
#[allow(clippy::all)]
pub mod constants {
    include!(concat!(env!("OUT_DIR"), "/constants.rs"));
}
pub mod client;

/// `println!` for command-line tools: when stdout is closed (a reader such as
/// `| head` went away) the program ends quietly with status 0 instead of
/// panicking.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}
pub mod envelope;
pub mod identity;
pub mod json;
pub mod records;
pub mod registry;
pub mod replay;
pub mod signing;
pub mod token;
pub mod validate;
pub mod wkt;

/// Generated protobuf types and gRPC services, one module per package
/// (`proto::hearthnet::llm::v1::ChatRequest`).
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/protos.rs"));
}

/// The encoded `FileDescriptorSet` of the protocol (imports and source info
/// included, custom options preserved).
pub static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.binpb"));

/// The protocol version this SDK implements (`protocol/VERSION`).
pub const PROTOCOL_VERSION: &str = include_str!("../../protocol/VERSION").trim_ascii();

/// A descriptor pool of the protocol, for reflection (decoded once).
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(DESCRIPTOR_SET)
            .expect("the descriptor set generated at build time decodes")
    })
}
