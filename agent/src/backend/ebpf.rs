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
mod sys;
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
use intercept_common::{
    APP_PORTS_MAP, CARRIED_MAP_NAMES, IGNORED_IDS_MAP, IGNORED_NETS_V4_MAP, IGNORED_NETS_V6_MAP, IGNORED_PORTS_MAP,
    INCLUDED_NETS_V4_MAP, INCLUDED_NETS_V6_MAP, LAYOUT, LAYOUT_1_PAIRING_PINS, LEGACY_DNS_MAP, LEGACY_NEW_CAPACITY,
    LEGACY_ORIG_MAP, LEGACY_PENDING_MAP, VERSION_MAP, Version,
};

pub use adopt::Adopted;
use adopt::adopt_into;
pub use host::{attached_programs, is_bpffs};
pub use intercept_common::{Counter, MAP_NAMES};
pub use logs::{Logs, Printer};
pub use maps::{Changes, Contents, Generations};
pub use program::Program;
pub use status::{ProgramStatus, Status, status};

use crate::cgroup;
use crate::lock::{self, Held, Locks};
use crate::plan::ebpf::EbpfPlan;
use crate::privileges;

/// aya-log's ring buffer in the object, and its size when the programs do not log.
const AYA_LOG_RING: &str = "AYA_LOGS";
const QUIET_LOG_RING_BYTES: u32 = 4096;

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
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
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
        "the installation in {} was made by {installed} (map layout {installed_layout}), and this build, {ours}, \
         knows map layouts up to {ours_layout}: nothing was changed. Use that build or a newer one, or run \
         `intercept remove` with it and apply again with this one",
        dir.display()
    )]
    NewerLayout { dir: PathBuf, installed: String, installed_layout: u32, ours: String, ours_layout: u32 },
    #[error(
        "the installation in {} has map layout {installed_layout}, made by a build before intercept recorded \
         versions; this build ({ours}) reads only its own layout: `intercept apply` with it upgrades the \
         installation in place",
        dir.display()
    )]
    OlderLayout { dir: PathBuf, installed_layout: u32, ours: String },
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
        let cgroup = cgroup::resolve(cgroup)?;
        let cgroup_id = cgroup::id(&cgroup)?;
        Ok(Target { cgroup, cgroup_id, bpffs: bpffs.unwrap_or(Path::new(DEFAULT_BPFFS)).to_owned() })
    }

    /// `<bpffs>/intercept/<cgroup id>`.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(PIN_ROOT).join(self.cgroup_id.to_string())
    }

    /// The build and map layout of the installation, `None` when there is none. A layout
    /// newer than this build's is an error that names both.
    pub fn installed_version(&self) -> Result<Option<Version>, Error> {
        self.installation()?.map(|dir| installed_version(&dir)).transpose()
    }

    /// The pin directory when an installation is there: a bpffs at `bpffs` holding it.
    fn installation(&self) -> Result<Option<PathBuf>, Error> {
        let bpffs = match fs::canonicalize(&self.bpffs) {
            Ok(path) => path,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("resolve", &self.bpffs, e)),
        };
        let dir = self.pin_dir();
        Ok((host::is_bpffs(&bpffs)? && dir.exists()).then_some(dir))
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
        self.leftovers("staging-")
    }

    /// The directories `<bpffs>/intercept/<prefix><cgroup id>-<pid>` of this cgroup.
    fn leftovers(&self, prefix: &str) -> Vec<PathBuf> {
        let prefix = format!("{prefix}{}-", self.cgroup_id);
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
    /// The cgroup was set up by another build (or its configuration outgrew the maps): its
    /// programs were replaced in place by this build's, with new configuration maps and the
    /// live state carried over. `from_layout` is the map layout the installation had.
    Replaced { from_layout: u32 },
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
    /// With [`Outcome::Replaced`]: the build whose programs were replaced.
    pub replaced: Option<String>,
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
    recover(target)?;
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
    let root = target.bpffs.join(PIN_ROOT);
    fs::create_dir_all(&root).map_err(|e| Error::io("create", &root, e))?;
    // A killed apply's staging pins may hold links that still intercept: they go first.
    for stale in target.stale_staging() {
        unpin_dir(&stale)?;
    }
    let staging = root.join(format!("staging-{}-{}", target.cgroup_id, std::process::id()));
    fs::create_dir(&staging).map_err(|e| Error::io("create", &staging, e))?;
    let staged = (|| {
        // Every map is new, pinned in the staging directory as it is created.
        let pins = MAP_NAMES.iter().map(|&name| (name, staging.join(name))).collect();
        let (ebpf, mut maps, logs) = load(plan, options, &pins, &[])?;
        maps::install(desired, 0, &mut maps)?;
        maps::write_version(&mut maps, build())?;
        let adopted = ingress_port(plan).map(|port| adopt_into(&staging, &target.cgroup, port)).transpose()?;
        attach_and_pin(target, netns, &ebpf, &staging)?;
        fs::rename(&staging, dir).map_err(|e| Error::io("move the pins into place at", dir, e))?;
        Ok((adopted, logs))
    })();
    match staged {
        Ok((adopted, logs)) => {
            Ok(Applied { outcome: Outcome::Installed, pin_dir: dir.to_owned(), logs, adopted, replaced: None })
        }
        Err(e) => {
            // Unpinned, the links detach: nothing stays attached.
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// The build of this binary as an installation records it: the package version and a hash of
/// the embedded eBPF object, so that two builds with different programs never look alike.
pub fn build() -> Version {
    let text = format!("intercept {} (object {})", env!("CARGO_PKG_VERSION"), env!("INTERCEPT_EBPF_OBJECT_HASH"));
    let mut build = [0u8; 60];
    let len = text.len().min(build.len());
    build[..len].copy_from_slice(&text.as_bytes()[..len]);
    Version { layout: LAYOUT, build }
}

/// What [`load`] returns: the object with its programs loaded, its maps, and with
/// [`ApplyOptions::bpf_log`] the reader of their events.
type Loaded = (Ebpf, BTreeMap<&'static str, Map>, Option<Logs>);

/// Loads the object: every map opened from, or created and pinned at, its path in `pins` (a
/// map pinned there already is reused, whatever its capacity), the configuration maps sized
/// to the plan, the `LEGACY_*` maps created with one entry unless reused, and every program
/// loaded (verified) but not attached. `carried` names the maps that are reused.
fn load(
    plan: &EbpfPlan,
    options: ApplyOptions,
    pins: &BTreeMap<&'static str, PathBuf>,
    carried: &[&'static str],
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
    for program in Program::ALL {
        load_program(&mut ebpf, program)?;
    }
    let mut maps = BTreeMap::new();
    for name in MAP_NAMES {
        maps.insert(name, ebpf.take_map(name).ok_or(Error::MissingMap(name))?);
    }
    Ok((ebpf, maps, logs))
}

/// Attaches the programs and pins their links in `staging`. Until the links are pinned they
/// live only in this process, and detach if it fails or dies; once pinned in `staging`,
/// `status` reports them and the next `apply` or `remove` unpins them.
fn attach_and_pin(target: &Target, netns: BorrowedFd<'_>, ebpf: &Ebpf, staging: &Path) -> Result<(), Error> {
    let cgroup = cgroup::open(&target.cgroup)?;
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
    Ok(())
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
    let installed = installed_version(dir)?;
    if installed.layout != LAYOUT {
        return replace(target, dir, plan, desired, options, &installed);
    }
    let mut maps = open_pinned_maps(dir)?;
    // A build with other programs replaces them; so does a configuration the maps have no
    // room for (new maps need programs that use them).
    if installed.build != build().build || !fits(&maps, plan, desired)? {
        drop(maps);
        return replace(target, dir, plan, desired, options, &installed);
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
    Ok(Applied { outcome, pin_dir: dir.to_owned(), logs, adopted, replaced: None })
}

/// The build and layout that made the installation in `dir`: its `VERSION` map, or layout 1
/// for one made before builds recorded it (recognised by its `ORIG_DST` pin). A layout newer
/// than this build's is refused here, before anything changes.
pub(crate) fn installed_version(dir: &Path) -> Result<Version, Error> {
    let path = dir.join(VERSION_MAP);
    if !path.exists() {
        if dir.join(LAYOUT_1_PAIRING_PINS[1].1).exists() {
            let mut build = [0u8; 60];
            let text = b"a build before intercept recorded versions";
            build[..text.len()].copy_from_slice(text);
            return Ok(Version { layout: 1, build });
        }
        return Err(Error::Incomplete { dir: dir.to_owned(), missing: VERSION_MAP.to_owned() });
    }
    let data = MapData::from_pin(&path).map_err(maps::map_error(VERSION_MAP))?;
    let map = Map::from_map_data(data).map_err(maps::map_error(VERSION_MAP))?;
    let version = maps::read_version(&BTreeMap::from([(VERSION_MAP, map)]))?;
    if version.layout > LAYOUT || version.layout == 0 {
        return Err(Error::NewerLayout {
            dir: dir.to_owned(),
            installed: version.build_str().to_owned(),
            installed_layout: version.layout,
            ours: build().build_str().to_owned(),
            ours_layout: LAYOUT,
        });
    }
    Ok(version)
}

/// Whether the configuration maps have room for `desired` in their inactive generation.
fn fits(maps: &BTreeMap<&'static str, Map>, plan: &EbpfPlan, desired: &Contents) -> Result<bool, Error> {
    for spec in plan.map_specs() {
        let needed = match spec.name {
            IGNORED_NETS_V4_MAP => desired.ignored_nets_v4.len(),
            IGNORED_NETS_V6_MAP => desired.ignored_nets_v6.len(),
            INCLUDED_NETS_V4_MAP => desired.included_nets_v4.len(),
            INCLUDED_NETS_V6_MAP => desired.included_nets_v6.len(),
            IGNORED_PORTS_MAP => desired.ignored_ports.len(),
            APP_PORTS_MAP => desired.app_ports.len(),
            IGNORED_IDS_MAP => desired.ignored_ids.len(),
            _ => continue,
        };
        // Each generation gets its share: the old one stays whole until the new one is active.
        if needed > maps::capacity(maps, spec.name)? as usize {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The order the programs of a live installation are replaced in: those that read what a
/// connection left behind before those that leave it, so that every record is read by a
/// program that knows the map it is in (the new programs read layout 1's maps too; the old
/// ones know nothing of the new maps).
const REPLACE_ORDER: [Program; 9] = [
    Program::Getsockopt,
    Program::Sockops,
    Program::Recvmsg4,
    Program::Recvmsg6,
    Program::Connect4,
    Program::Connect6,
    Program::Sendmsg4,
    Program::Sendmsg6,
    Program::SkLookup,
];

/// Directory name prefixes of a replacement's new pins, and of the old ones moved aside.
const REPLACING: &str = "replacing-";
const RETIRED: &str = "retired-";

/// Replaces the programs of the installation in `dir` with this build's, with no window: new
/// configuration maps are made and filled, the maps holding live state (sockets, hand-offs,
/// listeners, counters; layout 1's pairing maps as the `LEGACY_*` ones) are carried over, and
/// each pinned link is switched to its new program (`BPF_LINK_UPDATE`). The new pins are
/// staged in `replacing-<cgroup id>-<pid>` and swapped in with two renames; [`recover`]
/// finishes a swap a killed apply left halfway.
fn replace(
    target: &Target,
    dir: &Path,
    plan: &EbpfPlan,
    desired: &Contents,
    options: ApplyOptions,
    installed: &Version,
) -> Result<Applied, Error> {
    let root = target.bpffs.join(PIN_ROOT);
    let staging = root.join(format!("{REPLACING}{}-{}", target.cgroup_id, std::process::id()));
    fs::create_dir(&staging).map_err(|e| Error::io("create", &staging, e))?;
    let result = replace_into(target, dir, &staging, plan, desired, options, installed);
    if result.is_err() {
        // Its links are the installation's, still pinned in `dir`: removing these pins
        // detaches nothing.
        let _ = fs::remove_dir_all(&staging);
    }
    let (adopted, logs) = result?;
    let retired = root.join(format!("{RETIRED}{}-{}", target.cgroup_id, std::process::id()));
    fs::rename(dir, &retired).map_err(|e| Error::io("move aside", dir, e))?;
    fs::rename(&staging, dir).map_err(|e| Error::io("move the pins into place at", dir, e))?;
    fs::remove_dir_all(&retired).map_err(|e| Error::io("remove", &retired, e))?;
    Ok(Applied {
        outcome: Outcome::Replaced { from_layout: installed.layout },
        pin_dir: dir.to_owned(),
        logs,
        adopted,
        replaced: Some(installed.build_str().to_owned()),
    })
}

fn replace_into(
    target: &Target,
    dir: &Path,
    staging: &Path,
    plan: &EbpfPlan,
    desired: &Contents,
    options: ApplyOptions,
    installed: &Version,
) -> Result<(Option<Adopted>, Option<Logs>), Error> {
    let links = open_pinned_links(dir)?;
    let mut pins = BTreeMap::new();
    let mut carried = Vec::new();
    for name in MAP_NAMES {
        let old = if installed.layout == 1 {
            LAYOUT_1_PAIRING_PINS.iter().find(|(new, _)| *new == name).map_or(name, |(_, old)| old)
        } else {
            name
        };
        let old = dir.join(old);
        if CARRIED_MAP_NAMES.contains(&name) && old.exists() {
            pins.insert(name, old);
            carried.push(name);
        } else {
            pins.insert(name, staging.join(name));
        }
    }
    let (ebpf, mut maps, logs) = load(plan, options, &pins, &carried)?;
    maps::install(desired, 0, &mut maps)?;
    maps::write_version(&mut maps, build())?;
    for name in &carried {
        let path = staging.join(name);
        maps[name].pin(&path).map_err(|e| Error::Pin { path, source: Box::new(e) })?;
    }
    let adopted = ingress_port(plan).map(|port| adopt_into(staging, &target.cgroup, port)).transpose()?;
    if installed.layout == LAYOUT {
        // Should this apply die between the first switch and the swap, the old pins say no
        // build made them, and the next apply replaces the programs again.
        let mut old = open_pinned_maps(dir)?;
        maps::write_version(&mut old, Version { layout: LAYOUT, build: [0; 60] })?;
    }
    // (link, the program it ran, the program it runs now), for a way back.
    let mut switched: Vec<(OwnedFd, OwnedFd, &'static str)> = Vec::new();
    let mut failure = None;
    for program in REPLACE_ORDER {
        match switch_link(dir, staging, &links, &ebpf, program) {
            Ok(done) => switched.push(done),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        // Back to the programs that ran before: the installation is as it was.
        for (link, old, name) in switched.iter().rev() {
            if let Some(Ok(new)) = ebpf.program(name).map(|p| p.fd()) {
                let _ = host::link_update(link.as_fd(), old.as_fd(), new.as_fd());
            }
        }
        return Err(e);
    }
    Ok((adopted, logs))
}

/// Switches the link of `program` pinned in `dir` to this build's program, and pins it in
/// `staging` too.
fn switch_link(
    dir: &Path,
    staging: &Path,
    links: &[(Program, aya::programs::links::LinkInfo)],
    ebpf: &Ebpf,
    program: Program,
) -> Result<(OwnedFd, OwnedFd, &'static str), Error> {
    let path = dir.join(program.link_pin());
    let (_, info) = links
        .iter()
        .find(|(p, _)| *p == program)
        .ok_or_else(|| Error::Incomplete { dir: dir.to_owned(), missing: program.link_pin() })?;
    let link = host::obj_get(&path).map_err(|e| Error::io("open the link pinned at", &path, e))?;
    let old = host::prog_fd_by_id(info.program_id())
        .map_err(|e| Error::io("open the program of the link pinned at", &path, e))?;
    let new = ebpf.program(program.name()).ok_or(Error::MissingProgram(program.name()))?;
    let new = new.fd().map_err(|e| program_error(program.name(), e))?;
    host::link_update(link.as_fd(), new.as_fd(), old.as_fd())
        .map_err(|e| Error::io("switch to the new program the link pinned at", &path, e))?;
    let pin = staging.join(program.link_pin());
    host::obj_pin(link.as_fd(), &pin).map_err(|e| Error::io("pin", &pin, e))?;
    Ok((link, old, program.name()))
}

/// Finishes or undoes what a killed replacement left (under the locks, so no live apply owns
/// it): new pins complete but not yet in place become the installation; otherwise the old
/// pins stay, and the leftovers go. Their links are the installation's own, so removing them
/// detaches nothing.
fn recover(target: &Target) -> Result<(), Error> {
    let dir = target.pin_dir();
    for prefix in [REPLACING, RETIRED] {
        for leftover in target.leftovers(prefix) {
            let complete = Program::ALL.iter().all(|p| leftover.join(p.link_pin()).exists())
                && MAP_NAMES.iter().all(|m| leftover.join(m).exists());
            if !dir.exists() && (prefix == RETIRED || complete) {
                fs::rename(&leftover, &dir).map_err(|e| Error::io("move the pins into place at", &dir, e))?;
            } else {
                fs::remove_dir_all(&leftover).map_err(|e| Error::io("remove", &leftover, e))?;
            }
        }
    }
    Ok(())
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
    recover(target)?;
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

/// Removes the installations under `bpffs` whose cgroup no longer exists: their first cgroup
/// link reports no cgroup (the kernel detaches all of a cgroup's links when the cgroup is
/// removed), so their pins only keep maps alive (their lock files go too). Returns the cgroup ids whose
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
        // A cgroup's links are all detached when it goes: one tells for all (this runs at every
        // apply, over every installation on the host).
        let link = dir.join(Program::CGROUP[0].link_pin());
        let orphaned = host::obj_get(&link).and_then(|link| host::link_cgroup_id(link.as_fd())).ok() == Some(0);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A map the programs define but no list names would be neither pinned nor carried over
    /// by an upgrade; a name in both lists would be rebuilt and carried at once.
    #[test]
    fn the_object_defines_exactly_the_named_maps_each_named_once() {
        let object = aya_obj::Object::parse(object()).expect("the embedded eBPF object parses");
        // Data sections (`.rodata`, …) and aya-log's ring buffer are loaded by aya, never
        // pinned by name.
        let defined: BTreeSet<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|name| !name.starts_with('.') && *name != "AYA_LOGS")
            .collect();
        let named: BTreeSet<&str> = MAP_NAMES.into_iter().collect();
        assert_eq!(named.len(), MAP_NAMES.len(), "a map is named twice: {MAP_NAMES:?}");
        assert_eq!(defined, named);
    }
}
