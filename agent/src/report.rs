//! The report of `intercept check`: what the configuration means, with every finding about
//! it (validation and task-definition lint), rendered for people or as JSON.
//!
//! Both renderings are deterministic: the same input gives byte-identical output, so
//! reports can be snapshot-tested and diffed.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::config::{
    ConfigErrors, Diagnostic, Entry, Input, METADATA_IPS, PortSet, ProxyConfig, SSH_PORT, Severity, Validated, validate,
};
use crate::lint::lint;

/// Exit code of `intercept check` when any error was found (the project's code for bad input).
pub const EXIT_ERRORS: i32 = 2;

/// Longest list the text report prints in full; JSON always carries everything.
const TEXT_LIST_LIMIT: usize = 10;
/// Longest value the text report prints in full.
const TEXT_VALUE_LIMIT: usize = 80;
const TEXT_WIDTH: usize = 100;
const LABEL_WIDTH: usize = 21;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// What was checked, e.g. `task definition taskB.json`.
    source: String,
    /// `None` when the proxy configuration did not validate.
    config: Option<ConfigSummary>,
    implicit_exemptions: ImplicitExemptions,
    /// From reading and validating the proxy configuration, in input order.
    config_diagnostics: Vec<Diagnostic>,
    /// From [`crate::lint::lint`]; `None` when the input was not a task definition.
    lint_diagnostics: Option<Vec<Diagnostic>>,
    errors: usize,
    warnings: usize,
    exit_code: i32,
}

/// The effective configuration, lists rendered as text (`"8000-8099"`, `"10.0.0.0/8"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigSummary {
    pub ignored_uids: Vec<u32>,
    pub ignored_gids: Vec<u32>,
    pub proxy_egress_port: u16,
    /// Where DNS goes; `None`: DNS is not captured (not configured, or port 53 ignored).
    pub proxy_dns_port: Option<u16>,
    /// `None`: every destination not exempt is redirected.
    pub egress_included_ips: Option<Vec<String>>,
    /// `None`: inbound traffic is not intercepted.
    pub proxy_ingress_port: Option<u16>,
    pub app_ports: Vec<String>,
    /// As configured.
    pub egress_ignored_ports: Vec<String>,
    /// As configured.
    pub egress_ignored_ips: Vec<String>,
    /// Configured plus implicit exemptions: what is actually not intercepted.
    pub effective_ignored_ports: Vec<String>,
    pub effective_ignored_ips: Vec<String>,
    pub ipv6: bool,
}

impl ConfigSummary {
    pub fn new(config: &ProxyConfig) -> Self {
        ConfigSummary {
            ignored_uids: config.ignored_uids.clone(),
            ignored_gids: config.ignored_gids.clone(),
            proxy_egress_port: config.proxy_egress_port,
            proxy_dns_port: config.dns_capture(),
            egress_included_ips: config
                .egress_included_ips
                .as_ref()
                .map(|nets| nets.iter().map(ToString::to_string).collect()),
            proxy_ingress_port: config.ingress.as_ref().map(|i| i.proxy_port),
            app_ports: config.ingress.as_ref().map(|i| port_list(&i.app_ports)).unwrap_or_default(),
            egress_ignored_ports: port_list(&config.egress_ignored_ports),
            egress_ignored_ips: config.egress_ignored_ips.iter().map(ToString::to_string).collect(),
            effective_ignored_ports: port_list(&config.effective_ignored_ports()),
            effective_ignored_ips: config.effective_ignored_ips().iter().map(ToString::to_string).collect(),
            ipv6: config.ipv6,
        }
    }
}

/// The exemptions intercept adds to every configuration, as the ECS agent does, unless
/// `--no-implicit-exemptions` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImplicitExemptions {
    pub enabled: bool,
    pub ports: Vec<u16>,
    pub ips: Vec<Ipv4Addr>,
}

impl ImplicitExemptions {
    pub fn new(enabled: bool) -> Self {
        if enabled {
            ImplicitExemptions { enabled, ports: vec![SSH_PORT], ips: METADATA_IPS.to_vec() }
        } else {
            ImplicitExemptions { enabled, ports: Vec::new(), ips: Vec::new() }
        }
    }

    fn describe(&self) -> String {
        if !self.enabled {
            return "disabled by --no-implicit-exemptions: only what is configured is exempt".to_owned();
        }
        let ports = self.ports.iter().map(|p| format!("port {p}"));
        let ips = self.ips.iter().map(ToString::to_string);
        ports.chain(ips).collect::<Vec<_>>().join(", ")
    }
}

impl CheckReport {
    /// What `intercept check` reports for one input: validation and, for a task definition,
    /// lint findings, all at once. `no_implicit_exemptions` is the flag, for the report of an
    /// input that could not be read.
    pub fn check(input: Result<Input, ConfigErrors>, no_implicit_exemptions: bool) -> CheckReport {
        match input {
            Ok(Input { raw, task_definition }) => {
                let validation = validate(&raw);
                let config = validation.as_ref().ok().map(|v| &v.config);
                let findings = task_definition.as_ref().map(|doc| lint(doc, config));
                CheckReport::new(raw.source.to_string(), validation.clone(), raw.implicit_exemptions, findings)
            }
            Err(errors) => CheckReport::new("input", Err(errors), !no_implicit_exemptions, None),
        }
    }

    /// One report for each task definition read (a template may hold several), or one for
    /// an input that could not be read at all.
    pub fn check_all(entries: Result<Vec<Entry>, ConfigErrors>, no_implicit_exemptions: bool) -> Vec<CheckReport> {
        match entries {
            Ok(entries) => entries
                .into_iter()
                .map(|entry| match entry.input {
                    Ok(input) => CheckReport::check(Ok(input), no_implicit_exemptions),
                    Err(errors) => {
                        CheckReport::new(entry.source.to_string(), Err(errors), !no_implicit_exemptions, None)
                    }
                })
                .collect(),
            Err(errors) => vec![CheckReport::check(Err(errors), no_implicit_exemptions)],
        }
    }

    /// `validation` is the outcome of reading and validating the proxy configuration;
    /// `implicit_exemptions` says whether they are on (`--no-implicit-exemptions` not
    /// given), and is what the report shows when the configuration did not validate (a
    /// validated configuration carries its own); `lint` holds the task-definition findings,
    /// `None` when the input was not a task definition.
    pub fn new(
        source: impl Into<String>,
        validation: Result<Validated, ConfigErrors>,
        implicit_exemptions: bool,
        lint: Option<Vec<Diagnostic>>,
    ) -> Self {
        let (config, implicit, mut config_diagnostics) = match validation {
            Ok(Validated { config, warnings }) => {
                (Some(ConfigSummary::new(&config)), config.implicit_exemptions, warnings)
            }
            Err(ConfigErrors(diagnostics)) => (None, implicit_exemptions, diagnostics),
        };
        // A configuration that did not validate must show as an error, even if validation
        // failed to say why.
        if config.is_none() && !config_diagnostics.iter().any(Diagnostic::is_error) {
            config_diagnostics.push(Diagnostic::error(
                "proxyConfiguration",
                None,
                "did not validate, and no reason was reported",
            ));
        }
        let all = || config_diagnostics.iter().chain(lint.iter().flatten());
        let errors = all().filter(|d| d.is_error()).count();
        let warnings = all().filter(|d| d.severity == Severity::Warning).count();
        CheckReport {
            source: source.into(),
            config,
            implicit_exemptions: ImplicitExemptions::new(implicit),
            config_diagnostics,
            lint_diagnostics: lint,
            errors,
            warnings,
            exit_code: if errors > 0 { EXIT_ERRORS } else { 0 },
        }
    }

    /// 0 when nothing is wrong (warnings allowed), [`EXIT_ERRORS`] when anything is.
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }

    pub fn error_count(&self) -> usize {
        self.errors
    }

    pub fn warning_count(&self) -> usize {
        self.warnings
    }

    pub fn config(&self) -> Option<&ConfigSummary> {
        self.config.as_ref()
    }

    /// Every finding: validation first, then lint, each in input order.
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.config_diagnostics.iter().chain(self.lint_diagnostics.iter().flatten())
    }

    /// Several reports for people, one after the other.
    pub fn render_all_text(reports: &[CheckReport]) -> String {
        reports.iter().map(CheckReport::render_text).collect::<Vec<_>>().join("\n")
    }

    /// Several reports as JSON: one report as itself, several as an array of them.
    pub fn render_all_json(reports: &[CheckReport]) -> String {
        match reports {
            [one] => one.render_json(),
            all => {
                let mut json = serde_json::to_string_pretty(all).expect("a report is always serialisable");
                json.push('\n');
                json
            }
        }
    }

    /// The worst exit code of several reports.
    pub fn worst_exit_code(reports: &[CheckReport]) -> i32 {
        reports.iter().map(CheckReport::exit_code).max().unwrap_or(0)
    }

    /// The report as pretty-printed JSON (field names are part of the CLI's interface).
    pub fn render_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("a report is always serialisable");
        json.push('\n');
        json
    }

    /// The report for people: the effective configuration, the findings grouped by
    /// severity, and a result line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "intercept check: {}", self.source);
        out.push('\n');
        match &self.config {
            Some(config) => {
                out.push_str("effective configuration\n");
                render_config(&mut out, config);
            }
            None => out.push_str("effective configuration: none, the proxy configuration has errors (below)\n"),
        }
        line(&mut out, "implicit exemptions", &self.implicit_exemptions.describe());
        if self.lint_diagnostics.is_none() {
            line(&mut out, "lint", "not run: no task definition was read");
        }
        out.push('\n');
        for severity in [Severity::Error, Severity::Warning] {
            let found: Vec<&Diagnostic> = self.diagnostics().filter(|d| d.severity == severity).collect();
            if found.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{}", plural(found.len(), &severity.to_string()));
            for d in found {
                render_finding(&mut out, d);
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "result: {}, {}",
            plural(self.errors, &Severity::Error.to_string()),
            plural(self.warnings, &Severity::Warning.to_string())
        );
        out
    }
}

fn render_config(out: &mut String, c: &ConfigSummary) {
    let identities: Vec<String> = c
        .ignored_uids
        .iter()
        .map(|u| format!("uid {u}"))
        .chain(c.ignored_gids.iter().map(|g| format!("gid {g}")))
        .collect();
    line(out, "ignored identities", &identities.join(", "));
    let proxy_ports = match c.proxy_ingress_port {
        Some(ingress) => format!("ingress {ingress}, egress {}", c.proxy_egress_port),
        None => format!("egress {} (no ingress port: inbound traffic is not intercepted)", c.proxy_egress_port),
    };
    line(out, "proxy ports", &proxy_ports);
    if c.proxy_ingress_port.is_some() {
        line(out, "app ports", &list(&c.app_ports));
    }
    line(out, "ignored ports", &with_configured(&c.effective_ignored_ports, &c.egress_ignored_ports));
    line(out, "ignored IPs", &with_configured(&c.effective_ignored_ips, &c.egress_ignored_ips));
    if let Some(included) = &c.egress_included_ips {
        line(out, "included IPs", &format!("{} (only these are redirected)", list(included)));
    }
    if let Some(port) = c.proxy_dns_port {
        line(out, "DNS", &format!("captured: port 53 (UDP and TCP) to {port}"));
    }
    line(out, "IPv6", if c.ipv6 { "on" } else { "off (IPv6 traffic is not intercepted)" });
}

/// The effective list, and what was configured when that differs.
fn with_configured(effective: &[String], configured: &[String]) -> String {
    if effective == configured {
        return list(effective);
    }
    format!("{}  [configured: {}]", list(effective), list(configured))
}

fn render_finding(out: &mut String, d: &Diagnostic) {
    // Values are shown as given, unquoted: a lint value that is not a string is compact JSON,
    // so quotes would misstate its type.
    let _ = match d.value.as_deref() {
        Some("") => writeln!(out, "  {} = (empty)", d.field),
        Some(value) => writeln!(out, "  {} = {}", d.field, cut(value, TEXT_VALUE_LIMIT)),
        None => writeln!(out, "  {}", d.field),
    };
    for text in wrap(&d.message, TEXT_WIDTH - 6) {
        let _ = writeln!(out, "      {text}");
    }
}

fn line(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "  {label:<LABEL_WIDTH$}{value}");
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    let shown = items.iter().take(TEXT_LIST_LIMIT).map(String::as_str).collect::<Vec<_>>().join(", ");
    match items.len().checked_sub(TEXT_LIST_LIMIT) {
        Some(more) if more > 0 => format!("{shown}, … and {more} more"),
        _ => shown,
    }
}

fn port_list(ports: &PortSet) -> Vec<String> {
    ports.ranges().iter().map(ToString::to_string).collect()
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 { format!("{n} {noun}") } else { format!("{n} {noun}s") }
}

fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Greedy word wrap; a word longer than `width` gets a line of its own.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

#[cfg(test)]
mod tests;
