//! How leaders bring lagging followers back under faults (docs/protocol.md
//! §8.1): with the log kept below snapshots they read it back from disk and
//! send entries; with none kept, every follower behind a snapshot gets the
//! snapshot; followers that installed one backfill the log below it
//! (§8.2). The same seeds, record layout, with crashes and isolation
//! forced so that followers fall behind; the checkers run throughout.

use runnel_core::CatchUpStats;
use runnel_sim::runner::add_catch_up;
use runnel_sim::{FaultPlan, SimOptions, Simulation};

fn run(seeds: std::ops::Range<u64>, retained_log_bytes_max: u64) -> CatchUpStats {
    let mut total = CatchUpStats::default();
    for seed in seeds {
        let mut plan = FaultPlan::from_seed(seed);
        let other = FaultPlan::from_seed(seed ^ 0x5eed);
        plan.kafka = None;
        plan.crash = plan.crash.or(other.crash);
        plan.isolate = plan.isolate.or(other.isolate);
        plan.timing.snapshot_interval_entries = 64;
        plan.timing.retained_log_bytes_max = retained_log_bytes_max;
        let outcome = Simulation::with_plan(plan, SimOptions::new(seed)).run();
        let problems: Vec<String> = outcome.violations.iter().map(|v| v.to_string()).collect();
        assert!(
            outcome.passed(),
            "seed {seed} failed:\n{}\nlast events:\n{}",
            problems.join("\n"),
            outcome.last_events.join("\n")
        );
        add_catch_up(&mut total, outcome.catch_up);
    }
    total
}

#[test]
fn followers_behind_a_snapshot_catch_up_from_the_retained_log() {
    let kept = run(900..904, runnel_core::RETAINED_LOG_BYTES_MAX);
    assert!(kept.log_reads_served > 0, "{kept:?}");
    // §8.2: followers that had to install a snapshot take the log below it.
    assert!(kept.backfill_entries_stored > 0, "{kept:?}");
    assert!(
        kept.backfill_chunks_read >= kept.backfill_chunks_stored,
        "{kept:?}"
    );
    let none = run(900..904, 0);
    assert_eq!(none.log_reads_served, 0, "{none:?}");
    assert_eq!(
        none.backfill_entries_stored, 0,
        "nothing kept, nothing to take: {none:?}"
    );
    assert!(none.snapshots_sent > 0, "{none:?}");
    assert!(
        kept.snapshots_sent < none.snapshots_sent,
        "keeping the log saves snapshots: {kept:?} vs {none:?}"
    );
}
