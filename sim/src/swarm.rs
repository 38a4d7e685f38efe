//! Swarm testing: every seed picks its own cluster shape, its own subset of
//! fault classes and their intensities. A plan is a pure function of the
//! seed; the runner draws the fault times from its own streams.

use std::fmt;

use runnel_io::{GroupId, NodeId, Rng};

use crate::clock::DRIFT_PPM_MAX;
use crate::disk::DiskFaults;
use crate::kafka_workload::KafkaPlan;
use crate::network::LinkFaults;

/// The stream of the seed's root `Rng` the plan is drawn from.
pub const PLAN_STREAM: u64 = 0x504c_414e;
/// The stream the layout (records or broker) is drawn from.
pub const LAYOUT_STREAM: u64 = 0x4c41_594f;
/// The stream the bound on the log kept below snapshots is drawn from.
pub const RETAINED_STREAM: u64 = 0x5245_5441;
/// The stream misdirected writes are drawn from: added after the others, so
/// that every earlier draw of a seed stayed as it was.
pub const MISDIRECT_STREAM: u64 = 0x4d49_5344;
/// The stream the age after which segments roll is drawn from, added after
/// the others for the same reason.
pub const SEGMENT_AGE_STREAM: u64 = 0x5345_4741;
/// Groups a plan may create.
pub const GROUPS_MAX: u64 = 4;
/// Voters of every group at the start.
pub const GROUP_VOTERS: usize = 3;
/// Writing clients per group a plan may choose.
pub const WRITERS_PER_GROUP_MAX: u64 = 8;
/// The largest forward jump of a node's clock.
pub const CLOCK_JUMP_MS_MAX: u64 = 20_000;
/// The largest skew between a node's clock and the others.
pub const CLOCK_SKEW_MS_MAX: u64 = 3_600_000;

/// The fault classes a seed may enable, and what the runner counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    Loss,
    Duplication,
    Delay,
    Partition,
    OneWay,
    Isolate,
    Clog,
    Crash,
    Pause,
    ClockSkew,
    ClockDrift,
    ClockJump,
    TornWrite,
    ConfigChange,
    LeaderTransfer,
    SlowDisk,
    CorruptAtRest,
    SyncFailure,
    DiskFull,
    LatentReadError,
    MisdirectedWrite,
}

pub const FAULT_CLASSES: [FaultClass; 21] = [
    FaultClass::Loss,
    FaultClass::Duplication,
    FaultClass::Delay,
    FaultClass::Partition,
    FaultClass::OneWay,
    FaultClass::Isolate,
    FaultClass::Clog,
    FaultClass::Crash,
    FaultClass::Pause,
    FaultClass::ClockSkew,
    FaultClass::ClockDrift,
    FaultClass::ClockJump,
    FaultClass::TornWrite,
    FaultClass::ConfigChange,
    FaultClass::LeaderTransfer,
    FaultClass::SlowDisk,
    FaultClass::CorruptAtRest,
    FaultClass::SyncFailure,
    FaultClass::DiskFull,
    FaultClass::LatentReadError,
    FaultClass::MisdirectedWrite,
];

impl FaultClass {
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Loss => "loss",
            FaultClass::Duplication => "duplication",
            FaultClass::Delay => "delay",
            FaultClass::Partition => "partition",
            FaultClass::OneWay => "one-way",
            FaultClass::Isolate => "isolate",
            FaultClass::Clog => "clog",
            FaultClass::Crash => "crash",
            FaultClass::Pause => "pause",
            FaultClass::ClockSkew => "clock-skew",
            FaultClass::ClockDrift => "clock-drift",
            FaultClass::ClockJump => "clock-jump",
            FaultClass::TornWrite => "torn-write",
            FaultClass::ConfigChange => "config-change",
            FaultClass::LeaderTransfer => "leader-transfer",
            FaultClass::SlowDisk => "slow-disk",
            FaultClass::CorruptAtRest => "corrupt-at-rest",
            FaultClass::SyncFailure => "sync-failure",
            FaultClass::DiskFull => "disk-full",
            FaultClass::LatentReadError => "latent-read-error",
            FaultClass::MisdirectedWrite => "misdirected-write",
        }
    }

    fn slot(self) -> usize {
        FAULT_CLASSES
            .iter()
            .position(|class| *class == self)
            .expect("listed")
    }
}

/// Faults injected, per class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    counts: [u64; FAULT_CLASSES.len()],
}

impl FaultCounts {
    pub fn add(&mut self, class: FaultClass, count: u64) {
        self.counts[class.slot()] += count;
    }

    pub fn get(&self, class: FaultClass) -> u64 {
        self.counts[class.slot()]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &FaultCounts) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for class in FAULT_CLASSES {
            let count = self.get(class);
            if count > 0 {
                if !first {
                    write!(f, " ")?;
                }
                first = false;
                write!(f, "{}={}", class.name(), count)?;
            }
        }
        if first {
            write!(f, "none")?;
        }
        Ok(())
    }
}

/// Episodes of a fault: a quiet gap, then the fault for a duration, repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Episodes {
    pub gap_ms: (u64, u64),
    pub duration_ms: (u64, u64),
}

impl Episodes {
    fn draw(rng: &mut Rng, gap_ms: (u64, u64), duration_ms: (u64, u64)) -> Episodes {
        let gap_low = rng.range(gap_ms.0, gap_ms.1 + 1);
        let gap_high = rng.range(gap_low, gap_ms.1 + 1);
        let duration_low = rng.range(duration_ms.0, duration_ms.1 + 1);
        let duration_high = rng.range(duration_low, duration_ms.1 + 1);
        Episodes {
            gap_ms: (gap_low, gap_high),
            duration_ms: (duration_low, duration_high),
        }
    }
}

impl fmt::Display for Episodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every {}..{} ms for {}..{} ms",
            self.gap_ms.0, self.gap_ms.1, self.duration_ms.0, self.duration_ms.1
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPlan {
    pub id: GroupId,
    pub voters: Vec<NodeId>,
}

/// The node configuration every node of the run gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeTiming {
    pub tick_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub snapshot_interval_entries: u64,
    pub segment_bytes_max: u64,
    /// Record layout: the bytes of log each group keeps below its snapshot
    /// for lagging followers (`Node::set_retained_log_bytes_max`); the
    /// broker layout runs the node's default.
    pub retained_log_bytes_max: u64,
    /// The age after which a group's last segment rolls at its next append
    /// (`Node::set_segment_ms`, `BrokerConfig::segment_ms`).
    pub segment_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadPlan {
    pub writers_per_group: u64,
    pub readers_per_group: u64,
    /// A client waits up to this long between two operations.
    pub think_time_ms_max: u64,
    /// A client gives up on a request after this long and retries elsewhere.
    pub request_timeout_ms: u64,
    /// Bytes after the 8-byte value id in every appended value.
    pub padding_bytes: u64,
    /// Client traffic is reliable but delayed by base + jitter.
    pub client_delay_base_ms: u64,
    pub client_delay_jitter_ms: u64,
}

/// One node's clock: origin (skew) and drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockPlan {
    pub origin_ms: u64,
    pub drift_ppm: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    pub seed: u64,
    pub nodes: Vec<NodeId>,
    pub groups: Vec<GroupPlan>,
    pub timing: NodeTiming,
    pub workload: WorkloadPlan,
    /// Loss, duplication and delay in force during the safety phase.
    pub link: LinkFaults,
    pub loss: bool,
    pub duplication: bool,
    pub delay: bool,
    pub partition: Option<Episodes>,
    pub one_way: Option<Episodes>,
    pub isolate: Option<Episodes>,
    pub clog: Option<Episodes>,
    /// Crash, then restart after the episode's duration.
    pub crash: Option<Episodes>,
    /// Pause, then resume after the episode's duration.
    pub pause: Option<Episodes>,
    /// How many nodes may be crashed or paused at once.
    pub down_max: usize,
    pub clock_skew: bool,
    pub clock_drift: bool,
    pub clocks: Vec<ClockPlan>,
    /// Clock jumps: a gap, then a jump of up to `duration_ms.1` ms.
    pub clock_jumps: Option<Episodes>,
    pub disk: DiskFaults,
    /// An operator's membership changes (5-node clusters only).
    pub config_changes: Option<Episodes>,
    pub leader_transfers: Option<Episodes>,
    /// The fault atlas for faults that destroy or refuse data: at most one
    /// node's disk suffers them. Every group has at least three voters, so
    /// that node is a minority of each, and a majority of every group keeps
    /// a good copy of every committed entry.
    pub faulty_disk: Option<FaultyDisk>,
    /// The broker layout: the metadata group and Kafka partitions on every
    /// node, driven by Kafka clients (else the record layout of `groups`).
    pub kafka: Option<KafkaPlan>,
}

/// The one disk (by node index) that may lose data at rest or refuse writes.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultyDisk {
    pub node: usize,
    /// Flip a bit at rest when the node crashes (sometimes): in a vote
    /// record, a snapshot, or a log segment other than the two newest of its
    /// group, since damage to the very last frame is indistinguishable from
    /// a torn write (docs/protocol.md §10.3, residual risk R3).
    pub corrupt_at_rest: bool,
    pub sync_failure_chance: f64,
    pub write_full_chance: f64,
    /// Give a file a latent sector error when the node crashes (sometimes),
    /// under the same rule as `corrupt_at_rest`: its reads fail until it is
    /// written again or deleted.
    pub latent_read_errors: bool,
    /// Find a misdirected write when the node crashes (sometimes): a sector
    /// meant for one eligible file (same rule as `corrupt_at_rest`) landed
    /// in another place of an eligible file, often at the same offset of
    /// another group's segment, and the place it was meant for kept its old
    /// contents.
    pub misdirected_writes: bool,
}

/// Enables a class of episodes in half of the seeds.
fn episodes(rng: &mut Rng, gap: (u64, u64), duration: (u64, u64)) -> Option<Episodes> {
    if rng.chance(0.5) {
        Some(Episodes::draw(rng, gap, duration))
    } else {
        None
    }
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    *rng.pick(items).expect("non-empty")
}

impl FaultPlan {
    pub fn from_seed(seed: u64) -> FaultPlan {
        let mut rng = Rng::new(seed).fork(PLAN_STREAM);
        let node_count: u64 = if rng.chance(0.5) { 3 } else { 5 };
        let nodes: Vec<NodeId> = (1..=node_count).collect();
        let group_count = rng.range(1, GROUPS_MAX + 1);
        let groups = (1..=group_count)
            .map(|id| {
                let mut pool = nodes.clone();
                let mut voters = Vec::new();
                while voters.len() < GROUP_VOTERS {
                    let at = rng.range(0, pool.len() as u64) as usize;
                    voters.push(pool.remove(at));
                }
                voters.sort_unstable();
                GroupPlan { id, voters }
            })
            .collect();

        let election_timeout_ms = rng.range(150, 601);
        let mut timing = NodeTiming {
            tick_interval_ms: 10,
            election_timeout_ms,
            heartbeat_interval_ms: election_timeout_ms / rng.range(3, 7),
            snapshot_interval_entries: pick(&mut rng, &[16, 64, 256, 1024]),
            segment_bytes_max: pick(&mut rng, &[4 << 10, 64 << 10, 1 << 20]),
            retained_log_bytes_max: runnel_core::RETAINED_LOG_BYTES_MAX,
            segment_ms: runnel_core::SEGMENT_MS_DEFAULT,
        };
        let loss = rng.chance(0.5);
        let duplication = rng.chance(0.5);
        let delay = rng.chance(0.5);
        let link = LinkFaults {
            loss: if loss { 0.002 + 0.1 * rng.unit() } else { 0.0 },
            duplication: if duplication {
                0.001 + 0.05 * rng.unit()
            } else {
                0.0
            },
            delay_base_ms: if delay { rng.range(1, 21) } else { 1 },
            delay_jitter_ms: if delay {
                rng.range(1, 101)
            } else {
                rng.range(0, 3)
            },
        };
        // Enough writers for about a thousand acknowledged appends a run even
        // on slow links: more when messages are delayed or there is one group.
        let mut writers = rng.range(2, 5);
        if delay {
            writers *= 2;
        }
        if group_count == 1 {
            writers *= 2;
        }
        let workload = WorkloadPlan {
            writers_per_group: writers.min(WRITERS_PER_GROUP_MAX),
            readers_per_group: rng.range(0, 2),
            think_time_ms_max: rng.range(0, 21),
            request_timeout_ms: (3 * election_timeout_ms).max(1_000),
            padding_bytes: rng.range(0, 57),
            client_delay_base_ms: rng.range(1, 6),
            client_delay_jitter_ms: rng.range(0, 11),
        };
        let partition = episodes(&mut rng, (1_000, 10_000), (200, 8_000));
        let one_way = episodes(&mut rng, (1_000, 10_000), (200, 8_000));
        let isolate = episodes(&mut rng, (1_000, 10_000), (200, 8_000));
        let clog = episodes(&mut rng, (500, 8_000), (50, 3_000));
        let crash = episodes(&mut rng, (1_000, 10_000), (50, 10_000));
        let pause = episodes(&mut rng, (1_000, 10_000), (50, 5_000));
        let down_max = if rng.chance(0.25) {
            nodes.len()
        } else {
            nodes.len() / 2
        };

        let clock_skew = rng.chance(0.5);
        let clock_drift = rng.chance(0.5);
        let skew_max = if clock_skew {
            rng.range(1, CLOCK_SKEW_MS_MAX + 1)
        } else {
            0
        };
        let drift_max = if clock_drift {
            rng.range(1_000, DRIFT_PPM_MAX as u64 + 1) as i64
        } else {
            0
        };
        let clocks = nodes
            .iter()
            .map(|_| ClockPlan {
                origin_ms: CLOCK_SKEW_MS_MAX + rng.range(0, 2 * skew_max + 1) - skew_max,
                drift_ppm: if drift_max > 0 {
                    rng.range(0, 2 * drift_max as u64 + 1) as i64 - drift_max
                } else {
                    0
                },
            })
            .collect();
        let clock_jumps = episodes(&mut rng, (2_000, 20_000), (10, CLOCK_JUMP_MS_MAX));

        let disk = DiskFaults {
            op_latency_ms: (0, rng.range(1, 4)),
            sync_latency_ms: (1, rng.range(2, 12)),
            torn_writes: rng.chance(0.5),
            ..DiskFaults::default()
        };
        let config_changes = if node_count == 5 {
            episodes(&mut rng, (2_000, 10_000), (0, 0))
        } else {
            None
        };
        let leader_transfers = episodes(&mut rng, (1_000, 10_000), (0, 0));
        // Drawn last, so that adding them left the other draws of a seed as
        // they were.
        let mut disk = disk;
        if rng.chance(0.5) {
            disk.slow_op_chance = 0.001 + 0.01 * rng.unit();
        }
        let faulty_disk = if rng.chance(0.5) {
            let chance = |rng: &mut Rng| {
                if rng.chance(0.5) {
                    0.0005 + 0.005 * rng.unit()
                } else {
                    0.0
                }
            };
            Some(FaultyDisk {
                node: rng.range(0, node_count) as usize,
                corrupt_at_rest: rng.chance(0.7),
                sync_failure_chance: chance(&mut rng),
                write_full_chance: chance(&mut rng),
                latent_read_errors: rng.chance(0.5),
                misdirected_writes: Rng::new(seed).fork(MISDIRECT_STREAM).chance(0.5),
            })
        } else {
            None
        };

        // The layout is drawn from a stream of its own, so that adding it
        // left every other draw of a seed as it was.
        let mut layout_rng = Rng::new(seed).fork(LAYOUT_STREAM);
        let kafka = if layout_rng.chance(0.5) {
            Some(KafkaPlan::draw(
                &mut layout_rng,
                nodes.len(),
                timing.election_timeout_ms,
            ))
        } else {
            None
        };

        // From a stream of its own too: none (every follower behind a
        // snapshot gets the snapshot), a little (both ways of catching up
        // mix), or the default (followers catch up from the log).
        let mut retained_rng = Rng::new(seed).fork(RETAINED_STREAM);
        timing.retained_log_bytes_max = pick(
            &mut retained_rng,
            &[0, 16 << 10, runnel_core::RETAINED_LOG_BYTES_MAX],
        );
        // From a stream of its own as well: the default (no segment ever
        // gets that old in a run), or ages short enough that segments roll
        // by age, under every fault, many times a run.
        let mut segment_age_rng = Rng::new(seed).fork(SEGMENT_AGE_STREAM);
        timing.segment_ms = pick(
            &mut segment_age_rng,
            &[
                runnel_core::SEGMENT_MS_DEFAULT,
                runnel_core::SEGMENT_MS_MIN,
                3 * runnel_core::SEGMENT_MS_MIN,
            ],
        );

        FaultPlan {
            seed,
            nodes,
            groups,
            timing,
            workload,
            link,
            loss,
            duplication,
            delay,
            partition,
            one_way,
            isolate,
            clog,
            crash,
            pause,
            down_max,
            clock_skew,
            clock_drift,
            clocks,
            clock_jumps,
            disk,
            config_changes,
            leader_transfers,
            faulty_disk,
            kafka,
        }
    }

    /// The faults of node `index`'s disk: the plan's, plus the atlas's for
    /// the faulty disk.
    pub fn disk_faults(&self, index: usize) -> DiskFaults {
        let mut faults = self.disk.clone();
        if let Some(faulty) = self.faulty_disk.as_ref().filter(|f| f.node == index) {
            faults.sync_failure_chance = faulty.sync_failure_chance;
            faults.write_full_chance = faulty.write_full_chance;
        }
        faults
    }

    /// The fault classes this plan enables.
    pub fn enabled(&self) -> Vec<FaultClass> {
        let flags = [
            (FaultClass::Loss, self.loss),
            (FaultClass::Duplication, self.duplication),
            (FaultClass::Delay, self.delay),
            (FaultClass::Partition, self.partition.is_some()),
            (FaultClass::OneWay, self.one_way.is_some()),
            (FaultClass::Isolate, self.isolate.is_some()),
            (FaultClass::Clog, self.clog.is_some()),
            (FaultClass::Crash, self.crash.is_some()),
            (FaultClass::Pause, self.pause.is_some()),
            (FaultClass::ClockSkew, self.clock_skew),
            (FaultClass::ClockDrift, self.clock_drift),
            (FaultClass::ClockJump, self.clock_jumps.is_some()),
            (FaultClass::TornWrite, self.disk.torn_writes),
            (
                FaultClass::ConfigChange,
                match &self.kafka {
                    // The broker layout's membership changes are moves of
                    // partitions' replicas.
                    Some(kafka) => kafka.reassign_gap_ms.is_some(),
                    None => self.config_changes.is_some(),
                },
            ),
            (
                FaultClass::LeaderTransfer,
                self.leader_transfers.is_some() && self.kafka.is_none(),
            ),
            (FaultClass::SlowDisk, self.disk.slow_op_chance > 0.0),
            (
                FaultClass::CorruptAtRest,
                self.faulty_disk.as_ref().is_some_and(|f| f.corrupt_at_rest),
            ),
            (
                FaultClass::SyncFailure,
                self.faulty_disk
                    .as_ref()
                    .is_some_and(|f| f.sync_failure_chance > 0.0),
            ),
            (
                FaultClass::DiskFull,
                self.faulty_disk
                    .as_ref()
                    .is_some_and(|f| f.write_full_chance > 0.0),
            ),
            (
                FaultClass::LatentReadError,
                self.faulty_disk
                    .as_ref()
                    .is_some_and(|f| f.latent_read_errors),
            ),
            (
                FaultClass::MisdirectedWrite,
                self.faulty_disk
                    .as_ref()
                    .is_some_and(|f| f.misdirected_writes),
            ),
        ];
        flags
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(class, _)| class)
            .collect()
    }
}

fn show(f: &mut fmt::Formatter<'_>, name: &str, episodes: &Option<Episodes>) -> fmt::Result {
    match episodes {
        Some(episodes) => writeln!(f, "  {name:<17} {episodes}"),
        None => writeln!(f, "  {name:<17} off"),
    }
}

/// Episodes without a duration: only their gaps matter.
fn show_gaps(f: &mut fmt::Formatter<'_>, name: &str, episodes: &Option<Episodes>) -> fmt::Result {
    match episodes {
        Some(e) => writeln!(f, "  {name:<17} every {}..{} ms", e.gap_ms.0, e.gap_ms.1),
        None => writeln!(f, "  {name:<17} off"),
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}", self.seed)?;
        writeln!(f, "  nodes             {:?}", self.nodes)?;
        match &self.kafka {
            Some(k) => writeln!(
                f,
                "  layout            broker: {}+{} topics of 1..={} partitions, replication factor {}{}, {} producers, {} consumers ({}), think 0..{} ms, timeout {} ms",
                k.topics_at_start,
                k.topics_later,
                k.partitions_max,
                k.replication_factor,
                if k.racks { ", 3 racks" } else { "" },
                k.producers,
                k.consumers,
                if k.read_committed { "read_committed" } else { "read_uncommitted" },
                k.think_time_ms_max,
                k.request_timeout_ms
            )?,
            None => {
                writeln!(f, "  layout            records")?;
                for group in &self.groups {
                    writeln!(f, "  group {:<11} voters {:?}", group.id, group.voters)?;
                }
            }
        }
        let t = &self.timing;
        writeln!(
            f,
            "  timing            tick {} ms, election timeout {} ms, heartbeat {} ms, snapshot every {} entries, segments {} bytes or {} ms, log kept below snapshots {} bytes",
            t.tick_interval_ms,
            t.election_timeout_ms,
            t.heartbeat_interval_ms,
            t.snapshot_interval_entries,
            t.segment_bytes_max,
            t.segment_ms,
            t.retained_log_bytes_max
        )?;
        let w = &self.workload;
        writeln!(
            f,
            "  workload          {} writers + {} readers per group, think 0..{} ms, timeout {} ms, values 8+{} bytes, client delay {}+0..{} ms",
            w.writers_per_group,
            w.readers_per_group,
            w.think_time_ms_max,
            w.request_timeout_ms,
            w.padding_bytes,
            w.client_delay_base_ms,
            w.client_delay_jitter_ms
        )?;
        let enabled: Vec<&str> = self.enabled().iter().map(|c| c.name()).collect();
        writeln!(f, "  enabled           {}", enabled.join(" "))?;
        writeln!(
            f,
            "  link              loss {:.4}, duplication {:.4}, delay {}+0..{} ms",
            self.link.loss,
            self.link.duplication,
            self.link.delay_base_ms,
            self.link.delay_jitter_ms
        )?;
        show(f, "partition", &self.partition)?;
        show(f, "one-way", &self.one_way)?;
        show(f, "isolate", &self.isolate)?;
        show(f, "clog", &self.clog)?;
        show(f, "crash+restart", &self.crash)?;
        show(f, "pause+resume", &self.pause)?;
        writeln!(f, "  down at once      up to {}", self.down_max)?;
        let clocks: Vec<String> = self
            .nodes
            .iter()
            .zip(&self.clocks)
            .map(|(node, clock)| {
                format!(
                    "n{node}: origin {} ms drift {:+} ppm",
                    clock.origin_ms, clock.drift_ppm
                )
            })
            .collect();
        writeln!(f, "  clocks            {}", clocks.join(", "))?;
        match &self.clock_jumps {
            Some(e) => writeln!(
                f,
                "  clock jumps       every {}..{} ms, forward by {}..{} ms",
                e.gap_ms.0, e.gap_ms.1, e.duration_ms.0, e.duration_ms.1
            )?,
            None => writeln!(f, "  clock jumps       off")?,
        }
        writeln!(
            f,
            "  disk              op latency {:?} ms, sync latency {:?} ms, torn writes {}, slow ops {:.4}",
            self.disk.op_latency_ms,
            self.disk.sync_latency_ms,
            if self.disk.torn_writes { "on" } else { "off" },
            self.disk.slow_op_chance
        )?;
        match &self.faulty_disk {
            Some(faulty) => writeln!(
                f,
                "  faulty disk       n{}: corruption at rest {}, latent read errors {}, misdirected writes {}, sync failures {:.4}, disk full {:.4}",
                self.nodes[faulty.node],
                if faulty.corrupt_at_rest { "on" } else { "off" },
                if faulty.latent_read_errors { "on" } else { "off" },
                if faulty.misdirected_writes { "on" } else { "off" },
                faulty.sync_failure_chance,
                faulty.write_full_chance
            )?,
            None => writeln!(f, "  faulty disk       none")?,
        }
        show_gaps(f, "config changes", &self.config_changes)?;
        show_gaps(f, "leader transfers", &self.leader_transfers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_plan() {
        for seed in 0..50 {
            let a = FaultPlan::from_seed(seed);
            let b = FaultPlan::from_seed(seed);
            assert_eq!(a, b);
            assert_eq!(a.to_string(), b.to_string());
        }
    }

    #[test]
    fn plans_vary_across_seeds() {
        let plans: Vec<FaultPlan> = (0..200).map(FaultPlan::from_seed).collect();
        let shapes: std::collections::BTreeSet<(usize, usize)> = plans
            .iter()
            .map(|p| (p.nodes.len(), p.groups.len()))
            .collect();
        assert_eq!(shapes.len(), 8, "3 or 5 nodes, 1..=4 groups: {shapes:?}");
        for class in FAULT_CLASSES {
            let on = plans
                .iter()
                .filter(|p| p.enabled().contains(&class))
                .count();
            assert!(on > 20 && on < 180, "{} enabled in {on}/200", class.name());
        }
        let distinct: std::collections::BTreeSet<String> =
            plans.iter().map(|p| p.to_string()).collect();
        assert_eq!(distinct.len(), plans.len());
    }

    #[test]
    fn groups_have_three_distinct_voters_on_existing_nodes() {
        for seed in 0..100 {
            let plan = FaultPlan::from_seed(seed);
            for group in &plan.groups {
                assert_eq!(group.voters.len(), GROUP_VOTERS);
                let mut voters = group.voters.clone();
                voters.dedup();
                assert_eq!(voters.len(), GROUP_VOTERS);
                assert!(voters.iter().all(|v| plan.nodes.contains(v)));
            }
            if plan.nodes.len() == 3 {
                assert!(plan.config_changes.is_none());
            }
            assert!(plan.timing.heartbeat_interval_ms * 3 <= plan.timing.election_timeout_ms);
            assert!(plan
                .clocks
                .iter()
                .all(|c| c.drift_ppm.abs() <= DRIFT_PPM_MAX));
        }
    }

    #[test]
    fn display_prints_every_option() {
        let text = FaultPlan::from_seed(7).to_string();
        for word in [
            "seed 7",
            "nodes",
            "timing",
            "workload",
            "link",
            "partition",
            "one-way",
            "isolate",
            "clog",
            "crash+restart",
            "pause+resume",
            "clocks",
            "clock jumps",
            "torn writes",
            "config changes",
            "leader transfers",
        ] {
            assert!(text.contains(word), "missing {word} in\n{text}");
        }
    }
}
