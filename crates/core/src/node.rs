//! The node: many groups, one disk, one network.
//!
//! Every event runs to completion: the node feeds it to the replicas it
//! concerns, then drains each touched replica's `Ready` — persisting through
//! the disk, sending through the network, applying committed entries — and
//! finally sends one envelope per peer. Section numbers refer to
//! docs/protocol.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use runnel_consensus::{
    Body, Config, Entry, HardState, Index, Message, Options, Payload, ProposeError, Ready, Replica,
    Snapshot, SnapshotMeta, Term, REPAIR_INDEX_UNKNOWN,
};
use runnel_io::{Disk, DiskError, DiskOp, DiskOutput, GroupId, NodeId, Rng};
pub use runnel_storage::{segment_ms_valid, SEGMENT_MS_DEFAULT, SEGMENT_MS_MAX, SEGMENT_MS_MIN};
use runnel_storage::{GroupStore, LogReadPlan, RecoveryError, StoreOptions};

use crate::api::{
    Applied, ClientError, ClientOp, ClientReply, ClientRequest, ClientResponse, Env, Envelope,
    Event, GroupView, Record, Role,
};
use crate::machine::{Machine, MachineLayout};
use crate::metadata::MetadataCommand;
use crate::offsets::OffsetsCommand;
use crate::partition::PartitionCommand;
use crate::state_machine::{decode_append, encode_append, AppendOutcome};

/// At most this many records in one read response.
pub const READ_RECORDS_MAX: u64 = 1_024;
/// At most this many client requests waiting for commit per group; more are
/// refused, so a leader that cannot commit does not grow without bound.
pub const PENDING_REQUESTS_MAX: usize = 16_384;
/// At most this many groups on one node.
pub const GROUPS_MAX: usize = 100_000;
/// A group takes a snapshot once the entries it applied since the last one
/// hold this many bytes, however few they are: the replica keeps every
/// entry after its snapshot in memory, and large entries (Kafka batches of
/// up to a MiB) would otherwise let `snapshot_interval_entries` of them
/// take gigabytes.
pub const SNAPSHOT_INTERVAL_BYTES: u64 = 64 << 20;
/// §8.1: at most this many reads of entries retained below a snapshot are
/// in flight on one node; a read asked for past it is answered as if the
/// entries were gone, and the follower gets the snapshot instead. Each read
/// is at most `runnel_storage::LOG_READ_BYTES_MAX` (or one frame).
pub const LOG_READS_IN_FLIGHT_MAX: usize = 16;
/// §8.2: of those, at most this many backfill reads, each of up to
/// `runnel_storage::BACKFILL_READ_BYTES_MAX`, which bounds the memory they
/// hold on a leader that many followers backfill from.
pub const BACKFILL_READS_IN_FLIGHT_MAX: usize = 4;
const _: () = assert!(BACKFILL_READS_IN_FLIGHT_MAX <= LOG_READS_IN_FLIGHT_MAX);
/// §8.3: at most this many reads of the log for clients (Kafka fetches of
/// batches on disk) are in flight on one node, beside the reads for
/// followers; one asked for past it is refused, and the client asks again.
pub const CLIENT_LOG_READS_IN_FLIGHT_MAX: usize = 32;
/// §8.1: the most bytes of log entries a group keeps on disk below its
/// snapshot for lagging followers (by default; `set_retained_log_bytes_max`),
/// so that disk use stays bounded however a partition's retention is set.
/// Storage deletes whole segments, so up to one segment more may remain.
pub const RETAINED_LOG_BYTES_MAX: u64 = 64 << 20;

/// How this node's leaders brought lagging followers back (§8.1): from the
/// entries retained on disk, or with a snapshot. Counted since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUpStats {
    /// InstallSnapshot messages sent.
    pub snapshots_sent: u64,
    /// Reads of retained entries that came back intact and were handed to
    /// the replica.
    pub log_reads_served: u64,
    /// Reads answered "gone" without touching the disk: too many in flight,
    /// or the entries were no longer retained.
    pub log_reads_refused: u64,
    /// Reads the disk failed (a latent sector error, a segment deleted
    /// meanwhile).
    pub log_reads_failed: u64,
    /// Reads that found a damaged frame, which was not served.
    pub log_reads_damaged: u64,
    /// §8.2: chunks of retained entries read intact for a follower that
    /// backfills below its snapshot (as the leader).
    pub backfill_chunks_read: u64,
    /// §8.2: chunks stored below this node's own snapshot (as a follower),
    /// and the entries in them.
    pub backfill_chunks_stored: u64,
    pub backfill_entries_stored: u64,
    /// §8.3: reads of the log on disk that came back intact for a client
    /// (a Kafka fetch of batches at or below the snapshot). They count in
    /// the `log_reads_*` above too.
    pub client_log_reads_served: u64,
}

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
    /// Which state machine each group runs.
    pub machines: MachineLayout,
}

/// Why a node could not start.
#[derive(Debug)]
pub enum StartError {
    Disk(DiskError),
    Corrupt(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Disk(error) => write!(f, "disk error during recovery: {error}"),
            StartError::Corrupt(message) => write!(f, "corrupt data: {message}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A client request waiting for its entry to commit.
#[derive(Clone, Debug)]
struct Pending {
    client: u64,
    request_id: u64,
    term: Term,
}

struct Group {
    replica: Replica,
    store: GroupStore,
    machine: Machine,
    /// Keyed by the index of the proposed entry.
    pending: BTreeMap<Index, Pending>,
    /// §6.3: linearizable reads waiting at the replica, by read id.
    reads: BTreeMap<u64, Pending>,
    /// Bytes of the entries applied since the last snapshot: the replica
    /// holds them in memory until a snapshot lets it forget them.
    applied_bytes_since_snapshot: u64,
    /// (snapshot index, applied index) when what is retained below the
    /// snapshot was last bounded (`discard_retained`): only a new snapshot
    /// or new applied entries can change what should be discarded.
    retained_checked_at: (Index, Index),
    /// §8.3: the lowest index the machine in the latest snapshot names (a
    /// partition's oldest batch then; `Index::MAX` when it names none). A
    /// restart restores that machine and replays the log after it, so
    /// nothing from here on is discarded before a later snapshot.
    snapshot_log_needed: Index,
}

/// What a group retains below its snapshot, as `Node::retained_now` found it.
#[derive(Clone, Debug)]
pub struct RetainedNow {
    pub store_first: Index,
    pub replica_first: Index,
    /// The intact entries as `(index, term, payload hash)`, like
    /// `GroupView::entries`, running up to the snapshot index (damage cuts
    /// off what is below it).
    pub entries: Vec<(Index, Term, u64)>,
}

/// A read of retained entries in flight (§8.1).
struct LogReadInFlight {
    group: GroupId,
    peer: NodeId,
    plan: LogReadPlan,
    purpose: LogReadPurpose,
}

/// What a read of retained entries is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogReadPurpose {
    /// §8.1: entries from the plan's first on, to catch a follower up.
    CatchUp,
    /// §8.2: entries ending at `below - 1`, for a follower that backfills.
    Backfill { below: Index },
    /// §8.3: entries from the plan's first on, for a client's `ReadLog`.
    Client {
        client: crate::api::ClientId,
        request_id: u64,
    },
}

/// How many of the reads of retained entries in flight are for a purpose
/// `is` accepts (each purpose has its own bound beside the shared one).
fn log_reads_for(
    reads: &BTreeMap<u64, LogReadInFlight>,
    is: impl Fn(&LogReadPurpose) -> bool,
) -> usize {
    reads.values().filter(|read| is(&read.purpose)).count()
}

/// §8.3: the lowest log index `machine` serves from the log: a partition's
/// oldest batch; `Index::MAX` when it names none (other machines serve from
/// memory).
fn log_needed_of(machine: &Machine) -> Index {
    match machine {
        Machine::Partition(log) => log.lowest_raft_index_needed().unwrap_or(Index::MAX),
        _ => Index::MAX,
    }
}

/// §8.1: whether `group` keeps its log below the snapshot for lagging
/// followers. Kafka partitions do (their batches are their log), and so does
/// the plain record log; the metadata and offsets groups do not: their
/// snapshots are small, compacted state, cheaper to send than the log.
fn retains_log(layout: MachineLayout, group: GroupId) -> bool {
    matches!(
        Machine::new(layout, group),
        Machine::Records(_) | Machine::Partition(_)
    )
}

fn store_options(config: &NodeConfig, segment_ms: u64, group: GroupId) -> StoreOptions {
    StoreOptions {
        segment_bytes_max: config.segment_bytes_max,
        segment_ms,
        retain_below_snapshot: retains_log(config.machines, group),
    }
}

/// Replica state recovered from disk, turned into a `Replica` at the first
/// event, when the node first reads its clock.
struct Dormant {
    store: GroupStore,
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
    /// §8.1: the term runs of the entries storage retains below the
    /// snapshot (`Replica::set_retained`).
    retained_terms: Vec<(Index, Term)>,
}

impl Dormant {
    /// §10.3: a bound on every term in which this replica asked for votes
    /// or led: such messages leave only once the term is durable (§3.1), so
    /// the recovered vote record (or the log's last term, if newer) holds
    /// it. None when the vote record itself may be older than the newest
    /// one (a damaged slot): the replica then rejoins like the asker.
    fn term_bound(&self) -> Option<Term> {
        if self.hard_state.repair_index == REPAIR_INDEX_UNKNOWN {
            return None;
        }
        let log_term = self
            .entries
            .last()
            .map(|entry| entry.term)
            .or(self.snapshot.as_ref().map(|snapshot| snapshot.meta.term))
            .unwrap_or(0);
        Some(self.hard_state.term.max(log_term))
    }
}

/// Messages and a persist point released when a disk operation completes.
struct AfterPersist {
    token: u64,
    group: GroupId,
    persist_point: Option<(Index, Term)>,
    messages: Vec<Message>,
}

pub struct Node {
    config: NodeConfig,
    rng: Rng,
    groups: BTreeMap<GroupId, Group>,
    dormant: BTreeMap<GroupId, Dormant>,
    /// Groups this node deleted a replica of (tombstones on disk).
    left: BTreeSet<GroupId>,
    /// Disk operations planned before the first event (torn-tail repair).
    startup_ops: Vec<DiskOp>,
    next_token: u64,
    /// The id of the next linearizable read handed to a replica (§6.3).
    next_read_id: u64,
    /// The token of the last operation submitted, and of the last completed.
    submitted_token: u64,
    completed_token: u64,
    after_persist: VecDeque<AfterPersist>,
    outbox: BTreeMap<NodeId, Vec<(GroupId, Message)>>,
    /// Set when the node hit an error it must not continue from (a failed
    /// fsync): it then ignores every event until restarted.
    failed: Option<String>,
    /// What recovery found and did, for the operator's log.
    recovery_notes: Vec<String>,
    /// Initial memberships given after start (`bootstrap_group`), beside
    /// those of `config.groups`.
    bootstrap_configs: BTreeMap<GroupId, Config>,
    /// Messages not sent because even alone they were over the envelope
    /// limit (see `flush`); zero unless a bound is missing somewhere.
    oversized_messages_dropped: u64,
    /// §8.1: reads of retained entries submitted and not yet completed, by
    /// disk token (at most `LOG_READS_IN_FLIGHT_MAX`).
    log_reads: BTreeMap<u64, LogReadInFlight>,
    /// §8.1: the bound on what each group retains below its snapshot.
    retained_log_bytes_max: u64,
    /// The age after which a group's last log segment is rolled at its next
    /// append (`set_segment_ms`), 0 for never.
    segment_ms: u64,
    catch_up: CatchUpStats,
}

impl Node {
    /// Recovers every group found on `disk` (reading synchronously) and
    /// creates the configured groups that are not there yet.
    pub fn start(config: NodeConfig, disk: &mut dyn Disk) -> Result<Node, StartError> {
        let mut dormant = BTreeMap::new();
        let mut startup_ops = Vec::new();
        let mut recovery_notes = Vec::new();
        for group in GroupStore::groups_on_disk(disk).map_err(StartError::Disk)? {
            match GroupStore::recover(
                disk,
                group,
                store_options(&config, SEGMENT_MS_DEFAULT, group),
            ) {
                Ok(None) => {}
                Ok(Some(recovered)) => {
                    let report = &recovered.report;
                    let mut hard_state = recovered.hard_state;
                    if report.hard_state_copies_valid < 2 {
                        // §10.3: one vote slot was damaged; the intact one may
                        // be older than the newest vote this replica cast.
                        hard_state.repair_index = REPAIR_INDEX_UNKNOWN;
                    } else if !report.corrupt_entries.is_empty() {
                        // §10.3: entries this replica may have acknowledged
                        // (and that may be committed) fail their checksums.
                        // They are repaired from the leader, never dropped
                        // silently: until the log reaches them again, this
                        // replica does not vote.
                        hard_state.repair_index =
                            hard_state.repair_index.max(report.highest_index_on_disk);
                    }
                    if report.retained_damage {
                        recovery_notes.push(format!(
                            "group {group}: damage below the snapshot; the log retained for lagging followers starts after it"
                        ));
                    }
                    startup_ops.extend(recovered.store.repair_ops());
                    dormant.insert(
                        group,
                        Dormant {
                            store: recovered.store,
                            hard_state,
                            snapshot: recovered.snapshot,
                            entries: recovered.entries,
                            retained_terms: recovered.retained_terms,
                        },
                    );
                }
                Err(RecoveryError::Disk(error)) => return Err(StartError::Disk(error)),
                Err(error) => {
                    // §10.3: the vote record or the snapshot is lost. The
                    // replica starts over empty, rejoins as a non-voter and
                    // catches up from the leader.
                    let prefix = format!("groups/{group:020}/");
                    let tombstone = format!("{prefix}left");
                    for file in disk.list().map_err(StartError::Disk)? {
                        if file.starts_with(&prefix) && file != tombstone {
                            startup_ops.push(DiskOp::Delete { file });
                        }
                    }
                    let hard_state = HardState {
                        repair_index: REPAIR_INDEX_UNKNOWN,
                        ..HardState::default()
                    };
                    let (store, ops) = GroupStore::create(
                        group,
                        store_options(&config, SEGMENT_MS_DEFAULT, group),
                        &hard_state,
                    );
                    startup_ops.extend(ops);
                    recovery_notes.push(format!("group {group}: {error}; rejoining empty"));
                    dormant.insert(
                        group,
                        Dormant {
                            store,
                            hard_state,
                            snapshot: None,
                            entries: Vec::new(),
                            retained_terms: Vec::new(),
                        },
                    );
                }
            }
        }
        for (group, _) in &config.groups {
            if dormant.contains_key(group) {
                continue;
            }
            let (store, ops) = GroupStore::create(
                *group,
                store_options(&config, SEGMENT_MS_DEFAULT, *group),
                &HardState::default(),
            );
            startup_ops.extend(ops);
            dormant.insert(
                *group,
                Dormant {
                    store,
                    hard_state: HardState::default(),
                    snapshot: None,
                    entries: Vec::new(),
                    retained_terms: Vec::new(),
                },
            );
        }
        assert!(dormant.len() <= GROUPS_MAX);
        let left = GroupStore::groups_left(disk)
            .map_err(StartError::Disk)?
            .into_iter()
            .collect();
        Ok(Node {
            left,
            rng: Rng::new(config.rng_seed),
            config,
            groups: BTreeMap::new(),
            dormant,
            startup_ops,
            next_token: 1,
            next_read_id: 1,
            submitted_token: 0,
            completed_token: 0,
            after_persist: VecDeque::new(),
            outbox: BTreeMap::new(),
            failed: None,
            recovery_notes,
            bootstrap_configs: BTreeMap::new(),
            oversized_messages_dropped: 0,
            log_reads: BTreeMap::new(),
            retained_log_bytes_max: RETAINED_LOG_BYTES_MAX,
            segment_ms: SEGMENT_MS_DEFAULT,
            catch_up: CatchUpStats::default(),
        })
    }

    /// §8.1: how many bytes of log each group keeps below its snapshot for
    /// lagging followers (`RETAINED_LOG_BYTES_MAX` unless set); 0 keeps
    /// none, so followers that fell behind the snapshot get the snapshot.
    pub fn set_retained_log_bytes_max(&mut self, bytes: u64) {
        self.retained_log_bytes_max = bytes;
    }

    /// How old, on this node's clock, a group's last log segment may get
    /// before its next append starts a new one (`SEGMENT_MS_DEFAULT`, Kafka's
    /// `log.roll.ms`, unless set; 0 never rolls by age). Rolling lets the
    /// segments of entries that a partition's retention dropped, and that
    /// the snapshot covers, be deleted whole (`discard_retained`), so such
    /// data leaves the disk within about `segment_ms` plus `retention.ms`
    /// even when the partition is written slowly. An empty segment is never
    /// rolled. It applies to every group, hosted or recovered, from their
    /// next append. Panics (programmer error) unless
    /// `segment_ms_valid(segment_ms)`: operator input is checked before.
    pub fn set_segment_ms(&mut self, segment_ms: u64) {
        assert!(
            segment_ms_valid(segment_ms),
            "segment_ms {segment_ms} is neither 0 nor within {SEGMENT_MS_MIN}..={SEGMENT_MS_MAX}"
        );
        self.segment_ms = segment_ms;
        for group in self.groups.values_mut() {
            group.store.set_segment_ms(segment_ms);
        }
        for dormant in self.dormant.values_mut() {
            dormant.store.set_segment_ms(segment_ms);
        }
    }

    /// How this node's leaders caught lagging followers up, since start.
    pub fn catch_up_stats(&self) -> CatchUpStats {
        self.catch_up
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// What recovery found and repaired at start, one line per finding.
    pub fn recovery_notes(&self) -> &[String] {
        &self.recovery_notes
    }

    /// Why the node stopped handling events, if it did.
    /// Messages never sent for being over the envelope limit even alone.
    /// The simulator checks that it stays zero.
    pub fn oversized_messages_dropped(&self) -> u64 {
        self.oversized_messages_dropped
    }

    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn group_ids(&self) -> Vec<GroupId> {
        self.groups.keys().copied().collect()
    }

    /// Groups recovered from disk that still wait for their membership
    /// (they never took a snapshot, and their log holds no membership
    /// change): `bootstrap_group` starts them.
    pub fn waiting_group_ids(&self) -> Vec<GroupId> {
        self.dormant.keys().copied().collect()
    }

    /// §8.1, §8.2: what `group` retains below its snapshot, read from
    /// `disk` at once (`GroupStore::read_retained_now`), with the first
    /// index the store and the replica each say is retained (they must
    /// agree). For checkers inspecting a node; not for serving.
    pub fn retained_now(&self, group: GroupId, disk: &mut dyn Disk) -> Option<RetainedNow> {
        let state = self.groups.get(&group)?;
        Some(RetainedNow {
            store_first: state.store.retained_first(),
            replica_first: state.replica.log().retained_first(),
            entries: state
                .store
                .read_retained_now(disk)
                .into_iter()
                .map(|entry| (entry.index, entry.term, entry_hash(&entry.payload)))
                .collect(),
        })
    }

    /// A view of one replica including its in-memory log entries with their
    /// hashes; `summary` is the cheaper form without entries.
    pub fn view(&self, group: GroupId) -> Option<GroupView> {
        let mut view = self.summary(group)?;
        view.entries = self.entries_after(group, 0);
        Some(view)
    }

    /// A view of one replica without its entries.
    pub fn summary(&self, group: GroupId) -> Option<GroupView> {
        let group_state = self.groups.get(&group)?;
        let replica = &group_state.replica;
        let log = replica.log();
        Some(GroupView {
            group,
            term: replica.term(),
            role: match replica.role() {
                runnel_consensus::Role::Follower => Role::Follower,
                runnel_consensus::Role::PreCandidate => Role::PreCandidate,
                runnel_consensus::Role::Candidate => Role::Candidate,
                runnel_consensus::Role::Leader => Role::Leader,
            },
            leader: replica.leader(),
            commit_index: replica.commit_index(),
            applied_index: replica.applied_index(),
            persisted_index: replica.persisted_index(),
            snapshot_index: log.snapshot().index,
            snapshot_term: log.snapshot().term,
            last_index: log.last_index(),
            config: replica.config().clone(),
            config_index: replica.config_index(),
            left_group: replica.left_group(),
            entries: Vec::new(),
            records_len: match &group_state.machine {
                Machine::Records(machine) => machine.records().len() as u64,
                Machine::Partition(log) => log.high_watermark() as u64,
                Machine::Metadata(state) => state.topics().len() as u64,
                Machine::Offsets(state) => state.group_ids().count() as u64,
            },
        })
    }

    /// In-memory entries with index above `after` as (index, term, hash).
    pub fn entries_after(&self, group: GroupId, after: Index) -> Vec<(Index, Term, u64)> {
        let Some(group_state) = self.groups.get(&group) else {
            return Vec::new();
        };
        let log = group_state.replica.log();
        let from = after.max(log.snapshot().index) + 1;
        (from..=log.last_index())
            .map(|index| {
                let entry = log.entry(index).expect("index within log");
                (entry.index, entry.term, entry_hash(&entry.payload))
            })
            .collect()
    }

    /// The records applied to `group`'s state machine so far, by position.
    pub fn records(&self, group: GroupId) -> Option<&[Record]> {
        self.groups
            .get(&group)
            .and_then(|group| group.machine.records())
            .map(|machine| machine.records())
    }

    /// The state machine of `group`, if this node runs it.
    pub fn machine(&self, group: GroupId) -> Option<&Machine> {
        self.groups.get(&group).map(|group| &group.machine)
    }

    /// §8.3, for inspection (the simulator's checkers): for each part of
    /// partition `group`'s index (`PartitionLog::parts`), the bytes of its
    /// batches as this node would serve them, read from memory and,
    /// synchronously, from the retained segments on `disk`; `None` for a
    /// part whose entries this node does not all hold.
    pub fn partition_batches_now(
        &self,
        group: GroupId,
        disk: &mut dyn Disk,
    ) -> Option<Vec<Option<Vec<Vec<u8>>>>> {
        let state = self.groups.get(&group)?;
        let Machine::Partition(log) = &state.machine else {
            return None;
        };
        let retained: BTreeMap<Index, Entry> = state
            .store
            .read_retained_now(disk)
            .into_iter()
            .map(|entry| (entry.index, entry))
            .collect();
        let entry_at = |index: Index| {
            state
                .replica
                .log()
                .entry(index)
                .or_else(|| retained.get(&index))
        };
        let batches = log.parts().map(|part| match part {
            crate::partition::Part::Batch(batch) => {
                crate::partition::served_bytes(batch, entry_at(batch.raft_index))
                    .map(|bytes| vec![bytes])
            }
            crate::partition::Part::Chunk(chunk) => {
                let rebuilt = chunk.batches(entry_at);
                if rebuilt.missing.is_some() {
                    return None;
                }
                let served = rebuilt.batches.iter().map(|batch| {
                    crate::partition::served_bytes(batch, entry_at(batch.raft_index))
                        .expect("a whole chunk's entries are at hand")
                });
                Some(served.collect())
            }
        });
        Some(batches.collect())
    }

    /// §8.3: the entry at `index` of `group` if the replica holds it in
    /// memory (after its snapshot); entries at or below the snapshot are on
    /// disk, read with `ClientOp::ReadLog`.
    pub fn log_entry(&self, group: GroupId, index: Index) -> Option<&Entry> {
        self.groups.get(&group)?.replica.log().entry(index)
    }

    /// §8.3: whether the replica of `group` holds, as far as it knows, every
    /// entry its machine serves from the log (damage at rest that no read
    /// has found yet is not known).
    pub fn holds_needed_log(&self, group: GroupId) -> Option<bool> {
        Some(self.groups.get(&group)?.replica.holds_needed_log())
    }

    /// §8.2, §8.3, for diagnostics: where `group`'s backfill stands, on the
    /// replica and in its store.
    pub fn backfill_status(&self, group: GroupId) -> Option<String> {
        let state = self.groups.get(&group)?;
        Some(format!(
            "{}; store retains from {}, can prepend {}, whole-segment floor {:?}",
            state.replica.backfill_status(),
            state.store.retained_first(),
            state.store.can_prepend_retained(),
            state.store.whole_segment_floor()
        ))
    }

    /// §9: on the leader of `group`, whether it would hand leadership to
    /// `peer` now (its last transfer did not lapse lately; true elsewhere).
    pub fn may_take_over(&self, group: GroupId, peer: NodeId) -> bool {
        self.groups
            .get(&group)
            .is_none_or(|group| group.replica.may_take_over(peer))
    }

    /// §8.3: the snapshot index of `group`: its entries up to it are read
    /// from disk.
    pub fn snapshot_index(&self, group: GroupId) -> Option<Index> {
        Some(self.groups.get(&group)?.replica.log().snapshot().index)
    }

    /// Whether this node leads `group`, has committed an entry of its term
    /// and applied it, so that its state machine holds every entry any
    /// leader committed (§6.2, `Replica::can_serve_reads`).
    pub fn leader_ready(&self, group: GroupId) -> bool {
        self.groups
            .get(&group)
            .is_some_and(|group| group.replica.can_serve_reads())
    }

    /// On the leader of `group`: the replicas in sync (Kafka's ISR), see
    /// `Replica::replicas_in_sync`. Empty elsewhere.
    pub fn replicas_in_sync(&self, group: GroupId, lag_ms: u64) -> Vec<NodeId> {
        self.groups
            .get(&group)
            .map(|group| group.replica.replicas_in_sync(lag_ms))
            .unwrap_or_default()
    }

    /// §7.4: the replica of `group` asks `nodes` whether a committed change
    /// removed it (see `Replica::ask_whether_removed`).
    pub fn ask_whether_removed(&mut self, group: GroupId, nodes: &[NodeId], env: &mut Env<'_>) {
        if self.failed.is_some() {
            return;
        }
        let Some(group_state) = self.groups.get_mut(&group) else {
            return;
        };
        group_state.replica.ask_whether_removed(nodes);
        self.drain(group, env);
        self.flush(env);
    }

    /// Whether this node ever deleted a replica of `group` (a durable
    /// tombstone says so), and with it the record of the replica's votes.
    pub fn has_left(&self, group: GroupId) -> bool {
        self.left.contains(&group)
    }

    /// Whether this node has `group`, running or waiting for its membership.
    pub fn hosts(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group) || self.dormant.contains_key(&group)
    }

    /// Starts hosting `group` with initial membership `config`, unless it
    /// runs already. A group recovered from disk that waits for its
    /// membership (it never took a snapshot) starts now, from its disk.
    pub fn bootstrap_group(&mut self, group: GroupId, config: Config, env: &mut Env<'_>) {
        if self.failed.is_some() || self.groups.contains_key(&group) {
            return;
        }
        self.bootstrap_configs.insert(group, config.clone());
        let now_ms = env.clock.now_ms();
        if let Some(dormant) = self.dormant.remove(&group) {
            self.wake_group(group, dormant, now_ms);
        } else if self.groups.len() < GROUPS_MAX {
            self.create_group(group, Some(bootstrap_snapshot(config)), now_ms, env);
        }
        self.drain(group, env);
        self.flush(env);
    }

    /// Starts hosting `group` as a replica that learns its membership from
    /// the group (a node joining it), unless it runs already. With nothing
    /// on disk it starts empty, knowing no membership. A replica recovered
    /// with entries or a snapshot got them from the group, whose log began
    /// at `initial` (the group's bootstrap membership): it continues from
    /// there, as a lagging original replica would.
    pub fn join_group(&mut self, group: GroupId, initial: Config, env: &mut Env<'_>) {
        if self.failed.is_some() || self.groups.contains_key(&group) {
            return;
        }
        let now_ms = env.clock.now_ms();
        if let Some(dormant) = self.dormant.remove(&group) {
            if dormant.snapshot.is_some() || !dormant.entries.is_empty() {
                self.bootstrap_configs.insert(group, initial);
            }
            self.wake_group(group, dormant, now_ms);
        } else if self.groups.len() < GROUPS_MAX {
            self.create_group(group, None, now_ms, env);
        }
        self.drain(group, env);
        self.flush(env);
    }

    /// Stops hosting `group` and deletes its files (the cluster deleted it).
    /// Requests waiting on it are answered `UnknownGroup`.
    pub fn remove_group(&mut self, group: GroupId, env: &mut Env<'_>) {
        if self.failed.is_some() {
            return;
        }
        if self.hosts(group) {
            self.left.insert(group);
        }
        self.bootstrap_configs.remove(&group);
        let store = if let Some(group_state) = self.groups.remove(&group) {
            for (_, pending) in group_state.pending.into_iter().chain(group_state.reads) {
                reply_pending(env, group, &pending, Err(ClientError::UnknownGroup));
            }
            group_state.store
        } else if let Some(dormant) = self.dormant.remove(&group) {
            dormant.store
        } else {
            return;
        };
        for op in store.delete_ops() {
            self.submit(op, env);
        }
    }

    pub fn handle(&mut self, event: Event, env: &mut Env<'_>) {
        if self.failed.is_some() {
            return;
        }
        self.wake_dormant(env);
        let mut touched = BTreeSet::new();
        match event {
            Event::Tick => {
                let now_ms = env.clock.now_ms();
                for (group_id, group) in self.groups.iter_mut() {
                    group.replica.tick(now_ms);
                    touched.insert(*group_id);
                }
            }
            Event::Peer(envelope) => self.handle_envelope(envelope, env, &mut touched),
            Event::Disk(completion) if self.log_reads.contains_key(&completion.token) => {
                assert!(
                    completion.token > self.completed_token,
                    "disk completions out of order"
                );
                self.completed_token = completion.token;
                let read = self
                    .log_reads
                    .remove(&completion.token)
                    .expect("checked above");
                self.finish_log_read(read, completion.result, env, &mut touched);
                self.release_after_persist(&mut touched);
            }
            Event::Disk(completion) => match completion.result {
                Ok(_) => {
                    assert!(
                        completion.token > self.completed_token,
                        "disk completions out of order"
                    );
                    self.completed_token = completion.token;
                    self.release_after_persist(&mut touched);
                }
                Err(error) => {
                    // DESIGN.md "Storage": an fsync failure is never retried
                    // as if it had succeeded. Any failed write leaves the
                    // files in an unknown state, so the node stops; a
                    // restart recovers from what is durable.
                    self.failed = Some(format!(
                        "disk operation {} failed: {error}",
                        completion.token
                    ));
                    self.after_persist.clear();
                    self.outbox.clear();
                    return;
                }
            },
            Event::Client(request) => {
                touched.insert(request.group);
                self.handle_client(request, env);
            }
        }
        for group in touched {
            self.drain(group, env);
        }
        self.flush(env);
    }

    fn replica_options(&self, group: GroupId) -> Options {
        let mut options = Options::new(self.config.id);
        options.election_timeout_ms = self.config.election_timeout_ms;
        options.heartbeat_interval_ms = self.config.heartbeat_interval_ms;
        options.retain_log_below_snapshot = retains_log(self.config.machines, group);
        options
    }

    fn wake_dormant(&mut self, env: &mut Env<'_>) {
        if self.dormant.is_empty() && self.startup_ops.is_empty() {
            return;
        }
        for op in std::mem::take(&mut self.startup_ops) {
            self.submit(op, env);
        }
        let now_ms = env.clock.now_ms();
        let groups: Vec<GroupId> = self.dormant.keys().copied().collect();
        for group in groups {
            let dormant = &self.dormant[&group];
            // In the broker layout a partition group that never took a
            // snapshot learns its initial membership from the metadata
            // group (`bootstrap_group`); until then it waits, untouched.
            // One whose log holds a membership change knows its membership
            // from its own log (§7), and starts: it may be a voter its
            // group needs on a node whose metadata no longer follows (a
            // node removed from the cluster, restarted before its metadata
            // replica applied anything).
            let waits = self.config.machines == MachineLayout::Broker
                && dormant.snapshot.is_none()
                && self.bootstrap_config(group).is_none()
                && !dormant
                    .entries
                    .iter()
                    .any(|entry| matches!(entry.payload, Payload::Config(_)));
            if waits {
                continue;
            }
            let dormant = self.dormant.remove(&group).expect("listed above");
            self.wake_group(group, dormant, now_ms);
        }
    }

    fn bootstrap_config(&self, group: GroupId) -> Option<Config> {
        self.config
            .groups
            .iter()
            .find(|(id, _)| *id == group)
            .map(|(_, config)| config.clone())
            .or_else(|| self.bootstrap_configs.get(&group).cloned())
    }

    fn wake_group(&mut self, group: GroupId, dormant: Dormant, now_ms: u64) {
        let bootstrap = self.bootstrap_config(group);
        // A group never snapshotted starts from its bootstrap membership
        // (the operator's initial configuration); a snapshot carries its own.
        let snapshot = dormant
            .snapshot
            .or_else(|| bootstrap.map(bootstrap_snapshot));
        let mut replica = Replica::new(
            self.replica_options(group),
            self.rng.fork(group),
            dormant.hard_state,
            snapshot,
            dormant.entries,
            now_ms,
        );
        if !dormant.retained_terms.is_empty() {
            // §8.1: the entries recovery found below the snapshot can be
            // read back for a lagging follower.
            replica.set_retained(dormant.retained_terms);
        }
        if matches!(
            Machine::new(self.config.machines, group),
            Machine::Partition(_)
        ) {
            // §8.3: the machine is restored from the snapshot in the first
            // drain, which then says what it needs; until then the
            // replica assumes it needs the whole log, so it cannot
            // campaign on a tick before that.
            replica.set_log_needed_from(Some(0));
        }
        self.groups.insert(
            group,
            Group {
                replica,
                store: dormant.store,
                machine: Machine::new(self.config.machines, group),
                pending: BTreeMap::new(),
                reads: BTreeMap::new(),
                applied_bytes_since_snapshot: 0,
                retained_checked_at: (0, 0),
                snapshot_log_needed: 0,
            },
        );
    }

    fn handle_envelope(
        &mut self,
        envelope: Envelope,
        env: &mut Env<'_>,
        touched: &mut BTreeSet<GroupId>,
    ) {
        if envelope.to != self.config.id {
            return;
        }
        let now_ms = env.clock.now_ms();
        for (group_id, message) in envelope.messages {
            if message.to != self.config.id || message.from != envelope.from {
                continue;
            }
            if !self.groups.contains_key(&group_id) && matches!(message.body, Body::TermQuery) {
                // §10.3: a replica rejoining after losing its vote record
                // waits for a term from every voter, this one included,
                // even while this node keeps the replica dormant (a node
                // removed from the cluster does not wake it).
                if let Some(term) = self.dormant.get(&group_id).and_then(Dormant::term_bound) {
                    self.outbox.entry(message.from).or_default().push((
                        group_id,
                        Message {
                            from: self.config.id,
                            to: message.from,
                            term,
                            body: Body::TermReport,
                        },
                    ));
                }
                continue;
            }
            if !self.groups.contains_key(&group_id) {
                // §12: a leader reaching a node that does not host the group
                // yet (a learner being added) creates an empty replica, which
                // learns its membership from the leader's log or snapshot.
                // In the broker layout the metadata group says which groups
                // a node hosts, and a group waiting for its membership stays
                // untouched; the leader retries until then.
                let creates = matches!(
                    message.body,
                    Body::Append { .. } | Body::InstallSnapshot { .. }
                ) && self.config.machines == MachineLayout::Records;
                if !creates || self.groups.len() >= GROUPS_MAX {
                    continue;
                }
                self.create_group(group_id, None, now_ms, env);
            }
            let group = self.groups.get_mut(&group_id).expect("group exists");
            group.replica.tick(now_ms);
            group.replica.step(message);
            touched.insert(group_id);
        }
    }

    fn create_group(
        &mut self,
        group_id: GroupId,
        bootstrap: Option<Snapshot>,
        now_ms: u64,
        env: &mut Env<'_>,
    ) {
        let (store, ops) = GroupStore::create(
            group_id,
            store_options(&self.config, self.segment_ms, group_id),
            &HardState::default(),
        );
        for op in ops {
            self.submit(op, env);
        }
        let replica = Replica::new(
            self.replica_options(group_id),
            self.rng.fork(group_id),
            HardState::default(),
            bootstrap,
            Vec::new(),
            now_ms,
        );
        self.groups.insert(
            group_id,
            Group {
                replica,
                store,
                machine: Machine::new(self.config.machines, group_id),
                pending: BTreeMap::new(),
                reads: BTreeMap::new(),
                applied_bytes_since_snapshot: 0,
                retained_checked_at: (0, 0),
                snapshot_log_needed: 0,
            },
        );
    }

    fn handle_client(&mut self, request: ClientRequest, env: &mut Env<'_>) {
        let Some(group) = self.groups.get_mut(&request.group) else {
            return reply(env, &request, Err(ClientError::UnknownGroup));
        };
        let replica = &mut group.replica;
        let not_leader = || ClientError::NotLeader {
            leader_hint: replica.leader(),
        };
        match &request.op {
            ClientOp::Append { seq, value } => {
                if replica.role() != runnel_consensus::Role::Leader {
                    return reply(env, &request, Err(not_leader()));
                }
                let Machine::Records(machine) = &group.machine else {
                    return reply(env, &request, Err(wrong_machine()));
                };
                match machine.classify(request.client, *seq) {
                    AppendOutcome::Duplicate(position) => {
                        return reply(env, &request, Ok(ClientReply::Appended { position }));
                    }
                    AppendOutcome::Superseded => {
                        return reply(
                            env,
                            &request,
                            Err(ClientError::Rejected(
                                "sequence number already superseded".into(),
                            )),
                        );
                    }
                    // An append whose predecessor is proposed but not yet
                    // applied classifies as out of order here; it is
                    // proposed anyway and the state machine decides at apply.
                    AppendOutcome::OutOfOrder | AppendOutcome::Appended(_) => {}
                }
                if group.pending.len() >= PENDING_REQUESTS_MAX {
                    return reply(
                        env,
                        &request,
                        Err(ClientError::Rejected("too many requests in flight".into())),
                    );
                }
                let proposed = replica.propose(encode_append(request.client, *seq, value));
                track_proposal(&mut group.pending, &request, proposed, env);
            }
            ClientOp::Read {
                from_position,
                max_records,
            } => {
                if !replica.is_leader_ready() {
                    return reply(env, &request, Err(not_leader()));
                }
                let Machine::Records(machine) = &group.machine else {
                    return reply(env, &request, Err(wrong_machine()));
                };
                let records = machine.records();
                let start = (*from_position).min(records.len() as u64) as usize;
                let count = (*max_records).min(READ_RECORDS_MAX) as usize;
                let end = (start + count).min(records.len());
                let reply_records = records[start..end].to_vec();
                reply(
                    env,
                    &request,
                    Ok(ClientReply::Records {
                        from_position: start as u64,
                        records: reply_records,
                    }),
                );
            }
            ClientOp::Propose { data } => {
                if matches!(group.machine, Machine::Records(_)) {
                    return reply(env, &request, Err(wrong_machine()));
                }
                if group.pending.len() >= PENDING_REQUESTS_MAX {
                    return reply(
                        env,
                        &request,
                        Err(ClientError::Rejected("too many requests in flight".into())),
                    );
                }
                let proposed = replica.propose(data.clone());
                track_proposal(&mut group.pending, &request, proposed, env);
            }
            ClientOp::ChangeConfig { config } => {
                let proposed = replica.propose_config(config.clone());
                track_proposal(&mut group.pending, &request, proposed, env);
            }
            ClientOp::ReadIndex => {
                if group.reads.len() >= PENDING_REQUESTS_MAX {
                    return reply(
                        env,
                        &request,
                        Err(ClientError::Rejected("too many reads in flight".into())),
                    );
                }
                let read_id = self.next_read_id;
                match replica.read_index(read_id) {
                    Ok(()) => {
                        self.next_read_id += 1;
                        group.reads.insert(
                            read_id,
                            Pending {
                                client: request.client,
                                request_id: request.request_id,
                                term: replica.term(),
                            },
                        );
                    }
                    Err(error) => reply(env, &request, Err(propose_error(error))),
                }
            }
            ClientOp::ReadLog { from } => {
                let busy = log_reads_for(&self.log_reads, |purpose| {
                    matches!(purpose, LogReadPurpose::Client { .. })
                }) >= CLIENT_LOG_READS_IN_FLIGHT_MAX;
                if busy {
                    return reply(
                        env,
                        &request,
                        Err(ClientError::Rejected("too many log reads in flight".into())),
                    );
                }
                let Some(plan) = group.store.plan_read(*from) else {
                    return reply(
                        env,
                        &request,
                        Ok(ClientReply::Entries {
                            entries: Vec::new(),
                        }),
                    );
                };
                let purpose = LogReadPurpose::Client {
                    client: request.client,
                    request_id: request.request_id,
                };
                let peer = self.config.id;
                self.submit_log_read(request.group, peer, plan, purpose, env);
            }
            ClientOp::TransferLeader { to } => match replica.transfer_leader(*to) {
                Ok(()) => reply(env, &request, Ok(ClientReply::Accepted)),
                Err(error) => reply(env, &request, Err(propose_error(error))),
            },
        }
    }

    fn next_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// Submits `op` to the FIFO disk; returns its token.
    fn submit(&mut self, op: DiskOp, env: &mut Env<'_>) -> u64 {
        let token = self.next_token();
        self.submitted_token = token;
        env.disk.submit(token, op);
        token
    }

    /// §8.1, §8.2: submits a planned read of retained entries, whose
    /// completion `finish_log_read` hands to the replica as `purpose` says.
    fn submit_log_read(
        &mut self,
        group: GroupId,
        peer: NodeId,
        plan: LogReadPlan,
        purpose: LogReadPurpose,
        env: &mut Env<'_>,
    ) {
        let token = self.submit(plan.op(), env);
        self.log_reads.insert(
            token,
            LogReadInFlight {
                group,
                peer,
                plan,
                purpose,
            },
        );
    }

    /// Processes one replica's outputs (docs/protocol.md §10.1).
    fn drain(&mut self, group_id: GroupId, env: &mut Env<'_>) {
        // Applying entries may make a snapshot due, and persisting may
        // release commits; loop until the replica has nothing more to say.
        loop {
            let Some(group) = self.groups.get_mut(&group_id) else {
                return;
            };
            let ready = group.replica.take_ready();
            let had_output = !ready.is_empty();
            self.process_ready(group_id, ready, env);
            self.note_log_needed(group_id);
            self.maybe_snapshot(group_id, env);
            self.discard_retained(group_id, env);
            self.unblock_backfill(group_id, env);
            self.fail_orphaned_requests(group_id, env);
            if !had_output {
                return;
            }
        }
    }

    /// §8.3: tells the replica which entries its machine serves from the
    /// log (a partition's, from its oldest batch on), so that it backfills
    /// them and leads only once it holds them.
    fn note_log_needed(&mut self, group_id: GroupId) {
        let group = self.groups.get_mut(&group_id).expect("group exists");
        let needed = match &group.machine {
            Machine::Partition(_) => Some(log_needed_of(&group.machine)),
            _ => None,
        };
        group.replica.set_log_needed_from(needed);
    }

    fn process_ready(&mut self, group_id: GroupId, ready: Ready, env: &mut Env<'_>) {
        let group = self.groups.get_mut(&group_id).expect("group exists");
        let mut ops = Vec::new();
        if let Some(snapshot) = &ready.snapshot {
            ops.extend(group.store.save_snapshot(snapshot));
        }
        if !ready.entries.is_empty() {
            // The node's clock decides when a segment is old enough to roll
            // (`set_segment_ms`); storage never reads one.
            ops.extend(group.store.append_at(&ready.entries, env.clock.now_ms()));
        }
        if let Some(hard_state) = &ready.hard_state {
            ops.extend(group.store.save_hard_state(hard_state));
        }
        if ready.has_writes() {
            ops.extend(group.store.sync_ops());
        }
        if !ready.backfill.is_empty() {
            // §8.2: committed entries from the leader go below the snapshot,
            // as a whole segment (written after the snapshot above, if any:
            // the disk is FIFO). The store refuses a chunk it cannot take
            // (a discard cut into its oldest segment, or a chunk too large
            // for one segment, which only a faulty peer sends); the replica
            // then stops asking.
            let fits = group.store.can_prepend(&ready.backfill);
            if fits {
                ops.extend(group.store.prepend_retained(&ready.backfill));
                self.catch_up.backfill_chunks_stored += 1;
                self.catch_up.backfill_entries_stored += ready.backfill.len() as u64;
            }
            group.replica.backfill_stored(fits);
        }
        for message in ready.messages {
            if matches!(message.body, Body::InstallSnapshot { .. }) {
                self.catch_up.snapshots_sent += 1;
            }
            self.outbox
                .entry(message.to)
                .or_default()
                .push((group_id, message));
        }
        let wrote = !ops.is_empty();
        for op in ops {
            self.submit(op, env);
        }
        if wrote || self.submitted_token > self.completed_token {
            // §3.1: these wait for every write submitted so far; the disk is
            // FIFO, so the completion of the last one covers them all.
            self.after_persist.push_back(AfterPersist {
                token: self.submitted_token,
                group: group_id,
                persist_point: ready.persist_point,
                messages: ready.persisted_messages,
            });
        } else {
            assert!(ready.persist_point.is_none());
            for message in ready.persisted_messages {
                self.outbox
                    .entry(message.to)
                    .or_default()
                    .push((group_id, message));
            }
        }
        let machines = self.config.machines;
        let group = self.groups.get_mut(&group_id).expect("group exists");
        if let Some(snapshot) = ready.apply_snapshot {
            group.machine = Machine::decode(machines, group_id, &snapshot.data);
            group.snapshot_log_needed = log_needed_of(&group.machine);
            group.applied_bytes_since_snapshot = 0;
            // Requests whose entries the snapshot covers cannot be matched to
            // an outcome any more.
            let covered: Vec<Index> = group
                .pending
                .range(..=snapshot.meta.index)
                .map(|(index, _)| *index)
                .collect();
            for index in covered {
                let pending = group.pending.remove(&index).expect("listed above");
                reply_pending(env, group_id, &pending, Err(ClientError::Unknown));
            }
        }
        for entry in ready.committed {
            group.applied_bytes_since_snapshot += entry.size_bytes() as u64;
            apply_entry(group, group_id, entry, env);
        }
        // §6.3: after the committed entries above are applied.
        for read_id in ready.reads_ready {
            let pending = group
                .reads
                .remove(&read_id)
                .expect("a read this node asked");
            reply_pending(env, group_id, &pending, Ok(ClientReply::ReadReady));
        }
        let leader_hint = group.replica.leader();
        for read_id in ready.reads_failed {
            let pending = group
                .reads
                .remove(&read_id)
                .expect("a read this node asked");
            reply_pending(
                env,
                group_id,
                &pending,
                Err(ClientError::NotLeader { leader_hint }),
            );
        }
        // §8.1: entries below the snapshot point are read back from the
        // segments storage retains; the replica sends them when the read
        // completes (`finish_log_read`), or the snapshot if it cannot.
        for read in ready.reads {
            self.start_log_read(group_id, read.peer, read.from, env);
        }
        for read in ready.backfill_reads {
            self.start_backfill_read(group_id, read.peer, read.below, env);
        }
    }

    /// §8.2: submits the read of the retained entries ending at `below - 1`
    /// for a follower that backfills. With no room, or nothing retained
    /// there any more, nothing is sent: the follower asks again later, and
    /// then hears that there is nothing.
    fn start_backfill_read(
        &mut self,
        group_id: GroupId,
        peer: NodeId,
        below: Index,
        env: &mut Env<'_>,
    ) {
        let backfills = log_reads_for(&self.log_reads, |purpose| {
            matches!(purpose, LogReadPurpose::Backfill { .. })
        });
        let room = self.log_reads.len() < LOG_READS_IN_FLIGHT_MAX
            && backfills < BACKFILL_READS_IN_FLIGHT_MAX;
        let group = self.groups.get_mut(&group_id).expect("group exists");
        let Some(plan) = room
            .then(|| group.store.plan_read_ending_at(below - 1))
            .flatten()
        else {
            self.catch_up.log_reads_refused += 1;
            return;
        };
        self.submit_log_read(
            group_id,
            peer,
            plan,
            LogReadPurpose::Backfill { below },
            env,
        );
    }

    /// §8.1: submits the read of retained entries from `from` on for
    /// `peer`, or answers at once that they are gone (too many reads in
    /// flight, or storage no longer holds them): the replica then sends the
    /// snapshot.
    fn start_log_read(&mut self, group_id: GroupId, peer: NodeId, from: Index, env: &mut Env<'_>) {
        let room = self.log_reads.len() < LOG_READS_IN_FLIGHT_MAX;
        let group = self.groups.get_mut(&group_id).expect("group exists");
        let Some(plan) = room.then(|| group.store.plan_read(from)).flatten() else {
            self.catch_up.log_reads_refused += 1;
            group.replica.entries_loaded(peer, from, None);
            return;
        };
        self.submit_log_read(group_id, peer, plan, LogReadPurpose::CatchUp, env);
    }

    /// §8.1: hands the entries a read brought back to the replica, only if
    /// every frame was intact. Damage is never served: the replica gets
    /// `None` and sends the snapshot, and the group stops retaining the
    /// entries up to the damaged one (the snapshot covers them), so that no
    /// later read tries them again. A failed read (a latent sector error)
    /// is treated alike for everything it covered; a segment deleted
    /// meanwhile only means the entries are gone.
    fn finish_log_read(
        &mut self,
        read: LogReadInFlight,
        result: Result<DiskOutput, DiskError>,
        env: &mut Env<'_>,
        touched: &mut BTreeSet<GroupId>,
    ) {
        let Some(group) = self.groups.get_mut(&read.group) else {
            return;
        };
        let first = read.plan.first_index();
        let last = first + read.plan.entry_count() as u64 - 1;
        let (entries, stop_retaining_below) = match result {
            Ok(DiskOutput::Data(bytes)) => match read.plan.decode(&bytes) {
                Ok(entries) => {
                    self.catch_up.log_reads_served += 1;
                    (Some(entries), None)
                }
                Err(damage) => {
                    self.catch_up.log_reads_damaged += 1;
                    tracing::warn!(
                        group = read.group,
                        index = damage.index,
                        "a log entry retained below the snapshot is damaged; not served"
                    );
                    (None, Some(damage.index + 1))
                }
            },
            Ok(DiskOutput::Done) => {
                self.catch_up.log_reads_failed += 1;
                (None, None)
            }
            Err(DiskError::NotFound) => {
                self.catch_up.log_reads_failed += 1;
                (None, None)
            }
            Err(error) => {
                self.catch_up.log_reads_failed += 1;
                tracing::warn!(
                    group = read.group,
                    first,
                    last,
                    %error,
                    "reading log entries retained below the snapshot failed; the follower gets the snapshot"
                );
                (None, Some(last + 1))
            }
        };
        let mut ops = Vec::new();
        if let Some(below) = stop_retaining_below {
            ops = group.store.discard_below(below);
            group.replica.discard_retained_below(below);
        }
        if stop_retaining_below.is_some()
            && group.replica.role() == runnel_consensus::Role::Leader
            && !group.replica.holds_needed_log()
        {
            // §8.3: this leader no longer holds all its machine serves; it
            // hands off to a follower that does (at once, and again at each
            // tick until one takes over), and then backfills from it.
            tracing::warn!(
                group = read.group,
                "the leader lost log entries its partition serves; handing leadership off"
            );
            group.replica.hand_off_leadership();
        }
        match read.purpose {
            LogReadPurpose::CatchUp => group.replica.entries_loaded(read.peer, first, entries),
            LogReadPurpose::Client { client, request_id } => {
                if entries.is_some() {
                    self.catch_up.client_log_reads_served += 1;
                }
                env.replies.reply(ClientResponse {
                    client,
                    request_id,
                    group: read.group,
                    result: Ok(ClientReply::Entries {
                        entries: entries.unwrap_or_default(),
                    }),
                });
            }
            LogReadPurpose::Backfill { below } => {
                if entries.is_some() {
                    self.catch_up.backfill_chunks_read += 1;
                }
                group.replica.backfill_loaded(read.peer, below, entries);
            }
        }
        touched.insert(read.group);
        for op in ops {
            self.submit(op, env);
        }
    }

    /// §8.1: deletes what a group retains below its snapshot once no
    /// follower should be served from it: entries before the oldest batch a
    /// partition still holds (retention dropped theirs), and whatever is
    /// over the node's byte bound. A follower behind that point gets the
    /// snapshot instead.
    fn discard_retained(&mut self, group_id: GroupId, env: &mut Env<'_>) {
        let bytes_max = self.retained_log_bytes_max;
        let group = self.groups.get_mut(&group_id).expect("group exists");
        let snapshot_index = group.store.snapshot_index();
        let checked_at = (snapshot_index, group.replica.applied_index());
        if group.retained_checked_at == checked_at || group.store.retained_first() > snapshot_index
        {
            group.retained_checked_at = checked_at;
            return;
        }
        group.retained_checked_at = checked_at;
        // §8.3: a partition serves its batches from the log, so it keeps
        // every entry from its oldest batch on, however many bytes that
        // is (its retention bounds them), and none before. The record log
        // serves from its machine; what it retains is for lagging
        // followers only, bounded by bytes.
        let below = match &group.machine {
            Machine::Partition(_) => log_needed_of(&group.machine)
                .min(group.snapshot_log_needed)
                .min(snapshot_index + 1),
            _ => group
                .store
                .retained_floor_for_bytes(bytes_max)
                .min(snapshot_index + 1),
        };
        if below <= group.store.retained_first() {
            return;
        }
        let ops = group.store.discard_below(below);
        group.replica.discard_retained_below(below);
        for op in ops {
            self.submit(op, env);
        }
    }

    /// §8.3: a replica that lacks the log its partition serves backfills
    /// it, but nothing can be prepended below a segment that a discard or
    /// damage cut into (storage names segments by their first frame). Once
    /// the snapshot covers the next segment's start, the cut segment is
    /// deleted whole, and the backfill refills everything below.
    fn unblock_backfill(&mut self, group_id: GroupId, env: &mut Env<'_>) {
        let group = self.groups.get_mut(&group_id).expect("group exists");
        if group.replica.holds_needed_log() || group.store.can_prepend_retained() {
            return;
        }
        let Some(below) = group.store.whole_segment_floor() else {
            return;
        };
        tracing::info!(
            group = group_id,
            below,
            "deleting a segment cut below, so that the log it lacks can be backfilled"
        );
        let ops = group.store.discard_below(below);
        group.replica.discard_retained_below(below);
        for op in ops {
            self.submit(op, env);
        }
    }

    fn release_after_persist(&mut self, touched: &mut BTreeSet<GroupId>) {
        while let Some(front) = self.after_persist.front() {
            if front.token > self.completed_token {
                break;
            }
            let done = self.after_persist.pop_front().expect("front exists");
            if let Some(group) = self.groups.get_mut(&done.group) {
                if let Some((index, term)) = done.persist_point {
                    group.replica.on_persisted(index, term);
                }
                touched.insert(done.group);
            }
            for message in done.messages {
                self.outbox
                    .entry(message.to)
                    .or_default()
                    .push((done.group, message));
            }
        }
    }

    fn maybe_snapshot(&mut self, group_id: GroupId, env: &mut Env<'_>) {
        let interval = self.config.snapshot_interval_entries;
        let group = self.groups.get_mut(&group_id).expect("group exists");
        let applied = group.replica.applied_index();
        let entries_due =
            interval != 0 && applied >= group.replica.log().snapshot().index + interval;
        let bytes_due = group.applied_bytes_since_snapshot >= SNAPSHOT_INTERVAL_BYTES;
        if !entries_due && !bytes_due {
            return;
        }
        group.applied_bytes_since_snapshot = 0;
        // §8: the state machine at the applied index replaces the log prefix.
        let snapshot = Snapshot {
            meta: group.replica.snapshot_meta_at_applied(),
            data: group.machine.encode(),
        };
        group.snapshot_log_needed = log_needed_of(&group.machine);
        let ops = group.store.save_snapshot(&snapshot);
        group.replica.snapshot_taken(snapshot);
        for op in ops {
            self.submit(op, env);
        }
    }

    /// A request whose entry can no longer commit as proposed gets an
    /// "unknown" outcome: the client retries, and deduplication makes the
    /// retry safe (§6).
    fn fail_orphaned_requests(&mut self, group_id: GroupId, env: &mut Env<'_>) {
        let group = self.groups.get_mut(&group_id).expect("group exists");
        if group.pending.is_empty() || group.replica.role() == runnel_consensus::Role::Leader {
            return;
        }
        for (_, pending) in std::mem::take(&mut group.pending) {
            reply_pending(env, group_id, &pending, Err(ClientError::Unknown));
        }
    }

    /// Sends what this step produced, one envelope per peer unless the
    /// messages are too many bytes for one (many groups catching up a
    /// follower at once, a large snapshot): then as many envelopes as it
    /// takes, each within `wire::ENVELOPE_BYTES_MAX`, in order (§12).
    fn flush(&mut self, env: &mut Env<'_>) {
        for (to, messages) in std::mem::take(&mut self.outbox) {
            let (envelopes, oversized) =
                crate::wire::split_into_envelopes(self.config.id, to, messages);
            for (group, message) in oversized {
                // The bounds on appends and snapshots make this unreachable;
                // should one be missed, the message is not sent (no receiver
                // would accept it) and consensus keeps retrying, which the
                // log shows, instead of the node stopping.
                tracing::error!(
                    group,
                    to,
                    bytes = crate::wire::encoded_message_bytes(&message),
                    limit = crate::wire::ENVELOPE_BYTES_MAX,
                    "a message is over the envelope limit; not sent"
                );
                self.oversized_messages_dropped += 1;
            }
            for envelope in envelopes {
                env.network.send(to, envelope);
            }
        }
    }
}

fn apply_entry(group: &mut Group, group_id: GroupId, entry: Entry, env: &mut Env<'_>) {
    let pending = group.pending.remove(&entry.index);
    // A request for this index proposed in another term lost its entry.
    let pending = match pending {
        Some(pending) if pending.term != entry.term => {
            reply_pending(env, group_id, &pending, Err(ClientError::Unknown));
            None
        }
        other => other,
    };
    let result = match &entry.payload {
        Payload::Noop => return,
        Payload::Config(_) => Ok(ClientReply::Accepted),
        Payload::Data(data) => apply_data(&mut group.machine, &entry, data),
    };
    if let Some(pending) = pending {
        reply_pending(env, group_id, &pending, result);
    }
}

/// Applies a committed data entry to the group's machine; the result
/// answers the client that proposed it.
fn apply_data(
    machine: &mut Machine,
    entry: &Entry,
    data: &[u8],
) -> Result<ClientReply, ClientError> {
    match machine {
        Machine::Records(machine) => match decode_append(data) {
            None => Err(ClientError::Rejected("malformed append".into())),
            Some(record) => match machine.apply(record) {
                AppendOutcome::Appended(position) | AppendOutcome::Duplicate(position) => {
                    Ok(ClientReply::Appended { position })
                }
                AppendOutcome::Superseded => Err(ClientError::Rejected(
                    "sequence number already superseded".into(),
                )),
                AppendOutcome::OutOfOrder => {
                    Err(ClientError::Rejected("out of order sequence number".into()))
                }
            },
        },
        // Commands are checked before they are proposed; one that does not
        // decode is refused alike on every replica and changes nothing.
        Machine::Partition(log) => match PartitionCommand::decode(data) {
            None => Err(ClientError::Rejected("malformed partition command".into())),
            Some(command) => Ok(ClientReply::Applied(Applied::Produce(log.apply(
                command,
                entry.index,
                entry.term,
            )))),
        },
        Machine::Metadata(state) => match MetadataCommand::decode(data) {
            None => Err(ClientError::Rejected("malformed metadata command".into())),
            Some(command) => Ok(ClientReply::Applied(Applied::Metadata(state.apply(
                command,
                entry.index,
                entry.term,
            )))),
        },
        Machine::Offsets(state) => match OffsetsCommand::decode(data) {
            None => Err(ClientError::Rejected("malformed offsets command".into())),
            Some(command) => Ok(ClientReply::Applied(Applied::Offsets(state.apply(command)))),
        },
    }
}

fn wrong_machine() -> ClientError {
    ClientError::Rejected("the group's state machine does not take this request".into())
}

/// The snapshot a group starts from before it has one of its own: index 0,
/// holding only the initial membership.
fn bootstrap_snapshot(config: Config) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index: 0,
            term: 0,
            config,
        },
        data: Vec::new(),
    }
}

/// Remembers a proposed entry so that its client is answered when it
/// commits, or answers at once when the proposal was refused.
fn track_proposal(
    pending: &mut BTreeMap<Index, Pending>,
    request: &ClientRequest,
    proposed: Result<(Index, Term), ProposeError>,
    env: &mut Env<'_>,
) {
    match proposed {
        Ok((index, term)) => {
            pending.insert(
                index,
                Pending {
                    client: request.client,
                    request_id: request.request_id,
                    term,
                },
            );
        }
        Err(error) => reply(env, request, Err(propose_error(error))),
    }
}

fn reply(env: &mut Env<'_>, request: &ClientRequest, result: Result<ClientReply, ClientError>) {
    env.replies.reply(ClientResponse {
        client: request.client,
        request_id: request.request_id,
        group: request.group,
        result,
    });
}

fn reply_pending(
    env: &mut Env<'_>,
    group: GroupId,
    pending: &Pending,
    result: Result<ClientReply, ClientError>,
) {
    env.replies.reply(ClientResponse {
        client: pending.client,
        request_id: pending.request_id,
        group,
        result,
    });
}

fn propose_error(error: ProposeError) -> ClientError {
    match error {
        ProposeError::NotLeader { leader_hint } => ClientError::NotLeader { leader_hint },
        ProposeError::Transferring => {
            ClientError::Rejected("leadership transfer in progress".into())
        }
        ProposeError::Backpressure => ClientError::Rejected("too many uncommitted entries".into()),
        ProposeError::InvalidConfig(reason) => ClientError::Rejected(reason),
    }
}

/// FNV-1a over an entry's payload: a stable fingerprint for checkers.
pub fn entry_hash(payload: &Payload) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match payload {
        Payload::Noop => feed(&[0]),
        Payload::Data(data) => {
            feed(&[1]);
            feed(data);
        }
        Payload::Config(config) => {
            feed(&[2]);
            for voter in &config.voters {
                feed(&voter.to_le_bytes());
            }
            feed(&[3]);
            for learner in &config.learners {
                feed(&learner.to_le_bytes());
            }
        }
    }
    hash
}
