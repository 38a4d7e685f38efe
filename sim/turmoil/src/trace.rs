//! The run's trace: every client action and outcome, every fault the
//! nemesis applies and every node exit, hashed (FNV-1a, stable across runs
//! and platforms) so that two runs of one seed can be compared. The last
//! lines are kept for a failure report.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};

use runnel_sim::kafka_workload::KafkaAction;
use runnel_sim::trace::Fnv64;

/// Lines kept for a failure report.
pub const TRACE_LINES_KEPT: usize = 40;

#[derive(Default)]
pub struct Trace {
    hasher: Fnv64,
    events: u64,
    last: VecDeque<String>,
}

impl Trace {
    pub fn new() -> Trace {
        Trace::default()
    }

    fn record(
        &mut self,
        at_ms: u64,
        tag: &str,
        content: &impl Hash,
        line: impl FnOnce() -> String,
    ) {
        at_ms.hash(&mut self.hasher);
        tag.hash(&mut self.hasher);
        content.hash(&mut self.hasher);
        self.events += 1;
        if self.last.len() == TRACE_LINES_KEPT {
            self.last.pop_front();
        }
        self.last
            .push_back(format!("{at_ms:>7} ms {tag} {}", line()));
    }

    pub fn client_action(&mut self, at_ms: u64, action: &KafkaAction) {
        match action {
            KafkaAction::Send {
                node,
                connection,
                frame,
            } => self.record(at_ms, "send", &(node, connection, &frame[..]), || {
                format!(
                    "node {node} connection {connection} ({} bytes)",
                    frame.len()
                )
            }),
            KafkaAction::Close { node, connection } => {
                self.record(at_ms, "close", &(node, connection), || {
                    format!("node {node} connection {connection}")
                })
            }
            KafkaAction::Wake { at, client, token } => {
                self.record(at_ms, "wake", &(at, client, token), || {
                    format!("client {client} at {at}")
                })
            }
        }
    }

    pub fn client_response(&mut self, at_ms: u64, connection: u64, frame: &[u8]) {
        self.record(at_ms, "response", &(connection, frame), || {
            format!("connection {connection} ({} bytes)", frame.len())
        });
    }

    pub fn client_closed(&mut self, at_ms: u64, connection: u64) {
        self.record(at_ms, "closed", &connection, || {
            format!("connection {connection}")
        });
    }

    pub fn note(&mut self, at_ms: u64, what: &str) {
        self.record(at_ms, "note", &what, || what.to_string());
    }

    pub fn fault(&mut self, at_ms: u64, what: &str) {
        self.record(at_ms, "fault", &what, || what.to_string());
    }

    pub fn final_logs(
        &mut self,
        at_ms: u64,
        logs: &BTreeMap<(String, i32), crate::client::PartitionLog>,
    ) {
        self.record(at_ms, "final", logs, || {
            format!("{} partitions read", logs.len())
        });
    }

    pub fn hash(&self) -> u64 {
        self.hasher.finish()
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn last_lines(&self) -> Vec<String> {
        self.last.iter().cloned().collect()
    }
}
