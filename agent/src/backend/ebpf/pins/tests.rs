use std::fs;
use std::path::Path;

use aya_obj::generated::bpf_link_type;

use super::super::fake::{self, Call, Kernel};
use super::*;
use crate::lock::TempLocks;

/// The installation of cgroup `id` under `root`, its first cgroup link named `link`.
fn installation(root: &Path, id: &str, link: Option<&str>) {
    let dir = root.join(id);
    fs::create_dir_all(&dir).expect("an installation directory");
    fake::pin(&dir.join(MAP_NAMES[0]), "a map");
    if let Some(link) = link {
        fake::pin(&dir.join(Program::CGROUP[0].link_pin()), link);
    }
}

#[test]
fn pruning_removes_the_installations_whose_cgroup_is_gone_and_their_locks() {
    let kernel = Kernel::install();
    let bpffs = tempfile::tempdir().expect("a temporary directory");
    let root = bpffs.path().join(PIN_ROOT);
    let locks = tempfile::tempdir().expect("a temporary directory");
    let (gone, live) = (7, 8);
    let lock_file = |id: u64| locks.path().join(format!("{}.lock", lock::Key::cgroup(id, "a cgroup").name()));
    for id in [gone, live] {
        fs::write(lock_file(id), "").expect("a lock file");
    }
    installation(&root, "7", Some("link of 7"));
    kernel.link("link of 7", bpf_link_type::BPF_LINK_TYPE_CGROUP, 0);
    installation(&root, "8", Some("link of 8"));
    kernel.link("link of 8", bpf_link_type::BPF_LINK_TYPE_CGROUP, 8);
    // Left alone: what cannot be judged (no link pin; a link the kernel says nothing of; one
    // that is not a cgroup's), and what is not an installation.
    installation(&root, "9", None);
    installation(&root, "10", Some("link of 10"));
    installation(&root, "11", Some("link of 11"));
    kernel.link("link of 11", bpf_link_type::BPF_LINK_TYPE_NETNS, 0);
    installation(&root, "staging-7-40", Some("link of 7"));

    assert_eq!(prune_under(&root, &Locks::in_dir(locks.path())).expect("pruned"), [gone]);

    let mut left: Vec<String> = fs::read_dir(&root)
        .expect("the root")
        .map(|e| e.expect("an entry").file_name().into_string().expect("utf-8"))
        .collect();
    left.sort();
    assert_eq!(left, ["10", "11", "8", "9", "staging-7-40"]);
    assert!(!lock_file(gone).exists() && lock_file(live).exists());
    let link_pin = |id: &str| root.join(id).join(Program::CGROUP[0].link_pin());
    let expected: Vec<Call> = ["10", "11", "7", "8", "9"]
        .into_iter()
        .flat_map(|id| {
            let get = Call::ObjGet { path: link_pin(id) };
            let info_len = size_of::<aya_obj::generated::bpf_link_info>() as u32;
            let info = (id != "9").then(|| Call::LinkInfo { link: format!("link of {id}"), info_len });
            std::iter::once(get).chain(info)
        })
        .collect();
    // The pruned installation's pins go as an installation's do (`unpin_dir`): every link
    // detached (only link-connect4 is pinned here), then its slot, which it has none of.
    let pruned = root.join("7");
    let mut expected = expected;
    expected.extend(Program::ALL.iter().map(|p| Call::ObjGet { path: pruned.join(p.link_pin()) }));
    expected.push(Call::LinkDetach { link: "link of 7".to_owned() });
    expected.push(Call::ObjGet { path: pruned.join(intercept_common::TASK_MAP) });
    let mut calls = kernel.calls();
    // In the order the directory lists them.
    calls.sort_by_key(|call| format!("{call:?}"));
    expected.sort_by_key(|call| format!("{call:?}"));
    assert_eq!(calls, expected);
}

#[test]
fn pruning_the_last_installation_removes_the_root() {
    let kernel = Kernel::install();
    let bpffs = tempfile::tempdir().expect("a temporary directory");
    let root = bpffs.path().join(PIN_ROOT);
    installation(&root, "7", Some("link of 7"));
    kernel.link("link of 7", bpf_link_type::BPF_LINK_TYPE_CGROUP, 0);
    assert_eq!(prune_under(&root, &TempLocks::default().locks()).expect("pruned"), [7]);
    assert!(!root.exists());
    assert_eq!(prune_under(&root, &TempLocks::default().locks()).expect("nothing to prune"), Vec::<u64>::new());
}

#[test]
fn unpinning_a_directory_detaches_every_link_before_removing_the_pins() {
    let kernel = Kernel::install();
    let root = tempfile::tempdir().expect("a temporary directory");
    let staging = root.path().join("staging-7-40");
    fs::create_dir(&staging).expect("a staging directory");
    for program in Program::ALL {
        fake::pin(&staging.join(program.link_pin()), &format!("link {}", program.name()));
    }
    let pins: Vec<_> = Program::ALL.iter().map(|p| staging.join(p.link_pin())).collect();
    // Each detach sees the pins still there.
    kernel.fail(libc::EIO, move |call| matches!(call, Call::LinkDetach { .. }) && !pins.iter().all(|p| p.exists()));
    unpin_dir(&staging).expect("unpinned");
    assert!(!staging.exists());
    let mut expected: Vec<Call> = Program::ALL
        .iter()
        .flat_map(|p| {
            [Call::ObjGet { path: staging.join(p.link_pin()) }, Call::LinkDetach { link: format!("link {}", p.name()) }]
        })
        .collect();
    // No slot is recorded (no `TASK` pin): there is none to free.
    expected.push(Call::ObjGet { path: staging.join(intercept_common::TASK_MAP) });
    assert_eq!(kernel.calls(), expected);
}

#[test]
fn a_failed_detach_leaves_the_pins() {
    let kernel = Kernel::install();
    let root = tempfile::tempdir().expect("a temporary directory");
    let staging = root.path().join("staging-7-40");
    fs::create_dir(&staging).expect("a staging directory");
    let sk_lookup = staging.join(Program::SkLookup.link_pin());
    fake::pin(&sk_lookup, "link steer_ingress");
    kernel.fail(libc::EIO, |call| matches!(call, Call::LinkDetach { .. }));
    let error = unpin_dir(&staging).expect_err("the detach fails");
    assert!(matches!(&error, Error::Io { path, .. } if *path == sk_lookup), "{error:?}");
    assert!(sk_lookup.exists());
}
