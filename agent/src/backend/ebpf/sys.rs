//! The one bpf() entry point of the eBPF backend's own commands (those aya does not offer; see
//! `host.rs`): each is one `bpf_attr`, aya-obj's union generated from uapi `linux/bpf.h`, passed
//! whole through [`sys_bpf`]. Unit tests put a fake kernel in place of the syscall with
//! [`override_bpf`], as aya's own tests do with its `override_syscall`.

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};

pub(super) use aya_obj::generated::{bpf_attr, bpf_cmd};

/// A `bpf_attr` with every byte zero: what the kernel requires of the fields a command does
/// not use.
pub(super) fn zeroed() -> bpf_attr {
    // SAFETY: bpf_attr is a union of structs of integers (and arrays of them), for which all
    // zero bytes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr, sizeof(attr))`: the command's non-negative result (a new fd, or 0), or the
/// errno. Passing the whole union is what aya does for every command: a kernel whose
/// `bpf_attr` is shorter accepts the longer one as long as the bytes it does not know are zero.
pub(super) fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    #[cfg(test)]
    {
        TEST_BPF.with(|hook| (hook.borrow_mut())(cmd, attr))
    }
    #[cfg(not(test))]
    {
        // SAFETY: attr is a valid bpf_attr for cmd, which the caller filled; every pointer in it
        // points to memory the caller keeps alive across the call.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>() as u32)
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // c_long: i64 on the 64-bit hosts, i32 on 32-bit ones.
        Ok(ret as i64)
    }
}

/// [`sys_bpf`] for the commands that return a new file descriptor.
pub(super) fn sys_bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What stands in for the syscall in unit tests: the fake kernel of `fake.rs`.
#[cfg(test)]
type Hook = Box<dyn FnMut(bpf_cmd, &mut bpf_attr) -> io::Result<i64>>;

#[cfg(test)]
thread_local! {
    /// Per thread, as the tests run on threads of their own. Without an override, every
    /// command fails: a unit test never reaches the kernel.
    static TEST_BPF: std::cell::RefCell<Hook> =
        std::cell::RefCell::new(Box::new(|_, _| Err(io::Error::from_raw_os_error(libc::ENOSYS))));
}

/// Makes this thread's bpf() commands go to `hook`.
#[cfg(test)]
pub(super) fn override_bpf(hook: impl FnMut(bpf_cmd, &mut bpf_attr) -> io::Result<i64> + 'static) {
    TEST_BPF.with(|current| *current.borrow_mut() = Box::new(hook));
}
