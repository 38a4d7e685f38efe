//! The test network: one network namespace per node, joined by veth pairs to
//! a bridge in the root namespace, on a subnet private to the test.
//!
//! ```text
//!   root namespace: bridge rj-br0 10.77.0.254/24 (the clients live here)
//!     |-- rj-v1 <veth> eth0 10.77.0.1 in namespace rj-n1 (node 1)
//!     |-- rj-v2 <veth> eth0 10.77.0.2 in namespace rj-n2 (node 2)
//!     ...
//! ```
//!
//! Partitions are nftables rules inside the namespaces that drop packets by
//! source address on input, so a rule on node A against node B cuts B -> A
//! only (a one-way partition); a symmetric cut is a rule on each side. The
//! clients' address is never dropped: as in Jepsen, the clients see every
//! node and the nodes fight among themselves.
//!
//! Traffic never leaves the machine: an `unreachable` route for the subnet
//! sits under the bridge's route for the whole run, so that a client still
//! running while the bridge is missing gets an error instead of the default
//! route. Every name starts with `rj-`, and [`cleanup`] removes whatever a previous,
//! interrupted run left behind (namespaces, bridge, processes inside them).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Most nodes the subnet gives addresses to.
pub const NODES_MAX: u16 = 9;
/// The bridge in the root namespace.
pub const BRIDGE: &str = "rj-br0";
/// The clients' address, on the bridge.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
/// The test subnet.
pub const SUBNET: &str = "10.77.0.0/24";
/// The metric of the safety route: an `unreachable` route for the subnet,
/// above the bridge's connected route (metric 0), so that while the bridge
/// is missing (being set up or torn down) traffic for the subnet fails here
/// instead of leaving through the default route.
pub const SAFETY_ROUTE_METRIC: &str = "4000";

/// The namespace of node `id`.
pub fn namespace(id: u16) -> String {
    format!("rj-n{id}")
}

/// The address of node `id` inside its namespace.
pub fn node_addr(id: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, id as u8)
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs a command whose failure does not matter (removing what may not exist).
fn run_quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The namespaces a previous run left, by name.
fn leftover_namespaces() -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("rj-n"))
        .map(str::to_string)
        .collect()
}

/// Removes everything of a test network: kills the processes left in its
/// namespaces (by pid, only those inside `rj-` namespaces), deletes the
/// namespaces (which deletes their veth ends) and the bridge. Safe to call
/// when nothing is there.
pub fn cleanup() {
    for name in leftover_namespaces() {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) with a pid read from our own namespace.
                    unsafe {
                        libc::kill(pid, libc::SIGCONT);
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
        run_quietly("ip", &["netns", "del", &name]);
    }
    for id in 1..=NODES_MAX {
        run_quietly("ip", &["link", "del", &format!("rj-v{id}")]);
    }
    run_quietly("ip", &["link", "del", BRIDGE]);
    run_quietly(
        "ip",
        &[
            "route",
            "del",
            "unreachable",
            SUBNET,
            "metric",
            SAFETY_ROUTE_METRIC,
        ],
    );
}

/// Creates the bridge and one namespace per node, `1..=nodes`.
pub fn setup(nodes: u16) -> Result<(), String> {
    if nodes == 0 || nodes > NODES_MAX {
        return Err(format!("--nodes must be 1 to {NODES_MAX}"));
    }
    run(
        "ip",
        &[
            "route",
            "add",
            "unreachable",
            SUBNET,
            "metric",
            SAFETY_ROUTE_METRIC,
        ],
    )?;
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    for id in 1..=nodes {
        let ns = namespace(id);
        let outside = format!("rj-v{id}");
        let inside = format!("rj-p{id}");
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ],
        )?;
        run("ip", &["link", "set", &inside, "netns", &ns])?;
        run("ip", &["link", "set", &outside, "master", BRIDGE])?;
        run("ip", &["link", "set", &outside, "up"])?;
        run("ip", &["-n", &ns, "link", "set", &inside, "name", "eth0"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", node_addr(id)),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Makes node `id` drop every packet from the nodes in `blocked` (and accept
/// everything else), replacing whatever rules it had.
pub fn set_blocked(id: u16, blocked: &BTreeSet<u16>) -> Result<(), String> {
    let mut script = String::from("flush ruleset\n");
    if !blocked.is_empty() {
        let sources: Vec<String> = blocked
            .iter()
            .map(|&other| node_addr(other).to_string())
            .collect();
        script.push_str(&format!(
            "table inet runnel_jepsen {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
            sources.join(", ")
        ));
    }
    let ns = namespace(id);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("nft in {ns}: {error}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|error| format!("nft in {ns}: {error}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| format!("nft in {ns}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft in {ns}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
