//! `runnel`: the broker and its command-line tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use runnel_server::config::{ServeConfig, ServeFlags};
use runnel_server::{cli, client, dev, shell};

#[derive(Parser, Debug)]
#[command(
    name = "runnel",
    version,
    about = "A Kafka-compatible broker whose partitions are consensus-replicated logs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker node (one node on 127.0.0.1:9092 with data in ./data by default).
    Serve(ServeFlags),
    /// Create, list, describe and delete topics on any Kafka broker.
    Topic {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(subcommand)]
        command: cli::TopicCommand,
    },
    /// Produce the lines of stdin as records.
    Produce {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(flatten)]
        args: cli::ProduceArgs,
    },
    /// Print the records of a partition, or with --group those the group
    /// gives this member.
    Consume {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(flatten)]
        args: cli::ConsumeArgs,
    },
    /// The cluster's nodes, partition leaders, and under-replicated partitions.
    Cluster {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List, describe, delete consumer groups; reset a stopped group's offsets.
    Group {
        #[command(flatten)]
        connect: cli::Connect,
        #[command(subcommand)]
        command: runnel_server::group_cli::GroupCommand,
    },
    /// A local cluster for trying things out; Ctrl-C stops it.
    Dev(dev::DevArgs),
    /// A load generator for any Kafka broker: throughput and latency
    /// beside the machine's own limits (see docs/performance.md).
    Bench(runnel_bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Nodes, who leads what, and partitions that are under-replicated.
    Status,
    /// Add a node, started with `runnel serve --join`, to the cluster.
    AddNode(cli::AddNodeArgs),
    /// Remove a node: its replicas move to other nodes, then it leaves the
    /// metadata group; stop it once `cluster status` no longer lists it.
    RemoveNode { node_id: u64 },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap prints help and version to stdout with exit code 0, and
            // usage errors to stderr; usage errors exit with 2.
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Serve(flags) => {
            let config = match ServeConfig::resolve(&flags) {
                Ok(config) => config,
                Err(message) => {
                    eprintln!("runnel: {message}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log_level);
            ExitCode::from(shell::serve(config) as u8)
        }
        Command::Topic { connect, command } => finish(cli::topic(&connect, command)),
        Command::Produce { connect, args } => finish(cli::produce(&connect, args)),
        Command::Consume { connect, args } => finish(cli::consume(&connect, args)),
        Command::Cluster { connect, command } => finish(match command {
            ClusterCommand::Status => cli::cluster_status(&connect),
            ClusterCommand::AddNode(args) => cli::cluster_add_node(&connect, &args),
            ClusterCommand::RemoveNode { node_id } => cli::cluster_remove_node(&connect, node_id),
        }),
        Command::Group { connect, command } => {
            finish(runnel_server::group_cli::group(&connect, command))
        }
        Command::Dev(args) => ExitCode::from(dev::run(args)),
        Command::Bench(args) => ExitCode::from(runnel_bench::run(args)),
    }
}

/// One line on stderr for an error, and the exit code that says what
/// happened (see `cli`).
fn finish(result: Result<(), client::ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("runnel: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are noise in a log file or a journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
