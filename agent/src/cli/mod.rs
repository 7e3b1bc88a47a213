//! The `intercept` subcommands: each module parses its arguments and runs one command through
//! the library, returning the exit code its report decides or a [`Failure`] that carries its
//! own. `main` turns either into the process exit, in one place.

pub mod apply;
pub mod check;
pub mod cni;
pub mod daemon;
pub mod remove;
pub mod status;
pub mod verify;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use intercept::backend::{self, Choice, EbpfOptions, IptablesMode, IptablesOptions, Opened, Purpose};
use intercept::config::{ConfigArgs, ConfigErrors, Validated, validate};
use intercept::netns;
use intercept::plan::Format;

/// Why a command did not do its work, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// The input or the target is wrong (the text says how); nothing was changed. Exit 2.
    BadInput(String),
    /// The operation failed. Exit 1.
    Failed(anyhow::Error),
}

/// A command's exit code when it did its work (its report's: `status` 1 when not installed,
/// `verify` 3 when interception is not working), or why it did not.
pub type Outcome = Result<ExitCode, Failure>;

impl Failure {
    pub fn bad_input(message: impl std::fmt::Display) -> Failure {
        Failure::BadInput(format!("error: {message}"))
    }

    /// Says what went wrong on stderr, and the exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::BadInput(message) => {
                eprintln!("{message}");
                eprintln!("nothing was changed");
                ExitCode::from(2)
            }
            Failure::Failed(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        }
    }
}

impl From<ConfigErrors> for Failure {
    fn from(errors: ConfigErrors) -> Failure {
        Failure::BadInput(errors.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }
}

impl From<backend::Error> for Failure {
    fn from(e: backend::Error) -> Failure {
        if e.is_bad_input() { Failure::bad_input(e) } else { Failure::Failed(e.into()) }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Failed(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Failed(e.into())
    }
}

/// Where `apply`, `remove`, `status` and `verify` work, and how.
#[derive(Debug, Args)]
pub struct TargetArgs {
    #[arg(long, value_enum)]
    backend: Choice,
    /// Work in the network namespace at PATH (`/run/netns/NAME`, `/proc/PID/ns/net`, a bind
    /// mount of one); default: the current network namespace
    #[arg(long, value_name = "PATH", conflicts_with = "netns_pid")]
    netns: Option<PathBuf>,
    /// Work in the network namespace of process PID (`/proc/PID/ns/net`)
    #[arg(long, value_name = "PID")]
    netns_pid: Option<u32>,
    /// iptables backend: which xtables variant to use; default: the one that already holds
    /// rules in the namespace, else nft
    #[arg(long, value_enum, value_name = "legacy|nft")]
    iptables_mode: Option<IptablesMode>,
    /// eBPF backend (required with it): the task's cgroup, a path under the cgroup2 mount or
    /// relative to it, or `auto` (the parent of intercept's own cgroup)
    #[arg(long, value_name = "PATH|auto")]
    cgroup: Option<String>,
    /// eBPF backend: the bpffs directory for the pins, an existing directory, mounted if it
    /// is not a bpffs; default /sys/fs/bpf
    #[arg(long, value_name = "PATH")]
    bpffs: Option<PathBuf>,
}

impl TargetArgs {
    fn netns(&self) -> netns::Target {
        match (&self.netns, self.netns_pid) {
            (Some(path), _) => netns::Target::Path(path.clone()),
            (None, Some(pid)) => netns::Target::Pid(pid),
            (None, None) => netns::Target::Current,
        }
    }

    /// Where to work, the namespace opened now: `apply` drops capabilities before it enters
    /// it, and could not open another process's namespace afterwards ([`netns::Opened`]).
    pub fn target(&self) -> backend::Target {
        backend::Target {
            netns: self.netns().opened(),
            cgroup: self.cgroup.clone(),
            options: backend::Options {
                ebpf: EbpfOptions { bpffs: self.bpffs.clone(), pruned_by_caller: false },
                iptables: IptablesOptions { mode: self.iptables_mode },
            },
        }
    }

    /// The backends `--backend` names for `purpose`; what `auto` chose, and why, is said on
    /// stderr.
    pub fn open(&self, purpose: Purpose) -> Result<Vec<Opened>, Failure> {
        self.open_at(&self.target(), purpose)
    }

    fn open_at(&self, target: &backend::Target, purpose: Purpose) -> Result<Vec<Opened>, Failure> {
        let opened = backend::open_choice(self.backend, target, purpose)?;
        for o in &opened {
            if let Some(reason) = &o.reason {
                eprintln!("backend auto: {} ({reason})", o.backend.kind());
            }
        }
        Ok(opened)
    }

    /// The one backend `apply`, `status` and `verify` work with, at `target` (from
    /// [`TargetArgs::target`]).
    pub fn open_one(&self, target: &backend::Target) -> Result<Box<dyn backend::Backend>, Failure> {
        let mut opened = self.open_at(target, Purpose::Use)?;
        Ok(opened.remove(0).backend)
    }
}

/// Reads and validates the configuration; the warnings go to stderr.
pub fn validated(config: &ConfigArgs) -> Result<Validated, Failure> {
    let validated = validate(&config.read()?.raw)?;
    warn(&validated);
    Ok(validated)
}

pub fn warn(validated: &Validated) {
    for warning in &validated.warnings {
        eprintln!("{warning}");
    }
}

/// Prints a backend's report: its warnings on stderr, the report on stdout.
pub fn print_report(warnings: &[String], report: &dyn backend::Report, format: Format) -> Result<(), Failure> {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    print(&report.render(format))
}

/// Writes all of `text`; a closed pipe (`intercept plan | head`) is not an error worth a
/// panic, but it is still reported.
pub fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// A report's exit code as the process's.
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
