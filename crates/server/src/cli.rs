//! `runnel topic|produce|consume`: tools that speak the Kafka protocol to any
//! broker. Errors are one line on stderr; exit codes: 0 done, 1 the broker
//! refused (a Kafka error), 2 bad usage, 3 the broker cannot be reached.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use clap::{Args, Subcommand, ValueEnum};
use indexmap::IndexMap;
use kafka_protocol::messages::add_raft_voter_request::Listener as RaftListener;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, AlterPartitionReassignmentsRequest,
    AlterPartitionReassignmentsResponse, ApiKey, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, MetadataResponse,
    ProduceRequest, ProduceResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};
use runnel_kafka::partitioner::partition_for_key;

use crate::client::{retriable, ClientError, Cluster};
use runnel_broker::error_code;

/// Most records the producer puts in one batch.
pub const PRODUCE_BATCH_RECORDS_MAX: usize = 1_000;
/// Most bytes of record data in one batch (below Kafka's 1 MiB default).
pub const PRODUCE_BATCH_BYTES_MAX: usize = 512 << 10;
/// How long the tools retry a retriable error (an election, a new topic).
pub const RETRY_FOR_MS: u64 = 15_000;
/// The pause before asking again who leads a partition.
pub const REROUTE_BACKOFF_MS: u64 = 200;

#[derive(Args, Debug)]
pub struct Connect {
    /// Brokers to start from, host:port, comma separated; the first that
    /// answers is used.
    #[arg(long, short = 'b', default_value = "127.0.0.1:9092", global = true)]
    pub bootstrap: String,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = -1)]
        partitions: i32,
        #[arg(long, short = 'r', default_value_t = -1)]
        replication_factor: i16,
        /// A topic configuration, key=value; repeat for more.
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// List the topics.
    List,
    /// Show a topic's partitions, leaders and configuration.
    Describe { name: String },
    /// Delete a topic.
    Delete { name: String },
    /// Move a partition's replicas to other nodes (the first listed is the
    /// preferred leader). The partition's leader moves one node at a time;
    /// `runnel topic moves` shows what is still moving.
    Reassign {
        name: String,
        #[arg(long, short = 'p')]
        partition: i32,
        /// Node ids, comma separated, e.g. 2,3,4.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<i32>,
    },
    /// List partitions whose replicas are still moving.
    Moves,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// Send every record to this partition (default: by key, as Kafka's
    /// default partitioner; keyless records in turn).
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, short = 'K')]
    pub key_separator: Option<String>,
    /// A header key=value added to every record; repeat for more.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: Acks,
    #[arg(long, short = 'z', value_enum, default_value = "none")]
    pub compression: Codec,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    #[arg(long, short = 'p', default_value_t = 0)]
    pub partition: i32,
    /// earliest, latest, or an offset.
    #[arg(long, short = 'o', default_value = "earliest")]
    pub offset: String,
    /// Start at the first record at or after this time (ms since the epoch).
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Stop at the end of the partition instead of waiting for more.
    #[arg(long, short = 'e')]
    pub exit_at_end: bool,
    /// Output format: %k key, %v value, %o offset, %t timestamp, %p partition,
    /// %h headers, \t and \n.
    #[arg(long, short = 'f', default_value = "%v\\n")]
    pub format: String,
    /// Consume as a member of this consumer group: the group's members
    /// share the topic's partitions, and each starts where the group
    /// committed (else at --offset); offsets are committed after the
    /// records are printed. --partition and --timestamp do not apply.
    #[arg(long, short = 'g')]
    pub group: Option<String>,
}

pub(crate) fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub(crate) fn kafka_error(code: i16, context: impl Into<String>) -> ClientError {
    ClientError::Kafka {
        code,
        context: context.into(),
    }
}

/// Runs `f` until it succeeds or fails with a non-retriable error, for at
/// most `RETRY_FOR_MS`.
pub(crate) fn retrying<T>(mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let deadline = Instant::now() + Duration::from_millis(RETRY_FOR_MS);
    loop {
        match f() {
            Err(ClientError::Kafka { code, .. })
                if retriable(code) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The controller's address, where topic changes go.
fn controller(cluster: &mut Cluster) -> Result<String, ClientError> {
    let metadata = cluster.bootstrap()?.metadata(Some(&[]))?;
    Cluster::address_of(&metadata, metadata.controller_id.0)
        .ok_or_else(|| ClientError::Other("the cluster reports no controller".into()))
}

pub(crate) fn topic_metadata(
    cluster: &mut Cluster,
    name: &str,
) -> Result<MetadataResponse, ClientError> {
    retrying(|| {
        let metadata = cluster.bootstrap()?.metadata(Some(&[name]))?;
        let topic = metadata
            .topics
            .first()
            .ok_or_else(|| ClientError::Other(format!("no metadata for topic \"{name}\"")))?;
        if topic.error_code == error_code::UNKNOWN_TOPIC_OR_PARTITION {
            return Err(kafka_error(
                topic.error_code,
                format!("topic \"{name}\" does not exist"),
            ));
        }
        if topic.error_code != 0 {
            return Err(kafka_error(
                topic.error_code,
                format!("topic \"{name}\" is not available"),
            ));
        }
        if let Some(partition) = topic.partitions.iter().find(|p| p.error_code != 0) {
            return Err(kafka_error(
                partition.error_code,
                format!(
                    "partition {} of \"{name}\" has no leader",
                    partition.partition_index
                ),
            ));
        }
        Ok(metadata)
    })
}

/// The address of the leader of `partition`.
pub(crate) fn leader(
    metadata: &MetadataResponse,
    name: &str,
    partition: i32,
) -> Result<String, ClientError> {
    let topic = &metadata.topics[0];
    let found = topic
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| kafka_error(3, format!("topic \"{name}\" has no partition {partition}")))?;
    Cluster::address_of(metadata, found.leader_id.0).ok_or_else(|| {
        kafka_error(
            5,
            format!("partition {partition} of \"{name}\" has no leader"),
        )
    })
}

pub fn topic(connect: &Connect, command: TopicCommand) -> Result<(), ClientError> {
    let mut cluster = Cluster::new(&connect.bootstrap);
    let out = std::io::stdout();
    let mut out = out.lock();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut parsed = Vec::new();
            for config in &configs {
                let (key, value) = config.split_once('=').ok_or_else(|| {
                    ClientError::Usage(format!("--config \"{config}\" is not key=value"))
                })?;
                parsed.push(
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(key.to_string()))
                        .with_value(Some(StrBytes::from_string(value.to_string()))),
                );
            }
            let request = CreateTopicsRequest::default()
                .with_topics(vec![CreatableTopic::default()
                    .with_name(topic_name(&name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication_factor)
                    .with_configs(parsed)])
                .with_timeout_ms(30_000);
            retrying(|| {
                let address = controller(&mut cluster)?;
                let connection = cluster.to(&address)?;
                let version = connection.version(ApiKey::CreateTopics, 7)?;
                let response: CreateTopicsResponse =
                    connection.send(ApiKey::CreateTopics, version, &request)?;
                let result = &response.topics[0];
                if result.error_code != 0 {
                    let detail = result
                        .error_message
                        .as_ref()
                        .map(|m| format!(": {}", m.as_str()))
                        .unwrap_or_default();
                    return Err(kafka_error(
                        result.error_code,
                        format!("cannot create topic \"{name}\"{detail}"),
                    ));
                }
                Ok(())
            })?;
            let _ = writeln!(out, "created topic {name}");
        }
        TopicCommand::List => {
            let metadata = cluster.bootstrap()?.metadata(None)?;
            let mut names: Vec<&str> = metadata
                .topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str()))
                .collect();
            names.sort_unstable();
            for name in names {
                let _ = writeln!(out, "{name}");
            }
        }
        TopicCommand::Describe { name } => {
            let metadata = cluster.bootstrap()?.metadata(Some(&[&name]))?;
            let topic = &metadata.topics[0];
            if topic.error_code != 0 {
                return Err(kafka_error(
                    topic.error_code,
                    format!("topic \"{name}\" does not exist"),
                ));
            }
            let id = topic.topic_id;
            let _ = writeln!(
                out,
                "topic {name} id {id} partitions {}",
                topic.partitions.len()
            );
            let mut partitions: Vec<_> = topic.partitions.iter().collect();
            partitions.sort_by_key(|p| p.partition_index);
            for partition in partitions {
                let list = |nodes: &[kafka_protocol::messages::BrokerId]| {
                    nodes
                        .iter()
                        .map(|n| n.0.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let _ = writeln!(
                    out,
                    "  partition {} leader {} epoch {} replicas {} isr {}",
                    partition.partition_index,
                    partition.leader_id.0,
                    partition.leader_epoch,
                    list(&partition.replica_nodes),
                    list(&partition.isr_nodes)
                );
            }
            let connection = cluster.bootstrap()?;
            if let Ok(version) = connection.version(ApiKey::DescribeConfigs, 4) {
                let request = DescribeConfigsRequest::default().with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(StrBytes::from_string(name.clone()))
                        .with_configuration_keys(None),
                ]);
                let response: DescribeConfigsResponse =
                    connection.send(ApiKey::DescribeConfigs, version, &request)?;
                for result in &response.results {
                    for config in &result.configs {
                        let value = config.value.as_ref().map(|v| v.as_str()).unwrap_or("");
                        let _ = writeln!(out, "  config {}={}", config.name.as_str(), value);
                    }
                }
            }
        }
        TopicCommand::Delete { name } => {
            retrying(|| {
                let address = controller(&mut cluster)?;
                let connection = cluster.to(&address)?;
                let version = connection.version(ApiKey::DeleteTopics, 6)?;
                let request = DeleteTopicsRequest::default()
                    .with_topic_names(vec![topic_name(&name)])
                    .with_topics(vec![
                        DeleteTopicState::default().with_name(Some(topic_name(&name)))
                    ])
                    .with_timeout_ms(30_000);
                let response: DeleteTopicsResponse =
                    connection.send(ApiKey::DeleteTopics, version, &request)?;
                match response.responses.first() {
                    Some(result) if result.error_code == 3 => Err(ClientError::Kafka {
                        code: 3,
                        context: format!("topic \"{name}\" does not exist"),
                    }),
                    Some(result) if result.error_code != 0 => Err(kafka_error(
                        result.error_code,
                        format!("cannot delete topic \"{name}\""),
                    )),
                    _ => Ok(()),
                }
            })
            .map_err(|error| match error {
                // Not worth retrying: the topic is not there.
                ClientError::Kafka { code: 3, context } => ClientError::Kafka { code: 3, context },
                other => other,
            })?;
            let _ = writeln!(out, "deleted topic {name}");
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
        } => {
            let request = AlterPartitionReassignmentsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![ReassignableTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(vec![ReassignablePartition::default()
                        .with_partition_index(partition)
                        .with_replicas(Some(
                            replicas
                                .iter()
                                .map(|node| kafka_protocol::messages::BrokerId(*node))
                                .collect(),
                        ))])]);
            retrying(|| {
                let address = controller(&mut cluster)?;
                let connection = cluster.to(&address)?;
                let version = connection.version(ApiKey::AlterPartitionReassignments, 0)?;
                let response: AlterPartitionReassignmentsResponse =
                    connection.send(ApiKey::AlterPartitionReassignments, version, &request)?;
                let (code, message) = response
                    .responses
                    .first()
                    .and_then(|topic| topic.partitions.first())
                    .filter(|_| response.error_code == 0)
                    .map_or((response.error_code, response.error_message.clone()), |p| {
                        (p.error_code, p.error_message.clone())
                    });
                if code != 0 {
                    let detail = message
                        .map(|m| format!(": {}", m.as_str()))
                        .unwrap_or_default();
                    return Err(kafka_error(
                        code,
                        format!("cannot move {name}-{partition}{detail}"),
                    ));
                }
                Ok(())
            })?;
            let shown: Vec<String> = replicas.iter().map(i32::to_string).collect();
            let _ = writeln!(
                out,
                "moving {name}-{partition} to replicas {}",
                shown.join(",")
            );
        }
        TopicCommand::Moves => {
            // Every node answers for the partitions it hosts: ask them all.
            let metadata = cluster.bootstrap()?.metadata(Some(&[]))?;
            let mut moves: BTreeMap<(String, i32), String> = BTreeMap::new();
            for broker in &metadata.brokers {
                let Some(address) = Cluster::address_of(&metadata, broker.node_id.0) else {
                    continue;
                };
                let Ok(connection) = cluster.to(&address) else {
                    continue;
                };
                let Ok(version) = connection.version(ApiKey::ListPartitionReassignments, 0) else {
                    continue;
                };
                let request = ListPartitionReassignmentsRequest::default()
                    .with_timeout_ms(10_000)
                    .with_topics(None);
                let Ok(response) = connection.send::<_, ListPartitionReassignmentsResponse>(
                    ApiKey::ListPartitionReassignments,
                    version,
                    &request,
                ) else {
                    continue;
                };
                let list = |nodes: &[kafka_protocol::messages::BrokerId]| {
                    nodes
                        .iter()
                        .map(|n| n.0.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                for topic in &response.topics {
                    for partition in &topic.partitions {
                        moves.insert(
                            (topic.name.0.to_string(), partition.partition_index),
                            format!(
                                "replicas {} adding {} removing {}",
                                list(&partition.replicas),
                                list(&partition.adding_replicas),
                                list(&partition.removing_replicas)
                            ),
                        );
                    }
                }
            }
            if moves.is_empty() {
                let _ = writeln!(out, "no partition is moving");
            }
            for ((name, partition), line) in moves {
                let _ = writeln!(out, "{name}-{partition} {line}");
            }
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn produce(connect: &Connect, args: ProduceArgs) -> Result<(), ClientError> {
    let mut headers = IndexMap::new();
    for header in &args.headers {
        let (key, value) = header
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("--header \"{header}\" is not key=value")))?;
        headers.insert(
            StrBytes::from_string(key.to_string()),
            Some(Bytes::from(value.to_string())),
        );
    }
    let mut cluster = Cluster::new(&connect.bootstrap);
    let mut metadata = topic_metadata(&mut cluster, &args.topic)?;
    let partition_count = metadata.topics[0].partitions.len() as i32;
    if let Some(partition) = args.partition {
        if partition < 0 || partition >= partition_count {
            return Err(kafka_error(
                3,
                format!(
                    "topic \"{}\" has partitions 0..{}, not {partition}",
                    args.topic,
                    partition_count - 1
                ),
            ));
        }
    }
    let mut pending: BTreeMap<i32, (Vec<Record>, usize)> = BTreeMap::new();
    let mut produced: BTreeMap<i32, Produced> = BTreeMap::new();
    let mut next_keyless = 0i32;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line =
            line.map_err(|error| ClientError::Other(format!("cannot read stdin: {error}")))?;
        let (key, value) = match &args.key_separator {
            Some(separator) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (Some(key.to_string()), value.to_string()),
                None => (None, line.clone()),
            },
            None => (None, line.clone()),
        };
        let partition = match (args.partition, &key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key.as_bytes(), partition_count),
            (None, None) => {
                next_keyless = (next_keyless + 1) % partition_count;
                next_keyless
            }
        };
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: NO_SEQUENCE,
            timestamp: now_ms(),
            key: key.map(Bytes::from),
            value: Some(Bytes::from(value)),
            headers: headers.clone(),
        };
        let size =
            record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len);
        let entry = pending.entry(partition).or_default();
        entry.0.push(record);
        entry.1 += size;
        if entry.0.len() >= PRODUCE_BATCH_RECORDS_MAX || entry.1 >= PRODUCE_BATCH_BYTES_MAX {
            let (records, _) = pending.remove(&partition).expect("present");
            send_batch(
                &mut cluster,
                &mut metadata,
                &args,
                partition,
                records,
                &mut produced,
            )?;
        }
    }
    for (partition, (records, _)) in std::mem::take(&mut pending) {
        send_batch(
            &mut cluster,
            &mut metadata,
            &args,
            partition,
            records,
            &mut produced,
        )?;
    }
    for (partition, done) in produced {
        let Produced {
            records,
            first_offset,
            last_offset,
        } = done;
        let topic = &args.topic;
        match (first_offset, last_offset) {
            (Some(first), Some(last)) => eprintln!(
                "produced {records} records to {topic}-{partition} at offsets {first}..{last}"
            ),
            _ => eprintln!(
                "produced {records} records to {topic}-{partition} (acks=0: offsets unknown)"
            ),
        }
    }
    Ok(())
}

/// Whether a request that failed with `error` may succeed at the leader
/// that fresh metadata names: the leader moved, or its node went away.
pub(crate) fn worth_rerouting(error: &ClientError) -> bool {
    match error {
        ClientError::Connect(_) => true,
        ClientError::Kafka { code, .. } => retriable(*code),
        ClientError::Other(_) | ClientError::Usage(_) => false,
    }
}

/// Waits a little, then asks the cluster again who leads `topic`'s
/// partitions, over new connections.
pub(crate) fn refresh_metadata(
    cluster: &mut Cluster,
    metadata: &mut MetadataResponse,
    topic: &str,
) -> Result<(), ClientError> {
    cluster.forget_connections();
    std::thread::sleep(Duration::from_millis(REROUTE_BACKOFF_MS));
    *metadata = topic_metadata(cluster, topic)?;
    Ok(())
}

/// Sends one batch to the partition's leader, following the leader when it
/// moves. A batch whose connection broke after it was sent may be written
/// twice, as with any Kafka producer without idempotence (at least once).
fn send_batch(
    cluster: &mut Cluster,
    metadata: &mut MetadataResponse,
    args: &ProduceArgs,
    partition: i32,
    mut records: Vec<Record>,
    produced: &mut BTreeMap<i32, Produced>,
) -> Result<(), ClientError> {
    for (offset, record) in records.iter_mut().enumerate() {
        record.offset = offset as i64;
        // kafka-protocol starts a new batch where `offset - sequence`
        // changes; counting from -1 keeps one batch whose base sequence is
        // -1, as a producer without idempotence sends.
        record.sequence = offset as i32 - 1;
    }
    let compression = match args.compression {
        Codec::None => Compression::None,
        Codec::Gzip => Compression::Gzip,
        Codec::Snappy => Compression::Snappy,
        Codec::Lz4 => Compression::Lz4,
        Codec::Zstd => Compression::Zstd,
    };
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|error| ClientError::Other(format!("cannot encode a record batch: {error}")))?;
    let batch = batch.freeze();
    let acks = match args.acks {
        Acks::None => 0,
        Acks::Leader => 1,
        Acks::All => -1,
    };
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(&args.topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    let count = records.len() as i64;
    let deadline = Instant::now() + Duration::from_millis(RETRY_FOR_MS);
    let base_offset = loop {
        let attempt = (|| {
            let address = leader(metadata, &args.topic, partition)?;
            let connection = cluster.to(&address)?;
            let version = connection.version(ApiKey::Produce, 9)?;
            if acks == 0 {
                // No response comes; the offsets stay unknown.
                send_without_response(connection, version, &request)?;
                return Ok(None);
            }
            let response: ProduceResponse = connection.send(ApiKey::Produce, version, &request)?;
            let answer = &response.responses[0].partition_responses[0];
            if answer.error_code != 0 {
                return Err(kafka_error(
                    answer.error_code,
                    format!("cannot produce to {}-{partition}", args.topic),
                ));
            }
            Ok(Some(answer.base_offset))
        })();
        match attempt {
            Ok(base_offset) => break base_offset,
            Err(error) if worth_rerouting(&error) && Instant::now() < deadline => {
                refresh_metadata(cluster, metadata, &args.topic)?;
            }
            Err(error) => return Err(error),
        }
    };
    let entry = produced.entry(partition).or_default();
    entry.records += count;
    if let Some(base_offset) = base_offset {
        entry.first_offset.get_or_insert(base_offset);
        entry.last_offset = Some(base_offset + count - 1);
    }
    Ok(())
}

/// What one `runnel produce` wrote to one partition. Other producers may
/// write between its batches, so the records are counted rather than
/// derived from the offsets.
#[derive(Default)]
struct Produced {
    records: i64,
    /// Unknown with acks=0, where no response comes.
    first_offset: Option<i64>,
    last_offset: Option<i64>,
}

fn send_without_response(
    connection: &mut crate::client::Connection,
    version: i16,
    request: &ProduceRequest,
) -> Result<(), ClientError> {
    connection.send_no_response(ApiKey::Produce, version, request)
}

pub(crate) fn list_offset(
    cluster: &mut Cluster,
    address: &str,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<i64, ClientError> {
    let connection = cluster.to(address)?;
    let version = connection.version(ApiKey::ListOffsets, 7)?;
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let response: ListOffsetsResponse = connection.send(ApiKey::ListOffsets, version, &request)?;
    let answer = &response.topics[0].partitions[0];
    if answer.error_code != 0 {
        return Err(kafka_error(
            answer.error_code,
            format!("cannot list offsets of {topic}-{partition}"),
        ));
    }
    Ok(answer.offset)
}

/// Where `runnel consume` starts, as given on the command line.
enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
}

pub fn consume(connect: &Connect, args: ConsumeArgs) -> Result<(), ClientError> {
    if args.group.is_some() {
        return crate::group_cli::consume_in_group(connect, args);
    }
    // Checked before connecting, so that a typo is a usage error even when
    // the broker cannot be reached.
    let start = match args.offset.as_str() {
        "earliest" => StartAt::Earliest,
        "latest" => StartAt::Latest,
        number => match number.parse::<i64>() {
            Ok(offset) if offset >= 0 => StartAt::Offset(offset),
            _ => {
                return Err(ClientError::Usage(format!(
                    "--offset \"{number}\" is not earliest, latest or an offset (0 or more)"
                )))
            }
        },
    };
    let mut cluster = Cluster::new(&connect.bootstrap);
    let mut metadata = topic_metadata(&mut cluster, &args.topic)?;
    // Where to start, asked of the partition's leader, which may move
    // meanwhile as it may while fetching.
    let deadline = Instant::now() + Duration::from_millis(RETRY_FOR_MS);
    let (mut address, mut offset) = loop {
        match start_offset(&mut cluster, &metadata, &args, &start) {
            Ok(found) => break found,
            Err(error) if worth_rerouting(&error) && Instant::now() < deadline => {
                refresh_metadata(&mut cluster, &mut metadata, &args.topic)?;
            }
            Err(error) => return Err(error),
        }
    };
    let format = args.format.replace("\\n", "\n").replace("\\t", "\t");
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut printed = 0u64;
    let mut reroute_deadline: Option<Instant> = None;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(());
        }
        let response = match fetch(&mut cluster, &address, &args, offset) {
            Ok(response) => {
                reroute_deadline = None;
                response
            }
            Err(error) if worth_rerouting(&error) => {
                // The leader moved or its node went away: follow the
                // partition to its new leader, for a while.
                let deadline = *reroute_deadline
                    .get_or_insert_with(|| Instant::now() + Duration::from_millis(RETRY_FOR_MS));
                if Instant::now() >= deadline {
                    return Err(error);
                }
                refresh_metadata(&mut cluster, &mut metadata, &args.topic)?;
                address = leader(&metadata, &args.topic, args.partition)?;
                continue;
            }
            Err(error) => return Err(error),
        };
        let data = &response.responses[0].partitions[0];
        let mut records = data.records.clone().unwrap_or_default();
        let mut got_any = false;
        while !records.is_empty() {
            let set = match RecordBatchDecoder::decode(&mut records) {
                Ok(set) => set,
                // A partial batch at the end of a response is normal.
                Err(_) => break,
            };
            for record in set.records {
                if record.offset < offset || record.control {
                    continue;
                }
                got_any = true;
                offset = record.offset + 1;
                let _ = out.write_all(render(&format, &record, args.partition).as_bytes());
                printed += 1;
                if args.count.is_some_and(|count| printed >= count) {
                    let _ = out.flush();
                    return Ok(());
                }
            }
        }
        let _ = out.flush();
        if args.exit_at_end && !got_any && offset >= data.high_watermark {
            return Ok(());
        }
    }
}

/// The partition leader's address and the offset `runnel consume` starts at.
fn start_offset(
    cluster: &mut Cluster,
    metadata: &MetadataResponse,
    args: &ConsumeArgs,
    start: &StartAt,
) -> Result<(String, i64), ClientError> {
    let address = leader(metadata, &args.topic, args.partition)?;
    let mut list =
        |timestamp: i64| list_offset(cluster, &address, &args.topic, args.partition, timestamp);
    let offset = match (args.timestamp, start) {
        // -1 from a search by time: no record that late; start at the end.
        (Some(timestamp), _) => match list(timestamp)? {
            -1 => list(-1)?,
            offset => offset,
        },
        (None, StartAt::Earliest) => list(-2)?,
        (None, StartAt::Latest) => list(-1)?,
        (None, StartAt::Offset(offset)) => *offset,
    };
    Ok((address, offset))
}

/// One Fetch of the partition from `offset` at `address`; a partition error
/// becomes a Kafka error.
fn fetch(
    cluster: &mut Cluster,
    address: &str,
    args: &ConsumeArgs,
    offset: i64,
) -> Result<FetchResponse, ClientError> {
    let connection = cluster.to(address)?;
    let version = connection.version(ApiKey::Fetch, 12)?;
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_isolation_level(1)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(&args.topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(args.partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(4 << 20)])]);
    let response: FetchResponse = connection.send(ApiKey::Fetch, version, &request)?;
    let data = &response.responses[0].partitions[0];
    if data.error_code != 0 {
        return Err(kafka_error(
            data.error_code,
            format!(
                "cannot fetch {}-{} at offset {offset}",
                args.topic, args.partition
            ),
        ));
    }
    Ok(response)
}

pub(crate) fn render(format: &str, record: &Record, partition: i32) -> String {
    let text = |bytes: &Option<Bytes>| {
        bytes
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('k') => out.push_str(&text(&record.key)),
            Some('v') => out.push_str(&text(&record.value)),
            Some('o') => out.push_str(&record.offset.to_string()),
            Some('t') => out.push_str(&record.timestamp.to_string()),
            Some('p') => out.push_str(&partition.to_string()),
            Some('h') => {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|(k, v)| format!("{}={}", k.as_str(), text(v)))
                    .collect();
                out.push_str(&headers.join(","));
            }
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn encoded_batches_validate() {
        let record = |offset: i64| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32 - 1,
            timestamp: 1_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: IndexMap::new(),
        };
        let records = [record(0), record(1)];
        let mut batch = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut batch,
            records.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        let header = runnel_kafka::batch::validate(&batch).expect("one valid batch");
        assert_eq!(header.record_count, 2);
        assert_eq!(header.base_sequence, -1);
    }
}

/// `runnel cluster status`: every node, whether it answers, and every
/// partition's leader and in-sync replicas, as each partition's leader
/// reports them (only a leader knows which replicas keep up).
#[derive(Args, Debug)]
pub struct AddNodeArgs {
    /// The new node's id (its `runnel serve --node-id`).
    pub node_id: u64,
    /// Where the other nodes reach it: its --rpc-addr, host:port.
    #[arg(long)]
    pub rpc_addr: String,
    /// Where clients reach it: its advertised Kafka address, host:port.
    #[arg(long)]
    pub kafka_addr: String,
}

fn listener(name: &str, address: &str) -> Result<RaftListener, ClientError> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| ClientError::Usage(format!("\"{address}\" is not host:port")))?;
    Ok(RaftListener::default()
        .with_name(StrBytes::from_string(name.to_string()))
        .with_host(StrBytes::from_string(host.to_string()))
        .with_port(port))
}

/// Sends AddRaftVoter or RemoveRaftVoter to the controller, retrying while
/// it moves.
fn change_membership<Req: Encodable>(
    cluster: &mut Cluster,
    key: ApiKey,
    request: &Req,
    what: &str,
) -> Result<(), ClientError> {
    retrying(|| {
        let address = controller(cluster)?;
        let connection = cluster.to(&address)?;
        let version = connection.version(key, 0)?;
        let (code, message) = if key == ApiKey::AddRaftVoter {
            let response: AddRaftVoterResponse = connection.send(key, version, request)?;
            (response.error_code, response.error_message)
        } else {
            let response: RemoveRaftVoterResponse = connection.send(key, version, request)?;
            (response.error_code, response.error_message)
        };
        if code != 0 {
            let detail = message
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default();
            return Err(kafka_error(code, format!("cannot {what}{detail}")));
        }
        Ok(())
    })
}

pub fn cluster_add_node(connect: &Connect, args: &AddNodeArgs) -> Result<(), ClientError> {
    let mut cluster = Cluster::new(&connect.bootstrap);
    let request = AddRaftVoterRequest::default()
        .with_voter_id(i32::try_from(args.node_id).unwrap_or(-1))
        .with_timeout_ms(30_000)
        .with_listeners(vec![
            listener("RPC", &args.rpc_addr)?,
            listener("KAFKA", &args.kafka_addr)?,
        ]);
    let what = format!("add node {}", args.node_id);
    change_membership(&mut cluster, ApiKey::AddRaftVoter, &request, &what)?;
    println!(
        "node {} added; it joins the metadata group once it has caught up",
        args.node_id
    );
    Ok(())
}

pub fn cluster_remove_node(connect: &Connect, node_id: u64) -> Result<(), ClientError> {
    let mut cluster = Cluster::new(&connect.bootstrap);
    let request =
        RemoveRaftVoterRequest::default().with_voter_id(i32::try_from(node_id).unwrap_or(-1));
    let what = format!("remove node {node_id}");
    change_membership(&mut cluster, ApiKey::RemoveRaftVoter, &request, &what)?;
    println!(
        "node {node_id} removed; its replicas move to other nodes (runnel topic moves), then stop it"
    );
    Ok(())
}

pub fn cluster_status(connect: &Connect) -> Result<(), ClientError> {
    let mut cluster = Cluster::new(&connect.bootstrap);
    let metadata = cluster.bootstrap()?.metadata(None)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let cluster_id = metadata
        .cluster_id
        .as_ref()
        .map(|id| id.as_str().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "cluster {cluster_id}, controller (metadata leader) node {}",
        metadata.controller_id.0
    );
    // Each node's own view, for the partitions it leads.
    let mut views: BTreeMap<i32, Option<MetadataResponse>> = BTreeMap::new();
    let mut brokers: Vec<_> = metadata.brokers.iter().collect();
    brokers.sort_by_key(|broker| broker.node_id.0);
    for broker in &brokers {
        let address = format!("{}:{}", broker.host.as_str(), broker.port);
        let view = cluster
            .to(&address)
            .and_then(|connection| connection.metadata(None))
            .ok();
        views.insert(broker.node_id.0, view);
    }
    for broker in &brokers {
        let address = format!("{}:{}", broker.host.as_str(), broker.port);
        let (state, led) = match &views[&broker.node_id.0] {
            Some(view) => {
                let led: usize = view
                    .topics
                    .iter()
                    .flat_map(|topic| topic.partitions.iter())
                    .filter(|partition| partition.leader_id.0 == broker.node_id.0)
                    .count();
                ("up", led)
            }
            None => ("DOWN", 0),
        };
        let _ = writeln!(
            out,
            "node {} {address} {state}, leads {led} partitions",
            broker.node_id.0
        );
    }
    let (mut total, mut under, mut offline) = (0, 0, 0);
    let mut topics: Vec<_> = metadata.topics.iter().collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    for topic in topics {
        let name = topic.name.as_ref().map(|n| n.0.as_str()).unwrap_or("?");
        let _ = writeln!(out, "topic {name}: {} partitions", topic.partitions.len());
        let mut partitions: Vec<_> = topic.partitions.iter().collect();
        partitions.sort_by_key(|p| p.partition_index);
        for partition in partitions {
            total += 1;
            let leader = partition.leader_id.0;
            // The leader's own report of the replicas in sync.
            let from_leader = views
                .get(&leader)
                .and_then(|view| view.as_ref())
                .and_then(|view| {
                    view.topics
                        .iter()
                        .find(|t| t.name == topic.name)
                        .and_then(|t| {
                            t.partitions
                                .iter()
                                .find(|p| p.partition_index == partition.partition_index)
                        })
                        .filter(|p| p.leader_id.0 == leader)
                        .map(|p| p.isr_nodes.clone())
                });
            let list = |nodes: &[kafka_protocol::messages::BrokerId]| {
                nodes
                    .iter()
                    .map(|n| n.0.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let state = match &from_leader {
                _ if leader < 0 => {
                    offline += 1;
                    "OFFLINE (no leader)"
                }
                None => {
                    offline += 1;
                    "OFFLINE (leader does not answer)"
                }
                Some(in_sync) if in_sync.len() < partition.replica_nodes.len() => {
                    under += 1;
                    "UNDER-REPLICATED"
                }
                Some(_) => "ok",
            };
            let _ = writeln!(
                out,
                "  partition {} leader {leader} epoch {} replicas {} in-sync {} {state}",
                partition.partition_index,
                partition.leader_epoch,
                list(&partition.replica_nodes),
                from_leader
                    .as_deref()
                    .map(list)
                    .unwrap_or_else(|| "?".into()),
            );
        }
    }
    let _ = writeln!(
        out,
        "{total} partitions: {under} under-replicated, {offline} offline"
    );
    Ok(())
}
