//! The process around the broker: the data directory lock, and a clean
//! exit on SIGTERM. (Clients against the broker are the end-to-end tests'
//! business, in `tests/` at the repository root.)

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to start listening or to stop.
const WAIT_MS_MAX: u64 = 20_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// `stderr` is piped only for a process expected to stop at once: nobody
/// reads a long-running one's, whose log could fill the pipe and stall it.
/// A long-running one logs to a file instead, shown when it ends badly.
fn serve(data_dir: &std::path::Path, kafka_port: u16, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--kafka-addr", &format!("127.0.0.1:{kafka_port}")])
        .args(["--rpc-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start runnel serve")
}

/// A connection that reached a listener. A connection to itself is not
/// one: a loopback connect to a free port in the ephemeral range can be
/// given that same port as its source and open to itself (TCP's
/// simultaneous open), which once let this test signal a node that was
/// not listening yet.
fn listening(port: u16) -> bool {
    match TcpStream::connect(("127.0.0.1", port)) {
        Ok(stream) => stream.local_addr().ok() != stream.peer_addr().ok(),
        Err(_) => false,
    }
}

fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while !listening(port) {
        assert!(Instant::now() < deadline, "runnel serve never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file for a long-running node's log, kept apart from its data
/// directory so that serving the directory again starts a new log.
fn log_file(dir: &tempfile::TempDir, name: &str) -> (std::path::PathBuf, Stdio) {
    let path = dir.path().join(name);
    let file = std::fs::File::create(&path).expect("create the node's log file");
    (path, Stdio::from(file))
}

/// The exit code, or a description of how the process ended otherwise
/// (a signal), with its log, so that a failure says why.
fn wait_for_exit(child: &mut Child, log: &std::path::Path) -> Result<i32, String> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return match status.code() {
                Some(0) => Ok(0),
                Some(code) => Err(format!("exit code {code}; its log:\n{log}")),
                None => Err(format!(
                    "ended by signal {:?} (core dumped: {}); its log:\n{log}",
                    status.signal(),
                    status.core_dumped()
                )),
            };
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("runnel serve did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_data_dir_one_process_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = tempfile::tempdir().expect("temp dir for logs");
    let port = free_port();
    let (first_log, stderr) = log_file(&logs, "first.log");
    let mut first = serve(dir.path(), port, stderr);
    wait_until_listening(port);

    let second = serve(dir.path(), free_port(), Stdio::piped())
        .wait_with_output()
        .expect("second runnel serve finishes");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");

    // SAFETY: a signal to a child process this test started and still owns.
    let sent = unsafe { libc::kill(first.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    assert_eq!(wait_for_exit(&mut first, &first_log), Ok(0));

    // The lock went with the process: the directory can be served again.
    let port = free_port();
    let (again_log, stderr) = log_file(&logs, "again.log");
    let mut again = serve(dir.path(), port, stderr);
    wait_until_listening(port);
    // SAFETY: as above.
    let sent = unsafe { libc::kill(again.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    assert_eq!(wait_for_exit(&mut again, &again_log), Ok(0));
}

/// One HTTP request to the metrics port; the whole answer.
fn http(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_millis(WAIT_MS_MAX)))
        .expect("timeout");
    // A peer that closes while we write (the oversized head) is an answer.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn metrics_are_served_in_the_prometheus_text_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = tempfile::tempdir().expect("temp dir for logs");
    let (node_log, stderr) = log_file(&logs, "node.log");
    let kafka_port = free_port();
    let metrics_port = free_port();
    let mut node = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--kafka-addr", &format!("127.0.0.1:{kafka_port}")])
        .args(["--rpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start runnel serve");
    wait_until_listening(kafka_port);
    // The text is rendered every second: wait for one that knows the
    // metadata leader.
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    let answer = loop {
        let answer = http(metrics_port, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
        if answer.contains("\nrunnel_metadata_leader 1\n") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no metadata leader in:\n{answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Content-Type: text/plain; version=0.0.4"),
        "{answer}"
    );
    for series in [
        "# TYPE runnel_partitions_led gauge",
        "\nrunnel_node_failed 0\n",
        "\nrunnel_client_connections_open ",
        "\nrunnel_request_bytes_queued ",
    ] {
        assert!(answer.contains(series), "{series} missing in:\n{answer}");
    }
    assert!(http(metrics_port, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(metrics_port, b"DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    let oversized = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 20_000]].concat();
    assert!(http(metrics_port, &oversized).starts_with("HTTP/1.1 431"));
    // The node goes on serving after bad requests, and stops cleanly.
    assert!(http(metrics_port, b"GET /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
    // SAFETY: a signal to a child process this test started and still owns.
    let sent = unsafe { libc::kill(node.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    assert_eq!(wait_for_exit(&mut node, &node_log), Ok(0));
}
