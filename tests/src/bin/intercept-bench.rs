//! `intercept-bench`: the measurements behind `cargo xtask bench` and `docs/performance.md`.
//!
//! `intercept-bench run [--quick] --doc FILE --perf-dir DIR` (root) measures, in a sandbox it
//! creates and removes (the shared task + remote namespaces, a test cgroup, a test bpffs):
//!
//! - variants: no interception (the client dials the proxy port directly), the reference rule
//!   shape (the ECS App Mesh plugin's rules, one `-d X/32 -j RETURN` per ignored IP, written
//!   with `iptables-nft-restore` by this program), and intercept's iptables, nftables and eBPF
//!   backends, each installed and removed with the `intercept` binary at `$INTERCEPT_BIN`
//!   (a private copy), a diagnostic: eBPF with a configuration without ingress (its
//!   `sk_lookup` program then steers nothing), and the previous release's eBPF backend
//!   (`intercept_tests::previous`, built in release mode once), the design the current one is
//!   measured against;
//! - at every size of the ignored-IP list (none of which matches, so every connection is
//!   redirected): short connections (connect, the proxy accepts, reads `SO_ORIGINAL_DST` and
//!   closes) for connections/s and p50/p99 latency, then one bulk stream app → proxy for
//!   bytes/s; `apply` and `remove` times, and `apply`'s peak RSS (`wait4`'s `ru_maxrss`);
//! - for the eBPF variants, the programs' kernel time per connection: a pass of short
//!   connections of its own with the kernel's run-time statistics on (`BPF_ENABLE_STATS`, held
//!   only for that pass), each program's run time and run count over the connections made.
//!
//! Variants are interleaved: at each size, every repetition runs each variant once, in an
//! order rotated by one per repetition, so drift of the machine spreads over all of them.
//! Each measurement gets a fresh task namespace (no conntrack entries, tables or sockets
//! left over from the previous one) and a fresh proxy process.
//!
//! `intercept-bench host-scale [--quick] --doc FILE --perf-dir DIR` (root) installs the eBPF
//! backend on 1, 100 and 1,000 tasks (cgroups and network namespaces it makes), and reports the
//! kernel's own accounting of the memory of everything intercept created, the apply time per
//! task (the CLI, and in process as the daemon runs it), and one task's connection rate while
//! the others exist; it rewrites its own section of the document.
//!
//! The proxy and the client are this program again (`proxy`, `client` subcommands): child
//! processes placed in the test cgroup, the task namespace and their identities (the proxy as
//! IgnoredUID 1337, the app as 1000) before they run, both pinned to one CPU: see [`BENCH_CPU`].

use std::{
    collections::{BTreeMap, BTreeSet},
    env,
    fmt::Write as _,
    fs::{self, File},
    io::{self, BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{self, Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    maps::MapInfo,
    programs::loaded_programs,
    sys::{Stats, enable_stats},
};
use intercept::{
    backend::ebpf::{
        ApplyOptions,
        task::{self as ebpf_task, Request as TaskRequest},
    },
    config::{Ingress, PortRange, PortSet, ProxyConfig},
    netns::Target as NetnsTarget,
};
use intercept_tests::{
    Privileged, TestCgroup,
    daemon::{Daemon, DaemonDirs, seed_proxy_configuration, task_json},
    ebpf::{TestBpffs, as_identity, is_link, is_program, linked_programs, pins},
    previous::{Build, PREVIOUS_RELEASE, previous_release},
    privileges,
    topology::{Netns, Topology, netns_privileges, nft},
};
use nix::{
    sched::{CpuSet, sched_setaffinity},
    sys::socket::{getsockopt, setsockopt, sockopt},
    unistd::Pid,
};

/// Where the proxy listens (ProxyEgressPort on loopback) and what the app dials: an address on
/// the remote side of the sandbox, so a connection that escapes interception is refused there
/// instead of leaving the machine.
const PROXY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001);
const DESTINATION: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 80);
const PROXY_UID: u32 = 1337;
const APP_UID: u32 = 1000;
/// What `intercept` reads at most as a configuration (`config::source::MAX_INPUT_BYTES`).
const MAX_CONFIG_BYTES: usize = 1 << 20;
/// The CPU the client and the proxy share. Every step of a connection then runs on one CPU
/// without cross-CPU wake-ups, whose latency (an inter-processor interrupt, slow in a VM)
/// would otherwise dominate a connection's time and hide the interception's own cost behind
/// noise; the bench's other work (applying, removing) runs on the other CPUs.
const BENCH_CPU: usize = 0;
/// The pause after each measurement.
const SETTLE: Duration = Duration::from_millis(200);
/// Bulk stream write size.
const CHUNK: usize = 128 * 1024;

const NOTES_MARKER: &str = "<!-- Everything below this line is kept when `cargo xtask bench` rewrites this file. -->";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("proxy") => proxy(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("daemon") if args.get(1).is_some_and(|a| a == "--docker") => daemon_docker(&args[2..]),
        Some("daemon") => daemon_memory(&args[1..]),
        Some("dns") => dns(&args[1..]),
        Some("dns-client") => dns_client(&args[1..]),
        Some("host-scale") => host_scale(&args[1..]),
        _ => Err(anyhow::anyhow!(
            "usage: intercept-bench run [--quick] --doc FILE --perf-dir DIR | host-scale [--quick] --doc FILE \
             --perf-dir DIR | daemon [--tasks N] | dns (as root, INTERCEPT_BIN=<intercept>)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("intercept-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DNS queries/s with capture and without.

/// The remote DNS server the app asks, and the proxy's DNS listener.
const DNS_SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 5, 0, 53), 53);
const DNS_LISTENER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15053);
const DNS_SECONDS: f64 = 2.0;
const DNS_REPETITIONS: usize = 5;

/// `dns`: DNS queries/s from the app, each as glibc's resolver sends one (a new UDP socket,
/// `connect`, `send`, `recv`, close), against a responder that answers every datagram. Without
/// capture the app asks the remote server over the sandbox's veth, with no interception and
/// with each backend installed without ProxyDNSPort; with capture it asks the same server and
/// each backend sends the query to the DNS listener on loopback, compared with the app asking
/// that listener directly. Medians of five 2 s runs, the variants interleaved; printed (the
/// numbers in docs/performance.md come from this output).
fn dns(args: &[String]) -> Result<()> {
    ensure!(args.is_empty(), "usage: intercept-bench dns");
    let intercept =
        PathBuf::from(env::var_os("INTERCEPT_BIN").context("INTERCEPT_BIN (the intercept binary) is not set")?);
    netns_privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    let host = privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    nft().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    let me = env::current_exe().context("the bench's own path")?;
    let topology = Topology::new();
    topology.add_remote_addresses(&[IpAddr::V4(*DNS_SERVER.ip())]);
    let _server = responder(&topology.remote, DNS_SERVER)?;
    let _listener = responder(&topology.task, DNS_LISTENER)?;
    let cgroup = host.create_cgroup()?;
    let bpffs = TestBpffs::mounted();
    let variants: [(&str, Option<&str>, bool, SocketAddrV4); 8] = [
        ("no interception, to the server", None, false, DNS_SERVER),
        ("iptables, DNS not captured", Some("iptables"), false, DNS_SERVER),
        ("nftables, DNS not captured", Some("nftables"), false, DNS_SERVER),
        ("eBPF, DNS not captured", Some("ebpf"), false, DNS_SERVER),
        ("no interception, to the DNS listener", None, true, DNS_LISTENER),
        ("iptables, captured", Some("iptables"), true, DNS_SERVER),
        ("nftables, captured", Some("nftables"), true, DNS_SERVER),
        ("eBPF, captured", Some("ebpf"), true, DNS_SERVER),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for rep in 0..DNS_REPETITIONS {
        for i in (0..variants.len()).map(|i| (i + rep) % variants.len()) {
            let (_, backend, capture, target) = variants[i];
            let mut target_args: Vec<String> = Vec::new();
            if let Some(backend) = backend {
                target_args = vec![
                    "--backend".into(),
                    backend.into(),
                    "--netns".into(),
                    topology.task.path().display().to_string(),
                ];
                if backend == "ebpf" {
                    target_args.extend(["--cgroup".into(), cgroup.path().display().to_string()]);
                    target_args.extend(["--bpffs".into(), bpffs.path().display().to_string()]);
                }
                let mut config = vec!["--ignored-uid", "1337", "--proxy-egress-port", "15001"];
                if capture {
                    config.extend(["--proxy-dns-port", "15053"]);
                }
                let out = Command::new(&intercept).arg("apply").args(&config).args(&target_args).output()?;
                ensure!(out.status.success(), "apply {backend}: {}", String::from_utf8_lossy(&out.stderr));
            }
            let mut command = cgroup.command(&me);
            command.args(["dns-client", &target.to_string(), &DNS_SECONDS.to_string()]);
            topology.task.enter(&mut command);
            as_identity(&mut command, APP_UID, APP_UID);
            pin(&mut command, BENCH_CPU);
            let output = command.stdin(Stdio::null()).output().context("run the DNS client")?;
            ensure!(output.status.success(), "DNS client: {}", String::from_utf8_lossy(&output.stderr).trim());
            let queries: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().context("the client's count")?;
            rates[i].push(queries / DNS_SECONDS);
            if backend.is_some() {
                let out = Command::new(&intercept).arg("remove").args(&target_args).output()?;
                ensure!(out.status.success(), "remove: {}", String::from_utf8_lossy(&out.stderr));
            }
            thread::sleep(SETTLE);
        }
    }
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    println!("| variant | DNS queries/s | vs its baseline |");
    println!("|---|---:|---:|");
    for (i, (name, backend, capture, _)) in variants.iter().enumerate() {
        let baseline = if *capture { medians[4] } else { medians[0] };
        let ratio = if backend.is_some() { format!("{:.2}", medians[i] / baseline) } else { "1".to_owned() };
        println!("| {name} | {} | {ratio} |", thousands(medians[i] as usize));
    }
    Ok(())
}

/// A UDP responder in `netns` at `addr`: answers every datagram with the same bytes.
fn responder(netns: &Netns, addr: SocketAddrV4) -> Result<thread::JoinHandle<()>> {
    let socket = netns.run(|| std::net::UdpSocket::bind(addr)).with_context(|| format!("bind UDP {addr}"))?;
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], peer);
        }
    }))
}

/// `dns-client ADDR SECONDS`: queries as glibc's resolver does, each on a new connected UDP
/// socket, for SECONDS; prints how many were answered.
fn dns_client(args: &[String]) -> Result<()> {
    let [addr, secs] = args else { bail!("usage: intercept-bench dns-client ADDR SECONDS") };
    let addr: SocketAddr = addr.parse().context("the address")?;
    let until = Instant::now() + Duration::from_secs_f64(secs.parse().context("the duration")?);
    // A DNS query for "svc.mesh.test" A, as a resolver sends it; the responder echoes it.
    let query: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03svc\x04mesh\x04test\x00\x00\x01\x00\x01";
    let mut answered = 0u64;
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").context("bind")?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.connect(addr).context("connect")?;
        socket.send(query).context("send")?;
        let n = socket.recv(&mut buf).context("no answer")?;
        ensure!(buf[..n] == *query, "a wrong answer");
        answered += 1;
    }
    println!("{answered}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `intercept daemon`'s memory with many tasks.

/// `daemon [--tasks N]` (default 100): N task cgroups and network namespaces, one eBPF task
/// file each; starts `intercept daemon` on them, waits until every task is applied, scrapes its
/// metrics (which reads every task's counters) and lets it run full resyncs (which check every
/// installation), then reads its resident memory (VmRSS now, VmHWM the peak) from
/// /proc/PID/status. The daemon removes everything on SIGTERM (`--remove-on-exit`).
fn daemon_memory(args: &[String]) -> Result<()> {
    let tasks: usize = match args {
        [] => 100,
        [flag, n] if flag == "--tasks" => n.parse().with_context(|| format!("--tasks {n}"))?,
        _ => bail!("usage: intercept-bench daemon [--tasks N]"),
    };
    let intercept =
        PathBuf::from(env::var_os("INTERCEPT_BIN").context("INTERCEPT_BIN (the intercept binary) is not set")?);
    ensure!(intercept.is_file(), "no intercept binary at {}", intercept.display());
    netns_privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    let host = privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    // Declared before the daemon, dropped after it.
    let bpffs = TestBpffs::mounted();
    let cgroups = (0..tasks).map(|_| host.create_cgroup()).collect::<Result<Vec<_>, _>>()?;
    let namespaces: Vec<Netns> = (0..tasks).map(|_| Netns::create("bench")).collect();
    let dirs = DaemonDirs::new();
    let proxy = seed_proxy_configuration("22");
    for (i, (cgroup, netns)) in cgroups.iter().zip(&namespaces).enumerate() {
        let id = format!("task{i}");
        dirs.write_task(&id, &task_json(&id, "ebpf", cgroup.path(), &netns.path(), &proxy));
    }
    let started = Instant::now();
    let mut daemon = Daemon::start(&intercept, &dirs, bpffs.path(), &["--remove-on-exit", "--resync-interval", "2s"]);
    let applied = r#"intercept_tasks{state="applied"}"#;
    daemon.wait_until("every task is applied", Duration::from_secs(600), |d| d.metric(applied) == tasks as f64);
    let applied_in = started.elapsed();
    let passes = daemon.metric("intercept_reconcile_duration_seconds_count");
    daemon.wait_until("two full resyncs ran", Duration::from_secs(60), |d| {
        d.metric("intercept_reconcile_duration_seconds_count") >= passes + 2.0
    });
    let exported = daemon.metrics().keys().filter(|k| k.starts_with("intercept_task_connections_total{")).count();
    ensure!(exported >= tasks, "the metrics export counters for {exported} series, fewer than the {tasks} tasks");
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid())).context("read the daemon's status")?;
    let kib = |key: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in /proc/PID/status"))?;
        field_kib(line)
    };
    let (rss, hwm) = (kib("VmRSS:")?, kib("VmHWM:")?);
    let stopping = Instant::now();
    ensure!(daemon.stop(nix::sys::signal::Signal::SIGTERM).success(), "the daemon failed on SIGTERM");
    println!(
        "intercept daemon with {tasks} eBPF tasks: all applied {:.1} s after start; resident memory {:.1} MiB \
         (VmRSS), peak {:.1} MiB (VmHWM); removed on SIGTERM in {:.1} s",
        applied_in.as_secs_f64(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        stopping.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `daemon --docker [--tasks N]` (default 100), with the engine at `DOCKER_HOST`: `intercept
/// daemon --docker-socket` follows N ECS-shaped eBPF tasks started one after the other (the
/// pause container, then a labelled proxy container); for each, the time from its proxy
/// container's start to the daemon's record of it installed; then the daemon's resident and
/// peak memory, and its CPU over 10 s with nothing changing.
fn daemon_docker(args: &[String]) -> Result<()> {
    let tasks: usize = match args {
        [] => 100,
        [flag, n] if flag == "--tasks" => n.parse().with_context(|| format!("--tasks {n}"))?,
        _ => bail!("usage: intercept-bench daemon --docker [--tasks N]"),
    };
    let intercept =
        PathBuf::from(env::var_os("INTERCEPT_BIN").context("INTERCEPT_BIN (the intercept binary) is not set")?);
    let host = env::var("DOCKER_HOST").context("DOCKER_HOST (the container engine) is not set")?;
    privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    let engine = intercept_tests::containers::Engine::at(&host);
    let bpffs = TestBpffs::mounted();
    let dirs = DaemonDirs::new();
    let socket = host.trim_start_matches("unix://").to_owned();
    let mut daemon =
        Daemon::start(&intercept, &dirs, bpffs.path(), &["--docker-socket", &socket, "--resync-interval", "30s"]);
    let labels = [
        format!("intercept.proxy-configuration={}", seed_proxy_configuration("22")),
        "intercept.backend=ebpf".to_owned(),
    ];
    let mut running = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..tasks {
        let mut task = intercept_tests::containers::Task::new(&engine);
        task.start_bare_pause();
        let mut options = vec!["--entrypoint".to_owned(), "sleep".to_owned()];
        for label in &labels {
            options.extend(["--label".to_owned(), label.clone()]);
        }
        let started = Instant::now();
        task.start_in_task("envoy", &options, intercept_tests::containers::BASE, &["infinity".to_owned()]);
        let id = task.id.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dirs.recorded().contains(&id) {
            ensure!(Instant::now() < deadline, "task {id} was not installed within 60 s:\n{}", daemon.log().join("\n"));
            thread::sleep(Duration::from_millis(5));
        }
        latencies.push(started.elapsed());
        running.push(task);
    }
    latencies.sort();
    let at = |q: usize| latencies[(latencies.len() * q).div_ceil(100).max(1) - 1];
    thread::sleep(Duration::from_secs(2));
    let cpu = |pid: u32| -> Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).context("read the daemon's stat")?;
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    let before = cpu(daemon.pid())?;
    let idle = Duration::from_secs(10);
    thread::sleep(idle);
    let ticks = cpu(daemon.pid())? - before;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.pid())).context("read the daemon's status")?;
    let kib = |key: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in /proc/PID/status"))?;
        field_kib(line)
    };
    let (rss, hwm) = (kib("VmRSS:")?, kib("VmHWM:")?);
    for mut task in running {
        task.stop();
    }
    daemon.wait_until("every task is removed", Duration::from_secs(120), |_| dirs.recorded().is_empty());
    println!(
        "intercept daemon --docker-socket with {tasks} eBPF tasks: container start to installed p50 {:.0} ms, p99 {:.0} \
         ms; resident memory {:.1} MiB (VmRSS), peak {:.1} MiB (VmHWM); CPU while idle {:.2} % of one CPU (over {} s)",
        at(50).as_secs_f64() * 1000.0,
        at(99).as_secs_f64() * 1000.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ticks as f64 / hz as f64 / idle.as_secs_f64() * 100.0,
        idle.as_secs()
    );
    Ok(())
}

/// `VmRSS:     1234 kB` → 1234.
fn field_kib(line: &str) -> Result<u64> {
    let value = line.split_whitespace().nth(1).with_context(|| format!("no value in {line:?}"))?;
    value.parse().with_context(|| format!("not a number in {line:?}"))
}

// ---------------------------------------------------------------------------------------------
// The proxy and the client (child processes).

/// `proxy`: accepts on [`PROXY`] one connection at a time, reads its original destination,
/// reads until the client's end of stream and closes with a reset (no TIME_WAIT anywhere, so
/// a long run never runs out of ports). Prints `READY`, and when its stdin closes the counts
/// of original destinations: `ok=` (the app's destination), `other=` and `missing=`.
fn proxy(_args: &[String]) -> Result<()> {
    let listener = TcpListener::bind(PROXY).with_context(|| format!("listen on {PROXY}"))?;
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let report = Arc::clone(&counts);
    thread::spawn(move || {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        let [ok, other, missing] = report.as_ref();
        println!(
            "ok={} other={} missing={}",
            ok.load(Ordering::Relaxed),
            other.load(Ordering::Relaxed),
            missing.load(Ordering::Relaxed)
        );
        process::exit(0);
    });
    println!("READY");
    io::stdout().flush()?;
    let mut buf = vec![0u8; CHUNK];
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    loop {
        let (mut stream, _) = listener.accept().context("accept")?;
        let slot = match getsockopt(&stream, sockopt::OriginalDst) {
            Ok(sin) => {
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                usize::from(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)) != DESTINATION)
            }
            Err(_) => 2,
        };
        counts[slot].fetch_add(1, Ordering::Relaxed);
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = setsockopt(&stream, sockopt::Linger, &linger);
    }
}

/// `client short|bulk ADDR SECONDS WARMUP_SECONDS`: `short` connects, ends its side and
/// waits for the proxy to close, again and again, and prints `count= secs= p50_ns= p99_ns=`;
/// `bulk` streams to ADDR for SECONDS and prints `bytes= secs=` (until the proxy read it all).
fn client(args: &[String]) -> Result<()> {
    let [mode, addr, secs, warmup] = args else { bail!("usage: client short|bulk ADDR SECONDS WARMUP_SECONDS") };
    let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let secs = Duration::from_secs_f64(secs.parse().context("SECONDS")?);
    let warmup = Duration::from_secs_f64(warmup.parse().context("WARMUP_SECONDS")?);
    match mode.as_str() {
        "short" => {
            let warm_end = Instant::now() + warmup;
            while Instant::now() < warm_end {
                short_connection(addr)?;
            }
            let mut latencies: Vec<u64> = Vec::with_capacity(1 << 20);
            let start = Instant::now();
            let end = start + secs;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                short_connection(addr)?;
                latencies.push(t.elapsed().as_nanos() as u64);
            }
            let elapsed = start.elapsed().as_secs_f64();
            ensure!(!latencies.is_empty(), "no connection completed");
            latencies.sort_unstable();
            let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
            println!("count={} secs={elapsed} p50_ns={} p99_ns={}", latencies.len(), at(50), at(99));
        }
        "bulk" => {
            let buf = vec![0x5a_u8; CHUNK];
            let start = Instant::now();
            let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
            let mut bytes = 0u64;
            while start.elapsed() < secs {
                stream.write_all(&buf).context("write")?;
                bytes += CHUNK as u64;
            }
            stream.shutdown(Shutdown::Write).context("shutdown")?;
            wait_for_close(&mut stream)?;
            println!("bytes={bytes} secs={}", start.elapsed().as_secs_f64());
        }
        other => bail!("unknown client mode {other}"),
    }
    Ok(())
}

fn short_connection(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    wait_for_close(&mut stream)
}

/// The proxy closes with a reset once it has read everything: end of stream or ECONNRESET.
fn wait_for_close(stream: &mut TcpStream) -> Result<()> {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(e).context("wait for the proxy to close"),
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    None,
    Reference,
    Iptables,
    Nftables,
    Ebpf,
    /// A diagnostic: eBPF with a configuration without ingress (no AppPorts): the `sk_lookup`
    /// program steers nothing.
    EbpfEgressOnly,
    /// The previous release's eBPF backend ([`previous::PREVIOUS_RELEASE`], built in release
    /// mode): the design the current one is measured against, in the same run.
    EbpfPrevious,
}

impl Variant {
    const ALL: [Variant; 7] = [
        Variant::None,
        Variant::Reference,
        Variant::Iptables,
        Variant::Nftables,
        Variant::Ebpf,
        Variant::EbpfEgressOnly,
        Variant::EbpfPrevious,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::None => "no interception",
            Variant::Reference => "reference rules",
            Variant::Iptables => "intercept iptables",
            Variant::Nftables => "intercept nftables",
            Variant::Ebpf => "intercept eBPF",
            Variant::EbpfEgressOnly => "eBPF, no ingress",
            Variant::EbpfPrevious => "eBPF, previous release",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Reference => "reference",
            Variant::Iptables => "iptables",
            Variant::Nftables => "nftables",
            Variant::Ebpf => "ebpf",
            Variant::EbpfEgressOnly => "ebpf-egress-only",
            Variant::EbpfPrevious => "ebpf-previous",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Variant::None => "#333333",
            Variant::Reference => "#d62728",
            Variant::Iptables => "#1f77b4",
            Variant::Nftables => "#9467bd",
            Variant::Ebpf => "#2ca02c",
            Variant::EbpfEgressOnly => "#98c998",
            Variant::EbpfPrevious => "#8c564b",
        }
    }

    /// The `intercept` backend, for intercept's own variants.
    fn backend(self) -> Option<&'static str> {
        match self {
            Variant::Iptables => Some("iptables"),
            Variant::Nftables => Some("nftables"),
            Variant::Ebpf | Variant::EbpfEgressOnly | Variant::EbpfPrevious => Some("ebpf"),
            Variant::None | Variant::Reference => None,
        }
    }
}

struct Plan {
    quick: bool,
    sizes: Vec<usize>,
    reps: usize,
    short: Duration,
    bulk: Duration,
    warmup: Duration,
    /// The eBPF variants' pass with the kernel's run-time statistics on.
    stats: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                sizes: vec![0, 10_000],
                reps: 2,
                short: Duration::from_millis(1000),
                bulk: Duration::from_millis(400),
                warmup: Duration::from_millis(200),
                stats: Duration::from_millis(500),
            }
        } else {
            Plan {
                quick,
                sizes: vec![0, 100, 1_000, 10_000, 100_000],
                reps: 5,
                short: Duration::from_millis(1500),
                bulk: Duration::from_millis(600),
                warmup: Duration::from_millis(300),
                stats: Duration::from_millis(1000),
            }
        }
    }
}

/// One measurement of one variant at one size.
#[derive(Debug, Clone)]
struct Sample {
    size: usize,
    variant: Variant,
    rep: usize,
    conns: u64,
    conn_secs: f64,
    p50_ns: u64,
    p99_ns: u64,
    bulk_bytes: u64,
    bulk_secs: f64,
    /// The installing command: wall time and peak RSS (KiB).
    apply: Option<(Duration, u64)>,
    remove: Option<Duration>,
    /// The eBPF programs' kernel time per connection, by program (eBPF variants only).
    kernel: BTreeMap<String, ProgramTime>,
}

/// One eBPF program's work per connection: kernel time (ns) and runs.
#[derive(Debug, Clone, Copy, Default)]
struct ProgramTime {
    ns: f64,
    runs: f64,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.conns as f64 / self.conn_secs
    }

    fn bulk_rate(&self) -> f64 {
        self.bulk_bytes as f64 / self.bulk_secs
    }
}

/// What every measurement shares.
struct Context {
    intercept: PathBuf,
    /// The previous release's `intercept` (a private copy, as `intercept`), for the main
    /// matrix's [`Variant::EbpfPrevious`]; the host-scale measurement has none.
    previous: Option<PathBuf>,
    me: PathBuf,
    cgroup: TestCgroup,
    bpffs: TestBpffs,
    scratch: Scratch,
    cpus: usize,
}

/// A private temporary directory for configurations, rule files and captured stderr; removed
/// on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The arguments of `run` and `host-scale`: `[--quick] --doc FILE --perf-dir DIR`, and the
/// `intercept` binary from `INTERCEPT_BIN`.
struct Outputs {
    quick: bool,
    doc: PathBuf,
    perf_dir: PathBuf,
    intercept: PathBuf,
}

fn outputs(args: &[String]) -> Result<Outputs> {
    let mut quick = false;
    let mut doc = None;
    let mut perf_dir = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--doc" => doc = Some(PathBuf::from(it.next().context("--doc FILE")?)),
            "--perf-dir" => perf_dir = Some(PathBuf::from(it.next().context("--perf-dir DIR")?)),
            other => bail!("unknown argument {other}"),
        }
    }
    let (Some(doc), Some(perf_dir)) = (doc, perf_dir) else { bail!("--doc FILE and --perf-dir DIR are required") };
    let intercept =
        PathBuf::from(env::var_os("INTERCEPT_BIN").context("INTERCEPT_BIN (the intercept binary) is not set")?);
    ensure!(intercept.is_file(), "no intercept binary at {}", intercept.display());
    Ok(Outputs { quick, doc, perf_dir, intercept })
}

fn run(args: &[String]) -> Result<()> {
    let Outputs { quick, doc, perf_dir, intercept } = outputs(args)?;
    // These print why they cannot run; the bench never pretends to have measured.
    nft().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    let host = privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;

    let plan = Plan::new(quick);
    let scratch = Scratch(env::temp_dir().join(format!("intercept-bench-{}", process::id())));
    fs::create_dir_all(&scratch.0).with_context(|| format!("create {}", scratch.0.display()))?;
    // Field order of Context is drop order: the bpffs (and every pin in it) goes before the
    // cgroup.
    // A private copy: a rebuild of the workspace during the run cannot swap the binary under it.
    let private = scratch.0.join("intercept");
    fs::copy(&intercept, &private).with_context(|| format!("copy {}", intercept.display()))?;
    println!("intercept-bench: the previous release ({PREVIOUS_RELEASE}), built in release mode once");
    let previous = previous_release(Build::Release).map_err(|e| anyhow!("the previous release: {e}"))?;
    let previous_private = scratch.0.join("intercept-previous");
    fs::copy(&previous, &previous_private).with_context(|| format!("copy {}", previous.display()))?;
    let ctx = Context {
        intercept: private,
        previous: Some(previous_private),
        me: env::current_exe().context("this program's path")?,
        cgroup: host.create_cgroup().context("create the bench cgroup")?,
        bpffs: TestBpffs::mounted(),
        scratch,
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let per_run = plan.warmup + plan.short + plan.bulk + SETTLE + Duration::from_millis(400);
    let runs = plan.sizes.len() * plan.reps * Variant::ALL.len();
    println!(
        "intercept-bench: {} sizes × {} repetitions × {} variants = {runs} measurements, about {} s",
        plan.sizes.len(),
        plan.reps,
        Variant::ALL.len(),
        (per_run * runs as u32).as_secs()
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut done = 0;
    for (size_index, &size) in plan.sizes.iter().enumerate() {
        let ignored = ignored_ips(size);
        let inputs = Inputs {
            config: ctx.scratch.0.join(format!("config-{size}.json")),
            egress_only: ctx.scratch.0.join(format!("config-egress-only-{size}.json")),
            reference: ctx.scratch.0.join(format!("reference-{size}.rules")),
        };
        for (path, ingress) in [(&inputs.config, true), (&inputs.egress_only, false)] {
            let json = proxy_configuration(&ignored, ingress);
            ensure!(
                json.len() <= MAX_CONFIG_BYTES,
                "the configuration with {size} ignored IPs is {} bytes, over intercept's 1 MiB",
                json.len()
            );
            fs::write(path, json)?;
        }
        fs::write(&inputs.reference, reference_rules(&ignored))?;
        if size_index == 0 {
            warm_up(&ctx, &inputs)?;
        }
        for rep in 0..plan.reps {
            let rotation = size_index * plan.reps + rep;
            for k in 0..Variant::ALL.len() {
                let variant = Variant::ALL[(rotation + k) % Variant::ALL.len()];
                let sample = measure(&ctx, &plan, variant, size, rep, &inputs)
                    .with_context(|| format!("{} with {size} ignored IPs", variant.name()))?;
                // The namespace just deleted is cleaned up asynchronously by the kernel: let that
                // finish before the next measurement.
                thread::sleep(SETTLE);
                done += 1;
                println!("[{done:>3}/{runs}] {}", describe(&sample));
                samples.push(sample);
            }
        }
    }
    let elapsed = started.elapsed();
    println!("measured in {:.0} s", elapsed.as_secs_f64());

    let results = Results::new(&plan, &samples);
    fs::create_dir_all(&perf_dir).with_context(|| format!("create {}", perf_dir.display()))?;
    let svg_path = perf_dir.join("connection-rate.svg");
    fs::write(&svg_path, results.svg())?;
    let csv_path = perf_dir.join("samples.csv");
    fs::write(&csv_path, csv(&samples))?;
    let svg_link = relative(&svg_path, doc.parent().unwrap_or(Path::new(".")));
    let csv_link = relative(&csv_path, doc.parent().unwrap_or(Path::new(".")));
    let notes = fs::read_to_string(&doc)
        .ok()
        .and_then(|old| old.split_once(NOTES_MARKER).map(|(_, notes)| notes.to_owned()))
        .unwrap_or_default();
    let markdown = results.markdown(&machine(&ctx), elapsed, &svg_link, &csv_link, &notes);
    fs::write(&doc, &markdown).with_context(|| format!("write {}", doc.display()))?;
    println!();
    println!("{}", results.summary());
    println!("wrote {}, {} and {}", doc.display(), svg_path.display(), csv_path.display());
    Ok(())
}

/// Installs and removes every variant once, unmeasured: the first run of a freshly built
/// binary (page cache, dynamic loading of the helpers) would otherwise count as the first
/// sample of whichever variant comes first.
fn warm_up(ctx: &Context, inputs: &Inputs) -> Result<()> {
    for variant in Variant::ALL {
        let topology = Topology::new();
        let installed = Installed { ctx, variant, netns: &topology.task, removed: false };
        installed.apply(inputs).with_context(|| format!("warm-up: apply {}", variant.name()))?;
        installed.remove().with_context(|| format!("warm-up: remove {}", variant.name()))?;
    }
    thread::sleep(SETTLE);
    Ok(())
}

/// The files one size's measurements install.
struct Inputs {
    /// The proxyConfiguration (the seed's, with the ignored IPs).
    config: PathBuf,
    /// The same without AppPorts and ProxyIngressPort.
    egress_only: PathBuf,
    /// The reference rules, `iptables-restore` input.
    reference: PathBuf,
}

/// One measurement in a fresh task namespace: install, short connections, bulk, remove.
fn measure(ctx: &Context, plan: &Plan, variant: Variant, size: usize, rep: usize, inputs: &Inputs) -> Result<Sample> {
    let topology = Topology::new();
    topology.add_remote_addresses(&[IpAddr::V4(*DESTINATION.ip())]);
    let task = &topology.task;
    let mut proxy = Proxy::spawn(ctx, task)?;
    let installed = Installed { ctx, variant, netns: task, removed: false };
    let apply = installed.apply(inputs)?;
    let target = if variant == Variant::None { PROXY } else { DESTINATION };
    let short = run_client(ctx, task, "short", target, plan.short, plan.warmup)?;
    let bulk = run_client(ctx, task, "bulk", target, plan.bulk, Duration::ZERO)?;
    // After the rates, never during them: the statistics cost two clock reads per run.
    let kernel =
        if variant.backend() == Some("ebpf") { program_time(ctx, plan, task, target)? } else { BTreeMap::new() };
    let counts = proxy.finish()?;
    let remove = installed.remove()?;
    let (conns, conn_secs, p50_ns, p99_ns) =
        (field(&short, "count")?, field(&short, "secs")?, field(&short, "p50_ns")?, field(&short, "p99_ns")?);
    let (bulk_bytes, bulk_secs) = (field(&bulk, "bytes")?, field(&bulk, "secs")?);
    let (ok, other, missing) =
        (field::<u64>(&counts, "ok")?, field::<u64>(&counts, "other")?, field::<u64>(&counts, "missing")?);
    // What the proxy read proves what was measured: redirected connections carrying the app's
    // destination, or (without interception) none.
    if variant == Variant::None {
        ensure!(ok == 0 && other == 0, "without interception the proxy saw original destinations: {counts}");
    } else {
        ensure!(
            other == 0 && missing == 0 && ok > conns,
            "not every connection was redirected with its original destination ({conns} measured): {counts}"
        );
    }
    Ok(Sample { size, variant, rep, conns, conn_secs, p50_ns, p99_ns, bulk_bytes, bulk_secs, apply, remove, kernel })
}

/// The kernel time and runs per connection of each program of the installation under
/// `ctx.bpffs`: short connections for [`Plan::stats`] with the kernel's run-time statistics on
/// (`BPF_ENABLE_STATS`: on while its descriptor is open, so only for this pass, unlike the
/// `kernel.bpf_stats_enabled` sysctl), without a warm-up, so that every connection the programs
/// saw is counted; each program's run time and run count over that pass, divided by the
/// connections made. Every connection of the pass is redirected ([`measure`] checks that the
/// proxy saw each one's original destination).
fn program_time(
    ctx: &Context,
    plan: &Plan,
    task: &Netns,
    target: SocketAddrV4,
) -> Result<BTreeMap<String, ProgramTime>> {
    let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS (kernel 5.8 or later, CAP_SYS_ADMIN)")?;
    let before = program_stats(ctx.bpffs.path())?;
    let short = run_client(ctx, task, "short", target, plan.stats, Duration::ZERO)?;
    let after = program_stats(ctx.bpffs.path())?;
    let conns: u64 = field(&short, "count")?;
    ensure!(conns > 0, "the statistics pass made no connection: {short}");
    Ok(after
        .into_iter()
        .map(|(name, (ns, runs))| {
            let (ns0, runs0) = before.get(&name).copied().unwrap_or_default();
            let per = |now: u64, then: u64| now.saturating_sub(then) as f64 / conns as f64;
            (name, ProgramTime { ns: per(ns, ns0), runs: per(runs, runs0) })
        })
        .collect())
}

/// Each program linked under `bpffs` (by its `link-*` pins): its kernel run time (ns) and run
/// count so far, by name.
fn program_stats(bpffs: &Path) -> Result<BTreeMap<String, (u64, u64)>> {
    let ids = linked_programs(&pins(bpffs)?)?;
    let mut stats = BTreeMap::new();
    for info in loaded_programs() {
        let info = info?;
        if ids.contains(&info.id()) {
            let name = info.name_as_str().unwrap_or("?").to_owned();
            let entry = stats.entry(name).or_insert((0, 0));
            entry.0 += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            entry.1 += info.run_count();
        }
    }
    Ok(stats)
}

fn field<T: std::str::FromStr>(line: &str, name: &str) -> Result<T> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name}= in {line:?}"))
}

/// The installed variant; removed on drop if [`Installed::remove`] did not run (an error half
/// way), so that nothing outlives the bench (the namespace goes anyway; the eBPF pins and
/// links would otherwise stay until the bpffs is unmounted).
struct Installed<'a> {
    ctx: &'a Context,
    variant: Variant,
    netns: &'a Netns,
    removed: bool,
}

impl Installed<'_> {
    fn apply(&self, inputs: &Inputs) -> Result<Option<(Duration, u64)>> {
        let mut command = match self.variant {
            Variant::None => return Ok(None),
            Variant::Reference => {
                let mut command = self.netns.command("iptables-nft-restore");
                command.arg("--noflush").stdin(File::open(&inputs.reference)?);
                command
            }
            Variant::EbpfEgressOnly => {
                let mut command = self.intercept("apply");
                command.arg("--proxy-configuration").arg(&inputs.egress_only);
                command
            }
            Variant::Iptables | Variant::Nftables | Variant::Ebpf | Variant::EbpfPrevious => {
                let mut command = self.intercept("apply");
                command.arg("--proxy-configuration").arg(&inputs.config);
                command
            }
        };
        timed(&mut command, &self.ctx.scratch.0).map(Some)
    }

    fn intercept(&self, verb: &str) -> Command {
        let backend = self.variant.backend().expect("an intercept backend");
        let bin = match self.variant {
            Variant::EbpfPrevious => self.ctx.previous.as_ref().expect("the main matrix has the previous release"),
            _ => &self.ctx.intercept,
        };
        let mut command = Command::new(bin);
        command.args([verb, "--backend", backend, "--netns"]).arg(self.netns.path());
        match self.variant {
            Variant::Iptables => {
                command.args(["--iptables-mode", "nft"]);
            }
            Variant::Ebpf | Variant::EbpfEgressOnly | Variant::EbpfPrevious => {
                command.arg("--cgroup").arg(self.ctx.cgroup.path()).arg("--bpffs").arg(self.ctx.bpffs.path());
            }
            _ => {}
        }
        command
    }

    fn remove(mut self) -> Result<Option<Duration>> {
        self.removed = true;
        self.remove_now()
    }

    fn remove_now(&self) -> Result<Option<Duration>> {
        let mut command = match self.variant {
            Variant::None => return Ok(None),
            Variant::Reference => {
                let rules = self.ctx.scratch.0.join("reference-remove.rules");
                fs::write(&rules, REFERENCE_REMOVE)?;
                let mut command = self.netns.command("iptables-nft-restore");
                command.arg("--noflush").stdin(File::open(rules)?);
                command
            }
            _ => self.intercept("remove"),
        };
        timed(&mut command, &self.ctx.scratch.0).map(|(time, _)| Some(time))
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if !self.removed
            && let Err(e) = self.remove_now()
        {
            eprintln!("while cleaning up: remove {}: {e:#}", self.variant.name());
        }
    }
}

/// Runs `command` to completion with stdout discarded and stderr captured: its wall time
/// (spawn to reaped) and peak RSS in KiB (`wait4`). An error with its stderr if it fails.
fn timed(command: &mut Command, scratch: &Path) -> Result<(Duration, u64)> {
    let stderr_path = scratch.join("stderr");
    command.stdout(Stdio::null()).stderr(File::create(&stderr_path)?);
    if command.get_program() != "iptables-nft-restore" {
        command.stdin(Stdio::null());
    }
    let start = Instant::now();
    let child = command.spawn().with_context(|| format!("spawn {command:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data; an all-zero value is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child by pid, with valid pointers to locals.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    let elapsed = start.elapsed();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        bail!("{command:?} failed (wait status {status:#x}): {}", stderr.trim());
    }
    Ok((elapsed, usage.ru_maxrss as u64))
}

/// The proxy process for one measurement.
struct Proxy {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proxy {
    fn spawn(ctx: &Context, task: &Netns) -> Result<Proxy> {
        let mut command = ctx.cgroup.command(&ctx.me);
        command.arg("proxy");
        task.enter(&mut command);
        as_identity(&mut command, PROXY_UID, PROXY_UID);
        pin(&mut command, BENCH_CPU);
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("spawn the proxy")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut ready = String::new();
        stdout.read_line(&mut ready)?;
        let mut proxy = Proxy { child, stdin, stdout };
        if ready.trim() != "READY" {
            proxy.kill();
            bail!("the proxy did not start (said {ready:?})");
        }
        Ok(proxy)
    }

    /// Closes its stdin: it prints its counts and exits.
    fn finish(&mut self) -> Result<String> {
        drop(self.stdin.take());
        let mut counts = String::new();
        self.stdout.read_line(&mut counts)?;
        self.child.wait()?;
        Ok(counts.trim().to_owned())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

/// Runs the client (as the app: in the cgroup and the task namespace, uid 1000) and returns
/// its result line.
fn run_client(
    ctx: &Context,
    task: &Netns,
    mode: &str,
    target: SocketAddrV4,
    secs: Duration,
    warmup: Duration,
) -> Result<String> {
    let mut command = ctx.cgroup.command(&ctx.me);
    command.args([
        "client",
        mode,
        &target.to_string(),
        &secs.as_secs_f64().to_string(),
        &warmup.as_secs_f64().to_string(),
    ]);
    task.enter(&mut command);
    as_identity(&mut command, APP_UID, APP_UID);
    pin(&mut command, BENCH_CPU);
    let output = command.stdin(Stdio::null()).output().context("run the client")?;
    ensure!(
        output.status.success(),
        "client {mode} {target}: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Pins the child to `cpu`.
fn pin(command: &mut Command, cpu: usize) {
    let mut set = CpuSet::new();
    if set.set(cpu).is_err() {
        return;
    }
    // SAFETY: one system call on a value copied into the closure; no allocation.
    unsafe {
        command.pre_exec(move || sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from));
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs.

/// `count` distinct IPv4 addresses, none of which the app dials, written as tersely as
/// possible (octets of one or two digits, shortest first), so that 100,000 of them fit in
/// intercept's 1 MiB configuration limit. Leaves out 0/8, 10/8 (the sandbox), 127/8 and
/// 169.254/16 (the metadata addresses, listed anyway), and what the app dials.
fn ignored_ips(count: usize) -> Vec<Ipv4Addr> {
    let mut out = Vec::with_capacity(count);
    // Octet values by printed length: 0-9, then 10-99.
    let by_digits: [Vec<u8>; 2] = [(0..10).collect(), (10..100).collect()];
    // Patterns of digit counts (per octet), by total length.
    let mut patterns: Vec<[usize; 4]> = Vec::new();
    for total in 4..=8 {
        for mask in 0u8..16 {
            let pattern = [0, 1, 2, 3].map(|i| usize::from(mask >> i & 1));
            if pattern.iter().sum::<usize>() + 4 == total {
                patterns.push(pattern);
            }
        }
    }
    for pattern in patterns {
        for &a in &by_digits[pattern[0]] {
            if matches!(a, 0 | 10 | 127 | 169) {
                continue;
            }
            for &b in &by_digits[pattern[1]] {
                for &c in &by_digits[pattern[2]] {
                    for &d in &by_digits[pattern[3]] {
                        if out.len() == count {
                            return out;
                        }
                        let ip = Ipv4Addr::new(a, b, c, d);
                        if ip != *DESTINATION.ip() {
                            out.push(ip);
                        }
                    }
                }
            }
        }
    }
    out
}

/// A bare proxyConfiguration: the seed guide's, with `ignored` added to EgressIgnoredIPs;
/// without `ingress`, no AppPorts and ProxyIngressPort.
fn proxy_configuration(ignored: &[Ipv4Addr], ingress: bool) -> String {
    let mut ips = String::from("169.254.170.2,169.254.169.254");
    for ip in ignored {
        let _ = write!(ips, ",{ip}");
    }
    let property = |name: &str, value: &str| format!(r#"{{"name":"{name}","value":"{value}"}}"#);
    let mut properties =
        vec![property("IgnoredUID", &PROXY_UID.to_string()), property("ProxyEgressPort", &PROXY.port().to_string())];
    if ingress {
        properties.push(property("ProxyIngressPort", "15000"));
        properties.push(property("AppPorts", "9080"));
    }
    properties.push(property("EgressIgnoredIPs", &ips));
    properties.push(property("EgressIgnoredPorts", "22"));
    format!(r#"{{"type":"APPMESH","containerName":"envoy","properties":[{}]}}"#, properties.join(","))
}

/// The ECS App Mesh plugin's nat rules (the project's reference page), one RETURN rule per
/// ignored IP, as `iptables-restore --noflush` input.
fn reference_rules(ignored: &[Ipv4Addr]) -> String {
    let mut rules = String::from(
        "*nat\n:APPMESH_INGRESS - [0:0]\n:APPMESH_EGRESS - [0:0]\n\
         -A PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS\n\
         -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS\n",
    );
    let _ = writeln!(rules, "-A APPMESH_EGRESS -m owner --uid-owner {PROXY_UID} -j RETURN");
    rules.push_str("-A APPMESH_EGRESS -p tcp -m multiport --dports 22 -j RETURN\n");
    for ip in ["169.254.170.2", "169.254.169.254"]
        .into_iter()
        .map(str::to_owned)
        .chain(ignored.iter().map(|ip| ip.to_string()))
    {
        let _ = writeln!(rules, "-A APPMESH_EGRESS -d {ip}/32 -p tcp -j RETURN");
    }
    let _ = writeln!(rules, "-A APPMESH_EGRESS -p tcp -j REDIRECT --to-ports {}", PROXY.port());
    rules.push_str("-A APPMESH_INGRESS -p tcp -m multiport --dports 9080 -j REDIRECT --to-ports 15000\nCOMMIT\n");
    rules
}

/// What the plugin's DEL does: unhook and delete both chains.
const REFERENCE_REMOVE: &str = "*nat\n\
    -D PREROUTING -p tcp -m addrtype ! --src-type LOCAL -j APPMESH_INGRESS\n\
    -D OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS\n\
    -F APPMESH_INGRESS\n-F APPMESH_EGRESS\n-X APPMESH_INGRESS\n-X APPMESH_EGRESS\nCOMMIT\n";

// ---------------------------------------------------------------------------------------------
// Results.

fn describe(s: &Sample) -> String {
    let mut line = format!(
        "{:>7} ignored  rep {}  {:<18} {:>8.0} conn/s  p50 {:>5.0} µs  p99 {:>5.0} µs  bulk {:>6.2} GB/s",
        thousands(s.size),
        s.rep + 1,
        s.variant.name(),
        s.rate(),
        s.p50_ns as f64 / 1e3,
        s.p99_ns as f64 / 1e3,
        s.bulk_rate() / 1e9
    );
    if let Some((apply, rss)) = s.apply {
        let _ = write!(line, "  apply {:.1} ms ({:.1} MiB)", ms(apply), rss as f64 / 1024.0);
    }
    if let Some(remove) = s.remove {
        let _ = write!(line, "  remove {:.1} ms", ms(remove));
    }
    line
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Medians per (size, variant).
#[derive(Debug, Clone, Copy)]
struct Summary {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    bulk: f64,
    apply_ms: Option<f64>,
    remove_ms: Option<f64>,
    /// The largest over the repetitions.
    rss_mib: Option<f64>,
}

struct Results {
    quick: bool,
    sizes: Vec<usize>,
    reps: usize,
    short: Duration,
    bulk: Duration,
    stats: Duration,
    table: BTreeMap<(usize, Variant), Summary>,
    /// The eBPF variants' programs' kernel time per connection: medians by program.
    kernel: BTreeMap<(usize, Variant), BTreeMap<String, ProgramTime>>,
}

impl Results {
    fn new(plan: &Plan, samples: &[Sample]) -> Results {
        let (mut table, mut kernel) = (BTreeMap::new(), BTreeMap::new());
        for &size in &plan.sizes {
            for variant in Variant::ALL {
                let of: Vec<&Sample> = samples.iter().filter(|s| s.size == size && s.variant == variant).collect();
                let all = |f: &dyn Fn(&Sample) -> f64| median(of.iter().map(|s| f(s)).collect());
                let opt = |f: &dyn Fn(&Sample) -> Option<f64>| {
                    let values: Vec<f64> = of.iter().filter_map(|s| f(s)).collect();
                    (!values.is_empty()).then(|| median(values))
                };
                let summary = Summary {
                    rate: all(&Sample::rate),
                    p50_us: all(&|s| s.p50_ns as f64 / 1e3),
                    p99_us: all(&|s| s.p99_ns as f64 / 1e3),
                    bulk: all(&Sample::bulk_rate),
                    apply_ms: opt(&|s| s.apply.map(|(d, _)| ms(d))),
                    remove_ms: opt(&|s| s.remove.map(ms)),
                    rss_mib: of.iter().filter_map(|s| s.apply.map(|(_, kib)| kib as f64 / 1024.0)).reduce(f64::max),
                };
                table.insert((size, variant), summary);
                let programs: BTreeSet<&String> = of.iter().flat_map(|s| s.kernel.keys()).collect();
                let times: BTreeMap<String, ProgramTime> = programs
                    .into_iter()
                    .map(|name| {
                        let of_program = |f: fn(&ProgramTime) -> f64| {
                            median(of.iter().filter_map(|s| s.kernel.get(name).map(f)).collect())
                        };
                        (name.clone(), ProgramTime { ns: of_program(|t| t.ns), runs: of_program(|t| t.runs) })
                    })
                    .collect();
                if !times.is_empty() {
                    kernel.insert((size, variant), times);
                }
            }
        }
        Results {
            quick: plan.quick,
            sizes: plan.sizes.clone(),
            reps: plan.reps,
            short: plan.short,
            bulk: plan.bulk,
            stats: plan.stats,
            table,
            kernel,
        }
    }

    fn get(&self, size: usize, variant: Variant) -> Summary {
        self.table[&(size, variant)]
    }

    fn ratio(&self, size: usize, variant: Variant, f: impl Fn(&Summary) -> f64) -> f64 {
        f(&self.get(size, variant)) / f(&self.get(size, Variant::None))
    }

    /// The targets of issue 7, measured (never asserted in tests): `(target, measured, met)`.
    fn targets(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        let rate = |s: &Summary| s.rate;
        let worst = |variant: Variant| {
            self.sizes
                .iter()
                .map(|&size| (size, self.ratio(size, variant, rate)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("at least one size")
        };
        let (size, r) = worst(Variant::Ebpf);
        out.push((
            "eBPF ≥ 0.97 × no interception (connections/s) at every size".to_owned(),
            format!("lowest {r:.3} (at {})", thousands(size)),
            r >= 0.97,
        ));
        let below: Vec<String> = self
            .sizes
            .iter()
            .filter(|&&size| self.get(size, Variant::Iptables).rate < self.get(size, Variant::Reference).rate)
            .map(|&size| {
                format!(
                    "{}: {:.3} vs {:.3}",
                    thousands(size),
                    self.ratio(size, Variant::Iptables, rate),
                    self.ratio(size, Variant::Reference, rate)
                )
            })
            .collect();
        out.push((
            "iptables backend ≥ reference rules at every size".to_owned(),
            if below.is_empty() { "at every size".to_owned() } else { format!("below at {}", below.join("; ")) },
            below.is_empty(),
        ));
        let largest = *self.sizes.last().expect("at least one size");
        let r = self.ratio(largest, Variant::Iptables, rate);
        out.push((
            format!("iptables backend ≥ 0.85 × no interception at {} (sets)", thousands(largest)),
            format!("{r:.3}"),
            r >= 0.85,
        ));
        for variant in [Variant::Iptables, Variant::Nftables, Variant::Ebpf] {
            let seed = self.get(0, variant).apply_ms.unwrap_or(f64::NAN);
            out.push((
                format!("apply ≤ 20 ms, seed configuration ({})", variant.name()),
                format!("{seed:.1} ms"),
                seed <= 20.0,
            ));
        }
        let ebpf_large = self.get(largest, Variant::Ebpf).apply_ms.unwrap_or(f64::NAN);
        out.push((
            format!("apply ≤ 300 ms at {} (eBPF)", thousands(largest)),
            format!("{ebpf_large:.1} ms"),
            ebpf_large <= 300.0,
        ));
        for variant in [Variant::Iptables, Variant::Nftables, Variant::Ebpf] {
            let (size, worst) = self
                .sizes
                .iter()
                .map(|&size| (size, self.get(size, variant).remove_ms.unwrap_or(f64::NAN)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("at least one size");
            out.push((
                format!("remove ≤ 20 ms ({})", variant.name()),
                format!("highest {worst:.1} ms (at {})", thousands(size)),
                worst <= 20.0,
            ));
        }
        for variant in [Variant::Iptables, Variant::Nftables, Variant::Ebpf] {
            let (size, worst) = self
                .sizes
                .iter()
                .map(|&size| (size, self.get(size, variant).rss_mib.unwrap_or(f64::NAN)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("at least one size");
            out.push((
                format!("peak RSS of `intercept apply` ≤ 16 MiB ({})", variant.name()),
                format!("highest {worst:.1} MiB (at {})", thousands(size)),
                worst <= 16.0,
            ));
        }
        out
    }

    fn summary(&self) -> String {
        let mut out = self.rate_table();
        out.push('\n');
        out.push_str(&self.kernel_table());
        out.push('\n');
        for (target, measured, met) in self.targets() {
            let _ = writeln!(out, "{} {target}: {measured}", if met { "met   " } else { "MISSED" });
        }
        out
    }

    fn header(&self) -> String {
        let mut out = String::from("| ignored IPs |");
        let mut rule = String::from("|---:|");
        for variant in Variant::ALL {
            let _ = write!(out, " {} |", variant.name());
            rule.push_str("---:|");
        }
        format!("{out}\n{rule}\n")
    }

    /// Connections/s and the ratio to no interception.
    fn rate_table(&self) -> String {
        let mut out = self.header();
        for &size in &self.sizes {
            let _ = write!(out, "| {} |", thousands(size));
            for variant in Variant::ALL {
                let s = self.get(size, variant);
                let _ = write!(
                    out,
                    " {} ({:.3}) |",
                    thousands(s.rate.round() as usize),
                    self.ratio(size, variant, |s| s.rate)
                );
            }
            out.push('\n');
        }
        out
    }

    fn latency_table(&self) -> String {
        let mut out = self.header();
        for &size in &self.sizes {
            let _ = write!(out, "| {} |", thousands(size));
            for variant in Variant::ALL {
                let s = self.get(size, variant);
                let _ = write!(out, " {:.1} / {:.1} |", s.p50_us, s.p99_us);
            }
            out.push('\n');
        }
        out
    }

    fn bulk_table(&self) -> String {
        let mut out = self.header();
        for &size in &self.sizes {
            let _ = write!(out, "| {} |", thousands(size));
            for variant in Variant::ALL {
                let s = self.get(size, variant);
                let _ = write!(out, " {:.2} ({:.3}) |", s.bulk / 1e9, self.ratio(size, variant, |s| s.bulk));
            }
            out.push('\n');
        }
        out
    }

    /// Per eBPF variant and size: each program's kernel time per connection (ns) and runs per
    /// connection, and their total.
    fn kernel_table(&self) -> String {
        let programs: BTreeSet<&String> = self.kernel.values().flat_map(BTreeMap::keys).collect();
        let mut out = String::from("| variant | ignored IPs |");
        let mut rule = String::from("|---|---:|");
        for program in &programs {
            let _ = write!(out, " {program} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, " total |\n{rule}---:|");
        for ((size, variant), times) in &self.kernel {
            let _ = write!(out, "| {} | {} |", variant.name(), thousands(*size));
            for program in &programs {
                match times.get(*program) {
                    Some(t) => {
                        let _ = write!(out, " {:.0} ns ({:.1}) |", t.ns, t.runs);
                    }
                    None => out.push_str(" – |"),
                }
            }
            let (ns, runs) = times.values().fold((0.0, 0.0), |(ns, runs), t| (ns + t.ns, runs + t.runs));
            let _ = writeln!(out, " {ns:.0} ns ({runs:.1}) |");
        }
        out
    }

    fn install_table(&self) -> String {
        // Every variant that installs something.
        let variants: Vec<Variant> = Variant::ALL.into_iter().filter(|&v| v != Variant::None).collect();
        let mut out = String::from("| ignored IPs |");
        let mut rule = String::from("|---:|");
        for &variant in &variants {
            let _ = write!(out, " {} |", variant.name());
            rule.push_str("---:|");
        }
        out = format!("{out}\n{rule}\n");
        for &size in &self.sizes {
            let _ = write!(out, "| {} |", thousands(size));
            for &variant in &variants {
                let s = self.get(size, variant);
                let _ = write!(
                    out,
                    " {:.1} / {:.1} / {:.1} |",
                    s.apply_ms.unwrap_or(f64::NAN),
                    s.remove_ms.unwrap_or(f64::NAN),
                    s.rss_mib.unwrap_or(f64::NAN)
                );
            }
            out.push('\n');
        }
        out
    }

    fn markdown(&self, machine: &str, elapsed: Duration, svg: &str, csv: &str, notes: &str) -> String {
        let mut out = String::from("# Performance\n\n");
        let _ = writeln!(
            out,
            "Measured by `cargo xtask bench{}` ({} s); this file, [the plot]({svg}) and [every sample]({csv}) \
             are what it wrote. {}\n",
            if self.quick { " --quick" } else { "" },
            elapsed.as_secs(),
            if self.quick {
                "This is a **quick** run (a reduced matrix): `cargo xtask bench` measures the full one."
            } else {
                "`cargo xtask bench --quick` runs a reduced matrix in about a minute (and writes to `target/bench/`)."
            }
        );
        out.push_str(machine);
        out.push_str("\n## What is measured\n\n");
        let _ = writeln!(
            out,
            "A private sandbox (`tests/src/topology.rs`): a task network namespace and a remote one joined by \
             veth, a test cgroup, a test bpffs; all removed afterwards. The app (a client) and the proxy are \
             processes in the cgroup and the task namespace, the proxy as IgnoredUID 1337, the app as uid 1000, \
             both pinned to CPU 0 (cross-CPU wake-ups in a VM are slow and noisy enough to hide the \
             interception's cost; on one CPU the ratios measure the CPU work per connection). Each measurement gets a fresh task namespace and proxy.\n\n\
             - **Short connections**: the app connects to {DESTINATION} (an address of the remote namespace), \
             ends its side at once and waits until the proxy closes; the proxy (listening on {PROXY}) accepts, \
             reads `SO_ORIGINAL_DST`, reads to the end and closes with a reset (so no TIME_WAIT builds up). \
             One connection at a time, for {:.1} s after a warm-up; connections/s, and p50/p99 of one \
             connection's time (connect to close seen by the app). Without interception the app dials {PROXY} \
             itself: the physical floor.\n\
             - **Bulk**: one connection streaming 128 KiB writes app → proxy for {:.1} s; bytes/s until the \
             proxy has read everything.\n\
             - **apply / remove**: wall time of the installing and removing command, end to end (spawn to \
             exit): `intercept apply|remove --backend …` (release build), or for the reference rules \
             `iptables-nft-restore --noflush` with the rules below. **Peak RSS**: the command's `ru_maxrss` \
             (`wait4`).\n\
             - **Variants**: *no interception*; *reference rules*: the ECS App Mesh CNI plugin's nat rules as \
             the project's reference page (`../shared/reference/ecs-proxy-configuration.md`) shows them, one `-d X/32 -p tcp -j RETURN` \
             rule per ignored IP, written by the bench with `iptables-nft-restore` (the plugin itself fails \
             from about 10,000 IPs with \"argument list too long\"); *intercept iptables* \
             (`--iptables-mode nft`; more than 8 networks go into one `hash:net` ipset); *intercept nftables* \
             (interval sets); *intercept eBPF* (cgroup connect4/sockops/getsockopt programs, LPM tries, and the \
             sk_lookup ingress program on the task namespace; no netfilter rule); *eBPF, no ingress*, a \
             diagnostic: the eBPF backend with the same configuration minus AppPorts and ProxyIngressPort \
             (the sk_lookup program steers nothing); *eBPF, previous release*: the eBPF backend of the \
             previous release (commit `{PREVIOUS_RELEASE}`, built in release mode), the design the current \
             one is measured against, installed with its own `intercept`.\n\
             - **Ignored IPs**: the seed configuration (the two metadata IPs) plus N distinct IPv4 /32 \
             addresses, none of which the app dials, so every connection is redirected after the whole list \
             is consulted. Written tersely (octets of one or two digits), 100,000 of them fit in the 1 MiB \
             `intercept` reads as a configuration (about 0.9 MB), so every size goes through the CLI.\n\
             - **Interleaving**: at each size, {} repetitions each run every variant once, in an order \
             rotated by one per repetition; the figures are medians over the repetitions (peak RSS: the \
             largest), and each ratio is to no interception measured at the same size.\n",
            self.short.as_secs_f64(),
            self.bulk.as_secs_f64(),
            self.reps
        );
        out.push_str("\n## Targets\n\nMeasured, never asserted in tests.\n\n| target | measured | |\n|---|---|---|\n");
        for (target, measured, met) in self.targets() {
            let _ = writeln!(out, "| {target} | {measured} | {} |", if met { "met" } else { "**missed**" });
        }
        let _ = writeln!(
            out,
            "\n## Connections per second\n\nMedian connections/s, and in brackets the ratio to no interception.\n\n\
             {}\n![connections/s against the number of ignored IPs]({svg})\n\n\
             ## Latency of one connection\n\np50 / p99 in µs.\n\n{}\n\
             ## Bulk stream\n\nGB/s (10⁹ bytes/s), and the ratio to no interception.\n\n{}\n\
             ## apply, remove, peak RSS\n\napply ms / remove ms / peak RSS MiB of the installing command \
             (for the reference rules: `iptables-nft-restore`).\n\n{}\n\
             ## The programs' kernel time per connection\n\nFor the eBPF variants, after the rates: {:.1} s of \
             short connections with the kernel's run-time statistics on (`BPF_ENABLE_STATS`, only for that \
             pass), each program's run time over the connections made, in ns, and in brackets its runs \
             per connection (medians over the repetitions). Every connection is redirected. A CPU-time \
             figure: steadier on a shared machine than a rate.\n\n{}",
            self.rate_table(),
            self.latency_table(),
            self.bulk_table(),
            self.install_table(),
            self.stats.as_secs_f64(),
            self.kernel_table()
        );
        out.push('\n');
        out.push_str(NOTES_MARKER);
        if notes.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str(notes);
        }
        out
    }

    /// Connections/s against the number of ignored IPs, one line per variant.
    fn svg(&self) -> String {
        let (width, height) = (760.0, 440.0);
        let (left, right, top, bottom) = (80.0, 190.0, 40.0, 60.0);
        let plot_w = width - left - right;
        let plot_h = height - top - bottom;
        let max = self.table.values().map(|s| s.rate).fold(0.0, f64::max);
        let step = nice_step(max / 5.0);
        let y_max = (max / step).ceil() * step;
        let x = |i: usize| {
            if self.sizes.len() == 1 {
                left + plot_w / 2.0
            } else {
                left + plot_w * i as f64 / (self.sizes.len() - 1) as f64
            }
        };
        let y = |v: f64| top + plot_h * (1.0 - v / y_max);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Short connections per second \
             against ignored IPs (higher is better)</text>\n",
            width / 2.0
        );
        let mut v = 0.0;
        while v <= y_max + step / 2.0 {
            let _ = writeln!(
                svg,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#dddddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left + plot_w,
                y(v),
                y(v),
                left - 8.0,
                y(v) + 4.0,
                thousands(v as usize)
            );
            v += step;
        }
        for (i, &size) in self.sizes.iter().enumerate() {
            let _ = writeln!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1}\" stroke=\"#eeeeee\"/>\
                 <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>",
                x(i),
                top + plot_h,
                top + plot_h + 18.0,
                thousands(size)
            );
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#888888\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">ignored IPs (besides the two metadata IPs)</text>\n\
             <text transform=\"translate(18 {}) rotate(-90)\" text-anchor=\"middle\">connections/s</text>",
            left + plot_w / 2.0,
            height - 16.0,
            top + plot_h / 2.0
        );
        for (n, variant) in Variant::ALL.into_iter().enumerate() {
            let points: Vec<String> = self
                .sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| format!("{:.1},{:.1}", x(i), y(self.get(size, variant).rate)))
                .collect();
            let color = variant.color();
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                points.join(" ")
            );
            for point in &points {
                let (px, py) = point.split_once(',').expect("x,y");
                let _ = writeln!(svg, "<circle cx=\"{px}\" cy=\"{py}\" r=\"3.5\" fill=\"{color}\"/>");
            }
            let ly = top + 10.0 + 22.0 * n as f64;
            let lx = left + plot_w + 14.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text>",
                lx + 22.0,
                lx + 28.0,
                ly + 4.0,
                variant.name()
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(10.0 * magnitude)
}

fn csv(samples: &[Sample]) -> String {
    let mut out = String::from(
        "ignored_ips,variant,repetition,connections,seconds,connections_per_s,p50_us,p99_us,bulk_bytes,bulk_seconds,\
         apply_ms,apply_peak_rss_kib,remove_ms,ebpf_kernel_ns_per_connection,ebpf_runs_per_connection\n",
    );
    for s in samples {
        let kernel = (!s.kernel.is_empty()).then(|| {
            let ns: f64 = s.kernel.values().map(|t| t.ns).sum();
            let runs: f64 = s.kernel.values().map(|t| t.runs).sum();
            (format!("{ns:.0}"), format!("{runs:.2}"))
        });
        let (kernel_ns, kernel_runs) = kernel.unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{},{:.4},{:.1},{:.2},{:.2},{},{:.4},{},{},{},{kernel_ns},{kernel_runs}",
            s.size,
            s.variant.key(),
            s.rep + 1,
            s.conns,
            s.conn_secs,
            s.rate(),
            s.p50_ns as f64 / 1e3,
            s.p99_ns as f64 / 1e3,
            s.bulk_bytes,
            s.bulk_secs,
            s.apply.map(|(d, _)| format!("{:.2}", ms(d))).unwrap_or_default(),
            s.apply.map(|(_, kib)| kib.to_string()).unwrap_or_default(),
            s.remove.map(|d| format!("{:.2}", ms(d))).unwrap_or_default(),
        );
    }
    out
}

/// `path` relative to `base` when it is inside it, else as given.
fn relative(path: &Path, base: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let base = fs::canonicalize(base).unwrap_or_else(|_| base.to_owned());
    path.strip_prefix(&base).unwrap_or(&path).display().to_string()
}

/// Date, kernel and machine size, for the document.
fn machine(ctx: &Context) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:").and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
    let version = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "- date: {date}\n- kernel: {kernel}\n- machine: {} CPUs ({cpu}), {mem_gib:.1} GiB memory\n\
         - tools: {}; {}; `{}` (release build)\n",
        ctx.cpus,
        version("iptables-nft"),
        version("nft"),
        version(&ctx.intercept.to_string_lossy())
    )
}

// ---------------------------------------------------------------------------------------------
// Host scale: many eBPF tasks on one host.

/// Where the host-scale section of the performance document starts and ends: `host-scale`
/// rewrites what is between these lines and keeps the rest.
const HOST_SCALE_START: &str = "<!-- host-scale: written by `cargo xtask bench --host-scale` -->";
const HOST_SCALE_END: &str = "<!-- host-scale: end -->";

/// One host size's figures.
struct Scale {
    tasks: usize,
    /// Kernel memory (memlock) of every map and program intercept created, all tasks.
    kernel_bytes: u64,
    /// The same by kind and name, summed over the tasks.
    kernel_by_name: BTreeMap<String, u64>,
    /// `intercept apply --backend ebpf` of the first task, spawn to exit, and its peak RSS.
    first_cli: (Duration, u64),
    /// The same for one more task once the others are installed.
    last_cli: (Duration, u64),
    /// The backend's apply as the daemon runs it (in process), for each of the other tasks.
    in_process: Vec<Duration>,
    /// `intercept remove --backend ebpf` of the first task while the others are installed,
    /// spawn to exit.
    remove_cli: Duration,
    /// Removing every other task, in process as the daemon does on exit (each task, then one
    /// prune).
    remove_all: Duration,
    /// Connections/s of the first task with every other task installed, and without any
    /// interception (the app dialling the proxy itself) in the same namespace before.
    rate: f64,
    rate_none: f64,
}

/// `host-scale [--quick] --doc FILE --perf-dir DIR`: 1, 100 and 1,000 tasks (quick: 1, 10,
/// 100), each a cgroup and a network namespace made here with the seed configuration.
fn host_scale(args: &[String]) -> Result<()> {
    let Outputs { quick, doc, perf_dir, intercept } = outputs(args)?;
    netns_privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    let host = privileges().map_err(|reason| anyhow!("cannot run the benchmark here: {reason}"))?;
    let sizes: &[usize] = if quick { &[1, 10, 100] } else { &[1, 100, 1000] };
    let plan = Plan::new(true);
    let started = Instant::now();
    let mut scales = Vec::new();
    for &tasks in sizes {
        let scratch = Scratch(env::temp_dir().join(format!("intercept-bench-scale-{}", process::id())));
        fs::create_dir_all(&scratch.0).with_context(|| format!("create {}", scratch.0.display()))?;
        let private = scratch.0.join("intercept");
        fs::copy(&intercept, &private).with_context(|| format!("copy {}", intercept.display()))?;
        let config = scratch.0.join("config.json");
        fs::write(&config, proxy_configuration(&[], true))?;
        let ctx = Context {
            intercept: private,
            previous: None,
            me: env::current_exe().context("this program's path")?,
            cgroup: host.create_cgroup().context("create the first task's cgroup")?,
            bpffs: TestBpffs::mounted(),
            scratch,
            cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let scale = measure_scale(&ctx, &host, &plan, tasks, &config)?;
        println!(
            "{tasks:>5} tasks: kernel memory {:.1} MiB ({:.1} KiB per task); first apply {:.1} ms, one more {:.1} ms \
             (CLI), in process median {:.2} ms; remove one {:.1} ms (CLI), all {:.2} s; {:.0} connections/s \
             against {:.0} without interception ({:.3})",
            scale.kernel_bytes as f64 / MIB,
            scale.kernel_bytes as f64 / 1024.0 / tasks as f64,
            ms(scale.first_cli.0),
            ms(scale.last_cli.0),
            median(scale.in_process.iter().map(|d| ms(*d)).collect()),
            ms(scale.remove_cli),
            scale.remove_all.as_secs_f64(),
            scale.rate,
            scale.rate_none,
            scale.rate / scale.rate_none
        );
        scales.push(scale);
    }
    let elapsed = started.elapsed();
    fs::create_dir_all(&perf_dir).with_context(|| format!("create {}", perf_dir.display()))?;
    let svg_path = perf_dir.join("host-scale.svg");
    fs::write(&svg_path, scale_svg(&scales))?;
    let section = scale_markdown(&scales, elapsed, &relative(&svg_path, doc.parent().unwrap_or(Path::new("."))));
    let old = fs::read_to_string(&doc).unwrap_or_default();
    let new = match (old.find(HOST_SCALE_START), old.find(HOST_SCALE_END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + HOST_SCALE_END.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    fs::write(&doc, new).with_context(|| format!("write {}", doc.display()))?;
    println!("wrote {} and {}", doc.display(), svg_path.display());
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;
/// Connection-rate measurements per host size, each of the first task and of the reference.
const SCALE_REPETITIONS: usize = 3;

fn measure_scale(ctx: &Context, host: &Privileged, plan: &Plan, tasks: usize, config: &Path) -> Result<Scale> {
    let topology = Topology::new();
    topology.add_remote_addresses(&[IpAddr::V4(*DESTINATION.ip())]);
    let task = &topology.task;
    // The reference: the same app and proxy in a namespace and a cgroup of their own, where
    // nothing is installed and the app dials the proxy itself; measured in turn with the
    // first task once every task is installed, so that both see the same host.
    let reference = Context {
        intercept: ctx.intercept.clone(),
        previous: None,
        me: ctx.me.clone(),
        cgroup: host.create_cgroup().context("create the reference cgroup")?,
        bpffs: TestBpffs::mounted(),
        scratch: Scratch(ctx.scratch.0.join("reference")),
        cpus: ctx.cpus,
    };
    fs::create_dir_all(&reference.scratch.0)?;
    let reference_topology = Topology::new();
    let others: Vec<(TestCgroup, Netns)> = (1..tasks)
        .map(|_| Ok((host.create_cgroup()?, Netns::create("scale"))))
        .collect::<Result<_, intercept_tests::FixtureError>>()?;
    let cli_apply = |cgroup: &Path, netns: &Netns| {
        let mut command = Command::new(&ctx.intercept);
        command.args(["apply", "--backend", "ebpf", "--netns"]).arg(netns.path());
        command.arg("--cgroup").arg(cgroup).arg("--bpffs").arg(ctx.bpffs.path());
        command.arg("--proxy-configuration").arg(config);
        timed(&mut command, &ctx.scratch.0)
    };
    let first_cli = cli_apply(ctx.cgroup.path(), task)?;
    let proxy_config = scale_proxy_config();
    let request = |cgroup: &Path, netns: &Netns| TaskRequest {
        cgroup: cgroup.display().to_string(),
        bpffs: Some(ctx.bpffs.path().to_owned()),
        netns: NetnsTarget::Path(netns.path()),
        iptables_mode: None,
        // As the daemon applies: it prunes once per pass, not per task.
        prune: false,
    };
    let mut in_process = Vec::new();
    let last = others.len().checked_sub(1);
    for (i, (cgroup, netns)) in others.iter().enumerate() {
        if Some(i) == last {
            break;
        }
        let started = Instant::now();
        ebpf_task::apply(&request(cgroup.path(), netns), &proxy_config, ApplyOptions::default())
            .with_context(|| format!("apply task {}", i + 1))?;
        in_process.push(started.elapsed());
    }
    let last_cli = match others.last() {
        Some((cgroup, netns)) => cli_apply(cgroup.path(), netns)?,
        None => first_cli,
    };
    let kernel_by_name = kernel_memory(ctx.bpffs.path())?;
    let kernel_bytes = kernel_by_name.values().sum();
    // The kernel finishes freeing what the previous size left (namespaces, programs) in
    // worker threads: let that settle before measuring.
    thread::sleep(Duration::from_secs(2));
    let (mut rates, mut rates_none) = (Vec::new(), Vec::new());
    for _ in 0..SCALE_REPETITIONS {
        let mut proxy = Proxy::spawn(ctx, task)?;
        let short = run_client(ctx, task, "short", DESTINATION, plan.short, plan.warmup)?;
        let counts = proxy.finish()?;
        ensure!(field::<u64>(&counts, "missing")? == 0, "the proxy missed original destinations: {counts}");
        rates.push(field::<f64>(&short, "count")? / field::<f64>(&short, "secs")?);
        let reference_task = &reference_topology.task;
        let mut proxy = Proxy::spawn(&reference, reference_task)?;
        let short = run_client(&reference, reference_task, "short", PROXY, plan.short, plan.warmup)?;
        proxy.finish()?;
        rates_none.push(field::<f64>(&short, "count")? / field::<f64>(&short, "secs")?);
    }
    let (rate, rate_none) = (median(rates), median(rates_none));
    // The first task by the CLI (as an init container's or the CNI plugin's removal), the
    // others then as the daemon removes every task on exit.
    let mut command = Command::new(&ctx.intercept);
    command.args(["remove", "--backend", "ebpf", "--netns"]).arg(task.path());
    command.arg("--cgroup").arg(ctx.cgroup.path()).arg("--bpffs").arg(ctx.bpffs.path());
    let (remove_cli, _) = timed(&mut command, &ctx.scratch.0)?;
    let removing = Instant::now();
    for (cgroup, netns) in &others {
        ebpf_task::remove(&request(cgroup.path(), netns)).context("remove a task")?;
    }
    intercept::backend::prune_ended(ctx.bpffs.path()).context("prune")?;
    let remove_all = removing.elapsed();
    Ok(Scale {
        tasks,
        kernel_bytes,
        kernel_by_name,
        first_cli,
        last_cli,
        in_process,
        remove_cli,
        remove_all,
        rate,
        rate_none,
    })
}

/// The bench's seed configuration ([`proxy_configuration`] with no extra ignored IPs), as the
/// daemon holds it after parsing a task's file.
fn scale_proxy_config() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![PROXY_UID],
        ingress: Some(Ingress { proxy_port: 15000, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        egress_ignored_ports: PortSet::from_ranges([PortRange::single(22)]),
        egress_ignored_ips: vec![
            "169.254.170.2/32".parse().expect("a network"),
            "169.254.169.254/32".parse().expect("a network"),
        ],
        ipv6: false,
        ..ProxyConfig::new(PROXY.port())
    }
}

/// The kernel's own accounting (`memlock` in fdinfo) of every program and map that the pins
/// under `bpffs` hold: the maps pinned, the programs of the links pinned, and the maps those
/// programs use; each counted once, by kind and name (`map ORIG_DST`, `program connect4`).
fn kernel_memory(bpffs: &Path) -> Result<BTreeMap<String, u64>> {
    let pins = pins(bpffs)?;
    let programs = linked_programs(&pins)?;
    let mut maps = BTreeMap::new();
    for path in pins {
        if !is_link(&path) && !is_program(&path) {
            let info = MapInfo::from_pin(&path).with_context(|| format!("{}", path.display()))?;
            maps.insert(info.id(), map_memlock(&info).with_context(|| format!("{}", path.display()))?);
        }
    }
    let mut by_name = BTreeMap::new();
    for info in loaded_programs() {
        let info = info?;
        if programs.contains(&info.id()) {
            let name = format!("program {}", info.name_as_str().unwrap_or("?"));
            *by_name.entry(name).or_insert(0) += u64::from(info.memory_locked()?);
            for id in info.map_ids()?.unwrap_or_default() {
                if let std::collections::btree_map::Entry::Vacant(e) = maps.entry(id) {
                    let info = MapInfo::from_id(id)
                        .with_context(|| format!("map {id} of program {}", info.name_as_str().unwrap_or("?")))?;
                    e.insert(map_memlock(&info).with_context(|| format!("map {id}"))?);
                }
            }
        }
    }
    for (name, bytes) in maps.into_values() {
        *by_name.entry(format!("map {name}")).or_insert(0) += bytes;
    }
    Ok(by_name)
}

/// A map's name and its `memlock`.
fn map_memlock(info: &MapInfo) -> Result<(String, u64)> {
    let fd = info.fd()?;
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
    let line = text.lines().find(|l| l.starts_with("memlock:")).context("no memlock in a map's fdinfo")?;
    let bytes = line.split_whitespace().nth(1).context("memlock value")?.parse()?;
    Ok((info.name_as_str().unwrap_or("?").to_owned(), bytes))
}

fn scale_markdown(scales: &[Scale], elapsed: Duration, svg: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{HOST_SCALE_START}");
    let _ = writeln!(out, "## Many tasks on one host (`cargo xtask bench --host-scale`)\n");
    let _ = writeln!(
        out,
        "Measured in {:.0} s on {}. Each task is a cgroup and a network namespace made by the bench, with the seed \
         configuration (IgnoredUID, ProxyEgressPort, ingress to AppPort 9080, the metadata IPs, port 22). The \
         first task is the bench's sandbox (proxy and app pinned to one CPU, as above); the others have no \
         processes. *Kernel memory* is the kernel's own accounting (`memlock` in fdinfo) of every map and \
         program intercept's pins hold, each counted once. *CLI apply* is `intercept apply --backend ebpf`, \
         spawn to exit, for the first task and for one more once the others exist; *in process* is the \
         backend's apply as `intercept daemon` runs it (it prunes once per pass, not per task). *CLI remove: \
         one* is `intercept remove --backend ebpf` of one task while the others are installed (as an init \
         container or the CNI plugin removes; it removes that task only); *remove all* is \
         every other task's removal in process, then one prune, as the daemon removes on exit. The \
         connection rate is the first task's short \
         connections with every other task installed (median of {SCALE_REPETITIONS}), against the same app \
         and proxy in a namespace and cgroup of their own with nothing installed, the app dialling the proxy \
         itself, measured in turn with it.\n",
        elapsed.as_secs_f64(),
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    );
    let _ = writeln!(
        out,
        "| tasks | kernel memory | per task | CLI apply: first / one more | peak RSS | in process: median / p90 | CLI remove: one | remove all | connections/s (ratio to none) |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in scales {
        let mut sorted: Vec<f64> = s.in_process.iter().map(|d| ms(*d)).collect();
        sorted.sort_by(f64::total_cmp);
        let p90 = sorted.get(sorted.len().saturating_sub(1).min(sorted.len() * 9 / 10)).copied();
        let in_process = match p90 {
            Some(p90) => format!("{:.2} / {:.2} ms", median(sorted.clone()), p90),
            None => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} MiB | {:.1} KiB | {:.1} / {:.1} ms | {:.1} MiB | {in_process} | {:.1} ms | {:.2} s | {} ({:.3}) |",
            thousands(s.tasks),
            s.kernel_bytes as f64 / MIB,
            s.kernel_bytes as f64 / 1024.0 / s.tasks as f64,
            ms(s.first_cli.0),
            ms(s.last_cli.0),
            s.first_cli.1.max(s.last_cli.1) as f64 / 1024.0,
            ms(s.remove_cli),
            s.remove_all.as_secs_f64(),
            thousands(s.rate.round() as usize),
            s.rate / s.rate_none
        );
    }
    if let Some(largest) = scales.last() {
        let _ = writeln!(
            out,
            "\nWhere the kernel memory goes, per task (at {} tasks; programs are the programs' images, each map \
             its own accounting):\n",
            thousands(largest.tasks)
        );
        let _ = writeln!(out, "| object | KiB per task |\n|---|---:|");
        let mut parts: Vec<(&String, &u64)> = largest.kernel_by_name.iter().collect();
        parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (name, bytes) in parts {
            let _ = writeln!(out, "| {name} | {:.1} |", *bytes as f64 / 1024.0 / largest.tasks as f64);
        }
    }
    let _ = writeln!(out, "\n![kernel memory against the number of tasks]({svg})\n");
    let _ = writeln!(out, "{HOST_SCALE_END}");
    out
}

/// Kernel memory (MiB) against tasks, both axes logarithmic, with each point labelled.
fn scale_svg(scales: &[Scale]) -> String {
    let (width, height, left, bottom, top, right) = (640.0, 360.0, 70.0, 50.0, 30.0, 30.0);
    let log = |v: f64| v.max(1e-9).log10();
    let xs: Vec<f64> = scales.iter().map(|s| log(s.tasks as f64)).collect();
    let ys: Vec<f64> = scales.iter().map(|s| log(s.kernel_bytes as f64 / MIB)).collect();
    let (x0, x1) = (0.0, xs.iter().copied().fold(1.0, f64::max));
    let (y0, y1) =
        (ys.iter().copied().fold(f64::INFINITY, f64::min).floor(), ys.iter().copied().fold(0.0, f64::max).ceil());
    let px = |x: f64| left + (x - x0) / (x1 - x0).max(1e-9) * (width - left - right);
    let py = |y: f64| height - bottom - (y - y0) / (y1 - y0).max(1e-9) * (height - bottom - top);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="18" text-anchor="middle">intercept eBPF: kernel memory of all tasks (MiB, log) against tasks (log)</text>"#,
        width / 2.0
    );
    let mut decade = y0;
    while decade <= y1 {
        let y = py(decade);
        let _ =
            writeln!(out, r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, width - right);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            10f64.powf(decade)
        );
        decade += 1.0;
    }
    for s in scales {
        let x = px(log(s.tasks as f64));
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            height - bottom + 18.0,
            thousands(s.tasks)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">tasks on the host</text>"#,
        width / 2.0,
        height - 10.0
    );
    let points: Vec<String> = xs.iter().zip(&ys).map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y))).collect();
    let _ =
        writeln!(out, r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##, points.join(" "));
    for (s, (x, y)) in scales.iter().zip(xs.iter().zip(&ys)) {
        let (x, y) = (px(*x), py(*y));
        let _ = writeln!(out, r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="#1f77b4"/>"##);
        // Labels right of the points in the left half, left of them in the right half.
        let (anchor, dx) = if x > width / 2.0 { ("end", -8.0) } else { ("start", 8.0) };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}">{:.2} MiB, {:.1} KiB/task</text>"#,
            x + dx,
            y - 8.0,
            s.kernel_bytes as f64 / MIB,
            s.kernel_bytes as f64 / 1024.0 / s.tasks as f64
        );
    }
    out.push_str("</svg>\n");
    out
}
