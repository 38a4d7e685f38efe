//! A client-observed history: what client processes asked a cluster to do and
//! what they saw, as Jepsen records it.
//!
//! Every operation is two events of one process: an invocation, and later a
//! completion that says whether it happened (`ok`), definitely did not
//! (`fail`), or might have (`info`: a timeout, a lost connection). A process
//! runs one operation at a time; after an `info` it never invokes again under
//! the same id, because its operation may still take effect at any later
//! time. Times are nanoseconds since the run started, from the client's
//! monotonic clock.
//!
//! The events serialize one per line as JSON (the `history.jsonl` of a jepsen
//! run); [`pair_operations`] joins each invocation with its completion for the
//! checkers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A client process: one logical thread of operations.
pub type ProcessId = u64;
/// A key of the queue workload: one partition of the workload's topic.
pub type Key = u32;

/// Which half of an operation an event is, and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The process started the operation.
    Invoke,
    /// The operation happened, with the results the completion carries.
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// The operation may or may not have happened, now or later.
    Info,
}

/// One event of a history, generic over the operations of its workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<Op> {
    /// The event's position in the history, from 0.
    pub index: u64,
    /// When it happened, in nanoseconds since the run started.
    pub time_ns: u64,
    /// The process that performed the operation.
    pub process: ProcessId,
    /// Invocation, or how the operation completed.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The operation: on an invocation what was asked, on a completion what
    /// came back (offsets assigned, records read).
    #[serde(flatten)]
    pub op: Op,
    /// Why an operation failed or is indeterminate, as the client said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One message a send operation produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMessage {
    /// The key (partition) it went to.
    pub key: Key,
    /// The value: unique over the whole history.
    pub value: u64,
    /// The offset it was acknowledged at; only on an `ok` completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// One record a poll returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its offset in the key's partition.
    pub offset: u64,
    /// The value it holds.
    pub value: u64,
}

/// The operations of the queue workload (Jepsen's `kafka` test).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum QueueOp {
    /// Produce messages, in order; the completion carries their offsets.
    Send {
        /// The messages, in the order the process produced them.
        messages: Vec<SentMessage>,
    },
    /// Poll the consumer; the completion carries what it returned, per key
    /// in the order returned.
    Poll {
        /// The records read, per key. In JSON a list of `[key, records]`
        /// pairs: flattened enums cannot carry maps with integer keys.
        #[serde(default, with = "records_by_key")]
        records: BTreeMap<Key, Vec<Record>>,
    },
    /// Commit `offset` as consumer group `group`'s committed offset of `key`
    /// (the committed-offsets workload, judged by
    /// [`crate::committed_offsets`]).
    Commit {
        group: String,
        key: Key,
        offset: u64,
    },
    /// Fetch `group`'s committed offset of `key`; the completion carries it
    /// (`None`: nothing committed).
    FetchCommitted {
        group: String,
        key: Key,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Assign the consumer a new set of keys (manual assignment). The next
    /// poll of a key may start anywhere: assignment resets the consumer's
    /// position, so the poll-order checks start afresh.
    Assign {
        /// The keys now assigned.
        keys: Vec<Key>,
    },
}

/// (De)serializes a map of records by key as a list of `[key, records]`.
mod records_by_key {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Key, Record};

    pub fn serialize<S: Serializer>(
        records: &BTreeMap<Key, Vec<Record>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(&Key, &Vec<Record>)> = records.iter().collect();
        pairs.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<Key, Vec<Record>>, D::Error> {
        let pairs: Vec<(Key, Vec<Record>)> = Vec::deserialize(deserializer)?;
        Ok(pairs.into_iter().collect())
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened.
    Ok,
    /// It definitely did not happen.
    Fail,
    /// It may have happened (an `info` completion, or none before the
    /// history ended).
    Info,
}

/// An invocation joined with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<Op> {
    /// The process that performed it.
    pub process: ProcessId,
    /// When it was invoked, in nanoseconds since the run started.
    pub invoke_ns: u64,
    /// When it completed; `None` when the history ended first.
    pub complete_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// What was asked.
    pub invoked: Op,
    /// What came back; `None` when it never completed.
    pub completed: Option<Op>,
    /// The client's reason for a failure or an indeterminate outcome.
    pub error: Option<String>,
}

impl<Op> Operation<Op> {
    /// How long the operation took, when it completed.
    pub fn latency_ns(&self) -> Option<u64> {
        self.complete_ns
            .map(|complete| complete.saturating_sub(self.invoke_ns))
    }

    /// The completion's view of the operation when it has one, else the
    /// invocation's.
    pub fn result(&self) -> &Op {
        self.completed.as_ref().unwrap_or(&self.invoked)
    }
}

/// What [`pair_operations`] could not make sense of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairingProblems {
    /// Completions with no invocation open on their process (event indexes).
    pub unmatched_completions: Vec<u64>,
    /// Invocations on a process that still had one open (event indexes).
    pub overlapping_invocations: Vec<u64>,
}

impl PairingProblems {
    /// Whether the history was well formed.
    pub fn is_empty(&self) -> bool {
        self.unmatched_completions.is_empty() && self.overlapping_invocations.is_empty()
    }
}

/// Joins every invocation with the next completion of its process, in
/// invocation order. An invocation never completed is `Info` with no
/// completion. Malformed parts (a completion with no invocation, a second
/// invocation while one is open) are reported and skipped, never a panic: the
/// overlapping invocation replaces the open one, which becomes `Info`.
pub fn pair_operations<Op: Clone>(events: &[Event<Op>]) -> (Vec<Operation<Op>>, PairingProblems) {
    let mut operations: Vec<Operation<Op>> = Vec::new();
    let mut open: BTreeMap<ProcessId, usize> = BTreeMap::new();
    let mut problems = PairingProblems::default();
    for event in events {
        match event.event_type {
            EventType::Invoke => {
                if open.contains_key(&event.process) {
                    problems.overlapping_invocations.push(event.index);
                }
                open.insert(event.process, operations.len());
                operations.push(Operation {
                    process: event.process,
                    invoke_ns: event.time_ns,
                    complete_ns: None,
                    outcome: Outcome::Info,
                    invoked: event.op.clone(),
                    completed: None,
                    error: None,
                });
            }
            completion => {
                let Some(position) = open.remove(&event.process) else {
                    problems.unmatched_completions.push(event.index);
                    continue;
                };
                let operation = &mut operations[position];
                operation.complete_ns = Some(event.time_ns);
                operation.outcome = match completion {
                    EventType::Ok => Outcome::Ok,
                    EventType::Fail => Outcome::Fail,
                    _ => Outcome::Info,
                };
                operation.completed = Some(event.op.clone());
                operation.error = event.error.clone();
            }
        }
    }
    (operations, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u64, process: ProcessId, event_type: EventType, op: QueueOp) -> Event<QueueOp> {
        Event {
            index,
            time_ns: index * 10,
            process,
            event_type,
            op,
            error: None,
        }
    }

    fn send(value: u64, offset: Option<u64>) -> QueueOp {
        QueueOp::Send {
            messages: vec![SentMessage {
                key: 0,
                value,
                offset,
            }],
        }
    }

    #[test]
    fn events_round_trip_through_json_lines() {
        let mut records = BTreeMap::new();
        records.insert(
            3,
            vec![Record {
                offset: 7,
                value: 9,
            }],
        );
        let events = vec![
            event(0, 1, EventType::Invoke, send(5, None)),
            Event {
                error: Some("timed out".into()),
                ..event(1, 1, EventType::Info, send(5, None))
            },
            event(2, 2, EventType::Ok, QueueOp::Poll { records }),
            event(
                3,
                2,
                EventType::Invoke,
                QueueOp::Assign { keys: vec![0, 1] },
            ),
        ];
        for original in events {
            let line = serde_json::to_string(&original).expect("serialize");
            assert!(!line.contains('\n'));
            let back: Event<QueueOp> = serde_json::from_str(&line).expect("deserialize");
            assert_eq!(back, original, "{line}");
        }
        let line = serde_json::to_string(&event(0, 1, EventType::Invoke, send(5, None))).unwrap();
        assert_eq!(
            line,
            r#"{"index":0,"time_ns":0,"process":1,"type":"invoke","f":"send","messages":[{"key":0,"value":5}]}"#
        );
    }

    #[test]
    fn invocations_pair_with_their_completions() {
        let events = vec![
            event(0, 1, EventType::Invoke, send(1, None)),
            event(1, 2, EventType::Invoke, send(2, None)),
            event(2, 2, EventType::Fail, send(2, None)),
            event(3, 1, EventType::Ok, send(1, Some(0))),
            event(4, 3, EventType::Invoke, send(3, None)),
        ];
        let (operations, problems) = pair_operations(&events);
        assert!(problems.is_empty());
        assert_eq!(operations.len(), 3);
        assert_eq!(operations[0].outcome, Outcome::Ok);
        assert_eq!(operations[0].latency_ns(), Some(30));
        assert_eq!(operations[0].result(), &send(1, Some(0)));
        assert_eq!(operations[1].outcome, Outcome::Fail);
        assert_eq!(operations[2].outcome, Outcome::Info);
        assert_eq!(operations[2].complete_ns, None);
        assert_eq!(operations[2].result(), &send(3, None));
    }

    #[test]
    fn malformed_histories_are_reported_not_panicked_on() {
        let events = vec![
            event(0, 1, EventType::Ok, send(1, Some(0))),
            event(1, 2, EventType::Invoke, send(2, None)),
            event(2, 2, EventType::Invoke, send(3, None)),
        ];
        let (operations, problems) = pair_operations(&events);
        assert_eq!(problems.unmatched_completions, vec![0]);
        assert_eq!(problems.overlapping_invocations, vec![2]);
        assert_eq!(operations.len(), 2);
        assert!(operations.iter().all(|op| op.outcome == Outcome::Info));
    }
}
