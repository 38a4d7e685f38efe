//! The consumer group APIs on the broker: FindCoordinator, JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
//! DescribeGroups, ListGroups, DeleteGroups and OffsetDelete.
//!
//! A group lives on one partition of the internal offsets topic (Kafka's
//! hash of the group id); the leader of that partition is the group's
//! coordinator. When this node becomes a ready leader of an offsets
//! partition it loads a [`Coordinator`] from the partition's machine; when
//! it stops leading, the coordinator goes and its waiting requests get
//! NOT_COORDINATOR. Offset commits, group records and deletions are
//! proposals to the partition's group, answered once applied, like Produce.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::find_coordinator_response::{
    Coordinator as KafkaCoordinator, FindCoordinatorResponse,
};
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{
    ApiKey, BrokerId, DeleteGroupsRequest, DescribeGroupsRequest, FindCoordinatorRequest,
    GroupId as KafkaGroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    ListGroupsRequest, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, RequestHeader,
    ResponseKind, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use runnel_core::metadata::METADATA_GROUP;
use runnel_core::offsets::{
    is_offsets_group, partition_for, CommittedOffset, OffsetsCommand, OffsetsOutcome, OffsetsState,
    StoredGroup, GROUP_ID_BYTES_MAX, OFFSETS_COMMAND_BYTES_MAX, OFFSETS_TOPIC,
    OFFSET_METADATA_BYTES_MAX,
};
use runnel_core::{Applied, ClientError, ClientOp, ClientReply, ClientRequest, Event, Role};
use runnel_io::GroupId;

use super::{
    encode, Broker, Collector, Pending, PendingKind, ReadIndexes, PENDING_REQUESTS_MAX,
    REQUEST_TIMEOUT_MS_MAX,
};
use crate::groups::coordinator::{
    self, Coordinator, GroupState, JoinRequest, JoinResult, Outputs, Reply, SyncRequest,
    SyncResult, GROUP_REBALANCE_TIMEOUT_MS_MAX,
};
use crate::groups::subscribed_topics;
use crate::{error_code, BrokerEnv, ConnectionId};

/// The longest a JoinGroup or SyncGroup waits: the coordinator answers
/// every waiter by the end of its rebalance timeout, so this only guards
/// against a bug leaving a request unanswered forever.
pub const GROUP_WAIT_MS_MAX: u64 = GROUP_REBALANCE_TIMEOUT_MS_MAX + 30_000;
/// How often the metadata leader retries creating the offsets topic.
pub const OFFSETS_TOPIC_RETRY_MS: u64 = 1_000;
/// Most groups one DescribeGroups, DeleteGroups or OffsetFetch may name.
pub const GROUPS_PER_REQUEST_MAX: usize = 1_000;
/// How long an OffsetFetch waits for a quorum to confirm that this node
/// still coordinates the group (docs/protocol.md §6.3) before answering
/// NOT_COORDINATOR, which sends the client to look for the coordinator.
pub const OFFSET_FETCH_CONFIRM_MS_MAX: u64 = 5_000;

/// Kafka error codes of the group APIs beyond the coordinator's.
mod code {
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}

impl Broker {
    // ------------------------------------------------------------ Plumbing

    /// The offsets partition's group that coordinates `group_id` on this
    /// node, or the error a client gets: COORDINATOR_NOT_AVAILABLE before
    /// the offsets topic exists, COORDINATOR_LOAD_IN_PROGRESS while this
    /// node is becoming its leader, NOT_COORDINATOR elsewhere.
    pub(super) fn coordinator_for(&self, group_id: &str) -> Result<GroupId, i16> {
        if group_id.is_empty() || group_id.len() > GROUP_ID_BYTES_MAX {
            return Err(coordinator::error_code::INVALID_GROUP_ID);
        }
        let group = self
            .offsets_partition_group(group_id)
            .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)?;
        if self.coordinators.contains_key(&group) {
            return Ok(group);
        }
        match self.node.summary(group) {
            Some(view) if view.role == Role::Leader => Err(code::COORDINATOR_LOAD_IN_PROGRESS),
            _ => Err(coordinator::error_code::NOT_COORDINATOR),
        }
    }

    /// `coordinator_for`, for a request that will wait for its answer (a
    /// join or a sync): past `PENDING_REQUESTS_MAX` waiting requests it is
    /// refused with COORDINATOR_NOT_AVAILABLE, and the client retries.
    fn coordinator_with_room_for(&self, group_id: &str) -> Result<GroupId, i16> {
        let group = self.coordinator_for(group_id)?;
        if self.pending.len() >= PENDING_REQUESTS_MAX {
            return Err(error_code::COORDINATOR_NOT_AVAILABLE);
        }
        Ok(group)
    }

    /// Whether the offsets partitions this node hosts have leaders it
    /// knows (or there is no offsets topic to wait for). The server lets
    /// clients in once this and the metadata leader are known, so that a
    /// cluster's first requests do not race the elections of its internal
    /// topic.
    pub fn offsets_ready(&self) -> bool {
        if self.config.offsets_topic_partitions == 0 {
            return true;
        }
        let Some(topic) = self.metadata().and_then(|m| m.topic(OFFSETS_TOPIC)) else {
            // A joining node learns the topic once it is added.
            return self.config.join;
        };
        topic
            .partitions
            .iter()
            .filter(|placement| placement.replicas.contains(&self.config.node_id))
            .all(|placement| {
                self.node
                    .summary(placement.group)
                    .is_some_and(|view| view.leader.is_some())
            })
    }

    /// The replication group of the offsets partition that holds
    /// `group_id`, once the offsets topic exists.
    fn offsets_partition_group(&self, group_id: &str) -> Option<GroupId> {
        let topic = self.metadata()?.topic(OFFSETS_TOPIC)?;
        let count = u32::try_from(topic.partitions.len())
            .ok()
            .filter(|n| *n > 0)?;
        let placement = &topic.partitions[partition_for(group_id, count) as usize];
        is_offsets_group(placement.group).then_some(placement.group)
    }

    fn offsets_state(&self, group: GroupId) -> Option<&OffsetsState> {
        self.node
            .machine(group)
            .and_then(|machine| machine.offsets())
    }

    /// The metadata leader creates the offsets topic once, soon after the
    /// cluster starts: `offsets_topic_partitions` partitions replicated on
    /// up to three nodes.
    pub(super) fn ensure_offsets_topic(
        &mut self,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        if self.config.offsets_topic_partitions == 0
            || !self.node.leader_ready(METADATA_GROUP)
            || self
                .metadata()
                .is_none_or(|metadata| metadata.topic(OFFSETS_TOPIC).is_some())
            || (self.last_offsets_topic_attempt_ms != 0
                && now_ms < self.last_offsets_topic_attempt_ms + OFFSETS_TOPIC_RETRY_MS)
        {
            return;
        }
        self.last_offsets_topic_attempt_ms = now_ms.max(1);
        let nodes = self.cluster_nodes();
        let command = runnel_core::metadata::MetadataCommand::CreateOffsetsTopic {
            partitions: self.config.offsets_topic_partitions,
            replication_factor: nodes.len().clamp(1, 3) as u16,
            nodes,
            racks: self.cluster_racks(),
        };
        tracing::info!(
            partitions = self.config.offsets_topic_partitions,
            "creating the offsets topic"
        );
        // Nobody waits: a lost proposal is retried.
        let data = command.encode();
        self.unawaited(METADATA_GROUP, ClientOp::Propose { data }, env, collector);
    }

    /// Loads a coordinator for every offsets partition this node leads and
    /// has caught up on (a new term: rebuilt from the machine), drops those
    /// it no longer leads, and ticks the rest.
    pub(super) fn sync_coordinators(&mut self, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        let now_ms = env.clock.now_ms();
        let mut out = Outputs::default();
        let leading: BTreeMap<GroupId, u64> = self
            .node
            .group_ids()
            .into_iter()
            .filter(|group| is_offsets_group(*group) && self.node.leader_ready(*group))
            .filter(|group| self.offsets_state(*group).is_some())
            .filter_map(|group| Some((group, self.node.summary(group)?.term)))
            .collect();
        let stale: Vec<GroupId> = self
            .coordinators
            .iter()
            .filter(|(group, coordinator)| leading.get(group) != Some(&coordinator.term()))
            .map(|(group, _)| *group)
            .collect();
        for group in stale {
            tracing::info!(group, "no longer the coordinator of an offsets partition");
            let coordinator = self.coordinators.remove(&group).expect("listed");
            coordinator.unload(&mut out);
            // Its records still in flight concern groups a later
            // coordinator rebuilds from what did commit.
            self.group_stores
                .retain(|_, (offsets_group, _, _)| *offsets_group != group);
        }
        self.deliver_replies(std::mem::take(&mut out.replies));
        for (group, term) in leading {
            if self.coordinators.contains_key(&group) {
                continue;
            }
            let state = self.offsets_state(group).expect("filtered above");
            let coordinator = Coordinator::load(term, state, now_ms);
            tracing::info!(
                group,
                term,
                groups = coordinator.groups().len(),
                "coordinating an offsets partition"
            );
            self.coordinators.insert(group, coordinator);
        }
        if now_ms != self.last_group_tick_ms {
            self.last_group_tick_ms = now_ms;
            let groups: Vec<GroupId> = self.coordinators.keys().copied().collect();
            for group in groups {
                let mut out = Outputs::default();
                self.coordinators
                    .get_mut(&group)
                    .expect("listed")
                    .tick(now_ms, &mut out);
                self.group_outputs(group, out, env, collector);
            }
        }
    }

    /// Carries out what a coordinator asked: answers and stores.
    fn group_outputs(
        &mut self,
        group: GroupId,
        out: Outputs,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        self.deliver_replies(out.replies);
        for (group_id, record) in out.stores {
            self.store_group(group, group_id, record, env, collector);
        }
    }

    fn store_group(
        &mut self,
        group: GroupId,
        group_id: String,
        record: StoredGroup,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let generation = record.generation;
        let command = OffsetsCommand::StoreGroup {
            group: group_id.clone(),
            record,
        };
        let data = command.encode();
        if data.len() > OFFSETS_COMMAND_BYTES_MAX {
            // Members' metadata and assignments are bounded one by one;
            // together they may still be too many to store.
            tracing::warn!(group = %group_id, bytes = data.len(), "a group record is too large to store");
            let mut out = Outputs::default();
            if let Some(coordinator) = self.coordinators.get_mut(&group) {
                coordinator.stored(
                    &group_id,
                    generation,
                    Some(coordinator::error_code::INVALID_REQUEST),
                    env.clock.now_ms(),
                    &mut out,
                );
            }
            self.deliver_replies(out.replies);
            return;
        }
        let request_id = self.next_id();
        self.group_stores
            .insert(request_id, (group, group_id, generation));
        self.node_event(
            Event::Client(ClientRequest {
                client: 0,
                request_id,
                group,
                op: ClientOp::Propose { data },
            }),
            env,
            collector,
        );
    }

    /// A stored group record's outcome, if `request_id` was one.
    pub(super) fn group_store_reply(
        &mut self,
        request_id: u64,
        result: &Result<ClientReply, ClientError>,
        now_ms: u64,
    ) -> bool {
        let Some((group, group_id, generation)) = self.group_stores.remove(&request_id) else {
            return false;
        };
        let error = match result {
            Ok(ClientReply::Applied(Applied::Offsets(OffsetsOutcome::Done))) => None,
            Ok(ClientReply::Applied(Applied::Offsets(OffsetsOutcome::Refused {
                error_code,
                message,
            }))) => {
                tracing::warn!(group = %group_id, error_code, %message, "storing a group was refused");
                Some(*error_code)
            }
            _ => Some(coordinator::error_code::NOT_COORDINATOR),
        };
        let mut out = Outputs::default();
        if let Some(coordinator) = self.coordinators.get_mut(&group) {
            coordinator.stored(&group_id, generation, error, now_ms, &mut out);
        }
        // Answering a stored record never asks for another store.
        debug_assert!(out.stores.is_empty());
        self.deliver_replies(out.replies);
        true
    }

    fn deliver_replies(&mut self, replies: Vec<(u64, Reply)>) {
        for (waiter, reply) in replies {
            let Some(pending) = self.pending.remove(&waiter) else {
                continue;
            };
            let body = match reply {
                Reply::Join(result) => {
                    ResponseKind::JoinGroup(join_response(result, pending.version))
                }
                Reply::Sync(result) => ResponseKind::SyncGroup(sync_response(result)),
            };
            let output = encode(&pending.header, pending.api_key, pending.version, &body);
            self.fill(pending.connection, waiter, output);
        }
    }

    /// A request that waits for the coordinator: a slot in its
    /// connection's order and a pending entry the coordinator answers.
    fn wait_for_group(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        api_key: ApiKey,
        version: i16,
        fallback: ResponseKind,
        now_ms: u64,
    ) -> u64 {
        self.park(Pending {
            connection,
            header,
            api_key,
            version,
            deadline_ms: now_ms + GROUP_WAIT_MS_MAX,
            outstanding: 0,
            kind: PendingKind::Group { fallback },
        })
    }

    fn answer_group_now(
        &mut self,
        connection: ConnectionId,
        header: &RequestHeader,
        api_key: ApiKey,
        version: i16,
        body: ResponseKind,
    ) {
        let output = encode(header, api_key, version, &body);
        self.answer_now(connection, output);
    }

    // ----------------------------------------------------- FindCoordinator

    pub(super) fn find_coordinator(
        &self,
        request: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let keys: Vec<String> = if version >= 4 {
            request
                .coordinator_keys
                .iter()
                .take(GROUPS_PER_REQUEST_MAX)
                .map(|key| key.to_string())
                .collect()
        } else {
            vec![request.key.to_string()]
        };
        let coordinators: Vec<KafkaCoordinator> = keys
            .into_iter()
            .map(|key| self.locate(&key, request.key_type))
            .collect();
        if version >= 4 {
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        let found = coordinators.into_iter().next().unwrap_or_default();
        let mut response = FindCoordinatorResponse::default()
            .with_error_code(found.error_code)
            .with_node_id(found.node_id)
            .with_host(found.host)
            .with_port(found.port);
        if version >= 1 {
            response.error_message = found.error_message;
        }
        response
    }

    fn locate(&self, key: &str, key_type: i8) -> KafkaCoordinator {
        let refused = |code: i16, message: &str| {
            KafkaCoordinator::default()
                .with_key(StrBytes::from_string(key.to_string()))
                .with_node_id(BrokerId(-1))
                .with_port(-1)
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message.to_string())))
        };
        if key_type != 0 {
            return refused(
                error_code::COORDINATOR_NOT_AVAILABLE,
                "transactions are not supported",
            );
        }
        if key.is_empty() {
            return refused(
                coordinator::error_code::INVALID_GROUP_ID,
                "the group id is empty",
            );
        }
        let Some(group) = self.offsets_partition_group(key) else {
            return refused(
                error_code::COORDINATOR_NOT_AVAILABLE,
                "the offsets topic is being created",
            );
        };
        let (mut leader, _) = self.leader_of(group);
        if leader < 0 && !self.node.hosts(group) {
            // As for partition leaders in Metadata: the preferred replica
            // usually leads, and a wrong guess answers NOT_COORDINATOR.
            leader = self
                .metadata()
                .and_then(|metadata| metadata.topic(OFFSETS_TOPIC))
                .and_then(|topic| {
                    topic
                        .partitions
                        .iter()
                        .find(|placement| placement.group == group)
                })
                .and_then(|placement| placement.replicas.first())
                .map_or(-1, |node| *node as i32);
        }
        let address = self
            .members()
            .into_iter()
            .find(|node| node.node_id as i32 == leader);
        match address {
            Some(address) if leader >= 0 => KafkaCoordinator::default()
                .with_key(StrBytes::from_string(key.to_string()))
                .with_node_id(BrokerId(leader))
                .with_host(StrBytes::from_string(address.host))
                .with_port(i32::from(address.port)),
            _ => refused(
                error_code::COORDINATOR_NOT_AVAILABLE,
                "the group's offsets partition has no leader yet",
            ),
        }
    }

    // ------------------------------------------------- Join, sync, heartbeat

    #[allow(clippy::too_many_arguments)]
    pub(super) fn join_group(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: JoinGroupRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        let group_id = request.group_id.0.to_string();
        let member_id = request.member_id.to_string();
        let fallback = |code: i16| {
            ResponseKind::JoinGroup(join_response(
                JoinResult {
                    error_code: code,
                    generation: -1,
                    member_id: member_id.clone(),
                    ..JoinResult::default()
                },
                version,
            ))
        };
        let group = match self.coordinator_with_room_for(&group_id) {
            Ok(group) => group,
            Err(code) => {
                return self.answer_group_now(
                    connection,
                    &header,
                    ApiKey::JoinGroup,
                    version,
                    fallback(code),
                );
            }
        };
        let client_id = header
            .client_id
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let join = JoinRequest {
            group_id,
            member_id: member_id.clone(),
            group_instance_id: request.group_instance_id.as_ref().map(|id| id.to_string()),
            session_timeout_ms: request.session_timeout_ms,
            rebalance_timeout_ms: request.rebalance_timeout_ms,
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .iter()
                .map(|protocol| (protocol.name.to_string(), protocol.metadata.to_vec()))
                .collect(),
            client_id,
            client_host: String::new(),
            require_known_member_id: version >= 4,
        };
        let waiter = self.wait_for_group(
            connection,
            header,
            ApiKey::JoinGroup,
            version,
            fallback(error_code::REQUEST_TIMED_OUT),
            now_ms,
        );
        let mut out = Outputs::default();
        self.coordinators
            .get_mut(&group)
            .expect("coordinator_for checked")
            .join(join, waiter, now_ms, &mut out);
        self.group_outputs(group, out, env, collector);
    }

    pub(super) fn sync_group(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: SyncGroupRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        let group_id = request.group_id.0.to_string();
        let fallback = |code: i16| {
            ResponseKind::SyncGroup(sync_response(SyncResult {
                error_code: code,
                ..SyncResult::default()
            }))
        };
        let group = match self.coordinator_with_room_for(&group_id) {
            Ok(group) => group,
            Err(code) => {
                return self.answer_group_now(
                    connection,
                    &header,
                    ApiKey::SyncGroup,
                    version,
                    fallback(code),
                );
            }
        };
        let sync = SyncRequest {
            group_id,
            generation: request.generation_id,
            member_id: request.member_id.to_string(),
            group_instance_id: request.group_instance_id.as_ref().map(|id| id.to_string()),
            protocol_type: request.protocol_type.as_ref().map(|name| name.to_string()),
            protocol_name: request.protocol_name.as_ref().map(|name| name.to_string()),
            assignments: request
                .assignments
                .iter()
                .map(|assignment| {
                    (
                        assignment.member_id.to_string(),
                        assignment.assignment.to_vec(),
                    )
                })
                .collect(),
        };
        let waiter = self.wait_for_group(
            connection,
            header,
            ApiKey::SyncGroup,
            version,
            fallback(error_code::REQUEST_TIMED_OUT),
            now_ms,
        );
        let mut out = Outputs::default();
        self.coordinators
            .get_mut(&group)
            .expect("coordinator_for checked")
            .sync(sync, waiter, now_ms, &mut out);
        self.group_outputs(group, out, env, collector);
    }

    pub(super) fn heartbeat(
        &mut self,
        request: HeartbeatRequest,
        now_ms: u64,
    ) -> HeartbeatResponse {
        let group_id = request.group_id.0.to_string();
        let code = match self.coordinator_for(&group_id) {
            Ok(group) => self
                .coordinators
                .get_mut(&group)
                .expect("coordinator_for checked")
                .heartbeat(
                    &group_id,
                    request.generation_id,
                    request.member_id.as_str(),
                    request.group_instance_id.as_deref(),
                    now_ms,
                ),
            Err(code) => code,
        };
        HeartbeatResponse::default().with_error_code(code)
    }

    pub(super) fn leave_group(
        &mut self,
        request: LeaveGroupRequest,
        version: i16,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) -> LeaveGroupResponse {
        let now_ms = env.clock.now_ms();
        let group_id = request.group_id.0.to_string();
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            request
                .members
                .iter()
                .take(coordinator::GROUP_PENDING_MEMBERS_MAX)
                .map(|member| {
                    (
                        member.member_id.to_string(),
                        member.group_instance_id.as_ref().map(|id| id.to_string()),
                    )
                })
                .collect()
        } else {
            vec![(request.member_id.to_string(), None)]
        };
        let outcome = match self.coordinator_for(&group_id) {
            Ok(group) => {
                let mut out = Outputs::default();
                let outcome = self
                    .coordinators
                    .get_mut(&group)
                    .expect("coordinator_for checked")
                    .leave(&group_id, &leaving, now_ms, &mut out);
                self.group_outputs(group, out, env, collector);
                outcome
            }
            Err(code) => Err(code),
        };
        let mut response = LeaveGroupResponse::default();
        match outcome {
            Err(code) => response.error_code = code,
            Ok(codes) if version >= 3 => {
                response.members = leaving
                    .iter()
                    .zip(codes)
                    .map(|((member_id, instance), code)| {
                        MemberResponse::default()
                            .with_member_id(StrBytes::from_string(member_id.clone()))
                            .with_group_instance_id(instance.clone().map(StrBytes::from_string))
                            .with_error_code(code)
                    })
                    .collect();
            }
            Ok(codes) => response.error_code = codes.first().copied().unwrap_or(0),
        }
        response
    }

    // -------------------------------------------------------------- Offsets

    pub(super) fn offset_commit(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: OffsetCommitRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        let wall_ms = env.clock.wall_clock_ms();
        let group_id = request.group_id.0.to_string();
        let group_check = match self.coordinator_for(&group_id) {
            Err(code) => Err(code),
            Ok(group) => {
                let code = self
                    .coordinators
                    .get_mut(&group)
                    .expect("coordinator_for checked")
                    .check_commit(
                        &group_id,
                        request.generation_id_or_member_epoch,
                        request.member_id.as_str(),
                        request.group_instance_id.as_deref(),
                        now_ms,
                    );
                if code == 0 {
                    Ok(group)
                } else {
                    Err(code)
                }
            }
        };
        let group_check = match group_check {
            Ok(group) if group_id.is_empty() => {
                let _ = group;
                Err(coordinator::error_code::INVALID_GROUP_ID)
            }
            Ok(group)
                if !self
                    .offsets_state(group)
                    .is_some_and(|state| state.has_room_for(&group_id)) =>
            {
                Err(error_code::COORDINATOR_NOT_AVAILABLE)
            }
            other => other,
        };
        let mut response = OffsetCommitResponse::default();
        let mut offsets = Vec::new();
        let mut parts = Vec::new();
        for (topic_index, topic) in request.topics.iter().enumerate() {
            let name = topic.name.0.to_string();
            let known_partitions = self
                .metadata()
                .and_then(|metadata| metadata.topic(&name))
                .map(|topic| topic.partitions.len());
            let mut partitions = Vec::new();
            for (partition_index, partition) in topic.partitions.iter().enumerate() {
                let metadata = partition
                    .committed_metadata
                    .as_ref()
                    .map(|metadata| metadata.to_string())
                    .unwrap_or_default();
                let code = match &group_check {
                    Err(code) => *code,
                    Ok(_) if metadata.len() > OFFSET_METADATA_BYTES_MAX => {
                        code::OFFSET_METADATA_TOO_LARGE
                    }
                    Ok(_)
                        if !known_partitions.is_some_and(|count| {
                            usize::try_from(partition.partition_index)
                                .is_ok_and(|index| index < count)
                        }) =>
                    {
                        error_code::UNKNOWN_TOPIC_OR_PARTITION
                    }
                    Ok(_) => {
                        offsets.push((
                            name.clone(),
                            partition.partition_index,
                            CommittedOffset {
                                offset: partition.committed_offset,
                                leader_epoch: if version >= 6 {
                                    partition.committed_leader_epoch
                                } else {
                                    -1
                                },
                                metadata,
                                commit_timestamp_ms: wall_ms,
                            },
                        ));
                        parts.push((topic_index, partition_index));
                        // Set when the commit is applied.
                        error_code::REQUEST_TIMED_OUT
                    }
                };
                partitions.push(
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code),
                );
            }
            response.topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(topic.name.clone())
                    .with_partitions(partitions),
            );
        }
        let id = self.next_id();
        self.slot(connection, id);
        let command_bytes: usize = offsets
            .iter()
            .map(|(topic, _, offset)| topic.len() + offset.metadata.len() + 32)
            .sum();
        if command_bytes > OFFSETS_COMMAND_BYTES_MAX {
            tracing::warn!(group = %group_id, command_bytes, "an OffsetCommit is too large");
            for (topic, partition) in &parts {
                response.topics[*topic].partitions[*partition].error_code =
                    coordinator::error_code::INVALID_REQUEST;
            }
            offsets.clear();
        }
        let proposal = match (&group_check, offsets.is_empty()) {
            (Ok(group), false) => Some((
                *group,
                OffsetsCommand::Commit {
                    group: group_id,
                    offsets,
                },
            )),
            _ => None,
        };
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::OffsetCommit,
                version,
                deadline_ms: now_ms + REQUEST_TIMEOUT_MS_MAX.min(30_000),
                outstanding: usize::from(proposal.is_some()),
                kind: PendingKind::OffsetCommit { response, parts },
            },
        );
        if let Some((group, command)) = proposal {
            self.propose(group, command.encode(), id, 0, env, collector);
        }
        self.finish_if_done(id);
    }

    /// Applies an offsets command's outcome to the parts of a pending
    /// OffsetCommit, DeleteGroups or OffsetDelete.
    pub(super) fn group_command_reply(
        &mut self,
        kind: &mut PendingKind,
        part: usize,
        result: Result<ClientReply, ClientError>,
    ) {
        let code = match result {
            Ok(ClientReply::Applied(Applied::Offsets(OffsetsOutcome::Done))) => 0,
            Ok(ClientReply::Applied(Applied::Offsets(OffsetsOutcome::Refused {
                error_code,
                ..
            }))) => error_code,
            Ok(_) => error_code::UNKNOWN_SERVER_ERROR,
            // Leadership moved while the command was in flight: the client
            // finds the new coordinator and retries.
            Err(_) => coordinator::error_code::NOT_COORDINATOR,
        };
        match kind {
            PendingKind::OffsetCommit { response, parts } => {
                for (topic, partition) in parts.iter() {
                    response.topics[*topic].partitions[*partition].error_code = code;
                }
            }
            PendingKind::DeleteGroups { response } => {
                let result = &mut response.results[part];
                result.error_code = code;
                if code == 0 {
                    let group_id = result.group_id.0.to_string();
                    if let Ok(group) = self.coordinator_for(&group_id) {
                        let coordinator = self.coordinators.get_mut(&group).expect("checked");
                        if coordinator
                            .group(&group_id)
                            .is_some_and(|group| group.state == GroupState::Empty)
                        {
                            coordinator.remove_group(&group_id);
                        }
                    }
                }
            }
            PendingKind::OffsetDelete { response, parts } => {
                for (topic, partition) in parts.iter() {
                    response.topics[*topic].partitions[*partition].error_code = code;
                }
            }
            _ => {}
        }
    }

    /// OffsetFetch: committed offsets are a linearizable register
    /// (docs/guarantees.md), so the answer waits for a read index of every
    /// offsets partition it reads (docs/protocol.md §6.3). A coordinator
    /// that was deposed without noticing yet cannot confirm one, and so
    /// never answers an offset older than a commit its successor took.
    pub(super) fn offset_fetch_start(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: OffsetFetchRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        let group_ids: Vec<&str> = if version >= 8 {
            request
                .groups
                .iter()
                .take(GROUPS_PER_REQUEST_MAX)
                .map(|wanted| wanted.group_id.as_str())
                .collect()
        } else {
            vec![request.group_id.as_str()]
        };
        let groups: Vec<GroupId> = if self.pending.len() >= PENDING_REQUESTS_MAX {
            // Answered at once below: every group gets NOT_COORDINATOR
            // and the client retries.
            Vec::new()
        } else {
            group_ids
                .iter()
                .filter_map(|group_id| self.coordinator_for(group_id).ok())
                .collect::<BTreeSet<GroupId>>()
                .into_iter()
                .collect()
        };
        let reads = ReadIndexes::of(groups);
        let id = self.next_id();
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::OffsetFetch,
                version,
                deadline_ms: now_ms + OFFSET_FETCH_CONFIRM_MS_MAX,
                outstanding: reads.groups.len(),
                kind: PendingKind::OffsetFetch { request, reads },
            },
        );
        self.read_indexes(id, env, collector);
        self.finish_if_done(id);
    }

    /// The answer to an OffsetFetch, read from the offsets partitions whose
    /// read index passed (`confirmed`); groups in others get
    /// NOT_COORDINATOR.
    pub(super) fn offset_fetch(
        &self,
        request: OffsetFetchRequest,
        version: i16,
        confirmed: &BTreeMap<GroupId, bool>,
    ) -> OffsetFetchResponse {
        if version >= 8 {
            let groups = request
                .groups
                .iter()
                .take(GROUPS_PER_REQUEST_MAX)
                .map(|wanted| {
                    let topics: Option<Vec<(String, Vec<i32>)>> =
                        wanted.topics.as_ref().map(|topics| {
                            topics
                                .iter()
                                .map(|topic| {
                                    (topic.name.0.to_string(), topic.partition_indexes.clone())
                                })
                                .collect()
                        });
                    let (code, found) =
                        self.fetch_offsets(wanted.group_id.as_str(), topics, confirmed);
                    OffsetFetchResponseGroup::default()
                        .with_group_id(wanted.group_id.clone())
                        .with_error_code(code)
                        .with_topics(
                            found
                                .into_iter()
                                .map(|(topic, partitions)| {
                                    OffsetFetchResponseTopics::default()
                                        .with_name(TopicName(StrBytes::from_string(topic)))
                                        .with_partitions(
                                            partitions
                                                .into_iter()
                                                .map(|(index, offset, code)| {
                                                    let (offset, epoch, metadata) = split(offset);
                                                    OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(index)
                                                        .with_committed_offset(offset)
                                                        .with_committed_leader_epoch(epoch)
                                                        .with_metadata(Some(metadata))
                                                        .with_error_code(code)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let topics: Option<Vec<(String, Vec<i32>)>> = request.topics.as_ref().map(|topics| {
            topics
                .iter()
                .map(|topic| (topic.name.0.to_string(), topic.partition_indexes.clone()))
                .collect()
        });
        let (code, found) = self.fetch_offsets(request.group_id.as_str(), topics, confirmed);
        let topics = found
            .into_iter()
            .map(|(topic, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic)))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, offset, partition_code)| {
                                let (offset, epoch, metadata) = split(offset);
                                let mut partition = OffsetFetchResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_committed_offset(offset)
                                    .with_metadata(Some(metadata))
                                    .with_error_code(partition_code);
                                if version >= 5 {
                                    partition.committed_leader_epoch = epoch;
                                }
                                partition
                            })
                            .collect(),
                    )
            })
            .collect();
        let mut response = OffsetFetchResponse::default().with_topics(topics);
        if version >= 2 {
            response.error_code = code;
        }
        response
    }

    /// A group's committed offsets: the group's error code and, per topic,
    /// (partition, offset if committed, partition error code). `None`
    /// topics ask for every committed offset. On an error every partition
    /// asked for carries it too (OffsetFetch v1 has no group-level error).
    #[allow(clippy::type_complexity)]
    fn fetch_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
        confirmed: &BTreeMap<GroupId, bool>,
    ) -> (i16, Vec<(String, Vec<(i32, Option<CommittedOffset>, i16)>)>) {
        let state = self
            .coordinator_for(group_id)
            .and_then(|group| {
                if confirmed.get(&group) == Some(&true) {
                    Ok(group)
                } else {
                    Err(coordinator::error_code::NOT_COORDINATOR)
                }
            })
            .and_then(|group| {
                self.offsets_state(group)
                    .ok_or(error_code::COORDINATOR_NOT_AVAILABLE)
            });
        match (state, topics) {
            (Err(code), None) => (code, Vec::new()),
            (Err(code), Some(topics)) => (
                code,
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        (
                            topic,
                            partitions.into_iter().map(|p| (p, None, code)).collect(),
                        )
                    })
                    .collect(),
            ),
            (Ok(state), None) => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<CommittedOffset>, i16)>> =
                    BTreeMap::new();
                for ((topic, partition), offset) in state.offsets(group_id).into_iter().flatten() {
                    by_topic.entry(topic.clone()).or_default().push((
                        *partition,
                        Some(offset.clone()),
                        0,
                    ));
                }
                (0, by_topic.into_iter().collect())
            }
            (Ok(state), Some(topics)) => (
                0,
                topics
                    .into_iter()
                    .map(|(topic, partitions)| {
                        let found = partitions
                            .into_iter()
                            .map(|partition| {
                                (
                                    partition,
                                    state.committed(group_id, &topic, partition).cloned(),
                                    0,
                                )
                            })
                            .collect();
                        (topic, found)
                    })
                    .collect(),
            ),
        }
    }

    // ------------------------------------------------- Describe, list, delete

    pub(super) fn describe_groups(
        &self,
        request: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let groups = request
            .groups
            .iter()
            .take(GROUPS_PER_REQUEST_MAX)
            .map(|group_id| self.describe_group(group_id, version))
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }

    fn describe_group(&self, group_id: &KafkaGroupId, version: i16) -> DescribedGroup {
        let mut described = DescribedGroup::default()
            .with_group_id(group_id.clone())
            .with_group_state(StrBytes::from_static_str("Dead"));
        let offsets_group = match self.coordinator_for(group_id.as_str()) {
            Ok(group) => group,
            Err(code) => {
                described.error_code = code;
                return described;
            }
        };
        let coordinator = &self.coordinators[&offsets_group];
        match coordinator.group(group_id.as_str()) {
            Some(group) => {
                described.group_state = StrBytes::from_static_str(group.state.name());
                described.protocol_type =
                    StrBytes::from_string(group.protocol_type.clone().unwrap_or_default());
                let settled = matches!(
                    group.state,
                    GroupState::Stable | GroupState::CompletingRebalance
                );
                if settled {
                    described.protocol_data =
                        StrBytes::from_string(group.protocol_name.clone().unwrap_or_default());
                }
                described.members = group
                    .members
                    .values()
                    .map(|member| {
                        let mut described_member = DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(member.member_id.clone()))
                            .with_client_id(StrBytes::from_string(member.client_id.clone()))
                            .with_client_host(StrBytes::from_string(member.client_host.clone()));
                        if version >= 4 {
                            described_member.group_instance_id =
                                member.group_instance_id.clone().map(StrBytes::from_string);
                        }
                        if settled {
                            described_member.member_metadata = bytes::Bytes::from(
                                member.metadata(group.protocol_name.as_deref()).to_vec(),
                            );
                        }
                        if group.state == GroupState::Stable {
                            described_member.member_assignment =
                                bytes::Bytes::from(member.assignment.clone());
                        }
                        described_member
                    })
                    .collect();
            }
            None if self
                .offsets_state(offsets_group)
                .is_some_and(|state| state.knows(group_id.as_str())) =>
            {
                described.group_state = StrBytes::from_static_str("Empty");
            }
            None => {}
        }
        described
    }

    pub(super) fn list_groups(
        &self,
        request: ListGroupsRequest,
        version: i16,
    ) -> ListGroupsResponse {
        let mut response = ListGroupsResponse::default();
        let loading = self.node.group_ids().into_iter().any(|group| {
            is_offsets_group(group)
                && !self.coordinators.contains_key(&group)
                && self
                    .node
                    .summary(group)
                    .is_some_and(|view| view.role == Role::Leader)
        });
        if loading {
            response.error_code = code::COORDINATOR_LOAD_IN_PROGRESS;
        }
        let filter: Vec<String> = if version >= 4 {
            request
                .states_filter
                .iter()
                .map(|state| state.to_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        for (offsets_group, coordinator) in &self.coordinators {
            let mut listed: BTreeMap<String, (String, &'static str)> = coordinator
                .groups()
                .values()
                .map(|group| {
                    (
                        group.id.clone(),
                        (
                            group.protocol_type.clone().unwrap_or_default(),
                            group.state.name(),
                        ),
                    )
                })
                .collect();
            if let Some(state) = self.offsets_state(*offsets_group) {
                for group_id in state.group_ids() {
                    listed
                        .entry(group_id.clone())
                        .or_insert_with(|| (String::new(), GroupState::Empty.name()));
                }
            }
            for (group_id, (protocol_type, state)) in listed {
                if !filter.is_empty() && !filter.contains(&state.to_lowercase()) {
                    continue;
                }
                let mut group = ListedGroup::default()
                    .with_group_id(KafkaGroupId(StrBytes::from_string(group_id)))
                    .with_protocol_type(StrBytes::from_string(protocol_type));
                if version >= 4 {
                    group.group_state = StrBytes::from_static_str(state);
                }
                response.groups.push(group);
            }
        }
        response
    }

    pub(super) fn delete_groups(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: DeleteGroupsRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        let mut response = DeleteGroupsResponse::default();
        let mut proposals = Vec::new();
        for (index, group_id) in request
            .groups_names
            .iter()
            .take(GROUPS_PER_REQUEST_MAX)
            .enumerate()
        {
            let name = group_id.0.to_string();
            let code = match self.coordinator_for(&name) {
                Err(code) => code,
                Ok(group) => {
                    let live = self.coordinators[&group]
                        .group(&name)
                        .is_some_and(|group| group.state != GroupState::Empty);
                    let known = self
                        .offsets_state(group)
                        .is_some_and(|state| state.knows(&name))
                        || self.coordinators[&group].group(&name).is_some();
                    if live {
                        code::NON_EMPTY_GROUP
                    } else if !known {
                        code::GROUP_ID_NOT_FOUND
                    } else {
                        proposals.push((group, OffsetsCommand::DeleteGroup { group: name }, index));
                        error_code::REQUEST_TIMED_OUT
                    }
                }
            };
            response.results.push(
                DeletableGroupResult::default()
                    .with_group_id(group_id.clone())
                    .with_error_code(code),
            );
        }
        let id = self.next_id();
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::DeleteGroups,
                version,
                deadline_ms: now_ms + 30_000,
                outstanding: proposals.len(),
                kind: PendingKind::DeleteGroups { response },
            },
        );
        for (group, command, part) in proposals {
            self.propose(group, command.encode(), id, part, env, collector);
        }
        self.finish_if_done(id);
    }

    pub(super) fn offset_delete(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: OffsetDeleteRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        let group_id = request.group_id.0.to_string();
        let mut response = OffsetDeleteResponse::default();
        let mut check = self.coordinator_for(&group_id);
        // Topics the group's members subscribe to: their offsets stay.
        let mut subscribed: Option<Vec<String>> = Some(Vec::new());
        if let Ok(group) = check {
            let known = self
                .offsets_state(group)
                .is_some_and(|state| state.offsets(&group_id).is_some());
            match self.coordinators[&group].group(&group_id) {
                _ if !known => check = Err(code::GROUP_ID_NOT_FOUND),
                Some(live) if live.state != GroupState::Empty => {
                    if live.protocol_type.as_deref() == Some("consumer") {
                        let mut topics = Vec::new();
                        for member in live.members.values() {
                            match subscribed_topics(member.metadata(live.protocol_name.as_deref()))
                            {
                                Some(more) => topics.extend(more),
                                None => subscribed = None,
                            }
                        }
                        if subscribed.is_some() {
                            subscribed = Some(topics);
                        }
                    } else {
                        check = Err(code::NON_EMPTY_GROUP);
                    }
                }
                _ => {}
            }
        }
        let mut partitions_deleted = Vec::new();
        let mut parts = Vec::new();
        if let Err(code) = check {
            response.error_code = code;
        }
        for (topic_index, topic) in request.topics.iter().enumerate() {
            let name = topic.name.0.to_string();
            let in_use = match &subscribed {
                Some(topics) => topics.contains(&name),
                None => true,
            };
            let partitions = topic
                .partitions
                .iter()
                .enumerate()
                .map(|(partition_index, partition)| {
                    let code = match check {
                        Err(code) => code,
                        Ok(_) if in_use => code::GROUP_SUBSCRIBED_TO_TOPIC,
                        Ok(_) => {
                            partitions_deleted.push((name.clone(), partition.partition_index));
                            parts.push((topic_index, partition_index));
                            error_code::REQUEST_TIMED_OUT
                        }
                    };
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(code)
                })
                .collect();
            response.topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(topic.name.clone())
                    .with_partitions(partitions),
            );
        }
        let proposal = match check {
            Ok(group) if !partitions_deleted.is_empty() => Some((
                group,
                OffsetsCommand::DeleteOffsets {
                    group: group_id,
                    partitions: partitions_deleted,
                },
            )),
            _ => None,
        };
        let id = self.next_id();
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::OffsetDelete,
                version,
                deadline_ms: now_ms + 30_000,
                outstanding: usize::from(proposal.is_some()),
                kind: PendingKind::OffsetDelete { response, parts },
            },
        );
        if let Some((group, command)) = proposal {
            self.propose(group, command.encode(), id, 0, env, collector);
        }
        self.finish_if_done(id);
    }
}

fn split(offset: Option<CommittedOffset>) -> (i64, i32, StrBytes) {
    match offset {
        Some(offset) => (
            offset.offset,
            offset.leader_epoch,
            StrBytes::from_string(offset.metadata),
        ),
        None => (-1, -1, StrBytes::from_static_str("")),
    }
}

fn join_response(result: JoinResult, version: i16) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default()
        .with_error_code(result.error_code)
        .with_generation_id(result.generation)
        .with_protocol_name(result.protocol_name.map(StrBytes::from_string))
        .with_leader(StrBytes::from_string(result.leader))
        .with_member_id(StrBytes::from_string(result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(member_id, instance, metadata)| {
                    let mut member = JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(member_id))
                        .with_metadata(bytes::Bytes::from(metadata));
                    if version >= 5 {
                        member.group_instance_id = instance.map(StrBytes::from_string);
                    }
                    member
                })
                .collect(),
        );
    if version < 6 && response.protocol_name.is_none() {
        // Before v6 the protocol name is not nullable.
        response.protocol_name = Some(StrBytes::from_static_str(""));
    }
    if version >= 7 {
        response.protocol_type = result.protocol_type.map(StrBytes::from_string);
    }
    if version >= 9 {
        response.skip_assignment = result.skip_assignment;
    }
    response
}

fn sync_response(result: SyncResult) -> SyncGroupResponse {
    // The protocol type and name (v5+) are ignored by the encoder of
    // older versions.
    SyncGroupResponse::default()
        .with_error_code(result.error_code)
        .with_protocol_type(result.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(result.protocol_name.map(StrBytes::from_string))
        .with_assignment(bytes::Bytes::from(result.assignment))
}
