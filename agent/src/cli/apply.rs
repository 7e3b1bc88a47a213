//! `intercept apply`: install, or bring up to date, the interception for a configuration.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use intercept::backend::ApplyOptions;
use intercept::config::ConfigArgs;
use intercept::netns::{self, Netns};
use intercept::plan::Format;
use intercept::privileges;
use intercept::readiness::{self, InstallWhen};

use super::{Failure, Outcome, TargetArgs, print_report};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Print the transactions that would run, and run none
    #[arg(long)]
    dry_run: bool,
    /// eBPF backend: load the programs with their debug events on and log them (target
    /// `intercept::bpf`) until interrupted; interception continues after that
    #[arg(long)]
    pub bpf_log: bool,
    #[command(flatten)]
    readiness: ReadinessArgs,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
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

    /// A URL intercept cannot poll, or an init container asked to wait for a proxy that waits
    /// for it, is bad input.
    fn check(&self, task_definition: Option<&serde_json::Value>) -> Result<(), Failure> {
        let (before, after) = self.waits();
        if let Some(Err(e)) = before.or(after).map(readiness::check_url) {
            return Err(Failure::bad_input(e));
        }
        if before.is_some()
            && let Some(why) = task_definition.and_then(readiness::init_container_deadlock)
        {
            return Err(Failure::bad_input(why));
        }
        Ok(())
    }
}

pub fn run(args: ApplyArgs) -> Outcome {
    let input = args.config.read()?;
    let validated = intercept::config::validate(&input.raw)?;
    super::warn(&validated);
    let config = &validated.config;
    args.readiness.check(input.task_definition.as_ref())?;
    let target = args.target.target();
    let backend = args.target.open_one(&target)?;
    let options = ApplyOptions { dry_run: args.dry_run, events: args.bpf_log };
    backend.accepts(options)?;
    let requirements = backend.requirements(Some(config));
    privileges::check_and_restrict(
        &privileges::apply_requirements(&requirements.capabilities, &target.netns),
        &requirements.optional,
    )
    .map_err(|e| anyhow::anyhow!("{e}\nnothing was changed"))?;
    let (before, after) = args.readiness.waits();
    let timeout = Duration::from_secs(args.readiness.proxy_timeout);
    if let (Some(url), false) = (before, args.dry_run) {
        wait_for_proxy(url, timeout, &open_netns(&target.netns)?).context("nothing was installed")?;
    }
    let change = backend.apply(config, options)?;
    print_report(&change.warnings, change.report.as_ref(), args.format)?;
    if let (Some(url), false) = (after, args.dry_run) {
        wait_for_proxy(url, timeout, &open_netns(&target.netns)?).context("interception is installed")?;
    }
    // Installed: nothing more needs a capability (the eBPF events are read from a ring buffer
    // already open).
    privileges::drop_all().map_err(anyhow::Error::from)?;
    if let Some(events) = change.events {
        eprintln!("logging the eBPF programs' events; interrupt to stop (interception continues)");
        events.follow();
    }
    Ok(ExitCode::SUCCESS)
}

/// The target namespace, to wait for the proxy in; one that names nothing usable is bad
/// input.
fn open_netns(target: &netns::Target) -> Result<Netns, Failure> {
    Netns::open(target.clone()).map_err(|e| intercept::backend::Error::netns(e).into())
}

fn wait_for_proxy(url: &str, timeout: Duration, netns: &Netns) -> anyhow::Result<()> {
    eprintln!("waiting up to {}s for the proxy at {url} to be LIVE", timeout.as_secs());
    let live = readiness::wait_until_live(url, timeout, netns)?;
    eprintln!("the proxy is LIVE ({} polls, {:.1?})", live.polls, live.waited);
    Ok(())
}
