//! The network namespace a backend works in, entered without moving the process.
//!
//! `setns(2)` changes the namespace of the calling thread only. intercept never calls it on
//! a thread it keeps: commands (`iptables-restore`, `ipset`, …) join the namespace between
//! fork and exec ([`Netns::command`]), and in-process work that must see the namespace
//! (reading its `/proc/sys/net`) runs on a short-lived thread of its own ([`Netns::run`]).
//! The namespace is opened once, so a target named by pid stays the same namespace even if
//! that process exits meanwhile; and a command that drops capabilities opens it before it does
//! ([`Target::opened`]).

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;

use nix::sched::{CloneFlags, setns};

use crate::lock;

/// Which network namespace to work in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The namespace intercept runs in.
    Current,
    /// A namespace file: `/run/netns/NAME`, `/proc/PID/ns/net`, a bind mount of either.
    Path(PathBuf),
    /// The namespace of a running process (`/proc/PID/ns/net`).
    Pid(u32),
    /// A namespace file opened ahead of its use ([`Target::opened`]).
    Opened(Opened),
    /// A namespace known to be gone: the daemon's record of a task names one by a path that
    /// names another namespace now (a reused pid). Opening it is [`Error::Open`] with
    /// `NotFound`, as for a namespace file that no longer exists, and nothing is touched.
    Gone(PathBuf),
}

/// A namespace file opened while the process still held the capabilities it started with.
///
/// The kernel lets a process open another process's `/proc/PID/ns/net` (as the ECS agent
/// names a task's namespace to its CNI plugins, `/host/proc/PID/ns/net`) only if it holds
/// every capability that process holds, or CAP_SYS_PTRACE. Once intercept has dropped to the
/// few capabilities its mode needs, it no longer does; entering a descriptor opened before
/// needs CAP_SYS_ADMIN alone.
#[derive(Debug, Clone)]
pub struct Opened {
    /// How the namespace was named (a path or a pid), for messages.
    named: Box<Target>,
    fd: Arc<OwnedFd>,
}

impl PartialEq for Opened {
    fn eq(&self, other: &Opened) -> bool {
        self.named == other.named && Arc::ptr_eq(&self.fd, &other.fd)
    }
}

impl Eq for Opened {}

impl Target {
    /// This target with its namespace file open now, for a command that drops capabilities
    /// before it uses the namespace. A file that cannot be opened now is left to the first
    /// operation, which reports it as it would have anyway, before anything is changed.
    pub fn opened(self) -> Target {
        let path = match &self {
            Target::Path(path) => path.clone(),
            Target::Pid(pid) => Target::pid_path(*pid),
            Target::Current | Target::Opened(_) | Target::Gone(_) => return self,
        };
        match File::open(path) {
            Ok(file) => Target::Opened(Opened { named: Box::new(self), fd: Arc::new(OwnedFd::from(file)) }),
            Err(_) => self,
        }
    }

    /// Whether the namespace is still to be opened through a process (`--netns-pid`), which
    /// may take CAP_SYS_PTRACE.
    pub fn opens_through_a_process(&self) -> bool {
        matches!(self, Target::Pid(_))
    }

    fn pid_path(pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Current => f.write_str("the current network namespace"),
            Target::Path(path) => write!(f, "network namespace {}", path.display()),
            Target::Pid(pid) => write!(f, "network namespace of pid {pid} (/proc/{pid}/ns/net)"),
            Target::Opened(opened) => opened.named.fmt(f),
            Target::Gone(path) => write!(f, "network namespace {} (gone: the path names another now)", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the {target}: {source}")]
    Open {
        target: Target,
        #[source]
        source: io::Error,
    },
    #[error("the {target} is not a network namespace")]
    NotNetns { target: Target },
    #[error(
        "entering the {target} needs CAP_SYS_ADMIN: run intercept as root, or with \
         CAP_SYS_ADMIN added to its capabilities"
    )]
    NoPermission { target: Target },
    #[error("entering the {target}: {source}")]
    Enter {
        target: Target,
        #[source]
        source: io::Error,
    },
}

/// An open network namespace (or the current one).
#[derive(Debug, Clone)]
pub struct Netns {
    target: Target,
    /// Shared with the commands built by [`Netns::command`], which may outlive `self`.
    fd: Option<Arc<OwnedFd>>,
}

impl Netns {
    /// The namespace intercept runs in: commands and [`Netns::run`] stay where they are.
    pub fn current() -> Netns {
        Netns { target: Target::Current, fd: None }
    }

    /// Opens `target` and checks that it is a network namespace intercept may enter.
    pub fn open(target: Target) -> Result<Netns, Error> {
        let path = match &target {
            Target::Current => return Ok(Netns::current()),
            Target::Opened(opened) => {
                let fd = Arc::clone(&opened.fd);
                return Netns::checked(Netns { target, fd: Some(fd) });
            }
            Target::Path(path) => path.clone(),
            Target::Pid(pid) => Target::pid_path(*pid),
            Target::Gone(_) => {
                let source = io::Error::from(io::ErrorKind::NotFound);
                return Err(Error::Open { target, source });
            }
        };
        let file = File::open(&path).map_err(|source| Error::Open { target: target.clone(), source })?;
        Netns::checked(Netns { target, fd: Some(Arc::new(OwnedFd::from(file))) })
    }

    fn checked(netns: Netns) -> Result<Netns, Error> {
        // Entering it once up front turns a wrong path or a missing capability into a clear
        // error before anything is changed.
        netns.run(|| ())?;
        Ok(netns)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A descriptor of the namespace, e.g. to attach an `sk_lookup` program to it: the one
    /// opened from `--netns`/`--netns-pid`, or the current thread's.
    pub fn fd(&self) -> io::Result<OwnedFd> {
        match &self.fd {
            Some(fd) => fd.try_clone(),
            None => File::open("/proc/thread-self/ns/net").map(OwnedFd::from),
        }
    }

    /// The key of this namespace's lock ([`crate::lock`]): the device and inode of its nsfs
    /// file, the same whichever path or pid names it.
    pub fn lock_key(&self) -> io::Result<lock::Key> {
        let metadata = File::from(self.fd()?).metadata()?;
        Ok(lock::Key::netns(metadata.dev(), metadata.ino(), self.target.to_string()))
    }

    /// A command that runs `program` inside this namespace: the child joins it between fork
    /// and exec; the calling process stays where it is.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        if let Some(fd) = &self.fd {
            let fd = Arc::clone(fd);
            // SAFETY: between fork and exec the closure makes a single system call (setns) on
            // a descriptor kept open by the Arc it owns; it allocates nothing.
            unsafe {
                command.pre_exec(move || setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from));
            }
        }
        command
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result.
    /// Sockets created and `/proc/sys/net` files opened by `f` belong to this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let Some(fd) = &self.fd else {
            return Ok(f());
        };
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| self.enter_error(errno))?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn enter_error(&self, errno: nix::errno::Errno) -> Error {
        let target = self.target.clone();
        match errno {
            nix::errno::Errno::EINVAL => Error::NotNetns { target },
            nix::errno::Errno::EPERM => Error::NoPermission { target },
            errno => Error::Enter { target, source: io::Error::from(errno) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_targets_name_their_proc_file() {
        assert_eq!(Target::pid_path(42), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(Target::Pid(42).to_string(), "network namespace of pid 42 (/proc/42/ns/net)");
    }

    #[test]
    fn an_opened_target_keeps_its_name_and_its_namespace() {
        let opened = Target::Pid(std::process::id()).opened();
        assert!(matches!(opened, Target::Opened(_)), "{opened:?}");
        assert!(!opened.opens_through_a_process() && Target::Pid(1).opens_through_a_process());
        let pid = std::process::id();
        assert_eq!(opened.to_string(), format!("network namespace of pid {pid} (/proc/{pid}/ns/net)"));
        assert_eq!(opened.clone().opened(), opened, "opening an opened target again changes nothing");
        // The descriptor is the namespace: the same file whichever way it is reached.
        let nsfs = std::fs::metadata("/proc/self/ns/net").unwrap();
        let fd = match &opened {
            Target::Opened(o) => File::from(o.fd.try_clone().unwrap()).metadata().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!((fd.dev(), fd.ino()), (nsfs.dev(), nsfs.ino()));
    }

    #[test]
    fn a_gone_namespace_is_not_found_whatever_its_path_names() {
        let gone = Target::Gone("/proc/self/ns/net".into());
        let err = Netns::open(gone.clone().opened()).unwrap_err();
        assert!(matches!(&err, Error::Open { source, .. } if source.kind() == io::ErrorKind::NotFound), "{err:?}");
        assert!(gone.to_string().contains("gone"), "{gone}");
    }

    #[test]
    fn a_target_that_cannot_be_opened_now_is_left_to_its_first_use() {
        let missing = Target::Path("/nonexistent/netns".into());
        assert_eq!(missing.clone().opened(), missing);
        assert_eq!(Target::Current.opened(), Target::Current);
        let err = Netns::open(missing.opened()).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_namespace_file_is_an_open_error() {
        let err = Netns::open(Target::Path("/nonexistent/netns".into())).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot open the network namespace /nonexistent/netns"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        // Any readable regular file: setns(2) refuses it with EINVAL (or EPERM without root).
        let err = Netns::open(Target::Path("/proc/self/status".into())).unwrap_err();
        assert!(matches!(err, Error::NotNetns { .. } | Error::NoPermission { .. }), "{err:?}");
    }

    #[test]
    fn the_current_namespace_runs_in_place() {
        let netns = Netns::current();
        assert_eq!(netns.target(), &Target::Current);
        assert_eq!(netns.run(|| 7).unwrap(), 7);
        assert_eq!(netns.command("true").get_program(), "true");
    }

    #[test]
    fn a_namespace_is_locked_by_its_nsfs_inode() {
        let key = Netns::current().lock_key().unwrap();
        let nsfs = std::fs::metadata("/proc/self/ns/net").unwrap();
        assert_eq!(key.name(), format!("netns-{}-{}", nsfs.dev(), nsfs.ino()));
        assert_eq!(key.to_string(), "the current network namespace");
    }
}
