//! The backend's logic against the fake namespace of [`super::fake`]: what runs, in which
//! order, and what the namespace holds afterwards. The transactions are golden-tested.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use super::fake::{Fake, FakeTable};
use super::*;
use crate::backend::Counter;
use crate::config::ProxyConfig;
use crate::plan::iptables::{INGRESS_CHAIN, IPSET_THRESHOLD};
use crate::testdata::seed_config as seed;

/// `n` v4 /24 networks with gaps between them (so none aggregate); from
/// `IPSET_THRESHOLD + 1` on they go into an ipset.
fn many_cidrs(n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let i = u32::try_from(i).unwrap();
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 9)), 24).unwrap())
        })
        .collect()
}

fn plan(config: &ProxyConfig) -> IptablesPlan {
    IptablesPlan::new(config)
}

fn nft(fake: &Fake) -> Iptables<&Fake> {
    Iptables::new(fake, Some(Mode::Nft)).expect("backend")
}

/// Another tool's chain, a user's OUTPUT rule and a user's PREROUTING rule.
const FOREIGN: &str = "*nat
:OTHER_TOOL - [0:0]
-A OTHER_TOOL -p udp --dport 53 -j RETURN
-A OUTPUT -p tcp -m comment --comment \"user rule\" -j OTHER_TOOL
-A PREROUTING -s 10.9.9.9/32 -j RETURN
COMMIT
";

fn with_foreign_rules() -> Fake {
    let fake = Fake::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let input = if family == Family::Ipv6 { FOREIGN.replace("10.9.9.9/32", "fd09::9/128") } else { FOREIGN.into() };
        fake.preload(Mode::Nft, family, &input);
    }
    fake
}

fn foreign_part(table: &FakeTable) -> (Vec<String>, Vec<RuleSpec>) {
    let chains = table.chains.iter().filter(|c| !sync::OWN_CHAINS.contains(&c.as_str())).cloned().collect();
    let rules = table
        .rules
        .iter()
        .filter(|r| !sync::OWN_CHAINS.contains(&r.chain.as_str()) && !r.is_intercepts())
        .cloned()
        .collect();
    (chains, rules)
}

use save::RuleSpec;

#[test]
fn apply_installs_both_families_in_one_transaction_each() {
    let fake = Fake::new();
    let report = nft(&fake).apply(&plan(&seed()), false).unwrap();
    assert!(report.changed);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    insta::assert_snapshot!(fake.transcript());
    let v4 = fake.table(Mode::Nft, Family::Ipv4);
    assert_eq!(v4.chains, [EGRESS_CHAIN, INGRESS_CHAIN]);
    assert_eq!(v4.rules.iter().filter(|r| r.chain == "OUTPUT" || r.chain == "PREROUTING").count(), 2);
    assert!(fake.table(Mode::Legacy, Family::Ipv4).rules.is_empty(), "legacy untouched");
}

#[test]
fn applying_the_same_config_again_runs_nothing() {
    let fake = with_foreign_rules();
    let backend = nft(&fake);
    let config = ProxyConfig { egress_ignored_ips: many_cidrs(IPSET_THRESHOLD + 5), ..seed() };
    backend.apply(&plan(&config), false).unwrap();
    let tables = (fake.table(Mode::Nft, Family::Ipv4), fake.table(Mode::Nft, Family::Ipv6), fake.sets());
    fake.take_calls();

    let again = backend.apply(&plan(&config), false).unwrap();
    assert!(!again.changed);
    assert!(again.detail.changes.is_empty(), "{:?}", again.detail.changes);
    assert_eq!(fake.transcript(), "", "no restore ran");
    assert_eq!((fake.table(Mode::Nft, Family::Ipv4), fake.table(Mode::Nft, Family::Ipv6), fake.sets()), tables);
    assert!(again.render_text("apply").contains("nothing to change"), "{}", again.render_text("apply"));
}

#[test]
fn a_changed_config_replaces_only_what_changed_in_one_transaction() {
    let fake = with_foreign_rules();
    let backend = nft(&fake);
    backend.apply(&plan(&seed()), false).unwrap();
    fake.take_calls();

    // New egress port: the egress chain is refilled; the ingress chain and both jumps stay.
    let changed = ProxyConfig { proxy_egress_port: 15011, ..seed() };
    let report = backend.apply(&plan(&changed), false).unwrap();
    assert!(report.changed);
    insta::assert_snapshot!("replace_egress_port", fake.transcript());

    // Ingress switched off: its chain and its jump go, in the same transaction.
    let egress_only = ProxyConfig { ingress: None, ..changed };
    backend.apply(&plan(&egress_only), false).unwrap();
    insta::assert_snapshot!("replace_drop_ingress", fake.transcript());
    let v4 = fake.table(Mode::Nft, Family::Ipv4);
    assert_eq!(v4.chains, ["OTHER_TOOL", EGRESS_CHAIN]);
    assert!(!v4.rules.iter().any(|r| r.chain == "PREROUTING" && r.is_intercepts()));
}

#[test]
fn foreign_rules_survive_apply_replace_and_remove() {
    let fake = with_foreign_rules();
    let before = [Family::Ipv4, Family::Ipv6].map(|f| foreign_part(&fake.table(Mode::Nft, f)));
    let backend = nft(&fake);
    let configs = [
        seed(),
        ProxyConfig { proxy_egress_port: 15011, egress_ignored_ips: many_cidrs(100), ..seed() },
        ProxyConfig { ingress: None, ..seed() },
    ];
    for config in &configs {
        backend.apply(&plan(config), false).unwrap();
        assert_eq!([Family::Ipv4, Family::Ipv6].map(|f| foreign_part(&fake.table(Mode::Nft, f))), before);
    }
    backend.remove(false).unwrap();
    for family in [Family::Ipv4, Family::Ipv6] {
        let table = fake.table(Mode::Nft, family);
        assert_eq!(foreign_part(&table), before[family as usize]);
        assert_eq!(foreign_part(&table), (table.chains.clone(), table.rules.clone()), "only foreign parts are left");
    }
    assert_eq!(fake.sets(), Vec::new());
}

#[test]
fn remove_deletes_jumps_and_chains_then_the_sets() {
    let fake = Fake::new();
    let backend = nft(&fake);
    let config = ProxyConfig { egress_ignored_ips: many_cidrs(IPSET_THRESHOLD + 1), ..seed() };
    backend.apply(&plan(&config), false).unwrap();
    fake.take_calls();
    let report = backend.remove(false).unwrap();
    assert!(report.changed);
    insta::assert_snapshot!(fake.transcript());
    assert_eq!(fake.table(Mode::Nft, Family::Ipv4).chains, Vec::<String>::new());
    assert_eq!(fake.sets(), Vec::new());

    let twice = backend.remove(false).unwrap();
    assert!(!twice.changed);
    assert_eq!(fake.transcript(), "");
}

#[test]
fn remove_on_a_namespace_without_intercept_does_nothing() {
    let fake = with_foreign_rules();
    let report = nft(&fake).remove(false).unwrap();
    assert!(!report.changed && report.detail.changes.is_empty());
    assert_eq!(fake.transcript(), "");
}

#[test]
fn a_failing_ipv6_half_rolls_back_the_ipv4_half_and_the_sets() {
    let fake = with_foreign_rules();
    let backend = nft(&fake);
    // An earlier configuration is installed; the new one needs an ipset.
    backend.apply(&plan(&seed()), false).unwrap();
    let snapshot = || {
        (fake.table(Mode::Nft, Family::Ipv4).by_chain(), fake.table(Mode::Nft, Family::Ipv6).by_chain(), fake.sets())
    };
    let before = snapshot();
    fake.take_calls();
    fake.fail("ip6tables-nft-restore", "ip6tables-nft-restore: line {line} failed");

    let config = ProxyConfig { proxy_egress_port: 15011, egress_ignored_ips: many_cidrs(20), ..seed() };
    let err = backend.apply(&plan(&config), false).unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("ip6tables-nft-restore --noflush --wait=10 < (transaction)` failed"), "{message}");
    assert!(message.contains("line 3 of its input: -A INTERCEPT_EGRESS"), "{message}");
    assert!(message.ends_with("the namespace was put back as it was before"), "{message}");
    assert_eq!(snapshot(), before);
    insta::assert_snapshot!(fake.transcript());
}

#[test]
fn a_failing_first_install_leaves_nothing_behind() {
    let fake = Fake::new();
    fake.fail("ip6tables-nft-restore", "ip6tables-nft-restore: line {line} failed");
    let config = ProxyConfig { egress_ignored_ips: many_cidrs(20), ..seed() };
    let err = nft(&fake).apply(&plan(&config), false).unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err:?}");
    assert_eq!(fake.table(Mode::Nft, Family::Ipv4).rules, Vec::new());
    assert_eq!(fake.table(Mode::Nft, Family::Ipv4).chains, Vec::<String>::new());
    assert_eq!(fake.sets(), Vec::new());
}

#[test]
fn a_failing_ipv4_half_changes_nothing_and_says_which_line() {
    let fake = Fake::new();
    fake.fail(
        "iptables-nft-restore",
        "iptables-nft-restore v1.8.9 (nf_tables): Set nosuchset doesn't exist.\n\nError occurred at line: {line}\n\
         Try `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.",
    );
    let err = nft(&fake).apply(&plan(&seed()), false).unwrap_err();
    // Nothing had changed: no rollback needed, the cause is reported as it is.
    assert!(matches!(err, Error::Failed(_)), "{err:?}");
    insta::assert_snapshot!(err.to_string());
}

/// New contents are built under the set's other name while the rules keep matching on the
/// live one; the rules' transaction switches to the new set, and the old one goes after.
/// A set an interrupted run left under that name is destroyed first, whatever its maxelem.
#[test]
fn a_changed_set_is_built_under_its_other_name_and_the_rules_switch_to_it() {
    let fake = Fake::new();
    let backend = nft(&fake);
    let small = ProxyConfig { egress_ignored_ips: many_cidrs(10), ipv6: false, ..seed() };
    backend.apply(&plan(&small), false).unwrap();
    let match_set = |name: &str| {
        let rules = fake.table(Mode::Nft, Family::Ipv4).rules;
        rules.iter().filter(|r| r.args.windows(2).any(|w| w == ["--match-set", name])).count()
    };
    assert_eq!(match_set("intercept-egress-v4"), 1);
    fake.add_set(IpSet {
        name: "intercept-egress-v4-next".into(),
        family: Family::Ipv4,
        maxelem: 1024,
        entries: vec![],
    });

    let config = ProxyConfig { egress_ignored_ips: many_cidrs(70_000), ipv6: false, ..seed() };
    let big = plan(&config);
    assert_eq!(big.ipsets[0].maxelem, 131_072);
    let report = backend.apply(&big, true).unwrap();
    let update = report.detail.changes.ipset_update.as_deref().unwrap();
    let lines: Vec<&str> = update.lines().collect();
    assert_eq!(
        lines[..2],
        ["destroy intercept-egress-v4-next", "create intercept-egress-v4-next hash:net family inet maxelem 131072"]
    );
    assert!(!update.contains("swap") && !update.contains("intercept-egress-v4 "), "the live set is left alone");
    assert!(report.detail.changes.v4.as_deref().unwrap().contains("--match-set intercept-egress-v4-next dst"));
    assert_eq!(report.detail.changes.ipset_cleanup.as_deref(), Some("destroy intercept-egress-v4\n"));

    backend.apply(&big, false).unwrap();
    let sets = fake.sets();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].name, "intercept-egress-v4-next");
    assert_eq!((sets[0].maxelem, sets[0].entries.len()), (131_072, 70_002), "70,000 and the two metadata IPs");
    assert_eq!((match_set("intercept-egress-v4"), match_set("intercept-egress-v4-next")), (0, 1));
    assert!(backend.status(Some(&big)).unwrap().matches == Some(true));
    assert!(!backend.apply(&big, false).unwrap().changed, "applying again changes nothing");

    // The next change goes back to the first name.
    backend.apply(&plan(&small), false).unwrap();
    assert_eq!(fake.sets().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["intercept-egress-v4"]);
    assert_eq!((match_set("intercept-egress-v4"), match_set("intercept-egress-v4-next")), (1, 0));
}

#[test]
fn dry_run_computes_without_running() {
    let fake = Fake::new();
    let report = nft(&fake).apply(&plan(&seed()), true).unwrap();
    assert!(report.dry_run && !report.changed);
    assert!(report.detail.changes.v4.is_some() && report.detail.changes.v6.is_some());
    assert_eq!(fake.transcript(), "");
    assert_eq!(fake.table(Mode::Nft, Family::Ipv4).chains, Vec::<String>::new());
    insta::assert_snapshot!(report.render_text("apply"));
}

#[test]
fn without_ipv6_the_ipv6_half_is_skipped_with_a_warning() {
    let fake = Fake::new();
    fake.state.borrow_mut().sysctl.insert("ipv6/conf/all/disable_ipv6".into(), "1".into());
    let config =
        ProxyConfig { egress_ignored_ips: [many_cidrs(10), vec!["fd00::/8".parse().unwrap(); 1]].concat(), ..seed() };
    let report = nft(&fake).apply(&plan(&config), false).unwrap();
    assert_eq!(
        report.warnings,
        [
            "IPv6 rules skipped: IPv6 is disabled in the namespace (net.ipv6.conf.all.disable_ipv6 = 1); only IPv4 is intercepted"
        ]
    );
    assert!(report.detail.changes.v4.is_some() && report.detail.changes.v6.is_none());
    assert_eq!(fake.table(Mode::Nft, Family::Ipv6).rules, Vec::new());

    // No /proc/sys/net/ipv6 at all, and no ip6tables: still only a warning.
    let fake = Fake::new();
    fake.state.borrow_mut().sysctl.clear();
    fake.state.borrow_mut().missing.push("ip6tables-nft-save".into());
    let report = nft(&fake).apply(&plan(&seed()), false).unwrap();
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("no /proc/sys/net/ipv6"), "{:?}", report.warnings);
}

#[test]
fn switching_ipv6_off_removes_the_ipv6_rules() {
    let fake = Fake::new();
    let backend = nft(&fake);
    backend.apply(&plan(&seed()), false).unwrap();
    backend.apply(&plan(&ProxyConfig { ipv6: false, ..seed() }), false).unwrap();
    assert_eq!(fake.table(Mode::Nft, Family::Ipv6).rules, Vec::new());
    assert_eq!(fake.table(Mode::Nft, Family::Ipv4).chains.len(), 2);
}

#[test]
fn a_duplicated_jump_is_deduplicated() {
    let fake = Fake::new();
    let backend = nft(&fake);
    let plan = plan(&seed());
    backend.apply(&plan, false).unwrap();
    let jump = RuleSpec::from_plan(&plan.v4.jumps[0]);
    fake.preload(Mode::Nft, Family::Ipv4, &format!("*nat\n{}\nCOMMIT\n", jump.line("-A")));
    fake.take_calls();
    backend.apply(&plan, false).unwrap();
    assert_eq!(
        fake.transcript(),
        format!("$ iptables-nft-restore --noflush --wait=10\n*nat\n{}\nCOMMIT\n", jump.line("-D"))
    );
}

#[test]
fn a_missing_program_says_which_and_how_to_get_it() {
    let fake = Fake::new();
    fake.state.borrow_mut().missing.push("iptables-nft-save".into());
    let err = nft(&fake).apply(&plan(&seed()), false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "iptables-nft-save not found (looked on PATH and in /usr/sbin, /sbin, /usr/local/sbin): install the \
         `iptables` package, e.g. `apt-get install iptables`, or put iptables-nft-save on PATH"
    );

    let fake = Fake::new();
    fake.state.borrow_mut().missing.push("ipset".into());
    // Without an ipset the seed installs fine; a plan that needs one names the command.
    nft(&fake).apply(&plan(&seed()), false).unwrap();
    let config = ProxyConfig { egress_ignored_ips: many_cidrs(20), ..seed() };
    let err = nft(&fake).apply(&plan(&config), false).unwrap_err();
    assert!(err.to_string().starts_with("ipset not found"), "{err}");
    assert!(err.to_string().contains("apt-get install ipset"), "{err}");
}

#[test]
fn the_mode_follows_the_rules_already_there() {
    let legacy_rule = "*nat\n-A OUTPUT -j RETURN\nCOMMIT\n";
    type Setup = Box<dyn Fn(&Fake)>;
    let cases: Vec<(&str, Setup, Mode, &str)> = vec![
        (
            "empty namespace",
            Box::new(|_| {}),
            Mode::Nft,
            "iptables-legacy holds 0 rules, iptables-nft 0 (nft is the default)",
        ),
        (
            "legacy holds rules",
            Box::new(|f| f.preload(Mode::Legacy, Family::Ipv4, legacy_rule)),
            Mode::Legacy,
            "iptables-legacy holds 1 rules, iptables-nft 0",
        ),
        (
            "both hold rules, nft more",
            Box::new(|f| {
                f.preload(Mode::Legacy, Family::Ipv4, legacy_rule);
                f.preload(Mode::Nft, Family::Ipv6, FOREIGN);
            }),
            Mode::Nft,
            "iptables-legacy holds 1 rules, iptables-nft 3",
        ),
        (
            "intercept's chains decide",
            Box::new(|f| {
                f.preload(Mode::Legacy, Family::Ipv4, "*nat\n:INTERCEPT_EGRESS - [0:0]\nCOMMIT\n");
                f.preload(Mode::Nft, Family::Ipv4, FOREIGN);
            }),
            Mode::Legacy,
            "intercept's chains are in iptables-legacy",
        ),
        (
            "no iptables-nft",
            Box::new(|f| {
                let mut state = f.state.borrow_mut();
                state.missing.extend(["iptables-nft-save".to_owned(), "ip6tables-nft-save".to_owned()]);
            }),
            Mode::Legacy,
            "iptables-nft is not usable here",
        ),
    ];
    for (name, setup, mode, reason) in cases {
        let fake = Fake::new();
        setup(&fake);
        let detection = detect_mode(&&fake).unwrap();
        assert_eq!((detection.mode, detection.reason.as_str()), (mode, reason), "{name}");
    }
    let fake = Fake::new();
    fake.preload(Mode::Legacy, Family::Ipv4, legacy_rule);
    let forced = Iptables::new(&fake, Some(Mode::Nft)).unwrap();
    assert_eq!((forced.mode(), forced.detection().reason.as_str()), (Mode::Nft, "--iptables-mode nft"));
    // Detection lists tables without `-t`, which creates none.
    assert!(fake.take_calls().is_empty());
}

#[test]
fn nothing_detected_without_any_xtables() {
    let fake = Fake::new();
    let programs = [Mode::Legacy, Mode::Nft]
        .into_iter()
        .flat_map(|m| [Family::Ipv4, Family::Ipv6].map(move |f| m.program(f, "save")));
    fake.state.borrow_mut().missing.extend(programs);
    let err = detect_mode(&&fake).unwrap_err();
    assert!(err.to_string().starts_with("iptables-nft-save not found"), "{err}");
}

#[test]
fn status_reports_rules_counters_and_drift() {
    let fake = with_foreign_rules();
    let backend = nft(&fake);
    let seed_plan = plan(&seed());
    let not_installed = backend.status(Some(&seed_plan)).unwrap();
    assert_eq!(not_installed.exit_code(), 1);
    assert!(!not_installed.installed);

    backend.apply(&seed_plan, false).unwrap();
    let status = backend.status(Some(&seed_plan)).unwrap();
    assert_eq!((status.installed, status.matches, status.exit_code()), (true, Some(true), 0), "{:?}", status.reasons);
    insta::assert_snapshot!("status_matching", status.render_text());
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["families"][0]["chains"][0]["name"], "INTERCEPT_EGRESS");
    assert_eq!(json["families"][0]["jumps"][0]["packets"], 0);

    let no_config = backend.status(None).unwrap();
    assert_eq!((no_config.matches, no_config.exit_code()), (None, 0));

    let other = plan(&ProxyConfig { proxy_egress_port: 15011, ..seed() });
    let drifted = backend.status(Some(&other)).unwrap();
    assert_eq!((drifted.matches, drifted.exit_code()), (Some(false), 1));
    insta::assert_snapshot!("status_drift", drifted.render_text());
}

#[test]
fn reported_lines_are_found_in_every_format() {
    let cases = [
        ("iptables-restore: line 4 failed", Some(4)),
        ("iptables-nft-restore: line 12 failed: Bad rule", Some(12)),
        ("Set x doesn't exist.\n\nError occurred at line: 7\nTry `iptables-restore -h'", Some(7)),
        ("ipset v7.17: Error in line 3: The set with the given name does not exist", Some(3)),
        ("iptables-restore: unable to initialize table 'nat'", None),
        ("deadline exceeded", None),
    ];
    for (stderr, want) in cases {
        assert_eq!(reported_line(stderr), want, "{stderr}");
    }
}

#[test]
fn the_plan_names_only_sets_intercept_knows_as_its_own() {
    let config = ProxyConfig {
        egress_ignored_ips: [
            many_cidrs(20),
            (0..20).map(|i| format!("fd{:02x}::/16", i * 2).parse().unwrap()).collect(),
        ]
        .concat(),
        ..seed()
    };
    let plan = plan(&config);
    assert_eq!(plan.ipsets.len(), 2);
    for set in &plan.ipsets {
        assert!(OWN_SETS.contains(&set.name.as_str()), "{}", set.name);
        assert!(sync::is_own_set(&set.staging_name()));
    }
    assert!(!sync::is_own_set("intercept-egress-v4-other"));
    assert!(!sync::is_own_set("someone-else"));
}

/// A kill between the IPv4 and the IPv6 transaction (emulated: the lock taken, the marker
/// written, only the IPv4 half run) leaves a mix that matches neither configuration; status
/// says a change did not finish, and the next apply makes the namespace whole.
#[test]
fn an_interrupted_change_is_reported_until_the_next_apply_makes_it_whole() {
    let fake = Fake::new();
    let backend = nft(&fake);
    let a = plan(&seed());
    let b = plan(&ProxyConfig { proxy_egress_port: 15002, ..seed() });
    backend.apply(&a, false).unwrap();

    let held = backend.runner.lock_for_change(false).unwrap().expect("a lock");
    held.begin("apply").unwrap();
    let state = backend.read_state().unwrap();
    let (desired, _) = desired_state(Some(&b), &Ipv6::Usable, &state);
    let changes = Changes::compute(&desired, &state);
    backend.restore(Family::Ipv4, changes.family(Family::Ipv4).unwrap()).unwrap();
    drop(held);

    for plan in [&a, &b] {
        let status = backend.status(Some(plan)).unwrap();
        assert_eq!((status.matches, status.exit_code()), (Some(false), 1));
        let unfinished = format!("an `intercept apply` (pid {}) did not finish", std::process::id());
        assert_eq!(status.unfinished.as_deref(), Some(unfinished.as_str()));
        assert!(status.reasons.iter().any(|r| r.starts_with(&unfinished)), "{:?}", status.reasons);
        assert!(status.render_text().contains("installed, but does NOT match"), "{}", status.render_text());
    }
    let status = backend.status(None).unwrap();
    assert_eq!((status.installed, status.exit_code()), (true, 1), "installed, but not whole");
    assert!(status.render_text().contains("NOT whole: a change was interrupted"), "{}", status.render_text());

    assert!(backend.apply(&b, false).unwrap().changed, "the IPv6 half is still to do");
    let status = backend.status(Some(&b)).unwrap();
    assert_eq!((status.unfinished.as_deref(), status.exit_code()), (None, 0));
}

/// Killed after its last command but before deleting the marker: the namespace is whole, so
/// status matching it exits 0, and the next apply (with nothing to change) clears the marker.
#[test]
fn a_marker_over_a_whole_namespace_is_cleared_by_an_apply_that_changes_nothing() {
    let fake = Fake::new();
    let backend = nft(&fake);
    let a = plan(&seed());
    backend.apply(&a, false).unwrap();
    backend.runner.lock_for_change(false).unwrap().expect("a lock").begin("apply").unwrap();
    let status = backend.status(Some(&a)).unwrap();
    assert!(status.unfinished.is_some());
    assert_eq!(status.exit_code(), 0, "{:?}", status.reasons);
    assert!(!backend.apply(&a, false).unwrap().changed);
    assert_eq!(backend.status(Some(&a)).unwrap().unfinished, None);
}

/// A change that fails and is rolled back leaves the namespace whole (as before): no marker.
#[test]
fn a_rolled_back_change_leaves_no_marker() {
    let fake = Fake::new();
    let backend = nft(&fake);
    backend.apply(&plan(&seed()), false).unwrap();
    fake.fail("ip6tables-nft-restore", "line {line}: RULE_APPEND failed (No such file or directory)");
    let err = backend.apply(&plan(&ProxyConfig { proxy_egress_port: 15002, ..seed() }), false).unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err}");
    let status = backend.status(Some(&plan(&seed()))).unwrap();
    assert_eq!((status.unfinished.as_deref(), status.exit_code()), (None, 0), "{:?}", status.reasons);
}

/// An `iptables-save -c` dump of `plan`'s IPv4 rules, the `i`th rule (jumps first) with `i`
/// packets, and a rule added by hand in intercept's chain.
fn counted_dump(plan: &IptablesPlan, leave_out: &str) -> String {
    let mut dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n".to_owned();
    for chain in &plan.v4.chains {
        dump.push_str(&format!(":{} - [0:0]\n", chain.name));
    }
    let rules = plan.v4.jumps.iter().chain(plan.v4.chains.iter().flat_map(|c| &c.rules));
    for (i, rule) in rules.enumerate().filter(|(_, r)| !r.render().contains(leave_out)) {
        dump.push_str(&format!("[{i}:{}] {}\n", i * 60, rule.render()));
    }
    dump.push_str(
        "[100:6000] -A INTERCEPT_EGRESS -p udp -m comment --comment \"intercept: by hand\" -j RETURN\nCOMMIT\n",
    );
    dump
}

fn state_of(dump: &str) -> State {
    State { v4: Installed::from_table(&parse_table(dump, TABLE).unwrap()), v6: None, sets: Vec::new() }
}

#[test]
fn status_counts_connections_by_the_decision_each_rule_of_the_plan_makes() {
    let plan = plan(&ProxyConfig { ignored_gids: vec![1338], ..seed() });
    let counters = counters_of(&plan, &state_of(&counted_dump(&plan, "no rule has this")));
    // Jumps 0 (OUTPUT) and 1 (PREROUTING) decide nothing; then uid, gid, port 22, the two
    // metadata IPs, the egress redirect, the ingress redirect. The rule added by hand is not
    // the plan's, and counts for nothing.
    assert_eq!(
        counters,
        Counters::from([
            (Counter::IgnoredUid, 2),
            (Counter::IgnoredGid, 3),
            (Counter::IgnoredPort, 4),
            (Counter::IgnoredIp, 5 + 6),
            (Counter::Redirected, 7),
            (Counter::IngressSteered, 8),
        ])
    );
}

#[test]
fn the_ingress_check_names_what_is_missing() {
    let plan = plan(&seed());
    let (whole, seen) = ingress_of(&plan, &state_of(&counted_dump(&plan, "no rule has this"))).unwrap();
    assert!(whole, "{seen}");
    assert_eq!(seen, "IPv4: PREROUTING jump to INTERCEPT_INGRESS (present), REDIRECT to 15000 (present)");
    let (whole, seen) = ingress_of(&plan, &state_of(&counted_dump(&plan, "-A PREROUTING"))).unwrap();
    assert!(!whole);
    assert_eq!(seen, "IPv4: PREROUTING jump to INTERCEPT_INGRESS (MISSING), REDIRECT to 15000 (present)");
    let moved = IptablesPlan::new(&ProxyConfig {
        ingress: seed().ingress.map(|i| crate::config::Ingress { proxy_port: 15005, ..i }),
        ..seed()
    });
    let (whole, seen) = ingress_of(&moved, &state_of(&counted_dump(&plan, "no rule has this"))).unwrap();
    assert!(!whole);
    assert!(seen.contains("REDIRECT to 15005 (MISSING)"), "{seen}");
    let egress_only = IptablesPlan::new(&ProxyConfig { ingress: None, ..seed() });
    assert_eq!(ingress_of(&egress_only, &state_of("*nat\nCOMMIT\n")), None);
}
