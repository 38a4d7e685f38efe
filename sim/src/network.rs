//! The simulated network between nodes.
//!
//! Every message is in flight until its delivery time; ties are broken by the
//! order of sending, so a seed always delivers in the same order. Faults:
//! loss, duplication, delay with jitter (which reorders), symmetric
//! partitions, one-way partitions, an isolated node, and clogged links (held
//! until a time, then delivered). A link that is blocked when a message is
//! sent, or when it is due, drops it.

use std::collections::{BTreeMap, BTreeSet};

use runnel_io::{Network, NodeId, Rng};

use crate::queue::TimedQueue;

/// Messages in flight at once; a send above this is dropped (and counted).
pub const IN_FLIGHT_MESSAGES_MAX: usize = 50_000;

/// The per-message faults, in force on every link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFaults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice (independent delays).
    pub duplication: f64,
    /// Every message takes at least this long.
    pub delay_base_ms: u64,
    /// Plus a uniform random extra delay in `[0, delay_jitter_ms]`.
    pub delay_jitter_ms: u64,
}

impl LinkFaults {
    /// A healthy network: nothing lost, a little delay.
    pub fn healthy() -> LinkFaults {
        LinkFaults {
            loss: 0.0,
            duplication: 0.0,
            delay_base_ms: 1,
            delay_jitter_ms: 2,
        }
    }
}

/// What the network did, for the run summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Dropped because a partition blocked the link.
    pub blocked: u64,
    /// Dropped because `IN_FLIGHT_MESSAGES_MAX` was reached.
    pub dropped_full: u64,
    /// Held by a clogged link.
    pub clogged: u64,
}

struct Flight<M> {
    from: NodeId,
    to: NodeId,
    message: M,
}

pub struct SimNetwork<M: Clone> {
    rng: Rng,
    faults: LinkFaults,
    in_flight: TimedQueue<Flight<M>>,
    /// Symmetric partition: each node's side; nodes on different sides
    /// cannot talk. Empty when there is none.
    sides: BTreeMap<NodeId, usize>,
    /// Directed links blocked by one-way partitions: (from, to).
    one_way: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that can talk to nobody.
    isolated: BTreeSet<NodeId>,
    /// Directed links held until a time: (from, to) -> until_ms.
    clogged: BTreeMap<(NodeId, NodeId), u64>,
    stats: NetworkStats,
}

impl<M: Clone> SimNetwork<M> {
    pub fn new(rng: Rng, faults: LinkFaults) -> SimNetwork<M> {
        SimNetwork {
            rng,
            faults,
            in_flight: TimedQueue::new(),
            sides: BTreeMap::new(),
            one_way: BTreeSet::new(),
            isolated: BTreeSet::new(),
            clogged: BTreeMap::new(),
            stats: NetworkStats::default(),
        }
    }

    pub fn faults(&self) -> LinkFaults {
        self.faults
    }

    pub fn set_faults(&mut self, faults: LinkFaults) {
        self.faults = faults;
    }

    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Splits the nodes into `sides` that cannot talk to each other. Nodes on
    /// no side can talk to everyone.
    pub fn set_partition(&mut self, sides: &[Vec<NodeId>]) {
        self.sides.clear();
        for (side, nodes) in sides.iter().enumerate() {
            for &node in nodes {
                self.sides.insert(node, side);
            }
        }
    }

    pub fn clear_partition(&mut self) {
        self.sides.clear();
    }

    /// Blocks messages from `from` to `to`; the other direction still works.
    pub fn block_one_way(&mut self, from: NodeId, to: NodeId) {
        self.one_way.insert((from, to));
    }

    pub fn clear_one_way(&mut self) {
        self.one_way.clear();
    }

    pub fn isolate(&mut self, node: NodeId) {
        self.isolated.insert(node);
    }

    pub fn clear_isolation(&mut self) {
        self.isolated.clear();
    }

    /// Holds every message from `from` to `to` until `until_ms`, then
    /// delivers them (in their order).
    pub fn clog(&mut self, from: NodeId, to: NodeId, until_ms: u64) {
        let until = self.clogged.entry((from, to)).or_insert(0);
        *until = (*until).max(until_ms);
    }

    pub fn clear_clogs(&mut self) {
        self.clogged.clear();
    }

    /// Removes every partition, clog, loss and duplication; keeps the delay.
    pub fn heal(&mut self) {
        self.clear_partition();
        self.clear_one_way();
        self.clear_isolation();
        self.clear_clogs();
        self.faults.loss = 0.0;
        self.faults.duplication = 0.0;
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        if self.isolated.contains(&from) || self.isolated.contains(&to) {
            return true;
        }
        if self.one_way.contains(&(from, to)) {
            return true;
        }
        match (self.sides.get(&from), self.sides.get(&to)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        }
    }

    fn delay(&mut self) -> u64 {
        let jitter = if self.faults.delay_jitter_ms == 0 {
            0
        } else {
            self.rng.range(0, self.faults.delay_jitter_ms + 1)
        };
        self.faults.delay_base_ms + jitter
    }

    fn clogged_until(&self, from: NodeId, to: NodeId, now: u64) -> Option<u64> {
        match self.clogged.get(&(from, to)) {
            Some(&until) if until > now => Some(until),
            _ => None,
        }
    }

    fn enqueue(&mut self, now: u64, from: NodeId, to: NodeId, message: M) {
        if self.in_flight.len() >= IN_FLIGHT_MESSAGES_MAX {
            self.stats.dropped_full += 1;
            return;
        }
        let mut at = now + self.delay();
        if let Some(until) = self.clogged_until(from, to, now) {
            self.stats.clogged += 1;
            at = at.max(until);
        }
        self.in_flight.push(at, Flight { from, to, message });
    }

    /// Sends `message`; it arrives (zero, one or two times) later.
    pub fn send(&mut self, now: u64, from: NodeId, to: NodeId, message: M) {
        assert_ne!(from, to, "node {from} sent a message to itself");
        self.stats.sent += 1;
        if self.is_blocked(from, to) {
            self.stats.blocked += 1;
            return;
        }
        if self.rng.chance(self.faults.loss) {
            self.stats.lost += 1;
            return;
        }
        if self.rng.chance(self.faults.duplication) {
            self.stats.duplicated += 1;
            self.enqueue(now, from, to, message.clone());
        }
        self.enqueue(now, from, to, message);
    }

    /// The time of the next delivery (which may still be dropped or held).
    pub fn next_delivery_at(&self) -> Option<u64> {
        self.in_flight.next_at()
    }

    /// The next message due at or before `now` on a link that is open:
    /// `(from, to, message)`. Messages whose link is blocked are dropped;
    /// messages on a clogged link are held until it unclogs.
    pub fn pop_due(&mut self, now: u64) -> Option<(NodeId, NodeId, M)> {
        while let Some((_, seq, flight)) = self.in_flight.pop_due_keyed(now) {
            if self.is_blocked(flight.from, flight.to) {
                self.stats.blocked += 1;
                continue;
            }
            if let Some(until) = self.clogged_until(flight.from, flight.to, now) {
                self.stats.clogged += 1;
                // Keeps its send order among the held messages.
                self.in_flight.push_keyed(until, seq, flight);
                continue;
            }
            self.stats.delivered += 1;
            return Some((flight.from, flight.to, flight.message));
        }
        None
    }
}

/// One node's handle on the network: it knows who sends and when.
pub struct NodeNetwork<'a, M: Clone> {
    pub network: &'a mut SimNetwork<M>,
    pub from: NodeId,
    pub now: u64,
}

impl<M: Clone> Network<M> for NodeNetwork<'_, M> {
    fn send(&mut self, to: NodeId, message: M) {
        self.network.send(self.now, self.from, to, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(faults: LinkFaults) -> SimNetwork<u64> {
        SimNetwork::new(Rng::new(1), faults)
    }

    fn drain(net: &mut SimNetwork<u64>, until: u64) -> Vec<(u64, NodeId, NodeId, u64)> {
        let mut out = Vec::new();
        for now in 0..=until {
            while let Some((from, to, message)) = net.pop_due(now) {
                out.push((now, from, to, message));
            }
        }
        out
    }

    fn fixed_delay(ms: u64) -> LinkFaults {
        LinkFaults {
            loss: 0.0,
            duplication: 0.0,
            delay_base_ms: ms,
            delay_jitter_ms: 0,
        }
    }

    #[test]
    fn delivers_after_delay_in_send_order() {
        let mut net = network(fixed_delay(5));
        for message in 0..10 {
            net.send(0, 1, 2, message);
        }
        assert_eq!(net.pop_due(4), None);
        let delivered = drain(&mut net, 10);
        assert_eq!(delivered.len(), 10);
        assert!(delivered.iter().all(|d| d.0 == 5));
        let order: Vec<u64> = delivered.iter().map(|d| d.3).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn jitter_reorders() {
        let mut net = network(LinkFaults {
            loss: 0.0,
            duplication: 0.0,
            delay_base_ms: 1,
            delay_jitter_ms: 50,
        });
        for message in 0..100 {
            net.send(0, 1, 2, message);
        }
        let order: Vec<u64> = drain(&mut net, 100).iter().map(|d| d.3).collect();
        assert_eq!(order.len(), 100);
        assert_ne!(order, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn loss_and_duplication_are_counted() {
        let mut net = network(LinkFaults {
            loss: 0.3,
            duplication: 0.3,
            delay_base_ms: 1,
            delay_jitter_ms: 0,
        });
        for message in 0..1000 {
            net.send(0, 1, 2, message);
        }
        let delivered = drain(&mut net, 5).len() as u64;
        let stats = net.stats();
        assert!(stats.lost > 200 && stats.lost < 400, "{stats:?}");
        assert!(stats.duplicated > 100, "{stats:?}");
        assert_eq!(delivered, 1000 - stats.lost + stats.duplicated);
    }

    #[test]
    fn symmetric_partition_blocks_both_ways_and_in_flight() {
        let mut net = network(fixed_delay(5));
        net.send(0, 1, 3, 7);
        net.set_partition(&[vec![1, 2], vec![3]]);
        net.send(0, 1, 3, 8);
        net.send(0, 3, 1, 9);
        net.send(0, 1, 2, 10);
        let delivered: Vec<u64> = drain(&mut net, 10).iter().map(|d| d.3).collect();
        assert_eq!(delivered, vec![10]);
        net.clear_partition();
        net.send(10, 3, 1, 11);
        assert_eq!(drain(&mut net, 20).len(), 1);
    }

    #[test]
    fn one_way_partition_blocks_one_direction() {
        let mut net = network(fixed_delay(1));
        net.block_one_way(1, 2);
        net.send(0, 1, 2, 1);
        net.send(0, 2, 1, 2);
        let delivered = drain(&mut net, 5);
        assert_eq!(delivered.len(), 1);
        assert_eq!((delivered[0].1, delivered[0].2), (2, 1));
    }

    #[test]
    fn isolated_node_talks_to_nobody() {
        let mut net = network(fixed_delay(1));
        net.isolate(2);
        net.send(0, 1, 2, 1);
        net.send(0, 2, 3, 2);
        net.send(0, 1, 3, 3);
        let delivered: Vec<u64> = drain(&mut net, 5).iter().map(|d| d.3).collect();
        assert_eq!(delivered, vec![3]);
    }

    #[test]
    fn clogged_link_holds_until_then_delivers() {
        let mut net = network(fixed_delay(1));
        net.send(0, 1, 2, 1);
        net.clog(1, 2, 50);
        net.send(0, 1, 2, 2);
        net.send(0, 2, 1, 3);
        let delivered = drain(&mut net, 100);
        let times: Vec<(u64, u64)> = delivered.iter().map(|d| (d.3, d.0)).collect();
        assert_eq!(times, vec![(3, 1), (1, 50), (2, 50)]);
    }

    #[test]
    fn bounded_in_flight() {
        let mut net = network(fixed_delay(1));
        for message in 0..(IN_FLIGHT_MESSAGES_MAX as u64 + 10) {
            net.send(0, 1, 2, message);
        }
        assert_eq!(net.in_flight(), IN_FLIGHT_MESSAGES_MAX);
        assert_eq!(net.stats().dropped_full, 10);
    }

    #[test]
    fn adapter_sends_from_its_node() {
        let mut net = network(fixed_delay(1));
        {
            let mut adapter = NodeNetwork {
                network: &mut net,
                from: 4,
                now: 10,
            };
            adapter.send(5, 99);
        }
        assert_eq!(net.pop_due(10), None);
        assert_eq!(net.pop_due(11), Some((4, 5, 99)));
    }

    #[test]
    fn same_seed_same_deliveries() {
        let run = || {
            let mut net = SimNetwork::new(
                Rng::new(9),
                LinkFaults {
                    loss: 0.1,
                    duplication: 0.1,
                    delay_base_ms: 1,
                    delay_jitter_ms: 20,
                },
            );
            for message in 0..200 {
                net.send(message / 10, 1 + message % 3, 4, message);
            }
            drain(&mut net, 100)
        };
        assert_eq!(run(), run());
    }
}
