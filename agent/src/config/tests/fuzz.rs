//! No input makes reading or validation panic, and valid configurations survive a round
//! trip through their property strings.

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::config::{Origin, ProxyType, RawProperty, RawValue, Source, parse_task_definition};

const NAMES: [&str; 10] = [
    "IgnoredUID",
    "IgnoredGID",
    "ProxyIngressPort",
    "ProxyEgressPort",
    "AppPorts",
    "EgressIgnoredIPs",
    "EgressIgnoredPorts",
    "ignoreduid",
    "IgnoreUID",
    "",
];

/// Strings that reach the interesting branches: numbers near the limits, lists, ranges,
/// addresses, and anything at all.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9 ,+-]{0,24}",
        "[0-9a-fx:./%, -]{0,40}",
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| format!("{a}-{b}")),
        prop::collection::vec(0u32..70_000, 0..20).prop_map(|v| v
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")),
        prop::collection::vec((any::<[u8; 4]>(), 0u8..40), 0..6).prop_map(|v| {
            v.iter().map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3])).collect::<Vec<_>>().join(",")
        }),
        Just("APPMESH".to_owned()),
        Just("true".to_owned()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(&NAMES[..]).prop_map(str::to_owned), 1 => any::<String>()]
}

fn origin() -> impl Strategy<Value = Origin> {
    prop_oneof![
        "[a-z.\\[\\]0-9]{0,20}".prop_map(Origin::Json),
        Just(Origin::Env("APPMESH_APP_PORTS")),
        Just(Origin::Flag("--app-ports")),
    ]
}

prop_compose! {
    fn raw_config()(
        source in prop_oneof![
            Just(Source::Env),
            Just(Source::Flags),
            any::<String>().prop_map(Source::TaskDefinition),
            any::<String>().prop_map(Source::ProxyConfiguration),
        ],
        proxy_type in prop_oneof![
            Just(ProxyType::NotApplicable),
            Just(ProxyType::Missing("type".into())),
            (value(), origin()).prop_map(|(value, origin)| ProxyType::Given(RawValue { value, origin })),
        ],
        properties in prop::collection::vec((name(), value(), origin()), 0..12),
        implicit_exemptions in any::<bool>(),
        ipv6 in prop::option::of((value(), origin())),
    ) -> RawConfig {
        RawConfig {
            source,
            proxy_type,
            properties: properties.into_iter().map(|(name, value, origin)| RawProperty { name, value, origin }).collect(),
            implicit_exemptions,
            ipv6: ipv6.map(|(value, origin)| RawValue { value, origin }),
            notes: Vec::new(),
        }
    }
}

/// JSON trees built from the words the readers look for.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(
            &["proxyConfiguration", "taskDefinition", "type", "properties", "name", "value", "containerName"][..]
        )
        .prop_map(str::to_owned),
        "[a-zA-Z]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        value().prop_map(Value::String),
        name().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn read_and_validate(text: &str) {
    for result in [parse_task_definition(text, "fuzz.json"), parse_proxy_configuration(text, "fuzz.json")] {
        match result {
            Ok(input) => {
                let _ = validate(&input.raw);
            }
            Err(e) => assert!(e.errors().count() > 0, "an Err without an error: {e:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn validation_never_panics(raw in raw_config()) {
        match validate(&raw) {
            Ok(v) => {
                prop_assert!(v.warnings.iter().all(|d| !d.is_error()));
                prop_assert!(v.config.proxy_egress_port != 0);
                prop_assert!(!v.config.ignored_uids.is_empty() || !v.config.ignored_gids.is_empty());
                if let Some(ingress) = &v.config.ingress {
                    prop_assert!(!ingress.app_ports.contains(ingress.proxy_port));
                    prop_assert!(!ingress.app_ports.contains(v.config.proxy_egress_port));
                    prop_assert!(ingress.proxy_port != v.config.proxy_egress_port);
                }
                prop_assert!(!v.config.effective_ignored_ports().contains(v.config.proxy_egress_port));
                prop_assert!(v.config.egress_ignored_ips.iter().all(|n| n.trunc() == *n));
                prop_assert!(v.config.egress_ignored_ips.windows(2).all(|w| w[0] < w[1]));
            }
            Err(e) => prop_assert!(e.errors().count() > 0),
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        read_and_validate(&text);
    }

    #[test]
    fn json_like_text_never_panics(doc in json(), cut in any::<prop::sample::Index>(), wrap in 0..3u8) {
        let doc = match wrap {
            0 => doc,
            1 => serde_json::json!({ "proxyConfiguration": doc }),
            _ => serde_json::json!({ "taskDefinition": { "proxyConfiguration": doc } }),
        };
        let text = doc.to_string();
        read_and_validate(&text);
        // And truncated anywhere (at a character boundary).
        let mut end = cut.index(text.len() + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        read_and_validate(&text[..end]);
    }

    #[test]
    fn proxy_configurations_with_arbitrary_values_never_panic(
        props in prop::collection::vec((name(), value()), 0..10),
    ) {
        let doc = proxy_doc(Some("APPMESH"), &props);
        let input = parse_proxy_configuration(&doc, "fuzz.json").unwrap();
        prop_assert_eq!(input.raw.properties.len(), props.len());
        let _ = validate(&input.raw);
    }

    #[test]
    fn valid_configs_round_trip(
        uid in prop::option::of(any::<u32>()),
        gid in any::<u32>(),
        egress in 1u16..,
        ingress in prop::option::of((1u16.., prop::collection::vec((1u16.., 0u16..50), 1..6))),
        ignored in prop::collection::vec((1u16.., 0u16..50), 0..20),
        ips in prop::collection::vec((any::<[u8; 16]>(), any::<bool>(), 0u8..=128), 0..10),
    ) {
        let range = |(start, len): (u16, u16)| PortRange { start, end: start.saturating_add(len) };
        let ingress = ingress
            .map(|(port, app)| (port, PortSet::from_ranges(app.into_iter().map(range))))
            .filter(|(port, app)| *port != egress && !app.contains(*port) && !app.contains(egress));
        let ignored = PortSet::from_ranges(ignored.into_iter().map(range));
        prop_assume!(!ignored.contains(egress) && egress != crate::config::SSH_PORT);
        let mut nets: Vec<ipnet::IpNet> = ips
            .into_iter()
            .map(|(bytes, v4, prefix)| {
                if v4 {
                    let a = std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
                    ipnet::Ipv4Net::new(a, prefix % 33).unwrap().trunc().into()
                } else {
                    ipnet::Ipv6Net::new(bytes.into(), prefix).unwrap().trunc().into()
                }
            })
            .collect();
        nets.sort();
        nets.dedup();
        let want = ProxyConfig {
            ignored_uids: uid.into_iter().collect(),
            ignored_gids: vec![gid],
            ingress: ingress.clone().map(|(proxy_port, app_ports)| Ingress { proxy_port, app_ports }),
            egress_ignored_ports: ignored.clone(),
            egress_ignored_ips: nets.clone(),
            ..ProxyConfig::new(egress)
        };

        let mut props = vec![("IgnoredGID".to_owned(), gid.to_string()), ("ProxyEgressPort".to_owned(), egress.to_string())];
        if let Some(uid) = uid {
            props.push(("IgnoredUID".to_owned(), uid.to_string()));
        }
        if let Some((port, app)) = &ingress {
            props.push(("ProxyIngressPort".to_owned(), port.to_string()));
            props.push(("AppPorts".to_owned(), app.to_string()));
        }
        props.push(("EgressIgnoredPorts".to_owned(), ignored.to_string()));
        let ips: Vec<String> = nets.iter().map(ToString::to_string).collect();
        props.push(("EgressIgnoredIPs".to_owned(), ips.join(",")));

        let validated = check(&props).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(validated.config, want);
        let warnings_expected = ignored.ranges().len() > crate::config::ECS_MAX_IGNORED_PORTS;
        prop_assert_eq!(!validated.warnings.is_empty(), warnings_expected, "{:?}", validated.warnings);
    }
}
