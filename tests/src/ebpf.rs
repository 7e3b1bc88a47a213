//! Fixtures of the eBPF backend tests: a throwaway bpffs, a throwaway network namespace whose
//! addresses all live on its own `lo` (so nothing a test dials can leave the machine), child
//! processes placed in a cgroup, a namespace and an identity before they run, and eBPF mode on
//! the shared two-namespace topology ([`EbpfSandbox`]).

use std::{
    ffi::CString,
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{self, Child, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use intercept::{
    backend::ebpf::{ApplyOptions, Target, task},
    config::{Ingress, PortRange, PortSet, ProxyConfig},
    netns as agent_netns,
};

use crate::{
    Privileged, TestCgroup, command_in_cgroup,
    traffic::{Client, Reply, Sandbox, SandboxSpec},
};

pub const PROXY_UID: u32 = 1337;
pub const PROXY_PORT: u16 = 15001;
/// The task's own addresses in the eBPF tests (local destinations).
pub const TASK_ADDRS: [&str; 2] = ["10.0.0.2", "fd00::2"];

/// The app's AppPort in the eBPF tests (the seed's), and another port it listens on.
pub const APP_PORT: u16 = 9080;
pub const OTHER_APP_PORT: u16 = 8080;
pub const INGRESS_PROXY_PORT: u16 = 15000;
/// Remote destinations of the shared topology's eBPF tests: plain ones, and ones in the
/// seed configuration's ignored CIDRs (10.9.0.0/16, 2001:db8:9::/48).
pub const PLAIN_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const PLAIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub const IGNORED_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 3, 4);
pub const IGNORED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);
/// Ports the remote servers listen on.
pub const REMOTE_PORTS: [u16; 3] = [80, 22, 5432];

/// The configuration the eBPF tests start from: the seed's, plus an IgnoredGID, a port and a
/// CIDR per family.
pub fn seed_config() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![PROXY_UID],
        ignored_gids: vec![1338],
        ingress: Some(Ingress { proxy_port: 15000, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        egress_ignored_ports: PortSet::from_ranges([PortRange::single(5432)]),
        egress_ignored_ips: vec!["10.9.0.0/16".parse().unwrap(), "2001:db8:9::/48".parse().unwrap()],
        ..ProxyConfig::new(PROXY_PORT)
    }
}

/// A cgroup created inside another test cgroup; removed (its processes moved to the parent)
/// on drop. Declare it after its parent so that it drops first.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
}

impl ChildCgroup {
    pub fn create(parent: &TestCgroup) -> ChildCgroup {
        let path = parent.path().join("child");
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        ChildCgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command whose process joins this cgroup between fork and exec.
    pub fn command(&self, program: &str) -> Command {
        command_in_cgroup(&self.path, program)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        // As for a TestCgroup: the lock file an `apply` on it left goes with it.
        if let Ok(id) = intercept::cgroup::id(&self.path) {
            let key = intercept::lock::Key::cgroup(id, self.path.display().to_string());
            if let Err(e) = intercept::lock::Locks::system().forget(&key) {
                let _ = writeln!(io::stderr(), "{e}");
            }
        }
        let parent_procs = self.path.parent().expect("parent").join("cgroup.procs");
        let pids = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines() {
            let _ = fs::write(&parent_procs, pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = fs::remove_dir(&self.path) {
            if Instant::now() > deadline {
                let _ = writeln!(io::stderr(), "remove {}: {e}", self.path.display());
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A directory for `--bpffs`. On drop, whatever bpffs is mounted there (the test's or the one
/// the agent mounted) is unmounted, which drops every pin in it, and the directory is removed.
#[derive(Debug)]
pub struct TestBpffs {
    path: PathBuf,
}

impl TestBpffs {
    /// An empty directory, not mounted: the agent mounts a bpffs there itself.
    pub fn unmounted() -> TestBpffs {
        let path = std::env::temp_dir().join(unique("intercept-bpffs"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestBpffs { path }
    }

    /// A directory with a fresh bpffs mounted on it.
    pub fn mounted() -> TestBpffs {
        let bpffs = TestBpffs::unmounted();
        let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs.path).status().expect("run mount");
        assert!(status.success(), "mount -t bpf bpf {}: {status}", bpffs.path.display());
        bpffs
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_mounted(&self) -> bool {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let path = self.path.to_string_lossy();
        mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(&*path) && l.contains(" - bpf "))
    }

    /// Every pin and directory under the bpffs, relative paths, sorted. The kernel's own
    /// `maps.debug` and `progs.debug` (bpf_preload) are left out: pins cannot contain a dot.
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = fs::read_dir(dir) else { return };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains('.') {
                    continue;
                }
                let path = entry.path();
                out.push(path.strip_prefix(base).unwrap_or(&path).to_owned());
                if path.is_dir() {
                    walk(&path, base, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path, &self.path, &mut out);
        out.sort();
        out
    }
}

impl Drop for TestBpffs {
    fn drop(&mut self) {
        while self.is_mounted() {
            let c_path = CString::new(self.path.to_string_lossy().as_bytes()).expect("no NUL");
            // SAFETY: c_path is a valid NUL-terminated path.
            if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
                let _ = writeln!(io::stderr(), "umount {}: {}", self.path.display(), io::Error::last_os_error());
                break;
            }
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// A named network namespace (`ip netns add`), deleted on drop. Its `lo` is up and carries
/// every address the test gives it, so all test destinations live inside it.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    pub fn create(addresses: &[&str]) -> TestNetns {
        let netns = TestNetns { name: unique("intercept-ebpf") };
        run(Command::new("ip").args(["netns", "add", &netns.name]));
        netns.ip(&["link", "set", "lo", "up"]);
        for addr in addresses {
            // An IPv6 address is tentative until duplicate address detection has run (from a
            // work queue, even on loopback, where it finds nothing): binding it before then fails
            // with EADDRNOTAVAIL, which a busy machine showed. `nodad` makes it usable at once.
            if addr.contains(':') {
                netns.ip(&["addr", "add", addr, "dev", "lo", "nodad"]);
            } else {
                netns.ip(&["addr", "add", addr, "dev", "lo"]);
            }
        }
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Makes `command` run inside this namespace, as `uid`/`gid` with no supplementary groups
    /// (after any cgroup placement already set on it).
    pub fn enter(&self, command: &mut Command, uid: u32, gid: u32) {
        let path = CString::new(self.path().to_string_lossy().as_bytes()).expect("no NUL");
        // SAFETY: the closure only makes async-signal-safe system calls on memory allocated
        // before the fork.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let joined = libc::setns(fd, libc::CLONE_NEWNET);
                libc::close(fd);
                if joined != 0
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The open namespace file, e.g. to read its addresses from a thread that joins it.
    pub fn open(&self) -> fs::File {
        fs::File::open(self.path()).expect("open netns")
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.open();
        thread::spawn(move || {
            // SAFETY: setns on this new thread only changes this thread's network namespace.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let status = Command::new("ip").args(["netns", "del", &self.name]).status();
        if !matches!(status, Ok(s) if s.success()) {
            let _ = writeln!(io::stderr(), "ip netns del {}: {status:?}", self.name);
        }
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// A long-running child (a listener) that is killed, by pid, on drop. Its stdout lines are
/// collected in the background.
pub struct Listener {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    /// Spawns `command` (an `intercept-ebpf-probe listen ...`) and waits for its `READY`.
    pub fn spawn(mut command: Command) -> Listener {
        command.stdout(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        if first.trim() != "READY" {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not start listening (said {first:?})");
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Listener { child, lines }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `pred` (or `timeout` passes) and returns it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                return Some(line);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until at least `n` lines have arrived.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let len = self.lines.lock().unwrap().len();
            if len >= n || Instant::now() > deadline {
                return len;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for `program` placed in `cgroup` when given (else where the runner is).
pub fn command_in(cgroup: Option<&TestCgroup>, program: &str) -> Command {
    match cgroup {
        Some(cgroup) => cgroup.command(program),
        None => Command::new(program),
    }
}

/// eBPF mode on the shared topology (`crate::topology`): the sandbox's namespaces and
/// listeners (remote servers, the app), a test cgroup, a test bpffs, and the proxy's egress
/// and ingress listeners as processes in the cgroup (`intercept-ebpf-probe serve`, as
/// IgnoredUID): the programs see a proxy's sockets only in the cgroup. The ingress proxy
/// listens on loopback only (127.0.0.1 and [::1]): the `sk_lookup` program hands it inbound
/// connections whatever address it is bound to.
pub struct EbpfSandbox {
    // Drop order: the proxy processes, then the pins, the cgroup, the namespaces.
    _proxy: Listener,
    ingress_proxy: Mutex<Option<Listener>>,
    pub bpffs: TestBpffs,
    pub cgroup: TestCgroup,
    pub sandbox: Sandbox,
    client: PathBuf,
    probe: PathBuf,
}

impl EbpfSandbox {
    /// `probe` and `client`: the `intercept-ebpf-probe` and `intercept-test-client` binaries.
    pub fn new(host: &Privileged, probe: &str, client: &str) -> EbpfSandbox {
        let sandbox = Sandbox::new(&SandboxSpec {
            egress_proxy_ports: vec![],
            ingress_proxy_ports: vec![],
            app_ports: vec![APP_PORT, OTHER_APP_PORT],
            remote_ports: REMOTE_PORTS.to_vec(),
            remote_addresses: vec![
                IpAddr::V4(PLAIN_V4),
                IpAddr::V4(IGNORED_V4),
                IpAddr::V6(PLAIN_V6),
                IpAddr::V6(IGNORED_V6),
            ],
            ..SandboxSpec::default()
        });
        let cgroup = host.create_cgroup().expect("create a test cgroup");
        let bpffs = TestBpffs::mounted();
        let mut proxy = cgroup.command(probe);
        proxy.args(["serve", "egress-proxy", &format!("127.0.0.1:{PROXY_PORT}"), &format!("[::1]:{PROXY_PORT}")]);
        sandbox.task().enter(&mut proxy);
        as_identity(&mut proxy, PROXY_UID, PROXY_UID);
        let proxy = Listener::spawn(proxy);
        let world = EbpfSandbox {
            _proxy: proxy,
            ingress_proxy: Mutex::new(None),
            bpffs,
            cgroup,
            sandbox,
            client: PathBuf::from(client),
            probe: PathBuf::from(probe),
        };
        world.start_ingress_proxy();
        world
    }

    /// Starts the ingress proxy (in the cgroup and the task namespace, as IgnoredUID) unless
    /// it runs already.
    pub fn start_ingress_proxy(&self) {
        let mut slot = self.ingress_proxy.lock().unwrap();
        if slot.is_none() {
            let mut proxy = self.cgroup.command(self.probe.to_str().expect("UTF-8 probe path"));
            proxy.args([
                "serve",
                "ingress-proxy",
                &format!("127.0.0.1:{INGRESS_PROXY_PORT}"),
                &format!("[::1]:{INGRESS_PROXY_PORT}"),
            ]);
            self.sandbox.task().enter(&mut proxy);
            as_identity(&mut proxy, PROXY_UID, PROXY_UID);
            *slot = Some(Listener::spawn(proxy));
        }
    }

    /// Stops the ingress proxy (a restarting proxy): its listeners close.
    pub fn stop_ingress_proxy(&self) {
        drop(self.ingress_proxy.lock().unwrap().take());
    }

    /// `--cgroup`, `--bpffs` and `--netns` (the task namespace) for eBPF mode.
    pub fn request(&self) -> task::Request {
        task::Request {
            cgroup: self.cgroup.path().to_str().expect("UTF-8 cgroup path").to_owned(),
            bpffs: Some(self.bpffs.path().to_owned()),
            netns: agent_netns::Target::Path(self.sandbox.task().path()),
            iptables_mode: None,
            prune: true,
        }
    }

    pub fn target(&self) -> Target {
        Target::new(self.cgroup.path().to_str().expect("UTF-8 cgroup path"), Some(self.bpffs.path()))
            .expect("resolve the target")
    }

    /// eBPF mode applied through the library, as the CLI does.
    pub fn apply(&self, config: &ProxyConfig) -> task::ApplyReport {
        task::apply(&self.request(), config, ApplyOptions::default())
            .unwrap_or_else(|e| panic!("apply: {}", error_chain(&e)))
    }

    /// An egress connection from the cgroup in the task namespace, as `uid`/`gid`.
    pub fn egress(&self, uid: u32, gid: u32, dst: SocketAddr) -> Result<Reply, String> {
        Client::new(&self.client).netns(self.sandbox.task()).cgroup(&self.cgroup).identity(uid, gid).connect(dst)
    }

    /// An inbound connection from the remote namespace.
    pub fn ingress(&self, dst: SocketAddr) -> Result<Reply, String> {
        Client::new(&self.client).netns(self.sandbox.remote()).connect(dst)
    }
}

/// Makes `command` run as `uid`/`gid` with no supplementary groups (after its other pre-exec
/// steps).
pub fn as_identity(command: &mut Command, uid: u32, gid: u32) {
    // SAFETY: only async-signal-safe system calls, no allocation.
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub use intercept::error_chain;

/// Every pin of every installation under `bpffs`, and those the installations share (the
/// quiet log ring, in `<bpffs>/intercept` itself).
pub fn pins(bpffs: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context as _;
    let root = bpffs.join("intercept");
    let mut pins = Vec::new();
    for entry in fs::read_dir(&root).with_context(|| format!("list {}", root.display()))? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            pins.push(entry.path());
            continue;
        }
        for pin in fs::read_dir(entry.path())? {
            let pin = pin?;
            // An installation's link to the host's programs is no pin.
            if !pin.file_type()?.is_symlink() {
                pins.push(pin.path());
            }
        }
    }
    Ok(pins)
}

/// Whether a pin is a link's (`link-<program>`) rather than a map's.
pub fn is_link(pin: &Path) -> bool {
    pin.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("link-"))
}

/// Whether a pin is one of the host's programs (`prog-<program>`, beside the host's maps).
pub fn is_program(pin: &Path) -> bool {
    pin.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("prog-"))
}

/// The ids of the programs that the link pins among `pins` link to their hooks.
pub fn linked_programs(pins: &[PathBuf]) -> anyhow::Result<std::collections::BTreeSet<u32>> {
    use anyhow::Context as _;
    use aya::programs::links::{FdLink, PinnedLink};
    let mut ids = std::collections::BTreeSet::new();
    for path in pins.iter().filter(|p| is_link(p)) {
        let link = FdLink::from(PinnedLink::from_pin(path).with_context(|| format!("{}", path.display()))?);
        ids.insert(link.info().with_context(|| format!("{}", path.display()))?.program_id());
    }
    Ok(ids)
}
