//! A small, fault-free cluster of real node cores over an instant in-memory
//! disk and network: the smoke test below the simulator. The simulator
//! (`sim/`) is where faults are thrown at the same code.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use runnel_consensus::Config;
use runnel_core::{
    ClientError, ClientOp, ClientReply, ClientRequest, ClientResponse, Env, Envelope, Event, Node,
    NodeConfig, Replies, Role,
};
use runnel_io::{Clock, Disk, DiskCompletion, DiskError, DiskOp, DiskOutput, Network, NodeId};

/// Applies every operation at once and completes it on the next step. It
/// keeps only the current image: these tests crash nothing.
#[derive(Default)]
struct InstantDisk {
    files: BTreeMap<String, Vec<u8>>,
    completions: VecDeque<DiskCompletion>,
}

impl Disk for InstantDisk {
    fn submit(&mut self, token: u64, op: DiskOp) {
        let result = match op {
            DiskOp::Write { file, offset, data } => {
                let bytes = self.files.entry(file).or_default();
                let end = offset as usize + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[offset as usize..end].copy_from_slice(&data);
                Ok(DiskOutput::Done)
            }
            DiskOp::Truncate { file, len } => {
                self.files.entry(file).or_default().truncate(len as usize);
                Ok(DiskOutput::Done)
            }
            DiskOp::Delete { file } => {
                self.files.remove(&file);
                Ok(DiskOutput::Done)
            }
            DiskOp::Rename { from, to } => match self.files.remove(&from) {
                Some(bytes) => {
                    self.files.insert(to, bytes);
                    Ok(DiskOutput::Done)
                }
                None => Err(DiskError::NotFound),
            },
            DiskOp::Sync { .. } | DiskOp::SyncDir { .. } => Ok(DiskOutput::Done),
            DiskOp::Read { file, offset, len } => match self.files.get(&file) {
                Some(bytes) => {
                    let start = (offset as usize).min(bytes.len());
                    let end = (start + len as usize).min(bytes.len());
                    Ok(DiskOutput::Data(bytes[start..end].to_vec()))
                }
                None => Err(DiskError::NotFound),
            },
        };
        self.completions.push_back(DiskCompletion { token, result });
    }

    fn list(&mut self) -> Result<Vec<String>, DiskError> {
        Ok(self.files.keys().cloned().collect())
    }

    fn read_file(&mut self, file: &str) -> Result<Vec<u8>, DiskError> {
        self.files.get(file).cloned().ok_or(DiskError::NotFound)
    }
}

struct FixedClock(u64);
impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct Outbox(Vec<Envelope>);
impl Network<Envelope> for Outbox {
    fn send(&mut self, _to: NodeId, message: Envelope) {
        self.0.push(message);
    }
}

#[derive(Default)]
struct Inbox(Vec<ClientResponse>);
impl Replies for Inbox {
    fn reply(&mut self, response: ClientResponse) {
        self.0.push(response);
    }
}

struct Cluster {
    nodes: BTreeMap<NodeId, (Node, InstantDisk)>,
    in_flight: VecDeque<Envelope>,
    responses: Vec<ClientResponse>,
    now_ms: u64,
    /// Nodes cut off from the others: envelopes to and from them are lost.
    isolated: BTreeSet<NodeId>,
}

const GROUP: u64 = 7;

impl Cluster {
    fn new(ids: &[NodeId]) -> Cluster {
        Cluster::with_snapshot_interval(ids, 20)
    }

    fn with_snapshot_interval(ids: &[NodeId], snapshot_interval_entries: u64) -> Cluster {
        Cluster::with_layout(
            ids,
            snapshot_interval_entries,
            runnel_core::MachineLayout::Records,
        )
    }

    fn with_layout(
        ids: &[NodeId],
        snapshot_interval_entries: u64,
        machines: runnel_core::MachineLayout,
    ) -> Cluster {
        Cluster::with_segments(ids, snapshot_interval_entries, machines, 4096)
    }

    fn with_segments(
        ids: &[NodeId],
        snapshot_interval_entries: u64,
        machines: runnel_core::MachineLayout,
        segment_bytes_max: u64,
    ) -> Cluster {
        let mut nodes = BTreeMap::new();
        for id in ids {
            let mut disk = InstantDisk::default();
            let config = NodeConfig {
                id: *id,
                groups: vec![(GROUP, Config::new(ids.iter().copied()))],
                rng_seed: *id,
                election_timeout_ms: 300,
                heartbeat_interval_ms: 50,
                snapshot_interval_entries,
                segment_bytes_max,
                machines,
            };
            let node = Node::start(config, &mut disk).expect("start");
            nodes.insert(*id, (node, disk));
        }
        Cluster {
            nodes,
            in_flight: VecDeque::new(),
            responses: Vec::new(),
            now_ms: 0,
            isolated: BTreeSet::new(),
        }
    }

    fn deliver(&mut self, id: NodeId, event: Event) {
        let (node, disk) = self.nodes.get_mut(&id).expect("node");
        let mut outbox = Outbox::default();
        let mut inbox = Inbox::default();
        let clock = FixedClock(self.now_ms);
        let mut env = Env {
            disk,
            network: &mut outbox,
            clock: &clock,
            replies: &mut inbox,
        };
        node.handle(event, &mut env);
        self.in_flight.extend(outbox.0);
        self.responses.extend(inbox.0);
    }

    /// Delivers every message and disk completion until quiet.
    fn settle(&mut self) {
        loop {
            let mut progressed = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                while let Some(completion) =
                    self.nodes.get_mut(&id).unwrap().1.completions.pop_front()
                {
                    self.deliver(id, Event::Disk(completion));
                    progressed = true;
                }
            }
            while let Some(envelope) = self.in_flight.pop_front() {
                if self.isolated.contains(&envelope.to) || self.isolated.contains(&envelope.from) {
                    continue;
                }
                self.deliver(envelope.to, Event::Peer(envelope));
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.now_ms += 10;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.deliver(id, Event::Tick);
            }
            self.settle();
        }
    }

    /// Restarts node `id` of a cluster of nodes 1, 2 and 3 from its disk
    /// (the instant disk keeps everything), with a seed other than its first
    /// start's.
    fn restart(
        &mut self,
        id: NodeId,
        segment_bytes_max: u64,
        machines: runnel_core::MachineLayout,
    ) -> &mut Node {
        let (node, mut disk) = self.nodes.remove(&id).expect("node");
        drop(node);
        disk.completions.clear();
        let config = NodeConfig {
            id,
            groups: vec![(GROUP, Config::new([1, 2, 3]))],
            rng_seed: id + 100,
            election_timeout_ms: 300,
            heartbeat_interval_ms: 50,
            snapshot_interval_entries: 20,
            segment_bytes_max,
            machines,
        };
        let node = Node::start(config, &mut disk).expect("restart");
        self.nodes.insert(id, (node, disk));
        &mut self.nodes.get_mut(&id).expect("just inserted").0
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, (node, _))| {
                node.view(GROUP)
                    .is_some_and(|view| view.role == Role::Leader)
            })
            .map(|(id, _)| *id)
    }
}

#[test]
fn three_nodes_elect_a_leader_and_commit_appends_in_order() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.advance(2_000);
    let leader = cluster.leader().expect("a leader within two seconds");

    for seq in 1..=50u64 {
        cluster.deliver(
            leader,
            Event::Client(ClientRequest {
                client: 9,
                request_id: seq,
                group: GROUP,
                op: ClientOp::Append {
                    seq,
                    value: seq.to_le_bytes().to_vec(),
                },
            }),
        );
    }
    cluster.settle();
    cluster.advance(200);

    let positions: Vec<u64> = cluster
        .responses
        .iter()
        .filter_map(|response| match response.result {
            Ok(ClientReply::Appended { position }) => Some(position),
            _ => None,
        })
        .collect();
    assert_eq!(positions, (0..50).collect::<Vec<_>>());
    for (node, _) in cluster.nodes.values() {
        let records = node.records(GROUP).expect("group");
        assert_eq!(records.len(), 50, "node {} applied every record", node.id());
        assert!(records
            .iter()
            .enumerate()
            .all(|(position, record)| record.seq == position as u64 + 1));
        // 50 appends with a snapshot every 20 entries: the log was compacted.
        assert!(node.view(GROUP).unwrap().snapshot_index >= 20);
    }

    // A retry of an applied append is answered with its original position.
    cluster.responses.clear();
    cluster.deliver(
        leader,
        Event::Client(ClientRequest {
            client: 9,
            request_id: 99,
            group: GROUP,
            op: ClientOp::Append {
                seq: 50,
                value: 50u64.to_le_bytes().to_vec(),
            },
        }),
    );
    assert_eq!(
        cluster.responses[0].result,
        Ok(ClientReply::Appended { position: 49 })
    );
}

#[test]
fn followers_redirect_clients_to_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.advance(2_000);
    let leader = cluster.leader().expect("leader");
    let follower = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.deliver(
        follower,
        Event::Client(ClientRequest {
            client: 1,
            request_id: 1,
            group: GROUP,
            op: ClientOp::Append {
                seq: 1,
                value: vec![1],
            },
        }),
    );
    assert_eq!(
        cluster.responses[0].result,
        Err(ClientError::NotLeader {
            leader_hint: Some(leader)
        })
    );
}

#[test]
fn a_restarted_cluster_recovers_its_records_from_disk() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.advance(2_000);
    let leader = cluster.leader().expect("leader");
    for seq in 1..=30u64 {
        cluster.deliver(
            leader,
            Event::Client(ClientRequest {
                client: 5,
                request_id: seq,
                group: GROUP,
                op: ClientOp::Append {
                    seq,
                    value: vec![seq as u8],
                },
            }),
        );
        cluster.settle();
    }
    cluster.advance(200);
    // Restart every node from its disk (the instant disk keeps everything).
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for id in ids {
        cluster.restart(id, 4096, runnel_core::MachineLayout::Records);
    }
    cluster.advance(3_000);
    assert!(cluster.leader().is_some());
    for (node, _) in cluster.nodes.values() {
        let records = node.records(GROUP).expect("group");
        assert_eq!(
            records.len(),
            30,
            "node {} recovered every record",
            node.id()
        );
    }
}

#[test]
fn large_entries_make_a_snapshot_due_by_their_bytes() {
    // An entry interval no test reaches: only the bytes can make it due.
    let mut cluster = Cluster::with_snapshot_interval(&[1, 2, 3], 1_000_000);
    cluster.advance(2_000);
    let leader = cluster.leader().expect("leader");
    let value_bytes = 2 << 20;
    let count = runnel_core::SNAPSHOT_INTERVAL_BYTES / value_bytes as u64 + 2;
    for seq in 1..=count {
        cluster.deliver(
            leader,
            Event::Client(ClientRequest {
                client: 3,
                request_id: seq,
                group: GROUP,
                op: ClientOp::Append {
                    seq,
                    value: vec![seq as u8; value_bytes],
                },
            }),
        );
        cluster.settle();
    }
    cluster.advance(200);
    for (node, _) in cluster.nodes.values() {
        let view = node.view(GROUP).expect("group");
        assert!(
            view.snapshot_index >= count - 2,
            "node {}: snapshot at {} after {count} entries of {value_bytes} bytes",
            node.id(),
            view.snapshot_index
        );
        assert_eq!(node.records(GROUP).expect("group").len() as u64, count);
    }
}

impl Cluster {
    /// Appends `values` records through the leader, one at a time.
    fn append_records(&mut self, leader: NodeId, seqs: std::ops::RangeInclusive<u64>) {
        for seq in seqs {
            self.deliver(
                leader,
                Event::Client(ClientRequest {
                    client: 4,
                    request_id: seq,
                    group: GROUP,
                    op: ClientOp::Append {
                        seq,
                        value: vec![seq as u8; 8],
                    },
                }),
            );
            self.settle();
        }
    }

    /// Isolates a follower, appends 1..=60 through the leader (a snapshot
    /// every 20 entries moves the leader's snapshot past the follower's log),
    /// and returns (leader, follower).
    fn leave_a_follower_behind_the_snapshot(&mut self) -> (NodeId, NodeId) {
        self.advance(2_000);
        let leader = self.leader().expect("a leader");
        let follower = *self
            .nodes
            .keys()
            .find(|id| **id != leader)
            .expect("3 nodes");
        self.isolated.insert(follower);
        self.append_records(leader, 1..=60);
        self.advance(200);
        let leader_view = self.nodes[&leader].0.view(GROUP).expect("group");
        let follower_view = self.nodes[&follower].0.view(GROUP).expect("group");
        assert!(
            leader_view.snapshot_index > follower_view.last_index + 1,
            "the leader's snapshot ({}) is past the follower's log ({})",
            leader_view.snapshot_index,
            follower_view.last_index
        );
        (leader, follower)
    }

    fn catch_up_stats(&self, id: NodeId) -> runnel_core::CatchUpStats {
        self.nodes[&id].0.catch_up_stats()
    }
}

fn segment_path(first: u64) -> String {
    format!("groups/{GROUP:020}/log/{first:020}.seg")
}

#[test]
fn a_follower_behind_the_snapshot_catches_up_from_the_retained_log() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let (leader, follower) = cluster.leave_a_follower_behind_the_snapshot();
    cluster.isolated.clear();
    cluster.advance(1_000);
    assert_eq!(
        cluster.nodes[&follower]
            .0
            .records(GROUP)
            .expect("group")
            .len(),
        60
    );
    let stats = cluster.catch_up_stats(leader);
    assert_eq!(stats.snapshots_sent, 0, "no snapshot was sent: {stats:?}");
    assert!(stats.log_reads_served > 0, "{stats:?}");
    // The leader kept its covered segments: the first one is still there.
    assert!(cluster.nodes[&leader]
        .1
        .files
        .contains_key(&segment_path(1)));
}

#[test]
fn with_no_log_kept_below_the_snapshot_the_follower_gets_the_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    for (node, _) in cluster.nodes.values_mut() {
        node.set_retained_log_bytes_max(0);
    }
    let (leader, follower) = cluster.leave_a_follower_behind_the_snapshot();
    assert!(
        !cluster.nodes[&leader]
            .1
            .files
            .contains_key(&segment_path(1)),
        "nothing is kept below the snapshot"
    );
    cluster.isolated.clear();
    cluster.advance(1_000);
    assert_eq!(
        cluster.nodes[&follower]
            .0
            .records(GROUP)
            .expect("group")
            .len(),
        60
    );
    let stats = cluster.catch_up_stats(leader);
    assert!(stats.snapshots_sent > 0, "{stats:?}");
    assert_eq!(stats.log_reads_served, 0, "{stats:?}");
}

#[test]
fn a_damaged_retained_entry_is_not_served_and_the_follower_gets_the_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let (leader, follower) = cluster.leave_a_follower_behind_the_snapshot();
    // Damage every frame's payload area of the leader's first segment: any
    // read of retained entries from there finds a bad checksum.
    let file = cluster
        .nodes
        .get_mut(&leader)
        .unwrap()
        .1
        .files
        .get_mut(&segment_path(1))
        .expect("retained segment");
    for byte in (30..file.len()).step_by(7) {
        file[byte] ^= 0x10;
    }
    // While it was cut off, the leader already read entries back for it
    // (they were lost on the way): only what follows counts.
    let before = cluster.catch_up_stats(leader);
    cluster.isolated.clear();
    cluster.advance(1_000);
    assert_eq!(
        cluster.nodes[&follower]
            .0
            .records(GROUP)
            .expect("group")
            .len(),
        60,
        "the follower caught up from the snapshot"
    );
    let stats = cluster.catch_up_stats(leader);
    assert!(
        stats.log_reads_damaged > before.log_reads_damaged,
        "{stats:?}"
    );
    assert_eq!(
        stats.log_reads_served, before.log_reads_served,
        "damage was never served: {stats:?}"
    );
    assert!(stats.snapshots_sent > before.snapshots_sent, "{stats:?}");
    // Every record the follower applied is the leader's, byte for byte.
    assert_eq!(
        cluster.nodes[&follower].0.records(GROUP),
        cluster.nodes[&leader].0.records(GROUP)
    );
}

#[test]
fn the_retained_log_survives_a_restart_and_still_serves_the_follower() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let (_, follower) = cluster.leave_a_follower_behind_the_snapshot();
    // Restart the two up-to-date nodes from their disks.
    let ids: Vec<NodeId> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != follower)
        .collect();
    for id in ids {
        cluster.restart(id, 4096, runnel_core::MachineLayout::Records);
    }
    cluster.advance(2_000);
    let leader = cluster.leader().expect("a leader after the restart");
    assert_ne!(leader, follower);
    cluster.isolated.clear();
    cluster.advance(1_000);
    assert_eq!(
        cluster.nodes[&follower]
            .0
            .records(GROUP)
            .expect("group")
            .len(),
        60
    );
    let stats = cluster.catch_up_stats(leader);
    assert_eq!(stats.snapshots_sent, 0, "{stats:?}");
    assert!(stats.log_reads_served > 0, "{stats:?}");
}

/// Proposes a partition command through `leader` and settles.
fn propose_partition_command(
    cluster: &mut Cluster,
    leader: NodeId,
    request_id: u64,
    command: &runnel_core::partition::PartitionCommand,
) {
    cluster.deliver(
        leader,
        Event::Client(ClientRequest {
            client: 6,
            request_id,
            group: GROUP,
            op: ClientOp::Propose {
                data: command.encode(),
            },
        }),
    );
    cluster.settle();
}

#[test]
fn a_partition_deletes_the_log_its_retention_no_longer_needs() {
    use runnel_core::partition::{PartitionCommand, ProduceCommand, Retention};
    // Group 7 is a Kafka partition in the broker layout.
    let mut cluster = Cluster::with_layout(&[1, 2, 3], 20, runnel_core::MachineLayout::Broker);
    cluster.advance(2_000);
    let leader = cluster.leader().expect("a leader");
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("3 nodes");
    cluster.isolated.insert(follower);
    for seq in 1..=60u64 {
        let value = [seq as u8; 16];
        let batch =
            runnel_kafka::batch::build_uncompressed(&[(None, Some(&value[..]))], 1_000, None);
        let produce = PartitionCommand::Produce(ProduceCommand {
            append_time_ms: 1_000,
            log_append_time: false,
            batch,
        });
        propose_partition_command(&mut cluster, leader, seq, &produce);
    }
    cluster.advance(200);
    let machine = |cluster: &Cluster, id: NodeId| {
        cluster.nodes[&id]
            .0
            .machine(GROUP)
            .and_then(|machine| machine.partition())
            .expect("a partition")
            .clone()
    };
    assert_eq!(machine(&cluster, leader).high_watermark(), 60);
    // Everything is still needed: the log below the snapshot is kept.
    assert!(cluster.nodes[&leader]
        .1
        .files
        .contains_key(&segment_path(1)));

    // Retention drops every batch but the last: the log before it goes.
    let retain = PartitionCommand::Retain {
        now_ms: 2_000,
        retention: Retention {
            retention_ms: -1,
            retention_bytes: 0,
        },
    };
    propose_partition_command(&mut cluster, leader, 61, &retain);
    // More entries move the snapshot past the retained batch's entry.
    for seq in 62..=90u64 {
        propose_partition_command(&mut cluster, leader, seq, &retain);
    }
    cluster.advance(200);
    let log = machine(&cluster, leader);
    assert_eq!(log.log_start_offset(), 59);
    let needed = log
        .lowest_raft_index_needed()
        .expect("the last batch is kept");
    let files = &cluster.nodes[&leader].1.files;
    let first_segment = files
        .keys()
        .filter_map(|file| file.strip_prefix(&format!("groups/{GROUP:020}/log/")))
        .filter_map(|name| name.strip_suffix(".seg"))
        .map(|digits| digits.parse::<u64>().expect("20 digits"))
        .min()
        .expect("a segment");
    assert!(
        !files.contains_key(&segment_path(1)),
        "the first segment held only entries retention dropped"
    );
    assert!(
        first_segment <= needed,
        "the entry of the oldest batch kept ({needed}) is still there (from {first_segment})"
    );

    // The follower, behind what is kept, gets the snapshot.
    cluster.isolated.clear();
    cluster.advance(1_000);
    let stats = cluster.catch_up_stats(leader);
    assert!(stats.snapshots_sent > 0, "{stats:?}");
    assert_eq!(machine(&cluster, follower), machine(&cluster, leader));
}

/// The first indexes of the segments of group 7 on `id`'s disk.
fn segments_on(cluster: &Cluster, id: NodeId) -> Vec<u64> {
    cluster.nodes[&id]
        .1
        .files
        .keys()
        .filter_map(|file| file.strip_prefix(&format!("groups/{GROUP:020}/log/")))
        .filter_map(|name| name.strip_suffix(".seg"))
        .map(|digits| digits.parse::<u64>().expect("20 digits"))
        .collect()
}

/// Segments of 1 MiB: nothing in the slow partition tests rolls by size.
const SLOW_SEGMENT_BYTES: u64 = 1 << 20;

/// Restarts every node of a broker-layout cluster from its disk.
fn restart_every_node(cluster: &mut Cluster, segment_ms: u64) {
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for id in ids {
        cluster
            .restart(id, SLOW_SEGMENT_BYTES, runnel_core::MachineLayout::Broker)
            .set_segment_ms(segment_ms);
    }
}

/// A slowly written partition whose segments are never full: 60 batches,
/// then retention drops them (all but the last) and enough entries follow
/// for the snapshot to pass them; after `quiet_ms` (with every node
/// restarted in the middle of it if `restart`), one more batch, then
/// retention drops everything older than it, and the snapshot passes it.
/// Returns the segments left on each node.
fn slow_partition_after_retention(segment_ms: u64, quiet_ms: u64, restart: bool) -> Vec<Vec<u64>> {
    use runnel_core::partition::{PartitionCommand, ProduceCommand, Retention};
    let mut cluster = Cluster::with_segments(
        &[1, 2, 3],
        20,
        runnel_core::MachineLayout::Broker,
        SLOW_SEGMENT_BYTES,
    );
    for (node, _) in cluster.nodes.values_mut() {
        node.set_segment_ms(segment_ms);
    }
    cluster.advance(2_000);
    let mut request_id = 0;
    let mut propose = |cluster: &mut Cluster, command: &PartitionCommand| {
        request_id += 1;
        let leader = cluster.leader().expect("a leader");
        propose_partition_command(cluster, leader, request_id, command);
    };
    let produce = |seq: u64, append_time_ms: i64| {
        let value = [seq as u8; 16];
        PartitionCommand::Produce(ProduceCommand {
            append_time_ms,
            log_append_time: false,
            batch: runnel_kafka::batch::build_uncompressed(
                &[(None, Some(&value[..]))],
                append_time_ms,
                None,
            ),
        })
    };
    let retain = |now_ms: u64| PartitionCommand::Retain {
        now_ms: now_ms as i64,
        retention: Retention {
            retention_ms: 1_000,
            retention_bytes: -1,
        },
    };
    for seq in 1..=60 {
        propose(&mut cluster, &produce(seq, 1_000));
    }
    let now_ms = cluster.now_ms;
    for _ in 0..30 {
        propose(&mut cluster, &retain(now_ms));
    }
    if restart {
        cluster.advance(quiet_ms / 2);
        restart_every_node(&mut cluster, segment_ms);
        cluster.advance(quiet_ms - quiet_ms / 2);
    } else {
        cluster.advance(quiet_ms);
    }
    let now_ms = cluster.now_ms;
    propose(&mut cluster, &produce(61, now_ms as i64));
    for _ in 0..30 {
        propose(&mut cluster, &retain(now_ms + 1_001));
    }
    cluster.advance(200);
    let leader = cluster.leader().expect("a leader");
    let log = cluster.nodes[&leader]
        .0
        .machine(GROUP)
        .and_then(|machine| machine.partition())
        .expect("a partition")
        .clone();
    assert_eq!(log.high_watermark(), 61);
    assert_eq!(
        log.log_start_offset(),
        60,
        "retention kept only the new batch"
    );
    let needed = log.lowest_raft_index_needed().expect("the last batch");
    cluster
        .nodes
        .keys()
        .map(|id| {
            let segments = segments_on(&cluster, *id);
            assert!(
                segments.first().is_some_and(|first| *first <= needed),
                "node {id}: the entry of the batch kept ({needed}) is still there: {segments:?}"
            );
            segments
        })
        .collect()
}

#[test]
fn a_slow_partition_rolls_by_age_and_deletes_what_retention_dropped() {
    let segment_ms = runnel_core::SEGMENT_MS_MIN * 5;
    for segments in slow_partition_after_retention(segment_ms, segment_ms, false) {
        assert!(
            !segments.contains(&1),
            "the segment of the batches retention dropped is gone: {segments:?}"
        );
    }
}

#[test]
fn without_rolling_by_age_a_slow_partition_keeps_what_retention_dropped() {
    // The control for the test above: the same writes with no roll by age
    // (or before the age is reached) leave everything in the first segment.
    let segment_ms = runnel_core::SEGMENT_MS_MIN * 5;
    for (segment_ms, quiet_ms) in [(0, segment_ms), (segment_ms, segment_ms / 5)] {
        for segments in slow_partition_after_retention(segment_ms, quiet_ms, false) {
            assert_eq!(
                segments,
                vec![1],
                "segment_ms {segment_ms}, quiet {quiet_ms}"
            );
        }
    }
}

#[test]
fn after_a_restart_a_slow_partition_rolls_at_once_and_deletes_what_retention_dropped() {
    // The disk records no segment's age: a restart takes the recovered
    // segments as old, so the first append after it (the new leader's
    // entry) rolls them, long before segment_ms, and the batches retention
    // dropped go with the segment that held them. A node restarted more
    // often than segment_ms therefore still rolls.
    let segment_ms = runnel_core::SEGMENT_MS_MIN * 5;
    for segments in slow_partition_after_retention(segment_ms, segment_ms / 5, true) {
        assert!(
            !segments.contains(&1),
            "the segment of the batches retention dropped is gone: {segments:?}"
        );
    }
    // Not with segment_ms 0.
    for segments in slow_partition_after_retention(0, segment_ms / 5, true) {
        assert_eq!(segments, vec![1]);
    }
}
