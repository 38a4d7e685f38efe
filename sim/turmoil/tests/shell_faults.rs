//! Faults of the production shell that this tier found, each as a
//! scripted run that failed before its fix.

use runnel_turmoil::harness::{Plan, Scripted};
use runnel_turmoil::run_plan;

fn assert_passes(plan: &Plan) {
    let outcome = run_plan(plan);
    assert!(
        outcome.passed(),
        "{}\n{}\nlast trace lines:\n{}\nreplay: cargo test --release -p runnel-turmoil --test shell_faults",
        outcome.summary,
        outcome.failures.join("\n"),
        outcome.last_lines.join("\n"),
    );
}

/// Every node is cut off from every other for two seconds, long enough for
/// elections, so every peer connection loses envelopes. turmoil, like a
/// middlebox that dropped the connection's state, never delivers them nor
/// resets the connection: a peer sender that waits for a write to stall
/// keeps writing into the void for as long as the socket buffer takes
/// envelopes. The cluster must elect and commit again after the repair.
#[test]
fn peer_connections_come_back_after_every_node_was_partitioned() {
    for nodes in [3, 5] {
        let plan = Plan::scripted(
            11,
            nodes,
            vec![
                (3_000, Scripted::PartitionNodes),
                (5_000, Scripted::RepairAll),
            ],
        );
        assert_passes(&plan);
    }
}
