//! The validated proxy configuration and the diagnostics produced while building it.
//!
//! Inputs (task definition, bare `proxyConfiguration`, `APPMESH_*` environment, flags) are
//! read into [`RawConfig`] by [`source`], then [`validate`] turns a [`RawConfig`] into a
//! [`ProxyConfig`] or reports every problem at once.

mod args;
#[doc(hidden)]
pub mod parse;
pub mod source;
pub mod template;
pub mod validate;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::Serialize;

pub use args::{ConfigArgs, Entry};
pub use source::{
    Input, Origin, ProxyType, RawConfig, RawProperty, RawValue, Source, from_env, parse_proxy_configuration,
    parse_task_definition,
};
pub use validate::validate;

/// The ECS task metadata endpoint and the EC2 instance metadata service: the ECS agent
/// always exempts them, because the task's IAM credentials come from there.
pub const METADATA_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(169, 254, 170, 2), Ipv4Addr::new(169, 254, 169, 254)];

/// SSH is exempt even when EgressIgnoredPorts does not list it (the seed guide says so).
pub const SSH_PORT: u16 = 22;

/// ECS refuses to register more than this many EgressIgnoredPorts; intercept honours all.
pub const ECS_MAX_IGNORED_PORTS: usize = 15;

/// IgnoredUID and IgnoredGID together hold at most this many ids (the eBPF backend's map of
/// them has room for this many).
pub const MAX_IGNORED_IDS: usize = 1024;

/// The port DNS is captured on.
pub const DNS_PORT: u16 = 53;

/// The seven properties of an APPMESH proxy configuration, spelled as ECS spells them, and
/// intercept's three extensions ([`Property::is_extension`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Property {
    IgnoredUID,
    IgnoredGID,
    ProxyIngressPort,
    ProxyEgressPort,
    AppPorts,
    EgressIgnoredIPs,
    EgressIgnoredPorts,
    /// The proxy's DNS listener: DNS to non-local servers is redirected there.
    ProxyDNSPort,
    /// Include-only outbound: when given, only these destinations are redirected.
    EgressIncludedIPs,
    /// What inbound connections to AppPorts do while the proxy has no ingress listener.
    IngressFallback,
}

impl Property {
    pub const ALL: [Property; 10] = [
        Property::IgnoredUID,
        Property::IgnoredGID,
        Property::ProxyIngressPort,
        Property::ProxyEgressPort,
        Property::AppPorts,
        Property::EgressIgnoredIPs,
        Property::EgressIgnoredPorts,
        Property::ProxyDNSPort,
        Property::EgressIncludedIPs,
        Property::IngressFallback,
    ];

    /// Not one of ECS's seven: ECS's own interception ignores it.
    pub fn is_extension(self) -> bool {
        matches!(self, Property::ProxyDNSPort | Property::EgressIncludedIPs | Property::IngressFallback)
    }

    pub fn name(self) -> &'static str {
        match self {
            Property::IgnoredUID => "IgnoredUID",
            Property::IgnoredGID => "IgnoredGID",
            Property::ProxyIngressPort => "ProxyIngressPort",
            Property::ProxyEgressPort => "ProxyEgressPort",
            Property::AppPorts => "AppPorts",
            Property::EgressIgnoredIPs => "EgressIgnoredIPs",
            Property::EgressIgnoredPorts => "EgressIgnoredPorts",
            Property::ProxyDNSPort => "ProxyDNSPort",
            Property::EgressIncludedIPs => "EgressIncludedIPs",
            Property::IngressFallback => "IngressFallback",
        }
    }

    /// Exact, case-sensitive lookup: ECS itself is case-sensitive, so `ignoreduid` is a
    /// typo to report (with a suggestion), not an alias.
    pub fn from_name(name: &str) -> Option<Property> {
        Property::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// IngressFallback: while the proxy has no ingress listener (it is restarting), inbound
/// connections to AppPorts are refused, as a REDIRECT to a closed port is, or delivered to
/// the app. Only a backend that sees the listener go (eBPF) can deliver them; the rule
/// backends always refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressFallback {
    #[default]
    Refuse,
    App,
}

impl IngressFallback {
    pub const ALL: [IngressFallback; 2] = [IngressFallback::Refuse, IngressFallback::App];

    pub fn is_refuse(&self) -> bool {
        *self == IngressFallback::Refuse
    }

    /// As the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            IngressFallback::Refuse => "refuse",
            IngressFallback::App => "app",
        }
    }
}

impl fmt::Display for IngressFallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An inclusive port range; a single port is `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange { start: port, end: port }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }

    pub fn port_count(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end { write!(f, "{}", self.start) } else { write!(f, "{}-{}", self.start, self.end) }
    }
}

/// A set of ports kept as sorted, non-overlapping, non-adjacent ranges, so that equal sets
/// always have one representation (plans are compared byte for byte).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PortSet(Vec<PortRange>);

impl PortSet {
    pub fn new() -> Self {
        PortSet(Vec::new())
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = PortRange>) -> Self {
        let mut all: Vec<PortRange> = ranges.into_iter().collect();
        all.sort();
        let mut merged: Vec<PortRange> = Vec::with_capacity(all.len());
        for r in all {
            match merged.last_mut() {
                Some(last) if u32::from(r.start) <= u32::from(last.end) + 1 => {
                    last.end = last.end.max(r.end);
                }
                _ => merged.push(r),
            }
        }
        PortSet(merged)
    }

    pub fn insert(&mut self, range: PortRange) {
        let ranges = std::mem::take(&mut self.0);
        *self = PortSet::from_ranges(ranges.into_iter().chain([range]));
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of individual ports in the set.
    pub fn port_count(&self) -> usize {
        self.0.iter().map(PortRange::port_count).sum()
    }

    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|r| r.start..=r.end)
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Inbound interception: connections from non-local sources to `app_ports` go to
/// `proxy_port`. ECS requires ProxyIngressPort and AppPorts together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ingress {
    pub proxy_port: u16,
    pub app_ports: PortSet,
}

/// A validated APPMESH proxy configuration. Lists hold what the user configured; the
/// implicit exemptions (port 22, the metadata IPs) are added by the `effective_*` methods
/// unless `implicit_exemptions` is off, so reports can tell the two apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    /// IgnoredUID: sorted and deduplicated; empty when not given.
    pub ignored_uids: Vec<u32>,
    /// IgnoredGID, likewise.
    pub ignored_gids: Vec<u32>,
    pub proxy_egress_port: u16,
    pub ingress: Option<Ingress>,
    pub egress_ignored_ports: PortSet,
    /// Normalised (host bits cleared), sorted and deduplicated.
    pub egress_ignored_ips: Vec<IpNet>,
    /// EgressIncludedIPs: when given, only destinations in these networks are redirected
    /// (the exemptions still apply inside them). Normalised, sorted, deduplicated.
    pub egress_included_ips: Option<Vec<IpNet>>,
    /// ProxyDNSPort: DNS (UDP and TCP port 53) to non-local servers goes to this port on
    /// loopback; see [`ProxyConfig::dns_capture`].
    pub proxy_dns_port: Option<u16>,
    /// IngressFallback; refuse unless given. Left out of the serialised form when it is
    /// refuse, so the daemon's fingerprints of installations recorded before it existed stay
    /// as they were and an upgraded daemon re-applies none of them.
    #[serde(skip_serializing_if = "IngressFallback::is_refuse")]
    pub ingress_fallback: IngressFallback,
    pub implicit_exemptions: bool,
    /// Intercept IPv6 as well as IPv4 (on unless `APPMESH_ENABLE_IPV6` or `--ipv6` say no).
    pub ipv6: bool,
}

impl ProxyConfig {
    /// Every egress TCP connection to `proxy_egress_port`, and nothing else set: no ignored
    /// identities, ports or networks, no ingress or DNS capture, the implicit exemptions and
    /// IPv6 on. Code that builds a configuration rather than validating one (tests, the
    /// benchmarks) starts here and names only the fields it cares about, `ProxyConfig {
    /// ignored_uids: vec![1337], ..ProxyConfig::new(15001) }`, so a new field changes one
    /// place. (Validation also asks for an ignored UID or GID.)
    pub fn new(proxy_egress_port: u16) -> ProxyConfig {
        ProxyConfig {
            ignored_uids: Vec::new(),
            ignored_gids: Vec::new(),
            proxy_egress_port,
            ingress: None,
            egress_ignored_ports: PortSet::new(),
            egress_ignored_ips: Vec::new(),
            egress_included_ips: None,
            proxy_dns_port: None,
            ingress_fallback: IngressFallback::Refuse,
            implicit_exemptions: true,
            ipv6: true,
        }
    }

    /// The port DNS is redirected to: ProxyDNSPort, unless port 53 is an ignored port, which
    /// turns DNS capture off (`check` warns).
    pub fn dns_capture(&self) -> Option<u16> {
        self.proxy_dns_port.filter(|_| !self.egress_ignored_ports.contains(DNS_PORT))
    }

    /// Ignored ports including port 22 when implicit exemptions are on.
    pub fn effective_ignored_ports(&self) -> PortSet {
        let mut ports = self.egress_ignored_ports.clone();
        if self.implicit_exemptions {
            ports.insert(PortRange::single(SSH_PORT));
        }
        ports
    }

    /// Ignored destinations including the metadata IPs when implicit exemptions are on,
    /// sorted, deduplicated and with networks contained in others removed.
    pub fn effective_ignored_ips(&self) -> Vec<IpNet> {
        let mut nets = self.egress_ignored_ips.clone();
        if self.implicit_exemptions {
            nets.extend(METADATA_IPS.iter().map(|ip| IpNet::from(IpAddr::V4(*ip))));
        }
        IpNet::aggregate(&nets)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding about the input: which field (a property name, an environment variable, a
/// flag or a JSON path), the offending value as given, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub field: String,
    pub value: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(field: impl Into<String>, value: Option<&str>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            field: field.into(),
            value: value.map(str::to_owned),
            message: message.into(),
        }
    }

    pub fn warning(field: impl Into<String>, value: Option<&str>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            field: field.into(),
            value: value.map(str::to_owned),
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.field)?;
        if let Some(v) = &self.value {
            write!(f, " = {v:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in the input, errors and warnings together, in input order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid proxy configuration:\n{}", render_list(.0))]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl ConfigErrors {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
}

fn render_list(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n")
}

/// A successfully validated configuration and the warnings found on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Validated {
    pub config: ProxyConfig,
    pub warnings: Vec<Diagnostic>,
}

#[cfg(test)]
mod tests;
