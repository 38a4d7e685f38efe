//! Each part of the format, and each kind of damage, on purpose.

use std::collections::BTreeSet;

use runnel_consensus::{Config, Entry, HardState, Payload, Snapshot, SnapshotMeta};
use runnel_io::DiskOp;
use runnel_storage::{
    GroupStore, Recovered, RecoveryError, RecoveryReport, StoreOptions, FRAME_HEADER_BYTES,
    SEGMENT_BYTES_MIN, VOTE_RECORD_BYTES,
};

use crate::support::{Crash, MemDisk};

const GROUP: u64 = 7;
const BIG: u64 = 1 << 20;

fn options(segment_bytes_max: u64) -> StoreOptions {
    StoreOptions {
        segment_bytes_max,
        segment_ms: 0,
        retain_below_snapshot: false,
    }
}

/// An entry whose payload kind and size vary with its index.
fn entry(index: u64, term: u64) -> Entry {
    let payload = match index % 5 {
        0 => Payload::Noop,
        3 => Payload::Config(Config::new([1, 2, index])),
        _ => Payload::Data(vec![index as u8; (index % 7) as usize * 3]),
    };
    Entry {
        index,
        term,
        payload,
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn data_entry(index: u64, term: u64, bytes: usize) -> Entry {
    Entry {
        index,
        term,
        payload: Payload::Data(vec![0x5A; bytes]),
    }
}

/// The encoded size of an entry's frame (docs/storage.md, "Log segments").
fn frame_len(entry: &Entry) -> usize {
    FRAME_HEADER_BYTES
        + match &entry.payload {
            Payload::Noop => 0,
            Payload::Data(data) => data.len(),
            Payload::Config(config) => 8 + 8 * (config.voters.len() + config.learners.len()),
        }
}

fn new_store(disk: &mut MemDisk, segment_bytes_max: u64) -> GroupStore {
    let (store, ops) = GroupStore::create(GROUP, options(segment_bytes_max), &HardState::default());
    disk.run(ops);
    store
}

fn recover(disk: &mut MemDisk, segment_bytes_max: u64) -> Recovered {
    GroupStore::recover(disk, GROUP, options(segment_bytes_max))
        .expect("recovers")
        .expect("the group exists")
}

fn seg_path(first: u64) -> String {
    format!("groups/{GROUP:020}/log/{first:020}.seg")
}

fn vote_path(slot: &str) -> String {
    format!("groups/{GROUP:020}/vote-{slot}")
}

/// First indexes of the segment files on disk.
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

fn snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            config: Config {
                voters: [1, 2, 3].into_iter().collect(),
                learners: [4].into_iter().collect(),
            },
        },
        data: format!("state at {index}").into_bytes(),
    }
}

fn clean_report(recovered: &Recovered) -> RecoveryReport {
    RecoveryReport {
        hard_state_copies_valid: 2,
        highest_index_on_disk: recovered.store.last_index(),
        ..RecoveryReport::default()
    }
}

/// Appends and syncs, asserting that the sync covers everything.
fn append_synced(disk: &mut MemDisk, store: &mut GroupStore, new: &[Entry]) {
    let mut ops = store.append(new);
    ops.extend(store.sync_ops());
    disk.run(ops);
    assert_eq!(disk.uncovered_ops(), 0, "sync_ops left something uncovered");
}

#[test]
fn entries_hard_state_and_snapshot_round_trip() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, 300);
    let mut log = entries(1..=12, 1);
    log.extend(entries(13..=20, 2));
    let state = HardState {
        term: 2,
        voted_for: Some(3),
        repair_index: 15,
    };
    let mut ops = store.append(&log);
    ops.extend(store.save_hard_state(&state));
    ops.extend(store.sync_ops());
    disk.run(ops);
    assert_eq!(disk.uncovered_ops(), 0);

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 300);
    assert_eq!(recovered.entries, log);
    assert_eq!(recovered.hard_state, state);
    assert_eq!(recovered.snapshot, None);
    assert_eq!(recovered.report, clean_report(&recovered));
    assert_eq!(recovered.store.last_index(), 20);
    assert_eq!(recovered.store.first_index(), 1);
    assert_eq!(recovered.store.term_at(12), Some(1));
    assert_eq!(recovered.store.term_at(13), Some(2));

    let mut store = recovered.store;
    disk.run(store.repair_ops());
    let installed = snapshot(10, 1);
    let mut ops = store.save_snapshot(&installed);
    let more = entries(21..=25, 3);
    ops.extend(store.append(&more));
    let state = HardState {
        term: 3,
        voted_for: None,
        repair_index: 22,
    };
    ops.extend(store.save_hard_state(&state));
    ops.extend(store.sync_ops());
    disk.run(ops);
    assert_eq!(disk.uncovered_ops(), 0);

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 300);
    assert_eq!(recovered.snapshot, Some(installed));
    assert_eq!(recovered.hard_state, state);
    let mut expected = log[10..].to_vec();
    expected.extend(more);
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.report, clean_report(&recovered));
    assert_eq!(recovered.store.first_index(), 11);
    assert_eq!(recovered.store.last_index(), 25);
}

#[test]
fn a_group_without_files_is_none_and_groups_are_listed_ascending() {
    let mut disk = MemDisk::new();
    assert!(GroupStore::recover(&mut disk, GROUP, options(BIG))
        .expect("recovers")
        .is_none());
    for group in [30, 2, 11] {
        let (_, ops) = GroupStore::create(group, options(BIG), &HardState::default());
        disk.run(ops);
    }
    assert_eq!(GroupStore::groups_on_disk(&mut disk), Ok(vec![2, 11, 30]));
    assert!(GroupStore::recover(&mut disk, GROUP, options(BIG))
        .expect("recovers")
        .is_none());
    disk.crash(Crash::DropUnsynced);
    assert_eq!(GroupStore::groups_on_disk(&mut disk), Ok(vec![2, 11, 30]));
    let recovered = GroupStore::recover(&mut disk, 11, options(BIG))
        .expect("recovers")
        .expect("exists");
    assert_eq!(recovered.hard_state, HardState::default());
    assert!(recovered.entries.is_empty());
}

#[test]
fn segments_roll_at_the_size_limit_and_a_big_frame_goes_alone() {
    let limit = 100;
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, limit);
    let log: Vec<Entry> = (1..=30).map(|i| data_entry(i, 1, 20)).collect();
    let ops = store.append(&log);
    // A roll syncs the full segment before the next one is written.
    for (position, op) in ops.iter().enumerate() {
        if let DiskOp::Write { file, .. } = op {
            if *file != seg_path(1) {
                let previous = ops[..position]
                    .iter()
                    .rev()
                    .find_map(|op| match op {
                        DiskOp::Write { file, .. } => Some(file.clone()),
                        _ => None,
                    })
                    .expect("an earlier segment");
                assert!(ops[..position].contains(&DiskOp::Sync { file: previous }));
            }
        }
    }
    disk.run(ops);
    disk.run(store.sync_ops());
    // 45-byte frames: two per 100-byte segment.
    let expected: Vec<u64> = (1..=30).step_by(2).collect();
    assert_eq!(segments(&disk), expected);
    for first in &expected {
        assert_eq!(disk.content(&seg_path(*first)).expect("exists").len(), 90);
    }

    let big = data_entry(31, 1, 300);
    let after = data_entry(32, 1, 5);
    append_synced(&mut disk, &mut store, &[big.clone(), after.clone()]);
    assert_eq!(
        disk.content(&seg_path(31)).expect("exists").len(),
        FRAME_HEADER_BYTES + 300
    );
    assert_eq!(
        disk.content(&seg_path(32)).expect("exists").len(),
        FRAME_HEADER_BYTES + 5
    );

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, limit);
    let mut all = log;
    all.extend([big, after]);
    assert_eq!(recovered.entries, all);
    assert_eq!(recovered.report, clean_report(&recovered));
}

#[test]
fn the_smallest_segment_limit_puts_every_frame_alone() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, SEGMENT_BYTES_MIN);
    let log = entries(1..=6, 1);
    append_synced(&mut disk, &mut store, &log);
    assert_eq!(segments(&disk), vec![1, 2, 3, 4, 5, 6]);
    disk.crash(Crash::DropUnsynced);
    assert_eq!(recover(&mut disk, SEGMENT_BYTES_MIN).entries, log);
}

/// Appends 1..=30 (45-byte frames, two per segment) and syncs.
fn thirty_in_pairs(disk: &mut MemDisk) -> GroupStore {
    let mut store = new_store(disk, 100);
    let log: Vec<Entry> = (1..=30).map(|i| data_entry(i, 1, 20)).collect();
    append_synced(disk, &mut store, &log);
    store
}

#[test]
fn conflict_truncation_inside_a_segment_deletes_later_segments_durably() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    // 12 is the second frame of segment 11.
    let new: Vec<Entry> = (12..=14).map(|i| data_entry(i, 2, 3)).collect();
    let ops = store.append(&new);
    let first_write = ops
        .iter()
        .position(|op| matches!(op, DiskOp::Write { .. }))
        .expect("writes");
    let before = &ops[..first_write];
    // Later segments go newest first, each deletion durable before the
    // next; then the truncation, durable before any new frame.
    let log_dir = DiskOp::SyncDir {
        dir: format!("groups/{GROUP:020}/log"),
    };
    let mut expected = Vec::new();
    for later in (13..=29u64).rev().step_by(2) {
        expected.push(DiskOp::Delete {
            file: seg_path(later),
        });
        expected.push(log_dir.clone());
    }
    expected.push(DiskOp::Truncate {
        file: seg_path(11),
        len: 45,
    });
    expected.push(DiskOp::Sync { file: seg_path(11) });
    assert_eq!(before, &expected[..]);
    disk.run(ops);
    disk.run(store.sync_ops());
    assert_eq!(disk.uncovered_ops(), 0);
    assert_eq!(store.last_index(), 14);

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    let mut expected: Vec<Entry> = (1..=11).map(|i| data_entry(i, 1, 20)).collect();
    expected.extend(new);
    assert_eq!(recovered.entries, expected);
    assert_eq!(recovered.report, clean_report(&recovered));
}

#[test]
fn a_crash_anywhere_in_conflict_truncation_recovers_a_prefix_of_either_log() {
    let old: Vec<Entry> = (1..=30).map(|i| data_entry(i, 1, 20)).collect();
    let mut reference = MemDisk::new();
    let mut store = thirty_in_pairs(&mut reference);
    let new: Vec<Entry> = (8..=12).map(|i| data_entry(i, 2, 50)).collect();
    let ops = store.append(&new);
    let mut relog = old[..7].to_vec();
    relog.extend(new);
    for cut in 0..=ops.len() {
        let mut modes = vec![Crash::DropUnsynced];
        modes.extend((0..16).map(|seed| Crash::Subset { seed }));
        modes.extend((0..4).map(|survivors| Crash::Prefix {
            survivors,
            tear: 17,
        }));
        for mode in modes {
            let mut disk = reference.clone();
            disk.run(ops[..cut].to_vec());
            disk.crash(mode);
            let recovered = recover(&mut disk, 100);
            let entries = &recovered.entries;
            assert!(
                old.starts_with(entries) || relog.starts_with(entries),
                "cut {cut} {mode:?}: {} entries",
                entries.len()
            );
            // Entries before the conflict were durable and stay.
            assert!(entries.len() >= 7, "cut {cut} {mode:?}");
            if !matches!(mode, Crash::Subset { .. }) {
                assert!(recovered.report.corrupt_entries.is_empty());
            }
        }
    }
}

#[test]
fn conflict_truncation_at_a_segment_start_reuses_the_empty_segment() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    let new: Vec<Entry> = (21..=26).map(|i| data_entry(i, 3, 40)).collect();
    let ops = store.append(&new);
    assert!(ops.contains(&DiskOp::Truncate {
        file: seg_path(21),
        len: 0
    }));
    disk.run(ops);
    disk.run(store.sync_ops());
    // 65-byte frames: one per segment from 21 on.
    assert_eq!(
        segments(&disk),
        vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 22, 23, 24, 25, 26]
    );
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.entries.len(), 26);
    assert_eq!(&recovered.entries[20..], &new[..]);

    // And a truncation back into an older segment, across new ones.
    let mut store = recovered.store;
    disk.run(store.repair_ops());
    let newer = vec![data_entry(4, 4, 1)];
    append_synced(&mut disk, &mut store, &newer);
    assert_eq!(segments(&disk), vec![1, 3]);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.entries.len(), 4);
    assert_eq!(recovered.entries[3], newer[0]);
}

#[test]
fn snapshot_compaction_deletes_covered_segments_and_keeps_the_suffix() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    let installed = snapshot(17, 1);
    disk.run(store.save_snapshot(&installed));
    assert_eq!(disk.uncovered_ops(), 0, "save_snapshot includes its syncs");
    // 17 is the first frame of segment 17, which also holds 18: it stays,
    // every segment before it goes.
    assert_eq!(segments(&disk), vec![17, 19, 21, 23, 25, 27, 29]);
    assert_eq!(store.first_index(), 18);
    assert_eq!(store.last_index(), 30);
    assert_eq!(store.term_at(17), Some(1));
    assert_eq!(store.term_at(16), None);

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.snapshot, Some(installed));
    let suffix: Vec<Entry> = (18..=30).map(|i| data_entry(i, 1, 20)).collect();
    assert_eq!(recovered.entries, suffix);
    assert_eq!(recovered.report, clean_report(&recovered));

    // Snapshot at a segment's last entry: that segment goes too. Conflict
    // truncation right after the snapshot still works.
    let mut store = recovered.store;
    disk.run(store.repair_ops());
    disk.run(store.save_snapshot(&snapshot(20, 1)));
    assert_eq!(segments(&disk), vec![21, 23, 25, 27, 29]);
    let new = vec![data_entry(21, 2, 1)];
    append_synced(&mut disk, &mut store, &new);
    assert_eq!(segments(&disk), vec![21]);

    // Snapshot at the last index: no segment is left, the next append
    // starts a new one.
    disk.run(store.save_snapshot(&snapshot(21, 2)));
    assert!(segments(&disk).is_empty());
    assert_eq!(store.last_index(), 21);
    let new = vec![data_entry(22, 2, 1)];
    append_synced(&mut disk, &mut store, &new);
    assert_eq!(segments(&disk), vec![22]);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.snapshot, Some(snapshot(21, 2)));
    assert_eq!(recovered.entries, new);
}

#[test]
fn a_snapshot_beyond_the_log_discards_it() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    disk.run(store.save_snapshot(&snapshot(40, 3)));
    assert!(segments(&disk).is_empty());
    assert_eq!(store.first_index(), 41);
    assert_eq!(store.last_index(), 40);
    let new: Vec<Entry> = (41..=43).map(|i| data_entry(i, 3, 2)).collect();
    append_synced(&mut disk, &mut store, &new);
    assert_eq!(segments(&disk), vec![41]);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.snapshot, Some(snapshot(40, 3)));
    assert_eq!(recovered.entries, new);
    assert_eq!(recovered.store.first_index(), 41);
}

#[test]
fn a_snapshot_whose_term_differs_from_the_log_discards_it() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    disk.run(store.save_snapshot(&snapshot(12, 2)));
    assert!(segments(&disk).is_empty());
    assert_eq!(store.last_index(), 12);
    let new = vec![data_entry(13, 2, 2)];
    append_synced(&mut disk, &mut store, &new);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.snapshot, Some(snapshot(12, 2)));
    assert_eq!(recovered.entries, new);
}

/// Crashes after every prefix of `save_snapshot`'s ops, in every crash mode,
/// and checks recovery returns the state before or the state after.
fn crash_during_snapshot(installed: Snapshot, after: Vec<Entry>) {
    let before: Vec<Entry> = (1..=30).map(|i| data_entry(i, 1, 20)).collect();
    let mut reference = MemDisk::new();
    let mut store = thirty_in_pairs(&mut reference);
    let ops = store.save_snapshot(&installed);
    for cut in 0..=ops.len() {
        let mut modes = vec![Crash::DropUnsynced];
        modes.extend((0..16).map(|seed| Crash::Subset { seed }));
        for mode in modes {
            let mut disk = reference.clone();
            disk.run(ops[..cut].to_vec());
            disk.crash(mode);
            let recovered = recover(&mut disk, 100);
            match &recovered.snapshot {
                None => assert_eq!(recovered.entries, before, "cut {cut} {mode:?}"),
                Some(found) => {
                    assert_eq!(found, &installed, "cut {cut} {mode:?}");
                    assert_eq!(recovered.entries, after, "cut {cut} {mode:?}");
                }
            }
            assert!(recovered.report.corrupt_entries.is_empty());
            if cut == ops.len() {
                assert_eq!(recovered.snapshot.as_ref(), Some(&installed));
            }
            // The recovered store goes on from there.
            let mut store = recovered.store;
            let next = store.last_index() + 1;
            let term = store.term_at(next - 1).expect("term");
            disk.run(store.append(&[data_entry(next, term, 1)]));
            disk.run(store.sync_ops());
            disk.crash(Crash::DropUnsynced);
            let again = recover(&mut disk, 100);
            assert_eq!(again.store.last_index(), next);
        }
    }
}

#[test]
fn a_crash_anywhere_in_compaction_recovers_the_old_or_new_state() {
    // At the first and at the last entry of a segment.
    crash_during_snapshot(
        snapshot(17, 1),
        (18..=30).map(|i| data_entry(i, 1, 20)).collect(),
    );
    crash_during_snapshot(
        snapshot(18, 1),
        (19..=30).map(|i| data_entry(i, 1, 20)).collect(),
    );
}

#[test]
fn a_crash_anywhere_in_discarding_a_conflicting_log_recovers_the_old_or_new_state() {
    // At the last and at the first entry of a segment, and near the end.
    crash_during_snapshot(snapshot(12, 2), Vec::new());
    crash_during_snapshot(snapshot(11, 2), Vec::new());
    crash_during_snapshot(snapshot(29, 2), Vec::new());
}

#[test]
fn a_crash_anywhere_in_discarding_a_shorter_log_recovers_the_old_or_new_state() {
    crash_during_snapshot(snapshot(45, 2), Vec::new());
}

/// Five synced entries, then a sixth appended and not synced. Returns the
/// disk, the entries, and the sixth frame's size.
fn five_synced_and_one_more(
    segment_bytes_max: u64,
    sync_names: bool,
) -> (MemDisk, Vec<Entry>, usize) {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, segment_bytes_max);
    let log: Vec<Entry> = (1..=5).map(|i| data_entry(i, 1, 20)).collect();
    append_synced(&mut disk, &mut store, &log);
    let sixth = data_entry(6, 1, 33);
    let ops = store.append(std::slice::from_ref(&sixth));
    disk.run(ops);
    if sync_names {
        disk.run(vec![DiskOp::SyncDir {
            dir: format!("groups/{GROUP:020}/log"),
        }]);
    }
    assert_eq!(disk.uncovered_ops(), 1);
    (disk, log, frame_len(&sixth))
}

fn check_torn_tail(segment_bytes_max: u64, sync_names: bool, tail_segment: u64) {
    let (reference, log, frame) = five_synced_and_one_more(segment_bytes_max, sync_names);
    for tear in 0..frame {
        let mut disk = reference.clone();
        disk.crash(Crash::Prefix { survivors: 0, tear });
        let recovered = recover(&mut disk, segment_bytes_max);
        assert_eq!(recovered.entries, log, "tear {tear}");
        assert!(recovered.report.corrupt_entries.is_empty());
        assert_eq!(recovered.report.torn_tail_bytes, tear as u64, "tear {tear}");
        let expected_cut = (tear > 0).then_some(5);
        assert_eq!(recovered.report.truncated_after_index, expected_cut);
        assert_eq!(recovered.store.last_index(), 5);

        // The repair truncates the torn bytes durably.
        let mut store = recovered.store;
        disk.run(store.repair_ops());
        assert_eq!(disk.uncovered_ops(), 0);
        let again = recover(&mut disk, segment_bytes_max);
        assert_eq!(again.report.torn_tail_bytes, 0);
        assert_eq!(again.entries, log);

        // The next append continues right after the last good frame.
        let replacement = data_entry(6, 2, 7);
        append_synced(&mut disk, &mut store, std::slice::from_ref(&replacement));
        assert_eq!(segments(&disk).last(), Some(&tail_segment));
        disk.crash(Crash::DropUnsynced);
        let recovered = recover(&mut disk, segment_bytes_max);
        let mut expected = log.clone();
        expected.push(replacement);
        assert_eq!(recovered.entries, expected, "tear {tear}");
        assert_eq!(recovered.report, clean_report(&recovered));
    }
    // The whole frame surviving is just a longer log.
    let mut disk = reference.clone();
    disk.crash(Crash::Prefix {
        survivors: 1,
        tear: 0,
    });
    assert_eq!(recover(&mut disk, segment_bytes_max).entries.len(), 6);
}

#[test]
fn a_torn_tail_at_every_byte_of_the_last_frame_is_cut() {
    check_torn_tail(BIG, false, 1);
}

#[test]
fn a_torn_first_frame_of_a_new_segment_is_cut() {
    // With a 50-byte limit every 45-byte frame has its own segment, so the
    // sixth frame is the first of segment 6.
    check_torn_tail(50, true, 6);
}

#[test]
fn torn_tail_without_repair_ops_is_still_removed_before_the_next_append() {
    let (mut disk, log, _) = five_synced_and_one_more(BIG, false);
    disk.crash(Crash::Prefix {
        survivors: 0,
        tear: 30,
    });
    let recovered = recover(&mut disk, BIG);
    let mut store = recovered.store;
    let repair = store.repair_ops();
    assert!(repair.contains(&DiskOp::Truncate {
        file: seg_path(1),
        len: 5 * 45
    }));
    // The node skips repair_ops: the first plan starts with them anyway, and
    // they are handed out only once.
    let ops = store.save_hard_state(&HardState {
        term: 1,
        voted_for: None,
        repair_index: 0,
    });
    assert_eq!(&ops[..repair.len()], &repair[..]);
    assert!(store.repair_ops().is_empty());
    disk.run(ops);
    let replacement = vec![data_entry(6, 1, 1), data_entry(7, 1, 1)];
    append_synced(&mut disk, &mut store, &replacement);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, BIG);
    let mut expected = log;
    expected.extend(replacement);
    assert_eq!(recovered.entries, expected);
}

/// Ten synced entries in one segment. Returns the disk and the entries.
fn ten_synced() -> (MemDisk, Vec<Entry>) {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    let log: Vec<Entry> = (1..=10).map(|i| data_entry(i, 1, 20)).collect();
    append_synced(&mut disk, &mut store, &log);
    (disk, log)
}

#[test]
fn a_flipped_bit_in_a_middle_frame_is_reported_not_dropped() {
    let (reference, log) = ten_synced();
    let frame = 45;
    let fifth = 4 * frame;
    for byte in fifth..fifth + frame {
        for bit in [0, 7] {
            let mut disk = reference.clone();
            disk.flip_bit(&seg_path(1), byte, bit);
            let recovered = recover(&mut disk, BIG);
            assert_eq!(recovered.entries, log[..4], "byte {byte} bit {bit}");
            assert_eq!(recovered.report.corrupt_entries, vec![5]);
            assert_eq!(recovered.report.truncated_after_index, Some(4));
            assert_eq!(recovered.report.torn_tail_bytes, 0);
            assert_eq!(recovered.store.last_index(), 4);
            // The frames past the damage still tell how far the log reached,
            // which is how far the replica must repair before it votes.
            assert_eq!(recovered.report.highest_index_on_disk, 10);

            // The repair keeps the evidence: the file is not truncated.
            let mut store = recovered.store;
            disk.run(store.repair_ops());
            assert_eq!(
                disk.content(&seg_path(1)).expect("exists").len(),
                10 * frame
            );
            assert_eq!(
                recover(&mut disk, BIG).report.corrupt_entries,
                vec![5],
                "the corruption is still visible after the repair"
            );

            // Appending (the entry repaired from a peer) removes the damaged
            // suffix first.
            let repaired = log[4..].to_vec();
            let ops = store.append(&repaired);
            assert!(ops.contains(&DiskOp::Truncate {
                file: seg_path(1),
                len: 4 * frame as u64
            }));
            disk.run(ops);
            disk.run(store.sync_ops());
            disk.crash(Crash::DropUnsynced);
            let recovered = recover(&mut disk, BIG);
            assert_eq!(recovered.entries, log);
            assert_eq!(recovered.report, clean_report(&recovered));
        }
    }
}

#[test]
fn several_damaged_frames_are_all_reported() {
    let (mut disk, log) = ten_synced();
    disk.flip_bit(&seg_path(1), 2 * 45 + 30, 3);
    disk.flip_bit(&seg_path(1), 3 * 45 + 30, 3);
    disk.flip_bit(&seg_path(1), 7 * 45 + 2, 1);
    let recovered = recover(&mut disk, BIG);
    assert_eq!(recovered.entries, log[..2]);
    assert_eq!(recovered.report.corrupt_entries, vec![3, 4, 8]);
}

#[test]
fn an_oversized_length_field_in_a_middle_frame_is_corruption() {
    let (mut disk, log) = ten_synced();
    let mut content = disk.content(&seg_path(1)).expect("exists").to_vec();
    content[4 * 45..4 * 45 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    disk.set_content(&seg_path(1), content);
    let recovered = recover(&mut disk, BIG);
    assert_eq!(recovered.entries, log[..4]);
    assert_eq!(recovered.report.corrupt_entries, vec![5]);
}

#[test]
fn damage_at_the_end_of_a_full_segment_is_corruption_not_a_torn_tail() {
    let mut disk = MemDisk::new();
    let _store = thirty_in_pairs(&mut disk);
    // The last frame of segment 5 (index 6).
    disk.flip_bit(&seg_path(5), 45 + 30, 0);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.entries.len(), 5);
    assert_eq!(recovered.report.corrupt_entries, vec![6]);
    assert_eq!(recovered.report.torn_tail_bytes, 0);
}

#[test]
fn damage_to_the_very_last_frame_reads_as_a_torn_tail() {
    // A damaged last frame cannot be told from a torn write: both are
    // reported as a torn tail (docs/storage.md, "What recovery cannot tell").
    let (mut disk, log) = ten_synced();
    disk.flip_bit(&seg_path(1), 9 * 45 + 30, 0);
    let recovered = recover(&mut disk, BIG);
    assert_eq!(recovered.entries, log[..9]);
    assert_eq!(recovered.report.torn_tail_bytes, 45);
    assert!(recovered.report.corrupt_entries.is_empty());
}

#[test]
fn an_unreadable_segment_is_reported_as_corrupt() {
    let mut disk = MemDisk::new();
    let _store = thirty_in_pairs(&mut disk);
    disk.make_unreadable(&seg_path(11));
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.entries.len(), 10);
    assert_eq!(recovered.report.corrupt_entries, vec![11, 12]);

    let mut disk = MemDisk::new();
    let _store = thirty_in_pairs(&mut disk);
    disk.make_unreadable(&seg_path(29));
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.entries.len(), 28);
    assert_eq!(recovered.report.corrupt_entries, vec![29]);
    assert_eq!(recovered.report.torn_tail_bytes, 0);
}

#[test]
fn a_torn_vote_write_keeps_the_previous_record() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    let first = HardState {
        term: 1,
        voted_for: Some(1),
        repair_index: 0,
    };
    let mut ops = store.save_hard_state(&first);
    ops.extend(store.sync_ops());
    disk.run(ops);
    let second = HardState {
        term: 2,
        voted_for: Some(2),
        repair_index: 1,
    };
    disk.run(store.save_hard_state(&second));
    for tear in 0..VOTE_RECORD_BYTES {
        let mut crashed = disk.clone();
        crashed.crash(Crash::Prefix { survivors: 0, tear });
        let recovered = recover(&mut crashed, BIG);
        assert_eq!(recovered.hard_state, first, "tear {tear}");
        // A tear within the magic and version (identical in both records)
        // leaves the older record intact in that slot.
        let copies = if tear <= 8 { 2 } else { 1 };
        assert_eq!(
            recovered.report.hard_state_copies_valid, copies,
            "tear {tear}"
        );
        // The next save goes to the torn slot, never over the survivor.
        let mut store = recovered.store;
        let third = HardState {
            term: 3,
            voted_for: None,
            repair_index: 1,
        };
        crashed.run(store.save_hard_state(&third));
        crashed.crash(Crash::Prefix {
            survivors: 0,
            tear: 10,
        });
        assert_eq!(recover(&mut crashed, BIG).hard_state, first);
    }
    let mut crashed = disk.clone();
    crashed.crash(Crash::Prefix {
        survivors: 1,
        tear: 0,
    });
    assert_eq!(recover(&mut crashed, BIG).hard_state, second);
}

#[test]
fn saves_without_a_sync_between_never_overwrite_the_durable_record() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    let durable = HardState {
        term: 4,
        voted_for: Some(9),
        repair_index: 0,
    };
    let mut ops = store.save_hard_state(&durable);
    ops.extend(store.sync_ops());
    disk.run(ops);
    let later: Vec<HardState> = (5..8)
        .map(|term| HardState {
            term,
            voted_for: None,
            repair_index: 0,
        })
        .collect();
    for state in &later {
        disk.run(store.save_hard_state(state));
    }
    let allowed: BTreeSet<u64> = [4, 5, 6, 7].into_iter().collect();
    for survivors in 0..=later.len() {
        for tear in 0..VOTE_RECORD_BYTES {
            let mut crashed = disk.clone();
            crashed.crash(Crash::Prefix { survivors, tear });
            let recovered = recover(&mut crashed, BIG);
            assert!(allowed.contains(&recovered.hard_state.term));
            if tear == 0 {
                // The surviving writes are whole: the last of them wins.
                assert_eq!(recovered.hard_state.term, 4 + survivors as u64);
            }
        }
    }
    for seed in 0..64 {
        let mut crashed = disk.clone();
        crashed.crash(Crash::Subset { seed });
        let recovered = recover(&mut crashed, BIG);
        assert!(allowed.contains(&recovered.hard_state.term));
    }
}

#[test]
fn an_unreadable_vote_slot_falls_back_to_the_other() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    let state = HardState {
        term: 1,
        voted_for: None,
        repair_index: 0,
    };
    let mut ops = store.save_hard_state(&state);
    ops.extend(store.sync_ops());
    disk.run(ops);
    // The save went to vote-a (create left the newest in vote-b).
    disk.make_unreadable(&vote_path("b"));
    let recovered = recover(&mut disk, BIG);
    assert_eq!(recovered.hard_state, state);
    assert_eq!(recovered.report.hard_state_copies_valid, 1);
}

#[test]
fn no_intact_vote_record_is_an_error() {
    let (mut disk, _) = ten_synced();
    disk.flip_bit(&vote_path("a"), 10, 0);
    disk.flip_bit(&vote_path("b"), 10, 0);
    assert_eq!(
        GroupStore::recover(&mut disk, GROUP, options(BIG)).map(|_| ()),
        Err(RecoveryError::NoValidHardState)
    );
    let error = RecoveryError::NoValidHardState;
    assert!(!error.to_string().is_empty());
}

#[test]
fn a_gap_between_segments_is_corrupt() {
    let mut disk = MemDisk::new();
    let _store = thirty_in_pairs(&mut disk);
    disk.remove_durably(&seg_path(11));
    let error = GroupStore::recover(&mut disk, GROUP, options(100)).map(|_| ());
    assert!(matches!(error, Err(RecoveryError::Corrupt(_))), "{error:?}");
}

#[test]
fn an_unexpected_file_is_corrupt() {
    let (mut disk, _) = ten_synced();
    disk.run(vec![DiskOp::Write {
        file: format!("groups/{GROUP:020}/log/junk"),
        offset: 0,
        data: vec![1],
    }]);
    let error = GroupStore::recover(&mut disk, GROUP, options(BIG)).map(|_| ());
    assert!(matches!(error, Err(RecoveryError::Corrupt(_))), "{error:?}");
}

#[test]
fn a_damaged_snapshot_is_corrupt() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    disk.run(store.save_snapshot(&snapshot(10, 1)));
    disk.flip_bit(&format!("groups/{GROUP:020}/snapshot"), 20, 2);
    let error = GroupStore::recover(&mut disk, GROUP, options(100)).map(|_| ());
    assert!(matches!(error, Err(RecoveryError::Corrupt(_))), "{error:?}");
}

#[test]
fn a_leftover_snapshot_tmp_is_removed_by_the_repair() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    let ops = store.save_snapshot(&snapshot(10, 1));
    // Crash after the temp file is synced, before the rename.
    let sync = ops
        .iter()
        .position(|op| matches!(op, DiskOp::Sync { .. }))
        .expect("a sync");
    disk.run(ops[..=sync].to_vec());
    disk.run(vec![DiskOp::SyncDir {
        dir: format!("groups/{GROUP:020}"),
    }]);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk, 100);
    assert_eq!(recovered.snapshot, None);
    assert_eq!(recovered.entries.len(), 30);
    disk.run(recovered.store.repair_ops());
    assert!(!disk
        .files()
        .contains(&format!("groups/{GROUP:020}/snapshot.tmp")));
}

#[test]
#[should_panic(expected = "non-contiguous")]
fn a_non_contiguous_append_panics() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    store.append(&[entry(1, 1), entry(3, 1)]);
}

#[test]
#[should_panic(expected = "gap")]
fn an_append_after_a_gap_panics() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    store.append(&[entry(2, 1)]);
}

#[test]
#[should_panic(expected = "below first_index")]
fn an_append_below_the_snapshot_panics() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    store.save_snapshot(&snapshot(10, 1));
    store.append(&[entry(10, 1)]);
}

#[test]
#[should_panic(expected = "term")]
fn an_append_with_a_lower_term_panics() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    store.append(&[entry(1, 2)]);
    store.append(&[entry(2, 1)]);
}

#[test]
#[should_panic(expected = "vote changed")]
fn changing_the_vote_within_a_term_panics() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    store.save_hard_state(&HardState {
        term: 1,
        voted_for: Some(1),
        repair_index: 0,
    });
    store.save_hard_state(&HardState {
        term: 1,
        voted_for: Some(2),
        repair_index: 0,
    });
}

#[test]
#[should_panic(expected = "segment_bytes_max")]
fn a_segment_limit_out_of_bounds_panics() {
    let _ = GroupStore::create(GROUP, options(1), &HardState::default());
}

/// `delete_ops` leaves a durable tombstone first and nothing else: recovery
/// finds no replica, `groups_left` names the group, and a store created
/// again next to the tombstone recovers like any other.
#[test]
fn a_deleted_group_leaves_only_its_tombstone() {
    let mut disk = MemDisk::new();
    let mut store = new_store(&mut disk, BIG);
    disk.run(store.append(&entries(1..=10, 1)));
    disk.run(store.sync_ops());
    let ops = store.delete_ops();
    assert!(
        matches!(&ops[0], DiskOp::Write { file, .. } if file.ends_with("/left")),
        "the tombstone comes first: {ops:?}"
    );
    disk.run(ops);
    disk.crash(Crash::DropUnsynced);
    assert_eq!(disk.files(), vec![format!("groups/{GROUP:020}/left")]);
    assert!(GroupStore::recover(&mut disk, GROUP, options(BIG))
        .expect("recovers")
        .is_none());
    assert_eq!(GroupStore::groups_left(&mut disk).unwrap(), vec![GROUP]);

    let mut store = new_store(&mut disk, BIG);
    disk.run(store.append(&entries(1..=3, 2)));
    disk.run(store.sync_ops());
    let recovered = GroupStore::recover(&mut disk, GROUP, options(BIG))
        .expect("recovers")
        .expect("a replica");
    assert_eq!(recovered.entries.len(), 3);
    assert_eq!(GroupStore::groups_left(&mut disk).unwrap(), vec![GROUP]);
}

/// A second group on the same disk whose files line up byte for byte with
/// `GROUP`'s (the same entry sizes, terms and vote history), differing only
/// in what the entries say.
const OTHER_GROUP: u64 = 8;

fn other_path(path: &str) -> String {
    path.replace(&format!("{GROUP:020}"), &format!("{OTHER_GROUP:020}"))
}

/// Ten synced entries of 20 bytes in `GROUP` and the same layout in
/// `OTHER_GROUP` with other bytes, and a vote record saved in each.
fn two_groups_alike() -> (MemDisk, Vec<Entry>) {
    let (mut disk, log) = ten_synced();
    let (mut other, ops) = GroupStore::create(OTHER_GROUP, options(BIG), &HardState::default());
    disk.run(ops);
    let other_log: Vec<Entry> = (1..=10)
        .map(|index| Entry {
            index,
            term: 1,
            payload: Payload::Data(vec![0xA5; 20]),
        })
        .collect();
    let mut ops = other.append(&other_log);
    ops.extend(other.save_hard_state(&HardState {
        term: 9,
        voted_for: Some(3),
        repair_index: 0,
    }));
    ops.extend(other.sync_ops());
    disk.run(ops);
    (disk, log)
}

#[test]
fn another_groups_frames_misdirected_into_a_segment_are_corruption() {
    // A write of the other group's frames 4 to 6 landed at the same offset
    // of this group's segment, where this group's frames 4 to 6 lie: every
    // length, index and term matches. Only the checksum, which covers the
    // group, can tell the frames apart.
    let (mut disk, log) = two_groups_alike();
    let frame = 45;
    let mut segment = disk.content(&seg_path(1)).expect("exists").to_vec();
    let other = disk
        .content(&other_path(&seg_path(1)))
        .expect("exists")
        .to_vec();
    segment[3 * frame..6 * frame].copy_from_slice(&other[3 * frame..6 * frame]);
    disk.set_content(&seg_path(1), segment);
    let recovered = recover(&mut disk, BIG);
    assert_eq!(recovered.entries, log[..3], "no foreign entry is taken");
    assert_eq!(recovered.report.corrupt_entries, vec![4, 5, 6]);
    assert_eq!(recovered.report.highest_index_on_disk, 10);
}

#[test]
fn another_groups_vote_record_misdirected_into_a_slot_is_not_taken() {
    // The other group's newest record (term 9, a vote for 3) landed in this
    // group's slot with the same name; this group must not adopt a term or
    // a vote that was never its own.
    let (mut disk, _) = two_groups_alike();
    for slot in ["a", "b"] {
        let mut disk = disk.clone();
        let foreign = disk
            .content(&other_path(&vote_path(slot)))
            .expect("exists")
            .to_vec();
        disk.set_content(&vote_path(slot), foreign);
        let recovered = recover(&mut disk, BIG);
        assert_eq!(recovered.hard_state, HardState::default(), "slot {slot}");
        assert_eq!(recovered.report.hard_state_copies_valid, 1, "slot {slot}");
    }
    // Both slots replaced: no record of this group's own is left.
    for slot in ["a", "b"] {
        let foreign = disk
            .content(&other_path(&vote_path(slot)))
            .expect("exists")
            .to_vec();
        disk.set_content(&vote_path(slot), foreign);
    }
    assert_eq!(
        GroupStore::recover(&mut disk, GROUP, options(BIG)).map(|_| ()),
        Err(RecoveryError::NoValidHardState)
    );
}

#[test]
fn another_groups_snapshot_misdirected_into_place_is_corrupt() {
    let mut disk = MemDisk::new();
    let mut store = thirty_in_pairs(&mut disk);
    disk.run(store.save_snapshot(&snapshot(10, 1)));
    let (mut other, ops) = GroupStore::create(OTHER_GROUP, options(100), &HardState::default());
    disk.run(ops);
    let mut ops = other.append(&entries(1..=12, 1));
    ops.extend(other.sync_ops());
    disk.run(ops);
    disk.run(other.save_snapshot(&snapshot(10, 1)));
    let path = format!("groups/{GROUP:020}/snapshot");
    let foreign = disk.content(&other_path(&path)).expect("exists").to_vec();
    assert_eq!(
        Some(foreign.as_slice()).map(|bytes| bytes.len()),
        disk.content(&path).map(|bytes| bytes.len()),
        "the two snapshots line up"
    );
    disk.set_content(&path, foreign);
    let error = GroupStore::recover(&mut disk, GROUP, options(100)).map(|_| ());
    assert!(matches!(error, Err(RecoveryError::Corrupt(_))), "{error:?}");
}
