//! What a run adds up to: the producers' and consumers' results merged,
//! and the delivery check (every acknowledged message consumed, once).

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::args::Acks;
use crate::consumer::ConsumerResult;
use crate::producer::ProducerResult;
use crate::stats::{latency_histogram, BitSet};

pub struct Totals {
    pub sent: u64,
    pub sent_bytes: u64,
    pub acknowledged: u64,
    pub acked_bytes: u64,
    pub produce_errors: u64,
    pub produce_latency: Histogram<u64>,
    /// From the start of the load to the last acknowledgment.
    pub produce_seconds: f64,
    pub consumer_count: usize,
    pub consumed_count: u64,
    pub consumed_bytes: u64,
    pub duplicates: u64,
    pub foreign: u64,
    pub consume_errors: u64,
    pub unfinished: Vec<i32>,
    pub end_to_end: Histogram<u64>,
    /// From the start of the load to the last message consumed.
    pub consume_seconds: f64,
    /// Whether delivery could be checked: acknowledgments to compare with,
    /// and consumers that read.
    pub verified: bool,
    /// Acknowledged and never consumed.
    pub lost: u64,
    /// Consumed without an acknowledgment (a produce that failed after the
    /// broker wrote it).
    pub consumed_unacknowledged: u64,
    pub errors: u64,
    /// No error, every message acknowledged, and (when verified) every
    /// acknowledged message consumed exactly once.
    pub delivered: bool,
    /// The messages and bytes the produce rate counts: acknowledged ones,
    /// or with acks=0 the ones sent.
    pub counted: u64,
    pub counted_bytes: u64,
}

impl Totals {
    pub fn new(
        acks: Acks,
        produced: &[ProducerResult],
        consumed: &[ConsumerResult],
        load_started: Instant,
        producing_ended: Instant,
        errors: u64,
    ) -> Totals {
        let seconds_until = |end: Option<Instant>| {
            end.unwrap_or(producing_ended)
                .saturating_duration_since(load_started)
                .as_secs_f64()
                .max(1e-3)
        };
        let sent: u64 = produced.iter().map(|r| r.sent).sum();
        let sent_bytes: u64 = produced.iter().map(|r| r.sent_bytes).sum();
        let acknowledged: u64 = produced.iter().map(|r| r.acked.len()).sum();
        let acked_bytes: u64 = produced.iter().map(|r| r.acked_bytes).sum();
        let mut produce_latency = latency_histogram();
        for result in produced {
            let _ = produce_latency.add(&result.latency);
        }
        let mut end_to_end = latency_histogram();
        let mut seen: BTreeMap<u32, BitSet> = BTreeMap::new();
        for result in consumed {
            let _ = end_to_end.add(&result.latency);
            for (&producer, bits) in &result.seen {
                seen.entry(producer).or_default().union_with(bits);
            }
        }
        let duplicates: u64 = consumed.iter().map(|r| r.duplicates).sum();
        let unfinished: Vec<i32> = consumed.iter().flat_map(|r| r.unfinished.clone()).collect();
        let empty = BitSet::default();
        let verified = acks != Acks::None && !consumed.is_empty();
        let (lost, consumed_unacknowledged) = if verified {
            let lost = produced
                .iter()
                .map(|r| r.acked.missing_from(seen.get(&r.index).unwrap_or(&empty)))
                .sum();
            let unacknowledged = seen
                .iter()
                .map(|(producer, bits)| {
                    let acked = produced
                        .iter()
                        .find(|r| r.index == *producer)
                        .map_or(&empty, |r| &r.acked);
                    bits.missing_from(acked)
                })
                .sum();
            (lost, unacknowledged)
        } else {
            (0, 0)
        };
        let all_acknowledged = acks == Acks::None || sent == acknowledged;
        let delivered = errors == 0
            && all_acknowledged
            && (!verified || (lost == 0 && duplicates == 0 && unfinished.is_empty()));
        let (counted, counted_bytes) = if acks == Acks::None {
            (sent, sent_bytes)
        } else {
            (acknowledged, acked_bytes)
        };
        Totals {
            sent,
            sent_bytes,
            acknowledged,
            acked_bytes,
            produce_errors: produced.iter().map(|r| r.errors).sum(),
            produce_latency,
            produce_seconds: seconds_until(produced.iter().filter_map(|r| r.last_ack).max()),
            consumer_count: consumed.len(),
            consumed_count: consumed.iter().map(|r| r.consumed).sum(),
            consumed_bytes: consumed.iter().map(|r| r.consumed_bytes).sum(),
            duplicates,
            foreign: consumed.iter().map(|r| r.foreign).sum(),
            consume_errors: consumed.iter().map(|r| r.errors).sum(),
            unfinished,
            end_to_end,
            consume_seconds: seconds_until(consumed.iter().filter_map(|r| r.last_consumed).max()),
            verified,
            lost,
            consumed_unacknowledged,
            errors,
            delivered,
            counted,
            counted_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer(index: u32, acked: &[u64], sent: u64) -> ProducerResult {
        let mut bits = BitSet::default();
        for &sequence in acked {
            bits.insert(sequence);
        }
        ProducerResult {
            index,
            sent,
            sent_bytes: sent * 100,
            acked_bytes: acked.len() as u64 * 100,
            acked: bits,
            errors: sent - acked.len() as u64,
            rerouted_batches: 0,
            latency: latency_histogram(),
            end_offsets: BTreeMap::new(),
            last_ack: None,
        }
    }

    fn consumer(seen: &[(u32, u64)], duplicates: u64) -> ConsumerResult {
        let mut sets: BTreeMap<u32, BitSet> = BTreeMap::new();
        for &(producer, sequence) in seen {
            sets.entry(producer).or_default().insert(sequence);
        }
        ConsumerResult {
            consumed: seen.len() as u64 + duplicates,
            consumed_bytes: 0,
            seen: sets,
            duplicates,
            foreign: 0,
            errors: 0,
            latency: latency_histogram(),
            last_consumed: None,
            unfinished: Vec::new(),
        }
    }

    fn totals(acks: Acks, produced: &[ProducerResult], consumed: &[ConsumerResult]) -> Totals {
        let now = Instant::now();
        let errors = produced.iter().map(|r| r.errors).sum();
        Totals::new(acks, produced, consumed, now, now, errors)
    }

    #[test]
    fn everything_acknowledged_and_consumed_once_is_delivered() {
        let produced = [producer(0, &[0, 1, 2], 3), producer(1, &[0, 1], 2)];
        // Two consumers, each with some of the partitions.
        let consumed = [
            consumer(&[(0, 0), (1, 1)], 0),
            consumer(&[(0, 1), (0, 2), (1, 0)], 0),
        ];
        let totals = totals(Acks::All, &produced, &consumed);
        assert!(totals.verified && totals.delivered);
        assert_eq!((totals.lost, totals.consumed_unacknowledged), (0, 0));
        assert_eq!((totals.acknowledged, totals.consumed_count), (5, 5));
    }

    #[test]
    fn a_lost_a_duplicated_and_an_unacknowledged_message_are_each_named() {
        let produced = [producer(0, &[0, 1], 3)]; // sequence 2 failed
        let lost = totals(Acks::All, &produced, &[consumer(&[(0, 0)], 0)]);
        assert_eq!(lost.lost, 1);
        assert!(!lost.delivered);
        let doubled = totals(
            Acks::All,
            &produced,
            &[consumer(&[(0, 0), (0, 1), (0, 2)], 1)],
        );
        assert_eq!(doubled.lost, 0);
        assert_eq!(doubled.duplicates, 1);
        assert_eq!(doubled.consumed_unacknowledged, 1);
        assert!(!doubled.delivered);
    }

    #[test]
    fn without_acknowledgments_or_consumers_nothing_is_verified() {
        let produced = [producer(0, &[], 0)];
        let mut sent = producer(0, &[], 4);
        sent.errors = 0;
        let unacknowledged = totals(Acks::None, &[sent], &[consumer(&[(0, 0)], 0)]);
        assert!(!unacknowledged.verified && unacknowledged.delivered);
        assert_eq!(unacknowledged.counted, 4);
        let unread = totals(Acks::All, &produced, &[]);
        assert!(!unread.verified);
    }
}
