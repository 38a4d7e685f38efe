//! One seeded run: 3 or 5 real nodes, each a turmoil host running the
//! production shell around a `Broker` on a simulated disk, Kafka clients on
//! a host of their own, and a nemesis that partitions (both ways and one
//! way), holds messages, crashes nodes (their disks keep only what was
//! synced), stops them cleanly and restarts them, and makes one disk fail.
//! After the safety phase every fault heals; the clients must then get
//! new writes acknowledged on every partition, and the final logs are
//! checked against everything the clients saw.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use runnel_broker::{Broker, BrokerAddress, BrokerConfig};
use runnel_io::{NodeId, Rng};
use runnel_server::shell::node::{run_in_task, task_inputs, NodeAddresses, TaskNode};
use runnel_server::shell::{EXIT_DISK_FAILED, SHUTDOWN_DRAIN_MS};
use runnel_sim::disk::{DiskFaults, SimDisk};
use runnel_sim::kafka_workload::{KafkaPlan, KafkaWorkload};
use tokio::sync::oneshot;

use crate::client::{host_name, run_clients, ClientReport, ClientSchedule, KAFKA_PORT, RPC_PORT};
use crate::clock::HostClock;
use crate::disk::{HostDisk, SharedDisk};
use crate::trace::Trace;
use crate::transport::TurmoilTransport;

/// Simulated time each step of turmoil advances every host by.
pub const TICK_MS: u64 = 2;
/// The safety phase of a seed: faults strike until here.
pub const SAFETY_MS: u64 = 12_000;
/// After the heal, the clients must be done by this much later.
pub const LIVENESS_MS: u64 = 40_000;
/// Beyond the liveness deadline, the simulation is cut off here (a final
/// read that never ends, a host that never stops).
pub const OVERRUN_MS: u64 = 30_000;
/// The wall clock's origin: fixed, so that LogAppendTime stamps replay.
pub const EPOCH_SECS: u64 = 1_750_000_000;
/// A node asked to stop must have stopped by this long after.
pub const STOP_WAIT_MS: u64 = SHUTDOWN_DRAIN_MS + 3_000;
/// The name of the clients' host.
pub const CLIENTS_HOST: &str = "clients";

/// Which faults a seed uses (swarm testing: each seed its own mix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMix {
    pub partitions: bool,
    pub one_way: bool,
    pub holds: bool,
    pub crashes: bool,
    pub clean_restarts: bool,
    /// One node's disk fails syncs and writes now and then (its node exits
    /// with code 3 and is restarted), and stalls.
    pub faulty_disk: Option<NodeId>,
    /// Crashes may keep a prefix of unsynced writes, the last one torn.
    pub torn_writes: bool,
}

/// A fault a test script applies at a given time, instead of the seed's
/// random ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scripted {
    /// Every node cut off from every other node (the clients still reach
    /// all of them).
    PartitionNodes,
    /// The clients cut off from every node.
    IsolateClients,
    /// Every link between hosts repaired.
    RepairAll,
}

/// Everything a seed decides before the run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub nodes: Vec<NodeId>,
    pub faults: FaultMix,
    pub kafka: KafkaPlan,
    pub max_latency_ms: u64,
    /// When not empty: these faults at these times (ms), and no others.
    pub script: Vec<(u64, Scripted)>,
    /// Faults heal and the liveness phase begins here (ms).
    pub safety_ms: u64,
    /// How long the clients wait, idle, after the final read before they
    /// count each node's open TCP streams (ms).
    pub linger_ms: u64,
}

impl Plan {
    pub fn draw(seed: u64) -> Plan {
        let mut rng = Rng::new(seed ^ 0x7475_726d_6f69_6c00);
        let count = if rng.chance(0.5) { 3 } else { 5 };
        let nodes: Vec<NodeId> = (1..=count).collect();
        let faulty_disk = rng.chance(0.3).then(|| 1 + rng.range(0, count));
        let faults = FaultMix {
            partitions: rng.chance(0.6),
            one_way: rng.chance(0.4),
            holds: rng.chance(0.4),
            crashes: rng.chance(0.6),
            clean_restarts: rng.chance(0.4),
            faulty_disk,
            torn_writes: rng.chance(0.5),
        };
        let mut kafka = KafkaPlan::draw(&mut rng, nodes.len(), 1_000);
        // Nodes are fixed and have no racks in this tier.
        kafka.membership = false;
        kafka.racks = false;
        // Fewer clients than the simulator: each costs real connections.
        kafka.producers = kafka.producers.min(4);
        let max_latency_ms = rng.range(2, 30);
        Plan {
            seed,
            nodes,
            faults,
            kafka,
            max_latency_ms,
            script: Vec::new(),
            safety_ms: SAFETY_MS,
            linger_ms: 500,
        }
    }

    /// A plan of `nodes` nodes whose only faults are `script`.
    pub fn scripted(seed: u64, nodes: u64, script: Vec<(u64, Scripted)>) -> Plan {
        let mut plan = Plan::draw(seed);
        plan.nodes = (1..=nodes).collect();
        plan.kafka.replication_factor = 3.min(nodes as i16);
        plan.faults = FaultMix {
            partitions: false,
            one_way: false,
            holds: false,
            crashes: false,
            clean_restarts: false,
            faulty_disk: None,
            torn_writes: false,
        };
        plan.safety_ms = script
            .iter()
            .map(|(at, _)| at + 1_000)
            .max()
            .unwrap_or(SAFETY_MS)
            .max(SAFETY_MS);
        plan.script = script;
        plan
    }
}

/// What one run found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub trace_hash: u64,
    pub events: u64,
    /// Every problem found; empty when the seed passed.
    pub failures: Vec<String>,
    pub summary: String,
    pub last_lines: Vec<String>,
    /// TCP streams open on each node once the clients were done.
    pub streams: BTreeMap<NodeId, usize>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What the harness and one node's software share; it outlives each
/// incarnation of the node.
#[derive(Clone)]
struct NodeHandle {
    config: BrokerConfig,
    addresses: NodeAddresses,
    disk: SharedDisk,
    boots: Rc<Cell<u64>>,
    /// Resolves the running incarnation's stop (as SIGTERM would).
    stop: Rc<RefCell<Option<oneshot::Sender<()>>>>,
    /// Exit codes of the incarnations that ended by themselves.
    exits: Rc<RefCell<Vec<i32>>>,
}

async fn node_software(node: NodeHandle) -> turmoil::Result {
    let incarnation = node.boots.get() + 1;
    node.boots.set(incarnation);
    let mut config = node.config.clone();
    config.incarnation = incarnation;
    let (events, inputs) = task_inputs();
    let mut disk = HostDisk::start(node.disk.clone(), events);
    let broker = Broker::start(config, &mut disk).map_err(|error| {
        format!(
            "node {} cannot recover at start {incarnation}: {error}",
            node.addresses.node_id
        )
    })?;
    let (stop_sender, stop) = oneshot::channel::<()>();
    *node.stop.borrow_mut() = Some(stop_sender);
    let stop = async move {
        let _ = stop.await;
        "stop"
    };
    let task = TaskNode {
        broker,
        disk: Box::new(disk),
        clock: Box::new(HostClock::new()),
        addresses: node.addresses.clone(),
    };
    let code = run_in_task::<TurmoilTransport>(task, inputs, stop).await?;
    node.exits.borrow_mut().push(code);
    Ok(())
}

fn broker_config(plan: &Plan, node: NodeId, rng: &mut Rng) -> BrokerConfig {
    let mut config = BrokerConfig::single_node(&host_name(node), KAFKA_PORT);
    config.node_id = node;
    config.cluster = plan
        .nodes
        .iter()
        .map(|&id| BrokerAddress {
            node_id: id,
            host: host_name(id),
            port: KAFKA_PORT,
            rack: None,
        })
        .collect();
    config.rng_seed = rng.next_u64();
    config
}

/// Why a node is down and when it comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Down {
    /// Asked to stop at this time; not yet stopped.
    Stopping { asked_at: u64, restart_after: u64 },
    /// Stopped or crashed; restarts at this time.
    Until(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetworkFault {
    Partition,
    OneWay,
    Hold,
}

struct Nemesis {
    rng: Rng,
    plan: Plan,
    hosts: Vec<String>,
    network: Option<(NetworkFault, u64)>,
    next_network_at: u64,
    next_node_fault_at: u64,
    down: BTreeMap<NodeId, Down>,
    healed: bool,
    /// The plan's faults are its script's, and no random ones.
    scripted: bool,
    failures: Vec<String>,
    counts: BTreeMap<&'static str, u64>,
}

impl Nemesis {
    fn new(plan: &Plan, rng: Rng) -> Nemesis {
        let mut hosts: Vec<String> = plan.nodes.iter().map(|&n| host_name(n)).collect();
        hosts.push(CLIENTS_HOST.to_string());
        Nemesis {
            rng,
            plan: plan.clone(),
            hosts,
            network: None,
            next_network_at: 1_500,
            next_node_fault_at: 2_000,
            down: BTreeMap::new(),
            healed: false,
            scripted: !plan.script.is_empty(),
            failures: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn minority(&self) -> usize {
        (self.plan.nodes.len() - 1) / 2
    }

    fn heal_network(&mut self, sim: &mut turmoil::Sim<'_>, trace: &RefCell<Trace>, now: u64) {
        let Some((fault, _)) = self.network.take() else {
            return;
        };
        for a in 0..self.hosts.len() {
            for b in a + 1..self.hosts.len() {
                match fault {
                    NetworkFault::Hold => {
                        sim.release(self.hosts[a].as_str(), self.hosts[b].as_str())
                    }
                    NetworkFault::Partition | NetworkFault::OneWay => {
                        sim.repair(self.hosts[a].as_str(), self.hosts[b].as_str())
                    }
                }
            }
        }
        trace.borrow_mut().fault(now, &format!("heal {fault:?}"));
    }

    fn start_network_fault(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        trace: &RefCell<Trace>,
        now: u64,
    ) {
        let mut kinds = Vec::new();
        if self.plan.faults.partitions {
            kinds.push(NetworkFault::Partition);
        }
        if self.plan.faults.one_way {
            kinds.push(NetworkFault::OneWay);
        }
        if self.plan.faults.holds {
            kinds.push(NetworkFault::Hold);
        }
        let Some(&fault) = self.rng.pick(&kinds) else {
            return;
        };
        // Every host, the clients' too, lands on one side at random.
        let mut side_a = Vec::new();
        let mut side_b = Vec::new();
        for host in &self.hosts {
            if self.rng.chance(0.5) {
                side_a.push(host.clone());
            } else {
                side_b.push(host.clone());
            }
        }
        if side_a.is_empty() || side_b.is_empty() {
            let moved = self.rng.range(0, self.hosts.len() as u64) as usize;
            side_a = vec![self.hosts[moved].clone()];
            side_b = self
                .hosts
                .iter()
                .filter(|h| **h != side_a[0])
                .cloned()
                .collect();
        }
        for a in &side_a {
            for b in &side_b {
                match fault {
                    NetworkFault::Partition => sim.partition(a.as_str(), b.as_str()),
                    NetworkFault::OneWay => sim.partition_oneway(a.as_str(), b.as_str()),
                    NetworkFault::Hold => sim.hold(a.as_str(), b.as_str()),
                }
            }
        }
        let lasts = self.rng.range(200, 4_000);
        self.network = Some((fault, now + lasts));
        self.count(match fault {
            NetworkFault::Partition => "partitions",
            NetworkFault::OneWay => "one-way partitions",
            NetworkFault::Hold => "holds",
        });
        trace.borrow_mut().fault(
            now,
            &format!("{fault:?} {side_a:?} | {side_b:?} for {lasts} ms"),
        );
    }

    fn start_node_fault(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &BTreeMap<NodeId, NodeHandle>,
        trace: &RefCell<Trace>,
        now: u64,
    ) {
        if self.down.len() >= self.minority() {
            return;
        }
        let up: Vec<NodeId> = self
            .plan
            .nodes
            .iter()
            .copied()
            .filter(|n| !self.down.contains_key(n))
            .collect();
        let Some(&node) = self.rng.pick(&up) else {
            return;
        };
        let downtime = self.rng.range(300, 4_000);
        let clean = match (self.plan.faults.crashes, self.plan.faults.clean_restarts) {
            (true, true) => self.rng.chance(0.4),
            (false, true) => true,
            (true, false) => false,
            (false, false) => return,
        };
        let name = host_name(node);
        if clean {
            let stop = nodes[&node].stop.borrow_mut().take();
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
            self.down.insert(
                node,
                Down::Stopping {
                    asked_at: now,
                    restart_after: downtime,
                },
            );
            self.count("clean stops");
            trace.borrow_mut().fault(now, &format!("stop {name}"));
        } else {
            // Power loss: the process and everything unsynced are gone.
            sim.crash(name.as_str());
            let report = nodes[&node].disk.with(|disk| disk.crash());
            self.down.insert(node, Down::Until(now + downtime));
            self.count("crashes");
            trace
                .borrow_mut()
                .fault(now, &format!("crash {name} for {downtime} ms: {report:?}"));
        }
    }

    fn follow_script(&mut self, sim: &mut turmoil::Sim<'_>, trace: &RefCell<Trace>, now: u64) {
        while let Some((at, fault)) = self.plan.script.first().cloned() {
            if at > now {
                return;
            }
            self.plan.script.remove(0);
            let nodes: Vec<String> = self.plan.nodes.iter().map(|&n| host_name(n)).collect();
            for a in 0..self.hosts.len() {
                for b in a + 1..self.hosts.len() {
                    let (a, b) = (self.hosts[a].as_str(), self.hosts[b].as_str());
                    match fault {
                        Scripted::PartitionNodes => {
                            if nodes.iter().any(|n| n == a) && nodes.iter().any(|n| n == b) {
                                sim.partition(a, b);
                            }
                        }
                        Scripted::IsolateClients => {
                            if a == CLIENTS_HOST || b == CLIENTS_HOST {
                                sim.partition(a, b);
                            }
                        }
                        Scripted::RepairAll => sim.repair(a, b),
                    }
                }
            }
            self.count("scripted faults");
            trace.borrow_mut().fault(now, &format!("{fault:?}"));
        }
    }

    /// Called after every step.
    fn step(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        nodes: &BTreeMap<NodeId, NodeHandle>,
        trace: &RefCell<Trace>,
        now: u64,
    ) {
        // Nodes that stopped: asked to, or by themselves (a failed disk).
        for (&node, handle) in nodes {
            let name = host_name(node);
            let running = sim.is_host_running(name.as_str());
            match self.down.get(&node).copied() {
                Some(Down::Stopping {
                    asked_at,
                    restart_after,
                }) => {
                    if !running {
                        let exits = handle.exits.borrow().clone();
                        trace
                            .borrow_mut()
                            .fault(now, &format!("{name} stopped, exits {exits:?}"));
                        if exits.last() != Some(&0) {
                            self.failures.push(format!(
                                "{name} asked to stop exited with {:?}, not 0",
                                exits.last()
                            ));
                        }
                        // The process is gone; the kernel still performs
                        // what it wrote.
                        sim.crash(name.as_str());
                        handle.disk.finish_queued();
                        self.down.insert(node, Down::Until(now + restart_after));
                    } else if now >= asked_at + STOP_WAIT_MS {
                        self.failures.push(format!(
                            "{name} was asked to stop at {asked_at} ms and still runs at {now} ms"
                        ));
                        sim.crash(name.as_str());
                        handle.disk.with(|disk| disk.crash());
                        self.down.insert(node, Down::Until(now + restart_after));
                    }
                }
                Some(Down::Until(at)) if now >= at || self.healed => {
                    sim.bounce(name.as_str());
                    self.down.remove(&node);
                    trace.borrow_mut().fault(now, &format!("restart {name}"));
                }
                None if !running => {
                    let code = handle.exits.borrow().last().copied();
                    trace
                        .borrow_mut()
                        .fault(now, &format!("{name} exited by itself with {code:?}"));
                    let expected = code == Some(EXIT_DISK_FAILED)
                        && self.plan.faults.faulty_disk == Some(node);
                    if !expected {
                        self.failures
                            .push(format!("{name} exited by itself with {code:?}"));
                    }
                    self.count("disk failure exits");
                    // As a crash: what a failed fsync should have made
                    // durable may be lost.
                    sim.crash(name.as_str());
                    handle.disk.with(|disk| disk.crash());
                    let downtime = self.rng.range(100, 2_000);
                    self.down.insert(node, Down::Until(now + downtime));
                }
                Some(Down::Until(_)) | None => {}
            }
        }
        if self.scripted {
            self.follow_script(sim, trace, now);
            return;
        }
        if self.healed {
            return;
        }
        if now >= self.plan.safety_ms {
            self.healed = true;
            self.heal_network(sim, trace, now);
            for handle in nodes.values() {
                handle.disk.with(|disk| disk.heal());
            }
            trace.borrow_mut().fault(now, "heal everything");
            return;
        }
        if let Some((_, until)) = self.network {
            if now >= until {
                self.heal_network(sim, trace, now);
                self.next_network_at = now + self.rng.range(0, 2_000);
            }
        } else if now >= self.next_network_at {
            self.start_network_fault(sim, trace, now);
            if self.network.is_none() {
                self.next_network_at = u64::MAX;
            }
        }
        if now >= self.next_node_fault_at {
            self.start_node_fault(sim, nodes, trace, now);
            self.next_node_fault_at = now + self.rng.range(500, 5_000);
        }
    }
}

/// Runs one seed to its end.
pub fn run_seed(seed: u64) -> Outcome {
    let plan = Plan::draw(seed);
    run_plan(&plan)
}

pub fn run_plan(plan: &Plan) -> Outcome {
    let mut rng = Rng::new(plan.seed);
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(rng.next_u64())
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .tick_duration(Duration::from_millis(TICK_MS))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(plan.max_latency_ms))
        .simulation_duration(Duration::from_millis(
            plan.safety_ms + LIVENESS_MS + OVERRUN_MS + plan.linger_ms,
        ))
        // Room for every client's connection attempts while a node's
        // listener waits for its metadata leader.
        .tcp_capacity(1_024);
    let mut sim = builder.build();
    let trace = Rc::new(RefCell::new(Trace::new()));
    let mut nodes = BTreeMap::new();
    for &node in &plan.nodes {
        let mut faults = DiskFaults {
            torn_writes: plan.faults.torn_writes,
            ..DiskFaults::default()
        };
        if plan.faults.faulty_disk == Some(node) {
            faults.sync_failure_chance = 0.002;
            faults.write_full_chance = 0.001;
            faults.slow_op_chance = 0.01;
        }
        let handle = NodeHandle {
            config: broker_config(plan, node, &mut rng),
            addresses: NodeAddresses {
                node_id: node,
                kafka_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, KAFKA_PORT)),
                rpc_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, RPC_PORT)),
                peers: plan
                    .nodes
                    .iter()
                    .filter(|&&peer| peer != node)
                    .map(|&peer| (peer, format!("{}:{RPC_PORT}", host_name(peer))))
                    .collect(),
            },
            disk: SharedDisk::new(SimDisk::new(rng.fork(node), faults)),
            boots: Rc::new(Cell::new(0)),
            stop: Rc::new(RefCell::new(None)),
            exits: Rc::new(RefCell::new(Vec::new())),
        };
        let software = handle.clone();
        sim.host(host_name(node).as_str(), move || {
            node_software(software.clone())
        });
        nodes.insert(node, handle);
    }
    let workload = KafkaWorkload::new(&plan.kafka, &plan.nodes, None, rng.fork(100));
    let report = Rc::new(RefCell::new(ClientReport::default()));
    let schedule = ClientSchedule {
        safety_end_ms: plan.safety_ms,
        liveness_deadline_ms: plan.safety_ms + LIVENESS_MS,
        linger_ms: plan.linger_ms,
    };
    sim.client(
        CLIENTS_HOST,
        run_clients(
            workload,
            plan.nodes.clone(),
            schedule,
            Rc::clone(&trace),
            Rc::clone(&report),
        ),
    );
    let mut nemesis = Nemesis::new(plan, rng.fork(200));
    let mut failures = Vec::new();
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                failures.push(format!("the simulation stopped: {error}"));
                break;
            }
        }
        let now = sim.elapsed().as_millis() as u64;
        nemesis.step(&mut sim, &nodes, &trace, now);
    }
    failures.append(&mut nemesis.failures);
    let report = report.borrow();
    if let Some(failure) = &report.liveness_failure {
        failures.push(format!("liveness: {failure}"));
        failures.extend(report.node_views.iter().map(|view| format!("  {view}")));
    }
    failures.extend(report.violations.iter().map(|v| v.to_string()));
    let stats = report.stats.unwrap_or_default();
    let counts: Vec<String> = nemesis
        .counts
        .iter()
        .map(|(what, count)| format!("{count} {what}"))
        .collect();
    let trace = trace.borrow();
    let summary = format!(
        "seed {}: trace {:016x}, {} nodes, {} ms simulated, {} acknowledged produces ({} unknown), {} records consumed, {} in the final logs; faults: {}",
        plan.seed,
        trace.hash(),
        plan.nodes.len(),
        sim.elapsed().as_millis(),
        stats.produces_acknowledged,
        stats.produces_unknown,
        stats.records_consumed,
        report.final_records,
        if counts.is_empty() { "none".to_string() } else { counts.join(", ") },
    );
    Outcome {
        seed: plan.seed,
        trace_hash: trace.hash(),
        events: trace.events(),
        failures,
        summary,
        last_lines: trace.last_lines(),
        streams: report.streams.clone(),
    }
}
