//! The ApiVersions table Runnel advertises.
//!
//! The ranges follow a Kafka 3.x broker (clients such as kafka-python infer
//! the broker's release from this table), within what the `kafka-protocol`
//! crate decodes. Only APIs the broker implements are listed: a client must
//! never pick an API we would not answer.

use kafka_protocol::messages::ApiKey;

/// (API, lowest version, highest version).
///
/// Produce starts at v3 and Fetch at v4 because older versions carry the
/// v0 and v1 message formats, which Runnel neither stores nor converts: every
/// batch it holds is RecordBatch v2. Fetch v13 is needed for topic IDs.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 13),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
    // The consumer group APIs (issue 6). OffsetCommit starts at v2 and
    // OffsetFetch at v1, not v0 as in Kafka 3.x, because `kafka-protocol`
    // cannot decode the older versions; clients that support group
    // consumption at all speak these.
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
];

/// The supported range of `api_key`, if Runnel implements it.
pub fn supported_range(api_key: i16) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key as i16 == api_key)
        .map(|(_, min, max)| (*min, *max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_is_within_what_the_codec_handles() {
        for (key, min, max) in SUPPORTED {
            let valid = key.valid_versions();
            assert!(min <= max, "{key:?}");
            assert!(
                *min >= valid.min && *max <= valid.max,
                "{key:?} {min}..={max} is outside kafka-protocol's {valid}"
            );
        }
    }

    #[test]
    fn each_api_is_listed_once() {
        let mut keys: Vec<i16> = SUPPORTED.iter().map(|(key, _, _)| *key as i16).collect();
        let count = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), count, "an API is listed twice");
    }

    #[test]
    fn group_apis_are_advertised() {
        for key in [
            ApiKey::FindCoordinator,
            ApiKey::JoinGroup,
            ApiKey::SyncGroup,
            ApiKey::Heartbeat,
            ApiKey::LeaveGroup,
            ApiKey::OffsetCommit,
            ApiKey::OffsetFetch,
            ApiKey::DescribeGroups,
            ApiKey::ListGroups,
            ApiKey::DeleteGroups,
            ApiKey::OffsetDelete,
        ] {
            assert!(supported_range(key as i16).is_some(), "{key:?}");
        }
        // kafka-python picks its OffsetCommit and OffsetFetch versions from
        // these floors.
        assert_eq!(supported_range(ApiKey::OffsetCommit as i16), Some((2, 8)));
        assert_eq!(supported_range(ApiKey::OffsetFetch as i16), Some((1, 8)));
    }

    #[test]
    fn lookups() {
        assert_eq!(supported_range(18), Some((0, 3)));
        assert_eq!(supported_range(10_000), None);
    }
}
