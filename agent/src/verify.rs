//! `intercept verify`: end-to-end proof that interception works in a live target, for use as
//! a readiness step (like Istio's validation container or Linkerd's network validator).
//!
//! First the installation is compared with the configuration (the backends' own `status`
//! drift logic). Then live probes: child processes (this binary re-executed with the hidden
//! `verify-probe` subcommand) join the target network namespace and, in eBPF mode, the task's
//! cgroup (the programs only see processes of the cgroup, and the `cgroup/getsockopt` program
//! that answers `SO_ORIGINAL_DST` only runs for them), take the identity under test and dial a
//! TEST-NET address (192.0.2.0/24, 2001:db8::/32), which has no server anywhere.
//!
//! - ProxyEgressPort free (the proxy has not started): the probe listens on loopback at that
//!   port itself, and the workload identity's connection must arrive there with
//!   `SO_ORIGINAL_DST` equal to the address dialled.
//! - ProxyEgressPort busy (the proxy runs): the probe only dials, and closes the connection at
//!   once without sending anything; the backend's redirect counter must have grown.
//! - The ignored identities (IgnoredUID, IgnoredGID): the connection must not reach ProxyEgressPort.
//!
//! Nothing is left behind: the probes' listeners and sockets belong to the probe processes,
//! which exit (or are killed, by pid, at the deadline) before `verify` returns. Counters are not
//! rewritten: netfilter's cannot be decremented, and a user-space write of an eBPF per-CPU counter
//! replaces every CPU's slot at once, losing what the programs counted meanwhile; the report
//! says instead by how much the probes moved each counter.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::ebpf::{self, Counter, Program};
use crate::backend::iptables::{self, Iptables};
use crate::backend::nftables::{self, Nftables};
use crate::config::ProxyConfig;
use crate::netns::{self, Netns};
use crate::plan::{Format, IptablesPlan, NftablesPlan, iptables as iptables_plan, nftables as nftables_plan};

/// The exit code of `intercept verify` when interception is not working (a check failed, or
/// the checks did not finish within `--timeout`).
pub const EXIT_NOT_WORKING: i32 = 3;
/// The identity probes take as "the workload" unless the configuration ignores it.
pub const WORKLOAD_ID: u32 = 65534;
/// TEST-NET-1, -2 and -3 hosts (RFC 5737), tried in order: the first not in EgressIgnoredIPs
/// is dialled.
pub const TEST_NET_V4: [Ipv4Addr; 3] =
    [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(203, 0, 113, 1)];
/// Documentation hosts (RFC 3849), likewise.
pub const TEST_NET_V6: [Ipv6Addr; 2] =
    [Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)];
/// The first destination port tried; the first one not in EgressIgnoredPorts is dialled.
const FIRST_PORT: u16 = 80;
/// How long an ignored identity's dial may go unanswered: a TEST-NET address has no server,
/// so a refusal or this much silence is the expected "not redirected".
const IGNORED_WAIT: Duration = Duration::from_secs(1);
/// How long a probe waits for a connection it made to show up on its listener.
const ACCEPT_WAIT: Duration = Duration::from_millis(500);
/// Time the probe process needs around its dial (start, exit).
const PROBE_SLACK: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Iptables(#[from] iptables::Error),
    #[error(transparent)]
    Nftables(#[from] nftables::Error),
    #[error(transparent)]
    Ebpf(#[from] ebpf::cli::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the probe process ({probe}) failed: {message}")]
    Probe { probe: String, message: String },
}

/// The installation to verify: an opened backend.
pub enum Installation {
    Iptables(Iptables),
    Nftables(Nftables),
    Ebpf(ebpf::cli::Request),
}

/// What was read from an installation.
struct Inspection {
    installed: bool,
    reasons: Vec<String>,
    matches: bool,
    /// With ingress configured: whether its installed part is there, and what was seen.
    ingress: Option<(bool, String)>,
    /// eBPF mode: the task's cgroup, where the probes run.
    cgroup: Option<PathBuf>,
}

type Counters = BTreeMap<String, u64>;

impl Installation {
    pub fn name(&self) -> &'static str {
        match self {
            Installation::Iptables(_) => "iptables",
            Installation::Nftables(_) => "nftables",
            Installation::Ebpf(_) => "eBPF",
        }
    }

    fn inspect(&self, config: &ProxyConfig) -> Result<Inspection, Error> {
        let ingress_port = config.ingress.as_ref().map(|i| i.proxy_port);
        let (installed, matches, reasons, ingress, cgroup) = match self {
            Installation::Iptables(backend) => {
                let status = backend.status(Some(&IptablesPlan::new(config)))?;
                let ingress = ingress_port.map(|port| iptables_ingress(&status, port));
                (status.installed, status.matches, status.reasons, ingress, None)
            }
            Installation::Nftables(backend) => {
                let status = backend.status(Some(&NftablesPlan::new(config)))?;
                let ingress = ingress_port.map(|port| nftables_ingress(&status, port));
                (status.installed, status.matches, status.reasons, ingress, None)
            }
            Installation::Ebpf(request) => {
                let status = ebpf::cli::status(request, Some(config))?;
                let ingress = ingress_port.map(|port| ebpf_ingress(status.ebpf.as_ref(), port));
                (status.installed, status.matches, status.reasons, ingress, Some(status.cgroup))
            }
        };
        Ok(Inspection { installed, matches: matches == Some(true), reasons, ingress, cgroup })
    }

    /// Every counter of the installation, by a name that is stable across reads.
    fn counters(&self) -> Result<Counters, Error> {
        match self {
            Installation::Iptables(backend) => Ok(iptables_counters(&backend.status(None)?)),
            Installation::Nftables(backend) => Ok(nftables_counters(&backend.status(None)?)),
            Installation::Ebpf(request) => Ok(ebpf::cli::status(request, None)?
                .ebpf
                .map(|status| status.counters.iter().map(|(c, v)| (c.name().to_owned(), *v)).collect())
                .unwrap_or_default()),
        }
    }

    /// The name (in `counters`) of the counter a connection to `destination` moves when the
    /// exemption `exempt` leaves it alone; `None` when no such counter is installed.
    fn exemption_counter(&self, counters: &Counters, exempt: Exempt, destination: IpAddr) -> Option<String> {
        let ebpf_counter = match exempt {
            Exempt::Uid(_) => Counter::IgnoredUid,
            Exempt::Gid(_) => Counter::IgnoredGid,
        };
        let prefix = match self {
            Installation::Iptables(_) => format!("{} {}", family_label(destination), iptables_plan::EGRESS_CHAIN),
            Installation::Nftables(_) => nftables_plan::EGRESS_CHAIN.to_owned(),
            Installation::Ebpf(_) => return Some(ebpf_counter.name().to_owned()),
        };
        // The rule's comment, as the plan writes it.
        let name = format!("{prefix}: never redirect {exempt}");
        counters.contains_key(&name).then_some(name)
    }

    /// The name (in [`Installation::counters`]) of the counter a redirected connection to
    /// `destination` moves.
    fn redirect_counter(&self, destination: IpAddr) -> String {
        match self {
            Installation::Iptables(_) => format!("{} egress redirect", family_label(destination)),
            Installation::Nftables(_) => "egress redirect".to_owned(),
            Installation::Ebpf(_) => Counter::Redirected.name().to_owned(),
        }
    }
}

fn family_label(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn iptables_counters(status: &iptables::Status) -> Counters {
    let mut out = Counters::new();
    for family in &status.families {
        let label = match family.family {
            iptables_plan::Family::Ipv4 => "IPv4",
            iptables_plan::Family::Ipv6 => "IPv6",
        };
        for rule in &family.jumps {
            out.insert(format!("{label} {}", rule_name(&rule.rule)), rule.packets);
        }
        for chain in &family.chains {
            for rule in &chain.rules {
                let name = if chain.name == iptables_plan::EGRESS_CHAIN && rule.rule.contains("-j REDIRECT") {
                    format!("{label} egress redirect")
                } else {
                    format!("{label} {}: {}", chain.name, rule_name(&rule.rule))
                };
                out.insert(name, rule.packets);
            }
        }
    }
    out
}

fn nftables_counters(status: &nftables::Status) -> Counters {
    let mut out = Counters::new();
    for chain in status.table.iter().flat_map(|t| &t.chains) {
        for rule in &chain.rules {
            let name = if chain.name == nftables_plan::EGRESS_CHAIN && rule.rule.contains("redirect to") {
                "egress redirect".to_owned()
            } else {
                format!("{}: {}", chain.name, rule_name(&rule.rule))
            };
            out.insert(name, rule.packets);
        }
    }
    out
}

/// A rule's name in the counters: its comment (every rule intercept installs has one, and the
/// drift check has shown they are intercept's), else the whole rule.
fn rule_name(rule: &str) -> &str {
    const MARK: &str = "comment \"intercept: ";
    rule.find(MARK)
        .map(|at| &rule[at + MARK.len()..])
        .and_then(|rest| rest.split_once('"'))
        .map_or(rule, |(comment, _)| comment)
}

fn iptables_ingress(status: &iptables::Status, port: u16) -> (bool, String) {
    let mut seen = Vec::new();
    let mut whole = true;
    for family in status.families.iter().filter(|f| f.readable) {
        let label = match family.family {
            iptables_plan::Family::Ipv4 => "IPv4",
            iptables_plan::Family::Ipv6 => "IPv6",
        };
        let jump = family.jumps.iter().any(|r| {
            r.rule.starts_with("-A PREROUTING") && r.rule.ends_with(&format!("-j {}", iptables_plan::INGRESS_CHAIN))
        });
        let redirect = family.chains.iter().any(|c| {
            c.name == iptables_plan::INGRESS_CHAIN
                && c.rules.iter().any(|r| r.rule.contains(&format!("-j REDIRECT --to-ports {port}")))
        });
        // IPv4 is always installed; IPv6 only when the namespace and configuration have it.
        if family.family == iptables_plan::Family::Ipv4 || jump || redirect {
            whole &= jump && redirect;
            seen.push(format!(
                "{label}: PREROUTING jump to {} {}, REDIRECT to {port} {}",
                iptables_plan::INGRESS_CHAIN,
                present(jump),
                present(redirect)
            ));
        }
    }
    (whole, seen.join("; "))
}

fn nftables_ingress(status: &nftables::Status, port: u16) -> (bool, String) {
    let table = status.table.as_ref();
    let chain = |name: &str| table.and_then(|t| t.chain(name));
    let jump = chain(nftables_plan::PREROUTING_CHAIN).is_some_and(|c| {
        c.hook.as_ref().is_some_and(|h| h.hook == "prerouting")
            && c.rules.iter().any(|r| r.rule.contains(&format!(" jump {} ", nftables_plan::INGRESS_CHAIN)))
    });
    let redirect = chain(nftables_plan::INGRESS_CHAIN)
        .is_some_and(|c| c.rules.iter().any(|r| r.rule.contains(&format!("redirect to :{port}"))));
    (
        jump && redirect,
        format!(
            "chain {} hooked at prerouting with a jump to {} {}, redirect to :{port} {}",
            nftables_plan::PREROUTING_CHAIN,
            nftables_plan::INGRESS_CHAIN,
            present(jump),
            present(redirect)
        ),
    )
}

fn ebpf_ingress(status: Option<&ebpf::Status>, port: u16) -> (bool, String) {
    let attached = status.is_some_and(|s| s.programs.iter().any(|p| p.program == Program::SkLookup && p.attached));
    let configured = status.is_some_and(|s| s.contents.config.proxy_ingress_port == port);
    (
        attached && configured,
        format!(
            "{} program attached to the namespace {}, ProxyIngressPort {port} in its maps {}",
            Program::SkLookup.section(),
            present(attached),
            present(configured)
        ),
    )
}

fn present(yes: bool) -> &'static str {
    if yes { "(present)" } else { "(MISSING)" }
}

/// A uid and gid a probe runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// What the live probes dial, listen on and run as: derived from the configuration alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub egress_port: u16,
    /// Loopback at ProxyEgressPort, per family intercepted: where redirected connections land.
    pub listen: Vec<SocketAddr>,
    /// A TEST-NET address per family intercepted, at a port that is not ignored.
    pub destinations: Vec<SocketAddr>,
    pub workload: Identity,
    /// Each exemption by identity, and an identity that has it (and no other).
    pub ignored: Vec<(Exempt, Identity)>,
}

/// An exemption by identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exempt {
    Uid(u32),
    Gid(u32),
}

impl std::fmt::Display for Exempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exempt::Uid(uid) => write!(f, "IgnoredUID {uid}"),
            Exempt::Gid(gid) => write!(f, "IgnoredGID {gid}"),
        }
    }
}

impl ProbePlan {
    /// `Err` says why nothing can be dialled (every candidate destination is ignored).
    pub fn new(config: &ProxyConfig) -> Result<ProbePlan, String> {
        let ignored_ports = config.effective_ignored_ports();
        let port = (FIRST_PORT..=u16::MAX)
            .find(|&p| !ignored_ports.contains(p))
            .ok_or_else(|| format!("every port from {FIRST_PORT} up is in EgressIgnoredPorts"))?;
        let ignored_ips = config.effective_ignored_ips();
        let not_ignored = |ip: IpAddr| !ignored_ips.iter().any(|net| net.contains(&ip));
        let mut destinations = Vec::new();
        let v4 = TEST_NET_V4
            .iter()
            .map(|&ip| IpAddr::V4(ip))
            .find(|&ip| not_ignored(ip))
            .ok_or("every TEST-NET IPv4 address (192.0.2.1, 198.51.100.1, 203.0.113.1) is in EgressIgnoredIPs")?;
        destinations.push(SocketAddr::new(v4, port));
        let mut listen = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.proxy_egress_port)];
        if config.ipv6 {
            let v6 = TEST_NET_V6
                .iter()
                .map(|&ip| IpAddr::V6(ip))
                .find(|&ip| not_ignored(ip))
                .ok_or("every documentation IPv6 address (2001:db8::1, 2001:db8:ffff::1) is in EgressIgnoredIPs")?;
            destinations.push(SocketAddr::new(v6, port));
            listen.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), config.proxy_egress_port));
        }
        let pick =
            |ignored: Option<u32>| (0..=WORKLOAD_ID).rev().find(|&id| Some(id) != ignored).unwrap_or(WORKLOAD_ID);
        let workload = Identity { uid: pick(config.ignored_uid), gid: pick(config.ignored_gid) };
        let mut ignored = Vec::new();
        if let Some(uid) = config.ignored_uid {
            ignored.push((Exempt::Uid(uid), Identity { uid, gid: workload.gid }));
        }
        if let Some(gid) = config.ignored_gid {
            ignored.push((Exempt::Gid(gid), Identity { uid: workload.uid, gid }));
        }
        Ok(ProbePlan { egress_port: config.proxy_egress_port, listen, destinations, workload, ignored })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub expected: String,
    pub observed: String,
    pub passed: bool,
}

impl Check {
    fn new(check: impl Into<String>, expected: impl Into<String>, observed: impl Into<String>, passed: bool) -> Check {
        Check { check: check.into(), expected: expected.into(), observed: observed.into(), passed }
    }
}

/// How the egress redirection was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// ProxyEgressPort was free: verify listened on it and read SO_ORIGINAL_DST itself.
    Listener,
    /// The proxy listens on ProxyEgressPort: proven by the redirect counter.
    Counters,
}

/// The outcome of `intercept verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub backend: String,
    pub target: String,
    pub timeout_ms: u64,
    /// `None` when the live probes did not run.
    pub method: Option<Method>,
    pub checks: Vec<Check>,
    /// Counters the probes moved, and by how much (they are not restored; see the module docs).
    pub counters_moved: BTreeMap<String, u64>,
    pub verified: bool,
    pub exit_code: i32,
}

impl VerifyReport {
    pub fn new(backend: &str, target: &str, timeout: Duration) -> VerifyReport {
        VerifyReport {
            backend: backend.to_owned(),
            target: target.to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            method: None,
            checks: Vec::new(),
            counters_moved: BTreeMap::new(),
            verified: false,
            exit_code: EXIT_NOT_WORKING,
        }
    }

    fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// Adds a probe's check; `false` when the deadline passed and probing ends.
    fn step(&mut self, step: Step) -> bool {
        let go_on = step.is_ok();
        self.push(step.unwrap_or_else(|timed_out| timed_out));
        go_on
    }

    /// Settles the verdict: verified when there were checks and every one passed.
    pub fn finish(mut self) -> VerifyReport {
        self.verified = !self.checks.is_empty() && self.checks.iter().all(|c| c.passed);
        self.exit_code = if self.verified { 0 } else { EXIT_NOT_WORKING };
        self
    }

    /// 0 verified, [`EXIT_NOT_WORKING`] otherwise.
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => crate::plan::to_json(self),
        }
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "intercept verify: {} backend in the {} (timeout {} ms)",
            self.backend, self.target, self.timeout_ms
        );
        let method = match self.method {
            Some(Method::Listener) => "ProxyEgressPort was free: verify listened on it itself",
            Some(Method::Counters) => "ProxyEgressPort is in use (the proxy runs): proven through the redirect counter",
            None => "live probes not run",
        };
        let _ = writeln!(out, "method: {method}\n");
        for check in &self.checks {
            let _ = writeln!(out, "{}  {}", if check.passed { "PASS" } else { "FAIL" }, check.check);
            let _ = writeln!(out, "      expected  {}", check.expected);
            let _ = writeln!(out, "      observed  {}", check.observed);
        }
        if !self.counters_moved.is_empty() {
            out.push_str("\ncounters the probes moved (not restored):\n");
            for (name, by) in &self.counters_moved {
                let _ = writeln!(out, "  +{by}  {name}");
            }
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let _ = if self.verified {
            writeln!(out, "\nresult: verified ({} checks passed)", self.checks.len())
        } else {
            writeln!(
                out,
                "\nresult: interception NOT working: {failed} of {} checks failed (exit {EXIT_NOT_WORKING})",
                self.checks.len()
            )
        };
        out
    }
}

/// Verifies `installation` against `config` in the namespace `target`, within `timeout`.
pub fn verify(
    installation: &Installation,
    config: &ProxyConfig,
    target: netns::Target,
    timeout: Duration,
) -> Result<VerifyReport, Error> {
    let deadline = Instant::now() + timeout;
    let netns = Netns::open(target)?;
    let mut report = VerifyReport::new(installation.name(), &netns.target().to_string(), timeout);
    let inspection = installation.inspect(config)?;
    let what = match installation {
        Installation::Ebpf(_) => "intercept's eBPF programs pinned and attached",
        _ => "intercept's rules with the jump to them",
    };
    let installed_observed = if inspection.installed { "installed".to_owned() } else { inspection.reasons.join("; ") };
    report.push(Check::new("installed", what, installed_observed, inspection.installed));
    if inspection.installed {
        let observed = if inspection.matches { "no drift".to_owned() } else { inspection.reasons.join("; ") };
        report.push(Check::new(
            "matches the configuration",
            "exactly what the configuration asks for",
            observed,
            inspection.matches,
        ));
    }
    if let Some((whole, seen)) = inspection.ingress {
        report.push(Check::new("ingress installed (not probed live)", "the ingress part in place", seen, whole));
    }
    if !(inspection.installed && inspection.matches) {
        return Ok(report.finish());
    }
    let mut plan = match ProbePlan::new(config) {
        Ok(plan) => plan,
        Err(why) => {
            report.push(Check::new(
                "a destination to dial",
                "a TEST-NET address and port that are not ignored",
                why,
                false,
            ));
            return Ok(report.finish());
        }
    };
    if config.ipv6 && !netns.run(|| TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok())? {
        // The backends install nothing for IPv6 in such a namespace (see `status`'s warnings).
        plan.listen.retain(SocketAddr::is_ipv4);
        plan.destinations.retain(SocketAddr::is_ipv4);
        report.push(Check::new(
            "IPv6 in the namespace",
            "IPv6 probed where the namespace has it",
            "the namespace has no IPv6 loopback (IPv6 disabled): only IPv4 is probed",
            true,
        ));
    }
    let before = installation.counters()?;
    let in_use = netns
        .run(|| port_in_use(&plan.listen))?
        .map_err(|source| Error::Io { op: "trying to bind ProxyEgressPort on loopback", source })?;
    let method = if in_use { Method::Counters } else { Method::Listener };
    report.method = Some(method);
    let mut live = Live {
        installation,
        probes: Probes::new(&netns, inspection.cgroup.as_deref())?,
        method,
        deadline,
        timeout,
        last: before.clone(),
    };
    'probes: for &destination in &plan.destinations {
        if !report.step(live.workload(&plan, destination)?) {
            break 'probes;
        }
        for &(exempt, identity) in &plan.ignored {
            if !report.step(live.ignored(&plan, exempt, identity, destination)?) {
                break 'probes;
            }
        }
    }
    let after = installation.counters()?;
    report.counters_moved = after
        .iter()
        .filter_map(|(name, &value)| {
            let was = before.get(name).copied().unwrap_or(0);
            (value > was).then(|| (name.clone(), value - was))
        })
        .collect();
    Ok(report.finish())
}

/// A probe's check; `Err` holds the check that says the deadline passed, which ends probing.
type Step = Result<Check, Check>;

/// The live probes of one `verify`.
struct Live<'a> {
    installation: &'a Installation,
    probes: Probes<'a>,
    method: Method,
    deadline: Instant,
    timeout: Duration,
    /// The counters as last read.
    last: Counters,
}

impl Live<'_> {
    /// The workload's dial to `destination`: redirected, with its original destination.
    fn workload(&mut self, plan: &ProbePlan, destination: SocketAddr) -> Result<Step, Error> {
        let identity = plan.workload;
        let check = format!("workload (uid {} gid {}) dials {destination}", identity.uid, identity.gid);
        let wait = self.deadline.saturating_duration_since(Instant::now()).saturating_sub(PROBE_SLACK);
        let Some(outcome) = self.probes.run(self.listen(plan), destination, identity, wait, self.deadline)? else {
            return Ok(Err(timed_out(&check, self.timeout)));
        };
        let landing = SocketAddr::new(
            if destination.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) },
            plan.egress_port,
        );
        Ok(Ok(match self.method {
            Method::Listener => {
                let passed = outcome
                    .accepted
                    .as_ref()
                    .is_some_and(|a| a.listener == landing && a.original_dst == Some(destination));
                let expected = format!("redirected to {landing}, SO_ORIGINAL_DST {destination}");
                Check::new(check, expected, outcome.describe(), passed)
            }
            Method::Counters => {
                let name = self.installation.redirect_counter(destination.ip());
                let (was, is) = self.counter_moves(&name)?;
                let expected =
                    format!("connects to the proxy on ProxyEgressPort {}; counter `{name}` grows", plan.egress_port);
                let observed = format!("{}; `{name}` {was} -> {is}", outcome.describe());
                Check::new(check, expected, observed, outcome.connected && is > was)
            }
        }))
    }

    /// An ignored identity's dial to `destination`: not redirected.
    fn ignored(
        &mut self,
        plan: &ProbePlan,
        exempt: Exempt,
        identity: Identity,
        destination: SocketAddr,
    ) -> Result<Step, Error> {
        let check = format!("{exempt} (uid {} gid {}) dials {destination}", identity.uid, identity.gid);
        let left = self.deadline.saturating_duration_since(Instant::now());
        let wait = IGNORED_WAIT.min(left.saturating_sub(PROBE_SLACK));
        let Some(outcome) = self.probes.run(self.listen(plan), destination, identity, wait, self.deadline)? else {
            return Ok(Err(timed_out(&check, self.timeout)));
        };
        if outcome.timed_out && wait < IGNORED_WAIT {
            // The deadline cut the wait short: no verdict either way.
            return Ok(Err(timed_out(&check, self.timeout)));
        }
        Ok(Ok(match self.method {
            Method::Listener => {
                let expected = format!("not redirected: nothing arrives at ProxyEgressPort {}", plan.egress_port);
                Check::new(check, expected, outcome.describe(), outcome.accepted.is_none())
            }
            Method::Counters => {
                // The connection cannot tell the proxy from a server at the address: the
                // exemption's own counter can.
                match self.installation.exemption_counter(&self.last, exempt, destination.ip()) {
                    None => Check::new(check, format!("a counter for {exempt}"), "none installed", false),
                    Some(name) => {
                        let (was, is) = self.counter_moves(&name)?;
                        let expected = format!("not redirected: counter `{name}` grows");
                        let observed = format!("{}; `{name}` {was} -> {is}", outcome.describe());
                        Check::new(check, expected, observed, is > was)
                    }
                }
            }
        }))
    }

    /// Where probes listen: ProxyEgressPort when it was free, nowhere when the proxy has it.
    fn listen<'p>(&self, plan: &'p ProbePlan) -> &'p [SocketAddr] {
        match self.method {
            Method::Listener => &plan.listen,
            Method::Counters => &[],
        }
    }

    /// Reads the counters again: `name`'s value at the last read, and now.
    fn counter_moves(&mut self, name: &str) -> Result<(u64, u64), Error> {
        let now = self.installation.counters()?;
        let was = self.last.get(name).copied().unwrap_or(0);
        let is = now.get(name).copied().unwrap_or(0);
        self.last = now;
        Ok((was, is))
    }
}

fn timed_out(check: &str, timeout: Duration) -> Check {
    Check::new(
        format!("{check}: within --timeout"),
        format!("done within {} ms", timeout.as_millis()),
        "timed out; the probe process was stopped",
        false,
    )
}

/// Whether something else listens on one of `listen` (bind fails with EADDRINUSE); run in the
/// target namespace. The test sockets are closed at once.
fn port_in_use(listen: &[SocketAddr]) -> io::Result<bool> {
    for &addr in listen {
        match TcpListener::bind(addr) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Ok(true),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{addr}: {e}"))),
        }
    }
    Ok(false)
}

/// Starts probe processes in the target namespace (and cgroup).
struct Probes<'a> {
    netns: &'a Netns,
    /// The cgroup a probe joins before it runs (eBPF mode).
    cgroup: Option<&'a Path>,
    exe: PathBuf,
}

impl<'a> Probes<'a> {
    fn new(netns: &'a Netns, cgroup: Option<&'a Path>) -> Result<Probes<'a>, Error> {
        let exe = std::env::current_exe().map_err(|source| Error::Io { op: "finding this program", source })?;
        Ok(Probes { netns, cgroup, exe })
    }

    /// Runs one probe; `None` when `deadline` passed first (the process was killed).
    fn run(
        &self,
        listen: &[SocketAddr],
        dial: SocketAddr,
        identity: Identity,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> Result<Option<ProbeOutcome>, Error> {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let mut command = self.netns.command(&self.exe);
        command
            .arg("verify-probe")
            .args(["--dial", &dial.to_string()])
            .args(["--uid", &identity.uid.to_string(), "--gid", &identity.gid.to_string()])
            .args(["--connect-timeout-ms", &connect_timeout.as_millis().max(1).to_string()])
            .args(listen.iter().flat_map(|l| ["--listen".to_owned(), l.to_string()]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cgroup) = self.cgroup {
            ebpf::join_cgroup(&mut command, cgroup).map_err(|source| Error::Io { op: "the cgroup path", source })?;
        }
        let probe = format!("dial {dial} as uid {} gid {}", identity.uid, identity.gid);
        let mut child =
            ProbeChild(command.spawn().map_err(|source| Error::Io { op: "starting a probe process", source })?);
        let status = loop {
            match child.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
                // Dropping the child kills it.
                Ok(None) => return Ok(None),
                Err(source) => return Err(Error::Io { op: "waiting for a probe process", source }),
            }
        };
        // The probe has exited: its few lines are all in the pipes.
        let mut stdout = String::new();
        if let Some(pipe) = child.0.stdout.as_mut() {
            pipe.read_to_string(&mut stdout).map_err(|source| Error::Io { op: "reading a probe's answer", source })?;
        }
        let mut stderr = String::new();
        if let Some(pipe) = child.0.stderr.as_mut() {
            // Only to explain a probe that gave no answer.
            let _ = pipe.read_to_string(&mut stderr);
        }
        let outcome: ProbeOutcome = serde_json::from_str(stdout.trim()).map_err(|e| Error::Probe {
            probe: probe.clone(),
            message: format!("{status} ({e}): {}{}", stdout.trim(), stderr.trim()),
        })?;
        if let Some(message) = outcome.error {
            return Err(Error::Probe { probe, message });
        }
        Ok(Some(outcome))
    }
}

/// A probe process, killed (by pid) and reaped when dropped: on every path out of
/// [`Probes::run`], a deadline or an error included, no probe outlives it.
struct ProbeChild(Child);

impl Drop for ProbeChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `intercept verify-probe` (hidden): one probe, run by `verify` in the target namespace and
/// cgroup. Listens on `--listen` (as root), then takes the identity, dials, reports as one JSON
/// line on stdout and exits, closing everything.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    #[arg(long)]
    pub dial: SocketAddr,
    #[arg(long)]
    pub uid: u32,
    #[arg(long)]
    pub gid: u32,
    #[arg(long)]
    pub connect_timeout_ms: u64,
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOutcome {
    /// The probe could not do its job (e.g. its listener could not bind).
    pub error: Option<String>,
    pub connected: bool,
    pub timed_out: bool,
    /// How the connect ended, for people.
    pub connect: String,
    /// The probe's own connection, as its listener accepted it.
    pub accepted: Option<Accepted>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub listener: SocketAddr,
    pub original_dst: Option<SocketAddr>,
    /// Why SO_ORIGINAL_DST gave no answer.
    pub original_dst_error: Option<String>,
}

impl ProbeOutcome {
    fn failed(message: String) -> ProbeOutcome {
        ProbeOutcome {
            error: Some(message),
            connected: false,
            timed_out: false,
            connect: String::new(),
            accepted: None,
        }
    }

    fn describe(&self) -> String {
        match &self.accepted {
            Some(Accepted { listener, original_dst: Some(dst), .. }) => {
                format!("{}; arrived at {listener}, SO_ORIGINAL_DST {dst}", self.connect)
            }
            Some(Accepted { listener, original_dst: None, original_dst_error }) => format!(
                "{}; arrived at {listener}, SO_ORIGINAL_DST failed: {}",
                self.connect,
                original_dst_error.as_deref().unwrap_or("no answer")
            ),
            None => self.connect.clone(),
        }
    }
}

/// The body of `intercept verify-probe`: prints the outcome; the exit code is 0 unless the
/// outcome cannot be printed.
pub fn probe_main(args: &ProbeArgs) -> i32 {
    let outcome = probe(args);
    match serde_json::to_string(&outcome) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(_) => 1,
    }
}

fn probe(args: &ProbeArgs) -> ProbeOutcome {
    let mut listeners = Vec::new();
    for &addr in &args.listen {
        match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(listener) => listeners.push((addr, listener)),
            Err(e) => return ProbeOutcome::failed(format!("listen on {addr}: {e}")),
        }
    }
    if let Err(e) = take_identity(args.uid, args.gid) {
        return ProbeOutcome::failed(format!("becoming uid {} gid {}: {e}", args.uid, args.gid));
    }
    let timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
    let stream = TcpStream::connect_timeout(&args.dial, timeout);
    let (connected, timed_out, connect) = match &stream {
        Ok(s) => (
            true,
            false,
            format!("connected (from {})", s.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string())),
        ),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            (false, true, format!("no answer within {} ms", timeout.as_millis()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => (
            false,
            false,
            format!(
                "connect failed: no route to {} (netfilter redirects after routing: the namespace needs a route \
                 to it, e.g. a default route)",
                args.dial.ip()
            ),
        ),
        Err(e) => (false, false, format!("connect failed: {e}")),
    };
    let accepted = match &stream {
        Ok(s) if !listeners.is_empty() => s.local_addr().ok().and_then(|from| accept_own(&listeners, from)),
        _ => None,
    };
    ProbeOutcome { error: None, connected, timed_out, connect, accepted }
}

fn take_identity(uid: u32, gid: u32) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    setgroups(&[])?;
    setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))?;
    setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
}

/// Waits up to [`ACCEPT_WAIT`] for the connection from `from` on any of `listeners`, and reads
/// its SO_ORIGINAL_DST. Other connections (the task's own, while verify listens) are closed.
fn accept_own(listeners: &[(SocketAddr, TcpListener)], from: SocketAddr) -> Option<Accepted> {
    let until = Instant::now() + ACCEPT_WAIT;
    while Instant::now() < until {
        for (addr, listener) in listeners {
            let Ok((stream, peer)) = listener.accept() else { continue };
            if peer != from {
                continue;
            }
            let (original_dst, original_dst_error) = match original_destination(&stream, *addr) {
                Ok(dst) => (Some(dst), None),
                Err(e) => (None, Some(e.to_string())),
            };
            return Some(Accepted { listener: *addr, original_dst, original_dst_error });
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, as a proxy reads it.
fn original_destination(stream: &TcpStream, listener: SocketAddr) -> nix::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let fd = stream.as_fd();
    Ok(match listener {
        SocketAddr::V4(_) => {
            let sin = getsockopt(&fd, sockopt::OriginalDst)?;
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(&fd, sockopt::Ip6tOriginalDst)?;
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                0,
            ))
        }
    })
}

/// Parses `--timeout`: a whole number with a unit, `ms`, `s` or `m` (`500ms`, `5s`, `1m`); a
/// bare number is seconds. Zero is refused.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a duration: write e.g. 500ms, 5s or 1m");
    let value: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err(format!("`{text}`: the timeout must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests;
