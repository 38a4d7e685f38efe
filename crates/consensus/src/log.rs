//! The in-memory view of a replica's log: a snapshot point followed by
//! contiguous entries (docs/protocol.md §2.1, §8), and the terms of entries
//! below the snapshot point that storage still holds on disk (§8.1), which a
//! leader reads back to catch up a lagging follower instead of sending a
//! snapshot.

use crate::types::{Config, Entry, Index, Payload, SnapshotMeta, Term};

#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Everything at or below `snapshot.index` is compacted away.
    snapshot: SnapshotMeta,
    /// `entries[k].index == snapshot.index + 1 + k`.
    entries: Vec<Entry>,
    /// Entries at or below the snapshot point still readable from disk, as
    /// runs of `(first index, term)`, ascending, covering
    /// `[retained_first(), snapshot.index]` without a gap. Empty when none
    /// are retained.
    retained: Vec<(Index, Term)>,
}

impl Log {
    pub fn new(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Log {
        let log = Log {
            snapshot,
            entries,
            retained: Vec::new(),
        };
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
        if index < self.snapshot.index {
            return self.retained_term_at(index);
        }
        self.entry(index).map(|entry| entry.term)
    }

    fn retained_term_at(&self, index: Index) -> Option<Term> {
        let first = self.retained.first()?.0;
        if index < first || index > self.snapshot.index {
            return None;
        }
        let run = self.retained.partition_point(|(start, _)| *start <= index) - 1;
        Some(self.retained[run].1)
    }

    /// The first index still readable from disk: below the snapshot point
    /// when storage retains older entries, else `snapshot.index + 1`.
    pub fn retained_first(&self) -> Index {
        self.retained
            .first()
            .map_or(self.snapshot.index + 1, |(first, _)| *first)
    }

    /// Declares that storage holds the entries from `first` up to the
    /// snapshot point, with these term runs (recovery's report). Runs must
    /// start at `first`, ascend, and stay at or below the snapshot point.
    pub fn set_retained(&mut self, runs: Vec<(Index, Term)>) {
        for pair in runs.windows(2) {
            assert!(
                pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1,
                "runs ascend"
            );
        }
        if let Some(last) = runs.last() {
            assert!(
                last.0 <= self.snapshot.index,
                "retained runs above the snapshot"
            );
            assert!(
                last.1 <= self.snapshot.term,
                "retained terms above the snapshot's"
            );
        }
        self.retained = runs;
    }

    /// Whether `entries` may go just below the retained run (§8.2): non-empty,
    /// contiguous, ending at `retained_first() - 1`, with terms that never
    /// decrease and fit below the term of the entry above them (at the
    /// snapshot index, the snapshot's term exactly). A chunk from a peer is
    /// checked with this before anything is stored.
    pub fn fits_below_retained(&self, entries: &[Entry]) -> bool {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return false;
        };
        let first_retained = self.retained_first();
        let contiguous = entries
            .windows(2)
            .all(|pair| pair[1].index == pair[0].index + 1 && pair[1].term >= pair[0].term);
        let term_fits = if last.index == self.snapshot.index {
            last.term == self.snapshot.term
        } else {
            self.retained
                .first()
                .is_some_and(|&(_, term)| last.term <= term)
        };
        first.index >= 1
            && last.index + 1 == first_retained
            && last.index <= self.snapshot.index
            && contiguous
            && term_fits
    }

    /// Storage now holds `entries` just below the retained run (§8.2):
    /// remember their terms. Panics unless `fits_below_retained(entries)`.
    pub fn prepend_retained(&mut self, entries: &[Entry]) {
        assert!(
            self.fits_below_retained(entries),
            "prepended entries do not fit below the retained run"
        );
        let mut runs: Vec<(Index, Term)> = Vec::new();
        for entry in entries {
            if runs.last().is_none_or(|&(_, term)| term != entry.term) {
                runs.push((entry.index, entry.term));
            }
        }
        match (runs.last(), self.retained.first()) {
            (Some(&(_, below)), Some(&(_, above))) if below == above => {
                self.retained.remove(0);
            }
            _ => {}
        }
        runs.append(&mut self.retained);
        self.retained = runs;
    }

    /// Storage deleted every entry below `index`: forget their terms.
    pub fn discard_retained_below(&mut self, index: Index) {
        if index > self.snapshot.index {
            self.retained.clear();
            return;
        }
        let keep_from = self.retained.partition_point(|(start, _)| *start <= index);
        if keep_from == 0 {
            return;
        }
        let (_, term) = self.retained[keep_from - 1];
        self.retained.drain(..keep_from);
        self.retained.insert(0, (index, term));
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
            // The compacted entries stay on disk until storage deletes them
            // (`discard_retained_below`): remember their terms.
            for entry in self.entries.drain(..drop) {
                if self
                    .retained
                    .last()
                    .is_none_or(|(_, term)| *term != entry.term)
                {
                    self.retained.push((entry.index, entry.term));
                }
            }
        } else {
            self.entries.clear();
            self.retained.clear();
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
        // Compacted entries stay known, as retained on disk, until storage
        // deletes them.
        assert_eq!(log.term_at(1), Some(1));
        assert_eq!(log.retained_first(), 1);
        log.discard_retained_below(2);
        assert_eq!(log.term_at(1), None);
        assert_eq!(log.retained_first(), 2);
        assert_eq!(log.entries().len(), 1);
        // A snapshot whose point the log does not hold discards the log.
        log.compact_to(SnapshotMeta {
            index: 3,
            term: 3,
            config: Config::default(),
        });
        assert_eq!(log.last_index(), 3);
        assert!(log.entries().is_empty());
        assert_eq!(log.retained_first(), 4, "nothing below it is consistent");
        assert_eq!(log.term_at(2), None);
    }

    #[test]
    fn retained_runs_answer_terms_below_the_snapshot() {
        let mut log = Log::default();
        for (index, term) in [(1, 1), (2, 1), (3, 2), (4, 3), (5, 3), (6, 3)] {
            log.push(entry(index, term));
        }
        log.compact_to(SnapshotMeta {
            index: 5,
            term: 3,
            config: Config::default(),
        });
        let terms: Vec<Option<Term>> = (0..=6).map(|index| log.term_at(index)).collect();
        assert_eq!(
            terms,
            vec![None, Some(1), Some(1), Some(2), Some(3), Some(3), Some(3)]
        );
        log.discard_retained_below(3);
        assert_eq!(log.term_at(2), None);
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(4), Some(3));
        log.discard_retained_below(6);
        assert_eq!(log.term_at(4), None);
        assert_eq!(log.term_at(5), Some(3));
        assert_eq!(log.retained_first(), 6);
    }

    #[test]
    fn prepended_entries_join_the_retained_runs() {
        // A snapshot at 6 (term 3) that replaced the log: nothing retained.
        let mut log = Log::default();
        log.compact_to(SnapshotMeta {
            index: 6,
            term: 3,
            config: Config::default(),
        });
        assert_eq!(log.retained_first(), 7);
        // The chunk at the snapshot index must carry the snapshot's term.
        assert!(!log.fits_below_retained(&[entry(5, 3), entry(6, 2)]));
        assert!(
            !log.fits_below_retained(&[entry(4, 3), entry(5, 3)]),
            "a gap"
        );
        assert!(!log.fits_below_retained(&[]));
        log.prepend_retained(&[entry(5, 3), entry(6, 3)]);
        assert_eq!(log.retained_first(), 5);
        // Below, terms must not exceed the term above them.
        assert!(!log.fits_below_retained(&[entry(4, 4)]));
        assert!(
            !log.fits_below_retained(&[entry(3, 3), entry(4, 2)]),
            "decreasing"
        );
        log.prepend_retained(&[entry(2, 1), entry(3, 2), entry(4, 3)]);
        let terms: Vec<Option<Term>> = (0..=7).map(|index| log.term_at(index)).collect();
        assert_eq!(
            terms,
            vec![
                None,
                None,
                Some(1),
                Some(2),
                Some(3),
                Some(3),
                Some(3),
                None
            ]
        );
        assert_eq!(log.retained, vec![(2, 1), (3, 2), (4, 3)], "runs merged");
        log.prepend_retained(&[entry(1, 1)]);
        assert_eq!(log.retained_first(), 1);
        assert!(!log.fits_below_retained(&[entry(0, 1)]));
    }

    #[test]
    #[should_panic(expected = "contiguous")]
    fn gaps_are_programmer_errors() {
        let mut log = Log::default();
        log.push(entry(2, 1));
    }
}
