//! The broker: Kafka requests in, Kafka responses out, on top of the node
//! core. Every topic partition is a replication group of the core (a group of
//! one on a single node); topics and their partitions live in the metadata
//! group. Like the core, the broker does no IO of its own and reads no global
//! time or randomness: the shell (tokio in production, a simulator in tests)
//! feeds it events and carries out what it asks through [`BrokerEnv`].

use bytes::Bytes;
use runnel_core::Envelope;
use runnel_io::{Clock, Disk, DiskCompletion, Network, NodeId};

/// Identifies one client connection; chosen by the shell, never reused while
/// the process runs.
pub type ConnectionId = u64;

/// One input to the broker.
#[derive(Debug)]
pub enum BrokerEvent {
    /// Time has passed; the broker reads the time from `BrokerEnv::clock`.
    /// The shell sends one at least every [`TICK_INTERVAL_MS`].
    Tick,
    /// An envelope from a peer node.
    Peer(Envelope),
    /// A disk operation submitted earlier completed.
    Disk(DiskCompletion),
    /// One request frame from a client: the bytes after the 4-byte length
    /// prefix (at most [`runnel_kafka::frame::FRAME_BYTES_MAX`]).
    Request {
        connection: ConnectionId,
        frame: Bytes,
    },
    /// The client connection is gone; its unanswered requests are dropped.
    Closed { connection: ConnectionId },
    /// The node is shutting down: long polls are answered now with what
    /// they have, rather than at the end of their wait.
    Drain,
}

/// How often the shell must send [`BrokerEvent::Tick`] at the least.
pub const TICK_INTERVAL_MS: u64 = 10;

/// Where responses go.
pub trait Responses {
    /// Called exactly once per request, in request order per connection.
    /// `frame` is the whole response including its 4-byte length prefix, or
    /// `None` for a request that gets no response (Produce with acks=0):
    /// the shell counts the request as answered either way.
    fn respond(&mut self, connection: ConnectionId, frame: Option<Bytes>);
    /// The connection must be closed (for example after a request that
    /// cannot be parsed, where Kafka closes the connection too).
    fn close(&mut self, connection: ConnectionId, reason: &str);
}

/// The IO the broker may do while handling one event.
pub struct BrokerEnv<'a> {
    pub disk: &'a mut dyn Disk,
    pub network: &'a mut dyn Network<Envelope>,
    pub clock: &'a dyn Clock,
    pub responses: &'a mut dyn Responses,
}

/// Topic settings used when a request does not give them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDefaults {
    pub partitions: i32,
    pub replication_factor: i16,
    /// `retention.ms`; -1 keeps data forever.
    pub retention_ms: i64,
    /// `retention.bytes` per partition; -1 means no size limit.
    pub retention_bytes: i64,
    /// `segment.bytes`.
    pub segment_bytes: i64,
    /// Create a topic on first use (Metadata or Produce), as Kafka's
    /// `auto.create.topics.enable`.
    pub auto_create: bool,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            partitions: 1,
            replication_factor: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            auto_create: true,
        }
    }
}

/// A node of the cluster as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAddress {
    pub node_id: NodeId,
    /// The advertised Kafka listener host and port.
    pub host: String,
    pub port: u16,
    /// The node's rack (`--racks`): replicas of a partition spread over
    /// racks. `None` everywhere when racks are not configured.
    pub rack: Option<String>,
}

/// How a broker is set up.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub node_id: NodeId,
    /// Every node of the cluster, this one included, with the Kafka address
    /// it advertises. One entry for a single node.
    pub cluster: Vec<BrokerAddress>,
    /// Reported in Metadata and DescribeCluster.
    pub cluster_id: String,
    /// Seeds the broker's only source of randomness.
    pub rng_seed: u64,
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub snapshot_interval_entries: u64,
    pub segment_bytes_max: u64,
    /// The age after which a group's last log segment is rolled at its next
    /// append (`Node::set_segment_ms`; 0 never), checked by the shell with
    /// `runnel_core::segment_ms_valid`.
    pub segment_ms: u64,
    pub topic_defaults: TopicDefaults,
    /// Raised durably by the shell at every start of the node (at most
    /// `INCARNATION_MAX`): producer ids handed out by one incarnation never
    /// repeat in a later one.
    pub incarnation: u64,
    /// The node joins a running cluster (`runnel serve --join`): `cluster`
    /// lists the nodes the cluster was started with plus this one, and this
    /// node learns the metadata group from them once an operator added it
    /// (AddRaftVoter, `runnel cluster add-node`).
    pub join: bool,
    /// Partitions of the internal offsets topic (Kafka's
    /// `offsets.topic.num.partitions`), which the metadata leader creates
    /// at start; consumer groups are spread over them. 0 creates none (and
    /// no consumer groups are served).
    pub offsets_topic_partitions: u32,
}

impl BrokerConfig {
    /// A one-node broker advertising `host:port`.
    pub fn single_node(host: &str, port: u16) -> BrokerConfig {
        BrokerConfig {
            node_id: 1,
            cluster: vec![BrokerAddress {
                node_id: 1,
                host: host.to_string(),
                port,
                rack: None,
            }],
            cluster_id: "runnel-cluster".to_string(),
            rng_seed: 1,
            election_timeout_ms: 1_000,
            heartbeat_interval_ms: 100,
            snapshot_interval_entries: 10_000,
            segment_bytes_max: 64 << 20,
            segment_ms: runnel_core::SEGMENT_MS_DEFAULT,
            topic_defaults: TopicDefaults::default(),
            incarnation: 0,
            join: false,
            offsets_topic_partitions: DEFAULT_OFFSETS_TOPIC_PARTITIONS,
        }
    }
}

/// The offsets topic's partitions unless configured: enough to spread
/// coordinators over a small cluster (Kafka's default of 50 suits large
/// ones).
pub const DEFAULT_OFFSETS_TOPIC_PARTITIONS: u32 = 8;

pub use runnel_core::StartError;

mod broker;
pub mod configs;
mod fetch;
pub mod groups;

/// Kafka error codes the broker answers with.
pub mod error_code {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_REQUEST: i16 = 42;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const INVALID_RECORD: i16 = 87;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
}

pub use broker::{metrics, Broker, INCARNATION_MAX, NODE_ID_MAX};
