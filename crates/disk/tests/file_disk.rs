//! Behaviour of `FileDisk` beyond the conformance suite: group commit, the
//! handle cache, path checks, error mapping, the notifier and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use runnel_disk::{FileDisk, FileDiskOptions, OPEN_FILES_MAX};
use runnel_io::{Disk, DiskCompletion, DiskError, DiskOp, DiskOutput};

fn recv(receiver: &Receiver<DiskCompletion>, count: usize) -> Vec<DiskCompletion> {
    (0..count)
        .map(|_| {
            receiver
                .recv_timeout(Duration::from_secs(60))
                .expect("a completion for every operation")
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
fn group_commit_coalesces_back_to_back_syncs_and_keeps_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
    // Submitting takes microseconds and an fdatasync at least tens of them,
    // so the syncs queue up behind the first one and get grouped.
    let mut expected = Vec::new();
    for i in 0u64..500 {
        let record = i.to_le_bytes();
        disk.submit(2 * i, write("log", expected.len() as u64, &record));
        disk.submit(2 * i + 1, sync("log"));
        expected.extend_from_slice(&record);
    }
    let done = recv(&completions, 1000);
    let tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
    assert_eq!(tokens, (0..1000).collect::<Vec<_>>());
    assert!(done.iter().all(|c| c.result == Ok(DiskOutput::Done)));
    let stats = disk.stats();
    assert_eq!(stats.file_syncs, 500);
    assert!(
        stats.coalesced_syncs > 0 && stats.fdatasyncs < 500,
        "no sync was coalesced: {stats:?}"
    );
    assert_eq!(stats.fdatasyncs + stats.coalesced_syncs, 500, "{stats:?}");
    assert_eq!(disk.read_file("log"), Ok(expected));
}

#[test]
fn without_group_commit_every_sync_is_an_fdatasync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileDiskOptions {
        group_commit: false,
        ..FileDiskOptions::default()
    };
    let (mut disk, completions) = FileDisk::with_options(dir.path(), options).expect("open");
    for i in 0u64..50 {
        disk.submit(2 * i, write("log", 8 * i, &i.to_le_bytes()));
        disk.submit(2 * i + 1, sync("log"));
    }
    recv(&completions, 100);
    let stats = disk.stats();
    assert_eq!(
        (stats.file_syncs, stats.fdatasyncs, stats.coalesced_syncs),
        (50, 50, 0)
    );
}

#[test]
fn a_sync_after_a_truncate_is_never_grouped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
    let mut token = 0;
    let mut submit = |disk: &mut FileDisk, op| {
        disk.submit(token, op);
        token += 1;
    };
    for round in 0u64..50 {
        submit(&mut disk, write("seg", 0, &[round as u8; 64]));
        submit(
            &mut disk,
            DiskOp::Truncate {
                file: "seg".into(),
                len: 32,
            },
        );
        submit(&mut disk, sync("seg"));
        submit(&mut disk, write("seg", 32, &[0xAA; 8]));
        submit(&mut disk, sync("seg"));
    }
    recv(&completions, 250);
    // Each truncating sync ran alone; so did each following sync, because
    // the write it covers was performed before it became the head.
    assert_eq!(disk.stats().coalesced_syncs, 0);
    let mut want = vec![49u8; 32];
    want.extend_from_slice(&[0xAA; 8]);
    assert_eq!(disk.read_file("seg"), Ok(want));
}

#[test]
fn more_files_than_open_handles_keep_their_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
    let files = 2 * OPEN_FILES_MAX as u64 + 10;
    let name = |i: u64| format!("d{}/f{i:04}", i % 3);
    // Two passes over every file, so that each handle is evicted (dirty:
    // synced first) and reopened between its writes.
    let mut token = 0;
    for pass in 0..2u64 {
        for i in 0..files {
            disk.submit(
                token,
                write(&name(i), pass * 8, &(i * 10 + pass).to_le_bytes()),
            );
            token += 1;
        }
    }
    for i in (0..files).step_by(7) {
        disk.submit(token, sync(&name(i)));
        token += 1;
    }
    assert!(recv(&completions, token as usize)
        .iter()
        .all(|c| c.result.is_ok()));
    let stats = disk.stats();
    assert!(
        stats.fdatasyncs > files / 2,
        "dirty handles are synced before eviction: {stats:?}"
    );
    let listed = disk.list().expect("list");
    assert_eq!(listed.len() as u64, files);
    for i in 0..files {
        let mut want = (i * 10).to_le_bytes().to_vec();
        want.extend_from_slice(&(i * 10 + 1).to_le_bytes());
        assert_eq!(disk.read_file(&name(i)), Ok(want), "{}", name(i));
    }
}

#[test]
fn paths_outside_the_data_directory_are_refused_in_order() {
    let outer = tempfile::tempdir().expect("temp dir");
    let (mut disk, completions) = FileDisk::new(outer.path().join("data")).expect("open");
    let bad = [
        write("../escaped", 0, b"x"),
        write("/tmp/absolute", 0, b"x"),
        sync("a/../../escaped"),
        DiskOp::SyncDir { dir: "..".into() },
        DiskOp::Rename {
            from: "ok".into(),
            to: "../escaped".into(),
        },
        DiskOp::Delete {
            file: "./ok".into(),
        },
        write("a//b", 0, b"x"),
    ];
    disk.submit(0, write("ok", 0, b"fine"));
    let count = bad.len() as u64;
    for (i, op) in bad.into_iter().enumerate() {
        disk.submit(1 + i as u64, op);
    }
    disk.submit(
        1 + count,
        DiskOp::Read {
            file: "ok".into(),
            offset: 0,
            len: 10,
        },
    );
    let done = recv(&completions, count as usize + 2);
    assert_eq!(
        done.iter().map(|c| c.token).collect::<Vec<_>>(),
        (0..count + 2).collect::<Vec<_>>()
    );
    assert_eq!(done[0].result, Ok(DiskOutput::Done));
    for completion in &done[1..=count as usize] {
        assert!(
            matches!(&completion.result, Err(DiskError::Other(message)) if message.contains("invalid path")),
            "{completion:?}"
        );
    }
    assert_eq!(
        done[count as usize + 1].result,
        Ok(DiskOutput::Data(b"fine".to_vec()))
    );
    assert!(matches!(
        disk.read_file("../escaped"),
        Err(DiskError::Other(_))
    ));
    assert!(!outer.path().join("escaped").exists());
    assert_eq!(disk.list(), Ok(vec!["ok".to_string()]));
}

#[test]
fn no_space_is_reported_as_no_space() {
    // Writes to /dev/full fail with ENOSPC: reach it through a symbolic link
    // in the data directory (FileDisk follows links when it opens a file).
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink("/dev/full", dir.path().join("full")).expect("symlink");
    let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
    disk.submit(1, write("full", 0, b"does not fit"));
    disk.submit(2, write("other", 0, b"still works"));
    let done = recv(&completions, 2);
    assert_eq!(done[0].result, Err(DiskError::NoSpace));
    assert_eq!(done[1].result, Ok(DiskOutput::Done));
    assert!(
        !disk.has_failed(),
        "no space is an operating error, not fatal"
    );
    // `list` reports regular files only, not the link.
    assert_eq!(disk.list(), Ok(vec!["other".to_string()]));
}

#[test]
fn a_path_that_is_a_directory_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
    disk.submit(1, write("d/f", 0, b"x"));
    disk.submit(2, write("d", 0, b"x"));
    disk.submit(3, DiskOp::SyncDir { dir: "d/f".into() });
    let done = recv(&completions, 3);
    assert_eq!(done[0].result, Ok(DiskOutput::Done));
    assert!(
        matches!(done[1].result, Err(DiskError::Other(_))),
        "{:?}",
        done[1]
    );
    assert!(
        matches!(done[2].result, Err(DiskError::Other(_))),
        "{:?}",
        done[2]
    );
    assert!(!disk.has_failed());
}

#[test]
fn the_notifier_runs_after_completions_are_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let options = FileDiskOptions {
        notify: Some(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })),
        ..FileDiskOptions::default()
    };
    let (mut disk, completions) = FileDisk::with_options(dir.path(), options).expect("open");
    for i in 0..20 {
        disk.submit(i, write("f", i, b"x"));
    }
    recv(&completions, 20);
    // The completions were sent before the notifier ran, so once all 20
    // arrived the notifier ran at least once; and at most once per batch.
    drop(disk);
    let calls = calls.load(Ordering::SeqCst);
    assert!((1..=20).contains(&calls), "{calls}");
}

#[test]
fn drop_performs_every_queued_operation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, completions) = FileDisk::new(dir.path()).expect("open");
    for i in 0u64..200 {
        disk.submit(i, write("f", 8 * i, &i.to_le_bytes()));
    }
    disk.submit(200, sync("f"));
    drop(disk);
    // Every completion was sent before drop returned.
    let done: Vec<DiskCompletion> = completions.try_iter().collect();
    assert_eq!(done.len(), 201);
    assert!(done.iter().all(|c| c.result.is_ok()));
    let (mut reopened, _completions) = FileDisk::new(dir.path()).expect("reopen");
    let want: Vec<u8> = (0u64..200).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(reopened.read_file("f"), Ok(want));
}

#[test]
fn list_and_read_file_wait_for_earlier_operations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut disk, _completions) = FileDisk::new(dir.path()).expect("open");
    for i in 0..100u64 {
        disk.submit(i, write(&format!("f{i:03}"), 0, &i.to_le_bytes()));
    }
    // No completion was awaited: list and read_file still see every write.
    assert_eq!(disk.list().expect("list").len(), 100);
    assert_eq!(disk.read_file("f099"), Ok(99u64.to_le_bytes().to_vec()));
}

#[test]
fn opening_creates_the_data_directory() {
    let outer = tempfile::tempdir().expect("temp dir");
    let root = outer.path().join("a/b/data");
    let (mut disk, _completions) = FileDisk::new(&root).expect("open");
    assert!(root.is_dir());
    assert_eq!(disk.data_dir(), root.as_path());
    assert_eq!(disk.list(), Ok(Vec::new()));
    // A data directory path that is a file is refused.
    std::fs::write(outer.path().join("file"), b"x").expect("write");
    assert!(FileDisk::new(outer.path().join("file")).is_err());
}
