//! The examples in `deploy/` are what operators copy: every ECS task definition there passes
//! `intercept check` with no error and no warning, and the tasks-dir example's `proxyConfiguration` (the
//! daemon's input) validates.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_intercept");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn check(args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let mut child = Command::new(BIN)
        .arg("check")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run intercept check");
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn every_deploy_task_definition_passes_check() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(deploy()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("ecs-task-definition") && name.ends_with(".json")) {
            continue;
        }
        let (code, text) = check(&["--task-definition", path.to_str().unwrap()], None);
        assert_eq!(code, 0, "{name}: {text}");
        assert!(text.contains("result: 0 errors, 0 warnings"), "{name}: {text}");
        checked.push(name);
    }
    checked.sort();
    assert_eq!(checked, ["ecs-task-definition-ec2-ebpf.json", "ecs-task-definition-ec2.json"]);
}

#[test]
fn the_example_task_file_has_the_agreed_shape_and_a_valid_proxy_configuration() {
    let text = std::fs::read_to_string(deploy().join("tasks/example-task.json")).unwrap();
    let task: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&str> = task.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = ["backend", "cgroup", "id", "netns", "proxyConfiguration"];
    expected.sort();
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, expected);
    let (code, text) = check(&["--proxy-configuration", "-"], Some(&task["proxyConfiguration"].to_string()));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("result: 0 errors, 0 warnings"), "{text}");
}

/// The chained-plugin example: the intercept entry, as a runtime hands it to the plugin (the
/// list's `cniVersion` and `name` injected), is a valid configuration with no warning.
#[test]
fn the_cni_conflist_example_configures_intercept_cleanly() {
    let text = std::fs::read_to_string(deploy().join("cni/10-intercept.conflist")).unwrap();
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let plugins = list["plugins"].as_array().unwrap();
    let types: Vec<&str> = plugins.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["loopback", "bridge", "intercept-cni"], "intercept comes last, after the network plugins");
    let mut entry = plugins[2].clone();
    entry["cniVersion"] = list["cniVersion"].clone();
    entry["name"] = list["name"].clone();
    let netconf = intercept::cni::netconf::parse(entry.to_string().as_bytes(), |_| None).unwrap();
    let validated = netconf.validated().unwrap_or_else(|e| panic!("{e}"));
    assert!(validated.warnings.is_empty(), "{:?}", validated.warnings);
    assert_eq!(validated.config.proxy_egress_port, 15001);
}
