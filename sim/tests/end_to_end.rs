//! Whole runs of the real node core: full-length seeds must pass and replay
//! identically. Larger sweeps are run with the binary
//! (`cargo run --release -p runnel-sim -- --seeds 500 --check-determinism`).

use runnel_sim::{run_seed, SimOptions};

#[test]
fn seeds_pass_and_replay_identically() {
    for seed in 0..6 {
        let first = run_seed(SimOptions::new(seed));
        let problems: Vec<String> = first.violations.iter().map(|v| v.to_string()).collect();
        assert!(
            first.passed(),
            "seed {seed} failed:\n{}\nlast events:\n{}\nreplay: cargo run --release -p runnel-sim -- --seed {seed}",
            problems.join("\n"),
            first.last_events.join("\n")
        );
        assert!(
            first.acknowledged >= 1_000,
            "seed {seed} acknowledged only {} appends",
            first.acknowledged
        );
        let second = run_seed(SimOptions::new(seed));
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} is not deterministic"
        );
        assert_eq!(first.events, second.events);
    }
}

#[test]
fn different_seeds_take_different_paths() {
    let short = |seed| SimOptions {
        safety_ms: 5_000,
        ..SimOptions::new(seed)
    };
    let a = run_seed(short(1));
    let b = run_seed(short(2));
    assert_ne!(a.trace_hash, b.trace_hash);
}
