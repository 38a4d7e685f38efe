//! The shell around the broker core: sockets for clients and peers, the
//! disk, the clock, shutdown.
//!
//! The broker is single-threaded and deterministic; everything reaches it
//! as an input on one channel: request frames from connection tasks, peer
//! envelopes, disk completions, and ticks. Responses go back to each
//! connection's writer task in order. `node` holds what every wiring runs
//! (connections, peers, the core's step, the drain), over the sockets of a
//! [`transport::Transport`]. Production ([`serve`]) wires it to tokio's TCP,
//! the FileDisk and the OS clock, with the core on a thread of its own; the
//! turmoil tier (`sim/turmoil`) runs the same code over a simulated network
//! and disk with the core as a task ([`node::run_in_task`]).

pub mod metrics;
pub mod node;
pub mod transport;

use std::io::Write as _;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use runnel_broker::Broker;
use runnel_disk::FileDisk;
use runnel_io::Clock;
use tokio::sync::{oneshot, Semaphore};

use crate::config::ServeConfig;
use node::{Core, InputSender, NodeAddresses, QueuedBytes, CORE_WAIT};
use transport::TokioTransport;

/// Most requests one connection may have unanswered; its reader waits for
/// answers beyond that, so one client cannot fill the broker's memory.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;
/// Most client connections at once; more are accepted and closed at once.
pub const CONNECTIONS_MAX: usize = 10_000;
/// A client connection with nothing read from it for this long and no
/// request unanswered is closed, as Kafka's `connections.max.idle.ms` (10
/// minutes): a client that vanished without its close reaching the node
/// (a partition, a host that lost power) would otherwise hold its slot of
/// `CONNECTIONS_MAX` until the process ends. Kafka clients close their own
/// idle connections sooner (9 minutes) and reconnect when they need to.
pub const CONNECTION_IDLE_MS_MAX: u64 = 600_000;
/// Most bytes of request frames read from clients and not yet handled by
/// the core, over all connections (Kafka's `queued.max.request.bytes`):
/// readers wait beyond it, so many clients cannot fill memory between the
/// sockets and the core. At least two frames of the largest size fit.
pub const REQUEST_QUEUE_BYTES_MAX: usize = 256 << 20;
/// Most bytes of peer envelopes received and not yet handled by the core;
/// peer readers wait beyond it (their senders then drop, which consensus
/// tolerates).
pub const PEER_INBOUND_BYTES_MAX: usize = 256 << 20;
// A single frame must always fit in its budget, or its reader would wait
// forever.
const _: () = assert!(runnel_kafka::frame::FRAME_BYTES_MAX <= REQUEST_QUEUE_BYTES_MAX);
const _: () = assert!(runnel_core::wire::ENVELOPE_BYTES_MAX <= PEER_INBOUND_BYTES_MAX);
/// How long a shutdown waits for requests in flight to be answered.
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;
/// How long a starting node waits for its metadata group to have a leader
/// before it accepts clients anyway (they then see retriable errors).
pub const STARTUP_LEADER_WAIT_MS: u64 = 10_000;

/// The exit code of a node stopped by a failed disk operation.
pub const EXIT_DISK_FAILED: i32 = 3;

/// Most encoded envelopes waiting for one peer's connection; beyond it new
/// ones are dropped, which the protocol tolerates as loss.
pub const PEER_QUEUE_ENVELOPES_MAX: usize = 1_024;
/// Most bytes waiting for one peer's connection, so that a slow or absent
/// peer holds a bounded amount of memory even when envelopes are large
/// (snapshots). One envelope is always let into an empty queue.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 << 20;
/// The longest wait between attempts to reach a peer.
pub const PEER_RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;
/// How long connecting to a peer may take; an address that drops packets
/// would otherwise hold the connection task for minutes.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long one envelope may take to write before the connection is given
/// up as stalled (a peer behind a partition that does not reset it).
pub const PEER_WRITE_TIMEOUT_MS: u64 = 5_000;
/// How often the receiving end of a peer connection acknowledges the
/// bytes it read from it (a running count, u64 little-endian, written back
/// on the same connection), when it read any.
pub const PEER_ACK_INTERVAL_MS: u64 = 200;
/// A peer frame is read, and its progress acknowledged, in chunks of this
/// many bytes, so that a large envelope shows progress while it arrives.
pub const PEER_ACK_CHUNK_BYTES: usize = 64 << 10;
/// How long a peer sender waits for its oldest unacknowledged bytes to be
/// acknowledged before it gives the connection up and reconnects. A
/// connection whose segments vanish (a partition that outlived the
/// sender's socket, a middlebox that lost its state) is otherwise written
/// into for as long as the socket buffer takes envelopes, with nothing
/// arriving and no error, long after the network healed.
pub const PEER_ACK_TIMEOUT_MS: u64 = 3_000;
const _: () = assert!(5 * PEER_ACK_INTERVAL_MS <= PEER_ACK_TIMEOUT_MS);
/// Inbound peer connections open at once. Each peer keeps one (a few more
/// while one reconnects); the bound keeps a stray or hostile client of the
/// peer port from holding unbounded tasks and sockets.
pub const PEER_CONNECTIONS_INBOUND_MAX: usize = 256;
const _: () = assert!(PEER_CONNECTIONS_INBOUND_MAX >= 4 * runnel_core::metadata::CLUSTER_NODES_MAX);

struct OsClock {
    start: Instant,
}

impl Clock for OsClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn wall_clock_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// An exclusive lock on the data directory, held while the process runs.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, String> {
    std::fs::create_dir_all(data_dir).map_err(|error| {
        format!(
            "cannot create data directory {}: {error}",
            data_dir.display()
        )
    })?;
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        return Err(format!(
            "data directory {} is in use by another runnel process",
            data_dir.display()
        ));
    }
    Ok(DataDirLock { _file: file })
}

/// Raises the node's incarnation, kept in `data_dir/INCARNATION`, and makes
/// the new value durable (written to a temporary file, synced, renamed over
/// the old one, directory synced) before the node hands out anything that
/// depends on it (producer ids).
pub fn raise_incarnation(data_dir: &Path) -> Result<u64, String> {
    let path = data_dir.join("INCARNATION");
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{} does not hold a number; it was damaged", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let next = previous + 1;
    if next > runnel_broker::INCARNATION_MAX {
        return Err(format!(
            "this node has started {previous} times, the most its producer ids allow"
        ));
    }
    let temporary = data_dir.join("INCARNATION.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(format!("{next}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    Ok(next)
}

/// Runs `runnel serve` until SIGTERM or SIGINT; returns the exit code.
pub fn serve(mut config: ServeConfig) -> i32 {
    // The signals are caught before anything else, so that a SIGTERM while
    // the node recovers is not the default action (an unclean kill) but a
    // stop once recovery is over: the drain then finds it pending.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("runnel: cannot start the async runtime: {error}");
            return 1;
        }
    };
    let mut signals = match runtime.block_on(async { Signals::new() }) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("runnel: cannot catch SIGTERM and SIGINT: {error}");
            return 1;
        }
    };
    let _lock = match lock_data_dir(&config.data_dir) {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("runnel: {message}");
            return 2;
        }
    };
    config.broker.incarnation = match raise_incarnation(&config.data_dir) {
        Ok(incarnation) => incarnation,
        Err(message) => {
            eprintln!("runnel: {message}");
            return 2;
        }
    };
    let (mut disk, completions) = match FileDisk::new(&config.data_dir) {
        Ok(opened) => opened,
        Err(error) => {
            eprintln!(
                "runnel: cannot open data directory {}: {error}",
                config.data_dir.display()
            );
            return 2;
        }
    };
    let broker = match Broker::start(config.broker.clone(), &mut disk) {
        Ok(broker) => broker,
        Err(error) => {
            eprintln!(
                "runnel: cannot recover {}: {error}",
                config.data_dir.display()
            );
            return 1;
        }
    };
    // Said before the wait for a metadata leader, which may be long when
    // peers are down, so that the operator sees the node came up.
    tracing::info!(
        node_id = config.broker.node_id,
        incarnation = config.broker.incarnation,
        data_dir = %config.data_dir.display(),
        peers = config.peers.len(),
        "recovered; waiting for a metadata leader"
    );
    for note in broker.recovery_notes() {
        tracing::warn!(note, "recovery");
    }
    let addresses = NodeAddresses {
        node_id: config.broker.node_id,
        kafka_addr: config.kafka_addr,
        rpc_addr: config.rpc_addr,
        peers: config
            .peers
            .iter()
            .map(|peer| (peer.node_id, peer.rpc_addr.clone()))
            .collect(),
    };
    // Bound before the core starts, so that a port in use is reported at
    // once; connections wait in the backlog until clients are let in.
    let bound = match runtime.block_on(node::bind::<TokioTransport>(&addresses)) {
        Ok(bound) => bound,
        Err(message) => {
            eprintln!("runnel: {message}");
            return 2;
        }
    };
    let metrics_listener = match config.metrics_addr {
        Some(address) => match runtime.block_on(tokio::net::TcpListener::bind(address)) {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("runnel: cannot serve metrics on {address}: {error}");
                return 2;
            }
        },
        None => None,
    };
    let (input_sender, input_receiver) = mpsc::channel();
    let inputs = InputSender::Thread(input_sender.clone());
    // Peers: a listener for their envelopes, a connection task for each.
    let peer_bytes = Arc::new(Semaphore::new(PEER_INBOUND_BYTES_MAX));
    let request_bytes = Arc::new(Semaphore::new(REQUEST_QUEUE_BYTES_MAX));
    let peer_queues = node::start_peers::<TokioTransport>(
        runtime.handle(),
        bound.rpc,
        &addresses,
        &inputs,
        &peer_bytes,
    );
    let disk_inputs = inputs.clone();
    std::thread::Builder::new()
        .name("runnel-disk-events".into())
        .spawn(move || {
            while let Ok(completion) = completions.recv() {
                if disk_inputs.send(node::Input::Disk(completion)).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the disk event thread");
    let (ready_sender, ready) = oneshot::channel();
    let core = Core::<TokioTransport>::new(
        broker,
        Box::new(disk),
        Box::new(OsClock {
            start: Instant::now(),
        }),
        peer_queues,
        QueuedBytes {
            requests: Arc::clone(&request_bytes),
            peers: peer_bytes,
        },
        ready_sender,
        runtime.handle().clone(),
    );
    let mut core = core;
    if let Some(listener) = metrics_listener {
        let text = metrics::MetricsText::default();
        core.publish_metrics(std::sync::Arc::clone(&text));
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "serving metrics at /metrics");
        }
        runtime.spawn(metrics::serve_metrics(listener, text));
    }
    let core = std::thread::Builder::new()
        .name("runnel-core".into())
        .spawn(move || {
            // A panic in the core is a bug; the node must not linger with
            // its listener open and nobody answering, so the process ends.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_core_thread(core, input_receiver)
            }));
            match outcome {
                // The disk failed: nothing may go on after a failed write
                // or fsync, not even the writing of responses already
                // given to tasks.
                Ok(EXIT_DISK_FAILED) => std::process::exit(EXIT_DISK_FAILED),
                Ok(code) => code,
                Err(_) => {
                    tracing::error!("the core panicked; stopping");
                    std::process::exit(101);
                }
            }
        })
        .expect("spawn the core thread");
    let code = runtime.block_on(async move {
        let core_done = async move {
            tokio::task::spawn_blocking(move || core.join().unwrap_or(1))
                .await
                .unwrap_or(1)
        };
        node::serve_clients::<TokioTransport>(
            bound.kafka,
            &addresses,
            inputs,
            request_bytes,
            ready,
            core_done,
            signals.recv(),
        )
        .await
    });
    drop(input_sender);
    runtime.shutdown_timeout(Duration::from_millis(100));
    if code == 0 {
        tracing::info!("stopped cleanly");
    }
    code
}

/// SIGTERM and SIGINT, caught from the moment the node starts so that no
/// signal kills it uncleanly.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must run inside the runtime.
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            biased;
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// The production core loop: one input at a time from the channel, a tick
/// at least every `TICK_INTERVAL_MS`. Returns the exit code.
fn run_core_thread(mut core: Core<TokioTransport>, inputs: mpsc::Receiver<node::Input>) -> i32 {
    loop {
        let input = match inputs.recv_timeout(CORE_WAIT) {
            Ok(input) => Some(input),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(code) = core.step(input) {
            // Dropping the core (and its disk) performs every operation
            // already submitted.
            return code;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_raises_the_incarnation_durably() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(raise_incarnation(dir.path()), Ok(1));
        assert_eq!(raise_incarnation(dir.path()), Ok(2));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("INCARNATION")).unwrap(),
            "2\n"
        );
        std::fs::write(dir.path().join("INCARNATION"), "garbage").unwrap();
        assert!(raise_incarnation(dir.path())
            .unwrap_err()
            .contains("damaged"));
    }

    #[test]
    fn a_second_process_cannot_take_the_data_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _held = lock_data_dir(dir.path()).expect("first lock");
        // flock locks belong to the open file description: a second open
        // in this process conflicts just as another process would.
        assert!(lock_data_dir(dir.path()).unwrap_err().contains("in use"));
    }
}
