//! What the nftables backend reports: an apply's or remove's transactions, and `status`.

use std::fmt::Write as _;

use serde::Serialize;

use super::listing::{Installed, count};
use crate::backend::rules::{self, ChangeDetail, RuleStatus, RulesChange};
use crate::plan::nftables::{FAMILY, NftablesPlan, TABLE};

pub(super) fn summary_of_plan(plan: &NftablesPlan) -> String {
    let rules: usize = plan.chains.iter().map(|c| c.rules.len()).sum();
    let sets: Vec<String> = plan.sets.iter().map(|s| format!("{} ({})", s.name, s.len())).collect();
    format!(
        "table {FAMILY} {TABLE}: {} chains, {rules} rules, sets {}",
        plan.chains.len(),
        if sets.is_empty() { "none".to_owned() } else { sets.join(", ") }
    )
}

/// What an apply or remove of the nftables backend ran, or would run.
pub type Report = RulesChange<Script>;

/// Why a transaction runs, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Script {
    /// Why the transaction runs: the table is missing, or how it differs from the plan.
    pub reasons: Vec<String>,
    /// The `nft -f -` input run (or, for a dry run, that would run); `None`: nothing to do.
    pub script: Option<String>,
}

impl ChangeDetail for Script {
    fn render_text(change: &Report, verb: &str) -> String {
        let Script { reasons, script } = &change.detail;
        let mut out = String::new();
        let _ = writeln!(out, "{verb}: nftables in the {}", change.target);
        for reason in reasons {
            let _ = writeln!(out, "  - {reason}");
        }
        match (script, change.dry_run) {
            (None, _) => {
                let _ = writeln!(out, "nothing to change: {}", change.installed);
            }
            (Some(script), true) => {
                let _ = write!(out, "\n# dry run: would run nft -f -\n{script}");
            }
            (Some(_), false) => {
                let _ = writeln!(out, "done: {}", change.installed);
            }
        }
        out
    }
}

/// What `intercept status --backend nftables` lists: the table as listed; `None` when there
/// is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    pub table: Option<Installed>,
}

impl rules::Listing for Listing {
    /// Long sets are summarised.
    fn render_text(&self, target: &str, out: &mut String) {
        let _ = writeln!(out, "nftables, table {FAMILY} {TABLE} in the {target}");
        let Some(table) = &self.table else {
            out.push_str("\nnothing installed\n");
            return;
        };
        for chain in &table.chains {
            match &chain.hook {
                Some(h) => {
                    let _ = writeln!(
                        out,
                        "\nchain {} ({} hook {} priority {}):",
                        chain.name, h.chain_type, h.hook, h.priority
                    );
                }
                None => {
                    let _ = writeln!(out, "\nchain {}:", chain.name);
                }
            }
            RuleStatus::push_table(out, &chain.rules);
        }
        let sets = table.sets.iter().map(|set| {
            let elements = count(set.elements.len(), "element");
            format!("{} ({}, {elements}): {}", set.name, set.set_type, crate::plan::summarised_inline(&set.elements))
        });
        rules::push_section(out, "sets", sets);
    }
}
