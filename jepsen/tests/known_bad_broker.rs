//! The harness catches a known-bad broker (issue 8).
//!
//! `runnel-broker`'s cargo feature `ack-before-commit` (off in every default
//! build) acknowledges `acks=all` produces as soon as the leader proposes
//! them, before a majority has them. Under kill and partition faults a
//! leader loses acknowledged writes; the harness must say `lost-write`
//! against that build and pass against the default one, with the same seed.
//!
//! Ignored by default: it needs root (network namespaces), builds the broken
//! binary, and runs two 40-second clusters. Run it with
//!
//! ```sh
//! cargo build --release --bin runnel
//! cargo test --release -p runnel-jepsen --test known_bad_broker -- --ignored --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

const SEED: &str = "8";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("jepsen/ is inside the workspace")
        .to_path_buf()
}

fn cargo_build(features: &[&str]) {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args([
            "build",
            "--release",
            "-p",
            "runnel-server",
            "--bin",
            "runnel",
        ])
        .args(features)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build {features:?}");
}

/// Builds the failpoint binary and puts it beside the default one, then
/// rebuilds the default one (cargo keeps both builds of the changed crates,
/// so switching back only relinks).
fn failpoint_binary() -> PathBuf {
    let release = workspace().join("target/release");
    let broken = release.join("runnel-ack-before-commit");
    cargo_build(&["--features", "runnel-broker/ack-before-commit"]);
    std::fs::copy(release.join("runnel"), &broken).expect("copy the failpoint binary");
    cargo_build(&[]);
    broken
}

/// Runs the harness against `binary`; returns its exit code and verdict.
fn run_harness(binary: &Path, store: &Path) -> (i32, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel-jepsen"))
        .args([
            "--nodes",
            "5",
            "--time-limit",
            "40",
            "--nemesis",
            "kill,partition",
        ])
        .args(["--seed", SEED, "--store"])
        .arg(store)
        .arg("--runnel-bin")
        .arg(binary)
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let run_dir = stdout
        .lines()
        .find_map(|line| line.strip_prefix("runnel-jepsen: results in "))
        .unwrap_or_else(|| panic!("no run folder in the output:\n{stdout}"));
    let verdict =
        std::fs::read_to_string(Path::new(run_dir).join("verdict.json")).expect("verdict.json");
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&verdict).expect("the verdict is JSON"),
    )
}

#[test]
#[ignore = "needs root, builds a broken broker and runs two 40 s clusters"]
fn the_harness_reports_lost_writes_against_ack_before_commit_and_passes_the_default_build() {
    let broken = failpoint_binary();
    let store = workspace().join("target/jepsen-known-bad");
    let (code, verdict) = run_harness(&broken, &store);
    let lost = verdict["queue"]["anomalies"]["lost-write"]["count"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(code, 1, "the broken build must fail: {verdict:#}");
    assert!(lost > 0, "the broken build must lose writes: {verdict:#}");

    let (code, verdict) = run_harness(&workspace().join("target/release/runnel"), &store);
    assert_eq!(code, 0, "the default build must pass: {verdict:#}");
}
