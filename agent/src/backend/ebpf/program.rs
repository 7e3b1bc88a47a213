//! The object's programs, and where each attaches.

/// A program of the object and where it attaches: the task's cgroup, or for
/// [`Program::SkLookup`] its network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    /// `cgroup/connect4`: connect(2) on AF_INET sockets.
    Connect4,
    /// `cgroup/connect6`: connect(2) on AF_INET6 sockets (IPv6 and IPv4-mapped destinations).
    Connect6,
    /// `cgroup/sendmsg4`: datagrams sent on unconnected AF_INET UDP sockets (DNS capture).
    Sendmsg4,
    /// `cgroup/sendmsg6`: the same on AF_INET6 sockets.
    Sendmsg6,
    /// `cgroup/recvmsg4`: the source address of datagrams received on AF_INET UDP sockets
    /// (DNS replies).
    Recvmsg4,
    /// `cgroup/recvmsg6`: the same on AF_INET6 sockets.
    Recvmsg6,
    /// `sockops`: pairs redirected connections with their 4-tuple, cleans up on close.
    Sockops,
    /// `cgroup/getsockopt`: answers SO_ORIGINAL_DST.
    Getsockopt,
    /// `sk_lookup`, on the task's network namespace: steers inbound connections to AppPorts
    /// to the proxy's listener.
    SkLookup,
}

impl Program {
    pub const ALL: [Program; 9] = [
        Program::Connect4,
        Program::Connect6,
        Program::Sendmsg4,
        Program::Sendmsg6,
        Program::Recvmsg4,
        Program::Recvmsg6,
        Program::Sockops,
        Program::Getsockopt,
        Program::SkLookup,
    ];
    /// [`Program::ALL`] from the quickest to verify to the slowest (`strace -T` of
    /// `BPF_PROG_LOAD` on 6.18: connect6 2.5 ms, sendmsg6 1.2, connect4, sockops and
    /// getsockopt 1.0–1.1 each, the others less): the order a queue of loads pops them in.
    pub const BY_LOAD_TIME: [Program; 9] = [
        Program::Recvmsg4,
        Program::Recvmsg6,
        Program::SkLookup,
        Program::Sendmsg4,
        Program::Getsockopt,
        Program::Sockops,
        Program::Connect4,
        Program::Sendmsg6,
        Program::Connect6,
    ];
    /// The host's programs: loaded once per host, attached to every task's cgroup.
    pub const HOST: [Program; 7] = [
        Program::Connect4,
        Program::Connect6,
        Program::Sendmsg4,
        Program::Sendmsg6,
        Program::Recvmsg4,
        Program::Recvmsg6,
        Program::Getsockopt,
    ];
    /// The programs loaded for each task (small, and owning maps of the task's alone).
    pub const PER_TASK: [Program; 2] = [Program::Sockops, Program::SkLookup];
    /// The programs attached to the cgroup.
    pub const CGROUP: [Program; 8] = [
        Program::Connect4,
        Program::Connect6,
        Program::Sendmsg4,
        Program::Sendmsg6,
        Program::Recvmsg4,
        Program::Recvmsg6,
        Program::Sockops,
        Program::Getsockopt,
    ];

    /// Whether the program attaches to the network namespace rather than the cgroup.
    pub const fn on_netns(self) -> bool {
        matches!(self, Program::SkLookup)
    }

    /// The program's name in the object (its function name in `ebpf/src/main.rs`).
    pub const fn name(self) -> &'static str {
        match self {
            Program::Connect4 => "connect4",
            Program::Connect6 => "connect6",
            Program::Sendmsg4 => "sendmsg4",
            Program::Sendmsg6 => "sendmsg6",
            Program::Recvmsg4 => "recvmsg4",
            Program::Recvmsg6 => "recvmsg6",
            Program::Sockops => "track_sockets",
            Program::Getsockopt => "getsockopt",
            Program::SkLookup => "steer_ingress",
        }
    }

    /// The ELF section, i.e. the kind of hook.
    pub const fn section(self) -> &'static str {
        match self {
            Program::Connect4 => "cgroup/connect4",
            Program::Connect6 => "cgroup/connect6",
            Program::Sendmsg4 => "cgroup/sendmsg4",
            Program::Sendmsg6 => "cgroup/sendmsg6",
            Program::Recvmsg4 => "cgroup/recvmsg4",
            Program::Recvmsg6 => "cgroup/recvmsg6",
            Program::Sockops => "sockops",
            Program::Getsockopt => "cgroup/getsockopt",
            Program::SkLookup => "sk_lookup",
        }
    }

    /// The kernel's `bpf_attach_type` (uapi `linux/bpf.h`).
    pub const fn attach_type(self) -> u32 {
        match self {
            Program::Connect4 => 10,   // BPF_CGROUP_INET4_CONNECT
            Program::Connect6 => 11,   // BPF_CGROUP_INET6_CONNECT
            Program::Sendmsg4 => 14,   // BPF_CGROUP_UDP4_SENDMSG
            Program::Sendmsg6 => 15,   // BPF_CGROUP_UDP6_SENDMSG
            Program::Recvmsg4 => 19,   // BPF_CGROUP_UDP4_RECVMSG
            Program::Recvmsg6 => 20,   // BPF_CGROUP_UDP6_RECVMSG
            Program::Sockops => 3,     // BPF_CGROUP_SOCK_OPS
            Program::Getsockopt => 21, // BPF_CGROUP_GETSOCKOPT
            Program::SkLookup => 36,   // BPF_SK_LOOKUP
        }
    }

    /// The file name of the link's pin in the installation directory.
    pub fn link_pin(self) -> String {
        format!("link-{}", self.name())
    }
}
