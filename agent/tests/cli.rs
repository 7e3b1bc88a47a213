//! The `intercept` binary end to end, unprivileged: exit codes, where messages go, and
//! byte-identical plans.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EXAMPLES: [&str; 4] = ["fargate-taskB", "fargate-xray-taskB", "ec2-taskB", "ec2-xray-taskB"];

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(format!("{name}.json"))
}

fn intercept(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_intercept")).args(args), None)
}

fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    // The APPMESH_* variables of whoever runs the tests must not leak into them.
    for (key, _) in std::env::vars() {
        if key.starts_with("APPMESH_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn temp_file(contents: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(contents).unwrap();
    file
}

#[test]
fn check_accepts_every_seed_example() {
    for name in EXAMPLES {
        let path = example(name);
        let out = intercept(&["check", "--task-definition", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains("result: 0 errors"), "{name}: {}", stdout(&out));
        assert!(stdout(&out).contains("implicit exemptions  port 22, 169.254.170.2, 169.254.169.254"));
    }
}

#[test]
fn check_json_report_is_machine_readable() {
    let path = example("ec2-taskB");
    let out = intercept(&["check", "--task-definition", path.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"], 0);
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["config"]["proxy_egress_port"], 15001);
}

#[test]
fn check_reads_describe_task_definition_output_from_stdin() {
    let inner: serde_json::Value = serde_json::from_slice(&std::fs::read(example("ec2-taskB")).unwrap()).unwrap();
    let wrapped = serde_json::to_vec(&serde_json::json!({ "taskDefinition": inner })).unwrap();
    let out =
        run(Command::new(env!("CARGO_BIN_EXE_intercept")).args(["check", "--task-definition", "-"]), Some(&wrapped));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn check_reports_every_problem_and_exits_2() {
    let bad = br#"{"type": "APPMESH", "containerName": "envoy", "properties": [
        {"name": "IgnoreUID", "value": "1337"},
        {"name": "ProxyEgressPort", "value": "70000"},
        {"name": "AppPorts", "value": "9080"},
        {"name": "EgressIgnoredIPs", "value": "10.0.0.300"}
    ]}"#;
    let file = temp_file(bad);
    let out = intercept(&["check", "--proxy-configuration", file.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    for expected in [
        "did you mean `IgnoredUID`?",
        "ProxyEgressPort = 70000\n      invalid port: must be a decimal number from 1 to 65535",
        "missing: AppPorts is set but ProxyIngressPort is not",
        "invalid IP or CIDR block [10.0.0.300] specified",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn lint_errors_fail_check() {
    let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(example("ec2-taskB")).unwrap()).unwrap();
    doc["containerDefinitions"][0].as_object_mut().unwrap().remove("dependsOn");
    let file = temp_file(&serde_json::to_vec(&doc).unwrap());
    let out = intercept(&["check", "--task-definition", file.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("containerDefinitions[0].dependsOn"), "{}", stdout(&out));
}

#[test]
fn plan_rejects_bad_input_with_field_and_value() {
    let path = example("ec2-taskB");
    let out = intercept(&[
        "plan",
        "--backend",
        "iptables",
        "--task-definition",
        path.to_str().unwrap(),
        "--proxy-egress-port",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "a rejected configuration prints no plan");
    let err = stderr(&out);
    assert!(err.contains(r#"--proxy-egress-port = "0": invalid port"#), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
}

/// The ingress fallback is configuration: `plan` shows what `CONFIG` gets, refuse unless the
/// flag (or the task definition, or the environment) says app.
#[test]
fn plan_shows_the_ingress_fallback() {
    let path = example("ec2-taskB");
    for (extra, want) in [(&[][..], "= 0 (refuse)"), (&["--ingress-fallback", "app"][..], "= 1 (app)")] {
        let args = [&["plan", "--backend", "ebpf", "--task-definition", path.to_str().unwrap()][..], extra].concat();
        let out = intercept(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("[g].ingress_fallback   {want}\n")), "{extra:?}: {}", stdout(&out));
    }
}

#[test]
fn unreadable_inputs_exit_2() {
    let not_json = temp_file(b"proxyConfiguration: yes");
    let not_utf8 = temp_file(&[0xff, 0xfe, b'{', b'}']);
    let huge = temp_file(&vec![b' '; (1 << 20) + 1]);
    let cases = [
        (not_json.path().to_str().unwrap().to_owned(), "neither JSON nor a CloudFormation template"),
        (not_utf8.path().to_str().unwrap().to_owned(), "not valid UTF-8"),
        (huge.path().to_str().unwrap().to_owned(), "larger than 1024 KiB"),
        ("/nonexistent/task.json".to_owned(), "cannot read"),
    ];
    for (path, message) in cases {
        let out = intercept(&["plan", "--backend", "ebpf", "--task-definition", &path]);
        assert_eq!(out.status.code(), Some(2), "{path}");
        assert!(stderr(&out).contains(message), "{path}: {}", stderr(&out));
    }
}

#[test]
fn from_env_is_a_drop_in_for_the_eks_init_container() {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_intercept"))
            .args(["plan", "--backend", "iptables", "--from-env"])
            .env("APPMESH_IGNORE_UID", "1337")
            .env("APPMESH_ENVOY_INGRESS_PORT", "15000")
            .env("APPMESH_ENVOY_EGRESS_PORT", "15001")
            .env("APPMESH_APP_PORTS", "9080,9443")
            .env("APPMESH_EGRESS_IGNORED_IP", "10.0.0.0/8")
            .env("APPMESH_EGRESS_IGNORED_PORTS", "5432")
            .env("APPMESH_ENABLE_IPV6", "0"),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(plan.contains("--dports 9080,9443"), "{plan}");
    assert!(plan.contains("-d 10.0.0.0/8"), "{plan}");
    assert!(!plan.contains("ip6tables-restore"), "IPv6 switched off: {plan}");
}

#[test]
fn plans_are_byte_identical_across_runs() {
    let ips: Vec<String> = (0..10_000u32).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
    let big = serde_json::json!({
        "type": "APPMESH",
        "containerName": "envoy",
        "properties": [
            {"name": "IgnoredUID", "value": "1337"},
            {"name": "ProxyEgressPort", "value": "15001"},
            {"name": "EgressIgnoredIPs", "value": ips.join(",")},
            {"name": "EgressIgnoredPorts", "value": "1-10,5432,9000-9100"}
        ]
    });
    let file = temp_file(&serde_json::to_vec(&big).unwrap());
    let seed = example("ec2-taskB");
    let inputs =
        [("--task-definition", seed.to_str().unwrap()), ("--proxy-configuration", file.path().to_str().unwrap())];
    for (flag, path) in inputs {
        for backend in ["iptables", "ebpf", "nftables"] {
            for format in ["text", "json"] {
                let args = ["plan", "--backend", backend, "--format", format, flag, path];
                let first = intercept(&args);
                let second = intercept(&args);
                assert_eq!(first.status.code(), Some(0), "{args:?}: {}", stderr(&first));
                assert!(!first.stdout.is_empty());
                assert!(first.stdout == second.stdout, "{args:?} differs between runs");
            }
        }
    }
}

#[test]
fn demo_prints_the_report_and_every_plan() {
    let out = intercept(&["demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "result: 0 errors",
        "# intercept plan: iptables backend",
        "# intercept plan: eBPF backend",
        "# intercept plan: nftables backend",
    ] {
        assert!(text.contains(expected), "missing {expected:?}");
    }
}
