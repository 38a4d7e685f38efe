//! The Runnel node core: a single-threaded, deterministic state machine.
//!
//! It hosts one consensus replica per group, stores each group's log through
//! `runnel-storage`, applies committed entries to the group's state machine
//! (a record log, a Kafka partition, or the cluster metadata), and answers
//! clients. It never does IO except through `Env`, never reads global time or
//! randomness, and iterates only ordered maps.

#![forbid(unsafe_code)]

pub mod api;
pub mod machine;
pub mod metadata;
mod node;
pub mod offsets;
pub mod partition;
pub mod state_machine;
pub mod wire;

pub use api::*;
pub use machine::{Machine, MachineLayout};
pub use node::{
    entry_hash, Node, NodeConfig, StartError, GROUPS_MAX, PENDING_REQUESTS_MAX, READ_RECORDS_MAX,
    SNAPSHOT_INTERVAL_BYTES,
};
pub use node::{segment_ms_valid, SEGMENT_MS_DEFAULT, SEGMENT_MS_MAX, SEGMENT_MS_MIN};
pub use node::{
    CatchUpStats, RetainedNow, CLIENT_LOG_READS_IN_FLIGHT_MAX, LOG_READS_IN_FLIGHT_MAX,
    RETAINED_LOG_BYTES_MAX,
};
pub use runnel_storage::LOG_READ_BYTES_MAX;
