//! `intercept daemon`: keep the host's interception equal to a directory of task files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use intercept::privileges;
use intercept::readiness::{self, InstallWhen};

use super::{Failure, Outcome};

#[derive(Debug, Args)]
pub struct DaemonArgs {
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
    intercept::daemon::run(intercept::daemon::Options {
        tasks_dir: args.tasks_dir,
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
