//! The pins of installations: opening them, and removing them (`remove`, a removed cgroup's,
//! `prune`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use aya::maps::{Map, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use intercept_common::{MAP_NAMES, RECORD_MAP, TASK_MAP};

use super::replace::recover;
use super::{Error, PIN_ROOT, Program, Target, host, maps, slots};
use crate::lock::{self, Locks};

/// Removes a directory of pins (an installation, or a killed apply's staging one): every link
/// detached first (`BPF_LINK_DETACH`, synchronous: unpinned, the kernel would release a link
/// only later, from a work queue, and the slot must not be given to another task while the
/// programs still run for this one), then its slot freed in the host's programs, then every
/// pin. The host's programs go with their last task.
pub(super) fn unpin_dir(dir: &Path) -> Result<(), Error> {
    detach(dir, &Program::ALL)?;
    let programs = fs::canonicalize(dir.join(super::PROGRAMS_LINK)).ok();
    let last = match (task_slot(dir)?, &programs) {
        (Some(slot), Some(programs)) => match recorded(dir) {
            Some((contents, dirty)) => {
                let mut host = maps::HostMaps::open(programs)?;
                maps::Generations { active: 0, contents, dirty }.clear(&mut host, slot)?;
                slots::release(programs, slot)?
            }
            // Entries nobody can name would be the next task's in this slot: it stays taken.
            None => false,
        },
        _ => false,
    };
    fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))?;
    if let (true, Some(programs)) = (last, programs) {
        fs::remove_dir_all(&programs).map_err(|e| Error::io("remove", &programs, e))?;
    }
    Ok(())
}

/// What the installation's `RECORD` says its entries in the host's maps are; `None` when it
/// cannot be read.
fn recorded(dir: &Path) -> Option<([maps::Contents; 2], [bool; 2])> {
    let data = MapData::from_pin(dir.join(RECORD_MAP)).ok()?;
    let own = BTreeMap::from([(RECORD_MAP, Map::from_map_data(data).ok()?)]);
    maps::Record::read(&own).ok()
}

/// Directory name prefix of an installation replaced by another build's, whose programs that
/// read what connections left behind still run: `retiring-<cgroup id>-<unix seconds>`.
pub(super) const RETIRING: &str = "retiring-";
/// How long a replaced installation's readers stay: longer than a connection redirected before
/// the switch can take to reach its proxy (a SYN is retried for about two minutes).
pub const RETIRING_DRAIN: std::time::Duration = std::time::Duration::from_secs(180);

/// Where a replaced installation of `cgroup_id` goes, named with the time it went.
pub(super) fn retiring_dir(root: &Path, cgroup_id: u64) -> std::path::PathBuf {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    root.join(format!("{RETIRING}{cgroup_id}-{}", now.as_secs()))
}

/// Detaches the links of a replaced installation's programs that redirect (connect, sendmsg):
/// the new installation decides every connection from here on.
pub(super) fn detach_writers(dir: &Path) -> Result<(), Error> {
    detach(dir, &[Program::Connect4, Program::Connect6, Program::Sendmsg4, Program::Sendmsg6])
}

/// Detaches the links of `programs` pinned in `dir` (those pinned there).
fn detach(dir: &Path, programs: &[Program]) -> Result<(), Error> {
    for program in programs {
        let path = dir.join(program.link_pin());
        if let Ok(link) = host::obj_get(&path) {
            host::link_detach(link.as_fd()).map_err(|e| Error::io("detach the link pinned at", &path, e))?;
        }
    }
    Ok(())
}

/// When a retiring directory went, from its name (`retiring-<cgroup id>-<seconds>`).
fn retired_at(name: &str) -> Option<u64> {
    let (id, secs) = name.strip_prefix(RETIRING)?.split_once('-')?;
    id.parse::<u64>().ok()?;
    secs.parse().ok()
}

/// The slot recorded in the installation's `TASK` map; `None` when it has none (a staging
/// directory of an apply killed before it took one).
fn task_slot(dir: &Path) -> Result<Option<u32>, Error> {
    let path = dir.join(TASK_MAP);
    let Ok(map) = host::obj_get(&path) else { return Ok(None) };
    let mut value = [0u8; size_of::<intercept_common::TaskRef>()];
    let found = host::map_lookup(map.as_fd(), &0u32.to_ne_bytes(), &mut value)
        .map_err(|e| Error::io("read the map pinned at", &path, e))?;
    let slot = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
    Ok((found && slot != 0).then_some(slot))
}

/// Opens every pinned map of an installation.
pub(super) fn open_pinned_maps(dir: &Path) -> Result<BTreeMap<&'static str, Map>, Error> {
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
pub(super) fn open_pinned_links(dir: &Path) -> Result<Vec<(Program, aya::programs::links::LinkInfo)>, Error> {
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

/// What [`remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// No installation, nor a leftover of one.
    Nothing,
    /// Only a leftover: the staging directory of an interrupted replacement.
    Leftovers,
    /// An installation. `steered_ingress`: it had the `sk_lookup` link, so it was made by an
    /// intercept that steers ingress itself, and `apply` never adds to an installation without
    /// that link (it asks for `remove` first): no older iptables ingress half can be beside it.
    Installation { steered_ingress: bool },
}

impl Removed {
    /// Whether there was anything to remove.
    pub fn any(self) -> bool {
        self != Removed::Nothing
    }
}

/// Removes the target cgroup's installation: the links (detaching the programs) and the maps.
/// Removing twice is not an error.
pub fn remove(target: &Target) -> Result<Removed, Error> {
    let bpffs = match fs::canonicalize(&target.bpffs) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::Nothing),
        Err(e) => return Err(Error::io("resolve", &target.bpffs, e)),
    };
    if !host::is_bpffs(&bpffs)? {
        return Ok(Removed::Nothing);
    }
    let held = target.lock()?;
    let _lock = host::lock_bpffs(&bpffs)?;
    let leftovers = target.leftovers();
    recover(target, &leftovers)?;
    let stale = leftovers.staging;
    // The task goes: so do the programs of its replaced installations.
    for dir in stale.iter().chain(&leftovers.retiring) {
        unpin_dir(dir)?;
    }
    for dir in &leftovers.programs_staging {
        fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))?;
    }
    let dir = target.pin_dir();
    if !dir.exists() {
        release_root(&target.bpffs.join(PIN_ROOT));
        held.release()?;
        return Ok(if stale.is_empty() { Removed::Nothing } else { Removed::Leftovers });
    }
    let steered_ingress = dir.join(Program::SkLookup.link_pin()).exists();
    // Links first (`unpin_dir`): interception stops at once, and `remove` returning means the
    // programs are gone from the cgroup and the namespace.
    unpin_dir(&dir)?;
    release_root(&target.bpffs.join(PIN_ROOT));
    held.release()?;
    Ok(Removed::Installation { steered_ingress })
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
    release_root(&bpffs.join(PIN_ROOT));
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
    prune_under(&bpffs.join(PIN_ROOT), &Locks::system())
}

/// [`prune`] under the bpffs lock, in `root` (`<bpffs>/intercept`), forgetting the pruned
/// cgroups' locks in `locks`.
fn prune_under(root: &Path, locks: &Locks) -> Result<Vec<u64>, Error> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", root, e)),
    };
    let mut pruned = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", root, e))?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if let Some(secs) = retired_at(name) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            if now.as_secs().saturating_sub(secs) >= RETIRING_DRAIN.as_secs() {
                unpin_dir(&entry.path())?;
            }
            continue;
        }
        let Some(cgroup_id) = name.parse::<u64>().ok() else { continue };
        let dir = entry.path();
        // A cgroup's links are all detached when it goes: one tells for all (this runs at every
        // apply, over every installation on the host).
        let link = dir.join(Program::CGROUP[0].link_pin());
        let orphaned = host::obj_get(&link).and_then(|link| host::link_cgroup_id(link.as_fd())).ok() == Some(0);
        if orphaned {
            unpin_dir(&dir)?;
            locks.forget(&lock::Key::cgroup(cgroup_id, format!("cgroup id {cgroup_id}")))?;
            pruned.push(cgroup_id);
        }
    }
    release_root(root);
    pruned.sort_unstable();
    Ok(pruned)
}

/// Removes `root` (`<bpffs>/intercept`) once nothing is left in it: no installation, and no
/// host programs (which go with their last task). Under the bpffs lock.
pub(super) fn release_root(root: &Path) {
    // Everything in it is a directory, and a directory's link count is 2 plus one per
    // subdirectory (bpffs keeps it as the other in-memory file systems do): one stat tells,
    // where listing the root would read every installation on the host at each removal.
    if fs::metadata(root).is_ok_and(|root| root.nlink() == 2) {
        // The log ring that layout-2 installations shared, pinned beside them: it goes with the
        // last of them.
        let _ = fs::remove_file(root.join(LAYOUT_2_LOG_RING));
        let _ = fs::remove_dir(root);
    }
}

/// Where layout-2 installations that did not log pinned the aya-log ring they shared.
const LAYOUT_2_LOG_RING: &str = "AYA_LOGS";

#[cfg(test)]
mod tests;
