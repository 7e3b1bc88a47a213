//! The report of `intercept verify`: one line per check, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::EXIT_NOT_WORKING;
use crate::plan::Format;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub expected: String,
    pub observed: String,
    pub passed: bool,
}

impl Check {
    pub(super) fn new(
        check: impl Into<String>,
        expected: impl Into<String>,
        observed: impl Into<String>,
        passed: bool,
    ) -> Check {
        Check { check: check.into(), expected: expected.into(), observed: observed.into(), passed }
    }
}

/// How the egress redirection was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// ProxyEgressPort was free: verify listened on it and read SO_ORIGINAL_DST itself.
    Listener,
    /// The proxy listens on ProxyEgressPort: proven by the redirect counter.
    Counters,
}

/// The outcome of `intercept verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub backend: String,
    pub target: String,
    pub timeout_ms: u64,
    /// `None` when the live probes did not run.
    pub method: Option<Method>,
    pub checks: Vec<Check>,
    /// Counters the probes moved, and by how much (they are not restored; see the module docs).
    pub counters_moved: BTreeMap<String, u64>,
    pub verified: bool,
    pub exit_code: i32,
}

impl VerifyReport {
    pub fn new(backend: &str, target: &str, timeout: Duration) -> VerifyReport {
        VerifyReport {
            backend: backend.to_owned(),
            target: target.to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            method: None,
            checks: Vec::new(),
            counters_moved: BTreeMap::new(),
            verified: false,
            exit_code: EXIT_NOT_WORKING,
        }
    }

    pub(super) fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// Adds a probe's check; `false` when the deadline passed and probing ends.
    pub(super) fn step(&mut self, step: super::Step) -> bool {
        let go_on = step.is_ok();
        self.push(step.unwrap_or_else(|timed_out| timed_out));
        go_on
    }

    /// Settles the verdict: verified when there were checks and every one passed.
    pub fn finish(mut self) -> VerifyReport {
        self.verified = !self.checks.is_empty() && self.checks.iter().all(|c| c.passed);
        self.exit_code = if self.verified { 0 } else { EXIT_NOT_WORKING };
        self
    }

    /// 0 verified, [`EXIT_NOT_WORKING`] otherwise.
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => crate::plan::to_json(self),
        }
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "intercept verify: {} backend in the {} (timeout {} ms)",
            self.backend, self.target, self.timeout_ms
        );
        let method = match self.method {
            Some(Method::Listener) => "ProxyEgressPort was free: verify listened on it itself",
            Some(Method::Counters) => "ProxyEgressPort is in use (the proxy runs): proven through the redirect counter",
            None => "live probes not run",
        };
        let _ = writeln!(out, "method: {method}\n");
        for check in &self.checks {
            let _ = writeln!(out, "{}  {}", if check.passed { "PASS" } else { "FAIL" }, check.check);
            let _ = writeln!(out, "      expected  {}", check.expected);
            let _ = writeln!(out, "      observed  {}", check.observed);
        }
        if !self.counters_moved.is_empty() {
            out.push_str("\ncounters the probes moved (not restored):\n");
            for (name, by) in &self.counters_moved {
                let _ = writeln!(out, "  +{by}  {name}");
            }
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let _ = if self.verified {
            writeln!(out, "\nresult: verified ({} checks passed)", self.checks.len())
        } else {
            writeln!(
                out,
                "\nresult: interception NOT working: {failed} of {} checks failed (exit {EXIT_NOT_WORKING})",
                self.checks.len()
            )
        };
        out
    }
}
