//! Availability: the fraction of operations that succeeded, while faults were
//! active and while they were not.
//!
//! Not a safety property: a consensus system may refuse writes it cannot
//! commit. The numbers say how much of the run a client could work, and a
//! harness may demand a floor after faults heal.

use serde::Serialize;

use crate::history::{Operation, Outcome};

/// Operations in one kind of period and how many succeeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Succeeded {
    /// Operations invoked in the period.
    pub total: u64,
    /// Of those, the ones that completed `ok`.
    pub ok: u64,
    /// `ok / total`, or 1 when there were none.
    pub fraction: f64,
}

impl Succeeded {
    fn count(&mut self, ok: bool) {
        self.total += 1;
        self.ok += u64::from(ok);
    }

    fn finish(&mut self) {
        self.fraction = if self.total == 0 {
            1.0
        } else {
            self.ok as f64 / self.total as f64
        };
    }
}

/// Availability over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Availability {
    /// Operations invoked while some fault was active.
    pub during_faults: Succeeded,
    /// Operations invoked while none was.
    pub without_faults: Succeeded,
    /// All operations.
    pub overall: Succeeded,
}

/// Counts, per period, the operations that succeeded. An operation belongs to
/// the period of its invocation; `fault_windows` are `[start, end)` spans in
/// the history's time unit, in any order, possibly overlapping.
pub fn availability<Op>(
    operations: &[Operation<Op>],
    fault_windows: &[(u64, u64)],
) -> Availability {
    let mut result = Availability::default();
    for operation in operations {
        let ok = operation.outcome == Outcome::Ok;
        let during = fault_windows
            .iter()
            .any(|&(start, end)| start <= operation.invoke_ns && operation.invoke_ns < end);
        if during {
            result.during_faults.count(ok);
        } else {
            result.without_faults.count(ok);
        }
        result.overall.count(ok);
    }
    result.during_faults.finish();
    result.without_faults.finish();
    result.overall.finish();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoke_ns: u64, outcome: Outcome) -> Operation<()> {
        Operation {
            process: 0,
            invoke_ns,
            complete_ns: Some(invoke_ns + 1),
            outcome,
            invoked: (),
            completed: Some(()),
            error: None,
        }
    }

    #[test]
    fn operations_count_in_the_period_of_their_invocation() {
        let operations = [
            op(0, Outcome::Ok),
            op(10, Outcome::Fail),
            op(15, Outcome::Ok),
            op(20, Outcome::Info),
            op(30, Outcome::Ok),
        ];
        let result = availability(&operations, &[(10, 20), (18, 25)]);
        assert_eq!(
            (result.during_faults.ok, result.during_faults.total),
            (1, 3)
        );
        assert!((result.during_faults.fraction - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            (result.without_faults.ok, result.without_faults.total),
            (2, 2)
        );
        assert_eq!(result.without_faults.fraction, 1.0);
        assert_eq!((result.overall.ok, result.overall.total), (3, 5));
    }

    #[test]
    fn no_operations_is_fully_available() {
        let result = availability::<()>(&[], &[(0, 10)]);
        assert_eq!(result.during_faults.fraction, 1.0);
        assert_eq!(result.overall.total, 0);
    }
}
