//! The disk thread: performs requests one at a time, in submission order,
//! and delivers their completions in the same order.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use runnel_io::{DiskCompletion, DiskError, DiskOp, DiskOutput};

use crate::handles::{Handle, Handles};
use crate::paths::resolve;
use crate::queue::{Queue, Request};
use crate::{
    Shared, GROUP_COMMIT_BYTES_MAX, GROUP_COMMIT_OPS_MAX, OPEN_FILES_MAX, READ_BYTES_MAX,
    READ_FILE_BYTES_MAX,
};

pub(crate) struct Worker {
    pub(crate) root: PathBuf,
    pub(crate) handles: Handles,
    pub(crate) completions: mpsc::Sender<DiskCompletion>,
    pub(crate) notify: Option<Box<dyn Fn() + Send>>,
    pub(crate) group_commit: bool,
    pub(crate) shared: Arc<Shared>,
    /// Completions performed but not yet delivered.
    pub(crate) out: Vec<DiskCompletion>,
}

/// Marks the queue's worker as gone when the disk thread exits, including
/// when it unwinds from a panic, so that submitters fail loudly instead of
/// waiting forever.
struct GoneGuard(Arc<Queue>);

impl Drop for GoneGuard {
    fn drop(&mut self) {
        self.0.worker_gone();
    }
}

/// How to open a file that has no cached handle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Create it, and its parent directories, if missing (`Write`).
    Create,
    /// Fail with `NotFound` if missing (every other operation).
    Existing,
}

impl Worker {
    pub(crate) fn run(mut self, queue: Arc<Queue>) {
        let _guard = GoneGuard(Arc::clone(&queue));
        let mut local = VecDeque::new();
        while queue.take_all(&mut local) {
            while !local.is_empty() {
                let (ops, bytes) = self.step(&mut local);
                self.deliver();
                queue.done(ops, bytes);
                // Whatever was submitted meanwhile joins the local buffer now,
                // so that group commit can see it behind the next `Sync`.
                queue.take_available(&mut local);
            }
        }
    }

    /// Sends the performed completions, in order, then wakes the caller once.
    fn deliver(&mut self) {
        if self.out.is_empty() {
            return;
        }
        for completion in self.out.drain(..) {
            // A dropped receiver means nobody listens for completions any
            // more; the operations are still performed, in order, as the
            // caller submitted them.
            let _ = self.completions.send(completion);
        }
        if let Some(notify) = &self.notify {
            notify();
        }
    }

    fn complete(&mut self, token: u64, result: Result<DiskOutput, DiskError>) {
        self.shared.ops_completed.fetch_add(1, Ordering::Relaxed);
        self.out.push(DiskCompletion { token, result });
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Performs the request at the front of `local` (and, for a coalesced
    /// `Sync`, the run behind it). Returns how many requests it performed and
    /// the bytes they held.
    fn step(&mut self, local: &mut VecDeque<Request>) -> (usize, u64) {
        let request = local.pop_front().expect("step needs a request");
        let bytes = request.bytes();
        match request {
            Request::Refuse { token, error } => self.complete(token, Err(error)),
            Request::List { reply } => {
                let result = if self.failed() {
                    Err(DiskError::SyncFailed)
                } else {
                    list(&self.root)
                };
                // The caller waits on the reply; if it is gone there is
                // nobody to tell.
                let _ = reply.send(result);
            }
            Request::ReadFile { file, reply } => {
                let result = if self.failed() {
                    Err(DiskError::SyncFailed)
                } else {
                    read_whole(&resolve(&self.root, &file))
                };
                let _ = reply.send(result);
            }
            Request::Op {
                token,
                op: DiskOp::Sync { file },
            } if self.group_commit && !self.failed() => {
                return self.sync_coalescing(token, file, local);
            }
            Request::Op { token, op } => {
                let result = self.perform(op);
                self.complete(token, result);
            }
        }
        (1, bytes)
    }

    /// Performs one operation on its own.
    fn perform(&mut self, op: DiskOp) -> Result<DiskOutput, DiskError> {
        if self.failed() {
            // DESIGN.md "Storage": after a failed fsync nothing written since
            // the last good one can be trusted, so the disk does nothing more.
            return Err(DiskError::SyncFailed);
        }
        match op {
            DiskOp::Write { file, offset, data } => self.write(&file, offset, &data),
            DiskOp::Sync { file } => {
                self.shared.file_syncs.fetch_add(1, Ordering::Relaxed);
                self.sync(&file)
            }
            DiskOp::Truncate { file, len } => self.truncate(&file, len),
            DiskOp::Delete { file } => self.delete(&file),
            DiskOp::Rename { from, to } => self.rename(&from, &to),
            DiskOp::SyncDir { dir } => self.sync_dir(&dir),
            DiskOp::Read { file, offset, len } => self.read(&file, offset, len),
        }
    }

    /// A `Sync` of `file` with group commit: if the requests right behind it
    /// are writes and syncs of the same file that `plan_group` admits, they
    /// are performed now and a single `fdatasync` completes every sync among
    /// them. Completions are delivered in submission order, all after that
    /// `fdatasync`.
    fn sync_coalescing(
        &mut self,
        token: u64,
        file: String,
        local: &mut VecDeque<Request>,
    ) -> (usize, u64) {
        let (unsynced_end, resized) = match self.handle(&file, Open::Existing) {
            Ok(handle) => (handle.unsynced_end, handle.resized),
            Err(error) => {
                self.shared.file_syncs.fetch_add(1, Ordering::Relaxed);
                self.complete(token, Err(error));
                return (1, 0);
            }
        };
        let group = if resized {
            // A truncation (or extension) must be durable before any later
            // write of the file takes effect (docs/storage.md, invariant 2),
            // so this sync runs alone.
            0
        } else {
            plan_group(&file, unsynced_end, local)
        };
        let mut held = 0;
        // Per request of the group, in order: the result of a write, or None
        // for a sync (it gets the fdatasync's result).
        let mut results = Vec::with_capacity(group);
        let mut tokens = Vec::with_capacity(group);
        for request in local.drain(..group) {
            held += request.bytes();
            match request {
                Request::Op {
                    token,
                    op: DiskOp::Write { file, offset, data },
                } => {
                    tokens.push(token);
                    results.push(Some(self.write(&file, offset, &data)));
                }
                Request::Op {
                    token,
                    op: DiskOp::Sync { .. },
                } => {
                    tokens.push(token);
                    results.push(None);
                }
                other => unreachable!("plan_group admitted {other:?}"),
            }
        }
        let syncs = 1 + results.iter().filter(|result| result.is_none()).count();
        self.shared
            .file_syncs
            .fetch_add(syncs as u64, Ordering::Relaxed);
        if syncs > 1 {
            self.shared
                .coalesced_syncs
                .fetch_add(syncs as u64 - 1, Ordering::Relaxed);
        }
        let synced = self.sync(&file);
        self.complete(token, synced.clone());
        for (token, result) in tokens.into_iter().zip(results) {
            let result = match (&synced, result) {
                // As if performed one by one: the head sync failed, so every
                // later operation is refused (the writes did reach the page
                // cache, but after a failed fsync nothing is trusted).
                (Err(_), _) => Err(DiskError::SyncFailed),
                (Ok(_), Some(written)) => written,
                (Ok(_), None) => synced.clone(),
            };
            self.complete(token, result);
        }
        (1 + group, held)
    }

    /// The cached handle of `file`, opening it (and making room) if needed.
    fn handle(&mut self, file: &str, open: Open) -> Result<&mut Handle, DiskError> {
        if self.handles.get(file).is_none() {
            let path = resolve(&self.root, file);
            let opened = match open_file(&path, open == Open::Create) {
                Err(error) if open == Open::Create && error.kind() == io::ErrorKind::NotFound => {
                    // The parent directory is missing: create it (and its
                    // ancestors) and try again. The new directories' names
                    // are durable only after a `SyncDir` of each one's parent.
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent)
                            .map_err(|error| io_error("create directories for", file, error))?;
                    }
                    open_file(&path, true)
                }
                other => other,
            };
            let opened = opened.map_err(|error| io_error("open", file, error))?;
            self.make_room()?;
            self.handles.insert(file, opened);
        }
        Ok(self.handles.get(file).expect("cached above"))
    }

    /// Evicts handles until one more fits under `OPEN_FILES_MAX`. A dirty
    /// handle is synced before it is closed: a later `fdatasync` through a
    /// new handle would flush the same pages, but a writeback error recorded
    /// against the file before that handle was opened might then go
    /// unreported, and an fsync error must never be missed.
    fn make_room(&mut self) -> Result<(), DiskError> {
        while self.handles.len() >= OPEN_FILES_MAX {
            let name = self.handles.victim().expect("a full cache has a victim");
            let handle = self.handles.remove(&name).expect("victim is cached");
            if handle.dirty {
                self.shared.fdatasyncs.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = sync_data(&self.shared, &handle.file) {
                    return Err(self.fatal("fdatasync (closing the handle)", &name, error));
                }
            }
        }
        Ok(())
    }

    /// Records a failed fsync: logs it, and from now on the disk refuses every
    /// operation (never retries, never pretends it succeeded).
    fn fatal(&self, what: &str, name: &str, error: io::Error) -> DiskError {
        eprintln!(
            "runnel-disk: FATAL: {what} of {:?} failed: {error}. What was written since \
             the last successful sync is in an unknown state; the disk refuses every \
             further operation. Restart the node to recover from what is durable.",
            resolve(&self.root, name)
        );
        self.shared.failed.store(true, Ordering::SeqCst);
        DiskError::SyncFailed
    }

    fn write(&mut self, file: &str, offset: u64, data: &[u8]) -> Result<DiskOutput, DiskError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| DiskError::Other(format!("write to {file:?}: offset overflows")))?;
        let handle = self.handle(file, Open::Create)?;
        // Marked before writing: a failed write may still have written a
        // prefix, which a later sync must cover.
        handle.dirty = true;
        handle.unsynced_end = handle.unsynced_end.max(end);
        handle
            .file
            .write_all_at(data, offset)
            .map_err(|error| io_error("write", file, error))?;
        if data.is_empty() {
            // The contract says a write past the end extends the file, and
            // `pwrite` of no bytes does not, so extend explicitly (the
            // simulated disk does the same).
            let len = handle
                .file
                .metadata()
                .map_err(|error| io_error("stat", file, error))?
                .len();
            if offset > len {
                handle.resized = true;
                handle
                    .file
                    .set_len(offset)
                    .map_err(|error| io_error("extend", file, error))?;
            }
        }
        Ok(DiskOutput::Done)
    }

    fn sync(&mut self, file: &str) -> Result<DiskOutput, DiskError> {
        let shared = Arc::clone(&self.shared);
        let handle = self.handle(file, Open::Existing)?;
        let synced = sync_data(&shared, &handle.file);
        if synced.is_ok() {
            handle.mark_synced();
        }
        self.shared.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        match synced {
            Ok(()) => Ok(DiskOutput::Done),
            Err(error) => Err(self.fatal("fdatasync", file, error)),
        }
    }

    fn truncate(&mut self, file: &str, len: u64) -> Result<DiskOutput, DiskError> {
        let handle = self.handle(file, Open::Existing)?;
        handle.dirty = true;
        handle.resized = true;
        handle
            .file
            .set_len(len)
            .map_err(|error| io_error("truncate", file, error))?;
        Ok(DiskOutput::Done)
    }

    fn delete(&mut self, file: &str) -> Result<DiskOutput, DiskError> {
        // The handle goes first: a handle of an unlinked file would let a
        // later write of the same name land in the deleted inode.
        self.handles.remove(file);
        match fs::remove_file(resolve(&self.root, file)) {
            Ok(()) => Ok(DiskOutput::Done),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(DiskOutput::Done),
            Err(error) => Err(io_error("delete", file, error)),
        }
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<DiskOutput, DiskError> {
        let from_path = resolve(&self.root, from);
        let to_path = resolve(&self.root, to);
        let renamed = match fs::rename(&from_path, &to_path) {
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    && fs::symlink_metadata(&from_path).is_ok() =>
            {
                // `from` exists, so `to`'s directory is what is missing:
                // create it, as a write would.
                if let Some(parent) = to_path.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|error| io_error("create directories for", to, error))?;
                }
                fs::rename(&from_path, &to_path)
            }
            other => other,
        };
        renamed.map_err(|error| io_error("rename", from, error))?;
        self.handles.rename(from, to);
        Ok(DiskOutput::Done)
    }

    fn sync_dir(&mut self, dir: &str) -> Result<DiskOutput, DiskError> {
        self.shared.dir_syncs.fetch_add(1, Ordering::Relaxed);
        let path = resolve(&self.root, dir);
        let handle = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&path)
        {
            Ok(handle) => handle,
            // A directory that does not exist holds no names to make durable.
            // (The simulated disk, which has no directories, agrees.)
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(DiskOutput::Done),
            Err(error) => return Err(io_error("open directory", dir, error)),
        };
        match sync_all(&self.shared, &handle) {
            Ok(()) => Ok(DiskOutput::Done),
            Err(error) => Err(self.fatal("directory fsync", dir, error)),
        }
    }

    fn read(&mut self, file: &str, offset: u64, len: u64) -> Result<DiskOutput, DiskError> {
        let handle = self.handle(file, Open::Existing)?;
        let size = handle
            .file
            .metadata()
            .map_err(|error| read_error(file, error))?
            .len();
        // Allocate what the file holds, not what was asked for: a large `len`
        // near the end of a small file is legitimate.
        let available = size.saturating_sub(offset).min(len);
        if available > READ_BYTES_MAX {
            return Err(DiskError::Other(format!(
                "read of {available} bytes of {file:?} exceeds READ_BYTES_MAX ({READ_BYTES_MAX})"
            )));
        }
        let mut data = vec![0; available as usize];
        let mut filled = 0;
        while filled < data.len() {
            match handle
                .file
                .read_at(&mut data[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(read_error(file, error)),
            }
        }
        data.truncate(filled);
        Ok(DiskOutput::Data(data))
    }
}

/// How many requests at the front of `queue` (the ones right behind a `Sync`
/// of `file`) group commit may perform before one shared `fdatasync`; 0 for
/// none. The group is the longest prefix that
///
/// - holds only `Write`s and `Sync`s of `file`,
/// - ends with a `Sync` (writes after the last sync are left for later),
/// - writes only at or past the end of every byte written since the file's
///   last `fdatasync` (`unsynced_end`, then each admitted write's end): pure
///   appends, so that no write lands on bytes whose durability a sync in the
///   group is still to establish, and
/// - stays within `GROUP_COMMIT_OPS_MAX` requests (the head sync included)
///   and `GROUP_COMMIT_BYTES_MAX` bytes, so that the head sync's latency is
///   bounded.
pub(crate) fn plan_group(file: &str, unsynced_end: u64, queue: &VecDeque<Request>) -> usize {
    let mut end = unsynced_end;
    let mut bytes = 0u64;
    let mut group = 0;
    for (i, request) in queue.iter().enumerate().take(GROUP_COMMIT_OPS_MAX - 1) {
        match request {
            Request::Op {
                op:
                    DiskOp::Write {
                        file: written,
                        offset,
                        data,
                    },
                ..
            } if written == file
                && *offset >= end
                && bytes + data.len() as u64 <= GROUP_COMMIT_BYTES_MAX =>
            {
                end = offset.saturating_add(data.len() as u64);
                bytes += data.len() as u64;
                if data.is_empty() {
                    // An empty write past the end resizes the file; keep it
                    // out of groups rather than reason about it.
                    break;
                }
            }
            Request::Op {
                op: DiskOp::Sync { file: synced },
                ..
            } if synced == file => group = i + 1,
            _ => break,
        }
    }
    group
}

/// `fdatasync`. Unit tests can make it fail, since no real file system here
/// can be made to fail one on demand.
fn sync_data(shared: &Shared, file: &File) -> io::Result<()> {
    #[cfg(test)]
    if shared.inject_sync_failure.load(Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let _ = shared;
    file.sync_data()
}

/// `fsync`, for directories; like `sync_data` for tests.
fn sync_all(shared: &Shared, file: &File) -> io::Result<()> {
    #[cfg(test)]
    if shared.inject_sync_failure.load(Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let _ = shared;
    file.sync_all()
}

fn open_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .open(path)
}

/// Maps an operating error of a non-read operation.
fn io_error(what: &str, file: &str, error: io::Error) -> DiskError {
    match error.kind() {
        io::ErrorKind::NotFound => DiskError::NotFound,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => DiskError::NoSpace,
        _ => DiskError::Other(format!("{what} {file:?}: {error}")),
    }
}

/// Maps an operating error of a read: an I/O error of the device (EIO, for
/// example a latent sector error) is `ReadFailed`.
fn read_error(file: &str, error: io::Error) -> DiskError {
    if error.raw_os_error() == Some(libc::EIO) {
        DiskError::ReadFailed
    } else {
        io_error("read", file, error)
    }
}

/// Every regular file under `root`, as relative paths with `/`, sorted
/// bytewise (the order of `String`'s `Ord`, which `BTreeMap`-based disks
/// such as the simulator's also give). Directories are walked, not listed;
/// symbolic links and special files are skipped. A name that is not UTF-8
/// cannot be a `DiskOp` path, so it is reported as an error rather than
/// skipped silently.
pub(crate) fn list(root: &Path) -> Result<Vec<String>, DiskError> {
    let mut files = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(resolve(root, &dir))
            .map_err(|error| io_error("list directory", &dir, error))?;
        for entry in entries {
            let entry = entry.map_err(|error| io_error("list directory", &dir, error))?;
            let name = entry.file_name().into_string().map_err(|name| {
                DiskError::Other(format!("non-UTF-8 file name {name:?} in {dir:?}"))
            })?;
            let relative = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let kind = entry
                .file_type()
                .map_err(|error| io_error("stat", &relative, error))?;
            if kind.is_dir() {
                dirs.push(relative);
            } else if kind.is_file() {
                files.push(relative);
            }
        }
    }
    files.sort_unstable();
    Ok(files)
}

/// The whole content of the file at `path`, bounded by `READ_FILE_BYTES_MAX`.
pub(crate) fn read_whole(path: &Path) -> Result<Vec<u8>, DiskError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|error| read_error(&name, error))?;
    let size = file
        .metadata()
        .map_err(|error| read_error(&name, error))?
        .len();
    if size > READ_FILE_BYTES_MAX {
        return Err(DiskError::Other(format!(
            "{name}: {size} bytes exceeds READ_FILE_BYTES_MAX ({READ_FILE_BYTES_MAX})"
        )));
    }
    let mut data = vec![0; size as usize];
    let mut filled = 0;
    while filled < data.len() {
        match file.read_at(&mut data[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(read_error(&name, error)),
        }
    }
    data.truncate(filled);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(file: &str, offset: u64, len: usize) -> Request {
        Request::Op {
            token: 0,
            op: DiskOp::Write {
                file: file.to_string(),
                offset,
                data: vec![7; len],
            },
        }
    }

    fn sync(file: &str) -> Request {
        Request::Op {
            token: 0,
            op: DiskOp::Sync {
                file: file.to_string(),
            },
        }
    }

    fn plan(unsynced_end: u64, requests: Vec<Request>) -> usize {
        plan_group("f", unsynced_end, &requests.into_iter().collect())
    }

    #[test]
    fn groups_appends_and_syncs_up_to_the_last_sync() {
        // Behind the head sync: W S W S W (the trailing write stays out).
        let requests = vec![
            write("f", 100, 10),
            sync("f"),
            write("f", 110, 10),
            sync("f"),
            write("f", 120, 10),
        ];
        assert_eq!(plan(100, requests), 4);
        assert_eq!(plan(0, vec![sync("f"), sync("f")]), 2);
    }

    #[test]
    fn nothing_to_group_without_a_later_sync() {
        assert_eq!(plan(0, vec![]), 0);
        assert_eq!(plan(0, vec![write("f", 0, 10), write("f", 10, 10)]), 0);
    }

    #[test]
    fn other_files_and_other_ops_end_the_group() {
        assert_eq!(plan(0, vec![write("g", 0, 1), sync("f")]), 0);
        assert_eq!(plan(0, vec![sync("g"), sync("f")]), 0);
        let truncate = Request::Op {
            token: 0,
            op: DiskOp::Truncate {
                file: "f".into(),
                len: 0,
            },
        };
        assert_eq!(plan(0, vec![sync("f"), truncate, sync("f")]), 1);
        let read = Request::Op {
            token: 0,
            op: DiskOp::Read {
                file: "f".into(),
                offset: 0,
                len: 1,
            },
        };
        assert_eq!(plan(0, vec![read, sync("f")]), 0);
    }

    #[test]
    fn overwrites_of_unsynced_bytes_end_the_group() {
        // The head sync covers bytes up to 100: a write below that must wait
        // until they are durable.
        assert_eq!(plan(100, vec![write("f", 90, 20), sync("f")]), 0);
        // So must a write over bytes an earlier write of the group wrote.
        let requests = vec![
            write("f", 100, 10),
            sync("f"),
            write("f", 105, 10),
            sync("f"),
        ];
        assert_eq!(plan(100, requests), 2);
    }

    #[test]
    fn groups_are_bounded() {
        let many: Vec<Request> = (0..2 * GROUP_COMMIT_OPS_MAX).map(|_| sync("f")).collect();
        assert_eq!(plan(0, many), GROUP_COMMIT_OPS_MAX - 1);
        let big = GROUP_COMMIT_BYTES_MAX as usize / 2 + 1;
        let requests = vec![
            write("f", 0, big),
            sync("f"),
            write("f", big as u64, big),
            sync("f"),
        ];
        assert_eq!(plan(0, requests), 2);
    }
}
