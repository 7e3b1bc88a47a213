//! What the plan tests of every backend share: the configurations they snapshot and
//! check, and the random configurations and connections they run against the decision
//! model.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use proptest::prelude::*;

use crate::config::{Ingress, IngressFallback, PortRange, PortSet, ProxyConfig};
use crate::model::{Connection, Decision, Direction, Protocol, canonical};

// ---------------------------------------------------------------------------------------
// Configurations

pub(super) fn ports(ranges: &[(u16, u16)]) -> PortSet {
    PortSet::from_ranges(ranges.iter().map(|&(start, end)| PortRange { start, end }))
}

pub(super) fn nets(list: &[&str]) -> Vec<IpNet> {
    let parse = |s: &str| s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).expect("test CIDR");
    let mut nets: Vec<IpNet> = list.iter().map(|s| parse(s).trunc()).collect();
    nets.sort();
    nets.dedup();
    nets
}

/// The seed guide's proxyConfiguration.
pub(super) fn seed() -> ProxyConfig {
    crate::testdata::seed_config()
}

pub(super) fn gid_only() -> ProxyConfig {
    ProxyConfig { ignored_uids: Vec::new(), ignored_gids: vec![1337], ..seed() }
}

pub(super) fn egress_only() -> ProxyConfig {
    ProxyConfig { ingress: None, ..seed() }
}

/// Twenty single ports, none adjacent (so none merge into a range).
pub(super) fn twenty_ports() -> ProxyConfig {
    let list: Vec<(u16, u16)> = (0..20).map(|i| (1000 + 2 * i, 1000 + 2 * i)).collect();
    ProxyConfig { egress_ignored_ports: ports(&list), ..seed() }
}

pub(super) fn port_ranges() -> ProxyConfig {
    ProxyConfig {
        egress_ignored_ports: ports(&[
            (25, 25),
            (3000, 3010),
            (5432, 5432),
            (6000, 6063),
            (6379, 6379),
            (7000, 7100),
            (8000, 8010),
            (9000, 9099),
            (11211, 11211),
            (27017, 27019),
        ]),
        ingress: Some(Ingress { proxy_port: 15000, app_ports: ports(&[(8080, 8080), (9080, 9089), (50051, 50051)]) }),
        ..seed()
    }
}

/// Also shows the implicit exemptions' comments: neither the metadata IPs nor port 22
/// are listed.
pub(super) fn ipv6_cidrs() -> ProxyConfig {
    ProxyConfig {
        egress_ignored_ips: nets(&["10.0.0.0/8", "fd00:ec2::254", "2001:db8::/32", "fe80::/10"]),
        egress_ignored_ports: PortSet::new(),
        ..seed()
    }
}

pub(super) fn ipv6_off() -> ProxyConfig {
    ProxyConfig { ipv6: false, ..ipv6_cidrs() }
}

pub(super) fn implicit_off() -> ProxyConfig {
    ProxyConfig {
        egress_ignored_ports: PortSet::new(),
        egress_ignored_ips: Vec::new(),
        egress_included_ips: None,
        proxy_dns_port: None,
        implicit_exemptions: false,
        ..seed()
    }
}

/// 10,000 /24s, every other one, so that none aggregate.
pub(super) fn ten_thousand_cidrs() -> ProxyConfig {
    let list: Vec<String> = (0..10_000u32).map(|i| format!("10.{}.{}.0/24", i / 128, 2 * (i % 128))).collect();
    let refs: Vec<&str> = list.iter().map(String::as_str).collect();
    ProxyConfig { egress_ignored_ips: nets(&refs), ..seed() }
}

/// DNS capture, several ignored identities and include-only outbound, with an ignored network
/// inside an included one.
pub(super) fn dns_include_ids() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![1337, 1400],
        ignored_gids: vec![1338],
        egress_ignored_ips: vec!["10.1.2.0/24".parse().unwrap()],
        egress_included_ips: Some(vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()]),
        proxy_dns_port: Some(15053),
        ingress_fallback: IngressFallback::App,
        ..seed()
    }
}

pub(super) fn all_configs() -> Vec<(&'static str, ProxyConfig)> {
    vec![
        ("dns_include_ids", dns_include_ids()),
        ("seed", seed()),
        ("gid_only", gid_only()),
        ("egress_only", egress_only()),
        ("twenty_ports", twenty_ports()),
        ("port_ranges", port_ranges()),
        ("ipv6_cidrs", ipv6_cidrs()),
        ("ipv6_off", ipv6_off()),
        ("implicit_off", implicit_off()),
        ("ten_thousand_cidrs", ten_thousand_cidrs()),
    ]
}

// ---------------------------------------------------------------------------------------
// Random configurations and connections

/// Egress connections to the edges of every ignored network and port range (plus one
/// port past each range), so that every entry of a plan is exercised, not only those the
/// random connections happen to hit.
pub(super) fn edge_connections(config: &ProxyConfig) -> Vec<Connection> {
    let egress = |dst: IpAddr, port: u16| Connection {
        direction: Direction::Egress,
        protocol: Protocol::Tcp,
        uid: 4242,
        gid: 4242,
        source: SocketAddr::new(
            if dst.is_ipv4() { "10.9.9.9".parse().unwrap() } else { "fd09::9".parse().unwrap() },
            1,
        ),
        destination: SocketAddr::new(dst, port),
    };
    let mut conns = Vec::new();
    for net in config.egress_ignored_ips.iter().chain(&config.effective_ignored_ips()) {
        conns.extend([egress(net.network(), 80), egress(net.broadcast(), 80)]);
    }
    for range in config.egress_ignored_ports.ranges() {
        let dst = "192.0.2.77".parse().unwrap();
        conns.extend([egress(dst, range.start), egress(dst, range.end), egress(dst, range.end.wrapping_add(1))]);
    }
    conns
}

pub(super) fn outcome(decision: Decision) -> Option<SocketAddr> {
    match decision {
        Decision::Redirect { to } => Some(to),
        Decision::Untouched { .. } => None,
    }
}

// Small address and port universes, so random connections often hit what random
// configurations ignore.

pub(super) fn arb_v4() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        4 => (0u8..4, 0u8..16).prop_map(|(c, d)| Ipv4Addr::new(10, 0, c, d)),
        1 => Just(Ipv4Addr::new(169, 254, 170, 2)),
        1 => Just(Ipv4Addr::new(169, 254, 169, 254)),
        1 => Just(Ipv4Addr::new(127, 0, 0, 1)),
        1 => Just(Ipv4Addr::new(127, 1, 2, 3)),
        1 => Just(Ipv4Addr::new(192, 0, 2, 1)),
    ]
}

pub(super) fn arb_v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        4 => (0u16..4, 0u16..16).prop_map(|(c, d)| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, c, d)),
        1 => Just(Ipv6Addr::LOCALHOST),
        1 => Just(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
    ]
}

pub(super) fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => arb_v4().prop_map(IpAddr::V4),
        2 => arb_v6().prop_map(IpAddr::V6),
        1 => arb_v4().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
    ]
}

pub(super) fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        8 => (arb_v4(), prop::sample::select(vec![24u8, 28, 30, 31, 32, 32, 32, 32, 32, 32]))
            .prop_map(|(a, p)| IpNet::new(a.into(), p).unwrap().trunc()),
        6 => (arb_v6(), prop::sample::select(vec![112u8, 124, 126, 127, 128, 128, 128, 128, 128, 128]))
            .prop_map(|(a, p)| IpNet::new(a.into(), p).unwrap().trunc()),
        1 => arb_v4().prop_map(|a| IpNet::new(IpAddr::V6(a.to_ipv6_mapped()), 128).unwrap()),
        1 => Just("10.0.0.0/8".parse().unwrap()),
        1 => Just("0.0.0.0/0".parse().unwrap()),
        1 => Just("::/0".parse().unwrap()),
    ]
}

pub(super) fn arb_port() -> impl Strategy<Value = u16> {
    prop_oneof![8 => 1u16..48, 2 => Just(53u16), 1 => Just(9080u16), 1 => any::<u16>()]
}

pub(super) fn arb_ports(max: usize) -> impl Strategy<Value = PortSet> {
    prop::collection::vec((arb_port(), prop_oneof![3 => Just(0u16), 1 => 1u16..6]), 0..max).prop_map(|ranges| {
        PortSet::from_ranges(ranges.into_iter().map(|(start, len)| PortRange { start, end: start.saturating_add(len) }))
    })
}

pub(super) fn arb_id() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0u32, 1000, 1337])
}

pub(super) fn arb_config() -> impl Strategy<Value = ProxyConfig> {
    let ids = || prop::collection::vec(arb_id(), 0..3);
    (
        (ids(), ids()),
        arb_port(),
        prop::option::of((arb_port(), arb_ports(20))),
        arb_ports(24),
        prop::collection::vec(arb_net(), 0..40),
        (any::<bool>(), any::<bool>()),
        prop::option::of(prop_oneof![Just(15053u16), arb_port()]),
        prop::option::of(prop::collection::vec(arb_net(), 0..6)),
    )
        .prop_map(|((uids, gids), egress, ingress, ignored_ports, ips, (implicit, ipv6), dns, included)| {
            let normal = |mut v: Vec<IpNet>| {
                v.sort();
                v.dedup();
                v
            };
            let ids = |mut v: Vec<u32>| {
                v.sort_unstable();
                v.dedup();
                v
            };
            ProxyConfig {
                ignored_uids: ids(uids),
                ignored_gids: ids(gids),
                ingress: ingress.map(|(proxy_port, app_ports)| Ingress { proxy_port, app_ports }),
                egress_ignored_ports: ignored_ports,
                egress_ignored_ips: normal(ips),
                egress_included_ips: included.map(normal),
                proxy_dns_port: dns,
                implicit_exemptions: implicit,
                ipv6,
                ..ProxyConfig::new(egress)
            }
        })
}

pub(super) fn arb_connection() -> impl Strategy<Value = Connection> {
    (
        prop_oneof![Just(Direction::Egress), Just(Direction::Ingress)],
        prop_oneof![8 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp), 1 => Just(Protocol::Other(132))],
        arb_id(),
        arb_id(),
        // A connection's two ends are of one family.
        (arb_ip(), arb_ip()).prop_filter("same family", |(s, d)| canonical(*s).is_ipv4() == canonical(*d).is_ipv4()),
        arb_port(),
    )
        .prop_map(|(direction, protocol, uid, gid, (src, dst), port)| Connection {
            direction,
            protocol,
            uid,
            gid,
            source: SocketAddr::new(src, 40000),
            destination: SocketAddr::new(dst, port),
        })
}
