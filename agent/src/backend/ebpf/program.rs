//! The object's programs, and where each attaches.

/// A program of the object and where it attaches: the task's cgroup, or for
/// [`Program::SkLookup`] its network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    /// `cgroup/connect4`: connect(2) on AF_INET sockets.
    Connect4,
    /// `cgroup/connect6`: connect(2) on AF_INET6 sockets (IPv6 and IPv4-mapped destinations).
    Connect6,
    /// `sockops`: pairs redirected connections with their 4-tuple, cleans up on close.
    Sockops,
    /// `cgroup/getsockopt`: answers SO_ORIGINAL_DST.
    Getsockopt,
    /// `sk_lookup`, on the task's network namespace: steers inbound connections to AppPorts
    /// to the proxy's listener.
    SkLookup,
}

impl Program {
    pub const ALL: [Program; 5] =
        [Program::Connect4, Program::Connect6, Program::Sockops, Program::Getsockopt, Program::SkLookup];
    /// The programs attached to the cgroup.
    pub const CGROUP: [Program; 4] = [Program::Connect4, Program::Connect6, Program::Sockops, Program::Getsockopt];

    /// Whether the program attaches to the network namespace rather than the cgroup.
    pub const fn on_netns(self) -> bool {
        matches!(self, Program::SkLookup)
    }

    /// The program's name in the object (its function name in `ebpf/src/main.rs`).
    pub const fn name(self) -> &'static str {
        match self {
            Program::Connect4 => "connect4",
            Program::Connect6 => "connect6",
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
