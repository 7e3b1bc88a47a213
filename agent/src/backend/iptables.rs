//! The iptables backend: installs an [`IptablesPlan`] in a network namespace, replaces it,
//! removes it, and reports what is installed.
//!
//! Every operation is the same three steps: read what is installed (`iptables-save`,
//! `ipset save`), compute the transactions that turn it into what should be installed
//! ([`sync`], pure), run them. Re-applying the same configuration computes no transaction
//! at all; removing is syncing to "nothing"; a rollback is syncing back to what was read
//! before. Commands run through a [`Runner`], inside the target namespace; the process
//! itself never changes namespace.
//!
//! Per family the rules change in one `iptables-restore --noflush` transaction. ipsets are
//! created before the rules that match on them and destroyed after the rules that matched
//! on them are gone. When the IPv6 transaction fails, the IPv4 one (and the ipsets) are put
//! back as they were, so the namespace ends either fully configured or as before.

mod handle;
mod report;
pub mod save;
pub mod sync;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::Serialize;

use crate::backend::counters::{self, Counters};
use crate::backend::exec::{self, Call, Output, Runner, System};
use crate::backend::rules::{Rules, RulesStatus};
use crate::lock::{self, Held};
use crate::netns::{self, Netns, Target};
use crate::plan::IptablesPlan;
use crate::plan::iptables::{EGRESS_CHAIN, Family, INGRESS_CHAIN, IpSet, TABLE};

pub use handle::Handle;
use report::summary;
pub use report::{ChainStatus, FamilyStatus, Listing, Report, SetStatus, Transactions};
use save::{ParseError, RuleSpec, Table, count_rules, parse_ipsets, parse_table};
pub use sync::{Changes, Desired, DesiredState, Installed, OWN_SETS, State};

/// Which xtables variant manages the namespace's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The legacy xtables kernel interface (`iptables-legacy`).
    Legacy,
    /// nf_tables through the xtables compatibility layer (`iptables-nft`).
    Nft,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Nft => "nft",
        }
    }

    /// The IPv4 programs the backend runs in this mode.
    pub fn restore_program(self) -> &'static str {
        match self {
            Mode::Legacy => "iptables-legacy-restore",
            Mode::Nft => "iptables-nft-restore",
        }
    }

    pub fn save_program(self) -> &'static str {
        match self {
            Mode::Legacy => "iptables-legacy-save",
            Mode::Nft => "iptables-nft-save",
        }
    }

    /// `iptables-nft-save`, `ip6tables-legacy-restore`, …
    pub fn program(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        };
        format!("{base}-{}-{tool}", self.name())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iptables-{}", self.name())
    }
}

/// The iptables backend's options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// The xtables variant (`--iptables-mode`); default: the one that already holds rules in
    /// the namespace, else nft.
    pub mode: Option<Mode>,
}

/// `intercept status --backend iptables`.
pub type Status = RulesStatus<Listing>;

/// How long `iptables-restore` waits for the xtables lock another program holds (legacy).
const LOCK_WAIT: &str = "--wait=10";
pub(crate) const IPSET: &str = "ipset";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command that could not be run: its program is missing, or it did not start. (A
    /// namespace or lock error of the runner has its own variant.)
    #[error(transparent)]
    Run(exec::Error),
    #[error(
        "intercept lacks the {capability} capability, which {why}: run it as root, or grant the \
         capability (a container: `--cap-add {short}`; an ECS task definition: \
         linuxParameters.capabilities.add [\"{short}\"])"
    )]
    MissingCapability { capability: &'static str, short: &'static str, why: &'static str },
    #[error("{0}")]
    Failed(Box<Failure>),
    #[error("cannot read the output of `{call}`: {source}")]
    Parse {
        call: String,
        #[source]
        source: ParseError,
    },
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error(transparent)]
    Lock(#[from] lock::Error),
    #[error("{cause}\nthe namespace was put back as it was before")]
    RolledBack { cause: Box<Error> },
    #[error(
        "{cause}\nputting the namespace back as it was also failed: {rollback}\nthe namespace may be \
         partly configured: run `intercept apply` again, or `intercept remove`"
    )]
    RollbackFailed { cause: Box<Error>, rollback: Box<Error> },
}

impl From<exec::Error> for Error {
    fn from(e: exec::Error) -> Error {
        match e {
            exec::Error::Netns(e) => Error::Netns(e),
            exec::Error::Lock(e) => Error::Lock(e),
            run => Error::Run(run),
        }
    }
}

/// A command that ran and failed, with the line of its input it complained about.
#[derive(Debug)]
pub struct Failure {
    pub call: String,
    pub code: Option<i32>,
    pub stderr: String,
    /// The line number the command reported, and that line of its input.
    pub line: Option<(usize, String)>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed (exit code {code})", self.call)?,
            None => write!(f, "`{}` was killed by a signal", self.call)?,
        }
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            let lines: Vec<&str> = stderr.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
            write!(f, ":\n  {}", lines.join("\n  "))?;
        }
        if let Some((number, text)) = &self.line {
            write!(f, "\n  line {number} of its input: {text}")?;
        }
        if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
            f.write_str("\n  changing iptables rules needs CAP_NET_ADMIN (and CAP_NET_RAW for iptables-legacy): run intercept as root")?;
        }
        Ok(())
    }
}

/// The line number in messages like `line 4 failed`, `Error occurred at line: 4` (xtables)
/// or `Error in line 4:` (ipset).
fn reported_line(stderr: &str) -> Option<usize> {
    let mut rest = stderr;
    while let Some(at) = rest.find("line") {
        rest = &rest[at + "line".len()..];
        let digits: String = rest.trim_start_matches([':', ' ']).chars().take_while(char::is_ascii_digit).collect();
        if let Ok(number) = digits.parse() {
            return Some(number);
        }
    }
    None
}

fn failure(call: &Call, output: &Output) -> Error {
    let line = reported_line(&output.stderr).and_then(|number| {
        let text = call.stdin.as_deref()?.lines().nth(number.checked_sub(1)?)?;
        Some((number, text.to_owned()))
    });
    Error::Failed(Box::new(Failure { call: call.to_string(), code: output.code, stderr: output.stderr.clone(), line }))
}

/// Why a mode was chosen, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub mode: Mode,
    pub reason: String,
}

/// Picks the xtables variant the way mature tools do (Kubernetes' iptables-wrapper, Istio):
/// the one that already holds rules in the namespace, nft when neither does. intercept's
/// own chains decide first, so `remove` and `status` find them whatever else changed.
pub fn detect_mode(runner: &impl Runner) -> Result<Detection, Error> {
    struct Seen {
        available: bool,
        rules: usize,
        ours: bool,
    }
    let mut seen = Vec::new();
    for mode in [Mode::Legacy, Mode::Nft] {
        let mut entry = Seen { available: false, rules: 0, ours: false };
        for family in [Family::Ipv4, Family::Ipv6] {
            // Without `-t`: lists only tables that exist, and creates none.
            let call = Call::new(&mode.program(family, "save"), &[]);
            match runner.run(&call) {
                Ok(out) if out.success() => {
                    entry.available = true;
                    entry.rules += count_rules(&out.stdout);
                    let nat = parse_table(&out.stdout, TABLE).map_err(|source| parse_error(&call, source))?;
                    entry.ours |= sync::OWN_CHAINS.iter().any(|c| nat.has_chain(c));
                }
                Ok(_) | Err(exec::Error::MissingProgram { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        seen.push(entry);
    }
    let [legacy, nft] = <[Seen; 2]>::try_from(seen).unwrap_or_else(|_| unreachable!("two modes"));
    let counts = format!("iptables-legacy holds {} rules, iptables-nft {}", legacy.rules, nft.rules);
    let (mode, reason) = if legacy.ours != nft.ours {
        let mode = if legacy.ours { Mode::Legacy } else { Mode::Nft };
        (mode, format!("intercept's chains are in {mode}"))
    } else if legacy.available && legacy.rules > nft.rules {
        (Mode::Legacy, counts)
    } else if nft.available {
        let default = if nft.rules == 0 { " (nft is the default)" } else { "" };
        (Mode::Nft, format!("{counts}{default}"))
    } else if legacy.available {
        (Mode::Legacy, "iptables-nft is not usable here".to_owned())
    } else {
        let program = Mode::Nft.program(Family::Ipv4, "save");
        return Err(exec::Error::MissingProgram { program, package: "iptables" }.into());
    };
    Ok(Detection { mode, reason })
}

fn parse_error(call: &Call, source: ParseError) -> Error {
    Error::Parse { call: call.to_string(), source }
}

/// Whether the namespace can take IPv6 rules.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ipv6 {
    Usable,
    /// Why not; the IPv6 half is skipped with this as the warning.
    Unusable(String),
}

/// The backend, bound to a namespace (through its runner) and an xtables variant.
#[derive(Debug)]
pub struct Iptables<R: Runner = System> {
    runner: R,
    detection: Detection,
}

impl Iptables<System> {
    /// The backend for `target`, in `mode` or the detected one. Checks the capabilities it
    /// needs first, so a missing one is reported before anything runs.
    pub fn open(target: Target, mode: Option<Mode>) -> Result<Iptables<System>, Error> {
        require_capability(caps::Capability::CAP_NET_ADMIN, "NET_ADMIN", "reading and changing iptables rules needs")?;
        let netns = Netns::open(target)?;
        let backend = Iptables::new(System::new(netns), mode)?;
        if backend.mode() == Mode::Legacy {
            require_capability(caps::Capability::CAP_NET_RAW, "NET_RAW", "iptables-legacy needs")?;
        }
        Ok(backend)
    }
}

fn require_capability(cap: caps::Capability, short: &'static str, why: &'static str) -> Result<(), Error> {
    if crate::privileges::holds(cap) {
        return Ok(());
    }
    let capability = match cap {
        caps::Capability::CAP_NET_RAW => "CAP_NET_RAW",
        _ => "CAP_NET_ADMIN",
    };
    Err(Error::MissingCapability { capability, short, why })
}

impl<R: Runner> Iptables<R> {
    /// The backend running its commands through `runner`, in `mode` or the detected one.
    pub fn new(runner: R, mode: Option<Mode>) -> Result<Iptables<R>, Error> {
        let detection = match mode {
            Some(mode) => Detection { mode, reason: format!("--iptables-mode {}", mode.name()) },
            None => detect_mode(&runner)?,
        };
        Ok(Iptables { runner, detection })
    }

    pub fn mode(&self) -> Mode {
        self.detection.mode
    }

    pub fn detection(&self) -> &Detection {
        &self.detection
    }

    fn ipv6(&self) -> Result<Ipv6, Error> {
        Ok(match self.runner.read_sysctl("ipv6/conf/all/disable_ipv6")?.as_deref() {
            None => Ipv6::Unusable("the namespace has no IPv6 (no /proc/sys/net/ipv6)".to_owned()),
            Some("0") => Ipv6::Usable,
            Some(_) => {
                Ipv6::Unusable("IPv6 is disabled in the namespace (net.ipv6.conf.all.disable_ipv6 = 1)".to_owned())
            }
        })
    }

    /// The `nat` tables with counters: IPv4, and IPv6 when its table can be read (`Err`
    /// holds why not).
    fn read_tables(&self) -> Result<(Table, Result<Table, String>), Error> {
        let v4 = self.save(Family::Ipv4)?.map_err(|e| Error::Failed(Box::new(e)))?;
        let v6 = match self.save(Family::Ipv6) {
            Ok(v6) => v6.map_err(|e| e.to_string()),
            // A system without ip6tables has no IPv6 rules to read or write.
            Err(e @ Error::Run(exec::Error::MissingProgram { .. })) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        Ok((v4, v6))
    }

    fn save(&self, family: Family) -> Result<Result<Table, Failure>, Error> {
        let call = Call::new(&self.mode().program(family, "save"), &["-t", TABLE, "-c"]);
        let output = self.runner.run(&call)?;
        if !output.success() {
            return Ok(Err(Failure { call: call.to_string(), code: output.code, stderr: output.stderr, line: None }));
        }
        parse_table(&output.stdout, TABLE).map(Ok).map_err(|source| parse_error(&call, source))
    }

    fn read_state(&self) -> Result<State, Error> {
        let tables = self.read_tables()?;
        self.state_of(&tables)
    }

    fn state_of(&self, (v4, v6): &(Table, Result<Table, String>)) -> Result<State, Error> {
        Ok(State {
            v4: Installed::from_table(v4),
            v6: v6.as_ref().ok().map(Installed::from_table),
            sets: self.read_sets()?,
        })
    }

    /// intercept's ipsets; none when the ipset command is missing (then nothing can have
    /// created them, and applying a plan that needs one reports the missing command).
    fn read_sets(&self) -> Result<Vec<IpSet>, Error> {
        let list = Call::new(IPSET, &["list", "-n"]);
        let names = match self.runner.run(&list) {
            Ok(out) if out.success() => out.stdout,
            Ok(out) => return Err(failure(&list, &out)),
            Err(exec::Error::MissingProgram { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut sets = Vec::new();
        for name in names.lines().map(str::trim).filter(|n| sync::is_own_set(n)) {
            let call = Call::new(IPSET, &["save", name]);
            let out = self.runner.run(&call)?;
            if !out.success() {
                return Err(failure(&call, &out));
            }
            sets.extend(parse_ipsets(&out.stdout).map_err(|source| parse_error(&call, source))?);
        }
        Ok(sets)
    }

    /// Runs the changes from `before` to `desired` under `held`, the namespace's lock and
    /// what the change is (`None`: a dry run). While they run, the lock's marker says that a
    /// change is under way; it goes once the namespace is whole again (as desired, or rolled
    /// back), and stays when a rollback failed or the process was killed.
    fn sync(
        &self,
        desired: &DesiredState,
        before: &State,
        warnings: Vec<String>,
        held: Option<(&Held, &str)>,
    ) -> Result<Report, Error> {
        let dry_run = held.is_none();
        let changes = Changes::compute(desired, before);
        let report = Report {
            target: self.runner.describe_target(),
            warnings,
            changed: !changes.is_empty() && !dry_run,
            dry_run,
            detail: Transactions { mode: self.mode(), detection: self.detection.reason.clone(), changes },
            installed: summary(desired),
        };
        let Some((held, operation)) = held else { return Ok(report) };
        if report.detail.changes.is_empty() {
            // Whole already, even if an interrupted change left its marker.
            held.complete()?;
            return Ok(report);
        }
        held.begin(operation)?;
        let ran = self.run_changes(&report.detail.changes).map_err(|(cause, rollback_due)| {
            if !rollback_due {
                return cause;
            }
            match self.rollback(before) {
                Ok(false) => cause,
                Ok(true) => Error::RolledBack { cause: Box::new(cause) },
                Err(rollback) => Error::RollbackFailed { cause: Box::new(cause), rollback: Box::new(rollback) },
            }
        });
        match ran {
            Err(e @ Error::RollbackFailed { .. }) => Err(e),
            ran => {
                held.complete()?;
                ran.map(|()| report)
            }
        }
    }

    /// Runs `changes` in order. On failure also says whether a rollback is due: after any
    /// step but the last (`ipset restore` is not atomic, so even a failed first step may
    /// have changed something).
    fn run_changes(&self, changes: &Changes) -> Result<(), (Error, bool)> {
        if let Some(input) = &changes.ipset_update {
            self.ipset_restore(input).map_err(|e| (e, true))?;
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            if let Some(input) = changes.family(family) {
                self.restore(family, input).map_err(|e| (e, true))?;
            }
        }
        if let Some(input) = &changes.ipset_cleanup {
            // The rules are complete by now: a set that cannot be destroyed (referenced by
            // someone else's rule) is reported, not a reason to undo them.
            self.ipset_restore(input).map_err(|e| (e, false))?;
        }
        Ok(())
    }

    /// Puts back what `before` had, computed against what is installed now, so it undoes
    /// exactly what this run changed. `Ok(false)`: nothing had changed.
    fn rollback(&self, before: &State) -> Result<bool, Error> {
        let now = self.read_state()?;
        let mut target = before.as_desired();
        if now.v6.is_none() {
            target.v6 = None;
        }
        let changes = Changes::compute(&target, &now);
        if changes.is_empty() {
            return Ok(false);
        }
        self.run_changes(&changes).map_err(|(e, _)| e)?;
        Ok(true)
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), Error> {
        let call =
            Call::new(&self.mode().program(family, "restore"), &["--noflush", LOCK_WAIT]).with_stdin(input.to_owned());
        let output = self.runner.run(&call)?;
        if output.success() { Ok(()) } else { Err(failure(&call, &output)) }
    }

    fn ipset_restore(&self, input: &str) -> Result<(), Error> {
        let call = Call::new(IPSET, &["restore"]).with_stdin(input.to_owned());
        let output = self.runner.run(&call)?;
        if output.success() { Ok(()) } else { Err(failure(&call, &output)) }
    }
}

impl<R: Runner> Rules for Iptables<R> {
    type Plan = IptablesPlan;
    type Detail = Transactions;
    type Listing = Listing;
    type Error = Error;

    /// Installs `plan`, or replaces what intercept installed before with it. Nothing runs
    /// when it is installed already. `dry_run`: compute the transactions, run none.
    ///
    /// Waits for any other `apply` or `remove` on the namespace to finish first (the lock
    /// of [`crate::lock`]). A change interrupted half-way (killed between the ipsets and
    /// the rules, or between the IPv4 and IPv6 transactions) is made whole by the next
    /// `apply` or `remove`, which starts from what is installed.
    fn apply(&self, plan: &IptablesPlan, dry_run: bool) -> Result<Report, Error> {
        let held = self.runner.lock_for_change(dry_run)?;
        let ipv6 = self.ipv6()?;
        let state = self.read_state()?;
        let (desired, warnings) = desired_state(Some(plan), &ipv6, &state);
        let report = self.sync(&desired, &state, warnings, held.as_ref().map(|h| (h, "apply")))?;
        // Whole: the lock file is only needed while a change runs (a marker stays only for an
        // interrupted one), so nothing is left on the host for a namespace that goes away.
        if let Some(held) = held {
            held.release()?;
        }
        Ok(report)
    }

    /// Removes everything intercept installed: its chains, its rules in other chains, its
    /// ipsets. Nothing runs when there is nothing to remove.
    fn remove(&self, dry_run: bool) -> Result<Report, Error> {
        let held = self.runner.lock_for_change(dry_run)?;
        let state = self.read_state()?;
        let (desired, warnings) = desired_state(None, &Ipv6::Usable, &state);
        let report = self.sync(&desired, &state, warnings, held.as_ref().map(|h| (h, "remove")))?;
        if let Some(held) = held {
            held.release()?;
        }
        Ok(report)
    }

    /// Whether anything of intercept's is installed: a chain, a rule, an ipset.
    fn present(&self) -> Result<bool, Error> {
        Ok(!self.read_state()?.is_empty())
    }

    /// What is installed, its counters, and whether it matches `plan` when one is given.
    fn status(&self, plan: Option<&IptablesPlan>) -> Result<Status, Error> {
        let ipv6 = self.ipv6()?;
        let tables = self.read_tables()?;
        let state = self.state_of(&tables)?;
        let mut families = vec![FamilyStatus::new(Family::Ipv4, Some(&state.v4))];
        families.push(FamilyStatus::new(Family::Ipv6, state.v6.as_ref()));
        let installed = state.v4.chains.iter().any(|(name, _)| name == EGRESS_CHAIN) && !state.v4.jumps.is_empty();
        let unfinished = self.runner.locks().unfinished(&self.runner.lock_key()?)?;
        let mut reasons = Vec::new();
        if !installed {
            reasons.push(if state.is_empty() {
                format!("nothing of intercept's is installed in the {}", self.runner.describe_target())
            } else {
                format!("intercept is only partly installed: no {EGRESS_CHAIN} chain with a jump to it in IPv4")
            });
        }
        let mut warnings = Vec::new();
        let matches = plan.map(|plan| {
            let (desired, skipped) = desired_state(Some(plan), &ipv6, &state);
            warnings = skipped;
            let drift = sync::drift(&desired, &state);
            let matches = drift.is_empty();
            reasons.extend(drift);
            matches
        });
        let counters = plan.map(|plan| counters_of(plan, &state)).unwrap_or_default();
        let ingress = plan.and_then(|plan| ingress_of(plan, &state));
        if let Some(unfinished) = &unfinished {
            reasons.push(format!(
                "{unfinished} (interrupted, or still running): the rules may be partly old, partly new; \
                 `intercept apply` or `intercept remove` makes them whole"
            ));
        }
        Ok(Status {
            target: self.runner.describe_target(),
            listing: Listing {
                mode: self.mode(),
                detection: self.detection.reason.clone(),
                families,
                ipsets: state.sets.iter().map(SetStatus::from).collect(),
            },
            installed,
            matches,
            reasons,
            warnings,
            unfinished: unfinished.map(|u| u.to_string()),
            counters,
            ingress,
        })
    }
}

/// The packet counters of the installed rules that are `plan`'s, added up by the decision each
/// rule makes (both families together). A `nat` rule sees only the first packet of a
/// connection, so these count connections.
fn counters_of(plan: &IptablesPlan, state: &State) -> Counters {
    let mut counters = Counters::new();
    let families = [(Some(&plan.v4), Some(&state.v4)), (plan.v6.as_ref(), state.v6.as_ref())];
    for (planned, installed) in families {
        let (Some(planned), Some(installed)) = (planned, installed) else { continue };
        for chain in &planned.chains {
            let rules = installed.chains.iter().filter(|(name, _)| *name == chain.name).flat_map(|(_, rules)| rules);
            let rules: Vec<&save::SavedRule> = rules.collect();
            for rule in &chain.rules {
                let Some(effect) = rule.effect else { continue };
                let spec = RuleSpec::from_plan(rule);
                if let Some(installed) = rules.iter().find(|r| r.spec == spec) {
                    counters::add(&mut counters, effect, installed.counters.packets);
                }
            }
        }
    }
    counters
}

/// With ingress in `plan`: whether its rules are installed (the jump from PREROUTING and the
/// redirects), per family that has either (IPv4 always), and what was seen.
fn ingress_of(plan: &IptablesPlan, state: &State) -> Option<(bool, String)> {
    let first = plan.v4.chains.iter().find(|c| c.name == INGRESS_CHAIN)?.rules.first()?;
    let port = first.redirect_port?;
    let mut seen = Vec::new();
    let mut whole = true;
    let families =
        [(Family::Ipv4, Some(&plan.v4), Some(&state.v4)), (Family::Ipv6, plan.v6.as_ref(), state.v6.as_ref())];
    for (family, planned, installed) in families {
        let (Some(planned), Some(installed)) = (planned, installed) else { continue };
        let jump = planned
            .jumps
            .iter()
            .filter(|j| j.target.last().is_some_and(|t| t == INGRESS_CHAIN))
            .all(|j| installed.jumps.iter().any(|r| r.spec == RuleSpec::from_plan(j)));
        let redirects: Vec<&save::SavedRule> =
            installed.chains.iter().filter(|(name, _)| name == INGRESS_CHAIN).flat_map(|(_, rules)| rules).collect();
        let redirect = planned
            .chains
            .iter()
            .filter(|c| c.name == INGRESS_CHAIN)
            .flat_map(|c| &c.rules)
            .all(|rule| redirects.iter().any(|r| r.spec == RuleSpec::from_plan(rule)));
        let any = installed.jumps.iter().any(|r| r.spec.chain == "PREROUTING") || !redirects.is_empty();
        // IPv4 is always installed; IPv6 only when the namespace and configuration have it.
        if family == Family::Ipv4 || any {
            whole &= jump && redirect;
            seen.push(format!(
                "{}: PREROUTING jump to {INGRESS_CHAIN} {}, REDIRECT to {port} {}",
                report::family_label(family),
                crate::backend::found(jump),
                crate::backend::found(redirect)
            ));
        }
    }
    Some((whole, seen.join("; ")))
}

/// What should be installed for `plan` (nothing when `None`) in a namespace in `state`,
/// and the warnings about what is skipped.
///
/// The IPv6 half is skipped when the namespace cannot take it; intercept's IPv6 rules from
/// an earlier run are still removed when the table can be read. IPv6 sets go with it.
fn desired_state(plan: Option<&IptablesPlan>, ipv6: &Ipv6, state: &State) -> (DesiredState, Vec<String>) {
    let mut warnings = Vec::new();
    let readable = state.v6.is_some();
    let v6 = match (plan.and_then(|p| p.v6.as_ref()), ipv6) {
        (Some(v6), Ipv6::Usable) if readable => Some(Desired::from_plan(v6)),
        (Some(_), reason) => {
            let why = match reason {
                Ipv6::Unusable(why) => why.clone(),
                Ipv6::Usable => "its ip6tables nat table cannot be read".to_owned(),
            };
            warnings.push(format!("IPv6 rules skipped: {why}; only IPv4 is intercepted"));
            readable.then(Desired::default)
        }
        (None, _) => readable.then(Desired::default),
    };
    let v6_planned = v6.as_ref().is_some_and(|d| !d.chains.is_empty());
    let sets = plan
        .map(|p| p.ipsets.iter().filter(|s| s.family == Family::Ipv4 || v6_planned).cloned().collect())
        .unwrap_or_default();
    let v4 = plan.map(|p| Desired::from_plan(&p.v4)).unwrap_or_default();
    let mut desired = DesiredState { v4, v6, sets };
    sync::place_sets(&mut desired, state);
    (desired, warnings)
}
