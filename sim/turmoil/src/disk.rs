//! A node's simulated disk under turmoil: the simulator's `SimDisk` (the
//! same durability model the seeded simulator uses: unsynced writes lost or
//! torn on a crash, latency spikes, fsync failures, a full disk), shared
//! between the node's software, which restarts, and the harness, which
//! crashes it. Completions reach the core through a pump task, as the
//! production FileDisk's reach it through its completion thread.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runnel_io::{Disk, DiskError, DiskOp};
use runnel_server::shell::node::DiskEvents;
use runnel_sim::disk::SimDisk;
use tokio::sync::Notify;

use crate::clock::sim_now_ms;

/// The disk of one node: it outlives each incarnation of the node.
#[derive(Clone)]
pub struct SharedDisk {
    inner: Arc<Mutex<SimDisk>>,
}

impl SharedDisk {
    pub fn new(disk: SimDisk) -> SharedDisk {
        SharedDisk {
            inner: Arc::new(Mutex::new(disk)),
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut SimDisk) -> R) -> R {
        f(&mut self.inner.lock().expect("the disk lock is never poisoned"))
    }

    /// The node's process ended without a power loss: what it queued is
    /// performed (the kernel still has it), and nothing synced or not is
    /// lost. Completions go nowhere.
    pub fn finish_queued(&self) {
        self.with(|disk| while disk.pop_completion(u64::MAX).is_some() {});
    }
}

/// The `Disk` one incarnation of a node submits to.
pub struct HostDisk {
    disk: SharedDisk,
    submitted: Arc<Notify>,
}

impl HostDisk {
    /// Starts the pump that delivers `disk`'s completions to `events` on
    /// the current (host) runtime; it ends with the core.
    pub fn start(disk: SharedDisk, events: DiskEvents) -> HostDisk {
        let submitted = Arc::new(Notify::new());
        // On the host's LocalSet, as the shell's tasks (see `transport`).
        tokio::task::spawn_local(pump(disk.clone(), Arc::clone(&submitted), events));
        HostDisk { disk, submitted }
    }
}

impl Disk for HostDisk {
    fn submit(&mut self, token: u64, op: DiskOp) {
        let now = sim_now_ms();
        self.disk.with(|disk| {
            disk.set_now(now);
            disk.submit(token, op);
        });
        self.submitted.notify_one();
    }

    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        self.disk.with(|disk| disk.list())
    }

    fn read_file(&mut self, file: &str) -> Result<Vec<u8>, DiskError> {
        self.disk.with(|disk| disk.read_file(file))
    }
}

/// Completes each operation when its simulated latency has passed, in
/// order, and hands the completion to the core.
async fn pump(disk: SharedDisk, submitted: Arc<Notify>, events: DiskEvents) {
    loop {
        let now = sim_now_ms();
        let (due, next_at) = disk.with(|disk| {
            let due = disk.pop_completion(now);
            (due, disk.next_completion_at())
        });
        if let Some(completion) = due {
            if !events.completed(completion) {
                return;
            }
            continue;
        }
        match next_at {
            // `notify_one` keeps a permit when nobody waits, so a submission
            // between the check above and this wait is not missed.
            None => submitted.notified().await,
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now).max(1));
                tokio::select! {
                    biased;
                    _ = submitted.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
