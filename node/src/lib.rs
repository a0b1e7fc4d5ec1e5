//! The HearthNet node: configuration, observability, the capability bus,
//! transports (gRPC and HTTP/JSON on one port), built-in services and the
//! composition root used by the `hearthnet` command and by tests.
//!
//! Layers go one way: config/obs → bus → transport → services → node/cli.
//! Services never import each other; they register with the bus at start-up
//! and reach other capabilities only through it.

#![forbid(unsafe_code)]

pub mod blobs;
pub mod bus;
pub mod config;
pub mod discovery;
pub mod emergency;
pub mod error;
pub mod events;
pub mod faults;
#[cfg(feature = "models")]
pub mod models;
pub mod node;
pub mod obs;
pub mod rag;
pub mod services;
mod storage;
pub mod transport;

pub use node::{NodeBuilder, RunningNode};
