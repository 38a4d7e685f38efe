//! The replicated state machine of a group: an append-only sequence of
//! records with per-client deduplication (docs/protocol.md §6).
//!
//! Appends are idempotent: a client numbers its appends by `seq`, and an
//! entry whose `seq` the client already applied is not applied again, so a
//! retried append lands once. This mirrors Kafka's idempotent producer.

use std::collections::BTreeMap;

use crate::api::{ClientId, Record};

/// What applying one append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Applied at this position.
    Appended(u64),
    /// Already applied earlier at this position (a retry).
    Duplicate(u64),
    /// An older `seq` than the client's last: superseded, not applied.
    Superseded,
    /// A `seq` that skips one: not applied (the client must not skip).
    OutOfOrder,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    records: Vec<Record>,
    /// Per client: the last applied `seq` and its position.
    sessions: BTreeMap<ClientId, (u64, u64)>,
}

const SNAPSHOT_VERSION: u32 = 1;

impl StateMachine {
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The last applied `seq` of `client` and its position.
    pub fn session(&self, client: ClientId) -> Option<(u64, u64)> {
        self.sessions.get(&client).copied()
    }

    /// What an append of (`client`, `seq`) would do if applied now.
    pub fn classify(&self, client: ClientId, seq: u64) -> AppendOutcome {
        match self.sessions.get(&client) {
            Some(&(last_seq, position)) if seq == last_seq => AppendOutcome::Duplicate(position),
            Some(&(last_seq, _)) if seq < last_seq => AppendOutcome::Superseded,
            Some(&(last_seq, _)) if seq > last_seq + 1 => AppendOutcome::OutOfOrder,
            None if seq != 1 => AppendOutcome::OutOfOrder,
            _ => AppendOutcome::Appended(self.records.len() as u64),
        }
    }

    pub fn apply(&mut self, record: Record) -> AppendOutcome {
        let outcome = self.classify(record.client, record.seq);
        if let AppendOutcome::Appended(position) = outcome {
            self.sessions.insert(record.client, (record.seq, position));
            self.records.push(record);
        }
        outcome
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        for record in &self.records {
            out.extend_from_slice(&record.client.to_le_bytes());
            out.extend_from_slice(&record.seq.to_le_bytes());
            out.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&record.value);
        }
        out.extend_from_slice(&(self.sessions.len() as u64).to_le_bytes());
        for (client, (seq, position)) in &self.sessions {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&position.to_le_bytes());
        }
        out
    }

    /// Decodes a snapshot this module encoded. The snapshot file is
    /// checksummed by storage, so malformed data here is a programmer error.
    pub fn decode(data: &[u8]) -> StateMachine {
        if data.is_empty() {
            return StateMachine::default();
        }
        let mut reader = Reader::new(data);
        let version = reader.u32();
        assert_eq!(
            version, SNAPSHOT_VERSION,
            "unknown state machine snapshot version"
        );
        let record_count = reader.u64();
        let mut records = Vec::with_capacity(record_count.min(1 << 20) as usize);
        for _ in 0..record_count {
            let client = reader.u64();
            let seq = reader.u64();
            let length = reader.u32() as usize;
            let value = reader.bytes(length).to_vec();
            records.push(Record { client, seq, value });
        }
        let session_count = reader.u64();
        let mut sessions = BTreeMap::new();
        for _ in 0..session_count {
            let client = reader.u64();
            let seq = reader.u64();
            let position = reader.u64();
            sessions.insert(client, (seq, position));
        }
        reader.finish();
        StateMachine { records, sessions }
    }
}

/// Encodes an append as entry payload: client, seq, then the value.
pub fn encode_append(client: ClientId, seq: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&client.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes an entry payload written by `encode_append`.
pub fn decode_append(data: &[u8]) -> Option<Record> {
    if data.len() < 16 {
        return None;
    }
    let client = u64::from_le_bytes(data[0..8].try_into().ok()?);
    let seq = u64::from_le_bytes(data[8..16].try_into().ok()?);
    Some(Record {
        client,
        seq,
        value: data[16..].to_vec(),
    })
}

/// Reads snapshot data this crate wrote. Snapshots are checksummed by
/// storage, so data that does not parse is a programmer error: it panics.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, offset: 0 }
    }
    pub(crate) fn finish(&self) {
        assert_eq!(self.offset, self.data.len(), "trailing bytes in snapshot");
    }
    pub(crate) fn bytes(&mut self, length: usize) -> &[u8] {
        let end = self.offset.checked_add(length).expect("length overflow");
        assert!(end <= self.data.len(), "snapshot truncated");
        let slice = &self.data[self.offset..end];
        self.offset = end;
        slice
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes(4).try_into().expect("4 bytes"))
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes(8).try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(client: ClientId, seq: u64) -> Record {
        Record {
            client,
            seq,
            value: vec![seq as u8; 3],
        }
    }

    #[test]
    fn retries_apply_once() {
        let mut machine = StateMachine::default();
        assert_eq!(machine.apply(record(7, 1)), AppendOutcome::Appended(0));
        assert_eq!(machine.apply(record(8, 1)), AppendOutcome::Appended(1));
        assert_eq!(machine.apply(record(7, 1)), AppendOutcome::Duplicate(0));
        assert_eq!(machine.apply(record(7, 2)), AppendOutcome::Appended(2));
        assert_eq!(machine.apply(record(7, 1)), AppendOutcome::Superseded);
        assert_eq!(machine.apply(record(7, 4)), AppendOutcome::OutOfOrder);
        assert_eq!(machine.apply(record(9, 2)), AppendOutcome::OutOfOrder);
        assert_eq!(machine.records().len(), 3);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut machine = StateMachine::default();
        for seq in 1..=5 {
            machine.apply(record(1, seq));
            machine.apply(record(2, seq));
        }
        let decoded = StateMachine::decode(&machine.encode());
        assert_eq!(decoded, machine);
        assert_eq!(StateMachine::decode(&[]), StateMachine::default());
    }

    #[test]
    fn append_payload_round_trip() {
        let data = encode_append(3, 9, b"hello");
        assert_eq!(
            decode_append(&data),
            Some(Record {
                client: 3,
                seq: 9,
                value: b"hello".to_vec()
            })
        );
        assert_eq!(decode_append(&data[..10]), None);
    }
}
