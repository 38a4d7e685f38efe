//! A deterministic timed queue: items ordered by (time, insertion sequence).
//!
//! Two items due at the same millisecond come out in the order they were
//! pushed, so the simulation never depends on heap internals.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

struct Slot<T> {
    at: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Slot<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}

impl<T> Eq for Slot<T> {}

impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Slot<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

pub struct TimedQueue<T> {
    heap: BinaryHeap<Slot<T>>,
    next_seq: u64,
}

impl<T> Default for TimedQueue<T> {
    fn default() -> Self {
        TimedQueue::new()
    }
}

impl<T> TimedQueue<T> {
    pub fn new() -> TimedQueue<T> {
        TimedQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    pub fn push(&mut self, at: u64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Slot { at, seq, item });
    }

    /// Pushes an item again under the sequence number it had (from
    /// `pop_due_keyed`), so that it keeps its place among items due together.
    pub fn push_keyed(&mut self, at: u64, seq: u64, item: T) {
        self.heap.push(Slot { at, seq, item });
    }

    /// Like `pop_due`, with the item's sequence number: `(at, seq, item)`.
    pub fn pop_due_keyed(&mut self, now: u64) -> Option<(u64, u64, T)> {
        if self.next_at()? <= now {
            self.heap.pop().map(|slot| (slot.at, slot.seq, slot.item))
        } else {
            None
        }
    }

    /// The time of the earliest item.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|slot| slot.at)
    }

    /// The earliest item if it is due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, T)> {
        if self.next_at()? <= now {
            self.heap.pop().map(|slot| (slot.at, slot.item))
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Removes every item for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|slot| keep(&slot.item));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_by_time_then_insertion_order() {
        let mut queue = TimedQueue::new();
        queue.push(5, "c");
        queue.push(1, "a");
        queue.push(5, "d");
        queue.push(1, "b");
        assert_eq!(queue.pop_due(0), None);
        let mut order = Vec::new();
        while let Some((_, item)) = queue.pop_due(10) {
            order.push(item);
        }
        assert_eq!(order, vec!["a", "b", "c", "d"]);
    }
}
