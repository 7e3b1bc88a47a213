//! The eBPF backend: the object built from `ebpf/` (embedded at compile time by `build.rs`)
//! and the code that installs it on a cgroup, updates it, reports on it and removes it.
//!
//! The programs that decide (`connect4/6`, `sendmsg4/6`, `recvmsg4/6`, `getsockopt`) are
//! loaded once per bpffs and build, and pinned with the host's maps in
//! `<bpffs>/intercept/programs-<layout>-<object hash>[-log]/`; every task's entries in those
//! maps are keyed by the task's slot (see `intercept-common`). An installation is a directory
//! `<bpffs>/intercept/<cgroup id>/` holding a pin for each of its links (`link-<program>`: to
//! the task's cgroup, and the `sk_lookup` program's to its network namespace), its own
//! programs' maps and the agent's records, and `programs`, a link to the host's programs it
//! uses. The pins keep everything alive after the agent exits (the init-container mode).
//!
//! - [`apply`] makes a complete installation in a staging directory, its links attached last,
//!   and renames it into place, so a failure at any step leaves nothing attached or pinned.
//!   Applying to an installed cgroup writes the new configuration into its inactive
//!   generation, then one update of `ACTIVE[slot]` switches its programs to it (see
//!   [`maps::Generations::switch_to`]); an installation of another build is replaced.
//! - [`remove`] detaches the links, deletes the task's entries and frees its slot, and removes
//!   the directory; the host's programs go with the last task.
//! - [`status`] reads the pinned state: programs, the configuration, counters.

mod adopt;
#[cfg(test)]
mod fake;
mod features;
mod host;
mod load;
mod logs;
mod maps;
mod pins;
mod program;
mod replace;
mod slots;
mod status;
mod sys;
pub mod task;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use aya::EbpfError;
use aya::maps::{Map, MapData, MapError};
use aya::programs::ProgramError;
use aya::programs::links::LinkError;
use aya_log::EbpfLogger;
use intercept_common::{LAYOUT, VERSION_MAP, Version};

pub use adopt::Adopted;
use adopt::adopt_into;
pub use host::{attached_programs, is_bpffs};
pub use intercept_common::{Counter, MAP_NAMES};
pub use load::PROGRAMS_DIR;
use load::{attach_and_pin, create_task_maps, host_programs, load_task_programs};
pub use logs::{Logs, Printer};
pub use maps::{Changes, Contents, Generations};
pub use pins::{Removed, prune, remove, remove_pins_of_removed_cgroup};
use pins::{open_pinned_links, open_pinned_maps, unpin_dir};
pub use program::Program;
use replace::recover;
pub use status::{ProgramStatus, Status, status};

use crate::cgroup;
use crate::lock::{self, Held, Locks};
use crate::plan::ebpf::EbpfPlan;
use crate::privileges;

/// aya-log's ring buffer in the object, and its size when the programs do not log. It is one
/// of the host's maps, pinned with the programs.
const AYA_LOG_RING: &str = "AYA_LOGS";
const QUIET_LOG_RING_BYTES: u32 = 4096;
/// The link, in an installation's directory, to the directory of the host's programs it uses.
pub const PROGRAMS_LINK: &str = "programs";

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
    #[error("every task slot of the host's eBPF programs is taken ({capacity} tasks); remove a task first")]
    TooManyTasks { capacity: u32 },
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

    /// What killed `apply`s of this cgroup left in `<bpffs>/intercept`. Under the locks, no
    /// live `apply` has a directory there for this cgroup.
    pub fn leftovers(&self) -> Leftovers {
        let mut leftovers = Leftovers::default();
        let Ok(entries) = fs::read_dir(self.bpffs.join(PIN_ROOT)) else { return leftovers };
        let id = format!("{}-", self.cgroup_id);
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(load::PROGRAMS_STAGING) {
                leftovers.programs_staging.push(entry.path());
                continue;
            }
            for (prefix, found) in [
                (STAGING, &mut leftovers.staging),
                (replace::REPLACING, &mut leftovers.replacing),
                (replace::RETIRED, &mut leftovers.retired),
                (pins::RETIRING, &mut leftovers.retiring),
            ] {
                if name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with(&id)) {
                    found.push(entry.path());
                }
            }
        }
        for found in [&mut leftovers.staging, &mut leftovers.replacing, &mut leftovers.retired, &mut leftovers.retiring]
        {
            found.sort();
        }
        leftovers
    }
}

/// Directory name prefix of a first apply's pins until they are in place.
const STAGING: &str = "staging-";

/// The directories `<bpffs>/intercept/<kind><cgroup id>-<pid>` of one cgroup that killed
/// `apply`s left, found with one listing: that directory holds every installation on the host,
/// and a listing per kind made a removal among 1,000 tasks read all of them three times.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// A first apply's pins, killed before they were moved into place; their links may still
    /// intercept.
    pub staging: Vec<PathBuf>,
    /// A replacement's new pins, complete or not ([`replace::recover`]).
    pub replacing: Vec<PathBuf>,
    /// An installation's old pins, moved aside by a replacement of a build before layout 3.
    pub retired: Vec<PathBuf>,
    /// Replaced installations whose readers still run ([`pins::RETIRING_DRAIN`]).
    pub retiring: Vec<PathBuf>,
    /// The host's programs, pinned by an apply killed before it moved them into place (any
    /// cgroup's: nothing is attached to them).
    pub programs_staging: Vec<PathBuf>,
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
    let leftovers = target.leftovers();
    recover(target, &leftovers)?;
    for stale in &leftovers.programs_staging {
        fs::remove_dir_all(stale).map_err(|e| Error::io("remove", stale, e))?;
    }
    let dir = target.pin_dir();
    let applied = if dir.exists() {
        update(target, netns, &dir, plan, &desired, options)
    } else {
        install(target, netns, &dir, plan, &desired, options, &leftovers.staging)
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
    stale_staging: &[PathBuf],
) -> Result<Applied, Error> {
    let root = target.bpffs.join(PIN_ROOT);
    fs::create_dir_all(&root).map_err(|e| Error::io("create", &root, e))?;
    // A killed apply's staging pins may hold links that still intercept: they go first.
    for stale in stale_staging {
        unpin_dir(stale)?;
    }
    let programs = host_programs(&root, options)?;
    let staging = root.join(format!("{STAGING}{}-{}", target.cgroup_id, std::process::id()));
    let adopted = stage(target, netns, &programs, &staging, plan, desired, options)?;
    fs::rename(&staging, dir).map_err(|e| {
        let _ = unpin_dir(&staging);
        Error::io("move the pins into place at", dir, e)
    })?;
    Ok(Applied { outcome: Outcome::Installed, pin_dir: dir.to_owned(), logs: programs.logs, adopted, replaced: None })
}

/// Makes a complete installation of the task in `staging`, its links attached: a slot, the
/// configuration in the host's maps, the task's own programs and maps. On failure nothing of it
/// is left (its links detached, its slot freed).
fn stage(
    target: &Target,
    netns: BorrowedFd<'_>,
    programs: &load::HostPrograms,
    staging: &Path,
    plan: &EbpfPlan,
    desired: &Contents,
    options: ApplyOptions,
) -> Result<Option<Adopted>, Error> {
    fs::create_dir(staging).map_err(|e| Error::io("create", staging, e))?;
    let staged = (|| {
        let link = staging.join(PROGRAMS_LINK);
        let name = programs.dir.file_name().unwrap_or_default();
        std::os::unix::fs::symlink(Path::new("..").join(name), &link).map_err(|e| Error::io("link", &link, e))?;
        let mut own = create_task_maps(staging, maps::Record::pages([desired, &Contents::empty()]))?;
        let slot = slots::allocate(programs, target.cgroup_id)?;
        maps::write_task(&mut own, slot)?;
        maps::write_version(&mut own, build())?;
        let mut host = maps::HostMaps::open(&programs.dir)?;
        maps::install(desired, 0, &mut host, slot, &mut own)?;
        let task_programs = load_task_programs(programs, slot, options, staging)?;
        let adopted = ingress_port(plan).map(|port| adopt_into(staging, &target.cgroup, port)).transpose()?;
        attach_and_pin(target, netns, programs, &task_programs, staging)?;
        slots::bind(programs, target.cgroup_id, slot)?;
        Ok(adopted)
    })();
    if staged.is_err() {
        // Unpinned, the links detach, and the slot is freed: nothing stays attached.
        let _ = unpin_dir(staging);
    }
    staged
}

/// Replaces an installation of another build (or layout) with one of this build, with no
/// window: the new one is made and attached beside the old one (the hooks run both; the old
/// programs run first, and the new ones leave alone what they redirected), then takes its
/// place, and the old one's programs that redirect are detached. Those that read what a
/// connection left behind (`sockops`, `getsockopt`, `recvmsg`, `sk_lookup`) stay, in
/// `retiring-<cgroup id>-<seconds>`, for connections redirected before the switch, until a
/// later apply, remove or prune finds them older than [`pins::RETIRING_DRAIN`].
fn replace(
    target: &Target,
    netns: BorrowedFd<'_>,
    dir: &Path,
    plan: &EbpfPlan,
    desired: &Contents,
    options: ApplyOptions,
    installed: &Version,
) -> Result<Applied, Error> {
    let root = target.bpffs.join(PIN_ROOT);
    let programs = host_programs(&root, options)?;
    let staging = root.join(format!("{}{}-{}", replace::REPLACING, target.cgroup_id, std::process::id()));
    let adopted = stage(target, netns, &programs, &staging, plan, desired, options)?;
    let retiring = pins::retiring_dir(&root, target.cgroup_id);
    fs::rename(dir, &retiring).map_err(|e| {
        let _ = unpin_dir(&staging);
        Error::io("move aside", dir, e)
    })?;
    // A kill here leaves no installation but a complete replacement: `recover` puts it in place.
    fs::rename(&staging, dir).map_err(|e| Error::io("move the pins into place at", dir, e))?;
    pins::detach_writers(&retiring)?;
    Ok(Applied {
        outcome: Outcome::Replaced { from_layout: installed.layout },
        pin_dir: dir.to_owned(),
        logs: programs.logs,
        adopted,
        replaced: Some(installed.build_str().to_owned()),
    })
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

fn update(
    target: &Target,
    netns: BorrowedFd<'_>,
    dir: &Path,
    plan: &EbpfPlan,
    desired: &Contents,
    options: ApplyOptions,
) -> Result<Applied, Error> {
    let links = open_pinned_links(dir)?;
    let installed = installed_version(dir)?;
    if installed.layout != LAYOUT || installed.build != build().build {
        return replace(target, netns, dir, plan, desired, options, &installed);
    }
    let mut own = open_pinned_maps(dir)?;
    let slot = maps::read_task(&own)?;
    let mut host = maps::HostMaps::open(&dir.join(PROGRAMS_LINK))?;
    let generations = Generations::read(&host, slot, &own)?;
    // A switch records both configurations for a while: the record must have room for them.
    let needed = maps::Record::pages([generations.active(), desired]);
    if needed > maps::record_capacity(&own)? {
        let path = dir.join(intercept_common::RECORD_MAP);
        // bpffs refuses a '.' in a name.
        let staged = dir.join(format!("{}_NEW", intercept_common::RECORD_MAP));
        let _ = fs::remove_file(&staged);
        let record = load::create_record(&staged, needed)?;
        own.insert(intercept_common::RECORD_MAP, record);
        maps::Record::write(&mut own, &generations.contents, generations.dirty)?;
        // One rename: the record is the old one or the new one, whole.
        fs::rename(&staged, &path).map_err(|e| Error::io("move the new record into place at", &path, e))?;
    }
    // Before the switch, so that ingress is never steered to a listener not yet known (the
    // programs learn only those that start listening after they were attached).
    let adopted = ingress_port(plan).map(|port| adopt_into(dir, &target.cgroup, port)).transpose()?;
    let outcome = if generations.active() == desired {
        if !generations.inactive_is_empty() {
            generations.clear_inactive(&mut host, slot, &mut own)?;
        }
        Outcome::Unchanged
    } else {
        Outcome::Updated(generations.switch_to(desired, &mut host, slot, &mut own)?)
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
        if dir.join("ORIG_DST").exists() {
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
mod tests;
