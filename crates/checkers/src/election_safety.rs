//! Election safety, `docs/protocol.md` §11.1.
//!
//! Invariant: for every group and every term, at most one node is ever leader;
//! once a node has been seen leading a group in a term, no other node may lead
//! that group in that same term.

use std::collections::BTreeMap;

use crate::{GroupId, NodeId, Violation};

/// The invariant's name as it appears in every [`Violation`] this module reports.
pub const INVARIANT: &str = "election safety";
/// Where the spec states the invariant.
pub const SPEC: &str = "docs/protocol.md §11.1";

/// Remembers the first leader seen for each (group, term) and flags any other.
///
/// Memory grows with the number of distinct (group, term) pairs that had a
/// leader, which is bounded by the number of elections in a run; each
/// observation costs O(log n).
#[derive(Clone, Debug, Default)]
pub struct ElectionSafety {
    leader_by_group_and_term: BTreeMap<(GroupId, u64), NodeId>,
}

impl ElectionSafety {
    /// An empty checker that has seen no leaders.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `node` acts as leader of `group` in `term`.
    ///
    /// Seeing the same node again for the same term is expected (the simulator
    /// reports the leader after every event); a different node for a
    /// (group, term) already seen is a violation. The first leader stays the
    /// reference, so a third claimant is reported against the first as well.
    pub fn observe_leader(
        &mut self,
        group: GroupId,
        term: u64,
        node: NodeId,
    ) -> Result<(), Violation> {
        let first_leader = *self
            .leader_by_group_and_term
            .entry((group, term))
            .or_insert(node);
        if first_leader == node {
            Ok(())
        } else {
            Err(Violation {
                invariant: INVARIANT,
                spec: SPEC,
                message: format!(
                    "group {group} term {term}: node {node} acts as leader, \
                     but node {first_leader} was already leader in that term (two leaders)"
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_per_term_repeated_observations_and_other_groups_pass() {
        let mut checker = ElectionSafety::new();
        // Node 1 leads term 1, is reported again, then node 2 wins term 2.
        assert_eq!(checker.observe_leader(7, 1, 1), Ok(()));
        assert_eq!(checker.observe_leader(7, 1, 1), Ok(()));
        assert_eq!(checker.observe_leader(7, 2, 2), Ok(()));
        // The same term number in another group is an unrelated election.
        assert_eq!(checker.observe_leader(8, 1, 3), Ok(()));
        assert_eq!(checker.observe_leader(8, 2, 2), Ok(()));
    }

    #[test]
    fn two_leaders_in_one_term_of_one_group_are_caught() {
        let mut checker = ElectionSafety::new();
        assert_eq!(checker.observe_leader(7, 3, 1), Ok(()));
        let violation = checker.observe_leader(7, 3, 2).unwrap_err();
        assert_eq!(violation.invariant, INVARIANT);
        assert_eq!(violation.spec, SPEC);
        assert!(violation.message.contains("two leaders"), "{violation}");
        assert!(violation.message.contains("node 2"), "{violation}");
        assert!(violation.message.contains("node 1"), "{violation}");
        // The original leader is still the reference for later claimants.
        assert_eq!(checker.observe_leader(7, 3, 1), Ok(()));
        assert!(checker.observe_leader(7, 3, 3).is_err());
    }
}
