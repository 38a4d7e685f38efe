//! The `Disk` conformance suite against `FileDisk`, with and without group
//! commit, each disk in a fresh temporary directory.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use runnel_disk::{conformance, FileDisk, FileDiskOptions};
use runnel_io::{Disk, DiskCompletion, DiskError, DiskOp};
use tempfile::TempDir;

/// A `FileDisk` with its completion receiver and its directory, counting the
/// operations submitted so that `settle` knows how many completions to wait
/// for. Fields drop in order: the disk (finishing its queue) before the
/// directory is removed.
struct Subject {
    disk: FileDisk,
    completions: Receiver<DiskCompletion>,
    outstanding: usize,
    _dir: TempDir,
}

impl Subject {
    fn new(group_commit: bool) -> Subject {
        let dir = TempDir::new().expect("temp dir");
        let options = FileDiskOptions {
            group_commit,
            ..FileDiskOptions::default()
        };
        let (disk, completions) =
            FileDisk::with_options(dir.path().join("data"), options).expect("open disk");
        Subject {
            disk,
            completions,
            outstanding: 0,
            _dir: dir,
        }
    }

    /// Waits for the completion of every operation submitted so far. A
    /// generous timeout turns a lost completion into a failure, not a hang.
    fn settle(&mut self) -> Vec<DiskCompletion> {
        let count = std::mem::take(&mut self.outstanding);
        (0..count)
            .map(|_| {
                self.completions
                    .recv_timeout(Duration::from_secs(60))
                    .expect("a completion for every submitted operation")
            })
            .collect()
    }
}

impl Disk for Subject {
    fn submit(&mut self, token: u64, op: DiskOp) {
        self.outstanding += 1;
        self.disk.submit(token, op);
    }

    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        self.disk.list()
    }

    fn read_file(&mut self, file: &str) -> Result<Vec<u8>, DiskError> {
        self.disk.read_file(file)
    }
}

#[test]
fn file_disk_passes_the_conformance_suite() {
    conformance::run_all(&mut || Subject::new(true), &mut Subject::settle);
}

#[test]
fn file_disk_without_group_commit_passes_the_conformance_suite() {
    conformance::run_all(&mut || Subject::new(false), &mut Subject::settle);
}
