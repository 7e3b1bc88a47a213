//! The probe processes of `intercept verify`: this binary re-executed as the hidden
//! `verify-probe` subcommand in the target namespace and cgroup, as the identity under test.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ACCEPT_WAIT, Error, Identity};
use crate::cgroup;
use crate::netns::Netns;

/// Starts probe processes in the target namespace (and cgroup).
pub(super) struct Probes<'a> {
    netns: &'a Netns,
    /// The cgroup a probe joins before it runs (eBPF mode).
    cgroup: Option<&'a Path>,
    exe: PathBuf,
}

impl<'a> Probes<'a> {
    pub(super) fn new(netns: &'a Netns, cgroup: Option<&'a Path>) -> Result<Probes<'a>, Error> {
        let exe = std::env::current_exe().map_err(|source| Error::Io { op: "finding this program", source })?;
        Ok(Probes { netns, cgroup, exe })
    }

    /// Runs one probe; `None` when `deadline` passed first (the process was killed).
    pub(super) fn run(
        &self,
        listen: &[SocketAddr],
        dial: SocketAddr,
        identity: Identity,
        connect_timeout: Duration,
        deadline: Instant,
        udp: bool,
    ) -> Result<Option<ProbeOutcome>, Error> {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let mut command = self.netns.command(&self.exe);
        command.arg("verify-probe");
        if udp {
            command.arg("--udp");
        }
        command
            .args(["--dial", &dial.to_string()])
            .args(["--uid", &identity.uid.to_string(), "--gid", &identity.gid.to_string()])
            .args(["--connect-timeout-ms", &connect_timeout.as_millis().max(1).to_string()])
            .args(listen.iter().flat_map(|l| ["--listen".to_owned(), l.to_string()]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cgroup) = self.cgroup {
            cgroup::join(&mut command, cgroup).map_err(|source| Error::Io { op: "the cgroup path", source })?;
        }
        let probe = format!("dial {dial} as uid {} gid {}", identity.uid, identity.gid);
        let mut child =
            ProbeChild(command.spawn().map_err(|source| Error::Io { op: "starting a probe process", source })?);
        let status = loop {
            match child.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
                // Dropping the child kills it.
                Ok(None) => return Ok(None),
                Err(source) => return Err(Error::Io { op: "waiting for a probe process", source }),
            }
        };
        // The probe has exited: its few lines are all in the pipes.
        let mut stdout = String::new();
        if let Some(pipe) = child.0.stdout.as_mut() {
            pipe.read_to_string(&mut stdout).map_err(|source| Error::Io { op: "reading a probe's answer", source })?;
        }
        let mut stderr = String::new();
        if let Some(pipe) = child.0.stderr.as_mut() {
            // Only to explain a probe that gave no answer.
            let _ = pipe.read_to_string(&mut stderr);
        }
        let outcome: ProbeOutcome = serde_json::from_str(stdout.trim()).map_err(|e| Error::Probe {
            probe: probe.clone(),
            message: format!("{status} ({e}): {}{}", stdout.trim(), stderr.trim()),
        })?;
        if let Some(message) = outcome.error {
            return Err(Error::Probe { probe, message });
        }
        Ok(Some(outcome))
    }
}

/// A probe process, killed (by pid) and reaped when dropped: on every path out of
/// [`Probes::run`], a deadline or an error included, no probe outlives it.
struct ProbeChild(Child);

impl Drop for ProbeChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `intercept verify-probe` (hidden): one probe, run by `verify` in the target namespace and
/// cgroup. Listens on `--listen` (as root), then takes the identity, dials, reports as one JSON
/// line on stdout and exits, closing everything.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    #[arg(long)]
    pub dial: SocketAddr,
    #[arg(long)]
    pub uid: u32,
    #[arg(long)]
    pub gid: u32,
    #[arg(long)]
    pub connect_timeout_ms: u64,
    /// A DNS-like datagram on a connected UDP socket instead of a TCP connection; the
    /// listeners are UDP sockets.
    #[arg(long)]
    pub udp: bool,
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOutcome {
    /// The probe could not do its job (e.g. its listener could not bind).
    pub error: Option<String>,
    pub connected: bool,
    pub timed_out: bool,
    /// How the connect ended, for people.
    pub connect: String,
    /// The probe's own connection, as its listener accepted it.
    pub accepted: Option<Accepted>,
    /// With `--udp`: where the reply came from, as `recvfrom` says (what a resolver checks).
    #[serde(default)]
    pub reply_from: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub listener: SocketAddr,
    pub original_dst: Option<SocketAddr>,
    /// Why SO_ORIGINAL_DST gave no answer.
    pub original_dst_error: Option<String>,
}

impl ProbeOutcome {
    fn failed(message: String) -> ProbeOutcome {
        ProbeOutcome {
            error: Some(message),
            connected: false,
            timed_out: false,
            connect: String::new(),
            accepted: None,
            reply_from: None,
        }
    }

    pub(super) fn describe(&self) -> String {
        if let Some(from) = self.reply_from {
            let arrived = self.accepted.as_ref().map_or(String::new(), |a| format!("; arrived at {}", a.listener));
            return format!("{}{arrived}; the reply came from {from}", self.connect);
        }
        match &self.accepted {
            Some(Accepted { listener, original_dst: Some(dst), .. }) => {
                format!("{}; arrived at {listener}, SO_ORIGINAL_DST {dst}", self.connect)
            }
            Some(Accepted { listener, original_dst: None, original_dst_error }) => format!(
                "{}; arrived at {listener}, SO_ORIGINAL_DST failed: {}",
                self.connect,
                original_dst_error.as_deref().unwrap_or("no answer")
            ),
            None => self.connect.clone(),
        }
    }
}

/// The body of `intercept verify-probe`: prints the outcome; the exit code is 0 unless the
/// outcome cannot be printed.
pub fn probe_main(args: &ProbeArgs) -> i32 {
    let outcome = probe(args);
    match serde_json::to_string(&outcome) {
        Ok(json) => {
            println!("{json}");
            0
        }
        Err(_) => 1,
    }
}

fn probe(args: &ProbeArgs) -> ProbeOutcome {
    if args.udp {
        return probe_udp(args);
    }
    let bind = |a| TcpListener::bind(a).and_then(|l| l.set_nonblocking(true).map(|()| l));
    let listeners = match listen_then_become(args, "", bind) {
        Ok(listeners) => listeners,
        Err(why) => return ProbeOutcome::failed(why),
    };
    let timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
    let stream = TcpStream::connect_timeout(&args.dial, timeout);
    let (connected, timed_out, connect) = match &stream {
        Ok(s) => (
            true,
            false,
            format!("connected (from {})", s.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string())),
        ),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            (false, true, format!("no answer within {} ms", timeout.as_millis()))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => (
            false,
            false,
            format!(
                "connect failed: no route to {} (netfilter redirects after routing: the namespace needs a route \
                 to it, e.g. a default route)",
                args.dial.ip()
            ),
        ),
        Err(e) => (false, false, format!("connect failed: {e}")),
    };
    let accepted = match &stream {
        Ok(s) if !listeners.is_empty() => s.local_addr().ok().and_then(|from| accept_own(&listeners, from)),
        _ => None,
    };
    ProbeOutcome { error: None, connected, timed_out, connect, accepted, reply_from: None }
}

/// `--udp`: a query as glibc's resolver sends one (a connected UDP socket). The probe's own
/// listeners answer its datagram when it reaches them; the reply's source is recorded.
fn probe_udp(args: &ProbeArgs) -> ProbeOutcome {
    let bind = |a| UdpSocket::bind(a).and_then(|l| l.set_nonblocking(true).map(|()| l));
    let listeners = match listen_then_become(args, "UDP ", bind) {
        Ok(listeners) => listeners,
        Err(why) => return ProbeOutcome::failed(why),
    };
    let timeout = Duration::from_millis(args.connect_timeout_ms.max(1));
    let any: SocketAddr =
        if args.dial.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = match UdpSocket::bind(any)
        .and_then(|s| s.connect(args.dial).map(|()| s))
        .and_then(|s| s.set_read_timeout(Some(timeout)).map(|()| s))
    {
        Ok(socket) => socket,
        Err(e) => return ProbeOutcome::failed(format!("a UDP socket connected to {}: {e}", args.dial)),
    };
    if let Err(e) = socket.send(QUERY) {
        let connect = format!("send failed: {e}");
        return ProbeOutcome {
            error: None,
            connected: false,
            timed_out: false,
            connect,
            accepted: None,
            reply_from: None,
        };
    }
    let from = socket.local_addr().ok();
    let accepted = from.and_then(|from| answer_own(&listeners, from));
    let mut buf = [0u8; 512];
    let (reply_from, connected, timed_out, connect) = match socket.recv_from(&mut buf) {
        Ok((_, from)) => (Some(from), true, false, "sent a query and got a reply".to_owned()),
        Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
            (None, false, true, format!("sent a query; no reply within {} ms", timeout.as_millis()))
        }
        Err(e) => (None, false, false, format!("sent a query; no reply: {e}")),
    };
    ProbeOutcome { error: None, connected, timed_out, connect, accepted, reply_from }
}

/// What the probe sends: a DNS query for `verify.intercept.invalid` A. Its listeners answer
/// with the same bytes.
const QUERY: &[u8] =
    b"\x49\x43\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06verify\x09intercept\x07invalid\x00\x00\x01\x00\x01";

/// Waits up to [`ACCEPT_WAIT`] for the probe's own datagram from `from` on any of `listeners`
/// and answers it there.
fn answer_own(listeners: &[(SocketAddr, UdpSocket)], from: SocketAddr) -> Option<Accepted> {
    let until = Instant::now() + ACCEPT_WAIT;
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        for (addr, listener) in listeners {
            let Ok((n, peer)) = listener.recv_from(&mut buf) else { continue };
            if peer.port() != from.port() {
                continue;
            }
            let _ = listener.send_to(&buf[..n], peer);
            return Some(Accepted { listener: *addr, original_dst: None, original_dst_error: None });
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}

/// The probe's listeners (bound as root, non-blocking), then the identity under test; `Err`
/// says which of the two the probe could not do.
fn listen_then_become<L>(
    args: &ProbeArgs,
    kind: &str,
    bind: impl Fn(SocketAddr) -> io::Result<L>,
) -> Result<Vec<(SocketAddr, L)>, String> {
    let mut listeners = Vec::new();
    for &addr in &args.listen {
        let listener = bind(addr).map_err(|e| format!("listen on {kind}{addr}: {e}"))?;
        listeners.push((addr, listener));
    }
    take_identity(args.uid, args.gid).map_err(|e| format!("becoming uid {} gid {}: {e}", args.uid, args.gid))?;
    Ok(listeners)
}

fn take_identity(uid: u32, gid: u32) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    setgroups(&[])?;
    setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))?;
    setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
}

/// Waits up to [`ACCEPT_WAIT`] for the connection from `from` on any of `listeners`, and reads
/// its SO_ORIGINAL_DST. Other connections (the task's own, while verify listens) are closed.
fn accept_own(listeners: &[(SocketAddr, TcpListener)], from: SocketAddr) -> Option<Accepted> {
    let until = Instant::now() + ACCEPT_WAIT;
    while Instant::now() < until {
        for (addr, listener) in listeners {
            let Ok((stream, peer)) = listener.accept() else { continue };
            if peer != from {
                continue;
            }
            let (original_dst, original_dst_error) = match original_destination(&stream, *addr) {
                Ok(dst) => (Some(dst), None),
                Err(e) => (None, Some(e.to_string())),
            };
            return Some(Accepted { listener: *addr, original_dst, original_dst_error });
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`, as a proxy reads it.
fn original_destination(stream: &TcpStream, listener: SocketAddr) -> nix::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let fd = stream.as_fd();
    Ok(match listener {
        SocketAddr::V4(_) => {
            let sin = getsockopt(&fd, sockopt::OriginalDst)?;
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(&fd, sockopt::Ip6tOriginalDst)?;
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                0,
            ))
        }
    })
}
