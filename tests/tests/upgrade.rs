//! In-place upgrades of the eBPF backend from the previous release (map layout 2, built from
//! git by `intercept_tests::previous`), under load:
//!
//! - a CLI installation: the previous release applies, the app connects continuously, this
//!   build's `apply` attaches its installation beside the old one and detaches the old
//!   programs that redirect (those that read what connections left behind retire later), then
//!   reconfigures; no connection fails or escapes. The previous release then refuses this
//!   build's installation and changes nothing, and this build refuses a newer layout, naming
//!   both builds, and changes nothing.
//! - connections in flight at the switch: established and waiting in the proxy's accept
//!   queue (their original destination on the proxy's socket, in the old installation's
//!   maps), or mid-handshake (on the app's socket); each reaches the proxy with its original
//!   destination afterwards, through the retiring installation's programs.
//! - an upgrade SIGKILLed at a random point: interception holds, and the next apply leaves this
//!   build's installation whole with nothing left behind.
//! - a daemon with 20 tasks: the previous release's daemon installs them, stops (SIGTERM
//!   leaves interception in place), and this build's daemon replaces every task's programs on
//!   its first pass while the app of one task connects continuously.
//!
//! Needs root, the `intercept` binary (`cargo xtask test` builds it), git history with the
//! previous release, and a few minutes once to build it.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData};
use intercept::backend::ebpf::{self, Target};
use intercept_common::{LAYOUT, VERSION_MAP, Version};
use intercept_tests::{
    daemon::{Daemon, DaemonDirs, seed_proxy_configuration, task_json},
    ebpf::{EbpfSandbox, Listener, PLAIN_V4, PLAIN_V6, PROXY_PORT, PROXY_UID, as_identity},
    previous::previous_release_bin,
    require_privileges,
    topology::{Netns, intercept_bin, require_netns_privileges},
    traffic::{Client, Reply, Role},
};
use nix::sys::signal::Signal;

const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");
const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const APP_UID: u32 = 1000;
const WAIT: Duration = Duration::from_secs(60);
const TASKS: usize = 20;
/// ProxyEgressPort of the in-flight test's gated proxy.
const GATED_PORT: u16 = 15009;
/// How long the in-flight test's connections may wait for the gate, each of connect and reply.
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the app's connections did: intercepted as the configuration says, failed, or reached
/// somewhere else (escaped).
#[derive(Debug, Default)]
struct Counts {
    intercepted: usize,
    failed: Vec<String>,
    escaped: Vec<String>,
}

impl Counts {
    fn add(&mut self, dst: SocketAddr, reply: Result<Reply, String>) {
        match reply {
            Ok(r) if r.role == Role::EgressProxy && r.original == Some(dst) && r.local.port() == PROXY_PORT => {
                self.intercepted += 1;
            }
            Ok(r) => self.escaped.push(format!("{dst}: {r}")),
            Err(e) => self.failed.push(format!("{dst}: {e}")),
        }
    }
}

/// The app connecting to the remote namespace in a loop (two threads, both families) until
/// dropped; every connection must reach the proxy with its original destination.
struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(world: &Arc<EbpfSandbox>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let threads = [IpAddr::V4(PLAIN_V4), IpAddr::V6(PLAIN_V6)]
            .into_iter()
            .map(|ip| {
                let (world, stop, counts) = (Arc::clone(world), Arc::clone(&stop), Arc::clone(&counts));
                thread::spawn(move || {
                    let dst = SocketAddr::new(ip, 80);
                    while !stop.load(Ordering::Relaxed) {
                        let reply = world.egress(APP_UID, APP_UID, dst);
                        counts.lock().unwrap().add(dst, reply);
                    }
                })
            })
            .collect();
        Load { stop, counts, threads }
    }

    /// Waits until `n` more connections were intercepted.
    fn wait_for(&self, n: usize) {
        let start = self.counts.lock().unwrap().intercepted;
        let deadline = Instant::now() + WAIT;
        while self.counts.lock().unwrap().intercepted < start + n {
            assert!(Instant::now() < deadline, "the load stalled: {:?}", self.counts.lock().unwrap());
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the load, reports what it saw under `label`, and fails the test if any
    /// connection failed or escaped.
    fn finish(mut self, label: &str) {
        self.stop();
        let counts = std::mem::take(&mut *self.counts.lock().unwrap());
        println!(
            "{label}: {} connections intercepted, {} failed, {} escaped",
            counts.intercepted,
            counts.failed.len(),
            counts.escaped.len()
        );
        assert!(counts.failed.is_empty(), "connections failed across the upgrade: {:#?}", counts.failed);
        assert!(counts.escaped.is_empty(), "connections escaped across the upgrade: {:#?}", counts.escaped);
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A test that fails with the load running still stops it, so that the sandbox it holds goes.
impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(bin: &Path, args: &[String]) -> (i32, String) {
    let output = Command::new(bin).args(args).stdin(Stdio::null()).output().expect("run intercept");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Builds the previous release when it is missing: `cargo xtask kernels` runs this before it
/// boots a kernel, whose guest sees the host's files read-only.
#[test]
#[ignore = "builds the previous release (minutes, once): `cargo xtask kernels` and the upgrade tests run it"]
fn the_previous_release_is_built() {
    let bin = previous("the_previous_release_is_built");
    let output = Command::new(&bin).arg("--version").output().expect("run the previous release");
    assert!(output.status.success(), "{}: {output:?}", bin.display());
}

fn previous(test: &str) -> PathBuf {
    previous_release_bin().unwrap_or_else(|e| panic!("{test}: the previous release cannot be built: {e}"))
}

/// The installation's recorded version, read from its pinned `VERSION` map.
fn version_map(pin_dir: &Path) -> Array<MapData, Version> {
    let data = MapData::from_pin(pin_dir.join(VERSION_MAP)).expect("open the pinned VERSION map");
    Array::try_from(aya::maps::Map::Array(data)).expect("VERSION is an array")
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups) and builds the previous release: `cargo xtask test` runs it"]
fn the_cli_upgrades_the_previous_release_under_load_and_refuses_what_it_cannot_read() {
    let test = "the_cli_upgrades_the_previous_release_under_load_and_refuses_what_it_cannot_read";
    require_netns_privileges(test);
    let host = require_privileges(test);
    let (bin, old) = (intercept_bin(test), previous(test));
    let world = Arc::new(EbpfSandbox::new(&host, PROBE, CLIENT));
    let configs = tempfile::tempdir().expect("a directory for the configurations");
    let config = |name: &str, ignored_ports: &str| {
        let path = configs.path().join(name);
        fs::write(&path, seed_proxy_configuration(ignored_ports).to_string()).expect("write a configuration");
        path.display().to_string()
    };
    let (a, b) = (config("a.json", "22"), config("b.json", "22,5432"));
    let netns = world.sandbox.task().path().display().to_string();
    let cgroup = world.cgroup.path().display().to_string();
    let bpffs = world.bpffs.path().display().to_string();
    let target = ["--backend", "ebpf", "--netns", &netns, "--cgroup", &cgroup, "--bpffs", &bpffs];
    let with = |verb: &str, config: Option<&str>| -> Vec<String> {
        let mut args = vec![verb.to_owned()];
        args.extend(target.iter().map(|a| a.to_string()));
        if let Some(config) = config {
            args.extend(["--proxy-configuration".to_owned(), config.to_owned()]);
        }
        args
    };

    let (code, out) = run(&old, &with("apply", Some(&a)));
    assert_eq!(code, 0, "the previous release applies: {out}");
    let (code, out) = run(&bin, &with("status", Some(&a)));
    assert_eq!(code, 1, "this build's status of the previous release's installation: {out}");
    assert!(out.contains("installed by another build") && out.contains(&format!("map layout {}", LAYOUT - 1)), "{out}");

    let load = Load::start(&world);
    load.wait_for(20);
    let (code, out) = run(&bin, &with("apply", Some(&a)));
    assert_eq!(code, 0, "the upgrade: {out}");
    assert!(out.contains(&format!("programs replaced in place (map layout {} → {LAYOUT})", LAYOUT - 1)), "{out}");
    load.wait_for(20);
    let (code, out) = run(&bin, &with("apply", Some(&b)));
    assert_eq!(code, 0, "a reconfiguration after the upgrade: {out}");
    assert!(out.contains("updated in place"), "{out}");
    load.wait_for(20);
    load.finish(test);

    let (code, out) = run(&bin, &with("status", Some(&b)));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("made by: {} (map layout {LAYOUT})", ebpf::build().build_str())), "{out}");

    // The previous release cannot read this layout: it refuses, and nothing changes.
    let (code, out) = run(&old, &with("apply", Some(&a)));
    assert_ne!(code, 0, "the previous release on this build's installation: {out}");
    let (code, out) = run(&bin, &with("status", Some(&b)));
    assert_eq!(code, 0, "unchanged after the previous release's refusal: {out}");

    // A newer layout is refused by this build, naming both builds, and nothing changes.
    let pin_dir = Target::new(&cgroup, Some(world.bpffs.path())).expect("the target").pin_dir();
    let mut version = version_map(&pin_dir);
    let ours = version.get(&0, 0).expect("read VERSION");
    let mut newer = ours;
    newer.layout = LAYOUT + 1;
    let text = b"intercept 9.9.9 (a future build)";
    newer.build = [0; 60];
    newer.build[..text.len()].copy_from_slice(text);
    version.set(0, newer, 0).expect("write VERSION");
    let before = fs::read_dir(&pin_dir).expect("list the pins").count();
    let (code, out) = run(&bin, &with("apply", Some(&a)));
    assert_ne!(code, 0, "this build on a newer layout: {out}");
    let future = format!("intercept 9.9.9 (a future build) (map layout {})", LAYOUT + 1);
    for part in [future.as_str(), ebpf::build().build_str(), "nothing was changed"] {
        assert!(out.contains(part), "the refusal names {part:?}: {out}");
    }
    assert_eq!(fs::read_dir(&pin_dir).expect("list the pins").count(), before);
    version.set(0, ours, 0).expect("restore VERSION");
    let (code, out) = run(&bin, &with("status", Some(&b)));
    assert_eq!(code, 0, "unchanged after the refusal: {out}");
    let egress = world.egress(APP_UID, APP_UID, SocketAddr::new(IpAddr::V4(PLAIN_V4), 80)).expect("egress");
    assert_eq!(egress.role, Role::EgressProxy, "{egress}");

    let (code, out) = run(&bin, &with("remove", None));
    assert_eq!(code, 0, "{out}");
    assert!(!pin_dir.exists(), "remove leaves no pins");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups) and builds the previous release: `cargo xtask test` runs it"]
fn connections_in_flight_across_the_upgrade_keep_their_original_destination() {
    let test = "connections_in_flight_across_the_upgrade_keep_their_original_destination";
    require_netns_privileges(test);
    let host = require_privileges(test);
    let (bin, old) = (intercept_bin(test), previous(test));
    let world = EbpfSandbox::new(&host, PROBE, CLIENT);
    let scratch = tempfile::tempdir().expect("a scratch directory");
    // A proxy of its own on another port, which accepts nothing until the gate opens.
    let mut proxy = seed_proxy_configuration("22");
    for property in proxy["properties"].as_array_mut().expect("properties") {
        if property["name"] == "ProxyEgressPort" {
            property["value"] = GATED_PORT.to_string().into();
        }
    }
    let config = scratch.path().join("gated.json");
    fs::write(&config, proxy.to_string()).expect("write the configuration");
    let gate = scratch.path().join("gate");
    let mut command = world.cgroup.command(PROBE);
    command.args(["serve", "egress-proxy", &format!("127.0.0.1:{GATED_PORT}"), &format!("[::1]:{GATED_PORT}")]);
    command.env("PROBE_ACCEPT_GATE", &gate).env("PROBE_BACKLOG", "0");
    world.sandbox.task().enter(&mut command);
    as_identity(&mut command, PROXY_UID, PROXY_UID);
    let _gated = Listener::spawn(command);
    let netns = world.sandbox.task().path().display().to_string();
    let cgroup = world.cgroup.path().display().to_string();
    let bpffs = world.bpffs.path().display().to_string();
    let config = config.display().to_string();
    let apply = ["apply", "--backend", "ebpf", "--netns", &netns, "--cgroup", &cgroup, "--bpffs", &bpffs]
        .into_iter()
        .chain(["--proxy-configuration", &config])
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let (code, out) = run(&old, &apply);
    assert_eq!(code, 0, "the previous release applies: {out}");

    // Per family: the first connection is established and waits in the accept queue, the
    // others' SYNs are dropped (backlog 0) and retried after the upgrade.
    let dsts = [IpAddr::V4(PLAIN_V4), IpAddr::V6(PLAIN_V6)].map(|ip| SocketAddr::new(ip, 80));
    let target = Target::new(&cgroup, Some(world.bpffs.path())).expect("the target");
    // Scoped: whatever fails, the gate opens (so the clients finish) and every client is joined
    // before the sandbox goes.
    let in_flight = thread::scope(|scope| {
        let _gate = OpenOnDrop(&gate);
        let mut clients = Vec::new();
        for (family, dst) in dsts.into_iter().enumerate() {
            let spawn = || {
                let world = &world;
                scope.spawn(move || {
                    // Held until the gate opens: longer than the client's default timeouts under
                    // emulation, where the upgrade alone takes seconds.
                    let client = Client::new(CLIENT)
                        .netns(world.sandbox.task())
                        .cgroup(&world.cgroup)
                        .identity(APP_UID, APP_UID)
                        .timeout(IN_FLIGHT_TIMEOUT);
                    (dst, client.connect(dst))
                })
            };
            // The others start only once the first is in the listener's queue. With backlog 0
            // SYNs are answered with cookies; two handshakes that complete together overflow the
            // queue, and the dropped one is reset when a later segment of it fails the cookie
            // check (seen in CI on 5.10, and without any interception in a plain namespace).
            clients.push(spawn());
            wait_for(&world, family, "queued", |s| s.queued == 1 && s.connected == 1);
            clients.extend([spawn(), spawn()]);
            wait_for(&world, family, "mid-handshake", |s| s.queued == 1 && s.connected == 1 && s.syn_sent == 2);
        }
        let (code, out) = run(&bin, &apply);
        assert_eq!(code, 0, "the upgrade: {out}");
        assert!(out.contains(&format!("programs replaced in place (map layout {} → {LAYOUT})", LAYOUT - 1)), "{out}");
        let retiring: Vec<_> = fs::read_dir(world.bpffs.path().join("intercept"))
            .expect("list the pins")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("retiring-"))
            .collect();
        assert_eq!(retiring.len(), 1, "the old installation's readers stay for the connections in flight");
        fs::write(&gate, "").expect("open the gate");
        let in_flight = clients.len();
        for client in clients {
            let (dst, reply) = client.join().expect("a client");
            let reply = reply.unwrap_or_else(|e| panic!("{dst}, in flight across the upgrade: {e}"));
            assert_eq!(
                (reply.role, reply.original, reply.local.port()),
                (Role::EgressProxy, Some(dst), GATED_PORT),
                "{dst}, in flight across the upgrade: {reply}"
            );
        }
        in_flight
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let status = ebpf::status(&target).expect("status").expect("installed");
        if status.handoffs == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "hand-offs left: {}", status.handoffs);
        thread::sleep(Duration::from_millis(50));
    }
    println!("{test}: {in_flight} connections in flight across the upgrade");
}

/// Rounds of the killed-upgrade test.
const KILLS: usize = 12;

#[test]
#[ignore = "privileged (root, namespaces, cgroups) and builds the previous release: `cargo xtask test` runs it"]
fn an_upgrade_killed_at_any_point_is_finished_by_the_next_apply() {
    let test = "an_upgrade_killed_at_any_point_is_finished_by_the_next_apply";
    require_netns_privileges(test);
    let host = require_privileges(test);
    let (bin, old) = (intercept_bin(test), previous(test));
    let world = EbpfSandbox::new(&host, PROBE, CLIENT);
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let config = scratch.path().join("seed.json");
    fs::write(&config, seed_proxy_configuration("22").to_string()).expect("write the configuration");
    let (netns, cgroup, bpffs, config) = (
        world.sandbox.task().path().display().to_string(),
        world.cgroup.path().display().to_string(),
        world.bpffs.path().display().to_string(),
        config.display().to_string(),
    );
    let args = |verb: &str| -> Vec<String> {
        let mut args = vec![verb, "--backend", "ebpf", "--netns", &netns, "--cgroup", &cgroup, "--bpffs", &bpffs];
        if verb != "remove" {
            args.extend(["--proxy-configuration", &config]);
        }
        args.into_iter().map(str::to_owned).collect()
    };
    let pins = world.bpffs.path().join("intercept");
    let mut rng = rng(test);
    let dst = SocketAddr::new(IpAddr::V4(PLAIN_V4), 80);
    // How long a whole upgrade takes here: the kills fall anywhere in it, and a little after.
    let (code, out) = run(&old, &args("apply"));
    assert_eq!(code, 0, "the previous release applies: {out}");
    let started = Instant::now();
    let (code, out) = run(&bin, &args("apply"));
    assert_eq!(code, 0, "an upgrade: {out}");
    let whole = started.elapsed();
    let (code, out) = run(&bin, &args("remove"));
    assert_eq!(code, 0, "{out}");
    let mut killed = 0;
    for round in 0..KILLS {
        let (code, out) = run(&old, &args("apply"));
        assert_eq!(code, 0, "round {round}: the previous release applies: {out}");
        let micros = whole.as_micros() as u64;
        let delay = Duration::from_micros(rng.u64(0..micros + micros / 4));
        let mut child = Command::new(&bin)
            .args(args("apply"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the upgrade");
        thread::sleep(delay);
        if child.try_wait().expect("poll the upgrade").is_none() {
            child.kill().expect("SIGKILL the upgrade");
            killed += 1;
        }
        child.wait().expect("reap the upgrade");
        // Whatever the kill left, interception holds (old programs or new), and the next apply
        // makes it this build's, whole.
        let reply = world.egress(APP_UID, APP_UID, dst).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!((reply.role, reply.original), (Role::EgressProxy, Some(dst)), "round {round} after the kill");
        let (code, out) = run(&bin, &args("apply"));
        assert_eq!(code, 0, "round {round} ({delay:?}): the next apply: {out}");
        let (code, out) = run(&bin, &args("status"));
        assert_eq!(code, 0, "round {round} ({delay:?}): this build's, whole: {out}");
        let leftovers: Vec<_> = fs::read_dir(&pins)
            .expect("list the pins")
            .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
            // Installations are named by their cgroup's id, the host's programs are theirs to
            // share, and a replaced installation's readers retire later (with the log ring the
            // previous release's installations share beside them).
            .filter(|name| {
                name.parse::<u64>().is_err()
                    && !name.starts_with(ebpf::PROGRAMS_DIR)
                    && !name.starts_with("retiring-")
                    && name != "AYA_LOGS"
            })
            .collect();
        assert!(leftovers.is_empty(), "round {round} ({delay:?}): left behind: {leftovers:?}");
        let reply = world.egress(APP_UID, APP_UID, dst).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!((reply.role, reply.original), (Role::EgressProxy, Some(dst)), "round {round} after the apply");
        let (code, out) = run(&bin, &args("remove"));
        assert_eq!(code, 0, "round {round}: {out}");
    }
    println!("{test}: {KILLS} upgrades (a whole one takes {whole:?}), {killed} killed before they finished");
    assert!(killed > 0, "no upgrade was killed before it finished (a whole one takes {whole:?})");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups) and builds the previous release: `cargo xtask test` runs it"]
fn the_daemon_upgrades_twenty_tasks_of_the_previous_release_under_load() {
    let test = "the_daemon_upgrades_twenty_tasks_of_the_previous_release_under_load";
    require_netns_privileges(test);
    let host = require_privileges(test);
    let (bin, old) = (intercept_bin(test), previous(test));
    let world = Arc::new(EbpfSandbox::new(&host, PROBE, CLIENT));
    let others: Vec<_> =
        (1..TASKS).map(|_| (host.create_cgroup().expect("create a test cgroup"), Netns::create("upgrade"))).collect();
    let dirs = DaemonDirs::new();
    let proxy = seed_proxy_configuration("22");
    dirs.write_task("t00", &task_json("t00", "ebpf", world.cgroup.path(), &world.sandbox.task().path(), &proxy));
    for (i, (cgroup, netns)) in others.iter().enumerate() {
        let id = format!("t{:02}", i + 1);
        dirs.write_task(&id, &task_json(&id, "ebpf", cgroup.path(), &netns.path(), &proxy));
    }
    let mut daemon = Daemon::start(&old, &dirs, world.bpffs.path(), &["--resync-interval", "500ms"]);
    daemon.wait_until("the previous release's daemon applied every task", WAIT, |d| {
        d.metric(r#"intercept_tasks{state="applied"}"#) == TASKS as f64
    });

    let load = Load::start(&world);
    load.wait_for(20);
    assert!(daemon.stop(Signal::SIGTERM).success(), "the previous daemon stops, leaving interception");
    load.wait_for(20);
    let started = Instant::now();
    let mut daemon = Daemon::start(&bin, &dirs, world.bpffs.path(), &["--resync-interval", "500ms"]);
    daemon.wait_until("this build's daemon replaced every task's programs", WAIT, |d| {
        d.metric(r#"intercept_apply_total{result="ok"}"#) == TASKS as f64
    });
    let took = started.elapsed();
    load.wait_for(20);
    load.finish(&format!("{test}: {TASKS} tasks upgraded in {took:?}"));
    let cgroups = std::iter::once(world.cgroup.path()).chain(others.iter().map(|(c, _)| c.path()));
    for cgroup in cgroups {
        let target = Target::new(cgroup.to_str().expect("UTF-8"), Some(world.bpffs.path())).expect("the target");
        let status = ebpf::status(&target).expect("status").expect("installed");
        assert_eq!(status.version, ebpf::build(), "{} runs this build's programs", cgroup.display());
        assert!(status.programs.iter().all(|p| p.attached), "{}: {:?}", cgroup.display(), status.programs);
    }
    assert_eq!(daemon.metric(r#"intercept_apply_total{result="error"}"#), 0.0);
    assert!(daemon.stop(Signal::SIGTERM).success());
}

/// Creates the gate file when dropped: the gated proxy starts accepting.
struct OpenOnDrop<'a>(&'a Path);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::write(self.0, "");
    }
}

/// One family's sockets to loopback `port` in a network namespace.
#[derive(Debug, Default)]
struct Sockets {
    /// Clients connected (TCP states 01 established, 04 and 05 FIN_WAIT: the client has sent
    /// its request and shut down its side).
    connected: usize,
    /// Clients connecting (02, SYN_SENT).
    syn_sent: usize,
    /// The accept queue of the listener on `port` (a listener's `rx_queue`).
    queued: usize,
}

/// Per family (IPv4, then IPv6), from `/proc/thread-self/net/tcp` and `tcp6`.
fn sockets_to(netns: &Netns, port: u16) -> [Sockets; 2] {
    let tables = netns.run(|| {
        ["tcp", "tcp6"].map(|t| fs::read_to_string(format!("/proc/thread-self/net/{t}")).expect("read /proc net tcp"))
    });
    let port = format!(":{port:04X}");
    tables.map(|table| {
        let mut sockets = Sockets::default();
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, local, remote, state, queues, ..] = fields[..] else { continue };
            match state {
                "01" | "04" | "05" if remote.ends_with(&port) => sockets.connected += 1,
                "02" if remote.ends_with(&port) => sockets.syn_sent += 1,
                "0A" if local.ends_with(&port) => {
                    let rx = queues.split_once(':').map_or("", |(_, rx)| rx);
                    sockets.queued = usize::from_str_radix(rx, 16).expect("a listener's rx_queue");
                }
                _ => {}
            }
        }
        sockets
    })
}

/// Waits until `family`'s sockets to the gated proxy are as `ready` says.
fn wait_for(world: &EbpfSandbox, family: usize, what: &str, ready: impl Fn(&Sockets) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let sockets = sockets_to(world.sandbox.task(), GATED_PORT);
        let sockets = &sockets[family];
        if ready(sockets) {
            return;
        }
        assert!(Instant::now() < deadline, "family {family}, waiting until {what}: {sockets:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The seed for this run: `FAULTS_SEED`, else the clock. Printed, so a failure can be
/// replayed.
fn rng(test: &str) -> fastrand::Rng {
    let seed = std::env::var("FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("{test}: seed {seed} (replay with FAULTS_SEED={seed})");
    fastrand::Rng::with_seed(seed)
}
