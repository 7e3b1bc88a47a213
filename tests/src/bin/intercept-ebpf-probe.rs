//! The eBPF backend tests' traffic tool, run as a child process (so that it can be placed in
//! a test cgroup, a test network namespace and under a chosen uid/gid):
//!
//! - `intercept-ebpf-probe listen [--orig-dst] ADDR...`: listens on every ADDR, prints
//!   `READY` once all are bound, then one line per connection once the peer has closed it:
//!   `<listening addr> <peer addr> <original destination or -> <what the peer sent>`. With
//!   `--orig-dst` it asks each accepted socket for `SO_ORIGINAL_DST` (`SOL_IP` for IPv4
//!   sockets, `SOL_IPV6` for IPv6 ones), as Envoy does. Runs until killed.
//! - `intercept-ebpf-probe serve ROLE [udp:]ADDR...`: a listener of the shared topology's protocol
//!   (`intercept_tests::traffic`): answers each connection with `<role> local=<addr>
//!   original=<addr|->` (`SO_ORIGINAL_DST` for the proxy roles) after the peer shut down its
//!   side; prints `READY` once bound. A process, unlike the topology's in-runner listeners,
//!   can be placed in the test cgroup: the eBPF programs see a proxy's sockets only there.
//!   A `udp:` address is a UDP socket answering each datagram with the same line.
//!   `PROBE_BACKLOG=N` listens with that backlog, and `PROBE_ACCEPT_GATE=PATH` accepts nothing
//!   until PATH exists: connections wait in the accept queue (and, past the backlog, their
//!   SYNs are dropped and retried by the client's kernel), for tests that need a connection
//!   in flight at a chosen moment. Once the gate opens, the listeners take the standard backlog.
//! - `intercept-ebpf-probe connect ADDR TOKEN`: connects over TCP, sends TOKEN, exits 0.
//! - `intercept-ebpf-probe churn ADDR N`: N sequential connect/close cycles, exits 0.
//! - `intercept-ebpf-probe udp ADDR`: connect(2) on a UDP socket and one datagram, exits 0.
//! - `intercept-ebpf-probe apply CGROUP BPFFS`: applies the eBPF tests' seed configuration
//!   (`intercept_tests::ebpf::seed_config`) to CGROUP with pins under BPFFS and exits: the
//!   "init container" whose exit interception must survive. Errors are printed in full.

use std::io::{Read as _, Write as _};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SO_ORIGINAL_DST: libc::c_int = 80;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("listen") => listen(&args[1..]),
        Some("serve") if args.len() >= 3 => serve_replies(&args[1], &args[2..]),
        Some("connect") if args.len() == 3 => connect(&args[1], &args[2]),
        Some("churn") if args.len() == 3 => churn(&args[1], &args[2]),
        Some("udp") if args.len() == 2 => udp(&args[1]),
        Some("apply") if args.len() == 4 => apply(&args[1], &args[2], &args[3]),
        _ => {
            Err("usage: intercept-ebpf-probe listen [--orig-dst] ADDR... | serve ROLE ADDR... | connect ADDR TOKEN | \
             churn ADDR N | udp ADDR | apply CGROUP BPFFS NETNS"
                .into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("intercept-ebpf-probe: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse(addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|e| format!("invalid address {addr:?}: {e}"))
}

fn listen(args: &[String]) -> Result<(), String> {
    let orig_dst = args.first().is_some_and(|a| a == "--orig-dst");
    let addrs = if orig_dst { &args[1..] } else { args };
    let mut listeners = Vec::new();
    for addr in addrs {
        let addr = parse(addr)?;
        listeners.push(TcpListener::bind(addr).map_err(|e| format!("listen on {addr}: {e}"))?);
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    {
        let mut out = out.lock().unwrap();
        let _ = writeln!(out, "READY");
        let _ = out.flush();
    }
    let mut threads = Vec::new();
    for listener in listeners {
        let out = Arc::clone(&out);
        threads.push(std::thread::spawn(move || {
            let local = listener.local_addr().expect("bound");
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let out = Arc::clone(&out);
                std::thread::spawn(move || serve(stream, local, orig_dst, &out));
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn serve(mut stream: TcpStream, local: SocketAddr, orig_dst: bool, out: &Mutex<std::io::Stdout>) {
    let peer = stream.peer_addr().map_or("?".to_owned(), |p| p.to_string());
    let orig = if orig_dst { original_destination(&stream, local) } else { "-".to_owned() };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut data = Vec::new();
    let _ = stream.read_to_end(&mut data);
    let data = String::from_utf8_lossy(&data).trim().replace(char::is_whitespace, "_");
    let mut out = out.lock().unwrap();
    let _ = writeln!(out, "{local} {peer} {orig} {}", if data.is_empty() { "-" } else { &data });
    let _ = out.flush();
}

fn serve_replies(role: &str, addrs: &[String]) -> Result<(), String> {
    use intercept_tests::traffic::{Reply, Role};
    let role = [Role::EgressProxy, Role::IngressProxy, Role::App, Role::Remote, Role::DnsProxy]
        .into_iter()
        .find(|r| r.name() == role)
        .ok_or_else(|| format!("unknown role {role:?}"))?;
    let mut listeners = Vec::new();
    let mut datagrams = Vec::new();
    for addr in addrs {
        if let Some(addr) = addr.strip_prefix("udp:") {
            let addr = parse(addr)?;
            datagrams.push(UdpSocket::bind(addr).map_err(|e| format!("bind UDP {addr}: {e}"))?);
            continue;
        }
        let addr = parse(addr)?;
        listeners.push(TcpListener::bind(addr).map_err(|e| format!("listen on {addr}: {e}"))?);
    }
    for socket in datagrams {
        // Each datagram answered with the reply line, back to where it came from.
        std::thread::spawn(move || {
            let Ok(local) = socket.local_addr() else { return };
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let reply = Reply { role, local, original: None, from: None };
                let _ = socket.send_to(format!("{reply}\n").as_bytes(), peer);
            }
        });
    }
    if let Some(backlog) = std::env::var("PROBE_BACKLOG").ok().and_then(|b| b.parse::<libc::c_int>().ok()) {
        for listener in &listeners {
            // SAFETY: listen(2) again on a listening socket only changes its backlog.
            if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
                return Err(format!("listen with backlog {backlog}: {}", std::io::Error::last_os_error()));
            }
        }
    }
    let gate = std::env::var_os("PROBE_ACCEPT_GATE").map(std::path::PathBuf::from);
    println!("READY");
    let _ = std::io::stdout().flush();
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let gate = gate.clone();
            std::thread::spawn(move || {
                if let Some(gate) = &gate {
                    while !gate.exists() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    // Past the gate, the standard backlog, so that the handshakes retried together
                    // then do not overflow the queue: under a small backlog SYNs are answered with
                    // cookies, and a handshake dropped on overflow is reset when a later segment
                    // of it fails the cookie check (TcpExtSyncookiesFailed).
                    // SAFETY: listen(2) again on a listening socket only changes its backlog.
                    if unsafe { libc::listen(listener.as_raw_fd(), libc::SOMAXCONN) } != 0 {
                        eprintln!("intercept-ebpf-probe: listen past the gate: {}", std::io::Error::last_os_error());
                        return;
                    }
                }
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut request = Vec::new();
                        let _ = stream.read_to_end(&mut request);
                        let Ok(local) = stream.local_addr() else { return };
                        let original =
                            if role.is_proxy() { original_destination(&stream, local).parse().ok() } else { None };
                        let _ =
                            stream.write_all(format!("{}\n", Reply { role, local, original, from: None }).as_bytes());
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    });
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// `getsockopt(SO_ORIGINAL_DST)`, or `error:<errno>`.
fn original_destination(stream: &TcpStream, local: SocketAddr) -> String {
    let fd = stream.as_raw_fd();
    // SAFETY: each buffer is a properly sized, writable sockaddr and len says how big it is.
    unsafe {
        match local {
            SocketAddr::V4(_) => {
                let mut sa: libc::sockaddr_in = zeroed();
                let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if libc::getsockopt(
                    fd,
                    libc::SOL_IP,
                    SO_ORIGINAL_DST,
                    (&mut sa as *mut libc::sockaddr_in).cast(),
                    &mut len,
                ) != 0
                {
                    return format!("error:{}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
                }
                let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
                SocketAddrV4::new(ip, u16::from_be(sa.sin_port)).to_string()
            }
            SocketAddr::V6(_) => {
                let mut sa: libc::sockaddr_in6 = zeroed();
                let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                if libc::getsockopt(
                    fd,
                    libc::SOL_IPV6,
                    SO_ORIGINAL_DST,
                    (&mut sa as *mut libc::sockaddr_in6).cast(),
                    &mut len,
                ) != 0
                {
                    return format!("error:{}", std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
                }
                let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                SocketAddrV6::new(ip, u16::from_be(sa.sin6_port), 0, 0).to_string()
            }
        }
    }
}

fn connect(addr: &str, token: &str) -> Result<(), String> {
    let addr = parse(addr)?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.write_all(token.as_bytes()).map_err(|e| format!("write to {addr}: {e}"))
}

fn churn(addr: &str, n: &str) -> Result<(), String> {
    let addr = parse(addr)?;
    let n: usize = n.parse().map_err(|e| format!("invalid count {n:?}: {e}"))?;
    for i in 0..n {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {i} to {addr}: {e}"))?;
        stream.write_all(b"churn").map_err(|e| format!("write {i} to {addr}: {e}"))?;
    }
    Ok(())
}

fn udp(addr: &str) -> Result<(), String> {
    let addr = parse(addr)?;
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
    let socket = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    socket.connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    socket.send(b"udp").map_err(|e| format!("send to {addr}: {e}"))?;
    Ok(())
}

fn apply(cgroup: &str, bpffs: &str, netns: &str) -> Result<(), String> {
    use intercept::backend::ebpf;
    use intercept_tests::ebpf::error_chain as chain;
    use std::os::fd::AsFd as _;
    let target = ebpf::Target::new(cgroup, Some(std::path::Path::new(bpffs))).map_err(|e| chain(&e))?;
    let plan = intercept::plan::ebpf::EbpfPlan::new(&intercept_tests::ebpf::seed_config());
    let local: Vec<std::net::IpAddr> =
        intercept_tests::ebpf::TASK_ADDRS.iter().map(|a| a.parse().expect("valid")).collect();
    let netns = std::fs::File::open(netns).map_err(|e| format!("open {netns}: {e}"))?;
    let applied =
        ebpf::apply(&target, &plan, &local, netns.as_fd(), ebpf::ApplyOptions::default()).map_err(|e| chain(&e))?;
    println!("{:?}", applied.outcome);
    Ok(())
}
