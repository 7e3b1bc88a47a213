//! eBPF mode as `intercept apply|remove|status --backend ebpf` runs it: the programs on the
//! task's cgroup for egress, and, until the eBPF ingress programs exist, the iptables
//! backend's ingress half ([`crate::plan::ebpf::iptables_ingress`]) in the task's network
//! namespace for inbound connections. `remove` removes both.
//!
//! The namespace (`--netns`, `--netns-pid`, default the current one) also gives the task's own
//! addresses, the local destinations the programs leave alone; they are read on a thread that
//! joins it ([`Netns::run`]), never by moving the process.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

use super::{ApplyOptions, Contents, Logs, Outcome, Status, Target};
use crate::backend::iptables::{self, Iptables, Mode};
use crate::config::ProxyConfig;
use crate::netns::{self, Netns};
use crate::plan::ebpf::{EbpfPlan, iptables_ingress};

/// Where eBPF mode works: a cgroup and its pins for the programs, a network namespace for
/// the local addresses and the ingress rules.
#[derive(Debug, Clone)]
pub struct Request {
    /// `--cgroup`: a path, or `auto`.
    pub cgroup: String,
    /// `--bpffs`; default [`super::DEFAULT_BPFFS`].
    pub bpffs: Option<PathBuf>,
    pub netns: netns::Target,
    /// `--iptables-mode`, for the ingress half.
    pub iptables_mode: Option<Mode>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebpf(#[from] super::Error),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("inbound redirection (the iptables ingress rules eBPF mode uses until eBPF ingress exists): {0}")]
    Ingress(#[source] iptables::Error),
    #[error(
        "inbound redirection failed after the eBPF programs were updated; egress follows the new \
         configuration, inbound the old one: run `intercept apply` again. {0}"
    )]
    IngressAfterUpdate(#[source] iptables::Error),
}

impl Error {
    /// A `--cgroup` or `--netns` that names nothing usable: bad input, nothing changed.
    pub fn is_bad_target(&self) -> bool {
        matches!(
            self,
            Error::Ebpf(
                super::Error::NotACgroup { .. } | super::Error::RootCgroup(_) | super::Error::CgroupAuto { .. }
            ) | Error::Netns(netns::Error::Open { .. } | netns::Error::NotNetns { .. })
        ) || matches!(self, Error::Ebpf(super::Error::Io { op: "open cgroup", .. }))
    }
}

/// What `apply` did.
#[derive(Serialize)]
pub struct ApplyReport {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub pin_dir: PathBuf,
    pub netns: String,
    #[serde(serialize_with = "outcome_json")]
    pub outcome: Outcome,
    /// The namespace's own addresses, local destinations for the programs.
    pub local_addresses: Vec<IpAddr>,
    /// The iptables ingress half: installed, updated or removed (`None`: nothing to do).
    pub ingress: Option<iptables::Report>,
    /// With `--bpf-log`: the programs' events, as long as this lives.
    #[serde(skip)]
    pub logs: Option<Logs>,
}

fn outcome_json<S: serde::Serializer>(outcome: &Outcome, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Json {
        result: &'static str,
        generation: Option<u32>,
        config_changed: Option<bool>,
        entries_added: Option<usize>,
        entries_removed: Option<usize>,
    }
    let json = match outcome {
        Outcome::Installed => Json {
            result: "installed",
            generation: None,
            config_changed: None,
            entries_added: None,
            entries_removed: None,
        },
        Outcome::Updated(c) => Json {
            result: "updated",
            generation: Some(c.generation),
            config_changed: Some(c.config),
            entries_added: Some(c.added),
            entries_removed: Some(c.removed),
        },
        Outcome::Unchanged => Json {
            result: "unchanged",
            generation: None,
            config_changed: None,
            entries_added: None,
            entries_removed: None,
        },
    };
    json.serialize(serializer)
}

impl ApplyReport {
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let what = match self.outcome {
            Outcome::Installed => "installed: programs loaded, maps filled, programs attached and pinned".to_owned(),
            Outcome::Updated(c) => format!(
                "updated in place: map generation {} is now active ({} entries added, {} removed{})",
                c.generation,
                c.added,
                c.removed,
                if c.config { ", CONFIG changed" } else { "" }
            ),
            Outcome::Unchanged => "nothing to change: the maps already hold this configuration".to_owned(),
        };
        let _ = writeln!(out, "apply: eBPF on cgroup {} (id {}): {what}", self.cgroup.display(), self.cgroup_id);
        let _ = writeln!(out, "pins: {}", self.pin_dir.display());
        let addrs: Vec<String> = self.local_addresses.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "local addresses of the {}: {}", self.netns, addrs.join(", "));
        match &self.ingress {
            Some(report) => {
                out.push_str("inbound: the iptables backend's ingress rules (until eBPF ingress exists)\n");
                out.push_str(&report.render_text("apply"));
            }
            None => out.push_str("inbound: no ingress configured\n"),
        }
        out
    }
}

/// Installs or updates eBPF mode: the programs (egress) first, then the ingress half. A first
/// install whose ingress half fails is removed again: nothing is left behind.
pub fn apply(request: &Request, config: &ProxyConfig, options: ApplyOptions) -> Result<ApplyReport, Error> {
    let target = Target::new(&request.cgroup, request.bpffs.as_deref())?;
    let netns = Netns::open(request.netns.clone())?;
    let local_addresses = netns.run(super::local_addresses)??;
    let applied = super::apply(&target, &EbpfPlan::new(config), &local_addresses, options)?;
    let ingress = match sync_ingress(request, config) {
        Ok(report) => report,
        Err(e) if applied.outcome == Outcome::Installed => {
            super::remove(&target)?;
            return Err(Error::Ingress(e));
        }
        Err(e) if applied.outcome == Outcome::Unchanged => return Err(Error::Ingress(e)),
        Err(e) => return Err(Error::IngressAfterUpdate(e)),
    };
    Ok(ApplyReport {
        cgroup: target.cgroup.clone(),
        cgroup_id: target.cgroup_id,
        pin_dir: applied.pin_dir,
        netns: request.netns.to_string(),
        outcome: applied.outcome,
        local_addresses,
        ingress,
        logs: applied.logs,
    })
}

/// The ingress half as the configuration wants it: installed with ingress, removed without
/// (where iptables is not even installed, there is nothing to remove).
fn sync_ingress(request: &Request, config: &ProxyConfig) -> Result<Option<iptables::Report>, iptables::Error> {
    match iptables_ingress(config) {
        Some(plan) => Iptables::open(request.netns.clone(), request.iptables_mode)?.apply(&plan, false).map(Some),
        None => match Iptables::open(request.netns.clone(), request.iptables_mode) {
            Ok(iptables) => iptables.remove(false).map(Some),
            Err(iptables::Error::MissingProgram { .. }) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// What `remove` did.
#[derive(Debug, Serialize)]
pub struct RemoveReport {
    pub cgroup: PathBuf,
    /// `false` when the cgroup no longer exists (its programs went with it).
    pub cgroup_exists: bool,
    /// Whether programs and pins were there to remove.
    pub removed: bool,
    /// Cgroups that no longer exist whose pins were removed too (see [`super::prune`]).
    pub pruned: Vec<u64>,
    pub ingress: Option<iptables::Report>,
}

impl RemoveReport {
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let what = match (self.cgroup_exists, self.removed) {
            (false, _) => "the cgroup no longer exists".to_owned(),
            (true, true) => "programs detached and unpinned".to_owned(),
            (true, false) => "nothing was installed".to_owned(),
        };
        let _ = writeln!(out, "remove: eBPF on cgroup {}: {what}", self.cgroup.display());
        if !self.pruned.is_empty() {
            let ids: Vec<String> = self.pruned.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "remove: also removed the pins of {} cgroup(s) that no longer exist (ids {})",
                ids.len(),
                ids.join(", ")
            );
        }
        if let Some(report) = &self.ingress {
            out.push_str(&report.render_text("remove"));
        }
        out
    }
}

/// Removes the programs and their pins, then the pins of cgroups that no longer exist (a
/// task's cgroup goes when the task ends, and its pins would keep the maps alive), then the
/// iptables ingress half. Idempotent; a `--cgroup` that is gone is not an error.
pub fn remove(request: &Request) -> Result<RemoveReport, Error> {
    let bpffs = request.bpffs.clone().unwrap_or_else(|| PathBuf::from(super::DEFAULT_BPFFS));
    let (cgroup, cgroup_exists, removed) = match Target::new(&request.cgroup, Some(&bpffs)) {
        Ok(target) => {
            let removed = super::remove(&target)?;
            (target.cgroup, true, removed)
        }
        Err(super::Error::Io { op: "open cgroup", source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            (PathBuf::from(&request.cgroup), false, false)
        }
        Err(e) => return Err(e.into()),
    };
    let pruned = super::prune(&bpffs)?;
    let ingress = match Iptables::open(request.netns.clone(), request.iptables_mode) {
        Ok(iptables) => Some(iptables.remove(false).map_err(Error::Ingress)?),
        Err(iptables::Error::MissingProgram { .. }) => None,
        Err(iptables::Error::Netns(e)) => return Err(e.into()),
        Err(e) => return Err(Error::Ingress(e)),
    };
    Ok(RemoveReport { cgroup, cgroup_exists, removed, pruned, ingress })
}

/// `status`: both halves, and whether they are what the configuration (when given) asks for.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// `None`: nothing installed for the cgroup.
    pub ebpf: Option<Status>,
    /// The iptables rules in the namespace; `None` where iptables is not installed.
    pub ingress: Option<iptables::Status>,
    /// The programs are pinned and all attached.
    pub installed: bool,
    /// Whether both halves are exactly what the configuration asks for; `None` without one.
    pub matches: Option<bool>,
    /// Why it is not installed or does not match, one line each.
    pub reasons: Vec<String>,
}

impl StatusReport {
    /// 0 when installed and matching the configuration (if one was given), else 1.
    pub fn exit_code(&self) -> i32 {
        i32::from(!(self.installed && self.matches != Some(false)))
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        match &self.ebpf {
            Some(status) => out.push_str(&status.render_text()),
            None => {
                let _ = writeln!(out, "eBPF backend: cgroup {}: nothing installed", self.cgroup.display());
            }
        }
        if let Some(ingress) = &self.ingress {
            render_ingress(&mut out, ingress);
        }
        out.push('\n');
        let verdict = match (self.installed, self.matches) {
            (true, Some(true)) => "installed, and matches the configuration",
            (true, None) => "installed",
            (true, Some(false)) => "installed, but does NOT match the configuration",
            (false, _) => "NOT installed",
        };
        let _ = writeln!(out, "{verdict}");
        for reason in &self.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
        out
    }
}

/// The iptables rules with their counters. The iptables status's own verdict is left out: it
/// judges by the egress chain, which eBPF mode never installs.
fn render_ingress(out: &mut String, status: &iptables::Status) {
    let _ = writeln!(out, "\ninbound: the iptables ingress rules, {} in the {}", status.mode, status.target);
    for family in &status.families {
        let label = match family.family {
            crate::plan::iptables::Family::Ipv4 => "IPv4",
            crate::plan::iptables::Family::Ipv6 => "IPv6",
        };
        if !family.readable {
            let _ = writeln!(out, "  {label}: the nat table cannot be read");
            continue;
        }
        let rules: Vec<_> = family.jumps.iter().chain(family.chains.iter().flat_map(|c| &c.rules)).collect();
        if rules.is_empty() {
            let _ = writeln!(out, "  {label}: no rules of intercept's");
            continue;
        }
        let _ = writeln!(out, "  {label}, nat table:\n  {:>10} {:>12}  rule", "packets", "bytes");
        for rule in rules {
            let _ = writeln!(out, "  {:>10} {:>12}  {}", rule.packets, rule.bytes, rule.rule);
        }
    }
}

pub fn status(request: &Request, config: Option<&ProxyConfig>) -> Result<StatusReport, Error> {
    let target = Target::new(&request.cgroup, request.bpffs.as_deref())?;
    let ebpf = super::status(&target)?;
    let mut reasons = Vec::new();
    let installed = match &ebpf {
        None => {
            reasons.push(format!("no eBPF programs are pinned for cgroup {}", target.cgroup.display()));
            false
        }
        Some(status) => {
            let detached = status.detached();
            let whole = detached.is_empty();
            reasons.extend(detached);
            whole
        }
    };
    let netns = Netns::open(request.netns.clone())?;
    let ingress_plan = config.and_then(iptables_ingress);
    let ingress = match Iptables::open(request.netns.clone(), request.iptables_mode) {
        Ok(iptables) => Some(iptables.status(ingress_plan.as_ref()).map_err(Error::Ingress)?),
        Err(iptables::Error::MissingProgram { .. }) => None,
        Err(e) => return Err(Error::Ingress(e)),
    };
    let matches = match config {
        None => None,
        Some(config) => {
            let mut matches = true;
            if let Some(status) = &ebpf {
                let local = netns.run(super::local_addresses)??;
                let want = Contents::desired(&EbpfPlan::new(config), &local)?;
                let drift = status.contents.drift(&want);
                matches &= drift.is_empty();
                reasons.extend(drift);
            }
            matches &= ingress_matches(ingress_plan.is_some(), ingress.as_ref(), &mut reasons);
            Some(matches && ebpf.is_some())
        }
    };
    Ok(StatusReport {
        cgroup: target.cgroup.clone(),
        pin_dir: target.pin_dir(),
        ebpf,
        ingress,
        installed,
        matches,
        reasons,
    })
}

/// Whether the iptables rules are the ingress half the configuration asks for (none without
/// ingress). The iptables status judges "installed" by its egress chain, which eBPF mode never
/// installs; only its comparison with the plan counts here.
fn ingress_matches(wanted: bool, ingress: Option<&iptables::Status>, reasons: &mut Vec<String>) -> bool {
    match (wanted, ingress) {
        (true, None) => {
            reasons.push("ingress is configured, but iptables is not installed for its rules".to_owned());
            false
        }
        (true, Some(status)) => {
            let drift: Vec<String> = status.reasons.iter().skip(usize::from(!status.installed)).cloned().collect();
            let ok = status.matches == Some(true);
            if !ok {
                reasons.extend(drift.into_iter().map(|r| format!("inbound (iptables): {r}")));
            }
            ok
        }
        (false, None) => true,
        (false, Some(status)) => {
            let any = status.families.iter().any(|f| !f.chains.is_empty() || !f.jumps.is_empty());
            if any {
                reasons
                    .push("iptables rules of intercept are installed, but the configuration has no ingress".to_owned());
            }
            !any
        }
    }
}
