//! The decision model: what intercept does with one connection, as a pure function.
//!
//! This is the oracle every backend is tested against. It follows the reference plugin's
//! rule order (see `docs/configuration.md`): for egress, a local destination is never
//! touched, then the ignored identities, then ignored ports, then ignored IPs; for
//! ingress, only connections from non-local sources to an AppPort are redirected.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::config::ProxyConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A connection made by a process of the task.
    Egress,
    /// A connection arriving at the task.
    Ingress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// Any other IP protocol, by number.
    Other(u8),
}

/// One connection attempt as the kernel sees it at the interception point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Connection {
    pub direction: Direction,
    pub protocol: Protocol,
    /// Identity of the connecting process (egress only; ignored for ingress).
    pub uid: u32,
    pub gid: u32,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// Why a connection was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    NotTcp,
    /// IPv6 interception is switched off.
    Ipv6Disabled,
    LocalDestination,
    IgnoredUid,
    IgnoredGid,
    IgnoredPort,
    IgnoredIp,
    /// EgressIncludedIPs is given and the destination is in none of its networks.
    NotIncluded,
    /// Ingress from an address local to the task (e.g. the proxy reaching the app).
    LocalSource,
    /// Ingress to a port that is not an AppPort, or no ingress configured.
    NotAppPort,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::NotTcp => "not TCP (nor DNS being captured)",
            Reason::Ipv6Disabled => "IPv6 interception disabled",
            Reason::LocalDestination => "destination is local to the task",
            Reason::IgnoredUid => "process runs as IgnoredUID",
            Reason::IgnoredGid => "process runs as IgnoredGID",
            Reason::IgnoredPort => "destination port is in EgressIgnoredPorts",
            Reason::IgnoredIp => "destination is in EgressIgnoredIPs",
            Reason::NotIncluded => "destination is outside EgressIncludedIPs",
            Reason::LocalSource => "source is local to the task",
            Reason::NotAppPort => "destination port is not an AppPort",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// What a plan's rule, set or map entry stands for, in the model's own terms: the decision it
/// makes for the connections it matches (without the address a redirect goes to). Plans carry
/// it so that counters are read by decision, never by a rule's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    Redirect(Direction),
    /// DNS to the proxy's DNS port (UDP and TCP port 53).
    RedirectDns,
    Untouched(Reason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase", tag = "action")]
pub enum Decision {
    /// Sent to the proxy at `to`; the proxy reads the original destination back with
    /// `SO_ORIGINAL_DST`.
    Redirect {
        to: SocketAddr,
    },
    Untouched {
        reason: Reason,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Redirect { to } => write!(f, "redirected to {to}"),
            Decision::Untouched { reason } => write!(f, "untouched ({reason})"),
        }
    }
}

/// The addresses that count as local to the task: the loopback ranges always, plus the
/// addresses of the task's network namespace (a backend reads those at apply time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddrs {
    nets: Vec<IpNet>,
}

impl LocalAddrs {
    pub fn loopback() -> Self {
        LocalAddrs {
            nets: vec![
                IpNet::V4(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix")),
                IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid prefix")),
            ],
        }
    }

    /// Loopback plus the given addresses of the task (each as a host address).
    pub fn with_addresses(addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let mut local = LocalAddrs::loopback();
        local.nets.extend(addrs.into_iter().map(IpNet::from));
        local
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4 connections on a dual-stack
/// socket and are decided as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Decide what happens to `conn` under `config` in a task whose local addresses are `local`.
///
/// DNS capture (ProxyDNSPort) comes after the identities and before the ignored ports: DNS
/// (UDP or TCP to port 53) from the workload to a non-local server goes to the DNS port on
/// loopback unless the server is an ignored IP. EgressIncludedIPs does not narrow it: the
/// resolvers a task uses are seldom inside the mesh's networks.
pub fn decide(config: &ProxyConfig, local: &LocalAddrs, conn: &Connection) -> Decision {
    let untouched = |reason| Decision::Untouched { reason };
    let dns = config.dns_capture().filter(|_| conn.destination.port() == crate::config::DNS_PORT);
    let udp_dns = conn.protocol == Protocol::Udp && conn.direction == Direction::Egress && dns.is_some();
    if conn.protocol != Protocol::Tcp && !udp_dns {
        return untouched(Reason::NotTcp);
    }
    let dst_ip = canonical(conn.destination.ip());
    let src_ip = canonical(conn.source.ip());
    let loopback = |port| {
        let ip = match dst_ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Decision::Redirect { to: SocketAddr::new(ip, port) }
    };
    match conn.direction {
        Direction::Egress => {
            if dst_ip.is_ipv6() && !config.ipv6 {
                return untouched(Reason::Ipv6Disabled);
            }
            if local.contains(dst_ip) {
                return untouched(Reason::LocalDestination);
            }
            if config.ignored_uids.contains(&conn.uid) {
                return untouched(Reason::IgnoredUid);
            }
            if config.ignored_gids.contains(&conn.gid) {
                return untouched(Reason::IgnoredGid);
            }
            let ignored_ip = config.effective_ignored_ips().iter().any(|n| n.contains(&dst_ip));
            if let Some(port) = dns {
                return if ignored_ip { untouched(Reason::IgnoredIp) } else { loopback(port) };
            }
            if config.effective_ignored_ports().contains(conn.destination.port()) {
                return untouched(Reason::IgnoredPort);
            }
            if ignored_ip {
                return untouched(Reason::IgnoredIp);
            }
            if let Some(included) = &config.egress_included_ips
                && !included.iter().any(|n| n.contains(&dst_ip))
            {
                return untouched(Reason::NotIncluded);
            }
            loopback(config.proxy_egress_port)
        }
        Direction::Ingress => {
            if dst_ip.is_ipv6() && !config.ipv6 {
                return untouched(Reason::Ipv6Disabled);
            }
            if local.contains(src_ip) {
                return untouched(Reason::LocalSource);
            }
            match &config.ingress {
                Some(ingress) if ingress.app_ports.contains(conn.destination.port()) => {
                    Decision::Redirect { to: SocketAddr::new(dst_ip, ingress.proxy_port) }
                }
                _ => untouched(Reason::NotAppPort),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Ingress, PortRange, PortSet};

    fn seed() -> ProxyConfig {
        ProxyConfig {
            ignored_uids: vec![1337],
            ignored_gids: vec![1338],
            ingress: Some(Ingress {
                proxy_port: 15000,
                app_ports: PortSet::from_ranges([PortRange::single(9080), PortRange { start: 8000, end: 8010 }]),
            }),
            egress_ignored_ports: PortSet::from_ranges([PortRange::single(5432)]),
            egress_ignored_ips: vec!["10.9.0.0/16".parse().unwrap(), "2001:db8:9::/48".parse().unwrap()],
            ..ProxyConfig::new(15001)
        }
    }

    fn egress(uid: u32, gid: u32, dst: &str) -> Connection {
        let destination: SocketAddr = dst.parse().unwrap();
        let source = match destination {
            SocketAddr::V4(_) => "10.0.0.2:40000".parse().unwrap(),
            SocketAddr::V6(_) => "[fd00::2]:40000".parse().unwrap(),
        };
        Connection { direction: Direction::Egress, protocol: Protocol::Tcp, uid, gid, source, destination }
    }

    fn ingress(src: &str, dst: &str) -> Connection {
        Connection {
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            uid: 0,
            gid: 0,
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    fn local() -> LocalAddrs {
        LocalAddrs::with_addresses(["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()])
    }

    fn redirect(to: &str) -> Decision {
        Decision::Redirect { to: to.parse().unwrap() }
    }

    fn untouched(reason: Reason) -> Decision {
        Decision::Untouched { reason }
    }

    #[test]
    fn every_decision_reason() {
        let cfg = seed();
        let local = local();
        let cases: Vec<(&str, Connection, Decision)> = vec![
            ("plain egress v4", egress(1000, 1000, "192.0.2.10:80"), redirect("127.0.0.1:15001")),
            ("plain egress v6", egress(1000, 1000, "[2001:db8::10]:80"), redirect("[::1]:15001")),
            ("mapped v4 decided as v4", egress(1000, 1000, "[::ffff:192.0.2.10]:80"), redirect("127.0.0.1:15001")),
            ("ignored uid", egress(1337, 1000, "192.0.2.10:80"), untouched(Reason::IgnoredUid)),
            ("ignored gid", egress(1000, 1338, "192.0.2.10:80"), untouched(Reason::IgnoredGid)),
            ("ignored port", egress(1000, 1000, "192.0.2.10:5432"), untouched(Reason::IgnoredPort)),
            ("implicit port 22", egress(1000, 1000, "192.0.2.10:22"), untouched(Reason::IgnoredPort)),
            ("ignored cidr v4", egress(1000, 1000, "10.9.3.4:80"), untouched(Reason::IgnoredIp)),
            ("ignored cidr v6", egress(1000, 1000, "[2001:db8:9::1]:80"), untouched(Reason::IgnoredIp)),
            ("task metadata", egress(1000, 1000, "169.254.170.2:80"), untouched(Reason::IgnoredIp)),
            ("instance metadata", egress(1000, 1000, "169.254.169.254:80"), untouched(Reason::IgnoredIp)),
            ("loopback", egress(1000, 1000, "127.0.0.1:9080"), untouched(Reason::LocalDestination)),
            ("loopback range", egress(1000, 1000, "127.3.2.1:80"), untouched(Reason::LocalDestination)),
            ("loopback v6", egress(1000, 1000, "[::1]:80"), untouched(Reason::LocalDestination)),
            ("own address", egress(1000, 1000, "10.0.0.2:80"), untouched(Reason::LocalDestination)),
            ("own address v6", egress(1000, 1000, "[fd00::2]:80"), untouched(Reason::LocalDestination)),
            ("ingress app port", ingress("10.0.0.9:5000", "10.0.0.2:9080"), redirect("10.0.0.2:15000")),
            ("ingress app range", ingress("10.0.0.9:5000", "10.0.0.2:8005"), redirect("10.0.0.2:15000")),
            ("ingress app port v6", ingress("[fd00::9]:5000", "[fd00::2]:9080"), redirect("[fd00::2]:15000")),
            ("ingress other port", ingress("10.0.0.9:5000", "10.0.0.2:9081"), untouched(Reason::NotAppPort)),
            ("ingress from local", ingress("127.0.0.1:5000", "10.0.0.2:9080"), untouched(Reason::LocalSource)),
            ("ingress from own addr", ingress("10.0.0.2:5000", "10.0.0.2:9080"), untouched(Reason::LocalSource)),
        ];
        for (name, conn, want) in cases {
            assert_eq!(decide(&cfg, &local, &conn), want, "{name}");
        }
    }

    #[test]
    fn several_identities() {
        let mut cfg = seed();
        cfg.ignored_uids = vec![1337, 1400];
        cfg.ignored_gids = vec![1338, 1500];
        assert_eq!(decide(&cfg, &local(), &egress(1400, 1000, "192.0.2.10:80")), untouched(Reason::IgnoredUid));
        assert_eq!(decide(&cfg, &local(), &egress(1000, 1500, "192.0.2.10:80")), untouched(Reason::IgnoredGid));
        assert_eq!(decide(&cfg, &local(), &egress(1401, 1501, "192.0.2.10:80")), redirect("127.0.0.1:15001"));
    }

    #[test]
    fn include_only_outbound() {
        let mut cfg = seed();
        cfg.egress_included_ips = Some(vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()]);
        let cases = [
            ("inside", egress(1000, 1000, "10.1.2.3:80"), redirect("127.0.0.1:15001")),
            ("inside v6", egress(1000, 1000, "[2001:db8::10]:80"), redirect("[::1]:15001")),
            ("outside", egress(1000, 1000, "192.0.2.10:80"), untouched(Reason::NotIncluded)),
            ("ignored inside", egress(1000, 1000, "10.9.3.4:80"), untouched(Reason::IgnoredIp)),
            ("ignored port inside", egress(1000, 1000, "10.1.2.3:5432"), untouched(Reason::IgnoredPort)),
            ("uid inside", egress(1337, 1000, "10.1.2.3:80"), untouched(Reason::IgnoredUid)),
        ];
        for (name, conn, want) in cases {
            assert_eq!(decide(&cfg, &local(), &conn), want, "{name}");
        }
    }

    #[test]
    fn dns_capture() {
        let mut cfg = seed();
        cfg.proxy_dns_port = Some(15053);
        cfg.egress_included_ips = Some(vec!["10.0.0.0/8".parse().unwrap()]);
        let udp = |uid, dst: &str| Connection { protocol: Protocol::Udp, ..egress(uid, 1000, dst) };
        let cases = [
            ("udp", udp(1000, "192.0.2.53:53"), redirect("127.0.0.1:15053")),
            ("udp v6", udp(1000, "[2001:db8::53]:53"), redirect("[::1]:15053")),
            ("tcp", egress(1000, 1000, "192.0.2.53:53"), redirect("127.0.0.1:15053")),
            ("outside the included networks", udp(1000, "192.0.2.53:53"), redirect("127.0.0.1:15053")),
            ("ignored uid", udp(1337, "192.0.2.53:53"), untouched(Reason::IgnoredUid)),
            ("ignored server", udp(1000, "10.9.0.2:53"), untouched(Reason::IgnoredIp)),
            ("local server", udp(1000, "127.0.0.53:53"), untouched(Reason::LocalDestination)),
            ("other udp", udp(1000, "192.0.2.53:5353"), untouched(Reason::NotTcp)),
        ];
        for (name, conn, want) in cases {
            assert_eq!(decide(&cfg, &local(), &conn), want, "{name}");
        }
        cfg.egress_ignored_ports.insert(PortRange::single(53));
        assert_eq!(decide(&cfg, &local(), &udp(1000, "192.0.2.53:53")), untouched(Reason::NotTcp), "53 ignored: off");
        assert_eq!(decide(&cfg, &local(), &egress(1000, 1000, "10.0.0.2:53")), untouched(Reason::LocalDestination));
        assert_eq!(decide(&cfg, &local(), &egress(1000, 1000, "10.1.0.2:53")), untouched(Reason::IgnoredPort));
    }

    #[test]
    fn udp_is_never_touched() {
        let mut conn = egress(1000, 1000, "192.0.2.10:53");
        conn.protocol = Protocol::Udp;
        assert_eq!(decide(&seed(), &local(), &conn), untouched(Reason::NotTcp));
        conn.protocol = Protocol::Other(132);
        assert_eq!(decide(&seed(), &local(), &conn), untouched(Reason::NotTcp));
    }

    #[test]
    fn local_destination_wins_over_identity() {
        // The reference checks `! --dst-type LOCAL` before the owner match.
        let conn = egress(1337, 1000, "127.0.0.1:80");
        assert_eq!(decide(&seed(), &local(), &conn), untouched(Reason::LocalDestination));
    }

    #[test]
    fn uid_checked_before_port_and_ip() {
        let conn = egress(1337, 1000, "169.254.169.254:22");
        assert_eq!(decide(&seed(), &local(), &conn), untouched(Reason::IgnoredUid));
        let conn = egress(1000, 1000, "169.254.169.254:22");
        assert_eq!(decide(&seed(), &local(), &conn), untouched(Reason::IgnoredPort));
    }

    #[test]
    fn implicit_exemptions_can_be_switched_off() {
        let mut cfg = seed();
        cfg.implicit_exemptions = false;
        assert_eq!(decide(&cfg, &local(), &egress(1000, 1000, "192.0.2.10:22")), redirect("127.0.0.1:15001"));
        assert_eq!(decide(&cfg, &local(), &egress(1000, 1000, "169.254.169.254:80")), redirect("127.0.0.1:15001"));
    }

    #[test]
    fn ipv6_disabled_leaves_v6_alone_but_not_mapped_v4() {
        let mut cfg = seed();
        cfg.ipv6 = false;
        assert_eq!(decide(&cfg, &local(), &egress(1000, 1000, "[2001:db8::10]:80")), untouched(Reason::Ipv6Disabled));
        assert_eq!(decide(&cfg, &local(), &egress(1000, 1000, "[::ffff:192.0.2.10]:80")), redirect("127.0.0.1:15001"));
        assert_eq!(decide(&cfg, &local(), &ingress("[fd00::9]:1", "[fd00::2]:9080")), untouched(Reason::Ipv6Disabled));
    }

    #[test]
    fn egress_only_config_never_redirects_ingress() {
        let mut cfg = seed();
        cfg.ingress = None;
        assert_eq!(decide(&cfg, &local(), &ingress("10.0.0.9:5000", "10.0.0.2:9080")), untouched(Reason::NotAppPort));
    }

    #[test]
    fn gid_only_config() {
        let mut cfg = seed();
        cfg.ignored_uids.clear();
        assert_eq!(decide(&cfg, &local(), &egress(1337, 1000, "192.0.2.10:80")), redirect("127.0.0.1:15001"));
        assert_eq!(decide(&cfg, &local(), &egress(1337, 1338, "192.0.2.10:80")), untouched(Reason::IgnoredGid));
    }
}
