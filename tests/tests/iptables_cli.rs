//! `intercept apply | status | remove --backend iptables` as an operator runs them: target
//! flags, exit codes, text and JSON output, error messages.
//!
//! Needs root and the `intercept` binary (`cargo xtask test` builds it); see
//! `intercept_tests::topology`.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use intercept_tests::{
    topology::{Sleeper, intercept_bin, require_netns_privileges},
    traffic::{Client, Role, Sandbox, SandboxSpec},
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ec2-taskB.json");

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).env("RUST_LOG", "warn").output().unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

fn text(output: &Output) -> (i32, String, String) {
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn sandbox() -> Sandbox {
    Sandbox::new(&SandboxSpec {
        egress_proxy_ports: vec![15001],
        ingress_proxy_ports: vec![15000],
        app_ports: vec![9080],
        remote_ports: vec![80],
        remote_addresses: vec!["10.5.0.1".parse().unwrap()],
        ..SandboxSpec::default()
    })
}

fn setup(test: &str) -> (PathBuf, Sandbox) {
    require_netns_privileges(test);
    (intercept_bin(test), sandbox())
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_status_remove_by_namespace_path() {
    let (bin, sandbox) = setup("apply_status_remove_by_namespace_path");
    let netns = sandbox.task().path();
    let netns = netns.to_str().unwrap();
    let target = ["--backend", "iptables", "--netns", netns];
    let seed = ["--task-definition", SEED];

    let (code, stdout, stderr) = text(&run(&bin, &[&["apply"][..], &target, &seed].concat()));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with(&format!("apply: iptables-nft in the network namespace {netns} (")), "{stdout}");
    assert!(stdout.contains("done: IPv4 (2 chains, 6 rules, 2 jumps), IPv6 (2 chains, 4 rules, 2 jumps)"), "{stdout}");

    let (code, stdout, _) = text(&run(&bin, &[&["apply"][..], &target, &seed].concat()));
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to change"), "{stdout}");

    // A redirected connection moves the counters status shows.
    let reply = Client::new(CLIENT).netns(sandbox.task()).identity(1000, 1000).connect("10.5.0.1:80".parse().unwrap());
    assert_eq!(reply.unwrap().role, Role::EgressProxy);
    let (code, stdout, stderr) = text(&run(&bin, &[&["status"][..], &target, &seed].concat()));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("installed, and matches the configuration"), "{stdout}");
    let redirect = stdout.lines().find(|l| l.contains("-j REDIRECT --to-ports 15001") && !l.contains("ip6")).unwrap();
    assert!(redirect.trim_start().starts_with("1 "), "one packet counted: {redirect}");

    let (code, stdout, _) = text(&run(&bin, &[&["status", "--format", "json"][..], &target, &seed].concat()));
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((json["installed"].as_bool(), json["matches"].as_bool()), (Some(true), Some(true)));
    assert_eq!(json["mode"], "nft");
    let egress = &json["families"][0]["chains"][0];
    assert_eq!(egress["name"], "INTERCEPT_EGRESS");
    assert_eq!(egress["rules"].as_array().unwrap().last().unwrap()["packets"], 1);

    // Drift: another configuration does not match; exit 1 with the reason.
    let other = ["--proxy-egress-port", "15002", "--ignored-uid", "1337", "--ipv6", "false"];
    let (code, stdout, _) = text(&run(&bin, &[&["status"][..], &target, &other].concat()));
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("installed, but does NOT match the configuration"), "{stdout}");
    assert!(
        stdout.contains("IPv4: chain INTERCEPT_INGRESS is installed but not part of the configuration"),
        "{stdout}"
    );

    for round in ["first", "second"] {
        let (code, stdout, stderr) = text(&run(&bin, &[&["remove"][..], &target].concat()));
        assert_eq!(code, 0, "{round} remove: {stdout}{stderr}");
        let expected = if round == "first" { "done: nothing of intercept's is installed" } else { "nothing to change" };
        assert!(stdout.contains(expected), "{round} remove: {stdout}");
    }
    let (code, stdout, _) = text(&run(&bin, &[&["status"][..], &target].concat()));
    assert_eq!(code, 1);
    assert!(stdout.contains("NOT installed") && stdout.contains("nothing of intercept's is installed"), "{stdout}");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_by_pid_in_legacy_mode_with_a_dry_run_first() {
    let (bin, sandbox) = setup("apply_by_pid_in_legacy_mode_with_a_dry_run_first");
    let sleeper = Sleeper::start(sandbox.task());
    let pid = sleeper.pid().to_string();
    let target = ["--backend", "iptables", "--netns-pid", &pid, "--iptables-mode", "legacy"];
    let config = ["--proxy-egress-port", "15001", "--ignored-uid", "1337"];

    let (code, stdout, stderr) = text(&run(&bin, &[&["apply", "--dry-run"][..], &target, &config].concat()));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("network namespace of pid {pid}")), "{stdout}");
    assert!(stdout.contains("(--iptables-mode legacy)"), "{stdout}");
    assert!(
        stdout.contains("# dry run: would run iptables-restore --noflush (IPv4)\n*nat\n:INTERCEPT_EGRESS - [0:0]"),
        "{stdout}"
    );
    assert!(
        !sandbox.task().exec("iptables-legacy-save", &["-t", "nat"]).contains("INTERCEPT"),
        "the dry run changed nothing"
    );

    let (code, stdout, stderr) = text(&run(&bin, &[&["apply", "--format", "json"][..], &target, &config].concat()));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((json["changed"].as_bool(), json["mode"].as_str()), (Some(true), Some("legacy")));
    assert!(sandbox.task().exec("iptables-legacy-save", &["-t", "nat"]).contains("INTERCEPT_EGRESS"));
    let reply = Client::new(CLIENT).netns(sandbox.task()).identity(1000, 1000).connect("10.5.0.1:80".parse().unwrap());
    assert_eq!(reply.unwrap().role, Role::EgressProxy);

    // Without --iptables-mode, status and remove find intercept's chains in legacy.
    let by_pid = ["--backend", "iptables", "--netns-pid", &pid];
    let (code, stdout, _) = text(&run(&bin, &[&["status"][..], &by_pid, &config].concat()));
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("intercept's chains are in iptables-legacy"), "{stdout}");
    let (code, stdout, _) = text(&run(&bin, &[&["remove"][..], &by_pid].concat()));
    assert_eq!(code, 0, "{stdout}");
    assert!(!sandbox.task().exec("iptables-legacy-save", &["-t", "nat"]).contains("INTERCEPT"));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn bad_targets_and_bad_configurations_exit_2_and_change_nothing() {
    let (bin, sandbox) = setup("bad_targets_and_bad_configurations_exit_2_and_change_nothing");
    let config = ["--proxy-egress-port", "15001", "--ignored-uid", "1337"];

    let missing = ["apply", "--backend", "iptables", "--netns", "/run/netns/intercept-no-such-namespace"];
    let (code, _, stderr) = text(&run(&bin, &[&missing[..], &config].concat()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot open the network namespace /run/netns/intercept-no-such-namespace"), "{stderr}");
    assert!(stderr.contains("nothing was changed"), "{stderr}");

    let not_netns = ["apply", "--backend", "iptables", "--netns", "/proc/self/status"];
    let (code, _, stderr) = text(&run(&bin, &[&not_netns[..], &config].concat()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/proc/self/status is not a network namespace"), "{stderr}");

    let netns = sandbox.task().path();
    let target = ["apply", "--backend", "iptables", "--netns", netns.to_str().unwrap()];
    let (code, _, stderr) =
        text(&run(&bin, &[&target[..], &["--proxy-egress-port", "99999", "--ignored-uid", "1337"]].concat()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--proxy-egress-port = \"99999\"") && stderr.contains("nothing was changed"), "{stderr}");
    for program in ["iptables-nft-save", "iptables-legacy-save"] {
        assert!(!sandbox.task().exec(program, &[]).contains("INTERCEPT"), "{program}");
    }

    let both = ["status", "--backend", "iptables", "--netns", "/x", "--netns-pid", "1"];
    let (code, _, stderr) = text(&run(&bin, &both));
    assert_eq!(code, 2, "clap refuses both target flags: {stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}

/// The error of a refused transaction shows the line it refers to, and the namespace is
/// left as it was.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_refused_transaction_names_its_line() {
    let (bin, sandbox) = setup("a_refused_transaction_names_its_line");
    let netns = sandbox.task().path();
    let target = ["--backend", "iptables", "--netns", netns.to_str().unwrap()];
    // Someone else's rule jumps to a chain named like intercept's ingress chain, so an
    // egress-only configuration cannot delete it.
    let mut restore = sandbox.task().command("iptables-nft-restore");
    restore.arg("--noflush").stdin(std::process::Stdio::piped());
    let mut child = restore.spawn().unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"*nat\n:INTERCEPT_INGRESS - [0:0]\n:OTHER_TOOL - [0:0]\n-A OTHER_TOOL -j INTERCEPT_INGRESS\nCOMMIT\n",
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let before = sandbox.task().exec("iptables-nft-save", &["-t", "nat"]);

    let config = ["--proxy-egress-port", "15001", "--ignored-uid", "1337", "--ipv6", "false"];
    let (code, stdout, stderr) = text(&run(&bin, &[&["apply"][..], &target, &config].concat()));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("`iptables-nft-restore --noflush --wait=10 < (transaction)` failed"), "{stderr}");
    assert!(stderr.contains("of its input: -X INTERCEPT_INGRESS"), "{stderr}");
    let after = sandbox.task().exec("iptables-nft-save", &["-t", "nat"]);
    let rules = |dump: &str| dump.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(rules(&after), rules(&before));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_missing_capability_is_named_with_how_to_get_it() {
    let (bin, sandbox) = setup("a_missing_capability_is_named_with_how_to_get_it");
    let netns = sandbox.task().path();
    let output = Command::new(&bin)
        .args(["apply", "--backend", "iptables", "--netns", netns.to_str().unwrap()])
        .args(["--proxy-egress-port", "15001", "--ignored-uid", "1337"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let (code, stdout, stderr) = text(&output);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("missing capabilities CAP_NET_ADMIN, CAP_SYS_ADMIN\n")
            && stderr.contains("run intercept as root, or grant them"),
        "{stderr}"
    );
    assert!(!sandbox.task().exec("iptables-nft-save", &[]).contains("INTERCEPT"));
}
