//! Rolling segments by age (`StoreOptions::segment_ms`, `append_at`): a
//! segment rolls at the first append at least `segment_ms` after its first
//! frame, and not before; a recovered segment, whose age the disk does not
//! record, rolls at the first append after recovery; an empty segment never
//! rolls; a roll by age is as durable as one by size; old segments then go
//! with a discard.

use runnel_consensus::{Config, Entry, HardState, Payload, Snapshot, SnapshotMeta};
use runnel_io::DiskOp;
use runnel_storage::{
    segment_ms_valid, GroupStore, Recovered, StoreOptions, SEGMENT_MS_DEFAULT, SEGMENT_MS_MAX,
    SEGMENT_MS_MIN,
};

use crate::support::{Crash, MemDisk};

const GROUP: u64 = 13;
/// Large enough that nothing here rolls by size.
const BIG: u64 = 1 << 20;
const SEGMENT_MS: u64 = 10_000;

fn options(retain_below_snapshot: bool) -> StoreOptions {
    StoreOptions {
        segment_bytes_max: BIG,
        segment_ms: SEGMENT_MS,
        retain_below_snapshot,
    }
}

fn data_entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Data(vec![index as u8; 10]),
    }
}

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|index| data_entry(index, 1)).collect()
}

fn segments(disk: &MemDisk) -> Vec<u64> {
    disk.files()
        .iter()
        .filter_map(|file| {
            file.strip_prefix(&format!("groups/{GROUP:020}/log/"))
                .and_then(|name| name.strip_suffix(".seg"))
                .map(|digits| digits.parse().expect("20 digits"))
        })
        .collect()
}

fn seg_path(first: u64) -> String {
    format!("groups/{GROUP:020}/log/{first:020}.seg")
}

fn new_store(disk: &mut MemDisk, retain_below_snapshot: bool) -> GroupStore {
    let (store, ops) =
        GroupStore::create(GROUP, options(retain_below_snapshot), &HardState::default());
    disk.run(ops);
    store
}

fn recover(disk: &mut MemDisk, retain_below_snapshot: bool) -> Recovered {
    GroupStore::recover(disk, GROUP, options(retain_below_snapshot))
        .expect("recovers")
        .expect("the group exists")
}

/// Appends at `now_ms` and syncs.
fn append_synced(disk: &mut MemDisk, store: &mut GroupStore, log: &[Entry], now_ms: u64) {
    let mut ops = store.append_at(log, now_ms);
    ops.extend(store.sync_ops());
    disk.run(ops);
}

#[test]
fn a_segment_rolls_at_the_first_append_once_it_is_old_enough_and_not_before() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, false);
    append_synced(&mut disk, &mut store, &entries(1..=3), 1_000);
    // Just before the age is reached, appends go into the same segment.
    append_synced(
        &mut disk,
        &mut store,
        &entries(4..=5),
        1_000 + SEGMENT_MS - 1,
    );
    assert_eq!(segments(&disk), vec![1]);
    // At the age, the next append starts a new segment, once: the rest of
    // the same append, and later ones, go into it.
    append_synced(&mut disk, &mut store, &entries(6..=8), 1_000 + SEGMENT_MS);
    append_synced(
        &mut disk,
        &mut store,
        &entries(9..=9),
        1_000 + SEGMENT_MS + 1,
    );
    assert_eq!(segments(&disk), vec![1, 6]);
    // The new segment's age counts from its own first frame.
    append_synced(
        &mut disk,
        &mut store,
        &entries(10..=10),
        1_000 + 2 * SEGMENT_MS - 1,
    );
    assert_eq!(segments(&disk), vec![1, 6]);
    append_synced(
        &mut disk,
        &mut store,
        &entries(11..=11),
        1_000 + 2 * SEGMENT_MS,
    );
    assert_eq!(segments(&disk), vec![1, 6, 11]);
    // A long silence rolls once, at the next append, not once per period.
    append_synced(
        &mut disk,
        &mut store,
        &entries(12..=14),
        1_000 + 50 * SEGMENT_MS,
    );
    assert_eq!(segments(&disk), vec![1, 6, 11, 12]);

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, false);
    assert_eq!(recovered.entries, entries(1..=14));
}

#[test]
fn without_segment_ms_or_a_clock_nothing_rolls_by_age() {
    let mut disk = MemDisk::new();
    let options = StoreOptions {
        segment_ms: 0,
        ..options(false)
    };
    let (mut store, ops) = GroupStore::create(GROUP, options, &HardState::default());
    disk.run(ops);
    append_synced(&mut disk, &mut store, &entries(1..=2), 0);
    append_synced(&mut disk, &mut store, &entries(3..=4), SEGMENT_MS_MAX);
    assert_eq!(segments(&disk), vec![1]);

    // `append` (no clock) never rolls by age, even with segment_ms set.
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, false);
    append_synced(&mut disk, &mut store, &entries(1..=2), 0);
    let mut ops = store.append(&entries(3..=4));
    ops.extend(store.sync_ops());
    disk.run(ops);
    assert_eq!(segments(&disk), vec![1]);
}

#[test]
fn a_roll_by_age_makes_the_full_segment_durable_before_the_next_is_written() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, false);
    // Not synced: the roll itself must make segment 1 and its name durable.
    disk.run(store.append_at(&entries(1..=3), 0));
    let ops = store.append_at(&entries(4..=5), SEGMENT_MS);
    let position = |wanted: &dyn Fn(&DiskOp) -> bool| {
        ops.iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("missing op in {ops:?}"))
    };
    let sync_full = position(&|op| matches!(op, DiskOp::Sync { file } if *file == seg_path(1)));
    let sync_dir = position(&|op| matches!(op, DiskOp::SyncDir { dir } if dir.ends_with("/log")));
    let write_new =
        position(&|op| matches!(op, DiskOp::Write { file, .. } if *file == seg_path(4)));
    assert!(sync_full < write_new && sync_dir < write_new, "{ops:?}");
    disk.run(ops);
    // A crash now keeps everything before the roll, whatever it does to
    // the unsynced frames of the new segment.
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, false);
    assert_eq!(recovered.entries, entries(1..=3));
}

#[test]
fn a_crash_after_any_op_of_a_roll_by_age_recovers_a_prefix_with_everything_synced() {
    let mut reference = MemDisk::new();
    let mut store = new_store(&mut reference, false);
    reference.run(store.append_at(&entries(1..=3), 0));
    let ops = store.append_at(&entries(4..=6), SEGMENT_MS);
    // Every op before the new segment's first write is the roll's syncs
    // (of segment 1, then of its name).
    let write_new = ops
        .iter()
        .position(|op| matches!(op, DiskOp::Write { file, .. } if *file == seg_path(4)))
        .expect("the new segment is written");
    assert!(write_new >= 2, "{ops:?}");
    for done in 0..=ops.len() {
        for crash in [
            Crash::DropUnsynced,
            Crash::Prefix {
                survivors: 1,
                tear: 7,
            },
            Crash::Prefix {
                survivors: 2,
                tear: 0,
            },
        ] {
            let mut disk = reference.clone();
            disk.run(ops[..done].to_vec());
            disk.crash(crash);
            let recovered = recover(&mut disk, false);
            let count = recovered.entries.len() as u64;
            assert!(count <= 6, "after {done} ops, {crash:?}: {count}");
            assert_eq!(recovered.entries, entries(1..=count));
            assert!(recovered.report.corrupt_entries.is_empty());
            if done >= write_new {
                assert!(
                    count >= 3,
                    "after {done} ops, {crash:?}: lost a synced entry"
                );
            }
        }
    }
}

#[test]
fn a_recovered_segment_rolls_at_the_first_append_after_recovery() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, false);
    append_synced(&mut disk, &mut store, &entries(1..=3), 1_000);
    drop(store);

    // The disk does not record when segment 1 was started, so after a
    // restart it is taken as old enough: the first append, however soon,
    // goes into a new segment (docs/storage.md, "Rolling"). A node
    // restarted more often than segment_ms still rolls.
    let recovered = recover(&mut disk, false);
    let mut store = recovered.store;
    disk.run(store.repair_ops());
    append_synced(&mut disk, &mut store, &entries(4..=4), 1_001);
    assert_eq!(segments(&disk), vec![1, 4]);
    // The new segment ages from its first frame, as any other.
    append_synced(&mut disk, &mut store, &entries(5..=5), 1_000 + SEGMENT_MS);
    assert_eq!(segments(&disk), vec![1, 4]);
    append_synced(&mut disk, &mut store, &entries(6..=6), 1_001 + SEGMENT_MS);
    assert_eq!(segments(&disk), vec![1, 4, 6]);
    drop(store);

    // After a crash too; an append without a clock does not roll it, the
    // next one with a clock does, once.
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, false);
    assert_eq!(recovered.entries, entries(1..=6));
    let mut store = recovered.store;
    let mut ops = store.append(&entries(7..=7));
    ops.extend(store.sync_ops());
    disk.run(ops);
    assert_eq!(segments(&disk), vec![1, 4, 6]);
    append_synced(&mut disk, &mut store, &entries(8..=8), 0);
    append_synced(&mut disk, &mut store, &entries(9..=9), 1);
    assert_eq!(segments(&disk), vec![1, 4, 6, 8]);
    disk.crash(Crash::DropUnsynced);
    assert_eq!(recover(&mut disk, false).entries, entries(1..=9));

    // With segment_ms 0 a recovered segment never rolls by age.
    let options = StoreOptions {
        segment_ms: 0,
        ..options(false)
    };
    let mut store = GroupStore::recover(&mut disk, GROUP, options)
        .expect("recovers")
        .expect("the group exists")
        .store;
    append_synced(&mut disk, &mut store, &entries(10..=10), SEGMENT_MS_MAX);
    assert_eq!(segments(&disk), vec![1, 4, 6, 8]);
}

#[test]
fn an_idle_or_empty_segment_never_rolls() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, false);
    append_synced(&mut disk, &mut store, &entries(1..=3), 0);
    // Idle: syncs, vote saves and empty appends long after plan no segment.
    let mut ops = store.append_at(&[], 100 * SEGMENT_MS);
    ops.extend(store.save_hard_state(&HardState {
        term: 2,
        voted_for: None,
        repair_index: 0,
    }));
    ops.extend(store.sync_ops());
    assert!(
        ops.iter().all(
            |op| !matches!(op, DiskOp::Write { file, .. } | DiskOp::Sync { file }
                if file.ends_with(".seg"))
        ),
        "{ops:?}"
    );
    disk.run(ops);
    assert_eq!(segments(&disk), vec![1]);

    // A conflict truncation at the first entry of a segment leaves it
    // empty. An append long after refills it in place instead of rolling
    // past it, and the segment's age starts again with that append.
    append_synced(&mut disk, &mut store, &entries(4..=5), 200 * SEGMENT_MS);
    assert_eq!(segments(&disk), vec![1, 4]);
    let refill_ms = 500 * SEGMENT_MS;
    let at_four = vec![data_entry(4, 2)];
    let ops = store.append_at(&at_four, refill_ms);
    assert!(
        ops.iter()
            .any(|op| matches!(op, DiskOp::Truncate { file, len: 0 } if *file == seg_path(4))),
        "segment 4 is emptied and refilled in place: {ops:?}"
    );
    disk.run(ops);
    disk.run(store.sync_ops());
    assert_eq!(segments(&disk), vec![1, 4]);
    let five = vec![data_entry(5, 2)];
    append_synced(&mut disk, &mut store, &five, refill_ms + SEGMENT_MS - 1);
    assert_eq!(
        segments(&disk),
        vec![1, 4],
        "its age counts from the refill"
    );
    let six = vec![data_entry(6, 2)];
    append_synced(&mut disk, &mut store, &six, refill_ms + SEGMENT_MS);
    assert_eq!(segments(&disk), vec![1, 4, 6]);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, false);
    let mut expected = entries(1..=3);
    expected.extend(at_four);
    expected.extend(five);
    expected.extend(six);
    assert_eq!(recovered.entries, expected);
}

#[test]
fn a_segment_rolled_by_age_is_deleted_whole_once_the_snapshot_passes_it() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, true);
    append_synced(&mut disk, &mut store, &entries(1..=10), 0);
    // Without a roll, a discard up to the snapshot could delete nothing:
    // the one segment also holds entries after it.
    append_synced(&mut disk, &mut store, &entries(11..=12), SEGMENT_MS);
    assert_eq!(segments(&disk), vec![1, 11]);
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: 11,
            term: 1,
            config: Config::new([1, 2, 3]),
        },
        data: b"state".to_vec(),
    };
    disk.run(store.save_snapshot(&snapshot));
    assert_eq!(segments(&disk), vec![1, 11], "retained below the snapshot");
    disk.run(store.discard_below(12));
    assert_eq!(segments(&disk), vec![11]);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, true);
    assert_eq!(recovered.entries, entries(12..=12));
}

#[test]
fn the_bounds_hold_and_are_checked() {
    assert_eq!(SEGMENT_MS_DEFAULT, 7 * 24 * 3600 * 1000);
    assert_eq!(StoreOptions::default().segment_ms, SEGMENT_MS_DEFAULT);
    assert!(segment_ms_valid(0));
    assert!(segment_ms_valid(SEGMENT_MS_MIN));
    assert!(segment_ms_valid(SEGMENT_MS_MAX));
    assert!(!segment_ms_valid(SEGMENT_MS_MIN - 1));
    assert!(!segment_ms_valid(SEGMENT_MS_MAX + 1));
}

#[test]
#[should_panic(expected = "segment_ms")]
fn a_segment_ms_out_of_bounds_is_a_programmer_error() {
    let options = StoreOptions {
        segment_ms: SEGMENT_MS_MIN - 1,
        ..StoreOptions::default()
    };
    GroupStore::create(GROUP, options, &HardState::default());
}
