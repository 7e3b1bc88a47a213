//! DNS capture with real resolvers, per backend and for IPv4 and IPv6 servers: dnsmasq in the
//! remote namespace is the task's DNS server (it answers the test name with the "real"
//! address), a second dnsmasq on loopback in the task stands in for the proxy's DNS listener
//! on ProxyDNSPort (it answers with the "proxy's" address). The task's clients are real
//! resolvers: `dig` over UDP and TCP, and glibc's `getaddrinfo` (`getent ahosts`) through the
//! system resolver with a task-local `resolv.conf` (bind-mounted in a mount namespace of the
//! client's own). Each must get the proxy's answer; as IgnoredUID, the real server's.
//! Interception is installed with the `intercept` binary and `--proxy-dns-port`.
//!
//! Needs root, dnsmasq, dig, unshare and setpriv; every address lives in the test's namespaces.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use intercept::backend::exec::find_program;
use intercept_tests::{
    TestCgroup, cannot_run,
    ebpf::{TestBpffs, as_identity},
    require_privileges,
    topology::{Netns, intercept_bin, require_netns_privileges},
    traffic::{Sandbox, SandboxSpec},
};

const NAME: &str = "svc.mesh.test";
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 53);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd05, 0, 0, 0, 0, 0, 0, 0x53);
/// What the real server answers.
const REAL: (&str, &str) = ("10.5.0.99", "fd05::99");
/// What the proxy's DNS listener answers.
const PROXY: (&str, &str) = ("10.5.0.42", "fd05::42");
const DNS_PORT: u16 = 15053;
const PROXY_UID: u32 = 1337;
const APP_UID: u32 = 1000;

/// A dnsmasq answering `NAME` with `answers`, on `addresses` and `port`, until dropped (killed
/// by pid).
struct Dnsmasq {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start(netns: &Netns, addresses: &[IpAddr], port: u16, answers: (&str, &str)) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut command = netns.command("dnsmasq");
        command
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--user=root"])
            .arg("--conf-file=/dev/null")
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .arg(format!("--port={port}"))
            .args(addresses.iter().map(|a| format!("--listen-address={a}")))
            .arg(format!("--address=/{NAME}/{}", answers.0))
            .arg(format!("--address=/{NAME}/{}", answers.1))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("start dnsmasq");
        let dnsmasq = Dnsmasq { child, _dir: dir };
        // Listening once it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = addresses[0];
        loop {
            let out = netns.command("dig").args(dig_args(probe, port, "A", false)).output().expect("run dig");
            if String::from_utf8_lossy(&out.stdout).trim() == answers.0 {
                return dnsmasq;
            }
            assert!(Instant::now() < deadline, "dnsmasq on {probe}:{port} never answered");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dig_args(server: IpAddr, port: u16, record: &str, tcp: bool) -> Vec<String> {
    let mut args =
        vec![format!("@{server}"), "-p".into(), port.to_string(), NAME.into(), record.into(), "+short".into()];
    args.extend(["+time=2", "+tries=1"].map(str::to_owned));
    if tcp {
        args.push("+tcp".into());
    }
    args
}

/// The task's side: its namespace, and for eBPF the cgroup its processes run in.
struct Task<'a> {
    netns: &'a Netns,
    cgroup: Option<&'a TestCgroup>,
}

impl Task<'_> {
    /// `program` in the task as `uid` (its own gid, no other groups).
    fn command(&self, program: &str, uid: u32) -> Command {
        let mut command = match self.cgroup {
            Some(cgroup) => cgroup.command(program),
            None => Command::new(program),
        };
        self.netns.enter(&mut command);
        as_identity(&mut command, uid, uid);
        command
    }

    fn output(&self, mut command: Command) -> String {
        let out = command.output().expect("run a resolver client");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{command:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    fn dig(&self, uid: u32, server: IpAddr, record: &str, tcp: bool) -> String {
        let mut command = self.command("dig", uid);
        command.args(dig_args(server, 53, record, tcp));
        self.output(command).trim().to_owned()
    }

    /// glibc's `getaddrinfo` through the system resolver, with `resolv.conf` naming `server`:
    /// bind-mounted over `/etc/resolv.conf` in a mount namespace of the client's own, then the
    /// client drops to `uid` (the mount needs root).
    fn getaddrinfo(&self, uid: u32, server: IpAddr, resolv_dir: &Path) -> String {
        let resolv = resolv_dir.join(format!("resolv-{server}.conf"));
        fs::write(&resolv, format!("nameserver {server}\noptions timeout:2 attempts:1\n")).expect("write resolv.conf");
        let family = if server.is_ipv4() { "ahostsv4" } else { "ahostsv6" };
        let mut command = match self.cgroup {
            Some(cgroup) => cgroup.command("unshare"),
            None => Command::new("unshare"),
        };
        self.netns.enter(&mut command);
        command.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(format!(
            "mount --bind {} /etc/resolv.conf && exec setpriv --reuid={uid} --regid={uid} --clear-groups getent {family} {NAME}",
            resolv.display()
        ));
        let out = self.output(command);
        out.lines().next().and_then(|l| l.split_whitespace().next()).unwrap_or_default().to_owned()
    }
}

fn require_tools(test: &str) {
    for tool in ["dnsmasq", "dig", "unshare", "setpriv", "getent"] {
        if find_program(tool).is_none() {
            cannot_run(
                test,
                &format!("{tool} is not installed (cargo xtask setup installs dnsmasq-base, bind9-dnsutils)"),
            );
        }
    }
}

/// Installs with `backend`, queries through every resolver for both families, then removes.
fn resolvers_get_the_proxys_answer(test: &str, backend: &str) {
    let host = require_privileges(test);
    require_netns_privileges(test);
    require_tools(test);
    let bin = intercept_bin(test);
    let servers = [IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)];
    let sandbox = Sandbox::new(&SandboxSpec { remote_addresses: servers.to_vec(), ..SandboxSpec::default() });
    let _real = Dnsmasq::start(sandbox.remote(), &servers, 53, REAL);
    let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    let _proxy = Dnsmasq::start(sandbox.task(), &loopback, DNS_PORT, PROXY);
    let ebpf = backend == "ebpf";
    let cgroup = ebpf.then(|| host.create_cgroup().expect("create a test cgroup"));
    let bpffs = ebpf.then(TestBpffs::mounted);
    let mut target: Vec<String> =
        vec!["--backend".into(), backend.into(), "--netns".into(), sandbox.task().path().display().to_string()];
    if let (Some(cgroup), Some(bpffs)) = (&cgroup, &bpffs) {
        target.extend(["--cgroup".into(), cgroup.path().display().to_string()]);
        target.extend(["--bpffs".into(), bpffs.path().display().to_string()]);
    }
    let config = ["--ignored-uid", "1337,1338", "--proxy-egress-port", "15001", "--proxy-dns-port", "15053"];
    let run = |args: &[&str]| {
        let out = Command::new(&bin).args(args).args(&target).output().expect("run intercept");
        assert!(out.status.success(), "intercept {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // Before: every resolver reaches the real server.
    let task = Task { netns: sandbox.task(), cgroup: cgroup.as_ref() };
    assert_eq!(task.dig(APP_UID, servers[0], "A", false), REAL.0, "before interception");

    run(&[&["apply"][..], &config].concat());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut failures = Vec::new();
    for (server, (proxy, real), record) in
        [(servers[0], (PROXY.0, REAL.0), "A"), (servers[1], (PROXY.1, REAL.1), "AAAA")]
    {
        let answers = [
            ("dig over UDP", task.dig(APP_UID, server, record, false), proxy),
            ("dig over TCP", task.dig(APP_UID, server, record, true), proxy),
            ("getaddrinfo", task.getaddrinfo(APP_UID, server, dir.path()), proxy),
            ("dig as IgnoredUID", task.dig(PROXY_UID, server, record, false), real),
            ("dig as the second IgnoredUID", task.dig(1338, server, record, true), real),
            ("getaddrinfo as IgnoredUID", task.getaddrinfo(PROXY_UID, server, dir.path()), real),
        ];
        for (what, got, want) in answers {
            if got != want {
                failures.push(format!("{backend}, server {server}: {what} got {got:?}, expected {want:?}"));
            }
        }
    }
    run(&["remove"]);
    assert_eq!(task.dig(APP_UID, servers[1], "AAAA", false), REAL.1, "after remove");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
#[ignore = "privileged (root, namespaces, dnsmasq): `cargo xtask test` runs it"]
fn resolvers_get_the_proxys_answer_iptables() {
    resolvers_get_the_proxys_answer("resolvers_get_the_proxys_answer_iptables", "iptables");
}

#[test]
#[ignore = "privileged (root, namespaces, dnsmasq): `cargo xtask test` runs it"]
fn resolvers_get_the_proxys_answer_nftables() {
    resolvers_get_the_proxys_answer("resolvers_get_the_proxys_answer_nftables", "nftables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups, dnsmasq): `cargo xtask test` runs it"]
fn resolvers_get_the_proxys_answer_ebpf() {
    resolvers_get_the_proxys_answer("resolvers_get_the_proxys_answer_ebpf", "ebpf");
}
