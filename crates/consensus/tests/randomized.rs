//! Randomized interaction test (docs/protocol.md §11): a group of up to five
//! nodes under random ticks, message delivery, loss, duplication and
//! reordering, slow and instant disks, crashes and restarts, lost log
//! tails (§10.3: a disk fault on a minority of the voters, found when the
//! node restarts), proposals, membership changes, snapshots and leadership
//! transfers. The harness
//! checks after every step: at most one leader per term, log matching, that
//! what any replica knows committed never changes, that leaders hold every
//! earlier-term committed entry, that replicas apply the same entries in the
//! same order, and that a replica's commit index never decreases. At the end
//! the network heals, every node restarts if down, and the group must elect
//! a leader and commit a new entry.

mod harness;

use std::collections::BTreeSet;

use harness::{test_options, Cluster, ELECTION_TIMEOUT_MS, HEARTBEAT_MS};
use proptest::prelude::*;
use runnel_consensus::{Body, Config, Payload, Role};
use runnel_io::NodeId;

const NODES: u64 = 5;

#[derive(Clone, Debug)]
enum Action {
    /// Advance the clock and tick every live node.
    TickAll(u64),
    /// Advance the clock and tick one node (the others' clocks lag).
    Tick {
        node: u64,
        ms: u64,
    },
    /// Deliver one of the eight oldest in-flight messages (mostly FIFO,
    /// with some reordering).
    Deliver(usize),
    /// Deliver every message in flight, oldest first.
    DeliverAll,
    Duplicate(usize),
    Drop(usize),
    /// Propose to this node, or (when the node is 0) to the leader of the
    /// highest term, if any.
    Propose(u64),
    /// §6.3: a linearizable read at this node (0: the leader); the harness
    /// checks that a read served holds every entry committed before it.
    Read(u64),
    /// Complete one pending write of a node with a slow disk.
    Persist(u64),
    Crash(u64),
    /// Restart one of the crashed nodes (this one mod their count).
    Restart(usize),
    /// §10.3: one of the crashed nodes (this one mod their count) loses the
    /// entries after a point of its durable log (`keep` mod their count),
    /// and will restart repairing, as the node core's recovery would set it.
    /// Only while no other node is repairing and every node's config has at
    /// least three voters, so that a majority keeps good copies.
    LoseTail {
        which: usize,
        keep: u64,
    },
    Snapshot(u64),
    /// Ask this node (0: the leader of the highest term) to change
    /// membership: add, promote or remove `target`.
    Membership {
        node: u64,
        target: u64,
        kind: u8,
    },
    Transfer {
        node: u64,
        target: u64,
    },
}

fn node() -> impl Strategy<Value = u64> {
    1..=NODES
}

/// A node, or 0 for "the leader", half of the time.
fn node_or_leader() -> impl Strategy<Value = u64> {
    prop_oneof![node(), Just(0)]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        15 => (0..2 * HEARTBEAT_MS).prop_map(Action::TickAll),
        5 => (node(), 0..ELECTION_TIMEOUT_MS / 2).prop_map(|(node, ms)| Action::Tick { node, ms }),
        40 => any::<usize>().prop_map(Action::Deliver),
        5 => Just(Action::DeliverAll),
        3 => any::<usize>().prop_map(Action::Duplicate),
        5 => any::<usize>().prop_map(Action::Drop),
        10 => node_or_leader().prop_map(Action::Propose),
        4 => node_or_leader().prop_map(Action::Read),
        15 => node().prop_map(Action::Persist),
        1 => node().prop_map(Action::Crash),
        3 => any::<usize>().prop_map(Action::Restart),
        3 => (any::<usize>(), any::<u64>()).prop_map(|(which, keep)| Action::LoseTail { which, keep }),
        2 => node().prop_map(Action::Snapshot),
        3 => (node_or_leader(), node(), 0..3u8)
            .prop_map(|(node, target, kind)| Action::Membership { node, target, kind }),
        2 => (node_or_leader(), node())
            .prop_map(|(node, target)| Action::Transfer { node, target }),
    ]
}

fn membership_change(current: &Config, target: NodeId, kind: u8) -> Config {
    let mut config = current.clone();
    match kind {
        0 => {
            config.learners.insert(target);
        }
        1 => {
            if config.learners.remove(&target) {
                config.voters.insert(target);
            }
        }
        _ => {
            config.voters.remove(&target);
            config.learners.remove(&target);
        }
    }
    config
}

/// Every config that is or may come into force somewhere: each live
/// replica's, the latest one in each crashed node's durable log, and each
/// one in flight.
fn configs_in_play(c: &Cluster) -> Vec<Config> {
    // A config entry still in flight counts too: delivered after the fault,
    // it may become a replica's config, and the fault must leave a majority
    // of that config good as well (the regression test below lost a tail
    // while the only copy of a two-voter config was in an Append on its way).
    let in_flight = c.network.iter().flat_map(|message| match &message.body {
        Body::Append { entries, .. } => entries
            .iter()
            .filter_map(|entry| match &entry.payload {
                Payload::Config(config) => Some(config.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Body::InstallSnapshot { snapshot } => vec![snapshot.meta.config.clone()],
        _ => Vec::new(),
    });
    c.nodes
        .values()
        .map(|node| match &node.replica {
            Some(replica) => replica.config().clone(),
            None => node
                .disk
                .entries
                .iter()
                .rev()
                .find_map(|entry| match &entry.payload {
                    Payload::Config(config) => Some(config.clone()),
                    _ => None,
                })
                .or_else(|| node.disk.snapshot.as_ref().map(|s| s.meta.config.clone()))
                .unwrap_or_default(),
        })
        .chain(in_flight)
        .collect()
}

/// Nodes that lost entries and have not repaired them yet (§10.3).
fn repairing(c: &Cluster) -> BTreeSet<NodeId> {
    c.nodes
        .values()
        .filter(|node| match &node.replica {
            Some(replica) => replica.is_repairing(),
            None => node.disk.hard_state.repair_index != 0,
        })
        .map(|node| node.id)
        .collect()
}

/// Whether `config` keeps a majority of voters that are not repairing, so
/// that the group can still elect leaders once the faults stop.
fn keeps_a_healthy_majority(config: &Config, repairing: &BTreeSet<NodeId>) -> bool {
    let abstaining = config.voters.intersection(repairing).count();
    abstaining + config.quorum() <= config.voters.len().max(1)
}

fn run(voters: u64, slow_disks: Vec<bool>, seed: u64, actions: Vec<Action>) {
    let voter_ids: Vec<NodeId> = (1..=voters).collect();
    let mut c = Cluster::with_seed(&voter_ids, test_options, seed);
    for id in voters + 1..=NODES {
        c.add_empty_node(id, test_options(id));
    }
    for (id, slow) in (1..=NODES).zip(slow_disks) {
        c.set_auto_persist(id, !slow);
    }
    c.record_delivered = false;
    let mut proposal = 0u64;
    let mut read_id = 0u64;
    let mut lost_tails = 0u64;
    let count = actions.len();
    for action in actions {
        let leader = c.leader().unwrap_or(1);
        let pick = |node: u64| if node == 0 { leader } else { node };
        match action {
            Action::TickAll(ms) => c.tick_all(ms),
            Action::Tick { node, ms } => {
                c.now_ms += ms;
                if c.nodes[&node].is_up() {
                    c.tick(node);
                }
            }
            Action::Deliver(position) => {
                if !c.network.is_empty() {
                    c.deliver_at(position % c.network.len().min(8));
                }
            }
            Action::DeliverAll => {
                for message in std::mem::take(&mut c.network) {
                    c.deliver_message(message);
                }
            }
            Action::Duplicate(position) => {
                if !c.network.is_empty() {
                    let message = c.network[position % c.network.len()].clone();
                    c.deliver_message(message);
                }
            }
            Action::Drop(position) => {
                if !c.network.is_empty() {
                    let position = position % c.network.len();
                    c.network.remove(position);
                }
            }
            Action::Propose(node) => {
                let node = pick(node);
                if c.nodes[&node].is_up() {
                    proposal += 1;
                    let _ = c.node_mut(node).propose(proposal.to_le_bytes().to_vec());
                    c.check();
                }
            }
            Action::Read(node) => {
                let node = pick(node);
                if c.nodes[&node].is_up() {
                    read_id += 1;
                    let _ = c.read(node, read_id);
                }
            }
            Action::Persist(node) => {
                if c.nodes[&node].is_up() {
                    c.persist_one(node);
                }
            }
            Action::Crash(node) => {
                if c.nodes[&node].is_up() {
                    c.crash(node);
                }
            }
            Action::Restart(which) => {
                let down: Vec<NodeId> = c
                    .ids()
                    .into_iter()
                    .filter(|id| !c.nodes[id].is_up())
                    .collect();
                if !down.is_empty() {
                    c.restart(down[which % down.len()]);
                }
            }
            Action::LoseTail { which, keep } => {
                let down: Vec<NodeId> = c
                    .ids()
                    .into_iter()
                    .filter(|id| !c.nodes[id].is_up())
                    .collect();
                if !down.is_empty()
                    && repairing(&c).is_empty()
                    && configs_in_play(&c)
                        .iter()
                        .all(|config| config.voters.is_empty() || config.voters.len() >= 3)
                {
                    let id = down[which % down.len()];
                    let disk = &c.nodes[&id].disk;
                    let base = disk.snapshot.as_ref().map_or(0, |s| s.meta.index);
                    let stored = disk.entries.len() as u64;
                    if stored > 0 {
                        c.lose_log_tail(id, base + keep % stored);
                        lost_tails += 1;
                    }
                }
            }
            Action::Snapshot(node) => {
                if c.nodes[&node].is_up() {
                    let replica = c.node(node);
                    if replica.applied_index() > replica.log().snapshot().index {
                        c.take_snapshot(node);
                    }
                }
            }
            Action::Membership { node, target, kind } => {
                let node = pick(node);
                if c.nodes[&node].is_up() {
                    let config = membership_change(c.node(node).config(), target, kind);
                    // A change that would leave too few healthy voters is
                    // the operator's mistake, not a fault to survive.
                    if keeps_a_healthy_majority(&config, &repairing(&c)) {
                        let _ = c.node_mut(node).propose_config(config);
                        c.check();
                    }
                }
            }
            Action::Transfer { node, target } => {
                let node = pick(node);
                if c.nodes[&node].is_up() {
                    let _ = c.node_mut(node).transfer_leader(target);
                    c.check();
                }
            }
        }
        // Every node drains its outputs after each event, as the node core
        // does; slow disks keep their writes pending.
        c.ready_all();
    }

    if std::env::var_os("CONSENSUS_STATS").is_some() {
        let served = c.reads.values().filter(|r| r.outcome == Some(true)).count();
        eprintln!(
            "STATS voters {voters} actions {} terms {} committed {} lost-tails {lost_tails} \
             reads {} served {served} max-snapshot {:?}",
            count,
            c.reads.len(),
            c.leaders.len(),
            c.committed.len(),
            c.up_ids()
                .iter()
                .map(|id| c.node(*id).log().snapshot().index)
                .max()
        );
    }
    // Liveness once the faults stop: everything up, disks instant, no loss.
    for id in c.ids() {
        if !c.nodes[&id].is_up() {
            c.restart(id);
        }
        c.set_auto_persist(id, true);
        c.persist_all(id);
    }
    // A leader emerges and commits a new entry (it may first finish a
    // leadership transfer, or lose its leadership and retry).
    let mut proposed: Option<(NodeId, u64, u64)> = None;
    for _ in 0..(60 * ELECTION_TIMEOUT_MS / HEARTBEAT_MS) {
        c.run_for(HEARTBEAT_MS);
        if let Some((leader, index, term)) = proposed {
            let replica = c.node(leader);
            if replica.commit_index() >= index && replica.log().term_at(index) == Some(term) {
                // §6.3: with the faults gone, the leader serves a
                // linearizable read.
                read_id += 1;
                if c.read(leader, read_id).is_ok() {
                    c.run_for(HEARTBEAT_MS);
                    if c.node(leader).role() == Role::Leader {
                        assert_eq!(
                            c.read_outcome(read_id),
                            Some(true),
                            "a healthy leader did not serve a read"
                        );
                    }
                }
                return;
            }
            if replica.role() != Role::Leader || replica.term() != term {
                proposed = None;
            }
        }
        if proposed.is_none() {
            if let Some(leader) = c.leader().filter(|id| c.node(*id).is_leader_ready()) {
                if let Ok((index, term)) = c.node_mut(leader).propose(b"final".to_vec()) {
                    proposed = Some((leader, index, term));
                }
            }
        }
    }
    let states: Vec<String> = c
        .up_ids()
        .iter()
        .map(|id| {
            let r = c.node(*id);
            format!(
                "node {id}: {:?} term {} leader {:?} config {:?} config_index {} commit {} last {} persisted {} repair {} removed {}",
                r.role(),
                r.term(),
                r.leader(),
                r.config(),
                r.config_index(),
                r.commit_index(),
                r.log().last_index(),
                r.persisted_index(),
                r.repair_index(),
                r.removed()
            )
        })
        .collect();
    panic!(
        "no entry committed after the faults stopped (proposed: {proposed:?})\n{}",
        states.join("\n")
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_faults_never_break_safety(
        voters in 1..=3u64,
        slow_disks in proptest::collection::vec(any::<bool>(), NODES as usize),
        seed in any::<u64>(),
        actions in proptest::collection::vec(action(), 1..1500),
    ) {
        run(voters, slow_disks, seed, actions);
    }
}

/// A case the random test found in CI: a crash and a lost log tail while the
/// only copy of a two-voter config was in flight, after which no majority of
/// that config could be good again. The fault is outside what §10.3 claims;
/// the test now sees configs in flight and does not inject it. Kept as a
/// plain test so that it runs on every commit whatever proptest draws.
#[test]
fn regression_no_lost_tail_while_a_smaller_config_is_in_flight() {
    run(
        3,
        vec![true, true, false, false, false],
        9152752640891476689,
        vec![
            Action::TickAll(150),
            Action::TickAll(108),
            Action::TickAll(85),
            Action::TickAll(93),
            Action::TickAll(44),
            Action::Tick { node: 1, ms: 136 },
            Action::TickAll(50),
            Action::TickAll(50),
            Action::TickAll(175),
            Action::Tick { node: 1, ms: 130 },
            Action::TickAll(0),
            Action::DeliverAll,
            Action::Deliver(0),
            Action::Persist(1),
            Action::Deliver(0),
            Action::Deliver(5124490295167219363),
            Action::Duplicate(16079167256636145923),
            Action::Deliver(0),
            Action::TickAll(0),
            Action::TickAll(100),
            Action::Deliver(2833442429381317254),
            Action::Drop(6064665651075662),
            Action::DeliverAll,
            Action::Drop(0),
            Action::Deliver(0),
            Action::TickAll(0),
            Action::TickAll(0),
            Action::Tick { node: 2, ms: 0 },
            Action::TickAll(0),
            Action::Propose(0),
            Action::TickAll(0),
            Action::TickAll(0),
            Action::Tick { node: 2, ms: 0 },
            Action::TickAll(100),
            Action::Duplicate(0),
            Action::Persist(1),
            Action::TickAll(100),
            Action::TickAll(100),
            Action::TickAll(0),
            Action::TickAll(0),
            Action::TickAll(0),
            Action::Persist(2),
            Action::TickAll(0),
            Action::Deliver(2375534015376271),
            Action::Deliver(0),
            Action::Membership {
                node: 0,
                target: 2,
                kind: 2,
            },
            Action::Drop(3106579444737743090),
            Action::Deliver(3636836507703379041),
            Action::Deliver(11564657433545786203),
            Action::Deliver(13211944889196898140),
            Action::TickAll(0),
            Action::Propose(1),
            Action::TickAll(0),
            Action::Drop(1051881579975328790),
            Action::Duplicate(17248103651577826),
            Action::Crash(1),
            Action::LoseTail { which: 0, keep: 0 },
        ],
    );
}

/// Found by `PROPTEST_RNG_SEED=12345`: a single voter adds node 4 (an
/// empty replica that knows no membership) as a learner on a slow disk and
/// promotes it; node 4 crashes before its copies of both config entries are
/// durable. Node 1 now needs node 4's vote under its uncommitted two-voter
/// config. Node 4 knew no membership again and so granted none, and no
/// entry committed after the faults stopped. A learner is now promoted
/// only once it acknowledged the membership that lists it, durably, so it
/// knows a membership after the crash and votes (docs/protocol.md §7.2).
#[test]
fn regression_a_promoted_learner_that_crashed_lets_the_group_commit_again() {
    run(
        1,
        vec![false, false, false, true, false],
        9144965155061949203,
        vec![
            Action::TickAll(66),
            Action::Tick { node: 1, ms: 475 },
            Action::TickAll(98),
            Action::TickAll(93),
            Action::TickAll(125),
            Action::TickAll(57),
            Action::TickAll(78),
            Action::TickAll(69),
            Action::Propose(0),
            Action::Propose(1),
            Action::Propose(0),
            Action::Membership {
                node: 0,
                target: 4,
                kind: 0,
            },
            Action::Drop(0),
            Action::TickAll(0),
            Action::Deliver(0),
            Action::Tick { node: 1, ms: 0 },
            Action::Deliver(0),
            Action::TickAll(0),
            Action::TickAll(0),
            Action::Deliver(0),
            Action::Persist(4),
            Action::Persist(1),
            Action::Persist(4),
            Action::Deliver(0),
            Action::TickAll(10),
            Action::Membership {
                node: 1,
                target: 4,
                kind: 1,
            },
            Action::Tick { node: 1, ms: 345 },
            Action::TickAll(89),
            Action::TickAll(157),
            Action::Crash(4),
            Action::TickAll(179),
            Action::Deliver(2578259899010774515),
            Action::TickAll(121),
            Action::TickAll(0),
        ],
    );
}
