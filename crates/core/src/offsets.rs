//! The replicated state machine of one partition of the internal offsets
//! topic (Kafka's `__consumer_offsets`): the committed offsets of the
//! consumer groups that hash to the partition, and the last stored metadata
//! of each group (generation, protocol, leader, members and assignments).
//!
//! The state is the latest value per key, so a snapshot of it is the
//! compacted topic: a commit overwrites the previous offset of its
//! (group, topic, partition), a stored group overwrites its previous
//! metadata, and deleting a group or its offsets removes the keys.
//!
//! The group coordinator (in the broker) is the leader of the partition: it
//! decides in memory, proposes commands, and answers clients once they are
//! applied; a new leader rebuilds its groups from this state.

use std::collections::BTreeMap;

use runnel_io::GroupId;

/// The internal topic's name, as in Kafka.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The replication groups of the offsets topic's partitions are numbered
/// from here, far above the groups of ordinary partitions (numbered from 1),
/// so that a node knows from a group's id alone which machine it runs.
pub const OFFSETS_GROUP_BASE: GroupId = 1 << 40;
/// Most partitions the offsets topic may have.
pub const OFFSETS_PARTITIONS_MAX: u32 = 1_024;
/// Most bytes of a consumer group id.
pub const GROUP_ID_BYTES_MAX: usize = 1_024;
/// Most bytes of the metadata string of one committed offset (Kafka's
/// `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4_096;
/// Most groups one offsets partition holds (with stored metadata or
/// committed offsets).
pub const GROUPS_PER_PARTITION_MAX: usize = 10_000;
/// Most committed offsets one group holds.
pub const GROUP_OFFSETS_MAX: usize = 100_000;
/// Most members one group may have (Kafka's `group.max.size` is unbounded
/// by default; a bound keeps a stored group record small).
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// Most bytes of one member's protocol metadata (all its protocols) or of
/// its assignment.
pub const MEMBER_BLOB_BYTES_MAX: usize = 64 << 10;
/// Most bytes of one encoded offsets command (a commit or a group record),
/// far below what one consensus entry may hold.
pub const OFFSETS_COMMAND_BYTES_MAX: usize = 1 << 20;
/// Most bytes of the short strings of a group record (protocol type and
/// name, member id, instance id, client id, client host).
pub const GROUP_STRING_BYTES_MAX: usize = 1_024;
/// Most bytes one offsets partition holds, as its snapshot encodes them.
/// The counts above alone allow far more (a thousand members of 128 KiB
/// each, or 10,000 groups of 100,000 offsets), and the whole state travels
/// as one snapshot message inside one peer envelope: past this bound, a
/// commit or a group record that would grow the partition is refused.
pub const OFFSETS_PARTITION_BYTES_MAX: u64 = 64 << 20;
const _: () = assert!(
    OFFSETS_PARTITION_BYTES_MAX as usize
        + crate::wire::SNAPSHOT_MESSAGE_OVERHEAD_BYTES_MAX
        + crate::wire::ENVELOPE_OVERHEAD_BYTES
        + 12
        <= crate::wire::ENVELOPE_BYTES_MAX,
    "an offsets partition's snapshot travels in one envelope"
);

/// Kafka error codes the offsets machine answers with.
pub mod error_code {
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const INVALID_REQUEST: i16 = 42;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const POLICY_VIOLATION: i16 = 44;
}

/// The offsets partition (0-based) that holds `group_id` when the topic has
/// `partitions` partitions: Kafka's `Utils.abs(groupId.hashCode) % count`,
/// with Java's `String.hashCode` over UTF-16 code units, so that a group
/// lands on the same partition number as in Kafka.
pub fn partition_for(group_id: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "the offsets topic has partitions");
    let hash = group_id.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs maps i32::MIN to 0 rather than overflowing.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive as u32 % partitions
}

/// Whether `group` is a partition of the offsets topic.
pub fn is_offsets_group(group: GroupId) -> bool {
    (OFFSETS_GROUP_BASE..OFFSETS_GROUP_BASE + u64::from(OFFSETS_PARTITIONS_MAX)).contains(&group)
}

/// One committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommittedOffset {
    pub offset: i64,
    /// The leader epoch the client saw at `offset`, or -1.
    pub leader_epoch: i32,
    pub metadata: String,
    /// The coordinator's wall clock when it accepted the commit.
    pub commit_timestamp_ms: i64,
}

/// A member as stored with its group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoredMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    /// Every protocol the member supports, in its order of preference, with
    /// its metadata for each.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
}

/// A group's metadata as of its last completed rebalance (or its last
/// change to empty): enough for a new coordinator to continue its
/// generations and to fence members of older ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StoredGroup {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<StoredMember>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsCommand {
    /// Commits offsets of `group`, each (topic, partition, offset).
    Commit {
        group: String,
        offsets: Vec<(String, i32, CommittedOffset)>,
    },
    /// Stores `group`'s metadata, replacing what was stored.
    StoreGroup { group: String, record: StoredGroup },
    /// Deletes the group and all its offsets.
    DeleteGroup { group: String },
    /// Deletes some committed offsets of the group.
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OffsetsOutcome {
    Done,
    Refused { error_code: i16, message: String },
}

/// The state of one offsets partition: the latest value per key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetsState {
    groups: BTreeMap<String, StoredGroup>,
    offsets: BTreeMap<String, BTreeMap<(String, i32), CommittedOffset>>,
    /// What `encode` writes for the groups and offsets, kept as they
    /// change (the snapshot's version and two counts, 12 bytes, aside).
    bytes: u64,
}

/// Bytes `encode` writes for one group's metadata, its id included.
fn group_record_bytes(group: &str, record: &StoredGroup) -> u64 {
    let mut out = Vec::new();
    put_group(&mut out, record);
    (4 + group.len() + out.len()) as u64
}

/// Bytes `encode` writes for one committed offset, its key included.
fn offset_entry_bytes(topic: &str, offset: &CommittedOffset) -> u64 {
    (4 + topic.len() + 4 + 8 + 4 + 4 + offset.metadata.len() + 8) as u64
}

/// Bytes `encode` writes for a group's offsets map around its entries.
fn offsets_group_bytes(group: &str) -> u64 {
    (4 + group.len() + 4) as u64
}

impl OffsetsState {
    /// Groups with stored metadata.
    pub fn groups(&self) -> &BTreeMap<String, StoredGroup> {
        &self.groups
    }

    pub fn group(&self, group: &str) -> Option<&StoredGroup> {
        self.groups.get(group)
    }

    /// Every group this partition knows: with stored metadata or with
    /// committed offsets (a group that only stores offsets, as a consumer
    /// with manual assignment does, has no metadata).
    pub fn group_ids(&self) -> impl Iterator<Item = &String> {
        let mut ids: Vec<&String> = self.groups.keys().chain(self.offsets.keys()).collect();
        ids.sort();
        ids.dedup();
        ids.into_iter()
    }

    pub fn knows(&self, group: &str) -> bool {
        self.groups.contains_key(group) || self.offsets.contains_key(group)
    }

    /// The committed offsets of `group` by (topic, partition).
    pub fn offsets(&self, group: &str) -> Option<&BTreeMap<(String, i32), CommittedOffset>> {
        self.offsets.get(group)
    }

    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.offsets
            .get(group)?
            .get(&(topic.to_string(), partition))
    }

    /// What the partition holds, as `OFFSETS_PARTITION_BYTES_MAX` counts it.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn over_bytes(&self, grown_by: u64) -> Option<OffsetsOutcome> {
        (self.bytes + grown_by > OFFSETS_PARTITION_BYTES_MAX).then(|| {
            refused(
                error_code::POLICY_VIOLATION,
                format!(
                    "the offsets partition would hold more than {OFFSETS_PARTITION_BYTES_MAX} bytes"
                ),
            )
        })
    }

    /// Whether one more group fits in the partition.
    pub fn has_room_for(&self, group: &str) -> bool {
        self.knows(group) || self.group_ids().count() < GROUPS_PER_PARTITION_MAX
    }

    /// Applies a committed command. Commands are checked by the coordinator
    /// before they are proposed; the checks here keep every replica bounded
    /// alike even if a bad one got through.
    pub fn apply(&mut self, command: OffsetsCommand) -> OffsetsOutcome {
        match command {
            OffsetsCommand::Commit { group, offsets } => {
                if let Err(refusal) = check_group_id(&group) {
                    return refusal;
                }
                if !self.has_room_for(&group) {
                    return refused(
                        error_code::POLICY_VIOLATION,
                        format!("the offsets partition holds the most groups allowed ({GROUPS_PER_PARTITION_MAX})"),
                    );
                }
                if let Some((_, _, too_large)) = offsets
                    .iter()
                    .find(|(_, _, offset)| offset.metadata.len() > OFFSET_METADATA_BYTES_MAX)
                {
                    return refused(
                        error_code::OFFSET_METADATA_TOO_LARGE,
                        format!(
                            "offset metadata of {} bytes is over the limit of {OFFSET_METADATA_BYTES_MAX}",
                            too_large.metadata.len()
                        ),
                    );
                }
                let existing = self.offsets.get(&group);
                let existing_was_none = existing.is_none();
                let mut grown: u64 = if existing.is_none() {
                    offsets_group_bytes(&group)
                } else {
                    0
                };
                let mut shrunk: u64 = 0;
                for (topic, partition, offset) in &offsets {
                    grown += offset_entry_bytes(topic, offset);
                    if let Some(old) =
                        existing.and_then(|stored| stored.get(&(topic.clone(), *partition)))
                    {
                        shrunk += offset_entry_bytes(topic, old);
                    }
                }
                // A commit that would grow the partition past its bound is
                // refused; one that replaces offsets in place never is.
                if grown > shrunk {
                    if let Some(refusal) = self.over_bytes(grown - shrunk) {
                        return refusal;
                    }
                }
                let stored = self.offsets.entry(group.clone()).or_default();
                let new_keys = offsets
                    .iter()
                    .filter(|(topic, partition, _)| {
                        !stored.contains_key(&(topic.clone(), *partition))
                    })
                    .count();
                if stored.len() + new_keys > GROUP_OFFSETS_MAX {
                    if stored.is_empty() {
                        self.offsets.remove(&group);
                    }
                    return refused(
                        error_code::POLICY_VIOLATION,
                        format!(
                            "group \"{group}\" would hold more than {GROUP_OFFSETS_MAX} offsets"
                        ),
                    );
                }
                for (topic, partition, offset) in offsets {
                    let added = offset_entry_bytes(&topic, &offset);
                    if let Some(old) = stored.insert((topic.clone(), partition), offset) {
                        self.bytes -= offset_entry_bytes(&topic, &old);
                    }
                    self.bytes += added;
                }
                if existing_was_none {
                    self.bytes += offsets_group_bytes(&group);
                }
                OffsetsOutcome::Done
            }
            OffsetsCommand::StoreGroup { group, record } => {
                if let Err(refusal) = check_group_id(&group) {
                    return refusal;
                }
                if !self.has_room_for(&group) {
                    return refused(
                        error_code::POLICY_VIOLATION,
                        format!("the offsets partition holds the most groups allowed ({GROUPS_PER_PARTITION_MAX})"),
                    );
                }
                if record.members.len() > GROUP_MEMBERS_MAX {
                    return refused(
                        error_code::GROUP_MAX_SIZE_REACHED,
                        format!("a group has at most {GROUP_MEMBERS_MAX} members"),
                    );
                }
                let added = group_record_bytes(&group, &record);
                let removed = self
                    .groups
                    .get(&group)
                    .map_or(0, |old| group_record_bytes(&group, old));
                if added > removed {
                    if let Some(refusal) = self.over_bytes(added - removed) {
                        return refusal;
                    }
                }
                self.bytes = self.bytes - removed + added;
                self.groups.insert(group, record);
                OffsetsOutcome::Done
            }
            OffsetsCommand::DeleteGroup { group } => {
                let metadata = self.groups.remove(&group);
                let offsets = self.offsets.remove(&group);
                if let Some(record) = &metadata {
                    self.bytes -= group_record_bytes(&group, record);
                }
                if let Some(offsets) = &offsets {
                    self.bytes -= offsets_group_bytes(&group)
                        + offsets
                            .iter()
                            .map(|((topic, _), offset)| offset_entry_bytes(topic, offset))
                            .sum::<u64>();
                }
                let had_metadata = metadata.is_some();
                let had_offsets = offsets.is_some();
                if had_metadata || had_offsets {
                    OffsetsOutcome::Done
                } else {
                    refused(
                        error_code::GROUP_ID_NOT_FOUND,
                        format!("group \"{group}\" does not exist"),
                    )
                }
            }
            OffsetsCommand::DeleteOffsets { group, partitions } => {
                let Some(stored) = self.offsets.get_mut(&group) else {
                    return refused(
                        error_code::GROUP_ID_NOT_FOUND,
                        format!("group \"{group}\" has no committed offsets"),
                    );
                };
                for key in partitions {
                    if let Some(old) = stored.remove(&key) {
                        self.bytes -= offset_entry_bytes(&key.0, &old);
                    }
                }
                if stored.is_empty() {
                    self.offsets.remove(&group);
                    self.bytes -= offsets_group_bytes(&group);
                }
                OffsetsOutcome::Done
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        put_u32(&mut out, self.groups.len());
        for (group, record) in &self.groups {
            put_str(&mut out, group);
            put_group(&mut out, record);
        }
        put_u32(&mut out, self.offsets.len());
        for (group, offsets) in &self.offsets {
            put_str(&mut out, group);
            put_u32(&mut out, offsets.len());
            for ((topic, partition), offset) in offsets {
                put_str(&mut out, topic);
                out.extend_from_slice(&partition.to_le_bytes());
                put_offset(&mut out, offset);
            }
        }
        out
    }

    /// Decodes a snapshot written by [`OffsetsState::encode`]. Snapshots are
    /// checksummed by storage, so a malformed one is a programmer error.
    pub fn decode(data: &[u8]) -> OffsetsState {
        Self::try_decode(data).expect("a checksummed offsets snapshot decodes")
    }

    fn try_decode(data: &[u8]) -> Option<OffsetsState> {
        let mut cursor = Cursor { data };
        let version = cursor.u32()?;
        if version != SNAPSHOT_VERSION {
            return None;
        }
        let mut state = OffsetsState::default();
        for _ in 0..cursor.count(8)? {
            let group = cursor.string()?;
            let record = cursor.group()?;
            state.bytes += group_record_bytes(&group, &record);
            state.groups.insert(group, record);
        }
        for _ in 0..cursor.count(8)? {
            let group = cursor.string()?;
            let mut offsets = BTreeMap::new();
            for _ in 0..cursor.count(8)? {
                let topic = cursor.string()?;
                let partition = cursor.i32()?;
                let offset = cursor.offset()?;
                state.bytes += offset_entry_bytes(&topic, &offset);
                offsets.insert((topic, partition), offset);
            }
            state.bytes += offsets_group_bytes(&group);
            state.offsets.insert(group, offsets);
        }
        cursor.data.is_empty().then_some(state)
    }
}

fn check_group_id(group: &str) -> Result<(), OffsetsOutcome> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err(refused(
            error_code::INVALID_GROUP_ID,
            format!("a group id is 1 to {GROUP_ID_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn refused(error_code: i16, message: String) -> OffsetsOutcome {
    OffsetsOutcome::Refused {
        error_code,
        message,
    }
}

const SNAPSHOT_VERSION: u32 = 1;
const COMMAND_COMMIT: u8 = 1;
const COMMAND_STORE_GROUP: u8 = 2;
const COMMAND_DELETE_GROUP: u8 = 3;
const COMMAND_DELETE_OFFSETS: u8 = 4;

impl OffsetsCommand {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            OffsetsCommand::Commit { group, offsets } => {
                out.push(COMMAND_COMMIT);
                put_str(&mut out, group);
                put_u32(&mut out, offsets.len());
                for (topic, partition, offset) in offsets {
                    put_str(&mut out, topic);
                    out.extend_from_slice(&partition.to_le_bytes());
                    put_offset(&mut out, offset);
                }
            }
            OffsetsCommand::StoreGroup { group, record } => {
                out.push(COMMAND_STORE_GROUP);
                put_str(&mut out, group);
                put_group(&mut out, record);
            }
            OffsetsCommand::DeleteGroup { group } => {
                out.push(COMMAND_DELETE_GROUP);
                put_str(&mut out, group);
            }
            OffsetsCommand::DeleteOffsets { group, partitions } => {
                out.push(COMMAND_DELETE_OFFSETS);
                put_str(&mut out, group);
                put_u32(&mut out, partitions.len());
                for (topic, partition) in partitions {
                    put_str(&mut out, topic);
                    out.extend_from_slice(&partition.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes an entry payload; `None` for a malformed one (refused alike
    /// on every replica).
    pub fn decode(data: &[u8]) -> Option<OffsetsCommand> {
        let (&tag, rest) = data.split_first()?;
        let mut cursor = Cursor { data: rest };
        let command = match tag {
            COMMAND_COMMIT => {
                let group = cursor.string()?;
                let mut offsets = Vec::new();
                for _ in 0..cursor.count(8)? {
                    let topic = cursor.string()?;
                    let partition = cursor.i32()?;
                    offsets.push((topic, partition, cursor.offset()?));
                }
                OffsetsCommand::Commit { group, offsets }
            }
            COMMAND_STORE_GROUP => OffsetsCommand::StoreGroup {
                group: cursor.string()?,
                record: cursor.group()?,
            },
            COMMAND_DELETE_GROUP => OffsetsCommand::DeleteGroup {
                group: cursor.string()?,
            },
            COMMAND_DELETE_OFFSETS => {
                let group = cursor.string()?;
                let mut partitions = Vec::new();
                for _ in 0..cursor.count(8)? {
                    let topic = cursor.string()?;
                    partitions.push((topic, cursor.i32()?));
                }
                OffsetsCommand::DeleteOffsets { group, partitions }
            }
            _ => return None,
        };
        cursor.data.is_empty().then_some(command)
    }
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    let value = u32::try_from(value).expect("lengths are bounded far below u32");
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, value: &[u8]) {
    put_u32(out, value.len());
    out.extend_from_slice(value);
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    put_bytes(out, value.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, value: &Option<String>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put_str(out, value);
        }
    }
}

fn put_offset(out: &mut Vec<u8>, offset: &CommittedOffset) {
    out.extend_from_slice(&offset.offset.to_le_bytes());
    out.extend_from_slice(&offset.leader_epoch.to_le_bytes());
    put_str(out, &offset.metadata);
    out.extend_from_slice(&offset.commit_timestamp_ms.to_le_bytes());
}

fn put_group(out: &mut Vec<u8>, record: &StoredGroup) {
    out.extend_from_slice(&record.generation.to_le_bytes());
    put_str(out, &record.protocol_type);
    put_opt_str(out, &record.protocol_name);
    put_opt_str(out, &record.leader);
    put_u32(out, record.members.len());
    for member in &record.members {
        put_str(out, &member.member_id);
        put_opt_str(out, &member.group_instance_id);
        put_str(out, &member.client_id);
        put_str(out, &member.client_host);
        out.extend_from_slice(&member.session_timeout_ms.to_le_bytes());
        out.extend_from_slice(&member.rebalance_timeout_ms.to_le_bytes());
        put_u32(out, member.protocols.len());
        for (name, metadata) in &member.protocols {
            put_str(out, name);
            put_bytes(out, metadata);
        }
        put_bytes(out, &member.assignment);
    }
}

/// A reader of entry payloads and snapshots that returns `None` instead of
/// panicking, and never allocates more than the input could hold.
struct Cursor<'a> {
    data: &'a [u8],
}

impl Cursor<'_> {
    fn take(&mut self, length: usize) -> Option<&[u8]> {
        if length > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(length);
        self.data = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count of items each at least `item_bytes` long.
    fn count(&mut self, item_bytes: usize) -> Option<usize> {
        let count = self.u32()? as usize;
        (count <= self.data.len() / item_bytes.max(1)).then_some(count)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let length = self.u32()? as usize;
        Some(self.take(length)?.to_vec())
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }
    fn offset(&mut self) -> Option<CommittedOffset> {
        Some(CommittedOffset {
            offset: self.i64()?,
            leader_epoch: self.i32()?,
            metadata: self.string()?,
            commit_timestamp_ms: self.i64()?,
        })
    }
    fn group(&mut self) -> Option<StoredGroup> {
        let generation = self.i32()?;
        let protocol_type = self.string()?;
        let protocol_name = self.opt_string()?;
        let leader = self.opt_string()?;
        let mut members = Vec::new();
        for _ in 0..self.count(8)? {
            let member_id = self.string()?;
            let group_instance_id = self.opt_string()?;
            let client_id = self.string()?;
            let client_host = self.string()?;
            let session_timeout_ms = self.u32()?;
            let rebalance_timeout_ms = self.u32()?;
            let mut protocols = Vec::new();
            for _ in 0..self.count(8)? {
                let name = self.string()?;
                protocols.push((name, self.bytes()?));
            }
            let assignment = self.bytes()?;
            members.push(StoredMember {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocols,
                assignment,
            });
        }
        Some(StoredGroup {
            generation,
            protocol_type,
            protocol_name,
            leader,
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(value: i64, metadata: &str) -> CommittedOffset {
        CommittedOffset {
            offset: value,
            leader_epoch: 3,
            metadata: metadata.into(),
            commit_timestamp_ms: 1_700_000_000_000,
        }
    }

    fn commit(group: &str, topic: &str, partition: i32, value: i64) -> OffsetsCommand {
        OffsetsCommand::Commit {
            group: group.into(),
            offsets: vec![(topic.into(), partition, offset(value, "m"))],
        }
    }

    fn stored_group() -> StoredGroup {
        StoredGroup {
            generation: 7,
            protocol_type: "consumer".into(),
            protocol_name: Some("range".into()),
            leader: Some("c-1".into()),
            members: vec![StoredMember {
                member_id: "c-1".into(),
                group_instance_id: Some("static-1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 6_000,
                rebalance_timeout_ms: 30_000,
                protocols: vec![("range".into(), vec![0, 1, 2])],
                assignment: vec![9, 9],
            }],
        }
    }

    #[test]
    fn partition_for_matches_kafka() {
        // Java: "hello".hashCode() == 99_162_322 (a well-known value).
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        assert_eq!(partition_for("", 8), 0);
        // Java: "my-group".hashCode() == -1_906_497_762: Kafka takes the
        // absolute value.
        assert_eq!(partition_for("my-group", 50), 1_906_497_762 % 50);
    }

    #[test]
    fn a_commit_keeps_the_latest_value_per_key() {
        let mut state = OffsetsState::default();
        assert_eq!(state.apply(commit("g", "t", 0, 5)), OffsetsOutcome::Done);
        assert_eq!(state.apply(commit("g", "t", 0, 9)), OffsetsOutcome::Done);
        assert_eq!(state.apply(commit("g", "t", 1, 2)), OffsetsOutcome::Done);
        assert_eq!(state.committed("g", "t", 0).map(|o| o.offset), Some(9));
        assert_eq!(state.committed("g", "t", 1).map(|o| o.offset), Some(2));
        assert_eq!(state.offsets("g").map(BTreeMap::len), Some(2));
        assert!(state.knows("g"));
    }

    #[test]
    fn bounds_are_refused_alike_on_every_replica() {
        let mut state = OffsetsState::default();
        let too_large = OffsetsCommand::Commit {
            group: "g".into(),
            offsets: vec![(
                "t".into(),
                0,
                offset(1, &"x".repeat(OFFSET_METADATA_BYTES_MAX + 1)),
            )],
        };
        assert!(matches!(
            state.apply(too_large),
            OffsetsOutcome::Refused {
                error_code: error_code::OFFSET_METADATA_TOO_LARGE,
                ..
            }
        ));
        assert!(matches!(
            state.apply(commit("", "t", 0, 1)),
            OffsetsOutcome::Refused {
                error_code: error_code::INVALID_GROUP_ID,
                ..
            }
        ));
        assert!(!state.knows("g"), "a refused commit leaves nothing behind");
    }

    #[test]
    fn deletes_remove_keys() {
        let mut state = OffsetsState::default();
        state.apply(commit("g", "t", 0, 5));
        state.apply(commit("g", "t", 1, 5));
        state.apply(OffsetsCommand::StoreGroup {
            group: "g".into(),
            record: stored_group(),
        });
        state.apply(OffsetsCommand::DeleteOffsets {
            group: "g".into(),
            partitions: vec![("t".into(), 0)],
        });
        assert_eq!(state.committed("g", "t", 0), None);
        assert!(state.committed("g", "t", 1).is_some());
        assert_eq!(
            state.apply(OffsetsCommand::DeleteGroup { group: "g".into() }),
            OffsetsOutcome::Done
        );
        assert!(!state.knows("g"));
        assert!(matches!(
            state.apply(OffsetsCommand::DeleteGroup { group: "g".into() }),
            OffsetsOutcome::Refused {
                error_code: error_code::GROUP_ID_NOT_FOUND,
                ..
            }
        ));
    }

    #[test]
    fn snapshot_and_commands_round_trip() {
        let mut state = OffsetsState::default();
        let commands = vec![
            commit("g", "t", 0, 5),
            OffsetsCommand::StoreGroup {
                group: "g".into(),
                record: stored_group(),
            },
            OffsetsCommand::DeleteOffsets {
                group: "h".into(),
                partitions: vec![("t".into(), 3)],
            },
            OffsetsCommand::DeleteGroup { group: "x".into() },
        ];
        for command in commands {
            assert_eq!(
                OffsetsCommand::decode(&command.encode()),
                Some(command.clone())
            );
            state.apply(command);
        }
        state.apply(commit("h", "u", 2, 11));
        assert_eq!(OffsetsState::decode(&state.encode()), state);
        assert_eq!(
            OffsetsState::decode(&OffsetsState::default().encode()),
            OffsetsState::default()
        );
    }

    #[test]
    fn malformed_commands_do_not_decode() {
        let encoded = commit("g", "t", 0, 5).encode();
        for cut in 0..encoded.len() {
            assert_eq!(OffsetsCommand::decode(&encoded[..cut]), None, "cut {cut}");
        }
        // A hostile count does not allocate.
        let mut hostile = vec![COMMAND_COMMIT];
        put_str(&mut hostile, "g");
        hostile.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(OffsetsCommand::decode(&hostile), None);
    }

    /// The byte count the bound uses is what the snapshot encodes.
    fn assert_counted(state: &OffsetsState) {
        assert_eq!(state.bytes() + 12, state.encode().len() as u64);
        assert_eq!(OffsetsState::decode(&state.encode()).bytes(), state.bytes());
    }

    #[test]
    fn the_byte_count_follows_every_change() {
        let mut state = OffsetsState::default();
        assert_counted(&state);
        let steps = [
            commit("g", "orders", 0, 5),
            commit("g", "orders", 1, 6),
            // A replacement in place, with longer metadata.
            OffsetsCommand::Commit {
                group: "g".into(),
                offsets: vec![("orders".into(), 0, offset(9, "a longer metadata string"))],
            },
            OffsetsCommand::StoreGroup {
                group: "g".into(),
                record: stored_group(),
            },
            OffsetsCommand::StoreGroup {
                group: "g".into(),
                record: StoredGroup::default(),
            },
            commit("h", "audit", 3, 1),
            OffsetsCommand::DeleteOffsets {
                group: "g".into(),
                partitions: vec![("orders".into(), 1)],
            },
            OffsetsCommand::DeleteOffsets {
                group: "h".into(),
                partitions: vec![("audit".into(), 3)],
            },
            OffsetsCommand::DeleteGroup { group: "g".into() },
        ];
        for step in steps {
            assert_eq!(state.apply(step.clone()), OffsetsOutcome::Done, "{step:?}");
            assert_counted(&state);
        }
        assert_eq!(state.bytes(), 0);
    }

    #[test]
    fn a_partition_at_its_byte_bound_refuses_growth_but_not_replacement() {
        let mut state = OffsetsState::default();
        let metadata = "m".repeat(OFFSET_METADATA_BYTES_MAX);
        let mut partition = 0;
        let refusal = loop {
            let outcome = state.apply(OffsetsCommand::Commit {
                group: format!("g{}", partition / 50_000),
                offsets: (0..50)
                    .map(|i| ("t".to_string(), partition + i, offset(1, &metadata)))
                    .collect(),
            });
            partition += 50;
            if outcome != OffsetsOutcome::Done {
                break outcome;
            }
            assert!(partition < 1_000_000, "the bound never refused");
        };
        assert!(matches!(
            refusal,
            OffsetsOutcome::Refused {
                error_code: error_code::POLICY_VIOLATION,
                ..
            }
        ));
        assert!(state.bytes() <= OFFSETS_PARTITION_BYTES_MAX);
        assert_counted(&state);
        // Moving an existing offset on takes no more room: still accepted.
        assert_eq!(
            state.apply(OffsetsCommand::Commit {
                group: "g0".into(),
                offsets: vec![("t".into(), 0, offset(2, &metadata))],
            }),
            OffsetsOutcome::Done
        );
        assert_eq!(state.committed("g0", "t", 0).map(|o| o.offset), Some(2));
    }
}
