//! Faults and concurrency, through the `intercept` binary, for every backend:
//!
//! - `apply` killed (SIGKILL, by pid) at random points: afterwards the target is fully the
//!   old configuration or fully the new one (status and traffic agree), or, where a change is
//!   not one kernel transaction (iptables: ipsets, then one transaction per family;
//!   nftables: sets, then rules; eBPF: the first install's staging pins), status says the
//!   change did not finish and the next `apply` makes it whole. `remove`, even right after a kill, leaves nothing.
//! - two or three `apply`/`remove` started at once on one target: all succeed (the lock of
//!   `intercept::lock` serialises them) and the result is exactly one of the requests.
//! - the configuration replaced 20 times while connections are opened continuously: every
//!   connection follows the old or the new configuration; none fails, none escapes.
//!
//! Configurations A and B differ in every part: egress port, ignored IPs (thousands of
//! networks, so that an apply takes measurable time), ignored ports, ingress on (A) or off
//! (B). X is ignored by A and redirected by B; Y the other way round. Every dialled address
//! lives on the sandbox's remote namespace.
//!
//! The randomness is seeded: the seed is printed, and `FAULTS_SEED=<n>` replays a run.
//! Needs root and the `intercept` binary (`cargo xtask test` builds it).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use intercept::{
    backend::{
        Kind,
        ebpf::{self as agent_ebpf, Program},
    },
    netns::{Netns as AgentNetns, Target},
};
use intercept_tests::{
    ebpf::{
        APP_PORT, EbpfSandbox, IGNORED_V4, IGNORED_V6, INGRESS_PROXY_PORT, Listener, PLAIN_V4, PLAIN_V6, PROXY_UID,
        as_identity,
    },
    require_privileges,
    topology::{Netns, TASK_V4, intercept_bin, require_netns_privileges, require_nft},
    traffic::{Client, Reply, Role, Sandbox, SandboxSpec, connect_here},
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");

/// Ignored by A, redirected by B.
const X4: IpAddr = IpAddr::V4(IGNORED_V4);
const X6: IpAddr = IpAddr::V6(IGNORED_V6);
/// Redirected by A, ignored by B.
const Y4: IpAddr = IpAddr::V4(PLAIN_V4);
const Y6: IpAddr = IpAddr::V6(PLAIN_V6);
const REMOTE_PORT: u16 = 80;
const APP_UID: u32 = 1000;
/// Ignored networks per configuration, besides X or Y: enough for an apply to take a while.
const NETS_V4: u32 = 3000;
const NETS_V6: u32 = 500;
const LOCKS: &str = intercept::lock::SYSTEM_DIR;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    A,
    B,
}

impl Config {
    fn other(self) -> Config {
        match self {
            Config::A => Config::B,
            Config::B => Config::A,
        }
    }

    fn egress_port(self) -> u16 {
        match self {
            Config::A => 15001,
            Config::B => 15002,
        }
    }

    /// A bare `proxyConfiguration`.
    fn json(self) -> String {
        let (ignored, ports, base_v4, tag_v6) = match self {
            Config::A => ([X4, X6], "2222", 0x6440_0000u32, 0x40),
            Config::B => ([Y4, Y6], "3333", 0x6480_0000u32, 0x80),
        };
        let mut ips: Vec<String> = ignored.iter().map(IpAddr::to_string).collect();
        // Gaps between the networks, so that none aggregate.
        ips.extend((0..NETS_V4).map(|i| format!("{}/24", Ipv4Addr::from(base_v4 + (i << 9)))));
        ips.extend((0..NETS_V6).map(|i| format!("fd{tag_v6:02x}:{:x}::/32", 2 * i)));
        let mut properties = vec![
            ("IgnoredUID", PROXY_UID.to_string()),
            ("ProxyEgressPort", self.egress_port().to_string()),
            ("EgressIgnoredIPs", ips.join(",")),
            ("EgressIgnoredPorts", ports.to_owned()),
        ];
        if self == Config::A {
            properties.push(("ProxyIngressPort", INGRESS_PROXY_PORT.to_string()));
            properties.push(("AppPorts", APP_PORT.to_string()));
        }
        let properties: Vec<serde_json::Value> =
            properties.into_iter().map(|(name, value)| serde_json::json!({"name": name, "value": value})).collect();
        serde_json::json!({"type": "APPMESH", "containerName": "envoy", "properties": properties}).to_string()
    }
}

/// What a target holds, as far as `status` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Nothing,
    Whole(Config),
    /// A change did not finish, and status says so.
    Interrupted,
}

/// Which configuration a connection followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Followed {
    Config(Config),
    /// Redirected, original destination intact, by the rules of the configuration that
    /// ignores the destination: its ignored-networks lookup missed.
    SetMiss(Config),
    /// Neither: a connection that escaped interception, or went to the wrong place.
    Escaped,
}

/// What happened to an egress connection to `dst` (X or Y).
fn followed(dst: SocketAddr, reply: &Reply) -> Followed {
    let untouched = reply.role == Role::Remote && reply.local == dst;
    let redirected_to = |config: Config| {
        reply.role == Role::EgressProxy && reply.original == Some(dst) && reply.local.port() == config.egress_port()
    };
    let ignored_by_a = [X4, X6].contains(&dst.ip());
    match (untouched, ignored_by_a) {
        (true, true) => Followed::Config(Config::A),
        (true, false) => Followed::Config(Config::B),
        (false, true) if redirected_to(Config::B) => Followed::Config(Config::B),
        (false, false) if redirected_to(Config::A) => Followed::Config(Config::A),
        (false, true) if redirected_to(Config::A) => Followed::SetMiss(Config::A),
        (false, false) if redirected_to(Config::B) => Followed::SetMiss(Config::B),
        _ => Followed::Escaped,
    }
}

enum Fixture {
    Netns(Sandbox),
    // The second egress proxy first: it is a process in the cgroup the sandbox removes.
    Ebpf { _proxy_b: Listener, world: Box<EbpfSandbox> },
}

/// One backend on a sandbox, driven through the CLI.
struct World {
    kind: Kind,
    bin: PathBuf,
    fixture: Fixture,
    target: Vec<String>,
    configs: tempfile::TempDir,
}

impl World {
    /// Fails the test (the guards say why) when it cannot run here.
    fn new(kind: Kind, test: &str) -> World {
        let host = match kind {
            Kind::Iptables => {
                require_netns_privileges(test);
                None
            }
            Kind::Nftables => {
                require_nft(test);
                None
            }
            Kind::Ebpf => {
                require_netns_privileges(test);
                Some(require_privileges(test))
            }
        };
        let bin = intercept_bin(test);
        let fixture = match host {
            None => Fixture::Netns(Sandbox::new(&SandboxSpec {
                egress_proxy_ports: vec![Config::A.egress_port(), Config::B.egress_port()],
                ingress_proxy_ports: vec![INGRESS_PROXY_PORT],
                app_ports: vec![APP_PORT],
                remote_ports: vec![REMOTE_PORT],
                remote_addresses: vec![X4, X6, Y4, Y6],
                ..SandboxSpec::default()
            })),
            Some(host) => {
                let world = EbpfSandbox::new(&host, PROBE, CLIENT);
                let port = Config::B.egress_port();
                let mut proxy = world.cgroup.command(PROBE);
                proxy.args(["serve", "egress-proxy", &format!("127.0.0.1:{port}"), &format!("[::1]:{port}")]);
                world.sandbox.task().enter(&mut proxy);
                as_identity(&mut proxy, PROXY_UID, PROXY_UID);
                Fixture::Ebpf { _proxy_b: Listener::spawn(proxy), world: Box::new(world) }
            }
        };
        let sandbox = match &fixture {
            Fixture::Netns(sandbox) => sandbox,
            Fixture::Ebpf { world, .. } => &world.sandbox,
        };
        let mut target = vec!["--backend".to_owned(), kind.to_string()];
        target.extend(["--netns".to_owned(), sandbox.task().path().display().to_string()]);
        if let Fixture::Ebpf { world, .. } = &fixture {
            target.extend(["--cgroup".to_owned(), world.cgroup.path().display().to_string()]);
            target.extend(["--bpffs".to_owned(), world.bpffs.path().display().to_string()]);
        }
        let configs = tempfile::tempdir().expect("a directory for the configurations");
        for config in [Config::A, Config::B] {
            fs::write(configs.path().join(format!("{config:?}.json")), config.json()).expect("write a configuration");
        }
        World { kind, bin, fixture, target, configs }
    }

    fn sandbox(&self) -> &Sandbox {
        match &self.fixture {
            Fixture::Netns(sandbox) => sandbox,
            Fixture::Ebpf { world, .. } => &world.sandbox,
        }
    }

    fn task(&self) -> &Netns {
        self.sandbox().task()
    }

    /// `intercept <verb> <target> [--proxy-configuration <config>]`, output discarded.
    fn command(&self, verb: &str, config: Option<Config>) -> Command {
        let mut command = Command::new(&self.bin);
        command.arg(verb).args(&self.target);
        if let Some(config) = config {
            command.arg("--proxy-configuration").arg(self.configs.path().join(format!("{config:?}.json")));
        }
        command.stdin(Stdio::null());
        command
    }

    /// Runs `intercept <verb>` to completion: its exit code and its output.
    fn run(&self, verb: &str, config: Option<Config>) -> (i32, String) {
        let output = self.command(verb, config).output().expect("run intercept");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }

    fn must(&self, verb: &str, config: Option<Config>) -> Duration {
        let started = Instant::now();
        let (code, output) = self.run(verb, config);
        assert_eq!(code, 0, "{} {verb} {config:?}: {output}", self.kind);
        started.elapsed()
    }

    /// What `status` says is installed.
    fn state(&self) -> State {
        let (a, out_a) = self.run("status", Some(Config::A));
        if a == 0 {
            return State::Whole(Config::A);
        }
        let (b, out_b) = self.run("status", Some(Config::B));
        if b == 0 {
            return State::Whole(Config::B);
        }
        let (any, out_any) = self.run("status", None);
        let interrupted = out_any.contains("did not finish") || out_any.contains("an interrupted `intercept apply`");
        match (a, b, any) {
            (1, 1, 1) if interrupted => State::Interrupted,
            (1, 1, 1) if out_any.contains("NOT installed") && !interrupted => State::Nothing,
            _ => panic!(
                "{}: neither A, nor B, nor nothing, nor a reported interruption:\n--- status A\n{out_a}\n--- status B\n\
                 {out_b}\n--- status\n{out_any}",
                self.kind
            ),
        }
    }

    /// An egress connection from the task's app (in the task's cgroup for eBPF).
    fn connect(&self, dst: SocketAddr) -> Result<Reply, String> {
        let client = Client::new(CLIENT).netns(self.task()).identity(APP_UID, APP_UID);
        match &self.fixture {
            Fixture::Netns(_) => client.connect(dst),
            Fixture::Ebpf { world, .. } => client.cgroup(&world.cgroup).connect(dst),
        }
    }

    /// Traffic follows `state`: one egress connection per family and one inbound to AppPort.
    fn check_traffic(&self, state: State) {
        for dst in [SocketAddr::new(X4, REMOTE_PORT), SocketAddr::new(Y6, REMOTE_PORT)] {
            let reply = self.connect(dst).unwrap_or_else(|e| panic!("{}: {dst} in state {state:?}: {e}", self.kind));
            let expected = match state {
                State::Whole(config) => Followed::Config(config),
                State::Nothing => Followed::Config(if dst.ip() == X4 { Config::A } else { Config::B }),
                State::Interrupted => unreachable!("made whole before traffic is checked"),
            };
            // With nothing installed both destinations are reached directly, as the
            // configuration ignoring them says.
            assert_eq!(followed(dst, &reply), expected, "{}: {dst} in state {state:?}: {reply}", self.kind);
        }
        let inbound = SocketAddr::new(IpAddr::V4(TASK_V4), APP_PORT);
        let reply = Client::new(CLIENT)
            .netns(self.sandbox().remote())
            .connect(inbound)
            .unwrap_or_else(|e| panic!("{}: inbound to AppPort in state {state:?}: {e}", self.kind));
        let expected = if state == State::Whole(Config::A) { Role::IngressProxy } else { Role::App };
        assert_eq!(reply.role, expected, "{}: inbound to AppPort in state {state:?}: {reply}", self.kind);
    }

    /// Starts `intercept apply <config>` and SIGKILLs it (by pid) after `delay`, unless it has
    /// finished by then; returns whether it had.
    fn kill_apply(&self, config: Config, delay: Duration) -> bool {
        let mut child = self
            .command("apply", Some(config))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn intercept apply");
        thread::sleep(delay);
        let finished = child.try_wait().expect("poll intercept apply").is_some();
        if !finished {
            child.kill().expect("SIGKILL intercept apply");
        }
        let status = child.wait().expect("reap intercept apply");
        assert!(!finished || status.success(), "{}: apply {config:?} failed by itself: {status}", self.kind);
        finished
    }

    /// What intercept left in the kernel, the bpffs and the lock directory.
    fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let task = self.task();
        for program in ["iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"] {
            let rules = task.exec(program, &[]);
            found
                .extend(rules.lines().filter(|l| l.contains("INTERCEPT") || l.contains("intercept")).map(String::from));
        }
        let sets = task.exec("ipset", &["list", "-n"]);
        found.extend(sets.lines().filter(|l| l.contains("intercept")).map(|l| format!("ipset {l}")));
        if intercept::backend::exec::find_program("nft").is_some() {
            let tables = task.exec("nft", &["list", "tables"]);
            found.extend(tables.lines().filter(|l| l.contains("intercept")).map(String::from));
        }
        let mut keys = vec![AgentNetns::open(Target::Path(task.path())).unwrap().lock_key().unwrap().name().to_owned()];
        if let Fixture::Ebpf { world, .. } = &self.fixture {
            found.extend(world.bpffs.files().iter().map(|f| format!("pin {}", f.display())));
            for program in Program::ALL {
                let on = if program.on_netns() { task.path() } else { world.cgroup.path().to_owned() };
                let attached = agent_ebpf::attached_programs(&on, program.attach_type()).unwrap();
                found.extend(attached.iter().map(|id| format!("{program:?} program {id} attached")));
            }
            keys.push(format!("cgroup-{}", intercept::cgroup::id(world.cgroup.path()).unwrap()));
        }
        if let Ok(entries) = fs::read_dir(LOCKS) {
            let names = entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned());
            found.extend(
                names.filter(|n| keys.iter().any(|k| n.starts_with(k.as_str()))).map(|n| format!("{LOCKS}/{n}")),
            );
        }
        found
    }

    fn assert_nothing_left(&self) {
        let (code, output) = self.run("remove", None);
        assert_eq!(code, 0, "{}: remove: {output}", self.kind);
        let left = self.leftovers();
        assert!(left.is_empty(), "{}: remove left {left:#?}", self.kind);
        assert_eq!(self.state(), State::Nothing, "{}: status after remove", self.kind);
        self.check_traffic(State::Nothing);
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

fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort();
    durations[durations.len() / 2]
}

/// Kills per backend; halfway, the target is removed so that first installs are killed too.
const KILLS: usize = 25;

fn killed_applies_leave_old_or_new(kind: Kind, test: &str) {
    let world = World::new(kind, test);
    let mut rng = rng(test);
    // How long applies take here: a first install, and replacements.
    let install = world.must("apply", Some(Config::A));
    let replace = median(vec![
        world.must("apply", Some(Config::B)),
        world.must("apply", Some(Config::A)),
        world.must("apply", Some(Config::B)),
    ]);
    world.must("remove", None);
    println!("{test}: apply takes {install:?} to install, {replace:?} to replace");

    let mut state = State::Nothing;
    let (mut old, mut new, mut interrupted, mut finished) = (0, 0, 0, 0);
    for kill in 0..KILLS {
        if kill == KILLS / 2 {
            world.assert_nothing_left();
            state = State::Nothing;
        }
        let next = match state {
            State::Whole(config) => config.other(),
            _ => Config::A,
        };
        let typical = if state == State::Nothing { install } else { replace };
        let delay = typical.mul_f64(1.2 * rng.f64());
        finished += usize::from(world.kill_apply(next, delay));
        let after = world.state();
        match after {
            State::Interrupted => {
                interrupted += 1;
                // Made whole by the next apply, and status says so.
                world.must("apply", Some(next));
                assert_eq!(
                    world.state(),
                    State::Whole(next),
                    "{kind}: after an interrupted change, apply made it whole"
                );
                state = State::Whole(next);
            }
            after if after == state => {
                old += 1;
            }
            after => {
                assert_eq!(after, State::Whole(next), "{kind}: killed after {delay:?}");
                new += 1;
                state = after;
            }
        }
        world.check_traffic(state);
    }
    // Killed once more, then removed straight away.
    world.kill_apply(state_next(state), replace.mul_f64(rng.f64()));
    world.assert_nothing_left();
    println!(
        "{test}: {KILLS} kills: {old} left the old state, {new} the new one ({finished} finished before the kill), \
         {interrupted} were reported as interrupted and made whole by the next apply"
    );
}

fn state_next(state: State) -> Config {
    match state {
        State::Whole(config) => config.other(),
        _ => Config::A,
    }
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn killed_applies_leave_old_or_new_iptables() {
    killed_applies_leave_old_or_new(Kind::Iptables, "killed_applies_leave_old_or_new_iptables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn killed_applies_leave_old_or_new_nftables() {
    killed_applies_leave_old_or_new(Kind::Nftables, "killed_applies_leave_old_or_new_nftables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn killed_applies_leave_old_or_new_ebpf() {
    killed_applies_leave_old_or_new(Kind::Ebpf, "killed_applies_leave_old_or_new_ebpf");
}

const ROUNDS: usize = 8;

/// An operation a concurrent round may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Apply(Config),
    Remove,
}

fn concurrent_changes_serialise(kind: Kind, test: &str) {
    let world = World::new(kind, test);
    let mut rng = rng(test);
    let ops = [Op::Apply(Config::A), Op::Apply(Config::B), Op::Remove];
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let round_ops: Vec<Op> = (0..rng.usize(2..=3)).map(|_| ops[rng.usize(..ops.len())]).collect();
        let children: Vec<_> = round_ops
            .iter()
            .map(|op| {
                let command = match op {
                    Op::Apply(config) => world.command("apply", Some(*config)),
                    Op::Remove => world.command("remove", None),
                };
                (op, command)
            })
            .map(|(op, mut command)| (op, command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()))
            .collect();
        for (op, child) in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{kind} round {round}: {op:?} of {round_ops:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let state = world.state();
        let requested = match state {
            State::Whole(config) => round_ops.contains(&Op::Apply(config)),
            // Nothing is right only if a remove ran (or nothing was asked but removes).
            State::Nothing => round_ops.contains(&Op::Remove),
            State::Interrupted => false,
        };
        assert!(requested, "{kind} round {round}: {round_ops:?} left {state:?}");
        if state != State::Nothing {
            world.check_traffic(state);
        }
        outcomes.push(format!("{round_ops:?} -> {state:?}"));
    }
    world.assert_nothing_left();
    println!("{test}: {ROUNDS} rounds, every process exited 0:\n  {}", outcomes.join("\n  "));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn concurrent_changes_serialise_iptables() {
    concurrent_changes_serialise(Kind::Iptables, "concurrent_changes_serialise_iptables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn concurrent_changes_serialise_nftables() {
    concurrent_changes_serialise(Kind::Nftables, "concurrent_changes_serialise_nftables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn concurrent_changes_serialise_ebpf() {
    concurrent_changes_serialise(Kind::Ebpf, "concurrent_changes_serialise_ebpf");
}

/// Connections counted during reconfiguration.
#[derive(Debug, Default)]
struct Counts {
    followed_a: usize,
    followed_b: usize,
    failed: Vec<String>,
    set_misses: Vec<String>,
    escaped: Vec<String>,
}

impl Counts {
    fn add(&mut self, dst: SocketAddr, reply: Result<Reply, String>) {
        match reply {
            Err(e) => self.failed.push(format!("{dst}: {e}")),
            Ok(reply) => match followed(dst, &reply) {
                Followed::Config(Config::A) => self.followed_a += 1,
                Followed::Config(Config::B) => self.followed_b += 1,
                Followed::SetMiss(_) => self.set_misses.push(format!("{dst}: {reply}")),
                Followed::Escaped => self.escaped.push(format!("{dst}: {reply}")),
            },
        }
    }

    fn total(&self) -> usize {
        self.followed_a + self.followed_b + self.failed.len() + self.set_misses.len() + self.escaped.len()
    }
}

const REPLACEMENTS: usize = 20;
/// Connection loops running at once.
const LOADERS: usize = 2;

fn reconfiguration_under_load(kind: Kind, test: &str) {
    let world = World::new(kind, test);
    world.must("apply", Some(Config::A));
    let stop = AtomicBool::new(false);
    let counts = Mutex::new(Counts::default());
    let destinations = [X4, Y4, X6, Y6].map(|ip| SocketAddr::new(ip, REMOTE_PORT));
    let started = Instant::now();
    thread::scope(|scope| {
        for loader in 0..LOADERS {
            let (stop, counts, world) = (&stop, &counts, &world);
            scope.spawn(move || {
                let mut dials = destinations.iter().copied().cycle().skip(loader);
                let mut next = move || dials.next().expect("a cycle never ends");
                let record = |dst: SocketAddr, reply: Result<Reply, String>| counts.lock().unwrap().add(dst, reply);
                match &world.fixture {
                    // A thread that joined the task's namespace: connections as fast as it goes.
                    Fixture::Netns(sandbox) => sandbox.task().run(|| {
                        while !stop.load(Ordering::Relaxed) {
                            let dst = next();
                            record(dst, connect_here(dst));
                        }
                    }),
                    // Client processes in the task's cgroup: the programs see only those.
                    Fixture::Ebpf { .. } => {
                        while !stop.load(Ordering::Relaxed) {
                            let dst = next();
                            record(dst, world.connect(dst));
                        }
                    }
                }
            });
        }
        for round in 0..REPLACEMENTS {
            let config = if round % 2 == 0 { Config::B } else { Config::A };
            world.must("apply", Some(config));
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let counts = counts.into_inner().unwrap();
    println!(
        "{test}: {REPLACEMENTS} replacements in {:?}; connections: {} total, {} followed A, {} followed B, {} failed, \
         {} escaped ({} of them: redirected although the redirecting configuration ignores the destination)",
        started.elapsed(),
        counts.total(),
        counts.followed_a,
        counts.followed_b,
        counts.failed.len(),
        counts.escaped.len() + counts.set_misses.len(),
        counts.set_misses.len(),
    );
    assert!(counts.failed.is_empty(), "{kind}: connections failed during reconfiguration: {:#?}", counts.failed);
    assert!(counts.escaped.is_empty(), "{kind}: connections escaped during reconfiguration: {:#?}", counts.escaped);
    assert!(counts.set_misses.is_empty(), "{kind}: ignored destinations redirected: {:#?}", counts.set_misses);
    assert!(counts.followed_a > 0 && counts.followed_b > 0, "{kind}: both configurations were live: {counts:?}");
    world.assert_nothing_left();
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn reconfiguration_under_load_iptables() {
    reconfiguration_under_load(Kind::Iptables, "reconfiguration_under_load_iptables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn reconfiguration_under_load_nftables() {
    reconfiguration_under_load(Kind::Nftables, "reconfiguration_under_load_nftables");
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn reconfiguration_under_load_ebpf() {
    reconfiguration_under_load(Kind::Ebpf, "reconfiguration_under_load_ebpf");
}
