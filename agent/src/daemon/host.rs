//! The daemon's effectful edge: what it observes on the host and the actions it runs, through
//! the same backend interface as `intercept apply|remove|status`.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::{self, ApplyOptions, Backend, Counters, Kind, Scope, Target};
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
        source: backend::ebpf::Error,
    },
}

/// The host the daemon works on: its bpffs for the eBPF backend's pins.
#[derive(Debug, Clone)]
pub struct Host {
    pub bpffs: PathBuf,
}

impl Host {
    /// Whether the task's cgroup exists; an error when the path names something that is not
    /// a cgroup under the cgroup2 mount.
    pub fn cgroup_exists(&self, cgroup: &str) -> Result<bool, Error> {
        match cgroup::resolve(cgroup) {
            Ok(_) => Ok(true),
            Err(cgroup::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(Error::Cgroup { cgroup: cgroup.to_owned(), source }),
        }
    }

    /// Installs the spec, or brings its installation up to date in place (idempotent).
    pub fn apply(&self, spec: &TaskSpec) -> Result<(), Error> {
        self.open(spec.backend, &spec.cgroup, spec.netns.as_deref())?.apply(&spec.config, ApplyOptions::default())?;
        Ok(())
    }

    /// Removes what was installed (idempotent). A cgroup or network namespace that no longer
    /// exists took the installation with it; what the backend left of it (the eBPF pins) is
    /// removed all the same.
    pub fn remove(&self, installed: &Installed) -> Result<(), Error> {
        // A namespace named by a process (`/proc/<pid>/ns/net`, a task from the engine) that
        // is not the one installed in any more went with the task: its pid may be another
        // process's by now, whose namespace is left alone.
        let current = installed.netns.as_deref().and_then(|p| fs::metadata(p).ok()).map(|m| m.ino());
        let netns = match installed.netns_inode {
            Some(inode) if current != Some(inode) => Some(Path::new(GONE)),
            _ => installed.netns.as_deref(),
        };
        if netns == Some(Path::new(GONE)) && installed.backend.scope() == Scope::Netns {
            return Ok(());
        }
        match self.open(installed.backend, &installed.cgroup, netns) {
            Ok(backend) => match backend.remove(false) {
                Err(e) if e.target_gone() => {}
                result => result.map(drop)?,
            },
            Err(Error::Backend(e)) if e.target_gone() => {}
            Err(e) => return Err(e),
        }
        // A cgroup just removed still holds its programs for a moment: its pins go now.
        if let Some(id) = installed.cgroup_id.filter(|_| !self.cgroup_exists(&installed.cgroup).unwrap_or(true)) {
            backend::ebpf::remove_pins_of_removed_cgroup(&self.bpffs, id)
                .map_err(|source| Error::Pins { cgroup: installed.cgroup.clone(), source })?;
        }
        Ok(())
    }

    /// The id of the spec's cgroup, for a backend that works on one.
    pub fn cgroup_id(&self, spec: &TaskSpec) -> Option<u64> {
        (spec.backend.scope() == Scope::Cgroup)
            .then(|| cgroup::resolve(&spec.cgroup).and_then(|path| cgroup::id(&path)).ok())
            .flatten()
    }

    /// One look at the task's proxy admin, from inside the task's network namespace (the
    /// daemon's own without one: host networking), given at most `timeout`.
    pub fn proxy(&self, spec: &TaskSpec, timeout: Duration) -> Observation {
        let url = &spec.proxy_admin_url;
        netns::Netns::open(netns_target(spec.netns.as_deref()))
            .and_then(|netns| netns.run(|| readiness::fetch(url, timeout)))
            .unwrap_or_else(|e| Observation::NotReady(format!("the task's network namespace: {e}")))
    }

    /// Whether the installation is still whole: programs pinned and attached, rules in place.
    pub fn intact(&self, installed: &Installed) -> Result<bool, Error> {
        let status = self.open(installed.backend, &installed.cgroup, installed.netns.as_deref())?.status(None)?;
        Ok(status.exit_code == 0)
    }

    /// A task's decision counters (see [`backend::Status::counters`]: the rule backends count
    /// only with the task's configuration); `None` when nothing is installed.
    pub fn counters(&self, installed: &Installed, config: Option<&ProxyConfig>) -> Result<Option<Counters>, Error> {
        let status = self.open(installed.backend, &installed.cgroup, installed.netns.as_deref())?.status(config)?;
        Ok(status.installed.then_some(status.counters))
    }

    fn open(&self, kind: Kind, cgroup: &str, netns: Option<&Path>) -> Result<Box<dyn Backend>, Error> {
        let target = Target {
            cgroup: Some(cgroup.to_owned()),
            bpffs: Some(self.bpffs.clone()),
            ..Target::netns(netns_target(netns))
        };
        Ok(backend::open(kind, &target)?)
    }
}

/// A namespace path that names none (pid 0 has no `/proc` entry): what a removal is given for
/// a namespace that is gone.
const GONE: &str = "/proc/0/ns/net";

fn netns_target(netns: Option<&Path>) -> netns::Target {
    netns.map_or(netns::Target::Current, |path| netns::Target::Path(path.to_owned()))
}
