//! §8.1: a leader catches up a lagging follower with entries read back from
//! disk (below its snapshot point) instead of the whole snapshot, and falls
//! back to the snapshot when the read fails. Two replicas, driven by hand:
//! every write is durable at once, and the test plays the disk for reads.

use std::collections::BTreeMap;

use runnel_consensus::{
    Config, Entry, HardState, Index, LogRead, Message, Options, Payload, Ready, Replica, Role,
    Snapshot, SnapshotMeta,
};
use runnel_io::{NodeId, Rng};

const ELECTION_TIMEOUT_MS: u64 = 300;

fn options(id: NodeId) -> Options {
    let mut options = Options::new(id);
    options.election_timeout_ms = ELECTION_TIMEOUT_MS;
    options.heartbeat_interval_ms = 50;
    options.append_entries_max = 8;
    options.retain_log_below_snapshot = true;
    options
}

fn bootstrap() -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index: 0,
            term: 0,
            config: Config::new([1, 2]),
        },
        data: Vec::new(),
    }
}

/// A node: its replica, every entry it ever made durable (the "disk", which
/// retains everything), and what its state machine applied.
struct Node {
    replica: Replica,
    disk: BTreeMap<Index, Entry>,
    applied: Vec<Index>,
    snapshots_installed: usize,
}

struct Pair {
    nodes: BTreeMap<NodeId, Node>,
    in_flight: Vec<Message>,
    reads: Vec<(NodeId, LogRead)>,
    now_ms: u64,
    /// Makes the next read fail, as a damaged or deleted segment would.
    fail_reads: bool,
}

impl Pair {
    fn new() -> Pair {
        let mut nodes = BTreeMap::new();
        for id in [1, 2] {
            let replica = Replica::new(
                options(id),
                Rng::new(id),
                HardState::default(),
                Some(bootstrap()),
                Vec::new(),
                0,
            );
            nodes.insert(
                id,
                Node {
                    replica,
                    disk: BTreeMap::new(),
                    applied: Vec::new(),
                    snapshots_installed: 0,
                },
            );
        }
        Pair {
            nodes,
            in_flight: Vec::new(),
            reads: Vec::new(),
            now_ms: 0,
            fail_reads: false,
        }
    }

    fn drain(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).unwrap();
            let ready: Ready = node.replica.take_ready();
            let busy = ready.has_writes()
                || !ready.messages.is_empty()
                || !ready.persisted_messages.is_empty()
                || !ready.committed.is_empty()
                || !ready.reads.is_empty();
            if let Some(snapshot) = &ready.snapshot {
                node.snapshots_installed += 1;
                node.disk.retain(|index, _| *index > snapshot.meta.index);
            }
            for entry in &ready.entries {
                node.disk.split_off(&entry.index);
            }
            for entry in &ready.entries {
                node.disk.insert(entry.index, entry.clone());
            }
            if let Some((index, term)) = ready.persist_point {
                node.replica.on_persisted(index, term);
            }
            node.applied
                .extend(ready.committed.iter().map(|entry| entry.index));
            self.in_flight.extend(ready.messages);
            self.in_flight.extend(ready.persisted_messages);
            self.reads
                .extend(ready.reads.into_iter().map(|read| (id, read)));
            if !busy {
                return;
            }
        }
    }

    /// Serves every pending read from the node's disk.
    fn serve_reads(&mut self) {
        for (id, read) in std::mem::take(&mut self.reads) {
            let node = self.nodes.get_mut(&id).unwrap();
            let entries = if self.fail_reads {
                None
            } else {
                Some(
                    node.disk
                        .range(read.from..)
                        .take(3)
                        .map(|(_, entry)| entry.clone())
                        .collect(),
                )
            };
            node.replica.entries_loaded(read.peer, read.from, entries);
            self.drain(id);
        }
    }

    fn deliver(&mut self, drop_to: Option<NodeId>) {
        for _ in 0..1_000 {
            let messages = std::mem::take(&mut self.in_flight);
            if messages.is_empty() && self.reads.is_empty() {
                return;
            }
            for message in messages {
                if Some(message.to) == drop_to {
                    continue;
                }
                let to = message.to;
                self.nodes.get_mut(&to).unwrap().replica.step(message);
                self.drain(to);
            }
            self.serve_reads();
        }
        panic!("no quiescence");
    }

    fn tick(&mut self, ms: u64, drop_to: Option<NodeId>) {
        for _ in 0..ms / 10 {
            self.now_ms += 10;
            for id in [1, 2] {
                if Some(id) == drop_to {
                    continue;
                }
                self.nodes.get_mut(&id).unwrap().replica.tick(self.now_ms);
                self.drain(id);
            }
            self.deliver(drop_to);
        }
    }

    fn leader(&self) -> NodeId {
        *self
            .nodes
            .iter()
            .find(|(_, node)| node.replica.role() == Role::Leader)
            .expect("a leader")
            .0
    }

    fn compact(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        let meta = node.replica.snapshot_meta_at_applied();
        node.replica.snapshot_taken(Snapshot {
            meta,
            data: Vec::new(),
        });
    }
}

/// Elects a leader and commits 20 entries on both nodes; then the follower
/// loses all but the first three entries (it restarts from a shorter log, as
/// after a disk fault) and the leader compacts its log to a snapshot while
/// its disk keeps every entry. The leader must now send the follower entries
/// it no longer holds in memory.
fn lagging_follower(fail_reads: bool) -> Pair {
    let mut pair = Pair::new();
    pair.tick(3 * ELECTION_TIMEOUT_MS, None);
    let leader = pair.leader();
    let follower = 3 - leader;
    for value in 0..20u8 {
        pair.nodes
            .get_mut(&leader)
            .unwrap()
            .replica
            .propose(vec![value])
            .expect("leader accepts");
        pair.drain(leader);
        pair.deliver(None);
    }
    let commit = pair.nodes[&leader].replica.commit_index();
    assert!(commit >= 21, "the noop and 20 entries commit");
    // The follower loses the tail of its log (as if its disk lost it and it
    // restarted): the leader then finds it far behind.
    let retained: Vec<Entry> = pair.nodes[&follower]
        .disk
        .range(..=3)
        .map(|(_, e)| e.clone())
        .collect();
    let replica = Replica::new(
        options(follower),
        Rng::new(99),
        pair.nodes[&follower].replica.hard_state(),
        Some(bootstrap()),
        retained.clone(),
        pair.now_ms,
    );
    let node = pair.nodes.get_mut(&follower).unwrap();
    node.replica = replica;
    node.disk = retained
        .into_iter()
        .map(|entry| (entry.index, entry))
        .collect();
    pair.compact(leader);
    assert_eq!(pair.nodes[&leader].replica.log().snapshot().index, commit);
    assert_eq!(pair.nodes[&leader].replica.log().retained_first(), 1);
    pair.fail_reads = fail_reads;
    pair
}

#[test]
fn a_lagging_follower_is_sent_entries_read_from_disk() {
    let mut pair = lagging_follower(false);
    let leader = pair.leader();
    let follower = 3 - leader;
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    let follower_node = &pair.nodes[&follower];
    assert_eq!(
        follower_node.snapshots_installed, 0,
        "no snapshot was needed"
    );
    assert_eq!(
        follower_node.replica.log().last_index(),
        pair.nodes[&leader].replica.log().last_index()
    );
    // Every entry the follower holds is the leader's.
    for (index, entry) in &follower_node.disk {
        if let Some(theirs) = pair.nodes[&leader].disk.get(index) {
            assert_eq!(entry, theirs);
        }
    }
    assert!(matches!(
        follower_node.disk.get(&5).map(|entry| &entry.payload),
        Some(Payload::Data(_))
    ));
}

#[test]
fn a_failed_read_falls_back_to_the_snapshot() {
    let mut pair = lagging_follower(true);
    let leader = pair.leader();
    let follower = 3 - leader;
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.nodes[&follower].snapshots_installed, 1);
    assert_eq!(
        pair.nodes[&follower].replica.log().last_index(),
        pair.nodes[&leader].replica.log().last_index()
    );
}

#[test]
fn without_retention_a_snapshot_forgets_the_compacted_entries() {
    let mut replica = Replica::new(
        Options::new(1),
        Rng::new(1),
        HardState::default(),
        Some(Snapshot {
            meta: SnapshotMeta {
                index: 0,
                term: 0,
                config: Config::new([1]),
            },
            data: Vec::new(),
        }),
        Vec::new(),
        0,
    );
    replica.tick(10_000);
    for value in 0..3u8 {
        let ready = replica.take_ready();
        if let Some((index, term)) = ready.persist_point {
            replica.on_persisted(index, term);
        }
        if replica.role() == Role::Leader {
            replica.propose(vec![value]).expect("leader");
        }
    }
    for _ in 0..3 {
        let ready = replica.take_ready();
        if let Some((index, term)) = ready.persist_point {
            replica.on_persisted(index, term);
        }
    }
    assert_eq!(replica.role(), Role::Leader);
    let meta = replica.snapshot_meta_at_applied();
    let index = meta.index;
    assert!(index >= 3, "entries were applied");
    replica.snapshot_taken(Snapshot {
        meta,
        data: Vec::new(),
    });
    assert_eq!(replica.log().retained_first(), index + 1);
    assert_eq!(replica.log().term_at(index - 1), None);
}
