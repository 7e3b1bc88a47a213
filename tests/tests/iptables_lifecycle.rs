//! The iptables backend's life cycle against the kernel: apply twice, replace (with traffic
//! flowing all along), remove twice, rollback, IPv6-less namespaces, mode detection, and
//! other tools' rules and sets surviving all of it.
//!
//! Needs root; see `intercept_tests::topology`. Every dialled address lives in the test's
//! own namespaces.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use intercept::backend::rules::Rules as _;
use intercept::{
    backend::iptables::{Error, Iptables, Mode},
    config::ProxyConfig,
    netns::Target,
    plan::IptablesPlan,
};
use intercept_tests::{
    lifecycle::{self, REMOTE, REMOTE_PORT, feed, foreign_xtables, sandbox},
    seed_guide_config as seed,
    topology::{Netns, TASK_V4, require_netns_privileges},
    traffic::{Client, Role, Sandbox},
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

/// The seed with enough ignored networks (v4 and v6) to need ipsets, none containing REMOTE.
fn with_ipsets(config: ProxyConfig) -> ProxyConfig {
    let mut nets: Vec<ipnet::IpNet> =
        (0u32..20).map(|i| format!("{}/24", Ipv4Addr::from(0x0a80_0000 + (i << 9))).parse().unwrap()).collect();
    nets.extend((0..20).map(|i| format!("fd{:02x}::/16", 0x20 + 2 * i).parse::<ipnet::IpNet>().unwrap()));
    ProxyConfig { egress_ignored_ips: [config.egress_ignored_ips.clone(), nets].concat(), ..config }
}

fn open(netns: &Netns, mode: Option<Mode>) -> Iptables {
    Iptables::open(Target::Path(netns.path()), mode).expect("open the backend")
}

/// Another tool's chain and rules in both families' nat tables, a rule in the filter table,
/// and another tool's ipset. None of it touches the TCP traffic of the tests.
fn install_foreign_state(netns: &Netns, mode: Mode) {
    restore(netns, &format!("iptables-{}-restore", mode.name()), &foreign_xtables("10.9.9.9/32"));
    restore(netns, &format!("ip6tables-{}-restore", mode.name()), &foreign_xtables("fd09::9/128"));
    netns.exec("ipset", &["create", "other-tool", "hash:ip"]);
    netns.exec("ipset", &["add", "other-tool", "10.9.9.9"]);
}

fn restore(netns: &Netns, program: &str, input: &str) {
    feed(netns, program, &["--noflush"], input);
}

/// Everything xtables and ipset hold in the namespace, for before/after comparisons:
/// both families of `mode`, every table, every ipset. Comments, chain policy counters and
/// (unless `counters`) rule counters are left out.
fn dump(netns: &Netns, mode: Mode, counters: bool) -> String {
    let args: &[&str] = if counters { &["-c"] } else { &[] };
    let mut out = String::new();
    for program in [format!("iptables-{}-save", mode.name()), format!("ip6tables-{}-save", mode.name())] {
        let text = netns.exec(&program, args);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // Chain policy counters are printed even without -c, and move with any traffic,
            // the kernel's own included (an IPv6 MLD report or router solicitation may leave
            // the task between two dumps); intercept never touches them.
            let line = match (line.starts_with(':'), line.rfind(" [")) {
                (true, Some(at)) => &line[..at],
                _ => line,
            };
            out.push_str(line);
            out.push('\n');
        }
    }
    // Sorted: the kernel lists a hash set's members in hash order. Each set's `initval`
    // (its hash seed) is kept: a set that was re-created would show a new one.
    let mut sets: Vec<String> = netns.exec("ipset", &["save"]).lines().map(str::to_owned).collect();
    sets.sort();
    out.push_str(&sets.join("\n"));
    out
}

fn egress_reply(sandbox: &Sandbox) -> intercept_tests::traffic::Reply {
    lifecycle::egress_reply(CLIENT, sandbox)
}

fn apply_twice_changes_nothing(test: &str, mode: Mode) {
    require_netns_privileges(test);
    let sandbox = sandbox();
    install_foreign_state(sandbox.task(), mode);
    let backend = open(sandbox.task(), Some(mode));
    let plan = IptablesPlan::new(&with_ipsets(seed()));
    assert!(backend.apply(&plan, false).unwrap().changed);
    // Traffic moves the counters; a second apply that touched anything would reset them.
    assert_eq!(egress_reply(&sandbox).role, Role::EgressProxy);
    let before = dump(sandbox.task(), mode, true);
    assert!(before.contains("[1:60] -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL"), "{before}");

    let again = backend.apply(&plan, false).unwrap();
    assert!(!again.changed && again.detail.changes.is_empty(), "{again:?}");
    assert_eq!(dump(sandbox.task(), mode, true), before);
    let status = backend.status(Some(&plan)).unwrap();
    assert_eq!((status.installed, status.matches, status.exit_code()), (true, Some(true), 0), "{:?}", status.reasons);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_twice_changes_nothing_nft() {
    apply_twice_changes_nothing("apply_twice_changes_nothing_nft", Mode::Nft);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_twice_changes_nothing_legacy() {
    apply_twice_changes_nothing("apply_twice_changes_nothing_legacy", Mode::Legacy);
}

fn remove_twice_leaves_only_what_others_installed(test: &str, mode: Mode) {
    require_netns_privileges(test);
    let sandbox = sandbox();
    install_foreign_state(sandbox.task(), mode);
    let pristine = dump(sandbox.task(), mode, false);
    let backend = open(sandbox.task(), None);
    assert_eq!(backend.mode(), mode, "detected from the foreign rules: {:?}", backend.detection());

    backend.apply(&IptablesPlan::new(&with_ipsets(seed())), false).unwrap();
    backend.apply(&IptablesPlan::new(&ProxyConfig { proxy_egress_port: 15002, ..seed() }), false).unwrap();
    assert_eq!(egress_reply(&sandbox).local.port(), 15002, "replaced");
    backend.apply(&IptablesPlan::new(&with_ipsets(seed())), false).unwrap();
    assert_ne!(dump(sandbox.task(), mode, false), pristine);

    let removed = backend.remove(false).unwrap();
    assert!(removed.changed);
    assert_eq!(dump(sandbox.task(), mode, false), pristine, "exactly the foreign state is left");
    let reply = egress_reply(&sandbox);
    assert_eq!((reply.role, reply.local), (Role::Remote, SocketAddr::new(REMOTE, REMOTE_PORT)), "no interception");

    let twice = backend.remove(false).unwrap();
    assert!(!twice.changed && twice.detail.changes.is_empty(), "{twice:?}");
    assert_eq!(dump(sandbox.task(), mode, false), pristine);
    let status = backend.status(None).unwrap();
    assert_eq!((status.installed, status.exit_code()), (false, 1));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn remove_twice_leaves_only_what_others_installed_nft() {
    remove_twice_leaves_only_what_others_installed("remove_twice_leaves_only_what_others_installed_nft", Mode::Nft);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn remove_twice_leaves_only_what_others_installed_legacy() {
    remove_twice_leaves_only_what_others_installed(
        "remove_twice_leaves_only_what_others_installed_legacy",
        Mode::Legacy,
    );
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn remove_where_nothing_was_installed_succeeds_and_creates_nothing() {
    require_netns_privileges("remove_where_nothing_was_installed_succeeds_and_creates_nothing");
    let netns = Netns::create("pristine");
    let backend = open(&netns, None);
    let report = backend.remove(false).unwrap();
    assert!(!report.changed);
    for program in ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"] {
        assert_eq!(netns.exec(program, &[]), "", "{program}: no table was created");
    }
}

/// When the IPv6 transaction fails, the IPv4 rules and the ipsets installed just before are
/// taken back, and the error names the line ip6tables-restore refused.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_failing_ipv6_half_is_rolled_back() {
    require_netns_privileges("a_failing_ipv6_half_is_rolled_back");
    let sandbox = sandbox();
    let backend = open(sandbox.task(), Some(Mode::Nft));
    backend.apply(&IptablesPlan::new(&seed()), false).unwrap();
    // Another tool jumps to intercept's IPv6 ingress chain, so it cannot be deleted.
    restore(
        sandbox.task(),
        "ip6tables-nft-restore",
        "*nat\n:OTHER_TOOL - [0:0]\n-A OTHER_TOOL -j INTERCEPT_INGRESS\nCOMMIT\n",
    );
    let before = dump(sandbox.task(), Mode::Nft, false);

    // Without ingress and with ipsets: IPv4 drops its ingress chain fine, IPv6 cannot.
    let config = with_ipsets(ProxyConfig { ingress: None, proxy_egress_port: 15002, ..seed() });
    let err = backend.apply(&IptablesPlan::new(&config), false).unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("`ip6tables-nft-restore --noflush --wait=10 < (transaction)` failed"), "{message}");
    assert!(message.contains("of its input: -X INTERCEPT_INGRESS"), "{message}");
    assert_eq!(dump(sandbox.task(), Mode::Nft, false), before, "exactly as before");
    assert_eq!(egress_reply(&sandbox).local.port(), 15001, "the old rules are still live");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_namespace_without_ipv6_gets_the_ipv4_half_and_a_warning() {
    require_netns_privileges("a_namespace_without_ipv6_gets_the_ipv4_half_and_a_warning");
    let sandbox = sandbox();
    sandbox.task().sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    let backend = open(sandbox.task(), Some(Mode::Nft));
    let plan = IptablesPlan::new(&with_ipsets(seed()));
    let report = backend.apply(&plan, false).unwrap();
    assert!(report.changed);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].starts_with("IPv6 rules skipped: IPv6 is disabled"), "{:?}", report.warnings);
    assert!(report.detail.changes.v6.is_none());
    let v6 = sandbox.task().exec("ip6tables-nft-save", &[]);
    assert!(!v6.contains("INTERCEPT"), "{v6}");
    let sets = sandbox.task().exec("ipset", &["list", "-n"]);
    assert_eq!(sets.trim(), "intercept-egress-v4", "no IPv6 set either");
    assert_eq!(egress_reply(&sandbox).role, Role::EgressProxy, "IPv4 is intercepted");
    // Same configuration, same namespace: nothing to do, and the status matches.
    assert!(!backend.apply(&plan, false).unwrap().changed);
    assert_eq!(backend.status(Some(&plan)).unwrap().exit_code(), 0);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_mode_follows_the_rules_already_in_the_namespace() {
    require_netns_privileges("the_mode_follows_the_rules_already_in_the_namespace");
    let sandbox = sandbox();
    restore(sandbox.task(), "iptables-legacy-restore", "*filter\n-A INPUT -s 10.9.9.9/32 -j DROP\nCOMMIT\n");
    let backend = open(sandbox.task(), None);
    assert_eq!(backend.mode(), Mode::Legacy, "{:?}", backend.detection());
    backend.apply(&IptablesPlan::new(&seed()), false).unwrap();
    assert!(sandbox.task().exec("iptables-legacy-save", &["-t", "nat"]).contains("INTERCEPT_EGRESS"));
    assert!(!sandbox.task().exec("iptables-nft-save", &[]).contains("INTERCEPT"));
    assert_eq!(egress_reply(&sandbox).role, Role::EgressProxy);

    // The chains decide from now on, even if nft gets more rules than legacy.
    restore(
        sandbox.task(),
        "iptables-nft-restore",
        &format!("*filter\n{}COMMIT\n", "-A INPUT -s 10.9.9.9/32 -j DROP\n".repeat(20)),
    );
    let again = open(sandbox.task(), None);
    assert_eq!(again.mode(), Mode::Legacy, "{:?}", again.detection());
    assert!(again.remove(false).unwrap().changed);
    assert!(!sandbox.task().exec("iptables-legacy-save", &["-t", "nat"]).contains("INTERCEPT"));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ingress_from_the_task_itself_is_not_redirected() {
    require_netns_privileges("ingress_from_the_task_itself_is_not_redirected");
    let sandbox = sandbox();
    open(sandbox.task(), None).apply(&IptablesPlan::new(&seed()), false).unwrap();
    let client = Client::new(CLIENT).netns(sandbox.task()).identity(1000, 1000);
    for addr in [SocketAddr::new(IpAddr::V4(TASK_V4), 9080), "127.0.0.1:9080".parse().unwrap()] {
        let reply = client.connect(addr).unwrap();
        assert_eq!((reply.role, reply.local), (Role::App, addr));
    }
    let from_remote = Client::new(CLIENT).netns(sandbox.remote()).connect(SocketAddr::new(IpAddr::V4(TASK_V4), 9080));
    assert_eq!(from_remote.unwrap().role, Role::IngressProxy);
}
