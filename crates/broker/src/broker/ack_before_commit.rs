//! FAILPOINT, compiled only with the cargo feature `ack-before-commit`, which
//! no default build enables: a deliberately broken broker for jepsen/ to
//! catch (issue 8).
//!
//! It acknowledges an `acks=all` produce as soon as the leader has proposed
//! the batch, before a majority has it on disk and before it commits. The
//! offsets it answers are the ones the batch gets if everything proposed so
//! far commits in order, so without faults nothing looks wrong; a leader
//! killed or cut off before replicating loses acknowledged writes, which the
//! jepsen queue checker must report as `lost-write`.

use std::collections::BTreeMap;

use kafka_protocol::messages::ProduceRequest;
use runnel_io::GroupId;

use super::{Broker, PendingKind};

/// The offset the next early-acknowledged batch of each partition group gets.
pub(super) type EarlyAckOffsets = BTreeMap<GroupId, i64>;

impl Broker {
    /// Answers the produce request `id` now, with predicted offsets, instead
    /// of when its proposals commit. Their replies are dropped when they come
    /// (the pending request is gone by then).
    pub(super) fn ack_before_commit(&mut self, id: u64, request: &ProduceRequest) {
        if request.acks != -1 {
            return;
        }
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        let PendingKind::Produce { parts, .. } = &pending.kind else {
            return;
        };
        let mut predicted: Vec<(usize, usize, i64)> = Vec::new();
        for &(topic_index, partition_index) in parts {
            let topic = &request.topic_data[topic_index];
            let partition = &topic.partition_data[partition_index];
            let placement = self
                .metadata()
                .and_then(|metadata| metadata.topic(topic.name.0.as_str()))
                .and_then(|found| {
                    usize::try_from(partition.index)
                        .ok()
                        .and_then(|index| found.partitions.get(index))
                })
                .map(|placement| placement.group);
            let Some(group) = placement else { return };
            let Some(records) = partition.records.as_ref() else {
                return;
            };
            let Ok(header) = runnel_kafka::batch::validate(records) else {
                return;
            };
            let high_watermark = self
                .node
                .machine(group)
                .and_then(|machine| machine.partition())
                .map_or(0, |log| log.high_watermark());
            let next = self.early_ack_offsets.entry(group).or_insert(0);
            let base_offset = (*next).max(high_watermark);
            *next = base_offset + i64::from(header.record_count.max(0));
            predicted.push((topic_index, partition_index, base_offset));
        }
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        let PendingKind::Produce { response, .. } = &mut pending.kind else {
            return;
        };
        for (topic_index, partition_index, base_offset) in predicted {
            let answer = &mut response.responses[topic_index].partition_responses[partition_index];
            answer.base_offset = base_offset;
        }
        pending.outstanding = 0;
    }
}
