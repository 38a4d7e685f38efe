//! `runnel-sim`: run seeded simulations of Runnel clusters.
//!
//! ```text
//! runnel-sim --seed 42                       # one seed, with its options printed
//! runnel-sim --seeds 500 --check-determinism # a sweep, each seed twice
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use runnel_sim::runner::{install_panic_hook, panic_text, DEFAULT_LIVENESS_MS, DEFAULT_SAFETY_MS};
use runnel_sim::swarm::FAULT_CLASSES;
use runnel_sim::{run_seed, FaultCounts, FaultPlan, Outcome, SimOptions};

#[derive(Parser, Debug)]
#[command(
    name = "runnel-sim",
    about = "Deterministic simulation of Runnel clusters under seeded faults"
)]
struct Args {
    /// Run exactly this seed (prints every option derived from it).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// Run this many consecutive seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of a sweep (default: derived from the OS time, printed).
    #[arg(long)]
    first_seed: Option<u64>,
    /// Run every seed twice and require identical traces.
    #[arg(long)]
    check_determinism: bool,
    /// Simulated seconds of the safety phase (under faults).
    #[arg(long)]
    safety_secs: Option<u64>,
    /// Simulated seconds the liveness phase may take after healing.
    #[arg(long)]
    liveness_secs: Option<u64>,
    /// Print options, faults and a status line every simulated second.
    #[arg(long)]
    verbose: bool,
}

struct Totals {
    passed: u64,
    failed: Vec<u64>,
    simulated_ms: u64,
    acknowledged: u64,
    events: u64,
    faults: FaultCounts,
    catch_up: runnel_core::CatchUpStats,
    index_chunks: u64,
}

fn time_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64, so that consecutive invocations start far apart.
    let mut z = nanos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 1
}

fn replay_command(args: &Args, seed: u64) -> String {
    let mut command = format!("cargo run --release -p runnel-sim -- --seed {seed}");
    if let Some(secs) = args.safety_secs {
        command.push_str(&format!(" --safety-secs {secs}"));
    }
    if let Some(secs) = args.liveness_secs {
        command.push_str(&format!(" --liveness-secs {secs}"));
    }
    command
}

/// Runs a seed, turning a panic of the simulator itself into a failed outcome.
fn run_guarded(options: SimOptions) -> Result<Outcome, String> {
    let seed = options.seed;
    catch_unwind(AssertUnwindSafe(|| run_seed(options))).map_err(|payload| {
        format!(
            "the simulator panicked on seed {seed}: {}",
            panic_text(payload.as_ref())
        )
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    install_panic_hook();
    let safety_ms = args.safety_secs.map_or(DEFAULT_SAFETY_MS, |s| s * 1000);
    let liveness_ms = args.liveness_secs.map_or(DEFAULT_LIVENESS_MS, |s| s * 1000);
    let (first, count, single) = match (args.seed, args.seeds) {
        (Some(seed), _) => (seed, 1, true),
        (None, seeds) => {
            let first = args.first_seed.unwrap_or_else(|| {
                let seed = time_seed();
                println!("first seed {seed} (from the OS time)");
                seed
            });
            (first, seeds.unwrap_or(1), false)
        }
    };

    let started = Instant::now();
    let mut totals = Totals {
        passed: 0,
        failed: Vec::new(),
        simulated_ms: 0,
        acknowledged: 0,
        events: 0,
        faults: FaultCounts::default(),
        catch_up: runnel_core::CatchUpStats::default(),
        index_chunks: 0,
    };
    for offset in 0..count {
        let seed = first.wrapping_add(offset);
        let options = SimOptions {
            seed,
            safety_ms,
            liveness_ms,
            verbose: args.verbose,
        };
        if single || args.verbose {
            print!("{}", FaultPlan::from_seed(seed));
        }
        let outcome = run_guarded(options.clone());
        let mut problems: Vec<String> = Vec::new();
        let mut last_events = Vec::new();
        let mut summary = String::new();
        match &outcome {
            Ok(outcome) => {
                for violation in &outcome.violations {
                    problems.push(violation.to_string());
                }
                last_events = outcome.last_events.clone();
                totals.simulated_ms += outcome.simulated_ms;
                totals.acknowledged += outcome.acknowledged;
                totals.events += outcome.events;
                totals.faults.merge(&outcome.faults);
                runnel_sim::runner::add_catch_up(&mut totals.catch_up, outcome.catch_up);
                totals.index_chunks += outcome.kafka.as_ref().map_or(0, |k| k.index_chunks);
                let c = &outcome.catch_up;
                let layout = match &outcome.kafka {
                    Some(k) => format!(
                        "broker layout: {} topics created, {} moves, {} nodes added, {} removed, {} produces acknowledged ({} records), {} unknown, {} records consumed, {} offset commits acknowledged, {} read, {} group syncs, {} index chunks, ",
                        k.topics_created,
                        k.reassignments,
                        k.nodes_added,
                        k.nodes_removed,
                        k.produces_acknowledged,
                        k.records_acknowledged,
                        k.produces_unknown,
                        k.records_consumed,
                        k.commits_acknowledged,
                        k.offsets_read,
                        k.group_syncs,
                        k.index_chunks
                    ),
                    None => String::new(),
                };
                summary = format!(
                    "{:.1} s simulated, {} events, {layout}{} appends acknowledged, followers caught up {} times from the retained log and sent {} snapshots ({} log reads refused, {} failed, {} damaged), {} faults ({})",
                    outcome.simulated_ms as f64 / 1000.0,
                    outcome.events,
                    outcome.acknowledged,
                    c.log_reads_served,
                    c.snapshots_sent,
                    c.log_reads_refused,
                    c.log_reads_failed,
                    c.log_reads_damaged,
                    outcome.faults.total(),
                    outcome.faults
                );
            }
            Err(message) => problems.push(message.clone()),
        }
        if args.check_determinism {
            if let Ok(first_run) = &outcome {
                let again = run_guarded(SimOptions {
                    verbose: false,
                    ..options
                });
                match again {
                    Ok(second) => {
                        if (second.trace_hash, second.events, second.acknowledged)
                            != (
                                first_run.trace_hash,
                                first_run.events,
                                first_run.acknowledged,
                            )
                        {
                            problems.push(format!(
                                "determinism: the second run differs: trace hash {:016x} vs {:016x}, events {} vs {}, acknowledged {} vs {}",
                                first_run.trace_hash,
                                second.trace_hash,
                                first_run.events,
                                second.events,
                                first_run.acknowledged,
                                second.acknowledged
                            ));
                        }
                    }
                    Err(message) => problems.push(format!("determinism: second run: {message}")),
                }
            }
        }
        let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
        println!("seed {seed}: {summary} {verdict}");
        if problems.is_empty() {
            totals.passed += 1;
        } else {
            totals.failed.push(seed);
            for problem in &problems {
                println!("  VIOLATION {problem}");
            }
            if !last_events.is_empty() {
                println!("  last {} events:", last_events.len());
                for line in &last_events {
                    println!("    {line}");
                }
            }
            println!("  replay: {}", replay_command(&args, seed));
        }
    }

    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let runs = if args.check_determinism { 2 } else { 1 };
    println!(
        "seeds: {} passed, {} failed; {:.1} seeds/minute, {:.0} simulated s per wall s ({} runs per seed), {} events, {} appends acknowledged, {:.1} s wall",
        totals.passed,
        totals.failed.len(),
        count as f64 * 60.0 / wall,
        totals.simulated_ms as f64 / 1000.0 * runs as f64 / wall,
        runs,
        totals.events,
        totals.acknowledged,
        wall
    );
    let per_class: Vec<String> = FAULT_CLASSES
        .iter()
        .map(|class| format!("{}={}", class.name(), totals.faults.get(*class)))
        .collect();
    println!("faults injected: {}", per_class.join(" "));
    let c = &totals.catch_up;
    println!(
        "followers caught up: {} from the retained log, {} snapshots sent; log reads refused {}, failed {}, damaged {}; backfilled below snapshots: {} entries in {} chunks; fetches read batches from disk {} times; partition indexes held {} chunks at the end",
        c.log_reads_served, c.snapshots_sent, c.log_reads_refused, c.log_reads_failed, c.log_reads_damaged,
        c.backfill_entries_stored, c.backfill_chunks_stored, c.client_log_reads_served, totals.index_chunks
    );
    if totals.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed seeds:");
        for seed in &totals.failed {
            println!("  {}", replay_command(&args, *seed));
        }
        ExitCode::FAILURE
    }
}
