//! eBPF mode on the shared two-namespace topology (`intercept_tests::topology`): the programs on
//! a test cgroup for egress, the `sk_lookup` program on the task namespace for inbound, real
//! connections from clients in the cgroup (egress) and from the remote namespace (ingress), and
//! every outcome compared with the decision model, IPv4, IPv6 and IPv4-mapped.
//!
//! Both proxies are processes in the cgroup (`intercept-ebpf-probe serve`): the programs see a
//! proxy's sockets, and answer its `SO_ORIGINAL_DST`, only there.
//!
//! Needs root; every dialled address lives in the test's own namespaces.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use intercept::{
    backend::ebpf::{self, Counter, Outcome, task},
    config::{IngressFallback, ProxyConfig},
    model::{self, Decision, Reason, decide},
};
use intercept_tests::{
    ebpf::{APP_PORT, EbpfSandbox, IGNORED_V4, IGNORED_V6, OTHER_APP_PORT, PLAIN_V4, PLAIN_V6, PROXY_UID, seed_config},
    require_privileges,
    topology::{METADATA, REMOTE_V4, REMOTE_V6, TASK_V4, TASK_V6, Topology},
    traffic::{Role, agrees, egress, ingress},
};

const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");
const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const APP_UID: u32 = 1000;
const IGNORED_GID: u32 = 1338;

fn mapped(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V6(v4.to_ipv6_mapped())
}

fn counter_of(reason: Reason) -> Counter {
    match reason {
        Reason::Ipv6Disabled => Counter::Ipv6Disabled,
        Reason::LocalDestination => Counter::LocalDestination,
        Reason::IgnoredUid => Counter::IgnoredUid,
        Reason::IgnoredGid => Counter::IgnoredGid,
        Reason::IgnoredPort => Counter::IgnoredPort,
        Reason::IgnoredIp => Counter::IgnoredIp,
        other => panic!("{other:?} is not an egress reason the programs count"),
    }
}

/// One egress case: a name, the client's identity, where it dials.
type Case = (&'static str, u32, u32, SocketAddr);

fn egress_cases() -> Vec<Case> {
    let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
    let (plain4, plain6, ignored4, ignored6) =
        (IpAddr::V4(PLAIN_V4), IpAddr::V6(PLAIN_V6), IpAddr::V4(IGNORED_V4), IpAddr::V6(IGNORED_V6));
    vec![
        ("plain v4", APP_UID, APP_UID, at(plain4, 80)),
        ("plain v6", APP_UID, APP_UID, at(plain6, 80)),
        ("plain mapped", APP_UID, APP_UID, at(mapped(PLAIN_V4), 80)),
        ("gateway v4", APP_UID, APP_UID, at(IpAddr::V4(REMOTE_V4), 80)),
        ("gateway v6", APP_UID, APP_UID, at(IpAddr::V6(REMOTE_V6), 80)),
        ("ignored uid v4", PROXY_UID, APP_UID, at(plain4, 80)),
        ("ignored uid v6", PROXY_UID, APP_UID, at(plain6, 80)),
        ("ignored uid mapped", PROXY_UID, APP_UID, at(mapped(PLAIN_V4), 80)),
        ("ignored gid v4", APP_UID, IGNORED_GID, at(plain4, 80)),
        ("ignored gid v6", APP_UID, IGNORED_GID, at(plain6, 80)),
        ("ignored port v4", APP_UID, APP_UID, at(plain4, 5432)),
        ("ignored port v6", APP_UID, APP_UID, at(plain6, 5432)),
        ("ignored port mapped", APP_UID, APP_UID, at(mapped(PLAIN_V4), 5432)),
        ("port 22 v4", APP_UID, APP_UID, at(plain4, 22)),
        ("port 22 v6", APP_UID, APP_UID, at(plain6, 22)),
        ("ignored cidr v4", APP_UID, APP_UID, at(ignored4, 80)),
        ("ignored cidr v6", APP_UID, APP_UID, at(ignored6, 80)),
        ("ignored cidr mapped", APP_UID, APP_UID, at(mapped(IGNORED_V4), 80)),
        ("metadata", APP_UID, APP_UID, at(IpAddr::V4(METADATA[1]), 80)),
        ("metadata mapped", APP_UID, APP_UID, at(mapped(METADATA[0]), 80)),
        ("task address v4", APP_UID, APP_UID, at(IpAddr::V4(TASK_V4), APP_PORT)),
        ("task address v6", APP_UID, APP_UID, at(IpAddr::V6(TASK_V6), APP_PORT)),
        ("task address mapped", APP_UID, APP_UID, at(mapped(TASK_V4), APP_PORT)),
        ("loopback v4", APP_UID, APP_UID, at(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), APP_PORT)),
        ("loopback v6", APP_UID, APP_UID, at(IpAddr::V6(Ipv6Addr::LOCALHOST), APP_PORT)),
    ]
}

/// Runs every case, checks each against the model, and returns the counters it expects.
fn check_egress(world: &EbpfSandbox, config: &ProxyConfig, cases: &[Case]) -> BTreeMap<Counter, u64> {
    let local = Topology::task_local_addrs();
    let mut expected = BTreeMap::new();
    let mut failures = Vec::new();
    for &(name, uid, gid, dst) in cases {
        // The model and the replies speak of the address the kernel uses: IPv4-mapped
        // destinations are IPv4 connections.
        let canonical = SocketAddr::new(model::canonical(dst.ip()), dst.port());
        let source = if canonical.is_ipv4() { IpAddr::V4(TASK_V4) } else { IpAddr::V6(TASK_V6) };
        let connection = egress(uid, gid, source, canonical);
        let decision = decide(config, &local, &connection);
        let outcome = world.egress(uid, gid, dst).and_then(|reply| agrees(&decision, &connection, &reply));
        if let Err(e) = outcome {
            failures.push(format!("{name} ({uid}:{gid} → {dst}): {e}"));
        }
        match decision {
            Decision::Redirect { .. } => {
                *expected.entry(Counter::Redirected).or_default() += 1;
                *expected.entry(Counter::OrigDstHit).or_default() += 1;
            }
            Decision::Untouched { reason } => *expected.entry(counter_of(reason)).or_default() += 1,
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with the model:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    expected
}

fn counters(world: &EbpfSandbox) -> BTreeMap<Counter, u64> {
    let status = ebpf::status(&world.target()).unwrap().expect("installed");
    status.counters.into_iter().filter(|(_, v)| *v != 0).collect()
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn every_egress_decision_reason_matches_the_model_ipv4_ipv6_and_mapped() {
    let host = require_privileges("every_egress_decision_reason_matches_the_model_ipv4_ipv6_and_mapped");
    let world = EbpfSandbox::new(&host, PROBE, CLIENT);
    let config = seed_config();
    let report = world.apply(&config);
    assert_eq!(report.outcome, Outcome::Installed);
    let mut local = report.local_addresses.clone();
    local.retain(|a| !a.is_loopback() && !matches!(a, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80));
    assert_eq!(local, [IpAddr::V4(TASK_V4), IpAddr::V6(TASK_V6)], "the task namespace's own addresses");
    let expected = check_egress(&world, &config, &egress_cases());
    assert_eq!(counters(&world), expected, "counters by reason");

    // IPv6 interception switched off: IPv6 destinations are left alone, IPv4-mapped ones are
    // IPv4 connections and still intercepted.
    let mut v4_only = config.clone();
    v4_only.ipv6 = false;
    assert!(matches!(world.apply(&v4_only).outcome, Outcome::Updated(_)));
    let before = counters(&world);
    let expected = check_egress(&world, &v4_only, &egress_cases());
    let after = counters(&world);
    let delta: BTreeMap<Counter, u64> =
        after.iter().map(|(c, v)| (*c, v - before.get(c).copied().unwrap_or(0))).filter(|(_, v)| *v != 0).collect();
    assert_eq!(delta, expected, "counters by reason with IPv6 off");
    assert!(delta.contains_key(&Counter::Ipv6Disabled));
}

/// The sandbox's inbound cases: each AppPort-or-not destination, IPv4 and IPv6, and what the
/// model decides for a connection to it from the remote namespace.
fn ingress_cases(config: &ProxyConfig) -> Vec<(SocketAddr, bool)> {
    let local = Topology::task_local_addrs();
    let remote_of = |dst: &SocketAddr| if dst.is_ipv4() { IpAddr::V4(REMOTE_V4) } else { IpAddr::V6(REMOTE_V6) };
    [
        SocketAddr::new(IpAddr::V4(TASK_V4), APP_PORT),
        SocketAddr::new(IpAddr::V6(TASK_V6), APP_PORT),
        SocketAddr::new(IpAddr::V4(TASK_V4), OTHER_APP_PORT),
        SocketAddr::new(IpAddr::V6(TASK_V6), OTHER_APP_PORT),
    ]
    .into_iter()
    .map(|dst| (dst, matches!(decide(config, &local, &ingress(remote_of(&dst), dst)), Decision::Redirect { .. })))
    .collect()
}

/// Inbound connections from the remote namespace: steered ones reach the ingress proxy at the
/// address the client dialled (`sk_lookup` assigns the connection, the packet is not
/// rewritten) and the proxy reads that address as the original destination; others reach the
/// app. Returns how many were steered.
fn check_ingress(world: &EbpfSandbox, config: &ProxyConfig) -> usize {
    let mut steered = 0;
    for (dst, redirect) in ingress_cases(config) {
        let reply = world.ingress(dst).unwrap_or_else(|e| panic!("ingress to {dst}: {e}"));
        if redirect {
            steered += 1;
            assert_eq!(reply.role, Role::IngressProxy, "ingress to {dst}: {reply}");
            assert_eq!(reply.local, dst, "ingress to {dst}: the proxy's socket has the dialled address: {reply}");
            assert_eq!(reply.original, Some(dst), "ingress to {dst}: SO_ORIGINAL_DST: {reply}");
        } else {
            assert_eq!(reply.role, Role::App, "ingress to {dst}: {reply}");
            assert_eq!(reply.local, dst, "ingress to {dst}: {reply}");
        }
    }
    steered
}

/// The task namespace holds no netfilter state of intercept's: no nftables table at all (the
/// iptables-nft tables are nftables tables) and no legacy nat table.
fn assert_no_netfilter(world: &EbpfSandbox) {
    let ruleset = world.sandbox.task().exec("nft", &["list", "ruleset"]);
    assert!(ruleset.trim().is_empty(), "nftables ruleset in the task namespace: {ruleset}");
    let legacy = world.sandbox.task().run(|| std::fs::read_to_string("/proc/thread-self/net/ip_tables_names"));
    if let Ok(names) = legacy {
        assert!(!names.lines().any(|t| t == "nat"), "legacy iptables nat table in the task namespace: {names}");
    }
}

fn sk_lookup_programs(world: &EbpfSandbox) -> Vec<u32> {
    ebpf::attached_programs(&world.sandbox.task().path(), ebpf::Program::SkLookup.attach_type())
        .expect("query the task namespace's sk_lookup programs")
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn ingress_is_steered_by_sk_lookup_without_netfilter() {
    let host = require_privileges("ingress_is_steered_by_sk_lookup_without_netfilter");
    // The ingress proxy listens before the programs exist: apply finds its listeners.
    let world = EbpfSandbox::new(&host, PROBE, CLIENT);
    let config = seed_config();
    let report = world.apply(&config);
    assert_eq!(report.outcome, Outcome::Installed);
    let adopted = report.adopted.as_ref().expect("ingress is configured");
    assert_eq!(adopted.listeners.len(), 2, "the proxy's IPv4 and IPv6 listeners: {adopted:?}");
    assert!(adopted.problems.is_empty(), "{adopted:?}");
    assert_eq!(sk_lookup_programs(&world).len(), 1, "one sk_lookup program on the task namespace");
    assert_no_netfilter(&world);

    assert_eq!(check_ingress(&world, &config), 2, "one AppPort connection per family");
    let c = counters(&world);
    assert_eq!(c.get(&Counter::IngressSteered), Some(&2), "{c:?}");
    assert_eq!(c.get(&Counter::OrigDstIngress), Some(&2), "{c:?}");

    // From inside the task, AppPorts are the app's: loopback (the proxy's own connections to
    // the app) and the task's own addresses are local sources.
    for dst in [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), APP_PORT),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), APP_PORT),
        SocketAddr::new(IpAddr::V4(TASK_V4), APP_PORT),
        SocketAddr::new(IpAddr::V6(TASK_V6), APP_PORT),
    ] {
        for uid in [APP_UID, PROXY_UID] {
            let reply = world.egress(uid, uid, dst).unwrap_or_else(|e| panic!("from the task to {dst}: {e}"));
            assert_eq!((reply.role, reply.local), (Role::App, dst), "from the task (uid {uid}) to {dst}: {reply}");
        }
    }
    assert_eq!(counters(&world).get(&Counter::IngressSteered), Some(&2), "nothing more steered");

    // Status shows the ingress program and its counters.
    let status = task::status(&world.request(), Some(&config)).unwrap();
    assert_eq!(status.exit_code(), 0, "{}", status.render_text());
    let text = status.render_text();
    assert!(text.contains("sk_lookup") && text.contains("steer_ingress"), "{text}");
    assert!(text.contains("ingress-steered") && text.contains("to the proxy's listener on 15000"), "{text}");

    // The proxy restarts: meanwhile AppPort connections are refused; then steered again, the
    // new listeners taken by the sockops program as they start listening.
    world.stop_ingress_proxy();
    for (dst, redirect) in ingress_cases(&config) {
        let outcome = world.ingress(dst);
        if redirect {
            let e = outcome.expect_err("refused while the proxy is away");
            assert!(e.contains("refused"), "ingress to {dst} while the proxy is away: {e}");
        } else {
            assert_eq!(outcome.map(|r| r.role), Ok(Role::App), "ingress to {dst}");
        }
    }
    assert_eq!(counters(&world).get(&Counter::IngressRefused), Some(&2));
    world.start_ingress_proxy();
    assert_eq!(check_ingress(&world, &config), 2, "steered again after the restart");

    // IngressFallback app: during the gap, AppPort connections reach the app.
    let to_app = ProxyConfig { ingress_fallback: IngressFallback::App, ..config.clone() };
    let report = task::apply(&world.request(), &to_app, Default::default()).unwrap();
    assert!(matches!(report.outcome, Outcome::Updated(_)), "the fallback is in CONFIG");
    world.stop_ingress_proxy();
    for (dst, _) in ingress_cases(&config) {
        let reply = world.ingress(dst).unwrap_or_else(|e| panic!("ingress to {dst} with fallback app: {e}"));
        assert_eq!((reply.role, reply.local), (Role::App, dst), "{reply}");
    }
    assert_eq!(counters(&world).get(&Counter::IngressToApp), Some(&2));
    world.start_ingress_proxy();
    assert_eq!(check_ingress(&world, &config), 2, "steered again");

    // ProxyIngressPort moves to a port the proxy does not listen on: its listener on the old
    // port, still in the map, is not used; AppPort connections are refused.
    let mut moved = config.clone();
    moved.ingress.as_mut().unwrap().proxy_port = 15002;
    world.apply(&moved);
    for (dst, redirect) in ingress_cases(&moved) {
        if redirect {
            let e = world.ingress(dst).expect_err("no proxy listener on 15002");
            assert!(e.contains("refused"), "ingress to {dst} with ProxyIngressPort 15002: {e}");
        }
    }
    world.apply(&config);
    assert_eq!(check_ingress(&world, &config), 2, "steered again with the proxy's port back");

    // A configuration without ingress steers nothing.
    let mut egress_only = config.clone();
    egress_only.ingress = None;
    world.apply(&egress_only);
    assert_eq!(check_ingress(&world, &egress_only), 0);

    let removed = task::remove(&world.request()).unwrap();
    assert!(removed.removed);
    assert!(world.bpffs.files().is_empty(), "nothing pinned after remove: {:?}", world.bpffs.files());
    assert!(sk_lookup_programs(&world).is_empty(), "no sk_lookup program on the task namespace after remove");
    assert_no_netfilter(&world);
    let status = task::status(&world.request(), None).unwrap();
    assert_eq!(status.exit_code(), 1);
    assert!(status.ebpf.is_none());
}
