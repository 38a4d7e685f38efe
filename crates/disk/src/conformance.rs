//! The conformance suite of the `Disk` contract (crates/io), for any
//! implementation: [`FileDisk`](crate::FileDisk) runs it in
//! crates/disk/tests/conformance.rs, and the simulator's `SimDisk` in
//! sim/tests. It pins the observable behaviour that storage and the node
//! core rely on, so that the simulated disk and the real one differ only in
//! timing and faults.
//!
//! # Driving a disk
//!
//! Disks complete operations in different ways: `FileDisk` on its own
//! thread, `SimDisk` when the simulator advances time. The suite therefore
//! takes two closures:
//!
//! - `make`: a new, empty disk (for `FileDisk`, in a fresh directory);
//! - `settle`: runs the disk until every operation submitted to it so far has
//!   completed, and returns those completions in the order the disk
//!   delivered them. For `FileDisk`: receive as many completions as
//!   operations were submitted. For `SimDisk`: pop completions at
//!   `next_completion_at()` until the queue is empty.
//!
//! Each test submits a batch of operations without waiting (with increasing
//! tokens), settles, and checks the completions: exactly one per operation,
//! in submission order, each with the expected result. It calls `list` and
//! `read_file` only when nothing is outstanding, since the contract says
//! nothing about operations still in flight.
//!
//! What the suite does not test: durability across crashes (a crash is
//! specific to each implementation: see the simulator's own tests, and
//! crates/disk/tests/crash.rs), and faults.

use std::collections::BTreeMap;

use runnel_io::{Disk, DiskCompletion, DiskError, DiskOp, DiskOutput, Rng};

/// Makes fresh disks and settles them; see the module documentation.
pub struct Harness<'a, D> {
    make: &'a mut dyn FnMut() -> D,
    settle: &'a mut dyn FnMut(&mut D) -> Vec<DiskCompletion>,
    next_token: u64,
}

/// A test of the suite.
pub type Test<D> = for<'a, 'b> fn(&'b mut Harness<'a, D>);

impl<'a, D: Disk> Harness<'a, D> {
    pub fn new(
        make: &'a mut dyn FnMut() -> D,
        settle: &'a mut dyn FnMut(&mut D) -> Vec<DiskCompletion>,
    ) -> Self {
        Harness {
            make,
            settle,
            next_token: 1,
        }
    }

    fn fresh(&mut self) -> D {
        (self.make)()
    }

    /// Submits `ops` back to back, settles, checks that exactly their
    /// completions arrived, in submission order, and returns their results.
    fn run(&mut self, disk: &mut D, ops: Vec<DiskOp>) -> Vec<Result<DiskOutput, DiskError>> {
        let first = self.next_token;
        let count = ops.len() as u64;
        for op in ops {
            disk.submit(self.next_token, op);
            self.next_token += 1;
        }
        let completions = (self.settle)(disk);
        let tokens: Vec<u64> = completions.iter().map(|c| c.token).collect();
        let expected: Vec<u64> = (first..first + count).collect();
        assert_eq!(
            tokens, expected,
            "completions must arrive once each, in submission order"
        );
        completions.into_iter().map(|c| c.result).collect()
    }

    /// Like `run`, and checks every result against `expected`.
    fn expect(&mut self, disk: &mut D, ops: Vec<(DiskOp, Result<DiskOutput, DiskError>)>) {
        let (ops, expected): (Vec<DiskOp>, Vec<_>) = ops.into_iter().unzip();
        let described: Vec<String> = ops.iter().map(describe).collect();
        let results = self.run(disk, ops);
        for (i, (result, want)) in results.iter().zip(&expected).enumerate() {
            assert_eq!(
                result, want,
                "op #{i} ({}) of the batch returned the wrong result",
                described[i]
            );
        }
    }
}

/// Every test of the suite, by name.
pub fn tests<D: Disk>() -> Vec<(&'static str, Test<D>)> {
    vec![
        ("write_read_round_trip", write_read_round_trip::<D>),
        ("writes_past_end_extend", writes_past_end_extend::<D>),
        (
            "truncate_shrinks_and_extends",
            truncate_shrinks_and_extends::<D>,
        ),
        ("rename_replaces", rename_replaces::<D>),
        (
            "delete_of_missing_succeeds",
            delete_of_missing_succeeds::<D>,
        ),
        (
            "missing_files_are_not_found",
            missing_files_are_not_found::<D>,
        ),
        ("syncs_succeed", syncs_succeed::<D>),
        ("list_is_sorted", list_is_sorted::<D>),
        ("reads_see_earlier_writes", reads_see_earlier_writes::<D>),
        (
            "appends_with_a_sync_after_each",
            appends_with_a_sync_after_each::<D>,
        ),
        ("fifo_order_and_model", fifo_order_and_model::<D>),
    ]
}

/// Runs every test, printing each name to stderr first so that a failure
/// names its test.
pub fn run_all<D: Disk>(
    make: &mut dyn FnMut() -> D,
    settle: &mut dyn FnMut(&mut D) -> Vec<DiskCompletion>,
) {
    let mut harness = Harness::new(make, settle);
    for (name, test) in tests::<D>() {
        eprintln!("disk conformance: {name}");
        test(&mut harness);
    }
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

fn truncate(file: &str, len: u64) -> DiskOp {
    DiskOp::Truncate {
        file: file.to_string(),
        len,
    }
}

fn delete(file: &str) -> DiskOp {
    DiskOp::Delete {
        file: file.to_string(),
    }
}

fn rename(from: &str, to: &str) -> DiskOp {
    DiskOp::Rename {
        from: from.to_string(),
        to: to.to_string(),
    }
}

fn read(file: &str, offset: u64, len: u64) -> DiskOp {
    DiskOp::Read {
        file: file.to_string(),
        offset,
        len,
    }
}

const DONE: Result<DiskOutput, DiskError> = Ok(DiskOutput::Done);
const NOT_FOUND: Result<DiskOutput, DiskError> = Err(DiskError::NotFound);

fn data(bytes: &[u8]) -> Result<DiskOutput, DiskError> {
    Ok(DiskOutput::Data(bytes.to_vec()))
}

/// An op for messages, without a write's whole data.
fn describe(op: &DiskOp) -> String {
    match op {
        DiskOp::Write { file, offset, data } => {
            format!("Write {file:?} at {offset}, {} bytes", data.len())
        }
        other => format!("{other:?}"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

/// A write, then reads of it and of part of it; `read_file` returns it too.
pub fn write_read_round_trip<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    h.expect(
        &mut disk,
        vec![
            (write("a", 0, b"hello world"), DONE),
            (sync("a"), DONE),
            (sync_dir(""), DONE),
            (read("a", 0, 11), data(b"hello world")),
            (read("a", 6, 100), data(b"world")),
        ],
    );
    assert_eq!(disk.read_file("a"), Ok(b"hello world".to_vec()));
    assert_eq!(disk.list(), Ok(names(&["a"])));
}

/// A write past the end extends the file with zeros, a read past the end
/// returns what is there (nothing beyond it), and a write of no bytes
/// creates the file and extends it to its offset.
pub fn writes_past_end_extend<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    h.expect(
        &mut disk,
        vec![
            (write("f", 0, b"abc"), DONE),
            (write("f", 8, b"xyz"), DONE),
            (read("f", 0, 100), data(b"abc\0\0\0\0\0xyz")),
            (read("f", 10, 5), data(b"z")),
            (read("f", 11, 5), data(b"")),
            (read("f", 50, 5), data(b"")),
            (write("g", 0, b""), DONE),
            (write("h", 4, b""), DONE),
        ],
    );
    assert_eq!(disk.read_file("f"), Ok(b"abc\0\0\0\0\0xyz".to_vec()));
    assert_eq!(disk.read_file("g"), Ok(Vec::new()));
    assert_eq!(disk.read_file("h"), Ok(vec![0; 4]));
}

/// Truncate cuts a file, or extends it with zeros; a missing file is
/// `NotFound`.
pub fn truncate_shrinks_and_extends<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    h.expect(
        &mut disk,
        vec![
            (write("f", 0, b"0123456789"), DONE),
            (truncate("f", 4), DONE),
            (read("f", 0, 100), data(b"0123")),
            (truncate("f", 6), DONE),
            (read("f", 0, 100), data(b"0123\0\0")),
            (sync("f"), DONE),
            (truncate("f", 0), DONE),
            (write("f", 2, b"z"), DONE),
            (truncate("missing", 0), NOT_FOUND),
        ],
    );
    assert_eq!(disk.read_file("f"), Ok(b"\0\0z".to_vec()));
    assert_eq!(disk.list(), Ok(names(&["f"])));
}

/// Rename replaces the target with the source, whole; a missing source is
/// `NotFound`; the target may be in a directory that does not exist yet.
pub fn rename_replaces<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    h.expect(
        &mut disk,
        vec![
            (write("state.tmp", 0, b"new"), DONE),
            (write("state", 0, b"old and longer"), DONE),
            (sync("state.tmp"), DONE),
            (rename("state.tmp", "state"), DONE),
            (read("state", 0, 100), data(b"new")),
            (read("state.tmp", 0, 100), NOT_FOUND),
            (rename("state.tmp", "other"), NOT_FOUND),
            // Writes through the new name reach the renamed file.
            (write("state", 3, b"!"), DONE),
            (sync("state"), DONE),
        ],
    );
    assert_eq!(disk.list(), Ok(names(&["state"])));
    assert_eq!(disk.read_file("state"), Ok(b"new!".to_vec()));
    h.expect(
        &mut disk,
        vec![
            (rename("state", "dir/state"), DONE),
            (sync_dir("dir"), DONE),
            (sync_dir(""), DONE),
            (write("state", 0, b"fresh"), DONE),
        ],
    );
    assert_eq!(disk.list(), Ok(names(&["dir/state", "state"])));
    assert_eq!(disk.read_file("dir/state"), Ok(b"new!".to_vec()));
    assert_eq!(disk.read_file("state"), Ok(b"fresh".to_vec()));
}

/// Deleting a missing file succeeds; deleting a file removes it, and a
/// write of the same name afterwards starts a new, empty file.
pub fn delete_of_missing_succeeds<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    h.expect(
        &mut disk,
        vec![
            (delete("missing"), DONE),
            (delete("dir/missing"), DONE),
            (write("x", 0, b"doomed"), DONE),
            (delete("x"), DONE),
            (read("x", 0, 10), NOT_FOUND),
            (delete("x"), DONE),
            (sync_dir(""), DONE),
        ],
    );
    assert_eq!(disk.list(), Ok(Vec::new()));
    assert_eq!(disk.read_file("x"), Err(DiskError::NotFound));
    h.expect(
        &mut disk,
        vec![
            (write("x", 2, b"new"), DONE),
            (read("x", 0, 10), data(b"\0\0new")),
        ],
    );
}

/// `read_file`, `Read`, `Sync`, `Truncate` and `Rename` of a missing file are
/// `NotFound`; a fresh disk lists nothing.
pub fn missing_files_are_not_found<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    assert_eq!(disk.list(), Ok(Vec::new()));
    assert_eq!(disk.read_file("nope"), Err(DiskError::NotFound));
    assert_eq!(disk.read_file("dir/nope"), Err(DiskError::NotFound));
    h.expect(
        &mut disk,
        vec![
            (read("nope", 0, 1), NOT_FOUND),
            (sync("nope"), NOT_FOUND),
            (truncate("nope", 0), NOT_FOUND),
            (rename("nope", "other"), NOT_FOUND),
        ],
    );
    assert_eq!(disk.list(), Ok(Vec::new()));
}

/// `Sync` and `SyncDir` of what exists succeed; `SyncDir` of the data
/// directory ("") and of a directory that does not exist succeed too.
pub fn syncs_succeed<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    h.expect(
        &mut disk,
        vec![
            (sync_dir(""), DONE),
            (sync_dir("no/such/dir"), DONE),
            (write("groups/1/log/1.seg", 0, b"frame"), DONE),
            (sync("groups/1/log/1.seg"), DONE),
            (sync_dir("groups/1/log"), DONE),
            (sync_dir("groups/1"), DONE),
            (sync_dir("groups"), DONE),
            (sync_dir(""), DONE),
            (sync("groups/1/log/1.seg"), DONE),
        ],
    );
    assert_eq!(disk.list(), Ok(names(&["groups/1/log/1.seg"])));
}

/// `list` returns every file, in nested directories too, as full relative
/// paths sorted as strings (so "a-b" < "a/y" < "a.b"), without directories.
pub fn list_is_sorted<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    let created = [
        "c/d/e", "b", "a/z", "a.b", "a/y", "a-b", "c/d/a", "zz", "gone/x",
    ];
    let mut ops: Vec<_> = created
        .iter()
        .map(|file| (write(file, 0, file.as_bytes()), DONE))
        .collect();
    ops.push((delete("gone/x"), DONE));
    h.expect(&mut disk, ops);
    let listed = disk.list().expect("list");
    assert_eq!(
        listed,
        names(&["a-b", "a.b", "a/y", "a/z", "b", "c/d/a", "c/d/e", "zz"])
    );
    for file in &listed {
        assert_eq!(disk.read_file(file), Ok(file.as_bytes().to_vec()));
    }
}

/// Every operation sees the effect of every one submitted before it, even
/// though none had completed when it was submitted.
pub fn reads_see_earlier_writes<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    h.expect(
        &mut disk,
        vec![
            (write("f", 0, b"abcdef"), DONE),
            (read("f", 2, 10), data(b"cdef")),
            (write("f", 2, b"XY"), DONE),
            (read("f", 0, 6), data(b"abXYef")),
            (truncate("f", 3), DONE),
            (read("f", 0, 10), data(b"abX")),
            (sync("f"), DONE),
            (write("f", 3, b"123"), DONE),
            (read("f", 0, 10), data(b"abX123")),
            (delete("f"), DONE),
            (read("f", 0, 10), NOT_FOUND),
            (write("f", 1, b"z"), DONE),
            (read("f", 0, 10), data(b"\0z")),
            (rename("f", "g"), DONE),
            (read("g", 0, 10), data(b"\0z")),
        ],
    );
}

/// The shape group commit coalesces: many appends to one file, each followed
/// by a sync, submitted at once. Each completes in order, and the file holds
/// every append.
pub fn appends_with_a_sync_after_each<D: Disk>(h: &mut Harness<'_, D>) {
    let mut disk = h.fresh();
    let mut ops = Vec::new();
    let mut expected = Vec::new();
    for i in 0u32..300 {
        let record = i.to_le_bytes().repeat(1 + (i % 7) as usize);
        ops.push((write("log", expected.len() as u64, &record), DONE));
        expected.extend_from_slice(&record);
        ops.push((sync("log"), DONE));
        if i % 50 == 49 {
            ops.push((read("log", 0, u64::MAX), data(&expected)));
        }
    }
    h.expect(&mut disk, ops);
    assert_eq!(disk.read_file("log"), Ok(expected));
}

/// A seeded random mix of every operation on a few files, submitted at once
/// and checked against a model of the contract: completions arrive in order
/// and each has the result the model predicts; afterwards `list` and
/// `read_file` agree with the model.
pub fn fifo_order_and_model<D: Disk>(h: &mut Harness<'_, D>) {
    const FILES: [&str; 4] = ["a", "b", "d/c", "d/e"];
    for seed in 0..4 {
        let mut disk = h.fresh();
        let mut rng = Rng::new(0xD15C + seed);
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut ops = Vec::new();
        for _ in 0..400 {
            let file = *rng.pick(&FILES).expect("files");
            let len = model.get(file).map_or(0, |content| content.len() as u64);
            let exists = model.contains_key(file);
            let roll = rng.range(0, 100);
            let step = if roll < 35 {
                let offset = if rng.chance(0.5) {
                    len
                } else {
                    rng.range(0, len + 9)
                };
                let bytes: Vec<u8> = (0..rng.range(0, 40))
                    .map(|_| rng.range(0, 256) as u8)
                    .collect();
                let content = model.entry(file.to_string()).or_default();
                let end = offset as usize + bytes.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[offset as usize..end].copy_from_slice(&bytes);
                (write(file, offset, &bytes), DONE)
            } else if roll < 55 {
                (sync(file), if exists { DONE } else { NOT_FOUND })
            } else if roll < 70 {
                let offset = rng.range(0, len + 5);
                let want = rng.range(0, 50);
                let result = match model.get(file) {
                    Some(content) => {
                        let start = (offset as usize).min(content.len());
                        let end = ((offset + want) as usize).min(content.len());
                        data(&content[start..end])
                    }
                    None => NOT_FOUND,
                };
                (read(file, offset, want), result)
            } else if roll < 78 {
                let new_len = rng.range(0, len + 9);
                let result = match model.get_mut(file) {
                    Some(content) => {
                        content.resize(new_len as usize, 0);
                        DONE
                    }
                    None => NOT_FOUND,
                };
                (truncate(file, new_len), result)
            } else if roll < 85 {
                model.remove(file);
                (delete(file), DONE)
            } else if roll < 92 {
                let to = loop {
                    let to = *rng.pick(&FILES).expect("files");
                    if to != file {
                        break to;
                    }
                };
                let result = match model.remove(file) {
                    Some(content) => {
                        model.insert(to.to_string(), content);
                        DONE
                    }
                    None => NOT_FOUND,
                };
                (rename(file, to), result)
            } else {
                let dir = if rng.chance(0.5) { "" } else { "d" };
                (sync_dir(dir), DONE)
            };
            ops.push(step);
        }
        h.expect(&mut disk, ops);
        let expected: Vec<String> = model.keys().cloned().collect();
        assert_eq!(disk.list(), Ok(expected), "seed {seed}");
        for (file, content) in &model {
            assert_eq!(
                disk.read_file(file).as_ref(),
                Ok(content),
                "seed {seed}: {file}"
            );
        }
    }
}
