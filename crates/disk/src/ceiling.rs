//! The raw append ceiling of a disk: `pwrite` of `write_bytes` at the end of
//! a fresh file, then `fdatasync`, one after the other on the calling
//! thread, for a while. Nothing durable can be appended faster on that
//! disk at that write size, so the benchmarks (`benches/append.rs`,
//! `benches/log_append.rs`) and `runnel bench` print it beside what they
//! measure, from the same run.
//!
//! The file is created under the directory given, which must be on the file
//! system being measured (a tmpfs makes `fdatasync` free), and removed
//! afterwards.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Most bytes one measurement writes, so that a fast disk (or a file system
/// that ignores syncs) does not fill up during the time given.
pub const CEILING_BYTES_MAX: u64 = 2 << 30;

/// What one timed run of appends did.
#[derive(Clone, Copy, Debug)]
pub struct Appends {
    pub write_bytes: usize,
    pub appends: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Appends {
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }

    /// Appends (each followed by its fdatasync) per second.
    pub fn appends_per_second(&self) -> f64 {
        self.appends as f64 / self.seconds
    }
}

/// Appends `write_bytes` at a time, each followed by `fdatasync`, to a
/// fresh file `name` under `dir`, for `duration` or `bytes_max` bytes
/// (at most [`CEILING_BYTES_MAX`]), whichever comes first; then removes
/// the file.
pub fn raw_fdatasync_appends(
    dir: &Path,
    name: &str,
    write_bytes: usize,
    duration: Duration,
    bytes_max: u64,
) -> io::Result<Appends> {
    assert!(write_bytes > 0, "appends of zero bytes measure nothing");
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let data = vec![0x5A; write_bytes];
    let bytes_max = bytes_max.min(CEILING_BYTES_MAX);
    let started = Instant::now();
    let (mut appends, mut bytes) = (0u64, 0u64);
    let result = (|| {
        while started.elapsed() < duration && bytes < bytes_max {
            file.write_all_at(&data, bytes)?;
            file.sync_data()?;
            appends += 1;
            bytes += write_bytes as u64;
        }
        Ok::<(), io::Error>(())
    })();
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let removed = std::fs::remove_file(&path);
    result?;
    removed?;
    Ok(Appends {
        write_bytes,
        appends,
        bytes,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_and_cleans_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let appends = raw_fdatasync_appends(
            dir.path(),
            "ceiling",
            4096,
            Duration::from_millis(50),
            1 << 20,
        )
        .expect("appends");
        assert!(appends.appends >= 1);
        assert_eq!(appends.bytes, appends.appends * 4096);
        assert!(appends.bytes <= 1 << 20);
        assert!(!dir.path().join("ceiling").exists());
    }
}
