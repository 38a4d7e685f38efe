//! `runnel serve` configuration: defaults, the TOML file, flags over the
//! file, and the one-line errors an operator sees.

use std::io::Write;
use std::path::PathBuf;

use runnel_server::config::{parse_peers, ServeConfig, ServeFlags};

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

fn with_file(file: &tempfile::NamedTempFile) -> ServeFlags {
    ServeFlags {
        config: Some(file.path().to_path_buf()),
        ..ServeFlags::default()
    }
}

fn error_of(flags: &ServeFlags) -> String {
    let error = ServeConfig::resolve(flags).expect_err("configuration must be refused");
    assert!(!error.contains('\n'), "error is one line: {error:?}");
    error
}

#[test]
fn defaults_are_one_node_on_localhost() {
    let config = ServeConfig::resolve(&ServeFlags::default()).expect("defaults resolve");
    assert_eq!(config.broker.node_id, 1);
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.kafka_addr.to_string(), "127.0.0.1:9092");
    assert_eq!(config.rpc_addr.to_string(), "127.0.0.1:19092");
    assert_eq!(config.log_level, "info");
    assert!(config.peers.is_empty());
    assert_eq!(
        config.metrics_addr, None,
        "metrics are served only when asked"
    );
    assert_eq!(config.broker.cluster_id, "runnel-cluster");
    // The advertised address defaults to the listener's.
    assert_eq!(config.broker.cluster.len(), 1);
    assert_eq!(config.broker.cluster[0].host, "127.0.0.1");
    assert_eq!(config.broker.cluster[0].port, 9092);
    assert_eq!(
        config.broker.topic_defaults,
        runnel_broker::TopicDefaults::default()
    );
}

#[test]
fn every_setting_can_come_from_the_file() {
    let file = file_with(
        r#"
node_id = 2
data_dir = "/var/lib/runnel"
kafka_addr = "0.0.0.0:9192"
advertise_kafka_addr = "broker2.example:9192"
rpc_addr = "0.0.0.0:19192"
peers = "1@h1:19092=h1:9092, 3@h3:19092=h3:9092"
log_level = "debug"
cluster_id = "prod"
metrics_addr = "0.0.0.0:9644"

[topic_defaults]
partitions = 6
replication_factor = 3
retention_ms = 3600000
retention_bytes = 1048576
segment_bytes = 65536
auto_create = false
"#,
    );
    let config = ServeConfig::resolve(&with_file(&file)).expect("file resolves");
    assert_eq!(config.broker.node_id, 2);
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/runnel"));
    assert_eq!(config.kafka_addr.to_string(), "0.0.0.0:9192");
    assert_eq!(config.rpc_addr.to_string(), "0.0.0.0:19192");
    assert_eq!(config.log_level, "debug");
    assert_eq!(config.broker.cluster_id, "prod");
    assert_eq!(
        config.metrics_addr.map(|a| a.to_string()).as_deref(),
        Some("0.0.0.0:9644")
    );
    assert_eq!(config.peers.len(), 2);
    let nodes: Vec<(u64, &str, u16)> = config
        .broker
        .cluster
        .iter()
        .map(|node| (node.node_id, node.host.as_str(), node.port))
        .collect();
    assert_eq!(
        nodes,
        [
            (1, "h1", 9092),
            (2, "broker2.example", 9192),
            (3, "h3", 9092)
        ]
    );
    let defaults = &config.broker.topic_defaults;
    assert_eq!(defaults.partitions, 6);
    assert_eq!(defaults.replication_factor, 3);
    assert_eq!(defaults.retention_ms, 3_600_000);
    assert_eq!(defaults.retention_bytes, 1_048_576);
    assert_eq!(defaults.segment_bytes, 65_536);
    assert!(!defaults.auto_create);
}

#[test]
fn flags_override_the_file() {
    let file = file_with(
        "node_id = 3\nkafka_addr = \"127.0.0.1:9000\"\nrpc_addr = \"127.0.0.1:19000\"\n\
         data_dir = \"from-file\"\nlog_level = \"debug\"\ncluster_id = \"file\"\n",
    );
    let flags = ServeFlags {
        node_id: Some(4),
        kafka_addr: Some("127.0.0.1:9100".parse().unwrap()),
        data_dir: Some(PathBuf::from("from-flag")),
        cluster_id: Some("flag".into()),
        ..with_file(&file)
    };
    let config = ServeConfig::resolve(&flags).expect("resolves");
    assert_eq!(config.broker.node_id, 4);
    assert_eq!(config.kafka_addr.port(), 9100);
    assert_eq!(config.data_dir, PathBuf::from("from-flag"));
    assert_eq!(config.broker.cluster_id, "flag");
    // What the flags leave alone still comes from the file.
    assert_eq!(config.rpc_addr.port(), 19000);
    assert_eq!(config.log_level, "debug");
    // The advertised address follows the listener the flags chose.
    assert_eq!(config.broker.cluster[0].port, 9100);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let error = error_of(&with_file(&file_with("node_idd = 3\n")));
    assert!(error.contains("node_idd"), "{error}");
    let error = error_of(&with_file(&file_with("[topic_defaults]\npartition = 3\n")));
    assert!(error.contains("partition"), "{error}");
    let error = error_of(&with_file(&file_with("[cluster]\nnodes = 3\n")));
    assert!(error.contains("cluster"), "{error}");
}

#[test]
fn bad_values_are_refused() {
    let cases = [
        "node_id = \"one\"\n",
        "kafka_addr = \"nowhere\"\n",
        "node_id = 0\n",
        "node_id = 100000\n",
        "log_level = \"loud\"\n",
        "advertise_kafka_addr = \"no-port\"\n",
        "[topic_defaults]\npartitions = 0\n",
        "[topic_defaults]\nretention_ms = -2\n",
        "[topic_defaults]\nretention_bytes = -5\n",
        "[topic_defaults]\nsegment_bytes = 0\n",
        // One node cannot hold three replicas.
        "[topic_defaults]\nreplication_factor = 3\n",
        "peers = \"2@h2:19092\"\n",
        "node_id = 2\npeers = \"2@h2:19092=h2:9092\"\n",
        "metrics_addr = \"127.0.0.1:9092\"\n",
        "metrics_addr = \"somewhere\"\n",
        "this is not toml",
    ];
    for case in cases {
        let error = error_of(&with_file(&file_with(case)));
        assert!(!error.is_empty(), "{case:?}");
    }
}

#[test]
fn a_missing_file_names_the_path() {
    let flags = ServeFlags {
        config: Some(PathBuf::from("/nonexistent/runnel.toml")),
        ..ServeFlags::default()
    };
    assert!(error_of(&flags).contains("/nonexistent/runnel.toml"));
}

#[test]
fn peers_are_id_at_rpc_address_equals_kafka_address() {
    let peers =
        parse_peers("2@10.0.0.2:19092=kafka2:9092,3@[::1]:19093=[::1]:9093").expect("peers parse");
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].node_id, 2);
    assert_eq!(peers[0].rpc_addr, "10.0.0.2:19092");
    assert_eq!(peers[0].kafka_host, "kafka2");
    assert_eq!(peers[0].kafka_port, 9092);
    assert_eq!(peers[1].kafka_host, "::1");
    assert!(parse_peers("").expect("empty").is_empty());
    for bad in [
        "2@h:1",
        "x@h:1=h:2",
        "2@h:1=h",
        "0@h:1=h:2",
        "2@h:1=h:2,2@h:3=h:4",
    ] {
        let error = parse_peers(bad).expect_err(bad);
        assert!(!error.contains('\n'));
    }
}

#[test]
fn the_readme_example_is_a_valid_config() {
    // The README shows operators a config file; it must keep working.
    let readme = include_str!("../../../README.md");
    let start = readme.find("```toml\n").expect("README has a toml block") + "```toml\n".len();
    let length = readme[start..].find("```").expect("the toml block ends");
    let file = file_with(&readme[start..start + length]);
    ServeConfig::resolve(&with_file(&file)).expect("README example resolves");
}
