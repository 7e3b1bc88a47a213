//! `intercept daemon` as a child process on test cgroups, test namespaces and a test bpffs:
//! task files added, changed (renamed into place and overwritten), corrupted and deleted; a
//! task's cgroup removed; SIGKILL and restart under load with adoption; SIGTERM leaving
//! interception in place and `--remove-on-exit` removing it; a `proxy-live` task held back
//! until a fake Envoy admin in its namespace reports LIVE, beside an `immediately` one; the
//! metrics endpoint scraped and parsed throughout.
//!
//! Needs root and the `intercept` binary (`cargo xtask test` builds it; see
//! `intercept_tests::topology::intercept_bin`).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use intercept::backend::rules::Rules as _;
use intercept::{
    backend::{
        ebpf::{self, Target},
        iptables::Iptables,
    },
    netns,
};
use intercept_tests::{
    daemon::{Daemon, DaemonDirs, seed_proxy_configuration, task_json},
    ebpf::{ChildCgroup, EbpfSandbox, PLAIN_V4, TestBpffs},
    readiness::FakeAdmin,
    require_privileges,
    topology::{Netns, intercept_bin, require_netns_privileges},
    traffic::Role,
};
use nix::sys::signal::Signal;

const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");
const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const APP_UID: u32 = 1000;
const WAIT: Duration = Duration::from_secs(20);
/// Long enough that only file events drive the daemon in the tests that say so.
const NO_RESYNC: &str = "1h";

fn remote_http() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PLAIN_V4), 80)
}

/// Who answers the app's connection to a remote server on port 80.
fn egress_role(world: &EbpfSandbox) -> Role {
    world.egress(APP_UID, APP_UID, remote_http()).unwrap_or_else(|e| panic!("egress connection: {e}")).role
}

fn ebpf_task(world: &EbpfSandbox, id: &str, ignored_ports: &str) -> String {
    task_json(id, "ebpf", world.cgroup.path(), &world.sandbox.task().path(), &seed_proxy_configuration(ignored_ports))
}

fn ebpf_installed(cgroup: &Path, bpffs: &Path) -> bool {
    let target = Target::new(cgroup.to_str().expect("UTF-8"), Some(bpffs)).expect("resolve the cgroup");
    ebpf::status(&target).expect("eBPF status").is_some()
}

fn iptables_installed(netns: &Netns) -> bool {
    Iptables::open(netns::Target::Path(netns.path()), None)
        .expect("open iptables")
        .status(None)
        .expect("status")
        .exit_code()
        == 0
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn task_files_added_changed_corrupted_deleted_with_metrics() {
    let test = "task_files_added_changed_corrupted_deleted_with_metrics";
    let host = require_privileges(test);
    let bin = intercept_bin(test);
    let world = EbpfSandbox::new(&host, PROBE, CLIENT);
    let dirs = DaemonDirs::new();
    let mut daemon = Daemon::start(&bin, &dirs, world.bpffs.path(), &["--resync-interval", NO_RESYNC]);
    // The endpoint answers from the start, and 200 once the first pass has completed.
    daemon.wait_until("a pass ran on start", WAIT, |d| d.get("/healthz").map(|(status, _)| status) == Some(200));
    assert_eq!(egress_role(&world), Role::Remote, "nothing installed yet");

    // Added: renamed into place.
    dirs.write_task("t1", &ebpf_task(&world, "t1", "22"));
    daemon.wait_until("t1 is applied", WAIT, |d| d.metric(r#"intercept_tasks{state="applied"}"#) == 1.0);
    let reply = world.egress(APP_UID, APP_UID, remote_http()).expect("egress connection");
    assert_eq!((reply.role, reply.original), (Role::EgressProxy, Some(remote_http())));
    let metrics = daemon.metrics();
    assert_eq!(metrics.get(r#"intercept_apply_total{result="ok"}"#), Some(&1.0), "{metrics:#?}");
    assert!(
        metrics.get(r#"intercept_task_connections_total{task="t1",decision="redirected"}"#) >= Some(&1.0),
        "the programs' counters are exported per task: {metrics:#?}"
    );
    assert!(metrics.contains_key("intercept_reconcile_duration_seconds_count"), "{metrics:#?}");

    // Changed in place: port 80 ignored from now on.
    dirs.overwrite_task("t1", &ebpf_task(&world, "t1", "22,80"));
    daemon.wait_until("the change is applied", WAIT, |d| d.metric(r#"intercept_apply_total{result="ok"}"#) == 2.0);
    assert_eq!(egress_role(&world), Role::Remote, "port 80 is ignored now");

    // A corrupt file is reported and skipped; a corrupt version of t1's own file leaves t1 as
    // it is.
    dirs.write_task("broken", "{");
    daemon.wait_until("the bad file is reported", WAIT, |d| {
        d.metric("intercept_task_file_errors_total") == 1.0 && d.metric(r#"intercept_tasks{state="invalid"}"#) == 1.0
    });
    // A second task for t1's cgroup is refused; deleting its file leaves t1 alone.
    dirs.write_task("dup", &ebpf_task(&world, "dup", "22,80"));
    daemon.wait_until("the conflict is reported", WAIT, |d| {
        d.metric("intercept_task_file_errors_total") == 2.0 && d.metric(r#"intercept_tasks{state="invalid"}"#) == 2.0
    });
    assert!(daemon.log().iter().any(|l| l.contains("is task t1's")), "{:#?}", daemon.log());
    dirs.delete_task("dup");
    daemon.wait_until("dup is gone", WAIT, |d| d.metric(r#"intercept_tasks{state="invalid"}"#) == 1.0);
    assert_eq!(daemon.metric(r#"intercept_remove_total{result="ok"}"#), 0.0);
    assert!(ebpf_installed(world.cgroup.path(), world.bpffs.path()));
    dirs.overwrite_task("t1", r#"{"id": "t1"}"#);
    daemon.wait_until("t1's bad version is reported", WAIT, |d| d.metric("intercept_task_file_errors_total") == 3.0);
    assert!(ebpf_installed(world.cgroup.path(), world.bpffs.path()), "t1's interception stays while its file exists");
    assert!(
        daemon.log().iter().any(|l| l.contains("task file") && l.contains(r#"cgroup: missing"#)),
        "the log names the file and the field: {:#?}",
        daemon.log()
    );
    dirs.write_task("t1", &ebpf_task(&world, "t1", "22"));
    daemon.wait_until("t1 is fixed", WAIT, |d| d.metric(r#"intercept_apply_total{result="ok"}"#) == 3.0);
    assert_eq!(egress_role(&world), Role::EgressProxy);

    // Deleted: removed, nothing left pinned.
    dirs.delete_task("t1");
    daemon.wait_until("t1 is removed", WAIT, |d| d.metric(r#"intercept_remove_total{result="ok"}"#) == 1.0);
    assert!(!ebpf_installed(world.cgroup.path(), world.bpffs.path()));
    assert_eq!(egress_role(&world), Role::Remote);
    assert_eq!(dirs.recorded(), Vec::<String>::new());
    assert_eq!(daemon.metric(r#"intercept_tasks{state="applied"}"#), 0.0);
    let (status, _) = daemon.get("/nothing").expect("answers");
    assert_eq!(status, 404);
    assert!(daemon.stop(Signal::SIGTERM).success());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_task_whose_cgroup_disappears_is_cleaned_up_and_reported() {
    let test = "a_task_whose_cgroup_disappears_is_cleaned_up_and_reported";
    let host = require_privileges(test);
    let bin = intercept_bin(test);
    require_netns_privileges(test);
    let parent = host.create_cgroup().expect("create a test cgroup");
    let child = ChildCgroup::create(&parent);
    let netns = Netns::create("daemon");
    let bpffs = TestBpffs::mounted();
    let dirs = DaemonDirs::new();
    let cgroup_id = intercept::cgroup::id(child.path()).expect("cgroup id");
    dirs.write_task("t1", &task_json("t1", "ebpf", child.path(), &netns.path(), &seed_proxy_configuration("22")));
    let mut daemon = Daemon::start(&bin, &dirs, bpffs.path(), &["--resync-interval", "200ms"]);
    daemon.wait_until("t1 is applied", WAIT, |d| d.metric(r#"intercept_tasks{state="applied"}"#) == 1.0);
    let pins = bpffs.path().join("intercept").join(cgroup_id.to_string());
    assert!(pins.exists(), "{} is pinned", pins.display());

    drop(child);
    daemon.wait_until("the cgroup's removal is reported", WAIT, |d| {
        d.metric("intercept_cgroup_gone_total") == 1.0 && d.metric(r#"intercept_tasks{state="cgroup_missing"}"#) == 1.0
    });
    assert!(!pins.exists(), "the pins of the gone cgroup are removed: {:?}", bpffs.files());
    assert_eq!(dirs.recorded(), Vec::<String>::new());
    assert!(daemon.log().iter().any(|l| l.contains("cgroup is gone") && l.contains("t1")), "{:#?}", daemon.log());
    assert!(daemon.stop(Signal::SIGTERM).success());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn killed_and_restarted_under_load_no_connection_escapes_and_tasks_are_adopted() {
    let test = "killed_and_restarted_under_load_no_connection_escapes_and_tasks_are_adopted";
    let host = require_privileges(test);
    let bin = intercept_bin(test);
    let world = Arc::new(EbpfSandbox::new(&host, PROBE, CLIENT));
    // A second task whose file is deleted while the daemon is down.
    let other_cgroup = host.create_cgroup().expect("create a test cgroup");
    let other_netns = Netns::create("daemon");
    let dirs = DaemonDirs::new();
    dirs.write_task("t1", &ebpf_task(&world, "t1", "22"));
    dirs.write_task(
        "t2",
        &task_json("t2", "ebpf", other_cgroup.path(), &other_netns.path(), &seed_proxy_configuration("22")),
    );
    let mut daemon = Daemon::start(&bin, &dirs, world.bpffs.path(), &["--resync-interval", "500ms"]);
    daemon.wait_until("both tasks are applied", WAIT, |d| d.metric(r#"intercept_tasks{state="applied"}"#) == 2.0);

    // The app connects in a loop while the daemon is killed and restarted.
    let stop = Arc::new(AtomicBool::new(false));
    let intercepted = Arc::new(AtomicUsize::new(0));
    let load = {
        let (world, stop, intercepted) = (Arc::clone(&world), Arc::clone(&stop), Arc::clone(&intercepted));
        thread::spawn(move || {
            let mut escaped = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match world.egress(APP_UID, APP_UID, remote_http()) {
                    Ok(reply) if reply.role == Role::EgressProxy => {
                        intercepted.fetch_add(1, Ordering::Relaxed);
                    }
                    other => escaped.push(format!("{other:?}")),
                }
            }
            escaped
        })
    };
    let wait_for_load = |n: usize| {
        let start = intercepted.load(Ordering::Relaxed);
        while intercepted.load(Ordering::Relaxed) < start + n && !load.is_finished() {
            thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for_load(3);
    assert!(!daemon.stop(Signal::SIGKILL).success());
    wait_for_load(3);
    dirs.delete_task("t2");
    wait_for_load(3);
    let mut daemon = Daemon::start(&bin, &dirs, world.bpffs.path(), &["--resync-interval", "500ms"]);
    daemon.wait_until("t2's deleted file is seen and its task removed", WAIT, |d| {
        d.metric(r#"intercept_remove_total{result="ok"}"#) == 1.0
    });
    // A full pass with the host checked has run (the first one): t1 was adopted as it was.
    assert_eq!(daemon.metric(r#"intercept_apply_total{result="ok"}"#), 0.0, "t1 was adopted, not re-applied");
    assert_eq!(daemon.metric(r#"intercept_tasks{state="applied"}"#), 1.0);
    wait_for_load(3);
    stop.store(true, Ordering::Relaxed);
    let escaped = load.join().expect("the load thread");
    assert_eq!(escaped, Vec::<String>::new(), "connections that were not intercepted");
    assert!(intercepted.load(Ordering::Relaxed) >= 12, "the load ran throughout");
    assert!(!ebpf_installed(other_cgroup.path(), world.bpffs.path()), "t2 is removed");
    assert_eq!(dirs.recorded(), ["t1"]);
    assert!(daemon.stop(Signal::SIGTERM).success());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn sigterm_leaves_interception_and_remove_on_exit_removes_it() {
    let test = "sigterm_leaves_interception_and_remove_on_exit_removes_it";
    let host = require_privileges(test);
    let bin = intercept_bin(test);
    require_netns_privileges(test);
    let ebpf_cgroup = host.create_cgroup().expect("create a test cgroup");
    let iptables_cgroup = host.create_cgroup().expect("create a test cgroup");
    let ebpf_netns = Netns::create("daemon");
    let iptables_netns = Netns::create("daemon");
    let bpffs = TestBpffs::mounted();
    let dirs = DaemonDirs::new();
    let proxy = seed_proxy_configuration("22");
    dirs.write_task("bpf", &task_json("bpf", "ebpf", ebpf_cgroup.path(), &ebpf_netns.path(), &proxy));
    dirs.write_task("ipt", &task_json("ipt", "iptables", iptables_cgroup.path(), &iptables_netns.path(), &proxy));
    let mut daemon =
        Daemon::start(&bin, &dirs, bpffs.path(), &["--resync-interval", NO_RESYNC, "--log-format", "json"]);
    daemon.wait_until("both tasks are applied", WAIT, |d| d.metric(r#"intercept_tasks{state="applied"}"#) == 2.0);
    let log = daemon.log();
    let applied: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("--log-format json: {l:?}: {e}")))
        .filter(|l: &serde_json::Value| l["fields"]["message"] == "applied")
        .collect();
    assert_eq!(applied.len(), 2, "{log:#?}");
    let metrics = daemon.metrics();
    for decision in ["redirected", "ignored-uid", "ignored-port", "ignored-ip", "ingress-steered"] {
        let sample = format!(r#"intercept_task_connections_total{{task="ipt",decision="{decision}"}}"#);
        assert_eq!(metrics.get(&sample), Some(&0.0), "the iptables task's rule counters: {metrics:#?}");
    }

    assert!(daemon.stop(Signal::SIGTERM).success());
    assert!(ebpf_installed(ebpf_cgroup.path(), bpffs.path()), "SIGTERM leaves the eBPF task intercepted");
    assert!(iptables_installed(&iptables_netns), "SIGTERM leaves the iptables task intercepted");
    assert_eq!(dirs.recorded(), ["bpf", "ipt"]);

    let mut daemon = Daemon::start(&bin, &dirs, bpffs.path(), &["--resync-interval", NO_RESYNC, "--remove-on-exit"]);
    daemon.wait_until("the first pass ran", WAIT, |d| d.metric(r#"intercept_tasks{state="applied"}"#) == 2.0);
    assert_eq!(daemon.metric(r#"intercept_apply_total{result="ok"}"#), 0.0, "adopted, not re-applied");
    assert!(daemon.stop(Signal::SIGTERM).success());
    assert!(!ebpf_installed(ebpf_cgroup.path(), bpffs.path()), "--remove-on-exit removes the eBPF task");
    assert!(!iptables_installed(&iptables_netns), "--remove-on-exit removes the iptables task");
    assert_eq!(dirs.recorded(), Vec::<String>::new());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_proxy_live_task_waits_for_its_proxy_and_an_immediately_task_beside_it_does_not() {
    let test = "a_proxy_live_task_waits_for_its_proxy_and_an_immediately_task_beside_it_does_not";
    let host = require_privileges(test);
    let bin = intercept_bin(test);
    require_netns_privileges(test);
    let (waits_cgroup, now_cgroup) = (host.create_cgroup().expect("cgroup"), host.create_cgroup().expect("cgroup"));
    let (waits_netns, now_netns) = (Netns::create("daemon"), Netns::create("daemon"));
    let admin = FakeAdmin::start(&waits_netns);
    let bpffs = TestBpffs::mounted();
    let dirs = DaemonDirs::new();
    let proxy = seed_proxy_configuration("22");
    let mut waits: serde_json::Value =
        serde_json::from_str(&task_json("waits", "iptables", waits_cgroup.path(), &waits_netns.path(), &proxy))
            .expect("JSON");
    waits["installWhen"] = "proxy-live".into();
    dirs.write_task("waits", &waits.to_string());
    dirs.write_task("now", &task_json("now", "iptables", now_cgroup.path(), &now_netns.path(), &proxy));
    // No resync: only the daemon's re-checks of the waiting task can install it.
    let mut daemon =
        Daemon::start(&bin, &dirs, bpffs.path(), &["--resync-interval", NO_RESYNC, "--proxy-timeout", "4"]);
    daemon.wait_until("now is applied and waits is waiting", WAIT, |d| {
        d.metric(r#"intercept_tasks{state="applied"}"#) == 1.0
            && d.metric(r#"intercept_tasks{state="waiting_for_proxy"}"#) == 1.0
    });
    admin.wait_for_requests(3);
    assert!(iptables_installed(&now_netns), "the immediately task is installed at once");
    assert!(!iptables_installed(&waits_netns), "installed while the proxy was PRE_INITIALIZING");
    assert_eq!(dirs.recorded(), ["now"]);

    daemon.wait_until("the wait outlasts --proxy-timeout", WAIT, |d| {
        d.metric(r#"intercept_tasks{state="failed"}"#) == 1.0
            && d.metric(r#"intercept_tasks{state="waiting_for_proxy"}"#) == 0.0
            && d.metric("intercept_proxy_timeouts_total") == 1.0
    });
    assert!(!iptables_installed(&waits_netns), "installed while the proxy was PRE_INITIALIZING");
    daemon.wait_until("the log says waits is waiting, then overdue", WAIT, |d| {
        let log = d.log().join("\n");
        log.contains("waiting for the proxy to be LIVE before installing")
            && log.contains("not LIVE after --proxy-timeout")
    });

    admin.go_live();
    daemon.wait_until("waits is applied once its proxy is LIVE", WAIT, |d| {
        d.metric(r#"intercept_tasks{state="applied"}"#) == 2.0
    });
    assert!(iptables_installed(&waits_netns));
    daemon.wait_until("the log says waits was installed once LIVE", WAIT, |d| {
        d.log().iter().any(|l| l.contains("the proxy is LIVE: installed") && l.contains("waits"))
    });
    let metrics = daemon.metrics();
    for state in ["failed", "waiting_for_proxy"] {
        assert_eq!(metrics.get(&format!(r#"intercept_tasks{{state="{state}"}}"#)), Some(&0.0), "{metrics:#?}");
    }

    // Fail-closed once installed: the proxy going away (its admin refusing connections) does
    // not take the interception with it, whatever passes run.
    drop(admin);
    dirs.write_task(
        "now",
        &task_json("now", "iptables", now_cgroup.path(), &now_netns.path(), &seed_proxy_configuration("23")),
    );
    daemon
        .wait_until("the change to now is applied", WAIT, |d| d.metric(r#"intercept_apply_total{result="ok"}"#) == 3.0);
    assert!(iptables_installed(&waits_netns), "the proxy's restart removed interception");
    assert_eq!(daemon.metric(r#"intercept_tasks{state="applied"}"#), 2.0);
    assert_eq!(dirs.recorded(), ["now", "waits"]);
    assert!(daemon.stop(Signal::SIGTERM).success());
}
