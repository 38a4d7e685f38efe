//! The Kafka queue checker: judges a history of sends and polls (the queue
//! workload, [`QueueOp`]) as Jepsen's `kafka` test does, and names every
//! anomaly it finds.
//!
//! Each key is one partition. From every acknowledged send (its offset) and
//! every poll (the offsets and values it returned) the checker rebuilds, per
//! key, which values sit at which offsets, and from that the key's log: its
//! known offsets in order, so that "the next record" means the next known
//! offset even where offsets have gaps. Then:
//!
//! - `inconsistent-offsets`: one offset of a key holds two different values.
//! - `duplicate`: one value sits at two offsets (or in two keys).
//! - `lost-write`: an acknowledged value no poll ever returned, although polls
//!   returned records of its key past its offset.
//! - `unseen`: an acknowledged value no poll returned, with nothing read past
//!   it. After a final read of everything this is as bad as a lost write.
//! - `aborted-read`: a poll returned a value whose send definitely failed.
//! - `poll-skip`: between two consecutive polls of one consumer (with no
//!   assignment between them), the consumer skipped records of a key.
//! - `nonmonotonic-poll`: ... or went back to (or repeated) an earlier record.
//! - `nonmonotonic-send`: two consecutive acknowledged sends of one process to
//!   one key got offsets that do not increase.
//! - `int-poll-skip`, `int-nonmonotonic-poll`, `int-nonmonotonic-send`: the
//!   same within one operation (consecutive records of one key in one poll,
//!   consecutive messages of one key in one send).
//! - `int-send-skip`: consecutive messages of one key in one send were not
//!   given adjacent records. Only meaningful when a send is atomic (a
//!   transaction); otherwise other producers' records may land between, so
//!   it is checked only with [`QueueCheckOptions::sends_are_atomic`].
//!
//! An assignment, a failed poll and an indeterminate poll reset the consumer's
//! expected positions: its position may have moved without a record of it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Key, Operation, Outcome, ProcessId, QueueOp};

/// An acknowledged value missing although later records of its key were read.
pub const LOST_WRITE: &str = "lost-write";
/// An acknowledged value never read, with nothing read past it.
pub const UNSEEN: &str = "unseen";
/// A value at more than one offset.
pub const DUPLICATE: &str = "duplicate";
/// An offset holding more than one value.
pub const INCONSISTENT_OFFSETS: &str = "inconsistent-offsets";
/// A read of a value whose send definitely failed.
pub const ABORTED_READ: &str = "aborted-read";
/// Records skipped between two polls of one consumer.
pub const POLL_SKIP: &str = "poll-skip";
/// A consumer going back or repeating between two polls.
pub const NONMONOTONIC_POLL: &str = "nonmonotonic-poll";
/// Offsets not increasing between two sends of one process.
pub const NONMONOTONIC_SEND: &str = "nonmonotonic-send";
/// Records skipped within one poll.
pub const INT_POLL_SKIP: &str = "int-poll-skip";
/// Offsets not increasing within one poll.
pub const INT_NONMONOTONIC_POLL: &str = "int-nonmonotonic-poll";
/// Records of others between the messages of one atomic send.
pub const INT_SEND_SKIP: &str = "int-send-skip";
/// Offsets not increasing within one send.
pub const INT_NONMONOTONIC_SEND: &str = "int-nonmonotonic-send";

/// Every anomaly this checker names, in report order.
pub const ANOMALIES: [&str; 12] = [
    LOST_WRITE,
    UNSEEN,
    DUPLICATE,
    INCONSISTENT_OFFSETS,
    ABORTED_READ,
    POLL_SKIP,
    NONMONOTONIC_POLL,
    NONMONOTONIC_SEND,
    INT_POLL_SKIP,
    INT_NONMONOTONIC_POLL,
    INT_SEND_SKIP,
    INT_NONMONOTONIC_SEND,
];

/// At most this many examples are kept per anomaly; the count covers all.
pub const EXAMPLES_PER_ANOMALY_MAX: usize = 10;

/// What the history's sends promise.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueCheckOptions {
    /// Sends are transactions: the messages of one send to one key occupy
    /// adjacent records. Enables `int-send-skip`.
    pub sends_are_atomic: bool,
}

/// Occurrences of one anomaly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AnomalyReport {
    /// How many times it was found.
    pub count: u64,
    /// The first few, described.
    pub examples: Vec<String>,
}

/// Counts that say how much the history exercised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Messages whose send was acknowledged.
    pub sends_ok: u64,
    /// Messages whose send definitely failed.
    pub sends_failed: u64,
    /// Messages whose send may or may not have happened.
    pub sends_indeterminate: u64,
    /// Polls that completed.
    pub polls_ok: u64,
    /// Distinct values some poll returned.
    pub values_read: u64,
    /// Keys with at least one known record.
    pub keys: u64,
}

/// The queue checker's judgement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueVerdict {
    /// True when no anomaly was found.
    pub valid: bool,
    /// Each anomaly found, by name; absent names were not found.
    pub anomalies: BTreeMap<&'static str, AnomalyReport>,
    /// What the history held.
    pub stats: QueueStats,
}

impl QueueVerdict {
    fn add(&mut self, anomaly: &'static str, example: String) {
        let report = self.anomalies.entry(anomaly).or_default();
        report.count += 1;
        if report.examples.len() < EXAMPLES_PER_ANOMALY_MAX {
            report.examples.push(example);
        }
    }

    /// How often `anomaly` was found (0 when not at all).
    pub fn count(&self, anomaly: &str) -> u64 {
        self.anomalies.get(anomaly).map_or(0, |report| report.count)
    }
}

/// What the history says of one key.
#[derive(Default)]
struct KeyState {
    /// Every value seen at each offset (from acknowledgements and polls).
    values_at: BTreeMap<u64, BTreeSet<u64>>,
    /// Every offset each value was seen at.
    offsets_of: BTreeMap<u64, BTreeSet<u64>>,
    /// Values some poll returned.
    read: BTreeSet<u64>,
    /// The highest offset some poll returned.
    max_read_offset: Option<u64>,
    /// Each known offset's position in the key's log (0, 1, 2, ...).
    position_of: BTreeMap<u64, u64>,
}

impl KeyState {
    fn see(&mut self, offset: u64, value: u64) {
        self.values_at.entry(offset).or_default().insert(value);
        self.offsets_of.entry(value).or_default().insert(offset);
    }

    fn position(&self, offset: u64) -> u64 {
        // Every offset checked was seen, so it is in the map.
        self.position_of.get(&offset).copied().unwrap_or(u64::MAX)
    }
}

/// How a send of one value ended.
#[derive(Clone, Copy)]
enum SendStatus {
    Acknowledged { key: Key, offset: u64 },
    Failed,
    Indeterminate,
}

/// Checks a paired queue history (see [`crate::history::pair_operations`]).
pub fn check_queue(operations: &[Operation<QueueOp>], options: QueueCheckOptions) -> QueueVerdict {
    let mut verdict = QueueVerdict::default();
    let mut keys: BTreeMap<Key, KeyState> = BTreeMap::new();
    let mut sends: BTreeMap<u64, SendStatus> = BTreeMap::new();
    let mut keys_of_value: BTreeMap<u64, BTreeSet<Key>> = BTreeMap::new();

    // Gather what every operation says.
    for operation in operations {
        match (&operation.invoked, operation.outcome) {
            (QueueOp::Send { messages }, outcome) => {
                let acknowledged = match (outcome, operation.completed.as_ref()) {
                    (Outcome::Ok, Some(QueueOp::Send { messages })) => Some(messages),
                    _ => None,
                };
                for (index, message) in messages.iter().enumerate() {
                    let offset = acknowledged
                        .and_then(|messages| messages.get(index))
                        .filter(|acked| acked.value == message.value && acked.key == message.key)
                        .and_then(|acked| acked.offset);
                    let status = match (outcome, offset) {
                        (Outcome::Ok, Some(offset)) => SendStatus::Acknowledged {
                            key: message.key,
                            offset,
                        },
                        (Outcome::Fail, _) => SendStatus::Failed,
                        _ => SendStatus::Indeterminate,
                    };
                    match status {
                        SendStatus::Acknowledged { key, offset } => {
                            verdict.stats.sends_ok += 1;
                            keys.entry(key).or_default().see(offset, message.value);
                            keys_of_value.entry(message.value).or_default().insert(key);
                        }
                        SendStatus::Failed => verdict.stats.sends_failed += 1,
                        SendStatus::Indeterminate => verdict.stats.sends_indeterminate += 1,
                    }
                    sends.insert(message.value, status);
                }
            }
            (QueueOp::Poll { .. }, Outcome::Ok) => {
                verdict.stats.polls_ok += 1;
                let Some(QueueOp::Poll { records }) = operation.completed.as_ref() else {
                    continue;
                };
                for (&key, records) in records {
                    let state = keys.entry(key).or_default();
                    for record in records {
                        state.see(record.offset, record.value);
                        state.read.insert(record.value);
                        state.max_read_offset = state.max_read_offset.max(Some(record.offset));
                        keys_of_value.entry(record.value).or_default().insert(key);
                    }
                }
            }
            _ => {}
        }
    }
    for state in keys.values_mut() {
        state.position_of = state
            .values_at
            .keys()
            .enumerate()
            .map(|(position, &offset)| (offset, position as u64))
            .collect();
    }
    verdict.stats.keys = keys.len() as u64;
    verdict.stats.values_read = keys.values().map(|state| state.read.len() as u64).sum();

    // What each key's records say on their own.
    for (&key, state) in &keys {
        for (&offset, values) in &state.values_at {
            if values.len() > 1 {
                verdict.add(
                    INCONSISTENT_OFFSETS,
                    format!("key {key} offset {offset} holds values {values:?}"),
                );
            }
        }
        for (&value, offsets) in &state.offsets_of {
            if offsets.len() > 1 {
                verdict.add(
                    DUPLICATE,
                    format!("value {value} is at offsets {offsets:?} of key {key}"),
                );
            }
        }
        for &value in &state.read {
            if let Some(SendStatus::Failed) = sends.get(&value) {
                verdict.add(
                    ABORTED_READ,
                    format!("key {key}: a poll returned value {value}, whose send failed"),
                );
            }
        }
    }
    for (&value, value_keys) in &keys_of_value {
        if value_keys.len() > 1 {
            verdict.add(
                DUPLICATE,
                format!("value {value} is in keys {value_keys:?}"),
            );
        }
    }
    for (&value, status) in &sends {
        let SendStatus::Acknowledged { key, offset } = *status else {
            continue;
        };
        let Some(state) = keys.get(&key) else {
            continue;
        };
        if state.read.contains(&value) {
            continue;
        }
        match state.max_read_offset {
            Some(max_read) if max_read > offset => verdict.add(
                LOST_WRITE,
                format!(
                    "key {key}: value {value} was acknowledged at offset {offset}, never read, \
                     though polls read up to offset {max_read}"
                ),
            ),
            _ => verdict.add(
                UNSEEN,
                format!("key {key}: value {value} was acknowledged at offset {offset}, never read"),
            ),
        }
    }

    // The order each process saw.
    let mut last_sent: BTreeMap<(ProcessId, Key), u64> = BTreeMap::new();
    let mut last_polled: BTreeMap<(ProcessId, Key), u64> = BTreeMap::new();
    for operation in operations {
        let process = operation.process;
        match (
            &operation.invoked,
            operation.outcome,
            operation.completed.as_ref(),
        ) {
            (QueueOp::Send { .. }, Outcome::Ok, Some(QueueOp::Send { messages })) => {
                let mut in_this_send: BTreeMap<Key, u64> = BTreeMap::new();
                for message in messages {
                    let Some(offset) = message.offset else {
                        continue;
                    };
                    let key = message.key;
                    let state = &keys[&key];
                    if let Some(&previous) = in_this_send.get(&key) {
                        if offset <= previous {
                            verdict.add(
                                INT_NONMONOTONIC_SEND,
                                format!(
                                    "process {process} key {key}: one send got offset {previous} \
                                     then {offset}"
                                ),
                            );
                        } else if options.sends_are_atomic
                            && state.position(offset) > state.position(previous) + 1
                        {
                            verdict.add(
                                INT_SEND_SKIP,
                                format!(
                                    "process {process} key {key}: one atomic send got offsets \
                                     {previous} and {offset}, with other records between"
                                ),
                            );
                        }
                    } else if let Some(&previous) = last_sent.get(&(process, key)) {
                        if offset <= previous {
                            verdict.add(
                                NONMONOTONIC_SEND,
                                format!(
                                    "process {process} key {key}: a send got offset {offset} \
                                     after an earlier send got {previous}"
                                ),
                            );
                        }
                    }
                    in_this_send.insert(key, offset);
                }
                last_sent.extend(
                    in_this_send
                        .into_iter()
                        .map(|(key, offset)| ((process, key), offset)),
                );
            }
            (QueueOp::Poll { .. }, Outcome::Ok, Some(QueueOp::Poll { records })) => {
                for (&key, records) in records {
                    let state = &keys[&key];
                    let mut previous_in_poll: Option<u64> = None;
                    for record in records {
                        let position = state.position(record.offset);
                        if let Some(previous) = previous_in_poll {
                            let previous_position = state.position(previous);
                            if position <= previous_position {
                                verdict.add(
                                    INT_NONMONOTONIC_POLL,
                                    format!(
                                        "process {process} key {key}: one poll returned offset \
                                         {previous} then {}",
                                        record.offset
                                    ),
                                );
                            } else if position > previous_position + 1 {
                                verdict.add(
                                    INT_POLL_SKIP,
                                    format!(
                                        "process {process} key {key}: one poll returned offset \
                                         {previous} then {}, skipping {} records",
                                        record.offset,
                                        position - previous_position - 1
                                    ),
                                );
                            }
                        } else if let Some(&previous) = last_polled.get(&(process, key)) {
                            let previous_position = state.position(previous);
                            if position <= previous_position {
                                verdict.add(
                                    NONMONOTONIC_POLL,
                                    format!(
                                        "process {process} key {key}: a poll returned offset {} \
                                         after an earlier poll returned {previous}",
                                        record.offset
                                    ),
                                );
                            } else if position > previous_position + 1 {
                                verdict.add(
                                    POLL_SKIP,
                                    format!(
                                        "process {process} key {key}: a poll returned offset {} \
                                         after an earlier poll ended at {previous}, skipping {} \
                                         records",
                                        record.offset,
                                        position - previous_position - 1
                                    ),
                                );
                            }
                        }
                        previous_in_poll = Some(record.offset);
                    }
                    if let Some(last) = previous_in_poll {
                        last_polled.insert((process, key), last);
                    }
                }
            }
            (QueueOp::Poll { .. }, _, _) | (QueueOp::Assign { .. }, _, _) => {
                last_polled.retain(|&(owner, _), _| owner != process);
            }
            _ => {}
        }
    }

    verdict.valid = verdict.anomalies.is_empty();
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Record, SentMessage};

    /// Builds histories operation by operation, with increasing times.
    #[derive(Default)]
    struct History {
        operations: Vec<Operation<QueueOp>>,
    }

    impl History {
        fn push(
            &mut self,
            process: ProcessId,
            outcome: Outcome,
            invoked: QueueOp,
            completed: QueueOp,
        ) {
            let time = self.operations.len() as u64 * 10;
            self.operations.push(Operation {
                process,
                invoke_ns: time,
                complete_ns: Some(time + 5),
                outcome,
                invoked,
                completed: Some(completed),
                error: None,
            });
        }

        /// A send of `(key, value, offset)` messages by `process`.
        fn send(
            &mut self,
            process: ProcessId,
            outcome: Outcome,
            messages: &[(Key, u64, Option<u64>)],
        ) {
            let invoked = QueueOp::Send {
                messages: messages
                    .iter()
                    .map(|&(key, value, _)| SentMessage {
                        key,
                        value,
                        offset: None,
                    })
                    .collect(),
            };
            let completed = QueueOp::Send {
                messages: messages
                    .iter()
                    .map(|&(key, value, offset)| SentMessage { key, value, offset })
                    .collect(),
            };
            self.push(process, outcome, invoked, completed);
        }

        fn ack(&mut self, process: ProcessId, key: Key, value: u64, offset: u64) {
            self.send(process, Outcome::Ok, &[(key, value, Some(offset))]);
        }

        /// A poll by `process` returning `(key, offset, value)` records.
        fn poll(&mut self, process: ProcessId, records: &[(Key, u64, u64)]) {
            let mut by_key: BTreeMap<Key, Vec<Record>> = BTreeMap::new();
            for &(key, offset, value) in records {
                by_key
                    .entry(key)
                    .or_default()
                    .push(Record { offset, value });
            }
            self.push(
                process,
                Outcome::Ok,
                QueueOp::Poll {
                    records: BTreeMap::new(),
                },
                QueueOp::Poll { records: by_key },
            );
        }

        fn assign(&mut self, process: ProcessId, keys: &[Key]) {
            let op = QueueOp::Assign {
                keys: keys.to_vec(),
            };
            self.push(process, Outcome::Ok, op.clone(), op);
        }

        fn check(&self) -> QueueVerdict {
            check_queue(&self.operations, QueueCheckOptions::default())
        }
    }

    /// Two producers (1, 2) write keys 0 and 1; consumer 10 reads everything
    /// in two polls; a failed send and an indeterminate one are never read,
    /// an indeterminate one that happened is read.
    fn good_history() -> History {
        let mut history = History::default();
        history.ack(1, 0, 100, 0);
        history.ack(2, 0, 200, 1);
        history.ack(1, 1, 101, 0);
        history.send(2, Outcome::Fail, &[(0, 201, None)]);
        history.send(1, Outcome::Info, &[(0, 102, None)]);
        history.send(3, Outcome::Info, &[(1, 300, None)]);
        history.ack(2, 0, 202, 3);
        history.assign(10, &[0, 1]);
        history.poll(10, &[(0, 0, 100), (0, 1, 200), (1, 0, 101)]);
        history.poll(10, &[(0, 2, 102), (0, 3, 202)]);
        history
    }

    /// Asserts the history shows exactly `expected` anomalies (each once).
    fn assert_anomalies(history: &History, expected: &[&str]) {
        let verdict = history.check();
        let found: Vec<&str> = verdict.anomalies.keys().copied().collect();
        let mut expected_sorted = expected.to_vec();
        expected_sorted.sort_unstable();
        assert_eq!(found, expected_sorted, "{verdict:#?}");
        for anomaly in expected {
            assert_eq!(verdict.count(anomaly), 1, "{verdict:#?}");
        }
        assert_eq!(verdict.valid, expected.is_empty());
    }

    #[test]
    fn a_good_history_is_valid() {
        let history = good_history();
        let verdict = history.check();
        assert!(verdict.valid, "{verdict:#?}");
        assert_eq!(
            verdict.stats,
            QueueStats {
                sends_ok: 4,
                sends_failed: 1,
                sends_indeterminate: 2,
                polls_ok: 2,
                values_read: 5,
                keys: 2,
            }
        );
        assert!(check_queue(&[], QueueCheckOptions::default()).valid);
    }

    #[test]
    fn an_acknowledged_value_skipped_by_the_reads_is_a_lost_write() {
        let mut history = good_history();
        // Acknowledged at offset 4, yet polls read offset 5 and never it.
        history.ack(1, 0, 103, 4);
        history.poll(10, &[(0, 5, 203)]);
        // The consumer's jump from 3 to 5 skips the lost record too.
        assert_anomalies(&history, &[LOST_WRITE, POLL_SKIP]);
        let verdict = history.check();
        assert!(verdict.anomalies[LOST_WRITE].examples[0].contains("value 103"));
    }

    #[test]
    fn an_acknowledged_value_past_every_read_is_unseen() {
        let mut history = good_history();
        history.ack(1, 0, 103, 4);
        assert_anomalies(&history, &[UNSEEN]);
    }

    #[test]
    fn a_value_at_two_offsets_is_a_duplicate() {
        let mut history = good_history();
        history.poll(11, &[(0, 3, 202), (0, 4, 100)]);
        assert_anomalies(&history, &[DUPLICATE]);
    }

    #[test]
    fn a_value_in_two_keys_is_a_duplicate() {
        let mut history = good_history();
        history.poll(11, &[(1, 1, 100)]);
        assert_anomalies(&history, &[DUPLICATE]);
    }

    #[test]
    fn an_offset_with_two_values_is_inconsistent() {
        let mut history = good_history();
        // Another consumer reads a different value at key 0 offset 1.
        history.poll(11, &[(0, 1, 900)]);
        assert_anomalies(&history, &[INCONSISTENT_OFFSETS]);
    }

    #[test]
    fn a_read_of_a_failed_send_is_an_aborted_read() {
        let mut history = good_history();
        history.poll(10, &[(0, 4, 201)]);
        assert_anomalies(&history, &[ABORTED_READ]);
    }

    #[test]
    fn a_consumer_jumping_past_records_between_polls_is_a_poll_skip() {
        let mut history = good_history();
        history.assign(11, &[0]);
        history.poll(11, &[(0, 0, 100)]);
        history.poll(11, &[(0, 2, 102)]);
        assert_anomalies(&history, &[POLL_SKIP]);
    }

    #[test]
    fn a_consumer_going_back_between_polls_is_nonmonotonic() {
        let mut history = good_history();
        history.poll(10, &[(0, 1, 200)]);
        assert_anomalies(&history, &[NONMONOTONIC_POLL]);
    }

    #[test]
    fn an_assignment_resets_the_consumer_position() {
        let mut history = good_history();
        history.assign(10, &[0, 1]);
        history.poll(10, &[(0, 1, 200)]);
        history.assign(10, &[0]);
        history.poll(10, &[(0, 3, 202)]);
        assert_anomalies(&history, &[]);
    }

    #[test]
    fn a_failed_poll_resets_the_consumer_position() {
        let mut history = good_history();
        history.push(
            10,
            Outcome::Fail,
            QueueOp::Poll {
                records: BTreeMap::new(),
            },
            QueueOp::Poll {
                records: BTreeMap::new(),
            },
        );
        history.poll(10, &[(0, 0, 100)]);
        assert_anomalies(&history, &[]);
    }

    #[test]
    fn a_skip_within_one_poll_is_an_int_poll_skip() {
        let mut history = good_history();
        history.assign(11, &[0]);
        history.poll(11, &[(0, 0, 100), (0, 2, 102)]);
        assert_anomalies(&history, &[INT_POLL_SKIP]);
    }

    #[test]
    fn going_back_within_one_poll_is_an_int_nonmonotonic_poll() {
        let mut history = good_history();
        history.assign(11, &[0]);
        history.poll(11, &[(0, 1, 200), (0, 0, 100)]);
        assert_anomalies(&history, &[INT_NONMONOTONIC_POLL]);
    }

    #[test]
    fn offsets_going_back_between_sends_of_a_process_are_a_nonmonotonic_send() {
        let mut history = good_history();
        // Process 2's earlier send to key 0 got offset 3; this one gets 2.
        // (Offset 2 then holds two values too.)
        history.ack(2, 0, 203, 2);
        let verdict = history.check();
        assert_eq!(verdict.count(NONMONOTONIC_SEND), 1, "{verdict:#?}");
        assert_eq!(verdict.count(INCONSISTENT_OFFSETS), 1, "{verdict:#?}");
        let mut history = good_history();
        history.ack(4, 1, 400, 5);
        history.ack(4, 1, 401, 4);
        // Offsets 1 to 3 of key 1 were never used: the log has gaps, and
        // reading 0, 4, 5 skips nothing.
        history.poll(10, &[(1, 4, 401), (1, 5, 400)]);
        assert_anomalies(&history, &[NONMONOTONIC_SEND]);
    }

    #[test]
    fn offsets_going_back_within_one_send_are_an_int_nonmonotonic_send() {
        let mut history = good_history();
        history.send(4, Outcome::Ok, &[(1, 400, Some(2)), (1, 401, Some(1))]);
        history.poll(10, &[(1, 1, 401), (1, 2, 400)]);
        assert_anomalies(&history, &[INT_NONMONOTONIC_SEND]);
    }

    #[test]
    fn a_gap_within_an_atomic_send_is_an_int_send_skip() {
        let mut history = good_history();
        history.send(4, Outcome::Ok, &[(1, 400, Some(1)), (1, 401, Some(3))]);
        history.ack(5, 1, 500, 2);
        history.poll(10, &[(1, 1, 400), (1, 2, 500), (1, 3, 401)]);
        // Not an anomaly for plain sends, which other producers interleave.
        assert_anomalies(&history, &[]);
        let verdict = check_queue(
            &history.operations,
            QueueCheckOptions {
                sends_are_atomic: true,
            },
        );
        assert_eq!(
            verdict.anomalies.keys().copied().collect::<Vec<_>>(),
            vec![INT_SEND_SKIP]
        );
    }

    #[test]
    fn examples_are_capped_but_counted() {
        let mut history = History::default();
        for value in 0..(EXAMPLES_PER_ANOMALY_MAX as u64 + 5) {
            history.ack(1, 0, value, value);
        }
        let verdict = history.check();
        assert_eq!(verdict.count(UNSEEN), EXAMPLES_PER_ANOMALY_MAX as u64 + 5);
        assert_eq!(
            verdict.anomalies[UNSEEN].examples.len(),
            EXAMPLES_PER_ANOMALY_MAX
        );
    }
}
