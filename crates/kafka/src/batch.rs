//! RecordBatch v2: validation and the fields a broker stamps.
//!
//! A batch stays the bytes the client sent. The broker reads its fixed
//! header, checks that the bytes are what they claim to be, and overwrites
//! the fields that only the broker can know: the base offset and the
//! partition leader epoch (neither is covered by the batch CRC), and, for
//! topics with `message.timestamp.type=LogAppendTime`, the timestamp type and
//! the max timestamp (both covered, so the CRC is recomputed).
//!
//! Layout (all integers big-endian; the CRC-32C covers `attributes` to the
//! end of the batch):
//!
//! ```text
//! 0  base_offset i64         8  batch_length i32       12 partition_leader_epoch i32
//! 16 magic i8                17 crc u32                21 attributes i16
//! 23 last_offset_delta i32   27 base_timestamp i64     35 max_timestamp i64
//! 43 producer_id i64         51 producer_epoch i16     53 base_sequence i32
//! 57 record_count i32        61 records ...
//! ```

use std::fmt;

/// Bytes of the fixed batch header, before the first record.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `batch_length` counts: `base_offset` and `batch_length`.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The largest batch accepted (Kafka's `message.max.bytes` default, plus
/// the log overhead).
pub const BATCH_BYTES_MAX: usize = 1_048_588;
/// Most records one batch may claim; bounds the work of walking it.
pub const BATCH_RECORDS_MAX: i32 = 1 << 20;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// The fixed header of a RecordBatch v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

/// The compression codec of a batch (attributes bits 0..2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl BatchHeader {
    pub fn compression(&self) -> Option<Compression> {
        match self.attributes & COMPRESSION_MASK {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Whether the timestamps are the broker's (LogAppendTime) rather than
    /// the producer's (CreateTime).
    pub fn log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// Whether the batch comes from an idempotent producer.
    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }

    /// The sequence number of the batch's last record, wrapping as Kafka
    /// does at `i32::MAX`.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = i64::from(self.base_sequence) + i64::from(self.last_offset_delta);
        (last % (i64::from(i32::MAX) + 1)) as i32
    }
}

/// Why a batch was refused. Each maps to the Kafka error code a client
/// expects (see [`BatchError::kafka_error_code`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or `batch_length` does not match.
    Truncated {
        bytes: usize,
    },
    LengthMismatch {
        batch_length: i64,
        bytes: usize,
    },
    TooLarge {
        bytes: usize,
    },
    /// Not RecordBatch v2 (older message formats are not accepted).
    UnsupportedMagic {
        magic: i8,
    },
    CrcMismatch {
        stored: u32,
        computed: u32,
    },
    UnknownCompression {
        attributes: i16,
    },
    /// `record_count` is not positive, over the bound, or does not agree
    /// with `last_offset_delta`.
    BadRecordCount {
        record_count: i32,
        last_offset_delta: i32,
    },
    /// The records of an uncompressed batch do not parse or do not add up:
    /// lengths that overrun, offset deltas out of order, a count mismatch.
    BadRecords {
        reason: &'static str,
    },
    /// A control batch from a client; only the broker writes those.
    ControlBatch,
    /// More than one batch in a partition's records of one Produce.
    MultipleBatches,
}

/// Kafka error codes used for batches.
pub mod error_code {
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INVALID_RECORD: i16 = 87;
}

impl BatchError {
    /// The error code Kafka answers a Produce with for this batch.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            BatchError::Truncated { .. }
            | BatchError::LengthMismatch { .. }
            | BatchError::CrcMismatch { .. } => error_code::CORRUPT_MESSAGE,
            BatchError::TooLarge { .. } => error_code::MESSAGE_TOO_LARGE,
            BatchError::UnknownCompression { .. } => error_code::UNSUPPORTED_COMPRESSION_TYPE,
            // Kafka refuses a Produce v3+ whose batch is not magic 2 as an
            // invalid record.
            BatchError::UnsupportedMagic { .. }
            | BatchError::BadRecordCount { .. }
            | BatchError::BadRecords { .. }
            | BatchError::ControlBatch
            | BatchError::MultipleBatches => error_code::INVALID_RECORD,
        }
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated { bytes } => {
                write!(f, "record batch truncated: {bytes} bytes")
            }
            BatchError::LengthMismatch {
                batch_length,
                bytes,
            } => write!(
                f,
                "record batch length {batch_length} does not match its {bytes} bytes"
            ),
            BatchError::TooLarge { bytes } => write!(
                f,
                "record batch of {bytes} bytes is over the {BATCH_BYTES_MAX} byte limit"
            ),
            BatchError::UnsupportedMagic { magic } => {
                write!(f, "record batch magic {magic} is not supported (only 2)")
            }
            BatchError::CrcMismatch { stored, computed } => write!(
                f,
                "record batch CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            BatchError::UnknownCompression { attributes } => {
                write!(f, "unknown compression codec in attributes {attributes:#x}")
            }
            BatchError::BadRecordCount {
                record_count,
                last_offset_delta,
            } => write!(
                f,
                "record count {record_count} does not agree with last offset delta {last_offset_delta}"
            ),
            BatchError::BadRecords { reason } => write!(f, "malformed records: {reason}"),
            BatchError::ControlBatch => write!(f, "clients may not write control batches"),
            BatchError::MultipleBatches => {
                write!(f, "more than one record batch for one partition")
            }
        }
    }
}

impl std::error::Error for BatchError {}

/// Reads the fixed header without checking anything but its length.
pub fn read_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < HEADER_BYTES {
        return Err(BatchError::Truncated { bytes: bytes.len() });
    }
    let i16_at = |at: usize| i16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let i32_at = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let i64_at = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(BatchHeader {
        base_offset: i64_at(0),
        batch_length: i32_at(8),
        partition_leader_epoch: i32_at(12),
        magic: bytes[16] as i8,
        crc: u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes")),
        attributes: i16_at(21),
        last_offset_delta: i32_at(23),
        base_timestamp_ms: i64_at(27),
        max_timestamp_ms: i64_at(35),
        producer_id: i64_at(43),
        producer_epoch: i16_at(51),
        base_sequence: i32_at(53),
        record_count: i32_at(57),
    })
}

/// Checks that `bytes` is exactly one well-formed RecordBatch v2 as a client
/// may send it, and returns its header. For uncompressed batches the records
/// are walked too; compressed records stay opaque (the CRC covers them).
pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() > BATCH_BYTES_MAX {
        return Err(BatchError::TooLarge { bytes: bytes.len() });
    }
    let header = read_header(bytes)?;
    let claimed_bytes = i64::from(header.batch_length) + LOG_OVERHEAD_BYTES as i64;
    if claimed_bytes < bytes.len() as i64 && claimed_bytes >= HEADER_BYTES as i64 {
        // Another batch follows this one.
        return Err(BatchError::MultipleBatches);
    }
    if claimed_bytes != bytes.len() as i64 {
        return Err(BatchError::LengthMismatch {
            batch_length: i64::from(header.batch_length),
            bytes: bytes.len(),
        });
    }
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic {
            magic: header.magic,
        });
    }
    let computed = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let Some(compression) = header.compression() else {
        return Err(BatchError::UnknownCompression {
            attributes: header.attributes,
        });
    };
    if header.record_count <= 0
        || header.record_count > BATCH_RECORDS_MAX
        || header.last_offset_delta != header.record_count - 1
    {
        return Err(BatchError::BadRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.is_control() {
        return Err(BatchError::ControlBatch);
    }
    if compression == Compression::None {
        walk_records(&bytes[HEADER_BYTES..], header.record_count)?;
    }
    Ok(header)
}

/// Walks uncompressed records: each length must stay inside the batch, each
/// offset delta must be the record's position, and the records must fill
/// the batch exactly.
fn walk_records(mut records: &[u8], record_count: i32) -> Result<(), BatchError> {
    for position in 0..record_count {
        let length = read_varint(&mut records)?;
        if length < 0 || length as usize > records.len() {
            return Err(BatchError::BadRecords {
                reason: "record length overruns the batch",
            });
        }
        let (mut record, rest) = records.split_at(length as usize);
        records = rest;
        if record.is_empty() {
            return Err(BatchError::BadRecords {
                reason: "empty record",
            });
        }
        record = &record[1..]; // attributes
        read_varint(&mut record)?; // timestamp delta
        let offset_delta = read_varint(&mut record)?;
        if offset_delta != i64::from(position) {
            return Err(BatchError::BadRecords {
                reason: "offset deltas are not 0, 1, 2, ...",
            });
        }
        skip_bytes_field(&mut record)?; // key
        skip_bytes_field(&mut record)?; // value
        let header_count = read_varint(&mut record)?;
        if header_count < 0 || header_count as usize > record.len() {
            return Err(BatchError::BadRecords {
                reason: "header count overruns the record",
            });
        }
        for _ in 0..header_count {
            let key_length = read_varint(&mut record)?;
            if key_length < 0 {
                return Err(BatchError::BadRecords {
                    reason: "null header key",
                });
            }
            skip(&mut record, key_length as usize)?;
            skip_bytes_field(&mut record)?;
        }
        if !record.is_empty() {
            return Err(BatchError::BadRecords {
                reason: "record length does not match its fields",
            });
        }
    }
    if !records.is_empty() {
        return Err(BatchError::BadRecords {
            reason: "bytes after the last record",
        });
    }
    Ok(())
}

fn skip(buffer: &mut &[u8], length: usize) -> Result<(), BatchError> {
    if length > buffer.len() {
        return Err(BatchError::BadRecords {
            reason: "field overruns the record",
        });
    }
    *buffer = &buffer[length..];
    Ok(())
}

/// A varint-length byte field, where -1 is null.
fn skip_bytes_field(buffer: &mut &[u8]) -> Result<(), BatchError> {
    let length = read_varint(buffer)?;
    if length < -1 {
        return Err(BatchError::BadRecords {
            reason: "negative field length",
        });
    }
    if length > 0 {
        skip(buffer, length as usize)?;
    }
    Ok(())
}

/// A zigzag varint of at most 10 bytes (Kafka's varlong; varints fit).
fn read_varint(buffer: &mut &[u8]) -> Result<i64, BatchError> {
    let mut value: u64 = 0;
    for (count, byte) in buffer.iter().enumerate() {
        if count >= 10 {
            break;
        }
        value |= u64::from(byte & 0x7f) << (7 * count);
        if byte & 0x80 == 0 {
            *buffer = &buffer[count + 1..];
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err(BatchError::BadRecords {
        reason: "malformed varint",
    })
}

/// Stamps a validated batch in place: its base offset and partition leader
/// epoch, and for LogAppendTime topics the timestamp type and max timestamp
/// (recomputing the CRC, which covers them).
pub fn stamp(
    bytes: &mut [u8],
    base_offset: i64,
    partition_leader_epoch: i32,
    log_append_time_ms: Option<i64>,
) {
    assert!(bytes.len() >= HEADER_BYTES, "stamping an unvalidated batch");
    bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
    bytes[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&partition_leader_epoch.to_be_bytes());
    if let Some(time_ms) = log_append_time_ms {
        let attributes = i16::from_be_bytes([bytes[21], bytes[22]]) | TIMESTAMP_TYPE_BIT;
        bytes[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        bytes[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
            .copy_from_slice(&time_ms.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
        bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// A record's key and value, either of which may be null.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Builds an uncompressed batch of `records` (key, value) for tests and
/// tools; timestamps are `timestamp_ms` for every record.
pub fn build_uncompressed(
    records: &[KeyValue<'_>],
    timestamp_ms: i64,
    producer: Option<(i64, i16, i32)>,
) -> Vec<u8> {
    let mut body = Vec::new();
    for (position, (key, value)) in records.iter().enumerate() {
        let mut record = vec![0u8]; // attributes
        write_varint(&mut record, 0); // timestamp delta
        write_varint(&mut record, position as i64);
        for field in [key, value] {
            match field {
                None => write_varint(&mut record, -1),
                Some(bytes) => {
                    write_varint(&mut record, bytes.len() as i64);
                    record.extend_from_slice(bytes);
                }
            }
        }
        write_varint(&mut record, 0); // headers
        write_varint(&mut body, record.len() as i64);
        body.extend_from_slice(&record);
    }
    let (producer_id, producer_epoch, base_sequence) = producer.unwrap_or((-1, -1, -1));
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&0i64.to_be_bytes());
    let batch_length = (HEADER_BYTES - LOG_OVERHEAD_BYTES + body.len()) as i32;
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.push(2);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&producer_id.to_be_bytes());
    out.extend_from_slice(&producer_epoch.to_be_bytes());
    out.extend_from_slice(&base_sequence.to_be_bytes());
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

fn write_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        build_uncompressed(
            &[
                (Some(b"k1"), Some(b"v1")),
                (None, None),
                (Some(b""), Some(b"value three")),
            ],
            1_700_000_000_000,
            Some((7, 0, 5)),
        )
    }

    #[test]
    fn a_built_batch_validates() {
        let header = validate(&sample()).expect("valid");
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.producer_id, 7);
        assert_eq!(header.base_sequence, 5);
        assert_eq!(header.last_sequence(), 7);
        assert_eq!(header.compression(), Some(Compression::None));
        assert!(!header.log_append_time());
    }

    #[test]
    fn every_flipped_bit_is_caught_or_harmless() {
        // A flip in the base offset or leader epoch is not covered by the
        // CRC (the broker overwrites both); anywhere else it must be caught.
        let batch = sample();
        for byte in 0..batch.len() {
            for bit in 0..8 {
                let mut damaged = batch.clone();
                damaged[byte] ^= 1 << bit;
                let uncovered = byte < 8 || (12..16).contains(&byte);
                assert_eq!(
                    validate(&damaged).is_ok(),
                    uncovered,
                    "flip at byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncations_are_refused() {
        let batch = sample();
        for length in 0..batch.len() {
            assert!(validate(&batch[..length]).is_err(), "length {length}");
        }
    }

    #[test]
    fn wrong_magic_is_refused_with_the_format_error() {
        let mut batch = sample();
        batch[16] = 1;
        let error = validate(&batch).unwrap_err();
        assert_eq!(error, BatchError::UnsupportedMagic { magic: 1 });
        assert_eq!(error.kafka_error_code(), error_code::INVALID_RECORD);
    }

    #[test]
    fn a_count_that_disagrees_is_refused() {
        let mut batch = sample();
        batch[57..61].copy_from_slice(&4i32.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate(&batch),
            Err(BatchError::BadRecordCount { .. })
        ));
    }

    #[test]
    fn two_batches_are_refused() {
        let mut two = sample();
        two.extend_from_slice(&sample());
        assert_eq!(validate(&two), Err(BatchError::MultipleBatches));
    }

    #[test]
    fn stamping_keeps_the_batch_valid() {
        let mut batch = sample();
        stamp(&mut batch, 1_000, 4, None);
        let header = validate(&batch).expect("still valid");
        assert_eq!(header.base_offset, 1_000);
        assert_eq!(header.partition_leader_epoch, 4);
        stamp(&mut batch, 2_000, 5, Some(1_234));
        let header = validate(&batch).expect("still valid");
        assert!(header.log_append_time());
        assert_eq!(header.max_timestamp_ms, 1_234);
        assert_eq!(header.base_offset, 2_000);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = validate(&bytes);
        }

        #[test]
        fn random_records_region_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..128), count in 1i32..5) {
            // A header with a valid CRC over random records exercises the
            // record walk rather than the CRC check.
            let mut batch = sample()[..HEADER_BYTES].to_vec();
            batch.extend_from_slice(&body);
            let length = (batch.len() - LOG_OVERHEAD_BYTES) as i32;
            batch[8..12].copy_from_slice(&length.to_be_bytes());
            batch[23..27].copy_from_slice(&(count - 1).to_be_bytes());
            batch[57..61].copy_from_slice(&count.to_be_bytes());
            let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
            batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
            let _ = validate(&batch);
        }
    }
}
