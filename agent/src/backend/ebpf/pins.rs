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
use intercept_common::MAP_NAMES;

use super::replace::recover;
use super::{Error, PIN_ROOT, Program, Target, host, maps};
use crate::lock::{self, Locks};

/// Removes a directory of pins: the `sk_lookup` link detached first (the kernel would release
/// it only later, from a work queue, once unpinned), then every pin.
pub(super) fn unpin_dir(dir: &Path) -> Result<(), Error> {
    let path = dir.join(Program::SkLookup.link_pin());
    if let Ok(link) = host::obj_get(&path) {
        host::link_detach(link.as_fd()).map_err(|e| Error::io("detach the link pinned at", &path, e))?;
    }
    fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))
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
    for dir in &stale {
        unpin_dir(dir)?;
    }
    let dir = target.pin_dir();
    if !dir.exists() {
        release_root(&target.bpffs.join(PIN_ROOT));
        held.release()?;
        return Ok(if stale.is_empty() { Removed::Nothing } else { Removed::Leftovers });
    }
    let steered_ingress = dir.join(Program::SkLookup.link_pin()).exists();
    // Links first: interception stops at once, and a failure later leaves only maps behind.
    // Each link is detached explicitly (BPF_LINK_DETACH, synchronous): unpinned, the kernel
    // would release it only later, from a work queue, and `remove` returning must mean the
    // programs are gone from the cgroup and the namespace.
    for program in Program::ALL {
        let path = dir.join(program.link_pin());
        if let Ok(link) = host::obj_get(&path) {
            host::link_detach(link.as_fd()).map_err(|e| Error::io("detach the link pinned at", &path, e))?;
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io("unpin", &path, e)),
            _ => {}
        }
    }
    fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
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
        let Some(cgroup_id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        let dir = entry.path();
        // A cgroup's links are all detached when it goes: one tells for all (this runs at every
        // apply, over every installation on the host).
        let link = dir.join(Program::CGROUP[0].link_pin());
        let orphaned = host::obj_get(&link).and_then(|link| host::link_cgroup_id(link.as_fd())).ok() == Some(0);
        if orphaned {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("remove", &dir, e))?;
            locks.forget(&lock::Key::cgroup(cgroup_id, format!("cgroup id {cgroup_id}")))?;
            pruned.push(cgroup_id);
        }
    }
    release_root(root);
    pruned.sort_unstable();
    Ok(pruned)
}

/// Removes `root` (`<bpffs>/intercept`) once no installation is left in it: what it holds
/// then is only the quiet log ring every installation shared ([`super::QUIET_LOG_RING_PIN`]),
/// which goes with the last of them. Under the bpffs lock, so no apply is about to reuse the
/// ring; a root another installation (or a staging directory) still uses is left as it is.
pub(super) fn release_root(root: &Path) {
    // Every installation, a staging one too, is a directory, and a directory's link count is
    // 2 plus one per subdirectory (bpffs keeps it as the other in-memory file systems do): one
    // stat tells, where listing the root would read every installation on the host at each
    // removal.
    if fs::metadata(root).is_ok_and(|root| root.nlink() == 2) {
        let _ = fs::remove_file(root.join(super::QUIET_LOG_RING_PIN));
        let _ = fs::remove_dir(root);
    }
}

#[cfg(test)]
mod tests;
