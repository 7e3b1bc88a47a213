//! What the iptables backend reports: an apply's or remove's transactions, and `status`.

use std::fmt::Write as _;

use serde::Serialize;

use super::Mode;
use super::save;
use super::sync::{Changes, Desired, DesiredState, Installed};
use crate::backend::rules::{self, ChangeDetail, RuleStatus, RulesChange};
use crate::plan::iptables::{Family, IpSet};

/// What an apply or remove of the iptables backend ran, or would run.
pub type Report = RulesChange<Transactions>;

/// The xtables variant, and the transactions run (or, for a dry run, that would run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transactions {
    pub mode: Mode,
    pub detection: String,
    pub changes: Changes,
}

impl ChangeDetail for Transactions {
    fn render_text(change: &Report, verb: &str) -> String {
        let Transactions { mode, detection, changes } = &change.detail;
        let mut out = String::new();
        let _ = writeln!(out, "{verb}: {} in the {} ({})", mode, change.target, detection);
        if change.dry_run {
            if changes.is_empty() {
                out.push_str("dry run: nothing to change\n");
            }
            let steps = [
                ("ipset restore", &changes.ipset_update),
                ("iptables-restore --noflush (IPv4)", &changes.v4),
                ("ip6tables-restore --noflush (IPv6)", &changes.v6),
                ("ipset restore (after the rules)", &changes.ipset_cleanup),
            ];
            for (what, input) in steps {
                if let Some(input) = input {
                    let _ = write!(out, "\n# dry run: would run {what}\n{input}");
                }
            }
        } else if change.changed {
            let _ = writeln!(out, "done: {}", change.installed);
        } else {
            let _ = writeln!(out, "nothing to change: {}", change.installed);
        }
        out
    }
}

pub(super) fn summary(desired: &DesiredState) -> String {
    let family = |label: &str, d: &Desired| {
        let rules: usize = d.chains.iter().map(|(_, r)| r.len()).sum();
        format!("{label} ({} chains, {rules} rules, {} jumps)", d.chains.len(), d.jumps.len())
    };
    let mut parts = Vec::new();
    if !desired.v4.chains.is_empty() {
        parts.push(family("IPv4", &desired.v4));
    }
    if let Some(v6) = desired.v6.as_ref().filter(|d| !d.chains.is_empty()) {
        parts.push(family("IPv6", v6));
    }
    for set in &desired.sets {
        parts.push(format!("ipset {} ({} networks)", set.name, set.entries.len()));
    }
    if parts.is_empty() { "nothing of intercept's is installed".to_owned() } else { parts.join(", ") }
}

/// What `intercept status` lists of the iptables backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub mode: Mode,
    pub detection: String,
    pub families: Vec<FamilyStatus>,
    pub ipsets: Vec<SetStatus>,
}

impl rules::Listing for Listing {
    fn render_text(&self, target: &str, out: &mut String) {
        let _ = writeln!(out, "{} in the {target} ({})", self.mode, self.detection);
        for family in &self.families {
            let label = family_label(family.family);
            if !family.readable {
                let _ = writeln!(out, "\n{label}: the nat table cannot be read");
                continue;
            }
            if family.chains.is_empty() && family.jumps.is_empty() {
                let _ = writeln!(out, "\n{label}: nothing installed");
                continue;
            }
            let _ = writeln!(out, "\n{label}, nat table:");
            RuleStatus::push_table(out, family.jumps.iter().chain(family.chains.iter().flat_map(|c| &c.rules)));
        }
        let ipsets = self.ipsets.iter().map(|set| {
            let family = family_label(set.family);
            format!("{} ({family}, {} networks, maxelem {})", set.name, set.entries, set.maxelem)
        });
        rules::push_section(out, "ipsets", ipsets);
    }
}

pub(super) fn family_label(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FamilyStatus {
    pub family: Family,
    /// The family's `nat` table could be read.
    pub readable: bool,
    pub chains: Vec<ChainStatus>,
    /// intercept's rules in other chains.
    pub jumps: Vec<RuleStatus>,
}

impl FamilyStatus {
    pub(super) fn new(family: Family, installed: Option<&Installed>) -> FamilyStatus {
        let readable = installed.is_some();
        let empty = Installed::default();
        let installed = installed.unwrap_or(&empty);
        FamilyStatus {
            family,
            readable,
            chains: installed
                .chains
                .iter()
                .map(|(name, rules)| ChainStatus {
                    name: name.clone(),
                    rules: rules.iter().map(RuleStatus::from).collect(),
                })
                .collect(),
            jumps: installed.jumps.iter().map(RuleStatus::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainStatus {
    pub name: String,
    pub rules: Vec<RuleStatus>,
}

impl From<&save::SavedRule> for RuleStatus {
    fn from(rule: &save::SavedRule) -> RuleStatus {
        RuleStatus { rule: rule.spec.line("-A"), packets: rule.counters.packets, bytes: rule.counters.bytes }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetStatus {
    pub name: String,
    pub family: Family,
    pub maxelem: usize,
    pub entries: usize,
}

impl From<&IpSet> for SetStatus {
    fn from(set: &IpSet) -> SetStatus {
        SetStatus { name: set.name.clone(), family: set.family, maxelem: set.maxelem, entries: set.entries.len() }
    }
}
