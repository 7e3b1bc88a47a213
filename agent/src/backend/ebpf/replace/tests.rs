use std::fs;
use std::path::PathBuf;

use intercept_common::MAP_NAMES;

use super::super::PIN_ROOT;
use super::super::fake;
use super::*;

/// A pin directory as a replacement leaves it, complete or not; each pin says which it is in.
fn leftover(path: &std::path::Path, complete: bool) {
    let tag = path.file_name().expect("a name").to_string_lossy().into_owned();
    fs::create_dir_all(path).expect("a leftover directory");
    let skipped = if complete { None } else { Some(MAP_NAMES[0]) };
    for name in Program::ALL.iter().map(|p| p.link_pin()).chain(MAP_NAMES.iter().map(|m| (*m).to_owned())) {
        if Some(name.as_str()) != skipped {
            fake::pin(&path.join(&name), &tag);
        }
    }
}

fn target(bpffs: &std::path::Path) -> Target {
    Target { cgroup: PathBuf::from("/sys/fs/cgroup/task"), cgroup_id: 7, bpffs: bpffs.to_owned() }
}

#[test]
fn recovery_puts_a_complete_replacement_in_place_of_a_moved_installation() {
    let bpffs = tempfile::tempdir().expect("a temporary directory");
    let target = target(bpffs.path());
    let root = bpffs.path().join(PIN_ROOT);
    leftover(&root.join("replacing-7-40"), true);
    leftover(&root.join("retired-7-40"), true);
    recover(&target, &target.leftovers()).expect("recovered");
    assert_eq!(fs::read_to_string(target.pin_dir().join(MAP_NAMES[0])).expect("in place"), "replacing-7-40");
    assert_eq!(fs::read_dir(&root).expect("the root").count(), 1, "the leftovers are gone");
}

#[test]
fn recovery_keeps_the_installation_over_an_incomplete_replacement() {
    let bpffs = tempfile::tempdir().expect("a temporary directory");
    let target = target(bpffs.path());
    let root = bpffs.path().join(PIN_ROOT);
    leftover(&root.join("replacing-7-40"), false);
    leftover(&root.join("retired-7-40"), true);
    recover(&target, &target.leftovers()).expect("recovered");
    // The retired pins were the installation: with the incomplete replacement gone, they are again.
    assert_eq!(fs::read_to_string(target.pin_dir().join(MAP_NAMES[0])).expect("in place"), "retired-7-40");
    assert_eq!(fs::read_dir(&root).expect("the root").count(), 1, "the leftovers are gone");
}
