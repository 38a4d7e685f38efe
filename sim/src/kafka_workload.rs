//! Simulated Kafka clients for the broker layout: an admin, producers and
//! consumers that speak real Kafka protocol bytes to `runnel_broker::Broker`.
//!
//! Every client has one request in flight at a time on one connection to
//! one node. The admin creates the plan's topics (some at the start, some
//! while faults strike). Producers send batches with `acks=all` (sometimes
//! `acks=1`) to the partition leader they learned from Metadata; every
//! attempt carries fresh value ids, so a value may appear in a log at most
//! once, and an error or a timeout leaves its outcome unknown. Consumers
//! fetch each partition in turn from where they got to. Committers (issue
//! 6) each commit ever larger offsets for their own consumer group, through
//! the group coordinator, and read them back; every commit and fetch goes
//! into a history that [`KafkaHistory::check_offsets`] hands to the WGL
//! checker (each group's committed offset is a linearizable register). At
//! the end the runner hands the final partition logs and committed offsets
//! to [`KafkaHistory::check`] and [`KafkaHistory::check_offsets`].
//!
//! Like the record workload, this one does no IO: it returns
//! [`KafkaAction`]s that the runner turns into deliveries and wake-ups.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::add_raft_voter_request::Listener as RaftListener;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, AlterPartitionReassignmentsRequest,
    AlterPartitionReassignmentsResponse, ApiKey, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, FetchRequest, FetchResponse, GroupId, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    ProduceRequest, ProduceResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse,
    RequestHeader, ResponseHeader, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use runnel_broker::ConnectionId;
use runnel_checkers::committed_offsets::check_committed_offsets;
use runnel_checkers::history::{Operation, Outcome, QueueOp};
use runnel_checkers::Violation;
use runnel_io::{NodeId, Rng};

use crate::workload::{decode_value_id, encode_value};

/// Clients (admin, producers, consumers) a run may have.
pub const KAFKA_CLIENTS_MAX: usize = 16;
/// Topics a run may create.
pub const KAFKA_TOPICS_MAX: usize = 8;
/// Partitions a topic may have.
pub const KAFKA_PARTITIONS_MAX: i32 = 4;
/// Records in one produced batch.
pub const KAFKA_BATCH_RECORDS_MAX: u64 = 4;
/// Bytes a consumer asks for in one fetch.
pub const KAFKA_FETCH_BYTES_MAX: i32 = 64 << 10;
/// Acknowledged produces every partition must get once faults are healed.
pub const KAFKA_LIVENESS_PRODUCES_MIN: u64 = 3;
/// The admin's pause between two requests, in ms (low, high).
pub const KAFKA_ADMIN_THINK_MS: (u64, u64) = (100, 300);
/// After an error, a client waits up to this long before its next request.
pub const KAFKA_RETRY_BACKOFF_MS_MAX: u64 = 100;

const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 7;

/// Kafka error codes the clients react to.
mod code {
    pub const NONE: i16 = 0;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;

    /// Produce errors after which a Kafka client takes the batch as not
    /// written (librdkafka's "not persisted"): a broker must answer them
    /// only when it knows the batch will never be in the log. An outcome it
    /// does not know must be REQUEST_TIMED_OUT ("possibly persisted").
    pub const PRODUCE_NOT_WRITTEN: &[i16] = &[
        2,  // CORRUPT_MESSAGE
        3,  // UNKNOWN_TOPIC_OR_PARTITION
        6,  // NOT_LEADER_OR_FOLLOWER
        45, // OUT_OF_ORDER_SEQUENCE_NUMBER
        47, // INVALID_PRODUCER_EPOCH
        56, // KAFKA_STORAGE_ERROR
        87, // INVALID_RECORD
    ];
}

const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_FETCH_VERSION: i16 = 7;
const JOIN_GROUP_VERSION: i16 = 5;
const SYNC_GROUP_VERSION: i16 = 3;
const HEARTBEAT_VERSION: i16 = 3;
/// The consumer group the members form.
const MEMBERS_GROUP: &str = "sim-members";
/// Members' sessions and rebalance timeout, in simulated ms.
const MEMBER_SESSION_MS: i32 = 6_000;
const MEMBER_REBALANCE_MS: i32 = 10_000;
/// A member's pause between heartbeats, in ms (low, high).
const MEMBER_HEARTBEAT_MS: (u64, u64) = (300, 800);

/// Kafka error codes a group member reacts to.
mod group_code {
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}

/// The Kafka workload of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaPlan {
    /// Topics the admin creates at the start.
    pub topics_at_start: usize,
    /// Topics the admin creates while faults strike.
    pub topics_later: usize,
    /// Partitions per topic, drawn per topic in `1..=partitions_max`.
    pub partitions_max: i32,
    pub replication_factor: i16,
    pub producers: usize,
    pub consumers: usize,
    pub think_time_ms_max: u64,
    /// A client gives up on a request after this long and reconnects.
    pub request_timeout_ms: u64,
    pub padding_bytes: u64,
    /// Fetch with read_committed (else read_uncommitted).
    pub read_committed: bool,
    /// The admin moves a random partition's replicas after a gap drawn
    /// from this range, while faults strike (in 3-node clusters a move can
    /// only reorder the replicas, which changes the preferred leader).
    pub reassign_gap_ms: Option<(u64, u64)>,
    /// Nodes sit in three racks (node id modulo 3), so that placement
    /// spreads each partition's replicas over racks.
    pub racks: bool,
    /// The cluster changes while faults strike: a spare node (started with
    /// `join`) is added, then one of the others is removed.
    pub membership: bool,
    /// Clients that commit offsets of their own consumer group and read
    /// them back (0 to 2); with any, the cluster has an offsets topic.
    pub committers: usize,
    /// Members of one consumer group (0 to 3) that join, sync and
    /// heartbeat, sharing the first topic's partitions.
    pub group_members: usize,
}

impl KafkaPlan {
    /// Draws a plan; `nodes` is the cluster size (3 or 5).
    pub fn draw(rng: &mut Rng, nodes: usize, election_timeout_ms: u64) -> KafkaPlan {
        let plan = KafkaPlan {
            topics_at_start: rng.range(1, 3) as usize,
            topics_later: rng.range(0, 3) as usize,
            partitions_max: rng.range(1, KAFKA_PARTITIONS_MAX as u64 + 1) as i32,
            // Every partition has at least three voters, so that the fault
            // atlas's one faulty disk is a minority of each.
            replication_factor: 3.min(nodes as i16),
            producers: rng.range(2, 7) as usize,
            consumers: rng.range(1, 3) as usize,
            think_time_ms_max: rng.range(0, 21),
            request_timeout_ms: (3 * election_timeout_ms).max(1_000),
            padding_bytes: rng.range(0, 57),
            read_committed: rng.chance(0.5),
            reassign_gap_ms: rng.chance(0.6).then(|| {
                let low = rng.range(1_000, 5_000);
                (low, low + rng.range(0, 5_000))
            }),
            racks: false,
            membership: false,
            committers: 0,
            group_members: 0,
        };
        // Drawn last, so that adding it left the other draws as they were.
        let plan = KafkaPlan {
            racks: rng.chance(0.5),
            membership: rng.chance(0.5),
            ..plan
        };
        let plan = KafkaPlan {
            committers: rng.range(0, 3) as usize,
            group_members: rng.range(0, 4) as usize,
            ..plan
        };
        assert!(plan.topics_at_start + plan.topics_later <= KAFKA_TOPICS_MAX);
        assert!(
            1 + plan.producers + plan.consumers + plan.committers + plan.group_members
                <= KAFKA_CLIENTS_MAX
        );
        plan
    }
}

/// What the workload asks the runner to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaAction {
    /// Deliver a request frame (without its length prefix) on `connection`.
    Send {
        node: NodeId,
        connection: ConnectionId,
        frame: Bytes,
    },
    /// The client dropped `connection`: the broker forgets it.
    Close {
        node: NodeId,
        connection: ConnectionId,
    },
    /// Call `on_wake(client, token)` at `at`.
    Wake { at: u64, client: usize, token: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Admin,
    Producer,
    Consumer,
    Committer,
    GroupMember,
}

/// Where a group member is: its id, and the generation it joined and the
/// partitions it got (once synced).
#[derive(Clone, Debug, Default)]
struct Membership {
    member_id: String,
    generation: i32,
    /// From the JoinGroup answer: the assignments to send in SyncGroup
    /// (the leader's; empty for the others), until synced.
    to_sync: Option<Vec<(String, Vec<i32>)>>,
    assigned: Option<Vec<i32>>,
}

type PartitionKey = (String, i32);

#[derive(Clone, Debug)]
enum Op {
    Metadata,
    CreateTopic {
        name: String,
    },
    Reassign {
        key: PartitionKey,
        replicas: Vec<NodeId>,
    },
    AddNode {
        node: NodeId,
    },
    RemoveNode {
        node: NodeId,
    },
    Produce {
        key: PartitionKey,
        values: Vec<u64>,
    },
    Fetch {
        key: PartitionKey,
        offset: i64,
    },
    /// OffsetCommit of `offset` for `key` by a group that only stores
    /// offsets (generation -1, no member), as Kafka allows.
    Commit {
        group: String,
        key: PartitionKey,
        offset: i64,
    },
    FetchOffset {
        group: String,
        key: PartitionKey,
    },
    Join {
        member_id: String,
    },
    Sync {
        member_id: String,
        generation: i32,
        assignments: Vec<(String, Vec<i32>)>,
    },
    Heartbeat {
        member_id: String,
        generation: i32,
    },
}

#[derive(Clone, Debug)]
struct InFlight {
    connection: ConnectionId,
    correlation: i32,
    op: Op,
    /// When it was sent, on the history's operation clock.
    invoked_at: u64,
    /// For a fetch: the end of the partition's acknowledged records when
    /// it was sent (one past the highest acknowledged offset, or 0).
    acknowledged_end: i64,
}

#[derive(Clone, Debug)]
struct Client {
    role: Role,
    /// The node and connection the client talks to now.
    connection: Option<(NodeId, ConnectionId)>,
    in_flight: Option<InFlight>,
    /// Wake-ups with another token are stale.
    token: u64,
    next_seq: u64,
    /// Consumers: the next offset to read per partition.
    positions: BTreeMap<PartitionKey, i64>,
    cursor: usize,
    membership: Membership,
}

/// Counts for the end-of-run line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KafkaStats {
    pub produces_acknowledged: u64,
    pub produces_unknown: u64,
    pub records_acknowledged: u64,
    pub records_consumed: u64,
    pub fetch_errors: u64,
    pub topics_created: u64,
    /// Moves of a partition's replicas the metadata group accepted.
    pub reassignments: u64,
    /// Nodes added to and removed from the cluster.
    pub nodes_added: u64,
    pub nodes_removed: u64,
    pub commits_acknowledged: u64,
    pub offsets_read: u64,
    /// SyncGroup answers with an assignment (one per member and generation).
    pub group_syncs: u64,
    /// Chunks in the partitions' sparse indexes at the end (the longest
    /// replica of each partition), each rebuilt from the log when read.
    pub index_chunks: u64,
}

/// What the clients saw, for the final check.
#[derive(Clone, Debug, Default)]
pub struct KafkaHistory {
    /// Every value id ever sent.
    sent: BTreeSet<u64>,
    /// Acknowledged values: partition -> offset -> value id.
    acknowledged: BTreeMap<PartitionKey, BTreeMap<i64, u64>>,
    /// Values of produces the broker answered with an error that tells the
    /// client the batch was not written (`code::PRODUCE_NOT_WRITTEN`).
    refused: BTreeSet<u64>,
    /// Consumed values: partition -> offset -> value id (the first read).
    consumed: BTreeMap<PartitionKey, BTreeMap<i64, u64>>,
    /// Problems the clients saw while running (a consumer's skip, two
    /// different values read at one offset).
    violations: Vec<Violation>,
    /// Per committer's group: every offset it tried to commit, and the
    /// partition it commits.
    commits_sent: BTreeMap<String, (PartitionKey, BTreeSet<i64>)>,
    /// Per group: the largest offset whose commit was acknowledged.
    commits_acknowledged: BTreeMap<String, i64>,
    /// The group members' SyncGroup answers: generation -> member id ->
    /// partitions of the first topic.
    assignments: BTreeMap<i32, BTreeMap<String, Vec<i32>>>,
    /// The committers' commits and fetches, for the linearizability check.
    offset_operations: Vec<Operation<QueueOp>>,
    /// A logical clock for `offset_operations`: it ticks at every send and
    /// every completion, so its order is the simulation's real-time order
    /// (two events in one simulated millisecond still come one after the
    /// other, which a millisecond timestamp would make concurrent).
    operation_clock: u64,
}

fn kafka_violation(invariant: &'static str, message: String) -> Violation {
    Violation {
        invariant,
        spec: "docs/guarantees.md",
        message,
    }
}

impl KafkaHistory {
    fn next_operation_time(&mut self) -> u64 {
        self.operation_clock += 1;
        self.operation_clock
    }

    /// Records a committer's commit or fetch that ended: `completed` is the
    /// fetch's answer, `None` when the operation's outcome is unknown (a
    /// commit may then have taken effect at any time after it was sent).
    fn record_offset_operation(
        &mut self,
        process: usize,
        in_flight: &InFlight,
        outcome: Outcome,
        completed: Option<QueueOp>,
    ) {
        let invoked = match &in_flight.op {
            Op::Commit { group, key, offset } => QueueOp::Commit {
                group: group.clone(),
                key: key.1 as u32,
                offset: *offset as u64,
            },
            Op::FetchOffset { group, key } => QueueOp::FetchCommitted {
                group: group.clone(),
                key: key.1 as u32,
                offset: None,
            },
            _ => return,
        };
        let complete_ns = match outcome {
            Outcome::Info => None,
            Outcome::Ok | Outcome::Fail => Some(self.next_operation_time()),
        };
        self.offset_operations.push(Operation {
            process: process as u64,
            invoke_ns: in_flight.invoked_at,
            complete_ns,
            outcome,
            invoked,
            completed,
            error: None,
        });
    }

    /// How many commits and fetches the linearizability check covers.
    pub fn offset_operations(&self) -> usize {
        self.offset_operations.len()
    }

    pub fn acknowledged_records(&self) -> u64 {
        self.acknowledged.values().map(|m| m.len() as u64).sum()
    }

    /// Checks the history against the final log of every partition
    /// (offset, value id; `None` for a record whose value is not ours).
    pub fn check(&self, logs: &BTreeMap<PartitionKey, Vec<(i64, Option<u64>)>>) -> Vec<Violation> {
        let mut violations = self.violations.clone();
        let empty = Vec::new();
        let mut seen_at: BTreeMap<u64, (PartitionKey, i64)> = BTreeMap::new();
        for (key, log) in logs {
            let mut expected_offset = log.first().map_or(0, |(offset, _)| *offset);
            for &(offset, value) in log {
                if offset != expected_offset {
                    violations.push(kafka_violation(
                        "kafka-contiguous-offsets",
                        format!(
                            "{}-{}: offset {offset} follows {}",
                            key.0,
                            key.1,
                            expected_offset - 1
                        ),
                    ));
                }
                expected_offset = offset + 1;
                if let Some(value) = value.filter(|value| self.refused.contains(value)) {
                    violations.push(kafka_violation(
                        "kafka-refused-write-in-log",
                        format!(
                            "{}-{} offset {offset} holds {value:#x}, whose produce the broker answered as not written",
                            key.0, key.1
                        ),
                    ));
                }
                match value {
                    Some(value) if self.sent.contains(&value) => {
                        if let Some((other, other_offset)) =
                            seen_at.insert(value, (key.clone(), offset))
                        {
                            violations.push(kafka_violation(
                                "kafka-duplicate",
                                format!(
                                    "value {value:#x} at {}-{} offset {offset} and at {}-{} offset {other_offset}",
                                    key.0, key.1, other.0, other.1
                                ),
                            ));
                        }
                    }
                    _ => violations.push(kafka_violation(
                        "kafka-unknown-value",
                        format!(
                            "{}-{} offset {offset} holds {value:?}, which no client sent",
                            key.0, key.1
                        ),
                    )),
                }
            }
        }
        for (key, acknowledged) in &self.acknowledged {
            let log = logs.get(key).unwrap_or(&empty);
            let start = log.first().map_or(0, |(offset, _)| *offset);
            for (&offset, &value) in acknowledged {
                let found = usize::try_from(offset - start)
                    .ok()
                    .and_then(|position| log.get(position));
                if found != Some(&(offset, Some(value))) {
                    violations.push(kafka_violation(
                        "kafka-lost-write",
                        format!(
                            "{}-{}: value {value:#x} was acknowledged at offset {offset}; the final log has {found:?} there (log start {start}, {} records)",
                            key.0, key.1, log.len()
                        ),
                    ));
                }
            }
        }
        for (key, consumed) in &self.consumed {
            let log = logs.get(key).unwrap_or(&empty);
            let start = log.first().map_or(0, |(offset, _)| *offset);
            for (&offset, &value) in consumed {
                let found = usize::try_from(offset - start)
                    .ok()
                    .and_then(|position| log.get(position));
                if found != Some(&(offset, Some(value))) {
                    violations.push(kafka_violation(
                        "kafka-read-not-committed",
                        format!(
                            "{}-{}: a consumer read value {value:#x} at offset {offset}; the final log has {found:?} there",
                            key.0, key.1
                        ),
                    ));
                }
            }
        }
        violations
    }

    /// The committers' groups and the partition each commits, for the
    /// runner to look their final offsets up.
    pub fn committed_groups(&self) -> Vec<(String, PartitionKey)> {
        self.commits_sent
            .iter()
            .map(|(group, (key, _))| (group.clone(), key.clone()))
            .collect()
    }

    /// Checks the committed offsets at the end (`final_offsets`: per group,
    /// the largest offset any replica of its offsets partition holds): an
    /// acknowledged commit is never lost (the final offset is at least the
    /// largest acknowledged one, as commits only grow), and the final
    /// offset is one a committer sent (docs/guarantees.md, consumer groups).
    pub fn check_offsets(&self, final_offsets: &BTreeMap<String, Option<i64>>) -> Vec<Violation> {
        let mut violations = Vec::new();
        let verdict = check_committed_offsets(&self.offset_operations);
        for failure in &verdict.not_linearizable {
            violations.push(kafka_violation(
                "kafka-offsets-linearizable",
                format!("committed offsets are not a linearizable register: {failure}"),
            ));
        }
        // The search gives up only on histories far larger than a seed
        // makes; should it, the seed is not proven, which is a failure too.
        for reason in &verdict.unknown {
            violations.push(kafka_violation(
                "kafka-offsets-linearizable",
                format!("the linearizability search gave up: {reason}"),
            ));
        }
        for (group, (_, sent)) in &self.commits_sent {
            let found = final_offsets.get(group).copied().flatten();
            if let Some(&acknowledged) = self.commits_acknowledged.get(group) {
                if found.is_none_or(|found| found < acknowledged) {
                    violations.push(kafka_violation(
                        "kafka-lost-offset-commit",
                        format!(
                            "group {group}: offset {acknowledged} was acknowledged; the offsets partition holds {found:?}"
                        ),
                    ));
                }
            }
            if let Some(found) = found {
                if !sent.contains(&found) {
                    violations.push(kafka_violation(
                        "kafka-unknown-offset",
                        format!("group {group}: the offsets partition holds {found}, which was never committed"),
                    ));
                }
            }
        }
        // Within one generation, no partition goes to two members: members
        // of a generation all got their assignments from the one leader's
        // SyncGroup (a generation number a new coordinator reused would
        // mix two leaders' assignments).
        for (generation, members) in &self.assignments {
            let mut owner: BTreeMap<i32, &String> = BTreeMap::new();
            for (member, partitions) in members {
                for partition in partitions {
                    if let Some(other) = owner.insert(*partition, member) {
                        violations.push(kafka_violation(
                            "kafka-generation-exclusive",
                            format!(
                                "generation {generation}: partition {partition} assigned to both {other} and {member}"
                            ),
                        ));
                    }
                }
            }
        }
        violations
    }
}

pub struct KafkaWorkload {
    plan: KafkaPlan,
    nodes: Vec<NodeId>,
    rng: Rng,
    clients: Vec<Client>,
    next_connection: ConnectionId,
    next_correlation: i32,
    /// Topic names the admin creates, in order, and how many partitions.
    wanted: Vec<(String, i32)>,
    /// Topics the admin has seen created (or already existing).
    created: usize,
    /// The admin may create topic `created` once the time is past this.
    next_create_at: u64,
    /// Topics and partition counts as Metadata last said.
    topics: BTreeMap<String, i32>,
    leaders: BTreeMap<PartitionKey, NodeId>,
    history: KafkaHistory,
    stats: KafkaStats,
    /// Acknowledged produces per partition since the liveness phase began.
    liveness_produces: Option<BTreeMap<PartitionKey, u64>>,
    /// The admin moves a partition's replicas once the time is past this.
    next_reassign_at: u64,
    /// Membership changes still to make: (node, add), and when the next.
    membership_changes: Vec<(NodeId, bool)>,
    next_membership_at: u64,
    /// Acknowledged commits per committer since the liveness phase began.
    liveness_commits: Option<BTreeMap<usize, u64>>,
}

impl KafkaWorkload {
    /// `spare`: the node the cluster adds (already in `nodes`), if the plan
    /// changes membership.
    pub fn new(
        plan: &KafkaPlan,
        nodes: &[NodeId],
        spare: Option<NodeId>,
        mut rng: Rng,
    ) -> KafkaWorkload {
        let mut clients = Vec::new();
        let mut push = |role| {
            clients.push(Client {
                role,
                connection: None,
                in_flight: None,
                token: 0,
                next_seq: 1,
                positions: BTreeMap::new(),
                cursor: 0,
                membership: Membership::default(),
            })
        };
        push(Role::Admin);
        (0..plan.producers).for_each(|_| push(Role::Producer));
        (0..plan.consumers).for_each(|_| push(Role::Consumer));
        (0..plan.committers).for_each(|_| push(Role::Committer));
        (0..plan.group_members).for_each(|_| push(Role::GroupMember));
        let wanted = (0..plan.topics_at_start + plan.topics_later)
            .map(|index| {
                let partitions = rng.range(1, plan.partitions_max as u64 + 1) as i32;
                (format!("sim-topic-{index}"), partitions)
            })
            .collect();
        let next_create_at = 0;
        let mut membership_changes = Vec::new();
        if let Some(spare) = spare {
            let originals: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != spare).collect();
            let leaving = originals[rng.range(0, originals.len() as u64) as usize];
            membership_changes = vec![(spare, true), (leaving, false)];
        }
        let next_membership_at = rng.range(3_000, 20_000);
        KafkaWorkload {
            plan: plan.clone(),
            nodes: nodes.to_vec(),
            rng,
            clients,
            next_connection: 1,
            next_correlation: 1,
            wanted,
            created: 0,
            next_create_at,
            topics: BTreeMap::new(),
            leaders: BTreeMap::new(),
            history: KafkaHistory::default(),
            stats: KafkaStats::default(),
            liveness_produces: None,
            next_reassign_at: plan.reassign_gap_ms.map_or(u64::MAX, |(low, _)| low),
            membership_changes,
            next_membership_at,
            liveness_commits: None,
        }
    }

    /// Whether the nodes sit in racks (node id modulo 3).
    pub fn plan_racks(&self) -> bool {
        self.plan.racks
    }

    pub fn history(&self) -> &KafkaHistory {
        &self.history
    }

    /// The final checks' count of index chunks (`KafkaStats::index_chunks`).
    pub fn set_index_chunks(&mut self, chunks: u64) {
        self.stats.index_chunks = chunks;
    }

    pub fn stats(&self) -> KafkaStats {
        self.stats
    }

    /// Topics the admin was told exist, by name.
    pub fn wanted_topics(&self) -> Vec<String> {
        self.wanted.iter().map(|(name, _)| name.clone()).collect()
    }

    pub fn start(&mut self, now: u64, out: &mut Vec<KafkaAction>) {
        for index in 0..self.clients.len() {
            self.think(now, index, out);
        }
    }

    pub fn start_liveness(&mut self) {
        self.liveness_produces = Some(BTreeMap::new());
        self.liveness_commits = Some(BTreeMap::new());
        // Moves still in progress must finish; no new ones start.
        self.next_reassign_at = u64::MAX;
        // Topics not created yet are created now.
        self.next_create_at = 0;
    }

    /// Once faults are healed: whether every wanted topic exists and every
    /// partition acknowledged enough new produces.
    pub fn liveness_done(&self) -> bool {
        let Some(produces) = &self.liveness_produces else {
            return false;
        };
        let commits = self.liveness_commits.clone().unwrap_or_default();
        self.created == self.wanted.len()
            && self.membership_changes.is_empty()
            && self
                .committers()
                .all(|index| commits.get(&index).copied().unwrap_or(0) >= 1)
            && self.members_settled()
            && self.wanted.iter().all(|(name, partitions)| {
                (0..*partitions).all(|partition| {
                    produces
                        .get(&(name.clone(), partition))
                        .copied()
                        .unwrap_or(0)
                        >= KAFKA_LIVENESS_PRODUCES_MIN
                })
            })
    }

    /// Partitions still short of new produces (for the liveness report).
    pub fn liveness_missing(&self) -> Vec<String> {
        let produces = self.liveness_produces.clone().unwrap_or_default();
        let mut missing = Vec::new();
        if self.created < self.wanted.len() {
            missing.push(format!(
                "{} of {} topics created",
                self.created,
                self.wanted.len()
            ));
        }
        if !self.members_settled() {
            missing.push("the group members to settle on one generation".into());
        }
        let commits = self.liveness_commits.clone().unwrap_or_default();
        for index in self.committers() {
            if commits.get(&index).copied().unwrap_or(0) == 0 {
                missing.push(format!("an offset commit of client {index}"));
            }
        }
        for (node, add) in &self.membership_changes {
            missing.push(format!(
                "{} node {node}",
                if *add { "add" } else { "remove" }
            ));
        }
        for (name, partitions) in &self.wanted {
            for partition in 0..*partitions {
                let count = produces
                    .get(&(name.clone(), partition))
                    .copied()
                    .unwrap_or(0);
                if count < KAFKA_LIVENESS_PRODUCES_MIN {
                    missing.push(format!("{name}-{partition}: {count} produces"));
                }
            }
        }
        missing
    }

    /// Whether every group member has its assignment in one generation
    /// and together they hold every partition of the first topic.
    fn members_settled(&self) -> bool {
        let members: Vec<&Membership> = self
            .clients
            .iter()
            .filter(|client| client.role == Role::GroupMember)
            .map(|client| &client.membership)
            .collect();
        let Some(first) = members.first() else {
            return true;
        };
        let Some(partitions) = self.topics.values().next() else {
            return false;
        };
        let mut held: Vec<i32> = members
            .iter()
            .flat_map(|member| member.assigned.clone().unwrap_or_default())
            .collect();
        held.sort_unstable();
        members
            .iter()
            .all(|member| member.assigned.is_some() && member.generation == first.generation)
            && held == (0..*partitions).collect::<Vec<_>>()
    }

    fn committers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.clients.len()).filter(|index| self.clients[*index].role == Role::Committer)
    }

    fn think(&mut self, now: u64, index: usize, out: &mut Vec<KafkaAction>) {
        // The admin mostly refreshes metadata: a few times a second is
        // plenty, and leaves the event budget to producers and consumers.
        let delay = if self.clients[index].role == Role::Admin {
            self.rng
                .range(KAFKA_ADMIN_THINK_MS.0, KAFKA_ADMIN_THINK_MS.1 + 1)
        } else if self.clients[index].role == Role::GroupMember
            && self.clients[index].membership.assigned.is_some()
        {
            self.rng
                .range(MEMBER_HEARTBEAT_MS.0, MEMBER_HEARTBEAT_MS.1 + 1)
        } else {
            self.rng.range(0, self.plan.think_time_ms_max + 1)
        };
        self.wake(now + delay, index, out);
    }

    fn backoff(&mut self, now: u64, index: usize, out: &mut Vec<KafkaAction>) {
        let delay = self.rng.range(1, KAFKA_RETRY_BACKOFF_MS_MAX + 1);
        self.wake(now + delay, index, out);
    }

    fn wake(&mut self, at: u64, index: usize, out: &mut Vec<KafkaAction>) {
        let client = &mut self.clients[index];
        client.token += 1;
        out.push(KafkaAction::Wake {
            at,
            client: index,
            token: client.token,
        });
    }

    pub fn on_wake(&mut self, now: u64, index: usize, token: u64, out: &mut Vec<KafkaAction>) {
        if self.clients[index].token != token {
            return;
        }
        if let Some(in_flight) = self.clients[index].in_flight.take() {
            // The request timed out: its outcome is unknown, and the
            // connection is dropped (as clients do after a timeout).
            self.settle_unknown_in_flight(index, &in_flight);
            self.drop_connection(index, out);
            self.backoff(now, index, out);
            return;
        }
        self.begin(now, index, out);
    }

    /// The node crashed: every connection to it is reset.
    pub fn on_node_down(&mut self, now: u64, node: NodeId, out: &mut Vec<KafkaAction>) {
        for index in 0..self.clients.len() {
            if self.clients[index]
                .connection
                .is_some_and(|(n, _)| n == node)
            {
                self.clients[index].connection = None;
                if let Some(in_flight) = self.clients[index].in_flight.take() {
                    self.settle_unknown_in_flight(index, &in_flight);
                    self.backoff(now, index, out);
                }
            }
        }
        self.leaders.retain(|_, leader| *leader != node);
    }

    /// A request that never got its answer (a timeout, a crashed node).
    fn settle_unknown_in_flight(&mut self, index: usize, in_flight: &InFlight) {
        self.history
            .record_offset_operation(index, in_flight, Outcome::Info, None);
        self.settle_unknown(&in_flight.op);
    }

    fn settle_unknown(&mut self, op: &Op) {
        match op {
            Op::Produce { key, .. } => {
                self.stats.produces_unknown += 1;
                self.leaders.remove(key);
            }
            Op::Fetch { key, .. } => {
                self.stats.fetch_errors += 1;
                self.leaders.remove(key);
            }
            Op::Commit { .. } | Op::FetchOffset { .. } => {}
            Op::Join { .. } | Op::Sync { .. } | Op::Heartbeat { .. } => {}
            Op::Metadata
            | Op::CreateTopic { .. }
            | Op::Reassign { .. }
            | Op::AddNode { .. }
            | Op::RemoveNode { .. } => {}
        }
    }

    fn drop_connection(&mut self, index: usize, out: &mut Vec<KafkaAction>) {
        if let Some((node, connection)) = self.clients[index].connection.take() {
            out.push(KafkaAction::Close { node, connection });
        }
    }

    fn random_node(&mut self) -> NodeId {
        *self.rng.pick(&self.nodes).expect("a cluster has nodes")
    }

    fn partitions(&self) -> Vec<PartitionKey> {
        self.topics
            .iter()
            .flat_map(|(name, count)| (0..*count).map(move |p| (name.clone(), p)))
            .collect()
    }

    /// Chooses and sends the client's next request.
    fn begin(&mut self, now: u64, index: usize, out: &mut Vec<KafkaAction>) {
        let role = self.clients[index].role;
        match role {
            Role::Admin => {
                if let Some(&(node, add)) = self.membership_changes.first() {
                    if now >= self.next_membership_at {
                        let op = if add {
                            Op::AddNode { node }
                        } else {
                            Op::RemoveNode { node }
                        };
                        let to = self.random_node();
                        self.send(now, index, to, op, out);
                        return;
                    }
                }
                let partitions = self.partitions();
                if now >= self.next_reassign_at && !partitions.is_empty() {
                    let key =
                        partitions[self.rng.range(0, partitions.len() as u64) as usize].clone();
                    let mut pool = self.nodes.clone();
                    let mut replicas = Vec::new();
                    while replicas.len() < self.plan.replication_factor as usize {
                        let at = self.rng.range(0, pool.len() as u64) as usize;
                        replicas.push(pool.remove(at));
                    }
                    let node = self.random_node();
                    self.send(now, index, node, Op::Reassign { key, replicas }, out);
                    return;
                }
                if self.created >= self.wanted.len() || now < self.next_create_at {
                    // Nothing to create now: keep metadata fresh, and wake
                    // for the next creation or move.
                    let node = self.random_node();
                    self.send(now, index, node, Op::Metadata, out);
                    return;
                }
                let name = self.wanted[self.created].0.clone();
                let node = self.random_node();
                self.send(now, index, node, Op::CreateTopic { name }, out);
            }
            Role::Producer | Role::Consumer => {
                let partitions = self.partitions();
                if partitions.is_empty() {
                    let node = self.random_node();
                    self.send(now, index, node, Op::Metadata, out);
                    return;
                }
                let key = if role == Role::Producer {
                    partitions[self.rng.range(0, partitions.len() as u64) as usize].clone()
                } else {
                    let client = &mut self.clients[index];
                    client.cursor = (client.cursor + 1) % partitions.len();
                    partitions[client.cursor].clone()
                };
                let Some(&leader) = self.leaders.get(&key) else {
                    let node = self.random_node();
                    self.send(now, index, node, Op::Metadata, out);
                    return;
                };
                let op = if role == Role::Producer {
                    let count = self.rng.range(1, KAFKA_BATCH_RECORDS_MAX + 1);
                    let client = &mut self.clients[index];
                    let values: Vec<u64> = (0..count)
                        .map(|_| {
                            let seq = client.next_seq;
                            client.next_seq += 1;
                            ((index as u64 + 1) << 40) | seq
                        })
                        .collect();
                    self.history.sent.extend(values.iter().copied());
                    Op::Produce { key, values }
                } else {
                    let offset = *self.clients[index].positions.get(&key).unwrap_or(&0);
                    Op::Fetch { key, offset }
                };
                self.send(now, index, leader, op, out);
            }
            Role::GroupMember => {
                if self.topics.is_empty() {
                    let node = self.random_node();
                    self.send(now, index, node, Op::Metadata, out);
                    return;
                }
                let membership = &self.clients[index].membership;
                let member_id = membership.member_id.clone();
                let generation = membership.generation;
                let op = if membership.assigned.is_some() {
                    Op::Heartbeat {
                        member_id,
                        generation,
                    }
                } else if let Some(assignments) = membership.to_sync.clone() {
                    Op::Sync {
                        member_id,
                        generation,
                        assignments,
                    }
                } else {
                    Op::Join { member_id }
                };
                let node = match self.clients[index].connection {
                    Some((node, _)) => node,
                    None => self.random_node(),
                };
                self.send(now, index, node, op, out);
            }
            Role::Committer => {
                // Every committer commits the first partition of the first
                // topic; each has its own group.
                let Some(key) = self.partitions().into_iter().next() else {
                    let node = self.random_node();
                    self.send(now, index, node, Op::Metadata, out);
                    return;
                };
                let group = format!("sim-group-{index}");
                let op = if self.rng.chance(0.7) {
                    let client = &mut self.clients[index];
                    let offset = client.next_seq as i64;
                    client.next_seq += 1;
                    self.history
                        .commits_sent
                        .entry(group.clone())
                        .or_insert_with(|| (key.clone(), BTreeSet::new()))
                        .1
                        .insert(offset);
                    Op::Commit { group, key, offset }
                } else {
                    Op::FetchOffset { group, key }
                };
                // The coordinator is whichever node leads the group's
                // offsets partition: the client tries nodes until one
                // takes the request (NOT_COORDINATOR from the others).
                // Half of the fetches go to any node, as a second consumer
                // of the group would: a node deposed as coordinator that
                // has not noticed yet must not answer an offset older than
                // the newest acknowledged commit (the linearizability
                // check in `check_offsets`).
                let node = match self.clients[index].connection {
                    Some(_) if matches!(op, Op::FetchOffset { .. }) && self.rng.chance(0.5) => {
                        self.random_node()
                    }
                    Some((node, _)) => node,
                    None => self.random_node(),
                };
                self.send(now, index, node, op, out);
            }
        }
    }

    fn send(&mut self, now: u64, index: usize, node: NodeId, op: Op, out: &mut Vec<KafkaAction>) {
        if self.clients[index]
            .connection
            .is_some_and(|(n, _)| n != node)
        {
            self.drop_connection(index, out);
        }
        let connection = match self.clients[index].connection {
            Some((_, connection)) => connection,
            None => {
                let connection = self.next_connection;
                self.next_connection += 1;
                self.clients[index].connection = Some((node, connection));
                connection
            }
        };
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let frame = self.encode(correlation, &op);
        out.push(KafkaAction::Send {
            node,
            connection,
            frame,
        });
        let invoked_at = self.history.next_operation_time();
        let acknowledged_end = match &op {
            Op::Fetch { key, .. } => self
                .history
                .acknowledged
                .get(key)
                .and_then(|offsets| offsets.keys().next_back())
                .map_or(0, |last| last + 1),
            _ => 0,
        };
        self.clients[index].in_flight = Some(InFlight {
            connection,
            correlation,
            op,
            invoked_at,
            acknowledged_end,
        });
        let timeout = match self.clients[index].in_flight.as_ref().map(|f| &f.op) {
            // A JoinGroup or SyncGroup waits for the other members.
            Some(Op::Join { .. } | Op::Sync { .. }) => {
                self.plan.request_timeout_ms + MEMBER_REBALANCE_MS as u64
            }
            _ => self.plan.request_timeout_ms,
        };
        self.wake(now + timeout, index, out);
    }

    fn encode(&mut self, correlation: i32, op: &Op) -> Bytes {
        let topic_name = |name: &str| TopicName(StrBytes::from_string(name.to_string()));
        let mut frame = BytesMut::new();
        let (key, version) = match op {
            Op::Metadata => (ApiKey::Metadata, METADATA_VERSION),
            Op::CreateTopic { .. } => (ApiKey::CreateTopics, CREATE_TOPICS_VERSION),
            Op::Reassign { .. } => (ApiKey::AlterPartitionReassignments, 0),
            Op::AddNode { .. } => (ApiKey::AddRaftVoter, 0),
            Op::RemoveNode { .. } => (ApiKey::RemoveRaftVoter, 0),
            Op::Produce { .. } => (ApiKey::Produce, PRODUCE_VERSION),
            Op::Fetch { .. } => (ApiKey::Fetch, FETCH_VERSION),
            Op::Commit { .. } => (ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION),
            Op::FetchOffset { .. } => (ApiKey::OffsetFetch, OFFSET_FETCH_VERSION),
            Op::Join { .. } => (ApiKey::JoinGroup, JOIN_GROUP_VERSION),
            Op::Sync { .. } => (ApiKey::SyncGroup, SYNC_GROUP_VERSION),
            Op::Heartbeat { .. } => (ApiKey::Heartbeat, HEARTBEAT_VERSION),
        };
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("sim")))
            .encode(&mut frame, key.request_header_version(version))
            .expect("a request header encodes");
        let encoded = match op {
            Op::Metadata => MetadataRequest::default()
                .with_topics(None)
                .with_allow_auto_topic_creation(false)
                .encode(&mut frame, version),
            Op::CreateTopic { name } => {
                let partitions = self
                    .wanted
                    .iter()
                    .find(|(wanted, _)| wanted == name)
                    .map_or(1, |(_, partitions)| *partitions);
                CreateTopicsRequest::default()
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(partitions)
                        .with_replication_factor(self.plan.replication_factor)])
                    .with_timeout_ms(self.plan.request_timeout_ms as i32)
                    .encode(&mut frame, version)
            }
            Op::Reassign { key, replicas } => AlterPartitionReassignmentsRequest::default()
                .with_timeout_ms(self.plan.request_timeout_ms as i32)
                .with_topics(vec![ReassignableTopic::default()
                    .with_name(topic_name(&key.0))
                    .with_partitions(vec![ReassignablePartition::default()
                        .with_partition_index(key.1)
                        .with_replicas(Some(
                            replicas.iter().map(|node| BrokerId(*node as i32)).collect(),
                        ))])])
                .encode(&mut frame, version),
            Op::AddNode { node } => {
                let listener = |name: &'static str, port: u16| {
                    RaftListener::default()
                        .with_name(StrBytes::from_static_str(name))
                        .with_host(StrBytes::from_string(format!("n{node}.sim")))
                        .with_port(port)
                };
                AddRaftVoterRequest::default()
                    .with_voter_id(*node as i32)
                    .with_timeout_ms(self.plan.request_timeout_ms as i32)
                    .with_listeners(vec![listener("RPC", 19092), listener("KAFKA", 9092)])
                    .encode(&mut frame, version)
            }
            Op::RemoveNode { node } => RemoveRaftVoterRequest::default()
                .with_voter_id(*node as i32)
                .encode(&mut frame, version),
            Op::Produce { key, values } => {
                let records: Vec<Vec<u8>> = values
                    .iter()
                    .map(|value| encode_value(*value, self.plan.padding_bytes))
                    .collect();
                let pairs: Vec<runnel_kafka::batch::KeyValue<'_>> = records
                    .iter()
                    .map(|value| (None, Some(value.as_slice())))
                    .collect();
                let batch = runnel_kafka::batch::build_uncompressed(&pairs, 1_000, None);
                let acks = if self.rng.chance(0.2) { 1 } else { -1 };
                ProduceRequest::default()
                    .with_acks(acks)
                    .with_timeout_ms(self.plan.request_timeout_ms as i32)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic_name(&key.0))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(key.1)
                            .with_records(Some(Bytes::from(batch)))])])
                    .encode(&mut frame, version)
            }
            Op::Fetch { key, offset } => FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(self.rng.range(0, 101) as i32)
                .with_min_bytes(1)
                .with_max_bytes(KAFKA_FETCH_BYTES_MAX)
                .with_isolation_level(i8::from(self.plan.read_committed))
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name(&key.0))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(key.1)
                        .with_fetch_offset(*offset)
                        .with_partition_max_bytes(KAFKA_FETCH_BYTES_MAX)])])
                .encode(&mut frame, version),
            Op::Commit { group, key, offset } => OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(topic_name(&key.0))
                    .with_partitions(vec![OffsetCommitRequestPartition::default()
                        .with_partition_index(key.1)
                        .with_committed_offset(*offset)
                        .with_committed_leader_epoch(-1)
                        .with_committed_metadata(Some(StrBytes::from_static_str(
                            "sim",
                        )))])])
                .encode(&mut frame, version),
            Op::FetchOffset { group, key } => OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(topic_name(&key.0))
                    .with_partition_indexes(vec![key.1])]))
                .encode(&mut frame, version),
            Op::Join { member_id } => JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str(MEMBERS_GROUP)))
                .with_session_timeout_ms(MEMBER_SESSION_MS)
                .with_rebalance_timeout_ms(MEMBER_REBALANCE_MS)
                .with_member_id(StrBytes::from_string(member_id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("sim"))
                    .with_metadata(Bytes::from_static(b"sim"))])
                .encode(&mut frame, version),
            Op::Sync {
                member_id,
                generation,
                assignments,
            } => SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str(MEMBERS_GROUP)))
                .with_generation_id(*generation)
                .with_member_id(StrBytes::from_string(member_id.clone()))
                .with_assignments(
                    assignments
                        .iter()
                        .map(|(member, partitions)| {
                            SyncGroupRequestAssignment::default()
                                .with_member_id(StrBytes::from_string(member.clone()))
                                .with_assignment(encode_partitions(partitions))
                        })
                        .collect(),
                )
                .encode(&mut frame, version),
            Op::Heartbeat {
                member_id,
                generation,
            } => HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str(MEMBERS_GROUP)))
                .with_generation_id(*generation)
                .with_member_id(StrBytes::from_string(member_id.clone()))
                .encode(&mut frame, version),
        };
        encoded.expect("a request body encodes");
        frame.freeze()
    }

    /// The broker closed a connection (it does after a request it cannot
    /// parse, which these clients never send).
    pub fn on_closed(&mut self, now: u64, connection: ConnectionId, out: &mut Vec<KafkaAction>) {
        for index in 0..self.clients.len() {
            if self.clients[index]
                .connection
                .is_some_and(|(_, c)| c == connection)
            {
                self.clients[index].connection = None;
                if let Some(in_flight) = self.clients[index].in_flight.take() {
                    self.settle_unknown_in_flight(index, &in_flight);
                    self.backoff(now, index, out);
                }
            }
        }
    }

    /// A response frame (with its length prefix) arrived on `connection`.
    pub fn on_response(
        &mut self,
        now: u64,
        connection: ConnectionId,
        frame: Bytes,
        out: &mut Vec<KafkaAction>,
    ) {
        let Some(index) = self.clients.iter().position(|client| {
            client
                .in_flight
                .as_ref()
                .is_some_and(|in_flight| in_flight.connection == connection)
        }) else {
            // A late answer on a connection its client gave up on.
            return;
        };
        let in_flight = self.clients[index].in_flight.take().expect("checked");
        let mut body = frame.slice(4..);
        let (key, version) = match &in_flight.op {
            Op::Metadata => (ApiKey::Metadata, METADATA_VERSION),
            Op::CreateTopic { .. } => (ApiKey::CreateTopics, CREATE_TOPICS_VERSION),
            Op::Reassign { .. } => (ApiKey::AlterPartitionReassignments, 0),
            Op::AddNode { .. } => (ApiKey::AddRaftVoter, 0),
            Op::RemoveNode { .. } => (ApiKey::RemoveRaftVoter, 0),
            Op::Produce { .. } => (ApiKey::Produce, PRODUCE_VERSION),
            Op::Fetch { .. } => (ApiKey::Fetch, FETCH_VERSION),
            Op::Commit { .. } => (ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION),
            Op::FetchOffset { .. } => (ApiKey::OffsetFetch, OFFSET_FETCH_VERSION),
            Op::Join { .. } => (ApiKey::JoinGroup, JOIN_GROUP_VERSION),
            Op::Sync { .. } => (ApiKey::SyncGroup, SYNC_GROUP_VERSION),
            Op::Heartbeat { .. } => (ApiKey::Heartbeat, HEARTBEAT_VERSION),
        };
        let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .expect("the broker's response header decodes");
        assert_eq!(
            header.correlation_id, in_flight.correlation,
            "responses come in request order on a connection"
        );
        // What the arms below record after the match takes the op apart:
        // a fetch's acknowledged end, and a commit or fetch of offsets whole
        // (cloned for those only; a produce carries all its values).
        let acknowledged_end = in_flight.acknowledged_end;
        let offsets_in_flight = matches!(in_flight.op, Op::Commit { .. } | Op::FetchOffset { .. })
            .then(|| in_flight.clone());
        let ok = match in_flight.op {
            Op::Metadata => {
                let response = MetadataResponse::decode(&mut body, version).expect("decodes");
                self.on_metadata(response);
                true
            }
            Op::CreateTopic { name } => {
                let response = CreateTopicsResponse::decode(&mut body, version).expect("decodes");
                let error = response.topics.first().map_or(-1, |t| t.error_code);
                let done = error == code::NONE || error == code::TOPIC_ALREADY_EXISTS;
                if done
                    && self
                        .wanted
                        .get(self.created)
                        .is_some_and(|(n, _)| *n == name)
                {
                    self.created += 1;
                    self.stats.topics_created += 1;
                    // The later topics are created while faults strike.
                    if self.created >= self.plan.topics_at_start {
                        self.next_create_at = now + self.rng.range(2_000, 15_000);
                        if self.liveness_produces.is_some() {
                            self.next_create_at = now;
                        }
                    }
                }
                done
            }
            Op::Reassign { .. } => {
                let response =
                    AlterPartitionReassignmentsResponse::decode(&mut body, 0).expect("decodes");
                let error = response
                    .responses
                    .first()
                    .and_then(|topic| topic.partitions.first())
                    .map_or(response.error_code, |partition| partition.error_code);
                if response.error_code == code::NONE && error == code::NONE {
                    self.stats.reassignments += 1;
                    if let Some((low, high)) = self.plan.reassign_gap_ms {
                        self.next_reassign_at = now + self.rng.range(low, high + 1);
                    }
                    if self.liveness_produces.is_some() {
                        self.next_reassign_at = u64::MAX;
                    }
                    true
                } else {
                    false
                }
            }
            Op::AddNode { .. } | Op::RemoveNode { .. } => {
                let (add, error) = if matches!(in_flight.op, Op::AddNode { .. }) {
                    let response = AddRaftVoterResponse::decode(&mut body, 0).expect("decodes");
                    (true, response.error_code)
                } else {
                    let response = RemoveRaftVoterResponse::decode(&mut body, 0).expect("decodes");
                    (false, response.error_code)
                };
                // A retry of a change that committed is refused as done
                // already ("already in" / "not in the cluster"): both end it.
                const INVALID_REQUEST: i16 = 42;
                if error == code::NONE || error == INVALID_REQUEST {
                    self.membership_changes.remove(0);
                    if add {
                        self.stats.nodes_added += 1;
                    } else {
                        self.stats.nodes_removed += 1;
                    }
                    self.next_membership_at = now + self.rng.range(3_000, 15_000);
                    if self.liveness_produces.is_some() {
                        self.next_membership_at = now;
                    }
                    true
                } else {
                    false
                }
            }
            Op::Produce { key, values } => {
                let response = ProduceResponse::decode(&mut body, version).expect("decodes");
                let answer = response
                    .responses
                    .first()
                    .and_then(|topic| topic.partition_responses.first());
                match answer {
                    Some(answer) if answer.error_code == code::NONE => {
                        let acknowledged =
                            self.history.acknowledged.entry(key.clone()).or_default();
                        for (position, value) in values.iter().enumerate() {
                            acknowledged.insert(answer.base_offset + position as i64, *value);
                        }
                        self.stats.produces_acknowledged += 1;
                        self.stats.records_acknowledged += values.len() as u64;
                        if let Some(produces) = &mut self.liveness_produces {
                            *produces.entry(key).or_default() += 1;
                        }
                        true
                    }
                    Some(answer) if code::PRODUCE_NOT_WRITTEN.contains(&answer.error_code) => {
                        self.history.refused.extend(values.iter().copied());
                        self.settle_unknown(&Op::Produce { key, values });
                        false
                    }
                    _ => {
                        self.settle_unknown(&Op::Produce { key, values });
                        false
                    }
                }
            }
            Op::Fetch { key, offset } => {
                let response = FetchResponse::decode(&mut body, version).expect("decodes");
                let answer = response
                    .responses
                    .first()
                    .and_then(|topic| topic.partitions.first());
                match answer {
                    Some(answer) if answer.error_code == code::NONE => {
                        self.on_fetched(index, key, offset, answer.records.clone());
                        true
                    }
                    Some(answer)
                        if answer.error_code == code::OFFSET_OUT_OF_RANGE
                            && offset >= answer.log_start_offset
                            && offset < acknowledged_end =>
                    {
                        // A Kafka consumer resets its position on this
                        // answer (to the log start or end, by
                        // auto.offset.reset), skipping or rereading
                        // records: it must come only for an offset past
                        // the end of the committed log.
                        self.history.violations.push(kafka_violation(
                            "kafka-out-of-range-inside-log",
                            format!(
                                "{}-{}: a fetch at offset {offset} was told OFFSET_OUT_OF_RANGE, \
                                 though offsets up to {} were acknowledged before it was sent \
                                 (log start {})",
                                key.0,
                                key.1,
                                acknowledged_end - 1,
                                answer.log_start_offset
                            ),
                        ));
                        self.settle_unknown(&Op::Fetch { key, offset });
                        false
                    }
                    _ => {
                        self.settle_unknown(&Op::Fetch { key, offset });
                        false
                    }
                }
            }
            Op::Commit { group, offset, .. } => {
                let response = OffsetCommitResponse::decode(&mut body, version).expect("decodes");
                let error = response
                    .topics
                    .first()
                    .and_then(|topic| topic.partitions.first())
                    .map_or(-1, |partition| partition.error_code);
                // Any error leaves the commit's outcome unknown to the
                // checker: some (a lost leadership) are answered while the
                // entry may still commit.
                let outcome = if error == code::NONE {
                    Outcome::Ok
                } else {
                    Outcome::Info
                };
                self.history.record_offset_operation(
                    index,
                    offsets_in_flight.as_ref().expect("a commit"),
                    outcome,
                    None,
                );
                if error == code::NONE {
                    let acknowledged = self
                        .history
                        .commits_acknowledged
                        .entry(group)
                        .or_insert(offset);
                    *acknowledged = (*acknowledged).max(offset);
                    self.stats.commits_acknowledged += 1;
                    if let Some(commits) = &mut self.liveness_commits {
                        *commits.entry(index).or_default() += 1;
                    }
                    true
                } else {
                    // Not the coordinator (or not yet): try another node.
                    self.drop_connection(index, out);
                    false
                }
            }
            Op::FetchOffset { group, .. } => {
                let response = OffsetFetchResponse::decode(&mut body, version).expect("decodes");
                let answer = response
                    .topics
                    .first()
                    .and_then(|topic| topic.partitions.first())
                    .filter(|_| response.error_code == code::NONE);
                match answer {
                    Some(answer) if answer.error_code == code::NONE => {
                        let offset = answer.committed_offset;
                        let completed = QueueOp::FetchCommitted {
                            group: group.clone(),
                            key: 0,
                            offset: u64::try_from(offset).ok(),
                        };
                        self.history.record_offset_operation(
                            index,
                            offsets_in_flight.as_ref().expect("an offset fetch"),
                            Outcome::Ok,
                            Some(completed),
                        );
                        let sent = self
                            .history
                            .commits_sent
                            .get(&group)
                            .is_some_and(|(_, sent)| sent.contains(&offset));
                        if offset != -1 && !sent {
                            self.history.violations.push(kafka_violation(
                                "kafka-unknown-offset",
                                format!("group {group}: OffsetFetch returned {offset}, which was never committed"),
                            ));
                        }
                        self.stats.offsets_read += 1;
                        true
                    }
                    _ => {
                        self.drop_connection(index, out);
                        false
                    }
                }
            }
            Op::Join { .. } => {
                let response = JoinGroupResponse::decode(&mut body, version).expect("decodes");
                self.on_joined(index, response, out)
            }
            Op::Sync {
                member_id,
                generation,
                ..
            } => {
                let response = SyncGroupResponse::decode(&mut body, version).expect("decodes");
                let membership = &mut self.clients[index].membership;
                match response.error_code {
                    code::NONE => {
                        let partitions = decode_partitions(&response.assignment);
                        membership.assigned = Some(partitions.clone());
                        membership.to_sync = None;
                        self.stats.group_syncs += 1;
                        self.history
                            .assignments
                            .entry(generation)
                            .or_default()
                            .insert(member_id, partitions);
                        true
                    }
                    error => {
                        self.rejoin(index, error, out);
                        false
                    }
                }
            }
            Op::Heartbeat { .. } => {
                let response = HeartbeatResponse::decode(&mut body, version).expect("decodes");
                match response.error_code {
                    code::NONE => true,
                    error => {
                        self.rejoin(index, error, out);
                        false
                    }
                }
            }
        };
        if ok {
            self.think(now, index, out);
        } else {
            self.backoff(now, index, out);
        }
    }

    /// A JoinGroup answer: on success the member syncs next (the leader
    /// with a round-robin assignment of the first topic's partitions).
    fn on_joined(
        &mut self,
        index: usize,
        response: JoinGroupResponse,
        out: &mut Vec<KafkaAction>,
    ) -> bool {
        if response.error_code == group_code::MEMBER_ID_REQUIRED {
            self.clients[index].membership.member_id = response.member_id.to_string();
            return false;
        }
        if response.error_code != code::NONE {
            self.rejoin(index, response.error_code, out);
            return false;
        }
        let partitions = self.topics.values().next().copied().unwrap_or(0);
        let membership = &mut self.clients[index].membership;
        membership.member_id = response.member_id.to_string();
        membership.generation = response.generation_id;
        membership.assigned = None;
        let mut assignments = Vec::new();
        if response.leader == response.member_id {
            let mut members: Vec<String> = response
                .members
                .iter()
                .map(|m| m.member_id.to_string())
                .collect();
            members.sort();
            for (position, member) in members.iter().enumerate() {
                let mine: Vec<i32> = (0..partitions)
                    .filter(|p| *p as usize % members.len() == position)
                    .collect();
                assignments.push((member.clone(), mine));
            }
        }
        membership.to_sync = Some(assignments);
        true
    }

    /// A member's request failed: it starts over with a JoinGroup (with
    /// no member id once the group no longer knows it), at another node
    /// when this one does not coordinate the group.
    fn rejoin(&mut self, index: usize, error: i16, out: &mut Vec<KafkaAction>) {
        let membership = &mut self.clients[index].membership;
        membership.assigned = None;
        membership.to_sync = None;
        if error == group_code::UNKNOWN_MEMBER_ID {
            membership.member_id.clear();
        }
        if error != group_code::ILLEGAL_GENERATION
            && error != code::REBALANCE_IN_PROGRESS
            && error != group_code::UNKNOWN_MEMBER_ID
        {
            self.drop_connection(index, out);
        }
    }

    fn on_metadata(&mut self, response: MetadataResponse) {
        for topic in response.topics {
            let Some(name) = topic.name else { continue };
            if topic.error_code != code::NONE {
                continue;
            }
            let name = name.0.to_string();
            self.topics
                .insert(name.clone(), topic.partitions.len() as i32);
            for partition in topic.partitions {
                let key = (name.clone(), partition.partition_index);
                if partition.error_code == code::NONE && partition.leader_id.0 > 0 {
                    self.leaders.insert(key, partition.leader_id.0 as NodeId);
                } else {
                    self.leaders.remove(&key);
                }
            }
        }
    }

    fn on_fetched(&mut self, index: usize, key: PartitionKey, offset: i64, records: Option<Bytes>) {
        let mut position = offset;
        let mut bytes = records.unwrap_or_default();
        while !bytes.is_empty() {
            let Ok(set) = RecordBatchDecoder::decode(&mut bytes) else {
                self.history.violations.push(kafka_violation(
                    "kafka-fetch-decodes",
                    format!(
                        "{}-{}: a fetch from offset {offset} returned bytes that do not decode",
                        key.0, key.1
                    ),
                ));
                return;
            };
            for record in set.records {
                if record.offset < position {
                    continue; // The batch began before the fetch offset.
                }
                if record.offset != position {
                    self.history.violations.push(kafka_violation(
                        "kafka-poll-skip",
                        format!(
                            "{}-{}: a fetch from offset {offset} skipped from {position} to {}",
                            key.0, key.1, record.offset
                        ),
                    ));
                }
                let value = record
                    .value
                    .as_deref()
                    .and_then(decode_value_id)
                    .unwrap_or(u64::MAX);
                let consumed = self.history.consumed.entry(key.clone()).or_default();
                match consumed.get(&record.offset) {
                    Some(&earlier) if earlier != value => {
                        self.history.violations.push(kafka_violation(
                            "kafka-read-changed",
                            format!(
                                "{}-{} offset {}: read {earlier:#x} earlier and {value:#x} now",
                                key.0, key.1, record.offset
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        consumed.insert(record.offset, value);
                        self.stats.records_consumed += 1;
                    }
                }
                position = record.offset + 1;
            }
        }
        self.clients[index].positions.insert(key, position);
    }
}

/// A member's assignment as the sim's leader encodes it: the partition
/// numbers of the first topic, 4 bytes each.
fn encode_partitions(partitions: &[i32]) -> Bytes {
    let mut out = BytesMut::new();
    for partition in partitions {
        out.extend_from_slice(&partition.to_be_bytes());
    }
    out.freeze()
}

fn decode_partitions(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| i32::from_be_bytes(chunk.try_into().expect("4 bytes")))
        .collect()
}

/// The records of a partition's stored batches as (offset, value id).
pub fn log_values<'a>(batches: impl Iterator<Item = &'a [u8]>) -> Vec<(i64, Option<u64>)> {
    let mut out = Vec::new();
    for batch in batches {
        let mut bytes = Bytes::copy_from_slice(batch);
        match RecordBatchDecoder::decode(&mut bytes) {
            Ok(set) => {
                for record in set.records {
                    out.push((
                        record.offset,
                        record.value.as_deref().and_then(decode_value_id),
                    ));
                }
            }
            Err(_) => out.push((-1, None)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartitionKey {
        ("t".to_string(), 0)
    }

    /// Values 1, 2, 3 sent; 1 and 2 acknowledged at offsets 0 and 1; a
    /// consumer read 1 at offset 0.
    fn history() -> KafkaHistory {
        let mut history = KafkaHistory::default();
        history.sent.extend([1, 2, 3]);
        history
            .acknowledged
            .insert(key(), BTreeMap::from([(0, 1), (1, 2)]));
        history.consumed.insert(key(), BTreeMap::from([(0, 1)]));
        history
    }

    fn check(log: &[(i64, Option<u64>)]) -> Vec<&'static str> {
        let logs = BTreeMap::from([(key(), log.to_vec())]);
        let mut found: Vec<&'static str> =
            history().check(&logs).iter().map(|v| v.invariant).collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// A committer sent offsets 1, 2 and 3 for group "g"; 2 was the largest
    /// acknowledged.
    fn offsets_check(final_offset: Option<i64>) -> Vec<&'static str> {
        let mut history = KafkaHistory::default();
        history
            .commits_sent
            .insert("g".into(), (key(), BTreeSet::from([1, 2, 3])));
        history.commits_acknowledged.insert("g".into(), 2);
        let finals = BTreeMap::from([("g".to_string(), final_offset)]);
        history
            .check_offsets(&finals)
            .iter()
            .map(|v| v.invariant)
            .collect()
    }

    #[test]
    fn committed_offsets_at_or_past_the_acknowledged_pass() {
        assert!(offsets_check(Some(2)).is_empty());
        // The unacknowledged 3 may have committed too.
        assert!(offsets_check(Some(3)).is_empty());
    }

    #[test]
    fn a_committed_offset_behind_the_acknowledged_one_is_lost() {
        assert_eq!(offsets_check(Some(1)), vec!["kafka-lost-offset-commit"]);
        assert_eq!(offsets_check(None), vec!["kafka-lost-offset-commit"]);
    }

    #[test]
    fn two_members_of_one_generation_with_one_partition_are_named() {
        let mut history = KafkaHistory::default();
        history.assignments.insert(
            1,
            BTreeMap::from([("a".to_string(), vec![0, 2]), ("b".to_string(), vec![1])]),
        );
        // A later generation may move partitions.
        history
            .assignments
            .insert(2, BTreeMap::from([("b".to_string(), vec![0, 1, 2])]));
        assert!(history.check_offsets(&BTreeMap::new()).is_empty());
        history
            .assignments
            .get_mut(&2)
            .expect("inserted")
            .insert("c".to_string(), vec![2]);
        let found: Vec<&str> = history
            .check_offsets(&BTreeMap::new())
            .iter()
            .map(|v| v.invariant)
            .collect();
        assert_eq!(found, vec!["kafka-generation-exclusive"]);
    }

    #[test]
    fn a_committed_offset_nobody_sent_is_named() {
        assert_eq!(offsets_check(Some(7)), vec!["kafka-unknown-offset"]);
    }

    #[test]
    fn a_log_with_every_acknowledged_record_passes() {
        assert!(check(&[(0, Some(1)), (1, Some(2))]).is_empty());
        // An unacknowledged value may or may not be there.
        assert!(check(&[(0, Some(1)), (1, Some(2)), (2, Some(3))]).is_empty());
    }

    #[test]
    fn a_missing_acknowledged_record_is_a_lost_write() {
        assert_eq!(check(&[(0, Some(1))]), ["kafka-lost-write"]);
    }

    #[test]
    fn an_acknowledged_record_at_another_offset_is_a_lost_write() {
        assert_eq!(
            check(&[(0, Some(1)), (1, Some(3)), (2, Some(2))]),
            ["kafka-lost-write"]
        );
    }

    #[test]
    fn a_value_the_broker_refused_in_the_log_is_named() {
        let mut history = history();
        history.refused.insert(3);
        let logs = BTreeMap::from([(key(), vec![(0, Some(1)), (1, Some(2)), (2, Some(3))])]);
        let found: Vec<&str> = history.check(&logs).iter().map(|v| v.invariant).collect();
        assert_eq!(found, ["kafka-refused-write-in-log"]);
        let logs = BTreeMap::from([(key(), vec![(0, Some(1)), (1, Some(2))])]);
        assert!(
            history.check(&logs).is_empty(),
            "refused and absent is right"
        );
    }

    #[test]
    fn a_value_at_two_offsets_is_a_duplicate() {
        assert_eq!(
            check(&[(0, Some(1)), (1, Some(2)), (2, Some(2))]),
            ["kafka-duplicate"]
        );
    }

    #[test]
    fn a_value_nobody_sent_is_named() {
        assert_eq!(
            check(&[(0, Some(1)), (1, Some(2)), (2, Some(9))]),
            ["kafka-unknown-value"]
        );
        assert_eq!(
            check(&[(0, Some(1)), (1, Some(2)), (2, None)]),
            ["kafka-unknown-value"]
        );
    }

    #[test]
    fn a_gap_in_offsets_is_named() {
        let mut history = history();
        history.acknowledged.clear();
        history.consumed.clear();
        let logs = BTreeMap::from([(key(), vec![(0, Some(1)), (2, Some(2))])]);
        let found: Vec<&str> = history.check(&logs).iter().map(|v| v.invariant).collect();
        assert_eq!(found, ["kafka-contiguous-offsets"]);
    }

    #[test]
    fn a_read_the_final_log_does_not_hold_was_not_committed() {
        let mut history = history();
        history.acknowledged.clear();
        let logs = BTreeMap::from([(key(), vec![(0, Some(3))])]);
        let found: Vec<&str> = history.check(&logs).iter().map(|v| v.invariant).collect();
        assert_eq!(found, ["kafka-read-not-committed"]);
    }
}
