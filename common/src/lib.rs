//! Types shared by the agent and the eBPF programs: the maps' names, capacities, key and
//! value layouts, and the counter indices.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and laid out with explicit padding fields so
//! that no byte of a value is uninitialised: the kernel copies keys and values byte for
//! byte, and an implicit padding byte would make two equal keys hash differently.
//!
//! Byte order: ports are stored in host byte order (the programs convert from the
//! network-order `user_port` of `bpf_sock_addr`); addresses in LPM keys are in network
//! order, as the LPM trie requires (it matches prefixes from the first byte on).
//!
//! Slots: the programs that decide are loaded once per host; each task has a slot, and its
//! entries in the host's maps are keyed by it (first in every key, so no lookup of one task
//! ever matches another's).
//!
//! Generations: each task's configuration is held twice side by side, generation 0 and
//! generation 1, told apart by a generation in each key (after the slot; `CONFIG` is indexed by
//! slot and generation). `ACTIVE[slot]` says which one the task's programs use; each program
//! reads it once, at its start, so a connection is decided entirely by one configuration. An
//! apply fills the inactive generation, flips `ACTIVE[slot]` (one aligned 4-byte array update;
//! 0 and 1 differ in one bit, so no reader can see a third value), waits for programs still
//! running with the old generation, and then clears the old one.
#![no_std]

use core::mem::{align_of, size_of};

/// `ACTIVE`: an array of [`MAX_TASKS`] `u32`s, indexed by slot: the generation (0 or 1) the
/// task's programs use.
pub const ACTIVE_MAP: &str = "ACTIVE";
/// `CONFIG`: an array of [`MAX_TASKS`] × [`GENERATIONS`] [`GlobalConfig`]s, indexed by
/// `slot * GENERATIONS + generation`.
pub const CONFIG_MAP: &str = "CONFIG";
/// `IGNORED_PORTS`: hash map [`PortKey`] (generation, destination port) → [`PRESENT`]; the
/// effective EgressIgnoredPorts expanded to single ports.
pub const IGNORED_PORTS_MAP: &str = "IGNORED_PORTS";
/// `APP_PORTS`: hash map [`PortKey`] → [`PRESENT`]; AppPorts expanded.
pub const APP_PORTS_MAP: &str = "APP_PORTS";
/// `IGNORED_NETS_V4`: LPM trie (generation, IPv4 network) → [`PRESENT`]: key data
/// [`LpmDataV4`], prefix length [`GENERATION_BITS`] + the network's; the IPv4 EgressIgnoredIPs.
pub const IGNORED_NETS_V4_MAP: &str = "IGNORED_NETS_V4";
/// `IGNORED_NETS_V6`: LPM trie (generation, IPv6 network) → [`PRESENT`] ([`LpmDataV6`]); the
/// IPv6 EgressIgnoredIPs.
pub const IGNORED_NETS_V6_MAP: &str = "IGNORED_NETS_V6";
/// `LOCAL_NETS_V4`: LPM trie like [`IGNORED_NETS_V4_MAP`]; destinations local to the task
/// (127.0.0.0/8 plus the namespace's own IPv4 addresses, added by the agent at apply time).
pub const LOCAL_NETS_V4_MAP: &str = "LOCAL_NETS_V4";
/// `LOCAL_NETS_V6`: LPM trie like [`IGNORED_NETS_V6_MAP`]; `::1` plus the namespace's own
/// IPv6 addresses.
pub const LOCAL_NETS_V6_MAP: &str = "LOCAL_NETS_V6";
/// `COUNTERS`: per-CPU array of `u64`, indexed by [`Counter`]: what a task's own programs
/// count (the host programs count in [`TASK_COUNTERS_MAP`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// `SOCK_PENDING`: socket storage ([`OrigDst`]) on a redirected app socket, from connect(2)
/// until the connection is established. A host map: socket storage belongs to its socket.
pub const SOCK_PENDING_MAP: &str = "SOCK_PENDING";
/// `SOCK_ORIG`: socket storage on the proxy's accepted socket: the original destination
/// `SO_ORIGINAL_DST` answers. A host map.
pub const SOCK_ORIG_MAP: &str = "SOCK_ORIG";
/// `SOCK_DNS`: socket storage on a UDP socket: the server its last redirected DNS query was
/// for. The `recvmsg` hooks give the replies (which come from ProxyDNSPort on loopback) that
/// server's address, so the resolver accepts them. A host map.
pub const SOCK_DNS_MAP: &str = "SOCK_DNS";
/// `HANDOFF`: hash [`SocketPair`] → [`OrigDst`], no preallocation: established redirected
/// connections whose proxy-side socket the kernel has not created yet.
pub const HANDOFF_MAP: &str = "HANDOFF";
/// `TASKS`: the programs' cgroup storage ([`TaskRef`]), one value per (cgroup, attach type):
/// which task slot the cgroup is. A host map.
pub const TASKS_MAP: &str = "TASKS";
/// `SLOTS`: hash `u32` slot → `u64` cgroup id: the slots in use. A host map that only the
/// agent reads and writes.
pub const SLOTS_MAP: &str = "SLOTS";
/// `TASK`: an array with one [`TaskRef`]: the slot of the installation. Only the agent reads
/// it (a removed cgroup's storage is gone with it, and its slot must still be freed).
pub const TASK_MAP: &str = "TASK";
/// `RECORD`: an array of [`RECORD_PAGE`]-byte values: what the task's entries in the host's
/// maps are (both generations' contents, encoded by the agent), so that they can be found and
/// deleted when it goes. Only the agent reads it.
pub const RECORD_MAP: &str = "RECORD";
/// The value size of [`RECORD_MAP`].
pub const RECORD_PAGE: u32 = 4096;
/// `TASK_COUNTERS`: the host programs' per-CPU cgroup storage of `[u64; Counter::COUNT]`
/// (one per task's cgroup, shared by its attach types), indexed by [`Counter`].
pub const TASK_COUNTERS_MAP: &str = "TASK_COUNTERS";
/// `VERSION`: an array with one [`Version`]: which build made the installation, and its
/// layout. Layout-1 installations have no such map.
pub const VERSION_MAP: &str = "VERSION";
/// `IGNORED_IDS`: hash map [`IdKey`] (generation, uid or gid, the id) → [`PRESENT`]: every
/// IgnoredUID and IgnoredGID.
pub const IGNORED_IDS_MAP: &str = "IGNORED_IDS";
/// `INCLUDED_NETS_V4`: LPM trie like [`IGNORED_NETS_V4_MAP`]: the IPv4 EgressIncludedIPs,
/// looked up only when [`GlobalConfig::include_only`] is 1.
pub const INCLUDED_NETS_V4_MAP: &str = "INCLUDED_V4";
/// `INCLUDED_NETS_V6`: the IPv6 EgressIncludedIPs.
pub const INCLUDED_NETS_V6_MAP: &str = "INCLUDED_V6";
/// `PROXY_LISTENERS`: a host SOCKMAP of [`PROXY_LISTENERS_CAPACITY`] entries, two per task
/// slot: the proxy's listening sockets on ProxyIngressPort, [`LISTENER_V4`] (an `AF_INET`
/// socket) and [`LISTENER_V6`] (an `AF_INET6` one). The `sockops` program inserts a socket of the cgroup when it starts
/// listening on ProxyIngressPort; the kernel deletes it when the socket closes. The
/// `sk_lookup` program assigns inbound connections to AppPorts to these sockets.
pub const PROXY_LISTENERS_MAP: &str = "PROXY_LISTENERS";

/// The host's maps: pinned once per host with its programs, shared by every task, each
/// task's entries keyed by its slot (or, for the cgroup storages, by its cgroup).
pub const HOST_MAP_NAMES: [&str; 16] = [
    TASKS_MAP,
    TASK_COUNTERS_MAP,
    ACTIVE_MAP,
    CONFIG_MAP,
    IGNORED_PORTS_MAP,
    APP_PORTS_MAP,
    IGNORED_NETS_V4_MAP,
    IGNORED_NETS_V6_MAP,
    LOCAL_NETS_V4_MAP,
    LOCAL_NETS_V6_MAP,
    IGNORED_IDS_MAP,
    INCLUDED_NETS_V4_MAP,
    INCLUDED_NETS_V6_MAP,
    SOCK_PENDING_MAP,
    SOCK_ORIG_MAP,
    SOCK_DNS_MAP,
];

/// A task's own maps made with its own programs (`sockops`, `sk_lookup`), which alone use them.
pub const TASK_PROGRAM_MAP_NAMES: [&str; 3] = [HANDOFF_MAP, PROXY_LISTENERS_MAP, COUNTERS_MAP];

/// Every map pinned in a task's installation directory: its programs' maps, and the agent's
/// records (`VERSION`, `TASK`, `RECORD`).
pub const MAP_NAMES: [&str; 6] = [HANDOFF_MAP, PROXY_LISTENERS_MAP, COUNTERS_MAP, VERSION_MAP, TASK_MAP, RECORD_MAP];

/// The layout of the maps this build's programs use (their names, types, keys and values).
/// Layout 1 is the builds before socket storage, which recorded no version; a build can
/// upgrade an installation of its own layout or of layout 1, and refuses a newer one.
pub const LAYOUT: u32 = 3;

/// The value of [`VERSION_MAP`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub layout: u32,
    /// The build, NUL-padded UTF-8: `intercept <version> (object <hash>)`.
    pub build: [u8; 60],
}

impl Version {
    /// The build, or what an empty one means: an apply replacing the programs clears it in the
    /// old pins before it switches any link, so that one killed half way is noticed.
    pub fn build_str(&self) -> &str {
        let end = self.build.iter().position(|&b| b == 0).unwrap_or(self.build.len());
        match core::str::from_utf8(&self.build[..end]) {
            Ok("") => "an apply that was replacing the programs and did not finish",
            Ok(build) => build,
            Err(_) => "(not UTF-8)",
        }
    }
}

/// The kernel keeps 15 bytes of a map's name (`BPF_OBJ_NAME_LEN` is 16 with the NUL);
/// longer names would show up truncated in `bpftool map` and no longer match these consts.
const BPF_OBJ_NAME_MAX: usize = 15;
const _: () = {
    let mut i = 0;
    while i < MAP_NAMES.len() {
        assert!(MAP_NAMES[i].len() <= BPF_OBJ_NAME_MAX, "map name longer than the kernel keeps");
        i += 1;
    }
    let mut i = 0;
    while i < HOST_MAP_NAMES.len() {
        assert!(HOST_MAP_NAMES[i].len() <= BPF_OBJ_NAME_MAX, "map name longer than the kernel keeps");
        i += 1;
    }
};

/// The value stored in the port maps and the LPM tries: membership is all they record.
pub const PRESENT: u8 = 1;

/// Configurations the maps hold side by side: the active one and the one an apply fills.
pub const GENERATIONS: u32 = 2;
/// Bits of an LPM key's data taken by the slot and the generation (two big-endian `u32`s, so
/// the trie matches them before the address).
pub const KEY_PREFIX_BITS: u32 = 64;

/// Loopback plus the namespace's own addresses: a task has a handful; 1024 is generous (the
/// agent refuses more).
pub const LOCAL_NETS_CAPACITY: u32 = 1024;
/// The most IgnoredUIDs and IgnoredGIDs together the eBPF backend takes.
pub const IGNORED_IDS_MAX: u32 = 1 << 10;
/// Handshakes completing at once in one task (an entry lives for microseconds); a full map
/// refuses a hand-off, and that connection's SO_ORIGINAL_DST misses (counted). Its bucket
/// array (16 bytes each) is most of what the map costs.
pub const HANDOFF_CAPACITY: u32 = 1 << 9;
/// [`IdKey::kind`] of an IgnoredUID.
pub const ID_UID: u32 = 0;
/// [`IdKey::kind`] of an IgnoredGID.
pub const ID_GID: u32 = 1;
/// One slot per [`Counter`].
pub const COUNTERS_CAPACITY: u32 = Counter::COUNT;
/// One listener per address family.
pub const PROXY_LISTENERS_CAPACITY: u32 = 2;
/// Tasks a host's programs serve: slots 1 to `MAX_TASKS - 1` (slot 0 is "no task"). `ACTIVE`
/// and `CONFIG` cost 4 and 32 bytes per slot, whatever the number of tasks.
pub const MAX_TASKS: u32 = 1 << 12;
/// The capacity of the host's tries of networks (entries are allocated as they are inserted;
/// the capacity is only a limit).
pub const HOST_NETS_CAPACITY: u32 = 1 << 24;
/// The capacity of the host's exact sets (ports, ids), as tries.
pub const HOST_SETS_CAPACITY: u32 = 1 << 20;
/// The [`PROXY_LISTENERS_MAP`] slot of the proxy's `AF_INET` listener.
pub const LISTENER_V4: u32 = 0;
/// The slot of its `AF_INET6` listener (a dual-stack one also takes IPv4 connections when
/// there is no `AF_INET` listener).
pub const LISTENER_V6: u32 = 1;
/// [`GlobalConfig::ingress_fallback`]: refuse inbound connections to AppPorts while the proxy
/// has no listener (as a REDIRECT to a closed port does).
pub const INGRESS_FALLBACK_REFUSE: u8 = 0;
/// [`GlobalConfig::ingress_fallback`]: let them reach the app directly.
pub const INGRESS_FALLBACK_APP: u8 = 1;

/// `AF_INET` / `AF_INET6` as in `<sys/socket.h>`: the `family` of an [`OrigDst`].
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `SO_ORIGINAL_DST` (`<linux/netfilter_ipv4.h>`), also `IP6T_SO_ORIGINAL_DST`.
pub const SO_ORIGINAL_DST: i32 = 80;
/// `SOL_IP` and `SOL_IPV6`: the levels `SO_ORIGINAL_DST` is asked at.
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;

/// The value of `CONFIG` for one generation. Flags are `0` (false) or `1` (true).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalConfig {
    /// ProxyEgressPort, host byte order.
    pub proxy_egress_port: u16,
    /// ProxyIngressPort, host byte order; 0 when no ingress is configured.
    pub proxy_ingress_port: u16,
    /// Where DNS (UDP and TCP port 53) to non-local servers goes, host byte order; 0 when DNS
    /// is not captured.
    pub proxy_dns_port: u16,
    /// 1 when [`IGNORED_IDS_MAP`] holds IgnoredUIDs (the lookup is skipped otherwise).
    pub has_ignored_uids: u8,
    /// 1 when it holds IgnoredGIDs.
    pub has_ignored_gids: u8,
    /// 1 when IPv6 connections are intercepted; 0 leaves every IPv6 connection alone
    /// (IPv4-mapped IPv6 addresses are IPv4 connections and still intercepted).
    pub ipv6: u8,
    /// What happens to inbound connections to AppPorts while the proxy has no listener:
    /// [`INGRESS_FALLBACK_REFUSE`] or [`INGRESS_FALLBACK_APP`].
    pub ingress_fallback: u8,
    /// 1 when EgressIncludedIPs is given: only destinations in the included tries are
    /// redirected.
    pub include_only: u8,
    /// Explicit padding, always 0.
    pub _pad: [u8; 5],
}

/// The value of the programs' cgroup storage (`TASKS`): which task the cgroup is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskRef {
    /// 1 to [`MAX_TASKS`] - 1; 0 until the agent has attached every program.
    pub slot: u32,
    /// Explicit padding, always 0.
    pub _pad: u32,
}

/// The data of an [`IGNORED_IDS_MAP`] key (an LPM trie matched on every bit: an exact set).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IdData {
    pub slot_be: u32,
    pub generation_be: u32,
    /// [`ID_UID`] or [`ID_GID`], big-endian.
    pub kind_be: u32,
    pub id_be: u32,
}

impl IdData {
    /// Its prefix length: every bit.
    pub const BITS: u32 = 128;

    pub const fn new(slot: u32, generation: u32, kind: u32, id: u32) -> IdData {
        IdData { slot_be: slot.to_be(), generation_be: generation.to_be(), kind_be: kind.to_be(), id_be: id.to_be() }
    }
}

/// An IPv4 network as the agent keeps it (prefix length in bits, address in network byte
/// order); in a trie it is the key ([`GENERATION_BITS`] + `prefix_len`, [`LpmDataV4`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LpmKeyV4 {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// An IPv6 network; in a trie, ([`GENERATION_BITS`] + `prefix_len`, [`LpmDataV6`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LpmKeyV6 {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// The data of an IPv4 trie key (after its prefix length, as in aya's `lpm_trie::Key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LpmDataV4 {
    /// The task's slot and the generation, big-endian: the trie compares bytes from the first
    /// on, so they are matched first ([`KEY_PREFIX_BITS`]) and a key never matches another
    /// task's entries, nor the other generation's.
    pub slot_be: u32,
    pub generation_be: u32,
    pub addr: [u8; 4],
}

/// The data of an IPv6 trie key.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LpmDataV6 {
    pub slot_be: u32,
    pub generation_be: u32,
    pub addr: [u8; 16],
}

/// The data of a port set's key ([`IGNORED_PORTS_MAP`], [`APP_PORTS_MAP`]: LPM tries matched
/// on every bit but the padding).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PortData {
    pub slot_be: u32,
    pub generation_be: u32,
    pub port_be: u16,
    /// Explicit padding, always 0 (beyond the prefix length).
    pub _pad: u16,
}

impl PortData {
    /// Its prefix length: slot, generation and port.
    pub const BITS: u32 = KEY_PREFIX_BITS + 16;

    pub const fn new(slot: u32, generation: u32, port: u16) -> PortData {
        PortData { slot_be: slot.to_be(), generation_be: generation.to_be(), port_be: port.to_be(), _pad: 0 }
    }
}

/// Where a redirected connection was going: the value of the socket storage maps and of
/// [`HANDOFF_MAP`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OrigDst {
    /// IPv6 address in network byte order; an IPv4 destination is stored IPv4-mapped
    /// (`::ffff:a.b.c.d`) and has `family` [`AF_INET`].
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
}

/// Key of [`HANDOFF_MAP`]: one TCP connection between a client in the cgroup and the
/// proxy, as both ends see it. Addresses are IPv6 in network order, IPv4 ones mapped
/// (`::ffff:a.b.c.d`), so a connection has one key whether either end's socket is
/// `AF_INET` or dual-stack `AF_INET6`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SocketPair {
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    /// Host byte order.
    pub client_port: u16,
    /// Host byte order.
    pub server_port: u16,
}

// No implicit padding: each size is the sum of its fields.
const _: () = assert!(size_of::<GlobalConfig>() == 16 && align_of::<GlobalConfig>() == 2);
const _: () = assert!(size_of::<IdData>() == 16);
const _: () = assert!(size_of::<LpmKeyV4>() == 4 + 4);
const _: () = assert!(size_of::<LpmKeyV6>() == 4 + 16);
const _: () = assert!(size_of::<LpmDataV4>() == 8 + 4 && align_of::<LpmDataV4>() == 4);
const _: () = assert!(size_of::<LpmDataV6>() == 8 + 16 && align_of::<LpmDataV6>() == 4);
const _: () = assert!(size_of::<PortData>() == 8 + 2 + 2);
const _: () = assert!(size_of::<OrigDst>() == 16 + 2 + 2);
const _: () = assert!(size_of::<SocketPair>() == 16 + 16 + 2 + 2);
const _: () = assert!(size_of::<Version>() == 4 + 60);

/// Why a connection was counted; the index into `COUNTERS`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Sent to the proxy.
    Redirected = 0,
    IgnoredUid = 1,
    IgnoredGid = 2,
    IgnoredPort = 3,
    IgnoredIp = 4,
    LocalDestination = 5,
    /// A connect() on a socket that is not TCP (and not DNS being captured).
    NotTcp = 6,
    /// The proxy asked for SO_ORIGINAL_DST and the programs knew the answer.
    OrigDstHit = 7,
    /// The proxy asked for SO_ORIGINAL_DST of a connection the programs did not redirect.
    OrigDstMiss = 8,
    /// An IPv6 destination while IPv6 interception is switched off.
    Ipv6Disabled = 9,
    /// An inbound connection to an AppPort assigned to the proxy's listener.
    IngressSteered = 10,
    /// An inbound connection to an AppPort refused: the proxy had no listener.
    IngressRefused = 11,
    /// An inbound connection to an AppPort left to the app: the proxy had no listener.
    IngressToApp = 12,
    /// SO_ORIGINAL_DST answered from the socket's own address: an inbound connection to an
    /// AppPort, accepted by the proxy.
    OrigDstIngress = 13,
    /// DNS sent to ProxyDNSPort (a UDP datagram, a UDP connect, or a TCP connect).
    DnsRedirected = 14,
    /// A destination outside EgressIncludedIPs.
    NotIncluded = 15,
    /// A DNS reply from ProxyDNSPort given back its server's address.
    DnsReplyRewritten = 16,
    /// A datagram from ProxyDNSPort on a socket with no redirected query on record.
    DnsReplyUnknown = 17,
}

impl Counter {
    pub const COUNT: u32 = 18;

    /// In index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Redirected,
        Counter::IgnoredUid,
        Counter::IgnoredGid,
        Counter::IgnoredPort,
        Counter::IgnoredIp,
        Counter::LocalDestination,
        Counter::NotTcp,
        Counter::OrigDstHit,
        Counter::OrigDstMiss,
        Counter::Ipv6Disabled,
        Counter::IngressSteered,
        Counter::IngressRefused,
        Counter::IngressToApp,
        Counter::OrigDstIngress,
        Counter::DnsRedirected,
        Counter::NotIncluded,
        Counter::DnsReplyRewritten,
        Counter::DnsReplyUnknown,
    ];

    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable name for metrics and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::IgnoredUid => "ignored-uid",
            Counter::IgnoredGid => "ignored-gid",
            Counter::IgnoredPort => "ignored-port",
            Counter::IgnoredIp => "ignored-ip",
            Counter::LocalDestination => "local-destination",
            Counter::NotTcp => "not-tcp",
            Counter::OrigDstHit => "orig-dst-hit",
            Counter::OrigDstMiss => "orig-dst-miss",
            Counter::Ipv6Disabled => "ipv6-disabled",
            Counter::IngressSteered => "ingress-steered",
            Counter::IngressRefused => "ingress-refused",
            Counter::IngressToApp => "ingress-to-app",
            Counter::OrigDstIngress => "orig-dst-ingress",
            Counter::DnsRedirected => "dns-redirected",
            Counter::NotIncluded => "not-included",
            Counter::DnsReplyRewritten => "dns-reply-rewritten",
            Counter::DnsReplyUnknown => "dns-reply-unknown",
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i, "Counter::ALL must be in index order");
        i += 1;
    }
};

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and has
// no implicit padding (asserted above), so every byte pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for GlobalConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LpmKeyV4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LpmKeyV6 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LpmDataV4 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LpmDataV6 {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortData {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for IdData {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for OrigDst {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SocketPair {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Version {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TaskRef {}
