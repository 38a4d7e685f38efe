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

fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "runnel serve never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status.code();
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
    let port = free_port();
    let mut first = serve(dir.path(), port, Stdio::null());
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
    assert_eq!(wait_for_exit(&mut first), Some(0));

    // The lock went with the process: the directory can be served again.
    let port = free_port();
    let mut again = serve(dir.path(), port, Stdio::null());
    wait_until_listening(port);
    // SAFETY: as above.
    let sent = unsafe { libc::kill(again.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    assert_eq!(wait_for_exit(&mut again), Some(0));
}
