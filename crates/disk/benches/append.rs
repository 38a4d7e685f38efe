//! Append throughput: the raw fdatasync ceiling beside `FileDisk`.
//!
//! `cargo bench -p runnel-disk` prints one table:
//!
//! - raw: `pwrite` + `fdatasync` per append with `std::fs`, on the calling
//!   thread. That is the ceiling for one durable append at a time.
//! - FileDisk, closed loop: N appends then one `Sync`, and the next batch
//!   only after that sync completed. It shows what batching N appends per
//!   sync buys on its own.
//! - FileDisk, pipelined: the same batches, with up to `WINDOW` batches in
//!   flight, as a node that keeps appending while earlier syncs are pending.
//!   Group commit then coalesces the queued syncs; the same run with group
//!   commit off isolates what coalescing adds.
//!
//! fdatasync latency on a virtual disk shared with other work drifts a lot
//! over seconds (runs here have seen the raw rate move between 200/s and
//! 5000/s), so the rows are measured in `ROUNDS` rounds, each running every
//! row for `SLICE_SECONDS` (or until `SLICE_BYTES_MAX` bytes) in turn, and
//! each row reports its median round, with the range of its rounds beside
//! it. Drift then hits every row alike instead of whichever ran last. Each
//! slice writes a fresh file under the target directory
//! (CARGO_TARGET_TMPDIR, on the same file system as the build; /tmp may be
//! a tmpfs, where fdatasync costs nothing). A plain `harness = false` program rather than criterion: the
//! figures wanted need no statistics beyond a timed run, and criterion's
//! dependency tree is a long first build on a 2-core machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use runnel_disk::ceiling::raw_fdatasync_appends;
use runnel_disk::{FileDisk, FileDiskOptions};
use runnel_io::{Disk, DiskCompletion, DiskOp};

const ROUNDS: usize = 3;
const SLICE_SECONDS: f64 = 0.5;
const SLICE_BYTES_MAX: u64 = 128 << 20;
const SIZES: [usize; 2] = [4 << 10, 64 << 10];
const BATCHES: [u64; 3] = [1, 16, 128];
/// Batches in flight in the pipelined rows.
const WINDOW: usize = 8;

struct Row {
    label: String,
    appends: u64,
    bytes: u64,
    fdatasyncs: u64,
    seconds: f64,
}

impl Row {
    fn appends_per_second(&self) -> f64 {
        self.appends as f64 / self.seconds
    }

    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

fn budget_left(started: Instant, bytes: u64) -> bool {
    started.elapsed().as_secs_f64() < SLICE_SECONDS && bytes < SLICE_BYTES_MAX
}

fn raw(dir: &Path, size: usize) -> Row {
    let appends = raw_fdatasync_appends(
        dir,
        "raw",
        size,
        Duration::from_secs_f64(SLICE_SECONDS),
        SLICE_BYTES_MAX,
    )
    .expect("raw appends");
    Row {
        label: "raw: pwrite + fdatasync each".into(),
        appends: appends.appends,
        bytes: appends.bytes,
        fdatasyncs: appends.appends,
        seconds: appends.seconds,
    }
}

fn recv(completions: &Receiver<DiskCompletion>) -> DiskCompletion {
    let completion = completions
        .recv_timeout(Duration::from_secs(60))
        .expect("completion");
    assert!(completion.result.is_ok(), "{completion:?}");
    completion
}

fn file_disk(dir: &Path, size: usize, batch: u64, window: usize, group_commit: bool) -> Row {
    let root = dir.join("file-disk");
    let options = FileDiskOptions {
        group_commit,
        ..FileDiskOptions::default()
    };
    let (mut disk, completions) = FileDisk::with_options(&root, options).expect("open");
    let data = vec![0x5A; size];
    let started = Instant::now();
    let (mut appends, mut bytes, mut token) = (0u64, 0u64, 0u64);
    // Sync tokens of the batches in flight, oldest first.
    let mut pending = std::collections::VecDeque::new();
    loop {
        while pending.len() < window && budget_left(started, bytes) {
            for _ in 0..batch {
                token += 1;
                disk.submit(
                    token,
                    DiskOp::Write {
                        file: "log".into(),
                        offset: bytes,
                        data: data.clone(),
                    },
                );
                bytes += size as u64;
                appends += 1;
            }
            token += 1;
            disk.submit(token, DiskOp::Sync { file: "log".into() });
            pending.push_back(token);
        }
        let Some(&oldest) = pending.front() else {
            break;
        };
        if recv(&completions).token == oldest {
            pending.pop_front();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let fdatasyncs = disk.stats().fdatasyncs;
    drop(disk);
    fs::remove_dir_all(&root).expect("remove");
    let mode = match (window, group_commit) {
        (1, _) => "closed loop",
        (_, true) => "pipelined",
        (_, false) => "pipelined, no g.c.",
    };
    Row {
        label: format!("FileDisk N={batch}, {mode}"),
        appends,
        bytes,
        fdatasyncs,
        seconds,
    }
}

/// The rows measured for one append size, in print order.
#[derive(Clone, Copy)]
enum Config {
    Raw,
    FileDisk {
        batch: u64,
        window: usize,
        group_commit: bool,
    },
}

fn configs() -> Vec<Config> {
    let mut configs = vec![Config::Raw];
    for window in [1, WINDOW] {
        for batch in BATCHES {
            configs.push(Config::FileDisk {
                batch,
                window,
                group_commit: true,
            });
        }
    }
    configs.push(Config::FileDisk {
        batch: 1,
        window: WINDOW,
        group_commit: false,
    });
    configs
}

fn measure(dir: &Path, size: usize, config: Config) -> Row {
    match config {
        Config::Raw => raw(dir, size),
        Config::FileDisk {
            batch,
            window,
            group_commit,
        } => file_disk(dir, size, batch, window, group_commit),
    }
}

fn main() {
    // `cargo bench` passes "--bench"; a filter argument is not supported.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("runnel-disk-bench");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("bench directory");
    println!(
        "runnel-disk append benchmark, in {}: median of {ROUNDS} interleaved rounds of \
         {SLICE_SECONDS} s per row",
        dir.display()
    );
    println!(
        "{:<7} {:<34} {:>10} {:>8} {:>12} {:>8}  appends/s range",
        "size", "mode", "appends/s", "MB/s", "fdatasync/s", "vs raw"
    );
    let total = Instant::now();
    let configs = configs();
    for size in SIZES {
        // rounds[config] = that row's result in each round.
        let mut rounds: Vec<Vec<Row>> = configs.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (i, config) in configs.iter().enumerate() {
                rounds[i].push(measure(&dir, size, *config));
            }
        }
        let medians: Vec<(Row, f64, f64)> = rounds
            .into_iter()
            .map(|mut rows| {
                rows.sort_by(|a, b| a.appends_per_second().total_cmp(&b.appends_per_second()));
                let low = rows.first().expect("rounds").appends_per_second();
                let high = rows.last().expect("rounds").appends_per_second();
                (rows.swap_remove(rows.len() / 2), low, high)
            })
            .collect();
        let ceiling = medians[0].0.appends_per_second();
        for (row, low, high) in &medians {
            println!(
                "{:<7} {:<34} {:>10.0} {:>8.1} {:>12.0} {:>7.2}x  {:.0}..{:.0}",
                format!("{} KiB", size >> 10),
                row.label,
                row.appends_per_second(),
                row.megabytes_per_second(),
                row.fdatasyncs as f64 / row.seconds,
                row.appends_per_second() / ceiling,
                low,
                high,
            );
        }
    }
    println!(
        "(\"vs raw\": median appends/s over the raw row's median of the same size; above 1 \
         means batching or group commit beats one fdatasync per append.) total {:.1} s",
        total.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&dir);
}
