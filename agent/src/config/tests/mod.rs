//! Tests of reading and validating configurations, through the public API.

mod fuzz;
mod sources;
mod validation;

use serde_json::json;

use super::{ConfigErrors, Ingress, PortRange, PortSet, ProxyConfig, Validated, parse_proxy_configuration};
use crate::config::{RawConfig, validate};
use crate::testdata::seed_config;

/// The seed guide's properties, in the order of its EC2 examples.
const SEED: [(&str, &str); 6] = [
    ("IgnoredUID", "1337"),
    ("ProxyIngressPort", "15000"),
    ("ProxyEgressPort", "15001"),
    ("AppPorts", "9080"),
    ("EgressIgnoredIPs", "169.254.170.2,169.254.169.254"),
    ("EgressIgnoredPorts", "22"),
];

/// The seed's properties with changes: `Some` replaces the value of a property in place
/// (or appends the property when the seed has none of that name), `None` removes it.
fn seed_with(changes: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = SEED.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    for (name, value) in changes {
        match (props.iter().position(|(n, _)| n == name), value) {
            (Some(i), Some(v)) => props[i].1 = v.to_string(),
            (Some(i), None) => {
                props.remove(i);
            }
            (None, Some(v)) => props.push((name.to_string(), v.to_string())),
            (None, None) => panic!("no {name} to remove"),
        }
    }
    props
}

/// A bare proxyConfiguration document.
fn proxy_doc(proxy_type: Option<&str>, props: &[(String, String)]) -> String {
    let properties: Vec<_> = props.iter().map(|(n, v)| json!({ "name": n, "value": v })).collect();
    let mut doc = json!({ "containerName": "envoy", "properties": properties });
    if let Some(t) = proxy_type {
        doc["type"] = json!(t);
    }
    doc.to_string()
}

/// Reads a bare proxyConfiguration of type APPMESH with these properties.
fn raw(props: &[(String, String)]) -> RawConfig {
    parse_proxy_configuration(&proxy_doc(Some("APPMESH"), props), "test.json").expect("well-formed JSON").raw
}

/// Every diagnostic as the user sees it.
fn render(result: &Result<Validated, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(v) => v.warnings.iter().map(ToString::to_string).collect(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn check(props: &[(String, String)]) -> Result<Validated, ConfigErrors> {
    validate(&raw(props))
}
