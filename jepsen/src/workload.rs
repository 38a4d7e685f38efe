//! The queue workload: producer workers send unique values to random keys
//! (partitions of one topic), consumer workers `assign` partitions and poll,
//! all through librdkafka (the `rdkafka` crate), used as a black box. Every
//! operation is recorded as an invocation and a completion.
//!
//! A send produces one to [`MESSAGES_PER_SEND_MAX`] messages with an
//! idempotent, `acks=all` producer and waits for every delivery report. It is
//! `ok` when all were acknowledged (with their offsets), `fail` when none can
//! have been written (librdkafka's `NOT_PERSISTED` status, except for a
//! timeout: see `--trust-timeouts`), and `info` otherwise. After an `info`, the worker continues as a new process.
//!
//! The `offsets` workload (opt-in: it needs the broker's group coordinator)
//! adds workers that commit unique offsets for a few consumer groups and
//! fetch them back, without joining the groups (as a client that uses the
//! coordinator only to store offsets); each (group, key) is a register for
//! the linearizability checker. A commit that returns an error is `info`:
//! the broker may have written it anyway.
//!
//! The `subscribe` workload (opt-in too) adds consumers in one consumer group
//! that `subscribe` to the topic and poll; every rebalance is recorded as an
//! assignment between two polls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use runnel_checkers::history::{EventType, Key, ProcessId, QueueOp, Record, SentMessage};

use crate::history::Recorder;

/// Most messages one send operation produces.
pub const MESSAGES_PER_SEND_MAX: usize = 3;
/// Most records one poll operation returns.
pub const RECORDS_PER_POLL_MAX: usize = 100;
/// How long one poll operation waits for records.
pub const POLL_WAIT_MS: u64 = 200;
/// librdkafka's `message.timeout.ms`: a delivery report comes within it.
pub const MESSAGE_TIMEOUT_MS: u64 = 10_000;
/// The process id of the final reader.
pub const FINAL_READER: ProcessId = 1_000_000_000;
/// The consumer group of the `subscribe` workload.
pub const SUBSCRIBE_GROUP: &str = "jepsen-subscribe";
/// Consumer groups whose committed offsets the `offsets` workload uses.
pub const OFFSET_GROUPS: usize = 2;
/// The value recorded for a record whose payload no send of this run wrote.
pub const FOREIGN_VALUE: u64 = u64::MAX;
/// Chance, per poll, that a consumer reassigns first.
pub const REASSIGN_PER_POLL: f64 = 0.03;

/// What the workers share.
pub struct Workload {
    pub bootstrap: String,
    pub topic: String,
    pub keys: u32,
    pub producers: u32,
    pub consumers: u32,
    /// Count a timed-out send that librdkafka calls `NOT_PERSISTED` as
    /// failed (strict) rather than indeterminate.
    pub trust_timeouts: bool,
    /// Committed-offsets workers (0: the workload is off).
    pub offset_workers: u32,
    /// Consumer-group (`subscribe`) workers (0: the workload is off).
    pub subscribers: u32,
    /// Commit and fetch operations per second, per offsets worker.
    pub offset_rate: f64,
    /// Send operations per second, over all producers.
    pub send_rate: f64,
    /// Poll operations per second, per consumer.
    pub poll_rate: f64,
    pub seed: u64,
    pub recorder: Arc<Recorder>,
    pub stop: Arc<AtomicBool>,
    pub next_value: AtomicU64,
}

/// Delivery reports, by value.
#[derive(Default)]
struct Deliveries {
    results: Mutex<BTreeMap<u64, Delivered>>,
    /// Believe librdkafka's `NOT_PERSISTED` for a message that timed out.
    trust_timeouts: bool,
}

#[derive(Clone, Debug)]
enum Delivered {
    Ok { key: Key, offset: u64 },
    NotPersisted(String),
    Maybe(String),
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, value: Self::DeliveryOpaque) {
        let delivered = match result {
            Ok(message) => Delivered::Ok {
                key: message.partition().max(0) as Key,
                offset: message.offset().max(0) as u64,
            },
            Err((error, message)) => {
                // SAFETY: the message pointer is valid for this callback.
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) };
                // librdkafka derives a timed-out message's status from the
                // broker's earlier answers: NOT_LEADER_OR_FOLLOWER counts as
                // "not written", which runnel also answers when leadership
                // moved after the batch was proposed (it may still commit).
                // So a timeout is indeterminate unless told otherwise.
                let timed_out = matches!(
                    error,
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
                );
                if status
                    == rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED
                    && (!timed_out || self.trust_timeouts)
                {
                    Delivered::NotPersisted(error.to_string())
                } else {
                    Delivered::Maybe(error.to_string())
                }
            }
        };
        self.results
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(*value, delivered);
    }
}

fn producer(bootstrap: &str, trust_timeouts: bool) -> Result<BaseProducer<Deliveries>, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
        .set("request.timeout.ms", "3000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("retry.backoff.ms", "50")
        .create_with_context(Deliveries {
            results: Mutex::default(),
            trust_timeouts,
        })
        .map_err(|error| format!("producer: {error}"))
}

/// A consumer for manual assignment, reading committed records only. An
/// offset the broker calls out of range is an error rather than a silent
/// jump to the start (`auto.offset.reset=error`): every position these
/// consumers ask for is one they read up to, so the worker resumes from it
/// (see [`is_out_of_range`]).
pub fn consumer(bootstrap: &str, group: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|error| format!("consumer: {error}"))
}

impl Workload {
    fn workers(&self) -> u64 {
        u64::from(self.producers + self.consumers + self.offset_workers + self.subscribers)
    }

    /// Sleeps until `next`, or returns false if the run is stopping.
    fn pace(&self, next: Instant) -> bool {
        while Instant::now() < next {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(20)));
        }
        !self.stop.load(Ordering::Relaxed)
    }

    /// Producer worker `index` until the run stops.
    pub fn run_producer(&self, index: u32) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (0x5e0d << 16) ^ u64::from(index));
        let mut process = u64::from(index);
        let interval = Duration::from_secs_f64(f64::from(self.producers) / self.send_rate.max(0.1));
        let mut producer = match producer(&self.bootstrap, self.trust_timeouts) {
            Ok(producer) => producer,
            Err(error) => {
                eprintln!("jepsen: {error}");
                return;
            }
        };
        let mut next = Instant::now();
        while self.pace(next) {
            // No catching up after a slow operation: a burst after every
            // fault would measure the backlog, not the cluster.
            next = (next + interval).max(Instant::now());
            let count = rng.gen_range(1..=MESSAGES_PER_SEND_MAX);
            let messages: Vec<SentMessage> = (0..count)
                .map(|_| SentMessage {
                    key: rng.gen_range(0..self.keys),
                    value: self.next_value.fetch_add(1, Ordering::Relaxed),
                    offset: None,
                })
                .collect();
            let event_type = self.send(process, &producer, messages);
            if event_type == EventType::Info {
                process += self.workers();
            }
            if let Some((code, reason)) = producer.client().fatal_error() {
                // A fatal idempotence error ends the producer; a new one is a
                // new process.
                eprintln!("jepsen: producer {process}: fatal {code:?}: {reason}; recreating it");
                process += self.workers();
                match self::producer(&self.bootstrap, self.trust_timeouts) {
                    Ok(fresh) => producer = fresh,
                    Err(error) => {
                        eprintln!("jepsen: {error}");
                        return;
                    }
                }
            }
        }
    }

    /// One send operation by `process`: records its invocation, produces the
    /// messages in order, waits for every delivery report and records the
    /// completion. Returns how it completed.
    fn send(
        &self,
        process: ProcessId,
        producer: &BaseProducer<Deliveries>,
        messages: Vec<SentMessage>,
    ) -> EventType {
        self.recorder.record(
            process,
            EventType::Invoke,
            QueueOp::Send {
                messages: messages.clone(),
            },
            None,
        );
        let mut outcomes: BTreeMap<u64, Delivered> = BTreeMap::new();
        for message in &messages {
            let payload = message.value.to_string();
            let record = BaseRecord::<(), String, Box<u64>>::with_opaque_to(
                &self.topic,
                Box::new(message.value),
            )
            .partition(message.key as i32)
            .payload(&payload);
            if let Err((error, _)) = producer.send(record) {
                // Never enqueued: it cannot have been written.
                outcomes.insert(message.value, Delivered::NotPersisted(error.to_string()));
            }
        }
        // librdkafka reports every message within message.timeout.ms; the
        // margin covers a report queued just at the end.
        let deadline = Instant::now() + Duration::from_millis(MESSAGE_TIMEOUT_MS + 5_000);
        while outcomes.len() < messages.len() && Instant::now() < deadline {
            producer.poll(Duration::from_millis(10));
            let mut results = producer
                .context()
                .results
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for message in &messages {
                if let Some(delivered) = results.remove(&message.value) {
                    outcomes.insert(message.value, delivered);
                }
            }
        }
        let all_ok = messages.iter().all(|message| {
            matches!(outcomes.get(&message.value), Some(Delivered::Ok { key, .. }) if *key == message.key)
        });
        let none_written = messages.iter().all(|message| {
            matches!(
                outcomes.get(&message.value),
                Some(Delivered::NotPersisted(_))
            )
        });
        let errors: Vec<String> = outcomes
            .values()
            .filter_map(|delivered| match delivered {
                Delivered::Ok { .. } => None,
                Delivered::NotPersisted(error) | Delivered::Maybe(error) => Some(error.clone()),
            })
            .collect();
        let (event_type, error) = if all_ok {
            (EventType::Ok, None)
        } else if none_written {
            (EventType::Fail, Some(errors.join("; ")))
        } else if outcomes.len() < messages.len() {
            (
                EventType::Info,
                Some("no delivery report in time".to_string()),
            )
        } else {
            (EventType::Info, Some(errors.join("; ")))
        };
        let completed = messages
            .into_iter()
            .map(|message| SentMessage {
                offset: match outcomes.get(&message.value) {
                    Some(Delivered::Ok { offset, .. }) if event_type == EventType::Ok => {
                        Some(*offset)
                    }
                    _ => None,
                },
                ..message
            })
            .collect();
        self.recorder.record(
            process,
            event_type,
            QueueOp::Send {
                messages: completed,
            },
            error,
        );
        event_type
    }

    /// Records an assignment of `keys` by `process`, each from its offset.
    fn assign(
        &self,
        process: ProcessId,
        consumer: &BaseConsumer,
        from: &BTreeMap<Key, Offset>,
    ) -> bool {
        let keys: Vec<Key> = from.keys().copied().collect();
        self.recorder.record(
            process,
            EventType::Invoke,
            QueueOp::Assign { keys: keys.clone() },
            None,
        );
        let mut list = TopicPartitionList::new();
        let mut result = Ok(());
        for (&key, &offset) in from {
            if let Err(error) = list.add_partition_offset(&self.topic, key as i32, offset) {
                result = Err(error);
            }
        }
        let result = result.and_then(|()| consumer.assign(&list));
        let ok = result.is_ok();
        self.recorder.record(
            process,
            if ok { EventType::Ok } else { EventType::Fail },
            QueueOp::Assign { keys },
            result.err().map(|error| error.to_string()),
        );
        ok
    }

    /// One poll operation by `process`: up to [`RECORDS_PER_POLL_MAX`]
    /// records within [`POLL_WAIT_MS`]. Returns the records read, per key,
    /// and whether the broker called a position out of range.
    fn poll(
        &self,
        process: ProcessId,
        consumer: &BaseConsumer,
    ) -> (BTreeMap<Key, Vec<Record>>, bool) {
        self.recorder.record(
            process,
            EventType::Invoke,
            QueueOp::Poll {
                records: BTreeMap::new(),
            },
            None,
        );
        let Polled {
            records,
            error,
            out_of_range,
            ..
        } = poll_records(consumer, Duration::from_millis(POLL_WAIT_MS), || false);
        let event_type = if error.is_some() && records.is_empty() {
            EventType::Fail
        } else {
            EventType::Ok
        };
        self.recorder.record(
            process,
            event_type,
            QueueOp::Poll {
                records: records.clone(),
            },
            error,
        );
        (records, out_of_range)
    }

    /// Consumer worker `index` until the run stops.
    pub fn run_consumer(&self, index: u32) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (0xc0de << 16) ^ u64::from(index));
        let process = u64::from(self.producers + index);
        let group = format!("jepsen-assign-{index}");
        let mut consumer = match consumer(&self.bootstrap, &group) {
            Ok(consumer) => consumer,
            Err(error) => {
                eprintln!("jepsen: {error}");
                return;
            }
        };
        let all: BTreeMap<Key, Offset> =
            (0..self.keys).map(|key| (key, Offset::Beginning)).collect();
        let mut assigned = self.assign(process, &consumer, &all);
        // The next offset to read per key, as far as this consumer knows.
        let mut positions: BTreeMap<Key, u64> = BTreeMap::new();
        let mut resume = false;
        let interval = Duration::from_secs_f64(1.0 / self.poll_rate.max(0.1));
        let mut next = Instant::now();
        while self.pace(next) {
            // No catching up after a slow operation: a burst after every
            // fault would measure the backlog, not the cluster.
            next = (next + interval).max(Instant::now());
            if !assigned || resume || rng.gen_bool(REASSIGN_PER_POLL) {
                // A new assignment: every key, or a random subset; each from
                // the start or from where this consumer was. After an out of
                // range error, every key from where this consumer was.
                let mut from: BTreeMap<Key, Offset> = BTreeMap::new();
                for key in (0..self.keys).filter(|_| resume) {
                    let offset = positions.get(&key).map_or(Offset::Beginning, |&position| {
                        Offset::Offset(position as i64)
                    });
                    from.insert(key, offset);
                }
                let random = !resume;
                resume = false;
                for key in (0..self.keys).filter(|_| random) {
                    if !rng.gen_bool(0.7) {
                        continue;
                    }
                    let offset = match positions.get(&key) {
                        Some(&position) if rng.gen_bool(0.5) => Offset::Offset(position as i64),
                        _ => Offset::Beginning,
                    };
                    from.insert(key, offset);
                }
                let from = if from.is_empty() { all.clone() } else { from };
                // A fresh consumer for each new assignment: librdkafka 2.x
                // asserts (rd_kafka_assignment_partition_stopped) when one
                // consumer is reassigned while partitions are still stopping.
                drop(consumer);
                consumer = match self::consumer(&self.bootstrap, &group) {
                    Ok(consumer) => consumer,
                    Err(error) => {
                        eprintln!("jepsen: {error}");
                        return;
                    }
                };
                assigned = self.assign(process, &consumer, &from);
                continue;
            }
            let (records, out_of_range) = self.poll(process, &consumer);
            for (key, records) in records {
                if let Some(last) = records.last() {
                    positions.insert(key, last.offset + 1);
                }
            }
            resume = out_of_range;
        }
    }

    /// After the run: reads every key from the start up to its high
    /// watermark, as the final reader, within `timeout`. Returns what it could
    /// not finish, if anything.
    pub fn final_read(&self, timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let mut consumer = consumer(&self.bootstrap, "jepsen-final-read")?;
        let mut ends: BTreeMap<Key, i64> = BTreeMap::new();
        for key in 0..self.keys {
            loop {
                match consumer.fetch_watermarks(&self.topic, key as i32, Duration::from_secs(3)) {
                    Ok((_, high)) => {
                        ends.insert(key, high);
                        break;
                    }
                    Err(error) if Instant::now() > deadline => {
                        return Err(format!("high watermark of key {key}: {error}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        let all: BTreeMap<Key, Offset> =
            (0..self.keys).map(|key| (key, Offset::Beginning)).collect();
        let mut assigned = false;
        let mut next: BTreeMap<Key, i64> = BTreeMap::new();
        let mut read = 0u64;
        let unfinished = |next: &BTreeMap<Key, i64>| -> Vec<Key> {
            ends.iter()
                .filter(|(key, &end)| end > 0 && next.get(key).copied().unwrap_or(0) < end)
                .map(|(&key, _)| key)
                .collect()
        };
        while !unfinished(&next).is_empty() {
            if Instant::now() > deadline {
                return Err(format!(
                    "keys {:?} not read to their end within {} s",
                    unfinished(&next),
                    timeout.as_secs()
                ));
            }
            if !assigned {
                // From where it was (the start at first), on a fresh
                // consumer (see run_consumer).
                let from: BTreeMap<Key, Offset> = all
                    .keys()
                    .map(|&key| {
                        let offset = next
                            .get(&key)
                            .map_or(Offset::Beginning, |&position| Offset::Offset(position));
                        (key, offset)
                    })
                    .collect();
                drop(consumer);
                consumer = self::consumer(&self.bootstrap, "jepsen-final-read")?;
                assigned = self.assign(FINAL_READER, &consumer, &from);
                if !assigned {
                    std::thread::sleep(Duration::from_millis(200));
                }
                continue;
            }
            let (records, out_of_range) = self.poll(FINAL_READER, &consumer);
            for (key, records) in records {
                read += records.len() as u64;
                if let Some(last) = records.last() {
                    next.insert(key, last.offset as i64 + 1);
                }
            }
            assigned = !out_of_range;
        }
        Ok(read)
    }
}

/// Notes every rebalance of a subscribed consumer and what it was assigned.
#[derive(Default)]
struct RebalanceWatch {
    changed: AtomicBool,
    keys: Mutex<Vec<Key>>,
}

impl ClientContext for RebalanceWatch {}

impl ConsumerContext for RebalanceWatch {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let keys = match rebalance {
            Rebalance::Assign(list) => list
                .elements()
                .iter()
                .map(|element| element.partition().max(0) as Key)
                .collect(),
            Rebalance::Revoke(_) => Vec::new(),
            Rebalance::Error(_) => return,
        };
        *self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = keys;
        self.changed.store(true, Ordering::SeqCst);
    }
}

impl Workload {
    /// Consumer-group worker `index` (`subscribe`) until the run stops. Each
    /// rebalance is recorded as an assignment between two polls, so that the
    /// poll-order checks start afresh where the group moved partitions.
    pub fn run_subscriber(&self, index: u32) {
        let mut process = u64::from(self.producers + self.consumers + self.offset_workers + index);
        let watch = RebalanceWatch::default();
        let created: Result<BaseConsumer<RebalanceWatch>, _> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", SUBSCRIBE_GROUP)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "100")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000")
            .set("isolation.level", "read_committed")
            .create_with_context(watch);
        let consumer = match created {
            Ok(consumer) => consumer,
            Err(error) => {
                eprintln!("jepsen: subscriber: {error}");
                return;
            }
        };
        if let Err(error) = consumer.subscribe(&[self.topic.as_str()]) {
            eprintln!("jepsen: subscribe: {error}");
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / self.poll_rate.max(0.1));
        let mut next = Instant::now();
        let mut deferred: Option<(Key, Record)> = None;
        while self.pace(next) {
            next = (next + interval).max(Instant::now());
            let watch = consumer.context();
            self.recorder.record(
                process,
                EventType::Invoke,
                QueueOp::Poll {
                    records: BTreeMap::new(),
                },
                None,
            );
            let polled = poll_records(&consumer, Duration::from_millis(POLL_WAIT_MS), || {
                watch.changed.load(Ordering::SeqCst)
            });
            let mut records = polled.records;
            if let Some((key, record)) = deferred.take() {
                records.entry(key).or_default().insert(0, record);
            }
            let event_type = if polled.error.is_some() && records.is_empty() {
                EventType::Fail
            } else {
                EventType::Ok
            };
            self.recorder
                .record(process, event_type, QueueOp::Poll { records }, polled.error);
            deferred = polled.deferred;
            if watch.changed.swap(false, Ordering::SeqCst) {
                let keys = watch
                    .keys
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                let op = QueueOp::Assign { keys };
                self.recorder
                    .record(process, EventType::Invoke, op.clone(), None);
                self.recorder.record(process, EventType::Ok, op, None);
            }
            if consumer.client().fatal_error().is_some() {
                process += self.workers();
            }
        }
    }

    /// Committed-offsets worker `index` until the run stops.
    pub fn run_offsets(&self, index: u32) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (0x0ff5 << 16) ^ u64::from(index));
        let mut process = u64::from(self.producers + self.consumers + index);
        let groups: Vec<String> = (0..OFFSET_GROUPS)
            .map(|group| format!("jepsen-offsets-{group}"))
            .collect();
        let mut consumers = Vec::new();
        for group in &groups {
            match consumer(&self.bootstrap, group) {
                Ok(consumer) => consumers.push(consumer),
                Err(error) => {
                    eprintln!("jepsen: {error}");
                    return;
                }
            }
        }
        let interval = Duration::from_secs_f64(1.0 / self.offset_rate.max(0.1));
        let mut next = Instant::now();
        while self.pace(next) {
            next = (next + interval).max(Instant::now());
            let which = rng.gen_range(0..groups.len());
            let (group, consumer) = (&groups[which], &consumers[which]);
            let key = rng.gen_range(0..self.keys);
            let mut list = TopicPartitionList::new();
            if rng.gen_bool(0.5) {
                let offset = self.next_value.fetch_add(1, Ordering::Relaxed);
                let op = QueueOp::Commit {
                    group: group.clone(),
                    key,
                    offset,
                };
                self.recorder
                    .record(process, EventType::Invoke, op.clone(), None);
                let result = list
                    .add_partition_offset(&self.topic, key as i32, Offset::Offset(offset as i64))
                    .and_then(|()| consumer.commit(&list, rdkafka::consumer::CommitMode::Sync));
                match result {
                    Ok(()) => {
                        self.recorder.record(process, EventType::Ok, op, None);
                    }
                    Err(error) => {
                        self.recorder
                            .record(process, EventType::Info, op, Some(error.to_string()));
                        process += self.workers();
                    }
                }
            } else {
                let invoked = QueueOp::FetchCommitted {
                    group: group.clone(),
                    key,
                    offset: None,
                };
                self.recorder
                    .record(process, EventType::Invoke, invoked.clone(), None);
                let result = list
                    .add_partition_offset(&self.topic, key as i32, Offset::Invalid)
                    .and_then(|()| consumer.committed_offsets(list, Duration::from_secs(5)));
                let read = result.map_err(|error| error.to_string()).and_then(|found| {
                    let element = found
                        .find_partition(&self.topic, key as i32)
                        .ok_or_else(|| "the answer lacks the partition".to_string())?;
                    element.error().map_err(|error| error.to_string())?;
                    match element.offset() {
                        Offset::Offset(offset) if offset >= 0 => Ok(Some(offset as u64)),
                        Offset::Invalid => Ok(None),
                        other => Err(format!("unexpected committed offset {other:?}")),
                    }
                });
                match read {
                    Ok(offset) => self.recorder.record(
                        process,
                        EventType::Ok,
                        QueueOp::FetchCommitted {
                            group: group.clone(),
                            key,
                            offset,
                        },
                        None,
                    ),
                    // A fetch changes nothing: a failed one is simply a fail.
                    Err(error) => {
                        self.recorder
                            .record(process, EventType::Fail, invoked, Some(error))
                    }
                };
            }
        }
    }
}

/// What one poll operation read.
struct Polled {
    records: BTreeMap<Key, Vec<Record>>,
    error: Option<String>,
    /// A record that arrived after `interrupted` turned true: it belongs to
    /// the next operation.
    deferred: Option<(Key, Record)>,
    /// Some error said a fetch position was out of range.
    out_of_range: bool,
}

/// Whether a consumer error says its fetch position is gone: the broker
/// called it out of range, or librdkafka's leader-epoch validation (KIP-320)
/// concluded the log was truncated below it. With `auto.offset.reset=error`
/// either is an error (`_AUTO_OFFSET_RESET`, `_LOG_TRUNCATION`) instead of a
/// jump to the start.
pub fn is_out_of_range(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "out of range",
        "autooffsetreset",
        "auto.offset.reset",
        "truncation",
    ]
    .iter()
    .any(|needle| error.contains(needle))
}

/// Polls `consumer` for up to `wait`, collecting records by key; stops early
/// at [`RECORDS_PER_POLL_MAX`], or at the first record that arrives once
/// `interrupted()` is true (a rebalance happened inside the poll), which it
/// hands back unrecorded.
fn poll_records<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    wait: Duration,
    interrupted: impl Fn() -> bool,
) -> Polled {
    let deadline = Instant::now() + wait;
    let mut polled = Polled {
        records: BTreeMap::new(),
        error: None,
        deferred: None,
        out_of_range: false,
    };
    let mut count = 0usize;
    while count < RECORDS_PER_POLL_MAX {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match consumer.poll(deadline - now) {
            None => break,
            Some(Err(problem)) => {
                let problem = problem.to_string();
                polled.out_of_range |= is_out_of_range(&problem);
                polled.error = Some(problem);
            }
            Some(Ok(message)) => {
                let value = message
                    .payload()
                    .and_then(|payload| std::str::from_utf8(payload).ok())
                    .and_then(|text| text.parse::<u64>().ok())
                    // A payload that is not one of ours becomes a value no
                    // send uses ([`FOREIGN_VALUE`]); the report counts them.
                    .unwrap_or(FOREIGN_VALUE);
                let key = message.partition().max(0) as Key;
                let record = Record {
                    offset: message.offset().max(0) as u64,
                    value,
                };
                if interrupted() {
                    polled.deferred = Some((key, record));
                    break;
                }
                polled.records.entry(key).or_default().push(record);
                count += 1;
            }
        }
    }
    polled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_resets_are_recognised_in_librdkafka_errors() {
        for error in [
            "Message consumption error: AutoOffsetReset (Local: No offset to automatically reset to)",
            "Message consumption error: OffsetOutOfRange (Broker: Offset out of range)",
            "Message consumption error: LogTruncation (Local: Partition log truncation detected)",
        ] {
            assert!(is_out_of_range(error), "{error}");
        }
        assert!(!is_out_of_range(
            "Message consumption error: BrokerTransportFailure (Local: Broker transport failure)"
        ));
    }
}
