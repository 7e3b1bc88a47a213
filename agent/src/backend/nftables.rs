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

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::backend::exec::{Call, Output, Runner, System};
use crate::backend::iptables;
use crate::lock;
use crate::netns::{self, Netns, Target};
use crate::plan::Format;
use crate::plan::iptables::EGRESS_CHAIN as IPTABLES_EGRESS_CHAIN;
use crate::plan::nftables::{
    EGRESS_CHAIN, FAMILY, NAT_PRIORITY, NftablesPlan, OUTPUT_CHAIN, REMOVE_SCRIPT, SECOND_NAME_SUFFIX, Set, SetNames,
    TABLE,
};

pub const NFT: &str = "nft";

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

impl From<iptables::Error> for Error {
    /// The shared runner reports with the iptables backend's error type; only these four
    /// come out of it.
    fn from(e: iptables::Error) -> Error {
        match e {
            iptables::Error::MissingProgram { .. } => Error::MissingProgram,
            iptables::Error::Spawn { call, source } => Error::Spawn { call, source },
            iptables::Error::Netns(e) => Error::Netns(e),
            iptables::Error::Lock(e) => Error::Lock(e),
            other => Error::Failed { call: NFT.to_owned(), status: "error".to_owned(), stderr: other.to_string() },
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

    pub fn runner(&self) -> &R {
        &self.runner
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

    /// Installs `plan`, or replaces what is installed with it, in two transactions (see
    /// [`Steps`]): the sets whose elements change are built under their other name first,
    /// then one transaction replaces every rule, so connections meet the old rules with the
    /// old sets or the new rules with the new sets. Nothing runs when the table already is
    /// what the plan says. `dry_run`: say what would run. Waits for any other `apply` or
    /// `remove` on the namespace to finish first (the lock of [`crate::lock`]); while it
    /// changes things, the lock's marker says so, for `status`.
    pub fn apply(&self, plan: &NftablesPlan, dry_run: bool) -> Result<Report, Error> {
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
            reasons,
            script: steps.as_ref().map(Steps::render),
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
        // Whole now, or already (even if an interrupted apply left its marker).
        held.complete()?;
        Ok(report)
    }

    /// Removes the table. Nothing runs when there is none.
    pub fn remove(&self, dry_run: bool) -> Result<Report, Error> {
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
            reasons,
            script,
            installed: after,
        };
        if let (Some(script), false) = (&report.script, dry_run) {
            self.run_script(script)?;
        }
        Ok(report)
    }

    /// What is installed, its counters, and whether it matches `plan` when one is given.
    pub fn status(&self, plan: Option<&NftablesPlan>) -> Result<Status, Error> {
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
        Ok(Status {
            target: self.runner.describe_target(),
            installed: complete,
            matches,
            table: installed,
            reasons,
            warnings: self.chains()?.warnings(),
            unfinished: unfinished.map(|u| u.to_string()),
        })
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

/// The objects of an `nft -j` listing.
fn objects(json: &str) -> Result<Vec<Value>, String> {
    let mut value: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    match value.get_mut("nftables").map(Value::take) {
        Some(Value::Array(objects)) => Ok(objects),
        _ => Err("no \"nftables\" array".to_owned()),
    }
}

fn str_field<'a>(object: &'a Value, field: &str) -> &'a str {
    object.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// A base chain's hook, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledHook {
    #[serde(rename = "type")]
    pub chain_type: String,
    pub hook: String,
    pub priority: i64,
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledRule {
    /// The rule in the plan's syntax (see [`crate::plan::nftables::Rule::render`]), the
    /// counter without its values; statements the plan never writes appear as nft's JSON.
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledChain {
    pub name: String,
    pub hook: Option<InstalledHook>,
    pub rules: Vec<InstalledRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledSet {
    pub name: String,
    #[serde(rename = "type")]
    pub set_type: String,
    pub flags: Vec<String>,
    /// Written the way the plan writes them (`22`, `3000-3010`, `10.0.0.0/8`, a host as its
    /// address).
    pub elements: Vec<String>,
}

/// `table inet intercept` as `nft -j list table` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub sets: Vec<InstalledSet>,
    pub chains: Vec<InstalledChain>,
    /// Objects of kinds the plan never creates (maps, named counters, flowtables, …).
    pub other: Vec<String>,
}

impl Installed {
    pub fn parse(json: &str) -> Result<Installed, String> {
        let mut installed = Installed { sets: Vec::new(), chains: Vec::new(), other: Vec::new() };
        for object in objects(json)? {
            let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
                return Err(format!("not an object: {object}"));
            };
            match kind.as_str() {
                "metainfo" | "table" => {}
                "set" => installed.sets.push(InstalledSet {
                    name: str_field(body, "name").to_owned(),
                    set_type: body.get("type").map(type_name).unwrap_or_default(),
                    flags: body
                        .get("flags")
                        .and_then(Value::as_array)
                        .map(|f| f.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                        .unwrap_or_default(),
                    elements: body
                        .get("elem")
                        .and_then(Value::as_array)
                        .map(|e| e.iter().map(element).collect())
                        .unwrap_or_default(),
                }),
                "chain" => installed.chains.push(InstalledChain {
                    name: str_field(body, "name").to_owned(),
                    hook: body.get("hook").map(|_| InstalledHook {
                        chain_type: str_field(body, "type").to_owned(),
                        hook: str_field(body, "hook").to_owned(),
                        priority: body.get("prio").and_then(Value::as_i64).unwrap_or_default(),
                        policy: str_field(body, "policy").to_owned(),
                    }),
                    rules: Vec::new(),
                }),
                "rule" => {
                    let chain = str_field(body, "chain");
                    let rule = parse_rule(body);
                    match installed.chains.iter_mut().find(|c| c.name == chain) {
                        Some(c) => c.rules.push(rule),
                        None => return Err(format!("a rule of chain {chain}, which is not listed")),
                    }
                }
                other => installed.other.push(format!("{other} {}", str_field(body, "name"))),
            }
        }
        Ok(installed)
    }

    pub fn chain(&self, name: &str) -> Option<&InstalledChain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The output chain is hooked and sends traffic to the egress chain.
    pub fn is_complete(&self) -> bool {
        let jumps = self.chain(OUTPUT_CHAIN).is_some_and(|c| {
            c.hook.as_ref().is_some_and(|h| h.hook == "output")
                && c.rules.iter().any(|r| r.rule.contains(&format!(" jump {EGRESS_CHAIN} ")))
        });
        jumps && self.chain(EGRESS_CHAIN).is_some()
    }

    /// How the table differs from what `plan` installs, one sentence each; empty when it is
    /// exactly the plan. Counters and handles do not count.
    pub fn drift(&self, plan: &NftablesPlan) -> Vec<String> {
        let (normal, mut drift) = self.normalised();
        normal.drift_of_normalised(plan, &mut drift);
        drift
    }

    /// The table with every set under its own name (not `<name>_next`, see [`Steps`]), and
    /// the sets installed under both names (a replace that did not finish).
    fn normalised(&self) -> (Installed, Vec<String>) {
        let mut normal = self.clone();
        for set in &mut normal.sets {
            if let Some(own) = set.name.strip_suffix(SECOND_NAME_SUFFIX) {
                set.name = own.to_owned();
            }
        }
        for rule in normal.chains.iter_mut().flat_map(|c| &mut c.rules) {
            let words: Vec<&str> = rule
                .rule
                .split(' ')
                .map(|w| {
                    w.strip_prefix('@')
                        .and_then(|n| n.strip_suffix(SECOND_NAME_SUFFIX))
                        .map_or(w, |_| &w[..w.len() - SECOND_NAME_SUFFIX.len()])
                })
                .collect();
            rule.rule = words.join(" ");
        }
        let mut twice = Vec::new();
        for (i, set) in normal.sets.iter().enumerate() {
            if normal.sets[..i].iter().any(|s| s.name == set.name) {
                twice.push(format!(
                    "set {} is installed twice, as {0} and {0}{SECOND_NAME_SUFFIX} (an apply did not finish)",
                    set.name
                ));
            }
        }
        (normal, twice)
    }

    fn drift_of_normalised(&self, plan: &NftablesPlan, drift: &mut Vec<String>) {
        for other in &self.other {
            drift.push(format!("the table holds a {other}, which intercept does not create"));
        }
        for set in &plan.sets {
            let Some(installed) = self.sets.iter().find(|s| s.name == set.name) else {
                drift.push(format!("set {} is missing", set.name));
                continue;
            };
            if installed.set_type != set.set_type.as_str() || installed.flags != ["interval"] {
                drift.push(format!(
                    "set {}: type {} flags {:?}, the plan has type {} flags interval",
                    set.name,
                    installed.set_type,
                    installed.flags,
                    set.set_type.as_str()
                ));
            }
            drift.extend(element_drift(set.name, &installed.elements, &set.rendered_elements()));
        }
        for set in self.sets.iter().filter(|s| plan.set(&s.name).is_none()) {
            drift.push(format!("set {} is not in the plan", set.name));
        }
        for chain in &plan.chains {
            let Some(installed) = self.chain(chain.name) else {
                drift.push(format!("chain {} is missing", chain.name));
                continue;
            };
            let want_hook = chain.hook.map(|hook| InstalledHook {
                chain_type: "nat".to_owned(),
                hook: hook.as_str().to_owned(),
                priority: NAT_PRIORITY.into(),
                policy: "accept".to_owned(),
            });
            if installed.hook != want_hook {
                drift.push(format!(
                    "chain {}: hooked as {:?}, the plan has {:?}",
                    chain.name, installed.hook, want_hook
                ));
            }
            let want: Vec<String> = chain.rules.iter().map(|r| r.render()).collect();
            let got: Vec<&str> = installed.rules.iter().map(|r| r.rule.as_str()).collect();
            if got != want {
                let at = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len().min(want.len()));
                let describe = |rule: Option<&str>| rule.map_or("nothing".to_owned(), |r| format!("`{r}`"));
                drift.push(format!(
                    "chain {}: {} rules, the plan has {}; rule {} is {}, the plan has {}",
                    chain.name,
                    got.len(),
                    want.len(),
                    at + 1,
                    describe(got.get(at).copied()),
                    describe(want.get(at).map(String::as_str)),
                ));
            }
        }
        for chain in self.chains.iter().filter(|c| plan.chain(&c.name).is_none()) {
            drift.push(format!("chain {} is not in the plan", chain.name));
        }
    }
}

/// A set type: a name, or a concatenation (`["ipv4_addr", "inet_service"]`).
fn type_name(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().map(type_name).collect::<Vec<_>>().join(" . "),
        other => other.to_string(),
    }
}

/// One set element in the plan's syntax: `22`, `3000-3010`, `10.0.0.0/8`, `169.254.169.254`.
fn element(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(prefix) = o.get("prefix") {
                format!("{}/{}", str_field(prefix, "addr"), prefix.get("len").map(Value::to_string).unwrap_or_default())
            } else if let Some(Value::Array(range)) = o.get("range") {
                range.iter().map(element).collect::<Vec<_>>().join("-")
            } else if let Some(elem) = o.get("elem") {
                // An element with options of its own (a comment, a timeout): its value.
                elem.get("val").map(element).unwrap_or_else(|| elem.to_string())
            } else {
                value.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Differences between two element lists, with a few examples of each.
fn element_drift(set: &str, installed: &[String], planned: &[String]) -> Option<String> {
    let installed: BTreeSet<&str> = installed.iter().map(String::as_str).collect();
    let planned: BTreeSet<&str> = planned.iter().map(String::as_str).collect();
    let missing: Vec<&str> = planned.difference(&installed).copied().collect();
    let extra: Vec<&str> = installed.difference(&planned).copied().collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    let examples = |list: &[&str]| {
        let shown = list.iter().take(3).copied().collect::<Vec<_>>().join(", ");
        if list.len() > 3 { format!("{shown}, …") } else { shown }
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing ({})", count(missing.len(), "planned element"), examples(&missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("{} not in the plan ({})", count(extra.len(), "element"), examples(&extra)));
    }
    Some(format!("set {set}: {}", parts.join("; ")))
}

fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// A listed rule in the plan's syntax, and its counter.
fn parse_rule(rule: &Value) -> InstalledRule {
    let mut words = Vec::new();
    let (mut packets, mut bytes) = (0, 0);
    for statement in rule.get("expr").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        match statement_text(statement) {
            Some(text) => words.push(text),
            None => words.push(statement.to_string()),
        }
        if let Some(counter) = statement.get("counter") {
            packets = counter.get("packets").and_then(Value::as_u64).unwrap_or_default();
            bytes = counter.get("bytes").and_then(Value::as_u64).unwrap_or_default();
        }
    }
    let mut text = words.join(" ");
    if let Some(comment) = rule.get("comment").and_then(Value::as_str) {
        let _ = write!(text, " comment \"{comment}\"");
    }
    InstalledRule { rule: text, packets, bytes }
}

/// The statements the plan writes, as nft's text syntax; `None` for anything else.
fn statement_text(statement: &Value) -> Option<String> {
    let (kind, body) = statement.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "match" => {
            let op = match body.get("op")?.as_str()? {
                "==" => "",
                "!=" => "!= ",
                _ => return None,
            };
            let right = match body.get("right")? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            format!("{} {op}{right}", expression_text(body.get("left")?)?)
        }
        "counter" => "counter".to_owned(),
        "jump" => format!("jump {}", body.get("target")?.as_str()?),
        "return" => "return".to_owned(),
        "redirect" => match body.as_object() {
            Some(o) if o.len() == 1 => format!("redirect to :{}", o.get("port")?.as_u64()?),
            _ => return None,
        },
        _ => return None,
    })
}

fn expression_text(expression: &Value) -> Option<String> {
    let (kind, body) = expression.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "meta" => format!("meta {}", body.get("key")?.as_str()?),
        "payload" => format!("{} {}", body.get("protocol")?.as_str()?, body.get("field")?.as_str()?),
        "fib" => {
            let flags: Vec<&str> = body.get("flags")?.as_array()?.iter().filter_map(Value::as_str).collect();
            format!("fib {} {}", flags.join(" . "), body.get("result")?.as_str()?)
        }
        _ => return None,
    })
}

fn summary_of_plan(plan: &NftablesPlan) -> String {
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
}

impl Status {
    /// 0 when installed and matching the configuration (if one was given), else 1.
    pub fn exit_code(&self) -> i32 {
        let whole = self.unfinished.is_none() || self.matches == Some(true);
        super::status_exit_code(self.installed && whole, self.matches)
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
        let verdict = match (self.installed, self.matches) {
            (_, Some(true) | None) if self.unfinished.is_some() && self.exit_code() != 0 => {
                "NOT whole: a change was interrupted"
            }
            (true, Some(true)) => "installed, and matches the configuration",
            (true, Some(false)) => "installed, but does NOT match the configuration",
            (true, None) => "installed (give a configuration to check it for drift)",
            (false, _) => "NOT installed",
        };
        let _ = writeln!(out, "{verdict}");
        for reason in &self.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
        out
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => crate::plan::to_json(self),
        }
    }
}

#[cfg(test)]
mod tests;
