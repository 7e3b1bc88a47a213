//! intercept's eBPF programs.
//!
//! For now: cgroup `connect4`/`connect6` hooks that count every call and let the connection
//! through unchanged. The counters prove, end to end, that the object builds, loads, attaches
//! to a cgroup and runs for exactly the processes in that cgroup; the redirect logic replaces
//! the bodies later.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::SockAddrContext,
};

/// Calls per hook, indexed by `CONNECT4` / `CONNECT6`. Per-CPU, so that counting needs no
/// atomics; userspace sums the slots.
#[map]
static CALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

// Keep in step with `Hook::index` in agent/src/backend/ebpf.rs.
const CONNECT4: u32 = 0;
const CONNECT6: u32 = 1;

/// cgroup/connect*: 1 lets connect(2) proceed (with whatever address the program left in the
/// context; these leave it untouched), 0 would fail it with EPERM.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(_ctx: SockAddrContext) -> i32 {
    count(CONNECT4);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(_ctx: SockAddrContext) -> i32 {
    count(CONNECT6);
    ALLOW
}

#[inline(always)]
fn count(hook: u32) {
    if let Some(calls) = CALLS.get_ptr_mut(hook) {
        // SAFETY: the pointer is this CPU's slot of an existing entry, and a cgroup sock_addr
        // program runs with migration disabled, so nothing else writes the slot meanwhile.
        unsafe { *calls += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic shows up as this infinite loop, which the verifier rejects at load
    // time; in an accepted program it is dead code.
    loop {}
}

/// The kernel only grants GPL-only helpers to GPL-compatible programs; "Dual MIT/GPL" is what
/// aya's templates use and is GPL-compatible.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
