//! The in-memory view of a replica's log: a snapshot point followed by
//! contiguous entries (docs/protocol.md §2.1, §8).

use crate::types::{Config, Entry, Index, Payload, SnapshotMeta, Term};

#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Everything at or below `snapshot.index` is compacted away.
    snapshot: SnapshotMeta,
    /// `entries[k].index == snapshot.index + 1 + k`.
    entries: Vec<Entry>,
}

impl Log {
    pub fn new(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Log {
        let log = Log { snapshot, entries };
        log.assert_contiguous();
        log
    }

    fn assert_contiguous(&self) {
        let mut previous_term = self.snapshot.term;
        for (offset, entry) in self.entries.iter().enumerate() {
            assert_eq!(entry.index, self.snapshot.index + 1 + offset as u64);
            // §5.2: terms never decrease along a log.
            assert!(
                entry.term >= previous_term,
                "log terms decrease at {}",
                entry.index
            );
            previous_term = entry.term;
        }
    }

    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot.term, |entry| entry.term)
    }

    /// The term of the entry at `index`, if the log still knows it (the
    /// snapshot point counts).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot.index || index > self.last_index() {
            return None;
        }
        let entry = &self.entries[(index - self.snapshot.index - 1) as usize];
        debug_assert_eq!(entry.index, index);
        Some(entry)
    }

    /// Entries in `[from, to]`, at most `count_max` of them and at most
    /// `bytes_max` bytes (but always at least one if any is in range).
    pub fn slice(&self, from: Index, to: Index, count_max: usize, bytes_max: usize) -> Vec<Entry> {
        assert!(from > self.snapshot.index, "slice below the snapshot point");
        let mut result = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while index <= to.min(self.last_index()) && result.len() < count_max {
            let entry = self.entry(index).expect("index within log bounds");
            bytes += entry.size_bytes();
            if !result.is_empty() && bytes > bytes_max {
                break;
            }
            result.push(entry.clone());
            index += 1;
        }
        result
    }

    /// Appends one entry at the end.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "append must be contiguous"
        );
        assert!(
            entry.term >= self.last_term(),
            "append must not decrease the term"
        );
        self.entries.push(entry);
    }

    /// Removes every entry at or after `index`. Requires `index` above the
    /// snapshot point: compacted entries are committed and never truncated.
    pub fn truncate_from(&mut self, index: Index) {
        assert!(index > self.snapshot.index, "truncating compacted entries");
        let keep = (index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
    }

    /// Replaces the prefix up to `meta.index` by a snapshot point. Entries
    /// after it are kept when the log holds `(meta.index, meta.term)`;
    /// otherwise the whole log is discarded (§8).
    pub fn compact_to(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.index >= self.snapshot.index,
            "snapshot moves backwards"
        );
        if self.term_at(meta.index) == Some(meta.term) && meta.index <= self.last_index() {
            let drop = (meta.index - self.snapshot.index) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.snapshot = meta;
        self.assert_contiguous();
    }

    /// The membership in force after the log's last entry: the latest config
    /// entry, appended or not (§7.1), else the snapshot's. Returns the index
    /// of the entry that set it (the snapshot index for the snapshot's).
    pub fn latest_config(&self) -> (Index, Config) {
        for entry in self.entries.iter().rev() {
            if let Payload::Config(config) = &entry.payload {
                return (entry.index, config.clone());
            }
        }
        (self.snapshot.index, self.snapshot.config.clone())
    }

    /// The membership in force at `index` (for the snapshot taken there).
    pub fn config_at(&self, index: Index) -> Config {
        assert!(index >= self.snapshot.index && index <= self.last_index());
        for entry in self.entries.iter().rev() {
            if entry.index <= index {
                if let Payload::Config(config) = &entry.payload {
                    return config.clone();
                }
            }
        }
        self.snapshot.config.clone()
    }

    /// §5.3: the first index of the run of entries with the same term as
    /// the entry at `index`, not going below `floor`. Lets a follower's
    /// rejection skip a whole conflicting term at once.
    pub fn first_index_of_term_run(&self, index: Index, floor: Index) -> Index {
        let Some(term) = self.term_at(index) else {
            return index;
        };
        let mut first = index;
        while first > floor.max(self.first_index()) && self.term_at(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: Payload::Noop,
        }
    }

    #[test]
    fn truncate_and_compact() {
        let mut log = Log::default();
        for (index, term) in [(1, 1), (2, 1), (3, 2), (4, 2)] {
            log.push(entry(index, term));
        }
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.first_index_of_term_run(4, 0), 3);
        log.truncate_from(4);
        assert_eq!(log.last_index(), 3);
        log.compact_to(SnapshotMeta {
            index: 2,
            term: 1,
            config: Config::default(),
        });
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term_at(2), Some(1));
        assert_eq!(log.term_at(1), None);
        assert_eq!(log.entries().len(), 1);
        // A snapshot whose point the log does not hold discards the log.
        log.compact_to(SnapshotMeta {
            index: 3,
            term: 3,
            config: Config::default(),
        });
        assert_eq!(log.last_index(), 3);
        assert!(log.entries().is_empty());
    }

    #[test]
    #[should_panic(expected = "contiguous")]
    fn gaps_are_programmer_errors() {
        let mut log = Log::default();
        log.push(entry(2, 1));
    }
}
