//! What every wiring of the shell runs: client connections (framing,
//! in-flight bounds, ordered responses), peer connections (senders with
//! reconnects, the listener), the core's handling of one input, and the
//! drain on shutdown. Production (`super::serve`) drives the core on its own
//! thread; [`run_in_task`] drives it as a task of the current runtime, as
//! the turmoil tier does inside each simulated host. The two differ only in
//! how the core waits for its next input.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_broker::{Broker, BrokerEnv, BrokerEvent, ConnectionId, Responses, TICK_INTERVAL_MS};
use runnel_core::Envelope;
use runnel_io::{Clock, Disk, DiskCompletion, Network, NodeId};
use runnel_kafka::frame::frame_length;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc as tokio_mpsc, oneshot, watch, Notify, Semaphore};

use super::transport::Transport;
use super::*;

/// What the core receives.
pub(crate) enum Input {
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
pub(crate) enum Output {
    /// A response (or `None` for a request without one).
    Frame(Option<Bytes>),
    Close,
}

/// The core's input channel, as the tasks that feed it hold it: a channel
/// to a thread in production, to a task under simulation.
#[derive(Clone)]
pub(crate) enum InputSender {
    Thread(mpsc::Sender<Input>),
    Task(tokio_mpsc::UnboundedSender<Input>),
}

impl InputSender {
    /// Fails once the core is gone.
    pub(crate) fn send(&self, input: Input) -> Result<(), ()> {
        match self {
            InputSender::Thread(sender) => sender.send(input).map_err(|_| ()),
            InputSender::Task(sender) => sender.send(input).map_err(|_| ()),
        }
    }
}

/// Where a disk delivers its completions: the core, as its next inputs.
#[derive(Clone)]
pub struct DiskEvents {
    inputs: InputSender,
}

impl DiskEvents {
    /// Hands a completion to the core; false once the core is gone.
    pub fn completed(&self, completion: DiskCompletion) -> bool {
        self.inputs.send(Input::Disk(completion)).is_ok()
    }
}

/// The queue to one peer's connection task.
pub(crate) struct PeerQueue {
    frames: tokio_mpsc::Sender<Bytes>,
    /// Bytes in `frames`, raised here and lowered by the connection task.
    bytes: Arc<AtomicUsize>,
}

/// Envelopes to peers: encoded with `runnel_core::wire`, framed with their
/// length (u32, little-endian), and queued for each peer's connection task.
pub(crate) struct PeerNetwork {
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

/// Starts the connection task to one peer on `runtime`; returns its queue.
pub(crate) fn start_peer_sender<T: Transport>(
    runtime: &tokio::runtime::Handle,
    node_id: NodeId,
    address: String,
) -> PeerQueue {
    let (frames, receiver) = tokio_mpsc::channel(PEER_QUEUE_ENVELOPES_MAX);
    let bytes = Arc::new(AtomicUsize::new(0));
    let _entered = runtime.enter();
    T::spawn(peer_sender::<T>(
        node_id,
        address,
        receiver,
        Arc::clone(&bytes),
    ));
    PeerQueue { frames, bytes }
}

/// Keeps a connection to one peer and writes its envelopes in order. While
/// the peer cannot be reached, what was queued is dropped: consensus resends
/// what matters, and stale messages would only be discarded there. The
/// peer acknowledges the bytes it read (see `peer_listener`); a connection
/// whose bytes go unacknowledged for `PEER_ACK_TIMEOUT_MS` is given up, as is
/// one whose write stalls for `PEER_WRITE_TIMEOUT_MS`.
async fn peer_sender<T: Transport>(
    node_id: NodeId,
    address: String,
    mut queue: tokio_mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut backoff_ms = 50;
    let connect_timeout = Duration::from_millis(PEER_CONNECT_TIMEOUT_MS);
    let write_timeout = Duration::from_millis(PEER_WRITE_TIMEOUT_MS);
    let ack_timeout = Duration::from_millis(PEER_ACK_TIMEOUT_MS);
    loop {
        match tokio::time::timeout(connect_timeout, T::connect(&address)).await {
            Ok(Ok(stream)) => {
                T::set_nodelay(&stream);
                tracing::info!(peer = node_id, %address, "connected to peer");
                backoff_ms = 50;
                let (mut reader, mut writer) = T::split(stream);
                // The peer's acknowledgements, read by a task of their own
                // so that no partial read is ever cancelled; it ends when
                // the connection does.
                let (acked_sender, mut acked) = watch::channel(0u64);
                let ack_reader = T::spawn(async move {
                    let mut count = [0u8; 8];
                    while reader.read_exact(&mut count).await.is_ok() {
                        if acked_sender.send(u64::from_le_bytes(count)).is_err() {
                            return;
                        }
                    }
                });
                let mut sent = 0u64;
                // Bytes written, and since when the oldest unacknowledged
                // of them has waited (reset by every acknowledgement that
                // makes progress, so that a large envelope crossing a slow
                // link is not given up while it moves).
                let mut waiting_since: Option<tokio::time::Instant> = None;
                loop {
                    let ack_deadline = waiting_since.map(|since| since + ack_timeout);
                    let far = tokio::time::Instant::now() + ack_timeout;
                    tokio::select! {
                        biased;
                        changed = acked.changed() => {
                            if changed.is_err() {
                                tracing::info!(peer = node_id, "the peer closed its connection");
                                break;
                            }
                            let count = *acked.borrow_and_update();
                            waiting_since = (count < sent).then(tokio::time::Instant::now);
                        }
                        _ = tokio::time::sleep_until(ack_deadline.unwrap_or(far)), if ack_deadline.is_some() => {
                            tracing::info!(
                                peer = node_id,
                                PEER_ACK_TIMEOUT_MS,
                                "a peer stopped acknowledging; reconnecting"
                            );
                            break;
                        }
                        frame = queue.recv() => {
                            let Some(frame) = frame else {
                                ack_reader.abort();
                                return;
                            };
                            queued_bytes.fetch_sub(frame.len(), Ordering::SeqCst);
                            match tokio::time::timeout(write_timeout, writer.write_all(&frame)).await {
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
                            sent += frame.len() as u64;
                            waiting_since.get_or_insert_with(tokio::time::Instant::now);
                        }
                    }
                }
                ack_reader.abort();
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

/// Writes the count of bytes read from one inbound peer connection back
/// on it, at most every `PEER_ACK_INTERVAL_MS`, until the connection's
/// reader drops `received`.
async fn acknowledge<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: W,
    mut received: watch::Receiver<u64>,
) {
    let write_timeout = Duration::from_millis(PEER_WRITE_TIMEOUT_MS);
    while received.changed().await.is_ok() {
        let count = *received.borrow_and_update();
        match tokio::time::timeout(write_timeout, writer.write_all(&count.to_le_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(PEER_ACK_INTERVAL_MS)).await;
    }
}

/// The newest inbound connection of each peer node. A peer that connects
/// again has given its older connection up; that one's close may never
/// arrive (it was lost in the partition that made the peer give up), so
/// the older connection is closed here once the newer one brings its
/// first envelope. Otherwise each would hold an inbound slot forever.
#[derive(Default)]
struct InboundPeers {
    newest: std::sync::Mutex<BTreeMap<NodeId, (u64, Arc<Notify>)>>,
}

impl InboundPeers {
    /// Records connection `sequence` as `from`'s; false if a newer one of
    /// `from` is recorded already (this one is then stale).
    fn register(&self, from: NodeId, sequence: u64, replaced: &Arc<Notify>) -> bool {
        let mut newest = self.newest.lock().expect("never poisoned");
        if let Some((recorded, older)) = newest.get(&from) {
            if *recorded > sequence {
                return false;
            }
            if *recorded < sequence {
                older.notify_one();
            }
        }
        newest.insert(from, (sequence, Arc::clone(replaced)));
        true
    }

    fn unregister(&self, from: NodeId, sequence: u64) {
        let mut newest = self.newest.lock().expect("never poisoned");
        if newest
            .get(&from)
            .is_some_and(|(recorded, _)| *recorded == sequence)
        {
            newest.remove(&from);
        }
    }
}

/// Accepts peers' connections and hands their envelopes to the core. A
/// frame that is too large or does not decode closes that connection, as
/// does a newer connection from the same peer (see `InboundPeers`).
pub(crate) async fn peer_listener<T: Transport>(
    listener: T::Listener,
    inputs: InputSender,
    peer_bytes: Arc<Semaphore>,
) {
    let open = Arc::new(Semaphore::new(PEER_CONNECTIONS_INBOUND_MAX));
    let inbound = Arc::new(InboundPeers::default());
    let mut next_sequence = 0u64;
    loop {
        let (stream, peer) = match T::accept(&listener).await {
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
        next_sequence += 1;
        let sequence = next_sequence;
        let inputs = inputs.clone();
        let peer_bytes = Arc::clone(&peer_bytes);
        let inbound = Arc::clone(&inbound);
        let (stream, writer) = T::split(stream);
        let (received_sender, received) = watch::channel(0u64);
        T::spawn(acknowledge(writer, received));
        T::spawn(async move {
            // Held for as long as the connection is served.
            let _slot = slot;
            let replaced = Arc::new(Notify::new());
            let mut from = None;
            tokio::select! {
                biased;
                _ = replaced.notified() => {
                    tracing::info!(%peer, "a peer connected again; closing its older connection");
                }
                _ = serve_inbound_peer(stream, peer, &inputs, &peer_bytes, &received_sender, |node| {
                    let current = inbound.register(node, sequence, &replaced);
                    if current {
                        from = Some(node);
                    }
                    current
                }) => {}
            }
            if let Some(node) = from {
                inbound.unregister(node, sequence);
            }
        });
    }
}

/// Reads one inbound peer connection until it ends, fails, or `register`
/// (called with the sender of its first envelope) says it is stale.
async fn serve_inbound_peer<R: tokio::io::AsyncRead + Unpin>(
    mut stream: R,
    peer: SocketAddr,
    inputs: &InputSender,
    peer_bytes: &Arc<Semaphore>,
    received: &watch::Sender<u64>,
    mut register: impl FnMut(NodeId) -> bool,
) {
    let mut registered = false;
    // Bytes read from the connection, acknowledged to the sender.
    let mut read = 0u64;
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).await.is_err() {
            return;
        }
        read += prefix.len() as u64;
        received.send_replace(read);
        let length = u32::from_le_bytes(prefix) as usize;
        if length > runnel_core::wire::ENVELOPE_BYTES_MAX {
            tracing::warn!(%peer, length, "peer frame over the limit; closing");
            return;
        }
        // As for client frames (see `run_connection`).
        let Ok(permit) = Arc::clone(peer_bytes)
            .acquire_many_owned(length as u32)
            .await
        else {
            return;
        };
        let mut frame = vec![0u8; length];
        for chunk in frame.chunks_mut(PEER_ACK_CHUNK_BYTES) {
            if stream.read_exact(chunk).await.is_err() {
                return;
            }
            read += chunk.len() as u64;
            received.send_replace(read);
        }
        match runnel_core::wire::decode_envelope(&frame) {
            Ok(envelope) => {
                if !registered {
                    if !register(envelope.from) {
                        tracing::info!(%peer, "a newer connection of this peer exists; closing");
                        return;
                    }
                    registered = true;
                }
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

/// Budgets of bytes read from sockets and not yet handled; the core gives
/// back what it handled.
pub(crate) struct QueuedBytes {
    pub(crate) requests: Arc<Semaphore>,
    pub(crate) peers: Arc<Semaphore>,
}

/// The core: the broker, its disk and clock, and what it answers through.
/// [`Core::step`] handles one input (or none, when the wait for one timed
/// out) and sends a tick when one is due; the drivers only wait.
pub(crate) struct Core<T: Transport> {
    broker: Broker,
    disk: Box<dyn Disk + Send>,
    clock: Box<dyn Clock + Send>,
    network: PeerNetwork,
    outputs: BTreeMap<ConnectionId, tokio_mpsc::UnboundedSender<Output>>,
    queued: QueuedBytes,
    ready: Option<oneshot::Sender<()>>,
    last_tick_ms: u64,
    shutdown_deadline_ms: Option<u64>,
    runtime: tokio::runtime::Handle,
    /// Where the metrics text goes (`publish_metrics`), and when it was
    /// last rendered.
    metrics: Option<(super::metrics::MetricsText, u64)>,
    _transport: std::marker::PhantomData<T>,
}

/// How long the core waits for an input before it ticks anyway.
pub(crate) const CORE_WAIT: Duration = Duration::from_millis(TICK_INTERVAL_MS);

impl<T: Transport> Core<T> {
    pub(crate) fn new(
        broker: Broker,
        disk: Box<dyn Disk + Send>,
        clock: Box<dyn Clock + Send>,
        peers: BTreeMap<NodeId, PeerQueue>,
        queued: QueuedBytes,
        ready: oneshot::Sender<()>,
        runtime: tokio::runtime::Handle,
    ) -> Core<T> {
        let last_tick_ms = clock.now_ms();
        Core {
            broker,
            disk,
            clock,
            network: PeerNetwork { queues: peers },
            outputs: BTreeMap::new(),
            queued,
            ready: Some(ready),
            last_tick_ms,
            shutdown_deadline_ms: None,
            runtime,
            metrics: None,
            _transport: std::marker::PhantomData,
        }
    }

    /// Renders the node's metrics into `text` every `METRICS_REFRESH_MS`,
    /// for the metrics server to hand out (`runnel serve --metrics-addr`).
    pub(crate) fn publish_metrics(&mut self, text: super::metrics::MetricsText) {
        self.metrics = Some((text, 0));
        self.render_metrics();
    }

    fn render_metrics(&mut self) {
        let Some((text, last_ms)) = &mut self.metrics else {
            return;
        };
        *last_ms = self.clock.now_ms();
        let mut rendered = self.broker.metrics_text();
        let queued_requests =
            REQUEST_QUEUE_BYTES_MAX.saturating_sub(self.queued.requests.available_permits());
        let queued_peers =
            PEER_INBOUND_BYTES_MAX.saturating_sub(self.queued.peers.available_permits());
        let peer_queues: usize = self
            .network
            .queues
            .values()
            .map(|queue| queue.bytes.load(Ordering::SeqCst))
            .sum();
        for (name, help, value) in [
            (
                "runnel_client_connections_open",
                "Client connections the shell holds open.",
                self.outputs.len(),
            ),
            (
                "runnel_request_bytes_queued",
                "Bytes of client requests read and not yet handled by the core.",
                queued_requests,
            ),
            (
                "runnel_peer_inbound_bytes_queued",
                "Bytes of peer envelopes read and not yet handled by the core.",
                queued_peers,
            ),
            (
                "runnel_peer_outbound_bytes_queued",
                "Bytes of envelopes waiting for their peer connections.",
                peer_queues,
            ),
        ] {
            runnel_broker::metrics::gauge(
                &mut rendered,
                name,
                help,
                &[(String::new(), value as u64)],
            );
        }
        if let Ok(mut shared) = text.lock() {
            *shared = rendered;
        }
    }

    /// Handles `input` (`None`: the wait timed out), then a tick if one is
    /// due. Returns the exit code once the core must stop.
    pub(crate) fn step(&mut self, input: Option<Input>) -> Option<i32> {
        let mut handled_request_bytes = 0;
        let mut handled_peer_bytes = 0;
        let event = match input {
            Some(Input::Register {
                connection,
                outputs: sender,
            }) => {
                if self.shutdown_deadline_ms.is_some() {
                    let _ = sender.send(Output::Close);
                } else {
                    self.outputs.insert(connection, sender);
                }
                None
            }
            // Requests still arrive while shutting down: readers stop
            // reading at the signal, but a frame read just before it is
            // handled like any other.
            Some(Input::Request { connection, frame }) => {
                handled_request_bytes = frame.len();
                Some(BrokerEvent::Request { connection, frame })
            }
            Some(Input::Closed { connection }) => {
                self.outputs.remove(&connection);
                Some(BrokerEvent::Closed { connection })
            }
            Some(Input::Disk(completion)) => Some(BrokerEvent::Disk(completion)),
            Some(Input::Peer { envelope, bytes }) => {
                handled_peer_bytes = bytes;
                Some(BrokerEvent::Peer(envelope))
            }
            Some(Input::Shutdown) => {
                self.shutdown_deadline_ms = Some(self.clock.now_ms() + SHUTDOWN_DRAIN_MS);
                // Long polls are answered at once with what they have.
                Some(BrokerEvent::Drain)
            }
            None => None,
        };
        let mut responses = ConnectionOutputs {
            outputs: &mut self.outputs,
        };
        let mut env = BrokerEnv {
            disk: &mut *self.disk,
            network: &mut self.network,
            clock: &*self.clock,
            responses: &mut responses,
        };
        if let Some(event) = event {
            self.broker.handle(event, &mut env);
        }
        if handled_request_bytes > 0 {
            self.queued.requests.add_permits(handled_request_bytes);
        }
        if handled_peer_bytes > 0 {
            self.queued.peers.add_permits(handled_peer_bytes);
        }
        let now_ms = self.clock.now_ms();
        if now_ms.saturating_sub(self.last_tick_ms) >= TICK_INTERVAL_MS {
            self.last_tick_ms = now_ms;
            self.broker.handle(BrokerEvent::Tick, &mut env);
            // Nodes added to the cluster at run time: the metadata group
            // says where they listen (docs/protocol.md §12.5).
            for (node, address) in self.broker.added_peer_addresses() {
                if self.network.queues.contains_key(&node) {
                    continue;
                }
                tracing::info!(peer = node, %address, "a node joined the cluster; connecting");
                let queue = start_peer_sender::<T>(&self.runtime, node, address);
                self.network.queues.insert(node, queue);
            }
        }
        if self.metrics.as_ref().is_some_and(|(_, last_ms)| {
            now_ms.saturating_sub(*last_ms) >= super::metrics::METRICS_REFRESH_MS
        }) {
            self.render_metrics();
        }
        // Clients are let in once the metadata group has a leader and the
        // offsets partitions this node hosts have theirs, so that their
        // first requests are answered rather than refused.
        if self.ready.is_some()
            && self.broker.metadata_leader_known()
            && self.broker.offsets_ready()
        {
            let _ = self.ready.take().expect("checked").send(());
        }
        if let Some(reason) = self.broker.failed() {
            // DESIGN.md "Storage": never go on after a failed write or
            // fsync; a restart recovers from what is durable.
            tracing::error!(reason, "stopping: the disk failed");
            return Some(EXIT_DISK_FAILED);
        }
        if let Some(deadline_ms) = self.shutdown_deadline_ms {
            let in_flight = self.broker.requests_in_flight();
            if in_flight == 0 || self.clock.now_ms() >= deadline_ms {
                if in_flight > 0 {
                    tracing::warn!(
                        in_flight,
                        "shutdown deadline passed with requests unanswered"
                    );
                }
                return Some(0);
            }
        }
        None
    }
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

async fn accept_loop<T: Transport>(
    listener: T::Listener,
    inputs: InputSender,
    writers: Arc<WriterCount>,
    reading_stopped: watch::Receiver<bool>,
    request_bytes: Arc<Semaphore>,
) {
    let mut next_connection: ConnectionId = 1;
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match T::accept(&listener).await {
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
        T::set_nodelay(&stream);
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
        T::spawn(async move {
            run_connection::<T>(
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

async fn run_connection<T: Transport>(
    connection: ConnectionId,
    stream: T::Stream,
    inputs: InputSender,
    mut outputs: tokio_mpsc::UnboundedReceiver<Output>,
    writers: Arc<WriterCount>,
    mut reading_stopped: watch::Receiver<bool>,
    request_bytes: Arc<Semaphore>,
) {
    let (mut reader, mut writer) = T::split(stream);
    let permits = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX));
    let reader_permits = Arc::clone(&permits);
    let reader_inputs = inputs.clone();
    let idle_timeout = Duration::from_millis(CONNECTION_IDLE_MS_MAX);
    // The reader ends with `Stopped` when the node shuts down: then the
    // connection stays open until what it asked is answered. It ends with
    // `Gone` when the client goes, breaks the protocol, or leaves the
    // connection idle for `CONNECTION_IDLE_MS_MAX`.
    let read_task = T::spawn(async move {
        loop {
            // Biased: the order of the branches, not a random draw, decides
            // when both are ready, so that a seeded simulation replays.
            let permit = tokio::select! {
                biased;
                _ = reading_stopped.wait_for(|stopped| *stopped) => return ReadEnd::Stopped,
                permit = reader_permits.acquire() => permit,
            };
            let Ok(permit) = permit else {
                return ReadEnd::Gone;
            };
            permit.forget();
            let mut prefix = [0u8; 4];
            let mut filled = 0;
            while filled < prefix.len() {
                // `read` is cancel safe: when another branch wins, nothing
                // was read. A shutdown may still cut a prefix in half,
                // which is harmless: nothing is read from this connection
                // afterwards.
                tokio::select! {
                    biased;
                    _ = reading_stopped.wait_for(|stopped| *stopped) => return ReadEnd::Stopped,
                    read = reader.read(&mut prefix[filled..]) => match read {
                        Ok(0) | Err(_) => return ReadEnd::Gone,
                        Ok(count) => filled += count,
                    },
                    _ = tokio::time::sleep(idle_timeout) => {
                        // This read holds one permit; all the others free
                        // means no request is unanswered.
                        let unanswered = (REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX - 1)
                            .saturating_sub(reader_permits.available_permits());
                        if filled == 0 && unanswered == 0 {
                            tracing::debug!(
                                connection,
                                CONNECTION_IDLE_MS_MAX,
                                "closing an idle client connection"
                            );
                            return ReadEnd::Gone;
                        }
                    }
                }
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
    let watcher = T::spawn(async move {
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

/// Where a node listens and whom it talks to.
#[derive(Clone, Debug)]
pub struct NodeAddresses {
    pub node_id: NodeId,
    pub kafka_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    /// The other nodes: id and `host:port` of their peer listener.
    pub peers: Vec<(NodeId, String)>,
}

/// The listeners of a node, bound before its core starts so that an
/// address in use is reported at once; clients wait in the backlog until
/// they are let in.
pub(crate) struct Bound<T: Transport> {
    pub(crate) kafka: T::Listener,
    pub(crate) rpc: Option<T::Listener>,
}

pub(crate) async fn bind<T: Transport>(addresses: &NodeAddresses) -> Result<Bound<T>, String> {
    let kafka = T::bind(addresses.kafka_addr)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", addresses.kafka_addr))?;
    let rpc = if addresses.peers.is_empty() {
        None
    } else {
        Some(T::bind(addresses.rpc_addr).await.map_err(|error| {
            format!("cannot listen for peers on {}: {error}", addresses.rpc_addr)
        })?)
    };
    Ok(Bound { kafka, rpc })
}

/// Starts the peer listener and a sender per peer on `runtime`.
pub(crate) fn start_peers<T: Transport>(
    runtime: &tokio::runtime::Handle,
    rpc: Option<T::Listener>,
    addresses: &NodeAddresses,
    inputs: &InputSender,
    peer_bytes: &Arc<Semaphore>,
) -> BTreeMap<NodeId, PeerQueue> {
    let mut queues = BTreeMap::new();
    if let Some(rpc) = rpc {
        let _entered = runtime.enter();
        T::spawn(peer_listener::<T>(
            rpc,
            inputs.clone(),
            Arc::clone(peer_bytes),
        ));
    }
    for (node_id, address) in &addresses.peers {
        queues.insert(
            *node_id,
            start_peer_sender::<T>(runtime, *node_id, address.clone()),
        );
    }
    queues
}

/// Lets clients in once the core is ready (or the wait is over), serves
/// them until `stop` says why to stop, then drains: no new connections, no
/// new requests read, what is in flight answered, the core stopped.
/// Returns the core's exit code; a core that stops by itself (its disk
/// failed) ends this at once, without a drain.
pub(crate) async fn serve_clients<T: Transport>(
    listener: T::Listener,
    addresses: &NodeAddresses,
    inputs: InputSender,
    request_bytes: Arc<Semaphore>,
    ready: oneshot::Receiver<()>,
    core_done: impl Future<Output = i32>,
    stop: impl Future<Output = &'static str>,
) -> i32 {
    tokio::pin!(core_done);
    tokio::pin!(stop);
    let writers = Arc::new(WriterCount::default());
    let (stop_reading, reading_stopped) = watch::channel(false);
    // Clients are let in once the metadata group has a leader, so that
    // their first requests are answered rather than refused. A signal
    // during that wait stops the node without letting them in.
    let ready_wait = tokio::time::timeout(Duration::from_millis(STARTUP_LEADER_WAIT_MS), ready);
    let started = tokio::select! {
        biased;
        code = &mut core_done => return code,
        signal = &mut stop => Err(signal),
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
                node_id = addresses.node_id,
                kafka_addr = %addresses.kafka_addr,
                rpc_addr = %addresses.rpc_addr,
                "runnel is serving"
            );
            let task = T::spawn(accept_loop::<T>(
                listener,
                inputs.clone(),
                Arc::clone(&writers),
                reading_stopped,
                request_bytes,
            ));
            let abort = task.abort_handle();
            accept = Some(task);
            tokio::select! {
                biased;
                code = &mut core_done => {
                    abort.abort();
                    return code;
                }
                signal = &mut stop => signal,
            }
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
    let code = core_done.await;
    // The core dropped every writer's channel: each writes what it was
    // given and ends.
    let _ = tokio::time::timeout(Duration::from_secs(2), writers.idle()).await;
    code
}

/// A node whose core runs as a task of the current runtime rather than on
/// a thread of its own: for single-threaded runtimes such as each host of
/// a turmoil simulation. `disk` delivers its completions through the
/// [`DiskEvents`] that `disk` is built from.
pub struct TaskNode {
    pub broker: Broker,
    pub disk: Box<dyn Disk + Send>,
    pub clock: Box<dyn Clock + Send>,
    pub addresses: NodeAddresses,
}

/// The core's input channel for [`run_in_task`]: the disk's end, made
/// before the disk, and the core's end.
pub fn task_inputs() -> (DiskEvents, TaskInputs) {
    let (sender, receiver) = tokio_mpsc::unbounded_channel();
    (
        DiskEvents {
            inputs: InputSender::Task(sender.clone()),
        },
        TaskInputs { sender, receiver },
    )
}

/// The core's end of [`task_inputs`].
pub struct TaskInputs {
    sender: tokio_mpsc::UnboundedSender<Input>,
    receiver: tokio_mpsc::UnboundedReceiver<Input>,
}

/// Runs a node until `stop` resolves (then drains as on SIGTERM) or its
/// core stops by itself; returns the exit code `runnel serve` would. A
/// panic of the core is resumed here.
pub async fn run_in_task<T: Transport>(
    node: TaskNode,
    inputs: TaskInputs,
    stop: impl Future<Output = &'static str>,
) -> Result<i32, String> {
    let bound = bind::<T>(&node.addresses).await?;
    let runtime = tokio::runtime::Handle::current();
    let TaskInputs {
        sender,
        mut receiver,
    } = inputs;
    let inputs = InputSender::Task(sender);
    let peer_bytes = Arc::new(Semaphore::new(PEER_INBOUND_BYTES_MAX));
    let request_bytes = Arc::new(Semaphore::new(REQUEST_QUEUE_BYTES_MAX));
    let peers = start_peers::<T>(&runtime, bound.rpc, &node.addresses, &inputs, &peer_bytes);
    let (ready_sender, ready) = oneshot::channel();
    let mut core = Core::<T>::new(
        node.broker,
        node.disk,
        node.clock,
        peers,
        QueuedBytes {
            requests: Arc::clone(&request_bytes),
            peers: peer_bytes,
        },
        ready_sender,
        runtime,
    );
    let core_task = T::spawn(async move {
        loop {
            let input = match tokio::time::timeout(CORE_WAIT, receiver.recv()).await {
                Ok(Some(input)) => Some(input),
                Ok(None) => return 0,
                Err(_) => None,
            };
            if let Some(code) = core.step(input) {
                return code;
            }
        }
    });
    let core_done = async move {
        match core_task.await {
            Ok(code) => code,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => 1,
            },
        }
    };
    Ok(serve_clients::<T>(
        bound.kafka,
        &node.addresses,
        inputs,
        request_bytes,
        ready,
        core_done,
        stop,
    )
    .await)
}
