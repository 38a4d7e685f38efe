//! The cluster's own membership: adding and removing nodes
//! (docs/protocol.md §12.5).
//!
//! The cluster's nodes are the metadata group's wanted voters: the nodes
//! the cluster was configured with, plus those added (AddRaftVoter, with
//! where to reach them), less those removed (RemoveRaftVoter). The metadata
//! group records the change; its leader then walks the group's membership
//! there one single-server step at a time, as a partition's leader does for
//! a move (`reassign::next_step`). Removing a node also moves every replica
//! it holds to another node in the same metadata entry, so that partitions
//! keep their replication factor. Placement, Metadata and DescribeCluster
//! list the current nodes only.

use kafka_protocol::messages::add_raft_voter_request::Listener;
use kafka_protocol::messages::{
    AddRaftVoterResponse, ApiKey, RemoveRaftVoterResponse, RequestHeader, ResponseKind,
};
use kafka_protocol::protocol::StrBytes;
use runnel_consensus::Config;
use runnel_core::metadata::{MetadataCommand, NodeAddress, METADATA_GROUP, NODE_ADDRESS_BYTES_MAX};
use runnel_core::{ClientOp, ClientRequest, Env, Event, Role};
use runnel_io::NodeId;

use super::reassign::{next_step, Step, REASSIGN_STEP_INTERVAL_MS};
use super::{Broker, Collector, Pending, PendingKind, IN_SYNC_LAG_MS, REQUEST_TIMEOUT_MS_MAX};
use crate::{error_code, BrokerAddress, BrokerEnv, ConnectionId, NODE_ID_MAX};

/// The AddRaftVoter listener that names a node's peer (rpc) address.
pub const LISTENER_RPC: &str = "RPC";
/// The AddRaftVoter listener that names a node's Kafka address.
pub const LISTENER_KAFKA: &str = "KAFKA";

/// A node's addresses from AddRaftVoter listeners, or why not.
pub fn address_of(listeners: &[Listener]) -> Result<NodeAddress, String> {
    let find = |name: &str| {
        listeners
            .iter()
            .find(|listener| listener.name.as_str() == name)
            .filter(|listener| {
                !listener.host.is_empty() && listener.host.len() <= NODE_ADDRESS_BYTES_MAX
            })
            .ok_or_else(|| format!("listener {name} (host and port) is missing or invalid"))
    };
    let rpc = find(LISTENER_RPC)?;
    let kafka = find(LISTENER_KAFKA)?;
    Ok(NodeAddress {
        rpc_addr: format!("{}:{}", rpc.host.as_str(), rpc.port),
        kafka_host: kafka.host.to_string(),
        kafka_port: kafka.port,
        rack: None,
    })
}

pub fn voter_response(add: bool, error_code: i16, error_message: Option<StrBytes>) -> ResponseKind {
    if add {
        ResponseKind::AddRaftVoter(
            AddRaftVoterResponse::default()
                .with_error_code(error_code)
                .with_error_message(error_message),
        )
    } else {
        ResponseKind::RemoveRaftVoter(
            RemoveRaftVoterResponse::default()
                .with_error_code(error_code)
                .with_error_message(error_message),
        )
    }
}

impl Broker {
    /// The cluster's nodes now, ascending: the configured ones and those
    /// added, less those removed.
    pub(super) fn members(&self) -> Vec<BrokerAddress> {
        // A joining node lists itself in its configuration, but is a
        // member only once added.
        let configured: Vec<NodeId> = self.genesis_config().voters.into_iter().collect();
        let Some(metadata) = self.metadata() else {
            return self.config.cluster.clone();
        };
        metadata
            .members(&configured)
            .into_iter()
            .filter_map(|node_id| {
                if let Some(address) = self.config.cluster.iter().find(|n| n.node_id == node_id) {
                    return Some(address.clone());
                }
                let added = metadata.added_nodes().get(&node_id)?;
                Some(BrokerAddress {
                    node_id,
                    host: added.kafka_host.clone(),
                    port: added.kafka_port,
                    rack: added.rack.clone(),
                })
            })
            .collect()
    }

    /// The metadata group's first membership: the nodes the cluster was
    /// configured with (a joining node lists itself too, but was not one).
    pub(super) fn genesis_config(&self) -> Config {
        let me = self.config.node_id;
        Config {
            voters: self
                .config
                .cluster
                .iter()
                .map(|node| node.node_id)
                .filter(|node| !self.config.join || *node != me)
                .collect(),
            learners: Default::default(),
        }
    }

    /// Peer (rpc) addresses of nodes added at run time, for the shell to
    /// connect to; the configured peers it knows already.
    pub fn added_peer_addresses(&self) -> Vec<(NodeId, String)> {
        let Some(metadata) = self.metadata() else {
            return Vec::new();
        };
        metadata
            .added_nodes()
            .iter()
            .filter(|(node, _)| **node != self.config.node_id)
            .filter(|(node, _)| !self.config.cluster.iter().any(|n| n.node_id == **node))
            .map(|(node, address)| (*node, address.rpc_addr.clone()))
            .collect()
    }

    /// AddRaftVoter (`address` given) or RemoveRaftVoter: proposed to the
    /// metadata group by its leader, answered once committed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn change_membership(
        &mut self,
        connection: ConnectionId,
        header: RequestHeader,
        version: i16,
        node_id: NodeId,
        address: Option<Result<NodeAddress, String>>,
        timeout_ms: i32,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let id = self.next_id();
        let now_ms = env.clock.now_ms();
        let add = address.is_some();
        let nodes = self.cluster_nodes();
        let refusal = if !self.node.leader_ready(METADATA_GROUP) {
            Some((
                error_code::NOT_CONTROLLER,
                "this node does not lead the metadata group".to_string(),
            ))
        } else if node_id == 0 || node_id > NODE_ID_MAX {
            Some((
                error_code::INVALID_REQUEST,
                format!("node id {node_id} must be between 1 and {NODE_ID_MAX}"),
            ))
        } else {
            match &address {
                Some(Err(message)) => Some((error_code::INVALID_REQUEST, message.clone())),
                _ => None,
            }
        };
        let (error_code, error_message, proposal) = match refusal {
            Some((code, message)) => (code, Some(StrBytes::from_string(message)), None),
            None => {
                let command = match address {
                    Some(Ok(address)) => MetadataCommand::AddNode {
                        node_id,
                        address,
                        nodes,
                    },
                    _ => MetadataCommand::RemoveNode { node_id, nodes },
                };
                // Stays unless the proposal is answered in time.
                (error_code::REQUEST_TIMED_OUT, None, Some(command.encode()))
            }
        };
        self.slot(connection, id);
        self.pending.insert(
            id,
            Pending {
                connection,
                header,
                api_key: if add {
                    ApiKey::AddRaftVoter
                } else {
                    ApiKey::RemoveRaftVoter
                },
                version,
                deadline_ms: now_ms + (timeout_ms.max(1) as u64).min(REQUEST_TIMEOUT_MS_MAX),
                outstanding: usize::from(proposal.is_some()),
                kind: PendingKind::Voter {
                    add,
                    error_code,
                    error_message,
                },
            },
        );
        if let Some(data) = proposal {
            self.propose(METADATA_GROUP, data, id, 0, env, collector);
        }
        self.finish_if_done(id);
    }

    /// On the metadata group's leader, every `REASSIGN_STEP_INTERVAL_MS`:
    /// the next single-server step of the group toward the cluster's nodes.
    pub(super) fn drive_membership(&mut self, env: &mut BrokerEnv<'_>, collector: &mut Collector) {
        let now_ms = env.clock.now_ms();
        if now_ms < self.last_membership_step_ms + REASSIGN_STEP_INTERVAL_MS {
            return;
        }
        self.last_membership_step_ms = now_ms;
        let Some(view) = self.node.summary(METADATA_GROUP) else {
            return;
        };
        if view.role != Role::Leader || !self.node.leader_ready(METADATA_GROUP) {
            return;
        }
        let me = self.config.node_id;
        let wanted = self.cluster_nodes();
        let mut in_sync = self.node.replicas_in_sync(METADATA_GROUP, IN_SYNC_LAG_MS);
        // §9: a voter that let a transfer lapse lately is not chosen to
        // take over.
        in_sync.retain(|node| self.node.may_take_over(METADATA_GROUP, *node));
        let Some(step) = next_step(&view.config, &wanted, me, &in_sync) else {
            return;
        };
        tracing::info!(?step, "changing the cluster's membership");
        let op = match step {
            Step::Change(config) => ClientOp::ChangeConfig { config },
            Step::Transfer(to) => ClientOp::TransferLeader { to },
        };
        let mut core_env = Env {
            disk: &mut *env.disk,
            network: &mut *env.network,
            clock: env.clock,
            replies: collector,
        };
        self.node.handle(
            Event::Client(ClientRequest {
                client: 0,
                request_id: 0,
                group: METADATA_GROUP,
                op,
            }),
            &mut core_env,
        );
    }

    /// §12.5: a node removed from the cluster whose metadata replica has
    /// applied nothing since a restart (no member sends it the commit any
    /// more) lists no partitions, so it never starts its replicas that
    /// wait for their initial membership. Yet such a replica may still be
    /// a voter its group needs: a move off this node can be half done. The
    /// metadata log on this node's disk names the membership: the replica
    /// exists because this node applied the entry that created its
    /// partition, so that entry, and every one before it, is committed, and
    /// replaying the log applies it as it was (a partition's initial
    /// replicas never change, and entries after it cannot reuse its
    /// group). The replica then starts from that membership, exactly as it
    /// would have with the metadata applied.
    pub(super) fn start_waiting_replicas_from_the_metadata_log(
        &mut self,
        env: &mut BrokerEnv<'_>,
        collector: &mut Collector,
    ) {
        let waiting: Vec<runnel_io::GroupId> = self
            .node
            .waiting_group_ids()
            .into_iter()
            .filter(|group| *group != METADATA_GROUP)
            .collect();
        let (Some(view), Some(metadata)) = (self.node.summary(METADATA_GROUP), self.metadata())
        else {
            return;
        };
        if waiting.is_empty() {
            return;
        }
        let mut replayed = metadata.clone();
        for index in view.applied_index + 1..=view.last_index {
            let Some(entry) = self.node.log_entry(METADATA_GROUP, index) else {
                break;
            };
            if let runnel_consensus::Payload::Data(data) = &entry.payload {
                if let Some(command) = MetadataCommand::decode(data) {
                    replayed.apply(command, entry.index, entry.term);
                }
            }
        }
        let me = self.config.node_id;
        let starts: Vec<(runnel_io::GroupId, Config)> = waiting
            .into_iter()
            .filter(|group| !self.node.has_left(*group))
            .filter_map(|group| {
                let config = super::initial_config_in(&replayed, group)?;
                config.voters.contains(&me).then_some((group, config))
            })
            .collect();
        let mut core_env = Env {
            disk: &mut *env.disk,
            network: &mut *env.network,
            clock: env.clock,
            replies: collector,
        };
        for (group, config) in starts {
            tracing::info!(
                group,
                "removed from the cluster: starting a replica from the membership in the metadata log"
            );
            self.node.bootstrap_group(group, config, &mut core_env);
        }
    }
}
