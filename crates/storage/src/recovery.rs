//! Reading a group back after a restart (docs/storage.md, "Recovery").
//!
//! Recovery reads every file once, through `Disk::list` and `Disk::read_file`,
//! and writes nothing: what it decides to remove or make durable it returns
//! as repair ops, which the node submits before anything else.

use std::cmp::max;

use runnel_consensus::{Entry, Index, Term};
use runnel_io::{Disk, DiskError, DiskOp, GroupId};

use crate::codec::{self, VoteRecord, FRAME_HEADER_BYTES};
use crate::{
    parse_20_digits, GroupStore, Paths, Recovered, RecoveredParts, RecoveryError, RecoveryReport,
    StoreOptions, DATA_DIR, FRAME_BYTES_MAX, GROUPS_DIR, SEGMENT_BYTES_MAX_LIMIT, SEGMENT_SUFFIX,
};

/// The largest segment file the store can have written: a full segment, or
/// one frame bigger than the segment limit alone.
const SEGMENT_FILE_BYTES_MAX: u64 = SEGMENT_BYTES_MAX_LIMIT + FRAME_BYTES_MAX as u64;

/// One run of a segment file, as parsed on its own.
#[derive(Debug)]
enum Item {
    /// An intact frame with the index expected at its position.
    Frame { offset: u64, entry: Entry },
    /// Bytes from `offset` to `end` that are not intact frames with the
    /// expected indexes, where the frame for `expected` should have been.
    /// `next` is the index of the intact frame found after them in the same
    /// file, None when the damage runs to the end of the file.
    Damage {
        offset: u64,
        end: u64,
        expected: Index,
        next: Option<Index>,
        /// The file could not be read at all: never a torn tail.
        unreadable: bool,
    },
}

struct ParsedSegment {
    name: Index,
    file_bytes: u64,
    items: Vec<Item>,
}

/// Splits a segment file into intact frames and damaged runs.
///
/// After damage the parser looks for the next offset that holds an intact
/// frame whose index could follow: at least the expected index, and at most
/// as far beyond it as the damaged bytes could hold frames. Only such a frame
/// proves that data was written after the damage.
fn parse_segment(group: GroupId, name: Index, bytes: &[u8]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut expected = name;
    let mut position = 0;
    while position < bytes.len() {
        if let Some((entry, length)) =
            codec::decode_frame(group, bytes, position, |i| i == expected)
        {
            items.push(Item::Frame {
                offset: position as u64,
                entry,
            });
            expected += 1;
            position += length;
            continue;
        }
        let found = (position + 1..bytes.len()).find_map(|candidate| {
            let room = ((candidate - position) / FRAME_HEADER_BYTES) as u64;
            codec::decode_frame(group, bytes, candidate, |i| {
                i >= expected && i - expected <= room
            })
            .map(|(entry, length)| (candidate, entry, length))
        });
        match found {
            Some((candidate, entry, length)) => {
                items.push(Item::Damage {
                    offset: position as u64,
                    end: candidate as u64,
                    expected,
                    next: Some(entry.index),
                    unreadable: false,
                });
                expected = entry.index + 1;
                items.push(Item::Frame {
                    offset: candidate as u64,
                    entry,
                });
                position = candidate + length;
            }
            None => {
                items.push(Item::Damage {
                    offset: position as u64,
                    end: bytes.len() as u64,
                    expected,
                    next: None,
                    unreadable: false,
                });
                break;
            }
        }
    }
    items
}

/// Where the log recovery returns ends.
struct End {
    /// Position of the segment in the parsed list.
    segment: usize,
    /// Bytes of that segment that belong to the log.
    offset: u64,
    /// The index the next frame there would have.
    next_index: Index,
}

pub(crate) fn recover(
    disk: &mut dyn Disk,
    group: GroupId,
    options: StoreOptions,
) -> Result<Option<Recovered>, RecoveryError> {
    let paths = Paths::new(group);
    let group_prefix = format!("{}/", paths.group_dir);
    let log_prefix = format!("{}/", paths.log_dir);
    let mut found_any = false;
    let mut vote_present = [false; 2];
    let mut snapshot_present = false;
    let mut tmp_present = false;
    let mut backfill_tmp_present = false;
    let mut names: Vec<Index> = Vec::new();
    for file in disk.list()? {
        if !file.starts_with(&group_prefix) || file == paths.left {
            // The tombstone says the node deleted a replica once; it is no
            // part of the replica's state (`GroupStore::groups_left`).
            continue;
        }
        found_any = true;
        if file == paths.votes[0] {
            vote_present[0] = true;
        } else if file == paths.votes[1] {
            vote_present[1] = true;
        } else if file == paths.snapshot {
            snapshot_present = true;
        } else if file == paths.snapshot_tmp {
            tmp_present = true;
        } else if file == paths.backfill_tmp {
            // A segment `prepend_retained` had not renamed into place: never
            // part of the log.
            backfill_tmp_present = true;
        } else if let Some(name) = file.strip_prefix(&log_prefix) {
            let index = name
                .strip_suffix(SEGMENT_SUFFIX)
                .and_then(parse_20_digits)
                .filter(|&index| index > 0)
                .ok_or_else(|| RecoveryError::Corrupt(format!("unexpected file {file}")))?;
            names.push(index);
        } else {
            // A file this version does not know could be state a newer
            // version relies on: refusing is safer than ignoring it.
            return Err(RecoveryError::Corrupt(format!("unexpected file {file}")));
        }
    }
    if !found_any {
        return Ok(None);
    }
    names.sort_unstable();
    names.dedup();

    // The vote record: the intact slot with the higher sequence.
    let mut records: [Option<VoteRecord>; 2] = [None, None];
    for ((record, present), path) in records.iter_mut().zip(vote_present).zip(&paths.votes) {
        if present {
            // An unreadable slot counts as a damaged one: by the slot rule
            // (see `save_hard_state`) the other slot then holds the newest
            // durable record, unless both were damaged at rest.
            *record = disk
                .read_file(path)
                .ok()
                .and_then(|bytes| codec::decode_vote(group, &bytes));
        }
    }
    let copies_valid = records.iter().flatten().count() as u8;
    let newest_slot = match (&records[0], &records[1]) {
        (None, None) => return Err(RecoveryError::NoValidHardState),
        (Some(_), None) => 0,
        (None, Some(_)) => 1,
        (Some(a), Some(b)) if a.sequence == b.sequence => {
            return Err(RecoveryError::Corrupt(format!(
                "both vote slots hold sequence {}",
                a.sequence
            )))
        }
        (Some(a), Some(b)) => usize::from(b.sequence > a.sequence),
    };
    let newest = records[newest_slot].expect("the newest slot is valid");

    // The snapshot. A damaged snapshot cannot be worked around locally: the
    // entries it covers were deleted when it was installed.
    let snapshot =
        if snapshot_present {
            match disk.read_file(&paths.snapshot) {
                Ok(bytes) => Some(codec::decode_snapshot(group, &bytes).map_err(|what| {
                    RecoveryError::Corrupt(format!("{}: {what}", paths.snapshot))
                })?),
                Err(DiskError::NotFound) => None,
                // A latent sector error loses the snapshot as surely as
                // damage does: the replica rejoins as one that lost its
                // state (§10.3) rather than never starting again.
                Err(DiskError::ReadFailed) => {
                    return Err(RecoveryError::Corrupt(format!(
                        "{} cannot be read",
                        paths.snapshot
                    )))
                }
                Err(error) => return Err(RecoveryError::Disk(error)),
            }
        } else {
            None
        };
    let (snapshot_index, snapshot_term) = snapshot
        .as_ref()
        .map_or((0, 0), |snapshot| (snapshot.meta.index, snapshot.meta.term));

    let log = scan_log(
        disk,
        group,
        &paths,
        &names,
        (snapshot_index, snapshot_term),
        options.retain_below_snapshot,
    )?;

    // Repair: make what was read durable, then remove what is not part of
    // the state returned. The syncs come first so that, for example, the
    // snapshot is durable before the segments it covers are deleted.
    let mut repair = Vec::new();
    for (present, path) in vote_present.iter().zip(&paths.votes) {
        if *present {
            repair.push(DiskOp::Sync { file: path.clone() });
        }
    }
    for ((present, record), path) in vote_present.iter().zip(&records).zip(&paths.votes) {
        if *present && record.is_none() {
            // A damaged slot is emptied before anything is written to it
            // again. Otherwise the next save, which reuses the sequence after
            // the newest intact record, could be torn on top of the remains
            // of a lost record with that same sequence and complete it into
            // an intact record that was never durable.
            repair.push(DiskOp::Truncate {
                file: path.clone(),
                len: 0,
            });
            repair.push(DiskOp::Sync { file: path.clone() });
        }
    }
    if snapshot.is_some() {
        repair.push(DiskOp::Sync {
            file: paths.snapshot.clone(),
        });
    }
    for &name in &log.kept {
        repair.push(DiskOp::Sync {
            file: paths.segment(name),
        });
    }
    if !names.is_empty() {
        repair.push(DiskOp::SyncDir {
            dir: paths.log_dir.clone(),
        });
    }
    for dir in [paths.group_dir.as_str(), GROUPS_DIR, DATA_DIR] {
        repair.push(DiskOp::SyncDir {
            dir: dir.to_string(),
        });
    }
    // The cut removes segments past the end newest first, each deletion
    // durable before the next, and only then truncates the last segment
    // kept: a crash part-way leaves a prefix of the segments, never a gap.
    let mut cut = Vec::new();
    for &name in log.beyond.iter().rev() {
        cut.push(DiskOp::Delete {
            file: paths.segment(name),
        });
        cut.push(DiskOp::SyncDir {
            dir: paths.log_dir.clone(),
        });
    }
    if let Some((name, len)) = log.truncate {
        cut.push(DiskOp::Truncate {
            file: paths.segment(name),
            len,
        });
        cut.push(DiskOp::Sync {
            file: paths.segment(name),
        });
    }
    if log.corrupt.is_empty() {
        // Without corruption, whatever lies past the end is a torn tail:
        // remove it now. With corruption it is evidence, kept until the node
        // replaces it by appending.
        repair.append(&mut cut);
    }
    if backfill_tmp_present {
        repair.push(DiskOp::Delete {
            file: paths.backfill_tmp.clone(),
        });
        repair.push(DiskOp::SyncDir {
            dir: paths.log_dir.clone(),
        });
    }
    if tmp_present {
        repair.push(DiskOp::Delete {
            file: paths.snapshot_tmp.clone(),
        });
        repair.push(DiskOp::SyncDir {
            dir: paths.group_dir.clone(),
        });
    }
    // Dead segments above the snapshot index (a log the snapshot replaced)
    // go before those at or below it, as in `save_snapshot`, so that a crash
    // part-way never leaves the later ones without the one whose term at the
    // snapshot index shows they are stale.
    let (above, below): (Vec<Index>, Vec<Index>) =
        log.dead.iter().partition(|&&name| name > snapshot_index);
    for phase in [above, below] {
        for &name in &phase {
            repair.push(DiskOp::Delete {
                file: paths.segment(name),
            });
        }
        if !phase.is_empty() {
            repair.push(DiskOp::SyncDir {
                dir: paths.log_dir.clone(),
            });
        }
    }

    let last_index = log
        .entries
        .last()
        .map_or(snapshot_index, |entry| entry.index);
    let mut terms: Vec<(Index, Term)> = Vec::new();
    for entry in &log.entries {
        if terms.last().is_none_or(|&(_, term)| term != entry.term) {
            terms.push((entry.index, entry.term));
        }
    }
    let truncated = log.torn_tail_bytes > 0 || !log.corrupt.is_empty();
    let report = RecoveryReport {
        torn_tail_bytes: log.torn_tail_bytes,
        truncated_after_index: truncated.then_some(last_index),
        highest_index_on_disk: log
            .highest_index
            .max(log.corrupt.last().copied().unwrap_or(0))
            .max(last_index),
        corrupt_entries: log.corrupt,
        hard_state_copies_valid: copies_valid,
        retained_damage: log.retained_damage,
    };
    let retained_first = log
        .retained_terms
        .first()
        .map_or(snapshot_index + 1, |&(first, _)| first);
    let store = GroupStore::from_recovery(RecoveredParts {
        group,
        options,
        snapshot_index,
        snapshot_term,
        segments: log.segments,
        entries_terms: terms,
        last_index,
        retained_first,
        hard_state: newest.state,
        newest_slot,
        sequence: newest.sequence,
        log_dir_exists: !names.is_empty(),
        repair,
        cut,
    });
    Ok(Some(Recovered {
        store,
        hard_state: newest.state,
        snapshot,
        entries: log.entries,
        retained_terms: log.retained_terms,
        report,
    }))
}

/// What recovery makes of the segment files.
#[derive(Default)]
struct LogScan {
    /// Intact entries after the snapshot, contiguous, up to the first damage.
    entries: Vec<Entry>,
    /// The store's segments: `(name, base, offsets, len)`.
    segments: Vec<(Index, Index, Vec<u32>, u64)>,
    /// Segment files that stay (the store's, and those past a corruption).
    kept: Vec<Index>,
    /// The last store segment, when it holds bytes past the log's end.
    truncate: Option<(Index, u64)>,
    /// Segment files past the log's end, holding corruption evidence or a
    /// torn tail.
    beyond: Vec<Index>,
    /// Segment files holding nothing the log needs: all at or below the
    /// snapshot, or left from a log the snapshot replaced.
    dead: Vec<Index>,
    torn_tail_bytes: u64,
    corrupt: Vec<Index>,
    /// The highest index of any intact frame, including frames past a
    /// corruption that are not returned.
    highest_index: Index,
    /// §8.1: the runs of `(first index, term)` of the frames retained below
    /// the snapshot point, up to it; empty when none are.
    retained_terms: Vec<(Index, Term)>,
    /// Damage below the snapshot point cut what is retained.
    retained_damage: bool,
}

/// One intact frame at or below the snapshot point.
struct RetainedFrame {
    segment: Index,
    offset: u64,
    length: u64,
    index: Index,
    term: Term,
}

/// The frames at or below the snapshot point that run without a gap or
/// damage, newest run only: retention below the snapshot restarts after any
/// damage (the snapshot covers those entries, so damage there loses nothing
/// the replica needs, only what it could have served from disk).
#[derive(Default)]
struct RetainedRun {
    frames: Vec<RetainedFrame>,
    damaged: bool,
    /// An intact frame at the snapshot index with another term: the log is
    /// one the snapshot replaced.
    stale: bool,
}

impl RetainedRun {
    fn add_segment(&mut self, segment: &ParsedSegment, snapshot: (Index, Term)) {
        let (snapshot_index, snapshot_term) = snapshot;
        if self
            .frames
            .last()
            .is_some_and(|last| last.index + 1 != segment.name)
        {
            self.frames.clear();
        }
        for item in &segment.items {
            match item {
                Item::Frame { offset, entry } => {
                    if entry.index > snapshot_index {
                        return;
                    }
                    if entry.index == snapshot_index && entry.term != snapshot_term {
                        self.stale = true;
                    }
                    if self
                        .frames
                        .last()
                        .is_some_and(|last| last.index + 1 != entry.index)
                    {
                        self.frames.clear();
                    }
                    self.frames.push(RetainedFrame {
                        segment: segment.name,
                        offset: *offset,
                        length: codec::frame_bytes(entry) as u64,
                        index: entry.index,
                        term: entry.term,
                    });
                }
                Item::Damage { expected, .. } => {
                    if *expected > snapshot_index {
                        return;
                    }
                    self.damaged = true;
                    self.frames.clear();
                }
            }
        }
    }

    /// The run, if it reaches the snapshot point (only then can it serve a
    /// follower whose next entry is anywhere in it).
    fn finish(mut self, snapshot: (Index, Term)) -> Vec<RetainedFrame> {
        let reaches = self
            .frames
            .last()
            .is_some_and(|last| (last.index, last.term) == snapshot);
        if !reaches {
            self.frames.clear();
        }
        self.frames
    }
}

/// Reads and parses one segment file. Err (with the reason) when the file
/// is larger than any segment the store writes.
fn read_segment(
    disk: &mut dyn Disk,
    group: GroupId,
    paths: &Paths,
    name: Index,
) -> Result<ParsedSegment, String> {
    let file = paths.segment(name);
    match disk.read_file(&file) {
        Ok(bytes) => {
            if bytes.len() as u64 > SEGMENT_FILE_BYTES_MAX {
                return Err(format!(
                    "{file} has {} bytes, more than any segment the store writes",
                    bytes.len()
                ));
            }
            Ok(ParsedSegment {
                name,
                file_bytes: bytes.len() as u64,
                items: parse_segment(group, name, &bytes),
            })
        }
        Err(_) => Ok(unreadable_segment(name)),
    }
}

/// A segment that could not be read: damaged from its start.
fn unreadable_segment(name: Index) -> ParsedSegment {
    ParsedSegment {
        name,
        file_bytes: 0,
        items: vec![Item::Damage {
            offset: 0,
            end: 0,
            expected: name,
            next: None,
            unreadable: true,
        }],
    }
}

fn scan_log(
    disk: &mut dyn Disk,
    group: GroupId,
    paths: &Paths,
    names: &[Index],
    snapshot: (Index, Term),
    retain: bool,
) -> Result<LogScan, RecoveryError> {
    let (snapshot_index, snapshot_term) = snapshot;
    let mut scan = LogScan::default();
    // Segments wholly at or below the snapshot, known from the name of the
    // next segment alone, so they need not be read (a crash during
    // compaction can leave any subset of them).
    let mut first_live = 0;
    while first_live + 1 < names.len() && names[first_live + 1] <= snapshot_index + 1 {
        first_live += 1;
    }
    scan.dead.extend_from_slice(&names[..first_live]);
    // §8.1: with retention those segments hold the entries below the
    // snapshot point that can still be served. Each is read and parsed on
    // its own, keeping only the frames' positions, so that memory holds one
    // segment's bytes at a time. A file too large to be a segment is damage
    // here, not a reason to refuse the group: the snapshot covers it.
    let retaining = retain && snapshot_index > 0;
    let mut retained = RetainedRun::default();
    if retaining {
        for &name in &names[..first_live] {
            let segment =
                read_segment(disk, group, paths, name).unwrap_or_else(|_| unreadable_segment(name));
            retained.add_segment(&segment, snapshot);
        }
    }
    let mut parsed = Vec::new();
    for &name in &names[first_live..] {
        parsed.push(read_segment(disk, group, paths, name).map_err(RecoveryError::Corrupt)?);
    }
    if retaining {
        if let Some(first) = parsed.first() {
            retained.add_segment(first, snapshot);
        }
    }

    // A log the snapshot replaced: its entry at the snapshot index has
    // another term. `save_snapshot` deletes such a log from the end first, so
    // a crash part-way always leaves that entry if it leaves anything after
    // it.
    // When the snapshot index is the last entry of its segment, that segment
    // was set aside above by name alone, so it is read here for this check
    // only: it is the surviving segment with the highest name at or below
    // the snapshot index.
    let mismatch = |items: &[Item]| {
        items.iter().any(|item| {
            matches!(item, Item::Frame { entry, .. }
                if entry.index == snapshot_index && entry.term != snapshot_term)
        })
    };
    let mut stale = snapshot_index > 0 && parsed.iter().any(|segment| mismatch(&segment.items));
    if retaining {
        // Every segment set aside was read above.
        stale |= retained.stale;
    } else if snapshot_index > 0 && !stale && first_live > 0 {
        let name = names[first_live - 1];
        if let Ok(bytes) = disk.read_file(&paths.segment(name)) {
            stale = mismatch(&parse_segment(group, name, &bytes));
        }
    }
    if stale {
        scan.dead.extend(parsed.iter().map(|segment| segment.name));
        return Ok(scan);
    }

    if parsed.is_empty() {
        return Ok(scan);
    }
    if parsed[0].name > snapshot_index + 1 {
        return Err(RecoveryError::Corrupt(format!(
            "the log starts at index {} but the snapshot ends at index {snapshot_index}",
            parsed[0].name
        )));
    }

    let corrupt_range = |scan: &mut LogScan, from: Index, to: Index| {
        scan.corrupt.extend(max(from, snapshot_index + 1)..to);
    };
    let mut end: Option<End> = None;
    let mut expected = parsed[0].name;
    let mut unknown_from: Option<Index> = None;
    let count = parsed.len();
    for (k, segment) in parsed.iter().enumerate() {
        if k > 0 {
            match unknown_from.take() {
                Some(from) => {
                    if segment.name < from {
                        return Err(RecoveryError::Corrupt(format!(
                            "segment {} starts below index {from}, which the segment before reached",
                            segment.name
                        )));
                    }
                    corrupt_range(&mut scan, from, segment.name);
                }
                None => {
                    if segment.name != expected {
                        return Err(RecoveryError::Corrupt(format!(
                            "segment {} should start at index {expected}",
                            segment.name
                        )));
                    }
                }
            }
            expected = segment.name;
        }
        for item in &segment.items {
            match *item {
                Item::Frame { ref entry, .. } => {
                    scan.highest_index = scan.highest_index.max(entry.index);
                    if end.is_none() && entry.index > snapshot_index {
                        scan.entries.push(entry.clone());
                    }
                    expected = entry.index + 1;
                }
                Item::Damage {
                    offset,
                    end: damage_end,
                    expected: at,
                    next,
                    unreadable,
                } => {
                    let here = End {
                        segment: k,
                        offset,
                        next_index: at,
                    };
                    match next {
                        Some(next) => {
                            let to = max(next, at + 1);
                            if to > snapshot_index + 1 {
                                corrupt_range(&mut scan, at, to);
                                end.get_or_insert(here);
                            }
                        }
                        None if k + 1 < count => {
                            // The rest of the segment is damaged; the next
                            // segment's name says which entries that lost.
                            unknown_from = Some(at);
                            end.get_or_insert(here);
                        }
                        None if unreadable => {
                            corrupt_range(&mut scan, at, at + 1);
                            end.get_or_insert(here);
                        }
                        None => {
                            scan.torn_tail_bytes = damage_end - offset;
                            end.get_or_insert(here);
                        }
                    }
                }
            }
        }
    }
    scan.corrupt.sort_unstable();
    scan.corrupt.dedup();

    let end = end.unwrap_or(End {
        segment: count - 1,
        offset: parsed[count - 1].file_bytes,
        next_index: expected,
    });
    // Files past the end: evidence when there is corruption, otherwise only
    // torn or covered data.
    let past_end = |scan: &mut LogScan, name: Index| {
        if scan.corrupt.is_empty() {
            scan.dead.push(name);
        } else {
            scan.beyond.push(name);
            scan.kept.push(name);
        }
    };
    if end.next_index <= snapshot_index {
        // Nothing after the snapshot survives: every file is past the end.
        for segment in &parsed {
            past_end(&mut scan, segment.name);
        }
        return Ok(scan);
    }
    for segment in &parsed[..=end.segment] {
        let is_end = std::ptr::eq(segment, &parsed[end.segment]);
        let mut offsets = Vec::new();
        let mut base = None;
        for item in &segment.items {
            if let Item::Frame { offset, entry } = item {
                if entry.index > snapshot_index && entry.index < end.next_index {
                    base.get_or_insert(entry.index);
                    offsets.push(u32::try_from(*offset).expect("segment size checked above"));
                }
            }
        }
        let len = if is_end {
            end.offset
        } else {
            segment.file_bytes
        };
        if is_end && segment.file_bytes > len {
            scan.truncate = Some((segment.name, len));
        }
        scan.segments
            .push((segment.name, base.unwrap_or(end.next_index), offsets, len));
        scan.kept.push(segment.name);
    }
    for segment in &parsed[end.segment + 1..] {
        past_end(&mut scan, segment.name);
    }
    scan.retained_damage = retained.damaged;
    add_retained(&mut scan, retained.finish(snapshot));
    Ok(scan)
}

/// Puts the retained frames in front of the store's segments: the segments
/// set aside below the snapshot that hold them are kept (and no longer dead),
/// and the first live segment's frames at or below the snapshot, if it holds
/// some, come before its own.
fn add_retained(scan: &mut LogScan, frames: Vec<RetainedFrame>) {
    let Some(first) = frames.first() else {
        return;
    };
    let mut runs: Vec<(Index, Term)> = Vec::new();
    for frame in &frames {
        if runs.last().is_none_or(|&(_, term)| term != frame.term) {
            runs.push((frame.index, frame.term));
        }
    }
    scan.retained_terms = runs;
    let live_first = scan.segments.first().map(|segment| segment.0);
    let mut below: Vec<(Index, Index, Vec<u32>, u64)> = Vec::new();
    let mut live_prefix: Vec<u32> = Vec::new();
    let mut live_base = None;
    for frame in &frames {
        let offset = u32::try_from(frame.offset).expect("segment size checked above");
        if Some(frame.segment) == live_first {
            live_base.get_or_insert(frame.index);
            live_prefix.push(offset);
            continue;
        }
        match below.last_mut() {
            Some(segment) if segment.0 == frame.segment => {
                segment.2.push(offset);
                segment.3 = frame.offset + frame.length;
            }
            _ => below.push((
                frame.segment,
                frame.index,
                vec![offset],
                frame.offset + frame.length,
            )),
        }
    }
    debug_assert!(first.index == below.first().map_or(first.index, |segment| segment.1));
    if let (Some(base), Some(segment)) = (live_base, scan.segments.first_mut()) {
        debug_assert_eq!(segment.1, base + live_prefix.len() as u64);
        live_prefix.append(&mut segment.2);
        segment.1 = base;
        segment.2 = live_prefix;
    }
    scan.dead
        .retain(|name| !below.iter().any(|segment| segment.0 == *name));
    scan.kept.extend(below.iter().map(|segment| segment.0));
    below.append(&mut scan.segments);
    scan.segments = below;
}
