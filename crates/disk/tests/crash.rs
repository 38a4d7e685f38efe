//! Crash test of `FileDisk` on real files: a writer process (crash_writer)
//! appends checksummed records with group commit and reports each synced
//! seq; this test kills it with SIGKILL at seeded random moments, checks
//! what the file holds, tears its tail on purpose now and then, and starts
//! the writer again from what it recovers.
//!
//! What this proves, and what it does not: SIGKILL ends the process but not
//! the kernel, so the page cache survives and nothing the writer wrote is
//! lost. The test therefore checks the ordering and recovery logic (every
//! reported sync covers records that read back intact and in order; a torn
//! tail is detected by the checksum and cut off, never misread; a restarted
//! writer continues exactly where the intact records end), not durability
//! across power loss, which only a machine crash (or a fault-injecting
//! device) could show.
//!
//! The seed comes from RUNNEL_CRASH_SEED if set, and is printed, so that a
//! failure replays with the same kill times and tears.

#[path = "../src/bin/crash_writer/record.rs"]
mod record;

use std::fs::OpenOptions;
use std::io::{Read as _, Write as _};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runnel_io::Rng;

const ITERATIONS: usize = 30;
/// How long the writer runs before it is killed, in ms: [low, high).
const RUN_MS: (u64, u64) = (3, 200);

#[test]
fn killed_writer_recovers_every_synced_record_and_detects_torn_tails() {
    let seed = std::env::var("RUNNEL_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5EED_C4A5);
    eprintln!("crash test seed {seed} (replay with RUNNEL_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("log/records");
    let started = Instant::now();

    // What must survive: every record the writer ever reported synced.
    let mut synced_floor: Option<u64> = None;
    let mut records_before = 0;
    let mut reports = 0;
    let mut tears = 0;
    let mut natural_tails = 0;
    for iteration in 0..ITERATIONS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
            .arg(dir.path())
            .arg(rng.next_u64().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash_writer");
        std::thread::sleep(Duration::from_millis(rng.range(RUN_MS.0, RUN_MS.1)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        let mut output = String::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut output)
            .expect("read the writer's output");
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.success(),
            "iteration {iteration}: the writer failed on its own ({status}); output:\n{output}"
        );

        // Only whole lines count: the kill may cut the last one.
        let lines: Vec<&str> = output
            .split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .map(str::trim_end)
            .collect();
        if let Some(first) = lines.first() {
            // The writer recovered exactly what this test found last time
            // (after the tear, if one was made): it parsed the same file
            // the same way, through the disk.
            let expected = format!("recovered {records_before} ");
            assert!(
                first.starts_with(&expected),
                "iteration {iteration}: writer said {first:?}, expected {expected}..."
            );
        }
        let mut last_report = None;
        for line in lines.iter().skip(1) {
            let seq: u64 = line.parse().expect("a synced seq per line");
            assert!(
                last_report.is_none_or(|last| seq > last),
                "iteration {iteration}: synced seqs must increase ({line})"
            );
            assert!(seq >= records_before, "a sync covers the new records");
            last_report = Some(seq);
            reports += 1;
        }
        if let Some(seq) = last_report {
            synced_floor = Some(seq);
        }

        let bytes = std::fs::read(&file).unwrap_or_default();
        let recovered = record::scan(&bytes)
            .unwrap_or_else(|error| panic!("iteration {iteration}: misread: {error}"));
        if let Some(floor) = synced_floor {
            assert!(
                recovered.records > floor,
                "iteration {iteration}: seq {floor} was reported synced, but only {} records \
                 read back intact",
                recovered.records
            );
        }
        if recovered.tail > 0 && !lines.is_empty() {
            // The writer had cut any earlier tear, so the kill tore this one.
            natural_tails += 1;
        }
        assert!(
            recovered.records >= records_before,
            "iteration {iteration}: records recovered before were lost"
        );

        // Now and then, tear the tail on purpose the ways a crash can: a
        // prefix of the next record, or the whole record with one bit
        // flipped. The scan must stop at the same place; the writer must cut
        // it off when it restarts.
        if rng.chance(0.4) {
            let mut torn = record::encode(recovered.records);
            if rng.chance(0.5) {
                let cut = rng.range(1, torn.len() as u64) as usize;
                torn.truncate(cut);
            } else {
                let bit = rng.range(0, 8 * torn.len() as u64);
                torn[(bit / 8) as usize] ^= 1 << (bit % 8);
            }
            let mut handle = OpenOptions::new()
                .write(true)
                .open(&file)
                .expect("open the record file");
            handle.set_len(recovered.end).expect("cut");
            use std::os::unix::fs::FileExt as _;
            handle
                .write_all_at(&torn, recovered.end)
                .expect("write the torn record");
            handle.flush().expect("flush");
            let bytes = std::fs::read(&file).expect("read");
            let after = record::scan(&bytes).unwrap_or_else(|error| {
                panic!("iteration {iteration}: torn tail misread: {error}")
            });
            assert_eq!(
                (after.records, after.end, after.tail),
                (recovered.records, recovered.end, torn.len() as u64),
                "iteration {iteration}: the torn record must be detected"
            );
            tears += 1;
        }
        records_before = recovered.records;
    }
    eprintln!(
        "crash test: {ITERATIONS} kills, {records_before} records, {reports} synced-seq reports, \
         {natural_tails} tails torn by a kill, {tears} deliberate tears, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        reports > 0,
        "the writer never reported a sync: the test proved nothing"
    );
    assert!(records_before > 0);
}
