//! `--backend auto`: which backend `apply`, `remove` and `status` use when the user does
//! not say, and why.
//!
//! What is already installed comes first, so that a re-apply replaces it in place instead
//! of adding a second interception next to it, and `remove` removes whatever intercept
//! installed with any backend. Otherwise the order of preference is eBPF (when a cgroup is
//! given with `--cgroup`, and the kernel and the process's capabilities allow it), then
//! nftables (when nft works in the namespace), then iptables.

use std::path::Path;

use aya::programs::ProgramType;
use serde::Serialize;

use crate::backend::ebpf;
use crate::backend::iptables::{self, Iptables};
use crate::backend::nftables::{self, Nftables};
use crate::netns::{self, Target};
use crate::plan::Backend;

/// What `--backend` accepts for `apply`, `remove` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// What is installed, else the best backend this host supports (see `docs/backends.md`).
    Auto,
    /// iptables `nat` rules (behaviour-compatible with the ECS App Mesh CNI plugin).
    Iptables,
    /// eBPF programs and the maps they read.
    Ebpf,
    /// A native nftables table, `inet intercept`, replaced as a whole by one `nft -f` transaction.
    Nftables,
}

impl Choice {
    /// The backend itself, `None` for `auto`.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Choice::Auto => None,
            Choice::Iptables => Some(Backend::Iptables),
            Choice::Ebpf => Some(Backend::Ebpf),
            Choice::Nftables => Some(Backend::Nftables),
        }
    }
}

/// What auto found out about the host, the cgroup and the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `Err(why not)` without `--cgroup`, without the capabilities, or on a kernel without
    /// the program types.
    pub ebpf: Result<(), String>,
    /// intercept's eBPF programs are pinned for the cgroup.
    pub ebpf_installed: bool,
    /// `Err(why not)` when nft is missing or the kernel refuses nftables.
    pub nftables: Result<(), String>,
    /// intercept's nftables table is installed.
    pub nftables_installed: bool,
    /// intercept's iptables rules (its egress chain and the jump to it) are installed.
    pub iptables_installed: bool,
}

/// A backend and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub backend: Backend,
    pub reason: String,
}

/// The backend `apply` and `status` use: the one installed, else the best available.
pub fn choose(facts: &Facts) -> Selection {
    if let Some(installed) = installed(facts).into_iter().next() {
        return installed;
    }
    let pick = |backend, reason: String| Selection { backend, reason };
    match (&facts.ebpf, &facts.nftables) {
        (Ok(()), _) => pick(Backend::Ebpf, "the kernel and intercept's capabilities allow eBPF".to_owned()),
        (Err(no_ebpf), Ok(())) => pick(Backend::Nftables, format!("not eBPF: {no_ebpf}; nft works here")),
        (Err(no_ebpf), Err(no_nft)) => pick(Backend::Iptables, format!("not eBPF: {no_ebpf}; not nftables: {no_nft}")),
    }
}

/// The backends `remove` runs: every one with something installed; when none has, the one
/// `apply` would use (which then finds nothing to remove).
pub fn choose_for_remove(facts: &Facts) -> Vec<Selection> {
    let installed = installed(facts);
    if installed.is_empty() { vec![choose(facts)] } else { installed }
}

fn installed(facts: &Facts) -> Vec<Selection> {
    [
        (facts.ebpf_installed, Backend::Ebpf, "intercept's eBPF programs are pinned for the cgroup"),
        (facts.nftables_installed, Backend::Nftables, "intercept's nftables table is installed here"),
        (facts.iptables_installed, Backend::Iptables, "intercept's iptables rules are installed here"),
    ]
    .into_iter()
    .filter(|(installed, ..)| *installed)
    .map(|(_, backend, reason)| Selection { backend, reason: reason.to_owned() })
    .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--netns/--netns-pid: {0}")]
    Netns(#[from] netns::Error),
    #[error("--cgroup: {0}")]
    Cgroup(#[source] ebpf::Error),
    #[error(transparent)]
    Nftables(nftables::Error),
    #[error(transparent)]
    Iptables(iptables::Error),
}

impl Error {
    /// A `--netns` or `--cgroup` that names nothing usable: bad input, nothing changed.
    pub fn is_bad_target(&self) -> bool {
        matches!(self, Error::Netns(netns::Error::Open { .. } | netns::Error::NotNetns { .. }) | Error::Cgroup(_))
    }
}

/// Looks at the host, the cgroup (when `cgroup` is given) and the namespace: what each
/// backend needs, and what intercept installed with each. Reads only.
pub fn probe(target: &Target, cgroup: Option<&str>, bpffs: Option<&Path>) -> Result<Facts, Error> {
    let (ebpf, ebpf_installed) = match cgroup {
        None => (Err("no --cgroup given (the eBPF backend works on the task's cgroup)".to_owned()), false),
        Some(cgroup) => {
            let target = ebpf::Target::new(cgroup, bpffs).map_err(Error::Cgroup)?;
            (ebpf_usable(), target.pin_dir().is_dir())
        }
    };
    let (nftables, nftables_installed) = match Nftables::open(target.clone()) {
        Ok(backend) => (Ok(()), backend.is_installed().map_err(Error::Nftables)?),
        Err(nftables::Error::Netns(e)) => return Err(Error::Netns(e)),
        Err(e) => (Err(e.to_string()), false),
    };
    let iptables_installed = match Iptables::open(target.clone(), None) {
        Ok(backend) => backend.status(None).map_err(Error::Iptables)?.installed,
        Err(iptables::Error::Netns(e)) => return Err(Error::Netns(e)),
        // Without usable iptables nothing can have been installed with them.
        Err(_) => false,
    };
    Ok(Facts { ebpf, ebpf_installed, nftables, nftables_installed, iptables_installed })
}

/// The capabilities the eBPF backend checks before applying, and the program types it
/// loads.
fn ebpf_usable() -> Result<(), String> {
    ebpf::check_capabilities().map_err(|e| e.to_string())?;
    let program_types = [
        (ProgramType::CgroupSockAddr, "cgroup sock_addr"),
        (ProgramType::SockOps, "sockops"),
        (ProgramType::CgroupSockopt, "cgroup sockopt"),
    ];
    for (program_type, name) in program_types {
        match aya::sys::is_program_supported(program_type) {
            Ok(true) => {}
            Ok(false) => return Err(format!("the kernel does not support {name} eBPF programs")),
            Err(e) => return Err(format!("cannot probe the kernel for {name} eBPF programs: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ebpf: Result<(), &str>, nftables: Result<(), &str>, installed: [bool; 3]) -> Facts {
        Facts {
            ebpf: ebpf.map_err(str::to_owned),
            ebpf_installed: installed[0],
            nftables: nftables.map_err(str::to_owned),
            nftables_installed: installed[1],
            iptables_installed: installed[2],
        }
    }

    const NONE: [bool; 3] = [false, false, false];

    #[test]
    fn what_is_installed_comes_first_then_ebpf_nftables_iptables() {
        let no_cgroup = Err("no --cgroup given");
        let cases = [
            (facts(Ok(()), Ok(()), NONE), Backend::Ebpf, "the kernel and intercept's capabilities allow eBPF"),
            (facts(no_cgroup, Ok(()), NONE), Backend::Nftables, "not eBPF: no --cgroup given; nft works here"),
            (
                facts(no_cgroup, Err("nft not found"), NONE),
                Backend::Iptables,
                "not eBPF: no --cgroup given; not nftables: nft not found",
            ),
            (
                facts(Ok(()), Ok(()), [false, false, true]),
                Backend::Iptables,
                "intercept's iptables rules are installed",
            ),
            (facts(Ok(()), Ok(()), [false, true, true]), Backend::Nftables, "intercept's nftables table is installed"),
            (facts(no_cgroup, Ok(()), [true, true, false]), Backend::Ebpf, "intercept's eBPF programs are pinned"),
        ];
        for (facts, backend, reason) in cases {
            let selection = choose(&facts);
            assert_eq!(selection.backend, backend, "{facts:?}");
            assert!(selection.reason.starts_with(reason), "{facts:?}: {}", selection.reason);
        }
    }

    #[test]
    fn remove_takes_everything_installed() {
        let backends = |facts: Facts| choose_for_remove(&facts).iter().map(|s| s.backend).collect::<Vec<_>>();
        assert_eq!(
            backends(facts(Ok(()), Ok(()), [true, true, true])),
            [Backend::Ebpf, Backend::Nftables, Backend::Iptables]
        );
        assert_eq!(backends(facts(Err("x"), Ok(()), [false, true, true])), [Backend::Nftables, Backend::Iptables]);
        assert_eq!(backends(facts(Err("x"), Ok(()), NONE)), [Backend::Nftables]);
        assert_eq!(backends(facts(Err("x"), Err("no nft"), NONE)), [Backend::Iptables]);
    }

    #[test]
    fn choices_name_their_backend() {
        assert_eq!(Choice::Auto.backend(), None);
        assert_eq!(Choice::Nftables.backend(), Some(Backend::Nftables));
        assert_eq!(Choice::Iptables.backend(), Some(Backend::Iptables));
        assert_eq!(Choice::Ebpf.backend(), Some(Backend::Ebpf));
    }
}
