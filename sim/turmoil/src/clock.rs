//! Clocks that read turmoil's simulated time.

use runnel_io::Clock;

/// Milliseconds of simulated time since the whole simulation began: the
/// same on every host and monotonic across a host's crashes, so that a
/// disk whose node restarts keeps one time line.
pub fn sim_now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A node's clock: simulated time since this incarnation of the node
/// started (production's clock also starts at each process start), and a
/// wall clock from the simulation's fixed epoch.
pub struct HostClock {
    start: tokio::time::Instant,
}

impl HostClock {
    /// Must be called inside the host, whose runtime's time is simulated.
    pub fn new() -> HostClock {
        HostClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        HostClock::new()
    }
}

impl Clock for HostClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn wall_clock_ms(&self) -> i64 {
        turmoil::since_epoch().map_or(0, |since| since.as_millis() as i64)
    }
}
