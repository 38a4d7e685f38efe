//! What the node exposes to an operator's monitoring, in the Prometheus
//! text format (version 0.0.4): read from the broker's state on demand, so
//! that the core keeps no extra counters on its hot paths and the shell only
//! serves the text it is handed.

use std::fmt::Write;

use runnel_core::metadata::METADATA_GROUP;
use runnel_core::Role;

use super::{Broker, IN_SYNC_LAG_MS};

/// Most partitions given series of their own; beyond it only the node's
/// totals are exported, so that a node leading many partitions still
/// answers a scrape in bounded time and bytes.
pub const METRICS_PARTITIONS_MAX: usize = 10_000;

impl Broker {
    /// The node's metrics in the Prometheus text format. The shell calls it
    /// on the core thread now and then and serves the latest text.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let node_id = self.config.node_id;
        gauge(
            &mut out,
            "runnel_node_info",
            "This node's id and incarnation (always 1).",
            &[(
                format!(
                    "node_id=\"{node_id}\",incarnation=\"{}\"",
                    self.config.incarnation
                ),
                1,
            )],
        );
        let metadata_role = self.node.summary(METADATA_GROUP).map(|view| view.role);
        gauge(
            &mut out,
            "runnel_metadata_leader",
            "1 if this node leads the metadata group.",
            &[(
                String::new(),
                u64::from(metadata_role == Some(Role::Leader)),
            )],
        );
        gauge(
            &mut out,
            "runnel_node_failed",
            "1 if the node stopped itself after a disk error (it answers nothing more).",
            &[(String::new(), u64::from(self.node.failed().is_some()))],
        );
        gauge(
            &mut out,
            "runnel_connections",
            "Client connections the broker tracks.",
            &[(String::new(), self.connections.len() as u64)],
        );
        gauge(
            &mut out,
            "runnel_pending_requests",
            "Requests waiting for a commit, a long poll or a deadline.",
            &[(String::new(), self.pending.len() as u64)],
        );
        gauge(
            &mut out,
            "runnel_oversized_messages_dropped",
            "Peer messages not sent for being over the envelope limit (should stay 0).",
            &[(String::new(), self.node.oversized_messages_dropped())],
        );

        // §8.1: how lagging followers were caught up since the node
        // started; many snapshots or damaged reads are worth a look.
        let catch_up = self.node.catch_up_stats();
        counter(
            &mut out,
            "runnel_catch_up_snapshots_sent_total",
            "Snapshots sent to followers that were behind the log this node keeps.",
            &[(String::new(), catch_up.snapshots_sent)],
        );
        counter(
            &mut out,
            "runnel_catch_up_log_reads_total",
            "Reads of the log kept below a snapshot (for a lagging follower, a backfill or a fetch), by outcome.",
            &[
                ("served", catch_up.log_reads_served),
                ("refused", catch_up.log_reads_refused),
                ("failed", catch_up.log_reads_failed),
                ("damaged", catch_up.log_reads_damaged),
            ]
            .map(|(outcome, value)| (format!("outcome=\"{outcome}\""), value)),
        );
        counter(
            &mut out,
            "runnel_backfill_entries_stored_total",
            "Committed entries a follower took from its leader below its snapshot (after installing one), so that it can serve lagging followers from its log too.",
            &[(String::new(), catch_up.backfill_entries_stored)],
        );
        counter(
            &mut out,
            "runnel_fetch_log_reads_total",
            "Reads of a partition's log on disk that brought a Fetch batches at or below its snapshot.",
            &[(String::new(), catch_up.client_log_reads_served)],
        );

        let mut hosted = 0u64;
        let mut led = 0u64;
        let mut under_replicated = 0u64;
        let mut leaderless = 0u64;
        let mut partitions = Vec::new();
        if let Some(metadata) = self.metadata() {
            for (topic, placement) in metadata.partition_groups() {
                let Some(view) = self.node.summary(placement.group) else {
                    continue;
                };
                hosted += 1;
                if view.leader.is_none() {
                    leaderless += 1;
                }
                if view.role != Role::Leader {
                    continue;
                }
                led += 1;
                let in_sync = self
                    .node
                    .replicas_in_sync(placement.group, IN_SYNC_LAG_MS)
                    .len();
                let replicas = view.config.voters.len();
                if in_sync < replicas {
                    under_replicated += 1;
                }
                if partitions.len() >= METRICS_PARTITIONS_MAX {
                    continue;
                }
                let index = topic
                    .partitions
                    .iter()
                    .position(|candidate| candidate.group == placement.group)
                    .unwrap_or(0);
                let log = self
                    .node
                    .machine(placement.group)
                    .and_then(|machine| machine.partition());
                partitions.push(PartitionSeries {
                    labels: format!("topic=\"{}\",partition=\"{index}\"", escape(&topic.name)),
                    leader_epoch: view.term,
                    replicas: replicas as u64,
                    in_sync: in_sync as u64,
                    high_watermark: log.map(|log| log.high_watermark().max(0) as u64),
                    log_start_offset: log.map(|log| log.log_start_offset().max(0) as u64),
                    retained_bytes: log.map(|log| log.retained_bytes()),
                });
            }
        }
        gauge(
            &mut out,
            "runnel_partitions_hosted",
            "Partition replicas on this node.",
            &[(String::new(), hosted)],
        );
        gauge(
            &mut out,
            "runnel_partitions_led",
            "Partitions this node leads.",
            &[(String::new(), led)],
        );
        gauge(
            &mut out,
            "runnel_partitions_under_replicated",
            "Partitions this node leads with a replica out of sync.",
            &[(String::new(), under_replicated)],
        );
        gauge(
            &mut out,
            "runnel_partitions_leaderless",
            "Partition replicas on this node that know of no leader.",
            &[(String::new(), leaderless)],
        );
        let series = |pick: &dyn Fn(&PartitionSeries) -> Option<u64>| -> Vec<(String, u64)> {
            partitions
                .iter()
                .filter_map(|partition| {
                    pick(partition).map(|value| (partition.labels.clone(), value))
                })
                .collect()
        };
        gauge(
            &mut out,
            "runnel_partition_leader_epoch",
            "The leader epoch (consensus term) of each partition this node leads.",
            &series(&|partition| Some(partition.leader_epoch)),
        );
        gauge(
            &mut out,
            "runnel_partition_replicas",
            "Voting replicas of each partition this node leads.",
            &series(&|partition| Some(partition.replicas)),
        );
        gauge(
            &mut out,
            "runnel_partition_in_sync_replicas",
            "Replicas in sync of each partition this node leads.",
            &series(&|partition| Some(partition.in_sync)),
        );
        gauge(
            &mut out,
            "runnel_partition_high_watermark",
            "The high watermark (next offset) of each partition this node leads.",
            &series(&|partition| partition.high_watermark),
        );
        gauge(
            &mut out,
            "runnel_partition_log_start_offset",
            "The first offset retained of each partition this node leads.",
            &series(&|partition| partition.log_start_offset),
        );
        gauge(
            &mut out,
            "runnel_partition_retained_bytes",
            "Bytes of batches retained by each partition this node leads.",
            &series(&|partition| partition.retained_bytes),
        );
        out
    }
}

/// What is exported of one partition this node leads; the log's figures
/// are `None` where the node has no partition machine for it.
struct PartitionSeries {
    labels: String,
    leader_epoch: u64,
    replicas: u64,
    in_sync: u64,
    high_watermark: Option<u64>,
    log_start_offset: Option<u64>,
    retained_bytes: Option<u64>,
}

/// Appends one gauge with its help text and every labelled value (labels
/// as `key="value",...`, or empty for none).
pub fn gauge(out: &mut String, name: &str, help: &str, values: &[(String, u64)]) {
    family(out, name, help, "gauge", values);
}

/// One metric family: its help and type lines, then a line per series.
fn family(out: &mut String, name: &str, help: &str, kind: &str, values: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A counter: a value that only grows while the process runs.
fn counter(out: &mut String, name: &str, help: &str, values: &[(String, u64)]) {
    family(out, name, help, "counter", values);
}

/// A label value as the text format wants it: backslash, quote and newline
/// escaped. Topic names cannot hold them, but the format must never break.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
