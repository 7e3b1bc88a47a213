//! Backends: the only code that touches the kernel, behind one interface.
//!
//! Code above this module (the CLI, `verify`, the daemon, the tests) works with a
//! [`Backend`] that [`open`] or [`open_choice`] returned and never learns which one it is:
//! it applies a configuration, removes, and reads a [`Status`] whose counters are keyed by
//! the decision they count ([`counters`]). Each backend turns the configuration into its own
//! plan ([`crate::plan`]) and renders its own reports, so `intercept status` still shows
//! iptables rules, nftables chains or eBPF programs as they are.
//!
//! Adding a backend is one module implementing [`Backend`], a [`Kind`] and its line in
//! [`open`].

pub mod auto;
pub mod counters;
pub mod ebpf;
pub mod exec;
pub mod iptables;
pub mod nftables;
pub mod rules;

use std::fmt;
use std::path::{Path, PathBuf};

use caps::Capability;
use serde::{Deserialize, Serialize};

use crate::config::ProxyConfig;
use crate::netns;
use crate::plan::Format;
use crate::privileges::Requirement;

pub use counters::{Counter, Counters};
pub use ebpf::DEFAULT_BPFFS;
pub use ebpf::task::Options as EbpfOptions;
pub use iptables::{Mode as IptablesMode, Options as IptablesOptions};

/// The backends, as `--backend` and task files name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// iptables `nat` rules (behaviour-compatible with the ECS App Mesh CNI plugin).
    Iptables,
    /// eBPF programs and the maps they read.
    Ebpf,
    /// a native nftables table, `inet intercept`, replaced as a whole by one `nft -f` transaction.
    Nftables,
}

/// What one installation belongs to: two tasks in one place would share (and fight over)
/// one installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The task's cgroup (its programs follow the cgroup's processes).
    Cgroup,
    /// The task's network namespace (its rules live in the namespace's tables).
    Netns,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Ebpf, Kind::Iptables, Kind::Nftables];

    /// As `--backend` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Iptables => "iptables",
            Kind::Ebpf => "ebpf",
            Kind::Nftables => "nftables",
        }
    }

    /// As reports name it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ebpf => "eBPF",
            other => other.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn scope(self) -> Scope {
        match self {
            Kind::Ebpf => Scope::Cgroup,
            Kind::Iptables | Kind::Nftables => Scope::Netns,
        }
    }

    /// What this backend would install for `config`, without installing anything
    /// (`intercept plan`).
    pub fn render_plan(self, config: &ProxyConfig, format: Format) -> String {
        use crate::plan::{EbpfPlan, IptablesPlan, NftablesPlan};
        match (self, format) {
            (Kind::Iptables, Format::Text) => IptablesPlan::new(config).render_text(),
            (Kind::Iptables, Format::Json) => IptablesPlan::new(config).render_json(),
            (Kind::Ebpf, Format::Text) => EbpfPlan::new(config).render_text(),
            (Kind::Ebpf, Format::Json) => EbpfPlan::new(config).render_json(),
            (Kind::Nftables, Format::Text) => NftablesPlan::new(config).render_text(),
            (Kind::Nftables, Format::Json) => NftablesPlan::new(config).render_json(),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `--backend` accepts for `apply`, `remove`, `status` and `verify`: a backend, or
/// `auto` (see [`auto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Choice {
    Auto,
    Use(Kind),
}

impl clap::ValueEnum for Choice {
    fn value_variants<'a>() -> &'a [Self] {
        &[Choice::Auto, Choice::Use(Kind::Iptables), Choice::Use(Kind::Ebpf), Choice::Use(Kind::Nftables)]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            Choice::Auto => Some(
                clap::builder::PossibleValue::new("auto")
                    .help("What is installed, else the best backend this host supports (see `docs/backends.md`)"),
            ),
            Choice::Use(kind) => kind.to_possible_value(),
        }
    }
}

/// Where a backend works: a task's network namespace and, for the backends that work on
/// processes rather than packets, its cgroup; and the options only some backends take.
#[derive(Debug, Clone)]
pub struct Target {
    pub netns: netns::Target,
    /// The task's cgroup: a path under the cgroup2 mount or relative to it, or `auto` (the
    /// parent of intercept's own cgroup). Required by the eBPF backend.
    pub cgroup: Option<String>,
    pub options: Options,
}

/// The options of one backend each, typed as that backend defines them; the other backends
/// ignore them.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub ebpf: EbpfOptions,
    pub iptables: IptablesOptions,
}

impl Target {
    /// The current network namespace, nothing else given.
    pub fn netns(netns: netns::Target) -> Target {
        Target { netns, cgroup: None, options: Options::default() }
    }
}

/// Removes what the backends keep on the host for every task whose cgroup no longer exists:
/// the eBPF pins under `bpffs` ([`ebpf::prune`]). The ids of those cgroups.
pub fn prune_ended(bpffs: &Path) -> Result<Vec<u64>, Error> {
    ebpf::prune(bpffs).map_err(|e| Error::Ebpf(e.into()))
}

/// Forgets what the backends keep on the host for a task whose cgroup has been removed: the
/// pins under `bpffs` of the eBPF programs attached to cgroup `cgroup_id`, which would keep
/// them loaded. Whether there were any.
pub fn forget_removed_cgroup(bpffs: &Path, cgroup_id: u64) -> Result<bool, Error> {
    ebpf::remove_pins_of_removed_cgroup(bpffs, cgroup_id).map_err(|e| Error::Ebpf(e.into()))
}

/// How to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyOptions {
    /// Compute what would change and change nothing (backends that cannot refuse it).
    pub dry_run: bool,
    /// Follow the programs' debug events (eBPF only; others refuse it).
    pub events: bool,
}

/// What a backend needs to work.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    /// Capabilities that applying needs, besides entering the namespace (which
    /// [`crate::privileges`] adds).
    pub capabilities: Vec<Requirement>,
    /// Capabilities kept when held, for work that may turn out to be needed.
    pub optional: Vec<Capability>,
    /// Programs the backend runs.
    pub tools: Vec<&'static str>,
    /// Kernel features the backend uses.
    pub kernel: Vec<Feature>,
}

/// A kernel feature a backend uses, and how to tell whether this kernel has it.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    pub name: &'static str,
    /// `Err(why not)` when the running kernel lacks it.
    pub probe: fn() -> Result<(), String>,
}

impl Requirements {
    /// What this process and host lack to meet these, one line each: capabilities, programs
    /// not found, kernel features.
    pub fn unmet(&self) -> Vec<String> {
        let mut out = Vec::new();
        match crate::privileges::effective() {
            Ok(held) => out.extend(
                crate::privileges::missing(&self.capabilities, &held)
                    .iter()
                    .map(|r| format!("missing capability {}: it is needed for {}", r.capability, r.needed_for)),
            ),
            Err(e) => out.push(e.to_string()),
        }
        for tool in &self.tools {
            if exec::find_program(tool).is_none() {
                out.push(format!("{tool} not found (package {})", exec::package_of(tool)));
            }
        }
        out.extend(self.kernel.iter().filter_map(|feature| (feature.probe)().err()));
        out
    }
}

/// A backend's own account of an operation, rendered as the backend words it.
pub trait Report {
    fn render(&self, format: Format) -> String;
}

/// What an `apply` or a `remove` did (or, dry, would do).
pub struct Change {
    /// Something was changed; `false` when everything already was as it should be.
    pub changed: bool,
    /// For the operator, besides the report (e.g. a half that could not be installed).
    pub warnings: Vec<String>,
    pub report: Box<dyn Report>,
    /// The programs' events, with [`ApplyOptions::events`]: keep it alive while reading.
    pub events: Option<ebpf::Logs>,
}

/// What is installed, whatever the backend.
pub struct Status {
    pub kind: Kind,
    /// Everything the backend installs is in place (and attached).
    pub installed: bool,
    /// Whether what is installed is exactly what the configuration asks for; `None` when no
    /// configuration was given.
    pub matches: Option<bool>,
    /// Why it is not installed or does not match, one sentence each.
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
    /// The connections counted, by decision: every counter the eBPF programs keep; for the
    /// rule backends, the packet counters of the installed rules that are the configuration's
    /// (each `nat` rule sees a connection's first packet only), so only with a configuration.
    pub counters: Counters,
    /// With a configuration that has ingress: whether its installed part is in place, and
    /// what was seen. Inbound connections cannot be probed from inside the task.
    pub ingress: Option<(bool, String)>,
    /// The cgroup whose processes are intercepted, for backends that work on one: probes of
    /// the workload must run in it.
    pub cgroup: Option<PathBuf>,
    /// What "installed" means for this backend, in a few words.
    pub installation: &'static str,
    /// The exit code of `intercept status`: 0 installed, whole and matching, else 1.
    pub exit_code: i32,
    pub report: Box<dyn Report>,
}

/// One backend, bound to its target.
pub trait Backend {
    fn kind(&self) -> Kind;

    /// What applying `config` here needs (without one: what any configuration needs).
    fn requirements(&self, config: Option<&ProxyConfig>) -> Requirements;

    /// Whether this backend can work here; `Err` says why not. Changes nothing.
    fn usable(&self) -> Result<(), String> {
        let unmet = self.requirements(None).unmet();
        if unmet.is_empty() { Ok(()) } else { Err(unmet.join("; ")) }
    }

    /// Whether anything of intercept's that this backend installs is here, whole or not:
    /// found cheaply, for `--backend auto`.
    fn present(&self) -> Result<bool, Error>;

    /// Whether this backend takes `options`; `Err` (bad input) says why not. [`Backend::apply`]
    /// checks it too; callers that wait before applying check it first. Only a backend that
    /// loads programs has their events to follow.
    fn accepts(&self, options: ApplyOptions) -> Result<(), Error> {
        if options.events {
            return Err(Error::Refused("--bpf-log is for --backend ebpf".to_owned()));
        }
        Ok(())
    }

    /// Installs `config`, or brings what is installed to it; nothing changes when it is
    /// installed already. Waits for any other change to the same target to finish first.
    fn apply(&self, config: &ProxyConfig, options: ApplyOptions) -> Result<Change, Error>;

    /// Removes everything of intercept's that this backend installed here; nothing to
    /// remove is not an error.
    fn remove(&self, dry_run: bool) -> Result<Change, Error>;

    /// What is installed, and whether it matches `config` when one is given.
    fn status(&self, config: Option<&ProxyConfig>) -> Result<Status, Error>;
}

/// The backend `kind` for `target`. Opening touches nothing: the first operation reports a
/// target that names nothing usable, before it changes anything, so that a caller can check
/// the capabilities the backend needs ([`Backend::requirements`]) first.
pub fn open(kind: Kind, target: &Target) -> Result<Box<dyn Backend>, Error> {
    Ok(match kind {
        Kind::Iptables => Box::new(iptables::Handle::open(target)),
        Kind::Nftables => Box::new(nftables::Handle::open(target)),
        Kind::Ebpf => Box::new(ebpf::task::Handle::open(target)?),
    })
}

/// A backend [`open_choice`] opened, and why `auto` chose it.
pub struct Opened {
    pub backend: Box<dyn Backend>,
    /// `Some` when `auto` chose.
    pub reason: Option<String>,
}

/// What the opened backends are for: `auto` chooses differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `apply`, `status`, `verify`: the backend installed, else the best available.
    Use,
    /// `remove`: every backend with something installed.
    Remove,
}

/// Opens what `choice` names: the backend itself, or what `auto` chooses for `purpose`
/// (one backend, except for [`Purpose::Remove`]).
pub fn open_choice(choice: Choice, target: &Target, purpose: Purpose) -> Result<Vec<Opened>, Error> {
    let chosen = match choice {
        Choice::Use(kind) => vec![(kind, None)],
        Choice::Auto => {
            let facts = auto::probe(target)?;
            let selections =
                if purpose == Purpose::Remove { auto::choose_for_remove(&facts) } else { vec![auto::choose(&facts)] };
            selections.into_iter().map(|s| (s.backend, Some(s.reason))).collect()
        }
    };
    chosen.into_iter().map(|(kind, reason)| Ok(Opened { backend: open(kind, target)?, reason })).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A target option names nothing usable: bad input, nothing was changed.
    #[error("{option}: {message}")]
    BadTarget {
        option: &'static str,
        message: String,
        /// The namespace or cgroup does not exist (any more): whatever was installed there
        /// went with it.
        gone: bool,
    },
    /// An option this backend does not take, or a combination it refuses: bad input.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Netns(netns::Error),
    #[error(transparent)]
    Iptables(iptables::Error),
    #[error(transparent)]
    Nftables(nftables::Error),
    #[error(transparent)]
    Ebpf(ebpf::task::Error),
}

impl Error {
    /// Bad input: the target or an option; nothing was changed.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::BadTarget { .. } | Error::Refused(_))
    }

    /// The target no longer exists: for a removal, nothing is left to remove.
    pub fn target_gone(&self) -> bool {
        matches!(self, Error::BadTarget { gone: true, .. })
    }

    /// A namespace that cannot be opened, as the target option it came from.
    pub fn netns(e: netns::Error) -> Error {
        match e {
            netns::Error::Open { ref source, .. } => Error::BadTarget {
                option: "--netns/--netns-pid",
                gone: source.kind() == std::io::ErrorKind::NotFound,
                message: e.to_string(),
            },
            netns::Error::NotNetns { .. } => {
                Error::BadTarget { option: "--netns/--netns-pid", gone: false, message: e.to_string() }
            }
            other => Error::Netns(other),
        }
    }
}

/// A namespace that cannot be opened is the target's fault; everything else is the backend's.
impl From<iptables::Error> for Error {
    fn from(e: iptables::Error) -> Error {
        match e {
            iptables::Error::Netns(e) => Error::netns(e),
            other => Error::Iptables(other),
        }
    }
}

/// As for iptables.
impl From<nftables::Error> for Error {
    fn from(e: nftables::Error) -> Error {
        match e {
            nftables::Error::Netns(e) => Error::netns(e),
            other => Error::Nftables(other),
        }
    }
}

/// Renders a serialisable report as every backend does for `--format json`.
pub(crate) fn json<T: Serialize>(value: &T) -> String {
    crate::plan::to_json(value)
}

/// The running kernel's release (`uname -r`), for messages about what it lacks.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}

/// Every backend's kernel features and whether the running kernel has each, for `intercept
/// check --kernel-features`: `(backend, feature, Err(why not))`.
pub fn kernel_features() -> Vec<(Kind, &'static str, Result<(), String>)> {
    let target = Target { cgroup: Some("auto".to_owned()), ..Target::netns(netns::Target::Current) };
    Kind::ALL
        .into_iter()
        .filter_map(|kind| open(kind, &target).ok())
        .flat_map(|backend| {
            let kind = backend.kind();
            backend.requirements(None).kernel.into_iter().map(move |f| (kind, f.name, (f.probe)()))
        })
        .collect()
}

/// How a check words a part it looked for.
pub(crate) fn found(yes: bool) -> &'static str {
    if yes { "(present)" } else { "(MISSING)" }
}

/// The exit code of `intercept status`, whatever the backend: 0 when installed and matching
/// the configuration (if one was given), else 1.
pub(crate) fn status_exit_code(installed: bool, matches: Option<bool>) -> i32 {
    i32::from(!(installed && matches != Some(false)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    /// The capabilities each backend asks for, by variant and configuration.
    #[test]
    fn each_backend_needs_its_minimal_capabilities() {
        let target = |mode| Target {
            cgroup: Some("/ecs/task".to_owned()),
            options: Options { iptables: IptablesOptions { mode }, ..Options::default() },
            ..Target::netns(netns::Target::Current)
        };
        let seed = testdata::seed_config();
        let many = ProxyConfig {
            egress_ignored_ips: (0..20u8).map(|i| format!("10.{}.0.0/16", 2 * i).parse().unwrap()).collect(),
            ..seed.clone()
        };
        let cases: [(Kind, Option<iptables::Mode>, &ProxyConfig, &[&str]); 6] = [
            (Kind::Ebpf, None, &seed, &["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]),
            (Kind::Nftables, None, &seed, &["CAP_NET_ADMIN"]),
            (Kind::Iptables, None, &seed, &["CAP_NET_ADMIN"]),
            (Kind::Iptables, Some(iptables::Mode::Nft), &seed, &["CAP_NET_ADMIN"]),
            (Kind::Iptables, Some(iptables::Mode::Legacy), &seed, &["CAP_NET_ADMIN", "CAP_NET_RAW"]),
            (Kind::Iptables, None, &many, &["CAP_NET_ADMIN", "CAP_NET_RAW"]),
        ];
        for (kind, mode, config, want) in cases {
            let requirements = open(kind, &target(mode)).unwrap().requirements(Some(config));
            let names: Vec<String> = requirements.capabilities.iter().map(|r| r.capability.to_string()).collect();
            assert_eq!(names, want, "{kind} {mode:?}");
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.name()));
        }
        assert_eq!(Kind::from_name("bpf"), None);
    }

    #[test]
    fn the_ebpf_backend_needs_a_cgroup_and_refuses_a_dry_run() {
        let without = open(Kind::Ebpf, &Target::netns(netns::Target::Current)).err().unwrap();
        assert!(without.is_bad_input() && without.to_string().contains("needs --cgroup"), "{without}");
        let target = Target { cgroup: Some("/ecs/task".to_owned()), ..Target::netns(netns::Target::Current) };
        let ebpf = open(Kind::Ebpf, &target).unwrap();
        assert!(ebpf.accepts(ApplyOptions { dry_run: true, events: false }).unwrap_err().is_bad_input());
        let nft = open(Kind::Nftables, &target).unwrap();
        assert!(nft.accepts(ApplyOptions { dry_run: true, events: false }).is_ok());
        assert!(nft.accepts(ApplyOptions { dry_run: false, events: true }).unwrap_err().is_bad_input());
    }
}
