//! `--backend auto`: which backend `apply`, `remove` and `status` use when the user does
//! not say, and why.
//!
//! The order of preference is eBPF, then nftables, then iptables. What is already
//! installed in the namespace comes first, so that a re-apply replaces it in place
//! instead of adding a second interception next to it, and `remove` removes whatever
//! intercept installed with any backend.
//!
//! eBPF is not chosen yet: its backend works on a cgroup rather than a network namespace,
//! and `apply --backend ebpf` is not wired into the command line. Until it is, auto chooses
//! between nftables and iptables, and its reason says so.

use serde::Serialize;

use crate::backend::iptables::Iptables;
use crate::backend::nftables::{self, Nftables};
use crate::netns::{self, Target};
use crate::plan::Backend;

/// What `--backend` accepts for `apply`, `remove` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// The best backend this host supports, or the one already installed (see `docs/backends.md`).
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

/// What auto found out about the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `Err(why not)` when nft is missing or the kernel refuses nftables.
    pub nftables: Result<(), String>,
    /// intercept's nftables table is installed.
    pub nftables_installed: bool,
    /// intercept's iptables rules are installed.
    pub iptables_installed: bool,
}

/// A backend and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub backend: Backend,
    pub reason: String,
}

const EBPF_NOTE: &str = "eBPF is not chosen automatically yet (`apply --backend ebpf` is not wired into the CLI)";

/// The backend `apply` (and `status`) use: the one installed, else the best available.
pub fn choose(facts: &Facts) -> Selection {
    let pick = |backend, reason: String| Selection { backend, reason };
    match facts {
        Facts { nftables_installed: true, nftables: Ok(()), .. } => {
            pick(Backend::Nftables, "intercept's nftables table is installed here".to_owned())
        }
        Facts { iptables_installed: true, .. } => {
            pick(Backend::Iptables, "intercept's iptables rules are installed here".to_owned())
        }
        Facts { nftables: Ok(()), .. } => pick(Backend::Nftables, format!("nft works here; {EBPF_NOTE}")),
        Facts { nftables: Err(why), .. } => pick(Backend::Iptables, format!("nftables is not usable here: {why}")),
    }
}

/// The backends `remove` runs: every one with something installed; when none has, the one
/// `apply` would use (which then finds nothing to remove).
pub fn choose_for_remove(facts: &Facts) -> Vec<Selection> {
    let mut chosen = Vec::new();
    if facts.nftables_installed && facts.nftables.is_ok() {
        chosen.push(Selection {
            backend: Backend::Nftables,
            reason: "intercept's nftables table is installed here".into(),
        });
    }
    if facts.iptables_installed {
        chosen.push(Selection {
            backend: Backend::Iptables,
            reason: "intercept's iptables rules are installed here".into(),
        });
    }
    if chosen.is_empty() {
        chosen.push(choose(facts));
    }
    chosen
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Nftables(nftables::Error),
    #[error(transparent)]
    Iptables(crate::backend::iptables::Error),
}

/// Looks at the namespace: whether nft works, and what intercept installed there with
/// either backend. Reads only.
pub fn probe(target: &Target) -> Result<Facts, Error> {
    let (nftables, nftables_installed) = match Nftables::open(target.clone()) {
        Ok(backend) => (Ok(()), backend.is_installed().map_err(Error::Nftables)?),
        Err(nftables::Error::Netns(e)) => return Err(Error::Netns(e)),
        Err(e) => (Err(e.to_string()), false),
    };
    let iptables_installed = match Iptables::open(target.clone(), None) {
        Ok(backend) => backend.status(None).map_err(Error::Iptables)?.installed,
        Err(crate::backend::iptables::Error::Netns(e)) => return Err(Error::Netns(e)),
        // Without usable iptables nothing can have been installed with them.
        Err(_) => false,
    };
    Ok(Facts { nftables, nftables_installed, iptables_installed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(nftables: Result<(), &str>, nftables_installed: bool, iptables_installed: bool) -> Facts {
        Facts { nftables: nftables.map_err(str::to_owned), nftables_installed, iptables_installed }
    }

    #[test]
    fn what_is_installed_comes_first_then_nftables_then_iptables() {
        let cases = [
            (facts(Ok(()), false, false), Backend::Nftables, "nft works here; eBPF is not chosen automatically yet"),
            (
                facts(Err("nft not found"), false, false),
                Backend::Iptables,
                "nftables is not usable here: nft not found",
            ),
            (facts(Ok(()), false, true), Backend::Iptables, "intercept's iptables rules are installed here"),
            (facts(Ok(()), true, false), Backend::Nftables, "intercept's nftables table is installed here"),
            (facts(Ok(()), true, true), Backend::Nftables, "intercept's nftables table is installed here"),
        ];
        for (facts, backend, reason) in cases {
            let selection = choose(&facts);
            assert_eq!(selection.backend, backend, "{facts:?}");
            assert!(selection.reason.starts_with(reason), "{facts:?}: {}", selection.reason);
        }
    }

    #[test]
    fn remove_takes_everything_installed() {
        let both: Vec<Backend> = choose_for_remove(&facts(Ok(()), true, true)).iter().map(|s| s.backend).collect();
        assert_eq!(both, [Backend::Nftables, Backend::Iptables]);
        let none: Vec<Backend> = choose_for_remove(&facts(Ok(()), false, false)).iter().map(|s| s.backend).collect();
        assert_eq!(none, [Backend::Nftables]);
        let without_nft: Vec<Backend> =
            choose_for_remove(&facts(Err("no nft"), false, false)).iter().map(|s| s.backend).collect();
        assert_eq!(without_nft, [Backend::Iptables]);
    }

    #[test]
    fn choices_name_their_backend() {
        assert_eq!(Choice::Auto.backend(), None);
        assert_eq!(Choice::Nftables.backend(), Some(Backend::Nftables));
        assert_eq!(Choice::Iptables.backend(), Some(Backend::Iptables));
        assert_eq!(Choice::Ebpf.backend(), Some(Backend::Ebpf));
    }
}
