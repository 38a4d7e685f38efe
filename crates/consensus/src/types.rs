//! The data the protocol persists and exchanges (docs/protocol.md §2).

use std::collections::BTreeSet;

use runnel_io::NodeId;

/// Log position. Index 0 is the empty prefix; the first entry has index 1.
pub type Index = u64;
/// Election term (Kafka's leader epoch). Term 0 is before any election.
pub type Term = u64;

/// A group's membership (§7). Voters elect leaders and form quorums;
/// learners receive the log but neither vote nor count for commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Config {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Config {
        Config {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Every member, voters first then learners, each in ascending id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// The size of a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// True when `nodes` holds a majority of the voters.
    pub fn is_quorum<'a>(&self, nodes: impl IntoIterator<Item = &'a NodeId>) -> bool {
        let count = nodes
            .into_iter()
            .filter(|node| self.voters.contains(node))
            .count();
        count >= self.quorum()
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Payload {
    /// The entry a new leader appends at the start of its term (§5.4).
    Noop,
    /// Application data, opaque to the protocol.
    Data(Vec<u8>),
    /// A new membership, in force from the moment it is appended (§7).
    Config(Config),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub payload: Payload,
}

impl Entry {
    /// An estimate of the entry's size in memory and on the wire, used for
    /// batching limits.
    pub fn size_bytes(&self) -> usize {
        let payload = match &self.payload {
            Payload::Noop => 0,
            Payload::Data(data) => data.len(),
            Payload::Config(config) => 8 * (config.voters.len() + config.learners.len()),
        };
        24 + payload
    }
}

/// The durable vote record (§3.1). It must be on disk before any message
/// that depends on it leaves the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
    /// Protocol-aware recovery (§10.3): while non-zero, this replica lost
    /// entries it may have acknowledged (or its vote record), and neither
    /// votes nor campaigns until its durable log reaches this index.
    /// `REPAIR_INDEX_UNKNOWN` means the target is not known yet: the replica
    /// waits for a leader to tell it.
    pub repair_index: Index,
}

/// `HardState::repair_index` of a replica that lost its vote record and
/// does not yet know how far it must catch up (§10.3).
pub const REPAIR_INDEX_UNKNOWN: Index = Index::MAX;

/// Describes the prefix of the log that a snapshot replaces (§8).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    /// The membership in force at `index`.
    pub config: Config,
}

/// The application state after applying every entry up to `meta.index`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}
