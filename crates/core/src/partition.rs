//! The replicated state machine of a Kafka partition: its record batches at
//! their offsets, and the idempotent producers' sequence state.
//!
//! Every replica applies the same committed entries in the same order, so
//! every replica assigns the same offsets: the offset of a batch is decided
//! when its entry is applied, from the entries before it. The high watermark
//! is therefore simply the next offset: nothing uncommitted is ever applied.
//! The partition leader epoch stamped into a batch is the term of its entry.
//!
//! The machine keeps an index of its batches, not their bytes: the bytes
//! are the group's log entries, which the node keeps on disk below its
//! snapshots for as long as the index names them (docs/storage.md, "Kafka
//! partitions on this log"). A batch is served by reading its entry back
//! and stamping it again (`stamped_batch`): stamping is a pure function of
//! the entry and the index fields, so every read gives the bytes the
//! leader first served. A snapshot carries the index and the producer
//! state only. The index is bounded: a partition holds at most
//! `PARTITION_BATCHES_MAX` batches (a produce past it is refused with
//! KAFKA_STORAGE_ERROR, which clients retry, until retention drops some).

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

/// What one indexed batch costs in a snapshot: offsets, timestamps,
/// epoch, raft index, length, and the length of carried bytes (see
/// `PartitionLog::encode`).
pub const STORED_BATCH_SNAPSHOT_BYTES: u64 = 8 + 8 + 8 + 8 + 4 + 8 + 4 + 4;
/// What one producer costs in a snapshot, at most.
pub const PRODUCER_SNAPSHOT_BYTES_MAX: u64 =
    8 + 2 + 8 + 8 + 16 * PRODUCER_BATCHES_REMEMBERED_MAX as u64;
/// The most batches a partition indexes. The index is in memory and in
/// every snapshot (about 100 bytes a batch in memory, 52 in a snapshot),
/// so this bounds both; at 16 KiB a batch it is 16 GiB of records.
pub const PARTITION_BATCHES_MAX: usize = 1 << 20;
/// The most bytes of batches carried in a snapshot: only batches that came
/// from a snapshot of version 1 or 2, which held every batch's bytes and
/// held at most this much, keep their bytes (`StoredBatch::carried_bytes`).
pub const PARTITION_CARRIED_BYTES_MAX: u64 = 96 << 20;
/// The largest snapshot of a partition.
pub const PARTITION_SNAPSHOT_BYTES_MAX: u64 = 4
    + 8
    + 8
    + 8
    + PARTITION_BATCHES_MAX as u64 * STORED_BATCH_SNAPSHOT_BYTES
    + PARTITION_CARRIED_BYTES_MAX
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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionLog {
    batches: VecDeque<StoredBatch>,
    log_start_offset: i64,
    next_offset: i64,
    retained_bytes: u64,
    producers: BTreeMap<i64, ProducerState>,
}

const COMMAND_PRODUCE: u8 = 1;
const COMMAND_RETAIN: u8 = 2;
/// Version 3 holds the index without the batches' bytes; version 2 added
/// each batch's raft index. Versions 1 and 2 still decode, their bytes
/// carried.
const SNAPSHOT_VERSION: u32 = 3;

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
        let (&tag, rest) = data.split_first()?;
        let i64_at = |at: usize| -> Option<i64> {
            Some(i64::from_le_bytes(rest.get(at..at + 8)?.try_into().ok()?))
        };
        match tag {
            COMMAND_PRODUCE => Some(PartitionCommand::Produce(ProduceCommand {
                append_time_ms: i64_at(0)?,
                log_append_time: *rest.get(8)? != 0,
                batch: rest.get(9..)?.to_vec(),
            })),
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
    let Some(PartitionCommand::Produce(produce)) = PartitionCommand::decode(data) else {
        panic!("the entry at {index} of an indexed batch is not a produce");
    };
    let log_append_time_ms = produce.log_append_time.then_some(produce.append_time_ms);
    let mut bytes = produce.batch;
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

    /// Whether the index is full (`PARTITION_BATCHES_MAX`): a produce is
    /// refused until retention drops a batch.
    pub fn is_full(&self) -> bool {
        self.batches.len() >= PARTITION_BATCHES_MAX
    }

    pub fn batches(&self) -> impl Iterator<Item = &StoredBatch> {
        self.batches.iter()
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
        let mut bytes = produce.batch;
        batch::stamp(&mut bytes, base_offset, leader_epoch, log_append_time_ms);
        let max_timestamp_ms = log_append_time_ms.unwrap_or(header.max_timestamp_ms);
        if header.is_idempotent() {
            self.remember_producer(&header, base_offset);
        }
        let length_bytes = u32::try_from(bytes.len()).expect("a validated batch fits in u32");
        self.retained_bytes += u64::from(length_bytes);
        self.batches.push_back(StoredBatch {
            base_offset,
            last_offset,
            max_timestamp_ms,
            append_time_ms: produce.append_time_ms,
            leader_epoch,
            raft_index: index,
            length_bytes,
            carried_bytes: None,
        });
        self.next_offset = last_offset + 1;
        ProduceOutcome::Appended {
            base_offset,
            log_append_time_ms: log_append_time_ms.unwrap_or(-1),
            log_start_offset: self.log_start_offset,
        }
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

    /// Drops whole batches from the front while retention no longer keeps
    /// them: older than `retention_ms` (by the time they were appended), or
    /// beyond `retention_bytes`. The last batch is always kept so that the
    /// log start never passes the high watermark unobserved.
    fn retain(&mut self, now_ms: i64, retention: Retention) {
        while self.batches.len() > 1 {
            let front = self.batches.front().expect("not empty");
            let too_old = retention.retention_ms >= 0
                && front.append_time_ms.saturating_add(retention.retention_ms) < now_ms;
            let too_big = retention.retention_bytes >= 0
                && self.retained_bytes > retention.retention_bytes as u64;
            if !too_old && !too_big {
                break;
            }
            let dropped = self.batches.pop_front().expect("not empty");
            self.retained_bytes -= u64::from(dropped.length_bytes);
            self.log_start_offset = dropped.last_offset + 1;
        }
    }

    /// The lowest consensus log index whose entry this partition still
    /// holds a batch of: retention dropped every batch of the entries
    /// before it, so the node need not keep those entries on disk for a
    /// lagging follower (docs/protocol.md §8.1). None when the partition
    /// holds no batch (nothing before the applied index is needed); 0 when
    /// the oldest batch came from a snapshot that did not record it.
    pub fn lowest_raft_index_needed(&self) -> Option<u64> {
        self.batches.front().map(|batch| batch.raft_index)
    }

    /// Whether retention would drop anything now.
    pub fn retention_due(&self, now_ms: i64, retention: Retention) -> bool {
        let Some(front) = self.batches.front() else {
            return false;
        };
        if self.batches.len() < 2 {
            return false;
        }
        (retention.retention_ms >= 0
            && front.append_time_ms.saturating_add(retention.retention_ms) < now_ms)
            || (retention.retention_bytes >= 0
                && self.retained_bytes > retention.retention_bytes as u64)
    }

    /// Batches from the one holding `offset`, up to `max_bytes` (at least one
    /// batch, as Kafka does, so that a large batch is never stuck).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Vec<&StoredBatch> {
        let start = self
            .batches
            .partition_point(|batch| batch.last_offset < offset);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for batch in self.batches.range(start..) {
            let length = batch.length_bytes as usize;
            if !out.is_empty() && bytes + length > max_bytes {
                break;
            }
            bytes += length;
            out.push(batch);
        }
        out
    }

    /// The first batch whose max timestamp is at or after `timestamp_ms`.
    pub fn batch_at_time(&self, timestamp_ms: i64) -> Option<&StoredBatch> {
        self.batches
            .iter()
            .find(|batch| batch.max_timestamp_ms >= timestamp_ms)
    }

    /// The largest leader epoch at or below `epoch` and the offset where the
    /// next epoch starts (the high watermark if none), for
    /// OffsetForLeaderEpoch.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        let mut found = -1;
        for batch in &self.batches {
            if batch.leader_epoch > epoch {
                let end_offset = if found < 0 { -1 } else { batch.base_offset };
                return (found, end_offset);
            }
            found = batch.leader_epoch;
        }
        (found, self.next_offset)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.log_start_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&(self.batches.len() as u64).to_le_bytes());
        for batch in &self.batches {
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
        let count = reader.u64();
        let mut batches = VecDeque::new();
        let mut retained_bytes = 0;
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
            retained_bytes += u64::from(length_bytes);
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
        PartitionLog {
            batches,
            log_start_offset,
            next_offset,
            retained_bytes,
            producers,
        }
    }
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
        let read = log.read(4, 1);
        assert_eq!(read.len(), 1, "at least one batch even over max_bytes");
        assert_eq!(read[0].base_offset, 3);
        assert_eq!(read[0].carried_bytes, None, "no bytes in memory");
        let bytes = stamped_batch(
            read[0],
            read[0].raft_index,
            3,
            &entries[&read[0].raft_index],
        );
        assert_eq!(bytes.len(), read[0].length_bytes as usize);
        let header = batch::validate(&bytes).expect("stamped batch stays valid");
        assert_eq!(header.base_offset, 3);
        assert_eq!(header.partition_leader_epoch, 3);
        assert_eq!(
            log.retained_bytes(),
            log.batches().map(|b| u64::from(b.length_bytes)).sum()
        );
    }

    #[test]
    #[should_panic(expected = "leader epoch")]
    fn a_batch_is_never_stamped_from_an_entry_of_another_term() {
        let mut log = PartitionLog::default();
        let (index, data) = entry_data(&log, 1);
        log.apply(PartitionCommand::decode(&data).expect("decodes"), index, 3);
        let batch = log.batches().next().expect("one batch").clone();
        stamped_batch(&batch, index, 4, &data);
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
        let mut log = PartitionLog::default();
        let (_, data) = entry_data(&log, 1);
        let PartitionCommand::Produce(command) = PartitionCommand::decode(&data).expect("decodes")
        else {
            unreachable!()
        };
        for index in 1..=PARTITION_BATCHES_MAX as u64 {
            let outcome = log.apply(PartitionCommand::Produce(command.clone()), index, 3);
            assert!(
                matches!(outcome, ProduceOutcome::Appended { .. }),
                "{outcome:?}"
            );
        }
        assert!(log.is_full());
        let refused = ProduceOutcome::Refused {
            error_code: error_code::KAFKA_STORAGE_ERROR,
        };
        let index = PARTITION_BATCHES_MAX as u64 + 1;
        assert_eq!(
            log.apply(PartitionCommand::Produce(command.clone()), index, 3),
            refused
        );
        let header = batch::validate(&command.batch).expect("valid");
        assert_eq!(log.precheck(&header), Some(refused), "the precheck agrees");
        // Retention makes room, and produces go on at the next offset:
        // nothing refused took an offset.
        let high_watermark = log.high_watermark();
        let one = u64::from(log.batches().next().expect("batches").length_bytes);
        log.apply(
            PartitionCommand::Retain {
                now_ms: 5_000,
                retention: Retention {
                    retention_ms: -1,
                    retention_bytes: (log.retained_bytes() - one) as i64,
                },
            },
            index,
            3,
        );
        assert!(!log.is_full());
        assert!(matches!(
            log.apply(PartitionCommand::Produce(command), index + 1, 3),
            ProduceOutcome::Appended { base_offset, .. } if base_offset == high_watermark
        ));
        assert!(log.encode().len() as u64 <= PARTITION_SNAPSHOT_BYTES_MAX);
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
        let batch = log.batches().next().expect("one").clone();
        let bytes = stamped_batch(&batch, index, 3, &data);
        let old = PartitionLog::decode(&version_2_snapshot(&batch, &bytes));
        let carried = old.batches().next().expect("one");
        assert_eq!(carried.carried_bytes.as_deref(), Some(bytes.as_slice()));
        assert_eq!(carried.length_bytes as usize, bytes.len());
        assert_eq!(old.high_watermark(), 2);
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
}
