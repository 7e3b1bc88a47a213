//! Replacing the programs of a live installation with this build's, with no window: each pinned
//! link switched to its new program, and switched back should one switch fail.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::Path;

use intercept_common::{CARRIED_MAP_NAMES, LAYOUT, LAYOUT_1_PAIRING_PINS, MAP_NAMES, Version};

use super::adopt::adopt_into;
use super::load::{load, program_fd};
use super::pins::{open_pinned_links, open_pinned_maps};
use super::{
    Adopted, Applied, ApplyOptions, Contents, Error, Leftovers, Logs, Outcome, PIN_ROOT, Program, Target, build, host,
};
use super::{ingress_port, maps};
use crate::plan::ebpf::EbpfPlan;

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
pub(super) const REPLACING: &str = "replacing-";
pub(super) const RETIRED: &str = "retired-";

/// Replaces the programs of the installation in `dir` with this build's, with no window: new
/// configuration maps are made and filled, the maps holding live state (sockets, hand-offs,
/// listeners, counters; layout 1's pairing maps as the `LEGACY_*` ones) are carried over, and
/// each pinned link is switched to its new program (`BPF_LINK_UPDATE`). The new pins are
/// staged in `replacing-<cgroup id>-<pid>` and swapped in with two renames; [`recover`]
/// finishes a swap a killed apply left halfway.
pub(super) fn replace(
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
    let links: Vec<(Program, u32)> =
        open_pinned_links(dir)?.iter().map(|(program, info)| (*program, info.program_id())).collect();
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
    let (ebpf, mut maps, logs) = load(plan, options, &pins, &carried, &target.quiet_log_ring())?;
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
    switch_links(dir, staging, &links, |program| program_fd(&ebpf, program))?;
    Ok((adopted, logs))
}

/// Switches each link pinned in `dir`, in [`REPLACE_ORDER`], from the program it runs (by
/// `links`' program ids) to `new_program`'s, and pins it in `staging` too. Should one fail, the
/// links switched so far are switched back: the installation is as it was.
fn switch_links<'a>(
    dir: &Path,
    staging: &Path,
    links: &[(Program, u32)],
    new_program: impl Fn(Program) -> Result<BorrowedFd<'a>, Error>,
) -> Result<(), Error> {
    // (link, the program it ran, the program it runs now), for a way back.
    let mut switched: Vec<(OwnedFd, OwnedFd, Program)> = Vec::new();
    let mut failure = None;
    for program in REPLACE_ORDER {
        match switch_link(dir, staging, links, &new_program, program) {
            Ok(done) => switched.push(done),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure {
        // Back to the programs that ran before.
        for (link, old, program) in switched.iter().rev() {
            if let Ok(new) = new_program(*program) {
                let _ = host::link_update(link.as_fd(), old.as_fd(), new);
            }
        }
        return Err(e);
    }
    Ok(())
}

/// Switches the link of `program` pinned in `dir` to `new_program`'s, and pins it in `staging`
/// too.
fn switch_link<'a>(
    dir: &Path,
    staging: &Path,
    links: &[(Program, u32)],
    new_program: impl Fn(Program) -> Result<BorrowedFd<'a>, Error>,
    program: Program,
) -> Result<(OwnedFd, OwnedFd, Program), Error> {
    let path = dir.join(program.link_pin());
    let &(_, program_id) = links
        .iter()
        .find(|(p, _)| *p == program)
        .ok_or_else(|| Error::Incomplete { dir: dir.to_owned(), missing: program.link_pin() })?;
    let link = host::obj_get(&path).map_err(|e| Error::io("open the link pinned at", &path, e))?;
    let old =
        host::prog_fd_by_id(program_id).map_err(|e| Error::io("open the program of the link pinned at", &path, e))?;
    let new = new_program(program)?;
    host::link_update(link.as_fd(), new, old.as_fd())
        .map_err(|e| Error::io("switch to the new program the link pinned at", &path, e))?;
    let pin = staging.join(program.link_pin());
    if let Err(e) = host::obj_pin(link.as_fd(), &pin) {
        // Switched but not yet among those the caller switches back.
        let _ = host::link_update(link.as_fd(), old.as_fd(), new);
        return Err(Error::io("pin", &pin, e));
    }
    Ok((link, old, program))
}

/// Finishes or undoes what a killed replacement left (under the locks, so no live apply owns
/// it): new pins complete but not yet in place become the installation; otherwise the old
/// pins stay, and the leftovers go. Their links are the installation's own, so removing them
/// detaches nothing.
pub(super) fn recover(target: &Target, leftovers: &Leftovers) -> Result<(), Error> {
    let dir = target.pin_dir();
    for (prefix, found) in [(REPLACING, &leftovers.replacing), (RETIRED, &leftovers.retired)] {
        for leftover in found {
            let complete = Program::ALL.iter().all(|p| leftover.join(p.link_pin()).exists())
                && MAP_NAMES.iter().all(|m| leftover.join(m).exists());
            if !dir.exists() && (prefix == RETIRED || complete) {
                fs::rename(leftover, &dir).map_err(|e| Error::io("move the pins into place at", &dir, e))?;
            } else {
                fs::remove_dir_all(leftover).map_err(|e| Error::io("remove", leftover, e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
