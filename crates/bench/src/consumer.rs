//! One consumer client: it reads its share of the partitions from where
//! their logs ended before the producers started, with one fetch in flight
//! per broker (as Kafka's consumer does), and stops once it has read up to
//! the offsets the producers were acknowledged, or when the drain time is
//! up. Every value of this run is counted once per producer sequence, and
//! its end-to-end latency is the time now minus the time the producer wrote
//! into it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use tokio::sync::{mpsc, watch};

use crate::cluster::{topic_name, Layout};
use crate::connection::{decode_response, Connection, ReplyTo};
use crate::records::{walk_batches, MessageHeader};
use crate::stats::{latency_histogram, BitSet, Clock, Live, LATENCY_US_MAX};
use crate::{error_name, BenchError};

/// How long a fetch waits at the broker for data.
pub const FETCH_MAX_WAIT_MS: i32 = 100;
/// Most bytes one fetch response may carry, and per partition (Kafka's
/// `max.partition.fetch.bytes` default).
pub const FETCH_MAX_BYTES: i32 = 16 << 20;
pub const FETCH_PARTITION_MAX_BYTES: i32 = 1 << 20;

/// What one consumer read.
pub struct ConsumerResult {
    pub consumed: u64,
    pub consumed_bytes: u64,
    /// Sequences seen, by producer index.
    pub seen: BTreeMap<u32, BitSet>,
    pub duplicates: u64,
    /// Records that are not this run's (another writer on the topic).
    pub foreign: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    pub last_consumed: Option<Instant>,
    /// Partitions that did not reach their end offset in the drain time.
    pub unfinished: Vec<i32>,
}

struct Assigned {
    partition: i32,
    next_offset: i64,
    done: bool,
    failed: bool,
    /// Its leader moved: waiting for fresh metadata.
    moved: bool,
}

/// The pause before asking again who leads a partition.
pub const REROUTE_BACKOFF_MS: u64 = 100;

/// The link to `address`, opened if there is none yet.
async fn link_to(links: &mut Vec<Link>, address: &str) -> Result<usize, BenchError> {
    if let Some(position) = links
        .iter()
        .position(|link| link.connection.address == address)
    {
        return Ok(position);
    }
    let connection = Connection::open(address).await?;
    // v4 is the first with RecordBatch v2; v13 names topics by id, which
    // the bench does not track.
    let version = connection.version(ApiKey::Fetch, 4, 12)?;
    links.push(Link {
        connection,
        version,
        assigned: Vec::new(),
        fetching: false,
    });
    Ok(links.len() - 1)
}

struct Link {
    connection: Connection,
    version: i16,
    assigned: Vec<Assigned>,
    fetching: bool,
}

pub struct ConsumerSetup {
    pub run_id: u64,
    pub clock: Clock,
    pub live: Arc<Live>,
    pub layout: Layout,
    pub topic: String,
    pub bootstrap: String,
    /// Partition to the offset to start from.
    pub start: BTreeMap<i32, i64>,
    pub partitions: Vec<i32>,
}

/// Runs until `ends` carries the end offsets and every partition reached
/// its own, or until `deadline` (also sent on `ends`) passes.
pub async fn run(
    setup: ConsumerSetup,
    mut ends: watch::Receiver<Option<(BTreeMap<i32, i64>, Instant)>>,
) -> Result<ConsumerResult, BenchError> {
    let mut links: Vec<Link> = Vec::new();
    for &partition in &setup.partitions {
        let address = setup
            .layout
            .leader_address(partition)
            .ok_or_else(|| BenchError::Kafka(format!("partition {partition} has no leader")))?;
        let position = link_to(&mut links, address).await?;
        links[position].assigned.push(Assigned {
            partition,
            next_offset: setup.start.get(&partition).copied().unwrap_or(0),
            done: false,
            failed: false,
            moved: false,
        });
    }
    let mut result = ConsumerResult {
        consumed: 0,
        consumed_bytes: 0,
        seen: BTreeMap::new(),
        duplicates: 0,
        foreign: 0,
        errors: 0,
        latency: latency_histogram(),
        last_consumed: None,
        unfinished: Vec::new(),
    };
    let (replies, mut receiver) = mpsc::unbounded_channel::<(u64, Result<Bytes, String>)>();
    let mut latencies: Vec<u64> = Vec::new();
    let mut refresh_at: Option<Instant> = None;
    let mut metadata: Option<Connection> = None;
    loop {
        if refresh_at.is_some_and(|at| at <= Instant::now()) {
            refresh_at = None;
            let fresh = async {
                if metadata.is_none() {
                    metadata = Some(crate::cluster::bootstrap(&setup.bootstrap).await?);
                }
                let connection = metadata.as_mut().expect("just opened");
                crate::cluster::layout(connection, &setup.topic, false).await
            }
            .await;
            match fresh {
                Ok(Some(layout)) => {
                    let mut moved = Vec::new();
                    for link in &mut links {
                        let (going, staying) = std::mem::take(&mut link.assigned)
                            .into_iter()
                            .partition(|a: &Assigned| a.moved);
                        link.assigned = staying;
                        moved.extend(going);
                    }
                    for mut assigned in moved {
                        assigned.moved = false;
                        let address = layout
                            .leader_address(assigned.partition)
                            .map(str::to_string);
                        let position = match address {
                            Some(address) => match link_to(&mut links, &address).await {
                                Ok(position) => position,
                                Err(error) => {
                                    setup.live.error(format!("fetch: {error}"), 1);
                                    result.errors += 1;
                                    assigned.failed = true;
                                    0
                                }
                            },
                            None => {
                                assigned.failed = true;
                                0
                            }
                        };
                        links[position].assigned.push(assigned);
                    }
                }
                Ok(None) | Err(_) => {
                    metadata = None;
                    refresh_at = Some(Instant::now() + Duration::from_millis(REROUTE_BACKOFF_MS));
                }
            }
        }
        let target = ends.borrow().clone();
        if let Some((end_offsets, deadline)) = &target {
            for link in &mut links {
                for assigned in &mut link.assigned {
                    let end = end_offsets.get(&assigned.partition).copied().unwrap_or(0);
                    assigned.done |= assigned.next_offset >= end;
                }
            }
            let all_done = links
                .iter()
                .all(|link| link.assigned.iter().all(|a| a.done || a.failed));
            if (all_done && links.iter().all(|link| !link.fetching)) || Instant::now() > *deadline {
                for link in &links {
                    for assigned in &link.assigned {
                        if !assigned.done {
                            result.unfinished.push(assigned.partition);
                        }
                    }
                }
                return Ok(result);
            }
        }
        for (index, link) in links.iter_mut().enumerate() {
            if link.fetching {
                continue;
            }
            let wanted: Vec<&Assigned> = link
                .assigned
                .iter()
                .filter(|a| !a.done && !a.failed && !a.moved)
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let request = FetchRequest::default()
                .with_replica_id((-1).into())
                .with_max_wait_ms(FETCH_MAX_WAIT_MS)
                .with_min_bytes(1)
                .with_max_bytes(FETCH_MAX_BYTES)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name(&setup.topic))
                    .with_partitions(
                        wanted
                            .iter()
                            .map(|a| {
                                FetchPartition::default()
                                    .with_partition(a.partition)
                                    .with_fetch_offset(a.next_offset)
                                    .with_partition_max_bytes(FETCH_PARTITION_MAX_BYTES)
                            })
                            .collect(),
                    )]);
            let (correlation_id, frame) =
                link.connection
                    .encode(ApiKey::Fetch, link.version, &request)?;
            let sent = link
                .connection
                .send(
                    frame,
                    Some((
                        correlation_id,
                        ReplyTo::Channel(index as u64, replies.clone()),
                    )),
                )
                .await;
            match sent {
                Ok(()) => link.fetching = true,
                Err(error) => {
                    // The connection broke: its partitions are not read
                    // further, and the report says so.
                    setup.live.error(format!("fetch: {error}"), 1);
                    result.errors += 1;
                    for assigned in &mut link.assigned {
                        assigned.failed = true;
                    }
                }
            }
        }
        let deadline = ends.borrow().as_ref().map(|(_, deadline)| *deadline);
        tokio::select! {
            // A broker that stops answering must not hang the bench.
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
            reply = receiver.recv() => {
                let Some((index, reply)) = reply else { continue };
                let link = &mut links[index as usize];
                link.fetching = false;
                let decoded: Result<FetchResponse, BenchError> = reply
                    .map_err(BenchError::Connect)
                    .and_then(|body| decode_response(ApiKey::Fetch, link.version, body));
                let response = match decoded {
                    Ok(response) => response,
                    Err(error) => {
                        setup.live.error(format!("fetch from {}: {error}", link.connection.address), 1);
                        result.errors += 1;
                        for assigned in &mut link.assigned {
                            assigned.failed = true;
                        }
                        continue;
                    }
                };
                if response.error_code != 0 {
                    setup.live.error(format!("fetch refused: {}", error_name(response.error_code)), 1);
                    result.errors += 1;
                    continue;
                }
                let now_us = setup.clock.now_us();
                let bytes_before = result.consumed_bytes;
                latencies.clear();
                for topic in &response.responses {
                    for answer in &topic.partitions {
                        let Some(assigned) = link
                            .assigned
                            .iter_mut()
                            .find(|a| a.partition == answer.partition_index)
                        else {
                            continue;
                        };
                        if matches!(answer.error_code, 5 | 6) {
                            // The leader moved: fetch from the new one.
                            setup.live.note(format!(
                                "fetch sent to the new leader after {}",
                                error_name(answer.error_code)
                            ));
                            assigned.moved = true;
                            refresh_at.get_or_insert(
                                Instant::now() + Duration::from_millis(REROUTE_BACKOFF_MS),
                            );
                            continue;
                        }
                        if answer.error_code != 0 {
                            setup.live.error(
                                format!("fetch refused: {}", error_name(answer.error_code)),
                                1,
                            );
                            result.errors += 1;
                            assigned.failed = true;
                            continue;
                        }
                        let Some(records) = answer.records.clone() else { continue };
                        let walked = walk_batches(records, assigned.next_offset, |_, value| {
                            let Some(header) = MessageHeader::parse(value) else {
                                result.foreign += 1;
                                return;
                            };
                            if header.run_id != setup.run_id {
                                result.foreign += 1;
                                return;
                            }
                            let seen = result.seen.entry(header.producer).or_default();
                            if seen.insert(header.sequence) {
                                result.duplicates += 1;
                            }
                            result.consumed += 1;
                            result.consumed_bytes += value.len() as u64;
                            latencies.push(now_us.saturating_sub(header.sent_us).clamp(1, LATENCY_US_MAX));
                        });
                        match walked {
                            Ok(walked) => {
                                if let Some(next) = walked.next_offset {
                                    assigned.next_offset = assigned.next_offset.max(next);
                                }
                            }
                            Err(error) => {
                                setup.live.error(format!("unreadable batch: {error}"), 1);
                                result.errors += 1;
                                assigned.failed = true;
                            }
                        }
                    }
                }
                if !latencies.is_empty() {
                    for &micros in &latencies {
                        result.latency.saturating_record(micros);
                    }
                    Live::record(&setup.live.interval_end_to_end, &latencies);
                    Live::add(&setup.live.consumed, latencies.len() as u64);
                    Live::add(&setup.live.consumed_bytes, result.consumed_bytes - bytes_before);
                    result.last_consumed = Some(Instant::now());
                }
            }
            _ = async {
                match refresh_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
            changed = ends.changed() => {
                if changed.is_err() {
                    // The coordinator went away: nothing will say when to stop.
                    return Ok(result);
                }
            }
        }
    }
}
