//! ECS-shaped tasks in a real container engine: the engine `cargo xtask test` started (at
//! `DOCKER_HOST`) and the image it built (`INTERCEPT_IMAGE`).
//!
//! A task is laid out as the ECS agent lays out an `awsvpc` task on an EC2 container instance:
//! a pause container that holds the network namespace (`--network none`, then wired by the
//! test with a veth to a remote namespace, see [`Topology::around`]), the other containers
//! joining it (`--network container:<pause>`), every container under the cgroup
//! `/ecs/<task id>/<container id>` (`--cgroup-parent`), with the ECS labels. The test
//! binaries (the test proxy and client) are mounted read-only into the containers that run
//! them.
//!
//! The init container is read from the deploy examples ([`InitContainer::from_deploy`]), so
//! what is tested is what operators are told to deploy. Dropping a [`Task`] removes its
//! containers (by name) and the task's cgroup in every hierarchy.

use std::{
    cell::OnceCell,
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    rc::Rc,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use object::read::elf::{ElfFile64, ProgramHeader as _};
use serde_json::Value;

use crate::{
    cannot_run,
    topology::{Netns, Topology},
    traffic::Reply,
};

/// The engine and the image the container tests use. The tests that hold one run one at a
/// time: they share the hierarchies' `/ecs` directory, which the last task's stop removes.
#[derive(Debug, Clone)]
pub struct Engine {
    host: String,
    image: String,
    _serial: Rc<MutexGuard<'static, ()>>,
    /// Whether the engine uses systemd's cgroup driver (asked once).
    systemd: Rc<OnceCell<bool>>,
}

static SERIAL: Mutex<()> = Mutex::new(());

/// An engine of the test's own (for a test that stops and starts it): its data root, exec root
/// and socket under `dir`, `--live-restore` (containers outlive a restart, as on an ECS host),
/// the Debian base imported from the tarball `cargo xtask test` caches
/// (`INTERCEPT_BASE_TARBALL`). Stopped (by pid) on drop, its directory removed.
pub struct PrivateEngine {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateEngine {
    pub fn start(test: &str, dir: &Path) -> PrivateEngine {
        crate::require_privileges(test);
        let Some(tarball) = env::var_os("INTERCEPT_BASE_TARBALL").map(PathBuf::from).filter(|p| p.is_file()) else {
            cannot_run(test, "needs the base image's tarball (INTERCEPT_BASE_TARBALL): `cargo xtask test` provides it");
        };
        let dir = dir.join(format!("engine-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut engine = PrivateEngine { socket: dir.join("docker.sock"), dir, child: None };
        engine.restart();
        let imported = engine.docker().args(["import"]).arg(&tarball).arg(BASE).output().expect("docker import");
        assert!(imported.status.success(), "docker import: {}", text(&imported.stderr));
        engine
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn docker(&self) -> Command {
        let mut docker = Command::new("docker");
        docker.env("DOCKER_HOST", format!("unix://{}", self.socket.display())).stdin(Stdio::null());
        docker
    }

    /// This engine, for [`Task`]s (the intercept image is not needed: the daemon runs on the
    /// host).
    pub fn engine(&self) -> Engine {
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Engine::new(format!("unix://{}", self.socket.display()), String::new(), serial)
    }

    /// Stops the engine (SIGTERM, as a host's service manager does); its containers run on.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts it (again) and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let _ = fs::remove_file(&self.socket);
        let log = fs::File::create(self.dir.join("dockerd.log")).expect("the engine's log");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(self.dir.join("root"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--live-restore"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the engine's log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker().arg("version").output().is_ok_and(|o| o.status.success()) {
            assert!(Instant::now() < deadline, "the test's engine did not start: {}", self.dir.display());
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        // Its containers first: with --live-restore they would outlive the engine.
        if self.child.is_some() {
            let ids =
                self.docker().args(["ps", "--all", "--quiet"]).output().map(|o| text(&o.stdout)).unwrap_or_default();
            for id in ids.lines() {
                let _ = self.docker().args(["rm", "--force", id]).stdout(Stdio::null()).status();
            }
        }
        self.stop();
        // dockerd bind-mounts its data root on itself, and a restarted one does it again.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = intercept::mountinfo::parse_mountinfo(&mountinfo)
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for mount in mounts {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The engine at `DOCKER_HOST` with the image `INTERCEPT_IMAGE` (what `cargo xtask test`
/// provides); fails the test, saying why, without them.
pub fn require_engine(test: &str) -> Engine {
    crate::require_privileges(test);
    let (Some(host), Some(image)) = (env::var("DOCKER_HOST").ok(), env::var("INTERCEPT_IMAGE").ok()) else {
        cannot_run(
            test,
            "needs a container engine (DOCKER_HOST) and the intercept image (INTERCEPT_IMAGE): `cargo xtask test` \
             starts the one and builds the other",
        );
    };
    let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let engine = Engine::new(host, image, serial);
    let version = engine.docker().args(["version", "--format", "{{.Server.Version}}"]).output();
    match version {
        Ok(out) if out.status.success() => engine,
        Ok(out) => cannot_run(test, &format!("the engine at {} does not answer: {}", engine.host, text(&out.stderr))),
        Err(e) => cannot_run(test, &format!("running docker: {e}")),
    }
}

impl Engine {
    /// The engine at `host` (`unix://…`), for a program that is not a test (the bench); the
    /// intercept image is not needed.
    pub fn at(host: &str) -> Engine {
        let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Engine::new(host.to_owned(), String::new(), serial)
    }

    fn new(host: String, image: String, serial: MutexGuard<'static, ()>) -> Engine {
        Engine { host, image, _serial: Rc::new(serial), systemd: Rc::new(OnceCell::new()) }
    }

    /// Whether the engine puts containers in cgroups through systemd (Docker's default on a
    /// cgroup v2 host with systemd, such as Amazon Linux 2023), rather than writing them itself
    /// (cgroupfs).
    pub fn systemd_driver(&self) -> bool {
        *self.systemd.get_or_init(|| self.must(&["info", "--format", "{{.CgroupDriver}}"]) == "systemd")
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    pub fn docker(&self) -> Command {
        let mut docker = Command::new("docker");
        docker.env("DOCKER_HOST", &self.host).stdin(Stdio::null());
        docker
    }

    /// `docker <args>`, which must succeed; its stdout, trimmed.
    pub fn must(&self, args: &[&str]) -> String {
        let out = self.docker().args(args).output().unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
        assert!(out.status.success(), "docker {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// A mount of the init container: a task volume's host path at a container path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// The init container of a deploy example, as `docker run` options.
#[derive(Debug, Clone)]
pub struct InitContainer {
    pub command: Vec<String>,
    pub user: Option<String>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub mounts: Vec<Mount>,
    pub environment: Vec<(String, String)>,
    /// `(name, soft, hard)`, -1 for unlimited.
    pub ulimits: Vec<(String, i64, i64)>,
}

impl InitContainer {
    /// The container `intercept-init` of `deploy/<file>`.
    pub fn from_deploy(file: &str) -> InitContainer {
        InitContainer::from_deploy_container(file, "intercept-init")
    }

    /// The container `name` of `deploy/<file>`.
    pub fn from_deploy_container(file: &str, name: &str) -> InitContainer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let task: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let init = task["containerDefinitions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("{}: no {name} container", path.display()));
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
        };
        let volume = |name: &str| -> PathBuf {
            task["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == name))
                .and_then(|v| v["host"]["sourcePath"].as_str())
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("{}: no host volume {name}", path.display()))
        };
        let capabilities = &init["linuxParameters"]["capabilities"];
        InitContainer {
            command: strings(&init["command"]),
            user: init["user"].as_str().map(str::to_owned),
            cap_drop: strings(&capabilities["drop"]),
            cap_add: strings(&capabilities["add"]),
            mounts: init["mountPoints"]
                .as_array()
                .map(|mounts| {
                    mounts
                        .iter()
                        .map(|m| {
                            let volume_name = m["sourceVolume"].as_str().expect("sourceVolume").to_owned();
                            Mount {
                                host_path: volume(&volume_name),
                                volume: volume_name,
                                container_path: m["containerPath"].as_str().expect("containerPath").to_owned(),
                                read_only: m["readOnly"].as_bool().unwrap_or(false),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            ulimits: init["ulimits"]
                .as_array()
                .map(|u| {
                    u.iter()
                        .filter_map(|l| {
                            Some((l["name"].as_str()?.to_owned(), l["softLimit"].as_i64()?, l["hardLimit"].as_i64()?))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            environment: init["environment"]
                .as_array()
                .map(|env| {
                    env.iter()
                        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The `docker run` options the ECS agent turns this definition into, with the host
    /// paths of volumes replaced where a test gives its own (e.g. a bpffs of the test's).
    pub fn run_options(&self, volumes: &[(&str, &Path)]) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(user) = &self.user {
            out.extend(["--user".to_owned(), user.clone()]);
        }
        for cap in &self.cap_drop {
            out.extend(["--cap-drop".to_owned(), cap.clone()]);
        }
        for cap in &self.cap_add {
            out.extend(["--cap-add".to_owned(), cap.clone()]);
        }
        for mount in &self.mounts {
            let host = volumes.iter().find(|(name, _)| *name == mount.volume).map_or(&*mount.host_path, |(_, p)| *p);
            let ro = if mount.read_only { ":ro" } else { "" };
            out.extend(["--volume".to_owned(), format!("{}:{}{ro}", host.display(), mount.container_path)]);
        }
        for (name, value) in &self.environment {
            out.extend(["--env".to_owned(), format!("{name}={value}")]);
        }
        for (name, soft, hard) in &self.ulimits {
            out.extend(["--ulimit".to_owned(), format!("{name}={soft}:{hard}")]);
        }
        out
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);
/// The last half of every test task's id: "intercept" in letters a hexadecimal digit can spell
/// (1 for i, 7 for t, c for c, e for e), so that a task left behind is recognisably a test's.
const TASK_TAG: u64 = 0x1e7e_4ce9_7000_0000;

/// An ECS-shaped task: its containers and its cgroup, removed on drop.
pub struct Task {
    engine: Engine,
    pub id: String,
    /// Container names, in start order.
    containers: Vec<String>,
}

impl Task {
    /// A task whose id is unique on the host and shaped as ECS's (32 hexadecimal digits, which
    /// a slice name needs: a `-` in it would be a level of slices).
    pub fn new(engine: &Engine) -> Task {
        let id = format!("{:08x}{:08x}{:016x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), TASK_TAG);
        Task { engine: engine.clone(), id, containers: Vec::new() }
    }

    /// The containers' cgroup parent, as the ECS agent gives it: the task's slice on a host
    /// whose engine uses systemd's driver (`ecstasks-<task id>.slice`), else `/ecs/<task id>`.
    pub fn cgroup_parent(&self) -> String {
        if self.engine.systemd_driver() { format!("ecstasks-{}.slice", self.id) } else { format!("/ecs/{}", self.id) }
    }

    /// The task's cgroup from a hierarchy's root: `/ecs/<task id>`, or where systemd puts the
    /// task's slice.
    pub fn cgroup_path(&self) -> PathBuf {
        let parent = self.cgroup_parent();
        intercept::cgroup::slice_path(&parent).unwrap_or_else(|| PathBuf::from(parent))
    }

    /// The engine's name of one of the task's containers (`~` is not allowed in names).
    fn name(&self, container: &str) -> String {
        format!("intercept-{}-{}", self.id, container.replace('~', "_"))
    }

    /// The common `docker run` options: name, cgroup, the ECS labels.
    fn options(&self, container: &str) -> Vec<String> {
        let arn = format!("arn:aws:ecs:us-west-2:123456789012:task/intercept-tests/{}", self.id);
        [
            "--name".to_owned(),
            self.name(container),
            "--cgroup-parent".to_owned(),
            self.cgroup_parent(),
            "--label".to_owned(),
            format!("com.amazonaws.ecs.task-arn={arn}"),
            "--label".to_owned(),
            format!("com.amazonaws.ecs.container-name={container}"),
            "--label".to_owned(),
            "com.amazonaws.ecs.task-definition-family=intercept-tests".to_owned(),
            "--label".to_owned(),
            "com.amazonaws.ecs.task-definition-version=1".to_owned(),
            "--label".to_owned(),
            "com.amazonaws.ecs.cluster=intercept-tests".to_owned(),
        ]
        .into()
    }

    /// Starts the pause container alone (its namespace left unwired): what the ECS agent
    /// starts first.
    pub fn start_bare_pause(&mut self) {
        let mut args = vec!["run".to_owned(), "--detach".to_owned()];
        args.extend(self.options(PAUSE));
        args.extend(["--network", "none", "--entrypoint", "sleep"].map(str::to_owned));
        args.extend([crate::containers::BASE.to_owned(), "infinity".to_owned()]);
        self.start(&args, PAUSE);
    }

    /// Starts the pause container and wires its namespace to a remote one.
    pub fn start_pause(&mut self) -> Topology {
        let mut args = vec!["run".to_owned(), "--detach".to_owned()];
        args.extend(self.options(PAUSE));
        args.extend(["--network", "none", "--entrypoint", "sleep"].map(str::to_owned));
        args.extend([crate::containers::BASE.to_owned(), "infinity".to_owned()]);
        self.start(&args, PAUSE);
        let pid = self.pid(PAUSE);
        Topology::around(Netns::attach("task", pid))
    }

    /// The options that put a container in the task's one pid namespace (ECS `pidMode:
    /// "task"`): the pause container's.
    pub fn shared_pid(&self) -> Vec<String> {
        vec!["--pid".to_owned(), format!("container:{}", self.name(PAUSE))]
    }

    /// `docker run --detach <options> <image> <command>` in the pause container's namespace.
    pub fn start_in_task(&mut self, container: &str, options: &[String], image: &str, command: &[String]) {
        let mut args = vec!["run".to_owned(), "--detach".to_owned()];
        args.extend(self.options(container));
        args.extend(["--network".to_owned(), format!("container:{}", self.name(PAUSE))]);
        args.extend(options.iter().cloned());
        args.push(image.to_owned());
        args.extend(command.iter().cloned());
        self.start(&args, container);
    }

    fn start(&mut self, args: &[String], container: &str) {
        self.containers.push(self.name(container));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.engine.must(&args);
    }

    /// Runs the container to completion in the task's namespace (as an init container runs
    /// before the proxy): its exit code and its output.
    pub fn run_in_task(
        &mut self,
        container: &str,
        options: &[String],
        image: &str,
        command: &[String],
    ) -> (i32, String) {
        self.start_in_task(container, options, image, command);
        let name = self.name(container);
        let code = self.engine.must(&["wait", &name]).parse().expect("an exit code");
        let out = self.engine.docker().args(["logs", &name]).output().expect("docker logs");
        (code, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// The ECS agent's container as it runs on an EC2 host, to call CNI plugins from (see
    /// [`Task::cni`]): Docker's default capabilities plus NET_ADMIN and SYS_ADMIN (no
    /// SYS_PTRACE), the host's `/proc` at `/host/proc`, the host's `/usr/sbin` and libraries
    /// (and `/sbin` at `/host/sbin`) read-only, and `plugin` as `/plugins/aws-appmesh`. Unlike
    /// the agent it has no host network (`--network none`): a plugin that worked in its own
    /// namespace instead of the task's would change this container's only.
    pub fn start_ecs_agent(&mut self, plugin: &Path) {
        let mut args = vec!["run".to_owned(), "--detach".to_owned()];
        args.extend(self.options(ECS_AGENT));
        args.extend(["--network", "none", "--cap-add", "NET_ADMIN", "--cap-add", "SYS_ADMIN"].map(str::to_owned));
        args.extend(["--volume".to_owned(), "/proc:/host/proc:ro".to_owned()]);
        args.extend(["--volume".to_owned(), "/sbin:/host/sbin:ro".to_owned()]);
        // Only real directories: on a merged-/usr host `/lib` and `/lib64` are links into /usr.
        for dir in HOST_TOOLS {
            if fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                args.extend(["--volume".to_owned(), format!("{dir}:{dir}:ro")]);
            }
        }
        args.extend(["--volume".to_owned(), format!("{}:/plugins/aws-appmesh:ro", plugin.display())]);
        args.extend(["--entrypoint", "sleep", BASE, "infinity"].map(str::to_owned));
        self.start(&args, ECS_AGENT);
    }

    /// One call of the plugin of `plugin` (an image of nothing but the plugin), as the agent
    /// makes it, each in a container of its own that has what the ECS agent's container has of
    /// the host and nothing else: the host's `/proc` at `/host/proc`, its `/usr/sbin` and the
    /// libraries of the programs there ([`HOST_TOOLS`]), Docker's default capabilities with
    /// NET_ADMIN and SYS_ADMIN, no network. `stdin` on stdin, the agent's environment
    /// ([`crate::cni::agent_environment`]) with `CNI_NETNS` = `netns`.
    pub fn cni_alone(&self, plugin: &PluginImage, command: &str, netns: &str, stdin: &[u8]) -> crate::cni::Outcome {
        let pause = self.container_id(PAUSE);
        let mut run = self.engine.docker();
        run.args(["run", "--rm", "--interactive", "--network", "none", "--cap-add", "NET_ADMIN", "--cap-add"]).args([
            "SYS_ADMIN",
            "--volume",
            "/proc:/host/proc:ro",
        ]);
        // The engine follows a link given as a mount's source: on a merged-/usr host `/lib`
        // and `/lib64` are links into /usr, and the loader a program in /usr/sbin names
        // (/lib64/ld-linux-…) links on into /lib.
        for dir in HOST_TOOLS.into_iter().filter(|dir| Path::new(dir).exists()) {
            run.args(["--volume", &format!("{dir}:{dir}:ro")]);
        }
        for (name, value) in crate::cni::agent_environment(command, &pause, netns) {
            run.args(["--env", &format!("{name}={value}")]);
        }
        run.arg(&plugin.tag);
        crate::cni::run(run.stdin(Stdio::piped()), stdin)
    }

    /// The engine's id of one of the task's containers (what the agent passes as
    /// `CNI_CONTAINERID` for the pause container).
    pub fn container_id(&self, container: &str) -> String {
        self.engine.must(&["inspect", "--format", "{{.Id}}", &self.name(container)])
    }

    /// One call of `aws-appmesh` in the agent's container ([`Task::start_ecs_agent`]), as the
    /// agent makes it: `stdin` on stdin, and the agent's environment
    /// ([`crate::cni::agent_environment`]) with `CNI_NETNS` = `netns`, as seen in that container.
    pub fn cni(&self, command: &str, netns: &str, stdin: &[u8]) -> crate::cni::Outcome {
        let pause = self.container_id(PAUSE);
        let mut exec = self.engine.docker();
        exec.args(["exec", "--interactive"]);
        for (name, value) in crate::cni::agent_environment(command, &pause, netns) {
            exec.args(["--env", &format!("{name}={value}")]);
        }
        exec.args([&self.name(ECS_AGENT), "/plugins/aws-appmesh"]);
        crate::cni::run(exec.stdin(Stdio::piped()), stdin)
    }

    pub fn pid(&self, container: &str) -> u32 {
        let name = self.name(container);
        self.engine.must(&["inspect", "--format", "{{.State.Pid}}", &name]).parse().expect("a pid")
    }

    /// Waits until the container's output has `count` lines `READY` (the test listeners say
    /// so once they listen).
    pub fn wait_ready(&self, container: &str, count: usize) {
        let name = self.name(container);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.engine.docker().args(["logs", &name]).output().expect("docker logs");
            let logs = String::from_utf8_lossy(&out.stdout);
            if logs.lines().filter(|l| l.trim() == "READY").count() >= count {
                return;
            }
            assert!(Instant::now() < deadline, "{name} did not get ready: {logs}{}", text(&out.stderr));
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The test proxy as the task's `envoy` container, as `user` with `options` (labels, a pid
    /// namespace): egress on 127.0.0.1:15001, ingress on 0.0.0.0:15000, from the test
    /// binaries in `bins` (mounted at `/t`).
    pub fn start_test_proxy(&mut self, bins: &Path, user: &str, options: &[String]) {
        let mount = format!("{}:/t:ro", bins.display());
        let proxy = "/t/intercept-ebpf-probe serve egress-proxy 127.0.0.1:15001 & \
                     exec /t/intercept-ebpf-probe serve ingress-proxy 0.0.0.0:15000";
        let mut all = ["--user", user, "--volume", &mount, "--entrypoint", "sh"].map(str::to_owned).to_vec();
        all.extend(options.iter().cloned());
        self.start_in_task("envoy", &all, BASE, &["-c".to_owned(), proxy.to_owned()]);
        self.wait_ready("envoy", 2);
    }

    /// The app container, listening on AppPort 9080; the tests' client runs in it.
    pub fn start_test_app(&mut self, bins: &Path) {
        let mount = format!("{}:/t:ro", bins.display());
        let options = ["--volume", &mount, "--entrypoint", "/t/intercept-ebpf-probe"].map(str::to_owned);
        self.start_in_task("app", &options, BASE, &["serve", "app", "0.0.0.0:9080"].map(str::to_owned));
        self.wait_ready("app", 1);
    }

    /// `docker exec --user uid:gid <container> <command>`.
    pub fn exec(&self, container: &str, uid: u32, gid: u32, command: &[&str]) -> Output {
        let name = self.name(container);
        self.engine
            .docker()
            .args(["exec", "--user", &format!("{uid}:{gid}"), &name])
            .args(command)
            .output()
            .expect("docker exec")
    }

    /// A connection the app container makes as `uid`/`gid`, with the test client.
    pub fn connect(&self, uid: u32, gid: u32, addr: &str) -> Result<Reply, String> {
        let out = self.exec("app", uid, gid, &["/t/intercept-test-client", "--reply", addr]);
        if !out.status.success() {
            return Err(format!("{} ({})", text(&out.stderr), out.status));
        }
        Reply::parse(&text(&out.stdout))
    }

    /// The cgroup paths of the task in every hierarchy (cgroup v1 controllers and v2).
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        intercept::mountinfo::parse_mountinfo(&mountinfo)
            .into_iter()
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
            .map(|m| m.mount_point.join(self.cgroup_path().strip_prefix("/").expect("a path from the root")))
            .filter(|p| p.exists())
            .collect()
    }

    /// The task's cgroup in the unified hierarchy.
    pub fn unified_cgroup(&self) -> PathBuf {
        crate::cgroup2_mount().expect("a cgroup2 mount").join(self.cgroup_path().strip_prefix("/").expect("a path"))
    }

    /// Stops and removes every container (what stopping the task does), then the task's
    /// cgroup; what is left afterwards is what the test looks for.
    pub fn stop(&mut self) {
        for name in self.containers.drain(..).rev() {
            let _ = self.engine.docker().args(["rm", "--force", &name]).stdout(Stdio::null()).status();
        }
        for dir in self.cgroups() {
            // The container cgroups go with the containers; the task's own is left to whoever
            // created it (the ECS agent removes it, as the test does here), or to systemd, which
            // removes a slice once it is empty.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        assert!(Instant::now() < deadline, "remove {}: {e}", dir.display());
                        thread::sleep(Duration::from_millis(20));
                    }
                    _ => break,
                }
            }
        }
        // `/ecs` itself, when this machine had none before (it is not an ECS host).
        for dir in parents_created() {
            let _ = fs::remove_dir(dir);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `/ecs` directories of each hierarchy, to remove once empty: only an ECS host has them
/// outside these tests, and the tests never run on one (the agent's tasks would be there).
fn parents_created() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    intercept::mountinfo::parse_mountinfo(&mountinfo)
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point.join("ecs"))
        .filter(|p| p.exists())
        .collect()
}

/// The ECS agent's name for a task's pause container.
pub const PAUSE: &str = "~internal~ecs~pause";

/// The name of the agent-shaped container of [`Task::start_ecs_agent`].
const ECS_AGENT: &str = "ecs-agent";

/// What the ECS agent's container mounts of the host for the CNI plugins' tools: `/usr/sbin`
/// and where the libraries of its programs are, whichever of these the host has.
const HOST_TOOLS: [&str; 5] = ["/usr/sbin", "/usr/lib", "/usr/lib64", "/lib", "/lib64"];

/// Where the project's image has the static `intercept`.
const IMAGE_BINARY: &str = "/usr/local/bin/intercept";

/// An image of one file, the static `intercept` of the project's image at
/// `/plugins/aws-appmesh` (its entry point): no libc, no shell, no tools. Removed on drop.
pub struct PluginImage {
    engine: Engine,
    pub tag: String,
}

impl PluginImage {
    /// Takes the binary out of the project's image, checks that it is statically linked, and
    /// imports it alone.
    pub fn from_project_image(engine: &Engine) -> PluginImage {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let plugins = dir.path().join("plugins");
        fs::create_dir(&plugins).expect("create plugins/");
        let tag = format!("intercept-plugin-alone:{}", std::process::id());
        let container = engine.must(&["create", engine.image()]);
        let binary = plugins.join("aws-appmesh");
        let copied = engine
            .docker()
            .args(["cp", &format!("{container}:{IMAGE_BINARY}")])
            .arg(&binary)
            .output()
            .expect("docker cp");
        engine.must(&["rm", &container]);
        assert!(copied.status.success(), "docker cp {IMAGE_BINARY}: {}", text(&copied.stderr));
        let bytes = fs::read(&binary).expect("read the plugin");
        assert!(
            !has_interpreter(&bytes),
            "{IMAGE_BINARY} of {} names a program interpreter: it is not statically linked",
            engine.image()
        );
        let archive = dir.path().join("plugin.tar");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-cf")
            .arg(&archive)
            .arg("plugins")
            .status()
            .expect("run tar");
        assert!(tar.success(), "tar of the plugin: {tar}");
        let image = PluginImage { engine: engine.clone(), tag };
        engine.must(&[
            "import",
            "--change",
            r#"ENTRYPOINT ["/plugins/aws-appmesh"]"#,
            archive.to_str().expect("a UTF-8 path"),
            &image.tag,
        ]);
        image
    }
}

impl Drop for PluginImage {
    fn drop(&mut self) {
        let _ = self.engine.docker().args(["rmi", "--force", &self.tag]).output();
    }
}

/// Whether a 64-bit ELF executable has a PT_INTERP program header, i.e. needs a dynamic loader
/// (and a libc) from the system it runs on.
fn has_interpreter(elf: &[u8]) -> bool {
    let file = ElfFile64::<object::Endianness>::parse(elf).expect("a 64-bit ELF executable");
    file.elf_program_headers().iter().any(|header| header.p_type(file.endian()) == object::elf::PT_INTERP)
}

/// The Debian base the image is built on, for the pause, proxy and app containers.
pub const BASE: &str = "intercept-base:bookworm";
