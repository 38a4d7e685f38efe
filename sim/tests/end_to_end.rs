//! Whole runs of the real node core: short seeds must pass and replay
//! identically. Sweeps of full-length seeds are run with the binary.

use runnel_sim::{run_seed, SimOptions};

fn short(seed: u64) -> SimOptions {
    SimOptions {
        seed,
        safety_ms: 8_000,
        liveness_ms: 30_000,
        verbose: false,
    }
}

#[test]
fn short_seeds_pass_and_replay_identically() {
    for seed in 0..4 {
        let first = run_seed(short(seed));
        let problems: Vec<String> = first.violations.iter().map(|v| v.to_string()).collect();
        assert!(
            first.passed(),
            "seed {seed} failed:\n{}\nlast events:\n{}\nreplay: cargo run --release -p runnel-sim -- --seed {seed} --safety-secs 8",
            problems.join("\n"),
            first.last_events.join("\n")
        );
        assert!(first.acknowledged > 0, "seed {seed} acknowledged nothing");
        let second = run_seed(short(seed));
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(first.events, second.events);
    }
}
