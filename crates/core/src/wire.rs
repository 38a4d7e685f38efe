//! The byte encoding of peer envelopes, for transports that carry bytes
//! (TCP between production nodes, turmoil in the second simulation tier).
//!
//! Layout (little-endian), documented in docs/protocol.md §12:
//!
//! ```text
//! envelope := magic u32 | version u16 | from u64 | to u64 | count u32
//!             | count * (group u64 | message) | crc32c u32 (of all before)
//! message  := from u64 | to u64 | term u64 | tag u8 | body
//! ```
//!
//! Decoding never trusts a length: every count is checked against the bytes
//! that remain and against the named maxima below, so a corrupt or hostile
//! frame yields an error, never a panic or a large allocation.

use std::collections::BTreeSet;

use runnel_consensus::{Body, Config, Entry, Message, Payload, Snapshot, SnapshotMeta};
use runnel_io::GroupId;

use crate::api::Envelope;

const MAGIC: u32 = 0x524e_4c45; // "RNLE"
/// Version 2: Append and AppendResponse carry the read round (§6.3).
/// Version 3: BackfillRequest and Backfill (§8.2).
/// Version 4: AppendResponse says whether the follower lacks the log its
/// host serves (§8.3).
const VERSION: u16 = 4;

/// The largest encoded envelope a node sends or accepts. It must hold the
/// largest snapshot a group takes (a partition's, see
/// `partition::PARTITION_SNAPSHOT_BYTES_MAX`) in one message.
pub const ENVELOPE_BYTES_MAX: usize = 192 << 20;
/// Bytes of an envelope around its messages: magic, version, from, to,
/// message count, and the crc.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 4 + 2 + 8 + 8 + 4 + 4;
/// Bytes of an InstallSnapshot message around its data, at most: the
/// group, the message header, the snapshot point, the largest membership
/// and the data length.
pub const SNAPSHOT_MESSAGE_OVERHEAD_BYTES_MAX: usize =
    8 + 8 + 8 + 8 + 1 + 8 + 8 + 2 * (4 + 8 * CONFIG_MEMBERS_MAX) + 4;
/// At most this many group messages in one envelope.
pub const ENVELOPE_MESSAGES_MAX: usize = 1 << 20;
/// At most this many nodes in one membership.
pub const CONFIG_MEMBERS_MAX: usize = 1_024;

const _: () = assert!(ENVELOPE_BYTES_MAX <= u32::MAX as usize);
// The largest partition snapshot travels alone in one envelope.
const _: () = assert!(
    ENVELOPE_OVERHEAD_BYTES
        + SNAPSHOT_MESSAGE_OVERHEAD_BYTES_MAX
        + crate::partition::PARTITION_SNAPSHOT_BYTES_MAX as usize
        <= ENVELOPE_BYTES_MAX
);

/// Why an envelope could not be decoded. The transport drops the envelope
/// (and, for a stream, the connection): the protocol tolerates loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    TooLarge(usize),
    Truncated,
    BadMagic,
    UnsupportedVersion(u16),
    BadChecksum,
    BadTag(u8),
    OverLimit(&'static str),
    TrailingBytes,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::TooLarge(bytes) => write!(f, "envelope of {bytes} bytes is over the limit"),
            WireError::Truncated => write!(f, "envelope truncated"),
            WireError::BadMagic => write!(f, "not a runnel envelope"),
            WireError::UnsupportedVersion(version) => {
                write!(f, "unsupported envelope version {version}")
            }
            WireError::BadChecksum => write!(f, "envelope checksum mismatch"),
            WireError::BadTag(tag) => write!(f, "unknown tag {tag}"),
            WireError::OverLimit(what) => write!(f, "{what} over its limit"),
            WireError::TrailingBytes => write!(f, "bytes after the envelope"),
        }
    }
}

impl std::error::Error for WireError {}

/// Encodes an envelope. Panics only on programmer error: an envelope the
/// node built that breaks the limits above.
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    assert!(envelope.messages.len() <= ENVELOPE_MESSAGES_MAX);
    let mut out = Vec::with_capacity(64);
    put_u32(&mut out, MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_u64(&mut out, envelope.from);
    put_u64(&mut out, envelope.to);
    put_u32(&mut out, envelope.messages.len() as u32);
    for (group, message) in &envelope.messages {
        put_u64(&mut out, *group);
        encode_message(&mut out, message);
    }
    let crc = crc32c::crc32c(&out);
    put_u32(&mut out, crc);
    assert!(out.len() <= ENVELOPE_BYTES_MAX, "envelope over its limit");
    out
}

pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, WireError> {
    if bytes.len() > ENVELOPE_BYTES_MAX {
        return Err(WireError::TooLarge(bytes.len()));
    }
    if bytes.len() < 4 + 2 + 8 + 8 + 4 + 4 {
        return Err(WireError::Truncated);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(WireError::BadChecksum);
    }
    let mut reader = Reader { bytes: body };
    if reader.u32()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = u16::from_le_bytes(reader.take(2)?.try_into().expect("2 bytes"));
    if version != VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let from = reader.u64()?;
    let to = reader.u64()?;
    let count = reader.count(ENVELOPE_MESSAGES_MAX, 8 + 25, "messages")?;
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let group: GroupId = reader.u64()?;
        messages.push((group, decode_message(&mut reader)?));
    }
    if !reader.bytes.is_empty() {
        return Err(WireError::TrailingBytes);
    }
    Ok(Envelope { from, to, messages })
}

/// Exactly the bytes `encode_envelope` spends on one `(group, message)`
/// pair, so that a node can split its messages into envelopes that each
/// stay within `ENVELOPE_BYTES_MAX` without encoding them twice.
pub fn encoded_message_bytes(message: &Message) -> usize {
    let config_bytes =
        |config: &Config| 4 + 8 * config.voters.len() + 4 + 8 * config.learners.len();
    let entries_bytes = |entries: &[Entry]| {
        4 + entries
            .iter()
            .map(|entry| {
                16 + 1
                    + match &entry.payload {
                        Payload::Noop => 0,
                        Payload::Data(data) => 4 + data.len(),
                        Payload::Config(config) => config_bytes(config),
                    }
            })
            .sum::<usize>()
    };
    let body = match &message.body {
        Body::PreVote { .. } => 16,
        Body::PreVoteResponse { .. } | Body::VoteResponse { .. } => 1,
        Body::Vote { .. } => 17,
        Body::Append { entries, .. } => 40 + entries_bytes(entries),
        Body::BackfillRequest { .. } => 8,
        Body::Backfill { entries, .. } => 8 + entries_bytes(entries),
        Body::AppendResponse { .. } => 26,
        Body::InstallSnapshot { snapshot } => {
            16 + config_bytes(&snapshot.meta.config) + 4 + snapshot.data.len()
        }
        Body::TimeoutNow | Body::TermQuery | Body::TermReport => 0,
        Body::Removed { .. } => 8,
    };
    // The group, then from, to, term and the tag.
    8 + 24 + 1 + body
}

/// Splits `messages` for one peer into envelopes that each encode within
/// `ENVELOPE_BYTES_MAX` and `ENVELOPE_MESSAGES_MAX`, keeping their order.
/// A message that cannot fit even alone is returned apart: bounds elsewhere
/// (append and snapshot sizes) are meant to make that impossible, and the
/// caller reports it rather than sending what every receiver would refuse.
pub fn split_into_envelopes(
    from: u64,
    to: u64,
    messages: Vec<(GroupId, Message)>,
) -> (Vec<Envelope>, Vec<(GroupId, Message)>) {
    let mut envelopes = Vec::new();
    let mut oversized = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = ENVELOPE_OVERHEAD_BYTES;
    for (group, message) in messages {
        let bytes = encoded_message_bytes(&message);
        if ENVELOPE_OVERHEAD_BYTES + bytes > ENVELOPE_BYTES_MAX {
            oversized.push((group, message));
            continue;
        }
        if !current.is_empty()
            && (current_bytes + bytes > ENVELOPE_BYTES_MAX
                || current.len() == ENVELOPE_MESSAGES_MAX)
        {
            envelopes.push(Envelope {
                from,
                to,
                messages: std::mem::take(&mut current),
            });
            current_bytes = ENVELOPE_OVERHEAD_BYTES;
        }
        current_bytes += bytes;
        current.push((group, message));
    }
    if !current.is_empty() {
        envelopes.push(Envelope {
            from,
            to,
            messages: current,
        });
    }
    (envelopes, oversized)
}

fn encode_message(out: &mut Vec<u8>, message: &Message) {
    put_u64(out, message.from);
    put_u64(out, message.to);
    put_u64(out, message.term);
    match &message.body {
        Body::PreVote {
            last_index,
            last_term,
        } => {
            out.push(1);
            put_u64(out, *last_index);
            put_u64(out, *last_term);
        }
        Body::PreVoteResponse { granted } => {
            out.push(2);
            out.push(u8::from(*granted));
        }
        Body::Vote {
            last_index,
            last_term,
            transfer,
        } => {
            out.push(3);
            put_u64(out, *last_index);
            put_u64(out, *last_term);
            out.push(u8::from(*transfer));
        }
        Body::VoteResponse { granted } => {
            out.push(4);
            out.push(u8::from(*granted));
        }
        Body::Append {
            prev_index,
            prev_term,
            entries,
            commit,
            leader_last_index,
            read_round,
        } => {
            out.push(5);
            put_u64(out, *prev_index);
            put_u64(out, *prev_term);
            put_u64(out, *commit);
            put_u64(out, *leader_last_index);
            put_u64(out, *read_round);
            put_u32(
                out,
                u32::try_from(entries.len()).expect("entry count fits u32"),
            );
            encode_entries(out, entries);
        }
        Body::AppendResponse {
            success,
            match_index,
            reject_hint,
            read_round,
            lacks_log,
        } => {
            out.push(6);
            out.push(u8::from(*success));
            put_u64(out, *match_index);
            put_u64(out, *reject_hint);
            put_u64(out, *read_round);
            out.push(u8::from(*lacks_log));
        }
        Body::InstallSnapshot { snapshot } => {
            out.push(7);
            put_u64(out, snapshot.meta.index);
            put_u64(out, snapshot.meta.term);
            encode_config(out, &snapshot.meta.config);
            put_bytes(out, &snapshot.data);
        }
        Body::TimeoutNow => out.push(8),
        Body::TermQuery => out.push(9),
        Body::TermReport => out.push(10),
        Body::Removed { config_index } => {
            out.push(11);
            put_u64(out, *config_index);
        }
        Body::BackfillRequest { below } => {
            out.push(12);
            put_u64(out, *below);
        }
        Body::Backfill { below, entries } => {
            out.push(13);
            put_u64(out, *below);
            put_u32(
                out,
                u32::try_from(entries.len()).expect("entry count fits u32"),
            );
            encode_entries(out, entries);
        }
    }
}

fn encode_entries(out: &mut Vec<u8>, entries: &[Entry]) {
    for entry in entries {
        put_u64(out, entry.index);
        put_u64(out, entry.term);
        encode_payload(out, &entry.payload);
    }
}

/// Entries after their count, as `encode_entries` wrote them.
fn decode_entries(reader: &mut Reader<'_>) -> Result<Vec<Entry>, WireError> {
    let count = reader.count(ENVELOPE_MESSAGES_MAX, 17, "entries")?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let index = reader.u64()?;
        let term = reader.u64()?;
        let payload = decode_payload(reader)?;
        entries.push(Entry {
            index,
            term,
            payload,
        });
    }
    Ok(entries)
}

fn decode_message(reader: &mut Reader<'_>) -> Result<Message, WireError> {
    let from = reader.u64()?;
    let to = reader.u64()?;
    let term = reader.u64()?;
    let tag = reader.u8()?;
    let body = match tag {
        1 => Body::PreVote {
            last_index: reader.u64()?,
            last_term: reader.u64()?,
        },
        2 => Body::PreVoteResponse {
            granted: reader.bool()?,
        },
        3 => Body::Vote {
            last_index: reader.u64()?,
            last_term: reader.u64()?,
            transfer: reader.bool()?,
        },
        4 => Body::VoteResponse {
            granted: reader.bool()?,
        },
        5 => {
            let prev_index = reader.u64()?;
            let prev_term = reader.u64()?;
            let commit = reader.u64()?;
            let leader_last_index = reader.u64()?;
            let read_round = reader.u64()?;
            // An entry takes at least 17 bytes (index, term, payload tag).
            let entries = decode_entries(reader)?;
            Body::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                leader_last_index,
                read_round,
            }
        }
        6 => Body::AppendResponse {
            success: reader.bool()?,
            match_index: reader.u64()?,
            reject_hint: reader.u64()?,
            read_round: reader.u64()?,
            lacks_log: reader.bool()?,
        },
        7 => {
            let index = reader.u64()?;
            let term = reader.u64()?;
            let config = decode_config(reader)?;
            let data = reader.bytes_field()?.to_vec();
            Body::InstallSnapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term,
                        config,
                    },
                    data,
                },
            }
        }
        8 => Body::TimeoutNow,
        9 => Body::TermQuery,
        10 => Body::TermReport,
        11 => Body::Removed {
            config_index: reader.u64()?,
        },
        12 => Body::BackfillRequest {
            below: reader.u64()?,
        },
        13 => {
            let below = reader.u64()?;
            let entries = decode_entries(reader)?;
            Body::Backfill { below, entries }
        }
        other => return Err(WireError::BadTag(other)),
    };
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

fn encode_payload(out: &mut Vec<u8>, payload: &Payload) {
    match payload {
        Payload::Noop => out.push(0),
        Payload::Data(data) => {
            out.push(1);
            put_bytes(out, data);
        }
        Payload::Config(config) => {
            out.push(2);
            encode_config(out, config);
        }
    }
}

fn decode_payload(reader: &mut Reader<'_>) -> Result<Payload, WireError> {
    match reader.u8()? {
        0 => Ok(Payload::Noop),
        1 => Ok(Payload::Data(reader.bytes_field()?.to_vec())),
        2 => Ok(Payload::Config(decode_config(reader)?)),
        other => Err(WireError::BadTag(other)),
    }
}

fn encode_config(out: &mut Vec<u8>, config: &Config) {
    for set in [&config.voters, &config.learners] {
        assert!(set.len() <= CONFIG_MEMBERS_MAX);
        put_u32(out, set.len() as u32);
        for node in set {
            put_u64(out, *node);
        }
    }
}

fn decode_config(reader: &mut Reader<'_>) -> Result<Config, WireError> {
    let mut sets: [BTreeSet<u64>; 2] = [BTreeSet::new(), BTreeSet::new()];
    for set in &mut sets {
        let count = reader.count(CONFIG_MEMBERS_MAX, 8, "config members")?;
        for _ in 0..count {
            set.insert(reader.u64()?);
        }
    }
    let [voters, learners] = sets;
    Ok(Config { voters, learners })
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, u32::try_from(bytes.len()).expect("field fits u32"));
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < length {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(WireError::BadTag(other)),
        }
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count of items, each at least `item_bytes_min` long: checked
    /// against `max` and against the bytes left, before anything is
    /// allocated for it.
    fn count(
        &mut self,
        max: usize,
        item_bytes_min: usize,
        what: &'static str,
    ) -> Result<usize, WireError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(WireError::OverLimit(what));
        }
        if count.saturating_mul(item_bytes_min) > self.bytes.len() {
            return Err(WireError::Truncated);
        }
        Ok(count)
    }
    fn bytes_field(&mut self) -> Result<&'a [u8], WireError> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(term: u64, body: Body) -> Message {
        Message {
            from: 1,
            to: 2,
            term,
            body,
        }
    }

    fn sample() -> Envelope {
        let config = Config {
            voters: [1, 2, 3].into_iter().collect(),
            learners: [4].into_iter().collect(),
        };
        Envelope {
            from: 1,
            to: 2,
            messages: vec![
                (
                    7,
                    message(
                        3,
                        Body::PreVote {
                            last_index: 9,
                            last_term: 2,
                        },
                    ),
                ),
                (7, message(3, Body::PreVoteResponse { granted: true })),
                (
                    8,
                    message(
                        4,
                        Body::Vote {
                            last_index: 10,
                            last_term: 3,
                            transfer: true,
                        },
                    ),
                ),
                (8, message(4, Body::VoteResponse { granted: false })),
                (
                    9,
                    message(
                        5,
                        Body::Append {
                            prev_index: 10,
                            prev_term: 4,
                            entries: vec![
                                Entry {
                                    index: 11,
                                    term: 5,
                                    payload: Payload::Noop,
                                },
                                Entry {
                                    index: 12,
                                    term: 5,
                                    payload: Payload::Data(b"hello".to_vec()),
                                },
                                Entry {
                                    index: 13,
                                    term: 5,
                                    payload: Payload::Config(config.clone()),
                                },
                            ],
                            commit: 10,
                            leader_last_index: 13,
                            read_round: 7,
                        },
                    ),
                ),
                (
                    9,
                    message(
                        5,
                        Body::AppendResponse {
                            success: false,
                            match_index: 10,
                            reject_hint: 4,
                            read_round: 7,
                            lacks_log: true,
                        },
                    ),
                ),
                (
                    9,
                    message(
                        5,
                        Body::InstallSnapshot {
                            snapshot: Snapshot {
                                meta: SnapshotMeta {
                                    index: 100,
                                    term: 5,
                                    config,
                                },
                                data: vec![1, 2, 3],
                            },
                        },
                    ),
                ),
                (9, message(5, Body::TimeoutNow)),
                (9, message(5, Body::TermQuery)),
                (9, message(6, Body::TermReport)),
                (9, message(7, Body::Removed { config_index: 12 })),
                (10, message(7, Body::BackfillRequest { below: 40 })),
                (
                    10,
                    message(
                        7,
                        Body::Backfill {
                            below: 40,
                            entries: vec![
                                Entry {
                                    index: 38,
                                    term: 4,
                                    payload: Payload::Data(vec![9, 8]),
                                },
                                Entry {
                                    index: 39,
                                    term: 5,
                                    payload: Payload::Noop,
                                },
                            ],
                        },
                    ),
                ),
                (
                    10,
                    message(
                        7,
                        Body::Backfill {
                            below: 1,
                            entries: Vec::new(),
                        },
                    ),
                ),
            ],
        }
    }

    #[test]
    fn every_message_kind_round_trips() {
        let envelope = sample();
        let bytes = encode_envelope(&envelope);
        assert_eq!(decode_envelope(&bytes), Ok(envelope));
    }

    #[test]
    fn encoded_sizes_are_exact() {
        let envelope = sample();
        let predicted: usize = ENVELOPE_OVERHEAD_BYTES
            + envelope
                .messages
                .iter()
                .map(|(_, message)| encoded_message_bytes(message))
                .sum::<usize>();
        assert_eq!(encode_envelope(&envelope).len(), predicted);
        for (group, message) in &envelope.messages {
            let alone = Envelope {
                from: envelope.from,
                to: envelope.to,
                messages: vec![(*group, message.clone())],
            };
            assert_eq!(
                encode_envelope(&alone).len(),
                ENVELOPE_OVERHEAD_BYTES + encoded_message_bytes(message),
                "{message:?}"
            );
        }
    }

    fn big_append(group: GroupId, bytes: usize) -> (GroupId, Message) {
        (
            group,
            message(
                5,
                Body::Append {
                    prev_index: 0,
                    prev_term: 0,
                    entries: vec![Entry {
                        index: 1,
                        term: 5,
                        payload: Payload::Data(vec![7; bytes]),
                    }],
                    commit: 0,
                    leader_last_index: 1,
                    read_round: 0,
                },
            ),
        )
    }

    #[test]
    fn many_large_messages_split_into_envelopes_within_the_limit() {
        // Forty groups each sending 16 MiB to one peer in one step: 640 MiB,
        // more than three times what one envelope may hold.
        let messages: Vec<_> = (0..40).map(|group| big_append(group, 16 << 20)).collect();
        let (envelopes, oversized) = split_into_envelopes(5, 1, messages.clone());
        assert!(oversized.is_empty());
        let total: usize = 40 << 24;
        assert!(
            envelopes.len() > total / ENVELOPE_BYTES_MAX,
            "{} envelopes",
            envelopes.len()
        );
        let mut seen = Vec::new();
        for envelope in &envelopes {
            let bytes = encode_envelope(envelope);
            assert!(bytes.len() <= ENVELOPE_BYTES_MAX);
            assert_eq!(decode_envelope(&bytes).as_ref(), Ok(envelope));
            seen.extend(envelope.messages.iter().cloned());
        }
        assert_eq!(seen, messages, "every message once, in order");
    }

    #[test]
    fn a_message_over_the_limit_alone_is_set_apart() {
        let too_big = big_append(3, ENVELOPE_BYTES_MAX);
        let small = (4, message(5, Body::TimeoutNow));
        let (envelopes, oversized) =
            split_into_envelopes(5, 1, vec![small.clone(), too_big.clone()]);
        assert_eq!(oversized, vec![too_big]);
        assert_eq!(envelopes.len(), 1);
        assert_eq!(envelopes[0].messages, vec![small]);
    }

    #[test]
    fn damage_is_detected() {
        let bytes = encode_envelope(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_envelope(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(decode_envelope(&damaged).is_err(), "flip at {position}");
        }
    }

    #[test]
    fn hostile_counts_allocate_nothing() {
        // A valid checksum over a frame claiming four billion messages.
        let mut out = Vec::new();
        put_u32(&mut out, MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        put_u64(&mut out, 1);
        put_u64(&mut out, 2);
        put_u32(&mut out, u32::MAX);
        let crc = crc32c::crc32c(&out);
        put_u32(&mut out, crc);
        assert_eq!(decode_envelope(&out), Err(WireError::OverLimit("messages")));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_envelope(&bytes);
        }

        #[test]
        fn random_bytes_with_a_valid_checksum_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut framed = Vec::new();
            put_u32(&mut framed, MAGIC);
            framed.extend_from_slice(&VERSION.to_le_bytes());
            framed.extend_from_slice(&bytes);
            let crc = crc32c::crc32c(&framed);
            put_u32(&mut framed, crc);
            let _ = decode_envelope(&framed);
        }

        #[test]
        fn data_entries_round_trip(
            datas in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            term in 1u64..1000,
        ) {
            let entries: Vec<Entry> = datas
                .into_iter()
                .enumerate()
                .map(|(offset, data)| Entry { index: offset as u64 + 1, term, payload: Payload::Data(data) })
                .collect();
            let envelope = Envelope {
                from: 3,
                to: 1,
                messages: vec![(1, Message { from: 3, to: 1, term, body: Body::Append {
                    prev_index: 0, prev_term: 0, entries, commit: 0, leader_last_index: 0, read_round: 0 } })],
            };
            prop_assert_eq!(decode_envelope(&encode_envelope(&envelope)), Ok(envelope));
        }
    }
}
