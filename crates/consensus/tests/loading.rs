//! §8.1: a leader catches up a lagging follower with entries read back from
//! disk (below its snapshot point) instead of the whole snapshot, and falls
//! back to the snapshot when the read fails. §8.2: a follower that installed
//! a snapshot backfills the log below it from the leader. Two replicas,
//! driven by hand: every write is durable at once, and the test plays the
//! disk for reads.

use std::collections::BTreeMap;

use runnel_consensus::{
    BackfillRead, Body, Config, Entry, HardState, Index, LogRead, Message, Options, Payload, Ready,
    Replica, Role, Snapshot, SnapshotMeta,
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
    backfill_reads: Vec<(NodeId, BackfillRead)>,
    /// Backfill chunks each node stored below its snapshot.
    backfilled: BTreeMap<NodeId, usize>,
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
            backfill_reads: Vec::new(),
            backfilled: BTreeMap::new(),
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
                || !ready.reads.is_empty()
                || !ready.backfill_reads.is_empty()
                || !ready.backfill.is_empty();
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
            self.backfill_reads
                .extend(ready.backfill_reads.into_iter().map(|read| (id, read)));
            if !ready.backfill.is_empty() {
                for entry in &ready.backfill {
                    assert!(!node.disk.contains_key(&entry.index), "backfill overwrote");
                    node.disk.insert(entry.index, entry.clone());
                }
                *self.backfilled.entry(id).or_default() += 1;
                node.replica.backfill_stored(true);
            }
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
        // §8.2: up to 3 entries ending just below `below`.
        for (id, read) in std::mem::take(&mut self.backfill_reads) {
            let node = self.nodes.get_mut(&id).unwrap();
            let entries = if self.fail_reads {
                None
            } else {
                let mut chunk: Vec<Entry> = node
                    .disk
                    .range(..read.below)
                    .rev()
                    .take(3)
                    .map(|(_, entry)| entry.clone())
                    .collect();
                chunk.reverse();
                Some(chunk)
            };
            node.replica.backfill_loaded(read.peer, read.below, entries);
            self.drain(id);
        }
    }

    fn deliver(&mut self, drop_to: Option<NodeId>) {
        for _ in 0..1_000 {
            let messages = std::mem::take(&mut self.in_flight);
            if messages.is_empty() && self.reads.is_empty() && self.backfill_reads.is_empty() {
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

    /// Both hosts serve their machines from the log from `index` on (§8.3).
    fn set_log_needed_from(&mut self, index: Option<Index>) {
        for node in self.nodes.values_mut() {
            node.replica.set_log_needed_from(index);
        }
    }

    /// The leader `from` starts a transfer to `to`, and the messages go.
    fn transfer(&mut self, from: NodeId, to: NodeId) {
        self.nodes
            .get_mut(&from)
            .unwrap()
            .replica
            .transfer_leader(to)
            .expect("a voter");
        self.drain(from);
        self.deliver(None);
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

/// §8.2: the follower that had to install the snapshot (its read failed)
/// then takes the leader's log below it, three entries at a time, newest
/// first, once reads work again; it ends up holding every entry the leader
/// retains, identical, and asks no more.
#[test]
fn a_follower_that_installed_a_snapshot_backfills_the_log_below_it() {
    let mut pair = lagging_follower(true);
    let leader = pair.leader();
    let follower = 3 - leader;
    // The failed read sends the snapshot; backfill reads fail too, so the
    // follower holds nothing below its snapshot and asks again later.
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.nodes[&follower].snapshots_installed, 1);
    let snapshot_index = pair.nodes[&follower].replica.log().snapshot().index;
    assert_eq!(
        pair.nodes[&follower].replica.log().retained_first(),
        snapshot_index + 1
    );
    assert_eq!(pair.backfilled.get(&follower), None);
    pair.fail_reads = false;
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    let chunks = pair.backfilled[&follower];
    assert_eq!(chunks as u64, snapshot_index.div_ceil(3));
    let follower_node = &pair.nodes[&follower];
    assert_eq!(follower_node.replica.log().retained_first(), 1);
    for index in 1..=snapshot_index {
        assert_eq!(
            follower_node.disk.get(&index),
            pair.nodes[&leader].disk.get(&index),
            "entry {index}"
        );
        assert_eq!(
            follower_node.replica.log().term_at(index),
            pair.nodes[&leader].replica.log().term_at(index)
        );
    }
    // Done: more time sends no more requests.
    pair.tick(5 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.backfilled[&follower], chunks);
}

/// §8.2: a chunk that does not fit just below what the follower retains
/// (a wrong term, a gap, a stale `below`) is refused: nothing is stored.
/// The same chunk, fitting, is taken.
#[test]
fn a_backfill_chunk_that_does_not_fit_is_refused() {
    for case in 0..4 {
        let mut pair = lagging_follower(true);
        let leader = pair.leader();
        let follower = 3 - leader;
        // The snapshot goes out; the follower then asks for the entries
        // below it, and the leader's reads fail, so nobody answers.
        pair.tick(12 * ELECTION_TIMEOUT_MS, None);
        let snapshot_index = pair.nodes[&follower].replica.log().snapshot().index;
        let term = pair.nodes[&follower].replica.term();
        let below = snapshot_index + 1;
        let good: Vec<Entry> = pair.nodes[&leader]
            .disk
            .range(below - 2..below)
            .map(|(_, entry)| entry.clone())
            .collect();
        let (entries, at) = match case {
            0 => {
                let mut wrong_term = good.clone();
                wrong_term[1].term += 1;
                (wrong_term, below)
            }
            1 => (vec![good[0].clone()], below),
            2 => (good.clone(), below - 1),
            _ => (good.clone(), below),
        };
        pair.nodes
            .get_mut(&follower)
            .unwrap()
            .replica
            .step(Message {
                from: leader,
                to: follower,
                term,
                body: Body::Backfill { below: at, entries },
            });
        let ready = pair.nodes.get_mut(&follower).unwrap().replica.take_ready();
        if case < 3 {
            assert!(
                ready.backfill.is_empty(),
                "case {case}: a chunk that does not fit was taken"
            );
        } else {
            assert_eq!(ready.backfill, good, "the fitting chunk is taken");
        }
    }
}

/// §8.3: a follower whose host serves its machine's data from the log
/// (a Kafka partition, needing entries from index 2 on) and that lacks part
/// of it neither takes over when asked nor campaigns when the leader goes
/// silent; once its backfill holds everything from index 2, it stops asking
/// for more and takes over when asked.
#[test]
fn a_replica_that_lacks_the_log_its_host_serves_does_not_lead_until_it_backfilled() {
    let mut pair = lagging_follower(true);
    let leader = pair.leader();
    let follower = 3 - leader;
    pair.set_log_needed_from(Some(2));
    assert!(pair.nodes[&leader].replica.holds_needed_log());
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.nodes[&follower].snapshots_installed, 1);
    assert!(!pair.nodes[&follower].replica.holds_needed_log());
    // Asked to take over, it declines: the transfer lapses.
    let term = pair.nodes[&leader].replica.term();
    pair.transfer(leader, follower);
    pair.tick(3 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.leader(), leader);
    assert_eq!(pair.nodes[&follower].replica.term(), term);
    // §9: the lapsed target is passed over as a successor for a while.
    assert!(!pair.nodes[&leader].replica.may_take_over(follower));
    // With the leader silent, it does not campaign, however long.
    pair.tick(20 * ELECTION_TIMEOUT_MS, Some(leader));
    assert_eq!(pair.nodes[&follower].replica.role(), Role::Follower);
    assert_eq!(pair.nodes[&follower].replica.term(), term);
    // Reads work again: it backfills down to index 2, no further.
    pair.fail_reads = false;
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    let follower_log = pair.nodes[&follower].replica.log();
    assert!(pair.nodes[&follower].replica.holds_needed_log());
    assert!(follower_log.retained_first() <= 2);
    assert!(
        follower_log.retained_first() >= 2 - 1,
        "it asks for nothing below what its host needs"
    );
    pair.transfer(leader, follower);
    pair.tick(3 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.leader(), follower);
}

/// §8.3: a leader that lost part of the log its host serves (a read found
/// damage, and the node stopped retaining it) hands leadership to a voter
/// that holds it, then backfills the lost part from the new leader.
#[test]
fn a_leader_that_lost_part_of_the_log_its_host_serves_hands_off_and_backfills() {
    let mut pair = lagging_follower(false);
    let leader = pair.leader();
    let follower = 3 - leader;
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    pair.set_log_needed_from(Some(2));
    // The follower was caught up from the log and never installed the
    // snapshot: it holds everything. Now the leader loses entries below 6.
    assert!(pair.nodes[&follower].replica.holds_needed_log());
    let node = pair.nodes.get_mut(&leader).unwrap();
    node.replica.discard_retained_below(6);
    node.disk.retain(|index, _| *index >= 6);
    assert!(!node.replica.holds_needed_log());
    pair.tick(3 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.leader(), follower, "the leader handed off");
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    let old_leader = &pair.nodes[&leader];
    assert!(old_leader.replica.holds_needed_log(), "it backfilled");
    for index in 2..6 {
        assert_eq!(
            old_leader.disk.get(&index),
            pair.nodes[&follower].disk.get(&index),
            "entry {index}"
        );
    }
}

/// §8.3: a voter that lacks its host's log and knows no leader asks the
/// other voters, and any replica answers with entries at or below its
/// commit index (the committed ones): here a follower answers its own
/// leader's request from memory, and refuses past its commit.
#[test]
fn a_follower_answers_a_voters_backfill_with_committed_entries_only() {
    let mut pair = lagging_follower(false);
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    let leader = pair.leader();
    let follower = 3 - leader;
    let commit = pair.nodes[&follower].replica.commit_index();
    assert!(commit >= 10, "the follower caught up");
    let term = pair.nodes[&follower].replica.term();
    let ask = |pair: &mut Pair, below: Index| {
        let node = pair.nodes.get_mut(&follower).unwrap();
        node.replica.step(Message {
            from: leader,
            to: follower,
            term,
            body: Body::BackfillRequest { below },
        });
        node.replica
            .take_ready()
            .messages
            .into_iter()
            .find_map(|message| match message.body {
                Body::Backfill { below, entries } => Some((below, entries)),
                _ => None,
            })
    };
    let (below, entries) = ask(&mut pair, 10).expect("answered");
    assert_eq!(below, 10);
    assert_eq!(entries.last().map(|entry| entry.index), Some(9));
    for entry in &entries {
        assert_eq!(Some(entry), pair.nodes[&leader].disk.get(&entry.index));
    }
    // Past its commit index it answers nothing from memory: those entries
    // may not be the committed ones.
    let past = ask(&mut pair, commit + 2);
    assert!(past.is_none_or(|(_, entries)| entries.is_empty()));
}

/// §8.3: a follower says in every AppendResponse whether it lacks the log
/// its host serves; the leader counts it out of the replicas in sync (the
/// ISR, the learners a move promotes, the successors it picks) until its
/// backfill ends.
#[test]
fn a_follower_lacking_its_log_is_not_in_sync_until_it_backfilled() {
    let mut pair = lagging_follower(true);
    let leader = pair.leader();
    let follower = 3 - leader;
    pair.set_log_needed_from(Some(2));
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    assert_eq!(pair.nodes[&follower].snapshots_installed, 1);
    assert!(!pair.nodes[&follower].replica.holds_needed_log());
    let in_sync = pair.nodes[&leader]
        .replica
        .replicas_in_sync(ELECTION_TIMEOUT_MS);
    assert_eq!(in_sync, vec![leader], "caught up, but lacking its log");
    assert!(!pair.nodes[&leader].replica.may_take_over(follower));
    pair.fail_reads = false;
    pair.tick(10 * ELECTION_TIMEOUT_MS, None);
    assert!(pair.nodes[&follower].replica.holds_needed_log());
    let mut both = vec![leader, follower];
    both.sort_unstable();
    let in_sync = pair.nodes[&leader]
        .replica
        .replicas_in_sync(ELECTION_TIMEOUT_MS);
    assert_eq!(in_sync, both);
    assert!(pair.nodes[&leader].replica.may_take_over(follower));
}
