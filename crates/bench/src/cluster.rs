//! Setting up a run with standard Kafka requests only: find the brokers,
//! create the topic when it is missing, wait until every partition has a
//! leader, and read where each partition's log ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::connection::Connection;
use crate::BenchError;

/// How long the bench waits for a new topic's partitions to have leaders.
pub const TOPIC_READY_TIMEOUT_MS: u64 = 60_000;
/// Kafka's TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Kafka's UNKNOWN_TOPIC_OR_PARTITION.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// Who leads each partition of the topic, and where the brokers are.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Broker id to `host:port`.
    pub brokers: BTreeMap<i32, String>,
    /// Partition index to its leader's broker id.
    pub leaders: BTreeMap<i32, i32>,
    /// Replicas of the most replicated partition.
    pub replicas: usize,
}

impl Layout {
    pub fn partitions(&self) -> Vec<i32> {
        self.leaders.keys().copied().collect()
    }

    pub fn leader_address(&self, partition: i32) -> Option<&str> {
        let leader = self.leaders.get(&partition)?;
        self.brokers.get(leader).map(String::as_str)
    }
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// A connection to the first bootstrap broker that answers.
pub async fn bootstrap(servers: &str) -> Result<Connection, BenchError> {
    let mut last = BenchError::Usage("--bootstrap names no broker".into());
    for address in servers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match Connection::open(address).await {
            Ok(connection) => return Ok(connection),
            Err(error) => last = error,
        }
    }
    Err(last)
}

async fn metadata(
    connection: &mut Connection,
    topic: Option<&str>,
) -> Result<MetadataResponse, BenchError> {
    let version = connection.version(ApiKey::Metadata, 1, 12)?;
    let request = MetadataRequest::default()
        .with_topics(Some(
            topic
                .map(|name| vec![MetadataRequestTopic::default().with_name(Some(topic_name(name)))])
                .unwrap_or_default(),
        ))
        .with_allow_auto_topic_creation(false);
    connection
        .request(ApiKey::Metadata, version, &request)
        .await
}

fn brokers_of(metadata: &MetadataResponse) -> BTreeMap<i32, String> {
    metadata
        .brokers
        .iter()
        .map(|broker| {
            (
                broker.node_id.0,
                format!("{}:{}", broker.host.as_str(), broker.port),
            )
        })
        .collect()
}

/// Creates `topic` unless it exists, then waits until every partition has
/// a leader the metadata names; returns the layout.
pub async fn prepare_topic(
    bootstrap: &mut Connection,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &[String],
) -> Result<(Layout, bool), BenchError> {
    let existing = metadata(bootstrap, Some(topic)).await?;
    let exists = existing
        .topics
        .first()
        .is_some_and(|t| t.error_code != UNKNOWN_TOPIC_OR_PARTITION);
    let mut created = false;
    if !exists {
        let brokers = brokers_of(&existing);
        let controller = brokers
            .get(&existing.controller_id.0)
            .cloned()
            .unwrap_or_else(|| bootstrap.address.clone());
        let mut connection = Connection::open(&controller).await?;
        let version = connection.version(ApiKey::CreateTopics, 2, 7)?;
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)
                .with_configs(
                    configs
                        .iter()
                        .filter_map(|config| config.split_once('='))
                        .map(|(key, value)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(key.to_string()))
                                .with_value(Some(StrBytes::from_string(value.to_string())))
                        })
                        .collect(),
                )])
            .with_timeout_ms(30_000);
        let response: CreateTopicsResponse = connection
            .request(ApiKey::CreateTopics, version, &request)
            .await?;
        let result = response
            .topics
            .first()
            .ok_or_else(|| BenchError::Kafka("CreateTopics answered for no topic".into()))?;
        if result.error_code != 0 && result.error_code != TOPIC_ALREADY_EXISTS {
            let detail = result
                .error_message
                .as_ref()
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default();
            return Err(BenchError::Kafka(format!(
                "cannot create topic \"{topic}\" (error {}){detail}",
                result.error_code
            )));
        }
        created = result.error_code == 0;
    }
    let deadline = Instant::now() + Duration::from_millis(TOPIC_READY_TIMEOUT_MS);
    loop {
        // A new topic's first leaders may hand over to the preferred
        // replica (the first listed) moments later, as Runnel does: wait
        // for that, so that the run does not start with leaders moving.
        if let Some(layout) = layout(bootstrap, topic, created).await? {
            return Ok((layout, created));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Kafka(format!(
                "topic \"{topic}\" has partitions without a leader after {} s",
                TOPIC_READY_TIMEOUT_MS / 1000
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The topic's layout from fresh metadata, or `None` while a partition has
/// no leader (or, with `preferred`, a leader other than its preferred
/// replica).
pub async fn layout(
    connection: &mut Connection,
    topic: &str,
    preferred: bool,
) -> Result<Option<Layout>, BenchError> {
    let response = metadata(connection, Some(topic)).await?;
    let brokers = brokers_of(&response);
    let Some(found) = response.topics.first().filter(|t| t.error_code == 0) else {
        return Ok(None);
    };
    let leaders: BTreeMap<i32, i32> = found
        .partitions
        .iter()
        .filter(|p| p.error_code == 0 && brokers.contains_key(&p.leader_id.0))
        .filter(|p| !preferred || p.replica_nodes.first().is_none_or(|r| *r == p.leader_id))
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    if leaders.is_empty() || leaders.len() != found.partitions.len() {
        return Ok(None);
    }
    let replicas = found
        .partitions
        .iter()
        .map(|p| p.replica_nodes.len())
        .max()
        .unwrap_or(1);
    Ok(Some(Layout {
        brokers,
        leaders,
        replicas,
    }))
}

/// The log end offset of every partition, asked of each leader.
pub async fn end_offsets(layout: &Layout, topic: &str) -> Result<BTreeMap<i32, i64>, BenchError> {
    let mut by_leader: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for partition in layout.partitions() {
        let address = layout.leader_address(partition).ok_or_else(|| {
            BenchError::Kafka(format!(
                "partition {partition} of \"{topic}\" has no leader"
            ))
        })?;
        by_leader.entry(address).or_default().push(partition);
    }
    let mut offsets = BTreeMap::new();
    for (address, partitions) in by_leader {
        let mut connection = Connection::open(address).await?;
        let version = connection.version(ApiKey::ListOffsets, 1, 7)?;
        let request = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&partition| {
                            ListOffsetsPartition::default()
                                .with_partition_index(partition)
                                .with_timestamp(-1)
                        })
                        .collect(),
                )]);
        let response: ListOffsetsResponse = connection
            .request(ApiKey::ListOffsets, version, &request)
            .await?;
        for topic_response in &response.topics {
            for answer in &topic_response.partitions {
                if answer.error_code != 0 {
                    return Err(BenchError::Kafka(format!(
                        "cannot list the end offset of {topic}-{} (error {})",
                        answer.partition_index, answer.error_code
                    )));
                }
                offsets.insert(answer.partition_index, answer.offset);
            }
        }
    }
    Ok(offsets)
}
