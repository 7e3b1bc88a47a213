use std::collections::BTreeSet;

use super::*;

/// A map the programs define but no list names would be neither pinned with the host's
/// programs nor with a task's; a name in both lists would be shared and a task's at once.
#[test]
fn the_object_defines_exactly_the_named_maps_each_named_once() {
    use intercept_common::{HOST_MAP_NAMES, TASK_PROGRAM_MAP_NAMES};
    let object = aya_obj::Object::parse(object()).expect("the embedded eBPF object parses");
    // Data sections (`.rodata`, …) are loaded by aya, never pinned by name; aya-log's ring
    // buffer is pinned with the host's programs under its own name.
    let defined: BTreeSet<&str> =
        object.maps.keys().map(String::as_str).filter(|name| !name.starts_with('.') && *name != AYA_LOG_RING).collect();
    let named: BTreeSet<&str> = HOST_MAP_NAMES.into_iter().chain(TASK_PROGRAM_MAP_NAMES).collect();
    assert_eq!(named.len(), HOST_MAP_NAMES.len() + TASK_PROGRAM_MAP_NAMES.len(), "a map is named twice");
    assert_eq!(defined, named);
    for name in TASK_PROGRAM_MAP_NAMES {
        assert!(MAP_NAMES.contains(&name), "{name} is pinned with the task");
    }
}

/// The load queue ([`Program::BY_LOAD_TIME`]) loads every program once, and the object has
/// them all: a program missing from it would never be loaded, nor attached.
#[test]
fn the_load_queue_holds_every_program_of_the_object_once() {
    let queued: BTreeSet<&str> = Program::BY_LOAD_TIME.iter().map(|p| p.name()).collect();
    let all: BTreeSet<&str> = Program::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(queued.len(), Program::BY_LOAD_TIME.len(), "a program is queued twice");
    assert_eq!(queued, all);
    let object = aya_obj::Object::parse(object()).expect("the embedded eBPF object parses");
    let defined: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
    assert_eq!(defined, all);
}

/// One listing finds each kind of leftover of the cgroup, and none of another cgroup whose id
/// starts with the same digits, nor an installation or the shared log ring.
#[test]
fn leftovers_are_sorted_by_kind_for_this_cgroup_only() {
    let bpffs = tempfile::tempdir().expect("a temporary directory");
    let root = bpffs.path().join(PIN_ROOT);
    let names = [
        "7",
        "77",
        "AYA_LOGS",
        "programs-3-0123456789abcdef",
        "staging-programs-9",
        "retiring-7-1700000000",
        "retiring-77-1700000000",
        "staging-7-10",
        "staging-7-2",
        "staging-77-3",
        "replacing-7-4",
        "replacing-70-5",
        "retired-7-6",
        "retired-17-7",
    ];
    for name in names {
        fs::create_dir_all(root.join(name)).expect("create");
    }
    let target = Target { cgroup: PathBuf::from("/sys/fs/cgroup/task"), cgroup_id: 7, bpffs: bpffs.path().to_owned() };
    let leftovers = target.leftovers();
    let names = |found: &[PathBuf]| -> Vec<String> {
        found.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    };
    assert_eq!(names(&leftovers.staging), ["staging-7-10", "staging-7-2"]);
    assert_eq!(names(&leftovers.replacing), ["replacing-7-4"]);
    assert_eq!(names(&leftovers.retired), ["retired-7-6"]);
    assert_eq!(names(&leftovers.retiring), ["retiring-7-1700000000"]);
    assert_eq!(names(&leftovers.programs_staging), ["staging-programs-9"]);
    let none = Target { cgroup_id: 8, ..target };
    let leftovers = none.leftovers();
    assert!(leftovers.staging.is_empty() && leftovers.replacing.is_empty() && leftovers.retired.is_empty());
}
