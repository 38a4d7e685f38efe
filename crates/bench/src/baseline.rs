//! The machine's own limits, measured in the same run as the load so that
//! a report can say how far from them the broker is: the raw
//! append-and-fdatasync ceiling of the disk (the measurement of
//! `runnel_disk::ceiling`, at the write sizes a broker makes), and loopback
//! TCP bandwidth and round-trip time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use runnel_disk::ceiling::raw_fdatasync_appends;
use serde_json::{json, Value};

/// Bytes of each write in the loopback bandwidth test.
const LOOPBACK_CHUNK_BYTES: usize = 1 << 20;
/// Most round trips timed for the loopback latency.
const LOOPBACK_ROUND_TRIPS_MAX: usize = 200_000;
/// Most bytes one disk measurement writes.
const DISK_BYTES_MAX: u64 = 1 << 30;

/// The write sizes the disk is measured at: a 4 KiB append (one small
/// message), one batch of the run, and 1 and 4 MiB (many batches
/// group-committed under one fdatasync). The best of them is the ceiling
/// a broker that group-commits could reach.
pub fn write_sizes(batch_bytes: usize) -> Vec<usize> {
    let mut sizes = vec![4 << 10, batch_bytes, 1 << 20, 4 << 20];
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// The disk's raw ceiling at each size: a JSON row each, and the best MB/s.
pub fn disk(dir: &Path, sizes: &[usize], seconds: f64) -> Result<(Value, f64), String> {
    let mut rows = Vec::new();
    let mut best = 0.0f64;
    for &size in sizes {
        let appends = raw_fdatasync_appends(
            dir,
            ".runnel-bench-ceiling",
            size,
            Duration::from_secs_f64(seconds),
            DISK_BYTES_MAX,
        )
        .map_err(|error| format!("cannot measure the disk under {}: {error}", dir.display()))?;
        best = best.max(appends.megabytes_per_second());
        rows.push(json!({
            "write_bytes": size,
            "appends_per_s": appends.appends_per_second(),
            "mb_per_s": appends.megabytes_per_second(),
        }));
    }
    Ok((Value::Array(rows), best))
}

/// Loopback TCP: bandwidth of one stream (MB/s) and the round-trip time of
/// a 1-byte ping-pong (p50 and p99, µs).
pub fn loopback(seconds: f64) -> Result<Value, String> {
    let failed = |error: std::io::Error| format!("loopback test failed: {error}");
    let listener = TcpListener::bind("127.0.0.1:0").map_err(failed)?;
    let address = listener.local_addr().map_err(failed)?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; LOOPBACK_CHUNK_BYTES];
        let mut total = 0u64;
        loop {
            let read = stream.read(&mut buffer)?;
            if read == 0 {
                return Ok(total);
            }
            total += read as u64;
        }
    });
    let mut stream = TcpStream::connect(address).map_err(failed)?;
    let chunk = vec![0x5Au8; LOOPBACK_CHUNK_BYTES];
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        stream.write_all(&chunk).map_err(failed)?;
    }
    drop(stream);
    let received = reader
        .join()
        .map_err(|_| "the loopback reader panicked".to_string())?
        .map_err(failed)?;
    let bandwidth_mb_per_s = received as f64 / started.elapsed().as_secs_f64() / 1e6;

    let listener = TcpListener::bind("127.0.0.1:0").map_err(failed)?;
    let address = listener.local_addr().map_err(failed)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        while stream.read(&mut byte)? == 1 {
            stream.write_all(&byte)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(address).map_err(failed)?;
    stream.set_nodelay(true).map_err(failed)?;
    let mut round_trips_us = Vec::new();
    let started = Instant::now();
    let mut byte = [1u8; 1];
    while started.elapsed().as_secs_f64() < seconds / 4.0
        && round_trips_us.len() < LOOPBACK_ROUND_TRIPS_MAX
    {
        let sent = Instant::now();
        stream.write_all(&byte).map_err(failed)?;
        stream.read_exact(&mut byte).map_err(failed)?;
        round_trips_us.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    drop(stream);
    let _ = echo.join();
    round_trips_us.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let at = |quantile: f64| {
        let last = round_trips_us.len().saturating_sub(1);
        round_trips_us
            .get(((round_trips_us.len() as f64 * quantile) as usize).min(last))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(json!({
        "bandwidth_mb_per_s": bandwidth_mb_per_s,
        "round_trip_p50_us": at(0.50),
        "round_trip_p99_us": at(0.99),
        "round_trips": round_trips_us.len(),
    }))
}
