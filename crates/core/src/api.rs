//! The node core's inputs and outputs: events in, IO out through `Env`.

use runnel_consensus::{Config, Index, Message, Term};
use runnel_io::{Clock, Disk, DiskCompletion, GroupId, Network, NodeId};

/// Identifies a client session. A client issues at most one append at a time
/// per group, numbered by `seq` from 1; the state machine keeps the last
/// applied `seq` per client and group, so a retried append is applied once.
pub type ClientId = u64;

/// Everything that leaves a node for one peer in one step: messages of any
/// number of groups share one envelope (DESIGN.md, "Consensus": groups on the
/// same pair of nodes share one connection).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub messages: Vec<(GroupId, Message)>,
}

/// One input to the core.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// Time has passed; the core reads the current time from `Env::clock`.
    Tick,
    /// An envelope from a peer arrived.
    Peer(Envelope),
    /// A disk operation submitted earlier completed.
    Disk(DiskCompletion),
    /// A client (or an operator) asks for something.
    Client(ClientRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientRequest {
    pub client: ClientId,
    /// Chosen by the client, echoed in the response.
    pub request_id: u64,
    pub group: GroupId,
    pub op: ClientOp,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientOp {
    /// Append one record. Answered with its position once committed.
    Append { seq: u64, value: Vec<u8> },
    /// Read committed records starting at `from_position`.
    Read {
        from_position: u64,
        max_records: u64,
    },
    /// Propose a command for the group's machine (a Kafka partition or the
    /// metadata group), encoded by its module. Answered with
    /// [`ClientReply::Applied`] once committed and applied.
    Propose { data: Vec<u8> },
    /// Membership change (docs/protocol.md §7): the leader proposes `config`,
    /// which must differ from the current one by one node.
    ChangeConfig { config: Config },
    /// Leadership transfer (§9) to `to`.
    TransferLeader { to: NodeId },
    /// A linearizable read (docs/protocol.md §6.3): answered with
    /// [`ClientReply::ReadReady`] once a quorum confirmed that this node
    /// still led the group after the request arrived and its state machine
    /// holds every entry committed before it. The caller then reads the
    /// machine (`Node::machine`) in the same step.
    ReadIndex,
    /// §8.3: read committed entries kept on disk below the snapshot, from
    /// `from` on (one read: at most `runnel_storage::LOG_READ_ENTRIES_MAX`
    /// entries and `runnel_storage::LOG_READ_BYTES_MAX` bytes, ending at
    /// the snapshot index at most). Answered with [`ClientReply::Entries`]
    /// once the disk read completes. Entries after the snapshot are in
    /// memory: `Node::log_entry` reads them at once.
    ReadLog { from: u64 },
}

/// A record of the replicated state machine: the value a client appended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    pub client: ClientId,
    pub seq: u64,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientResponse {
    pub client: ClientId,
    pub request_id: u64,
    pub group: GroupId,
    pub result: Result<ClientReply, ClientError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientReply {
    /// The append is committed at `position` (0-based, contiguous per group).
    Appended { position: u64 },
    /// Committed records `from_position..from_position + records.len()`.
    Records {
        from_position: u64,
        records: Vec<Record>,
    },
    /// The membership change or leadership transfer was accepted.
    Accepted,
    /// A proposed command was committed and applied with this outcome.
    Applied(Applied),
    /// A `ReadIndex` request passed: the state machine, read now, reflects
    /// every write committed before the request.
    ReadReady,
    /// The entries a `ReadLog` asked for, checksummed and intact; none
    /// when this node no longer holds `from` or found it damaged (damage
    /// is never served, and the node repairs it from a peer).
    Entries {
        entries: Vec<runnel_consensus::Entry>,
    },
}

/// What applying a proposed command did.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Applied {
    Produce(crate::partition::ProduceOutcome),
    Metadata(crate::metadata::MetadataOutcome),
    Offsets(crate::offsets::OffsetsOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientError {
    /// This node does not lead the group; try `leader_hint` if known.
    NotLeader { leader_hint: Option<NodeId> },
    /// The node does not host the group.
    UnknownGroup,
    /// The outcome is unknown (leadership was lost while the request was in
    /// flight): the client must retry with the same `seq`.
    Unknown,
    /// The request was rejected as invalid or impossible now (for example a
    /// second membership change while one is pending); retrying later may work.
    Rejected(String),
}

/// Where client responses go.
pub trait Replies {
    fn reply(&mut self, response: ClientResponse);
}

/// The IO a node may do while handling one event.
pub struct Env<'a> {
    pub disk: &'a mut dyn Disk,
    pub network: &'a mut dyn Network<Envelope>,
    pub clock: &'a dyn Clock,
    pub replies: &'a mut dyn Replies,
}

/// A replica's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A read-only view of one replica, for checkers and status output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub group: GroupId,
    pub term: Term,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub commit_index: Index,
    pub applied_index: Index,
    /// The last index durably in the log.
    pub persisted_index: Index,
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    pub last_index: Index,
    pub config: Config,
    /// The index of the entry (or snapshot) that set `config`.
    pub config_index: Index,
    /// A committed membership leaves this replica out (its own, or one a
    /// member told it of, §7.4): its host may delete it.
    pub left_group: bool,
    /// Entries held in memory after the snapshot: (index, term, hash of the
    /// entry's payload).
    pub entries: Vec<(Index, Term, u64)>,
    /// Number of records applied to the state machine.
    pub records_len: u64,
}
