//! runnel-sim: seeded, single-threaded, deterministic simulation of whole
//! Runnel clusters (the real node core) under network, node, clock and disk
//! faults. Everything derives from one `u64` seed; see DESIGN.md, "The
//! simulator".

#![forbid(unsafe_code)]

pub mod clock;
pub mod disk;
pub mod kafka_workload;
pub mod network;
pub mod queue;
pub mod runner;
pub mod swarm;
pub mod trace;
pub mod workload;

pub use runner::{run_seed, Outcome, SimOptions, Simulation};
pub use swarm::{FaultClass, FaultCounts, FaultPlan};
