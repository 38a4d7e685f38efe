//! The production shell: tokio sockets for clients, one core thread that
//! owns the broker and the disk, the OS clock.
//!
//! The broker is single-threaded and deterministic, so it runs on its own
//! thread and everything reaches it as an [`Input`] on one channel: request
//! frames from connection tasks, disk completions from the disk thread, and
//! ticks. Responses go back to each connection's writer task in order.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_broker::{Broker, BrokerEnv, BrokerEvent, ConnectionId, Responses, TICK_INTERVAL_MS};
use runnel_core::Envelope;
use runnel_disk::FileDisk;
use runnel_io::{Clock, DiskCompletion, Network, NodeId};
use runnel_kafka::frame::frame_length;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc as tokio_mpsc, watch, Notify, Semaphore};

use crate::config::ServeConfig;

/// Most requests one connection may have unanswered; its reader waits for
/// answers beyond that, so one client cannot fill the broker's memory.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;
/// Most client connections at once; more are accepted and closed at once.
pub const CONNECTIONS_MAX: usize = 10_000;
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

/// What the core thread receives.
enum Input {
    Register {
        connection: ConnectionId,
        outputs: tokio_mpsc::UnboundedSender<Output>,
    },
    Request {
        connection: ConnectionId,
        frame: Bytes,
    },
    Closed {
        connection: ConnectionId,
    },
    Disk(DiskCompletion),
    Peer {
        envelope: Envelope,
        /// Its encoded size, given back to `peer_bytes` once handled.
        bytes: usize,
    },
    Shutdown,
}

/// What a connection's writer receives.
enum Output {
    /// A response (or `None` for a request without one).
    Frame(Option<Bytes>),
    Close,
}

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
/// Inbound peer connections open at once. Each peer keeps one (a few more
/// while one reconnects); the bound keeps a stray or hostile client of the
/// peer port from holding unbounded tasks and sockets.
pub const PEER_CONNECTIONS_INBOUND_MAX: usize = 256;
const _: () = assert!(PEER_CONNECTIONS_INBOUND_MAX >= 4 * runnel_core::metadata::CLUSTER_NODES_MAX);

/// The queue to one peer's connection task.
struct PeerQueue {
    frames: tokio_mpsc::Sender<Bytes>,
    /// Bytes in `frames`, raised here and lowered by the connection task.
    bytes: Arc<AtomicUsize>,
}

/// Envelopes to peers: encoded with `runnel_core::wire`, framed with their
/// length (u32, little-endian), and queued for each peer's connection task.
struct PeerNetwork {
    queues: BTreeMap<NodeId, PeerQueue>,
}

impl Network<Envelope> for PeerNetwork {
    fn send(&mut self, to: NodeId, envelope: Envelope) {
        let Some(queue) = self.queues.get(&to) else {
            tracing::debug!(to, "no such peer; envelope dropped");
            return;
        };
        let encoded = runnel_core::wire::encode_envelope(&envelope);
        let length = 4 + encoded.len();
        let queued = queue.bytes.load(Ordering::SeqCst);
        if queued > 0 && queued + length > PEER_QUEUE_BYTES_MAX {
            tracing::debug!(
                to,
                queued,
                "peer queue over its byte bound; envelope dropped"
            );
            return;
        }
        let mut frame = Vec::with_capacity(length);
        frame.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        frame.extend_from_slice(&encoded);
        // Counted before the send, so that the connection task never
        // subtracts bytes that were not added yet.
        queue.bytes.fetch_add(length, Ordering::SeqCst);
        if queue.frames.try_send(Bytes::from(frame)).is_err() {
            queue.bytes.fetch_sub(length, Ordering::SeqCst);
            tracing::debug!(to, "peer queue full or closed; envelope dropped");
        }
    }
}

/// Keeps a connection to one peer and writes its envelopes in order. While
/// the peer cannot be reached, what was queued is dropped: consensus resends
/// what matters, and stale messages would only be discarded there.
async fn peer_sender(
    node_id: NodeId,
    address: String,
    mut queue: tokio_mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut backoff_ms = 50;
    let connect_timeout = Duration::from_millis(PEER_CONNECT_TIMEOUT_MS);
    let write_timeout = Duration::from_millis(PEER_WRITE_TIMEOUT_MS);
    loop {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(&address)).await {
            Ok(Ok(mut stream)) => {
                let _ = stream.set_nodelay(true);
                tracing::info!(peer = node_id, %address, "connected to peer");
                backoff_ms = 50;
                loop {
                    let Some(frame) = queue.recv().await else {
                        return;
                    };
                    queued_bytes.fetch_sub(frame.len(), Ordering::SeqCst);
                    match tokio::time::timeout(write_timeout, stream.write_all(&frame)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::info!(peer = node_id, %error, "lost the connection to a peer");
                            break;
                        }
                        Err(_) => {
                            tracing::info!(
                                peer = node_id,
                                PEER_WRITE_TIMEOUT_MS,
                                "a write to a peer stalled; reconnecting"
                            );
                            break;
                        }
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = node_id, %address, %error, "cannot reach peer");
            }
            Err(_) => {
                tracing::debug!(peer = node_id, %address, "connecting to peer timed out");
            }
        }
        while let Ok(frame) = queue.try_recv() {
            queued_bytes.fetch_sub(frame.len(), Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(PEER_RECONNECT_BACKOFF_MS_MAX);
    }
}

/// Accepts peers' connections and hands their envelopes to the core. A
/// frame that is too large or does not decode closes that connection.
async fn peer_listener(
    listener: TcpListener,
    inputs: mpsc::Sender<Input>,
    peer_bytes: Arc<Semaphore>,
) {
    let open = Arc::new(Semaphore::new(PEER_CONNECTIONS_INBOUND_MAX));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a peer failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&open).try_acquire_owned() else {
            tracing::warn!(
                %peer,
                PEER_CONNECTIONS_INBOUND_MAX,
                "too many inbound peer connections; closing this one"
            );
            continue;
        };
        let inputs = inputs.clone();
        let peer_bytes = Arc::clone(&peer_bytes);
        tokio::spawn(async move {
            // Held for as long as the connection is served.
            let _slot = slot;
            loop {
                let mut prefix = [0u8; 4];
                if stream.read_exact(&mut prefix).await.is_err() {
                    return;
                }
                let length = u32::from_le_bytes(prefix) as usize;
                if length > runnel_core::wire::ENVELOPE_BYTES_MAX {
                    tracing::warn!(%peer, length, "peer frame over the limit; closing");
                    return;
                }
                // As for client frames (see `run_connection`).
                let Ok(permit) = Arc::clone(&peer_bytes)
                    .acquire_many_owned(length as u32)
                    .await
                else {
                    return;
                };
                let mut frame = vec![0u8; length];
                if stream.read_exact(&mut frame).await.is_err() {
                    return;
                }
                match runnel_core::wire::decode_envelope(&frame) {
                    Ok(envelope) => {
                        permit.forget();
                        let input = Input::Peer {
                            envelope,
                            bytes: length,
                        };
                        if inputs.send(input).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%peer, %error, "bad envelope from a peer; closing");
                        return;
                    }
                }
            }
        });
    }
}

struct ConnectionOutputs<'a> {
    outputs: &'a mut BTreeMap<ConnectionId, tokio_mpsc::UnboundedSender<Output>>,
}

impl Responses for ConnectionOutputs<'_> {
    fn respond(&mut self, connection: ConnectionId, frame: Option<Bytes>) {
        if let Some(outputs) = self.outputs.get(&connection) {
            let _ = outputs.send(Output::Frame(frame));
        }
    }

    fn close(&mut self, connection: ConnectionId, reason: &str) {
        tracing::info!(connection, reason, "closing client connection");
        if let Some(outputs) = self.outputs.remove(&connection) {
            let _ = outputs.send(Output::Close);
        }
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
    // Bound before the core starts, so that a port in use is reported at
    // once; connections wait in the backlog until clients are let in.
    let listener = match runtime.block_on(TcpListener::bind(config.kafka_addr)) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("runnel: cannot listen on {}: {error}", config.kafka_addr);
            return 2;
        }
    };
    let (inputs, input_receiver) = mpsc::channel::<Input>();
    // Peers: a listener for their envelopes, a connection task for each.
    let mut peer_queues = BTreeMap::new();
    let peer_bytes = Arc::new(Semaphore::new(PEER_INBOUND_BYTES_MAX));
    let request_bytes = Arc::new(Semaphore::new(REQUEST_QUEUE_BYTES_MAX));
    let core_request_bytes = Arc::clone(&request_bytes);
    if !config.peers.is_empty() {
        let rpc_listener = match runtime.block_on(TcpListener::bind(config.rpc_addr)) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!(
                    "runnel: cannot listen for peers on {}: {error}",
                    config.rpc_addr
                );
                return 2;
            }
        };
        runtime.spawn(peer_listener(
            rpc_listener,
            inputs.clone(),
            Arc::clone(&peer_bytes),
        ));
        for peer in &config.peers {
            let (frames, receiver) = tokio_mpsc::channel(PEER_QUEUE_ENVELOPES_MAX);
            let bytes = Arc::new(AtomicUsize::new(0));
            peer_queues.insert(
                peer.node_id,
                PeerQueue {
                    frames,
                    bytes: Arc::clone(&bytes),
                },
            );
            runtime.spawn(peer_sender(
                peer.node_id,
                peer.rpc_addr.clone(),
                receiver,
                bytes,
            ));
        }
    }
    let disk_inputs = inputs.clone();
    std::thread::Builder::new()
        .name("runnel-disk-events".into())
        .spawn(move || {
            while let Ok(completion) = completions.recv() {
                if disk_inputs.send(Input::Disk(completion)).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the disk event thread");
    let (ready_sender, ready) = mpsc::channel::<()>();
    let core_runtime = runtime.handle().clone();
    let core = std::thread::Builder::new()
        .name("runnel-core".into())
        .spawn(move || {
            // A panic in the core is a bug; the node must not linger with
            // its listener open and nobody answering, so the process ends.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_core(
                    broker,
                    disk,
                    input_receiver,
                    ready_sender,
                    peer_queues,
                    QueuedBytes {
                        requests: core_request_bytes,
                        peers: peer_bytes,
                    },
                    core_runtime,
                )
            }));
            match outcome {
                // The disk failed: the main thread is waiting for a signal,
                // and nothing may go on after a failed write or fsync, not
                // even the writing of responses already given to tasks.
                Ok(EXIT_DISK_FAILED) => std::process::exit(EXIT_DISK_FAILED),
                Ok(code) => code,
                Err(_) => {
                    tracing::error!("the core panicked; stopping");
                    std::process::exit(101);
                }
            }
        })
        .expect("spawn the core thread");
    let writers = Arc::new(WriterCount::default());
    let accept_inputs = inputs.clone();
    let accept_writers = Arc::clone(&writers);
    let code = runtime.block_on(async move {
        let (stop_reading, reading_stopped) = watch::channel(false);
        // Clients are let in once the metadata group has a leader (and the
        // offsets partitions this node hosts), so that their first requests
        // are answered rather than refused. A signal
        // during that wait stops the node without letting them in.
        let ready_wait = tokio::task::spawn_blocking(move || {
            ready.recv_timeout(Duration::from_millis(STARTUP_LEADER_WAIT_MS))
        });
        let started = tokio::select! {
            signal = signals.recv() => Err(signal),
            waited = ready_wait => Ok(waited),
        };
        let mut accept = None;
        let signal = match started {
            Err(signal) => signal,
            Ok(waited) => {
                if !matches!(waited, Ok(Ok(()))) {
                    tracing::warn!(
                        STARTUP_LEADER_WAIT_MS,
                        "no metadata leader or offsets partition leaders yet; accepting clients anyway"
                    );
                }
                tracing::info!(
                    node_id = config.broker.node_id,
                    kafka_addr = %config.kafka_addr,
                    rpc_addr = %config.rpc_addr,
                    data_dir = %config.data_dir.display(),
                    "runnel is serving"
                );
                accept = Some(tokio::spawn(accept_loop(
                    listener,
                    accept_inputs,
                    accept_writers,
                    reading_stopped,
                    request_bytes,
                )));
                signals.recv().await
            }
        };
        tracing::info!(
            signal,
            "shutting down: no new connections; answering requests in flight"
        );
        if let Some(accept) = accept {
            accept.abort();
        }
        // Connections stay open so that what is in flight is answered, but
        // no new request is read from them.
        let _ = stop_reading.send(true);
        let _ = inputs.send(Input::Shutdown);
        let code = tokio::task::spawn_blocking(move || core.join().unwrap_or(1))
            .await
            .unwrap_or(1);
        // The core dropped every writer's channel: each writes what it was
        // given and ends.
        let _ = tokio::time::timeout(Duration::from_secs(2), writers.idle()).await;
        code
    });
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
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

/// The core loop: one event at a time, a tick at least every
/// `TICK_INTERVAL_MS`. Returns the exit code.
/// Budgets of bytes read from sockets and not yet handled; the core gives
/// back what it handled.
struct QueuedBytes {
    requests: Arc<Semaphore>,
    peers: Arc<Semaphore>,
}

fn run_core(
    mut broker: Broker,
    mut disk: FileDisk,
    inputs: mpsc::Receiver<Input>,
    ready: mpsc::Sender<()>,
    peer_queues: BTreeMap<NodeId, PeerQueue>,
    queued: QueuedBytes,
    runtime: tokio::runtime::Handle,
) -> i32 {
    let mut ready = Some(ready);
    let clock = OsClock {
        start: Instant::now(),
    };
    let mut network = PeerNetwork {
        queues: peer_queues,
    };
    let mut outputs: BTreeMap<ConnectionId, tokio_mpsc::UnboundedSender<Output>> = BTreeMap::new();
    let tick = Duration::from_millis(TICK_INTERVAL_MS);
    let mut last_tick = Instant::now();
    let mut shutdown_deadline: Option<Instant> = None;
    loop {
        let mut handled_request_bytes = 0;
        let mut handled_peer_bytes = 0;
        let event = match inputs.recv_timeout(tick) {
            Ok(Input::Register {
                connection,
                outputs: sender,
            }) => {
                if shutdown_deadline.is_some() {
                    let _ = sender.send(Output::Close);
                } else {
                    outputs.insert(connection, sender);
                }
                None
            }
            // Requests still arrive while shutting down: readers stop
            // reading at the signal, but a frame read just before it is
            // handled like any other.
            Ok(Input::Request { connection, frame }) => {
                handled_request_bytes = frame.len();
                Some(BrokerEvent::Request { connection, frame })
            }
            Ok(Input::Closed { connection }) => {
                outputs.remove(&connection);
                Some(BrokerEvent::Closed { connection })
            }
            Ok(Input::Disk(completion)) => Some(BrokerEvent::Disk(completion)),
            Ok(Input::Peer { envelope, bytes }) => {
                handled_peer_bytes = bytes;
                Some(BrokerEvent::Peer(envelope))
            }
            Ok(Input::Shutdown) => {
                shutdown_deadline = Some(Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS));
                // Long polls are answered at once with what they have.
                Some(BrokerEvent::Drain)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut responses = ConnectionOutputs {
            outputs: &mut outputs,
        };
        let mut env = BrokerEnv {
            disk: &mut disk,
            network: &mut network,
            clock: &clock,
            responses: &mut responses,
        };
        if let Some(event) = event {
            broker.handle(event, &mut env);
        }
        if handled_request_bytes > 0 {
            queued.requests.add_permits(handled_request_bytes);
        }
        if handled_peer_bytes > 0 {
            queued.peers.add_permits(handled_peer_bytes);
        }
        if last_tick.elapsed() >= tick {
            last_tick = Instant::now();
            broker.handle(BrokerEvent::Tick, &mut env);
            // Nodes added to the cluster at run time: the metadata group
            // says where they listen (docs/protocol.md §12.5).
            for (node, address) in broker.added_peer_addresses() {
                if network.queues.contains_key(&node) {
                    continue;
                }
                let (frames, receiver) = tokio_mpsc::channel(PEER_QUEUE_ENVELOPES_MAX);
                let bytes = Arc::new(AtomicUsize::new(0));
                network.queues.insert(
                    node,
                    PeerQueue {
                        frames,
                        bytes: Arc::clone(&bytes),
                    },
                );
                tracing::info!(peer = node, %address, "a node joined the cluster; connecting");
                runtime.spawn(peer_sender(node, address, receiver, bytes));
            }
        }
        if ready.is_some() && broker.metadata_leader_known() && broker.offsets_ready() {
            let _ = ready.take().expect("checked").send(());
        }
        if let Some(reason) = broker.failed() {
            // DESIGN.md "Storage": never go on after a failed write or
            // fsync; a restart recovers from what is durable.
            tracing::error!(reason, "stopping: the disk failed");
            return EXIT_DISK_FAILED;
        }
        if let Some(deadline) = shutdown_deadline {
            let in_flight = broker.requests_in_flight();
            if in_flight == 0 || Instant::now() >= deadline {
                if in_flight > 0 {
                    tracing::warn!(
                        in_flight,
                        "shutdown deadline passed with requests unanswered"
                    );
                }
                break;
            }
        }
    }
    // Dropping the disk performs every operation already submitted.
    drop(disk);
    0
}

#[derive(Default)]
struct WriterCount {
    active: AtomicUsize,
    changed: Notify,
}

impl WriterCount {
    async fn idle(&self) {
        loop {
            let notified = self.changed.notified();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    inputs: mpsc::Sender<Input>,
    writers: Arc<WriterCount>,
    reading_stopped: watch::Receiver<bool>,
    request_bytes: Arc<Semaphore>,
) {
    let mut next_connection: ConnectionId = 1;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= CONNECTIONS_MAX {
            tracing::warn!(%peer, CONNECTIONS_MAX, "too many connections; closing a new one");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let connection = next_connection;
        next_connection += 1;
        open.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(connection, %peer, "client connected");
        let (sender, receiver) = tokio_mpsc::unbounded_channel();
        if inputs
            .send(Input::Register {
                connection,
                outputs: sender,
            })
            .is_err()
        {
            return;
        }
        let inputs = inputs.clone();
        let open = Arc::clone(&open);
        let writers = Arc::clone(&writers);
        let reading_stopped = reading_stopped.clone();
        let request_bytes = Arc::clone(&request_bytes);
        tokio::spawn(async move {
            run_connection(
                connection,
                stream,
                inputs,
                receiver,
                writers,
                reading_stopped,
                request_bytes,
            )
            .await;
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Why a connection's reader stopped.
enum ReadEnd {
    /// The client went away, broke the protocol, or the core is gone.
    Gone,
    /// The node is shutting down; the client's requests in flight are
    /// still answered.
    Stopped,
}

async fn run_connection(
    connection: ConnectionId,
    stream: TcpStream,
    inputs: mpsc::Sender<Input>,
    mut outputs: tokio_mpsc::UnboundedReceiver<Output>,
    writers: Arc<WriterCount>,
    mut reading_stopped: watch::Receiver<bool>,
    request_bytes: Arc<Semaphore>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let permits = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX));
    let reader_permits = Arc::clone(&permits);
    let reader_inputs = inputs.clone();
    // The reader ends with `Stopped` when the node shuts down: then the
    // connection stays open until what it asked is answered.
    let read_task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = reader_permits.acquire() => permit,
                _ = reading_stopped.wait_for(|stopped| *stopped) => return ReadEnd::Stopped,
            };
            let Ok(permit) = permit else {
                return ReadEnd::Gone;
            };
            permit.forget();
            let mut prefix = [0u8; 4];
            // Cancelling a partial read loses bytes, which is harmless
            // here: nothing is read from this connection afterwards.
            tokio::select! {
                read = reader.read_exact(&mut prefix) => {
                    if read.is_err() {
                        return ReadEnd::Gone;
                    }
                }
                _ = reading_stopped.wait_for(|stopped| *stopped) => return ReadEnd::Stopped,
            }
            let length = match frame_length(prefix) {
                Ok(length) => length,
                Err(error) => {
                    // Kafka closes a connection whose frame is over its
                    // limit; nothing of the frame is read or allocated.
                    tracing::warn!(connection, %error, "closing connection");
                    return ReadEnd::Gone;
                }
            };
            // Waits while the core is behind, before the frame's memory is
            // taken. The permit returns by itself if this task ends (or is
            // aborted) before the frame reaches the core; after that the
            // core gives the bytes back once it handled the frame.
            let Ok(bytes) = Arc::clone(&request_bytes)
                .acquire_many_owned(length as u32)
                .await
            else {
                return ReadEnd::Gone;
            };
            let mut frame = vec![0u8; length];
            if reader.read_exact(&mut frame).await.is_err() {
                return ReadEnd::Gone;
            }
            bytes.forget();
            if reader_inputs
                .send(Input::Request {
                    connection,
                    frame: Bytes::from(frame),
                })
                .is_err()
            {
                return ReadEnd::Gone;
            }
        }
    });
    let abort = read_task.abort_handle();
    let closed_inputs = inputs.clone();
    let watcher = tokio::spawn(async move {
        if !matches!(read_task.await, Ok(ReadEnd::Stopped)) {
            let _ = closed_inputs.send(Input::Closed { connection });
        }
    });
    writers.active.fetch_add(1, Ordering::SeqCst);
    while let Some(output) = outputs.recv().await {
        match output {
            Output::Frame(Some(frame)) => {
                permits.add_permits(1);
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
            Output::Frame(None) => permits.add_permits(1),
            Output::Close => break,
        }
    }
    let _ = writer.shutdown().await;
    abort.abort();
    let _ = watcher.await;
    writers.active.fetch_sub(1, Ordering::SeqCst);
    writers.changed.notify_waiters();
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
