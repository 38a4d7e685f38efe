//! The broker driven deterministically: the simulator's disk and a manual
//! clock, Kafka requests encoded as a client would, responses decoded.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use runnel_broker::{BrokerConfig, BrokerEvent};
use runnel_io::Rng;
use runnel_kafka::batch::build_uncompressed;
use runnel_sim::disk::{DiskFaults, SimDisk};

mod support;

use support::{decode, single_node_config, Harness};

impl Harness {
    fn new() -> Harness {
        Harness::with_config(single_node_config())
    }

    /// A node on a fresh disk with `config`, given a second to elect itself.
    fn with_config(config: BrokerConfig) -> Harness {
        let disk = SimDisk::new(Rng::new(7), DiskFaults::default());
        Harness::start_with(disk, 0, config)
    }

    /// A node recovered from `disk`, given a second to elect itself.
    fn start(disk: SimDisk, now_ms: u64) -> Harness {
        Harness::start_with(disk, now_ms, single_node_config())
    }

    fn start_with(disk: SimDisk, now_ms: u64, config: BrokerConfig) -> Harness {
        let mut harness = Harness::recover(disk, now_ms, config);
        harness.advance(1_000);
        harness
    }

    fn create_topic(&mut self, name: &str, partitions: i32) {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic(name))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(5_000);
        self.send(99, ApiKey::CreateTopics, 7, &request);
        // The answer comes once the new partitions have elected leaders.
        self.advance(1_000);
        let response: CreateTopicsResponse = self.response(99, ApiKey::CreateTopics, 7);
        assert_eq!(response.topics[0].error_code, 0, "{:?}", response.topics[0]);
        // So a produce right away finds the leader ready.
        self.send(
            99,
            ApiKey::Produce,
            9,
            &produce_request(name, batch(&[b"first"], None), -1),
        );
        self.advance(20);
        let response: ProduceResponse = self.response(99, ApiKey::Produce, 9);
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn produce_request(name: &str, batch: Vec<u8>, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic(name))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch)))])])
}

fn fetch_request(name: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_isolation_level(1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic(name))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

fn batch(values: &[&[u8]], producer: Option<(i64, i16, i32)>) -> Vec<u8> {
    let records: Vec<_> = values.iter().map(|value| (None, Some(*value))).collect();
    build_uncompressed(&records, 1_800_000_000_000, producer)
}

#[test]
fn acks_all_is_answered_only_once_the_batch_is_on_disk() {
    let mut harness = Harness::new();
    harness.create_topic("orders", 1);
    harness.send(
        1,
        ApiKey::Produce,
        9,
        &produce_request("orders", batch(&[b"a", b"b"], None), -1),
    );
    assert!(
        harness.take(1).is_empty(),
        "no answer before the disk completes the write"
    );
    harness.advance(20);
    let response: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
    let partition = &response.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.base_offset, 1);
    harness.send(
        1,
        ApiKey::Produce,
        9,
        &produce_request("orders", batch(&[b"c"], None), 1),
    );
    harness.advance(20);
    let response: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
    assert_eq!(response.responses[0].partition_responses[0].base_offset, 3);
    // acks=0 gets no response at all.
    harness.send(
        1,
        ApiKey::Produce,
        9,
        &produce_request("orders", batch(&[b"d"], None), 0),
    );
    harness.advance(20);
    assert_eq!(harness.take(1), vec![None]);
}

#[test]
fn idempotent_retries_get_their_offset_and_gaps_are_refused() {
    let mut harness = Harness::new();
    harness.create_topic("events", 1);
    let first = batch(&[b"x", b"y"], Some((1_000, 0, 0)));
    for _ in 0..2 {
        harness.send(
            1,
            ApiKey::Produce,
            9,
            &produce_request("events", first.clone(), -1),
        );
        harness.advance(20);
        let response: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!((partition.error_code, partition.base_offset), (0, 1));
    }
    let gap = batch(&[b"z"], Some((1_000, 0, 5)));
    harness.send(1, ApiKey::Produce, 9, &produce_request("events", gap, -1));
    harness.advance(20);
    let response: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
    assert_eq!(response.responses[0].partition_responses[0].error_code, 45);
}

#[test]
fn damaged_batches_get_kafka_errors_and_nothing_is_written() {
    let mut harness = Harness::new();
    harness.create_topic("raw", 1);
    let mut corrupt = batch(&[b"payload"], None);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let mut old_magic = batch(&[b"payload"], None);
    old_magic[16] = 1;
    for (damaged, code) in [(corrupt, 2), (old_magic, 87), (vec![0u8; 10], 2)] {
        harness.send(1, ApiKey::Produce, 9, &produce_request("raw", damaged, -1));
        harness.advance(20);
        let response: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
        assert_eq!(
            response.responses[0].partition_responses[0].error_code,
            code
        );
    }
    harness.send(1, ApiKey::Fetch, 12, &fetch_request("raw", 0, 0));
    let response: FetchResponse = harness.response(1, ApiKey::Fetch, 12);
    assert_eq!(response.responses[0].partitions[0].high_watermark, 1);
}

#[test]
fn a_long_poll_is_answered_when_data_arrives() {
    let mut harness = Harness::new();
    harness.create_topic("poll", 1);
    harness.send(2, ApiKey::Fetch, 12, &fetch_request("poll", 1, 5_000));
    harness.advance(100);
    assert!(harness.take(2).is_empty(), "the fetch waits for data");
    harness.send(
        1,
        ApiKey::Produce,
        9,
        &produce_request("poll", batch(&[b"hello"], None), -1),
    );
    harness.advance(20);
    let response: FetchResponse = harness.response(2, ApiKey::Fetch, 12);
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.high_watermark, 2);
    assert_eq!(partition.last_stable_offset, 2);
    let records = partition.records.clone().expect("records");
    let header = runnel_kafka::batch::validate(&records).expect("a valid stamped batch");
    assert_eq!(header.base_offset, 1);
    // A poll with nothing to read ends at its wait with an empty answer.
    harness.send(2, ApiKey::Fetch, 12, &fetch_request("poll", 2, 300));
    harness.advance(299);
    assert!(harness.take(2).is_empty());
    harness.advance(2);
    let response: FetchResponse = harness.response(2, ApiKey::Fetch, 12);
    assert!(response.responses[0].partitions[0]
        .records
        .as_ref()
        .is_none_or(|records| records.is_empty()));
}

#[test]
fn responses_keep_request_order_on_a_connection() {
    let mut harness = Harness::new();
    harness.create_topic("ordered", 1);
    // A produce waiting for the disk, then an ApiVersions answerable at once:
    // the second must not overtake the first.
    harness.send(
        3,
        ApiKey::Produce,
        9,
        &produce_request("ordered", batch(&[b"1"], None), -1),
    );
    harness.send(3, ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert!(harness.take(3).is_empty());
    harness.advance(20);
    let frames = harness.take(3);
    assert_eq!(frames.len(), 2);
    let _: ProduceResponse = decode(frames[0].clone().unwrap(), ApiKey::Produce, 9);
    let versions: ApiVersionsResponse = decode(frames[1].clone().unwrap(), ApiKey::ApiVersions, 3);
    assert!(!versions.api_keys.is_empty());
}

#[test]
fn bad_frames_close_the_connection_and_the_broker_goes_on() {
    let mut harness = Harness::new();
    harness.event(BrokerEvent::Request {
        connection: 5,
        frame: Bytes::from_static(b"\x00\x03"),
    });
    assert!(harness.collected.closed.contains(&5));
    // An unknown API key: Kafka closes the connection.
    harness.event(BrokerEvent::Request {
        connection: 6,
        frame: Bytes::from_static(b"\x7f\x00\x00\x00\x00\x00\x00\x01\x00\x00"),
    });
    assert!(harness.collected.closed.contains(&6));
    // An ApiVersions version we do not have: the v0 fallback, error 35.
    harness.send(7, ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let _ = harness.take(7);
    let mut frame = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(9)
        .with_correlation_id(77)
        .encode(&mut frame, 1)
        .unwrap();
    harness.event(BrokerEvent::Request {
        connection: 7,
        frame: frame.freeze(),
    });
    let response: ApiVersionsResponse = harness.response(7, ApiKey::ApiVersions, 0);
    assert_eq!(response.error_code, 35);
    assert!(!response.api_keys.is_empty());
    // Bad topic names are refused with INVALID_TOPIC_EXCEPTION.
    for name in ["bad/name", "..", &"x".repeat(250)] {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic(name))
                .with_num_partitions(1)
                .with_replication_factor(1)])
            .with_timeout_ms(1_000);
        harness.send(8, ApiKey::CreateTopics, 7, &request);
        harness.advance(20);
        let response: CreateTopicsResponse = harness.response(8, ApiKey::CreateTopics, 7);
        assert_eq!(response.topics[0].error_code, 17, "{name}");
    }
    // And the broker still works.
    harness.create_topic("fine", 1);
}

#[test]
fn acknowledged_batches_survive_a_crash() {
    let mut harness = Harness::new();
    harness.create_topic("durable", 2);
    for value in [b"one".as_slice(), b"two", b"three"] {
        harness.send(
            1,
            ApiKey::Produce,
            9,
            &produce_request("durable", batch(&[value], None), -1),
        );
        harness.advance(20);
        let response: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    let Harness {
        mut disk, clock, ..
    } = harness;
    disk.crash();
    let mut harness = Harness::start(disk, clock.now_ms);
    harness.send(1, ApiKey::Fetch, 12, &fetch_request("durable", 0, 0));
    let response: FetchResponse = harness.response(1, ApiKey::Fetch, 12);
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.high_watermark, 4);
}

#[test]
fn the_same_requests_give_the_same_bytes() {
    let run = || {
        let mut harness = Harness::new();
        harness.create_topic("same", 3);
        let mut out = Vec::new();
        for round in 0..20u8 {
            harness.send(
                1,
                ApiKey::Produce,
                9,
                &produce_request("same", batch(&[&[round]], None), -1),
            );
            harness.advance(7);
            harness.send(1, ApiKey::Fetch, 12, &fetch_request("same", 0, 0));
            harness.advance(3);
            out.extend(harness.take(1));
        }
        out
    };
    assert_eq!(run(), run());
}

#[test]
fn offset_for_leader_epoch_and_list_offsets_answer_from_the_log() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::{
        ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
        OffsetForLeaderEpochResponse,
    };
    let mut harness = Harness::new();
    harness.create_topic("epochs", 1);
    for value in [b"a".as_slice(), b"b", b"c"] {
        harness.send(
            1,
            ApiKey::Produce,
            9,
            &produce_request("epochs", batch(&[value], None), -1),
        );
        harness.advance(20);
        let _: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
    }
    let epoch_request = |epoch: i32| {
        OffsetForLeaderEpochRequest::default().with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(topic("epochs"))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_leader_epoch(epoch)])])
    };
    // The partition's only epoch is its leader's first term: asking for it
    // (or a later one) ends at the high watermark; an earlier one is unknown.
    harness.send(1, ApiKey::OffsetForLeaderEpoch, 4, &epoch_request(1));
    let response: OffsetForLeaderEpochResponse =
        harness.response(1, ApiKey::OffsetForLeaderEpoch, 4);
    let answer = &response.topics[0].partitions[0];
    assert_eq!(
        (answer.error_code, answer.leader_epoch, answer.end_offset),
        (0, 1, 4)
    );
    harness.send(1, ApiKey::OffsetForLeaderEpoch, 4, &epoch_request(0));
    let response: OffsetForLeaderEpochResponse =
        harness.response(1, ApiKey::OffsetForLeaderEpoch, 4);
    let answer = &response.topics[0].partitions[0];
    assert_eq!((answer.leader_epoch, answer.end_offset), (-1, -1));
    let list = |timestamp: i64| {
        ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic("epochs"))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])])
    };
    for (timestamp, offset) in [
        (-2, 0),
        (-1, 4),
        (1_800_000_000_000, 0),
        (1_900_000_000_000, -1),
    ] {
        harness.send(1, ApiKey::ListOffsets, 7, &list(timestamp));
        let response: ListOffsetsResponse = harness.response(1, ApiKey::ListOffsets, 7);
        assert_eq!(
            response.topics[0].partitions[0].offset, offset,
            "timestamp {timestamp}"
        );
    }
    // KIP-320: a client that knows an older leader epoch is fenced, one that
    // knows a newer leader than this node gets UNKNOWN_LEADER_EPOCH (this
    // node would be a deposed leader answering from a log that may end
    // before what the client read), in both requests, as in Fetch.
    for (current, code) in [(-1, 0), (1, 0), (0, 74), (2, 75)] {
        let mut request = epoch_request(1);
        request.topics[0].partitions[0].current_leader_epoch = current;
        harness.send(1, ApiKey::OffsetForLeaderEpoch, 4, &request);
        let response: OffsetForLeaderEpochResponse =
            harness.response(1, ApiKey::OffsetForLeaderEpoch, 4);
        assert_eq!(
            response.topics[0].partitions[0].error_code, code,
            "OffsetForLeaderEpoch, current epoch {current}"
        );
        let mut request = list(-1);
        request.topics[0].partitions[0].current_leader_epoch = current;
        harness.send(1, ApiKey::ListOffsets, 7, &request);
        let response: ListOffsetsResponse = harness.response(1, ApiKey::ListOffsets, 7);
        assert_eq!(
            response.topics[0].partitions[0].error_code, code,
            "ListOffsets, current epoch {current}"
        );
    }
}

#[test]
fn a_fetch_from_an_old_or_unknown_leader_epoch_is_fenced() {
    let mut harness = Harness::new();
    harness.create_topic("fenced", 1);
    let with_epoch = |epoch: i32| {
        let mut request = fetch_request("fenced", 0, 0);
        request.topics[0].partitions[0].current_leader_epoch = epoch;
        request
    };
    // The single node's first term is epoch 1.
    for (epoch, code) in [(-1, 0), (1, 0), (0, 74), (2, 75)] {
        harness.send(1, ApiKey::Fetch, 12, &with_epoch(epoch));
        let response: FetchResponse = harness.response(1, ApiKey::Fetch, 12);
        assert_eq!(
            response.responses[0].partitions[0].error_code, code,
            "epoch {epoch}"
        );
    }
}

#[test]
fn a_drain_answers_long_polls_at_once() {
    let mut harness = Harness::new();
    harness.create_topic("drained", 1);
    harness.send(2, ApiKey::Fetch, 12, &fetch_request("drained", 1, 30_000));
    harness.advance(100);
    assert!(harness.take(2).is_empty(), "the fetch waits for data");
    harness.event(BrokerEvent::Drain);
    let response: FetchResponse = harness.response(2, ApiKey::Fetch, 12);
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    assert_eq!(harness.broker.requests_in_flight(), 0);
}

#[test]
fn metrics_report_what_the_node_leads_and_holds() {
    let mut harness = Harness::new();
    harness.create_topic("orders", 2);
    harness.send(
        1,
        ApiKey::Produce,
        9,
        &produce_request("orders", batch(&[b"a", b"b", b"c"], None), -1),
    );
    harness.advance(50);
    let _: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
    let text = harness.broker.metrics_text();
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .expect("a number")
    };
    assert_eq!(value("runnel_metadata_leader"), 1);
    // The topic's two partitions and those of the internal offsets topic,
    // all led by the only node.
    let offsets_partitions = text
        .lines()
        .filter(|line| line.starts_with("runnel_partition_replicas{topic=\"__consumer_offsets\""))
        .count() as u64;
    assert!(offsets_partitions > 0, "{text}");
    assert_eq!(value("runnel_partitions_hosted"), 2 + offsets_partitions);
    assert_eq!(value("runnel_partitions_led"), 2 + offsets_partitions);
    assert_eq!(value("runnel_partitions_under_replicated"), 0);
    assert_eq!(value("runnel_node_failed"), 0);
    // A single node has no follower to catch up.
    assert!(text.contains("# TYPE runnel_catch_up_log_reads_total counter"));
    assert_eq!(value("runnel_catch_up_snapshots_sent_total"), 0);
    assert_eq!(
        value("runnel_catch_up_log_reads_total{outcome=\"damaged\"}"),
        0
    );
    // Nor a snapshot to install, so nothing to backfill below one.
    assert_eq!(value("runnel_backfill_entries_stored_total"), 0);
    assert_eq!(value("runnel_fetch_log_reads_total"), 0);
    // create_topic wrote one record to partition 0, the produce three more.
    assert_eq!(
        value("runnel_partition_high_watermark{topic=\"orders\",partition=\"0\"}"),
        4
    );
    assert_eq!(
        value("runnel_partition_high_watermark{topic=\"orders\",partition=\"1\"}"),
        0
    );
    assert_eq!(
        value("runnel_partition_log_start_offset{topic=\"orders\",partition=\"0\"}"),
        0
    );
    assert!(value("runnel_partition_retained_bytes{topic=\"orders\",partition=\"0\"}") > 0);
    assert_eq!(
        value("runnel_partition_in_sync_replicas{topic=\"orders\",partition=\"1\"}"),
        1
    );
    // Every line is a comment or `name{labels} value`.
    for line in text.lines() {
        assert!(
            line.starts_with('#')
                || line
                    .rsplit_once(' ')
                    .is_some_and(|(_, v)| v.parse::<u64>().is_ok()),
            "{line}"
        );
    }
}

/// A fetch past the high watermark is out of range only once the node has
/// confirmed with a read index that it still leads (a deposed leader lags
/// the new one, docs/protocol.md §6.3); a single voter confirms at once,
/// and a fetch before the log start needs no confirmation.
#[test]
fn a_fetch_past_the_end_is_out_of_range_after_a_read_index() {
    let mut harness = Harness::new();
    harness.create_topic("range", 1);
    harness.send(
        1,
        ApiKey::Produce,
        9,
        &produce_request("range", batch(&[b"a", b"b"], None), -1),
    );
    harness.advance(20);
    let _: ProduceResponse = harness.response(1, ApiKey::Produce, 9);
    // The harness's topic already holds one record: the log ends at 3.
    for (offset, code) in [(3, 0), (4, 1), (1_000, 1)] {
        harness.send(2, ApiKey::Fetch, 12, &fetch_request("range", offset, 0));
        harness.advance(1);
        let response: FetchResponse = harness.response(2, ApiKey::Fetch, 12);
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, code, "offset {offset}");
        assert_eq!(partition.high_watermark, 3);
    }
}

/// How many reads of the log on disk the node served to clients (§8.3).
fn disk_reads_served(harness: &Harness) -> u64 {
    harness
        .broker
        .node()
        .catch_up_stats()
        .client_log_reads_served
}

/// The group of partition 0 of `topic_name`, from the node's metadata.
fn partition_group(harness: &Harness, topic_name: &str) -> runnel_io::GroupId {
    harness
        .broker
        .node()
        .machine(runnel_core::metadata::METADATA_GROUP)
        .and_then(|machine| machine.metadata())
        .and_then(|metadata| metadata.topic(topic_name))
        .expect("the topic")
        .partitions[0]
        .group
}

/// The partition machine of `group` on the node, if it hosts it.
fn partition_log(
    harness: &Harness,
    group: runnel_io::GroupId,
) -> Option<&runnel_core::partition::PartitionLog> {
    harness
        .broker
        .node()
        .machine(group)
        .and_then(|machine| machine.partition())
}

/// The offsets and values of every record in a fetch's records.
fn records_of(records: &Bytes) -> Vec<(i64, Vec<u8>)> {
    let mut bytes = records.clone();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let set =
            kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).expect("whole batches");
        for record in set.records {
            out.push((
                record.offset,
                record.value.map(|value| value.to_vec()).unwrap_or_default(),
            ));
        }
    }
    out
}

/// docs/protocol.md §8.3: a partition's machine holds its index, not its
/// bytes, and batches at or below its snapshot are read back from the log
/// on disk and stamped again: a fetch of them waits for the read, and gets
/// the bytes a fetch got while they were in memory, also after a restart.
#[test]
fn batches_below_the_snapshot_are_read_back_from_the_log_on_disk() {
    let mut config = single_node_config();
    config.snapshot_interval_entries = 4;
    let mut harness = Harness::with_config(config.clone());
    harness.create_topic("cold", 1);
    let early: FetchResponse = harness.call(1, ApiKey::Fetch, 12, &fetch_request("cold", 0, 0), 50);
    let early = early.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    assert_eq!(records_of(&early), vec![(0, b"first".to_vec())]);
    for value in 0..20u8 {
        let response: ProduceResponse = harness.call(
            1,
            ApiKey::Produce,
            9,
            &produce_request("cold", batch(&[&[value]], None), -1),
            50,
        );
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    let reads_before = disk_reads_served(&harness);
    harness.send(1, ApiKey::Fetch, 12, &fetch_request("cold", 0, 0));
    assert_eq!(harness.pending(1), 0, "the batches are on disk: read first");
    harness.advance(20);
    let response: FetchResponse = harness.response(1, ApiKey::Fetch, 12);
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.high_watermark, 21);
    let cold = partition.records.clone().expect("records");
    assert!(
        disk_reads_served(&harness) > reads_before,
        "served from a read of the disk"
    );
    assert_eq!(&cold[..early.len()], &early[..], "the bytes served before");
    let expected: Vec<(i64, Vec<u8>)> = std::iter::once((0, b"first".to_vec()))
        .chain((0..20u8).map(|value| (i64::from(value) + 1, vec![value])))
        .collect();
    assert_eq!(records_of(&cold), expected);
    // A restart recovers the index from the snapshot and the bytes from
    // the segments: the same bytes again.
    let Harness {
        mut disk, clock, ..
    } = harness;
    disk.crash();
    let mut harness = Harness::start_with(disk, clock.now_ms, config);
    let again: FetchResponse =
        harness.call(1, ApiKey::Fetch, 12, &fetch_request("cold", 0, 0), 100);
    let again = again.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    assert_eq!(again, cold);
}

/// docs/storage.md, "The sparse index": past `CHUNK_BATCHES_MAX` batches
/// the partition's index seals them into a chunk, one entry of the index,
/// and a fetch inside the chunk rebuilds its batches from the log on disk:
/// from its first offset, from the middle, by time, and after a restart,
/// always the bytes a fetch got while they were in memory. The segments are
/// small, so the chunk spans many of them and a read (within one segment)
/// brings a few of its batches at a time: a fetch that may not wait still
/// gets the batch it asked for, and a lookup by time reads round by round
/// to the exact record.
#[test]
fn a_chunk_of_the_index_is_rebuilt_from_the_log_on_disk() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    use runnel_core::partition::CHUNK_BATCHES_MAX;
    let mut config = single_node_config();
    config.snapshot_interval_entries = 16;
    config.segment_bytes_max = 2048;
    let base_ms = 1_900_000_000_000;
    let mut harness = Harness::with_config(config.clone());
    harness.create_topic("chunked", 1);
    let count = CHUNK_BATCHES_MAX as u16 + 40;
    let mut early = Vec::new();
    for value in 0..count {
        let response: ProduceResponse = harness.call(
            1,
            ApiKey::Produce,
            9,
            &produce_request(
                "chunked",
                build_uncompressed(
                    &[(None, Some(&value.to_le_bytes()))],
                    base_ms + 10 * i64::from(value),
                    None,
                ),
                -1,
            ),
            50,
        );
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
        // Each batch as served right after it was written, from memory.
        let offset = i64::from(value) + 1;
        let fetched: FetchResponse = harness.call(
            1,
            ApiKey::Fetch,
            12,
            &fetch_request("chunked", offset, 0),
            50,
        );
        let records = fetched.responses[0].partitions[0]
            .records
            .clone()
            .expect("records");
        early.push(records);
    }
    let group = partition_group(&harness, "chunked");
    let chunks = |harness: &Harness| partition_log(harness, group).map(|log| log.chunk_count());
    assert!(chunks(&harness) >= Some(1), "a chunk was sealed");
    // Fetches from `offset` to the end, each from where the last stopped,
    // as a consumer does: each may bring only what a few reads of the log
    // on disk held.
    let fetch_all = |harness: &mut Harness, offset: i64| -> Bytes {
        let mut all = BytesMut::new();
        let mut next = offset;
        while next <= i64::from(count) {
            harness.send(1, ApiKey::Fetch, 12, &fetch_request("chunked", next, 500));
            harness.advance(100);
            let response: FetchResponse = harness.response(1, ApiKey::Fetch, 12);
            let partition = &response.responses[0].partitions[0];
            assert_eq!(partition.error_code, 0);
            let records = partition.records.clone().expect("records");
            let last = records_of(&records).last().map(|(offset, _)| *offset);
            next = last.expect("every fetch makes progress") + 1;
            all.extend_from_slice(&records);
        }
        all.freeze()
    };
    let expected = |from: i64| -> Vec<(i64, Vec<u8>)> {
        (from.max(1)..=i64::from(count))
            .map(|offset| (offset, ((offset - 1) as u16).to_le_bytes().to_vec()))
            .collect()
    };
    for from in [1, 100, 200, 255, i64::from(count) - 3] {
        let reads_before = disk_reads_served(&harness);
        let records = fetch_all(&mut harness, from);
        let mut values = records_of(&records);
        values.retain(|(offset, _)| *offset >= from);
        assert_eq!(values, expected(from), "from {from}");
        let first_batch = from as usize - 1;
        assert_eq!(
            &records[..early[first_batch].len()],
            &early[first_batch][..],
            "the bytes served from memory, from {from}"
        );
        if from < 200 {
            assert!(
                disk_reads_served(&harness) > reads_before,
                "read from the disk, from {from}"
            );
        }
    }
    // A fetch that may not wait gets at least the batch it asked for.
    for from in [30, 130, 230] {
        let response: FetchResponse =
            harness.call(1, ApiKey::Fetch, 12, &fetch_request("chunked", from, 0), 50);
        let records = response.responses[0].partitions[0]
            .records
            .clone()
            .expect("records");
        let values = records_of(&records);
        assert_eq!(
            values.first().map(|(offset, _)| *offset),
            Some(from),
            "from {from}"
        );
    }
    // A lookup by time finds the exact record inside the chunk.
    for value in [3u16, 150, 254] {
        let request = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic("chunked"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(base_ms + 10 * i64::from(value) - 5)])]);
        harness.send(1, ApiKey::ListOffsets, 7, &request);
        harness.advance(100);
        let response: ListOffsetsResponse = harness.response(1, ApiKey::ListOffsets, 7);
        let partition = &response.topics[0].partitions[0];
        assert_eq!(partition.error_code, 0);
        assert_eq!(
            (partition.offset, partition.timestamp),
            (i64::from(value) + 1, base_ms + 10 * i64::from(value)),
            "the record of {value}"
        );
    }
    let all = fetch_all(&mut harness, 0);
    let Harness {
        mut disk, clock, ..
    } = harness;
    disk.crash();
    let mut harness = Harness::start_with(disk, clock.now_ms, config);
    harness.advance(100);
    assert_eq!(
        fetch_all(&mut harness, 0),
        all,
        "the same bytes after a restart"
    );
    assert!(chunks(&harness) >= Some(1));
}

/// A batch of records whose timestamps are `timestamp_ms` plus 10 ms per
/// record, as a producer that batches over time writes it.
fn timed_batch(values: &[&'static [u8]], timestamp_ms: i64) -> Vec<u8> {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(position, value)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: position as i64,
            // The encoder starts a new batch where sequences break off.
            sequence: position as i32,
            timestamp: timestamp_ms + 10 * position as i64,
            key: None,
            value: Some(Bytes::from_static(value)),
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("batch encodes");
    out.to_vec()
}

/// docs/protocol.md §8.3: ListOffsets by timestamp finds the batch in the
/// partition's index and the record in the batch, reading the batch from
/// disk when it is below the snapshot: the answer is the exact record.
#[test]
fn list_offsets_by_time_reads_a_batch_on_disk_to_answer_the_exact_record() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
    let mut config = single_node_config();
    config.snapshot_interval_entries = 4;
    let mut harness = Harness::with_config(config);
    harness.create_topic("times", 1);
    let timestamp_ms = 1_900_000_000_000;
    let values: [&'static [u8]; 4] = [b"w", b"x", b"y", b"z"];
    let batches = std::iter::once(timed_batch(&values, timestamp_ms))
        .chain((0..10).map(|_| timed_batch(&[b"later"], timestamp_ms + 1_000)));
    for batch in batches {
        let response: ProduceResponse = harness.call(
            1,
            ApiKey::Produce,
            9,
            &produce_request("times", batch, -1),
            50,
        );
        assert_eq!(
            response.responses[0].partition_responses[0].error_code, 0,
            "{:?}",
            response.responses[0].partition_responses[0].error_message
        );
    }
    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic("times"))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp_ms + 15)])]);
    harness.send(1, ApiKey::ListOffsets, 7, &request);
    assert_eq!(harness.pending(1), 0, "the batch is on disk: read first");
    harness.advance(20);
    let response: ListOffsetsResponse = harness.response(1, ApiKey::ListOffsets, 7);
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    // "first" is at offset 0, "w" at 1: "y" (timestamp + 20) is at 3.
    assert_eq!(
        (partition.offset, partition.timestamp),
        (3, timestamp_ms + 20)
    );
}

/// docs/protocol.md §8.3: a restart restores the latest snapshot's machine,
/// whose index names the batches it held then, and replays the log after
/// it. So the node keeps the entries of batches retention dropped until a
/// later snapshot no longer names them: after a crash, the partition holds
/// every entry its index names.
#[test]
fn after_a_restart_the_log_holds_every_batch_the_snapshot_names() {
    let mut config = single_node_config();
    config.snapshot_interval_entries = 8;
    config.segment_bytes_max = 256;
    config.topic_defaults.retention_bytes = 1;
    let mut harness = Harness::with_config(config.clone());
    harness.create_topic("short", 1);
    for value in 0..12u8 {
        let response: ProduceResponse = harness.call(
            1,
            ApiKey::Produce,
            9,
            &produce_request("short", batch(&[&[value; 40]], None), -1),
            50,
        );
        assert_eq!(response.responses[0].partition_responses[0].error_code, 0);
    }
    // Retention (every second) drops all but the newest batch.
    harness.advance(2_500);
    let group_id = partition_group(&harness, "short");
    let log_start =
        |harness: &Harness| partition_log(harness, group_id).map(|log| log.log_start_offset());
    assert_eq!(log_start(&harness), Some(12), "retention ran");
    let Harness {
        mut disk, clock, ..
    } = harness;
    disk.crash();
    let mut harness = Harness::recover(disk, clock.now_ms, config);
    harness.advance(10);
    assert_eq!(
        harness.broker.node().holds_needed_log(group_id),
        Some(true),
        "{:?}",
        harness.broker.node().backfill_status(group_id)
    );
    harness.advance(1_000);
    let response: FetchResponse =
        harness.call(1, ApiKey::Fetch, 12, &fetch_request("short", 12, 0), 100);
    let partition = &response.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(
        records_of(partition.records.as_ref().expect("records")),
        vec![(12, vec![11; 40])]
    );
}
