//! The nftables plan: one `inet` table owned by intercept, with the reference plugin's
//! decisions.
//!
//! `table inet intercept` holds everything, for IPv4 and IPv6 at once:
//! - named interval sets: [`IGNORED_PORTS_SET`] (EgressIgnoredPorts and port 22),
//!   [`IGNORED_V4_SET`] / [`IGNORED_V6_SET`] (EgressIgnoredIPs and the metadata IPs) and
//!   [`APP_PORTS_SET`]. One set lookup decides a connection whatever the list's length:
//!   100,000 networks cost a new connection what one does, where the reference walks one
//!   rule per network. The networks come from [`ProxyConfig::effective_ignored_ips`],
//!   already aggregated, so no two elements overlap (interval sets refuse overlaps) and
//!   no `auto-merge` is needed: the kernel holds exactly the listed elements, which
//!   keeps `nft list` comparable with the plan. An empty set is left out, with its rule.
//! - base chains [`OUTPUT_CHAIN`] (`type nat hook output priority -100`) and
//!   [`PREROUTING_CHAIN`] (`type nat hook prerouting priority -100`, i.e. dstnat), each
//!   with one rule sending TCP to non-local destinations (from non-local sources) into the
//!   regular chains [`EGRESS_CHAIN`] / [`INGRESS_CHAIN`], like the reference's jumps
//!   (`fib daddr type != local` is its `-m addrtype ! --dst-type LOCAL`). Without ingress
//!   there is no prerouting chain at all. With IPv6 interception off, both jumps also
//!   match `meta nfproto ipv4`: IPv6 never enters intercept's chains, so no IPv6 rule or
//!   set is installed and every IPv6 connection is left alone.
//! - [`EGRESS_CHAIN`] returns for each IgnoredUID and IgnoredGID (`meta skuid`/`skgid`),
//!   sends DNS to [`DNS_CHAIN`] (with DNS capture; the output chain then also jumps here for
//!   UDP to port 53), returns for the ignored ports and the ignored networks of each family,
//!   then redirects the rest to ProxyEgressPort (with EgressIncludedIPs: only what is in
//!   [`INCLUDED_V4_SET`] / [`INCLUDED_V6_SET`], and returns for the rest);
//!   [`INGRESS_CHAIN`] redirects AppPorts to ProxyIngressPort.
//!
//! Every rule has a `counter` (the backend's `status` reads them: in a nat chain only a
//! connection's first packet is evaluated, so they count connections) and a comment
//! starting with [`COMMENT_PREFIX`].
//!
//! # The transaction
//!
//! [`NftablesPlan::apply_script`] is the input of one `nft -f -`: `add table` (creates the
//! table when it is missing, does nothing otherwise), `delete table` (removes it with all
//! its sets and chains), then the complete table. nft sends a file as one netlink batch,
//! which the kernel commits or refuses as a whole, so a first apply, a re-apply and a
//! replace by another configuration all go from the old state to the new at once, never
//! through an empty or half-built table, and a failure changes nothing. The add-then-delete
//! pair is what makes the same script right whether or not the table exists; `destroy
//! table` says that in one command but needs nft 1.0.8 and Linux 6.3. Nothing outside
//! the table is touched: rules of other tools (iptables-nft's `ip nat` table, other `inet`
//! tables) stay as they are. [`REMOVE_SCRIPT`] is the same pair without the definition:
//! removing twice, or removing what was never applied, succeeds.
//!
//! The backend runs the same table in two transactions instead ([`NftablesPlan::sets_script`],
//! [`NftablesPlan::rules_script`]): the kernel makes the elements of a set match only once
//! the transaction that filled them is over, after it has switched to that transaction's
//! rules, so rules and the sets they start using must not arrive together.
//!
//! The script is nft's text syntax rather than its JSON (`nft -j -f -`): it is what
//! `intercept plan` prints, so an operator can read it, diff it and check it with
//! `nft -c -f`; it is written the way `nft list table` prints rules, so the backend can
//! compare the installed rules with the plan; JSON input is an optional build feature of
//! nft; and it buys nothing else, both forms ending in the same netlink batch. The JSON
//! rendering ([`NftablesPlan::render_json`]) is the plan as data, for tools.

use std::fmt::{self, Write as _};

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use super::iptables::{Family, exempt, ignored_ports_label};
use super::{TEXT_LIST_LIMIT, to_json};
use crate::config::{PortRange, ProxyConfig};
use crate::model::{Direction, Effect, Reason};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "intercept";

pub const OUTPUT_CHAIN: &str = "output";
pub const PREROUTING_CHAIN: &str = "prerouting";
pub const EGRESS_CHAIN: &str = "egress";
pub const INGRESS_CHAIN: &str = "ingress";
/// DNS capture: DNS the egress chain sends here goes to ProxyDNSPort unless its server is an
/// ignored IP.
pub const DNS_CHAIN: &str = "dns";

pub const IGNORED_PORTS_SET: &str = "ignored_ports";
pub const IGNORED_V4_SET: &str = "ignored_v4";
pub const IGNORED_V6_SET: &str = "ignored_v6";
pub const APP_PORTS_SET: &str = "app_ports";
pub const INCLUDED_V4_SET: &str = "included_v4";
pub const INCLUDED_V6_SET: &str = "included_v6";

/// Both base chains: `dstnat`, where the reference's `nat` `OUTPUT` and `PREROUTING` rules
/// run. Written as a number because nft accepts the name `dstnat` for prerouting only.
pub const NAT_PRIORITY: i32 = -100;

/// Every comment intercept writes starts with this, as in the iptables backend.
pub const COMMENT_PREFIX: &str = super::iptables::COMMENT_PREFIX;

/// nft refuses longer comments ("comment too long, 128 characters maximum allowed").
pub const COMMENT_MAX: usize = 128;

/// Removes the table if it exists, and succeeds if it does not: `nft -f -` input.
pub const REMOVE_SCRIPT: &str = "add table inet intercept\ndelete table inet intercept\n";

/// A set whose elements change is built under the other of its two names, `<name>` and
/// `<name>_next` (see [`NftablesPlan::rules_script`]).
pub const SECOND_NAME_SUFFIX: &str = "_next";

/// The name each of a plan's sets lives under: its own, or its second name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetNames(Vec<(&'static str, String)>);

impl SetNames {
    pub fn set(&mut self, set: &'static str, name: String) {
        self.0.retain(|(s, _)| *s != set);
        self.0.push((set, name));
    }

    /// The name `set` lives under (its own unless said otherwise).
    pub fn name<'a>(&'a self, set: &'a str) -> &'a str {
        self.0.iter().find(|(s, _)| *s == set).map_or(set, |(_, name)| name.as_str())
    }

    /// `rule` (as [`Rule::render`] writes it) matching on the sets under their names.
    pub fn rename(&self, rule: &str) -> String {
        let mut rule = rule.to_owned();
        for (set, name) in &self.0 {
            rule = rule.replace(&format!("@{set} "), &format!("@{name} "));
        }
        rule
    }
}

const TABLE_COMMENT: &str =
    "intercept: transparent TCP interception for the sidecar proxy; replaced as a whole by intercept";

/// A match statement of a rule, in the order nft evaluates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Match {
    /// `meta l4proto tcp`
    Tcp,
    /// `meta l4proto udp`
    Udp,
    /// `udp dport 53` / `tcp dport 53`
    DnsPort(Proto),
    /// `meta nfproto ipv4`: IPv6 interception is off.
    Ipv4Only,
    /// `fib daddr type != local`
    NonLocalDestination,
    /// `fib saddr type != local`
    NonLocalSource,
    /// `meta skuid N`
    Uid(u32),
    /// `meta skgid N`
    Gid(u32),
    /// `tcp dport @SET`
    DportIn(&'static str),
    /// `ip daddr @SET` or `ip6 daddr @SET`; only packets of that family match.
    DaddrIn(Family, &'static str),
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Tcp => f.write_str("meta l4proto tcp"),
            Match::Udp => f.write_str("meta l4proto udp"),
            Match::DnsPort(proto) => write!(f, "{} dport {}", proto.as_str(), crate::config::DNS_PORT),
            Match::Ipv4Only => f.write_str("meta nfproto ipv4"),
            Match::NonLocalDestination => f.write_str("fib daddr type != local"),
            Match::NonLocalSource => f.write_str("fib saddr type != local"),
            Match::Uid(uid) => write!(f, "meta skuid {uid}"),
            Match::Gid(gid) => write!(f, "meta skgid {gid}"),
            Match::DportIn(set) => write!(f, "tcp dport @{set}"),
            Match::DaddrIn(Family::Ipv4, set) => write!(f, "ip daddr @{set}"),
            Match::DaddrIn(Family::Ipv6, set) => write!(f, "ip6 daddr @{set}"),
        }
    }
}

/// The transport protocols DNS is captured for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// `jump CHAIN`: a `return` there comes back to the rule after this one.
    Jump(&'static str),
    /// `return`: leave the chain; in a base chain's callee this ends in the base chain's
    /// `policy accept`, i.e. the connection is left alone.
    Return,
    /// `redirect to :PORT`: to the primary address of the incoming interface, loopback
    /// (`127.0.0.1`, `::1`) for locally generated packets.
    Redirect(u16),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
            Verdict::Return => f.write_str("return"),
            Verdict::Redirect(port) => write!(f, "redirect to :{port}"),
        }
    }
}

/// `<matches> counter <verdict> comment "<comment>"`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    #[serde(serialize_with = "display_all")]
    pub matches: Vec<Match>,
    #[serde(serialize_with = "display")]
    pub verdict: Verdict,
    /// Starts with [`COMMENT_PREFIX`], at most [`COMMENT_MAX`] bytes, no double quote.
    pub comment: String,
    /// The decision the rule makes; `None` for the jumps into intercept's chains.
    #[serde(skip)]
    pub effect: Option<Effect>,
}

impl Rule {
    fn new(matches: Vec<Match>, verdict: Verdict, comment: String, effect: Option<Effect>) -> Rule {
        debug_assert!(comment.starts_with(COMMENT_PREFIX) && comment.len() <= COMMENT_MAX && !comment.contains('"'));
        Rule { matches, verdict, comment, effect }
    }

    /// The rule as nft writes it, in a chain block or after `add rule inet intercept CHAIN`.
    pub fn render(&self) -> String {
        let mut line = String::new();
        for m in &self.matches {
            let _ = write!(line, "{m} ");
        }
        let _ = write!(line, "counter {} comment \"{}\"", self.verdict, self.comment);
        line
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Output,
    Prerouting,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Output => "output",
            Hook::Prerouting => "prerouting",
        }
    }
}

/// A chain of the table: a base chain when it has a hook (`type nat`, [`NAT_PRIORITY`],
/// `policy accept`), a regular chain reached by `jump` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub name: &'static str,
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum SetType {
    #[serde(rename = "inet_service")]
    InetService,
    #[serde(rename = "ipv4_addr")]
    Ipv4Addr,
    #[serde(rename = "ipv6_addr")]
    Ipv6Addr,
}

impl SetType {
    pub fn as_str(self) -> &'static str {
        match self {
            SetType::InetService => "inet_service",
            SetType::Ipv4Addr => "ipv4_addr",
            SetType::Ipv6Addr => "ipv6_addr",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elements {
    /// Sorted, neither overlapping nor adjacent (a [`crate::config::PortSet`]'s ranges).
    Ports(Vec<PortRange>),
    /// Sorted, non-overlapping, all of the set's family.
    Nets(Vec<IpNet>),
}

/// A named set with `flags interval`; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: &'static str,
    pub set_type: SetType,
    pub comment: String,
    pub elements: Elements,
}

impl Set {
    /// The elements as nft writes (and lists) them: `22`, `3000-3010`, `10.0.0.0/8`, and a
    /// host network as its bare address.
    pub fn rendered_elements(&self) -> Vec<String> {
        match &self.elements {
            Elements::Ports(ranges) => ranges
                .iter()
                .map(|r| if r.start == r.end { r.start.to_string() } else { format!("{}-{}", r.start, r.end) })
                .collect(),
            Elements::Nets(nets) => nets
                .iter()
                .map(|n| if n.prefix_len() == n.max_prefix_len() { n.addr().to_string() } else { n.to_string() })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.elements {
            Elements::Ports(ranges) => ranges.len(),
            Elements::Nets(nets) => nets.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, out: &mut String, summarise: bool) {
        self.push_as(self.name, out, summarise);
    }

    fn push_as(&self, name: &str, out: &mut String, summarise: bool) {
        let _ = writeln!(out, "\tset {name} {{");
        let _ = writeln!(out, "\t\ttype {}", self.set_type.as_str());
        out.push_str("\t\tflags interval\n");
        let _ = writeln!(out, "\t\tcomment \"{}\"", self.comment);
        out.push_str("\t\telements = {\n");
        let elements = self.rendered_elements();
        let shown = if summarise { elements.len().min(TEXT_LIST_LIMIT) } else { elements.len() };
        for (i, element) in elements[..shown].iter().enumerate() {
            let comma = if i + 1 < elements.len() { "," } else { "" };
            let _ = writeln!(out, "\t\t\t{element}{comma}");
        }
        if shown < elements.len() {
            let _ = writeln!(out, "\t\t\t# … and {} more (--format json lists them all)", elements.len() - shown);
        }
        out.push_str("\t\t}\n\t}\n");
    }
}

/// Everything the nftables backend installs: the sets and chains of `table inet intercept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftablesPlan {
    /// In the order they are defined; rules only reference sets listed here.
    pub sets: Vec<Set>,
    /// Base chains first, then the chains they jump to.
    pub chains: Vec<Chain>,
}

impl NftablesPlan {
    pub fn new(config: &ProxyConfig) -> NftablesPlan {
        let mut sets = Vec::new();
        let mut egress = Vec::new();
        for &uid in &config.ignored_uids {
            egress.push(Rule::new(
                vec![Match::Uid(uid)],
                Verdict::Return,
                format!("{COMMENT_PREFIX}never redirect IgnoredUID {uid}"),
                exempt(Reason::IgnoredUid),
            ));
        }
        for &gid in &config.ignored_gids {
            egress.push(Rule::new(
                vec![Match::Gid(gid)],
                Verdict::Return,
                format!("{COMMENT_PREFIX}never redirect IgnoredGID {gid}"),
                exempt(Reason::IgnoredGid),
            ));
        }
        let dns_port = config.dns_capture();
        if dns_port.is_some() {
            for proto in [Proto::Udp, Proto::Tcp] {
                egress.push(Rule::new(
                    vec![Match::DnsPort(proto)],
                    Verdict::Jump(DNS_CHAIN),
                    format!("{COMMENT_PREFIX}DNS over {} to {DNS_CHAIN}", proto.as_str()),
                    None,
                ));
            }
            for proto in [Proto::Udp, Proto::Tcp] {
                // Only DNS to an ignored server comes back from the DNS chain, counted there.
                egress.push(Rule::new(
                    vec![Match::DnsPort(proto)],
                    Verdict::Return,
                    format!("{COMMENT_PREFIX}DNS over {} to an ignored server: untouched", proto.as_str()),
                    None,
                ));
            }
        }
        let ports = config.effective_ignored_ports();
        if !ports.is_empty() {
            let label = ignored_ports_label(config);
            sets.push(Set {
                name: IGNORED_PORTS_SET,
                set_type: SetType::InetService,
                comment: format!("{COMMENT_PREFIX}{label}"),
                elements: Elements::Ports(ports.ranges().to_vec()),
            });
            egress.push(Rule::new(
                vec![Match::DportIn(IGNORED_PORTS_SET)],
                Verdict::Return,
                format!("{COMMENT_PREFIX}never redirect {} ({})", rule_label(label), count(ports.port_count(), "port")),
                exempt(Reason::IgnoredPort),
            ));
        }
        let ignored_ips = config.effective_ignored_ips();
        let families: &[(Family, &'static str, SetType)] = if config.ipv6 {
            &[(Family::Ipv4, IGNORED_V4_SET, SetType::Ipv4Addr), (Family::Ipv6, IGNORED_V6_SET, SetType::Ipv6Addr)]
        } else {
            &[(Family::Ipv4, IGNORED_V4_SET, SetType::Ipv4Addr)]
        };
        let mut ignored_rules = Vec::new();
        for &(family, name, set_type) in families {
            let nets: Vec<IpNet> = ignored_ips.iter().copied().filter(|n| family.contains(n)).collect();
            if nets.is_empty() {
                continue;
            }
            let label = ignored_ips_label(config, family);
            let comment =
                format!("{COMMENT_PREFIX}never redirect {} ({})", rule_label(label), count(nets.len(), "network"));
            sets.push(Set {
                name,
                set_type,
                comment: format!("{COMMENT_PREFIX}{label}"),
                elements: Elements::Nets(nets),
            });
            ignored_rules.push(Rule::new(
                vec![Match::DaddrIn(family, name)],
                Verdict::Return,
                comment,
                exempt(Reason::IgnoredIp),
            ));
        }
        egress.extend(ignored_rules.iter().cloned());
        let port = config.proxy_egress_port;
        let redirect = Some(Effect::Redirect(Direction::Egress));
        match &config.egress_included_ips {
            None => egress.push(Rule::new(
                vec![Match::Tcp],
                Verdict::Redirect(port),
                format!("{COMMENT_PREFIX}redirect other egress TCP to ProxyEgressPort {port}"),
                redirect,
            )),
            Some(included) => {
                let families: &[(Family, &'static str, SetType)] = if config.ipv6 {
                    &[
                        (Family::Ipv4, INCLUDED_V4_SET, SetType::Ipv4Addr),
                        (Family::Ipv6, INCLUDED_V6_SET, SetType::Ipv6Addr),
                    ]
                } else {
                    &[(Family::Ipv4, INCLUDED_V4_SET, SetType::Ipv4Addr)]
                };
                for &(family, name, set_type) in families {
                    let nets: Vec<IpNet> =
                        IpNet::aggregate(&included.iter().copied().filter(|n| family.contains(n)).collect());
                    if nets.is_empty() {
                        continue;
                    }
                    let networks = count(nets.len(), "network");
                    sets.push(Set {
                        name,
                        set_type,
                        comment: format!("{COMMENT_PREFIX}{} EgressIncludedIPs", family.label()),
                        elements: Elements::Nets(nets),
                    });
                    egress.push(Rule::new(
                        vec![Match::Tcp, Match::DaddrIn(family, name)],
                        Verdict::Redirect(port),
                        format!("{COMMENT_PREFIX}redirect egress TCP to EgressIncludedIPs ({networks}) to port {port}"),
                        redirect,
                    ));
                }
                egress.push(Rule::new(
                    vec![Match::Tcp],
                    Verdict::Return,
                    format!("{COMMENT_PREFIX}never redirect destinations outside EgressIncludedIPs"),
                    exempt(Reason::NotIncluded),
                ));
            }
        }

        // The jumps select TCP, and IPv4 only when IPv6 is not intercepted; in the model's
        // order, so that the first statement that does not match says why.
        let (only, families_label) = if config.ipv6 { (None, "") } else { (Some(Match::Ipv4Only), " IPv4") };
        let jump = |direction: Match, to: &'static str, comment: String| {
            let matches = [Some(Match::Tcp), only, Some(direction)].into_iter().flatten().collect();
            Rule::new(matches, Verdict::Jump(to), comment, None)
        };
        let mut output = vec![jump(
            Match::NonLocalDestination,
            EGRESS_CHAIN,
            format!("{COMMENT_PREFIX}egress{families_label} TCP to non-local destinations"),
        )];
        if dns_port.is_some() {
            let matches = [Some(Match::DnsPort(Proto::Udp)), only, Some(Match::NonLocalDestination)];
            output.push(Rule::new(
                matches.into_iter().flatten().collect(),
                Verdict::Jump(EGRESS_CHAIN),
                format!("{COMMENT_PREFIX}egress{families_label} DNS over UDP to non-local servers"),
                None,
            ));
        }
        let mut chains = vec![Chain { name: OUTPUT_CHAIN, hook: Some(Hook::Output), rules: output }];
        let ingress = config.ingress.as_ref().filter(|i| !i.app_ports.is_empty());
        if ingress.is_some() {
            chains.push(Chain {
                name: PREROUTING_CHAIN,
                hook: Some(Hook::Prerouting),
                rules: vec![jump(
                    Match::NonLocalSource,
                    INGRESS_CHAIN,
                    format!("{COMMENT_PREFIX}ingress{families_label} TCP from non-local sources"),
                )],
            });
        }
        chains.push(Chain { name: EGRESS_CHAIN, hook: None, rules: egress });
        if let Some(port) = dns_port {
            let mut rules = ignored_rules;
            for (proto, matched) in [(Proto::Udp, Match::Udp), (Proto::Tcp, Match::Tcp)] {
                rules.push(Rule::new(
                    vec![matched],
                    Verdict::Redirect(port),
                    format!("{COMMENT_PREFIX}redirect DNS over {} to ProxyDNSPort {port}", proto.as_str()),
                    Some(Effect::RedirectDns),
                ));
            }
            chains.push(Chain { name: DNS_CHAIN, hook: None, rules });
        }
        if let Some(ingress) = ingress {
            sets.push(Set {
                name: APP_PORTS_SET,
                set_type: SetType::InetService,
                comment: format!("{COMMENT_PREFIX}AppPorts"),
                elements: Elements::Ports(ingress.app_ports.ranges().to_vec()),
            });
            let port = ingress.proxy_port;
            chains.push(Chain {
                name: INGRESS_CHAIN,
                hook: None,
                rules: vec![Rule::new(
                    vec![Match::DportIn(APP_PORTS_SET)],
                    Verdict::Redirect(port),
                    format!("{COMMENT_PREFIX}redirect AppPorts to ProxyIngressPort {port}"),
                    Some(Effect::Redirect(Direction::Ingress)),
                )],
            });
        }
        NftablesPlan { sets, chains }
    }

    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

fn display<T: fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn display_all<T: fmt::Display, S: Serializer>(values: &[T], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(values.iter().map(ToString::to_string))
}

fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// A set's label in the comment of the rule reading it, where the count follows in
/// parentheses: the set's own comment says which entries are always exempt.
fn rule_label(set_label: &str) -> &str {
    set_label.trim_end_matches(" (always exempt)")
}

/// Says whether the set holds the user's networks, the metadata IPs, or both.
fn ignored_ips_label(config: &ProxyConfig, family: Family) -> &'static str {
    let user = config.egress_ignored_ips.iter().any(|n| family.contains(n));
    let metadata = config.implicit_exemptions && family == Family::Ipv4;
    match (user, metadata, family) {
        (true, true, _) => "EgressIgnoredIPs and the ECS/EC2 metadata IPs (always exempt)",
        (false, true, _) => "the ECS/EC2 metadata IPs (always exempt)",
        (_, false, Family::Ipv4) => "IPv4 EgressIgnoredIPs",
        (_, false, Family::Ipv6) => "IPv6 EgressIgnoredIPs",
    }
}

mod script;
#[cfg(test)]
mod tests;
