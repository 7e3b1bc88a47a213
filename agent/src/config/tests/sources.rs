//! Reading task definitions, bare proxy configurations, the environment and flags.

use std::collections::HashMap;

use clap::Parser;

use super::*;
use crate::config::source::MAX_INPUT_BYTES;
use crate::config::{
    ConfigArgs, IngressFallback, Input, Origin, ProxyType, RawProperty, Severity, Source, from_env,
    parse_task_definition,
};

use crate::testdata::{EXAMPLES, example_path, example_text as example};

fn errors(result: Result<Input, ConfigErrors>) -> Vec<String> {
    result.unwrap_err().0.iter().map(ToString::to_string).collect()
}

#[test]
fn the_four_seed_examples_are_accepted() {
    for name in EXAMPLES {
        let input = parse_task_definition(&example(name), name).unwrap();
        assert_eq!(input.raw.source, Source::TaskDefinition(name.into()));
        assert_eq!(
            input.raw.proxy_type,
            ProxyType::Given(crate::config::RawValue {
                value: "APPMESH".into(),
                origin: Origin::Json("proxyConfiguration.type".into())
            })
        );
        assert_eq!(input.raw.properties.len(), 6, "{name}");
        assert_eq!(input.task_definition.as_ref().unwrap()["family"], "taskB");
        let validated = validate(&input.raw).unwrap();
        assert_eq!(validated.warnings, vec![], "{name}");
        assert_eq!(validated.config, seed_config(), "{name}");
    }
}

#[test]
fn properties_keep_input_order_and_origin() {
    let input = parse_task_definition(&example("fargate-taskB"), "f.json").unwrap();
    let first = &input.raw.properties[0];
    assert_eq!(
        first,
        &RawProperty {
            name: "ProxyIngressPort".into(),
            value: "15000".into(),
            origin: Origin::Json("proxyConfiguration.properties[0]".into())
        }
    );
    let names: Vec<&str> = input.raw.properties.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["ProxyIngressPort", "AppPorts", "EgressIgnoredIPs", "EgressIgnoredPorts", "IgnoredUID", "ProxyEgressPort"]
    );
}

#[test]
fn describe_task_definition_output_is_unwrapped() {
    let inner: serde_json::Value = serde_json::from_str(&example("ec2-taskB")).unwrap();
    let wrapped = json!({ "taskDefinition": inner, "tags": [] }).to_string();
    let input = parse_task_definition(&wrapped, "describe.json").unwrap();
    assert_eq!(input.task_definition.as_ref().unwrap()["taskDefinition"], inner);
    assert_eq!(validate(&input.raw).unwrap().config, seed_config());

    // Paths in messages include the wrapper.
    let mut broken = inner.clone();
    broken["proxyConfiguration"]["properties"][2]["value"] = json!(15001);
    let wrapped = json!({ "taskDefinition": broken }).to_string();
    assert_eq!(
        errors(parse_task_definition(&wrapped, "describe.json")),
        [
            r#"error: taskDefinition.proxyConfiguration.properties[2].value: must be a string, found number 15001: write "15001" (ECS property names and values are strings)"#
        ]
    );
    assert_eq!(
        errors(parse_task_definition(r#"{"taskDefinition": "x"}"#, "d.json")),
        ["error: taskDefinition: must be an object, found a string"]
    );
    assert_eq!(
        errors(parse_task_definition(r#"{"taskDefinition": {"family": "x"}}"#, "d.json")),
        ["error: taskDefinition.proxyConfiguration: missing: the task definition has no proxyConfiguration, so \
          there is nothing to intercept (add one of type APPMESH, or use --from-env or the property flags)"]
    );
}

#[test]
fn task_definition_without_proxy_configuration() {
    let missing = "error: proxyConfiguration: missing: the task definition has no proxyConfiguration, so there is \
                   nothing to intercept (add one of type APPMESH, or use --from-env or the property flags)";
    assert_eq!(errors(parse_task_definition(r#"{"family": "taskB"}"#, "t.json")), [missing]);
    assert_eq!(errors(parse_task_definition(r#"{"proxyConfiguration": null}"#, "t.json")), [missing]);
}

#[test]
fn json_type_errors_name_the_path_all_at_once() {
    let cases: &[(&str, &[&str])] = &[
        (r#"[]"#, &["error: t.json: must be a JSON object (an ECS task definition), found an array"]),
        (r#""x""#, &["error: t.json: must be a JSON object (an ECS task definition), found a string"]),
        (
            r#"{"proxyConfiguration": []}"#,
            &["error: proxyConfiguration: must be an object (a proxyConfiguration), found an array"],
        ),
        (
            r#"{"proxyConfiguration": {"type": "APPMESH", "properties": {"name": "IgnoredUID", "value": "1"}}}"#,
            &[
                r#"error: proxyConfiguration.properties: must be an array of {"name": ..., "value": ...} objects, found an object"#,
            ],
        ),
        (
            r#"{"proxyConfiguration": {"type": 1, "properties": ["IgnoredUID=1", {"value": "1"}, {"name": "AppPorts", "value": [80]}, {"name": true, "value": null}]}}"#,
            &[
                "error: proxyConfiguration.type: must be a string, found number 1",
                r#"error: proxyConfiguration.properties[0]: must be an object {"name": ..., "value": ...}, found a string"#,
                "error: proxyConfiguration.properties[1].name: missing: every property needs a name and a value",
                "error: proxyConfiguration.properties[2].value: must be a string, found an array",
                r#"error: proxyConfiguration.properties[3].name: must be a string, found boolean true: write "true" (ECS property names and values are strings)"#,
                "error: proxyConfiguration.properties[3].value: missing: every property needs a name and a value",
            ],
        ),
        (
            r#"{"proxyConfiguration": {"type": "APPMESH", "properties": [{"name": "ProxyEgressPort", "value": 15001}]}}"#,
            &[
                r#"error: proxyConfiguration.properties[0].value: must be a string, found number 15001: write "15001" (ECS property names and values are strings)"#,
            ],
        ),
    ];
    for (doc, want) in cases {
        assert_eq!(errors(parse_task_definition(doc, "t.json")), *want, "{doc}");
    }
}

#[test]
fn other_task_definition_fields_are_not_type_checked() {
    // memory and cpu are strings in some examples and numbers in others; containerName is lint's.
    let doc = r#"{"memory": 512, "cpu": "0.5 vCPU", "containerDefinitions": 7,
        "proxyConfiguration": {"type": "APPMESH", "containerName": 1, "properties": [
            {"name": "IgnoredUID", "value": "1337"}, {"name": "ProxyEgressPort", "value": "15001"}]}}"#;
    let config = validate(&parse_task_definition(doc, "t.json").unwrap().raw).unwrap().config;
    assert_eq!((config.ignored_uids, config.proxy_egress_port, config.ingress), (vec![1337], 15001, None));
}

#[test]
fn not_json() {
    let cases: &[(&str, &str)] = &[
        ("", "error: t.json: not valid JSON: EOF while parsing a value at line 1 column 0"),
        ("<task/>", "error: t.json: not valid JSON: expected value at line 1 column 1"),
        ("family: taskB", "error: t.json: not valid JSON: expected ident at line 1 column 3"),
        ("{\n  \"family\": \"taskB\",\n}", "error: t.json: not valid JSON: trailing comma at line 3 column 1"),
        ("{} {}", "error: t.json: not valid JSON: trailing characters at line 1 column 4"),
    ];
    for (doc, want) in cases {
        assert_eq!(errors(parse_task_definition(doc, "t.json")), [*want], "{doc:?}");
        let bare = want.replace("t.json", "p.json");
        assert_eq!(errors(parse_proxy_configuration(doc, "p.json")), [bare], "{doc:?}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [200, 100_000] {
        let doc = format!(r#"{{"proxyConfiguration": {}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let got = errors(parse_task_definition(&doc, "deep.json"));
        assert_eq!(got, ["error: deep.json: not valid JSON: recursion limit exceeded at line 1 column 150"]);
        let doc = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert_eq!(errors(parse_proxy_configuration(&doc, "deep.json")).len(), 1);
    }
    // Up to the limit is fine (and then a type error, not a crash).
    let doc = format!(r#"{{"proxyConfiguration": {}{}}}"#, "[".repeat(100), "]".repeat(100));
    assert_eq!(
        errors(parse_task_definition(&doc, "deep.json")),
        ["error: proxyConfiguration: must be an object (a proxyConfiguration), found an array"]
    );
}

#[test]
fn bare_proxy_configuration() {
    let doc = proxy_doc(Some("APPMESH"), &seed_with(&[]));
    let input = parse_proxy_configuration(&doc, "p.json").unwrap();
    assert_eq!(input.task_definition, None);
    assert_eq!(input.raw.source, Source::ProxyConfiguration("p.json".into()));
    assert_eq!(input.raw.properties[3].origin, Origin::Json("properties[3]".into()));
    assert_eq!(validate(&input.raw).unwrap().config, seed_config());

    // A task definition given where a bare object is expected.
    assert_eq!(
        errors(parse_proxy_configuration(&example("ec2-taskB"), "t.json")),
        [
            "error: t.json: this is a task definition, not a bare proxyConfiguration object: read it with --task-definition"
        ]
    );
    assert_eq!(
        errors(parse_proxy_configuration("[1]", "p.json")),
        ["error: p.json: must be an object (a proxyConfiguration), found an array"]
    );
    assert_eq!(
        errors(parse_proxy_configuration(r#"{"properties": [{"name": "AppPorts"}]}"#, "p.json")),
        ["error: properties[0].value: missing: every property needs a name and a value"]
    );
    // No properties at all reads fine; validation then says what is missing.
    let input = parse_proxy_configuration(r#"{"type": "APPMESH"}"#, "p.json").unwrap();
    assert_eq!(input.raw.properties, vec![]);
    assert_eq!(validate(&input.raw).unwrap_err().errors().count(), 2);
}

#[test]
fn byte_order_mark_is_accepted() {
    let doc = format!("\u{feff}{}", example("ec2-taskB"));
    assert_eq!(validate(&parse_task_definition(&doc, "bom.json").unwrap().raw).unwrap().config, seed_config());
}

// ---- files and stdin through ConfigArgs ----

use crate::testdata::{Cli, config_args as args};

fn no_env(_: &str) -> Option<String> {
    None
}

fn read(argv: &[&str], stdin: &[u8]) -> Result<Input, ConfigErrors> {
    args(argv).read_with(no_env, stdin)
}

#[test]
fn clap_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn sources_exclude_each_other() {
    for argv in [
        &["--task-definition", "a.json", "--proxy-configuration", "b.json"][..],
        &["--task-definition", "a.json", "--from-env"],
        &["--proxy-configuration", "-", "--from-env"],
    ] {
        let err = Cli::try_parse_from(std::iter::once("intercept").chain(argv.iter().copied())).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{argv:?}");
    }
    // The same rule holds for a ConfigArgs built without clap.
    let both = ConfigArgs { from_env: true, task_definition: Some("-".into()), ..ConfigArgs::default() };
    assert_eq!(
        both.read_with(no_env, &b""[..]).unwrap_err().0[0].message,
        "give only one of --task-definition, --proxy-configuration and --from-env"
    );
}

#[test]
fn nothing_to_read() {
    assert_eq!(
        errors(read(&[], b"")),
        ["error: configuration: nothing to read: give --task-definition, --proxy-configuration, --from-env or the \
          property flags (at least --proxy-egress-port and --ignored-uid)"]
    );
    // Settings that are not properties are not a configuration either.
    assert_eq!(errors(read(&["--ipv6", "false", "--no-implicit-exemptions"], b"")).len(), 1);
}

#[test]
fn task_definition_from_file_and_stdin() {
    let path = example_path("fargate-xray-taskB");
    let input = read(&["--task-definition", path.to_str().unwrap()], b"").unwrap();
    assert_eq!(input.raw.source, Source::TaskDefinition(path.display().to_string()));
    assert_eq!(validate(&input.raw).unwrap().config, seed_config());

    let input = read(&["--task-definition", "-"], example("ec2-xray-taskB").as_bytes()).unwrap();
    assert_eq!(input.raw.source, Source::TaskDefinition("<stdin>".into()));
    assert_eq!(validate(&input.raw).unwrap().config, seed_config());

    let doc = proxy_doc(Some("APPMESH"), &seed_with(&[]));
    let input = read(&["--proxy-configuration", "-"], doc.as_bytes()).unwrap();
    assert_eq!(validate(&input.raw).unwrap().config, seed_config());
}

#[test]
fn unreadable_oversized_and_non_utf8_inputs_name_the_file() {
    assert_eq!(
        errors(read(&["--task-definition", "/nonexistent/task.json"], b"")),
        ["error: /nonexistent/task.json: cannot read: No such file or directory (os error 2)"]
    );
    assert_eq!(
        errors(read(&["--proxy-configuration", "/"], b"")),
        ["error: /: cannot read: Is a directory (os error 21)"]
    );

    let mut invalid = br#"{"family": "task"#.to_vec();
    invalid.extend([0xff, 0xfe]);
    invalid.extend(br#""}"#);
    assert_eq!(
        errors(read(&["--task-definition", "-"], &invalid)),
        ["error: <stdin>: not valid UTF-8 (first invalid byte at offset 16)"]
    );

    let too_large = "error: <stdin>: larger than 1024 KiB: refusing to read it as a configuration";
    let mut big = example("ec2-taskB").into_bytes();
    big.resize(MAX_INPUT_BYTES + 1, b' ');
    assert_eq!(errors(read(&["--task-definition", "-"], &big)), [too_large]);
    // Exactly the limit is still read.
    big.truncate(MAX_INPUT_BYTES);
    assert_eq!(validate(&read(&["--task-definition", "-"], &big).unwrap().raw).unwrap().config, seed_config());
    // The text entry points apply the same limit.
    let text = format!("{}{}", example("ec2-taskB"), " ".repeat(MAX_INPUT_BYTES));
    assert_eq!(
        errors(parse_task_definition(&text, "big.json")),
        ["error: big.json: larger than 1024 KiB: refusing to read it as a configuration"]
    );

    // A large file on disk is refused without reading it all.
    let path = std::env::temp_dir().join(format!("intercept-config-test-{}.json", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(64 * 1024 * 1024).unwrap();
    let got = errors(read(&["--task-definition", path.to_str().unwrap()], b""));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        got,
        [format!("error: {}: larger than 1024 KiB: refusing to read it as a configuration", path.display())]
    );
}

// ---- environment ----

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

const EKS_ENV: [(&str, &str); 7] = [
    ("APPMESH_IGNORE_UID", "1337"),
    ("APPMESH_ENVOY_INGRESS_PORT", "15000"),
    ("APPMESH_ENVOY_EGRESS_PORT", "15001"),
    ("APPMESH_APP_PORTS", "9080"),
    ("APPMESH_EGRESS_IGNORED_IP", "169.254.170.2,169.254.169.254"),
    ("APPMESH_EGRESS_IGNORED_PORTS", "22"),
    ("APPMESH_ENABLE_IPV6", "1"),
];

fn env_with(changes: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut vars: Vec<_> = EKS_ENV.to_vec();
    for (k, v) in changes {
        match vars.iter().position(|(n, _)| n == k) {
            Some(i) => vars[i].1 = v,
            None => vars.push((k, v)),
        }
    }
    vars
}

#[test]
fn environment_like_the_eks_init_container() {
    let raw = from_env(env(&EKS_ENV));
    assert_eq!(raw.source, Source::Env);
    assert_eq!(raw.proxy_type, ProxyType::NotApplicable);
    assert_eq!(raw.properties[0].origin, Origin::Env("APPMESH_IGNORE_UID"));
    let validated = validate(&raw).unwrap();
    assert_eq!(validated.warnings, vec![]);
    assert_eq!(validated.config, seed_config());

    // Through ConfigArgs, with no file involved.
    let input = args(&["--from-env"]).read_with(env(&EKS_ENV), &b""[..]).unwrap();
    assert_eq!(input, Input { raw, task_definition: None });
}

#[test]
fn environment_table() {
    let e = |var: &str, value: &str, message: &str| format!("error: {var} = {value:?}: {message}");
    type Expect = Result<fn(&ProxyConfig) -> bool, Vec<String>>;
    let cases: Vec<(Vec<(&str, &str)>, Expect)> = vec![
        (env_with(&[("APPMESH_ENABLE_IPV6", "TRUE")]), Ok(|c| c.ipv6)),
        (env_with(&[("APPMESH_ENABLE_IPV6", "false")]), Ok(|c| !c.ipv6)),
        (env_with(&[("APPMESH_ENABLE_IPV6", "0")]), Ok(|c| !c.ipv6)),
        (env_with(&[("APPMESH_ENABLE_IPV6", "")]), Ok(|c| c.ipv6)),
        (env_with(&[("APPMESH_IGNORE_GID", "1338")]), Ok(|c| c.ignored_gids == [1338])),
        (env_with(&[("APPMESH_IGNORE_GID", "")]), Ok(|c| c.ignored_gids.is_empty())),
        (env_with(&[("APPMESH_EGRESS_IGNORED_IP", "")]), Ok(|c| c.egress_ignored_ips.is_empty())),
        (
            env_with(&[("APPMESH_APP_PORTS", "8080,8443")]),
            Ok(|c| c.ingress.as_ref().unwrap().app_ports.port_count() == 2),
        ),
        // Unset and empty ingress: egress only.
        (env_with(&[("APPMESH_APP_PORTS", " "), ("APPMESH_ENVOY_INGRESS_PORT", "")]), Ok(|c| c.ingress.is_none())),
        (
            env_with(&[("APPMESH_ENABLE_IPV6", "yes")]),
            Err(vec![e("APPMESH_ENABLE_IPV6", "yes", "invalid boolean: must be true, false, 1 or 0")]),
        ),
        (
            env_with(&[("APPMESH_ENVOY_EGRESS_PORT", "70000")]),
            Err(vec![e(
                "APPMESH_ENVOY_EGRESS_PORT",
                "70000",
                "invalid port: must be a decimal number from 1 to 65535",
            )]),
        ),
        (
            env_with(&[("APPMESH_ENVOY_EGRESS_PORT", "")]),
            Err(vec![
                "error: APPMESH_ENVOY_EGRESS_PORT: missing: the port outbound traffic is redirected to is \
                      required (15001 by convention)"
                    .into(),
            ]),
        ),
        (
            env_with(&[("APPMESH_IGNORE_UID", "")]),
            Err(vec![
                "error: APPMESH_IGNORE_UID / APPMESH_IGNORE_GID: missing: at least one of APPMESH_IGNORE_UID \
                      and APPMESH_IGNORE_GID is required (the proxy runs as that user or group, and its own traffic \
                      must not be redirected back to it)"
                    .into(),
            ]),
        ),
        (
            EKS_ENV.iter().copied().filter(|(k, _)| *k != "APPMESH_APP_PORTS").collect(),
            Err(vec![
                "error: APPMESH_APP_PORTS: missing: APPMESH_ENVOY_INGRESS_PORT is set but APPMESH_APP_PORTS is \
                      not; give both to intercept inbound traffic, or neither for outbound only"
                    .into(),
            ]),
        ),
        (
            env_with(&[("APPMESH_EGRESS_IGNORED_IP", "10.0.0.0/8,nope")]),
            Err(vec![e(
                "APPMESH_EGRESS_IGNORED_IP",
                "10.0.0.0/8,nope",
                "invalid IP or CIDR block [nope] specified: expected an IPv4 or IPv6 address, or a CIDR block such \
                 as 10.0.0.0/8",
            )]),
        ),
        (
            env_with(&[("APPMESH_EGRESS_IGNORED_PORTS", "22,15001")]),
            Err(vec![e(
                "APPMESH_EGRESS_IGNORED_PORTS",
                "22,15001",
                "contains APPMESH_ENVOY_EGRESS_PORT (15001): every outbound connection to port 15001, on any host, \
                 would bypass the proxy; the proxy's own port never needs exempting (connections to the local proxy \
                 are never redirected)",
            )]),
        ),
        // IngressFallback: refuse unless given, `app` by name only.
        (env_with(&[]), Ok(|c| c.ingress_fallback == IngressFallback::Refuse)),
        (env_with(&[("APPMESH_INGRESS_FALLBACK", "app")]), Ok(|c| c.ingress_fallback == IngressFallback::App)),
        (env_with(&[("APPMESH_INGRESS_FALLBACK", "refuse")]), Ok(|c| c.ingress_fallback == IngressFallback::Refuse)),
        (env_with(&[("APPMESH_INGRESS_FALLBACK", " ")]), Ok(|c| c.ingress_fallback == IngressFallback::Refuse)),
        (
            env_with(&[("APPMESH_INGRESS_FALLBACK", "1")]),
            Err(vec![e("APPMESH_INGRESS_FALLBACK", "1", "invalid ingress fallback: must be refuse or app")]),
        ),
        // Every problem at once, the bad IPv6 setting first.
        (
            env_with(&[("APPMESH_ENABLE_IPV6", "2"), ("APPMESH_IGNORE_UID", "x"), ("APPMESH_APP_PORTS", "0")]),
            Err(vec![
                e("APPMESH_ENABLE_IPV6", "2", "invalid boolean: must be true, false, 1 or 0"),
                e("APPMESH_IGNORE_UID", "x", "invalid id: must be a decimal number from 0 to 4294967295"),
                e("APPMESH_APP_PORTS", "0", "invalid port [0] specified: must be a decimal number from 1 to 65535"),
            ]),
        ),
    ];
    for (vars, want) in cases {
        let result = validate(&from_env(env(&vars)));
        match want {
            Ok(holds) => {
                let validated = result.unwrap_or_else(|e| panic!("{vars:?}: {e}"));
                assert!(holds(&validated.config), "{vars:?}: {:?}", validated.config);
            }
            Err(want) => assert_eq!(render(&result), want, "{vars:?}"),
        }
    }
    // Nothing set at all: both requirements, named as variables.
    assert_eq!(validate(&from_env(env(&[]))).unwrap_err().errors().count(), 2);
}

#[test]
fn empty_app_ports_with_an_ingress_port_is_outbound_only() {
    // What the App Mesh controller writes for a virtual node without listeners.
    for empty in ["", " "] {
        let validated = validate(&from_env(env(&env_with(&[("APPMESH_APP_PORTS", empty)])))).unwrap();
        assert_eq!(validated.config, ProxyConfig { ingress: None, ..seed_config() });
        let [warning] = &validated.warnings[..] else { panic!("{:?}", validated.warnings) };
        assert_eq!((warning.severity, warning.field.as_str()), (Severity::Warning, "APPMESH_APP_PORTS"));
        assert!(warning.message.starts_with("is empty while APPMESH_ENVOY_INGRESS_PORT is set: read as outbound only"));
    }
}

// ---- flags ----

#[test]
fn flags_override_file_values() {
    let path = example_path("ec2-taskB");
    let argv = [
        "--task-definition",
        path.to_str().unwrap(),
        "--proxy-egress-port",
        "16001",
        "--app-ports",
        "8080-8081",
        "--ignored-gid",
        "1338",
        "--no-implicit-exemptions",
        "--ipv6",
        "false",
    ];
    let input = read(&argv, b"").unwrap();
    let egress = input.raw.properties.iter().find(|p| p.name == "ProxyEgressPort").unwrap();
    assert_eq!(egress.origin, Origin::Flag("--proxy-egress-port"));
    // The override takes the file property's place; new ones are appended.
    assert_eq!(input.raw.properties[2].origin, Origin::Flag("--proxy-egress-port"));
    assert_eq!(input.raw.properties.len(), 7);
    let c = validate(&input.raw).unwrap().config;
    assert_eq!(c.proxy_egress_port, 16001);
    assert_eq!(c.ingress.as_ref().unwrap().app_ports.to_string(), "8080-8081");
    assert_eq!((&c.ignored_uids[..], &c.ignored_gids[..]), (&[1337][..], &[1338][..]));
    assert!(!c.implicit_exemptions && !c.ipv6);
    assert_eq!(c.effective_ignored_ports().to_string(), "22", "22 is listed in the file");
}

#[test]
fn flags_override_environment_and_duplicates() {
    let input = args(&["--from-env", "--ignored-uid", "0"]).read_with(env(&EKS_ENV), &b""[..]).unwrap();
    assert_eq!(validate(&input.raw).unwrap().config.ignored_uids, [0]);

    // A flag replaces every occurrence of its property, so a duplicate in the file is gone.
    let mut props = seed_with(&[]);
    props.push(("ProxyEgressPort".into(), "15002".into()));
    let doc = proxy_doc(Some("APPMESH"), &props);
    let result =
        validate(&read(&["--proxy-configuration", "-", "--proxy-egress-port", "15003"], doc.as_bytes()).unwrap().raw);
    assert_eq!(result.unwrap().config.proxy_egress_port, 15003);
}

#[test]
fn flag_values_are_validated_like_file_values() {
    let path = example_path("fargate-taskB");
    let argv = [
        "--task-definition",
        path.to_str().unwrap(),
        "--proxy-egress-port",
        "70000",
        "--ignored-uid",
        "-1",
        "--egress-ignored-ips",
        "10.0.0.0/8,x",
        "--ipv6",
        "maybe",
        "--ingress-fallback",
        "drop",
    ];
    let result = validate(&read(&argv, b"").unwrap().raw);
    assert_eq!(
        render(&result),
        [
            r#"error: --ipv6 = "maybe": invalid boolean: must be true, false, 1 or 0"#,
            r#"error: --egress-ignored-ips = "10.0.0.0/8,x": invalid IP or CIDR block [x] specified: expected an IPv4 or IPv6 address, or a CIDR block such as 10.0.0.0/8"#,
            r#"error: --ignored-uid = "-1": invalid id: must be a decimal number from 0 to 4294967295"#,
            r#"error: --proxy-egress-port = "70000": invalid port: must be a decimal number from 1 to 65535"#,
            r#"error: --ingress-fallback = "drop": invalid ingress fallback: must be refuse or app"#,
        ]
    );
}

#[test]
fn flags_alone() {
    let input = read(&["--ignored-uid", "1337", "--proxy-egress-port", "15001"], b"").unwrap();
    assert_eq!(input.raw.source, Source::Flags);
    let c = validate(&input.raw).unwrap().config;
    assert_eq!((c.ignored_uids, c.proxy_egress_port, c.ingress), (vec![1337], 15001, None));
    assert!(c.implicit_exemptions && c.ipv6);

    // Missing things are named as flags.
    let result = validate(&read(&["--app-ports", "80"], b"").unwrap().raw);
    assert_eq!(
        render(&result),
        [
            "error: --ignored-uid / --ignored-gid: missing: at least one of --ignored-uid and --ignored-gid is \
             required (the proxy runs as that user or group, and its own traffic must not be redirected back to it)",
            "error: --proxy-egress-port: missing: the port outbound traffic is redirected to is required (15001 by \
             convention)",
            "error: --proxy-ingress-port: missing: --app-ports is set but --proxy-ingress-port is not; give both to \
             intercept inbound traffic, or neither for outbound only",
        ]
    );
}
