//! The connection cases the iptables and nftables traffic tests share: one configuration
//! with every kind of exemption, remote destinations that hit each of them, the cases that
//! dial them, and [`check`], which runs cases in a [`Sandbox`] with a backend applied and
//! compares where each connection ended with the decision model.
//!
//! Backend-neutral: each test file opens and applies its own backend, then calls these.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use intercept::{
    config::{Ingress, PortRange, PortSet, ProxyConfig},
    model::{Decision, Protocol, Reason, decide},
};

use crate::{
    topology::{METADATA, REMOTE_V4, REMOTE_V6, TASK_V4, TASK_V6, Topology},
    traffic::{Client, Sandbox, SandboxSpec, Udp, agrees, dns, ingress},
};

pub const EGRESS_PORT: u16 = 15001;
pub const INGRESS_PORT: u16 = 15000;
pub const IGNORED_UID: u32 = 1337;
pub const IGNORED_GID: u32 = 1338;
/// An identity with no exemption.
pub const APP_UID: u32 = 1000;
pub const APP_GID: u32 = 1000;

pub const REMOTE_PORT: u16 = 80;
pub const IGNORED_PORT: u16 = 5432;
pub const SSH: u16 = 22;
pub const APP_PORT: u16 = 9080;
/// In the AppPorts range 8000-8010.
pub const APP_RANGE_PORT: u16 = 8005;
/// Not an AppPort: ingress reaches the app directly.
pub const OTHER_APP_PORT: u16 = 9090;

/// Remote destinations: one plain, one ignored IP, one in an ignored CIDR, per family.
pub struct Destinations {
    pub plain: IpAddr,
    pub ignored_ip: IpAddr,
    pub in_ignored_cidr: IpAddr,
    pub gateway: IpAddr,
    pub task: IpAddr,
    pub loopback: IpAddr,
}

pub const V4: Destinations = Destinations {
    plain: IpAddr::V4(Ipv4Addr::new(10, 5, 0, 1)),
    ignored_ip: IpAddr::V4(Ipv4Addr::new(10, 3, 0, 5)),
    in_ignored_cidr: IpAddr::V4(Ipv4Addr::new(10, 4, 1, 1)),
    gateway: IpAddr::V4(REMOTE_V4),
    task: IpAddr::V4(TASK_V4),
    loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
};

pub const V6: Destinations = Destinations {
    plain: IpAddr::V6(Ipv6Addr::new(0xfd05, 0, 0, 0, 0, 0, 0, 1)),
    ignored_ip: IpAddr::V6(Ipv6Addr::new(0xfd03, 0, 0, 0, 0, 0, 0, 5)),
    in_ignored_cidr: IpAddr::V6(Ipv6Addr::new(0xfd04, 0, 1, 0, 0, 0, 0, 1)),
    gateway: IpAddr::V6(REMOTE_V6),
    task: IpAddr::V6(TASK_V6),
    loopback: IpAddr::V6(Ipv6Addr::LOCALHOST),
};

/// Every kind of exemption, for both families.
pub fn config() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![IGNORED_UID],
        ignored_gids: vec![IGNORED_GID],
        ingress: Some(Ingress {
            proxy_port: INGRESS_PORT,
            app_ports: PortSet::from_ranges([PortRange::single(APP_PORT), PortRange { start: 8000, end: 8010 }]),
        }),
        egress_ignored_ports: PortSet::from_ranges([PortRange::single(IGNORED_PORT)]),
        egress_ignored_ips: vec![
            "10.3.0.5/32".parse().unwrap(),
            "10.4.0.0/16".parse().unwrap(),
            "fd03::5/128".parse().unwrap(),
            "fd04::/32".parse().unwrap(),
        ],
        ..ProxyConfig::new(EGRESS_PORT)
    }
}

/// The sandbox the cases dial into: [`V4`] and [`V6`] on the remote side (plus
/// `extra_remote`), listening on the case ports (plus `extra_remote_ports`).
pub fn sandbox(extra_remote: Vec<IpAddr>, extra_remote_ports: Vec<u16>) -> Sandbox {
    let mut remote_addresses =
        vec![V4.plain, V4.ignored_ip, V4.in_ignored_cidr, V6.plain, V6.ignored_ip, V6.in_ignored_cidr];
    remote_addresses.extend(extra_remote);
    Sandbox::new(&SandboxSpec {
        egress_proxy_ports: vec![EGRESS_PORT],
        ingress_proxy_ports: vec![INGRESS_PORT],
        app_ports: vec![APP_PORT, APP_RANGE_PORT, OTHER_APP_PORT],
        remote_ports: [vec![REMOTE_PORT, IGNORED_PORT, SSH], extra_remote_ports].concat(),
        remote_addresses,
        ..SandboxSpec::default()
    })
}

/// One connection and what it is for: `None` means the model must redirect it.
#[derive(Clone)]
pub struct Case {
    pub name: String,
    pub from_task: bool,
    pub uid: u32,
    pub gid: u32,
    pub destination: SocketAddr,
    /// A UDP datagram (DNS) instead of a TCP connection.
    pub udp: Option<Udp>,
    pub expect: Option<Reason>,
}

pub fn out(name: &str, uid: u32, gid: u32, ip: IpAddr, port: u16, expect: Option<Reason>) -> Case {
    let destination = SocketAddr::new(ip, port);
    Case { name: name.to_owned(), from_task: true, uid, gid, destination, udp: None, expect }
}

pub fn into_task(name: &str, ip: IpAddr, port: u16, expect: Option<Reason>) -> Case {
    let destination = SocketAddr::new(ip, port);
    Case { name: name.to_owned(), from_task: false, uid: 0, gid: 0, destination, udp: None, expect }
}

/// A DNS query to `ip`:53 from the task, as a datagram (`udp`) or over TCP (`None`).
pub fn dns_out(name: &str, uid: u32, gid: u32, ip: IpAddr, udp: Option<Udp>, expect: Option<Reason>) -> Case {
    Case { udp, ..out(name, uid, gid, ip, DNS, expect) }
}

/// Every egress exemption and redirect, and ingress to AppPorts and other ports, for one family.
pub fn cases(d: &Destinations, family: &str) -> Vec<Case> {
    let app = (APP_UID, APP_GID);
    let mut cases = vec![
        out("plain egress", app.0, app.1, d.plain, REMOTE_PORT, None),
        out("egress to the gateway's address", app.0, app.1, d.gateway, REMOTE_PORT, None),
        out("IgnoredUID", IGNORED_UID, app.1, d.plain, REMOTE_PORT, Some(Reason::IgnoredUid)),
        out("IgnoredGID", app.0, IGNORED_GID, d.plain, REMOTE_PORT, Some(Reason::IgnoredGid)),
        out("EgressIgnoredPorts", app.0, app.1, d.plain, IGNORED_PORT, Some(Reason::IgnoredPort)),
        out("port 22", app.0, app.1, d.plain, SSH, Some(Reason::IgnoredPort)),
        out("ignored IP", app.0, app.1, d.ignored_ip, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("ignored CIDR", app.0, app.1, d.in_ignored_cidr, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("own address, AppPort", app.0, app.1, d.task, APP_PORT, Some(Reason::LocalDestination)),
        out("loopback, AppPort", app.0, app.1, d.loopback, APP_PORT, Some(Reason::LocalDestination)),
        out("own address, other port", app.0, app.1, d.task, OTHER_APP_PORT, Some(Reason::LocalDestination)),
        into_task("ingress to an AppPort", d.task, APP_PORT, None),
        into_task("ingress to an AppPorts range", d.task, APP_RANGE_PORT, None),
        into_task("ingress to another port", d.task, OTHER_APP_PORT, Some(Reason::NotAppPort)),
    ];
    if family == "IPv4" {
        for ip in METADATA {
            cases.push(out(
                &format!("metadata {ip}"),
                app.0,
                app.1,
                IpAddr::V4(ip),
                REMOTE_PORT,
                Some(Reason::IgnoredIp),
            ));
        }
    }
    for case in &mut cases {
        case.name = format!("{family}: {}", case.name);
    }
    cases
}

/// [`cases`] for IPv4, then for IPv6.
pub fn both_families() -> Vec<Case> {
    [cases(&V4, "IPv4"), cases(&V6, "IPv6")].concat()
}

/// Twenty ignored ports, every other one so that none merge into a range (21 entries with
/// port 22): the sandbox listening on them and on a port between them, the configuration
/// ignoring them, and the cases (each ignored port, and the one between, per family).
pub fn twenty_ignored_ports() -> (Sandbox, ProxyConfig, Vec<Case>) {
    let ports: Vec<u16> = (0..20).map(|i| 6000 + 2 * i).collect();
    let not_ignored = 6001;
    let sandbox = sandbox(Vec::new(), [ports.clone(), vec![not_ignored]].concat());
    let config = ProxyConfig {
        egress_ignored_ports: PortSet::from_ranges(ports.iter().map(|&p| PortRange::single(p))),
        ..config()
    };
    let mut cases = Vec::new();
    for d in [&V4, &V6] {
        for &port in &ports {
            let name = format!("ignored port {port} to {}", d.plain);
            cases.push(out(&name, APP_UID, APP_GID, d.plain, port, Some(Reason::IgnoredPort)));
        }
        cases.push(out(&format!("port {not_ignored} to {}", d.plain), APP_UID, APP_GID, d.plain, not_ignored, None));
    }
    (sandbox, config, cases)
}

/// Cases for a long list of ignored networks, per family: hosts in the first and the last
/// network, and one in the gap between two of them; plus a metadata IP, which goes into the
/// same set.
pub fn ignored_network_cases([first, last, gap]: [IpAddr; 3], [first6, last6, gap6]: [IpAddr; 3]) -> Vec<Case> {
    vec![
        out("first ignored network", APP_UID, APP_GID, first, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("last ignored network", APP_UID, APP_GID, last, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("between two ignored networks", APP_UID, APP_GID, gap, REMOTE_PORT, None),
        out("metadata, in the set", APP_UID, APP_GID, IpAddr::V4(METADATA[1]), REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("first ignored IPv6 network", APP_UID, APP_GID, first6, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("last ignored IPv6 network", APP_UID, APP_GID, last6, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("between two ignored IPv6 networks", APP_UID, APP_GID, gap6, REMOTE_PORT, None),
    ]
}

/// Runs every case with the test client at `client`: the model must give the expected
/// answer (so the case tests what it says), and the connection must end where the model
/// says.
pub fn check(client: &str, sandbox: &Sandbox, config: &ProxyConfig, cases: &[Case]) {
    let local = Topology::task_local_addrs();
    let mut failures = Vec::new();
    for case in cases {
        let connection = if case.from_task {
            let source = if case.destination.is_ipv4() { IpAddr::V4(TASK_V4) } else { IpAddr::V6(TASK_V6) };
            let protocol = if case.udp.is_some() { Protocol::Udp } else { Protocol::Tcp };
            dns(case.uid, case.gid, source, case.destination, protocol)
        } else {
            let source = if case.destination.is_ipv4() { IpAddr::V4(REMOTE_V4) } else { IpAddr::V6(REMOTE_V6) };
            ingress(source, case.destination)
        };
        let decision = decide(config, &local, &connection);
        let expected = match case.expect {
            Some(reason) => Decision::Untouched { reason },
            None => match decision {
                Decision::Redirect { .. } => decision,
                Decision::Untouched { .. } => Decision::Untouched { reason: Reason::NotTcp },
            },
        };
        assert_eq!(decision, expected, "{}: the model's answer is not what the case is about", case.name);
        let client = Client::new(client);
        let client = if case.from_task {
            client.netns(sandbox.task()).identity(case.uid, case.gid)
        } else {
            client.netns(sandbox.remote())
        };
        let client = match case.udp {
            Some(udp) => client.udp(udp),
            None => client,
        };
        match client.connect(case.destination) {
            Ok(reply) => {
                if let Err(e) = agrees(&decision, &connection, &reply) {
                    failures.push(format!("{} ({} → {}): {e}", case.name, connection.source.ip(), case.destination));
                }
            }
            Err(e) => failures.push(format!("{} ({}): connection failed: {e}", case.name, case.destination)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} connections went wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// DNS's port, and the proxy's DNS listener's.
pub const DNS: u16 = 53;
pub const DNS_PROXY_PORT: u16 = 15053;
/// A second ignored uid and gid (IgnoredUID and IgnoredGID as lists).
pub const IGNORED_UID_2: u32 = 1400;
pub const IGNORED_GID_2: u32 = 1500;

/// [`config`] with DNS capture and two ignored uids and gids.
pub fn dns_config() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![IGNORED_UID, IGNORED_UID_2],
        ignored_gids: vec![IGNORED_GID, IGNORED_GID_2],
        proxy_dns_port: Some(DNS_PROXY_PORT),
        ..config()
    }
}

/// [`sandbox`] with the proxy's DNS listener in the task and DNS servers on every remote
/// address.
pub fn dns_sandbox() -> Sandbox {
    let remote_addresses =
        vec![V4.plain, V4.ignored_ip, V4.in_ignored_cidr, V6.plain, V6.ignored_ip, V6.in_ignored_cidr];
    Sandbox::new(&SandboxSpec {
        egress_proxy_ports: vec![EGRESS_PORT],
        ingress_proxy_ports: vec![INGRESS_PORT],
        app_ports: vec![APP_PORT, APP_RANGE_PORT, OTHER_APP_PORT],
        remote_ports: vec![REMOTE_PORT, IGNORED_PORT, SSH],
        remote_addresses,
        dns_proxy_port: Some(DNS_PROXY_PORT),
        remote_dns: true,
    })
}

/// DNS under [`dns_config`], for one family: over UDP (both socket kinds) and TCP, every
/// exemption, and TCP to other ports as before (with the second ignored identities).
pub fn dns_cases(d: &Destinations, family: &str) -> Vec<Case> {
    let app = (APP_UID, APP_GID);
    let (unconnected, connected) = (Some(Udp::Unconnected), Some(Udp::Connected));
    let mut cases = vec![
        dns_out("DNS over UDP (sendto)", app.0, app.1, d.plain, unconnected, None),
        dns_out("DNS over UDP (connected)", app.0, app.1, d.plain, connected, None),
        dns_out("DNS over TCP", app.0, app.1, d.plain, None, None),
        dns_out("DNS to the gateway", app.0, app.1, d.gateway, unconnected, None),
        dns_out("DNS as IgnoredUID", IGNORED_UID, app.1, d.plain, unconnected, Some(Reason::IgnoredUid)),
        dns_out("DNS as the second IgnoredUID", IGNORED_UID_2, app.1, d.plain, connected, Some(Reason::IgnoredUid)),
        dns_out("DNS over TCP as IgnoredGID", app.0, IGNORED_GID_2, d.plain, None, Some(Reason::IgnoredGid)),
        dns_out("DNS to an ignored server", app.0, app.1, d.ignored_ip, unconnected, Some(Reason::IgnoredIp)),
        dns_out("DNS over TCP to an ignored server", app.0, app.1, d.in_ignored_cidr, None, Some(Reason::IgnoredIp)),
        out("TCP egress still redirected", app.0, app.1, d.plain, REMOTE_PORT, None),
        out("TCP as the second IgnoredUID", IGNORED_UID_2, app.1, d.plain, REMOTE_PORT, Some(Reason::IgnoredUid)),
        out("TCP as the second IgnoredGID", app.0, IGNORED_GID_2, d.plain, REMOTE_PORT, Some(Reason::IgnoredGid)),
    ];
    for case in &mut cases {
        case.name = format!("{family}: {}", case.name);
    }
    cases
}

/// [`dns_config`] with port 53 in EgressIgnoredPorts: DNS capture is off, and DNS goes to its
/// servers, over UDP and TCP.
pub fn dns_off_cases() -> (ProxyConfig, Vec<Case>) {
    let mut config = dns_config();
    config.egress_ignored_ports.insert(PortRange::single(DNS));
    let cases = [&V4, &V6]
        .into_iter()
        .flat_map(|d| {
            [
                dns_out(
                    "DNS over UDP, port 53 ignored",
                    APP_UID,
                    APP_GID,
                    d.plain,
                    Some(Udp::Unconnected),
                    Some(Reason::NotTcp),
                ),
                dns_out("DNS over TCP, port 53 ignored", APP_UID, APP_GID, d.plain, None, Some(Reason::IgnoredPort)),
            ]
        })
        .collect();
    (config, cases)
}

/// An ignored address inside the included networks of [`include_config`].
pub const INCLUDED_BUT_IGNORED_V4: Ipv4Addr = Ipv4Addr::new(10, 5, 7, 7);
pub const INCLUDED_BUT_IGNORED_V6: Ipv6Addr = Ipv6Addr::new(0xfd05, 0, 0, 0, 0, 0, 7, 7);

/// [`config`] redirecting only 10.5.0.0/16 and fd05::/16 (where [`V4`] and [`V6`]'s plain
/// destinations are), with an ignored address inside them.
pub fn include_config() -> ProxyConfig {
    let mut config = config();
    config.egress_included_ips = Some(vec!["10.5.0.0/16".parse().unwrap(), "fd05::/16".parse().unwrap()]);
    config
        .egress_ignored_ips
        .extend([IpNet::from(IpAddr::V4(INCLUDED_BUT_IGNORED_V4)), IpNet::from(IpAddr::V6(INCLUDED_BUT_IGNORED_V6))]);
    config.egress_ignored_ips.sort();
    config
}

/// The sandbox for [`include_cases`].
pub fn include_sandbox() -> Sandbox {
    sandbox(vec![IpAddr::V4(INCLUDED_BUT_IGNORED_V4), IpAddr::V6(INCLUDED_BUT_IGNORED_V6)], Vec::new())
}

/// Include-only outbound, both families: inside the included networks as before, outside
/// them untouched, an ignored address inside them still ignored.
pub fn include_cases() -> Vec<Case> {
    let app = (APP_UID, APP_GID);
    let mut cases = Vec::new();
    for (d, ignored, family) in
        [(&V4, IpAddr::V4(INCLUDED_BUT_IGNORED_V4), "IPv4"), (&V6, IpAddr::V6(INCLUDED_BUT_IGNORED_V6), "IPv6")]
    {
        cases.extend([
            out(&format!("{family}: included"), app.0, app.1, d.plain, REMOTE_PORT, None),
            out(
                &format!("{family}: outside (the gateway)"),
                app.0,
                app.1,
                d.gateway,
                REMOTE_PORT,
                Some(Reason::NotIncluded),
            ),
            out(&format!("{family}: ignored inside"), app.0, app.1, ignored, REMOTE_PORT, Some(Reason::IgnoredIp)),
            out(
                &format!("{family}: ignored outside"),
                app.0,
                app.1,
                d.in_ignored_cidr,
                REMOTE_PORT,
                Some(Reason::IgnoredIp),
            ),
            out(
                &format!("{family}: IgnoredUID inside"),
                IGNORED_UID,
                app.1,
                d.plain,
                REMOTE_PORT,
                Some(Reason::IgnoredUid),
            ),
            out(
                &format!("{family}: ignored port inside"),
                app.0,
                app.1,
                d.plain,
                IGNORED_PORT,
                Some(Reason::IgnoredPort),
            ),
        ]);
    }
    cases
}
