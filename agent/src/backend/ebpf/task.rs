//! The eBPF backend for one task, behind the [`Backend`] interface: the programs on the task's
//! cgroup, and the `sk_lookup` program on the task's network namespace for inbound
//! connections. No netfilter rule is installed. `remove` also removes the iptables ingress
//! half an older intercept installed in eBPF mode.
//!
//! The namespace also gives the task's own addresses, the local destinations the programs
//! leave alone; they are read on a thread that joins it ([`Netns::run`]), never by moving the
//! process.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::PathBuf;

use serde::Serialize;

use super::{ApplyOptions, Contents, Logs, Outcome, Program, Removed, Status, Target};
use crate::backend::exec;
use crate::backend::iptables::{self, Iptables, Mode};
use crate::backend::rules::Rules as _;
use crate::backend::{self, Backend, Change, Feature, Kind, Requirements};
use crate::cgroup;
use crate::config::ProxyConfig;
use crate::netns::{self, Netns};
use crate::plan::iptables::{EGRESS_CHAIN, INGRESS_CHAIN};
use crate::plan::{Format, ebpf::EbpfPlan};
use crate::privileges::{DAC_READ_SEARCH_ADOPT, EBPF, SYS_PTRACE_ADOPT};

/// The eBPF backend's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The bpffs directory for the pins (`--bpffs`); default [`super::DEFAULT_BPFFS`].
    pub bpffs: Option<PathBuf>,
    /// The caller removes the pins of ended tasks itself (the daemon: once per pass, see
    /// [`super::prune`]), so `apply` and `remove` leave them: each would walk every
    /// installation on the host, and removing all of a thousand tasks one by one would walk
    /// them a thousand times.
    pub pruned_by_caller: bool,
}

/// Where eBPF mode works: a cgroup and its pins for the programs, a network namespace for
/// the local addresses and the `sk_lookup` program.
#[derive(Debug, Clone)]
pub struct Request {
    /// `--cgroup`: a path, or `auto`.
    pub cgroup: String,
    /// `--bpffs`; default [`super::DEFAULT_BPFFS`].
    pub bpffs: Option<PathBuf>,
    pub netns: netns::Target,
    /// `--iptables-mode`: for `remove`, to clean up the iptables ingress rules of an older
    /// install.
    pub iptables_mode: Option<Mode>,
    /// Whether `apply`, and `remove` of a cgroup that is gone, also remove the pins of ended
    /// tasks ([`super::prune`]); see [`Options::pruned_by_caller`].
    pub prune: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebpf(#[from] super::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("the iptables ingress rules of an older install: {0}")]
    Ingress(#[source] iptables::Error),
    #[error("opening the {target}: {source}")]
    NetnsFd {
        target: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The option naming nothing usable, when the error is one: a bad `--cgroup`, `--bpffs`
    /// or `--netns` is bad input, refused before anything changes.
    pub fn bad_target_option(&self) -> Option<&'static str> {
        match self {
            Error::Ebpf(super::Error::Cgroup(_)) => Some("--cgroup"),
            Error::Ebpf(super::Error::Bpffs { .. }) => Some("--bpffs"),
            Error::Netns(netns::Error::Open { .. } | netns::Error::NotNetns { .. }) => Some("--netns/--netns-pid"),
            _ => None,
        }
    }

    /// The cgroup or the namespace does not exist.
    fn gone(&self) -> bool {
        match self {
            Error::Ebpf(super::Error::Cgroup(cgroup::Error::NotFound { .. })) => true,
            Error::Netns(netns::Error::Open { source, .. }) => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

impl From<Error> for backend::Error {
    fn from(e: Error) -> backend::Error {
        match e.bad_target_option() {
            // These errors' messages carry their cause already.
            Some(option) => backend::Error::BadTarget { option, gone: e.gone(), message: e.to_string() },
            None => backend::Error::Ebpf(e),
        }
    }
}

/// What `apply` did.
#[derive(Serialize)]
pub struct ApplyReport {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub pin_dir: PathBuf,
    pub netns: String,
    #[serde(serialize_with = "outcome_json")]
    pub outcome: Outcome,
    /// The namespace's own addresses, local destinations for the programs.
    pub local_addresses: Vec<IpAddr>,
    /// ProxyIngressPort when ingress is configured.
    pub ingress_port: Option<u16>,
    /// The proxy's listeners already listening, found and put into the map (with ingress).
    pub adopted: Option<super::Adopted>,
    /// Cgroups that no longer exist (ended tasks) whose pins were removed.
    pub pruned: Vec<u64>,
    /// With `--bpf-log`: the programs' events, as long as this lives.
    #[serde(skip)]
    pub logs: Option<Logs>,
    /// When the programs were replaced: the build that had made the installation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

fn outcome_json<S: serde::Serializer>(outcome: &Outcome, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Json {
        result: &'static str,
        generation: Option<u32>,
        config_changed: Option<bool>,
        entries_added: Option<usize>,
        entries_removed: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaced_layout: Option<u32>,
    }
    let json = match outcome {
        Outcome::Installed => Json {
            result: "installed",
            generation: None,
            config_changed: None,
            entries_added: None,
            entries_removed: None,
            replaced_layout: None,
        },
        Outcome::Updated(c) => Json {
            result: "updated",
            generation: Some(c.generation),
            config_changed: Some(c.config),
            entries_added: Some(c.added),
            entries_removed: Some(c.removed),
            replaced_layout: None,
        },
        Outcome::Unchanged => Json {
            result: "unchanged",
            generation: None,
            config_changed: None,
            entries_added: None,
            entries_removed: None,
            replaced_layout: None,
        },
        Outcome::Replaced { from_layout } => Json {
            result: "replaced",
            generation: None,
            config_changed: None,
            entries_added: None,
            entries_removed: None,
            replaced_layout: Some(*from_layout),
        },
    };
    json.serialize(serializer)
}

impl ApplyReport {
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let what = match self.outcome {
            Outcome::Installed => "installed: programs loaded, maps filled, programs attached and pinned".to_owned(),
            Outcome::Updated(c) => format!(
                "updated in place: map generation {} is now active ({} entries added, {} removed{})",
                c.generation,
                c.added,
                c.removed,
                if c.config { ", CONFIG changed" } else { "" }
            ),
            Outcome::Unchanged => "nothing to change: the maps already hold this configuration".to_owned(),
            Outcome::Replaced { from_layout } => format!(
                "programs replaced in place (map layout {from_layout} → {}): {} → {}; live connections kept",
                intercept_common::LAYOUT,
                self.replaced.as_deref().unwrap_or("another build"),
                super::build().build_str()
            ),
        };
        let _ = writeln!(out, "apply: eBPF on cgroup {} (id {}): {what}", self.cgroup.display(), self.cgroup_id);
        let _ = writeln!(out, "pins: {}", self.pin_dir.display());
        let addrs: Vec<String> = self.local_addresses.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "local addresses of {}: {}", self.netns, addrs.join(", "));
        match self.ingress_port {
            Some(port) => {
                let _ = writeln!(
                    out,
                    "inbound: AppPorts steered by sk_lookup to the proxy's listener on port {port} (no netfilter rule)"
                );
                if let Some(adopted) = &self.adopted {
                    match adopted.listeners.len() {
                        0 if adopted.problems.is_empty() => {
                            let _ = writeln!(
                                out,
                                "inbound: no process of the cgroup listens on port {port} yet; its listener is \
                                 taken when it starts listening"
                            );
                        }
                        0 => {}
                        n => {
                            let _ = writeln!(out, "inbound: {n} listener(s) on port {port} already open, taken");
                        }
                    }
                    for problem in &adopted.problems {
                        let _ = writeln!(
                            out,
                            "inbound: WARNING: {problem}: if this is the proxy, its open listener is not taken: \
                             restart the proxy"
                        );
                    }
                }
            }
            None => out.push_str("inbound: no ingress configured\n"),
        }
        if !self.pruned.is_empty() {
            let _ = writeln!(out, "also removed the pins of {} ended task(s) (cgroups gone)", self.pruned.len());
        }
        out
    }
}

/// Installs or updates eBPF mode: the cgroup programs, and the `sk_lookup` program on the
/// task's network namespace (attached whether or not ingress is configured: without
/// ProxyIngressPort it steers nothing, and a re-apply that adds ingress only updates maps).
pub fn apply(request: &Request, config: &ProxyConfig, options: ApplyOptions) -> Result<ApplyReport, Error> {
    let target = Target::new(&request.cgroup, request.bpffs.as_deref())?;
    let netns = Netns::open(request.netns.clone())?;
    let local_addresses = netns.run(super::local_addresses)??;
    let netns_fd = netns.fd().map_err(|source| Error::NetnsFd { target: request.netns.to_string(), source })?;
    let plan = EbpfPlan::new(config);
    let applied = super::apply(&target, &plan, &local_addresses, netns_fd.as_fd(), options)?;
    // The tasks that ended since: each new task's init container cleans up after them.
    let pruned = if request.prune { super::prune(&target.bpffs)? } else { Vec::new() };
    let ingress = config.ingress.as_ref().map(|i| i.proxy_port);
    Ok(ApplyReport {
        cgroup: target.cgroup.clone(),
        cgroup_id: target.cgroup_id,
        pin_dir: applied.pin_dir,
        netns: request.netns.to_string(),
        outcome: applied.outcome,
        local_addresses,
        ingress_port: ingress,
        adopted: applied.adopted,
        pruned,
        logs: applied.logs,
        replaced: applied.replaced,
    })
}

/// What `remove` did.
#[derive(Debug, Serialize)]
pub struct RemoveReport {
    pub cgroup: PathBuf,
    /// `false` when the cgroup no longer exists (its programs went with it).
    pub cgroup_exists: bool,
    /// Whether programs and pins were there to remove.
    pub removed: bool,
    /// When this cgroup is gone too: cgroups that no longer exist whose pins were removed (see
    /// [`super::prune`]).
    pub pruned: Vec<u64>,
    /// The iptables ingress rules an older intercept installed in eBPF mode, removed.
    pub ingress: Option<iptables::Report>,
}

impl RemoveReport {
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let what = match (self.cgroup_exists, self.removed) {
            (false, _) => "the cgroup no longer exists".to_owned(),
            (true, true) => "programs detached and unpinned".to_owned(),
            (true, false) => "nothing was installed".to_owned(),
        };
        let _ = writeln!(out, "remove: eBPF on cgroup {}: {what}", self.cgroup.display());
        if !self.pruned.is_empty() {
            let ids: Vec<String> = self.pruned.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "remove: also removed the pins of {} cgroup(s) that no longer exist (ids {})",
                ids.len(),
                ids.join(", ")
            );
        }
        if let Some(report) = &self.ingress {
            out.push_str(&report.render_text("remove"));
        }
        out
    }
}

/// Removes the programs and their pins, then the iptables ingress half an older intercept
/// installed in eBPF mode, unless what was removed steered ingress itself (see [`Removed`]).
/// Idempotent; a cgroup or a namespace that is gone is not an error (the namespace's rules
/// went with it). When the cgroup is gone, its pins can no longer be told from other ended
/// tasks' (they are named by the cgroup's id), so it removes the pins of every cgroup that no
/// longer exists ([`super::prune`]). A removal of a live task's installation leaves the other
/// tasks alone: that walk costs a few microseconds per installation on the host (13.5 ms
/// among 1,000 tasks, against 3.5 ms alone), and the next apply, or the daemon's next pass,
/// does it anyway.
pub fn remove(request: &Request) -> Result<RemoveReport, Error> {
    // A namespace that exists but cannot be used is bad input, refused before anything changes.
    let netns = match Netns::open(request.netns.clone()) {
        Ok(_) => true,
        Err(netns::Error::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    let bpffs = request.bpffs.clone().unwrap_or_else(|| PathBuf::from(super::DEFAULT_BPFFS));
    let (cgroup, cgroup_exists, removed) = match Target::new(&request.cgroup, Some(&bpffs)) {
        Ok(target) => {
            let removed = super::remove(&target)?;
            (target.cgroup, true, removed)
        }
        Err(super::Error::Cgroup(cgroup::Error::NotFound { .. })) => {
            (PathBuf::from(&request.cgroup), false, Removed::Nothing)
        }
        Err(e) => return Err(e.into()),
    };
    let pruned = if request.prune && !cgroup_exists { super::prune(&bpffs)? } else { Vec::new() };
    // Only where an older intercept may have installed: reading the rules alone runs four
    // helper processes, most of a removal's time.
    let older = !matches!(removed, Removed::Installation { steered_ingress: true });
    let ingress = if netns && older { remove_legacy_ingress(request)? } else { None };
    Ok(RemoveReport { cgroup, cgroup_exists, removed: removed.any(), pruned, ingress })
}

/// Removes the iptables ingress half an older intercept installed in eBPF mode: intercept's
/// ingress chain without its egress chain. An installation of the iptables backend always
/// has the egress chain, and is left alone. `None` when there was none.
fn remove_legacy_ingress(request: &Request) -> Result<Option<iptables::Report>, Error> {
    let iptables = match Iptables::open(request.netns.clone(), request.iptables_mode) {
        Ok(iptables) => iptables,
        Err(iptables::Error::Run(exec::Error::MissingProgram { .. })) => return Ok(None),
        Err(iptables::Error::Netns(e)) => return Err(e.into()),
        Err(e) => return Err(Error::Ingress(e)),
    };
    let status = iptables.status(None).map_err(Error::Ingress)?;
    let has = |chain: &str| status.listing.families.iter().any(|f| f.chains.iter().any(|c| c.name == chain));
    if !has(INGRESS_CHAIN) || has(EGRESS_CHAIN) {
        return Ok(None);
    }
    iptables.remove(false).map(Some).map_err(Error::Ingress)
}

/// `status`: the programs (the `sk_lookup` one included) and their counters, and whether they
/// are what the configuration (when given) asks for.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// `None`: nothing installed for the cgroup.
    pub ebpf: Option<Status>,
    /// The programs are pinned and all attached.
    pub installed: bool,
    /// Whether the maps hold exactly what the configuration asks for; `None` without one.
    pub matches: Option<bool>,
    /// The build (and map layout) whose programs are installed, when it is not this one.
    pub other_build: Option<String>,
    /// Why it is not installed or does not match, one line each.
    pub reasons: Vec<String>,
}

impl StatusReport {
    /// 0 when this build's programs are installed and match the configuration (if one was
    /// given), else 1.
    pub fn exit_code(&self) -> i32 {
        i32::from(!(self.installed && self.matches != Some(false) && self.other_build.is_none()))
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        match (&self.ebpf, &self.other_build) {
            (Some(status), _) => out.push_str(&status.render_text()),
            (None, Some(other)) => {
                let _ = writeln!(out, "eBPF backend: cgroup {}: installed by {other}", self.cgroup.display());
            }
            (None, None) => {
                let _ = writeln!(out, "eBPF backend: cgroup {}: nothing installed", self.cgroup.display());
            }
        }
        out.push('\n');
        let verdict = match (self.installed, self.matches) {
            _ if self.other_build.is_some() => "installed by another build",
            (true, Some(true)) => "installed, and matches the configuration",
            (true, None) => "installed",
            (true, Some(false)) => "installed, but does NOT match the configuration",
            (false, _) => "NOT installed",
        };
        let _ = writeln!(out, "{verdict}");
        for reason in &self.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
        out
    }
}

pub fn status(request: &Request, config: Option<&ProxyConfig>) -> Result<StatusReport, Error> {
    let target = Target::new(&request.cgroup, request.bpffs.as_deref())?;
    let mut reasons = Vec::new();
    // Another build's installation runs its own programs: reported, and not this build's
    // installation until `apply` replaces them (the daemon does at its next check).
    let version = target.installed_version()?;
    let other_build = version
        .filter(|v| v.build != super::build().build)
        .map(|v| format!("{} (map layout {})", v.build_str(), v.layout));
    let ebpf = match version {
        Some(v) if v.layout != intercept_common::LAYOUT => None,
        _ => super::status(&target)?,
    };
    if let Some(other) = &other_build {
        reasons.push(format!(
            "the programs are those of {other}, not of this build ({}): `intercept apply` replaces them in place",
            super::build().build_str()
        ));
    }
    let stale = target.leftovers().staging;
    for dir in &stale {
        reasons.push(format!(
            "an interrupted `intercept apply` left pins in {} (they may still intercept): `intercept apply` or \
             `intercept remove` removes them",
            dir.display()
        ));
    }
    let installed = match &ebpf {
        None if other_build.is_some() => false,
        None => {
            reasons.push(format!("no eBPF programs are pinned for cgroup {}", target.cgroup.display()));
            false
        }
        Some(status) => {
            let detached = status.detached();
            let whole = detached.is_empty();
            reasons.extend(detached);
            whole
        }
    };
    let netns = Netns::open(request.netns.clone())?;
    let matches = match config {
        None => None,
        Some(config) => {
            let mut matches = true;
            if let Some(status) = &ebpf {
                let local = netns.run(super::local_addresses)??;
                let plan = EbpfPlan::new(config);
                let want = Contents::desired(&plan, &local)?;
                let drift = status.contents.drift(&want);
                matches &= drift.is_empty();
                reasons.extend(drift);
            }
            Some(matches && ebpf.is_some())
        }
    };
    let installed = installed && stale.is_empty();
    Ok(StatusReport {
        cgroup: target.cgroup.clone(),
        pin_dir: target.pin_dir(),
        ebpf,
        installed,
        matches,
        other_build,
        reasons,
    })
}

impl StatusReport {
    /// With a configuration that has ingress: whether the `sk_lookup` program is attached and
    /// the maps steer `port`.
    fn ingress(&self, port: u16) -> (bool, String) {
        let status = self.ebpf.as_ref();
        let attached = status.is_some_and(|s| s.programs.iter().any(|p| p.program == Program::SkLookup && p.attached));
        let configured = status.is_some_and(|s| s.contents.config.proxy_ingress_port == port);
        (
            attached && configured,
            format!(
                "{} program attached to the namespace {}, ProxyIngressPort {port} in its maps {}",
                Program::SkLookup.section(),
                crate::backend::found(attached),
                crate::backend::found(configured)
            ),
        )
    }
}

/// The kernel's support for the program types the backend loads.
const PROGRAM_TYPES: [Feature; 4] = [
    Feature {
        name: "cgroup sock_addr eBPF programs",
        probe: || program_type(aya::programs::ProgramType::CgroupSockAddr, "cgroup sock_addr"),
    },
    Feature { name: "sockops eBPF programs", probe: || program_type(aya::programs::ProgramType::SockOps, "sockops") },
    Feature {
        name: "cgroup sockopt eBPF programs",
        probe: || program_type(aya::programs::ProgramType::CgroupSockopt, "cgroup sockopt"),
    },
    Feature {
        name: "sk_lookup eBPF programs",
        probe: || program_type(aya::programs::ProgramType::SkLookup, "sk_lookup"),
    },
];

fn program_type(program_type: aya::programs::ProgramType, name: &str) -> Result<(), String> {
    match aya::sys::is_program_supported(program_type) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("the kernel does not support {name} eBPF programs")),
        Err(e) => Err(format!("cannot probe the kernel for {name} eBPF programs: {e}")),
    }
}

/// The eBPF backend for one task: its cgroup and network namespace.
#[derive(Debug)]
pub struct Handle {
    request: Request,
}

impl Handle {
    /// Needs the cgroup; the cgroup and the namespace are resolved by each operation
    /// (`remove` accepts that they are gone).
    pub fn open(target: &backend::Target) -> Result<Handle, backend::Error> {
        let Some(cgroup) = target.cgroup.clone() else {
            return Err(backend::Error::Refused(
                "--backend ebpf needs --cgroup PATH|auto: the cgroup whose processes are intercepted".to_owned(),
            ));
        };
        Ok(Handle {
            request: Request {
                cgroup,
                bpffs: target.options.ebpf.bpffs.clone(),
                netns: target.netns.clone(),
                iptables_mode: target.options.iptables.mode,
                prune: !target.options.ebpf.pruned_by_caller,
            },
        })
    }
}

impl backend::Report for ApplyReport {
    fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => backend::json(self),
        }
    }
}

impl backend::Report for RemoveReport {
    fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => backend::json(self),
        }
    }
}

impl backend::Report for StatusReport {
    fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => backend::json(self),
        }
    }
}

impl Backend for Handle {
    fn kind(&self) -> Kind {
        Kind::Ebpf
    }

    /// [`EBPF`]; SYS_ADMIN (mounting a bpffs that is not mounted yet) and SYS_PTRACE and
    /// DAC_READ_SEARCH (taking a running proxy's listener) kept when held.
    fn requirements(&self, _: Option<&ProxyConfig>) -> Requirements {
        Requirements {
            capabilities: EBPF.to_vec(),
            optional: vec![
                caps::Capability::CAP_SYS_ADMIN,
                SYS_PTRACE_ADOPT.capability,
                DAC_READ_SEARCH_ADOPT.capability,
            ],
            tools: Vec::new(),
            kernel: PROGRAM_TYPES.to_vec(),
        }
    }

    fn present(&self) -> Result<bool, backend::Error> {
        let target = Target::new(&self.request.cgroup, self.request.bpffs.as_deref()).map_err(Error::from)?;
        Ok(target.pin_dir().is_dir())
    }

    fn accepts(&self, options: backend::ApplyOptions) -> Result<(), backend::Error> {
        if options.dry_run {
            return Err(backend::Error::Refused(
                "--dry-run is not available with --backend ebpf; `intercept plan --backend ebpf` shows the maps"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    fn apply(&self, config: &ProxyConfig, options: backend::ApplyOptions) -> Result<Change, backend::Error> {
        self.accepts(options)?;
        // Known from an earlier successful load on this boot (the program types among it), or
        // probed now: a kernel without a program type would refuse it half-way, so say so
        // before anything.
        let known = super::features::known();
        if !known {
            let lacking: Vec<String> = PROGRAM_TYPES.iter().filter_map(|f| (f.probe)().err()).collect();
            if !lacking.is_empty() {
                return Err(backend::Error::Refused(format!(
                    "the eBPF backend cannot work on this kernel ({}): {}",
                    backend::kernel_release(),
                    lacking.join("; ")
                )));
            }
        }
        let applied = apply(&self.request, config, ApplyOptions { bpf_log: options.events });
        match &applied {
            Ok(_) if !known => super::features::loaded(),
            // Only the kernel refusing the object or a program can be the record's fault; bad
            // input leaves it (and everything else) as it was.
            Err(Error::Ebpf(super::Error::Load(_) | super::Error::Program { .. })) if known => {
                super::features::distrust()
            }
            _ => {}
        }
        let mut report = applied?;
        Ok(Change {
            changed: !matches!(report.outcome, Outcome::Unchanged),
            warnings: Vec::new(),
            events: report.logs.take(),
            report: Box::new(report),
        })
    }

    fn remove(&self, dry_run: bool) -> Result<Change, backend::Error> {
        if dry_run {
            return Err(backend::Error::Refused(
                "--dry-run is not available with --backend ebpf; `intercept status` shows what is installed".to_owned(),
            ));
        }
        let report = remove(&self.request)?;
        let changed = report.removed || !report.pruned.is_empty() || report.ingress.as_ref().is_some_and(|r| r.changed);
        let warnings = report.ingress.iter().flat_map(|r| r.warnings.clone()).collect();
        Ok(Change { changed, warnings, report: Box::new(report), events: None })
    }

    fn status(&self, config: Option<&ProxyConfig>) -> Result<backend::Status, backend::Error> {
        let status = status(&self.request, config)?;
        let ingress = config.and_then(|c| c.ingress.as_ref()).map(|i| status.ingress(i.proxy_port));
        Ok(backend::Status {
            kind: Kind::Ebpf,
            installed: status.installed,
            matches: status.matches,
            reasons: status.reasons.clone(),
            warnings: Vec::new(),
            counters: status.ebpf.iter().flat_map(|s| s.counters.iter().copied()).collect(),
            ingress,
            cgroup: Some(status.cgroup.clone()),
            installation: "intercept's eBPF programs pinned and attached",
            exit_code: status.exit_code(),
            report: Box::new(status),
        })
    }
}
