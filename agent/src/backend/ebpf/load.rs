//! Loading the object and attaching its programs: every map opened from or created at its pin,
//! every program verified before anything attaches, the links pinned in a staging directory.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapError};
use aya::programs::{CgroupSockAddr, CgroupSockopt, ProgramError, SkLookup, SockOps};
use aya::{Ebpf, EbpfError, EbpfLoader};
use aya_log::EbpfLogger;
use intercept_common::{LEGACY_DNS_MAP, LEGACY_NEW_CAPACITY, LEGACY_ORIG_MAP, LEGACY_PENDING_MAP, MAP_NAMES};

use super::{AYA_LOG_RING, ApplyOptions, Error, Logs, Printer, Program, QUIET_LOG_RING_BYTES, Target, host, object};
use crate::cgroup;
use crate::plan::ebpf::EbpfPlan;

/// What [`load`] returns: the object with its programs loaded, its maps, and with
/// [`ApplyOptions::bpf_log`] the reader of their events.
pub(super) type Loaded = (Ebpf, BTreeMap<&'static str, Map>, Option<Logs>);

/// Loads the object: every map opened from, or created and pinned at, its path in `pins` (a
/// map pinned there already is reused, whatever its capacity), the configuration maps sized
/// to the plan, the `LEGACY_*` maps created with one entry unless reused, and every program
/// loaded (verified) but not attached. `carried` names the maps that are reused. Without
/// logging, aya-log's ring is the one pinned at `quiet_log_ring`, created there if missing
/// (see [`super::QUIET_LOG_RING_PIN`]).
pub(super) fn load(
    plan: &EbpfPlan,
    options: ApplyOptions,
    pins: &BTreeMap<&'static str, PathBuf>,
    carried: &[&'static str],
    quiet_log_ring: &Path,
) -> Result<Loaded, Error> {
    // aya-log's level is a read-only global: at 0 the verifier sees every log statement as
    // dead code and drops it.
    let level: u8 = if options.bpf_log { aya_log_common_level_debug() } else { 0 };
    // The programs need no CO-RE relocation: the kernel's BTF (megabytes) is never read.
    let mut loader = EbpfLoader::without_kernel_btf();
    loader.override_global(aya_log::LEVEL, &level, true);
    if !options.bpf_log {
        // aya-log's ring buffer (128 KiB) exists whether or not anything logs; with logging
        // off nothing is ever written to it, and one page is the smallest a ring buffer can be.
        loader.map_max_entries(AYA_LOG_RING, QUIET_LOG_RING_BYTES);
        loader.map_pin_path(AYA_LOG_RING, quiet_log_ring);
    }
    for spec in plan.map_specs() {
        if !carried.contains(&spec.name) {
            loader.map_max_entries(spec.name, spec.max_entries);
        }
    }
    for name in [LEGACY_PENDING_MAP, LEGACY_ORIG_MAP, LEGACY_DNS_MAP] {
        if !carried.contains(&name) {
            loader.map_max_entries(name, LEGACY_NEW_CAPACITY);
        }
    }
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object()).map_err(load_error)?;
    let logs = if options.bpf_log {
        Some(Logs(EbpfLogger::init_with_logger(&mut ebpf, Printer).map_err(|e| Error::Log(Box::new(e)))?))
    } else {
        None
    };
    load_programs(&mut ebpf)?;
    let mut maps = BTreeMap::new();
    for name in MAP_NAMES {
        maps.insert(name, ebpf.take_map(name).ok_or(Error::MissingMap(name))?);
    }
    Ok((ebpf, maps, logs))
}

/// Attaches the programs and pins their links in `staging`. Until the links are pinned they
/// live only in this process, and detach if it fails or dies; once pinned in `staging`,
/// `status` reports them and the next `apply` or `remove` unpins them.
pub(super) fn attach_and_pin(target: &Target, netns: BorrowedFd<'_>, ebpf: &Ebpf, staging: &Path) -> Result<(), Error> {
    let cgroup = cgroup::open(&target.cgroup)?;
    link_and_pin(cgroup.as_fd(), netns, |program| program_fd(ebpf, program), staging)
}

/// [`attach_and_pin`] past the cgroup's opening, over the programs' fds (`program_fd`): every
/// program is linked before any link is pinned, so that a failure leaves nothing attached.
fn link_and_pin<'a>(
    cgroup: BorrowedFd<'_>,
    netns: BorrowedFd<'_>,
    program_fd: impl Fn(Program) -> Result<BorrowedFd<'a>, Error>,
    staging: &Path,
) -> Result<(), Error> {
    let mut links = Vec::new();
    for program in Program::ALL {
        let to = if program.on_netns() { netns } else { cgroup };
        links.push((program, attach(program, program_fd(program)?, to)?));
    }
    for (program, link) in links {
        let path = staging.join(program.link_pin());
        // Closing this process's fd afterwards leaves the link to the pin.
        host::obj_pin(link.as_fd(), &path).map_err(|e| Error::io("pin", &path, e))?;
    }
    Ok(())
}

/// The fd of `program`, loaded in `ebpf`.
pub(super) fn program_fd(ebpf: &Ebpf, program: Program) -> Result<BorrowedFd<'_>, Error> {
    let name = program.name();
    let prog = ebpf.program(name).ok_or(Error::MissingProgram(name))?;
    Ok(prog.fd().map_err(|source| program_error(name, source))?.as_fd())
}

fn aya_log_common_level_debug() -> u8 {
    // aya-log-common's Level: Error = 1, Warn, Info, Debug, Trace.
    4
}

fn load_error(e: EbpfError) -> Error {
    if let EbpfError::MapError(MapError::CreateError { io_error, .. }) = &e
        && io_error.raw_os_error() == Some(libc::EPERM)
    {
        if let Some(limit) = memlock_limit() {
            return Error::Memlock { limit };
        }
        return Error::MissingCapability { capability: "CAP_BPF", needed_for: "creating eBPF maps" };
    }
    Error::Load(Box::new(e))
}

/// RLIMIT_MEMLOCK in bytes, when it is limited: what refuses maps on kernels that charge
/// eBPF memory to it (before 5.11).
fn memlock_limit() -> Option<u64> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    getrlimit(Resource::RLIMIT_MEMLOCK).ok().map(|(soft, _)| soft).filter(|&soft| soft != RLIM_INFINITY)
}

/// Loads (verifies) every program. The verifier is most of an apply's time; it runs in the
/// thread that loads, and the kernel verifies privileged loads side by side, so the programs
/// are shared out among as many threads as this process has CPUs to run on (its affinity and
/// its cgroup's CPU quota; one thread where it has one). The first failure in
/// [`Program::ALL`]'s order is the one reported, whatever the threads' timing.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    let mut by_name: BTreeMap<&str, &mut aya::programs::Program> = ebpf.programs_mut().collect();
    // Largest first (by their verification time, measured on 6.18), so that no thread is
    // left with a long one at the end.
    let mut queue = Vec::with_capacity(Program::ALL.len());
    for program in Program::BY_LOAD_TIME {
        queue.push((program, by_name.remove(program.name()).ok_or(Error::MissingProgram(program.name()))?));
    }
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(queue.len());
    let queue = std::sync::Mutex::new(queue);
    let work = || {
        let mut results = Vec::new();
        // A poisoned queue is one whose thread panicked: the scope re-raises that panic.
        while let Some((program, prog)) = queue.lock().ok().and_then(|mut queue| queue.pop()) {
            results.push((program, load_program(prog, program)));
        }
        results
    };
    let mut results: Vec<(Program, Result<(), Error>)> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut results = work();
        for other in others {
            results.extend(other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        results
    });
    results.sort_by_key(|(program, _)| Program::ALL.iter().position(|p| p == program));
    results.into_iter().try_for_each(|(_, result)| result)
}

fn load_program(prog: &mut aya::programs::Program, program: Program) -> Result<(), Error> {
    let name = program.name();
    let error = |source| program_error(name, source);
    match program {
        Program::Connect4
        | Program::Connect6
        | Program::Sendmsg4
        | Program::Sendmsg6
        | Program::Recvmsg4
        | Program::Recvmsg6 => <&mut CgroupSockAddr>::try_from(prog).map_err(error)?.load().map_err(error),
        Program::Sockops => <&mut SockOps>::try_from(prog).map_err(error)?.load().map_err(error),
        Program::Getsockopt => <&mut CgroupSockopt>::try_from(prog).map_err(error)?.load().map_err(error),
        Program::SkLookup => <&mut SkLookup>::try_from(prog).map_err(error)?.load().map_err(error),
    }
}

fn attach(program: Program, prog_fd: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    let name = program.name();
    host::link_create(prog_fd, to, program.attach_type()).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            Error::MissingCapability {
                capability: "CAP_NET_ADMIN",
                needed_for: "attaching programs to a cgroup and a network namespace",
            }
        } else {
            Error::Attach { program: name, source: e }
        }
    })
}

fn program_error(program: &'static str, source: ProgramError) -> Error {
    if let ProgramError::LoadError { io_error, .. } = &source
        && io_error.raw_os_error() == Some(libc::EPERM)
    {
        return Error::MissingCapability {
            capability: "CAP_NET_ADMIN",
            needed_for: "loading cgroup networking eBPF programs",
        };
    }
    Error::Program { program, source: Box::new(source) }
}

#[cfg(test)]
mod tests;
