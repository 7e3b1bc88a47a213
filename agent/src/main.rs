//! The `intercept` command line: the effectful edge around the library.
//!
//! Exit codes: 0 success, 1 failure of the operation (for `status`: not installed, or not
//! matching the configuration), 2 bad input (nothing was changed), 3 for `verify`:
//! interception is not working.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use intercept::backend::auto::{self, Choice};
use intercept::backend::ebpf::{self, ApplyOptions};
use intercept::backend::iptables::{self, Iptables, Mode};
use intercept::backend::nftables::{self, Nftables};
use intercept::config::source::parse_task_definition;
use intercept::config::{ConfigArgs, ConfigErrors, Validated, validate};
use intercept::netns::{self, Target};
use intercept::plan::{self, Backend, Format, IptablesPlan, NftablesPlan};
use intercept::privileges::{self, BackendNeeds};
use intercept::readiness::{self, InstallWhen};
use intercept::report::CheckReport;
use intercept::verify::{self, Installation};

const EXIT_BAD_INPUT: u8 = 2;

/// The seed guide's EC2 task definition for `taskB`, the demo's input.
const SEED_TASK_DEFINITION: &str = include_str!("../../examples/ec2-taskB.json");
const SEED_ORIGIN: &str = "examples/ec2-taskB.json (embedded)";

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
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print what a backend would install for a configuration, without installing anything.
    Plan {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum)]
        backend: Backend,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Install the interception for a configuration in a network namespace, or replace what
    /// intercept installed there before; nothing changes when it is installed already.
    Apply {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum)]
        backend: Choice,
        #[command(flatten)]
        target: TargetArgs,
        /// Print the transactions that would run, and run none
        #[arg(long)]
        dry_run: bool,
        /// eBPF backend: load the programs with their debug events on and log them (target
        /// `intercept::bpf`) until interrupted; interception continues after that
        #[arg(long)]
        bpf_log: bool,
        #[command(flatten)]
        readiness: ReadinessArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Remove everything intercept installed in a network namespace (nothing to remove is
    /// not an error).
    Remove {
        #[arg(long, value_enum)]
        backend: Choice,
        #[command(flatten)]
        target: TargetArgs,
        /// Print the transactions that would run, and run none
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Show what intercept installed in a network namespace, with packet and byte counters,
    /// and whether it matches a configuration (when one is given). Exit 0 when installed and
    /// matching, 1 otherwise.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum)]
        backend: Choice,
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Prove that interception works in a live target: the installation matches the
    /// configuration, a workload's connection to a TEST-NET address lands on ProxyEgressPort
    /// with that original destination, and the ignored identities' connections do not. Exit 0
    /// verified, 3 interception not working, 2 bad input, 1 failure.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum)]
        backend: Choice,
        #[command(flatten)]
        target: TargetArgs,
        /// Give up (exit 3) after this long: 500ms, 5s, 1m
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = verify::parse_timeout)]
        timeout: Duration,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// One probe of `verify`, which runs it in the target namespace and cgroup.
    #[command(hide = true)]
    VerifyProbe(verify::ProbeArgs),
    /// Run intercept on the seed guide's EC2 task definition: the check report and every
    /// backend's plan, without installing anything.
    Demo,
    /// Keep the host's interception equal to a directory of task files (one JSON file per
    /// task; see docs/daemon.md), with Prometheus metrics. SIGTERM leaves interception in place.
    Daemon(DaemonArgs),
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// The desired state: one `<id>.json` file per task
    #[arg(long, value_name = "DIR", default_value = "/etc/intercept/tasks")]
    tasks_dir: PathBuf,
    /// Where the daemon records what it installed, to adopt it after a restart
    #[arg(long, value_name = "DIR", default_value = "/run/intercept/daemon")]
    state_dir: PathBuf,
    /// eBPF backend: the bpffs directory for the pins, mounted if it is not a bpffs
    #[arg(long, value_name = "PATH", default_value = intercept::backend::ebpf::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Serve Prometheus metrics on /metrics and health on /healthz (port 0: any free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: std::net::SocketAddr,
    /// Full resync (every file re-read, every installation checked) this often, besides the
    /// passes that file changes trigger
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    resync_interval: std::time::Duration,
    /// On SIGTERM/SIGINT, remove the interception of every task the daemon manages (default:
    /// leave it in place, so a daemon upgrade is invisible to the tasks)
    #[arg(long)]
    remove_on_exit: bool,
    /// When to install a task whose file has no `installWhen`. proxy-live: once its proxy's
    /// admin (`proxyAdminUrl`) reports LIVE (connections before that bypass the proxy);
    /// immediately: at once, fail-closed (connections before the proxy listens are refused)
    #[arg(long, value_enum, value_name = "proxy-live|immediately", default_value = "immediately")]
    install_when: InstallWhen,
    /// How long a task may wait for its proxy to be LIVE before it is reported as failed (it
    /// keeps waiting, and is installed once the proxy is LIVE)
    #[arg(long, value_name = "SECONDS", default_value_t = readiness::DEFAULT_TIMEOUT_SECS)]
    proxy_timeout: u64,
}

/// Where `apply`, `remove` and `status` work, and how.
#[derive(Debug, Args)]
struct TargetArgs {
    /// Work in the network namespace at PATH (`/run/netns/NAME`, `/proc/PID/ns/net`, a bind
    /// mount of one); default: the current network namespace
    #[arg(long, value_name = "PATH", conflicts_with = "netns_pid")]
    netns: Option<PathBuf>,
    /// Work in the network namespace of process PID (`/proc/PID/ns/net`)
    #[arg(long, value_name = "PID")]
    netns_pid: Option<u32>,
    /// iptables backend: which xtables variant to use; default: the one that already holds
    /// rules in the namespace, else nft
    #[arg(long, value_enum, value_name = "legacy|nft")]
    iptables_mode: Option<Mode>,
    /// eBPF backend (required with it): the task's cgroup, a path under the cgroup2 mount or
    /// relative to it, or `auto` (the parent of intercept's own cgroup)
    #[arg(long, value_name = "PATH|auto")]
    cgroup: Option<String>,
    /// eBPF backend: the bpffs directory for the pins, an existing directory, mounted if it
    /// is not a bpffs; default /sys/fs/bpf
    #[arg(long, value_name = "PATH")]
    bpffs: Option<PathBuf>,
    /// eBPF backend: while the proxy has no ingress listener (restarting), inbound connections
    /// to AppPorts are refused (as a REDIRECT to a closed port) or go straight to the app
    #[arg(long, value_enum, value_name = "refuse|app", default_value = "refuse")]
    ingress_fallback: IngressFallback,
}

/// When `apply` installs, and the proxy it waits for (docs/deploy-ecs.md: which fits where).
#[derive(Debug, Args)]
struct ReadinessArgs {
    /// proxy-live: wait until the proxy's admin reports LIVE, then install (nothing is ever
    /// redirected to a port nobody listens on; connections before that bypass the proxy).
    /// immediately: install at once, fail-closed (nothing bypasses the proxy; connections
    /// before it listens are refused). An ECS init container the proxy waits for must use
    /// immediately
    #[arg(long, value_enum, value_name = "proxy-live|immediately", default_value = "immediately")]
    install_when: InstallWhen,
    /// The proxy admin URL whose `state` must be LIVE, polled from inside the target network
    /// namespace; with --install-when immediately, apply waits for it after installing
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = readiness::DEFAULT_ADMIN_URL)]
    wait_for_proxy: Option<String>,
    /// How long to wait for the proxy to be LIVE before failing (exit 1)
    #[arg(long, value_name = "SECONDS", default_value_t = readiness::DEFAULT_TIMEOUT_SECS)]
    proxy_timeout: u64,
}

impl ReadinessArgs {
    /// The URL to wait for before installing, and the one to wait for after.
    fn waits(&self) -> (Option<&str>, Option<&str>) {
        let url = self.wait_for_proxy.as_deref();
        match self.install_when {
            InstallWhen::ProxyLive => (Some(url.unwrap_or(readiness::DEFAULT_ADMIN_URL)), None),
            InstallWhen::Immediately => (None, url),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IngressFallback {
    Refuse,
    App,
}

impl TargetArgs {
    fn target(&self) -> Target {
        match (&self.netns, self.netns_pid) {
            (Some(path), _) => Target::Path(path.clone()),
            (None, Some(pid)) => Target::Pid(pid),
            (None, None) => Target::Current,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon's log is its record of what it did: info by default.
    let default_level = if matches!(cli.command, Command::Daemon(_)) { "info" } else { "warn" };
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    if matches!(cli.command, Command::Apply { bpf_log: true, .. }) {
        // The programs' events are debug events: `--bpf-log` asks for them.
        filter = filter.add_directive("intercept::bpf=debug".parse().expect("a valid directive"));
    }
    // No colour codes in a log file or a journal.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { config, format } => {
            let report = CheckReport::check(config.read(), config.no_implicit_exemptions);
            print(&match format {
                Format::Text => report.render_text(),
                Format::Json => report.render_json(),
            })?;
            Ok(exit_code(report.exit_code()))
        }
        Command::Plan { config, backend, format } => {
            let validated = match config.read().and_then(|input| validate(&input.raw)) {
                Ok(validated) => validated,
                Err(errors) => return Ok(bad_input(&errors)),
            };
            warn(&validated);
            print(&plan::render(&validated.config, backend, format))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { config, backend, target, dry_run, bpf_log, readiness, format } => {
            let input = match config.read() {
                Ok(input) => input,
                Err(errors) => return Ok(bad_input(&errors)),
            };
            let validated = match validate(&input.raw) {
                Ok(validated) => validated,
                Err(errors) => return Ok(bad_input(&errors)),
            };
            warn(&validated);
            if let Some(code) = check_readiness(&readiness, input.task_definition.as_ref()) {
                return Ok(code);
            }
            // Without `remove`, exactly one backend.
            let Some(backend) = resolve(backend, &target, false)?.map(|chosen| chosen[0]) else {
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            };
            if bpf_log && backend != Backend::Ebpf {
                eprintln!("error: --bpf-log is for --backend ebpf");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            let iptables_plan = (backend == Backend::Iptables).then(|| IptablesPlan::new(&validated.config));
            let needs = match backend {
                Backend::Ebpf => BackendNeeds::Ebpf,
                Backend::Nftables => BackendNeeds::Nftables,
                Backend::Iptables => BackendNeeds::Iptables {
                    legacy: target.iptables_mode.map(|m| m == Mode::Legacy),
                    ipsets: iptables_plan.as_ref().is_some_and(|plan| !plan.ipsets.is_empty()),
                },
            };
            privileges::check_and_restrict(
                &privileges::apply_requirements(needs, &target.target()),
                &privileges::optional(needs),
            )
            .map_err(|e| anyhow::anyhow!("{e}\nnothing was changed"))?;
            let (before, after) = readiness.waits();
            let timeout = std::time::Duration::from_secs(readiness.proxy_timeout);
            if let (Some(url), false) = (before, dry_run) {
                // A target that names nothing usable is bad input before any waiting.
                if backend == Backend::Ebpf && ebpf_request(&target).is_none() {
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
                let Some(netns) = open_netns(&target)? else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
                wait_for_proxy(url, timeout, &netns).map_err(|e| e.context("nothing was installed"))?;
            }
            let mut logs = None;
            if backend == Backend::Ebpf {
                match apply_ebpf(&validated.config, &target, dry_run, bpf_log, format)? {
                    Ok(followed) => logs = followed,
                    Err(code) => return Ok(code),
                }
            } else if backend == Backend::Nftables {
                let Some(nft) = open_nftables(&target)? else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
                let report = nft.apply(&NftablesPlan::new(&validated.config), dry_run)?;
                print_nftables_report(&[report], "apply", format)?;
            } else {
                let Some(backend) = open_backend(backend, &target)? else {
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                };
                let plan = iptables_plan.expect("built above for the iptables backend");
                let report = backend.apply(&plan, dry_run)?;
                print_report(&report, "apply", format)?;
            }
            if let (Some(url), false) = (after, dry_run) {
                let netns = netns::Netns::open(target.target())?;
                wait_for_proxy(url, timeout, &netns).map_err(|e| e.context("interception is installed"))?;
            }
            // Installed: nothing more needs a capability (the eBPF events are read from a
            // ring buffer already open).
            privileges::drop_all()?;
            if let Some(logs) = logs {
                eprintln!("logging the eBPF programs' events; interrupt to stop (interception continues)");
                logs.follow();
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { backend, target, dry_run, format } => {
            let Some(backends) = resolve(backend, &target, true)? else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
            let mut nftables_reports = Vec::new();
            for backend in backends {
                if backend == Backend::Ebpf {
                    let code = remove_ebpf(&target, dry_run, format)?;
                    if code != ExitCode::SUCCESS {
                        return Ok(code);
                    }
                    continue;
                }
                if backend == Backend::Nftables {
                    let Some(nft) = open_nftables(&target)? else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
                    nftables_reports.push(nft.remove(dry_run)?);
                    continue;
                }
                let Some(backend) = open_backend(backend, &target)? else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
                let report = backend.remove(dry_run)?;
                print_report(&report, "remove", format)?;
            }
            print_nftables_report(&nftables_reports, "remove", format)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { config, backend, target, format } => {
            let config = if config_given(&config) {
                match config.read().and_then(|input| validate(&input.raw)) {
                    Ok(validated) => {
                        warn(&validated);
                        Some(validated.config)
                    }
                    Err(errors) => return Ok(bad_input(&errors)),
                }
            } else {
                None
            };
            // Without `remove`, exactly one backend.
            let Some(backend) = resolve(backend, &target, false)?.map(|chosen| chosen[0]) else {
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            };
            if backend == Backend::Ebpf {
                return status_ebpf(config.as_ref(), &target, format);
            }
            if backend == Backend::Nftables {
                let Some(nft) = open_nftables(&target)? else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
                let status = nft.status(config.as_ref().map(NftablesPlan::new).as_ref())?;
                for warning in &status.warnings {
                    eprintln!("warning: {warning}");
                }
                print(&status.render(format))?;
                return Ok(exit_code(status.exit_code()));
            }
            let plan = config.as_ref().map(IptablesPlan::new);
            let Some(backend) = open_backend(backend, &target)? else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
            let status = backend.status(plan.as_ref())?;
            for warning in &status.warnings {
                eprintln!("warning: {warning}");
            }
            print(&match format {
                Format::Text => status.render_text(),
                Format::Json => to_json(&status)?,
            })?;
            Ok(exit_code(status.exit_code()))
        }
        Command::Verify { config, backend, target, timeout, format } => {
            verify_command(&config, backend, &target, timeout, format)
        }
        Command::VerifyProbe(args) => Ok(exit_code(verify::probe_main(&args))),
        Command::Demo => demo(),
        Command::Daemon(args) => {
            if args.resync_interval.is_zero() {
                eprintln!("error: --resync-interval: must be longer than 0");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            // Before any thread starts: capabilities are per thread.
            privileges::check_and_restrict(&privileges::DAEMON, &[])?;
            intercept::daemon::run(intercept::daemon::Options {
                tasks_dir: args.tasks_dir,
                state_dir: args.state_dir,
                bpffs: args.bpffs,
                metrics_addr: args.metrics_addr,
                resync_interval: args.resync_interval,
                remove_on_exit: args.remove_on_exit,
                install_when: args.install_when,
                proxy_timeout: std::time::Duration::from_secs(args.proxy_timeout),
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn verify_command(
    config: &ConfigArgs,
    backend: Choice,
    target: &TargetArgs,
    timeout: Duration,
    format: Format,
) -> Result<ExitCode> {
    if !config_given(config) {
        eprintln!(
            "error: verify needs the configuration to verify (--task-definition, --proxy-configuration, --from-env or the property flags)"
        );
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let validated = match config.read().and_then(|input| validate(&input.raw)) {
        Ok(validated) => validated,
        Err(errors) => return Ok(bad_input(&errors)),
    };
    warn(&validated);
    let Some(backend) = resolve(backend, target, false)?.map(|chosen| chosen[0]) else {
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    };
    let installation = match backend {
        Backend::Ebpf => ebpf_request(target).map(Installation::Ebpf),
        Backend::Nftables => open_nftables(target)?.map(Installation::Nftables),
        Backend::Iptables => open_backend(backend, target)?.map(Installation::Iptables),
    };
    let Some(installation) = installation else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
    let report = match verify::verify(&installation, &validated.config, target.target(), timeout) {
        Ok(report) => report,
        Err(verify::Error::Ebpf(e)) => return ebpf_error(e),
        Err(verify::Error::Netns(e @ (netns::Error::Open { .. } | netns::Error::NotNetns { .. }))) => {
            eprintln!("error: --netns/--netns-pid: {e}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
        Err(e) => return Err(e.into()),
    };
    print(&report.render(format))?;
    Ok(exit_code(report.exit_code()))
}

/// The backend for `apply`, `remove` and `status`; `None` (after saying why) when the
/// target namespace is not one: bad input, nothing was changed.
fn open_backend(backend: Backend, target: &TargetArgs) -> Result<Option<Iptables>> {
    if backend == Backend::Ebpf {
        bail!("the eBPF backend is not an iptables backend");
    }
    match Iptables::open(target.target(), target.iptables_mode) {
        Ok(backend) => Ok(Some(backend)),
        Err(iptables::Error::Netns(e @ (netns::Error::Open { .. } | netns::Error::NotNetns { .. }))) => {
            eprintln!("error: --netns/--netns-pid: {e}");
            eprintln!("nothing was changed");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `--cgroup`, `--bpffs`, the namespace and `--iptables-mode` for eBPF mode; `None` (after
/// saying why) without `--cgroup`: bad input.
fn ebpf_request(target: &TargetArgs) -> Option<ebpf::cli::Request> {
    let Some(cgroup) = target.cgroup.clone() else {
        eprintln!("error: --backend ebpf needs --cgroup PATH|auto: the cgroup whose processes are intercepted");
        eprintln!("nothing was changed");
        return None;
    };
    Some(ebpf::cli::Request {
        cgroup,
        bpffs: target.bpffs.clone(),
        netns: target.target(),
        iptables_mode: target.iptables_mode,
        ingress_fallback_to_app: target.ingress_fallback == IngressFallback::App,
    })
}

/// An eBPF-mode error: a `--cgroup`, `--bpffs` or `--netns` that names nothing usable is bad
/// input (exit 2, nothing changed); anything else fails the operation.
fn ebpf_error(e: ebpf::cli::Error) -> Result<ExitCode> {
    if let Some(option) = e.bad_target_option() {
        // These errors' messages carry their cause already.
        eprintln!("error: {option}: {e}");
        eprintln!("nothing was changed");
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    Err(e.into())
}

/// `Ok(Err(code))` for bad input (nothing changed); `Ok(Ok(logs))` once installed, with the
/// programs' events to follow for `--bpf-log`.
fn apply_ebpf(
    config: &intercept::config::ProxyConfig,
    target: &TargetArgs,
    dry_run: bool,
    bpf_log: bool,
    format: Format,
) -> Result<Result<Option<ebpf::Logs>, ExitCode>> {
    if dry_run {
        eprintln!(
            "error: --dry-run is not available with --backend ebpf; `intercept plan --backend ebpf` shows the maps"
        );
        eprintln!("nothing was changed");
        return Ok(Err(ExitCode::from(EXIT_BAD_INPUT)));
    }
    let Some(request) = ebpf_request(target) else { return Ok(Err(ExitCode::from(EXIT_BAD_INPUT))) };
    let mut report = match ebpf::cli::apply(&request, config, ApplyOptions { bpf_log }) {
        Ok(report) => report,
        Err(e) => return ebpf_error(e).map(Err),
    };
    print(&match format {
        Format::Text => report.render_text(),
        Format::Json => to_json(&report)?,
    })?;
    Ok(Ok(report.logs.take()))
}

/// The readiness flags' bad input: a URL intercept cannot poll, or an init container asked
/// to wait for a proxy that waits for it. `Some(exit code)` after saying why.
fn check_readiness(args: &ReadinessArgs, task_definition: Option<&serde_json::Value>) -> Option<ExitCode> {
    let (before, after) = args.waits();
    if let Some(Err(e)) = before.or(after).map(readiness::check_url) {
        eprintln!("error: {e}");
        eprintln!("nothing was changed");
        return Some(ExitCode::from(EXIT_BAD_INPUT));
    }
    if before.is_some()
        && let Some(why) = task_definition.and_then(readiness::init_container_deadlock)
    {
        eprintln!("error: {why}");
        eprintln!("nothing was changed");
        return Some(ExitCode::from(EXIT_BAD_INPUT));
    }
    None
}

/// The target namespace, to wait for the proxy in; `None` (after saying why) when it names
/// nothing usable: bad input, nothing was changed.
fn open_netns(target: &TargetArgs) -> Result<Option<netns::Netns>> {
    match netns::Netns::open(target.target()) {
        Ok(netns) => Ok(Some(netns)),
        Err(e @ (netns::Error::Open { .. } | netns::Error::NotNetns { .. })) => {
            eprintln!("error: --netns/--netns-pid: {e}");
            eprintln!("nothing was changed");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn wait_for_proxy(url: &str, timeout: std::time::Duration, netns: &netns::Netns) -> Result<()> {
    eprintln!("waiting up to {}s for the proxy at {url} to be LIVE", timeout.as_secs());
    let live = readiness::wait_until_live(url, timeout, netns)?;
    eprintln!("the proxy is LIVE ({} polls, {:.1?})", live.polls, live.waited);
    Ok(())
}

fn remove_ebpf(target: &TargetArgs, dry_run: bool, format: Format) -> Result<ExitCode> {
    if dry_run {
        eprintln!("error: --dry-run is not available with --backend ebpf; `intercept status` shows what is installed");
        eprintln!("nothing was changed");
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let Some(request) = ebpf_request(target) else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
    let report = match ebpf::cli::remove(&request) {
        Ok(report) => report,
        Err(e) => return ebpf_error(e),
    };
    print(&match format {
        Format::Text => report.render_text(),
        Format::Json => to_json(&report)?,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn status_ebpf(
    config: Option<&intercept::config::ProxyConfig>,
    target: &TargetArgs,
    format: Format,
) -> Result<ExitCode> {
    let Some(request) = ebpf_request(target) else { return Ok(ExitCode::from(EXIT_BAD_INPUT)) };
    let status = match ebpf::cli::status(&request, config) {
        Ok(status) => status,
        Err(e) => return ebpf_error(e),
    };
    print(&match format {
        Format::Text => status.render_text(),
        Format::Json => to_json(&status)?,
    })?;
    Ok(exit_code(status.exit_code()))
}

/// The backends `--backend` names: itself, or what `auto` chooses, said on stderr (for
/// `remove`, every backend that has something installed). `None` (after saying why) when
/// the target namespace is not one: bad input, nothing was changed.
fn resolve(choice: Choice, target: &TargetArgs, remove: bool) -> Result<Option<Vec<Backend>>> {
    if let Some(backend) = choice.backend() {
        return Ok(Some(vec![backend]));
    }
    let facts = match auto::probe(&target.target(), target.cgroup.as_deref(), target.bpffs.as_deref()) {
        Ok(facts) => facts,
        Err(e) if e.is_bad_target() => {
            eprintln!("error: {e}");
            eprintln!("nothing was changed");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let chosen = if remove { auto::choose_for_remove(&facts) } else { vec![auto::choose(&facts)] };
    for selection in &chosen {
        eprintln!("backend auto: {} ({})", selection.backend.name(), selection.reason);
    }
    Ok(Some(chosen.into_iter().map(|s| s.backend).collect()))
}

/// The nftables backend for `apply`, `remove` and `status`; `None` as for [`open_backend`].
fn open_nftables(target: &TargetArgs) -> Result<Option<Nftables>> {
    match Nftables::open(target.target()) {
        Ok(backend) => Ok(Some(backend)),
        Err(nftables::Error::Netns(e @ (netns::Error::Open { .. } | netns::Error::NotNetns { .. }))) => {
            eprintln!("error: --netns/--netns-pid: {e}");
            eprintln!("nothing was changed");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn print_nftables_report(reports: &[nftables::Report], verb: &str, format: Format) -> Result<()> {
    for warning in reports.iter().flat_map(|r| &r.warnings) {
        eprintln!("warning: {warning}");
    }
    print(&reports.iter().map(|r| r.render(verb, format)).collect::<String>())
}

/// Whether any configuration source or property flag was given (`status` works without).
fn config_given(config: &ConfigArgs) -> bool {
    config.task_definition.is_some()
        || config.proxy_configuration.is_some()
        || config.from_env
        || [
            &config.ignored_uid,
            &config.ignored_gid,
            &config.proxy_ingress_port,
            &config.proxy_egress_port,
            &config.app_ports,
            &config.egress_ignored_ips,
            &config.egress_ignored_ports,
            &config.ipv6,
        ]
        .iter()
        .any(|flag| flag.is_some())
}

fn print_report(report: &iptables::Report, verb: &str, format: Format) -> Result<()> {
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    print(&match format {
        Format::Text => report.render_text(verb),
        Format::Json => to_json(report)?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    let mut json = serde_json::to_string_pretty(value)?;
    json.push('\n');
    Ok(json)
}

fn demo() -> Result<ExitCode> {
    let input = parse_task_definition(SEED_TASK_DEFINITION, SEED_ORIGIN)
        .map_err(|e| anyhow::anyhow!("the embedded seed task definition does not parse: {e}"))?;
    let validated = validate(&input.raw)
        .map_err(|e| anyhow::anyhow!("the embedded seed task definition does not validate: {e}"))?;
    let report = CheckReport::check(Ok(input), false);
    let mut out = String::new();
    out.push_str(&banner("intercept check --task-definition examples/ec2-taskB.json"));
    out.push_str(&report.render_text());
    for backend in [Backend::Ebpf, Backend::Iptables, Backend::Nftables] {
        let name = backend.name();
        out.push_str(&banner(&format!("intercept plan --backend {name} --task-definition examples/ec2-taskB.json")));
        out.push_str(&plan::render(&validated.config, backend, Format::Text));
    }
    print(&out)?;
    Ok(exit_code(report.exit_code()))
}

fn banner(command: &str) -> String {
    format!("\n$ {command}\n\n")
}

fn warn(validated: &Validated) {
    for warning in &validated.warnings {
        eprintln!("{warning}");
    }
}

fn bad_input(errors: &ConfigErrors) -> ExitCode {
    for diagnostic in &errors.0 {
        eprintln!("{diagnostic}");
    }
    eprintln!("nothing was changed");
    ExitCode::from(EXIT_BAD_INPUT)
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Writes all of `text`; a closed pipe (`intercept plan | head`) is not an error worth a
/// panic, but it is still reported.
fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
