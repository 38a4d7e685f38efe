//! The broker of one node: Kafka requests decoded, answered from the node
//! core's state machines or turned into proposals, and answered in order
//! per connection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeClusterRequest, DescribeConfigsRequest, InitProducerIdRequest, ListOffsetsRequest,
    MetadataRequest, OffsetForLeaderEpochRequest, ProduceRequest, RequestHeader, RequestKind,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use runnel_consensus::Config;
use runnel_core::metadata::{
    validate_topic_name, MetadataCommand, MetadataOutcome, MetadataState, Topic, METADATA_GROUP,
};
use runnel_core::offsets::OFFSETS_TOPIC;
use runnel_core::partition::{
    error_code as partition_error, Located, Part, PartitionCommand, ProduceCommand, ProduceOutcome,
    StoredBatch,
};
use runnel_core::{
    Applied, ClientError, ClientOp, ClientReply, ClientRequest, ClientResponse, Env, Event,
    MachineLayout, Node, NodeConfig, Replies, Role,
};
use runnel_io::{GroupId, NodeId};
use runnel_kafka::codec::{self, DecodeError};
use uuid::Uuid;

use crate::fetch::{self, FetchResult};

/// The parts of a fetch's log reads are numbered from here, after its read
/// indexes (at most one per partition).
const LOAD_PART_BASE: usize = 1 << 32;
/// The longest a fetch waits for its log reads when it asks not to wait
/// for data: a disk read takes milliseconds, unless the disk is failing.
const FETCH_LOAD_WAIT_MS_MAX: u64 = 5_000;

#[cfg(feature = "ack-before-commit")]
mod ack_before_commit; // FAILPOINT: a broken build for jepsen/, see the module
mod groups;
mod membership;
pub mod metrics;
mod reassign;
use crate::{configs, error_code, BrokerConfig, BrokerEnv, BrokerEvent, ConnectionId, StartError};

/// Most requests waiting for an answer over all connections; beyond it new
/// requests that must wait are answered with REQUEST_TIMED_OUT at once.
pub const PENDING_REQUESTS_MAX: usize = 65_536;
/// The longest a Fetch long-polls, whatever it asks.
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// How long a Fetch past a partition's high watermark waits for a read
/// index (`fetch::evaluate`) before it is answered NOT_LEADER_OR_FOLLOWER:
/// a deposed leader steps down within two election timeouts (check-quorum)
/// and fails the read sooner.
pub const FETCH_CONFIRM_MS_MAX: u64 = 5_000;
/// The longest a request waits for its proposals to commit.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 120_000;
/// Producer ids this node hands out per incarnation (their low 32 bits).
pub const PRODUCER_COUNTER_MAX: u64 = u32::MAX as u64;
/// Node ids fit in the 11 high bits of a producer id.
pub const NODE_ID_MAX: u64 = (1 << 11) - 1;
/// Incarnations fit in the 20 bits below the node id.
pub const INCARNATION_MAX: u64 = (1 << 20) - 1;

/// A follower that has not answered its leader for this long is out of
/// sync (Kafka's `replica.lag.time.max.ms` is 30 s; consensus notices much
/// sooner).
pub const IN_SYNC_LAG_MS: u64 = 5_000;

/// How often a node hands the partitions it leads back to their preferred
/// replica (the first of their replicas, which placement spreads evenly).
pub const LEADER_BALANCE_INTERVAL_MS: u64 = 5_000;

/// How often the leader of a partition checks its retention.
pub const RETENTION_CHECK_INTERVAL_MS: u64 = 1_000;

/// A response slot: answered in the order the requests came.
struct Slot {
    id: u64,
    /// `None` while waiting.
    output: Option<SlotOutput>,
}

enum SlotOutput {
    /// A response frame, or `None` for a request without a response.
    Respond(Option<Bytes>),
    /// The response could not be encoded: the connection is closed, since
    /// the client would wait for it forever otherwise.
    Close(String),
}

struct Pending {
    connection: ConnectionId,
    header: RequestHeader,
    api_key: ApiKey,
    version: i16,
    deadline_ms: u64,
    outstanding: usize,
    kind: PendingKind,
}

enum PendingKind {
    Produce {
        response: ProduceResponse,
        /// Per proposal part: (topic index, partition index) in `response`.
        parts: Vec<(usize, usize)>,
        no_response: bool,
    },
    /// A long poll waiting for data, or (`reads` not empty) a fetch
    /// waiting for read indexes before it may answer OFFSET_OUT_OF_RANGE
    /// (`fetch::evaluate`).
    Fetch {
        request: FetchRequest,
        reads: ReadIndexes,
        /// §8.3: batches read from disk for it.
        loads: fetch::Loads,
    },
    /// A ListOffsets by timestamp whose batches are on disk, waiting for
    /// their reads (docs/protocol.md §8.3) to answer to the record.
    ListOffsets {
        request: ListOffsetsRequest,
        loads: fetch::Loads,
    },
    CreateTopics {
        response: CreateTopicsResponse,
    },
    DeleteTopics {
        response: DeleteTopicsResponse,
    },
    CreatePartitions {
        response: CreatePartitionsResponse,
    },
    /// AddRaftVoter (`add`) or RemoveRaftVoter: the cluster's membership.
    Voter {
        add: bool,
        error_code: i16,
        error_message: Option<StrBytes>,
    },
    AlterReassignments {
        response: kafka_protocol::messages::AlterPartitionReassignmentsResponse,
        /// Per proposal part: (topic index, partition index) in `response`.
        parts: Vec<(usize, usize)>,
    },
    /// A JoinGroup or SyncGroup waiting for its group's coordinator, which
    /// answers it (`groups.rs`); `fallback` if it never does.
    Group {
        fallback: ResponseKind,
    },
    /// One proposal commits every offset of the request: `parts` are the
    /// (topic index, partition index) in `response` it carries.
    OffsetCommit {
        response: kafka_protocol::messages::OffsetCommitResponse,
        parts: Vec<(usize, usize)>,
    },
    DeleteGroups {
        response: kafka_protocol::messages::DeleteGroupsResponse,
    },
    /// An OffsetFetch waiting for a read index of each offsets partition
    /// it reads. The answer is read when the last one is in.
    OffsetFetch {
        request: kafka_protocol::messages::OffsetFetchRequest,
        reads: ReadIndexes,
    },
    OffsetDelete {
        response: kafka_protocol::messages::OffsetDeleteResponse,
        parts: Vec<(usize, usize)>,
    },
}

/// The read indexes (docs/protocol.md §6.3) a pending request waits for:
/// one per group of `groups`, whose position is the request's part, and
/// whether each passed once its answer is in.
#[derive(Default)]
struct ReadIndexes {
    groups: Vec<GroupId>,
    passed: BTreeMap<GroupId, bool>,
}

impl ReadIndexes {
    fn of(groups: Vec<GroupId>) -> ReadIndexes {
        ReadIndexes {
            groups,
            passed: BTreeMap::new(),
        }
    }

    /// The node's answer to the read index of part `part`.
    fn answered(&mut self, part: usize, result: &Result<ClientReply, ClientError>) {
        let passed = matches!(result, Ok(ClientReply::ReadReady));
        self.passed.insert(self.groups[part], passed);
    }
}

#[derive(Default)]
struct Collector {
    responses: Vec<ClientResponse>,
}

impl Replies for Collector {
    fn reply(&mut self, response: ClientResponse) {
        self.responses.push(response);
    }
}

/// The broker of one node. See the crate documentation.
pub struct Broker {
    config: BrokerConfig,
    node: Node,
    connections: BTreeMap<ConnectionId, VecDeque<Slot>>,
    pending: BTreeMap<u64, Pending>,
    /// Core request id -> (pending id, part).
    proposals: BTreeMap<u64, (u64, usize)>,
    /// FAILPOINT state (`ack-before-commit` builds only).
    #[cfg(feature = "ack-before-commit")]
    early_ack_offsets: ack_before_commit::EarlyAckOffsets,
    next_id: u64,
    /// Partition groups this node hosts, as metadata last said.
    /// The initial membership to start each from, or `None` to join it
    /// empty (its replicas were moved).
    hosted: BTreeMap<GroupId, Option<Vec<NodeId>>>,
    /// The metadata group's applied index when `hosted` was last synced:
    /// metadata changes only when it moves.
    hosted_synced_at: Option<u64>,
    last_retention_check_ms: u64,
    /// The low 32 bits of the next producer id this node hands out.
    next_producer_counter: u64,
    last_leader_balance_ms: u64,
    last_reassign_step_ms: u64,
    last_membership_step_ms: u64,
    /// The group coordinators of the offsets partitions this node leads.
    coordinators: BTreeMap<GroupId, crate::groups::coordinator::Coordinator>,
    /// Core request id -> (offsets partition group, consumer group id,
    /// generation) of a group record being stored.
    group_stores: BTreeMap<u64, (GroupId, String, i32)>,
    last_group_tick_ms: u64,
    last_offsets_topic_attempt_ms: u64,
}

impl Broker {
    /// Recovers the node's state from `disk` (reading synchronously).
    pub fn start(
        config: BrokerConfig,
        disk: &mut dyn runnel_io::Disk,
    ) -> Result<Broker, StartError> {
        let voters: Vec<NodeId> = config.cluster.iter().map(|node| node.node_id).collect();
        // A joining node starts no metadata replica of its own: it learns
        // the group from its members (`sync_groups`).
        let bootstrap = if config.join {
            Vec::new()
        } else {
            vec![(
                METADATA_GROUP,
                Config {
                    voters: voters.iter().copied().collect(),
                    learners: Default::default(),
                },
            )]
        };
        assert!(
            voters.iter().all(|id| (1..=NODE_ID_MAX).contains(id)),
            "node ids are checked by the configuration"
        );
        assert!(
            config.incarnation <= INCARNATION_MAX,
            "the incarnation is checked by the shell"
        );
        assert!(
            voters.contains(&config.node_id),
            "the cluster must list this node"
        );
        let mut node = Node::start(
            NodeConfig {
                id: config.node_id,
                groups: bootstrap,
                rng_seed: config.rng_seed,
                election_timeout_ms: config.election_timeout_ms,
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                snapshot_interval_entries: config.snapshot_interval_entries,
                segment_bytes_max: config.segment_bytes_max,
                machines: MachineLayout::Broker,
            },
            disk,
        )?;
        node.set_segment_ms(config.segment_ms);
        Ok(Broker {
            config,
            node,
            connections: BTreeMap::new(),
            pending: BTreeMap::new(),
            proposals: BTreeMap::new(),
            #[cfg(feature = "ack-before-commit")]
            early_ack_offsets: Default::default(),
            next_id: 1,
            hosted: BTreeMap::new(),
            hosted_synced_at: None,
            last_retention_check_ms: 0,
            next_producer_counter: 0,
            last_leader_balance_ms: 0,
            last_reassign_step_ms: 0,
            last_membership_step_ms: 0,
            coordinators: BTreeMap::new(),
            group_stores: BTreeMap::new(),
            last_group_tick_ms: 0,
            last_offsets_topic_attempt_ms: 0,
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The node core, for status output and tests.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Set when the node hit an error it must not go on from (a failed
    /// fsync); it then ignores every event and the process should exit.
    pub fn failed(&self) -> Option<&str> {
        self.node.failed()
    }

    /// What recovery found and did, for the operator's log.
    pub fn recovery_notes(&self) -> &[String] {
        self.node.recovery_notes()
    }

    /// Whether the metadata group has a leader this node knows of: before
    /// that, topic requests could only be refused, so the server waits for
    /// it (boundedly) before it accepts clients.
    pub fn metadata_leader_known(&self) -> bool {
        self.node.leader_ready(METADATA_GROUP)
            || self
                .node
                .summary(METADATA_GROUP)
                .is_some_and(|view| view.leader.is_some() && view.role != Role::Leader)
    }

    /// Requests received and not answered yet, over all connections.
    pub fn requests_in_flight(&self) -> usize {
        self.connections.values().map(VecDeque::len).sum()
    }

    /// Handles one event to completion.
    pub fn handle(&mut self, event: BrokerEvent, env: &mut BrokerEnv<'_>) {
        let mut collector = Collector::default();
        match event {
            BrokerEvent::Tick => self.node_event(Event::Tick, env, &mut collector),
            BrokerEvent::Peer(envelope) => {
                self.node_event(Event::Peer(envelope), env, &mut collector)
            }
            BrokerEvent::Disk(completion) => {
                self.node_event(Event::Disk(completion), env, &mut collector)
            }
            BrokerEvent::Request { connection, frame } => {
                self.request(connection, frame, env, &mut collector)
            }
            BrokerEvent::Drain => {
                for pending in self.pending.values_mut() {
                    if matches!(pending.kind, PendingKind::Fetch { .. }) {
                        pending.deadline_ms = 0;
                    }
                }
            }
            BrokerEvent::Closed { connection } => {
                self.connections.remove(&connection);
                self.pending.retain(|_, pending| {
                    pending.connection != connection
                        || !matches!(pending.kind, PendingKind::Fetch { .. })
                });
            }
        }
        self.settle(env, &mut collector);
    }

    /// Runs the follow-ups of an event: core replies, group membership from
    /// metadata, retention, long polls and deadlines, and responses.
    fn settle(&mut self, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        let now_ms = env.clock.now_ms();
        for _ in 0..8 {
            let responses = std::mem::take(&mut collector.responses);
            if responses.is_empty() {
                break;
            }
            for response in responses {
                self.core_reply(response, now_ms);
            }
        }
        self.sync_groups(env, collector);
        self.ensure_offsets_topic(env, collector);
        self.sync_coordinators(env, collector);
        self.check_retention(env, collector);
        self.balance_leaders(env, collector);
        self.drive_reassignments(env, collector);
        self.drive_membership(env, collector);
        for response in std::mem::take(&mut collector.responses) {
            self.core_reply(response, now_ms);
        }
        let to_load = self.expire(env.clock.now_ms());
        for (id, reads) in to_load {
            self.load(id, reads, env, collector);
        }
        // A read refused at once (too many in flight, or entries no longer
        // held) is answered now; the fetch is evaluated again next time.
        for response in std::mem::take(&mut collector.responses) {
            self.core_reply(response, now_ms);
        }
        self.flush(env);
    }

    fn node_event(&mut self, event: Event, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        let mut core_env = Env {
            disk: &mut *env.disk,
            network: &mut *env.network,
            clock: env.clock,
            replies: collector,
        };
        self.node.handle(event, &mut core_env);
    }

    /// Hands the node an operation nobody waits for (client 0): whoever
    /// asked for it retries at its next check if it is lost.
    fn unawaited(
        &mut self,
        group: GroupId,
        op: ClientOp,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        self.node_event(
            Event::Client(ClientRequest {
                client: 0,
                request_id: 0,
                group,
                op,
            }),
            env,
            collector,
        );
    }

    fn propose(
        &mut self,
        group: GroupId,
        data: Vec<u8>,
        pending_id: u64,
        part: usize,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        self.request_part(
            group,
            ClientOp::Propose { data },
            pending_id,
            part,
            env,
            collector,
        );
    }

    /// Sends the node `op` for part `part` of pending request
    /// `pending_id`; its reply finds its way back through `proposals`.
    fn request_part(
        &mut self,
        group: GroupId,
        op: ClientOp,
        pending_id: u64,
        part: usize,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let request_id = self.next_id();
        self.proposals.insert(request_id, (pending_id, part));
        self.node_event(
            Event::Client(ClientRequest {
                client: 0,
                request_id,
                group,
                op,
            }),
            env,
            collector,
        );
    }

    /// Asks the node for the read indexes (docs/protocol.md §6.3) pending
    /// request `pending_id` waits for, one part per group.
    fn read_indexes(
        &mut self,
        pending_id: u64,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let groups = match self.pending.get(&pending_id).map(|pending| &pending.kind) {
            Some(PendingKind::Fetch { reads, .. } | PendingKind::OffsetFetch { reads, .. }) => {
                reads.groups.clone()
            }
            _ => unreachable!("only fetches wait for read indexes"),
        };
        for (part, group) in groups.into_iter().enumerate() {
            self.request_part(group, ClientOp::ReadIndex, pending_id, part, env, collector);
        }
    }

    /// §8.3: asks the node for the log reads `to_load` of fetch
    /// `pending_id`, one part each.
    fn load(
        &mut self,
        pending_id: u64,
        to_load: Vec<(GroupId, u64)>,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        if to_load.is_empty() {
            return;
        }
        let Some(pending) = self.pending.get_mut(&pending_id) else {
            return;
        };
        let (PendingKind::Fetch { loads, .. } | PendingKind::ListOffsets { loads, .. }) =
            &mut pending.kind
        else {
            unreachable!("only fetches and ListOffsets read the log");
        };
        let first_part = LOAD_PART_BASE + loads.asked.len();
        loads.asked.extend(to_load.iter().copied());
        loads.rounds += 1;
        loads.in_flight += to_load.len();
        pending.outstanding += to_load.len();
        for (offset, (group, from)) in to_load.into_iter().enumerate() {
            self.request_part(
                group,
                ClientOp::ReadLog { from },
                pending_id,
                first_part + offset,
                env,
                collector,
            );
        }
    }

    /// Holds `pending` until it is answered; its slot keeps the order of
    /// the responses on its connection. Returns its id.
    fn park(&mut self, pending: Pending) -> u64 {
        let id = self.next_id();
        self.slot(pending.connection, id);
        self.pending.insert(id, pending);
        id
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The membership partition `group` was created with (none when the
    /// metadata does not list it).
    fn initial_config(&self, group: GroupId) -> Config {
        self.metadata()
            .and_then(|metadata| initial_config_in(metadata, group))
            .unwrap_or_default()
    }

    fn metadata(&self) -> Option<&MetadataState> {
        self.node
            .machine(METADATA_GROUP)
            .and_then(|machine| machine.metadata())
    }

    /// Makes the hosted partition groups follow metadata: a group of a new
    /// partition placed here starts, a group of a deleted topic goes.
    fn sync_groups(&mut self, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        // Not running (absent, or recovered from disk and waiting for its
        // membership): a joining node joins, or continues from its disk.
        if self.config.join && self.node.summary(METADATA_GROUP).is_none() {
            let genesis = self.genesis_config();
            let mut core_env = Env {
                disk: &mut *env.disk,
                network: &mut *env.network,
                clock: env.clock,
                replies: &mut *collector,
            };
            self.node.join_group(METADATA_GROUP, genesis, &mut core_env);
        }
        let applied = self
            .node
            .summary(METADATA_GROUP)
            .map(|view| view.applied_index);
        if applied.is_none() || applied == self.hosted_synced_at {
            return;
        }
        self.hosted_synced_at = applied;
        let Some(metadata) = self.metadata() else {
            return;
        };
        let me = self.config.node_id;
        // A replica of the initial placement starts from the initial
        // membership, unless this node deleted a replica of the group once
        // (and its vote record with it): then, like a node new to the
        // group, it joins empty and learns the membership (§12.4).
        let wanted: BTreeMap<GroupId, Option<Vec<NodeId>>> = metadata
            .partition_groups()
            .filter(|(_, placement)| placement.replicas.contains(&me))
            .map(|(_, placement)| {
                let initial = (placement.initial_replicas.contains(&me)
                    && !self.node.has_left(placement.group))
                .then(|| placement.initial_replicas.clone());
                (placement.group, initial)
            })
            .collect();
        let placed: BTreeSet<GroupId> = metadata
            .partition_groups()
            .map(|(_, placement)| placement.group)
            .collect();
        if wanted == self.hosted {
            return;
        }
        let added: Vec<(GroupId, Option<Vec<NodeId>>)> = wanted
            .iter()
            .filter(|(group, _)| !self.hosted.contains_key(group))
            .map(|(group, replicas)| (*group, replicas.clone()))
            .collect();
        // Only a deleted partition goes at once: a replica moved away stays
        // until its group's membership no longer lists it (reassign.rs).
        let removed: Vec<GroupId> = self
            .hosted
            .keys()
            .filter(|group| !placed.contains(group))
            .copied()
            .collect();
        self.hosted = wanted;
        let mut core_env = Env {
            disk: &mut *env.disk,
            network: &mut *env.network,
            clock: env.clock,
            replies: collector,
        };
        for (group, initial) in added {
            match initial {
                Some(replicas) => {
                    let config = Config {
                        voters: replicas.into_iter().collect(),
                        learners: Default::default(),
                    };
                    self.node.bootstrap_group(group, config, &mut core_env);
                }
                None => {
                    let initial = self.initial_config(group);
                    self.node.join_group(group, initial, &mut core_env)
                }
            }
        }
        for group in removed {
            self.node.remove_group(group, &mut core_env);
        }
    }

    /// Hands each partition this node leads to its preferred replica when
    /// that replica keeps up: leadership spreads as placement did, and comes
    /// back to a node that returns after a failure (docs/protocol.md §9).
    fn balance_leaders(&mut self, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        let now_ms = env.clock.now_ms();
        if now_ms < self.last_leader_balance_ms + LEADER_BALANCE_INTERVAL_MS {
            return;
        }
        self.last_leader_balance_ms = now_ms;
        let me = self.config.node_id;
        let Some(metadata) = self.metadata() else {
            return;
        };
        let moves: Vec<(GroupId, NodeId)> = metadata
            .partition_groups()
            .filter_map(|(_, placement)| {
                let preferred = *placement.replicas.first()?;
                let ready = preferred != me && self.node.leader_ready(placement.group);
                let keeps_up = ready
                    && self
                        .node
                        .replicas_in_sync(placement.group, IN_SYNC_LAG_MS)
                        .contains(&preferred)
                    && self.node.may_take_over(placement.group, preferred);
                keeps_up.then_some((placement.group, preferred))
            })
            .collect();
        for (group, to) in moves {
            tracing::debug!(
                group,
                to,
                "handing a partition back to its preferred leader"
            );
            self.unawaited(group, ClientOp::TransferLeader { to }, env, collector);
        }
    }

    /// Proposes retention on the partitions this node leads, now and then:
    /// the leader decides with its wall clock, every replica drops the same.
    fn check_retention(&mut self, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        let now_ms = env.clock.now_ms();
        if now_ms < self.last_retention_check_ms + RETENTION_CHECK_INTERVAL_MS {
            return;
        }
        self.last_retention_check_ms = now_ms;
        let wall_ms = env.clock.wall_clock_ms();
        let Some(metadata) = self.metadata() else {
            return;
        };
        let mut due = Vec::new();
        for (topic, placement) in metadata.partition_groups() {
            if !self.node.leader_ready(placement.group) {
                continue;
            }
            let retention = configs::retention(&topic.configs, &self.config.topic_defaults);
            let log = self
                .node
                .machine(placement.group)
                .and_then(|machine| machine.partition());
            if log.is_some_and(|log| log.retention_due(wall_ms, retention)) {
                due.push((placement.group, retention));
            }
        }
        for (group, retention) in due {
            let command = PartitionCommand::Retain {
                now_ms: wall_ms,
                retention,
            };
            // Nobody waits for the outcome: a lost proposal is retried at
            // the next check.
            let data = command.encode();
            self.unawaited(group, ClientOp::Propose { data }, env, collector);
        }
    }

    fn request(
        &mut self,
        connection: ConnectionId,
        frame: Bytes,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let decoded = match codec::decode_request(frame) {
            Ok(decoded) => decoded,
            Err(DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                correlation_id,
                ..
            }) => {
                // KIP-511: answer in v0 with UNSUPPORTED_VERSION and our
                // table, so that the client retries with a version we have.
                let frame = codec::api_versions_unsupported_response(correlation_id);
                self.answer_now(connection, SlotOutput::Respond(Some(frame)));
                return;
            }
            Err(error) => {
                // Kafka closes the connection on a request it cannot parse.
                tracing::warn!(connection, %error, "closing connection after a bad request");
                self.connections.remove(&connection);
                env.responses.close(connection, &error.to_string());
                return;
            }
        };
        let header = decoded.header;
        let api_key = decoded.api_key;
        let version = decoded.api_version;
        let now_ms = env.clock.now_ms();
        let response = match decoded.body {
            RequestKind::ApiVersions(_) => Some(ResponseKind::ApiVersions(
                codec::api_versions_response(version),
            )),
            RequestKind::Metadata(request) => Some(ResponseKind::Metadata(
                self.metadata_response(request, version, env, collector),
            )),
            RequestKind::Produce(request) => {
                self.produce(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::Fetch(request) => {
                let metadata = self.metadata();
                let no_loads = fetch::Loads::default();
                let result = fetch::evaluate(
                    &request,
                    version,
                    metadata,
                    &self.node,
                    &BTreeMap::new(),
                    &no_loads,
                );
                let min_bytes = usize::try_from(request.min_bytes.max(0)).unwrap_or(0);
                let full = self.pending.len() >= PENDING_REQUESTS_MAX;
                // A fetch past a high watermark waits for read indexes
                // (`fetch::evaluate`), and one of batches on disk for their
                // reads (§8.3); otherwise an error, enough data or no wait
                // answers at once, and the rest is a long poll.
                let confirming = !result.to_confirm.is_empty();
                let loading = !result.to_load.is_empty();
                let answer_now = !confirming
                    && !loading
                    && (result.has_error
                        || result.bytes >= min_bytes.max(1)
                        || request.max_wait_ms <= 0);
                if full || answer_now {
                    Some(ResponseKind::Fetch(result.response))
                } else {
                    let reads = ReadIndexes::of(result.to_confirm.into_iter().collect());
                    let wait_ms = if confirming {
                        FETCH_CONFIRM_MS_MAX
                    } else {
                        (request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX)
                    };
                    let loads = fetch::Loads::until(now_ms + FETCH_LOAD_WAIT_MS_MAX);
                    let to_load =
                        loads.new_reads(&result.to_load, fetch::response_bytes_max(&request));
                    let id = self.park(Pending {
                        connection,
                        header,
                        api_key,
                        version,
                        deadline_ms: now_ms + wait_ms,
                        outstanding: reads.groups.len(),
                        kind: PendingKind::Fetch {
                            request,
                            reads,
                            loads,
                        },
                    });
                    self.read_indexes(id, env, collector);
                    self.load(id, to_load, env, collector);
                    self.finish_if_done(id);
                    return;
                }
            }
            RequestKind::ListOffsets(request) => {
                let no_loads = fetch::Loads::default();
                let (response, to_load) = self.list_offsets(&request, version, &no_loads);
                if to_load.is_empty() || self.pending.len() >= PENDING_REQUESTS_MAX {
                    Some(ResponseKind::ListOffsets(response))
                } else {
                    let deadline_ms = now_ms + FETCH_LOAD_WAIT_MS_MAX;
                    let id = self.park(Pending {
                        connection,
                        header,
                        api_key,
                        version,
                        deadline_ms,
                        outstanding: 0,
                        kind: PendingKind::ListOffsets {
                            request,
                            loads: fetch::Loads::for_list_offsets(deadline_ms),
                        },
                    });
                    self.load(id, to_load.into_iter().collect(), env, collector);
                    self.finish_if_done(id);
                    return;
                }
            }
            RequestKind::OffsetForLeaderEpoch(request) => Some(ResponseKind::OffsetForLeaderEpoch(
                self.offset_for_leader_epoch(request),
            )),
            RequestKind::CreateTopics(request) => {
                self.create_topics(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::DeleteTopics(request) => {
                self.delete_topics(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::CreatePartitions(request) => {
                self.create_partitions(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::InitProducerId(request) => {
                Some(ResponseKind::InitProducerId(self.init_producer_id(request)))
            }
            RequestKind::DescribeConfigs(request) => Some(ResponseKind::DescribeConfigs(
                self.describe_configs(request),
            )),
            RequestKind::DescribeCluster(request) => Some(ResponseKind::DescribeCluster(
                self.describe_cluster(request),
            )),
            RequestKind::AlterPartitionReassignments(request) => {
                self.alter_partition_reassignments(
                    connection, header, version, request, env, collector,
                );
                return;
            }
            RequestKind::AddRaftVoter(request) => {
                let node_id = u64::try_from(request.voter_id).unwrap_or(0);
                let timeout_ms = request.timeout_ms;
                let address = membership::address_of(&request.listeners);
                self.change_membership(
                    connection,
                    header,
                    version,
                    node_id,
                    Some(address),
                    timeout_ms,
                    env,
                    collector,
                );
                return;
            }
            RequestKind::RemoveRaftVoter(request) => {
                let node_id = u64::try_from(request.voter_id).unwrap_or(0);
                self.change_membership(
                    connection, header, version, node_id, None, 30_000, env, collector,
                );
                return;
            }
            RequestKind::FindCoordinator(request) => Some(ResponseKind::FindCoordinator(
                self.find_coordinator(request, version),
            )),
            RequestKind::JoinGroup(request) => {
                self.join_group(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::SyncGroup(request) => {
                self.sync_group(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::Heartbeat(request) => {
                Some(ResponseKind::Heartbeat(self.heartbeat(request, now_ms)))
            }
            RequestKind::LeaveGroup(request) => Some(ResponseKind::LeaveGroup(
                self.leave_group(request, version, env, collector),
            )),
            RequestKind::OffsetCommit(request) => {
                self.offset_commit(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::OffsetFetch(request) => {
                self.offset_fetch_start(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::DescribeGroups(request) => Some(ResponseKind::DescribeGroups(
                self.describe_groups(request, version),
            )),
            RequestKind::ListGroups(request) => {
                Some(ResponseKind::ListGroups(self.list_groups(request, version)))
            }
            RequestKind::DeleteGroups(request) => {
                self.delete_groups(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::OffsetDelete(request) => {
                self.offset_delete(connection, header, version, request, env, collector);
                return;
            }
            RequestKind::ListPartitionReassignments(request) => {
                Some(ResponseKind::ListPartitionReassignments(
                    self.list_partition_reassignments(request),
                ))
            }
            _ => None,
        };
        match response {
            Some(body) => {
                let output = encode(&header, api_key, version, &body);
                self.answer_now(connection, output);
            }
            None => {
                // The codec only decodes APIs of our version table, so this
                // is an API listed there without a handler: a programmer
                // error, but not one worth a crash of the whole node.
                tracing::error!(?api_key, "no handler for an advertised API");
                self.connections.remove(&connection);
                env.responses.close(connection, "unsupported API");
            }
        }
    }

    fn slot(&mut self, connection: ConnectionId, id: u64) {
        self.connections
            .entry(connection)
            .or_default()
            .push_back(Slot { id, output: None });
    }

    fn answer_now(&mut self, connection: ConnectionId, output: SlotOutput) {
        let id = self.next_id();
        self.connections
            .entry(connection)
            .or_default()
            .push_back(Slot {
                id,
                output: Some(output),
            });
    }

    fn fill(&mut self, connection: ConnectionId, id: u64, output: SlotOutput) {
        if let Some(slots) = self.connections.get_mut(&connection) {
            if let Some(slot) = slots.iter_mut().find(|slot| slot.id == id) {
                slot.output = Some(output);
            }
        }
    }

    fn flush(&mut self, env: &mut BrokerEnv<'_>) {
        let mut closed = Vec::new();
        for (connection, slots) in self.connections.iter_mut() {
            while slots.front().is_some_and(|slot| slot.output.is_some()) {
                let slot = slots.pop_front().expect("front exists");
                match slot.output.expect("checked above") {
                    SlotOutput::Respond(frame) => env.responses.respond(*connection, frame),
                    SlotOutput::Close(reason) => {
                        env.responses.close(*connection, &reason);
                        closed.push(*connection);
                        break;
                    }
                }
            }
        }
        for connection in closed {
            self.connections.remove(&connection);
        }
        self.connections.retain(|_, slots| !slots.is_empty());
    }

    // ---------------------------------------------------------------- Metadata

    fn leader_of(&self, group: GroupId) -> (i32, i32) {
        match self.node.summary(group) {
            Some(view) => match view.leader {
                Some(leader) if view.role != Role::Leader || self.node.leader_ready(group) => {
                    (leader as i32, view.term as i32)
                }
                _ => (-1, view.term as i32),
            },
            None => (-1, -1),
        }
    }

    fn metadata_response(
        &mut self,
        request: MetadataRequest,
        version: i16,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) -> MetadataResponse {
        let brokers = self
            .members()
            .iter()
            .map(|node| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(node.node_id as i32))
                    .with_host(StrBytes::from_string(node.host.clone()))
                    .with_port(i32::from(node.port))
                    .with_rack(node.rack.clone().map(StrBytes::from_string))
            })
            .collect();
        let (controller, _) = self.leader_of(METADATA_GROUP);
        let auto_create = self.config.topic_defaults.auto_create
            && (version < 4 || request.allow_auto_topic_creation);
        let mut to_create = Vec::new();
        let mut topics = Vec::new();
        {
            let metadata = self.metadata();
            let wanted: Vec<(Option<String>, Uuid)> = match &request.topics {
                None => metadata
                    .map(|metadata| {
                        metadata
                            .topics()
                            .keys()
                            // Like Kafka's internal topics, the offsets
                            // topic shows only when asked for by name.
                            .filter(|name| name.as_str() != OFFSETS_TOPIC)
                            .map(|name| (Some(name.clone()), Uuid::nil()))
                            .collect()
                    })
                    .unwrap_or_default(),
                Some(list) if list.is_empty() && version == 0 => metadata
                    .map(|metadata| {
                        metadata
                            .topics()
                            .keys()
                            // Like Kafka's internal topics, the offsets
                            // topic shows only when asked for by name.
                            .filter(|name| name.as_str() != OFFSETS_TOPIC)
                            .map(|name| (Some(name.clone()), Uuid::nil()))
                            .collect()
                    })
                    .unwrap_or_default(),
                Some(list) => list
                    .iter()
                    .map(|topic| {
                        (
                            topic.name.as_ref().map(|name| name.0.to_string()),
                            topic.topic_id,
                        )
                    })
                    .collect(),
            };
            for (name, id) in wanted {
                let found = match (&name, metadata) {
                    (Some(name), Some(metadata)) => metadata.topic(name),
                    (None, Some(metadata)) => metadata.topic_by_id(id.as_bytes()),
                    _ => None,
                };
                let mut topic_response = MetadataResponseTopic::default();
                match found {
                    Some(topic) => {
                        topic_response = self.describe_topic(topic);
                    }
                    None => {
                        topic_response.name =
                            name.clone().map(|n| TopicName(StrBytes::from_string(n)));
                        topic_response.topic_id = id;
                        topic_response.error_code = match &name {
                            None => error_code::UNKNOWN_TOPIC_ID,
                            Some(name) if validate_topic_name(name).is_err() => {
                                error_code::INVALID_TOPIC_EXCEPTION
                            }
                            Some(name) if auto_create => {
                                to_create.push(name.clone());
                                error_code::LEADER_NOT_AVAILABLE
                            }
                            Some(_) => error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        };
                    }
                }
                topics.push(topic_response);
            }
        }
        for name in to_create {
            self.auto_create(name, env, collector);
        }
        MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(Some(StrBytes::from_string(self.config.cluster_id.clone())))
            .with_controller_id(BrokerId(if controller < 0 {
                // Clients send CreateTopics to the controller: before an
                // election ends, name this node, which answers NOT_CONTROLLER
                // if it turns out not to lead.
                self.config.node_id as i32
            } else {
                controller
            }))
            .with_topics(topics)
    }

    fn describe_topic(&self, topic: &Topic) -> MetadataResponseTopic {
        let partitions = topic
            .partitions
            .iter()
            .enumerate()
            .map(|(index, placement)| {
                let (mut leader, epoch) = self.leader_of(placement.group);
                if leader < 0 && !self.node.hosts(placement.group) {
                    // A node without a replica cannot know the leader; the
                    // preferred replica usually is (leadership returns to it,
                    // §9), and a wrong guess gets NOT_LEADER_OR_FOLLOWER from
                    // a node that knows, whose Metadata the client asks next.
                    leader = placement.replicas.first().map_or(-1, |node| *node as i32);
                }
                let replicas: Vec<BrokerId> = placement
                    .replicas
                    .iter()
                    .map(|node| BrokerId(*node as i32))
                    .collect();
                // The leader knows which replicas keep up; another node
                // cannot, and reports them all (`runnel cluster status`
                // asks each partition's leader).
                let in_sync: Vec<BrokerId> = if leader == self.config.node_id as i32 {
                    self.node
                        .replicas_in_sync(placement.group, IN_SYNC_LAG_MS)
                        .into_iter()
                        .map(|node| BrokerId(node as i32))
                        .collect()
                } else {
                    replicas.clone()
                };
                let mut partition = MetadataResponsePartition::default()
                    .with_partition_index(index as i32)
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(epoch.max(0))
                    .with_replica_nodes(replicas)
                    .with_isr_nodes(in_sync);
                if leader < 0 {
                    partition.error_code = error_code::LEADER_NOT_AVAILABLE;
                }
                partition
            })
            .collect();
        MetadataResponseTopic::default()
            .with_is_internal(topic.name == OFFSETS_TOPIC)
            .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
            .with_topic_id(Uuid::from_bytes(topic.id))
            .with_partitions(partitions)
    }

    fn auto_create(&mut self, name: String, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        if !self.node.leader_ready(METADATA_GROUP) {
            return;
        }
        let defaults = &self.config.topic_defaults;
        let command = MetadataCommand::CreateTopic {
            name,
            partitions: defaults.partitions.max(1) as u32,
            replication_factor: defaults
                .replication_factor
                .clamp(1, self.members().len() as i16) as u16,
            configs: BTreeMap::new(),
            nodes: self.cluster_nodes(),
            racks: self.cluster_racks(),
        };
        // Nobody waits for the outcome: the client retries its Metadata.
        let data = command.encode();
        self.unawaited(METADATA_GROUP, ClientOp::Propose { data }, env, collector);
    }

    /// Each node's rack; empty when racks are not configured.
    fn cluster_racks(&self) -> BTreeMap<NodeId, String> {
        self.members()
            .iter()
            .filter_map(|node| Some((node.node_id, node.rack.clone()?)))
            .collect()
    }

    fn cluster_nodes(&self) -> Vec<NodeId> {
        self.members().iter().map(|node| node.node_id).collect()
    }

    // ----------------------------------------------------------------- Produce

    fn produce(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: ProduceRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let now_ms = env.clock.now_ms();
        let wall_ms = env.clock.wall_clock_ms();
        let id = self.next_id();
        let no_response = request.acks == 0;
        let mut response = ProduceResponse::default();
        let mut proposals: Vec<(GroupId, Vec<u8>, usize)> = Vec::new();
        let mut parts = Vec::new();
        let mut auto_create = Vec::new();
        let valid_acks = (-1..=1).contains(&request.acks);
        for (topic_index, topic) in request.topic_data.iter().enumerate() {
            let name = topic.name.0.to_string();
            let found = self
                .metadata()
                .and_then(|metadata| metadata.topic(&name))
                .cloned();
            let mut partition_responses = Vec::new();
            for (partition_index, partition) in topic.partition_data.iter().enumerate() {
                let mut answer = PartitionProduceResponse::default()
                    .with_index(partition.index)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1);
                let placement = found.as_ref().and_then(|topic| {
                    usize::try_from(partition.index)
                        .ok()
                        .and_then(|index| topic.partitions.get(index))
                });
                let outcome: Result<Vec<u8>, (i16, String)> = (|| {
                    if !valid_acks {
                        return Err((
                            error_code::INVALID_REQUIRED_ACKS,
                            format!("acks must be 0, 1 or -1, not {}", request.acks),
                        ));
                    }
                    if request.transactional_id.is_some() {
                        return Err((
                            error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                            "transactions are not supported".into(),
                        ));
                    }
                    let Some(topic) = found.as_ref() else {
                        if validate_topic_name(&name).is_err() {
                            return Err((
                                error_code::INVALID_TOPIC_EXCEPTION,
                                format!("invalid topic name \"{}\"", name.escape_debug()),
                            ));
                        }
                        if self.config.topic_defaults.auto_create {
                            auto_create.push(name.clone());
                        }
                        return Err((
                            error_code::UNKNOWN_TOPIC_OR_PARTITION,
                            format!("topic \"{name}\" does not exist"),
                        ));
                    };
                    let Some(placement) = placement else {
                        return Err((
                            error_code::UNKNOWN_TOPIC_OR_PARTITION,
                            format!("topic \"{name}\" has no partition {}", partition.index),
                        ));
                    };
                    if name == OFFSETS_TOPIC {
                        return Err((
                            error_code::INVALID_TOPIC_EXCEPTION,
                            format!(
                                "\"{OFFSETS_TOPIC}\" is written by the group coordinators only"
                            ),
                        ));
                    }
                    if !self.node.leader_ready(placement.group) {
                        return Err((
                            error_code::NOT_LEADER_OR_FOLLOWER,
                            "this node does not lead the partition".into(),
                        ));
                    }
                    let Some(records) = partition.records.as_ref() else {
                        return Err((error_code::INVALID_RECORD, "no records".into()));
                    };
                    let batch_header = runnel_kafka::batch::validate(records)
                        .map_err(|error| (error.kafka_error_code(), error.to_string()))?;
                    let Some(log) = self
                        .node
                        .machine(placement.group)
                        .and_then(|machine| machine.partition())
                    else {
                        return Err((
                            error_code::INVALID_TOPIC_EXCEPTION,
                            "the partition holds no records".into(),
                        ));
                    };
                    if let Some(outcome) = log.precheck(&batch_header) {
                        return match outcome {
                            ProduceOutcome::Duplicate { base_offset } => {
                                Err((0, base_offset.to_string()))
                            }
                            ProduceOutcome::Refused { error_code }
                                if error_code == partition_error::KAFKA_STORAGE_ERROR =>
                            {
                                Err((
                                    error_code,
                                    format!(
                                        "the partition's index is full ({} bytes); retry once retention drops some",
                                        runnel_core::partition::INDEX_SNAPSHOT_BYTES_MAX
                                    ),
                                ))
                            }
                            ProduceOutcome::Refused { error_code } => {
                                Err((error_code, "refused by the producer state".into()))
                            }
                            ProduceOutcome::Appended { .. } => unreachable!("precheck"),
                        };
                    }
                    let command = PartitionCommand::Produce(ProduceCommand {
                        append_time_ms: wall_ms,
                        log_append_time: configs::log_append_time(&topic.configs),
                        batch: records.to_vec(),
                    });
                    Ok(command.encode())
                })();
                match outcome {
                    Ok(data) => {
                        let group = placement.expect("checked").group;
                        proposals.push((group, data, parts.len()));
                        parts.push((topic_index, partition_index));
                    }
                    Err((0, base_offset)) => {
                        // A retried batch already in the log.
                        answer.base_offset = base_offset.parse().unwrap_or(-1);
                    }
                    Err((code, message)) => {
                        if refusal_is_bad_input(code) {
                            // Issue 4: bad input gets its error code and a
                            // log line; routine, retriable refusals (a
                            // leader moving) stay at debug.
                            tracing::warn!(topic = %name, partition = partition.index, code, %message, "produce refused");
                        } else {
                            tracing::debug!(topic = %name, partition = partition.index, code, %message, "produce refused");
                        }
                        answer.error_code = code;
                        if version >= 8 {
                            answer.error_message = Some(StrBytes::from_string(message));
                        }
                    }
                }
                partition_responses.push(answer);
            }
            response.responses.push(
                TopicProduceResponse::default()
                    .with_name(topic.name.clone())
                    .with_partition_responses(partition_responses),
            );
        }
        for name in auto_create {
            self.auto_create(name, env, collector);
        }
        self.slot(connection, id);
        let timeout_ms = (request.timeout_ms.max(0) as u64).min(REQUEST_TIMEOUT_MS_MAX);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::Produce,
                version,
                deadline_ms: now_ms + timeout_ms.max(1),
                outstanding: proposals.len(),
                kind: PendingKind::Produce {
                    response,
                    parts,
                    no_response,
                },
            },
        );
        for (group, data, part) in proposals {
            self.propose(group, data, id, part, env, collector);
        }
        // FAILPOINT (`ack-before-commit` builds only): answer before commit.
        #[cfg(feature = "ack-before-commit")]
        self.ack_before_commit(id, &request);
        self.finish_if_done(id);
    }

    // ------------------------------------------------------------ ListOffsets

    /// The answer to a ListOffsets, with the batches read for it in
    /// `loads`, and the reads of batches still on disk that would make a
    /// lookup by timestamp exact (docs/protocol.md §8.3).
    fn list_offsets(
        &self,
        request: &ListOffsetsRequest,
        version: i16,
        loads: &fetch::Loads,
    ) -> (ListOffsetsResponse, BTreeSet<(GroupId, u64)>) {
        let mut to_load = BTreeSet::new();
        let metadata = self.metadata();
        let topics = request
            .topics
            .iter()
            .map(|topic| {
                let found = metadata.and_then(|metadata| metadata.topic(topic.name.0.as_str()));
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|partition| {
                        let mut answer = ListOffsetsPartitionResponse::default()
                            .with_partition_index(partition.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1)
                            .with_leader_epoch(-1);
                        let placement = found.and_then(|topic| {
                            usize::try_from(partition.partition_index)
                                .ok()
                                .and_then(|index| topic.partitions.get(index))
                        });
                        let Some(placement) = placement else {
                            answer.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                            return answer;
                        };
                        let log = self
                            .node
                            .machine(placement.group)
                            .and_then(|machine| machine.partition());
                        let Some(log) = log.filter(|_| self.node.leader_ready(placement.group))
                        else {
                            answer.error_code = error_code::NOT_LEADER_OR_FOLLOWER;
                            return answer;
                        };
                        let epoch = self.leader_of(placement.group).1;
                        if let Some(code) =
                            fetch::leader_epoch_error(partition.current_leader_epoch, epoch)
                        {
                            answer.error_code = code;
                            return answer;
                        }
                        if version >= 4 {
                            answer.leader_epoch = epoch;
                        }
                        match partition.timestamp {
                            -1 => answer.offset = log.high_watermark(),
                            -2 => answer.offset = log.log_start_offset(),
                            -3 => {
                                if let Some((offset, timestamp)) = max_timestamp(
                                    &self.node,
                                    placement.group,
                                    log,
                                    loads,
                                    &mut to_load,
                                ) {
                                    answer.offset = offset;
                                    answer.timestamp = timestamp;
                                }
                            }
                            target if target >= 0 => {
                                if let Some((offset, timestamp)) = offset_for_time(
                                    &self.node,
                                    placement.group,
                                    log,
                                    target,
                                    loads,
                                    &mut to_load,
                                ) {
                                    answer.offset = offset;
                                    answer.timestamp = timestamp;
                                }
                            }
                            _ => answer.error_code = error_code::INVALID_REQUEST,
                        }
                        answer
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(topic.name.clone())
                    .with_partitions(partitions)
            })
            .collect();
        (ListOffsetsResponse::default().with_topics(topics), to_load)
    }

    fn offset_for_leader_epoch(
        &self,
        request: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let metadata = self.metadata();
        let topics = request
            .topics
            .iter()
            .map(|topic| {
                let found = metadata.and_then(|metadata| metadata.topic(topic.topic.0.as_str()));
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|partition| {
                        let mut answer = EpochEndOffset::default()
                            .with_partition(partition.partition)
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                        let placement = found.and_then(|topic| {
                            usize::try_from(partition.partition)
                                .ok()
                                .and_then(|index| topic.partitions.get(index))
                        });
                        let Some(placement) = placement else {
                            answer.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                            return answer;
                        };
                        let log = self
                            .node
                            .machine(placement.group)
                            .and_then(|machine| machine.partition());
                        let log = log.filter(|_| self.node.leader_ready(placement.group));
                        let epoch = self.leader_of(placement.group).1;
                        // KIP-320: a consumer validating its position after
                        // a leader change must not be answered by a leader
                        // it knows to be old (or one older than the leader
                        // it read from): that log may end before the
                        // position, which would look like a truncation and
                        // make the consumer reset.
                        match (
                            log,
                            fetch::leader_epoch_error(partition.current_leader_epoch, epoch),
                        ) {
                            (None, _) => answer.error_code = error_code::NOT_LEADER_OR_FOLLOWER,
                            (Some(_), Some(code)) => answer.error_code = code,
                            (Some(log), None) => {
                                let (epoch, end_offset) =
                                    log.end_offset_for_epoch(partition.leader_epoch);
                                answer.leader_epoch = epoch;
                                answer.end_offset = end_offset;
                            }
                        }
                        answer
                    })
                    .collect();
                OffsetForLeaderTopicResult::default()
                    .with_topic(topic.topic.clone())
                    .with_partitions(partitions)
            })
            .collect();
        OffsetForLeaderEpochResponse::default().with_topics(topics)
    }

    // ------------------------------------------------------------------ Topics

    fn create_topics(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: CreateTopicsRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let id = self.next_id();
        let now_ms = env.clock.now_ms();
        let leader = self.node.leader_ready(METADATA_GROUP);
        let nodes = self.cluster_nodes();
        let mut response = CreateTopicsResponse::default();
        let mut proposals = Vec::new();
        for (index, topic) in request.topics.iter().enumerate() {
            let name = topic.name.0.to_string();
            let partitions = if topic.num_partitions == -1 {
                self.config.topic_defaults.partitions
            } else {
                topic.num_partitions
            };
            let replication_factor = if topic.replication_factor == -1 {
                self.config.topic_defaults.replication_factor
            } else {
                topic.replication_factor
            };
            let mut result = CreatableTopicResult::default()
                .with_name(topic.name.clone())
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor);
            let mut topic_configs = BTreeMap::new();
            let checked: Result<(), (i16, String)> = (|| {
                validate_topic_name(&name)
                    .map_err(|message| (error_code::INVALID_TOPIC_EXCEPTION, message))?;
                if self
                    .metadata()
                    .is_some_and(|metadata| metadata.topic(&name).is_some())
                {
                    return Err((
                        error_code::TOPIC_ALREADY_EXISTS,
                        format!("topic \"{name}\" already exists"),
                    ));
                }
                if partitions <= 0 {
                    return Err((
                        error_code::INVALID_PARTITIONS,
                        "the number of partitions must be positive".into(),
                    ));
                }
                if replication_factor <= 0 || replication_factor as usize > nodes.len() {
                    return Err((
                        error_code::INVALID_REPLICATION_FACTOR,
                        format!(
                            "replication factor {replication_factor} is not between 1 and the {} node(s) of the cluster",
                            nodes.len()
                        ),
                    ));
                }
                if !topic.assignments.is_empty() {
                    return Err((
                        error_code::INVALID_REQUEST,
                        "manual replica assignments are not supported".into(),
                    ));
                }
                for config in &topic.configs {
                    let key = config.name.to_string();
                    let value = config
                        .value
                        .as_ref()
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    configs::validate(&key, &value)
                        .map_err(|message| (error_code::INVALID_CONFIG, message))?;
                    topic_configs.insert(key, value);
                }
                if !leader {
                    return Err((
                        error_code::NOT_CONTROLLER,
                        "this node does not lead the metadata group".into(),
                    ));
                }
                Ok(())
            })();
            match checked {
                Err((code, message)) => {
                    if code != error_code::NOT_CONTROLLER {
                        tracing::warn!(topic = %name, code, %message, "create topic refused");
                    }
                    result.error_code = code;
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                    if version >= 1 {
                        result.error_message = Some(StrBytes::from_string(message));
                    }
                }
                Ok(()) => {
                    if version >= 5 {
                        result.configs = Some(
                            configs::effective(&topic_configs, &self.config.topic_defaults)
                                .into_iter()
                                .map(|(key, value, set)| {
                                    CreatableTopicConfigs::default()
                                        .with_name(StrBytes::from_string(key))
                                        .with_value(Some(StrBytes::from_string(value)))
                                        .with_config_source(if set { 1 } else { 5 })
                                })
                                .collect(),
                        );
                    }
                    if !request.validate_only {
                        let command = MetadataCommand::CreateTopic {
                            name: name.clone(),
                            partitions: partitions as u32,
                            replication_factor: replication_factor as u16,
                            configs: topic_configs,
                            nodes: nodes.clone(),
                            racks: self.cluster_racks(),
                        };
                        proposals.push((command.encode(), index));
                    }
                }
            }
            response.topics.push(result);
        }
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::CreateTopics,
                version,
                deadline_ms: now_ms
                    + (request.timeout_ms.max(1) as u64).min(REQUEST_TIMEOUT_MS_MAX),
                outstanding: proposals.len(),
                kind: PendingKind::CreateTopics { response },
            },
        );
        for (data, part) in proposals {
            self.propose(METADATA_GROUP, data, id, part, env, collector);
        }
        self.finish_if_done(id);
    }

    fn delete_topics(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: DeleteTopicsRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let id = self.next_id();
        let now_ms = env.clock.now_ms();
        let leader = self.node.leader_ready(METADATA_GROUP);
        let mut wanted: Vec<(Option<String>, Uuid)> = request
            .topic_names
            .iter()
            .map(|name| (Some(name.0.to_string()), Uuid::nil()))
            .collect();
        wanted.extend(request.topics.iter().map(|topic| {
            (
                topic.name.as_ref().map(|name| name.0.to_string()),
                topic.topic_id,
            )
        }));
        let mut response = DeleteTopicsResponse::default();
        let mut proposals = Vec::new();
        for (index, (name, topic_id)) in wanted.into_iter().enumerate() {
            let found = self.metadata().and_then(|metadata| match &name {
                Some(name) => metadata.topic(name),
                None => metadata.topic_by_id(topic_id.as_bytes()),
            });
            let mut result = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))))
                .with_topic_id(topic_id);
            match found {
                None => {
                    result.error_code = if name.is_some() {
                        error_code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        error_code::UNKNOWN_TOPIC_ID
                    };
                }
                Some(_) if !leader => result.error_code = error_code::NOT_CONTROLLER,
                Some(topic) => {
                    result.name = Some(TopicName(StrBytes::from_string(topic.name.clone())));
                    result.topic_id = Uuid::from_bytes(topic.id);
                    let command = MetadataCommand::DeleteTopic {
                        name: topic.name.clone(),
                    };
                    proposals.push((command.encode(), index));
                }
            }
            if version >= 5 && result.error_code != 0 {
                result.error_message = Some(StrBytes::from_static_str("topic not deleted"));
            }
            response.responses.push(result);
        }
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::DeleteTopics,
                version,
                deadline_ms: now_ms
                    + (request.timeout_ms.max(1) as u64).min(REQUEST_TIMEOUT_MS_MAX),
                outstanding: proposals.len(),
                kind: PendingKind::DeleteTopics { response },
            },
        );
        for (data, part) in proposals {
            self.propose(METADATA_GROUP, data, id, part, env, collector);
        }
        self.finish_if_done(id);
    }

    fn create_partitions(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        request: CreatePartitionsRequest,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let id = self.next_id();
        let now_ms = env.clock.now_ms();
        let leader = self.node.leader_ready(METADATA_GROUP);
        let nodes = self.cluster_nodes();
        let mut response = CreatePartitionsResponse::default();
        let mut proposals = Vec::new();
        for (index, topic) in request.topics.iter().enumerate() {
            let name = topic.name.0.to_string();
            let current = self
                .metadata()
                .and_then(|metadata| metadata.topic(&name))
                .map(|topic| topic.partitions.len() as i32);
            let mut result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            let error = match current {
                None => Some((
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic \"{name}\" does not exist"),
                )),
                Some(current) if topic.count <= current => Some((
                    error_code::INVALID_PARTITIONS,
                    format!(
                        "topic \"{name}\" has {current} partitions; the new count must be more"
                    ),
                )),
                Some(_) if topic.assignments.is_some() => Some((
                    error_code::INVALID_REQUEST,
                    "manual replica assignments are not supported".into(),
                )),
                Some(_) if !leader => Some((
                    error_code::NOT_CONTROLLER,
                    "this node does not lead the metadata group".into(),
                )),
                Some(_) => None,
            };
            match error {
                Some((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(StrBytes::from_string(message));
                }
                None if request.validate_only => {}
                None => {
                    let command = MetadataCommand::CreatePartitions {
                        name,
                        count: topic.count as u32,
                        nodes: nodes.clone(),
                        racks: self.cluster_racks(),
                    };
                    proposals.push((command.encode(), index));
                }
            }
            response.results.push(result);
        }
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: ApiKey::CreatePartitions,
                version,
                deadline_ms: now_ms
                    + (request.timeout_ms.max(1) as u64).min(REQUEST_TIMEOUT_MS_MAX),
                outstanding: proposals.len(),
                kind: PendingKind::CreatePartitions { response },
            },
        );
        for (data, part) in proposals {
            self.propose(METADATA_GROUP, data, id, part, env, collector);
        }
        self.finish_if_done(id);
    }

    /// Producer ids come from this node alone, so that any node answers
    /// InitProducerId (librdkafka keeps asking the broker it first asked):
    /// the node id, the node's incarnation (raised durably by the shell at
    /// every start) and a counter make each id unique in the cluster
    /// without a round of consensus.
    fn init_producer_id(&mut self, request: InitProducerIdRequest) -> InitProducerIdResponse {
        let response = InitProducerIdResponse::default()
            .with_producer_id((-1).into())
            .with_producer_epoch(-1);
        if request.transactional_id.is_some() {
            return response.with_error_code(error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
        }
        if self.next_producer_counter > PRODUCER_COUNTER_MAX {
            return response.with_error_code(error_code::COORDINATOR_NOT_AVAILABLE);
        }
        let producer_id = ((self.config.node_id as i64) << 52)
            | ((self.config.incarnation as i64) << 32)
            | self.next_producer_counter as i64;
        self.next_producer_counter += 1;
        response
            .with_producer_id(producer_id.into())
            .with_producer_epoch(0)
    }

    fn describe_configs(&self, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
        let metadata = self.metadata();
        let results = request
            .resources
            .iter()
            .map(|resource| {
                let mut result = DescribeConfigsResult::default()
                    .with_resource_type(resource.resource_type)
                    .with_resource_name(resource.resource_name.clone());
                let listed: Vec<(String, String, bool)> = match resource.resource_type {
                    // TOPIC
                    2 => match metadata.and_then(|m| m.topic(resource.resource_name.as_str())) {
                        Some(topic) => {
                            configs::effective(&topic.configs, &self.config.topic_defaults)
                        }
                        None => {
                            result.error_code = error_code::UNKNOWN_TOPIC_OR_PARTITION;
                            result.error_message =
                                Some(StrBytes::from_static_str("the topic does not exist"));
                            Vec::new()
                        }
                    },
                    // BROKER
                    4 => {
                        let defaults = &self.config.topic_defaults;
                        vec![
                            ("broker.id".into(), self.config.node_id.to_string(), false),
                            (
                                "num.partitions".into(),
                                defaults.partitions.to_string(),
                                false,
                            ),
                            (
                                "default.replication.factor".into(),
                                defaults.replication_factor.to_string(),
                                false,
                            ),
                            (
                                "log.retention.ms".into(),
                                defaults.retention_ms.to_string(),
                                false,
                            ),
                            (
                                "log.retention.bytes".into(),
                                defaults.retention_bytes.to_string(),
                                false,
                            ),
                            (
                                "log.segment.bytes".into(),
                                defaults.segment_bytes.to_string(),
                                false,
                            ),
                            (
                                "auto.create.topics.enable".into(),
                                defaults.auto_create.to_string(),
                                false,
                            ),
                        ]
                    }
                    _ => {
                        result.error_code = error_code::INVALID_REQUEST;
                        result.error_message =
                            Some(StrBytes::from_static_str("unsupported resource type"));
                        Vec::new()
                    }
                };
                result.configs = listed
                    .into_iter()
                    // Null asks for every key; so does an empty list, which
                    // some clients send for "all".
                    .filter(|(key, _, _)| match &resource.configuration_keys {
                        Some(keys) if !keys.is_empty() => {
                            keys.iter().any(|wanted| wanted.as_str() == key)
                        }
                        _ => true,
                    })
                    .map(|(key, value, set)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(StrBytes::from_string(key))
                            .with_value(Some(StrBytes::from_string(value)))
                            .with_read_only(resource.resource_type == 4)
                            .with_config_source(if set { 1 } else { 5 })
                    })
                    .collect();
                result
            })
            .collect();
        DescribeConfigsResponse::default().with_results(results)
    }

    fn describe_cluster(&self, _request: DescribeClusterRequest) -> DescribeClusterResponse {
        let (controller, _) = self.leader_of(METADATA_GROUP);
        DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_string(self.config.cluster_id.clone()))
            .with_controller_id(BrokerId(controller))
            .with_brokers(
                self.members()
                    .iter()
                    .map(|node| {
                        DescribeClusterBroker::default()
                            .with_broker_id(BrokerId(node.node_id as i32))
                            .with_host(StrBytes::from_string(node.host.clone()))
                            .with_port(i32::from(node.port))
                            .with_rack(node.rack.clone().map(StrBytes::from_string))
                    })
                    .collect(),
            )
    }

    // ------------------------------------------------------- Replies, deadlines

    fn core_reply(&mut self, response: ClientResponse, now_ms: u64) {
        if self.group_store_reply(response.request_id, &response.result, now_ms) {
            return;
        }
        let Some((pending_id, part)) = self.proposals.remove(&response.request_id) else {
            return;
        };
        let Some(pending) = self.pending.get_mut(&pending_id) else {
            return;
        };
        let version = pending.version;
        match &mut pending.kind {
            PendingKind::Produce {
                response: produce,
                parts,
                ..
            } => {
                let (topic, partition) = parts[part];
                let answer = &mut produce.responses[topic].partition_responses[partition];
                match response.result {
                    Ok(ClientReply::Applied(Applied::Produce(outcome))) => match outcome {
                        ProduceOutcome::Appended {
                            base_offset,
                            log_append_time_ms,
                            log_start_offset,
                        } => {
                            answer.base_offset = base_offset;
                            answer.log_append_time_ms = log_append_time_ms;
                            answer.log_start_offset = log_start_offset;
                        }
                        ProduceOutcome::Duplicate { base_offset } => {
                            answer.base_offset = base_offset;
                        }
                        ProduceOutcome::Refused { error_code } => answer.error_code = error_code,
                    },
                    Ok(_) => answer.error_code = error_code::UNKNOWN_SERVER_ERROR,
                    Err(ClientError::Rejected(message)) => {
                        answer.error_code = error_code::REQUEST_TIMED_OUT;
                        if version >= 8 {
                            answer.error_message = Some(StrBytes::from_string(message));
                        }
                    }
                    // Leadership lost while the batch was in flight: it may
                    // still commit under the next leader. REQUEST_TIMED_OUT
                    // tells the client so ("possibly persisted" in
                    // librdkafka); NOT_LEADER_OR_FOLLOWER would tell it the
                    // batch was not written, and a client that then gives up
                    // would see it read back (an aborted read). Either way it
                    // retries, and idempotence makes the retry safe.
                    Err(ClientError::Unknown) => {
                        answer.error_code = error_code::REQUEST_TIMED_OUT;
                        if version >= 8 {
                            answer.error_message = Some(StrBytes::from_static_str(
                                "leadership moved while the batch was in flight; it may have been written",
                            ));
                        }
                    }
                    // Refused before it was proposed: not written.
                    Err(ClientError::NotLeader { .. } | ClientError::UnknownGroup) => {
                        answer.error_code = error_code::NOT_LEADER_OR_FOLLOWER
                    }
                }
            }
            PendingKind::CreateTopics { response: create } => {
                let result = &mut create.topics[part];
                metadata_result(
                    response.result,
                    &mut result.error_code,
                    &mut result.error_message,
                );
                if result.error_code != 0 {
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                    result.configs = None;
                } else if let Some(topic) = self
                    .node
                    .machine(METADATA_GROUP)
                    .and_then(|machine| machine.metadata())
                    .and_then(|metadata| metadata.topic(result.name.0.as_str()))
                {
                    result.topic_id = Uuid::from_bytes(topic.id);
                }
            }
            PendingKind::DeleteTopics { response: delete } => {
                let result = &mut delete.responses[part];
                metadata_result(
                    response.result,
                    &mut result.error_code,
                    &mut result.error_message,
                );
            }
            PendingKind::CreatePartitions { response: create } => {
                let result = &mut create.results[part];
                metadata_result(
                    response.result,
                    &mut result.error_code,
                    &mut result.error_message,
                );
            }
            PendingKind::Voter {
                error_code,
                error_message,
                ..
            } => {
                // Set to REQUEST_TIMED_OUT when proposed.
                *error_code = 0;
                *error_message = None;
                metadata_result(response.result, error_code, error_message);
            }
            PendingKind::AlterReassignments {
                response: alter,
                parts,
            } => {
                let (topic, partition) = parts[part];
                let result = &mut alter.responses[topic].partitions[partition];
                // Set to REQUEST_TIMED_OUT when proposed: a part never
                // answered keeps it.
                result.error_code = 0;
                result.error_message = None;
                metadata_result(
                    response.result,
                    &mut result.error_code,
                    &mut result.error_message,
                );
            }
            PendingKind::OffsetCommit { .. }
            | PendingKind::DeleteGroups { .. }
            | PendingKind::OffsetDelete { .. } => {
                let mut kind = std::mem::replace(
                    &mut pending.kind,
                    PendingKind::Group {
                        fallback: ResponseKind::Heartbeat(Default::default()),
                    },
                );
                self.group_command_reply(&mut kind, part, response.result);
                let pending = self.pending.get_mut(&pending_id).expect("still pending");
                pending.kind = kind;
            }
            PendingKind::Fetch { loads, .. } | PendingKind::ListOffsets { loads, .. }
                if part >= LOAD_PART_BASE =>
            {
                let result = match response.result {
                    Ok(ClientReply::Entries { entries }) => Ok(entries),
                    _ => Err(()),
                };
                loads.answered(part - LOAD_PART_BASE, result);
            }
            PendingKind::OffsetFetch { reads, .. } | PendingKind::Fetch { reads, .. } => {
                reads.answered(part, &response.result);
            }
            PendingKind::Group { .. } | PendingKind::ListOffsets { .. } => {}
        }
        let pending = self.pending.get_mut(&pending_id).expect("still pending");
        pending.outstanding -= 1;
        self.finish_if_done(pending_id);
    }

    /// Answers a pending request whose proposals have all been answered.
    fn finish_if_done(&mut self, id: u64) {
        let done = self.pending.get(&id).is_some_and(|pending| {
            let waits_otherwise = match &pending.kind {
                // A long poll is answered by `expire`; a fetch waiting for
                // read indexes, once they are in.
                PendingKind::Fetch { reads, .. } => reads.groups.is_empty(),
                // §8.3: its reads may want more (`expire` asks them).
                PendingKind::ListOffsets { .. } => true,
                PendingKind::Group { .. } => true,
                _ => false,
            };
            pending.outstanding == 0 && !waits_otherwise && self.leaders_settled(pending)
        });
        if done {
            let pending = self.pending.remove(&id).expect("checked");
            self.answer_pending(id, pending);
        }
    }

    /// Whether the partitions a CreateTopics or CreatePartitions made have
    /// leaders, where this node hosts them: Kafka answers once its
    /// controller has elected them, and clients produce right after.
    fn leaders_settled(&self, pending: &Pending) -> bool {
        let names: Vec<&str> = match &pending.kind {
            PendingKind::CreateTopics { response } => response
                .topics
                .iter()
                .filter(|topic| topic.error_code == 0)
                .map(|topic| topic.name.0.as_str())
                .collect(),
            PendingKind::CreatePartitions { response } => response
                .results
                .iter()
                .filter(|topic| topic.error_code == 0)
                .map(|topic| topic.name.0.as_str())
                .collect(),
            _ => return true,
        };
        let Some(metadata) = self.metadata() else {
            return true;
        };
        names
            .into_iter()
            .filter_map(|name| metadata.topic(name))
            .flat_map(|topic| topic.partitions.iter())
            .filter(|placement| placement.replicas.contains(&self.config.node_id))
            .all(|placement| match self.node.summary(placement.group) {
                // A leader serves once it has committed an entry of its term.
                Some(view) if view.leader == Some(self.config.node_id) => {
                    self.node.leader_ready(placement.group)
                }
                Some(view) => view.leader.is_some(),
                None => false,
            })
    }

    fn answer_pending(&mut self, id: u64, pending: Pending) {
        let body = match pending.kind {
            PendingKind::Produce {
                no_response: true, ..
            } => {
                self.fill(pending.connection, id, SlotOutput::Respond(None));
                return;
            }
            PendingKind::Produce { response, .. } => ResponseKind::Produce(response),
            PendingKind::CreateTopics { response } => ResponseKind::CreateTopics(response),
            PendingKind::DeleteTopics { response } => ResponseKind::DeleteTopics(response),
            PendingKind::CreatePartitions { response } => ResponseKind::CreatePartitions(response),
            PendingKind::Voter {
                add,
                error_code,
                error_message,
            } => membership::voter_response(add, error_code, error_message),
            PendingKind::AlterReassignments { response, .. } => {
                ResponseKind::AlterPartitionReassignments(response)
            }
            PendingKind::Group { fallback } => fallback,
            PendingKind::OffsetCommit { response, .. } => ResponseKind::OffsetCommit(response),
            PendingKind::DeleteGroups { response } => ResponseKind::DeleteGroups(response),
            PendingKind::OffsetDelete { response, .. } => ResponseKind::OffsetDelete(response),
            PendingKind::ListOffsets { request, loads } => {
                ResponseKind::ListOffsets(self.list_offsets(&request, pending.version, &loads).0)
            }
            PendingKind::OffsetFetch { request, reads } => ResponseKind::OffsetFetch(
                self.offset_fetch(request, pending.version, &reads.passed),
            ),
            PendingKind::Fetch {
                request,
                reads,
                loads,
            } => {
                let FetchResult { response, .. } = fetch::evaluate(
                    &request,
                    pending.version,
                    self.metadata(),
                    &self.node,
                    &reads.passed,
                    &loads,
                );
                ResponseKind::Fetch(response)
            }
        };
        let output = encode(&pending.header, pending.api_key, pending.version, &body);
        self.fill(pending.connection, id, output);
    }

    /// Answers long polls that have enough data or reached their wait, and
    /// requests whose proposals did not commit in time.
    ///
    /// Returns the log reads (§8.3) that long polls need next: the caller
    /// asks the node for them (`load`).
    fn expire(&mut self, now_ms: u64) -> Vec<(u64, Vec<(GroupId, u64)>)> {
        let mut ready = Vec::new();
        let mut to_load = Vec::new();
        for (id, pending) in &self.pending {
            match &pending.kind {
                PendingKind::Fetch {
                    request,
                    reads,
                    loads,
                } => {
                    if now_ms >= pending.deadline_ms && !loads.waiting(now_ms) {
                        ready.push(*id);
                        continue;
                    }
                    if !reads.groups.is_empty() || pending.outstanding > 0 {
                        // Waiting for read indexes (answered when they are
                        // in, or at the deadline) or for log reads.
                        continue;
                    }
                    if now_ms >= pending.deadline_ms {
                        // Its last reads came in after its wait: no more.
                        ready.push(*id);
                        continue;
                    }
                    let result = fetch::evaluate(
                        request,
                        pending.version,
                        self.metadata(),
                        &self.node,
                        &BTreeMap::new(),
                        loads,
                    );
                    let reads =
                        loads.new_reads(&result.to_load, fetch::response_bytes_max(request));
                    if !reads.is_empty() {
                        to_load.push((*id, reads));
                        continue;
                    }
                    let min_bytes = usize::try_from(request.min_bytes.max(0)).unwrap_or(0);
                    if result.has_error
                        || result.bytes >= min_bytes.max(1)
                        || request.max_wait_ms <= 0
                    {
                        ready.push(*id);
                    }
                }
                // §8.3: a lookup by time inside a chunk of the index reads
                // its batches round by round (a round reads within one
                // segment), and is answered once it found the record, or
                // at its rounds' or its deadline's end.
                PendingKind::ListOffsets { request, loads } if pending.outstanding == 0 => {
                    let (_, wanted) = self.list_offsets(request, pending.version, loads);
                    let reads = loads.new_reads(&wanted, fetch::FETCH_RESPONSE_BYTES_MAX);
                    if reads.is_empty() || now_ms >= pending.deadline_ms {
                        ready.push(*id);
                    } else {
                        to_load.push((*id, reads));
                    }
                }
                PendingKind::CreateTopics { .. } | PendingKind::CreatePartitions { .. }
                    if pending.outstanding == 0 && self.leaders_settled(pending) =>
                {
                    ready.push(*id)
                }
                _ if now_ms >= pending.deadline_ms => ready.push(*id),
                _ => {}
            }
        }
        for id in ready {
            let mut pending = self.pending.remove(&id).expect("listed");
            // Parts still waiting time out; a late commit of theirs is
            // harmless (an idempotent retry is answered with its offset).
            self.proposals
                .retain(|_, (pending_id, _)| *pending_id != id);
            match &mut pending.kind {
                PendingKind::Produce { response, .. } => {
                    for topic in &mut response.responses {
                        for partition in &mut topic.partition_responses {
                            if partition.error_code == 0 && partition.base_offset < 0 {
                                partition.error_code = error_code::REQUEST_TIMED_OUT;
                            }
                        }
                    }
                }
                PendingKind::CreateTopics { response } => {
                    for topic in &mut response.topics {
                        if topic.error_code == 0 && topic.topic_id.is_nil() {
                            topic.error_code = error_code::REQUEST_TIMED_OUT;
                        }
                    }
                }
                _ => {}
            }
            self.answer_pending(id, pending);
        }
        to_load
    }
}

/// Refusals caused by what a client sent, as opposed to a leader moving or
/// a topic being created: these deserve a line at the default log level.
fn refusal_is_bad_input(code: i16) -> bool {
    matches!(
        code,
        runnel_kafka::batch::error_code::CORRUPT_MESSAGE
            | runnel_kafka::batch::error_code::MESSAGE_TOO_LARGE
            | runnel_kafka::batch::error_code::UNSUPPORTED_COMPRESSION_TYPE
            | runnel_kafka::batch::error_code::INVALID_RECORD
            | error_code::INVALID_TOPIC_EXCEPTION
            | error_code::INVALID_REQUIRED_ACKS
            | error_code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    )
}

fn metadata_result(
    result: Result<ClientReply, ClientError>,
    error_code: &mut i16,
    error_message: &mut Option<StrBytes>,
) {
    match result {
        Ok(ClientReply::Applied(Applied::Metadata(MetadataOutcome::Refused {
            error_code: code,
            message,
        }))) => {
            *error_code = code;
            *error_message = Some(StrBytes::from_string(message));
        }
        Ok(ClientReply::Applied(Applied::Metadata(_))) => {}
        Ok(_) => *error_code = crate::error_code::UNKNOWN_SERVER_ERROR,
        Err(_) => *error_code = crate::error_code::NOT_CONTROLLER,
    }
}

/// Encodes a response. A failure is a programmer error (a field set that
/// the version does not have); it is logged and the connection closed
/// rather than the node stopped, since one client's request caused it.
fn encode(
    header: &RequestHeader,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> SlotOutput {
    match codec::encode_response(header, api_key, version, body) {
        Ok(frame) => SlotOutput::Respond(Some(frame)),
        Err(error) => {
            tracing::error!(?api_key, version, %error, "cannot encode a response; closing the connection");
            SlotOutput::Close(format!("cannot encode the {api_key:?} response"))
        }
    }
}

/// The membership partition `group` was created with, as `metadata`
/// places it.
fn initial_config_in(metadata: &MetadataState, group: GroupId) -> Option<Config> {
    let (_, placement) = metadata
        .partition_groups()
        .find(|(_, placement)| placement.group == group)?;
    Some(Config {
        voters: placement.initial_replicas.iter().copied().collect(),
        learners: Default::default(),
    })
}

/// The records of `batch`, if its bytes are at hand (in memory or among
/// `loads`); a batch on disk is named in `to_load` instead (§8.3).
fn batch_records(
    node: &Node,
    group: GroupId,
    batch: &StoredBatch,
    loads: &fetch::Loads,
    to_load: &mut BTreeSet<(GroupId, u64)>,
) -> Option<Vec<kafka_protocol::records::Record>> {
    let Some(stamped) = fetch::batch_bytes(node, group, batch, Some(loads)) else {
        to_load.insert((group, batch.raft_index));
        return None;
    };
    let mut bytes = Bytes::from(stamped);
    RecordBatchDecoder::decode(&mut bytes)
        .ok()
        .map(|set| set.records)
}

/// The batch `located` found, if its bytes are at hand; a batch on disk,
/// or a chunk whose entries are, is named in `to_load` (§8.3).
fn located_batch<'a>(
    group: GroupId,
    located: Located<'a>,
    to_load: &mut BTreeSet<(GroupId, u64)>,
) -> Result<std::borrow::Cow<'a, StoredBatch>, Part<'a>> {
    match located {
        Located::Batch(batch) => Ok(batch),
        Located::Unloaded { load_from, part } => {
            to_load.insert((group, load_from));
            Err(part)
        }
    }
}

/// The offset and timestamp of the first record at or after `target_ms`.
///
/// The partition's index finds the first batch whose max timestamp is at or
/// after it, and that batch's records the exact record. A batch on disk and
/// not in `loads` is named in `to_load`, and the answer meanwhile is the
/// first offset of the batch (or of the chunk of the index holding it),
/// which is never after the exact one (it is what is sent if the read
/// cannot be done: a consumer that seeks there rereads a few records but
/// skips none).
fn offset_for_time(
    node: &Node,
    group: GroupId,
    log: &runnel_core::partition::PartitionLog,
    target_ms: i64,
    loads: &fetch::Loads,
    to_load: &mut BTreeSet<(GroupId, u64)>,
) -> Option<(i64, i64)> {
    let located = log.batch_at_time(target_ms, |index| {
        fetch::entry_at(node, group, index, Some(loads))
    })?;
    let batch = match located_batch(group, located, to_load) {
        Ok(batch) => batch,
        Err(part) => return Some((part.base_offset(), part.max_timestamp_ms())),
    };
    let exact = batch_records(node, group, &batch, loads, to_load).and_then(|records| {
        records
            .iter()
            .find(|record| record.timestamp >= target_ms)
            .map(|record| (record.offset, record.timestamp))
    });
    Some(exact.unwrap_or((batch.base_offset, batch.max_timestamp_ms)))
}

/// The offset and timestamp of the record with the largest timestamp; its
/// batch is read like `offset_for_time`'s (its last offset, or its chunk's,
/// until then).
fn max_timestamp(
    node: &Node,
    group: GroupId,
    log: &runnel_core::partition::PartitionLog,
    loads: &fetch::Loads,
    to_load: &mut BTreeSet<(GroupId, u64)>,
) -> Option<(i64, i64)> {
    let located =
        log.batch_with_max_timestamp(|index| fetch::entry_at(node, group, index, Some(loads)))?;
    let batch = match located_batch(group, located, to_load) {
        Ok(batch) => batch,
        Err(part) => return Some((part.last_offset(), part.max_timestamp_ms())),
    };
    let exact = batch_records(node, group, &batch, loads, to_load).and_then(|records| {
        records
            .iter()
            .rev()
            .max_by_key(|record| record.timestamp)
            .map(|record| (record.offset, record.timestamp))
    });
    Some(exact.unwrap_or((batch.last_offset, batch.max_timestamp_ms)))
}
