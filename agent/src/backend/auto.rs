//! `--backend auto`: which backend `apply`, `remove`, `status` and `verify` use when the user
//! does not say, and why.
//!
//! What is already installed comes first, so that a re-apply replaces it in place instead
//! of adding a second interception next to it, and `remove` removes whatever intercept
//! installed with any backend. Otherwise the order of preference is eBPF (when a cgroup is
//! given with `--cgroup`, and the kernel and the process's capabilities allow it), then
//! nftables (when nft works in the namespace), then iptables.

use super::{Error, Kind, Target, open};

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
    /// Something of intercept's iptables rules or sets is installed.
    pub iptables_installed: bool,
}

/// A backend and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub backend: Kind,
    pub reason: String,
}

/// The backend `apply` and `status` use: the one installed, else the best available.
pub fn choose(facts: &Facts) -> Selection {
    if let Some(installed) = installed(facts).into_iter().next() {
        return installed;
    }
    let pick = |backend, reason: String| Selection { backend, reason };
    match (&facts.ebpf, &facts.nftables) {
        (Ok(()), _) => pick(Kind::Ebpf, "the kernel and intercept's capabilities allow eBPF".to_owned()),
        (Err(no_ebpf), Ok(())) => pick(Kind::Nftables, format!("not eBPF: {no_ebpf}; nft works here")),
        (Err(no_ebpf), Err(no_nft)) => pick(Kind::Iptables, format!("not eBPF: {no_ebpf}; not nftables: {no_nft}")),
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
        (facts.ebpf_installed, Kind::Ebpf, "intercept's eBPF programs are pinned for the cgroup"),
        (facts.nftables_installed, Kind::Nftables, "intercept's nftables table is installed here"),
        (facts.iptables_installed, Kind::Iptables, "intercept's iptables rules are installed here"),
    ]
    .into_iter()
    .filter(|(installed, ..)| *installed)
    .map(|(_, backend, reason)| Selection { backend, reason: reason.to_owned() })
    .collect()
}

/// Looks at the host, the cgroup (when one is given) and the namespace: whether each backend
/// can work here, and what intercept installed with each. Reads only; a target that names
/// nothing usable is an error.
pub fn probe(target: &Target) -> Result<Facts, Error> {
    let (ebpf, ebpf_installed) = match target.cgroup {
        None => (Err("no --cgroup given (the eBPF backend works on the task's cgroup)".to_owned()), false),
        Some(_) => {
            let backend = open(Kind::Ebpf, target)?;
            let installed = backend.present()?;
            (backend.usable(), installed)
        }
    };
    let backend = open(Kind::Nftables, target)?;
    let nftables = backend.usable();
    let nftables_installed = nftables.is_ok() && backend.present()?;
    let iptables_installed = open(Kind::Iptables, target)?.present()?;
    Ok(Facts { ebpf, ebpf_installed, nftables, nftables_installed, iptables_installed })
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
            (facts(Ok(()), Ok(()), NONE), Kind::Ebpf, "the kernel and intercept's capabilities allow eBPF"),
            (facts(no_cgroup, Ok(()), NONE), Kind::Nftables, "not eBPF: no --cgroup given; nft works here"),
            (
                facts(no_cgroup, Err("nft not found"), NONE),
                Kind::Iptables,
                "not eBPF: no --cgroup given; not nftables: nft not found",
            ),
            (facts(Ok(()), Ok(()), [false, false, true]), Kind::Iptables, "intercept's iptables rules are installed"),
            (facts(Ok(()), Ok(()), [false, true, true]), Kind::Nftables, "intercept's nftables table is installed"),
            (facts(no_cgroup, Ok(()), [true, true, false]), Kind::Ebpf, "intercept's eBPF programs are pinned"),
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
        assert_eq!(backends(facts(Ok(()), Ok(()), [true, true, true])), [Kind::Ebpf, Kind::Nftables, Kind::Iptables]);
        assert_eq!(backends(facts(Err("x"), Ok(()), [false, true, true])), [Kind::Nftables, Kind::Iptables]);
        assert_eq!(backends(facts(Err("x"), Ok(()), NONE)), [Kind::Nftables]);
        assert_eq!(backends(facts(Err("x"), Err("no nft"), NONE)), [Kind::Iptables]);
    }
}
