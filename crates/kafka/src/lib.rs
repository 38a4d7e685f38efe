//! The Kafka wire protocol as Runnel speaks it.
//!
//! - [`batch`]: RecordBatch v2 validation (size, magic, CRC-32C, offsets) and
//!   the fields a broker stamps (base offset, partition leader epoch,
//!   LogAppendTime). Record batches otherwise stay opaque bytes.
//! - [`frame`]: the 4-byte length prefix, with the frame size bounded.
//! - [`codec`]: request decoding and response encoding with the
//!   `kafka-protocol` crate, for the versions in [`versions`].
//! - [`versions`]: the ApiVersions table Runnel advertises.
//! - [`partitioner`]: Kafka's default partitioner for keyed records.
//! - [`errors`]: names of Kafka error codes, for messages.

pub mod batch;
pub mod codec;
pub mod errors;
pub mod frame;
pub mod partitioner;
pub mod versions;
