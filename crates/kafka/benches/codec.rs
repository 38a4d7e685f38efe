//! The per-request work of the Kafka front end, before the node core sees
//! a request: decoding requests, encoding responses, and validating and
//! stamping record batches.
//!
//! `cargo bench -p runnel-kafka --bench codec`; each benchmark runs for
//! about two seconds (criterion's defaults are much longer). Throughput is
//! in bytes of the request, response or batch.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FetchResponse, MetadataRequest, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use runnel_kafka::batch;
use runnel_kafka::codec::{decode_request, encode_response};

const MESSAGE_BYTES: usize = 1024;

fn sample_batch(records: usize) -> Vec<u8> {
    let value = vec![b'x'; MESSAGE_BYTES];
    let records: Vec<batch::KeyValue<'_>> =
        (0..records).map(|_| (None, Some(&value[..]))).collect();
    batch::build_uncompressed(&records, 1_700_000_000_000, None)
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("bench"))
}

/// A request frame (after the length prefix), as the connection hands it
/// to the decoder.
fn frame<Req: Encodable>(key: ApiKey, version: i16, request: &Req) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("bench")));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, key.request_header_version(version))
        .expect("header encodes");
    request.encode(&mut out, version).expect("request encodes");
    out.freeze()
}

fn produce_request(records: usize) -> Bytes {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(sample_batch(records))))])]);
    frame(ApiKey::Produce, 9, &request)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for records in [1usize, 64] {
        let request = produce_request(records);
        group.throughput(Throughput::Bytes(request.len() as u64));
        group.bench_function(format!("produce_v9_{records}x1KiB"), |b| {
            b.iter(|| decode_request(request.clone()).expect("decodes"))
        });
    }
    let metadata = frame(
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic()))
        ])),
    );
    group.throughput(Throughput::Bytes(metadata.len() as u64));
    group.bench_function("metadata_v12_one_topic", |b| {
        b.iter(|| decode_request(metadata.clone()).expect("decodes"))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let header = RequestHeader::default().with_correlation_id(7);
    let produce = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
        TopicProduceResponse::default()
            .with_name(topic())
            .with_partition_responses(vec![PartitionProduceResponse::default()
                .with_index(0)
                .with_base_offset(123_456)]),
    ]));
    group.bench_function("produce_response_v9", |b| {
        b.iter(|| encode_response(&header, ApiKey::Produce, 9, &produce).expect("encodes"))
    });
    // A fetch response carrying 1 MiB of batches, as a consumer reading a
    // busy partition gets.
    let records = Bytes::from(sample_batch(1000));
    let fetch = ResponseKind::Fetch(FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_topic(topic())
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(1000)
                .with_records(Some(records.clone()))]),
    ]));
    group.throughput(Throughput::Bytes(records.len() as u64));
    group.bench_function("fetch_response_v12_1MB", |b| {
        b.iter(|| encode_response(&header, ApiKey::Fetch, 12, &fetch).expect("encodes"))
    });
    group.finish();
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    for records in [1usize, 64] {
        let bytes = sample_batch(records);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("validate_{records}x1KiB"), |b| {
            b.iter(|| batch::validate(&bytes).expect("valid"))
        });
    }
    let bytes = sample_batch(64);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("stamp_64x1KiB_log_append_time", |b| {
        b.iter_batched_ref(
            || bytes.clone(),
            |copy| batch::stamp(copy, 42, 3, Some(1_700_000_000_123)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = short();
    targets = decode, encode, validate
}
criterion_main!(benches);
