//! intercept as the `aws-appmesh` CNI plugin, driven as the ECS agent drives it: the agent's
//! netconfig on stdin, `CNI_*` in the environment, a network namespace the test made. The
//! traffic in a namespace set up through ADD is judged by the decision model, as every other
//! backend's is; then the protocol's edges: ADD twice, DEL twice, DEL of a vanished namespace,
//! CHECK after a rule was deleted by hand, bad input of every kind (nothing changed).
//!
//! Needs root for everything that touches a namespace; `--capabilities` and the refusals that
//! come before any namespace is opened run unprivileged.

use std::path::Path;

use intercept::model::Reason;
use intercept_tests::{
    cases::{self, APP_GID, APP_PORT, APP_UID, REMOTE_PORT, V4, V6, check, config, into_task, out, sandbox},
    cni::{PluginDir, agent_netconf, ipv4_only, no_lock_left, nothing_left, with},
    topology::{Netns, Sleeper, require_netns_privileges, require_nft},
};
use serde_json::json;

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

/// Everything the namespace's tables hold, both families and nftables: equal before and after
/// a refused call means nothing was changed.
fn tables(netns: &Netns) -> String {
    ["iptables-save", "ip6tables-save"]
        .iter()
        .map(|t| netns.exec(t, &[]))
        .chain([netns.exec("nft", &["list", "ruleset"])])
        .map(|out| out.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// IPv6 cases for an installation without IPv6: nothing of it is touched.
fn ipv6_untouched() -> Vec<cases::Case> {
    vec![
        out("IPv6 egress, IPv6 off", APP_UID, APP_GID, V6.plain, REMOTE_PORT, Some(Reason::Ipv6Disabled)),
        into_task("IPv6 ingress to an AppPort, IPv6 off", V6.task, APP_PORT, Some(Reason::Ipv6Disabled)),
    ]
}

/// The acceptance: run as `aws-appmesh` with a netconfig exactly like the agent writes, and
/// every connection agrees with the decision model (IPv4 intercepted, IPv6 left alone, as the
/// agent never enables it).
#[test]
#[ignore = "privileged (root, namespaces): `cargo xtask test` runs it"]
fn the_agents_netconfig_every_connection_agrees_with_the_model() {
    require_netns_privileges("the_agents_netconfig_every_connection_agrees_with_the_model");
    let plugin = PluginDir::new("the_agents_netconfig_every_connection_agrees_with_the_model");
    let sandbox = sandbox(Vec::new(), Vec::new());
    let netconf = serde_json::to_vec(&agent_netconf(&config())).unwrap();
    let add = plugin.call("ADD", Some(&sandbox.task().path()), &netconf);
    add.assert_success();
    assert_eq!(add.json(), json!({"cniVersion": "0.3.0", "dns": {}}), "the result of a plugin called alone");
    let model = ipv4_only(config());
    check(CLIENT, &sandbox, &model, &[cases::cases(&V4, "IPv4"), ipv6_untouched()].concat());
    no_lock_left(sandbox.task());
}

/// A chained configuration choosing nftables and IPv6, with the previous plugin's result passed
/// through: both families agree with the model.
#[test]
#[ignore = "privileged (root, namespaces, nft): `cargo xtask test` runs it"]
fn chained_nftables_with_ipv6_agrees_with_the_model() {
    require_nft("chained_nftables_with_ipv6_agrees_with_the_model");
    let plugin = PluginDir::new("chained_nftables_with_ipv6_agrees_with_the_model");
    let sandbox = sandbox(Vec::new(), Vec::new());
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.2/24"}]});
    let netconf = with(
        &agent_netconf(&config()),
        json!({"cniVersion": "1.0.0", "type": "intercept-cni", "backend": "nftables", "enableIPv6": true, "prevResult": prev}),
    );
    let add = plugin.call("ADD", Some(&sandbox.task().path()), &netconf);
    add.assert_success();
    assert_eq!(add.json(), prev);
    assert!(sandbox.task().exec("nft", &["list", "tables"]).contains("inet intercept"));
    check(CLIENT, &sandbox, &config(), &cases::both_families());
    plugin.call("CHECK", Some(&sandbox.task().path()), &netconf).assert_success();
}

/// ADD twice is one installation; CHECK finds a rule deleted by hand and the next ADD repairs
/// it; DEL twice leaves nothing, and DEL of a namespace that is gone succeeds.
#[test]
#[ignore = "privileged (root, namespaces): `cargo xtask test` runs it"]
fn add_twice_check_drift_del_twice_del_gone() {
    require_netns_privileges("add_twice_check_drift_del_twice_del_gone");
    let plugin = PluginDir::new("add_twice_check_drift_del_twice_del_gone");
    let netns = Netns::create("cni");
    let path = netns.path();
    let netconf = with(&agent_netconf(&config()), json!({"cniVersion": "0.4.0"}));

    plugin.call("ADD", Some(&path), &netconf).assert_success();
    let installed = tables(&netns);
    assert!(installed.contains("INTERCEPT_EGRESS"), "{installed}");
    plugin.call("ADD", Some(&path), &netconf).assert_success();
    assert_eq!(tables(&netns), installed, "a second ADD changes nothing");
    plugin.call("CHECK", Some(&path), &netconf).assert_success();

    let redirect = installed.lines().find(|l| l.starts_with("-A INTERCEPT_EGRESS") && l.contains("REDIRECT")).unwrap();
    // The rule's comment has spaces: delete it by number.
    let number =
        installed.lines().filter(|l| l.starts_with("-A INTERCEPT_EGRESS")).position(|l| l == redirect).unwrap() + 1;
    netns.exec("iptables", &["-t", "nat", "-D", "INTERCEPT_EGRESS", &number.to_string()]);
    let drift = plugin.call("CHECK", Some(&path), &netconf);
    assert_eq!(drift.error_code(), u64::from(intercept::cni::code::DRIFT));
    assert!(drift.json()["details"].as_str().unwrap().contains("INTERCEPT_EGRESS"), "{drift:?}");
    plugin.call("ADD", Some(&path), &netconf).assert_success();
    assert_eq!(tables(&netns), installed, "ADD repairs the drift");

    for _ in 0..2 {
        let del = plugin.call("DEL", Some(&path), &netconf);
        del.assert_success();
        assert_eq!(del.stdout, "", "DEL prints nothing on success");
        nothing_left(&netns);
    }
    let gone = format!("/run/netns/intercept-cni-vanished-{}", std::process::id());
    plugin.call("DEL", Some(Path::new(&gone)), &netconf).assert_success();
    plugin.call("DEL", None, &netconf).assert_success();
    let add_gone = plugin.call("ADD", Some(Path::new(&gone)), &netconf);
    assert_eq!(add_gone.error_code(), u64::from(intercept::cni::code::CONTAINER_UNKNOWN));
    // DEL comes even when ADD failed on a bad configuration, and must not fail on it.
    plugin.call("DEL", Some(&path), &with(&agent_netconf(&config()), json!({"proxyEgressPort": "x"}))).assert_success();
}

/// Every kind of bad input is refused with the CNI error format and a non-zero exit, and the
/// namespace's tables are as they were.
#[test]
#[ignore = "privileged (root, namespaces): `cargo xtask test` runs it"]
fn bad_input_changes_nothing() {
    require_netns_privileges("bad_input_changes_nothing");
    let plugin = PluginDir::new("bad_input_changes_nothing");
    let netns = Netns::create("cni");
    let path = netns.path();
    let before = tables(&netns);
    let good = agent_netconf(&config());
    let table: Vec<(&str, Vec<u8>, u32)> = vec![
        ("garbage", b"\x00garbage{".to_vec(), 6),
        ("empty stdin", Vec::new(), 6),
        ("deeply nested", "[".repeat(100_000).into_bytes(), 6),
        ("no ignoredUID or ignoredGID", with(&good, json!({"ignoredUID": null, "ignoredGID": null})), 7),
        ("no proxyEgressPort", with(&good, json!({"proxyEgressPort": null})), 7),
        ("appPorts without proxyIngressPort", with(&good, json!({"proxyIngressPort": ""})), 7),
        ("proxyIngressPort without appPorts", with(&good, json!({"appPorts": null})), 7),
        ("a port out of range", with(&good, json!({"appPorts": ["9080", "65536"]})), 7),
        ("a bad CIDR", with(&good, json!({"egressIgnoredIPs": ["10.0.0.0/40"]})), 7),
        ("the eBPF backend", with(&good, json!({"backend": "ebpf"})), 7),
        ("an unknown CNI version", with(&good, json!({"cniVersion": "0.1.0"})), 1),
        ("CHECK on 0.3.0", good.to_string().into_bytes(), 1),
    ];
    for (name, stdin, code) in table {
        let command = if name.starts_with("CHECK") { "CHECK" } else { "ADD" };
        let outcome = plugin.call(command, Some(&path), &stdin);
        assert_eq!(outcome.error_code(), u64::from(code), "{name}: {outcome:?}");
        let error = outcome.json();
        assert!(error["msg"].as_str().is_some_and(|m| !m.is_empty()), "{name}: {error}");
        assert_eq!(tables(&netns), before, "{name}: nothing may change");
    }
    let all = plugin.call(
        "ADD",
        Some(&path),
        &with(&good, json!({"ignoredUID": "x", "proxyEgressPort": "0", "egressIgnoredIPs": ["nope"]})),
    );
    let details = all.json()["details"].as_str().unwrap().to_owned();
    for field in ["ignoredUID = \"x\"", "proxyEgressPort = \"0\"", "egressIgnoredIPs = \"nope"] {
        assert!(details.contains(field), "every problem at once, naming field and value: {details}");
    }
    assert_eq!(tables(&netns), before);
}

/// What the ECS agent asks at start, and what needs no namespace.
#[test]
fn capabilities_version_and_a_missing_environment() {
    let plugin = PluginDir::new("capabilities_version_and_a_missing_environment");
    let capabilities = plugin.run_args(&["--capabilities"]);
    capabilities.assert_success();
    assert_eq!(capabilities.json(), json!({}), "the reference plugin's answer");
    let version = plugin.call("VERSION", None, b"{\"cniVersion\": \"1.0.0\"}");
    version.assert_success();
    assert_eq!(version.json()["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"]));
    let nothing = plugin.run_args(&[]);
    assert_eq!(nothing.error_code(), u64::from(intercept::cni::code::INVALID_ENVIRONMENT));
}

/// `CNI_NETNS=/proc/<pid>/ns/net` of a process holding root's full capability set: ADD drops
/// capabilities that process holds, so it opens the namespace before it does; ADD and DEL
/// succeed, and DEL leaves nothing.
#[test]
#[ignore = "privileged (root, namespaces): `cargo xtask test` runs it"]
fn a_namespace_named_by_a_process_holding_every_capability() {
    let test = "a_namespace_named_by_a_process_holding_every_capability";
    require_netns_privileges(test);
    let plugin = PluginDir::new(test);
    let netns = Netns::create("cni");
    let sleeper = Sleeper::start(&netns);
    let capabilities = |pid: &str, set: &str| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix(set)).unwrap().trim().to_owned()
    };
    let root = capabilities("self", "CapEff:");
    assert_eq!(capabilities(&sleeper.pid().to_string(), "CapPrm:"), root, "the process holds root's capabilities");
    let path = std::path::PathBuf::from(format!("/proc/{}/ns/net", sleeper.pid()));
    let netconf = serde_json::to_vec(&agent_netconf(&config())).unwrap();
    plugin.call("ADD", Some(&path), &netconf).assert_success();
    assert!(tables(&netns).contains("INTERCEPT_EGRESS"), "installed in the process's namespace");
    for _ in 0..2 {
        plugin.call("DEL", Some(&path), &netconf).assert_success();
        nothing_left(&netns);
    }
}
