//! The CNI protocol's pure part: the environment, the network configuration (the reference
//! plugin's own test cases re-expressed as a table, and the agent's exact output), results
//! and errors.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::netconf::{ENV_BACKEND, ENV_ENABLE_IPV6, parse};
use super::{Command, Error, add_result, capabilities, code, read_request, version_result};
use crate::backend::IptablesMode as Mode;
use crate::backend::{Choice, Kind};
use crate::config::{Ingress, IngressFallback, PortRange, PortSet, ProxyConfig};

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |name| vars.get(name).cloned()
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A netconfig as the ECS agent writes it for the seed task (`ecscni.AppMeshConfig` through
/// libcni, which adds `name`): strings, arrays of strings, an empty `proxyIngressPort` and a
/// null `appPorts` when there is no ingress, the metadata IPs appended, no `enableIPv6`.
fn agent_netconf(extra: Value) -> Vec<u8> {
    let mut netconf = json!({
        "type": "aws-appmesh",
        "cniVersion": "0.3.0",
        "ignoredUID": "1337",
        "proxyIngressPort": "15000",
        "proxyEgressPort": "15001",
        "appPorts": ["9080"],
        "egressIgnoredPorts": ["22"],
        "egressIgnoredIPs": ["169.254.170.2", "169.254.169.254"],
        "name": "network-name"
    });
    for (k, v) in extra.as_object().expect("an object") {
        netconf[k] = v.clone();
    }
    serde_json::to_vec(&netconf).unwrap()
}

fn config(netconf: &[u8]) -> Result<ProxyConfig, Error> {
    parse(netconf, no_env)?.validated().map(|v| v.config)
}

fn details(netconf: &[u8]) -> String {
    let e = config(netconf).expect_err("invalid");
    assert_eq!(e.code, code::INVALID_NETCONF, "{e}");
    e.details
}

fn ports(list: &[u16]) -> PortSet {
    PortSet::from_ranges(list.iter().map(|&p| PortRange::single(p)))
}

#[test]
fn the_agents_netconfig_is_the_seed_configuration_ipv4_only() {
    let config = config(&agent_netconf(json!({}))).unwrap();
    assert_eq!(config.ignored_uids, [1337]);
    assert!(config.ignored_gids.is_empty());
    assert_eq!(config.proxy_egress_port, 15001);
    assert_eq!(config.ingress, Some(Ingress { proxy_port: 15000, app_ports: ports(&[9080]) }));
    assert_eq!(config.egress_ignored_ports, ports(&[22]));
    assert_eq!(config.egress_ignored_ips.len(), 2);
    assert!(!config.ipv6, "the reference plugin intercepts IPv6 only when enableIPv6 is true");
}

/// The reference plugin's `e2eTests/testdata` and `config/netconfig_test.go` cases.
#[test]
fn the_reference_plugins_cases() {
    // valid_ingress_egress
    let both = config(&agent_netconf(json!({"appPorts": ["5000", "5001"], "egressIgnoredPorts": ["80", "81"]})));
    let both = both.unwrap();
    assert_eq!(both.ingress.clone().unwrap().app_ports, ports(&[5000, 5001]));
    assert_eq!(both.effective_ignored_ports(), ports(&[22, 80, 81]), "port 22 is always exempt");
    // valid_without_ingress: the agent writes "" and null for the missing pair.
    let egress_only = config(&agent_netconf(json!({"proxyIngressPort": "", "appPorts": null}))).unwrap();
    assert_eq!(egress_only.ingress, None);
    // an empty app port list, as the agent's strings.Split gives for "": one empty string.
    let empty_app_port = config(&agent_netconf(json!({"proxyIngressPort": "", "appPorts": [""]}))).unwrap();
    assert_eq!(empty_app_port.ingress, None);
    // valid_with_multiports: 20 ports, where the reference keeps 15; all honoured.
    let twenty: Vec<String> = (6000..6020).map(|p| p.to_string()).collect();
    let many = config(&agent_netconf(json!({"appPorts": twenty, "egressIgnoredPorts": twenty}))).unwrap();
    assert_eq!(many.ingress.clone().unwrap().app_ports.port_count(), 20);
    assert_eq!(many.effective_ignored_ports().port_count(), 21, "the 20 and port 22");
    // ranges and an upper bound, which the reference has neither of.
    let ranged = config(&agent_netconf(json!({"appPorts": ["8000-8010"]}))).unwrap();
    assert_eq!(ranged.ingress.unwrap().app_ports.port_count(), 11);
    assert!(details(&agent_netconf(json!({"appPorts": ["70000"]}))).contains("appPorts = \"70000\""));
}

/// Every missing field, with the reference's conditions; each message names the netconfig
/// field, not the ECS property.
#[test]
fn missing_fields() {
    let table = [
        (json!({"ignoredUID": null}), "ignoredUID / ignoredGID: missing"),
        (json!({"ignoredUID": ""}), "ignoredUID / ignoredGID: missing"),
        (json!({"proxyEgressPort": null}), "proxyEgressPort: missing"),
        (json!({"proxyEgressPort": ""}), "proxyEgressPort: missing"),
        (json!({"proxyIngressPort": ""}), "proxyIngressPort"),
        (json!({"appPorts": null}), "appPorts"),
    ];
    for (change, expected) in table {
        let details = details(&agent_netconf(change.clone()));
        assert!(details.contains(expected), "{change}: {details}");
    }
}

/// Every problem at once, each naming its field and value; the snapshot is what the ECS
/// agent logs.
#[test]
fn every_problem_at_once() {
    let netconf = agent_netconf(json!({
        "ignoredUID": "root",
        "ignoredGid": "1338",
        "proxyEgressPort": 15001,
        "appPorts": ["9080", 9081],
        "egressIgnoredPorts": "22,80",
        "egressIgnoredIPs": ["169.254.170.2", "10.0.0.0/33"],
        "enableIPv6": "true",
        "backend": "ebpf",
        "iptablesMode": "xtables",
        "prevResult": [],
    }));
    let e = config(&netconf).unwrap_err();
    insta::assert_snapshot!(e.render("0.3.0"));
}

#[test]
fn undecodable_input_and_versions() {
    let table: [(&[u8], u32, &str); 7] = [
        (b"", code::DECODE_FAILURE, "not JSON"),
        (b"garbage\x00\xff", code::DECODE_FAILURE, "not JSON"),
        (b"[1, 2]", code::DECODE_FAILURE, "must be a JSON object"),
        (br#"{"type": "aws-appmesh"}"#, code::INVALID_NETCONF, "cniVersion: missing"),
        (br#"{"cniVersion": 3}"#, code::INVALID_NETCONF, "must be a string"),
        (br#"{"cniVersion": "0.2.0"}"#, code::INCOMPATIBLE_VERSION, "incompatible CNI version"),
        (br#"{"cniVersion": "2.0.0"}"#, code::INCOMPATIBLE_VERSION, "incompatible CNI version"),
    ];
    for (input, expected_code, expected) in table {
        let e = parse(input, no_env).expect_err("refused");
        assert_eq!(e.code, expected_code, "{input:?}: {e}");
        assert!(e.msg.contains(expected), "{input:?}: {e}");
    }
    let huge = vec![b' '; crate::config::source::MAX_INPUT_BYTES + 1];
    assert_eq!(parse(&huge, no_env).unwrap_err().code, code::DECODE_FAILURE);
    for version in super::SUPPORTED_VERSIONS {
        let netconf = parse(&agent_netconf(json!({"cniVersion": version})), no_env).unwrap();
        assert_eq!(netconf.cni_version, version);
    }
}

#[test]
fn backend_and_ipv6_from_the_netconfig_else_the_environment() {
    let plain = agent_netconf(json!({}));
    let parsed = parse(&plain, no_env).unwrap();
    assert_eq!((parsed.backend, parsed.iptables_mode), (Choice::Use(Kind::Iptables), None));

    let from_env = parse(&plain, env(&[(ENV_BACKEND, "nftables"), (ENV_ENABLE_IPV6, "1")])).unwrap();
    assert_eq!(from_env.backend, Choice::Use(Kind::Nftables));
    assert!(from_env.validated().unwrap().config.ipv6);

    let netconf = agent_netconf(json!({"backend": "auto", "enableIPv6": false, "iptablesMode": "legacy"}));
    let given = parse(&netconf, env(&[(ENV_BACKEND, "nftables"), (ENV_ENABLE_IPV6, "true")])).unwrap();
    assert_eq!((given.backend, given.iptables_mode), (Choice::Auto, Some(Mode::Legacy)));
    assert!(!given.validated().unwrap().config.ipv6, "the netconfig's field beats the environment");

    let bad = parse(&plain, env(&[(ENV_BACKEND, "ebpf"), (ENV_ENABLE_IPV6, "maybe")])).unwrap();
    let details = bad.validated().unwrap_err().details;
    assert!(details.contains("INTERCEPT_CNI_BACKEND = \"ebpf\": eBPF is not available"), "{details}");
    assert!(details.contains("INTERCEPT_CNI_ENABLE_IPV6 = \"maybe\""), "{details}");
}

/// DEL must work whatever is wrong with the properties: parsing keeps the problems for ADD.
#[test]
fn del_reads_a_configuration_with_bad_properties() {
    let netconf = parse(&agent_netconf(json!({"proxyEgressPort": "x", "backend": "bogus"})), no_env).unwrap();
    assert_eq!(netconf.problems.len(), 1);
    assert!(netconf.validated().is_err());
}

#[test]
fn the_environment() {
    let add =
        [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/proc/1/ns/net"), ("CNI_IFNAME", "eth0")];
    let request = read_request(env(&add)).unwrap();
    assert_eq!(request.command, Command::Add);
    assert_eq!(request.netns.as_deref(), Some(std::path::Path::new("/proc/1/ns/net")));

    let del = read_request(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")])).unwrap();
    assert_eq!((del.command, del.netns), (Command::Del, None), "DEL may come after the namespace is gone");
    assert_eq!(read_request(env(&[("CNI_COMMAND", "VERSION")])).unwrap().command, Command::Version);

    let table: [(&[(&str, &str)], &str); 4] = [
        (&[], "CNI_COMMAND is not set"),
        (&[("CNI_COMMAND", "add")], "unknown command"),
        (&[("CNI_COMMAND", "CHECK"), ("CNI_NETNS", "")], "CNI_CONTAINERID is not set"),
        (
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "e"), ("CNI_NETNS", "ns")],
            "absolute path",
        ),
    ];
    for (vars, expected) in table {
        let e = read_request(env(vars)).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(format!("{e}").contains(expected), "{vars:?}: {e}");
    }
    let all = read_request(env(&[("CNI_COMMAND", "CHECK")])).unwrap_err();
    assert_eq!(all.details.lines().count(), 3, "every missing variable at once: {all}");
}

#[test]
fn results_pass_the_previous_one_through() {
    let alone = parse(&agent_netconf(json!({})), no_env).unwrap();
    assert_eq!(add_result(&alone), "{\"cniVersion\":\"0.3.0\",\"dns\":{}}\n");
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.88.0.2/16"}]});
    let chained = parse(&agent_netconf(json!({"cniVersion": "1.0.0", "prevResult": prev})), no_env).unwrap();
    let result: Value = serde_json::from_str(&add_result(&chained)).unwrap();
    assert_eq!(result, prev);
    insta::assert_snapshot!(format!("{}{}", version_result(), capabilities()), @r#"
    {"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}
    {}
    "#);
    let e = Error::new(code::DRIFT, "not installed", "");
    assert_eq!(e.render("0.4.0"), "{\"cniVersion\":\"0.4.0\",\"code\":102,\"msg\":\"not installed\"}\n");
}

/// intercept's own properties in a chained netconfig: ProxyDNSPort as a string, the included
/// networks as an array of strings, several ids in one string, the ingress fallback.
#[test]
fn the_extensions_in_a_netconfig() {
    let netconf = agent_netconf(json!({
        "ignoredUID": "1337,1338",
        "proxyDNSPort": "15053",
        "egressIncludedIPs": ["10.0.0.0/8", "2001:db8::/32"],
        "ingressFallback": "app",
        "enableIPv6": true,
    }));
    let config = config(&netconf).unwrap();
    assert_eq!(config.ignored_uids, [1337, 1338]);
    assert_eq!(config.ingress_fallback, IngressFallback::App);
    assert_eq!(config.proxy_dns_port, Some(15053));
    assert_eq!(config.egress_included_ips.map(|n| n.len()), Some(2));
    let wrong = details(&agent_netconf(json!({"egressIncludedIPs": "10.0.0.0/8"})));
    assert!(wrong.contains("egressIncludedIPs: must be an array of strings"), "{wrong}");
}
