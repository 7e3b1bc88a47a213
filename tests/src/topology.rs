//! A sandbox network for backend tests: a "task" namespace (where interception is
//! installed, the proxy and the app listen and clients connect from) and a "remote"
//! namespace (where every other destination lives), joined by a veth pair, with IPv4 and
//! IPv6 addresses.
//!
//! ```text
//!   task netns                                      remote netns
//!   lo: 127.0.0.1, ::1                              eth0: 10.0.0.1/24, fd00::1/64
//!   eth0: 10.0.0.2/24, fd00::2/64  <── veth ──>           169.254.170.2, 169.254.169.254
//!   default routes via 10.0.0.1 / fd00::1                 + whatever a test adds
//! ```
//!
//! Nothing a test dials can leave the machine: the task namespace's only link leads to the
//! remote namespace, which has no other link. Both namespaces are deleted on drop (also on
//! panic), and with them every rule, ipset and socket a test created inside. The test
//! runner never changes namespace: sockets are created on short-lived threads that joined
//! one ([`Netns::run`]), and commands join one between fork and exec ([`Netns::command`]).

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{self, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    thread,
};

use intercept::model::LocalAddrs;
use nix::sched::{CloneFlags, setns};

use crate::cannot_run;

/// The task's addresses on its veth end.
pub const TASK_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const TASK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The remote namespace's addresses on its veth end (the task's gateway).
pub const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// Stand-ins for the ECS task metadata endpoint and the EC2 instance metadata service,
/// living on the remote side.
pub const METADATA: [Ipv4Addr; 2] = [Ipv4Addr::new(169, 254, 170, 2), Ipv4Addr::new(169, 254, 169, 254)];

const RUN_NETNS: &str = "/run/netns";
/// Commands every namespace test needs, and the Debian packages providing them.
const TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("iptables-nft-restore", "iptables"),
    ("iptables-legacy-restore", "iptables"),
    ("ip6tables-nft-restore", "iptables"),
    ("ip6tables-legacy-restore", "iptables"),
    ("ipset", "ipset"),
];

/// Checks that namespace tests can run here, root and the tools; like
/// [`crate::require_privileges`], fails the test when they cannot.
pub fn require_netns_privileges(test: &str) {
    netns_privileges().unwrap_or_else(|reason| cannot_run(test, &reason));
}

/// Why network namespaces and the rule backends' tools cannot be used here, if they cannot.
pub fn netns_privileges() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces, iptables); run it as root, e.g. `sudo -E cargo xtask test`".into());
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| intercept::backend::exec::find_program(tool).is_none())
        .map(|(tool, package)| format!("{tool} (package {package})"))
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing {}; `cargo xtask setup` installs them", missing.join(", ")));
    }
    Ok(())
}

/// [`require_netns_privileges`], and nft (for the nftables backend's tests).
pub fn require_nft(test: &str) {
    nft().unwrap_or_else(|reason| cannot_run(test, &reason));
}

/// Why the nftables backend's tests cannot run here, if they cannot.
pub fn nft() -> Result<(), String> {
    netns_privileges()?;
    match intercept::backend::exec::find_program("nft") {
        Some(_) => Ok(()),
        None => Err("nft not found (package nftables); `cargo xtask setup` installs it".into()),
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`) created for one test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Kept open so that commands and threads can join the namespace by descriptor.
    file: Arc<File>,
}

impl Netns {
    /// A new, empty namespace named `intercept-<role>-<pid>-<n>`, with `lo` up.
    pub fn create(role: &str) -> Netns {
        let name = format!("intercept-{role}-{}-{}", process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Netns::named(name);
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace `ip netns` just named `name`, opened (the name deleted if it cannot be).
    fn named(name: String) -> Netns {
        let path = Path::new(RUN_NETNS).join(&name);
        match File::open(&path) {
            Ok(file) => Netns { name, file: Arc::new(file) },
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                panic!("open {}: {e}", path.display());
            }
        }
    }

    /// The network namespace of process `pid` (a container's), given a name like the others
    /// (`ip netns attach`). Dropping it deletes the name only: the namespace is its owner's.
    pub fn attach(role: &str, pid: u32) -> Netns {
        let name = format!("intercept-{role}-{}-{}", process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]));
        Netns::named(name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, e.g. for `intercept apply --netns`.
    pub fn path(&self) -> PathBuf {
        Path::new(RUN_NETNS).join(&self.name)
    }

    /// `ip -n <name> <args>`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Several `ip` commands in one process (`ip -n <name> -batch -`), which must succeed.
    pub fn ip_batch(&self, commands: &[String]) {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = commands.join("\n") + "\n";
        let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output().expect("wait for ip -batch");
        writer.join().expect("writer thread").expect("write to ip -batch");
        assert!(
            output.status.success(),
            "ip -n {} -batch: {}\n{}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Writes a sysctl of this namespace (`net.ipv6.conf.all.disable_ipv6` style).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(move || std::fs::write(&path, value)).unwrap_or_else(|e| panic!("sysctl {key}={value}: {e}"));
    }

    /// Runs `f` on a new thread that joined this namespace. Sockets `f` creates belong to
    /// the namespace for their whole life, whichever thread uses them afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = Arc::clone(&self.file);
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into the test namespace");
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A command whose process joins this namespace between fork and exec.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        self.enter(&mut command);
        command
    }

    /// Makes `command` join this namespace between fork and exec (after the pre-exec steps
    /// already added to it).
    pub fn enter(&self, command: &mut Command) {
        let file = Arc::clone(&self.file);
        // SAFETY: one system call (setns) on a descriptor the closure keeps open; no allocation.
        unsafe {
            command.pre_exec(move || setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
        }
    }

    /// Runs `program args` inside the namespace and returns its output; it must succeed.
    /// `nft list tables` in the namespace; none where the host has no nft (Amazon Linux 2023):
    /// nothing there can have made one, intercept's nftables backend runs nft.
    pub fn nft_tables(&self) -> String {
        if intercept::backend::exec::find_program("nft").is_none() {
            return String::new();
        }
        self.exec("nft", &["list", "tables"])
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let output = self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(output.status.success(), "{program} {args:?} in {}: {}", self.name, describe(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The lock file an `apply` on this namespace left (`intercept::lock`), forgotten with
        // the namespace; the key is the nsfs inode, read while the namespace still exists.
        if let Ok(nsfs) = self.file.metadata() {
            use std::os::unix::fs::MetadataExt as _;
            let key = intercept::lock::Key::netns(nsfs.dev(), nsfs.ino(), self.name.clone());
            if let Err(e) = intercept::lock::Locks::system().forget(&key) {
                let _ = writeln!(io::stderr(), "{e}");
            }
        }
        let result = Command::new("ip").args(["netns", "del", &self.name]).output();
        match result {
            Ok(output) if output.status.success() => {}
            other => {
                let message = format!("ip netns del {}: {other:?}", self.name);
                if thread::panicking() {
                    let _ = writeln!(io::stderr(), "while unwinding: {message}");
                } else {
                    panic!("{message}");
                }
            }
        }
    }
}

/// The task and remote namespaces joined by a veth pair; see the module docs.
#[derive(Debug)]
pub struct Topology {
    // Declared in drop order: nothing else refers to the namespaces by then.
    pub task: Netns,
    pub remote: Netns,
}

impl Topology {
    pub fn new() -> Topology {
        Topology::wire(Netns::create("task"), true)
    }

    /// The topology around an existing task namespace (a pause container's), IPv4 only:
    /// Docker turns IPv6 off in a container's namespace.
    pub fn around(task: Netns) -> Topology {
        Topology::wire(task, false)
    }

    fn wire(task: Netns, ipv6: bool) -> Topology {
        let remote = Netns::create("remote");
        let both: &[&Netns] = if ipv6 { &[&task, &remote] } else { &[&remote] };
        for netns in both {
            // Addresses are usable at once, instead of after duplicate address detection.
            netns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            netns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        }
        // The pair is created inside the task namespace with its peer placed straight in
        // the remote one: the host's namespace never sees either end.
        task.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", remote.name()]);
        let mut task_setup = vec![
            format!("addr add {TASK_V4}/24 dev eth0"),
            "link set eth0 up".into(),
            format!("route add default via {REMOTE_V4}"),
        ];
        if ipv6 {
            task_setup.extend([
                format!("addr add {TASK_V6}/64 dev eth0 nodad"),
                format!("route add default via {REMOTE_V6}"),
            ]);
        }
        task.ip_batch(&task_setup);
        let mut remote_setup = vec![
            format!("addr add {REMOTE_V4}/24 dev eth0"),
            format!("addr add {REMOTE_V6}/64 dev eth0 nodad"),
            "link set eth0 up".to_owned(),
        ];
        remote_setup.extend(METADATA.iter().map(|ip| format!("addr add {ip}/32 dev eth0")));
        remote.ip_batch(&remote_setup);
        Topology { task, remote }
    }

    /// Gives the remote namespace more addresses to be dialled at (host addresses on its
    /// veth end; the task reaches them through its default routes).
    pub fn add_remote_addresses(&self, addresses: &[IpAddr]) {
        let commands: Vec<String> = addresses
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => format!("addr add {v4}/32 dev eth0"),
                IpAddr::V6(v6) => format!("addr add {v6}/128 dev eth0 nodad"),
            })
            .collect();
        self.remote.ip_batch(&commands);
    }

    /// What the decision model counts as local to the task: loopback and the task's addresses.
    pub fn task_local_addrs() -> LocalAddrs {
        LocalAddrs::with_addresses([IpAddr::V4(TASK_V4), IpAddr::V6(TASK_V6)])
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(output.status.success(), "{command:?}: {}", describe(&output));
}

fn describe(output: &Output) -> String {
    format!("{}\n{}{}", output.status, String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A process that only sleeps inside a namespace, for `--netns-pid`; killed (by pid) on drop.
#[derive(Debug)]
pub struct Sleeper {
    child: std::process::Child,
}

impl Sleeper {
    pub fn start(netns: &Netns) -> Sleeper {
        let child = netns.command("sleep").arg("600").stdin(Stdio::null()).spawn().expect("spawn sleep");
        Sleeper { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `intercept` binary for CLI tests: `$INTERCEPT_BIN` (set by `cargo xtask test`, which
/// builds it first), else `intercept` next to the test executable's directory
/// (`target/<profile>/`). `None` (after [`cannot_run`]) when there is none.
pub fn intercept_bin(test: &str) -> PathBuf {
    find_intercept_bin().unwrap_or_else(|reason| cannot_run(test, &reason))
}

/// The `intercept` binary: `INTERCEPT_BIN`, else the one next to the running executable's
/// directory (`target/<profile>/`).
pub fn find_intercept_bin() -> Result<PathBuf, String> {
    let path = std::env::var_os("INTERCEPT_BIN").map(PathBuf::from).or_else(|| {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.parent()?.join("intercept"))
    });
    match path {
        Some(path) if path.is_file() => Ok(path),
        other => Err(format!("no intercept binary at {other:?}: build it with `cargo build -p intercept`")),
    }
}
