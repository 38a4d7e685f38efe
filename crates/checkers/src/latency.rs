//! Latency: how long completed operations took, as percentiles.
//!
//! Reported, never asserted: timings depend on the machine.

use serde::Serialize;

use crate::history::{Operation, Outcome};

/// Percentiles of the latencies of one set of operations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Latency of the operations that completed `ok` (a failure's or timeout's
/// duration says how long the client waited, not how long the system took).
/// Percentiles use the nearest rank.
pub fn latency<Op>(operations: &[Operation<Op>]) -> Latency {
    let mut latencies_ns: Vec<u64> = operations
        .iter()
        .filter(|operation| operation.outcome == Outcome::Ok)
        .filter_map(Operation::latency_ns)
        .collect();
    if latencies_ns.is_empty() {
        return Latency::default();
    }
    latencies_ns.sort_unstable();
    let rank = |quantile: f64| {
        let index = ((quantile * latencies_ns.len() as f64).ceil() as usize).max(1) - 1;
        latencies_ns[index.min(latencies_ns.len() - 1)] as f64 / 1e6
    };
    Latency {
        count: latencies_ns.len() as u64,
        p50_ms: rank(0.50),
        p95_ms: rank(0.95),
        p99_ms: rank(0.99),
        max_ms: rank(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(latency_ms: u64, outcome: Outcome) -> Operation<()> {
        Operation {
            process: 0,
            invoke_ns: 1_000,
            complete_ns: Some(1_000 + latency_ms * 1_000_000),
            outcome,
            invoked: (),
            completed: Some(()),
            error: None,
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank_of_ok_operations() {
        let mut operations: Vec<Operation<()>> = (1..=100).map(|ms| op(ms, Outcome::Ok)).collect();
        operations.push(op(5_000, Outcome::Info));
        operations.push(Operation {
            complete_ns: None,
            ..op(1, Outcome::Info)
        });
        let result = latency(&operations);
        assert_eq!(result.count, 100);
        assert_eq!(result.p50_ms, 50.0);
        assert_eq!(result.p95_ms, 95.0);
        assert_eq!(result.p99_ms, 99.0);
        assert_eq!(result.max_ms, 100.0);
    }

    #[test]
    fn no_completed_operations_measure_nothing() {
        assert_eq!(latency(&[op(3, Outcome::Fail)]), Latency::default());
    }
}
