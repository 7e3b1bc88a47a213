//! The nftables backend's life cycle against the kernel: apply twice, replace (with
//! traffic flowing all along), remove twice, drift, a refused transaction, a namespace
//! without IPv6, the CLI with `--backend nftables` and `--backend auto`, and other tools'
//! rules (iptables-nft's, another nft table) surviving all of it.
//!
//! Needs root and nft; see `intercept_tests::topology`. Every dialled address lives in the
//! test's own namespaces.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

use intercept::backend::rules::Rules as _;
use intercept::{
    backend::nftables::{Error, Nftables},
    config::ProxyConfig,
    netns::Target,
    plan::NftablesPlan,
};
use intercept_tests::{
    lifecycle::{self, REMOTE, REMOTE_PORT, feed, foreign_xtables, sandbox},
    run_output, seed_guide_config as seed,
    topology::{Netns, intercept_bin, require_nft},
    traffic::{Reply, Role, Sandbox},
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

/// The seed with a few thousand ignored networks per family, none containing REMOTE.
fn with_networks(config: ProxyConfig) -> ProxyConfig {
    let mut nets: Vec<ipnet::IpNet> =
        (0u32..2000).map(|i| format!("{}/24", Ipv4Addr::from(0x0a80_0000 + (i << 9))).parse().unwrap()).collect();
    nets.extend((0..2000).map(|i| format!("fd20:{:x}::/32", 2 * i).parse::<ipnet::IpNet>().unwrap()));
    ProxyConfig { egress_ignored_ips: [config.egress_ignored_ips.clone(), nets].concat(), ..config }
}

fn open(netns: &Netns) -> Nftables {
    Nftables::open(Target::Path(netns.path())).expect("open the backend")
}

/// Other tools' state, none of it touching the tests' TCP traffic: iptables-nft rules in
/// both families' nat and filter tables (with a chain of their own), and a native nft table.
fn install_foreign_state(netns: &Netns) {
    feed(netns, "iptables-nft-restore", &["--noflush"], &foreign_xtables("10.9.9.9/32"));
    feed(netns, "ip6tables-nft-restore", &["--noflush"], &foreign_xtables("fd09::9/128"));
    feed(
        netns,
        "nft",
        &["-f", "-"],
        "table inet other_tool {\n\tset blocked { type ipv4_addr; elements = { 10.9.9.8 } }\n\
         \tchain input { type filter hook input priority 0; policy accept; ip saddr @blocked counter drop; }\n}\n",
    );
}

/// The namespace's whole ruleset but intercept's table, without counters: what other tools
/// installed, for before/after comparisons.
fn others(netns: &Netns) -> String {
    let ruleset = netns.exec("nft", &["-s", "list", "ruleset"]);
    let mut out = String::new();
    let mut ours = false;
    for line in ruleset.lines() {
        if line.starts_with("table ") {
            ours = line == "table inet intercept {";
        }
        if !ours {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Both families' rules as iptables-nft reads them back, without the timestamp comments.
fn xtables_rules(netns: &Netns) -> String {
    let saved = netns.exec("iptables-nft-save", &[]) + &netns.exec("ip6tables-nft-save", &[]);
    saved.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

fn egress_reply(sandbox: &Sandbox) -> Reply {
    lifecycle::egress_reply(CLIENT, sandbox)
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_twice_changes_nothing_and_keeps_the_counters() {
    require_nft("apply_twice_changes_nothing_and_keeps_the_counters");
    let sandbox = sandbox();
    install_foreign_state(sandbox.task());
    let backend = open(sandbox.task());
    let plan = NftablesPlan::new(&with_networks(seed()));
    assert!(backend.apply(&plan, false).unwrap().changed);
    assert_eq!(egress_reply(&sandbox).role, Role::EgressProxy);
    let before = sandbox.task().exec("nft", &["list", "table", "inet", "intercept"]);
    assert!(before.contains("fib daddr type != local counter packets 1 bytes 60 jump egress"), "{before}");

    let again = backend.apply(&plan, false).unwrap();
    assert!(!again.changed && again.detail.script.is_none(), "{again:?}");
    assert_eq!(sandbox.task().exec("nft", &["list", "table", "inet", "intercept"]), before, "counters and all");
    let status = backend.status(Some(&plan)).unwrap();
    assert_eq!((status.installed, status.matches, status.exit_code()), (true, Some(true), 0), "{:?}", status.reasons);
    assert_eq!(status.listing.table.unwrap().chain("egress").unwrap().rules.last().unwrap().packets, 1);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn replace_and_remove_twice_leave_only_what_others_installed() {
    require_nft("replace_and_remove_twice_leave_only_what_others_installed");
    let sandbox = sandbox();
    install_foreign_state(sandbox.task());
    let pristine = others(sandbox.task());
    let xtables = xtables_rules(sandbox.task());
    let backend = open(sandbox.task());

    backend.apply(&NftablesPlan::new(&with_networks(seed())), false).unwrap();
    backend.apply(&NftablesPlan::new(&ProxyConfig { proxy_egress_port: 15002, ..seed() }), false).unwrap();
    assert_eq!(egress_reply(&sandbox).local.port(), 15002, "replaced");
    assert_eq!(sandbox.task().exec("nft", &["list", "tables"]).matches("intercept").count(), 1, "one table");
    backend.apply(&NftablesPlan::new(&with_networks(seed())), false).unwrap();
    assert_eq!(others(sandbox.task()), pristine, "other tools' rules are untouched while installed");

    let removed = backend.remove(false).unwrap();
    assert!(removed.changed);
    assert_eq!(others(sandbox.task()), pristine);
    assert_eq!(xtables_rules(sandbox.task()), xtables, "iptables-nft sees what it had");
    assert!(!sandbox.task().exec("nft", &["list", "tables"]).contains("intercept"));
    let reply = egress_reply(&sandbox);
    assert_eq!((reply.role, reply.local), (Role::Remote, SocketAddr::new(REMOTE, REMOTE_PORT)), "no interception");

    let twice = backend.remove(false).unwrap();
    assert!(!twice.changed && twice.detail.script.is_none(), "{twice:?}");
    assert_eq!(others(sandbox.task()), pristine);
    let status = backend.status(None).unwrap();
    assert_eq!((status.installed, status.exit_code()), (false, 1));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn remove_where_nothing_was_installed_succeeds_and_creates_nothing() {
    require_nft("remove_where_nothing_was_installed_succeeds_and_creates_nothing");
    let netns = Netns::create("pristine");
    let backend = open(&netns);
    assert!(!backend.remove(false).unwrap().changed);
    assert_eq!(netns.exec("nft", &["list", "ruleset"]), "", "no table was created");
}

/// Hand edits are drift: status names them, apply puts the plan back.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn drift_is_reported_and_repaired() {
    require_nft("drift_is_reported_and_repaired");
    let sandbox = sandbox();
    let backend = open(sandbox.task());
    let plan = NftablesPlan::new(&seed());
    backend.apply(&plan, false).unwrap();
    sandbox.task().exec("nft", &["add", "element", "inet", "intercept", "ignored_v4", "{ 10.5.0.1 }"]);
    sandbox.task().exec("nft", &["flush", "chain", "inet", "intercept", "ingress"]);
    assert_eq!(egress_reply(&sandbox).role, Role::Remote, "the hand edit is live");

    let status = backend.status(Some(&plan)).unwrap();
    assert_eq!((status.installed, status.matches, status.exit_code()), (true, Some(false), 1));
    assert!(
        status.reasons.iter().any(|r| r == "set ignored_v4: 1 element not in the plan (10.5.0.1)"),
        "{:?}",
        status.reasons
    );
    assert!(
        status.reasons.iter().any(|r| r.starts_with("chain ingress: 0 rules, the plan has 1")),
        "{:?}",
        status.reasons
    );

    let repaired = backend.apply(&plan, false).unwrap();
    assert!(repaired.changed && repaired.detail.reasons == status.reasons, "{repaired:?}");
    assert_eq!(backend.status(Some(&plan)).unwrap().matches, Some(true));
    assert_eq!(egress_reply(&sandbox).role, Role::EgressProxy);
}

/// A transaction nft refuses changes nothing: the old table stays live. The refusal is
/// forced with overlapping interval elements, which no plan contains.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_refused_transaction_leaves_the_old_table_live() {
    require_nft("a_refused_transaction_leaves_the_old_table_live");
    let sandbox = sandbox();
    let backend = open(sandbox.task());
    let plan = NftablesPlan::new(&seed());
    backend.apply(&plan, false).unwrap();
    let before = sandbox.task().exec("nft", &["-s", "list", "ruleset"]);
    // Overlapping interval elements: nft refuses the whole file.
    let mut broken = NftablesPlan::new(&ProxyConfig { proxy_egress_port: 15002, ..seed() });
    let v4 = broken.sets.iter_mut().find(|s| s.name == "ignored_v4").unwrap();
    v4.elements =
        intercept::plan::nftables::Elements::Nets(vec!["10.0.0.0/8".parse().unwrap(), "10.1.0.0/16".parse().unwrap()]);
    let err = backend.apply(&broken, false).unwrap_err();
    assert!(matches!(err, Error::Transaction { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(sandbox.task().exec("nft", &["-s", "list", "ruleset"]), before, "exactly as before");
    assert_eq!(egress_reply(&sandbox).local.port(), 15001, "the old table is still live");
}

/// nftables needs nothing IPv6 from the namespace: with IPv6 disabled there, the same
/// table installs, IPv4 is intercepted, and there is nothing to warn about.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_namespace_without_ipv6_takes_the_same_table() {
    require_nft("a_namespace_without_ipv6_takes_the_same_table");
    let sandbox = sandbox();
    sandbox.task().sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    let backend = open(sandbox.task());
    let plan = NftablesPlan::new(&with_networks(seed()));
    let report = backend.apply(&plan, false).unwrap();
    assert!(report.changed && report.warnings.is_empty(), "{report:?}");
    assert_eq!(egress_reply(&sandbox).role, Role::EgressProxy);
    assert!(!backend.apply(&plan, false).unwrap().changed);
    assert_eq!(backend.status(Some(&plan)).unwrap().exit_code(), 0);
}

/// The CLI: `--backend nftables`, and `--backend auto`, which picks nftables here, says
/// why, and goes on with whatever is installed.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_cli_applies_reports_and_removes() {
    require_nft("the_cli_applies_reports_and_removes");
    let bin = intercept_bin("the_cli_applies_reports_and_removes");
    let sandbox = sandbox();
    let netns = sandbox.task().path();
    let netns = netns.to_str().unwrap();
    let seed_flags = [
        "--ignored-uid",
        "1337",
        "--proxy-egress-port",
        "15001",
        "--proxy-ingress-port",
        "15000",
        "--app-ports",
        "9080",
    ];
    let intercept = |args: &[&str]| run_output(Command::new(&bin).args(args));

    let (code, stdout, stderr) =
        intercept(&[&["apply", "--backend", "auto", "--netns", netns][..], &seed_flags].concat());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("backend auto: nftables (not eBPF: no --cgroup given"), "{stderr}");
    assert!(stdout.contains("done: table inet intercept: 4 chains, 7 rules"), "{stdout}");
    assert_eq!(egress_reply(&sandbox).role, Role::EgressProxy);

    let (code, stdout, _) =
        intercept(&[&["apply", "--backend", "nftables", "--netns", netns][..], &seed_flags].concat());
    assert_eq!(code, Some(0));
    assert!(stdout.contains("nothing to change"), "{stdout}");

    let (code, stdout, stderr) =
        intercept(&[&["status", "--backend", "auto", "--netns", netns][..], &seed_flags].concat());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("backend auto: nftables (intercept's nftables table is installed here)"), "{stderr}");
    assert!(stdout.contains("installed, and matches the configuration"), "{stdout}");
    assert!(stdout.contains("         1           60  meta l4proto tcp counter redirect to :15001"), "{stdout}");

    let other =
        [&["status", "--backend", "nftables", "--netns", netns, "--egress-ignored-ports", "23"][..], &seed_flags]
            .concat();
    let (code, stdout, _) = intercept(&other);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("does NOT match"), "{stdout}");

    let (code, stdout, stderr) = intercept(&["remove", "--backend", "auto", "--netns", netns, "--format", "json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON report");
    assert_eq!(report["changed"], true);
    assert!(!sandbox.task().exec("nft", &["list", "tables"]).contains("intercept"));

    let (code, _, stderr) = intercept(&["remove", "--backend", "nftables", "--netns", "/nonexistent/netns"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");
}

/// `--backend auto` goes on with what is installed: the iptables backend's rules are
/// kept (not doubled by a table), and `remove` takes both backends' when both are there.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn auto_follows_what_is_installed() {
    require_nft("auto_follows_what_is_installed");
    let bin = intercept_bin("auto_follows_what_is_installed");
    let sandbox = sandbox();
    let netns = sandbox.task().path();
    let netns = netns.to_str().unwrap();
    let intercept = |args: &[&str]| run_output(Command::new(&bin).args(args));
    let flags = ["--ignored-uid", "1337", "--proxy-egress-port", "15001"];
    let iptables = intercept::backend::iptables::Iptables::open(Target::Path(sandbox.task().path()), None).unwrap();
    iptables.apply(&intercept::plan::IptablesPlan::new(&seed()), false).unwrap();

    let (code, stdout, stderr) = intercept(&[&["apply", "--backend", "auto", "--netns", netns][..], &flags].concat());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("backend auto: iptables (intercept's iptables rules are installed here)"), "{stderr}");
    assert!(!sandbox.task().exec("nft", &["list", "tables"]).contains("intercept"), "no second interception");

    // Both installed (by hand): the nftables backend warns, and auto removes both.
    let nftables = open(sandbox.task());
    let report = nftables.apply(&NftablesPlan::new(&seed()), false).unwrap();
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(report.warnings[0].starts_with("the iptables backend's INTERCEPT_EGRESS chain is installed too (ip nat)"));
    let (code, stdout, stderr) = intercept(&["remove", "--backend", "auto", "--netns", netns]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("backend auto: nftables") && stderr.contains("backend auto: iptables"), "{stderr}");
    assert!(!sandbox.task().exec("nft", &["list", "tables"]).contains("intercept"));
    assert!(!sandbox.task().exec("iptables-nft-save", &[]).contains("INTERCEPT"));
    assert_eq!(egress_reply(&sandbox).role, Role::Remote);
}
