//! Consumer groups: the classic group protocol's coordinator
//! ([`coordinator`]), one per partition of the internal offsets topic this
//! node leads. The Kafka requests are wired to it in `broker/groups.rs`;
//! offsets and group records are stored by the partition's consensus group
//! (`runnel_core::offsets`).

pub mod coordinator;

/// The topics a member of a "consumer" protocol group subscribes to, read
/// from its ConsumerProtocolSubscription metadata (version, then an array of
/// topic names); `None` if the metadata does not parse.
pub fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut cursor = metadata;
    let mut take = |length: usize| -> Option<&[u8]> {
        if cursor.len() < length {
            return None;
        }
        let (head, rest) = cursor.split_at(length);
        cursor = rest;
        Some(head)
    };
    let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let count = usize::try_from(count).ok()?;
    if count > metadata.len() / 2 {
        return None;
    }
    let mut topics = Vec::with_capacity(count);
    for _ in 0..count {
        let length = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let length = usize::try_from(length).ok()?;
        topics.push(String::from_utf8(take(length)?.to_vec()).ok()?);
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_parse() {
        let mut metadata = vec![0, 1, 0, 0, 0, 2];
        for topic in ["orders", "t"] {
            metadata.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            metadata.extend_from_slice(topic.as_bytes());
        }
        metadata.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            subscribed_topics(&metadata),
            Some(vec!["orders".to_string(), "t".to_string()])
        );
        assert_eq!(subscribed_topics(&metadata[..7]), None);
        assert_eq!(subscribed_topics(&[0, 1, 0x7f, 0xff, 0xff, 0xff]), None);
    }
}
