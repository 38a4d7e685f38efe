//! Log matching, `docs/protocol.md` §5.2.
//!
//! Invariant: if two replicas' logs contain an entry with the same index and
//! term, the logs are identical in all entries up through that index, within
//! the range both still hold (a replica that compacted its log into a
//! snapshot no longer holds the entries below it). As part of the same rule,
//! every log holds contiguous indexes starting at 1 or above and its terms
//! never decrease from one entry to the next.

use crate::{GroupId, NodeId, Violation};

/// The invariant's name as it appears in every [`Violation`] this module reports.
pub const INVARIANT: &str = "log matching";
/// Where the spec states the invariant.
pub const SPEC: &str = "docs/protocol.md §5.2";

/// One replica's log as the checker sees it.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaLog<'a> {
    /// The node holding the log.
    pub node: NodeId,
    /// The entries it holds as (index, term, entry_hash), with contiguous
    /// ascending indexes; it may start above 1 after log compaction.
    pub entries: &'a [(u64, u64, u64)],
}

/// Checks every log's own shape, then every pair of logs, and returns the
/// first violation found (logs in the order given, pairs in index order).
///
/// Costs O(total entries) for the shapes and O(overlap) per pair: meant for
/// periodic checks, not for every event.
pub fn check_log_matching(group: GroupId, logs: &[ReplicaLog<'_>]) -> Result<(), Violation> {
    for log in logs {
        check_shape(group, log)?;
    }
    for (position, first) in logs.iter().enumerate() {
        for second in &logs[position + 1..] {
            check_pair(group, first, second)?;
        }
    }
    Ok(())
}

fn violation(message: String) -> Violation {
    Violation {
        invariant: INVARIANT,
        spec: SPEC,
        message,
    }
}

/// Indexes start at 1 or above, rise by exactly one, and terms never fall.
fn check_shape(group: GroupId, log: &ReplicaLog<'_>) -> Result<(), Violation> {
    let node = log.node;
    if let Some(&(0, _, _)) = log.entries.first() {
        return Err(violation(format!(
            "group {group} node {node}: log holds an entry at index 0, which is the \
             empty prefix and holds no entry"
        )));
    }
    for pair in log.entries.windows(2) {
        let (previous_index, previous_term, _) = pair[0];
        let (index, term, _) = pair[1];
        if previous_index.checked_add(1) != Some(index) {
            return Err(violation(format!(
                "group {group} node {node}: indexes not contiguous: index {index} follows \
                 index {previous_index}"
            )));
        }
        if term < previous_term {
            return Err(violation(format!(
                "group {group} node {node}: term decreased from {previous_term} at index \
                 {previous_index} to {term} at index {index}"
            )));
        }
    }
    Ok(())
}

/// The entry of a well-shaped, non-empty log at `index`, which the caller
/// guarantees lies within the log.
fn entry_at(log: &ReplicaLog<'_>, index: u64) -> (u64, u64, u64) {
    let first_index = log.entries[0].0;
    log.entries[(index - first_index) as usize]
}

fn check_pair(group: GroupId, a: &ReplicaLog<'_>, b: &ReplicaLog<'_>) -> Result<(), Violation> {
    let (Some(a_first), Some(a_last), Some(b_first), Some(b_last)) = (
        a.entries.first(),
        a.entries.last(),
        b.entries.first(),
        b.entries.last(),
    ) else {
        return Ok(());
    };
    let overlap_low = a_first.0.max(b_first.0);
    let overlap_high = a_last.0.min(b_last.0);
    if overlap_low > overlap_high {
        return Ok(());
    }
    // The highest index in the overlap where both hold the same term is where
    // the logs provably agree; above it they may legitimately differ
    // (uncommitted entries from different leaders).
    let Some(matching_index) = (overlap_low..=overlap_high)
        .rev()
        .find(|&index| entry_at(a, index).1 == entry_at(b, index).1)
    else {
        return Ok(());
    };
    let matching_term = entry_at(a, matching_index).1;
    for index in overlap_low..=matching_index {
        let (_, a_term, a_hash) = entry_at(a, index);
        let (_, b_term, b_hash) = entry_at(b, index);
        if a_term == b_term && a_hash == b_hash {
            continue;
        }
        let what = if a_term == b_term {
            "same index and term but different entries".to_string()
        } else {
            format!(
                "logs differ below a matching entry (both hold term {matching_term} at \
                 index {matching_index})"
            )
        };
        return Err(violation(format!(
            "group {group} index {index}: {what}: node {} holds term {a_term} hash \
             {a_hash:#018x}, node {} holds term {b_term} hash {b_hash:#018x}",
            a.node, b.node
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: GroupId = 9;

    fn log(node: NodeId, entries: &[(u64, u64, u64)]) -> ReplicaLog<'_> {
        ReplicaLog { node, entries }
    }

    #[test]
    fn logs_that_agree_up_to_their_last_common_term_pass() {
        // Node 1 led term 2 and appended 4 and 5; node 2 holds an
        // uncommitted entry 4 from a term-3 leader; node 3 compacted up to 2;
        // node 4 is empty; node 5 holds only entries above everyone else's.
        let leader = [(1, 1, 11), (2, 1, 12), (3, 2, 13), (4, 2, 14), (5, 2, 15)];
        let diverged_tail = [(1, 1, 11), (2, 1, 12), (3, 2, 13), (4, 3, 24)];
        let compacted = [(3, 2, 13), (4, 2, 14)];
        let disjoint = [(6, 2, 16)];
        let logs = [
            log(1, &leader),
            log(2, &diverged_tail),
            log(3, &compacted),
            log(4, &[]),
            log(5, &disjoint),
        ];
        assert_eq!(check_log_matching(GROUP, &logs), Ok(()));
        assert_eq!(check_log_matching(GROUP, &[]), Ok(()));
    }

    #[test]
    fn the_same_index_and_term_with_different_entries_is_caught() {
        let a = [(1, 1, 11), (2, 1, 12)];
        let b = [(1, 1, 11), (2, 1, 99)];
        let violation = check_log_matching(GROUP, &[log(1, &a), log(2, &b)]).unwrap_err();
        assert_eq!(violation.invariant, INVARIANT);
        assert_eq!(violation.spec, SPEC);
        assert!(
            violation
                .message
                .contains("same index and term but different entries"),
            "{violation}"
        );
        assert!(violation.message.contains("index 2"), "{violation}");
    }

    #[test]
    fn logs_that_differ_below_a_matching_entry_are_caught() {
        // Both hold (3, term 2), yet they disagree on the term at index 2.
        let a = [(1, 1, 11), (2, 1, 12), (3, 2, 13)];
        let b = [(1, 1, 11), (2, 2, 22), (3, 2, 13)];
        let violation = check_log_matching(GROUP, &[log(1, &a), log(2, &b)]).unwrap_err();
        assert!(
            violation.message.contains("differ below a matching entry"),
            "{violation}"
        );
        assert!(violation.message.contains("index 2"), "{violation}");
        // Only within the range both hold: a compacted log that no longer
        // holds index 2 does not conflict with either.
        let compacted = [(3, 2, 13)];
        assert_eq!(
            check_log_matching(GROUP, &[log(1, &a), log(3, &compacted)]),
            Ok(())
        );
        assert_eq!(
            check_log_matching(GROUP, &[log(2, &b), log(3, &compacted)]),
            Ok(())
        );
    }

    #[test]
    fn a_log_with_a_hole_is_caught() {
        let holed = [(1, 1, 11), (3, 1, 13)];
        let violation = check_log_matching(GROUP, &[log(1, &holed)]).unwrap_err();
        assert!(violation.message.contains("not contiguous"), "{violation}");
    }

    #[test]
    fn a_log_whose_term_decreases_is_caught() {
        let falling = [(1, 2, 11), (2, 1, 12)];
        let violation = check_log_matching(GROUP, &[log(1, &falling)]).unwrap_err();
        assert!(violation.message.contains("term decreased"), "{violation}");
    }

    #[test]
    fn a_log_with_an_entry_at_index_zero_is_caught() {
        let from_zero = [(0, 0, 10), (1, 1, 11)];
        let violation = check_log_matching(GROUP, &[log(1, &from_zero)]).unwrap_err();
        assert!(violation.message.contains("index 0"), "{violation}");
    }
}
