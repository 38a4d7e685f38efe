//! A linearizability checker in the style of Wing & Gong as improved by Lowe
//! (and Porcupine): generic over a sequential [`Model`], it searches for an
//! order of the operations that respects real time (an operation that
//! completed before another was invoked comes first) and that the model
//! accepts, backtracking with a cache of (operations linearized, state)
//! pairs already explored.
//!
//! An operation whose outcome is unknown (it never completed, or completed as
//! `info`) may take effect at any time after its invocation, or never: the
//! search may linearize it anywhere after its call, and succeeds once every
//! completed operation is linearized. Its output is unknown, so the model is
//! asked for the state it would leave with no output to match.
//!
//! Checking is NP-complete in general; [`SEARCH_STEPS_MAX`] bounds the work,
//! past which the result is [`Linearizability::Unknown`] rather than a hang.
//! Check independent objects (each consumer group's committed offset of each
//! partition) one at a time: linearizability is compositional.
//!
//! [`Register`] is the model for committed consumer offsets: a commit writes,
//! a fetch of the committed offset reads.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// At most this many operations are checked in one history.
pub const OPERATIONS_MAX: usize = 100_000;
/// At most this many search steps before giving up with `Unknown`.
pub const SEARCH_STEPS_MAX: u64 = 10_000_000;

/// A sequential specification of an object.
pub trait Model {
    /// The object's state; hashed for the search's cache.
    type State: Clone + Eq + Hash + Debug;
    /// What an operation asks.
    type Input: Clone + Debug;
    /// What an operation returned.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` is applied to `state` and returns `output`,
    /// or `None` when it could not have returned `output` there. With no
    /// output (an operation whose outcome is unknown), the state it would
    /// leave if it took effect, or `None` if it could not take effect.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history to check.
#[derive(Clone, Debug)]
pub struct LinearizableOp<I, O> {
    /// When it was invoked (any monotonic unit).
    pub call: u64,
    /// When it returned; `None` when its outcome is unknown.
    pub ret: Option<u64>,
    /// What it asked.
    pub input: I,
    /// What it returned; `None` when its outcome is unknown.
    pub output: Option<O>,
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linearizability {
    /// Some order of the operations respects real time and the model.
    Linearizable,
    /// None does. `stuck_at` lists the completed operations (by index in the
    /// history) that the deepest attempt could not place next: one of them
    /// is where the history breaks.
    NotLinearizable {
        /// The most completed operations any attempt linearized.
        linearized: usize,
        /// Indexes of the operations that could not come next at that point.
        stuck_at: Vec<usize>,
    },
    /// The search was cut off: the history is too long, or needed more than
    /// [`SEARCH_STEPS_MAX`] steps.
    Unknown(String),
}

/// An entry of the time-ordered event list: the call or return of an op.
#[derive(Clone, Copy, Debug)]
struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Checks whether `history` is linearizable with respect to `model`.
pub fn check_linearizable<M: Model>(
    model: &M,
    history: &[LinearizableOp<M::Input, M::Output>],
) -> Linearizability {
    if history.len() > OPERATIONS_MAX {
        return Linearizability::Unknown(format!(
            "{} operations, more than {OPERATIONS_MAX}",
            history.len()
        ));
    }
    // Events in time order; a call sorts before a return at the same time, so
    // that operations touching at one instant count as concurrent (the
    // lenient reading: equal timestamps do not prove an order).
    let mut events: Vec<(u64, u8, usize, bool)> = Vec::with_capacity(history.len() * 2);
    for (index, op) in history.iter().enumerate() {
        events.push((op.call, 0, index, true));
        events.push((op.ret.unwrap_or(u64::MAX), 1, index, false));
    }
    events.sort_unstable();
    // A doubly linked list with a head sentinel at 0 and entries from 1.
    let head = 0usize;
    let mut entries = vec![Entry {
        op: usize::MAX,
        is_call: false,
        prev: 0,
        next: 1,
    }];
    let mut call_entry = vec![0usize; history.len()];
    let mut return_entry = vec![0usize; history.len()];
    for (position, &(_, _, op, is_call)) in events.iter().enumerate() {
        let slot = position + 1;
        entries.push(Entry {
            op,
            is_call,
            prev: slot - 1,
            next: if position + 1 == events.len() {
                usize::MAX
            } else {
                slot + 1
            },
        });
        if is_call {
            call_entry[op] = slot;
        } else {
            return_entry[op] = slot;
        }
    }
    if events.is_empty() {
        return Linearizability::Linearizable;
    }
    let completed_total = history.iter().filter(|op| op.ret.is_some()).count();

    let unlink = |entries: &mut Vec<Entry>, slot: usize| {
        let Entry { prev, next, .. } = entries[slot];
        entries[prev].next = next;
        if next != usize::MAX {
            entries[next].prev = prev;
        }
    };
    let relink = |entries: &mut Vec<Entry>, slot: usize| {
        let Entry { prev, next, .. } = entries[slot];
        entries[prev].next = slot;
        if next != usize::MAX {
            entries[next].prev = slot;
        }
    };

    let words = history.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut completed_linearized = 0usize;
    let mut deepest = 0usize;
    let mut stuck_at: Vec<usize> = Vec::new();
    let mut cursor = entries[head].next;
    let mut steps = 0u64;
    loop {
        if completed_linearized == completed_total {
            return Linearizability::Linearizable;
        }
        steps += 1;
        if steps > SEARCH_STEPS_MAX {
            return Linearizability::Unknown(format!(
                "gave up after {SEARCH_STEPS_MAX} search steps"
            ));
        }
        if cursor == usize::MAX {
            // Every call is followed by its return, and a return is never
            // passed without linearizing its operation, so the end of the
            // list lies past every completed return: the check above has
            // already succeeded. Reaching it anyway is a bug in this search,
            // reported rather than panicked on.
            return Linearizability::Unknown("the search ran past the last event".into());
        }
        let entry = entries[cursor];
        if entry.is_call {
            let op = &history[entry.op];
            if let Some(next_state) = model.step(&state, &op.input, op.output.as_ref()) {
                let mut bits = linearized.clone();
                bits[entry.op / 64] |= 1 << (entry.op % 64);
                if cache.insert((bits.clone(), next_state.clone())) {
                    stack.push((cursor, state));
                    state = next_state;
                    linearized = bits;
                    if op.ret.is_some() {
                        completed_linearized += 1;
                    }
                    unlink(&mut entries, cursor);
                    unlink(&mut entries, return_entry[entry.op]);
                    cursor = entries[head].next;
                    continue;
                }
            }
            cursor = entry.next;
            continue;
        }
        // A return: every operation before it must be linearized first.
        if completed_linearized >= deepest {
            if completed_linearized > deepest {
                stuck_at.clear();
            }
            deepest = completed_linearized;
            let mut probe = entries[head].next;
            while probe != usize::MAX && probe != cursor {
                let candidate = entries[probe];
                if candidate.is_call
                    && history[candidate.op].ret.is_some()
                    && !stuck_at.contains(&candidate.op)
                {
                    stuck_at.push(candidate.op);
                }
                probe = candidate.next;
            }
            if !stuck_at.contains(&entry.op) {
                stuck_at.push(entry.op);
            }
        }
        let Some((call_slot, previous_state)) = stack.pop() else {
            stuck_at.sort_unstable();
            return Linearizability::NotLinearizable {
                linearized: deepest,
                stuck_at,
            };
        };
        let op = entries[call_slot].op;
        state = previous_state;
        linearized[op / 64] &= !(1 << (op % 64));
        if history[op].ret.is_some() {
            completed_linearized -= 1;
        }
        relink(&mut entries, return_entry[op]);
        relink(&mut entries, call_slot);
        cursor = entries[call_slot].next;
        debug_assert!(call_entry[op] == call_slot);
    }
}

/// A register holding one value, initially `initial`.
#[derive(Clone, Debug)]
pub struct Register<V> {
    /// The value before any write (`None`: nothing committed yet).
    pub initial: Option<V>,
}

/// What a register operation asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput<V> {
    /// Write the value (commit an offset).
    Write(V),
    /// Read the value (fetch the committed offset).
    Read,
}

/// What a register operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput<V> {
    /// The write took effect.
    Written,
    /// The value read (`None`: nothing written yet).
    Read(Option<V>),
}

impl<V: Clone + Eq + Hash + Debug> Model for Register<V> {
    type State = Option<V>;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> Self::State {
        self.initial.clone()
    }

    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State> {
        match (input, output) {
            (RegisterInput::Write(value), None | Some(RegisterOutput::Written)) => {
                Some(Some(value.clone()))
            }
            (RegisterInput::Read, None) => Some(state.clone()),
            (RegisterInput::Read, Some(RegisterOutput::Read(read))) => {
                (read == state).then(|| state.clone())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = LinearizableOp<RegisterInput<u64>, RegisterOutput<u64>>;

    fn write(call: u64, ret: u64, value: u64) -> Op {
        LinearizableOp {
            call,
            ret: Some(ret),
            input: RegisterInput::Write(value),
            output: Some(RegisterOutput::Written),
        }
    }

    fn read(call: u64, ret: u64, value: Option<u64>) -> Op {
        LinearizableOp {
            call,
            ret: Some(ret),
            input: RegisterInput::Read,
            output: Some(RegisterOutput::Read(value)),
        }
    }

    fn unknown_write(call: u64, value: u64) -> Op {
        LinearizableOp {
            call,
            ret: None,
            input: RegisterInput::Write(value),
            output: None,
        }
    }

    fn check(history: &[Op]) -> Linearizability {
        check_linearizable(&Register { initial: None }, history)
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let history = [
            read(0, 1, None),
            write(2, 3, 5),
            read(4, 5, Some(5)),
            write(6, 7, 6),
            read(8, 9, Some(6)),
        ];
        assert_eq!(check(&history), Linearizability::Linearizable);
        assert_eq!(check(&[]), Linearizability::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        let history = [write(0, 1, 5), write(2, 3, 6), read(4, 5, Some(5))];
        assert_eq!(
            check(&history),
            Linearizability::NotLinearizable {
                linearized: 2,
                stuck_at: vec![2],
            }
        );
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the write of 6, so it may see 5 or 6.
        let history = [
            write(0, 1, 5),
            write(2, 10, 6),
            read(3, 4, Some(5)),
            read(5, 6, Some(6)),
        ];
        assert_eq!(check(&history), Linearizability::Linearizable);
        let history = [
            write(0, 1, 5),
            write(2, 10, 6),
            read(3, 4, Some(6)),
            read(5, 6, Some(6)),
        ];
        assert_eq!(check(&history), Linearizability::Linearizable);
        // But two reads may not see 6 and then 5 again.
        let history = [
            write(0, 1, 5),
            write(2, 10, 6),
            read(3, 4, Some(6)),
            read(5, 6, Some(5)),
        ];
        assert!(matches!(
            check(&history),
            Linearizability::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_not_linearizable() {
        let history = [write(0, 1, 5), read(2, 3, Some(9))];
        assert!(matches!(
            check(&history),
            Linearizability::NotLinearizable { .. }
        ));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        // It takes effect after the first read.
        let history = [unknown_write(0, 7), read(1, 2, None), read(3, 4, Some(7))];
        assert_eq!(check(&history), Linearizability::Linearizable);
        // It never takes effect.
        let history = [unknown_write(0, 7), read(3, 4, None)];
        assert_eq!(check(&history), Linearizability::Linearizable);
        // But not before it was invoked.
        let history = [read(0, 1, Some(7)), unknown_write(2, 7)];
        assert!(matches!(
            check(&history),
            Linearizability::NotLinearizable { .. }
        ));
        // And once seen it does not disappear again.
        let history = [unknown_write(0, 7), read(1, 2, Some(7)), read(3, 4, None)];
        assert!(matches!(
            check(&history),
            Linearizability::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_long_sequential_history_is_checked_quickly() {
        let mut history = Vec::new();
        for step in 0..2_000u64 {
            history.push(write(step * 4, step * 4 + 1, step));
            history.push(read(step * 4 + 2, step * 4 + 3, Some(step)));
        }
        assert_eq!(check(&history), Linearizability::Linearizable);
        history.push(read(10_000_000, 10_000_001, Some(3)));
        assert!(matches!(
            check(&history),
            Linearizability::NotLinearizable { .. }
        ));
    }
}
