//! Moving a partition's replicas (docs/protocol.md §12.4).
//!
//! AlterPartitionReassignments writes the wanted replicas into the metadata
//! group. The partition's leader then walks its group's membership there in
//! single-server steps that consensus checks (§7): it adds a missing node as
//! a learner, promotes it once caught up, and removes one surplus member at
//! a time, handing leadership to a wanted voter first when it is itself
//! surplus. A node that joins starts the group from the partition's initial
//! membership, as every replica's log does; a node that leaves keeps its
//! replica until its own copy of the group's membership no longer lists it,
//! and only then deletes the files: the change that removed it has
//! committed, so its data is no longer needed.

use std::collections::BTreeSet;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, RequestHeader,
};
use kafka_protocol::protocol::StrBytes;
use runnel_consensus::Config;
use runnel_core::metadata::{MetadataCommand, METADATA_GROUP};
use runnel_core::{ClientOp, ClientRequest, Env, Event, Role};
use runnel_io::{GroupId, NodeId};

use super::{Broker, Collector, Pending, PendingKind, IN_SYNC_LAG_MS, REQUEST_TIMEOUT_MS_MAX};
use crate::{error_code, BrokerEnv, ConnectionId};

/// How often a leader takes the next step of its partitions' moves.
pub const REASSIGN_STEP_INTERVAL_MS: u64 = 500;

/// One step of a move, proposed by the partition's leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A membership one node away from the current one.
    Change(Config),
    /// Hand leadership to this voter first: the leader itself must go.
    Transfer(NodeId),
}

/// The next single-server step from `config` toward the voters `target`
/// on the group's leader `leader`; `None` when there or when it must wait
/// (no wanted voter keeps up to take over leadership).
pub fn next_step(
    config: &Config,
    target: &[NodeId],
    leader: NodeId,
    in_sync: &[NodeId],
) -> Option<Step> {
    let wanted: BTreeSet<NodeId> = target.iter().copied().collect();
    let mut next = config.clone();
    if let Some(&learner) = config.learners.iter().find(|n| !wanted.contains(n)) {
        next.learners.remove(&learner);
        return Some(Step::Change(next));
    }
    if let Some(&missing) = target.iter().find(|n| !config.contains(**n)) {
        next.learners.insert(missing);
        return Some(Step::Change(next));
    }
    if !config.learners.is_empty() {
        // Wanted learners: promote one that keeps up (consensus checks the
        // lag again), else wait for one to catch up.
        let learner = config
            .learners
            .iter()
            .copied()
            .find(|n| in_sync.contains(n))?;
        next.learners.remove(&learner);
        next.voters.insert(learner);
        return Some(Step::Change(next));
    }
    let surplus: Vec<NodeId> = config
        .voters
        .iter()
        .copied()
        .filter(|n| !wanted.contains(n))
        .collect();
    if surplus.is_empty() {
        return None;
    }
    if surplus.contains(&leader) {
        let successor = target
            .iter()
            .copied()
            .find(|n| config.voters.contains(n) && in_sync.contains(n))?;
        return Some(Step::Transfer(successor));
    }
    next.voters.remove(&surplus[0]);
    Some(Step::Change(next))
}

impl Broker {
    pub(super) fn alter_partition_reassignments(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: AlterPartitionReassignmentsRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let id = self.next_id();
        let now_ms = env.clock.now_ms();
        let leader = self.node.leader_ready(METADATA_GROUP);
        let nodes = self.cluster_nodes();
        let mut response = AlterPartitionReassignmentsResponse::default();
        if !leader {
            response.error_code = error_code::NOT_CONTROLLER;
            response.error_message = Some(StrBytes::from_static_str(
                "this node does not lead the metadata group",
            ));
        }
        let mut proposals = Vec::new();
        let mut parts = Vec::new();
        for (topic_index, topic) in request.topics.iter().enumerate() {
            let name = topic.name.0.to_string();
            let mut topic_response =
                ReassignableTopicResponse::default().with_name(topic.name.clone());
            for partition in &topic.partitions {
                let mut result = ReassignablePartitionResponse::default()
                    .with_partition_index(partition.partition_index);
                let exists = self
                    .metadata()
                    .and_then(|metadata| metadata.topic(&name))
                    .is_some_and(|t| {
                        usize::try_from(partition.partition_index)
                            .is_ok_and(|index| index < t.partitions.len())
                    });
                let error = if !leader {
                    Some((
                        error_code::NOT_CONTROLLER,
                        "this node does not lead the metadata group".to_string(),
                    ))
                } else if !exists {
                    Some((
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("{name}-{} does not exist", partition.partition_index),
                    ))
                } else if partition.replicas.is_none() {
                    Some((
                        error_code::INVALID_REQUEST,
                        "cancelling a reassignment is not supported: reassign to the replicas wanted".to_string(),
                    ))
                } else {
                    None
                };
                match error {
                    Some((code, message)) => {
                        result.error_code = code;
                        result.error_message = Some(StrBytes::from_string(message));
                    }
                    None => {
                        let replicas: Vec<NodeId> = partition
                            .replicas
                            .iter()
                            .flatten()
                            .map(|broker| u64::try_from(broker.0).unwrap_or(0))
                            .collect();
                        let command = MetadataCommand::ReassignPartition {
                            name: name.clone(),
                            partition: partition.partition_index as u32,
                            replicas,
                            nodes: nodes.clone(),
                        };
                        // Stays unless the proposal is answered in time.
                        result.error_code = error_code::REQUEST_TIMED_OUT;
                        parts.push((topic_index, topic_response.partitions.len()));
                        proposals.push(command.encode());
                    }
                }
                topic_response.partitions.push(result);
            }
            response.responses.push(topic_response);
        }
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::AlterPartitionReassignments,
                version,
                deadline_ms: now_ms
                    + (request.timeout_ms.max(1) as u64).min(REQUEST_TIMEOUT_MS_MAX),
                outstanding: proposals.len(),
                kind: PendingKind::AlterReassignments { response, parts },
            },
        );
        for (part, data) in proposals.into_iter().enumerate() {
            self.propose(METADATA_GROUP, data, id, part, env, collector);
        }
        self.finish_if_done(id);
    }

    /// The moves this node can see: partitions whose group it hosts and
    /// whose membership differs from the wanted replicas (Kafka asks the
    /// controller; here every node answers for the groups it hosts).
    pub(super) fn list_partition_reassignments(
        &self,
        request: ListPartitionReassignmentsRequest,
    ) -> ListPartitionReassignmentsResponse {
        let mut response = ListPartitionReassignmentsResponse::default();
        let Some(metadata) = self.metadata() else {
            return response;
        };
        let asked: Option<Vec<(String, Vec<i32>)>> = request.topics.map(|topics| {
            topics
                .into_iter()
                .map(|topic| (topic.name.0.to_string(), topic.partition_indexes))
                .collect()
        });
        for topic in metadata.topics().values() {
            let mut ongoing = OngoingTopicReassignment::default().with_name(
                kafka_protocol::messages::TopicName(StrBytes::from_string(topic.name.clone())),
            );
            for (index, placement) in topic.partitions.iter().enumerate() {
                let index = index as i32;
                if let Some(asked) = &asked {
                    let wanted = asked.iter().any(|(name, partitions)| {
                        *name == topic.name && partitions.contains(&index)
                    });
                    if !wanted {
                        continue;
                    }
                }
                let Some(view) = self.node.summary(placement.group) else {
                    continue;
                };
                let current: BTreeSet<NodeId> = view.config.members().collect();
                let target: BTreeSet<NodeId> = placement.replicas.iter().copied().collect();
                if current == target && view.config.learners.is_empty() {
                    continue;
                }
                let ids = |nodes: &mut dyn Iterator<Item = NodeId>| -> Vec<BrokerId> {
                    nodes.map(|node| BrokerId(node as i32)).collect()
                };
                ongoing.partitions.push(
                    OngoingPartitionReassignment::default()
                        .with_partition_index(index)
                        .with_replicas(ids(&mut current.union(&target).copied()))
                        .with_adding_replicas(ids(&mut target.difference(&current).copied()))
                        .with_removing_replicas(ids(&mut current.difference(&target).copied())),
                );
            }
            if !ongoing.partitions.is_empty() {
                response.topics.push(ongoing);
            }
        }
        response
    }

    /// Every `REASSIGN_STEP_INTERVAL_MS`: takes the next step of each move
    /// this node leads, and lets go of groups it has left.
    pub(super) fn drive_reassignments(
        &mut self,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        if now_ms < self.last_reassign_step_ms + REASSIGN_STEP_INTERVAL_MS {
            return;
        }
        self.last_reassign_step_ms = now_ms;
        if self
            .node
            .summary(METADATA_GROUP)
            .is_some_and(|view| view.left_group)
        {
            self.start_waiting_replicas_from_the_metadata_log(env, collector);
        }
        let me = self.config.node_id;
        let Some(metadata) = self.metadata() else {
            return;
        };
        // Removed from the cluster: a member told this node's metadata
        // replica so (§7.4).
        let out_of_cluster = self
            .node
            .summary(METADATA_GROUP)
            .is_some_and(|view| view.left_group);
        let mut steps = Vec::new();
        if out_of_cluster {
            // Its metadata no longer follows (it may even have forgotten
            // the partitions after a restart), so it cannot drive moves:
            // each partition it leads goes to a voter that keeps up, whose
            // metadata does (§12.5).
            for group in self.node.group_ids() {
                if group == METADATA_GROUP || !self.node.leader_ready(group) {
                    continue;
                }
                let Some(view) = self.node.summary(group) else {
                    continue;
                };
                let in_sync = self.node.replicas_in_sync(group, IN_SYNC_LAG_MS);
                if let Some(&to) = in_sync.iter().find(|node| {
                    **node != me
                        && view.config.voters.contains(node)
                        && self.node.may_take_over(group, **node)
                }) {
                    steps.push((group, Step::Transfer(to)));
                }
            }
        }
        let mut leaving = Vec::new();
        let mut waking = Vec::new();
        let mut rejoining = Vec::new();
        let mut asking = Vec::new();
        // A replica this node runs that its metadata does not list (its
        // metadata no longer follows, or has not caught up) goes once a
        // committed membership without this node says so, as below.
        let listed: BTreeSet<GroupId> = metadata
            .partition_groups()
            .map(|(_, placement)| placement.group)
            .collect();
        for group in self.node.group_ids() {
            let unlisted = group != METADATA_GROUP && !listed.contains(&group);
            if unlisted
                && self
                    .node
                    .summary(group)
                    .is_some_and(|view| view.left_group && view.role != Role::Leader)
            {
                leaving.push(group);
            }
        }
        for (_, placement) in metadata.partition_groups() {
            let group = placement.group;
            let view = self.node.summary(group);
            // The leader drives the move, also when it is itself to go.
            if let Some(view) = view.as_ref().filter(|view| view.role == Role::Leader) {
                if self.node.leader_ready(group) {
                    let mut in_sync = self.node.replicas_in_sync(group, IN_SYNC_LAG_MS);
                    // §9: a voter that let a transfer lapse lately (it lacks
                    // the log, §8.3) is not chosen to take over.
                    in_sync.retain(|node| self.node.may_take_over(group, *node));
                    if out_of_cluster {
                        // Handed over below, whatever the metadata says.
                    } else if let Some(step) =
                        next_step(&view.config, &placement.replicas, me, &in_sync)
                    {
                        steps.push((group, step));
                    }
                }
                continue;
            }
            // A committed membership without this node is enough, whatever
            // this node's metadata says: it may be a node removed from the
            // cluster, whose metadata no longer follows.
            if view.as_ref().is_some_and(|view| view.left_group) {
                leaving.push(group);
                continue;
            }
            if placement.replicas.contains(&me) {
                // Wanted here but not hosted: it was deleted after a
                // committed removal, and a later move wants it back. It
                // joins again, empty (the tombstone says why, §12.4).
                if !self.node.hosts(group) {
                    rejoining.push(group);
                }
                continue;
            }
            if !self.node.hosts(group) {
                continue;
            }
            match view {
                // Only a committed change may take a replica's data: a
                // config that merely lacks this node may be uncommitted, or
                // empty (a replica that knows no membership yet). Off the
                // wanted replicas, a committed config without this node is
                // such a change (a replica joining holds a config without
                // itself too, but it is wanted).
                Some(view)
                    if view.left_group
                        || (!view.config.voters.is_empty()
                            && !view.config.contains(me)
                            && view.config_index <= view.commit_index) =>
                {
                    leaving.push(group)
                }
                // An empty replica that never learned its membership (it
                // joined, then the move changed before it got anything)
                // holds nothing and never voted.
                Some(view)
                    if view.config.voters.is_empty()
                        && view.last_index == 0
                        && view.snapshot_index == 0 =>
                {
                    leaving.push(group)
                }
                // Still listed in its own config: it may be a voter the
                // group needs, or a replica left behind whose config lists
                // only nodes that no longer hold the group. The wanted
                // replicas know which (§7.4).
                Some(_) => asking.push((group, placement.replicas.clone())),
                // Waiting for its membership after a restart: start it, so
                // that it learns from its log or from the other members.
                None => waking.push((group, self.initial_config(group))),
            }
        }
        let mut core_env = Env {
            disk: &mut *env.disk,
            network: &mut *env.network,
            clock: env.clock,
            replies: collector,
        };
        for group in leaving {
            tracing::info!(
                group,
                "this node left the partition's group: deleting its replica"
            );
            self.node.remove_group(group, &mut core_env);
        }
        for (group, nodes) in asking {
            self.node.ask_whether_removed(group, &nodes, &mut core_env);
        }
        for group in rejoining {
            let initial = self.initial_config(group);
            self.node.join_group(group, initial, &mut core_env);
        }
        for (group, initial) in waking {
            self.node.join_group(group, initial, &mut core_env);
        }
        for (group, step) in steps {
            tracing::debug!(group, ?step, "moving a partition's replicas");
            let op = match step {
                Step::Change(config) => ClientOp::ChangeConfig { config },
                Step::Transfer(to) => ClientOp::TransferLeader { to },
            };
            self.node.handle(
                Event::Client(ClientRequest {
                    client: 0,
                    request_id: 0,
                    group,
                    op,
                }),
                &mut core_env,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(voters: &[NodeId], learners: &[NodeId]) -> Config {
        Config {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
        }
    }

    /// Applies steps from `start` to `target` as consensus would accept
    /// them (every learner caught up), with leadership on `leader`.
    fn walk(start: Config, target: &[NodeId], mut leader: NodeId) -> Vec<Step> {
        let mut current = start;
        let mut steps = Vec::new();
        let in_sync: Vec<NodeId> = (1..=9).collect();
        while let Some(step) = next_step(&current, target, leader, &in_sync) {
            assert!(steps.len() < 20, "the walk does not end: {steps:?}");
            match &step {
                Step::Change(next) => {
                    let changed = next.members().filter(|n| !current.contains(*n)).count()
                        + current.members().filter(|n| !next.contains(*n)).count()
                        + next.voters.symmetric_difference(&current.voters).count();
                    assert!(
                        (1..=2).contains(&changed),
                        "one node at a time: {current:?} -> {next:?}"
                    );
                    assert!(!next.voters.is_empty());
                    current = next.clone();
                }
                Step::Transfer(to) => {
                    assert!(current.voters.contains(to));
                    leader = *to;
                }
            }
            steps.push(step);
        }
        assert_eq!(current, config(target, &[]));
        steps
    }

    #[test]
    fn a_move_adds_promotes_then_removes() {
        let steps = walk(config(&[1, 2, 3], &[]), &[2, 3, 4], 2);
        assert_eq!(
            steps,
            [
                Step::Change(config(&[1, 2, 3], &[4])),
                Step::Change(config(&[1, 2, 3, 4], &[])),
                Step::Change(config(&[2, 3, 4], &[])),
            ]
        );
    }

    #[test]
    fn a_leader_that_must_go_hands_over_first() {
        let steps = walk(config(&[1, 2, 3], &[]), &[3, 4, 5], 1);
        assert!(steps.contains(&Step::Transfer(3)), "{steps:?}");
    }

    #[test]
    fn a_leader_waits_when_no_wanted_voter_keeps_up() {
        assert_eq!(next_step(&config(&[1, 2, 3], &[]), &[2, 3], 1, &[1]), None);
    }

    #[test]
    fn an_unwanted_learner_goes_first_and_an_order_change_needs_nothing() {
        assert_eq!(
            next_step(&config(&[1, 2, 3], &[5]), &[1, 2, 4], 1, &[1, 2, 3]),
            Some(Step::Change(config(&[1, 2, 3], &[])))
        );
        assert_eq!(
            next_step(&config(&[1, 2, 3], &[]), &[3, 1, 2], 1, &[1]),
            None
        );
    }
}
