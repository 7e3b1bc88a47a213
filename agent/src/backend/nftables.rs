//! The nftables backend: installs an [`NftablesPlan`] in a network namespace, replaces it,
//! removes it, and reports what is installed.
//!
//! Everything intercept installs is one table, `inet intercept`. An apply is two `nft -f -`
//! transactions ([`Steps`]): the sets whose elements change, under their other name, then
//! every rule, switched to them; the [remove script](crate::plan::nftables::REMOVE_SCRIPT)
//! deletes the table in one. The kernel commits each completely or not at all. Nothing
//! outside the table is read or written, so the rules of other tools (iptables-nft's
//! `ip nat` table, firewalld's, Docker's) are left as they are.
//!
//! Before changing anything the backend reads the table (`nft -j list table inet
//! intercept`) and compares it with the plan, statement by statement and element by
//! element ([`Installed::drift`]): when they agree, apply runs nothing, and the counters
//! keep counting. `status` shows the same comparison, with every rule's counters.
//!
//! Commands run in the target namespace through the [`Runner`] shared with the iptables
//! backend: the process itself never changes namespace.

mod handle;
mod listing;
mod report;

use std::collections::BTreeSet;

use serde_json::Value;

use crate::backend::exec::{self, Call, Output, Runner, System};
use crate::backend::rules::{Rules, RulesStatus};
use crate::lock;
use crate::netns::{self, Netns, Target};
use crate::plan::iptables::EGRESS_CHAIN as IPTABLES_EGRESS_CHAIN;
use crate::plan::nftables::{
    EGRESS_CHAIN, FAMILY, INGRESS_CHAIN, NftablesPlan, OUTPUT_CHAIN, PREROUTING_CHAIN, REMOVE_SCRIPT,
    SECOND_NAME_SUFFIX, Set, SetNames, TABLE, Verdict,
};

pub use handle::Handle;
pub use listing::{Installed, InstalledChain, InstalledHook, InstalledSet};
use listing::{objects, str_field};
use report::summary_of_plan;
pub use report::{Listing, Report, Script};

pub const NFT: &str = "nft";

/// `intercept status --backend nftables`.
pub type Status = RulesStatus<Listing>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "nft not found (looked on PATH and in /usr/sbin, /sbin, /usr/local/sbin): install the \
         `nftables` package, e.g. `apt-get install nftables`, or put nft on PATH"
    )]
    MissingProgram,
    #[error(
        "intercept lacks the CAP_NET_ADMIN capability, which reading and changing nftables rules \
         needs: run it as root, or grant the capability (a container: `--cap-add NET_ADMIN`; an ECS \
         task definition: linuxParameters.capabilities.add [\"NET_ADMIN\"])"
    )]
    MissingCapability,
    #[error("running `{call}`: {source}")]
    Spawn {
        call: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{call}` failed ({status}){}", indented(.stderr))]
    Failed { call: String, status: String, stderr: String },
    #[error("`{call}` failed ({status}); the transaction is all or nothing, so nothing was changed{}", indented(.stderr))]
    Transaction { call: String, status: String, stderr: String },
    #[error("cannot read the output of `{call}`: {message}")]
    Parse { call: String, message: String },
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Lock(#[from] lock::Error),
}

fn indented(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() { String::new() } else { format!(":\n  {}", stderr.lines().collect::<Vec<_>>().join("\n  ")) }
}

impl From<exec::Error> for Error {
    fn from(e: exec::Error) -> Error {
        match e {
            // The runner names the package of any program; nft's is always `nftables`.
            exec::Error::MissingProgram { .. } => Error::MissingProgram,
            exec::Error::Spawn { call, source } => Error::Spawn { call, source },
            exec::Error::Netns(e) => Error::Netns(e),
            exec::Error::Lock(e) => Error::Lock(e),
        }
    }
}

fn status_of(output: &Output) -> String {
    match output.code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// The backend, bound to a namespace through its runner.
#[derive(Debug)]
pub struct Nftables<R: Runner = System> {
    runner: R,
}

impl Nftables<System> {
    /// The backend for `target`. Checks the capability and that nft works in the
    /// namespace first, so that a missing piece is reported before anything runs.
    pub fn open(target: Target) -> Result<Nftables<System>, Error> {
        if !crate::privileges::holds(caps::Capability::CAP_NET_ADMIN) {
            return Err(Error::MissingCapability);
        }
        let backend = Nftables::new(System::new(Netns::open(target)?));
        backend.probe()?;
        Ok(backend)
    }
}

impl<R: Runner> Nftables<R> {
    pub fn new(runner: R) -> Nftables<R> {
        Nftables { runner }
    }

    /// Whether nft works here: found, and the kernel answers (`nft list chains`).
    pub fn probe(&self) -> Result<(), Error> {
        self.chains().map(drop)
    }

    /// Whether the table exists. Cheap even when it holds 100,000 elements: any listing
    /// that names the table's sets makes nft 1.0 fetch their elements (a second per
    /// 100,000), a listing of chains does not.
    pub fn is_installed(&self) -> Result<bool, Error> {
        // A table without chains (only made by hand) is found by listing it.
        Ok(self.chains()?.ours || self.read()?.is_some())
    }

    fn finish(
        &self,
        script: Option<String>,
        reasons: Vec<String>,
        after: String,
        chains: Chains,
        dry_run: bool,
    ) -> Result<Report, Error> {
        let report = Report {
            target: self.runner.describe_target(),
            warnings: chains.warnings(),
            changed: script.is_some() && !dry_run,
            dry_run,
            detail: Script { reasons, script },
            installed: after,
        };
        if let (Some(script), false) = (&report.detail.script, dry_run) {
            self.run_script(script)?;
        }
        Ok(report)
    }

    /// The table as installed; `None` when there is none.
    pub fn read(&self) -> Result<Option<Installed>, Error> {
        let call = Call::new(NFT, &["-j", "list", "table", FAMILY, TABLE]);
        let output = self.runner.run(&call)?;
        if !output.success() {
            // ENOENT, as strerror words it (the runner sets LC_ALL=C).
            if output.stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(Error::Failed { call: call.to_string(), status: status_of(&output), stderr: output.stderr });
        }
        Installed::parse(&output.stdout).map(Some).map_err(|message| Error::Parse { call: call.to_string(), message })
    }

    /// Every chain in the namespace, by table (`nft -j list chains`).
    fn chains(&self) -> Result<Chains, Error> {
        let call = Call::new(NFT, &["-j", "list", "chains"]);
        let output = self.run(&call)?;
        let objects = objects(&output.stdout).map_err(|message| Error::Parse { call: call.to_string(), message })?;
        let chains: Vec<&Value> = objects.iter().filter_map(|o| o.get("chain")).collect();
        Ok(Chains {
            ours: chains.iter().any(|c| str_field(c, "family") == FAMILY && str_field(c, "table") == TABLE),
            iptables_backend: chains
                .iter()
                .filter(|c| str_field(c, "name") == IPTABLES_EGRESS_CHAIN && str_field(c, "table") == "nat")
                .map(|c| str_field(c, "family").to_owned())
                .collect(),
        })
    }

    fn run(&self, call: &Call) -> Result<Output, Error> {
        let output = self.runner.run(call)?;
        if output.success() {
            Ok(output)
        } else {
            Err(Error::Failed { call: call.to_string(), status: status_of(&output), stderr: output.stderr })
        }
    }

    fn run_script(&self, script: &str) -> Result<(), Error> {
        let call = Call::new(NFT, &["-f", "-"]).with_stdin(script.to_owned());
        let output = self.runner.run(&call)?;
        if output.success() {
            return Ok(());
        }
        Err(Error::Transaction { call: call.to_string(), status: status_of(&output), stderr: output.stderr })
    }
}

impl<R: Runner> Rules for Nftables<R> {
    type Plan = NftablesPlan;
    type Detail = Script;
    type Listing = Listing;
    type Error = Error;

    fn present(&self) -> Result<bool, Error> {
        self.is_installed()
    }

    /// Installs `plan`, or replaces what is installed with it, in two transactions (see
    /// [`Steps`]): the sets whose elements change are built under their other name first,
    /// then one transaction replaces every rule, so connections meet the old rules with the
    /// old sets or the new rules with the new sets. Nothing runs when the table already is
    /// what the plan says. `dry_run`: say what would run. Waits for any other `apply` or
    /// `remove` on the namespace to finish first (the lock of [`crate::lock`]); while it
    /// changes things, the lock's marker says so, for `status`.
    fn apply(&self, plan: &NftablesPlan, dry_run: bool) -> Result<Report, Error> {
        let held = self.runner.lock_for_change(dry_run)?;
        let installed = self.read()?;
        let reasons = match &installed {
            None => vec![format!("table {FAMILY} {TABLE} is not installed")],
            Some(installed) => installed.drift(plan),
        };
        let steps = (!reasons.is_empty()).then(|| Steps::new(plan, installed.as_ref()));
        let report = Report {
            target: self.runner.describe_target(),
            warnings: self.chains()?.warnings(),
            changed: steps.is_some() && !dry_run,
            dry_run,
            detail: Script { reasons, script: steps.as_ref().map(Steps::render) },
            installed: summary_of_plan(plan),
        };
        let Some(held) = held else { return Ok(report) };
        if let Some(steps) = &steps {
            held.begin("apply")?;
            if let Some(sets) = &steps.sets {
                // All or nothing: refused, it changed nothing.
                self.run_script(sets).inspect_err(|_| drop(held.complete()))?;
            }
            if let Err(e) = self.run_script(&steps.rules) {
                // Put back what the first transaction added; the marker stays if that fails.
                if steps.undo.as_ref().is_none_or(|undo| self.run_script(undo).is_ok()) {
                    held.complete()?;
                }
                return Err(e);
            }
        }
        // Whole now, or already (even if an interrupted apply left its marker): the lock file
        // goes too, so nothing is left on the host for a namespace that goes away.
        held.release()?;
        Ok(report)
    }

    /// Removes the table. Nothing runs when there is none.
    fn remove(&self, dry_run: bool) -> Result<Report, Error> {
        let held = self.runner.lock_for_change(dry_run)?;
        let chains = self.chains()?;
        let (script, reasons) = if chains.ours || self.read()?.is_some() {
            (Some(REMOVE_SCRIPT.to_owned()), vec![format!("table {FAMILY} {TABLE} is installed")])
        } else {
            (None, Vec::new())
        };
        let report = self.finish(script, reasons, "nothing of intercept's is installed".to_owned(), chains, dry_run)?;
        if let Some(held) = held {
            held.release()?;
        }
        Ok(report)
    }

    /// What is installed, its counters, and whether it matches `plan` when one is given.
    fn status(&self, plan: Option<&NftablesPlan>) -> Result<Status, Error> {
        let installed = self.read()?;
        let mut reasons = Vec::new();
        let complete = installed.as_ref().is_some_and(Installed::is_complete);
        match &installed {
            None => reasons.push(format!(
                "nothing of intercept's is installed in the {} (no table {FAMILY} {TABLE})",
                self.runner.describe_target()
            )),
            Some(_) if !complete => reasons.push(format!(
                "intercept is only partly installed: no {OUTPUT_CHAIN} chain hooked at output with a jump to \
                 {EGRESS_CHAIN}"
            )),
            Some(_) => {}
        }
        let matches = plan.map(|plan| {
            let drift = installed.as_ref().map(|i| i.drift(plan)).unwrap_or_default();
            let matches = installed.is_some() && drift.is_empty();
            reasons.extend(drift);
            matches
        });
        let unfinished = self.runner.locks().unfinished(&self.runner.lock_key()?)?;
        if let Some(unfinished) = &unfinished {
            reasons.push(format!(
                "{unfinished} (interrupted, or still running): sets may have been added that no rule uses yet; \
                 `intercept apply` or `intercept remove` makes the table whole"
            ));
        }
        let counters = match (plan, &installed) {
            (Some(plan), Some(installed)) => installed.counters(plan),
            _ => Default::default(),
        };
        let ingress = plan.and_then(|plan| Some((plan, ingress_port(plan)?))).map(|(plan, port)| {
            let [jump, redirect] = match &installed {
                Some(installed) => {
                    <[bool; 2]>::try_from(installed.has_chains(plan, &[PREROUTING_CHAIN, INGRESS_CHAIN]))
                        .unwrap_or_else(|_| unreachable!("two chains asked for"))
                }
                None => [false, false],
            };
            (
                jump && redirect,
                format!(
                    "chain {PREROUTING_CHAIN} hooked at prerouting with a jump to {INGRESS_CHAIN} {}, redirect \
                     to :{port} {}",
                    crate::backend::found(jump),
                    crate::backend::found(redirect)
                ),
            )
        });
        Ok(Status {
            target: self.runner.describe_target(),
            listing: Listing { table: installed },
            installed: complete,
            matches,
            reasons,
            warnings: self.chains()?.warnings(),
            unfinished: unfinished.map(|u| u.to_string()),
            counters,
            ingress,
        })
    }
}

/// ProxyIngressPort, when `plan` has ingress: where its ingress chain redirects.
fn ingress_port(plan: &NftablesPlan) -> Option<u16> {
    plan.chain(INGRESS_CHAIN)?.rules.iter().find_map(|rule| match rule.verdict {
        Verdict::Redirect(port) => Some(port),
        _ => None,
    })
}

/// The transactions of an apply.
///
/// The kernel makes a set's new elements match only when the transaction that added them is
/// over, after it has switched to that transaction's rules: rules that start using a set
/// filled in their own transaction match nothing in it for that instant, and an ignored
/// destination is redirected (the reconfiguration test saw 9 to 14 of 24,000 to 30,000
/// connections so while replacing the whole table in one transaction). So the sets come
/// first, in a transaction of their own: a set whose elements change is built under its
/// other name (`<name>` and `<name>_next` take turns) while the old rules use the old one;
/// then one transaction replaces every rule and deletes what is no longer used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps {
    /// The sets to build (and on a first install the table); `None`: all are in place.
    pub sets: Option<String>,
    /// Every rule replaced; the chains and sets no longer wanted deleted.
    pub rules: String,
    /// Undoes `sets` when `rules` is refused.
    pub undo: Option<String>,
}

impl Steps {
    pub fn new(plan: &NftablesPlan, installed: Option<&Installed>) -> Steps {
        let (sets, chains) = installed.map_or((&[][..], &[][..]), |i| (&i.sets[..], &i.chains[..]));
        let referenced: BTreeSet<&str> = chains
            .iter()
            .flat_map(|c| &c.rules)
            .flat_map(|r| r.rule.split(' ').filter_map(|w| w.strip_prefix('@')))
            .collect();
        let mut names = SetNames::default();
        let (mut build, mut built, mut stale) = (Vec::new(), Vec::new(), Vec::new());
        for set in &plan.sets {
            let candidates = [set.name.to_owned(), format!("{}{SECOND_NAME_SUFFIX}", set.name)];
            let same = |name: &String| sets.iter().any(|i| i.name == *name && same_set(i, set));
            let chosen = match candidates.iter().filter(|c| same(c)).max_by_key(|c| referenced.contains(c.as_str())) {
                Some(name) => name.clone(),
                None => {
                    let name = candidates.iter().find(|c| !referenced.contains(c.as_str())).unwrap_or(&candidates[0]);
                    if sets.iter().any(|i| i.name == *name) {
                        stale.push(name.clone());
                    }
                    build.push(set.name);
                    built.push(name.clone());
                    name.clone()
                }
            };
            names.set(set.name, chosen);
        }
        let wanted: Vec<&str> = plan.sets.iter().map(|s| names.name(s.name)).collect();
        let delete_sets: Vec<String> = sets
            .iter()
            .map(|s| s.name.clone())
            .filter(|n| !wanted.contains(&n.as_str()) && !stale.contains(n))
            .collect();
        let delete_chains: Vec<String> =
            chains.iter().filter(|c| plan.chain(&c.name).is_none()).map(|c| c.name.clone()).collect();
        let first_install = installed.is_none();
        let undo = if first_install {
            Some(REMOVE_SCRIPT.to_owned())
        } else {
            (!built.is_empty()).then(|| built.iter().map(|n| format!("delete set {FAMILY} {TABLE} {n}\n")).collect())
        };
        Steps {
            sets: (first_install || !build.is_empty()).then(|| plan.sets_script(&names, &build, &stale, first_install)),
            rules: plan.rules_script(&names, &delete_chains, &delete_sets),
            undo,
        }
    }

    /// Both transactions, for the report and `--dry-run`.
    pub fn render(&self) -> String {
        match &self.sets {
            Some(sets) => format!("{sets}\n# then, in a second nft -f - transaction:\n{}", self.rules),
            None => self.rules.clone(),
        }
    }
}

fn same_set(installed: &InstalledSet, planned: &Set) -> bool {
    let elements: BTreeSet<&str> = installed.elements.iter().map(String::as_str).collect();
    let planned_elements = planned.rendered_elements();
    installed.set_type == planned.set_type.as_str()
        && installed.flags == ["interval"]
        && elements == planned_elements.iter().map(String::as_str).collect()
}

/// What the namespace's chains tell.
struct Chains {
    /// intercept's table has chains.
    ours: bool,
    /// The families whose iptables-nft `nat` table holds the iptables backend's egress
    /// chain. (iptables-legacy rules are invisible to nft.)
    iptables_backend: BTreeSet<String>,
}

impl Chains {
    /// Both backends installed would redirect the same connections.
    fn warnings(&self) -> Vec<String> {
        self.iptables_backend
            .iter()
            .map(|family| {
                format!(
                    "the iptables backend's {IPTABLES_EGRESS_CHAIN} chain is installed too ({family} nat): both \
                     redirect, the first to do so wins; remove it with `intercept remove --backend iptables`"
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
