//! The iptables backend with real traffic: for IPv4 and IPv6, in legacy and nft mode, every
//! connection a test makes ends where the decision model says it should: at the proxy with
//! its original destination intact, or at the real destination untouched.
//!
//! Needs root; see `intercept_tests::topology`. Every dialled address lives in the test's
//! own namespaces.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use intercept::{
    backend::iptables::{Iptables, Mode},
    config::{Ingress, PortRange, PortSet, ProxyConfig},
    model::{Decision, Reason, decide},
    netns::Target,
    plan::IptablesPlan,
};
use intercept_tests::{
    topology::{METADATA, REMOTE_V4, REMOTE_V6, TASK_V4, TASK_V6, Topology, require_netns_privileges},
    traffic::{Client, Sandbox, SandboxSpec, agrees, egress, ingress},
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

const EGRESS_PORT: u16 = 15001;
const INGRESS_PORT: u16 = 15000;
const IGNORED_UID: u32 = 1337;
const IGNORED_GID: u32 = 1338;
/// An identity with no exemption.
const APP_UID: u32 = 1000;
const APP_GID: u32 = 1000;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Remote destinations: one plain, one ignored IP, one in an ignored CIDR, per family.
struct Destinations {
    plain: IpAddr,
    ignored_ip: IpAddr,
    in_ignored_cidr: IpAddr,
    gateway: IpAddr,
    task: IpAddr,
    loopback: IpAddr,
}

const V4: Destinations = Destinations {
    plain: IpAddr::V4(Ipv4Addr::new(10, 5, 0, 1)),
    ignored_ip: IpAddr::V4(Ipv4Addr::new(10, 3, 0, 5)),
    in_ignored_cidr: IpAddr::V4(Ipv4Addr::new(10, 4, 1, 1)),
    gateway: IpAddr::V4(REMOTE_V4),
    task: IpAddr::V4(TASK_V4),
    loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
};

const V6: Destinations = Destinations {
    plain: IpAddr::V6(Ipv6Addr::new(0xfd05, 0, 0, 0, 0, 0, 0, 1)),
    ignored_ip: IpAddr::V6(Ipv6Addr::new(0xfd03, 0, 0, 0, 0, 0, 0, 5)),
    in_ignored_cidr: IpAddr::V6(Ipv6Addr::new(0xfd04, 0, 1, 0, 0, 0, 0, 1)),
    gateway: IpAddr::V6(REMOTE_V6),
    task: IpAddr::V6(TASK_V6),
    loopback: IpAddr::V6(Ipv6Addr::LOCALHOST),
};

const REMOTE_PORT: u16 = 80;
const IGNORED_PORT: u16 = 5432;
const SSH: u16 = 22;
const APP_PORT: u16 = 9080;
/// In the AppPorts range 8000-8010.
const APP_RANGE_PORT: u16 = 8005;
/// Not an AppPort: ingress reaches the app directly.
const OTHER_APP_PORT: u16 = 9090;

fn config() -> ProxyConfig {
    ProxyConfig {
        ignored_uid: Some(IGNORED_UID),
        ignored_gid: Some(IGNORED_GID),
        proxy_egress_port: EGRESS_PORT,
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
        implicit_exemptions: true,
        ipv6: true,
    }
}

fn sandbox(extra_remote: Vec<IpAddr>, extra_remote_ports: Vec<u16>) -> Sandbox {
    let mut remote_addresses =
        vec![V4.plain, V4.ignored_ip, V4.in_ignored_cidr, V6.plain, V6.ignored_ip, V6.in_ignored_cidr];
    remote_addresses.extend(extra_remote);
    Sandbox::new(&SandboxSpec {
        egress_proxy_ports: vec![EGRESS_PORT],
        ingress_proxy_ports: vec![INGRESS_PORT],
        app_ports: vec![APP_PORT, APP_RANGE_PORT, OTHER_APP_PORT],
        remote_ports: [vec![REMOTE_PORT, IGNORED_PORT, SSH], extra_remote_ports].concat(),
        remote_addresses,
    })
}

fn apply(sandbox: &Sandbox, mode: Mode, config: &ProxyConfig) -> Iptables {
    let backend = Iptables::open(Target::Path(sandbox.task().path()), Some(mode)).expect("open the backend");
    let report = backend.apply(&IptablesPlan::new(config), false).expect("apply");
    assert!(report.changed, "the first apply installs: {report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    backend
}

/// One connection and what it is for: `None` means the model must redirect it.
#[derive(Clone)]
struct Case {
    name: String,
    from_task: bool,
    uid: u32,
    gid: u32,
    destination: SocketAddr,
    expect: Option<Reason>,
}

fn out(name: &str, uid: u32, gid: u32, ip: IpAddr, port: u16, expect: Option<Reason>) -> Case {
    Case { name: name.to_owned(), from_task: true, uid, gid, destination: SocketAddr::new(ip, port), expect }
}

fn into_task(name: &str, ip: IpAddr, port: u16, expect: Option<Reason>) -> Case {
    Case { name: name.to_owned(), from_task: false, uid: 0, gid: 0, destination: SocketAddr::new(ip, port), expect }
}

/// Every egress exemption and redirect, and ingress to AppPorts and other ports, for one family.
fn cases(d: &Destinations, family: &str) -> Vec<Case> {
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

/// Runs every case: the model must give the expected answer (so the case tests what it
/// says), and the connection must end where the model says.
fn check(sandbox: &Sandbox, config: &ProxyConfig, cases: &[Case]) {
    let local = Topology::task_local_addrs();
    let mut failures = Vec::new();
    for case in cases {
        let connection = if case.from_task {
            let source = if case.destination.is_ipv4() { IpAddr::V4(TASK_V4) } else { IpAddr::V6(TASK_V6) };
            egress(case.uid, case.gid, source, case.destination)
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
        let client = Client::new(CLIENT);
        let client = if case.from_task {
            client.netns(sandbox.task()).identity(case.uid, case.gid)
        } else {
            client.netns(sandbox.remote())
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

fn paths_are_gone(paths: [PathBuf; 2]) {
    for path in paths {
        assert!(!path.exists(), "{} still exists", path.display());
    }
}

fn every_decision_matches_the_model(test: &str, mode: Mode) {
    if !require_netns_privileges(test) {
        return;
    }
    let sandbox = sandbox(Vec::new(), Vec::new());
    let config = config();
    let _backend = apply(&sandbox, mode, &config);
    let all: Vec<Case> = [cases(&V4, "IPv4"), cases(&V6, "IPv6")].concat();
    check(&sandbox, &config, &all);
    let paths = sandbox.netns_paths();
    drop(sandbox);
    paths_are_gone(paths);
}

#[test]
fn every_decision_matches_the_model_nft() {
    every_decision_matches_the_model("every_decision_matches_the_model_nft", Mode::Nft);
}

#[test]
fn every_decision_matches_the_model_legacy() {
    every_decision_matches_the_model("every_decision_matches_the_model_legacy", Mode::Legacy);
}

/// ECS refuses more than 15 EgressIgnoredPorts and the reference plugin drops the ones after
/// the 15th; intercept splits them over several multiport rules and honours all 20.
fn twenty_ignored_ports_are_all_honoured(test: &str, mode: Mode) {
    if !require_netns_privileges(test) {
        return;
    }
    // Every other port, so none merge into a range: 20 single entries (21 with port 22).
    let ports: Vec<u16> = (0..20).map(|i| 6000 + 2 * i).collect();
    let not_ignored = 6001;
    let sandbox = sandbox(Vec::new(), [ports.clone(), vec![not_ignored]].concat());
    let config = ProxyConfig {
        egress_ignored_ports: PortSet::from_ranges(ports.iter().map(|&p| PortRange::single(p))),
        ..config()
    };
    let plan = IptablesPlan::new(&config);
    assert!(plan.v4.chains[0].rules.iter().filter(|r| r.matches.contains(&"multiport".to_owned())).count() >= 2);
    let _backend = apply(&sandbox, mode, &config);
    let mut cases = Vec::new();
    for d in [&V4, &V6] {
        for &port in &ports {
            cases.push(out(
                &format!("ignored port {port} to {}", d.plain),
                APP_UID,
                APP_GID,
                d.plain,
                port,
                Some(Reason::IgnoredPort),
            ));
        }
        cases.push(out(&format!("port {not_ignored} to {}", d.plain), APP_UID, APP_GID, d.plain, not_ignored, None));
    }
    check(&sandbox, &config, &cases);
}

#[test]
fn twenty_ignored_ports_are_all_honoured_nft() {
    twenty_ignored_ports_are_all_honoured("twenty_ignored_ports_are_all_honoured_nft", Mode::Nft);
}

#[test]
fn twenty_ignored_ports_are_all_honoured_legacy() {
    twenty_ignored_ports_are_all_honoured("twenty_ignored_ports_are_all_honoured_legacy", Mode::Legacy);
}

/// 10,000 ignored networks per family go into ipsets matched by one rule each; the
/// reference plugin fails with "argument list too long" and leaves half a chain behind.
fn ten_thousand_ignored_cidrs_install_and_work(test: &str, mode: Mode) {
    if !require_netns_privileges(test) {
        return;
    }
    // 10.128.0.0/24, 10.128.2.0/24, … and fd10:0::/48, fd10:2::/48, …: 10,000 of each,
    // with gaps so that none aggregate.
    let v4_nets: Vec<String> =
        (0u32..10_000).map(|i| format!("{}/24", Ipv4Addr::from(0x0a80_0000 + (i << 9)))).collect();
    let v6_nets: Vec<String> = (0u32..10_000)
        .map(|i| format!("{}/48", Ipv6Addr::from((0xfd10_u128 << 112) + (u128::from(i) << 81))))
        .collect();
    let first = v4(10, 128, 0, 1);
    let last: IpAddr = format!("{}", Ipv4Addr::from(0x0a80_0000 + (9_999 << 9) + 1)).parse().unwrap();
    let gap = v4(10, 128, 1, 1);
    let first6: IpAddr = "fd10::1".parse().unwrap();
    let last6: IpAddr = format!("{}", Ipv6Addr::from((0xfd10_u128 << 112) + (9_999 << 81) + 1)).parse().unwrap();
    let gap6: IpAddr = format!("{}", Ipv6Addr::from((0xfd10_u128 << 112) + (1 << 80) + 1)).parse().unwrap();
    let sandbox = sandbox(vec![first, last, gap, first6, last6, gap6], Vec::new());
    let mut ignored: Vec<ipnet::IpNet> = v4_nets.iter().chain(&v6_nets).map(|n| n.parse().unwrap()).collect();
    ignored.sort();
    let config = ProxyConfig { egress_ignored_ips: ignored, ..config() };
    let plan = IptablesPlan::new(&config);
    assert_eq!(plan.ipsets.iter().map(|s| s.entries.len()).collect::<Vec<_>>(), [10_002, 10_000]);
    let backend = apply(&sandbox, mode, &config);
    let sets = sandbox.task().exec("ipset", &["list", "-t"]);
    assert!(sets.contains("Number of entries: 10002") && sets.contains("Number of entries: 10000"), "{sets}");

    let cases = vec![
        out("first ignored network", APP_UID, APP_GID, first, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("last ignored network", APP_UID, APP_GID, last, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("between two ignored networks", APP_UID, APP_GID, gap, REMOTE_PORT, None),
        out("metadata, in the set", APP_UID, APP_GID, IpAddr::V4(METADATA[1]), REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("first ignored IPv6 network", APP_UID, APP_GID, first6, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("last ignored IPv6 network", APP_UID, APP_GID, last6, REMOTE_PORT, Some(Reason::IgnoredIp)),
        out("between two ignored IPv6 networks", APP_UID, APP_GID, gap6, REMOTE_PORT, None),
    ];
    check(&sandbox, &config, &cases);

    // Removing takes the sets too.
    backend.remove(false).expect("remove");
    assert_eq!(sandbox.task().exec("ipset", &["list", "-n"]), "");
}

#[test]
fn ten_thousand_ignored_cidrs_install_and_work_nft() {
    ten_thousand_ignored_cidrs_install_and_work("ten_thousand_ignored_cidrs_install_and_work_nft", Mode::Nft);
}

#[test]
fn ten_thousand_ignored_cidrs_install_and_work_legacy() {
    ten_thousand_ignored_cidrs_install_and_work("ten_thousand_ignored_cidrs_install_and_work_legacy", Mode::Legacy);
}
