//! The node: many groups, one disk, one network.

use runnel_consensus::Config;
use runnel_io::{Disk, GroupId, NodeId};

use crate::api::{Env, Event, GroupView, Record};

/// How a node is set up. Every duration is measured on the node's own clock.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Groups this node hosts from its first start, with their initial
    /// membership. Groups already on disk are recovered from disk instead.
    pub groups: Vec<(GroupId, Config)>,
    /// Seeds the node's only source of randomness (election timeouts).
    pub rng_seed: u64,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_ms, 2 * election_timeout_ms)` campaigns.
    pub election_timeout_ms: u64,
    /// How often a leader sends heartbeats; well below the election timeout.
    pub heartbeat_interval_ms: u64,
    /// Take a snapshot after this many applied entries past the last one.
    pub snapshot_interval_entries: u64,
    /// Roll to a new log segment past this size.
    pub segment_bytes_max: u64,
}

/// Why a node could not start.
#[derive(Debug)]
pub enum StartError {
    Disk(runnel_io::DiskError),
    Corrupt(String),
}

pub struct Node {
    _private: (),
}

impl Node {
    /// Recovers every group found on `disk` (reading synchronously) and
    /// creates the configured groups that are not there yet.
    pub fn start(_config: NodeConfig, _disk: &mut dyn Disk) -> Result<Node, StartError> {
        todo!()
    }

    pub fn handle(&mut self, _event: Event, _env: &mut Env<'_>) {
        todo!()
    }

    pub fn id(&self) -> NodeId {
        todo!()
    }

    pub fn group_ids(&self) -> Vec<GroupId> {
        todo!()
    }

    pub fn view(&self, _group: GroupId) -> Option<GroupView> {
        todo!()
    }

    /// The records applied to `group`'s state machine so far, by position.
    pub fn records(&self, _group: GroupId) -> Option<&[Record]> {
        todo!()
    }
}
