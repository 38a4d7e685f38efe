//! The ApiVersions table Runnel advertises.
//!
//! The ranges follow a Kafka 3.x broker (clients such as kafka-python infer
//! the broker's release from this table), within what the `kafka-protocol`
//! crate decodes. Only APIs the broker implements are listed: a client must
//! never pick an API we would not answer.

use kafka_protocol::messages::ApiKey;

/// (API, lowest version, highest version).
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
    fn lookups() {
        assert_eq!(supported_range(18), Some((0, 3)));
        assert_eq!(supported_range(10_000), None);
    }
}
