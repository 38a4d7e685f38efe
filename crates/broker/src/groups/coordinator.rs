//! The classic group protocol of one offsets partition's coordinator: the
//! groups that hash to the partition, their members, rebalances, sessions
//! and generations. A pure state machine: requests and ticks in, replies
//! and group records to store out; time is the broker's tick clock.
//!
//! It follows Kafka's classic `GroupCoordinator`: a member joins
//! (JoinGroup), the coordinator waits for every known member to rejoin (or
//! the rebalance timeout), picks a protocol every member supports, answers
//! each with the new generation and the leader with every member's
//! metadata; the leader's SyncGroup carries the assignments, which are
//! stored through consensus before any member gets its own. Heartbeats keep
//! sessions alive; a member whose session expires is removed and the group
//! rebalances.

use std::collections::BTreeMap;

use runnel_core::offsets::{
    OffsetsState, StoredGroup, StoredMember, GROUP_MEMBERS_MAX, GROUP_STRING_BYTES_MAX,
    MEMBER_BLOB_BYTES_MAX,
};

/// Kafka error codes of the group protocol.
pub mod error_code {
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_REQUEST: i16 = 42;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
}

/// The shortest session a member may ask for (Kafka's
/// `group.min.session.timeout.ms` is 6 s; a shorter floor lets tests run
/// fast, and a session still spans many heartbeats).
pub const GROUP_SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
/// The longest session (Kafka's `group.max.session.timeout.ms`).
pub const GROUP_SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// The longest rebalance a member may ask for; longer ones are cut to it.
pub const GROUP_REBALANCE_TIMEOUT_MS_MAX: u64 = 600_000;
/// How long a rebalance of an empty group waits for more members before it
/// completes (Kafka's `group.initial.rebalance.delay.ms` is 3 s), so that
/// members starting together form one generation rather than several.
pub const GROUP_INITIAL_REBALANCE_DELAY_MS: u64 = 1_000;
/// Most members waiting for a member id (JoinGroup v4+) in one group.
pub const GROUP_PENDING_MEMBERS_MAX: usize = GROUP_MEMBERS_MAX;
/// Most groups one coordinator partition holds in memory.
pub const COORDINATOR_GROUPS_MAX: usize = runnel_core::offsets::GROUPS_PER_PARTITION_MAX;
/// Most protocols one member may offer.
pub const MEMBER_PROTOCOLS_MAX: usize = 32;

/// Identifies a request waiting for its answer (the broker's pending id).
pub type Waiter = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka's DescribeGroups and ListGroups give.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    /// In the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
    join_waiter: Option<Waiter>,
    sync_waiter: Option<Waiter>,
    session_deadline_ms: u64,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata(&self, protocol: Option<&str>) -> &[u8] {
        protocol
            .and_then(|wanted| {
                self.protocols
                    .iter()
                    .find(|(name, _)| name == wanted)
                    .map(|(_, metadata)| metadata.as_slice())
            })
            .unwrap_or(&[])
    }
}

#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with when they lapse.
    pending_members: BTreeMap<String, u64>,
    /// group.instance.id -> member id.
    static_members: BTreeMap<String, String>,
    /// When the current phase (join or sync) gives up waiting.
    phase_deadline_ms: u64,
    /// Before this, a rebalance of a group that was empty does not complete.
    initial_delay_until_ms: u64,
}

impl Group {
    fn new(id: &str, generation: i32) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            phase_deadline_ms: 0,
            initial_delay_until_ms: 0,
        }
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<String> = first
            .protocols
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        for member in members {
            candidates.retain(|name| member.protocols.iter().any(|(other, _)| other == name));
        }
        candidates
    }

    /// Kafka's vote: each member votes for its most preferred candidate;
    /// the most votes win, ties going to the earlier in the first member's
    /// preference.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(name, _)| candidates.contains(name))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        candidates
            .iter()
            .find(|name| votes.get(name.as_str()) == Some(&most))
            .cloned()
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Vec<u8>)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type) && {
            let candidates = self.candidate_protocols();
            protocols.iter().any(|(name, _)| candidates.contains(name))
        }
    }

    fn rebalance_timeout_ms(&self) -> u64 {
        self.members
            .values()
            .map(|member| member.rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    fn all_members_joined(&self) -> bool {
        self.pending_members.is_empty()
            && self
                .members
                .values()
                .all(|member| member.join_waiter.is_some())
    }

    /// What is stored for this group: its generation and members with
    /// their assignments.
    pub fn record(&self) -> StoredGroup {
        StoredGroup {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|member| StoredMember {
                    member_id: member.member_id.clone(),
                    group_instance_id: member.group_instance_id.clone(),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    session_timeout_ms: member.session_timeout_ms as u32,
                    rebalance_timeout_ms: member.rebalance_timeout_ms as u32,
                    protocols: member.protocols.clone(),
                    assignment: member.assignment.clone(),
                })
                .collect(),
        }
    }
}

/// A JoinGroup, as the coordinator needs it.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub client_id: String,
    pub client_host: String,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinResult {
    pub error_code: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// (member id, instance id, metadata): for the leader only.
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
    /// The leader already has the assignment (a static leader rejoined
    /// with nothing changed) and must not compute it again (v9).
    pub skip_assignment: bool,
}

impl JoinResult {
    fn error(error_code: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error_code,
            generation: -1,
            member_id: member_id.to_string(),
            ..JoinResult::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncResult {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Join(JoinResult),
    Sync(SyncResult),
}

/// What the coordinator asks of the broker.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Answers to waiting requests.
    pub replies: Vec<(Waiter, Reply)>,
    /// Group records to store through consensus; the broker reports each
    /// back with [`Coordinator::stored`].
    pub stores: Vec<(String, StoredGroup)>,
}

/// The groups of one offsets partition this node leads.
#[derive(Debug)]
pub struct Coordinator {
    /// The partition's term when this coordinator was loaded: member ids
    /// carry it so that they never repeat another coordinator's.
    term: u64,
    groups: BTreeMap<String, Group>,
    next_member: u64,
}

impl Coordinator {
    /// Rebuilds the groups from the partition's state machine, as a new
    /// coordinator does after a failover: members of the stored generation
    /// carry on (their sessions start now), fencing older generations.
    pub fn load(term: u64, state: &OffsetsState, now_ms: u64) -> Coordinator {
        let mut groups = BTreeMap::new();
        for (group_id, record) in state.groups() {
            let mut group = Group::new(group_id, record.generation);
            group.protocol_type =
                (!record.protocol_type.is_empty()).then(|| record.protocol_type.clone());
            group.protocol_name = record.protocol_name.clone();
            group.leader = record.leader.clone();
            for stored in &record.members {
                let member = Member {
                    member_id: stored.member_id.clone(),
                    group_instance_id: stored.group_instance_id.clone(),
                    client_id: stored.client_id.clone(),
                    client_host: stored.client_host.clone(),
                    session_timeout_ms: u64::from(stored.session_timeout_ms),
                    rebalance_timeout_ms: u64::from(stored.rebalance_timeout_ms),
                    protocol_type: record.protocol_type.clone(),
                    protocols: stored.protocols.clone(),
                    assignment: stored.assignment.clone(),
                    join_waiter: None,
                    sync_waiter: None,
                    session_deadline_ms: now_ms + u64::from(stored.session_timeout_ms),
                };
                if let Some(instance) = &member.group_instance_id {
                    group
                        .static_members
                        .insert(instance.clone(), member.member_id.clone());
                }
                group.members.insert(member.member_id.clone(), member);
            }
            if !group.members.is_empty() {
                group.state = GroupState::Stable;
            }
            groups.insert(group_id.clone(), group);
        }
        Coordinator {
            term,
            groups,
            next_member: 1,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    pub fn group(&self, group_id: &str) -> Option<&Group> {
        self.groups.get(group_id)
    }

    /// Answers every waiting request with NOT_COORDINATOR: this node no
    /// longer leads the partition.
    pub fn unload(self, out: &mut Outputs) {
        for group in self.groups.into_values() {
            for member in group.members.into_values() {
                if let Some(waiter) = member.join_waiter {
                    out.replies.push((
                        waiter,
                        Reply::Join(JoinResult::error(
                            error_code::NOT_COORDINATOR,
                            &member.member_id,
                        )),
                    ));
                }
                if let Some(waiter) = member.sync_waiter {
                    out.replies
                        .push((waiter, Reply::Sync(sync_error(error_code::NOT_COORDINATOR))));
                }
            }
        }
    }

    fn new_member_id(&mut self, group_id: &str, client_id: &str) -> String {
        loop {
            let id = format!("{client_id}-{}-{}", self.term, self.next_member);
            self.next_member += 1;
            let taken = self.groups.get(group_id).is_some_and(|group| {
                group.members.contains_key(&id) || group.pending_members.contains_key(&id)
            });
            if !taken {
                return id;
            }
        }
    }

    pub fn join(
        &mut self,
        mut request: JoinRequest,
        waiter: Waiter,
        now_ms: u64,
        out: &mut Outputs,
    ) {
        // The client id names the member in its id and in DescribeGroups;
        // a long one is cut (at a character boundary) rather than refused.
        if request.client_id.len() > GROUP_STRING_BYTES_MAX / 2 {
            let mut end = GROUP_STRING_BYTES_MAX / 2;
            while !request.client_id.is_char_boundary(end) {
                end -= 1;
            }
            request.client_id.truncate(end);
        }
        let reply = |out: &mut Outputs, code: i16| {
            out.replies.push((
                waiter,
                Reply::Join(JoinResult::error(code, &request.member_id)),
            ));
        };
        if request.group_id.is_empty() {
            return reply(out, error_code::INVALID_GROUP_ID);
        }
        if !(GROUP_SESSION_TIMEOUT_MS_MIN..=GROUP_SESSION_TIMEOUT_MS_MAX)
            .contains(&request.session_timeout_ms)
        {
            return reply(out, error_code::INVALID_SESSION_TIMEOUT);
        }
        if request.protocols.len() > MEMBER_PROTOCOLS_MAX {
            return reply(out, error_code::INCONSISTENT_GROUP_PROTOCOL);
        }
        let too_long = |text: &str| text.len() > GROUP_STRING_BYTES_MAX;
        if too_long(&request.protocol_type)
            || too_long(&request.member_id)
            || request.group_instance_id.as_deref().is_some_and(too_long)
            || request.protocols.iter().any(|(name, _)| too_long(name))
        {
            return reply(out, error_code::INVALID_REQUEST);
        }
        let metadata_bytes: usize = request
            .protocols
            .iter()
            .map(|(name, metadata)| name.len() + metadata.len())
            .sum();
        if metadata_bytes > MEMBER_BLOB_BYTES_MAX {
            tracing::warn!(
                group = %request.group_id,
                metadata_bytes,
                "a JoinGroup's protocol metadata is over the limit"
            );
            return reply(out, error_code::INVALID_REQUEST);
        }
        if !self.groups.contains_key(&request.group_id) {
            if !request.member_id.is_empty() && request.group_instance_id.is_none() {
                return reply(out, error_code::UNKNOWN_MEMBER_ID);
            }
            if self.groups.len() >= COORDINATOR_GROUPS_MAX {
                return reply(out, error_code::COORDINATOR_NOT_AVAILABLE);
            }
            self.groups
                .insert(request.group_id.clone(), Group::new(&request.group_id, 0));
        }
        let group = self.groups.get(&request.group_id).expect("inserted above");
        if !group.supports(&request.protocol_type, &request.protocols) {
            return reply(out, error_code::INCONSISTENT_GROUP_PROTOCOL);
        }
        if request.member_id.is_empty() {
            self.join_unknown_member(request, waiter, now_ms, out);
        } else {
            self.join_known_member(request, waiter, now_ms, out);
        }
    }

    fn join_unknown_member(
        &mut self,
        request: JoinRequest,
        waiter: Waiter,
        now_ms: u64,
        out: &mut Outputs,
    ) {
        let member_id = self.new_member_id(&request.group_id, &request.client_id);
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        let known_static = request
            .group_instance_id
            .as_ref()
            .and_then(|instance| group.static_members.get(instance))
            .cloned();
        if let Some(old_member_id) = known_static {
            return replace_static_member(
                group,
                old_member_id,
                member_id,
                request,
                waiter,
                now_ms,
                out,
            );
        }
        if group.members.len() + group.pending_members.len() >= GROUP_MEMBERS_MAX {
            out.replies.push((
                waiter,
                Reply::Join(JoinResult::error(error_code::GROUP_MAX_SIZE_REACHED, "")),
            ));
            return;
        }
        if request.require_known_member_id && request.group_instance_id.is_none() {
            if group.pending_members.len() >= GROUP_PENDING_MEMBERS_MAX {
                out.replies.push((
                    waiter,
                    Reply::Join(JoinResult::error(error_code::GROUP_MAX_SIZE_REACHED, "")),
                ));
                return;
            }
            group.pending_members.insert(
                member_id.clone(),
                now_ms + request.session_timeout_ms as u64,
            );
            out.replies.push((
                waiter,
                Reply::Join(JoinResult::error(
                    error_code::MEMBER_ID_REQUIRED,
                    &member_id,
                )),
            ));
            return;
        }
        add_member_and_rebalance(group, member_id, request, waiter, now_ms, out);
    }

    fn join_known_member(
        &mut self,
        request: JoinRequest,
        waiter: Waiter,
        now_ms: u64,
        out: &mut Outputs,
    ) {
        let group = self.groups.get_mut(&request.group_id).expect("checked");
        let member_id = request.member_id.clone();
        if group.pending_members.remove(&member_id).is_some() {
            return add_member_and_rebalance(group, member_id, request, waiter, now_ms, out);
        }
        if let Some(code) = fence_member(group, &member_id, request.group_instance_id.as_deref()) {
            out.replies
                .push((waiter, Reply::Join(JoinResult::error(code, &member_id))));
            return;
        }
        let member = group.members.get_mut(&member_id).expect("fenced above");
        let unchanged = member.protocols == request.protocols;
        match group.state {
            GroupState::PreparingRebalance => {
                update_member(group, &member_id, request, waiter, now_ms, out);
                try_complete_join(group, now_ms, out);
            }
            GroupState::CompletingRebalance if unchanged => {
                // A retried JoinGroup: the same answer again.
                member.session_deadline_ms = now_ms + member.session_timeout_ms;
                let result = join_result(group, &member_id, false);
                out.replies.push((waiter, Reply::Join(result)));
            }
            GroupState::Stable if unchanged && group.leader.as_deref() != Some(&member_id) => {
                member.session_deadline_ms = now_ms + member.session_timeout_ms;
                let result = join_result(group, &member_id, false);
                out.replies.push((waiter, Reply::Join(result)));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                update_member(group, &member_id, request, waiter, now_ms, out);
                prepare_rebalance(group, now_ms, out);
                try_complete_join(group, now_ms, out);
            }
            GroupState::Empty => {
                out.replies.push((
                    waiter,
                    Reply::Join(JoinResult::error(error_code::UNKNOWN_MEMBER_ID, &member_id)),
                ));
            }
        }
    }

    pub fn sync(&mut self, request: SyncRequest, waiter: Waiter, now_ms: u64, out: &mut Outputs) {
        let reply = |out: &mut Outputs, code: i16| {
            out.replies.push((waiter, Reply::Sync(sync_error(code))));
        };
        let Some(group) = self.groups.get_mut(&request.group_id) else {
            return reply(out, error_code::UNKNOWN_MEMBER_ID);
        };
        if let Some(code) = fence_member(
            group,
            &request.member_id,
            request.group_instance_id.as_deref(),
        ) {
            return reply(out, code);
        }
        if request.generation != group.generation {
            return reply(out, error_code::ILLEGAL_GENERATION);
        }
        let type_differs = request
            .protocol_type
            .as_ref()
            .is_some_and(|wanted| group.protocol_type.as_ref() != Some(wanted));
        let name_differs = request
            .protocol_name
            .as_ref()
            .is_some_and(|wanted| group.protocol_name.as_ref() != Some(wanted));
        if type_differs || name_differs {
            return reply(out, error_code::INCONSISTENT_GROUP_PROTOCOL);
        }
        let member = group
            .members
            .get_mut(&request.member_id)
            .expect("fenced above");
        member.session_deadline_ms = now_ms + member.session_timeout_ms;
        match group.state {
            GroupState::Empty => reply(out, error_code::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => reply(out, error_code::REBALANCE_IN_PROGRESS),
            GroupState::Stable => {
                let assignment = member.assignment.clone();
                out.replies
                    .push((waiter, Reply::Sync(sync_result(group, assignment))));
            }
            GroupState::CompletingRebalance => {
                if let Some(old) = member.sync_waiter.replace(waiter) {
                    out.replies.push((
                        old,
                        Reply::Sync(sync_error(error_code::REBALANCE_IN_PROGRESS)),
                    ));
                }
                if group.leader.as_deref() == Some(request.member_id.as_str()) {
                    if request
                        .assignments
                        .iter()
                        .any(|(_, assignment)| assignment.len() > MEMBER_BLOB_BYTES_MAX)
                    {
                        tracing::warn!(group = %request.group_id, "an assignment is over the limit");
                        let member = group.members.get_mut(&request.member_id).expect("fenced");
                        member.sync_waiter = None;
                        return reply(out, error_code::INVALID_REQUEST);
                    }
                    let assignments: BTreeMap<String, Vec<u8>> =
                        request.assignments.into_iter().collect();
                    for (member_id, member) in group.members.iter_mut() {
                        member.assignment = assignments.get(member_id).cloned().unwrap_or_default();
                    }
                    out.stores.push((request.group_id.clone(), group.record()));
                }
            }
        }
    }

    /// The outcome of storing `record` for `group_id`: on success a group
    /// completing that generation becomes stable and every member waiting
    /// in SyncGroup gets its assignment; on failure they get the error and
    /// the group rebalances.
    pub fn stored(
        &mut self,
        group_id: &str,
        generation: i32,
        error: Option<i16>,
        now_ms: u64,
        out: &mut Outputs,
    ) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        if group.generation != generation || group.state != GroupState::CompletingRebalance {
            return;
        }
        match error {
            None => {
                group.state = GroupState::Stable;
                let answers: Vec<(Waiter, Vec<u8>)> = group
                    .members
                    .values_mut()
                    .filter_map(|member| {
                        let waiter = member.sync_waiter.take()?;
                        member.session_deadline_ms = now_ms + member.session_timeout_ms;
                        Some((waiter, member.assignment.clone()))
                    })
                    .collect();
                for (waiter, assignment) in answers {
                    out.replies
                        .push((waiter, Reply::Sync(sync_result(group, assignment))));
                }
            }
            Some(code) => {
                for member in group.members.values_mut() {
                    member.assignment.clear();
                    if let Some(waiter) = member.sync_waiter.take() {
                        out.replies.push((waiter, Reply::Sync(sync_error(code))));
                    }
                }
                prepare_rebalance(group, now_ms, out);
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        now_ms: u64,
    ) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return error_code::UNKNOWN_MEMBER_ID;
        };
        if let Some(code) = fence_member(group, member_id, group_instance_id) {
            return code;
        }
        if generation != group.generation {
            return error_code::ILLEGAL_GENERATION;
        }
        let member = group.members.get_mut(member_id).expect("fenced above");
        member.session_deadline_ms = now_ms + member.session_timeout_ms;
        match group.state {
            GroupState::Empty => error_code::UNKNOWN_MEMBER_ID,
            GroupState::PreparingRebalance => error_code::REBALANCE_IN_PROGRESS,
            GroupState::CompletingRebalance | GroupState::Stable => 0,
        }
    }

    /// Members leave (LeaveGroup): each (member id, instance id) gets its
    /// error code; the group rebalances without them.
    pub fn leave(
        &mut self,
        group_id: &str,
        leaving: &[(String, Option<String>)],
        now_ms: u64,
        out: &mut Outputs,
    ) -> Result<Vec<i16>, i16> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(error_code::UNKNOWN_MEMBER_ID);
        };
        let mut codes = Vec::with_capacity(leaving.len());
        let mut removed_any = false;
        for (member_id, instance) in leaving {
            let member_id = match (member_id.as_str(), instance) {
                ("", Some(instance)) => match group.static_members.get(instance) {
                    Some(known) => known.clone(),
                    None => {
                        codes.push(error_code::UNKNOWN_MEMBER_ID);
                        continue;
                    }
                },
                _ => member_id.clone(),
            };
            if group.pending_members.remove(&member_id).is_some() {
                codes.push(0);
                continue;
            }
            if let Some(code) = fence_member(group, &member_id, instance.as_deref()) {
                codes.push(code);
                continue;
            }
            remove_member(group, &member_id, out);
            removed_any = true;
            codes.push(0);
        }
        if removed_any {
            member_left(group, now_ms, out);
        }
        Ok(codes)
    }

    /// Whether a commit of `generation` by `member_id` may go ahead: 0, or
    /// the error for every partition of the commit. A commit with a
    /// negative generation and no member comes from a client that uses the
    /// coordinator only to store offsets, which Kafka allows for an empty
    /// group.
    pub fn check_commit(
        &mut self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        now_ms: u64,
    ) -> i16 {
        let Some(group) = self.groups.get_mut(group_id) else {
            return if generation < 0 {
                0
            } else {
                error_code::ILLEGAL_GENERATION
            };
        };
        if generation < 0 && group.state == GroupState::Empty {
            return 0;
        }
        if group.state == GroupState::CompletingRebalance {
            return error_code::REBALANCE_IN_PROGRESS;
        }
        if let Some(code) = fence_member(group, member_id, group_instance_id) {
            return code;
        }
        if generation != group.generation {
            return error_code::ILLEGAL_GENERATION;
        }
        let member = group.members.get_mut(member_id).expect("fenced above");
        member.session_deadline_ms = now_ms + member.session_timeout_ms;
        0
    }

    /// Forgets a deleted group.
    pub fn remove_group(&mut self, group_id: &str) {
        self.groups.remove(group_id);
    }

    /// Expires sessions and member ids nobody claimed, and completes
    /// rebalances whose time is up.
    pub fn tick(&mut self, now_ms: u64, out: &mut Outputs) {
        for group in self.groups.values_mut() {
            group
                .pending_members
                .retain(|_, deadline| now_ms < *deadline);
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|member| {
                    member.join_waiter.is_none()
                        && member.sync_waiter.is_none()
                        && now_ms >= member.session_deadline_ms
                })
                .map(|member| member.member_id.clone())
                .collect();
            if !expired.is_empty() {
                tracing::info!(group = %group.id, members = ?expired, "consumer group members' sessions expired");
                for member_id in &expired {
                    remove_member(group, member_id, out);
                }
                member_left(group, now_ms, out);
            }
            match group.state {
                GroupState::PreparingRebalance => {
                    if now_ms >= group.phase_deadline_ms {
                        complete_join(group, now_ms, out);
                    } else {
                        try_complete_join(group, now_ms, out);
                    }
                }
                GroupState::CompletingRebalance if now_ms >= group.phase_deadline_ms => {
                    // The leader never sent the assignment: start over.
                    prepare_rebalance(group, now_ms, out);
                }
                _ => {}
            }
        }
    }
}

fn sync_error(code: i16) -> SyncResult {
    SyncResult {
        error_code: code,
        ..SyncResult::default()
    }
}

fn sync_result(group: &Group, assignment: Vec<u8>) -> SyncResult {
    SyncResult {
        error_code: 0,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        assignment,
    }
}

/// UNKNOWN_MEMBER_ID for a member the group does not have, FENCED_INSTANCE_ID
/// for a static member whose instance id belongs to another member id now.
fn fence_member(group: &Group, member_id: &str, group_instance_id: Option<&str>) -> Option<i16> {
    if let Some(instance) = group_instance_id {
        match group.static_members.get(instance) {
            Some(current) if current != member_id => return Some(error_code::FENCED_INSTANCE_ID),
            None => return Some(error_code::UNKNOWN_MEMBER_ID),
            Some(_) => {}
        }
    }
    (!group.members.contains_key(member_id)).then_some(error_code::UNKNOWN_MEMBER_ID)
}

fn join_result(group: &Group, member_id: &str, skip_assignment: bool) -> JoinResult {
    let leader = group.leader.clone().unwrap_or_default();
    let members = if leader == member_id {
        group
            .members
            .values()
            .map(|member| {
                (
                    member.member_id.clone(),
                    member.group_instance_id.clone(),
                    member.metadata(group.protocol_name.as_deref()).to_vec(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinResult {
        error_code: 0,
        generation: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol_name.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
        skip_assignment,
    }
}

fn new_member(member_id: String, request: &JoinRequest, waiter: Waiter, now_ms: u64) -> Member {
    let session_timeout_ms = request.session_timeout_ms.max(0) as u64;
    Member {
        member_id,
        group_instance_id: request.group_instance_id.clone(),
        client_id: request.client_id.clone(),
        client_host: request.client_host.clone(),
        session_timeout_ms,
        rebalance_timeout_ms: (request.rebalance_timeout_ms.max(0) as u64)
            .max(session_timeout_ms)
            .min(GROUP_REBALANCE_TIMEOUT_MS_MAX),
        protocol_type: request.protocol_type.clone(),
        protocols: request.protocols.clone(),
        assignment: Vec::new(),
        join_waiter: Some(waiter),
        sync_waiter: None,
        session_deadline_ms: now_ms + session_timeout_ms,
    }
}

fn add_member_and_rebalance(
    group: &mut Group,
    member_id: String,
    request: JoinRequest,
    waiter: Waiter,
    now_ms: u64,
    out: &mut Outputs,
) {
    let member = new_member(member_id.clone(), &request, waiter, now_ms);
    if group.members.is_empty() {
        group.protocol_type = Some(request.protocol_type.clone());
    }
    if let Some(instance) = &request.group_instance_id {
        group
            .static_members
            .insert(instance.clone(), member_id.clone());
    }
    if group.leader.is_none() {
        group.leader = Some(member_id.clone());
    }
    group.members.insert(member_id, member);
    if group.state == GroupState::PreparingRebalance && group.initial_delay_until_ms > now_ms {
        // Another member of a group forming: wait a little more for the
        // rest, within the rebalance timeout.
        group.initial_delay_until_ms =
            (now_ms + GROUP_INITIAL_REBALANCE_DELAY_MS).min(group.phase_deadline_ms);
    }
    prepare_rebalance(group, now_ms, out);
    try_complete_join(group, now_ms, out);
}

fn update_member(
    group: &mut Group,
    member_id: &str,
    request: JoinRequest,
    waiter: Waiter,
    now_ms: u64,
    out: &mut Outputs,
) {
    let member = group.members.get_mut(member_id).expect("a known member");
    member.protocols = request.protocols;
    member.session_timeout_ms = request.session_timeout_ms.max(0) as u64;
    member.rebalance_timeout_ms = (request.rebalance_timeout_ms.max(0) as u64)
        .max(member.session_timeout_ms)
        .min(GROUP_REBALANCE_TIMEOUT_MS_MAX);
    member.session_deadline_ms = now_ms + member.session_timeout_ms;
    if let Some(old) = member.join_waiter.replace(waiter) {
        out.replies.push((
            old,
            Reply::Join(JoinResult::error(
                error_code::REBALANCE_IN_PROGRESS,
                member_id,
            )),
        ));
    }
}

/// A static member came back with a new member id (it restarted): it takes
/// the old member's place. In a stable group whose protocol would not
/// change, that is all (Kafka's `updateStaticMemberAndRebalance`): the group
/// keeps its generation and assignments, and the member gets its old
/// assignment from SyncGroup; otherwise the group rebalances.
fn replace_static_member(
    group: &mut Group,
    old_member_id: String,
    member_id: String,
    request: JoinRequest,
    waiter: Waiter,
    now_ms: u64,
    out: &mut Outputs,
) {
    let mut member = group
        .members
        .remove(&old_member_id)
        .expect("a static member is a member");
    // The old incarnation's waiting requests are fenced.
    if let Some(old) = member.join_waiter.take() {
        out.replies.push((
            old,
            Reply::Join(JoinResult::error(
                error_code::FENCED_INSTANCE_ID,
                &old_member_id,
            )),
        ));
    }
    if let Some(old) = member.sync_waiter.take() {
        out.replies
            .push((old, Reply::Sync(sync_error(error_code::FENCED_INSTANCE_ID))));
    }
    let instance = request
        .group_instance_id
        .clone()
        .expect("a static member has an instance id");
    member.member_id = member_id.clone();
    member.protocols = request.protocols.clone();
    member.client_id = request.client_id.clone();
    member.client_host = request.client_host.clone();
    member.session_timeout_ms = request.session_timeout_ms.max(0) as u64;
    member.rebalance_timeout_ms = (request.rebalance_timeout_ms.max(0) as u64)
        .max(member.session_timeout_ms)
        .min(GROUP_REBALANCE_TIMEOUT_MS_MAX);
    member.session_deadline_ms = now_ms + member.session_timeout_ms;
    group.static_members.insert(instance, member_id.clone());
    let was_leader = group.leader.as_deref() == Some(old_member_id.as_str());
    if was_leader {
        group.leader = Some(member_id.clone());
    }
    group.members.insert(member_id.clone(), member);
    match group.state {
        GroupState::Stable
            if group.select_protocol() == group.protocol_name && group.protocol_name.is_some() =>
        {
            tracing::info!(
                member = %member_id,
                "a static member rejoined with a new member id; the group keeps its generation"
            );
            // The replacement is stored so that a new coordinator knows the
            // new member id; should that store be lost, the member's next
            // heartbeat gets UNKNOWN_MEMBER_ID and it simply rejoins.
            out.stores.push((group.id.clone(), group.record()));
            let result = join_result(group, &member_id, was_leader);
            out.replies.push((waiter, Reply::Join(result)));
        }
        GroupState::PreparingRebalance => {
            let member = group.members.get_mut(&member_id).expect("inserted");
            member.join_waiter = Some(waiter);
            try_complete_join(group, now_ms, out);
        }
        _ => {
            let member = group.members.get_mut(&member_id).expect("inserted");
            member.join_waiter = Some(waiter);
            prepare_rebalance(group, now_ms, out);
            try_complete_join(group, now_ms, out);
        }
    }
}

fn remove_member(group: &mut Group, member_id: &str, out: &mut Outputs) {
    let Some(member) = group.members.remove(member_id) else {
        return;
    };
    if let Some(instance) = &member.group_instance_id {
        if group.static_members.get(instance).map(String::as_str) == Some(member_id) {
            group.static_members.remove(instance);
        }
    }
    if let Some(waiter) = member.join_waiter {
        out.replies.push((
            waiter,
            Reply::Join(JoinResult::error(error_code::UNKNOWN_MEMBER_ID, member_id)),
        ));
    }
    if let Some(waiter) = member.sync_waiter {
        out.replies.push((
            waiter,
            Reply::Sync(sync_error(error_code::UNKNOWN_MEMBER_ID)),
        ));
    }
    if group.leader.as_deref() == Some(member_id) {
        group.leader = group.members.keys().next().cloned();
    }
}

/// After members were removed: a stable or completing group rebalances, a
/// rebalancing one may now have everyone it waits for.
fn member_left(group: &mut Group, now_ms: u64, out: &mut Outputs) {
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(group, now_ms, out);
            try_complete_join(group, now_ms, out);
        }
        GroupState::PreparingRebalance => try_complete_join(group, now_ms, out),
        GroupState::Empty => {}
    }
}

fn prepare_rebalance(group: &mut Group, now_ms: u64, out: &mut Outputs) {
    match group.state {
        GroupState::PreparingRebalance => return,
        GroupState::CompletingRebalance => {
            // Assignments of the generation that will not complete are void.
            for member in group.members.values_mut() {
                member.assignment.clear();
                if let Some(waiter) = member.sync_waiter.take() {
                    out.replies.push((
                        waiter,
                        Reply::Sync(sync_error(error_code::REBALANCE_IN_PROGRESS)),
                    ));
                }
            }
        }
        GroupState::Empty => {
            group.initial_delay_until_ms = now_ms + GROUP_INITIAL_REBALANCE_DELAY_MS;
        }
        GroupState::Stable => {}
    }
    group.state = GroupState::PreparingRebalance;
    group.phase_deadline_ms = now_ms + group.rebalance_timeout_ms();
}

fn try_complete_join(group: &mut Group, now_ms: u64, out: &mut Outputs) {
    if group.state == GroupState::PreparingRebalance
        && (group.members.is_empty()
            || (group.all_members_joined() && now_ms >= group.initial_delay_until_ms))
    {
        complete_join(group, now_ms, out);
    }
}

/// Ends the join phase: members that did not rejoin in time are removed
/// (static members stay, as in Kafka, until their session expires), the
/// generation moves on, and every member that joined gets its answer.
fn complete_join(group: &mut Group, now_ms: u64, out: &mut Outputs) {
    let absent: Vec<String> = group
        .members
        .values()
        .filter(|member| member.join_waiter.is_none() && member.group_instance_id.is_none())
        .map(|member| member.member_id.clone())
        .collect();
    for member_id in &absent {
        remove_member(group, member_id, out);
    }
    group.pending_members.clear();
    group.generation = group.generation.saturating_add(1);
    if group.members.is_empty() {
        group.state = GroupState::Empty;
        group.protocol_name = None;
        group.protocol_type = None;
        group.leader = None;
        out.stores.push((group.id.clone(), group.record()));
        return;
    }
    let leader_joined = group
        .leader
        .as_ref()
        .and_then(|leader| group.members.get(leader))
        .is_some_and(|leader| leader.join_waiter.is_some());
    if !leader_joined {
        group.leader = group
            .members
            .values()
            .find(|member| member.join_waiter.is_some())
            .or_else(|| group.members.values().next())
            .map(|member| member.member_id.clone());
    }
    group.protocol_name = group.select_protocol();
    group.state = GroupState::CompletingRebalance;
    group.phase_deadline_ms = now_ms + group.rebalance_timeout_ms();
    let member_ids: Vec<String> = group.members.keys().cloned().collect();
    for member_id in member_ids {
        let result = join_result(group, &member_id, false);
        let member = group.members.get_mut(&member_id).expect("listed");
        member.session_deadline_ms = now_ms + member.session_timeout_ms;
        if let Some(waiter) = member.join_waiter.take() {
            out.replies.push((waiter, Reply::Join(result)));
        }
    }
}
