//! Log append throughput: the replicated log's storage (`GroupStore`, the
//! segment format of docs/storage.md) on `FileDisk`, with one fsync per
//! batch, beside the raw `fdatasync` ceiling of the same disk measured in the
//! same run.
//!
//! `cargo bench -p runnel-disk --bench log_append` prints one row per batch
//! size: a batch is N entries of `ENTRY_BYTES` each, planned by
//! `GroupStore::append` and made durable by its `sync_ops`, and the next
//! batch starts once that sync completed (closed loop: one batch in flight,
//! like a follower acknowledging each Append). The raw row writes the same
//! bytes per batch with `pwrite` and one `fdatasync` on the calling thread.
//! Rows alternate in `ROUNDS` rounds and report their median, because
//! fdatasync latency on a shared virtual disk drifts over seconds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runnel_consensus::{Entry, HardState, Payload};
use runnel_disk::ceiling::raw_fdatasync_appends;
use runnel_disk::FileDisk;
use runnel_io::Disk;
use runnel_storage::{GroupStore, StoreOptions};

const ROUNDS: usize = 3;
const SLICE_SECONDS: f64 = 0.6;
const ENTRY_BYTES: usize = 1 << 10;
const BATCHES: [usize; 4] = [1, 16, 64, 256];

struct Measure {
    bytes: u64,
    batches: u64,
    seconds: f64,
}

impl Measure {
    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
    fn batches_per_second(&self) -> f64 {
        self.batches as f64 / self.seconds
    }
}

fn raw(dir: &Path, batch: usize) -> Measure {
    let appends = raw_fdatasync_appends(
        dir,
        "raw",
        batch * ENTRY_BYTES,
        Duration::from_secs_f64(SLICE_SECONDS),
        u64::MAX,
    )
    .expect("raw appends");
    Measure {
        bytes: appends.bytes,
        batches: appends.appends,
        seconds: appends.seconds,
    }
}

fn log(dir: &Path, batch: usize) -> Measure {
    let data_dir = dir.join("log");
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let (mut disk, completions) = FileDisk::new(&data_dir).expect("disk");
    let mut token = 0u64;
    let mut submit_and_wait = |disk: &mut FileDisk, ops: Vec<runnel_io::DiskOp>| {
        let mut last = None;
        for op in ops {
            token += 1;
            disk.submit(token, op);
            last = Some(token);
        }
        if let Some(last) = last {
            loop {
                let completion = completions
                    .recv_timeout(Duration::from_secs(60))
                    .expect("disk answers");
                assert!(completion.result.is_ok(), "{:?}", completion.result);
                if completion.token == last {
                    break;
                }
            }
        }
    };
    // The default segment size (64 MiB) holds a whole slice: no roll.
    let options = StoreOptions::default();
    let (mut store, ops) = GroupStore::create(1, options, &HardState::default());
    submit_and_wait(&mut disk, ops);
    let mut next_index = 1u64;
    let started = Instant::now();
    let (mut bytes, mut batches) = (0u64, 0u64);
    while started.elapsed().as_secs_f64() < SLICE_SECONDS {
        let entries: Vec<Entry> = (0..batch)
            .map(|offset| Entry {
                index: next_index + offset as u64,
                term: 1,
                payload: Payload::Data(vec![0x5A; ENTRY_BYTES]),
            })
            .collect();
        next_index += batch as u64;
        let mut ops = store.append(&entries);
        ops.extend(store.sync_ops());
        submit_and_wait(&mut disk, ops);
        bytes += (batch * ENTRY_BYTES) as u64;
        batches += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(disk);
    let _ = std::fs::remove_dir_all(&data_dir);
    Measure {
        bytes,
        batches,
        seconds,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

fn main() {
    // The target directory is on the build's file system; /tmp may be a
    // tmpfs, where fdatasync costs nothing.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("log-append-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!(
        "log append: {ENTRY_BYTES}-byte entries, one fsync per batch, closed loop, median of {ROUNDS} rounds"
    );
    println!(
        "{:>8} {:>14} {:>12} {:>14} {:>12} {:>8}",
        "entries", "raw MB/s", "raw sync/s", "log MB/s", "log batch/s", "log/raw"
    );
    for batch in BATCHES {
        let mut raw_rates = Vec::new();
        let mut raw_syncs = Vec::new();
        let mut log_rates = Vec::new();
        let mut log_batches = Vec::new();
        for _ in 0..ROUNDS {
            let raw = raw(&dir, batch);
            raw_rates.push(raw.megabytes_per_second());
            raw_syncs.push(raw.batches_per_second());
            let log = log(&dir, batch);
            log_rates.push(log.megabytes_per_second());
            log_batches.push(log.batches_per_second());
        }
        let (raw_rate, log_rate) = (median(raw_rates), median(log_rates));
        println!(
            "{:>8} {:>14.1} {:>12.0} {:>14.1} {:>12.0} {:>7.2}x",
            batch,
            raw_rate,
            median(raw_syncs),
            log_rate,
            median(log_batches),
            log_rate / raw_rate
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
