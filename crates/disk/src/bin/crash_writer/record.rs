//! The record format of the crash test, shared by the writer process
//! (src/bin/crash_writer) and the test that kills it (tests/crash.rs, which
//! includes this file by path).
//!
//! A record is `[u32 len][u32 crc][u64 seq][payload]`, little-endian, with
//! `len` the payload's length and `crc` the CRC-32C of the len field, the seq
//! field and the payload. The crc covers `len` so that a torn or damaged
//! length is caught too (it then selects the wrong bytes). Records follow
//! each other with no padding; seq starts at 0 and increases by one. The
//! payload of each seq is fixed (`payload`), so a reader can tell a record
//! that checks out but holds the wrong bytes: that would be a misread.

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 16;
/// Largest payload; a len field above it is damage, never an allocation.
pub const PAYLOAD_MAX: usize = 4096;

/// The payload of record `seq`: its length and bytes both follow from `seq`.
pub fn payload(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % (PAYLOAD_MAX / 2);
    (0..len)
        .map(|i| (seq.wrapping_mul(31).wrapping_add(i as u64) % 251) as u8)
        .collect()
}

fn checksum(len: &[u8], seq: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(len);
    let crc = crc32c::crc32c_append(crc, seq);
    crc32c::crc32c_append(crc, payload)
}

/// The bytes of record `seq`.
pub fn encode(seq: u64) -> Vec<u8> {
    let payload = payload(seq);
    let len = (payload.len() as u32).to_le_bytes();
    let seq_bytes = seq.to_le_bytes();
    let crc = checksum(&len, &seq_bytes, &payload);
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.extend_from_slice(&len);
    record.extend_from_slice(&crc.to_le_bytes());
    record.extend_from_slice(&seq_bytes);
    record.extend_from_slice(&payload);
    record
}

/// What a scan of a file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Intact records, in order from seq 0: also the next seq to write.
    pub records: u64,
    /// Where the intact records end: where the next record goes.
    pub end: u64,
    /// Bytes after `end` that do not form an intact record (a torn tail).
    pub tail: u64,
}

/// Reads records from the start of `bytes` while they are intact: the
/// header fits, the length is within bounds and fits, and the crc matches.
/// The first that is not ends the scan: everything from there on is a torn
/// tail. A record that checks out but has the wrong seq or payload is an
/// error: the checksum would then have let a misread through.
pub fn scan(bytes: &[u8]) -> Result<Recovered, String> {
    let mut position = 0;
    let mut seq = 0u64;
    loop {
        let rest = &bytes[position..];
        if rest.len() < HEADER_BYTES {
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len > PAYLOAD_MAX || rest.len() < HEADER_BYTES + len {
            break;
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let payload = &rest[HEADER_BYTES..HEADER_BYTES + len];
        if crc != checksum(&rest[0..4], &rest[8..16], payload) {
            break;
        }
        let found = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
        if found != seq {
            return Err(format!(
                "intact record at byte {position} has seq {found}, expected {seq}"
            ));
        }
        if payload != self::payload(seq).as_slice() {
            return Err(format!(
                "intact record {seq} at byte {position} has the wrong payload"
            ));
        }
        position += HEADER_BYTES + len;
        seq += 1;
    }
    Ok(Recovered {
        records: seq,
        end: position as u64,
        tail: (bytes.len() - position) as u64,
    })
}
