//! The sparse index of a partition: its batches in chunks, each chunk one
//! entry of the index, and the batches of a chunk rebuilt from its log
//! entries when a read needs them (docs/storage.md, "The sparse index").
//!
//! A chunk holds up to `CHUNK_BATCHES_MAX` consecutive batches of one
//! leader epoch and up to about `CHUNK_BYTES_MAX` bytes. It records what
//! a lookup by offset, by time or by epoch needs to find it (its first and
//! last offsets, its max timestamp, its epoch, its raft index range), what
//! retention needs to drop it whole (its bytes, its latest append time),
//! and the one thing its entries cannot tell: which produces in its range
//! appended no batch (`refused`). Offsets are assigned when an entry is
//! applied, from the producer state of the replica, so a refused produce
//! looks on disk just like an appended one.
//!
//! Given that list, the batches of a chunk are a pure function of its
//! entries (`Chunk::batches`): walk the range, take every produce that is
//! not refused, and count offsets on from the chunk's first. Every replica
//! seals the same chunks, since sealing is decided at apply from the
//! replicated state alone, so every replica rebuilds the same batches.

use runnel_consensus::{Entry, Payload};
use runnel_kafka::batch;

use super::{produce_parts, StoredBatch};

/// The most batches in one chunk: a chunk is rebuilt whole for a read
/// inside it, so this bounds the work of one lookup. It matches the most
/// entries one read of the log on disk brings (`LOG_READ_ENTRIES_MAX`).
pub const CHUNK_BATCHES_MAX: usize = 256;
/// A chunk is sealed once its batches reach this many bytes: it bounds
/// what a read inside a chunk reads before the batch it wants (Kafka's
/// `index.interval.bytes` plays the same part, at 4 KiB). One batch may
/// take a chunk past it, by at most `batch::BATCH_BYTES_MAX`.
pub const CHUNK_BYTES_MAX: u64 = 256 << 10;
/// The most refused produces a chunk records. A chunk being filled that
/// meets one more is sealed before the next batch, so a flood of refused
/// produces costs chunks, never unbounded memory.
pub const CHUNK_REFUSED_MAX: usize = 8;
/// What one chunk costs in a snapshot, at most.
pub const CHUNK_SNAPSHOT_BYTES_MAX: u64 =
    8 + 8 + 8 + 8 + 4 + 8 + 8 + 8 + 4 + 4 + 8 * CHUNK_REFUSED_MAX as u64;

const _: () = assert!(
    CHUNK_BATCHES_MAX == runnel_storage::LOG_READ_ENTRIES_MAX,
    "a chunk's batches fit one read of the log, noops aside"
);
const _: () = assert!(
    CHUNK_BYTES_MAX <= runnel_storage::LOG_READ_BYTES_MAX,
    "a chunk's bytes fit one read of the log, its last batch aside"
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
    /// The raft indexes in the range whose produce appended no batch
    /// (refused, or a duplicate), ascending, at most `CHUNK_REFUSED_MAX`.
    pub refused: Vec<u64>,
}

/// What `Chunk::batches` rebuilt: its batches in order, from the first,
/// up to the first entry not at hand.
#[derive(Debug, PartialEq, Eq)]
pub struct Rebuilt {
    pub batches: Vec<StoredBatch>,
    /// The first raft index of the range whose entry was not at hand; the
    /// batches after it are not rebuilt. None: the chunk is whole.
    pub missing: Option<u64>,
}

impl Chunk {
    /// Seals `batches`, consecutive batches of one epoch applied since the
    /// last chunk, into a chunk. `refused` lists produces that appended
    /// nothing, ascending; those outside the chunk's range are left out.
    pub fn seal(batches: &[StoredBatch], refused: &[u64]) -> Chunk {
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
        let refused: Vec<u64> = refused
            .iter()
            .copied()
            .filter(|index| (first.raft_index..=last.raft_index).contains(index))
            .collect();
        assert!(refused.len() <= CHUNK_REFUSED_MAX, "a chunk's refusals");
        assert!(
            refused.windows(2).all(|pair| pair[0] < pair[1]),
            "refusals ascend"
        );
        assert!(
            refused.iter().all(|index| batches
                .binary_search_by_key(index, |batch| batch.raft_index)
                .is_err()),
            "a refused produce appended no batch"
        );
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
            refused,
        }
    }

    /// The chunk's batches, rebuilt from its entries: `entry_at(index)` is
    /// the entry at `index` of the group's log if it is at hand (in memory,
    /// or read from disk). Storage checksums every entry and binds it to
    /// its group and index, and the rebuild follows `apply` rule for rule,
    /// so a whole chunk that does not come out as it was sealed is a
    /// programmer error, asserted.
    pub fn batches<'e>(&self, entry_at: impl Fn(u64) -> Option<&'e Entry>) -> Rebuilt {
        let mut batches = Vec::with_capacity(self.batch_count as usize);
        let mut next_offset = self.base_offset;
        for index in self.first_raft_index..=self.last_raft_index {
            let Some(entry) = entry_at(index) else {
                return Rebuilt {
                    batches,
                    missing: Some(index),
                };
            };
            assert_eq!(entry.index, index, "the entry asked for");
            let Payload::Data(data) = &entry.payload else {
                continue;
            };
            let Some((append_time_ms, log_append_time, bytes)) = produce_parts(data) else {
                continue;
            };
            if self.refused.binary_search(&index).is_ok() {
                continue;
            }
            let header =
                batch::read_header(bytes).expect("an appended batch was validated at apply");
            let leader_epoch = i32::try_from(entry.term).unwrap_or(i32::MAX);
            assert_eq!(leader_epoch, self.leader_epoch, "the chunk's epoch");
            let last_offset = next_offset + i64::from(header.last_offset_delta);
            batches.push(StoredBatch {
                base_offset: next_offset,
                last_offset,
                max_timestamp_ms: if log_append_time {
                    append_time_ms
                } else {
                    header.max_timestamp_ms
                },
                append_time_ms,
                leader_epoch,
                raft_index: index,
                length_bytes: u32::try_from(bytes.len()).expect("a validated batch fits in u32"),
                carried_bytes: None,
            });
            next_offset = last_offset + 1;
        }
        let rebuilt = Chunk::seal(&batches, &self.refused);
        assert_eq!(&rebuilt, self, "a chunk rebuilt from its entries");
        Rebuilt {
            batches,
            missing: None,
        }
    }

    /// What the chunk takes in a snapshot (`encode`).
    pub fn snapshot_bytes(&self) -> u64 {
        CHUNK_SNAPSHOT_BYTES_MAX - 8 * (CHUNK_REFUSED_MAX - self.refused.len()) as u64
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
        out.extend_from_slice(&(self.refused.len() as u32).to_le_bytes());
        for index in &self.refused {
            out.extend_from_slice(&index.to_le_bytes());
        }
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
        let refused_count = reader.u32() as usize;
        assert!(refused_count <= CHUNK_REFUSED_MAX, "a chunk's refusals");
        let refused = (0..refused_count).map(|_| reader.u64()).collect();
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
            refused,
        };
        assert!(
            chunk.first_raft_index <= chunk.last_raft_index
                && chunk.base_offset <= chunk.last_offset
                && (1..=CHUNK_BATCHES_MAX as u32).contains(&chunk.batch_count),
            "a chunk in a snapshot: {chunk:?}"
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
