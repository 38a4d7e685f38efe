//! Read-only invariant checkers shared by the simulator, the turmoil tier and
//! jepsen.
//!
//! Each module checks exactly one invariant and cites the section of
//! `docs/protocol.md` that states it. The checkers only read what they are
//! shown: they draw no randomness, keep their state in ordered maps so that
//! every report comes out in the same order on every run, and never panic on
//! bad input, because a checker that crashes hides the very bug it was meant
//! to name. A broken invariant comes back as a [`Violation`].
//!
//! The incremental checkers ([`ElectionSafety`], [`CommitMonotonic`],
//! [`CommittedHistory`], [`AppendHistory`]) are called after every simulated
//! event, so each call costs O(log n) or O(new data). The whole-state checkers
//! ([`check_log_matching`], [`check_state_machine_agreement`],
//! [`check_acknowledged_appends`]) scan what they are given and are meant to be
//! called periodically or at the end of a run.
//!
//! Client-observed histories ([`history`]: invocations and completions, as
//! jepsen records them) are judged by [`kafka_queue`] (the anomalies of
//! Jepsen's Kafka test), [`linearizable`] (a WGL search over any sequential
//! model, with a register model; [`committed_offsets`] applies it to each
//! consumer group's committed offset of each key), and measured by
//! [`availability`] and [`latency`].

pub mod acknowledged_appends;
pub mod availability;
pub mod commit_monotonic;
pub mod committed_history;
pub mod committed_offsets;
pub mod election_safety;
pub mod history;
pub mod kafka_queue;
pub mod latency;
pub mod linearizable;
pub mod log_matching;
pub mod state_machine_agreement;

use std::fmt;

pub use acknowledged_appends::{check_acknowledged_appends, AppendHistory};
pub use commit_monotonic::CommitMonotonic;
pub use committed_history::CommittedHistory;
pub use election_safety::ElectionSafety;
pub use log_matching::{check_log_matching, ReplicaLog};
pub use runnel_io::{GroupId, NodeId};
pub use state_machine_agreement::check_state_machine_agreement;

/// A broken invariant: which one, where the spec states it, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's short name, the same for every violation of it.
    pub invariant: &'static str,
    /// The section of `docs/protocol.md` that states the invariant.
    pub spec: &'static str,
    /// What was observed, with enough detail (group, node, index, values) to
    /// find the moment in a replayed run.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.invariant, self.spec, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_invariant_the_spec_and_the_observation() {
        let violation = Violation {
            invariant: "election safety",
            spec: "docs/protocol.md §11.1",
            message: "two leaders".to_string(),
        };
        assert_eq!(
            violation.to_string(),
            "election safety (docs/protocol.md §11.1): two leaders"
        );
    }
}
