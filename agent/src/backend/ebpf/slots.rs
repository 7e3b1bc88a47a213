//! Task slots: how the host's programs find a task's maps.
//!
//! Each installation has a slot, 1 to `MAX_TASKS - 1`, recorded in the host's `SLOTS` map (slot
//! → cgroup id) and in the installation's `TASK` map. Its entries in the host's maps are keyed
//! by it, and it is written into the programs' cgroup storage (`TASKS`) of the task's cgroup
//! after every link is attached: until then the host's programs find slot 0 and leave every
//! connection alone.

use std::os::fd::AsFd as _;
use std::path::Path;

use intercept_common::{MAX_TASKS, SLOTS_MAP, TASKS_MAP, TaskRef};

use super::load::HostPrograms;
use super::{Error, host};

/// `BPF_NOEXIST`: an update that fails with `EEXIST` when the key is taken.
const NOEXIST: u64 = 1;

/// Takes a free slot for `cgroup_id`, starting from one derived from the id (so that a host's
/// tasks rarely probe far).
pub(super) fn allocate(programs: &HostPrograms, cgroup_id: u64) -> Result<u32, Error> {
    let slots = programs.map(SLOTS_MAP)?;
    let usable = MAX_TASKS - 1;
    let start = (cgroup_id % u64::from(usable)) as u32;
    for n in 0..usable {
        let slot = (start + n) % usable + 1;
        match host::map_update(slots.as_fd(), &slot.to_ne_bytes(), &cgroup_id.to_ne_bytes(), NOEXIST) {
            Ok(()) => return Ok(slot),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) if e.raw_os_error() == Some(libc::E2BIG) => break,
            Err(e) => return Err(Error::io("take a slot in the map pinned at", programs.dir.join(SLOTS_MAP), e)),
        }
    }
    Err(Error::TooManyTasks { capacity: usable })
}

/// Writes `slot` into the programs' storage of the cgroup `cgroup_id` (one value, shared by
/// its attach types): from here on the host's programs attached there intercept.
pub(super) fn bind(programs: &HostPrograms, cgroup_id: u64, slot: u32) -> Result<(), Error> {
    let tasks = programs.map(TASKS_MAP)?;
    let value = TaskRef { slot, _pad: 0 };
    let mut bytes = [0u8; size_of::<TaskRef>()];
    bytes[..4].copy_from_slice(&value.slot.to_ne_bytes());
    host::map_update(tasks.as_fd(), &cgroup_id.to_ne_bytes(), &bytes, 0).map_err(|e| {
        Error::io("write the task's slot into the cgroup storage pinned at", programs.dir.join(TASKS_MAP), e)
    })
}

/// Frees `slot` in the host's programs pinned at `dir` (its links detached and its entries
/// deleted already). Returns whether no slot is taken any more.
pub(super) fn release(dir: &Path, slot: u32) -> Result<bool, Error> {
    let path = dir.join(SLOTS_MAP);
    let slots = host::obj_get(&path).map_err(|e| Error::io("open the map pinned at", &path, e))?;
    host::map_delete(slots.as_fd(), &slot.to_ne_bytes())
        .map_err(|e| Error::io("free the slot in the map pinned at", &path, e))?;
    let mut next = [0u8; 4];
    Ok(!host::map_next_key(slots.as_fd(), None, &mut next)
        .map_err(|e| Error::io("list the map pinned at", &path, e))?)
}
