//! One table row per rule: the input, and every diagnostic exactly as the user sees it.

use super::*;
use crate::config::{Diagnostic, Property, Severity};

const BAD_PORT: &str = "invalid port: must be a decimal number from 1 to 65535";
const FALLBACK: &str = "invalid ingress fallback: must be refuse or app";
const BAD_ID: &str = "invalid id: must be a decimal number from 0 to 4294967295";
const MISSING_IDS: &str = "error: IgnoredUID / IgnoredGID: missing: at least one of IgnoredUID and IgnoredGID is \
    required (the proxy runs as that user or group, and its own traffic must not be redirected back to it)";
const MISSING_EGRESS: &str =
    "error: ProxyEgressPort: missing: the port outbound traffic is redirected to is required (15001 by convention)";
const ENTRY: &str = "specified: must be a decimal number from 1 to 65535";
const IP: &str = "specified: expected an IPv4 or IPv6 address, or a CIDR block such as 10.0.0.0/8";

const SEVERAL: &str = "several ids: ECS's interception takes one, so this works only where intercept installs the task";

fn extension(property: &str) -> String {
    format!(
        "{property} is intercept's own extension: ECS's interception ignores it, so it takes effect only where \
         intercept installs the task (its init container, daemon or CNI plugin)"
    )
}

fn entry(e: &str) -> String {
    format!("invalid port [{e}] {ENTRY}")
}

type Case<'a> = (&'a [(&'a str, Option<&'a str>)], Vec<String>);

fn bad_cases() -> Vec<Case<'static>> {
    let e = |field: &str, value: &str, message: &str| format!("error: {field} = {value:?}: {message}");
    let w = |field: &str, value: &str, message: &str| format!("warning: {field} = {value:?}: {message}");
    vec![
        // ProxyEgressPort
        (&[("ProxyEgressPort", Some("70000"))], vec![e("ProxyEgressPort", "70000", BAD_PORT)]),
        (&[("ProxyEgressPort", Some("0"))], vec![e("ProxyEgressPort", "0", BAD_PORT)]),
        (&[("ProxyEgressPort", Some("-1"))], vec![e("ProxyEgressPort", "-1", BAD_PORT)]),
        (&[("ProxyEgressPort", Some("+15001"))], vec![e("ProxyEgressPort", "+15001", BAD_PORT)]),
        (&[("ProxyEgressPort", Some("0x3a99"))], vec![e("ProxyEgressPort", "0x3a99", BAD_PORT)]),
        (&[("ProxyEgressPort", Some("15 001"))], vec![e("ProxyEgressPort", "15 001", BAD_PORT)]),
        (&[("ProxyEgressPort", Some("15001.0"))], vec![e("ProxyEgressPort", "15001.0", BAD_PORT)]),
        (&[("ProxyEgressPort", None)], vec![MISSING_EGRESS.into()]),
        (&[("ProxyEgressPort", Some(""))], vec![MISSING_EGRESS.into()]),
        (&[("ProxyEgressPort", Some("  "))], vec![MISSING_EGRESS.into()]),
        (
            &[("ProxyEgressPort", Some("22")), ("EgressIgnoredPorts", None)],
            vec![e(
                "ProxyEgressPort",
                "22",
                "port 22 (SSH) is always exempt from redirection unless implicit exemptions are turned off \
                 (--no-implicit-exemptions), so it cannot be the port outbound traffic is redirected to",
            )],
        ),
        // ProxyIngressPort
        (&[("ProxyIngressPort", Some("abc"))], vec![e("ProxyIngressPort", "abc", BAD_PORT)]),
        (&[("ProxyIngressPort", Some("65536"))], vec![e("ProxyIngressPort", "65536", BAD_PORT)]),
        (
            &[("ProxyIngressPort", Some("15001"))],
            vec![e(
                "ProxyIngressPort",
                "15001",
                "same port as ProxyEgressPort (15001): inbound and outbound traffic need separate proxy listeners",
            )],
        ),
        // IgnoredUID / IgnoredGID
        (&[("IgnoredUID", None)], vec![MISSING_IDS.into()]),
        (&[("IgnoredUID", Some(""))], vec![MISSING_IDS.into()]),
        (&[("IgnoredUID", Some("-1"))], vec![e("IgnoredUID", "-1", BAD_ID)]),
        (&[("IgnoredUID", Some("0x539"))], vec![e("IgnoredUID", "0x539", BAD_ID)]),
        (&[("IgnoredUID", Some("4294967296"))], vec![e("IgnoredUID", "4294967296", BAD_ID)]),
        (
            &[("IgnoredUID", Some("13 37"))],
            vec![e("IgnoredUID", "13 37", &format!("{BAD_ID} (separate several ids with commas)"))],
        ),
        // Several ids
        (&[("IgnoredUID", Some("1337,1338"))], vec![w("IgnoredUID", "1337,1338", SEVERAL)]),
        (&[("IgnoredUID", Some("1337,x,1338"))], vec![e("IgnoredUID", "1337,x,1338", &format!("{BAD_ID}: [x]"))]),
        (&[("IgnoredGID", Some("1338,1338"))], vec![w("IgnoredGID", "1338,1338", "[1338] is listed more than once")]),
        // ProxyDNSPort (an extension)
        (
            &[("ProxyDNSPort", Some("0"))],
            vec![w("ProxyDNSPort", "0", &extension("ProxyDNSPort")), e("ProxyDNSPort", "0", BAD_PORT)],
        ),
        (
            &[("ProxyDNSPort", Some("15001"))],
            vec![
                w("ProxyDNSPort", "15001", &extension("ProxyDNSPort")),
                e("ProxyDNSPort", "15001", "same port as ProxyEgressPort (15001): DNS needs a listener of its own"),
            ],
        ),
        (
            &[("ProxyDNSPort", Some("9080"))],
            vec![
                w("ProxyDNSPort", "9080", &extension("ProxyDNSPort")),
                e(
                    "ProxyDNSPort",
                    "9080",
                    "9080 is one of AppPorts: the proxy's DNS port cannot be an application port",
                ),
            ],
        ),
        (
            &[("ProxyDNSPort", Some("15053")), ("EgressIgnoredPorts", Some("22,53"))],
            vec![
                w("ProxyDNSPort", "15053", &extension("ProxyDNSPort")),
                w(
                    "EgressIgnoredPorts",
                    "22,53",
                    "contains 53: DNS capture (ProxyDNSPort 15053) is off, and DNS goes to its servers directly",
                ),
            ],
        ),
        // IngressFallback (an extension)
        (
            &[("IngressFallback", Some("App"))],
            vec![w("IngressFallback", "App", &extension("IngressFallback")), e("IngressFallback", "App", FALLBACK)],
        ),
        (
            &[("IngressFallback", Some("drop"))],
            vec![w("IngressFallback", "drop", &extension("IngressFallback")), e("IngressFallback", "drop", FALLBACK)],
        ),
        (&[("IngressFallback", Some("app"))], vec![w("IngressFallback", "app", &extension("IngressFallback"))]),
        // EgressIncludedIPs (an extension)
        (
            &[("EgressIncludedIPs", Some("10.0.0.0/33"))],
            vec![
                w("EgressIncludedIPs", "10.0.0.0/33", &extension("EgressIncludedIPs")),
                e("EgressIncludedIPs", "10.0.0.0/33", &format!("invalid IP or CIDR block [10.0.0.0/33] {IP}")),
            ],
        ),
        (&[("IgnoredUID", Some("envoy"))], vec![e("IgnoredUID", "envoy", BAD_ID)]),
        (&[("IgnoredGID", Some("abc"))], vec![e("IgnoredGID", "abc", BAD_ID)]),
        (&[("IgnoredUID", None), ("IgnoredGID", Some("+1"))], vec![e("IgnoredGID", "+1", BAD_ID)]),
        // ProxyIngressPort and AppPorts come together
        (
            &[("AppPorts", None)],
            vec![
                "error: AppPorts: missing: ProxyIngressPort is set but AppPorts is not; give both to intercept \
                  inbound traffic, or neither for outbound only"
                    .into(),
            ],
        ),
        (
            &[("AppPorts", Some(" , "))],
            vec![
                "error: AppPorts: missing: ProxyIngressPort is set but AppPorts is not; give both to intercept \
                  inbound traffic, or neither for outbound only"
                    .into(),
            ],
        ),
        (
            &[("ProxyIngressPort", None)],
            vec![
                "error: ProxyIngressPort: missing: AppPorts is set but ProxyIngressPort is not; give both to \
                  intercept inbound traffic, or neither for outbound only"
                    .into(),
            ],
        ),
        // AppPorts entries
        (&[("AppPorts", Some("9080,abc"))], vec![e("AppPorts", "9080,abc", &entry("abc"))]),
        (&[("AppPorts", Some("0"))], vec![e("AppPorts", "0", &entry("0"))]),
        (&[("AppPorts", Some("9080 9081"))], vec![e("AppPorts", "9080 9081", &entry("9080 9081"))]),
        (&[("AppPorts", Some("70000-70010"))], vec![e("AppPorts", "70000-70010", &entry("70000"))]),
        (
            &[("AppPorts", Some("9080-9000"))],
            vec![e(
                "AppPorts",
                "9080-9000",
                "invalid port range [9080-9000] specified: the first port is greater than the last",
            )],
        ),
        (
            &[("AppPorts", Some("8000-"))],
            vec![e(
                "AppPorts",
                "8000-",
                "invalid port range [8000-] specified: must be two ports joined by `-`, e.g. 8000-8100",
            )],
        ),
        (
            &[("AppPorts", Some("x,9080,y"))],
            vec![e("AppPorts", "x,9080,y", &entry("x")), e("AppPorts", "x,9080,y", &entry("y"))],
        ),
        // AppPorts may not hold the proxy's ports
        (
            &[("AppPorts", Some("9080,15000"))],
            vec![e(
                "AppPorts",
                "9080,15000",
                "contains ProxyIngressPort (15000): AppPorts are the ports the application listens on, not the \
                 proxy's; inbound connections to this proxy listener would be redirected to ProxyIngressPort",
            )],
        ),
        (
            &[("AppPorts", Some("15001"))],
            vec![e(
                "AppPorts",
                "15001",
                "contains ProxyEgressPort (15001): AppPorts are the ports the application listens on, not the \
                 proxy's; inbound connections to this proxy listener would be redirected to ProxyIngressPort",
            )],
        ),
        (
            &[("AppPorts", Some("14000-16000"))],
            vec![
                e(
                    "AppPorts",
                    "14000-16000",
                    "contains ProxyIngressPort (15000): AppPorts are the ports the application listens on, not \
                     the proxy's; inbound connections to this proxy listener would be redirected to ProxyIngressPort",
                ),
                e(
                    "AppPorts",
                    "14000-16000",
                    "contains ProxyEgressPort (15001): AppPorts are the ports the application listens on, not the \
                     proxy's; inbound connections to this proxy listener would be redirected to ProxyIngressPort",
                ),
            ],
        ),
        // EgressIgnoredPorts
        (&[("EgressIgnoredPorts", Some("x"))], vec![e("EgressIgnoredPorts", "x", &entry("x"))]),
        (&[("EgressIgnoredPorts", Some("22,65536"))], vec![e("EgressIgnoredPorts", "22,65536", &entry("65536"))]),
        (
            &[("EgressIgnoredPorts", Some("100-90"))],
            vec![e(
                "EgressIgnoredPorts",
                "100-90",
                "invalid port range [100-90] specified: the first port is greater than the last",
            )],
        ),
        (
            &[("EgressIgnoredPorts", Some("22,15001"))],
            vec![e(
                "EgressIgnoredPorts",
                "22,15001",
                "contains ProxyEgressPort (15001): every outbound connection to port 15001, on any host, would \
                 bypass the proxy; the proxy's own port never needs exempting (connections to the local proxy are \
                 never redirected)",
            )],
        ),
        (
            &[("EgressIgnoredPorts", Some("15000-15010"))],
            vec![e(
                "EgressIgnoredPorts",
                "15000-15010",
                "contains ProxyEgressPort (15001): every outbound connection to port 15001, on any host, would \
                 bypass the proxy; the proxy's own port never needs exempting (connections to the local proxy are \
                 never redirected)",
            )],
        ),
        // EgressIgnoredIPs
        (
            &[("EgressIgnoredIPs", Some("10.0.0.256"))],
            vec![e("EgressIgnoredIPs", "10.0.0.256", &format!("invalid IP or CIDR block [10.0.0.256] {IP}"))],
        ),
        (
            &[("EgressIgnoredIPs", Some("10.0.0.0/33"))],
            vec![e("EgressIgnoredIPs", "10.0.0.0/33", &format!("invalid IP or CIDR block [10.0.0.0/33] {IP}"))],
        ),
        (
            &[("EgressIgnoredIPs", Some("example.com"))],
            vec![e("EgressIgnoredIPs", "example.com", &format!("invalid IP or CIDR block [example.com] {IP}"))],
        ),
        (
            &[("EgressIgnoredIPs", Some("fe80::1%eth0"))],
            vec![e("EgressIgnoredIPs", "fe80::1%eth0", &format!("invalid IP or CIDR block [fe80::1%eth0] {IP}"))],
        ),
        (
            &[("EgressIgnoredIPs", Some("10.0.0.1, bad ,2001:db8::zz"))],
            vec![
                e("EgressIgnoredIPs", "10.0.0.1, bad ,2001:db8::zz", &format!("invalid IP or CIDR block [bad] {IP}")),
                e(
                    "EgressIgnoredIPs",
                    "10.0.0.1, bad ,2001:db8::zz",
                    &format!("invalid IP or CIDR block [2001:db8::zz] {IP}"),
                ),
            ],
        ),
        // Property names
        (
            &[("IgnoreUID", Some("1337"))],
            vec![e("IgnoreUID", "1337", "unknown property (at properties[6]): did you mean `IgnoredUID`?")],
        ),
        (
            &[("ignoreduid", Some("1337"))],
            vec![e(
                "ignoreduid",
                "1337",
                "unknown property (at properties[6]): did you mean `IgnoredUID`? (property names are case-sensitive)",
            )],
        ),
        (
            &[("EgressIgnoredIP", Some("10.0.0.1"))],
            vec![e(
                "EgressIgnoredIP",
                "10.0.0.1",
                "unknown property (at properties[6]): did you mean `EgressIgnoredIPs`?",
            )],
        ),
        (
            &[("APPMESH_APP_PORTS", Some("8080"))],
            vec![e("APPMESH_APP_PORTS", "8080", "unknown property (at properties[6]): did you mean `AppPorts`?")],
        ),
        (
            &[("Foo", Some("1"))],
            vec![e(
                "Foo",
                "1",
                "unknown property (at properties[6]): the properties are IgnoredUID, IgnoredGID, ProxyIngressPort, \
                 ProxyEgressPort, AppPorts, EgressIgnoredIPs, EgressIgnoredPorts, ProxyDNSPort, EgressIncludedIPs, \
                 IngressFallback",
            )],
        ),
        (
            &[("", Some("1"))],
            vec![e(
                "properties[6]",
                "1",
                "unknown property (at properties[6]): the properties are IgnoredUID, IgnoredGID, ProxyIngressPort, \
                 ProxyEgressPort, AppPorts, EgressIgnoredIPs, EgressIgnoredPorts, ProxyDNSPort, EgressIncludedIPs, \
                 IngressFallback",
            )],
        ),
        // Warnings: accepted, but worth knowing.
        (&[("AppPorts", Some("9080,9080"))], vec![w("AppPorts", "9080,9080", "[9080] is listed more than once")]),
        (
            &[("AppPorts", Some("8000-8100,8050-8200"))],
            vec![w("AppPorts", "8000-8100,8050-8200", "[8050-8200] overlaps [8000-8100]: the two are merged")],
        ),
        (
            &[("EgressIgnoredIPs", Some("10.1.2.3/8"))],
            vec![w("EgressIgnoredIPs", "10.1.2.3/8", "CIDR block [10.1.2.3/8] has host bits set: using 10.0.0.0/8")],
        ),
        (
            &[("EgressIgnoredIPs", Some("::ffff:10.1.0.0/112"))],
            vec![w(
                "EgressIgnoredIPs",
                "::ffff:10.1.0.0/112",
                "[::ffff:10.1.0.0/112] is an IPv4-mapped IPv6 block: connections to such addresses are IPv4 \
                 connections and are decided as IPv4, so using 10.1.0.0/16",
            )],
        ),
        (
            &[("EgressIgnoredIPs", Some("10.0.0.1,10.0.0.1/32"))],
            vec![w("EgressIgnoredIPs", "10.0.0.1,10.0.0.1/32", "[10.0.0.1/32] is listed more than once")],
        ),
    ]
}

#[test]
fn every_rule_reports_field_value_and_message() {
    let cases = bad_cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for (changes, want) in cases {
        let props = seed_with(changes);
        let got = render(&check(&props));
        assert_eq!(got, want, "changes {changes:?}");
    }
}

#[test]
fn the_table_has_at_least_forty_errors() {
    let errors = bad_cases().iter().filter(|(_, want)| want.iter().any(|d| d.starts_with("error:"))).count();
    assert!(errors >= 40, "{errors}");
}

#[test]
fn duplicated_property_names_both_places() {
    let mut props = seed_with(&[]);
    props.push(("ProxyEgressPort".into(), "16001".into()));
    assert_eq!(
        render(&check(&props)),
        [
            r#"error: ProxyEgressPort = "16001": ProxyEgressPort is given more than once (at properties[2] and at properties[6]): remove one"#
        ]
    );
    // Even when both say the same thing.
    let mut props = seed_with(&[]);
    props.insert(0, ("IgnoredUID".into(), "1337".into()));
    assert_eq!(
        render(&check(&props)),
        [
            r#"error: IgnoredUID = "1337": IgnoredUID is given more than once (at properties[0] and at properties[1]): remove one"#
        ]
    );
}

#[test]
fn proxy_type() {
    let props = seed_with(&[]);
    let case =
        |t: Option<&str>| render(&validate(&parse_proxy_configuration(&proxy_doc(t, &props), "p.json").unwrap().raw));
    assert_eq!(case(Some("APPMESH")), Vec::<String>::new());
    assert_eq!(
        case(Some("appmesh")),
        [r#"error: type = "appmesh": unsupported proxy type: did you mean `APPMESH`? (the type is case-sensitive)"#]
    );
    assert_eq!(
        case(Some(" APPMESH")),
        [r#"error: type = " APPMESH": unsupported proxy type: did you mean `APPMESH`? (the type is case-sensitive)"#]
    );
    assert_eq!(
        case(Some("ISTIO")),
        [r#"error: type = "ISTIO": unsupported proxy type: the only proxy type is APPMESH"#]
    );
    assert_eq!(case(Some("")), [r#"error: type = "": unsupported proxy type: the only proxy type is APPMESH"#]);
    // ECS's API has `type` optional, defaulting to APPMESH.
    let result = validate(&parse_proxy_configuration(&proxy_doc(None, &props), "p.json").unwrap().raw);
    assert_eq!(
        render(&result),
        [
            r#"warning: type: missing: ECS treats a proxyConfiguration without a type as APPMESH; write "type": "APPMESH""#
        ]
    );
    assert_eq!(result.unwrap().config, seed_config());
}

#[test]
fn more_than_fifteen_ignored_ports_are_all_honoured() {
    let list = (1..=20).map(|p| (1000 + p).to_string()).collect::<Vec<_>>().join(",");
    let result = check(&seed_with(&[("EgressIgnoredPorts", Some(&list))])).unwrap();
    assert_eq!(
        render(&Ok(result.clone())),
        [format!(
            "warning: EgressIgnoredPorts = {list:?}: 20 entries: ECS registers at most 15 EgressIgnoredPorts (and the \
             reference plugin silently drops the rest); intercept honours all 20"
        )]
    );
    assert_eq!(result.config.egress_ignored_ports.port_count(), 20);
    assert!(result.config.egress_ignored_ports.contains(1020));
    // A range is one entry, however many ports it holds; exactly 15 entries do not warn.
    let list = format!("1-100,{}", (2..=15).map(|p| (1000 + p).to_string()).collect::<Vec<_>>().join(","));
    let result = check(&seed_with(&[("EgressIgnoredPorts", Some(&list))])).unwrap();
    assert_eq!(result.warnings, vec![]);
    assert_eq!(result.config.egress_ignored_ports.port_count(), 114);
}

#[test]
fn ipv6_blocks_while_ipv6_is_off_warn() {
    let mut raw = raw(&seed_with(&[("EgressIgnoredIPs", Some("10.0.0.0/8,2001:db8::/32"))]));
    raw.ipv6 = Some(crate::config::RawValue { value: "false".into(), origin: crate::config::Origin::Flag("--ipv6") });
    let result = validate(&raw).unwrap();
    assert_eq!(
        render(&Ok(result.clone())),
        [
            r#"warning: EgressIgnoredIPs = "10.0.0.0/8,2001:db8::/32": [2001:db8::/32] is IPv6 but IPv6 interception is disabled: it has no effect"#
        ]
    );
    assert!(!result.config.ipv6);
}

#[test]
fn everything_is_reported_at_once_in_input_order() {
    let props: Vec<(String, String)> = [
        ("IgnoreUID", "1337"),
        ("ProxyIngressPort", "15001"),
        ("ProxyEgressPort", "15001"),
        ("AppPorts", "9080,9080,x"),
        ("EgressIgnoredIPs", "10.0.0.1/8,300.0.0.1"),
        ("EgressIgnoredPorts", "22,15001"),
        ("ProxyEgressPort", "15002"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let doc = proxy_doc(Some("APPMESH "), &props);
    let err = validate(&parse_proxy_configuration(&doc, "task.json").unwrap().raw).unwrap_err();
    assert_eq!(err.errors().count(), 8);
    insta::assert_snapshot!(err.to_string());
}

#[test]
fn good_inputs_produce_these_configs() {
    let ok = |changes: &[(&str, Option<&str>)]| check(&seed_with(changes)).unwrap().config;

    assert_eq!(ok(&[]), seed_config());

    // Egress only: neither ProxyIngressPort nor AppPorts.
    let c = ok(&[("ProxyIngressPort", None), ("AppPorts", None)]);
    assert_eq!(c.ingress, None);

    // GID instead of UID; both; uid 0 is allowed.
    let c = ok(&[("IgnoredUID", None), ("IgnoredGID", Some("1337"))]);
    assert_eq!((c.ignored_uids, c.ignored_gids), (vec![], vec![1337]));
    let c = ok(&[("IgnoredUID", Some(" 0 ")), ("IgnoredGID", Some("4294967295"))]);
    assert_eq!((c.ignored_uids, c.ignored_gids), (vec![0], vec![u32::MAX]));

    // Ranges, whitespace, empty entries; duplicates merged.
    let c = ok(&[("AppPorts", Some(" 9080 , ,8000-8100,8050-8200,9080,"))]);
    assert_eq!(c.ingress.unwrap().app_ports.to_string(), "8000-8200,9080");

    // Empty lists mean nothing; implicit exemptions are not copied in.
    let c = ok(&[("EgressIgnoredPorts", Some("")), ("EgressIgnoredIPs", Some(""))]);
    assert!(c.egress_ignored_ports.is_empty() && c.egress_ignored_ips.is_empty());
    assert_eq!(c.effective_ignored_ports().to_string(), "22");
    assert_eq!(c.effective_ignored_ips().len(), 2);

    // IPs: normalised, sorted, deduplicated, v4 and v6.
    let c = ok(&[("EgressIgnoredIPs", Some("2001:db8::1/32, 10.9.8.7/8,192.168.1.1,10.0.0.0/8,::1"))]);
    let ips: Vec<String> = c.egress_ignored_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["10.0.0.0/8", "192.168.1.1/32", "::1/128", "2001:db8::/32"]);

    // Port 22 may be the egress port when nothing exempts it.
    let mut raw = raw(&seed_with(&[("ProxyEgressPort", Some("22")), ("EgressIgnoredPorts", None)]));
    raw.implicit_exemptions = false;
    assert_eq!(validate(&raw).unwrap().config.proxy_egress_port, 22);

    // Port edges.
    let c = ok(&[("ProxyEgressPort", Some("65535")), ("ProxyIngressPort", Some("1"))]);
    assert_eq!((c.proxy_egress_port, c.ingress.unwrap().proxy_port), (65535, 1));
}

#[test]
fn diagnostics_carry_field_and_value_separately() {
    let err = check(&seed_with(&[("ProxyEgressPort", Some("70000"))])).unwrap_err();
    assert_eq!(
        err.0,
        [Diagnostic {
            severity: Severity::Error,
            field: "ProxyEgressPort".into(),
            value: Some("70000".into()),
            message: "invalid port: must be a decimal number from 1 to 65535".into(),
        }]
    );
}

#[test]
fn long_values_are_clipped_in_messages() {
    let mut list: Vec<String> = (0..10_000).map(|i| format!("10.{}.{}.1", i / 256, i % 256)).collect();
    list[5_000] = "10.0.0.x".into();
    let list = list.join(",");
    let err = check(&seed_with(&[("EgressIgnoredIPs", Some(&list))])).unwrap_err();
    let d = &err.0[0];
    assert_eq!(d.message, format!("invalid IP or CIDR block [10.0.0.x] {IP}"));
    let shown = d.value.as_deref().unwrap();
    assert!(
        shown.starts_with("10.0.0.1,10.0.1.1,") && shown.ends_with(&format!("… ({} bytes)", list.len())),
        "{shown}"
    );
    assert!(shown.chars().count() < 130);
}

#[test]
fn ten_thousand_ignored_ips_are_accepted() {
    let list: Vec<String> = (0..10_000).map(|i| format!("10.{}.{}.0/24", i / 256 % 256, i % 256)).collect();
    let c = check(&seed_with(&[("EgressIgnoredIPs", Some(&list.join(",")))])).unwrap().config;
    assert_eq!(c.egress_ignored_ips.len(), 10_000);
    assert!(c.egress_ignored_ips.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn every_property_has_a_rule_here() {
    // Guards the table against a property being added without tests.
    let covered: std::collections::BTreeSet<&str> =
        bad_cases().iter().flat_map(|(changes, _)| changes.iter().map(|(n, _)| *n)).collect();
    for p in Property::ALL {
        assert!(covered.contains(p.name()), "{p}");
    }
}

/// A long list with many bad or repeated entries gets the first few diagnostics of each
/// severity and one summary each, and the errors are not hidden behind the warnings.
#[test]
fn long_lists_report_the_first_entries_and_count_the_rest() {
    let shown = crate::config::validate::LIST_DIAGNOSTICS_SHOWN;
    let ports = ["5000"; 40].iter().chain(&["x"; 25]).copied().collect::<Vec<_>>().join(",");
    let result = check(&seed_with(&[("EgressIgnoredPorts", Some(&ports))]));
    let diags = match &result {
        Err(e) => &e.0,
        Ok(v) => panic!("validated: {v:?}"),
    };
    let entry_errors = diags.iter().filter(|d| d.is_error() && d.message.starts_with("invalid port [x]")).count();
    let repeats = diags.iter().filter(|d| d.message.contains("listed more than once")).count();
    assert_eq!((entry_errors, repeats), (shown, shown), "{:#?}", render(&result));
    let summaries: Vec<&str> =
        diags.iter().filter(|d| d.message.contains("not shown")).map(|d| d.message.as_str()).collect();
    assert_eq!(
        summaries,
        [
            format!("{} more invalid entries not shown (the first {shown} are)", 25 - shown),
            format!("{} more warnings about entries not shown (the first {shown} are)", 39 - shown),
        ]
    );
}
