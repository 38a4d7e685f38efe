//! Random sequences of appends (with conflict truncation), vote saves,
//! snapshots (compacting, beyond the log, conflicting with the log) and syncs,
//! with crashes at random points, including in the middle of one plan's ops.
//!
//! The model keeps the states the store passed through since everything was
//! last durable. After a crash, recovery must return:
//! - a vote record and a snapshot from one of those states, never older than
//!   the last completed `sync_ops` (vote) or `save_snapshot`/`sync_ops`
//!   (snapshot);
//! - a log that is a prefix of one of those states' logs, containing every
//!   entry that was durable and that no later plan removed;
//! - exactly the last synced state when the crash came right after a
//!   completed `sync_ops`;
//! - no corruption report unless the crash kept a random subset of the
//!   unsynced ops (which can leave holes in the unsynced tail, reported
//!   conservatively as corruption).
//!
//! After each completed `sync_ops` the test double must have no uncovered op
//! left: that checks `sync_ops` covers every write, create and delete.
//!
//! Half the cases run with `retain_below_snapshot`, with discards of retained
//! entries among the actions: between crashes, reading back every retained
//! entry (`plan_read`) must give exactly the entries that snapshots covered
//! since, from `retained_first` to the snapshot index; after a crash, every
//! retained entry recovery kept must read back intact, with the terms it
//! reported, up to the snapshot's own index and term.

use std::collections::BTreeMap;

use proptest::prelude::*;
use runnel_consensus::{Config, Entry, HardState, Payload, Snapshot, SnapshotMeta};
use runnel_io::{Disk, DiskOp, DiskOutput};
use runnel_storage::{GroupStore, Recovered, StoreOptions};

use crate::support::{Crash, MemDisk};

const GROUP: u64 = 3;

#[derive(Clone, Debug)]
enum Action {
    Append {
        /// Where a conflicting append starts, if the log is not empty.
        conflict: Option<u16>,
        count: u8,
        bump_term: bool,
        seed: u8,
    },
    Vote {
        bump_term: bool,
        vote: Option<u8>,
        commit: u16,
    },
    Snapshot {
        /// 0: at an entry of the log, 1: beyond the log, 2: at an entry of
        /// the log but with another term.
        kind: u8,
        pick: u16,
        size: u8,
    },
    Sync,
    /// Discards retained entries below a point picked between the retained
    /// first index and the snapshot index + 1.
    Discard {
        pick: u16,
    },
}

#[derive(Clone, Debug)]
struct CrashPlan {
    /// How many of the plan's ops are applied before the crash; values from
    /// 0x8000 on mean all of them.
    after: u16,
    /// 0: drop everything unsynced, 1: keep a prefix and tear the next
    /// write, 2: keep a random subset.
    mode: u8,
    seed: u64,
    /// Whether the node submits `repair_ops` before its next plan.
    repair_first: bool,
}

#[derive(Clone, Debug)]
struct Step {
    action: Action,
    crash: Option<CrashPlan>,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        5 => (
            prop::option::weighted(0.3, any::<u16>()),
            1u8..6,
            prop::bool::weighted(0.2),
            any::<u8>()
        )
            .prop_map(|(conflict, count, bump_term, seed)| Action::Append {
                conflict,
                count,
                bump_term,
                seed
            }),
        2 => (
            prop::bool::weighted(0.4),
            prop::option::of(0u8..5),
            any::<u16>()
        )
            .prop_map(|(bump_term, vote, commit)| Action::Vote {
                bump_term,
                vote,
                commit
            }),
        1 => (0u8..3, any::<u16>(), any::<u8>())
            .prop_map(|(kind, pick, size)| Action::Snapshot { kind, pick, size }),
        3 => Just(Action::Sync),
        1 => any::<u16>().prop_map(|pick| Action::Discard { pick }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let crash = (any::<u16>(), 0u8..3, any::<u64>(), any::<bool>()).prop_map(
        |(after, mode, seed, repair_first)| CrashPlan {
            after,
            mode,
            seed,
            repair_first,
        },
    );
    (action(), prop::option::weighted(0.15, crash))
        .prop_map(|(action, crash)| Step { action, crash })
}

/// What the store holds, as the node sees it.
#[derive(Clone, Debug, PartialEq)]
struct State {
    snapshot: Option<Snapshot>,
    /// Every entry after the snapshot.
    log: Vec<Entry>,
    hard: HardState,
}

impl State {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    fn last_index(&self) -> u64 {
        self.snapshot_index() + self.log.len() as u64
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        let first = self.snapshot_index() + 1;
        if index < first {
            return None;
        }
        self.log.get((index - first) as usize)
    }

    fn term_at(&self, index: u64) -> u64 {
        if index == self.snapshot_index() {
            return self.snapshot.as_ref().map_or(0, |s| s.meta.term);
        }
        self.entry(index).expect("index in the log").term
    }
}

fn make_entry(index: u64, term: u64, seed: u8) -> Entry {
    let mix = u64::from(seed).wrapping_add(index);
    let payload = match mix % 4 {
        0 => Payload::Noop,
        1 => Payload::Config(Config {
            voters: [1, 2, mix % 7].into_iter().collect(),
            learners: [9].into_iter().collect(),
        }),
        _ => Payload::Data(vec![mix as u8; (mix.wrapping_mul(31) % 60) as usize]),
    };
    Entry {
        index,
        term,
        payload,
    }
}

struct Harness {
    disk: MemDisk,
    store: GroupStore,
    options: StoreOptions,
    state: State,
    /// States since everything was last durable; `history[0]` is that state.
    history: Vec<State>,
    /// Position in `history` of the last completed `save_snapshot`.
    snapshot_floor: usize,
    /// The highest term used so far: new terms are always above it, so that
    /// every log stays ordered by term.
    term: u64,
    /// The last recovery reported corruption, whose evidence stays on disk
    /// until a plan that writes the log completes.
    evidence: bool,
    /// With retention: the entries snapshots covered, by index, that the
    /// store must still serve from `retained_first` on.
    below: BTreeMap<u64, Entry>,
    /// The clock appends are planned at (`append_at`): it moves on by 0 to
    /// 1.2 `MODEL_SEGMENT_MS` before each append, so that segments also
    /// roll by age, and the crashes hit those rolls too.
    now_ms: u64,
}

/// The age after which the model's segments roll.
const MODEL_SEGMENT_MS: u64 = runnel_storage::SEGMENT_MS_MIN;

impl Harness {
    fn new(segment_bytes_max: u64, retain_below_snapshot: bool) -> Harness {
        let options = StoreOptions {
            segment_bytes_max,
            segment_ms: MODEL_SEGMENT_MS,
            retain_below_snapshot,
        };
        let mut disk = MemDisk::new();
        let (store, ops) = GroupStore::create(GROUP, options.clone(), &HardState::default());
        disk.run(ops);
        let state = State {
            snapshot: None,
            log: Vec::new(),
            hard: HardState::default(),
        };
        Harness {
            disk,
            store,
            options,
            history: vec![state.clone()],
            state,
            snapshot_floor: 0,
            term: 0,
            evidence: false,
            below: BTreeMap::new(),
            now_ms: 0,
        }
    }

    /// Plans `action`: returns its ops and the state they lead to.
    fn plan(&mut self, action: &Action) -> (Vec<DiskOp>, State) {
        let mut next = self.state.clone();
        let first = self.store.first_index();
        let last = self.store.last_index();
        assert_eq!(first, self.state.snapshot_index() + 1);
        assert_eq!(last, self.state.last_index());
        let ops = match *action {
            Action::Append {
                conflict,
                count,
                bump_term,
                seed,
            } => {
                let start = match conflict {
                    Some(pick) if last >= first => first + u64::from(pick) % (last - first + 1),
                    _ => last + 1,
                };
                if start <= last || bump_term || self.term == 0 {
                    self.term += 1;
                }
                let entries: Vec<Entry> = (start..start + u64::from(count))
                    .map(|index| make_entry(index, self.term, seed))
                    .collect();
                next.log.truncate((start - first) as usize);
                next.log.extend(entries.iter().cloned());
                self.now_ms += u64::from(seed % 4) * MODEL_SEGMENT_MS * 2 / 5;
                self.store.append_at(&entries, self.now_ms)
            }
            Action::Vote {
                bump_term,
                vote,
                commit,
            } => {
                let mut hard = next.hard;
                if bump_term {
                    self.term += 1;
                    hard.term = self.term;
                    hard.voted_for = vote.map(u64::from);
                } else if hard.voted_for.is_none() {
                    hard.voted_for = vote.map(u64::from);
                }
                hard.repair_index = u64::from(commit);
                next.hard = hard;
                self.store.save_hard_state(&hard)
            }
            Action::Snapshot { kind, pick, size } => {
                let has_log = last >= first;
                let (index, term, keep) = match kind {
                    0 if has_log => {
                        let index = first + u64::from(pick) % (last - first + 1);
                        (index, self.state.term_at(index), true)
                    }
                    2 if has_log => {
                        self.term += 1;
                        (
                            first + u64::from(pick) % (last - first + 1),
                            self.term,
                            false,
                        )
                    }
                    _ => {
                        self.term += 1;
                        (last + 1 + u64::from(pick) % 4, self.term, false)
                    }
                };
                let snapshot = Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term,
                        config: Config::new([1, 2, 3]),
                    },
                    data: vec![size; usize::from(size) % 40],
                };
                if keep {
                    for entry in next.log.drain(..(index + 1 - first) as usize) {
                        self.below.insert(entry.index, entry);
                    }
                } else {
                    next.log.clear();
                    self.below.clear();
                }
                next.snapshot = Some(snapshot.clone());
                self.store.save_snapshot(&snapshot)
            }
            Action::Sync => self.store.sync_ops(),
            Action::Discard { pick } => {
                let low = self.store.retained_first();
                let index = low + u64::from(pick) % (first - low + 1);
                let ops = self.store.discard_below(index);
                self.below.retain(|&at, _| at >= index);
                ops
            }
        };
        (ops, next)
    }

    /// Records that a plan's ops all completed.
    fn completed(&mut self, action: &Action, next: State) {
        self.state = next;
        match action {
            Action::Sync => {
                assert_eq!(
                    self.disk.uncovered_ops(),
                    0,
                    "a completed sync_ops left ops uncovered"
                );
                self.history = vec![self.state.clone()];
                self.snapshot_floor = 0;
            }
            Action::Snapshot { .. } => {
                self.history.push(self.state.clone());
                self.snapshot_floor = self.history.len() - 1;
                self.evidence = false;
            }
            Action::Append { .. } => {
                self.history.push(self.state.clone());
                self.evidence = false;
            }
            Action::Vote { .. } | Action::Discard { .. } => self.history.push(self.state.clone()),
        }
        if self.options.retain_below_snapshot {
            let read = read_retained(&mut self.disk, &self.store);
            let expected: Vec<Entry> = self
                .below
                .range(self.store.retained_first()..)
                .map(|(_, entry)| entry.clone())
                .collect();
            assert_eq!(read, expected, "retained entries read back differ");
        }
    }

    fn step(&mut self, step: &Step) {
        let (ops, next) = self.plan(&step.action);
        let Some(crash) = &step.crash else {
            self.disk.run(ops);
            self.completed(&step.action, next);
            return;
        };
        let applied = if crash.after >= 0x8000 {
            ops.len()
        } else {
            usize::from(crash.after) % (ops.len() + 1)
        };
        self.disk.run(ops[..applied].to_vec());
        let mut candidates = if applied == ops.len() {
            self.completed(&step.action, next);
            self.history.clone()
        } else {
            let mut candidates = self.history.clone();
            candidates.push(next);
            candidates
        };
        let mode = match crash.mode {
            0 => Crash::DropUnsynced,
            1 => Crash::Prefix {
                survivors: (crash.seed % (self.disk.uncovered_ops() as u64 + 1)) as usize,
                tear: (crash.seed >> 32) as usize,
            },
            _ => Crash::Subset { seed: crash.seed },
        };
        self.disk.crash(mode);
        let recovered = GroupStore::recover(&mut self.disk, GROUP, self.options.clone())
            .unwrap_or_else(|error| panic!("recovery failed after {mode:?}: {error}"))
            .expect("the group exists");
        check(
            &recovered,
            &candidates,
            self.snapshot_floor,
            matches!(mode, Crash::Subset { .. }) || self.evidence,
        );
        self.evidence = !recovered.report.corrupt_entries.is_empty();
        if self.options.retain_below_snapshot {
            let read = read_retained(&mut self.disk, &recovered.store);
            check_retained(&recovered, &read);
            self.below = read.into_iter().map(|entry| (entry.index, entry)).collect();
        } else {
            assert!(recovered.retained_terms.is_empty());
        }
        candidates.clear();
        self.state = State {
            snapshot: recovered.snapshot,
            log: recovered.entries,
            hard: recovered.hard_state,
        };
        self.store = recovered.store;
        if crash.repair_first {
            self.disk.run(self.store.repair_ops());
            assert_eq!(self.disk.uncovered_ops(), 0, "repair ops are not durable");
        }
        self.history = vec![self.state.clone()];
        self.snapshot_floor = 0;
    }
}

/// Reads every retained entry back through `plan_read`, asserting that each
/// read decodes intact.
fn read_retained(disk: &mut MemDisk, store: &GroupStore) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut from = store.retained_first();
    while from <= store.snapshot_index() {
        let plan = store
            .plan_read(from)
            .unwrap_or_else(|| panic!("retained index {from} has no read plan"));
        disk.submit(0, plan.op());
        let completion = disk.completions.pop().expect("a completion");
        let Ok(DiskOutput::Data(bytes)) = completion.result else {
            panic!("read of retained index {from} failed: {completion:?}");
        };
        let entries = plan
            .decode(&bytes)
            .unwrap_or_else(|damage| panic!("retained read from {from} damaged: {damage:?}"));
        assert_eq!(entries.len(), plan.entry_count());
        assert!(!entries.is_empty());
        from += entries.len() as u64;
        out.extend(entries);
    }
    assert!(store.plan_read(from).is_none(), "a read past the snapshot");
    out
}

/// What recovery retained is contiguous up to the snapshot point, with the
/// terms it reported.
fn check_retained(recovered: &Recovered, read: &[Entry]) {
    let store = &recovered.store;
    let Some(first) = read.first() else {
        assert!(recovered.retained_terms.is_empty());
        assert_eq!(store.retained_first(), store.snapshot_index() + 1);
        return;
    };
    assert_eq!(first.index, store.retained_first());
    let snapshot = recovered
        .snapshot
        .as_ref()
        .expect("retention needs a snapshot");
    let last = read.last().expect("not empty");
    assert_eq!(
        (last.index, last.term),
        (snapshot.meta.index, snapshot.meta.term)
    );
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for entry in read {
        if runs.last().is_none_or(|&(_, term)| term != entry.term) {
            runs.push((entry.index, entry.term));
        }
    }
    assert_eq!(runs, recovered.retained_terms);
}

/// `may_be_corrupt`: the crash kept a random subset of unsynced ops, or an
/// earlier recovery's corruption evidence is still on disk.
fn check(recovered: &Recovered, candidates: &[State], snapshot_floor: usize, may_be_corrupt: bool) {
    let snapshot_index = recovered.snapshot.as_ref().map_or(0, |s| s.meta.index);
    assert!(
        candidates.iter().any(|c| c.hard == recovered.hard_state),
        "hard state {:?} is none of {:?}",
        recovered.hard_state,
        candidates.iter().map(|c| c.hard).collect::<Vec<_>>()
    );
    assert!(
        candidates[snapshot_floor..]
            .iter()
            .any(|c| c.snapshot == recovered.snapshot),
        "snapshot at {snapshot_index} is older than the last durable one"
    );
    assert!(
        candidates
            .iter()
            .any(|c| c.snapshot == recovered.snapshot && c.log.starts_with(&recovered.entries)),
        "the recovered log (snapshot {snapshot_index}, {} entries) is no prefix of a state's log",
        recovered.entries.len()
    );
    // Entries durable at the start and untouched since must all be there.
    for entry in &candidates[0].log {
        if entry.index <= snapshot_index {
            continue;
        }
        let stable = candidates
            .iter()
            .all(|c| entry.index <= c.snapshot_index() || c.entry(entry.index) == Some(entry));
        if stable {
            let position = (entry.index - snapshot_index - 1) as usize;
            assert_eq!(
                recovered.entries.get(position),
                Some(entry),
                "durable entry {} was lost",
                entry.index
            );
        }
    }
    if !may_be_corrupt {
        assert!(
            recovered.report.corrupt_entries.is_empty(),
            "corruption reported after a plain crash: {:?}",
            recovered.report
        );
    }
    let store = &recovered.store;
    assert_eq!(store.first_index(), snapshot_index + 1);
    assert_eq!(
        store.last_index(),
        snapshot_index + recovered.entries.len() as u64
    );
    if let Some(cut) = recovered.report.truncated_after_index {
        assert_eq!(cut, store.last_index());
    }
    if candidates.len() == 1 {
        // Nothing was planned since everything was last durable.
        let only = &candidates[0];
        assert_eq!(recovered.snapshot, only.snapshot);
        assert_eq!(recovered.entries, only.log);
        assert_eq!(recovered.hard_state, only.hard);
        // Corruption evidence, and any torn tail behind it, stays on disk
        // until the next plan that writes the log.
        if !may_be_corrupt {
            assert_eq!(recovered.report.torn_tail_bytes, 0);
            assert!(recovered.report.corrupt_entries.is_empty());
        }
    }
}

// The case count is proptest's default (256), or PROPTEST_CASES.
proptest! {
    #[test]
    fn recovery_returns_what_was_durable(
        segment_bytes_max in prop::sample::select(vec![25u64, 70, 150, 1000]),
        retain_below_snapshot in any::<bool>(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut harness = Harness::new(segment_bytes_max, retain_below_snapshot);
        for step in &steps {
            harness.step(step);
        }
        // Finally: sync, crash, and everything must be back exactly.
        harness.step(&Step {
            action: Action::Sync,
            crash: Some(CrashPlan {
                after: u16::MAX,
                mode: 2,
                seed: 1,
                repair_first: false,
            }),
        });
    }
}
