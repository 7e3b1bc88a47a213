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
#![no_std]

use core::mem::{align_of, size_of};

/// `CONFIG`: an array with one [`GlobalConfig`] at index 0.
pub const CONFIG_MAP: &str = "CONFIG";
/// `IGNORED_PORTS`: hash map `u16` destination port → [`PRESENT`]; the effective
/// EgressIgnoredPorts expanded to single ports.
pub const IGNORED_PORTS_MAP: &str = "IGNORED_PORTS";
/// `APP_PORTS`: hash map `u16` destination port → [`PRESENT`]; AppPorts expanded.
pub const APP_PORTS_MAP: &str = "APP_PORTS";
/// `IGNORED_NETS_V4`: LPM trie [`LpmKeyV4`] → [`PRESENT`]; the IPv4 EgressIgnoredIPs.
pub const IGNORED_NETS_V4_MAP: &str = "IGNORED_NETS_V4";
/// `IGNORED_NETS_V6`: LPM trie [`LpmKeyV6`] → [`PRESENT`]; the IPv6 EgressIgnoredIPs.
pub const IGNORED_NETS_V6_MAP: &str = "IGNORED_NETS_V6";
/// `LOCAL_NETS_V4`: LPM trie [`LpmKeyV4`] → [`PRESENT`]; destinations local to the task
/// (127.0.0.0/8 plus the namespace's own IPv4 addresses, added by the agent at apply time).
pub const LOCAL_NETS_V4_MAP: &str = "LOCAL_NETS_V4";
/// `LOCAL_NETS_V6`: LPM trie [`LpmKeyV6`] → [`PRESENT`]; `::1` plus the namespace's own
/// IPv6 addresses.
pub const LOCAL_NETS_V6_MAP: &str = "LOCAL_NETS_V6";
/// `COUNTERS`: per-CPU array of `u64`, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Every map name, for code that walks all of them (pinning, removal).
pub const MAP_NAMES: [&str; 8] = [
    CONFIG_MAP,
    IGNORED_PORTS_MAP,
    APP_PORTS_MAP,
    IGNORED_NETS_V4_MAP,
    IGNORED_NETS_V6_MAP,
    LOCAL_NETS_V4_MAP,
    LOCAL_NETS_V6_MAP,
    COUNTERS_MAP,
];

/// The kernel keeps 15 bytes of a map's name (`BPF_OBJ_NAME_LEN` is 16 with the NUL);
/// longer names would show up truncated in `bpftool map` and no longer match these consts.
const BPF_OBJ_NAME_MAX: usize = 15;
const _: () = {
    let mut i = 0;
    while i < MAP_NAMES.len() {
        assert!(MAP_NAMES[i].len() <= BPF_OBJ_NAME_MAX, "map name longer than the kernel keeps");
        i += 1;
    }
};

/// The value stored in the port maps and the LPM tries: membership is all they record.
pub const PRESENT: u8 = 1;

/// `CONFIG` holds a single value.
pub const CONFIG_CAPACITY: u32 = 1;
/// A `u16` key has 65536 values, so the port maps can hold any set of ports.
pub const PORT_MAP_CAPACITY: u32 = 1 << 16;
/// Capacity the ELF declares for each ignored-networks trie. The tries are created with
/// `BPF_F_NO_PREALLOC`, so capacity costs no memory; a longer list makes the agent raise
/// it at load time (`EbpfLoader::set_max_entries`) to the plan's size.
pub const IGNORED_NETS_CAPACITY: u32 = 1 << 16;
/// Loopback plus the namespace's own addresses: a task has a handful; 1024 is generous.
pub const LOCAL_NETS_CAPACITY: u32 = 1024;
/// One slot per [`Counter`].
pub const COUNTERS_CAPACITY: u32 = Counter::COUNT;

/// The value at index 0 of `CONFIG`.
///
/// Optional values carry a presence flag instead of a sentinel because every `u32` is a
/// valid uid/gid. Flags are `0` (false) or `1` (true).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalConfig {
    /// IgnoredUID; meaningful only when `has_ignored_uid` is 1.
    pub ignored_uid: u32,
    /// IgnoredGID; meaningful only when `has_ignored_gid` is 1.
    pub ignored_gid: u32,
    /// ProxyEgressPort, host byte order.
    pub proxy_egress_port: u16,
    /// ProxyIngressPort, host byte order; 0 when no ingress is configured.
    pub proxy_ingress_port: u16,
    pub has_ignored_uid: u8,
    pub has_ignored_gid: u8,
    /// 1 when IPv6 connections are intercepted; 0 leaves every IPv6 connection alone
    /// (IPv4-mapped IPv6 addresses are IPv4 connections and still intercepted).
    pub ipv6: u8,
    /// Explicit padding, always 0.
    pub _pad: u8,
}

/// Key of the IPv4 LPM tries. Same layout as aya's `lpm_trie::Key<[u8; 4]>`: the prefix
/// length in bits, then the address in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LpmKeyV4 {
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Key of the IPv6 LPM tries. Same layout as aya's `lpm_trie::Key<[u8; 16]>`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LpmKeyV6 {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

// No implicit padding: each size is the sum of its fields.
const _: () = assert!(size_of::<GlobalConfig>() == 16 && align_of::<GlobalConfig>() == 4);
const _: () = assert!(size_of::<LpmKeyV4>() == 4 + 4);
const _: () = assert!(size_of::<LpmKeyV6>() == 4 + 16);

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
    /// A connect() on a socket that is not TCP.
    NotTcp = 6,
    /// The proxy asked for SO_ORIGINAL_DST and the programs knew the answer.
    OrigDstHit = 7,
    /// The proxy asked for SO_ORIGINAL_DST of a connection the programs did not redirect.
    OrigDstMiss = 8,
}

impl Counter {
    pub const COUNT: u32 = 9;

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
