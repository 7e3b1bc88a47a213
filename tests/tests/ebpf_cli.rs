//! eBPF mode through the `intercept` binary on the shared topology: `apply` as a child process
//! that exits (the init-container mode) while interception continues, `status` in text and
//! JSON with its exit codes, `remove` leaving nothing attached or pinned, and bad targets.
//!
//! Needs root and the `intercept` binary (`cargo xtask test` builds it; see
//! `intercept_tests::topology::intercept_bin`).

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use intercept::{
    backend::ebpf::{self, Program},
    config::{parse_task_definition, validate},
    model::{Decision, decide},
};
use intercept_tests::{
    Privileged,
    ebpf::{APP_PORT, EbpfSandbox, PLAIN_V4, PLAIN_V6, linked_programs, pins},
    lifecycle::feed,
    require_privileges,
    topology::{REMOTE_V4, TASK_V4, TASK_V6, Topology, intercept_bin},
    traffic::{Role, agrees, egress, ingress},
};

const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");
const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const APP_UID: u32 = 1000;

/// A test's privileges, the `intercept` binary and an eBPF sandbox.
fn setup(test: &str) -> (Privileged, PathBuf, EbpfSandbox) {
    let host = require_privileges(test);
    let bin = intercept_bin(test);
    let world = EbpfSandbox::new(&host, PROBE, CLIENT);
    (host, bin, world)
}

fn seed_task_definition() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ec2-taskB.json")
}

fn run(bin: &Path, args: &[&str]) -> (i32, String, String) {
    outcome(Command::new(bin).args(args))
}

/// A command's exit code, standard output and standard error.
fn outcome(command: &mut Command) -> (i32, String, String) {
    let output: Output = command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `--backend ebpf --cgroup … --bpffs … --netns …` for the sandbox.
fn target_args(world: &EbpfSandbox) -> Vec<String> {
    vec![
        "--backend".into(),
        "ebpf".into(),
        "--cgroup".into(),
        world.cgroup.path().display().to_string(),
        "--bpffs".into(),
        world.bpffs.path().display().to_string(),
        "--netns".into(),
        world.sandbox.task().path().display().to_string(),
    ]
}

fn args<'a>(verb: &'a str, target: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    let mut out = vec![verb];
    out.extend(target.iter().map(String::as_str));
    out.extend(rest);
    out
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_exits_interception_continues_status_reports_remove_leaves_nothing() {
    let test = "apply_exits_interception_continues_status_reports_remove_leaves_nothing";
    let (_, bin, world) = setup(test);
    let taskdef = seed_task_definition();
    let taskdef = taskdef.to_str().unwrap();
    let target = target_args(&world);
    let text = std::fs::read_to_string(taskdef).unwrap();
    let config = validate(&parse_task_definition(&text, taskdef).unwrap().raw).unwrap().config;

    let (code, stdout, stderr) = run(&bin, &args("apply", &target, &["--task-definition", taskdef]));
    assert_eq!(code, 0, "apply: {stdout}{stderr}");
    assert!(stdout.contains("installed"), "{stdout}");

    // The applying process has exited: the pins hold the programs, the sk_lookup one included.
    let local = Topology::task_local_addrs();
    for dst in [SocketAddr::new(IpAddr::V4(PLAIN_V4), 80), SocketAddr::new(IpAddr::V6(PLAIN_V6), 80)] {
        let source = if dst.is_ipv4() { IpAddr::V4(TASK_V4) } else { IpAddr::V6(TASK_V6) };
        let connection = egress(APP_UID, APP_UID, source, dst);
        let decision = decide(&config, &local, &connection);
        assert!(matches!(decision, Decision::Redirect { .. }));
        let reply = world.egress(APP_UID, APP_UID, dst).unwrap();
        agrees(&decision, &connection, &reply).unwrap_or_else(|e| panic!("egress to {dst}: {e}"));
    }
    let inbound = SocketAddr::new(IpAddr::V4(TASK_V4), APP_PORT);
    let connection = ingress(IpAddr::V4(REMOTE_V4), inbound);
    assert!(matches!(decide(&config, &local, &connection), Decision::Redirect { .. }));
    let reply = world.ingress(inbound).unwrap();
    assert_eq!((reply.role, reply.local, reply.original), (Role::IngressProxy, inbound, Some(inbound)), "{reply}");

    // status: text, then JSON, both exit 0 for the configuration applied.
    let (code, stdout, stderr) = run(&bin, &args("status", &target, &["--task-definition", taskdef]));
    assert_eq!(code, 0, "status: {stdout}{stderr}");
    assert!(stdout.contains("installed, and matches the configuration"), "{stdout}");
    assert!(stdout.contains("sk_lookup") && stdout.contains("ingress-steered"), "the ingress program: {stdout}");
    let (code, stdout, stderr) =
        run(&bin, &args("status", &target, &["--task-definition", taskdef, "--format", "json"]));
    assert_eq!(code, 0, "status --format json: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(json["installed"], true);
    assert_eq!(json["matches"], true);
    let programs = json["ebpf"]["programs"].as_array().unwrap();
    assert_eq!(programs.len(), Program::ALL.len());
    assert!(programs.iter().all(|p| p["attached"] == true), "{programs:?}");
    assert_eq!(json["ebpf"]["counters"]["redirected"], 2);
    assert_eq!(json["ebpf"]["counters"]["ingress-steered"], 1);
    assert_eq!(json["ebpf"]["configuration"]["proxy_egress_port"], 15001);

    // Another configuration: exit 1, with the difference.
    let other = ["--ignored-uid", "1337", "--proxy-egress-port", "15001", "--proxy-ingress-port", "15000"];
    let other = [&other[..], &["--app-ports", "9080", "--egress-ignored-ports", "5432"]].concat();
    let (code, stdout, _) = run(&bin, &args("status", &target, &other));
    assert_eq!(code, 1, "a different configuration does not match: {stdout}");
    assert!(stdout.contains("IGNORED_PORTS: missing 5432"), "{stdout}");

    let (code, stdout, stderr) = run(&bin, &args("apply", &target, &["--task-definition", taskdef]));
    assert_eq!(code, 0, "apply again: {stdout}{stderr}");
    assert!(stdout.contains("nothing to change"), "{stdout}");

    // `--ingress-fallback app` goes into CONFIG: an in-place update, shown by status.
    let fallback = ["--task-definition", taskdef, "--ingress-fallback", "app"];
    let (code, stdout, stderr) = run(&bin, &args("apply", &target, &fallback));
    assert_eq!(code, 0, "apply --ingress-fallback app: {stdout}{stderr}");
    assert!(stdout.contains("updated in place") && stdout.contains("CONFIG changed"), "{stdout}");
    let (code, stdout, stderr) = run(&bin, &args("status", &target, &[&fallback[..], &["--format", "json"]].concat()));
    assert_eq!(code, 0, "status --ingress-fallback app: {stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(json["ebpf"]["configuration"]["ingress_fallback"], "app", "{stdout}");

    let (code, stdout, stderr) = run(&bin, &args("remove", &target, &[]));
    assert_eq!(code, 0, "remove: {stdout}{stderr}");
    for program in Program::CGROUP {
        let attached = ebpf::attached_programs(world.cgroup.path(), program.attach_type()).unwrap();
        assert!(attached.is_empty(), "{program:?} still attached after remove: {attached:?}");
    }
    let attached = ebpf::attached_programs(&world.sandbox.task().path(), Program::SkLookup.attach_type()).unwrap();
    assert!(attached.is_empty(), "sk_lookup still attached to the task namespace after remove: {attached:?}");
    assert!(world.bpffs.files().is_empty(), "nothing pinned after remove: {:?}", world.bpffs.files());
    let reply = world.egress(APP_UID, APP_UID, SocketAddr::new(IpAddr::V4(PLAIN_V4), 80)).unwrap();
    assert_eq!(reply.role, Role::Remote, "egress no longer redirected");
    let reply = world.ingress(inbound).unwrap();
    assert_eq!(reply.role, Role::App, "ingress no longer redirected");

    let (code, stdout, _) = run(&bin, &args("status", &target, &[]));
    assert_eq!(code, 1, "status after remove: {stdout}");
    assert!(stdout.contains("NOT installed"), "{stdout}");
    let (code, stdout, stderr) = run(&bin, &args("remove", &target, &[]));
    assert_eq!(code, 0, "remove again: {stdout}{stderr}");
    assert!(stdout.contains("nothing was installed"), "{stdout}");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn bad_ebpf_targets_exit_2_and_change_nothing() {
    let test = "bad_ebpf_targets_exit_2_and_change_nothing";
    let (host, bin, world) = setup(test);
    let taskdef = seed_task_definition();
    let taskdef = taskdef.to_str().unwrap();
    let bpffs = world.bpffs.path().display().to_string();
    let root = host.cgroup2_mount().display().to_string();
    let cgroup = world.cgroup.path().display().to_string();
    let missing = format!("{cgroup}/no-such-cgroup");
    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("no --cgroup", vec!["apply", "--backend", "ebpf", "--bpffs", &bpffs], "--cgroup"),
        (
            "missing cgroup",
            vec!["apply", "--backend", "ebpf", "--cgroup", &missing, "--bpffs", &bpffs],
            "no-such-cgroup",
        ),
        ("root cgroup", vec!["apply", "--backend", "ebpf", "--cgroup", &root, "--bpffs", &bpffs], "root"),
        (
            "missing netns",
            vec![
                "apply",
                "--backend",
                "ebpf",
                "--cgroup",
                &cgroup,
                "--bpffs",
                &bpffs,
                "--netns",
                "/run/netns/no-such-netns",
            ],
            "no-such-netns",
        ),
    ];
    for (name, mut args, mentions) in cases {
        args.extend(["--task-definition", taskdef]);
        let (code, stdout, stderr) = run(&bin, &args);
        assert_eq!(code, 2, "{name}: {stdout}{stderr}");
        assert!(stderr.contains(mentions) && stderr.contains("nothing was changed"), "{name}: {stderr}");
    }
    assert!(world.bpffs.files().is_empty(), "{:?}", world.bpffs.files());
    for program in Program::CGROUP {
        assert!(ebpf::attached_programs(world.cgroup.path(), program.attach_type()).unwrap().is_empty());
    }
    let task = world.sandbox.task().path();
    assert!(ebpf::attached_programs(&task, Program::SkLookup.attach_type()).unwrap().is_empty());
}

/// `intercept apply --backend ebpf` with exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: the
/// programs install (the sk_lookup one on the namespace the command runs in, which the test
/// enters for it: `--netns` would need CAP_SYS_ADMIN), and without one of the three the error
/// names it and nothing is installed. Without CAP_SYS_PTRACE the proxy's listener, open
/// before the programs, cannot be taken: apply says to restart the proxy, and a restarted
/// proxy's listener is steered to.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_cli_applies_with_only_cap_bpf_net_admin_perfmon() {
    let test = "the_cli_applies_with_only_cap_bpf_net_admin_perfmon";
    let (_, bin, world) = setup(test);
    let taskdef = seed_task_definition();
    let cgroup = world.cgroup.path().display().to_string();
    let bpffs = world.bpffs.path().display().to_string();
    let apply_with = |caps: &str| {
        let mut command = Command::new("setpriv");
        command
            .args([&format!("--bounding-set=-all{caps}"), &format!("--inh-caps=-all{caps}"), "--"])
            .arg(&bin)
            .args(["apply", "--backend", "ebpf", "--cgroup", &cgroup, "--bpffs", &bpffs, "--task-definition"])
            .arg(&taskdef);
        world.sandbox.task().enter(&mut command);
        let output = command.output().expect("run setpriv");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned() + &stdout)
    };
    for (caps, missing) in
        [(",+bpf,+perfmon", "CAP_NET_ADMIN"), (",+net_admin,+perfmon", "CAP_BPF"), (",+bpf,+net_admin", "CAP_PERFMON")]
    {
        let (code, stderr) = apply_with(caps);
        assert!(code == 1 && stderr.contains(&format!("missing capability {missing}")), "with {caps}: {stderr}");
    }
    assert!(world.bpffs.files().is_empty(), "a refused apply pins nothing: {:?}", world.bpffs.files());

    let (code, output) = apply_with(",+bpf,+net_admin,+perfmon");
    assert_eq!(code, 0, "with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only: {output}");
    assert!(output.contains("restart the proxy") && output.contains("CAP_SYS_PTRACE"), "{output}");
    let egress_dst = SocketAddr::new(IpAddr::V4(PLAIN_V4), 80);
    assert_eq!(world.egress(APP_UID, APP_UID, egress_dst).unwrap().role, Role::EgressProxy);
    let inbound = SocketAddr::new(IpAddr::V4(TASK_V4), APP_PORT);
    assert!(world.ingress(inbound).is_err(), "the proxy's old listener is not steered to: refused");
    world.stop_ingress_proxy();
    world.start_ingress_proxy();
    assert_eq!(
        world.ingress(inbound).unwrap().role,
        Role::IngressProxy,
        "the restarted proxy gets inbound connections"
    );
}

/// The iptables ingress half an older intercept installed in eBPF mode (its ingress chain
/// without the egress chain) goes with `remove` where one can be: where nothing of this
/// design was installed. Where the installation removed steered ingress itself (its
/// `sk_lookup` link), `remove` does not read the rules at all (four helper processes, most
/// of its time): `apply` never adds to an installation without that link, so no such half
/// can be beside one. A half planted there anyway shows that it was not looked for.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn remove_takes_an_older_ingress_half_only_where_one_can_be() {
    let test = "remove_takes_an_older_ingress_half_only_where_one_can_be";
    let (_, bin, world) = setup(test);
    let taskdef = seed_task_definition();
    let taskdef = taskdef.to_str().unwrap();
    let target = target_args(&world);
    let task = world.sandbox.task();
    // As the iptables backend installs its ingress half.
    let half = format!(
        "*nat\n:INTERCEPT_INGRESS - [0:0]\n\
         -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -m comment \
         --comment \"intercept: ingress TCP from non-local sources\" -j INTERCEPT_INGRESS\n\
         -A INTERCEPT_INGRESS -p tcp -m multiport --dports {APP_PORT} -j REDIRECT --to-ports 15000\nCOMMIT\n"
    );
    feed(task, "iptables-nft-restore", &["--noflush"], &half);
    let has_half = || task.exec("iptables-nft-save", &["-t", "nat"]).contains(":INTERCEPT_INGRESS");
    assert!(has_half());

    let (code, stdout, stderr) = run(&bin, &args("apply", &target, &["--task-definition", taskdef]));
    assert_eq!(code, 0, "apply: {stdout}{stderr}");
    let remove = || {
        let (code, stdout, stderr) = run(&bin, &args("remove", &target, &["--format", "json"]));
        assert_eq!(code, 0, "remove: {stdout}{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let report = remove();
    assert_eq!((&report["removed"], &report["ingress"]), (&true.into(), &serde_json::Value::Null), "{report}");
    assert!(has_half(), "not looked for beside an installation that steered ingress itself");

    let report = remove();
    assert_eq!(report["removed"], false, "{report}");
    assert!(report["ingress"].is_object(), "the older half is removed: {report}");
    assert!(!has_half(), "{}", task.exec("iptables-nft-save", &["-t", "nat"]));
}

/// Runs `intercept` with the host's `/run/intercept` (where the kernel's features are recorded,
/// beside the lock files) replaced by `run_dir`, in a mount namespace of its own: the test's
/// record is never the host's.
fn run_with_run_dir(bin: &Path, run_dir: &Path, args: &[&str]) -> (i32, String, String) {
    std::fs::create_dir_all("/run/intercept").expect("create /run/intercept");
    outcome(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind \"$0\" /run/intercept && exec \"$@\"",
            ])
            .arg(run_dir)
            .arg(bin)
            .args(args),
    )
}

/// The kernel's names of the programs the installation's links attach (empty when the program
/// was loaded without a name).
fn linked_program_names(world: &EbpfSandbox) -> Vec<String> {
    let ids = linked_programs(&pins(world.bpffs.path()).unwrap()).unwrap();
    let mut names: Vec<String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| ids.contains(&info.id()))
        .map(|info| info.name_as_str().unwrap_or("").to_owned())
        .collect();
    names.sort();
    names
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_kernel_is_probed_once_per_boot_and_a_record_that_fails_a_load_is_dropped() {
    let test = "the_kernel_is_probed_once_per_boot_and_a_record_that_fails_a_load_is_dropped";
    let (_, bin, world) = setup(test);
    let taskdef = seed_task_definition();
    let taskdef = taskdef.to_str().unwrap();
    let target = target_args(&world);
    let run_dir = tempfile::Builder::new().prefix("intercept-run-").tempdir().expect("a temporary directory");
    let record = run_dir.path().join("bpf-features");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_owned();
    let apply = |what: &str| {
        let (code, stdout, stderr) =
            run_with_run_dir(&bin, run_dir.path(), &args("apply", &target, &["--task-definition", taskdef]));
        (code, format!("{what}: {stdout}{stderr}"))
    };
    let remove = || {
        let (code, stdout, stderr) = run_with_run_dir(&bin, run_dir.path(), &args("remove", &target, &[]));
        assert_eq!(code, 0, "remove: {stdout}{stderr}");
    };
    // The aya bits of a record, and the record with other ones.
    let bits = |text: &str| u16::from_str_radix(text.trim_end().rsplit_once("aya=").unwrap().1, 16).unwrap();
    let with_bits =
        |text: &str, bits: u16| format!("{} aya={bits:04x}\n", text.trim_end().rsplit_once(" aya=").unwrap().0);

    // No record: the first apply probes, and records what it found for this boot.
    let (code, out) = apply("first apply");
    assert_eq!(code, 0, "{out}");
    let first = std::fs::read_to_string(&record).unwrap_or_else(|e| panic!("no record after a load: {e}"));
    assert!(first.starts_with(&format!("format=1 boot={boot_id} kernel=")), "{first}");
    let named = linked_program_names(&world);
    assert!(named.iter().all(|n| !n.is_empty()) && named.contains(&"connect4".to_owned()), "{named:?}");
    remove();

    // A record of this boot is believed: one saying the kernel cannot name programs (bit 0)
    // gives nameless programs, which only a load without probes can produce.
    assert!(bits(&first) & 1 == 1, "this kernel names programs: {first}");
    std::fs::write(&record, with_bits(&first, bits(&first) & !1)).unwrap();
    let (code, out) = apply("apply with the record");
    assert_eq!(code, 0, "{out}");
    let nameless = linked_program_names(&world);
    assert!(!nameless.is_empty() && nameless.iter().all(String::is_empty), "{nameless:?}");
    remove();

    // A record of another boot is not: the apply probes, and replaces it.
    std::fs::write(&record, with_bits(&first, bits(&first) & !1).replace(&boot_id, "another-boot")).unwrap();
    let (code, out) = apply("apply with another boot's record");
    assert_eq!(code, 0, "{out}");
    assert_eq!(linked_program_names(&world), named);
    assert_eq!(std::fs::read_to_string(&record).unwrap(), first);
    remove();

    // A record that makes the load fail (no global data, bit 3: the object's read-only data
    // cannot be relocated) fails that apply, which installs nothing and drops the record; the
    // next apply probes again.
    std::fs::write(&record, with_bits(&first, bits(&first) & !(1 << 3))).unwrap();
    let (code, out) = apply("apply with a wrong record");
    assert_ne!(code, 0, "{out}");
    assert!(!record.exists(), "the record that failed a load is kept: {out}");
    assert!(!world.bpffs.files().iter().any(|f| f.is_file()), "{out}: pinned {:?}", world.bpffs.files());
    let (code, out) = apply("apply after the wrong record");
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), first);
    remove();
}
