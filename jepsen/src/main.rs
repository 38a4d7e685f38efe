//! `runnel-jepsen`: real `runnel serve` processes in their own network
//! namespaces, a real Kafka client (librdkafka), a nemesis drawn from a seed,
//! and the shared checkers of `crates/checkers` judging the history. See
//! `jepsen/README.md`.
//!
//! Exit codes: 0 the history is valid, 1 it is not (or the run had a
//! problem that makes it unjudgeable), 2 the harness could not run (bad
//! flags, not root, the network or the cluster would not come up), 130
//! interrupted.

mod cluster;
mod history;
mod nemesis;
mod net;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::consumer::Consumer;

use crate::cluster::Cluster;
use crate::history::Recorder;
use crate::report::{AppliedWindow, RunProblems};
use crate::workload::Workload;

/// Longest run the harness accepts, in seconds.
pub const TIME_LIMIT_S_MAX: u64 = 3_600;
/// Most keys (partitions) of the queue workload.
pub const KEYS_MAX: u32 = 64;
/// Most producer or consumer workers.
pub const WORKERS_MAX: u32 = 32;
/// How long the cluster may take to create the topic and elect its leaders.
pub const TOPIC_READY_TIMEOUT_MS: u64 = 60_000;
/// How long the final read may take.
pub const FINAL_READ_TIMEOUT_MS: u64 = 90_000;
/// The quiet time after the heal before the final read, for elections.
pub const RECOVERY_MS: u64 = 5_000;

#[derive(Parser, Debug)]
#[command(
    name = "runnel-jepsen",
    about = "Real runnel nodes in network namespaces, a librdkafka client, a nemesis, and a checker"
)]
struct Args {
    /// Nodes in the cluster (1 to 9).
    #[arg(long, default_value_t = 5)]
    nodes: u16,
    /// Seconds of workload (faults all healed before the end).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Fault kinds, comma separated: partition, kill, pause, clock (or none).
    #[arg(long, default_value = "partition,kill,pause,clock")]
    nemesis: String,
    /// The workload: queue (sends and polls with assign), plus optionally
    /// offsets (committed-offset commits and fetches) and subscribe (consumer
    /// groups), comma separated; the last two need the group coordinator.
    #[arg(long, default_value = "queue")]
    workload: String,
    /// Committed-offsets workers, with --workload queue,offsets.
    #[arg(long, default_value_t = 2)]
    offset_workers: u32,
    /// Consumer-group workers, with --workload queue,subscribe.
    #[arg(long, default_value_t = 2)]
    subscribers: u32,
    /// Count a send that timed out with librdkafka's NOT_PERSISTED status as
    /// failed rather than indeterminate. Stricter, and it finds aborted reads
    /// on runnel today (see jepsen/README.md).
    #[arg(long)]
    trust_timeouts: bool,
    /// Commits and fetches per second per offsets worker.
    #[arg(long, default_value_t = 10.0)]
    offset_rate: f64,
    /// Seeds the nemesis schedule and the workload's choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Where run folders go (one per run: <store>/<timestamp>-<seed>).
    #[arg(long, default_value = "jepsen/store")]
    store: PathBuf,
    /// The runnel binary the nodes run.
    #[arg(long)]
    runnel_bin: Option<PathBuf>,
    /// Keys (partitions of the workload's topic).
    #[arg(long, default_value_t = 6)]
    keys: u32,
    /// Replication factor of the topic (default: 3, or the node count if smaller).
    #[arg(long)]
    replication: Option<u16>,
    /// Send operations per second over all producers.
    #[arg(long, default_value_t = 120.0)]
    send_rate: f64,
    /// Producer workers.
    #[arg(long, default_value_t = 6)]
    producers: u32,
    /// Consumer workers.
    #[arg(long, default_value_t = 2)]
    consumers: u32,
    /// Poll operations per second per consumer.
    #[arg(long, default_value_t = 10.0)]
    poll_rate: f64,
}

fn default_runnel_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/runnel")
}

/// `YYYYmmddTHHMMSSZ` for a Unix time (civil-from-days, proleptic Gregorian).
fn timestamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let seconds = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        // No cleanup here: the guards inside `run` clean up what this run
        // set up, and a run refused by the lock must not touch the network
        // of the run that holds it.
        Err(error) => {
            eprintln!("runnel-jepsen: {error}");
            ExitCode::from(2)
        }
    }
}

/// Cleans the network up when dropped, so that a panic or an early return
/// leaves nothing behind.
struct NetworkGuard;

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        net::cleanup();
    }
}

/// Stops the cluster when dropped.
struct ClusterGuard(Cluster);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

fn validate(args: &Args) -> Result<Vec<String>, String> {
    if args.nodes == 0 || args.nodes > net::NODES_MAX {
        return Err(format!("--nodes must be 1 to {}", net::NODES_MAX));
    }
    if args.time_limit == 0 || args.time_limit > TIME_LIMIT_S_MAX {
        return Err(format!(
            "--time-limit must be 1 to {TIME_LIMIT_S_MAX} seconds"
        ));
    }
    let workloads: Vec<&str> = args.workload.split(',').map(str::trim).collect();
    if workloads.first() != Some(&"queue")
        || workloads
            .iter()
            .any(|name| !["queue", "offsets", "subscribe"].contains(name))
    {
        return Err(format!(
            "--workload {} is not known: queue, optionally followed by ,offsets and ,subscribe",
            args.workload
        ));
    }
    if args.subscribers > WORKERS_MAX {
        return Err(format!("--subscribers must be at most {WORKERS_MAX}"));
    }
    if args.offset_workers > WORKERS_MAX || !(args.offset_rate > 0.0 && args.offset_rate <= 1_000.0)
    {
        return Err(format!(
            "--offset-workers must be at most {WORKERS_MAX} and --offset-rate in (0, 1000]"
        ));
    }
    if args.keys == 0 || args.keys > KEYS_MAX {
        return Err(format!("--keys must be 1 to {KEYS_MAX}"));
    }
    for (name, count) in [
        ("--producers", args.producers),
        ("--consumers", args.consumers),
    ] {
        if count == 0 || count > WORKERS_MAX {
            return Err(format!("{name} must be 1 to {WORKERS_MAX}"));
        }
    }
    let rates_ok = (0.0..=10_000.0).contains(&args.send_rate)
        && args.send_rate > 0.0
        && (0.0..=1_000.0).contains(&args.poll_rate)
        && args.poll_rate > 0.0;
    if !rates_ok {
        return Err("--send-rate must be in (0, 10000] and --poll-rate in (0, 1000]".into());
    }
    let kinds: Vec<String> = args
        .nemesis
        .split(',')
        .map(|kind| kind.trim().to_string())
        .filter(|kind| !kind.is_empty() && kind != "none")
        .collect();
    for kind in &kinds {
        if !nemesis::KINDS.contains(&kind.as_str()) {
            return Err(format!(
                "--nemesis {kind} is not one of {}",
                nemesis::KINDS.join(", ")
            ));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    Ok(kinds)
}

fn create_topic(
    binary: &Path,
    bootstrap: &str,
    topic: &str,
    keys: u32,
    replication: u16,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(TOPIC_READY_TIMEOUT_MS);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let output = Command::new(binary)
            .args([
                "topic",
                "create",
                topic,
                "-p",
                &keys.to_string(),
                "-r",
                &replication.to_string(),
            ])
            .args(["-b", bootstrap])
            .output()
            .map_err(|error| format!("{}: {error}", binary.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        if output.status.success() || stderr.contains("already exists") {
            return wait_for_leaders(bootstrap, topic, keys, deadline);
        }
        last_error = stderr.trim().to_string();
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("could not create the topic: {last_error}"))
}

fn wait_for_leaders(
    bootstrap: &str,
    topic: &str,
    keys: u32,
    deadline: Instant,
) -> Result<(), String> {
    let consumer = workload::consumer(bootstrap, "jepsen-setup")?;
    while Instant::now() < deadline {
        if let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(3)) {
            let ready = metadata.topics().iter().any(|found| {
                found.name() == topic
                    && found.error().is_none()
                    && found.partitions().len() == keys as usize
                    && found
                        .partitions()
                        .iter()
                        .all(|partition| partition.leader() >= 0)
            });
            if ready {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err("the topic's partitions did not all get leaders in time".into())
}

/// Where runs lock each other out.
pub const LOCK_PATH: &str = "/run/runnel-jepsen.lock";

/// Takes the machine-wide run lock (released when the file closes, also if
/// the process dies), or fails if another run holds it.
fn lock_out_other_runs() -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(|error| format!("{LOCK_PATH}: {error}"))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!("another runnel-jepsen run holds {LOCK_PATH}"));
    }
    Ok(file)
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|error| format!("{}: {error}", path.display()))
}

fn run(args: Args) -> Result<u8, String> {
    let kinds = validate(&args)?;
    // One run at a time: a second would tear down the first's network.
    let _lock = lock_out_other_runs()?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64)
    });
    let binary = args.runnel_bin.clone().unwrap_or_else(default_runnel_bin);
    let binary = binary.canonicalize().map_err(|error| {
        format!(
            "the runnel binary {}: {error} (build it: cargo build --release --bin runnel)",
            binary.display()
        )
    })?;
    let unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let run_dir = args.store.join(format!("{}-{seed}", timestamp(unix_s)));
    std::fs::create_dir_all(&run_dir).map_err(|error| format!("{}: {error}", run_dir.display()))?;
    let run_dir = run_dir.canonicalize().map_err(|error| error.to_string())?;
    println!(
        "runnel-jepsen: seed {seed}, run folder {}",
        run_dir.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    // The first SIGINT or SIGTERM stops the run cleanly (faults healed,
    // nodes stopped, network removed, what was recorded judged); a second
    // exits at once, and the next run removes the leftovers.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .map_err(|error| error.to_string())?;
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|error| error.to_string())?;
    }

    // Whatever an interrupted run left behind goes first.
    net::cleanup();
    let _network = NetworkGuard;
    net::setup(args.nodes)?;
    let faketime = cluster::faketime_library();
    if kinds.iter().any(|kind| kind == "clock") && faketime.is_none() {
        return Err("--nemesis clock needs libfaketime (apt-get install libfaketime)".into());
    }
    let mut cluster = ClusterGuard(Cluster::new(&binary, &run_dir, args.nodes, faketime));
    cluster.0.start_all()?;
    let bootstrap = cluster::bootstrap(args.nodes);
    let topic = "jepsen";
    let replication = args.replication.unwrap_or(3).min(args.nodes).max(1);
    create_topic(&binary, &bootstrap, topic, args.keys, replication)?;
    println!(
        "runnel-jepsen: {} nodes up, topic {topic} with {} partitions replicated {replication} ways",
        args.nodes, args.keys
    );

    let time_limit_ms = args.time_limit * 1_000;
    let schedule = nemesis::schedule(seed, args.nodes, time_limit_ms, &kinds);
    write(
        &run_dir.join("nemesis-schedule.json"),
        &serde_json::to_string_pretty(&schedule).map_err(|error| error.to_string())?,
    )?;

    let recorder = Arc::new(Recorder::create(&run_dir.join("history.jsonl"))?);
    // The history's times count from here; this anchors them to real time.
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    let run_info = serde_json::json!({
        "seed": seed,
        "nodes": args.nodes,
        "time_limit_s": args.time_limit,
        "nemesis": kinds,
        "workload": args.workload,
        "keys": args.keys,
        "replication": replication,
        "runnel_bin": binary,
        "history_time_zero_unix_ms": started_unix_ms,
        "replay": format!(
            "cargo run --release -p runnel-jepsen -- --nodes {} --time-limit {} --nemesis {} --workload {} --seed {seed}",
            args.nodes,
            args.time_limit,
            if kinds.is_empty() { "none".to_string() } else { kinds.join(",") },
            args.workload
        ),
    });
    write(
        &run_dir.join("run.json"),
        &serde_json::to_string_pretty(&run_info).map_err(|error| error.to_string())?,
    )?;
    let workers_stop = Arc::new(AtomicBool::new(false));
    let workload = Arc::new(Workload {
        bootstrap: bootstrap.clone(),
        topic: topic.to_string(),
        keys: args.keys,
        producers: args.producers,
        consumers: args.consumers,
        trust_timeouts: args.trust_timeouts,
        offset_workers: if args.workload.contains("offsets") {
            args.offset_workers
        } else {
            0
        },
        subscribers: if args.workload.contains("subscribe") {
            args.subscribers
        } else {
            0
        },
        offset_rate: args.offset_rate,
        send_rate: args.send_rate,
        poll_rate: args.poll_rate,
        seed,
        recorder: Arc::clone(&recorder),
        stop: Arc::clone(&workers_stop),
        next_value: AtomicU64::new(0),
    });
    let mut threads = Vec::new();
    for index in 0..args.producers {
        let workload = Arc::clone(&workload);
        threads.push(std::thread::spawn(move || workload.run_producer(index)));
    }
    for index in 0..args.consumers {
        let workload = Arc::clone(&workload);
        threads.push(std::thread::spawn(move || workload.run_consumer(index)));
    }
    for index in 0..workload.offset_workers {
        let workload = Arc::clone(&workload);
        threads.push(std::thread::spawn(move || workload.run_offsets(index)));
    }
    for index in 0..workload.subscribers {
        let workload = Arc::clone(&workload);
        threads.push(std::thread::spawn(move || workload.run_subscriber(index)));
    }

    // The nemesis runs here, on the schedule, until the time limit.
    let mut problems = RunProblems::default();
    let mut applied: Vec<AppliedWindow> = Vec::new();
    let mut nemesis_log = String::new();
    let mut windows = schedule.iter().peekable();
    let mut active: Option<(&nemesis::Window, u64)> = None;
    let start = Instant::now();
    loop {
        let now_ms = start.elapsed().as_millis() as u64;
        if stop.load(Ordering::Relaxed) {
            problems.interrupted = true;
            break;
        }
        for id in cluster.0.crashed() {
            let message = format!("node {id} exited on its own at {now_ms} ms; restarted");
            eprintln!("runnel-jepsen: {message}");
            problems.node_crashes.push(message);
            if let Err(error) = cluster.0.start(id) {
                problems.nemesis_errors.push(error);
            }
        }
        if let Some((window, started_ns)) = active {
            if now_ms >= window.end_ms {
                for fault in &window.faults {
                    if let Err(error) = nemesis::heal(fault, &mut cluster.0) {
                        problems.nemesis_errors.push(error);
                    }
                }
                let end_ns = recorder.now_ns();
                nemesis_log.push_str(&format!("{end_ns} heal\n"));
                applied.push(AppliedWindow {
                    start_ns: started_ns,
                    end_ns,
                    faults: window.faults.clone(),
                });
                active = None;
            }
        } else if let Some(window) = windows.peek() {
            if now_ms >= window.start_ms {
                let window = windows.next().expect("peeked");
                let started_ns = recorder.now_ns();
                for fault in &window.faults {
                    let description = serde_json::to_string(fault).unwrap_or_default();
                    nemesis_log.push_str(&format!("{started_ns} start {description}\n"));
                    if let Err(error) = nemesis::start(fault, &mut cluster.0) {
                        problems.nemesis_errors.push(error);
                    }
                }
                active = Some((window, started_ns));
            }
        }
        if now_ms >= time_limit_ms && active.is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some((window, started_ns)) = active {
        applied.push(AppliedWindow {
            start_ns: started_ns,
            end_ns: recorder.now_ns(),
            faults: window.faults.clone(),
        });
    }
    problems
        .nemesis_errors
        .extend(nemesis::heal_all(&mut cluster.0));
    nemesis_log.push_str(&format!("{} heal-all\n", recorder.now_ns()));
    workers_stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    println!("runnel-jepsen: workload done, everything healed; final read");

    if !problems.interrupted {
        std::thread::sleep(Duration::from_millis(RECOVERY_MS));
        match workload.final_read(Duration::from_millis(FINAL_READ_TIMEOUT_MS)) {
            Ok(records) => println!("runnel-jepsen: final read: {records} records"),
            Err(error) => problems.final_read = Some(error),
        }
    }
    for id in cluster.0.crashed() {
        problems
            .node_crashes
            .push(format!("node {id} exited on its own after the workload"));
    }
    drop(cluster);
    drop(_network);

    let (events, write_error, overflowed) = recorder.finish();
    problems.history =
        write_error.or(overflowed.then(|| format!("more than {} events", history::EVENTS_MAX)));
    write(&run_dir.join("nemesis.log"), &nemesis_log)?;
    write(
        &run_dir.join("nemesis-applied.json"),
        &serde_json::to_string_pretty(&applied).map_err(|error| error.to_string())?,
    )?;
    let (verdict, operations) = report::judge(seed, &events, &applied, problems);
    write(
        &run_dir.join("verdict.json"),
        &serde_json::to_string_pretty(&verdict).map_err(|error| error.to_string())?,
    )?;
    let summary = report::summary(&verdict);
    write(&run_dir.join("summary.txt"), &summary)?;
    write(
        &run_dir.join("latency.svg"),
        &report::latency_svg(&operations, &applied),
    )?;
    write(
        &run_dir.join("throughput.svg"),
        &report::throughput_svg(&operations, &applied),
    )?;
    print!("{summary}");
    println!("runnel-jepsen: results in {}", run_dir.display());
    Ok(if verdict.problems.interrupted {
        130
    } else if verdict.valid {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(timestamp(0), "19700101T000000Z");
        assert_eq!(timestamp(951_782_400), "20000229T000000Z");
        assert_eq!(timestamp(1_798_761_599), "20261231T235959Z");
    }
}
