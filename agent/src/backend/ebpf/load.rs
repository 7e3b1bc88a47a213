//! Loading the object and attaching its programs.
//!
//! Layout 3 loads the host's programs once per host (and build): [`host_programs`] verifies
//! them the first time and pins them, with the host's maps, in `<bpffs>/intercept/programs-…`;
//! every later task only opens those pins. A task gets its own `sockops` and `sk_lookup`
//! programs (small: [`load_task_programs`]) with maps of its own, the agent's records
//! ([`create_task_maps`]), and links from its cgroup and namespace to the programs.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError};
use aya::programs::{CgroupSockAddr, CgroupSockopt, ProgramError, SkLookup, SockOps};
use aya::{Ebpf, EbpfError, EbpfLoader};
use aya_log::EbpfLogger;
use intercept_common::{
    HOST_MAP_NAMES, MAX_TASKS, RECORD_MAP, RECORD_PAGE, SLOTS_MAP, TASK_MAP, TASK_PROGRAM_MAP_NAMES, TaskRef,
    VERSION_MAP, Version,
};

use super::{AYA_LOG_RING, ApplyOptions, Error, Logs, Printer, Program, QUIET_LOG_RING_BYTES, Target, host, object};
use crate::cgroup;

/// Directory name prefix, in `<bpffs>/intercept`, of the host's programs and maps.
pub const PROGRAMS_DIR: &str = "programs-";
/// Directory name prefix, in `<bpffs>/intercept`, of the host's programs and maps until they
/// are moved into place.
pub(super) const PROGRAMS_STAGING: &str = "staging-programs-";
/// Pin name prefix of a program in that directory.
const PROGRAM_PIN: &str = "prog-";
/// The global holding the slot of the task an `sk_lookup` program is loaded for.
const TASK_SLOT_GLOBAL: &str = "TASK_SLOT";

/// The host's cgroup programs, loaded once and pinned: the directory of their pins, and each
/// program opened.
pub(super) struct HostPrograms {
    pub dir: PathBuf,
    programs: BTreeMap<Program, OwnedFd>,
    /// With logging, the reader of the programs' events (only the process that loaded them
    /// can read aya-log's ring through aya).
    pub logs: Option<Logs>,
}

impl HostPrograms {
    pub fn fd(&self, program: Program) -> Result<BorrowedFd<'_>, Error> {
        self.programs.get(&program).map(|fd| fd.as_fd()).ok_or(Error::MissingProgram(program.name()))
    }

    /// The host map `name`, opened from its pin.
    pub fn map(&self, name: &'static str) -> Result<OwnedFd, Error> {
        let path = self.dir.join(name);
        host::obj_get(&path).map_err(|e| Error::io("open the map pinned at", &path, e))
    }
}

/// `<bpffs>/intercept/programs-<layout>-<object hash>[-log]`: one set per build (and log
/// setting) on a host, so that two builds never share programs whose maps differ.
pub(super) fn programs_dir(root: &Path, options: ApplyOptions) -> PathBuf {
    let log = if options.bpf_log { "-log" } else { "" };
    root.join(format!("{PROGRAMS_DIR}{}-{}{log}", intercept_common::LAYOUT, env!("INTERCEPT_EBPF_OBJECT_HASH")))
}

/// The host's programs for this build: opened from their pins, or, the first time, loaded
/// (every program verified), pinned with the host's maps in a staging directory and moved into
/// place. Under the bpffs lock.
pub(super) fn host_programs(root: &Path, options: ApplyOptions) -> Result<HostPrograms, Error> {
    let dir = programs_dir(root, options);
    if dir.is_dir() {
        let mut programs = BTreeMap::new();
        for program in Program::HOST {
            let path = dir.join(format!("{PROGRAM_PIN}{}", program.name()));
            let fd = host::obj_get(&path).map_err(|e| Error::io("open the program pinned at", &path, e))?;
            programs.insert(program, fd);
        }
        return Ok(HostPrograms { dir, programs, logs: None });
    }
    let staging = root.join(format!("{PROGRAMS_STAGING}{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir(&staging).map_err(|e| Error::io("create", &staging, e))?;
    let loaded = (|| {
        let mut loader = loader(options, &staging);
        let mut ebpf = loader.load(object()).map_err(load_error)?;
        let logs = if options.bpf_log {
            Some(Logs(EbpfLogger::init_with_logger(&mut ebpf, Printer).map_err(|e| Error::Log(Box::new(e)))?))
        } else {
            None
        };
        load_programs(&mut ebpf, &Program::HOST)?;
        let mut programs = BTreeMap::new();
        for program in Program::HOST {
            let fd = program_fd(&ebpf, program)?;
            let path = staging.join(format!("{PROGRAM_PIN}{}", program.name()));
            host::obj_pin(fd, &path).map_err(|e| Error::io("pin", &path, e))?;
            programs.insert(program, host::obj_get(&path).map_err(|e| Error::io("open", &path, e))?);
        }
        let slots = host::map_create(&host::MapSpec {
            name: SLOTS_MAP,
            map_type: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH,
            key_size: 4,
            value_size: 8,
            max_entries: MAX_TASKS,
            flags: aya_obj::generated::BPF_F_NO_PREALLOC,
        })
        .map_err(|e| Error::io("create the map", SLOTS_MAP, e))?;
        let path = staging.join(SLOTS_MAP);
        host::obj_pin(slots.as_fd(), &path).map_err(|e| Error::io("pin", &path, e))?;
        Ok((programs, logs))
    })();
    match loaded {
        Ok((programs, logs)) => {
            fs::rename(&staging, &dir).map_err(|e| Error::io("move the programs' pins into place at", &dir, e))?;
            Ok(HostPrograms { dir, programs, logs })
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// A loader of the object whose host maps are pinned in `dir` (opened there
/// when they are, created and pinned there when not).
fn loader<'a>(options: ApplyOptions, dir: &Path) -> EbpfLoader<'a> {
    // aya-log's level is a read-only global: at 0 the verifier sees every log statement as
    // dead code and drops it.
    let level: &'static u8 = if options.bpf_log { &LOG_LEVEL_DEBUG } else { &0 };
    // The programs need no CO-RE relocation: the kernel's BTF (megabytes) is never read.
    let mut loader = EbpfLoader::without_kernel_btf();
    loader.override_global(aya_log::LEVEL, level, true);
    if !options.bpf_log {
        // aya-log's ring buffer (128 KiB) exists whether or not anything logs; with logging
        // off nothing is ever written to it, and one page is the smallest a ring buffer can be.
        loader.map_max_entries(AYA_LOG_RING, QUIET_LOG_RING_BYTES);
    }
    loader.map_pin_path(AYA_LOG_RING, dir.join(AYA_LOG_RING));
    for name in HOST_MAP_NAMES {
        loader.map_pin_path(name, dir.join(name));
    }
    loader
}

/// Loads the task's own programs (`sockops`, `sk_lookup`) for the task in `slot`: the host's
/// maps are the ones pinned in `programs`, the task's own (`HANDOFF`, `PROXY_LISTENERS`,
/// `COUNTERS`) are made new and pinned in `dir`. The returned object holds the programs until
/// they are linked.
pub(super) fn load_task_programs(
    programs: &HostPrograms,
    slot: u32,
    options: ApplyOptions,
    dir: &Path,
) -> Result<Ebpf, Error> {
    let mut loader = loader(options, &programs.dir);
    loader.override_global(TASK_SLOT_GLOBAL, &slot, true);
    let mut ebpf = loader.load(object()).map_err(load_error)?;
    load_programs(&mut ebpf, &Program::PER_TASK)?;
    for name in TASK_PROGRAM_MAP_NAMES {
        let path = dir.join(name);
        let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
        map.pin(&path).map_err(|e| Error::Pin { path, source: Box::new(e) })?;
    }
    Ok(ebpf)
}

/// Creates the agent's records of a task (`VERSION`, `TASK`, and `RECORD` with `record_pages`
/// pages) and pins each in `dir`.
pub(super) fn create_task_maps(dir: &Path, record_pages: u32) -> Result<BTreeMap<&'static str, Map>, Error> {
    let mut maps = BTreeMap::new();
    for (name, value_size, max_entries) in [
        (VERSION_MAP, size_of::<Version>() as u32, 1),
        (TASK_MAP, size_of::<TaskRef>() as u32, 1),
        (RECORD_MAP, RECORD_PAGE, record_pages.max(1)),
    ] {
        maps.insert(name, create_array(name, value_size, max_entries, &dir.join(name))?);
    }
    Ok(maps)
}

/// Creates a task's `RECORD` of `pages` pages, pinned at `path`.
pub(super) fn create_record(path: &Path, pages: u32) -> Result<Map, Error> {
    create_array(RECORD_MAP, RECORD_PAGE, pages.max(1), path)
}

/// Creates an array the agent alone uses, pinned at `path`.
fn create_array(name: &'static str, value_size: u32, max_entries: u32, path: &Path) -> Result<Map, Error> {
    use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
    let spec = host::MapSpec { name, map_type: BPF_MAP_TYPE_ARRAY, key_size: 4, value_size, max_entries, flags: 0 };
    let fd = host::map_create(&spec).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            return memlock_or_cap();
        }
        Error::io("create the map", name, e)
    })?;
    host::obj_pin(fd.as_fd(), path).map_err(|e| Error::io("pin", path, e))?;
    let data = MapData::from_fd(fd).map_err(super::maps::map_error(name))?;
    Map::from_map_data(data).map_err(super::maps::map_error(name))
}

/// The error for maps refused with EPERM: the memlock limit on kernels that charge it, the
/// capability otherwise.
fn memlock_or_cap() -> Error {
    match memlock_limit() {
        Some(limit) => Error::Memlock { limit },
        None => Error::MissingCapability { capability: "CAP_BPF", needed_for: "creating eBPF maps" },
    }
}

/// Attaches the host's programs and the task's own (`own`) to the target's cgroup, and the
/// `sk_lookup` program to its network namespace, and pins the links in `staging`: every program is linked before any
/// link is pinned, so that a failure leaves nothing attached. Until the links are pinned they
/// live only in this process, and detach if it fails or dies; once pinned in `staging`,
/// `status` reports them and the next `apply` or `remove` unpins them.
pub(super) fn attach_and_pin(
    target: &Target,
    netns: BorrowedFd<'_>,
    programs: &HostPrograms,
    own: &Ebpf,
    staging: &Path,
) -> Result<(), Error> {
    let cgroup = cgroup::open(&target.cgroup)?;
    let program_fd = |program: Program| {
        if Program::PER_TASK.contains(&program) { program_fd(own, program) } else { programs.fd(program) }
    };
    link_and_pin(cgroup.as_fd(), netns, program_fd, staging)
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

/// aya-log-common's Level: Error = 1, Warn, Info, Debug, Trace.
const LOG_LEVEL_DEBUG: u8 = 4;

fn load_error(e: EbpfError) -> Error {
    if let EbpfError::MapError(MapError::CreateError { io_error, .. }) = &e
        && io_error.raw_os_error() == Some(libc::EPERM)
    {
        return memlock_or_cap();
    }
    Error::Load(Box::new(e))
}

/// RLIMIT_MEMLOCK in bytes, when it is limited: what refuses maps on kernels that charge
/// eBPF memory to it (before 5.11).
fn memlock_limit() -> Option<u64> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    getrlimit(Resource::RLIMIT_MEMLOCK).ok().map(|(soft, _)| soft).filter(|&soft| soft != RLIM_INFINITY)
}

/// Loads (verifies) the programs `which`. The verifier is most of an apply's time; it runs in the
/// thread that loads, and the kernel verifies privileged loads side by side, so the programs
/// are shared out among as many threads as this process has CPUs to run on (its affinity and
/// its cgroup's CPU quota; one thread where it has one). The first failure in
/// [`Program::ALL`]'s order is the one reported, whatever the threads' timing.
fn load_programs(ebpf: &mut Ebpf, which: &[Program]) -> Result<(), Error> {
    let mut by_name: BTreeMap<&str, &mut aya::programs::Program> = ebpf.programs_mut().collect();
    // Largest first (by their verification time, measured on 6.18), so that no thread is
    // left with a long one at the end.
    let mut queue = Vec::with_capacity(which.len());
    for program in Program::BY_LOAD_TIME.into_iter().filter(|p| which.contains(p)) {
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
