//! RecordBatch v2 bytes as the bench sends and reads them, built and walked
//! by hand: a general encoder (such as `kafka-protocol`'s) allocates a
//! `Record` per message, which costs more client CPU than the broker spends
//! on the same message. The layout is in `runnel_kafka::batch`.
//!
//! Every value starts with a [`MESSAGE_HEADER_BYTES`]-byte header that lets
//! a consumer tell this run's messages from others, count each one once,
//! and compute its end-to-end latency:
//!
//! ```text
//! 0 run_id u64   8 producer u32   12 sequence u64   20 sent_us u64 (wall clock, µs since the epoch)
//! ```
//!
//! The rest of the value is filler: random capital letters, which compress
//! about as well as text does (the same choice as Kafka's own perf tool).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

/// The bytes every value starts with.
pub const MESSAGE_HEADER_BYTES: usize = 28;
/// Bytes of the fixed batch header, before the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Most bytes of decompressed records the consumer accepts from one batch,
/// so that a hostile or broken batch cannot make it allocate without bound.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;

const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const COMPRESSION_MASK: i16 = 0x07;
const CONTROL_BIT: i16 = 0x20;

/// A batch's compression codec, as its attribute bits number them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn attribute(self) -> i16 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }
}

/// The header of one message's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    pub run_id: u64,
    pub producer: u32,
    pub sequence: u64,
    pub sent_us: u64,
}

impl MessageHeader {
    pub fn to_bytes(self) -> [u8; MESSAGE_HEADER_BYTES] {
        let mut out = [0u8; MESSAGE_HEADER_BYTES];
        out[0..8].copy_from_slice(&self.run_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.producer.to_be_bytes());
        out[12..20].copy_from_slice(&self.sequence.to_be_bytes());
        out[20..28].copy_from_slice(&self.sent_us.to_be_bytes());
        out
    }

    /// The header of a value, or `None` when it is too short to hold one.
    pub fn parse(value: &[u8]) -> Option<MessageHeader> {
        let header = value.get(..MESSAGE_HEADER_BYTES)?;
        let u64_at = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8"));
        Some(MessageHeader {
            run_id: u64_at(0),
            producer: u32::from_be_bytes(header[8..12].try_into().expect("4")),
            sequence: u64_at(12),
            sent_us: u64_at(20),
        })
    }
}

fn varint_len(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut length = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        length += 1;
    }
    length
}

fn put_varint(out: &mut BytesMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

/// One partition's batch being filled: the records are written straight
/// into the bytes that will be sent, after room for the header.
pub struct BatchBuilder {
    bytes: BytesMut,
    records: i32,
    base_timestamp_ms: i64,
    max_timestamp_ms: i64,
}

impl BatchBuilder {
    pub fn new(capacity_bytes: usize) -> BatchBuilder {
        let mut bytes = BytesMut::with_capacity(BATCH_HEADER_BYTES + capacity_bytes);
        bytes.put_bytes(0, BATCH_HEADER_BYTES);
        BatchBuilder {
            bytes,
            records: 0,
            base_timestamp_ms: 0,
            max_timestamp_ms: 0,
        }
    }

    pub fn records(&self) -> i32 {
        self.records
    }

    /// Bytes the batch holds so far, header included.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one record whose value is `header` followed by `filler`.
    pub fn append(
        &mut self,
        key: Option<&[u8]>,
        header: &[u8; MESSAGE_HEADER_BYTES],
        filler: &[u8],
        timestamp_ms: i64,
    ) {
        if self.records == 0 {
            self.base_timestamp_ms = timestamp_ms;
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        let timestamp_delta = timestamp_ms - self.base_timestamp_ms;
        let offset_delta = i64::from(self.records);
        let value_len = (MESSAGE_HEADER_BYTES + filler.len()) as i64;
        let key_len = key.map_or(-1, |key| key.len() as i64);
        let body_len = 1
            + varint_len(timestamp_delta)
            + varint_len(offset_delta)
            + varint_len(key_len)
            + key.map_or(0, <[u8]>::len)
            + varint_len(value_len)
            + value_len as usize
            + 1;
        self.bytes.reserve(body_len + 5);
        put_varint(&mut self.bytes, body_len as i64);
        self.bytes.put_u8(0); // record attributes
        put_varint(&mut self.bytes, timestamp_delta);
        put_varint(&mut self.bytes, offset_delta);
        put_varint(&mut self.bytes, key_len);
        if let Some(key) = key {
            self.bytes.put_slice(key);
        }
        put_varint(&mut self.bytes, value_len);
        self.bytes.put_slice(header);
        self.bytes.put_slice(filler);
        put_varint(&mut self.bytes, 0); // no headers
        self.records += 1;
    }

    /// The finished batch, compressed with `codec`.
    pub fn seal(self, codec: Codec) -> Result<Bytes, String> {
        assert!(self.records > 0, "sealing an empty batch");
        let BatchBuilder {
            mut bytes,
            records,
            base_timestamp_ms,
            max_timestamp_ms,
        } = self;
        if codec != Codec::None {
            let mut compressed = BytesMut::with_capacity(bytes.len() / 2 + BATCH_HEADER_BYTES);
            compressed.put_bytes(0, BATCH_HEADER_BYTES);
            let plain = &bytes[BATCH_HEADER_BYTES..];
            let copy = |out: &mut BytesMut| {
                out.put_slice(plain);
                Ok(())
            };
            match codec {
                Codec::None => unreachable!("handled above"),
                Codec::Gzip => Gzip::compress(&mut compressed, copy),
                Codec::Snappy => Snappy::compress(&mut compressed, copy),
                Codec::Lz4 => Lz4::compress(&mut compressed, copy),
                Codec::Zstd => Zstd::compress(&mut compressed, copy),
            }
            .map_err(|error| format!("cannot compress a batch with {codec:?}: {error:#}"))?;
            bytes = compressed;
        }
        let batch_length = (bytes.len() - 12) as i32;
        let mut header = &mut bytes[..BATCH_HEADER_BYTES];
        header.put_i64(0); // base offset: the broker assigns it
        header.put_i32(batch_length);
        header.put_i32(-1); // partition leader epoch: the broker stamps it
        header.put_i8(2); // magic
        header.put_u32(0); // CRC, below
        header.put_i16(codec.attribute());
        header.put_i32(records - 1);
        header.put_i64(base_timestamp_ms);
        header.put_i64(max_timestamp_ms);
        header.put_i64(-1); // producer id: not idempotent
        header.put_i16(-1);
        header.put_i32(-1);
        header.put_i32(records);
        let crc = crc32c::crc32c(&bytes[ATTRIBUTES_OFFSET..]);
        bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(bytes.freeze())
    }
}

/// What [`walk_batches`] found in a fetched `records` field.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walked {
    /// The offset to fetch from next: one past the last whole batch.
    pub next_offset: Option<i64>,
    pub records: u64,
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Result<i64, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("a record ends inside a varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("a varint longer than 10 bytes".into())
}

/// Decompresses a batch's records. The codecs decompress whole, so the
/// bound is checked on the result: it keeps a broken batch from being
/// walked, not from being inflated once (the bench trusts the broker it
/// measures that far).
fn decompress(codec: i16, compressed: Bytes) -> Result<Bytes, String> {
    let mut input = compressed;
    let take = |buf: &mut Bytes| Ok(std::mem::take(buf));
    let result = match codec {
        1 => Gzip::decompress(&mut input, take),
        2 => Snappy::decompress(&mut input, take),
        3 => Lz4::decompress(&mut input, take),
        4 => Zstd::decompress(&mut input, take),
        other => return Err(format!("a batch with unknown compression {other}")),
    };
    let plain = result.map_err(|error| format!("cannot decompress a batch: {error:#}"))?;
    if plain.len() > DECOMPRESSED_BATCH_BYTES_MAX {
        return Err(format!(
            "a batch decompresses to {} bytes, over {DECOMPRESSED_BATCH_BYTES_MAX}",
            plain.len()
        ));
    }
    Ok(plain)
}

/// Walks the batches of a fetched `records` field, calling `on_value` with
/// the offset and value of every data record at or after `from_offset`. A
/// partial batch at the end (a broker may cut the last one short) is left
/// for the next fetch.
pub fn walk_batches(
    mut bytes: Bytes,
    from_offset: i64,
    mut on_value: impl FnMut(i64, &[u8]),
) -> Result<Walked, String> {
    let mut walked = Walked::default();
    while bytes.len() >= BATCH_HEADER_BYTES {
        let base_offset = i64::from_be_bytes(bytes[0..8].try_into().expect("8"));
        let batch_length = i32::from_be_bytes(bytes[8..12].try_into().expect("4"));
        if batch_length < (BATCH_HEADER_BYTES - 12) as i32 {
            return Err(format!("a batch claims {batch_length} bytes"));
        }
        let total = 12 + batch_length as usize;
        if bytes.len() < total {
            break;
        }
        let batch = bytes.split_to(total);
        if batch[16] != 2 {
            return Err(format!("a batch of magic {} (only 2 is read)", batch[16]));
        }
        let attributes = i16::from_be_bytes([batch[21], batch[22]]);
        let last_offset_delta = i32::from_be_bytes(batch[23..27].try_into().expect("4"));
        let record_count = i32::from_be_bytes(batch[57..61].try_into().expect("4"));
        walked.next_offset = Some(base_offset + i64::from(last_offset_delta) + 1);
        if attributes & CONTROL_BIT != 0 {
            continue;
        }
        let body = batch.slice(BATCH_HEADER_BYTES..);
        let body = match attributes & COMPRESSION_MASK {
            0 => body,
            codec => decompress(codec, body)?,
        };
        let mut at = 0usize;
        for _ in 0..record_count.max(0) {
            let length = read_varint(&body, &mut at)?;
            let end = at
                .checked_add(usize::try_from(length).map_err(|_| "a negative record length")?)
                .filter(|&end| end <= body.len())
                .ok_or("a record longer than its batch")?;
            at += 1; // attributes
            read_varint(&body, &mut at)?; // timestamp delta
            let offset = base_offset + read_varint(&body, &mut at)?;
            let key_len = read_varint(&body, &mut at)?;
            if key_len > 0 {
                at += key_len as usize;
            }
            let value_len = read_varint(&body, &mut at)?;
            if value_len >= 0 {
                let value_end = at + value_len as usize;
                if value_end > end {
                    return Err("a value longer than its record".into());
                }
                if offset >= from_offset {
                    on_value(offset, &body[at..value_end]);
                    walked.records += 1;
                }
            }
            at = end;
        }
    }
    Ok(walked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn header(sequence: u64) -> [u8; MESSAGE_HEADER_BYTES] {
        MessageHeader {
            run_id: 7,
            producer: 3,
            sequence,
            sent_us: 1_700_000_000_000_000 + sequence,
        }
        .to_bytes()
    }

    fn sample(codec: Codec) -> Bytes {
        let mut builder = BatchBuilder::new(4096);
        for sequence in 0..5u64 {
            let key = (sequence % 2 == 0).then_some(&b"key-1"[..]);
            builder.append(
                key,
                &header(sequence),
                b"ABCDEFGH",
                1_700_000_000_000 + sequence as i64,
            );
        }
        assert_eq!(builder.records(), 5);
        builder.seal(codec).expect("seal")
    }

    #[test]
    fn batches_decode_with_a_general_decoder_under_every_codec() {
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let mut bytes = sample(codec);
            let set = RecordBatchDecoder::decode(&mut bytes).expect("decodes");
            assert_eq!(set.records.len(), 5, "{codec:?}");
            let record = &set.records[2];
            assert_eq!(record.offset, 2);
            assert_eq!(record.key.as_deref(), Some(&b"key-1"[..]));
            assert_eq!(record.timestamp, 1_700_000_000_002);
            let value = record.value.as_ref().expect("value");
            assert_eq!(MessageHeader::parse(value).expect("header").sequence, 2);
            assert_eq!(&value[MESSAGE_HEADER_BYTES..], b"ABCDEFGH");
        }
    }

    #[test]
    fn walking_finds_every_value_and_skips_a_partial_tail() {
        for codec in [Codec::None, Codec::Zstd] {
            let mut first = BytesMut::from(&sample(codec)[..]);
            first[0..8].copy_from_slice(&100i64.to_be_bytes());
            let mut fetched = first.clone();
            let mut second = first.clone();
            second[0..8].copy_from_slice(&105i64.to_be_bytes());
            fetched.extend_from_slice(&second);
            fetched.extend_from_slice(&second[..30]); // a cut third batch
            let mut seen = Vec::new();
            let walked = walk_batches(fetched.freeze(), 102, |offset, value| {
                seen.push((
                    offset,
                    MessageHeader::parse(value).expect("header").sequence,
                ));
            })
            .expect("walks");
            assert_eq!(walked.next_offset, Some(110));
            assert_eq!(walked.records, 8);
            assert_eq!(seen[0], (102, 2));
            assert_eq!(seen[7], (109, 4));
        }
    }

    #[test]
    fn a_broken_batch_is_an_error_not_a_panic() {
        let mut bytes = BytesMut::from(&sample(Codec::None)[..]);
        let last = bytes.len() - 20;
        bytes[BATCH_HEADER_BYTES] = 0x7f; // the first record claims more than there is
        bytes.truncate(last);
        let length = (bytes.len() - 12) as i32;
        bytes[8..12].copy_from_slice(&length.to_be_bytes());
        assert!(walk_batches(bytes.freeze(), 0, |_, _| {}).is_err());
    }
}
