//! Differential testing with the decision model as the oracle: random configurations
//! (identities, port lists and ranges, CIDR sets of both families, ingress or not, IPv6 on
//! or off, implicit exemptions on or off) and random connections (identity, destination,
//! port, family, IPv4-mapped or not, egress or ingress). Each configuration is applied for
//! real with every backend in turn, in one sandbox; every connection must end where the
//! model says, and all backends must agree with each other.
//!
//! proptest shrinks a disagreement to a minimal configuration and connection list and saves
//! its seed in `tests/proptest-regressions/differential.txt`, which later runs replay first.
//! `INTERCEPT_SOAK_SECONDS=N` (what `cargo xtask soak --minutes` sets) keeps generating
//! batches until N seconds have passed; `PROPTEST_CASES` sets the batch size (default 32).
//!
//! Needs root, nft and a cgroup2 mount; every dialled address lives in the sandbox's remote
//! namespace (or is the task's own).

use std::{
    cell::RefCell,
    collections::BTreeMap,
    env, fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use intercept::{
    backend::{self, ApplyOptions, Backend, Kind},
    config::{Ingress, PortRange, PortSet, ProxyConfig},
    model::{Connection, Decision, Direction, Protocol, canonical, decide},
    netns,
    plan::Format,
};
use intercept_tests::{
    TestCgroup,
    ebpf::{Listener, TestBpffs, as_identity, error_chain},
    require_privileges,
    topology::{METADATA, REMOTE_V4, REMOTE_V6, TASK_V4, TASK_V6, Topology, require_nft},
    traffic::{Client, Reply, Role, Sandbox, SandboxSpec, Udp, egress, ingress},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::{
    prelude::*,
    sample::select,
    test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner},
};

/// Relative to the package directory, where `cargo test` runs the test.
const REGRESSIONS: &str = "proptest-regressions/differential.txt";

const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");
const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

const EGRESS_PORT: u16 = 15001;
const INGRESS_PORT: u16 = 15000;
const PROXY_UID: u32 = 1337;
const IGNORED_UID: u32 = 1337;
const IGNORED_GID: u32 = 1338;
/// Client identities: none, either and both of the exemptions.
/// A second ignored uid and gid, for IgnoredUID and IgnoredGID as lists.
const IGNORED_UID_2: u32 = 1339;
const IGNORED_GID_2: u32 = 1340;
/// The proxy's DNS listener.
const DNS_PORT: u16 = 15053;
const IDENTITIES: [(u32, u32); 6] = [
    (1000, 1000),
    (IGNORED_UID, 1000),
    (1000, IGNORED_GID),
    (IGNORED_UID, IGNORED_GID),
    (IGNORED_UID_2, 1000),
    (1000, IGNORED_GID_2),
];

/// Ports the remote servers listen on, on every remote address.
const REMOTE_PORTS: [u16; 5] = [22, 80, 443, 5432, 8080];
/// Ports the app listens on in the task; candidates for AppPorts.
const APP_PORTS: [u16; 3] = [9080, 9081, 9090];

const POOL_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 20, 0, 1),
    Ipv4Addr::new(10, 20, 0, 130),
    Ipv4Addr::new(10, 20, 1, 1),
    Ipv4Addr::new(10, 21, 0, 1),
];
const POOL_V6: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd20, 0, 0, 0, 0, 0, 0, 0x8001),
    Ipv6Addr::new(0xfd20, 0, 1, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd21, 0, 0, 0, 0, 0, 0, 1),
];

/// Every remote address a connection may dial (all on the remote namespace).
fn remote_destinations() -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = POOL_V4.iter().copied().map(IpAddr::V4).collect();
    all.extend(POOL_V6.iter().copied().map(IpAddr::V6));
    all.extend([IpAddr::V4(REMOTE_V4), IpAddr::V6(REMOTE_V6)]);
    all.extend(METADATA.iter().copied().map(IpAddr::V4));
    all
}

/// The task's own addresses, where only the app's ports answer.
fn local_destinations() -> Vec<IpAddr> {
    vec![IpAddr::V4(TASK_V4), IpAddr::V6(TASK_V6), IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
}

// ---------------------------------------------------------------------------------------
// What is generated

#[derive(Clone)]
enum Probe {
    /// From a client in the task's cgroup and namespace; `mapped` dials an IPv4 destination
    /// as `::ffff:a.b.c.d` from an IPv6 socket; `udp` sends a datagram (DNS) instead.
    Egress { uid: u32, gid: u32, destination: SocketAddr, mapped: bool, udp: Option<Udp> },
    /// From the remote namespace to the task.
    Ingress { destination: SocketAddr },
}

impl Probe {
    fn dialled(&self) -> SocketAddr {
        match *self {
            Probe::Egress { destination: SocketAddr::V4(v4), mapped: true, .. } => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            Probe::Egress { destination, .. } | Probe::Ingress { destination } => destination,
        }
    }

    /// The connection as the model sees it (IPv4-mapped destinations are IPv4 connections).
    fn connection(&self) -> Connection {
        match *self {
            Probe::Egress { uid, gid, destination, udp, .. } => {
                let source = if destination.is_ipv4() { IpAddr::V4(TASK_V4) } else { IpAddr::V6(TASK_V6) };
                let protocol = if udp.is_some() { Protocol::Udp } else { Protocol::Tcp };
                let destination = SocketAddr::new(canonical(destination.ip()), destination.port());
                Connection { protocol, ..egress(uid, gid, source, destination) }
            }
            Probe::Ingress { destination } => {
                let source = if destination.is_ipv4() { IpAddr::V4(REMOTE_V4) } else { IpAddr::V6(REMOTE_V6) };
                ingress(source, destination)
            }
        }
    }
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Egress { uid, gid, udp: None, .. } => write!(f, "egress {uid}:{gid} → {}", self.dialled()),
            Probe::Egress { uid, gid, udp: Some(udp), .. } => {
                write!(f, "egress {uid}:{gid} → {} (UDP, {udp:?})", self.dialled())
            }
            Probe::Ingress { destination } => write!(f, "ingress → {destination}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    config: ProxyConfig,
    probes: Vec<Probe>,
}

fn port_set() -> impl Strategy<Value = PortSet> {
    let entry = prop_oneof![
        select(REMOTE_PORTS.to_vec()).prop_map(PortRange::single),
        (1u16..600, 0u16..200).prop_map(|(start, len)| PortRange { start, end: start + len }),
        Just(PortRange { start: 5000, end: 6000 }),
    ];
    prop::collection::vec(entry, 0..4).prop_map(PortSet::from_ranges)
}

/// Networks around the pool's addresses (so that destinations fall inside some and outside
/// others), and now and then one that covers a whole family.
fn networks() -> impl Strategy<Value = Vec<IpNet>> {
    let mut v4: Vec<Ipv4Addr> = POOL_V4.to_vec();
    v4.extend([REMOTE_V4, METADATA[0]]);
    let mut v6: Vec<Ipv6Addr> = POOL_V6.to_vec();
    v6.push(REMOTE_V6);
    let net = prop_oneof![
        4 => (select(v4), 8u8..=32).prop_map(|(ip, len)| IpNet::V4(Ipv4Net::new(ip, len).unwrap().trunc())),
        4 => (select(v6), 16u8..=128).prop_map(|(ip, len)| IpNet::V6(Ipv6Net::new(ip, len).unwrap().trunc())),
        1 => Just("0.0.0.0/0".parse().unwrap()),
        1 => Just("::/0".parse().unwrap()),
    ];
    prop::collection::vec(net, 0..5).prop_map(|mut nets| {
        nets.sort();
        nets.dedup();
        nets
    })
}

fn config() -> impl Strategy<Value = ProxyConfig> {
    let identities = prop_oneof![
        Just((vec![IGNORED_UID], vec![])),
        Just((vec![], vec![IGNORED_GID])),
        Just((vec![IGNORED_UID], vec![IGNORED_GID])),
        Just((vec![IGNORED_UID, IGNORED_UID_2], vec![IGNORED_GID, IGNORED_GID_2])),
        Just((vec![IGNORED_UID_2], vec![IGNORED_GID])),
    ];
    let app_ports =
        prop::collection::vec(
            prop_oneof![
                select(APP_PORTS.to_vec()).prop_map(PortRange::single),
                Just(PortRange { start: 9080, end: 9085 }),
            ],
            1..3,
        )
        .prop_map(PortSet::from_ranges);
    (
        identities,
        port_set(),
        networks(),
        prop::option::weighted(0.7, app_ports),
        (prop::bool::weighted(0.8), prop::bool::weighted(0.85)),
        prop::option::weighted(0.5, Just(DNS_PORT)),
        prop::option::weighted(0.3, networks()),
    )
        .prop_map(|((uids, gids), ignored_ports, ignored_ips, app_ports, (implicit, ipv6), dns, included)| {
            ProxyConfig {
                ignored_uids: uids,
                ignored_gids: gids,
                ingress: app_ports.map(|app_ports| Ingress { proxy_port: INGRESS_PORT, app_ports }),
                egress_ignored_ports: ignored_ports,
                egress_ignored_ips: ignored_ips,
                egress_included_ips: included,
                proxy_dns_port: dns,
                implicit_exemptions: implicit,
                ipv6,
                ..ProxyConfig::new(EGRESS_PORT)
            }
        })
}

fn probe() -> impl Strategy<Value = Probe> {
    // Mostly the app's identity, whose connections the exemptions by address and port decide.
    let identity = || prop_oneof![3 => Just(IDENTITIES[0]), 1 => select(IDENTITIES[1..].to_vec())];
    let remote = (identity(), select(remote_destinations()), select(REMOTE_PORTS.to_vec()));
    let local = (identity(), select(local_destinations()), select(APP_PORTS.to_vec()));
    let egress = prop_oneof![3 => remote, 1 => local];
    // DNS goes to the remote servers' addresses (where UDP port 53 answers), over UDP from
    // either kind of socket, or over TCP.
    let dns_servers: Vec<IpAddr> =
        remote_destinations().into_iter().filter(|ip| !METADATA.iter().any(|m| IpAddr::V4(*m) == *ip)).collect();
    let udp = prop_oneof![Just(Some(Udp::Unconnected)), Just(Some(Udp::Connected)), Just(None)];
    let dns = (identity(), select(dns_servers), udp, prop::bool::weighted(0.25));
    prop_oneof![
        3 => (egress, prop::bool::weighted(0.25)).prop_map(|(((uid, gid), ip, port), mapped)| Probe::Egress {
            uid,
            gid,
            destination: SocketAddr::new(ip, port),
            mapped: mapped && ip.is_ipv4(),
            udp: None,
        }),
        1 => dns.prop_map(|((uid, gid), ip, udp, mapped)| Probe::Egress {
            uid,
            gid,
            destination: SocketAddr::new(ip, 53),
            mapped: mapped && ip.is_ipv4(),
            udp,
        }),
        1 => (select(vec![IpAddr::V4(TASK_V4), IpAddr::V6(TASK_V6)]), select(APP_PORTS.to_vec()))
            .prop_map(|(ip, port)| Probe::Ingress { destination: SocketAddr::new(ip, port) }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (config(), prop::collection::vec(probe(), 1..20)).prop_map(|(config, probes)| Case { config, probes })
}

// ---------------------------------------------------------------------------------------
// The sandbox and the backends

/// The sandbox every backend runs in: both namespaces, the app's and the remote servers'
/// listeners, a test cgroup and bpffs (eBPF), and the proxy's listeners as processes in the
/// cgroup (the eBPF programs see a proxy's sockets only there) and as IgnoredUID. The ingress
/// proxy listens on the task's own addresses: where REDIRECT sends inbound connections, and
/// sockets that `sk_lookup` can assign any inbound connection to.
struct World {
    // Drop order: the proxy processes, then the pins, the cgroup, the namespaces.
    _proxies: [Listener; 3],
    bpffs: TestBpffs,
    cgroup: TestCgroup,
    sandbox: Sandbox,
}

impl World {
    fn new(cgroup: TestCgroup) -> World {
        let sandbox = Sandbox::new(&SandboxSpec {
            egress_proxy_ports: vec![],
            ingress_proxy_ports: vec![],
            app_ports: APP_PORTS.to_vec(),
            remote_ports: REMOTE_PORTS.to_vec(),
            remote_addresses: POOL_V4
                .iter()
                .copied()
                .map(IpAddr::V4)
                .chain(POOL_V6.iter().copied().map(IpAddr::V6))
                .collect(),
            remote_dns: true,
            ..SandboxSpec::default()
        });
        let proxy = |role: Role, addresses: &[String]| {
            let mut command = cgroup.command(PROBE);
            command.arg("serve").arg(role.name()).args(addresses);
            sandbox.task().enter(&mut command);
            as_identity(&mut command, PROXY_UID, PROXY_UID);
            Listener::spawn(command)
        };
        let loopback = |port: u16| [format!("127.0.0.1:{port}"), format!("[::1]:{port}")];
        let dns = [loopback(DNS_PORT), loopback(DNS_PORT).map(|a| format!("udp:{a}"))].concat();
        let proxies = [
            proxy(Role::EgressProxy, &loopback(EGRESS_PORT)),
            proxy(Role::IngressProxy, &[format!("{TASK_V4}:{INGRESS_PORT}"), format!("[{TASK_V6}]:{INGRESS_PORT}")]),
            proxy(Role::DnsProxy, &dns),
        ];
        World { _proxies: proxies, bpffs: TestBpffs::mounted(), cgroup, sandbox }
    }

    /// Where every backend works: the task namespace, the test cgroup, the test bpffs.
    fn target(&self) -> backend::Target {
        backend::Target {
            cgroup: Some(self.cgroup.path().to_str().expect("UTF-8 cgroup path").to_owned()),
            options: backend::Options {
                ebpf: backend::EbpfOptions { bpffs: Some(self.bpffs.path().to_owned()), pruned_by_caller: false },
                ..backend::Options::default()
            },
            ..backend::Target::netns(netns::Target::Path(self.sandbox.task().path()))
        }
    }

    /// Every backend (or those `INTERCEPT_DIFFERENTIAL_BACKENDS` names, comma-separated: the
    /// kernel matrix runs eBPF alone), through the interface the CLI and the daemon use.
    fn backends(&self) -> Vec<Box<dyn Backend>> {
        let only = env::var("INTERCEPT_DIFFERENTIAL_BACKENDS").ok();
        Kind::ALL
            .iter()
            .filter(|kind| only.as_deref().is_none_or(|only| only.split(',').any(|n| n == kind.name())))
            .map(|&kind| backend::open(kind, &self.target()).expect("open the backend"))
            .collect()
    }

    /// What any backend left: anything it says is installed, or anything pinned in the bpffs.
    fn leftovers(&self, backend: &dyn Backend) -> Option<String> {
        if backend.present().expect("look for leftovers") {
            return Some(backend.status(None).expect("status").report.render(Format::Text));
        }
        let files = self.bpffs.files();
        (!files.is_empty()).then(|| format!("pinned: {files:?}"))
    }

    fn connect(&self, probe: &Probe) -> Result<Reply, String> {
        let client = Client::new(CLIENT);
        match *probe {
            Probe::Egress { uid, gid, udp, .. } => {
                let client = client.netns(self.sandbox.task()).cgroup(&self.cgroup).identity(uid, gid);
                match udp {
                    Some(udp) => client.udp(udp).connect(probe.dialled()),
                    None => client.connect(probe.dialled()),
                }
            }
            Probe::Ingress { .. } => client.netns(self.sandbox.remote()).connect(probe.dialled()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Judging what happened

/// What a connection did, in the terms every backend shares: who answered, and what a proxy
/// read as the original destination or where an untouched connection arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Proxy { role: Role, original: Option<SocketAddr>, from: Option<SocketAddr> },
    Delivered { role: Role, local: SocketAddr, from: Option<SocketAddr> },
    Failed(String),
}

fn seen(reply: &Result<Reply, String>) -> Seen {
    match reply {
        Ok(r) if r.role.is_proxy() => Seen::Proxy { role: r.role, original: r.original, from: r.from },
        Ok(r) => Seen::Delivered { role: r.role, local: r.local, from: r.from },
        Err(e) => Seen::Failed(e.clone()),
    }
}

/// Whether `reply` is what the model's `decision` means for this backend. A redirect reaches
/// the proxy, which reads the destination the client dialled; egress arrives at the proxy's
/// loopback port; inbound arrives at ProxyIngressPort on the dialled address (REDIRECT),
/// or, with eBPF, unchanged on the proxy's socket (`sk_lookup` assigns the connection, the
/// packet is not rewritten). An untouched connection arrives at its destination.
fn judge(backend: Kind, decision: &Decision, connection: &Connection, reply: &Reply) -> Result<(), String> {
    let wrong = |what: &str| Err(format!("{what}: the model says {decision}, but {reply} answered"));
    // A dual-stack socket sees an IPv4 server as `::ffff:a.b.c.d`: the same server.
    let from = reply.from.map(|a| SocketAddr::new(canonical(a.ip()), a.port()));
    match decision {
        Decision::Redirect { to } => {
            let proxy = match connection.direction {
                Direction::Egress if to.port() == DNS_PORT => Role::DnsProxy,
                Direction::Egress => Role::EgressProxy,
                Direction::Ingress => Role::IngressProxy,
            };
            let arrived_at = match (connection.direction, backend) {
                (Direction::Ingress, Kind::Ebpf) => connection.destination,
                _ => *to,
            };
            if reply.role != proxy {
                return wrong("not redirected to the proxy");
            }
            if reply.local != arrived_at {
                return wrong(&format!("arrived at {} instead of {arrived_at}", reply.local));
            }
            if connection.protocol == Protocol::Udp {
                // A resolver accepts only a reply from the server it asked.
                if from != Some(connection.destination) {
                    return wrong("the reply did not come from the server asked");
                }
            } else if reply.original != Some(connection.destination) {
                return wrong("the proxy read the wrong original destination");
            }
        }
        Decision::Untouched { .. } => {
            if reply.role.is_proxy() {
                return wrong("redirected");
            }
            if reply.local != connection.destination {
                return wrong("delivered somewhere else");
            }
            if connection.protocol == Protocol::Udp && from != Some(connection.destination) {
                return wrong("the reply came from somewhere else");
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    cases: usize,
    connections: usize,
    redirected: usize,
    /// Of those, DNS datagrams sent to the DNS port.
    dns_datagrams_redirected: usize,
    by_backend: BTreeMap<Kind, usize>,
}

/// Applies the case's configuration with each backend, runs its connections, removes it
/// again; fails with every disagreement with the model or between backends.
fn run_case(world: &World, case: &Case, tally: &mut Tally) -> Result<(), TestCaseError> {
    let local = Topology::task_local_addrs();
    let decisions: Vec<Decision> = case.probes.iter().map(|p| decide(&case.config, &local, &p.connection())).collect();
    let mut problems = Vec::new();
    let mut seen_by: Vec<(Kind, Vec<Seen>)> = Vec::new();
    for handle in world.backends() {
        let backend = handle.kind();
        if let Err(e) = handle.apply(&case.config, ApplyOptions::default()) {
            return Err(TestCaseError::fail(format!("{backend:?} apply: {}", error_chain(&e))));
        }
        let mut observed = Vec::new();
        for (probe, decision) in case.probes.iter().zip(&decisions) {
            let reply = world.connect(probe);
            let verdict = match &reply {
                Ok(r) => judge(backend, decision, &probe.connection(), r),
                Err(e) => Err(format!("the connection failed: {e}; the model says {decision}")),
            };
            if let Err(e) = verdict {
                problems.push(format!("{backend:?}: {probe:?}: {e}"));
            }
            observed.push(seen(&reply));
        }
        *tally.by_backend.entry(backend).or_default() += observed.len();
        seen_by.push((backend, observed));
        if let Err(e) = handle.remove(false) {
            return Err(TestCaseError::fail(format!("{backend:?} remove: {}", error_chain(&e))));
        }
        if let Some(left) = world.leftovers(handle.as_ref()) {
            return Err(TestCaseError::fail(format!("{backend:?} left something after remove: {left}")));
        }
    }
    // The backends against each other, connection by connection (an inbound redirect arrives
    // at a different local address by design; `Seen` leaves it out).
    let (first, reference) = &seen_by[0];
    for (backend, observed) in &seen_by[1..] {
        for ((probe, a), b) in case.probes.iter().zip(reference).zip(observed) {
            if a != b {
                problems.push(format!("{probe:?}: {first:?} saw {a:?} but {backend:?} saw {b:?}"));
            }
        }
    }
    tally.cases += 1;
    tally.connections += case.probes.len();
    tally.redirected += decisions.iter().filter(|d| matches!(d, Decision::Redirect { .. })).count();
    tally.dns_datagrams_redirected += case
        .probes
        .iter()
        .zip(&decisions)
        .filter(|(p, d)| matches!(p, Probe::Egress { udp: Some(_), .. }) && matches!(d, Decision::Redirect { .. }))
        .count();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!("{} disagreement(s):\n{}", problems.len(), problems.join("\n"))))
    }
}

fn batch_size() -> u32 {
    env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

fn soak_seconds() -> Option<u64> {
    let value = env::var("INTERCEPT_SOAK_SECONDS").ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("INTERCEPT_SOAK_SECONDS={value:?} is not a number of seconds")))
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn every_backend_agrees_with_the_model_on_random_configurations() {
    let test = "every_backend_agrees_with_the_model_on_random_configurations";
    let host = require_privileges(test);
    require_nft(test);
    let world = World::new(host.create_cgroup().expect("create a test cgroup"));
    let started = Instant::now();
    let deadline = soak_seconds().map(|s| started + Duration::from_secs(s));
    let tally = RefCell::new(Tally::default());
    let mut batches = 0;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: batch_size(),
            // A disagreement is saved (as the seed of its shrunk case) next to this file and
            // replayed first by every later run.
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
            max_shrink_iters: 200,
            ..Config::default()
        });
        let result = runner.run(&case(), |case| run_case(&world, &case, &mut tally.borrow_mut()));
        batches += 1;
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, case)) => {
                panic!("a disagreement, shrunk to:\n{case:#?}\n{reason}")
            }
            Err(TestError::Abort(reason)) => panic!("aborted: {reason}"),
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    for backend in world.backends() {
        assert_eq!(world.leftovers(backend.as_ref()), None, "{:?}", backend.kind());
    }
    let tally = tally.into_inner();
    eprintln!(
        "differential: {} configurations in {batches} batch(es), {} connections ({} redirected by the model, {} of \
         them DNS datagrams) through each of {:?}, {} connections in all, 0 disagreements, {:.1} s",
        tally.cases,
        tally.connections,
        tally.redirected,
        tally.dns_datagrams_redirected,
        tally.by_backend.keys().collect::<Vec<_>>(),
        tally.by_backend.values().sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    assert!(tally.cases >= batch_size() as usize, "ran {} configurations", tally.cases);
}

#[test]
fn judge_tells_the_backends_apart_where_they_differ_by_design() {
    // Not privileged: checks that `judge` can fail, for each way a connection can go wrong.
    let config = ProxyConfig {
        ignored_uids: vec![IGNORED_UID],
        ingress: Some(Ingress { proxy_port: INGRESS_PORT, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        ..ProxyConfig::new(EGRESS_PORT)
    };
    let local = Topology::task_local_addrs();
    let inbound = SocketAddr::new(IpAddr::V4(TASK_V4), 9080);
    let connection = Probe::Ingress { destination: inbound }.connection();
    let decision = decide(&config, &local, &connection);
    let at = |role, local, original| Reply { role, local, original, from: None };
    let redirected = at(Role::IngressProxy, SocketAddr::new(inbound.ip(), INGRESS_PORT), Some(inbound));
    let assigned = at(Role::IngressProxy, inbound, Some(inbound));
    assert_eq!(judge(Kind::Iptables, &decision, &connection, &redirected), Ok(()));
    assert!(judge(Kind::Iptables, &decision, &connection, &assigned).is_err());
    assert_eq!(judge(Kind::Ebpf, &decision, &connection, &assigned), Ok(()));
    assert!(judge(Kind::Ebpf, &decision, &connection, &redirected).is_err());
    assert!(judge(Kind::Nftables, &decision, &connection, &at(Role::App, inbound, None)).is_err());
    let wrong_original = at(Role::IngressProxy, inbound, Some(SocketAddr::new(inbound.ip(), 9081)));
    assert!(judge(Kind::Ebpf, &decision, &connection, &wrong_original).is_err());

    let outbound = SocketAddr::new(IpAddr::V4(POOL_V4[0]), 80);
    let connection =
        Probe::Egress { uid: 1000, gid: 1000, destination: outbound, mapped: true, udp: None }.connection();
    assert_eq!(connection.destination, outbound, "an IPv4-mapped destination is an IPv4 connection");
    let decision = decide(&config, &local, &connection);
    let proxy = at(Role::EgressProxy, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), EGRESS_PORT), Some(outbound));
    assert_eq!(judge(Kind::Ebpf, &decision, &connection, &proxy), Ok(()));
    assert!(judge(Kind::Ebpf, &decision, &connection, &at(Role::Remote, outbound, None)).is_err());
    let ignored =
        Probe::Egress { uid: IGNORED_UID, gid: 1000, destination: outbound, mapped: false, udp: None }.connection();
    let decision = decide(&config, &local, &ignored);
    assert!(judge(Kind::Iptables, &decision, &ignored, &proxy).is_err());
    assert_eq!(judge(Kind::Iptables, &decision, &ignored, &at(Role::Remote, outbound, None)), Ok(()));

    // DNS over UDP: the reply must come from the server asked, redirected or not.
    let config = ProxyConfig { proxy_dns_port: Some(DNS_PORT), ..config };
    let server = SocketAddr::new(IpAddr::V4(POOL_V4[0]), 53);
    let query = Probe::Egress { uid: 1000, gid: 1000, destination: server, mapped: false, udp: Some(Udp::Connected) };
    let connection = query.connection();
    let decision = decide(&config, &local, &connection);
    let dns_proxy = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT);
    let answered = |from| Reply { role: Role::DnsProxy, local: dns_proxy, original: None, from: Some(from) };
    assert_eq!(judge(Kind::Ebpf, &decision, &connection, &answered(server)), Ok(()));
    assert!(judge(Kind::Ebpf, &decision, &connection, &answered(dns_proxy)).is_err(), "the loopback source shows");
    let direct = Reply { role: Role::Remote, local: server, original: None, from: Some(server) };
    assert!(judge(Kind::Nftables, &decision, &connection, &direct).is_err(), "not captured");
}
