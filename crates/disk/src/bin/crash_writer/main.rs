//! The writer process of the crash test (tests/crash.rs): appends records to
//! `log/records` under a data directory through `FileDisk`, with group
//! commit, until it is killed.
//!
//! Usage: `crash_writer <data dir> <seed>`
//!
//! It first recovers the way a node does: it reads the file through the
//! disk, keeps the intact records (record.rs) and cuts the torn tail off,
//! durably, before writing anything (docs/storage.md, invariant 2). Then it
//! prints `recovered <records> <end>` and appends records forever, each its
//! own `Write`, with a `Sync` after every batch of 1 to 8, keeping several
//! batches in flight so that the disk thread coalesces their syncs. After
//! each completed `Sync` it prints the highest seq that sync covers, one
//! number per line, flushed at once: a line is printed only after the sync
//! it reports completed.
//!
//! It exits on its own only on an error (status 2), or once the file reaches
//! `FILE_BYTES_MAX` (status 0), so that a test that forgets to kill it does
//! not fill the disk.

mod record;

use std::io::Write as _;
use std::process::exit;

use runnel_disk::FileDisk;
use runnel_io::{Disk, DiskError, DiskOp, Rng};

const FILE: &str = "log/records";
/// Batches whose sync has not completed yet.
const BATCHES_IN_FLIGHT_MAX: usize = 8;
/// Records per batch, at most.
const BATCH_RECORDS_MAX: u64 = 8;
/// The writer stops once the file is this long.
const FILE_BYTES_MAX: u64 = 64 << 20;

fn fail(what: &str) -> ! {
    eprintln!("crash_writer: {what}");
    exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        fail("usage: crash_writer <data dir> <seed>");
    }
    let seed: u64 = args[2]
        .parse()
        .unwrap_or_else(|_| fail("the seed is a u64"));
    let mut rng = Rng::new(seed);
    let (mut disk, completions) =
        FileDisk::new(&args[1]).unwrap_or_else(|error| fail(&format!("open: {error}")));

    let bytes = match disk.read_file(FILE) {
        Ok(bytes) => bytes,
        Err(DiskError::NotFound) => Vec::new(),
        Err(error) => fail(&format!("read {FILE}: {error}")),
    };
    let recovered = record::scan(&bytes).unwrap_or_else(|error| fail(&error));
    drop(bytes);

    // Cut the torn tail off and make the file, its size and its name
    // durable before appending: otherwise a crash could keep new records
    // but lose the cut, leaving stale bytes behind them.
    let mut token = 0u64;
    let mut submit = |disk: &mut FileDisk, op: DiskOp| {
        token += 1;
        disk.submit(token, op);
        token
    };
    let setup = [
        DiskOp::Write {
            file: FILE.into(),
            offset: 0,
            data: Vec::new(),
        },
        DiskOp::Truncate {
            file: FILE.into(),
            len: recovered.end,
        },
        DiskOp::Sync { file: FILE.into() },
        DiskOp::SyncDir { dir: "log".into() },
        DiskOp::SyncDir { dir: String::new() },
    ];
    let count = setup.len();
    for op in setup {
        submit(&mut disk, op);
    }
    for _ in 0..count {
        let completion = completions
            .recv()
            .unwrap_or_else(|_| fail("disk thread gone"));
        if let Err(error) = completion.result {
            fail(&format!("setup op {}: {error}", completion.token));
        }
    }
    let mut stdout = std::io::stdout().lock();
    let mut say = |line: String| {
        // One write per line, so a kill leaves whole lines only (a pipe
        // write under PIPE_BUF bytes is atomic).
        if stdout.write_all(line.as_bytes()).is_err() || stdout.flush().is_err() {
            exit(0); // The test stopped listening.
        }
    };
    say(format!(
        "recovered {} {}\n",
        recovered.records, recovered.end
    ));

    let mut next_seq = recovered.records;
    let mut end = recovered.end;
    // (sync token, highest seq it covers), oldest first.
    let mut in_flight: std::collections::VecDeque<(u64, u64)> = Default::default();
    loop {
        while in_flight.len() < BATCHES_IN_FLIGHT_MAX && end < FILE_BYTES_MAX {
            for _ in 0..rng.range(1, BATCH_RECORDS_MAX + 1) {
                let data = record::encode(next_seq);
                let len = data.len() as u64;
                submit(
                    &mut disk,
                    DiskOp::Write {
                        file: FILE.into(),
                        offset: end,
                        data,
                    },
                );
                end += len;
                next_seq += 1;
            }
            let sync = submit(&mut disk, DiskOp::Sync { file: FILE.into() });
            in_flight.push_back((sync, next_seq - 1));
        }
        let Some(&(sync_token, covered)) = in_flight.front() else {
            // The file is full and everything is synced.
            exit(0);
        };
        let completion = completions
            .recv()
            .unwrap_or_else(|_| fail("disk thread gone"));
        if let Err(error) = &completion.result {
            fail(&format!("op {}: {error}", completion.token));
        }
        if completion.token == sync_token {
            in_flight.pop_front();
            say(format!("{covered}\n"));
        }
    }
}
