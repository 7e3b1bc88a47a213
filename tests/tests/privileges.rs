//! Least privilege, proven: `intercept apply` spawned as root but with its capability sets
//! (bounding, permitted, effective, inheritable, ambient) reduced to exactly the documented
//! minimal set succeeds, for each backend; with one capability of the set removed it exits 1
//! naming that capability, and nothing is installed. The daemon's set (`privileges::DAEMON`)
//! is enough for every backend in a task's namespace; and `apply` drops its capabilities
//! (seen on a `--bpf-log` apply, which keeps running). `intercept daemon` itself checks its
//! set at start, naming a missing capability, and works with exactly that set.
//!
//! The child joins the task's namespace before its capabilities are reduced, as an ECS init
//! container starts in the task's namespace; `--netns` cases enter it themselves.
//!
//! Needs root, the tools and the `intercept` binary (`cargo xtask test` builds it).

use std::{
    fs, io,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use intercept_tests::{
    Privileged, TestCgroup,
    daemon::{Daemon, DaemonDirs, free_port, seed_proxy_configuration, task_json},
    ebpf::TestBpffs,
    require_privileges,
    topology::{Netns, intercept_bin, require_netns_privileges, require_nft},
};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ec2-taskB.json");

const NET_ADMIN: u32 = 12;
const NET_RAW: u32 = 13;
const DAC_READ_SEARCH: u32 = 2;
const SYS_PTRACE: u32 = 19;
const SYS_ADMIN: u32 = 21;
const PERFMON: u32 = 38;
const BPF: u32 = 39;

fn name(cap: u32) -> &'static str {
    match cap {
        NET_ADMIN => "CAP_NET_ADMIN",
        NET_RAW => "CAP_NET_RAW",
        SYS_ADMIN => "CAP_SYS_ADMIN",
        SYS_PTRACE => "CAP_SYS_PTRACE",
        DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH",
        PERFMON => "CAP_PERFMON",
        BPF => "CAP_BPF",
        other => panic!("no name for capability {other}"),
    }
}

fn last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap").expect("read cap_last_cap").trim().parse().unwrap()
}

/// Makes `command` run with exactly `caps` in every set (after the pre-exec steps already
/// added, e.g. joining a namespace, which needs CAP_SYS_ADMIN). As root, exec then gives the
/// program its bounding ∪ inheritable set: exactly `caps`.
fn with_exactly(command: &mut Command, caps: &[u32]) {
    let mask: u64 = caps.iter().fold(0, |m, c| m | (1 << c));
    let last = last_cap();
    // SAFETY: only prctl and capset system calls on values computed before fork; no allocation.
    unsafe {
        command.pre_exec(move || {
            for cap in 0..=last {
                if mask & (1 << cap) == 0 && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Clone, Copy)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
            let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
            let half = |bits: u32| Data { effective: bits, permitted: bits, inheritable: bits };
            let data = [half(mask as u32), half((mask >> 32) as u32)];
            if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `intercept <args>` in `netns` with exactly `caps`.
fn apply_with(bin: &Path, netns: &Netns, caps: &[u32], args: &[&str]) -> Outcome {
    let mut command = Command::new(bin);
    command.args(args).env("RUST_LOG", "warn");
    netns.enter(&mut command);
    with_exactly(&mut command, caps);
    let output = command.output().unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `intercept status` as full root: 0 installed, 1 not.
fn status(bin: &Path, args: &[&str]) -> i32 {
    let output = Command::new(bin).arg("status").args(args).output().expect("run intercept status");
    output.status.code().unwrap_or(-1)
}

fn remove(bin: &Path, args: &[&str]) {
    let output = Command::new(bin).arg("remove").args(args).output().expect("run intercept remove");
    assert!(output.status.success(), "remove: {}", String::from_utf8_lossy(&output.stderr));
}

/// With exactly `set`: apply succeeds; without each capability of `set`: exit 1 naming it,
/// nothing installed. `target` locates the installation for status and remove (as root).
fn prove_minimal(bin: &Path, netns: &Netns, set: &[u32], apply: &[&str], target: &[&str]) {
    for missing in set {
        let reduced: Vec<u32> = set.iter().copied().filter(|c| c != missing).collect();
        let out = apply_with(bin, netns, &reduced, apply);
        assert_eq!(out.code, 1, "without {}: {}{}", name(*missing), out.stdout, out.stderr);
        assert!(out.stderr.contains(name(*missing)), "without {}: {}", name(*missing), out.stderr);
        assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
        assert_eq!(status(bin, target), 1, "without {}: something was installed", name(*missing));
    }
    let out = apply_with(bin, netns, set, apply);
    assert_eq!(
        out.code,
        0,
        "with {:?}: {}{}",
        set.iter().map(|c| name(*c)).collect::<Vec<_>>(),
        out.stdout,
        out.stderr
    );
    assert_eq!(status(bin, target), 0, "installed with the minimal set");
    remove(bin, target);
}

fn concat<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.concat()
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn iptables_nft_needs_net_admin_sys_admin_to_enter_a_namespace_and_net_raw_for_ipsets() {
    let test = "iptables_nft_needs_net_admin_sys_admin_to_enter_a_namespace_and_net_raw_for_ipsets";
    require_netns_privileges(test);
    let bin = intercept_bin(test);
    let task = Netns::create("caps");
    let path = task.path().display().to_string();
    let target = ["--backend", "iptables", "--iptables-mode", "nft", "--netns", &path];
    let seed = ["--task-definition", SEED];
    // In the task's namespace, the variant detected (the init container of
    // deploy/ecs-task-definition-ec2.json).
    let inside = concat(&[&["apply", "--backend", "iptables"], &seed]);
    prove_minimal(&bin, &task, &[NET_ADMIN], &inside, &target);
    // Entering it (the daemon).
    let entering = concat(&[&["apply"], &target, &seed]);
    prove_minimal(&bin, &task, &[NET_ADMIN, SYS_ADMIN], &entering, &target);
    // More than 8 ignored networks go into an ipset, whose match iptables looks up through a
    // raw socket.
    let networks: Vec<String> = (0..9).map(|i| format!("10.{}.0.0/16", 2 * i)).collect();
    let networks = networks.join(",");
    let with_ipsets = concat(&[&inside, &["--egress-ignored-ips", &networks]]);
    prove_minimal(&bin, &task, &[NET_ADMIN, NET_RAW], &with_ipsets, &target);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn iptables_legacy_needs_net_raw_too() {
    let test = "iptables_legacy_needs_net_raw_too";
    require_netns_privileges(test);
    let bin = intercept_bin(test);
    let task = Netns::create("caps");
    let path = task.path().display().to_string();
    let target = ["--backend", "iptables", "--iptables-mode", "legacy", "--netns", &path];
    let apply = ["apply", "--backend", "iptables", "--iptables-mode", "legacy", "--task-definition", SEED];
    prove_minimal(&bin, &task, &[NET_ADMIN, NET_RAW], &apply, &target);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn nftables_needs_net_admin() {
    let test = "nftables_needs_net_admin";
    require_nft(test);
    let bin = intercept_bin(test);
    let task = Netns::create("caps");
    let path = task.path().display().to_string();
    let target = ["--backend", "nftables", "--netns", &path];
    let apply = ["apply", "--backend", "nftables", "--task-definition", SEED];
    prove_minimal(&bin, &task, &[NET_ADMIN], &apply, &target);
}

/// What an eBPF test installs into: a task namespace, a test cgroup and a bpffs of its own
/// (fields in drop order: the pins, then the cgroup, then the namespace).
struct EbpfWorld {
    bpffs: TestBpffs,
    cgroup: TestCgroup,
    task: Netns,
}

impl EbpfWorld {
    fn new(host: &Privileged) -> EbpfWorld {
        let task = Netns::create("caps");
        let cgroup = host.create_cgroup().expect("create a test cgroup");
        EbpfWorld { bpffs: TestBpffs::mounted(), cgroup, task }
    }

    /// `--backend ebpf --cgroup … --bpffs … --netns …`.
    fn target(&self) -> Vec<String> {
        ["--backend", "ebpf", "--cgroup"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                self.cgroup.path().display().to_string(),
                "--bpffs".into(),
                self.bpffs.path().display().to_string(),
            ])
            .chain(["--netns".into(), self.task.path().display().to_string()])
            .collect()
    }
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ebpf_needs_bpf_perfmon_and_net_admin_or_sys_admin_in_their_place() {
    let test = "ebpf_needs_bpf_perfmon_and_net_admin_or_sys_admin_in_their_place";
    let host = require_privileges(test);
    require_netns_privileges(test);
    let bin = intercept_bin(test);
    let world = EbpfWorld::new(&host);
    let target = world.target();
    let target: Vec<&str> = target.iter().map(String::as_str).collect();
    // Without --netns: the child is in the task's namespace already.
    let mut apply = vec!["apply"];
    apply.extend(&target[..6]);
    apply.extend(["--task-definition", SEED]);
    prove_minimal(&bin, &world.task, &[BPF, PERFMON, NET_ADMIN], &apply, &target);
    assert_eq!(world.bpffs.files(), Vec::<PathBuf>::new(), "remove left pins behind");

    // What ECS can grant (its capability names have no BPF or PERFMON):
    // deploy/ecs-task-definition-ec2-ebpf.json's SYS_ADMIN and NET_ADMIN.
    let out = apply_with(&bin, &world.task, &[SYS_ADMIN, NET_ADMIN], &apply);
    assert_eq!(out.code, 0, "with SYS_ADMIN and NET_ADMIN: {}{}", out.stdout, out.stderr);
    assert_eq!(status(&bin, &target), 0);
    remove(&bin, &target);
}

/// The daemon's documented set (`intercept::privileges::DAEMON`) is enough for every backend
/// in a namespace it enters.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_daemon_set_applies_every_backend_in_a_task_namespace() {
    let test = "the_daemon_set_applies_every_backend_in_a_task_namespace";
    let host = require_privileges(test);
    require_nft(test);
    let bin = intercept_bin(test);
    let daemon: Vec<u32> = intercept::privileges::DAEMON.iter().map(|r| r.capability.index().into()).collect();
    let mut expected = vec![NET_ADMIN, NET_RAW, SYS_ADMIN, SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH];
    assert_eq!(daemon, expected, "the documented daemon set changed: update docs/deploy-ecs.md and deploy/");
    expected.dedup();

    let world = EbpfWorld::new(&host);
    let path = world.task.path().display().to_string();
    let ebpf = world.target();
    let ebpf: Vec<&str> = ebpf.iter().map(String::as_str).collect();
    let targets: [Vec<&str>; 3] = [
        ebpf,
        vec!["--backend", "nftables", "--netns", &path],
        vec!["--backend", "iptables", "--iptables-mode", "legacy", "--netns", &path],
    ];
    let outside = Netns::create("daemon");
    for target in &targets {
        let apply = concat(&[&["apply"], target, &["--task-definition", SEED]]);
        let out = apply_with(&bin, &outside, &expected, &apply);
        assert_eq!(out.code, 0, "{target:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(status(&bin, target), 0, "{target:?}");
        remove(&bin, target);
    }
}

/// The daemon's set, deduplicated (`privileges::DAEMON` names CAP_SYS_ADMIN for two needs).
fn daemon_set() -> Vec<u32> {
    let mut set: Vec<u32> = intercept::privileges::DAEMON.iter().map(|r| r.capability.index().into()).collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// `intercept daemon` with one capability of its set missing exits 1 at start, naming it and
/// installing nothing; with exactly its set it installs an eBPF task and an nftables task, and
/// holds no other capability while it runs.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_daemon_runs_with_exactly_its_set_and_names_a_missing_one() {
    let test = "the_daemon_runs_with_exactly_its_set_and_names_a_missing_one";
    let host = require_privileges(test);
    require_nft(test);
    let bin = intercept_bin(test);
    let set = daemon_set();
    let world = EbpfWorld::new(&host);
    let (bpffs, cgroup, task) = (&world.bpffs, &world.cgroup, &world.task);
    let dirs = DaemonDirs::new();
    let proxy = seed_proxy_configuration("22");
    dirs.write_task("ebpf-task", &task_json("ebpf-task", "ebpf", cgroup.path(), &task.path(), &proxy));
    dirs.write_task("nft-task", &task_json("nft-task", "nftables", cgroup.path(), &task.path(), &proxy));
    let ebpf = world.target();
    let ebpf: Vec<&str> = ebpf.iter().map(String::as_str).collect();
    let path = task.path().display().to_string();
    let nft = ["--backend", "nftables", "--netns", path.as_str()];

    for missing in &set {
        let reduced: Vec<u32> = set.iter().copied().filter(|c| c != missing).collect();
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Daemon::command(&bin, &dirs, bpffs.path(), metrics, &[]);
        with_exactly(&mut command, &reduced);
        let mut child = Child(command.spawn().expect("spawn intercept daemon"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(exit) = child.0.try_wait().expect("wait for the daemon") {
                break exit;
            }
            assert!(Instant::now() < deadline, "without {}: the daemon is still running", name(*missing));
            thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        io::Read::read_to_string(&mut child.0.stderr.take().expect("piped stderr"), &mut stderr).unwrap();
        assert_eq!(exit.code(), Some(1), "without {}: {stderr}", name(*missing));
        assert!(stderr.contains(name(*missing)), "without {}: {stderr}", name(*missing));
        assert_eq!(status(&bin, &ebpf), 1, "without {}: an eBPF task was installed", name(*missing));
        assert_eq!(status(&bin, &nft), 1, "without {}: an nftables task was installed", name(*missing));
    }

    let mut daemon = Daemon::start_with(&bin, &dirs, bpffs.path(), &[], |command| with_exactly(command, &set));
    daemon.wait_until("both tasks are installed", Duration::from_secs(30), |_| {
        status(&bin, &ebpf) == 0 && status(&bin, &nft) == 0
    });
    let allowed = set.iter().fold(0u64, |m, c| m | (1 << c));
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let held = status_field(daemon.pid(), field);
        assert_eq!(held & !allowed, 0, "{field} {held:x} holds more than the daemon's set {allowed:x}");
    }
    daemon.stop(nix::sys::signal::Signal::SIGTERM);
    remove(&bin, &ebpf);
    remove(&bin, &nft);
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hex = status.lines().find_map(|l| l.strip_prefix(field)).map(str::trim).unwrap_or("ffffffffffffffff");
    u64::from_str_radix(hex, 16).unwrap()
}

/// Kills and reaps a child this test started, even on panic.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_keeps_running_without_any_capability() {
    let test = "apply_keeps_running_without_any_capability";
    let host = require_privileges(test);
    require_netns_privileges(test);
    let bin = intercept_bin(test);
    let world = EbpfWorld::new(&host);
    let target = world.target();
    let target: Vec<&str> = target.iter().map(String::as_str).collect();

    // Full root; --bpf-log keeps it running after apply, following the programs' events.
    let mut command = Command::new(&bin);
    command.args(concat(&[&["apply"], &target, &["--task-definition", SEED, "--bpf-log"]]));
    let child = Child(command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn intercept apply"));
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_field(pid, "CapEff:") != 0 {
        assert!(Instant::now() < deadline, "intercept apply --bpf-log still holds capabilities after 20 s");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_field(pid, "CapPrm:"), 0);
    assert_eq!(status_field(pid, "CapInh:"), 0);
    assert_eq!(status_field(pid, "CapAmb:"), 0);
    // The bounding set went down to what apply needed (eBPF, SYS_ADMIN to enter the namespace,
    // SYS_PTRACE and DAC_READ_SEARCH to take a running proxy's listener) while it still held
    // CAP_SETPCAP.
    let needed =
        [BPF, PERFMON, NET_ADMIN, SYS_ADMIN, SYS_PTRACE, DAC_READ_SEARCH].iter().fold(0u64, |m, c| m | (1 << c));
    assert_eq!(status_field(pid, "CapBnd:"), needed, "bounding set");
    assert_eq!(status(&bin, &target), 0, "installed");
    drop(child);
    remove(&bin, &target);
}
