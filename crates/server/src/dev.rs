//! `runnel dev --nodes N`: a local cluster of N `runnel serve` processes
//! (this same binary) with separate data directories and consecutive ports,
//! stopped cleanly on Ctrl-C.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

/// Most nodes a dev cluster runs.
pub const DEV_NODES_MAX: u16 = 9;
/// How long the nodes may take to listen.
pub const DEV_START_TIMEOUT_MS: u64 = 30_000;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// How many nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Where the nodes keep their data (one directory each) and logs.
    #[arg(long, default_value = "./dev-data")]
    pub data_dir: PathBuf,
    /// The first node's Kafka port; the others follow.
    #[arg(long, default_value_t = 9092)]
    pub kafka_port: u16,
    /// The first node's peer port; the others follow.
    #[arg(long, default_value_t = 19092)]
    pub rpc_port: u16,
}

/// Runs the cluster until SIGINT or SIGTERM; returns the exit code.
pub fn run(args: DevArgs) -> u8 {
    if args.nodes == 0 || args.nodes > DEV_NODES_MAX {
        eprintln!("runnel: --nodes must be 1 to {DEV_NODES_MAX}");
        return 2;
    }
    let binary = match std::env::current_exe() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("runnel: cannot find this program's path: {error}");
            return 1;
        }
    };
    if let Err(error) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!("runnel: cannot create {}: {error}", args.data_dir.display());
        return 2;
    }
    let ids: Vec<u16> = (1..=args.nodes).collect();
    let kafka = |id: u16| format!("127.0.0.1:{}", args.kafka_port + id - 1);
    let rpc = |id: u16| format!("127.0.0.1:{}", args.rpc_port + id - 1);
    // A port another process holds would pass the readiness check below
    // (it accepts connections) while the node meant for it exits: refuse
    // up front, with the port named.
    for &id in &ids {
        for address in [kafka(id), rpc(id)] {
            if let Err(error) = std::net::TcpListener::bind(&address) {
                eprintln!("runnel: {address} is not free for node {id}: {error}");
                return 2;
            }
        }
    }
    let mut children: Vec<(u16, Child)> = Vec::new();
    for &id in &ids {
        let peers: Vec<String> = ids
            .iter()
            .filter(|&&other| other != id)
            .map(|&other| format!("{other}@{}={}", rpc(other), kafka(other)))
            .collect();
        let log_path = args.data_dir.join(format!("n{id}.log"));
        let log = match std::fs::File::create(&log_path) {
            Ok(log) => log,
            Err(error) => {
                eprintln!("runnel: cannot create {}: {error}", log_path.display());
                stop_all(&mut children);
                return 2;
            }
        };
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("n{id}")))
            .args(["--kafka-addr", &kafka(id), "--rpc-addr", &rpc(id)])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a file handle"))
            .stderr(log);
        if !peers.is_empty() {
            command.args(["--peers", &peers.join(",")]);
        }
        match command.spawn() {
            Ok(child) => children.push((id, child)),
            Err(error) => {
                eprintln!("runnel: cannot start node {id}: {error}");
                stop_all(&mut children);
                return 1;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_millis(DEV_START_TIMEOUT_MS);
    for &id in &ids {
        while TcpStream::connect(kafka(id)).is_err() {
            if Instant::now() > deadline || exited(&mut children) {
                eprintln!(
                    "runnel: node {id} did not start; see {}",
                    args.data_dir.join(format!("n{id}.log")).display()
                );
                stop_all(&mut children);
                return 1;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let bootstrap: Vec<String> = ids.iter().map(|&id| kafka(id)).collect();
    println!(
        "a {}-node cluster is up; data and logs in {}",
        args.nodes,
        args.data_dir.display()
    );
    println!("  bootstrap servers: {}", bootstrap.join(","));
    println!("  try: kcat -b {} -L", bootstrap[0]);
    println!(
        "       runnel topic create demo -p 6 -r {} -b {}",
        args.nodes.min(3),
        bootstrap[0]
    );
    println!("  Ctrl-C stops it.");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("runnel: {error}");
            stop_all(&mut children);
            return 1;
        }
    };
    let code = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let mut reported = std::collections::BTreeSet::new();
        loop {
            tokio::select! {
                _ = terminate.recv() => return 0,
                _ = interrupt.recv() => return 0,
                _ = check.tick() => {
                    // A node that exits (killed to try a failover, say) is
                    // reported once; the others go on.
                    for (id, child) in children.iter_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            if reported.insert(*id) {
                                eprintln!("node {id} exited ({status}); the others go on");
                            }
                        }
                    }
                }
            }
        }
    });
    stop_all(&mut children);
    println!("stopped");
    code
}

fn exited(children: &mut [(u16, Child)]) -> bool {
    children
        .iter_mut()
        .any(|(_, child)| matches!(child.try_wait(), Ok(Some(_))))
}

/// SIGTERM to every node, then waits for each (each drains and exits).
fn stop_all(children: &mut Vec<(u16, Child)>) {
    for (_, child) in children.iter() {
        // SAFETY: kill(2) on a child process id we own.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for (id, mut child) in children.drain(..) {
        if let Ok(Some(_)) = child.try_wait() {
            continue;
        }
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("runnel: node {id} exited with {status}"),
            Err(error) => eprintln!("runnel: node {id}: {error}"),
        }
    }
}
