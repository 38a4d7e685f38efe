//! Acknowledged appends, `docs/protocol.md` §6.
//!
//! Invariant: every acknowledged append is in the committed log exactly once,
//! at the position it was acknowledged with; nothing appears in the committed
//! log that no client appended; an append that definitely failed is absent;
//! and a read returns exactly the committed records at the positions it read.
//!
//! An append that was invoked but neither acknowledged nor failed (a timeout,
//! a lost connection) is indeterminate: it may or may not be in the log, once.
//!
//! The history is recorded incrementally while the run goes (each call costs
//! O(log n) per value it carries) and checked once against the final committed
//! log by [`check_acknowledged_appends`]. Anomalies are named as Jepsen names
//! them: "lost", "wrong position", "duplicate", "phantom", "failed but
//! present", "read of uncommitted or wrong value", plus "conflicting acks"
//! when two acknowledgements of one value (client retries) disagree.

use std::collections::{BTreeMap, BTreeSet};

use crate::{GroupId, Violation};

/// The invariant's name as it appears in every [`Violation`] this module reports.
pub const INVARIANT: &str = "acknowledged appends";
/// Where the spec states the invariant.
pub const SPEC: &str = "docs/protocol.md §6";
/// At most this many violations are reported per group, followed by one that
/// counts the rest, so that a badly broken run stays readable.
pub const MAX_VIOLATIONS_PER_GROUP: usize = 20;

/// What clients did and saw in one group.
#[derive(Clone, Debug, Default)]
struct GroupAppends {
    /// Every value a client tried to append (invoked, acknowledged or failed).
    attempted: BTreeSet<u64>,
    /// Every position each acknowledged value was acknowledged with; more
    /// than one position means the acknowledgements disagree.
    acknowledged_positions: BTreeMap<u64, BTreeSet<u64>>,
    /// Values whose append definitely was not applied.
    failed: BTreeSet<u64>,
    /// Every distinct value a read returned at each position. Keeping
    /// distinct (position, value) pairs rather than every read bounds memory
    /// by what was read, not by how often.
    read_values: BTreeMap<u64, BTreeSet<u64>>,
}

/// The client-side history of appends and reads, per group.
#[derive(Clone, Debug, Default)]
pub struct AppendHistory {
    groups: BTreeMap<GroupId, GroupAppends>,
    acknowledged_values: u64,
}

impl AppendHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    fn group_mut(&mut self, group: GroupId) -> &mut GroupAppends {
        self.groups.entry(group).or_default()
    }

    /// A client asked to append `value_id` to `group`.
    pub fn invoke_append(&mut self, group: GroupId, value_id: u64) {
        self.group_mut(group).attempted.insert(value_id);
    }

    /// The append of `value_id` was acknowledged at `position`. A retried
    /// append may be acknowledged again; every acknowledgement must name the
    /// same position.
    pub fn ok_append(&mut self, group: GroupId, value_id: u64, position: u64) {
        let appends = self.group_mut(group);
        appends.attempted.insert(value_id);
        let positions = appends.acknowledged_positions.entry(value_id).or_default();
        let first_acknowledgement = positions.is_empty();
        positions.insert(position);
        if first_acknowledgement {
            self.acknowledged_values += 1;
        }
    }

    /// The append of `value_id` definitely was not applied.
    pub fn fail_append(&mut self, group: GroupId, value_id: u64) {
        let appends = self.group_mut(group);
        appends.attempted.insert(value_id);
        appends.failed.insert(value_id);
    }

    /// A read of `group` starting at `from_position` returned `value_ids`, the
    /// first at `from_position` and the rest at the positions that follow.
    pub fn ok_read(&mut self, group: GroupId, from_position: u64, value_ids: &[u64]) {
        let appends = self.group_mut(group);
        for (position, &value_id) in (from_position..).zip(value_ids) {
            appends
                .read_values
                .entry(position)
                .or_default()
                .insert(value_id);
        }
    }

    /// The number of distinct values acknowledged, over all groups (a value
    /// acknowledged again on a retry counts once).
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged_values
    }

    /// Every group the history mentions, ascending.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }
}

/// Collects violations for one group up to [`MAX_VIOLATIONS_PER_GROUP`] and
/// counts the rest.
struct Report {
    group: GroupId,
    violations: Vec<Violation>,
    not_shown: u64,
}

impl Report {
    fn add(&mut self, anomaly: &str, detail: String) {
        if self.violations.len() < MAX_VIOLATIONS_PER_GROUP {
            self.violations.push(Violation {
                invariant: INVARIANT,
                spec: SPEC,
                message: format!("group {}: {anomaly}: {detail}", self.group),
            });
        } else {
            self.not_shown += 1;
        }
    }

    fn finish(mut self) -> Vec<Violation> {
        if self.not_shown > 0 {
            self.violations.push(Violation {
                invariant: INVARIANT,
                spec: SPEC,
                message: format!(
                    "group {}: {} more violations not shown",
                    self.group, self.not_shown
                ),
            });
        }
        self.violations
    }
}

fn value_at(committed_log: &[u64], position: u64) -> Option<u64> {
    usize::try_from(position)
        .ok()
        .and_then(|position| committed_log.get(position))
        .copied()
}

/// Checks `history` for `group` against the group's final committed log
/// (value ids by position, position 0 first) and returns every anomaly found,
/// capped at [`MAX_VIOLATIONS_PER_GROUP`] plus one counting the rest. An
/// empty result means the group passed.
pub fn check_acknowledged_appends(
    history: &AppendHistory,
    group: GroupId,
    committed_log: &[u64],
) -> Vec<Violation> {
    let empty = GroupAppends::default();
    let appends = history.groups.get(&group).unwrap_or(&empty);
    let mut report = Report {
        group,
        violations: Vec::new(),
        not_shown: 0,
    };

    // The log itself, in position order: each value once, appended by a
    // client, and not one whose append failed.
    let mut first_position: BTreeMap<u64, u64> = BTreeMap::new();
    for (position, &value) in (0u64..).zip(committed_log) {
        if let Some(&earlier) = first_position.get(&value) {
            report.add(
                "duplicate",
                format!("value {value} is committed at position {earlier} and again at {position}"),
            );
            continue;
        }
        first_position.insert(value, position);
        if !appends.attempted.contains(&value) {
            report.add(
                "phantom",
                format!(
                    "value {value} is committed at position {position} but no client appended it"
                ),
            );
        }
        if appends.failed.contains(&value) {
            report.add(
                "failed but present",
                format!("value {value} is committed at position {position} but its append definitely failed"),
            );
        }
    }

    // Every acknowledged value, in value order: present, where it was
    // acknowledged.
    for (&value, positions) in &appends.acknowledged_positions {
        if positions.len() > 1 {
            report.add(
                "conflicting acks",
                format!("value {value} was acknowledged at different positions {positions:?}"),
            );
        }
        let Some(&committed_at) = first_position.get(&value) else {
            report.add(
                "lost",
                format!(
                    "value {value} was acknowledged at position {} but is not in the committed log",
                    positions.iter().next().copied().unwrap_or_default()
                ),
            );
            continue;
        };
        for &acknowledged_at in positions {
            if value_at(committed_log, acknowledged_at) != Some(value) {
                report.add(
                    "wrong position",
                    format!(
                        "value {value} was acknowledged at position {acknowledged_at} but is \
                         committed at position {committed_at}"
                    ),
                );
            }
        }
    }

    // Every read, in position order: exactly what the log holds there.
    for (&position, values) in &appends.read_values {
        let committed = value_at(committed_log, position);
        for &value in values {
            if committed == Some(value) {
                continue;
            }
            let holds = match committed {
                Some(committed) => format!("the committed log holds {committed} there"),
                None => format!("the committed log ends at {}", committed_log.len()),
            };
            report.add(
                "read of uncommitted or wrong value",
                format!("a read returned value {value} at position {position}, but {holds}"),
            );
        }
    }

    report.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: GroupId = 4;

    /// A history that satisfies the invariant: values 1..=3 acknowledged (3
    /// twice, after a retry), 4 failed and absent, 5 indeterminate and
    /// present, 6 indeterminate and absent, reads of committed records only.
    fn good_history() -> (AppendHistory, Vec<u64>) {
        let mut history = AppendHistory::new();
        for value in 1..=6 {
            history.invoke_append(GROUP, value);
        }
        history.ok_append(GROUP, 1, 0);
        history.ok_append(GROUP, 2, 1);
        history.ok_append(GROUP, 3, 2);
        history.ok_append(GROUP, 3, 2);
        history.fail_append(GROUP, 4);
        history.ok_read(GROUP, 0, &[1, 2]);
        history.ok_read(GROUP, 1, &[2, 3, 5]);
        history.ok_read(GROUP, 4, &[]);
        (history, vec![1, 2, 3, 5])
    }

    fn messages(violations: &[Violation]) -> Vec<String> {
        violations.iter().map(ToString::to_string).collect()
    }

    /// Asserts that the check finds exactly one violation, naming `anomaly`.
    fn assert_single_anomaly(history: &AppendHistory, log: &[u64], anomaly: &str) {
        let violations = check_acknowledged_appends(history, GROUP, log);
        assert_eq!(violations.len(), 1, "{:#?}", messages(&violations));
        assert_eq!(violations[0].invariant, INVARIANT);
        assert_eq!(violations[0].spec, SPEC);
        assert!(
            violations[0].message.contains(&format!(": {anomaly}: ")),
            "expected {anomaly:?}, got {}",
            violations[0]
        );
    }

    #[test]
    fn a_good_history_passes() {
        let (history, log) = good_history();
        assert_eq!(
            messages(&check_acknowledged_appends(&history, GROUP, &log)),
            Vec::<String>::new()
        );
        assert_eq!(history.acknowledged(), 3);
        assert_eq!(history.groups(), vec![GROUP]);
        // A group nobody touched, with an empty log, passes too.
        assert!(check_acknowledged_appends(&history, GROUP + 1, &[]).is_empty());
    }

    #[test]
    fn an_acknowledged_value_missing_from_the_log_is_lost() {
        let (mut history, log) = good_history();
        // Acknowledged at position 4, which nobody read, yet never committed.
        history.invoke_append(GROUP, 7);
        history.ok_append(GROUP, 7, 4);
        assert_single_anomaly(&history, &log, "lost");
    }

    #[test]
    fn an_acknowledged_value_elsewhere_is_at_the_wrong_position() {
        let (mut history, _) = good_history();
        // Value 5 was indeterminate; acknowledging it at 4 contradicts the log.
        history.ok_append(GROUP, 5, 4);
        history.ok_read(GROUP, 0, &[]);
        assert_single_anomaly(&history, &[1, 2, 3, 5], "wrong position");
    }

    #[test]
    fn a_value_committed_twice_is_a_duplicate() {
        let (history, _) = good_history();
        assert_single_anomaly(&history, &[1, 2, 3, 5, 5], "duplicate");
    }

    #[test]
    fn a_value_nobody_appended_is_a_phantom() {
        let (history, _) = good_history();
        assert_single_anomaly(&history, &[1, 2, 3, 5, 77], "phantom");
    }

    #[test]
    fn a_failed_append_in_the_log_is_failed_but_present() {
        let (history, _) = good_history();
        assert_single_anomaly(&history, &[1, 2, 3, 5, 4], "failed but present");
    }

    #[test]
    fn a_read_of_a_different_value_is_caught() {
        let (mut history, log) = good_history();
        history.ok_read(GROUP, 2, &[5]);
        assert_single_anomaly(&history, &log, "read of uncommitted or wrong value");
    }

    #[test]
    fn a_read_past_the_end_of_the_committed_log_is_caught() {
        let (mut history, log) = good_history();
        history.ok_read(GROUP, 3, &[5, 6]);
        assert_single_anomaly(&history, &log, "read of uncommitted or wrong value");
    }

    #[test]
    fn acknowledgements_that_disagree_are_caught() {
        let (mut history, log) = good_history();
        history.ok_append(GROUP, 2, 3);
        let violations = check_acknowledged_appends(&history, GROUP, &log);
        let messages = messages(&violations);
        assert_eq!(violations.len(), 2, "{messages:#?}");
        assert!(
            messages[0].contains(": conflicting acks: "),
            "{messages:#?}"
        );
        assert!(messages[1].contains(": wrong position: "), "{messages:#?}");
        // The retry does not count as a second acknowledged value.
        assert_eq!(history.acknowledged(), 3);
    }

    #[test]
    fn violations_are_capped_per_group_with_a_count_of_the_rest() {
        let history = AppendHistory::new();
        let log: Vec<u64> = (100..130).collect();
        let violations = check_acknowledged_appends(&history, GROUP, &log);
        assert_eq!(violations.len(), MAX_VIOLATIONS_PER_GROUP + 1);
        assert!(violations[..MAX_VIOLATIONS_PER_GROUP]
            .iter()
            .all(|violation| violation.message.contains(": phantom: ")));
        assert!(
            violations[MAX_VIOLATIONS_PER_GROUP]
                .message
                .contains("10 more violations not shown"),
            "{}",
            violations[MAX_VIOLATIONS_PER_GROUP]
        );
    }
}
