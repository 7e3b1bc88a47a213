//! What replacements of an installation's pins leave when killed, and finishing or undoing it.

use std::fs;

use intercept_common::MAP_NAMES;

use super::{Error, Leftovers, Program, Target};

/// Directory name prefixes of a replacement's new pins, and of the old ones moved aside.
pub(super) const REPLACING: &str = "replacing-";
pub(super) const RETIRED: &str = "retired-";

/// Finishes or undoes what a killed replacement left (under the locks, so no live apply owns
/// it): new pins complete but not yet in place become the installation; otherwise the old
/// pins stay, and the leftovers go. Their links are the installation's own, so removing them
/// detaches nothing.
pub(super) fn recover(target: &Target, leftovers: &Leftovers) -> Result<(), Error> {
    let dir = target.pin_dir();
    for leftover in &leftovers.replacing {
        // This build's replacements have links of their own, attached: complete, with no
        // installation in place, one is the installation; otherwise it goes, detached.
        let complete = Program::ALL.iter().all(|p| leftover.join(p.link_pin()).exists())
            && MAP_NAMES.iter().all(|m| leftover.join(m).exists());
        if !dir.exists() && complete {
            fs::rename(leftover, &dir).map_err(|e| Error::io("move the pins into place at", &dir, e))?;
        } else {
            super::pins::unpin_dir(leftover)?;
        }
    }
    for leftover in &leftovers.retired {
        // A replacement by a build before layout 3 shared its links with the installation.
        if !dir.exists() {
            fs::rename(leftover, &dir).map_err(|e| Error::io("move the pins into place at", &dir, e))?;
        } else {
            fs::remove_dir_all(leftover).map_err(|e| Error::io("remove", leftover, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
