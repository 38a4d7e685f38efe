//! The on-disk state of one replication group: checksummed log segments, the
//! two-slot vote record and the snapshot (docs/storage.md).
//!
//! Storage does no IO of its own while the node runs. Every mutating method
//! is a pure *plan*: it updates the in-memory picture of the files and returns
//! the `DiskOp`s that make the disk match, which the node core submits, in
//! order, to the node's FIFO `Disk`. Storage never sees their completions, so
//! every plan is written to be correct under the `Disk` ordering contract
//! alone: an op takes effect only after every op planned before it, and a
//! completed `Sync`/`SyncDir` makes every earlier op it covers durable.
//!
//! Recovery (`GroupStore::recover`) reads through the synchronous
//! `Disk::list` and `Disk::read_file`, before the node handles any event.
//! The only other reads are of entries retained below the snapshot
//! (`retain_below_snapshot`, `plan_read`): planned `Read` ops whose bytes
//! `LogReadPlan::decode` checks frame by frame.
//!
//! The rule that keeps recovery unambiguous (docs/storage.md, "Invariants"):
//! bytes or files that are no longer part of the log are removed *durably*
//! before anything is written where they could be mistaken for log data. So a
//! crash leaves unsynced data only at the end of the last segment, where
//! recovery can treat damage as a torn tail; damage anywhere else is
//! corruption of data that was durable, and is reported, never dropped.

#![forbid(unsafe_code)]

mod codec;
mod recovery;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use runnel_consensus::{Entry, HardState, Index, Snapshot, Term};
use runnel_io::{Disk, DiskError, DiskOp, GroupId};

pub use codec::{FRAME_HEADER_BYTES, VOTE_RECORD_BYTES};

/// The largest frame (header included) a segment may hold. A frame length
/// field above it is corruption, never an allocation size.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// The largest `Payload::Data` an entry may carry. The node must reject
/// larger proposals with a clear error before they reach the log.
pub const ENTRY_DATA_BYTES_MAX: usize = FRAME_BYTES_MAX - FRAME_HEADER_BYTES;
/// The most voters, and separately the most learners, a config may list.
pub const CONFIG_NODES_MAX: usize = 256;
/// The smallest allowed `StoreOptions::segment_bytes_max`: one empty frame.
/// Small values are only useful in tests, to exercise segment rolling.
pub const SEGMENT_BYTES_MIN: u64 = FRAME_HEADER_BYTES as u64;
/// The largest allowed `StoreOptions::segment_bytes_max`.
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = 1 << 30;
/// The default `StoreOptions::segment_bytes_max`.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// The smallest allowed non-zero `StoreOptions::segment_ms`. Below a
/// second, a steadily written group would roll (and sync) a segment for
/// nearly every append.
pub const SEGMENT_MS_MIN: u64 = 1_000;
/// The default `StoreOptions::segment_ms`: 7 days, Kafka's `log.roll.ms`
/// default.
pub const SEGMENT_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// The largest allowed `StoreOptions::segment_ms`: 365 days. Beyond that a
/// roll by age would come long after any retention anyone sets.
pub const SEGMENT_MS_MAX: u64 = 365 * 24 * 3600 * 1000;
/// The largest snapshot file. Recovery reads the whole file into memory, so
/// this also bounds the memory recovery needs for it.
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;
/// At most this many entries in one read of entries retained below the
/// snapshot (`GroupStore::plan_read`): the consensus default for one Append
/// (`Options::append_entries_max`), which is what the read becomes.
pub const LOG_READ_ENTRIES_MAX: usize = 256;
/// At most this many bytes of frames in one read of retained entries,
/// unless the first frame alone is larger (it is then read alone, and is at
/// most `FRAME_BYTES_MAX`): the consensus default for one Append
/// (`Options::append_bytes_max`).
pub const LOG_READ_BYTES_MAX: u64 = 1 << 20;
/// At most this many entries, and this many bytes of frames, in one read
/// for a backfill (`GroupStore::plan_read_ending_at`), unless the first
/// frame alone is larger. A follower stores each chunk as one segment file
/// (`prepend_retained`), so chunks much larger than one Append keep a
/// replica that backfills a whole partition from making a file per MiB.
pub const BACKFILL_READ_ENTRIES_MAX: usize = 1 << 14;
pub const BACKFILL_READ_BYTES_MAX: u64 = 16 << 20;
const _: () = assert!(
    BACKFILL_READ_ENTRIES_MAX >= LOG_READ_ENTRIES_MAX
        && BACKFILL_READ_BYTES_MAX >= LOG_READ_BYTES_MAX
);
const _: () = assert!(BACKFILL_READ_BYTES_MAX <= FRAME_BYTES_MAX as u64);

// The bounds must be consistent with each other: a frame of the largest size
// must be writable into an empty segment, a segment (which may exceed
// `segment_bytes_max` by at most one frame, when that frame alone is bigger)
// must be addressable by the u32 frame offsets kept in memory, and the
// largest config must fit in a frame.
const _: () = {
    assert!(SEGMENT_BYTES_MIN >= FRAME_HEADER_BYTES as u64);
    assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
    assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX_LIMIT);
    assert!(SEGMENT_BYTES_MAX_LIMIT + FRAME_BYTES_MAX as u64 <= u32::MAX as u64);
    assert!(SEGMENT_MS_MIN > 0);
    assert!(SEGMENT_MS_MIN <= SEGMENT_MS_DEFAULT);
    assert!(SEGMENT_MS_DEFAULT <= SEGMENT_MS_MAX);
    assert!(FRAME_HEADER_BYTES + 8 + 16 * CONFIG_NODES_MAX <= FRAME_BYTES_MAX);
    assert!(FRAME_HEADER_BYTES + 8 + 16 * CONFIG_NODES_MAX <= SNAPSHOT_BYTES_MAX as usize);
};

/// Tunables of a group's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// A segment is rolled (a new file started) when appending the next frame
    /// would take it past this many bytes. A frame larger than this on its
    /// own still goes into a segment, alone. Must be within
    /// `SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX_LIMIT`.
    pub segment_bytes_max: u64,
    /// A segment is rolled when the next frame is appended (`append_at`) at
    /// least this many milliseconds, by the caller's clock, after the
    /// segment's first frame was: so that a quietly written group's old
    /// entries end up in segments that `discard_below` can delete whole.
    /// An empty segment is never rolled. 0 never rolls by age; otherwise
    /// within `SEGMENT_MS_MIN..=SEGMENT_MS_MAX`. See docs/storage.md,
    /// "Rolling", for what a restart does to a segment's age.
    pub segment_ms: u64,
    /// Keep the segments a snapshot covers, so that entries below the
    /// snapshot point can be read back for a lagging follower
    /// (docs/protocol.md §8.1, `plan_read`), until `discard_below` deletes
    /// them. Without it a snapshot deletes every segment it covers.
    pub retain_below_snapshot: bool,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_bytes_max: SEGMENT_BYTES_DEFAULT,
            segment_ms: SEGMENT_MS_DEFAULT,
            retain_below_snapshot: false,
        }
    }
}

impl StoreOptions {
    fn check(&self) {
        assert!(
            (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX_LIMIT).contains(&self.segment_bytes_max),
            "segment_bytes_max {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX_LIMIT}",
            self.segment_bytes_max
        );
        assert!(
            segment_ms_valid(self.segment_ms),
            "segment_ms {} is neither 0 nor within {SEGMENT_MS_MIN}..={SEGMENT_MS_MAX}",
            self.segment_ms
        );
    }
}

/// Whether `segment_ms` is a valid `StoreOptions::segment_ms`: 0 (never roll
/// by age) or within `SEGMENT_MS_MIN..=SEGMENT_MS_MAX`. Callers that take it
/// from an operator check it with this first (the store asserts it).
pub fn segment_ms_valid(segment_ms: u64) -> bool {
    segment_ms == 0 || (SEGMENT_MS_MIN..=SEGMENT_MS_MAX).contains(&segment_ms)
}

/// What recovery found and did not hand back as log entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes at the end of the last segment that did not hold a whole, intact
    /// frame and were not followed by any good frame: the trace of a write
    /// that a crash interrupted. They were never synced (or, indistinguishably,
    /// the very last frame was damaged at rest), and are not part of the log.
    pub torn_tail_bytes: u64,
    /// Set when the returned log stops before the end of what is on disk
    /// (a torn tail, or corruption): the index of the last entry returned,
    /// or the snapshot index when none is.
    pub truncated_after_index: Option<u64>,
    /// Indexes, above the snapshot, of entries that are damaged or missing
    /// before the tail: a bad frame followed by good ones, or an unreadable
    /// segment. Such an entry may have been committed. Only the entries before
    /// the first of them are returned; the data after it stays on disk until
    /// the node next appends (see `GroupStore::append`).
    pub corrupt_entries: Vec<u64>,
    /// The highest index this replica's disk shows it once held: of any
    /// intact frame (also past a corruption), of any damaged entry, or the
    /// snapshot's. A replica that lost entries catches up to at least this
    /// before it votes again (docs/protocol.md §10.3).
    pub highest_index_on_disk: u64,
    /// How many of the two vote slots held an intact record (1 or 2). With 1,
    /// the other slot was torn by a crash during an unsynced save (harmless),
    /// or damaged at rest, in which case the record returned may be older
    /// than the newest one ever synced.
    pub hard_state_copies_valid: u8,
    /// With `retain_below_snapshot`: damage below the snapshot point (a bad
    /// frame or an unreadable segment) cut the entries retained there, which
    /// then start after it. Nothing the replica needs is lost: the snapshot
    /// covers those entries.
    pub retained_damage: bool,
}

/// Everything recovery read back for one group.
#[derive(Debug)]
pub struct Recovered {
    /// Positioned after the last entry returned, ready to plan more ops.
    pub store: GroupStore,
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Every entry after the snapshot, contiguous from `snapshot index + 1`,
    /// up to the first damage (see `report`).
    pub entries: Vec<Entry>,
    /// With `retain_below_snapshot`: the entries still held below the
    /// snapshot point, as runs of `(first index, term)` covering
    /// `[retained_first(), snapshot index]` (what `Replica::set_retained`
    /// takes). Empty when none are (see docs/storage.md, "Recovery").
    pub retained_terms: Vec<(Index, Term)>,
    pub report: RecoveryReport,
}

/// A planned read of entries retained below the snapshot point
/// (`GroupStore::plan_read`): one `Read` of consecutive frames of one
/// segment, and what it must find there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReadPlan {
    group: GroupId,
    file: String,
    offset: u64,
    first_index: Index,
    /// The length of each frame expected, in order.
    frame_bytes: Vec<u32>,
}

/// A retained frame that failed its checks when read back: it is never
/// served, and the store no longer retains anything at or below it once the
/// caller reports it (`GroupStore::discard_below(index + 1)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetainedDamage {
    /// The index of the first frame that was not intact.
    pub index: Index,
}

impl LogReadPlan {
    /// The op to submit.
    pub fn op(&self) -> DiskOp {
        DiskOp::Read {
            file: self.file.clone(),
            offset: self.offset,
            len: self.bytes(),
        }
    }

    /// The index of the first entry read.
    pub fn first_index(&self) -> Index {
        self.first_index
    }

    /// How many entries the read covers.
    pub fn entry_count(&self) -> usize {
        self.frame_bytes.len()
    }

    /// Bytes the read covers.
    pub fn bytes(&self) -> u64 {
        self.frame_bytes.iter().map(|&bytes| u64::from(bytes)).sum()
    }

    /// The entries in the bytes the `Read` returned. Every frame must be
    /// whole, pass its checksum (which binds it to the group), carry the
    /// expected index and have the planned length; the first that does not
    /// is reported, and nothing is served (damaged data is never sent,
    /// docs/protocol.md §8.1). Terms are the caller's to check.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<Entry>, RetainedDamage> {
        let mut entries = Vec::with_capacity(self.frame_bytes.len());
        let mut position = 0;
        for (k, &expected_bytes) in self.frame_bytes.iter().enumerate() {
            let index = self.first_index + k as u64;
            match codec::decode_frame(self.group, bytes, position, |found| found == index) {
                Some((entry, length)) if length == expected_bytes as usize => {
                    entries.push(entry);
                    position += length;
                }
                _ => return Err(RetainedDamage { index }),
            }
        }
        Ok(entries)
    }
}

/// Why a group could not be recovered at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryError {
    /// Listing the disk, or reading the snapshot, failed.
    Disk(DiskError),
    /// The group has files but neither vote slot holds an intact record: the
    /// node does not know which term it is in or whom it voted for.
    NoValidHardState,
    /// The files contradict each other or the format in a way that is not a
    /// torn tail or a damaged entry (a damaged snapshot, a gap between
    /// segments, an unexpected file name).
    Corrupt(String),
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::Disk(error) => write!(f, "disk error during recovery: {error}"),
            RecoveryError::NoValidHardState => {
                write!(f, "no intact vote record, but the group has files")
            }
            RecoveryError::Corrupt(what) => write!(f, "corrupt group storage: {what}"),
        }
    }
}

impl std::error::Error for RecoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecoveryError::Disk(error) => Some(error),
            _ => None,
        }
    }
}

impl From<DiskError> for RecoveryError {
    fn from(error: DiskError) -> RecoveryError {
        RecoveryError::Disk(error)
    }
}

/// Names of a group's files, relative to the data directory.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    pub(crate) group_dir: String,
    pub(crate) log_dir: String,
    pub(crate) votes: [String; 2],
    pub(crate) snapshot: String,
    pub(crate) snapshot_tmp: String,
    /// Where `prepend_retained` writes a segment before renaming it into
    /// place: in the log directory, so that one `SyncDir` makes the rename
    /// durable.
    pub(crate) backfill_tmp: String,
    /// The tombstone: this node deleted a replica of the group once.
    pub(crate) left: String,
}

/// The directory holding every group's directory.
pub(crate) const GROUPS_DIR: &str = "groups";
/// The name of a group's tombstone file (see `GroupStore::delete_ops`).
pub(crate) const LEFT_FILE: &str = "left";
/// The data directory itself, as `DiskOp::SyncDir` names it.
pub(crate) const DATA_DIR: &str = "";
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// The name, in a group's log directory, of a segment being prepended.
pub(crate) const BACKFILL_TMP_FILE: &str = "backfill.tmp";

impl Paths {
    pub(crate) fn new(group: GroupId) -> Paths {
        let group_dir = format!("{GROUPS_DIR}/{group:020}");
        Paths {
            log_dir: format!("{group_dir}/log"),
            votes: [format!("{group_dir}/vote-a"), format!("{group_dir}/vote-b")],
            snapshot: format!("{group_dir}/snapshot"),
            snapshot_tmp: format!("{group_dir}/snapshot.tmp"),
            backfill_tmp: format!("{group_dir}/log/{BACKFILL_TMP_FILE}"),
            left: format!("{group_dir}/{LEFT_FILE}"),
            group_dir,
        }
    }

    pub(crate) fn segment(&self, first_index: Index) -> String {
        format!("{}/{first_index:020}{SEGMENT_SUFFIX}", self.log_dir)
    }
}

/// Parses a 20-digit decimal file-name component.
pub(crate) fn parse_20_digits(text: &str) -> Option<u64> {
    if text.len() == 20 && text.bytes().all(|byte| byte.is_ascii_digit()) {
        text.parse().ok()
    } else {
        None
    }
}

/// What the store remembers of one segment file: enough to plan appends and
/// truncations without reading the disk.
#[derive(Clone, Debug)]
struct Segment {
    /// The index in the file name: the first frame the file holds, or would
    /// hold when it is empty.
    name: Index,
    /// The index of the frame at `offsets[0]`. Equal to `name` unless frames
    /// at the start, all at or below the snapshot, were dropped from memory.
    base: Index,
    /// Byte offset of each frame from `base` on.
    offsets: Vec<u32>,
    /// Bytes of the file that belong to the log: where the next frame goes.
    len: u64,
    /// Since when the segment is ageing, for the roll by age.
    started: Started,
}

/// When a segment started, for the roll by age (docs/storage.md, "Rolling").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Started {
    /// Empty, or written only by `append` (no clock): no age yet. The next
    /// frame appended with a clock starts it.
    Unknown,
    /// Recovered from disk, which records no time: taken as old enough, so
    /// the first `append_at` after recovery rolls it if it holds a frame.
    /// Rolling early costs one smaller segment; taking it as new would let
    /// a node restarted more often than `segment_ms` never roll by age.
    Recovered,
    /// Its first frame (or the first with a clock) was appended at this
    /// time on the caller's clock.
    At(u64),
}

impl Segment {
    fn empty(name: Index) -> Segment {
        Segment {
            name,
            base: name,
            offsets: Vec::new(),
            len: 0,
            started: Started::Unknown,
        }
    }

    /// One past the last index held.
    fn end(&self) -> Index {
        self.base + self.offsets.len() as u64
    }
}

/// Which vote slot holds the newest record, and whether that record may still
/// be undurable. Index 0 is `vote-a`, 1 is `vote-b`.
#[derive(Clone, Debug)]
struct VoteSlots {
    newest: usize,
    sequence: u64,
    /// True when the newest record was written after the last planned sync of
    /// its slot. Then the *other* slot holds the newest durable record, so
    /// the next save must overwrite the newest slot again rather than the
    /// other one (see `save_hard_state`).
    newest_unsynced: bool,
}

/// The durable state of one replication group, as a planner of disk ops.
#[derive(Debug)]
pub struct GroupStore {
    group: GroupId,
    options: StoreOptions,
    paths: Paths,
    snapshot_index: Index,
    snapshot_term: Term,
    last_index: Index,
    /// Segments holding the log, ascending. Frames at or below the snapshot
    /// may remain at the start of the first one.
    segments: Vec<Segment>,
    /// `(first index, term)` of each run of equal terms among the entries
    /// after the snapshot, so that terms can be checked without reading.
    terms: Vec<(Index, Term)>,
    hard_state: HardState,
    vote: VoteSlots,
    /// The lowest index the store holds and serves (`plan_read`): frames
    /// from here up to the snapshot index are retained below the snapshot.
    /// `snapshot_index + 1` when none are (always, without
    /// `retain_below_snapshot`). The first segment's `base` is at most this.
    retained_first: Index,
    /// Segments (by name) written or truncated since their last planned sync.
    dirty_segments: BTreeSet<Index>,
    /// Vote slots written since their last planned sync.
    dirty_votes: [bool; 2],
    /// Entries created or removed in the log directory since its last sync.
    dirty_log_dir: bool,
    /// Entries created or removed in the group directory since its last sync.
    dirty_group_dir: bool,
    /// Whether the log directory exists (it is created by the first segment
    /// write, which then also dirties the group directory).
    log_dir_exists: bool,
    /// After recovery: ops that make what recovery read durable and remove
    /// torn and stale data, prepended to the first plan (see `repair_ops`).
    repair: Option<Vec<DiskOp>>,
    /// After recovery found corruption: ops that remove the damaged log
    /// suffix, prepended to the first plan that writes the log.
    cut: Option<Vec<DiskOp>>,
}

impl GroupStore {
    /// Creates an empty store for a new group: returns the store and the ops
    /// that durably create its files.
    ///
    /// The ops write `initial` into both vote slots (sequences 1 and 2), sync
    /// them, and sync the group directory, `groups/` and the data directory,
    /// so that the group's existence is durable.
    ///
    /// Durability contract: when the last op completes, the group exists and
    /// `initial` is its durable vote record. A crash before that can leave
    /// nothing, or a group directory whose vote slots are missing or torn;
    /// recovery then reports `NoValidHardState` (the node must treat such a
    /// group as one that lost its disk, which is safe because the node never
    /// acted on a group whose creation had not completed). Logs start empty;
    /// no segment exists until the first append.
    ///
    /// Precondition: the group has no files on disk (see `groups_on_disk`);
    /// files of an earlier incarnation would be mixed into this one.
    pub fn create(
        group: GroupId,
        options: StoreOptions,
        initial: &HardState,
    ) -> (GroupStore, Vec<DiskOp>) {
        options.check();
        let paths = Paths::new(group);
        let mut ops = Vec::new();
        for (slot, sequence) in [(0, 1), (1, 2)] {
            ops.push(DiskOp::Write {
                file: paths.votes[slot].clone(),
                offset: 0,
                data: codec::encode_vote(
                    group,
                    &codec::VoteRecord {
                        sequence,
                        state: *initial,
                    },
                ),
            });
        }
        for slot in 0..2 {
            ops.push(DiskOp::Sync {
                file: paths.votes[slot].clone(),
            });
        }
        for dir in [paths.group_dir.as_str(), GROUPS_DIR, DATA_DIR] {
            ops.push(DiskOp::SyncDir {
                dir: dir.to_string(),
            });
        }
        let store = GroupStore {
            group,
            options,
            paths,
            snapshot_index: 0,
            snapshot_term: 0,
            last_index: 0,
            segments: Vec::new(),
            terms: Vec::new(),
            hard_state: *initial,
            vote: VoteSlots {
                newest: 1,
                sequence: 2,
                newest_unsynced: false,
            },
            retained_first: 1,
            dirty_segments: BTreeSet::new(),
            dirty_votes: [false; 2],
            dirty_log_dir: false,
            dirty_group_dir: false,
            log_dir_exists: false,
            repair: None,
            cut: None,
        };
        (store, ops)
    }

    /// Recovers group `group` from disk, reading synchronously through
    /// `Disk::list` and `Disk::read_file` and writing nothing. `Ok(None)` if
    /// the group has no files at all.
    ///
    /// The vote record is the intact slot with the higher sequence. The log
    /// is every intact frame after the snapshot, in order, up to the first
    /// damage: damage at the very end of the last segment is a torn tail
    /// (reported in `torn_tail_bytes`), damage followed by any intact frame is
    /// corruption (reported in `corrupt_entries`). Segments wholly at or below
    /// the snapshot, and segments left over from a log that the snapshot
    /// replaced (their entry at the snapshot index has another term), are
    /// ignored. See docs/storage.md, "Recovery".
    ///
    /// What recovery read may itself not be durable yet (a process crash
    /// keeps unsynced data in the page cache). The returned store therefore
    /// has repair ops pending (`repair_ops`), which it also puts in front of
    /// the first ops it plans: the node must not act on the recovered state
    /// (vote, acknowledge) before those ops have completed.
    pub fn recover(
        disk: &mut dyn Disk,
        group: GroupId,
        options: StoreOptions,
    ) -> Result<Option<Recovered>, RecoveryError> {
        options.check();
        recovery::recover(disk, group, options)
    }

    /// Groups that have files on disk (from `Disk::list`), ascending.
    pub fn groups_on_disk(disk: &mut dyn Disk) -> Result<Vec<GroupId>, DiskError> {
        let mut groups = BTreeSet::new();
        for file in disk.list()? {
            let Some(rest) = file
                .strip_prefix(GROUPS_DIR)
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            if let Some((name, _)) = rest.split_once('/') {
                if let Some(group) = parse_20_digits(name) {
                    groups.insert(group);
                }
            }
        }
        Ok(groups.into_iter().collect())
    }

    /// Groups whose directory holds a tombstone (`delete_ops` wrote it):
    /// this node deleted a replica of them once, and with it the record of
    /// its votes, ascending.
    pub fn groups_left(disk: &mut dyn Disk) -> Result<Vec<GroupId>, DiskError> {
        let mut groups = BTreeSet::new();
        for file in disk.list()? {
            let Some(rest) = file
                .strip_prefix(GROUPS_DIR)
                .and_then(|r| r.strip_prefix('/'))
            else {
                continue;
            };
            if let Some((name, LEFT_FILE)) = rest.split_once('/') {
                if let Some(group) = parse_20_digits(name) {
                    groups.insert(group);
                }
            }
        }
        Ok(groups.into_iter().collect())
    }

    /// Ops that make the state recovery returned durable and remove what
    /// recovery found to be no part of it. Empty for a store that was created
    /// rather than recovered, and once the store has planned any other ops
    /// (which then began with these same ops, so submitting them is optional
    /// but lets the node learn when the recovered state is durable).
    ///
    /// In order: a `Sync` of every file recovery kept and a `SyncDir` of the
    /// log, group, `groups/` and data directories (so a vote, snapshot or
    /// entry recovery read from the page cache cannot be lost by a later power
    /// failure); the emptying of a damaged vote slot (so that no later torn
    /// write can complete its remains into a record that was never durable);
    /// then the truncation of a torn tail, the removal of a leftover
    /// `snapshot.tmp`, of segments wholly covered by the snapshot and of
    /// segments of a log the snapshot replaced, each made durable by the
    /// syncs that follow it (docs/storage.md, "`repair_ops()` and the cut").
    ///
    /// Durability contract: once they complete, everything `recover` returned
    /// is durable and the files hold nothing else, except that after
    /// corruption the damaged suffix stays on disk (as evidence, until the
    /// next append replaces it). A crash part-way leaves a state that
    /// recovery reads back as the same `Recovered` (minus the torn tail).
    pub fn repair_ops(&self) -> Vec<DiskOp> {
        self.repair.clone().unwrap_or_default()
    }

    /// Ops that append `entries` to the log.
    ///
    /// `entries` are contiguous. `entries[0].index` may be at most
    /// `last_index() + 1`, and at least `first_index()`; when it is at or
    /// below `last_index()`, every stored entry from `entries[0].index` on is
    /// removed first (conflict truncation). Panics (programmer error) on
    /// non-contiguous entries, a gap after the log, an append below
    /// `first_index()`, or a term lower than the term of the entry before.
    ///
    /// The ops are `Write`s, one per segment touched, and no sync of the new
    /// data, with three exceptions that exist so that recovery never has to
    /// guess which data is stale (docs/storage.md, "Invariants"):
    /// - conflict truncation first `Delete`s every later segment, newest
    ///   first, each followed by a `SyncDir` of the log directory (so a crash
    ///   part-way leaves a prefix of the old log, never a gap), then
    ///   `Truncate`s the segment holding `entries[0].index` at that frame and
    ///   `Sync`s it, all before any new frame is written, so new frames never
    ///   land on top of stale ones that a crash could bring back;
    /// - rolling to a new segment `Sync`s the full one (and the log directory,
    ///   if that segment was new) before the new segment is written, so
    ///   unsynced data can only ever be in the last segment;
    /// - the first plan after recovery starts with the repair ops (see
    ///   `repair_ops`) and, after corruption, with the removal of the damaged
    ///   suffix.
    ///
    /// Durability contract: when the ops complete, nothing new is durable
    /// (except the full segments synced on a roll, and the truncation);
    /// entries are durable once a later `sync_ops` completes. A crash before
    /// that can lose any suffix of the new entries, and may tear the last
    /// frame written; recovery reads back the previous log (after a conflict
    /// truncation: the truncated one, or during its deletions a prefix of the
    /// old log reaching at least the truncation point) followed by some
    /// prefix of `entries`, and reports a torn frame as a torn tail. A crash
    /// that keeps a later unsynced write but loses an earlier one leaves a
    /// hole that recovery conservatively reports as corruption.
    pub fn append(&mut self, entries: &[Entry]) -> Vec<DiskOp> {
        self.append_with_clock(entries, None)
    }

    /// `append`, at `now_ms` on the caller's clock: also rolls the last
    /// segment, before the first of `entries`, when it is not empty and its
    /// first frame was appended at least `StoreOptions::segment_ms` before
    /// `now_ms` (docs/storage.md, "Rolling"). A segment recovered from disk,
    /// whose age the format does not record, is taken as old enough: the
    /// first `append_at` after recovery rolls it. The store never reads a clock;
    /// a clock that goes back only delays a roll, one that jumps ahead only
    /// brings it forward. The ops and the durability contract are
    /// `append`'s: a roll by age is planned exactly like a roll by size.
    pub fn append_at(&mut self, entries: &[Entry], now_ms: u64) -> Vec<DiskOp> {
        self.append_with_clock(entries, Some(now_ms))
    }

    fn append_with_clock(&mut self, entries: &[Entry], now_ms: Option<u64>) -> Vec<DiskOp> {
        let Some(first) = entries.first() else {
            return Vec::new();
        };
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1].index,
                pair[0].index + 1,
                "append of non-contiguous entries"
            );
            assert!(
                pair[1].term >= pair[0].term,
                "append with a decreasing term at index {}",
                pair[1].index
            );
        }
        assert!(
            first.index >= self.first_index(),
            "append at index {} below first_index {}",
            first.index,
            self.first_index()
        );
        assert!(
            first.index <= self.last_index + 1,
            "append at index {} leaves a gap after last_index {}",
            first.index,
            self.last_index
        );
        let mut ops = self.take_prelude(true);
        if first.index <= self.last_index {
            self.truncate_from(first.index, &mut ops);
        }
        let previous_term = self
            .term_at(first.index - 1)
            .expect("the entry before an append is in the log or the snapshot");
        assert!(
            first.term >= previous_term,
            "append at index {} with term {} after term {previous_term}",
            first.index,
            first.term
        );

        // Frames bound for the last segment, written with one Write each
        // time the segment changes.
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_offset = 0;
        for entry in entries {
            let frame_bytes = codec::frame_bytes(entry) as u64;
            let roll = match self.segments.last() {
                None => true,
                Some(last) => {
                    last.len > 0
                        && (last.len + frame_bytes > self.options.segment_bytes_max
                            || self.aged(last, now_ms))
                }
            };
            if roll {
                self.flush_pending(&mut pending, pending_offset, &mut ops);
                if !self.segments.is_empty() {
                    // Make the full segment and its name durable before the
                    // next one exists: see the doc comment.
                    self.flush_log(&mut ops);
                }
                self.segments.push(Segment::empty(entry.index));
                self.dirty_log_dir = true;
                if !self.log_dir_exists {
                    self.log_dir_exists = true;
                    self.dirty_group_dir = true;
                }
            }
            let last = self.segments.last_mut().expect("a segment to append to");
            if pending.is_empty() {
                pending_offset = last.len;
            }
            if let Some(now_ms) = now_ms {
                // A new or emptied segment starts its age with its first
                // frame; one written so far without a clock with the first
                // frame appended with one.
                if last.len == 0 || last.started == Started::Unknown {
                    last.started = Started::At(now_ms);
                }
            } else if last.len == 0 {
                last.started = Started::Unknown;
            }
            debug_assert_eq!(last.end(), entry.index);
            last.offsets.push(
                u32::try_from(last.len).expect("segment offsets fit in u32 (see the bounds)"),
            );
            last.len += frame_bytes;
            codec::encode_frame(self.group, entry, &mut pending);
            self.dirty_segments.insert(last.name);
            match self.terms.last() {
                Some(&(_, term)) if term == entry.term => {}
                _ => self.terms.push((entry.index, entry.term)),
            }
            self.last_index = entry.index;
        }
        self.flush_pending(&mut pending, pending_offset, &mut ops);
        ops
    }

    /// Ops that write the vote record, no sync.
    ///
    /// Two slot files, `vote-a` and `vote-b`, each hold one fixed-size,
    /// checksummed record with a sequence number. A save writes the next
    /// sequence into the slot *not* holding the newest record, unless the
    /// newest record has not been synced yet, in which case it overwrites
    /// that same slot: either way the slot being written never holds the
    /// last durable record, so a torn write can never lose it.
    ///
    /// Panics (programmer error) if the term decreases or the vote changes
    /// within a term: a node that did either could vote twice.
    ///
    /// Durability contract: durable once a later `sync_ops` completes. A
    /// crash before that leaves the slot with the old record, the new one, or
    /// a torn mix that fails its checksum; recovery then returns the new
    /// record or the last durable one.
    pub fn save_hard_state(&mut self, state: &HardState) -> Vec<DiskOp> {
        assert!(
            state.term >= self.hard_state.term,
            "hard state term goes back from {} to {}",
            self.hard_state.term,
            state.term
        );
        if state.term == self.hard_state.term && self.hard_state.voted_for.is_some() {
            assert_eq!(
                state.voted_for, self.hard_state.voted_for,
                "vote changed within term {}",
                state.term
            );
        }
        let mut ops = self.take_prelude(false);
        let slot = if self.vote.newest_unsynced {
            self.vote.newest
        } else {
            1 - self.vote.newest
        };
        self.vote.sequence += 1;
        ops.push(DiskOp::Write {
            file: self.paths.votes[slot].clone(),
            offset: 0,
            data: codec::encode_vote(
                self.group,
                &codec::VoteRecord {
                    sequence: self.vote.sequence,
                    state: *state,
                },
            ),
        });
        self.vote.newest = slot;
        self.vote.newest_unsynced = true;
        self.dirty_votes[slot] = true;
        self.hard_state = *state;
        ops
    }

    /// Ops that make every earlier write of this store durable: a `Sync` of
    /// each file written or truncated since the last `sync_ops` (segments,
    /// vote slots), then a `SyncDir` of the log directory and the group
    /// directory where files were created or deleted since.
    ///
    /// Durability contract: after these ops complete, everything planned
    /// before them is durable (the node may then acknowledge the entries and
    /// send messages that depend on the vote). A crash before they complete
    /// leaves what the contracts of the earlier plans describe. If a `Sync`
    /// fails, what it covered is in an unknown state: the node must stop,
    /// never retry as if it had succeeded.
    pub fn sync_ops(&mut self) -> Vec<DiskOp> {
        let mut ops = self.take_prelude(false);
        self.flush_log(&mut ops);
        for slot in 0..2 {
            if std::mem::take(&mut self.dirty_votes[slot]) {
                ops.push(DiskOp::Sync {
                    file: self.paths.votes[slot].clone(),
                });
            }
        }
        self.vote.newest_unsynced = false;
        ops
    }

    /// Durably installs `snapshot` and compacts the log. Panics (programmer
    /// error) unless `snapshot.meta.index` is above the current snapshot's.
    ///
    /// The ops, in order: delete any leftover `snapshot.tmp`, write the
    /// snapshot to `snapshot.tmp`, `Sync` it, `Rename` it over `snapshot`,
    /// `SyncDir` the group directory. Then:
    /// - if the log holds `(index, term)` of the snapshot, `Delete` every
    ///   segment whose entries are all at or below the index, then `SyncDir`
    ///   the log directory; the entries after the index stay; with
    ///   `retain_below_snapshot` nothing is deleted, and the entries at or
    ///   below the index stay readable (`plan_read`) until `discard_below`;
    /// - otherwise the whole log is discarded: first the segments that start
    ///   after the snapshot index are deleted and the directory synced, then
    ///   the rest and the directory synced again, so that a crash part-way
    ///   always leaves the segment holding the snapshot index (whose term
    ///   shows the log is stale) if any segment past it survives. The next
    ///   append starts at `index + 1`.
    ///
    /// Durability contract: when the ops complete, the snapshot is durable
    /// and the deleted segments are durably gone. A crash before the rename
    /// is durable leaves the previous snapshot and the whole log; after it,
    /// the new snapshot with any subset of the segments it makes redundant,
    /// which recovery ignores. Entries appended but not yet synced stay
    /// unsynced (a later `sync_ops` covers them).
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DiskOp> {
        let index = snapshot.meta.index;
        let term = snapshot.meta.term;
        assert!(
            index > self.snapshot_index,
            "snapshot at index {index} does not advance past snapshot {}",
            self.snapshot_index
        );
        let mut ops = self.take_prelude(true);
        let contains = index <= self.last_index && self.term_at(index) == Some(term);
        ops.push(DiskOp::Delete {
            file: self.paths.snapshot_tmp.clone(),
        });
        ops.push(DiskOp::Write {
            file: self.paths.snapshot_tmp.clone(),
            offset: 0,
            data: codec::encode_snapshot(self.group, snapshot),
        });
        ops.push(DiskOp::Sync {
            file: self.paths.snapshot_tmp.clone(),
        });
        ops.push(DiskOp::Rename {
            from: self.paths.snapshot_tmp.clone(),
            to: self.paths.snapshot.clone(),
        });
        ops.push(DiskOp::SyncDir {
            dir: self.paths.group_dir.clone(),
        });
        self.dirty_group_dir = false;

        // §8.1: when retaining, the covered segments stay, readable below
        // the snapshot point until `discard_below` deletes them, and the
        // frames from `retained_first` on are retained.
        if contains && !self.options.retain_below_snapshot {
            // A segment is wholly covered when the next one starts at or
            // below index + 1, or, for the last one, when it ends at or below
            // the index (an empty last segment is named last_index + 1, which
            // is above the index here, so it stays).
            let covered = self
                .segments
                .iter()
                .enumerate()
                .take_while(|(k, segment)| match self.segments.get(k + 1) {
                    Some(next) => next.name <= index + 1,
                    None => segment.end() <= index + 1 && segment.name <= index,
                })
                .count();
            let removed: Vec<Segment> = self.segments.drain(..covered).collect();
            self.delete_segments(&removed, &mut ops);
            if let Some(first) = self.segments.first_mut() {
                if first.base <= index {
                    let drop = (index + 1 - first.base) as usize;
                    first.offsets.drain(..drop);
                    first.base = index + 1;
                }
            }
            self.retained_first = index + 1;
        }
        if contains {
            // Keep only the runs of entries after the index: the run that
            // covers index + 1 restarts there unless a new run starts there.
            let keep_from = self.terms.partition_point(|&(start, _)| start <= index);
            let covering_term = self.terms[keep_from - 1].1;
            self.terms.drain(..keep_from);
            let next_run_starts_after = self
                .terms
                .first()
                .is_none_or(|&(start, _)| start > index + 1);
            if index < self.last_index && next_run_starts_after {
                self.terms.insert(0, (index + 1, covering_term));
            }
        } else {
            let segments = std::mem::take(&mut self.segments);
            let (after, rest): (Vec<Segment>, Vec<Segment>) = segments
                .into_iter()
                .partition(|segment| segment.name > index);
            self.delete_segments(&after, &mut ops);
            self.delete_segments(&rest, &mut ops);
            self.terms.clear();
            self.last_index = index;
            self.retained_first = index + 1;
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
        ops
    }

    /// The last index in the log, or the snapshot index when the log is empty.
    /// Ops that remove the group's files, for a group the cluster deleted.
    ///
    /// Durability contract: the vote slots go first, so a crash part-way
    /// leaves a group that recovery reports as `NoValidHardState`; the node
    /// treats that as a lost disk and rejoins empty, and since the group no
    /// longer exists, nothing ever wakes it. Directories stay (empty).
    ///
    /// First of all a tombstone (`left`) is made durable, and never deleted:
    /// a replica of the group started again on this node knows it lost its
    /// vote record, so it must not start from the group's initial membership
    /// (docs/protocol.md §12.4). Recovery ignores it.
    pub fn delete_ops(&self) -> Vec<DiskOp> {
        let mut ops = vec![
            DiskOp::Write {
                file: self.paths.left.clone(),
                offset: 0,
                data: b"left\n".to_vec(),
            },
            DiskOp::Sync {
                file: self.paths.left.clone(),
            },
            DiskOp::SyncDir {
                dir: self.paths.group_dir.clone(),
            },
        ];
        for slot in &self.paths.votes {
            ops.push(DiskOp::Delete { file: slot.clone() });
        }
        ops.push(DiskOp::SyncDir {
            dir: self.paths.group_dir.clone(),
        });
        for segment in &self.segments {
            ops.push(DiskOp::Delete {
                file: self.paths.segment(segment.name),
            });
        }
        ops.push(DiskOp::Delete {
            file: self.paths.backfill_tmp.clone(),
        });
        ops.push(DiskOp::Delete {
            file: self.paths.snapshot.clone(),
        });
        ops.push(DiskOp::Delete {
            file: self.paths.snapshot_tmp.clone(),
        });
        if self.log_dir_exists {
            ops.push(DiskOp::SyncDir {
                dir: self.paths.log_dir.clone(),
            });
        }
        ops.push(DiskOp::SyncDir {
            dir: self.paths.group_dir.clone(),
        });
        ops
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The first index the log can hold: the snapshot index + 1 (1 without
    /// a snapshot). When `last_index() < first_index()` the log is empty.
    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    /// The term of the entry at `index`, for `index` from the snapshot index
    /// (whose term is the snapshot's) to `last_index()`; None outside.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index {
            return None;
        }
        let run = self.terms.partition_point(|&(start, _)| start <= index);
        Some(self.terms[run - 1].1)
    }

    /// The index of the current snapshot, 0 when there is none.
    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// The lowest index retained below the snapshot point and readable with
    /// `plan_read`; `snapshot_index() + 1` when nothing is retained (always,
    /// without `retain_below_snapshot`).
    pub fn retained_first(&self) -> Index {
        self.retained_first
    }

    /// Bytes of the frames retained below the snapshot point, from
    /// `retained_first()` up to the snapshot index.
    pub fn retained_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|segment| self.retained_in(segment))
            .map(|(segment, count)| frame_end(segment, count - 1) - u64::from(segment.offsets[0]))
            .sum()
    }

    /// The lowest index from which the frames retained up to the snapshot
    /// point hold at most `bytes_max` bytes: `discard_below` of it bounds
    /// what the store keeps below the snapshot. `snapshot_index() + 1` when
    /// not even the frame at the snapshot index fits.
    pub fn retained_floor_for_bytes(&self, bytes_max: u64) -> Index {
        let mut floor = self.snapshot_index + 1;
        let mut total = 0;
        for (segment, count) in self
            .segments
            .iter()
            .rev()
            .filter_map(|segment| self.retained_in(segment))
        {
            let end = frame_end(segment, count - 1);
            let room = bytes_max - total;
            // The first frame from which the rest of this segment's retained
            // frames fit in the room left.
            let fits_from =
                segment.offsets[..count].partition_point(|&offset| end - u64::from(offset) > room);
            if fits_from > 0 {
                return segment.base + fits_from as u64;
            }
            total += end - u64::from(segment.offsets[0]);
            floor = segment.base;
        }
        floor
    }

    /// The frames of `segment` retained below the snapshot point: the
    /// segment and how many, from its `base` on; None if it holds none.
    fn retained_in<'a>(&self, segment: &'a Segment) -> Option<(&'a Segment, usize)> {
        if segment.offsets.is_empty() || segment.base > self.snapshot_index {
            return None;
        }
        let stop = segment.end().min(self.snapshot_index + 1);
        Some((segment, (stop - segment.base) as usize))
    }

    /// Plans a read of retained entries from `from` on, below the snapshot
    /// point (docs/protocol.md §8.1): one `Read` of consecutive frames of the
    /// segment holding `from`, at most up to the snapshot index, at most
    /// `LOG_READ_ENTRIES_MAX` frames and `LOG_READ_BYTES_MAX` bytes (or the
    /// first frame alone when it is larger). None when `from` is not
    /// retained (`retained_first()..=snapshot_index()`).
    ///
    /// The read changes nothing, so it needs no durability contract; being
    /// submitted to the FIFO disk after every op planned before it, it sees
    /// their effects. Its result goes through `LogReadPlan::decode`, which
    /// refuses any frame that fails its checks. A segment deleted before the
    /// read runs (`discard_below`) makes it fail; the caller then answers
    /// as for damage, without serving anything.
    pub fn plan_read(&self, from: Index) -> Option<LogReadPlan> {
        if from < self.retained_first || from > self.snapshot_index {
            return None;
        }
        let segment = self
            .segments
            .iter()
            .rfind(|segment| segment.base <= from && from < segment.end())?;
        let (_, count) = self.retained_in(segment)?;
        let start = (from - segment.base) as usize;
        let mut frame_bytes = Vec::new();
        let mut total = 0;
        for position in start..count {
            let bytes = frame_end(segment, position) - u64::from(segment.offsets[position]);
            if !frame_bytes.is_empty()
                && (frame_bytes.len() >= LOG_READ_ENTRIES_MAX || total + bytes > LOG_READ_BYTES_MAX)
            {
                break;
            }
            frame_bytes.push(u32::try_from(bytes).expect("frames are within FRAME_BYTES_MAX"));
            total += bytes;
        }
        Some(LogReadPlan {
            group: self.group,
            file: self.paths.segment(segment.name),
            offset: u64::from(segment.offsets[start]),
            first_index: from,
            frame_bytes,
        })
    }

    /// Every entry retained below the snapshot point, read at once with
    /// `Disk::read_file` instead of planned reads: for checkers and tools
    /// that inspect a store, never for the node's own path (it reads whole
    /// segment files synchronously). A damaged frame, or a file that cannot
    /// be read, leaves out everything below it, as planned reads would
    /// refuse it: what is returned runs without a gap up to the snapshot
    /// index (or is empty).
    pub fn read_retained_now(&self, disk: &mut dyn Disk) -> Vec<Entry> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut from = self.retained_first;
        let mut files: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        while let Some(plan) = self.plan_read(from) {
            let content = files
                .entry(plan.file.clone())
                .or_insert_with(|| disk.read_file(&plan.file).ok());
            let start = plan.offset as usize;
            let end = start + plan.bytes() as usize;
            let decoded = match content {
                Some(bytes) if end <= bytes.len() => plan.decode(&bytes[start..end]),
                _ => Err(RetainedDamage {
                    index: plan.first_index + plan.entry_count() as u64 - 1,
                }),
            };
            match decoded {
                Ok(read) => {
                    from += read.len() as u64;
                    entries.extend(read);
                }
                Err(damage) => {
                    entries.clear();
                    from = damage.index + 1;
                }
            }
        }
        entries
    }

    /// Plans a read of retained entries ending at `last`, for a follower
    /// that backfills below its snapshot (docs/protocol.md §8.2): one
    /// `Read` of consecutive frames of the segment holding `last`, as many
    /// as fit in `BACKFILL_READ_ENTRIES_MAX` frames and
    /// `BACKFILL_READ_BYTES_MAX` bytes going down from `last` (at least
    /// `last` itself), not below
    /// `retained_first()`. None when `last` is not retained. Like
    /// `plan_read`, it changes nothing.
    pub fn plan_read_ending_at(&self, last: Index) -> Option<LogReadPlan> {
        if last < self.retained_first || last > self.snapshot_index {
            return None;
        }
        let segment = self
            .segments
            .iter()
            .rfind(|segment| segment.base <= last && last < segment.end())?;
        let (_, count) = self.retained_in(segment)?;
        let stop = (last - segment.base) as usize;
        debug_assert!(stop < count);
        let mut start = stop;
        let mut total = frame_end(segment, stop) - u64::from(segment.offsets[stop]);
        while start > 0 && stop + 1 - start < BACKFILL_READ_ENTRIES_MAX {
            let bytes = frame_end(segment, start - 1) - u64::from(segment.offsets[start - 1]);
            if total + bytes > BACKFILL_READ_BYTES_MAX {
                break;
            }
            total += bytes;
            start -= 1;
        }
        let frame_bytes = (start..=stop)
            .map(|position| {
                let bytes = frame_end(segment, position) - u64::from(segment.offsets[position]);
                u32::try_from(bytes).expect("frames are within FRAME_BYTES_MAX")
            })
            .collect();
        Some(LogReadPlan {
            group: self.group,
            file: self.paths.segment(segment.name),
            offset: u64::from(segment.offsets[start]),
            first_index: segment.base + start as u64,
            frame_bytes,
        })
    }

    /// Whether `prepend_retained` can take entries ending at
    /// `retained_first() - 1`: the store retains below its snapshot, has one,
    /// and no segment file holds frames below `retained_first()` that the
    /// store no longer tracks (a segment `discard_below` cut into keeps its
    /// file whole, and a new segment would overlap it).
    pub fn can_prepend_retained(&self) -> bool {
        self.options.retain_below_snapshot
            && self.snapshot_index > 0
            && self.retained_first > 1
            && !self.oldest_segment_cut()
    }

    /// Whether the oldest segment file holds frames below `retained_first()`
    /// that the store no longer tracks (a discard, or damage found at
    /// recovery, cut into it): nothing can be prepended below it then.
    fn oldest_segment_cut(&self) -> bool {
        self.segments
            .first()
            .is_some_and(|first| first.name != first.base || first.base != self.retained_first)
    }

    /// §8.3: when a discard (or damage found at recovery) cut into the
    /// oldest segment, nothing can be prepended below it
    /// (`can_prepend_retained` is false); this is the index the next
    /// segment starts at, if it is at or below the snapshot point + 1, so
    /// that `discard_below` of it deletes the cut segment whole and a
    /// backfill can then refill everything below. `None` when the oldest
    /// segment is not cut, or is the last one, or the next one starts above
    /// the snapshot point + 1 (a later snapshot may cover it).
    pub fn whole_segment_floor(&self) -> Option<Index> {
        if !self.oldest_segment_cut() {
            return None;
        }
        let second = self.segments.get(1)?;
        (second.name > self.retained_first && second.name <= self.snapshot_index + 1)
            .then_some(second.name)
    }

    /// Whether `prepend_retained(entries)` would take these entries: every
    /// precondition it asserts, checked, so that a chunk that came from a
    /// peer can be refused rather than crash the node.
    pub fn can_prepend(&self, entries: &[Entry]) -> bool {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return false;
        };
        let ordered = entries
            .windows(2)
            .all(|pair| pair[1].index == pair[0].index + 1 && pair[1].term >= pair[0].term);
        let bytes: u64 = entries
            .iter()
            .map(|entry| codec::frame_bytes(entry) as u64)
            .sum();
        self.can_prepend_retained()
            && first.index >= 1
            && last.index + 1 == self.retained_first
            && ordered
            && (last.index != self.snapshot_index || last.term == self.snapshot_term)
            && bytes <= self.options.segment_bytes_max.max(FRAME_BYTES_MAX as u64)
            && entries
                .iter()
                .all(|entry| codec::frame_bytes(entry) <= FRAME_BYTES_MAX)
    }

    /// §8.2: adds `entries`, which end at `retained_first() - 1`, below what
    /// the store retains: a follower that installed a snapshot backfills
    /// from the leader the log the snapshot covers, so that it can serve
    /// lagging followers from its log in turn. They go into one new
    /// segment named after the first entry, written whole to
    /// `log/backfill.tmp`, synced, renamed into place, and the log
    /// directory synced (and the group directory if the log directory is
    /// new), so that a crash leaves the segment whole or absent, never
    /// torn. Returns the ops; `retained_first()` is the first entry's index
    /// from now on, and reads planned after the ops see the frames.
    ///
    /// Durability contract: when the ops complete, the frames are durable
    /// and recovery retains them (they run without a gap up to the
    /// snapshot). A crash before leaves the old retained run, and perhaps
    /// `backfill.tmp`, which recovery deletes.
    ///
    /// Panics (programmer error) unless `can_prepend(entries)`:
    /// `can_prepend_retained()`, and the entries are non-empty, contiguous,
    /// end at `retained_first() - 1`, have non-decreasing terms, fit in one
    /// segment, and the last has the snapshot's term when it is at the
    /// snapshot index. Checking terms
    /// against the retained log's is the caller's: the store does not keep
    /// terms below the snapshot.
    pub fn prepend_retained(&mut self, entries: &[Entry]) -> Vec<DiskOp> {
        // One statement of the preconditions, shared with the callers that
        // check a chunk from a peer before handing it over.
        assert!(
            self.can_prepend(entries),
            "prepended entries do not fit below the retained run"
        );
        let first = &entries[0];
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in entries {
            offsets.push(u32::try_from(data.len()).expect("segment offsets fit in u32"));
            codec::encode_frame(self.group, entry, &mut data);
        }
        let len = data.len() as u64;
        let mut ops = self.take_prelude(false);
        let name = first.index;
        ops.push(DiskOp::Delete {
            file: self.paths.backfill_tmp.clone(),
        });
        ops.push(DiskOp::Write {
            file: self.paths.backfill_tmp.clone(),
            offset: 0,
            data,
        });
        ops.push(DiskOp::Sync {
            file: self.paths.backfill_tmp.clone(),
        });
        ops.push(DiskOp::Rename {
            from: self.paths.backfill_tmp.clone(),
            to: self.paths.segment(name),
        });
        ops.push(DiskOp::SyncDir {
            dir: self.paths.log_dir.clone(),
        });
        if !self.log_dir_exists {
            self.log_dir_exists = true;
            ops.push(DiskOp::SyncDir {
                dir: self.paths.group_dir.clone(),
            });
        }
        self.segments.insert(
            0,
            Segment {
                name,
                base: name,
                offsets,
                len,
                // Only the last segment rolls, and it rolls by size alone
                // until a clock starts its age.
                started: Started::Unknown,
            },
        );
        self.retained_first = name;
        ops
    }

    /// Stops retaining the entries below `index` (at most the snapshot
    /// index + 1) and deletes every segment whose frames are all below it;
    /// a segment that also holds later frames stays whole (the frames below
    /// `index` in it are no longer served). The ops: the repair ops on the
    /// first plan after recovery, then a `Delete` of each such segment,
    /// oldest first, and one `SyncDir` of the log directory.
    ///
    /// Durability contract: when the ops complete the segments are durably
    /// gone. A crash part-way can leave any subset of them; recovery keeps
    /// only the retained frames that run without a gap up to the snapshot
    /// index, and deletes the rest (docs/storage.md, "Recovery"), so a
    /// survivor below a gap is removed then. Nothing is written, and no
    /// entry above the snapshot is touched.
    pub fn discard_below(&mut self, index: Index) -> Vec<DiskOp> {
        let index = index.min(self.snapshot_index + 1);
        if index <= self.retained_first {
            return Vec::new();
        }
        self.retained_first = index;
        let mut ops = self.take_prelude(false);
        // After recovery found corruption, the cut still to come truncates
        // (or deletes) the segments holding the damaged suffix: a segment it
        // names stays here, even if every intact frame in it is below
        // `index`, so that the cut never meets a missing file.
        let named_by_cut = |name: Index| {
            let file = self.paths.segment(name);
            self.cut.iter().flatten().any(|op| match op {
                DiskOp::Truncate { file: cut, .. }
                | DiskOp::Delete { file: cut }
                | DiskOp::Sync { file: cut } => *cut == file,
                _ => false,
            })
        };
        let whole = self
            .segments
            .iter()
            .take_while(|segment| {
                !segment.offsets.is_empty() && segment.end() <= index && !named_by_cut(segment.name)
            })
            .count();
        let removed: Vec<Segment> = self.segments.drain(..whole).collect();
        self.delete_segments(&removed, &mut ops);
        if let Some(first) = self.segments.first_mut() {
            if first.base < index && index < first.end() {
                first.offsets.drain(..(index - first.base) as usize);
                first.base = index;
            }
        }
        ops
    }

    /// Changes `StoreOptions::segment_ms` from the next `append_at` on: the
    /// ages already counted stay. Panics (programmer error) unless
    /// `segment_ms_valid(segment_ms)`.
    pub fn set_segment_ms(&mut self, segment_ms: u64) {
        let options = StoreOptions {
            segment_ms,
            ..self.options.clone()
        };
        options.check();
        self.options = options;
    }

    /// The group this store belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The last hard state saved (or recovered).
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// The ops recovery left pending, consumed by the first plan. The repair
    /// goes first for every plan; the cut of a corrupt suffix only for plans
    /// that write the log, because until then that suffix is the only
    /// evidence of the corruption.
    fn take_prelude(&mut self, writes_log: bool) -> Vec<DiskOp> {
        let mut ops = self.repair.take().unwrap_or_default();
        if writes_log {
            ops.extend(self.cut.take().unwrap_or_default());
        }
        ops
    }

    /// Whether `segment` is old enough at `now_ms` to be rolled by age.
    fn aged(&self, segment: &Segment, now_ms: Option<u64>) -> bool {
        let segment_ms = self.options.segment_ms;
        match (now_ms, segment.started) {
            (None, _) | (_, Started::Unknown) => false,
            _ if segment_ms == 0 => false,
            (Some(_), Started::Recovered) => true,
            (Some(now_ms), Started::At(started_ms)) => {
                now_ms.saturating_sub(started_ms) >= segment_ms
            }
        }
    }

    /// Emits one Write for the frames gathered for the last segment.
    fn flush_pending(&self, pending: &mut Vec<u8>, offset: u64, ops: &mut Vec<DiskOp>) {
        if pending.is_empty() {
            return;
        }
        let last = self.segments.last().expect("pending frames have a segment");
        ops.push(DiskOp::Write {
            file: self.paths.segment(last.name),
            offset,
            data: std::mem::take(pending),
        });
    }

    /// Syncs every dirty segment, then the log directory and the group
    /// directory if their entries changed.
    fn flush_log(&mut self, ops: &mut Vec<DiskOp>) {
        for name in std::mem::take(&mut self.dirty_segments) {
            ops.push(DiskOp::Sync {
                file: self.paths.segment(name),
            });
        }
        if std::mem::take(&mut self.dirty_log_dir) {
            ops.push(DiskOp::SyncDir {
                dir: self.paths.log_dir.clone(),
            });
        }
        if std::mem::take(&mut self.dirty_group_dir) {
            ops.push(DiskOp::SyncDir {
                dir: self.paths.group_dir.clone(),
            });
        }
    }

    /// Deletes `segments` and syncs the log directory (if there were any).
    fn delete_segments(&mut self, segments: &[Segment], ops: &mut Vec<DiskOp>) {
        if segments.is_empty() {
            return;
        }
        for segment in segments {
            self.dirty_segments.remove(&segment.name);
            ops.push(DiskOp::Delete {
                file: self.paths.segment(segment.name),
            });
        }
        ops.push(DiskOp::SyncDir {
            dir: self.paths.log_dir.clone(),
        });
        self.dirty_log_dir = false;
    }

    /// Removes every entry from `index` on, durably (see `append`).
    fn truncate_from(&mut self, index: Index, ops: &mut Vec<DiskOp>) {
        assert!(index > self.snapshot_index && index <= self.last_index);
        let k = self
            .segments
            .iter()
            .rposition(|segment| segment.base <= index && index < segment.end())
            .expect("a segment holds every index in the log");
        // Later segments go first, newest first, each deletion durable before
        // the next: a crash part-way then leaves a prefix of the old log,
        // never a gap between segments nor a truncated segment followed by
        // later ones.
        let later: Vec<Segment> = self.segments.drain(k + 1..).collect();
        for segment in later.iter().rev() {
            self.dirty_segments.remove(&segment.name);
            ops.push(DiskOp::Delete {
                file: self.paths.segment(segment.name),
            });
            ops.push(DiskOp::SyncDir {
                dir: self.paths.log_dir.clone(),
            });
            self.dirty_log_dir = false;
        }
        let segment = &mut self.segments[k];
        let position = (index - segment.base) as usize;
        let offset = u64::from(segment.offsets[position]);
        segment.offsets.truncate(position);
        segment.len = offset;
        if offset == 0 {
            // Emptied: its age starts again with the frame that refills it.
            segment.started = Started::Unknown;
        }
        let name = segment.name;
        ops.push(DiskOp::Truncate {
            file: self.paths.segment(name),
            len: offset,
        });
        self.dirty_segments.insert(name);
        self.flush_log(ops);
        let run = self.terms.partition_point(|&(start, _)| start < index);
        self.terms.truncate(run);
        self.last_index = index - 1;
    }
}

/// Where the frame at `position` of `segment` ends: where the next one
/// starts, or the end of the segment's log bytes for the last.
fn frame_end(segment: &Segment, position: usize) -> u64 {
    segment
        .offsets
        .get(position + 1)
        .map_or(segment.len, |&offset| u64::from(offset))
}

/// Exposed to recovery, which builds a store from what it found.
pub(crate) struct RecoveredParts {
    pub group: GroupId,
    pub options: StoreOptions,
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    pub segments: Vec<(Index, Index, Vec<u32>, u64)>,
    pub entries_terms: Vec<(Index, Term)>,
    pub last_index: Index,
    pub retained_first: Index,
    pub hard_state: HardState,
    pub newest_slot: usize,
    pub sequence: u64,
    pub log_dir_exists: bool,
    pub repair: Vec<DiskOp>,
    pub cut: Vec<DiskOp>,
}

impl GroupStore {
    pub(crate) fn from_recovery(parts: RecoveredParts) -> GroupStore {
        GroupStore {
            group: parts.group,
            paths: Paths::new(parts.group),
            options: parts.options,
            snapshot_index: parts.snapshot_index,
            snapshot_term: parts.snapshot_term,
            last_index: parts.last_index,
            segments: parts
                .segments
                .into_iter()
                .map(|(name, base, offsets, len)| Segment {
                    name,
                    base,
                    offsets,
                    len,
                    started: Started::Recovered,
                })
                .collect(),
            terms: parts.entries_terms,
            retained_first: parts.retained_first,
            hard_state: parts.hard_state,
            vote: VoteSlots {
                newest: parts.newest_slot,
                sequence: parts.sequence,
                // The repair ops, which precede every other op, sync both
                // slots, so the newest record is durable by the time the
                // next save's write takes effect.
                newest_unsynced: false,
            },
            dirty_segments: BTreeSet::new(),
            dirty_votes: [false; 2],
            dirty_log_dir: false,
            dirty_group_dir: false,
            log_dir_exists: parts.log_dir_exists,
            repair: Some(parts.repair),
            cut: (!parts.cut.is_empty()).then_some(parts.cut),
        }
    }
}
