//! The daemon's effectful edge: what it observes on the host and the actions it runs, through
//! the same backend interface as `intercept apply|remove|status`.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::{self, ApplyOptions, Backend, Counters, EbpfOptions, Kind, Scope, Target};
use crate::cgroup;
use crate::config::ProxyConfig;
use crate::netns;
use crate::readiness::{self, Observation};

use super::reconcile::Installed;
use super::spec::TaskSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backend(#[from] backend::Error),
    #[error("the cgroup path {cgroup}: {source}")]
    Cgroup {
        cgroup: String,
        #[source]
        source: cgroup::Error,
    },
    #[error("removing the pins of the ended task of cgroup {cgroup}: {source}")]
    Pins {
        cgroup: String,
        #[source]
        source: backend::Error,
    },
}

/// What the daemon observes on the host and the actions it runs there: the [`Host`], or a
/// recording fake in the daemon's unit tests.
pub trait HostOps: std::fmt::Debug + Send + Sync {
    /// Whether the task's cgroup exists; an error when the path names something that is not
    /// a cgroup under the cgroup2 mount.
    fn cgroup_exists(&self, cgroup: &str) -> Result<bool, Error>;

    /// The id of the spec's cgroup, for a backend that works on one.
    fn cgroup_id(&self, spec: &TaskSpec) -> Option<u64>;

    /// The inode of the network namespace a path names now, if it names one.
    fn netns_inode(&self, path: &Path) -> Option<u64>;

    /// Installs the spec, or brings its installation up to date in place (idempotent).
    fn apply(&self, spec: &TaskSpec) -> Result<(), Error>;

    /// Removes what was installed (idempotent), in `netns` ([`netns_for_removal`]). A cgroup
    /// or network namespace that no longer exists took the installation with it; what the
    /// backend left of it (the eBPF pins) is removed all the same.
    fn remove(&self, installed: &Installed, netns: &netns::Target) -> Result<(), Error>;

    /// Removes what the eBPF backend left of ended tasks (pins of cgroups that are gone) and
    /// returns their cgroup ids: once per pass, for every task at once.
    fn prune(&self) -> Result<Vec<u64>, Error>;

    /// One look at the task's proxy admin, from inside the task's network namespace (the
    /// daemon's own without one: host networking), given at most `timeout`.
    fn proxy(&self, spec: &TaskSpec, timeout: Duration) -> Observation;

    /// Whether the installation is still whole: programs pinned and attached, rules in place.
    fn intact(&self, installed: &Installed) -> Result<bool, Error>;

    /// A task's decision counters (see [`backend::Status::counters`]: the rule backends count
    /// only with the task's configuration); `None` when nothing is installed.
    fn counters(&self, installed: &Installed, config: Option<&ProxyConfig>) -> Result<Option<Counters>, Error>;
}

/// Where a removal works: the namespace the record names, or [`netns::Target::Gone`] when the
/// path names another namespace now (a task from the engine is named by `/proc/<pid>/ns/net`,
/// and its pid may be another process's by now, whose namespace is left alone).
pub fn netns_for_removal(installed: &Installed, current_inode: Option<u64>) -> netns::Target {
    match (&installed.netns, installed.netns_inode) {
        (Some(path), Some(inode)) if current_inode != Some(inode) => netns::Target::Gone(path.clone()),
        _ => netns_target(installed.netns.as_deref()),
    }
}

/// The host the daemon works on: its bpffs for the eBPF backend's pins.
#[derive(Debug, Clone)]
pub struct Host {
    pub bpffs: PathBuf,
}

impl HostOps for Host {
    fn cgroup_exists(&self, cgroup: &str) -> Result<bool, Error> {
        match cgroup::resolve(cgroup) {
            Ok(_) => Ok(true),
            Err(cgroup::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(Error::Cgroup { cgroup: cgroup.to_owned(), source }),
        }
    }

    fn cgroup_id(&self, spec: &TaskSpec) -> Option<u64> {
        (spec.backend.scope() == Scope::Cgroup)
            .then(|| cgroup::resolve(&spec.cgroup).and_then(|path| cgroup::id(&path)).ok())
            .flatten()
    }

    fn netns_inode(&self, path: &Path) -> Option<u64> {
        fs::metadata(path).ok().map(|m| m.ino())
    }

    fn apply(&self, spec: &TaskSpec) -> Result<(), Error> {
        self.open(spec.backend, &spec.cgroup, netns_target(spec.netns.as_deref()))?
            .apply(&spec.config, ApplyOptions::default())?;
        Ok(())
    }

    fn remove(&self, installed: &Installed, netns: &netns::Target) -> Result<(), Error> {
        // The rules of a namespace that is gone went with it.
        if matches!(netns, netns::Target::Gone(_)) && installed.backend.scope() == Scope::Netns {
            return Ok(());
        }
        match self.open(installed.backend, &installed.cgroup, netns.clone()) {
            Ok(backend) => match backend.remove(false) {
                Err(e) if e.target_gone() => {}
                result => result.map(drop)?,
            },
            Err(Error::Backend(e)) if e.target_gone() => {}
            Err(e) => return Err(e),
        }
        // A cgroup just removed still holds its programs for a moment: its pins go now.
        if let Some(id) = installed.cgroup_id.filter(|_| !self.cgroup_exists(&installed.cgroup).unwrap_or(true)) {
            backend::forget_removed_cgroup(&self.bpffs, id)
                .map_err(|source| Error::Pins { cgroup: installed.cgroup.clone(), source })?;
        }
        Ok(())
    }

    fn prune(&self) -> Result<Vec<u64>, Error> {
        Ok(backend::prune_ended(&self.bpffs)?)
    }

    fn proxy(&self, spec: &TaskSpec, timeout: Duration) -> Observation {
        let url = &spec.proxy_admin_url;
        netns::Netns::open(netns_target(spec.netns.as_deref()))
            .and_then(|netns| netns.run(|| readiness::fetch(url, timeout)))
            .unwrap_or_else(|e| Observation::NotReady(format!("the task's network namespace: {e}")))
    }

    fn intact(&self, installed: &Installed) -> Result<bool, Error> {
        let status = self.open_installed(installed)?.status(None)?;
        Ok(status.exit_code == 0)
    }

    fn counters(&self, installed: &Installed, config: Option<&ProxyConfig>) -> Result<Option<Counters>, Error> {
        let status = self.open_installed(installed)?.status(config)?;
        Ok(status.installed.then_some(status.counters))
    }
}

impl Host {
    fn open_installed(&self, installed: &Installed) -> Result<Box<dyn Backend>, Error> {
        self.open(installed.backend, &installed.cgroup, netns_target(installed.netns.as_deref()))
    }

    fn open(&self, kind: Kind, cgroup: &str, netns: netns::Target) -> Result<Box<dyn Backend>, Error> {
        let target = Target {
            cgroup: Some(cgroup.to_owned()),
            options: backend::Options {
                ebpf: EbpfOptions { bpffs: Some(self.bpffs.clone()), pruned_by_caller: true },
                ..backend::Options::default()
            },
            ..Target::netns(netns)
        };
        Ok(backend::open(kind, &target)?)
    }
}

/// The namespace a task names: its path, or the daemon's own without one (host networking).
fn netns_target(netns: Option<&Path>) -> netns::Target {
    netns.map_or(netns::Target::Current, |path| netns::Target::Path(path.to_owned()))
}
