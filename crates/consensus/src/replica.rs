//! One replica of one group: a deterministic state machine that does no IO.
//!
//! Inputs are `tick`, `step` (a message), `propose*`, `transfer_leader`,
//! `on_persisted` and `snapshot_taken`; outputs accumulate until the caller
//! takes them with `take_ready`. The caller must persist what a `Ready` asks
//! for, then send its `persisted_messages` and call `on_persisted`, in that
//! order (docs/protocol.md §3.1, §10). Section numbers in comments refer to
//! docs/protocol.md.

use std::collections::{BTreeMap, VecDeque};

use runnel_io::{NodeId, Rng};

use crate::log::Log;
use crate::message::{Body, Message};
use crate::types::{
    Config, Entry, HardState, Index, Payload, Snapshot, SnapshotMeta, Term, REPAIR_INDEX_UNKNOWN,
};

/// Bounds on what one replica sends and holds. Checked against each other in
/// `Options::validate`.
#[derive(Clone, Debug)]
pub struct Options {
    pub id: NodeId,
    /// Followers campaign after a random silence in `[t, 2t)` (§4.1).
    pub election_timeout_ms: u64,
    /// Leaders send an append (heartbeat) at least this often (§5.1).
    pub heartbeat_interval_ms: u64,
    /// At most this many entries in one Append (§5.5).
    pub append_entries_max: usize,
    /// At most this many bytes of entries in one Append, unless one entry
    /// alone is larger (§5.5).
    pub append_bytes_max: usize,
    /// At most this many Appends in flight to one follower (§5.5).
    pub inflight_appends_max: usize,
    /// A learner is promoted only when it lags the leader by at most this
    /// many entries (§7.2).
    pub promote_lag_max: u64,
    /// Proposals are refused while this many entries are appended but not
    /// committed, so that an isolated leader cannot grow without bound (§6).
    pub uncommitted_entries_max: u64,
    /// §8.1: storage keeps entries below the snapshot point until the node
    /// deletes them (`discard_retained_below`), so a lagging follower can be
    /// sent them from disk. When false, a snapshot forgets them at once.
    pub retain_log_below_snapshot: bool,
}

impl Options {
    pub fn new(id: NodeId) -> Options {
        Options {
            id,
            election_timeout_ms: 1_000,
            heartbeat_interval_ms: 100,
            append_entries_max: 256,
            append_bytes_max: 1 << 20,
            inflight_appends_max: 32,
            promote_lag_max: 64,
            uncommitted_entries_max: 16_384,
            retain_log_below_snapshot: false,
        }
    }

    pub fn validate(&self) {
        assert!(self.heartbeat_interval_ms > 0);
        assert!(
            self.heartbeat_interval_ms * 3 <= self.election_timeout_ms,
            "heartbeats must come several times per election timeout"
        );
        assert!(self.append_entries_max > 0 && self.append_bytes_max > 0);
        assert!(self.inflight_appends_max > 0);
        assert!(self.uncommitted_entries_max >= self.append_entries_max as u64);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a proposal was refused. These are operating conditions the caller
/// reports to its client, not programmer errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    NotLeader {
        leader_hint: Option<NodeId>,
    },
    /// A leadership transfer is under way (§9).
    Transferring,
    /// Too many uncommitted entries (§6).
    Backpressure,
    /// A membership change is not allowed now or not valid (§7).
    InvalidConfig(String),
}

/// The leader's view of one follower (§5.5).
#[derive(Clone, Debug)]
struct Progress {
    /// Highest index known to be durable on the follower and to match.
    match_index: Index,
    /// Next index to send.
    next_index: Index,
    state: ProgressState,
    /// Last index of each Append in flight, ascending.
    inflight: Vec<Index>,
    /// When the follower last answered (§4.4, check-quorum).
    last_ack_ms: u64,
    /// §6.3: the highest read round the follower echoed in this term.
    read_round_acked: u64,
    /// §9: when a transfer of leadership to it last lapsed (it declined,
    /// or could not be reached); it is not asked again for a while.
    transfer_lapsed_ms: Option<u64>,
    /// §8.3: its last answer said it lacks part of the log its host
    /// serves.
    lacks_log: bool,
}

/// §6.3: a linearizable read registered at the leader, waiting for a quorum
/// to confirm the leadership in `round` or later, then for the state
/// machine to apply `index`.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: u64,
    index: Index,
    round: u64,
}

/// §9: a voter whose transfer lapsed is passed over as a successor for this
/// many election timeouts (`Replica::may_take_over`).
pub const TRANSFER_LAPSE_HOLD_TIMEOUTS: u64 = 10;

/// At most this many linearizable reads wait at one leader (§6.3); more are
/// refused with `Backpressure`.
pub const READS_PENDING_MAX: usize = 16_384;

/// How far behind the commit index a follower may be and still count as in
/// sync (`Replica::replicas_in_sync`).
pub const IN_SYNC_ENTRIES_LAG_MAX: Index = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProgressState {
    /// Unsure where the follower's log ends: one Append per heartbeat or
    /// response. `sent` is set once one is in flight.
    Probe { sent: bool },
    /// Streaming: Appends are sent optimistically, up to the inflight window.
    Replicate,
    /// A snapshot at `index` was sent at `sent_ms`.
    Snapshot { index: Index, sent_ms: u64 },
    /// §8.1: entries from `from`, below the snapshot point, are being read
    /// from disk (asked at `sent_ms`); `entries_loaded` sends them.
    Loading { from: Index, sent_ms: u64 },
}

/// What the caller must do after feeding inputs (docs/protocol.md §10).
#[derive(Debug, Default)]
pub struct Ready {
    /// Persist the vote record.
    pub hard_state: Option<HardState>,
    /// Persist this snapshot (received from the leader, §8) before `entries`.
    pub snapshot: Option<Snapshot>,
    /// Persist these entries; when the first one's index is at or below the
    /// stored log's end, everything stored from that index on is removed first.
    pub entries: Vec<Entry>,
    /// Send now: they depend on nothing unpersisted.
    pub messages: Vec<Message>,
    /// Send only once everything this and earlier `Ready`s asked to persist
    /// is durable (votes, append acknowledgments, §3.1).
    pub persisted_messages: Vec<Message>,
    /// Reset the state machine to this snapshot, then apply `committed`.
    pub apply_snapshot: Option<Snapshot>,
    /// Committed, durable entries to apply, in order.
    pub committed: Vec<Entry>,
    /// The (index, term) to pass to `on_persisted` once this `Ready`'s writes
    /// are durable.
    pub persist_point: Option<(Index, Term)>,
    /// §8.1: read these entries from disk and pass them to
    /// `entries_loaded`.
    pub reads: Vec<LogRead>,
    /// §6.3: linearizable reads (by the caller's id) that may now be served
    /// from the state machine, once `committed` is applied.
    pub reads_ready: Vec<u64>,
    /// §6.3: linearizable reads that can no longer be confirmed (the
    /// replica stopped leading): the caller tells their clients to retry.
    pub reads_failed: Vec<u64>,
    /// §8.2: read the retained entries ending just below `below` for a
    /// follower backfilling, and pass them to `backfill_loaded`.
    pub backfill_reads: Vec<BackfillRead>,
    /// §8.2: committed entries from the leader that go just below what this
    /// replica retains: store them below the snapshot and call
    /// `backfill_stored` (or `backfill_stored(false)` if they cannot be).
    pub backfill: Vec<Entry>,
}

/// A follower's request for the retained entries ending at `below - 1`
/// (§8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackfillRead {
    pub peer: NodeId,
    pub below: Index,
}

/// §8.2: where a follower is in taking the log below its snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Backfill {
    /// Nothing to ask: the leader retains no more, or the host discarded
    /// retained entries (so it wants none below them). A replica that
    /// lacks what its host needs (`holds_needed_log`) asks all the same.
    Off,
    /// The leader had nothing that fit at `at_ms`: a replica that lacks
    /// what its host needs asks again an election timeout later (the
    /// leader may have changed, or caught up on its own backfill).
    Refused { at_ms: u64 },
    /// Ask the leader at the next Append from it.
    Wanted,
    /// Asked `peer` (the leader, or with none a voter, §8.3) for the
    /// entries below `below` at `sent_ms`.
    Asked {
        below: Index,
        sent_ms: u64,
        peer: NodeId,
    },
    /// Handed the host a chunk ending at `below - 1` to store.
    Storing { entries: Vec<Entry> },
}

/// A request to read entries from `from` on, below the snapshot point, for
/// the follower `peer` (§8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRead {
    pub peer: NodeId,
    pub from: Index,
}

impl Ready {
    /// Whether this `Ready` asks anything of the caller.
    pub fn is_empty(&self) -> bool {
        !self.has_writes()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.apply_snapshot.is_none()
            && self.reads.is_empty()
            && self.reads_ready.is_empty()
            && self.reads_failed.is_empty()
            && self.backfill_reads.is_empty()
            && self.backfill.is_empty()
    }

    pub fn has_writes(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

/// The fields of an Append that `handle_append` needs besides its entries.
#[derive(Clone, Copy, Debug)]
struct AppendFrom {
    leader: NodeId,
    prev_index: Index,
    prev_term: Term,
    leader_commit: Index,
    read_round: u64,
}

pub struct Replica {
    options: Options,
    rng: Rng,
    // Durable state (§3.1).
    term: Term,
    voted_for: Option<NodeId>,
    /// §10.3: non-zero while this replica must not vote or campaign.
    repair_index: Index,
    /// §10.3: while rejoining after losing the vote record, the highest term
    /// heard from each other voter; `None` otherwise.
    rejoin_terms: Option<BTreeMap<NodeId, Term>>,
    /// §10.3: the catch-up target learned from the first leader, and whether
    /// the term floor is known, while rejoining (memory only).
    rejoin_target: Option<Index>,
    rejoin_floor_known: bool,
    log: Log,
    // Volatile state.
    role: Role,
    leader: Option<NodeId>,
    commit: Index,
    applied: Index,
    /// Highest index whose entry, and every entry before it, is durable here.
    persisted: Index,
    config: Config,
    /// Index of the entry that set `config` (§7.1).
    config_index: Index,
    /// §7.4: a member's committed membership from its entry at this index
    /// does not list this replica.
    removed_by: Option<Index>,
    /// A config in force since this replica started listed it. A replica
    /// joining may hold an older config without it (from a snapshot taken
    /// before it was added), which says nothing about its leaving.
    was_member: bool,
    now_ms: u64,
    election_deadline_ms: u64,
    heartbeat_due_ms: u64,
    check_quorum_due_ms: u64,
    /// When this replica last heard from a current leader (§4.4).
    leader_contact_ms: Option<u64>,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    /// First index of the leader's own term: committing it makes the leader
    /// ready to serve reads and membership changes (§5.4, §6.2).
    term_start_index: Index,
    transfer: Option<(NodeId, u64)>,
    /// §3.1: set while this replica leads a term it won with its own vote
    /// alone (a single voter), before that vote is known durable: nothing of
    /// the term may leave until then, so everything it sends waits for
    /// persistence. Cleared once its term-start entry is durable (it is
    /// written with or after the vote record).
    self_vote_unsynced: bool,
    /// The latest snapshot with data, kept to send to lagging followers.
    latest_snapshot: Option<Snapshot>,
    /// §6.3: the leader's current read round, carried by every Append. It
    /// never decreases, across terms too.
    read_round: u64,
    /// §6.3: a read joined `read_round` since the last `take_ready`, which
    /// then sends every follower an Append carrying it.
    read_round_due: bool,
    /// §6.3: reads waiting for a quorum to echo their round, in order.
    reads_unconfirmed: VecDeque<PendingRead>,
    /// §6.3: confirmed reads waiting for the state machine to apply their
    /// index, in order (their indexes never decrease).
    reads_confirmed: VecDeque<PendingRead>,
    reads_failed: Vec<u64>,
    /// §8.2: this replica's backfill below its snapshot, as a follower.
    backfill: Backfill,
    /// §8.3: the lowest index the host's state machine still names (a
    /// partition's oldest batch), whose entries it serves from the log;
    /// `None` when it needs no log below its snapshot.
    log_needed_from: Option<Index>,
    /// §8.3: hand-offs tried by this replica (`hand_off_leadership`).
    hand_off_attempts: u64,
    /// §8.3: backfills asked of peers while no leader is known, so that
    /// each ask goes to the next voter in turn.
    backfill_peer_turns: u64,
    // Outputs not yet taken.
    hard_state_dirty: bool,
    unstable_from: Option<Index>,
    snapshot_to_persist: Option<Snapshot>,
    snapshot_to_apply: Option<Snapshot>,
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    reads: Vec<LogRead>,
    backfill_reads: Vec<BackfillRead>,
    backfill_out: Vec<Entry>,
}

impl Replica {
    /// A replica restored from durable state (or a new one: default hard
    /// state, no snapshot, no entries, and the bootstrap membership in
    /// `snapshot.meta.config`).
    pub fn new(
        options: Options,
        rng: Rng,
        hard_state: HardState,
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
        now_ms: u64,
    ) -> Replica {
        options.validate();
        let options_retain = options.retain_log_below_snapshot;
        let meta = snapshot
            .as_ref()
            .map(|snapshot| snapshot.meta.clone())
            .unwrap_or_default();
        let log = Log::new(meta.clone(), entries);
        // §10.1: entries and the vote record are synced by separate calls, so
        // a crash can leave entries of a term newer than the record. No vote
        // in that term left this node (grants wait for the record), so
        // adopting the term without a vote is safe.
        let mut hard_state_dirty = false;
        let mut hard_state = hard_state;
        if log.last_term() > hard_state.term {
            hard_state.term = log.last_term();
            hard_state.voted_for = None;
            hard_state_dirty = true;
        }
        let (config_index, config) = log.latest_config();
        let persisted = log.last_index();
        if hard_state.repair_index != REPAIR_INDEX_UNKNOWN
            && hard_state.repair_index != 0
            && persisted >= hard_state.repair_index
        {
            // The repair finished before a crash lost the record saying so.
            hard_state.repair_index = 0;
            hard_state_dirty = true;
        }
        let mut replica = Replica {
            options,
            rng,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            repair_index: hard_state.repair_index,
            rejoin_terms: None,
            rejoin_target: None,
            rejoin_floor_known: false,
            log,
            role: Role::Follower,
            leader: None,
            // The commit point is re-learned from the leader; only the
            // snapshot is known to be committed (§10.2).
            commit: meta.index,
            applied: meta.index,
            persisted,
            config,
            config_index,
            removed_by: None,
            was_member: false,
            now_ms,
            election_deadline_ms: 0,
            heartbeat_due_ms: 0,
            check_quorum_due_ms: 0,
            leader_contact_ms: None,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: 0,
            transfer: None,
            self_vote_unsynced: false,
            latest_snapshot: snapshot.clone(),
            read_round: 0,
            read_round_due: false,
            reads_unconfirmed: VecDeque::new(),
            reads_confirmed: VecDeque::new(),
            reads_failed: Vec::new(),
            // §8.2: a replica restarted from a snapshot asks once whether
            // the leader retains more below it than it does.
            backfill: if options_retain && meta.index > 0 {
                Backfill::Wanted
            } else {
                Backfill::Off
            },
            hard_state_dirty,
            unstable_from: None,
            snapshot_to_persist: None,
            snapshot_to_apply: snapshot,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            reads: Vec::new(),
            backfill_reads: Vec::new(),
            backfill_out: Vec::new(),
            log_needed_from: None,
            hand_off_attempts: 0,
            backfill_peer_turns: 0,
        };
        replica.was_member = replica.config.contains(replica.id());
        replica.reset_election_deadline();
        replica
    }

    /// §7.4: asks `nodes` (members of the group by another account, such as
    /// the cluster's metadata) whether a committed change removed this
    /// replica; a member whose committed config leaves it out answers
    /// `Removed`. For a replica whose own config lists only nodes that no
    /// longer hold the group, and so would never be told.
    pub fn ask_whether_removed(&mut self, nodes: &[NodeId]) {
        for &node in nodes {
            if node != self.id() {
                self.send(node, Body::TermQuery);
            }
        }
    }

    /// Index of the entry (or snapshot) that set the config in force.
    pub fn config_index(&self) -> Index {
        self.config_index
    }

    // ----- Read-only accessors -----

    pub fn id(&self) -> NodeId {
        self.options.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> Index {
        self.commit
    }
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    pub fn persisted_index(&self) -> Index {
        self.persisted
    }
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// §7.4: whether a member told this replica that a committed change
    /// newer than every membership it knows removed it. Such a replica no
    /// longer campaigns; its host may delete it. A later membership that
    /// lists it again (it was added back) clears this.
    pub fn removed(&self) -> bool {
        self.removed_by
            .is_some_and(|index| index > self.config_index)
    }

    /// Whether a committed membership leaves this replica out: one it was
    /// told of (`removed`), or its own config in force once committed. A
    /// replica that knows no membership yet (joining) has not left.
    pub fn left_group(&self) -> bool {
        self.removed()
            || (self.was_member
                && !self.config.contains(self.id())
                && self.config_index <= self.commit)
    }
    pub fn log(&self) -> &Log {
        &self.log
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            voted_for: self.voted_for,
            repair_index: self.repair_index,
        }
    }
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|(target, _)| target)
    }

    /// §6.2: a leader serves reads and accepts membership changes only once
    /// an entry of its own term is committed.
    pub fn is_leader_ready(&self) -> bool {
        self.role == Role::Leader && self.commit >= self.term_start_index
    }

    /// §6.2: ready, and its term-start entry handed to the application, so
    /// that the state machine holds every entry any earlier leader
    /// committed. A leader can be ready before that: followers alone may
    /// commit its term-start entry while its own disk is slow, and it
    /// applies only what it holds durably. Reads of the state machine wait
    /// for this, or a consumer that read up to the old leader's commit point
    /// would find the new leader behind it.
    pub fn can_serve_reads(&self) -> bool {
        self.is_leader_ready() && self.applied >= self.term_start_index
    }

    /// The leader's match index for `node` (for status output and checks).
    pub fn match_index(&self, node: NodeId) -> Option<Index> {
        self.progress
            .get(&node)
            .map(|progress| progress.match_index)
    }

    /// On a leader: the replicas in sync, as Kafka's ISR: itself, and every
    /// member that answered within `lag_ms` and whose log matches to within
    /// `IN_SYNC_ENTRIES_LAG_MAX` entries of the commit index. Empty on a
    /// non-leader, which cannot know.
    pub fn replicas_in_sync(&self, lag_ms: u64) -> Vec<NodeId> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        let since = self.now_ms.saturating_sub(lag_ms);
        let mut in_sync = vec![self.id()];
        for (node, progress) in &self.progress {
            // §8.3: a follower that lacks the log its host serves is not a
            // whole copy until its backfill ends.
            if progress.last_ack_ms >= since
                && progress.match_index + IN_SYNC_ENTRIES_LAG_MAX >= self.commit
                && !progress.lacks_log
            {
                in_sync.push(*node);
            }
        }
        in_sync.sort_unstable();
        in_sync
    }

    // ----- Inputs -----

    /// Time has advanced to `now_ms` on this node's clock (§4.1, §4.4).
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.rejoin_terms.is_some() && self.now_ms >= self.heartbeat_due_ms {
            // §10.3: followers do not talk to each other, so a rejoining
            // replica asks every voter it has not heard from for its term.
            self.heartbeat_due_ms = self.now_ms + self.options.heartbeat_interval_ms;
            let id = self.id();
            let unheard: Vec<NodeId> = self
                .config
                .voters
                .iter()
                .copied()
                .filter(|voter| {
                    *voter != id
                        && !self
                            .rejoin_terms
                            .as_ref()
                            .is_some_and(|terms| terms.contains_key(voter))
                })
                .collect();
            for voter in unheard {
                self.send(voter, Body::TermQuery);
            }
        }
        if self.leader.is_none() {
            // §8.3: a replica lacking its host's log asks the voters.
            self.maybe_request_backfill();
        }
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.now_ms >= self.election_deadline_ms {
            self.reset_election_deadline();
            if self.can_campaign() {
                self.campaign(false);
            } else if self.config.contains(self.id()) && !self.removed() {
                // §7.4: a member that cannot campaign (a learner, or a voter
                // repairing its log) and was left behind by a change that
                // removed it would wait forever: when no leader has been
                // heard for an election timeout, it asks the voters.
                for voter in self.other_voters() {
                    self.send(voter, Body::TermQuery);
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        if let Some((target, deadline_ms)) = self.transfer {
            if self.now_ms >= deadline_ms {
                // §9: a transfer that did not finish in time is abandoned,
                // and its target is not a candidate for a while.
                self.transfer = None;
                let now_ms = self.now_ms;
                if let Some(progress) = self.progress.get_mut(&target) {
                    progress.transfer_lapsed_ms = Some(now_ms);
                }
            }
        }
        if self.transfer.is_none() && self.lacks_log_a_peer_may_hold() {
            // §8.3: a leader that lost part of the log its host serves
            // (damage found by a read) hands off to a voter that holds it,
            // trying each in turn until one takes over.
            self.hand_off_leadership();
        }
        if self.now_ms >= self.check_quorum_due_ms {
            self.check_quorum_due_ms = self.now_ms + self.options.election_timeout_ms;
            if !self.quorum_recently_active() {
                // §4.4: a leader that cannot reach a majority steps down, so
                // that clients go elsewhere and stale leases expire.
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
        }
        if self.now_ms >= self.heartbeat_due_ms {
            self.heartbeat_due_ms = self.now_ms + self.options.heartbeat_interval_ms;
            self.heartbeat();
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let since = self.now_ms.saturating_sub(self.options.election_timeout_ms);
        let mut active: Vec<NodeId> = vec![self.id()];
        for (node, progress) in &self.progress {
            if progress.last_ack_ms >= since {
                active.push(*node);
            }
        }
        self.config.is_quorum(active.iter())
    }

    /// §10.3: a replica repairing lost state takes no part in elections.
    pub fn is_repairing(&self) -> bool {
        self.repair_index != 0
    }

    /// The index a repairing replica's durable log must reach before it
    /// votes again (0 when healthy; `REPAIR_INDEX_UNKNOWN` until a leader
    /// tells it).
    pub fn repair_index(&self) -> Index {
        self.repair_index
    }

    /// §10.3: a replica that lost its vote record learns from the first
    /// leader it hears how far it must catch up, and records that it voted
    /// for that leader in its term, so that it cannot vote twice in it.
    ///
    /// The target is the leader's last index, not its commit: an
    /// acknowledgment this replica sent before it lost its state may still
    /// be on its way and commit entries above the leader's commit point.
    /// The leader's log holds every entry this replica acknowledged to it.
    ///
    /// The replica also may not vote until it has heard the current term of
    /// every other voter (`rejoin_terms`): a vote it cast and lost went to
    /// a candidate whose own term is at least that of the vote, so the
    /// highest term every voter reports bounds every term it may have voted
    /// in. It then adopts that term with a vote for itself, which blocks a
    /// second vote in it.
    fn learn_repair_target(&mut self, leader: NodeId, leader_last_index: Index) {
        if self.repair_index != REPAIR_INDEX_UNKNOWN {
            return;
        }
        if self.voted_for.is_none() {
            self.voted_for = Some(leader);
            self.hard_state_dirty = true;
        }
        // The repair index stays `REPAIR_INDEX_UNKNOWN` on disk until the
        // repair ends: a crash in between makes the replica learn both the
        // target and the term floor again, which is safe.
        if self.rejoin_target.is_none() {
            self.rejoin_target = Some(leader_last_index.max(1));
            self.rejoin_terms = Some(BTreeMap::new());
        }
        self.maybe_finish_repair();
    }

    /// §10.3: records the term a voter reported while this replica rejoins
    /// after losing its vote record; see `learn_repair_target`.
    fn note_rejoin_term(&mut self, from: NodeId, term: Term) {
        let Some(terms) = self.rejoin_terms.as_mut() else {
            return;
        };
        let entry = terms.entry(from).or_insert(term);
        *entry = (*entry).max(term);
        let id = self.options.id;
        // A replica that does not know its membership yet cannot tell whom
        // it must hear from.
        let heard_all = !self.config.voters.is_empty()
            && self
                .config
                .voters
                .iter()
                .all(|voter| *voter == id || terms.contains_key(voter));
        if !heard_all {
            return;
        }
        let floor = terms.values().copied().max().unwrap_or(0);
        self.rejoin_terms = None;
        self.rejoin_floor_known = true;
        if floor > self.term {
            self.term = floor;
            self.voted_for = Some(id);
        } else if floor == self.term && self.voted_for.is_none() {
            self.voted_for = Some(id);
        }
        self.hard_state_dirty = true;
        self.maybe_finish_repair();
    }

    /// §10.3: a repair ends once the durable log reaches the target and, for
    /// a replica that lost its vote record, once it knows the term floor.
    fn maybe_finish_repair(&mut self) {
        let target = if self.repair_index == REPAIR_INDEX_UNKNOWN {
            match self.rejoin_target {
                Some(target) if self.rejoin_floor_known => target,
                _ => return,
            }
        } else {
            self.repair_index
        };
        if self.repair_index == 0 || self.persisted < target {
            return;
        }
        self.repair_index = 0;
        self.rejoin_target = None;
        self.rejoin_floor_known = false;
        self.hard_state_dirty = true;
    }

    fn can_campaign(&self) -> bool {
        // §7.2: only voters campaign; a replica that does not know its
        // membership yet (a new, empty replica) waits to be contacted.
        if self.snapshot_to_persist.is_some() || self.is_repairing() || self.removed() {
            return false;
        }
        // §8.3: a leader serves its machine's data from its log; one that
        // lacks part of it waits for a voter that holds it, unless there is
        // none but itself. It must not lead even when no leader comes: its
        // snapshots would replace the logs of followers that hold what it
        // lacks, and the data would be lost everywhere (sim seed 670320).
        if self.lacks_log_a_peer_may_hold() {
            return false;
        }
        let id = self.id();
        if self.config.voters.contains(&id) {
            return true;
        }
        // §7.3: a voter removed by a change not known to be committed may be
        // the only one holding it (a two-voter group removing its leader):
        // it still campaigns, counting only the new voters, so that it can
        // commit the change and then step down.
        self.config_index > self.commit
            && self
                .log
                .config_at(self.config_index - 1)
                .voters
                .contains(&id)
    }

    /// Handles one message from a peer of the same group.
    pub fn step(&mut self, message: Message) {
        assert_eq!(
            message.to,
            self.id(),
            "message delivered to the wrong replica"
        );
        if message.from == self.id() {
            return;
        }
        // §7.4: a campaign (or a term query) from a node our committed
        // membership does not list comes from a replica left behind when a
        // change removed it. A replica that knows no membership yet (one
        // joining empty) can tell nothing, and does not vote: it may be a
        // replica deleted and created again, whose lost log showed that a
        // later membership removed it, and a stale candidate of the old
        // membership would win with its vote (sim seed 670052). Having heard
        // from a leader does not change that. A learner is promoted only
        // once it acknowledged (durably) the membership that lists it
        // (§7.2), so a promoted voter always knows a membership.
        let knows_membership = !self.config.voters.is_empty();
        let sender_removed = knows_membership
            && !self.config.contains(message.from)
            && self.config_index <= self.commit;
        match message.body {
            Body::PreVote { .. } | Body::Vote { .. } if !knows_membership => return,
            Body::PreVote { .. } | Body::Vote { .. } | Body::TermQuery if sender_removed => {
                // The campaign or query is handled as usual besides: our
                // committed config may be older than the sender's (we lag),
                // and its election may need our vote. A stale candidate
                // still gets none: its log lacks the change that removed it,
                // which our log has (§4.3).
                let config_index = self.config_index;
                self.send(message.from, Body::Removed { config_index });
            }
            Body::Removed { config_index } => {
                if config_index > self.config_index {
                    self.removed_by = Some(config_index);
                }
                return;
            }
            _ => {}
        }
        match message.body {
            // A pre-vote carries the term its sender would campaign in, one
            // above its own; a pre-vote answer carries the asker's term.
            Body::PreVote { .. } => self.note_rejoin_term(message.from, message.term - 1),
            Body::PreVoteResponse { .. } => {}
            // §10.3: a term query changes nothing here, whatever its term:
            // the asker's own term is not to be trusted.
            Body::TermQuery => {
                self.send(message.from, Body::TermReport);
                return;
            }
            Body::TermReport => {
                self.note_rejoin_term(message.from, message.term);
                return;
            }
            _ => self.note_rejoin_term(message.from, message.term),
        }
        if message.term > self.term {
            match &message.body {
                Body::PreVote { .. } => {}
                // A granted pre-vote carries the term we would campaign in.
                Body::PreVoteResponse { granted: true } => {}
                Body::Vote { transfer, .. } if !transfer && self.in_leader_lease() => {
                    // §4.4: while we hear from a leader, a vote request does
                    // not disturb us (leader stickiness).
                    return;
                }
                Body::Append { .. } | Body::InstallSnapshot { .. } | Body::TimeoutNow => {
                    self.become_follower(message.term, Some(message.from));
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.term {
            self.step_stale(message);
            return;
        }
        match message.body.clone() {
            Body::PreVote {
                last_index,
                last_term,
            } => self.handle_pre_vote(&message, last_index, last_term),
            Body::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate && message.term == self.term + 1 {
                    self.record_vote(message.from, granted);
                }
            }
            Body::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote(&message, last_index, last_term),
            Body::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.record_vote(message.from, granted);
                }
            }
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                leader_last_index,
                read_round,
            } => {
                self.accept_leader(message.from);
                self.learn_repair_target(message.from, leader_last_index);
                let append = AppendFrom {
                    leader: message.from,
                    prev_index,
                    prev_term,
                    leader_commit: commit,
                    read_round,
                };
                self.handle_append(append, entries);
                self.maybe_request_backfill();
            }
            Body::AppendResponse {
                success,
                match_index,
                reject_hint,
                read_round,
                lacks_log,
            } => {
                // The term rules above let through only answers in our
                // term, to Appends of ours in it (§6.3).
                if let Some(progress) = self.progress.get_mut(&message.from) {
                    progress.lacks_log = lacks_log;
                }
                self.note_read_round(message.from, read_round);
                self.handle_append_response(message.from, success, match_index, reject_hint);
            }
            Body::InstallSnapshot { snapshot } => {
                self.accept_leader(message.from);
                self.handle_install_snapshot(message.from, snapshot);
            }
            Body::BackfillRequest { below } => self.handle_backfill_request(message.from, below),
            Body::Backfill { below, entries } => {
                self.handle_backfill(message.from, below, entries);
            }
            Body::TermQuery | Body::TermReport | Body::Removed { .. } => {
                unreachable!("answered before the term rules")
            }
            Body::TimeoutNow => {
                // §9: the leader asks us to take over; skip pre-vote. §10.3:
                // not while repairing: the leader's match for us may predate
                // our loss, and our log may lack entries it counted us for.
                if self.config.voters.contains(&self.id()) && !self.is_repairing() {
                    if self.lacks_log_a_peer_may_hold() {
                        // §8.3: it could not serve what its machine names.
                        return;
                    }
                    self.campaign(true);
                }
            }
        }
    }

    /// An AppendResponse from this replica, saying whether it lacks the log
    /// its host serves (§8.3).
    fn append_response(
        &self,
        success: bool,
        match_index: Index,
        reject_hint: Index,
        read_round: u64,
    ) -> Body {
        Body::AppendResponse {
            success,
            match_index,
            reject_hint,
            read_round,
            lacks_log: !self.holds_needed_log(),
        }
    }

    /// §8.3: this replica lacks part of the log its host serves and is not
    /// the only voter, so another may hold it and lead instead.
    fn lacks_log_a_peer_may_hold(&self) -> bool {
        !self.holds_needed_log() && self.config.voters.len() > 1
    }

    fn in_leader_lease(&self) -> bool {
        if self.role == Role::Leader {
            return true;
        }
        match (self.leader, self.leader_contact_ms) {
            (Some(_), Some(contact_ms)) => {
                self.now_ms < contact_ms + self.options.election_timeout_ms
            }
            _ => false,
        }
    }

    fn step_stale(&mut self, message: Message) {
        match message.body {
            // A stale leader learns our term from the rejection and steps
            // down (§4.4); without check-quorum it could otherwise linger.
            Body::Append { .. } | Body::InstallSnapshot { .. } => {
                let refusal = self.append_response(false, 0, 0, 0);
                self.send(message.from, refusal);
            }
            // §4.2: a pre-candidate with a stale term learns ours.
            Body::PreVote { .. } => {
                self.send(message.from, Body::PreVoteResponse { granted: false });
            }
            _ => {}
        }
    }

    fn log_is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        // §4.3: compare the last entries' terms, then lengths.
        last_term > self.log.last_term()
            || (last_term == self.log.last_term() && last_index >= self.log.last_index())
    }

    fn handle_pre_vote(&mut self, message: &Message, last_index: Index, last_term: Term) {
        // §4.2: grant without changing any state when we would grant a real
        // vote in that term and we do not hear from a leader.
        let granted = message.term > self.term
            && !self.is_repairing()
            && !self.in_leader_lease()
            && self.log_is_up_to_date(last_index, last_term);
        let response_term = if granted { message.term } else { self.term };
        self.messages.push(Message {
            from: self.id(),
            to: message.from,
            term: response_term,
            body: Body::PreVoteResponse { granted },
        });
    }

    fn handle_vote(&mut self, message: &Message, last_index: Index, last_term: Term) {
        debug_assert_eq!(message.term, self.term);
        // §10.3: a repairing replica may have lost entries it acknowledged,
        // or the record of a vote it cast, so its vote could elect a leader
        // missing a committed entry, or be a second vote in one term.
        let can_vote = self.voted_for.is_none_or(|voted| voted == message.from)
            && self.role != Role::Leader
            && !self.is_repairing();
        let granted = can_vote && self.log_is_up_to_date(last_index, last_term);
        if granted {
            // §3.1: the vote is durable before the grant leaves this node.
            self.voted_for = Some(message.from);
            self.hard_state_dirty = true;
            self.reset_election_deadline();
            self.persisted_messages.push(Message {
                from: self.id(),
                to: message.from,
                term: self.term,
                body: Body::VoteResponse { granted: true },
            });
        } else {
            self.send(message.from, Body::VoteResponse { granted: false });
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        self.votes.insert(from, granted);
        let granted_by: Vec<NodeId> = self
            .votes
            .iter()
            .filter(|(_, granted)| **granted)
            .map(|(node, _)| *node)
            .collect();
        let rejected_by: Vec<NodeId> = self
            .votes
            .iter()
            .filter(|(_, granted)| !**granted)
            .map(|(node, _)| *node)
            .collect();
        if self.config.is_quorum(granted_by.iter()) {
            if self.role == Role::PreCandidate {
                self.campaign(true);
            } else {
                self.become_leader();
            }
        } else if self.config.voters.len().saturating_sub(rejected_by.len()) < self.config.quorum()
        {
            // A majority refused: stop waiting and go back to following.
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// §4.1-§4.2: start an election. With `skip_pre_vote`, go straight to a
    /// real election (after a won pre-vote, or on a leadership transfer).
    fn campaign(&mut self, skip_pre_vote: bool) {
        let transfer = skip_pre_vote && self.role != Role::PreCandidate;
        self.votes.clear();
        self.leader = None;
        self.reset_election_deadline();
        let last_index = self.log.last_index();
        let last_term = self.log.last_term();
        if !skip_pre_vote {
            self.role = Role::PreCandidate;
            self.votes.insert(self.id(), true);
            for voter in self.other_voters() {
                self.messages.push(Message {
                    from: self.id(),
                    to: voter,
                    term: self.term + 1,
                    body: Body::PreVote {
                        last_index,
                        last_term,
                    },
                });
            }
            self.check_single_voter_win();
            return;
        }
        self.role = Role::Candidate;
        self.term += 1;
        self.voted_for = Some(self.id());
        self.hard_state_dirty = true;
        self.votes.insert(self.id(), true);
        for voter in self.other_voters() {
            // §3.1: our own vote is durable before we ask for others'.
            self.persisted_messages.push(Message {
                from: self.id(),
                to: voter,
                term: self.term,
                body: Body::Vote {
                    last_index,
                    last_term,
                    transfer,
                },
            });
        }
        self.check_single_voter_win();
    }

    fn check_single_voter_win(&mut self) {
        let granted: Vec<NodeId> = self.votes.keys().copied().collect();
        if self.config.is_quorum(granted.iter()) {
            if self.role == Role::PreCandidate {
                self.campaign(true);
            } else {
                self.become_leader();
            }
        }
    }

    fn other_voters(&self) -> Vec<NodeId> {
        let id = self.id();
        self.config
            .voters
            .iter()
            .copied()
            .filter(|node| *node != id)
            .collect()
    }

    fn other_members(&self) -> Vec<NodeId> {
        let id = self.id();
        self.config.members().filter(|node| *node != id).collect()
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "terms never decrease");
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.hard_state_dirty = true;
        }
        self.role = Role::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.leader_contact_ms = Some(self.now_ms);
        }
        self.votes.clear();
        self.progress.clear();
        self.transfer = None;
        self.self_vote_unsynced = false;
        // §6.3: a read this replica registered as leader cannot be
        // confirmed any more; another leader may have taken writes.
        let unconfirmed = std::mem::take(&mut self.reads_unconfirmed);
        let confirmed = std::mem::take(&mut self.reads_confirmed);
        self.reads_failed.extend(
            unconfirmed
                .iter()
                .chain(confirmed.iter())
                .map(|read| read.id),
        );
        self.read_round_due = false;
        self.reset_election_deadline();
    }

    fn accept_leader(&mut self, leader: NodeId) {
        if self.role != Role::Follower || self.leader != Some(leader) {
            let term = self.term;
            self.become_follower(term, Some(leader));
        }
        self.leader_contact_ms = Some(self.now_ms);
        self.reset_election_deadline();
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.voted_for, Some(self.id()));
        self.role = Role::Leader;
        self.leader = Some(self.id());
        // §3.1: with no other voter's grant, nothing has made our own vote
        // durable yet (grants answer requests sent only after it was).
        let id = self.id();
        self.self_vote_unsynced = !self
            .votes
            .iter()
            .any(|(node, granted)| *granted && *node != id);
        self.votes.clear();
        self.transfer = None;
        self.progress.clear();
        let next_index = self.log.last_index() + 1;
        for member in self.other_members() {
            self.progress.insert(member, self.new_progress(next_index));
        }
        self.heartbeat_due_ms = self.now_ms;
        self.check_quorum_due_ms = self.now_ms + self.options.election_timeout_ms;
        // §5.4: a new leader commits entries of earlier terms only through an
        // entry of its own, so it appends one at once.
        self.term_start_index = next_index;
        self.append_local(Payload::Noop);
        self.heartbeat();
    }

    fn new_progress(&self, next_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe { sent: false },
            inflight: Vec::new(),
            last_ack_ms: self.now_ms,
            read_round_acked: 0,
            transfer_lapsed_ms: None,
            lacks_log: false,
        }
    }

    fn reset_election_deadline(&mut self) {
        let timeout = self.options.election_timeout_ms;
        self.election_deadline_ms = self.now_ms + self.rng.range(timeout, 2 * timeout);
    }

    fn send(&mut self, to: NodeId, body: Body) {
        let message = Message {
            from: self.id(),
            to,
            term: self.term,
            body,
        };
        if self.self_vote_unsynced {
            self.persisted_messages.push(message);
        } else {
            self.messages.push(message);
        }
    }

    // ----- Replication (§5) -----

    fn append_local(&mut self, payload: Payload) -> Index {
        let index = self.log.last_index() + 1;
        let is_config = matches!(payload, Payload::Config(_));
        self.log.push(Entry {
            index,
            term: self.term,
            payload,
        });
        self.mark_unstable(index);
        if is_config {
            self.refresh_config();
        }
        index
    }

    fn mark_unstable(&mut self, index: Index) {
        self.unstable_from = Some(self.unstable_from.map_or(index, |from| from.min(index)));
    }

    /// §7.1: the membership is the latest config entry in the log.
    fn refresh_config(&mut self) {
        let (config_index, config) = self.log.latest_config();
        self.config_index = config_index;
        self.was_member |= config.contains(self.id());
        if config == self.config {
            return;
        }
        self.config = config;
        if self.role == Role::Leader {
            let next_index = self.log.last_index() + 1;
            let members = self.other_members();
            self.progress.retain(|node, _| members.contains(node));
            for member in members {
                if !self.progress.contains_key(&member) {
                    let progress = self.new_progress(next_index);
                    self.progress.insert(member, progress);
                }
            }
            if let Some((target, _)) = self.transfer {
                if !self.config.voters.contains(&target) {
                    self.transfer = None;
                }
            }
        }
    }

    fn heartbeat(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, true);
        }
    }

    /// Sends the next Append (or snapshot) to `peer` if its flow-control
    /// state allows, or an empty one when `heartbeat` is set (§5.1, §5.5).
    /// Returns true when it sent entries, so that the caller may call again
    /// to fill the window.
    fn send_append(&mut self, peer: NodeId, heartbeat: bool) -> bool {
        let now_ms = self.now_ms;
        let election_timeout_ms = self.options.election_timeout_ms;
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&peer) else {
            return false;
        };
        match progress.state {
            ProgressState::Snapshot { sent_ms, .. } | ProgressState::Loading { sent_ms, .. } => {
                if heartbeat && now_ms >= sent_ms + election_timeout_ms {
                    // The snapshot, the read or an answer was lost: probe
                    // again.
                    progress.state = ProgressState::Probe { sent: false };
                } else {
                    return false;
                }
            }
            ProgressState::Probe { sent: true } if !heartbeat => return false,
            ProgressState::Replicate
                if !heartbeat
                    && (progress.inflight.len() >= self.options.inflight_appends_max
                        || progress.next_index > last_index) =>
            {
                return false
            }
            _ => {}
        }
        let next_index = progress.next_index;
        let prev_index = next_index - 1;
        let Some(prev_term) = self.log.term_at(prev_index) else {
            self.send_snapshot(peer);
            return false;
        };
        if next_index <= self.log.snapshot().index {
            // §8.1: the entries are compacted from memory but still on disk
            // (their term is known): read them back rather than send the
            // whole snapshot.
            progress.state = ProgressState::Loading {
                from: next_index,
                sent_ms: now_ms,
            };
            progress.inflight.clear();
            self.reads.push(LogRead {
                peer,
                from: next_index,
            });
            return false;
        }
        let window_full = matches!(progress.state, ProgressState::Replicate)
            && progress.inflight.len() >= self.options.inflight_appends_max;
        let entries = if window_full {
            Vec::new()
        } else {
            self.log.slice(
                next_index,
                last_index,
                self.options.append_entries_max,
                self.options.append_bytes_max,
            )
        };
        let progress = self.progress.get_mut(&peer).expect("checked above");
        if let Some(last) = entries.last() {
            match progress.state {
                ProgressState::Replicate => {
                    progress.next_index = last.index + 1;
                    progress.inflight.push(last.index);
                }
                ProgressState::Probe { .. } => progress.state = ProgressState::Probe { sent: true },
                ProgressState::Snapshot { .. } | ProgressState::Loading { .. } => {
                    unreachable!("snapshot and loading states return early")
                }
            }
        } else if let ProgressState::Probe { .. } = progress.state {
            progress.state = ProgressState::Probe { sent: true };
        }
        // §5.1: the follower may commit only what it knows matches ours.
        let commit = self.commit;
        let sent_entries = !entries.is_empty();
        let read_round = self.read_round;
        self.send(
            peer,
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                leader_last_index: last_index,
                read_round,
            },
        );
        sent_entries
    }

    /// §8.1: the entries a `LogRead` asked for, or `None` when storage could
    /// not read them intact (damaged, or deleted meanwhile): the follower
    /// then gets the snapshot instead. Damaged data is never sent.
    pub fn entries_loaded(&mut self, peer: NodeId, from: Index, entries: Option<Vec<Entry>>) {
        if self.role != Role::Leader {
            return;
        }
        let loading = matches!(
            self.progress.get(&peer).map(|progress| progress.state),
            Some(ProgressState::Loading { from: asked, .. }) if asked == from
        );
        if !loading {
            return;
        }
        let prev_term = self.log.term_at(from - 1);
        let usable = entries.filter(|entries| {
            !entries.is_empty()
                && entries.iter().enumerate().all(|(offset, entry)| {
                    entry.index == from + offset as u64
                        && self.log.term_at(entry.index) == Some(entry.term)
                })
        });
        let (Some(mut entries), Some(prev_term)) = (usable, prev_term) else {
            self.send_snapshot(peer);
            return;
        };
        let mut bytes = 0;
        let mut keep = 0;
        for entry in &entries {
            bytes += entry.size_bytes();
            if keep > 0
                && (keep >= self.options.append_entries_max
                    || bytes > self.options.append_bytes_max)
            {
                break;
            }
            keep += 1;
        }
        entries.truncate(keep);
        let progress = self
            .progress
            .get_mut(&peer)
            .expect("loading peer has progress");
        progress.state = ProgressState::Probe { sent: true };
        progress.next_index = from;
        let commit = self.commit;
        let leader_last_index = self.log.last_index();
        self.send(
            peer,
            Body::Append {
                prev_index: from - 1,
                prev_term,
                entries,
                commit,
                leader_last_index,
                read_round: self.read_round,
            },
        );
    }

    /// Storage deleted every entry below `index` (retention, §8.1).
    pub fn discard_retained_below(&mut self, index: Index) {
        self.log.discard_retained_below(index);
        // The host wants nothing below what it keeps: backfilling more would
        // only be discarded again.
        if !matches!(self.backfill, Backfill::Storing { .. }) {
            self.backfill = Backfill::Off;
        }
    }

    // ----- Backfill below the snapshot (§8.2) -----

    /// As a follower hearing from its leader: asks for the entries just
    /// below what it retains, when it wants them and has no request
    /// outstanding (one unanswered for an election timeout is asked again).
    /// §8.3: a replica that lacks what its host needs and knows no leader
    /// asks the voters in turn: it cannot lead until it holds that log, and
    /// the voters that hold it may be too far behind to win an election
    /// (sim seed 720094). Any replica's entries at or below its commit
    /// index are the committed ones, so any voter may answer.
    fn maybe_request_backfill(&mut self) {
        if self.role != Role::Follower || self.log.snapshot().index == 0 {
            return;
        }
        let below = self.log.retained_first();
        let lacking = !self.holds_needed_log();
        let peer = match self.leader {
            Some(leader) => leader,
            None if lacking => {
                let voters = self.other_voters();
                if voters.is_empty() {
                    return;
                }
                voters[(self.backfill_peer_turns % voters.len() as u64) as usize]
            }
            None => return,
        };
        if self.log_needed_from.is_some() && !lacking {
            // §8.3: it holds all its host serves; more would be discarded.
            if !matches!(self.backfill, Backfill::Storing { .. }) {
                self.backfill = Backfill::Off;
            }
            return;
        }
        let due = match self.backfill {
            Backfill::Wanted => true,
            Backfill::Asked { sent_ms, .. } => {
                self.now_ms >= sent_ms + self.options.election_timeout_ms
            }
            Backfill::Refused { at_ms } => {
                lacking && self.now_ms >= at_ms + self.options.election_timeout_ms
            }
            Backfill::Off => lacking,
            Backfill::Storing { .. } => false,
        };
        if !due {
            return;
        }
        if below <= 1 {
            self.backfill = Backfill::Off;
            return;
        }
        if self.leader.is_none() {
            self.backfill_peer_turns += 1;
        }
        self.backfill = Backfill::Asked {
            below,
            sent_ms: self.now_ms,
            peer,
        };
        self.send(peer, Body::BackfillRequest { below });
    }

    /// Whether this replica answers `peer`'s backfill requests: as the
    /// leader, those of its followers; as any other replica, those of the
    /// voters of its membership (§8.3: a voter lacking its host's log and
    /// knowing no leader asks the voters). Only entries at or below this
    /// replica's commit index are sent, which are the committed ones.
    fn serves_backfill_of(&self, peer: NodeId) -> bool {
        if self.role == Role::Leader {
            self.progress.contains_key(&peer)
        } else {
            peer != self.id() && self.config.voters.contains(&peer)
        }
    }

    /// As the leader (or, §8.3, any replica asked by a voter that knows no
    /// leader): reads the retained entries a follower asked for, or says
    /// at once that there are none.
    fn handle_backfill_request(&mut self, peer: NodeId, below: Index) {
        if !self.serves_backfill_of(peer) {
            return;
        }
        let snapshot_index = self.log.snapshot().index;
        if below > snapshot_index + 1
            && below - 1 <= self.commit
            && below - 1 <= self.log.last_index()
        {
            // §8.3: the follower's snapshot is ahead of this leader's, so
            // the entries it asks for are in memory here: the chunk ending
            // at `below - 1`, within the bounds of one Append, goes at once.
            let mut entries = Vec::new();
            let mut bytes = 0;
            let mut index = below - 1;
            while index > snapshot_index && entries.len() < self.options.append_entries_max {
                let entry = self.log.entry(index).expect("within the log");
                bytes += entry.size_bytes();
                if !entries.is_empty() && bytes > self.options.append_bytes_max {
                    break;
                }
                entries.push(entry.clone());
                index -= 1;
            }
            entries.reverse();
            self.send(peer, Body::Backfill { below, entries });
            return;
        }
        // The leader retains `below - 1` (which implies it has a snapshot:
        // with none, nothing is retained and `retained_first` is 1).
        let retained = below > self.log.retained_first() && below <= snapshot_index + 1;
        if retained {
            self.backfill_reads.push(BackfillRead { peer, below });
        } else {
            self.send(
                peer,
                Body::Backfill {
                    below,
                    entries: Vec::new(),
                },
            );
        }
    }

    /// §8.2: the entries a `BackfillRead` asked for, or `None` when storage
    /// could not read them intact (the follower asks again later). Entries
    /// are sent only if they are what this log holds at those indexes.
    pub fn backfill_loaded(&mut self, peer: NodeId, below: Index, entries: Option<Vec<Entry>>) {
        if !self.serves_backfill_of(peer) {
            return;
        }
        let Some(entries) = entries else {
            return;
        };
        let usable = !entries.is_empty()
            && entries.last().map(|entry| entry.index + 1) == Some(below)
            && entries.iter().enumerate().all(|(offset, entry)| {
                entry.index == entries[0].index + offset as u64
                    && self.log.term_at(entry.index) == Some(entry.term)
            });
        if usable {
            self.send(peer, Body::Backfill { below, entries });
        }
    }

    /// As a follower: takes a chunk from the peer it asked, checked to fit just
    /// below what it retains, and hands it to the host to store.
    fn handle_backfill(&mut self, from: NodeId, below: Index, entries: Vec<Entry>) {
        let asked = matches!(
            self.backfill,
            Backfill::Asked { below: asked, peer, .. } if asked == below && peer == from
        );
        if !asked || below != self.log.retained_first() {
            return;
        }
        if entries.is_empty() || !self.log.fits_below_retained(&entries) {
            // The leader retains nothing more, or sent what cannot be ours
            // (a programmer error there; nothing is stored here).
            self.backfill = Backfill::Refused { at_ms: self.now_ms };
            return;
        }
        self.backfill_out = entries.clone();
        self.backfill = Backfill::Storing { entries };
    }

    /// §8.2: the host stored the chunk of the last `Ready::backfill` below
    /// the retained run (reads planned afterwards see it), or could not
    /// (`stored` false: nothing more is asked until the next snapshot, or
    /// an election timeout later by a replica that lacks what its host
    /// needs).
    pub fn backfill_stored(&mut self, stored: bool) {
        let Backfill::Storing { entries } = std::mem::replace(&mut self.backfill, Backfill::Off)
        else {
            panic!("backfill_stored without a chunk to store");
        };
        if !stored {
            self.backfill = Backfill::Refused { at_ms: self.now_ms };
            return;
        }
        self.log.prepend_retained(&entries);
        self.backfill = Backfill::Wanted;
        self.maybe_request_backfill();
    }

    /// §8.3: the host's state machine names entries from `index` on (or
    /// none, `None`) and serves them from the log: until this replica's
    /// log holds them all, it backfills them from its leader and does not
    /// campaign (unless it is the only voter). The host says so again
    /// whenever its machine changes.
    pub fn set_log_needed_from(&mut self, index: Option<Index>) {
        self.log_needed_from = index;
    }

    /// §8.3: whether this replica's log (what it retains below its snapshot
    /// and what follows) holds every entry its host's machine names. A
    /// named index of 0 (a batch from an old snapshot that did not record
    /// its entry) needs the whole log.
    pub fn holds_needed_log(&self) -> bool {
        match self.log_needed_from {
            None => true,
            Some(index) => {
                index > self.log.snapshot().index || self.log.retained_first() <= index.max(1)
            }
        }
    }

    /// §8.2, §8.3, for diagnostics: what this replica needs below its
    /// snapshot, what it retains and where its backfill stands.
    pub fn backfill_status(&self) -> String {
        format!(
            "needs from {:?}, retains from {}, snapshot {}, backfill {:?}",
            self.log_needed_from,
            self.log.retained_first(),
            self.log.snapshot().index,
            self.backfill
        )
    }

    /// At start: storage still holds the entries from the first run's index
    /// up to the snapshot point, with these term runs (§8.1).
    pub fn set_retained(&mut self, runs: Vec<(Index, Term)>) {
        self.log.set_retained(runs);
    }

    fn send_snapshot(&mut self, peer: NodeId) {
        let Some(snapshot) = self.latest_snapshot.clone() else {
            panic!("entries below the log start but no snapshot to send");
        };
        let index = snapshot.meta.index;
        let progress = self.progress.get_mut(&peer).expect("peer has progress");
        progress.state = ProgressState::Snapshot {
            index,
            sent_ms: self.now_ms,
        };
        progress.inflight.clear();
        self.send(peer, Body::InstallSnapshot { snapshot });
    }

    fn handle_append(&mut self, append: AppendFrom, entries: Vec<Entry>) {
        let AppendFrom {
            leader,
            prev_index,
            prev_term,
            leader_commit,
            read_round,
        } = append;
        if prev_index < self.commit {
            // Everything up to our commit point matches the leader (§5.4).
            // Skip what we already have and answer from the commit point.
            let skip = (self.commit - prev_index) as usize;
            if skip >= entries.len() {
                self.acknowledge(leader, self.commit, read_round);
                return;
            }
            let commit = self.commit;
            let commit_term = self
                .log
                .term_at(commit)
                .expect("commit point is in the log");
            let rest = entries[skip..].to_vec();
            let append = AppendFrom {
                prev_index: commit,
                prev_term: commit_term,
                ..append
            };
            return self.handle_append(append, rest);
        }
        if self.log.term_at(prev_index) != Some(prev_term) {
            // §5.3: reject, suggesting where to probe next.
            let hint = if prev_index > self.log.last_index() {
                self.log.last_index() + 1
            } else {
                self.log
                    .first_index_of_term_run(prev_index, self.commit + 1)
            };
            let refusal = self.append_response(false, prev_index, hint, read_round);
            self.send(leader, refusal);
            return;
        }
        let last_new_index = prev_index + entries.len() as u64;
        let mut config_changed = false;
        for entry in entries {
            match self.log.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    // §5.3: a conflicting suffix is never committed.
                    assert!(
                        entry.index > self.commit,
                        "conflict at committed index {} (commit {})",
                        entry.index,
                        self.commit
                    );
                    self.log.truncate_from(entry.index);
                    self.persisted = self.persisted.min(entry.index - 1);
                    config_changed = true;
                }
                None => {}
            }
            if matches!(entry.payload, Payload::Config(_)) {
                config_changed = true;
            }
            self.mark_unstable(entry.index);
            self.log.push(entry);
        }
        if config_changed {
            self.refresh_config();
        }
        let new_commit = leader_commit.min(last_new_index);
        if new_commit > self.commit {
            self.commit = new_commit;
        }
        // §3.1: acknowledged only once durable.
        self.acknowledge(leader, last_new_index, read_round);
    }

    /// §3.1: a successful answer to the leader, claiming the log matches
    /// up to `match_index`; it leaves only once everything this replica was
    /// asked to persist so far is durable. `read_round` echoes the Append
    /// it answers (§6.3).
    fn acknowledge(&mut self, leader: NodeId, match_index: Index, read_round: u64) {
        self.persisted_messages.push(Message {
            from: self.id(),
            to: leader,
            term: self.term,
            body: self.append_response(true, match_index, 0, read_round),
        });
    }

    // ----- Linearizable reads (§6.3) -----

    /// §6.3: registers linearizable read `id` (the caller's). Once a quorum
    /// has confirmed that this replica still led after the read arrived,
    /// and the state machine has applied every entry committed before it,
    /// a later `Ready::reads_ready` lists `id`: the caller then reads its
    /// state machine. If leadership is lost first, `Ready::reads_failed`
    /// lists it instead.
    pub fn read_index(&mut self, id: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.reads_unconfirmed.len() + self.reads_confirmed.len() >= READS_PENDING_MAX {
            return Err(ProposeError::Backpressure);
        }
        // Until its term-start entry commits, a leader's commit index may
        // lag entries earlier leaders committed (§5.4); the term-start
        // entry follows all of them.
        let index = self.commit.max(self.term_start_index);
        if !self.read_round_due {
            // Appends already handed out carry an older round, so echoes of
            // them cannot confirm this read: they may have been answered
            // before it arrived.
            self.read_round += 1;
            self.read_round_due = true;
        }
        self.reads_unconfirmed.push_back(PendingRead {
            id,
            index,
            round: self.read_round,
        });
        self.confirm_reads();
        Ok(())
    }

    fn note_read_round(&mut self, from: NodeId, read_round: u64) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        if read_round > progress.read_round_acked {
            assert!(
                read_round <= self.read_round,
                "a follower echoed read round {read_round}, above ours ({})",
                self.read_round
            );
            progress.read_round_acked = read_round;
            self.confirm_reads();
        }
    }

    /// §6.3: reads whose round a quorum of voters (this leader counting as
    /// having echoed every round) has echoed are confirmed.
    fn confirm_reads(&mut self) {
        if self.reads_unconfirmed.is_empty() {
            return;
        }
        let Some(confirmed_round) =
            self.quorum_reached(u64::MAX, |progress| progress.read_round_acked)
        else {
            return;
        };
        while let Some(read) = self.reads_unconfirmed.front() {
            if read.round > confirmed_round {
                break;
            }
            let read = self.reads_unconfirmed.pop_front().expect("front exists");
            if let Some(last) = self.reads_confirmed.back() {
                assert!(last.index <= read.index, "read indexes never decrease");
            }
            self.reads_confirmed.push_back(read);
        }
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: Index,
        reject_hint: Index,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let now_ms = self.now_ms;
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.last_ack_ms = now_ms;
        if success {
            if match_index > progress.match_index {
                progress.match_index = match_index;
            }
            progress.next_index = progress.next_index.max(progress.match_index + 1);
            progress.inflight.retain(|last| *last > match_index);
            match progress.state {
                ProgressState::Probe { .. } => progress.state = ProgressState::Replicate,
                ProgressState::Loading { .. }
                    if progress.match_index >= self.log.snapshot().index =>
                {
                    // An answer overtook the read: the follower needs
                    // nothing below the snapshot point any more.
                    progress.state = ProgressState::Replicate;
                    progress.inflight.clear();
                }
                ProgressState::Snapshot { index, .. } if progress.match_index >= index => {
                    progress.state = ProgressState::Replicate;
                    progress.inflight.clear();
                }
                _ => {}
            }
            self.maybe_commit();
            if let Some((target, _)) = self.transfer {
                if target == from && self.match_index(from) == Some(self.log.last_index()) {
                    self.send(from, Body::TimeoutNow);
                }
            }
        } else {
            // A rejection of an Append we no longer wait for is stale (§5.5).
            let stale = match progress.state {
                ProgressState::Replicate => match_index < progress.match_index + 1,
                ProgressState::Probe { .. } => match_index + 1 != progress.next_index,
                ProgressState::Snapshot { .. } | ProgressState::Loading { .. } => true,
            };
            if match_index == 0 {
                return;
            }
            if reject_hint != 0 && reject_hint <= progress.match_index {
                // §10.3: the follower's log ends below what it acknowledged:
                // it lost entries to a disk fault (or the rejection is an old
                // one, overtaken on the way). Either way lowering the match
                // is safe: commit never moves back, and the follower's next
                // answer restores the truth.
                progress.match_index = reject_hint - 1;
                progress.next_index = reject_hint;
                progress.state = ProgressState::Probe { sent: false };
                progress.inflight.clear();
                self.send_append(from, false);
                return;
            }
            if stale {
                return;
            }
            let hint = reject_hint.min(match_index).max(progress.match_index + 1);
            progress.next_index = hint;
            progress.state = ProgressState::Probe { sent: false };
            progress.inflight.clear();
        }
        self.send_append(from, false);
    }

    /// §5.4: the highest index stored durably on a majority of voters, if
    /// its entry is of the current term, is committed.
    fn maybe_commit(&mut self) {
        assert_eq!(self.role, Role::Leader);
        let Some(candidate) = self.quorum_reached(self.persisted, |progress| progress.match_index)
        else {
            return;
        };
        if candidate > self.commit && self.log.term_at(candidate) == Some(self.term) {
            self.commit = candidate;
            self.after_commit();
        }
    }

    /// The highest value a quorum of voters has reached: this replica's is
    /// `own`, a follower's is read from its progress (0 without one).
    /// `None` when the config has no voters.
    fn quorum_reached(&self, own: u64, of_follower: impl Fn(&Progress) -> u64) -> Option<u64> {
        let id = self.id();
        let mut values: Vec<u64> = self
            .config
            .voters
            .iter()
            .map(|voter| {
                if *voter == id {
                    own
                } else {
                    self.progress.get(voter).map_or(0, &of_follower)
                }
            })
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_unstable_by(|a, b| b.cmp(a));
        Some(values[self.config.quorum() - 1])
    }

    fn after_commit(&mut self) {
        // §7.3: a leader removed from the voters steps down once the change
        // is committed; until then it still replicates it.
        if self.role == Role::Leader
            && self.commit >= self.config_index
            && !self.config.voters.contains(&self.id())
        {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn handle_install_snapshot(&mut self, leader: NodeId, snapshot: Snapshot) {
        let meta = snapshot.meta.clone();
        if meta.index <= self.commit {
            // We already have everything it holds. §3.1: like every
            // acknowledgment, this one waits until our log up to the commit
            // point is durable (it may not be yet).
            self.acknowledge(leader, self.commit, 0);
            return;
        }
        // §8: keep our suffix only when it continues the snapshot.
        let old_commit = self.commit;
        let keeps_suffix = self.log.term_at(meta.index) == Some(meta.term);
        self.log.compact_to(meta.clone());
        if !self.options.retain_log_below_snapshot {
            self.log.discard_retained_below(meta.index + 1);
        }
        if !keeps_suffix {
            self.persisted = self.persisted.min(old_commit);
            self.unstable_from = None;
        } else if let Some(from) = self.unstable_from {
            if from <= meta.index {
                self.unstable_from = if self.log.last_index() > meta.index {
                    Some(meta.index + 1)
                } else {
                    None
                };
            }
        }
        self.commit = meta.index;
        self.applied = meta.index;
        self.refresh_config();
        self.latest_snapshot = Some(snapshot.clone());
        self.snapshot_to_persist = Some(snapshot.clone());
        self.snapshot_to_apply = Some(snapshot);
        self.acknowledge(leader, meta.index, 0);
        if self.options.retain_log_below_snapshot {
            // §8.2: what the snapshot covers is committed; the leader may
            // retain it, and this replica, should it lead, can then catch
            // followers up from its log rather than with a snapshot. A chunk
            // not yet handed over was checked against the old retained run,
            // so it is dropped.
            self.backfill_out.clear();
            self.backfill = Backfill::Wanted;
        }
    }

    // ----- Proposals and commands (§6, §7, §9) -----

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::Transferring);
        }
        if self.log.last_index() - self.commit >= self.options.uncommitted_entries_max {
            return Err(ProposeError::Backpressure);
        }
        Ok(())
    }

    /// Appends application data; returns its index. The entry is committed
    /// once `committed` in a later `Ready` contains it with the same term.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        let index = self.append_local(Payload::Data(data));
        Ok((index, self.term))
    }

    /// §7: proposes a membership that differs from the current one by one
    /// node: a learner added, a learner promoted, or a member removed.
    pub fn propose_config(&mut self, config: Config) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        if !self.is_leader_ready() {
            return Err(ProposeError::InvalidConfig(
                "the leader has not committed an entry of its term yet".into(),
            ));
        }
        if self.config_index > self.commit {
            return Err(ProposeError::InvalidConfig(
                "a membership change is still pending".into(),
            ));
        }
        self.validate_config_change(&config)
            .map_err(ProposeError::InvalidConfig)?;
        let index = self.append_local(Payload::Config(config));
        Ok((index, self.term))
    }

    fn validate_config_change(&self, config: &Config) -> Result<(), String> {
        let old = &self.config;
        if config.voters.is_empty() {
            return Err("a group needs at least one voter".into());
        }
        if config
            .voters
            .intersection(&config.learners)
            .next()
            .is_some()
        {
            return Err("a node cannot be both voter and learner".into());
        }
        let added_voters: Vec<_> = config.voters.difference(&old.voters).collect();
        let removed_voters: Vec<_> = old.voters.difference(&config.voters).collect();
        if added_voters.len() + removed_voters.len() > 1 {
            return Err("change one voter at a time".into());
        }
        let members_changed = config
            .members()
            .filter(|node| !old.contains(*node))
            .chain(old.members().filter(|node| !config.contains(*node)))
            .count();
        if members_changed + added_voters.len() + removed_voters.len() == 0 {
            return Err("the membership is unchanged".into());
        }
        if members_changed > 1 {
            return Err("change one member at a time".into());
        }
        if let Some(added) = added_voters.first() {
            // §7.2: only a caught-up learner becomes a voter.
            if !old.learners.contains(added) {
                return Err(format!("node {added} must join as a learner first"));
            }
            let lag = self
                .log
                .last_index()
                .saturating_sub(self.match_index(**added).unwrap_or(0));
            if lag > self.options.promote_lag_max {
                return Err(format!("learner {added} lags by {lag} entries"));
            }
            // A short log makes any learner look caught up: it must also
            // have acknowledged entries to this leader (match indexes start
            // at 0 in every term) within an election timeout, or the new
            // voter may be a node that holds nothing.
            let since = self.now_ms.saturating_sub(self.options.election_timeout_ms);
            let acknowledged = self.progress.get(added).is_some_and(|progress| {
                progress.last_ack_ms >= since
                    && (progress.match_index > 0 || self.log.last_index() == 0)
            });
            if !acknowledged {
                return Err(format!(
                    "learner {added} has not acknowledged entries recently"
                ));
            }
            // It must also hold the entry that set the current membership,
            // which lists it: until then its own log may show it removed by
            // an earlier change (it was removed and is being added back),
            // and its host deletes such a replica (§12.4). An acknowledgment
            // from that replica, just before it went, would otherwise make
            // a voter of a node that then holds nothing.
            if self.match_index(**added).unwrap_or(0) < self.config_index {
                return Err(format!(
                    "learner {added} has not acknowledged the membership that lists it"
                ));
            }
        }
        Ok(())
    }

    /// §9: hands leadership to `target`, a voter.
    /// §8.3: as a leader that lost part of the log its host serves, starts
    /// a transfer to the voter that has acknowledged the most (it declines
    /// if it lacks the log too, and this replica stays leader then).
    /// Returns the target, if there is one.
    pub fn hand_off_leadership(&mut self) -> Option<NodeId> {
        if self.role != Role::Leader || self.transfer.is_some() {
            return None;
        }
        let mut voters: Vec<NodeId> = self
            .other_voters()
            .into_iter()
            .filter(|voter| self.may_take_over(*voter))
            .collect();
        if voters.is_empty() {
            // Every one lapsed lately (they lack the log too, or were not
            // reached): wait, rather than refuse proposals for a transfer
            // at every tick.
            return None;
        }
        // The most caught up first; each attempt tries the next, so that
        // one that declines (it lacks the log too) is not asked forever.
        voters.sort_by_key(|voter| (std::cmp::Reverse(self.match_index(*voter)), *voter));
        let target = voters[(self.hand_off_attempts % voters.len() as u64) as usize];
        self.hand_off_attempts += 1;
        self.transfer_leader(target).ok().map(|()| target)
    }

    /// §9: whether this leader would hand leadership to `peer` now: a
    /// voter whose last answer said it lacks the log its host serves
    /// (§8.3) is passed over until it holds it, and one whose last transfer
    /// lapsed (it declined, §8.3, §10.3, or was not reached) for
    /// `TRANSFER_LAPSE_HOLD_TIMEOUTS` election timeouts, so that callers
    /// choosing a successor pick another.
    pub fn may_take_over(&self, peer: NodeId) -> bool {
        let hold_ms = TRANSFER_LAPSE_HOLD_TIMEOUTS * self.options.election_timeout_ms;
        self.progress.get(&peer).is_none_or(|progress| {
            !progress.lacks_log
                && progress
                    .transfer_lapsed_ms
                    .is_none_or(|lapsed_ms| self.now_ms >= lapsed_ms + hold_ms)
        })
    }

    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.id() {
            return Ok(());
        }
        if !self.config.voters.contains(&target) {
            return Err(ProposeError::InvalidConfig(format!(
                "node {target} is not a voter"
            )));
        }
        // Asked again for the transfer under way (a caller retrying), the
        // leader keeps its deadline, so that a target that declines lets it
        // lapse (`may_take_over`) rather than being asked forever.
        let deadline_ms = match self.transfer {
            Some((current, deadline_ms)) if current == target => deadline_ms,
            _ => self.now_ms + self.options.election_timeout_ms,
        };
        self.transfer = Some((target, deadline_ms));
        if self.match_index(target) == Some(self.log.last_index()) {
            self.send(target, Body::TimeoutNow);
        } else {
            self.send_append(target, false);
        }
        Ok(())
    }

    // ----- Persistence and snapshots (§8, §10) -----

    /// Everything a `Ready` with this `persist_point` asked to persist is
    /// durable.
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        // The log may have been truncated and rewritten since this write was
        // planned; only a point that still matches counts.
        if self.log.term_at(index) == Some(term) && index > self.persisted {
            self.persisted = index;
            // §10.3: the log may again hold everything this replica may
            // have acknowledged before its disk failed it.
            self.maybe_finish_repair();
            if self.persisted >= self.term_start_index {
                // §3.1: the term-start entry is durable, and so is the vote
                // record written with or before it.
                self.self_vote_unsynced = false;
            }
            if self.role == Role::Leader {
                self.maybe_commit();
            }
        }
    }

    /// The application took a snapshot of its state at `snapshot.meta.index`
    /// (which it has applied); the log before it is compacted.
    pub fn snapshot_taken(&mut self, snapshot: Snapshot) {
        let meta = snapshot.meta.clone();
        assert!(meta.index <= self.applied, "snapshot of unapplied entries");
        assert_eq!(self.log.term_at(meta.index), Some(meta.term));
        assert!(meta.index > self.log.snapshot().index);
        self.log.compact_to(meta.clone());
        if !self.options.retain_log_below_snapshot {
            self.log.discard_retained_below(meta.index + 1);
        }
        self.latest_snapshot = Some(snapshot);
        if let Some(from) = self.unstable_from {
            assert!(from > meta.index, "compacting entries that are not durable");
        }
    }

    /// Snapshot metadata for the application's state at its applied index.
    pub fn snapshot_meta_at_applied(&self) -> SnapshotMeta {
        SnapshotMeta {
            index: self.applied,
            term: self
                .log
                .term_at(self.applied)
                .expect("applied entry in log"),
            config: self.log.config_at(self.applied),
        }
    }

    /// Collects the outputs accumulated since the last call.
    pub fn take_ready(&mut self) -> Ready {
        if self.role == Role::Leader && std::mem::take(&mut self.read_round_due) {
            // §6.3: one Append to every follower carries the new read round.
            self.heartbeat();
        }
        if self.role == Role::Leader {
            let peers: Vec<NodeId> = self.progress.keys().copied().collect();
            for peer in peers {
                // §5.5: fill the follower's window, not just one Append.
                while self.send_append(peer, false) {}
            }
            // A single-voter group commits on its own durability.
            self.maybe_commit();
        }
        let mut ready = Ready {
            messages: std::mem::take(&mut self.messages),
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            reads: std::mem::take(&mut self.reads),
            backfill_reads: std::mem::take(&mut self.backfill_reads),
            backfill: std::mem::take(&mut self.backfill_out),
            ..Ready::default()
        };
        if std::mem::take(&mut self.hard_state_dirty) {
            ready.hard_state = Some(self.hard_state());
        }
        ready.snapshot = self.snapshot_to_persist.take();
        if let Some(from) = self.unstable_from.take() {
            let from = from.max(self.log.first_index());
            if from <= self.log.last_index() {
                ready.entries =
                    self.log.entries()[(from - self.log.first_index()) as usize..].to_vec();
            }
        }
        if ready.has_writes() {
            let last = self.log.last_index();
            ready.persist_point = Some((last, self.log.last_term()));
        }
        ready.apply_snapshot = self.snapshot_to_apply.take();
        let apply_to = self.commit.min(self.persisted);
        if apply_to > self.applied {
            ready.committed = self
                .log
                .slice(self.applied + 1, apply_to, usize::MAX, usize::MAX);
            self.applied = apply_to;
        }
        while let Some(read) = self.reads_confirmed.front() {
            if read.index > self.applied {
                break;
            }
            ready.reads_ready.push(read.id);
            self.reads_confirmed.pop_front();
        }
        ready.reads_failed = std::mem::take(&mut self.reads_failed);
        ready
    }
}
