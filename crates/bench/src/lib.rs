//! runnel-bench: the load generator behind `runnel bench`.
//!
//! It speaks only standard Kafka APIs (ApiVersions, Metadata,
//! CreateTopics, ListOffsets, Produce, Fetch), so it measures any
//! Kafka-compatible broker. Producers and consumers run on one thread of
//! tokio (the client shares the machine with the brokers it measures):
//! each producer keeps one connection per broker with many produce
//! requests in flight, each request carrying a batch for each of several
//! partitions, routed to partition leaders from Metadata.
//!
//! A run measures the machine's own limits first ([`baseline`]), then
//! produces for `--duration-secs`, then lets the consumers read everything
//! that was acknowledged. It prints a progress line each second and a
//! summary, writes a JSON report with `--report`, and exits non-zero
//! unless every produced message was acknowledged and every acknowledged
//! message was consumed exactly once.
//!
//! - [`records`]: batches built and walked by hand, and the message header.
//! - [`connection`]: the pipelined asynchronous connection.
//! - [`producer`], [`consumer`]: the clients.
//! - [`stats`]: counters, histograms, the bit sets that check delivery.
//! - [`baseline`], [`machine`]: the machine's limits and description.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

pub mod args;
pub mod baseline;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod machine;
pub mod producer;
pub mod records;
pub mod stats;
pub mod totals;

pub use args::BenchArgs;
pub use runnel_kafka::errors::error_name;

use args::Acks;
use stats::{percentiles_ms, Clock, Live};

/// What stopped a run, and the exit code it maps to (as the other
/// `runnel` tools: 1 the broker refused, 2 bad usage, 3 no broker).
#[derive(Debug)]
pub enum BenchError {
    Connect(String),
    Kafka(String),
    Usage(String),
    Other(String),
}

impl BenchError {
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Connect(_) => 3,
            BenchError::Usage(_) => 2,
            BenchError::Kafka(_) | BenchError::Other(_) => 1,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Connect(message)
            | BenchError::Kafka(message)
            | BenchError::Usage(message)
            | BenchError::Other(message) => f.write_str(message),
        }
    }
}

/// With acks=0, how many times (200 ms apart) the end offsets are read
/// again until they stop moving, before the consumers are told where to
/// stop.
const ACKS_NONE_SETTLE_CHECKS_MAX: usize = 50;

/// Runs `runnel bench`; returns the exit code: 0 when every message was
/// acknowledged and consumed once, 1 when any was not (or the broker
/// refused), 2 for bad usage, 3 when no broker answers.
pub fn run(args: BenchArgs) -> u8 {
    if let Err(error) = args.validate() {
        eprintln!("runnel: {error}");
        return error.exit_code();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("runnel: cannot start the runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(error) => {
            eprintln!("runnel: {error}");
            error.exit_code()
        }
    }
}

fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

/// The whole run; `Ok(false)` when it finished but not every message made
/// it.
async fn bench(args: BenchArgs) -> Result<bool, BenchError> {
    let started_unix_ms = Clock::new().now_us() / 1000;
    let machine = machine::describe(&args.baseline_dir);
    let revision = machine::revision();
    let mut baseline_report = Value::Null;
    let mut disk_ceiling_mb_per_s = None;
    let mut loopback_mb_per_s = None;
    if !args.skip_baseline {
        let sizes = baseline::write_sizes(args.batch_bytes);
        let (rows, best) = baseline::disk(&args.baseline_dir, &sizes, args.baseline_secs)
            .map_err(BenchError::Other)?;
        let loopback = baseline::loopback(args.baseline_secs).map_err(BenchError::Other)?;
        println!(
            "baseline: disk under {} (pwrite + fdatasync each):",
            args.baseline_dir.display()
        );
        for row in rows.as_array().into_iter().flatten() {
            println!(
                "  {:>8} B writes: {:>8.0} appends/s {:>8.1} MB/s",
                row["write_bytes"],
                row["appends_per_s"].as_f64().unwrap_or(0.0),
                row["mb_per_s"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "baseline: loopback TCP {:.0} MB/s, round trip p50 {:.1} us",
            loopback["bandwidth_mb_per_s"].as_f64().unwrap_or(0.0),
            loopback["round_trip_p50_us"].as_f64().unwrap_or(0.0)
        );
        disk_ceiling_mb_per_s = Some(best);
        loopback_mb_per_s = loopback["bandwidth_mb_per_s"].as_f64();
        baseline_report = json!({
            "disk_fdatasync": rows,
            "disk_ceiling_mb_per_s": best,
            "loopback": loopback,
        });
    }

    let mut bootstrap = cluster::bootstrap(&args.bootstrap).await?;
    let (layout, created) = cluster::prepare_topic(
        &mut bootstrap,
        &args.topic,
        args.partitions,
        args.replication_factor,
        &args.topic_configs,
    )
    .await?;
    let replicas = layout.replicas;
    let start_offsets = cluster::end_offsets(&layout, &args.topic).await?;
    println!(
        "topic {}: {} partitions, {} replicas each, leaders on {} brokers{}",
        args.topic,
        layout.leaders.len(),
        replicas,
        layout
            .leaders
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        if created { " (created)" } else { "" }
    );

    let clock = Clock::new();
    let live = Live::new();
    let run_id = clock.now_us() ^ (u64::from(std::process::id()) << 44);
    let partitions = layout.partitions();
    let shared = Arc::new(producer::Shared {
        args: args.clone(),
        run_id,
        clock,
        live: live.clone(),
        layout: layout.clone(),
        keys: producer::KeyTable::new(args.keys, args.key_count, partitions.len() as i32),
        filler: producer::filler(run_id),
    });

    let cpu_before = stats::cpu_seconds();
    let watched_before: Vec<Option<f64>> = args
        .watch_pids
        .iter()
        .map(|&pid| stats::process_cpu_seconds(pid))
        .collect();
    let load_started = Instant::now();

    let (ends_sender, ends) = watch::channel(None);
    let mut consumers = Vec::new();
    for index in 0..args.consumers as usize {
        let mine: Vec<i32> = partitions
            .iter()
            .enumerate()
            .filter(|(position, _)| position % args.consumers as usize == index)
            .map(|(_, &partition)| partition)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let setup = consumer::ConsumerSetup {
            run_id,
            clock,
            live: live.clone(),
            layout: layout.clone(),
            topic: args.topic.clone(),
            bootstrap: args.bootstrap.clone(),
            start: start_offsets.clone(),
            partitions: mine,
        };
        consumers.push(tokio::spawn(consumer::run(setup, ends.clone())));
    }
    drop(ends);

    let stop_at = Instant::now() + Duration::from_secs(args.duration_secs);
    let mut producers = Vec::new();
    for index in 0..args.producers {
        producers.push(tokio::spawn(producer::run(index, shared.clone(), stop_at)));
    }
    let progress = tokio::spawn(progress(live.clone(), load_started, args.quiet));

    let mut produced = Vec::new();
    let mut first_error = None;
    for handle in producers {
        match handle.await {
            Ok(Ok(result)) => produced.push(result),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(BenchError::Other(format!("a producer failed: {error}")));
            }
        }
    }
    if let Some(error) = first_error.take() {
        progress.abort();
        return Err(error);
    }
    let producing_ended = Instant::now();
    let mut end_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    if args.acks == Acks::None {
        // Nothing was acknowledged: read what the logs hold once they stop
        // growing (the broker may still be writing what was sent).
        end_offsets = cluster::end_offsets(&layout, &args.topic).await?;
        for _ in 0..ACKS_NONE_SETTLE_CHECKS_MAX {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = cluster::end_offsets(&layout, &args.topic).await?;
            if now == end_offsets {
                break;
            }
            end_offsets = now;
        }
    } else {
        for result in &produced {
            for (&partition, &end) in &result.end_offsets {
                let entry = end_offsets.entry(partition).or_insert(end);
                *entry = (*entry).max(end);
            }
        }
    }
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    let _ = ends_sender.send(Some((end_offsets, drain_deadline)));
    let mut consumed = Vec::new();
    for handle in consumers {
        match handle.await {
            Ok(Ok(result)) => consumed.push(result),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(BenchError::Other(format!("a consumer failed: {error}")));
            }
        }
    }
    progress.abort();
    if let Some(error) = first_error {
        return Err(error);
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    let cpu_after = stats::cpu_seconds();

    let totals = totals::Totals::new(
        args.acks,
        &produced,
        &consumed,
        load_started,
        producing_ended,
        Live::get(&live.errors),
    );
    let totals::Totals {
        sent,
        sent_bytes,
        acknowledged,
        acked_bytes,
        produce_errors,
        produce_latency,
        produce_seconds,
        consumer_count,
        consumed_count,
        consumed_bytes,
        duplicates,
        foreign,
        consume_errors,
        unfinished,
        end_to_end,
        consume_seconds,
        verified,
        lost,
        consumed_unacknowledged,
        errors,
        delivered,
        counted,
        counted_bytes,
    } = totals;
    let produce_mb_per_s = mb(counted_bytes as f64) / produce_seconds;
    let produce_messages_per_s = counted as f64 / produce_seconds;
    let consume_mb_per_s = mb(consumed_bytes as f64) / consume_seconds;
    let cpu_user = cpu_after.0 - cpu_before.0;
    let cpu_system = cpu_after.1 - cpu_before.1;
    let watched: Vec<Value> = args
        .watch_pids
        .iter()
        .zip(watched_before)
        .map(|(&pid, before)| {
            let after = stats::process_cpu_seconds(pid);
            let used = before.zip(after).map(|(b, a)| a - b);
            json!({
                "pid": pid,
                "cpu_s": used,
                "cores_used": used.map(|u| u / load_seconds),
            })
        })
        .collect();

    let watched_cpu_s: Option<f64> =
        (!watched.is_empty()).then(|| watched.iter().filter_map(|w| w["cpu_s"].as_f64()).sum());
    println!();
    if args.acks == Acks::None {
        println!(
            "produce: {sent} messages sent in {produce_seconds:.1} s: {produce_messages_per_s:.0} msg/s, {produce_mb_per_s:.1} MB/s (acks=0: none acknowledged)"
        );
    } else {
        println!(
            "produce: {acknowledged} of {sent} messages acknowledged in {produce_seconds:.1} s: {produce_messages_per_s:.0} msg/s, {produce_mb_per_s:.1} MB/s (acks={})",
            if args.acks == Acks::Leader { "1" } else { "all" }
        );
    }
    if !produce_latency.is_empty() {
        println!("  produce latency    {}", latency_line(&produce_latency));
    }
    if consumer_count > 0 {
        println!(
            "consume: {consumed_count} messages in {consume_seconds:.1} s: {:.0} msg/s, {consume_mb_per_s:.1} MB/s",
            consumed_count as f64 / consume_seconds
        );
        if !end_to_end.is_empty() {
            println!("  end-to-end latency {}", latency_line(&end_to_end));
        }
    }
    let disk_written_mb_per_s = produce_mb_per_s * replicas as f64;
    if let Some(ceiling) = disk_ceiling_mb_per_s {
        println!(
            "versus the machine: {:.0} % of the disk's fdatasync ceiling ({ceiling:.1} MB/s){}",
            100.0 * produce_mb_per_s / ceiling,
            if replicas > 1 {
                format!(
                    "; {:.0} % counting all {replicas} replicas, when they share this disk",
                    100.0 * disk_written_mb_per_s / ceiling
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "client CPU: {:.2} s user, {:.2} s system over {load_seconds:.1} s ({:.0} % of one core)",
        cpu_user,
        cpu_system,
        100.0 * (cpu_user + cpu_system) / load_seconds
    );
    if let Some(cpu) = watched_cpu_s {
        println!(
            "watched processes' CPU: {cpu:.2} s over {load_seconds:.1} s ({:.2} cores), {:.1} us per message",
            cpu / load_seconds,
            cpu * 1e6 / counted.max(1) as f64
        );
    }
    if verified {
        println!(
            "delivery: {lost} acknowledged messages not consumed, {duplicates} consumed twice, {consumed_unacknowledged} consumed but not acknowledged{}",
            if unfinished.is_empty() {
                String::new()
            } else {
                format!(", partitions {unfinished:?} not read to their end in {} s", args.drain_secs)
            }
        );
    }
    let error_kinds = live.error_kinds.lock().expect("lock").clone();
    let notes = live.notes.lock().expect("lock").clone();
    let rerouted_batches: u64 = produced.iter().map(|r| r.rerouted_batches).sum();
    if errors > 0 {
        println!("errors: {errors}");
        for (kind, count) in &error_kinds {
            println!("  {count} x {kind}");
        }
    }
    if !notes.is_empty() {
        println!("recovered from:");
        for (kind, count) in &notes {
            println!("  {count} x {kind}");
        }
    }

    if let Some(path) = &args.report {
        let report = json!({
            "tool": "runnel bench",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "started_unix_ms": started_unix_ms,
            "revision": revision,
            "machine": machine,
            "config": serde_json::to_value(&args).unwrap_or(Value::Null),
            "baseline": baseline_report,
            "topic": {
                "name": args.topic,
                "created": created,
                "partitions": layout.leaders.len(),
                "replicas": replicas,
                "leaders": layout.leaders.iter().map(|(p, l)| (p.to_string(), json!(l))).collect::<serde_json::Map<_, _>>(),
                "brokers": layout.brokers.iter().map(|(id, a)| (id.to_string(), json!(a))).collect::<serde_json::Map<_, _>>(),
            },
            "produce": {
                "sent": sent,
                "acknowledged": acknowledged,
                "acknowledged_bytes": acked_bytes,
                "errors": produce_errors,
                "seconds": produce_seconds,
                "sent_bytes": sent_bytes,
                "messages_per_s": produce_messages_per_s,
                "mb_per_s": produce_mb_per_s,
                "latency": percentiles_ms(&produce_latency),
            },
            "consume": {
                "consumers": consumer_count,
                "consumed": consumed_count,
                "consumed_bytes": consumed_bytes,
                "errors": consume_errors,
                "seconds": consume_seconds,
                "messages_per_s": consumed_count as f64 / consume_seconds,
                "mb_per_s": consume_mb_per_s,
                "end_to_end_latency": percentiles_ms(&end_to_end),
                "foreign_records": foreign,
            },
            "delivery": {
                "verified": verified,
                "lost": lost,
                "duplicates": duplicates,
                "consumed_unacknowledged": consumed_unacknowledged,
                "unfinished_partitions": unfinished,
                "ok": delivered,
            },
            "errors": {
                "total": errors,
                "kinds": error_kinds,
                "recovered": notes,
                "rerouted_batches": rerouted_batches,
            },
            "client_cpu": {
                "user_s": cpu_user,
                "system_s": cpu_system,
                "wall_s": load_seconds,
                "cores_used": (cpu_user + cpu_system) / load_seconds,
            },
            "timeline": live.timeline.lock().expect("lock").clone(),
            "watched_processes": watched,
            "watched_cpu": {
                "cpu_s": watched_cpu_s,
                "cores_used": watched_cpu_s.map(|cpu| cpu / load_seconds),
                "us_per_message": watched_cpu_s.map(|cpu| cpu * 1e6 / counted.max(1) as f64),
            },
            "versus_limits": {
                "disk_ceiling_mb_per_s": disk_ceiling_mb_per_s,
                "produce_of_disk_ceiling": disk_ceiling_mb_per_s.map(|c| produce_mb_per_s / c),
                "disk_written_mb_per_s_if_replicas_share_the_disk": disk_written_mb_per_s,
                "disk_written_of_ceiling": disk_ceiling_mb_per_s.map(|c| disk_written_mb_per_s / c),
                "loopback_mb_per_s": loopback_mb_per_s,
                "produce_of_loopback": loopback_mb_per_s.map(|l| produce_mb_per_s / l),
            },
        });
        let text = serde_json::to_string_pretty(&report).expect("a JSON value serializes");
        std::fs::write(path, text + "\n").map_err(|error| {
            BenchError::Other(format!("cannot write {}: {error}", path.display()))
        })?;
        println!("report: {}", path.display());
    }
    Ok(delivered)
}

fn latency_line(histogram: &hdrhistogram::Histogram<u64>) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.value_at_quantile(0.999)),
        ms(histogram.max())
    )
}

/// A line each second (unless `quiet`): rates over the last second and
/// its latencies, also kept for the report's timeline.
async fn progress(live: Arc<Live>, started: Instant, quiet: bool) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (0u64, 0u64, 0u64, 0u64);
    loop {
        tick.tick().await;
        let now = (
            Live::get(&live.sent),
            Live::get(&live.acked),
            Live::get(&live.acked_bytes),
            Live::get(&live.consumed),
        );
        let produce = Live::take(&live.interval_produce);
        let end_to_end = Live::take(&live.interval_end_to_end);
        let p99_ms = |histogram: &hdrhistogram::Histogram<u64>| {
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.99) as f64 / 1000.0)
        };
        let shown = |p99: Option<f64>| p99.map_or("-".to_string(), |ms| format!("{ms:.1} ms"));
        let second = json!({
            "second": started.elapsed().as_secs_f64().round(),
            "sent": now.0 - last.0,
            "acknowledged": now.1 - last.1,
            "mb": mb((now.2 - last.2) as f64),
            "produce_p99_ms": p99_ms(&produce),
            "consumed": now.3 - last.3,
            "end_to_end_p99_ms": p99_ms(&end_to_end),
            "errors": Live::get(&live.errors),
        });
        if !quiet {
            println!(
                "[{:>4.0}s] sent {:>7}/s  acked {:>7}/s {:>6.1} MB/s  p99 {:>8} | consumed {:>7}/s  e2e p99 {:>8} | errors {}",
                started.elapsed().as_secs_f64(),
                now.0 - last.0,
                now.1 - last.1,
                mb((now.2 - last.2) as f64),
                shown(p99_ms(&produce)),
                now.3 - last.3,
                shown(p99_ms(&end_to_end)),
                Live::get(&live.errors)
            );
        }
        let mut timeline = live.timeline.lock().expect("lock");
        if timeline.len() < stats::TIMELINE_SECONDS_MAX {
            timeline.push(second);
        }
        last = now;
    }
}
