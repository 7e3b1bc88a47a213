//! `intercept daemon`: keep the host's interception equal to a directory of task files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use intercept::backend::Kind;
use intercept::privileges;
use intercept::readiness::{self, InstallWhen};

use super::{Failure, Outcome};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Task files, one `<id>.json` file per task (default /etc/intercept/tasks, unless
    /// --docker-socket is given without it)
    #[arg(long, value_name = "DIR")]
    tasks_dir: Option<PathBuf>,
    /// Find the ECS tasks on this host through the container engine at PATH (default
    /// /var/run/docker.sock): the `intercept.*` labels and APPMESH_* environment of their
    /// containers say what to install (docs/daemon.md)
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "/var/run/docker.sock")]
    docker_socket: Option<PathBuf>,
    /// The backend of a task from the engine without an `intercept.backend` label
    #[arg(long, value_enum, value_name = "BACKEND", default_value = "iptables")]
    default_backend: Kind,
    /// Where the daemon records what it installed, to adopt it after a restart
    #[arg(long, value_name = "DIR", default_value = "/run/intercept/daemon")]
    state_dir: PathBuf,
    /// eBPF backend: the bpffs directory for the pins, mounted if it is not a bpffs
    #[arg(long, value_name = "PATH", default_value = intercept::backend::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Serve Prometheus metrics on /metrics and health on /healthz (port 0: any free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Full resync (every file re-read, every installation checked) this often, besides the
    /// passes that file changes trigger
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
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

pub fn run(args: DaemonArgs) -> Outcome {
    if args.resync_interval.is_zero() {
        return Err(Failure::bad_input("--resync-interval: must be longer than 0"));
    }
    // Before any thread starts: capabilities are per thread.
    privileges::check_and_restrict(&privileges::DAEMON, &[]).map_err(anyhow::Error::from)?;
    let tasks_dir = match (args.tasks_dir, &args.docker_socket) {
        (Some(dir), _) => Some(dir),
        (None, None) => Some(PathBuf::from("/etc/intercept/tasks")),
        (None, Some(_)) => None,
    };
    intercept::daemon::run(intercept::daemon::Options {
        tasks_dir,
        docker_socket: args.docker_socket,
        default_backend: args.default_backend,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        metrics_addr: args.metrics_addr,
        resync_interval: args.resync_interval,
        remove_on_exit: args.remove_on_exit,
        install_when: args.install_when,
        proxy_timeout: Duration::from_secs(args.proxy_timeout),
    })
    .map_err(anyhow::Error::from)?;
    Ok(ExitCode::SUCCESS)
}
