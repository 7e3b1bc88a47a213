//! The daemon's passes against a recording fake host and an engine view the test sets: what it
//! does with the tasks of its sources, without root, namespaces or an engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::docker::{self, Container, DockerTask, Stats, TaskSource, View};
use super::host::{self, HostOps};
use super::metrics::Metrics;
use super::reconcile::Installed;
use super::spec::TaskSpec;
use super::spec::tests::PROXY;
use super::{Daemon, Options};
use crate::backend::{self, Counters, Kind};
use crate::config::ProxyConfig;
use crate::netns;
use crate::readiness::{InstallWhen, Observation, ServerState};

/// A host that records every action and answers as the test says.
#[derive(Debug, Default)]
struct FakeHost {
    calls: Mutex<Vec<String>>,
    /// Cgroups that do not exist; every other one does.
    gone_cgroups: Mutex<BTreeSet<String>>,
    /// The inode each namespace path names now; a path not here names none.
    inodes: Mutex<HashMap<PathBuf, u64>>,
    /// Tasks whose installation is no longer whole.
    broken: Mutex<BTreeSet<String>>,
    /// Tasks whose apply fails.
    failing: Mutex<BTreeSet<String>>,
    /// Tasks whose proxy is LIVE.
    live: Mutex<BTreeSet<String>>,
}

impl FakeHost {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The calls since the last look, one a line.
    fn take(&self) -> String {
        let calls: Vec<String> = std::mem::take(&mut *self.calls.lock().unwrap());
        calls.join("\n")
    }
}

impl HostOps for FakeHost {
    fn cgroup_exists(&self, cgroup: &str) -> Result<bool, host::Error> {
        Ok(!self.gone_cgroups.lock().unwrap().contains(cgroup))
    }

    fn cgroup_id(&self, spec: &TaskSpec) -> Option<u64> {
        (spec.backend == Kind::Ebpf).then_some(7)
    }

    fn netns_inode(&self, path: &Path) -> Option<u64> {
        self.inodes.lock().unwrap().get(path).copied()
    }

    fn apply(&self, spec: &TaskSpec) -> Result<(), host::Error> {
        self.record(format!("apply {} {}", spec.id, spec.backend));
        if self.failing.lock().unwrap().contains(&spec.id) {
            return Err(host::Error::Backend(backend::Error::Refused("the test's failure".into())));
        }
        Ok(())
    }

    fn remove(&self, installed: &Installed, netns: &netns::Target) -> Result<(), host::Error> {
        let netns = match netns {
            netns::Target::Gone(_) => "gone".to_owned(),
            netns::Target::Path(path) => path.display().to_string(),
            other => other.to_string(),
        };
        self.record(format!("remove {} {} in {netns}", installed.id, installed.backend));
        Ok(())
    }

    fn prune(&self) -> Result<Vec<u64>, host::Error> {
        self.record("prune".to_owned());
        Ok(Vec::new())
    }

    fn proxy(&self, spec: &TaskSpec, _timeout: Duration) -> Observation {
        self.record(format!("look at the proxy of {}", spec.id));
        match self.live.lock().unwrap().contains(&spec.id) {
            true => Observation::State(ServerState::Live),
            false => Observation::NotReady("connection refused".into()),
        }
    }

    fn intact(&self, installed: &Installed) -> Result<bool, host::Error> {
        Ok(!self.broken.lock().unwrap().contains(&installed.id))
    }

    fn counters(&self, _installed: &Installed, _config: Option<&ProxyConfig>) -> Result<Option<Counters>, host::Error> {
        Ok(None)
    }
}

/// An engine whose view the test sets.
#[derive(Default)]
struct FakeEngine(Arc<Mutex<View>>);

impl TaskSource for FakeEngine {
    fn view(&self) -> View {
        self.0.lock().unwrap().clone()
    }

    fn take_stats(&self) -> Stats {
        Stats::default()
    }
}

/// A daemon on the fake host, with a tasks directory and a state directory of its own, and
/// an engine view when `engine` is given.
struct World {
    daemon: Daemon,
    host: Arc<FakeHost>,
    dirs: tempfile::TempDir,
}

impl World {
    fn new(records: BTreeMap<String, Installed>, engine: Option<Arc<Mutex<View>>>) -> World {
        let dirs = tempfile::tempdir().unwrap();
        std::fs::create_dir(dirs.path().join("tasks")).unwrap();
        let options = Options {
            tasks_dir: Some(dirs.path().join("tasks")),
            docker_socket: None,
            default_backend: Kind::Iptables,
            state_dir: dirs.path().join("state"),
            bpffs: dirs.path().join("bpffs"),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            resync_interval: Duration::from_secs(60),
            remove_on_exit: false,
            install_when: InstallWhen::Immediately,
            proxy_timeout: Duration::from_secs(60),
        };
        let host = Arc::new(FakeHost::default());
        let (metrics, _registry) = Metrics::new(Arc::clone(&host) as Arc<dyn HostOps>);
        let engine = engine.map(|view| Box::new(FakeEngine(view)) as Box<dyn TaskSource>);
        World {
            daemon: Daemon::new(options, Arc::clone(&host) as Arc<dyn HostOps>, metrics, engine, records),
            host,
            dirs,
        }
    }

    fn write(&self, id: &str, backend: &str, extra: &str) {
        self.write_with(id, backend, extra, PROXY);
    }

    fn write_with(&self, id: &str, backend: &str, extra: &str, proxy: &str) {
        let file = format!(
            r#"{{"id": "{id}", "cgroup": "/ecs/{id}", "netns": "/run/netns/{id}", "backend": "{backend}", {extra}"proxyConfiguration": {proxy}}}"#
        );
        std::fs::write(self.dirs.path().join("tasks").join(format!("{id}.json")), file).unwrap();
    }

    fn delete(&self, id: &str) {
        std::fs::remove_file(self.dirs.path().join("tasks").join(format!("{id}.json"))).unwrap();
    }

    /// One pass, and what it did on the host.
    fn pass(&mut self, check_host: bool) -> String {
        self.daemon.pass(check_host);
        self.host.take()
    }

    fn recorded(&self) -> Vec<String> {
        super::state::load(&self.dirs.path().join("state")).unwrap().into_keys().collect()
    }
}

/// Task files: a new one is applied and recorded, an unchanged one is left alone, a changed
/// one is applied again in place (or, with another backend, replaces the old installation), a
/// deleted one is removed and forgotten, a broken one found
/// by the periodic check is repaired, a failing apply records nothing.
#[test]
fn task_files_are_applied_changed_repaired_and_removed() {
    let mut world = World::new(BTreeMap::new(), None);
    world.write("a", "iptables", "");
    world.write("b", "ebpf", "");
    assert_eq!(world.pass(false), "apply a iptables\napply b ebpf\nprune");
    assert_eq!(world.recorded(), ["a", "b"]);
    assert_eq!(world.pass(true), "", "nothing changed");
    world.write("a", "iptables", r#""proxyAdminUrl": "http://127.0.0.1:9902/server_info", "#);
    assert_eq!(world.pass(false), "", "what is installed did not change");
    world.write_with("a", "iptables", "", &PROXY.replace("15001", "15002"));
    assert_eq!(world.pass(false), "apply a iptables", "a changed configuration is applied in place");
    world.write("a", "nftables", "");
    assert_eq!(world.pass(false), "apply a nftables\nremove a iptables in /run/netns/a", "another backend replaces it");
    world.host.broken.lock().unwrap().insert("b".into());
    assert_eq!(world.pass(false), "", "only the periodic pass checks the host");
    assert_eq!(world.pass(true), "apply b ebpf\nprune");
    world.host.broken.lock().unwrap().clear();
    world.delete("a");
    assert_eq!(world.pass(false), "remove a nftables in /run/netns/a");
    assert_eq!(world.recorded(), ["b"]);
    world.host.failing.lock().unwrap().insert("c".into());
    world.write("c", "nftables", "");
    assert_eq!(world.pass(false), "apply c nftables");
    assert_eq!(world.recorded(), ["b"], "a failed apply records nothing");
    assert_eq!(world.pass(false), "apply c nftables", "and is tried again on the next pass");
}

/// A restarted daemon adopts what its previous run recorded: an installation still whole is
/// left alone, one whose task file went is removed, one whose cgroup went is cleaned up.
#[test]
fn a_restarted_daemon_adopts_its_records() {
    let mut previous = World::new(BTreeMap::new(), None);
    for (id, backend) in [("kept", "ebpf"), ("ended", "iptables"), ("gone", "ebpf")] {
        previous.write(id, backend, "");
    }
    previous.pass(false);
    let records = super::state::load(&previous.dirs.path().join("state")).unwrap();
    let mut world = World::new(records, None);
    world.write("kept", "ebpf", "");
    world.write("gone", "ebpf", "");
    world.host.gone_cgroups.lock().unwrap().insert("/ecs/gone".into());
    assert_eq!(
        world.pass(true),
        "remove ended iptables in /run/netns/ended\nremove gone ebpf in /run/netns/gone\nprune"
    );
    assert_eq!(world.recorded(), ["kept"]);
}

/// `--remove-on-exit` removes every task, then prunes once for all of them: a prune walks
/// every installation on the host, and one per task made removing many tasks quadratic. A
/// pass with only rule backends' actions does not prune at all.
#[test]
fn remove_on_exit_removes_every_task_then_prunes_once() {
    let mut world = World::new(BTreeMap::new(), None);
    world.write("a", "iptables", "");
    assert_eq!(world.pass(false), "apply a iptables", "no eBPF action, no prune");
    for id in ["b", "c"] {
        world.write(id, "ebpf", "");
    }
    assert_eq!(world.pass(false), "apply b ebpf\napply c ebpf\nprune", "once for the pass");
    let World { daemon, host, dirs: _dirs } = world;
    daemon.remove_all().unwrap();
    assert_eq!(
        host.take(),
        "remove a iptables in /run/netns/a\nremove b ebpf in /run/netns/b\nremove c ebpf in /run/netns/c\nprune"
    );
}

/// An awsvpc task of the engine, as the Docker source lists it.
fn engine_task(id: &str, backend: &str, pid: u32) -> DockerTask {
    let arn = format!("arn:aws:ecs:us-west-2:123456789012:task/c/{id}");
    let container = |name: &str, pid: u32, labels: &[(&str, &str)]| {
        let mut all: HashMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        all.insert(docker::TASK_ARN.into(), arn.clone());
        Container {
            id: format!("{name}-{id}"),
            name: name.to_owned(),
            pid,
            labels: all,
            env: Vec::new(),
            network_mode: if name == docker::PAUSE {
                "none".into()
            } else {
                format!("container:{}-{id}", docker::PAUSE)
            },
            cgroup: Some(format!("/ecs/{id}/{name}-{id}")),
            cgroup_parent: format!("/ecs/{id}"),
        }
    };
    DockerTask {
        arn: arn.clone(),
        id: id.to_owned(),
        family: "family".into(),
        revision: "1".into(),
        containers: vec![
            container(docker::PAUSE, pid, &[]),
            container("envoy", pid + 1, &[(docker::PROXY_CONFIGURATION, PROXY), (docker::BACKEND, backend)]),
        ],
    }
}

fn view(connected: bool, tasks: &[DockerTask]) -> View {
    View { connected, tasks: tasks.iter().map(|t| (t.id.clone(), t.clone())).collect() }
}

/// The engine's tasks: installed when they appear, left as they are while the engine cannot
/// be reached (an engine restart removes nothing), removed once it answers without them. A
/// task whose namespace path names another namespace now (its pid was reused) is removed
/// there as gone, never in the namespace the path names now.
#[test]
fn engine_tasks_survive_the_engine_going_away_and_a_reused_pid_is_not_touched() {
    let engine = Arc::new(Mutex::new(View::default()));
    let mut world = World::new(BTreeMap::new(), Some(Arc::clone(&engine)));
    let (a, b) = (engine_task("a", "iptables", 100), engine_task("b", "ebpf", 200));
    world
        .host
        .inodes
        .lock()
        .unwrap()
        .extend([(PathBuf::from("/proc/100/ns/net"), 11), (PathBuf::from("/proc/200/ns/net"), 22)]);
    *engine.lock().unwrap() = view(true, &[a.clone(), b.clone()]);
    assert_eq!(world.pass(false), "apply a iptables\napply b ebpf\nprune");
    *engine.lock().unwrap() = view(false, &[]);
    assert_eq!(world.pass(true), "", "the engine is away: nothing is removed");
    assert_eq!(world.recorded(), ["a", "b"]);
    // Task b ended and its pid is another process's now, in another namespace.
    world.host.inodes.lock().unwrap().insert(PathBuf::from("/proc/200/ns/net"), 99);
    *engine.lock().unwrap() = view(true, &[a]);
    assert_eq!(world.pass(false), "remove b ebpf in gone\nprune");
    // Task a ended and its namespace went with it: the path names none.
    world.host.inodes.lock().unwrap().clear();
    *engine.lock().unwrap() = view(true, &[]);
    assert_eq!(world.pass(false), "remove a iptables in gone");
    assert!(world.recorded().is_empty());
}

/// A task file and an engine task with the same id: neither is installed while both are there.
#[test]
fn a_task_known_from_a_file_and_from_the_engine_is_left_alone() {
    let engine = Arc::new(Mutex::new(view(true, &[engine_task("a", "iptables", 100)])));
    let mut world = World::new(BTreeMap::new(), Some(engine));
    world.write("a", "nftables", "");
    assert_eq!(world.pass(false), "");
    world.delete("a");
    assert_eq!(world.pass(false), "apply a iptables", "once the file goes, the engine's task is installed");
}

/// A task installed once its proxy is LIVE: looked at every pass until then, installed once,
/// and never waited for again.
#[test]
fn a_proxy_live_task_waits_for_its_proxy_once() {
    let mut world = World::new(BTreeMap::new(), None);
    world.write("a", "ebpf", r#""installWhen": "proxy-live", "#);
    assert_eq!(world.pass(false), "look at the proxy of a");
    assert_eq!(world.pass(false), "look at the proxy of a");
    world.host.live.lock().unwrap().insert("a".into());
    assert_eq!(world.pass(false), "look at the proxy of a\napply a ebpf\nprune");
    assert_eq!(world.pass(true), "", "installed: the proxy is not looked at again");
}

/// The namespace a removal works in, by what the record's path names now.
#[test]
fn removals_never_touch_a_namespace_a_reused_path_names() {
    let spec = |netns: Option<&str>| TaskSpec {
        netns: netns.map(PathBuf::from),
        ..super::spec::parse(
            Path::new("t.json"),
            &format!(r#"{{"id": "t", "cgroup": "/ecs/t", "backend": "ebpf", "proxyConfiguration": {PROXY}}}"#),
        )
        .unwrap()
    };
    let path = "/proc/42/ns/net";
    // The record's path and inode, the inode the path names now, and where the removal works.
    type Case<'a> = (Option<&'a str>, Option<u64>, Option<u64>, netns::Target);
    let cases: [Case; 5] = [
        (Some(path), Some(5), Some(5), netns::Target::Path(path.into())),
        (Some(path), Some(5), Some(6), netns::Target::Gone(path.into())),
        (Some(path), Some(5), None, netns::Target::Gone(path.into())),
        // A record from before inodes were recorded: the path as it is.
        (Some(path), None, Some(6), netns::Target::Path(path.into())),
        (None, None, None, netns::Target::Current),
    ];
    for (netns, recorded, now, expected) in cases {
        let installed = Installed::of(&spec(netns), recorded, None);
        assert_eq!(host::netns_for_removal(&installed, now), expected, "{netns:?} {recorded:?} now {now:?}");
    }
}
