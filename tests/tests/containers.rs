//! The image as ECS runs it: ECS-shaped tasks in a real container engine (see
//! `intercept_tests::containers`), with the init container exactly as the deploy examples
//! define it (command, user, capabilities, mounts, environment). The init container exits 0
//! before the proxy starts (ECS's `dependsOn SUCCESS`); then the app's connections must be
//! redirected with their original destination, IgnoredUID, ignored ports and ignored IPs must
//! pass untouched, inbound AppPort connections from the remote namespace must reach the proxy,
//! and stopping the task must leave nothing on the host.
//!
//! The eBPF examples' bpffs volume is a bpffs of the test's own (this host has none mounted
//! at /sys/fs/bpf, and the tests leave the host's alone); the cgroup volume is the host's
//! hierarchy, as on an ECS host.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use intercept::{
    cni::code,
    config::{Ingress, PortRange, PortSet, ProxyConfig},
    model::Reason,
};
use intercept_tests::{
    cases::{APP_GID, APP_UID, Case, V4, check, into_task, out},
    cni::{assert_cni_030_result, nothing_left, recorded_netconf_with_ports},
    containers::{Engine, InitContainer, PAUSE, PluginImage, Task, require_engine},
    ebpf::TestBpffs,
    topology::{METADATA, Topology, intercept_bin},
    traffic::{Client, Listeners, Role, Sandbox, SandboxSpec},
};
use serde_json::json;

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const IPTABLES: &str = "ecs-task-definition-ec2.json";
const EBPF: &str = "ecs-task-definition-ec2-ebpf.json";
/// The remote server the app dials, and the task's address (see `topology`).
const REMOTE: &str = "10.0.0.1";
const TASK: &str = "10.0.0.2";

/// Where the test binaries are, mounted read-only at `/t` in the containers that run them.
fn test_binaries() -> PathBuf {
    Path::new(CLIENT).parent().expect("a directory").to_owned()
}

/// The task around the init container: the pause container with the remote namespace (and a
/// server on port 80 and 22 on every remote address), the init container run to completion.
struct Run {
    task: Task,
    _remote: Listeners,
    topology: Topology,
    init: (i32, String),
}

fn start(engine: &Engine, options: &[String], command: &[String]) -> Run {
    let mut task = Task::new(engine);
    let topology = task.start_pause();
    let remote = Listeners::start(
        &topology.remote,
        &[(Role::Remote, "0.0.0.0:80".parse().unwrap()), (Role::Remote, "0.0.0.0:22".parse().unwrap())],
    );
    let result = task.run_in_task("intercept-init", options, engine.image(), command);
    Run { task, _remote: remote, topology, init: result }
}

/// The proxy container (the test proxy as `user`) and the app container.
fn start_proxy(run: &mut Run, user: &str) {
    start_proxy_with(run, user, &[]);
}

fn start_proxy_with(run: &mut Run, user: &str, extra: &[String]) {
    run.task.start_test_proxy(&test_binaries(), user, extra);
}

fn start_app(run: &mut Run) {
    run.task.start_test_app(&test_binaries());
}

/// Every decision of the seed configuration the deploy examples carry, through the task.
fn assert_intercepted(run: &Run, backend: &str) {
    let dst = |a: &str| -> SocketAddr { a.parse().unwrap() };
    let redirected = run.task.connect(1000, 1000, &format!("{REMOTE}:80")).expect("the app's connection");
    assert_eq!(
        (redirected.role, redirected.original),
        (Role::EgressProxy, Some(dst(&format!("{REMOTE}:80")))),
        "{backend}: the app's connection goes to the proxy with its original destination: {redirected}"
    );
    for (uid, addr, why) in [
        (1337, format!("{REMOTE}:80"), "IgnoredUID"),
        (1000, format!("{REMOTE}:22"), "an ignored port"),
        (1000, "169.254.170.2:80".to_owned(), "an ignored IP (task metadata)"),
    ] {
        let reply = run.task.connect(uid, uid, &addr).unwrap_or_else(|e| panic!("{backend}: {why}: {e}"));
        assert_eq!((reply.role, reply.local), (Role::Remote, dst(&addr)), "{backend}: {why} passes untouched: {reply}");
    }
    let inbound = dst(&format!("{TASK}:9080"));
    let reply = Client::new(CLIENT).netns(&run.topology.remote).connect(inbound).expect("an inbound connection");
    assert_eq!(
        (reply.role, reply.original),
        (Role::IngressProxy, Some(inbound)),
        "{backend}: inbound to the AppPort reaches the proxy: {reply}"
    );
}

/// Stops the task (its containers, then its cgroup) and checks what is left on the host: its
/// namespace (and the rules in it) went with the pause container, no lock file names it.
fn stop_and_assert_nothing_left(run: Run) {
    let Run { mut task, _remote, topology, .. } = run;
    let netns_paths = [topology.task.path(), topology.remote.path()];
    let locks_before = lock_files();
    task.stop();
    drop(topology);
    for path in netns_paths {
        assert!(!path.exists(), "{} is left", path.display());
    }
    assert!(task.cgroups().is_empty(), "the task's cgroups are left: {:?}", task.cgroups());
    assert_eq!(lock_files(), locks_before, "lock files on the host");
}

fn lock_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(intercept::lock::SYSTEM_DIR)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn rules_backend(backend: &str) {
    let test = format!("{backend}_init_container_intercepts_an_ecs_task");
    let engine = require_engine(&test);
    let init = InitContainer::from_deploy(IPTABLES);
    // The nftables variant of the same task definition: only the backend differs.
    let command: Vec<String> =
        init.command.iter().map(|w| if w == "iptables" { backend.to_owned() } else { w.clone() }).collect();
    let mut run = start(&engine, &init.run_options(&[]), &command);
    assert_eq!(run.init.0, 0, "{backend} init container: {}", run.init.1);
    assert!(run.init.1.contains("IPv6 rules skipped") || backend == "nftables", "{}", run.init.1);
    start_proxy(&mut run, "1337:1337");
    start_app(&mut run);
    assert_intercepted(&run, backend);
    stop_and_assert_nothing_left(run);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn iptables_init_container_intercepts_an_ecs_task() {
    rules_backend("iptables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn nftables_init_container_intercepts_an_ecs_task() {
    rules_backend("nftables");
}

/// The eBPF init container with the task's cgroup namespace as Docker gives it on cgroup v2
/// hosts (private) and on v1 and hybrid ones (the host's), one task after the other: each
/// finds its task's cgroup with `--cgroup auto`, and the second one's apply removes the pins
/// the first (ended) task left; `intercept remove` on the host removes the second's.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ebpf_init_container_in_a_private_and_in_the_host_cgroup_namespace() {
    let test = "ebpf_init_container_in_a_private_and_in_the_host_cgroup_namespace";
    let engine = require_engine(test);
    let bpffs = TestBpffs::mounted();
    let init = InitContainer::from_deploy(EBPF);
    let mut ended = None;
    for cgroupns in ["private", "host"] {
        let mut options = init.run_options(&[("bpffs", bpffs.path())]);
        options.extend(["--cgroupns".to_owned(), cgroupns.to_owned()]);
        let mut run = start(&engine, &options, &init.command);
        assert_eq!(run.init.0, 0, "eBPF init container, {cgroupns} cgroupns: {}", run.init.1);
        let cgroup = run.task.unified_cgroup();
        assert!(run.init.1.contains(&format!("on cgroup {}", in_container(&cgroup))), "{}", run.init.1);
        let id = intercept::cgroup::id(&cgroup).unwrap();
        if let Some(previous) = ended {
            assert!(
                run.init.1.contains("also removed the pins of 1 ended task(s)"),
                "the next task's apply prunes: {}",
                run.init.1
            );
            assert!(!pinned(&bpffs).contains(&previous), "the ended task's pins are gone");
        }
        start_proxy(&mut run, "1337:1337");
        start_app(&mut run);
        assert_intercepted(&run, &format!("eBPF, {cgroupns} cgroupns"));
        assert!(no_netfilter_rule(&run), "eBPF installs no netfilter rule");
        stop_and_assert_nothing_left(run);
        assert_eq!(pinned(&bpffs), [id], "until an intercept on the host prunes them");
        ended = Some(id);
    }
    prune_from_the_host(test, &bpffs);
    assert!(bpffs.files().is_empty(), "pins left: {:?}", bpffs.files());
}

/// `intercept remove` on the host for a task that has ended (its cgroup and namespace are
/// gone): it prunes the pins of every ended task. The kernel detaches a removed cgroup's
/// programs from a work queue, a moment after the cgroup goes: until then the task's pins are
/// not yet an ended task's.
fn prune_from_the_host(test: &str, bpffs: &TestBpffs) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bpffs.files().is_empty() && Instant::now() < deadline {
        let out = Command::new(intercept_bin(test))
            .args(["remove", "--backend", "ebpf", "--cgroup", "/ecs/ended", "--netns", "/run/netns/ended", "--bpffs"])
            .arg(bpffs.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        thread::sleep(Duration::from_millis(100));
    }
}

/// A task whose proxy started before the init container (an operator reordered `dependsOn`):
/// egress is intercepted for the running proxy's task all the same, and the proxy's open
/// ingress listener, which the init container cannot see from its own pid namespace, is
/// reported. With one pid namespace for the task (ECS `pidMode: "task"`) and the capabilities
/// to take another user's socket (SYS_PTRACE, DAC_READ_SEARCH), it is taken and inbound
/// connections reach the proxy without a restart.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ebpf_init_container_after_the_proxy_started() {
    let test = "ebpf_init_container_after_the_proxy_started";
    let engine = require_engine(test);
    let bpffs = TestBpffs::mounted();
    let init = InitContainer::from_deploy(EBPF);
    let mut task = Task::new(&engine);
    let topology = task.start_pause();
    let _remote = Listeners::start(&topology.remote, &[(Role::Remote, "0.0.0.0:80".parse().unwrap())]);
    let mut run = Run { task, _remote, topology, init: (0, String::new()) };
    start_proxy(&mut run, "1337:1337");
    start_app(&mut run);
    let mut options = init.run_options(&[("bpffs", bpffs.path())]);
    options.extend(["--cgroupns".to_owned(), "private".to_owned()]);
    let (code, out) = run.task.run_in_task("intercept-init", &options, engine.image(), &init.command);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("WARNING") && out.contains("restart the proxy"), "the open listener is reported: {out}");
    let reply = run.task.connect(1000, 1000, &format!("{REMOTE}:80")).expect("the app's connection");
    assert_eq!(reply.role, Role::EgressProxy, "{reply}");
    stop_and_assert_nothing_left(run);

    let mut task = Task::new(&engine);
    let topology = task.start_pause();
    let shared = task.shared_pid();
    let mut run = Run { task, _remote: Listeners::start(&topology.remote, &[]), topology, init: (0, String::new()) };
    start_proxy_with(&mut run, "1337:1337", &shared);
    let mut options = init.run_options(&[("bpffs", bpffs.path())]);
    options.extend(
        ["--cgroupns", "private", "--cap-add", "SYS_PTRACE", "--cap-add", "DAC_READ_SEARCH"].map(str::to_owned),
    );
    options.extend(shared);
    let (code, out) = run.task.run_in_task("intercept-init", &options, engine.image(), &init.command);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 listener(s) on port 15000 already open, taken") && !out.contains("WARNING"), "{out}");
    let inbound: SocketAddr = format!("{TASK}:9080").parse().unwrap();
    let reply = Client::new(CLIENT).netns(&run.topology.remote).connect(inbound).expect("an inbound connection");
    assert_eq!((reply.role, reply.original), (Role::IngressProxy, Some(inbound)), "{reply}");
    stop_and_assert_nothing_left(run);
    prune_from_the_host(test, &bpffs);
    assert!(bpffs.files().is_empty(), "pins left: {:?}", bpffs.files());
}

/// What an operator meets when the container is not set up as the deploy examples say: each
/// exits non-zero with a message that says what is missing, and nothing is installed.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn mistakes_in_the_container_setup_are_named_and_change_nothing() {
    let test = "mistakes_in_the_container_setup_are_named_and_change_nothing";
    let engine = require_engine(test);
    let bpffs = TestBpffs::mounted();
    let ebpf = InitContainer::from_deploy(EBPF);
    let iptables = InitContainer::from_deploy(IPTABLES);
    let without = |init: &InitContainer, drop_volume: Option<&str>, drop_cap: Option<&str>| {
        let mut init = init.clone();
        init.mounts.retain(|m| Some(m.volume.as_str()) != drop_volume);
        init.cap_add.retain(|c| Some(c.as_str()) != drop_cap);
        init
    };
    let cases: [(&str, InitContainer, &str, &str); 4] = [
        ("no NET_ADMIN", without(&iptables, None, Some("NET_ADMIN")), "private", "missing capability CAP_NET_ADMIN"),
        (
            "no bpffs mounted",
            without(&ebpf, Some("bpffs"), None),
            "private",
            "mount the host's bpffs into the container",
        ),
        (
            "no cgroup hierarchy mounted, private cgroupns",
            without(&ebpf, Some("cgroup"), None),
            "private",
            "mount the host's cgroup hierarchy into",
        ),
        (
            "no cgroup hierarchy mounted, host cgroupns",
            without(&ebpf, Some("cgroup"), None),
            "host",
            "mount the host's cgroup hierarchy into",
        ),
    ];
    for (what, init, cgroupns, message) in cases {
        let mut options = init.run_options(&[("bpffs", bpffs.path())]);
        options.extend(["--cgroupns".to_owned(), cgroupns.to_owned()]);
        let mut task = Task::new(&engine);
        let topology = task.start_pause();
        let (code, out) = task.run_in_task("intercept-init", &options, engine.image(), &init.command);
        assert_ne!(code, 0, "{what}: {out}");
        assert!(out.contains(message) && out.contains("nothing was changed"), "{what}: {out}");
        let run = Run { task, _remote: Listeners::start(&topology.remote, &[]), topology, init: (code, out) };
        assert!(no_netfilter_rule(&run), "{what}: nothing installed");
        assert!(bpffs.files().is_empty(), "{what}: nothing pinned: {:?}", bpffs.files());
        stop_and_assert_nothing_left(run);
    }
}

/// The proxy's uid is not IgnoredUID: `check` warns, and this is what happens: the proxy's own
/// connections to the remote are redirected to itself instead of leaving the task.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_proxy_that_is_not_ignored_intercepts_itself() {
    let test = "a_proxy_that_is_not_ignored_intercepts_itself";
    let engine = require_engine(test);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(IPTABLES);
    let mut definition: serde_json::Value = serde_json::from_str(&fs::read_to_string(deploy).unwrap()).unwrap();
    for container in definition["containerDefinitions"].as_array_mut().unwrap() {
        if container["name"] == "envoy" {
            container["user"] = "1000".into();
        }
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), definition.to_string()).unwrap();
    let out = Command::new(intercept_bin(test)).args(["check", "--task-definition"]).arg(file.path()).output().unwrap();
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(check.contains("warning") && check.contains("IgnoredUID"), "{check}");
    let init = InitContainer::from_deploy(IPTABLES);
    let mut run = start(&engine, &init.run_options(&[]), &init.command);
    assert_eq!(run.init.0, 0, "{}", run.init.1);
    start_proxy(&mut run, "1000:1000");
    start_app(&mut run);
    let looped = run.task.exec("envoy", 1000, 1000, &["/t/intercept-test-client", "--reply", &format!("{REMOTE}:80")]);
    let reply = String::from_utf8_lossy(&looped.stdout);
    assert!(reply.starts_with("egress-proxy"), "the proxy's upstream connection came back to itself: {reply}");
    stop_and_assert_nothing_left(run);
}

/// intercept as `aws-appmesh`, called as the ECS agent calls it on an EC2 host: from a
/// container shaped like the agent's ([`Task::start_ecs_agent`]), on the namespace of a pause
/// container that holds Docker's default capabilities, named as the agent names it
/// (`/host/proc/<pid>/ns/net`), with the recorded stdin and the agent's environment. ADD drops
/// capabilities the pause container holds, so it must open the namespace before (issue 24).
/// With 1 and with 20 ignored ports: ADD twice, each result a CNI 0.3.0 result; every
/// connection as the model says; CHECK twice (the recorded 0.3.0 configuration is refused, as
/// libcni and the reference plugin refuse CHECK below 0.4.0; at 0.4.0 it passes); DEL twice,
/// leaving nothing.
#[test]
#[ignore = "privileged (root, namespaces, a container engine): `cargo xtask test` runs it"]
fn the_ecs_agents_cni_calls_from_its_container() {
    let test = "the_ecs_agents_cni_calls_from_its_container";
    let engine = require_engine(test);
    let plugin = intercept_bin(test);
    let twenty: Vec<String> = std::iter::once(22).chain(8100..8119).map(|p: u16| p.to_string()).collect();
    for ports in [vec!["22".to_owned()], twenty] {
        let what = format!("{} ignored port(s)", ports.len());
        let stdin = recorded_netconf_with_ports(&ports);
        let mut task = Task::new(&engine);
        let topology = task.start_pause();
        task.start_ecs_agent(&plugin);
        let netns = format!("/host/proc/{}/ns/net", task.pid(PAUSE));
        let model = recorded_model(&ports);
        let last = model.egress_ignored_ports.ranges().last().expect("ports").end;
        let sandbox = recorded_sandbox(topology, last);
        for _ in 0..2 {
            let add = task.cni("ADD", &netns, stdin.as_bytes());
            add.assert_success();
            assert_cni_030_result(&add.json());
            assert_eq!(add.json(), json!({"cniVersion": "0.3.0", "dns": {}}), "{what}");
        }
        check(CLIENT, &sandbox, &model, &recorded_cases(last));
        let at_040 = stdin.replace(r#""cniVersion":"0.3.0""#, r#""cniVersion":"0.4.0""#);
        for _ in 0..2 {
            let refused = task.cni("CHECK", &netns, stdin.as_bytes());
            assert_eq!(refused.error_code(), u64::from(code::INCOMPATIBLE_VERSION), "{what}");
            task.cni("CHECK", &netns, at_040.as_bytes()).assert_success();
        }
        for _ in 0..2 {
            let del = task.cni("DEL", &netns, stdin.as_bytes());
            del.assert_success();
            assert_eq!(del.stdout, "", "{what}: DEL prints nothing on success");
            nothing_left(sandbox.task());
        }
        drop(task);
    }
}

/// The static plugin needs nothing of the host beyond what the ECS agent's container shares:
/// the plugin of the project's image (statically linked, checked), alone in an image of one
/// file, runs ADD twice, every connection as the model says, and DEL twice, leaving nothing;
/// each call in a container of its own with the host's `/proc` at `/host/proc` and its
/// `/usr/sbin` and libraries, and nothing else (no libc, no shell, no `/etc`).
#[test]
#[ignore = "privileged (root, namespaces, a container engine): `cargo xtask test` runs it"]
fn the_static_plugin_runs_alone_with_what_the_agents_container_has() {
    let test = "the_static_plugin_runs_alone_with_what_the_agents_container_has";
    let engine = require_engine(test);
    let plugin = PluginImage::from_project_image(&engine);
    let ports = vec!["22".to_owned()];
    let stdin = recorded_netconf_with_ports(&ports);
    let mut task = Task::new(&engine);
    let topology = task.start_pause();
    let netns = format!("/host/proc/{}/ns/net", task.pid(PAUSE));
    let model = recorded_model(&ports);
    let sandbox = recorded_sandbox(topology, 22);
    for _ in 0..2 {
        let add = task.cni_alone(&plugin, "ADD", &netns, stdin.as_bytes());
        add.assert_success();
        assert_cni_030_result(&add.json());
    }
    check(CLIENT, &sandbox, &model, &recorded_cases(22));
    for _ in 0..2 {
        let del = task.cni_alone(&plugin, "DEL", &netns, stdin.as_bytes());
        del.assert_success();
        assert_eq!(del.stdout, "", "DEL prints nothing on success");
        nothing_left(sandbox.task());
    }
}

/// The listeners [`recorded_cases`] dial, around a pause container's namespace: the proxy's and
/// the app's in the task, the remote's on ports 80, 22, `last` (the highest ignored port) and
/// the port after it.
fn recorded_sandbox(topology: Topology, last: u16) -> Sandbox {
    let mut remote_ports = vec![80, 22, last, last + 1];
    remote_ports.sort_unstable();
    remote_ports.dedup();
    Sandbox::around(
        topology,
        &SandboxSpec {
            egress_proxy_ports: vec![15001],
            ingress_proxy_ports: vec![15000],
            app_ports: vec![9080, 9090],
            remote_ports,
            remote_addresses: vec![V4.plain],
            ..SandboxSpec::default()
        },
    )
}

/// The configuration the recorded netconfig stands for, with `ports` ignored, as the model
/// takes it: IPv4 only, as the agent never enables IPv6.
fn recorded_model(ports: &[String]) -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![1337],
        ingress: Some(Ingress { proxy_port: 15000, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        egress_ignored_ports: PortSet::from_ranges(ports.iter().map(|p| PortRange::single(p.parse().unwrap()))),
        egress_ignored_ips: METADATA.iter().map(|ip| format!("{ip}/32").parse().unwrap()).collect(),
        ipv6: false,
        ..ProxyConfig::new(15001)
    }
}

/// Each decision of [`recorded_model`], `last` being its highest ignored port.
fn recorded_cases(last: u16) -> Vec<Case> {
    let app = (APP_UID, APP_GID);
    vec![
        out("plain egress", app.0, app.1, V4.plain, 80, None),
        out("egress to the gateway", app.0, app.1, V4.gateway, 80, None),
        out("IgnoredUID", 1337, 1337, V4.plain, 80, Some(Reason::IgnoredUid)),
        out("port 22", app.0, app.1, V4.plain, 22, Some(Reason::IgnoredPort)),
        out("the highest ignored port", app.0, app.1, V4.plain, last, Some(Reason::IgnoredPort)),
        out("the port after it", app.0, app.1, V4.plain, last + 1, None),
        out("task metadata", app.0, app.1, std::net::IpAddr::V4(METADATA[0]), 80, Some(Reason::IgnoredIp)),
        out("loopback", app.0, app.1, V4.loopback, 9080, Some(Reason::LocalDestination)),
        into_task("ingress to the AppPort", V4.task, 9080, None),
        into_task("ingress to another port", V4.task, 9090, Some(Reason::NotAppPort)),
    ]
}

/// The plugin in the agent's container on an Amazon Linux 2023 host, with the host's tools
/// only (its `/usr/sbin`: iptables with the nf_tables backend, no `nft`): `auto` picks iptables
/// and says why, the connections agree with the model, DEL leaves nothing; `nftables` is
/// refused with a message that says `nft` is missing, and changes nothing.
#[test]
#[ignore = "privileged, on an AL2023-shaped host: `cargo xtask test` runs it in its virtual machine"]
fn al2023_host_the_cni_plugin_uses_the_hosts_tools() {
    let test = "al2023_host_the_cni_plugin_uses_the_hosts_tools";
    intercept_tests::require_al2023_host(test);
    let engine = require_engine(test);
    let mut task = Task::new(&engine);
    let topology = task.start_pause();
    task.start_ecs_agent(&intercept_bin(test));
    let netns = format!("/host/proc/{}/ns/net", task.pid(PAUSE));
    let ports = ["22".to_owned()];
    let with_backend =
        |backend: &str| recorded_netconf_with_ports(&ports).replacen('{', &format!(r#"{{"backend":"{backend}","#), 1);
    let refused = task.cni("ADD", &netns, with_backend("nftables").as_bytes());
    let error = refused.json();
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(error.to_string().contains("nft"), "the message says nft is missing: {error}");
    nothing_left(&topology.task);
    let sandbox = recorded_sandbox(topology, 22);
    let add = task.cni("ADD", &netns, with_backend("auto").as_bytes());
    add.assert_success();
    assert!(add.stderr.contains("backend auto: iptables") && add.stderr.contains("nft"), "{}", add.stderr);
    check(CLIENT, &sandbox, &recorded_model(&ports), &recorded_cases(22));
    task.cni("DEL", &netns, with_backend("auto").as_bytes()).assert_success();
    nothing_left(sandbox.task());
}

/// `intercept apply --netns /proc/<pid>/ns/net` on the host, for a pause container that holds
/// capabilities intercept drops (Docker's defaults: CHOWN, DAC_OVERRIDE, …): the namespace is
/// opened before the drop, so apply, status and remove all work in it.
#[test]
#[ignore = "privileged (root, namespaces, a container engine): `cargo xtask test` runs it"]
fn the_cli_works_in_the_namespace_of_a_process_holding_more_capabilities() {
    let test = "the_cli_works_in_the_namespace_of_a_process_holding_more_capabilities";
    let engine = require_engine(test);
    let mut task = Task::new(&engine);
    let topology = task.start_pause();
    let netns = format!("/proc/{}/ns/net", task.pid(PAUSE));
    let run = |verb: &str, extra: &[&str]| {
        let out = Command::new(intercept_bin(test))
            .args([verb, "--backend", "iptables", "--netns", &netns])
            .args(extra)
            .envs([("APPMESH_IGNORE_UID", "1337"), ("APPMESH_ENVOY_EGRESS_PORT", "15001")])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, out) = run("apply", &["--from-env"]);
    assert_eq!(code, Some(0), "apply: {out}");
    let (code, out) = run("status", &["--from-env"]);
    assert_eq!(code, Some(0), "status: {out}");
    let (code, out) = run("remove", &[]);
    assert_eq!(code, Some(0), "remove: {out}");
    nothing_left(&topology.task);
}

/// The eBPF init container run as a new user tries it, with a plain `docker run` and no task
/// cgroup: its cgroup's parent is the engine's parent of every container (`/docker` with the
/// cgroupfs driver, `/system.slice` with systemd's), which `--cgroup auto` refuses (exit 2,
/// naming it and the remedy), in a private and in the host's cgroup namespace. Nothing is
/// attached anywhere (`bpftool cgroup tree`) and nothing is pinned.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn cgroup_auto_outside_a_task_is_refused_and_attaches_nothing() {
    let test = "cgroup_auto_outside_a_task_is_refused_and_attaches_nothing";
    let engine = require_engine(test);
    let bpffs = TestBpffs::mounted();
    let mount = intercept_tests::cgroup2_mount().expect("a cgroup2 mount");
    let tree = || {
        let out =
            Command::new("bpftool").args(["cgroup", "tree"]).arg(&mount).output().expect("bpftool (package bpftool)");
        assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = tree();
    for cgroupns in ["private", "host"] {
        let volumes =
            [format!("{}:/sys/fs/cgroup", mount.display()), format!("{}:/sys/fs/bpf", bpffs.path().display())];
        let out = engine
            .docker()
            .args(["run", "--rm", "--cgroupns", cgroupns, "--cap-drop", "ALL", "--cap-add", "NET_ADMIN"])
            .args(["--cap-add", "SYS_ADMIN", "--volume", &volumes[0], "--volume", &volumes[1]])
            .args(["--env", "APPMESH_IGNORE_UID=1337", "--env", "APPMESH_ENVOY_EGRESS_PORT=15001", engine.image()])
            .args(["apply", "--backend", "ebpf", "--cgroup", "auto", "--bpffs", "/sys/fs/bpf"])
            .args(["--install-when", "immediately", "--from-env"])
            .output()
            .expect("docker run");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{cgroupns} cgroupns: {text}");
        assert!(
            text.contains("is not one task's cgroup")
                && text.contains("--cgroup PATH")
                && text.contains("nothing was changed"),
            "{cgroupns} cgroupns: {text}"
        );
        assert_eq!(tree(), before, "{cgroupns} cgroupns: nothing attached");
        assert!(bpffs.files().is_empty(), "{cgroupns} cgroupns: nothing pinned: {:?}", bpffs.files());
    }
}

/// The pins under the test's bpffs, by cgroup id.
fn pinned(bpffs: &TestBpffs) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(bpffs.path().join("intercept"))
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// The task's cgroup as the init container names it: through the host's hierarchy mounted at
/// the same place.
fn in_container(cgroup: &Path) -> String {
    cgroup.display().to_string()
}

fn no_netfilter_rule(run: &Run) -> bool {
    let task = &run.topology.task;
    let rules = task.exec("iptables-nft-save", &[]) + &task.exec("iptables-legacy-save", &[]);
    !rules.contains("INTERCEPT") && !task.nft_tables().contains("intercept")
}
