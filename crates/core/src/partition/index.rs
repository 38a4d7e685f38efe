//! The sparse index of a partition: its batches in chunks, each chunk one
//! entry of the index, and the batches of a chunk rebuilt from its log
//! entries when a read needs them (docs/storage.md, "The sparse index").
//!
//! A chunk holds up to `CHUNK_BATCHES_MAX` consecutive batches of one
//! leader epoch and up to about `CHUNK_BYTES_MAX` bytes. It records what a
//! lookup by offset, by time or by epoch needs to find it (its first and
//! last offsets, its max timestamp, its epoch, its raft index range), what
//! retention needs to drop it whole (its bytes, its latest append time),
//! and, packed in two or three bytes a batch, where each batch is: the step
//! from the previous batch's raft index to its own, and its record count.
//! Offsets are assigned when an entry is applied, from the producer state
//! of the replica, so the entries on disk cannot tell which produces
//! appended a batch, nor at which offset: the steps do.
//!
//! With them a read at an offset finds its batch's entry without reading
//! the chunk's earlier entries, and the batch is a pure function of that
//! entry (`Chunk::batches_from`): its offsets from the steps, its epoch
//! from the entry's term, its timestamps and length from the batch. Every
//! replica seals the same chunks, since sealing is decided at apply from
//! the replicated state alone, so every replica rebuilds the same batches.

use runnel_consensus::{Entry, Payload};
use runnel_kafka::batch;

use super::{produce_parts, StoredBatch};

/// The most batches in one chunk: a lookup by time rebuilds a chunk whole,
/// so this bounds its work. It matches the most entries one read of the
/// log on disk brings (`LOG_READ_ENTRIES_MAX`).
pub const CHUNK_BATCHES_MAX: usize = 256;
/// A chunk is sealed once its batches reach this many bytes: it bounds
/// what a lookup by time reads (Kafka's `index.interval.bytes` plays the
/// same part for its time index, at 4 KiB). One batch may take a chunk
/// past it, by at most `batch::BATCH_BYTES_MAX`.
pub const CHUNK_BYTES_MAX: u64 = 256 << 10;
/// The most bytes one batch's step takes: the raft index step (a u64) and
/// the record count (at most `batch::BATCH_RECORDS_MAX`), as LEB128.
pub const CHUNK_STEP_BYTES_MAX: u64 = 10 + 3;
/// What one chunk costs in a snapshot, at most.
pub const CHUNK_SNAPSHOT_BYTES_MAX: u64 =
    CHUNK_FIXED_SNAPSHOT_BYTES + 4 + CHUNK_BATCHES_MAX as u64 * CHUNK_STEP_BYTES_MAX;
/// The fields of a chunk in a snapshot, before its steps.
pub const CHUNK_FIXED_SNAPSHOT_BYTES: u64 = 8 + 8 + 8 + 8 + 4 + 8 + 8 + 8 + 4;

const _: () = assert!(
    CHUNK_BATCHES_MAX == runnel_storage::LOG_READ_ENTRIES_MAX,
    "a chunk's batches fit one read of the log, other entries aside"
);
const _: () = assert!(
    CHUNK_BYTES_MAX <= runnel_storage::LOG_READ_BYTES_MAX,
    "a chunk's bytes fit one read of the log, its last batch aside"
);
const _: () = assert!(
    batch::BATCH_RECORDS_MAX as u64 <= 1 << 21,
    "a record count takes at most 3 bytes as LEB128"
);

/// One entry of the sparse index: consecutive batches of one leader epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The raft index of the chunk's first batch.
    pub first_raft_index: u64,
    /// The raft index of its last batch.
    pub last_raft_index: u64,
    /// The base offset of its first batch.
    pub base_offset: i64,
    /// The last offset of its last batch.
    pub last_offset: i64,
    pub batch_count: u32,
    /// The stamped length of its batches, summed.
    pub length_bytes: u64,
    /// The largest max timestamp of its batches.
    pub max_timestamp_ms: i64,
    /// The latest append time of its batches: retention by time drops the
    /// chunk once even that one is too old.
    pub append_time_max_ms: i64,
    /// The leader epoch of every batch in it: a chunk is sealed when the
    /// epoch changes, so OffsetForLeaderEpoch is answered from the index.
    pub leader_epoch: i32,
    /// For each batch, as LEB128: the step from the previous batch's raft
    /// index (0 for the first), then its record count.
    steps: Box<[u8]>,
}

/// Where one batch of a chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub raft_index: u64,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What `Chunk::batches_from` rebuilt: batches in order, up to the first
/// whose entry was not at hand.
#[derive(Debug, PartialEq, Eq)]
pub struct Rebuilt {
    pub batches: Vec<StoredBatch>,
    /// The raft index of the first batch asked for whose entry was not at
    /// hand; the batches from it on are not rebuilt. None: all were.
    pub missing: Option<u64>,
}

fn write_leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a LEB128 number at `*at`. The steps are written by `seal` and
/// checksummed in snapshots, so a malformed one is a programmer error.
fn read_leb128(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("a LEB128 number of more than 64 bits in a chunk's steps");
}

impl Chunk {
    /// Seals `batches`, consecutive batches of one epoch applied since the
    /// last chunk, into a chunk.
    pub fn seal(batches: &[StoredBatch]) -> Chunk {
        let first = batches.first().expect("a chunk holds a batch");
        let last = batches.last().expect("a chunk holds a batch");
        assert!(batches.len() <= CHUNK_BATCHES_MAX, "a chunk's batch count");
        for pair in batches.windows(2) {
            assert_eq!(
                pair[0].last_offset + 1,
                pair[1].base_offset,
                "a chunk's offsets run on"
            );
            assert!(
                pair[0].raft_index < pair[1].raft_index,
                "a chunk's entries ascend"
            );
        }
        assert!(
            batches
                .iter()
                .all(|batch| batch.leader_epoch == first.leader_epoch),
            "a chunk holds one leader epoch"
        );
        assert!(
            batches.iter().all(|batch| batch.carried_bytes.is_none()),
            "a chunk's batches are in the log"
        );
        let mut steps = Vec::with_capacity(3 * batches.len());
        let mut previous = first.raft_index;
        for batch in batches {
            assert!(batch.base_offset <= batch.last_offset, "a batch's offsets");
            write_leb128(&mut steps, batch.raft_index - previous);
            write_leb128(
                &mut steps,
                (batch.last_offset - batch.base_offset + 1) as u64,
            );
            previous = batch.raft_index;
        }
        Chunk {
            first_raft_index: first.raft_index,
            last_raft_index: last.raft_index,
            base_offset: first.base_offset,
            last_offset: last.last_offset,
            batch_count: u32::try_from(batches.len()).expect("at most CHUNK_BATCHES_MAX"),
            length_bytes: batches
                .iter()
                .map(|batch| u64::from(batch.length_bytes))
                .sum(),
            max_timestamp_ms: batches
                .iter()
                .map(|batch| batch.max_timestamp_ms)
                .max()
                .expect("a batch"),
            append_time_max_ms: batches
                .iter()
                .map(|batch| batch.append_time_ms)
                .max()
                .expect("a batch"),
            leader_epoch: first.leader_epoch,
            steps: steps.into_boxed_slice(),
        }
    }

    /// Where each batch of the chunk is, in order.
    pub fn positions(&self) -> impl Iterator<Item = Position> + '_ {
        let mut at = 0;
        let mut raft_index = self.first_raft_index;
        let mut base_offset = self.base_offset;
        (0..self.batch_count).map(move |_| {
            raft_index += read_leb128(&self.steps, &mut at);
            let records = read_leb128(&self.steps, &mut at) as i64;
            let position = Position {
                raft_index,
                base_offset,
                last_offset: base_offset + records - 1,
            };
            base_offset += records;
            position
        })
    }

    /// The batches from the one holding `offset` on, rebuilt from their
    /// entries: `entry_at(index)` is the entry at `index` of the group's
    /// log if it is at hand (in memory, or read from disk). The steps say
    /// which entry each batch is and its offsets; the entry gives the rest.
    /// Storage checksums every entry and binds it to its group and index,
    /// so an entry that does not fit its step is a programmer error,
    /// asserted, and so is a whole chunk that rebuilds to anything else.
    pub fn batches_from<'e>(
        &self,
        offset: i64,
        entry_at: impl Fn(u64) -> Option<&'e Entry>,
    ) -> Rebuilt {
        let mut batches = Vec::new();
        for position in self.positions() {
            if position.last_offset < offset {
                continue;
            }
            let Some(entry) = entry_at(position.raft_index) else {
                return Rebuilt {
                    batches,
                    missing: Some(position.raft_index),
                };
            };
            batches.push(self.batch_at(position, entry));
        }
        if offset <= self.base_offset {
            assert_eq!(
                &Chunk::seal(&batches),
                self,
                "a chunk rebuilt from its entries"
            );
        }
        Rebuilt {
            batches,
            missing: None,
        }
    }

    /// Every batch of the chunk (`batches_from` its first offset).
    pub fn batches<'e>(&self, entry_at: impl Fn(u64) -> Option<&'e Entry>) -> Rebuilt {
        self.batches_from(self.base_offset, entry_at)
    }

    /// The batch at `position`, from its entry.
    fn batch_at(&self, position: Position, entry: &Entry) -> StoredBatch {
        assert_eq!(entry.index, position.raft_index, "the entry asked for");
        let Payload::Data(data) = &entry.payload else {
            panic!(
                "the entry {} of an indexed batch holds no data",
                entry.index
            );
        };
        let Some((append_time_ms, log_append_time, bytes)) = produce_parts(data) else {
            panic!(
                "the entry {} of an indexed batch is not a produce",
                entry.index
            );
        };
        let header = batch::read_header(bytes).expect("an appended batch was validated at apply");
        assert_eq!(
            i64::from(header.last_offset_delta),
            position.last_offset - position.base_offset,
            "the batch's record count"
        );
        let leader_epoch = i32::try_from(entry.term).unwrap_or(i32::MAX);
        assert_eq!(leader_epoch, self.leader_epoch, "the chunk's epoch");
        StoredBatch {
            base_offset: position.base_offset,
            last_offset: position.last_offset,
            max_timestamp_ms: if log_append_time {
                append_time_ms
            } else {
                header.max_timestamp_ms
            },
            append_time_ms,
            leader_epoch,
            raft_index: position.raft_index,
            length_bytes: u32::try_from(bytes.len()).expect("a validated batch fits in u32"),
            carried_bytes: None,
        }
    }

    /// What the chunk takes in a snapshot (`encode`).
    pub fn snapshot_bytes(&self) -> u64 {
        CHUNK_FIXED_SNAPSHOT_BYTES + 4 + self.steps.len() as u64
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.first_raft_index.to_le_bytes());
        out.extend_from_slice(&self.last_raft_index.to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.last_offset.to_le_bytes());
        out.extend_from_slice(&self.batch_count.to_le_bytes());
        out.extend_from_slice(&self.length_bytes.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&self.append_time_max_ms.to_le_bytes());
        out.extend_from_slice(&self.leader_epoch.to_le_bytes());
        out.extend_from_slice(&(self.steps.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.steps);
    }

    pub(crate) fn decode(reader: &mut crate::state_machine::Reader<'_>) -> Chunk {
        let first_raft_index = reader.u64();
        let last_raft_index = reader.u64();
        let base_offset = reader.u64() as i64;
        let last_offset = reader.u64() as i64;
        let batch_count = reader.u32();
        let length_bytes = reader.u64();
        let max_timestamp_ms = reader.u64() as i64;
        let append_time_max_ms = reader.u64() as i64;
        let leader_epoch = reader.u32() as i32;
        let steps_bytes = reader.u32() as usize;
        assert!(
            (1..=CHUNK_BATCHES_MAX as u32).contains(&batch_count)
                && steps_bytes as u64 <= u64::from(batch_count) * CHUNK_STEP_BYTES_MAX,
            "a chunk in a snapshot: {batch_count} batches, {steps_bytes} bytes of steps"
        );
        let steps = reader.bytes(steps_bytes).into();
        let chunk = Chunk {
            first_raft_index,
            last_raft_index,
            base_offset,
            last_offset,
            batch_count,
            length_bytes,
            max_timestamp_ms,
            append_time_max_ms,
            leader_epoch,
            steps,
        };
        // The steps must walk from the first batch to the last.
        let last = chunk.positions().last().expect("a batch");
        assert!(
            last.raft_index == chunk.last_raft_index && last.last_offset == chunk.last_offset,
            "a chunk's steps end at its last batch: {chunk:?}"
        );
        chunk
    }
}

/// One entry of a partition's index, in offset order: a batch listed on
/// its own (restored from an old snapshot, or applied since the last
/// chunk was sealed), or a sealed chunk of batches.
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    Batch(&'a StoredBatch),
    Chunk(&'a Chunk),
}

impl Part<'_> {
    pub fn first_raft_index(&self) -> u64 {
        match self {
            Part::Batch(batch) => batch.raft_index,
            Part::Chunk(chunk) => chunk.first_raft_index,
        }
    }

    pub fn last_raft_index(&self) -> u64 {
        match self {
            Part::Batch(batch) => batch.raft_index,
            Part::Chunk(chunk) => chunk.last_raft_index,
        }
    }

    pub fn base_offset(&self) -> i64 {
        match self {
            Part::Batch(batch) => batch.base_offset,
            Part::Chunk(chunk) => chunk.base_offset,
        }
    }

    pub fn last_offset(&self) -> i64 {
        match self {
            Part::Batch(batch) => batch.last_offset,
            Part::Chunk(chunk) => chunk.last_offset,
        }
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        match self {
            Part::Batch(batch) => batch.max_timestamp_ms,
            Part::Chunk(chunk) => chunk.max_timestamp_ms,
        }
    }

    /// When retention by time counts from: the latest append time in it.
    pub fn append_time_max_ms(&self) -> i64 {
        match self {
            Part::Batch(batch) => batch.append_time_ms,
            Part::Chunk(chunk) => chunk.append_time_max_ms,
        }
    }

    pub fn leader_epoch(&self) -> i32 {
        match self {
            Part::Batch(batch) => batch.leader_epoch,
            Part::Chunk(chunk) => chunk.leader_epoch,
        }
    }

    pub fn length_bytes(&self) -> u64 {
        match self {
            Part::Batch(batch) => u64::from(batch.length_bytes),
            Part::Chunk(chunk) => chunk.length_bytes,
        }
    }
}
