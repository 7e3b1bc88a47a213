//! `intercept-live-demo [--backend ebpf|iptables]`: intercept at work in a sandbox (`cargo
//! xtask demo` runs it; eBPF by default). It builds the test topology (a task and a remote
//! network namespace; nothing leaves them), starts a test proxy, an app and remote servers,
//! installs the seed guide's configuration (and DNS capture, `--proxy-dns-port`) with the real
//! `intercept` binary, makes a few connections and DNS queries and prints what happened to each
//! next to what the decision model says, shows
//! `status` (for eBPF: with the programs' counters), then removes everything.
//!
//! With eBPF the sandbox also has a test cgroup and a bpffs of its own, both removed at the
//! end; the clients and the proxy (egress and ingress listeners) run in the cgroup (the
//! programs see a proxy's sockets only there), and inbound connections are steered by the
//! `sk_lookup` program: they reach the proxy at the address the client dialled.
//!
//! Needs root. The `intercept` binary is `$INTERCEPT_BIN`, else the one next to this one.

use std::{
    env,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use intercept::{
    config::{parse_task_definition, validate},
    model::{Decision, decide},
};
use intercept_tests::{
    ebpf::{Listener, TestBpffs, as_identity},
    privileges,
    topology::{METADATA, REMOTE_V4, REMOTE_V6, TASK_V4, TASK_V6, Topology},
    traffic::{Client, Reply, Role, Sandbox, SandboxSpec, Udp, agrees, dns, egress, ingress},
};

const SEED: &str = "examples/ec2-taskB.json";
/// The test DNS listener's port (ProxyDNSPort).
const DNS_PORT: u16 = 15053;
const REMOTE_V4_SERVER: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 1);
const REMOTE_V6_SERVER: Ipv6Addr = Ipv6Addr::new(0xfd05, 0, 0, 0, 0, 0, 0, 1);
const APP_UID: u32 = 1000;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("intercept-live-demo: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let args: Vec<String> = env::args().skip(1).collect();
    let ebpf = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] | ["--backend", "ebpf"] | ["--backend=ebpf"] => true,
        ["--backend", "iptables"] | ["--backend=iptables"] => false,
        _ => return Err(format!("usage: intercept-live-demo [--backend ebpf|iptables] (got {args:?})")),
    };
    let backend = if ebpf { "ebpf" } else { "iptables" };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "the live demo creates network namespaces, cgroups, eBPF programs and iptables rules: run it \
             as root (`sudo -E cargo xtask demo --backend {backend}`)"
        ));
    }
    let root = workspace_root()?;
    let intercept = intercept_binary()?;
    let client = sibling("intercept-test-client")?;
    let seed_path = root.join(SEED);
    let text = std::fs::read_to_string(&seed_path).map_err(|e| format!("read {}: {e}", seed_path.display()))?;
    let input = parse_task_definition(&text, SEED).map_err(|e| e.to_string())?;
    let mut config = validate(&input.raw).map_err(|e| e.to_string())?.config;
    // DNS capture on top of the seed (`--proxy-dns-port`): the query below goes to the test
    // DNS listener on loopback, and its reply comes back from the server the app asked.
    config.proxy_dns_port = Some(DNS_PORT);
    let ingress_port = config.ingress.as_ref().map(|i| i.proxy_port).ok_or("the seed configures ingress")?;
    let app_port = config.ingress.as_ref().and_then(|i| i.app_ports.ports().next()).ok_or("the seed has AppPorts")?;
    let other_port = 9090;

    let sandbox = Sandbox::new(&SandboxSpec {
        // With eBPF the egress proxy is a process in the cgroup (below).
        egress_proxy_ports: if ebpf { vec![] } else { vec![config.proxy_egress_port] },
        // With eBPF the ingress proxy is a process in the cgroup too.
        ingress_proxy_ports: if ebpf { vec![] } else { vec![ingress_port] },
        app_ports: vec![app_port, other_port],
        remote_ports: vec![80, 22],
        remote_addresses: vec![IpAddr::V4(REMOTE_V4_SERVER), IpAddr::V6(REMOTE_V6_SERVER)],
        dns_proxy_port: Some(DNS_PORT),
        remote_dns: true,
    });
    let netns = sandbox.task().path();
    let netns = netns.to_str().ok_or("namespace path is UTF-8")?.to_owned();
    println!("Sandbox (deleted at the end; nothing in it can reach the outside):");
    println!("  task netns   {}: {TASK_V4}, {TASK_V6}", sandbox.task().name());
    println!(
        "  remote netns {}: {REMOTE_V4}, {REMOTE_V6}, {REMOTE_V4_SERVER}, {REMOTE_V6_SERVER}, {}, {} (metadata stand-ins)",
        sandbox.remote().name(),
        METADATA[0],
        METADATA[1]
    );
    println!(
        "  in the task: test proxy on :{} (egress) and :{ingress_port} (ingress), reading SO_ORIGINAL_DST; \
         app on :{app_port} and :{other_port}",
        config.proxy_egress_port
    );
    println!("  in the remote netns: servers on :80 and :22, answering with the address they were reached on");

    // eBPF: the cgroup, the pins' bpffs and the egress proxy in the cgroup; all dropped (the
    // proxy killed, the bpffs unmounted, the cgroup removed) before the namespaces.
    let ebpf_sandbox = if ebpf {
        Some(EbpfParts::new(&sandbox, config.ignored_uids.first().copied(), config.proxy_egress_port, ingress_port)?)
    } else {
        None
    };
    let mut target: Vec<String> = vec!["--backend".into(), backend.into(), "--netns".into(), netns.clone()];
    if let Some(parts) = &ebpf_sandbox {
        println!("  test cgroup {} (the task's processes: clients and the proxy)", parts.cgroup.path().display());
        println!("  bpffs for the pins at {}", parts.bpffs.path().display());
        target.extend([
            "--cgroup".into(),
            parts.cgroup.path().display().to_string(),
            "--bpffs".into(),
            parts.bpffs.path().display().to_string(),
        ]);
    }
    let target: Vec<&str> = target.iter().map(String::as_str).collect();

    let seed_arg = seed_path.to_str().ok_or("path is UTF-8")?;
    let dns_port = DNS_PORT.to_string();
    let seed_and_dns = ["--task-definition", seed_arg, "--proxy-dns-port", &dns_port];
    show(&intercept, &[&["apply"][..], &target, &seed_and_dns].concat(), SEED)?;

    println!(
        "\nConnections (client processes in the task netns{} unless marked \"from remote\"):",
        if ebpf { " and the test cgroup" } else { "" }
    );
    let task_client = |uid: u32| {
        let client = Client::new(&client).netns(sandbox.task()).identity(uid, uid);
        match &ebpf_sandbox {
            Some(parts) => client.cgroup(&parts.cgroup),
            None => client,
        }
    };
    let remote_client = Client::new(&client).netns(sandbox.remote());
    let local = Topology::task_local_addrs();
    let v4 = |ip: Ipv4Addr, port| SocketAddr::new(IpAddr::V4(ip), port);
    let v6 = |ip: Ipv6Addr, port| SocketAddr::new(IpAddr::V6(ip), port);
    let ignored_uid = config.ignored_uids.first().copied().unwrap_or(1337);
    let outbound = [
        (APP_UID, v4(REMOTE_V4_SERVER, 80)),
        (APP_UID, v6(REMOTE_V6_SERVER, 80)),
        (ignored_uid, v4(REMOTE_V4_SERVER, 80)),
        (APP_UID, v4(REMOTE_V4_SERVER, 22)),
        (APP_UID, v4(METADATA[0], 80)),
        (APP_UID, v4(METADATA[1], 80)),
        (APP_UID, v4(Ipv4Addr::LOCALHOST, app_port)),
        (APP_UID, v4(TASK_V4, app_port)),
    ];
    let mut disagreements = 0;
    for (uid, destination) in outbound {
        let source = if destination.is_ipv4() { IpAddr::V4(TASK_V4) } else { IpAddr::V6(TASK_V6) };
        let connection = egress(uid, uid, source, destination);
        let result = task_client(uid).connect(destination);
        disagreements += report(
            &format!("uid {uid:<4} → {destination}"),
            &decide(&config, &local, &connection),
            &connection,
            result,
        );
    }
    // DNS: a resolver's query (a connected UDP socket, as glibc's) to the remote server.
    for (uid, server) in [
        (APP_UID, v4(REMOTE_V4_SERVER, 53)),
        (APP_UID, v6(REMOTE_V6_SERVER, 53)),
        (ignored_uid, v4(REMOTE_V4_SERVER, 53)),
    ] {
        let source = if server.is_ipv4() { IpAddr::V4(TASK_V4) } else { IpAddr::V6(TASK_V6) };
        let query = dns(uid, uid, source, server, intercept::model::Protocol::Udp);
        let result = task_client(uid).udp(Udp::Connected).connect(server);
        disagreements +=
            report(&format!("uid {uid:<4} DNS → {server}"), &decide(&config, &local, &query), &query, result);
    }
    for destination in [v4(TASK_V4, app_port), v6(TASK_V6, app_port), v4(TASK_V4, other_port)] {
        let source = if destination.is_ipv4() { IpAddr::V4(REMOTE_V4) } else { IpAddr::V6(REMOTE_V6) };
        let connection = ingress(source, destination);
        let result = remote_client.connect(destination);
        let decision = match decide(&config, &local, &connection) {
            // sk_lookup hands the connection to the proxy's listener unchanged: the proxy's
            // socket has the dialled address, not the REDIRECT's ProxyIngressPort.
            Decision::Redirect { .. } if ebpf => Decision::Redirect { to: destination },
            decision => decision,
        };
        disagreements += report(&format!("from remote → {destination}"), &decision, &connection, result);
    }

    show(&intercept, &[&["status"][..], &target, &seed_and_dns].concat(), SEED)?;
    show(&intercept, &[&["remove"][..], &target].concat(), SEED)?;
    show(&intercept, &[&["status"][..], &target].concat(), SEED)?;
    if ebpf_sandbox.is_some() {
        drop(ebpf_sandbox);
        println!("\nTest cgroup and bpffs removed.");
    }
    drop(sandbox);
    println!("Sandbox namespaces deleted.");
    if disagreements > 0 {
        return Err(format!("{disagreements} connections did not go where the decision model says"));
    }
    Ok(ExitCode::SUCCESS)
}

/// eBPF mode's part of the sandbox. Field order is drop order: the proxy goes first (its
/// process leaves the cgroup), then the pins, then the cgroup.
struct EbpfParts {
    _proxy: Listener,
    _ingress_proxy: Listener,
    bpffs: TestBpffs,
    cgroup: intercept_tests::TestCgroup,
}

impl EbpfParts {
    fn new(sandbox: &Sandbox, proxy_uid: Option<u32>, proxy_port: u16, ingress_port: u16) -> Result<EbpfParts, String> {
        let host = privileges().map_err(|reason| {
            format!("the eBPF demo needs root, a writable cgroup2 mount and eBPF cgroup programs: {reason}")
        })?;
        let cgroup = host.create_cgroup().map_err(|e| format!("create the test cgroup: {e}"))?;
        let bpffs = TestBpffs::mounted();
        let probe = sibling("intercept-ebpf-probe")?;
        let mut proxy = cgroup.command(&probe);
        proxy.args(["serve", "egress-proxy", &format!("127.0.0.1:{proxy_port}"), &format!("[::1]:{proxy_port}")]);
        sandbox.task().enter(&mut proxy);
        // The proxy runs as IgnoredUID, as Envoy does in a task.
        let uid = proxy_uid.unwrap_or(1337);
        as_identity(&mut proxy, uid, uid);
        let proxy = Listener::spawn(proxy);
        let mut ingress = cgroup.command(&probe);
        ingress.args([
            "serve",
            "ingress-proxy",
            &format!("127.0.0.1:{ingress_port}"),
            &format!("[::1]:{ingress_port}"),
        ]);
        sandbox.task().enter(&mut ingress);
        as_identity(&mut ingress, uid, uid);
        Ok(EbpfParts { _proxy: proxy, _ingress_proxy: Listener::spawn(ingress), bpffs, cgroup })
    }
}

/// One line per connection: what happened, and whether the model agrees.
fn report(
    label: &str,
    decision: &Decision,
    connection: &intercept::model::Connection,
    result: Result<Reply, String>,
) -> usize {
    let (what, agreement) = match result {
        Err(e) => (format!("FAILED: {e}"), Err("the connection failed".to_owned())),
        Ok(reply) => {
            let what = match (reply.role, decision) {
                (Role::DnsProxy, _) => format!(
                    "sent to the DNS listener at {}; the reply came from {}",
                    reply.local,
                    reply.from.map_or("(unknown)".to_owned(), |a| a.to_string())
                ),
                (Role::EgressProxy | Role::IngressProxy, _) => format!(
                    "redirected to the proxy at {}, which read the original destination {}",
                    reply.local,
                    reply.original.map_or("(none)".to_owned(), |a| a.to_string())
                ),
                (_, Decision::Untouched { reason }) => format!("reached {} untouched: {reason}", reply.local),
                (_, Decision::Redirect { .. }) => format!("reached {} untouched", reply.local),
            };
            (what, agrees(decision, connection, &reply))
        }
    };
    let verdict = match &agreement {
        Ok(()) => "model agrees".to_owned(),
        Err(e) => format!("MODEL DISAGREES: {e}"),
    };
    println!("  {label:<34} {what}  [{verdict}]");
    usize::from(agreement.is_err())
}

/// Prints the command line (with the seed's repository path), runs it, prints its output.
fn show(intercept: &Path, args: &[&str], seed_label: &str) -> Result<(), String> {
    let shown: Vec<String> =
        args.iter().map(|a| if a.ends_with(seed_label) { seed_label.to_owned() } else { (*a).to_owned() }).collect();
    println!("\n$ intercept {}", shown.join(" "));
    let output =
        Command::new(intercept).args(args).output().map_err(|e| format!("run {}: {e}", intercept.display()))?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    println!("(exit code {})", output.status.code().unwrap_or(-1));
    Ok(())
}

fn intercept_binary() -> Result<PathBuf, String> {
    match env::var_os("INTERCEPT_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => sibling("intercept"),
    }
}

/// A binary built next to this one (same target directory and profile).
fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = env::current_exe().map_err(|e| format!("locate this binary: {e}"))?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} not found: build it with `cargo build -p intercept -p intercept-tests`", path.display()))
    }
}

fn workspace_root() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))
}
