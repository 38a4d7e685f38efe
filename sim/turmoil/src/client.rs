//! Kafka clients over turmoil TCP: the seeded simulator's Kafka workload
//! (`runnel_sim::kafka_workload`: an admin, producers with `acks=all`,
//! consumers, every request real Kafka bytes), driven here by real
//! connections instead of the simulator's in-memory delivery, and a final
//! reader that fetches every partition's committed log for the check.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, MetadataRequest, MetadataResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use runnel_broker::ConnectionId;
use runnel_io::NodeId;
use runnel_sim::kafka_workload::{KafkaAction, KafkaWorkload};
use runnel_sim::workload::decode_value_id;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use turmoil::net::TcpStream;

use crate::trace::Trace;

/// The Kafka port of every node.
pub const KAFKA_PORT: u16 = 9092;
/// The peer port of every node.
pub const RPC_PORT: u16 = 19092;
/// Bytes a response may have, as a client's own bound.
pub const RESPONSE_BYTES_MAX: usize = 8 << 20;
/// Fetches the final reader makes of one partition before it gives up.
pub const FINAL_FETCHES_MAX: usize = 10_000;
/// Attempts the final reader makes at one request (leaders move).
pub const FINAL_ATTEMPTS_MAX: usize = 200;

/// The host name of node `node`.
pub fn host_name(node: NodeId) -> String {
    format!("n{node}")
}

/// What a connection task tells the driver.
enum ConnectionEvent {
    Response {
        connection: ConnectionId,
        frame: Bytes,
    },
    Closed {
        connection: ConnectionId,
    },
}

/// The driver's end of one client connection.
struct ConnectionHandle {
    frames: mpsc::UnboundedSender<Bytes>,
    /// Dropped to close the connection, even while it is still connecting.
    _close: oneshot::Sender<()>,
}

/// One connection: connects, writes the frames it is given with their
/// length prefix, reads responses (with their prefix) back to the driver.
async fn run_connection(
    connection: ConnectionId,
    node: NodeId,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    mut close: oneshot::Receiver<()>,
    events: mpsc::UnboundedSender<ConnectionEvent>,
) {
    let address = format!("{}:{KAFKA_PORT}", host_name(node));
    let stream = tokio::select! {
        biased;
        _ = &mut close => return,
        connected = TcpStream::connect(address) => connected,
    };
    let Ok(stream) = stream else {
        let _ = events.send(ConnectionEvent::Closed { connection });
        return;
    };
    let (mut reader, mut writer) = stream.into_split();
    let reader_events = events.clone();
    let read = async move {
        loop {
            let mut prefix = [0u8; 4];
            if reader.read_exact(&mut prefix).await.is_err() {
                return;
            }
            let length = i32::from_be_bytes(prefix);
            if length < 0 || length as usize > RESPONSE_BYTES_MAX {
                return;
            }
            let mut frame = vec![0u8; 4 + length as usize];
            frame[..4].copy_from_slice(&prefix);
            if reader.read_exact(&mut frame[4..]).await.is_err() {
                return;
            }
            let frame = Bytes::from(frame);
            if reader_events
                .send(ConnectionEvent::Response { connection, frame })
                .is_err()
            {
                return;
            }
        }
    };
    let write = async move {
        while let Some(frame) = frames.recv().await {
            let mut framed = Vec::with_capacity(4 + frame.len());
            framed.extend_from_slice(&(frame.len() as i32).to_be_bytes());
            framed.extend_from_slice(&frame);
            if writer.write_all(&framed).await.is_err() {
                return;
            }
        }
        // The driver dropped the connection: its stream closes below.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        biased;
        _ = &mut close => return,
        _ = read => {}
        _ = write => {}
    }
    let _ = events.send(ConnectionEvent::Closed { connection });
}

/// When the clients' phases change, in ms of the client host's time.
#[derive(Clone, Copy, Debug)]
pub struct ClientSchedule {
    /// Faults heal here; the workload then needs new acknowledged writes on
    /// every partition (its liveness phase).
    pub safety_end_ms: u64,
    /// The liveness phase must be done by here.
    pub liveness_deadline_ms: u64,
    /// The wait after the final read before streams are counted.
    pub linger_ms: u64,
}

/// What the clients report at the end.
#[derive(Debug, Default)]
pub struct ClientReport {
    pub violations: Vec<runnel_checkers::Violation>,
    /// Why the liveness phase did not finish, if it did not.
    pub liveness_failure: Option<String>,
    pub stats: Option<runnel_sim::kafka_workload::KafkaStats>,
    /// Final log length per partition.
    pub final_records: u64,
    /// After a liveness failure: each node's view of each partition.
    pub node_views: Vec<String>,
    /// TCP streams open on each node after the final read.
    pub streams: BTreeMap<NodeId, usize>,
}

/// Runs the workload until its liveness phase is done, then reads every
/// partition's final log and checks the history against it.
pub async fn run_clients(
    mut workload: KafkaWorkload,
    nodes: Vec<NodeId>,
    schedule: ClientSchedule,
    trace: Rc<RefCell<Trace>>,
    report: Rc<RefCell<ClientReport>>,
) -> turmoil::Result {
    let start = Instant::now();
    let now_ms = move || start.elapsed().as_millis() as u64;
    let (events, mut inbound) = mpsc::unbounded_channel();
    let mut connections: BTreeMap<ConnectionId, ConnectionHandle> = BTreeMap::new();
    // (due, order of scheduling) -> (client, token)
    let mut wakes: BTreeMap<(u64, u64), (usize, u64)> = BTreeMap::new();
    let mut wake_order = 0u64;
    let mut actions = Vec::new();
    workload.start(0, &mut actions);
    let mut liveness = false;
    loop {
        for action in actions.drain(..) {
            trace.borrow_mut().client_action(now_ms(), &action);
            match action {
                KafkaAction::Send {
                    node,
                    connection,
                    frame,
                } => {
                    let handle = connections.entry(connection).or_insert_with(|| {
                        let (frames, frame_receiver) = mpsc::unbounded_channel();
                        let (close, close_receiver) = oneshot::channel();
                        tokio::task::spawn_local(run_connection(
                            connection,
                            node,
                            frame_receiver,
                            close_receiver,
                            events.clone(),
                        ));
                        ConnectionHandle {
                            frames,
                            _close: close,
                        }
                    });
                    let _ = handle.frames.send(frame);
                }
                KafkaAction::Close { connection, .. } => {
                    connections.remove(&connection);
                }
                KafkaAction::Wake { at, client, token } => {
                    wake_order += 1;
                    wakes.insert((at, wake_order), (client, token));
                }
            }
        }
        let now = now_ms();
        if !liveness && now >= schedule.safety_end_ms {
            liveness = true;
            workload.start_liveness();
            trace.borrow_mut().note(now, "liveness phase");
        }
        if liveness && workload.liveness_done() {
            break;
        }
        if now >= schedule.liveness_deadline_ms {
            report.borrow_mut().liveness_failure = Some(format!(
                "no progress by {} ms: still waiting for {}",
                schedule.liveness_deadline_ms,
                workload.liveness_missing().join(", ")
            ));
            break;
        }
        if let Some((&(at, order), &(client, token))) = wakes.first_key_value() {
            if at <= now {
                wakes.remove(&(at, order));
                workload.on_wake(now, client, token, &mut actions);
                continue;
            }
        }
        let next_wake = wakes
            .first_key_value()
            .map_or(now + 100, |(&(at, _), _)| at)
            .min(schedule.safety_end_ms.max(now + 1))
            .min(schedule.liveness_deadline_ms);
        let sleep = tokio::time::sleep(Duration::from_millis(next_wake.saturating_sub(now)));
        tokio::select! {
            biased;
            event = inbound.recv() => {
                let now = now_ms();
                match event.expect("the driver holds a sender") {
                    ConnectionEvent::Response { connection, frame } => {
                        trace.borrow_mut().client_response(now, connection, &frame);
                        workload.on_response(now, connection, frame, &mut actions);
                    }
                    ConnectionEvent::Closed { connection } => {
                        trace.borrow_mut().client_closed(now, connection);
                        if connections.remove(&connection).is_some() {
                            workload.on_closed(now, connection, &mut actions);
                        }
                    }
                }
            }
            _ = sleep => {}
        }
    }
    drop(connections);
    let stats = workload.stats();
    report.borrow_mut().stats = Some(stats);
    if report.borrow().liveness_failure.is_some() {
        // What each node says of each partition, for the failure report.
        let mut reader = FinalReader::new(nodes.clone());
        let mut views = Vec::new();
        for topic in workload.wanted_topics() {
            for &node in &nodes {
                reader.next_node = nodes.iter().position(|n| *n == node).unwrap_or(0);
                let view = reader.describe(&topic).await;
                views.push(format!("n{node} on {topic}: {view}"));
            }
        }
        report.borrow_mut().node_views = views;
        return Ok(());
    }
    let mut reader = FinalReader::new(nodes.clone());
    match reader.read_all(&workload.wanted_topics()).await {
        Ok(logs) => {
            let records: u64 = logs.values().map(|log| log.len() as u64).sum();
            trace.borrow_mut().final_logs(now_ms(), &logs);
            // The final reader's connections close; give the nodes a
            // moment to see it before their streams are counted.
            tokio::time::sleep(Duration::from_millis(schedule.linger_ms)).await;
            let mut report = report.borrow_mut();
            report.final_records = records;
            report.violations = workload.history().check(&logs);
            for &node in &nodes {
                let streams = turmoil::established_tcp_stream_count_on(host_name(node).as_str());
                report.streams.insert(node, streams);
            }
        }
        Err(message) => {
            report.borrow_mut().liveness_failure = Some(format!("final read: {message}"));
        }
    }
    Ok(())
}

/// A partition's records as (offset, value id).
pub type PartitionLog = Vec<(i64, Option<u64>)>;

/// Reads each partition from offset 0 to its high watermark from its
/// leader, with a fresh connection per attempt.
struct FinalReader {
    nodes: Vec<NodeId>,
    next_node: usize,
    correlation: i32,
}

const METADATA_VERSION: i16 = 12;
const FETCH_VERSION: i16 = 12;

impl FinalReader {
    fn new(nodes: Vec<NodeId>) -> FinalReader {
        FinalReader {
            nodes,
            next_node: 0,
            correlation: 1_000_000,
        }
    }

    async fn read_all(
        &mut self,
        topics: &[String],
    ) -> Result<BTreeMap<(String, i32), PartitionLog>, String> {
        let mut logs = BTreeMap::new();
        for topic in topics {
            let mut partition = 0;
            loop {
                let mut attempts = 0;
                let (count, leader) = loop {
                    attempts += 1;
                    if attempts > FINAL_ATTEMPTS_MAX {
                        return Err(format!("no leader for {topic}-{partition}"));
                    }
                    match self.leader(topic, partition).await {
                        Some(found) => break found,
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                if partition >= count {
                    break;
                }
                let log = self.read_partition(topic, partition, leader).await?;
                logs.insert((topic.clone(), partition), log);
                partition += 1;
            }
        }
        Ok(logs)
    }

    /// The leader and replicas of every partition of `topic`, as the next
    /// node sees them.
    async fn describe(&mut self, topic: &str) -> String {
        let node = self.nodes[self.next_node % self.nodes.len()];
        let request = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        let Some(mut body) = self
            .call(node, ApiKey::Metadata, METADATA_VERSION, &request)
            .await
        else {
            return "no answer".to_string();
        };
        let Ok(response) = MetadataResponse::decode(&mut body, METADATA_VERSION) else {
            return "an answer that does not decode".to_string();
        };
        let Some(found) = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|name| name.0.as_str() == topic))
        else {
            return "no such topic".to_string();
        };
        found
            .partitions
            .iter()
            .map(|p| {
                format!(
                    "[{}: leader {} epoch {} replicas {:?} isr {:?} error {}]",
                    p.partition_index,
                    p.leader_id.0,
                    p.leader_epoch,
                    p.replica_nodes.iter().map(|r| r.0).collect::<Vec<_>>(),
                    p.isr_nodes.iter().map(|r| r.0).collect::<Vec<_>>(),
                    p.error_code
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The topic's partition count and the leader of `partition`.
    async fn leader(&mut self, topic: &str, partition: i32) -> Option<(i32, NodeId)> {
        let node = self.nodes[self.next_node % self.nodes.len()];
        self.next_node += 1;
        let request = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        let mut body = self
            .call(node, ApiKey::Metadata, METADATA_VERSION, &request)
            .await?;
        let response = MetadataResponse::decode(&mut body, METADATA_VERSION).ok()?;
        let found = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|name| name.0.as_str() == topic))?;
        if found.error_code != 0 {
            return None;
        }
        let count = found.partitions.len() as i32;
        if partition >= count {
            return Some((count, 0));
        }
        let entry = found
            .partitions
            .iter()
            .find(|p| p.partition_index == partition)?;
        (entry.error_code == 0 && entry.leader_id.0 > 0)
            .then_some((count, entry.leader_id.0 as NodeId))
    }

    async fn read_partition(
        &mut self,
        topic: &str,
        partition: i32,
        mut leader: NodeId,
    ) -> Result<PartitionLog, String> {
        let mut log = Vec::new();
        let mut offset = 0i64;
        let mut failures = 0;
        for _ in 0..FINAL_FETCHES_MAX {
            let request = FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_isolation_level(1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20)])]);
            let answer = match self
                .call(leader, ApiKey::Fetch, FETCH_VERSION, &request)
                .await
            {
                Some(mut body) => FetchResponse::decode(&mut body, FETCH_VERSION).ok(),
                None => None,
            };
            let partition_answer = answer
                .as_ref()
                .and_then(|r| r.responses.first())
                .and_then(|t| t.partitions.first())
                .filter(|p| p.error_code == 0);
            let Some(answer) = partition_answer else {
                failures += 1;
                if failures > FINAL_ATTEMPTS_MAX {
                    return Err(format!("cannot fetch {topic}-{partition} at {offset}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some((_, found)) = self.leader(topic, partition).await {
                    leader = found;
                }
                continue;
            };
            let high_watermark = answer.high_watermark;
            let mut bytes = answer.records.clone().unwrap_or_default();
            while !bytes.is_empty() {
                let Ok(set) = RecordBatchDecoder::decode(&mut bytes) else {
                    return Err(format!("{topic}-{partition}: a batch does not decode"));
                };
                for record in set.records {
                    if record.offset < offset {
                        continue;
                    }
                    log.push((
                        record.offset,
                        record.value.as_deref().and_then(decode_value_id),
                    ));
                    offset = record.offset + 1;
                }
            }
            if offset >= high_watermark {
                return Ok(log);
            }
        }
        Err(format!("{topic}-{partition}: more fetches than the bound"))
    }

    /// One request on a fresh connection; `None` on any failure.
    async fn call(
        &mut self,
        node: NodeId,
        key: ApiKey,
        version: i16,
        body: &impl Encodable,
    ) -> Option<Bytes> {
        self.correlation += 1;
        let correlation = self.correlation;
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str("final-reader")))
            .encode(&mut frame, key.request_header_version(version))
            .ok()?;
        body.encode(&mut frame, version).ok()?;
        let exchange = async {
            let mut stream = TcpStream::connect(format!("{}:{KAFKA_PORT}", host_name(node)))
                .await
                .ok()?;
            let mut framed = Vec::with_capacity(4 + frame.len());
            framed.extend_from_slice(&(frame.len() as i32).to_be_bytes());
            framed.extend_from_slice(&frame);
            stream.write_all(&framed).await.ok()?;
            let mut prefix = [0u8; 4];
            stream.read_exact(&mut prefix).await.ok()?;
            let length = i32::from_be_bytes(prefix);
            if length < 0 || length as usize > RESPONSE_BYTES_MAX {
                return None;
            }
            let mut response = vec![0u8; length as usize];
            stream.read_exact(&mut response).await.ok()?;
            Some(Bytes::from(response))
        };
        let mut response = tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .ok()??;
        let header =
            ResponseHeader::decode(&mut response, key.response_header_version(version)).ok()?;
        (header.correlation_id == correlation).then_some(response)
    }
}
