//! The simulator's speed: events per wall-clock second while it runs a
//! whole cluster of the real node core under a seed's faults, with every
//! checker on. This is what bounds how many seeds CI explores per minute.
//!
//! `cargo bench -p runnel-sim --bench events`; a few seconds. Throughput
//! is in simulated events (message deliveries, disk completions, ticks,
//! client operations).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use runnel_sim::{run_seed, SimOptions};

/// Simulated time per run: short, so that one sample is a fraction of a
/// second, but past the first elections and well into the faults.
const SAFETY_MS: u64 = 3_000;
const LIVENESS_MS: u64 = 30_000;

fn options(seed: u64) -> SimOptions {
    SimOptions {
        seed,
        safety_ms: SAFETY_MS,
        liveness_ms: LIVENESS_MS,
        verbose: false,
    }
}

fn events(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulator");
    // Seed 1 runs the bare node core, seed 2 the broker layout (half the
    // seeds wrap the real broker, chosen by the seed).
    for seed in [1u64, 2] {
        let probe = run_seed(options(seed));
        assert!(
            probe.passed(),
            "seed {seed} must pass to be a fair benchmark"
        );
        group.throughput(Throughput::Elements(probe.events));
        let layout = if probe.kafka.is_some() {
            "broker"
        } else {
            "core"
        };
        group.bench_function(format!("seed_{seed}_{layout}_{SAFETY_MS}ms"), |b| {
            b.iter(|| run_seed(options(seed)))
        });
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = short();
    targets = events
}
criterion_main!(benches);
