//! From (what should be installed, what is installed) to the transactions that get there.
//!
//! Pure: the inputs are values read from `iptables-save` and `ipset save`, the outputs are
//! restore inputs. The same functions compute an apply, a replace, a remove (nothing should
//! be installed) and a rollback (what was installed before should be installed again), and
//! "nothing to do" is simply an empty [`Changes`].

use std::collections::BTreeSet;
use std::fmt::Write as _;

use ipnet::IpNet;
use serde::Serialize;

use super::save::{RuleSpec, SavedRule, Table};
use crate::plan::iptables::{DNS_CHAIN, EGRESS_CHAIN, Family, FamilyPlan, INGRESS_CHAIN, IpSet, TABLE};

/// The chains intercept owns in the `nat` table: declared (created or flushed), filled and
/// deleted only by intercept. Every other chain is somebody else's; intercept only adds and
/// deletes its own rules there, recognised by their comment.
pub const OWN_CHAINS: [&str; 3] = [EGRESS_CHAIN, INGRESS_CHAIN, DNS_CHAIN];

/// The ipsets intercept owns; each also lives as `<name>-next` every other time its contents
/// change (see [`place_sets`]).
pub const OWN_SETS: [&str; 4] =
    ["intercept-egress-v4", "intercept-egress-v6", "intercept-include-v4", "intercept-include-v6"];

pub fn is_own_set(name: &str) -> bool {
    let live = name.strip_suffix(STAGING_SUFFIX).unwrap_or(name);
    OWN_SETS.contains(&live)
}

const STAGING_SUFFIX: &str = "-next";

/// What intercept should have in one family's `nat` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// intercept's chains with their rules, in order.
    pub chains: Vec<(String, Vec<RuleSpec>)>,
    /// intercept's rules in other chains (the jumps into its own).
    pub jumps: Vec<RuleSpec>,
}

impl Desired {
    pub fn from_plan(plan: &FamilyPlan) -> Desired {
        Desired {
            chains: plan
                .chains
                .iter()
                .map(|c| (c.name.clone(), c.rules.iter().map(RuleSpec::from_plan).collect()))
                .collect(),
            jumps: plan.jumps.iter().map(RuleSpec::from_plan).collect(),
        }
    }

    /// Exactly what `installed` has: the target of a rollback.
    pub fn from_installed(installed: &Installed) -> Desired {
        Desired {
            chains: installed
                .chains
                .iter()
                .map(|(name, rules)| (name.clone(), rules.iter().map(|r| r.spec.clone()).collect()))
                .collect(),
            jumps: installed.jumps.iter().map(|r| r.spec.clone()).collect(),
        }
    }

    fn chain(&self, name: &str) -> Option<&[RuleSpec]> {
        self.chains.iter().find(|(n, _)| n == name).map(|(_, rules)| rules.as_slice())
    }
}

/// intercept's part of one family's `nat` table as it is now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Installed {
    /// intercept's chains that exist, with their rules (whoever added them).
    pub chains: Vec<(String, Vec<SavedRule>)>,
    /// Rules with an `intercept: ` comment in every other chain.
    pub jumps: Vec<SavedRule>,
}

impl Installed {
    pub fn from_table(table: &Table) -> Installed {
        let chains = OWN_CHAINS
            .iter()
            .filter(|name| table.has_chain(name))
            .map(|name| ((*name).to_owned(), table.rules_of(name).cloned().collect()))
            .collect();
        let jumps = table
            .rules
            .iter()
            .filter(|r| !OWN_CHAINS.contains(&r.spec.chain.as_str()) && r.spec.is_intercepts())
            .cloned()
            .collect();
        Installed { chains, jumps }
    }

    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }

    fn chain(&self, name: &str) -> Option<Vec<&RuleSpec>> {
        self.chains.iter().find(|(n, _)| n == name).map(|(_, rules)| rules.iter().map(|r| &r.spec).collect())
    }
}

/// The jumps to delete (installed but not wanted, or wanted once and installed twice) and
/// to add (wanted, not installed). A wanted jump that is installed stays where it is.
fn jump_diff<'a>(desired: &'a [RuleSpec], installed: &'a [SavedRule]) -> (Vec<&'a RuleSpec>, Vec<&'a RuleSpec>) {
    let mut wanted: Vec<&RuleSpec> = desired.iter().collect();
    let mut delete = Vec::new();
    for rule in installed {
        match wanted.iter().position(|w| **w == rule.spec) {
            Some(i) => {
                wanted.remove(i);
            }
            None => delete.push(&rule.spec),
        }
    }
    (delete, wanted)
}

/// The `iptables-restore --noflush` input that turns `installed` into `desired`, or `None`
/// when they already agree. One transaction: the kernel switches from the old rules to the
/// new at its COMMIT, so there is no moment without either.
///
/// Order inside the transaction: declare the chains to (re)fill or delete (declaring an
/// existing chain flushes it), delete the unwanted jumps, delete the unwanted chains (no
/// longer referenced), fill the chains, add the missing jumps. Chains whose rules already
/// match are left alone, so their counters keep counting.
pub fn family_transaction(desired: &Desired, installed: &Installed) -> Option<String> {
    let refill: Vec<&(String, Vec<RuleSpec>)> = desired
        .chains
        .iter()
        .filter(|(name, rules)| installed.chain(name).is_none_or(|have| !have.iter().copied().eq(rules.iter())))
        .collect();
    let delete_chains: Vec<&str> =
        installed.chains.iter().map(|(name, _)| name.as_str()).filter(|name| desired.chain(name).is_none()).collect();
    let (delete_jumps, add_jumps) = jump_diff(&desired.jumps, &installed.jumps);
    if refill.is_empty() && delete_chains.is_empty() && delete_jumps.is_empty() && add_jumps.is_empty() {
        return None;
    }
    let mut out = format!("*{TABLE}\n");
    for name in refill.iter().map(|(name, _)| name.as_str()).chain(delete_chains.iter().copied()) {
        let _ = writeln!(out, ":{name} - [0:0]");
    }
    for rule in delete_jumps {
        let _ = writeln!(out, "{}", rule.line("-D"));
    }
    for name in &delete_chains {
        let _ = writeln!(out, "-X {name}");
    }
    for rule in refill.iter().flat_map(|(_, rules)| rules).chain(add_jumps) {
        let _ = writeln!(out, "{}", rule.line("-A"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// How `installed` differs from `desired`, one sentence each; empty when they agree.
pub fn family_drift(desired: &Desired, installed: &Installed) -> Vec<String> {
    let mut reasons = Vec::new();
    for (name, rules) in &desired.chains {
        match installed.chain(name) {
            None => reasons.push(format!("chain {name} is missing")),
            Some(have) => {
                for (i, (want, got)) in rules.iter().zip(&have).enumerate() {
                    if want != *got {
                        reasons.push(format!("chain {name}, rule {}: expected `{want}`, found `{got}`", i + 1));
                    }
                }
                if have.len() != rules.len() {
                    reasons.push(format!("chain {name} has {} rules, expected {}", have.len(), rules.len()));
                }
            }
        }
    }
    for (name, _) in &installed.chains {
        if desired.chain(name).is_none() {
            reasons.push(format!("chain {name} is installed but not part of the configuration"));
        }
    }
    let (delete, add) = jump_diff(&desired.jumps, &installed.jumps);
    reasons.extend(add.into_iter().map(|r| format!("jump missing: `{r}`")));
    reasons.extend(delete.into_iter().map(|r| format!("unexpected rule: `{r}`")));
    reasons
}

/// Chooses the name each wanted set lives under, and makes the wanted rules match on it.
///
/// A set has two names, `<name>` and `<name>-next`. When one of them already holds exactly
/// the wanted networks, that one (nothing to do). Otherwise the new contents are built under
/// the name no installed rule matches on, and the family's `iptables-restore` transaction
/// switches the rules to it: the old rules keep the old set until the COMMIT, so no
/// connection ever meets new networks with old rules (as swapping the live set's contents
/// first would do) or the reverse. The old set is destroyed after the rules.
pub fn place_sets(desired: &mut DesiredState, state: &State) {
    let referenced = referenced_sets(state);
    for want in &mut desired.sets {
        let base = want.name.clone();
        let names = [base.clone(), want.staging_name()];
        let same = |name: &String| state.sets.iter().any(|have| have.name == *name && same_set(have, want));
        let chosen = names
            .iter()
            .filter(|n| same(n))
            .max_by_key(|n| referenced.contains(n.as_str()))
            .or_else(|| names.iter().find(|n| !referenced.contains(n.as_str())))
            .unwrap_or(&names[0])
            .clone();
        if chosen == base {
            continue;
        }
        want.name = chosen.clone();
        let families = std::iter::once(&mut desired.v4).chain(desired.v6.as_mut());
        for rule in families.flat_map(|d| d.chains.iter_mut().flat_map(|(_, rules)| rules.iter_mut())) {
            if let Some(at) = rule.args.windows(2).position(|w| w[0] == "--match-set" && w[1] == base) {
                rule.args[at + 1] = chosen.clone();
            }
        }
    }
}

/// The sets intercept's installed rules match on, in either family.
fn referenced_sets(state: &State) -> BTreeSet<&str> {
    let families = std::iter::once(&state.v4).chain(state.v6.as_ref());
    families
        .flat_map(|installed| installed.chains.iter().flat_map(|(_, rules)| rules))
        .filter_map(|rule| rule.spec.args.windows(2).find(|w| w[0] == "--match-set").map(|w| w[1].as_str()))
        .collect()
}

/// The `ipset restore` input that creates every wanted set (under the name [`place_sets`]
/// chose) before the rules that match on it are installed, or `None` when all are there.
/// A set under that name with other contents is one no rule matches on (left by an
/// interrupted run): it is destroyed and built again.
pub fn ipset_update(desired: &[IpSet], installed: &[IpSet]) -> Option<String> {
    let mut out = String::new();
    for want in desired {
        let have = installed.iter().find(|s| s.name == want.name);
        if have.is_some_and(|have| same_set(have, want)) {
            continue;
        }
        if have.is_some() {
            let _ = writeln!(out, "destroy {}", want.name);
        }
        let _ = writeln!(out, "{}", create_line(&want.name, want));
        for net in sorted(&want.entries) {
            let _ = writeln!(out, "add {} {net}", want.name);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The `ipset restore` input destroying intercept's sets that are not wanted, to run once
/// no rule references them; `None` when there is none.
pub fn ipset_cleanup(desired: &[IpSet], installed: &[IpSet]) -> Option<String> {
    let mut out = String::new();
    for set in installed {
        let wanted = desired.iter().any(|w| w.name == set.name);
        if !wanted && is_own_set(&set.name) {
            let _ = writeln!(out, "destroy {}", set.name);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// How intercept's sets differ from the wanted ones, one sentence each.
pub fn ipset_drift(desired: &[IpSet], installed: &[IpSet]) -> Vec<String> {
    let mut reasons = Vec::new();
    for want in desired {
        match installed.iter().find(|s| s.name == want.name) {
            None => reasons.push(format!("ipset {} is missing", want.name)),
            Some(have) if !same_set(have, want) => {
                let want_entries = sorted(&want.entries);
                let have_entries = sorted(&have.entries);
                let missing = want_entries.difference(&have_entries).count();
                let extra = have_entries.difference(&want_entries).count();
                let mut reason = format!("ipset {}: {missing} networks missing, {extra} unexpected", want.name);
                if have.maxelem != want.maxelem || have.family != want.family {
                    let _ = write!(reason, " (maxelem {}, expected {})", have.maxelem, want.maxelem);
                }
                reasons.push(reason);
            }
            Some(_) => {}
        }
    }
    for set in installed {
        if !desired.iter().any(|w| w.name == set.name) {
            reasons.push(format!("ipset {} is installed but not part of the configuration", set.name));
        }
    }
    reasons
}

fn same_set(have: &IpSet, want: &IpSet) -> bool {
    have.family == want.family && have.maxelem == want.maxelem && sorted(&have.entries) == sorted(&want.entries)
}

fn sorted(entries: &[IpNet]) -> BTreeSet<IpNet> {
    entries.iter().copied().collect()
}

fn create_line(name: &str, set: &IpSet) -> String {
    format!("create {name} {} family {} maxelem {}", IpSet::TYPE, set.family.ipset_family(), set.maxelem)
}

/// What should be installed in the whole namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub v4: Desired,
    /// `None`: leave IPv6 alone (the namespace has no usable ip6tables `nat` table).
    pub v6: Option<Desired>,
    pub sets: Vec<IpSet>,
}

/// What is installed in the whole namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub v4: Installed,
    /// `None` when the namespace's ip6tables `nat` table cannot be read.
    pub v6: Option<Installed>,
    /// intercept's sets (staging sets included).
    pub sets: Vec<IpSet>,
}

impl State {
    pub fn family(&self, family: Family) -> Option<&Installed> {
        match family {
            Family::Ipv4 => Some(&self.v4),
            Family::Ipv6 => self.v6.as_ref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.as_ref().is_none_or(Installed::is_empty) && self.sets.is_empty()
    }

    /// This state as the target of a rollback: the rules exactly as they are now, and the
    /// sets they match on.
    pub fn as_desired(&self) -> DesiredState {
        let referenced = referenced_sets(self);
        DesiredState {
            v4: Desired::from_installed(&self.v4),
            v6: self.v6.as_ref().map(Desired::from_installed),
            sets: self.sets.iter().filter(|s| referenced.contains(s.name.as_str())).cloned().collect(),
        }
    }
}

/// Every transaction one sync runs, in the order it runs them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// `ipset restore`: create and fill sets before any rule matches on them.
    pub ipset_update: Option<String>,
    /// `iptables-restore --noflush`.
    pub v4: Option<String>,
    /// `ip6tables-restore --noflush`.
    pub v6: Option<String>,
    /// `ipset restore`: destroy sets no rule references any more.
    pub ipset_cleanup: Option<String>,
}

impl Changes {
    pub fn compute(desired: &DesiredState, state: &State) -> Changes {
        let v6 = match (&desired.v6, &state.v6) {
            (Some(want), Some(have)) => family_transaction(want, have),
            _ => None,
        };
        Changes {
            ipset_update: ipset_update(&desired.sets, &state.sets),
            v4: family_transaction(&desired.v4, &state.v4),
            v6,
            ipset_cleanup: ipset_cleanup(&desired.sets, &state.sets),
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &Changes::default()
    }

    pub fn family(&self, family: Family) -> Option<&str> {
        match family {
            Family::Ipv4 => self.v4.as_deref(),
            Family::Ipv6 => self.v6.as_deref(),
        }
    }
}

/// Every way `state` differs from `desired`; empty when they agree.
pub fn drift(desired: &DesiredState, state: &State) -> Vec<String> {
    let mut reasons: Vec<String> =
        family_drift(&desired.v4, &state.v4).into_iter().map(|r| format!("IPv4: {r}")).collect();
    if let (Some(want), Some(have)) = (&desired.v6, &state.v6) {
        reasons.extend(family_drift(want, have).into_iter().map(|r| format!("IPv6: {r}")));
    }
    reasons.extend(ipset_drift(&desired.sets, &state.sets));
    reasons
}
