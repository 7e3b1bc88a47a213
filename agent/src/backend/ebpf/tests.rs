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
        object.maps.keys().map(String::as_str).filter(|name| !name.starts_with('.') && *name != "AYA_LOGS").collect();
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
