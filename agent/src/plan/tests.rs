//! Golden tests of both plans, and the plans checked against the decision model: a small
//! interpreter runs the iptables rules (and the eBPF maps) on random connections and must
//! reach the same decision as [`model::decide`].

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use intercept_common::{GENERATIONS, HOST_NETS_CAPACITY, IGNORED_NETS_V4_MAP, LpmKeyV4, LpmKeyV6};
use ipnet::IpNet;
use proptest::prelude::*;

use super::Format;
use super::ebpf::{self, EbpfPlan};
use super::iptables::{
    self, COMMENT_PREFIX, EGRESS_CHAIN, Family, FamilyPlan, INGRESS_CHAIN, IPSET_THRESHOLD, IptablesPlan, Rule,
};
use super::testutil::*;
use crate::backend::Kind;
use crate::config::{PortRange, ProxyConfig};
use crate::model::Effect;
use crate::model::{self, Connection, Decision, Direction, LocalAddrs, Protocol, Reason, canonical};

/// The xt_multiport limit, written out rather than taken from the code under test.
const MULTIPORT_MAX: usize = 15;

// ---------------------------------------------------------------------------------------
// Golden snapshots

#[test]
fn snapshots_text() {
    for (name, config) in all_configs() {
        insta::assert_snapshot!(format!("{name}_iptables"), Kind::Iptables.render_plan(&config, Format::Text));
        insta::assert_snapshot!(format!("{name}_ebpf"), Kind::Ebpf.render_plan(&config, Format::Text));
    }
}

#[test]
fn snapshots_json() {
    for (name, config) in [("seed", seed()), ("ipv6_cidrs", ipv6_cidrs()), ("port_ranges", port_ranges())] {
        insta::assert_snapshot!(format!("{name}_iptables_json"), Kind::Iptables.render_plan(&config, Format::Json));
        insta::assert_snapshot!(format!("{name}_ebpf_json"), Kind::Ebpf.render_plan(&config, Format::Json));
    }
}

/// The seed guide's four task definitions, through the real parser and validator.
#[test]
fn snapshots_of_the_seed_examples() {
    for name in crate::testdata::EXAMPLES {
        let config = crate::testdata::example_config(name);
        assert_eq!(config, seed(), "{name}");
        insta::assert_snapshot!(format!("example_{name}_iptables"), Kind::Iptables.render_plan(&config, Format::Text));
        insta::assert_snapshot!(format!("example_{name}_ebpf"), Kind::Ebpf.render_plan(&config, Format::Text));
    }
}

#[test]
fn seed_matches_the_reference_rule_for_rule() {
    // The reference's nat table for the seed, with intercept's chain names and comments.
    let plan = IptablesPlan::new(&seed());
    let egress: Vec<String> = plan.v4.chain(EGRESS_CHAIN).unwrap().rules.iter().map(strip).collect();
    assert_eq!(
        egress,
        [
            "-A INTERCEPT_EGRESS -m owner --uid-owner 1337 -j RETURN",
            "-A INTERCEPT_EGRESS -p tcp -m multiport --dports 22 -j RETURN",
            "-A INTERCEPT_EGRESS -d 169.254.169.254/32 -j RETURN",
            "-A INTERCEPT_EGRESS -d 169.254.170.2/32 -j RETURN",
            "-A INTERCEPT_EGRESS -p tcp -j REDIRECT --to-ports 15001",
        ]
    );
    let ingress: Vec<String> = plan.v4.chain(INGRESS_CHAIN).unwrap().rules.iter().map(strip).collect();
    assert_eq!(ingress, ["-A INTERCEPT_INGRESS -p tcp -m multiport --dports 9080 -j REDIRECT --to-ports 15000"]);
    let jumps: Vec<String> = plan.v4.jumps.iter().map(strip).collect();
    assert_eq!(
        jumps,
        [
            "-A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j INTERCEPT_EGRESS",
            "-A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j INTERCEPT_INGRESS",
        ]
    );
    assert_eq!(plan.v6.as_ref().map(|v6| v6.jumps.len()), Some(2));
    assert!(plan.ipsets.is_empty());
}

/// A rule without its comment, to compare with the reference's listing.
fn strip(rule: &Rule) -> String {
    let mut words = vec!["-A".to_owned(), rule.chain.clone()];
    words.extend(rule.matches.iter().cloned());
    words.extend(rule.target.iter().cloned());
    words.join(" ")
}

#[test]
fn every_rule_has_an_intercept_comment() {
    for (name, config) in all_configs() {
        let plan = IptablesPlan::new(&config);
        for family in plan.families() {
            for rule in family.chains.iter().flat_map(|c| &c.rules).chain(&family.jumps) {
                assert!(rule.comment.starts_with(COMMENT_PREFIX), "{name}: {rule:?}");
                assert!(rule.comment.len() <= 255 && !rule.comment.contains('"'), "{name}: {rule:?}");
                let args = rule.args();
                let at = args.iter().position(|a| a == "--comment").expect("comment in args");
                assert_eq!(args[at + 1], rule.comment);
                assert!(rule.render().contains(&format!("--comment \"{}\"", rule.comment)));
            }
        }
    }
}

#[test]
fn restore_declares_chains_then_rules_then_jumps() {
    let plan = IptablesPlan::new(&seed());
    let full = plan.v4.render_restore();
    let lines: Vec<&str> = full.lines().collect();
    assert_eq!(lines[..3], ["*nat", ":INTERCEPT_EGRESS - [0:0]", ":INTERCEPT_INGRESS - [0:0]"]);
    assert_eq!(lines.last(), Some(&"COMMIT"));
    let first_jump = lines.iter().position(|l| l.starts_with("-A OUTPUT")).unwrap();
    assert!(
        lines[first_jump..lines.len() - 1].iter().all(|l| l.starts_with("-A OUTPUT") || l.starts_with("-A PREROUTING"))
    );
    let chains_only = plan.v4.render_chains_restore();
    assert!(!chains_only.contains("-A OUTPUT") && !chains_only.contains("-A PREROUTING"));
    assert_eq!(full.lines().count(), chains_only.lines().count() + plan.v4.jumps.len());
    assert_eq!(plan.render_restore(Family::Ipv4), Some(full));
}

#[test]
fn ipv6_off_and_egress_only_leave_parts_out() {
    let plan = IptablesPlan::new(&ipv6_off());
    assert!(plan.v6.is_none() && plan.render_restore(Family::Ipv6).is_none());
    let ebpf = EbpfPlan::new(&ipv6_off());
    assert!(ebpf.ignored_nets_v6.is_empty() && ebpf.local_nets_v6.is_empty() && ebpf.config.ipv6 == 0);

    let plan = IptablesPlan::new(&egress_only());
    for family in plan.families() {
        assert!(family.chain(INGRESS_CHAIN).is_none());
        assert!(family.jumps.iter().all(|j| j.chain == "OUTPUT"));
    }
    let ebpf = EbpfPlan::new(&egress_only());
    assert!(ebpf.app_ports.is_empty() && ebpf.config.proxy_ingress_port == 0);
}

#[test]
fn twenty_ports_are_all_there_in_chunks_of_fifteen() {
    let config = twenty_ports();
    let plan = IptablesPlan::new(&config);
    let lists: Vec<&str> = plan.v4.chain(EGRESS_CHAIN).unwrap().rules.iter().filter_map(dports).collect();
    // 20 configured + the implicit 22.
    assert_eq!(lists.iter().map(|l| l.split(',').count()).collect::<Vec<_>>(), [15, 6]);
    let found: BTreeSet<u16> = lists.iter().flat_map(|l| parse_dports(l)).collect();
    let want: BTreeSet<u16> = config.effective_ignored_ports().ports().collect();
    assert_eq!(found, want);
    assert_eq!(EbpfPlan::new(&config).ignored_ports, want.into_iter().collect::<Vec<_>>());
}

#[test]
fn port_ranges_render_with_colons_and_count_double() {
    let plan = IptablesPlan::new(&port_ranges());
    let lists: Vec<&str> = plan.v4.chain(EGRESS_CHAIN).unwrap().rules.iter().filter_map(dports).collect();
    assert_eq!(lists, ["22,25,3000:3010,5432,6000:6063,6379,7000:7100,8000:8010,9000:9099,11211", "27017:27019"]);
    let app: Vec<&str> = plan.v4.chain(INGRESS_CHAIN).unwrap().rules.iter().filter_map(dports).collect();
    assert_eq!(app, ["8080,9080:9089,50051"]);
    let ebpf = EbpfPlan::new(&port_ranges());
    assert_eq!(ebpf.ignored_ports.len(), port_ranges().effective_ignored_ports().port_count());
    assert_eq!(ebpf.app_ports.len(), 12);
}

fn dports(rule: &Rule) -> Option<&str> {
    let at = rule.matches.iter().position(|m| m == "--dports")?;
    Some(rule.matches[at + 1].as_str())
}

fn parse_dports(list: &str) -> Vec<u16> {
    list.split(',')
        .flat_map(|entry| {
            let (start, end) = entry.split_once(':').unwrap_or((entry, entry));
            let (start, end): (u16, u16) = (start.parse().unwrap(), end.parse().unwrap());
            assert!(start < end || entry == start.to_string(), "bad multiport entry {entry}");
            start..=end
        })
        .collect()
}

fn multiport_slots(list: &str) -> usize {
    list.split(',').map(|e| if e.contains(':') { 2 } else { 1 }).sum()
}

// ---------------------------------------------------------------------------------------
// ipsets

fn with_ips(list: &[&str], implicit: bool) -> ProxyConfig {
    ProxyConfig { egress_ignored_ips: nets(list), implicit_exemptions: implicit, ..seed() }
}

fn v4_hosts(n: u8) -> Vec<String> {
    (0..n).map(|i| format!("192.0.2.{}", 2 * i + 1)).collect()
}

fn v6_hosts(n: u16) -> Vec<String> {
    (0..n).map(|i| format!("2001:db8::{:x}", 2 * i + 1)).collect()
}

fn refs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

fn ip_rules(family: &FamilyPlan) -> Vec<&Rule> {
    let egress = family.chain(EGRESS_CHAIN).unwrap();
    egress
        .rules
        .iter()
        .filter(|r| r.matches.first().is_some_and(|m| m == "-d") || r.matches.contains(&"set".into()))
        .collect()
}

#[test]
fn ipset_threshold() {
    // Exactly the threshold: one rule each, no set.
    let hosts = v4_hosts(IPSET_THRESHOLD as u8);
    let plan = IptablesPlan::new(&with_ips(&refs(&hosts), false));
    assert!(plan.ipsets.is_empty());
    assert_eq!(ip_rules(&plan.v4).len(), IPSET_THRESHOLD);
    assert_eq!(plan.render_ipset_restore(), "");

    // One more: a single set rule, the set holding all of them.
    let hosts = v4_hosts(IPSET_THRESHOLD as u8 + 1);
    let plan = IptablesPlan::new(&with_ips(&refs(&hosts), false));
    assert_eq!(plan.ipsets.len(), 1);
    let set = &plan.ipsets[0];
    assert_eq!((set.name.as_str(), set.family, set.entries.len()), ("intercept-egress-v4", Family::Ipv4, 9));
    assert_eq!(set.maxelem, iptables::IPSET_MIN_MAXELEM);
    let rules = ip_rules(&plan.v4);
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].matches, ["-m", "set", "--match-set", "intercept-egress-v4", "dst"]);
    // The v6 half has no v4 networks, hence no set and no rules.
    assert!(ip_rules(plan.v6.as_ref().unwrap()).is_empty());

    // The implicit metadata IPs count: 7 + 2 crosses the threshold.
    let hosts = v4_hosts(7);
    let plan = IptablesPlan::new(&with_ips(&refs(&hosts), true));
    assert_eq!(plan.ipsets.len(), 1);
    assert_eq!(plan.ipsets[0].entries.len(), 9);
}

#[test]
fn ipsets_are_per_family() {
    let mut list = v6_hosts(12);
    list.extend(v4_hosts(3));
    let plan = IptablesPlan::new(&with_ips(&refs(&list), true));
    assert_eq!(plan.ipsets.len(), 1, "only IPv6 is over the threshold");
    let set = &plan.ipsets[0];
    assert_eq!((set.name.as_str(), set.family), ("intercept-egress-v6", Family::Ipv6));
    assert_eq!(set.entries.len(), 12);
    assert!(set.entries.iter().all(|n| matches!(n, IpNet::V6(_))));
    assert_eq!(ip_rules(&plan.v4).len(), 5, "3 hosts + 2 metadata IPs, one rule each");
    let v6_rules = ip_rules(plan.v6.as_ref().unwrap());
    assert_eq!(v6_rules.len(), 1);
    assert!(v6_rules[0].matches.contains(&"intercept-egress-v6".to_owned()));
    // IPv6 off: the v6 set goes too.
    let plan = IptablesPlan::new(&ProxyConfig { ipv6: false, ..with_ips(&refs(&list), true) });
    assert!(plan.ipsets.is_empty());

    let restore = IptablesPlan::new(&with_ips(&refs(&list), true)).render_ipset_restore();
    assert_eq!(
        restore.lines().filter(|l| !l.starts_with("add ")).collect::<Vec<_>>(),
        [
            "create intercept-egress-v6 hash:net family inet6 maxelem 65536 -exist",
            "create intercept-egress-v6-next hash:net family inet6 maxelem 65536 -exist",
            "flush intercept-egress-v6-next",
            "swap intercept-egress-v6-next intercept-egress-v6",
            "destroy intercept-egress-v6-next",
        ]
    );
    assert_eq!(restore.lines().filter(|l| l.starts_with("add intercept-egress-v6-next 2001:db8::")).count(), 12);
}

#[test]
fn zero_prefix_is_a_plain_rule_never_a_set_entry() {
    // 0.0.0.0/0 swallows every other IPv4 network; the IPv6 list still needs a set.
    let mut list = v6_hosts(10);
    list.extend(v4_hosts(10));
    list.push("0.0.0.0/0".into());
    let plan = IptablesPlan::new(&with_ips(&refs(&list), true));
    let v4 = ip_rules(&plan.v4);
    assert_eq!(v4.len(), 1);
    assert_eq!(v4[0].matches, ["-d", "0.0.0.0/0"]);
    assert!(v4[0].comment.contains("every IPv4 destination"));
    assert_eq!(plan.ipsets.len(), 1);
    assert_eq!(plan.ipsets[0].family, Family::Ipv6);

    let mut list = v4_hosts(10);
    list.extend(v6_hosts(10));
    list.push("::/0".into());
    let plan = IptablesPlan::new(&with_ips(&refs(&list), true));
    let v6 = ip_rules(plan.v6.as_ref().unwrap());
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0].matches, ["-d", "::/0"]);
    assert_eq!(plan.ipsets.iter().map(|s| s.family).collect::<Vec<_>>(), [Family::Ipv4]);

    for set in &plan.ipsets {
        assert!(set.entries.iter().all(|n| n.prefix_len() > 0));
    }
    // The eBPF tries take a /0 as it is.
    let ebpf = EbpfPlan::new(&with_ips(&refs(&list), true));
    assert_eq!(ebpf.ignored_nets_v6, [LpmKeyV6 { prefix_len: 0, addr: [0; 16] }]);
}

#[test]
fn ten_thousand_cidrs_go_into_one_set_and_one_trie() {
    let config = ten_thousand_cidrs();
    let plan = IptablesPlan::new(&config);
    assert_eq!(plan.ipsets.len(), 1);
    let set = &plan.ipsets[0];
    assert_eq!(set.entries.len(), 10_002, "10,000 + the two metadata IPs");
    assert_eq!(set.maxelem, 65536);
    let restore = plan.render_ipset_restore();
    assert_eq!(restore.lines().filter(|l| l.starts_with("add intercept-egress-v4-next ")).count(), 10_002);
    assert_eq!(restore.lines().count(), 10_002 + 5);
    assert_eq!(plan.v4.chain(EGRESS_CHAIN).unwrap().rules.len(), 4, "uid, port 22, the set, redirect");

    let json: serde_json::Value = serde_json::from_str(&plan.render_json()).unwrap();
    assert_eq!(json["ipsets"][0]["entries"].as_array().unwrap().len(), 10_002);
    assert_eq!(json["ipset_restore"].as_str().unwrap(), restore);

    // The text summarises the set instead of listing 10,002 lines.
    let text = plan.render_text();
    assert!(text.lines().count() < 80, "{} lines", text.lines().count());
    assert!(text.contains("# … and 9982 more (--format json lists them all)"));

    let ebpf = EbpfPlan::new(&config);
    assert_eq!(ebpf.ignored_nets_v4.len(), 10_002);
    let spec = ebpf.map_specs().into_iter().find(|s| s.name == IGNORED_NETS_V4_MAP).unwrap();
    assert_eq!(spec.max_entries, HOST_NETS_CAPACITY, "the host's trie: entries are allocated as they are inserted");
    let json: serde_json::Value = serde_json::from_str(&ebpf.render_json()).unwrap();
    let map = json["maps"].as_array().unwrap().iter().find(|m| m["name"] == IGNORED_NETS_V4_MAP).unwrap();
    assert_eq!(map["entries"].as_array().unwrap().len(), 10_002);
    assert!(ebpf.render_text().contains("  … and 9982 more"));
}

#[test]
fn the_hosts_tries_hold_a_long_list_in_both_generations() {
    let n = (1 << 16) + 10;
    let list: Vec<String> = (0..n).map(|i| format!("2001:db8:{:x}:{:x}::/64", i / 0x8000, 2 * (i % 0x8000))).collect();
    let ebpf = EbpfPlan::new(&with_ips(&refs(&list), false));
    assert_eq!(ebpf.ignored_nets_v6.len(), n);
    let spec = ebpf.map_specs().into_iter().find(|s| s.name == intercept_common::IGNORED_NETS_V6_MAP).unwrap();
    assert!(spec.max_entries as usize >= GENERATIONS as usize * n, "room for the list in each generation");
    let plan = IptablesPlan::new(&with_ips(&refs(&list), false));
    assert_eq!(plan.ipsets[0].maxelem, 1 << 17);
}

#[test]
fn lpm_keys_hold_the_address_in_network_order() {
    let key = ebpf::lpm_key_v4("10.1.2.0/24".parse().unwrap());
    assert_eq!(key, LpmKeyV4 { prefix_len: 24, addr: [10, 1, 2, 0] });
    assert_eq!(ebpf::net_v4(&key).to_string(), "10.1.2.0/24");
    let key = ebpf::lpm_key_v6("2001:db8::/32".parse().unwrap());
    assert_eq!(key.prefix_len, 32);
    assert_eq!(key.addr[..4], [0x20, 0x01, 0x0d, 0xb8]);
    assert_eq!(ebpf::net_v6(&key).to_string(), "2001:db8::/32");
}

#[test]
fn rendering_is_deterministic() {
    for (_, config) in all_configs().into_iter().filter(|(n, _)| *n != "ten_thousand_cidrs") {
        for backend in [Kind::Iptables, Kind::Ebpf] {
            for format in [Format::Text, Format::Json] {
                assert_eq!(backend.render_plan(&config, format), backend.render_plan(&config, format));
            }
        }
    }
    // Input order does not matter: the plans work from the normalised lists.
    let mut shuffled = ipv6_cidrs();
    shuffled.egress_ignored_ips.reverse();
    shuffled.egress_ignored_ports = ports(&[(8000, 8010), (22, 22), (8005, 8020)]);
    let mut sorted = ipv6_cidrs();
    sorted.egress_ignored_ports = ports(&[(22, 22), (8000, 8020)]);
    for backend in [Kind::Iptables, Kind::Ebpf] {
        assert_eq!(backend.render_plan(&shuffled, Format::Json), backend.render_plan(&sorted, Format::Json));
    }
}

// ---------------------------------------------------------------------------------------
// The plans against the model

/// Run `conn` through the iptables plan as the kernel would: the built-in chain's jumps,
/// then intercept's chain, rule by rule. Egress reasons come from the rule that decided;
/// ingress is compared on the outcome only (iptables cannot tell "local source" from "no
/// AppPort" when ingress is not configured: there is no rule at all).
fn run_iptables(plan: &IptablesPlan, local: &LocalAddrs, conn: &Connection) -> Decision {
    let dst = canonical(conn.destination.ip());
    let Some(family) = plan.family(Family::of(dst)) else {
        return Decision::Untouched { reason: Reason::Ipv6Disabled };
    };
    let builtin = match conn.direction {
        Direction::Egress => "OUTPUT",
        Direction::Ingress => "PREROUTING",
    };
    let mut why_not = Reason::NotAppPort;
    // Which jump the connection failed decides why it was left alone, unless it only failed
    // on the protocol (TCP, or UDP to 53) of one jump while another looked at it further; once
    // one of intercept's chains returned, its reason stands (the jumps exclude each other).
    let mut decided = false;
    let mut protocol_only = true;
    for jump in family.jumps.iter().filter(|j| j.chain == builtin) {
        if let Err(reason) = eval_matches(plan, family, local, conn, &jump.matches) {
            let on_protocol = reason == Reason::NotTcp;
            if !decided && (protocol_only || !on_protocol) {
                why_not = reason;
                protocol_only = on_protocol;
            }
            continue;
        }
        decided = true;
        assert_eq!(jump.target[0], "-j");
        let chain = family.chain(&jump.target[1]).expect("jump to a declared chain");
        match run_chain(plan, family, local, conn, chain, why_not) {
            Ok(decision) => return decision,
            Err(reason) => why_not = reason,
        }
    }
    Decision::Untouched { reason: why_not }
}

/// Runs `conn` through one of intercept's chains: `Ok` with a redirect, `Err(why)` when the
/// chain returns (`why` is the returning rule's reason, or `why_not` for a rule that passes on
/// what a chain it jumped to decided).
fn run_chain(
    plan: &IptablesPlan,
    family: &FamilyPlan,
    local: &LocalAddrs,
    conn: &Connection,
    chain: &iptables::Chain,
    mut why_not: Reason,
) -> Result<Decision, Reason> {
    let dst = canonical(conn.destination.ip());
    for rule in &chain.rules {
        let Ok(kind) = eval_matches(plan, family, local, conn, &rule.matches) else { continue };
        match rule.target.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["-j", "RETURN"] => {
                return Err(match rule.effect {
                    Some(Effect::Untouched(reason)) => {
                        if let Some(kind) = kind.filter(|_| reason != Reason::NotIncluded) {
                            assert_eq!(kind, reason, "{rule:?}: its matches say otherwise");
                        }
                        reason
                    }
                    None => why_not,
                    other => panic!("RETURN with effect {other:?}"),
                });
            }
            ["-j", "REDIRECT", "--to-ports", port] => {
                let port: u16 = port.parse().unwrap();
                let ip = match (conn.direction, dst) {
                    (Direction::Egress, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    (Direction::Egress, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    (Direction::Ingress, ip) => ip,
                };
                return Ok(Decision::Redirect { to: SocketAddr::new(ip, port) });
            }
            ["-j", callee] => {
                let callee = family.chain(callee).expect("jump to a declared chain");
                match run_chain(plan, family, local, conn, callee, why_not) {
                    Ok(decision) => return Ok(decision),
                    Err(reason) => why_not = reason,
                }
            }
            ref other => panic!("interpreter does not know target {other:?}"),
        }
    }
    Err(why_not)
}

/// `Ok(reason the rule stands for)` when every match holds, `Err(reason)` for the first
/// that does not.
fn eval_matches(
    plan: &IptablesPlan,
    family: &FamilyPlan,
    local: &LocalAddrs,
    conn: &Connection,
    matches: &[String],
) -> Result<Option<Reason>, Reason> {
    let dst = canonical(conn.destination.ip());
    let src = canonical(conn.source.ip());
    let check = |ok: bool, reason| if ok { Ok(()) } else { Err(reason) };
    let mut kind = None;
    let mut negate = false;
    let mut i = 0;
    while i < matches.len() {
        let arg = |n: usize| matches[i + n].as_str();
        match arg(0) {
            "!" => {
                negate = true;
                i += 1;
                continue;
            }
            "-p" => {
                let protocol = match arg(1) {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    other => panic!("protocol {other}"),
                };
                check(conn.protocol == protocol, Reason::NotTcp)?;
                i += 2;
            }
            "--dport" => {
                check(conn.destination.port() == arg(1).parse::<u16>().unwrap(), Reason::NotTcp)?;
                i += 2;
            }
            "-m" => {
                assert!(["owner", "multiport", "addrtype", "set", "udp", "tcp"].contains(&arg(1)), "module {}", arg(1));
                i += 2;
            }
            "--dst-type" | "--src-type" => {
                assert_eq!(arg(1), "LOCAL");
                let (ip, reason) =
                    if arg(0) == "--dst-type" { (dst, Reason::LocalDestination) } else { (src, Reason::LocalSource) };
                check(local.contains(ip) != negate, reason)?;
                i += 2;
            }
            "--uid-owner" => {
                check(conn.uid == arg(1).parse::<u32>().unwrap(), Reason::IgnoredUid)?;
                kind = Some(Reason::IgnoredUid);
                i += 2;
            }
            "--gid-owner" => {
                check(conn.gid == arg(1).parse::<u32>().unwrap(), Reason::IgnoredGid)?;
                kind = Some(Reason::IgnoredGid);
                i += 2;
            }
            "--dports" => {
                assert!(multiport_slots(arg(1)) <= MULTIPORT_MAX);
                check(parse_dports(arg(1)).contains(&conn.destination.port()), Reason::IgnoredPort)?;
                kind = Some(Reason::IgnoredPort);
                i += 2;
            }
            "-d" => {
                let net: IpNet = arg(1).parse().unwrap();
                assert!(family.family.contains(&net), "{net} in the {:?} plan", family.family);
                check(net.contains(&dst), Reason::IgnoredIp)?;
                kind = Some(Reason::IgnoredIp);
                i += 2;
            }
            "--match-set" => {
                let set = plan.ipset(arg(1)).expect("rule references a planned set");
                assert_eq!(set.family, family.family);
                assert_eq!(arg(2), "dst");
                check(set.contains(dst), Reason::IgnoredIp)?;
                kind = Some(Reason::IgnoredIp);
                i += 3;
            }
            other => panic!("interpreter does not know match {other}"),
        }
        assert!(!negate || matches!(matches[i - 2].as_str(), "--dst-type" | "--src-type"), "negated {matches:?}");
        negate = false;
    }
    Ok(kind)
}

/// What the eBPF programs must do with the maps: the same order as the model, every
/// question answered by one map lookup. `task_addrs` are what the agent adds to the local
/// tries at apply time.
fn run_ebpf(plan: &EbpfPlan, task_addrs: &[IpAddr], conn: &Connection) -> Decision {
    let untouched = |reason| Decision::Untouched { reason };
    let c = &plan.config;
    let port = conn.destination.port();
    let dns = c.proxy_dns_port != 0 && port == 53;
    // The connect and sendmsg hooks: TCP, and UDP only as DNS being captured.
    let udp_dns = conn.protocol == Protocol::Udp && conn.direction == Direction::Egress && dns;
    if conn.protocol != Protocol::Tcp && !udp_dns {
        return untouched(Reason::NotTcp);
    }
    let dst = canonical(conn.destination.ip());
    let src = canonical(conn.source.ip());
    if dst.is_ipv6() && c.ipv6 == 0 {
        return untouched(Reason::Ipv6Disabled);
    }
    let (mut local_v4, mut local_v6) = (plan.local_nets_v4.clone(), plan.local_nets_v6.clone());
    for addr in task_addrs {
        match *addr {
            IpAddr::V4(a) => local_v4.push(ebpf::lpm_key_v4(a.into())),
            IpAddr::V6(a) => local_v6.push(ebpf::lpm_key_v6(a.into())),
        }
    }
    let loopback = |port| {
        let ip = if dst.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        Decision::Redirect { to: SocketAddr::new(ip, port) }
    };
    match conn.direction {
        Direction::Egress => {
            if lpm_contains(&local_v4, &local_v6, dst) {
                return untouched(Reason::LocalDestination);
            }
            if c.has_ignored_uids == 1 && plan.ignored_uids.contains(&conn.uid) {
                return untouched(Reason::IgnoredUid);
            }
            if c.has_ignored_gids == 1 && plan.ignored_gids.contains(&conn.gid) {
                return untouched(Reason::IgnoredGid);
            }
            let ignored_ip = lpm_contains(&plan.ignored_nets_v4, &plan.ignored_nets_v6, dst);
            if dns {
                return if ignored_ip { untouched(Reason::IgnoredIp) } else { loopback(c.proxy_dns_port) };
            }
            if plan.ignored_ports.binary_search(&port).is_ok() {
                return untouched(Reason::IgnoredPort);
            }
            if ignored_ip {
                return untouched(Reason::IgnoredIp);
            }
            if c.include_only == 1 && !lpm_contains(&plan.included_nets_v4, &plan.included_nets_v6, dst) {
                return untouched(Reason::NotIncluded);
            }
            loopback(c.proxy_egress_port)
        }
        Direction::Ingress => {
            if lpm_contains(&local_v4, &local_v6, src) {
                return untouched(Reason::LocalSource);
            }
            if c.proxy_ingress_port != 0 && plan.app_ports.binary_search(&port).is_ok() {
                return Decision::Redirect { to: SocketAddr::new(dst, c.proxy_ingress_port) };
            }
            untouched(Reason::NotAppPort)
        }
    }
}

fn lpm_contains(v4: &[LpmKeyV4], v6: &[LpmKeyV6], ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => v4.iter().any(|k| ebpf::net_v4(k).contains(&a)),
        IpAddr::V6(a) => v6.iter().any(|k| ebpf::net_v6(k).contains(&a)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn iptables_plan_agrees_with_the_model(
        config in arb_config(),
        task_addrs in prop::collection::vec(arb_ip(), 0..3),
        conns in prop::collection::vec(arb_connection(), 1..32),
    ) {
        let plan = IptablesPlan::new(&config);
        let local = LocalAddrs::with_addresses(task_addrs.iter().map(|a| canonical(*a)));
        for conn in conns.iter().chain(&edge_connections(&config)) {
            let want = model::decide(&config, &local, conn);
            let got = run_iptables(&plan, &local, conn);
            // Without a family plan nothing in iptables decides: "not TCP" and "IPv6
            // disabled" are both right, so only the outcome is compared.
            let family_planned = plan.family(Family::of(canonical(conn.destination.ip()))).is_some();
            if conn.direction == Direction::Egress && family_planned {
                prop_assert_eq!(got, want, "{:?}", conn);
            } else {
                prop_assert_eq!(outcome(got), outcome(want), "{:?}", conn);
            }
        }
    }

    #[test]
    fn ebpf_plan_agrees_with_the_model(
        config in arb_config(),
        task_addrs in prop::collection::vec(arb_ip(), 0..3),
        conns in prop::collection::vec(arb_connection(), 1..32),
    ) {
        let plan = EbpfPlan::new(&config);
        let task_addrs: Vec<IpAddr> = task_addrs.into_iter().map(canonical).collect();
        let local = LocalAddrs::with_addresses(task_addrs.iter().copied());
        for conn in conns.iter().chain(&edge_connections(&config)) {
            prop_assert_eq!(run_ebpf(&plan, &task_addrs, conn), model::decide(&config, &local, conn), "{:?}", conn);
        }
    }

    #[test]
    fn plan_invariants(config in arb_config()) {
        let plan = IptablesPlan::new(&config);
        for set in &plan.ipsets {
            prop_assert!(set.name.len() <= 31 && set.staging_name().len() <= 31);
            prop_assert!(set.entries.len() > IPSET_THRESHOLD);
            prop_assert!(set.entries.iter().all(|n| set.family.contains(n) && n.prefix_len() > 0));
            prop_assert!(set.maxelem >= set.entries.len());
        }
        for family in plan.families() {
            for rule in family.chains.iter().flat_map(|c| &c.rules).chain(&family.jumps) {
                prop_assert!(rule.comment.starts_with(COMMENT_PREFIX));
            }
            // TCP only, and with DNS capture UDP to port 53 only: nothing else enters the chains.
            let udp_dns = ["-p", "udp", "-m", "udp", "--dport", "53"];
            prop_assert!(family.jumps.iter().all(|j| j.matches[..2] == ["-p", "tcp"]
                || (config.dns_capture().is_some() && j.matches[..6] == udp_dns)));
        }
    }

    #[test]
    fn multiport_chunks_never_exceed_fifteen_nor_lose_a_port(set in arb_ports(64)) {
        let chunks = iptables::multiport_chunks(&set);
        for chunk in &chunks {
            prop_assert!(!chunk.is_empty());
            prop_assert!(chunk.iter().map(|r| iptables::multiport_weight(*r)).sum::<usize>() <= MULTIPORT_MAX);
            prop_assert!(multiport_slots(&iptables::dports_arg(chunk)) <= MULTIPORT_MAX);
        }
        let flat: Vec<PortRange> = chunks.iter().flatten().copied().collect();
        prop_assert_eq!(flat.as_slice(), set.ranges());
        let rendered: Vec<u16> = chunks.iter().flat_map(|c| parse_dports(&iptables::dports_arg(c))).collect();
        prop_assert_eq!(rendered, set.ports().collect::<Vec<_>>());
        // Greedy packing: no chunk could have taken the next chunk's first entry.
        for pair in chunks.windows(2) {
            let used: usize = pair[0].iter().map(|r| iptables::multiport_weight(*r)).sum();
            prop_assert!(used + iptables::multiport_weight(pair[1][0]) > MULTIPORT_MAX);
        }
    }
}
