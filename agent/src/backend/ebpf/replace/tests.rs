use std::fs;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use aya_obj::generated::BPF_F_REPLACE;
use intercept_common::MAP_NAMES;

use super::super::fake::{self, Call, Kernel};
use super::*;

/// An installation in a fake bpffs: every link pinned in `dir` (`link <program>`, running the
/// program of id 100 + its index in [`Program::ALL`]), an empty staging directory, and this
/// build's programs (`new <program>`).
struct Installation {
    _root: tempfile::TempDir,
    dir: PathBuf,
    staging: PathBuf,
    links: Vec<(Program, u32)>,
    programs: Vec<(Program, OwnedFd)>,
}

impl Installation {
    fn new() -> Installation {
        let root = tempfile::tempdir().expect("a temporary directory");
        let dir = root.path().join("7");
        let staging = root.path().join("replacing-7-1");
        fs::create_dir(&dir).expect("the installation's directory");
        fs::create_dir(&staging).expect("the staging directory");
        let mut links = Vec::new();
        let mut programs = Vec::new();
        for (id, program) in (100..).zip(Program::ALL) {
            fake::pin(&dir.join(program.link_pin()), &link(program));
            links.push((program, id));
            programs.push((program, fake::object(&new(program))));
        }
        Installation { _root: root, dir, staging, links, programs }
    }

    fn switch(&self) -> Result<(), Error> {
        switch_links(&self.dir, &self.staging, &self.links, |program| {
            let (_, fd) = self.programs.iter().find(|(p, _)| *p == program).expect("every program");
            Ok(fd.as_fd())
        })
    }

    fn old(&self, program: Program) -> String {
        let (_, id) = self.links.iter().find(|(p, _)| *p == program).expect("every program");
        format!("prog {id}")
    }

    /// The commands that switch `program`'s link to its new program and pin it in staging.
    fn switched(&self, program: Program) -> [Call; 4] {
        let (_, id) = self.links.iter().find(|(p, _)| *p == program).expect("every program");
        [
            Call::ObjGet { path: self.dir.join(program.link_pin()) },
            Call::ProgGetFdById { id: *id },
            update(program, &new(program), &self.old(program)),
            Call::ObjPin { object: link(program), path: self.staging.join(program.link_pin()) },
        ]
    }
}

fn link(program: Program) -> String {
    format!("link {}", program.name())
}

fn new(program: Program) -> String {
    format!("new {}", program.name())
}

fn update(program: Program, new: &str, old: &str) -> Call {
    Call::LinkUpdate { link: link(program), new: new.to_owned(), old: old.to_owned(), flags: BPF_F_REPLACE }
}

#[test]
fn switching_moves_each_link_to_its_new_program_in_order_and_pins_it_in_staging() {
    let kernel = Kernel::install();
    let installation = Installation::new();
    installation.switch().expect("every link switched");
    let expected: Vec<Call> = REPLACE_ORDER.iter().flat_map(|&p| installation.switched(p)).collect();
    assert_eq!(kernel.calls(), expected);
    for program in Program::ALL {
        let pinned = fs::read_to_string(installation.staging.join(program.link_pin())).expect("pinned in staging");
        assert_eq!(pinned, link(program), "{program:?}");
    }
}

#[test]
fn a_failed_switch_switches_back_the_links_switched_before_it_last_first() {
    let kernel = Kernel::install();
    let installation = Installation::new();
    let failing = REPLACE_ORDER[2];
    kernel.fail(libc::EBUSY, move |call| matches!(call, Call::LinkUpdate { new: n, .. } if *n == new(failing)));
    let error = installation.switch().expect_err("the third switch fails");
    assert!(
        matches!(&error, Error::Io { path, source, .. }
            if *path == installation.dir.join(failing.link_pin()) && source.raw_os_error() == Some(libc::EBUSY)),
        "{error:?}"
    );
    let mut expected: Vec<Call> = REPLACE_ORDER[..2].iter().flat_map(|&p| installation.switched(p)).collect();
    expected.extend_from_slice(&installation.switched(failing)[..3]);
    for &program in REPLACE_ORDER[..2].iter().rev() {
        expected.push(update(program, &installation.old(program), &new(program)));
    }
    assert_eq!(kernel.calls(), expected);
}

#[test]
fn a_link_switched_but_not_pinned_in_staging_is_switched_back_too() {
    let kernel = Kernel::install();
    let installation = Installation::new();
    let failing = REPLACE_ORDER[1];
    let pin = installation.staging.join(failing.link_pin());
    let at = pin.clone();
    kernel.fail(libc::ENOSPC, move |call| matches!(call, Call::ObjPin { path, .. } if *path == at));
    let error = installation.switch().expect_err("the second pin fails");
    assert!(matches!(&error, Error::Io { path, .. } if *path == pin), "{error:?}");
    let mut expected: Vec<Call> = REPLACE_ORDER[..2].iter().flat_map(|&p| installation.switched(p)).collect();
    for &program in REPLACE_ORDER[..2].iter().rev() {
        expected.push(update(program, &installation.old(program), &new(program)));
    }
    assert_eq!(kernel.calls(), expected);
}

#[test]
fn a_switch_without_its_new_program_switches_back_and_names_the_program() {
    let kernel = Kernel::install();
    let installation = Installation::new();
    let missing = REPLACE_ORDER[1];
    let error = switch_links(&installation.dir, &installation.staging, &installation.links, |program| {
        if program == missing {
            return Err(Error::MissingProgram(program.name()));
        }
        let (_, fd) = installation.programs.iter().find(|(p, _)| *p == program).expect("every program");
        Ok(fd.as_fd())
    })
    .expect_err("a program is missing");
    assert!(matches!(error, Error::MissingProgram(name) if name == missing.name()), "{error:?}");
    let first = REPLACE_ORDER[0];
    let mut expected: Vec<Call> = installation.switched(first).to_vec();
    expected.extend_from_slice(&installation.switched(missing)[..2]);
    expected.push(update(first, &installation.old(first), &new(first)));
    assert_eq!(kernel.calls(), expected);
}

#[test]
fn a_link_pinned_nowhere_is_an_incomplete_installation_before_any_switch() {
    let kernel = Kernel::install();
    let installation = Installation::new();
    let first = REPLACE_ORDER[0];
    let links: Vec<(Program, u32)> = installation.links.iter().copied().filter(|(p, _)| *p != first).collect();
    let none = |_| -> Result<BorrowedFd<'_>, Error> { unreachable!("no program is asked for") };
    let error = switch_links(&installation.dir, &installation.staging, &links, none).expect_err("incomplete");
    assert!(matches!(&error, Error::Incomplete { missing, .. } if *missing == first.link_pin()), "{error:?}");
    assert_eq!(kernel.calls(), []);
}

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
