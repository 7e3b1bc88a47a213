//! Running the xtables, ipset and nft commands: the only effects of the iptables and
//! nftables backends.
//!
//! Everything else in those backends computes values from what these commands print, so it is
//! tested with a fake [`Runner`] that records what would run.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;

use crate::lock::{self, Locks};
use crate::netns::{self, Netns};

/// Why a command could not be run; each backend turns it into its own error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{program} not found (looked on PATH and in /usr/sbin, /sbin, /usr/local/sbin): install the \
         `{package}` package, e.g. `apt-get install {package}`, or put {program} on PATH"
    )]
    MissingProgram { program: String, package: &'static str },
    #[error("running `{call}`: {source}")]
    Spawn {
        call: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Lock(#[from] lock::Error),
}

/// One command line and its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<String>,
}

impl Call {
    pub fn new(program: &str, args: &[&str]) -> Call {
        Call { program: program.to_owned(), args: args.iter().map(|a| (*a).to_owned()).collect(), stdin: None }
    }

    pub fn with_stdin(mut self, stdin: String) -> Call {
        self.stdin = Some(stdin);
        self
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        if self.stdin.is_some() {
            f.write_str(" < (transaction)")?;
        }
        Ok(())
    }
}

/// What a command printed, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs commands inside the target network namespace.
pub trait Runner {
    /// Runs `call` to completion. `Err` only when it could not be started; a non-zero exit
    /// is an `Ok` output for the caller to judge.
    fn run(&self, call: &Call) -> Result<Output, Error>;

    /// The contents of a file under `/proc/sys/net` as the target namespace sees it, or
    /// `None` when it does not exist there.
    fn read_sysctl(&self, path: &str) -> Result<Option<String>, Error>;

    /// What the target is, for messages.
    fn describe_target(&self) -> String;

    /// Where the lock files serialising changes to targets live ([`crate::lock`]).
    fn locks(&self) -> Locks;

    /// The target namespace's lock.
    fn lock_key(&self) -> Result<lock::Key, Error>;

    /// The target namespace's lock, held for a change; none for a dry run, which changes
    /// nothing.
    fn lock_for_change(&self, dry_run: bool) -> Result<Option<lock::Held>, Error> {
        if dry_run {
            return Ok(None);
        }
        Ok(Some(self.locks().acquire(&self.lock_key()?, lock::WAIT)?))
    }
}

/// The real thing: commands run in the namespace through [`Netns::command`].
#[derive(Debug, Clone)]
pub struct System {
    netns: Netns,
}

/// Where xtables and ipset live on Debian, Ubuntu and most others, for when PATH lacks sbin.
const SBIN: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

impl System {
    pub fn new(netns: Netns) -> System {
        System { netns }
    }
}

/// Makes the command's process die with intercept (`PR_SET_PDEATHSIG`): an `intercept apply`
/// that is killed takes its `iptables-restore` with it, so nothing changes once it is gone
/// (a transaction the kernel committed stays committed; one it did not, never is).
fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
    // (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: no signal will come.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
            }
            Ok(())
        });
    }
}

/// `program` on PATH or in the usual sbin directories.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Debian package providing `program`, for the "how to get it" part of a message.
pub fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        p if p.starts_with("ipset") => "ipset",
        _ => "iptables",
    }
}

impl Runner for System {
    fn run(&self, call: &Call) -> Result<Output, Error> {
        let path = find_program(&call.program).ok_or_else(|| Error::MissingProgram {
            program: call.program.clone(),
            package: package_of(&call.program),
        })?;
        tracing::debug!(%call, target = %self.netns.target(), "running");
        let mut command = self.netns.command(&path);
        command
            .args(&call.args)
            .stdin(if call.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Untranslated messages: they are parsed for line numbers and shown verbatim.
            .env("LC_ALL", "C");
        die_with_parent(&mut command);
        let spawn_error = |source| Error::Spawn { call: call.to_string(), source };
        let mut child = command.spawn().map_err(spawn_error)?;
        // Feed stdin from a thread so a large transaction cannot deadlock against a child
        // that fills its stdout or stderr pipe before reading all of its input.
        let writer = match (child.stdin.take(), &call.stdin) {
            (Some(mut pipe), Some(input)) => {
                let input = input.clone();
                Some(thread::spawn(move || pipe.write_all(input.as_bytes())))
            }
            _ => None,
        };
        let output = child.wait_with_output().map_err(spawn_error)?;
        if let Some(writer) = writer {
            // A child that exits early closes the pipe; its exit status says why.
            let _ = writer.join();
        }
        Ok(Output {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn read_sysctl(&self, path: &str) -> Result<Option<String>, Error> {
        let path = Path::new("/proc/sys/net").join(path);
        let read = self.netns.run(|| std::fs::read_to_string(&path))?;
        match read {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Spawn { call: format!("read {}", path.display()), source }),
        }
    }

    fn describe_target(&self) -> String {
        self.netns.target().to_string()
    }

    fn locks(&self) -> Locks {
        Locks::system()
    }

    fn lock_key(&self) -> Result<lock::Key, Error> {
        self.netns
            .lock_key()
            .map_err(|source| Error::Spawn { call: format!("stat the {}", self.netns.target()), source })
    }
}

#[cfg(test)]
mod tests {
    use super::package_of;

    #[test]
    fn missing_programs_name_their_debian_package() {
        for (program, package) in [
            ("nft", "nftables"),
            ("ipset", "ipset"),
            ("iptables-nft-restore", "iptables"),
            ("ip6tables-legacy-save", "iptables"),
        ] {
            assert_eq!(package_of(program), package, "{program}");
        }
    }
}
