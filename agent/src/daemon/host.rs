//! The daemon's effectful edge: what it observes on the host and the actions it runs, through
//! the same library calls as `intercept apply|remove|status`.

use std::io;
use std::path::{Path, PathBuf};

use crate::backend::ebpf::{self, ApplyOptions, Counter, Target as EbpfTarget, cli};
use crate::backend::iptables::{self, Iptables};
use crate::backend::nftables::{self, Nftables};
use crate::netns;
use crate::plan::{Backend, IptablesPlan, NftablesPlan};

use super::reconcile::Installed;
use super::spec::TaskSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebpf(#[from] ebpf::Error),
    #[error(transparent)]
    EbpfMode(#[from] cli::Error),
    #[error(transparent)]
    Iptables(#[from] iptables::Error),
    #[error(transparent)]
    Nftables(#[from] nftables::Error),
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
        match ebpf::Target::new(cgroup, Some(&self.bpffs)) {
            Ok(_) => Ok(true),
            Err(ebpf::Error::Io { op: "open cgroup", source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Installs the spec, or brings its installation up to date in place (idempotent).
    pub fn apply(&self, spec: &TaskSpec) -> Result<(), Error> {
        let target = netns_target(spec.netns.as_deref());
        match spec.backend {
            Backend::Ebpf => {
                cli::apply(&self.ebpf_request(&spec.cgroup, target), &spec.config, ApplyOptions::default())?;
            }
            Backend::Iptables => {
                Iptables::open(target, None)?.apply(&IptablesPlan::new(&spec.config), false)?;
            }
            Backend::Nftables => {
                Nftables::open(target)?.apply(&NftablesPlan::new(&spec.config), false)?;
            }
        }
        Ok(())
    }

    /// Removes what was installed (idempotent). A cgroup or network namespace that no longer
    /// exists took the installation with it: only the eBPF pins are left, and pruned.
    pub fn remove(&self, installed: &Installed) -> Result<(), Error> {
        match installed.backend {
            Backend::Ebpf => {
                // The programs and pins only: the daemon installs no iptables rule in eBPF mode,
                // so `cli::remove`'s cleanup of an older intercept's ingress rules is not run.
                match EbpfTarget::new(&installed.cgroup, Some(&self.bpffs)) {
                    Ok(target) => {
                        ebpf::remove(&target)?;
                    }
                    Err(ebpf::Error::Io { op: "open cgroup", source, .. })
                        if source.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                ebpf::prune(&self.bpffs)?;
            }
            Backend::Iptables => match Iptables::open(netns_target(installed.netns.as_deref()), None) {
                Ok(iptables) => {
                    iptables.remove(false)?;
                }
                Err(iptables::Error::Netns(e)) if netns_gone(&e) => {}
                Err(e) => return Err(e.into()),
            },
            Backend::Nftables => match Nftables::open(netns_target(installed.netns.as_deref())) {
                Ok(nft) => {
                    nft.remove(false)?;
                }
                Err(nftables::Error::Netns(e)) if netns_gone(&e) => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// Whether the installation is still whole: programs pinned and attached, rules in place.
    pub fn intact(&self, installed: &Installed) -> Result<bool, Error> {
        let target = netns_target(installed.netns.as_deref());
        Ok(match installed.backend {
            Backend::Ebpf => {
                let status = cli::status(&self.ebpf_request(&installed.cgroup, target), None)?;
                status.installed
            }
            Backend::Iptables => Iptables::open(target, None)?.status(None)?.exit_code() == 0,
            Backend::Nftables => Nftables::open(target)?.status(None)?.exit_code() == 0,
        })
    }

    /// The eBPF programs' decision counters for an eBPF task; `None` for the other backends or
    /// when nothing is installed.
    pub fn counters(&self, installed: &Installed) -> Result<Option<Vec<(Counter, u64)>>, Error> {
        if installed.backend != Backend::Ebpf {
            return Ok(None);
        }
        let target = EbpfTarget::new(&installed.cgroup, Some(&self.bpffs))?;
        Ok(ebpf::status(&target)?.map(|status| status.counters))
    }

    fn ebpf_request(&self, cgroup: &str, netns: netns::Target) -> cli::Request {
        cli::Request {
            cgroup: cgroup.to_owned(),
            bpffs: Some(self.bpffs.clone()),
            netns,
            iptables_mode: None,
            ingress_fallback_to_app: false,
        }
    }
}

fn netns_target(netns: Option<&Path>) -> netns::Target {
    netns.map_or(netns::Target::Current, |path| netns::Target::Path(path.to_owned()))
}

fn netns_gone(e: &netns::Error) -> bool {
    matches!(e, netns::Error::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
}
