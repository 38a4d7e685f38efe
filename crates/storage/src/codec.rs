//! Byte layouts of the three kinds of files a group keeps: log frames, vote
//! records and snapshots (docs/storage.md, "Log segments", "Vote record",
//! "Snapshot"). Everything is little-endian and every record carries a
//! CRC-32C, so that recovery can tell a damaged record from a good one
//! without trusting any of its fields. Every checksum also covers the id of
//! the group the record belongs to (it is computed over the group id's eight
//! bytes, then the record), though the id is not stored: a record of another
//! group that a misdirected write put in this group's file fails its
//! checksum even where every field lines up.
//!
//! Decoders never use a length read from disk as an allocation size: every
//! length is checked against the bytes actually present and against a named
//! maximum before it is used to slice the input.

use std::collections::BTreeSet;

use runnel_consensus::{Config, Entry, HardState, Payload, Snapshot, SnapshotMeta};
use runnel_io::{GroupId, NodeId};

use crate::{CONFIG_NODES_MAX, FRAME_BYTES_MAX, SNAPSHOT_BYTES_MAX};

/// Bytes before a frame's payload: length, checksum, index, term and kind.
pub const FRAME_HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 1;

/// Offset of the first byte the frame checksum covers (everything after the
/// length and the checksum themselves).
const FRAME_CHECKED_FROM: usize = 8;

const KIND_NOOP: u8 = 0;
const KIND_DATA: u8 = 1;
const KIND_CONFIG: u8 = 2;

/// Size of one vote record, the whole content of a vote slot file.
pub const VOTE_RECORD_BYTES: usize = 4 + 4 + 8 + 8 + 8 + 8 + 4;
const VOTE_MAGIC: u32 = u32::from_le_bytes(*b"RNVT");
/// Version 2: the checksum covers the group id.
const VOTE_VERSION: u32 = 2;

const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"RNSN");
/// Version 2: the checksum covers the group id.
const SNAPSHOT_VERSION: u32 = 2;
/// Magic, version, index, term, voter count, learner count.
const SNAPSHOT_HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 4 + 4;
/// The smallest possible snapshot file: header, data length, checksum.
const SNAPSHOT_BYTES_MIN: usize = SNAPSHOT_HEADER_BYTES + 8 + 4;

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Reads a little-endian u32 at `at`; the caller has checked the bounds.
fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads a little-endian u64 at `at`; the caller has checked the bounds.
fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The encoded size of a config: two counted lists of node ids.
fn config_bytes(config: &Config) -> usize {
    4 + 8 * config.voters.len() + 4 + 8 * config.learners.len()
}

fn put_config(out: &mut Vec<u8>, config: &Config) {
    // A config this large is a programmer error in the layer that built it:
    // the membership-change rules bound the group size far below this.
    assert!(
        config.voters.len() <= CONFIG_NODES_MAX && config.learners.len() <= CONFIG_NODES_MAX,
        "config with {} voters and {} learners exceeds CONFIG_NODES_MAX",
        config.voters.len(),
        config.learners.len()
    );
    put_u32(out, config.voters.len() as u32);
    for voter in &config.voters {
        put_u64(out, *voter);
    }
    put_u32(out, config.learners.len() as u32);
    for learner in &config.learners {
        put_u64(out, *learner);
    }
}

/// Decodes a config at `*at`, advancing it. None if the bytes do not hold a
/// well-formed config (a count over the maximum, a truncated list, or a node
/// listed twice, which a `BTreeSet` could not have produced).
fn get_config(bytes: &[u8], at: &mut usize) -> Option<Config> {
    let mut lists: [BTreeSet<NodeId>; 2] = [BTreeSet::new(), BTreeSet::new()];
    for list in &mut lists {
        if bytes.len() < *at + 4 {
            return None;
        }
        let count = get_u32(bytes, *at) as usize;
        *at += 4;
        if count > CONFIG_NODES_MAX || bytes.len() < *at + 8 * count {
            return None;
        }
        for _ in 0..count {
            if !list.insert(get_u64(bytes, *at)) {
                return None;
            }
            *at += 8;
        }
    }
    let [voters, learners] = lists;
    Some(Config { voters, learners })
}

/// The encoded length of `entry`'s frame.
pub fn frame_bytes(entry: &Entry) -> usize {
    FRAME_HEADER_BYTES
        + match &entry.payload {
            Payload::Noop => 0,
            Payload::Data(data) => data.len(),
            Payload::Config(config) => config_bytes(config),
        }
}

/// The CRC-32C of `group`'s id (eight bytes, little-endian) followed by
/// `bytes`: the checksum of every record, binding it to its group.
fn group_crc(group: GroupId, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&group.to_le_bytes()), bytes)
}

/// Appends `entry`'s frame to `out`:
/// `[u32 frame length][u32 crc32c of the rest][u64 index][u64 term][u8 kind][payload]`.
/// The frame length counts the whole frame, its own four bytes included.
pub fn encode_frame(group: GroupId, entry: &Entry, out: &mut Vec<u8>) {
    let length = frame_bytes(entry);
    // The node bounds entry sizes (ENTRY_DATA_BYTES_MAX) before it proposes;
    // an entry over the frame limit here is a programmer error, and writing
    // it would produce a frame that recovery treats as corrupt.
    assert!(
        length <= FRAME_BYTES_MAX,
        "entry {} encodes to {length} bytes, over FRAME_BYTES_MAX",
        entry.index
    );
    let start = out.len();
    put_u32(out, length as u32);
    put_u32(out, 0); // The checksum, filled in below.
    put_u64(out, entry.index);
    put_u64(out, entry.term);
    match &entry.payload {
        Payload::Noop => out.push(KIND_NOOP),
        Payload::Data(data) => {
            out.push(KIND_DATA);
            out.extend_from_slice(data);
        }
        Payload::Config(config) => {
            out.push(KIND_CONFIG);
            put_config(out, config);
        }
    }
    debug_assert_eq!(out.len() - start, length);
    let crc = group_crc(group, &out[start + FRAME_CHECKED_FROM..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame at `at` in `bytes`, returning the entry and the frame
/// length, provided its index satisfies `index_ok`. None when the bytes at
/// `at` are not a whole, intact, well-formed frame: too short, a length field
/// out of bounds, a checksum mismatch, an unknown kind or a malformed payload.
///
/// `index_ok` is checked before the checksum so that recovery's scan for the
/// next good frame after damage rejects most candidate offsets cheaply.
pub fn decode_frame(
    group: GroupId,
    bytes: &[u8],
    at: usize,
    index_ok: impl Fn(u64) -> bool,
) -> Option<(Entry, usize)> {
    let rest = bytes.get(at..)?;
    if rest.len() < FRAME_HEADER_BYTES {
        return None;
    }
    let length = get_u32(rest, 0) as usize;
    if !(FRAME_HEADER_BYTES..=FRAME_BYTES_MAX).contains(&length) || length > rest.len() {
        return None;
    }
    let index = get_u64(rest, 8);
    if !index_ok(index) {
        return None;
    }
    let frame = &rest[..length];
    if group_crc(group, &frame[FRAME_CHECKED_FROM..]) != get_u32(frame, 4) {
        return None;
    }
    let term = get_u64(frame, 16);
    let body = &frame[FRAME_HEADER_BYTES..];
    let payload = match frame[24] {
        KIND_NOOP if body.is_empty() => Payload::Noop,
        KIND_DATA => Payload::Data(body.to_vec()),
        KIND_CONFIG => {
            let mut cursor = 0;
            let config = get_config(body, &mut cursor)?;
            if cursor != body.len() {
                return None;
            }
            Payload::Config(config)
        }
        _ => return None,
    };
    Some((
        Entry {
            index,
            term,
            payload,
        },
        length,
    ))
}

/// One decoded vote slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteRecord {
    /// Orders the records of the two slots: the valid one with the higher
    /// sequence is the newer. Starts at 1.
    pub sequence: u64,
    pub state: HardState,
}

/// `[u32 magic][u32 version][u64 sequence][u64 term][u64 voted_for + 1 or 0]
/// [u64 repair index][u32 crc32c of the preceding 40 bytes]`.
pub fn encode_vote(group: GroupId, record: &VoteRecord) -> Vec<u8> {
    // Node ids are operator-assigned small numbers; u64::MAX cannot be
    // encoded because 0 stands for "no vote".
    let voted_for = match record.state.voted_for {
        Some(node) => node
            .checked_add(1)
            .expect("node id u64::MAX cannot be recorded as a vote"),
        None => 0,
    };
    let mut out = Vec::with_capacity(VOTE_RECORD_BYTES);
    put_u32(&mut out, VOTE_MAGIC);
    put_u32(&mut out, VOTE_VERSION);
    put_u64(&mut out, record.sequence);
    put_u64(&mut out, record.state.term);
    put_u64(&mut out, voted_for);
    put_u64(&mut out, record.state.repair_index);
    let crc = group_crc(group, &out);
    put_u32(&mut out, crc);
    debug_assert_eq!(out.len(), VOTE_RECORD_BYTES);
    out
}

/// None unless `bytes` is exactly one intact vote record.
pub fn decode_vote(group: GroupId, bytes: &[u8]) -> Option<VoteRecord> {
    if bytes.len() != VOTE_RECORD_BYTES {
        return None;
    }
    let checked = VOTE_RECORD_BYTES - 4;
    if group_crc(group, &bytes[..checked]) != get_u32(bytes, checked)
        || get_u32(bytes, 0) != VOTE_MAGIC
        || get_u32(bytes, 4) != VOTE_VERSION
    {
        return None;
    }
    let sequence = get_u64(bytes, 8);
    if sequence == 0 {
        return None;
    }
    let voted_for = match get_u64(bytes, 24) {
        0 => None,
        plus_one => Some(plus_one - 1),
    };
    Some(VoteRecord {
        sequence,
        state: HardState {
            term: get_u64(bytes, 16),
            voted_for,
            repair_index: get_u64(bytes, 32),
        },
    })
}

/// `[u32 magic][u32 version][u64 index][u64 term][u32 voter count]
/// [u32 learner count][u64 voters...][u64 learners...][u64 data length][data]
/// [u32 crc32c of everything before it]`.
pub fn encode_snapshot(group: GroupId, snapshot: &Snapshot) -> Vec<u8> {
    let meta = &snapshot.meta;
    assert!(
        meta.config.voters.len() <= CONFIG_NODES_MAX
            && meta.config.learners.len() <= CONFIG_NODES_MAX,
        "snapshot config exceeds CONFIG_NODES_MAX"
    );
    let length = SNAPSHOT_BYTES_MIN
        + 8 * (meta.config.voters.len() + meta.config.learners.len())
        + snapshot.data.len();
    // The state machine bounds its own size; a snapshot over the limit would
    // be written but then refused by recovery, so it is a programmer error.
    assert!(
        length as u64 <= SNAPSHOT_BYTES_MAX,
        "snapshot of {length} bytes exceeds SNAPSHOT_BYTES_MAX"
    );
    let mut out = Vec::with_capacity(length);
    put_u32(&mut out, SNAPSHOT_MAGIC);
    put_u32(&mut out, SNAPSHOT_VERSION);
    put_u64(&mut out, meta.index);
    put_u64(&mut out, meta.term);
    put_u32(&mut out, meta.config.voters.len() as u32);
    put_u32(&mut out, meta.config.learners.len() as u32);
    for node in meta.config.members() {
        put_u64(&mut out, node);
    }
    put_u64(&mut out, snapshot.data.len() as u64);
    out.extend_from_slice(&snapshot.data);
    let crc = group_crc(group, &out);
    put_u32(&mut out, crc);
    debug_assert_eq!(out.len(), length);
    out
}

/// Decodes a whole snapshot file; the error says what is wrong with it.
pub fn decode_snapshot(group: GroupId, bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < SNAPSHOT_BYTES_MIN {
        return Err(format!(
            "snapshot file of {} bytes is too short",
            bytes.len()
        ));
    }
    if bytes.len() as u64 > SNAPSHOT_BYTES_MAX {
        return Err(format!(
            "snapshot file of {} bytes exceeds SNAPSHOT_BYTES_MAX",
            bytes.len()
        ));
    }
    let checked = bytes.len() - 4;
    if group_crc(group, &bytes[..checked]) != get_u32(bytes, checked) {
        return Err("snapshot file fails its checksum (or is another group's)".to_string());
    }
    if get_u32(bytes, 0) != SNAPSHOT_MAGIC || get_u32(bytes, 4) != SNAPSHOT_VERSION {
        return Err("snapshot file has an unknown magic or version".to_string());
    }
    let index = get_u64(bytes, 8);
    let term = get_u64(bytes, 16);
    let voters = get_u32(bytes, 24) as usize;
    let learners = get_u32(bytes, 28) as usize;
    if voters > CONFIG_NODES_MAX || learners > CONFIG_NODES_MAX {
        return Err("snapshot config exceeds CONFIG_NODES_MAX".to_string());
    }
    let members_end = SNAPSHOT_HEADER_BYTES + 8 * (voters + learners);
    if members_end + 8 > checked {
        return Err("snapshot file is shorter than its config".to_string());
    }
    let read_set = |from: usize, count: usize| -> Option<BTreeSet<NodeId>> {
        let mut set = BTreeSet::new();
        for k in 0..count {
            if !set.insert(get_u64(bytes, from + 8 * k)) {
                return None;
            }
        }
        Some(set)
    };
    let (Some(voter_set), Some(learner_set)) = (
        read_set(SNAPSHOT_HEADER_BYTES, voters),
        read_set(SNAPSHOT_HEADER_BYTES + 8 * voters, learners),
    ) else {
        return Err("snapshot config lists a node twice".to_string());
    };
    let data_length = get_u64(bytes, members_end);
    let data_start = members_end + 8;
    if data_length != (checked - data_start) as u64 {
        return Err(format!(
            "snapshot data length {data_length} does not match the file length"
        ));
    }
    if index == 0 {
        return Err("snapshot at index 0".to_string());
    }
    Ok(Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            config: Config {
                voters: voter_set,
                learners: learner_set,
            },
        },
        data: bytes[data_start..checked].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group every record in these tests belongs to.
    const G: GroupId = 7;

    fn config() -> Config {
        Config {
            voters: [1, 2, 3].into_iter().collect(),
            learners: [9].into_iter().collect(),
        }
    }

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                index: 1,
                term: 1,
                payload: Payload::Noop,
            },
            Entry {
                index: 2,
                term: 1,
                payload: Payload::Data(b"hello".to_vec()),
            },
            Entry {
                index: 3,
                term: 2,
                payload: Payload::Config(config()),
            },
            Entry {
                index: 4,
                term: 2,
                payload: Payload::Data(Vec::new()),
            },
        ]
    }

    #[test]
    fn frames_round_trip_and_report_their_length() {
        for entry in entries() {
            let mut bytes = vec![0xAA; 3];
            encode_frame(G, &entry, &mut bytes);
            assert_eq!(bytes.len() - 3, frame_bytes(&entry));
            let (decoded, length) = decode_frame(G, &bytes, 3, |_| true).expect("decodes");
            assert_eq!(decoded, entry);
            assert_eq!(length, frame_bytes(&entry));
        }
    }

    #[test]
    fn every_single_bit_flip_in_a_frame_is_detected() {
        let entry = Entry {
            index: 7,
            term: 3,
            payload: Payload::Config(config()),
        };
        let mut bytes = Vec::new();
        encode_frame(G, &entry, &mut bytes);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_frame(G, &damaged, 0, |_| true), None, "bit {bit}");
        }
    }

    #[test]
    fn every_strict_prefix_of_a_frame_is_rejected() {
        let entry = Entry {
            index: 7,
            term: 3,
            payload: Payload::Data(vec![5; 40]),
        };
        let mut bytes = Vec::new();
        encode_frame(G, &entry, &mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(G, &bytes[..cut], 0, |_| true),
                None,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn an_oversized_length_field_is_rejected_without_allocating() {
        let mut bytes = Vec::new();
        encode_frame(G, &entries()[1], &mut bytes);
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_frame(G, &bytes, 0, |_| true), None);
    }

    #[test]
    fn the_index_filter_is_applied() {
        let mut bytes = Vec::new();
        encode_frame(G, &entries()[1], &mut bytes);
        assert_eq!(decode_frame(G, &bytes, 0, |index| index == 3), None);
        assert!(decode_frame(G, &bytes, 0, |index| index == 2).is_some());
    }

    #[test]
    fn vote_records_round_trip_and_detect_damage() {
        for state in [
            HardState::default(),
            HardState {
                term: 9,
                voted_for: Some(0),
                repair_index: 44,
            },
            HardState {
                term: u64::MAX,
                voted_for: Some(u64::MAX - 1),
                repair_index: u64::MAX,
            },
        ] {
            let record = VoteRecord { sequence: 3, state };
            let bytes = encode_vote(G, &record);
            assert_eq!(bytes.len(), VOTE_RECORD_BYTES);
            assert_eq!(decode_vote(G, &bytes), Some(record));
            for cut in 0..bytes.len() {
                assert_eq!(decode_vote(G, &bytes[..cut]), None);
            }
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(decode_vote(G, &damaged), None, "bit {bit}");
            }
        }
    }

    #[test]
    fn snapshots_round_trip_and_detect_damage() {
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 12,
                term: 4,
                config: config(),
            },
            data: b"state machine".to_vec(),
        };
        let bytes = encode_snapshot(G, &snapshot);
        assert_eq!(decode_snapshot(G, &bytes), Ok(snapshot));
        for cut in 0..bytes.len() {
            assert!(decode_snapshot(G, &bytes[..cut]).is_err());
        }
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_snapshot(G, &damaged).is_err(), "bit {bit}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_snapshot(G, &longer).is_err());
    }

    #[test]
    fn a_record_decodes_only_as_its_own_groups() {
        let mut frame = Vec::new();
        encode_frame(G, &entries()[1], &mut frame);
        assert!(decode_frame(G, &frame, 0, |_| true).is_some());
        assert_eq!(decode_frame(G + 1, &frame, 0, |_| true), None);
        let record = VoteRecord {
            sequence: 3,
            state: HardState {
                term: 4,
                voted_for: Some(2),
                repair_index: 0,
            },
        };
        let vote = encode_vote(G, &record);
        assert_eq!(decode_vote(G, &vote), Some(record));
        assert_eq!(decode_vote(G + 1, &vote), None);
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: 5,
                term: 2,
                config: Config::new([1, 2, 3]),
            },
            data: vec![9; 10],
        };
        let bytes = encode_snapshot(G, &snapshot);
        assert_eq!(decode_snapshot(G, &bytes), Ok(snapshot));
        assert!(decode_snapshot(G + 1, &bytes).is_err());
    }
}
