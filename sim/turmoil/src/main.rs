//! `runnel-turmoil`: runs seeds of the turmoil tier. `--seed N` replays
//! one; `--seeds COUNT --first-seed N` sweeps; `--check-determinism` runs
//! each seed twice and compares the traces.

use std::process::ExitCode;

use runnel_turmoil::{replay_command, run_seed, run_seed_checked};

fn usage() -> ExitCode {
    eprintln!(
        "usage: runnel-turmoil [--seed N | --seeds COUNT [--first-seed N]] [--check-determinism] [--verbose]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    runnel_turmoil::init_logging_from_env();
    let mut args = std::env::args().skip(1);
    let mut first_seed = 1u64;
    let mut count = 1u64;
    let mut check = false;
    let mut verbose = false;
    while let Some(arg) = args.next() {
        let mut number = || args.next().and_then(|value| value.parse::<u64>().ok());
        match arg.as_str() {
            "--seed" | "--first-seed" => match number() {
                Some(seed) => first_seed = seed,
                None => return usage(),
            },
            "--seeds" => match number() {
                Some(seeds) if seeds > 0 => count = seeds,
                _ => return usage(),
            },
            "--check-determinism" => check = true,
            "--verbose" => verbose = true,
            _ => return usage(),
        }
    }
    let mut passed = 0;
    let mut failed = 0;
    for seed in first_seed..first_seed.saturating_add(count) {
        let outcome = if check {
            run_seed_checked(seed)
        } else {
            run_seed(seed)
        };
        if outcome.passed() {
            passed += 1;
            if verbose || count == 1 {
                println!("{}", outcome.summary);
            }
        } else {
            failed += 1;
            println!("FAILED {}", outcome.summary);
            for failure in &outcome.failures {
                println!("  {failure}");
            }
            println!("  last trace lines:");
            for line in &outcome.last_lines {
                println!("    {line}");
            }
            println!("  replay: {}", replay_command(seed));
        }
    }
    println!("turmoil seeds: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
