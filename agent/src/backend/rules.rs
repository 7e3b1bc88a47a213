//! What the rule backends (iptables, nftables) share: one adapter to the [`Backend`]
//! interface, and one `status` report around each backend's own listing.
//!
//! The two differ in what they run and list, not in how an operation becomes a [`Change`]
//! or a [`Status`]: each implements [`Rules`] (whatever runs its commands, the tests' fakes
//! included) and [`Engine`] (how it opens on a host), and [`Handle`] does the rest once.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::backend::{self, ApplyOptions, Backend, Change, Counters, Kind, Requirements, Status, Target};
use crate::config::{IngressFallback, ProxyConfig};
use crate::netns;
use crate::plan::Format;

/// A rule backend's operations on the namespace its runner works in.
pub trait Rules {
    type Plan;
    type Detail: ChangeDetail + 'static;
    type Listing: Listing + 'static;
    type Error;

    /// Whether anything of intercept's is installed, whole or not.
    fn present(&self) -> Result<bool, Self::Error>;
    fn apply(&self, plan: &Self::Plan, dry_run: bool) -> Result<RulesChange<Self::Detail>, Self::Error>;
    fn remove(&self, dry_run: bool) -> Result<RulesChange<Self::Detail>, Self::Error>;
    fn status(&self, plan: Option<&Self::Plan>) -> Result<RulesStatus<Self::Listing>, Self::Error>;
}

/// A rule backend as a host opens it: what [`Handle`] needs besides its [`Rules`].
pub trait Engine: Rules<Error: Into<backend::Error>> + Sized {
    const KIND: Kind;
    /// Whether [`Backend::usable`] opens the backend too, besides checking the requirements:
    /// nftables answers only when the kernel has nf_tables, found by running nft once.
    const OPEN_TO_CHECK: bool;
    /// The backend's own options, from the [`Target`].
    type Options: Copy + fmt::Debug;

    fn options(target: &Target) -> Self::Options;
    fn open(netns: netns::Target, options: Self::Options) -> Result<Self, Self::Error>;
    fn plan(config: &ProxyConfig) -> Self::Plan;
    fn requirements(options: Self::Options, config: Option<&ProxyConfig>) -> Requirements;
}

/// What an apply or remove of a rule backend did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RulesChange<D> {
    pub target: String,
    /// What the backend ran, or would run.
    #[serde(flatten)]
    pub detail: D,
    pub warnings: Vec<String>,
    /// Something was changed; `false` when everything already was as it should be.
    pub changed: bool,
    pub dry_run: bool,
    /// What is installed afterwards, in a few words.
    pub installed: String,
}

/// A rule backend's account of what an apply or remove ran.
pub trait ChangeDetail: Serialize + Sized {
    /// For people, starting with `verb`; the warnings are not included (the CLI prints them
    /// to stderr).
    fn render_text(change: &RulesChange<Self>, verb: &str) -> String;
}

impl<D: ChangeDetail> RulesChange<D> {
    pub fn render_text(&self, verb: &str) -> String {
        D::render_text(self, verb)
    }
}

/// What a rule backend lists for `intercept status`: serialised beside the common fields,
/// and rendered as the backend words it.
pub trait Listing: Serialize {
    /// The headline (what, in the `target`) and what is installed, before the verdict.
    fn render_text(&self, target: &str, out: &mut String);
}

/// One installed rule, as the backend prints it, with its packet and byte counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleStatus {
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

impl RuleStatus {
    /// `rules` as `intercept status` shows them: a header, then a rule a line behind its
    /// counters.
    pub fn push_table<'r>(out: &mut String, rules: impl IntoIterator<Item = &'r RuleStatus>) {
        let _ = writeln!(out, "{:>10} {:>12}  rule", "packets", "bytes");
        for rule in rules {
            let _ = writeln!(out, "{:>10} {:>12}  {}", rule.packets, rule.bytes, rule.rule);
        }
    }
}

/// A section of `intercept status` after the rules (the sets): a blank line and its title,
/// then its lines indented; nothing at all without lines.
pub fn push_section(out: &mut String, title: &str, lines: impl IntoIterator<Item = String>) {
    let mut lines = lines.into_iter().peekable();
    if lines.peek().is_some() {
        let _ = writeln!(out, "\n{title}");
        for line in lines {
            let _ = writeln!(out, "  {line}");
        }
    }
}

/// `intercept status` of a rule backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RulesStatus<L> {
    pub target: String,
    #[serde(flatten)]
    pub listing: L,
    /// The rules that send egress into intercept's chain are installed.
    pub installed: bool,
    /// Whether what is installed is exactly what the configuration asks for; `None` when no
    /// configuration was given.
    pub matches: Option<bool>,
    /// Why it is not installed or does not match, one sentence each.
    pub reasons: Vec<String>,
    pub warnings: Vec<String>,
    /// An `apply` or `remove` began and did not finish (killed, or still running): what is
    /// installed may be a mix of two configurations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<String>,
    /// By decision, of the rules that are the configuration's (none without one).
    #[serde(skip)]
    pub counters: Counters,
    /// With a configuration that has ingress: whether its rules are installed, and what was
    /// seen.
    #[serde(skip)]
    pub ingress: Option<(bool, String)>,
}

impl<L: Listing> RulesStatus<L> {
    /// 0 when installed and matching the configuration (if one was given), else 1; also 1
    /// after an unfinished change, unless what is installed matches the configuration exactly
    /// (then it is whole, whatever was interrupted).
    pub fn exit_code(&self) -> i32 {
        let whole = self.unfinished.is_none() || self.matches == Some(true);
        backend::status_exit_code(self.installed && whole, self.matches)
    }

    /// For people; the warnings are not included (the CLI prints them to stderr).
    pub fn render_text(&self) -> String {
        let mut out = "intercept status: ".to_owned();
        self.listing.render_text(&self.target, &mut out);
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
        out.push_str(verdict);
        out.push('\n');
        for reason in &self.reasons {
            let _ = writeln!(out, "  - {reason}");
        }
        out
    }
}

impl<L: Listing> backend::Report for RulesStatus<L> {
    fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => backend::json(self),
        }
    }
}

/// An apply's or remove's report, with the verb its text starts with.
struct Rendered<D> {
    verb: &'static str,
    report: RulesChange<D>,
}

impl<D: ChangeDetail> backend::Report for Rendered<D> {
    fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.report.render_text(self.verb),
            Format::Json => backend::json(&self.report),
        }
    }
}

fn change<D: ChangeDetail + 'static>(verb: &'static str, report: RulesChange<D>) -> Change {
    Change {
        changed: report.changed,
        warnings: report.warnings.clone(),
        report: Box::new(Rendered { verb, report }),
        events: None,
    }
}

/// The warning for an IngressFallback a rule backend cannot honour: a REDIRECT cannot tell
/// whether the proxy listens, so inbound connections are refused meanwhile whatever it says.
fn unhonoured_fallback(kind: Kind, config: &ProxyConfig) -> Option<String> {
    (config.ingress.is_some() && config.ingress_fallback == IngressFallback::App).then(|| {
        format!(
            "IngressFallback app is for the eBPF backend: with {kind}, inbound connections to AppPorts are refused \
             while the proxy has no listener"
        )
    })
}

/// A rule backend for one network namespace, behind the [`Backend`] interface.
pub struct Handle<E: Engine> {
    netns: netns::Target,
    options: E::Options,
}

impl<E: Engine> fmt::Debug for Handle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("kind", &E::KIND)
            .field("netns", &self.netns)
            .field("options", &self.options)
            .finish()
    }
}

impl<E: Engine> Handle<E> {
    /// Nothing is opened or run until an operation (which reports a namespace that cannot
    /// be opened before it changes anything).
    pub fn open(target: &Target) -> Handle<E> {
        Handle { netns: target.netns.clone(), options: E::options(target) }
    }

    fn engine(&self) -> Result<E, backend::Error> {
        E::open(self.netns.clone(), self.options).map_err(Into::into)
    }
}

impl<E: Engine> Backend for Handle<E> {
    fn kind(&self) -> Kind {
        E::KIND
    }

    fn requirements(&self, config: Option<&ProxyConfig>) -> Requirements {
        E::requirements(self.options, config)
    }

    fn usable(&self) -> Result<(), String> {
        let unmet = self.requirements(None).unmet();
        if !unmet.is_empty() {
            return Err(unmet.join("; "));
        }
        if E::OPEN_TO_CHECK {
            self.engine().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn present(&self) -> Result<bool, backend::Error> {
        match self.engine() {
            Ok(engine) => engine.present().map_err(Into::into),
            Err(e @ (backend::Error::BadTarget { .. } | backend::Error::Netns(_))) => Err(e),
            // Without a working backend nothing can have been installed with it.
            Err(_) => Ok(false),
        }
    }

    fn apply(&self, config: &ProxyConfig, options: ApplyOptions) -> Result<Change, backend::Error> {
        self.accepts(options)?;
        let report = self.engine()?.apply(&E::plan(config), options.dry_run).map_err(Into::into)?;
        let mut change = change("apply", report);
        change.warnings.extend(unhonoured_fallback(E::KIND, config));
        Ok(change)
    }

    fn remove(&self, dry_run: bool) -> Result<Change, backend::Error> {
        Ok(change("remove", self.engine()?.remove(dry_run).map_err(Into::into)?))
    }

    fn status(&self, config: Option<&ProxyConfig>) -> Result<Status, backend::Error> {
        let status = self.engine()?.status(config.map(E::plan).as_ref()).map_err(Into::into)?;
        Ok(Status {
            kind: E::KIND,
            installed: status.installed,
            matches: status.matches,
            reasons: status.reasons.clone(),
            warnings: status.warnings.clone(),
            counters: status.counters.clone(),
            ingress: status.ingress.clone(),
            cgroup: None,
            installation: "intercept's rules with the jump to them",
            exit_code: status.exit_code(),
            report: Box::new(status),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::seed_config;

    #[test]
    fn only_an_ingress_fallback_to_the_app_is_warned_about() {
        let app = ProxyConfig { ingress_fallback: IngressFallback::App, ..seed_config() };
        let cases = [
            (seed_config(), false),
            (app.clone(), true),
            // Without ingress there is nothing to fall back from.
            (ProxyConfig { ingress: None, ..app }, false),
        ];
        for (config, warned) in cases {
            let warning = unhonoured_fallback(Kind::Nftables, &config);
            assert_eq!(warning.is_some(), warned, "{config:?}");
            if let Some(warning) = warning {
                assert!(warning.contains("with nftables, inbound connections to AppPorts are refused"), "{warning}");
            }
        }
    }
}
