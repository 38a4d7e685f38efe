//! What the report records about where it ran: cores, memory, the disk
//! under the baseline directory, the kernel, and the source revision.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .map(|line| {
                line.split_once(':')
                    .map_or(line, |(_, v)| v)
                    .trim()
                    .to_string()
            })
    })
}

fn uname() -> Value {
    // SAFETY: uname fills the struct it is given.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return Value::Null;
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    json!({
        "system": text(&name.sysname),
        "release": text(&name.release),
        "version": text(&name.version),
        "machine": text(&name.machine),
        "hostname": text(&name.nodename),
    })
}

/// The mount that holds `dir`: its device, file system type and size.
fn disk_of(dir: &Path) -> Value {
    let Ok(dir) = dir.canonicalize() else {
        return Value::Null;
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mount = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?, fields.next()?, fields.next()?))
        })
        .filter(|(_, point, _)| dir.starts_with(point))
        .max_by_key(|(_, point, _)| point.len());
    let (device, point, fs_type) = mount.unwrap_or(("unknown", "/", "unknown"));
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    let path = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).unwrap_or_default();
    // SAFETY: statvfs writes into the struct it is given; the path is a
    // valid C string.
    let size_bytes = if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } == 0 {
        Some(stats.f_blocks as u64 * stats.f_frsize as u64)
    } else {
        None
    };
    // /sys/block/<name>/queue/rotational for a whole-disk device name.
    let name = device.rsplit('/').next().unwrap_or("");
    let rotational = std::fs::read_to_string(format!("/sys/block/{name}/queue/rotational"))
        .ok()
        .map(|text| text.trim() == "1");
    json!({
        "directory": dir.display().to_string(),
        "device": device,
        "mount_point": point,
        "file_system": fs_type,
        "size_bytes": size_bytes,
        "rotational": rotational,
    })
}

/// The machine, for the report.
pub fn describe(baseline_dir: &Path) -> Value {
    let memory_kib: Option<u64> = first_line_with("/proc/meminfo", "MemTotal")
        .and_then(|value| value.split_whitespace().next().and_then(|v| v.parse().ok()));
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": first_line_with("/proc/cpuinfo", "model name"),
        "memory_bytes": memory_kib.map(|kib| kib * 1024),
        "kernel": uname(),
        "disk": disk_of(baseline_dir),
    })
}

/// The source revision: `git rev-parse HEAD` where the bench runs, else
/// `RUNNEL_GIT_REVISION` from the build's environment.
pub fn revision() -> Value {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    if let Some(commit) = git(&["rev-parse", "HEAD"]).filter(|c| !c.is_empty()) {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .map(|status| !status.is_empty());
        return json!({ "commit": commit, "dirty": dirty, "source": "git rev-parse HEAD" });
    }
    match option_env!("RUNNEL_GIT_REVISION") {
        Some(commit) => json!({ "commit": commit, "dirty": null, "source": "build" }),
        None => json!({ "commit": null, "dirty": null, "source": "unknown" }),
    }
}
