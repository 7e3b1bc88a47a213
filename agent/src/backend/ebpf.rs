//! The eBPF backend: the object built from `ebpf/` (embedded at compile time by `build.rs`)
//! and the code that installs it on a cgroup, updates it, reports on it and removes it.
//!
//! An installation is a directory `<bpffs>/intercept/<cgroup id>/` holding a pin for each
//! program's link (`link-<program>`: the cgroup programs' links to the task's cgroup, the
//! `sk_lookup` program's to the task's network namespace) and for each map (by map name). The
//! pins keep everything alive after the agent exits (the init-container mode); unpinning the
//! links detaches the programs, and the kernel frees programs and maps with their last
//! reference.
//!
//! - [`apply`] loads the object, fills every map and loads every program before attaching
//!   anything; the pins are made in a staging directory renamed into place at the end, so a
//!   failure at any step leaves nothing attached or pinned. Applying to an installed cgroup
//!   updates the pinned maps in place (programs stay attached throughout): the new
//!   configuration goes into the maps' inactive generation, then one update of `ACTIVE`
//!   switches every program to it (see [`maps::Generations::switch_to`]).
//! - [`remove`] deletes the directory: links, maps, and with them the programs, go.
//! - [`status`] reads the pinned state: programs, maps, counters.

mod adopt;
mod host;
mod logs;
mod maps;
mod program;
mod status;
pub mod task;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Map, MapData, MapError};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{CgroupSockAddr, CgroupSockopt, ProgramError, SkLookup, SockOps};
use aya::{Ebpf, EbpfError, EbpfLoader};
use aya_log::EbpfLogger;
use intercept_common::{IGNORED_NETS_V4_MAP, IGNORED_NETS_V6_MAP, INCLUDED_NETS_V4_MAP, INCLUDED_NETS_V6_MAP};

pub use adopt::Adopted;
use adopt::adopt_into;
pub use host::{
    Mount, attached_programs, cgroup_id, cgroup2_mount, cgroup2_path, is_bpffs, join_cgroup, parse_mountinfo,
};
pub use intercept_common::{Counter, MAP_NAMES};
pub use logs::{Logs, Printer};
pub use maps::{Changes, Contents, Generations};
pub use program::Program;
pub use status::{ProgramStatus, Status, status};

use crate::lock::{self, Held, Locks};
use crate::plan::ebpf::EbpfPlan;
use crate::privileges;

/// Where bpffs is conventionally mounted; `--bpffs` chooses another place.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// The directory under the bpffs that holds one directory per intercepted cgroup.
pub const PIN_ROOT: &str = "intercept";

/// The eBPF object (ELF, bpfel) built from `ebpf/`, 8-byte aligned as aya requires.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/intercept"))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Bpffs { path: PathBuf, reason: &'static str },
    #[error(
        "no cgroup2 file system is mounted here (looked in /proc/self/mountinfo): in a container, mount the \
         host's cgroup hierarchy into it (`-v /sys/fs/cgroup:/sys/fs/cgroup`; in ECS a host volume of \
         /sys/fs/cgroup)"
    )]
    NoCgroup2,
    #[error("--cgroup auto: {reason}")]
    CgroupAuto { reason: String },
    #[error("{} is not a cgroup under the cgroup2 mount {}", path.display(), mount.display())]
    NotACgroup { path: PathBuf, mount: PathBuf },
    #[error(
        "{} is the root of the cgroup2 hierarchy: every process of the host would be intercepted; \
         name the task's cgroup",
        .0.display()
    )]
    RootCgroup(PathBuf),
    #[error("missing capability {capability}: it is needed for {needed_for}")]
    MissingCapability { capability: &'static str, needed_for: &'static str },
    #[error(
        "creating eBPF maps was refused, and RLIMIT_MEMLOCK is {limit} bytes: kernels before 5.11 charge eBPF \
         memory to it; run intercept with CAP_SYS_RESOURCE (it lifts the limit at start) or `ulimit -l unlimited`"
    )]
    Memlock { limit: u64 },
    #[error(transparent)]
    Capabilities(Box<privileges::Error>),
    #[error("{count} addresses for {map}, which holds at most {capacity}")]
    TooManyLocalAddresses { map: &'static str, count: usize, capacity: u32 },
    #[error("{count} IgnoredUIDs and IgnoredGIDs, and the eBPF backend holds at most {capacity}")]
    TooManyIgnoredIds { count: usize, capacity: u32 },
    #[error(
        "{map} holds at most {capacity} entries per generation (fixed when the cgroup was first set up) and the new \
         configuration needs {needed}; run `intercept remove` and apply again"
    )]
    CapacityExceeded { map: &'static str, capacity: u32, needed: usize },
    #[error(
        "the installation in {} is incomplete ({missing} is missing); run `intercept remove` for this \
         cgroup and apply again",
        dir.display()
    )]
    Incomplete { dir: PathBuf, missing: String },
    #[error("loading the embedded eBPF object")]
    Load(#[source] Box<EbpfError>),
    #[error("the embedded eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the embedded eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("eBPF program `{program}`")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("link of eBPF program `{program}`")]
    Link {
        program: &'static str,
        #[source]
        source: Box<LinkError>,
    },
    #[error("attaching eBPF program `{program}` (to the cgroup, or for sk_lookup to the network namespace)")]
    Attach {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("pinning {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("eBPF program `{program}` is still attached to the cgroup 5 s after its link was unpinned")]
    StillAttached { program: &'static str },
    #[error("reading the eBPF programs' log")]
    Log(#[source] Box<aya_log::Error>),
    #[error(transparent)]
    Lock(#[from] lock::Error),
}

impl Error {
    fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io { op, path: path.as_ref().to_owned(), source }
    }
}

/// One cgroup to intercept and where its pins live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub bpffs: PathBuf,
}

impl Target {
    /// Resolves `--cgroup` (a path, or `auto`) and `--bpffs` (default [`DEFAULT_BPFFS`]).
    pub fn new(cgroup: &str, bpffs: Option<&Path>) -> Result<Target, Error> {
        let cgroup = host::resolve_cgroup(cgroup)?;
        let cgroup_id = host::cgroup_id(&cgroup)?;
        Ok(Target { cgroup, cgroup_id, bpffs: bpffs.unwrap_or(Path::new(DEFAULT_BPFFS)).to_owned() })
    }

    /// `<bpffs>/intercept/<cgroup id>`.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(PIN_ROOT).join(self.cgroup_id.to_string())
    }

    /// Waits for any other `apply` or `remove` on this cgroup to finish, and keeps them out
    /// until dropped (see [`crate::lock`]). Taken before the bpffs lock, which stays: it
    /// guards the pin directories that several cgroups share.
    fn lock(&self) -> Result<Held, Error> {
        let key = lock::Key::cgroup(self.cgroup_id, format!("cgroup {}", self.cgroup.display()));
        Ok(Locks::system().acquire(&key, lock::WAIT)?)
    }

    /// Staging directories an `apply` killed before it moved its pins into place left
    /// behind (`<bpffs>/intercept/staging-<cgroup id>-<pid>`). Under the locks, no live
    /// `apply` has one for this cgroup.
    pub fn stale_staging(&self) -> Vec<PathBuf> {
        let prefix = format!("staging-{}-", self.cgroup_id);
        let Ok(entries) = fs::read_dir(self.bpffs.join(PIN_ROOT)) else { return Vec::new() };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    }
}

/// Removes a directory of pins: the `sk_lookup` link detached first (the kernel would release
/// it only later, from a work queue, once unpinned), then every pin.
fn unpin_dir(dir: &Path) -> Result<(), Error> {
    let path = dir.join(Program::SkLookup.link_pin());
    if let Ok(link) = host::obj_get(&path) {
        host::link_detach(link.as_fd()).map_err(|e| Error::io("detach the link pinned at", &path, e))?;
    }
    fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOptions {
    /// Load the programs with their debug events switched on, and return a reader for them.
    /// Fixed when a cgroup is first set up: a re-apply only updates maps.
    pub bpf_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was installed for the cgroup; now everything is.
    Installed,
    /// The cgroup was set up already; its maps were updated in place.
    Updated(Changes),
    /// The cgroup was set up already with exactly this configuration.
    Unchanged,
}

/// The result of [`apply`].
pub struct Applied {
    pub outcome: Outcome,
    pub pin_dir: PathBuf,
    /// With [`ApplyOptions::bpf_log`]: reads the programs' events. Keep it alive while reading:
    /// dropping it closes its ring buffer.
    pub logs: Option<Logs>,
    /// With ingress: the proxy's listeners put into `PROXY_LISTENERS` (see
    /// [`adopt_into`]), before the configuration that steers inbound connections to them
    /// took effect.
    pub adopted: Option<Adopted>,
}

/// ProxyIngressPort, when the plan has ingress.
fn ingress_port(plan: &EbpfPlan) -> Option<u16> {
    Some(plan.config.proxy_ingress_port).filter(|&port| port != 0)
}

/// Whether this process holds [`crate::privileges::EBPF`]: `apply` checks it first, and
/// `--backend auto` asks it before choosing eBPF. CAP_SYS_ADMIN is needed in addition only
/// when `apply` has to mount the bpffs.
pub(crate) fn check_capabilities() -> Result<(), Error> {
    let held = privileges::effective().map_err(|e| Error::Capabilities(Box::new(e)))?;
    match privileges::missing(&privileges::EBPF, &held).first() {
        Some(r) => {
            Err(Error::MissingCapability { capability: capability_name(r.capability), needed_for: r.needed_for })
        }
        None => Ok(()),
    }
}

fn capability_name(capability: caps::Capability) -> &'static str {
    match capability {
        caps::Capability::CAP_BPF => "CAP_BPF",
        caps::Capability::CAP_PERFMON => "CAP_PERFMON",
        caps::Capability::CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        _ => "CAP_NET_ADMIN",
    }
}

/// Installs `plan` on the target's cgroup, or brings an installation up to date in place.
/// `local_addrs` are the task's own addresses (see [`local_addresses`]); `netns` is the task's
/// network namespace, where the `sk_lookup` program attaches when the cgroup is first set up.
pub fn apply(
    target: &Target,
    plan: &EbpfPlan,
    local_addrs: &[IpAddr],
    netns: BorrowedFd<'_>,
    options: ApplyOptions,
) -> Result<Applied, Error> {
    check_capabilities()?;
    let desired = Contents::desired(plan, local_addrs)?;
    let held = target.lock()?;
    host::ensure_bpffs(&target.bpffs)?;
    let lock = host::lock_bpffs(&target.bpffs)?;
    let dir = target.pin_dir();
    let applied = if dir.exists() {
        update(target, &dir, plan, &desired, options)
    } else {
        install(target, netns, &dir, plan, &desired, options)
    }?;
    drop(lock);
    // Whole: the lock file is only needed while a change runs.
    held.release()?;
    Ok(applied)
}

fn install(
    target: &Target,
    netns: BorrowedFd<'_>,
    dir: &Path,
    plan: &EbpfPlan,
    desired: &Contents,
    options: ApplyOptions,
) -> Result<Applied, Error> {
    // aya-log's level is a read-only global: at 0 the verifier sees every log statement as
    // dead code and drops it.
    let level: u8 = if options.bpf_log { aya_log_common_level_debug() } else { 0 };
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &level, true);
    for spec in plan.map_specs() {
        if [IGNORED_NETS_V4_MAP, IGNORED_NETS_V6_MAP, INCLUDED_NETS_V4_MAP, INCLUDED_NETS_V6_MAP].contains(&spec.name) {
            loader.map_max_entries(spec.name, spec.max_entries);
        }
    }
    let mut ebpf = loader.load(object()).map_err(load_error)?;
    let logs = if options.bpf_log {
        Some(Logs(EbpfLogger::init_with_logger(&mut ebpf, Printer).map_err(|e| Error::Log(Box::new(e)))?))
    } else {
        None
    };
    for program in Program::ALL {
        load_program(&mut ebpf, program)?;
    }
    let mut maps = BTreeMap::new();
    for name in MAP_NAMES {
        maps.insert(name, ebpf.take_map(name).ok_or(Error::MissingMap(name))?);
    }
    maps::install(desired, 0, &mut maps)?;

    let root = target.bpffs.join(PIN_ROOT);
    fs::create_dir_all(&root).map_err(|e| Error::io("create", &root, e))?;
    // A killed apply's staging pins may hold links that still intercept: they go first.
    for stale in target.stale_staging() {
        unpin_dir(&stale)?;
    }
    let staging = root.join(format!("staging-{}-{}", target.cgroup_id, std::process::id()));
    fs::create_dir(&staging).map_err(|e| Error::io("create", &staging, e))?;
    let staged = stage(target, netns, &ebpf, plan, &maps, &staging).and_then(|adopted| {
        fs::rename(&staging, dir).map_err(|e| Error::io("move the pins into place at", dir, e))?;
        Ok(adopted)
    });
    match staged {
        Ok(adopted) => Ok(Applied { outcome: Outcome::Installed, pin_dir: dir.to_owned(), logs, adopted }),
        Err(e) => {
            // Unpinned, the links detach: nothing stays attached.
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Pins the maps in `staging`, adopts the proxy's ingress listeners (the programs learn only
/// those that start listening later), then attaches the programs and pins their links. Until
/// the links are pinned they live only in this process, and detach if it fails or dies; once
/// pinned in `staging`, `status` reports them and the next `apply` or `remove` unpins them.
fn stage(
    target: &Target,
    netns: BorrowedFd<'_>,
    ebpf: &Ebpf,
    plan: &EbpfPlan,
    maps: &BTreeMap<&'static str, Map>,
    staging: &Path,
) -> Result<Option<Adopted>, Error> {
    for (name, map) in maps {
        let path = staging.join(name);
        map.pin(&path).map_err(|e| Error::Pin { path, source: Box::new(e) })?;
    }
    let adopted = ingress_port(plan).map(|port| adopt_into(staging, &target.cgroup, port)).transpose()?;
    let cgroup = fs::File::open(&target.cgroup).map_err(|e| Error::io("open cgroup", &target.cgroup, e))?;
    let mut links = Vec::new();
    for program in Program::ALL {
        let to = if program.on_netns() { netns } else { cgroup.as_fd() };
        links.push((program, attach(ebpf, program, to)?));
    }
    for (program, link) in links {
        let path = staging.join(program.link_pin());
        // Closing this process's fd afterwards leaves the link to the pin.
        host::obj_pin(link.as_fd(), &path).map_err(|e| Error::io("pin", &path, e))?;
    }
    Ok(adopted)
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

fn load_program(ebpf: &mut Ebpf, program: Program) -> Result<(), Error> {
    let name = program.name();
    let error = |source| program_error(name, source);
    let prog = ebpf.program_mut(name).ok_or(Error::MissingProgram(name))?;
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

fn attach(ebpf: &Ebpf, program: Program, to: BorrowedFd<'_>) -> Result<OwnedFd, Error> {
    let name = program.name();
    let error = |source| program_error(name, source);
    let prog = ebpf.program(name).ok_or(Error::MissingProgram(name))?;
    let prog_fd = prog.fd().map_err(error)?;
    host::link_create(prog_fd.as_fd(), to, program.attach_type()).map_err(|e| {
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

/// Opens every pinned map of an installation.
fn open_pinned_maps(dir: &Path) -> Result<BTreeMap<&'static str, Map>, Error> {
    let mut maps = BTreeMap::new();
    for name in MAP_NAMES {
        let path = dir.join(name);
        if !path.exists() {
            return Err(Error::Incomplete { dir: dir.to_owned(), missing: name.to_owned() });
        }
        let data = MapData::from_pin(&path).map_err(maps::map_error(name))?;
        maps.insert(name, Map::from_map_data(data).map_err(maps::map_error(name))?);
    }
    Ok(maps)
}

/// The pinned links, opened: proof the installation is whole, and the programs' ids.
fn open_pinned_links(dir: &Path) -> Result<Vec<(Program, aya::programs::links::LinkInfo)>, Error> {
    Program::ALL
        .iter()
        .map(|&program| {
            let path = dir.join(program.link_pin());
            if !path.exists() {
                return Err(Error::Incomplete { dir: dir.to_owned(), missing: program.link_pin() });
            }
            let link_error = |source| Error::Link { program: program.name(), source: Box::new(source) };
            let link = FdLink::from(PinnedLink::from_pin(&path).map_err(link_error)?);
            Ok((program, link.info().map_err(link_error)?))
        })
        .collect()
}

fn update(
    target: &Target,
    dir: &Path,
    plan: &EbpfPlan,
    desired: &Contents,
    options: ApplyOptions,
) -> Result<Applied, Error> {
    let links = open_pinned_links(dir)?;
    let mut maps = open_pinned_maps(dir)?;
    for spec in plan.map_specs() {
        let Some(map) = maps.get(spec.name) else { continue };
        let needed = match spec.name {
            IGNORED_NETS_V4_MAP => desired.ignored_nets_v4.len(),
            IGNORED_NETS_V6_MAP => desired.ignored_nets_v6.len(),
            INCLUDED_NETS_V4_MAP => desired.included_nets_v4.len(),
            INCLUDED_NETS_V6_MAP => desired.included_nets_v6.len(),
            _ => continue,
        };
        // Each generation gets half: the old one stays whole until the new one is active.
        let capacity = map_max_entries(map, spec.name)? / spec.generations;
        if needed > capacity as usize {
            return Err(Error::CapacityExceeded { map: spec.name, capacity, needed });
        }
    }
    // Before the switch, so that ingress is never steered to a listener not yet known (the
    // programs learn only those that start listening after they were attached).
    let adopted = ingress_port(plan).map(|port| adopt_into(dir, &target.cgroup, port)).transpose()?;
    let generations = Generations::read(&maps)?;
    let outcome = if generations.active() == desired {
        if !generations.inactive_is_empty() {
            generations.clear_inactive(&mut maps)?;
        }
        Outcome::Unchanged
    } else {
        Outcome::Updated(generations.switch_to(desired, &mut maps)?)
    };
    let logs = match (options.bpf_log, links.first()) {
        (true, Some((_, info))) => Some(Logs(
            EbpfLogger::init_from_id_with_logger(info.program_id(), Printer).map_err(|e| Error::Log(Box::new(e)))?,
        )),
        _ => None,
    };
    Ok(Applied { outcome, pin_dir: dir.to_owned(), logs, adopted })
}

fn map_max_entries(map: &Map, name: &'static str) -> Result<u32, Error> {
    let data: &MapData = match map {
        Map::LpmTrie(data) => data,
        _ => return Err(Error::MissingMap(name)),
    };
    Ok(data.info().map_err(maps::map_error(name))?.max_entries())
}

/// Removes the target cgroup's installation: the links (detaching the programs) and the maps.
/// Returns whether there was anything to remove; removing twice is not an error.
pub fn remove(target: &Target) -> Result<bool, Error> {
    let bpffs = match fs::canonicalize(&target.bpffs) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("resolve", &target.bpffs, e)),
    };
    if !host::is_bpffs(&bpffs)? {
        return Ok(false);
    }
    let held = target.lock()?;
    let _lock = host::lock_bpffs(&bpffs)?;
    let stale = target.stale_staging();
    for dir in &stale {
        unpin_dir(dir)?;
    }
    let dir = target.pin_dir();
    if !dir.exists() {
        let _ = fs::remove_dir(target.bpffs.join(PIN_ROOT));
        held.release()?;
        return Ok(!stale.is_empty());
    }
    // The programs' ids, to wait for their detachment below.
    let ids: Vec<(Program, u32)> = Program::ALL
        .iter()
        .filter_map(|&p| {
            let link = PinnedLink::from_pin(dir.join(p.link_pin())).ok()?;
            Some((p, FdLink::from(link).info().ok()?.program_id()))
        })
        .collect();
    // Links first: interception stops at once, and a failure later leaves only maps behind.
    // The namespace's link is detached explicitly (synchronously): the kernel would release
    // it only later, from a work queue, once unpinned.
    for program in Program::ALL {
        let path = dir.join(program.link_pin());
        if program.on_netns()
            && let Ok(link) = host::obj_get(&path)
        {
            host::link_detach(link.as_fd()).map_err(|e| Error::io("detach the link pinned at", &path, e))?;
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io("unpin", &path, e)),
            _ => {}
        }
    }
    fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
    // The shared parent goes when the last cgroup is removed; another cgroup's pins keep it.
    let _ = fs::remove_dir(target.bpffs.join(PIN_ROOT));
    // The kernel releases an unpinned link from a work queue: wait for it, so that `remove`
    // returning means the programs are gone from the cgroup.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (program, id) in ids.into_iter().filter(|(p, _)| !p.on_netns()) {
        while host::attached_programs(&target.cgroup, program.attach_type())?.contains(&id) {
            if std::time::Instant::now() > deadline {
                return Err(Error::StillAttached { program: program.name() });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    held.release()?;
    Ok(true)
}

/// Removes the pins of the installation of the cgroup `cgroup_id`, which its caller knows to
/// be gone (its path no longer exists; cgroup ids are never reused): the kernel detaches a
/// removed cgroup's programs only a moment later, from a work queue, so [`prune`] would not
/// take it yet. Returns whether there were pins.
pub fn remove_pins_of_removed_cgroup(bpffs: &Path, cgroup_id: u64) -> Result<bool, Error> {
    let dir = bpffs.join(PIN_ROOT).join(cgroup_id.to_string());
    if !dir.is_dir() {
        return Ok(false);
    }
    let _lock = host::lock_bpffs(bpffs)?;
    unpin_dir(&dir)?;
    Locks::system().forget(&lock::Key::cgroup(cgroup_id, format!("cgroup id {cgroup_id}")))?;
    let _ = fs::remove_dir(bpffs.join(PIN_ROOT));
    Ok(true)
}

/// Removes the installations under `bpffs` whose cgroup no longer exists: every one of their
/// links reports no cgroup (the kernel detaches a cgroup's links when the cgroup is removed),
/// so their pins only keep maps alive (their lock files go too). Returns the cgroup ids whose
/// pins were removed. An installation it cannot judge (a link pin missing or unreadable) is
/// left alone.
pub fn prune(bpffs: &Path) -> Result<Vec<u64>, Error> {
    let bpffs = match fs::canonicalize(bpffs) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("resolve", bpffs, e)),
    };
    if !host::is_bpffs(&bpffs)? {
        return Ok(Vec::new());
    }
    let _lock = host::lock_bpffs(&bpffs)?;
    let root = bpffs.join(PIN_ROOT);
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", &root, e)),
    };
    let mut pruned = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", &root, e))?;
        let Some(cgroup_id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        let dir = entry.path();
        let orphaned = Program::CGROUP.iter().all(|p| {
            host::obj_get(&dir.join(p.link_pin())).and_then(|link| host::link_cgroup_id(link.as_fd())).ok() == Some(0)
        });
        if orphaned {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
            Locks::system().forget(&lock::Key::cgroup(cgroup_id, format!("cgroup id {cgroup_id}")))?;
            pruned.push(cgroup_id);
        }
    }
    let _ = fs::remove_dir(&root);
    pruned.sort_unstable();
    Ok(pruned)
}

/// The addresses of the current network namespace's interfaces: the task's own addresses,
/// which count as local destinations.
pub fn local_addresses() -> Result<Vec<IpAddr>, Error> {
    let addrs =
        nix::ifaddrs::getifaddrs().map_err(|e| Error::io("list interface addresses of", "this netns", e.into()))?;
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}
