//! Runnel's replicated-log protocol, specified in docs/protocol.md.

#![forbid(unsafe_code)]

pub mod message;
pub mod types;

pub use message::{Body, Message};
pub use types::{Config, Entry, HardState, Index, Payload, Snapshot, SnapshotMeta, Term};
