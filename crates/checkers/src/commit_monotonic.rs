//! Commit index monotonicity, `docs/protocol.md` §5.4.
//!
//! Invariant: within one incarnation of a node (the span between a start and
//! a crash), a replica's commit index for a group never decreases.
//!
//! A crash may legitimately forget a commit index that was only in memory, so
//! a new incarnation starts from whatever the replica recovers; only going
//! backwards within one incarnation is a bug.

use std::collections::BTreeMap;

use crate::{GroupId, NodeId, Violation};

/// The invariant's name as it appears in every [`Violation`] this module reports.
pub const INVARIANT: &str = "commit monotonic";
/// Where the spec states the invariant.
pub const SPEC: &str = "docs/protocol.md §5.4";

/// What was last seen of one replica (one node's copy of one group).
#[derive(Clone, Copy, Debug)]
struct LastSeen {
    incarnation: u64,
    commit_index: u64,
}

/// Remembers the highest commit index each replica reported in its current
/// incarnation. Memory is one entry per (node, group); each call is O(log n).
#[derive(Clone, Debug, Default)]
pub struct CommitMonotonic {
    last_seen: BTreeMap<(NodeId, GroupId), LastSeen>,
}

impl CommitMonotonic {
    /// An empty checker that has seen no replicas.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `node`, in its `incarnation`, reports `commit_index` for
    /// `group`.
    ///
    /// A higher incarnation than seen before starts afresh. A lower one means
    /// the caller mixed up incarnations, which would make the check
    /// meaningless, so it is reported too ("stale incarnation") and ignored.
    pub fn observe_commit(
        &mut self,
        node: NodeId,
        incarnation: u64,
        group: GroupId,
        commit_index: u64,
    ) -> Result<(), Violation> {
        let current = LastSeen {
            incarnation,
            commit_index,
        };
        let Some(last) = self.last_seen.get_mut(&(node, group)) else {
            self.last_seen.insert((node, group), current);
            return Ok(());
        };
        if incarnation > last.incarnation {
            *last = current;
            return Ok(());
        }
        if incarnation < last.incarnation {
            return Err(Violation {
                invariant: INVARIANT,
                spec: SPEC,
                message: format!(
                    "node {node} group {group}: stale incarnation {incarnation} reported \
                     after incarnation {}",
                    last.incarnation
                ),
            });
        }
        if commit_index < last.commit_index {
            return Err(Violation {
                invariant: INVARIANT,
                spec: SPEC,
                message: format!(
                    "node {node} incarnation {incarnation} group {group}: commit index \
                     decreased from {} to {commit_index}",
                    last.commit_index
                ),
            });
        }
        last.commit_index = commit_index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rising_or_steady_commit_and_a_reset_after_restart_pass() {
        let mut checker = CommitMonotonic::new();
        assert_eq!(checker.observe_commit(1, 0, 5, 0), Ok(()));
        assert_eq!(checker.observe_commit(1, 0, 5, 3), Ok(()));
        assert_eq!(checker.observe_commit(1, 0, 5, 3), Ok(()));
        assert_eq!(checker.observe_commit(1, 0, 5, 9), Ok(()));
        // After a crash the new incarnation may recover a lower commit index.
        assert_eq!(checker.observe_commit(1, 1, 5, 2), Ok(()));
        assert_eq!(checker.observe_commit(1, 1, 5, 4), Ok(()));
        // Other replicas are tracked independently.
        assert_eq!(checker.observe_commit(2, 0, 5, 1), Ok(()));
        assert_eq!(checker.observe_commit(1, 1, 6, 0), Ok(()));
    }

    #[test]
    fn a_decrease_within_one_incarnation_is_caught() {
        let mut checker = CommitMonotonic::new();
        assert_eq!(checker.observe_commit(1, 4, 5, 10), Ok(()));
        let violation = checker.observe_commit(1, 4, 5, 9).unwrap_err();
        assert_eq!(violation.invariant, INVARIANT);
        assert_eq!(violation.spec, SPEC);
        assert!(
            violation.message.contains("decreased from 10 to 9"),
            "{violation}"
        );
        // The bad report does not lower the reference point.
        assert!(checker.observe_commit(1, 4, 5, 9).is_err());
    }

    #[test]
    fn an_older_incarnation_after_a_newer_one_is_caught() {
        let mut checker = CommitMonotonic::new();
        assert_eq!(checker.observe_commit(1, 2, 5, 10), Ok(()));
        let violation = checker.observe_commit(1, 1, 5, 11).unwrap_err();
        assert!(
            violation.message.contains("stale incarnation"),
            "{violation}"
        );
    }
}
