//! Faults of the production shell that this tier found, each as a
//! scripted run that failed before its fix.

use runnel_turmoil::harness::{Plan, Scripted};
use runnel_turmoil::run_plan;

fn assert_passes(plan: &Plan) -> runnel_turmoil::Outcome {
    runnel_turmoil::init_logging_from_env();
    let outcome = run_plan(plan);
    assert!(
        outcome.passed(),
        "{}\n{}\nlast trace lines:\n{}\nreplay: cargo test --release -p runnel-turmoil --test shell_faults",
        outcome.summary,
        outcome.failures.join("\n"),
        outcome.last_lines.join("\n"),
    );
    outcome
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

/// Seventy times, every node is cut off from every other for five
/// seconds. Each time, every sender gives its connection up and connects
/// anew after the repair; the receiving end of the old connection hears
/// nothing more, not even its close, which the partition dropped. Unless a
/// newer connection from the same peer replaces it, it holds one of the
/// node's PEER_CONNECTIONS_INBOUND_MAX (256) inbound slots forever, and
/// once they are all held no peer gets through again.
#[test]
fn dead_inbound_peer_connections_are_replaced_by_new_ones() {
    let mut script = Vec::new();
    for cycle in 0..70 {
        let at = 3_000 + cycle * 7_000;
        script.push((at, Scripted::PartitionNodes));
        script.push((at + 5_000, Scripted::RepairAll));
    }
    assert_passes(&Plan::scripted(12, 5, script));
}

/// The clients are cut off from every node for ten seconds: they give
/// their connections up, and the closes are lost. A server that waits for
/// each client to say goodbye keeps such connections, and a slot of
/// CONNECTIONS_MAX, until the process ends. Once a connection has been
/// idle (nothing read, nothing unanswered) for CONNECTION_IDLE_MS_MAX, as
/// Kafka's `connections.max.idle.ms`, the server closes it: once the
/// clients finished and waited that long, each node holds its peer
/// connections and nothing else.
#[test]
fn connections_of_clients_that_vanished_are_closed_once_idle() {
    let mut plan = Plan::scripted(
        13,
        3,
        vec![
            (3_000, Scripted::IsolateClients),
            (13_000, Scripted::RepairAll),
        ],
    );
    plan.linger_ms = runnel_server::shell::CONNECTION_IDLE_MS_MAX + 5_000;
    let outcome = assert_passes(&plan);
    let peers = 2 * (plan.nodes.len() - 1);
    for (node, streams) in &outcome.streams {
        assert!(
            *streams <= peers,
            "node {node} holds {streams} TCP streams at the end; its peer connections are {peers}"
        );
    }
}
