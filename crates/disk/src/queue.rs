//! The bounded FIFO between the submitting thread and the disk thread.
//!
//! A `Mutex<VecDeque>` with two condition variables rather than an
//! `mpsc::sync_channel`, for two reasons: the bound counts bytes as well as
//! operations (a few large writes must not queue gigabytes), and the disk
//! thread takes everything queued at once, so that group commit can look
//! ahead at the operations behind a `Sync`.
//!
//! The counts cover every request that has been pushed and not yet reported
//! done by the disk thread, including the ones it has taken into its local
//! buffer. So the bound holds for all the work not yet performed, wherever
//! it sits.

use std::collections::VecDeque;
use std::sync::{mpsc, Condvar, Mutex, MutexGuard, PoisonError};

use runnel_io::{DiskError, DiskOp};

use crate::{QUEUE_BYTES_MAX, QUEUE_OPS_MAX};

/// One unit of work for the disk thread, in submission order.
pub(crate) enum Request {
    /// An operation to perform.
    Op { token: u64, op: DiskOp },
    /// An operation refused at submission (an invalid path). It still passes
    /// through the queue so that its completion arrives in order.
    Refuse { token: u64, error: DiskError },
    /// `Disk::list`, answered on `reply` once every earlier request is done.
    List {
        reply: mpsc::SyncSender<Result<Vec<String>, DiskError>>,
    },
    /// `Disk::read_file`, answered on `reply` once every earlier request is
    /// done.
    ReadFile {
        file: String,
        reply: mpsc::SyncSender<Result<Vec<u8>, DiskError>>,
    },
}

impl Request {
    /// The bytes this request holds in memory while it waits: the data of a
    /// write, nothing for the others.
    pub(crate) fn bytes(&self) -> u64 {
        match self {
            Request::Op {
                op: DiskOp::Write { data, .. },
                ..
            } => data.len() as u64,
            _ => 0,
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Op { token, op } => match op {
                DiskOp::Write { file, offset, data } => {
                    write!(f, "Op({token}, Write {file} @{offset} +{})", data.len())
                }
                other => write!(f, "Op({token}, {other:?})"),
            },
            Request::Refuse { token, error } => write!(f, "Refuse({token}, {error})"),
            Request::List { .. } => write!(f, "List"),
            Request::ReadFile { file, .. } => write!(f, "ReadFile({file})"),
        }
    }
}

struct State {
    items: VecDeque<Request>,
    /// Requests pushed and not yet reported done.
    ops: usize,
    /// `Request::bytes` of those requests.
    bytes: u64,
    /// `FileDisk` was dropped: the disk thread finishes what is queued, then
    /// exits.
    closed: bool,
    /// The disk thread has exited (normally or by a panic); nothing more will
    /// be performed.
    worker_gone: bool,
}

pub(crate) struct Queue {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
}

impl Queue {
    pub(crate) fn new() -> Queue {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                ops: 0,
                bytes: 0,
                closed: false,
                worker_gone: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    /// Critical sections never leave the state half-updated, so a poisoned
    /// lock (a panic elsewhere while holding it) still guards a consistent
    /// state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a request, blocking while the queue is full. The wait is
    /// bounded: the disk thread never waits on the caller (completions go to
    /// an unbounded channel), so it keeps draining the queue. A request larger
    /// than `QUEUE_BYTES_MAX` on its own is admitted once the queue is empty,
    /// so it cannot wait forever.
    ///
    /// Panics if the disk thread is gone: that only happens after it
    /// panicked, which is a bug, and waiting would hang forever.
    pub(crate) fn push(&self, request: Request) {
        let bytes = request.bytes();
        let mut state = self.lock();
        loop {
            assert!(
                !state.worker_gone,
                "runnel-disk: the disk thread is gone (it panicked); no operation can run"
            );
            assert!(!state.closed, "runnel-disk: submit after close");
            let room = state.ops < QUEUE_OPS_MAX
                && (state.ops == 0 || state.bytes.saturating_add(bytes) <= QUEUE_BYTES_MAX);
            if room {
                break;
            }
            state = self
                .not_full
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.ops += 1;
        state.bytes += bytes;
        state.items.push_back(request);
        drop(state);
        self.not_empty.notify_one();
    }

    /// Moves every queued request into `local`, waiting for one if there is
    /// none. Returns false once the queue is closed and empty: the disk thread
    /// then exits.
    pub(crate) fn take_all(&self, local: &mut VecDeque<Request>) -> bool {
        let mut state = self.lock();
        while state.items.is_empty() && !state.closed {
            state = self
                .not_empty
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.items.is_empty() {
            return false;
        }
        local.extend(state.items.drain(..));
        true
    }

    /// Moves whatever is queued now into `local`, without waiting.
    pub(crate) fn take_available(&self, local: &mut VecDeque<Request>) {
        let mut state = self.lock();
        local.extend(state.items.drain(..));
    }

    /// The disk thread performed `ops` requests holding `bytes`.
    pub(crate) fn done(&self, ops: usize, bytes: u64) {
        let mut state = self.lock();
        assert!(state.ops >= ops && state.bytes >= bytes, "queue accounting");
        state.ops -= ops;
        state.bytes -= bytes;
        drop(state);
        self.not_full.notify_all();
    }

    /// No more requests will be pushed; the disk thread drains and exits.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
    }

    /// Called by the disk thread as it exits, including by unwinding.
    pub(crate) fn worker_gone(&self) {
        let mut state = self.lock();
        state.worker_gone = true;
        // Requests still queued will never run. Dropping them drops the reply
        // senders of `list`/`read_file`, which wakes their callers.
        state.items.clear();
        drop(state);
        self.not_full.notify_all();
    }
}
