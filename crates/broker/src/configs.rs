//! Topic configurations: which keys a topic may set, their defaults, and
//! what they mean for a partition.

use std::collections::BTreeMap;

use runnel_core::partition::Retention;

use crate::TopicDefaults;

/// The topic configuration keys Runnel understands. Anything else is refused
/// with INVALID_CONFIG rather than silently ignored.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "compression.type",
    "max.message.bytes",
    "message.timestamp.type",
    "min.insync.replicas",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Checks one `key=value` of a CreateTopics request.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    let number = |value: &str| -> Result<i64, String> {
        value
            .parse::<i64>()
            .map_err(|_| format!("{key} must be an integer, not \"{value}\""))
    };
    match key {
        "cleanup.policy" if value == "delete" => Ok(()),
        "cleanup.policy" => Err(format!(
            "cleanup.policy \"{value}\" is not supported (only \"delete\")"
        )),
        "compression.type" => match value {
            "producer" | "uncompressed" | "gzip" | "snappy" | "lz4" | "zstd" => Ok(()),
            _ => Err(format!("compression.type \"{value}\" is not known")),
        },
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!(
                "message.timestamp.type must be CreateTime or LogAppendTime, not \"{value}\""
            )),
        },
        "retention.ms" | "retention.bytes" => {
            let parsed = number(value)?;
            if parsed < -1 {
                return Err(format!("{key} must be -1 or more"));
            }
            Ok(())
        }
        "max.message.bytes" | "min.insync.replicas" | "segment.bytes" | "segment.ms" => {
            if number(value)? <= 0 {
                return Err(format!("{key} must be positive"));
            }
            Ok(())
        }
        _ => Err(format!("unknown topic configuration \"{key}\"")),
    }
}

/// Every configuration of a topic, with whether the topic set it: its
/// overrides over the broker's defaults.
pub fn effective(
    overrides: &BTreeMap<String, String>,
    defaults: &TopicDefaults,
) -> Vec<(String, String, bool)> {
    let default_values: [(&str, String); 9] = [
        ("cleanup.policy", "delete".into()),
        ("compression.type", "producer".into()),
        (
            "max.message.bytes",
            (runnel_kafka::batch::BATCH_BYTES_MAX - runnel_kafka::batch::LOG_OVERHEAD_BYTES)
                .to_string(),
        ),
        ("message.timestamp.type", "CreateTime".into()),
        ("min.insync.replicas", "1".into()),
        ("retention.bytes", defaults.retention_bytes.to_string()),
        ("retention.ms", defaults.retention_ms.to_string()),
        ("segment.bytes", defaults.segment_bytes.to_string()),
        ("segment.ms", (7 * 24 * 3600 * 1000i64).to_string()),
    ];
    default_values
        .into_iter()
        .map(|(key, default)| match overrides.get(key) {
            Some(value) => (key.to_string(), value.clone(), true),
            None => (key.to_string(), default, false),
        })
        .collect()
}

pub fn retention(overrides: &BTreeMap<String, String>, defaults: &TopicDefaults) -> Retention {
    let read = |key: &str, default: i64| {
        overrides
            .get(key)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    // Any negative size is Kafka's -1: no limit by size.
    let retention_bytes = read("retention.bytes", defaults.retention_bytes).max(-1);
    Retention {
        retention_ms: read("retention.ms", defaults.retention_ms),
        retention_bytes,
    }
}

pub fn log_append_time(overrides: &BTreeMap<String, String>) -> bool {
    overrides
        .get("message.timestamp.type")
        .is_some_and(|value| value == "LogAppendTime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_checked_and_unknown_ones_refused() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("cleanup.policy", "compact").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("no.such.key", "1").is_err());
        for key in TOPIC_CONFIG_KEYS {
            let listed = effective(&BTreeMap::new(), &TopicDefaults::default());
            assert!(listed.iter().any(|(name, _, _)| name == key), "{key}");
        }
    }

    #[test]
    fn retention_bytes_is_what_the_topic_asks() {
        let defaults = TopicDefaults::default();
        for (asked, kept) in [("-1", -1), ("1099511627776", 1 << 40), ("4096", 4096)] {
            let overrides = BTreeMap::from([("retention.bytes".to_string(), asked.to_string())]);
            assert_eq!(
                retention(&overrides, &defaults).retention_bytes,
                kept,
                "{asked}"
            );
        }
    }

    #[test]
    fn overrides_win_over_defaults() {
        let overrides = BTreeMap::from([("retention.ms".to_string(), "5".to_string())]);
        let defaults = TopicDefaults::default();
        assert_eq!(retention(&overrides, &defaults).retention_ms, 5);
        // The default is -1, unlimited.
        assert_eq!(defaults.retention_bytes, -1);
        assert_eq!(retention(&overrides, &defaults).retention_bytes, -1);
        let listed = effective(&overrides, &defaults);
        assert!(listed.contains(&("retention.ms".to_string(), "5".to_string(), true)));
    }
}
