//! The replicated state machine of a Kafka partition: its record batches at
//! their offsets, and the idempotent producers' sequence state.
//!
//! Every replica applies the same committed entries in the same order, so
//! every replica assigns the same offsets: the offset of a batch is decided
//! when its entry is applied, from the entries before it. The high watermark
//! is therefore simply the next offset: nothing uncommitted is ever applied.
//! The partition leader epoch stamped into a batch is the term of its entry.
//!
//! The machine keeps a sparse index of its batches, not their bytes: the
//! bytes are the group's log entries, which the node keeps on disk below
//! its snapshots for as long as the index names them (docs/storage.md,
//! "Kafka partitions on this log"). The batches applied since the last
//! chunk was sealed are listed one by one; before them, chunks of up to
//! `CHUNK_BATCHES_MAX` batches each take one entry (`index`), and a read
//! inside a chunk rebuilds its batches from its entries. A batch is served
//! by reading its entry back and stamping it again (`stamped_batch`):
//! stamping is a pure function of the entry and the index fields, so
//! every read gives the bytes the leader first served. A snapshot carries
//! the index and the producer state only. The index is bounded
//! (`INDEX_SNAPSHOT_BYTES_MAX`, a million chunks or more): a produce past
//! it is refused with KAFKA_STORAGE_ERROR, which clients retry, until
//! retention drops some.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use runnel_consensus::{Entry, Payload};
use runnel_kafka::batch::{self, BatchHeader};

/// Kafka error codes a partition answers with.
pub mod error_code {
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
}

/// How many recent batches per producer are remembered to answer a retried
/// batch with its original offset (Kafka keeps five: a producer has at most
/// five requests in flight with idempotence on).
pub const PRODUCER_BATCHES_REMEMBERED_MAX: usize = 5;
/// At most this many producers are remembered per partition; the one that
/// wrote least recently is forgotten first.
pub const PRODUCERS_MAX: usize = 100_000;

pub mod index;

pub use index::{
    Chunk, Part, Position, Rebuilt, CHUNK_BATCHES_MAX, CHUNK_BYTES_MAX, CHUNK_FIXED_SNAPSHOT_BYTES,
    CHUNK_SNAPSHOT_BYTES_MAX, CHUNK_STEP_BYTES_MAX,
};

/// What one listed batch costs in a snapshot: offsets, timestamps, epoch,
/// raft index, length, and the length of carried bytes (see
/// `PartitionLog::encode`).
pub const STORED_BATCH_SNAPSHOT_BYTES: u64 = 8 + 8 + 8 + 8 + 4 + 8 + 4 + 4;
/// What one producer costs in a snapshot, at most.
pub const PRODUCER_SNAPSHOT_BYTES_MAX: u64 =
    8 + 2 + 8 + 8 + 16 * PRODUCER_BATCHES_REMEMBERED_MAX as u64;
/// The most bytes the index takes in a snapshot (listed batches with any
/// bytes they carry, and chunks). It bounds the index in memory too: a
/// chunk takes 76 bytes in a snapshot, and about 100 in memory, plus two
/// or three bytes a batch for its steps. A chunk is full at
/// `CHUNK_BATCHES_MAX` batches or `CHUNK_BYTES_MAX` bytes, so this indexes
/// some 340 GiB of records at 16 KiB a batch, and 60 to 70 million batches
/// in full chunks. A produce past it is refused (`PartitionLog::is_full`).
pub const INDEX_SNAPSHOT_BYTES_MAX: u64 = 160 << 20;
/// The fewest batches the index holds when it is full: each in a chunk of
/// its own (an epoch change at every batch), with its largest step.
pub const PARTITION_BATCHES_MIN_WHEN_FULL: u64 =
    INDEX_SNAPSHOT_BYTES_MAX / (CHUNK_FIXED_SNAPSHOT_BYTES + 4 + CHUNK_STEP_BYTES_MAX);
/// The most batches restored listed one by one from a snapshot of
/// version 3 or older, which listed every batch and held at most this
/// many. Batches applied since are sealed into chunks.
pub const LISTED_BATCHES_MAX: usize = 1 << 20;
/// The most bytes of batches carried in a snapshot: only batches that came
/// from a snapshot of version 1 or 2, which held every batch's bytes and
/// held at most this much, keep their bytes (`StoredBatch::carried_bytes`).
pub const PARTITION_CARRIED_BYTES_MAX: u64 = 96 << 20;
const _: () = assert!(
    LISTED_BATCHES_MAX as u64 * STORED_BATCH_SNAPSHOT_BYTES + PARTITION_CARRIED_BYTES_MAX
        <= INDEX_SNAPSHOT_BYTES_MAX,
    "an old snapshot's listed batches fit the index"
);
const _: () = assert!(
    PARTITION_BATCHES_MIN_WHEN_FULL >= LISTED_BATCHES_MAX as u64,
    "a full index holds at least as many batches as a listed one did"
);
/// The largest snapshot of a partition.
pub const PARTITION_SNAPSHOT_BYTES_MAX: u64 = 4
    + 8
    + 8
    + 8
    + 8
    + INDEX_SNAPSHOT_BYTES_MAX
    + 8
    + CHUNK_BATCHES_MAX as u64 * STORED_BATCH_SNAPSHOT_BYTES
    + 8
    + PRODUCERS_MAX as u64 * PRODUCER_SNAPSHOT_BYTES_MAX;
const _: () = assert!(
    PARTITION_SNAPSHOT_BYTES_MAX <= runnel_storage::SNAPSHOT_BYTES_MAX,
    "a partition snapshot fits in a snapshot file"
);

/// One batch in the log, stamped with its offset and leader epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp (the append time for LogAppendTime).
    pub max_timestamp_ms: i64,
    /// The time the leader proposed it: retention by time counts from here
    /// when the producer's timestamps cannot be trusted (they may be old).
    pub append_time_ms: i64,
    pub leader_epoch: i32,
    /// The index of the consensus log entry that appended it (0 when not
    /// known: a batch from a version 1 snapshot). Its bytes are that
    /// entry's, stamped (`stamped_batch`); retention below it lets the node
    /// delete the log entries before it (`lowest_raft_index_needed`).
    pub raft_index: u64,
    /// The length of the stamped batch.
    pub length_bytes: u32,
    /// The stamped bytes, kept only for a batch that came from a snapshot
    /// of version 1 or 2, which carried them: the log may no longer hold
    /// its entry. Every batch applied since is read from the log.
    pub carried_bytes: Option<Box<[u8]>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProducerState {
    epoch: i16,
    /// Recent batches: (base sequence, last sequence, base offset).
    recent: VecDeque<(i32, i32, i64)>,
    /// The log position of the producer's last write, for eviction order.
    last_write_offset: i64,
}

/// What applying a produce did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProduceOutcome {
    Appended {
        base_offset: i64,
        /// The broker's time for LogAppendTime topics, else -1.
        log_append_time_ms: i64,
        log_start_offset: i64,
    },
    /// A retry of a batch already in the log: answered with its offset.
    Duplicate { base_offset: i64 },
    /// Refused with this Kafka error code.
    Refused { error_code: i16 },
}

/// A produce as it travels in a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceCommand {
    /// The leader's clock when it proposed the batch.
    pub append_time_ms: i64,
    /// Stamp LogAppendTime into the batch.
    pub log_append_time: bool,
    pub batch: Vec<u8>,
}

/// Retention settings of a partition (from its topic's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// -1: keep forever.
    pub retention_ms: i64,
    /// -1: no size limit.
    pub retention_bytes: i64,
}

/// A partition's machine state. Its index, in offset order: `listed`
/// (batches restored from a snapshot of version 3 or older, which listed
/// every batch), then `chunks` (sealed), then `open` (the batches applied
/// since the last chunk was sealed, listed until they are sealed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionLog {
    listed: VecDeque<StoredBatch>,
    chunks: VecDeque<Chunk>,
    open: VecDeque<StoredBatch>,
    /// What `listed` and `chunks` take in a snapshot
    /// (`INDEX_SNAPSHOT_BYTES_MAX`).
    index_snapshot_bytes: u64,
    log_start_offset: i64,
    next_offset: i64,
    retained_bytes: u64,
    producers: BTreeMap<i64, ProducerState>,
}

const COMMAND_PRODUCE: u8 = 1;
const COMMAND_RETAIN: u8 = 2;
/// Version 4 holds the sparse index (listed batches, chunks, open
/// batches); version 3 listed every batch without its bytes; version 2
/// added each batch's raft index. Versions 1 to 3 still decode, their
/// batches listed, and those of 1 and 2 with their bytes carried.
const SNAPSHOT_VERSION: u32 = 4;

/// A command for a partition's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionCommand {
    Produce(ProduceCommand),
    /// Drop what retention no longer keeps, as of `now_ms` on the leader's
    /// clock. Proposed by the leader so that every replica drops the same.
    Retain {
        now_ms: i64,
        retention: Retention,
    },
}

/// The fields of a produce command in `data`, borrowed: the leader's
/// append time, whether to stamp LogAppendTime, and the batch. None when
/// `data` is not a produce.
pub fn produce_parts(data: &[u8]) -> Option<(i64, bool, &[u8])> {
    let (&tag, rest) = data.split_first()?;
    if tag != COMMAND_PRODUCE {
        return None;
    }
    let append_time_ms = i64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let log_append_time = *rest.get(8)? != 0;
    Some((append_time_ms, log_append_time, rest.get(9..)?))
}

impl PartitionCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            PartitionCommand::Produce(produce) => {
                out.push(COMMAND_PRODUCE);
                out.extend_from_slice(&produce.append_time_ms.to_le_bytes());
                out.push(u8::from(produce.log_append_time));
                out.extend_from_slice(&produce.batch);
            }
            PartitionCommand::Retain { now_ms, retention } => {
                out.push(COMMAND_RETAIN);
                out.extend_from_slice(&now_ms.to_le_bytes());
                out.extend_from_slice(&retention.retention_ms.to_le_bytes());
                out.extend_from_slice(&retention.retention_bytes.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(data: &[u8]) -> Option<PartitionCommand> {
        if let Some((append_time_ms, log_append_time, batch)) = produce_parts(data) {
            return Some(PartitionCommand::Produce(ProduceCommand {
                append_time_ms,
                log_append_time,
                batch: batch.to_vec(),
            }));
        }
        let (&tag, rest) = data.split_first()?;
        let i64_at = |at: usize| -> Option<i64> {
            Some(i64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?))
        };
        match tag {
            COMMAND_RETAIN if rest.len() == 24 => Some(PartitionCommand::Retain {
                now_ms: i64_at(0)?,
                retention: Retention {
                    retention_ms: i64_at(8)?,
                    retention_bytes: i64_at(16)?,
                },
            }),
            _ => None,
        }
    }
}

/// The bytes of `batch` as the leader served them: its log entry (`index`,
/// `term`, `data`) read back and stamped again with the batch's offset and
/// leader epoch. The entry must be the batch's own: storage checksums every
/// entry and binds it to its group and index, so anything else is a
/// programmer error, asserted.
pub fn stamped_batch(batch: &StoredBatch, index: u64, term: u64, data: &[u8]) -> Vec<u8> {
    assert_eq!(index, batch.raft_index, "the entry of the batch");
    assert_eq!(
        i32::try_from(term).unwrap_or(i32::MAX),
        batch.leader_epoch,
        "a batch's leader epoch is its entry's term"
    );
    let Some((append_time_ms, log_append_time, bytes)) = produce_parts(data) else {
        panic!("the entry at {index} of an indexed batch is not a produce");
    };
    let log_append_time_ms = log_append_time.then_some(append_time_ms);
    let mut bytes = bytes.to_vec();
    assert_eq!(
        bytes.len(),
        batch.length_bytes as usize,
        "the batch's length"
    );
    batch::stamp(
        &mut bytes,
        batch.base_offset,
        batch.leader_epoch,
        log_append_time_ms,
    );
    bytes
}

/// §8.3: the bytes of `batch` as served: those it carries from an old
/// snapshot, or else its log entry `entry` stamped again (`stamped_batch`);
/// `None` when it carries none and the entry is not at hand. An entry that
/// holds no data is not a batch's: a programmer error, asserted.
pub fn served_bytes(batch: &StoredBatch, entry: Option<&Entry>) -> Option<Vec<u8>> {
    if let Some(bytes) = &batch.carried_bytes {
        return Some(bytes.to_vec());
    }
    let entry = entry?;
    let Payload::Data(data) = &entry.payload else {
        panic!(
            "the entry {} of an indexed batch holds no data",
            entry.index
        );
    };
    Some(stamped_batch(batch, entry.index, entry.term, data))
}

/// Whether the bytes of `batch` are at hand: carried, or its entry is.
fn bytes_at_hand<'e>(batch: &StoredBatch, entry_at: &impl Fn(u64) -> Option<&'e Entry>) -> bool {
    batch.carried_bytes.is_some() || entry_at(batch.raft_index).is_some()
}

/// What `PartitionLog::read` found.
#[derive(Debug, Default)]
pub struct LogRead<'a> {
    /// Batches from the one holding the offset asked, in order, each with
    /// its bytes at hand (`served_bytes` gives them).
    pub batches: Vec<Cow<'a, StoredBatch>>,
    /// The raft index of the first entry the read needed and did not have
    /// at hand: the batches stop before it. The caller reads the log from
    /// there (docs/protocol.md §8.3) and reads again.
    pub load_from: Option<u64>,
}

/// A batch a lookup found, or where to read the log to find it.
#[derive(Debug)]
pub enum Located<'a> {
    Batch(Cow<'a, StoredBatch>),
    /// The batch is in a chunk whose entries are not all at hand: the
    /// caller reads the log from `load_from` and looks again. `part` is
    /// the chunk, for an answer meanwhile.
    Unloaded {
        load_from: u64,
        part: Part<'a>,
    },
}

impl PartitionLog {
    /// The first offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// The offset the next batch gets: the high watermark, since only
    /// committed entries are applied.
    pub fn high_watermark(&self) -> i64 {
        self.next_offset
    }

    pub fn retained_bytes(&self) -> u64 {
        self.retained_bytes
    }

    /// Whether the index is full (`INDEX_SNAPSHOT_BYTES_MAX`) or has no
    /// room for one more chunk: a produce is refused until retention drops
    /// a part.
    pub fn is_full(&self) -> bool {
        self.index_snapshot_bytes + CHUNK_SNAPSHOT_BYTES_MAX > INDEX_SNAPSHOT_BYTES_MAX
    }

    /// The index, in offset order: listed batches and chunks.
    pub fn parts(&self) -> impl DoubleEndedIterator<Item = Part<'_>> {
        self.listed
            .iter()
            .map(Part::Batch)
            .chain(self.chunks.iter().map(Part::Chunk))
            .chain(self.open.iter().map(Part::Batch))
    }

    /// How many parts the index has.
    pub fn part_count(&self) -> usize {
        self.listed.len() + self.chunks.len() + self.open.len()
    }

    /// The chunks of the index (for diagnostics and tests).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The parts from the one holding `offset` on.
    fn parts_from(&self, offset: i64) -> impl Iterator<Item = Part<'_>> {
        let listed = self
            .listed
            .partition_point(|batch| batch.last_offset < offset);
        let chunks = self
            .chunks
            .partition_point(|chunk| chunk.last_offset < offset);
        let open = self
            .open
            .partition_point(|batch| batch.last_offset < offset);
        self.listed
            .range(listed..)
            .map(Part::Batch)
            .chain(self.chunks.range(chunks..).map(Part::Chunk))
            .chain(self.open.range(open..).map(Part::Batch))
    }

    /// What a produce of `header` would do now, before it is proposed: a
    /// retry of a batch already applied is answered at once.
    pub fn precheck(&self, header: &BatchHeader) -> Option<ProduceOutcome> {
        if self.is_full() {
            return Some(ProduceOutcome::Refused {
                error_code: error_code::KAFKA_STORAGE_ERROR,
            });
        }
        if !header.is_idempotent() {
            return None;
        }
        let state = self.producers.get(&header.producer_id)?;
        if header.producer_epoch < state.epoch {
            return Some(ProduceOutcome::Refused {
                error_code: error_code::INVALID_PRODUCER_EPOCH,
            });
        }
        if header.producer_epoch != state.epoch {
            return None;
        }
        state
            .recent
            .iter()
            .find(|(base, last, _)| {
                *base == header.base_sequence && *last == header.last_sequence()
            })
            .map(|(_, _, base_offset)| ProduceOutcome::Duplicate {
                base_offset: *base_offset,
            })
    }

    /// Applies a committed command, from the log entry at `index` of term
    /// `term` (stamped as the partition leader epoch).
    pub fn apply(&mut self, command: PartitionCommand, index: u64, term: u64) -> ProduceOutcome {
        match command {
            PartitionCommand::Produce(produce) => self.apply_produce(produce, index, term),
            PartitionCommand::Retain { now_ms, retention } => {
                self.retain(now_ms, retention);
                ProduceOutcome::Appended {
                    base_offset: self.next_offset,
                    log_append_time_ms: -1,
                    log_start_offset: self.log_start_offset,
                }
            }
        }
    }

    fn apply_produce(&mut self, produce: ProduceCommand, index: u64, term: u64) -> ProduceOutcome {
        // The leader validated the batch before proposing it, and storage
        // checksums the entry; a batch that fails here was damaged in a way
        // both missed, and is refused on every replica alike.
        let header = match batch::validate(&produce.batch) {
            Ok(header) => header,
            Err(_) => {
                return ProduceOutcome::Refused {
                    error_code: error_code::CORRUPT_MESSAGE,
                }
            }
        };
        if let Some(outcome) = self.check_sequence(&header) {
            return outcome;
        }
        // Decided from the replicated state alone, so every replica refuses
        // the same batches; the client retries once retention made room.
        if self.is_full() {
            return ProduceOutcome::Refused {
                error_code: error_code::KAFKA_STORAGE_ERROR,
            };
        }
        let base_offset = self.next_offset;
        let last_offset = base_offset + i64::from(header.last_offset_delta);
        let leader_epoch = i32::try_from(term).unwrap_or(i32::MAX);
        let log_append_time_ms = produce.log_append_time.then_some(produce.append_time_ms);
        let max_timestamp_ms = log_append_time_ms.unwrap_or(header.max_timestamp_ms);
        if header.is_idempotent() {
            self.remember_producer(&header, base_offset);
        }
        // Stamping keeps the length, and `stamped_batch` stamps again when
        // the batch is served.
        let length_bytes =
            u32::try_from(produce.batch.len()).expect("a validated batch fits in u32");
        let stored = StoredBatch {
            base_offset,
            last_offset,
            max_timestamp_ms,
            append_time_ms: produce.append_time_ms,
            leader_epoch,
            raft_index: index,
            length_bytes,
            carried_bytes: None,
        };
        if self.open_is_full_for(&stored) {
            self.seal_open();
        }
        self.retained_bytes += u64::from(length_bytes);
        self.open.push_back(stored);
        self.next_offset = last_offset + 1;
        ProduceOutcome::Appended {
            base_offset,
            log_append_time_ms: log_append_time_ms.unwrap_or(-1),
            log_start_offset: self.log_start_offset,
        }
    }

    /// Whether the open batches are sealed into a chunk before `next`
    /// joins them: they would be too many or too large, or `next` has
    /// another epoch.
    fn open_is_full_for(&self, next: &StoredBatch) -> bool {
        let Some(last) = self.open.back() else {
            return false;
        };
        let open_bytes: u64 = self
            .open
            .iter()
            .map(|batch| u64::from(batch.length_bytes))
            .sum();
        self.open.len() >= CHUNK_BATCHES_MAX
            || open_bytes >= CHUNK_BYTES_MAX
            || last.leader_epoch != next.leader_epoch
    }

    /// Seals the open batches into a chunk. The caller checked that the
    /// index has room (`is_full`).
    fn seal_open(&mut self) {
        assert!(!self.is_full(), "the index has room for a chunk");
        let open: Vec<StoredBatch> = self.open.drain(..).collect();
        let chunk = Chunk::seal(&open);
        self.index_snapshot_bytes += chunk.snapshot_bytes();
        self.chunks.push_back(chunk);
    }

    /// Kafka's idempotent producer rules: a batch from a known producer and
    /// epoch must continue its sequence; a retried batch is answered with
    /// its original offset; a new epoch starts at sequence 0.
    fn check_sequence(&self, header: &BatchHeader) -> Option<ProduceOutcome> {
        if !header.is_idempotent() {
            return None;
        }
        let out_of_order = Some(ProduceOutcome::Refused {
            error_code: error_code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        });
        let Some(state) = self.producers.get(&header.producer_id) else {
            return if header.base_sequence == 0 {
                None
            } else {
                out_of_order
            };
        };
        if header.producer_epoch < state.epoch {
            return Some(ProduceOutcome::Refused {
                error_code: error_code::INVALID_PRODUCER_EPOCH,
            });
        }
        if header.producer_epoch > state.epoch {
            return if header.base_sequence == 0 {
                None
            } else {
                out_of_order
            };
        }
        if let Some(outcome) = self.precheck(header) {
            return Some(outcome);
        }
        let expected = match state.recent.back() {
            Some((_, last, _)) if *last == i32::MAX => 0,
            Some((_, last, _)) => last + 1,
            None => 0,
        };
        if header.base_sequence != expected {
            return out_of_order;
        }
        None
    }

    fn remember_producer(&mut self, header: &BatchHeader, base_offset: i64) {
        let state = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != state.epoch {
            state.epoch = header.producer_epoch;
            state.recent.clear();
        }
        state
            .recent
            .push_back((header.base_sequence, header.last_sequence(), base_offset));
        while state.recent.len() > PRODUCER_BATCHES_REMEMBERED_MAX {
            state.recent.pop_front();
        }
        state.last_write_offset = base_offset;
        if self.producers.len() > PRODUCERS_MAX {
            let oldest = self
                .producers
                .iter()
                .min_by_key(|(id, state)| (state.last_write_offset, **id))
                .map(|(id, _)| *id)
                .expect("not empty");
            self.producers.remove(&oldest);
        }
    }

    /// Whether retention drops the oldest part of the index now: all of
    /// it older than `retention_ms` (by the time it was appended), or the
    /// log beyond `retention_bytes`. The last part is always kept, so that
    /// the log start never passes the high watermark unobserved.
    fn front_expired(&self, now_ms: i64, retention: Retention) -> bool {
        if self.part_count() < 2 {
            return false;
        }
        let front = self.parts().next().expect("two parts");
        let too_old = retention.retention_ms >= 0
            && front
                .append_time_max_ms()
                .saturating_add(retention.retention_ms)
                < now_ms;
        let too_big = retention.retention_bytes >= 0
            && self.retained_bytes > retention.retention_bytes as u64;
        too_old || too_big
    }

    /// Drops whole parts from the front (a listed batch, or a chunk)
    /// while retention no longer keeps them (`front_expired`).
    fn retain(&mut self, now_ms: i64, retention: Retention) {
        while self.front_expired(now_ms, retention) {
            let (bytes, last_offset) = if let Some(batch) = self.listed.pop_front() {
                self.index_snapshot_bytes -= listed_snapshot_bytes(&batch);
                (u64::from(batch.length_bytes), batch.last_offset)
            } else if let Some(chunk) = self.chunks.pop_front() {
                self.index_snapshot_bytes -= chunk.snapshot_bytes();
                (chunk.length_bytes, chunk.last_offset)
            } else {
                let batch = self.open.pop_front().expect("two parts");
                (u64::from(batch.length_bytes), batch.last_offset)
            };
            self.retained_bytes -= bytes;
            self.log_start_offset = last_offset + 1;
        }
    }

    /// The lowest consensus log index whose entry this partition still
    /// needs: that of its oldest batch read from the log. Retention dropped
    /// every batch of the entries before it, so the node need not keep
    /// those entries on disk for a lagging follower (docs/protocol.md
    /// §8.1). Batches from a snapshot of version 1 or 2 carry their bytes
    /// and need no entry. None when no batch needs one (nothing before the
    /// applied index is needed).
    pub fn lowest_raft_index_needed(&self) -> Option<u64> {
        self.parts()
            .find(|part| !matches!(part, Part::Batch(batch) if batch.carried_bytes.is_some()))
            .map(|part| part.first_raft_index())
    }

    /// Whether retention would drop anything now.
    pub fn retention_due(&self, now_ms: i64, retention: Retention) -> bool {
        self.front_expired(now_ms, retention)
    }

    /// Batches from the one holding `offset`, up to `max_bytes` (at least
    /// one batch, as Kafka does, so that a large batch is never stuck).
    /// `entry_at(index)` gives the group's log entry at `index` if it is at
    /// hand; a chunk's batches are rebuilt from their entries, from the one
    /// holding `offset` on. The read stops before the first batch whose
    /// entry is not at hand, and names where to read the log
    /// (`LogRead::load_from`).
    pub fn read<'a, 'e>(
        &'a self,
        offset: i64,
        max_bytes: usize,
        entry_at: impl Fn(u64) -> Option<&'e Entry>,
    ) -> LogRead<'a> {
        let mut read = LogRead::default();
        let mut bytes = 0usize;
        // Whether `batch` still fits: the first always does.
        let mut fits = |batch: &StoredBatch, read: &LogRead<'_>| {
            let length = batch.length_bytes as usize;
            if !read.batches.is_empty() && bytes + length > max_bytes {
                return false;
            }
            bytes += length;
            true
        };
        for part in self.parts_from(offset) {
            match part {
                Part::Batch(batch) => {
                    if !bytes_at_hand(batch, &entry_at) {
                        read.load_from = Some(batch.raft_index);
                        return read;
                    }
                    if !fits(batch, &read) {
                        return read;
                    }
                    read.batches.push(Cow::Borrowed(batch));
                }
                Part::Chunk(chunk) => {
                    let rebuilt = chunk.batches_from(offset, &entry_at);
                    for batch in rebuilt.batches {
                        if !fits(&batch, &read) {
                            return read;
                        }
                        read.batches.push(Cow::Owned(batch));
                    }
                    if let Some(missing) = rebuilt.missing {
                        read.load_from = Some(missing);
                        return read;
                    }
                }
            }
        }
        read
    }

    /// The first batch whose max timestamp is at or after `timestamp_ms`,
    /// with its entries as for `read`.
    pub fn batch_at_time<'a, 'e>(
        &'a self,
        timestamp_ms: i64,
        entry_at: impl Fn(u64) -> Option<&'e Entry>,
    ) -> Option<Located<'a>> {
        let part = self
            .parts()
            .find(|part| part.max_timestamp_ms() >= timestamp_ms)?;
        Some(match part {
            Part::Batch(batch) => Located::Batch(Cow::Borrowed(batch)),
            Part::Chunk(chunk) => {
                let rebuilt = chunk.batches(&entry_at);
                let missing = rebuilt.missing;
                match rebuilt
                    .batches
                    .into_iter()
                    .find(|batch| batch.max_timestamp_ms >= timestamp_ms)
                {
                    Some(batch) => Located::Batch(Cow::Owned(batch)),
                    None => Located::Unloaded {
                        load_from: missing.expect("a whole chunk holds its max timestamp"),
                        part,
                    },
                }
            }
        })
    }

    /// The last batch with the largest max timestamp, with its entries as
    /// for `read`.
    pub fn batch_with_max_timestamp<'a, 'e>(
        &'a self,
        entry_at: impl Fn(u64) -> Option<&'e Entry>,
    ) -> Option<Located<'a>> {
        let part = self.parts().max_by_key(Part::max_timestamp_ms)?;
        Some(match part {
            Part::Batch(batch) => Located::Batch(Cow::Borrowed(batch)),
            Part::Chunk(chunk) => {
                let rebuilt = chunk.batches(&entry_at);
                match rebuilt.missing {
                    // The last such batch may be among those not rebuilt.
                    Some(load_from) => Located::Unloaded { load_from, part },
                    None => Located::Batch(Cow::Owned(
                        rebuilt
                            .batches
                            .into_iter()
                            .max_by_key(|batch| batch.max_timestamp_ms)
                            .expect("a chunk holds a batch"),
                    )),
                }
            }
        })
    }

    /// The largest leader epoch at or below `epoch` and the offset where the
    /// next epoch starts (the high watermark if none), for
    /// OffsetForLeaderEpoch. A chunk holds one epoch, so the index answers,
    /// and epochs never decrease along it (terms never do along the log),
    /// so a binary search finds the first part of a later epoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let (mut low, mut high) = (0, self.part_count());
        while low < high {
            let middle = low + (high - low) / 2;
            if self.part_at(middle).leader_epoch() <= epoch {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let found = match low {
            0 => -1,
            later => self.part_at(later - 1).leader_epoch(),
        };
        if low == self.part_count() {
            (found, self.next_offset)
        } else if found < 0 {
            (found, -1)
        } else {
            (found, self.part_at(low).base_offset())
        }
    }

    /// The part at `position` in `parts()` order.
    fn part_at(&self, position: usize) -> Part<'_> {
        let chunks_from = self.listed.len();
        let open_from = chunks_from + self.chunks.len();
        if position < chunks_from {
            Part::Batch(&self.listed[position])
        } else if position < open_from {
            Part::Chunk(&self.chunks[position - chunks_from])
        } else {
            Part::Batch(&self.open[position - open_from])
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.log_start_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        encode_batches(&mut out, &self.listed);
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for chunk in &self.chunks {
            chunk.encode(&mut out);
        }
        encode_batches(&mut out, &self.open);
        out.extend_from_slice(&(self.producers.len() as u64).to_le_bytes());
        for (id, state) in &self.producers {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&state.epoch.to_le_bytes());
            out.extend_from_slice(&state.last_write_offset.to_le_bytes());
            out.extend_from_slice(&(state.recent.len() as u64).to_le_bytes());
            for (base, last, offset) in &state.recent {
                out.extend_from_slice(&base.to_le_bytes());
                out.extend_from_slice(&last.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            }
        }
        out
    }

    /// Decodes what `encode` wrote. Snapshots are checksummed by storage, so
    /// malformed data here is a programmer error.
    pub fn decode(data: &[u8]) -> PartitionLog {
        let mut reader = crate::state_machine::Reader::new(data);
        let version = reader.u32();
        assert!(
            (1..=SNAPSHOT_VERSION).contains(&version),
            "partition snapshot version {version}"
        );
        let log_start_offset = reader.u64() as i64;
        let next_offset = reader.u64() as i64;
        let listed = decode_batches(&mut reader, version);
        assert!(listed.len() <= LISTED_BATCHES_MAX, "listed batches");
        let mut index_snapshot_bytes: u64 = listed.iter().map(listed_snapshot_bytes).sum();
        assert!(
            index_snapshot_bytes <= INDEX_SNAPSHOT_BYTES_MAX,
            "listed batches within the index's bound"
        );
        let mut chunks = VecDeque::new();
        let mut open = VecDeque::new();
        if version >= 4 {
            for _ in 0..reader.u64() {
                let chunk = Chunk::decode(&mut reader);
                index_snapshot_bytes += chunk.snapshot_bytes();
                chunks.push_back(chunk);
            }
            assert!(
                index_snapshot_bytes <= INDEX_SNAPSHOT_BYTES_MAX,
                "chunks within the index's bound"
            );
            open = decode_batches(&mut reader, version);
            assert!(open.len() <= CHUNK_BATCHES_MAX, "open batches");
        }
        let mut producers = BTreeMap::new();
        for _ in 0..reader.u64() {
            let id = reader.u64() as i64;
            let epoch = i16::from_le_bytes(reader.bytes(2).try_into().expect("2 bytes"));
            let last_write_offset = reader.u64() as i64;
            let mut recent = VecDeque::new();
            for _ in 0..reader.u64() {
                let base = reader.u32() as i32;
                let last = reader.u32() as i32;
                let offset = reader.u64() as i64;
                recent.push_back((base, last, offset));
            }
            producers.insert(
                id,
                ProducerState {
                    epoch,
                    recent,
                    last_write_offset,
                },
            );
        }
        reader.finish();
        let retained_bytes = listed
            .iter()
            .chain(&open)
            .map(|batch| u64::from(batch.length_bytes))
            .sum::<u64>()
            + chunks.iter().map(|chunk| chunk.length_bytes).sum::<u64>();
        let log = PartitionLog {
            listed,
            chunks,
            open,
            index_snapshot_bytes,
            log_start_offset,
            next_offset,
            retained_bytes,
            producers,
        };
        log.assert_ordered();
        log
    }

    /// The index's parts follow each other in offset order, and in raft
    /// index order where recorded.
    fn assert_ordered(&self) {
        let parts: Vec<Part<'_>> = self.parts().collect();
        for pair in parts.windows(2) {
            assert!(
                pair[0].last_offset() < pair[1].base_offset(),
                "the index is in offset order"
            );
            assert!(
                pair[0].first_raft_index() == 0
                    || pair[0].last_raft_index() < pair[1].first_raft_index(),
                "the index is in log order"
            );
        }
    }
}

/// What a listed batch takes in a snapshot.
fn listed_snapshot_bytes(batch: &StoredBatch) -> u64 {
    STORED_BATCH_SNAPSHOT_BYTES
        + batch
            .carried_bytes
            .as_ref()
            .map_or(0, |bytes| bytes.len() as u64)
}

/// Writes listed batches (version 3's record of each).
fn encode_batches(out: &mut Vec<u8>, batches: &VecDeque<StoredBatch>) {
    out.extend_from_slice(&(batches.len() as u64).to_le_bytes());
    for batch in batches {
        out.extend_from_slice(&batch.base_offset.to_le_bytes());
        out.extend_from_slice(&batch.last_offset.to_le_bytes());
        out.extend_from_slice(&batch.max_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&batch.append_time_ms.to_le_bytes());
        out.extend_from_slice(&batch.leader_epoch.to_le_bytes());
        out.extend_from_slice(&batch.raft_index.to_le_bytes());
        out.extend_from_slice(&batch.length_bytes.to_le_bytes());
        match &batch.carried_bytes {
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&0u32.to_le_bytes()),
        }
    }
}

/// Reads what `encode_batches` wrote, or the batches of a snapshot of
/// `version` 1 or 2 (every batch with its bytes).
fn decode_batches(
    reader: &mut crate::state_machine::Reader<'_>,
    version: u32,
) -> VecDeque<StoredBatch> {
    let count = reader.u64();
    let mut batches = VecDeque::new();
    for _ in 0..count {
        let base_offset = reader.u64() as i64;
        let last_offset = reader.u64() as i64;
        let max_timestamp_ms = reader.u64() as i64;
        let append_time_ms = reader.u64() as i64;
        let leader_epoch = reader.u32() as i32;
        let raft_index = if version >= 2 { reader.u64() } else { 0 };
        let (length_bytes, carried_bytes) = if version >= 3 {
            let length_bytes = reader.u32();
            let carried = reader.u32() as usize;
            let carried_bytes = (carried > 0).then(|| reader.bytes(carried).into());
            (length_bytes, carried_bytes)
        } else {
            // Versions 1 and 2 carried every batch's bytes.
            let length = reader.u64() as usize;
            let bytes: Box<[u8]> = reader.bytes(length).into();
            (bytes.len() as u32, Some(bytes))
        };
        batches.push_back(StoredBatch {
            base_offset,
            last_offset,
            max_timestamp_ms,
            append_time_ms,
            leader_epoch,
            raft_index,
            length_bytes,
            carried_bytes,
        });
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_kafka::batch::build_uncompressed;

    fn produce(
        log: &mut PartitionLog,
        records: usize,
        producer: Option<(i64, i16, i32)>,
    ) -> ProduceOutcome {
        let values: Vec<Vec<u8>> = (0..records).map(|i| vec![i as u8; 4]).collect();
        let records: Vec<runnel_kafka::batch::KeyValue<'_>> =
            values.iter().map(|v| (None, Some(v.as_slice()))).collect();
        let batch = build_uncompressed(&records, 1_000, producer);
        // A raft index that tells the batches apart: 100 + their offset.
        let index = 100 + log.high_watermark() as u64;
        log.apply(
            PartitionCommand::Produce(ProduceCommand {
                append_time_ms: 5_000,
                log_append_time: false,
                batch,
            }),
            index,
            3,
        )
    }

    /// The entry `produce` applies at `index` (100 + the batch's offset).
    fn entry_data(log: &PartitionLog, records: usize) -> (u64, Vec<u8>) {
        let values: Vec<Vec<u8>> = (0..records).map(|i| vec![i as u8; 4]).collect();
        let records: Vec<runnel_kafka::batch::KeyValue<'_>> =
            values.iter().map(|v| (None, Some(v.as_slice()))).collect();
        let batch = build_uncompressed(&records, 1_000, None);
        let command = PartitionCommand::Produce(ProduceCommand {
            append_time_ms: 5_000,
            log_append_time: false,
            batch,
        });
        (100 + log.high_watermark() as u64, command.encode())
    }

    #[test]
    fn offsets_are_contiguous_across_batches_and_served_from_their_entries() {
        let mut log = PartitionLog::default();
        let mut entries = BTreeMap::new();
        for (records, expected_base) in [(3, 0), (2, 3)] {
            let (index, data) = entry_data(&log, records);
            let command = PartitionCommand::decode(&data).expect("decodes");
            assert!(matches!(
                log.apply(command, index, 3),
                ProduceOutcome::Appended { base_offset, .. } if base_offset == expected_base
            ));
            entries.insert(index, data);
        }
        assert_eq!(log.high_watermark(), 5);
        let entries: BTreeMap<u64, Entry> = entries
            .into_iter()
            .map(|(index, data)| {
                let entry = Entry {
                    index,
                    term: 3,
                    payload: Payload::Data(data),
                };
                (index, entry)
            })
            .collect();
        let read = log.read(4, 1, |index| entries.get(&index));
        assert_eq!(
            read.batches.len(),
            1,
            "at least one batch even over max_bytes"
        );
        assert_eq!(read.load_from, None);
        let first = &read.batches[0];
        assert_eq!(first.base_offset, 3);
        assert_eq!(first.carried_bytes, None, "no bytes in memory");
        let bytes = served_bytes(first, entries.get(&first.raft_index)).expect("at hand");
        assert_eq!(bytes.len(), first.length_bytes as usize);
        let header = batch::validate(&bytes).expect("stamped batch stays valid");
        assert_eq!(header.base_offset, 3);
        assert_eq!(header.partition_leader_epoch, 3);
        assert_eq!(
            log.retained_bytes(),
            log.parts().map(|part| part.length_bytes()).sum::<u64>()
        );
        // A batch whose entry is not at hand stops the read and says where
        // to read the log.
        let read = log.read(0, usize::MAX, |_| None);
        assert!(read.batches.is_empty());
        assert_eq!(read.load_from, Some(100));
    }

    #[test]
    #[should_panic(expected = "leader epoch")]
    fn a_batch_is_never_stamped_from_an_entry_of_another_term() {
        let mut log = PartitionLog::default();
        let (index, data) = entry_data(&log, 1);
        log.apply(PartitionCommand::decode(&data).expect("decodes"), index, 3);
        let Some(Part::Batch(batch)) = log.parts().next() else {
            panic!("one batch");
        };
        stamped_batch(&batch.clone(), index, 4, &data);
    }

    #[test]
    fn idempotent_producers_get_kafka_sequence_rules() {
        let mut log = PartitionLog::default();
        assert!(matches!(
            produce(&mut log, 2, Some((9, 0, 0))),
            ProduceOutcome::Appended { base_offset: 0, .. }
        ));
        // A retry of the same batch gets its original offset.
        assert_eq!(
            produce(&mut log, 2, Some((9, 0, 0))),
            ProduceOutcome::Duplicate { base_offset: 0 }
        );
        // A gap is out of order.
        assert_eq!(
            produce(&mut log, 1, Some((9, 0, 5))),
            ProduceOutcome::Refused {
                error_code: error_code::OUT_OF_ORDER_SEQUENCE_NUMBER
            }
        );
        assert!(matches!(
            produce(&mut log, 1, Some((9, 0, 2))),
            ProduceOutcome::Appended { base_offset: 2, .. }
        ));
        // An older epoch is fenced; a newer one starts at 0.
        assert!(matches!(
            produce(&mut log, 1, Some((9, 1, 0))),
            ProduceOutcome::Appended { .. }
        ));
        assert_eq!(
            produce(&mut log, 1, Some((9, 0, 3))),
            ProduceOutcome::Refused {
                error_code: error_code::INVALID_PRODUCER_EPOCH
            }
        );
        // A new producer must start at 0.
        assert_eq!(
            produce(&mut log, 1, Some((10, 0, 1))),
            ProduceOutcome::Refused {
                error_code: error_code::OUT_OF_ORDER_SEQUENCE_NUMBER
            }
        );
        assert_eq!(log.high_watermark(), 4);
    }

    #[test]
    fn retention_drops_whole_batches_from_the_front() {
        let mut log = PartitionLog::default();
        for _ in 0..5 {
            produce(&mut log, 2, None);
        }
        let size = log.retained_bytes();
        let one = size / 5;
        log.apply(
            PartitionCommand::Retain {
                now_ms: 5_000,
                retention: Retention {
                    retention_ms: -1,
                    retention_bytes: (2 * one) as i64,
                },
            },
            1,
            3,
        );
        assert_eq!(log.log_start_offset(), 6);
        assert_eq!(log.high_watermark(), 10);
        assert_eq!(log.lowest_raft_index_needed(), Some(106));
        log.apply(
            PartitionCommand::Retain {
                now_ms: 1_000_000,
                retention: Retention {
                    retention_ms: 10,
                    retention_bytes: -1,
                },
            },
            1,
            3,
        );
        assert_eq!(log.log_start_offset(), 8, "the last batch is kept");
        assert_eq!(log.lowest_raft_index_needed(), Some(108));
        assert_eq!(PartitionLog::default().lowest_raft_index_needed(), None);
    }

    #[test]
    fn a_full_index_refuses_produces_until_retention_makes_room() {
        let mut replay = Replay::new();
        // One chunk per epoch: three chunks, then an open batch.
        for _ in 0..4 {
            replay.produce(1, 4, None);
            replay.term += 1;
        }
        assert_eq!(replay.log.chunk_count(), 3);
        assert!(!replay.log.is_full());
        // What a million more chunks would take, so that the test need not
        // apply them: the bound is on these bytes.
        let room = INDEX_SNAPSHOT_BYTES_MAX - replay.log.index_snapshot_bytes;
        replay.log.index_snapshot_bytes += room - CHUNK_SNAPSHOT_BYTES_MAX + 1;
        assert!(replay.log.is_full());
        let refused = ProduceOutcome::Refused {
            error_code: error_code::KAFKA_STORAGE_ERROR,
        };
        let high_watermark = replay.log.high_watermark();
        assert_eq!(replay.produce(1, 4, None), refused);
        let header = batch::validate(&replay.batch(1, 4, None)).expect("valid");
        assert_eq!(
            replay.log.precheck(&header),
            Some(refused),
            "the precheck agrees"
        );
        // Retention drops the oldest chunk and makes room, and produces go
        // on at the next offset: nothing refused took an offset.
        let one = replay.log.chunks[0].length_bytes;
        replay.retain(
            5_000,
            Retention {
                retention_ms: -1,
                retention_bytes: (replay.log.retained_bytes() - one) as i64,
            },
        );
        assert!(!replay.log.is_full());
        assert!(matches!(
            replay.produce(1, 4, None),
            ProduceOutcome::Appended { base_offset, .. } if base_offset == high_watermark
        ));
    }

    #[test]
    fn snapshot_round_trip() {
        let mut log = PartitionLog::default();
        produce(&mut log, 2, Some((1, 0, 0)));
        produce(&mut log, 3, None);
        let encoded = log.encode();
        assert_eq!(PartitionLog::decode(&encoded), log);
        assert!(
            encoded.len() < 2 * STORED_BATCH_SNAPSHOT_BYTES as usize + 200,
            "the snapshot holds the index, not the bytes"
        );
    }

    /// A version 2 snapshot, as the previous release wrote it: every
    /// batch's bytes after its index fields.
    fn version_2_snapshot(batch: &StoredBatch, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&batch.base_offset.to_le_bytes());
        out.extend_from_slice(&(batch.last_offset + 1).to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&batch.base_offset.to_le_bytes());
        out.extend_from_slice(&batch.last_offset.to_le_bytes());
        out.extend_from_slice(&batch.max_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&batch.append_time_ms.to_le_bytes());
        out.extend_from_slice(&batch.leader_epoch.to_le_bytes());
        out.extend_from_slice(&batch.raft_index.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(&0u64.to_le_bytes());
        out
    }

    #[test]
    fn a_version_2_snapshot_keeps_its_bytes_through_later_snapshots() {
        let mut log = PartitionLog::default();
        let (index, data) = entry_data(&log, 2);
        log.apply(PartitionCommand::decode(&data).expect("decodes"), index, 3);
        let Some(Part::Batch(batch)) = log.parts().next() else {
            panic!("one batch");
        };
        let batch = batch.clone();
        let bytes = stamped_batch(&batch, index, 3, &data);
        let old = PartitionLog::decode(&version_2_snapshot(&batch, &bytes));
        let Some(Part::Batch(carried)) = old.parts().next() else {
            panic!("one batch");
        };
        assert_eq!(carried.carried_bytes.as_deref(), Some(bytes.as_slice()));
        assert_eq!(carried.length_bytes as usize, bytes.len());
        assert_eq!(old.high_watermark(), 2);
        // Its bytes are carried, so it needs no entry of the log: a
        // replica restored from it does not wait for a backfill.
        assert_eq!(old.lowest_raft_index_needed(), None);
        // A snapshot taken since carries them on: the log may not hold
        // that entry.
        assert_eq!(PartitionLog::decode(&old.encode()), old);
    }

    #[test]
    fn commands_round_trip() {
        let command = PartitionCommand::Produce(ProduceCommand {
            append_time_ms: 77,
            log_append_time: true,
            batch: vec![1, 2, 3],
        });
        assert_eq!(PartitionCommand::decode(&command.encode()), Some(command));
        let retain = PartitionCommand::Retain {
            now_ms: 1,
            retention: Retention {
                retention_ms: 2,
                retention_bytes: 3,
            },
        };
        assert_eq!(PartitionCommand::decode(&retain.encode()), Some(retain));
        assert_eq!(PartitionCommand::decode(&[9]), None);
    }

    /// A partition and the log it applied, beside what an index listing
    /// every batch would hold: the model the sparse index must agree with.
    struct Replay {
        log: PartitionLog,
        entries: BTreeMap<u64, Entry>,
        /// Every batch appended and not dropped by retention, in order.
        expected: Vec<StoredBatch>,
        term: u64,
        clock_ms: i64,
    }

    impl Replay {
        fn new() -> Replay {
            Replay {
                log: PartitionLog::default(),
                entries: BTreeMap::new(),
                expected: Vec::new(),
                term: 1,
                clock_ms: 1_000,
            }
        }

        fn next_index(&self) -> u64 {
            self.entries.keys().next_back().map_or(1, |last| last + 1)
        }

        fn batch(
            &self,
            records: usize,
            value_bytes: usize,
            producer: Option<(i64, i16, i32)>,
        ) -> Vec<u8> {
            let values: Vec<Vec<u8>> = (0..records).map(|i| vec![i as u8; value_bytes]).collect();
            let records: Vec<runnel_kafka::batch::KeyValue<'_>> =
                values.iter().map(|v| (None, Some(v.as_slice()))).collect();
            build_uncompressed(&records, self.clock_ms, producer)
        }

        fn apply(&mut self, payload: Payload) -> Option<ProduceOutcome> {
            let entry = Entry {
                index: self.next_index(),
                term: self.term,
                payload,
            };
            let outcome = match &entry.payload {
                Payload::Data(data) => PartitionCommand::decode(data)
                    .map(|command| self.log.apply(command, entry.index, entry.term)),
                _ => None,
            };
            self.entries.insert(entry.index, entry);
            outcome
        }

        fn produce(
            &mut self,
            records: usize,
            value_bytes: usize,
            producer: Option<(i64, i16, i32)>,
        ) -> ProduceOutcome {
            self.clock_ms += 7;
            let batch = self.batch(records, value_bytes, producer);
            let length_bytes = batch.len() as u32;
            let raft_index = self.next_index();
            let command = PartitionCommand::Produce(ProduceCommand {
                append_time_ms: self.clock_ms,
                log_append_time: false,
                batch,
            });
            let outcome = self
                .apply(Payload::Data(command.encode()))
                .expect("a produce");
            if let ProduceOutcome::Appended { base_offset, .. } = outcome {
                self.expected.push(StoredBatch {
                    base_offset,
                    last_offset: base_offset + records as i64 - 1,
                    max_timestamp_ms: self.clock_ms,
                    append_time_ms: self.clock_ms,
                    leader_epoch: self.term as i32,
                    raft_index,
                    length_bytes,
                    carried_bytes: None,
                });
            }
            outcome
        }

        fn retain(&mut self, now_ms: i64, retention: Retention) {
            self.apply(Payload::Data(
                PartitionCommand::Retain { now_ms, retention }.encode(),
            ));
            let start = self.log.log_start_offset();
            self.expected.retain(|batch| batch.base_offset >= start);
        }

        /// The sparse index serves exactly the batches a dense one would,
        /// from every offset, and survives a snapshot.
        fn check(&self) {
            let entry_at = |index: u64| self.entries.get(&index);
            let all = self
                .log
                .read(self.log.log_start_offset(), usize::MAX, entry_at);
            assert_eq!(all.load_from, None);
            let served: Vec<StoredBatch> = all
                .batches
                .iter()
                .map(|batch| batch.clone().into_owned())
                .collect();
            assert_eq!(served, self.expected);
            assert_eq!(
                self.expected
                    .first()
                    .map_or(self.log.high_watermark(), |batch| batch.base_offset),
                self.log.log_start_offset()
            );
            for batch in &self.expected {
                for offset in [batch.base_offset, batch.last_offset] {
                    let read = self.log.read(offset, 1, entry_at);
                    assert_eq!(read.batches[0].as_ref(), batch, "offset {offset}");
                }
                let bytes = served_bytes(batch, entry_at(batch.raft_index)).expect("at hand");
                let header = batch::validate(&bytes).expect("a stamped batch is valid");
                assert_eq!(header.base_offset, batch.base_offset);
            }
            assert_eq!(
                self.log.retained_bytes(),
                self.expected
                    .iter()
                    .map(|batch| u64::from(batch.length_bytes))
                    .sum::<u64>()
            );
            assert_eq!(
                self.log.lowest_raft_index_needed(),
                self.expected.first().map(|batch| batch.raft_index)
            );
            // OffsetForLeaderEpoch, against a scan of every batch.
            for epoch in -1..=self.term as i32 + 1 {
                let later = self
                    .expected
                    .iter()
                    .find(|batch| batch.leader_epoch > epoch);
                let found = self
                    .expected
                    .iter()
                    .filter(|batch| batch.leader_epoch <= epoch)
                    .map(|batch| batch.leader_epoch)
                    .next_back()
                    .unwrap_or(-1);
                let end = match later {
                    None => self.log.high_watermark(),
                    Some(_) if found < 0 => -1,
                    Some(batch) => batch.base_offset,
                };
                assert_eq!(
                    self.log.end_offset_for_epoch(epoch),
                    (found, end),
                    "epoch {epoch}"
                );
            }
            let encoded = self.log.encode();
            let decoded = PartitionLog::decode(&encoded);
            assert_eq!(decoded, self.log, "a snapshot round trip");
            assert!(encoded.len() as u64 <= PARTITION_SNAPSHOT_BYTES_MAX);
            let index_bytes: u64 = self
                .log
                .chunks
                .iter()
                .map(Chunk::snapshot_bytes)
                .sum::<u64>()
                + self
                    .log
                    .listed
                    .iter()
                    .map(listed_snapshot_bytes)
                    .sum::<u64>();
            assert_eq!(self.log.index_snapshot_bytes, index_bytes);
        }
    }

    #[test]
    fn chunks_are_sealed_by_count_bytes_and_epoch() {
        let mut replay = Replay::new();
        for _ in 0..CHUNK_BATCHES_MAX + 10 {
            replay.produce(2, 4, None);
        }
        assert_eq!(replay.log.chunk_count(), 1, "sealed at the batch count");
        assert_eq!(replay.log.chunks[0].batch_count as usize, CHUNK_BATCHES_MAX);
        assert_eq!(replay.log.open.len(), 10);
        replay.term += 1;
        replay.produce(1, 4, None);
        assert_eq!(replay.log.chunk_count(), 2, "sealed at the epoch change");
        assert_eq!(replay.log.chunks[1].batch_count, 10);
        // Batches of 100 KiB: a chunk takes three, reaching the byte bound.
        for _ in 0..4 {
            replay.produce(1, 100 << 10, None);
        }
        assert_eq!(replay.log.chunk_count(), 3, "sealed at the byte bound");
        assert!(replay.log.chunks[2].length_bytes >= CHUNK_BYTES_MAX);
        // Refusals among a chunk's batches (an idempotent producer's
        // out-of-order batches) take no offset and are no batch of it.
        replay.produce(1, 4, Some((7, 0, 0)));
        for _ in 0..40 {
            assert!(matches!(
                replay.produce(1, 4, Some((7, 0, 9))),
                ProduceOutcome::Refused { .. }
            ));
            replay.produce(1, 4, None);
        }
        replay.check();
    }

    #[test]
    fn the_sparse_index_serves_what_a_dense_one_would() {
        // A seeded walk through produces of every size, idempotent retries
        // and gaps, elections, noops and retention.
        for seed in 0..6u64 {
            let mut replay = Replay::new();
            let mut random = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = |bound: u64| {
                random = random
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (random >> 33) % bound
            };
            let mut sequence = 0i32;
            let mut chunks_max = 0;
            for step in 0..1_500 {
                match next(100) {
                    0..=59 => {
                        let records = 1 + next(4) as usize;
                        let value_bytes = if next(20) == 0 { 40 << 10 } else { 8 };
                        replay.produce(records, value_bytes, None);
                    }
                    60..=79 => {
                        // An idempotent producer: in order, a retry, or a gap.
                        let records = 1 + next(3) as i32;
                        let base = match next(4) {
                            0 => sequence + 5,
                            1 => (sequence - records).max(0),
                            _ => sequence,
                        };
                        let outcome = replay.produce(records as usize, 8, Some((3, 0, base)));
                        if matches!(outcome, ProduceOutcome::Appended { .. }) {
                            sequence = base + records;
                        }
                    }
                    80..=84 => {
                        replay.term += 1;
                        replay.apply(Payload::Noop);
                    }
                    85..=89 => {
                        replay.apply(Payload::Config(runnel_consensus::Config::default()));
                    }
                    90..=92 => {
                        let bytes = replay.log.retained_bytes();
                        replay.retain(
                            replay.clock_ms,
                            Retention {
                                retention_ms: -1,
                                retention_bytes: (bytes * 3 / 4) as i64,
                            },
                        );
                    }
                    93 => {
                        let clock_ms = replay.clock_ms;
                        replay.retain(
                            clock_ms,
                            Retention {
                                retention_ms: 500,
                                retention_bytes: -1,
                            },
                        );
                    }
                    _ => {
                        replay.apply(Payload::Data(vec![0xee, 1, 2]));
                    }
                }
                chunks_max = chunks_max.max(replay.log.chunk_count());
                if step % 500 == 499 {
                    replay.check();
                    // A replica restored from the snapshot goes on alike.
                    replay.log = PartitionLog::decode(&replay.log.encode());
                }
            }
            assert!(chunks_max > 2, "seed {seed} sealed chunks");
            replay.check();
        }
    }

    #[test]
    fn a_read_inside_a_chunk_names_the_first_entry_it_lacks() {
        let mut replay = Replay::new();
        for _ in 0..CHUNK_BATCHES_MAX + 1 {
            replay.produce(1, 4, None);
        }
        let chunk = replay.log.chunks[0].clone();
        // Entries from 100 on are on disk, not at hand.
        let entry_at = |index: u64| replay.entries.get(&index).filter(|_| index < 100);
        // A read inside the chunk loads from its own batch's entry: the
        // steps say where it is.
        let read = replay.log.read(150, usize::MAX, entry_at);
        assert!(read.batches.is_empty());
        assert_eq!(read.load_from, Some(151));
        // And needs none of the chunk's entries before that batch.
        let later_at = |index: u64| replay.entries.get(&index).filter(|_| index >= 151);
        let read = replay.log.read(150, usize::MAX, later_at);
        assert_eq!(read.load_from, None);
        assert_eq!(read.batches[0].as_ref(), &replay.expected[150]);
        assert_eq!(read.batches.len(), replay.expected.len() - 150);
        let read = replay.log.read(50, usize::MAX, entry_at);
        assert_eq!(read.batches.len(), 49, "the batches before the gap");
        assert_eq!(read.batches[0].base_offset, 50);
        assert_eq!(read.load_from, Some(100));
        assert_eq!(chunk.batches(entry_at).missing, Some(100));
        // A read that fills its bytes before the gap needs nothing more.
        let read = replay.log.read(10, 1, entry_at);
        assert_eq!((read.batches.len(), read.load_from), (1, None));
        // Lookups by time answer from the chunk meanwhile.
        let nothing = |_: u64| None;
        match replay.log.batch_at_time(0, nothing) {
            Some(Located::Unloaded { load_from, part }) => {
                assert_eq!(load_from, chunk.first_raft_index);
                assert_eq!(part.base_offset(), 0);
            }
            other => panic!("{other:?}"),
        }
        let entry_at = |index: u64| replay.entries.get(&index);
        let time = replay.expected[77].max_timestamp_ms;
        match replay.log.batch_at_time(time, entry_at) {
            Some(Located::Batch(batch)) => assert_eq!(batch.as_ref(), &replay.expected[77]),
            other => panic!("{other:?}"),
        }
        match replay.log.batch_with_max_timestamp(entry_at) {
            Some(Located::Batch(batch)) => {
                assert_eq!(batch.as_ref(), replay.expected.last().expect("batches"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn epochs_and_retention_are_answered_from_the_chunks() {
        let mut replay = Replay::new();
        for term in 1..=3 {
            replay.term = term;
            for _ in 0..300 {
                replay.produce(1, 4, None);
            }
        }
        // Epoch 1 ends where epoch 2's first chunk starts.
        assert_eq!(replay.log.end_offset_for_epoch(1), (1, 300));
        assert_eq!(replay.log.end_offset_for_epoch(2), (2, 600));
        assert_eq!(replay.log.end_offset_for_epoch(3), (3, 900));
        assert_eq!(replay.log.end_offset_for_epoch(0), (-1, -1));
        // Retention by time drops a chunk only once its newest batch is old.
        let newest_of_first = replay.log.chunks[0].append_time_max_ms;
        let keep_ms = 10;
        replay.retain(
            newest_of_first + keep_ms,
            Retention {
                retention_ms: keep_ms,
                retention_bytes: -1,
            },
        );
        assert_eq!(replay.log.log_start_offset(), 0, "not yet");
        replay.retain(
            newest_of_first + keep_ms + 1,
            Retention {
                retention_ms: keep_ms,
                retention_bytes: -1,
            },
        );
        assert_eq!(replay.log.log_start_offset(), CHUNK_BATCHES_MAX as i64);
        replay.check();
    }

    #[test]
    fn a_version_3_snapshot_lists_its_batches_and_chunks_follow() {
        let mut replay = Replay::new();
        for _ in 0..3 {
            replay.produce(1, 4, None);
        }
        // Version 3: every batch listed, no chunks.
        let mut old = Vec::new();
        old.extend_from_slice(&3u32.to_le_bytes());
        old.extend_from_slice(&0i64.to_le_bytes());
        old.extend_from_slice(&3i64.to_le_bytes());
        encode_batches(&mut old, &replay.log.open);
        old.extend_from_slice(&0u64.to_le_bytes());
        replay.log = PartitionLog::decode(&old);
        assert_eq!(replay.log.listed.len(), 3);
        for _ in 0..CHUNK_BATCHES_MAX + 1 {
            replay.produce(1, 4, None);
        }
        assert_eq!(replay.log.chunk_count(), 1);
        replay.check();
    }
}
