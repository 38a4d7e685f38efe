//! Entries retained below the snapshot point (`retain_below_snapshot`,
//! docs/protocol.md §8.1): they survive a snapshot and a restart and read
//! back exactly; damage is reported, never served; discards delete whole
//! segments only; recovery keeps what runs intact up to the snapshot.

use runnel_consensus::{Config, Entry, HardState, Payload, Snapshot, SnapshotMeta};
use runnel_io::{Disk, DiskError, DiskOp, DiskOutput};
use runnel_storage::{
    GroupStore, LogReadPlan, Recovered, RetainedDamage, StoreOptions, LOG_READ_BYTES_MAX,
    LOG_READ_ENTRIES_MAX,
};

use crate::support::{Crash, MemDisk};

const GROUP: u64 = 11;
/// 25 header bytes + 20 of data.
const FRAME: usize = 45;

pub(crate) fn options(segment_bytes_max: u64) -> StoreOptions {
    StoreOptions {
        segment_bytes_max,
        segment_ms: 0,
        retain_below_snapshot: true,
    }
}

pub(crate) fn data_entry(index: u64, term: u64, bytes: usize) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Data(vec![index as u8; bytes]),
    }
}

pub(crate) fn snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            config: Config::new([1, 2, 3]),
        },
        data: format!("state at {index}").into_bytes(),
    }
}

fn seg_path(first: u64) -> String {
    format!("groups/{GROUP:020}/log/{first:020}.seg")
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

fn recover(disk: &mut MemDisk, segment_bytes_max: u64) -> Recovered {
    GroupStore::recover(disk, GROUP, options(segment_bytes_max))
        .expect("recovers")
        .expect("the group exists")
}

/// Entries 1..=30 of term 1 (1..=15) and 2 (16..=30), 45-byte frames, two
/// per segment (segments 1, 3, ..., 29), synced; then a snapshot at 20, the
/// last frame of segment 19.
fn thirty_with_snapshot_at_20(disk: &mut MemDisk) -> (GroupStore, Vec<Entry>) {
    thirty_with_snapshot_at(disk, GROUP, 20)
}

/// The same thirty entries for `group`, with a snapshot at `index` (of
/// term 2, so at 16 or above).
pub(crate) fn thirty_with_snapshot_at(
    disk: &mut MemDisk,
    group: u64,
    index: u64,
) -> (GroupStore, Vec<Entry>) {
    let (mut store, ops) = GroupStore::create(group, options(100), &HardState::default());
    disk.run(ops);
    let log: Vec<Entry> = (1..=30)
        .map(|i| data_entry(i, if i <= 15 { 1 } else { 2 }, 20))
        .collect();
    let mut ops = store.append(&log);
    ops.extend(store.sync_ops());
    disk.run(ops);
    disk.run(store.save_snapshot(&snapshot(index, 2)));
    assert_eq!(disk.uncovered_ops(), 0);
    (store, log)
}

/// Runs one planned read and decodes it.
pub(crate) fn read(disk: &mut MemDisk, plan: &LogReadPlan) -> Result<Vec<Entry>, RetainedDamage> {
    disk.submit(0, plan.op());
    match disk.completions.pop().expect("a completion").result {
        Ok(DiskOutput::Data(bytes)) => plan.decode(&bytes),
        other => panic!("read failed: {other:?}"),
    }
}

/// Every retained entry, read back plan by plan.
pub(crate) fn read_all(disk: &mut MemDisk, store: &GroupStore) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut from = store.retained_first();
    while let Some(plan) = store.plan_read(from) {
        let entries = read(disk, &plan).expect("intact");
        from += entries.len() as u64;
        out.extend(entries);
    }
    out
}

#[test]
fn retained_entries_survive_a_snapshot_and_a_restart_and_read_back_exactly() {
    let mut disk = MemDisk::new();
    let (store, log) = thirty_with_snapshot_at_20(&mut disk);
    // Nothing was deleted: every segment of the log is still there.
    assert_eq!(segments(&disk), (1..=29).step_by(2).collect::<Vec<_>>());
    assert_eq!(store.first_index(), 21);
    assert_eq!(store.retained_first(), 1);
    assert_eq!(store.retained_bytes(), 20 * FRAME as u64);
    // A read stops at the end of its segment and never passes the snapshot.
    let plan = store.plan_read(3).expect("retained");
    assert_eq!((plan.first_index(), plan.entry_count()), (3, 2));
    assert_eq!(read(&mut disk, &plan), Ok(log[2..4].to_vec()));
    let plan = store.plan_read(20).expect("retained");
    assert_eq!(plan.entry_count(), 1, "21 is above the snapshot");
    assert!(
        store.plan_read(21).is_none(),
        "above the snapshot: in memory"
    );
    assert!(store.plan_read(0).is_none());
    assert_eq!(read_all(&mut disk, &store), log[..20]);

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.entries, log[20..]);
    assert_eq!(recovered.retained_terms, vec![(1, 1), (16, 2)]);
    assert!(!recovered.report.retained_damage);
    assert!(recovered.report.corrupt_entries.is_empty());
    let mut store = recovered.store;
    assert_eq!(store.retained_first(), 1);
    assert_eq!(read_all(&mut disk, &store), log[..20]);
    // The repair syncs what it keeps and deletes nothing retained.
    disk.run(store.repair_ops());
    assert_eq!(segments(&disk).len(), 15);

    // The log goes on; a later snapshot retains up to it.
    let more: Vec<Entry> = (31..=34).map(|i| data_entry(i, 3, 20)).collect();
    let mut ops = store.append(&more);
    ops.extend(store.sync_ops());
    disk.run(ops);
    disk.run(store.save_snapshot(&snapshot(33, 3)));
    let mut all = log.clone();
    all.extend(more);
    assert_eq!(read_all(&mut disk, &store), all[..33]);
    disk.crash(Crash::Subset { seed: 5 });
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.retained_terms, vec![(1, 1), (16, 2), (31, 3)]);
    assert_eq!(recovered.entries, all[33..]);
    assert_eq!(read_all(&mut disk, &recovered.store), all[..33]);
}

#[test]
fn a_snapshot_that_replaces_the_log_retains_nothing() {
    let mut disk = MemDisk::new();
    let (mut store, _) = thirty_with_snapshot_at_20(&mut disk);
    disk.run(store.save_snapshot(&snapshot(40, 5)));
    assert!(segments(&disk).is_empty());
    assert_eq!(store.retained_first(), 41);
    assert!(store.plan_read(20).is_none());
    let recovered = recover(&mut disk, 100);
    assert!(recovered.retained_terms.is_empty());
}

#[test]
fn a_bit_flip_in_a_retained_frame_is_reported_not_served() {
    for byte in [0, 4, 9, 20, 30, FRAME - 1] {
        let mut disk = MemDisk::new();
        let (store, log) = thirty_with_snapshot_at_20(&mut disk);
        // Index 8 is the second frame of segment 7.
        disk.flip_bit(&seg_path(7), FRAME + byte, 2);
        let plan = store.plan_read(7).expect("retained");
        assert_eq!(plan.entry_count(), 2);
        assert_eq!(
            read(&mut disk, &plan),
            Err(RetainedDamage { index: 8 }),
            "byte {byte}"
        );
        // Frames that are intact still read.
        assert_eq!(
            read(&mut disk, &store.plan_read(9).expect("")),
            Ok(log[8..10].to_vec())
        );

        // Recovery keeps the group: the snapshot covers the damage. It
        // retains only what runs intact up to the snapshot, and the repair
        // deletes the segments wholly below the damage.
        let recovered = recover(&mut disk, 100);
        assert!(recovered.report.retained_damage);
        assert!(recovered.report.corrupt_entries.is_empty());
        assert_eq!(recovered.report.truncated_after_index, None);
        assert_eq!(recovered.entries, log[20..]);
        assert_eq!(recovered.retained_terms, vec![(9, 1), (16, 2)]);
        let store = recovered.store;
        assert_eq!(store.retained_first(), 9);
        assert!(store.plan_read(8).is_none());
        disk.run(store.repair_ops());
        assert_eq!(segments(&disk)[0], 9);
        assert_eq!(read_all(&mut disk, &store), log[8..20]);
    }
}

#[test]
fn another_groups_frame_in_a_retained_segment_is_damage() {
    let mut disk = MemDisk::new();
    let (store, log) = thirty_with_snapshot_at_20(&mut disk);
    // The same frames, encoded for another group, as a misdirected write
    // would leave them: byte for byte alike but for the checksum.
    let mut other = MemDisk::new();
    let (mut other_store, ops) = GroupStore::create(GROUP + 1, options(100), &HardState::default());
    other.run(ops);
    other.run(other_store.append(&log));
    let path = |group: u64| format!("groups/{group:020}/log/{:020}.seg", 11);
    let foreign = other.content(&path(GROUP + 1)).expect("exists").to_vec();
    disk.set_content(&path(GROUP), foreign);
    assert_eq!(
        read(&mut disk, &store.plan_read(11).expect("retained")),
        Err(RetainedDamage { index: 11 })
    );
    let recovered = recover(&mut disk, 100);
    assert!(recovered.report.retained_damage);
    assert_eq!(recovered.store.retained_first(), 13);
    assert_eq!(recovered.entries, log[20..]);
}

#[test]
fn an_unreadable_retained_segment_cuts_retention_and_fails_its_read() {
    let mut disk = MemDisk::new();
    let (store, log) = thirty_with_snapshot_at_20(&mut disk);
    disk.make_unreadable(&seg_path(15));
    disk.submit(0, store.plan_read(15).expect("retained").op());
    assert_eq!(
        disk.completions.pop().expect("completion").result,
        Err(DiskError::ReadFailed)
    );
    let recovered = recover(&mut disk, 100);
    assert!(recovered.report.retained_damage);
    assert_eq!(recovered.retained_terms, vec![(17, 2)]);
    assert_eq!(recovered.entries, log[20..]);
}

#[test]
fn a_torn_or_lost_retained_segment_never_fails_recovery() {
    // A lost segment in the middle of the retained ones (a crash during a
    // discard can leave any subset) is a gap: retention starts after it.
    let mut disk = MemDisk::new();
    let (_, log) = thirty_with_snapshot_at_20(&mut disk);
    disk.remove_durably(&seg_path(5));
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.store.retained_first(), 7);
    assert!(!recovered.report.retained_damage, "a gap is not damage");
    assert_eq!(recovered.entries, log[20..]);
    let store = recovered.store;
    disk.run(store.repair_ops());
    assert_eq!(
        segments(&disk)[0],
        7,
        "the survivors below the gap are deleted"
    );

    // A truncated retained segment (its last frame cut short) likewise.
    let mut disk = MemDisk::new();
    let (_, log) = thirty_with_snapshot_at_20(&mut disk);
    let content = disk.content(&seg_path(11)).expect("exists").to_vec();
    disk.set_content(&seg_path(11), content[..FRAME + 10].to_vec());
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.store.retained_first(), 13);
    assert!(recovered.report.corrupt_entries.is_empty());
    assert_eq!(recovered.entries, log[20..]);
}

#[test]
fn damage_at_the_snapshot_index_retains_nothing_below_it() {
    let mut disk = MemDisk::new();
    let (_, log) = thirty_with_snapshot_at_20(&mut disk);
    disk.flip_bit(&seg_path(19), FRAME + 30, 1);
    let recovered = recover(&mut disk, 100);
    assert!(recovered.retained_terms.is_empty());
    assert_eq!(recovered.store.retained_first(), 21);
    assert_eq!(recovered.entries, log[20..]);
    assert!(recovered.report.corrupt_entries.is_empty());
}

#[test]
fn discard_deletes_whole_segments_only() {
    let mut disk = MemDisk::new();
    let (mut store, log) = thirty_with_snapshot_at_20(&mut disk);
    // 6 is the second frame of segment 5: segments 1 and 3 go, 5 stays.
    let ops = store.discard_below(6);
    assert_eq!(
        ops,
        vec![
            DiskOp::Delete { file: seg_path(1) },
            DiskOp::Delete { file: seg_path(3) },
            DiskOp::SyncDir {
                dir: format!("groups/{GROUP:020}/log")
            },
        ]
    );
    disk.run(ops);
    assert_eq!(disk.uncovered_ops(), 0, "the deletions are durable");
    assert_eq!(store.retained_first(), 6);
    assert!(store.plan_read(5).is_none(), "below the discard point");
    assert_eq!(read_all(&mut disk, &store), log[5..20]);
    assert_eq!(store.retained_bytes(), 15 * FRAME as u64);
    // Discarding below what is already discarded does nothing.
    assert!(store.discard_below(4).is_empty());
    // A discard never reaches above the snapshot: at most everything
    // below it goes, and the segment holding entries after it stays.
    disk.run(store.discard_below(1000));
    assert_eq!(store.retained_first(), 21);
    assert_eq!(segments(&disk)[0], 21);
    assert_eq!(store.retained_bytes(), 0);
    let recovered = recover(&mut disk, 100);
    assert!(recovered.retained_terms.is_empty());
    assert_eq!(recovered.entries, log[20..]);

    // A crash in the middle of a discard, keeping any subset of the
    // deletions: recovery retains a suffix running up to the snapshot.
    for seed in 0..20 {
        let mut disk = MemDisk::new();
        let (mut store, log) = thirty_with_snapshot_at_20(&mut disk);
        let ops = store.discard_below(14);
        let deletes = ops.len() - 1;
        disk.run(ops[..deletes].to_vec());
        disk.crash(Crash::Subset { seed });
        let recovered = recover(&mut disk, 100);
        let first = recovered.store.retained_first();
        assert!(first <= 13, "seed {seed}: segment 13 was never deleted");
        assert_eq!(recovered.entries, log[20..]);
        let store = recovered.store;
        assert_eq!(read_all(&mut disk, &store), log[first as usize - 1..20]);
    }
}

#[test]
fn the_byte_floor_bounds_what_is_retained() {
    let mut disk = MemDisk::new();
    let (store, _) = thirty_with_snapshot_at_20(&mut disk);
    assert_eq!(store.retained_floor_for_bytes(u64::MAX), 1);
    assert_eq!(store.retained_floor_for_bytes(20 * FRAME as u64), 1);
    assert_eq!(store.retained_floor_for_bytes(20 * FRAME as u64 - 1), 2);
    assert_eq!(store.retained_floor_for_bytes(3 * FRAME as u64), 18);
    assert_eq!(store.retained_floor_for_bytes(FRAME as u64), 20);
    assert_eq!(store.retained_floor_for_bytes(FRAME as u64 - 1), 21);
    assert_eq!(store.retained_floor_for_bytes(0), 21);
}

#[test]
fn a_read_is_bounded_by_entries_and_bytes() {
    let mut disk = MemDisk::new();
    let (mut store, ops) = GroupStore::create(GROUP, options(1 << 30), &HardState::default());
    disk.run(ops);
    let small: Vec<Entry> = (1..=300).map(|i| data_entry(i, 1, 0)).collect();
    disk.run(store.append(&small));
    // Frames of 600 KiB: one read takes one of them, as the bytes bound
    // allows only one; a frame over the bound alone is still read alone.
    let big: Vec<Entry> = vec![
        data_entry(301, 1, 600 << 10),
        data_entry(302, 1, 600 << 10),
        data_entry(303, 1, 2 << 20),
        data_entry(304, 1, 1),
    ];
    disk.run(store.append(&big));
    disk.run(store.sync_ops());
    disk.run(store.save_snapshot(&snapshot(304, 1)));
    let plan = store.plan_read(1).expect("retained");
    assert_eq!(plan.entry_count(), LOG_READ_ENTRIES_MAX);
    let plan = store.plan_read(300).expect("retained");
    assert_eq!(plan.entry_count(), 2, "300 and 301 fit in the bytes bound");
    assert!(plan.bytes() <= LOG_READ_BYTES_MAX);
    let plan = store.plan_read(302).expect("retained");
    assert_eq!(plan.entry_count(), 1);
    let plan = store.plan_read(303).expect("retained");
    assert_eq!(plan.entry_count(), 1);
    assert!(
        plan.bytes() > LOG_READ_BYTES_MAX,
        "a big frame is read alone"
    );
    assert_eq!(read(&mut disk, &plan), Ok(vec![big[2].clone()]));
    // A short read (the file shrank) is damage, never a partial answer.
    let plan = store.plan_read(1).expect("retained");
    disk.submit(0, plan.op());
    let Ok(DiskOutput::Data(bytes)) = disk.completions.pop().expect("completion").result else {
        panic!("read failed");
    };
    assert_eq!(
        plan.decode(&bytes[..bytes.len() - 1]),
        Err(RetainedDamage { index: 256 })
    );
}

/// Found by the simulator (seed 5026 once backfill existed): recovery found
/// the frame right after the snapshot damaged, so the cut still to come
/// truncates the segment holding it; a discard before the first append
/// deleted that segment, whose intact frames were all below the snapshot,
/// and the cut then failed on a missing file, stopping the node.
#[test]
fn a_discard_before_the_first_append_keeps_the_segment_the_cut_truncates() {
    let mut disk = MemDisk::new();
    // Segment 21 holds 21 and 22; the snapshot is at 21.
    let (_, log) = thirty_with_snapshot_at(&mut disk, GROUP, 21);
    disk.flip_bit(&seg_path(21), FRAME + 30, 1);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.report.corrupt_entries.first(), Some(&22));
    assert!(recovered.entries.is_empty(), "the log ends at the damage");
    let mut store = recovered.store;
    disk.run(store.repair_ops());
    disk.run(store.discard_below(22));
    assert_eq!(store.retained_first(), 22);
    assert!(store.plan_read(21).is_none(), "discarded");
    // The first append runs the cut, then writes: nothing is missing.
    let mut ops = store.append(&log[21..23]);
    ops.extend(store.sync_ops());
    disk.run(ops);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert!(recovered.report.corrupt_entries.is_empty());
    assert_eq!(recovered.entries, log[21..23]);
}
