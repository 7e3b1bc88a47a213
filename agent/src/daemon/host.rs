//! The daemon's effectful edge: what it observes on the host and the actions it runs, through
//! the same library calls as `intercept apply|remove|status`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::ebpf::{self, ApplyOptions, Counter, Target as EbpfTarget, cli};
use crate::backend::iptables::{self, Iptables};
use crate::backend::nftables::{self, Nftables};
use crate::netns;
use crate::plan::{Backend, IptablesPlan, NftablesPlan};
use crate::readiness::{self, Observation};

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

    /// A task's decision counters: the eBPF programs' own, or for the rule backends the
    /// packet counters of their `nat` rules (which see the first packet of each connection
    /// only, so they count connections), by the decision each rule stands for. `None` when
    /// nothing is installed.
    pub fn counters(&self, installed: &Installed) -> Result<Option<Vec<(Counter, u64)>>, Error> {
        let target = netns_target(installed.netns.as_deref());
        Ok(match installed.backend {
            Backend::Ebpf => {
                let target = EbpfTarget::new(&installed.cgroup, Some(&self.bpffs))?;
                ebpf::status(&target)?.map(|status| status.counters)
            }
            Backend::Iptables => {
                let status = Iptables::open(target, None)?.status(None)?;
                let rules = status.families.iter().flat_map(|f| &f.chains).flat_map(|c| &c.rules);
                status.installed.then(|| by_decision(rules.map(|r| (r.rule.as_str(), r.packets))))
            }
            Backend::Nftables => {
                let status = Nftables::open(target)?.status(None)?;
                let rules = status.table.iter().flat_map(|t| &t.chains).flat_map(|c| &c.rules);
                status.installed.then(|| by_decision(rules.map(|r| (r.rule.as_str(), r.packets))))
            }
        })
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

/// The decision a rule of the iptables or nftables plan stands for, from its comment (every
/// rule's comment starts with "intercept: " and says what it does); `None` for the jumps into
/// intercept's chains.
pub fn rule_decision(rule: &str) -> Option<Counter> {
    const DECISIONS: [(&str, Counter); 6] = [
        ("intercept: never redirect IgnoredUID", Counter::IgnoredUid),
        ("intercept: never redirect IgnoredGID", Counter::IgnoredGid),
        ("intercept: never redirect EgressIgnoredPorts", Counter::IgnoredPort),
        ("intercept: never redirect EgressIgnoredIPs", Counter::IgnoredIp),
        ("intercept: redirect other egress TCP", Counter::Redirected),
        ("intercept: redirect AppPorts", Counter::IngressSteered),
    ];
    DECISIONS.iter().find(|(comment, _)| rule.contains(comment)).map(|(_, counter)| *counter)
}

/// Packets summed by decision (both families together), every decision a rule stands for
/// listed, in counter order.
fn by_decision<'a>(rules: impl Iterator<Item = (&'a str, u64)>) -> Vec<(Counter, u64)> {
    let mut sums: Vec<(Counter, u64)> = Vec::new();
    for (rule, packets) in rules {
        let Some(decision) = rule_decision(rule) else { continue };
        match sums.iter_mut().find(|(c, _)| *c == decision) {
            Some((_, sum)) => *sum += packets,
            None => sums.push((decision, packets)),
        }
    }
    sums.sort_by_key(|(c, _)| c.index());
    sums
}

fn netns_target(netns: Option<&Path>) -> netns::Target {
    netns.map_or(netns::Target::Current, |path| netns::Target::Path(path.to_owned()))
}

fn netns_gone(e: &netns::Error) -> bool {
    matches!(e, netns::Error::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    /// Every rule of both rule backends' plans for a configuration with every kind of
    /// exemption maps to a decision, except the jumps into intercept's chains.
    #[test]
    fn every_planned_rule_stands_for_a_decision() {
        let mut config = testdata::seed_config();
        config.ignored_gid = Some(1338);
        let iptables = IptablesPlan::new(&config).render_text();
        let nftables = NftablesPlan::new(&config).render_text();
        // A rule: an iptables `-A` line, an nftables line with a counter.
        let cases =
            [("iptables", iptables, "-A ", "-A OUTPUT|-A PREROUTING"), ("nftables", nftables, " counter ", "jump ")];
        for (backend, text, rule_mark, jump) in cases {
            let rules: Vec<&str> =
                text.lines().filter(|l| l.contains(rule_mark) && l.contains("intercept: ")).collect();
            let mut decisions: Vec<&str> = Vec::new();
            for rule in &rules {
                match rule_decision(rule) {
                    Some(counter) => decisions.push(counter.name()),
                    None => assert!(jump.split('|').any(|j| rule.contains(j)), "{backend}: no decision for {rule}"),
                }
            }
            decisions.sort_unstable();
            decisions.dedup();
            assert_eq!(
                decisions,
                ["ignored-gid", "ignored-ip", "ignored-port", "ignored-uid", "ingress-steered", "redirected"],
                "{backend}:\n{text}"
            );
        }
    }

    #[test]
    fn packets_are_summed_by_decision_across_families() {
        let rules = [
            (
                r#"-A INTERCEPT_EGRESS -p tcp -m comment --comment "intercept: redirect other egress TCP to ProxyEgressPort 15001" -j REDIRECT"#,
                3,
            ),
            (
                r#"-A INTERCEPT_EGRESS -m owner --uid-owner 1337 -m comment --comment "intercept: never redirect IgnoredUID 1337" -j RETURN"#,
                1,
            ),
            (
                r#"-A INTERCEPT_EGRESS -p tcp -m comment --comment "intercept: redirect other egress TCP to ProxyEgressPort 15001" -j REDIRECT"#,
                4,
            ),
            (
                r#"-A OUTPUT -p tcp -m comment --comment "intercept: egress TCP to non-local destinations" -j INTERCEPT_EGRESS"#,
                9,
            ),
        ];
        assert_eq!(by_decision(rules.into_iter()), vec![(Counter::Redirected, 7), (Counter::IgnoredUid, 1)]);
    }
}
