use std::collections::BTreeSet;

use super::*;

/// A map the programs define but no list names would be neither pinned nor carried over
/// by an upgrade; a name in both lists would be rebuilt and carried at once.
#[test]
fn the_object_defines_exactly_the_named_maps_each_named_once() {
    let object = aya_obj::Object::parse(object()).expect("the embedded eBPF object parses");
    // Data sections (`.rodata`, …) and aya-log's ring buffer are loaded by aya, never
    // pinned by name.
    let defined: BTreeSet<&str> =
        object.maps.keys().map(String::as_str).filter(|name| !name.starts_with('.') && *name != AYA_LOG_RING).collect();
    let named: BTreeSet<&str> = MAP_NAMES.into_iter().collect();
    assert_eq!(named.len(), MAP_NAMES.len(), "a map is named twice: {MAP_NAMES:?}");
    assert_eq!(defined, named);
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
        QUIET_LOG_RING_PIN,
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
    let none = Target { cgroup_id: 8, ..target };
    let leftovers = none.leftovers();
    assert!(leftovers.staging.is_empty() && leftovers.replacing.is_empty() && leftovers.retired.is_empty());
}
