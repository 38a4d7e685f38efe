//! One run per class of disk fault, with that class forced on the faulty
//! disk of the fault atlas: the node stops on each injected error, restarts,
//! repairs what it lost, and the cluster keeps every acknowledged append
//! (the checkers run after every event). Each test also asserts that its
//! class was injected, so that none passes by never striking.

use runnel_sim::swarm::{FaultClass, FaultPlan, FaultyDisk};
use runnel_sim::{Outcome, SimOptions, Simulation};

fn run_with(seed: u64, faulty: FaultyDisk) -> Outcome {
    let mut plan = FaultPlan::from_seed(seed);
    // Crashes give corruption at rest its moments; the faulty disk is a
    // minority of every group by the atlas's rule.
    if plan.crash.is_none() {
        plan.crash = FaultPlan::from_seed(seed ^ 0x5eed).crash.or(plan.crash);
    }
    plan.faulty_disk = Some(faulty);
    let outcome = Simulation::with_plan(plan, SimOptions::new(seed)).run();
    let problems: Vec<String> = outcome.violations.iter().map(|v| v.to_string()).collect();
    assert!(
        outcome.passed(),
        "seed {seed} failed:\n{}\nlast events:\n{}",
        problems.join("\n"),
        outcome.last_events.join("\n")
    );
    outcome
}

fn faulty(node: usize) -> FaultyDisk {
    FaultyDisk {
        node,
        corrupt_at_rest: false,
        sync_failure_chance: 0.0,
        write_full_chance: 0.0,
        latent_read_errors: false,
        misdirected_writes: false,
    }
}

#[test]
fn misdirected_writes_are_repaired_from_peers() {
    let mut struck = 0;
    for seed in 0..8 {
        let outcome = run_with(
            700 + seed,
            FaultyDisk {
                misdirected_writes: true,
                ..faulty(seed as usize % 3)
            },
        );
        struck += outcome.faults.get(FaultClass::MisdirectedWrite);
    }
    assert!(struck > 0, "no write was misdirected");
}

#[test]
fn latent_read_errors_are_repaired_from_peers() {
    let mut struck = 0;
    for seed in 0..8 {
        let outcome = run_with(
            600 + seed,
            FaultyDisk {
                latent_read_errors: true,
                ..faulty(seed as usize % 3)
            },
        );
        struck += outcome.faults.get(FaultClass::LatentReadError);
    }
    assert!(struck > 0, "no sector became unreadable");
}

#[test]
fn bit_flips_at_rest_are_repaired_from_peers() {
    let mut struck = 0;
    for seed in 0..8 {
        let outcome = run_with(
            300 + seed,
            FaultyDisk {
                corrupt_at_rest: true,
                ..faulty(seed as usize % 3)
            },
        );
        struck += outcome.faults.get(FaultClass::CorruptAtRest);
    }
    assert!(struck > 0, "no bit was flipped at rest");
}

#[test]
fn a_failed_fsync_stops_the_node_and_it_recovers() {
    let mut struck = 0;
    for seed in 0..6 {
        let outcome = run_with(
            400 + seed,
            FaultyDisk {
                sync_failure_chance: 0.01,
                ..faulty(seed as usize % 3)
            },
        );
        struck += outcome.faults.get(FaultClass::SyncFailure);
    }
    assert!(struck > 0, "no fsync failed");
}

#[test]
fn a_full_disk_stops_the_node_and_it_recovers() {
    let mut struck = 0;
    for seed in 0..6 {
        let outcome = run_with(
            500 + seed,
            FaultyDisk {
                write_full_chance: 0.01,
                ..faulty(seed as usize % 3)
            },
        );
        struck += outcome.faults.get(FaultClass::DiskFull);
    }
    assert!(struck > 0, "no write failed for lack of space");
}
