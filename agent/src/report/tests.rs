use serde_json::{Value, json};

use super::*;
use crate::config::{Ingress, PortRange};
use crate::lint::lint;
use crate::lint::tests::{EXAMPLES, example, seed_config};

fn seed_report(name: &str) -> CheckReport {
    let config = seed_config();
    let findings = lint(&example(name), Some(&config));
    CheckReport::new(
        format!("task definition examples/{name}.json"),
        Ok(Validated { config, warnings: Vec::new() }),
        true,
        Some(findings),
    )
}

#[test]
fn seed_examples_text() {
    for name in EXAMPLES {
        let report = seed_report(name);
        assert_eq!(report.exit_code(), 0, "{name}");
        assert_eq!(report.error_count(), 0, "{name}");
        insta::assert_snapshot!(format!("text_{name}"), report.render_text());
    }
}

#[test]
fn seed_example_json() {
    insta::assert_snapshot!("json_ec2-xray-taskB", seed_report("ec2-xray-taskB").render_json());
}

#[test]
fn json_field_names_are_stable() {
    let json: Value = serde_json::from_str(&seed_report("fargate-xray-taskB").render_json()).unwrap();
    // serde_json's map sorts keys; the order as written is pinned by the JSON snapshots.
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "config",
            "config_diagnostics",
            "errors",
            "exit_code",
            "implicit_exemptions",
            "lint_diagnostics",
            "source",
            "warnings"
        ]
    );
    let config_keys: Vec<&str> = json["config"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        config_keys,
        [
            "app_ports",
            "effective_ignored_ips",
            "effective_ignored_ports",
            "egress_ignored_ips",
            "egress_ignored_ports",
            "egress_included_ips",
            "ignored_gids",
            "ignored_uids",
            "ipv6",
            "proxy_dns_port",
            "proxy_egress_port",
            "proxy_ingress_port"
        ]
    );
    assert_eq!(
        json["implicit_exemptions"],
        json!({"enabled": true, "ports": [22], "ips": ["169.254.170.2", "169.254.169.254"]})
    );
    assert_eq!(json["lint_diagnostics"][0]["severity"], "warning");
    assert_eq!(json["lint_diagnostics"][0]["field"], "containerDefinitions[2].user");
    assert_eq!(json["config"]["effective_ignored_ports"], json!(["22"]));
}

#[test]
fn rendering_is_deterministic() {
    for name in EXAMPLES {
        assert_eq!(seed_report(name).render_text(), seed_report(name).render_text());
        assert_eq!(seed_report(name).render_json(), seed_report(name).render_json());
    }
}

/// A task definition that fails both halves: validation reported errors and a warning, and
/// the lint finds errors of its own.
fn failing_report() -> CheckReport {
    let mut td = example("fargate-taskB");
    td["containerDefinitions"][0].as_object_mut().unwrap().remove("dependsOn");
    td["containerDefinitions"][1]["user"] = json!(1337);
    let validation = Err(ConfigErrors(vec![
        Diagnostic::error("ProxyEgressPort", None, "missing: ProxyEgressPort is required"),
        Diagnostic::warning("EgressIgnoredPorts", Some("22,22"), "lists 22 twice"),
    ]));
    CheckReport::new("task definition broken.json", validation, false, Some(lint(&td, None)))
}

#[test]
fn errors_from_either_half_fail_the_check() {
    let report = failing_report();
    assert_eq!((report.error_count(), report.warning_count(), report.exit_code()), (3, 1, EXIT_ERRORS));
    assert!(report.config().is_none());
    let fields: Vec<&str> = report.diagnostics().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["ProxyEgressPort", "EgressIgnoredPorts", "containerDefinitions[0].dependsOn", "containerDefinitions[1].user"]
    );
    insta::assert_snapshot!("text_failing", report.render_text());
}

#[test]
fn failing_report_json() {
    insta::assert_snapshot!("json_failing", failing_report().render_json());
}

#[test]
fn warnings_alone_pass() {
    let mut td = example("ec2-taskB");
    td["networkMode"] = json!("bridge");
    let config = seed_config();
    let findings = lint(&td, Some(&config));
    let report = CheckReport::new("t", Ok(Validated { config, warnings: Vec::new() }), true, Some(findings));
    assert_eq!((report.error_count(), report.warning_count(), report.exit_code()), (0, 1, 0));
    assert!(report.render_text().ends_with("result: 0 errors, 1 warning\n"));
}

#[test]
fn a_failed_validation_without_reasons_is_still_an_error() {
    let report = CheckReport::new("flags", Err(ConfigErrors(Vec::new())), true, None);
    assert_eq!((report.error_count(), report.exit_code()), (1, EXIT_ERRORS));
}

#[test]
fn configuration_without_task_definition() {
    // Flags only: nothing to lint, ingress off, implicit exemptions off, a long IP list.
    let config = ProxyConfig {
        ignored_gids: vec![1337],
        egress_ignored_ports: PortSet::from_ranges([PortRange { start: 8000, end: 8099 }]),
        egress_ignored_ips: (0..20u8).map(|i| format!("10.0.{i}.0/24").parse().unwrap()).collect(),
        implicit_exemptions: false,
        ipv6: false,
        ..ProxyConfig::new(15001)
    };
    let warnings = vec![Diagnostic::warning("--egress-ignored-ports", Some("8000-8099"), "more than 15 ports")];
    let report = CheckReport::new("flags", Ok(Validated { config, warnings }), true, None);
    assert_eq!(report.exit_code(), 0);
    insta::assert_snapshot!("text_flags_only", report.render_text());
}

#[test]
fn summary_separates_configured_from_implicit() {
    let config = ProxyConfig {
        egress_ignored_ports: PortSet::new(),
        egress_ignored_ips: Vec::new(),
        ingress: Some(Ingress { proxy_port: 15000, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        ..seed_config()
    };
    let summary = ConfigSummary::new(&config);
    assert!(summary.egress_ignored_ports.is_empty() && summary.egress_ignored_ips.is_empty());
    assert_eq!(summary.effective_ignored_ports, ["22"]);
    assert_eq!(summary.effective_ignored_ips, ["169.254.169.254/32", "169.254.170.2/32"]);
    let text =
        CheckReport::new("t", Ok(Validated { config, warnings: Vec::new() }), true, Some(Vec::new())).render_text();
    assert!(text.contains("  ignored ports        22  [configured: none]\n"), "{text}");
}

#[test]
fn word_wrap() {
    assert_eq!(wrap("a bb ccc dddd", 6), ["a bb", "ccc", "dddd"]);
    assert_eq!(wrap("abcdefgh ij", 4), ["abcdefgh", "ij"]);
    assert!(wrap("", 4).is_empty());
}
