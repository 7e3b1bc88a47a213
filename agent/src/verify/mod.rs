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

mod probe;
mod report;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{self, Backend, Counter, Counters};
use crate::config::{DNS_PORT, ProxyConfig};
use crate::netns::{self, Netns};

use probe::Probes;
pub use probe::{Accepted, ProbeArgs, ProbeOutcome, probe_main};
pub use report::{Check, Method, VerifyReport};

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
    Backend(#[from] backend::Error),
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
    /// With DNS capture: a query to a TEST-NET server per family.
    pub dns: Option<DnsPlan>,
}

/// The DNS capture probes: where a query lands (ProxyDNSPort on loopback, per family), and the
/// servers asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPlan {
    pub port: u16,
    pub listen: Vec<SocketAddr>,
    pub servers: Vec<SocketAddr>,
}

/// An exemption by identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exempt {
    Uid(u32),
    Gid(u32),
}

impl Exempt {
    /// The counter of the connections this exemption leaves alone.
    fn counter(self) -> Counter {
        match self {
            Exempt::Uid(_) => Counter::IgnoredUid,
            Exempt::Gid(_) => Counter::IgnoredGid,
        }
    }
}

impl std::fmt::Display for Exempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exempt::Uid(uid) => write!(f, "IgnoredUID {uid}"),
            Exempt::Gid(gid) => write!(f, "IgnoredGID {gid}"),
        }
    }
}

/// The ignored uids (and, separately, gids) verify probes as, at most.
const MAX_IDENTITY_PROBES: usize = 8;

impl ProbePlan {
    /// `Err` says why nothing can be dialled (every candidate destination is ignored).
    pub fn new(config: &ProxyConfig) -> Result<ProbePlan, String> {
        let ignored_ports = config.effective_ignored_ports();
        let port = (FIRST_PORT..=u16::MAX)
            .find(|&p| !ignored_ports.contains(p))
            .ok_or_else(|| format!("every port from {FIRST_PORT} up is in EgressIgnoredPorts"))?;
        let ignored_ips = config.effective_ignored_ips();
        // With EgressIncludedIPs only an included destination is redirected; the probe still
        // dials documentation addresses only, so that a broken redirect sends nothing anywhere.
        let included =
            |ip: IpAddr| config.egress_included_ips.as_ref().is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)));
        let not_ignored = |ip: IpAddr| !ignored_ips.iter().any(|net| net.contains(&ip)) && included(ip);
        let mut destinations = Vec::new();
        let v4 = TEST_NET_V4.iter().map(|&ip| IpAddr::V4(ip)).find(|&ip| not_ignored(ip)).ok_or(
            "every TEST-NET IPv4 address (192.0.2.1, 198.51.100.1, 203.0.113.1) is in EgressIgnoredIPs or outside \
                 EgressIncludedIPs",
        )?;
        destinations.push(SocketAddr::new(v4, port));
        let mut listen = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.proxy_egress_port)];
        if config.ipv6 {
            let v6 = TEST_NET_V6.iter().map(|&ip| IpAddr::V6(ip)).find(|&ip| not_ignored(ip)).ok_or(
                "every documentation IPv6 address (2001:db8::1, 2001:db8:ffff::1) is in EgressIgnoredIPs or outside \
                     EgressIncludedIPs",
            )?;
            destinations.push(SocketAddr::new(v6, port));
            listen.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), config.proxy_egress_port));
        }
        let pick = |ignored: &[u32]| (0..=WORKLOAD_ID).rev().find(|id| !ignored.contains(id)).unwrap_or(WORKLOAD_ID);
        let workload = Identity { uid: pick(&config.ignored_uids), gid: pick(&config.ignored_gids) };
        let mut ignored = Vec::new();
        // One probe per identity: bounded, as a configuration may list many.
        for &uid in config.ignored_uids.iter().take(MAX_IDENTITY_PROBES) {
            ignored.push((Exempt::Uid(uid), Identity { uid, gid: workload.gid }));
        }
        for &gid in config.ignored_gids.iter().take(MAX_IDENTITY_PROBES) {
            ignored.push((Exempt::Gid(gid), Identity { uid: workload.uid, gid }));
        }
        // DNS is captured whatever EgressIncludedIPs says: only the ignored IPs exempt a server.
        let dns = config.dns_capture().map(|port| {
            let server_ok = |ip: &IpAddr| !ignored_ips.iter().any(|net| net.contains(ip));
            let v4 = TEST_NET_V4.iter().map(|&ip| IpAddr::V4(ip)).find(server_ok);
            let v6 = TEST_NET_V6.iter().map(|&ip| IpAddr::V6(ip)).find(server_ok).filter(|_| config.ipv6);
            let servers: Vec<SocketAddr> = v4.into_iter().chain(v6).map(|ip| SocketAddr::new(ip, DNS_PORT)).collect();
            let listen = servers.iter().map(|s| SocketAddr::new(loopback(s.ip()), port)).collect();
            DnsPlan { port, listen, servers }
        });
        Ok(ProbePlan { egress_port: config.proxy_egress_port, listen, destinations, workload, ignored, dns })
    }
}

/// Verifies what `backend` installed against `config` in the namespace `target`, within
/// `timeout`.
pub fn verify(
    backend: &dyn Backend,
    config: &ProxyConfig,
    target: netns::Target,
    timeout: Duration,
) -> Result<VerifyReport, Error> {
    let deadline = Instant::now() + timeout;
    let netns = Netns::open(target)?;
    let mut report = VerifyReport::new(backend.kind().label(), &netns.target().to_string(), timeout);
    let status = backend.status(Some(config))?;
    let matches = status.matches == Some(true);
    let installed_observed = if status.installed { "installed".to_owned() } else { status.reasons.join("; ") };
    report.push(Check::new("installed", status.installation, installed_observed, status.installed));
    if status.installed {
        let observed = if matches { "no drift".to_owned() } else { status.reasons.join("; ") };
        report.push(Check::new(
            "matches the configuration",
            "exactly what the configuration asks for",
            observed,
            matches,
        ));
    }
    if let Some((whole, seen)) = &status.ingress {
        report.push(Check::new(
            "ingress installed (not probed live)",
            "the ingress part in place",
            seen.clone(),
            *whole,
        ));
    }
    if !(status.installed && matches) {
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
    let before = status.counters;
    let in_use = netns
        .run(|| port_in_use(&plan.listen, |a| TcpListener::bind(a).map(drop)))?
        .map_err(|source| Error::Io { op: "trying to bind ProxyEgressPort on loopback", source })?;
    let method = if in_use { Method::Counters } else { Method::Listener };
    report.method = Some(method);
    let mut live = Live {
        backend,
        config,
        probes: Probes::new(&netns, status.cgroup.as_deref())?,
        method,
        deadline,
        timeout,
        last: before.clone(),
    };
    // Whether the probes finished before the deadline (the DNS probes come after them).
    let mut in_time = true;
    'probes: for &destination in &plan.destinations {
        if !report.step(live.workload(&plan, destination)?) {
            in_time = false;
            break 'probes;
        }
        for &(exempt, identity) in &plan.ignored {
            if !report.step(live.ignored(&plan, exempt, identity, destination)?) {
                in_time = false;
                break 'probes;
            }
        }
    }
    if let Some(dns) = plan.dns.as_ref().filter(|_| in_time) {
        let in_use = netns
            .run(|| port_in_use(&dns.listen, |a| std::net::UdpSocket::bind(a).map(drop)))?
            .map_err(|source| Error::Io { op: "trying to bind ProxyDNSPort on loopback", source })?;
        for &server in &dns.servers {
            if !report.step(live.dns(&plan, dns, server, in_use)?) {
                break;
            }
        }
    }
    let after = live.counters()?;
    report.counters_moved = after
        .iter()
        .filter_map(|(counter, &value)| {
            let was = before.get(counter).copied().unwrap_or(0);
            (value > was).then(|| (counter.name().to_owned(), value - was))
        })
        .collect();
    Ok(report.finish())
}

/// A probe's check; `Err` holds the check that says the deadline passed, which ends probing.
type Step = Result<Check, Check>;

/// The live probes of one `verify`.
struct Live<'a> {
    backend: &'a dyn Backend,
    config: &'a ProxyConfig,
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
        let Some(outcome) = self.probes.run(self.listen(plan), destination, identity, wait, self.deadline, false)?
        else {
            return Ok(Err(timed_out(&check, self.timeout)));
        };
        let landing = SocketAddr::new(loopback(destination.ip()), plan.egress_port);
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
                let name = Counter::Redirected.name();
                let (was, is) = self.counter_moves(Counter::Redirected)?;
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
        let Some(outcome) = self.probes.run(self.listen(plan), destination, identity, wait, self.deadline, false)?
        else {
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
                let counter = exempt.counter();
                if !self.last.contains_key(&counter) {
                    Check::new(check, format!("a counter for {exempt}"), "none installed", false)
                } else {
                    let name = counter.name();
                    let (was, is) = self.counter_moves(counter)?;
                    let expected = format!("not redirected: counter `{name}` grows");
                    let observed = format!("{}; `{name}` {was} -> {is}", outcome.describe());
                    Check::new(check, expected, observed, is > was)
                }
            }
        }))
    }

    /// The workload's DNS query to `server`: sent to ProxyDNSPort, the reply seen from `server`
    /// (verify answers on the port itself when it is free; otherwise the DNS counter must grow).
    fn dns(&mut self, plan: &ProbePlan, dns: &DnsPlan, server: SocketAddr, in_use: bool) -> Result<Step, Error> {
        let identity = plan.workload;
        let check = format!("workload (uid {} gid {}) asks DNS server {server}", identity.uid, identity.gid);
        let wait = self.deadline.saturating_duration_since(Instant::now()).saturating_sub(PROBE_SLACK);
        let listen: &[SocketAddr] = if in_use { &[] } else { &dns.listen };
        let Some(outcome) = self.probes.run(listen, server, identity, wait.min(ACCEPT_WAIT), self.deadline, true)?
        else {
            return Ok(Err(timed_out(&check, self.timeout)));
        };
        let landing = SocketAddr::new(loopback(server.ip()), dns.port);
        Ok(Ok(if in_use {
            let name = Counter::DnsRedirected.name();
            let (was, is) = self.counter_moves(Counter::DnsRedirected)?;
            let expected = format!("sent to ProxyDNSPort {}; counter `{name}` grows", dns.port);
            let observed = format!("{}; `{name}` {was} -> {is}", outcome.describe());
            Check::new(check, expected, observed, is > was)
        } else {
            let passed = outcome.accepted.as_ref().is_some_and(|a| a.listener == landing)
                && outcome.reply_from.map(|a| SocketAddr::new(crate::model::canonical(a.ip()), a.port()))
                    == Some(server);
            let expected = format!("sent to {landing}; the reply comes from {server}");
            Check::new(check, expected, outcome.describe(), passed)
        }))
    }

    /// Where probes listen: ProxyEgressPort when it was free, nowhere when the proxy has it.
    fn listen<'p>(&self, plan: &'p ProbePlan) -> &'p [SocketAddr] {
        match self.method {
            Method::Listener => &plan.listen,
            Method::Counters => &[],
        }
    }

    /// Reads the counters again: `counter`'s value at the last read, and now.
    fn counter_moves(&mut self, counter: Counter) -> Result<(u64, u64), Error> {
        let now = self.counters()?;
        let was = self.last.get(&counter).copied().unwrap_or(0);
        let is = now.get(&counter).copied().unwrap_or(0);
        self.last = now;
        Ok((was, is))
    }

    /// The installation's counters by decision (the rule backends count only the rules that
    /// are the configuration's).
    fn counters(&self) -> Result<Counters, Error> {
        Ok(self.backend.status(Some(self.config))?.counters)
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

/// Loopback of `ip`'s family: where a redirect sends egress.
fn loopback(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) }
}

/// Whether something else holds one of `listen` (`bind`, a TCP listener or a UDP socket, fails
/// with EADDRINUSE); run in the target namespace. The test sockets are closed at once.
fn port_in_use(listen: &[SocketAddr], bind: impl Fn(SocketAddr) -> io::Result<()>) -> io::Result<bool> {
    for &addr in listen {
        match bind(addr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Ok(true),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{addr}: {e}"))),
        }
    }
    Ok(false)
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
