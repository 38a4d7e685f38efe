//! One producer client: messages are appended to their partition's open
//! batch; a batch goes out once it is full, or once it has lingered and its
//! leader's connection has room for another request. A request to a
//! broker carries one batch for each of as many of its partitions as are
//! ready (as Kafka's producer drains them), and up to `--in-flight`
//! requests are outstanding per connection. A batch refused because the
//! partition's leader moved (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE,
//! which say nothing was appended) is sent again to the new leader, found
//! from fresh metadata; should the old leader have kept it after all, the
//! consumers' check reports the duplicates. Any other failure counts the
//! batch's messages as errors (a retry could write them twice).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use runnel_kafka::partitioner::partition_for_key;
use tokio::sync::mpsc;

use crate::args::{Acks, BenchArgs, Keys};
use crate::cluster::{topic_name, Layout};
use crate::connection::{decode_response, Connection, ReplyTo};
use crate::records::{BatchBuilder, MessageHeader, MESSAGE_HEADER_BYTES};
use crate::stats::{
    latency_histogram, BitSet, Clock, Live, LATENCY_US_MAX, MESSAGES_PER_PRODUCER_MAX,
};
use crate::{error_name, BenchError};

/// Most bytes of batches in one produce request (Kafka's
/// `max.request.size` default); a single batch always goes alone.
pub const REQUEST_BYTES_MAX: usize = 1 << 20;
/// Messages made before the producer looks at replies and timers again.
const MESSAGES_PER_TURN_MAX: usize = 4_096;
/// Bytes of filler the values are cut from.
const FILLER_BYTES: usize = 1 << 20;
/// Most bytes a record adds besides its key and value: its length,
/// attributes, timestamp and offset deltas, key and value lengths, and
/// header count, as varints.
const RECORD_OVERHEAD_BYTES_MAX: usize = 32;
/// Bytes of each generated key ("key-" and eight digits).
pub const KEY_BYTES: usize = 12;
/// How long after its first message a batch may still be sent again to a
/// new leader (Kafka's `delivery.timeout.ms` is 120 s; a bench run wants
/// to hear sooner).
pub const DELIVERY_TIMEOUT_MS: u64 = 30_000;
/// The pause before asking again who leads the partitions.
pub const REROUTE_BACKOFF_MS: u64 = 100;
/// How long after the load stops a producer still waits for answers
/// (beyond the broker's own 30 s produce timeout) before it counts what is
/// unanswered as errors, so that a broker that stops answering cannot hang
/// the bench.
pub const ANSWER_GRACE_MS: u64 = 40_000;

/// Kafka errors after which nothing was written and the leader moved.
fn leader_moved(code: i16) -> bool {
    matches!(code, 5 | 6)
}

/// The keys a run draws from, with each key's partition worked out once.
pub struct KeyTable {
    keys: Vec<u8>,
    partitions: Vec<i32>,
    /// For Zipf: the cumulative distribution over keys, ascending.
    cdf: Option<Vec<f64>>,
}

impl KeyTable {
    pub fn new(keys: Keys, count: u64, partition_count: i32) -> Option<KeyTable> {
        if keys == Keys::None {
            return None;
        }
        let count = count as usize;
        let mut bytes = Vec::with_capacity(count * KEY_BYTES);
        let mut partitions = Vec::with_capacity(count);
        for key in 0..count {
            let text = format!("key-{key:08}");
            debug_assert_eq!(text.len(), KEY_BYTES);
            partitions.push(partition_for_key(text.as_bytes(), partition_count));
            bytes.extend_from_slice(text.as_bytes());
        }
        let cdf = (keys == Keys::Zipf).then(|| {
            let weights: Vec<f64> = (1..=count).map(|rank| 1.0 / rank as f64).collect();
            let total: f64 = weights.iter().sum();
            let mut sum = 0.0;
            weights
                .iter()
                .map(|weight| {
                    sum += weight / total;
                    sum
                })
                .collect()
        });
        Some(KeyTable {
            keys: bytes,
            partitions,
            cdf,
        })
    }

    fn draw(&self, random: u64) -> usize {
        match &self.cdf {
            None => (random % self.partitions.len() as u64) as usize,
            Some(cdf) => {
                let point = (random >> 11) as f64 / (1u64 << 53) as f64;
                cdf.partition_point(|&c| c < point).min(cdf.len() - 1)
            }
        }
    }

    fn key(&self, index: usize) -> &[u8] {
        &self.keys[index * KEY_BYTES..(index + 1) * KEY_BYTES]
    }
}

/// splitmix64: cheap, and good enough to pick keys and filler.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random capital letters, as Kafka's perf tool fills its values.
pub fn filler(seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..FILLER_BYTES)
        .map(|_| b'A' + (next_random(&mut state) % 26) as u8)
        .collect()
}

/// What every producer shares.
pub struct Shared {
    pub args: BenchArgs,
    pub run_id: u64,
    pub clock: Clock,
    pub live: Arc<Live>,
    pub layout: Layout,
    pub keys: Option<KeyTable>,
    pub filler: Vec<u8>,
}

/// What one producer did.
pub struct ProducerResult {
    pub index: u32,
    pub sent: u64,
    pub sent_bytes: u64,
    pub acked: BitSet,
    pub acked_bytes: u64,
    pub errors: u64,
    /// Batches sent again because their partition's leader moved.
    pub rerouted_batches: u64,
    pub latency: Histogram<u64>,
    /// One past the highest acknowledged offset, per partition.
    pub end_offsets: BTreeMap<i32, i64>,
    pub last_ack: Option<Instant>,
}

struct Open {
    builder: BatchBuilder,
    opened: Instant,
    /// (sequence, when made) of each message, in order.
    messages: Vec<(u64, Instant)>,
    bytes: usize,
}

struct Sealed {
    partition: i32,
    /// Kept until acknowledged, to be sent again if the leader moved.
    batch: Bytes,
    messages: Vec<(u64, Instant)>,
    bytes: usize,
}

struct Link {
    connection: Option<Connection>,
    address: String,
    version: i16,
    partitions: Vec<i32>,
    sealed: VecDeque<Sealed>,
    in_flight: usize,
}

struct InFlight {
    link: usize,
    batches: Vec<Sealed>,
}

struct Producer {
    index: u32,
    shared: Arc<Shared>,
    links: Vec<Link>,
    /// Partition to its leader's link.
    link_of: BTreeMap<i32, usize>,
    partitions: Vec<i32>,
    open: BTreeMap<i32, Open>,
    sticky: usize,
    next_sequence: u64,
    random: u64,
    buffered_bytes: usize,
    in_flight: BTreeMap<u64, InFlight>,
    next_tag: u64,
    replies: mpsc::UnboundedSender<(u64, Result<Bytes, String>)>,
    /// Batches whose leader moved, waiting for fresh metadata.
    rerouting: Vec<Sealed>,
    /// When to ask for fresh metadata, once a leader moved.
    refresh_at: Option<Instant>,
    metadata: Option<Connection>,
    result: ProducerResult,
    latencies: Vec<u64>,
}

pub async fn run(
    index: u32,
    shared: Arc<Shared>,
    stop_at: Instant,
) -> Result<ProducerResult, BenchError> {
    let mut links: Vec<Link> = Vec::new();
    let link_of = route(&mut links, &shared.layout).await?;
    let partitions = shared.layout.partitions();
    let (replies, mut receiver) = mpsc::unbounded_channel();
    let mut producer = Producer {
        index,
        sticky: index as usize % partitions.len(),
        shared: shared.clone(),
        links,
        link_of,
        partitions,
        open: BTreeMap::new(),
        next_sequence: 0,
        random: shared.run_id ^ (u64::from(index) << 40),
        buffered_bytes: 0,
        in_flight: BTreeMap::new(),
        next_tag: 0,
        replies,
        rerouting: Vec::new(),
        refresh_at: None,
        metadata: None,
        result: ProducerResult {
            index,
            sent: 0,
            sent_bytes: 0,
            acked: BitSet::default(),
            acked_bytes: 0,
            errors: 0,
            rerouted_batches: 0,
            latency: latency_histogram(),
            end_offsets: BTreeMap::new(),
            last_ack: None,
        },
        latencies: Vec::new(),
    };
    let args = &shared.args;
    let rate_mode = args.rate > 0;
    let per_producer = args.rate as f64 / f64::from(args.producers.max(1));
    let interval = if rate_mode {
        Duration::from_secs_f64(1.0 / per_producer.max(1e-3))
    } else {
        Duration::ZERO
    };
    let started = Instant::now();
    let mut next_due = started;
    let linger = Duration::from_millis(args.linger_ms);
    let mut stopping = false;
    let give_up_at = stop_at + Duration::from_millis(ANSWER_GRACE_MS);
    loop {
        let now = Instant::now();
        if now > give_up_at {
            producer.give_up();
            break;
        }
        let producing = now < stop_at && producer.next_sequence < MESSAGES_PER_PRODUCER_MAX;
        if producing {
            let mut made = 0;
            while made < MESSAGES_PER_TURN_MAX && producer.buffered_bytes < args.buffer_bytes {
                if rate_mode {
                    if next_due > now {
                        break;
                    }
                    // Latency counts from when the message was due, not
                    // when the producer got to it, so that a stall shows
                    // (no coordinated omission).
                    producer.make(next_due);
                    next_due += interval;
                } else {
                    producer.make(now);
                }
                made += 1;
            }
        } else {
            stopping = true;
        }
        // Replies that are already in, before deciding what to send and
        // whether the run is over: the last of them may end it.
        while let Ok((tag, reply)) = receiver.try_recv() {
            producer.complete(tag, reply);
        }
        if producer.refresh_at.is_some_and(|at| at <= now) {
            producer.reroute().await;
        }
        producer.drain(now, stopping, linger).await;
        if stopping
            && producer.in_flight.is_empty()
            && producer.nothing_queued()
            && producer.rerouting.is_empty()
        {
            break;
        }
        let can_make_now = producing
            && producer.buffered_bytes < args.buffer_bytes
            && (!rate_mode || next_due <= Instant::now());
        if can_make_now {
            tokio::task::yield_now().await;
            continue;
        }
        let mut wake: Option<Instant> = None;
        let mut sooner = |at: Instant| wake = Some(wake.map_or(at, |w: Instant| w.min(at)));
        if producing {
            sooner(stop_at);
            if rate_mode && producer.buffered_bytes < args.buffer_bytes {
                sooner(next_due);
            }
        }
        if let Some(oldest) = producer.oldest_lingering() {
            sooner(oldest + linger);
        }
        if let Some(at) = producer.refresh_at {
            sooner(at);
        }
        sooner(give_up_at);
        let wake = wake.map(|w| w.max(Instant::now()));
        tokio::select! {
            biased;
            reply = receiver.recv() => {
                if let Some((tag, reply)) = reply {
                    producer.complete(tag, reply);
                }
            }
            _ = sleep_until(wake) => {}
        }
    }
    Ok(producer.result)
}

/// Points each partition at the link to its leader, opening connections
/// to leaders not connected yet.
async fn route(links: &mut Vec<Link>, layout: &Layout) -> Result<BTreeMap<i32, usize>, BenchError> {
    let mut link_of = BTreeMap::new();
    for link in links.iter_mut() {
        link.partitions.clear();
    }
    for (&partition, &leader) in &layout.leaders {
        let address = layout.brokers[&leader].clone();
        let position = match links.iter().position(|link| link.address == address) {
            Some(position) => position,
            None => {
                let connection = Connection::open(&address).await?;
                let version = connection.version(ApiKey::Produce, 3, 9)?;
                links.push(Link {
                    connection: Some(connection),
                    address,
                    version,
                    partitions: Vec::new(),
                    sealed: VecDeque::new(),
                    in_flight: 0,
                });
                links.len() - 1
            }
        };
        links[position].partitions.push(partition);
        link_of.insert(partition, position);
    }
    Ok(link_of)
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Producer {
    fn make(&mut self, made: Instant) {
        let shared = &self.shared;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let random = next_random(&mut self.random);
        let (key, partition) = match &shared.keys {
            None => (None, self.partitions[self.sticky]),
            Some(table) => {
                let key = table.draw(random);
                (Some(table.key(key)), table.partitions[key])
            }
        };
        let sent_us = shared.clock.at_us(made);
        let header = MessageHeader {
            run_id: shared.run_id,
            producer: self.index,
            sequence,
            sent_us,
        }
        .to_bytes();
        let fill = shared.args.message_bytes - MESSAGE_HEADER_BYTES;
        let start = (random >> 32) as usize % (shared.filler.len() - fill).max(1);
        let filler = &shared.filler[start..start + fill];
        let batch_bytes = shared.args.batch_bytes;
        let open = self.open.entry(partition).or_insert_with(|| Open {
            builder: BatchBuilder::new(batch_bytes + 64),
            opened: made,
            messages: Vec::new(),
            bytes: 0,
        });
        open.builder
            .append(key, &header, filler, (sent_us / 1000) as i64);
        open.messages.push((sequence, made));
        let bytes = shared.args.message_bytes + key.map_or(0, <[u8]>::len);
        open.bytes += bytes;
        self.buffered_bytes += bytes;
        Live::add(&shared.live.sent, 1);
        self.result.sent += 1;
        self.result.sent_bytes += bytes as u64;
        // Sealed as soon as the next record would not fit, so that a batch
        // never grows past --batch-bytes (a broker refuses batches over
        // its limit) unless one record alone is larger.
        if open.builder.len_bytes() + bytes + RECORD_OVERHEAD_BYTES_MAX > batch_bytes {
            self.seal(partition);
        }
    }

    /// Closes `partition`'s open batch and queues it for its leader.
    fn seal(&mut self, partition: i32) {
        let Some(open) = self.open.remove(&partition) else {
            return;
        };
        if self.shared.keys.is_none() && self.partitions[self.sticky] == partition {
            self.sticky = (self.sticky + 1) % self.partitions.len();
        }
        let link = self.link_of.get(&partition).copied();
        match open.builder.seal(self.shared.args.compression) {
            Ok(batch) if link.is_none() => {
                let batch = Sealed {
                    partition,
                    batch,
                    messages: open.messages,
                    bytes: open.bytes,
                };
                self.fail(&[batch], format!("partition {partition} has no leader"));
            }
            Ok(batch) => self.links[link.expect("checked")].sealed.push_back(Sealed {
                partition,
                batch,
                messages: open.messages,
                bytes: open.bytes,
            }),
            Err(error) => {
                self.shared.live.error(error, open.messages.len() as u64);
                self.result.errors += open.messages.len() as u64;
                self.buffered_bytes -= open.bytes;
            }
        }
    }

    fn nothing_queued(&self) -> bool {
        self.open.is_empty() && self.links.iter().all(|link| link.sealed.is_empty())
    }

    fn oldest_lingering(&self) -> Option<Instant> {
        self.open
            .iter()
            .filter(|(partition, _)| {
                self.link_of
                    .get(partition)
                    .is_some_and(|&link| self.links[link].in_flight < self.shared.args.in_flight)
            })
            .map(|(_, open)| open.opened)
            .min()
    }

    /// Sends what is ready to every broker with room for a request.
    async fn drain(&mut self, now: Instant, flush: bool, linger: Duration) {
        let in_flight_max = self.shared.args.in_flight;
        for link in 0..self.links.len() {
            while self.links[link].in_flight < in_flight_max {
                let ready: Vec<i32> = self.links[link]
                    .partitions
                    .iter()
                    .copied()
                    .filter(|partition| {
                        self.open.get(partition).is_some_and(|open| {
                            flush || now.saturating_duration_since(open.opened) >= linger
                        })
                    })
                    .collect();
                for partition in ready {
                    self.seal(partition);
                }
                if self.links[link].sealed.is_empty() {
                    break;
                }
                self.send(link).await;
            }
        }
    }

    /// One produce request to `link`: its queued batches, one per
    /// partition, up to REQUEST_BYTES_MAX.
    async fn send(&mut self, link_index: usize) {
        let link = &mut self.links[link_index];
        let mut batches: Vec<Sealed> = Vec::new();
        let mut later: VecDeque<Sealed> = VecDeque::new();
        let mut bytes = 0usize;
        while let Some(batch) = link.sealed.pop_front() {
            let fits = batches.is_empty() || bytes + batch.batch.len() <= REQUEST_BYTES_MAX;
            if fits && !batches.iter().any(|b| b.partition == batch.partition) {
                bytes += batch.batch.len();
                batches.push(batch);
            } else {
                later.push_back(batch);
                if bytes >= REQUEST_BYTES_MAX {
                    break;
                }
            }
        }
        later.extend(link.sealed.drain(..));
        link.sealed = later;
        let acks = self.shared.args.acks;
        let request = ProduceRequest::default()
            .with_acks(acks.code())
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name(&self.shared.args.topic))
                .with_partition_data(
                    batches
                        .iter()
                        .map(|batch| {
                            PartitionProduceData::default()
                                .with_index(batch.partition)
                                .with_records(Some(batch.batch.clone()))
                        })
                        .collect(),
                )]);
        let tag = self.next_tag;
        self.next_tag += 1;
        let version = link.version;
        let outcome = match link.connection.as_mut() {
            None => Err(BenchError::Connect(format!(
                "the connection to {} broke earlier",
                link.address
            ))),
            Some(connection) => match connection.encode(ApiKey::Produce, version, &request) {
                Err(error) => Err(error),
                Ok((correlation_id, frame)) => {
                    let reply = (acks != Acks::None)
                        .then(|| (correlation_id, ReplyTo::Channel(tag, self.replies.clone())));
                    connection.send(frame, reply).await
                }
            },
        };
        match outcome {
            Err(error) => {
                if matches!(error, BenchError::Connect(_)) {
                    link.connection = None;
                }
                self.fail(&batches, format!("{error}"));
            }
            Ok(()) if acks == Acks::None => {
                // No response will come: the batch counts as sent only.
                for batch in &batches {
                    self.buffered_bytes -= batch.bytes;
                }
            }
            Ok(()) => {
                link.in_flight += 1;
                self.in_flight.insert(
                    tag,
                    InFlight {
                        link: link_index,
                        batches,
                    },
                );
            }
        }
    }

    /// Asks who leads the partitions now, and queues the batches whose
    /// leader moved (and those queued for a node that no longer leads their
    /// partition) for the new leaders.
    async fn reroute(&mut self) {
        let now = Instant::now();
        self.refresh_at = None;
        let args = &self.shared.args;
        let fresh = async {
            if self.metadata.is_none() {
                self.metadata = Some(crate::cluster::bootstrap(&args.bootstrap).await?);
            }
            let connection = self.metadata.as_mut().expect("just opened");
            crate::cluster::layout(connection, &args.topic, false).await
        }
        .await;
        let layout = match fresh {
            Ok(Some(layout)) => layout,
            Ok(None) => {
                // A partition has no leader yet: ask again shortly.
                self.refresh_at = Some(now + Duration::from_millis(REROUTE_BACKOFF_MS));
                return;
            }
            Err(error) => {
                self.metadata = None;
                self.shared.live.note(format!("metadata: {error}"));
                self.refresh_at = Some(now + Duration::from_millis(REROUTE_BACKOFF_MS));
                return;
            }
        };
        if layout.leaders.keys().ne(self.link_of.keys()) {
            self.shared
                .live
                .note("the topic's partitions changed during the run".into());
        }
        match route(&mut self.links, &layout).await {
            Ok(link_of) => self.link_of = link_of,
            Err(error) => {
                self.shared.live.note(format!("reconnecting: {error}"));
                self.refresh_at = Some(now + Duration::from_millis(REROUTE_BACKOFF_MS));
                return;
            }
        }
        let mut queued: Vec<Sealed> = std::mem::take(&mut self.rerouting);
        for link in &mut self.links {
            queued.extend(link.sealed.drain(..));
        }
        for batch in queued {
            match self.link_of.get(&batch.partition) {
                Some(&link) => self.links[link].sealed.push_back(batch),
                None => self.fail(&[batch], "a partition disappeared".into()),
            }
        }
    }

    /// Counts everything not acknowledged yet as errors.
    fn give_up(&mut self) {
        let waiting: Vec<Sealed> = std::mem::take(&mut self.in_flight)
            .into_values()
            .flat_map(|in_flight| in_flight.batches)
            .chain(std::mem::take(&mut self.rerouting))
            .collect();
        let reason = format!("no answer within {} s of the end", ANSWER_GRACE_MS / 1000);
        self.fail(&waiting, reason.clone());
        let partitions: Vec<i32> = self.open.keys().copied().collect();
        for partition in partitions {
            self.seal(partition);
        }
        let queued: Vec<Sealed> = self
            .links
            .iter_mut()
            .flat_map(|link| link.sealed.drain(..))
            .collect();
        self.fail(&queued, reason);
    }

    fn fail(&mut self, batches: &[Sealed], reason: String) {
        if batches.is_empty() {
            return;
        }
        let count: u64 = batches.iter().map(|b| b.messages.len() as u64).sum();
        self.shared.live.error(reason, count);
        self.result.errors += count;
        for batch in batches {
            self.buffered_bytes -= batch.bytes;
        }
    }

    fn complete(&mut self, tag: u64, reply: Result<Bytes, String>) {
        let Some(InFlight { link, batches }) = self.in_flight.remove(&tag) else {
            return;
        };
        self.links[link].in_flight -= 1;
        let address = self.links[link].address.clone();
        let version = self.links[link].version;
        let response: ProduceResponse = match reply
            .map_err(BenchError::Connect)
            .and_then(|body| decode_response(ApiKey::Produce, version, body))
        {
            Ok(response) => response,
            Err(error) => {
                if matches!(error, BenchError::Connect(_)) {
                    self.links[link].connection = None;
                }
                self.fail(&batches, format!("{address}: {error}"));
                return;
            }
        };
        let now = Instant::now();
        self.latencies.clear();
        for batch in batches {
            self.buffered_bytes -= batch.bytes;
            let answer = response
                .responses
                .iter()
                .flat_map(|topic| topic.partition_responses.iter())
                .find(|answer| answer.index == batch.partition);
            let count = batch.messages.len() as u64;
            let Some(answer) = answer else {
                self.shared.live.error(
                    format!("{address} did not answer for partition {}", batch.partition),
                    count,
                );
                self.result.errors += count;
                continue;
            };
            let first_made = batch.messages.first().map_or(now, |m| m.1);
            let young = now.saturating_duration_since(first_made)
                < Duration::from_millis(DELIVERY_TIMEOUT_MS);
            if leader_moved(answer.error_code) && young {
                self.result.rerouted_batches += 1;
                self.shared.live.note(format!(
                    "produce sent to the new leader after {}",
                    error_name(answer.error_code)
                ));
                self.buffered_bytes += batch.bytes; // still held
                self.rerouting.push(batch);
                self.refresh_at
                    .get_or_insert(now + Duration::from_millis(REROUTE_BACKOFF_MS));
                continue;
            }
            if answer.error_code != 0 {
                self.shared.live.error(
                    format!("produce refused: {}", error_name(answer.error_code)),
                    count,
                );
                self.result.errors += count;
                continue;
            }
            let end = answer.base_offset + count as i64;
            let entry = self
                .result
                .end_offsets
                .entry(batch.partition)
                .or_insert(end);
            *entry = (*entry).max(end);
            for &(sequence, made) in &batch.messages {
                self.result.acked.insert(sequence);
                let micros = now.saturating_duration_since(made).as_micros() as u64;
                self.latencies.push(micros.clamp(1, LATENCY_US_MAX));
            }
            let bytes = batch.bytes as u64;
            self.result.acked_bytes += bytes;
            Live::add(&self.shared.live.acked, count);
            Live::add(&self.shared.live.acked_bytes, bytes);
        }
        for &micros in &self.latencies {
            self.result.latency.saturating_record(micros);
        }
        Live::record(&self.shared.live.interval_produce, &self.latencies);
        if !self.latencies.is_empty() {
            self.result.last_ack = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_keys_favour_the_first() {
        let table = KeyTable::new(Keys::Zipf, 1000, 6).expect("keyed");
        let mut state = 1u64;
        let mut hits = [0u32; 1000];
        for _ in 0..20_000 {
            hits[table.draw(next_random(&mut state))] += 1;
        }
        assert!(hits[0] > hits[10] && hits[10] > hits[500]);
        assert_eq!(table.key(7), b"key-00000007");
        assert!(table.partitions.iter().all(|&p| (0..6).contains(&p)));
    }
}
