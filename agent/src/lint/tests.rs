use serde_json::{Value, json};

use super::ports::difference;
use super::*;
use crate::config::{Ingress, PortRange, Severity};

pub(crate) use crate::testdata::{EXAMPLES, seed_config};

/// One of the seed guide's task definitions from `examples/`.
pub(crate) fn example(name: &str) -> Value {
    serde_json::from_str(&crate::testdata::example_text(name)).unwrap()
}

fn mutated(name: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut td = example(name);
    change(&mut td);
    td
}

fn remove(value: &mut Value, key: &str) {
    value.as_object_mut().expect("an object").remove(key).unwrap_or_else(|| panic!("no {key} to remove"));
}

fn errors(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    diags.iter().filter(|d| d.is_error()).collect()
}

fn warnings(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    diags.iter().filter(|d| d.severity == Severity::Warning).collect()
}

/// The one diagnostic of `td`, which must be of `severity`, at `field`, with `value`.
fn single(
    td: &Value,
    config: Option<&ProxyConfig>,
    severity: Severity,
    field: &str,
    value: Option<&str>,
) -> Diagnostic {
    let diags = lint(td, config);
    assert_eq!(diags.len(), 1, "expected exactly one diagnostic, got {diags:#?}");
    let d = diags.into_iter().next().unwrap();
    assert_eq!((d.severity, d.field.as_str(), d.value.as_deref()), (severity, field, value), "{d}");
    d
}

fn single_error(td: &Value, field: &str, value: Option<&str>) -> Diagnostic {
    single(td, Some(&seed_config()), Severity::Error, field, value)
}

fn single_warning(td: &Value, field: &str, value: Option<&str>) -> Diagnostic {
    single(td, Some(&seed_config()), Severity::Warning, field, value)
}

fn assert_clean(td: &Value, config: &ProxyConfig) {
    let diags = lint(td, Some(config));
    assert!(diags.is_empty(), "expected no diagnostics, got {diags:#?}");
}

// --- the seed examples ---

#[test]
fn seed_examples_have_no_errors() {
    for name in EXAMPLES {
        for config in [Some(seed_config()), None] {
            let diags = lint(&example(name), config.as_ref());
            assert_eq!(errors(&diags), Vec::<&Diagnostic>::new(), "{name}");
            let fields: Vec<&str> = warnings(&diags).iter().map(|d| d.field.as_str()).collect();
            // The only justified warning: the X-Ray daemon runs as the ignored uid, so its
            // traffic bypasses the proxy and it does not wait for it.
            let expected: &[&str] = if name.contains("xray") { &["containerDefinitions[2].user"] } else { &[] };
            assert_eq!(fields, expected, "{name}");
        }
    }
}

#[test]
fn xray_daemon_bypass_is_explained() {
    let d = single_warning(&example("ec2-xray-taskB"), "containerDefinitions[2].user", Some("1337"));
    assert!(d.message.starts_with("container \"xray-daemon\" runs as uid 1337 (IgnoredUID), like the proxy"), "{d}");
    assert!(d.message.contains("need not wait for \"envoy\" to be HEALTHY"), "{d}");
    assert!(d.message.contains("X-Ray daemon is set up this way on purpose"), "{d}");
}

#[test]
fn xray_daemon_bypass_without_config_compares_with_the_proxy_user() {
    let d =
        single(&example("fargate-xray-taskB"), None, Severity::Warning, "containerDefinitions[2].user", Some("1337"));
    assert!(d.message.contains("runs as the proxy container's user \"1337\""), "{d}");
}

#[test]
fn an_init_container_the_proxy_waits_for_need_not_wait_for_the_proxy() {
    for condition in ["SUCCESS", "COMPLETE"] {
        let td = mutated("ec2-taskB", |td| {
            let init = json!({"name": "intercept-init", "image": "intercept", "essential": false, "user": "0"});
            td["containerDefinitions"].as_array_mut().unwrap().insert(0, init);
            td["containerDefinitions"][2]["dependsOn"] =
                json!([{"containerName": "intercept-init", "condition": condition}]);
        });
        assert_clean(&td, &seed_config());
    }
    // Any other condition does not make it an init container: it must wait like the others.
    let td = mutated("ec2-taskB", |td| {
        let init = json!({"name": "intercept-init", "image": "intercept", "essential": false});
        td["containerDefinitions"].as_array_mut().unwrap().insert(0, init);
        td["containerDefinitions"][2]["dependsOn"] = json!([{"containerName": "intercept-init", "condition": "START"}]);
    });
    let d = single_warning(&td, "containerDefinitions[0].dependsOn", None);
    assert!(d.message.contains("does not wait for the proxy"), "{d}");
}

#[test]
fn ignored_identity_with_dependency_still_bypasses_the_proxy() {
    let td = mutated("ec2-xray-taskB", |td| {
        td["containerDefinitions"][2]["dependsOn"] = json!([{"containerName": "envoy", "condition": "HEALTHY"}]);
    });
    let d = single_warning(&td, "containerDefinitions[2].user", Some("1337"));
    assert!(d.message.contains("none of its outbound TCP traffic goes through the proxy"), "{d}");
}

#[test]
fn a_sidecar_that_does_not_wait_is_warned_about() {
    // The X-Ray daemon under another user maps no AppPorts port: a sidecar, not the application.
    let td = mutated("ec2-xray-taskB", |td| td["containerDefinitions"][2]["user"] = json!("1000"));
    let d = single_warning(&td, "containerDefinitions[2].dependsOn", None);
    assert!(d.message.starts_with("container \"xray-daemon\" does not wait for the proxy"), "{d}");
    assert!(d.message.ends_with("while UDP, such as X-Ray or StatsD traffic, is not intercepted)"), "{d}");
}

/// ec2-taskB with its application container's port mappings replaced by `mappings`, and a
/// log router with `router` as its mappings, neither waiting for the proxy.
fn app_and_router(mappings: Value, router: Value) -> Value {
    mutated("ec2-taskB", |td| {
        remove(&mut td["containerDefinitions"][0], "dependsOn");
        td["containerDefinitions"][0]["portMappings"] = mappings;
        let sidecar = json!({"name": "log-router", "image": "fluent-bit", "portMappings": router});
        td["containerDefinitions"].as_array_mut().unwrap().push(sidecar);
    })
}

#[test]
fn the_application_is_the_owner_of_an_app_port_or_the_only_essential_container() {
    let severities = |td: &Value, config: Option<&ProxyConfig>| -> Vec<(String, Severity)> {
        lint(td, config).into_iter().map(|d| (d.field, d.severity)).collect()
    };
    let (app, router) =
        ("containerDefinitions[0].dependsOn".to_owned(), "containerDefinitions[2].dependsOn".to_owned());
    let config = seed_config();
    // The owner of AppPorts 9080 is the application, wherever it is in the list.
    let td = app_and_router(json!([{"containerPort": 9080}]), json!([{"containerPort": 2020}]));
    assert_eq!(severities(&td, Some(&config)), [(app.clone(), Severity::Error), (router.clone(), Severity::Warning)]);
    let td = app_and_router(json!([{"containerPort": 2020}]), json!([{"containerPort": 9080}]));
    assert_eq!(severities(&td, Some(&config)), [(app.clone(), Severity::Warning), (router.clone(), Severity::Error)]);
    // Nobody maps an AppPorts port: with two essential candidates neither is known to be the
    // application, and the unmapped port is an error since ports are declared.
    let td = app_and_router(json!([{"containerPort": 8080}]), json!([]));
    let appports = "proxyConfiguration.properties[3].value".to_owned();
    assert_eq!(
        severities(&td, Some(&config)),
        [(app.clone(), Severity::Warning), (router.clone(), Severity::Warning), (appports, Severity::Error)]
    );
    // The only essential container besides the proxy is the application, with or without a
    // configuration to read AppPorts from.
    let td = mutated("ec2-taskB", |td| {
        remove(&mut td["containerDefinitions"][0], "dependsOn");
        remove(&mut td["containerDefinitions"][0], "portMappings");
    });
    let without_ingress = ProxyConfig { ingress: None, ..seed_config() };
    for config in [Some(&without_ingress), None] {
        assert_eq!(severities(&td, config), [(app.clone(), Severity::Error)]);
    }
    // A container running as the ignored identity bypasses the proxy: it does not count.
    let td = mutated("ec2-xray-taskB", |td| {
        remove(&mut td["containerDefinitions"][0], "dependsOn");
        remove(&mut td["containerDefinitions"][0], "portMappings");
    });
    let xray = ("containerDefinitions[2].user".to_owned(), Severity::Warning);
    assert_eq!(severities(&td, Some(&without_ingress)), [(app.clone(), Severity::Error), xray]);
}

// --- the describe-task-definition wrapper and the document's shape ---

#[test]
fn describe_output_is_linted_with_paths_into_the_wrapper() {
    for name in EXAMPLES {
        let td = mutated(name, |td| remove(&mut td["containerDefinitions"][0], "dependsOn"));
        let wrapped = json!({"taskDefinition": td, "tags": []});
        let config = seed_config();
        // The same findings, each at its place in the wrapper.
        let prefixed: Vec<Diagnostic> = lint(&td, Some(&config))
            .into_iter()
            .map(|d| Diagnostic { field: format!("taskDefinition.{}", d.field), ..d })
            .collect();
        assert_eq!(lint(&wrapped, Some(&config)), prefixed, "{name}");
        let fields: Vec<&str> = errors(&prefixed).iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["taskDefinition.containerDefinitions[0].dependsOn"], "{name}");
        let clean = json!({"taskDefinition": example(name)});
        assert!(errors(&lint(&clean, Some(&config))).is_empty(), "{name}");
    }
    // Property paths follow too.
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["portMappings"][0]["containerPort"] = json!(9081));
    single_error(&json!({"taskDefinition": td}), "taskDefinition.proxyConfiguration.properties[3].value", Some("9080"));
}

#[test]
fn wrapper_must_hold_an_object() {
    let d = single_error(&json!({"taskDefinition": []}), "taskDefinition", Some("[]"));
    assert_eq!(d.message, "must be an object, not an array");
}

#[test]
fn document_must_be_an_object() {
    let d = single_error(&json!(["envoy"]), "$", Some(r#"["envoy"]"#));
    assert_eq!(d.message, "must be a task definition object or describe-task-definition output, not an array");
}

#[test]
fn container_definitions_of_the_wrong_type() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"] = json!({}));
    let d = single_error(&td, "containerDefinitions", Some("{}"));
    assert_eq!(d.message, "must be an array, not an object");
}

#[test]
fn container_definitions_missing_or_cased_wrong() {
    let td = mutated("ec2-taskB", |td| {
        let defs = td["containerDefinitions"].take();
        remove(td, "containerDefinitions");
        td["ContainerDefinitions"] = defs;
    });
    let d = single_error(&td, "containerDefinitions", None);
    assert!(d.message.ends_with("(found \"ContainerDefinitions\": keys are case-sensitive)"), "{d}");
}

#[test]
fn container_definitions_empty() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"] = json!([]));
    let d = single_error(&td, "containerDefinitions", Some("[]"));
    assert!(d.message.starts_with("is empty"), "{d}");
}

#[test]
fn containers_need_unique_names() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["name"] = json!("envoy"));
    let diags = lint(&td, Some(&seed_config()));
    let d = diags.iter().find(|d| d.field == "containerDefinitions[1].name").expect("duplicate reported");
    assert!(d.is_error() && d.message.contains("names must be unique"), "{d}");

    let td = mutated("ec2-taskB", |td| remove(&mut td["containerDefinitions"][0], "name"));
    let d = single_error(&td, "containerDefinitions[0].name", None);
    assert!(d.message.starts_with("missing: every container needs a name"), "{d}");
}

#[test]
fn missing_proxy_configuration() {
    let td = mutated("ec2-taskB", |td| remove(td, "proxyConfiguration"));
    // Nothing else can be checked against the proxy, and no config validated.
    let d = single(&td, None, Severity::Error, "proxyConfiguration", None);
    assert!(d.message.contains("no APPMESH proxyConfiguration"), "{d}");
}

// --- proxyConfiguration.containerName ---

#[test]
fn container_name_naming_nothing() {
    let td = mutated("fargate-taskB", |td| td["proxyConfiguration"]["containerName"] = json!("envy"));
    let d = single_error(&td, "proxyConfiguration.containerName", Some("envy"));
    assert_eq!(
        d.message,
        "names no container of containerDefinitions (there are: \"appName\", \"envoy\"); it must name the proxy \
         (Envoy) container; did you mean \"envoy\"?"
    );
    let td = mutated("fargate-taskB", |td| td["proxyConfiguration"]["containerName"] = json!("sidecar"));
    let d = single_error(&td, "proxyConfiguration.containerName", Some("sidecar"));
    assert!(!d.message.contains("did you mean"), "{d}");
    // Named at its place in describe-task-definition output, like every other finding.
    single_error(&json!({"taskDefinition": td}), "taskDefinition.proxyConfiguration.containerName", Some("sidecar"));
}

#[test]
fn container_name_missing_or_not_a_string() {
    let td = mutated("fargate-taskB", |td| remove(&mut td["proxyConfiguration"], "containerName"));
    let d = single_error(&td, "proxyConfiguration.containerName", None);
    assert!(d.message.starts_with("missing: name the proxy (Envoy) container"), "{d}");
    let td = mutated("fargate-taskB", |td| td["proxyConfiguration"]["containerName"] = json!(["envoy"]));
    let d = single_error(&td, "proxyConfiguration.containerName", Some(r#"["envoy"]"#));
    assert_eq!(d.message, "must be a string, not an array");
}

// --- the proxy container's user ---

fn with_proxy_user(user: Value) -> Value {
    mutated("ec2-taskB", |td| td["containerDefinitions"][1]["user"] = user)
}

#[test]
fn proxy_user_must_match_ignored_uid() {
    let d = single_error(&with_proxy_user(json!("1000")), "containerDefinitions[1].user", Some("1000"));
    assert_eq!(
        d.message,
        "the proxy must run as uid 1337 (IgnoredUID), or Envoy's own outbound connections are redirected back to \
         Envoy (a loop); set \"user\": \"1337\""
    );
    assert_clean(&with_proxy_user(json!("1337:1337")), &seed_config());
    assert_clean(&with_proxy_user(json!("1337:0")), &seed_config());
}

#[test]
fn proxy_user_name_cannot_be_checked() {
    let d = single_warning(&with_proxy_user(json!("envoy")), "containerDefinitions[1].user", Some("envoy"));
    assert!(d.message.starts_with("cannot check that the proxy runs as uid 1337 (IgnoredUID)"), "{d}");
    assert!(d.message.contains("the user name \"envoy\" may or may not be uid 1337"), "{d}");
}

#[test]
fn proxy_user_as_a_number() {
    let d = single_error(&with_proxy_user(json!(1337)), "containerDefinitions[1].user", Some("1337"));
    assert_eq!(d.message, "must be a string (ECS takes user as text): write \"user\": \"1337\"");
}

#[test]
fn proxy_user_malformed() {
    let d = single_error(&with_proxy_user(json!("1337:")), "containerDefinitions[1].user", Some("1337:"));
    assert!(d.message.starts_with("has an empty group"), "{d}");
}

#[test]
fn proxy_user_missing() {
    let td = mutated("ec2-taskB", |td| remove(&mut td["containerDefinitions"][1], "user"));
    let d = single_error(&td, "containerDefinitions[1].user", None);
    assert!(d.message.starts_with("the proxy container has no user"), "{d}");
    assert!(d.message.ends_with("set \"user\": \"1337\""), "{d}");
}

#[test]
fn proxy_group_against_ignored_gid_only() {
    let gid_only = ProxyConfig { ignored_uids: Vec::new(), ignored_gids: vec![1337], ..seed_config() };
    let lint_user = |user: &str| lint(&with_proxy_user(json!(user)), Some(&gid_only));
    assert!(lint_user("0:1337").is_empty());
    let d = lint_user("1337:0");
    assert_eq!(d.len(), 1);
    assert!(d[0].is_error() && d[0].message.starts_with("the proxy must run as gid 1337 (IgnoredGID)"), "{}", d[0]);
    assert!(d[0].message.ends_with("set \"user\": \"<uid>:1337\""), "{}", d[0]);
    let d = lint_user("1337");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].severity, Severity::Warning);
    assert!(d[0].message.contains("the user's primary group in the image decides"), "{}", d[0]);
}

#[test]
fn proxy_user_without_config_is_only_checked_for_form() {
    let td = with_proxy_user(json!("1000"));
    assert!(errors(&lint(&td, None)).is_empty());
    let d = single(&with_proxy_user(json!(":1")), None, Severity::Error, "containerDefinitions[1].user", Some(":1"));
    assert!(d.message.starts_with("has no user part"), "{d}");
}

// --- essential and healthCheck ---

#[test]
fn proxy_must_be_essential() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][1]["essential"] = json!(false));
    let d = single_error(&td, "containerDefinitions[1].essential", Some("false"));
    assert!(d.message.starts_with("the proxy container must be essential"), "{d}");
    // ECS defaults essential to true.
    let td = mutated("ec2-taskB", |td| remove(&mut td["containerDefinitions"][1], "essential"));
    assert_clean(&td, &seed_config());
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][1]["essential"] = json!("true"));
    let d = single_error(&td, "containerDefinitions[1].essential", Some("true"));
    assert_eq!(d.message, "must be true or false, not a string");
}

#[test]
fn proxy_health_check_missing() {
    let td = mutated("fargate-taskB", |td| remove(&mut td["containerDefinitions"][1], "healthCheck"));
    let d = single_error(&td, "containerDefinitions[1].healthCheck", None);
    assert!(d.message.starts_with("the proxy container has no healthCheck, so it never becomes HEALTHY"), "{d}");
    assert!(d.message.contains(LIVE_CHECK), "{d}");
}

#[test]
fn proxy_health_check_unusual() {
    let td = mutated("fargate-taskB", |td| {
        td["containerDefinitions"][1]["healthCheck"]["command"] = json!(["CMD-SHELL", "true"]);
    });
    let d = single_warning(&td, "containerDefinitions[1].healthCheck.command", Some(r#"["CMD-SHELL","true"]"#));
    assert!(d.message.starts_with("is not Envoy's admin LIVE check"), "{d}");
    let td = mutated("fargate-taskB", |td| {
        td["containerDefinitions"][1]["healthCheck"]["command"] =
            json!(["CMD", "curl", "-sf", "http://localhost:9901/ready"]);
    });
    assert_clean(&td, &seed_config());
}

#[test]
fn proxy_health_check_without_command() {
    let td = mutated("fargate-taskB", |td| td["containerDefinitions"][1]["healthCheck"]["command"] = json!([]));
    single_error(&td, "containerDefinitions[1].healthCheck.command", Some("[]"));
    let td = mutated("fargate-taskB", |td| td["containerDefinitions"][1]["healthCheck"]["command"] = json!([1]));
    let d = single_error(&td, "containerDefinitions[1].healthCheck.command[0]", Some("1"));
    assert_eq!(d.message, "must be a string, not a number");
    let td = mutated("fargate-taskB", |td| td["containerDefinitions"][1]["healthCheck"] = json!("curl"));
    single_error(&td, "containerDefinitions[1].healthCheck", Some("curl"));
}

// --- the mesh resource variable ---

#[test]
fn proxy_needs_a_mesh_resource() {
    let td = mutated("ec2-taskB", |td| remove(&mut td["containerDefinitions"][1], "environment"));
    let d = single_error(&td, "containerDefinitions[1].environment", None);
    assert!(d.message.starts_with("names no mesh resource"), "{d}");
    assert!(d.message.contains("APPMESH_RESOURCE_ARN") && d.message.contains("APPMESH_VIRTUAL_NODE_NAME"), "{d}");

    let td = mutated("ec2-taskB", |td| {
        td["containerDefinitions"][1]["environment"] = json!([{"name": "ENABLE_ENVOY_XRAY_TRACING", "value": "1"}]);
    });
    single_error(
        &td,
        "containerDefinitions[1].environment",
        Some(r#"[{"name":"ENABLE_ENVOY_XRAY_TRACING","value":"1"}]"#),
    );
}

#[test]
fn mesh_resource_arn_and_secret_are_accepted() {
    let td = mutated("ec2-taskB", |td| {
        td["containerDefinitions"][1]["environment"] = json!([{
            "name": "APPMESH_RESOURCE_ARN",
            "value": "arn:aws:appmesh:us-west-2:111122223333:mesh/apps/virtualNode/serviceB"
        }]);
    });
    assert_clean(&td, &seed_config());
    let td = mutated("ec2-taskB", |td| {
        remove(&mut td["containerDefinitions"][1], "environment");
        td["containerDefinitions"][1]["secrets"] = json!([{"name": "APPMESH_RESOURCE_ARN", "valueFrom": "arn:x"}]);
    });
    assert_clean(&td, &seed_config());
}

#[test]
fn mesh_resource_possibly_in_environment_files() {
    let td = mutated("ec2-taskB", |td| {
        remove(&mut td["containerDefinitions"][1], "environment");
        td["containerDefinitions"][1]["environmentFiles"] =
            json!([{"value": "arn:aws:s3:::b/envoy.env", "type": "s3"}]);
    });
    let d = single_warning(&td, "containerDefinitions[1].environment", None);
    assert!(d.message.contains("environmentFiles may set one"), "{d}");
}

#[test]
fn mesh_resource_empty_or_mistyped() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][1]["environment"][0]["value"] = json!(""));
    let d = single_error(&td, "containerDefinitions[1].environment[0].value", Some(""));
    assert!(d.message.starts_with("APPMESH_VIRTUAL_NODE_NAME is empty"), "{d}");
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][1]["environment"] = json!({}));
    let diags = lint(&td, Some(&seed_config()));
    let fields: Vec<(&str, &str)> = diags.iter().map(|d| (d.field.as_str(), d.message.as_str())).collect();
    assert_eq!(fields[0], ("containerDefinitions[1].environment", "must be an array, not an object"));
    assert!(diags.iter().all(Diagnostic::is_error));
}

// --- dependsOn ---

#[test]
fn app_container_must_depend_on_the_proxy() {
    let td = mutated("ec2-taskB", |td| remove(&mut td["containerDefinitions"][0], "dependsOn"));
    let d = single_error(&td, "containerDefinitions[0].dependsOn", None);
    assert_eq!(
        d.message,
        "container \"appName\" does not wait for the proxy: interception is in place before any container starts, \
         so until Envoy is ready its connections are redirected to a proxy that cannot serve them; add \
         {\"containerName\": \"envoy\", \"condition\": \"HEALTHY\"} to its dependsOn"
    );
}

#[test]
fn dependency_on_another_container_does_not_count() {
    let td = mutated("ec2-taskB", |td| {
        td["containerDefinitions"][0]["dependsOn"][0]["containerName"] = json!("db");
    });
    single_error(&td, "containerDefinitions[0].dependsOn", Some(r#"[{"condition":"HEALTHY","containerName":"db"}]"#));
}

#[test]
fn dependency_must_be_healthy() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["dependsOn"][0]["condition"] = json!("START"));
    let d = single_error(&td, "containerDefinitions[0].dependsOn[0].condition", Some("START"));
    assert!(d.message.starts_with("must be HEALTHY: with START, container \"appName\" does not wait"), "{d}");
    let td = mutated("ec2-taskB", |td| remove(&mut td["containerDefinitions"][0]["dependsOn"][0], "condition"));
    single_error(&td, "containerDefinitions[0].dependsOn[0].condition", None);
}

#[test]
fn non_essential_container_without_dependency_is_a_warning() {
    let td = mutated("ec2-taskB", |td| {
        remove(&mut td["containerDefinitions"][0], "dependsOn");
        td["containerDefinitions"][0]["essential"] = json!(false);
    });
    let d = single_warning(&td, "containerDefinitions[0].dependsOn", None);
    assert!(d.message.ends_with("(a warning: it is not essential)"), "{d}");
}

#[test]
fn depends_on_of_the_wrong_type() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["dependsOn"] = json!({"containerName": "envoy"}));
    let d = single_error(&td, "containerDefinitions[0].dependsOn", Some(r#"{"containerName":"envoy"}"#));
    assert_eq!(d.message, "must be an array, not an object");
}

// --- AppPorts and portMappings ---

#[test]
fn app_port_not_in_port_mappings() {
    let config = ProxyConfig {
        ingress: Some(Ingress {
            proxy_port: 15000,
            app_ports: PortSet::from_ranges([9080, 9090].map(PortRange::single)),
        }),
        ..seed_config()
    };
    // AppPorts is the fourth property in the EC2 example and the second in the Fargate one.
    for (name, field) in [
        ("ec2-taskB", "proxyConfiguration.properties[3].value"),
        ("fargate-taskB", "proxyConfiguration.properties[1].value"),
    ] {
        let d = single(&example(name), Some(&config), Severity::Error, field, Some("9090"));
        assert!(d.message.starts_with("port 9090 in no container's portMappings"), "{d}");
    }
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["portMappings"][0]["containerPort"] = json!(9081));
    single_error(&td, "proxyConfiguration.properties[3].value", Some("9080"));
}

#[test]
fn app_port_ranges_must_be_covered_port_by_port() {
    let config = ProxyConfig {
        ingress: Some(Ingress {
            proxy_port: 15000,
            app_ports: PortSet::from_ranges([PortRange { start: 8000, end: 8010 }]),
        }),
        ..seed_config()
    };
    let td = mutated("ec2-taskB", |td| {
        td["containerDefinitions"][0]["portMappings"] =
            json!([{"containerPortRange": "8000-8004"}, {"containerPort": 8006, "protocol": "tcp"}]);
    });
    let d =
        single(&td, Some(&config), Severity::Error, "proxyConfiguration.properties[3].value", Some("8005,8007-8010"));
    assert!(d.message.starts_with("ports 8005,8007-8010 in no container's portMappings"), "{d}");
    let td = mutated("ec2-taskB", |td| {
        td["containerDefinitions"][0]["portMappings"] = json!([{"containerPortRange": "8000-8010"}]);
    });
    assert_clean(&td, &config);
}

#[test]
fn app_port_with_no_tcp_port_declared_anywhere_is_a_warning() {
    // An awsvpc application listens without portMappings; UDP mappings (X-Ray) are no TCP port.
    for mappings in [json!([]), json!([{"containerPort": 2000, "protocol": "udp"}])] {
        let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["portMappings"] = mappings);
        let d = single_warning(&td, "proxyConfiguration.properties[3].value", Some("9080"));
        assert!(d.message.starts_with("port 9080 in no container's portMappings, and no container declares a tcp"));
    }
}

#[test]
fn udp_mapping_does_not_cover_an_app_port() {
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["portMappings"][0]["protocol"] = json!("udp"));
    let d = single_error(&td, "proxyConfiguration.properties[3].value", Some("9080"));
    assert!(d.message.ends_with("(9080 is mapped for udp only; interception is TCP-only)"), "{d}");
}

#[test]
fn app_ports_from_flags_are_named_by_property() {
    let td = mutated("ec2-taskB", |td| {
        td["containerDefinitions"][0]["portMappings"][0]["containerPort"] = json!(9081);
        td["proxyConfiguration"]["properties"].as_array_mut().unwrap().retain(|p| p["name"] != "AppPorts");
    });
    single_error(&td, "AppPorts", Some("9080"));
}

#[test]
fn port_mappings_of_the_wrong_type() {
    let td =
        mutated("ec2-taskB", |td| td["containerDefinitions"][0]["portMappings"][0]["containerPort"] = json!("9080"));
    let diags = lint(&td, Some(&seed_config()));
    let fields: Vec<(&str, Option<&str>)> = diags.iter().map(|d| (d.field.as_str(), d.value.as_deref())).collect();
    assert_eq!(
        fields,
        [
            ("containerDefinitions[0].portMappings[0].containerPort", Some("9080")),
            // The unreadable mapping covers nothing.
            ("proxyConfiguration.properties[3].value", Some("9080")),
        ]
    );
    assert_eq!(diags[0].message, "must be an integer port number, not a string");
    let td = mutated("ec2-taskB", |td| {
        td["containerDefinitions"][0]["portMappings"]
            .as_array_mut()
            .unwrap()
            .push(json!({"containerPortRange": "9-1"}));
    });
    single_error(&td, "containerDefinitions[0].portMappings[1].containerPortRange", Some("9-1"));
    let td = mutated("ec2-taskB", |td| td["containerDefinitions"][0]["portMappings"][0]["protocol"] = json!("TCP"));
    let d = lint(&td, Some(&seed_config()));
    assert_eq!(d[0].field, "containerDefinitions[0].portMappings[0].protocol");
    assert_eq!(d[0].message, "must be \"tcp\" or \"udp\"");
}

// --- networkMode and Fargate ---

#[test]
fn network_mode_other_than_awsvpc_on_ec2() {
    let td = mutated("ec2-taskB", |td| td["networkMode"] = json!("bridge"));
    let d = single_warning(&td, "networkMode", Some("bridge"));
    assert!(d.message.starts_with("use \"awsvpc\": with bridge every container has its own network namespace"), "{d}");
    assert!(d.message.contains("only awsvpc gives the task one namespace of its own (with its own ENI)"), "{d}");
    let td = mutated("ec2-taskB", |td| td["networkMode"] = json!("host"));
    let d = single_warning(&td, "networkMode", Some("host"));
    assert!(d.message.contains("every process on the instance"), "{d}");
    let td = mutated("ec2-taskB", |td| remove(td, "networkMode"));
    let d = single_warning(&td, "networkMode", None);
    assert!(d.message.contains("it is not set, so ECS uses bridge"), "{d}");
}

#[test]
fn network_mode_other_than_awsvpc_on_fargate() {
    let td = mutated("fargate-taskB", |td| td["networkMode"] = json!("bridge"));
    let d = single_error(&td, "networkMode", Some("bridge"));
    assert!(d.message.starts_with("Fargate supports only \"awsvpc\""), "{d}");
}

#[test]
fn network_mode_of_the_wrong_type() {
    let td = mutated("ec2-taskB", |td| td["networkMode"] = json!(["awsvpc"]));
    single_error(&td, "networkMode", Some(r#"["awsvpc"]"#));
}

#[test]
fn fargate_proxy_ports_above_1024() {
    let low = ProxyConfig {
        proxy_egress_port: 1024,
        ingress: Some(Ingress { proxy_port: 80, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        ..seed_config()
    };
    let diags = lint(&example("fargate-taskB"), Some(&low));
    let fields: Vec<(&str, Option<&str>)> = diags.iter().map(|d| (d.field.as_str(), d.value.as_deref())).collect();
    // ProxyIngressPort is the first property of the Fargate example, ProxyEgressPort the last.
    assert_eq!(
        fields,
        [
            ("proxyConfiguration.properties[0].value", Some("80")),
            ("proxyConfiguration.properties[5].value", Some("1024"))
        ]
    );
    assert!(diags.iter().all(|d| d.is_error() && d.message.contains("greater than 1024")));
    // EC2 has no such rule, and 1025 is fine on Fargate.
    assert_clean(&example("ec2-taskB"), &low);
    assert_clean(&example("fargate-taskB"), &ProxyConfig { proxy_egress_port: 1025, ..seed_config() });
}

#[test]
fn requires_compatibilities_of_the_wrong_type() {
    let td = mutated("fargate-taskB", |td| td["requiresCompatibilities"] = json!("FARGATE"));
    single_error(&td, "requiresCompatibilities", Some("FARGATE"));
}

// --- robustness ---

/// Every node of `value` with its JSON pointer.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| pointers(v, format!("{at}/{k}"), out)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| pointers(v, format!("{at}/{i}"), out)),
        _ => {}
    }
    out.push(at);
}

#[test]
fn any_value_of_any_type_anywhere_is_diagnosed_not_panicked_on() {
    let replacements =
        [json!(null), json!(true), json!(-1), json!(70000), json!("x"), json!([]), json!({}), json!([{}])];
    for name in EXAMPLES {
        let original = example(name);
        let mut all = Vec::new();
        pointers(&original, String::new(), &mut all);
        for pointer in &all {
            for replacement in &replacements {
                let mut td = original.clone();
                match td.pointer_mut(pointer) {
                    Some(slot) => *slot = replacement.clone(),
                    None => unreachable!("{pointer}"),
                }
                for config in [Some(seed_config()), None] {
                    for d in lint(&td, config.as_ref()) {
                        assert!(!d.field.is_empty() && !d.message.is_empty(), "{name} {pointer}: {d:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn port_set_difference() {
    let set = PortSet::from_ranges([PortRange { start: 10, end: 20 }, PortRange { start: 30, end: 30 }]);
    let r = |start, end| PortRange { start, end };
    assert_eq!(difference(r(0, 40), &set), [r(0, 9), r(21, 29), r(31, 40)]);
    assert_eq!(difference(r(12, 18), &set), []);
    assert_eq!(difference(r(20, 30), &set), [r(21, 29)]);
    let full = PortSet::from_ranges([r(0, 65535)]);
    assert_eq!(difference(r(65535, 65535), &full), []);
    assert_eq!(difference(r(65535, 65535), &PortSet::new()), [r(65535, 65535)]);
}
