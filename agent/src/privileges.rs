//! Least privilege: the capabilities each mode needs, a check at start that names every
//! missing one and what it is for, and a drop of all the others once they are known.
//!
//! The minimal sets (docs/deploy-ecs.md lists them for operators):
//!
//! | what                                   | capabilities                                  |
//! |----------------------------------------|-----------------------------------------------|
//! | `apply --backend iptables` (nft)       | NET_ADMIN                                     |
//! | `apply --backend iptables` (legacy)    | NET_ADMIN, NET_RAW                            |
//! | `apply --backend iptables` (ipsets)    | NET_ADMIN, NET_RAW                            |
//! | `apply --backend nftables`             | NET_ADMIN                                     |
//! | `apply --backend ebpf`                 | BPF, PERFMON, NET_ADMIN                       |
//! | any of them with `--netns`/`--netns-pid` | + SYS_ADMIN                                 |
//! | … with `--netns-pid`, unless the namespace opens before the drop | + SYS_PTRACE           |
//! | … eBPF, optional (kept when held)      | SYS_ADMIN (mount the bpffs), SYS_PTRACE and DAC_READ_SEARCH (take a running proxy's listener) |
//! | `intercept daemon`                     | [`DAEMON`]: all of the above, SYS_ADMIN standing in for BPF and PERFMON |
//!
//! Capabilities belong to a thread, not to a process: [`restrict_to`] and [`drop_all`] change
//! the calling thread (and what the threads and commands it starts afterwards inherit), so a
//! caller runs them before it starts threads of its own.

use std::fmt;

use caps::{CapSet, Capability, CapsHashSet};

use crate::netns::Target;

/// A capability a mode needs, and why; the reason is part of the error that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub capability: Capability,
    pub needed_for: &'static str,
}

const fn need(capability: Capability, needed_for: &'static str) -> Requirement {
    Requirement { capability, needed_for }
}

pub const NET_ADMIN_RULES: Requirement =
    need(Capability::CAP_NET_ADMIN, "reading and changing the namespace's netfilter rules and ipsets");
pub const NET_RAW_LEGACY: Requirement =
    need(Capability::CAP_NET_RAW, "iptables-legacy, which reads and writes its tables through a raw socket");
pub const NET_RAW_SETS: Requirement = need(
    Capability::CAP_NET_RAW,
    "iptables' set match (more than 8 ignored networks per family go into an ipset), which looks the set up \
     through a raw socket",
);
pub const SYS_ADMIN_NETNS: Requirement =
    need(Capability::CAP_SYS_ADMIN, "entering the task's network namespace (--netns/--netns-pid, setns(2))");
pub const SYS_PTRACE_NETNS_PID: Requirement = need(
    Capability::CAP_SYS_PTRACE,
    "opening /proc/PID/ns/net (--netns-pid) of a process of another user or with capabilities intercept does not \
     hold",
);

/// What `apply --backend ebpf` needs. CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON,
/// as it does in the kernel.
pub const EBPF: [Requirement; 3] = [
    need(Capability::CAP_BPF, "creating eBPF maps and loading eBPF programs"),
    need(
        Capability::CAP_NET_ADMIN,
        "loading and attaching cgroup networking (sock_addr, sockops, sockopt) and sk_lookup programs",
    ),
    need(
        Capability::CAP_PERFMON,
        "loading the programs: the verifier allows their variable stack offsets (compiler-generated memset) only \
         with it",
    ),
];

/// eBPF: taking the proxy's ingress listener when it was listening before the programs were
/// attached (`pidfd_getfd(2)` on a process of another user), as after waiting for it to be
/// LIVE. Without it the proxy must restart before inbound connections reach it.
pub const SYS_PTRACE_ADOPT: Requirement = need(
    Capability::CAP_SYS_PTRACE,
    "taking the ingress listener of a proxy that was already running (pidfd_getfd(2)), as when eBPF is installed \
     once the proxy is LIVE",
);

/// eBPF, with [`SYS_PTRACE_ADOPT`]: listing the descriptors of a proxy that runs as another
/// user (`/proc/PID/fd` is its owner's, mode 0500).
pub const DAC_READ_SEARCH_ADOPT: Requirement = need(
    Capability::CAP_DAC_READ_SEARCH,
    "finding the ingress listener of a proxy that was already running among its descriptors (/proc/PID/fd)",
);

/// What `intercept daemon` needs: every backend, in the tasks' network namespaces, installed
/// once the proxy is live. It needs CAP_SYS_ADMIN anyway (setns), and the kernel accepts that
/// in place of CAP_BPF and CAP_PERFMON, so those two would add nothing.
pub const DAEMON: [Requirement; 6] = [
    EBPF[1],
    NET_RAW_LEGACY,
    SYS_ADMIN_NETNS,
    need(
        Capability::CAP_SYS_ADMIN,
        "mounting the bpffs when it is not mounted yet, and loading eBPF programs (in place of CAP_BPF and \
         CAP_PERFMON)",
    ),
    SYS_PTRACE_ADOPT,
    DAC_READ_SEARCH_ADOPT,
];

/// The capabilities `apply` must hold: the backend's, SYS_ADMIN to enter another network
/// namespace, and SYS_PTRACE to open it through a process (`--netns-pid`) when it is not open
/// already ([`Target::opened`]).
pub fn apply_requirements(backend: &[Requirement], netns: &Target) -> Vec<Requirement> {
    let mut out = backend.to_vec();
    if *netns != Target::Current {
        out.push(SYS_ADMIN_NETNS);
    }
    if netns.opens_through_a_process() {
        out.push(SYS_PTRACE_NETNS_PID);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Missing(Missing),
    #[error("reading this process's capabilities: {0}")]
    Read(#[source] caps::errors::CapsError),
    #[error("dropping capabilities ({set}): {source}")]
    Drop {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
}

/// The requirements a process does not meet, all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub Vec<Requirement>);

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(|r| r.capability.to_string()).collect();
        write!(f, "missing capabilit{} {}", if self.0.len() == 1 { "y" } else { "ies" }, names.join(", "))?;
        for requirement in &self.0 {
            write!(f, "\n  {}: needed for {}", requirement.capability, requirement.needed_for)?;
        }
        let short: Vec<String> = self.0.iter().map(|r| format!("\"{}\"", short_name(r.capability))).collect();
        write!(
            f,
            "\nrun intercept as root, or grant them (a container: --cap-add; an ECS task definition: \
             linuxParameters.capabilities.add [{}])",
            short.join(", ")
        )
    }
}

/// `NET_ADMIN` for `CAP_NET_ADMIN`: how Docker and ECS name capabilities.
pub fn short_name(capability: Capability) -> String {
    capability.to_string().trim_start_matches("CAP_").to_owned()
}

/// Whether `held` satisfies `capability`, with the kernel's stand-ins: SYS_ADMIN for BPF and
/// PERFMON (the bpf(2) checks accept either).
pub fn satisfied(held: &CapsHashSet, capability: Capability) -> bool {
    held.contains(&capability)
        || (matches!(capability, Capability::CAP_BPF | Capability::CAP_PERFMON)
            && held.contains(&Capability::CAP_SYS_ADMIN))
}

/// The requirements `held` does not meet, each capability once, in the order given.
pub fn missing(required: &[Requirement], held: &CapsHashSet) -> Vec<Requirement> {
    let mut out: Vec<Requirement> = Vec::new();
    for requirement in required {
        if !satisfied(held, requirement.capability) && !out.iter().any(|r| r.capability == requirement.capability) {
            out.push(*requirement);
        }
    }
    out
}

/// The calling thread's effective capabilities.
pub fn effective() -> Result<CapsHashSet, Error> {
    caps::read(None, CapSet::Effective).map_err(Error::Read)
}

/// Whether the calling thread holds `capability` (or its kernel stand-in); `true` when the
/// set cannot be read, so the operation itself says what is wrong.
pub fn holds(capability: Capability) -> bool {
    effective().map(|held| satisfied(&held, capability)).unwrap_or(true)
}

/// Checks that the calling thread holds every requirement; the error names each missing
/// capability and what it is for.
pub fn check(required: &[Requirement]) -> Result<(), Error> {
    let missing = missing(required, &effective()?);
    if missing.is_empty() { Ok(()) } else { Err(Error::Missing(Missing(missing))) }
}

/// The capabilities to keep: the required ones, and the `optional` ones that are held (the
/// kernel stand-ins included: a process holding SYS_ADMIN instead of BPF keeps SYS_ADMIN).
pub fn keep_set(required: &[Requirement], optional: &[Capability], held: &CapsHashSet) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    for requirement in required {
        if held.contains(&requirement.capability) {
            keep.insert(requirement.capability);
        } else if satisfied(held, requirement.capability) {
            keep.insert(Capability::CAP_SYS_ADMIN);
        }
    }
    keep.extend(optional.iter().copied().filter(|c| held.contains(c)));
    keep
}

/// Drops every capability not in `keep` from the calling thread: from the bounding set when
/// the thread may (it holds CAP_SETPCAP), and from the ambient, inheritable, effective and
/// permitted sets. Commands started afterwards (iptables, nft) get at most `keep`.
pub fn restrict_to(keep: &CapsHashSet) -> Result<(), Error> {
    let drop_error = |set| move |source| Error::Drop { set, source };
    let held = effective()?;
    if held.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(Error::Read)?;
        for capability in bounding.difference(keep) {
            caps::drop(None, CapSet::Bounding, *capability).map_err(drop_error("bounding"))?;
        }
    }
    let ambient = caps::read(None, CapSet::Ambient).map_err(Error::Read)?;
    for capability in ambient.difference(keep) {
        caps::drop(None, CapSet::Ambient, *capability).map_err(drop_error("ambient"))?;
    }
    // Effective first: it must stay a subset of permitted at every step.
    for (set, name) in
        [(CapSet::Effective, "effective"), (CapSet::Inheritable, "inheritable"), (CapSet::Permitted, "permitted")]
    {
        let current = caps::read(None, set).map_err(Error::Read)?;
        let reduced: CapsHashSet = current.intersection(keep).copied().collect();
        if reduced != current {
            caps::set(None, set, &reduced).map_err(drop_error(name))?;
        }
    }
    Ok(())
}

/// Drops every capability: what a mode calls once its work is done and it keeps running
/// (`apply --bpf-log` following the programs' events).
pub fn drop_all() -> Result<(), Error> {
    restrict_to(&CapsHashSet::new())
}

/// [`check`], then [`restrict_to`] the required and held optional capabilities: what a mode
/// calls at start. The daemon calls it with [`DAEMON`].
pub fn check_and_restrict(required: &[Requirement], optional: &[Capability]) -> Result<(), Error> {
    check(required)?;
    raise_memlock();
    restrict_to(&keep_set(required, optional, &effective()?))
}

/// Lifts RLIMIT_MEMLOCK while CAP_SYS_RESOURCE may still be held: kernels before 5.11
/// (Amazon Linux 2's 5.10) charge eBPF maps and programs to it, and its usual 64 KiB holds
/// none of intercept's. Later kernels charge the memory cgroup instead and ignore it. Without
/// the capability the limit stays, and creating the maps says so.
fn raise_memlock() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
        return;
    }
    // Without the capability the soft limit can still rise to the hard one.
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn entering_another_namespace_adds_its_capabilities() {
        let names = |netns: &Target| -> Vec<String> {
            apply_requirements(&[NET_ADMIN_RULES], netns).iter().map(|r| r.capability.to_string()).collect()
        };
        assert_eq!(names(&Target::Current), ["CAP_NET_ADMIN"]);
        assert_eq!(names(&Target::Path("/run/netns/t".into())), ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
        assert_eq!(names(&Target::Pid(7)), ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        // Opened already: entering it is all that is left.
        assert_eq!(names(&Target::Pid(std::process::id()).opened()), ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
    }

    #[test]
    fn missing_names_each_capability_once_with_the_kernel_stand_ins() {
        let ebpf = apply_requirements(&EBPF, &Target::Path("/run/netns/t".into()));
        assert_eq!(missing(&ebpf, &set(&[Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN])), vec![]);
        let without_perfmon = set(&[Capability::CAP_BPF, Capability::CAP_NET_ADMIN]);
        let names: Vec<Capability> = missing(&ebpf, &without_perfmon).iter().map(|r| r.capability).collect();
        assert_eq!(names, [Capability::CAP_PERFMON, Capability::CAP_SYS_ADMIN]);
        let daemon: Vec<Capability> = missing(&DAEMON, &CapsHashSet::new()).iter().map(|r| r.capability).collect();
        assert_eq!(
            daemon,
            [
                Capability::CAP_NET_ADMIN,
                Capability::CAP_NET_RAW,
                Capability::CAP_SYS_ADMIN,
                Capability::CAP_SYS_PTRACE,
                Capability::CAP_DAC_READ_SEARCH
            ]
        );
    }

    #[test]
    fn the_error_names_the_capabilities_their_purpose_and_how_to_grant_them() {
        let text = Missing(vec![EBPF[2], SYS_ADMIN_NETNS]).to_string();
        assert_eq!(
            text,
            "missing capabilities CAP_PERFMON, CAP_SYS_ADMIN\n  CAP_PERFMON: needed for loading the programs: the \
             verifier allows their variable stack offsets (compiler-generated memset) only with it\n  \
             CAP_SYS_ADMIN: needed for entering the task's network namespace (--netns/--netns-pid, setns(2))\nrun \
             intercept as root, or grant them (a container: --cap-add; an ECS task definition: \
             linuxParameters.capabilities.add [\"PERFMON\", \"SYS_ADMIN\"])"
        );
        assert!(Missing(vec![NET_RAW_LEGACY]).to_string().starts_with("missing capability CAP_NET_RAW\n"));
    }

    #[test]
    fn the_keep_set_is_what_is_required_and_held_optional_ones() {
        let root = caps::all();
        let ebpf = apply_requirements(&EBPF, &Target::Current);
        let adopt = [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];
        assert_eq!(
            keep_set(&ebpf, &adopt, &root),
            set(&[
                Capability::CAP_BPF,
                Capability::CAP_NET_ADMIN,
                Capability::CAP_PERFMON,
                Capability::CAP_SYS_ADMIN,
                Capability::CAP_SYS_PTRACE,
                Capability::CAP_DAC_READ_SEARCH
            ])
        );
        // SYS_ADMIN held instead of BPF and PERFMON is what is kept for them.
        let stand_in = set(&[Capability::CAP_SYS_ADMIN, Capability::CAP_NET_ADMIN, Capability::CAP_CHOWN]);
        assert_eq!(keep_set(&ebpf, &[], &stand_in), set(&[Capability::CAP_SYS_ADMIN, Capability::CAP_NET_ADMIN]));
        let rules = apply_requirements(&[NET_ADMIN_RULES], &Target::Current);
        let raw = [Capability::CAP_NET_RAW];
        assert_eq!(keep_set(&rules, &raw, &set(&[Capability::CAP_NET_ADMIN])), set(&[Capability::CAP_NET_ADMIN]));
        assert_eq!(keep_set(&rules, &raw, &root), set(&[Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW]));
    }

    #[test]
    fn short_names_are_dockers() {
        assert_eq!(short_name(Capability::CAP_NET_ADMIN), "NET_ADMIN");
        assert_eq!(short_name(Capability::CAP_BPF), "BPF");
    }
}
