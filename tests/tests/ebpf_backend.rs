//! The eBPF backend end to end: programs installed on a test cgroup with a test bpffs, real
//! connections from processes in that cgroup, and every outcome compared with the decision
//! model (`intercept::model::decide`).
//!
//! Topology: one test network namespace whose `lo` carries the task's own addresses and the
//! "remote" destinations; clients and the proxy run inside it, so a connection that is not
//! redirected reaches a test listener there and nothing can leave the machine.
//!
//! Needs root; see `intercept_tests::require_privileges`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    process::Command,
    time::Duration,
};

use intercept::backend::ebpf::Counter;
use intercept::{
    backend::ebpf::{self, ApplyOptions, Outcome, Program, Target},
    config::{PortRange, PortSet, ProxyConfig},
    model::{self, Connection, Decision, Direction, LocalAddrs, Protocol, Reason},
    plan::ebpf::EbpfPlan,
};
use intercept_tests::{
    TestCgroup,
    ebpf::{
        ChildCgroup, Listener, PROXY_PORT, PROXY_UID, TASK_ADDRS, TestBpffs, TestNetns, command_in, error_chain,
        seed_config,
    },
    require_privileges, run_with_timeout,
};

const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");
const TIMEOUT: Duration = Duration::from_secs(10);
const APP_UID: u32 = 1000;

/// The remote destinations, on the netns's lo with the task's own addresses.
const REMOTE_ADDRS: [&str; 7] =
    ["192.0.2.10", "10.9.3.4", "169.254.169.254", "198.18.100.5", "2001:db8::10", "2001:db8:9::1", "2001:db8::20"];

fn task_addrs() -> Vec<IpAddr> {
    TASK_ADDRS.iter().map(|a| a.parse().unwrap()).collect()
}

fn netns() -> TestNetns {
    let addrs: Vec<String> = TASK_ADDRS
        .iter()
        .chain(REMOTE_ADDRS.iter())
        .map(|a| if a.contains(':') { format!("{a}/128") } else { format!("{a}/32") })
        .collect();
    TestNetns::create(&addrs.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The test's world: netns, cgroup, bpffs, the proxy (in the cgroup, as IgnoredUID) and a
/// listener on every destination a case dials (outside the cgroup).
struct World {
    netns: TestNetns,
    cgroup: TestCgroup,
    bpffs: TestBpffs,
    proxy: Listener,
    remote: Listener,
}

impl World {
    fn new(host: &intercept_tests::Privileged, destinations: &[SocketAddr]) -> World {
        let netns = netns();
        let cgroup = host.create_cgroup().expect("create a test cgroup");
        let bpffs = TestBpffs::mounted();
        let mut proxy = cgroup.command(PROBE);
        proxy.args(["listen", "--orig-dst", &format!("127.0.0.1:{PROXY_PORT}"), &format!("[::1]:{PROXY_PORT}")]);
        netns.enter(&mut proxy, PROXY_UID, PROXY_UID);
        let proxy = Listener::spawn(proxy);
        let mut remote = Command::new(PROBE);
        remote.arg("listen");
        let mut bound: Vec<SocketAddr> = destinations.iter().map(|d| canonical(*d)).collect();
        bound.sort();
        bound.dedup();
        remote.args(bound.iter().map(ToString::to_string));
        netns.enter(&mut remote, 0, 0);
        let remote = Listener::spawn(remote);
        World { netns, cgroup, bpffs, proxy, remote }
    }

    fn target(&self) -> Target {
        Target::new(self.cgroup.path().to_str().unwrap(), Some(self.bpffs.path())).expect("resolve the target")
    }

    fn apply(&self, config: &ProxyConfig) -> Outcome {
        ebpf::apply(
            &self.target(),
            &EbpfPlan::new(config),
            &task_addrs(),
            self.netns.open().as_fd(),
            ApplyOptions::default(),
        )
        .unwrap_or_else(|e| panic!("apply: {}", error_chain(&e)))
        .outcome
    }

    /// Runs one connection from the cgroup as uid/gid and returns what happened to it.
    fn connect(&self, uid: u32, gid: u32, dst: SocketAddr, token: &str) -> Observed {
        let mut client = command_in(Some(&self.cgroup), PROBE);
        client.args(["connect", &dst.to_string(), token]);
        self.netns.enter(&mut client, uid, gid);
        let status = run_with_timeout(&mut client, TIMEOUT);
        assert!(status.success(), "client {uid}:{gid} → {dst}: {status}");
        self.observe(token)
    }

    fn observe(&self, token: &str) -> Observed {
        let has = |l: &str| l.ends_with(&format!(" {token}"));
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(line) = self.proxy.lines().into_iter().find(|l| has(l)) {
                let f: Vec<&str> = line.split(' ').collect();
                return Observed::Proxy { at: f[0].parse().unwrap(), orig: f[2].to_owned() };
            }
            if let Some(line) = self.remote.lines().into_iter().find(|l| has(l)) {
                let f: Vec<&str> = line.split(' ').collect();
                return Observed::Direct { at: f[0].parse().unwrap() };
            }
            assert!(std::time::Instant::now() < deadline, "connection {token} arrived nowhere");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Observed {
    /// At the proxy, which read this original destination.
    Proxy { at: SocketAddr, orig: String },
    /// At the destination itself.
    Direct { at: SocketAddr },
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(model::canonical(addr.ip()), addr.port())
}

fn egress(uid: u32, gid: u32, dst: SocketAddr) -> Connection {
    let source = if dst.is_ipv4() { "10.0.0.2:40000" } else { "[fd00::2]:40000" };
    Connection {
        direction: Direction::Egress,
        protocol: Protocol::Tcp,
        uid,
        gid,
        source: source.parse().unwrap(),
        destination: dst,
    }
}

fn counter_of(reason: Reason) -> Counter {
    match reason {
        Reason::NotTcp => Counter::NotTcp,
        Reason::Ipv6Disabled => Counter::Ipv6Disabled,
        Reason::LocalDestination => Counter::LocalDestination,
        Reason::IgnoredUid => Counter::IgnoredUid,
        Reason::IgnoredGid => Counter::IgnoredGid,
        Reason::IgnoredPort => Counter::IgnoredPort,
        Reason::IgnoredIp => Counter::IgnoredIp,
        other => panic!("{other:?} is not an egress reason"),
    }
}

/// Runs every case, checks each against the model, and returns the expected counters.
fn check_cases(
    world: &World,
    config: &ProxyConfig,
    cases: &[(&str, u32, u32, SocketAddr)],
    tag: &str,
) -> BTreeMap<Counter, u64> {
    let local = LocalAddrs::with_addresses(task_addrs());
    let mut expected = BTreeMap::new();
    for (i, (name, uid, gid, dst)) in cases.iter().enumerate() {
        let want = model::decide(config, &local, &egress(*uid, *gid, *dst));
        let token = format!("{tag}-{i}");
        let got = world.connect(*uid, *gid, *dst, &token);
        match want {
            Decision::Redirect { to } => {
                assert_eq!(
                    got,
                    Observed::Proxy { at: to, orig: canonical(*dst).to_string() },
                    "{name}: {uid}:{gid} → {dst}, model says {want}"
                );
                *expected.entry(Counter::Redirected).or_default() += 1;
                *expected.entry(Counter::OrigDstHit).or_default() += 1;
            }
            Decision::Untouched { reason } => {
                assert_eq!(
                    got,
                    Observed::Direct { at: canonical(*dst) },
                    "{name}: {uid}:{gid} → {dst}, model says {want}"
                );
                *expected.entry(counter_of(reason)).or_default() += 1;
            }
        }
    }
    expected
}

fn seed_cases() -> Vec<(&'static str, u32, u32, SocketAddr)> {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    vec![
        ("plain v4", APP_UID, APP_UID, a("192.0.2.10:80")),
        ("plain v6", APP_UID, APP_UID, a("[2001:db8::10]:80")),
        ("mapped v4", APP_UID, APP_UID, a("[::ffff:192.0.2.10]:8080")),
        ("ignored uid", PROXY_UID, APP_UID, a("192.0.2.10:80")),
        ("ignored uid v6", PROXY_UID, APP_UID, a("[2001:db8::10]:80")),
        ("ignored gid", APP_UID, 1338, a("192.0.2.10:80")),
        ("ignored port", APP_UID, APP_UID, a("192.0.2.10:5432")),
        ("implicit port 22", APP_UID, APP_UID, a("192.0.2.10:22")),
        ("ignored port v6", APP_UID, APP_UID, a("[2001:db8::10]:5432")),
        ("ignored cidr v4", APP_UID, APP_UID, a("10.9.3.4:80")),
        ("ignored cidr v6", APP_UID, APP_UID, a("[2001:db8:9::1]:80")),
        ("ignored cidr mapped", APP_UID, APP_UID, a("[::ffff:10.9.3.4]:81")),
        ("instance metadata", APP_UID, APP_UID, a("169.254.169.254:80")),
        ("loopback", APP_UID, APP_UID, a("127.0.0.1:9080")),
        ("loopback range", APP_UID, APP_UID, a("127.0.0.2:9080")),
        ("loopback v6", APP_UID, APP_UID, a("[::1]:9080")),
        ("own address", APP_UID, APP_UID, a("10.0.0.2:80")),
        ("own address v6", APP_UID, APP_UID, a("[fd00::2]:80")),
    ]
}

fn counters(world: &World) -> BTreeMap<Counter, u64> {
    let status = ebpf::status(&world.target()).expect("status").expect("installed");
    status.counters.into_iter().filter(|(_, v)| *v != 0).collect()
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn every_decision_reason_matches_the_model() {
    let host = require_privileges("every_decision_reason_matches_the_model");
    let cases = seed_cases();
    let mut dsts: Vec<SocketAddr> = cases.iter().map(|c| c.3).collect();
    dsts.push("192.0.2.10:53".parse().unwrap());
    let world = World::new(&host, &dsts);
    let config = seed_config();
    assert_eq!(world.apply(&config), Outcome::Installed);

    let mut expected = check_cases(&world, &config, &cases, "seed");

    // UDP is never touched (the connect hook sees it and counts it).
    let mut udp = command_in(Some(&world.cgroup), PROBE);
    udp.args(["udp", "192.0.2.10:53"]);
    world.netns.enter(&mut udp, APP_UID, APP_UID);
    assert!(run_with_timeout(&mut udp, TIMEOUT).success(), "udp client");
    *expected.entry(Counter::NotTcp).or_default() += 1;

    assert_eq!(counters(&world), expected, "counters by reason");
    let status = ebpf::status(&world.target()).unwrap().unwrap();
    assert!(status.programs.iter().all(|p| p.attached), "{status:?}");
    assert_eq!(status.programs.len(), Program::ALL.len());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ipv6_switched_off_and_reapplied_in_place() {
    let host = require_privileges("ipv6_switched_off_and_reapplied_in_place");
    let cases = seed_cases();
    let dsts: Vec<SocketAddr> = cases.iter().map(|c| c.3).collect();
    let world = World::new(&host, &dsts);
    let mut config = seed_config();
    assert_eq!(world.apply(&config), Outcome::Installed);
    assert_eq!(world.apply(&config), Outcome::Unchanged, "same config again");
    let before: Vec<_> = ebpf::status(&world.target()).unwrap().unwrap().programs;

    config.ipv6 = false;
    config.ignored_gids.clear();
    config.egress_ignored_ports = PortSet::from_ranges([PortRange::single(8080)]);
    assert!(matches!(world.apply(&config), Outcome::Updated(_)), "changed config");
    let after = ebpf::status(&world.target()).unwrap().unwrap();
    assert_eq!(after.programs, before, "the same programs and links stay attached");
    assert!(after.drift(&ebpf::Contents::desired(&EbpfPlan::new(&config), &task_addrs()).unwrap()).is_empty());

    let expected = check_cases(&world, &config, &cases, "v6off");
    assert_eq!(counters(&world), expected, "counters by reason");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_configuration_that_outgrows_the_record_grows_it_in_place() {
    let host = require_privileges("a_configuration_that_outgrows_the_record_grows_it_in_place");
    let cases = seed_cases();
    let dsts: Vec<SocketAddr> = cases.iter().map(|c| c.3).collect();
    let world = World::new(&host, &dsts);
    let mut config = seed_config();
    assert_eq!(world.apply(&config), Outcome::Installed);
    let before = ebpf::status(&world.target()).unwrap().unwrap().programs;

    // 2,002 ignored ports: the task's record was sized for the seed's one; the host's maps
    // take any size.
    config.egress_ignored_ports =
        PortSet::from_ranges([PortRange { start: 20000, end: 22000 }, PortRange::single(5432)]);
    assert!(matches!(world.apply(&config), Outcome::Updated(_)));
    let after = ebpf::status(&world.target()).unwrap().unwrap();
    assert_eq!(before, after.programs, "the same links to the same programs");
    assert!(after.drift(&ebpf::Contents::desired(&EbpfPlan::new(&config), &task_addrs()).unwrap()).is_empty());
    let expected = check_cases(&world, &config, &cases, "grown");
    assert_eq!(counters(&world), expected, "counters by reason");
    assert_eq!(world.apply(&config), Outcome::Unchanged, "the record holds it");
}

/// Runs `intercept-ebpf-probe ARGS` as root in the netns, placed by `command`, and requires success.
fn run_probe(world: &World, mut command: Command, args: &[&str]) {
    command.args(args);
    world.netns.enter(&mut command, APP_UID, APP_UID);
    let status = run_with_timeout(&mut command, Duration::from_secs(120));
    assert!(status.success(), "probe {args:?}: {status}");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn churn_leaves_the_pairing_maps_at_their_idle_size() {
    let host = require_privileges("churn_leaves_the_pairing_maps_at_their_idle_size");
    const N: usize = 10_000;
    let world = World::new(&host, &["192.0.2.10:80".parse().unwrap()]);
    world.apply(&seed_config());
    let idle = ebpf::status(&world.target()).unwrap().unwrap();
    assert_eq!(idle.handoffs, 0, "idle before");

    run_probe(&world, command_in(Some(&world.cgroup), PROBE), &["churn", "192.0.2.10:80", &N.to_string()]);
    assert_eq!(world.proxy.wait_for_count(N, Duration::from_secs(60)), N, "every connection reached the proxy");
    let lines = world.proxy.lines();
    let wrong: Vec<_> = lines.iter().filter(|l| l.split(' ').nth(2) != Some("192.0.2.10:80")).take(5).collect();
    assert!(wrong.is_empty(), "SO_ORIGINAL_DST under churn: {wrong:?}");

    // The proxy closes each connection after reading it; the close callbacks empty the maps.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        let status = ebpf::status(&world.target()).unwrap().unwrap();
        if status.handoffs == 0 || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.handoffs, 0, "hand-off map after {N} connections");
    assert_eq!(status.counter(Counter::Redirected), N as u64);
    assert_eq!(status.counter(Counter::OrigDstHit), N as u64);
    assert_eq!(status.counter(Counter::OrigDstMiss), 0);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn interception_outlives_the_applying_process_and_remove_leaves_nothing() {
    let host = require_privileges("interception_outlives_the_applying_process_and_remove_leaves_nothing");
    let dst: SocketAddr = "192.0.2.10:80".parse().unwrap();
    let world = World::new(&host, &[dst]);
    let mut apply = Command::new(PROBE);
    apply.args(["apply", world.cgroup.path().to_str().unwrap(), world.bpffs.path().to_str().unwrap()]);
    apply.arg(world.netns.path());
    let status = run_with_timeout(&mut apply, TIMEOUT);
    assert!(status.success(), "apply in a child process: {status}");

    // The applying process has exited: only the pins hold the programs.
    assert!(matches!(world.connect(APP_UID, APP_UID, dst, "after-exit"), Observed::Proxy { .. }));
    let target = world.target();
    // The cgroup programs on the cgroup, the sk_lookup program on the namespace.
    let attached = |program: Program| {
        let on = if program.on_netns() { world.netns.path() } else { world.cgroup.path().to_owned() };
        ebpf::attached_programs(&on, program.attach_type()).unwrap()
    };
    for program in Program::ALL {
        assert_eq!(attached(program).len(), 1, "{program:?} attached once");
    }

    assert_eq!(ebpf::remove(&target).expect("remove"), ebpf::Removed::Installation { steered_ingress: true });
    for program in Program::ALL {
        let attached = attached(program);
        assert!(attached.is_empty(), "{program:?} still attached after remove: {attached:?}");
    }
    assert_eq!(world.bpffs.files(), Vec::<std::path::PathBuf>::new(), "nothing pinned after remove");
    assert_eq!(ebpf::remove(&target).expect("remove again"), ebpf::Removed::Nothing, "remove is idempotent");
    assert!(ebpf::status(&target).unwrap().is_none());
    assert_eq!(world.connect(APP_UID, APP_UID, dst, "after-remove"), Observed::Direct { at: dst });
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn cgroups_are_independent_children_are_intercepted_outsiders_are_not() {
    let host = require_privileges("cgroups_are_independent_children_are_intercepted_outsiders_are_not");
    let dst: SocketAddr = "192.0.2.10:80".parse().unwrap();
    let world = World::new(&host, &[dst]);
    world.apply(&seed_config());
    let child = ChildCgroup::create(&world.cgroup);

    // A second cgroup whose configuration ignores the destination.
    let other = host.create_cgroup().expect("second cgroup");
    let mut other_config = seed_config();
    other_config.egress_ignored_ips.push("192.0.2.0/24".parse().unwrap());
    let other_target = Target::new(other.path().to_str().unwrap(), Some(world.bpffs.path())).unwrap();
    // Its own namespace: one sk_lookup program per namespace is what a task gets.
    let other_netns = netns();
    ebpf::apply(
        &other_target,
        &EbpfPlan::new(&other_config),
        &task_addrs(),
        other_netns.open().as_fd(),
        ApplyOptions::default(),
    )
    .unwrap();

    let connect = |mut command: Command, token: &str| {
        command.args(["connect", &dst.to_string(), token]);
        world.netns.enter(&mut command, APP_UID, APP_UID);
        assert!(run_with_timeout(&mut command, TIMEOUT).success(), "{token}");
        world.observe(token)
    };
    assert!(matches!(connect(world.cgroup.command(PROBE), "in-cgroup"), Observed::Proxy { .. }));
    assert!(matches!(connect(child.command(PROBE), "in-child"), Observed::Proxy { .. }), "child cgroup");
    assert_eq!(connect(other.command(PROBE), "in-other"), Observed::Direct { at: dst }, "other config");
    assert_eq!(connect(Command::new(PROBE), "outside"), Observed::Direct { at: dst }, "outside every cgroup");

    let first = ebpf::status(&world.target()).unwrap().unwrap();
    let second = ebpf::status(&other_target).unwrap().unwrap();
    assert_eq!(first.counter(Counter::Redirected), 2);
    assert_eq!(second.counter(Counter::IgnoredIp), 1);
    assert_eq!(second.counter(Counter::Redirected), 0);

    assert!(ebpf::remove(&other_target).unwrap().any());
    assert!(ebpf::status(&world.target()).unwrap().is_some(), "removing one cgroup keeps the other");
    drop(child);
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_hundred_thousand_ignored_cidrs_install_and_work() {
    let host = require_privileges("a_hundred_thousand_ignored_cidrs_install_and_work");
    const N: u32 = 100_000;
    let ignored: SocketAddr = "198.18.100.5:80".parse().unwrap();
    let redirected: SocketAddr = "192.0.2.10:80".parse().unwrap();
    let world = World::new(&host, &[ignored, redirected]);
    let mut config = seed_config();
    let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
    config.egress_ignored_ips =
        (0..N).map(|i| format!("{}/32", std::net::Ipv4Addr::from(base + i * 2 + 1)).parse().unwrap()).collect();
    // 198.18.100.5 = base + 25605 = base + 2 * 12802 + 1: in the list.
    let started = std::time::Instant::now();
    assert_eq!(world.apply(&config), Outcome::Installed);
    let _ = writeln!(std::io::stderr(), "apply with {N} ignored CIDRs: {:?}", started.elapsed());
    let status = ebpf::status(&world.target()).unwrap().unwrap();
    assert_eq!(status.contents.ignored_nets_v4.len(), N as usize + 2, "plus the two metadata IPs");

    assert_eq!(world.connect(APP_UID, APP_UID, ignored, "ignored"), Observed::Direct { at: ignored });
    assert!(matches!(world.connect(APP_UID, APP_UID, redirected, "redirected"), Observed::Proxy { .. }));
}

/// Re-applies between two configurations that disagree about every connection sent, while
/// connections flow: each must follow one configuration entirely, the old or the new. A mix
/// (one configuration's proxy port with the other's exemptions) would show up as a
/// connection at the wrong proxy port, and a lost one as a count short.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn reapply_while_connections_flow_follows_the_old_or_the_new_configuration() {
    let host = require_privileges("reapply_while_connections_flow_follows_the_old_or_the_new_configuration");
    const N: usize = 1_500;
    const OTHER_PROXY_PORT: u16 = PROXY_PORT + 1;
    let v4: SocketAddr = "192.0.2.10:80".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::10]:80".parse().unwrap();
    let world = World::new(&host, &[v4, v6]);
    // Old: proxy port 15001, v6 exempt. New: proxy port 15002, v4 exempt.
    let mut old = seed_config();
    old.egress_ignored_ips.push("2001:db8::/64".parse().unwrap());
    let mut new = seed_config();
    new.proxy_egress_port = OTHER_PROXY_PORT;
    new.egress_ignored_ips.push("192.0.2.0/24".parse().unwrap());
    let mut other_proxy = world.cgroup.command(PROBE);
    other_proxy.args([
        "listen",
        "--orig-dst",
        &format!("127.0.0.1:{OTHER_PROXY_PORT}"),
        &format!("[::1]:{OTHER_PROXY_PORT}"),
    ]);
    world.netns.enter(&mut other_proxy, PROXY_UID, PROXY_UID);
    let other_proxy = Listener::spawn(other_proxy);

    // What each configuration does with each destination, per the model.
    let local = LocalAddrs::with_addresses(task_addrs());
    let allowed = |dst: SocketAddr| -> Vec<Observed> {
        [&old, &new]
            .into_iter()
            .map(|config| match model::decide(config, &local, &egress(APP_UID, APP_UID, dst)) {
                Decision::Redirect { to } => Observed::Proxy { at: to, orig: dst.to_string() },
                Decision::Untouched { .. } => Observed::Direct { at: dst },
            })
            .collect()
    };
    for dst in [v4, v6] {
        let outcomes = allowed(dst);
        assert_ne!(outcomes[0], outcomes[1], "the configurations must disagree about {dst}");
    }
    assert_eq!(world.apply(&old), Outcome::Installed);

    let churn = |dst: SocketAddr| {
        let mut churn = command_in(Some(&world.cgroup), PROBE);
        churn.args(["churn", &dst.to_string(), &N.to_string()]);
        world.netns.enter(&mut churn, APP_UID, APP_UID);
        churn.spawn().expect("spawn churn")
    };
    let mut clients = [churn(v4), churn(v6)];
    let mut flips = 0;
    let mut statuses = Vec::new();
    while statuses.len() < clients.len() {
        statuses.clear();
        for client in &mut clients {
            if let Some(status) = client.try_wait().expect("wait churn") {
                statuses.push(status);
            }
        }
        let config = if flips % 2 == 0 { &new } else { &old };
        assert!(matches!(world.apply(config), Outcome::Updated(_)));
        flips += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(statuses.iter().all(|s| s.success()), "every connection succeeded across {flips} re-applies: {statuses:?}");

    let lines = || [&world.proxy, &other_proxy, &world.remote].iter().map(|l| l.lines().len()).sum::<usize>();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while lines() < 2 * N && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lines(), 2 * N, "each connection arrived exactly once");

    let mut seen: BTreeMap<(SocketAddr, bool), usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (listener, proxied) in [(&world.proxy, true), (&other_proxy, true), (&world.remote, false)] {
        for line in listener.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let at: SocketAddr = f[0].parse().unwrap();
            let (dst, observed) = if proxied {
                let Ok(dst) = f[2].parse::<SocketAddr>() else {
                    wrong.push(line.clone());
                    continue;
                };
                (dst, Observed::Proxy { at, orig: f[2].to_owned() })
            } else {
                (at, Observed::Direct { at })
            };
            if allowed(dst).contains(&observed) {
                *seen.entry((dst, proxied)).or_default() += 1;
            } else {
                wrong.push(line.clone());
            }
        }
    }
    assert!(wrong.is_empty(), "outcomes of neither configuration: {:?}", &wrong[..wrong.len().min(5)]);
    for dst in [v4, v6] {
        assert!(
            seen.contains_key(&(dst, true)) && seen.contains_key(&(dst, false)),
            "connections to {dst} met both configurations ({flips} re-applies): {seen:?}"
        );
    }
    let status = ebpf::status(&world.target()).unwrap().unwrap();
    assert_eq!(status.generation, (flips % 2) as u32, "each re-apply switched generations");
}

/// The programs decide with the generation `ACTIVE` names and nothing else: entries written
/// into the other generation (as an apply does before it flips) change nothing until the flip,
/// and everything at once after it.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_programs_read_only_the_active_generation() {
    use aya::maps::{Array, LpmTrie, Map, MapData, lpm_trie::Key};
    use intercept_common::{
        ACTIVE_MAP, CONFIG_MAP, GENERATIONS, GlobalConfig, IGNORED_NETS_V4_MAP, KEY_PREFIX_BITS, LpmDataV4, TASK_MAP,
        TaskRef,
    };

    let host = require_privileges("the_programs_read_only_the_active_generation");
    let dst: SocketAddr = "192.0.2.10:80".parse().unwrap();
    let world = World::new(&host, &[dst]);
    let config = seed_config();
    assert_eq!(world.apply(&config), Outcome::Installed);
    let dir = world.target().pin_dir();
    let open = |name: &str| Map::from_map_data(MapData::from_pin(dir.join(name)).unwrap()).unwrap();
    let open_host = |name: &str| open(&format!("{}/{name}", ebpf::PROGRAMS_LINK));
    let task: Array<MapData, TaskRef> = Array::try_from(open(TASK_MAP)).unwrap();
    let slot = task.get(&0, 0).unwrap().slot;

    // Generation 1: the same CONFIG, and an ignored network covering the destination.
    let mut configs: Array<MapData, GlobalConfig> = Array::try_from(open_host(CONFIG_MAP)).unwrap();
    let active_config = configs.get(&(slot * GENERATIONS), 0).unwrap();
    configs.set(slot * GENERATIONS + 1, active_config, 0).unwrap();
    let mut nets: LpmTrie<MapData, LpmDataV4, u8> = LpmTrie::try_from(open_host(IGNORED_NETS_V4_MAP)).unwrap();
    let data = LpmDataV4 { slot_be: slot.to_be(), generation_be: 1u32.to_be(), addr: [192, 0, 2, 0] };
    let key = Key::new(KEY_PREFIX_BITS + 24, data);
    nets.insert(&key, 1, 0).unwrap();
    assert!(
        matches!(world.connect(APP_UID, APP_UID, dst, "inactive"), Observed::Proxy { .. }),
        "the inactive generation is not read"
    );

    let mut active: Array<MapData, u32> = Array::try_from(open_host(ACTIVE_MAP)).unwrap();
    active.set(slot, 1, 0).unwrap();
    assert_eq!(world.connect(APP_UID, APP_UID, dst, "flipped"), Observed::Direct { at: dst }, "generation 1 decides");
    let status = ebpf::status(&world.target()).unwrap().unwrap();
    assert_eq!(status.generation, 1);
    let want = ebpf::Contents::desired(&EbpfPlan::new(&config), &task_addrs()).unwrap();
    assert!(!status.drift(&want).is_empty(), "status reports what generation 1 lacks");

    // A re-apply writes the plan into generation 0, flips back, and clears generation 1 of
    // what it knows of: the entry written here behind its back is the test's to delete.
    assert!(matches!(world.apply(&config), Outcome::Updated(c) if c.generation == 0));
    assert!(matches!(world.connect(APP_UID, APP_UID, dst, "reapplied"), Observed::Proxy { .. }));
    nets.remove(&key).unwrap();
    let keys: Vec<Key<LpmDataV4>> =
        nets.keys().map(Result::unwrap).filter(|k| k.data().slot_be == slot.to_be()).collect();
    assert_eq!(keys.len(), want.ignored_nets_v4.len(), "only generation 0's entries are left");
    assert!(keys.iter().all(|k| k.data().generation_be == 0));
    assert_eq!(
        configs.get(&(slot * GENERATIONS + 1), 0).unwrap(),
        GlobalConfig::default(),
        "generation 1's CONFIG is cleared"
    );
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_needs_only_cap_bpf_net_admin_perfmon_and_names_a_missing_one() {
    let host = require_privileges("apply_needs_only_cap_bpf_net_admin_perfmon_and_names_a_missing_one");
    let dst: SocketAddr = "192.0.2.10:80".parse().unwrap();
    let world = World::new(&host, &[dst]);
    let apply_with = |caps: &str| {
        let out = Command::new("setpriv")
            .args([&format!("--bounding-set=-all{caps}"), &format!("--inh-caps=-all{caps}"), "--", PROBE, "apply"])
            .arg(world.cgroup.path())
            .arg(world.bpffs.path())
            .arg(world.netns.path())
            .output()
            .expect("run setpriv");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (caps, missing) in
        [(",+bpf,+perfmon", "CAP_NET_ADMIN"), (",+net_admin,+perfmon", "CAP_BPF"), (",+bpf,+net_admin", "CAP_PERFMON")]
    {
        let (ok, stderr) = apply_with(caps);
        assert!(!ok && stderr.contains(&format!("missing capability {missing}")), "with {caps}: {stderr}");
    }
    assert!(world.bpffs.files().is_empty(), "a refused apply pins nothing: {:?}", world.bpffs.files());

    let (ok, stderr) = apply_with(",+bpf,+net_admin,+perfmon");
    assert!(ok, "with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only: {stderr}");
    assert!(matches!(world.connect(APP_UID, APP_UID, dst, "minimal-caps"), Observed::Proxy { .. }));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_agent_mounts_bpffs_when_absent_and_a_failed_apply_leaves_nothing() {
    let host = require_privileges("the_agent_mounts_bpffs_when_absent_and_a_failed_apply_leaves_nothing");
    let cgroup = host.create_cgroup().expect("cgroup");
    let bpffs = TestBpffs::unmounted();
    let target = Target::new(cgroup.path().to_str().unwrap(), Some(bpffs.path())).unwrap();
    let ns = netns();
    assert!(ebpf::status(&target).unwrap().is_none(), "nothing installed, nothing mounted");
    // Too many local addresses: refused before anything is loaded or attached.
    let many: Vec<IpAddr> = (0..2000u32).map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
    assert!(
        ebpf::apply(&target, &EbpfPlan::new(&seed_config()), &many, ns.open().as_fd(), ApplyOptions::default())
            .is_err()
    );
    assert!(bpffs.files().is_empty());
    for program in Program::CGROUP {
        assert!(ebpf::attached_programs(cgroup.path(), program.attach_type()).unwrap().is_empty());
    }
    assert!(ebpf::attached_programs(&ns.path(), Program::SkLookup.attach_type()).unwrap().is_empty());
    ebpf::apply(&target, &EbpfPlan::new(&seed_config()), &task_addrs(), ns.open().as_fd(), ApplyOptions::default())
        .expect("apply");
    assert!(bpffs.is_mounted(), "the agent mounted a bpffs at --bpffs");
    let mut pins: Vec<String> = bpffs.files().iter().map(|p| p.to_string_lossy().into_owned()).collect();
    pins.retain(|p| p.starts_with(&format!("intercept/{}/", target.cgroup_id)) && p.matches('/').count() == 2);
    // Its links, its maps, and the link to the host's programs.
    assert_eq!(pins.len(), Program::ALL.len() + ebpf::MAP_NAMES.len() + 1, "{pins:?}");
    assert!(ebpf::remove(&target).unwrap().any());
}

/// A task's cgroup goes when the task ends; the kernel detaches its links, but the pins would
/// keep the maps alive. `prune` removes exactly those installations.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn the_pins_of_a_removed_cgroup_are_pruned_and_only_those() {
    let host = require_privileges("the_pins_of_a_removed_cgroup_are_pruned_and_only_those");
    let bpffs = TestBpffs::mounted();
    let kept = host.create_cgroup().expect("cgroup");
    let gone = host.create_cgroup().expect("cgroup");
    let plan = EbpfPlan::new(&seed_config());
    let target = |cgroup: &TestCgroup| Target::new(cgroup.path().to_str().unwrap(), Some(bpffs.path())).unwrap();
    let (kept_target, gone_target) = (target(&kept), target(&gone));
    let namespaces = [netns(), netns()];
    for (t, ns) in [&kept_target, &gone_target].into_iter().zip(&namespaces) {
        ebpf::apply(t, &plan, &task_addrs(), ns.open().as_fd(), ApplyOptions::default()).unwrap();
    }
    assert_eq!(ebpf::prune(bpffs.path()).unwrap(), Vec::<u64>::new(), "both cgroups exist");

    drop(gone);
    // The kernel detaches the links of a removed cgroup from a work queue.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let pruned = loop {
        let pruned = ebpf::prune(bpffs.path()).unwrap();
        if !pruned.is_empty() || std::time::Instant::now() > deadline {
            break pruned;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(pruned, [gone_target.cgroup_id]);
    assert!(!gone_target.pin_dir().exists());
    let status = ebpf::status(&kept_target).unwrap().expect("the other installation stays");
    assert!(status.programs.iter().all(|p| p.attached), "{status:?}");
    assert!(ebpf::remove(&kept_target).unwrap().any());
    assert!(bpffs.files().is_empty(), "{:?}", bpffs.files());
}

/// The tasks of a host share its programs, verified once and pinned beside the installations:
/// each task has links to them (and `sockops` and `sk_lookup` programs of its own).
/// Tasks that log share another set. The programs go with the last task that uses them.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn tasks_share_the_hosts_programs_which_go_with_the_last() {
    use intercept_tests::ebpf::{linked_programs, pins};
    let host = require_privileges("tasks_share_the_hosts_programs_which_go_with_the_last");
    let bpffs = TestBpffs::mounted();
    let cgroups = [host.create_cgroup().unwrap(), host.create_cgroup().unwrap(), host.create_cgroup().unwrap()];
    let namespaces = [netns(), netns(), netns()];
    let plan = EbpfPlan::new(&seed_config());
    let targets: Vec<Target> =
        cgroups.iter().map(|c| Target::new(c.path().to_str().unwrap(), Some(bpffs.path())).unwrap()).collect();
    for ((target, ns), bpf_log) in targets.iter().zip(&namespaces).zip([false, false, true]) {
        let applied = ebpf::apply(target, &plan, &task_addrs(), ns.open().as_fd(), ApplyOptions { bpf_log });
        applied.unwrap_or_else(|e| panic!("apply: {}", error_chain(&e)));
    }
    // The programs one installation's links run: (cgroup programs, sk_lookup program).
    let programs_of = |target: &Target| {
        let link = |program: Program| {
            let pin = target.pin_dir().join(program.link_pin());
            linked_programs(&[pin]).unwrap().into_iter().collect::<Vec<_>>()
        };
        let shared: std::collections::BTreeSet<u32> = Program::HOST.iter().flat_map(|&p| link(p)).collect();
        (shared, Program::PER_TASK.iter().flat_map(|&p| link(p)).collect::<Vec<_>>())
    };
    let (first, second, logging) = (programs_of(&targets[0]), programs_of(&targets[1]), programs_of(&targets[2]));
    assert_eq!(first.0.len(), Program::HOST.len(), "one program per host hook: {first:?}");
    assert_eq!(first.0, second.0, "two tasks run the same host programs");
    assert_eq!(first.1.len(), Program::PER_TASK.len());
    assert!(first.1.iter().all(|id| !second.1.contains(id)), "each task has its own sockops and sk_lookup programs");
    assert!(first.0.is_disjoint(&logging.0), "a task that logs runs programs that log: {logging:?}");
    let programs_dirs = |files: Vec<std::path::PathBuf>| {
        let mut dirs: Vec<_> = files
            .iter()
            .filter_map(|f| f.strip_prefix(bpffs.path().join("intercept")).ok())
            .filter_map(|f| f.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(ebpf::PROGRAMS_DIR))
            .collect();
        dirs.dedup();
        dirs
    };
    assert_eq!(programs_dirs(pins(bpffs.path()).unwrap()).len(), 2, "one set of programs per log setting");

    assert!(ebpf::remove(&targets[0]).unwrap().any());
    assert_eq!(programs_of(&targets[1]).0, first.0, "the other task still runs them");
    assert!(ebpf::remove(&targets[2]).unwrap().any());
    assert_eq!(programs_dirs(pins(bpffs.path()).unwrap()).len(), 1, "the logging programs went with their task");
    assert!(ebpf::remove(&targets[1]).unwrap().any());
    assert!(bpffs.files().is_empty(), "the programs go with the last task: {:?}", bpffs.files());
}

/// `remove` of a live task removes that task's installation and leaves the pins of an ended
/// task (whose links the kernel has detached) to the next apply: walking every installation on
/// the host would make each removal cost as much as the host's tasks. `remove` of a task whose
/// cgroup is gone cannot tell its own pins from the other ended tasks', so it prunes them all.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn remove_prunes_ended_tasks_only_when_its_own_cgroup_is_gone() {
    use intercept::backend::ebpf::task::{self as ebpf_task, Request};
    use intercept::netns::Target as NetnsTarget;
    let host = require_privileges("remove_prunes_ended_tasks_only_when_its_own_cgroup_is_gone");
    let bpffs = TestBpffs::mounted();
    let (live, ended) = (host.create_cgroup().expect("cgroup"), host.create_cgroup().expect("cgroup"));
    let namespaces = [netns(), netns()];
    let request = |cgroup: &std::path::Path, ns: &TestNetns| Request {
        cgroup: cgroup.to_str().unwrap().to_owned(),
        bpffs: Some(bpffs.path().to_owned()),
        netns: NetnsTarget::Path(ns.path()),
        iptables_mode: None,
        prune: true,
    };
    for (cgroup, ns) in [&live, &ended].into_iter().zip(&namespaces) {
        ebpf_task::apply(&request(cgroup.path(), ns), &seed_config(), ApplyOptions::default()).expect("apply");
    }
    let ended_path = ended.path().to_owned();
    let ended_id = intercept::cgroup::id(&ended_path).unwrap();
    let ended_dir = bpffs.path().join("intercept").join(ended_id.to_string());
    drop(ended);
    // The kernel detaches a removed cgroup's links from a work queue; until then its pins are
    // not yet an ended task's, and this test could not tell a walk from none.
    let link = ended_dir.join(Program::CGROUP[0].link_pin());
    let detached = || {
        let out = Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(&link).output();
        let out = out.expect("bpftool (package bpftool)");
        assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
        info["cgroup_id"] == 0
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !detached() {
        assert!(std::time::Instant::now() < deadline, "the kernel never detached the removed cgroup's links");
        std::thread::sleep(Duration::from_millis(20));
    }

    let report = ebpf_task::remove(&request(live.path(), &namespaces[0])).expect("remove the live task");
    assert!(report.removed && report.cgroup_exists, "{report:?}");
    assert!(report.pruned.is_empty(), "a live task's removal walked the others: {report:?}");
    assert!(ended_dir.is_dir(), "the ended task's pins went with another task's removal");

    let report = ebpf_task::remove(&request(&ended_path, &namespaces[1])).expect("remove the ended task");
    assert!(!report.cgroup_exists && !report.removed, "{report:?}");
    assert_eq!(report.pruned, [ended_id], "{report:?}");
    assert!(bpffs.files().is_empty(), "{:?}", bpffs.files());
}
