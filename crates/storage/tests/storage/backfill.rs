//! Backfill below the snapshot point (`prepend_retained`, docs/protocol.md
//! §8.2): a follower that installed a snapshot replacing its log takes the
//! leader's retained entries, newest chunk first, and ends up retaining
//! what the leader does, byte for byte, across restarts; a crash anywhere
//! leaves the old retained run or the new one, never a torn segment.

use runnel_consensus::{Entry, HardState, Payload};
use runnel_storage::{GroupStore, Recovered, BACKFILL_READ_ENTRIES_MAX};

use crate::retained::{data_entry, options, read, read_all, snapshot, thirty_with_snapshot_at};
use crate::support::{Crash, MemDisk};

const GROUP: u64 = 12;

fn recover(disk: &mut MemDisk) -> Recovered {
    GroupStore::recover(disk, GROUP, options(100))
        .expect("recovers")
        .expect("the group exists")
}

fn files(disk: &MemDisk) -> Vec<String> {
    disk.files()
        .into_iter()
        .filter(|file| file.contains("/log/"))
        .collect()
}

/// A leader holding entries 1..=30 (terms 1 to 15, 2 after), two 45-byte
/// frames per 100-byte segment, with a snapshot at 20 that retains them.
fn leader() -> (MemDisk, GroupStore, Vec<Entry>) {
    let mut disk = MemDisk::new();
    let (store, log) = thirty_with_snapshot_at(&mut disk, GROUP, 20);
    (disk, store, log)
}

/// A follower that installed the leader's snapshot at 20 over a log of
/// another term (so nothing is retained), then appended 21..=30.
fn follower(log: &[Entry]) -> (MemDisk, GroupStore) {
    let mut disk = MemDisk::new();
    let (mut store, ops) = GroupStore::create(GROUP, options(100), &HardState::default());
    disk.run(ops);
    let mut ops = store.append(&[data_entry(1, 1, 20), data_entry(2, 1, 20)]);
    ops.extend(store.sync_ops());
    disk.run(ops);
    disk.run(store.save_snapshot(&snapshot(20, 2)));
    assert_eq!(store.retained_first(), 21, "the snapshot replaced the log");
    let mut ops = store.append(&log[20..]);
    ops.extend(store.sync_ops());
    disk.run(ops);
    (disk, store)
}

#[test]
fn a_follower_backfills_what_the_leader_retains_and_keeps_it_across_restarts() {
    let (mut leader_disk, leader, log) = leader();
    let (mut disk, mut store) = follower(&log);
    assert!(store.can_prepend_retained());
    let mut chunks = 0;
    while let Some(plan) = leader.plan_read_ending_at(store.retained_first() - 1) {
        let entries = read(&mut leader_disk, &plan).expect("intact");
        assert_eq!(
            entries.last().map(|e| e.index),
            Some(store.retained_first() - 1)
        );
        disk.run(store.prepend_retained(&entries));
        assert_eq!(
            disk.uncovered_ops(),
            0,
            "a prepend is durable when its ops complete"
        );
        chunks += 1;
    }
    // The leader's segments hold two frames each, so a chunk is at most two.
    assert_eq!(chunks, 10);
    assert_eq!(store.retained_first(), 1);
    assert_eq!(read_all(&mut disk, &store), log[..20]);
    assert!(!files(&disk).iter().any(|file| file.ends_with(".tmp")));

    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk);
    assert_eq!(recovered.retained_terms, vec![(1, 1), (16, 2)]);
    assert_eq!(recovered.entries, log[20..]);
    assert!(recovered.report.corrupt_entries.is_empty());
    let mut store = recovered.store;
    assert_eq!(read_all(&mut disk, &store), log[..20]);
    assert_eq!(store.read_retained_now(&mut disk), log[..20]);
    // Nothing more to take: the run starts at 1.
    assert!(!store.can_prepend_retained());
    // The log goes on above the snapshot, and a discard deletes the
    // prepended segments like any other.
    let more = [data_entry(31, 3, 20)];
    let mut ops = store.append(&more);
    ops.extend(store.sync_ops());
    disk.run(ops);
    disk.run(store.discard_below(17));
    assert_eq!(store.retained_first(), 17);
    assert_eq!(read_all(&mut disk, &store), log[16..20]);
}

#[test]
fn a_follower_without_entries_after_the_snapshot_appends_after_its_backfill() {
    let (mut leader_disk, leader, log) = leader();
    let mut disk = MemDisk::new();
    let (mut store, ops) = GroupStore::create(GROUP, options(100), &HardState::default());
    disk.run(ops);
    disk.run(store.save_snapshot(&snapshot(20, 2)));
    let plan = leader.plan_read_ending_at(20).expect("retained");
    let entries = read(&mut leader_disk, &plan).expect("intact");
    assert_eq!(entries, log[18..20]);
    // The only segment, and the log directory is new.
    disk.run(store.prepend_retained(&entries));
    assert_eq!(disk.uncovered_ops(), 0);
    let mut ops = store.append(&log[20..22]);
    ops.extend(store.sync_ops());
    disk.run(ops);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk);
    assert_eq!(recovered.retained_terms, vec![(19, 2)]);
    assert_eq!(recovered.entries, log[20..22]);
}

#[test]
fn a_crash_during_a_prepend_leaves_the_old_run_or_the_new_one() {
    let (mut leader_disk, leader, log) = leader();
    let plan = leader.plan_read_ending_at(20).expect("retained");
    let entries = read(&mut leader_disk, &plan).expect("intact");
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let (mut disk, mut store) = follower(&log);
        let ops = store.prepend_retained(&entries);
        // Every op but the last SyncDir: the rename may or may not survive.
        let keep = (seed as usize) % ops.len();
        disk.run(ops[..keep].to_vec());
        disk.crash(Crash::Subset { seed });
        let recovered = recover(&mut disk);
        let first = recovered.store.retained_first();
        assert!(
            first == 19 || first == 21,
            "seed {seed}: retained from {first}"
        );
        outcomes.insert(first);
        assert_eq!(recovered.entries, log[20..], "seed {seed}");
        assert!(recovered.report.corrupt_entries.is_empty(), "seed {seed}");
        let mut store = recovered.store;
        assert_eq!(
            read_all(&mut disk, &store),
            log[first as usize - 1..20],
            "seed {seed}"
        );
        // The repair removes a leftover temporary file, and a prepend
        // after it works.
        disk.run(store.repair_ops());
        assert!(
            !files(&disk).iter().any(|file| file.ends_with(".tmp")),
            "seed {seed}: {:?}",
            files(&disk)
        );
        if first == 21 {
            disk.run(store.prepend_retained(&entries));
            assert_eq!(store.retained_first(), 19);
        }
    }
    assert_eq!(outcomes.len(), 2, "both outcomes were seen");
}

#[test]
fn damage_at_rest_in_a_prepended_segment_shortens_the_run_and_is_never_served() {
    let (mut leader_disk, leader, log) = leader();
    let (mut disk, mut store) = follower(&log);
    for last in [20, 18] {
        let plan = leader.plan_read_ending_at(last).expect("retained");
        let entries = read(&mut leader_disk, &plan).expect("intact");
        disk.run(store.prepend_retained(&entries));
    }
    assert_eq!(store.retained_first(), 17);
    // A bit flip in entry 18, the second frame of the older prepended
    // segment: 17, below it, is cut off with it, since what is retained
    // must run without a gap up to the snapshot.
    let path = format!("groups/{GROUP:020}/log/{:020}.seg", 17);
    disk.flip_bit(&path, 50, 2);
    let recovered = recover(&mut disk);
    assert!(recovered.report.retained_damage);
    assert_eq!(recovered.store.retained_first(), 19);
    assert_eq!(recovered.entries, log[20..]);
    assert_eq!(read_all(&mut disk, &recovered.store), log[18..20]);
    assert_eq!(recovered.store.read_retained_now(&mut disk), log[18..20]);
}

#[test]
fn an_inspection_read_leaves_out_what_is_below_damage_found_now() {
    let (mut leader_disk, leader, log) = leader();
    assert_eq!(leader.read_retained_now(&mut leader_disk), log[..20]);
    // Damage the store has not met yet: a flip in entry 8, the second frame
    // of segment 7. Everything below it is left out, as a read would.
    let path = format!("groups/{GROUP:020}/log/{:020}.seg", 7);
    leader_disk.flip_bit(&path, 50, 3);
    assert_eq!(leader.read_retained_now(&mut leader_disk), log[8..20]);
    // A file that cannot be read at all is damage too.
    leader_disk.make_unreadable(&format!("groups/{GROUP:020}/log/{:020}.seg", 15));
    assert_eq!(leader.read_retained_now(&mut leader_disk), log[16..20]);
}

#[test]
fn a_read_ending_at_an_index_is_bounded_by_its_segment_and_the_entry_bound() {
    let (_, leader, _) = leader();
    // Segment 19 holds 19 and 20; 20 is the snapshot index.
    let plan = leader.plan_read_ending_at(20).expect("retained");
    assert_eq!((plan.first_index(), plan.entry_count()), (19, 2));
    let plan = leader.plan_read_ending_at(19).expect("retained");
    assert_eq!((plan.first_index(), plan.entry_count()), (19, 1));
    assert!(
        leader.plan_read_ending_at(21).is_none(),
        "above the snapshot"
    );
    assert!(leader.plan_read_ending_at(0).is_none());

    let mut disk = MemDisk::new();
    let (mut store, ops) = GroupStore::create(GROUP, options(1 << 30), &HardState::default());
    disk.run(ops);
    let count = BACKFILL_READ_ENTRIES_MAX + 44;
    let small: Vec<Entry> = (1..=count as u64).map(|i| data_entry(i, 1, 20)).collect();
    disk.run(store.append(&small));
    disk.run(store.save_snapshot(&snapshot(count as u64, 1)));
    let plan = store.plan_read_ending_at(count as u64).expect("retained");
    assert_eq!(plan.entry_count(), BACKFILL_READ_ENTRIES_MAX);
    assert_eq!(plan.first_index(), 45);
    assert_eq!(read(&mut disk, &plan).expect("intact"), small[44..]);
}

#[test]
fn no_prepend_below_a_segment_a_discard_cut_into() {
    let (_, mut leader, _) = leader();
    // Entries 1..=20 retained; discarding below 4 cuts into segment 3.
    let _ = leader.discard_below(4);
    assert_eq!(leader.retained_first(), 4);
    assert!(!leader.can_prepend_retained());
    // Without retention, or without a snapshot, nothing is prepended.
    let mut disk = MemDisk::new();
    let (store, ops) = GroupStore::create(GROUP, options(100), &HardState::default());
    disk.run(ops);
    assert!(!store.can_prepend_retained(), "no snapshot");
}

#[test]
fn a_chunk_that_prepend_would_refuse_is_refused_by_can_prepend() {
    let (_, _, log) = leader();
    let (_, store) = follower(&log);
    assert!(store.can_prepend(&log[18..20]));
    assert!(!store.can_prepend(&[]), "empty");
    assert!(
        !store.can_prepend(&log[17..19]),
        "does not end at the snapshot"
    );
    assert!(
        !store.can_prepend(&[log[18].clone(), log[20].clone()]),
        "a gap"
    );
    let mut wrong_term = log[18..20].to_vec();
    wrong_term[1].term = 1;
    assert!(
        !store.can_prepend(&wrong_term),
        "the snapshot's term differs"
    );
    // More than one segment can hold, which only a faulty peer sends.
    let big: Vec<Entry> = (3..=20)
        .map(|index| Entry {
            index,
            term: 2,
            payload: Payload::Data(vec![0; 1 << 20]),
        })
        .collect();
    assert!(!store.can_prepend(&big));
}

/// §8.3: a discard that cut into a segment (as damage found at a read or at
/// recovery does) blocks prepends below it; `whole_segment_floor` names the
/// next segment's start, and discarding below it deletes the cut segment
/// whole, after which the backfill refills everything below, as the
/// leader retains it.
#[test]
fn a_segment_cut_below_is_deleted_whole_so_that_backfill_can_refill_it() {
    let (mut leader_disk, leader_store, log) = leader();
    // Two frames per segment: 1-2, 3-4, ...; a cut at 4 leaves 3-4 cut.
    let mut disk = MemDisk::new();
    let (mut store, _) = thirty_with_snapshot_at(&mut disk, GROUP, 20);
    disk.run(store.discard_below(4));
    assert_eq!(store.retained_first(), 4);
    assert!(!store.can_prepend_retained(), "the segment 3-4 is cut");
    assert_eq!(store.whole_segment_floor(), Some(5));
    disk.run(store.discard_below(5));
    assert!(store.can_prepend_retained());
    assert_eq!(store.whole_segment_floor(), None);
    while let Some(plan) = leader_store.plan_read_ending_at(store.retained_first() - 1) {
        let entries = read(&mut leader_disk, &plan).expect("intact");
        disk.run(store.prepend_retained(&entries));
    }
    assert_eq!(store.retained_first(), 1);
    assert_eq!(read_all(&mut disk, &store), log[..20]);
    disk.crash(Crash::DropUnsynced);
    let recovered = recover(&mut disk);
    assert_eq!(recovered.store.retained_first(), 1);
    // Not cut: nothing to delete. The last segment is never named either.
    let (_, whole, _) = leader();
    assert_eq!(whole.whole_segment_floor(), None);
}
