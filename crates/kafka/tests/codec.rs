//! The codec against the client side of `kafka-protocol`: requests encoded
//! as a client would encode them decode to the same values, responses we
//! encode decode as a client would read them, and no input makes the
//! decoder panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use runnel_kafka::codec::{
    api_versions_response, api_versions_unsupported_response, decode_request, encode_response,
    DecodeError, DecodedRequest, UNSUPPORTED_VERSION,
};
use runnel_kafka::frame::{frame_length, with_length_prefix, FrameError, FRAME_BYTES_MAX};
use runnel_kafka::versions::{supported_range, SUPPORTED};

const CORRELATION_ID: i32 = 0x0102_0304;

/// A request frame (without its length prefix) as a client encodes it.
fn request_frame(api_key: ApiKey, api_version: i16, body: &RequestKind) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(api_version)
        .with_correlation_id(CORRELATION_ID)
        .with_client_id(Some(StrBytes::from_static_str("runnel-test")));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, api_key.request_header_version(api_version))
        .expect("request header encodes");
    body.encode(&mut out, api_version)
        .unwrap_or_else(|error| panic!("{api_key:?} v{api_version} request encodes: {error}"));
    out.freeze()
}

fn decode_ok(frame: Bytes) -> DecodedRequest {
    decode_request(frame).unwrap_or_else(|error| panic!("decodes: {error}"))
}

/// Encodes `body`, decodes the frame and checks the header; returns the
/// decoded body.
fn round_trip(api_key: ApiKey, api_version: i16, body: RequestKind) -> RequestKind {
    let decoded = decode_ok(request_frame(api_key, api_version, &body));
    assert_eq!(decoded.api_key, api_key);
    assert_eq!(decoded.api_version, api_version);
    assert_eq!(decoded.header.request_api_key, api_key as i16);
    assert_eq!(decoded.header.request_api_version, api_version);
    assert_eq!(decoded.header.correlation_id, CORRELATION_ID);
    assert_eq!(
        decoded.header.client_id.as_deref(),
        Some("runnel-test"),
        "{api_key:?} v{api_version}"
    );
    assert_eq!(decoded.body, body, "{api_key:?} v{api_version}");
    decoded.body
}

/// A request of `api_key` with every field at its default.
fn default_request(api_key: ApiKey) -> RequestKind {
    match api_key {
        ApiKey::Produce => RequestKind::Produce(ProduceRequest::default()),
        ApiKey::Fetch => RequestKind::Fetch(FetchRequest::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default()),
        ApiKey::Metadata => RequestKind::Metadata(MetadataRequest::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(CreateTopicsRequest::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(DeleteTopicsRequest::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(InitProducerIdRequest::default()),
        ApiKey::OffsetForLeaderEpoch => {
            RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default())
        }
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(DescribeConfigsRequest::default()),
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default())
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::AlterPartitionReassignments => {
            RequestKind::AlterPartitionReassignments(AlterPartitionReassignmentsRequest::default())
        }
        ApiKey::ListPartitionReassignments => {
            RequestKind::ListPartitionReassignments(ListPartitionReassignmentsRequest::default())
        }
        ApiKey::AddRaftVoter => RequestKind::AddRaftVoter(AddRaftVoterRequest::default()),
        ApiKey::RemoveRaftVoter => RequestKind::RemoveRaftVoter(RemoveRaftVoterRequest::default()),
        ApiKey::FindCoordinator => {
            RequestKind::FindCoordinator(kafka_protocol::messages::FindCoordinatorRequest::default())
        }
        ApiKey::JoinGroup => {
            RequestKind::JoinGroup(kafka_protocol::messages::JoinGroupRequest::default())
        }
        ApiKey::SyncGroup => {
            RequestKind::SyncGroup(kafka_protocol::messages::SyncGroupRequest::default())
        }
        ApiKey::Heartbeat => {
            RequestKind::Heartbeat(kafka_protocol::messages::HeartbeatRequest::default())
        }
        ApiKey::LeaveGroup => {
            RequestKind::LeaveGroup(kafka_protocol::messages::LeaveGroupRequest::default())
        }
        ApiKey::OffsetCommit => {
            RequestKind::OffsetCommit(kafka_protocol::messages::OffsetCommitRequest::default())
        }
        ApiKey::OffsetFetch => {
            RequestKind::OffsetFetch(kafka_protocol::messages::OffsetFetchRequest::default())
        }
        ApiKey::DescribeGroups => {
            RequestKind::DescribeGroups(kafka_protocol::messages::DescribeGroupsRequest::default())
        }
        ApiKey::ListGroups => {
            RequestKind::ListGroups(kafka_protocol::messages::ListGroupsRequest::default())
        }
        ApiKey::DeleteGroups => {
            RequestKind::DeleteGroups(kafka_protocol::messages::DeleteGroupsRequest::default())
        }
        ApiKey::OffsetDelete => {
            RequestKind::OffsetDelete(kafka_protocol::messages::OffsetDeleteRequest::default())
        }
        other => panic!("no default request for {other:?}: add it to this test"),
    }
}

/// A response of `api_key` with every field at its default.
fn default_response(api_key: ApiKey) -> ResponseKind {
    match api_key {
        ApiKey::Produce => ResponseKind::Produce(ProduceResponse::default()),
        ApiKey::Fetch => ResponseKind::Fetch(FetchResponse::default()),
        ApiKey::ListOffsets => ResponseKind::ListOffsets(ListOffsetsResponse::default()),
        ApiKey::Metadata => ResponseKind::Metadata(MetadataResponse::default()),
        ApiKey::ApiVersions => ResponseKind::ApiVersions(api_versions_response(3)),
        ApiKey::CreateTopics => ResponseKind::CreateTopics(CreateTopicsResponse::default()),
        ApiKey::DeleteTopics => ResponseKind::DeleteTopics(DeleteTopicsResponse::default()),
        ApiKey::InitProducerId => ResponseKind::InitProducerId(InitProducerIdResponse::default()),
        ApiKey::OffsetForLeaderEpoch => {
            ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default())
        }
        ApiKey::DescribeConfigs => {
            ResponseKind::DescribeConfigs(DescribeConfigsResponse::default())
        }
        ApiKey::CreatePartitions => {
            ResponseKind::CreatePartitions(CreatePartitionsResponse::default())
        }
        ApiKey::DescribeCluster => {
            ResponseKind::DescribeCluster(DescribeClusterResponse::default())
        }
        ApiKey::AlterPartitionReassignments => {
            ResponseKind::AlterPartitionReassignments(AlterPartitionReassignmentsResponse::default())
        }
        ApiKey::ListPartitionReassignments => {
            ResponseKind::ListPartitionReassignments(ListPartitionReassignmentsResponse::default())
        }
        ApiKey::AddRaftVoter => ResponseKind::AddRaftVoter(AddRaftVoterResponse::default()),
        ApiKey::RemoveRaftVoter => {
            ResponseKind::RemoveRaftVoter(RemoveRaftVoterResponse::default())
        }
        ApiKey::FindCoordinator => ResponseKind::FindCoordinator(
            kafka_protocol::messages::FindCoordinatorResponse::default(),
        ),
        ApiKey::JoinGroup => {
            ResponseKind::JoinGroup(kafka_protocol::messages::JoinGroupResponse::default())
        }
        ApiKey::SyncGroup => {
            ResponseKind::SyncGroup(kafka_protocol::messages::SyncGroupResponse::default())
        }
        ApiKey::Heartbeat => {
            ResponseKind::Heartbeat(kafka_protocol::messages::HeartbeatResponse::default())
        }
        ApiKey::LeaveGroup => {
            ResponseKind::LeaveGroup(kafka_protocol::messages::LeaveGroupResponse::default())
        }
        ApiKey::OffsetCommit => {
            ResponseKind::OffsetCommit(kafka_protocol::messages::OffsetCommitResponse::default())
        }
        ApiKey::OffsetFetch => {
            ResponseKind::OffsetFetch(kafka_protocol::messages::OffsetFetchResponse::default())
        }
        ApiKey::DescribeGroups => {
            ResponseKind::DescribeGroups(kafka_protocol::messages::DescribeGroupsResponse::default())
        }
        ApiKey::ListGroups => {
            ResponseKind::ListGroups(kafka_protocol::messages::ListGroupsResponse::default())
        }
        ApiKey::DeleteGroups => {
            ResponseKind::DeleteGroups(kafka_protocol::messages::DeleteGroupsResponse::default())
        }
        ApiKey::OffsetDelete => {
            ResponseKind::OffsetDelete(kafka_protocol::messages::OffsetDeleteResponse::default())
        }
        other => panic!("no default response for {other:?}: add it to this test"),
    }
}

/// A topic with an id of `byte` repeated. `kafka-protocol` takes its `Uuid`
/// from the `uuid` crate, which is not a dependency here, so the id is
/// decoded from a Metadata v12 topic: 16 id bytes, a null compact name, no
/// tagged fields.
fn topic_with_id(byte: u8) -> MetadataRequestTopic {
    let mut bytes = vec![byte; 16];
    bytes.extend_from_slice(&[0, 0]);
    MetadataRequestTopic::decode(&mut Bytes::from(bytes), 12).expect("topic decodes")
}

fn name(text: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(text))
}

/// A RecordBatch v2 of two records, as a client's producer writes it.
fn record_batch() -> Bytes {
    let record = |offset: i64, value: &'static [u8]| Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: 4000,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: offset as i32,
        timestamp: 1_700_000_000_000 + offset,
        key: Some(Bytes::from_static(b"key")),
        value: Some(Bytes::from_static(value)),
        headers: IndexMap::new(),
    };
    let records = [record(0, b"first"), record(1, b"second")];
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
    out.freeze()
}

fn produce_request() -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name("orders"))
            .with_partition_data(vec![
                PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(record_batch())),
                PartitionProduceData::default()
                    .with_index(3)
                    .with_records(None),
            ])])
}

fn fetch_request_v13() -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(52_428_800)
        .with_isolation_level(1)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_rack_id(StrBytes::from_static_str("rack-a"))
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_with_id(0xab).topic_id)
            .with_partitions(vec![
                FetchPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(5)
                    .with_fetch_offset(1234)
                    .with_last_fetched_epoch(4)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(1_048_576),
                FetchPartition::default()
                    .with_partition(1)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1_048_576),
            ])])
}

fn metadata_request_v12() -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("orders"))),
            topic_with_id(0x11),
        ]))
        .with_allow_auto_topic_creation(true)
        .with_include_topic_authorized_operations(true)
}

fn create_topics_request_v7() -> CreateTopicsRequest {
    CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_validate_only(false)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name("orders"))
                .with_num_partitions(3)
                .with_replication_factor(3)
                .with_configs(vec![CreatableTopicConfig::default()
                    .with_name(StrBytes::from_static_str("retention.ms"))
                    .with_value(Some(StrBytes::from_static_str("86400000")))]),
            CreatableTopic::default()
                .with_name(name("placed"))
                .with_num_partitions(-1)
                .with_replication_factor(-1)
                .with_assignments(vec![CreatableReplicaAssignment::default()
                    .with_partition_index(0)
                    .with_broker_ids(vec![BrokerId(1), BrokerId(2)])]),
        ])
}

fn api_versions_request_v3() -> ApiVersionsRequest {
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("librdkafka"))
        .with_client_software_version(StrBytes::from_static_str("2.0.2"))
}

/// Valid frames of several APIs, flexible and not, for the truncation and
/// mutation tests.
fn valid_frames() -> Vec<Bytes> {
    vec![
        request_frame(
            ApiKey::ApiVersions,
            3,
            &RequestKind::ApiVersions(api_versions_request_v3()),
        ),
        request_frame(
            ApiKey::ApiVersions,
            0,
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ),
        request_frame(
            ApiKey::Metadata,
            12,
            &RequestKind::Metadata(metadata_request_v12()),
        ),
        request_frame(
            ApiKey::Metadata,
            1,
            &RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(name("orders"))),
            ]))),
        ),
        request_frame(ApiKey::Fetch, 13, &RequestKind::Fetch(fetch_request_v13())),
        request_frame(ApiKey::Produce, 9, &RequestKind::Produce(produce_request())),
        request_frame(ApiKey::Produce, 3, &RequestKind::Produce(produce_request())),
        request_frame(
            ApiKey::CreateTopics,
            7,
            &RequestKind::CreateTopics(create_topics_request_v7()),
        ),
    ]
}

#[test]
fn every_supported_version_decodes_a_default_request() {
    for (api_key, min, max) in SUPPORTED {
        for version in *min..=*max {
            round_trip(*api_key, version, default_request(*api_key));
        }
    }
}

#[test]
fn api_versions_v3_round_trips() {
    let RequestKind::ApiVersions(request) = round_trip(
        ApiKey::ApiVersions,
        3,
        RequestKind::ApiVersions(api_versions_request_v3()),
    ) else {
        unreachable!()
    };
    assert_eq!(&*request.client_software_name, "librdkafka");
    assert_eq!(&*request.client_software_version, "2.0.2");
}

#[test]
fn metadata_round_trips_at_v12_and_v1() {
    let RequestKind::Metadata(request) = round_trip(
        ApiKey::Metadata,
        12,
        RequestKind::Metadata(metadata_request_v12()),
    ) else {
        unreachable!()
    };
    let topics = request.topics.expect("topics");
    assert_eq!(topics[0].name.as_deref().map(|n| &**n), Some("orders"));
    assert_eq!(topics[1].name, None);
    assert_eq!(topics[1].topic_id, topic_with_id(0x11).topic_id);
    assert!(request.allow_auto_topic_creation);

    // v1 has no topic ids and a null array for every topic.
    round_trip(
        ApiKey::Metadata,
        1,
        RequestKind::Metadata(MetadataRequest::default().with_topics(None)),
    );
}

#[test]
fn fetch_v13_round_trips_with_topic_ids() {
    let RequestKind::Fetch(request) =
        round_trip(ApiKey::Fetch, 13, RequestKind::Fetch(fetch_request_v13()))
    else {
        unreachable!()
    };
    assert_eq!(request.topics[0].topic_id, topic_with_id(0xab).topic_id);
    assert_eq!(request.topics[0].partitions[0].fetch_offset, 1234);
    assert_eq!(request.isolation_level, 1);
    assert_eq!(&*request.rack_id, "rack-a");
}

#[test]
fn produce_round_trips_at_v9_and_v3_with_the_batch_bytes_intact() {
    for version in [3, 9] {
        let RequestKind::Produce(request) = round_trip(
            ApiKey::Produce,
            version,
            RequestKind::Produce(produce_request()),
        ) else {
            unreachable!()
        };
        assert_eq!(request.acks, -1);
        let partitions = &request.topic_data[0].partition_data;
        assert_eq!(partitions[0].records.as_ref(), Some(&record_batch()));
        assert_eq!(partitions[1].records, None);
    }
}

#[test]
fn create_topics_v7_round_trips() {
    let RequestKind::CreateTopics(request) = round_trip(
        ApiKey::CreateTopics,
        7,
        RequestKind::CreateTopics(create_topics_request_v7()),
    ) else {
        unreachable!()
    };
    assert_eq!(request.topics.len(), 2);
    assert_eq!(request.topics[0].num_partitions, 3);
    assert_eq!(request.topics[1].assignments[0].broker_ids.len(), 2);
}

#[test]
fn trailing_bytes_are_ignored_as_kafka_does() {
    for frame in valid_frames() {
        let mut longer = frame.to_vec();
        longer.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let plain = decode_ok(frame);
        let padded = decode_ok(Bytes::from(longer));
        assert_eq!(plain.body, padded.body);
    }
}

#[test]
fn an_unsupported_api_versions_version_gets_the_kip_511_fallback() {
    // Version 4 is one kafka-protocol knows but we do not advertise;
    // version 99 is one nobody knows. Both must come back as
    // UnsupportedVersion with the correlation id, so the broker can answer.
    for version in [4, 99, -1] {
        let mut frame = request_frame(
            ApiKey::ApiVersions,
            3,
            &RequestKind::ApiVersions(api_versions_request_v3()),
        )
        .to_vec();
        frame[2..4].copy_from_slice(&i16::to_be_bytes(version));
        assert_eq!(
            decode_request(Bytes::from(frame)).unwrap_err(),
            DecodeError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                api_version: version,
                correlation_id: CORRELATION_ID,
            }
        );
    }

    let response = api_versions_unsupported_response(CORRELATION_ID);
    let mut prefix = [0; 4];
    prefix.copy_from_slice(&response[..4]);
    assert_eq!(frame_length(prefix), Ok(response.len() - 4));
    let mut rest = response.slice(4..);
    // A v0 response header is the correlation id alone.
    assert_eq!(rest.get_i32(), CORRELATION_ID);
    let body = ApiVersionsResponse::decode(&mut rest, 0).expect("decodes at v0");
    assert!(!rest.has_remaining(), "nothing after the body");
    assert_eq!(body.error_code, UNSUPPORTED_VERSION);
    assert_eq!(UNSUPPORTED_VERSION, 35);
    let advertised: Vec<(i16, i16, i16)> = body
        .api_keys
        .iter()
        .map(|api| (api.api_key, api.min_version, api.max_version))
        .collect();
    let table: Vec<(i16, i16, i16)> = SUPPORTED
        .iter()
        .map(|(key, min, max)| (*key as i16, *min, *max))
        .collect();
    assert_eq!(advertised, table);
}

#[test]
fn the_fallback_is_byte_exact() {
    let response = api_versions_unsupported_response(7);
    let mut expected = Vec::new();
    expected.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    expected.extend_from_slice(&35i16.to_be_bytes()); // UNSUPPORTED_VERSION
    expected.extend_from_slice(&(SUPPORTED.len() as i32).to_be_bytes());
    for (key, min, max) in SUPPORTED {
        expected.extend_from_slice(&(*key as i16).to_be_bytes());
        expected.extend_from_slice(&min.to_be_bytes());
        expected.extend_from_slice(&max.to_be_bytes());
    }
    // v0 has no throttle time and no tagged fields.
    assert_eq!(&response[..], &with_length_prefix(&expected)[..]);
}

#[test]
fn api_versions_v3_response_is_byte_exact_with_header_v0() {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(3)
        .with_correlation_id(7);
    let body = ResponseKind::ApiVersions(api_versions_response(3));
    let response = encode_response(&header, ApiKey::ApiVersions, 3, &body).expect("encodes");

    let mut expected: Vec<u8> = vec![
        0, 0, 0, 7, // correlation id; header v0 ends here, no tagged fields
        0, 0, // error code
    ];
    // api_keys: a compact array, length + 1 as an unsigned varint (one byte
    // while the table is under 127 entries).
    assert!(SUPPORTED.len() < 127);
    expected.push(SUPPORTED.len() as u8 + 1);
    for (key, min, max) in SUPPORTED {
        expected.extend_from_slice(&(*key as i16).to_be_bytes());
        expected.extend_from_slice(&min.to_be_bytes());
        expected.extend_from_slice(&max.to_be_bytes());
        expected.push(0); // the entry's tagged fields
    }
    expected.extend_from_slice(&[0, 0, 0, 0]); // throttle time
    expected.push(0); // the body's tagged fields: no features
    assert_eq!(&response[..], &with_length_prefix(&expected)[..]);
    // The literal start, independent of the table: a 4-byte length, the
    // correlation id and straight the error code. librdkafka 2.0.2 reads
    // exactly this and fails with "Protocol read buffer underflow for
    // ApiVersion v3" if a tagged-field byte follows the correlation id.
    assert_eq!(&response[4..10], &[0, 0, 0, 7, 0, 0]);
}

#[test]
fn api_versions_responses_use_header_v0_at_every_version() {
    for version in 0..=3 {
        let header = RequestHeader::default().with_correlation_id(CORRELATION_ID);
        let body = ResponseKind::ApiVersions(api_versions_response(version));
        let response =
            encode_response(&header, ApiKey::ApiVersions, version, &body).expect("encodes");
        let mut rest = response.slice(4..);
        let read = ResponseHeader::decode(&mut rest, 0).expect("header v0");
        assert_eq!(read.correlation_id, CORRELATION_ID);
        let decoded = ApiVersionsResponse::decode(&mut rest, version).expect("body");
        assert!(!rest.has_remaining(), "v{version}: bytes left over");
        assert_eq!(decoded.error_code, 0);
        assert_eq!(decoded.throttle_time_ms, 0);
        assert_eq!(decoded.api_keys.len(), SUPPORTED.len());
        assert!(decoded.finalized_features.is_empty());
    }
}

#[test]
fn other_flexible_responses_carry_header_v1() {
    // Metadata v12 is flexible: its response header has a tagged-field byte
    // after the correlation id, unlike ApiVersions.
    let header = RequestHeader::default().with_correlation_id(7);
    let body = ResponseKind::Metadata(MetadataResponse::default());
    let response = encode_response(&header, ApiKey::Metadata, 12, &body).expect("encodes");
    assert_eq!(&response[4..9], &[0, 0, 0, 7, 0]);
}

/// Encodes a response and reads it back as a client would: length prefix,
/// header at the version the client expects, body, nothing left over.
fn read_back(api_key: ApiKey, api_version: i16, body: &ResponseKind) -> ResponseKind {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(api_version)
        .with_correlation_id(CORRELATION_ID);
    let response = encode_response(&header, api_key, api_version, body)
        .unwrap_or_else(|error| panic!("{api_key:?} v{api_version}: {error}"));
    let mut prefix = [0; 4];
    prefix.copy_from_slice(&response[..4]);
    assert_eq!(frame_length(prefix), Ok(response.len() - 4));
    let mut rest = response.slice(4..);
    // What a client expects: the crate's table, which already says v0 for
    // ApiVersions.
    let header_version = api_key.response_header_version(api_version);
    let read = ResponseHeader::decode(&mut rest, header_version).expect("header");
    assert_eq!(read.correlation_id, CORRELATION_ID);
    let decoded = ResponseKind::decode(api_key, &mut rest, api_version)
        .unwrap_or_else(|error| panic!("{api_key:?} v{api_version} body: {error}"));
    assert!(
        !rest.has_remaining(),
        "{api_key:?} v{api_version}: bytes left"
    );
    decoded
}

#[test]
fn every_supported_version_encodes_a_default_response() {
    for (api_key, min, max) in SUPPORTED {
        for version in *min..=*max {
            let body = default_response(*api_key);
            assert_eq!(read_back(*api_key, version, &body), body);
        }
    }
}

#[test]
fn responses_with_content_read_back() {
    let metadata = ResponseKind::Metadata(
        MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(9092)])
            .with_cluster_id(Some(StrBytes::from_static_str("runnel")))
            .with_controller_id(BrokerId(1))
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(name("orders")))
                .with_topic_id(topic_with_id(0x11).topic_id)
                .with_partitions(vec![MetadataResponsePartition::default()
                    .with_partition_index(0)
                    .with_leader_id(BrokerId(1))
                    .with_leader_epoch(3)
                    .with_replica_nodes(vec![BrokerId(1)])
                    .with_isr_nodes(vec![BrokerId(1)])])]),
    );
    assert_eq!(read_back(ApiKey::Metadata, 12, &metadata), metadata);

    for version in [3, 9] {
        let produce = ResponseKind::Produce(ProduceResponse::default().with_responses(
            vec![TopicProduceResponse::default()
                .with_name(name("orders"))
                .with_partition_responses(vec![PartitionProduceResponse::default()
                    .with_index(0)
                    .with_base_offset(42)
                    .with_log_append_time_ms(-1)])],
        ));
        assert_eq!(read_back(ApiKey::Produce, version, &produce), produce);
    }

    let fetch = ResponseKind::Fetch(FetchResponse::default().with_responses(
        vec![FetchableTopicResponse::default()
            .with_topic_id(topic_with_id(0xab).topic_id)
            .with_partitions(vec![PartitionData::default()
                .with_partition_index(0)
                .with_high_watermark(2)
                .with_last_stable_offset(2)
                .with_log_start_offset(0)
                .with_records(Some(record_batch()))])],
    ));
    assert_eq!(read_back(ApiKey::Fetch, 13, &fetch), fetch);

    let create = ResponseKind::CreateTopics(CreateTopicsResponse::default().with_topics(
        vec![CreatableTopicResult::default()
            .with_name(name("orders"))
            .with_topic_id(topic_with_id(0x11).topic_id)
            .with_num_partitions(3)
            .with_replication_factor(3)],
    ));
    assert_eq!(read_back(ApiKey::CreateTopics, 7, &create), create);
}

#[test]
fn unknown_api_keys_are_named_with_their_correlation_id() {
    // 0x7fff is no API at all; EndTxn (26) and DescribeAcls (29) are real
    // but not implemented; -1 is negative.
    for raw_key in [0x7fff_i16, -1, 1000, 26, 29] {
        let mut frame = request_frame(
            ApiKey::Metadata,
            1,
            &RequestKind::Metadata(MetadataRequest::default()),
        )
        .to_vec();
        frame[0..2].copy_from_slice(&raw_key.to_be_bytes());
        let error = decode_request(Bytes::from(frame)).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnknownApiKey {
                api_key: raw_key,
                correlation_id: CORRELATION_ID,
            }
        );
        assert!(!error.to_string().contains('\n'));
    }
}

#[test]
fn versions_outside_the_table_are_unsupported_even_if_the_crate_knows_them() {
    // Produce v2 and Fetch v3 predate RecordBatch v2; Fetch v14 and
    // Metadata v13 are newer than the table, though kafka-protocol
    // decodes them.
    let cases = [
        (ApiKey::Produce, 2),
        (ApiKey::Produce, 10),
        (ApiKey::Fetch, 3),
        (ApiKey::Fetch, 14),
        (ApiKey::Metadata, 13),
        (ApiKey::Metadata, -1),
        (ApiKey::ListOffsets, 0),
        (ApiKey::DescribeCluster, 2),
    ];
    for (api_key, version) in cases {
        let (min, max) = supported_range(api_key as i16).expect("supported API");
        assert!(version < min || version > max);
        let mut frame = request_frame(api_key, min, &default_request(api_key)).to_vec();
        frame[2..4].copy_from_slice(&version.to_be_bytes());
        let error = decode_request(Bytes::from(frame)).unwrap_err();
        assert_eq!(
            error,
            DecodeError::UnsupportedVersion {
                api_key,
                api_version: version,
                correlation_id: CORRELATION_ID,
            }
        );
        assert!(!error.to_string().contains('\n'));
    }
}

#[test]
fn every_truncation_is_an_error() {
    for frame in valid_frames() {
        for length in 0..frame.len() {
            let error = decode_request(frame.slice(..length))
                .err()
                .unwrap_or_else(|| panic!("{length} of {} bytes decoded", frame.len()));
            if length < 8 {
                assert_eq!(error, DecodeError::Truncated { bytes: length });
            } else {
                assert!(
                    matches!(error, DecodeError::Malformed { correlation_id, .. }
                        if correlation_id == CORRELATION_ID),
                    "{length} bytes: {error}"
                );
            }
            assert!(!error.to_string().contains('\n'), "{error:?}");
        }
    }
}

/// A header for `api_key` at `version` followed by `body`.
fn hostile_frame(api_key: ApiKey, version: i16, body: &[u8]) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(CORRELATION_ID)
        .with_client_id(Some(StrBytes::from_static_str("x")));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, api_key.request_header_version(version))
        .expect("header");
    out.put_slice(body);
    out.freeze()
}

#[test]
fn hostile_lengths_are_malformed_not_fatal() {
    let cases = [
        // Metadata v1: a topics array claiming 2^31 - 1 entries.
        hostile_frame(ApiKey::Metadata, 1, &i32::MAX.to_be_bytes()),
        // Metadata v12: a compact topics array claiming 2^32 - 2 entries
        // (the varint 0xffff_ffff).
        hostile_frame(ApiKey::Metadata, 12, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        // Produce v3: no transactional id, acks, timeout, then 2^31 - 1
        // topics.
        hostile_frame(
            ApiKey::Produce,
            3,
            &[
                &(-1i16).to_be_bytes()[..],
                &1i16.to_be_bytes(),
                &1000i32.to_be_bytes(),
                &i32::MAX.to_be_bytes(),
            ]
            .concat(),
        ),
        // Produce v3: one topic named "t" with 2^31 - 1 partitions.
        hostile_frame(
            ApiKey::Produce,
            3,
            &[
                &(-1i16).to_be_bytes()[..],
                &1i16.to_be_bytes(),
                &1000i32.to_be_bytes(),
                &1i32.to_be_bytes(),
                &1i16.to_be_bytes(),
                b"t",
                &i32::MAX.to_be_bytes(),
            ]
            .concat(),
        ),
        // Produce v3: one partition whose records claim 2^31 - 1 bytes.
        hostile_frame(
            ApiKey::Produce,
            3,
            &[
                &(-1i16).to_be_bytes()[..],
                &1i16.to_be_bytes(),
                &1000i32.to_be_bytes(),
                &1i32.to_be_bytes(),
                &1i16.to_be_bytes(),
                b"t",
                &1i32.to_be_bytes(),
                &0i32.to_be_bytes(),
                &i32::MAX.to_be_bytes(),
            ]
            .concat(),
        ),
        // Metadata v12 topic whose compact string name claims 2^31 bytes.
        hostile_frame(
            ApiKey::Metadata,
            12,
            &[&[2u8][..], &[0; 16], &[0x81, 0x80, 0x80, 0x80, 0x08]].concat(),
        ),
        // A header whose client id claims 32767 bytes.
        Bytes::from(
            [
                &(ApiKey::Metadata as i16).to_be_bytes()[..],
                &1i16.to_be_bytes(),
                &CORRELATION_ID.to_be_bytes(),
                &i16::MAX.to_be_bytes(),
            ]
            .concat(),
        ),
    ];
    for frame in cases {
        let error = decode_request(frame.clone()).unwrap_err();
        assert!(
            matches!(error, DecodeError::Malformed { .. }),
            "{frame:?}: {error}"
        );
    }
}

#[test]
fn display_is_one_line_for_every_error() {
    let errors = [
        DecodeError::Truncated { bytes: 3 },
        DecodeError::UnknownApiKey {
            api_key: 99,
            correlation_id: 1,
        },
        DecodeError::UnsupportedVersion {
            api_key: ApiKey::Fetch,
            api_version: 99,
            correlation_id: 1,
        },
        DecodeError::Malformed {
            api_key: ApiKey::Fetch,
            api_version: 13,
            correlation_id: 1,
            reason: "not enough bytes".to_string(),
        },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    }
    for error in [
        FrameError::TooLarge {
            length: FRAME_BYTES_MAX as i64 + 1,
        },
        FrameError::Negative { length: -1 },
    ] {
        let text = error.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    }
}

#[test]
fn frame_lengths_round_trip() {
    for length in [0usize, 1, 8, 65_536, FRAME_BYTES_MAX] {
        let framed = with_length_prefix(&vec![0; length.min(65_536)]);
        let mut prefix = [0; 4];
        prefix.copy_from_slice(&framed[..4]);
        assert_eq!(frame_length(prefix), Ok(length.min(65_536)));
        assert_eq!(frame_length((length as i32).to_be_bytes()), Ok(length));
    }
    assert_eq!(
        frame_length(i32::MAX.to_be_bytes()),
        Err(FrameError::TooLarge {
            length: i64::from(i32::MAX)
        })
    );
    assert_eq!(
        frame_length(i32::MIN.to_be_bytes()),
        Err(FrameError::Negative {
            length: i64::from(i32::MIN)
        })
    );
}

/// A supported (API, version) pair, as the first four bytes of a frame, so
/// that random bodies get past the version check into body decoding.
fn supported_header_prefix() -> impl Strategy<Value = [u8; 4]> {
    (0..SUPPORTED.len()).prop_flat_map(|index| {
        let (key, min, max) = SUPPORTED[index];
        (min..=max).prop_map(move |version| {
            let mut prefix = [0; 4];
            prefix[..2].copy_from_slice(&(key as i16).to_be_bytes());
            prefix[2..].copy_from_slice(&version.to_be_bytes());
            prefix
        })
    })
}

/// One edit of a byte string: overwrite, insert, delete or truncate.
#[derive(Clone, Debug)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set(at, byte)),
        // Extreme bytes turn lengths and varints hostile.
        2 => (any::<usize>(), prop_oneof![Just(0x00u8), Just(0x7f), Just(0x80), Just(0xff)])
            .prop_map(|(at, byte)| Edit::Set(at, byte)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        1 => any::<usize>().prop_map(Edit::Remove),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    let len = bytes.len();
    match *edit {
        Edit::Set(at, byte) if len > 0 => bytes[at % len] = byte,
        Edit::Insert(at, byte) => bytes.insert(at % (len + 1), byte),
        Edit::Remove(at) if len > 0 => {
            bytes.remove(at % len);
        }
        Edit::Truncate(at) => bytes.truncate(at % (len + 1)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(Bytes::from(bytes));
    }

    #[test]
    fn random_bodies_of_supported_requests_never_panic(
        prefix in supported_header_prefix(),
        rest in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&rest);
        let _ = decode_request(Bytes::from(bytes));
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in any::<usize>(),
        edits in proptest::collection::vec(edit(), 1..8),
    ) {
        let frames = valid_frames();
        let mut bytes = frames[which % frames.len()].to_vec();
        for edit in &edits {
            apply(&mut bytes, edit);
        }
        if let Ok(decoded) = decode_request(Bytes::from(bytes)) {
            // Whatever decodes came through the version check.
            let (min, max) = supported_range(decoded.api_key as i16).expect("supported");
            prop_assert!(decoded.api_version >= min && decoded.api_version <= max);
        }
    }
}
