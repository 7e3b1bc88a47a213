//! The `intercept` command line: the effectful edge around the library. Each subcommand is a
//! module of [`cli`]; this file parses the command line, sets up logging, and turns what the
//! subcommand returns into the process exit.
//!
//! Exit codes: 0 success, 1 failure of the operation (for `status`: not installed, or not
//! matching the configuration), 2 bad input (nothing was changed), 3 for `verify`:
//! interception is not working.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use intercept::verify;

#[derive(Debug, Parser)]
#[command(name = "intercept", version, about = "Transparent TCP interception for ECS App Mesh proxy configurations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: text for people, json (one object a line) for
    /// log collectors
    #[arg(long, value_enum, global = true, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a proxy configuration and lint the task definition around it.
    Check(cli::check::CheckArgs),
    /// Print what a backend would install for a configuration, without installing anything.
    Plan(cli::check::PlanArgs),
    /// Install the interception for a configuration in a network namespace, or replace what
    /// intercept installed there before; nothing changes when it is installed already.
    Apply(cli::apply::ApplyArgs),
    /// Remove everything intercept installed in a network namespace (nothing to remove is
    /// not an error).
    Remove(cli::remove::RemoveArgs),
    /// Show what intercept installed in a network namespace, with packet and byte counters,
    /// and whether it matches a configuration (when one is given). Exit 0 when installed and
    /// matching, 1 otherwise.
    Status(cli::status::StatusArgs),
    /// Prove that interception works in a live target: the installation matches the
    /// configuration, a workload's connection to a TEST-NET address lands on ProxyEgressPort
    /// with that original destination, and the ignored identities' connections do not. Exit 0
    /// verified, 3 interception not working, 2 bad input, 1 failure.
    Verify(cli::verify::VerifyArgs),
    /// One probe of `verify`, which runs it in the target namespace and cgroup.
    #[command(hide = true)]
    VerifyProbe(verify::ProbeArgs),
    /// Run intercept on the seed guide's EC2 task definition: the check report and every
    /// backend's plan, without installing anything.
    Demo,
    /// Run as a CNI plugin (what the binary does under the names aws-appmesh and
    /// intercept-cni): CNI_COMMAND ADD, DEL, CHECK or VERSION, the network configuration on
    /// stdin (see docs/deploy-ecs.md).
    Cni(cli::cni::CniArgs),
    /// Keep the host's interception equal to a directory of task files (one JSON file per
    /// task; see docs/daemon.md), with Prometheus metrics. SIGTERM leaves interception in place.
    Daemon(cli::daemon::DaemonArgs),
}

/// The binary under a CNI plugin's name: the plugin's own (tiny) command line.
#[derive(Debug, Parser)]
#[command(version, about = "intercept as a CNI plugin: CNI_COMMAND ADD, DEL, CHECK or VERSION")]
struct Plugin {
    #[command(flatten)]
    args: cli::cni::CniArgs,
}

fn main() -> ExitCode {
    let invoked_as = std::env::args_os().next().map(std::path::PathBuf::from);
    let name = invoked_as.as_ref().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or_default();
    if intercept::cni::PLUGIN_NAMES.contains(&name) {
        let plugin = Plugin::parse();
        init_logging(LogFormat::Text, "warn", false);
        return cli::cni::run(&plugin.args);
    }
    let cli = Cli::parse();
    // The daemon's log is its record of what it did: info by default.
    let default_level = if matches!(cli.command, Command::Daemon(_)) { "info" } else { "warn" };
    // The programs' events are debug events: `--bpf-log` asks for them.
    let bpf_log = matches!(&cli.command, Command::Apply(args) if args.bpf_log);
    init_logging(cli.log_format, default_level, bpf_log);
    let outcome = match cli.command {
        Command::Check(args) => cli::check::check(args),
        Command::Plan(args) => cli::check::plan(args),
        Command::Apply(args) => cli::apply::run(args),
        Command::Remove(args) => cli::remove::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::VerifyProbe(args) => Ok(cli::exit_code(verify::probe_main(&args))),
        Command::Demo => cli::check::demo(),
        Command::Daemon(args) => cli::daemon::run(args),
        Command::Cni(args) => return cli::cni::run(&args),
    };
    outcome.unwrap_or_else(cli::Failure::report)
}

fn init_logging(format: LogFormat, default_level: &str, bpf_log: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    if bpf_log {
        filter = filter.add_directive("intercept::bpf=debug".parse().expect("a valid directive"));
    }
    // No colour codes in a log file or a journal.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
}
