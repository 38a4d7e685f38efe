//! An in-memory cluster of `Replica`s for interaction tests, in the style of
//! etcd-io/raft's interaction scripts: a manual clock, a network that holds
//! every sent message until a test delivers, duplicates or drops it, and
//! per-node disks whose writes become durable instantly (`auto_persist`) or
//! only when a test says so. Acknowledgments (`persisted_messages`) reach the
//! network, and `on_persisted` is called, only once the write is durable
//! (docs/protocol.md §3.1, §10.1). A crash loses every write that was not
//! durable yet; a restart rebuilds the replica from its disk.
//!
//! After every Ready and every delivery the cluster checks the safety
//! properties of docs/protocol.md §11 (see `check`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use runnel_consensus::{
    Body, Config, Entry, HardState, Index, Message, Options, Payload, ProposeError, Ready, Replica,
    Role, Snapshot, SnapshotMeta, Term, REPAIR_INDEX_UNKNOWN,
};
use runnel_io::{NodeId, Rng};

pub const ELECTION_TIMEOUT_MS: u64 = 1_000;
pub const HEARTBEAT_MS: u64 = 100;

/// With `CONSENSUS_TRACE` set, the harness prints every Ready, delivery,
/// write and snapshot (to debug a failing scenario or proptest case).
fn tracing() -> bool {
    std::env::var_os("CONSENSUS_TRACE").is_some()
}

/// Small bounds, so that tests reach them.
pub fn test_options(id: NodeId) -> Options {
    let mut options = Options::new(id);
    options.election_timeout_ms = ELECTION_TIMEOUT_MS;
    options.heartbeat_interval_ms = HEARTBEAT_MS;
    options.append_entries_max = 4;
    options.append_bytes_max = 1 << 16;
    options.inflight_appends_max = 4;
    options.promote_lag_max = 4;
    options.uncommitted_entries_max = 64;
    options
}

/// What a node's disk holds durably.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// The entries after the snapshot point, contiguous.
    pub entries: Vec<Entry>,
}

impl Disk {
    fn snapshot_index(&self) -> Index {
        self.snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.meta.index)
    }

    fn term_at(&self, index: Index) -> Option<Term> {
        let base = self.snapshot_index();
        if index == base {
            return Some(
                self.snapshot
                    .as_ref()
                    .map_or(0, |snapshot| snapshot.meta.term),
            );
        }
        if index < base {
            return None;
        }
        self.entries
            .get((index - base - 1) as usize)
            .map(|entry| entry.term)
    }

    /// Installs a snapshot: entries after it survive only when the stored
    /// log continues it (§8, §10.1).
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = &snapshot.meta;
        if self.term_at(meta.index) == Some(meta.term) {
            let drop = (meta.index - self.snapshot_index()) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot.clone());
    }

    /// Writes entries: everything stored from the first one's index on is
    /// replaced (§10.1).
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let base = self.snapshot_index();
        assert!(first.index > base, "writing entries below the snapshot");
        let keep = (first.index - base - 1) as usize;
        assert!(
            keep <= self.entries.len(),
            "a gap in the stored log: stored {:?}, writing {:?}",
            positions(&self.entries),
            positions(entries)
        );
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
    }
}

/// One Ready's writes, in flight to the disk.
#[derive(Debug)]
pub struct Write {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub persist_point: Option<(Index, Term)>,
    pub persisted_messages: Vec<Message>,
}

pub struct Node {
    pub id: NodeId,
    pub options: Options,
    /// `None` while crashed.
    pub replica: Option<Replica>,
    pub disk: Disk,
    /// Writes taken from Readys and not yet durable, oldest first.
    pub pending: VecDeque<Write>,
    /// When set, every Ready's writes are durable at once.
    pub auto_persist: bool,
    /// The state machine: every applied entry, index 1 first.
    pub applied: Vec<Entry>,
    pub incarnation: u64,
    /// Commit index seen at the last check, in this incarnation.
    last_commit: Index,
    /// Every Ready this incarnation produced (for assertions on outputs).
    pub readys: Vec<ReadyRecord>,
    /// The snapshot the node's disk started with (the bootstrap membership,
    /// or none for a node added empty): what a wiped disk restarts from, as
    /// in the node core (§10.3).
    bootstrap: Option<Snapshot>,
}

/// What a test may want to inspect about a Ready after the fact.
#[derive(Clone, Debug)]
pub struct ReadyRecord {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed: Vec<Entry>,
    pub persist_point: Option<(Index, Term)>,
}

impl Node {
    pub fn replica(&self) -> &Replica {
        self.replica.as_ref().expect("node is up")
    }
    pub fn replica_mut(&mut self) -> &mut Replica {
        self.replica.as_mut().expect("node is up")
    }
    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub now_ms: u64,
    /// Sent and not yet delivered or dropped, oldest first.
    pub network: Vec<Message>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    seed: u64,
    /// §11.1: the leader of each term ever seen.
    pub leaders: BTreeMap<Term, NodeId>,
    /// (node, term) for every Append, InstallSnapshot or TimeoutNow a node
    /// sent in that term: it acted as leader where others could see.
    led: BTreeSet<(NodeId, Term)>,
    /// §11.3: the entry at each index once any replica knew it committed,
    /// with that replica's term then (the entry committed in that term or
    /// an earlier one).
    pub committed: BTreeMap<Index, (Entry, Term)>,
    /// §11.4: the entry at each index once any replica applied it.
    pub applied: BTreeMap<Index, Entry>,
    /// §11.2: for each (index, term) ever stored durably on any node, the
    /// payload and the term of the entry before it. (An entry that existed
    /// only in the memory of a node that crashed has vanished; it does not
    /// count.)
    seen: BTreeMap<(Index, Term), (Payload, Option<Term>)>,
    /// Check log matching on every step (linear in log length).
    pub check_log_matching: bool,
    /// Every message handed to a replica, in order (when recording).
    pub delivered: Vec<Message>,
    pub record_delivered: bool,
    /// §6.3: every linearizable read registered through `read`, by id.
    pub reads: BTreeMap<u64, ReadWatch>,
}

/// §6.3: a linearizable read the harness registered and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadWatch {
    pub node: NodeId,
    /// The highest index any replica knew committed when the read was
    /// registered: the state it is served from must hold it.
    pub committed_before: Index,
    /// `Some(true)` once servable, `Some(false)` once failed.
    pub outcome: Option<bool>,
}

pub fn bootstrap(config: Config) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index: 0,
            term: 0,
            config,
        },
        data: encode_state(&[]),
    }
}

impl Cluster {
    /// A group whose `voters` start from the bootstrap membership.
    pub fn new(voters: &[NodeId]) -> Cluster {
        Cluster::with_options(voters, test_options)
    }

    pub fn with_options(voters: &[NodeId], options: impl Fn(NodeId) -> Options) -> Cluster {
        Cluster::with_seed(voters, options, 7)
    }

    pub fn with_seed(voters: &[NodeId], options: impl Fn(NodeId) -> Options, seed: u64) -> Cluster {
        Cluster::with_config(Config::new(voters.iter().copied()), options, seed)
    }

    /// A group whose members all start from the bootstrap membership `config`.
    pub fn with_config(config: Config, options: impl Fn(NodeId) -> Options, seed: u64) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            now_ms: 0,
            network: Vec::new(),
            cut: BTreeSet::new(),
            seed,
            leaders: BTreeMap::new(),
            led: BTreeSet::new(),
            committed: BTreeMap::new(),
            applied: BTreeMap::new(),
            seen: BTreeMap::new(),
            check_log_matching: true,
            delivered: Vec::new(),
            record_delivered: true,
            reads: BTreeMap::new(),
        };
        let members: Vec<NodeId> = config.members().collect();
        for id in members {
            let disk = Disk {
                snapshot: Some(bootstrap(config.clone())),
                ..Disk::default()
            };
            cluster.add_node_with_disk(id, options(id), disk);
        }
        cluster
    }

    /// Adds a node with an empty disk: it knows no membership and waits to
    /// be contacted by a leader (§7.2).
    pub fn add_empty_node(&mut self, id: NodeId, options: Options) {
        self.add_node_with_disk(id, options, Disk::default());
    }

    fn add_node_with_disk(&mut self, id: NodeId, options: Options, disk: Disk) {
        assert_eq!(options.id, id);
        let node = Node {
            id,
            options,
            replica: None,
            pending: VecDeque::new(),
            auto_persist: true,
            applied: Vec::new(),
            incarnation: 0,
            last_commit: 0,
            readys: Vec::new(),
            bootstrap: disk.snapshot.clone(),
            disk,
        };
        self.nodes.insert(id, node);
        self.start(id);
    }

    fn start(&mut self, id: NodeId) {
        let now_ms = self.now_ms;
        let seed = self.seed;
        let node = self.nodes.get_mut(&id).expect("known node");
        node.incarnation += 1;
        let rng = Rng::new(seed ^ (id << 32) ^ node.incarnation);
        let replica = Replica::new(
            node.options.clone(),
            rng,
            node.disk.hard_state,
            node.disk.snapshot.clone(),
            node.disk.entries.clone(),
            now_ms,
        );
        node.replica = Some(replica);
        node.applied.clear();
        node.last_commit = 0;
        node.readys.clear();
    }

    pub fn node(&self, id: NodeId) -> &Replica {
        self.nodes[&id].replica()
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Replica {
        self.nodes.get_mut(&id).expect("known node").replica_mut()
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn up_ids(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|node| node.is_up())
            .map(|node| node.id)
            .collect()
    }

    pub fn set_auto_persist(&mut self, id: NodeId, auto: bool) {
        self.nodes.get_mut(&id).expect("known node").auto_persist = auto;
    }

    // ----- Faults -----

    /// Loses every write that is not durable; in-flight messages to the node
    /// are dropped when delivered.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.replica = None;
        node.pending.clear();
        // A single voter leads as soon as it votes for itself (§3.1); if it
        // crashes before that vote is durable, it sent nothing of the term
        // and its leadership vanished with it: the term may get a leader
        // again (§11.1).
        let record = node.disk.hard_state;
        let lost: Vec<Term> = self
            .leaders
            .iter()
            .filter(|(term, leader)| {
                **leader == id
                    && (record.term < **term
                        || (record.term == **term && record.voted_for != Some(id)))
            })
            .map(|(term, _)| *term)
            .collect();
        for term in lost {
            assert!(
                !self.led.contains(&(id, term)),
                "node {id} sent messages as leader of term {term} before its vote was durable"
            );
            self.leaders.remove(&term);
        }
    }

    pub fn restart(&mut self, id: NodeId) {
        assert!(!self.nodes[&id].is_up(), "restarting a live node");
        self.start(id);
        self.check();
    }

    // ----- Storage faults (docs/protocol.md §10.3) -----
    //
    // Each emulates what the node core's recovery hands a crashed node's
    // replica after a disk fault; restart the node afterwards.

    /// The disk lost every entry after `keep` (a corrupt entry at `keep + 1`,
    /// say): the durable log keeps the prefix up to `keep`, and, if that
    /// dropped anything, `repair_index` becomes the highest index the disk
    /// held (or stays, if higher or unknown). Returns the repair index.
    pub fn lose_log_tail(&mut self, id: NodeId, keep: Index) -> Index {
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(!node.is_up(), "recovery runs before the replica starts");
        let disk = &mut node.disk;
        let base = disk.snapshot_index();
        assert!(keep >= base, "the snapshot is not part of the log tail");
        let highest = base + disk.entries.len() as u64;
        if highest > keep {
            disk.entries.truncate((keep - base) as usize);
            disk.hard_state.repair_index = disk.hard_state.repair_index.max(highest);
        }
        if tracing() {
            eprintln!(
                "LOSE TAIL {id}: keep {keep} of {highest}, repair {}",
                disk.hard_state.repair_index
            );
        }
        disk.hard_state.repair_index
    }

    /// The group could not be read back (no valid vote record, a corrupt
    /// snapshot): the disk is wiped and the replica starts empty, from the
    /// bootstrap membership if the node had one, with its repair target
    /// unknown.
    pub fn wipe_disk(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(!node.is_up(), "recovery runs before the replica starts");
        node.disk = Disk {
            hard_state: HardState {
                repair_index: REPAIR_INDEX_UNKNOWN,
                ..HardState::default()
            },
            snapshot: node.bootstrap.clone(),
            entries: Vec::new(),
        };
    }

    /// One vote slot was damaged; the intact one holds `older`, an earlier
    /// record. The log is intact; the repair target is unknown.
    pub fn lose_vote_record(&mut self, id: NodeId, older: HardState) {
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(!node.is_up(), "recovery runs before the replica starts");
        node.disk.hard_state = HardState {
            repair_index: REPAIR_INDEX_UNKNOWN,
            ..older
        };
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Cuts `id` from every other node.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.ids().into_iter().filter(|n| *n != id).collect();
        self.partition(&[id], &others);
    }

    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    // ----- Time -----

    /// Advances the clock by `ms` and ticks every live node.
    pub fn tick_all(&mut self, ms: u64) {
        self.now_ms += ms;
        for id in self.up_ids() {
            self.tick(id);
        }
    }

    /// Advances the clock by `ms` and ticks only `ids`.
    pub fn tick_only(&mut self, ids: &[NodeId], ms: u64) {
        self.now_ms += ms;
        for &id in ids {
            self.tick(id);
        }
    }

    /// Ticks one node at the current time.
    pub fn tick(&mut self, id: NodeId) {
        let now_ms = self.now_ms;
        self.node_mut(id).tick(now_ms);
        self.check();
    }

    // ----- Outputs -----

    /// Takes and handles one Ready of `id`. Returns whether it had anything.
    pub fn ready(&mut self, id: NodeId) -> bool {
        let Some(replica) = self
            .nodes
            .get_mut(&id)
            .and_then(|node| node.replica.as_mut())
        else {
            return false;
        };
        // A repair only ever ends within an incarnation, so a replica
        // repairing now has been repairing since it started.
        let repairing = replica.is_repairing();
        let ready = replica.take_ready();
        if repairing {
            check_abstains(id, &ready);
        }
        if tracing() {
            eprintln!(
                "READY {id}: hard state {:?} snapshot {:?} entries {:?} point {:?} \
                 messages {:?} persisted messages {:?} committed {:?}",
                ready.hard_state,
                ready.snapshot.as_ref().map(|s| &s.meta),
                positions(&ready.entries),
                ready.persist_point,
                ready.messages,
                ready.persisted_messages,
                positions(&ready.committed),
            );
        }
        let had_output = !ready.is_empty();
        self.handle_ready(id, ready);
        self.check();
        had_output
    }

    fn handle_ready(&mut self, id: NodeId, ready: Ready) {
        // §10.1: the Ready contract.
        assert_eq!(
            ready.persist_point.is_some(),
            ready.has_writes(),
            "a persist point exactly when there is something to write"
        );
        for message in &ready.messages {
            assert_eq!(message.from, id);
            // §3.1: grants and acknowledgments wait for durability.
            match &message.body {
                Body::VoteResponse { granted: true } => {
                    panic!("vote grant sent before the vote record is durable: {message:?}")
                }
                Body::Vote { .. } => panic!("vote request sent before our own vote is durable"),
                Body::AppendResponse { success: true, .. } => {
                    panic!("append acknowledged before it is durable: {message:?}")
                }
                _ => {}
            }
        }
        self.note_leader_messages(&ready.messages);
        if ready.persist_point.is_none() && self.nodes[&id].pending.is_empty() {
            // Released at once below.
            self.note_leader_messages(&ready.persisted_messages);
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.readys.push(ReadyRecord {
            hard_state: ready.hard_state,
            snapshot: ready
                .snapshot
                .as_ref()
                .map(|snapshot| snapshot.meta.clone()),
            entries: ready.entries.clone(),
            messages: ready.messages.clone(),
            persisted_messages: ready.persisted_messages.clone(),
            committed: ready.committed.clone(),
            persist_point: ready.persist_point,
        });
        self.network.extend(ready.messages);
        // The state machine is volatile: apply at once.
        if let Some(snapshot) = &ready.apply_snapshot {
            let state = decode_state(&snapshot.data);
            assert_eq!(
                state.len() as u64,
                snapshot.meta.index,
                "snapshot state length"
            );
            node.applied = state;
        }
        for entry in &ready.committed {
            assert_eq!(
                entry.index,
                node.applied.len() as u64 + 1,
                "node {id} applies out of order"
            );
            node.applied.push(entry.clone());
        }
        // §11.4: every replica applies the same entry at each index.
        let start = if ready.apply_snapshot.is_some() {
            0
        } else {
            node.applied.len() - ready.committed.len()
        };
        for entry in &node.applied[start..] {
            match self.applied.get(&entry.index) {
                Some(previous) => assert_eq!(
                    previous, entry,
                    "state machine safety: node {id} applied a different entry at {}",
                    entry.index
                ),
                None => {
                    self.applied.insert(entry.index, entry.clone());
                }
            }
        }
        // §6.3: a read is served from a state that holds every entry
        // committed anywhere before it was registered.
        for read_id in &ready.reads_ready {
            let watch = self.reads.get_mut(read_id).expect("a registered read");
            assert_eq!(watch.node, id, "read {read_id} answered by another node");
            assert_eq!(watch.outcome, None, "read {read_id} answered twice");
            assert!(
                node.applied.len() as u64 >= watch.committed_before,
                "linearizable read {read_id} at node {id} served from applied index {}, \
                 below {} committed before it",
                node.applied.len(),
                watch.committed_before
            );
            watch.outcome = Some(true);
        }
        for read_id in &ready.reads_failed {
            let watch = self.reads.get_mut(read_id).expect("a registered read");
            assert_eq!(watch.outcome, None, "read {read_id} answered twice");
            watch.outcome = Some(false);
        }
        let has_writes = ready.persist_point.is_some();
        if !has_writes && node.pending.is_empty() {
            // Nothing written and nothing pending: they depend on nothing.
            self.network.extend(ready.persisted_messages);
            return;
        }
        if !has_writes && ready.persisted_messages.is_empty() {
            return;
        }
        node.pending.push_back(Write {
            hard_state: ready.hard_state,
            snapshot: ready.snapshot,
            entries: ready.entries,
            persist_point: ready.persist_point,
            persisted_messages: ready.persisted_messages,
        });
        if node.auto_persist {
            self.persist_all(id);
        }
    }

    fn note_leader_messages(&mut self, messages: &[Message]) {
        for message in messages {
            if matches!(
                message.body,
                Body::Append { .. } | Body::InstallSnapshot { .. } | Body::TimeoutNow
            ) {
                self.led.insert((message.from, message.term));
            }
        }
    }

    /// Makes the oldest pending write of `id` durable: updates its disk,
    /// calls `on_persisted`, releases its acknowledgments.
    pub fn persist_one(&mut self, id: NodeId) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(write) = node.pending.pop_front() else {
            return false;
        };
        if tracing() {
            eprintln!(
                "PERSIST {id}: point {:?} entries {:?}",
                write.persist_point,
                positions(&write.entries)
            );
        }
        if let Some(snapshot) = &write.snapshot {
            node.disk.save_snapshot(snapshot);
        }
        node.disk.append(&write.entries);
        if let Some(hard_state) = write.hard_state {
            node.disk.hard_state = hard_state;
        }
        if self.check_log_matching && !write.entries.is_empty() {
            check_durable_log_matching(&mut self.seen, id, &node.disk);
        }
        if let Some((index, term)) = write.persist_point {
            node.replica_mut().on_persisted(index, term);
        }
        self.note_leader_messages(&write.persisted_messages);
        self.network.extend(write.persisted_messages);
        self.check();
        true
    }

    pub fn persist_all(&mut self, id: NodeId) {
        while self.persist_one(id) {}
    }

    /// Takes every live node's Ready until none has output.
    pub fn ready_all(&mut self) {
        loop {
            let mut any = false;
            for id in self.up_ids() {
                any |= self.ready(id);
            }
            if !any {
                return;
            }
        }
    }

    // ----- Network -----

    /// Delivers (or drops, across a cut or to a crashed node) the message at
    /// `position` in the network.
    pub fn deliver_at(&mut self, position: usize) {
        let message = self.network.remove(position);
        self.deliver_message(message);
    }

    pub fn deliver_message(&mut self, message: Message) {
        if self.cut.contains(&(message.from, message.to)) {
            return;
        }
        let Some(node) = self.nodes.get_mut(&message.to) else {
            return;
        };
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        if tracing() {
            eprintln!("DELIVER {message:?}");
        }
        if self.record_delivered {
            self.delivered.push(message.clone());
        }
        replica.step(message);
        self.check();
    }

    /// Delivers, in order, every in-flight message `keep` selects; the rest
    /// stay in flight. Returns how many were selected.
    pub fn deliver_where(&mut self, keep: impl Fn(&Message) -> bool) -> usize {
        let (selected, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(&keep);
        self.network = rest;
        let count = selected.len();
        for message in selected {
            self.deliver_message(message);
        }
        count
    }

    pub fn drop_where(&mut self, drop: impl Fn(&Message) -> bool) -> usize {
        let before = self.network.len();
        self.network.retain(|message| !drop(message));
        before - self.network.len()
    }

    /// Takes Readys and delivers every message (across cuts: dropped) until
    /// the cluster is quiet. Does not advance time.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            self.ready_all();
            if self.network.is_empty() {
                return;
            }
            let messages = std::mem::take(&mut self.network);
            for message in messages {
                self.deliver_message(message);
            }
        }
        panic!("the cluster does not stabilize");
    }

    /// Runs until quiet, then one heartbeat more, so that followers learn
    /// the latest commit point (it travels on the next Append, §5.1).
    pub fn settle(&mut self) {
        self.stabilize();
        self.tick_all(HEARTBEAT_MS);
        self.stabilize();
    }

    /// Lets time pass in heartbeat steps, stabilizing after each.
    pub fn run_for(&mut self, ms: u64) {
        let mut left = ms;
        while left > 0 {
            let step = left.min(HEARTBEAT_MS);
            self.tick_all(step);
            self.stabilize();
            left -= step;
        }
    }

    /// Ticks the nodes `tick` past their election timeouts (and so past the
    /// leader lease, §4.4), then exchanges messages round by round, dropping
    /// the campaign messages of every node but `id`, until `id` is leader.
    /// Retries a few times (a pre-candidate may first learn a higher term).
    /// Returns as soon as `id` wins: nothing it sends as leader is in flight.
    pub fn campaign(&mut self, id: NodeId, tick: &[NodeId]) {
        for _attempt in 0..5 {
            self.tick_only(tick, 2 * ELECTION_TIMEOUT_MS);
            for _round in 0..100 {
                if self.node(id).role() == Role::Leader {
                    return;
                }
                for node in self.up_ids() {
                    self.ready(node);
                }
                self.drop_where(|message| {
                    message.from != id
                        && matches!(message.body, Body::PreVote { .. } | Body::Vote { .. })
                });
                if self.network.is_empty() {
                    break;
                }
                for message in std::mem::take(&mut self.network) {
                    self.deliver_message(message);
                }
            }
        }
        panic!("node {id} was not elected");
    }

    /// `campaign` with every live node ticked, then runs until quiet.
    pub fn elect(&mut self, id: NodeId) {
        self.stabilize();
        let all = self.up_ids();
        self.campaign(id, &all);
        self.stabilize();
    }

    pub fn leader(&self) -> Option<NodeId> {
        let mut leaders: Vec<(Term, NodeId)> = self
            .nodes
            .values()
            .filter_map(|node| node.replica.as_ref())
            .filter(|replica| replica.role() == Role::Leader)
            .map(|replica| (replica.term(), replica.id()))
            .collect();
        leaders.sort();
        leaders.last().map(|(_, id)| *id)
    }

    /// §6.3: registers linearizable read `read_id` at `id`, watched by the
    /// harness until it is served or fails.
    pub fn read(&mut self, id: NodeId, read_id: u64) -> Result<(), ProposeError> {
        let committed_before = self.committed.keys().next_back().copied().unwrap_or(0);
        self.node_mut(id).read_index(read_id)?;
        let previous = self.reads.insert(
            read_id,
            ReadWatch {
                node: id,
                committed_before,
                outcome: None,
            },
        );
        assert!(previous.is_none(), "read id {read_id} used twice");
        Ok(())
    }

    pub fn read_outcome(&self, read_id: u64) -> Option<bool> {
        self.reads[&read_id].outcome
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> (Index, Term) {
        let result = self.node_mut(id).propose(data.to_vec());
        self.check();
        result.unwrap_or_else(|error| panic!("node {id} refused a proposal: {error:?}"))
    }

    /// The application of `id` takes a snapshot at its applied index (§8).
    pub fn take_snapshot(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let replica = node.replica.as_mut().expect("node is up");
        let meta = replica.snapshot_meta_at_applied();
        if tracing() {
            eprintln!("SNAPSHOT {id}: {meta:?}");
        }
        let snapshot = Snapshot {
            data: encode_state(&node.applied[..meta.index as usize]),
            meta,
        };
        replica.snapshot_taken(snapshot.clone());
        // The snapshot goes to disk after every write queued before it.
        node.pending.push_back(Write {
            hard_state: None,
            snapshot: Some(snapshot),
            entries: Vec::new(),
            persist_point: None,
            persisted_messages: Vec::new(),
        });
        if node.auto_persist {
            self.persist_all(id);
        }
        self.check();
    }

    // ----- Invariants (§11) -----

    /// Checks the safety properties after every step.
    pub fn check(&mut self) {
        let ids = self.up_ids();
        for &id in &ids {
            let node = self.nodes.get_mut(&id).expect("known node");
            let replica = node.replica.as_ref().expect("up");
            // §11.1 election safety.
            if replica.role() == Role::Leader {
                let leader = *self.leaders.entry(replica.term()).or_insert(id);
                assert_eq!(
                    leader,
                    id,
                    "two leaders in term {}: {leader} and {id}",
                    replica.term()
                );
            }
            // Commit never decreases within an incarnation.
            let commit = replica.commit_index();
            assert!(
                commit >= node.last_commit,
                "node {id} commit went back from {} to {commit}",
                node.last_commit
            );
            node.last_commit = commit;
            assert!(commit <= replica.log().last_index());
            assert!(replica.applied_index() <= commit);
            // §11.3: what a replica knows committed never changes.
            let log = replica.log();
            let from = log.first_index().max(1);
            for index in from..=commit {
                let entry = log.entry(index).expect("committed entry in log");
                match self.committed.get(&index) {
                    Some((previous, _)) => assert_eq!(
                        previous, entry,
                        "node {id} has a different committed entry at {index}"
                    ),
                    None => {
                        self.committed
                            .insert(index, (entry.clone(), replica.term()));
                    }
                }
            }
        }
        // §11.2 log matching between the live logs: where two logs hold an
        // entry with the same index and term, they hold the same entries up
        // to it.
        if self.check_log_matching {
            for (i, &a) in ids.iter().enumerate() {
                for &b in &ids[i + 1..] {
                    let log_a = self.nodes[&a].replica().log();
                    let log_b = self.nodes[&b].replica().log();
                    let top = log_a.last_index().min(log_b.last_index());
                    let bottom = log_a.first_index().max(log_b.first_index());
                    let mut index = top;
                    while index >= bottom {
                        let (x, y) = (log_a.entry(index), log_b.entry(index));
                        if x.map(|e| e.term) == y.map(|e| e.term) {
                            for k in bottom..=index {
                                assert_eq!(
                                    log_a.entry(k),
                                    log_b.entry(k),
                                    "log matching: nodes {a} and {b} hold the same term at {index} but differ at {k}"
                                );
                            }
                            break;
                        }
                        index -= 1;
                    }
                }
            }
        }
        // §11.3 leader completeness: a leader holds every entry committed in
        // its term or an earlier one.
        for &id in &ids {
            let replica = self.nodes[&id].replica.as_ref().expect("up");
            if replica.role() != Role::Leader {
                continue;
            }
            let log = replica.log();
            for (index, (entry, term)) in self.committed.range(log.first_index()..) {
                if *term > replica.term() {
                    continue;
                }
                assert_eq!(
                    log.entry(*index),
                    Some(entry),
                    "leader {id} of term {} lacks committed entry {index}",
                    replica.term()
                );
            }
        }
    }

    /// Every message in flight, for assertions.
    pub fn in_flight(&self, pick: impl Fn(&Message) -> bool) -> Vec<Message> {
        self.network.iter().filter(|m| pick(m)).cloned().collect()
    }
}

/// §10.3: a repairing replica neither campaigns nor grants a vote or a
/// pre-vote.
fn check_abstains(id: NodeId, ready: &Ready) {
    for message in ready.messages.iter().chain(&ready.persisted_messages) {
        assert!(
            !matches!(
                message.body,
                Body::PreVote { .. }
                    | Body::Vote { .. }
                    | Body::PreVoteResponse { granted: true }
                    | Body::VoteResponse { granted: true }
            ),
            "node {id} took part in an election while repairing: {message:?}"
        );
    }
}

fn check_durable_log_matching(
    seen: &mut BTreeMap<(Index, Term), (Payload, Option<Term>)>,
    id: NodeId,
    disk: &Disk,
) {
    for (offset, entry) in disk.entries.iter().enumerate() {
        let previous_term = if offset == 0 {
            disk.snapshot.as_ref().map(|s| s.meta.term).or(Some(0))
        } else {
            Some(disk.entries[offset - 1].term)
        };
        match seen.get(&(entry.index, entry.term)) {
            Some((payload, previous)) => {
                assert_eq!(
                    payload, &entry.payload,
                    "log matching: node {id} stored a different entry at ({}, {})",
                    entry.index, entry.term
                );
                assert_eq!(
                    *previous, previous_term,
                    "log matching: node {id} stored a different history before ({}, {})",
                    entry.index, entry.term
                );
            }
            None => {
                seen.insert(
                    (entry.index, entry.term),
                    (entry.payload.clone(), previous_term),
                );
            }
        }
    }
}

/// (index, term) of each entry, for messages.
fn positions(entries: &[Entry]) -> Vec<(Index, Term)> {
    entries
        .iter()
        .map(|entry| (entry.index, entry.term))
        .collect()
}

// ----- The test state machine: the list of applied entries -----

pub fn encode_state(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        out.extend(entry.index.to_le_bytes());
        out.extend(entry.term.to_le_bytes());
        match &entry.payload {
            Payload::Noop => out.push(0),
            Payload::Data(data) => {
                out.push(1);
                out.extend((data.len() as u64).to_le_bytes());
                out.extend(data);
            }
            Payload::Config(config) => {
                out.push(2);
                for set in [&config.voters, &config.learners] {
                    out.extend((set.len() as u64).to_le_bytes());
                    for node in set {
                        out.extend(node.to_le_bytes());
                    }
                }
            }
        }
    }
    out
}

pub fn decode_state(mut bytes: &[u8]) -> Vec<Entry> {
    fn u64_of(bytes: &mut &[u8]) -> u64 {
        let (head, tail) = bytes.split_at(8);
        *bytes = tail;
        u64::from_le_bytes(head.try_into().expect("8 bytes"))
    }
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let index = u64_of(&mut bytes);
        let term = u64_of(&mut bytes);
        let tag = bytes[0];
        bytes = &bytes[1..];
        let payload = match tag {
            0 => Payload::Noop,
            1 => {
                let len = u64_of(&mut bytes) as usize;
                let (data, tail) = bytes.split_at(len);
                bytes = tail;
                Payload::Data(data.to_vec())
            }
            _ => {
                let mut sets = [BTreeSet::new(), BTreeSet::new()];
                for set in &mut sets {
                    for _ in 0..u64_of(&mut bytes) {
                        set.insert(u64_of(&mut bytes));
                    }
                }
                let [voters, learners] = sets;
                Payload::Config(Config { voters, learners })
            }
        };
        entries.push(Entry {
            index,
            term,
            payload,
        });
    }
    entries
}

pub fn data_of(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries
        .iter()
        .filter_map(|entry| match &entry.payload {
            Payload::Data(data) => Some(data.clone()),
            _ => None,
        })
        .collect()
}
