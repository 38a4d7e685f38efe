//! The nodes: real `runnel serve` processes, one per namespace, each with its
//! own data directory and log, started under libfaketime so that the clock
//! nemesis can move each node's wall clock.
//!
//! libfaketime is preloaded with `FAKETIME_TIMESTAMP_FILE` pointing at a file
//! per node that the nemesis rewrites (an offset such as `+0`, `-37s`), re-read
//! at most once a second. Only the wall clock (`CLOCK_REALTIME`) moves:
//! `DONT_FAKE_MONOTONIC=1`, because a real clock step (NTP, a VM resumed) moves
//! the wall clock while the monotonic clock the broker times its elections
//! with never goes back.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net;

/// The Kafka port every node listens on, inside its namespace.
pub const KAFKA_PORT: u16 = 9092;
/// The peer port every node listens on, inside its namespace.
pub const RPC_PORT: u16 = 19092;
/// How long a node may take to listen after it starts.
pub const START_TIMEOUT_MS: u64 = 30_000;
/// How long a node may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT_MS: u64 = 10_000;
/// Where Debian's libfaketime lives.
pub const FAKETIME_LIBRARIES: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];

/// Finds libfaketime, if installed.
pub fn faketime_library() -> Option<PathBuf> {
    FAKETIME_LIBRARIES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// One node of the cluster.
pub struct Node {
    pub id: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    clock_file: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The whole cluster.
pub struct Cluster {
    pub nodes: Vec<Node>,
    binary: PathBuf,
    faketime: Option<PathBuf>,
    peers_of: Vec<String>,
}

/// The Kafka address of node `id`.
pub fn kafka_addr(id: u16) -> SocketAddr {
    SocketAddr::from((net::node_addr(id), KAFKA_PORT))
}

/// Every node's Kafka address, comma separated (a bootstrap list).
pub fn bootstrap(nodes: u16) -> String {
    (1..=nodes)
        .map(|id| kafka_addr(id).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    /// A cluster of `nodes` nodes running `binary`, keeping data and logs
    /// under `run_dir`. Nothing starts yet.
    pub fn new(binary: &Path, run_dir: &Path, nodes: u16, faketime: Option<PathBuf>) -> Self {
        let peer = |id: u16| format!("{id}@{}:{RPC_PORT}={}", net::node_addr(id), kafka_addr(id));
        let peers_of = (1..=nodes)
            .map(|id| {
                (1..=nodes)
                    .filter(|&other| other != id)
                    .map(peer)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let nodes = (1..=nodes)
            .map(|id| Node {
                id,
                data_dir: run_dir.join(format!("n{id}")),
                log_path: run_dir.join(format!("n{id}.log")),
                clock_file: run_dir.join(format!("n{id}.faketime")),
                child: None,
                paused: false,
            })
            .collect();
        Cluster {
            nodes,
            binary: binary.to_path_buf(),
            faketime,
            peers_of,
        }
    }

    fn node_mut(&mut self, id: u16) -> &mut Node {
        &mut self.nodes[usize::from(id - 1)]
    }

    /// Starts node `id` (again, after a kill: same data directory, the log
    /// appended to).
    pub fn start(&mut self, id: u16) -> Result<(), String> {
        let binary = self.binary.clone();
        let faketime = self.faketime.clone();
        let peers = self.peers_of[usize::from(id - 1)].clone();
        let node = self.node_mut(id);
        if node.child.is_some() {
            return Ok(());
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|error| format!("{}: {error}", node.log_path.display()))?;
        let _ = writeln!(log, "=== jepsen: starting node {id}");
        let log_err = log
            .try_clone()
            .map_err(|error| format!("{}: {error}", node.log_path.display()))?;
        let ns = net::namespace(id);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &ns])
            .arg(&binary)
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--kafka-addr", &kafka_addr(id).to_string()])
            .args(["--rpc-addr", &format!("{}:{RPC_PORT}", net::node_addr(id))])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if !peers.is_empty() {
            command.args(["--peers", &peers]);
        }
        if let Some(library) = faketime {
            if !node.clock_file.exists() {
                write_clock_file(&node.clock_file, 0)?;
            }
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME_TIMESTAMP_FILE", &node.clock_file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot start node {id}: {error}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Starts every node and waits until each listens for Kafka clients.
    pub fn start_all(&mut self) -> Result<(), String> {
        let ids: Vec<u16> = self.nodes.iter().map(|node| node.id).collect();
        for &id in &ids {
            self.start(id)?;
        }
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        for &id in &ids {
            loop {
                if TcpStream::connect_timeout(&kafka_addr(id), Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Some(status) = self
                    .node_mut(id)
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten())
                {
                    return Err(format!(
                        "node {id} exited at start ({status}); see n{id}.log"
                    ));
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "node {id} did not listen within {START_TIMEOUT_MS} ms"
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill(&mut self, id: u16) {
        let node = self.node_mut(id);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// Whether node `id` has a running (or paused) process.
    pub fn is_running(&self, id: u16) -> bool {
        self.nodes[usize::from(id - 1)].child.is_some()
    }

    /// Sends SIGSTOP (`pause`) or SIGCONT to node `id`.
    pub fn pause(&mut self, id: u16, pause: bool) {
        let node = self.node_mut(id);
        if let Some(child) = node.child.as_ref() {
            let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
            node.paused = pause;
        }
    }

    /// Whether the nodes run under libfaketime (the clock nemesis works).
    pub fn has_clock(&self) -> bool {
        self.faketime.is_some()
    }

    /// Sets node `id`'s wall clock offset (libfaketime), in seconds.
    pub fn set_clock_offset(&mut self, id: u16, offset_s: i64) -> Result<(), String> {
        if self.faketime.is_none() {
            return Err("libfaketime is not installed".into());
        }
        write_clock_file(&self.node_mut(id).clock_file, offset_s)
    }

    /// Node ids whose process exited on its own (not killed by the nemesis).
    pub fn crashed(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|node| {
                let child = node.child.as_mut()?;
                match child.try_wait() {
                    Ok(Some(_)) => {
                        node.child = None;
                        Some(node.id)
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Stops every node: resumes the paused, SIGTERM, then SIGKILL whatever
    /// has not exited in time.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_ref() {
                // SAFETY: kill(2) on our own children's pids.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGCONT);
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn write_clock_file(path: &Path, offset_s: i64) -> Result<(), String> {
    // Written to a temporary file and renamed, so that libfaketime never
    // reads half a line.
    let temporary = path.with_extension("tmp");
    let mut file =
        File::create(&temporary).map_err(|error| format!("{}: {error}", temporary.display()))?;
    writeln!(file, "{offset_s:+}").map_err(|error| format!("{}: {error}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|error| format!("{}: {error}", path.display()))
}
