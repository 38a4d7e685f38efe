//! Counters the progress line reads while the bench runs, latency
//! histograms, and the bit sets that prove every acknowledged message was
//! consumed exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The largest latency a histogram holds exactly (a minute, in µs); longer
/// ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Most messages one producer sends: its acknowledged and consumed
/// sequences are each one bit in memory (32 MiB per bit set at this bound).
pub const MESSAGES_PER_PRODUCER_MAX: u64 = 1 << 28;

pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram of µs, in ms, for the report.
pub fn percentiles_ms(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return Value::Null;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": histogram.len(),
        "p50_ms": ms(histogram.value_at_quantile(0.50)),
        "p99_ms": ms(histogram.value_at_quantile(0.99)),
        "p99_9_ms": ms(histogram.value_at_quantile(0.999)),
        "max_ms": ms(histogram.max()),
        "mean_ms": histogram.mean() / 1000.0,
    })
}

/// One clock for the whole run: monotonic, with the wall-clock time it
/// started at, so that the µs since the epoch a producer writes into a
/// message and the time a consumer reads it are on the same scale.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    started: Instant,
    started_wall_us: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let started_wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock {
            started: Instant::now(),
            started_wall_us,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// µs since the epoch.
    pub fn now_us(&self) -> u64 {
        self.at_us(Instant::now())
    }

    pub fn at_us(&self, instant: Instant) -> u64 {
        self.started_wall_us + instant.saturating_duration_since(self.started).as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// What the progress line shows; written by every task, read each second.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub acked_bytes: AtomicU64,
    pub consumed: AtomicU64,
    pub consumed_bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Latencies since the last progress line.
    pub interval_produce: Mutex<Option<Histogram<u64>>>,
    pub interval_end_to_end: Mutex<Option<Histogram<u64>>>,
    /// The first errors, by message, with how often each came.
    pub error_kinds: Mutex<BTreeMap<String, u64>>,
    /// Things that went wrong and were recovered from (a leader moved and
    /// the batch went to the new one), by message: not errors, but the
    /// report says they happened.
    pub notes: Mutex<BTreeMap<String, u64>>,
    /// One entry per second of the run, as the progress line shows it.
    pub timeline: Mutex<Vec<Value>>,
}

/// Seconds of the run the report's timeline keeps (a day).
pub const TIMELINE_SECONDS_MAX: usize = 86_400 + 600;

/// Distinct error messages kept; more are counted under one entry.
pub const ERROR_KINDS_MAX: usize = 32;

impl Live {
    pub fn new() -> Arc<Live> {
        let live = Live::default();
        *live.interval_produce.lock().expect("lock") = Some(latency_histogram());
        *live.interval_end_to_end.lock().expect("lock") = Some(latency_histogram());
        Arc::new(live)
    }

    pub fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts `count` failed messages (or requests) under `kind`.
    pub fn error(&self, kind: String, count: u64) {
        Live::add(&self.errors, count.max(1));
        let mut kinds = self.error_kinds.lock().expect("lock");
        let key = if kinds.len() >= ERROR_KINDS_MAX && !kinds.contains_key(&kind) {
            "other errors".to_string()
        } else {
            kind
        };
        *kinds.entry(key).or_insert(0) += count.max(1);
    }

    /// Notes something recovered from.
    pub fn note(&self, kind: String) {
        let mut notes = self.notes.lock().expect("lock");
        let key = if notes.len() >= ERROR_KINDS_MAX && !notes.contains_key(&kind) {
            "other notes".to_string()
        } else {
            kind
        };
        *notes.entry(key).or_insert(0) += 1;
    }

    /// Records latencies (µs) into an interval histogram.
    pub fn record(histogram: &Mutex<Option<Histogram<u64>>>, values: &[u64]) {
        let mut guard = histogram.lock().expect("lock");
        if let Some(histogram) = guard.as_mut() {
            for &value in values {
                histogram.saturating_record(value.clamp(1, LATENCY_US_MAX));
            }
        }
    }

    /// The interval's histogram, replaced by an empty one.
    pub fn take(histogram: &Mutex<Option<Histogram<u64>>>) -> Histogram<u64> {
        let mut guard = histogram.lock().expect("lock");
        guard
            .replace(latency_histogram())
            .unwrap_or_else(latency_histogram)
    }
}

/// A set of message sequences, one bit each.
#[derive(Clone, Debug, Default)]
pub struct BitSet {
    words: Vec<u64>,
    count: u64,
}

impl BitSet {
    /// Sets `bit`; returns whether it was set already.
    pub fn insert(&mut self, bit: u64) -> bool {
        let word = (bit / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << (bit % 64);
        let was = self.words[word] & mask != 0;
        if !was {
            self.words[word] |= mask;
            self.count += 1;
        }
        was
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds every bit of `other`.
    pub fn union_with(&mut self, other: &BitSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
        self.count = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }

    /// How many bits are set here and not in `other`.
    pub fn missing_from(&self, other: &BitSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(index, word)| {
                let theirs = other.words.get(index).copied().unwrap_or(0);
                u64::from((word & !theirs).count_ones())
            })
            .sum()
    }
}

/// CPU time this process has used, user and system, in seconds.
pub fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if result != 0 {
        return (0.0, 0.0);
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

/// CPU seconds (user + system) a local process has used, from
/// /proc/PID/stat, or `None` when it cannot be read.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it
    // start behind the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_sets_count_and_compare() {
        let mut acked = BitSet::default();
        let mut consumed = BitSet::default();
        for bit in [0, 5, 64, 1000] {
            assert!(!acked.insert(bit));
        }
        assert!(acked.insert(5));
        assert_eq!(acked.len(), 4);
        consumed.insert(5);
        consumed.insert(1000);
        consumed.insert(2000);
        assert_eq!(acked.missing_from(&consumed), 2);
        assert_eq!(consumed.missing_from(&acked), 1);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut spin = 0u64;
        for i in 0..1_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert!(spin > 0);
        let (user, system) = cpu_seconds();
        assert!(user + system > 0.0);
        assert!(process_cpu_seconds(std::process::id()).is_some());
    }
}
