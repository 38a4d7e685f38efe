//! `runnel serve` configuration: flags, a TOML file, and defaults, in that
//! order of precedence. Every flag can also be set in the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use runnel_broker::{BrokerAddress, BrokerConfig, TopicDefaults};
use serde::Deserialize;

/// Flags of `runnel serve`.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeFlags {
    /// A TOML file with any of the settings below (flags win over it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id in the cluster (default 1).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Where the node keeps its data (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where Kafka clients connect (default 127.0.0.1:9092).
    #[arg(long)]
    pub kafka_addr: Option<SocketAddr>,
    /// The host:port clients are told to use (default: --kafka-addr).
    #[arg(long)]
    pub advertise_kafka_addr: Option<String>,
    /// Where peer nodes connect (default 127.0.0.1:19092).
    #[arg(long)]
    pub rpc_addr: Option<SocketAddr>,
    /// The other nodes, as id@rpc_host:rpc_port=kafka_host:kafka_port, comma
    /// separated. Empty for a single node.
    #[arg(long)]
    pub peers: Option<String>,
    /// Each node's rack, as id=rack, comma separated (e.g.
    /// 1=eu-1a,2=eu-1b,3=eu-1c), for every node or none: a partition's
    /// replicas spread over racks. The same on every node.
    #[arg(long)]
    pub racks: Option<String>,
    /// Join a running cluster: --peers lists nodes it was started with; an
    /// operator then adds this node (`runnel cluster add-node`).
    #[arg(long)]
    pub join: bool,
    /// error, warn, info, debug or trace (default info; RUST_LOG also works).
    #[arg(long)]
    pub log_level: Option<String>,
    /// The cluster id reported to clients (default runnel-cluster).
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Partitions of the internal offsets topic that holds consumer groups'
    /// offsets, created when the cluster first starts (default 8; the same
    /// on every node).
    #[arg(long)]
    pub offsets_topic_partitions: Option<u32>,
    /// Where an HTTP `GET /metrics` answers with the node's metrics in the
    /// Prometheus text format, e.g. 127.0.0.1:9644 (default: not served).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Milliseconds after which a log segment is rolled at its next append,
    /// so that what retention dropped leaves the disk with whole segments
    /// (Kafka's log.roll.ms; default 604800000, 7 days; 0 never rolls by
    /// age; otherwise 1000 to 31536000000).
    #[arg(long)]
    pub segment_ms: Option<u64>,
}

/// The file's format: the same settings as the flags, plus topic defaults.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    kafka_addr: Option<SocketAddr>,
    advertise_kafka_addr: Option<String>,
    rpc_addr: Option<SocketAddr>,
    peers: Option<String>,
    racks: Option<String>,
    join: Option<bool>,
    log_level: Option<String>,
    cluster_id: Option<String>,
    offsets_topic_partitions: Option<u32>,
    metrics_addr: Option<SocketAddr>,
    segment_ms: Option<u64>,
    #[serde(default)]
    topic_defaults: FileTopicDefaults,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileTopicDefaults {
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    retention_ms: Option<i64>,
    retention_bytes: Option<i64>,
    segment_bytes: Option<i64>,
    auto_create: Option<bool>,
}

/// A peer node: its id, where its peers reach it, where clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: u64,
    pub rpc_addr: String,
    pub kafka_host: String,
    pub kafka_port: u16,
}

/// Everything `runnel serve` needs, resolved.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub kafka_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub peers: Vec<Peer>,
    pub log_level: String,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    pub broker: BrokerConfig,
}

impl ServeConfig {
    /// Merges flags over the file over the defaults. Errors are one line,
    /// for the operator.
    pub fn resolve(flags: &ServeFlags) -> Result<ServeConfig, String> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    format!("cannot read config file {}: {error}", path.display())
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|error| {
                    format!(
                        "config file {}: {}",
                        path.display(),
                        error.message().replace('\n', " ")
                    )
                })?
            }
            None => FileConfig::default(),
        };
        let node_id = flags.node_id.or(file.node_id).unwrap_or(1);
        // The broker packs node ids into producer ids, so they are bounded
        // well below what Kafka's i32 broker ids allow.
        if node_id == 0 || node_id > runnel_broker::NODE_ID_MAX {
            return Err(format!(
                "node id {node_id} must be between 1 and {}",
                runnel_broker::NODE_ID_MAX
            ));
        }
        let data_dir = flags
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let kafka_addr = flags
            .kafka_addr
            .or(file.kafka_addr)
            .unwrap_or_else(|| "127.0.0.1:9092".parse().expect("valid"));
        let rpc_addr = flags
            .rpc_addr
            .or(file.rpc_addr)
            .unwrap_or_else(|| "127.0.0.1:19092".parse().expect("valid"));
        let advertised = flags
            .advertise_kafka_addr
            .clone()
            .or(file.advertise_kafka_addr)
            .unwrap_or_else(|| kafka_addr.to_string());
        let (advertised_host, advertised_port) = split_host_port(&advertised)
            .ok_or_else(|| format!("--advertise-kafka-addr \"{advertised}\" is not host:port"))?;
        let peers = parse_peers(
            flags
                .peers
                .as_deref()
                .or(file.peers.as_deref())
                .unwrap_or(""),
        )?;
        if peers.iter().any(|peer| peer.node_id == node_id) {
            return Err(format!(
                "--peers lists this node ({node_id}); list only the others"
            ));
        }
        let log_level = flags
            .log_level
            .clone()
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(format!(
                "log level \"{log_level}\" is not one of error, warn, info, debug, trace"
            ));
        }
        let mut topic_defaults = TopicDefaults::default();
        let file_defaults = file.topic_defaults;
        if let Some(partitions) = file_defaults.partitions {
            if partitions <= 0 {
                return Err("topic_defaults.partitions must be positive".into());
            }
            topic_defaults.partitions = partitions;
        }
        if let Some(factor) = file_defaults.replication_factor {
            if factor <= 0 || factor as usize > peers.len() + 1 {
                return Err(format!(
                    "topic_defaults.replication_factor {factor} must be between 1 and the {} node(s)",
                    peers.len() + 1
                ));
            }
            topic_defaults.replication_factor = factor;
        }
        // The broker's own rules for these topic configurations, so that a
        // default cannot be what CreateTopics would refuse.
        let checked = |key: &str, value: Option<i64>| -> Result<Option<i64>, String> {
            if let Some(value) = value {
                runnel_broker::configs::validate(key, &value.to_string())
                    .map_err(|error| format!("topic_defaults: {error}"))?;
            }
            Ok(value)
        };
        if let Some(value) = checked("retention.ms", file_defaults.retention_ms)? {
            topic_defaults.retention_ms = value;
        }
        if let Some(value) = checked("retention.bytes", file_defaults.retention_bytes)? {
            topic_defaults.retention_bytes = value;
        }
        if let Some(value) = checked("segment.bytes", file_defaults.segment_bytes)? {
            topic_defaults.segment_bytes = value;
        }
        if let Some(value) = file_defaults.auto_create {
            topic_defaults.auto_create = value;
        }
        let nodes: Vec<u64> = std::iter::once(node_id)
            .chain(peers.iter().map(|peer| peer.node_id))
            .collect();
        let racks = parse_racks(
            flags
                .racks
                .as_deref()
                .or(file.racks.as_deref())
                .unwrap_or(""),
            &nodes,
        )?;
        let mut cluster = vec![BrokerAddress {
            node_id,
            host: advertised_host,
            port: advertised_port,
            rack: racks.get(&node_id).cloned(),
        }];
        cluster.extend(peers.iter().map(|peer| BrokerAddress {
            node_id: peer.node_id,
            host: peer.kafka_host.clone(),
            port: peer.kafka_port,
            rack: racks.get(&peer.node_id).cloned(),
        }));
        cluster.sort_by_key(|node| node.node_id);
        let mut broker = BrokerConfig::single_node("127.0.0.1", 9092);
        broker.node_id = node_id;
        broker.cluster = cluster;
        broker.cluster_id = flags
            .cluster_id
            .clone()
            .or(file.cluster_id)
            .unwrap_or_else(|| "runnel-cluster".into());
        broker.rng_seed = node_id;
        broker.join = flags.join || file.join.unwrap_or(false);
        if broker.join && peers.is_empty() {
            return Err("--join needs --peers: the nodes of the cluster to join".into());
        }
        broker.topic_defaults = topic_defaults;
        let offsets_topic_partitions = flags
            .offsets_topic_partitions
            .or(file.offsets_topic_partitions)
            .unwrap_or(runnel_broker::DEFAULT_OFFSETS_TOPIC_PARTITIONS);
        if !(1..=runnel_core::offsets::OFFSETS_PARTITIONS_MAX).contains(&offsets_topic_partitions) {
            return Err(format!(
                "offsets_topic_partitions must be 1 to {}",
                runnel_core::offsets::OFFSETS_PARTITIONS_MAX
            ));
        }
        broker.offsets_topic_partitions = offsets_topic_partitions;
        if peers.is_empty() {
            // A group of one needs no election timeout to be safe: nobody
            // else can lead. A short one makes a restarted node serve soon.
            broker.election_timeout_ms = 150;
            broker.heartbeat_interval_ms = 50;
        }
        let metrics_addr = flags.metrics_addr.or(file.metrics_addr);
        if metrics_addr.is_some_and(|address| address == kafka_addr || address == rpc_addr) {
            return Err(format!(
                "--metrics-addr {} is also the Kafka or the peer address",
                metrics_addr.expect("checked")
            ));
        }
        let segment_ms = flags
            .segment_ms
            .or(file.segment_ms)
            .unwrap_or(runnel_core::SEGMENT_MS_DEFAULT);
        if !runnel_core::segment_ms_valid(segment_ms) {
            return Err(format!(
                "segment_ms {segment_ms} must be 0 (never roll by age) or {} to {}",
                runnel_core::SEGMENT_MS_MIN,
                runnel_core::SEGMENT_MS_MAX
            ));
        }
        broker.segment_ms = segment_ms;
        Ok(ServeConfig {
            data_dir,
            kafka_addr,
            rpc_addr,
            peers,
            log_level,
            metrics_addr,
            broker,
        })
    }
}

fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port.parse().ok()?,
    ))
}

/// Parses `id@rpc_host:rpc_port=kafka_host:kafka_port,...`.
pub fn parse_peers(text: &str) -> Result<Vec<Peer>, String> {
    let mut peers = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let bad = || format!("peer \"{item}\" is not id@rpc_host:rpc_port=kafka_host:kafka_port");
        let (id, rest) = item.split_once('@').ok_or_else(bad)?;
        let node_id: u64 = id.parse().map_err(|_| bad())?;
        let (rpc, kafka) = rest.split_once('=').ok_or_else(bad)?;
        split_host_port(rpc).ok_or_else(bad)?;
        let (kafka_host, kafka_port) = split_host_port(kafka).ok_or_else(bad)?;
        if node_id == 0
            || node_id > runnel_broker::NODE_ID_MAX
            || peers.iter().any(|peer: &Peer| peer.node_id == node_id)
        {
            return Err(format!(
                "peer id {node_id} is not between 1 and {}, or is listed twice",
                runnel_broker::NODE_ID_MAX
            ));
        }
        peers.push(Peer {
            node_id,
            rpc_addr: rpc.to_string(),
            kafka_host,
            kafka_port,
        });
    }
    Ok(peers)
}

/// The longest rack name.
pub const RACK_BYTES_MAX: usize = 64;

/// Parses `id=rack,...` for the cluster's `nodes`: every node or none, each
/// once, names of 1 to `RACK_BYTES_MAX` printable ASCII characters.
pub fn parse_racks(
    text: &str,
    nodes: &[u64],
) -> Result<std::collections::BTreeMap<u64, String>, String> {
    let mut racks = std::collections::BTreeMap::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let bad = || format!("rack \"{item}\" is not node_id=rack");
        let (id, rack) = item.split_once('=').ok_or_else(bad)?;
        let node_id: u64 = id.trim().parse().map_err(|_| bad())?;
        let rack = rack.trim();
        if rack.is_empty()
            || rack.len() > RACK_BYTES_MAX
            || !rack.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "rack \"{rack}\" must be 1 to {RACK_BYTES_MAX} printable ASCII characters"
            ));
        }
        if !nodes.contains(&node_id) {
            return Err(format!(
                "--racks names node {node_id}, which is not in the cluster (this node and --peers)"
            ));
        }
        if racks.insert(node_id, rack.to_string()).is_some() {
            return Err(format!("--racks names node {node_id} twice"));
        }
    }
    if !racks.is_empty() && racks.len() != nodes.len() {
        let missing: Vec<String> = nodes
            .iter()
            .filter(|node| !racks.contains_key(node))
            .map(u64::to_string)
            .collect();
        return Err(format!(
            "--racks must name every node or none; missing: {}",
            missing.join(", ")
        ));
    }
    Ok(racks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn racks_name_every_node_or_none() {
        let racks = parse_racks("1=a, 2=b,3=a", &[1, 2, 3]).expect("parses");
        assert_eq!(racks[&3], "a");
        assert!(parse_racks("", &[1, 2, 3]).expect("none").is_empty());
        for (text, wanted) in [
            ("1=a,2=b", "missing: 3"),
            ("1=a,2=b,3=c,4=d", "not in the cluster"),
            ("1=a,1=b,2=b,3=c", "twice"),
            ("1=,2=b,3=c", "printable"),
            ("x=a", "is not node_id=rack"),
        ] {
            let error = parse_racks(text, &[1, 2, 3]).expect_err(text);
            assert!(error.contains(wanted), "{text}: {error}");
        }
    }

    #[test]
    fn defaults_run_one_node_on_localhost() {
        let config = ServeConfig::resolve(&ServeFlags::default()).expect("defaults");
        assert_eq!(config.kafka_addr.to_string(), "127.0.0.1:9092");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.broker.node_id, 1);
        assert_eq!(config.broker.cluster.len(), 1);
        assert_eq!(config.broker.cluster[0].port, 9092);
        assert_eq!(config.broker.segment_ms, 7 * 24 * 3600 * 1000);
    }

    #[test]
    fn segment_ms_comes_from_the_flag_or_the_file_and_is_checked() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "segment_ms = 3600000").expect("write");
        let from_file = ServeFlags {
            config: Some(file.path().to_path_buf()),
            ..ServeFlags::default()
        };
        assert_eq!(
            ServeConfig::resolve(&from_file)
                .expect("resolves")
                .broker
                .segment_ms,
            3_600_000
        );
        let flag = ServeFlags {
            segment_ms: Some(0),
            ..from_file.clone()
        };
        assert_eq!(
            ServeConfig::resolve(&flag)
                .expect("resolves")
                .broker
                .segment_ms,
            0
        );
        for bad in [1, 999, runnel_core::SEGMENT_MS_MAX + 1] {
            let flags = ServeFlags {
                segment_ms: Some(bad),
                ..ServeFlags::default()
            };
            let error = ServeConfig::resolve(&flags).expect_err("out of bounds");
            assert!(error.contains("segment_ms"), "{error}");
            assert!(!error.contains('\n'));
        }
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "segment_ms = -5").expect("write");
        let negative = ServeFlags {
            config: Some(file.path().to_path_buf()),
            ..ServeFlags::default()
        };
        let error = ServeConfig::resolve(&negative).expect_err("negative");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(
            file,
            "node_id = 3\nkafka_addr = \"127.0.0.1:9000\"\nlog_level = \"debug\"\n[topic_defaults]\npartitions = 4\nretention_ms = 60000"
        )
        .expect("write");
        let flags = ServeFlags {
            config: Some(file.path().to_path_buf()),
            kafka_addr: Some("127.0.0.1:9100".parse().unwrap()),
            ..ServeFlags::default()
        };
        let config = ServeConfig::resolve(&flags).expect("resolves");
        assert_eq!(config.broker.node_id, 3);
        assert_eq!(config.kafka_addr.port(), 9100);
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.broker.topic_defaults.partitions, 4);
        assert_eq!(config.broker.topic_defaults.retention_ms, 60_000);
    }

    #[test]
    fn mistakes_get_one_clear_line() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "nod_id = 3").expect("write");
        let flags = ServeFlags {
            config: Some(file.path().to_path_buf()),
            ..ServeFlags::default()
        };
        let error = ServeConfig::resolve(&flags).unwrap_err();
        assert!(error.contains("nod_id"), "{error}");
        assert!(!error.contains('\n'));
        let flags = ServeFlags {
            peers: Some("2@host".into()),
            ..ServeFlags::default()
        };
        assert!(ServeConfig::resolve(&flags).unwrap_err().contains("2@host"));
        let flags = ServeFlags {
            log_level: Some("loud".into()),
            ..ServeFlags::default()
        };
        assert!(ServeConfig::resolve(&flags).is_err());
    }

    #[test]
    fn peers_parse() {
        let peers =
            parse_peers("2@10.0.0.2:19092=10.0.0.2:9092, 3@h3:19092=h3:9092").expect("parses");
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1].kafka_host, "h3");
        assert!(parse_peers("2@a:1=b:2,2@a:1=b:2").is_err());
    }
}
