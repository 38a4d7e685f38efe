//! The simulated disk passes the same conformance suite as the production
//! `FileDisk` (crates/disk/src/conformance.rs), so that what the simulator
//! proves about the node holds on the disk it runs on in production.

use runnel_io::Rng;
use runnel_sim::disk::{DiskFaults, SimDisk};

#[test]
fn sim_disk_passes_the_disk_conformance_suite() {
    let mut seed = 0;
    runnel_disk::conformance::run_all(
        &mut || {
            seed += 1;
            SimDisk::new(Rng::new(seed), DiskFaults::default())
        },
        &mut |disk: &mut SimDisk| {
            let mut completions = Vec::new();
            while let Some(at) = disk.next_completion_at() {
                disk.set_now(at);
                completions.extend(disk.pop_completion(at));
            }
            completions
        },
    );
}
