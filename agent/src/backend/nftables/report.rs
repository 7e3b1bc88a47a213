//! What the nftables backend reports: an apply's or remove's transactions, and `status`.

use std::fmt::Write as _;

use serde::Serialize;

use super::listing::{Installed, count};
use crate::backend::Counters;
use crate::plan::Format;
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

/// What an apply or remove did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub target: String,
    pub warnings: Vec<String>,
    /// Something was changed; `false` when everything already was as it should be.
    pub changed: bool,
    pub dry_run: bool,
    /// Why the transaction runs: the table is missing, or how it differs from the plan.
    pub reasons: Vec<String>,
    /// The `nft -f -` input run (or, for a dry run, that would run); `None`: nothing to do.
    pub script: Option<String>,
    /// What is installed afterwards, in a few words.
    pub installed: String,
}

impl Report {
    /// For people; the warnings are not included (the CLI prints them to stderr).
    pub fn render_text(&self, verb: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{verb}: nftables in the {}", self.target);
        for reason in &self.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
        match (&self.script, self.dry_run) {
            (None, _) => {
                let _ = writeln!(out, "nothing to change: {}", self.installed);
            }
            (Some(script), true) => {
                let _ = write!(out, "\n# dry run: would run nft -f -\n{script}");
            }
            (Some(_), false) => {
                let _ = writeln!(out, "done: {}", self.installed);
            }
        }
        out
    }

    pub fn render(&self, verb: &str, format: Format) -> String {
        match format {
            Format::Text => self.render_text(verb),
            Format::Json => crate::plan::to_json(self),
        }
    }
}

/// `intercept status --backend nftables`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub target: String,
    /// The output chain, its jump and the egress chain are installed.
    pub installed: bool,
    /// Whether the table is exactly what the configuration asks for; `None` when no
    /// configuration was given.
    pub matches: Option<bool>,
    /// The table as listed; `None` when there is none.
    pub table: Option<Installed>,
    /// Why it is not installed or does not match, one sentence each.
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
    /// An `apply` began and did not finish (killed, or still running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<String>,
    /// By decision, of the rules that are the configuration's (none without one).
    #[serde(skip)]
    pub counters: Counters,
    /// With a configuration that has ingress: whether its chains are installed, and what was
    /// seen.
    #[serde(skip)]
    pub ingress: Option<(bool, String)>,
}

impl Status {
    /// See [`crate::backend::rules_exit_code`].
    pub fn exit_code(&self) -> i32 {
        crate::backend::rules_exit_code(self.installed, self.matches, self.unfinished.is_some())
    }

    /// For people; long sets are summarised, the warnings are not included (the CLI prints
    /// them to stderr).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "intercept status: nftables, table {FAMILY} {TABLE} in the {}", self.target);
        match &self.table {
            None => out.push_str("\nnothing installed\n"),
            Some(table) => {
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
                    let _ = writeln!(out, "{:>10} {:>12}  rule", "packets", "bytes");
                    for rule in &chain.rules {
                        let _ = writeln!(out, "{:>10} {:>12}  {}", rule.packets, rule.bytes, rule.rule);
                    }
                }
                if !table.sets.is_empty() {
                    out.push_str("\nsets\n");
                    for set in &table.sets {
                        let _ = writeln!(
                            out,
                            "  {} ({}, {}): {}",
                            set.name,
                            set.set_type,
                            count(set.elements.len(), "element"),
                            crate::plan::summarised_inline(&set.elements)
                        );
                    }
                }
            }
        }
        out.push('\n');
        crate::backend::rules_verdict(&mut out, self.installed, self.matches, self.unfinished.is_some(), &self.reasons);
        out
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => crate::plan::to_json(self),
        }
    }
}
