//! Durability of committed entries, `docs/protocol.md` §11.3.
//!
//! Invariant: a committed entry is never lost or changed: every replica that
//! has committed index `i` holds the same entry (same term, same contents) at
//! `i`, for as long as the run lasts, and every snapshot that covers `i` ends
//! with the same term the committed entry at its last index has.
//!
//! # How the canonical history is kept
//!
//! The first report of an index, from any replica, defines the canonical
//! entry there; every later report of that index must match it. On top of
//! that, the checker keeps a *hash chain* over the canonical history so that a
//! whole committed prefix can be compared in one number: `chain[0]` is
//! [`CHAIN_SEED`] and `chain[i] = chain_link(chain[p], i, term, entry_hash)`,
//! where `p` is the previous chained position (normally `i - 1`).
//!
//! # The rule for gaps
//!
//! Reports normally arrive in increasing index order, but a replica may
//! report index `i + 1` before anyone reported `i` when `i` was already inside
//! a snapshot. The rule is deliberately simple and never guesses:
//!
//! - The canonical history is chained up to its *end*, [`committed_len`]: the
//!   highest index such that every position up to it was either reported
//!   committed or covered by a snapshot observation.
//! - A report at `end + 1` extends the chain. A report further up is stored,
//!   compared with any later report of that same index, and chained as soon
//!   as the end reaches it.
//! - A snapshot observation above the end covers the gap: the end jumps to the
//!   snapshot's index, and that index is chained with the snapshot's term and
//!   [`SNAPSHOT_MARKER`] in place of the entry hash a snapshot does not carry
//!   (or with the real hash, when a replica already reported that entry).
//!   Positions inside the gap are not chained ([`chain_hash`] is `None`
//!   there), but reports of them that arrive later are still compared with
//!   each other and with any snapshot that ends there.
//!
//! So every observation is checked against every earlier observation of the
//! same index, whether or not it is chained; the chain only summarises.
//!
//! Each call costs O(log n) plus O(1) per stored report that the call lets the
//! chain absorb, and each stored report is absorbed at most once.
//!
//! [`committed_len`]: CommittedHistory::committed_len
//! [`chain_hash`]: CommittedHistory::chain_hash

use std::collections::BTreeMap;

use crate::{GroupId, NodeId, Violation};

/// The invariant's name as it appears in every [`Violation`] this module reports.
pub const INVARIANT: &str = "committed history";
/// Where the spec states the invariant.
pub const SPEC: &str = "docs/protocol.md §11.3";

/// The chain value of the empty prefix, index 0 ("RUNNEL" in ASCII).
pub const CHAIN_SEED: u64 = 0x0000_5255_4e4e_454c;
/// Stands in for the entry hash when a position is chained from a snapshot
/// observation alone, since a snapshot records only the last entry's index
/// and term.
pub const SNAPSHOT_MARKER: u64 = 0x534e_4150_5348_4f54;

/// One link of the canonical hash chain: the chain value at `index`, given the
/// chain value at the previous chained position. The index is mixed in so
/// that a chain that skipped a snapshot-covered gap never collides with one
/// that did not.
pub fn chain_link(previous_chain: u64, index: u64, term: u64, entry_hash: u64) -> u64 {
    [index, term, entry_hash]
        .into_iter()
        .fold(previous_chain, |chain, word| {
            mix64(chain.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ word)
        })
}

/// The SplitMix64 finaliser: a cheap bijection whose output bits each depend
/// on every input bit, so that a one-bit change in any entry changes the chain.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What one observation said about one index, and who said it first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Observed {
    term: u64,
    /// `None` when the observation was a snapshot, which carries no entry hash.
    entry_hash: Option<u64>,
    node: NodeId,
}

impl Observed {
    fn describe(&self, index: u64) -> String {
        match self.entry_hash {
            Some(hash) => format!(
                "node {} committed term {} hash {hash:#018x}",
                self.node, self.term
            ),
            None => format!(
                "node {} has a snapshot through index {index} ending in term {}",
                self.node, self.term
            ),
        }
    }
}

/// A chained position of the canonical history.
#[derive(Clone, Copy, Debug)]
struct Link {
    index: u64,
    observed: Observed,
    chain: u64,
}

/// The canonical committed history of one group.
#[derive(Clone, Debug, Default)]
struct GroupHistory {
    /// Chained positions in increasing index order; dense (`links[k].index ==
    /// k + 1`) until the first snapshot-covered gap.
    links: Vec<Link>,
    /// The end of the canonical prefix: every index in `1..=end` is either
    /// chained or inside a snapshot-covered gap.
    end: u64,
    /// Observations not (fully) captured by a link: reports above `end`
    /// waiting to be chained, reports and snapshot terms inside gaps, and
    /// entry hashes of positions chained from a snapshot alone.
    unchained: BTreeMap<u64, Observed>,
}

impl GroupHistory {
    fn link(&self, index: u64) -> Option<&Link> {
        self.links
            .binary_search_by_key(&index, |link| link.index)
            .ok()
            .map(|position| &self.links[position])
    }

    fn last_chain(&self) -> u64 {
        self.links.last().map_or(CHAIN_SEED, |link| link.chain)
    }

    fn push_link(&mut self, index: u64, observed: Observed) {
        let hash = observed.entry_hash.unwrap_or(SNAPSHOT_MARKER);
        let chain = chain_link(self.last_chain(), index, observed.term, hash);
        self.links.push(Link {
            index,
            observed,
            chain,
        });
        self.end = index;
    }

    /// Compares `new` with everything already known at `index` and, when it
    /// adds information, remembers it. The link (if any) is immutable, since
    /// later chain values depend on it; extra information goes to `unchained`.
    fn record(&mut self, group: GroupId, index: u64, new: Observed) -> Result<(), Violation> {
        let link = self.link(index).map(|link| link.observed);
        if let Some(known) = link {
            check_agreement(group, index, &known, &new)?;
            if known.entry_hash.is_some() {
                return Ok(());
            }
        }
        match self.unchained.get_mut(&index) {
            Some(known) => {
                check_agreement(group, index, known, &new)?;
                // Same term by now; keep the hash if only the new one has it.
                if known.entry_hash.is_none() && new.entry_hash.is_some() {
                    *known = new;
                }
            }
            None => {
                if link.is_none() || new.entry_hash.is_some() {
                    self.unchained.insert(index, new);
                }
            }
        }
        Ok(())
    }

    /// Chains stored reports that now sit just above the end.
    fn absorb_stored_reports(&mut self) {
        while let Some(next) = self.end.checked_add(1) {
            match self.unchained.get(&next) {
                Some(observed) if observed.entry_hash.is_some() => {
                    let observed = *observed;
                    self.unchained.remove(&next);
                    self.push_link(next, observed);
                }
                _ => break,
            }
        }
    }
}

/// Reports a violation when two observations of one index disagree.
fn check_agreement(
    group: GroupId,
    index: u64,
    known: &Observed,
    new: &Observed,
) -> Result<(), Violation> {
    let hashes_differ = matches!(
        (known.entry_hash, new.entry_hash),
        (Some(known_hash), Some(new_hash)) if known_hash != new_hash
    );
    if known.term == new.term && !hashes_differ {
        return Ok(());
    }
    let anomaly = if new.entry_hash.is_some() {
        "committed entry changed"
    } else {
        "snapshot term mismatch"
    };
    Err(Violation {
        invariant: INVARIANT,
        spec: SPEC,
        message: format!(
            "group {group} index {index}: {anomaly}: {}, but {}",
            new.describe(index),
            known.describe(index)
        ),
    })
}

/// The canonical committed history of every group, built from what replicas
/// report, checked against every later report.
#[derive(Clone, Debug, Default)]
pub struct CommittedHistory {
    groups: BTreeMap<GroupId, GroupHistory>,
}

impl CommittedHistory {
    /// An empty checker that has seen no committed entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// `node` holds entry (`index`, `term`, `entry_hash`) and its commit index
    /// is >= `index`.
    pub fn observe_committed(
        &mut self,
        node: NodeId,
        group: GroupId,
        index: u64,
        term: u64,
        entry_hash: u64,
    ) -> Result<(), Violation> {
        if index == 0 {
            return Err(Violation {
                invariant: INVARIANT,
                spec: SPEC,
                message: format!(
                    "group {group}: node {node} reports an entry committed at index 0, \
                     which is the empty prefix and holds no entry"
                ),
            });
        }
        let history = self.groups.entry(group).or_default();
        let observed = Observed {
            term,
            entry_hash: Some(entry_hash),
            node,
        };
        history.record(group, index, observed)?;
        history.absorb_stored_reports();
        Ok(())
    }

    /// `node` installed or took a snapshot covering the log up to `index`,
    /// whose last entry has `term`; if canonical knows index, its term must
    /// equal `term`. A snapshot above the canonical end covers the gap below
    /// it (see the module documentation).
    pub fn observe_snapshot(
        &mut self,
        node: NodeId,
        group: GroupId,
        index: u64,
        term: u64,
    ) -> Result<(), Violation> {
        if index == 0 {
            // The empty prefix: term 0 is before any election, so that is the
            // only term a snapshot of nothing can end in.
            return match term {
                0 => Ok(()),
                _ => Err(Violation {
                    invariant: INVARIANT,
                    spec: SPEC,
                    message: format!(
                        "group {group} index 0: snapshot term mismatch: node {node} has a \
                         snapshot of the empty prefix ending in term {term}, but index 0 \
                         has term 0"
                    ),
                }),
            };
        }
        let history = self.groups.entry(group).or_default();
        let observed = Observed {
            term,
            entry_hash: None,
            node,
        };
        history.record(group, index, observed)?;
        if index > history.end {
            // A snapshot only ever covers committed entries, so everything up
            // to its index is committed history, even the positions nobody
            // reported. Chain its last index, with the real entry hash if a
            // report of that entry was already stored.
            let stored = history.unchained.remove(&index).unwrap_or(observed);
            history.push_link(index, stored);
            history.absorb_stored_reports();
        }
        Ok(())
    }

    /// The end of the canonical committed prefix of `group`: the highest index
    /// such that every index up to it was reported committed or covered by a
    /// snapshot. Reports stored above a gap do not count until it closes.
    pub fn committed_len(&self, group: GroupId) -> u64 {
        self.groups.get(&group).map_or(0, |history| history.end)
    }

    /// The chain value at `index` of `group`'s canonical history: `Some` for
    /// index 0 ([`CHAIN_SEED`]) and for every chained position, `None` above
    /// the end and inside snapshot-covered gaps.
    pub fn chain_hash(&self, group: GroupId, index: u64) -> Option<u64> {
        if index == 0 {
            return Some(CHAIN_SEED);
        }
        self.groups.get(&group)?.link(index).map(|link| link.chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: GroupId = 3;

    /// The canonical entries of the hand-made good history: (index, term, hash).
    const ENTRIES: [(u64, u64, u64); 5] =
        [(1, 1, 11), (2, 1, 12), (3, 2, 13), (4, 2, 14), (5, 3, 15)];

    fn expected_chain(upto: usize) -> u64 {
        ENTRIES[..upto]
            .iter()
            .fold(CHAIN_SEED, |chain, &(index, term, hash)| {
                chain_link(chain, index, term, hash)
            })
    }

    #[test]
    fn replicas_agreeing_on_every_committed_entry_pass_and_chain() {
        let mut checker = CommittedHistory::new();
        // The leader commits everything first, then two followers catch up.
        for node in [1, 2, 3] {
            for &(index, term, hash) in &ENTRIES {
                assert_eq!(
                    checker.observe_committed(node, GROUP, index, term, hash),
                    Ok(())
                );
            }
        }
        // A snapshot through index 4 agrees with the committed term there.
        assert_eq!(checker.observe_snapshot(2, GROUP, 4, 2), Ok(()));
        assert_eq!(checker.observe_snapshot(2, GROUP, 0, 0), Ok(()));
        assert_eq!(checker.committed_len(GROUP), 5);
        assert_eq!(checker.committed_len(GROUP + 1), 0);
        assert_eq!(checker.chain_hash(GROUP, 0), Some(CHAIN_SEED));
        for upto in 1..=5 {
            assert_eq!(
                checker.chain_hash(GROUP, upto as u64),
                Some(expected_chain(upto))
            );
        }
        assert_eq!(checker.chain_hash(GROUP, 6), None);
        // Distinct prefixes get distinct chain values.
        assert_ne!(checker.chain_hash(GROUP, 4), checker.chain_hash(GROUP, 5));
    }

    #[test]
    fn a_changed_entry_hash_is_caught() {
        let mut checker = CommittedHistory::new();
        for &(index, term, hash) in &ENTRIES {
            assert_eq!(
                checker.observe_committed(1, GROUP, index, term, hash),
                Ok(())
            );
        }
        let violation = checker.observe_committed(2, GROUP, 3, 2, 99).unwrap_err();
        assert_eq!(violation.invariant, INVARIANT);
        assert_eq!(violation.spec, SPEC);
        assert!(
            violation.message.contains("committed entry changed"),
            "{violation}"
        );
        assert!(violation.message.contains("index 3"), "{violation}");
        // The canonical entry stays the reference.
        assert_eq!(checker.observe_committed(2, GROUP, 3, 2, 13), Ok(()));
    }

    #[test]
    fn a_changed_entry_term_is_caught() {
        let mut checker = CommittedHistory::new();
        assert_eq!(checker.observe_committed(1, GROUP, 1, 1, 11), Ok(()));
        let violation = checker.observe_committed(2, GROUP, 1, 2, 11).unwrap_err();
        assert!(
            violation.message.contains("committed entry changed"),
            "{violation}"
        );
    }

    #[test]
    fn a_snapshot_ending_in_the_wrong_term_is_caught() {
        let mut checker = CommittedHistory::new();
        for &(index, term, hash) in &ENTRIES {
            assert_eq!(
                checker.observe_committed(1, GROUP, index, term, hash),
                Ok(())
            );
        }
        let violation = checker.observe_snapshot(2, GROUP, 4, 3).unwrap_err();
        assert!(
            violation.message.contains("snapshot term mismatch"),
            "{violation}"
        );
        let violation = checker.observe_snapshot(2, GROUP, 0, 1).unwrap_err();
        assert!(
            violation.message.contains("snapshot term mismatch"),
            "{violation}"
        );
    }

    #[test]
    fn an_entry_at_index_zero_is_caught() {
        let mut checker = CommittedHistory::new();
        let violation = checker.observe_committed(1, GROUP, 0, 0, 1).unwrap_err();
        assert!(violation.message.contains("index 0"), "{violation}");
    }

    #[test]
    fn reports_above_a_gap_wait_are_checked_and_then_chain() {
        let mut checker = CommittedHistory::new();
        assert_eq!(checker.observe_committed(1, GROUP, 1, 1, 11), Ok(()));
        assert_eq!(checker.observe_committed(1, GROUP, 2, 1, 12), Ok(()));
        // Index 5 arrives before 3 and 4: stored, not chained.
        assert_eq!(checker.observe_committed(2, GROUP, 5, 3, 15), Ok(()));
        assert_eq!(checker.committed_len(GROUP), 2);
        assert_eq!(checker.chain_hash(GROUP, 5), None);
        // A stored report is still the reference for that index.
        let violation = checker.observe_committed(3, GROUP, 5, 3, 16).unwrap_err();
        assert!(
            violation.message.contains("committed entry changed"),
            "{violation}"
        );
        // Filling the gap chains the stored report too.
        assert_eq!(checker.observe_committed(1, GROUP, 3, 2, 13), Ok(()));
        assert_eq!(checker.observe_committed(1, GROUP, 4, 2, 14), Ok(()));
        assert_eq!(checker.committed_len(GROUP), 5);
        assert_eq!(checker.chain_hash(GROUP, 5), Some(expected_chain(5)));
    }

    #[test]
    fn a_snapshot_covers_a_gap_and_late_reports_inside_it_are_still_checked() {
        let mut checker = CommittedHistory::new();
        assert_eq!(checker.observe_committed(1, GROUP, 1, 1, 11), Ok(()));
        // Node 2 joins from a snapshot through index 10 and commits 11.
        assert_eq!(checker.observe_snapshot(2, GROUP, 10, 2), Ok(()));
        assert_eq!(checker.committed_len(GROUP), 10);
        assert_eq!(checker.observe_committed(2, GROUP, 11, 2, 111), Ok(()));
        assert_eq!(checker.committed_len(GROUP), 11);
        let at_ten = chain_link(expected_chain(1), 10, 2, SNAPSHOT_MARKER);
        assert_eq!(checker.chain_hash(GROUP, 10), Some(at_ten));
        assert_eq!(
            checker.chain_hash(GROUP, 11),
            Some(chain_link(at_ten, 11, 2, 111))
        );
        assert_eq!(checker.chain_hash(GROUP, 5), None);

        // A late report inside the gap becomes the reference there.
        assert_eq!(checker.observe_committed(3, GROUP, 5, 1, 105), Ok(()));
        let violation = checker.observe_committed(1, GROUP, 5, 1, 999).unwrap_err();
        assert!(
            violation.message.contains("committed entry changed"),
            "{violation}"
        );

        // The snapshot's last index: the term must match, and the first
        // reported hash becomes the reference without changing the chain.
        let violation = checker.observe_committed(3, GROUP, 10, 3, 110).unwrap_err();
        assert!(
            violation.message.contains("committed entry changed"),
            "{violation}"
        );
        assert_eq!(checker.observe_committed(3, GROUP, 10, 2, 110), Ok(()));
        let violation = checker.observe_committed(1, GROUP, 10, 2, 999).unwrap_err();
        assert!(
            violation.message.contains("committed entry changed"),
            "{violation}"
        );
        assert_eq!(checker.chain_hash(GROUP, 10), Some(at_ten));

        // A second snapshot ending inside the gap pins the term there.
        assert_eq!(checker.observe_snapshot(1, GROUP, 7, 2), Ok(()));
        let violation = checker.observe_committed(3, GROUP, 7, 1, 107).unwrap_err();
        assert!(
            violation.message.contains("committed entry changed"),
            "{violation}"
        );
        let violation = checker.observe_snapshot(3, GROUP, 5, 2).unwrap_err();
        assert!(
            violation.message.contains("snapshot term mismatch"),
            "{violation}"
        );
    }

    #[test]
    fn a_snapshot_over_a_stored_report_chains_the_real_entry() {
        let mut checker = CommittedHistory::new();
        assert_eq!(checker.observe_committed(1, GROUP, 3, 2, 13), Ok(()));
        let violation = checker.observe_snapshot(2, GROUP, 3, 1).unwrap_err();
        assert!(
            violation.message.contains("snapshot term mismatch"),
            "{violation}"
        );
        assert_eq!(checker.committed_len(GROUP), 0);
        assert_eq!(checker.observe_snapshot(2, GROUP, 3, 2), Ok(()));
        assert_eq!(checker.committed_len(GROUP), 3);
        assert_eq!(
            checker.chain_hash(GROUP, 3),
            Some(chain_link(CHAIN_SEED, 3, 2, 13))
        );
    }
}
