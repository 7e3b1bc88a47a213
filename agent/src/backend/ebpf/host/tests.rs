use std::os::fd::AsFd as _;

use aya_obj::generated::bpf_link_type;

use super::super::fake::{self, Call, Kernel};
use super::*;

#[test]
fn waiting_for_running_programs_updates_a_throwaway_map_in_map() {
    let kernel = Kernel::install();
    wait_for_running_programs().expect("waited");
    let (array, array_of_maps) =
        (bpf_map_type::BPF_MAP_TYPE_ARRAY as u32, bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS as u32);
    let create = |map_type, inner: Option<&str>| Call::MapCreate {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner: inner.map(str::to_owned),
        name: "intercept_sync".to_owned(),
    };
    let (inner, outer) = (format!("map type {array}"), format!("map type {array_of_maps}"));
    assert_eq!(
        kernel.calls(),
        [
            create(array, None),
            create(array_of_maps, Some(&inner)),
            Call::MapUpdateElem { map: outer, key: 0, value: inner, flags: 0 },
        ]
    );
}

#[test]
fn a_refused_wait_is_an_error() {
    let kernel = Kernel::install();
    kernel.fail(libc::EPERM, |call| matches!(call, Call::MapUpdateElem { .. }));
    let error = wait_for_running_programs().expect_err("the update is refused");
    assert!(matches!(&error, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EPERM)), "{error:?}");
}

#[test]
fn the_attached_programs_are_those_the_kernel_counts() {
    let kernel = Kernel::install();
    let cgroup = tempfile::tempdir().expect("a temporary directory");
    kernel.attach(&[41, 42]);
    assert_eq!(attached_programs(cgroup.path(), 10).expect("queried"), [41, 42]);
    let target = cgroup.path().to_string_lossy().into_owned();
    assert_eq!(kernel.calls(), [Call::ProgQuery { target, attach_type: 10, query_flags: 0, room: 64 }]);
}

#[test]
fn a_link_reports_its_target_only_for_its_own_type() {
    let kernel = Kernel::install();
    kernel.link("cgroup link", bpf_link_type::BPF_LINK_TYPE_CGROUP, 0x1_0000_0007);
    kernel.link("netns link", bpf_link_type::BPF_LINK_TYPE_NETNS, 4026531840);
    let (cgroup, netns) = (fake::object("cgroup link"), fake::object("netns link"));
    assert_eq!(link_cgroup_id(cgroup.as_fd()).expect("a cgroup link"), 0x1_0000_0007);
    assert_eq!(link_netns_ino(netns.as_fd()).expect("a netns link"), 4026531840);
    for error in [link_cgroup_id(netns.as_fd()).map(drop), link_netns_ino(cgroup.as_fd()).map(drop)] {
        assert_eq!(error.expect_err("another type").kind(), io::ErrorKind::InvalidData);
    }
}

#[test]
fn a_pin_and_its_opening_name_the_path() {
    let kernel = Kernel::install();
    let bpffs = tempfile::tempdir().expect("a temporary directory");
    let path = bpffs.path().join("link-connect4");
    let link = fake::object("link connect4");
    obj_pin(link.as_fd(), &path).expect("pinned");
    let opened = obj_get(&path).expect("opened");
    link_detach(opened.as_fd()).expect("detached");
    assert_eq!(
        kernel.calls(),
        [
            Call::ObjPin { object: "link connect4".to_owned(), path: path.clone() },
            Call::ObjGet { path },
            Call::LinkDetach { link: "link connect4".to_owned() },
        ]
    );
}

#[test]
fn a_directory_of_another_file_system_is_no_bpffs() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = fs::canonicalize(dir.path()).expect("canonical");
    assert!(!is_bpffs(&path).expect("statfs"));
    assert!(!is_bpffs(Path::new("/")).expect("statfs"));
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("missing");
    let error = is_bpffs(&missing).expect_err("no such path");
    assert!(matches!(&error, Error::Io { op: "statfs", path, .. } if *path == missing), "{error:?}");
}
