//! `runnel group list|describe|delete|reset-offsets` and `runnel consume
//! --group`: consumer groups through the Kafka protocol, against any broker.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args, Subcommand};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;

use crate::cli::{
    kafka_error, leader, list_offset, render, retrying, topic_metadata, topic_name, Connect,
    ConsumeArgs,
};
use crate::client::{ClientError, Cluster, Connection};

/// The session `runnel consume --group` asks for.
pub const MEMBER_SESSION_TIMEOUT_MS: i32 = 10_000;
/// How often it heartbeats (a third of the session, as Kafka clients do).
pub const MEMBER_HEARTBEAT_INTERVAL_MS: u64 = 3_000;
/// Most JoinGroup rounds one rebalance may take before the tool gives up.
pub const JOIN_ATTEMPTS_MAX: usize = 50;

const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List the consumer groups of every broker.
    List,
    /// A group's state, members and their partitions, and per partition its
    /// committed offset, end offset and lag.
    Describe { group: String },
    /// Delete a group that has no members, with its committed offsets.
    Delete { group: String },
    /// Set a stopped group's committed offsets of a topic.
    ResetOffsets(ResetArgs),
}

#[derive(Args, Debug)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["to_earliest", "to_latest", "to_datetime", "to_offset"])
))]
pub struct ResetArgs {
    pub group: String,
    #[arg(long, short = 't', required = true)]
    pub topic: String,
    /// The first offset still in each partition.
    #[arg(long)]
    pub to_earliest: bool,
    /// The end of each partition (nothing left to read).
    #[arg(long)]
    pub to_latest: bool,
    /// The first record at or after this time: RFC 3339 UTC
    /// (2026-12-01T09:30:00Z) or milliseconds since the epoch.
    #[arg(long)]
    pub to_datetime: Option<String>,
    /// This offset in every partition.
    #[arg(long)]
    pub to_offset: Option<i64>,
}

fn group_id(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

fn coordinator_errors(code: i16) -> bool {
    matches!(
        code,
        COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR
    )
}

/// The address of `group`'s coordinator, waiting (boundedly) while it is
/// elected or loads.
fn find_coordinator(cluster: &mut Cluster, group: &str) -> Result<String, ClientError> {
    retrying(|| {
        let connection = cluster.bootstrap()?;
        let version = connection.version(ApiKey::FindCoordinator, 3)?;
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string()));
        let response: FindCoordinatorResponse =
            connection.send(ApiKey::FindCoordinator, version, &request)?;
        if response.error_code != 0 {
            return Err(kafka_error(
                response.error_code,
                format!("no coordinator for group \"{group}\""),
            ));
        }
        Ok(format!("{}:{}", response.host.as_str(), response.port))
    })
}

/// Runs `f` against the group's coordinator, finding it again when it
/// moves (NOT_COORDINATOR and the like), for a while.
fn at_coordinator<T>(
    cluster: &mut Cluster,
    group: &str,
    mut f: impl FnMut(&mut Connection) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + Duration::from_millis(crate::cli::RETRY_FOR_MS);
    loop {
        let address = find_coordinator(cluster, group)?;
        let result = cluster.to(&address).and_then(&mut f);
        match result {
            Err(ClientError::Kafka { code, .. })
                if coordinator_errors(code) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(ClientError::Connect(_)) if Instant::now() < deadline => {
                cluster.forget_connections();
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

fn describe(
    connection: &mut Connection,
    group: &str,
) -> Result<kafka_protocol::messages::describe_groups_response::DescribedGroup, ClientError> {
    let version = connection.version(ApiKey::DescribeGroups, 5)?;
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let response: DescribeGroupsResponse =
        connection.send(ApiKey::DescribeGroups, version, &request)?;
    let described = response
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::Other("DescribeGroups answered no group".into()))?;
    if described.error_code != 0 {
        return Err(kafka_error(
            described.error_code,
            format!("cannot describe group \"{group}\""),
        ));
    }
    Ok(described)
}

/// Committed offsets of `group`: topic -> partition -> offset (all topics).
fn committed(
    connection: &mut Connection,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, ClientError> {
    let version = connection.version(ApiKey::OffsetFetch, 7)?;
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(topics.map(|topics| {
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(topic_name(&topic))
                        .with_partition_indexes(partitions)
                })
                .collect()
        }));
    let response: OffsetFetchResponse = connection.send(ApiKey::OffsetFetch, version, &request)?;
    if response.error_code != 0 {
        return Err(kafka_error(
            response.error_code,
            format!("cannot fetch the offsets of group \"{group}\""),
        ));
    }
    let mut found: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for topic in response.topics {
        for partition in topic.partitions {
            if partition.error_code != 0 {
                return Err(kafka_error(
                    partition.error_code,
                    format!("cannot fetch the offsets of group \"{group}\""),
                ));
            }
            found
                .entry(topic.name.0.to_string())
                .or_default()
                .insert(partition.partition_index, partition.committed_offset);
        }
    }
    Ok(found)
}

/// Commits `offsets` (partition -> offset) of `topic` for a member of
/// `generation` (-1 and no member for a stopped group).
fn commit(
    connection: &mut Connection,
    group: &str,
    generation: i32,
    member_id: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), ClientError> {
    let version = connection.version(ApiKey::OffsetCommit, 7)?;
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(StrBytes::from_string(member_id.to_string()))
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(partition, offset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*partition)
                            .with_committed_offset(*offset)
                            .with_committed_leader_epoch(-1)
                            .with_committed_metadata(Some(StrBytes::from_static_str("")))
                    })
                    .collect(),
            )]);
    let response: OffsetCommitResponse =
        connection.send(ApiKey::OffsetCommit, version, &request)?;
    for topic_response in &response.topics {
        if let Some(failed) = topic_response.partitions.iter().find(|p| p.error_code != 0) {
            return Err(kafka_error(
                failed.error_code,
                format!(
                    "cannot commit {topic}-{} for group \"{group}\"",
                    failed.partition_index
                ),
            ));
        }
    }
    Ok(())
}

pub fn group(connect: &Connect, command: GroupCommand) -> Result<(), ClientError> {
    let mut cluster = Cluster::new(&connect.bootstrap);
    let out = std::io::stdout();
    let mut out = out.lock();
    match command {
        GroupCommand::List => {
            let metadata = cluster.bootstrap()?.metadata(Some(&[]))?;
            let mut groups = BTreeMap::new();
            for broker in &metadata.brokers {
                let address = format!("{}:{}", broker.host.as_str(), broker.port);
                let connection = cluster.to(&address)?;
                let version = connection.version(ApiKey::ListGroups, 4)?;
                let response: ListGroupsResponse =
                    connection.send(ApiKey::ListGroups, version, &ListGroupsRequest::default())?;
                if response.error_code != 0 {
                    return Err(kafka_error(
                        response.error_code,
                        format!("broker {address} cannot list its groups"),
                    ));
                }
                for listed in response.groups {
                    groups.insert(
                        listed.group_id.0.to_string(),
                        (
                            listed.group_state.to_string(),
                            listed.protocol_type.to_string(),
                        ),
                    );
                }
            }
            for (name, (state, protocol_type)) in groups {
                let protocol_type = if protocol_type.is_empty() {
                    "-".to_string()
                } else {
                    protocol_type
                };
                let _ = writeln!(out, "{name}\t{state}\t{protocol_type}");
            }
        }
        GroupCommand::Describe { group } => {
            let (described, offsets) = at_coordinator(&mut cluster, &group, |connection| {
                Ok((
                    describe(connection, &group)?,
                    committed(connection, &group, None)?,
                ))
            })?;
            if described.group_state.as_str() == "Dead" {
                return Err(kafka_error(69, format!("group \"{group}\" does not exist")));
            }
            let _ = writeln!(
                out,
                "group {group}: {} ({} {}), {} member(s)",
                described.group_state.as_str(),
                if described.protocol_type.is_empty() {
                    "-"
                } else {
                    described.protocol_type.as_str()
                },
                if described.protocol_data.is_empty() {
                    "-"
                } else {
                    described.protocol_data.as_str()
                },
                described.members.len()
            );
            for member in &described.members {
                let assigned = parse_assignment(&member.member_assignment)
                    .map(|topics| {
                        topics
                            .iter()
                            .flat_map(|(topic, partitions)| {
                                partitions.iter().map(move |p| format!("{topic}-{p}"))
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  member {} client {}{} partitions [{assigned}]",
                    member.member_id.as_str(),
                    member.client_id.as_str(),
                    member
                        .group_instance_id
                        .as_ref()
                        .map(|id| format!(" instance {}", id.as_str()))
                        .unwrap_or_default(),
                );
            }
            let _ = writeln!(out, "TOPIC\tPARTITION\tCOMMITTED\tEND\tLAG");
            for (topic, partitions) in &offsets {
                let metadata = topic_metadata(&mut cluster, topic).ok();
                for (partition, offset) in partitions {
                    let end = metadata
                        .as_ref()
                        .and_then(|metadata| leader(metadata, topic, *partition).ok())
                        .and_then(|address| {
                            list_offset(&mut cluster, &address, topic, *partition, -1).ok()
                        });
                    let (end, lag) = match end {
                        Some(end) if *offset >= 0 => {
                            (end.to_string(), (end - offset).max(0).to_string())
                        }
                        Some(end) => (end.to_string(), "-".into()),
                        None => ("-".into(), "-".into()),
                    };
                    let _ = writeln!(out, "{topic}\t{partition}\t{offset}\t{end}\t{lag}");
                }
            }
        }
        GroupCommand::Delete { group } => {
            let code = at_coordinator(&mut cluster, &group, |connection| {
                let version = connection.version(ApiKey::DeleteGroups, 2)?;
                let request =
                    DeleteGroupsRequest::default().with_groups_names(vec![group_id(&group)]);
                let response: DeleteGroupsResponse =
                    connection.send(ApiKey::DeleteGroups, version, &request)?;
                let code = response
                    .results
                    .first()
                    .map_or(-1, |result| result.error_code);
                if coordinator_errors(code) {
                    return Err(kafka_error(code, "coordinator moved"));
                }
                Ok(code)
            })?;
            match code {
                0 => {
                    let _ = writeln!(out, "deleted group \"{group}\"");
                }
                68 => {
                    return Err(kafka_error(
                        code,
                        format!("group \"{group}\" has active members; stop them first"),
                    ))
                }
                69 => {
                    return Err(kafka_error(
                        code,
                        format!("group \"{group}\" does not exist"),
                    ))
                }
                code => {
                    return Err(kafka_error(
                        code,
                        format!("cannot delete group \"{group}\""),
                    ))
                }
            }
        }
        GroupCommand::ResetOffsets(args) => {
            let timestamp = match &args.to_datetime {
                Some(text) => Some(parse_datetime_ms(text).ok_or_else(|| {
                    ClientError::Usage(format!(
                        "--to-datetime \"{text}\" is neither RFC 3339 UTC (2026-12-01T09:30:00Z) nor milliseconds since the epoch"
                    ))
                })?),
                None => None,
            };
            if args.to_offset.is_some_and(|offset| offset < 0) {
                return Err(ClientError::Usage("--to-offset must be 0 or more".into()));
            }
            let described = at_coordinator(&mut cluster, &args.group, |connection| {
                describe(connection, &args.group)
            })?;
            if !described.members.is_empty() {
                return Err(ClientError::Other(format!(
                    "group \"{}\" has {} active member(s); stop them before resetting its offsets",
                    args.group,
                    described.members.len()
                )));
            }
            let metadata = topic_metadata(&mut cluster, &args.topic)?;
            let partitions: Vec<i32> = metadata.topics[0]
                .partitions
                .iter()
                .map(|partition| partition.partition_index)
                .collect();
            let mut offsets = BTreeMap::new();
            for partition in partitions {
                let offset = match args.to_offset {
                    Some(offset) => offset,
                    None => {
                        let address = leader(&metadata, &args.topic, partition)?;
                        let mut list = |at: i64| {
                            list_offset(&mut cluster, &address, &args.topic, partition, at)
                        };
                        match (args.to_earliest, args.to_latest, timestamp) {
                            (true, _, _) => list(-2)?,
                            (_, true, _) => list(-1)?,
                            (_, _, Some(timestamp)) => match list(timestamp)? {
                                -1 => list(-1)?,
                                offset => offset,
                            },
                            _ => unreachable!("clap requires one target"),
                        }
                    }
                };
                offsets.insert(partition, offset);
            }
            at_coordinator(&mut cluster, &args.group, |connection| {
                commit(connection, &args.group, -1, "", &args.topic, &offsets)
            })?;
            for (partition, offset) in &offsets {
                let _ = writeln!(out, "{}\t{partition}\t{offset}", args.topic);
            }
        }
    }
    Ok(())
}

/// Milliseconds since the epoch from RFC 3339 in UTC
/// (`YYYY-MM-DDTHH:MM:SS[.fff]Z`) or a plain number of milliseconds.
pub fn parse_datetime_ms(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return (ms >= 0).then_some(ms);
    }
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    if date_parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (time, fraction) = match time.split_once('.') {
        Some((time, fraction)) => (time, fraction),
        None => (time, ""),
    };
    let mut time_parts = time.split(':');
    let hour: i64 = time_parts.next()?.parse().ok()?;
    let minute: i64 = time_parts.next()?.parse().ok()?;
    let second: i64 = time_parts.next()?.parse().ok()?;
    if time_parts.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let millis: i64 = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().chain("00".chars()).take(3).collect();
        digits.parse().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let shifted = if month <= 2 { year - 1 } else { year };
    let era = shifted.div_euclid(400);
    let year_of_era = shifted - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let ms = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1_000 + millis;
    (ms >= 0).then_some(ms)
}

// ------------------------------------------------------------ The consumer
// protocol's subscription and assignment (ConsumerProtocolSubscription and
// ConsumerProtocolAssignment, version 0).

fn encode_subscription(topics: &[String]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(0);
    out.put_i32(topics.len() as i32);
    for topic in topics {
        out.put_i16(topic.len() as i16);
        out.put_slice(topic.as_bytes());
    }
    out.put_i32(-1);
    out.freeze()
}

fn encode_assignment(assignment: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(0);
    out.put_i32(assignment.len() as i32);
    for (topic, partitions) in assignment {
        out.put_i16(topic.len() as i16);
        out.put_slice(topic.as_bytes());
        out.put_i32(partitions.len() as i32);
        for partition in partitions {
            out.put_i32(*partition);
        }
    }
    out.put_i32(-1);
    out.freeze()
}

fn get_string(data: &mut &[u8]) -> Option<String> {
    if data.remaining() < 2 {
        return None;
    }
    let length = usize::try_from(data.get_i16()).ok()?;
    if data.remaining() < length {
        return None;
    }
    let text = String::from_utf8(data[..length].to_vec()).ok()?;
    data.advance(length);
    Some(text)
}

fn get_count(data: &mut &[u8], item_bytes: usize) -> Option<usize> {
    if data.remaining() < 4 {
        return None;
    }
    let count = usize::try_from(data.get_i32()).ok()?;
    (count <= data.remaining() / item_bytes).then_some(count)
}

pub fn parse_subscription(metadata: &[u8]) -> Option<Vec<String>> {
    let mut data = metadata;
    if data.remaining() < 2 {
        return None;
    }
    data.get_i16();
    let count = get_count(&mut data, 2)?;
    (0..count).map(|_| get_string(&mut data)).collect()
}

pub fn parse_assignment(assignment: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut data = assignment;
    if data.remaining() < 2 {
        return None;
    }
    data.get_i16();
    let count = get_count(&mut data, 6)?;
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let topic = get_string(&mut data)?;
        let partitions = get_count(&mut data, 4)?;
        topics.push((topic, (0..partitions).map(|_| data.get_i32()).collect()));
    }
    Some(topics)
}

/// The range assignor: each topic's partitions in contiguous ranges over
/// the members subscribed to it, in member id order.
fn range_assign(
    members: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut assignment: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .iter()
        .map(|(member, _)| (member.clone(), BTreeMap::new()))
        .collect();
    for (topic, count) in partition_counts {
        let mut subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(member, _)| member)
            .collect();
        subscribed.sort();
        if subscribed.is_empty() {
            continue;
        }
        let per_member = *count as usize / subscribed.len();
        let extra = *count as usize % subscribed.len();
        let mut next = 0i32;
        for (index, member) in subscribed.into_iter().enumerate() {
            let take = per_member + usize::from(index < extra);
            let partitions: Vec<i32> = (next..next + take as i32).collect();
            next += take as i32;
            if !partitions.is_empty() {
                assignment
                    .get_mut(member)
                    .expect("listed")
                    .insert(topic.clone(), partitions);
            }
        }
    }
    assignment
}

// ------------------------------------------------------ consume --group

struct Membership {
    member_id: String,
    generation: i32,
    partitions: Vec<i32>,
}

/// Joins (and rejoins) the group until it has an assignment.
fn join_group(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    member_id: &mut String,
) -> Result<Membership, ClientError> {
    let subscription = encode_subscription(&[topic.to_string()]);
    for _ in 0..JOIN_ATTEMPTS_MAX {
        let address = find_coordinator(cluster, group)?;
        let connection = cluster.to(&address)?;
        let version = connection.version(ApiKey::JoinGroup, 5)?;
        let request = JoinGroupRequest::default()
            .with_group_id(group_id(group))
            .with_session_timeout_ms(MEMBER_SESSION_TIMEOUT_MS)
            .with_rebalance_timeout_ms(MEMBER_SESSION_TIMEOUT_MS)
            .with_member_id(StrBytes::from_string(member_id.clone()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(subscription.clone())]);
        let joined: JoinGroupResponse = connection.send(ApiKey::JoinGroup, version, &request)?;
        match joined.error_code {
            0 => {}
            MEMBER_ID_REQUIRED => {
                *member_id = joined.member_id.to_string();
                continue;
            }
            UNKNOWN_MEMBER_ID => {
                member_id.clear();
                continue;
            }
            code if coordinator_errors(code) || code == REBALANCE_IN_PROGRESS => {
                cluster.forget_connections();
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            code => return Err(kafka_error(code, format!("cannot join group \"{group}\""))),
        }
        *member_id = joined.member_id.to_string();
        let mut assignments = Vec::new();
        if joined.leader == joined.member_id {
            let members: Vec<(String, Vec<String>)> = joined
                .members
                .iter()
                .map(|member| {
                    (
                        member.member_id.to_string(),
                        parse_subscription(&member.metadata).unwrap_or_default(),
                    )
                })
                .collect();
            let mut counts = BTreeMap::new();
            for subscribed in members.iter().flat_map(|(_, topics)| topics) {
                if let Ok(metadata) = topic_metadata(cluster, subscribed) {
                    counts.insert(
                        subscribed.clone(),
                        metadata.topics[0].partitions.len() as i32,
                    );
                }
            }
            assignments = range_assign(&members, &counts)
                .into_iter()
                .map(|(member, assignment)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_assignment(encode_assignment(&assignment))
                })
                .collect();
        }
        let connection = cluster.to(&address)?;
        let version = connection.version(ApiKey::SyncGroup, 3)?;
        let request = SyncGroupRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(joined.generation_id)
            .with_member_id(joined.member_id.clone())
            .with_assignments(assignments);
        let synced: SyncGroupResponse = connection.send(ApiKey::SyncGroup, version, &request)?;
        match synced.error_code {
            0 => {
                let partitions = parse_assignment(&synced.assignment)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(assigned_topic, _)| assigned_topic == topic)
                    .flat_map(|(_, partitions)| partitions)
                    .collect();
                return Ok(Membership {
                    member_id: member_id.clone(),
                    generation: joined.generation_id,
                    partitions,
                });
            }
            UNKNOWN_MEMBER_ID => member_id.clear(),
            code if coordinator_errors(code)
                || code == REBALANCE_IN_PROGRESS
                || code == ILLEGAL_GENERATION => {}
            code => {
                return Err(kafka_error(
                    code,
                    format!("cannot sync with group \"{group}\""),
                ))
            }
        }
    }
    Err(ClientError::Other(format!(
        "group \"{group}\" did not settle after {JOIN_ATTEMPTS_MAX} rebalances"
    )))
}

/// `runnel consume TOPIC --group G`: a member of the group. It joins,
/// takes the partitions the group gives it, starts each at the group's
/// committed offset (or --offset without one), prints records, commits
/// what it printed, heartbeats, and follows rebalances. It leaves the group
/// when it stops (-n or -e).
pub fn consume_in_group(connect: &Connect, args: ConsumeArgs) -> Result<(), ClientError> {
    let group = args.group.clone().expect("called with a group");
    let reset_to = match args.offset.as_str() {
        "earliest" => -2,
        "latest" => -1,
        other => {
            return Err(ClientError::Usage(format!(
                "--offset \"{other}\" with --group must be earliest or latest (where a partition without a committed offset starts)"
            )))
        }
    };
    if group.is_empty() {
        return Err(ClientError::Usage("--group must not be empty".into()));
    }
    let mut cluster = Cluster::new(&connect.bootstrap);
    let mut metadata = topic_metadata(&mut cluster, &args.topic)?;
    let format = args.format.replace("\\n", "\n").replace("\\t", "\t");
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut printed = 0u64;
    let mut member_id = String::new();
    let result = (|| loop {
        let membership = join_group(&mut cluster, &group, &args.topic, &mut member_id)?;
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        let wanted = vec![(args.topic.clone(), membership.partitions.clone())];
        let committed_offsets = at_coordinator(&mut cluster, &group, |connection| {
            committed(connection, &group, Some(wanted.clone()))
        })?;
        for partition in &membership.partitions {
            let offset = committed_offsets
                .get(&args.topic)
                .and_then(|partitions| partitions.get(partition))
                .copied()
                .unwrap_or(-1);
            let offset = if offset >= 0 {
                offset
            } else {
                let address = leader(&metadata, &args.topic, *partition)?;
                list_offset(&mut cluster, &address, &args.topic, *partition, reset_to)?
            };
            positions.insert(*partition, offset);
        }
        let mut last_heartbeat = Instant::now();
        let mut at_end: BTreeMap<i32, bool> = BTreeMap::new();
        'member: loop {
            if args.count.is_some_and(|count| printed >= count) {
                return Ok(membership);
            }
            if args.exit_at_end
                && membership
                    .partitions
                    .iter()
                    .all(|p| at_end.get(p) == Some(&true))
            {
                return Ok(membership);
            }
            if membership.partitions.is_empty() {
                std::thread::sleep(Duration::from_millis(500));
            }
            let mut fetched_any = false;
            for partition in &membership.partitions {
                let address = match leader(&metadata, &args.topic, *partition) {
                    Ok(address) => address,
                    Err(_) => {
                        metadata = topic_metadata(&mut cluster, &args.topic)?;
                        continue;
                    }
                };
                let offset = positions[partition];
                let response = match fetch_partition(
                    &mut cluster,
                    &address,
                    &args.topic,
                    *partition,
                    offset,
                ) {
                    Ok(response) => response,
                    Err(ClientError::Kafka { .. } | ClientError::Connect(_)) => {
                        cluster.forget_connections();
                        metadata = topic_metadata(&mut cluster, &args.topic)?;
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                let data = &response.responses[0].partitions[0];
                let mut records = data.records.clone().unwrap_or_default();
                let mut next = offset;
                while !records.is_empty() {
                    let Ok(set) = RecordBatchDecoder::decode(&mut records) else {
                        break;
                    };
                    for record in set.records {
                        if record.offset < next || record.control {
                            continue;
                        }
                        next = record.offset + 1;
                        let _ = out.write_all(render(&format, &record, *partition).as_bytes());
                        printed += 1;
                        if args.count.is_some_and(|count| printed >= count) {
                            break;
                        }
                    }
                    if args.count.is_some_and(|count| printed >= count) {
                        break;
                    }
                }
                let _ = out.flush();
                at_end.insert(*partition, next >= data.high_watermark);
                if next > offset {
                    fetched_any = true;
                    positions.insert(*partition, next);
                    // Commit-after-process: what was printed is committed.
                    let committed = at_coordinator(&mut cluster, &group, |connection| {
                        commit(
                            connection,
                            &group,
                            membership.generation,
                            &membership.member_id,
                            &args.topic,
                            &BTreeMap::from([(*partition, next)]),
                        )
                    });
                    match committed {
                        Ok(()) => {}
                        Err(ClientError::Kafka {
                            code: ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | REBALANCE_IN_PROGRESS,
                            ..
                        }) => {
                            // The group moved on: rejoin; another member
                            // (or this one) reads these records again.
                            break 'member;
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
            if !fetched_any
                || last_heartbeat.elapsed() >= Duration::from_millis(MEMBER_HEARTBEAT_INTERVAL_MS)
            {
                last_heartbeat = Instant::now();
                let code = at_coordinator(&mut cluster, &group, |connection| {
                    let version = connection.version(ApiKey::Heartbeat, 3)?;
                    let request = HeartbeatRequest::default()
                        .with_group_id(group_id(&group))
                        .with_generation_id(membership.generation)
                        .with_member_id(StrBytes::from_string(membership.member_id.clone()));
                    let response: HeartbeatResponse =
                        connection.send(ApiKey::Heartbeat, version, &request)?;
                    if coordinator_errors(response.error_code) {
                        return Err(kafka_error(response.error_code, "coordinator moved"));
                    }
                    Ok(response.error_code)
                })?;
                match code {
                    0 => {}
                    REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => break 'member,
                    UNKNOWN_MEMBER_ID => {
                        member_id.clear();
                        break 'member;
                    }
                    code => {
                        return Err(kafka_error(
                            code,
                            format!("heartbeat to group \"{group}\" failed"),
                        ))
                    }
                }
            }
        }
    })();
    let membership = result?;
    // Leave at once, so the others take over without waiting for the
    // session to expire.
    let _ = at_coordinator(&mut cluster, &group, |connection| {
        let version = connection.version(ApiKey::LeaveGroup, 2)?;
        let request = LeaveGroupRequest::default()
            .with_group_id(group_id(&group))
            .with_member_id(StrBytes::from_string(membership.member_id.clone()));
        let _: LeaveGroupResponse = connection.send(ApiKey::LeaveGroup, version, &request)?;
        Ok(())
    });
    Ok(())
}

fn fetch_partition(
    cluster: &mut Cluster,
    address: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<FetchResponse, ClientError> {
    let connection = cluster.to(address)?;
    let version = connection.version(ApiKey::Fetch, 12)?;
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(200)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_isolation_level(1)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(4 << 20)])]);
    let response: FetchResponse = connection.send(ApiKey::Fetch, version, &request)?;
    let data = &response.responses[0].partitions[0];
    if data.error_code != 0 {
        return Err(kafka_error(
            data.error_code,
            format!("cannot fetch {topic}-{partition} at offset {offset}"),
        ));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_as_utc() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime_ms("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500)
        );
        assert_eq!(parse_datetime_ms("1700000000000"), Some(1_700_000_000_000));
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-01 00:00:00",
            "-5",
        ] {
            assert_eq!(parse_datetime_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn range_assignment_splits_partitions_in_order() {
        let members = vec![
            ("b".to_string(), vec!["t".to_string()]),
            ("a".to_string(), vec!["t".to_string()]),
        ];
        let assignment = range_assign(&members, &BTreeMap::from([("t".to_string(), 5)]));
        assert_eq!(assignment["a"]["t"], vec![0, 1, 2]);
        assert_eq!(assignment["b"]["t"], vec![3, 4]);
        let encoded = encode_assignment(&assignment["a"]);
        assert_eq!(
            parse_assignment(&encoded),
            Some(vec![("t".to_string(), vec![0, 1, 2])])
        );
        let subscription = encode_subscription(&["t".to_string()]);
        assert_eq!(
            parse_subscription(&subscription),
            Some(vec!["t".to_string()])
        );
        assert_eq!(parse_assignment(&[0, 0, 0x7f, 0, 0, 0]), None);
    }
}
