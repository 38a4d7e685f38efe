//! `runnel bench`'s command line, with the bounds each value must keep.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::records::{Codec, MESSAGE_HEADER_BYTES};
use crate::BenchError;

/// Most bytes of one message (Kafka's `max.message.bytes` default is 1 MiB
/// for a whole batch).
pub const MESSAGE_BYTES_MAX: usize = 1_000_000;
/// Most bytes of one batch (Kafka's `max.request.size` default).
pub const BATCH_BYTES_MAX: usize = 1 << 20;
/// Most requests in flight on one connection.
pub const IN_FLIGHT_MAX: usize = 1_024;
pub const PRODUCERS_MAX: u32 = 256;
pub const CONSUMERS_MAX: u32 = 256;
pub const PARTITIONS_MAX: i32 = 10_000;
/// Most distinct keys (they are generated up front, 12 bytes each).
pub const KEY_COUNT_MAX: u64 = 1 << 20;
pub const DURATION_SECS_MAX: u64 = 24 * 3600;
/// Most bytes one producer holds unacknowledged.
pub const BUFFER_BYTES_MAX: usize = 1 << 30;
pub const LINGER_MS_MAX: u64 = 60_000;
pub const DRAIN_SECS_MAX: u64 = 600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    #[value(name = "0")]
    #[serde(rename = "0")]
    None,
    #[value(name = "1")]
    #[serde(rename = "1")]
    Leader,
    All,
}

impl Acks {
    pub fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// How messages get their keys, and so their partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keys {
    /// No key: each batch fills one partition, then the next (Kafka's
    /// sticky partitioner).
    None,
    /// Keys drawn uniformly from `--key-count`, partitioned by murmur2 as
    /// Kafka's default partitioner does.
    Uniform,
    /// Keys drawn from `--key-count` with Zipf's law (exponent 1): a few
    /// hot keys, and so hot partitions.
    Zipf,
}

/// A flag given twice takes its last value, so that a script's defaults
/// can be overridden by the flags passed after them.
#[derive(Args, Clone, Debug, Serialize)]
#[command(args_override_self = true)]
pub struct BenchArgs {
    /// Brokers to start from, host:port, comma separated.
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// The topic to write; created when missing.
    #[arg(long, short = 't', default_value = "runnel-bench")]
    pub topic: String,
    /// Partitions of the topic when the bench creates it.
    #[arg(long, short = 'p', default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor of the topic when the bench creates it (-1: the
    /// broker's default).
    #[arg(long, short = 'r', default_value_t = -1)]
    pub replication_factor: i16,
    /// A configuration of the topic when the bench creates it, key=value
    /// (for example retention.bytes=1073741824); repeat for more.
    #[arg(long = "topic-config")]
    pub topic_configs: Vec<String>,
    /// Producer clients, each with its own connection to every broker.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumer clients, the partitions shared among them (0: none).
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Bytes of each message's value.
    #[arg(long, short = 's', default_value_t = 1024)]
    pub message_bytes: usize,
    /// How messages get keys, and so partitions.
    #[arg(long, value_enum, default_value = "none")]
    pub keys: Keys,
    /// Distinct keys for --keys uniform or zipf.
    #[arg(long, default_value_t = 10_000)]
    pub key_count: u64,
    /// A partition's batch is sent once it holds this many bytes ...
    #[arg(long, default_value_t = 64 << 10)]
    pub batch_bytes: usize,
    /// ... or once its first message is this old.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// What a produce waits for: 0 nothing, 1 the leader, all the
    /// replicas (Runnel answers 1 like all: once the batch is committed).
    #[arg(long, value_enum, default_value = "all")]
    pub acks: Acks,
    /// The batches' compression codec.
    #[arg(long, short = 'z', value_enum, default_value = "none")]
    pub compression: Codec,
    /// Messages per second over all producers (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// How long the producers run, in seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration_secs: u64,
    /// Produce requests in flight on each connection.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Bytes each producer holds unacknowledged before it waits.
    #[arg(long, default_value_t = 32 << 20)]
    pub buffer_bytes: usize,
    /// How long the consumers may take, after the producers stopped, to
    /// read everything that was acknowledged.
    #[arg(long, default_value_t = 30)]
    pub drain_secs: u64,
    /// Write the full report, as JSON, to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Skip measuring the machine's limits (the disk's fdatasync ceiling
    /// and loopback TCP) before the run.
    #[arg(long)]
    pub skip_baseline: bool,
    /// Where the disk ceiling is measured: a directory on the disk that
    /// holds the brokers' data.
    #[arg(long, default_value = ".")]
    pub baseline_dir: PathBuf,
    /// Seconds each baseline measurement runs.
    #[arg(long, default_value_t = 1.0)]
    pub baseline_secs: f64,
    /// A broker process (local) whose CPU time the report includes;
    /// repeat for more.
    #[arg(long = "watch-pid")]
    pub watch_pids: Vec<u32>,
    /// No progress line each second.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl BenchArgs {
    /// Checks every bound, with a one-line message for the first one broken.
    pub fn validate(&self) -> Result<(), BenchError> {
        let usage = |message: String| Err(BenchError::Usage(message));
        if self.message_bytes < MESSAGE_HEADER_BYTES || self.message_bytes > MESSAGE_BYTES_MAX {
            return usage(format!(
                "--message-bytes must be {MESSAGE_HEADER_BYTES} to {MESSAGE_BYTES_MAX} (each value starts with a {MESSAGE_HEADER_BYTES}-byte header)"
            ));
        }
        if self.batch_bytes == 0 || self.batch_bytes > BATCH_BYTES_MAX {
            return usage(format!("--batch-bytes must be 1 to {BATCH_BYTES_MAX}"));
        }
        if self.message_bytes + 100 > BATCH_BYTES_MAX {
            return usage("--message-bytes leaves no room for a batch header".into());
        }
        if self.in_flight == 0 || self.in_flight > IN_FLIGHT_MAX {
            return usage(format!("--in-flight must be 1 to {IN_FLIGHT_MAX}"));
        }
        // Consumers read what this run's producers wrote, so there is
        // always at least one producer.
        if self.producers == 0 || self.producers > PRODUCERS_MAX {
            return usage(format!("--producers must be 1 to {PRODUCERS_MAX}"));
        }
        if self.consumers > CONSUMERS_MAX {
            return usage(format!("--consumers must be 0 to {CONSUMERS_MAX}"));
        }
        if self.partitions == 0 || self.partitions < -1 || self.partitions > PARTITIONS_MAX {
            return usage(format!("--partitions must be 1 to {PARTITIONS_MAX}"));
        }
        if self.keys != Keys::None && (self.key_count == 0 || self.key_count > KEY_COUNT_MAX) {
            return usage(format!("--key-count must be 1 to {KEY_COUNT_MAX}"));
        }
        if self.duration_secs == 0 || self.duration_secs > DURATION_SECS_MAX {
            return usage(format!("--duration-secs must be 1 to {DURATION_SECS_MAX}"));
        }
        if self.buffer_bytes < self.batch_bytes || self.buffer_bytes > BUFFER_BYTES_MAX {
            return usage(format!(
                "--buffer-bytes must be at least --batch-bytes and at most {BUFFER_BYTES_MAX}"
            ));
        }
        if self.linger_ms > LINGER_MS_MAX {
            return usage(format!("--linger-ms must be at most {LINGER_MS_MAX}"));
        }
        if self.drain_secs > DRAIN_SECS_MAX {
            return usage(format!("--drain-secs must be at most {DRAIN_SECS_MAX}"));
        }
        if !(self.baseline_secs > 0.0 && self.baseline_secs <= 60.0) {
            return usage("--baseline-secs must be over 0 and at most 60".into());
        }
        if let Some(bad) = self.topic_configs.iter().find(|c| !c.contains('=')) {
            return usage(format!("--topic-config \"{bad}\" is not key=value"));
        }
        if self.topic.is_empty() || self.topic.len() > 249 {
            return usage("--topic must be 1 to 249 characters".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(flags: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(flags);
        Command::try_parse_from(argv).expect("parses").args
    }

    #[test]
    fn the_defaults_are_valid_and_a_repeated_flag_takes_its_last_value() {
        assert!(parse(&[]).validate().is_ok());
        let args = parse(&["--acks", "all", "--acks", "0", "-r", "3"]);
        assert_eq!(args.acks, Acks::None);
        assert_eq!(args.replication_factor, 3);
    }

    #[test]
    fn every_bound_is_a_usage_error() {
        for flags in [
            &["--message-bytes", "27"][..],
            &["--message-bytes", "1000001"],
            &["--batch-bytes", "0"],
            &["--batch-bytes", "2000000"],
            &["--in-flight", "0"],
            &["--in-flight", "1025"],
            &["--producers", "0"],
            &["--consumers", "257"],
            &["--partitions", "0"],
            &["--keys", "zipf", "--key-count", "0"],
            &["--duration-secs", "0"],
            &["--buffer-bytes", "1000"],
            &["--baseline-secs", "0"],
            &["--topic", ""],
            &["--topic-config", "retention.ms"],
        ] {
            let error = parse(flags).validate().expect_err("out of bounds");
            assert!(matches!(error, BenchError::Usage(_)), "{flags:?}");
            assert_eq!(error.exit_code(), 2);
        }
    }
}
