//! The nemesis: a schedule of fault windows drawn from the seed, and the code
//! that starts and heals each fault on the real cluster.
//!
//! The run is quiet for a warm-up, then alternates fault windows (a few
//! seconds, one fault or two of different kinds together) with quiet gaps,
//! and every fault is healed before the time limit. Kinds:
//!
//! - `partition`: nftables rules in the nodes' namespaces, one shape per
//!   window: one node isolated, the cluster split into a minority and a
//!   majority, a bridge (two halves that only one node sees both of), a ring
//!   (each node sees only its two neighbours), or a one-way cut (one node hears
//!   nobody, or nobody hears it).
//! - `kill`: SIGKILL a minority of the nodes; restarted at the heal.
//! - `pause`: SIGSTOP a minority of the nodes; SIGCONT at the heal.
//! - `clock`: move some nodes' wall clocks by a skew (up to a minute) or a
//!   jump (up to ten minutes), either way; back to true time at the heal.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::net;

/// The quiet start, before the first fault.
pub const WARMUP_MS: u64 = 5_000;
/// Every fault is healed this long before the time limit.
pub const HEALED_BEFORE_END_MS: u64 = 3_000;
/// Shortest and longest fault window.
pub const WINDOW_MS: (u64, u64) = (3_000, 8_000);
/// Shortest and longest quiet gap between windows.
pub const GAP_MS: (u64, u64) = (2_000, 5_000);
/// Largest clock skew, in seconds.
pub const SKEW_S_MAX: i64 = 60;
/// Largest clock jump, in seconds.
pub const JUMP_S_MAX: i64 = 600;

/// The kinds of fault, by their command-line names.
pub const KINDS: [&str; 4] = ["partition", "kill", "pause", "clock"];

/// One fault.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// Each listed node drops packets from the nodes listed with it.
    Partition {
        shape: &'static str,
        blocked: BTreeMap<u16, BTreeSet<u16>>,
    },
    Kill {
        nodes: Vec<u16>,
    },
    Pause {
        nodes: Vec<u16>,
    },
    Clock {
        offsets_s: BTreeMap<u16, i64>,
    },
}

/// Faults active together from `start_ms` to `end_ms` after the run starts.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
    pub faults: Vec<Fault>,
}

/// Cuts every link between `left` and `right`, both ways.
fn cut(blocked: &mut BTreeMap<u16, BTreeSet<u16>>, left: &[u16], right: &[u16]) {
    for &a in left {
        for &b in right {
            blocked.entry(a).or_default().insert(b);
            blocked.entry(b).or_default().insert(a);
        }
    }
}

fn partition(rng: &mut ChaCha8Rng, nodes: u16) -> Fault {
    let mut ids: Vec<u16> = (1..=nodes).collect();
    ids.shuffle(rng);
    let mut blocked = BTreeMap::new();
    let shapes: &[&'static str] = if nodes >= 4 {
        &["isolate", "halves", "bridge", "ring", "one-way"]
    } else if nodes == 3 {
        &["isolate", "halves", "bridge", "one-way"]
    } else {
        &["isolate", "one-way"]
    };
    let shape = *shapes.choose(rng).expect("non-empty");
    match shape {
        "isolate" => cut(&mut blocked, &ids[..1], &ids[1..]),
        "halves" => {
            let half = usize::from(nodes) / 2;
            cut(&mut blocked, &ids[..half], &ids[half..]);
        }
        "bridge" => {
            // ids[half] sees both sides; the sides do not see each other.
            let half = (usize::from(nodes) - 1) / 2;
            cut(&mut blocked, &ids[..half], &ids[half + 1..]);
        }
        "ring" => {
            let n = ids.len();
            for (position, &node) in ids.iter().enumerate() {
                let neighbours = [ids[(position + 1) % n], ids[(position + n - 1) % n]];
                for &other in &ids {
                    if other != node && !neighbours.contains(&other) {
                        blocked.entry(node).or_default().insert(other);
                    }
                }
            }
        }
        _ => {
            let node = ids[0];
            if rng.gen_bool(0.5) {
                // It hears nobody, but everyone hears it.
                blocked.insert(node, ids[1..].iter().copied().collect());
            } else {
                for &other in &ids[1..] {
                    blocked.entry(other).or_default().insert(node);
                }
            }
        }
    }
    Fault::Partition { shape, blocked }
}

fn some_nodes(rng: &mut ChaCha8Rng, nodes: u16, most: u16) -> Vec<u16> {
    let mut ids: Vec<u16> = (1..=nodes).collect();
    ids.shuffle(rng);
    let count = rng.gen_range(1..=most.max(1));
    let mut chosen: Vec<u16> = ids.into_iter().take(usize::from(count)).collect();
    chosen.sort_unstable();
    chosen
}

fn fault(rng: &mut ChaCha8Rng, kind: &str, nodes: u16) -> Fault {
    let minority = (nodes - 1) / 2;
    match kind {
        "partition" => partition(rng, nodes),
        "kill" => Fault::Kill {
            nodes: some_nodes(rng, nodes, minority),
        },
        "pause" => Fault::Pause {
            nodes: some_nodes(rng, nodes, minority),
        },
        _ => {
            let offsets_s = some_nodes(rng, nodes, nodes)
                .into_iter()
                .map(|node| {
                    let magnitude = if rng.gen_bool(0.5) {
                        rng.gen_range(1..=SKEW_S_MAX)
                    } else {
                        rng.gen_range(SKEW_S_MAX..=JUMP_S_MAX)
                    };
                    (
                        node,
                        if rng.gen_bool(0.5) {
                            magnitude
                        } else {
                            -magnitude
                        },
                    )
                })
                .collect();
            Fault::Clock { offsets_s }
        }
    }
}

/// The schedule of a run of `time_limit_ms` on `nodes` nodes with the given
/// fault `kinds` (names from [`KINDS`]), drawn from `seed`. Kinds that make
/// no sense for the cluster (partitions or kills of a single node) are left
/// out.
pub fn schedule(seed: u64, nodes: u16, time_limit_ms: u64, kinds: &[String]) -> Vec<Window> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kinds: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|kind| nodes >= 3 || *kind == "clock" || *kind == "pause" && nodes >= 2)
        .collect();
    let mut windows = Vec::new();
    if kinds.is_empty() {
        return windows;
    }
    let end = time_limit_ms.saturating_sub(HEALED_BEFORE_END_MS);
    let mut now = WARMUP_MS;
    while now + WINDOW_MS.0 <= end {
        let length = rng.gen_range(WINDOW_MS.0..=WINDOW_MS.1).min(end - now);
        let mut chosen: Vec<&str> = kinds.clone();
        chosen.shuffle(&mut rng);
        let together = if chosen.len() > 1 && rng.gen_bool(0.35) {
            2
        } else {
            1
        };
        let faults = chosen[..together]
            .iter()
            .map(|kind| fault(&mut rng, kind, nodes))
            .collect();
        windows.push(Window {
            start_ms: now,
            end_ms: now + length,
            faults,
        });
        now += length + rng.gen_range(GAP_MS.0..=GAP_MS.1);
    }
    windows
}

/// Starts `fault` on the cluster.
pub fn start(fault: &Fault, cluster: &mut Cluster) -> Result<(), String> {
    match fault {
        Fault::Partition { blocked, .. } => {
            for (&node, sources) in blocked {
                net::set_blocked(node, sources)?;
            }
            Ok(())
        }
        Fault::Kill { nodes } => {
            for &node in nodes {
                cluster.kill(node);
            }
            Ok(())
        }
        Fault::Pause { nodes } => {
            for &node in nodes {
                cluster.pause(node, true);
            }
            Ok(())
        }
        Fault::Clock { offsets_s } => {
            for (&node, &offset) in offsets_s {
                cluster.set_clock_offset(node, offset)?;
            }
            Ok(())
        }
    }
}

/// Heals `fault`.
pub fn heal(fault: &Fault, cluster: &mut Cluster) -> Result<(), String> {
    match fault {
        Fault::Partition { blocked, .. } => {
            for &node in blocked.keys() {
                net::set_blocked(node, &BTreeSet::new())?;
            }
            Ok(())
        }
        Fault::Kill { nodes } => {
            for &node in nodes {
                cluster.start(node)?;
            }
            Ok(())
        }
        Fault::Pause { nodes } => {
            for &node in nodes {
                cluster.pause(node, false);
            }
            Ok(())
        }
        Fault::Clock { offsets_s } => {
            for &node in offsets_s.keys() {
                cluster.set_clock_offset(node, 0)?;
            }
            Ok(())
        }
    }
}

/// Heals everything, whatever is active: every rule flushed, every node
/// resumed and running, every clock true.
pub fn heal_all(cluster: &mut Cluster) -> Vec<String> {
    let mut problems = Vec::new();
    let ids: Vec<u16> = cluster.nodes.iter().map(|node| node.id).collect();
    for &id in &ids {
        if let Err(error) = net::set_blocked(id, &BTreeSet::new()) {
            problems.push(error);
        }
        cluster.pause(id, false);
        if !cluster.is_running(id) {
            if let Err(error) = cluster.start(id) {
                problems.push(error);
            }
        }
        if cluster.has_clock() {
            if let Err(error) = cluster.set_clock_offset(id, 0) {
                problems.push(error);
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<String> {
        KINDS.iter().map(|kind| kind.to_string()).collect()
    }

    #[test]
    fn a_schedule_is_a_function_of_its_seed() {
        let a = serde_json::to_string(&schedule(7, 5, 60_000, &all_kinds())).unwrap();
        let b = serde_json::to_string(&schedule(7, 5, 60_000, &all_kinds())).unwrap();
        let c = serde_json::to_string(&schedule(8, 5, 60_000, &all_kinds())).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn windows_are_ordered_apart_and_healed_before_the_end() {
        for seed in 0..50 {
            let windows = schedule(seed, 5, 60_000, &all_kinds());
            assert!(windows.len() >= 4, "seed {seed}: {windows:?}");
            let mut previous_end = 0;
            for window in &windows {
                assert!(window.start_ms >= WARMUP_MS.max(previous_end));
                assert!(window.end_ms > window.start_ms);
                assert!(window.end_ms <= 60_000 - HEALED_BEFORE_END_MS);
                assert!(!window.faults.is_empty() && window.faults.len() <= 2);
                previous_end = window.end_ms;
                for fault in &window.faults {
                    match fault {
                        Fault::Kill { nodes } | Fault::Pause { nodes } => {
                            assert!(!nodes.is_empty() && nodes.len() <= 2, "a minority of 5");
                        }
                        Fault::Partition { blocked, .. } => {
                            assert!(!blocked.is_empty());
                            for (node, sources) in blocked {
                                assert!(!sources.contains(node));
                            }
                        }
                        Fault::Clock { offsets_s } => {
                            assert!(offsets_s
                                .values()
                                .all(|&offset| offset != 0 && offset.abs() <= JUMP_S_MAX));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn partition_shapes_cut_what_they_say() {
        let mut shapes = BTreeSet::new();
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let Fault::Partition { shape, blocked } = partition(&mut rng, 5) else {
                unreachable!()
            };
            shapes.insert(shape);
            let links: usize = blocked.values().map(BTreeSet::len).sum();
            match shape {
                // 1 x 4 links, both ways.
                "isolate" => assert_eq!(links, 8),
                // 2 x 3 links, both ways.
                "halves" => assert_eq!(links, 12),
                // 2 x 2 links, both ways; the bridge node is cut from nobody.
                "bridge" => {
                    assert_eq!(links, 8);
                    assert_eq!(blocked.len(), 4);
                }
                // Each node hears only its 2 neighbours.
                "ring" => assert!(blocked.values().all(|sources| sources.len() == 2)),
                // One node's 4 links, one way.
                "one-way" => assert_eq!(links, 4),
                other => panic!("unknown shape {other}"),
            }
        }
        assert_eq!(shapes.len(), 5, "{shapes:?}");
    }

    #[test]
    fn a_single_node_gets_only_clock_faults() {
        let windows = schedule(1, 1, 60_000, &all_kinds());
        assert!(windows
            .iter()
            .flat_map(|window| &window.faults)
            .all(|fault| matches!(fault, Fault::Clock { .. })));
    }
}
