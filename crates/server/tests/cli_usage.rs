//! The binary's command line: usage mistakes exit 2 with one line on stderr
//! and never need a broker; an unreachable broker exits 3.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// A port where nothing listens: the tools must fail to connect, not hang.
const CLOSED_BOOTSTRAP: &str = "127.0.0.1:1";

fn runnel(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run runnel");
    child.stdin.take().expect("stdin").write_all(b"one\n").ok();
    child.wait_with_output().expect("runnel finishes")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit 2 and a message on stderr that mentions `needle`.
fn assert_usage_error(args: &[&str], needle: &str) {
    let output = runnel(args);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

#[test]
fn help_and_version_succeed() {
    for args in [&["--help"][..], &["--version"], &["serve", "--help"]] {
        let output = runnel(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(!output.stdout.is_empty());
    }
}

#[test]
fn clap_usage_errors_exit_2() {
    assert_usage_error(&["frobnicate"], "frobnicate");
    assert_usage_error(&["produce"], "<TOPIC>");
    assert_usage_error(&["topic", "create"], "<NAME>");
    assert_usage_error(&["produce", "t", "--acks", "2"], "--acks");
    assert_usage_error(&["produce", "t", "--compression", "brotli"], "brotli");
    assert_usage_error(&["consume", "t", "--partition", "x"], "--partition");
    assert_usage_error(&["serve", "--node-id", "one"], "--node-id");
    assert_usage_error(&["serve", "--kafka-addr", "nowhere"], "--kafka-addr");
}

#[test]
fn tool_usage_errors_exit_2_before_connecting() {
    // The bootstrap cannot be reached, so exit 2 (rather than 3) shows the
    // arguments were checked first.
    let b = ["--bootstrap", CLOSED_BOOTSTRAP];
    let with = |args: &[&'static str]| [args, &b[..]].concat();
    assert_usage_error(&with(&["consume", "t", "--offset", "soon"]), "soon");
    assert_usage_error(&with(&["consume", "t", "--offset", "-5"]), "-5");
    assert_usage_error(&with(&["produce", "t", "--header", "novalue"]), "novalue");
    assert_usage_error(
        &with(&["topic", "create", "t", "--config", "retention.ms"]),
        "retention.ms",
    );
}

#[test]
fn serve_config_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "kafka_adr = \"127.0.0.1:9092\"\n").expect("write config");
    let output = runnel(&["serve", "--config", config.to_str().unwrap()]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("kafka_adr"), "{stderr}");

    let output = runnel(&["serve", "--config", "/nonexistent/runnel.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr_of(&output).lines().count(), 1);

    let output = runnel(&["serve", "--node-id", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr_of(&output).lines().count(), 1);
}

#[test]
fn a_data_dir_that_cannot_be_opened_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write");
    let output = runnel(&[
        "serve",
        "--data-dir",
        file.to_str().unwrap(),
        "--kafka-addr",
        "127.0.0.1:0",
    ]);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("runnel: "), "{stderr}");
}

#[test]
fn an_unreachable_broker_exits_3() {
    for args in [
        &["topic", "list"][..],
        &["topic", "create", "t"],
        &["consume", "t", "--count", "1"],
        &["produce", "t"],
    ] {
        let output = runnel(&[args, &["--bootstrap", CLOSED_BOOTSTRAP][..]].concat());
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("cannot connect"), "{stderr}");
    }
}
