//! Real connections through a [`Topology`](crate::topology::Topology): listeners that say
//! who answered and where the connection was meant to go, a client runner that connects
//! from a chosen namespace, cgroup and identity, and the comparison of what happened with
//! the decision model.
//!
//! Every listener answers each connection with one line, `<role> local=<addr>
//! original=<addr|->`: its role (a proxy, the app, a remote server), the address the
//! connection reached, and for proxies the original destination read with
//! `getsockopt(SO_ORIGINAL_DST)` (`IP6T_SO_ORIGINAL_DST` for IPv6), as Envoy reads it.

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use intercept::model::{Connection, Decision, Direction, Protocol};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, getsockopt, listen, setsockopt, socket,
    sockopt,
};

use crate::{TestCgroup, ebpf::as_identity, topology::Netns};

/// How long a client may take to connect and read its answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who answered a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The proxy's egress listener (ProxyEgressPort).
    EgressProxy,
    /// The proxy's ingress listener (ProxyIngressPort).
    IngressProxy,
    /// The application in the task (its AppPorts and other ports).
    App,
    /// A server in the remote namespace.
    Remote,
    /// The proxy's DNS listener (ProxyDNSPort), UDP and TCP.
    DnsProxy,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::EgressProxy => "egress-proxy",
            Role::IngressProxy => "ingress-proxy",
            Role::App => "app",
            Role::Remote => "remote",
            Role::DnsProxy => "dns-proxy",
        }
    }

    fn from_name(name: &str) -> Option<Role> {
        [Role::EgressProxy, Role::IngressProxy, Role::App, Role::Remote, Role::DnsProxy]
            .into_iter()
            .find(|r| r.name() == name)
    }

    pub fn is_proxy(self) -> bool {
        matches!(self, Role::EgressProxy | Role::IngressProxy | Role::DnsProxy)
    }
}

/// One listener's answer to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub role: Role,
    /// The address the connection reached (the listener's side of it).
    pub local: SocketAddr,
    /// What `SO_ORIGINAL_DST` said (proxies only).
    pub original: Option<SocketAddr>,
    /// For UDP: where the client saw the reply come from (`recvfrom`), which is what a
    /// resolver checks; the client adds it, the listener does not know it.
    pub from: Option<SocketAddr>,
}

impl Reply {
    pub fn parse(line: &str) -> Result<Reply, String> {
        let bad = || format!("not a listener reply: {line:?}");
        let mut words = line.split_whitespace();
        let role = words.next().and_then(Role::from_name).ok_or_else(bad)?;
        let local = words.next().and_then(|w| w.strip_prefix("local=")).and_then(|a| a.parse().ok()).ok_or_else(bad)?;
        let original = match words.next().and_then(|w| w.strip_prefix("original=")).ok_or_else(bad)? {
            "-" => None,
            addr => Some(addr.parse().map_err(|_| bad())?),
        };
        let from = match words.next() {
            None => None,
            Some(word) => Some(word.strip_prefix("from=").and_then(|a| a.parse().ok()).ok_or_else(bad)?),
        };
        Ok(Reply { role, local, original, from })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} local={} original=", self.role.name(), self.local)?;
        match self.original {
            Some(addr) => write!(f, "{addr}")?,
            None => f.write_str("-")?,
        }
        match self.from {
            Some(addr) => write!(f, " from={addr}"),
            None => Ok(()),
        }
    }
}

/// Listeners running in one namespace until dropped.
pub struct Listeners {
    listeners: Vec<(Arc<TcpListener>, JoinHandle<()>)>,
}

impl Listeners {
    /// Listens on every `(role, address)` inside `netns` (IPv6 sockets are IPv6-only, so
    /// `0.0.0.0:p` and `[::]:p` can both be given) and answers connections until dropped.
    pub fn start(netns: &Netns, addresses: &[(Role, SocketAddr)]) -> Listeners {
        let bound: Vec<(Role, TcpListener)> = netns.run(|| {
            addresses
                .iter()
                .map(|&(role, addr)| (role, listen_on(addr).unwrap_or_else(|e| panic!("listen on {addr}: {e}"))))
                .collect()
        });
        let listeners = bound
            .into_iter()
            .map(|(role, listener)| {
                let listener = Arc::new(listener);
                let accepting = Arc::clone(&listener);
                (listener, thread::spawn(move || serve(role, &accepting)))
            })
            .collect();
        Listeners { listeners }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for (listener, _) in &self.listeners {
            // Wakes the blocked accept(2) with EINVAL: the thread ends.
            // SAFETY: shutdown on a descriptor the Arc keeps open.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for (_, handle) in self.listeners.drain(..) {
            let _ = handle.join();
        }
    }
}

/// UDP listeners in one namespace until dropped: each answers every datagram with its reply
/// line, sent back to where the datagram came from. They bind specific addresses, so that
/// the reply can say which address the datagram reached.
pub struct UdpListeners {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpListeners {
    pub fn start(netns: &Netns, addresses: &[(Role, SocketAddr)]) -> UdpListeners {
        let sockets: Vec<(Role, std::net::UdpSocket)> = netns.run(|| {
            addresses
                .iter()
                .map(|&(role, addr)| {
                    let socket = std::net::UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP {addr}: {e}"));
                    (role, socket)
                })
                .collect()
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = sockets
            .into_iter()
            .map(|(role, socket)| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    // Woken every 100 ms to see whether to stop.
                    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
                    let local = socket.local_addr().expect("a bound socket");
                    let mut buf = [0u8; 2048];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                            let reply = Reply { role, local, original: None, from: None };
                            let _ = socket.send_to(format!("{reply}\n").as_bytes(), peer);
                        }
                    }
                })
            })
            .collect();
        UdpListeners { stop, threads }
    }
}

impl Drop for UdpListeners {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A listening socket; IPv6 ones do not take IPv4 connections (`IPV6_V6ONLY`).
fn listen_on(addr: SocketAddr) -> nix::Result<TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(v4) => bind(fd.as_raw_fd(), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(v6))?;
        }
    }
    listen(&fd, Backlog::new(128)?)?;
    Ok(TcpListener::from(fd))
}

fn serve(role: Role, listener: &TcpListener) {
    while let Ok((stream, _)) = listener.accept() {
        thread::spawn(move || {
            let _ = answer(role, stream);
        });
    }
}

/// Reads what the client sends until it shuts down its side, then answers and closes:
/// reading first means no unread data is left to turn the close into a reset.
fn answer(role: Role, mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::new();
    stream.read_to_end(&mut request)?;
    let local = stream.local_addr()?;
    let original = if role.is_proxy() { original_destination(&stream, local) } else { None };
    stream.write_all(format!("{}\n", Reply { role, local, original, from: None }).as_bytes())?;
    stream.shutdown(Shutdown::Write)
}

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`: where a redirected connection was going.
fn original_destination(stream: &TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    let fd = stream.as_fd();
    match local {
        SocketAddr::V4(_) => {
            let sin = getsockopt(&fd, sockopt::OriginalDst).ok()?;
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(&fd, sockopt::Ip6tOriginalDst).ok()?;
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), 0, 0)))
        }
    }
}

/// Runs `intercept-test-client --reply` (the binary at `program`) in a chosen namespace,
/// cgroup and identity. The pre-exec steps run in that order: the cgroup first (writing
/// `cgroup.procs` needs the runner's privileges), then the namespace, then the identity.
pub struct Client<'a> {
    program: PathBuf,
    netns: Option<&'a Netns>,
    cgroup: Option<&'a TestCgroup>,
    identity: Option<(u32, u32)>,
    udp: Option<Udp>,
    timeout: Option<Duration>,
}

/// How the client sends a datagram instead of connecting over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Udp {
    /// `sendto` on an unconnected socket (musl's resolver, dig).
    Unconnected,
    /// `connect`, then `send` (glibc's resolver).
    Connected,
}

impl<'a> Client<'a> {
    pub fn new(program: impl AsRef<Path>) -> Client<'a> {
        Client {
            program: program.as_ref().to_owned(),
            netns: None,
            cgroup: None,
            identity: None,
            udp: None,
            timeout: None,
        }
    }

    pub fn netns(mut self, netns: &'a Netns) -> Client<'a> {
        self.netns = Some(netns);
        self
    }

    pub fn cgroup(mut self, cgroup: &'a TestCgroup) -> Client<'a> {
        self.cgroup = Some(cgroup);
        self
    }

    /// Run as `uid`/`gid` with no supplementary groups (default: the runner's, root).
    pub fn identity(mut self, uid: u32, gid: u32) -> Client<'a> {
        self.identity = Some((uid, gid));
        self
    }

    /// Send one datagram instead, and read the reply.
    pub fn udp(mut self, udp: Udp) -> Client<'a> {
        self.udp = Some(udp);
        self
    }

    /// Let the connect and the reply take up to `timeout` each (default: the client's 5 s),
    /// for a connection held on purpose.
    pub fn timeout(mut self, timeout: Duration) -> Client<'a> {
        self.timeout = Some(timeout);
        self
    }

    /// The command that connects to `addr` and prints the reply.
    pub fn command(&self, addr: SocketAddr) -> Command {
        let mut command = match self.cgroup {
            Some(cgroup) => cgroup.command(&self.program),
            None => Command::new(&self.program),
        };
        command.arg(match self.udp {
            None => "--reply",
            Some(Udp::Unconnected) => "--udp",
            Some(Udp::Connected) => "--udp-connected",
        });
        command.arg(addr.to_string());
        if let Some(netns) = self.netns {
            netns.enter(&mut command);
        }
        if let Some((uid, gid)) = self.identity {
            as_identity(&mut command, uid, gid);
        }
        if let Some(timeout) = self.timeout {
            command.env("INTERCEPT_TEST_CLIENT_TIMEOUT_MS", timeout.as_millis().to_string());
        }
        command
    }

    /// Connects to `addr` and returns who answered; `Err` with the client's message when
    /// the connection failed.
    pub fn connect(&self, addr: SocketAddr) -> Result<Reply, String> {
        let mut command = self.command(addr);
        let deadline = self.timeout.map_or(CLIENT_TIMEOUT, |t| 2 * t) + Duration::from_secs(5);
        let output = run_with_deadline(&mut command, deadline);
        if !output.status.success() {
            return Err(format!("{} ({})", String::from_utf8_lossy(&output.stderr).trim(), output.status));
        }
        Reply::parse(String::from_utf8_lossy(&output.stdout).trim())
    }
}

/// Like `Command::output`, but a child still running at `timeout` is killed (by pid).
fn run_with_deadline(command: &mut Command, timeout: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("collect the client's output"),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("collect the client's output");
                panic!("{command:?} still running after {timeout:?}; killed it ({output:?})");
            }
            Err(e) => panic!("wait for {command:?}: {e}"),
        }
    }
}

/// The connection as the decision model sees it.
pub fn egress(uid: u32, gid: u32, source: IpAddr, destination: SocketAddr) -> Connection {
    Connection {
        direction: Direction::Egress,
        protocol: Protocol::Tcp,
        uid,
        gid,
        source: SocketAddr::new(source, 0),
        destination,
    }
}

pub fn ingress(source: IpAddr, destination: SocketAddr) -> Connection {
    Connection {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        uid: 0,
        gid: 0,
        source: SocketAddr::new(source, 0),
        destination,
    }
}

/// Whether what happened to `connection` (`reply`) is what the model decided: redirected
/// to the proxy port it names, with the original destination intact, or delivered to the
/// real destination untouched.
pub fn agrees(decision: &Decision, connection: &Connection, reply: &Reply) -> Result<(), String> {
    let explain = |what: &str| format!("{what}: model says {decision}, but {reply} answered");
    let udp = connection.protocol == Protocol::Udp;
    match decision {
        Decision::Redirect { to } => {
            let proxy = match (connection.direction, udp) {
                (Direction::Ingress, _) => reply.role == Role::IngressProxy,
                // Egress goes to ProxyEgressPort, DNS to ProxyDNSPort: the port tells which.
                (Direction::Egress, false) => matches!(reply.role, Role::EgressProxy | Role::DnsProxy),
                (Direction::Egress, true) => reply.role == Role::DnsProxy,
            };
            if !proxy {
                return Err(explain("not redirected to the proxy"));
            }
            if reply.local.port() != to.port() {
                return Err(explain("redirected to another port"));
            }
            // REDIRECT sends egress to loopback and ingress to the incoming interface's first
            // address; in a sandbox that is the destination, as the model says.
            if reply.local.ip() != to.ip() {
                return Err(explain("redirected to another address"));
            }
            if udp {
                // The resolver must see the reply come from the server it asked.
                if reply.from != Some(connection.destination) {
                    return Err(explain("the reply did not come from the server asked"));
                }
            } else if reply.original != Some(connection.destination) {
                return Err(explain("the proxy read the wrong original destination"));
            }
        }
        Decision::Untouched { .. } => {
            if reply.role.is_proxy() {
                return Err(explain("redirected"));
            }
            if reply.local != connection.destination {
                return Err(explain("delivered somewhere else"));
            }
            if udp && reply.from != Some(connection.destination) {
                return Err(explain("the reply came from somewhere else"));
            }
        }
    }
    Ok(())
}

/// A DNS datagram or TCP connection to port 53, as the decision model sees it.
pub fn dns(uid: u32, gid: u32, source: IpAddr, destination: SocketAddr, protocol: Protocol) -> Connection {
    Connection { protocol, ..egress(uid, gid, source, destination) }
}

/// What a [`Sandbox`] listens on, besides the fixed topology.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// Proxy listeners in the task (IPv4 and IPv6, all addresses).
    pub egress_proxy_ports: Vec<u16>,
    pub ingress_proxy_ports: Vec<u16>,
    /// App listeners in the task (AppPorts, and other ports ingress may reach directly).
    pub app_ports: Vec<u16>,
    /// Server ports in the remote namespace, on every remote address.
    pub remote_ports: Vec<u16>,
    /// Addresses the remote namespace gets in addition to its gateway and metadata ones.
    pub remote_addresses: Vec<IpAddr>,
    /// The proxy's DNS listener in the task, on loopback: UDP on `127.0.0.1` and `[::1]`, TCP
    /// on every address.
    pub dns_proxy_port: Option<u16>,
    /// DNS servers in the remote namespace: UDP and TCP port 53 on the gateway addresses and
    /// every one of `remote_addresses`.
    pub remote_dns: bool,
}

/// A [`Topology`](crate::topology::Topology) with listeners in both namespaces. Dropping it
/// closes the listeners, then deletes the namespaces.
pub struct Sandbox {
    // Field order is drop order: the sockets go before their namespaces.
    _task_listeners: Listeners,
    _remote_listeners: Listeners,
    _udp_listeners: (UdpListeners, UdpListeners),
    pub topology: crate::topology::Topology,
}

impl Sandbox {
    pub fn new(spec: &SandboxSpec) -> Sandbox {
        Sandbox::around(crate::topology::Topology::new(), spec)
    }

    /// The listeners of `spec` in a topology made elsewhere (around a pause container's
    /// namespace, [`crate::topology::Topology::around`]).
    pub fn around(topology: crate::topology::Topology, spec: &SandboxSpec) -> Sandbox {
        topology.add_remote_addresses(&spec.remote_addresses);
        let everywhere = |role: Role, ports: &[u16]| -> Vec<(Role, SocketAddr)> {
            ports
                .iter()
                .flat_map(|&port| {
                    [
                        (role, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)),
                        (role, SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)),
                    ]
                })
                .collect()
        };
        let dns: Vec<u16> = spec.dns_proxy_port.into_iter().collect();
        let task: Vec<(Role, SocketAddr)> = [
            everywhere(Role::EgressProxy, &spec.egress_proxy_ports),
            everywhere(Role::IngressProxy, &spec.ingress_proxy_ports),
            everywhere(Role::App, &spec.app_ports),
            everywhere(Role::DnsProxy, &dns),
        ]
        .concat();
        let task_listeners = Listeners::start(&topology.task, &task);
        let mut remote_ports = spec.remote_ports.clone();
        if spec.remote_dns && !remote_ports.contains(&53) {
            remote_ports.push(53);
        }
        let remote_listeners = Listeners::start(&topology.remote, &everywhere(Role::Remote, &remote_ports));
        let udp_dns_proxy: Vec<(Role, SocketAddr)> = dns
            .iter()
            .flat_map(|&port| {
                [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
                    .map(|ip| (Role::DnsProxy, SocketAddr::new(ip, port)))
            })
            .collect();
        let udp_remote: Vec<(Role, SocketAddr)> = if spec.remote_dns {
            let gateways = [IpAddr::V4(crate::topology::REMOTE_V4), IpAddr::V6(crate::topology::REMOTE_V6)];
            gateways.iter().chain(&spec.remote_addresses).map(|&ip| (Role::Remote, SocketAddr::new(ip, 53))).collect()
        } else {
            Vec::new()
        };
        let udp =
            (UdpListeners::start(&topology.task, &udp_dns_proxy), UdpListeners::start(&topology.remote, &udp_remote));
        Sandbox { _task_listeners: task_listeners, _remote_listeners: remote_listeners, _udp_listeners: udp, topology }
    }

    pub fn task(&self) -> &Netns {
        &self.topology.task
    }

    pub fn remote(&self) -> &Netns {
        &self.topology.remote
    }

    /// Namespace paths, to check after drop that they are gone.
    pub fn netns_paths(&self) -> [PathBuf; 2] {
        [self.topology.task.path(), self.topology.remote.path()]
    }
}

/// Connects to `addr` from the calling thread and returns who answered: the same exchange as
/// `intercept-test-client --reply`, for a thread that joined a namespace
/// ([`Netns::run`](crate::topology::Netns::run)); it connects as the runner's identity.
pub fn connect_here(addr: SocketAddr) -> Result<Reply, String> {
    let exchange = || -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
        stream.write_all(crate::CLIENT_GREETING)?;
        stream.shutdown(Shutdown::Write)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let answer = exchange().map_err(|e| format!("{addr}: {e}"))?;
    Reply::parse(answer.trim())
}
