//! `intercept daemon --docker-socket`: the host daemon finds ECS tasks in the container engine
//! by itself. ECS-shaped tasks (see `intercept_tests::containers`) carry the configuration
//! in the proxy container's `intercept.proxy-configuration` label (a container definition's
//! `dockerLabels`) and their backend in `intercept.backend`; the daemon runs on the host, as
//! its systemd unit runs it. Every destination dialled is in the tasks' remote namespaces.

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use intercept_tests::{
    containers::{BASE, Engine, InitContainer, PrivateEngine, Task, require_engine},
    daemon::{Daemon, DaemonDirs, seed_proxy_configuration},
    ebpf::TestBpffs,
    topology::{Topology, intercept_bin},
    traffic::{Client, Listeners, Role},
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const REMOTE: &str = "10.0.0.1:80";
const BACKENDS: [&str; 3] = ["iptables", "nftables", "ebpf"];
/// How soon a task's traffic must be intercepted once its containers run.
const INSTALL_WITHIN: Duration = Duration::from_secs(2);

/// A running task with its remote namespace.
struct Running {
    task: Task,
    topology: Topology,
    _remote: Listeners,
    backend: &'static str,
}

/// Starts an ECS-shaped task whose proxy container carries the labels: the pause container,
/// the test proxy (uid 1337; egress 15001, ingress 15000), the app.
fn start_task(engine: &Engine, backend: &'static str, labels: &[(&str, String)]) -> Running {
    start_labelled(Task::new(engine), backend, labels)
}

/// [`start_task`] with a task made already (whose id a test needs first).
fn start_labelled(mut task: Task, backend: &'static str, labels: &[(&str, String)]) -> Running {
    let topology = task.start_pause();
    let remote = Listeners::start(&topology.remote, &[(Role::Remote, "0.0.0.0:80".parse().unwrap())]);
    let options: Vec<String> =
        labels.iter().flat_map(|(key, value)| ["--label".to_owned(), format!("{key}={value}")]).collect();
    let bins = Path::new(CLIENT).parent().unwrap();
    task.start_test_proxy(bins, "1337:1337", &options);
    task.start_test_app(bins);
    Running { task, topology, _remote: remote, backend }
}

fn labelled(backend: &str) -> Vec<(&'static str, String)> {
    vec![
        ("intercept.proxy-configuration", seed_proxy_configuration("22").to_string()),
        ("intercept.backend", backend.to_owned()),
    ]
}

/// Whether the app's connection to the remote is redirected to the proxy now.
fn intercepted(running: &Running) -> bool {
    running.task.connect(1000, 1000, REMOTE).is_ok_and(|r| r.role == Role::EgressProxy)
}

/// Waits until `done` holds; the time it took, or `None` after `timeout`.
fn within(timeout: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn start_daemon(test: &str, dirs: &DaemonDirs, bpffs: &TestBpffs, socket: &Path) -> Daemon {
    let socket = socket.display().to_string();
    Daemon::start(&intercept_bin(test), dirs, bpffs.path(), &["--docker-socket", &socket, "--resync-interval", "3s"])
}

fn socket_of(engine_host: &str) -> PathBuf {
    PathBuf::from(engine_host.trim_start_matches("unix://"))
}

/// Twenty tasks, across the three backends, started and stopped in a shuffled order: each
/// task's traffic is intercepted within 2 s of its containers running; the inbound AppPort
/// reaches its proxy; once a task stops, nothing of it remains (its record, its pins).
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_daemon_follows_the_tasks_of_the_engine() {
    let test = "the_daemon_follows_the_tasks_of_the_engine";
    let engine = require_engine(test);
    let dirs = DaemonDirs::new();
    let bpffs = TestBpffs::mounted();
    let mut daemon = start_daemon(test, &dirs, &bpffs, &socket_of(&std::env::var("DOCKER_HOST").unwrap()));
    let mut tasks = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..20 {
        let backend = BACKENDS[i % 3];
        let running = start_task(&engine, backend, &labelled(backend));
        let took = within(INSTALL_WITHIN * 5, || intercepted(&running));
        let took =
            took.unwrap_or_else(|| panic!("task {i} ({backend}) not intercepted; log:\n{}", daemon.log().join("\n")));
        latencies.push(took);
        tasks.push(running);
    }
    for running in &tasks {
        let inbound: SocketAddr = "10.0.0.2:9080".parse().unwrap();
        let reply = Client::new(CLIENT).netns(&running.topology.remote).connect(inbound).unwrap();
        assert_eq!((reply.role, reply.original), (Role::IngressProxy, Some(inbound)), "{}: {reply}", running.backend);
    }
    daemon.wait_until("every task is recorded", Duration::from_secs(10), |_| dirs.recorded().len() == 20);
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    eprintln!("daemon --docker-socket: container start to intercepted, 20 tasks: p50 {p50:?}, p99 {p99:?}");
    assert!(latencies.iter().all(|l| *l <= INSTALL_WITHIN), "{latencies:?}");

    // Stopped in a shuffled order (a fixed one, so a failure replays).
    let mut order: Vec<usize> = (0..tasks.len()).collect();
    let mut seed = 0x2545_f491_u64;
    for i in (1..order.len()).rev() {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        order.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let mut tasks: Vec<Option<Running>> = tasks.into_iter().map(Some).collect();
    for i in order {
        let mut running = tasks[i].take().unwrap();
        let id = running.task.id.clone();
        running.task.stop();
        drop(running);
        daemon.wait_until(&format!("task {id} is forgotten"), Duration::from_secs(10), |_| {
            !dirs.recorded().contains(&id)
        });
    }
    daemon.wait_until("no pins are left", Duration::from_secs(10), |_| bpffs.files().is_empty());
    let removed = daemon.metric(r#"intercept_remove_total{result="ok"}"#);
    assert_eq!(removed, 20.0, "each task removed once");
    assert_eq!(daemon.metric(r#"intercept_apply_total{result="error"}"#), 0.0, "{}", daemon.log().join("\n"));
}

/// The daemon killed while tasks run, and one of them stopped while it is down: interception
/// stays for the others; the restarted daemon adopts them without installing twice and
/// forgets the stopped one.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_killed_daemon_adopts_its_tasks_and_forgets_the_ended_ones() {
    let test = "a_killed_daemon_adopts_its_tasks_and_forgets_the_ended_ones";
    let engine = require_engine(test);
    let dirs = DaemonDirs::new();
    let bpffs = TestBpffs::mounted();
    let socket = socket_of(&std::env::var("DOCKER_HOST").unwrap());
    let mut daemon = start_daemon(test, &dirs, &bpffs, &socket);
    let mut tasks: Vec<Running> = BACKENDS.iter().map(|b| start_task(&engine, b, &labelled(b))).collect();
    for running in &tasks {
        assert!(within(INSTALL_WITHIN * 5, || intercepted(running)).is_some(), "{}", running.backend);
    }
    daemon.wait_until("three tasks are recorded", Duration::from_secs(10), |_| dirs.recorded().len() == 3);
    let recorded = dirs.recorded();
    drop(daemon); // SIGKILL
    for running in &tasks {
        assert!(intercepted(running), "{}: interception stays while the daemon is down", running.backend);
    }
    let mut ended = tasks.remove(0);
    let ended_id = ended.task.id.clone();
    ended.task.stop();
    drop(ended);
    let mut daemon = start_daemon(test, &dirs, &bpffs, &socket);
    daemon.wait_until("the ended task is forgotten", Duration::from_secs(10), |_| !dirs.recorded().contains(&ended_id));
    let kept: BTreeSet<String> = recorded.into_iter().filter(|id| *id != ended_id).collect();
    assert_eq!(dirs.recorded().into_iter().collect::<BTreeSet<_>>(), kept);
    for running in &tasks {
        assert!(intercepted(running), "{}: still intercepted", running.backend);
    }
    let log = daemon.log().join("\n");
    assert!(log.contains("adopting the tasks of an earlier run"), "{log}");
    assert_eq!(daemon.metric(r#"intercept_apply_total{result="error"}"#), 0.0, "{log}");
}

/// The engine stopped and started again (with `--live-restore`, as its containers run on):
/// the daemon reconnects, and no task is removed because of it.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn an_engine_restart_removes_nothing() {
    let test = "an_engine_restart_removes_nothing";
    let mut private = PrivateEngine::start(test, Path::new(env!("CARGO_TARGET_TMPDIR")));
    let engine = private.engine();
    let dirs = DaemonDirs::new();
    let bpffs = TestBpffs::mounted();
    let mut daemon = start_daemon(test, &dirs, &bpffs, private.socket());
    let tasks: Vec<Running> = BACKENDS.iter().map(|b| start_task(&engine, b, &labelled(b))).collect();
    for running in &tasks {
        assert!(within(INSTALL_WITHIN * 5, || intercepted(running)).is_some(), "{}", running.backend);
    }
    daemon.wait_until("three tasks are recorded", Duration::from_secs(10), |_| dirs.recorded().len() == 3);
    private.stop();
    daemon.wait_until("the daemon notices", Duration::from_secs(10), |d| {
        d.log().iter().any(|l| l.contains("the Docker engine: retrying with backoff"))
    });
    // Longer than a resync period: the daemon keeps every task while it cannot look.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(dirs.recorded().len(), 3, "nothing removed while the engine is down");
    private.restart();
    daemon.wait_until("the daemon follows the engine again", Duration::from_secs(20), |d| {
        d.log().iter().filter(|l| l.contains("following the Docker engine")).count() >= 2
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(dirs.recorded().len(), 3, "nothing removed after the restart");
    assert_eq!(daemon.metric(r#"intercept_remove_total{result="ok"}"#), 0.0);
    assert!(daemon.metric("intercept_docker_reconnects_total") >= 1.0);
    for running in &tasks {
        assert!(intercepted(running), "{}", running.backend);
    }
    drop(tasks);
    drop(daemon);
}

/// Bad input from the engine is never fatal: a malformed label is reported once and its task
/// left alone; a task known from a task file too is a conflict, installed from neither; a
/// container that vanishes while it is looked at is passed over. The daemon keeps serving.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn bad_labels_conflicts_and_vanishing_containers_are_not_fatal() {
    let test = "bad_labels_conflicts_and_vanishing_containers_are_not_fatal";
    let engine = require_engine(test);
    let dirs = DaemonDirs::new();
    let bpffs = TestBpffs::mounted();
    let mut daemon = start_daemon(test, &dirs, &bpffs, &socket_of(&std::env::var("DOCKER_HOST").unwrap()));
    let malformed = start_task(&engine, "iptables", &[("intercept.proxy-configuration", "{not json".to_owned())]);
    // The task file first, so that the engine's task is a conflict from its start.
    let conflicting = Task::new(&engine);
    let id = conflicting.id.clone();
    let file = intercept_tests::daemon::task_json(
        &id,
        "nftables",
        Path::new("/ecs/x"),
        Path::new("/run/netns/x"),
        &seed_proxy_configuration("22"),
    );
    dirs.write_task(&id, &file);
    let conflicting = start_labelled(conflicting, "nftables", &labelled("nftables"));
    let good = start_task(&engine, "iptables", &labelled("iptables"));
    assert!(within(INSTALL_WITHIN * 5, || intercepted(&good)).is_some());
    // Containers that come and go at once, while the daemon inspects what it is told of.
    for _ in 0..5 {
        let name = format!("{}-flash", good.task.id);
        let label = format!("com.amazonaws.ecs.task-arn=arn:aws:ecs:us-west-2:1:task/c/{name}");
        let _ = engine
            .docker()
            .args(["run", "--rm", "--network", "none", "--name", &name, "--label", &label, BASE, "true"])
            .output();
    }
    daemon.wait_until("both problems are reported", Duration::from_secs(10), |d| {
        let log = d.log().join("\n");
        log.contains(&malformed.task.id)
            && log.contains("intercept.proxy-configuration")
            && log.contains("known from a task file and from the container engine")
    });
    std::thread::sleep(Duration::from_secs(4));
    let log = daemon.log();
    let reported = log.iter().filter(|l| l.contains(&malformed.task.id) && l.contains("task skipped")).count();
    assert_eq!(reported, 1, "reported once, not every pass:\n{}", log.join("\n"));
    assert!(!intercepted(&malformed) && !intercepted(&conflicting), "left alone");
    assert!(intercepted(&good));
    assert_eq!(dirs.recorded(), std::slice::from_ref(&good.task.id));
    assert_eq!(daemon.get("/healthz").map(|(s, _)| s), Some(200));
    fs::remove_file(dirs.tasks().join(format!("{}.json", conflicting.task.id))).unwrap();
    daemon.wait_until("the conflict is gone", Duration::from_secs(10), |_| intercepted(&conflicting));
}

/// The daemon as an ECS daemon service runs it (`deploy/ecs-daemon-service.json`): a container
/// of the project's image in the host's network and pid namespaces, with the engine's socket,
/// the host's cgroup hierarchy, a bpffs and `/run/intercept` mounted (the engine's socket,
/// the bpffs and the state directory are the test's own), in a private cgroup namespace as
/// Docker gives it on cgroup v2 hosts (Amazon Linux 2023). From there it reads the task
/// containers' cgroups relative to its own namespace's root. It finds an iptables and an eBPF
/// task and installs them, and forgets them when they stop.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_daemon_runs_as_an_ecs_daemon_service() {
    let test = "the_daemon_runs_as_an_ecs_daemon_service";
    let engine = require_engine(test);
    let bpffs = TestBpffs::mounted();
    let run = tempfile::tempdir().unwrap();
    let socket = socket_of(&std::env::var("DOCKER_HOST").unwrap());
    let service = InitContainer::from_deploy_container("ecs-daemon-service.json", "intercept-daemon");
    let name = format!("intercept-daemon-{}", std::process::id());
    let mut args = vec!["run".to_owned(), "--detach".to_owned(), "--name".to_owned(), name.clone()];
    // The task definition's networkMode and pidMode; the cgroup namespace of a cgroup v2 host.
    args.extend(["--network", "host", "--pid", "host", "--cgroupns", "private"].map(str::to_owned));
    args.extend(service.run_options(&[
        ("docker-socket", &socket),
        ("bpffs", bpffs.path()),
        ("run-intercept", run.path()),
    ]));
    args.push(engine.image().to_owned());
    args.extend(service.command.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    engine.must(&args);
    let _daemon = Removed(engine.clone(), name.clone());
    let tasks =
        [start_task(&engine, "iptables", &labelled("iptables")), start_task(&engine, "ebpf", &labelled("ebpf"))];
    let logs =
        || engine.docker().args(["logs", &name]).output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let state = run.path().join("daemon/state.json");
    let recorded = || fs::read_to_string(&state).unwrap_or_default();
    for running in &tasks {
        assert!(
            within(Duration::from_secs(10), || intercepted(running)).is_some(),
            "the daemon in its container did not install the {} task: {:?}",
            running.backend,
            logs()
        );
        assert!(recorded().contains(&running.task.id), "{}", recorded());
    }
    let ebpf = &tasks[1];
    assert!(
        recorded().contains(&ebpf.task.cgroup_path().display().to_string()),
        "the task's own cgroup: {}",
        recorded()
    );
    for running in tasks {
        let id = running.task.id.clone();
        drop(running);
        assert!(within(Duration::from_secs(10), || !recorded().contains(&id)).is_some(), "{:?}", logs());
    }
}

/// The daemon as its systemd unit runs it on an Amazon Linux 2023 host:
/// `deploy/intercept-docker.service` as it is (its binary where the unit says, the engine at
/// `/var/run/docker.sock`, bpffs at `/sys/fs/bpf`), on tasks laid out as the ECS agent lays
/// them out there (`ecstasks-<id>.slice`, the systemd cgroup driver). It installs an iptables
/// and an eBPF task, and removes the eBPF task's pins once it stops.
#[test]
#[ignore = "privileged, on an AL2023-shaped host: `cargo xtask test` runs it in its virtual machine"]
fn al2023_host_the_daemon_runs_as_its_systemd_unit() {
    let test = "al2023_host_the_daemon_runs_as_its_systemd_unit";
    intercept_tests::require_al2023_host(test);
    let engine = require_engine(test);
    assert!(engine.systemd_driver(), "the engine uses systemd's cgroup driver on such a host");
    let unit = Unit::start("intercept-docker.service");
    let tasks =
        [start_task(&engine, "iptables", &labelled("iptables")), start_task(&engine, "ebpf", &labelled("ebpf"))];
    for running in &tasks {
        assert!(
            within(Duration::from_secs(20), || intercepted(running)).is_some(),
            "the daemon's unit did not install the {} task: {}",
            running.backend,
            unit.journal()
        );
    }
    let pins = Path::new("/sys/fs/bpf/intercept");
    // Installations are named by their cgroup's id; beside them is the log ring they share.
    let pinned = || -> Vec<String> {
        let Ok(entries) = fs::read_dir(pins) else { return Vec::new() };
        entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    let installations = pinned().iter().filter(|name| name.parse::<u64>().is_ok()).count();
    assert_eq!(installations, 1, "the eBPF task's pins ({:?}): {}", pinned(), unit.journal());
    drop(tasks);
    let gone = within(Duration::from_secs(20), || pinned().is_empty());
    assert!(gone.is_some(), "pins left ({:?}), the shared log ring included: {}", pinned(), unit.journal());
}

/// A unit of `deploy/`, started under systemd as a runtime unit (`/run/systemd/system`), and
/// stopped and removed when dropped.
struct Unit {
    name: &'static str,
}

impl Unit {
    fn start(name: &'static str) -> Unit {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name);
        let text = fs::read_to_string(&source).expect("the unit");
        // The binary where the unit runs it, as the packages install it: the working tree's, which
        // the host VM puts at /usr/local/bin (the VM is the test's own).
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
        let binary = Path::new(exec.split_whitespace().next().expect("a program"));
        if !binary.exists() {
            std::os::unix::fs::symlink("/usr/local/bin/intercept", binary).expect("install the binary");
        }
        fs::copy(&source, Path::new("/run/systemd/system").join(name)).expect("install the unit");
        let unit = Unit { name };
        unit.systemctl(&["daemon-reload"]);
        unit.systemctl(&["start", name]);
        unit
    }

    fn systemctl(&self, args: &[&str]) {
        let out = std::process::Command::new("systemctl").args(args).output().expect("systemctl");
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
    }

    fn journal(&self) -> String {
        std::process::Command::new("journalctl")
            .args(["--no-pager", "--unit", self.name, "--lines", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("systemctl").args(["stop", self.name]).status();
        let _ = fs::remove_file(Path::new("/run/systemd/system").join(self.name));
        let _ = std::process::Command::new("systemctl").arg("daemon-reload").status();
    }
}

/// A container removed (by name) when dropped.
struct Removed(Engine, String);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = self.0.docker().args(["rm", "--force", &self.1]).output();
    }
}
