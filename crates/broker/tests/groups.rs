//! The group coordinator driven deterministically through Kafka requests:
//! the simulator's disk (whose crash loses what was not synced) and a
//! manual clock, as in `broker.rs`. One node leads every offsets partition,
//! so it coordinates every group; a restart from its disk is the failover
//! of a coordinator to a node that rebuilds from the offsets partitions.

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, MetadataRequest,
    MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use runnel_broker::ConnectionId;
use runnel_io::Rng;
use runnel_sim::disk::{DiskFaults, SimDisk};

const NONE: i16 = 0;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const NOT_COORDINATOR: i16 = 16;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_REQUEST: i16 = 42;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

const SESSION_MS: i32 = 6_000;

mod support;

use support::{single_node_config, Harness};

impl Harness {
    fn new() -> Harness {
        let disk = SimDisk::new(Rng::new(11), DiskFaults::default());
        let mut harness = Harness::start(disk, 0);
        harness.advance(1_000);
        harness.create_topic("orders", 4);
        harness
    }

    /// A broker recovered from `disk`, before any time passed.
    fn start(disk: SimDisk, now_ms: u64) -> Harness {
        let mut config = single_node_config();
        config.offsets_topic_partitions = 4;
        Harness::recover(disk, now_ms, config)
    }

    /// The node crashes (losing what it did not sync) and restarts.
    fn crash_and_restart(self) -> Harness {
        let Harness {
            mut disk, clock, ..
        } = self;
        disk.crash();
        Harness::start(disk, clock.now_ms)
    }

    fn create_topic(&mut self, name: &str, partitions: i32) {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(5_000);
        let response: CreateTopicsResponse =
            self.call(99, ApiKey::CreateTopics, 7, &request, 2_000);
        assert_eq!(response.topics[0].error_code, NONE);
    }

    fn join(&mut self, connection: ConnectionId, member_id: &str, instance: Option<&str>) {
        self.join_with(connection, member_id, instance, "range", b"sub");
    }

    fn join_with(
        &mut self,
        connection: ConnectionId,
        member_id: &str,
        instance: Option<&str>,
        protocol: &str,
        metadata: &[u8],
    ) {
        let request = JoinGroupRequest::default()
            .with_group_id(group("g"))
            .with_session_timeout_ms(SESSION_MS)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_group_instance_id(instance.map(|id| StrBytes::from_string(id.to_string())))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_string(protocol.to_string()))
                .with_metadata(Bytes::copy_from_slice(metadata))]);
        self.send(connection, ApiKey::JoinGroup, JOIN_VERSION, &request);
    }

    fn join_response(&mut self, connection: ConnectionId) -> JoinGroupResponse {
        self.response(connection, ApiKey::JoinGroup, JOIN_VERSION)
    }

    /// A new member joins (MEMBER_ID_REQUIRED, then again with its id).
    fn new_member_id(&mut self, connection: ConnectionId, instance: Option<&str>) -> String {
        self.join(connection, "", instance);
        if instance.is_some() {
            // Static members get no MEMBER_ID_REQUIRED: their instance id
            // identifies them.
            return String::new();
        }
        let response = self.join_response(connection);
        assert_eq!(response.error_code, MEMBER_ID_REQUIRED);
        assert!(!response.member_id.is_empty());
        response.member_id.to_string()
    }

    fn sync(
        &mut self,
        connection: ConnectionId,
        generation: i32,
        member_id: &str,
        instance: Option<&str>,
        assignments: &[(&str, &[u8])],
    ) {
        let request = SyncGroupRequest::default()
            .with_group_id(group("g"))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_group_instance_id(instance.map(|id| StrBytes::from_string(id.to_string())))
            .with_assignments(
                assignments
                    .iter()
                    .map(|(member, assignment)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(StrBytes::from_string(member.to_string()))
                            .with_assignment(Bytes::copy_from_slice(assignment))
                    })
                    .collect(),
            );
        self.send(connection, ApiKey::SyncGroup, 5, &request);
    }

    fn sync_response(&mut self, connection: ConnectionId) -> SyncGroupResponse {
        self.response(connection, ApiKey::SyncGroup, 5)
    }

    fn heartbeat(&mut self, generation: i32, member_id: &str, instance: Option<&str>) -> i16 {
        let request = HeartbeatRequest::default()
            .with_group_id(group("g"))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_group_instance_id(instance.map(|id| StrBytes::from_string(id.to_string())));
        let response: HeartbeatResponse = self.call(50, ApiKey::Heartbeat, 4, &request, 0);
        response.error_code
    }

    fn commit(&mut self, generation: i32, member_id: &str, offset: i64, metadata: &str) {
        let request = OffsetCommitRequest::default()
            .with_group_id(group("g"))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(1)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(StrBytes::from_string(
                        metadata.to_string(),
                    )))])]);
        self.send(60, ApiKey::OffsetCommit, 8, &request);
    }

    fn commit_response(&mut self) -> i16 {
        let response: OffsetCommitResponse = self.response(60, ApiKey::OffsetCommit, 8);
        response.topics[0].partitions[0].error_code
    }

    /// (error code, committed offset, metadata) of partition 1 of "orders".
    fn fetch_offset(&mut self) -> (i16, i64, String) {
        let request = OffsetFetchRequest::default()
            .with_group_id(group("g"))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_indexes(vec![1])]));
        let response: OffsetFetchResponse = self.call(70, ApiKey::OffsetFetch, 7, &request, 0);
        let partition = &response.topics[0].partitions[0];
        (
            response.error_code,
            partition.committed_offset,
            partition.metadata.as_deref().unwrap_or("").to_string(),
        )
    }
}

const JOIN_VERSION: i16 = 7;

fn group(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.to_string()))
}

/// One member through join and sync to a stable group of one: (member id,
/// generation).
fn stable_group_of_one(harness: &mut Harness, instance: Option<&str>) -> (String, i32) {
    let member_id = harness.new_member_id(1, instance);
    if instance.is_none() {
        harness.join(1, &member_id, None);
    }
    // A group that was empty waits a moment for more members.
    assert_eq!(harness.pending(1), 0);
    harness.advance(1_100);
    let joined = harness.join_response(1);
    assert_eq!(joined.error_code, NONE);
    let member_id = joined.member_id.to_string();
    assert_eq!(joined.leader, joined.member_id, "the only member leads");
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    harness.sync(
        1,
        joined.generation_id,
        &member_id,
        instance,
        &[(&member_id, b"all")],
    );
    // The assignment is answered once the group record is committed.
    assert_eq!(harness.pending(1), 0);
    harness.advance(50);
    let synced = harness.sync_response(1);
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment.as_ref(), b"all");
    (member_id, joined.generation_id)
}

#[test]
fn find_coordinator_names_this_node_and_the_offsets_topic_stays_hidden() {
    let mut harness = Harness::new();
    for version in [0, 3] {
        let request = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"));
        let response: FindCoordinatorResponse =
            harness.call(1, ApiKey::FindCoordinator, version, &request, 0);
        assert_eq!(response.error_code, NONE);
        assert_eq!(response.node_id.0, 1);
        assert_eq!(response.port, 9092);
    }
    let request = FindCoordinatorRequest::default().with_coordinator_keys(vec![
        StrBytes::from_static_str("a"),
        StrBytes::from_static_str("b"),
    ]);
    let response: FindCoordinatorResponse =
        harness.call(1, ApiKey::FindCoordinator, 4, &request, 0);
    assert_eq!(response.coordinators.len(), 2);
    assert!(response
        .coordinators
        .iter()
        .all(|c| c.error_code == NONE && c.node_id.0 == 1));
    // A listing of every topic leaves the internal one out; by name it is
    // there, marked internal.
    let all: MetadataResponse = harness.call(
        1,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
        0,
    );
    let names: Vec<String> = all
        .topics
        .iter()
        .filter_map(|topic| topic.name.as_ref().map(|name| name.0.to_string()))
        .collect();
    assert_eq!(names, vec!["orders".to_string()]);
    let named: MetadataResponse = harness.call(
        1,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(
                Some(TopicName(StrBytes::from_static_str("__consumer_offsets"))),
            ),
        ])),
        0,
    );
    assert!(named.topics[0].is_internal);
    assert_eq!(named.topics[0].partitions.len(), 4);
}

#[test]
fn join_sync_heartbeat_and_a_second_member_rebalances() {
    let mut harness = Harness::new();
    let (first, generation) = stable_group_of_one(&mut harness, None);
    assert_eq!(generation, 1);
    assert_eq!(harness.heartbeat(generation, &first, None), NONE);
    // A second member: the first learns of the rebalance from its heartbeat
    // and rejoins; the join completes once both are in.
    let second = harness.new_member_id(2, None);
    harness.join(2, &second, None);
    assert_eq!(harness.pending(2), 0, "the join waits for the first member");
    assert_eq!(
        harness.heartbeat(generation, &first, None),
        REBALANCE_IN_PROGRESS
    );
    harness.join(1, &first, None);
    harness.advance(1);
    let leader_view = harness.join_response(1);
    let follower_view = harness.join_response(2);
    assert_eq!(leader_view.generation_id, 2);
    assert_eq!(follower_view.generation_id, 2);
    assert_eq!(leader_view.leader.as_str(), first, "the leader stays");
    assert_eq!(leader_view.members.len(), 2, "the leader gets every member");
    assert!(follower_view.members.is_empty());
    // The follower's SyncGroup waits for the leader's assignment.
    harness.sync(2, 2, &second, None, &[]);
    harness.advance(50);
    assert_eq!(harness.pending(2), 0);
    harness.sync(1, 2, &first, None, &[(&first, b"p0"), (&second, b"p1")]);
    harness.advance(50);
    assert_eq!(harness.sync_response(1).assignment.as_ref(), b"p0");
    assert_eq!(harness.sync_response(2).assignment.as_ref(), b"p1");
    assert_eq!(harness.heartbeat(2, &second, None), NONE);

    let describe: DescribeGroupsResponse = harness.call(
        3,
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group("g")]),
        0,
    );
    let described = &describe.groups[0];
    assert_eq!(described.group_state.as_str(), "Stable");
    assert_eq!(described.protocol_data.as_str(), "range");
    assert_eq!(described.members.len(), 2);
    let listed: ListGroupsResponse =
        harness.call(3, ApiKey::ListGroups, 4, &ListGroupsRequest::default(), 0);
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(listed.groups[0].group_state.as_str(), "Stable");
}

#[test]
fn generations_and_members_are_fenced() {
    let mut harness = Harness::new();
    let (member, generation) = stable_group_of_one(&mut harness, None);
    assert_eq!(
        harness.heartbeat(generation + 1, &member, None),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        harness.heartbeat(generation - 1, &member, None),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        harness.heartbeat(generation, "nobody", None),
        UNKNOWN_MEMBER_ID
    );
    // A commit of an old generation is refused; of the current one taken.
    harness.commit(generation - 1, &member, 5, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), ILLEGAL_GENERATION);
    harness.commit(generation, "nobody", 5, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), UNKNOWN_MEMBER_ID);
    // SyncGroup of a wrong generation, and JoinGroup of an unknown member.
    harness.sync(1, generation + 5, &member, None, &[]);
    assert_eq!(harness.sync_response(1).error_code, ILLEGAL_GENERATION);
    harness.join(4, "stranger", None);
    assert_eq!(harness.join_response(4).error_code, UNKNOWN_MEMBER_ID);
    // A member of another protocol cannot join.
    harness.join_with(5, "", None, "other", b"x");
    assert_eq!(
        harness.join_response(5).error_code,
        INCONSISTENT_GROUP_PROTOCOL
    );
    // While the group rebalances, a commit of the current generation by
    // its member still counts; in CompletingRebalance it does not.
    let second = harness.new_member_id(2, None);
    harness.join(2, &second, None);
    harness.commit(generation, &member, 6, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), NONE);
    harness.join(1, &member, None);
    harness.advance(1);
    let joined = harness.join_response(1);
    harness.join_response(2);
    harness.commit(joined.generation_id, &member, 7, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), REBALANCE_IN_PROGRESS);
}

#[test]
fn an_expired_session_leaves_the_group() {
    let mut harness = Harness::new();
    let (first, _) = stable_group_of_one(&mut harness, None);
    let second = harness.new_member_id(2, None);
    harness.join(2, &second, None);
    harness.join(1, &first, None);
    harness.advance(1);
    harness.join_response(2);
    let joined = harness.join_response(1);
    harness.sync(
        1,
        joined.generation_id,
        &first,
        None,
        &[(&first, b"a"), (&second, b"b")],
    );
    harness.advance(50);
    harness.sync_response(1);
    // Only the first member heartbeats; the second's session runs out.
    for _ in 0..(SESSION_MS / 1_000 - 1) {
        harness.advance(1_000);
        assert_eq!(harness.heartbeat(joined.generation_id, &first, None), NONE);
    }
    harness.advance(1_500);
    assert_eq!(
        harness.heartbeat(joined.generation_id, &first, None),
        REBALANCE_IN_PROGRESS
    );
    harness.join(1, &first, None);
    harness.advance(1);
    let alone = harness.join_response(1);
    assert_eq!(alone.generation_id, joined.generation_id + 1);
    assert_eq!(alone.members.len(), 1);
    assert_eq!(
        harness.heartbeat(alone.generation_id, &second, None),
        UNKNOWN_MEMBER_ID
    );

    // A member that leaves goes at once: the group is empty, its
    // generation moves on.
    let leave = LeaveGroupRequest::default()
        .with_group_id(group("g"))
        .with_members(vec![
            MemberIdentity::default().with_member_id(StrBytes::from_string(first.clone()))
        ]);
    let left: LeaveGroupResponse = harness.call(1, ApiKey::LeaveGroup, 5, &leave, 0);
    assert_eq!(left.error_code, NONE);
    assert_eq!(left.members[0].error_code, NONE);
    let describe: DescribeGroupsResponse = harness.call(
        3,
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group("g")]),
        0,
    );
    assert_eq!(describe.groups[0].group_state.as_str(), "Empty");
}

#[test]
fn a_static_member_that_restarts_keeps_its_assignment_without_a_rebalance() {
    let mut harness = Harness::new();
    let (old_id, generation) = stable_group_of_one(&mut harness, Some("instance-1"));
    // The process restarts: a JoinGroup with no member id and the same
    // instance id, within the session.
    harness.advance(2_000);
    harness.join(1, "", Some("instance-1"));
    harness.advance(1);
    let rejoined = harness.join_response(1);
    assert_eq!(rejoined.error_code, NONE);
    assert_eq!(rejoined.generation_id, generation, "no rebalance");
    assert_ne!(rejoined.member_id.as_str(), old_id);
    let new_id = rejoined.member_id.to_string();
    harness.sync(1, generation, &new_id, Some("instance-1"), &[]);
    let synced = harness.sync_response(1);
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment.as_ref(), b"all", "its assignment back");
    assert_eq!(
        harness.heartbeat(generation, &new_id, Some("instance-1")),
        NONE
    );
    // The old incarnation is fenced.
    assert_eq!(
        harness.heartbeat(generation, &old_id, Some("instance-1")),
        FENCED_INSTANCE_ID
    );
}

#[test]
fn a_commit_is_answered_once_durable_and_survives_a_crash() {
    let mut harness = Harness::new();
    let (member, generation) = stable_group_of_one(&mut harness, None);
    harness.commit(generation, &member, 42, "checkpoint");
    assert_eq!(
        harness.pending(60),
        0,
        "not answered before it is committed"
    );
    harness.advance(50);
    assert_eq!(harness.commit_response(), NONE);
    assert_eq!(harness.fetch_offset(), (NONE, 42, "checkpoint".to_string()));
    // Metadata over Kafka's offset.metadata.max.bytes is refused.
    harness.commit(generation, &member, 43, &"m".repeat(4_097));
    harness.advance(50);
    assert_eq!(harness.commit_response(), OFFSET_METADATA_TOO_LARGE);
    // A commit in flight when the node crashes is lost with it, and was
    // never answered.
    harness.commit(generation, &member, 99, "");
    assert_eq!(harness.pending(60), 0);
    let mut harness = harness.crash_and_restart();
    // Before it has led its offsets partitions again (and before its
    // metadata is applied again), the node refuses with an error clients
    // retry on.
    let (code, _, _) = harness.fetch_offset();
    assert!(
        [
            NOT_COORDINATOR,
            COORDINATOR_LOAD_IN_PROGRESS,
            COORDINATOR_NOT_AVAILABLE
        ]
        .contains(&code),
        "{code}"
    );
    harness.advance(1_000);
    assert_eq!(harness.fetch_offset(), (NONE, 42, "checkpoint".to_string()));
}

#[test]
fn a_new_coordinator_rebuilds_groups_and_fences_old_generations() {
    let mut harness = Harness::new();
    let (member, generation) = stable_group_of_one(&mut harness, None);
    harness.commit(generation, &member, 7, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), NONE);
    let mut harness = harness.crash_and_restart();
    harness.advance(1_000);
    // The member carries on with its generation: the group record was
    // stored before its SyncGroup was answered.
    assert_eq!(harness.heartbeat(generation, &member, None), NONE);
    assert_eq!(
        harness.heartbeat(generation - 1, &member, None),
        ILLEGAL_GENERATION
    );
    harness.commit(generation, &member, 8, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), NONE);
    assert_eq!(harness.fetch_offset().1, 8);
    // Its session runs from the new coordinator's start: without
    // heartbeats it expires and the group empties; the next generation
    // follows the stored one.
    harness.advance(SESSION_MS as u64 + 1_000);
    assert_eq!(
        harness.heartbeat(generation, &member, None),
        UNKNOWN_MEMBER_ID
    );
    let (_, next) = stable_group_of_one(&mut harness, None);
    assert!(next > generation + 1, "{next} after {generation}");
}

#[test]
fn only_an_empty_group_is_deleted() {
    let mut harness = Harness::new();
    let (member, generation) = stable_group_of_one(&mut harness, None);
    harness.commit(generation, &member, 3, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), NONE);
    let delete = DeleteGroupsRequest::default().with_groups_names(vec![group("g"), group("none")]);
    let response: DeleteGroupsResponse = harness.call(8, ApiKey::DeleteGroups, 2, &delete, 100);
    assert_eq!(response.results[0].error_code, NON_EMPTY_GROUP);
    assert_eq!(response.results[1].error_code, GROUP_ID_NOT_FOUND);
    let leave = LeaveGroupRequest::default()
        .with_group_id(group("g"))
        .with_member_id(StrBytes::from_string(member.clone()));
    let left: LeaveGroupResponse = harness.call(1, ApiKey::LeaveGroup, 1, &leave, 0);
    assert_eq!(left.error_code, NONE);
    let response: DeleteGroupsResponse = harness.call(8, ApiKey::DeleteGroups, 2, &delete, 100);
    assert_eq!(response.results[0].error_code, NONE);
    assert_eq!(harness.fetch_offset(), (NONE, -1, String::new()));
}

#[test]
fn oversized_member_metadata_and_assignments_are_refused() {
    let mut harness = Harness::new();
    harness.join_with(1, "", None, "range", &vec![7u8; 65 << 10]);
    assert_eq!(harness.join_response(1).error_code, INVALID_REQUEST);
    let (member, generation) = stable_group_of_one(&mut harness, None);
    // A new generation whose leader assigns too much gets an error, and the
    // group does not become stable with it.
    harness.join_with(1, &member, None, "range", b"changed");
    harness.advance(1);
    let joined = harness.join_response(1);
    assert_eq!(joined.generation_id, generation + 1);
    let huge = vec![1u8; 65 << 10];
    harness.sync(1, joined.generation_id, &member, None, &[(&member, &huge)]);
    harness.advance(50);
    assert_eq!(harness.sync_response(1).error_code, INVALID_REQUEST);
    let describe: DescribeGroupsResponse = harness.call(
        3,
        ApiKey::DescribeGroups,
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group("g")]),
        0,
    );
    assert_eq!(
        describe.groups[0].group_state.as_str(),
        "CompletingRebalance"
    );
}

#[test]
fn offsets_of_topics_the_group_consumes_are_not_deleted() {
    let mut harness = Harness::new();
    let (member, generation) = stable_group_of_one(&mut harness, None);
    harness.commit(generation, &member, 5, "");
    harness.advance(50);
    assert_eq!(harness.commit_response(), NONE);
    let delete = |group_name: &str| {
        OffsetDeleteRequest::default()
            .with_group_id(group(group_name))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(1)
                ])])
    };
    // The member's subscription does not parse as the consumer protocol's,
    // so every topic counts as subscribed.
    let response: OffsetDeleteResponse =
        harness.call(9, ApiKey::OffsetDelete, 0, &delete("g"), 100);
    assert_eq!(response.error_code, NONE);
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        GROUP_SUBSCRIBED_TO_TOPIC
    );
    assert_eq!(harness.fetch_offset().1, 5);
    let unknown: OffsetDeleteResponse =
        harness.call(9, ApiKey::OffsetDelete, 0, &delete("nobody"), 100);
    assert_eq!(unknown.error_code, GROUP_ID_NOT_FOUND);
    // Once the group is empty its offsets go.
    let leave = LeaveGroupRequest::default()
        .with_group_id(group("g"))
        .with_member_id(StrBytes::from_string(member));
    let _: LeaveGroupResponse = harness.call(1, ApiKey::LeaveGroup, 1, &leave, 0);
    let response: OffsetDeleteResponse =
        harness.call(9, ApiKey::OffsetDelete, 0, &delete("g"), 100);
    assert_eq!(response.topics[0].partitions[0].error_code, NONE);
    assert_eq!(harness.fetch_offset(), (NONE, -1, String::new()));
}
