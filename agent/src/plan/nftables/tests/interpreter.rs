//! The interpreter: the apply script, read back and run as nft would run it, so that the plan
//! can be judged by the decision model without a kernel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::model::{Connection, Decision, Direction, LocalAddrs, Protocol, Reason, canonical};
use crate::plan::nftables::{COMMENT_MAX, COMMENT_PREFIX, DNS_CHAIN};

pub(super) struct Script {
    pub(super) sets: BTreeMap<String, ParsedSet>,
    pub(super) chains: Vec<ParsedChain>,
}

pub(super) struct ParsedSet {
    pub(super) set_type: String,
    pub(super) elements: Vec<String>,
}

impl ParsedSet {
    fn contains_port(&self, port: u16) -> bool {
        assert_eq!(self.set_type, "inet_service");
        self.elements.iter().any(|e| {
            let (start, end) = e.split_once('-').unwrap_or((e, e));
            (start.parse::<u16>().unwrap()..=end.parse::<u16>().unwrap()).contains(&port)
        })
    }

    fn contains_ip(&self, ip: IpAddr) -> bool {
        let want = if ip.is_ipv4() { "ipv4_addr" } else { "ipv6_addr" };
        assert_eq!(self.set_type, want, "{ip} looked up in a {} set", self.set_type);
        self.elements.iter().any(|e| parse_net(e).contains(&ip))
    }
}

pub(super) struct ParsedChain {
    pub(super) name: String,
    pub(super) hook: Option<String>,
    pub(super) rules: Vec<String>,
}

pub(super) fn parse_net(element: &str) -> IpNet {
    element.parse::<IpNet>().or_else(|_| element.parse::<IpAddr>().map(IpNet::from)).expect("an address or a prefix")
}

/// Reads the subset of nft's syntax the plan writes, checking its layout as it goes. Set
/// elements are checked as the kernel would: of the set's type, no two overlapping.
pub(super) fn parse_script(script: &str) -> Script {
    let mut lines = script.lines();
    assert_eq!(lines.next(), Some("add table inet intercept"));
    assert_eq!(lines.next(), Some("delete table inet intercept"));
    assert_eq!(lines.next(), Some("table inet intercept {"));
    let mut sets = BTreeMap::new();
    let mut chains = Vec::new();
    while let Some(line) = lines.next() {
        if line == "}" {
            assert_eq!(lines.next(), None, "nothing after the table");
            return Script { sets, chains };
        }
        if let Some(comment) = line.strip_prefix("\tcomment ") {
            assert!(comment.starts_with('"') && comment.ends_with('"'));
        } else if let Some(name) = line.strip_prefix("\tset ").and_then(|l| l.strip_suffix(" {")) {
            let set_type = lines.next().unwrap().strip_prefix("\t\ttype ").unwrap().to_owned();
            assert_eq!(lines.next(), Some("\t\tflags interval"));
            assert!(lines.next().unwrap().starts_with("\t\tcomment \"intercept: "));
            assert_eq!(lines.next(), Some("\t\telements = {"));
            let mut raw = Vec::new();
            for line in lines.by_ref() {
                if line == "\t\t}" {
                    break;
                }
                raw.push(line.strip_prefix("\t\t\t").expect("an element line"));
            }
            // Commas between the elements, none after the last.
            let (last, others) = raw.split_last().expect("sets are never empty");
            assert!(others.iter().all(|e| e.ends_with(',')) && !last.ends_with(','), "{raw:?}");
            let elements: Vec<String> = raw.iter().map(|e| e.trim_end_matches(',').to_owned()).collect();
            check_elements(&set_type, &elements);
            assert_eq!(lines.next(), Some("\t}"));
            assert!(sets.insert(name.to_owned(), ParsedSet { set_type, elements }).is_none(), "set {name} twice");
        } else if let Some(name) = line.strip_prefix("\tchain ").and_then(|l| l.strip_suffix(" {")) {
            let mut hook = None;
            let mut rules = Vec::new();
            for line in lines.by_ref() {
                if line == "\t}" {
                    break;
                }
                let body = line.strip_prefix("\t\t").expect("a chain body line");
                if let Some(rest) = body.strip_prefix("type nat hook ") {
                    assert!(rules.is_empty() && hook.is_none());
                    let (h, tail) = rest.split_once(' ').unwrap();
                    assert_eq!(tail, "priority -100; policy accept;");
                    hook = Some(h.to_owned());
                } else {
                    rules.push(body.to_owned());
                }
            }
            chains.push(ParsedChain { name: name.to_owned(), hook, rules });
        } else {
            panic!("unexpected line {line:?}");
        }
    }
    panic!("the table is not closed");
}

fn check_elements(set_type: &str, elements: &[String]) {
    let bounds: Vec<(u128, u128)> = match set_type {
        "inet_service" => elements
            .iter()
            .map(|e| {
                let (start, end) = e.split_once('-').unwrap_or((e, e));
                let (start, end): (u16, u16) = (start.parse().unwrap(), end.parse().unwrap());
                assert!(start < end || !e.contains('-'), "bad range {e}");
                (start.into(), end.into())
            })
            .collect(),
        "ipv4_addr" | "ipv6_addr" => elements
            .iter()
            .map(|e| {
                let net = parse_net(e);
                assert_eq!(net.addr().is_ipv4(), set_type == "ipv4_addr", "{e} in a {set_type} set");
                assert_eq!(net, net.trunc(), "{e} has host bits set");
                assert!(
                    !e.contains('/') || net.prefix_len() < net.max_prefix_len(),
                    "hosts are written as addresses: {e}"
                );
                let (lo, hi) = match net {
                    IpNet::V4(n) => (u32::from(n.network()).into(), u32::from(n.broadcast()).into()),
                    IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
                };
                (lo, hi)
            })
            .collect(),
        other => panic!("unexpected set type {other}"),
    };
    for pair in bounds.windows(2) {
        assert!(pair[0].1 < pair[1].0, "elements overlap or are out of order: {elements:?}");
    }
}

/// One statement of a rule, parsed from its text.
#[derive(Debug)]
enum Stmt {
    /// A match, with the reason it stands for: why a connection that fails it is left
    /// alone, or why a `return` after it leaves the connection alone.
    Match(Reason, bool),
    /// `meta l4proto tcp|udp`: says nothing about why a rule returns.
    Proto(bool),
    /// `udp|tcp dport 53`: DNS, passed on to (or back from) the DNS chain.
    Dns(bool),
    Counter,
    Jump(String),
    Return,
    Redirect(u16),
}

/// Parses `rule` and evaluates its matches on `conn`.
fn statements(script: &Script, local: &LocalAddrs, conn: &Connection, rule: &str) -> Vec<Stmt> {
    let (body, comment) = rule.split_once(" comment \"").expect("every rule has a comment");
    let comment = comment.strip_suffix('"').unwrap();
    assert!(comment.starts_with(COMMENT_PREFIX) && comment.len() <= COMMENT_MAX && !comment.contains('"'));
    let dst = canonical(conn.destination.ip());
    let src = canonical(conn.source.ip());
    let tcp = conn.protocol == Protocol::Tcp;
    let udp = conn.protocol == Protocol::Udp;
    let dns = |proto: bool| proto && conn.destination.port() == crate::config::DNS_PORT;
    let words: Vec<&str> = body.split(' ').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let rest = &words[i..];
        let (stmt, n) = match rest {
            ["meta", "l4proto", "tcp", ..] => (Stmt::Proto(tcp), 3),
            ["meta", "l4proto", "udp", ..] => (Stmt::Proto(udp), 3),
            ["udp", "dport", "53", ..] => (Stmt::Dns(dns(udp)), 3),
            ["tcp", "dport", "53", ..] => (Stmt::Dns(dns(tcp)), 3),
            ["meta", "nfproto", "ipv4", ..] => (Stmt::Match(Reason::Ipv6Disabled, dst.is_ipv4()), 3),
            ["meta", "skuid", id, ..] => (Stmt::Match(Reason::IgnoredUid, conn.uid == id.parse::<u32>().unwrap()), 3),
            ["meta", "skgid", id, ..] => (Stmt::Match(Reason::IgnoredGid, conn.gid == id.parse::<u32>().unwrap()), 3),
            ["fib", "daddr", "type", "!=", "local", ..] => {
                (Stmt::Match(Reason::LocalDestination, !local.contains(dst)), 5)
            }
            ["fib", "saddr", "type", "!=", "local", ..] => (Stmt::Match(Reason::LocalSource, !local.contains(src)), 5),
            ["tcp", "dport", set, ..] => {
                let set = &script.sets[set.strip_prefix('@').unwrap()];
                // In egress a match means "ignored port"; in ingress a miss means "not an AppPort".
                let reason = if conn.direction == Direction::Egress { Reason::IgnoredPort } else { Reason::NotAppPort };
                (Stmt::Match(reason, tcp && set.contains_port(conn.destination.port())), 3)
            }
            [family @ ("ip" | "ip6"), "daddr", set, ..] => {
                // `ip daddr` only matches IPv4 packets, `ip6 daddr` only IPv6 ones.
                let same_family = dst.is_ipv4() == (*family == "ip");
                let name = set.strip_prefix('@').unwrap();
                let set = &script.sets[name];
                let reason = if name.starts_with("included") { Reason::NotIncluded } else { Reason::IgnoredIp };
                (Stmt::Match(reason, same_family && set.contains_ip(dst)), 3)
            }
            ["counter", ..] => (Stmt::Counter, 1),
            ["jump", chain] => (Stmt::Jump((*chain).to_owned()), 2),
            ["return"] => (Stmt::Return, 1),
            ["redirect", "to", port] => (Stmt::Redirect(port.strip_prefix(':').unwrap().parse().unwrap()), 3),
            other => panic!("the interpreter does not know {other:?} in {rule:?}"),
        };
        out.push(stmt);
        i += n;
    }
    // Matches, then exactly one counter, then the verdict.
    let counter = out.iter().position(|s| matches!(s, Stmt::Counter)).expect("every rule has a counter");
    assert!(out[..counter].iter().all(|s| matches!(s, Stmt::Match(..) | Stmt::Proto(_) | Stmt::Dns(_))), "{rule}");
    assert_eq!(out.len(), counter + 2, "one verdict after the counter: {rule}");
    out
}

enum Flow {
    /// The chain ended or returned: the caller goes on with its next rule.
    Continue,
    Redirect(u16),
}

/// Runs `chain` as the kernel does: rules in order, the first whose matches all hold
/// applies its verdict; `return` (or the chain's end) goes back to the caller. `why_not`
/// records the reason of the last rule that decided against redirecting.
fn run_chain(
    script: &Script,
    chain: &str,
    local: &LocalAddrs,
    conn: &Connection,
    why_not: &mut Reason,
    base_reason_set: &mut bool,
) -> Flow {
    let chain = script.chains.iter().find(|c| c.name == chain).expect("jump to a defined chain");
    for rule in &chain.rules {
        let stmts = statements(script, local, conn, rule);
        let mut kind = None;
        let mut failed = None;
        let mut dns = false;
        for stmt in &stmts {
            let (reason, holds) = match stmt {
                Stmt::Match(reason, holds) => (Some(*reason), *holds),
                Stmt::Proto(holds) => (None, *holds),
                Stmt::Dns(holds) => {
                    dns = true;
                    (None, *holds)
                }
                _ => continue,
            };
            if !holds {
                failed = Some(reason.unwrap_or(Reason::NotTcp));
                break;
            }
            kind = reason.or(kind);
        }
        if let Some(reason) = failed {
            // A rule failed only on its protocol (TCP, or UDP to 53) says less than a rule for
            // the connection's protocol that failed further on: the base chain's jumps exclude
            // each other by protocol.
            // Inside intercept's chains the protocol is settled: a rule for the other one
            // failing says nothing.
            let on_protocol = reason == Reason::NotTcp;
            if !(on_protocol && (chain.hook.is_none() || *base_reason_set)) {
                *why_not = reason;
                *base_reason_set |= chain.hook.is_some() && !on_protocol;
            }
            continue;
        }
        match stmts.last().unwrap() {
            Stmt::Jump(target) => {
                assert!(chain.hook.is_some() || target == DNS_CHAIN, "only the base chains jump, and to DNS");
                if let Flow::Redirect(port) = run_chain(script, target, local, conn, why_not, base_reason_set) {
                    return Flow::Redirect(port);
                }
                // The callee decided why: the base chain's other jumps cannot take this
                // connection.
                *base_reason_set = true;
            }
            Stmt::Return => {
                *why_not = match kind {
                    Some(reason) => reason,
                    // DNS coming back from the DNS chain: it said why.
                    None if dns => *why_not,
                    // Include-only's last rule: TCP that no included network took.
                    None => Reason::NotIncluded,
                };
                return Flow::Continue;
            }
            Stmt::Redirect(port) => return Flow::Redirect(*port),
            other => panic!("not a verdict: {other:?}"),
        }
    }
    Flow::Continue
}

/// Where the kernel would send `conn` under the table `script` defines.
pub(super) fn run_nftables(script: &Script, local: &LocalAddrs, conn: &Connection) -> Decision {
    let hook = match conn.direction {
        Direction::Egress => "output",
        Direction::Ingress => "prerouting",
    };
    let mut why_not = Reason::NotAppPort;
    let base = script.chains.iter().find(|c| c.hook.as_deref() == Some(hook));
    let Some(base) = base else {
        assert_eq!(conn.direction, Direction::Ingress, "egress always has its chain");
        return Decision::Untouched { reason: why_not };
    };
    match run_chain(script, &base.name, local, conn, &mut why_not, &mut false) {
        Flow::Continue => Decision::Untouched { reason: why_not },
        Flow::Redirect(port) => {
            let dst = canonical(conn.destination.ip());
            // Locally generated packets go to loopback; arriving ones to the address they
            // arrived at.
            let ip = match (conn.direction, dst) {
                (Direction::Egress, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                (Direction::Egress, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                (Direction::Ingress, ip) => ip,
            };
            Decision::Redirect { to: SocketAddr::new(ip, port) }
        }
    }
}
