//! runnel-disk: the production [`Disk`], on real files, and the conformance
//! suite every `Disk` must pass.
//!
//! [`FileDisk`] keeps a node's files under one data directory. Operations run
//! on one dedicated disk thread, strictly in submission order, and their
//! completions come back, in the same order, on a `std::sync::mpsc` channel;
//! an optional notifier wakes an asynchronous caller (the tokio shell) when
//! completions are ready. `Sync` is a real `fdatasync`, `SyncDir` a real
//! `fsync` of the directory, and a failed one of either is fatal (see
//! "Failed syncs" below).
//!
//! [`conformance`] holds the tests of the `Disk` contract (crates/io) that any
//! implementation must pass: this crate runs them against `FileDisk`, and the
//! simulator runs them against its `SimDisk`, so that the simulated disk and
//! the real one agree on everything but timing and faults.
//!
//! # Durability of each operation on `FileDisk`
//!
//! What a completion promises, operation by operation. "Durable" means it
//! survives a crash of the machine (power loss), provided the device honours
//! flushes; a crash of only the process loses nothing that was performed,
//! since the data is in the kernel's page cache.
//!
//! - `Write`: the bytes are in the page cache, visible to every later
//!   operation. Nothing is durable. A crash may lose the write, or keep any
//!   subset of its pages (a torn write). A failed write (for example
//!   `NoSpace`) may still have written a prefix. Missing parent directories
//!   are created; each new directory's name is durable only after a `SyncDir`
//!   of its parent (for `groups/7/log/1.seg`, created along with `groups/7/log`:
//!   `SyncDir groups/7/log`, then `SyncDir groups/7`).
//! - `Sync`: `fdatasync` of the file. When it completes with `Ok`, every
//!   earlier write and truncate of that file is durable, including the file's
//!   size, but *not* the file's name (see `SyncDir`).
//! - `Truncate`: the size is changed in the page cache; durable after a later
//!   `Sync` of the file. A missing file is `NotFound`.
//! - `Delete`, `Rename`: done in the directory (a missing `from` is
//!   `NotFound`, a missing file to delete is success); durable after a later
//!   `SyncDir` of the directory, or of both directories for a rename across
//!   two. Rename is atomic: a crash leaves the old or the new name, never
//!   neither. Rename creates `to`'s missing parent directories, like a write.
//! - `SyncDir`: `fsync` of the directory. When it completes with `Ok`, every
//!   earlier create, delete and rename of a name in it is durable. A
//!   directory that does not exist succeeds: it holds no names.
//! - `Read`: returns up to `len` bytes at `offset` as the page cache holds
//!   them, after every earlier operation; fewer at the end of the file, none
//!   past it. Promises nothing about durability.
//!
//! # Ordering
//!
//! One FIFO: each operation takes effect after every operation submitted
//! before it, and its completion is sent after theirs. `list` and
//! `read_file` also wait for every operation submitted before them, so they
//! see the disk as those left it.
//!
//! # Group commit
//!
//! With [`FileDiskOptions::group_commit`] (on by default), a `Sync` of a file
//! that has requests queued right behind it may complete together with
//! them. The group is the longest run, behind the head `Sync`, of `Write`s
//! and `Sync`s of the *same* file ending with a `Sync`, in which every write
//! is an append (at or past the end of every byte written since the file's
//! last `fdatasync`), bounded by [`GROUP_COMMIT_OPS_MAX`] requests and
//! [`GROUP_COMMIT_BYTES_MAX`] bytes. The disk thread performs the group's
//! writes, then one `fdatasync`, then delivers every completion of the group,
//! in submission order. Any other request (another file, a truncate, a read,
//! a directory operation) ends the group, and a head `Sync` whose file was
//! truncated since its last `fdatasync` never groups, so a truncation is
//! always durable before a later write of the file takes effect
//! (docs/storage.md, invariant 2).
//!
//! What grouping changes, and what it does not:
//!
//! - Every completion still arrives in submission order, and a `Sync`
//!   completes only after an `fdatasync` that covers every write before it.
//! - A machine crash *during* the group may keep a later append of the group
//!   and lose an earlier one: there is then a hole in the file's unsynced
//!   tail. Performed one by one, the earlier append would have been durable
//!   before the later one was written. The `Disk` durability contract allows
//!   it (neither write is covered by a *completed* sync, and the contract lets
//!   a crash lose any uncovered operation independently), and the same holes
//!   already arise from several appends before one sync. Storage recovery
//!   reports such a hole conservatively as corruption of the entries in it
//!   (docs/storage.md, "What recovery cannot tell"). A caller that needs each
//!   sync to be durable before the next write is even issued turns grouping
//!   off.
//! - A process crash (SIGKILL) loses nothing that was performed, with or
//!   without grouping: the page cache keeps it.
//!
//! # Failed syncs
//!
//! A failed `fdatasync` or directory `fsync` is fatal: the kernel may have
//! dropped the dirty pages and will not report the loss again, so a retry
//! could "succeed" over lost data. The disk logs it on stderr, completes that
//! operation with `DiskError::SyncFailed`, and from then on refuses every
//! operation, including `list` and `read_file`, with `SyncFailed`. The node
//! must stop; a restart recovers from what is durable (DESIGN.md, "Storage").
//!
//! # Other errors
//!
//! Operating errors complete the operation with an error and the disk goes
//! on: `ENOSPC` and `EDQUOT` are `NoSpace`, `ENOENT` is `NotFound`, `EIO`
//! on a read is `ReadFailed`, anything else is `Other` with the OS message. A
//! path that is absolute, or that has a `..`, `.` or empty component, is
//! refused with `Other` (it could escape the data directory, or give one file
//! two names). The data directory belongs to one `FileDisk` at a time; files
//! changed behind its back may not be seen through its cached handles. A
//! path may not be both a file and a directory (`a` and `a/b`): the
//! operating system refuses that with `Other`.
//!
//! Programmer errors panic: submitting after the disk thread panicked
//! (itself a bug).

#![forbid(unsafe_code)]

pub mod ceiling;
pub mod conformance;
mod handles;
mod paths;
mod queue;
mod worker;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use runnel_io::{Disk, DiskCompletion, DiskError, DiskOp};

use queue::{Queue, Request};

/// Most file handles kept open at once. Past it, the least recently used
/// handle is closed (a clean one if there is any; a dirty one is synced
/// first).
pub const OPEN_FILES_MAX: usize = 256;
/// Most operations submitted and not yet performed. `submit` blocks while
/// the queue is full (see [`FileDisk`]'s `Disk::submit`).
pub const QUEUE_OPS_MAX: usize = 4096;
/// Most bytes of write data submitted and not yet performed. A single larger
/// write is admitted once the queue is empty.
pub const QUEUE_BYTES_MAX: u64 = 256 << 20;
/// Most requests in one group commit, the head `Sync` included.
pub const GROUP_COMMIT_OPS_MAX: usize = 1024;
/// Most write bytes in one group commit: it bounds how long the head `Sync`
/// waits for the writes queued behind it.
pub const GROUP_COMMIT_BYTES_MAX: u64 = 64 << 20;
/// Most bytes one `Read` returns; a read that would return more fails with
/// `Other`. (It allocates what the file holds, never `len` blindly.)
pub const READ_BYTES_MAX: u64 = 1 << 30;
/// Largest file `read_file` returns: a segment of the largest configured
/// size plus its last frame, or the largest snapshot (docs/storage.md,
/// "Bounds"), with room to spare.
pub const READ_FILE_BYTES_MAX: u64 = 2 << 30;

/// How a [`FileDisk`] runs.
pub struct FileDiskOptions {
    /// Coalesce back-to-back syncs of one file (see "Group commit" in the
    /// crate documentation). On by default.
    pub group_commit: bool,
    /// Called on the disk thread after each batch of completions has been
    /// sent, so that an asynchronous caller can wake up and drain the
    /// receiver (for example with `tokio::sync::Notify::notify_one`). It must
    /// be quick and must not block: the disk thread waits for it.
    pub notify: Option<Box<dyn Fn() + Send>>,
}

impl Default for FileDiskOptions {
    fn default() -> Self {
        FileDiskOptions {
            group_commit: true,
            notify: None,
        }
    }
}

/// Counters of what the disk thread did, for tests, benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Operations completed (successfully or not).
    pub ops_completed: u64,
    /// `Sync` operations completed.
    pub file_syncs: u64,
    /// `Sync` operations completed by another one's `fdatasync` (group
    /// commit).
    pub coalesced_syncs: u64,
    /// `fdatasync` calls made, including those that sync a dirty handle
    /// before it is evicted from the cache.
    pub fdatasyncs: u64,
    /// `SyncDir` operations performed.
    pub dir_syncs: u64,
}

/// State shared by the `FileDisk` handle and its disk thread.
pub(crate) struct Shared {
    /// A sync failed: every further operation is refused.
    pub(crate) failed: AtomicBool,
    pub(crate) ops_completed: AtomicU64,
    pub(crate) file_syncs: AtomicU64,
    pub(crate) coalesced_syncs: AtomicU64,
    pub(crate) fdatasyncs: AtomicU64,
    pub(crate) dir_syncs: AtomicU64,
    /// Makes every fsync fail, to test the fatal path.
    #[cfg(test)]
    pub(crate) inject_sync_failure: AtomicBool,
}

/// The production `Disk`: files under a data directory, one disk thread,
/// completions on a channel. See the crate documentation for the durability
/// of each operation, group commit and failed syncs.
///
/// Dropping it closes the queue: the disk thread performs every operation
/// already submitted, sends their completions (if the receiver is still
/// there), and exits; `drop` waits for that. Nothing is synced on drop that
/// was not asked for.
pub struct FileDisk {
    root: PathBuf,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FileDisk {
    /// Opens `data_dir` with default options. See [`FileDisk::with_options`].
    pub fn new(
        data_dir: impl Into<PathBuf>,
    ) -> io::Result<(FileDisk, mpsc::Receiver<DiskCompletion>)> {
        FileDisk::with_options(data_dir, FileDiskOptions::default())
    }

    /// Opens `data_dir`, creating it if missing, and starts the disk thread.
    /// Returns the disk and the receiver on which every completion arrives,
    /// in submission order.
    ///
    /// A data directory created here is made durable before this returns:
    /// its parent (and the parent of every ancestor created with it) is
    /// fsynced, so that a crash cannot lose the directory under files synced
    /// into it later.
    pub fn with_options(
        data_dir: impl Into<PathBuf>,
        options: FileDiskOptions,
    ) -> io::Result<(FileDisk, mpsc::Receiver<DiskCompletion>)> {
        // Absolute, so that a later change of the process's working
        // directory cannot move the data directory under the disk thread.
        let root = std::path::absolute(data_dir.into())?;
        create_durably(&root)?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("data directory {} is not a directory", root.display()),
            ));
        }
        let (sender, receiver) = mpsc::channel();
        let queue = Arc::new(Queue::new());
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            ops_completed: AtomicU64::new(0),
            file_syncs: AtomicU64::new(0),
            coalesced_syncs: AtomicU64::new(0),
            fdatasyncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
            #[cfg(test)]
            inject_sync_failure: AtomicBool::new(false),
        });
        let worker = worker::Worker {
            root: root.clone(),
            handles: handles::Handles::default(),
            completions: sender,
            notify: options.notify,
            group_commit: options.group_commit,
            shared: Arc::clone(&shared),
            out: Vec::new(),
        };
        let worker_queue = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("runnel-disk".to_string())
            .spawn(move || worker.run(worker_queue))?;
        Ok((
            FileDisk {
                root,
                queue,
                shared,
                thread: Some(thread),
            },
            receiver,
        ))
    }

    /// The data directory, as an absolute path.
    pub fn data_dir(&self) -> &Path {
        &self.root
    }

    /// Whether a sync has failed; if so every operation is refused.
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> DiskStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DiskStats {
            ops_completed: load(&self.shared.ops_completed),
            file_syncs: load(&self.shared.file_syncs),
            coalesced_syncs: load(&self.shared.coalesced_syncs),
            fdatasyncs: load(&self.shared.fdatasyncs),
            dir_syncs: load(&self.shared.dir_syncs),
        }
    }

    /// Waits for the disk thread's answer to a `list` or `read_file`.
    fn ask<T>(&self, make: impl FnOnce(mpsc::SyncSender<T>) -> Request) -> T {
        let (reply, answer) = mpsc::sync_channel(1);
        self.queue.push(make(reply));
        answer
            .recv()
            .expect("runnel-disk: the disk thread exited without answering (it panicked)")
    }
}

impl Disk for FileDisk {
    /// Queues `op`; its completion arrives on the receiver, after those of
    /// every earlier operation. An invalid path completes, in order, with
    /// `DiskError::Other`.
    ///
    /// Blocks while [`QUEUE_OPS_MAX`] operations or [`QUEUE_BYTES_MAX`] bytes
    /// of writes are waiting to be performed. This is back-pressure, not a
    /// deadlock risk: the disk thread never waits for the caller, so room
    /// frees up as fast as the device performs operations.
    fn submit(&mut self, token: u64, op: DiskOp) {
        let checked = match &op {
            DiskOp::Write { file, .. }
            | DiskOp::Sync { file }
            | DiskOp::Truncate { file, .. }
            | DiskOp::Delete { file }
            | DiskOp::Read { file, .. } => paths::check_file(file),
            DiskOp::Rename { from, to } => paths::check_file(from).and(paths::check_file(to)),
            DiskOp::SyncDir { dir } => paths::check_dir(dir),
        };
        let request = match checked {
            Ok(()) => Request::Op { token, op },
            Err(error) => Request::Refuse { token, error },
        };
        self.queue.push(request);
    }

    /// Every regular file under the data directory, relative, with `/`,
    /// sorted, after every operation submitted before this call. For
    /// recovery at start (it blocks until the disk thread gets to it).
    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        self.ask(|reply| Request::List { reply })
    }

    /// The whole file, after every operation submitted before this call.
    /// For recovery at start. `NotFound` if it does not exist.
    fn read_file(&mut self, file: &str) -> Result<Vec<u8>, DiskError> {
        paths::check_file(file)?;
        self.ask(|reply| Request::ReadFile {
            file: file.to_string(),
            reply,
        })
    }
}

impl Drop for FileDisk {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// Creates `dir` and its missing ancestors, then fsyncs the parent of each
/// directory created, top down, so that their names are durable.
fn create_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(path) = cursor {
        if path.as_os_str().is_empty() || fs::symlink_metadata(path).is_ok() {
            break;
        }
        missing.push(path);
        cursor = path.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_io::DiskOutput;
    use std::time::Duration;

    fn recv(receiver: &mpsc::Receiver<DiskCompletion>, count: usize) -> Vec<DiskCompletion> {
        (0..count)
            .map(|_| {
                receiver
                    .recv_timeout(Duration::from_secs(60))
                    .expect("completion")
            })
            .collect()
    }

    fn write(file: &str, offset: u64, data: &[u8]) -> DiskOp {
        DiskOp::Write {
            file: file.to_string(),
            offset,
            data: data.to_vec(),
        }
    }

    fn sync(file: &str) -> DiskOp {
        DiskOp::Sync {
            file: file.to_string(),
        }
    }

    #[test]
    fn a_failed_sync_is_fatal_and_every_later_operation_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
        disk.submit(1, write("a", 0, b"synced"));
        disk.submit(2, sync("a"));
        assert!(recv(&completions, 2).iter().all(|c| c.result.is_ok()));

        disk.shared
            .inject_sync_failure
            .store(true, Ordering::SeqCst);
        disk.submit(3, write("a", 6, b" lost?"));
        disk.submit(4, sync("a"));
        // A group behind the failing sync fails with it.
        disk.submit(5, write("a", 12, b"x"));
        disk.submit(6, sync("a"));
        disk.submit(7, write("b", 0, b"x"));
        disk.submit(8, DiskOp::SyncDir { dir: String::new() });
        let results: Vec<_> = recv(&completions, 6)
            .into_iter()
            .map(|c| (c.token, c.result))
            .collect();
        assert_eq!(results[0], (3, Ok(DiskOutput::Done)));
        for (token, result) in &results[1..] {
            assert_eq!(result, &Err(DiskError::SyncFailed), "op {token}");
        }
        assert!(disk.has_failed());
        // Never retried, even once the device would succeed again.
        disk.shared
            .inject_sync_failure
            .store(false, Ordering::SeqCst);
        disk.submit(9, sync("a"));
        assert_eq!(recv(&completions, 1)[0].result, Err(DiskError::SyncFailed));
        assert_eq!(disk.list(), Err(DiskError::SyncFailed));
        assert_eq!(disk.read_file("a"), Err(DiskError::SyncFailed));
    }

    #[test]
    fn a_failed_directory_sync_is_fatal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
        disk.shared
            .inject_sync_failure
            .store(true, Ordering::SeqCst);
        disk.submit(1, write("a", 0, b"x"));
        disk.submit(2, DiskOp::SyncDir { dir: String::new() });
        disk.submit(3, write("a", 0, b"y"));
        let results: Vec<_> = recv(&completions, 3)
            .into_iter()
            .map(|c| c.result)
            .collect();
        assert_eq!(
            results,
            vec![
                Ok(DiskOutput::Done),
                Err(DiskError::SyncFailed),
                Err(DiskError::SyncFailed)
            ]
        );
    }

    #[test]
    fn a_failed_sync_while_evicting_a_dirty_handle_is_fatal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
        disk.shared
            .inject_sync_failure
            .store(true, Ordering::SeqCst);
        // Every handle is dirty, so opening one more must sync one of them.
        for i in 0..OPEN_FILES_MAX as u64 {
            disk.submit(i, write(&format!("f{i}"), 0, b"x"));
        }
        disk.submit(1000, write("one-too-many", 0, b"x"));
        let results = recv(&completions, OPEN_FILES_MAX + 1);
        assert!(results[..OPEN_FILES_MAX].iter().all(|c| c.result.is_ok()));
        assert_eq!(results[OPEN_FILES_MAX].result, Err(DiskError::SyncFailed));
        assert!(disk.has_failed());
    }
}
