//! The replicated state machine of the metadata group: topics, their
//! partitions and where they live, and topic configurations. Every node applies the same commands in the same order, so every
//! node agrees on which replication group serves which partition.

use std::collections::{BTreeMap, BTreeSet};

use runnel_io::{GroupId, NodeId};

use crate::offsets::{OFFSETS_GROUP_BASE, OFFSETS_PARTITIONS_MAX, OFFSETS_TOPIC};
use crate::state_machine::Reader;

/// The metadata group's id. Partition groups are numbered from 1.
pub const METADATA_GROUP: GroupId = 0;
/// Most partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;
/// Most topics in a cluster.
pub const TOPICS_MAX: usize = 10_000;
/// Most bytes of a topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most configuration entries on one topic.
pub const TOPIC_CONFIGS_MAX: usize = 64;

/// Kafka error codes the metadata machine answers with.
pub mod error_code {
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_REQUEST: i16 = 42;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlacement {
    pub group: GroupId,
    /// The nodes that should host the partition's replicas, the preferred
    /// leader first. After a reassignment the group's own membership gets
    /// there step by step: its leader adds, promotes and removes one node
    /// at a time (docs/protocol.md §12.4).
    pub replicas: Vec<NodeId>,
    /// The group's membership when the partition was created: the first
    /// replicas start from it.
    pub initial_replicas: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: Vec<PartitionPlacement>,
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataCommand {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: BTreeMap<String, String>,
        /// The cluster's nodes, to place replicas on.
        nodes: Vec<NodeId>,
        /// Each node's rack, when racks are configured: replicas spread over
        /// as many racks as they can (empty: no racks).
        racks: BTreeMap<NodeId, String>,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: u32,
        nodes: Vec<NodeId>,
        racks: BTreeMap<NodeId, String>,
    },
    /// Moves a partition's replicas to `replicas` (the preferred leader
    /// first); `nodes` is the cluster, to check them against.
    ReassignPartition {
        name: String,
        partition: u32,
        replicas: Vec<NodeId>,
        nodes: Vec<NodeId>,
    },
    /// Adds a node to the cluster; `nodes` is the cluster without it.
    AddNode {
        node_id: NodeId,
        address: NodeAddress,
        nodes: Vec<NodeId>,
    },
    /// Creates the internal offsets topic ([`OFFSETS_TOPIC`]), whose
    /// partitions' groups are numbered from [`OFFSETS_GROUP_BASE`] so that
    /// every node runs the offsets machine for them. The cluster proposes
    /// it itself; clients cannot create, delete or grow that topic.
    CreateOffsetsTopic {
        partitions: u32,
        replication_factor: u16,
        nodes: Vec<NodeId>,
        racks: BTreeMap<NodeId, String>,
    },
    /// Removes a node from the cluster; `nodes` is the cluster with it.
    /// Every partition with a replica on it moves that replica to the node
    /// with the fewest replicas that has none of the partition's.
    RemoveNode {
        node_id: NodeId,
        nodes: Vec<NodeId>,
    },
}

/// Where to reach a node added at run time (the configured ones are in
/// every node's configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    /// host:port of its peer listener.
    pub rpc_addr: String,
    pub kafka_host: String,
    pub kafka_port: u16,
    pub rack: Option<String>,
}

/// The longest host name or address a node may give.
pub const NODE_ADDRESS_BYTES_MAX: usize = 255;
/// The most nodes a cluster may have.
pub const CLUSTER_NODES_MAX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MetadataOutcome {
    Done,
    Refused { error_code: i16, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataState {
    topics: BTreeMap<String, Topic>,
    next_group: GroupId,
    /// Nodes added at run time, with where to reach them.
    added_nodes: BTreeMap<NodeId, NodeAddress>,
    /// Nodes removed from the cluster (configured or added).
    removed_nodes: BTreeSet<NodeId>,
}

impl Default for MetadataState {
    fn default() -> Self {
        MetadataState {
            topics: BTreeMap::new(),
            next_group: METADATA_GROUP + 1,
            added_nodes: BTreeMap::new(),
            removed_nodes: BTreeSet::new(),
        }
    }
}

/// Checks a topic name as Kafka does: 1 to 249 characters of ASCII
/// letters, digits, '.', '_' and '-', and not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be \"{name}\""));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name is {} characters, over the limit of {TOPIC_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "topic name \"{}\" contains '{}'; only ASCII letters, digits, '.', '_' and '-' are allowed",
            name.escape_debug(),
            bad.escape_debug()
        ));
    }
    Ok(())
}

impl MetadataState {
    pub fn topics(&self) -> &BTreeMap<String, Topic> {
        &self.topics
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Topic> {
        self.topics.values().find(|topic| &topic.id == id)
    }

    /// Nodes added at run time, with their addresses.
    pub fn added_nodes(&self) -> &BTreeMap<NodeId, NodeAddress> {
        &self.added_nodes
    }

    /// The cluster's nodes: the `configured` ones and those added, less
    /// those removed, ascending.
    pub fn members(&self, configured: &[NodeId]) -> Vec<NodeId> {
        let mut members: BTreeSet<NodeId> = configured.iter().copied().collect();
        members.extend(self.added_nodes.keys().copied());
        members.retain(|node| !self.removed_nodes.contains(node));
        members.into_iter().collect()
    }

    /// Every partition group and its replicas.
    pub fn partition_groups(&self) -> impl Iterator<Item = (&Topic, &PartitionPlacement)> {
        self.topics
            .values()
            .flat_map(|topic| topic.partitions.iter().map(move |p| (topic, p)))
    }

    /// Applies a committed command; `index` and `term` identify its entry
    /// (they seed the topic id, so that every node derives the same one).
    pub fn apply(&mut self, command: MetadataCommand, index: u64, term: u64) -> MetadataOutcome {
        match command {
            MetadataCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                nodes,
                racks,
            } => {
                if let Err(message) = validate_topic_name(&name) {
                    return refused(error_code::INVALID_TOPIC_EXCEPTION, message);
                }
                if name == OFFSETS_TOPIC {
                    return refused(error_code::INVALID_REQUEST, internal_topic_message());
                }
                if self.topics.contains_key(&name) {
                    return refused(
                        error_code::TOPIC_ALREADY_EXISTS,
                        format!("topic \"{name}\" already exists"),
                    );
                }
                if self.topics.len() >= TOPICS_MAX {
                    return refused(
                        error_code::POLICY_VIOLATION,
                        format!("the cluster has the most topics allowed ({TOPICS_MAX})"),
                    );
                }
                if partitions == 0 || partitions > TOPIC_PARTITIONS_MAX {
                    return refused(
                        error_code::INVALID_PARTITIONS,
                        format!("partitions must be 1 to {TOPIC_PARTITIONS_MAX}"),
                    );
                }
                if replication_factor == 0 || usize::from(replication_factor) > nodes.len() {
                    return refused(
                        error_code::INVALID_REPLICATION_FACTOR,
                        format!(
                            "replication factor {replication_factor} needs that many nodes; the cluster has {}",
                            nodes.len()
                        ),
                    );
                }
                let id = topic_id(&name, index, term);
                let mut topic = Topic {
                    name: name.clone(),
                    id,
                    partitions: Vec::new(),
                    configs,
                };
                self.add_partitions(&mut topic, partitions, replication_factor, &nodes, &racks);
                self.topics.insert(name, topic);
                MetadataOutcome::Done
            }
            MetadataCommand::DeleteTopic { name } if name == OFFSETS_TOPIC => {
                refused(error_code::INVALID_REQUEST, internal_topic_message())
            }
            MetadataCommand::CreatePartitions { name, .. } if name == OFFSETS_TOPIC => {
                refused(error_code::INVALID_REQUEST, internal_topic_message())
            }
            MetadataCommand::CreateOffsetsTopic {
                partitions,
                replication_factor,
                nodes,
                racks,
            } => {
                if self.topics.contains_key(OFFSETS_TOPIC) {
                    return refused(
                        error_code::TOPIC_ALREADY_EXISTS,
                        format!("topic \"{OFFSETS_TOPIC}\" already exists"),
                    );
                }
                if partitions == 0 || partitions > OFFSETS_PARTITIONS_MAX {
                    return refused(
                        error_code::INVALID_PARTITIONS,
                        format!("the offsets topic has 1 to {OFFSETS_PARTITIONS_MAX} partitions"),
                    );
                }
                if replication_factor == 0 || usize::from(replication_factor) > nodes.len() {
                    return refused(
                        error_code::INVALID_REPLICATION_FACTOR,
                        format!(
                            "replication factor {replication_factor} needs that many nodes; the cluster has {}",
                            nodes.len()
                        ),
                    );
                }
                let order = placement_order(&nodes, &racks);
                let placements = (0..partitions)
                    .map(|index| {
                        let group = OFFSETS_GROUP_BASE + u64::from(index);
                        let replicas = pick_replicas(
                            &order,
                            index as usize % order.len(),
                            usize::from(replication_factor),
                            &racks,
                        );
                        PartitionPlacement {
                            group,
                            initial_replicas: replicas.clone(),
                            replicas,
                        }
                    })
                    .collect();
                let topic = Topic {
                    name: OFFSETS_TOPIC.to_string(),
                    id: topic_id(OFFSETS_TOPIC, index, term),
                    partitions: placements,
                    configs: BTreeMap::from([(
                        "cleanup.policy".to_string(),
                        "compact".to_string(),
                    )]),
                };
                self.topics.insert(OFFSETS_TOPIC.to_string(), topic);
                MetadataOutcome::Done
            }
            MetadataCommand::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(_) => MetadataOutcome::Done,
                None => refused(
                    error_code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic \"{name}\" does not exist"),
                ),
            },
            MetadataCommand::CreatePartitions {
                name,
                count,
                nodes,
                racks,
            } => {
                let Some(mut topic) = self.topics.remove(&name) else {
                    return refused(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic \"{name}\" does not exist"),
                    );
                };
                let current = topic.partitions.len() as u32;
                let outcome = if count <= current || count > TOPIC_PARTITIONS_MAX {
                    refused(
                        error_code::INVALID_PARTITIONS,
                        format!(
                            "topic \"{name}\" has {current} partitions; the new count must be more, and at most {TOPIC_PARTITIONS_MAX}"
                        ),
                    )
                } else {
                    let replication_factor = topic.partitions[0].replicas.len() as u16;
                    self.add_partitions(
                        &mut topic,
                        count - current,
                        replication_factor,
                        &nodes,
                        &racks,
                    );
                    MetadataOutcome::Done
                };
                self.topics.insert(name, topic);
                outcome
            }
            MetadataCommand::ReassignPartition {
                name,
                partition,
                replicas,
                nodes,
            } => {
                let Some(topic) = self.topics.get_mut(&name) else {
                    return refused(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic \"{name}\" does not exist"),
                    );
                };
                let Some(placement) = topic.partitions.get_mut(partition as usize) else {
                    return refused(
                        error_code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic \"{name}\" has no partition {partition}"),
                    );
                };
                let mut distinct = replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if replicas.is_empty()
                    || distinct.len() != replicas.len()
                    || !replicas.iter().all(|node| nodes.contains(node))
                {
                    return refused(
                        error_code::INVALID_REPLICA_ASSIGNMENT,
                        format!(
                            "replicas {replicas:?} must be distinct nodes of the cluster {nodes:?}"
                        ),
                    );
                }
                placement.replicas = replicas;
                MetadataOutcome::Done
            }
            MetadataCommand::AddNode {
                node_id,
                address,
                nodes,
            } => {
                if nodes.contains(&node_id) {
                    return refused(
                        error_code::INVALID_REQUEST,
                        format!("node {node_id} is already in the cluster"),
                    );
                }
                if nodes.len() >= CLUSTER_NODES_MAX {
                    return refused(
                        error_code::POLICY_VIOLATION,
                        format!("the cluster has the most nodes allowed ({CLUSTER_NODES_MAX})"),
                    );
                }
                self.removed_nodes.remove(&node_id);
                self.added_nodes.insert(node_id, address);
                MetadataOutcome::Done
            }
            MetadataCommand::RemoveNode { node_id, nodes } => {
                if !nodes.contains(&node_id) {
                    return refused(
                        error_code::INVALID_REQUEST,
                        format!("node {node_id} is not in the cluster"),
                    );
                }
                let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != node_id).collect();
                if rest.is_empty() {
                    return refused(
                        error_code::INVALID_REQUEST,
                        "the last node of a cluster cannot be removed".into(),
                    );
                }
                // Every replica on the node moves first, or nothing does.
                let mut load: BTreeMap<NodeId, usize> = rest.iter().map(|n| (*n, 0)).collect();
                for (_, placement) in self.partition_groups() {
                    for node in &placement.replicas {
                        if let Some(count) = load.get_mut(node) {
                            *count += 1;
                        }
                    }
                }
                let mut moves = Vec::new();
                for topic in self.topics.values() {
                    for (index, placement) in topic.partitions.iter().enumerate() {
                        let Some(at) = placement.replicas.iter().position(|n| *n == node_id) else {
                            continue;
                        };
                        let Some((&spare, _)) = load
                            .iter()
                            .filter(|(n, _)| !placement.replicas.contains(n))
                            .min_by_key(|(n, count)| (**count, **n))
                        else {
                            return refused(
                                error_code::INVALID_REPLICATION_FACTOR,
                                format!(
                                    "{}-{index} has {} replicas; without node {node_id} the cluster has {} nodes",
                                    topic.name,
                                    placement.replicas.len(),
                                    rest.len()
                                ),
                            );
                        };
                        *load.get_mut(&spare).expect("listed") += 1;
                        moves.push((topic.name.clone(), index, at, spare));
                    }
                }
                for (name, index, at, spare) in moves {
                    let placement =
                        &mut self.topics.get_mut(&name).expect("listed").partitions[index];
                    placement.replicas[at] = spare;
                }
                self.added_nodes.remove(&node_id);
                self.removed_nodes.insert(node_id);
                MetadataOutcome::Done
            }
        }
    }

    /// Places new partitions: each on `replication_factor` nodes taken in
    /// turn from a different starting node, so that leaders spread. With
    /// racks, the nodes are ordered rack by rack in turn, and a partition's
    /// replicas take a node of a rack not used yet while there is one
    /// (Kafka's rack-aware placement): a rack lost takes at most
    /// `ceil(replicas / racks)` replicas of any partition.
    fn add_partitions(
        &mut self,
        topic: &mut Topic,
        count: u32,
        replication_factor: u16,
        nodes: &[NodeId],
        racks: &BTreeMap<NodeId, String>,
    ) {
        let nodes = placement_order(nodes, racks);
        for _ in 0..count {
            let group = self.next_group;
            self.next_group += 1;
            let start = (group as usize) % nodes.len();
            let replicas = pick_replicas(&nodes, start, usize::from(replication_factor), racks);
            topic.partitions.push(PartitionPlacement {
                group,
                initial_replicas: replicas.clone(),
                replicas,
            });
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.next_group.to_le_bytes());
        out.extend_from_slice(&(self.topics.len() as u64).to_le_bytes());
        for topic in self.topics.values() {
            put_str(&mut out, &topic.name);
            out.extend_from_slice(&topic.id);
            out.extend_from_slice(&(topic.partitions.len() as u64).to_le_bytes());
            for partition in &topic.partitions {
                out.extend_from_slice(&partition.group.to_le_bytes());
                put_nodes(&mut out, &partition.replicas);
                put_nodes(&mut out, &partition.initial_replicas);
            }
            put_configs(&mut out, &topic.configs);
        }
        out.extend_from_slice(&(self.added_nodes.len() as u64).to_le_bytes());
        for (node, address) in &self.added_nodes {
            out.extend_from_slice(&node.to_le_bytes());
            put_address(&mut out, address);
        }
        let removed: Vec<NodeId> = self.removed_nodes.iter().copied().collect();
        put_nodes(&mut out, &removed);
        out
    }

    pub fn decode(data: &[u8]) -> MetadataState {
        let mut reader = Reader::new(data);
        // Version 1 had no initial replicas: nothing had moved then.
        let version = reader.u32();
        assert!(
            (1..=SNAPSHOT_VERSION).contains(&version),
            "metadata snapshot version {version}"
        );
        let next_group = reader.u64();
        let mut topics = BTreeMap::new();
        for _ in 0..reader.u64() {
            let name = get_str(&mut reader).expect("checksummed snapshot");
            let id: [u8; 16] = reader.bytes(16).try_into().expect("16 bytes");
            let mut partitions = Vec::new();
            for _ in 0..reader.u64() {
                let group = reader.u64();
                let replicas = get_nodes(&mut reader);
                let initial_replicas = if version == 1 {
                    replicas.clone()
                } else {
                    get_nodes(&mut reader)
                };
                partitions.push(PartitionPlacement {
                    group,
                    replicas,
                    initial_replicas,
                });
            }
            let configs = get_configs(&mut reader).expect("checksummed snapshot");
            topics.insert(
                name.clone(),
                Topic {
                    name,
                    id,
                    partitions,
                    configs,
                },
            );
        }
        let mut added_nodes = BTreeMap::new();
        let mut removed_nodes = BTreeSet::new();
        if version >= 3 {
            for _ in 0..reader.u64() {
                let node = reader.u64();
                added_nodes.insert(node, get_address(&mut reader));
            }
            removed_nodes.extend(get_nodes(&mut reader));
        }
        reader.finish();
        MetadataState {
            topics,
            next_group,
            added_nodes,
            removed_nodes,
        }
    }
}

/// The cluster's nodes in placement order: ascending without racks; with
/// racks, the first node of each rack (racks in name order), then the second
/// of each, and so on.
fn placement_order(nodes: &[NodeId], racks: &BTreeMap<NodeId, String>) -> Vec<NodeId> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if racks.is_empty() {
        return nodes;
    }
    let mut by_rack: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
    for node in &nodes {
        let rack = racks.get(node).map_or("", String::as_str);
        by_rack.entry(rack).or_default().push(*node);
    }
    let deepest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut order = Vec::with_capacity(nodes.len());
    for depth in 0..deepest {
        for rack_nodes in by_rack.values() {
            if let Some(node) = rack_nodes.get(depth) {
                order.push(*node);
            }
        }
    }
    debug_assert_eq!(order.len(), nodes.len());
    order
}

/// `count` replicas walking `order` from `start`: first one node per rack
/// not used yet, then any node not chosen yet. Without racks every node is
/// its own rack, which takes consecutive nodes.
fn pick_replicas(
    order: &[NodeId],
    start: usize,
    count: usize,
    racks: &BTreeMap<NodeId, String>,
) -> Vec<NodeId> {
    let count = count.min(order.len());
    let walk = || (0..order.len()).map(|i| order[(start + i) % order.len()]);
    let rack_of = |node: NodeId| {
        racks
            .get(&node)
            .cloned()
            .unwrap_or_else(|| node.to_string())
    };
    let mut chosen: Vec<NodeId> = Vec::with_capacity(count);
    let mut used_racks = std::collections::BTreeSet::new();
    for node in walk() {
        if chosen.len() == count {
            break;
        }
        if used_racks.insert(rack_of(node)) {
            chosen.push(node);
        }
    }
    for node in walk() {
        if chosen.len() == count {
            break;
        }
        if !chosen.contains(&node) {
            chosen.push(node);
        }
    }
    chosen
}

fn internal_topic_message() -> String {
    format!("\"{OFFSETS_TOPIC}\" is the cluster's internal offsets topic")
}

fn refused(error_code: i16, message: String) -> MetadataOutcome {
    MetadataOutcome::Refused {
        error_code,
        message,
    }
}

/// A topic id derived from what every node sees alike: the name and the
/// entry that created it. Never all zeros (Kafka's "no id").
fn topic_id(name: &str, index: u64, term: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (half, seed) in [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142]
        .into_iter()
        .enumerate()
    {
        let mut hash = seed;
        for byte in name
            .bytes()
            .chain(index.to_le_bytes())
            .chain(term.to_le_bytes())
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        id[half * 8..half * 8 + 8].copy_from_slice(&hash.to_be_bytes());
    }
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

const COMMAND_CREATE_TOPIC: u8 = 1;
const COMMAND_DELETE_TOPIC: u8 = 2;
const COMMAND_CREATE_PARTITIONS: u8 = 3;
const COMMAND_REASSIGN_PARTITION: u8 = 4;
const SNAPSHOT_VERSION: u32 = 3;
const COMMAND_ADD_NODE: u8 = 5;
const COMMAND_REMOVE_NODE: u8 = 6;
const COMMAND_CREATE_OFFSETS_TOPIC: u8 = 7;

impl MetadataCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            MetadataCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                nodes,
                racks,
            } => {
                out.push(COMMAND_CREATE_TOPIC);
                put_str(&mut out, name);
                out.extend_from_slice(&partitions.to_le_bytes());
                out.extend_from_slice(&u32::from(*replication_factor).to_le_bytes());
                put_configs(&mut out, configs);
                put_nodes(&mut out, nodes);
                put_racks(&mut out, racks);
            }
            MetadataCommand::DeleteTopic { name } => {
                out.push(COMMAND_DELETE_TOPIC);
                put_str(&mut out, name);
            }
            MetadataCommand::CreatePartitions {
                name,
                count,
                nodes,
                racks,
            } => {
                out.push(COMMAND_CREATE_PARTITIONS);
                put_str(&mut out, name);
                out.extend_from_slice(&count.to_le_bytes());
                put_nodes(&mut out, nodes);
                put_racks(&mut out, racks);
            }
            MetadataCommand::ReassignPartition {
                name,
                partition,
                replicas,
                nodes,
            } => {
                out.push(COMMAND_REASSIGN_PARTITION);
                put_str(&mut out, name);
                out.extend_from_slice(&partition.to_le_bytes());
                put_nodes(&mut out, replicas);
                put_nodes(&mut out, nodes);
            }
            MetadataCommand::AddNode {
                node_id,
                address,
                nodes,
            } => {
                out.push(COMMAND_ADD_NODE);
                out.extend_from_slice(&node_id.to_le_bytes());
                put_address(&mut out, address);
                put_nodes(&mut out, nodes);
            }
            MetadataCommand::CreateOffsetsTopic {
                partitions,
                replication_factor,
                nodes,
                racks,
            } => {
                out.push(COMMAND_CREATE_OFFSETS_TOPIC);
                out.extend_from_slice(&partitions.to_le_bytes());
                out.extend_from_slice(&u32::from(*replication_factor).to_le_bytes());
                put_nodes(&mut out, nodes);
                put_racks(&mut out, racks);
            }
            MetadataCommand::RemoveNode { node_id, nodes } => {
                out.push(COMMAND_REMOVE_NODE);
                out.extend_from_slice(&node_id.to_le_bytes());
                put_nodes(&mut out, nodes);
            }
        }
        out
    }

    /// Decodes an entry payload. Entries are checksummed by storage and
    /// written only by this module, so `None` means a programmer error or a
    /// newer format; the caller refuses the command on every node alike.
    pub fn decode(data: &[u8]) -> Option<MetadataCommand> {
        let (&tag, rest) = data.split_first()?;
        let mut cursor = Cursor { data: rest };
        let command = match tag {
            COMMAND_CREATE_TOPIC => MetadataCommand::CreateTopic {
                name: cursor.string()?,
                partitions: cursor.u32()?,
                replication_factor: u16::try_from(cursor.u32()?).ok()?,
                configs: cursor.configs()?,
                nodes: cursor.nodes()?,
                racks: cursor.racks()?,
            },
            COMMAND_DELETE_TOPIC => MetadataCommand::DeleteTopic {
                name: cursor.string()?,
            },
            COMMAND_CREATE_PARTITIONS => MetadataCommand::CreatePartitions {
                name: cursor.string()?,
                count: cursor.u32()?,
                nodes: cursor.nodes()?,
                racks: cursor.racks()?,
            },
            COMMAND_ADD_NODE => MetadataCommand::AddNode {
                node_id: cursor.u64()?,
                address: cursor.address()?,
                nodes: cursor.nodes()?,
            },
            COMMAND_CREATE_OFFSETS_TOPIC => MetadataCommand::CreateOffsetsTopic {
                partitions: cursor.u32()?,
                replication_factor: u16::try_from(cursor.u32()?).ok()?,
                nodes: cursor.nodes()?,
                racks: cursor.racks()?,
            },
            COMMAND_REMOVE_NODE => MetadataCommand::RemoveNode {
                node_id: cursor.u64()?,
                nodes: cursor.nodes()?,
            },
            COMMAND_REASSIGN_PARTITION => MetadataCommand::ReassignPartition {
                name: cursor.string()?,
                partition: cursor.u32()?,
                replicas: cursor.nodes()?,
                nodes: cursor.nodes()?,
            },
            _ => return None,
        };
        cursor.data.is_empty().then_some(command)
    }
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn put_nodes(out: &mut Vec<u8>, nodes: &[NodeId]) {
    out.extend_from_slice(&(nodes.len() as u32).to_le_bytes());
    for node in nodes {
        out.extend_from_slice(&node.to_le_bytes());
    }
}

/// Racks trail their command, and only when there are some: entries written
/// before racks existed decode as "no racks".
fn put_racks(out: &mut Vec<u8>, racks: &BTreeMap<NodeId, String>) {
    if racks.is_empty() {
        return;
    }
    out.extend_from_slice(&(racks.len() as u32).to_le_bytes());
    for (node, rack) in racks {
        out.extend_from_slice(&node.to_le_bytes());
        put_str(out, rack);
    }
}

fn put_address(out: &mut Vec<u8>, address: &NodeAddress) {
    put_str(out, &address.rpc_addr);
    put_str(out, &address.kafka_host);
    out.extend_from_slice(&u32::from(address.kafka_port).to_le_bytes());
    put_str(out, address.rack.as_deref().unwrap_or(""));
}

fn get_address(reader: &mut Reader<'_>) -> NodeAddress {
    let rpc_addr = get_str(reader).expect("checksummed snapshot");
    let kafka_host = get_str(reader).expect("checksummed snapshot");
    let kafka_port = u16::try_from(reader.u32()).expect("checksummed snapshot");
    let rack = get_str(reader).expect("checksummed snapshot");
    NodeAddress {
        rpc_addr,
        kafka_host,
        kafka_port,
        rack: (!rack.is_empty()).then_some(rack),
    }
}

fn put_configs(out: &mut Vec<u8>, configs: &BTreeMap<String, String>) {
    out.extend_from_slice(&(configs.len() as u32).to_le_bytes());
    for (key, value) in configs {
        put_str(out, key);
        put_str(out, value);
    }
}

fn get_str(reader: &mut Reader<'_>) -> Option<String> {
    let length = reader.u32() as usize;
    String::from_utf8(reader.bytes(length).to_vec()).ok()
}

fn get_nodes(reader: &mut Reader<'_>) -> Vec<NodeId> {
    (0..reader.u32()).map(|_| reader.u64()).collect()
}

fn get_configs(reader: &mut Reader<'_>) -> Option<BTreeMap<String, String>> {
    let mut configs = BTreeMap::new();
    for _ in 0..reader.u32() {
        let key = get_str(reader)?;
        let value = get_str(reader)?;
        configs.insert(key, value);
    }
    Some(configs)
}

/// A reader of entry payloads that returns `None` instead of panicking.
struct Cursor<'a> {
    data: &'a [u8],
}

impl Cursor<'_> {
    fn take(&mut self, length: usize) -> Option<&[u8]> {
        if length > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(length);
        self.data = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let length = self.u32()? as usize;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }
    fn nodes(&mut self) -> Option<Vec<NodeId>> {
        let count = self.u32()? as usize;
        if count > self.data.len() / 8 {
            return None;
        }
        (0..count).map(|_| self.u64()).collect()
    }
    fn address(&mut self) -> Option<NodeAddress> {
        let rpc_addr = self.string()?;
        let kafka_host = self.string()?;
        let kafka_port = u16::try_from(self.u32()?).ok()?;
        let rack = self.string()?;
        Some(NodeAddress {
            rpc_addr,
            kafka_host,
            kafka_port,
            rack: (!rack.is_empty()).then_some(rack),
        })
    }
    fn racks(&mut self) -> Option<BTreeMap<NodeId, String>> {
        if self.data.is_empty() {
            return Some(BTreeMap::new());
        }
        let count = self.u32()? as usize;
        if count > self.data.len() / 12 {
            return None;
        }
        let mut racks = BTreeMap::new();
        for _ in 0..count {
            let node = self.u64()?;
            racks.insert(node, self.string()?);
        }
        Some(racks)
    }
    fn configs(&mut self) -> Option<BTreeMap<String, String>> {
        let count = self.u32()? as usize;
        if count > TOPIC_CONFIGS_MAX {
            return None;
        }
        let mut configs = BTreeMap::new();
        for _ in 0..count {
            let key = self.string()?;
            let value = self.string()?;
            configs.insert(key, value);
        }
        Some(configs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, partitions: u32) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
            nodes: vec![1],
            racks: BTreeMap::new(),
        }
    }

    #[test]
    fn topics_get_groups_and_stable_ids() {
        let mut state = MetadataState::default();
        assert_eq!(
            state.apply(create("orders", 3), 5, 1),
            MetadataOutcome::Done
        );
        let topic = state.topic("orders").expect("created");
        let groups: Vec<GroupId> = topic.partitions.iter().map(|p| p.group).collect();
        assert_eq!(groups, vec![1, 2, 3]);
        assert_ne!(topic.id, [0; 16]);
        assert!(matches!(
            state.apply(create("orders", 1), 6, 1),
            MetadataOutcome::Refused {
                error_code: error_code::TOPIC_ALREADY_EXISTS,
                ..
            }
        ));
        assert!(matches!(
            state.apply(create("bad/name", 1), 7, 1),
            MetadataOutcome::Refused {
                error_code: error_code::INVALID_TOPIC_EXCEPTION,
                ..
            }
        ));
        let grow = MetadataCommand::CreatePartitions {
            name: "orders".into(),
            count: 5,
            nodes: vec![1],
            racks: BTreeMap::new(),
        };
        assert_eq!(state.apply(grow, 8, 1), MetadataOutcome::Done);
        assert_eq!(state.topic("orders").unwrap().partitions.len(), 5);
        let decoded = MetadataState::decode(&state.encode());
        assert_eq!(decoded, state);
        let delete = MetadataCommand::DeleteTopic {
            name: "orders".into(),
        };
        assert_eq!(state.apply(delete, 10, 1), MetadataOutcome::Done);
        assert!(state.topics().is_empty());
    }

    fn racks(pairs: &[(NodeId, &str)]) -> BTreeMap<NodeId, String> {
        pairs
            .iter()
            .map(|(node, rack)| (*node, rack.to_string()))
            .collect()
    }

    /// Six nodes in three racks of two; every partition of replication
    /// factor 3 gets one replica per rack, and 2 replicas two racks.
    #[test]
    fn replicas_spread_over_racks() {
        let mut state = MetadataState::default();
        let racks = racks(&[(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")]);
        for (name, factor) in [("three", 3), ("two", 2)] {
            let command = MetadataCommand::CreateTopic {
                name: name.into(),
                partitions: 12,
                replication_factor: factor,
                configs: BTreeMap::new(),
                nodes: vec![6, 5, 4, 3, 2, 1],
                racks: racks.clone(),
            };
            assert_eq!(
                MetadataCommand::decode(&command.encode()),
                Some(command.clone())
            );
            assert_eq!(state.apply(command, 1, 1), MetadataOutcome::Done);
            let mut leaders = BTreeMap::new();
            for placement in &state.topic(name).unwrap().partitions {
                let spread: std::collections::BTreeSet<&String> =
                    placement.replicas.iter().map(|node| &racks[node]).collect();
                assert_eq!(
                    spread.len(),
                    usize::from(factor),
                    "{name}: {:?} shares a rack",
                    placement.replicas
                );
                *leaders.entry(placement.replicas[0]).or_insert(0) += 1;
            }
            // Preferred leaders spread over every node too.
            assert_eq!(leaders.len(), 6, "{name}: {leaders:?}");
        }
        // Without racks, placement is what it always was: consecutive nodes.
        let command = MetadataCommand::CreateTopic {
            name: "plain".into(),
            partitions: 1,
            replication_factor: 3,
            configs: BTreeMap::new(),
            nodes: vec![1, 2, 3, 4, 5, 6],
            racks: BTreeMap::new(),
        };
        state.apply(command, 2, 1);
        let placement = &state.topic("plain").unwrap().partitions[0];
        let start = placement.group as usize % 6;
        let expected: Vec<NodeId> = (0..3).map(|i| ((start + i) % 6) as NodeId + 1).collect();
        assert_eq!(placement.replicas, expected);
    }

    /// Adding a node makes it a member; removing one moves each of its
    /// replicas to the least loaded node the partition does not use, or
    /// refuses when a partition would have nowhere to go.
    #[test]
    fn nodes_join_and_leave_and_replicas_follow() {
        let mut state = MetadataState::default();
        let configured = [1, 2, 3];
        let create = MetadataCommand::CreateTopic {
            name: "t".into(),
            partitions: 3,
            replication_factor: 3,
            configs: BTreeMap::new(),
            nodes: configured.to_vec(),
            racks: BTreeMap::new(),
        };
        assert_eq!(state.apply(create, 1, 1), MetadataOutcome::Done);
        let remove_1 = MetadataCommand::RemoveNode {
            node_id: 1,
            nodes: configured.to_vec(),
        };
        // Three replicas on three nodes: node 1's have nowhere to go.
        assert!(matches!(
            state.apply(remove_1, 2, 1),
            MetadataOutcome::Refused {
                error_code: error_code::INVALID_REPLICATION_FACTOR,
                ..
            }
        ));
        let address = NodeAddress {
            rpc_addr: "h4:19092".into(),
            kafka_host: "h4".into(),
            kafka_port: 9092,
            rack: None,
        };
        let add_4 = MetadataCommand::AddNode {
            node_id: 4,
            address: address.clone(),
            nodes: configured.to_vec(),
        };
        assert_eq!(
            MetadataCommand::decode(&add_4.encode()),
            Some(add_4.clone())
        );
        assert_eq!(state.apply(add_4.clone(), 3, 1), MetadataOutcome::Done);
        assert_eq!(state.members(&configured), vec![1, 2, 3, 4]);
        let again = MetadataCommand::AddNode {
            node_id: 4,
            address,
            nodes: state.members(&configured),
        };
        assert!(matches!(
            state.apply(again, 4, 1),
            MetadataOutcome::Refused { .. }
        ));
        let remove_1 = MetadataCommand::RemoveNode {
            node_id: 1,
            nodes: state.members(&configured),
        };
        assert_eq!(state.apply(remove_1, 5, 1), MetadataOutcome::Done);
        assert_eq!(state.members(&configured), vec![2, 3, 4]);
        for (_, placement) in state.partition_groups() {
            let mut replicas = placement.replicas.clone();
            replicas.sort_unstable();
            assert_eq!(replicas, vec![2, 3, 4], "node 1's replica went to node 4");
        }
        let decoded = MetadataState::decode(&state.encode());
        assert_eq!(decoded, state);
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        for command in [
            create("a", 2),
            MetadataCommand::DeleteTopic { name: "a".into() },
            MetadataCommand::CreatePartitions {
                name: "a".into(),
                count: 3,
                nodes: vec![1, 2],
                racks: BTreeMap::new(),
            },
            MetadataCommand::CreateOffsetsTopic {
                partitions: 8,
                replication_factor: 3,
                nodes: vec![1, 2, 3],
                racks: BTreeMap::new(),
            },
        ] {
            let encoded = command.encode();
            assert_eq!(MetadataCommand::decode(&encoded), Some(command));
            for length in 0..encoded.len() {
                assert_eq!(MetadataCommand::decode(&encoded[..length]), None);
            }
        }
    }

    #[test]
    fn the_offsets_topic_is_the_clusters_own() {
        let mut state = MetadataState::default();
        let offsets_topic = MetadataCommand::CreateOffsetsTopic {
            partitions: 4,
            replication_factor: 3,
            nodes: vec![1, 2, 3],
            racks: BTreeMap::new(),
        };
        assert_eq!(
            state.apply(offsets_topic.clone(), 1, 1),
            MetadataOutcome::Done
        );
        let topic = state.topic(OFFSETS_TOPIC).expect("created");
        assert_eq!(topic.partitions.len(), 4);
        for (index, placement) in topic.partitions.iter().enumerate() {
            assert_eq!(placement.group, OFFSETS_GROUP_BASE + index as u64);
            assert!(crate::offsets::is_offsets_group(placement.group));
            assert_eq!(placement.replicas.len(), 3);
        }
        // Leaders spread: each node is the preferred replica of some.
        let preferred: BTreeSet<NodeId> = topic.partitions.iter().map(|p| p.replicas[0]).collect();
        assert_eq!(preferred.len(), 3);
        // Ordinary partitions keep their own numbering.
        state.apply(create("a", 1), 2, 1);
        assert_eq!(state.topic("a").unwrap().partitions[0].group, 1);
        for refused_command in [
            offsets_topic,
            create(OFFSETS_TOPIC, 1),
            MetadataCommand::DeleteTopic {
                name: OFFSETS_TOPIC.into(),
            },
            MetadataCommand::CreatePartitions {
                name: OFFSETS_TOPIC.into(),
                count: 9,
                nodes: vec![1, 2, 3],
                racks: BTreeMap::new(),
            },
        ] {
            assert!(matches!(
                state.apply(refused_command, 3, 1),
                MetadataOutcome::Refused { .. }
            ));
        }
        assert_eq!(state.topic(OFFSETS_TOPIC).unwrap().partitions.len(), 4);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders-v1.eu_west").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }
}
