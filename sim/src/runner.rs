//! One simulation run per seed.
//!
//! Sources of events, merged by time: every running node's disk completions
//! (node order first), then network deliveries, then the global queue (ticks,
//! client traffic, wake-ups, faults, periodic checks), ties broken by
//! insertion order. Everything derives from the seed: the plan, and one root
//! `Rng` forked per component.
//!
//! A run has a safety phase under the plan's faults, then a liveness phase:
//! every fault is healed, crashed nodes restart, paused ones resume, and
//! every group must elect a leader and acknowledge new appends within the
//! liveness bound. Checkers run after every event on the views of the groups
//! the event touched, every simulated second on all logs, and at the end on
//! the acknowledged appends and the state machines.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use runnel_broker::{
    Broker, BrokerAddress, BrokerConfig, BrokerEnv, BrokerEvent, ConnectionId, Responses,
    TopicDefaults,
};
use runnel_checkers::{
    check_acknowledged_appends, check_log_matching, check_state_machine_agreement, CommitMonotonic,
    CommittedHistory, ElectionSafety, ReplicaLog, Violation,
};
use runnel_consensus::Config;
use runnel_core::metadata::METADATA_GROUP;
use runnel_core::{
    CatchUpStats, ClientRequest, ClientResponse, Env, Event, GroupView, Node, NodeConfig, Replies,
    Role,
};
use runnel_io::{GroupId, NodeId, Rng};

use crate::clock::SimClock;
use crate::disk::SimDisk;
use crate::kafka_workload::{log_values, KafkaAction, KafkaStats, KafkaWorkload};
use crate::network::{NetworkStats, NodeNetwork, SimNetwork};
use crate::queue::TimedQueue;
use crate::swarm::{Episodes, FaultClass, FaultCounts, FaultPlan, CLOCK_SKEW_MS_MAX};
use crate::trace::{Trace, TraceKind};
use crate::workload::{decode_value_id, value_id, Action, GroupStatus, Workload, WorkloadStats};

/// Events one run may process; past it the run fails (a livelock).
pub const EVENTS_PER_RUN_MAX: u64 = 50_000_000;
/// Events held for a paused node; more are dropped.
pub const HELD_EVENTS_MAX: usize = 20_000;
/// Appends every group must acknowledge in the liveness phase.
pub const LIVENESS_APPENDS_MIN: u64 = 5;
/// How often all logs are compared.
pub const CHECK_INTERVAL_MS: u64 = 1_000;
/// The chance, at each check, that a running faulty disk is damaged at rest
/// (`damage_running_disk`): a few times in a seed's safety phase.
pub const RUNNING_DISK_DAMAGE_CHANCE: f64 = 0.08;
/// Violations reported by one run; the run stops at the first anyway.
pub const VIOLATIONS_MAX: usize = 100;
/// A restarted node's clock origin moves by up to this much (with skew on).
pub const RESTART_ORIGIN_SHIFT_MS_MAX: u64 = 60_000;

pub const DEFAULT_SAFETY_MS: u64 = 60_000;
pub const DEFAULT_LIVENESS_MS: u64 = 30_000;

const STREAM_NETWORK: u64 = 1;
const STREAM_WORKLOAD: u64 = 2;
const STREAM_FAULTS: u64 = 3;
const STREAM_CLIENT_CHANNEL: u64 = 4;
const STREAM_TICKS: u64 = 5;
const STREAM_KAFKA: u64 = 6;
const STREAM_NODE: u64 = 100;
const STREAM_DISK: u64 = 200;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records every panic's message and location for the run report instead of
/// printing it (set `RUNNEL_SIM_PANIC_PRINT=1` to print as well).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    let print = std::env::var_os("RUNNEL_SIM_PANIC_PRINT").is_some();
    std::panic::set_hook(Box::new(move |info| {
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(info.to_string()));
        if print {
            default(info);
        }
    }));
}

pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
        return text;
    }
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

fn note(violations: &mut Vec<Violation>, result: Result<(), Violation>) {
    if let Err(violation) = result {
        if violations.len() < VIOLATIONS_MAX {
            violations.push(violation);
        }
    }
}

/// An entry as `(index, term, payload hash)`, the node that holds it, and
/// whether it was retained below the snapshot or committed in memory.
type SeenEntry = ((u64, u64, u64), NodeId, &'static str);

fn violation(invariant: &'static str, spec: &'static str, message: String) -> Violation {
    Violation {
        invariant,
        spec,
        message,
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub safety_ms: u64,
    pub liveness_ms: u64,
    pub verbose: bool,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            safety_ms: DEFAULT_SAFETY_MS,
            liveness_ms: DEFAULT_LIVENESS_MS,
            verbose: false,
        }
    }
}

/// What a run did and found.
pub struct Outcome {
    pub seed: u64,
    pub simulated_ms: u64,
    pub events: u64,
    pub acknowledged: u64,
    pub faults: FaultCounts,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub last_events: Vec<String>,
    pub workload: WorkloadStats,
    /// The broker layout's clients, when the seed runs it.
    pub kafka: Option<KafkaStats>,
    pub network: NetworkStats,
    /// How leaders caught lagging followers up (§8.1), summed over every
    /// node incarnation.
    pub catch_up: CatchUpStats,
}

/// Adds one node incarnation's catch-up counts to a total.
pub fn add_catch_up(total: &mut CatchUpStats, more: CatchUpStats) {
    total.snapshots_sent += more.snapshots_sent;
    total.log_reads_served += more.log_reads_served;
    total.log_reads_refused += more.log_reads_refused;
    total.log_reads_failed += more.log_reads_failed;
    total.log_reads_damaged += more.log_reads_damaged;
    total.backfill_chunks_read += more.backfill_chunks_read;
    total.backfill_chunks_stored += more.backfill_chunks_stored;
    total.backfill_entries_stored += more.backfill_entries_stored;
    total.client_log_reads_served += more.client_log_reads_served;
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Up,
    Paused,
    Crashed,
}

/// What the checkers already saw of one group on one node incarnation.
#[derive(Clone, Copy, Debug, Default)]
struct Track {
    /// Committed entries up to here were reported.
    reported: u64,
    snapshot_index: u64,
}

/// What runs on a simulated node: the bare core (record layout) or the
/// broker around it (broker layout).
enum Process {
    Records(Box<Node>),
    Broker(Box<Broker>),
}

impl Process {
    fn node(&self) -> &Node {
        match self {
            Process::Records(node) => node,
            Process::Broker(broker) => broker.node(),
        }
    }
}

/// One input for a node, held while it is paused.
#[derive(Debug)]
enum Input {
    Core(Event),
    KafkaRequest {
        connection: ConnectionId,
        frame: Bytes,
    },
    KafkaClosed {
        connection: ConnectionId,
    },
}

struct SimNode {
    id: NodeId,
    node: Option<Process>,
    disk: SimDisk,
    clock: SimClock,
    state: NodeState,
    incarnation: u64,
    held: VecDeque<Input>,
    rng: Rng,
    tracks: BTreeMap<GroupId, Track>,
    /// Crash as soon as the disk has an operation in progress.
    crash_armed: bool,
    /// Injected disk errors already accounted for (each stops the node once).
    errors_seen: u64,
    /// Broker layout: the groups the node ran after its last event, and how
    /// often each was deleted on this node (a replica moved away).
    hosted: BTreeSet<GroupId>,
    replica_generations: BTreeMap<GroupId, u64>,
}

impl SimNode {
    /// The node core, whichever layout runs around it.
    fn core(&self) -> Option<&Node> {
        self.node.as_ref().map(Process::node)
    }
}

#[derive(Clone, Debug, Hash)]
enum Scheduled {
    Tick {
        node: usize,
    },
    ClientArrive {
        node: usize,
        request: ClientRequest,
    },
    ClientReply {
        response: ClientResponse,
    },
    ClientWake {
        client: usize,
        token: u64,
    },
    OperatorWake {
        token: u64,
    },
    KafkaArrive {
        node: usize,
        connection: ConnectionId,
        frame: Bytes,
    },
    KafkaClientClosed {
        node: usize,
        connection: ConnectionId,
    },
    KafkaReply {
        connection: ConnectionId,
        frame: Bytes,
    },
    KafkaServerClosed {
        connection: ConnectionId,
    },
    KafkaWake {
        client: usize,
        token: u64,
    },
    FaultStart {
        class: FaultClass,
    },
    FaultEnd {
        class: FaultClass,
        nodes: Vec<usize>,
    },
    Check,
    LivenessStart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness { deadline: u64 },
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Disk(usize),
    Network,
    Queue,
}

/// What a broker answered while handling one event.
#[derive(Default)]
struct KafkaBuffer {
    frames: Vec<(ConnectionId, Option<Bytes>)>,
    closed: Vec<ConnectionId>,
}

impl Responses for KafkaBuffer {
    fn respond(&mut self, connection: ConnectionId, frame: Option<Bytes>) {
        self.frames.push((connection, frame));
    }
    fn close(&mut self, connection: ConnectionId, _reason: &str) {
        self.closed.push(connection);
    }
}

struct ReplyBuffer(Vec<ClientResponse>);

impl Replies for ReplyBuffer {
    fn reply(&mut self, response: ClientResponse) {
        self.0.push(response);
    }
}

pub struct Simulation {
    plan: FaultPlan,
    options: SimOptions,
    now: u64,
    phase: Phase,
    queue: TimedQueue<Scheduled>,
    network: SimNetwork<runnel_core::Envelope>,
    nodes: Vec<SimNode>,
    groups: Vec<GroupId>,
    workload: Workload,
    kafka: Option<KafkaWorkload>,
    /// The node the cluster adds at run time (broker layout), if any.
    spare: Option<NodeId>,
    kafka_actions: Vec<KafkaAction>,
    /// Per connection and direction, the time of the last delivery
    /// scheduled: a connection delivers in order, as TCP does.
    connection_due: BTreeMap<(ConnectionId, bool), u64>,
    fault_rng: Rng,
    client_rng: Rng,
    election: ElectionSafety,
    commits: CommitMonotonic,
    committed: CommittedHistory,
    violations: Vec<Violation>,
    trace: Trace,
    faults: FaultCounts,
    /// Catch-up counts of node incarnations that ended.
    catch_up: CatchUpStats,
    actions: Vec<Action>,
    replies: Vec<ClientResponse>,
    touched: Vec<GroupId>,
    dropped_to_crashed: u64,
    held_dropped: u64,
}

impl Simulation {
    pub fn new(options: SimOptions) -> Simulation {
        let plan = FaultPlan::from_seed(options.seed);
        Simulation::with_plan(plan, options)
    }

    pub fn with_plan(mut plan: FaultPlan, options: SimOptions) -> Simulation {
        // A plan that changes the cluster's membership has a spare node,
        // started with `join`, that the cluster adds while faults strike.
        let spare = plan
            .kafka
            .as_ref()
            .filter(|kafka| kafka.membership)
            .map(|_| plan.nodes.iter().max().copied().unwrap_or(0) + 1);
        if let Some(spare) = spare {
            plan.nodes.push(spare);
            plan.clocks.push(plan.clocks[0]);
        }
        let mut root = Rng::new(options.seed);
        let network = SimNetwork::new(root.fork(STREAM_NETWORK), plan.link);
        let workload = Workload::new(&plan, root.fork(STREAM_WORKLOAD));
        let fault_rng = root.fork(STREAM_FAULTS);
        let client_rng = root.fork(STREAM_CLIENT_CHANNEL);
        let mut tick_rng = root.fork(STREAM_TICKS);
        let kafka = plan
            .kafka
            .as_ref()
            .map(|kafka| KafkaWorkload::new(kafka, &plan.nodes, spare, root.fork(STREAM_KAFKA)));
        // The broker layout's groups appear as topics are created.
        let groups: Vec<GroupId> = if kafka.is_some() {
            vec![METADATA_GROUP]
        } else {
            plan.groups.iter().map(|g| g.id).collect()
        };
        let nodes = plan
            .nodes
            .iter()
            .enumerate()
            .map(|(index, &id)| {
                let clock = plan.clocks[index];
                SimNode {
                    id,
                    node: None,
                    disk: SimDisk::new(root.fork(STREAM_DISK + id), plan.disk_faults(index)),
                    clock: SimClock::new(clock.origin_ms, clock.drift_ppm),
                    state: NodeState::Crashed,
                    incarnation: 0,
                    held: VecDeque::new(),
                    rng: root.fork(STREAM_NODE + id),
                    tracks: BTreeMap::new(),
                    crash_armed: false,
                    errors_seen: 0,
                    hosted: BTreeSet::new(),
                    replica_generations: BTreeMap::new(),
                }
            })
            .collect();
        let mut simulation = Simulation {
            options,
            now: 0,
            phase: Phase::Safety,
            queue: TimedQueue::new(),
            network,
            nodes,
            groups,
            workload,
            kafka,
            spare,
            kafka_actions: Vec::new(),
            connection_due: BTreeMap::new(),
            fault_rng,
            client_rng,
            election: ElectionSafety::new(),
            commits: CommitMonotonic::new(),
            committed: CommittedHistory::new(),
            violations: Vec::new(),
            trace: Trace::new(),
            faults: FaultCounts::default(),
            catch_up: CatchUpStats::default(),
            actions: Vec::new(),
            replies: Vec::new(),
            touched: Vec::new(),
            dropped_to_crashed: 0,
            held_dropped: 0,
            plan,
        };
        for index in 0..simulation.nodes.len() {
            let offset = tick_rng.range(0, simulation.plan.timing.tick_interval_ms);
            simulation
                .queue
                .push(offset, Scheduled::Tick { node: index });
        }
        simulation
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    fn node_config(&mut self, index: usize) -> NodeConfig {
        let id = self.nodes[index].id;
        let timing = self.plan.timing;
        NodeConfig {
            id,
            groups: self
                .plan
                .groups
                .iter()
                .filter(|g| g.voters.contains(&id))
                .map(|g| (g.id, Config::new(g.voters.iter().copied())))
                .collect(),
            rng_seed: self.nodes[index].rng.next_u64(),
            election_timeout_ms: timing.election_timeout_ms,
            heartbeat_interval_ms: timing.heartbeat_interval_ms,
            snapshot_interval_entries: timing.snapshot_interval_entries,
            segment_bytes_max: timing.segment_bytes_max,
            machines: runnel_core::MachineLayout::Records,
        }
    }

    fn broker_config(&mut self, index: usize) -> BrokerConfig {
        let timing = self.plan.timing;
        let replication_factor = self.plan.kafka.as_ref().map_or(1, |k| k.replication_factor);
        let racks = self.plan.kafka.as_ref().is_some_and(|k| k.racks);
        let me = self.nodes[index].id;
        let joining = self.spare == Some(me);
        BrokerConfig {
            node_id: me,
            // The cluster as configured: without the spare, which lists
            // itself too.
            cluster: self
                .plan
                .nodes
                .iter()
                .filter(|&&node_id| self.spare != Some(node_id) || joining)
                .map(|&node_id| BrokerAddress {
                    node_id,
                    host: format!("n{node_id}.sim"),
                    port: 9092,
                    rack: racks.then(|| format!("rack-{}", node_id % 3)),
                })
                .collect(),
            cluster_id: "runnel-sim".to_string(),
            rng_seed: self.nodes[index].rng.next_u64(),
            election_timeout_ms: timing.election_timeout_ms,
            heartbeat_interval_ms: timing.heartbeat_interval_ms,
            snapshot_interval_entries: timing.snapshot_interval_entries,
            segment_bytes_max: timing.segment_bytes_max,
            segment_ms: timing.segment_ms,
            topic_defaults: TopicDefaults {
                replication_factor,
                auto_create: false,
                ..TopicDefaults::default()
            },
            incarnation: self.nodes[index].incarnation,
            // Two offsets partitions when the workload has committers or
            // group members (fewer groups than the default eight); none
            // otherwise.
            offsets_topic_partitions: if self
                .plan
                .kafka
                .as_ref()
                .is_some_and(|k| k.committers + k.group_members > 0)
            {
                2
            } else {
                0
            },
            join: joining,
        }
    }

    fn episodes(&self, class: FaultClass) -> Option<Episodes> {
        match class {
            FaultClass::Partition => self.plan.partition,
            FaultClass::OneWay => self.plan.one_way,
            FaultClass::Isolate => self.plan.isolate,
            FaultClass::Clog => self.plan.clog,
            FaultClass::Crash => self.plan.crash,
            FaultClass::Pause => self.plan.pause,
            FaultClass::ClockJump => self.plan.clock_jumps,
            _ => None,
        }
    }

    fn draw(&mut self, range: (u64, u64)) -> u64 {
        self.fault_rng.range(range.0, range.1 + 1)
    }

    fn schedule_fault_start(&mut self, class: FaultClass) {
        if let Some(episodes) = self.episodes(class) {
            let at = self.now + self.draw(episodes.gap_ms);
            if at < self.options.safety_ms {
                self.queue.push(at, Scheduled::FaultStart { class });
            }
        }
    }

    fn fault_line(&mut self, description: String) {
        if self.options.verbose {
            println!(
                "{:>6}.{:03}s FAULT {description}",
                self.now / 1000,
                self.now % 1000
            );
        }
        self.trace
            .line(self.now, None, TraceKind::Fault(description));
    }

    fn push_violation(&mut self, violation: Violation) {
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(violation);
        }
    }

    fn note(&mut self, result: Result<(), Violation>) {
        note(&mut self.violations, result);
    }

    // ---- running ---------------------------------------------------------

    pub fn run(mut self) -> Outcome {
        for index in 0..self.nodes.len() {
            self.start_node(index);
        }
        if let Some(kafka) = self.kafka.as_mut() {
            let mut actions = std::mem::take(&mut self.kafka_actions);
            kafka.start(0, &mut actions);
            self.kafka_actions = actions;
            self.apply_kafka_actions();
        } else {
            let mut actions = std::mem::take(&mut self.actions);
            self.workload.start(0, &mut actions);
            self.actions = actions;
            self.apply_actions();
        }
        self.queue.push(CHECK_INTERVAL_MS, Scheduled::Check);
        self.queue
            .push(self.options.safety_ms, Scheduled::LivenessStart);
        for class in [
            FaultClass::Partition,
            FaultClass::OneWay,
            FaultClass::Isolate,
            FaultClass::Clog,
            FaultClass::Crash,
            FaultClass::Pause,
            FaultClass::ClockJump,
        ] {
            self.schedule_fault_start(class);
        }

        while self.violations.is_empty() && self.phase != Phase::Done {
            if self.trace.events() >= EVENTS_PER_RUN_MAX {
                let message = format!(
                    "{} events by {} ms of simulated time: a livelock?",
                    self.trace.events(),
                    self.now
                );
                self.push_violation(violation("event-budget", "sim/runner.rs", message));
                break;
            }
            let Some((at, source)) = self.next_source() else {
                break;
            };
            if let Phase::Liveness { deadline } = self.phase {
                if at > deadline {
                    self.now = deadline;
                    self.liveness_failed();
                    break;
                }
            }
            // A resumed node's disk may hold completions that fell due while
            // it was paused: time never goes back.
            self.now = self.now.max(at);
            self.step(source);
        }
        self.finish()
    }

    fn next_source(&self) -> Option<(u64, Source)> {
        let mut best: Option<(u64, Source)> = None;
        let mut consider = |at: Option<u64>, source: Source| {
            if let Some(at) = at {
                if best.is_none_or(|(best_at, _)| at < best_at) {
                    best = Some((at, source));
                }
            }
        };
        for (index, node) in self.nodes.iter().enumerate() {
            if node.state == NodeState::Up {
                consider(node.disk.next_completion_at(), Source::Disk(index));
            }
        }
        consider(self.network.next_delivery_at(), Source::Network);
        consider(self.queue.next_at(), Source::Queue);
        best
    }

    fn step(&mut self, source: Source) {
        let now = self.now;
        match source {
            Source::Disk(index) => {
                if let Some(completion) = self.nodes[index].disk.pop_completion(now) {
                    self.trace.hash_event(1, now, &(index, &completion));
                    self.trace.line(
                        now,
                        Some(self.nodes[index].id),
                        TraceKind::disk(&completion),
                    );
                    self.handle(index, Input::Core(Event::Disk(completion)));
                }
            }
            Source::Network => {
                if let Some((from, to, envelope)) = self.network.pop_due(now) {
                    self.trace.hash_event(2, now, &(from, to, &envelope));
                    match self.index_of(to) {
                        Some(index) => self.node_event(index, Input::Core(Event::Peer(envelope))),
                        None => panic!("n{from} sent to unknown node {to}"),
                    }
                }
            }
            Source::Queue => {
                if let Some((_, scheduled)) = self.queue.pop_due(now) {
                    self.trace.hash_event(3, now, &scheduled);
                    self.scheduled(scheduled);
                }
            }
        }
    }

    fn index_of(&self, node: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == node)
    }

    fn scheduled(&mut self, scheduled: Scheduled) {
        let now = self.now;
        match scheduled {
            Scheduled::Tick { node } => {
                self.queue.push(
                    now + self.plan.timing.tick_interval_ms,
                    Scheduled::Tick { node },
                );
                if self.nodes[node].state == NodeState::Up {
                    self.handle(node, Input::Core(Event::Tick));
                }
            }
            Scheduled::ClientArrive { node, request } => {
                self.node_event(node, Input::Core(Event::Client(request)));
            }
            Scheduled::KafkaArrive {
                node,
                connection,
                frame,
            } => self.node_event(node, Input::KafkaRequest { connection, frame }),
            Scheduled::KafkaClientClosed { node, connection } => {
                self.connection_due.remove(&(connection, true));
                self.node_event(node, Input::KafkaClosed { connection });
            }
            Scheduled::KafkaReply { connection, frame } => {
                self.with_kafka(|kafka, now, out| kafka.on_response(now, connection, frame, out));
                if matches!(self.phase, Phase::Liveness { .. }) {
                    self.check_liveness();
                }
            }
            Scheduled::KafkaServerClosed { connection } => {
                self.connection_due.remove(&(connection, false));
                self.with_kafka(|kafka, now, out| kafka.on_closed(now, connection, out));
            }
            Scheduled::KafkaWake { client, token } => {
                self.with_kafka(|kafka, now, out| kafka.on_wake(now, client, token, out));
            }
            Scheduled::ClientReply { response } => {
                self.trace.line(now, None, TraceKind::response(&response));
                let mut actions = std::mem::take(&mut self.actions);
                self.workload.on_response(now, response, &mut actions);
                self.actions = actions;
                self.apply_actions();
                if matches!(self.phase, Phase::Liveness { .. }) {
                    self.check_liveness();
                }
            }
            Scheduled::ClientWake { client, token } => {
                let mut actions = std::mem::take(&mut self.actions);
                self.workload.on_wake(now, client, token, &mut actions);
                self.actions = actions;
                self.apply_actions();
            }
            Scheduled::OperatorWake { token } => {
                if self.workload.operator_wake_is_current(token) {
                    let status = self.group_statuses();
                    let mut actions = std::mem::take(&mut self.actions);
                    self.workload
                        .on_operator_wake(now, token, &status, &mut actions);
                    self.actions = actions;
                    self.apply_actions();
                }
            }
            Scheduled::FaultStart { class } => {
                if self.phase == Phase::Safety {
                    self.fault_start(class);
                }
            }
            Scheduled::FaultEnd { class, nodes } => self.fault_end(class, &nodes),
            Scheduled::Check => {
                self.queue.push(now + CHECK_INTERVAL_MS, Scheduled::Check);
                self.damage_running_disk();
                self.observe_everything();
                self.check_log_matching_now();
                if self.options.verbose {
                    self.print_status();
                }
            }
            Scheduled::LivenessStart => self.start_liveness(),
        }
    }

    fn apply_actions(&mut self) {
        let now = self.now;
        let base = self.plan.workload.client_delay_base_ms;
        let jitter = self.plan.workload.client_delay_jitter_ms;
        for action in std::mem::take(&mut self.actions) {
            match action {
                Action::Send { node, request } => {
                    let Some(index) = self.index_of(node) else {
                        continue;
                    };
                    let delay = base + self.client_rng.range(0, jitter + 1);
                    self.queue.push(
                        now + delay,
                        Scheduled::ClientArrive {
                            node: index,
                            request,
                        },
                    );
                }
                Action::Wake { at, client, token } => {
                    self.queue.push(at, Scheduled::ClientWake { client, token })
                }
                Action::WakeOperator { at, token } => {
                    self.queue.push(at, Scheduled::OperatorWake { token })
                }
            }
        }
        for class in self.workload.take_accepted() {
            self.faults.add(class, 1);
        }
    }

    /// Runs `f` on the Kafka workload and carries out what it asks.
    fn with_kafka(&mut self, f: impl FnOnce(&mut KafkaWorkload, u64, &mut Vec<KafkaAction>)) {
        let now = self.now;
        let Some(kafka) = self.kafka.as_mut() else {
            return;
        };
        let mut actions = std::mem::take(&mut self.kafka_actions);
        f(kafka, now, &mut actions);
        self.kafka_actions = actions;
        self.apply_kafka_actions();
    }

    /// When a delivery on `connection` in one direction (`to_node`) is due:
    /// after the client channel's delay, and never before the previous one.
    fn connection_delivery_at(&mut self, connection: ConnectionId, to_node: bool) -> u64 {
        let base = self.plan.workload.client_delay_base_ms;
        let jitter = self.plan.workload.client_delay_jitter_ms;
        let delay = base + self.client_rng.range(0, jitter + 1);
        let due = self
            .connection_due
            .entry((connection, to_node))
            .or_insert(0);
        *due = (*due).max(self.now + delay);
        *due
    }

    fn apply_kafka_actions(&mut self) {
        for action in std::mem::take(&mut self.kafka_actions) {
            match action {
                KafkaAction::Send {
                    node,
                    connection,
                    frame,
                } => {
                    let Some(index) = self.index_of(node) else {
                        continue;
                    };
                    let at = self.connection_delivery_at(connection, true);
                    self.queue.push(
                        at,
                        Scheduled::KafkaArrive {
                            node: index,
                            connection,
                            frame,
                        },
                    );
                }
                KafkaAction::Close { node, connection } => {
                    let Some(index) = self.index_of(node) else {
                        continue;
                    };
                    let at = self.connection_delivery_at(connection, true);
                    self.queue.push(
                        at,
                        Scheduled::KafkaClientClosed {
                            node: index,
                            connection,
                        },
                    );
                }
                KafkaAction::Wake { at, client, token } => {
                    self.queue.push(at, Scheduled::KafkaWake { client, token })
                }
            }
        }
    }

    // ---- nodes -----------------------------------------------------------

    /// An event for a node from outside: dropped if it is down, held if paused.
    fn node_event(&mut self, index: usize, event: Input) {
        match self.nodes[index].state {
            NodeState::Up => self.handle(index, event),
            NodeState::Crashed => {
                self.dropped_to_crashed += 1;
                self.trace.line(
                    self.now,
                    Some(self.nodes[index].id),
                    TraceKind::Note("dropped: node is down"),
                );
            }
            NodeState::Paused => {
                let node = &mut self.nodes[index];
                if node.held.len() < HELD_EVENTS_MAX {
                    node.held.push_back(event);
                } else {
                    self.held_dropped += 1;
                }
            }
        }
    }

    fn handle(&mut self, index: usize, input: Input) {
        let now = self.now;
        self.touched.clear();
        let kind = match &input {
            Input::Core(Event::Tick) => {
                self.touched.extend_from_slice(&self.groups);
                TraceKind::Tick
            }
            Input::Core(Event::Disk(completion)) => {
                self.touched.extend_from_slice(&self.groups);
                TraceKind::disk(completion)
            }
            Input::Core(Event::Peer(envelope)) => {
                for (group, _) in &envelope.messages {
                    if !self.touched.contains(group) {
                        self.touched.push(*group);
                    }
                }
                TraceKind::peer(envelope)
            }
            Input::Core(Event::Client(request)) => {
                self.touched.push(request.group);
                TraceKind::request(request)
            }
            Input::KafkaRequest { connection, frame } => {
                self.touched.extend_from_slice(&self.groups);
                TraceKind::kafka_request(*connection, frame)
            }
            Input::KafkaClosed { .. } => TraceKind::Note("client closed a connection"),
        };
        if !matches!(input, Input::Core(Event::Disk(_))) {
            self.trace.line(now, Some(self.nodes[index].id), kind);
        }

        let sim_node = &mut self.nodes[index];
        let Some(process) = sim_node.node.as_mut() else {
            return;
        };
        sim_node.clock.set_global(now);
        sim_node.disk.set_now(now);
        let mut network = NodeNetwork {
            network: &mut self.network,
            from: sim_node.id,
            now,
        };
        let mut replies = ReplyBuffer(std::mem::take(&mut self.replies));
        let mut kafka_out = KafkaBuffer::default();
        let result = match process {
            Process::Records(node) => {
                let Input::Core(event) = input else {
                    panic!("Kafka traffic is only sent to the broker layout");
                };
                let mut env = Env {
                    disk: &mut sim_node.disk,
                    network: &mut network,
                    clock: &sim_node.clock,
                    replies: &mut replies,
                };
                catch_unwind(AssertUnwindSafe(|| node.handle(event, &mut env)))
            }
            Process::Broker(broker) => {
                let event = match input {
                    Input::Core(Event::Tick) => BrokerEvent::Tick,
                    Input::Core(Event::Peer(envelope)) => BrokerEvent::Peer(envelope),
                    Input::Core(Event::Disk(completion)) => BrokerEvent::Disk(completion),
                    Input::Core(Event::Client(_)) => {
                        panic!("core client requests are only sent to the record layout")
                    }
                    Input::KafkaRequest { connection, frame } => {
                        BrokerEvent::Request { connection, frame }
                    }
                    Input::KafkaClosed { connection } => BrokerEvent::Closed { connection },
                };
                let mut env = BrokerEnv {
                    disk: &mut sim_node.disk,
                    network: &mut network,
                    clock: &sim_node.clock,
                    responses: &mut kafka_out,
                };
                catch_unwind(AssertUnwindSafe(|| broker.handle(event, &mut env)))
            }
        };
        let id = sim_node.id;
        if let Err(payload) = result {
            let message = format!(
                "n{id} (incarnation {}) panicked at {} ms: {}",
                sim_node.incarnation,
                now,
                panic_text(payload.as_ref())
            );
            add_catch_up(&mut self.catch_up, process.node().catch_up_stats());
            sim_node.node = None;
            self.push_violation(violation("node-panic", "DESIGN.md: The shape", message));
            return;
        }
        let node = process.node();
        if let Process::Broker(_) = process {
            let hosted: BTreeSet<GroupId> = node.group_ids().into_iter().collect();
            for &group in &hosted {
                if !self.groups.contains(&group) {
                    self.groups.push(group);
                    self.touched.push(group);
                }
            }
            // A replica the broker deleted (its node left the group) and
            // created again later (the node came back) starts from nothing:
            // the checkers see a new replica.
            for group in sim_node.hosted.difference(&hosted) {
                *sim_node.replica_generations.entry(*group).or_default() += 1;
                sim_node.tracks.remove(group);
            }
            sim_node.hosted = hosted;
        }
        if node.oversized_messages_dropped() > 0 {
            let message = format!(
                "n{id} built {} message(s) over the envelope limit",
                node.oversized_messages_dropped()
            );
            note(
                &mut self.violations,
                Err(violation("envelope-bound", "docs/protocol.md §12", message)),
            );
        }
        if let Some(reason) = node.failed() {
            // The node stops itself after a disk error. An error the disk
            // injected is expected: the node is down until restarted, and
            // what it had not synced is gone. Any other is a bug.
            let injected = sim_node.disk.injected();
            if injected.errors() > sim_node.errors_seen {
                sim_node.errors_seen = injected.errors();
                let reason = reason.to_string();
                self.disk_error_stop(index, reason);
                return;
            }
            let message = format!(
                "n{id} (incarnation {}) stopped at {now} ms: {reason}",
                sim_node.incarnation
            );
            self.push_violation(violation("node-stopped", "DESIGN.md: Storage", message));
        }
        let base = self.plan.workload.client_delay_base_ms;
        let jitter = self.plan.workload.client_delay_jitter_ms;
        for response in replies.0.drain(..) {
            let delay = base + self.client_rng.range(0, jitter + 1);
            self.queue
                .push(now + delay, Scheduled::ClientReply { response });
        }
        self.replies = replies.0;
        for (connection, frame) in kafka_out.frames {
            // Produce with acks=0 gets no response frame.
            if let Some(frame) = frame {
                let at = self.connection_delivery_at(connection, false);
                self.queue
                    .push(at, Scheduled::KafkaReply { connection, frame });
            }
        }
        for connection in kafka_out.closed {
            let at = self.connection_delivery_at(connection, false);
            self.queue
                .push(at, Scheduled::KafkaServerClosed { connection });
        }
        let touched = std::mem::take(&mut self.touched);
        self.observe(index, &touched);
        self.touched = touched;
        let sim_node = &mut self.nodes[index];
        if sim_node.crash_armed && sim_node.disk.queued() > 0 {
            sim_node.crash_armed = false;
            self.crash(index);
        }
    }

    /// Starts (or restarts) a node from its disk.
    fn start_node(&mut self, index: usize) {
        let now = self.now;
        let config = self.node_config(index);
        let skew = self.plan.clock_skew;
        self.nodes[index].incarnation += 1;
        let broker_config = self.plan.kafka.is_some().then(|| self.broker_config(index));
        let retained_log_bytes_max = self.plan.timing.retained_log_bytes_max;
        let segment_ms = self.plan.timing.segment_ms;
        let sim_node = &mut self.nodes[index];
        if sim_node.incarnation > 1 {
            let origin = self.plan.clocks[index].origin_ms;
            let origin = if skew {
                origin + sim_node.rng.range(0, RESTART_ORIGIN_SHIFT_MS_MAX)
            } else {
                origin
            };
            sim_node.clock.restart(origin);
        }
        sim_node.clock.set_global(now);
        sim_node.disk.set_now(now);
        sim_node.held.clear();
        sim_node.tracks.clear();
        sim_node.hosted.clear();
        let id = sim_node.id;
        let incarnation = sim_node.incarnation;
        let disk = &mut sim_node.disk;
        let started = catch_unwind(AssertUnwindSafe(|| match broker_config {
            Some(config) => Broker::start(config, disk).map(|b| Process::Broker(Box::new(b))),
            None => Node::start(config, disk).map(|mut node| {
                node.set_retained_log_bytes_max(retained_log_bytes_max);
                node.set_segment_ms(segment_ms);
                Process::Records(Box::new(node))
            }),
        }));
        match started {
            Ok(Ok(node)) => {
                sim_node.node = Some(node);
                sim_node.state = NodeState::Up;
                let groups = self.groups.clone();
                self.observe(index, &groups);
            }
            Ok(Err(error)) => {
                let message = format!(
                    "n{id} could not start (incarnation {incarnation}) at {now} ms: {error:?}"
                );
                self.push_violation(violation("node-start", "DESIGN.md: The simulator", message));
            }
            Err(payload) => {
                let message = format!(
                    "n{id} panicked while starting (incarnation {incarnation}) at {now} ms: {}",
                    panic_text(payload.as_ref())
                );
                self.push_violation(violation("node-panic", "DESIGN.md: The shape", message));
            }
        }
    }

    /// A node stopped itself after an injected disk error: it is down like
    /// a crashed node (its unsynced writes lost) and restarts a while later.
    fn disk_error_stop(&mut self, index: usize, reason: String) {
        let injected = self.nodes[index].disk.injected();
        let id = self.nodes[index].id;
        self.fault_line(format!("n{id} stopped on an injected disk error: {reason}"));
        self.crash(index);
        let restart_after = self.fault_rng.range(100, 2_000);
        self.queue.push(
            self.now + restart_after,
            Scheduled::FaultEnd {
                class: if injected.sync_failures > 0 && reason.contains("sync") {
                    FaultClass::SyncFailure
                } else {
                    FaultClass::DiskFull
                },
                nodes: vec![index],
            },
        );
    }

    fn crash(&mut self, index: usize) {
        // The node's connections are reset; their clients notice.
        let crashed = self.nodes[index].id;
        self.with_kafka(|kafka, now, out| kafka.on_node_down(now, crashed, out));
        let sim_node = &mut self.nodes[index];
        if let Some(node) = sim_node.core() {
            add_catch_up(&mut self.catch_up, node.catch_up_stats());
        }
        sim_node.node = None;
        sim_node.state = NodeState::Crashed;
        sim_node.held.clear();
        let report = sim_node.disk.crash();
        let id = sim_node.id;
        self.faults.add(FaultClass::Crash, 1);
        self.faults.add(FaultClass::TornWrite, report.torn_writes);
        let faulty = self
            .plan
            .faulty_disk
            .as_ref()
            .filter(|faulty| faulty.node == index && self.phase == Phase::Safety)
            .map(|faulty| {
                (
                    faulty.corrupt_at_rest,
                    faulty.latent_read_errors,
                    faulty.misdirected_writes,
                )
            });
        if let Some((flips, latent, misdirected)) = faulty {
            let disk = &mut self.nodes[index].disk;
            let newest = newest_segments(disk, 2);
            let eligible = |name: &str| {
                !name.ends_with(".tmp") && !newest.iter().any(|segment| segment == name)
            };
            if flips && self.fault_rng.chance(0.5) {
                if let Some((file, offset, bit)) = disk.flip_bit_at_rest(&eligible) {
                    self.faults.add(FaultClass::CorruptAtRest, 1);
                    self.fault_line(format!(
                        "corrupt n{id} at rest: bit {bit} of byte {offset} of {file}"
                    ));
                }
            }
            let disk = &mut self.nodes[index].disk;
            if latent && self.fault_rng.chance(0.3) {
                if let Some(file) = disk.make_unreadable_at_rest(&eligible) {
                    self.faults.add(FaultClass::LatentReadError, 1);
                    self.fault_line(format!("latent sector error on n{id}: {file}"));
                }
            }
            let disk = &mut self.nodes[index].disk;
            if misdirected && self.fault_rng.chance(0.3) {
                if let Some((meant, meant_offset, landed, landed_offset)) =
                    disk.misdirect_write_at_rest(&eligible)
                {
                    self.faults.add(FaultClass::MisdirectedWrite, 1);
                    self.fault_line(format!(
                        "misdirected write on n{id}: the sector at {meant_offset} of {meant} landed at {landed_offset} of {landed}"
                    ));
                }
            }
        }
        self.fault_line(format!(
            "crash n{id}: {} queued ops performed unacknowledged, {} dropped; {} unsynced lost, {} kept, {} torn; {} unsynced name ops kept",
            report.performed_queued,
            report.dropped_queued,
            report.lost_unsynced,
            report.kept_unsynced,
            report.torn_writes,
            report.kept_name_ops
        ));
    }

    /// Bit rot and latent sector errors strike a running node too, not only
    /// one that is down: on the fault atlas's faulty disk, now and then, an
    /// older log segment (not one of each log's two newest, as at a crash)
    /// is damaged while the node runs. The node meets it only when it reads
    /// the segment: serving a follower from the log kept below a snapshot
    /// (§8.1), which must find the damage and send the snapshot instead, or
    /// at its next start, which repairs as after any damage at rest.
    fn damage_running_disk(&mut self) {
        let Some(faulty) = self.plan.faulty_disk.clone() else {
            return;
        };
        let index = faulty.node;
        if self.phase != Phase::Safety
            || self.nodes[index].state != NodeState::Up
            || !(faulty.corrupt_at_rest || faulty.latent_read_errors)
            || !self.fault_rng.chance(RUNNING_DISK_DAMAGE_CHANCE)
        {
            return;
        }
        let id = self.nodes[index].id;
        let disk = &mut self.nodes[index].disk;
        let newest = newest_segments(disk, 2);
        let eligible =
            |name: &str| name.ends_with(".seg") && !newest.iter().any(|segment| segment == name);
        if faulty.corrupt_at_rest && (!faulty.latent_read_errors || self.fault_rng.chance(0.5)) {
            if let Some((file, offset, bit)) = disk.flip_bit_at_rest(&eligible) {
                self.faults.add(FaultClass::CorruptAtRest, 1);
                self.fault_line(format!(
                    "corrupt running n{id}: bit {bit} of byte {offset} of {file}"
                ));
            }
        } else if let Some(file) = disk.make_unreadable_at_rest(&eligible) {
            self.faults.add(FaultClass::LatentReadError, 1);
            self.fault_line(format!("latent sector error on running n{id}: {file}"));
        }
    }

    fn resume(&mut self, index: usize) {
        let id = self.nodes[index].id;
        self.nodes[index].state = NodeState::Up;
        let held = std::mem::take(&mut self.nodes[index].held);
        self.fault_line(format!("resume n{id} ({} held events)", held.len()));
        for event in held {
            if self.nodes[index].state != NodeState::Up || !self.violations.is_empty() {
                break;
            }
            self.handle(index, event);
        }
    }

    fn down_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.state != NodeState::Up || n.crash_armed)
            .count()
    }

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].state == NodeState::Up && !self.nodes[i].crash_armed)
            .collect()
    }

    // ---- faults ----------------------------------------------------------

    fn fault_start(&mut self, class: FaultClass) {
        let Some(episodes) = self.episodes(class) else {
            return;
        };
        let duration = self.draw(episodes.duration_ms);
        let ids: Vec<NodeId> = self.plan.nodes.clone();
        let mut targets = Vec::new();
        match class {
            FaultClass::Partition => {
                let mut shuffled = ids.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = self.fault_rng.range(0, i as u64 + 1) as usize;
                    shuffled.swap(i, j);
                }
                // A bridge node (on no side) talks to both sides: the shape
                // that makes leaders flap. Otherwise two or three sides.
                let bridge = self.fault_rng.chance(0.3);
                let bridged = if bridge { shuffled.pop() } else { None };
                let three = !bridge && shuffled.len() >= 5 && self.fault_rng.chance(0.3);
                let mut sides = Vec::new();
                if three {
                    let first = self.fault_rng.range(1, shuffled.len() as u64 - 1) as usize;
                    let second = self
                        .fault_rng
                        .range(first as u64 + 1, shuffled.len() as u64)
                        as usize;
                    sides.push(shuffled[..first].to_vec());
                    sides.push(shuffled[first..second].to_vec());
                    sides.push(shuffled[second..].to_vec());
                } else {
                    let cut = self.fault_rng.range(1, shuffled.len() as u64) as usize;
                    sides.push(shuffled[..cut].to_vec());
                    sides.push(shuffled[cut..].to_vec());
                }
                self.network.set_partition(&sides);
                self.faults.add(class, 1);
                let shown: Vec<String> = sides.iter().map(|side| format!("{side:?}")).collect();
                let bridge_text = bridged.map_or(String::new(), |b| format!(", n{b} bridges"));
                self.fault_line(format!(
                    "partition {}{bridge_text} for {duration} ms",
                    shown.join(" | ")
                ));
            }
            FaultClass::OneWay => {
                let pairs = self.fault_rng.range(1, 3);
                let mut described = Vec::new();
                for _ in 0..pairs {
                    let from = *self.fault_rng.pick(&ids).expect("nodes");
                    let others: Vec<NodeId> = ids.iter().copied().filter(|n| *n != from).collect();
                    let to = *self.fault_rng.pick(&others).expect("nodes");
                    self.network.block_one_way(from, to);
                    described.push(format!("n{from}->n{to}"));
                }
                self.faults.add(class, 1);
                self.fault_line(format!(
                    "one-way block {} for {duration} ms",
                    described.join(" ")
                ));
            }
            FaultClass::Isolate => {
                let node = *self.fault_rng.pick(&ids).expect("nodes");
                self.network.isolate(node);
                self.faults.add(class, 1);
                self.fault_line(format!("isolate n{node} for {duration} ms"));
            }
            FaultClass::Clog => {
                let from = *self.fault_rng.pick(&ids).expect("nodes");
                let others: Vec<NodeId> = ids.iter().copied().filter(|n| *n != from).collect();
                let to = *self.fault_rng.pick(&others).expect("nodes");
                let both = self.fault_rng.chance(0.5);
                self.network.clog(from, to, self.now + duration);
                if both {
                    self.network.clog(to, from, self.now + duration);
                }
                self.faults.add(class, 1);
                self.fault_line(format!(
                    "clog n{from}{}n{to} for {duration} ms",
                    if both { "<->" } else { "->" }
                ));
            }
            FaultClass::Crash | FaultClass::Pause => {
                // Usually one node; sometimes several at once, up to the
                // plan's bound on nodes down together (a majority, or all).
                let room = self.plan.down_max.saturating_sub(self.down_count());
                let mut up = self.up_nodes();
                let count = if room > 1 && self.fault_rng.chance(0.3) {
                    self.fault_rng.range(2, room.min(up.len()) as u64 + 1) as usize
                } else {
                    room.min(1)
                };
                for _ in 0..count.min(up.len()) {
                    let at = self.fault_rng.range(0, up.len() as u64) as usize;
                    let index = up.remove(at);
                    targets.push(index);
                    let id = self.nodes[index].id;
                    if class == FaultClass::Pause {
                        self.nodes[index].state = NodeState::Paused;
                        self.faults.add(class, 1);
                        self.fault_line(format!("pause n{id} for {duration} ms"));
                    } else if self.plan.disk.torn_writes && self.fault_rng.chance(0.5) {
                        // Strike in the middle of a write.
                        self.nodes[index].crash_armed = true;
                        self.fault_line(format!(
                            "crash n{id} at its next disk operation, restart after {duration} ms"
                        ));
                    } else {
                        self.crash(index);
                    }
                }
            }
            FaultClass::ClockJump => {
                let index = self.fault_rng.range(0, ids.len() as u64) as usize;
                self.nodes[index].clock.jump(duration);
                self.faults.add(class, 1);
                self.fault_line(format!(
                    "clock of n{} jumps {duration} ms forward",
                    ids[index]
                ));
                self.schedule_fault_start(class);
                return;
            }
            _ => return,
        }
        self.queue.push(
            self.now + duration,
            Scheduled::FaultEnd {
                class,
                nodes: targets,
            },
        );
    }

    fn fault_end(&mut self, class: FaultClass, nodes: &[usize]) {
        match class {
            FaultClass::Partition => self.network.clear_partition(),
            FaultClass::OneWay => self.network.clear_one_way(),
            FaultClass::Isolate => self.network.clear_isolation(),
            FaultClass::SyncFailure | FaultClass::DiskFull => {
                for &index in nodes {
                    if self.nodes[index].state == NodeState::Crashed {
                        let id = self.nodes[index].id;
                        self.fault_line(format!("restart n{id} after its disk error"));
                        self.start_node(index);
                    }
                }
                return;
            }
            FaultClass::Crash => {
                for &index in nodes {
                    self.nodes[index].crash_armed = false;
                    if self.nodes[index].state == NodeState::Crashed {
                        let id = self.nodes[index].id;
                        self.fault_line(format!("restart n{id}"));
                        self.start_node(index);
                    }
                }
            }
            FaultClass::Pause => {
                for &index in nodes {
                    if self.nodes[index].state == NodeState::Paused {
                        self.resume(index);
                    }
                }
            }
            _ => {}
        }
        if self.phase == Phase::Safety {
            self.schedule_fault_start(class);
        }
    }

    fn start_liveness(&mut self) {
        self.phase = Phase::Liveness {
            deadline: self.now + self.options.liveness_ms,
        };
        self.network.heal();
        for node in &mut self.nodes {
            node.crash_armed = false;
            node.disk.heal();
        }
        self.fault_line("liveness phase: heal the network, restart and resume every node".into());
        for index in 0..self.nodes.len() {
            match self.nodes[index].state {
                NodeState::Crashed => {
                    let id = self.nodes[index].id;
                    self.fault_line(format!("restart n{id}"));
                    self.start_node(index);
                }
                NodeState::Paused => self.resume(index),
                NodeState::Up => {}
            }
        }
        self.workload.start_liveness();
        if let Some(kafka) = self.kafka.as_mut() {
            kafka.start_liveness();
        }
    }

    fn check_liveness(&mut self) {
        if let Some(kafka) = &self.kafka {
            if kafka.liveness_done()
                && self.group_statuses().iter().all(|s| s.leader.is_some())
                && self.unsettled_moves().is_empty()
            {
                self.phase = Phase::Done;
            }
            return;
        }
        if !self
            .workload
            .groups_without_progress(LIVENESS_APPENDS_MIN)
            .is_empty()
        {
            return;
        }
        if self.group_statuses().iter().all(|s| s.leader.is_some()) {
            self.phase = Phase::Done;
        }
    }

    /// Partitions whose group's membership (as its leader sees it) is not
    /// yet the replicas metadata wants, or that a node outside them still
    /// hosts: a move that has not finished (docs/protocol.md §12.4).
    fn unsettled_moves(&self) -> Vec<String> {
        let Some(metadata) = self
            .nodes
            .iter()
            .filter_map(|n| n.core())
            .filter_map(|node| Some((node.summary(METADATA_GROUP)?.applied_index, node)))
            .max_by_key(|(applied, _)| *applied)
            .and_then(|(_, node)| node.machine(METADATA_GROUP)?.metadata())
        else {
            return vec!["no metadata".into()];
        };
        let mut unsettled = Vec::new();
        let configured: Vec<NodeId> = self
            .plan
            .nodes
            .iter()
            .copied()
            .filter(|node| self.spare != Some(*node))
            .collect();
        let members: BTreeSet<NodeId> = metadata.members(&configured).into_iter().collect();
        let metadata_leader = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .filter_map(|n| n.core()?.summary(METADATA_GROUP))
            .filter(|view| view.role == Role::Leader)
            .max_by_key(|view| view.term);
        match metadata_leader {
            Some(view) => {
                let voters: BTreeSet<NodeId> = view.config.members().collect();
                if voters != members {
                    unsettled.push(format!(
                        "metadata group: members {voters:?}, the cluster's nodes {members:?}"
                    ));
                }
            }
            None => unsettled.push("metadata group: no leader".into()),
        }
        for (topic, placement) in metadata.partition_groups() {
            let group = placement.group;
            let wanted: BTreeSet<NodeId> = placement.replicas.iter().copied().collect();
            let leader = self
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Up)
                .filter_map(|n| n.core()?.summary(group))
                .filter(|view| view.role == Role::Leader)
                .max_by_key(|view| view.term);
            match leader {
                Some(view) => {
                    let members: BTreeSet<NodeId> = view.config.members().collect();
                    if members != wanted || !view.config.learners.is_empty() {
                        unsettled.push(format!(
                            "{} group {group}: members {:?} learners {:?}, wanted {:?}",
                            topic.name, view.config.voters, view.config.learners, wanted
                        ));
                    }
                }
                None => unsettled.push(format!("{} group {group}: no leader", topic.name)),
            }
            for sim_node in &self.nodes {
                // A node removed from the cluster is to be stopped; what it
                // keeps is no longer needed by anyone.
                let member = members.contains(&sim_node.id);
                if member
                    && !wanted.contains(&sim_node.id)
                    && sim_node.core().is_some_and(|n| n.hosts(group))
                {
                    unsettled.push(format!(
                        "{} group {group}: n{} still hosts it",
                        topic.name, sim_node.id
                    ));
                }
            }
        }
        unsettled
    }

    fn liveness_failed(&mut self) {
        let stuck = if self.kafka.is_some() {
            Vec::new()
        } else {
            self.workload.groups_without_progress(LIVENESS_APPENDS_MIN)
        };
        let statuses = self.group_statuses();
        let mut message = format!(
            "{} ms after healing every fault, groups {:?} had not acknowledged {} new appends (or had no leader).",
            self.options.liveness_ms, stuck, LIVENESS_APPENDS_MIN
        );
        for status in &statuses {
            message.push_str(&format!(
                "\n    group {}: leader {:?}, leader commit {}, commits {:?}",
                status.group, status.leader, status.leader_commit, status.commits
            ));
        }
        if let Some(kafka) = &self.kafka {
            message.push_str(&format!(
                "\n    Kafka clients still waiting for: {}",
                kafka.liveness_missing().join(", ")
            ));
            message.push_str(&format!(
                "\n    moves not finished: {}",
                self.unsettled_moves().join("; ")
            ));
        }
        for sim_node in &self.nodes {
            let Some(node) = sim_node.core() else {
                message.push_str(&format!("\n    n{}: not running", sim_node.id));
                continue;
            };
            for &group in &self.groups {
                if let Some(view) = node.summary(group) {
                    message.push_str(&format!(
                        "\n    n{} g{}: {:?} term {} leader {:?} commit {} applied {} persisted {} last {} snapshot {} voters {:?} learners {:?}{}{}",
                        sim_node.id,
                        group,
                        view.role,
                        view.term,
                        view.leader,
                        view.commit_index,
                        view.applied_index,
                        view.persisted_index,
                        view.last_index,
                        view.snapshot_index,
                        view.config.voters,
                        view.config.learners,
                        if view.left_group { " (left the group)" } else { "" },
                        if node.holds_needed_log(group) == Some(false) {
                            format!(
                                " (lacks the log its partition serves: {})",
                                node.backfill_status(group).unwrap_or_default()
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
        self.push_violation(violation("liveness", "DESIGN.md: The simulator", message));
    }

    fn group_statuses(&self) -> Vec<GroupStatus> {
        self.groups
            .iter()
            .map(|&group| {
                let mut status = GroupStatus {
                    group,
                    ..GroupStatus::default()
                };
                let mut leader_term = 0;
                for sim_node in &self.nodes {
                    if sim_node.state != NodeState::Up {
                        continue;
                    }
                    let Some(view) = sim_node.core().and_then(|n| n.summary(group)) else {
                        continue;
                    };
                    status.commits.push((sim_node.id, view.commit_index));
                    if view.role == Role::Leader
                        && (status.leader.is_none() || view.term > leader_term)
                    {
                        leader_term = view.term;
                        status.leader = Some(sim_node.id);
                        status.leader_commit = view.commit_index;
                        status.config = Some(view.config.clone());
                    }
                }
                status
            })
            .collect()
    }

    // ---- checkers --------------------------------------------------------

    /// Feeds the incremental checkers with what `groups` look like on a node
    /// now. Cheap: a summary per group, and only the newly committed entries.
    fn observe(&mut self, index: usize, groups: &[GroupId]) {
        let sim_node = &mut self.nodes[index];
        let Some(node) = sim_node.node.as_ref() else {
            return;
        };
        let id = sim_node.id;
        let incarnation = sim_node.incarnation;
        let violations = &mut self.violations;
        let node = node.node();
        for &group in groups {
            let Some(summary) = node.summary(group) else {
                continue;
            };
            if summary.role == Role::Leader {
                note(
                    violations,
                    self.election.observe_leader(group, summary.term, id),
                );
            }
            note(
                violations,
                self.commits.observe_commit(
                    id,
                    // A deleted and re-created replica is a new one.
                    (incarnation << 20)
                        | sim_node
                            .replica_generations
                            .get(&group)
                            .copied()
                            .unwrap_or(0),
                    group,
                    summary.commit_index,
                ),
            );
            let track = sim_node.tracks.entry(group).or_default();
            if summary.snapshot_index > track.snapshot_index {
                note(
                    violations,
                    self.committed.observe_snapshot(
                        id,
                        group,
                        summary.snapshot_index,
                        summary.snapshot_term,
                    ),
                );
                track.snapshot_index = summary.snapshot_index;
            }
            let after = track.reported.max(summary.snapshot_index);
            if summary.commit_index > after {
                for (index, term, hash) in node.entries_after(group, after) {
                    if index > summary.commit_index {
                        break;
                    }
                    note(
                        violations,
                        self.committed
                            .observe_committed(id, group, index, term, hash),
                    );
                    track.reported = index;
                }
            }
        }
    }

    fn observe_everything(&mut self) {
        let groups = self.groups.clone();
        for index in 0..self.nodes.len() {
            self.observe(index, &groups);
        }
    }

    fn check_log_matching_now(&mut self) {
        for &group in &self.groups.clone() {
            let views: Vec<(NodeId, GroupView)> = self
                .nodes
                .iter()
                .filter_map(|n| Some((n.id, n.core()?.view(group)?)))
                .collect();
            let logs: Vec<ReplicaLog> = views
                .iter()
                .map(|(node, view)| ReplicaLog {
                    node: *node,
                    entries: &view.entries,
                })
                .collect();
            let result = check_log_matching(group, &logs);
            self.note(result);
        }
    }

    /// The broker layout's end: every partition's final log (from the
    /// replica that applied the most) against what the clients saw.
    fn final_kafka_checks(&mut self) {
        let Some(kafka) = &self.kafka else {
            return;
        };
        let racks = kafka.plan_racks();
        let wanted_topics = kafka.wanted_topics();
        let mut placements: BTreeMap<(String, i32), GroupId> = BTreeMap::new();
        let mut misplaced = Vec::new();
        for sim_node in &self.nodes {
            let Some(metadata) = sim_node
                .core()
                .and_then(|n| n.machine(METADATA_GROUP))
                .and_then(|m| m.metadata())
            else {
                continue;
            };
            for (topic, placement) in metadata.partition_groups() {
                let partition = topic
                    .partitions
                    .iter()
                    .position(|p| p.group == placement.group)
                    .expect("a topic lists its partitions") as i32;
                placements.insert((topic.name.clone(), partition), placement.group);
                // Replicas of a new partition spread over the racks: as
                // many racks as replicas, up to the three there are.
                let spread: BTreeSet<NodeId> = placement
                    .initial_replicas
                    .iter()
                    .map(|node| node % 3)
                    .collect();
                // Nodes added at run time have no rack (AddRaftVoter
                // carries none), so only a fixed cluster is checked.
                let fixed = self.spare.is_none();
                if racks && fixed && spread.len() < placement.initial_replicas.len().min(3) {
                    misplaced.push(format!(
                        "{}-{partition} placed on {:?}, racks {spread:?}",
                        topic.name, placement.initial_replicas
                    ));
                }
            }
        }
        misplaced.sort();
        misplaced.dedup();
        for message in misplaced {
            self.push_violation(violation("rack-placement", "docs/protocol.md §12", message));
        }
        let mut logs = BTreeMap::new();
        let mut unserved = Vec::new();
        let mut leader_lacking = Vec::new();
        let mut index_chunks = 0u64;
        for (key, group) in placements {
            // §8.3: a partition's batches are its log entries. The longest
            // machine is read back as it would be served, each batch from
            // any node that holds its entry (log matching makes them the
            // same); a batch no node holds is lost.
            // Keyed by each part's raft index range: every replica seals
            // the same chunks, since sealing is decided at apply.
            let mut held: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
            let mut longest: Option<LongestLog> = None;
            let mut lacking = Vec::new();
            for sim_node in &mut self.nodes {
                let SimNode { id, node, disk, .. } = sim_node;
                let Some(core) = node.as_ref().map(Process::node) else {
                    continue;
                };
                let Some(log) = core.machine(group).and_then(|machine| machine.partition()) else {
                    continue;
                };
                let Some(batches) = core.partition_batches_now(group, disk) else {
                    continue;
                };
                let mut missing = 0;
                for (part, bytes) in log.parts().zip(batches) {
                    match bytes {
                        Some(bytes) => {
                            held.entry(part_range(&part)).or_insert(bytes);
                        }
                        None => missing += 1,
                    }
                }
                let role = core.summary(group).map(|view| view.role);
                let leads = role == Some(runnel_core::Role::Leader);
                // Damage at rest that no read found yet is not known to the
                // leader; what it knows it lacks, it must hand off.
                let knows_it_lacks = core.holds_needed_log(group) == Some(false);
                if knows_it_lacks && leads && self.phase == Phase::Done {
                    leader_lacking.push(format!(
                        "{}-{}: its leader n{id} knows it lacks part of the log it serves ({missing} parts of its index)",
                        key.0, key.1
                    ));
                }
                if missing > 0 {
                    lacking.push(format!(
                        "n{id} lacks {missing} parts (snapshot {:?}, role {role:?})",
                        core.snapshot_index(group),
                    ));
                }
                if longest
                    .as_ref()
                    .is_none_or(|longest| log.high_watermark() > longest.high_watermark)
                {
                    longest = Some(LongestLog {
                        high_watermark: log.high_watermark(),
                        parts: log.parts().map(|part| part_range(&part)).collect(),
                        chunks: log.chunk_count(),
                    });
                }
            }
            let Some(LongestLog {
                high_watermark,
                parts: index,
                chunks,
            }) = longest
            else {
                continue;
            };
            index_chunks += chunks as u64;
            let parts: Option<Vec<&Vec<Vec<u8>>>> =
                index.iter().map(|range| held.get(range)).collect();
            match parts {
                Some(parts) => {
                    let batches = parts.into_iter().flatten().map(Vec::as_slice);
                    logs.insert(key, log_values(batches));
                }
                None => unserved.push(format!(
                    "{}-{}: no node holds every batch of the longest log (high watermark {high_watermark}): {}",
                    key.0,
                    key.1,
                    lacking.join("; ")
                )),
            }
        }
        if let Some(kafka) = self.kafka.as_mut() {
            kafka.set_index_chunks(index_chunks);
        }
        for message in leader_lacking {
            // §8.3: after the faults heal, a leader that lost part of its
            // log hands off to a voter that holds it.
            self.push_violation(violation(
                "partition-leader-holds-its-log",
                "docs/protocol.md §8.3",
                message,
            ));
        }
        for message in unserved {
            self.push_violation(violation(
                "partition-batches-held",
                "docs/protocol.md §8.3",
                message,
            ));
        }
        for topic in wanted_topics {
            if !logs.keys().any(|(name, _)| *name == topic) && self.phase == Phase::Done {
                let message = format!("topic {topic} was created but no node has its partitions");
                self.push_violation(violation("kafka-topic-lost", "docs/guarantees.md", message));
            }
        }
        let kafka = self.kafka.as_ref().expect("checked");
        let mut violations = kafka.history().check(&logs);
        // Committed offsets: per committer's group, the largest any replica
        // of its offsets partition holds.
        let mut final_offsets = BTreeMap::new();
        for (group_id, (topic, partition)) in kafka.history().committed_groups() {
            let mut found: Option<i64> = None;
            for sim_node in &self.nodes {
                let Some(core) = sim_node.core() else {
                    continue;
                };
                let Some(offsets_topic) = core
                    .machine(METADATA_GROUP)
                    .and_then(|m| m.metadata())
                    .and_then(|metadata| metadata.topic(runnel_core::offsets::OFFSETS_TOPIC))
                else {
                    continue;
                };
                let count = offsets_topic.partitions.len() as u32;
                let placement = &offsets_topic.partitions
                    [runnel_core::offsets::partition_for(&group_id, count) as usize];
                if let Some(committed) = core
                    .machine(placement.group)
                    .and_then(|m| m.offsets())
                    .and_then(|state| state.committed(&group_id, &topic, partition))
                {
                    found = Some(found.map_or(committed.offset, |f| f.max(committed.offset)));
                }
            }
            final_offsets.insert(group_id, found);
        }
        violations.extend(kafka.history().check_offsets(&final_offsets));
        for found in violations {
            self.push_violation(found);
        }
    }

    /// §8.1, §8.2: what a node retains below its snapshot is committed, so
    /// at each index it must be, byte for byte, what every other node
    /// retains there or holds committed in memory; and the store and the
    /// replica must agree on where it starts. This reads each node's
    /// segments as they are on its disk, so it covers the retained log,
    /// the backfill below a snapshot and recovery of both.
    fn check_retained_logs(&mut self) {
        let mut problems = Vec::new();
        for &group in &self.groups.clone() {
            let mut seen: BTreeMap<u64, SeenEntry> = BTreeMap::new();
            for sim_node in &mut self.nodes {
                let SimNode { id, node, disk, .. } = sim_node;
                let Some(core) = node.as_ref().map(Process::node) else {
                    continue;
                };
                let Some(retained) = core.retained_now(group, disk) else {
                    continue;
                };
                if retained.store_first != retained.replica_first {
                    problems.push(format!(
                        "n{id} g{group}: the store retains from {} but the replica from {}",
                        retained.store_first, retained.replica_first
                    ));
                }
                let committed = core.view(group).map(|view| {
                    let commit = view.commit_index;
                    view.entries
                        .into_iter()
                        .filter(move |&(index, _, _)| index <= commit)
                });
                let sources = retained
                    .entries
                    .into_iter()
                    .map(|entry| (entry, "retained"))
                    .chain(
                        committed
                            .into_iter()
                            .flatten()
                            .map(|entry| (entry, "committed")),
                    );
                for (entry, source) in sources {
                    let (index, term, hash) = entry;
                    match seen.get(&index) {
                        Some((other, other_node, other_source)) if *other != entry => {
                            problems.push(format!(
                                "g{group} index {index}: n{id} {source} (term {term}, data {hash:016x}) differs from n{other_node} {other_source} (term {}, data {:016x})",
                                other.1, other.2
                            ));
                        }
                        Some(_) => {}
                        None => {
                            seen.insert(index, (entry, *id, source));
                        }
                    }
                }
            }
        }
        for message in problems.into_iter().take(10) {
            self.push_violation(violation(
                "retained-log-matching",
                "docs/protocol.md §8.1, §8.2",
                message,
            ));
        }
    }

    fn final_checks(&mut self) {
        self.observe_everything();
        self.check_log_matching_now();
        self.check_retained_logs();
        if self.kafka.is_some() {
            self.final_kafka_checks();
            return;
        }
        for &group in &self.groups.clone() {
            let mut logs: Vec<(NodeId, Vec<u64>)> = Vec::new();
            let mut mismatches = Vec::new();
            for sim_node in &self.nodes {
                let Some(records) = sim_node.core().and_then(|n| n.records(group)) else {
                    continue;
                };
                let mut ids = Vec::with_capacity(records.len());
                let mut mismatch = None;
                for (position, record) in records.iter().enumerate() {
                    let decoded = decode_value_id(&record.value);
                    let expected = value_id(record.client, record.seq);
                    if decoded != Some(expected) && mismatch.is_none() {
                        mismatch = Some(format!(
                            "n{} g{group} record at position {position}: client {} seq {} but the value says {:?}",
                            sim_node.id, record.client, record.seq, decoded
                        ));
                    }
                    ids.push(decoded.unwrap_or(u64::MAX));
                }
                mismatches.extend(mismatch);
                logs.push((sim_node.id, ids));
            }
            for message in mismatches {
                self.push_violation(violation(
                    "record-identity",
                    "sim/workload.rs: value encoding",
                    message,
                ));
            }
            let mut longest: &[u64] = &[];
            for (_, ids) in &logs {
                if ids.len() > longest.len() {
                    longest = ids;
                }
            }
            let found = check_acknowledged_appends(self.workload.history(), group, longest);
            for violation in found {
                self.push_violation(violation);
            }
            let pairs: Vec<(NodeId, &[u64])> = logs
                .iter()
                .map(|(node, ids)| (*node, ids.as_slice()))
                .collect();
            let result = check_state_machine_agreement(group, &pairs);
            self.note(result);
        }
    }

    fn finish(mut self) -> Outcome {
        let stopped_early = !self.violations.is_empty();
        if !stopped_early || self.violations.iter().all(|v| v.invariant == "liveness") {
            self.final_checks();
        }
        let network = self.network.stats();
        for node in &self.nodes {
            if let Some(core) = node.core() {
                add_catch_up(&mut self.catch_up, core.catch_up_stats());
            }
            let injected = node.disk.injected();
            self.faults.add(FaultClass::SlowDisk, injected.slow_ops);
            self.faults
                .add(FaultClass::SyncFailure, injected.sync_failures);
            self.faults.add(FaultClass::DiskFull, injected.write_full);
        }
        if let Some(kafka) = &self.kafka {
            self.faults
                .add(FaultClass::ConfigChange, kafka.stats().reassignments);
        }
        self.faults.add(FaultClass::Loss, network.lost);
        self.faults.add(FaultClass::Duplication, network.duplicated);
        if self.plan.delay {
            self.faults.add(FaultClass::Delay, 1);
        }
        let base = CLOCK_SKEW_MS_MAX;
        let skewed = self
            .plan
            .clocks
            .iter()
            .filter(|c| c.origin_ms != base)
            .count();
        let drifting = self.plan.clocks.iter().filter(|c| c.drift_ppm != 0).count();
        self.faults.add(FaultClass::ClockSkew, skewed as u64);
        self.faults.add(FaultClass::ClockDrift, drifting as u64);
        Outcome {
            seed: self.options.seed,
            simulated_ms: self.now,
            events: self.trace.events(),
            acknowledged: match &self.kafka {
                Some(kafka) => kafka.history().acknowledged_records(),
                None => self.workload.history().acknowledged(),
            },
            kafka: self.kafka.as_ref().map(KafkaWorkload::stats),
            faults: self.faults,
            trace_hash: self.trace.hash(),
            last_events: self.trace.last_lines(),
            workload: self.workload.stats(),
            network,
            catch_up: self.catch_up,
            violations: self.violations,
        }
    }

    fn print_status(&self) {
        let mut line = format!(
            "{:>6}.{:03}s events {} acked {} in-flight {}",
            self.now / 1000,
            self.now % 1000,
            self.trace.events(),
            self.kafka.as_ref().map_or_else(
                || self.workload.history().acknowledged(),
                |kafka| kafka.history().acknowledged_records()
            ),
            self.network.in_flight()
        );
        for status in self.group_statuses() {
            line.push_str(&format!(
                " | g{} leader {:?} commit {}",
                status.group, status.leader, status.leader_commit
            ));
        }
        let down: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Up)
            .map(|n| format!("n{} {:?}", n.id, n.state))
            .collect();
        if !down.is_empty() {
            line.push_str(&format!(" | down: {}", down.join(", ")));
        }
        println!("{line}");
    }
}

/// Runs one seed.
pub fn run_seed(options: SimOptions) -> Outcome {
    Simulation::new(options).run()
}

/// The `count` newest segment files of every group's log on `disk`: the
/// atlas never flips bits there (docs/protocol.md §10.3, R3).
fn newest_segments(disk: &mut SimDisk, count: usize) -> Vec<String> {
    use runnel_io::Disk as _;
    let mut by_log: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in disk.list().unwrap_or_default() {
        if let Some((dir, _)) = name.rsplit_once('/') {
            if dir.ends_with("/log") && name.ends_with(".seg") {
                by_log.entry(dir.to_string()).or_default().push(name);
            }
        }
    }
    let mut newest = Vec::new();
    for (_, mut segments) in by_log {
        segments.sort();
        let keep = segments.len().saturating_sub(count);
        newest.extend(segments.into_iter().skip(keep));
    }
    newest
}

/// The final checks' longest replica of a partition: its high watermark,
/// the raft index range of each part of its index, and its chunks.
struct LongestLog {
    high_watermark: i64,
    parts: Vec<(u64, u64)>,
    chunks: usize,
}

/// The raft index range of a part of a partition's index.
fn part_range(part: &runnel_core::partition::Part<'_>) -> (u64, u64) {
    (part.first_raft_index(), part.last_raft_index())
}
