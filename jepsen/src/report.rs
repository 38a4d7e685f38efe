//! Judging a run and writing what it found: the verdict as JSON, a short
//! text summary, and two hand-written SVG plots (latency over time with the
//! fault windows shaded, throughput over time).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use runnel_checkers::availability::{availability, Availability};
use runnel_checkers::committed_offsets::{check_committed_offsets, CommittedOffsetsVerdict};
use runnel_checkers::history::{pair_operations, Event, Operation, Outcome, QueueOp};
use runnel_checkers::kafka_queue::{check_queue, QueueCheckOptions, QueueVerdict};
use runnel_checkers::latency::{latency, Latency};
use serde::Serialize;

use crate::nemesis::Fault;
use crate::workload::{is_out_of_range, FOREIGN_VALUE};

/// A fault window as it really happened, in nanoseconds since the start.
#[derive(Clone, Debug, Serialize)]
pub struct AppliedWindow {
    pub start_ns: u64,
    pub end_ns: u64,
    pub faults: Vec<Fault>,
}

/// What the harness itself saw go wrong (beside the history).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunProblems {
    /// Nodes that exited without the nemesis killing them.
    pub node_crashes: Vec<String>,
    /// The final read's failure, if it did not finish.
    pub final_read: Option<String>,
    /// Faults that could not be started or healed.
    pub nemesis_errors: Vec<String>,
    /// The history file could not be written, or filled up.
    pub history: Option<String>,
    /// The run was interrupted (SIGINT or SIGTERM).
    pub interrupted: bool,
}

/// Availability and latency of one kind of operation.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub availability: Availability,
    pub latency: Latency,
}

/// The verdict of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// True when the history is valid and the run had no problems.
    pub valid: bool,
    pub seed: u64,
    pub operations: u64,
    /// The queue checker's judgement.
    pub queue: QueueVerdict,
    /// The committed-offsets linearizability check (the `offsets` workload).
    pub committed_offsets: CommittedOffsetsVerdict,
    /// Records whose payload no send of this run wrote.
    pub foreign_records: u64,
    /// Polls in which librdkafka reported a position reset: the broker
    /// called a fetch position out of range, leader-epoch validation saw a
    /// truncation, or (at the start) the earliest offset could not be
    /// resolved yet. The workers resume where they were, so no read is
    /// wrong; but positions they had read up to should never be out of
    /// range. Reported, not counted against validity.
    pub offset_out_of_range: u64,
    /// Completions without invocations and overlapping invocations.
    pub malformed_events: u64,
    /// Per function (`send`, `poll`, `assign`).
    pub measured: BTreeMap<&'static str, Measured>,
    pub fault_windows: usize,
    pub problems: RunProblems,
}

fn function(op: &QueueOp) -> &'static str {
    match op {
        QueueOp::Send { .. } => "send",
        QueueOp::Poll { .. } => "poll",
        QueueOp::Assign { .. } => "assign",
        QueueOp::Commit { .. } => "commit",
        QueueOp::FetchCommitted { .. } => "fetch_committed",
    }
}

/// Checks the history.
pub fn judge(
    seed: u64,
    events: &[Event<QueueOp>],
    windows: &[AppliedWindow],
    problems: RunProblems,
) -> (Verdict, Vec<Operation<QueueOp>>) {
    let (operations, pairing) = pair_operations(events);
    let queue = check_queue(&operations, QueueCheckOptions::default());
    let committed_offsets = check_committed_offsets(&operations);
    let foreign_records = operations
        .iter()
        .filter(|operation| operation.outcome == Outcome::Ok)
        .filter_map(|operation| match operation.completed.as_ref() {
            Some(QueueOp::Poll { records }) => Some(
                records
                    .values()
                    .flatten()
                    .filter(|record| record.value == FOREIGN_VALUE)
                    .count() as u64,
            ),
            _ => None,
        })
        .sum();
    let offset_out_of_range = operations
        .iter()
        .filter(|operation| matches!(operation.invoked, QueueOp::Poll { .. }))
        .filter(|operation| operation.error.as_deref().is_some_and(is_out_of_range))
        .count() as u64;
    let spans: Vec<(u64, u64)> = windows
        .iter()
        .map(|window| (window.start_ns, window.end_ns))
        .collect();
    let mut measured = BTreeMap::new();
    for name in ["send", "poll", "assign", "commit", "fetch_committed"] {
        let of_kind: Vec<Operation<QueueOp>> = operations
            .iter()
            .filter(|operation| function(&operation.invoked) == name)
            .cloned()
            .collect();
        if of_kind.is_empty() {
            continue;
        }
        measured.insert(
            name,
            Measured {
                availability: availability(&of_kind, &spans),
                latency: latency(&of_kind),
            },
        );
    }
    let malformed_events =
        (pairing.unmatched_completions.len() + pairing.overlapping_invocations.len()) as u64;
    let valid = queue.valid
        && committed_offsets.valid
        && foreign_records == 0
        && malformed_events == 0
        && problems.node_crashes.is_empty()
        && problems.final_read.is_none()
        && problems.nemesis_errors.is_empty()
        && problems.history.is_none()
        && !problems.interrupted
        && queue.stats.sends_ok > 0;
    let verdict = Verdict {
        valid,
        seed,
        operations: operations.len() as u64,
        queue,
        committed_offsets,
        foreign_records,
        offset_out_of_range,
        malformed_events,
        measured,
        fault_windows: windows.len(),
        problems,
    };
    (verdict, operations)
}

/// A short text summary.
pub fn summary(verdict: &Verdict) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} (seed {}): {} operations, {} fault windows",
        if verdict.valid { "VALID" } else { "INVALID" },
        verdict.seed,
        verdict.operations,
        verdict.fault_windows
    );
    let stats = &verdict.queue.stats;
    let _ = writeln!(
        text,
        "  sends: {} ok, {} failed, {} indeterminate; polls: {} ok; {} values read over {} keys",
        stats.sends_ok,
        stats.sends_failed,
        stats.sends_indeterminate,
        stats.polls_ok,
        stats.values_read,
        stats.keys
    );
    for (name, measured) in &verdict.measured {
        let _ = writeln!(
            text,
            "  {name}: {:.1}% ok during faults ({} ops), {:.1}% without; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            measured.availability.during_faults.fraction * 100.0,
            measured.availability.during_faults.total,
            measured.availability.without_faults.fraction * 100.0,
            measured.latency.p50_ms,
            measured.latency.p99_ms,
            measured.latency.max_ms
        );
    }
    if verdict.queue.anomalies.is_empty() {
        let _ = writeln!(text, "  anomalies: none");
    }
    for (name, report) in &verdict.queue.anomalies {
        let _ = writeln!(text, "  anomaly {name}: {}", report.count);
        for example in report.examples.iter().take(3) {
            let _ = writeln!(text, "    e.g. {example}");
        }
    }
    let offsets = &verdict.committed_offsets;
    if offsets.registers > 0 {
        let _ = writeln!(
            text,
            "  committed offsets: {} registers, {} operations, {}",
            offsets.registers,
            offsets.operations,
            if offsets.valid {
                "linearizable".to_string()
            } else {
                format!("{} NOT linearizable", offsets.not_linearizable_count)
            }
        );
        for failure in offsets.not_linearizable.iter().take(3) {
            let _ = writeln!(text, "    {failure}");
        }
        for unknown in &offsets.unknown {
            let _ = writeln!(text, "    unproven: {unknown}");
        }
    }
    if verdict.foreign_records > 0 {
        let _ = writeln!(
            text,
            "  records not written by this run: {}",
            verdict.foreign_records
        );
    }
    if verdict.offset_out_of_range > 0 {
        let _ = writeln!(
            text,
            "  warning: {} polls reported a position reset (out of range, truncation, or no offset to reset to); the consumers resumed where they were",
            verdict.offset_out_of_range
        );
    }
    if verdict.malformed_events > 0 {
        let _ = writeln!(
            text,
            "  malformed history events: {}",
            verdict.malformed_events
        );
    }
    let problems = &verdict.problems;
    for crash in &problems.node_crashes {
        let _ = writeln!(text, "  node crashed: {crash}");
    }
    if let Some(error) = &problems.final_read {
        let _ = writeln!(text, "  final read incomplete: {error}");
    }
    for error in &problems.nemesis_errors {
        let _ = writeln!(text, "  nemesis error: {error}");
    }
    if let Some(error) = &problems.history {
        let _ = writeln!(text, "  history: {error}");
    }
    if problems.interrupted {
        let _ = writeln!(text, "  interrupted");
    }
    text
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;
/// Most points drawn in the latency plot; more are thinned evenly.
pub const PLOT_POINTS_MAX: usize = 20_000;

struct Frame {
    end_s: f64,
    y_max: f64,
    log_y: bool,
}

impl Frame {
    fn x(&self, seconds: f64) -> f64 {
        LEFT + seconds / self.end_s.max(1e-9) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, value: f64) -> f64 {
        let fraction = if self.log_y {
            (value.max(0.1).log10() + 1.0) / (self.y_max.max(0.1).log10() + 1.0)
        } else {
            value / self.y_max.max(1e-9)
        };
        HEIGHT - BOTTOM - fraction.clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
    }
}

fn svg_start(title: &str, frame: &Frame, windows: &[AppliedWindow], y_label: &str) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="13">{title}</text>"#
    );
    for window in windows {
        let x0 = frame.x(window.start_ns as f64 / 1e9);
        let x1 = frame.x(window.end_ns as f64 / 1e9);
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#f4c7c3" opacity="0.6"><title>{}</title></rect>"##,
            (x1 - x0).max(0.5),
            HEIGHT - TOP - BOTTOM,
            window
                .faults
                .iter()
                .map(|fault| serde_json::to_string(fault).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
                .replace('&', "&amp;")
                .replace('<', "&lt;")
        );
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{0}" stroke="black"/>"#,
        HEIGHT - BOTTOM,
        WIDTH - RIGHT
    );
    let step = (frame.end_s / 10.0).max(1.0).ceil();
    let mut tick = 0.0;
    while tick <= frame.end_s {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{tick:.0}</text>"#,
            frame.x(tick),
            HEIGHT - BOTTOM + 14.0
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds (shaded: faults active)</text>"#,
        (WIDTH + LEFT) / 2.0,
        HEIGHT - 8.0
    );
    let ticks: Vec<f64> = if frame.log_y {
        let mut ticks = vec![0.1];
        while *ticks.last().expect("non-empty") * 10.0 <= frame.y_max {
            ticks.push(ticks.last().expect("non-empty") * 10.0);
        }
        ticks
    } else {
        (0..=4).map(|i| frame.y_max * f64::from(i) / 4.0).collect()
    };
    for value in ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{value}</text>"#,
            LEFT - 4.0,
            frame.y(value) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="14" y="{}" transform="rotate(-90 14 {0})" text-anchor="middle">{y_label}</text>"#,
        HEIGHT / 2.0
    );
    svg
}

fn color(operation: &Operation<QueueOp>) -> &'static str {
    match (function(&operation.invoked), operation.outcome) {
        (_, Outcome::Fail) => "#d62728",
        (_, Outcome::Info) => "#ff7f0e",
        ("send", _) => "#1f77b4",
        ("poll", _) => "#2ca02c",
        _ => "#9467bd",
    }
}

fn end_seconds(operations: &[Operation<QueueOp>], windows: &[AppliedWindow]) -> f64 {
    let last_op = operations
        .iter()
        .map(|operation| operation.complete_ns.unwrap_or(operation.invoke_ns))
        .max()
        .unwrap_or(0);
    let last_window = windows
        .iter()
        .map(|window| window.end_ns)
        .max()
        .unwrap_or(0);
    last_op.max(last_window) as f64 / 1e9
}

fn legend(svg: &mut String, entries: &[(&str, &str)]) {
    for (position, (label, fill)) in entries.iter().enumerate() {
        let x = WIDTH - RIGHT - 110.0 * (entries.len() - position) as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="8" width="10" height="10" fill="{fill}"/><text x="{}" y="17">{label}</text>"#,
            x + 14.0
        );
    }
}

/// Latency of every operation over time, log scale, one dot per operation
/// (at its invocation), coloured by kind and outcome.
pub fn latency_svg(operations: &[Operation<QueueOp>], windows: &[AppliedWindow]) -> String {
    let measured: Vec<(&Operation<QueueOp>, f64)> = operations
        .iter()
        .filter_map(|operation| Some((operation, operation.latency_ns()? as f64 / 1e6)))
        .collect();
    let y_max = measured.iter().map(|(_, ms)| *ms).fold(1.0, f64::max);
    let frame = Frame {
        end_s: end_seconds(operations, windows),
        y_max: 10f64.powf(y_max.log10().ceil()),
        log_y: true,
    };
    let mut svg = svg_start(
        "Latency per operation",
        &frame,
        windows,
        "latency (ms, log)",
    );
    legend(
        &mut svg,
        &[
            ("send ok", "#1f77b4"),
            ("poll ok", "#2ca02c"),
            ("fail", "#d62728"),
            ("info", "#ff7f0e"),
        ],
    );
    let stride = measured.len().div_ceil(PLOT_POINTS_MAX).max(1);
    for (operation, ms) in measured.iter().step_by(stride) {
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{}"/>"#,
            frame.x(operation.invoke_ns as f64 / 1e9),
            frame.y(*ms),
            color(operation)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Operations completed per second, by kind and outcome.
pub fn throughput_svg(operations: &[Operation<QueueOp>], windows: &[AppliedWindow]) -> String {
    let end_s = end_seconds(operations, windows);
    let buckets = end_s.ceil() as usize + 1;
    let series: [(&str, &str); 4] = [
        ("send ok", "#1f77b4"),
        ("poll ok", "#2ca02c"),
        ("fail", "#d62728"),
        ("info", "#ff7f0e"),
    ];
    let mut counts = vec![vec![0u64; buckets]; series.len()];
    for operation in operations {
        let Some(complete) = operation.complete_ns else {
            continue;
        };
        let bucket = ((complete / 1_000_000_000) as usize).min(buckets - 1);
        let line = match (function(&operation.invoked), operation.outcome) {
            (_, Outcome::Fail) => 2,
            (_, Outcome::Info) => 3,
            ("send", _) => 0,
            ("poll", _) => 1,
            _ => continue,
        };
        counts[line][bucket] += 1;
    }
    let y_max = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    let frame = Frame {
        end_s,
        y_max: (y_max / 10.0).ceil() * 10.0,
        log_y: false,
    };
    let mut svg = svg_start("Throughput", &frame, windows, "operations per second");
    legend(&mut svg, &series);
    for (line, (_, stroke)) in series.iter().enumerate() {
        let points: Vec<String> = counts[line]
            .iter()
            .enumerate()
            .map(|(second, &count)| {
                format!(
                    "{:.1},{:.1}",
                    frame.x(second as f64 + 0.5),
                    frame.y(count as f64)
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{stroke}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
    }
    svg.push_str("</svg>\n");
    svg
}
