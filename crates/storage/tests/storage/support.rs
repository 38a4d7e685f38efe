//! An in-memory `Disk` for storage tests. Ops take effect as soon as they are
//! submitted; the disk remembers which of them a completed `Sync`/`SyncDir`
//! covers, so that a crash can drop (or tear) exactly what the `Disk`
//! durability contract allows it to.
//!
//! Model: files are inodes with a current and a durable content; names map to
//! inodes, with a current and a durable map. `Sync` makes an inode's content
//! durable; `SyncDir` makes the names in one directory (and the existence of
//! its subdirectories) durable. A file survives a crash only if its name and
//! every directory above it are durable. Ops not covered by a sync are kept
//! with a sequence number, so a crash can keep some of them.

use std::collections::{BTreeMap, BTreeSet};

use runnel_io::{Disk, DiskCompletion, DiskError, DiskOp, DiskOutput};

#[derive(Clone, Debug)]
enum DataOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

impl DataOp {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            DataOp::Write { offset, data } => write_at(content, *offset, data),
            DataOp::Truncate { len } => content.resize(*len as usize, 0),
        }
    }
}

fn write_at(content: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset as usize..end].copy_from_slice(data);
}

#[derive(Clone, Debug)]
enum NameOp {
    Link { name: String, inode: u64 },
    Unlink { name: String },
}

impl NameOp {
    fn dir(&self) -> &str {
        match self {
            NameOp::Link { name, .. } | NameOp::Unlink { name } => dir_of(name),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Data ops since the last sync, with their sequence numbers.
    pending: Vec<(u64, DataOp)>,
}

/// What a crash keeps of the ops that no completed sync covers.
#[derive(Clone, Copy, Debug)]
pub enum Crash {
    /// Nothing: every file reverts to what was synced.
    DropUnsynced,
    /// The first `survivors` uncovered ops, in submission order, survive; if
    /// the next one is a write, its first `tear` bytes survive too.
    Prefix { survivors: usize, tear: usize },
    /// Each uncovered op survives independently, with probability 1/2; a
    /// surviving write is torn (a random prefix survives) with probability
    /// 1/4. Seeded, so reproducible.
    Subset { seed: u64 },
}

/// The parent directory of a path ("" for the data directory).
pub fn dir_of(path: &str) -> &str {
    path.rfind('/').map_or("", |at| &path[..at])
}

fn ancestors(path: &str) -> Vec<&str> {
    let mut dirs = Vec::new();
    let mut dir = dir_of(path);
    while !dir.is_empty() {
        dirs.push(dir);
        dir = dir_of(dir);
    }
    dirs
}

/// A tiny deterministic generator for `Crash::Subset`.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    dirs: BTreeSet<String>,
    durable_dirs: BTreeSet<String>,
    pending_names: Vec<(u64, NameOp)>,
    sequence: u64,
    unreadable: BTreeSet<String>,
    pub completions: Vec<DiskCompletion>,
    /// Every op ever submitted, for assertions on what storage planned.
    pub submitted: Vec<DiskOp>,
}

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }

    /// Submits `ops` in order and panics if any fails: storage must never
    /// plan an op that fails on a healthy disk (a sync of a missing file, a
    /// rename of nothing).
    pub fn run(&mut self, ops: Vec<DiskOp>) {
        for op in ops {
            let token = self.completions.len() as u64;
            self.submit(token, op.clone());
            let result = &self.completions.last().expect("a completion").result;
            assert!(result.is_ok(), "{op:?} failed: {result:?}");
        }
    }

    /// The content of a file as it is now.
    pub fn content(&self, file: &str) -> Option<&[u8]> {
        self.names
            .get(file)
            .map(|inode| self.inodes[inode].current.as_slice())
    }

    /// Every file name, sorted.
    pub fn files(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// Flips one bit of a file, durably: damage at rest.
    pub fn flip_bit(&mut self, file: &str, byte: usize, bit: u8) {
        let inode = self.inodes.get_mut(&self.names[file]).expect("inode");
        inode.current[byte] ^= 1 << bit;
        inode.durable[byte] ^= 1 << bit;
    }

    /// Overwrites a file's whole content durably (damage at rest, or a test
    /// setting up an exact state).
    pub fn set_content(&mut self, file: &str, content: Vec<u8>) {
        let inode = self.inodes.get_mut(&self.names[file]).expect("inode");
        inode.current = content.clone();
        inode.durable = content;
        inode.pending.clear();
    }

    /// Removes a file durably (a lost file).
    pub fn remove_durably(&mut self, file: &str) {
        self.names.remove(file);
        self.durable_names.remove(file);
        self.pending_names.retain(|(_, op)| match op {
            NameOp::Link { name, .. } | NameOp::Unlink { name } => name != file,
        });
    }

    /// Makes `read_file` and `Read` of this file fail (a latent sector
    /// error).
    pub fn make_unreadable(&mut self, file: &str) {
        self.unreadable.insert(file.to_string());
    }

    /// How many submitted ops no completed sync covers yet.
    pub fn uncovered_ops(&self) -> usize {
        self.uncovered_sequences().len()
    }

    fn uncovered_sequences(&self) -> BTreeSet<u64> {
        let mut sequences: BTreeSet<u64> = self.pending_names.iter().map(|(s, _)| *s).collect();
        // Writes to a file that no name refers to, current, durable or in an
        // uncovered link, cannot matter to a crash.
        let linked = self.pending_names.iter().filter_map(|(_, op)| match op {
            NameOp::Link { inode, .. } => Some(inode),
            NameOp::Unlink { .. } => None,
        });
        let reachable: BTreeSet<u64> = self
            .names
            .values()
            .chain(self.durable_names.values())
            .chain(linked)
            .copied()
            .collect();
        for (number, inode) in &self.inodes {
            if reachable.contains(number) {
                sequences.extend(inode.pending.iter().map(|(s, _)| *s));
            }
        }
        sequences
    }

    /// The machine crashed: every file and name reverts to its durable state
    /// plus whatever uncovered ops `crash` keeps. Afterwards everything on
    /// the disk is durable.
    pub fn crash(&mut self, crash: Crash) {
        let uncovered: Vec<u64> = self.uncovered_sequences().into_iter().collect();
        let mut rng = SplitMix(match crash {
            Crash::Subset { seed } => seed,
            _ => 0,
        });
        // For each uncovered op: does it survive, and is it torn (and where)?
        let mut fate: BTreeMap<u64, (bool, Option<u64>)> = BTreeMap::new();
        for (position, &sequence) in uncovered.iter().enumerate() {
            let decision = match crash {
                Crash::DropUnsynced => (false, None),
                Crash::Prefix { survivors, tear } => {
                    if position < survivors {
                        (true, None)
                    } else if position == survivors {
                        (false, Some(tear as u64))
                    } else {
                        (false, None)
                    }
                }
                Crash::Subset { .. } => {
                    let keep = rng.below(2) == 0;
                    let torn = keep && rng.below(4) == 0;
                    (keep && !torn, torn.then(|| rng.next()))
                }
            };
            fate.insert(sequence, decision);
        }

        let mut names = self.durable_names.clone();
        for (sequence, op) in &self.pending_names {
            if fate[sequence].0 {
                match op {
                    NameOp::Link { name, inode } => {
                        names.insert(name.clone(), *inode);
                    }
                    NameOp::Unlink { name } => {
                        names.remove(name);
                    }
                }
            }
        }
        let dirs = self.durable_dirs.clone();
        names.retain(|name, _| ancestors(name).iter().all(|dir| dirs.contains(*dir)));
        let live: BTreeSet<u64> = names.values().copied().collect();
        self.inodes.retain(|number, _| live.contains(number));
        for inode in self.inodes.values_mut() {
            let mut content = inode.durable.clone();
            for (sequence, op) in std::mem::take(&mut inode.pending) {
                match (fate[&sequence], &op) {
                    ((true, _), _) => op.apply(&mut content),
                    ((false, Some(tear)), DataOp::Write { offset, data }) => {
                        let keep = (tear % (data.len() as u64 + 1)) as usize;
                        write_at(&mut content, *offset, &data[..keep]);
                    }
                    _ => {}
                }
            }
            inode.current = content.clone();
            inode.durable = content;
        }
        self.names = names.clone();
        self.durable_names = names;
        self.dirs = dirs;
        self.pending_names.clear();
    }

    fn link(&mut self, name: &str, inode: u64, sequence: u64) {
        if let Some(old) = self.names.insert(name.to_string(), inode) {
            let _ = old; // The old inode stays until no name refers to it.
        }
        for dir in ancestors(name) {
            self.dirs.insert(dir.to_string());
        }
        self.pending_names.push((
            sequence,
            NameOp::Link {
                name: name.to_string(),
                inode,
            },
        ));
    }

    fn apply(&mut self, op: DiskOp) -> Result<DiskOutput, DiskError> {
        self.sequence += 1;
        let sequence = self.sequence;
        match op {
            DiskOp::Write { file, offset, data } => {
                let inode = match self.names.get(&file) {
                    Some(&inode) => inode,
                    None => {
                        self.next_inode += 1;
                        let inode = self.next_inode;
                        self.inodes.insert(inode, Inode::default());
                        self.link(&file, inode, sequence);
                        inode
                    }
                };
                let node = self.inodes.get_mut(&inode).expect("inode");
                let op = DataOp::Write { offset, data };
                op.apply(&mut node.current);
                node.pending.push((sequence, op));
                Ok(DiskOutput::Done)
            }
            DiskOp::Truncate { file, len } => {
                let inode = *self.names.get(&file).ok_or(DiskError::NotFound)?;
                let node = self.inodes.get_mut(&inode).expect("inode");
                let op = DataOp::Truncate { len };
                op.apply(&mut node.current);
                node.pending.push((sequence, op));
                Ok(DiskOutput::Done)
            }
            DiskOp::Sync { file } => {
                let inode = *self.names.get(&file).ok_or(DiskError::NotFound)?;
                let node = self.inodes.get_mut(&inode).expect("inode");
                node.durable = node.current.clone();
                node.pending.clear();
                Ok(DiskOutput::Done)
            }
            DiskOp::Delete { file } => {
                if self.names.remove(&file).is_some() {
                    self.pending_names
                        .push((sequence, NameOp::Unlink { name: file }));
                }
                Ok(DiskOutput::Done)
            }
            DiskOp::Rename { from, to } => {
                let inode = self.names.remove(&from).ok_or(DiskError::NotFound)?;
                self.pending_names
                    .push((sequence, NameOp::Unlink { name: from }));
                self.link(&to, inode, sequence);
                Ok(DiskOutput::Done)
            }
            DiskOp::SyncDir { dir } => {
                if !dir.is_empty() && !self.dirs.contains(&dir) {
                    return Err(DiskError::NotFound);
                }
                self.durable_names.retain(|name, _| dir_of(name) != dir);
                for (name, inode) in &self.names {
                    if dir_of(name) == dir {
                        self.durable_names.insert(name.clone(), *inode);
                    }
                }
                self.pending_names.retain(|(_, op)| op.dir() != dir);
                for sub in &self.dirs {
                    if dir_of(sub) == dir {
                        self.durable_dirs.insert(sub.clone());
                    }
                }
                Ok(DiskOutput::Done)
            }
            DiskOp::Read { file, offset, len } => {
                let inode = self.names.get(&file).ok_or(DiskError::NotFound)?;
                if self.unreadable.contains(&file) {
                    return Err(DiskError::ReadFailed);
                }
                let data = &self.inodes[inode].current;
                let start = (offset as usize).min(data.len());
                let end = (offset.saturating_add(len) as usize).min(data.len());
                Ok(DiskOutput::Data(data[start..end].to_vec()))
            }
        }
    }
}

impl Disk for MemDisk {
    fn submit(&mut self, token: u64, op: DiskOp) {
        self.submitted.push(op.clone());
        let result = self.apply(op);
        self.completions.push(DiskCompletion { token, result });
    }

    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        Ok(self.names.keys().cloned().collect())
    }

    fn read_file(&mut self, file: &str) -> Result<Vec<u8>, DiskError> {
        if self.unreadable.contains(file) {
            return Err(DiskError::ReadFailed);
        }
        self.content(file)
            .map(<[u8]>::to_vec)
            .ok_or(DiskError::NotFound)
    }
}

#[test]
fn the_double_drops_unsynced_writes_and_names() {
    let mut disk = MemDisk::new();
    disk.run(vec![
        DiskOp::Write {
            file: "a/f".into(),
            offset: 0,
            data: vec![1, 2, 3],
        },
        DiskOp::Sync { file: "a/f".into() },
        DiskOp::SyncDir { dir: "a".into() },
        DiskOp::SyncDir { dir: "".into() },
        DiskOp::Write {
            file: "a/f".into(),
            offset: 3,
            data: vec![4],
        },
        DiskOp::Write {
            file: "a/g".into(),
            offset: 0,
            data: vec![9],
        },
        DiskOp::Sync { file: "a/g".into() },
    ]);
    assert_eq!(disk.uncovered_ops(), 2);
    disk.crash(Crash::DropUnsynced);
    // g's data was synced but its name never was.
    assert_eq!(disk.files(), vec!["a/f".to_string()]);
    assert_eq!(disk.content("a/f"), Some(&[1, 2, 3][..]));
}

#[test]
fn the_double_tears_a_write_in_prefix_mode() {
    let mut disk = MemDisk::new();
    disk.run(vec![
        DiskOp::Write {
            file: "f".into(),
            offset: 0,
            data: vec![1, 2],
        },
        DiskOp::Sync { file: "f".into() },
        DiskOp::SyncDir { dir: "".into() },
        DiskOp::Write {
            file: "f".into(),
            offset: 2,
            data: vec![3, 4, 5],
        },
    ]);
    disk.crash(Crash::Prefix {
        survivors: 0,
        tear: 2,
    });
    assert_eq!(disk.content("f"), Some(&[1, 2, 3, 4][..]));
}

#[test]
fn the_double_needs_the_parent_directory_synced() {
    let mut disk = MemDisk::new();
    disk.run(vec![
        DiskOp::Write {
            file: "d/e/f".into(),
            offset: 0,
            data: vec![1],
        },
        DiskOp::Sync {
            file: "d/e/f".into(),
        },
        DiskOp::SyncDir { dir: "d/e".into() },
    ]);
    disk.crash(Crash::DropUnsynced);
    assert!(disk.files().is_empty(), "d and d/e were never made durable");
}
