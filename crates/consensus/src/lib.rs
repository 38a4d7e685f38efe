//! Runnel's replicated-log protocol, specified in docs/protocol.md.
//!
//! A `Replica` is one member of one group. It does no IO, reads no clock and
//! draws randomness only from the seeded `Rng` it is given: the same inputs
//! in the same order produce the same outputs, byte for byte.

#![forbid(unsafe_code)]

pub mod log;
pub mod message;
pub mod replica;
pub mod types;

pub use message::{Body, Message};
pub use replica::{
    BackfillRead, LogRead, Options, ProposeError, Ready, Replica, Role, READS_PENDING_MAX,
    TRANSFER_LAPSE_HOLD_TIMEOUTS,
};
pub use types::{
    Config, Entry, HardState, Index, Payload, Snapshot, SnapshotMeta, Term, REPAIR_INDEX_UNKNOWN,
};
