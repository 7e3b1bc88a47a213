//! intercept's eBPF programs, attached to a task's cgroup:
//!
//! - `connect4` / `connect6` (`cgroup/connect4`, `cgroup/connect6`): decide each TCP
//!   connect(2) the way `intercept::model::decide` does and, when it is redirected, rewrite
//!   the destination to the proxy's egress port on loopback and remember the original
//!   destination in the socket's own storage ([`SOCK_PENDING`]).
//! - `sendmsg4` / `sendmsg6` (`cgroup/sendmsg4`, `cgroup/sendmsg6`): with DNS capture, each
//!   UDP datagram sent to port 53 on an unconnected socket goes to ProxyDNSPort on loopback
//!   (the connect hooks do the same for connected UDP sockets, and TCP DNS); the server it
//!   was for is kept in the socket's storage ([`SOCK_DNS`]).
//! - `recvmsg4` / `recvmsg6` (`cgroup/recvmsg4`, `cgroup/recvmsg6`): a datagram from
//!   ProxyDNSPort on loopback, on a socket with a redirected query, is given that server's
//!   address as its source, so that resolvers (glibc, musl) accept the reply.
//! - `track_sockets` (`sockops`): when a redirected connection is established, hands its
//!   original destination over, keyed by the connection's 4-tuple ([`HANDOFF`]), to the
//!   proxy's accepted socket, which keeps it in its own storage ([`SOCK_ORIG`]) as soon as the
//!   kernel creates it. Socket storage goes with its socket, so nothing grows with the number
//!   of connections a task has ever made, and nothing is preallocated.
//!   It also puts the proxy's listening sockets on ProxyIngressPort into [`PROXY_LISTENERS`]
//!   when they start listening (`BPF_SOCK_OPS_TCP_LISTEN_CB`).
//! - `getsockopt` (`cgroup/getsockopt`): answers `SO_ORIGINAL_DST` (`SOL_IP` and `SOL_IPV6`)
//!   on the proxy's accepted socket from [`SOCK_ORIG`]; for an inbound connection to an AppPort
//!   (no entry there), from the socket's own local address, which is where the client
//!   connected to.
//!
//! The `LEGACY_*` maps are the pairing maps of layout 1 (the builds before socket storage). A
//! layout-1 installation upgraded in place keeps its maps there, so that connections its
//! programs redirected before the switch still find their original destination; a new
//! installation creates them with one entry each, and they stay empty.
//! - `steer_ingress` (`sk_lookup`, attached to the task's network namespace): assigns TCP
//!   connections from non-local sources to local AppPorts to the proxy's listener, or, while
//!   the proxy has none, refuses them or lets them reach the app (`ingress_fallback`).
//!
//! The configuration maps hold two generations (see `intercept-common`): the connect hooks
//! read `ACTIVE` once and decide with that generation's entries only, so a connection made
//! while the agent re-applies follows either the old configuration or the new one entirely.
//!
//! The maps' layouts and names are in `intercept-common`. Debug events go through aya-log;
//! the agent sets `AYA_LOG_LEVEL` (a read-only global) at load time, so with logging off
//! the verifier removes the logging code as dead.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};

use core::cell::UnsafeCell;
use core::marker::PhantomData;

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_map_def,
    bindings::{
        BPF_ANY, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE, bpf_sock,
        bpf_sock_ops,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_uid_gid, bpf_get_local_storage, bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release,
        generated::bpf_sk_storage_get,
    },
    macros::{btf_map, cgroup_sock_addr, cgroup_sockopt, map, sk_lookup, sock_ops},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, SockMap, lpm_trie::Key},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext, SockoptContext},
};
use aya_log_ebpf::debug;
use intercept_common::{
    AF_INET, AF_INET6, COUNTERS_CAPACITY, Counter, GENERATIONS, GlobalConfig, HANDOFF_CAPACITY, HOST_NETS_CAPACITY,
    HOST_SETS_CAPACITY, ID_GID, ID_UID, INGRESS_FALLBACK_APP, IdData, KEY_PREFIX_BITS, LISTENER_V4, LISTENER_V6,
    LpmDataV4, LpmDataV6, MAX_TASKS, OrigDst, PROXY_LISTENERS_CAPACITY, PortData, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6,
    SocketPair, TaskRef,
};

/// Map flag: allocate entries on insert (LPM tries) instead of up front.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

// Layout 3: the cgroup programs but `sockops` are loaded once per host and attached to every
// task's cgroup. Such a program finds its task's slot in `TASKS`, the storage of the cgroup it
// is attached to (so a process in a child cgroup of the task finds the task's too), and the
// task's configuration in the host's maps, keyed by that slot. `track_sockets` (sockops) and
// `steer_ingress` (sk_lookup) are loaded for each task, with its slot in `TASK_SLOT`: they own
// maps of the task's alone (`HANDOFF`, `PROXY_LISTENERS`, `COUNTERS`), so that what one task's
// connections leave never meets another's.

/// A cgroup storage keyed by the cgroup alone (a `u64` key), so that every attach type of the
/// cgroup shares one value; aya-ebpf declares cgroup storage keyed by (cgroup, attach type),
/// which would give each of the seven hooks a copy.
#[repr(transparent)]
struct SharedCgroupStorage<V> {
    def: UnsafeCell<bpf_map_def>,
    _value: PhantomData<V>,
}

// SAFETY: the definition is only read (by the loader, and as an address by the helpers).
unsafe impl<V> Sync for SharedCgroupStorage<V> {}

impl<V> SharedCgroupStorage<V> {
    const fn new(map_type: u32) -> Self {
        SharedCgroupStorage {
            def: UnsafeCell::new(bpf_map_def {
                type_: map_type,
                key_size: size_of::<u64>() as u32,
                value_size: size_of::<V>() as u32,
                max_entries: 0,
                map_flags: 0,
                id: 0,
                pinning: 0,
            }),
            _value: PhantomData,
        }
    }

    /// This cgroup's value (this CPU's, for a per-CPU storage): never null, valid for the
    /// program's run.
    #[inline(always)]
    fn get_ptr_mut(&self) -> *mut V {
        // SAFETY: the map is a cgroup storage of this object; flags must be 0.
        unsafe { bpf_get_local_storage(self.def.get().cast(), 0) }.cast()
    }
}

/// `BPF_MAP_TYPE_CGROUP_STORAGE` and `BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE` (deprecated names in
/// new headers; their successor, `BPF_MAP_TYPE_CGRP_STORAGE`, is not in 5.10 and 6.1).
const CGROUP_STORAGE: u32 = 19;
const PERCPU_CGROUP_STORAGE: u32 = 21;

/// The task of the cgroup a program is attached to: its slot, written by the agent once every
/// link is attached (0 until then: nothing is intercepted).
#[unsafe(link_section = "maps")]
#[unsafe(export_name = "TASKS")]
static TASKS: SharedCgroupStorage<TaskRef> = SharedCgroupStorage::new(CGROUP_STORAGE);
/// What the host programs count for the task, per CPU (no atomics); userspace sums the CPUs.
#[unsafe(link_section = "maps")]
#[unsafe(export_name = "TASK_COUNTERS")]
static TASK_COUNTERS: SharedCgroupStorage<[u64; COUNTERS_CAPACITY as usize]> =
    SharedCgroupStorage::new(PERCPU_CGROUP_STORAGE);
/// The generation each task's programs use, by slot.
#[map]
static ACTIVE: Array<u32> = Array::with_max_entries(MAX_TASKS, 0);
/// Each task's configuration of each generation, at `slot * GENERATIONS + generation`.
#[map]
static CONFIG: Array<GlobalConfig> = Array::with_max_entries(MAX_TASKS * GENERATIONS, 0);
#[map]
static IGNORED_PORTS: LpmTrie<PortData, u8> = LpmTrie::with_max_entries(HOST_SETS_CAPACITY, NO_PREALLOC);
#[map]
static APP_PORTS: LpmTrie<PortData, u8> = LpmTrie::with_max_entries(HOST_SETS_CAPACITY, NO_PREALLOC);
#[map]
static IGNORED_IDS: LpmTrie<IdData, u8> = LpmTrie::with_max_entries(HOST_SETS_CAPACITY, NO_PREALLOC);
#[map]
static IGNORED_NETS_V4: LpmTrie<LpmDataV4, u8> = LpmTrie::with_max_entries(HOST_NETS_CAPACITY, NO_PREALLOC);
#[map]
static IGNORED_NETS_V6: LpmTrie<LpmDataV6, u8> = LpmTrie::with_max_entries(HOST_NETS_CAPACITY, NO_PREALLOC);
#[map]
static LOCAL_NETS_V4: LpmTrie<LpmDataV4, u8> = LpmTrie::with_max_entries(HOST_NETS_CAPACITY, NO_PREALLOC);
#[map]
static LOCAL_NETS_V6: LpmTrie<LpmDataV6, u8> = LpmTrie::with_max_entries(HOST_NETS_CAPACITY, NO_PREALLOC);
#[map]
static INCLUDED_V4: LpmTrie<LpmDataV4, u8> = LpmTrie::with_max_entries(HOST_NETS_CAPACITY, NO_PREALLOC);
#[map]
static INCLUDED_V6: LpmTrie<LpmDataV6, u8> = LpmTrie::with_max_entries(HOST_NETS_CAPACITY, NO_PREALLOC);
/// The original destination of a redirected TCP connection, on the app's socket, from
/// connect(2) until the connection is established. Socket storage belongs to its socket, so
/// one map serves every task.
#[btf_map]
static SOCK_PENDING: SkStorage<OrigDst> = SkStorage::new();
/// The original destination on the proxy's accepted socket: what SO_ORIGINAL_DST answers.
#[btf_map]
static SOCK_ORIG: SkStorage<OrigDst> = SkStorage::new();
/// The server a UDP socket's last redirected DNS query was for.
#[btf_map]
static SOCK_DNS: SkStorage<OrigDst> = SkStorage::new();
/// The task's (`sockops` and `sk_lookup` are loaded per task): established redirected
/// connections whose proxy-side socket the kernel has not created yet (microseconds, on
/// loopback). An entry the proxy never takes goes when the app's socket closes.
#[map]
static HANDOFF: HashMap<SocketPair, OrigDst> = HashMap::with_max_entries(HANDOFF_CAPACITY, NO_PREALLOC);
/// The task's: its proxy's listening sockets on ProxyIngressPort, by family.
#[map]
static PROXY_LISTENERS: SockMap = SockMap::with_max_entries(PROXY_LISTENERS_CAPACITY, 0);
/// The task's: what its own programs count (`steer_ingress`), per CPU.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_CAPACITY, 0);
/// The slot of the task `track_sockets` and `steer_ingress` were loaded for (a read-only
/// global set at load time). Its initial value is one no constant of the programs has: LLVM
/// merges a promoted constant (`&0` as a lookup key) into a read-only global of equal bytes,
/// and the agent's value for this one would then become that constant's (found on 6.18: every
/// `&0` key read the slot). It is no slot (above `MAX_TASKS`), so the host's programs, which
/// never set it, use none.
#[unsafe(no_mangle)]
static TASK_SLOT: u32 = u32::from_be_bytes(*b"slot");

/// cgroup sock_addr and sockopt programs: 1 lets the system call proceed, 0 fails it (EPERM).
const ALLOW: i32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const DNS_PORT: u16 = 53;

const LOOPBACK_V4: [u8; 4] = [127, 0, 0, 1];
const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

enum Verdict {
    Redirect,
    /// DNS to ProxyDNSPort.
    RedirectDns,
    Untouched(Counter),
}

/// Whether a UDP datagram or connect to `port` is DNS being captured; everything else on UDP
/// is left alone.
#[inline(always)]
fn captured_dns(config: &GlobalConfig, port: u16) -> bool {
    config.proxy_dns_port != 0 && port == DNS_PORT
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's run; every field access is a
    // 4-byte access to a field the kernel lets connect4 read (or, for user_*, write).
    let (protocol, ip, port) =
        unsafe { (read_volatile(&(*sa).protocol), read_volatile(&(*sa).user_ip4), read_volatile(&(*sa).user_port)) };
    let slot = cgroup_slot();
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        count(Counter::NotTcp);
        return ALLOW;
    }
    let addr = ip.to_ne_bytes();
    let port = u16::from_be(port as u16);
    let udp = protocol == IPPROTO_UDP;
    // UDP to another port is never touched: decided before any map is read.
    if udp && port != DNS_PORT {
        count(Counter::NotTcp);
        return ALLOW;
    }
    let Some(task) = task(slot) else { return ALLOW };
    if udp && !captured_dns(task.config, port) {
        count(Counter::NotTcp);
        return ALLOW;
    }
    let verdict = decide(&V4, &key_v4(&task, addr), &task, port);
    redirect_v4(&ctx, &task, verdict, addr, port, udp);
    ALLOW
}

/// With DNS capture, a UDP datagram to port 53 on an unconnected socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in connect4; sendmsg4 may read and rewrite user_ip4 and user_port.
    let (ip, port) = unsafe { (read_volatile(&(*sa).user_ip4), read_volatile(&(*sa).user_port)) };
    let port = u16::from_be(port as u16);
    if port != DNS_PORT {
        return ALLOW;
    }
    let Some(task) = task(cgroup_slot()) else { return ALLOW };
    if !captured_dns(task.config, port) {
        return ALLOW;
    }
    let addr = ip.to_ne_bytes();
    let verdict = decide(&V4, &key_v4(&task, addr), &task, port);
    redirect_v4(&ctx, &task, verdict, addr, port, true);
    ALLOW
}

/// Carries out an IPv4 verdict of a connect or sendmsg hook: rewrites the destination and
/// records the original one, or counts why not.
#[inline(always)]
fn redirect_v4(ctx: &SockAddrContext, task: &Task, verdict: Verdict, addr: [u8; 4], port: u16, udp: bool) {
    let to = match take(ctx, task, verdict, mapped(addr), port, AF_INET, udp) {
        Ok(to) => to,
        Err(reason) => {
            debug!(ctx, "{:i}:{} untouched ({})", addr, port, reason.index());
            return;
        }
    };
    let sa = ctx.sock_addr;
    // SAFETY: connect4 and sendmsg4 may rewrite user_ip4 and user_port.
    unsafe {
        write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(LOOPBACK_V4));
        write_volatile(&mut (*sa).user_port, u32::from(to.to_be()));
    }
    debug!(ctx, "{:i}:{} redirected to port {}", addr, port, to);
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: see connect4.
    let protocol = unsafe { read_volatile(&(*sa).protocol) };
    let slot = cgroup_slot();
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        count(Counter::NotTcp);
        return ALLOW;
    }
    let (addr, port) = destination_v6(&ctx);
    let udp = protocol == IPPROTO_UDP;
    if udp && port != DNS_PORT {
        count(Counter::NotTcp);
        return ALLOW;
    }
    let Some(task) = task(slot) else { return ALLOW };
    if udp && !captured_dns(task.config, port) {
        count(Counter::NotTcp);
        return ALLOW;
    }
    decide_and_redirect_v6(&ctx, &task, addr, port, udp);
    ALLOW
}

/// With DNS capture, a UDP datagram to port 53 on an unconnected AF_INET6 socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let (addr, port) = destination_v6(&ctx);
    if port != DNS_PORT {
        return ALLOW;
    }
    let Some(task) = task(cgroup_slot()) else { return ALLOW };
    if !captured_dns(task.config, port) {
        return ALLOW;
    }
    decide_and_redirect_v6(&ctx, &task, addr, port, true);
    ALLOW
}

/// The destination of a connect6 or sendmsg6: the address, and the port in host order.
#[inline(always)]
fn destination_v6(ctx: &SockAddrContext) -> ([u8; 16], u16) {
    let sa = ctx.sock_addr;
    // SAFETY: user_ip6 is read one 4-byte word at a time, as the kernel requires.
    let (words, port) = unsafe {
        (
            [
                read_volatile(&(*sa).user_ip6[0]),
                read_volatile(&(*sa).user_ip6[1]),
                read_volatile(&(*sa).user_ip6[2]),
                read_volatile(&(*sa).user_ip6[3]),
            ],
            read_volatile(&(*sa).user_port),
        )
    };
    (words_to_bytes(words), u16::from_be(port as u16))
}

/// Decides an AF_INET6 socket's connect or datagram and carries the verdict out. An
/// IPv4-mapped destination on a dual-stack socket is an IPv4 connection: decided with the
/// IPv4 maps, sent to the IPv4 loopback (mapped, as the socket is AF_INET6).
#[inline(always)]
fn decide_and_redirect_v6(ctx: &SockAddrContext, task: &Task, addr: [u8; 16], port: u16, udp: bool) {
    let (verdict, proxy, family) = match v4_of_mapped(&addr) {
        Some(v4) => (decide(&V4, &key_v4(task, v4), task, port), mapped(LOOPBACK_V4), AF_INET),
        None if task.config.ipv6 == 0 => (Verdict::Untouched(Counter::Ipv6Disabled), LOOPBACK_V6, AF_INET6),
        None => (decide(&V6, &key_v6(task, addr), task, port), LOOPBACK_V6, AF_INET6),
    };
    let to = match take(ctx, task, verdict, addr, port, family, udp) {
        Ok(to) => to,
        Err(reason) => {
            debug!(ctx, "[{:i}]:{} untouched ({})", addr, port, reason.index());
            return;
        }
    };
    let proxy = bytes_to_words(proxy);
    let sa = ctx.sock_addr;
    // SAFETY: connect6 and sendmsg6 may rewrite user_ip6 (4-byte words) and user_port.
    unsafe {
        write_volatile(&mut (*sa).user_ip6[0], proxy[0]);
        write_volatile(&mut (*sa).user_ip6[1], proxy[1]);
        write_volatile(&mut (*sa).user_ip6[2], proxy[2]);
        write_volatile(&mut (*sa).user_ip6[3], proxy[3]);
        write_volatile(&mut (*sa).user_port, u32::from(to.to_be()));
    }
    debug!(ctx, "[{:i}]:{} redirected to port {}", addr, port, to);
}

/// Counts a verdict and, for a redirect, records the original destination (`addr` as the
/// 16-byte form `OrigDst` keeps): `Ok` with the loopback port to send to, `Err` with why not.
/// A UDP DNS query is recorded for its reply (`SOCK_DNS`), TCP for its handshake (`SOCK_PENDING`).
#[inline(always)]
fn take(
    ctx: &SockAddrContext,
    task: &Task,
    verdict: Verdict,
    addr: [u8; 16],
    port: u16,
    family: u16,
    udp: bool,
) -> Result<u16, Counter> {
    match verdict {
        Verdict::Redirect => {
            remember(ctx, addr, port, family);
            count(Counter::Redirected);
            Ok(task.config.proxy_egress_port)
        }
        Verdict::RedirectDns => {
            if udp {
                remember_dns(ctx, addr, port, family);
            } else {
                remember(ctx, addr, port, family);
            }
            count(Counter::DnsRedirected);
            Ok(task.config.proxy_dns_port)
        }
        Verdict::Untouched(reason) => {
            count(reason);
            Err(reason)
        }
    }
}

/// A datagram received on an AF_INET socket: a reply from ProxyDNSPort to a redirected query
/// gets the server's address as its source.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: recvmsg4 may read and rewrite user_ip4 and user_port (the datagram's source).
    let (ip, port) = unsafe { (read_volatile(&(*sa).user_ip4), read_volatile(&(*sa).user_port)) };
    if ip.to_ne_bytes() != LOOPBACK_V4 {
        return ALLOW;
    }
    let Some(orig) = dns_reply_origin(&ctx, u16::from_be(port as u16)) else { return ALLOW };
    let Some(server) = v4_of_mapped(&orig.addr) else { return ALLOW };
    // SAFETY: as above.
    unsafe {
        write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(server));
        write_volatile(&mut (*sa).user_port, u32::from(orig.port.to_be()));
    }
    ALLOW
}

/// As recvmsg4, for AF_INET6 sockets (the reply comes from `::1`, or from `::ffff:127.0.0.1`
/// to a dual-stack socket that asked an IPv4 server).
#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let (addr, port) = destination_v6(&ctx);
    if addr != LOOPBACK_V6 && addr != mapped(LOOPBACK_V4) {
        return ALLOW;
    }
    let Some(orig) = dns_reply_origin(&ctx, port) else { return ALLOW };
    let server = bytes_to_words(orig.addr);
    let sa = ctx.sock_addr;
    // SAFETY: recvmsg6 may rewrite user_ip6 (4-byte words) and user_port.
    unsafe {
        write_volatile(&mut (*sa).user_ip6[0], server[0]);
        write_volatile(&mut (*sa).user_ip6[1], server[1]);
        write_volatile(&mut (*sa).user_ip6[2], server[2]);
        write_volatile(&mut (*sa).user_ip6[3], server[3]);
        write_volatile(&mut (*sa).user_port, u32::from(orig.port.to_be()));
    }
    ALLOW
}

/// The server of the query a datagram from loopback port `port` answers, when DNS is captured,
/// `port` is ProxyDNSPort and the socket sent a redirected query; counted either way.
#[inline(always)]
fn dns_reply_origin(ctx: &SockAddrContext, port: u16) -> Option<OrigDst> {
    let task = task(cgroup_slot())?;
    if task.config.proxy_dns_port == 0 || port != task.config.proxy_dns_port {
        return None;
    }
    match sock_storage(&SOCK_DNS, sock_addr_sk(ctx), None) {
        Some(orig) => {
            count(Counter::DnsReplyRewritten);
            Some(orig)
        }
        None => {
            count(Counter::DnsReplyUnknown);
            None
        }
    }
}

/// The slot of the task whose cgroup the running program is attached to (0: none yet).
#[inline(always)]
fn cgroup_slot() -> u32 {
    let task = TASKS.get_ptr_mut();
    // SAFETY: bpf_get_local_storage returns the attachment's storage, never null, valid for
    // the program's run; the agent replaces the value whole.
    unsafe { read_volatile(&(*task).slot) }
}

/// A task, as one run of a program sees it.
struct Task {
    slot: u32,
    /// The generation in use, read once: everything looked up afterwards is of this one.
    generation: u32,
    config: &'static GlobalConfig,
}

impl Task {
    /// The key prefix of the task's entries in this generation.
    #[inline(always)]
    fn prefix(&self) -> (u32, u32) {
        (self.slot.to_be(), self.generation.to_be())
    }
}

/// The task in `slot`, with its active generation read once, and that generation's
/// configuration. The agent writes only the other generation's set, and frees this one only
/// after the flip and a wait for running programs.
#[inline(always)]
fn task(slot: u32) -> Option<Task> {
    if slot == 0 || slot >= MAX_TASKS {
        return None;
    }
    let active = ACTIVE.get_ptr(slot)?;
    // SAFETY: a pointer to an existing array element, valid for the program's run. Volatile so
    // that the value is read exactly once, whatever the agent writes meanwhile.
    let generation = unsafe { read_volatile(active) } & 1;
    let config = CONFIG.get(slot * GENERATIONS + generation)?;
    Some(Task { slot, generation, config })
}

/// One address family's networks of the decision: its tries, keyed by (generation, network).
struct Networks<D: 'static> {
    local: &'static LpmTrie<D, u8>,
    ignored: &'static LpmTrie<D, u8>,
    included: &'static LpmTrie<D, u8>,
}

#[inline(always)]
fn in_trie<D>(trie: &LpmTrie<D, u8>, key: &Key<D>) -> bool {
    trie.get(key).is_some()
}

const V4: Networks<LpmDataV4> = Networks { local: &LOCAL_NETS_V4, ignored: &IGNORED_NETS_V4, included: &INCLUDED_V4 };
const V6: Networks<LpmDataV6> = Networks { local: &LOCAL_NETS_V6, ignored: &IGNORED_NETS_V6, included: &INCLUDED_V6 };

/// The key of an IPv4 address (all its bits) in the task's entries of its generation.
#[inline(always)]
fn key_v4(task: &Task, addr: [u8; 4]) -> Key<LpmDataV4> {
    let (slot_be, generation_be) = task.prefix();
    Key::new(KEY_PREFIX_BITS + 32, LpmDataV4 { slot_be, generation_be, addr })
}

/// The key of an IPv6 address in the task's entries of its generation.
#[inline(always)]
fn key_v6(task: &Task, addr: [u8; 16]) -> Key<LpmDataV6> {
    let (slot_be, generation_be) = task.prefix();
    Key::new(KEY_PREFIX_BITS + 128, LpmDataV6 { slot_be, generation_be, addr })
}

/// The egress rules of the decision model, in its order, for the destination `key` (of a TCP
/// connect, or of DNS being captured) in its family's `networks`. One function for both
/// families, inlined into each caller, so each program holds its own family's code only. The
/// tries come as a value rather than through a trait: with a trait, LLVM allocated registers
/// worse (IPv6 connect grew from 1,171 to 1,248 instructions); this way every program is as
/// small as with one function per family or smaller (docs/backends.md).
#[inline(always)]
fn decide<D>(networks: &Networks<D>, key: &Key<D>, task: &Task, port: u16) -> Verdict {
    let config = task.config;
    if in_trie(networks.local, key) {
        return Verdict::Untouched(Counter::LocalDestination);
    }
    if let Some(reason) = ignored_identity(task) {
        return Verdict::Untouched(reason);
    }
    if captured_dns(config, port) {
        if in_trie(networks.ignored, key) {
            return Verdict::Untouched(Counter::IgnoredIp);
        }
        return Verdict::RedirectDns;
    }
    if ignored_port(task, port) {
        return Verdict::Untouched(Counter::IgnoredPort);
    }
    if in_trie(networks.ignored, key) {
        return Verdict::Untouched(Counter::IgnoredIp);
    }
    if config.include_only != 0 && !in_trie(networks.included, key) {
        return Verdict::Untouched(Counter::NotIncluded);
    }
    Verdict::Redirect
}

#[inline(always)]
fn ignored_identity(task: &Task) -> Option<Counter> {
    let config = task.config;
    let uid_gid = bpf_get_current_uid_gid();
    let (uid, gid) = (uid_gid as u32, (uid_gid >> 32) as u32);
    let ignored = |kind: u32, id: u32| {
        let (slot_be, generation_be) = task.prefix();
        let data = IdData { slot_be, generation_be, kind_be: kind.to_be(), id_be: id.to_be() };
        IGNORED_IDS.get(Key::new(IdData::BITS, data)).is_some()
    };
    if config.has_ignored_uids != 0 && ignored(ID_UID, uid) {
        return Some(Counter::IgnoredUid);
    }
    if config.has_ignored_gids != 0 && ignored(ID_GID, gid) {
        return Some(Counter::IgnoredGid);
    }
    None
}

#[inline(always)]
fn ignored_port(task: &Task, port: u16) -> bool {
    in_port_set(&IGNORED_PORTS, task, port)
}

/// Whether `port` is in the task's set `ports` of its generation.
#[inline(always)]
fn in_port_set(ports: &LpmTrie<PortData, u8>, task: &Task, port: u16) -> bool {
    let (slot_be, generation_be) = task.prefix();
    ports.get(Key::new(PortData::BITS, PortData { slot_be, generation_be, port_be: port.to_be(), _pad: 0 })).is_some()
}

/// Records which server a UDP socket's redirected DNS query was for, for the reply.
#[inline(always)]
fn remember_dns(ctx: &SockAddrContext, addr: [u8; 16], port: u16, family: u16) {
    sock_storage(&SOCK_DNS, sock_addr_sk(ctx), Some(OrigDst { addr, port, family }));
}

/// Records where the socket of `ctx` was going, until `sockops` sees it established.
#[inline(always)]
fn remember(ctx: &SockAddrContext, addr: [u8; 16], port: u16, family: u16) {
    sock_storage(&SOCK_PENDING, sock_addr_sk(ctx), Some(OrigDst { addr, port, family }));
}

/// The socket a sock_addr program runs for.
#[inline(always)]
fn sock_addr_sk(ctx: &SockAddrContext) -> *mut bpf_sock {
    // SAFETY: the context pointer is valid for the program's run; sk is never null there.
    unsafe { read_volatile(&(*ctx.sock_addr).__bindgen_anon_1.sk) }
}

/// Reads the value `map` keeps for `sk` or, with `set`, stores it (creating the storage).
/// `None` when there is none, or when the kernel could not allocate it (the connection is then
/// redirected without a record, and its SO_ORIGINAL_DST misses, counted).
#[inline(always)]
fn sock_storage(map: &SkStorage<OrigDst>, sk: *mut bpf_sock, set: Option<OrigDst>) -> Option<OrigDst> {
    if sk.is_null() {
        return None;
    }
    let map = core::ptr::from_ref(map).cast_mut().cast::<core::ffi::c_void>();
    let flags = if set.is_some() { u64::from(BPF_SK_STORAGE_GET_F_CREATE) } else { 0 };
    // SAFETY: map is a socket storage map of this object and sk a full socket of the context;
    // the pointer returned, when not null, is to the socket's value, valid for the program's
    // run.
    let value = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags) }.cast::<OrigDst>();
    if value.is_null() {
        return None;
    }
    match set {
        Some(dst) => {
            // SAFETY: as above; the value is plain data.
            unsafe { write_volatile(value, dst) };
            Some(dst)
        }
        // SAFETY: as above.
        None => Some(unsafe { *value }),
    }
}

#[sock_ops]
pub fn track_sockets(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    match ctx.op() {
        // The app's side is established: hand the original destination over to the proxy's
        // side under the 4-tuple, and watch the app's socket so that an entry the proxy never
        // takes goes when the socket closes.
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if let Some(dst) = sock_storage(&SOCK_PENDING, sock_ops_sk(ops), None) {
                let (local, remote) = endpoints(ops);
                let pair = app_side(local, remote);
                let _ = HANDOFF.insert(pair, dst, u64::from(BPF_ANY));
                let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
                debug!(&ctx, "established [{:i}]:{} → original [{:i}]:{}", local.0, local.1, dst.addr, dst.port);
            }
        }
        // The proxy's side (a socket accepted in this cgroup), created when the handshake
        // completes, before accept(2) returns it: it takes the original destination.
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let (local, remote) = endpoints(ops);
            let pair = proxy_side(local, remote);
            // SAFETY: the value is copied out at once; the map's values are plain data.
            if let Some(dst) = unsafe { HANDOFF.get(pair) }.copied() {
                sock_storage(&SOCK_ORIG, sock_ops_sk(ops), Some(dst));
                let _ = HANDOFF.remove(pair);
            }
        }
        // A socket of the cgroup starts listening: if it is on ProxyIngressPort, it is the
        // proxy's ingress listener (a restarted proxy's new one replaces the slot's old one).
        BPF_SOCK_OPS_TCP_LISTEN_CB => {
            let Some(task) = task(task_slot()) else { return 0 };
            let (family, local_port) = (ctx.family(), ctx.local_port() as u16);
            if task.config.proxy_ingress_port != 0 && local_port == task.config.proxy_ingress_port {
                let listener = if family == u32::from(AF_INET6) { LISTENER_V6 } else { LISTENER_V4 };
                // SAFETY: ops is the context of a sock_ops program at TCP_LISTEN_CB, where the
                // kernel allows a SOCKMAP update with it.
                let inserted = unsafe { PROXY_LISTENERS.update(listener, ops, u64::from(BPF_ANY)) };
                debug!(
                    &ctx,
                    "listener on {} (family {}) into slot {}: {}",
                    local_port,
                    family,
                    listener,
                    inserted.is_ok() as u8
                );
            }
        }
        // Only at the close: a proxy slow to take a connection may still be creating its side
        // while the app's side is already half closed.
        BPF_SOCK_OPS_STATE_CB
            if ctx.arg(1) == BPF_TCP_CLOSE && sock_storage(&SOCK_PENDING, sock_ops_sk(ops), None).is_some() =>
        {
            let (local, remote) = endpoints(ops);
            let _ = HANDOFF.remove(app_side(local, remote));
        }
        _ => {}
    }
    0
}

/// The slot of the task a per-task program (`track_sockets`, `steer_ingress`) was loaded for.
#[inline(always)]
fn task_slot() -> u32 {
    // SAFETY: a read-only global, set when the program was loaded for its task.
    unsafe { read_volatile(&TASK_SLOT) }
}

/// A connection's key, from its app-side socket's (local, remote) endpoints.
#[inline(always)]
fn app_side(local: ([u8; 16], u16), remote: ([u8; 16], u16)) -> SocketPair {
    SocketPair { client_addr: local.0, client_port: local.1, server_addr: remote.0, server_port: remote.1 }
}

/// The same key, from the proxy's side of the connection.
#[inline(always)]
fn proxy_side(local: ([u8; 16], u16), remote: ([u8; 16], u16)) -> SocketPair {
    app_side(remote, local)
}

/// The socket of a sock_ops context (null for request sockets, never at the callbacks used
/// here).
#[inline(always)]
fn sock_ops_sk(ops: *mut bpf_sock_ops) -> *mut bpf_sock {
    // SAFETY: a read of the context's sk field, at a constant offset, during the program's run.
    unsafe { read_volatile(&(*ops).__bindgen_anon_2.sk) }
}

/// The socket's (local, remote) address and port, IPv4 addresses mapped into IPv6.
///
/// Every field is read unconditionally, each with its own load at a constant offset from the
/// context: the verifier rejects a context pointer that was moved before the load, which is
/// what the compiler makes of loads in branches that share a base address.
#[inline(always)]
fn endpoints(ops: *mut bpf_sock_ops) -> (([u8; 16], u16), ([u8; 16], u16)) {
    // SAFETY: 4-byte reads of fields sock_ops programs may read, during the program's run.
    let (family, remote_port, local_port, local4, remote4, local6, remote6) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).remote_port),
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).local_ip4),
            read_volatile(&(*ops).remote_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                read_volatile(&(*ops).remote_ip6[0]),
                read_volatile(&(*ops).remote_ip6[1]),
                read_volatile(&(*ops).remote_ip6[2]),
                read_volatile(&(*ops).remote_ip6[3]),
            ],
        )
    };
    // remote_port holds the port in network order in its upper 16 bits (little-endian
    // hosts); local_port is in host order.
    let remote_port = u32::from_be(remote_port) as u16;
    let local_port = local_port as u16;
    let (local, remote) = if family == u32::from(AF_INET6) {
        (words_to_bytes(local6), words_to_bytes(remote6))
    } else {
        (mapped(local4.to_ne_bytes()), mapped(remote4.to_ne_bytes()))
    };
    ((local, local_port), (remote, remote_port))
}

/// `struct sockaddr_in`.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port_be: u16,
    flowinfo: u32,
    addr: [u8; 16],
    scope_id: u32,
}

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    let opt = ctx.sockopt;
    // SAFETY: the context pointer is valid for the program's run; sk is the (non-null) socket
    // the call is made on, and its fields are read with 4-byte (dst_port: 2-byte) accesses.
    let (level, optname) = unsafe { (read_volatile(&(*opt).level), read_volatile(&(*opt).optname)) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return ALLOW;
    }
    let sk: *mut bpf_sock = unsafe { read_volatile(&(*opt).__bindgen_anon_1.sk) };
    // Read unconditionally, each at a constant offset; see `endpoints`.
    let (family, src_port, dst_port, src4, dst4, src6, dst6) = unsafe {
        (
            read_volatile(&(*sk).family),
            read_volatile(&(*sk).src_port),
            read_volatile(&(*sk).dst_port),
            read_volatile(&(*sk).src_ip4),
            read_volatile(&(*sk).dst_ip4),
            [
                read_volatile(&(*sk).src_ip6[0]),
                read_volatile(&(*sk).src_ip6[1]),
                read_volatile(&(*sk).src_ip6[2]),
                read_volatile(&(*sk).src_ip6[3]),
            ],
            [
                read_volatile(&(*sk).dst_ip6[0]),
                read_volatile(&(*sk).dst_ip6[1]),
                read_volatile(&(*sk).dst_ip6[2]),
                read_volatile(&(*sk).dst_ip6[3]),
            ],
        )
    };
    let (server_addr, client_addr) = if family == u32::from(AF_INET6) {
        (words_to_bytes(src6), words_to_bytes(dst6))
    } else {
        (mapped(src4.to_ne_bytes()), mapped(dst4.to_ne_bytes()))
    };
    let pair =
        SocketPair { client_addr, client_port: u16::from_be(dst_port), server_addr, server_port: src_port as u16 };
    let slot = cgroup_slot();
    let (dst, hit) = match sock_storage(&SOCK_ORIG, sk, None) {
        Some(dst) => (dst, Counter::OrigDstHit),
        // An inbound connection the sk_lookup program steered keeps the address the client
        // connected to as its local address: the proxy's accepted socket on an AppPort.
        None if inbound_to_app_port(slot, pair.server_port) => {
            let family = if v4_of_mapped(&server_addr).is_some() { AF_INET } else { AF_INET6 };
            (OrigDst { addr: server_addr, port: pair.server_port, family }, Counter::OrigDstIngress)
        }
        None => {
            count(Counter::OrigDstMiss);
            debug!(&ctx, "SO_ORIGINAL_DST miss for [{:i}]:{}", pair.client_addr, pair.client_port);
            return ALLOW;
        }
    };
    // SAFETY: optval..optval_end is the kernel's copy of the caller's buffer; every write is
    // bounds-checked against optval_end first, as the verifier requires.
    let answered = unsafe {
        let optval = read_volatile(&(*opt).__bindgen_anon_2.optval) as *mut u8;
        let optval_end = read_volatile(&(*opt).__bindgen_anon_3.optval_end) as *mut u8;
        if level == SOL_IP {
            match v4_of_mapped(&dst.addr) {
                Some(addr) if dst.family == AF_INET => write_answer(
                    opt,
                    optval,
                    optval_end,
                    SockaddrIn { family: AF_INET, port_be: dst.port.to_be(), addr, zero: [0; 8] },
                ),
                // An IPv6 destination has no sockaddr_in; leave the kernel's answer.
                _ => false,
            }
        } else {
            write_answer(
                opt,
                optval,
                optval_end,
                SockaddrIn6 { family: AF_INET6, port_be: dst.port.to_be(), flowinfo: 0, addr: dst.addr, scope_id: 0 },
            )
        }
    };
    if answered {
        count(hit);
        debug!(&ctx, "SO_ORIGINAL_DST [{:i}]:{} for [{:i}]:{}", dst.addr, dst.port, pair.client_addr, pair.client_port);
    } else {
        count(Counter::OrigDstMiss);
    }
    ALLOW
}

/// Whether a socket with this local port carries an inbound connection to an AppPort.
#[inline(always)]
fn inbound_to_app_port(slot: u32, local_port: u16) -> bool {
    let Some(task) = task(slot) else { return false };
    task.config.proxy_ingress_port != 0 && app_port(&task, local_port)
}

#[inline(always)]
fn app_port(task: &Task, port: u16) -> bool {
    in_port_set(&APP_PORTS, task, port)
}

/// sk_lookup verdicts.
const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

#[sk_lookup]
pub fn steer_ingress(ctx: SkLookupContext) -> u32 {
    let lookup = ctx.lookup;
    // SAFETY: the context pointer is valid for the program's run; 4-byte reads of fields an
    // sk_lookup program may read, each at a constant offset.
    let (family, protocol, remote4, remote6, local_port) = unsafe {
        (
            read_volatile(&(*lookup).family),
            read_volatile(&(*lookup).protocol),
            read_volatile(&(*lookup).remote_ip4),
            [
                read_volatile(&(*lookup).remote_ip6[0]),
                read_volatile(&(*lookup).remote_ip6[1]),
                read_volatile(&(*lookup).remote_ip6[2]),
                read_volatile(&(*lookup).remote_ip6[3]),
            ],
            read_volatile(&(*lookup).local_port),
        )
    };
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    // SAFETY: as above; sk is the socket a program before this one assigned, or null.
    let assigned_before = unsafe { read_volatile(&(*lookup).__bindgen_anon_1.__bindgen_anon_1.sk) };
    if !assigned_before.is_null() {
        // Another installation's program (one being replaced runs before this one until it is
        // detached) steered the connection already: it stays steered.
        return SK_PASS;
    }
    let Some(task) = task(task_slot()) else { return SK_PASS };
    let config = task.config;
    let port = local_port as u16;
    if config.proxy_ingress_port == 0 || !app_port(&task, port) {
        return SK_PASS;
    }
    let v6 = family == u32::from(AF_INET6);
    // Connections from the task itself (loopback, its own addresses) are never steered: the
    // proxy's connections to the app among them.
    let local_source = if v6 {
        config.ipv6 == 0 || in_trie(&LOCAL_NETS_V6, &key_v6(&task, words_to_bytes(remote6)))
    } else {
        in_trie(&LOCAL_NETS_V4, &key_v4(&task, remote4.to_ne_bytes()))
    };
    if local_source {
        return SK_PASS;
    }
    // An IPv4 connection can go to an AF_INET listener or to a dual-stack AF_INET6 one.
    let proxy_port = config.proxy_ingress_port;
    let assigned = if v6 {
        assign_listener(&ctx, LISTENER_V6, proxy_port)
    } else {
        assign_listener(&ctx, LISTENER_V4, proxy_port) || assign_listener(&ctx, LISTENER_V6, proxy_port)
    };
    if assigned {
        count_own(Counter::IngressSteered);
        debug!(&ctx, "inbound to port {} steered to the proxy", port);
        SK_PASS
    } else if config.ingress_fallback == INGRESS_FALLBACK_APP {
        count_own(Counter::IngressToApp);
        SK_PASS
    } else {
        // For a SYN, a dropped lookup is answered with a reset: the client sees "refused".
        count_own(Counter::IngressRefused);
        SK_DROP
    }
}

/// Assigns the connection to the listener in `slot` of [`PROXY_LISTENERS`], if there is one
/// and it is bound to `port`: a listener on a former ProxyIngressPort (the configuration
/// changed while it kept listening) is not used.
#[inline(always)]
fn assign_listener(ctx: &SkLookupContext, slot: u32, port: u16) -> bool {
    let map = core::ptr::addr_of!(PROXY_LISTENERS) as *mut core::ffi::c_void;
    // SAFETY: a SOCKMAP lookup from an sk_lookup program returns a referenced socket (or
    // null), released below on every path.
    let sk = unsafe { bpf_map_lookup_elem(map, core::ptr::addr_of!(slot).cast()) } as *mut bpf_sock;
    if sk.is_null() {
        return false;
    }
    // SAFETY: sk is a valid socket pointer until released; src_port is the local port, host
    // order.
    let bound = unsafe { read_volatile(&(*sk).src_port) };
    // SAFETY: ctx is the program's context and sk a referenced listening socket.
    let assigned = bound == u32::from(port) && unsafe { bpf_sk_assign(ctx.as_ptr(), sk.cast(), 0) } == 0;
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    assigned
}

/// Writes `value` as the getsockopt result and clears the kernel's error. False when the
/// caller's buffer is too small for it (the kernel's own answer, usually an error, stands).
#[inline(always)]
unsafe fn write_answer<T>(
    opt: *mut aya_ebpf::bindings::bpf_sockopt,
    optval: *mut u8,
    optval_end: *mut u8,
    value: T,
) -> bool {
    let size = core::mem::size_of::<T>();
    if optval.wrapping_add(size) > optval_end {
        return false;
    }
    unsafe {
        core::ptr::write_unaligned(optval.cast::<T>(), value);
        write_volatile(&mut (*opt).optlen, size as i32);
        write_volatile(&mut (*opt).retval, 0);
    }
    true
}

#[inline(always)]
fn count(counter: Counter) {
    let counters = TASK_COUNTERS.get_ptr_mut();
    // SAFETY: this CPU's value of the cgroup's storage, valid for the program's run; these
    // programs run with migration disabled, so nothing else writes it meanwhile.
    if let Some(slot) = unsafe { (*counters).get_mut(counter.index() as usize) } {
        *slot += 1;
    }
}

/// Counts in the task's own counters (its per-task programs).
#[inline(always)]
fn count_own(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: the pointer is this CPU's slot of an existing entry, and these programs run
        // with migration disabled, so nothing else writes the slot meanwhile.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let words = [0u32, 0u32, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(v4)];
    words_to_bytes(words)
}

// The helpers below index only with constants. (The zeroed runs of bytes the compiler still
// turns into memset loops are why loading needs CAP_PERFMON: the verifier allows a variable
// stack offset only to "perfmon capable" loaders.)

#[inline(always)]
fn v4_of_mapped(a: &[u8; 16]) -> Option<[u8; 4]> {
    let zero = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9];
    (zero == 0 && a[10] == 0xff && a[11] == 0xff).then_some([a[12], a[13], a[14], a[15]])
}

/// The kernel's `__u32[4]` IPv6 words hold the address bytes in memory (network) order.
#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let [a, b, c, d] = [w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes()];
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
}

#[inline(always)]
fn bytes_to_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic shows up as this infinite loop, which the verifier rejects at load
    // time; in an accepted program it is dead code.
    loop {}
}

/// The kernel only grants GPL-only helpers to GPL-compatible programs; "Dual MIT/GPL" is what
/// aya's templates use and is GPL-compatible. It is this crate's licence (Cargo.toml: MIT OR
/// GPL-2.0-only).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
