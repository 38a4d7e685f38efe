//! Reading partitions for Fetch: which batches a fetch gets, within its
//! limits, and whether a long-polling fetch has enough to answer yet.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::TopicName;
use runnel_consensus::{Entry, Index};
use runnel_core::metadata::MetadataState;
use runnel_core::partition::{served_bytes, StoredBatch};
use runnel_core::Node;
use runnel_io::GroupId;
use uuid::Uuid;

use crate::error_code;

/// Most bytes one Fetch response carries, whatever the client asks: it
/// bounds the memory of one response.
pub const FETCH_RESPONSE_BYTES_MAX: usize = 64 << 20;

/// KIP-320: the error for a request from a client that knows the leader
/// epoch `current_leader_epoch` (-1 when it names none), sent to a leader of
/// `epoch`, if any. A client that knows an older leader refreshes its
/// metadata (FENCED_LEADER_EPOCH); one that knows a newer leader than this
/// node does (UNKNOWN_LEADER_EPOCH) must not get this node's answer: this
/// node was deposed and has not heard yet, and its log may lack what the
/// client read from the new leader.
pub fn leader_epoch_error(current_leader_epoch: i32, epoch: i32) -> Option<i16> {
    if current_leader_epoch >= 0 && current_leader_epoch < epoch {
        Some(error_code::FENCED_LEADER_EPOCH)
    } else if current_leader_epoch > epoch {
        Some(error_code::UNKNOWN_LEADER_EPOCH)
    } else {
        None
    }
}

/// The most rounds of log reads one fetch waits for: each round reads one
/// chunk per partition (`ClientOp::ReadLog`), so this bounds how long a
/// fetch of many old batches takes before it answers with what it has.
pub const LOAD_ROUNDS_MAX: usize = 8;
/// The most rounds of log reads a ListOffsets by time waits for: a lookup
/// inside a chunk of the index reads its batches, and each round brings
/// at least the next one, so this finds the record in any chunk, however
/// many segments it spans. Lookups by time are rare, and the request's
/// deadline bounds them too.
pub const LIST_OFFSETS_LOAD_ROUNDS_MAX: usize = runnel_core::partition::CHUNK_BATCHES_MAX;

/// §8.3: what a fetch read from disk: batches at or below a partition's
/// snapshot are there, not in memory.
#[derive(Default)]
pub struct Loads {
    /// The entries read, per partition group, in index order.
    pub entries: BTreeMap<GroupId, Vec<Entry>>,
    /// The reads asked for, in the order of their parts.
    pub asked: Vec<(GroupId, Index)>,
    /// Groups a read found nothing for: the node no longer holds the
    /// entries, or found them damaged (and repairs them). Their partitions
    /// answer KAFKA_STORAGE_ERROR, which clients retry.
    pub missing: BTreeSet<GroupId>,
    pub rounds: usize,
    /// The most rounds (`LOAD_ROUNDS_MAX` for a fetch).
    pub rounds_max: usize,
    /// Reads asked and not answered yet.
    pub in_flight: usize,
    /// Bytes of the entries read so far.
    pub loaded_bytes: usize,
    /// Reads in flight are waited for until then, even past the fetch's
    /// own wait: its answer needs them.
    pub deadline_ms: u64,
}

impl Loads {
    /// No reads yet; those asked are waited for until `deadline_ms`.
    pub fn until(deadline_ms: u64) -> Loads {
        Loads {
            deadline_ms,
            rounds_max: LOAD_ROUNDS_MAX,
            ..Loads::default()
        }
    }

    /// No reads yet, for a ListOffsets by time (`LIST_OFFSETS_LOAD_ROUNDS_MAX`).
    pub fn for_list_offsets(deadline_ms: u64) -> Loads {
        Loads {
            rounds_max: LIST_OFFSETS_LOAD_ROUNDS_MAX,
            ..Loads::until(deadline_ms)
        }
    }

    /// The node's answer to read `part` of `asked`.
    pub fn answered(&mut self, part: usize, result: Result<Vec<Entry>, ()>) {
        let (group, _) = self.asked[part];
        self.in_flight -= 1;
        match result {
            Ok(entries) if entries.is_empty() => {
                self.missing.insert(group);
            }
            Ok(entries) => {
                self.loaded_bytes += entries.iter().map(Entry::size_bytes).sum::<usize>();
                let held = self.entries.entry(group).or_default();
                held.extend(entries);
                held.sort_by_key(|entry| entry.index);
                held.dedup_by_key(|entry| entry.index);
            }
            // Refused while the node has too many reads in flight: the
            // fetch answers with what it has, and the client asks again.
            Err(()) => {}
        }
    }

    /// The reads of `wanted` not asked yet, as many as a fetch answering
    /// at most `max_bytes` can use: each brings up to
    /// `runnel_core::LOG_READ_BYTES_MAX`, and what was read so far
    /// counts, so the entries one fetch holds stay near its answer's size.
    pub fn new_reads(
        &self,
        wanted: &BTreeSet<(GroupId, Index)>,
        max_bytes: usize,
    ) -> Vec<(GroupId, Index)> {
        if self.rounds >= self.rounds_max || self.loaded_bytes >= max_bytes {
            return Vec::new();
        }
        let room = (max_bytes - self.loaded_bytes)
            .div_ceil(runnel_core::LOG_READ_BYTES_MAX as usize)
            .max(1);
        wanted
            .iter()
            .filter(|read| !self.asked.contains(read))
            .take(room)
            .copied()
            .collect()
    }

    /// Whether reads are in flight that the fetch should still wait for
    /// at `now_ms`.
    pub fn waiting(&self, now_ms: u64) -> bool {
        self.in_flight > 0 && now_ms < self.deadline_ms
    }

    fn entry(&self, group: GroupId, index: Index) -> Option<&Entry> {
        let entries = self.entries.get(&group)?;
        let position = entries
            .binary_search_by_key(&index, |entry| entry.index)
            .ok()?;
        Some(&entries[position])
    }
}

/// §8.3: the entry at `index` of partition `group` if it is at hand: in
/// the replica's memory (after its snapshot), or among the entries `loads`
/// read. `None`: it is on disk.
pub fn entry_at<'a>(
    node: &'a Node,
    group: GroupId,
    index: Index,
    loads: Option<&'a Loads>,
) -> Option<&'a Entry> {
    node.log_entry(group, index)
        .or_else(|| loads?.entry(group, index))
}

/// §8.3: the bytes of `batch` of partition `group` if they are at hand:
/// carried from an old snapshot, or its entry is (`entry_at`). `None`:
/// they are on disk.
pub fn batch_bytes(
    node: &Node,
    group: GroupId,
    batch: &StoredBatch,
    loads: Option<&Loads>,
) -> Option<Vec<u8>> {
    served_bytes(batch, entry_at(node, group, batch.raft_index, loads))
}

/// What a fetch would return now.
pub struct FetchResult {
    pub response: FetchResponse,
    pub bytes: usize,
    /// A partition answered with an error: Kafka answers at once then.
    pub has_error: bool,
    /// Partition groups asked for an offset past their high watermark and
    /// not in `confirmed`: the broker confirms with a read index that this
    /// node still leads them before it says OFFSET_OUT_OF_RANGE (their
    /// partitions carry NOT_LEADER_OR_FOLLOWER meanwhile).
    pub to_confirm: BTreeSet<GroupId>,
    /// §8.3: (group, raft index) of entries on disk that the answer needs
    /// (a batch's, or one a chunk of the index is rebuilt from): the broker
    /// reads the log from there (`ClientOp::ReadLog`) and evaluates again.
    /// The partition's answer stops before the batch that needs it.
    pub to_load: BTreeSet<(GroupId, Index)>,
}

/// The most bytes `request`'s answer carries.
pub fn response_bytes_max(request: &FetchRequest) -> usize {
    usize::try_from(request.max_bytes.max(0))
        .unwrap_or(0)
        .min(FETCH_RESPONSE_BYTES_MAX)
}

/// Builds the response to `request` from the node's partitions as they are
/// now. Only the leader of a partition serves it, and only committed
/// batches exist in a partition's machine, so nothing uncommitted is ever
/// returned, whatever the isolation level (the last stable offset is the
/// high watermark: there are no transactions).
///
/// An offset past the high watermark is out of range only at a leader that
/// is still current: a leader deposed without knowing it yet lags the new
/// one, and a consumer told OFFSET_OUT_OF_RANGE resets its position (to the
/// start or the end of the log, skipping or rereading records). So that
/// answer is given only for groups whose read index passed (`confirmed`
/// maps a group to whether it did, docs/protocol.md §6.3); others are
/// listed in `FetchResult::to_confirm`, or answered NOT_LEADER_OR_FOLLOWER
/// when their read index failed.
///
/// Batches are read from the replica's log (docs/protocol.md §8.3): those
/// after its snapshot from memory, the others from disk, through `loads`.
pub fn evaluate(
    request: &FetchRequest,
    version: i16,
    metadata: Option<&MetadataState>,
    node: &Node,
    confirmed: &BTreeMap<GroupId, bool>,
    loads: &Loads,
) -> FetchResult {
    let mut to_confirm = BTreeSet::new();
    let mut to_load = BTreeSet::new();
    let max_bytes = response_bytes_max(request);
    let mut bytes = 0usize;
    let mut has_error = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let found = metadata.and_then(|metadata| {
            if version >= 13 {
                metadata.topic_by_id(topic.topic_id.as_bytes())
            } else {
                metadata.topic(topic.topic.0.as_str())
            }
        });
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let mut data = PartitionData::default()
                .with_partition_index(partition.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_aborted_transactions(Some(Vec::new()));
            let placement = found.and_then(|topic| {
                usize::try_from(partition.partition)
                    .ok()
                    .and_then(|index| topic.partitions.get(index))
            });
            let error = match (found, placement) {
                (None, _) if version >= 13 => Some(error_code::UNKNOWN_TOPIC_ID),
                (None, _) | (_, None) => Some(error_code::UNKNOWN_TOPIC_OR_PARTITION),
                (Some(_), Some(placement)) => {
                    let log = node
                        .machine(placement.group)
                        .and_then(|machine| machine.partition());
                    match log {
                        Some(log) if node.leader_ready(placement.group) => {
                            data.high_watermark = log.high_watermark();
                            data.last_stable_offset = log.high_watermark();
                            data.log_start_offset = log.log_start_offset();
                            let epoch = node
                                .summary(placement.group)
                                .map_or(-1, |view| view.term as i32);
                            if let Some(code) =
                                leader_epoch_error(partition.current_leader_epoch, epoch)
                            {
                                Some(code)
                            } else if partition.fetch_offset < log.log_start_offset() {
                                Some(error_code::OFFSET_OUT_OF_RANGE)
                            } else if partition.fetch_offset > log.high_watermark() {
                                match confirmed.get(&placement.group) {
                                    Some(true) => Some(error_code::OFFSET_OUT_OF_RANGE),
                                    Some(false) => Some(error_code::NOT_LEADER_OR_FOLLOWER),
                                    None => {
                                        to_confirm.insert(placement.group);
                                        Some(error_code::NOT_LEADER_OR_FOLLOWER)
                                    }
                                }
                            } else {
                                let partition_max =
                                    usize::try_from(partition.partition_max_bytes.max(0))
                                        .unwrap_or(0);
                                // KIP-74: the first batch of the response is
                                // returned even when it is over the limits,
                                // so that a large batch never blocks a
                                // consumer.
                                let room = if bytes == 0 {
                                    partition_max.min(max_bytes).max(1)
                                } else {
                                    partition_max.min(max_bytes.saturating_sub(bytes))
                                };
                                let entry_at =
                                    |index| entry_at(node, placement.group, index, Some(loads));
                                let read = if room == 0 {
                                    runnel_core::partition::LogRead::default()
                                } else {
                                    log.read(partition.fetch_offset, room, entry_at)
                                };
                                let mut records = BytesMut::new();
                                let mut stopped = false;
                                for batch in &read.batches {
                                    let length = batch.length_bytes as usize;
                                    if bytes + records.len() > 0
                                        && length > max_bytes.saturating_sub(bytes + records.len())
                                    {
                                        stopped = true;
                                        break;
                                    }
                                    let stamped = served_bytes(batch, entry_at(batch.raft_index))
                                        .expect("a batch read has its bytes at hand");
                                    records.extend_from_slice(&stamped);
                                }
                                if let (false, Some(load_from)) = (stopped, read.load_from) {
                                    to_load.insert((placement.group, load_from));
                                }
                                bytes += records.len();
                                // A read found nothing where this batch was:
                                // the node no longer holds it or found it
                                // damaged, and never serves damage.
                                if records.is_empty() && loads.missing.contains(&placement.group) {
                                    Some(error_code::KAFKA_STORAGE_ERROR)
                                } else {
                                    data.records = Some(records.freeze());
                                    None
                                }
                            }
                        }
                        _ => Some(error_code::NOT_LEADER_OR_FOLLOWER),
                    }
                }
            };
            if let Some(code) = error {
                has_error = true;
                data.error_code = code;
                data.records = Some(Bytes::new());
            }
            partitions.push(data);
        }
        let mut response_topic = FetchableTopicResponse::default().with_partitions(partitions);
        if version >= 13 {
            response_topic.topic_id = topic.topic_id;
        } else {
            response_topic.topic = topic.topic.clone();
        }
        if version >= 13 && found.is_none() {
            response_topic.topic = TopicName::default();
            response_topic.topic_id = if topic.topic_id.is_nil() {
                Uuid::nil()
            } else {
                topic.topic_id
            };
        }
        topics.push(response_topic);
    }
    FetchResult {
        response: FetchResponse::default()
            .with_session_id(0)
            .with_responses(topics),
        bytes,
        has_error,
        to_confirm,
        to_load,
    }
}
