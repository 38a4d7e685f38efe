//! The simulated disk of one node.
//!
//! Model. Files are inodes holding bytes; names map to inodes. Each inode has
//! a *current* image (what reads see) and a *durable* image (what survives a
//! crash), plus the data operations (writes, truncates) applied to the current
//! image since the last completed `Sync` of that file. Names likewise have a
//! current and a durable map; a `SyncDir` of a directory makes the current
//! names of that directory durable.
//!
//! Operations queue FIFO and take effect, and complete, in submission order,
//! each after a seeded latency (`next_completion_at` / `pop_completion`).
//!
//! Crash (`crash`): the queue vanishes (those operations never happened), the
//! names revert to their durable map, and every file to its durable image.
//! With `DiskFaults::torn_writes`, the device first performs a random prefix
//! of the queue (operations whose completions the node never sees), then a
//! random prefix of each file's unsynced data operations survives, and the
//! first one lost, if a write, may leave a prefix of itself at 512-byte
//! sector granularity (a torn write); likewise a random prefix of the
//! unsynced name operations (creates, deletes, renames: each atomic)
//! survives. All of this is allowed by the `Disk` durability contract: only
//! what a completed sync covers must survive.
//!
//! `list` and `read_file` read the current image synchronously.

use std::collections::{BTreeMap, VecDeque};

use runnel_io::{Disk, DiskCompletion, DiskError, DiskOp, DiskOutput, Rng};

/// Torn writes keep a prefix at this granularity.
pub const SECTOR_BYTES: u64 = 512;
/// Operations queued at once; above it a submission fails with an error.
pub const DISK_QUEUE_MAX: usize = 100_000;
/// Bytes held by all files of one disk; above it writes fail with `NoSpace`.
pub const DISK_BYTES_MAX: u64 = 1 << 30;

/// The faults and timing of one disk. Bit flips at rest, latent sector
/// errors and misdirected writes are applied by the simulator through
/// [`SimDisk::flip_bit_at_rest`], [`SimDisk::make_unreadable_at_rest`] and
/// [`SimDisk::misdirect_write_at_rest`], where its fault atlas allows them.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskFaults {
    /// Latency of reads, writes, truncates and name operations, in ms.
    pub op_latency_ms: (u64, u64),
    /// Latency of `Sync` and `SyncDir`, in ms.
    pub sync_latency_ms: (u64, u64),
    /// A crash may keep a prefix of the unsynced writes, the last one torn.
    pub torn_writes: bool,
    /// Chance that an operation stalls for `slow_latency_ms` (a latency
    /// spike); the queue is FIFO, so everything behind it waits too.
    pub slow_op_chance: f64,
    pub slow_latency_ms: (u64, u64),
    /// Chance that a `Sync` fails (`SyncFailed`). What it should have made durable
    /// stays undurable, as after a real fsync failure: a crash may lose it.
    pub sync_failure_chance: f64,
    /// Chance that a `Write` fails with `NoSpace`, as on a full disk. The
    /// write does not happen.
    pub write_full_chance: f64,
    /// The disk answers every file `Sync` without making anything durable,
    /// like a drive whose write cache lies. Far outside the fault atlas: no
    /// plan draws it; tests switch it on to show that the checkers catch
    /// the acknowledged writes it loses.
    pub sync_ignored: bool,
}

impl Default for DiskFaults {
    fn default() -> Self {
        DiskFaults {
            op_latency_ms: (0, 1),
            sync_latency_ms: (1, 3),
            torn_writes: false,
            slow_op_chance: 0.0,
            slow_latency_ms: (100, 1_000),
            sync_failure_chance: 0.0,
            write_full_chance: 0.0,
            sync_ignored: false,
        }
    }
}

/// Faults a disk injected while running, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    pub slow_ops: u64,
    pub sync_failures: u64,
    pub write_full: u64,
}

impl InjectedFaults {
    /// Operations that failed because of an injected fault.
    pub fn errors(&self) -> u64 {
        self.sync_failures + self.write_full
    }
}

/// What a crash destroyed or tore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Queued operations that never happened.
    pub dropped_queued: u64,
    /// Queued operations that happened, though their completions were never
    /// delivered (only with `torn_writes`).
    pub performed_queued: u64,
    /// Completed but unsynced data operations lost (name operations are not counted).
    pub lost_unsynced: u64,
    /// Unsynced data operations that survived whole.
    pub kept_unsynced: u64,
    /// Writes of which a strict, non-empty prefix survived.
    pub torn_writes: u64,
    /// Unsynced creates, deletes and renames that survived.
    pub kept_name_ops: u64,
}

#[derive(Clone, Debug)]
enum DataOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

impl DataOp {
    fn apply(&self, image: &mut Vec<u8>) {
        match self {
            DataOp::Write { offset, data } => write_at(image, *offset, data),
            DataOp::Truncate { len } => image.resize(*len as usize, 0),
        }
    }
}

fn write_at(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = offset as usize;
    let end = offset + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset..end].copy_from_slice(data);
}

/// A name operation not yet covered by a `SyncDir`.
#[derive(Clone, Debug)]
enum NameOp {
    Create {
        name: String,
        inode: u64,
    },
    Delete {
        name: String,
    },
    Rename {
        from: String,
        to: String,
        inode: u64,
    },
}

impl NameOp {
    /// Whether a `SyncDir` of `dir` covers this operation entirely.
    fn covered_by(&self, dir: &str) -> bool {
        match self {
            NameOp::Create { name, .. } | NameOp::Delete { name } => dir_of(name) == dir,
            NameOp::Rename { from, to, .. } => dir_of(from) == dir && dir_of(to) == dir,
        }
    }

    fn inode(&self) -> Option<u64> {
        match self {
            NameOp::Create { inode, .. } | NameOp::Rename { inode, .. } => Some(*inode),
            NameOp::Delete { .. } => None,
        }
    }

    fn apply(&self, names: &mut BTreeMap<String, u64>) {
        match self {
            NameOp::Create { name, inode } => {
                names.insert(name.clone(), *inode);
            }
            NameOp::Delete { name } => {
                names.remove(name);
            }
            NameOp::Rename { from, to, inode } => {
                names.remove(from);
                names.insert(to.clone(), *inode);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<DataOp>,
    /// A latent sector error: reads fail until the file is written again
    /// (a write remaps the sector) or deleted.
    unreadable: bool,
}

struct Queued {
    token: u64,
    /// `Err` when the operation fails without running (queue full).
    op: Result<DiskOp, DiskError>,
    complete_at: u64,
}

/// Where a torn write of `len` bytes at `offset` ends: a random sector
/// boundary strictly inside it, as a length; `None` if it has none.
fn tear_point(rng: &mut Rng, offset: u64, len: usize) -> Option<usize> {
    let first = offset / SECTOR_BYTES + 1;
    let last = (offset + len as u64).div_ceil(SECTOR_BYTES);
    if first < last {
        Some((rng.range(first, last) * SECTOR_BYTES - offset) as usize)
    } else {
        None
    }
}

/// The directory of a path: everything before the last `/`, or "".
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
}

pub struct SimDisk {
    rng: Rng,
    faults: DiskFaults,
    now: u64,
    queue: VecDeque<Queued>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    /// Name operations since the `SyncDir` that covers them, in order.
    unsynced_names: Vec<NameOp>,
    /// Sum of the current sizes of all inodes.
    bytes: u64,
    completed: u64,
    injected: InjectedFaults,
}

impl SimDisk {
    pub fn new(rng: Rng, faults: DiskFaults) -> SimDisk {
        SimDisk {
            rng,
            faults,
            now: 0,
            queue: VecDeque::new(),
            inodes: BTreeMap::new(),
            next_inode: 1,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            unsynced_names: Vec::new(),
            bytes: 0,
            completed: 0,
            injected: InjectedFaults::default(),
        }
    }

    pub fn injected(&self) -> InjectedFaults {
        self.injected
    }

    /// Ends the faults injected while running (latency spikes, sync and
    /// write failures): the liveness phase heals every fault.
    pub fn heal(&mut self) {
        self.faults.slow_op_chance = 0.0;
        self.faults.sync_failure_chance = 0.0;
        self.faults.write_full_chance = 0.0;
    }

    /// Gives a file that `eligible` allows a latent sector error: reads of
    /// it fail with `ReadFailed` until it is written again or deleted.
    /// Returns the file, or `None` if no eligible file has any bytes.
    pub fn make_unreadable_at_rest(&mut self, eligible: &dyn Fn(&str) -> bool) -> Option<String> {
        let candidates: Vec<(String, u64)> = self
            .durable_names
            .iter()
            .filter(|(name, inode)| {
                eligible(name)
                    && self
                        .inodes
                        .get(inode)
                        .is_some_and(|n| !n.durable.is_empty())
            })
            .map(|(name, inode)| (name.clone(), *inode))
            .collect();
        let (name, inode) = self.rng.pick(&candidates)?.clone();
        self.inodes.get_mut(&inode).expect("listed").unreadable = true;
        Some(name)
    }

    /// Flips one bit at rest in a file that `eligible` allows, in both the
    /// durable and the current image (call it while the node is down).
    /// Returns the file, the byte offset and the bit, or `None` if no
    /// eligible file has any bytes.
    pub fn flip_bit_at_rest(
        &mut self,
        eligible: &dyn Fn(&str) -> bool,
    ) -> Option<(String, u64, u8)> {
        let candidates: Vec<(String, u64)> = self
            .durable_names
            .iter()
            .filter(|(name, inode)| {
                eligible(name)
                    && self
                        .inodes
                        .get(inode)
                        .is_some_and(|n| !n.durable.is_empty())
            })
            .map(|(name, inode)| (name.clone(), *inode))
            .collect();
        let (name, inode) = self.rng.pick(&candidates)?.clone();
        let node = self.inodes.get_mut(&inode).expect("listed");
        let offset = self.rng.range(0, node.durable.len() as u64);
        let bit = self.rng.range(0, 8) as u8;
        node.durable[offset as usize] ^= 1 << bit;
        if let Some(byte) = node.current.get_mut(offset as usize) {
            *byte ^= 1 << bit;
        }
        Some((name, offset, bit))
    }

    /// A misdirected write, found at rest: one sector of a log segment's
    /// data landed at another place, in the same file or in another eligible
    /// one, and the sector it was meant for kept what it held before the
    /// write (zeros). The sector comes from the full sectors of a segment,
    /// which are written once and never again, so the state is one a real
    /// device can reach; the place it landed may be any eligible file. Both
    /// places change in the durable and the current image (call it while
    /// the node is down). Half the time the data lands at the same offset of
    /// another segment, where frames of another group may line up exactly
    /// with those they replace: only a checksum that covers the group tells
    /// them apart.
    ///
    /// Returns (meant for file, offset, landed in file, offset), or `None`
    /// if no eligible segment has a full sector.
    pub fn misdirect_write_at_rest(
        &mut self,
        eligible: &dyn Fn(&str) -> bool,
    ) -> Option<(String, u64, String, u64)> {
        let candidates: Vec<(String, u64, u64)> = self
            .durable_names
            .iter()
            .filter(|(name, _)| eligible(name))
            .filter_map(|(name, inode)| {
                let length = self.inodes.get(inode)?.durable.len() as u64;
                (length > 0).then(|| (name.clone(), *inode, length))
            })
            .collect();
        let sources: Vec<(String, u64, u64)> = candidates
            .iter()
            .filter(|(name, _, length)| name.ends_with(".seg") && *length >= SECTOR_BYTES)
            .cloned()
            .collect();
        let (meant_name, meant_inode, meant_length) = self.rng.pick(&sources)?.clone();
        let full_sectors = meant_length / SECTOR_BYTES;
        let meant_offset = self.rng.range(0, full_sectors) * SECTOR_BYTES;
        let same_offset_elsewhere: Vec<(String, u64, u64)> = candidates
            .iter()
            .filter(|(name, _, length)| {
                *name != meant_name && name.ends_with(".seg") && *length > meant_offset
            })
            .cloned()
            .collect();
        let (landed_name, landed_inode, landed_offset) =
            if !same_offset_elsewhere.is_empty() && self.rng.chance(0.5) {
                let (name, inode, _) = self.rng.pick(&same_offset_elsewhere)?.clone();
                (name, inode, meant_offset)
            } else {
                let (name, inode, length) = self.rng.pick(&candidates)?.clone();
                let mut offset = self.rng.range(0, length) / SECTOR_BYTES * SECTOR_BYTES;
                if inode == meant_inode && offset == meant_offset {
                    // Landing where it was meant to is no fault: the next
                    // sector over, or the one before at the end of the file.
                    offset = if offset + SECTOR_BYTES < length {
                        offset + SECTOR_BYTES
                    } else {
                        offset.saturating_sub(SECTOR_BYTES)
                    };
                }
                (name, inode, offset)
            };
        let meant_end = (meant_offset + SECTOR_BYTES) as usize;
        let data = self.inodes[&meant_inode].durable[meant_offset as usize..meant_end].to_vec();
        if landed_inode == meant_inode && landed_offset == meant_offset {
            return None;
        }
        // The place it was meant for never got it.
        let meant = self.inodes.get_mut(&meant_inode).expect("listed");
        for image in [&mut meant.durable, &mut meant.current] {
            let end = meant_end.min(image.len());
            if (meant_offset as usize) < end {
                image[meant_offset as usize..end].fill(0);
            }
        }
        // It landed elsewhere, within that file's length (the device writes
        // a sector it already has).
        let landed = self.inodes.get_mut(&landed_inode).expect("listed");
        for image in [&mut landed.durable, &mut landed.current] {
            let start = landed_offset as usize;
            let end = (start + data.len()).min(image.len());
            if start < end {
                image[start..end].copy_from_slice(&data[..end - start]);
            }
        }
        Some((meant_name, meant_offset, landed_name, landed_offset))
    }

    pub fn faults(&self) -> &DiskFaults {
        &self.faults
    }

    /// The time at which operations submitted from now on are issued.
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// When the next queued operation completes.
    pub fn next_completion_at(&self) -> Option<u64> {
        self.queue.front().map(|queued| queued.complete_at)
    }

    /// Completes the next operation if it is due at or before `now`.
    pub fn pop_completion(&mut self, now: u64) -> Option<DiskCompletion> {
        if self.queue.front()?.complete_at > now {
            return None;
        }
        let queued = self.queue.pop_front()?;
        self.completed += 1;
        let result = queued.op.and_then(|op| self.apply(op));
        Some(DiskCompletion {
            token: queued.token,
            result,
        })
    }

    fn latency(&mut self, range: (u64, u64)) -> u64 {
        let (low, high) = range;
        if high <= low {
            low
        } else {
            self.rng.range(low, high + 1)
        }
    }

    fn set_len(&mut self, inode: u64, new_len: usize) {
        let node = self.inodes.get_mut(&inode).expect("inode exists");
        self.bytes = self.bytes - node.current.len() as u64 + new_len as u64;
    }

    /// Creates an empty file under `name` if it has none; returns its inode.
    fn create(&mut self, name: &str) -> u64 {
        if let Some(&inode) = self.names.get(name) {
            return inode;
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(inode, Inode::default());
        self.names.insert(name.to_string(), inode);
        self.unsynced_names.push(NameOp::Create {
            name: name.to_string(),
            inode,
        });
        inode
    }

    /// Drops inodes that no name (current, durable or unsynced) refers to.
    fn collect_garbage(&mut self, inode: u64) {
        let referenced = self.names.values().any(|&i| i == inode)
            || self.durable_names.values().any(|&i| i == inode)
            || self
                .unsynced_names
                .iter()
                .any(|op| op.inode() == Some(inode));
        if !referenced {
            if let Some(node) = self.inodes.remove(&inode) {
                self.bytes -= node.current.len() as u64;
            }
        }
    }

    fn apply(&mut self, op: DiskOp) -> Result<DiskOutput, DiskError> {
        match op {
            DiskOp::Write { file, offset, data } => {
                if self.faults.write_full_chance > 0.0
                    && self.rng.chance(self.faults.write_full_chance)
                {
                    self.injected.write_full += 1;
                    return Err(DiskError::NoSpace);
                }
                let end = offset + data.len() as u64;
                let current_len = self
                    .names
                    .get(&file)
                    .map(|inode| self.inodes[inode].current.len() as u64)
                    .unwrap_or(0);
                if end > current_len && self.bytes + (end - current_len) > DISK_BYTES_MAX {
                    return Err(DiskError::NoSpace);
                }
                let inode = self.create(&file);
                self.set_len(inode, current_len.max(end) as usize);
                let node = self.inodes.get_mut(&inode).expect("inode exists");
                node.unreadable = false;
                write_at(&mut node.current, offset, &data);
                node.unsynced.push(DataOp::Write { offset, data });
                Ok(DiskOutput::Done)
            }
            DiskOp::Truncate { file, len } => {
                let inode = *self.names.get(&file).ok_or(DiskError::NotFound)?;
                let current_len = self.inodes[&inode].current.len() as u64;
                if len > current_len && self.bytes + (len - current_len) > DISK_BYTES_MAX {
                    return Err(DiskError::NoSpace);
                }
                self.set_len(inode, len as usize);
                let node = self.inodes.get_mut(&inode).expect("inode exists");
                let op = DataOp::Truncate { len };
                op.apply(&mut node.current);
                node.unsynced.push(op);
                Ok(DiskOutput::Done)
            }
            DiskOp::Sync { file } => {
                let inode = *self.names.get(&file).ok_or(DiskError::NotFound)?;
                if self.faults.sync_failure_chance > 0.0
                    && self.rng.chance(self.faults.sync_failure_chance)
                {
                    self.injected.sync_failures += 1;
                    return Err(DiskError::SyncFailed);
                }
                if self.faults.sync_ignored {
                    return Ok(DiskOutput::Done);
                }
                let node = self.inodes.get_mut(&inode).expect("inode exists");
                for op in std::mem::take(&mut node.unsynced) {
                    op.apply(&mut node.durable);
                }
                debug_assert_eq!(node.durable, node.current);
                Ok(DiskOutput::Done)
            }
            DiskOp::Delete { file } => {
                if let Some(inode) = self.names.remove(&file) {
                    self.unsynced_names.push(NameOp::Delete { name: file });
                    self.collect_garbage(inode);
                }
                Ok(DiskOutput::Done)
            }
            DiskOp::Rename { from, to } => {
                let inode = self.names.remove(&from).ok_or(DiskError::NotFound)?;
                self.unsynced_names.push(NameOp::Rename {
                    from,
                    to: to.clone(),
                    inode,
                });
                if let Some(replaced) = self.names.insert(to, inode) {
                    if replaced != inode {
                        self.collect_garbage(replaced);
                    }
                }
                Ok(DiskOutput::Done)
            }
            DiskOp::SyncDir { dir } => {
                let stale: Vec<String> = self
                    .durable_names
                    .keys()
                    .filter(|name| dir_of(name) == dir)
                    .cloned()
                    .collect();
                let mut unreferenced = Vec::new();
                for name in stale {
                    if let Some(inode) = self.durable_names.remove(&name) {
                        unreferenced.push(inode);
                    }
                }
                for (name, &inode) in &self.names {
                    if dir_of(name) == dir {
                        self.durable_names.insert(name.clone(), inode);
                    }
                }
                let mut released = Vec::new();
                self.unsynced_names.retain(|op| {
                    let covered = op.covered_by(&dir);
                    if covered {
                        released.extend(op.inode());
                    }
                    !covered
                });
                unreferenced.extend(released);
                for inode in unreferenced {
                    self.collect_garbage(inode);
                }
                Ok(DiskOutput::Done)
            }
            DiskOp::Read { file, offset, len } => {
                let inode = self.names.get(&file).ok_or(DiskError::NotFound)?;
                if self.inodes[inode].unreadable {
                    return Err(DiskError::ReadFailed);
                }
                let data = &self.inodes[inode].current;
                let start = (offset as usize).min(data.len());
                let end = (offset.saturating_add(len) as usize).min(data.len());
                Ok(DiskOutput::Data(data[start..end].to_vec()))
            }
        }
    }

    fn tear_point(&mut self, offset: u64, len: usize) -> Option<usize> {
        tear_point(&mut self.rng, offset, len)
    }

    /// The node crashed: queued operations vanish, and every file and name
    /// reverts to what was synced (see the module doc for torn writes).
    pub fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport::default();
        if self.faults.torn_writes && !self.queue.is_empty() {
            // The device may have performed some queued operations whose
            // completions the node never saw: they count as unsynced below
            // unless a performed sync covers them.
            let performed = self.rng.range(0, self.queue.len() as u64 + 1) as usize;
            for queued in self.queue.drain(..performed).collect::<Vec<_>>() {
                if let Ok(op) = queued.op {
                    let _ = self.apply(op);
                }
            }
            report.performed_queued = performed as u64;
            // The write in progress may be torn.
            let in_progress = matches!(
                self.queue.front(),
                Some(Queued {
                    op: Ok(DiskOp::Write { .. }),
                    ..
                })
            );
            if let Some(Queued {
                op: Ok(DiskOp::Write { file, offset, data }),
                ..
            }) = in_progress.then(|| self.queue.pop_front()).flatten()
            {
                if let Some(cut) = self.tear_point(offset, data.len()) {
                    let _ = self.apply(DiskOp::Write {
                        file,
                        offset,
                        data: data[..cut].to_vec(),
                    });
                    report.torn_writes += 1;
                }
                report.dropped_queued += 1;
            }
        }
        report.dropped_queued += self.queue.len() as u64;
        self.queue.clear();
        let name_ops = std::mem::take(&mut self.unsynced_names);
        if self.faults.torn_writes && !name_ops.is_empty() {
            // A prefix of the unsynced name operations reached the disk.
            let kept = self.rng.range(0, name_ops.len() as u64 + 1) as usize;
            for op in &name_ops[..kept] {
                op.apply(&mut self.durable_names);
            }
            report.kept_name_ops = kept as u64;
        }
        self.names = self.durable_names.clone();
        let live: Vec<u64> = {
            let mut live: Vec<u64> = self.durable_names.values().copied().collect();
            live.sort_unstable();
            live.dedup();
            live
        };
        self.inodes
            .retain(|inode, _| live.binary_search(inode).is_ok());
        let torn_writes = self.faults.torn_writes;
        let mut bytes = 0;
        for node in self.inodes.values_mut() {
            let ops = std::mem::take(&mut node.unsynced);
            let mut image = std::mem::take(&mut node.durable);
            let kept = if torn_writes && !ops.is_empty() {
                self.rng.range(0, ops.len() as u64 + 1) as usize
            } else {
                0
            };
            for op in &ops[..kept] {
                op.apply(&mut image);
            }
            if let Some(DataOp::Write { offset, data }) = ops.get(kept) {
                if torn_writes {
                    if let Some(cut) = tear_point(&mut self.rng, *offset, data.len()) {
                        write_at(&mut image, *offset, &data[..cut]);
                        report.torn_writes += 1;
                    }
                }
            }
            report.kept_unsynced += kept as u64;
            report.lost_unsynced += (ops.len() - kept) as u64;
            node.current = image.clone();
            node.durable = image;
            bytes += node.current.len() as u64;
        }
        self.bytes = bytes;
        report
    }
}

impl Disk for SimDisk {
    fn submit(&mut self, token: u64, op: DiskOp) {
        if self.queue.len() >= DISK_QUEUE_MAX {
            // Complete it at once, after the queue, with an error.
            let complete_at = self.queue.back().map_or(self.now, |q| q.complete_at);
            self.queue.push_back(Queued {
                token,
                op: Err(DiskError::Other("simulated disk queue full".to_string())),
                complete_at,
            });
            return;
        }
        let mut latency = match op {
            DiskOp::Sync { .. } | DiskOp::SyncDir { .. } => {
                self.latency(self.faults.sync_latency_ms)
            }
            _ => self.latency(self.faults.op_latency_ms),
        };
        if self.faults.slow_op_chance > 0.0 && self.rng.chance(self.faults.slow_op_chance) {
            latency += self.latency(self.faults.slow_latency_ms);
            self.injected.slow_ops += 1;
        }
        let after = self
            .queue
            .back()
            .map_or(self.now, |q| q.complete_at.max(self.now));
        self.queue.push_back(Queued {
            token,
            op: Ok(op),
            complete_at: after + latency,
        });
    }

    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        Ok(self.names.keys().cloned().collect())
    }

    fn read_file(&mut self, file: &str) -> Result<Vec<u8>, DiskError> {
        let inode = self.names.get(file).ok_or(DiskError::NotFound)?;
        if self.inodes[inode].unreadable {
            return Err(DiskError::ReadFailed);
        }
        Ok(self.inodes[inode].current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(torn_writes: bool) -> SimDisk {
        SimDisk::new(
            Rng::new(3),
            DiskFaults {
                op_latency_ms: (1, 5),
                sync_latency_ms: (2, 10),
                torn_writes,
                ..DiskFaults::default()
            },
        )
    }

    #[test]
    fn a_failed_sync_makes_nothing_durable() {
        let mut disk = SimDisk::new(
            Rng::new(5),
            DiskFaults {
                sync_failure_chance: 1.0,
                ..DiskFaults::default()
            },
        );
        disk.submit(1, write("f", 0, b"data"));
        disk.submit(2, DiskOp::Sync { file: "f".into() });
        let results = run(&mut disk);
        assert!(results[0].result.is_ok());
        assert_eq!(results[1].result, Err(DiskError::SyncFailed));
        assert_eq!(disk.injected().sync_failures, 1);
        disk.crash();
        assert_eq!(disk.read_file("f").unwrap_or_default(), Vec::<u8>::new());
    }

    #[test]
    fn a_full_disk_refuses_the_write() {
        let mut disk = SimDisk::new(
            Rng::new(5),
            DiskFaults {
                write_full_chance: 1.0,
                ..DiskFaults::default()
            },
        );
        disk.submit(1, write("f", 0, b"data"));
        assert_eq!(run(&mut disk)[0].result, Err(DiskError::NoSpace));
        assert!(disk.list().unwrap().is_empty());
        disk.heal();
        disk.submit(2, write("f", 0, b"data"));
        assert!(run(&mut disk)[0].result.is_ok());
    }

    #[test]
    fn a_bit_flip_at_rest_changes_one_bit_of_an_eligible_file() {
        let mut disk = disk(false);
        disk.submit(1, write("keep", 0, &[0u8; 64]));
        disk.submit(
            2,
            DiskOp::Sync {
                file: "keep".into(),
            },
        );
        disk.submit(3, write("spare", 0, &[0u8; 64]));
        disk.submit(
            4,
            DiskOp::Sync {
                file: "spare".into(),
            },
        );
        disk.submit(5, DiskOp::SyncDir { dir: String::new() });
        run(&mut disk);
        disk.crash();
        let (file, offset, bit) = disk
            .flip_bit_at_rest(&|name: &str| name == "keep")
            .expect("an eligible file");
        assert_eq!(file, "keep");
        let data = disk.read_file("keep").unwrap();
        assert_eq!(data.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
        assert_eq!(data[offset as usize], 1 << bit);
        assert_eq!(disk.read_file("spare").unwrap(), vec![0u8; 64]);
        assert!(disk.flip_bit_at_rest(&|_: &str| false).is_none());
    }

    #[test]
    fn a_misdirected_write_moves_one_sector_between_eligible_places() {
        let mut disk = disk(false);
        let a: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8 + 1).collect();
        let b: Vec<u8> = (0..2048u32).map(|i| (i % 241) as u8 + 1).collect();
        for (token, (name, data)) in [("a.seg", &a), ("b.seg", &b), ("spare.seg", &a)]
            .into_iter()
            .enumerate()
        {
            disk.submit(2 * token as u64, write(name, 0, data));
            disk.submit(2 * token as u64 + 1, DiskOp::Sync { file: name.into() });
        }
        disk.submit(9, DiskOp::SyncDir { dir: String::new() });
        run(&mut disk);
        disk.crash();
        let eligible = |name: &str| name == "a.seg" || name == "b.seg";
        for _ in 0..20 {
            let before_a = disk.read_file("a.seg").unwrap();
            let before_b = disk.read_file("b.seg").unwrap();
            let (meant, meant_offset, landed, landed_offset) = disk
                .misdirect_write_at_rest(&eligible)
                .expect("eligible files");
            assert!(eligible(&meant) && eligible(&landed));
            assert_eq!(meant_offset % SECTOR_BYTES, 0);
            assert_eq!(landed_offset % SECTOR_BYTES, 0);
            assert!(meant != landed || meant_offset != landed_offset);
            let before = |name: &str| {
                if name == "a.seg" {
                    &before_a
                } else {
                    &before_b
                }
            };
            let sector = |data: &[u8], offset: u64| {
                data[offset as usize..(offset + SECTOR_BYTES) as usize].to_vec()
            };
            let after_landed = disk.read_file(&landed).unwrap();
            assert_eq!(
                sector(&after_landed, landed_offset),
                sector(before(&meant), meant_offset),
                "the data landed elsewhere"
            );
            let after_meant = disk.read_file(&meant).unwrap();
            if meant != landed || landed_offset.abs_diff(meant_offset) >= SECTOR_BYTES {
                assert_eq!(
                    sector(&after_meant, meant_offset),
                    vec![0; SECTOR_BYTES as usize],
                    "the place it was meant for kept its old contents"
                );
            }
            assert_eq!(after_landed.len(), 2048, "no file grew");
        }
        assert_eq!(
            disk.read_file("spare.seg").unwrap(),
            a,
            "ineligible files untouched"
        );
        assert!(disk.misdirect_write_at_rest(&|_: &str| false).is_none());
    }

    /// Runs the queue to completion, returning the tokens in completion order.
    fn run(disk: &mut SimDisk) -> Vec<DiskCompletion> {
        let mut out = Vec::new();
        while let Some(at) = disk.next_completion_at() {
            out.push(disk.pop_completion(at).expect("due"));
        }
        out
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

    fn sync_dir(dir: &str) -> DiskOp {
        DiskOp::SyncDir {
            dir: dir.to_string(),
        }
    }

    #[test]
    fn completes_fifo_after_latency() {
        let mut disk = disk(false);
        disk.set_now(100);
        for token in 0..50 {
            let op = if token % 3 == 0 {
                sync("a")
            } else {
                write("a", token, &[1])
            };
            disk.submit(token, op);
        }
        assert_eq!(disk.pop_completion(100), None, "nothing completes at once");
        let mut last = 0;
        let mut tokens = Vec::new();
        while let Some(at) = disk.next_completion_at() {
            assert!(at >= last && at > 100);
            last = at;
            tokens.push(disk.pop_completion(at).unwrap().token);
        }
        assert_eq!(tokens, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn synced_data_and_names_survive_a_crash() {
        let mut disk = disk(false);
        disk.submit(1, write("log/a", 0, b"hello"));
        disk.submit(2, sync("log/a"));
        disk.submit(3, sync_dir("log"));
        assert!(run(&mut disk).iter().all(|c| c.result.is_ok()));
        disk.crash();
        assert_eq!(disk.list().unwrap(), vec!["log/a".to_string()]);
        assert_eq!(disk.read_file("log/a").unwrap(), b"hello");
    }

    #[test]
    fn unsynced_data_is_lost() {
        let mut disk = disk(false);
        disk.submit(1, write("a", 0, b"hello"));
        disk.submit(2, sync("a"));
        disk.submit(3, sync_dir(""));
        disk.submit(4, write("a", 5, b" world"));
        disk.submit(
            5,
            DiskOp::Truncate {
                file: "a".into(),
                len: 2,
            },
        );
        run(&mut disk);
        assert_eq!(disk.read_file("a").unwrap(), b"he");
        let report = disk.crash();
        assert_eq!(report.lost_unsynced, 2);
        assert_eq!(disk.read_file("a").unwrap(), b"hello");
    }

    #[test]
    fn queued_operations_vanish() {
        let mut disk = disk(false);
        disk.submit(1, write("a", 0, b"x"));
        disk.submit(2, sync("a"));
        disk.submit(3, sync_dir(""));
        let report = disk.crash();
        assert_eq!(report.dropped_queued, 3);
        assert_eq!(disk.next_completion_at(), None);
        assert!(disk.list().unwrap().is_empty());
    }

    #[test]
    fn file_sync_without_dir_sync_loses_the_name() {
        let mut disk = disk(false);
        disk.submit(1, write("a", 0, b"x"));
        disk.submit(2, sync("a"));
        run(&mut disk);
        disk.crash();
        assert!(disk.list().unwrap().is_empty());
    }

    #[test]
    fn rename_is_durable_only_after_sync_dir() {
        let mut disk = disk(false);
        disk.submit(1, write("tmp", 0, b"new"));
        disk.submit(2, sync("tmp"));
        disk.submit(3, write("state", 0, b"old"));
        disk.submit(4, sync("state"));
        disk.submit(5, sync_dir(""));
        disk.submit(
            6,
            DiskOp::Rename {
                from: "tmp".into(),
                to: "state".into(),
            },
        );
        run(&mut disk);
        assert_eq!(disk.read_file("state").unwrap(), b"new");
        disk.crash();
        assert_eq!(disk.read_file("state").unwrap(), b"old");
        assert_eq!(disk.read_file("tmp").unwrap(), b"new");

        disk.submit(
            7,
            DiskOp::Rename {
                from: "tmp".into(),
                to: "state".into(),
            },
        );
        disk.submit(8, sync_dir(""));
        run(&mut disk);
        disk.crash();
        assert_eq!(disk.list().unwrap(), vec!["state".to_string()]);
        assert_eq!(disk.read_file("state").unwrap(), b"new");
    }

    #[test]
    fn delete_is_durable_only_after_sync_dir() {
        let mut disk = disk(false);
        disk.submit(1, write("a", 0, b"x"));
        disk.submit(2, sync("a"));
        disk.submit(3, sync_dir(""));
        disk.submit(4, DiskOp::Delete { file: "a".into() });
        run(&mut disk);
        assert!(disk.list().unwrap().is_empty());
        disk.crash();
        assert_eq!(disk.read_file("a").unwrap(), b"x");
        disk.submit(5, DiskOp::Delete { file: "a".into() });
        disk.submit(6, sync_dir(""));
        run(&mut disk);
        disk.crash();
        assert!(disk.list().unwrap().is_empty());
    }

    #[test]
    fn errors_for_missing_files() {
        let mut disk = disk(false);
        disk.submit(1, sync("missing"));
        disk.submit(
            2,
            DiskOp::Read {
                file: "missing".into(),
                offset: 0,
                len: 1,
            },
        );
        disk.submit(
            3,
            DiskOp::Delete {
                file: "missing".into(),
            },
        );
        let results: Vec<_> = run(&mut disk).into_iter().map(|c| c.result).collect();
        assert_eq!(
            results,
            vec![
                Err(DiskError::NotFound),
                Err(DiskError::NotFound),
                Ok(DiskOutput::Done)
            ]
        );
    }

    #[test]
    fn reads_see_earlier_writes() {
        let mut disk = disk(false);
        disk.submit(1, write("a", 0, b"abcdef"));
        disk.submit(
            2,
            DiskOp::Read {
                file: "a".into(),
                offset: 2,
                len: 10,
            },
        );
        let completions = run(&mut disk);
        assert_eq!(
            completions[1].result,
            Ok(DiskOutput::Data(b"cdef".to_vec()))
        );
    }

    #[test]
    fn torn_writes_keep_a_sector_prefix() {
        let mut torn_seen = false;
        for seed in 0..64 {
            let mut disk = SimDisk::new(
                Rng::new(seed),
                DiskFaults {
                    torn_writes: true,
                    ..DiskFaults::default()
                },
            );
            disk.submit(1, write("a", 0, &[1u8; 100]));
            disk.submit(2, sync("a"));
            disk.submit(3, sync_dir(""));
            disk.submit(4, write("a", 100, &[2u8; 2000]));
            run(&mut disk);
            let report = disk.crash();
            let image = disk.read_file("a").unwrap();
            assert!(image[..100].iter().all(|&b| b == 1), "synced prefix kept");
            let survived = image.len() - 100;
            assert!(image[100..].iter().all(|&b| b == 2));
            assert!(
                survived == 0
                    || survived == 2000
                    || image.len().is_multiple_of(SECTOR_BYTES as usize),
                "torn at a sector boundary: {}",
                image.len()
            );
            if report.torn_writes > 0 {
                torn_seen = true;
                assert!(survived > 0 && survived < 2000);
            }
        }
        assert!(torn_seen);
    }

    #[test]
    fn crash_may_perform_queued_operations_without_completing_them() {
        let mut performed_seen = false;
        for seed in 0..64 {
            let mut disk = SimDisk::new(
                Rng::new(seed),
                DiskFaults {
                    torn_writes: true,
                    ..DiskFaults::default()
                },
            );
            disk.submit(1, write("a", 0, b"old"));
            disk.submit(2, sync("a"));
            disk.submit(3, sync_dir(""));
            run(&mut disk);
            disk.submit(4, write("a", 0, b"new"));
            disk.submit(5, sync("a"));
            let report = disk.crash();
            assert_eq!(report.performed_queued + report.dropped_queued, 2);
            let image = disk.read_file("a").unwrap();
            if report.performed_queued == 2 {
                performed_seen = true;
                assert_eq!(image, b"new", "a performed sync makes the write durable");
            } else {
                assert!(image == b"old" || image == b"new");
            }
            assert_eq!(disk.next_completion_at(), None);
        }
        assert!(performed_seen);
    }

    #[test]
    fn unsynced_name_operations_may_survive_as_a_prefix() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let mut disk = SimDisk::new(
                Rng::new(seed),
                DiskFaults {
                    torn_writes: true,
                    ..DiskFaults::default()
                },
            );
            disk.submit(1, write("state", 0, b"old"));
            disk.submit(2, sync("state"));
            disk.submit(3, sync_dir(""));
            disk.submit(4, write("tmp", 0, b"new"));
            disk.submit(5, sync("tmp"));
            disk.submit(
                6,
                DiskOp::Rename {
                    from: "tmp".into(),
                    to: "state".into(),
                },
            );
            run(&mut disk);
            disk.crash();
            let names = disk.list().unwrap();
            let state = disk.read_file("state").unwrap();
            // Never both names for the new file, never no state at all.
            match names.as_slice() {
                [only] if only == "state" => assert!(state == b"old" || state == b"new"),
                [state_name, tmp] if state_name == "state" && tmp == "tmp" => {
                    assert_eq!(state, b"old");
                    assert_eq!(disk.read_file("tmp").unwrap(), b"new");
                }
                other => panic!("impossible names after crash: {other:?}"),
            }
            outcomes.insert((names.len(), state));
        }
        assert_eq!(outcomes.len(), 3, "old, old + tmp, new: {outcomes:?}");
    }

    #[test]
    fn full_disk_refuses_writes() {
        let mut disk = disk(false);
        disk.submit(1, write("a", DISK_BYTES_MAX, b"x"));
        assert_eq!(run(&mut disk)[0].result, Err(DiskError::NoSpace));
    }
}
