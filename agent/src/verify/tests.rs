use super::*;
use crate::config::{Ingress, PortRange, PortSet};
use crate::plan::Format;

fn config() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![1337],
        ingress: Some(Ingress { proxy_port: 15000, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        ..ProxyConfig::new(15001)
    }
}

#[test]
fn timeouts_parse_with_units() {
    let cases: [(&str, Result<Duration, ()>); 10] = [
        ("5s", Ok(Duration::from_secs(5))),
        ("5", Ok(Duration::from_secs(5))),
        ("250ms", Ok(Duration::from_millis(250))),
        ("2m", Ok(Duration::from_secs(120))),
        (" 1s ", Ok(Duration::from_secs(1))),
        ("0s", Err(())),
        ("", Err(())),
        ("5h", Err(())),
        ("-1s", Err(())),
        ("1.5s", Err(())),
    ];
    for (text, want) in cases {
        let got = parse_timeout(text);
        assert_eq!(got.clone().map_err(|_| ()), want, "{text:?}: {got:?}");
        if let Err(message) = got {
            assert!(message.contains(text.trim()), "the error names the value: {message}");
        }
    }
}

#[test]
fn the_probe_plan_dials_test_net_as_a_workload_and_as_each_ignored_identity() {
    let plan = ProbePlan::new(&config()).unwrap();
    assert_eq!(plan.egress_port, 15001);
    assert_eq!(plan.listen, ["127.0.0.1:15001".parse().unwrap(), "[::1]:15001".parse().unwrap()]);
    assert_eq!(plan.destinations, ["192.0.2.1:80".parse().unwrap(), "[2001:db8::1]:80".parse().unwrap()]);
    assert_eq!(plan.workload, Identity { uid: 65534, gid: 65534 });
    assert_eq!(plan.ignored, [(Exempt::Uid(1337), Identity { uid: 1337, gid: 65534 })]);
}

#[test]
fn the_probe_plan_asks_a_test_net_dns_server_when_dns_is_captured() {
    assert_eq!(ProbePlan::new(&config()).unwrap().dns, None, "no ProxyDNSPort: no DNS probe");
    let mut config = config();
    config.proxy_dns_port = Some(15053);
    config.egress_ignored_ips = vec!["192.0.2.1/32".parse().unwrap()];
    // Include-only narrows the TCP probes, not DNS.
    config.egress_included_ips = Some(vec!["198.51.100.0/24".parse().unwrap(), "2001:db8::/32".parse().unwrap()]);
    let plan = ProbePlan::new(&config).unwrap();
    let dns = plan.dns.expect("a DNS probe");
    assert_eq!(dns.servers, ["198.51.100.1:53".parse().unwrap(), "[2001:db8::1]:53".parse().unwrap()]);
    assert_eq!(dns.listen, ["127.0.0.1:15053".parse().unwrap(), "[::1]:15053".parse().unwrap()]);
    assert_eq!(plan.destinations, ["198.51.100.1:80".parse().unwrap(), "[2001:db8::1]:80".parse().unwrap()]);
    config.egress_ignored_ports = PortSet::from_ranges([PortRange::single(53)]);
    assert_eq!(ProbePlan::new(&config).unwrap().dns, None, "port 53 ignored: DNS capture is off");
}

#[test]
fn the_probe_plan_avoids_what_the_configuration_ignores() {
    let mut config = config();
    config.ignored_uids = vec![WORKLOAD_ID];
    config.ignored_gids = vec![WORKLOAD_ID];
    config.ipv6 = false;
    config.egress_ignored_ports = PortSet::from_ranges([PortRange { start: 80, end: 90 }]);
    config.egress_ignored_ips = vec!["192.0.2.0/24".parse().unwrap()];
    let plan = ProbePlan::new(&config).unwrap();
    assert_eq!(plan.destinations, ["198.51.100.1:91".parse().unwrap()]);
    assert_eq!(plan.listen, ["127.0.0.1:15001".parse().unwrap()]);
    assert_eq!(plan.workload, Identity { uid: 65533, gid: 65533 });
    assert_eq!(
        plan.ignored,
        [
            (Exempt::Uid(65534), Identity { uid: 65534, gid: 65533 }),
            (Exempt::Gid(65534), Identity { uid: 65533, gid: 65534 }),
        ]
    );
}

#[test]
fn a_configuration_that_ignores_every_test_net_address_leaves_nothing_to_dial() {
    let mut config = config();
    config.egress_ignored_ips = vec!["0.0.0.0/0".parse().unwrap()];
    let err = ProbePlan::new(&config).unwrap_err();
    assert!(err.contains("EgressIgnoredIPs"), "{err}");
}

fn report(passed: bool) -> VerifyReport {
    let mut report = VerifyReport::new("iptables", "network namespace /run/netns/task", Duration::from_secs(5));
    report.method = Some(Method::Listener);
    report.push(Check::new("installed", "intercept's rules with the jump to them", "installed", true));
    report.push(Check::new(
        "workload (uid 65534 gid 65534) dials 192.0.2.1:80",
        "redirected to 127.0.0.1:15001, SO_ORIGINAL_DST 192.0.2.1:80",
        if passed {
            "connected (from 10.0.0.2:40000); arrived at 127.0.0.1:15001, SO_ORIGINAL_DST 192.0.2.1:80"
        } else {
            "connect failed: Connection refused (os error 111)"
        },
        passed,
    ));
    report.counters_moved.insert("redirected".to_owned(), 1);
    report.finish()
}

#[test]
fn the_verdict_needs_every_check_to_pass() {
    assert_eq!(report(true).exit_code(), 0);
    assert!(report(true).verified);
    assert_eq!(report(false).exit_code(), EXIT_NOT_WORKING);
    let empty = VerifyReport::new("nftables", "the current network namespace", Duration::from_secs(1)).finish();
    assert_eq!(empty.exit_code(), EXIT_NOT_WORKING, "no check, no proof");
}

#[test]
fn reports_render_as_text_and_json() {
    insta::assert_snapshot!("verified_text", report(true).render(Format::Text));
    insta::assert_snapshot!("not_working_text", report(false).render(Format::Text));
    insta::assert_snapshot!("not_working_json", report(false).render(Format::Json));
}
