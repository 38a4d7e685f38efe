//! Committed consumer offsets are linearizable: each (group, key) is a
//! register that commits write and fetches read, checked with the WGL search
//! of [`crate::linearizable`] one register at a time (linearizability is
//! compositional).
//!
//! A commit that completed `ok` wrote; one that failed did not; one whose
//! outcome is unknown (`info`, or never completed) may have written at any
//! time after its invocation, or never. A fetch that completed `ok` read the
//! value it returned; one that did not return reads nothing and is left out.
//!
//! Unknown commits are what make the search expensive: each may take effect
//! anywhere after its invocation, so a few hundred of them (a client that
//! keeps committing through a partition) make the orders to try explode.
//! Two facts about a commit of a value no other commit writes (committed
//! offsets are distinct per register in every workload here; a register
//! where they are not is checked as it is) let the checker narrow them first,
//! without changing the verdict:
//! - An unknown commit whose value no fetch returned is left out. Placing it
//!   can only make later fetches see its value, which none did, so any
//!   order valid with it is valid without it, and the other way round.
//! - An unknown commit whose value some fetch returned did happen, and
//!   before each such fetch returned: it is treated as a commit that
//!   returned when the earliest of those fetches did.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Key, Operation, Outcome, QueueOp};
use crate::linearizable::{
    check_linearizable, Linearizability, LinearizableOp, Register, RegisterInput, RegisterOutput,
};

/// At most this many failing registers are described in a verdict.
pub const FAILURES_SHOWN_MAX: usize = 10;

/// The verdict over every register of a history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CommittedOffsetsVerdict {
    /// True when every register is linearizable (or the history has none).
    pub valid: bool,
    /// Registers ((group, key) pairs) the history touched.
    pub registers: u64,
    /// Commit and fetch operations checked.
    pub operations: u64,
    /// Registers that are not linearizable, described (at most
    /// [`FAILURES_SHOWN_MAX`]).
    pub not_linearizable: Vec<String>,
    /// How many registers are not linearizable.
    pub not_linearizable_count: u64,
    /// Registers the search gave up on, with why; they do not make the
    /// verdict invalid but leave it unproven there.
    pub unknown: Vec<String>,
}

type RegisterOp = LinearizableOp<RegisterInput<u64>, RegisterOutput<u64>>;

/// Checks every (group, key) register of `operations`.
pub fn check_committed_offsets(operations: &[Operation<QueueOp>]) -> CommittedOffsetsVerdict {
    let mut registers: BTreeMap<(String, Key), (Vec<RegisterOp>, Vec<String>)> = BTreeMap::new();
    for operation in operations {
        let (group, key, op, description) = match (&operation.invoked, operation.outcome) {
            (QueueOp::Commit { group, key, offset }, Outcome::Ok) => (
                group,
                key,
                RegisterOp {
                    call: operation.invoke_ns,
                    ret: operation.complete_ns,
                    input: RegisterInput::Write(*offset),
                    output: Some(RegisterOutput::Written),
                },
                format!("commit {offset} (ok)"),
            ),
            (QueueOp::Commit { group, key, offset }, Outcome::Info) => (
                group,
                key,
                RegisterOp {
                    call: operation.invoke_ns,
                    ret: None,
                    input: RegisterInput::Write(*offset),
                    output: None,
                },
                format!("commit {offset} (unknown)"),
            ),
            (QueueOp::FetchCommitted { group, key, .. }, Outcome::Ok) => {
                let read = match operation.completed.as_ref() {
                    Some(QueueOp::FetchCommitted { offset, .. }) => *offset,
                    _ => continue,
                };
                (
                    group,
                    key,
                    RegisterOp {
                        call: operation.invoke_ns,
                        ret: operation.complete_ns,
                        input: RegisterInput::Read,
                        output: Some(RegisterOutput::Read(read)),
                    },
                    format!("fetch -> {read:?}"),
                )
            }
            _ => continue,
        };
        let entry = registers.entry((group.clone(), *key)).or_default();
        entry.0.push(op);
        entry.1.push(format!(
            "process {} at {} ns: {description}",
            operation.process, operation.invoke_ns
        ));
    }
    let mut verdict = CommittedOffsetsVerdict {
        registers: registers.len() as u64,
        ..Default::default()
    };
    for (ops, descriptions) in registers.values_mut() {
        narrow_unknown_commits(ops, descriptions);
    }
    for ((group, key), (ops, descriptions)) in &registers {
        verdict.operations += ops.len() as u64;
        match check_linearizable(&Register { initial: None }, ops) {
            Linearizability::Linearizable => {}
            Linearizability::NotLinearizable {
                linearized,
                stuck_at,
            } => {
                verdict.not_linearizable_count += 1;
                if verdict.not_linearizable.len() < FAILURES_SHOWN_MAX {
                    let stuck: Vec<&str> = stuck_at
                        .iter()
                        .take(4)
                        .map(|&index| descriptions[index].as_str())
                        .collect();
                    verdict.not_linearizable.push(format!(
                        "group {group} key {key}: after {linearized} operations none of these \
                         can come next: {}",
                        stuck.join("; ")
                    ));
                }
            }
            Linearizability::Unknown(reason) => {
                verdict
                    .unknown
                    .push(format!("group {group} key {key}: {reason}"));
            }
        }
    }
    verdict.valid = verdict.not_linearizable_count == 0;
    verdict
}

/// Narrows one register's unknown commits as the module documentation
/// says, when every commit of the register writes a distinct value.
fn narrow_unknown_commits(ops: &mut Vec<RegisterOp>, descriptions: &mut Vec<String>) {
    let mut written = BTreeSet::new();
    for op in ops.iter() {
        if let RegisterInput::Write(value) = op.input {
            if !written.insert(value) {
                return;
            }
        }
    }
    // The earliest return of a fetch per value it returned.
    let mut first_read_ret: BTreeMap<u64, u64> = BTreeMap::new();
    for op in ops.iter() {
        if let (Some(RegisterOutput::Read(Some(value))), Some(ret)) = (&op.output, op.ret) {
            let earliest = first_read_ret.entry(*value).or_insert(ret);
            *earliest = (*earliest).min(ret);
        }
    }
    let mut kept_ops = Vec::with_capacity(ops.len());
    let mut kept_descriptions = Vec::with_capacity(ops.len());
    for (mut op, description) in ops.drain(..).zip(descriptions.drain(..)) {
        if let (RegisterInput::Write(value), None) = (&op.input, op.ret) {
            match first_read_ret.get(value) {
                None => continue,
                // A fetch that returned before the commit was even sent
                // keeps its order in real time, and the search then fails.
                Some(&read_ret) => {
                    op.ret = Some(read_ret.max(op.call));
                    op.output = Some(RegisterOutput::Written);
                }
            }
        }
        kept_ops.push(op);
        kept_descriptions.push(description);
    }
    *ops = kept_ops;
    *descriptions = kept_descriptions;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        process: u64,
        start: u64,
        end: u64,
        outcome: Outcome,
        invoked: QueueOp,
        completed: QueueOp,
    ) -> Operation<QueueOp> {
        Operation {
            process,
            invoke_ns: start,
            complete_ns: Some(end),
            outcome,
            invoked,
            completed: Some(completed),
            error: None,
        }
    }

    fn commit(
        process: u64,
        start: u64,
        end: u64,
        outcome: Outcome,
        group: &str,
        offset: u64,
    ) -> Operation<QueueOp> {
        let c = QueueOp::Commit {
            group: group.into(),
            key: 0,
            offset,
        };
        op(process, start, end, outcome, c.clone(), c)
    }

    fn fetch(
        process: u64,
        start: u64,
        end: u64,
        group: &str,
        read: Option<u64>,
    ) -> Operation<QueueOp> {
        op(
            process,
            start,
            end,
            Outcome::Ok,
            QueueOp::FetchCommitted {
                group: group.into(),
                key: 0,
                offset: None,
            },
            QueueOp::FetchCommitted {
                group: group.into(),
                key: 0,
                offset: read,
            },
        )
    }

    #[test]
    fn commits_then_fetches_of_the_latest_are_valid() {
        let history = vec![
            fetch(1, 0, 1, "a", None),
            commit(1, 2, 3, Outcome::Ok, "a", 10),
            fetch(2, 4, 5, "a", Some(10)),
            commit(2, 6, 7, Outcome::Fail, "a", 11),
            fetch(1, 8, 9, "a", Some(10)),
            // Another group is another register.
            commit(3, 8, 9, Outcome::Ok, "b", 5),
            fetch(3, 10, 11, "b", Some(5)),
            // An unknown commit that later shows up.
            commit(2, 12, 13, Outcome::Info, "a", 12),
            fetch(1, 20, 21, "a", Some(12)),
        ];
        let verdict = check_committed_offsets(&history);
        assert!(verdict.valid, "{verdict:#?}");
        assert_eq!(verdict.registers, 2);
        assert_eq!(verdict.operations, 8, "the failed commit is left out");
        assert!(check_committed_offsets(&[]).valid);
    }

    #[test]
    fn a_fetch_of_an_overwritten_offset_is_not_linearizable() {
        let history = vec![
            commit(1, 0, 1, Outcome::Ok, "a", 10),
            commit(1, 2, 3, Outcome::Ok, "a", 11),
            fetch(2, 4, 5, "a", Some(10)),
            commit(3, 0, 1, Outcome::Ok, "b", 1),
        ];
        let verdict = check_committed_offsets(&history);
        assert!(!verdict.valid);
        assert_eq!(verdict.not_linearizable_count, 1);
        assert!(
            verdict.not_linearizable[0].contains("group a key 0"),
            "{verdict:#?}"
        );
        assert!(
            verdict.not_linearizable[0].contains("fetch -> Some(10)"),
            "{verdict:#?}"
        );
    }

    #[test]
    fn a_fetch_of_a_failed_commit_is_not_linearizable() {
        let history = vec![
            commit(1, 0, 1, Outcome::Fail, "a", 10),
            fetch(2, 4, 5, "a", Some(10)),
        ];
        assert!(!check_committed_offsets(&history).valid);
    }

    #[test]
    fn a_committed_offset_that_disappears_is_not_linearizable() {
        let history = vec![
            commit(1, 0, 1, Outcome::Ok, "a", 10),
            fetch(2, 4, 5, "a", None),
        ];
        assert!(!check_committed_offsets(&history).valid);
    }

    fn unknown_commit(process: u64, start: u64, group: &str, offset: u64) -> Operation<QueueOp> {
        Operation {
            process,
            invoke_ns: start,
            complete_ns: None,
            outcome: Outcome::Info,
            invoked: QueueOp::Commit {
                group: group.into(),
                key: 0,
                offset,
            },
            completed: None,
            error: None,
        }
    }

    /// A client that commits through a long partition leaves hundreds of
    /// commits unknown; without narrowing them the search gives up.
    #[test]
    fn many_unknown_commits_are_decided() {
        let mut history = Vec::new();
        let mut time = 0;
        for offset in 0..400 {
            history.push(unknown_commit(1, time, "a", offset));
            time += 2;
        }
        history.push(commit(1, time, time + 1, Outcome::Ok, "a", 1_000));
        history.push(fetch(2, time + 2, time + 3, "a", Some(1_000)));
        let verdict = check_committed_offsets(&history);
        assert!(verdict.valid, "{verdict:#?}");
        assert!(verdict.unknown.is_empty(), "{verdict:#?}");
        assert_eq!(
            verdict.operations, 2,
            "unobserved unknown commits are left out"
        );

        // One of them was seen, then an older acknowledged value came back:
        // still caught.
        history.push(fetch(3, time + 4, time + 5, "a", Some(7)));
        history.push(fetch(2, time + 6, time + 7, "a", Some(1_000)));
        let verdict = check_committed_offsets(&history);
        assert!(!verdict.valid, "{verdict:#?}");
        assert!(verdict.unknown.is_empty(), "{verdict:#?}");
    }

    /// An unknown commit that a fetch saw happened before that fetch
    /// returned, so a fetch after it cannot see the value it overwrote.
    #[test]
    fn a_seen_unknown_commit_took_effect_before_the_fetch_returned() {
        let history = vec![
            commit(1, 0, 1, Outcome::Ok, "a", 10),
            unknown_commit(1, 2, "a", 11),
            fetch(2, 3, 4, "a", Some(11)),
            fetch(3, 5, 6, "a", Some(10)),
        ];
        assert!(!check_committed_offsets(&history).valid);
        // Reading 10 first and 11 after is fine.
        let history = vec![
            commit(1, 0, 1, Outcome::Ok, "a", 10),
            unknown_commit(1, 2, "a", 11),
            fetch(3, 3, 4, "a", Some(10)),
            fetch(2, 5, 6, "a", Some(11)),
        ];
        assert!(check_committed_offsets(&history).valid);
        // A fetch that returned a commit's value before the commit was
        // sent is not linearizable.
        let history = vec![fetch(2, 0, 1, "a", Some(11)), unknown_commit(1, 2, "a", 11)];
        assert!(!check_committed_offsets(&history).valid);
    }
}
