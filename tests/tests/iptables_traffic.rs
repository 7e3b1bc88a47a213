//! The iptables backend with real traffic: for IPv4 and IPv6, in legacy and nft mode, every
//! connection a test makes ends where the decision model says it should: at the proxy with
//! its original destination intact, or at the real destination untouched.
//!
//! Needs root; see `intercept_tests::topology`. Every dialled address lives in the test's
//! own namespaces.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use intercept::backend::rules::Rules as _;
use intercept::{
    backend::iptables::{Iptables, Mode},
    config::ProxyConfig,
    netns::Target,
    plan::IptablesPlan,
};
use intercept_tests::{
    cases::{
        V4, V6, both_families, check, config, dns_cases, dns_config, dns_off_cases, dns_sandbox, ignored_network_cases,
        include_cases, include_config, include_sandbox, sandbox, twenty_ignored_ports,
    },
    topology::require_netns_privileges,
    traffic::Sandbox,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn apply(sandbox: &Sandbox, mode: Mode, config: &ProxyConfig) -> Iptables {
    let backend = Iptables::open(Target::Path(sandbox.task().path()), Some(mode)).expect("open the backend");
    let report = backend.apply(&IptablesPlan::new(config), false).expect("apply");
    assert!(report.changed, "the first apply installs: {report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    backend
}

fn paths_are_gone(paths: [PathBuf; 2]) {
    for path in paths {
        assert!(!path.exists(), "{} still exists", path.display());
    }
}

fn every_decision_matches_the_model(test: &str, mode: Mode) {
    require_netns_privileges(test);
    let sandbox = sandbox(Vec::new(), Vec::new());
    let config = config();
    let _backend = apply(&sandbox, mode, &config);
    check(CLIENT, &sandbox, &config, &both_families());
    let paths = sandbox.netns_paths();
    drop(sandbox);
    paths_are_gone(paths);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn every_decision_matches_the_model_nft() {
    every_decision_matches_the_model("every_decision_matches_the_model_nft", Mode::Nft);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn every_decision_matches_the_model_legacy() {
    every_decision_matches_the_model("every_decision_matches_the_model_legacy", Mode::Legacy);
}

/// ECS refuses more than 15 EgressIgnoredPorts and the reference plugin drops the ones after
/// the 15th; intercept splits them over several multiport rules and honours all 20.
fn twenty_ignored_ports_are_all_honoured(test: &str, mode: Mode) {
    require_netns_privileges(test);
    let (sandbox, config, cases) = twenty_ignored_ports();
    let plan = IptablesPlan::new(&config);
    assert!(plan.v4.chains[0].rules.iter().filter(|r| r.matches.contains(&"multiport".to_owned())).count() >= 2);
    let _backend = apply(&sandbox, mode, &config);
    check(CLIENT, &sandbox, &config, &cases);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn twenty_ignored_ports_are_all_honoured_nft() {
    twenty_ignored_ports_are_all_honoured("twenty_ignored_ports_are_all_honoured_nft", Mode::Nft);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn twenty_ignored_ports_are_all_honoured_legacy() {
    twenty_ignored_ports_are_all_honoured("twenty_ignored_ports_are_all_honoured_legacy", Mode::Legacy);
}

/// 10,000 ignored networks per family go into ipsets matched by one rule each; the
/// reference plugin fails with "argument list too long" and leaves half a chain behind.
fn ten_thousand_ignored_cidrs_install_and_work(test: &str, mode: Mode) {
    require_netns_privileges(test);
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

    let cases = ignored_network_cases([first, last, gap], [first6, last6, gap6]);
    check(CLIENT, &sandbox, &config, &cases);

    // Removing takes the sets too.
    backend.remove(false).expect("remove");
    assert_eq!(sandbox.task().exec("ipset", &["list", "-n"]), "");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ten_thousand_ignored_cidrs_install_and_work_nft() {
    ten_thousand_ignored_cidrs_install_and_work("ten_thousand_ignored_cidrs_install_and_work_nft", Mode::Nft);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ten_thousand_ignored_cidrs_install_and_work_legacy() {
    ten_thousand_ignored_cidrs_install_and_work("ten_thousand_ignored_cidrs_install_and_work_legacy", Mode::Legacy);
}

/// DNS capture (UDP from both kinds of socket, and TCP), two ignored uids and gids, port 53
/// ignored (capture off), and include-only outbound, in both xtables variants.
fn dns_several_identities_and_include_only(test: &str, mode: Mode) {
    require_netns_privileges(test);
    let sandbox = dns_sandbox();
    let config = dns_config();
    let backend = apply(&sandbox, mode, &config);
    check(CLIENT, &sandbox, &config, &[dns_cases(&V4, "IPv4"), dns_cases(&V6, "IPv6")].concat());
    let (off, cases) = dns_off_cases();
    backend.apply(&IptablesPlan::new(&off), false).expect("apply with port 53 ignored");
    check(CLIENT, &sandbox, &off, &cases);
    drop(sandbox);

    let sandbox = include_sandbox();
    let config = include_config();
    let _backend = apply(&sandbox, mode, &config);
    check(CLIENT, &sandbox, &config, &include_cases());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn dns_several_identities_and_include_only_nft() {
    dns_several_identities_and_include_only("dns_several_identities_and_include_only_nft", Mode::Nft);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn dns_several_identities_and_include_only_legacy() {
    dns_several_identities_and_include_only("dns_several_identities_and_include_only_legacy", Mode::Legacy);
}
