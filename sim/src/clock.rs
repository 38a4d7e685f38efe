//! A node's local clock as a function of global simulated time.
//!
//! `local = origin + global * (1 + drift_ppm / 1e6) + jumped`, clamped so
//! that it never decreases within an incarnation. `origin` is the node's
//! skew; a restart may pick a new origin (a new process reads a new monotonic
//! clock), which is the only time the local clock may go back.

use std::cell::Cell;

use runnel_io::Clock;

/// The largest drift a plan may choose: ±10%.
pub const DRIFT_PPM_MAX: i64 = 100_000;

#[derive(Debug)]
pub struct SimClock {
    origin_ms: u64,
    drift_ppm: i64,
    jumped_ms: u64,
    global_ms: u64,
    /// The last value returned in this incarnation.
    last_ms: Cell<u64>,
}

impl SimClock {
    pub fn new(origin_ms: u64, drift_ppm: i64) -> SimClock {
        assert!(drift_ppm.abs() <= DRIFT_PPM_MAX, "drift {drift_ppm} ppm");
        SimClock {
            origin_ms,
            drift_ppm,
            jumped_ms: 0,
            global_ms: 0,
            last_ms: Cell::new(0),
        }
    }

    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }

    pub fn origin_ms(&self) -> u64 {
        self.origin_ms
    }

    /// The runner moves global time forward before every event of the node.
    pub fn set_global(&mut self, global_ms: u64) {
        self.global_ms = global_ms;
    }

    /// Moves the local clock forward by `ms` from now on.
    pub fn jump(&mut self, ms: u64) {
        self.jumped_ms += ms;
    }

    /// A new incarnation of the node: a new origin, and no clamp carried over.
    pub fn restart(&mut self, origin_ms: u64) {
        self.origin_ms = origin_ms;
        self.jumped_ms = 0;
        self.last_ms.set(0);
    }

    fn raw(&self) -> u64 {
        let global = self.global_ms as i128;
        let drifted = global + global * self.drift_ppm as i128 / 1_000_000;
        let local = self.origin_ms as i128 + drifted + self.jumped_ms as i128;
        local.clamp(0, u64::MAX as i128) as u64
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = self.raw().max(self.last_ms.get());
        self.last_ms.set(now);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_and_drift() {
        let mut fast = SimClock::new(1_000, 100_000);
        let mut slow = SimClock::new(5_000, -100_000);
        fast.set_global(10_000);
        slow.set_global(10_000);
        assert_eq!(fast.now_ms(), 1_000 + 11_000);
        assert_eq!(slow.now_ms(), 5_000 + 9_000);
    }

    #[test]
    fn jumps_forward() {
        let mut clock = SimClock::new(0, 0);
        clock.set_global(100);
        assert_eq!(clock.now_ms(), 100);
        clock.jump(5_000);
        assert_eq!(clock.now_ms(), 5_100);
        clock.set_global(200);
        assert_eq!(clock.now_ms(), 5_200);
    }

    #[test]
    fn never_decreases_within_an_incarnation() {
        let mut clock = SimClock::new(0, -DRIFT_PPM_MAX);
        let mut last = 0;
        for global in (0..10_000).step_by(7) {
            clock.set_global(global);
            let now = clock.now_ms();
            assert!(now >= last);
            last = now;
        }
        // Even if the runner handed it an earlier global time.
        clock.set_global(0);
        assert_eq!(clock.now_ms(), last);
    }

    #[test]
    fn restart_may_go_back() {
        let mut clock = SimClock::new(1_000_000, 0);
        clock.set_global(10);
        assert_eq!(clock.now_ms(), 1_000_010);
        clock.restart(0);
        assert_eq!(clock.now_ms(), 10);
    }
}
