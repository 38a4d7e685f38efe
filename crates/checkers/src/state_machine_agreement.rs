//! State machine agreement, `docs/protocol.md` §11.4.
//!
//! Invariant: replicas apply the same entries in the same order, so every
//! replica's applied records are a prefix of the longest replica's applied
//! records.

use crate::{GroupId, NodeId, Violation};

/// The invariant's name as it appears in every [`Violation`] this module reports.
pub const INVARIANT: &str = "state machine agreement";
/// Where the spec states the invariant.
pub const SPEC: &str = "docs/protocol.md §11.4";

/// Checks that every replica's applied records (`(node, records)`, records in
/// apply order) are a prefix of the longest replica's, reporting the first
/// replica, in the order given, that is not. Costs O(total records).
pub fn check_state_machine_agreement(
    group: GroupId,
    replicas: &[(NodeId, &[u64])],
) -> Result<(), Violation> {
    // Ties go to the earliest replica, so that the report is the same on
    // every run.
    let Some(&(longest_node, longest)) = replicas.iter().reduce(|best, next| {
        if next.1.len() > best.1.len() {
            next
        } else {
            best
        }
    }) else {
        return Ok(());
    };
    for &(node, applied) in replicas {
        let mismatch = applied
            .iter()
            .zip(longest)
            .position(|(mine, theirs)| mine != theirs);
        if let Some(position) = mismatch {
            return Err(Violation {
                invariant: INVARIANT,
                spec: SPEC,
                message: format!(
                    "group {group}: applied records diverge at position {position}: node \
                     {node} applied {} but node {longest_node} applied {}",
                    applied[position], longest[position]
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_that_applied_prefixes_of_one_sequence_pass() {
        let full: &[u64] = &[10, 20, 30, 40];
        let behind: &[u64] = &[10, 20];
        let fresh: &[u64] = &[];
        assert_eq!(
            check_state_machine_agreement(1, &[(1, behind), (2, full), (3, fresh), (4, full)]),
            Ok(())
        );
        assert_eq!(check_state_machine_agreement(1, &[]), Ok(()));
    }

    #[test]
    fn a_replica_that_applied_a_different_record_is_caught() {
        let full: &[u64] = &[10, 20, 30, 40];
        let reordered: &[u64] = &[10, 30];
        let violation = check_state_machine_agreement(1, &[(1, full), (2, reordered)]).unwrap_err();
        assert_eq!(violation.invariant, INVARIANT);
        assert_eq!(violation.spec, SPEC);
        assert!(
            violation.message.contains("diverge at position 1"),
            "{violation}"
        );
        assert!(
            violation.message.contains("node 2 applied 30"),
            "{violation}"
        );
    }

    #[test]
    fn two_equally_long_replicas_that_differ_are_caught() {
        let one: &[u64] = &[10, 20];
        let other: &[u64] = &[10, 21];
        let violation = check_state_machine_agreement(1, &[(1, one), (2, other)]).unwrap_err();
        assert!(
            violation.message.contains("diverge at position 1"),
            "{violation}"
        );
    }
}
