//! Consensus rounds among three in-memory replicas: the leader proposes,
//! its Append reaches both followers, their acknowledgments come back, and
//! the entry commits. Disks are instant (every `Ready`'s writes are durable
//! at once) and the network delivers everything in order, so what is
//! measured is the protocol's own CPU cost per round, the ceiling the node
//! core puts on one partition before any IO.
//!
//! `cargo bench -p runnel-consensus --bench round`; about two seconds per
//! benchmark. Throughput is in entries committed.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use runnel_consensus::{
    Config, HardState, Message, Options, Replica, Role, Snapshot, SnapshotMeta,
};
use runnel_io::{NodeId, Rng};

const ENTRY_BYTES: usize = 1024;
/// The log is never compacted here, so a group is replaced (outside the
/// timed part) once its log holds this many entries, to bound memory.
const LOG_ENTRIES_MAX: u64 = 50_000;

struct Group {
    replicas: BTreeMap<NodeId, Replica>,
    network: VecDeque<Message>,
    now_ms: u64,
}

impl Group {
    fn new(ids: &[NodeId]) -> Group {
        let config = Config::new(ids.iter().copied());
        let replicas = ids
            .iter()
            .map(|&id| {
                let snapshot = Snapshot {
                    meta: SnapshotMeta {
                        index: 0,
                        term: 0,
                        config: config.clone(),
                    },
                    data: Vec::new(),
                };
                let replica = Replica::new(
                    Options::new(id),
                    Rng::new(id),
                    HardState::default(),
                    Some(snapshot),
                    Vec::new(),
                    0,
                );
                (id, replica)
            })
            .collect();
        let mut group = Group {
            replicas,
            network: VecDeque::new(),
            now_ms: 0,
        };
        group.elect();
        group
    }

    /// Takes every replica's Ready, makes its writes durable at once, and
    /// delivers messages until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for replica in self.replicas.values_mut() {
                let ready = replica.take_ready();
                if let Some((index, term)) = ready.persist_point {
                    replica.on_persisted(index, term);
                    moved = true;
                }
                moved |= !ready.messages.is_empty() || !ready.persisted_messages.is_empty();
                self.network.extend(ready.messages);
                self.network.extend(ready.persisted_messages);
            }
            while let Some(message) = self.network.pop_front() {
                if let Some(replica) = self.replicas.get_mut(&message.to) {
                    replica.step(message);
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    fn elect(&mut self) {
        for _ in 0..1_000 {
            self.now_ms += 50;
            for replica in self.replicas.values_mut() {
                replica.tick(self.now_ms);
            }
            self.pump();
            if self
                .leader()
                .is_some_and(|id| self.replicas[&id].is_leader_ready())
            {
                return;
            }
        }
        panic!("no leader was elected");
    }

    fn leader(&self) -> Option<NodeId> {
        self.replicas
            .values()
            .find(|replica| replica.role() == Role::Leader)
            .map(Replica::id)
    }

    /// Proposes `entries` entries at the leader and runs until all of them
    /// are committed there.
    fn round(&mut self, leader: NodeId, entries: usize, payload: &[u8]) {
        let mut last = 0;
        for _ in 0..entries {
            let (index, _) = self
                .replicas
                .get_mut(&leader)
                .expect("leader")
                .propose(payload.to_vec())
                .expect("the leader accepts");
            last = index;
        }
        self.pump();
        assert!(self.replicas[&leader].commit_index() >= last, "committed");
    }
}

fn rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("consensus_3_replicas");
    let payload = vec![0x5Au8; ENTRY_BYTES];
    for entries in [1usize, 64] {
        let mut cluster = Group::new(&[1, 2, 3]);
        group.throughput(Throughput::Elements(entries as u64));
        group.bench_function(format!("round_{entries}x1KiB"), |b| {
            b.iter_custom(|iterations| {
                let mut measured = Duration::ZERO;
                for _ in 0..iterations {
                    let leader = cluster.leader().expect("elected");
                    if cluster.replicas[&leader].log().last_index() > LOG_ENTRIES_MAX {
                        cluster = Group::new(&[1, 2, 3]);
                    }
                    let leader = cluster.leader().expect("elected");
                    let started = Instant::now();
                    cluster.round(leader, entries, &payload);
                    measured += started.elapsed();
                }
                measured
            })
        });
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = short();
    targets = rounds
}
criterion_main!(benches);
