//! Services that ship with every node. Each implements
//! [`crate::bus::Service`] and registers with the bus at start-up.

pub mod builtin;
pub mod chat;
pub mod files;
pub mod market;
