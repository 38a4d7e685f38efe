//! The IO boundary of the Runnel node core.
//!
//! The node core is a deterministic, single-threaded state machine. Everything
//! that touches the outside world leaves it through the traits in this crate,
//! and every result of IO comes back to the core as a later event. Production
//! wires the traits to sockets, files and the OS clock; the simulator wires
//! them to a seeded in-memory network, disks and clocks.
//!
//! Nothing in this crate reads global time or global randomness.

#![forbid(unsafe_code)]

use rand::{Rng as _, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A node of the cluster. Node ids are assigned by the operator and never reused.
pub type NodeId = u64;

/// A replication group: one per partition, plus the metadata group.
pub type GroupId = u64;

/// A monotonic clock, local to one node.
///
/// Contract: `now_ms` never decreases between two calls on the same node
/// incarnation. It is *not* synchronized with any other node's clock: it may
/// be skewed, drift, or jump forward. The core uses it only to measure
/// timeouts, never for safety.
pub trait Clock {
    /// Milliseconds since an arbitrary, per-node origin.
    fn now_ms(&self) -> u64;

    /// Milliseconds since the Unix epoch by the node's wall clock, for the
    /// times Kafka shows users: LogAppendTime stamps, retention by time,
    /// offsets by timestamp. It may jump either way and differ between
    /// nodes; it is never used for timeouts or safety. The default (for
    /// simulated clocks) is the monotonic time itself.
    fn wall_clock_ms(&self) -> i64 {
        self.now_ms() as i64
    }
}

/// An unreliable, message-oriented link to every other node.
///
/// Contract: `send` never blocks and never fails visibly. A message may be
/// delivered zero, one or several times, after any delay and in any order
/// relative to other messages. The receiving core sees each delivery as a
/// peer-message event. Implementations bound their own queues and drop
/// messages when full: the protocol tolerates loss.
pub trait Network<M> {
    /// Queues `message` for `to`. Sending to oneself is a programmer error.
    fn send(&mut self, to: NodeId, message: M);
}

/// Why a disk operation failed. These are operating errors: the core reports
/// them and reacts, it does not assert on them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DiskError {
    /// The device has no room for the write.
    NoSpace,
    /// The file does not exist.
    NotFound,
    /// A read failed (for example a latent sector error).
    ReadFailed,
    /// `fsync`/`fdatasync` failed. What was written since the last successful
    /// sync is in an unknown state and must never be assumed durable: the core
    /// stops rather than retry (see DESIGN.md, "Storage").
    SyncFailed,
    /// Any other error reported by the operating system.
    Other(String),
}

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskError::NoSpace => write!(f, "no space left on device"),
            DiskError::NotFound => write!(f, "file not found"),
            DiskError::ReadFailed => write!(f, "read failed"),
            DiskError::SyncFailed => write!(f, "fsync failed"),
            DiskError::Other(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for DiskError {}

/// One asynchronous disk operation. Files are named by paths relative to the
/// node's data directory, with `/` separating directories.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DiskOp {
    /// Writes `data` at `offset`, creating the file (and its parent
    /// directories) if missing. Extends the file when writing past its end.
    Write {
        file: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// `fdatasync`: every earlier write and truncate of `file` is durable once
    /// this completes successfully.
    Sync { file: String },
    /// Sets the file's length to `len` bytes.
    Truncate { file: String, len: u64 },
    /// Removes the file. Deleting a missing file succeeds.
    Delete { file: String },
    /// Atomically replaces `to` with `from`.
    Rename { from: String, to: String },
    /// Makes every earlier create, delete and rename in directory `dir`
    /// ("" is the data directory itself) durable.
    SyncDir { dir: String },
    /// Reads up to `len` bytes at `offset`; fewer at the end of the file.
    Read { file: String, offset: u64, len: u64 },
}

/// What a successful disk operation returns.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DiskOutput {
    /// The operation is done (see `DiskOp` for what "done" promises).
    Done,
    /// The bytes a `Read` returned.
    Data(Vec<u8>),
}

/// The result of one operation, delivered to the core as a completion event
/// carrying the `token` the core chose when it submitted the operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DiskCompletion {
    pub token: u64,
    pub result: Result<DiskOutput, DiskError>,
}

/// A node's disk.
///
/// Ordering contract: operations take effect, and complete, in the order they
/// were submitted (one FIFO queue per node). A completion for an operation is
/// delivered only after the completions of every earlier operation.
///
/// Durability contract: a crash may lose any operation that no later
/// completed `Sync` (for data: writes and truncates of that file) or
/// `SyncDir` (for names: creating, deleting and renaming files in that
/// directory) covers. Unsynced operations are lost independently of each
/// other: a later unsynced write may survive while an earlier one is lost,
/// leaving a hole that recovery must detect (real page-cache writeback has
/// no order, and group commit may hand several writes to one fsync). A lost
/// write may also be torn: a prefix of it, at sector granularity, may
/// survive. What a completed sync covers survives a
/// crash, unless the disk itself corrupts it at rest (bit flips, latent
/// sector errors), which checksums must detect.
///
/// The synchronous methods `list` and `read_file` exist for recovery only:
/// the core calls them while it starts, before it handles any event.
pub trait Disk {
    /// Submits an operation; its completion arrives later as an event.
    fn submit(&mut self, token: u64, op: DiskOp);
    /// Every file under the data directory, as relative paths, sorted.
    fn list(&mut self) -> Result<Vec<String>, DiskError>;
    /// The whole content of a file, as the disk holds it now.
    fn read_file(&mut self, file: &str) -> Result<Vec<u8>, DiskError>;
}

/// A seeded, deterministic random number generator.
///
/// The core never uses global randomness: each node owns one `Rng`, seeded by
/// the simulator from the run's seed, or by production from the OS once at
/// start. The algorithm (ChaCha8) is stable across platforms and versions, so
/// a seed replays bit for bit.
#[derive(Clone, Debug)]
pub struct Rng {
    inner: ChaCha8Rng,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A new generator whose stream depends on this one's seed and `stream`
    /// only, so that adding draws in one component does not shift another's.
    pub fn fork(&mut self, stream: u64) -> Rng {
        let base = self.inner.next_u64();
        Rng::new(base ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }

    /// A uniform value in `[low, high)`. Requires `low < high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low < high, "empty range {low}..{high}");
        self.inner.gen_range(low..high)
    }

    /// True with probability `probability` (clamped to [0, 1]).
    pub fn chance(&mut self, probability: f64) -> bool {
        if probability <= 0.0 {
            return false;
        }
        if probability >= 1.0 {
            return true;
        }
        self.inner.gen_bool(probability)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.inner.gen::<f64>()
    }

    /// A uniformly chosen element; `None` for an empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.range(0, items.len() as u64) as usize])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn forks_are_independent_of_each_other() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let mut fork_a = a.fork(1);
        let mut fork_b = b.fork(2);
        assert_ne!(fork_a.next_u64(), fork_b.next_u64());
    }

    #[test]
    fn range_stays_in_bounds() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let value = rng.range(10, 20);
            assert!((10..20).contains(&value));
        }
    }
}
