use std::fs;
use std::os::fd::{AsFd as _, OwnedFd};

use super::super::fake::{self, Call, Kernel};
use super::*;

/// The fds of a cgroup, a network namespace and the loaded programs (named by program), and a
/// staging directory.
struct Attaching {
    staging: tempfile::TempDir,
    cgroup: OwnedFd,
    netns: OwnedFd,
    programs: Vec<(Program, OwnedFd)>,
}

impl Attaching {
    fn new() -> Attaching {
        Attaching {
            staging: tempfile::tempdir().expect("a temporary directory"),
            cgroup: fake::object("cgroup"),
            netns: fake::object("netns"),
            programs: Program::ALL.iter().map(|&p| (p, fake::object(p.name()))).collect(),
        }
    }

    fn run(&self) -> Result<(), Error> {
        link_and_pin(
            self.cgroup.as_fd(),
            self.netns.as_fd(),
            |program| Ok(self.programs.iter().find(|(p, _)| *p == program).expect("every program").1.as_fd()),
            self.staging.path(),
        )
    }

    fn created(&self, program: Program) -> Call {
        Call::LinkCreate {
            prog: program.name().to_owned(),
            target: if program.on_netns() { "netns" } else { "cgroup" }.to_owned(),
            attach_type: program.attach_type(),
            flags: 0,
        }
    }

    fn pinned(&self, program: Program) -> Call {
        Call::ObjPin { object: format!("link {}", program.name()), path: self.staging.path().join(program.link_pin()) }
    }
}

#[test]
fn every_program_is_linked_to_its_hook_before_any_link_is_pinned_in_staging() {
    let kernel = Kernel::install();
    let attaching = Attaching::new();
    attaching.run().expect("attached and pinned");
    let mut expected: Vec<Call> = Program::ALL.iter().map(|&p| attaching.created(p)).collect();
    expected.extend(Program::ALL.iter().map(|&p| attaching.pinned(p)));
    assert_eq!(kernel.calls(), expected);
}

#[test]
fn a_link_refused_pins_nothing_and_says_why() {
    for (errno, refused) in [(libc::EPERM, Program::SkLookup), (libc::EINVAL, Program::Recvmsg6)] {
        let kernel = Kernel::install();
        let attaching = Attaching::new();
        kernel.fail(errno, move |call| matches!(call, Call::LinkCreate { prog, .. } if prog == refused.name()));
        let error = attaching.run().expect_err("a link refused");
        match errno {
            // Without CAP_NET_ADMIN: the capability is named, not the errno.
            libc::EPERM => assert!(matches!(error, Error::MissingCapability { .. }), "{error:?}"),
            _ => assert!(
                matches!(&error, Error::Attach { program, source }
                    if *program == refused.name() && source.raw_os_error() == Some(errno)),
                "{error:?}"
            ),
        }
        let upto = Program::ALL.iter().position(|&p| p == refused).expect("a program") + 1;
        let expected: Vec<Call> = Program::ALL[..upto].iter().map(|&p| attaching.created(p)).collect();
        assert_eq!(kernel.calls(), expected, "{refused:?}");
        assert_eq!(fs::read_dir(attaching.staging.path()).expect("staging").count(), 0, "{refused:?}");
    }
}
