//! runnel-turmoil: the second simulation tier. The seeded simulator
//! (`runnel-sim`) drives the node core directly; this tier runs the
//! production shell of `runnel-server` unchanged (its connection handling,
//! request framing, peer senders with their reconnects, in-flight bounds,
//! drain on shutdown) on turmoil's simulated TCP, with the simulator's disk
//! model behind the `Disk` trait, under seeded partitions, holds, crashes
//! and restarts. Everything derives from one seed; see `README.md`.

pub mod client;
pub mod clock;
pub mod disk;
pub mod harness;
pub mod trace;
pub mod transport;

pub use harness::{run_plan, run_seed, Outcome, Plan};

/// With RUST_LOG set, shows the shell's own log lines (connections, peers,
/// shutdowns) on stderr; once per process.
pub fn init_logging_from_env() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The one-line command that replays `seed`.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p runnel-turmoil -- --seed {seed}")
}

/// Runs `seed` twice and compares the traces; the outcome of the first
/// run, with a failure added if the second differs.
pub fn run_seed_checked(seed: u64) -> Outcome {
    let mut first = run_seed(seed);
    let second = run_seed(seed);
    if first.trace_hash != second.trace_hash || first.events != second.events {
        first.failures.push(format!(
            "not deterministic: trace {:016x} ({} events) then {:016x} ({} events)",
            first.trace_hash, first.events, second.trace_hash, second.events
        ));
    }
    first
}
