//! Simulated clients: writers, readers and an operator.
//!
//! Writers append one value at a time per client: `seq` counts from 1 and a
//! value starts with its 8-byte big-endian value id `(client << 32) | seq`.
//! A writer sends to the node it believes leads, follows `NotLeader` hints,
//! and on a timeout or `Unknown` retries the *same* `seq` on another node
//! (the state machine applies a retried append once). Readers read committed
//! records from random positions. The operator changes membership (5-node
//! clusters: add a learner, promote it, remove another voter) and transfers
//! leadership.
//!
//! The workload does no IO itself: it returns `Action`s that the runner turns
//! into client-channel deliveries and wake-ups.

use runnel_checkers::AppendHistory;
use runnel_consensus::{Config, Index};
use runnel_core::{ClientError, ClientId, ClientOp, ClientReply, ClientRequest, ClientResponse};
use runnel_io::{GroupId, NodeId, Rng};

use crate::swarm::{FaultClass, FaultPlan, GROUP_VOTERS};

/// The most records a reader asks for at once.
pub const READ_RECORDS_MAX: u64 = 64;
/// Clients (writers and readers, all groups) a run may have.
pub const CLIENTS_MAX: usize = 64;
/// The operator's client id; writer and reader ids count from 1.
pub const OPERATOR_CLIENT: ClientId = u32::MAX as u64;
/// Bytes of the value id at the start of every value.
pub const VALUE_ID_BYTES: usize = 8;
/// After an error without a useful hint, wait this long (up to) before retrying.
pub const RETRY_BACKOFF_MS_MAX: u64 = 100;
/// How far behind its leader's commit a learner may be to be promoted.
pub const LEARNER_LAG_MAX: u64 = 16;

pub fn value_id(client: ClientId, seq: u64) -> u64 {
    (client << 32) | seq
}

pub fn encode_value(value_id: u64, padding_bytes: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_ID_BYTES + padding_bytes as usize);
    value.extend_from_slice(&value_id.to_be_bytes());
    value.resize(VALUE_ID_BYTES + padding_bytes as usize, value_id as u8);
    value
}

pub fn decode_value_id(value: &[u8]) -> Option<u64> {
    let bytes: [u8; VALUE_ID_BYTES] = value.get(..VALUE_ID_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// What the workload asks the runner to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver `request` to `node` over the client channel.
    Send {
        node: NodeId,
        request: ClientRequest,
    },
    /// Call `on_wake(client, token)` at `at`.
    Wake { at: u64, client: usize, token: u64 },
    /// Call `on_operator_wake(token)` at `at`.
    WakeOperator { at: u64, token: u64 },
}

/// What the operator needs to know about a group (read from the nodes' views).
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    pub group: GroupId,
    /// The leader with the highest term, if any node believes it leads.
    pub leader: Option<NodeId>,
    /// The leader's configuration.
    pub config: Option<Config>,
    pub leader_commit: Index,
    /// Each running node hosting the group, with its commit index.
    pub commits: Vec<(NodeId, Index)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Writer,
    Reader,
}

#[derive(Clone, Debug)]
struct Pending {
    request_id: u64,
    op: ClientOp,
    /// For writers, the value id of `op`.
    value_id: u64,
    /// The first request id sent for this operation: any later id answers it.
    first_request_id: u64,
    /// Invoked after the liveness phase began.
    in_liveness: bool,
}

#[derive(Clone, Debug)]
struct Client {
    id: ClientId,
    group: GroupId,
    kind: Kind,
    seq: u64,
    target: NodeId,
    pending: Option<Pending>,
    /// Only the latest wake-up counts.
    wake_token: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    pub appends_sent: u64,
    pub acknowledged: u64,
    pub reads_ok: u64,
    pub timeouts: u64,
    pub redirects: u64,
    pub errors: u64,
}

#[derive(Clone, Debug)]
struct Operator {
    pending: Option<(u64, FaultClass)>,
    wake_token: u64,
}

pub struct Workload {
    rng: Rng,
    nodes: Vec<NodeId>,
    groups: Vec<GroupId>,
    clients: Vec<Client>,
    operator: Operator,
    config_changes: Option<(u64, u64)>,
    leader_transfers: Option<(u64, u64)>,
    think_time_ms_max: u64,
    request_timeout_ms: u64,
    padding_bytes: u64,
    next_request_id: u64,
    history: AppendHistory,
    stats: WorkloadStats,
    /// Per group (same order as `groups`): appends invoked after the
    /// liveness phase began and acknowledged.
    acked_in_liveness: Vec<u64>,
    in_liveness: bool,
    /// Per group: one past the highest acknowledged position.
    known_len: Vec<u64>,
    /// Operator changes accepted, per class.
    accepted: Vec<FaultClass>,
    operator_enabled: bool,
}

impl Workload {
    pub fn new(plan: &FaultPlan, rng: Rng) -> Workload {
        let mut rng = rng;
        let mut clients = Vec::new();
        for group in &plan.groups {
            let kinds = (0..plan.workload.writers_per_group)
                .map(|_| Kind::Writer)
                .chain((0..plan.workload.readers_per_group).map(|_| Kind::Reader));
            for kind in kinds {
                assert!(clients.len() < CLIENTS_MAX, "too many clients");
                let target = *rng.pick(&group.voters).expect("voters");
                clients.push(Client {
                    id: clients.len() as u64 + 1,
                    group: group.id,
                    kind,
                    seq: 0,
                    target,
                    pending: None,
                    wake_token: 0,
                });
            }
        }
        let gap = |episodes: &Option<crate::swarm::Episodes>| episodes.map(|e| e.gap_ms);
        Workload {
            rng,
            nodes: plan.nodes.clone(),
            groups: plan.groups.iter().map(|g| g.id).collect(),
            clients,
            operator: Operator {
                pending: None,
                wake_token: 0,
            },
            config_changes: gap(&plan.config_changes),
            leader_transfers: gap(&plan.leader_transfers),
            think_time_ms_max: plan.workload.think_time_ms_max,
            request_timeout_ms: plan.workload.request_timeout_ms,
            padding_bytes: plan.workload.padding_bytes,
            next_request_id: 1,
            history: AppendHistory::new(),
            stats: WorkloadStats::default(),
            acked_in_liveness: vec![0; plan.groups.len()],
            in_liveness: false,
            known_len: vec![0; plan.groups.len()],
            accepted: Vec::new(),
            operator_enabled: true,
        }
    }

    pub fn history(&self) -> &AppendHistory {
        &self.history
    }

    pub fn stats(&self) -> WorkloadStats {
        self.stats
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Operator changes accepted since the last call, by class.
    pub fn take_accepted(&mut self) -> Vec<FaultClass> {
        std::mem::take(&mut self.accepted)
    }

    fn group_slot(&self, group: GroupId) -> usize {
        self.groups
            .iter()
            .position(|g| *g == group)
            .expect("known group")
    }

    /// Every client starts after a random think time; the operator after its gap.
    pub fn start(&mut self, now: u64, out: &mut Vec<Action>) {
        for index in 0..self.clients.len() {
            self.think(now, index, out);
        }
        self.schedule_operator(now, out);
    }

    /// The liveness phase begins: the operator stops, and progress counts
    /// only appends invoked from here on.
    pub fn start_liveness(&mut self) {
        self.in_liveness = true;
        self.operator_enabled = false;
        self.operator.wake_token += 1;
    }

    /// Groups that acknowledged fewer than `min` appends invoked since the
    /// liveness phase began.
    pub fn groups_without_progress(&self, min: u64) -> Vec<GroupId> {
        self.groups
            .iter()
            .zip(&self.acked_in_liveness)
            .filter(|(_, acked)| **acked < min)
            .map(|(group, _)| *group)
            .collect()
    }

    fn think(&mut self, now: u64, index: usize, out: &mut Vec<Action>) {
        let delay = self.rng.range(0, self.think_time_ms_max + 1);
        self.wake(now + delay, index, out);
    }

    fn wake(&mut self, at: u64, index: usize, out: &mut Vec<Action>) {
        let client = &mut self.clients[index];
        client.wake_token += 1;
        out.push(Action::Wake {
            at,
            client: index,
            token: client.wake_token,
        });
    }

    fn other_node(&mut self, not: NodeId) -> NodeId {
        let others: Vec<NodeId> = self.nodes.iter().copied().filter(|n| *n != not).collect();
        *self.rng.pick(&others).unwrap_or(&not)
    }

    /// Sends the client's pending operation (again) to its target.
    fn send(&mut self, now: u64, index: usize, out: &mut Vec<Action>) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let client = &mut self.clients[index];
        let pending = client.pending.as_mut().expect("pending operation");
        pending.request_id = request_id;
        out.push(Action::Send {
            node: client.target,
            request: ClientRequest {
                client: client.id,
                request_id,
                group: client.group,
                op: pending.op.clone(),
            },
        });
        let deadline = now + self.request_timeout_ms;
        self.wake(deadline, index, out);
    }

    /// Retries the pending operation on another node after a short backoff.
    fn retry_elsewhere(&mut self, now: u64, index: usize, out: &mut Vec<Action>) {
        let target = self.clients[index].target;
        self.clients[index].target = self.other_node(target);
        let backoff = self.rng.range(1, RETRY_BACKOFF_MS_MAX + 1);
        // The wake finds the operation pending and unsent: see `on_wake`.
        self.clients[index]
            .pending
            .as_mut()
            .expect("pending operation")
            .request_id = 0;
        self.wake(now + backoff, index, out);
    }

    pub fn on_wake(&mut self, now: u64, index: usize, token: u64, out: &mut Vec<Action>) {
        if self.clients[index].wake_token != token {
            return;
        }
        match &self.clients[index].pending {
            None => self.begin(now, index, out),
            Some(pending) if pending.request_id == 0 => self.send(now, index, out),
            Some(_) => {
                // The request timed out: the outcome is unknown.
                self.stats.timeouts += 1;
                let target = self.clients[index].target;
                self.clients[index].target = self.other_node(target);
                self.send(now, index, out);
            }
        }
    }

    /// Starts the client's next operation.
    fn begin(&mut self, now: u64, index: usize, out: &mut Vec<Action>) {
        let request_id = self.next_request_id;
        let client = &mut self.clients[index];
        let (op, value_id) = match client.kind {
            Kind::Writer => {
                client.seq += 1;
                let value_id = value_id(client.id, client.seq);
                self.history.invoke_append(client.group, value_id);
                self.stats.appends_sent += 1;
                let value = encode_value(value_id, self.padding_bytes);
                (
                    ClientOp::Append {
                        seq: client.seq,
                        value,
                    },
                    value_id,
                )
            }
            Kind::Reader => {
                let group = client.group;
                let known = self.known_len[self.group_slot(group)];
                let from_position = self.rng.range(0, known + 2);
                let max_records = self.rng.range(1, READ_RECORDS_MAX + 1);
                (
                    ClientOp::Read {
                        from_position,
                        max_records,
                    },
                    0,
                )
            }
        };
        self.clients[index].pending = Some(Pending {
            request_id,
            op,
            value_id,
            first_request_id: request_id,
            in_liveness: self.in_liveness,
        });
        self.send(now, index, out);
    }

    pub fn on_response(&mut self, now: u64, response: ClientResponse, out: &mut Vec<Action>) {
        if response.client == OPERATOR_CLIENT {
            self.on_operator_response(now, response, out);
            return;
        }
        let Some(index) = (response.client as usize)
            .checked_sub(1)
            .filter(|i| *i < self.clients.len())
        else {
            return;
        };
        let Some(pending) = self.clients[index].pending.clone() else {
            return;
        };
        let group = self.clients[index].group;
        match response.result {
            Ok(ClientReply::Appended { position }) => {
                // Any attempt of the current operation answers it.
                if self.clients[index].kind != Kind::Writer
                    || response.request_id < pending.first_request_id
                {
                    return;
                }
                self.history.ok_append(group, pending.value_id, position);
                self.stats.acknowledged += 1;
                let slot = self.group_slot(group);
                if pending.in_liveness {
                    self.acked_in_liveness[slot] += 1;
                }
                self.known_len[slot] = self.known_len[slot].max(position + 1);
                self.clients[index].pending = None;
                self.think(now, index, out);
            }
            Ok(ClientReply::Records {
                from_position,
                records,
            }) => {
                if self.clients[index].kind != Kind::Reader
                    || response.request_id != pending.request_id
                {
                    return;
                }
                let ids: Vec<u64> = records
                    .iter()
                    .map(|r| decode_value_id(&r.value).unwrap_or(u64::MAX))
                    .collect();
                self.history.ok_read(group, from_position, &ids);
                self.stats.reads_ok += 1;
                let slot = self.group_slot(group);
                self.known_len[slot] = self.known_len[slot].max(from_position + ids.len() as u64);
                self.clients[index].pending = None;
                self.think(now, index, out);
            }
            // The record workload never proposes machine commands, asks
            // for read indexes or reads the log.
            Ok(
                ClientReply::Accepted
                | ClientReply::Applied(_)
                | ClientReply::ReadReady
                | ClientReply::Entries { .. },
            ) => {}
            Err(error) => {
                if response.request_id != pending.request_id {
                    return;
                }
                match error {
                    ClientError::NotLeader {
                        leader_hint: Some(hint),
                    } if hint != self.clients[index].target => {
                        self.stats.redirects += 1;
                        self.clients[index].target = hint;
                        self.send(now, index, out);
                    }
                    ClientError::NotLeader { .. } => {
                        self.stats.redirects += 1;
                        self.retry_elsewhere(now, index, out);
                    }
                    ClientError::Unknown | ClientError::UnknownGroup | ClientError::Rejected(_) => {
                        self.stats.errors += 1;
                        self.retry_elsewhere(now, index, out);
                    }
                }
            }
        }
    }

    fn schedule_operator(&mut self, now: u64, out: &mut Vec<Action>) {
        let gaps: Vec<(u64, u64)> = [self.config_changes, self.leader_transfers]
            .into_iter()
            .flatten()
            .collect();
        let Some(&(low, high)) = self.rng.pick(&gaps) else {
            return;
        };
        let at = now + self.rng.range(low, high + 1);
        self.operator.wake_token += 1;
        out.push(Action::WakeOperator {
            at,
            token: self.operator.wake_token,
        });
    }

    /// Whether an operator wake-up with `token` is still current (the runner
    /// computes group statuses only then).
    pub fn operator_wake_is_current(&self, token: u64) -> bool {
        self.operator_enabled && self.operator.wake_token == token
    }

    /// The operator acts on one random group: a membership step or a
    /// leadership transfer. `status` has one entry per group.
    pub fn on_operator_wake(
        &mut self,
        now: u64,
        token: u64,
        status: &[GroupStatus],
        out: &mut Vec<Action>,
    ) {
        if !self.operator_wake_is_current(token) {
            return;
        }
        self.operator.pending = None;
        self.schedule_operator(now, out);
        let Some(group) = self.rng.pick(status).cloned() else {
            return;
        };
        let (Some(leader), Some(config)) = (group.leader, group.config.clone()) else {
            return;
        };
        let change = match (
            self.config_changes.is_some(),
            self.leader_transfers.is_some(),
        ) {
            (true, true) => self.rng.chance(0.5),
            (change, _) => change,
        };
        let op = if change {
            let Some(config) = self.next_config(&group, &config) else {
                return;
            };
            ClientOp::ChangeConfig { config }
        } else {
            let others: Vec<NodeId> = config
                .voters
                .iter()
                .copied()
                .filter(|n| *n != leader)
                .collect();
            let Some(&to) = self.rng.pick(&others) else {
                return;
            };
            ClientOp::TransferLeader { to }
        };
        let class = if change {
            FaultClass::ConfigChange
        } else {
            FaultClass::LeaderTransfer
        };
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.operator.pending = Some((request_id, class));
        out.push(Action::Send {
            node: leader,
            request: ClientRequest {
                client: OPERATOR_CLIENT,
                request_id,
                group: group.group,
                op,
            },
        });
    }

    /// One step of add-learner, promote, remove-voter.
    fn next_config(&mut self, group: &GroupStatus, config: &Config) -> Option<Config> {
        let mut next = config.clone();
        if let Some(&learner) = config.learners.iter().next() {
            let caught_up = group.commits.iter().any(|(node, commit)| {
                *node == learner && commit + LEARNER_LAG_MAX >= group.leader_commit
            });
            if !caught_up {
                return None;
            }
            next.learners.remove(&learner);
            next.voters.insert(learner);
        } else if config.voters.len() > GROUP_VOTERS {
            let voters: Vec<NodeId> = config.voters.iter().copied().collect();
            let removed = *self.rng.pick(&voters)?;
            next.voters.remove(&removed);
        } else {
            let outside: Vec<NodeId> = self
                .nodes
                .iter()
                .copied()
                .filter(|n| !config.contains(*n))
                .collect();
            let added = *self.rng.pick(&outside)?;
            next.learners.insert(added);
        }
        Some(next)
    }

    fn on_operator_response(
        &mut self,
        _now: u64,
        response: ClientResponse,
        _out: &mut Vec<Action>,
    ) {
        let Some((request_id, class)) = self.operator.pending else {
            return;
        };
        if response.request_id != request_id {
            return;
        }
        self.operator.pending = None;
        if let Ok(ClientReply::Accepted) = response.result {
            self.accepted.push(class);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_ids_round_trip() {
        let id = value_id(7, 42);
        assert_eq!(id, (7 << 32) | 42);
        let value = encode_value(id, 20);
        assert_eq!(value.len(), 28);
        assert_eq!(decode_value_id(&value), Some(id));
        assert_eq!(decode_value_id(&[1, 2, 3]), None);
    }

    fn plan() -> FaultPlan {
        let mut plan = FaultPlan::from_seed(1);
        plan.workload.writers_per_group = 2;
        plan.workload.readers_per_group = 1;
        plan
    }

    fn sends(out: &[Action]) -> Vec<(NodeId, ClientRequest)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { node, request } => Some((*node, request.clone())),
                _ => None,
            })
            .collect()
    }

    fn first_wake(out: &[Action], client: usize) -> (u64, u64) {
        out.iter()
            .rev()
            .find_map(|a| match a {
                Action::Wake {
                    at,
                    client: c,
                    token,
                } if *c == client => Some((*at, *token)),
                _ => None,
            })
            .expect("a wake-up")
    }

    #[test]
    fn writer_retries_the_same_seq_and_follows_hints() {
        let plan = plan();
        let mut workload = Workload::new(&plan, Rng::new(5));
        let mut out = Vec::new();
        workload.start(0, &mut out);
        let (at, token) = first_wake(&out, 0);
        out.clear();
        workload.on_wake(at, 0, token, &mut out);
        let sent = sends(&out);
        assert_eq!(sent.len(), 1);
        let (_, request) = &sent[0];
        let ClientOp::Append { seq, value } = &request.op else {
            panic!("an append")
        };
        assert_eq!(*seq, 1);
        assert_eq!(decode_value_id(value), Some(value_id(1, 1)));

        // A hint redirects at once, with the same seq.
        let hint = plan
            .nodes
            .iter()
            .copied()
            .find(|n| *n != sent[0].0)
            .unwrap();
        out.clear();
        workload.on_response(
            at + 5,
            ClientResponse {
                client: 1,
                request_id: request.request_id,
                group: request.group,
                result: Err(ClientError::NotLeader {
                    leader_hint: Some(hint),
                }),
            },
            &mut out,
        );
        let resent = sends(&out);
        assert_eq!(resent[0].0, hint);
        assert_eq!(resent[0].1.op, request.op);

        // A timeout retries the same seq on another node.
        let (deadline, token) = first_wake(&out, 0);
        out.clear();
        workload.on_wake(deadline, 0, token, &mut out);
        let retried = sends(&out);
        assert_ne!(retried[0].0, hint);
        assert_eq!(retried[0].1.op, request.op);
        assert_eq!(workload.stats().timeouts, 1);

        // The answer to an earlier attempt acknowledges it.
        out.clear();
        workload.on_response(
            deadline + 5,
            ClientResponse {
                client: 1,
                request_id: resent[0].1.request_id,
                group: request.group,
                result: Ok(ClientReply::Appended { position: 0 }),
            },
            &mut out,
        );
        assert_eq!(workload.stats().acknowledged, 1);
        let (at, token) = first_wake(&out, 0);
        out.clear();
        workload.on_wake(at, 0, token, &mut out);
        let ClientOp::Append { seq, .. } = &sends(&out)[0].1.op else {
            panic!("an append")
        };
        assert_eq!(*seq, 2);
    }

    #[test]
    fn stale_wakes_are_ignored() {
        let plan = plan();
        let mut workload = Workload::new(&plan, Rng::new(5));
        let mut out = Vec::new();
        workload.start(0, &mut out);
        let (at, token) = first_wake(&out, 0);
        out.clear();
        workload.on_wake(at, 0, token, &mut out);
        out.clear();
        workload.on_wake(at, 0, token, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn operator_walks_learner_promote_remove() {
        let mut plan = FaultPlan::from_seed(1);
        plan.nodes = vec![1, 2, 3, 4, 5];
        plan.config_changes = Some(crate::swarm::Episodes {
            gap_ms: (10, 10),
            duration_ms: (0, 0),
        });
        plan.leader_transfers = None;
        let mut workload = Workload::new(&plan, Rng::new(5));
        let mut config = Config::new([1, 2, 3]);
        let mut status = GroupStatus {
            group: plan.groups[0].id,
            leader: Some(1),
            config: None,
            leader_commit: 100,
            commits: vec![(1, 100), (2, 100), (3, 100), (4, 100), (5, 100)],
        };
        for step in 0..6 {
            status.config = Some(config.clone());
            let statuses: Vec<GroupStatus> = plan
                .groups
                .iter()
                .map(|g| GroupStatus {
                    group: g.id,
                    ..status.clone()
                })
                .collect();
            let mut out = Vec::new();
            workload.on_operator_wake(0, workload.operator.wake_token, &statuses, &mut out);
            let sent = sends(&out);
            let ClientOp::ChangeConfig { config: next } = &sent[0].1.op else {
                panic!("a config change")
            };
            match step % 3 {
                0 => assert_eq!(next.learners.len(), 1, "{next:?}"),
                1 => assert_eq!((next.voters.len(), next.learners.len()), (4, 0)),
                _ => assert_eq!((next.voters.len(), next.learners.len()), (3, 0)),
            }
            config = next.clone();
        }
    }
}
