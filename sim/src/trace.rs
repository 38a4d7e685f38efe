//! The run's trace: a stable 64-bit hash of every event in order (two runs of
//! a seed must agree on it), and the last events in compact form, formatted
//! only when a run fails.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

use runnel_consensus::{Body, Message};
use runnel_core::{ClientError, ClientOp, ClientReply, ClientRequest, ClientResponse, Envelope};
use runnel_io::{DiskCompletion, GroupId, NodeId};

/// Events kept for the failure report.
pub const TRACE_RING_MAX: usize = 200;
/// Messages of one envelope kept in the trace line.
pub const TRACE_MESSAGES_MAX: usize = 3;

/// FNV-1a, 64 bits: stable across platforms, Rust versions and runs.
#[derive(Clone, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.0;
        for &byte in bytes {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One message of an envelope, summarized.
#[derive(Clone, Copy, Debug)]
pub struct MessageLine {
    pub group: GroupId,
    pub kind: &'static str,
    pub term: u64,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

impl MessageLine {
    pub fn of(group: GroupId, message: &Message) -> MessageLine {
        let (kind, a, b, c) = match &message.body {
            Body::PreVote {
                last_index,
                last_term,
            } => ("PreVote", *last_index, *last_term, 0),
            Body::PreVoteResponse { granted } => ("PreVoteResp", *granted as u64, 0, 0),
            Body::Vote {
                last_index,
                last_term,
                transfer,
            } => ("Vote", *last_index, *last_term, *transfer as u64),
            Body::VoteResponse { granted } => ("VoteResp", *granted as u64, 0, 0),
            Body::Append {
                prev_index,
                entries,
                commit,
                ..
            } => ("Append", *prev_index, entries.len() as u64, *commit),
            Body::AppendResponse {
                success,
                match_index,
                reject_hint,
                ..
            } => ("AppendResp", *success as u64, *match_index, *reject_hint),
            Body::InstallSnapshot { snapshot } => (
                "InstallSnapshot",
                snapshot.meta.index,
                snapshot.meta.term,
                0,
            ),
            Body::TimeoutNow => ("TimeoutNow", 0, 0, 0),
            Body::TermQuery => ("TermQuery", 0, 0, 0),
            Body::TermReport => ("TermReport", 0, 0, 0),
            Body::Removed { config_index } => ("Removed", *config_index, 0, 0),
            Body::BackfillRequest { below } => ("BackfillReq", *below, 0, 0),
            Body::Backfill { below, entries } => ("Backfill", *below, entries.len() as u64, 0),
        };
        MessageLine {
            group,
            kind,
            term: message.term,
            a,
            b,
            c,
        }
    }
}

impl fmt::Display for MessageLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = (self.a, self.b, self.c);
        write!(f, "g{} {} t{} ", self.group, self.kind, self.term)?;
        match self.kind {
            "PreVote" | "Vote" => write!(
                f,
                "last=({a},t{b}){}",
                if c == 1 { " transfer" } else { "" }
            ),
            "PreVoteResp" | "VoteResp" => write!(f, "granted={}", a == 1),
            "Append" => write!(f, "prev={a} n={b} commit={c}"),
            "AppendResp" => write!(f, "ok={} match={b} hint={c}", a == 1),
            "InstallSnapshot" => write!(f, "index={a} term={b}"),
            "BackfillReq" => write!(f, "below={a}"),
            "Backfill" => write!(f, "below={a} n={b}"),
            _ => Ok(()),
        }
    }
}

/// What happened, in a few words.
#[derive(Clone, Debug)]
pub enum TraceKind {
    Tick,
    Peer {
        from: NodeId,
        count: usize,
        messages: [Option<MessageLine>; TRACE_MESSAGES_MAX],
    },
    Disk {
        token: u64,
        result: &'static str,
    },
    Request {
        client: u64,
        request_id: u64,
        group: GroupId,
        op: &'static str,
        arg: u64,
    },
    Response {
        client: u64,
        request_id: u64,
        group: GroupId,
        result: &'static str,
        arg: u64,
    },
    /// A Kafka request frame arrived on a client connection.
    KafkaRequest {
        connection: u64,
        api_key: i16,
        bytes: usize,
    },
    /// Held while paused, or dropped (crashed node).
    Note(&'static str),
    Fault(String),
}

#[derive(Clone, Debug)]
pub struct TraceLine {
    pub at_ms: u64,
    pub node: Option<NodeId>,
    pub kind: TraceKind,
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>6}.{:03}s ", self.at_ms / 1000, self.at_ms % 1000)?;
        match self.node {
            Some(node) => write!(f, "n{node:<2} ")?,
            None => write!(f, "    ")?,
        }
        match &self.kind {
            TraceKind::Tick => write!(f, "tick"),
            TraceKind::Peer {
                from,
                count,
                messages,
            } => {
                write!(f, "from n{from} ({count} msgs):")?;
                for line in messages.iter().flatten() {
                    write!(f, " [{line}]")?;
                }
                if *count > TRACE_MESSAGES_MAX {
                    write!(f, " ...")?;
                }
                Ok(())
            }
            TraceKind::Disk { token, result } => {
                write!(f, "disk completion token={token} {result}")
            }
            TraceKind::Request {
                client,
                request_id,
                group,
                op,
                arg,
            } => write!(f, "client c{client} req#{request_id} g{group} {op} {arg}"),
            TraceKind::Response {
                client,
                request_id,
                group,
                result,
                arg,
            } => write!(
                f,
                "reply to c{client} req#{request_id} g{group} {result} {arg}"
            ),
            TraceKind::KafkaRequest {
                connection,
                api_key,
                bytes,
            } => write!(
                f,
                "kafka request on connection {connection}: api key {api_key}, {bytes} bytes"
            ),
            TraceKind::Note(note) => write!(f, "{note}"),
            TraceKind::Fault(description) => write!(f, "FAULT {description}"),
        }
    }
}

impl TraceKind {
    pub fn peer(envelope: &Envelope) -> TraceKind {
        let mut messages = [None; TRACE_MESSAGES_MAX];
        for (slot, (group, message)) in messages.iter_mut().zip(&envelope.messages) {
            *slot = Some(MessageLine::of(*group, message));
        }
        TraceKind::Peer {
            from: envelope.from,
            count: envelope.messages.len(),
            messages,
        }
    }

    pub fn kafka_request(connection: u64, frame: &[u8]) -> TraceKind {
        let api_key = frame
            .get(..2)
            .map_or(-1, |bytes| i16::from_be_bytes([bytes[0], bytes[1]]));
        TraceKind::KafkaRequest {
            connection,
            api_key,
            bytes: frame.len(),
        }
    }

    pub fn disk(completion: &DiskCompletion) -> TraceKind {
        TraceKind::Disk {
            token: completion.token,
            result: match &completion.result {
                Ok(_) => "ok",
                Err(_) => "ERROR",
            },
        }
    }

    pub fn request(request: &ClientRequest) -> TraceKind {
        let (op, arg) = match &request.op {
            ClientOp::Append { seq, .. } => ("append seq", *seq),
            ClientOp::Read { from_position, .. } => ("read from", *from_position),
            ClientOp::ChangeConfig { .. } => ("change-config", 0),
            ClientOp::TransferLeader { to } => ("transfer-leader to", *to),
            ClientOp::Propose { data } => ("propose bytes", data.len() as u64),
            ClientOp::ReadIndex => ("read-index", 0),
            ClientOp::ReadLog { from } => ("read-log from", *from),
        };
        TraceKind::Request {
            client: request.client,
            request_id: request.request_id,
            group: request.group,
            op,
            arg,
        }
    }

    pub fn response(response: &ClientResponse) -> TraceKind {
        let (result, arg) = match &response.result {
            Ok(ClientReply::Appended { position }) => ("appended at", *position),
            Ok(ClientReply::Records { records, .. }) => ("records", records.len() as u64),
            Ok(ClientReply::Accepted) => ("accepted", 0),
            Ok(ClientReply::Applied(_)) => ("applied", 0),
            Ok(ClientReply::ReadReady) => ("read-ready", 0),
            Ok(ClientReply::Entries { entries }) => ("entries", entries.len() as u64),
            Err(ClientError::NotLeader { leader_hint }) => {
                ("not-leader hint", leader_hint.unwrap_or(0))
            }
            Err(ClientError::UnknownGroup) => ("unknown-group", 0),
            Err(ClientError::Unknown) => ("unknown", 0),
            Err(ClientError::Rejected(_)) => ("rejected", 0),
        };
        TraceKind::Response {
            client: response.client,
            request_id: response.request_id,
            group: response.group,
            result,
            arg,
        }
    }
}

pub struct Trace {
    hasher: Fnv64,
    ring: VecDeque<TraceLine>,
    events: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    pub fn new() -> Trace {
        Trace {
            hasher: Fnv64::default(),
            ring: VecDeque::with_capacity(TRACE_RING_MAX),
            events: 0,
        }
    }

    /// Feeds one event into the hash (kind, time and content, in order).
    pub fn hash_event(&mut self, tag: u8, at_ms: u64, content: &impl Hash) {
        self.events += 1;
        tag.hash(&mut self.hasher);
        at_ms.hash(&mut self.hasher);
        content.hash(&mut self.hasher);
    }

    pub fn line(&mut self, at_ms: u64, node: Option<NodeId>, kind: TraceKind) {
        if self.ring.len() == TRACE_RING_MAX {
            self.ring.pop_front();
        }
        self.ring.push_back(TraceLine { at_ms, node, kind });
    }

    pub fn hash(&self) -> u64 {
        self.hasher.finish()
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn last_lines(&self) -> Vec<String> {
        self.ring.iter().map(|line| line.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        let mut hasher = Fnv64::default();
        hasher.write(b"a");
        assert_eq!(hasher.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn ring_keeps_the_last_lines() {
        let mut trace = Trace::new();
        for at in 0..(TRACE_RING_MAX as u64 + 10) {
            trace.line(at, Some(1), TraceKind::Tick);
        }
        let lines = trace.last_lines();
        assert_eq!(lines.len(), TRACE_RING_MAX);
        assert!(lines[0].contains("0.010s"), "{}", lines[0]);
    }

    #[test]
    fn hash_depends_on_order() {
        let mut a = Trace::new();
        a.hash_event(1, 5, &10u64);
        a.hash_event(1, 6, &11u64);
        let mut b = Trace::new();
        b.hash_event(1, 6, &11u64);
        b.hash_event(1, 5, &10u64);
        assert_ne!(a.hash(), b.hash());
    }
}
