//! Pure plans: what each backend installs for a [`ProxyConfig`], as data.
//!
//! A plan is built from the configuration alone (no kernel state), so it can be printed by
//! `intercept plan`, golden-tested, and checked against the decision model in
//! [`crate::model`]. Backends apply a plan; they do not decide anything themselves. The
//! only thing a plan cannot know is the task's own addresses: the iptables rules leave that
//! to `-m addrtype`, the nftables rules to `fib … type local`, the eBPF backend adds them
//! to the local-networks maps at apply time.
//!
//! Every rendering is deterministic: same configuration, byte-identical output.

pub mod ebpf;
pub mod iptables;
pub mod nftables;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::fmt::{Display, Write as _};

use serde::Serialize;

pub use ebpf::EbpfPlan;
pub use iptables::IptablesPlan;
pub use nftables::NftablesPlan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// For people: a commented listing; long lists are summarised.
    Text,
    /// For tools: the complete plan.
    Json,
}

/// How many entries of a long list the text renderings show before summarising the rest.
pub const TEXT_LIST_LIMIT: usize = 20;

/// Append one line per item, at most [`TEXT_LIST_LIMIT`] of them, each after `prefix`,
/// then a line after `summary_prefix` saying how many were left out.
fn push_summarised<T: Display>(out: &mut String, prefix: &str, items: &[T], summary_prefix: &str) {
    for item in items.iter().take(TEXT_LIST_LIMIT) {
        let _ = writeln!(out, "{prefix}{item}");
    }
    if items.len() > TEXT_LIST_LIMIT {
        let more = items.len() - TEXT_LIST_LIMIT;
        let _ = writeln!(out, "{summary_prefix}… and {more} more (--format json lists them all)");
    }
}

/// The same summary on one line: `a, b, c, … and K more`.
pub(crate) fn summarised_inline<T: Display>(items: &[T]) -> String {
    let mut line = items.iter().take(TEXT_LIST_LIMIT).map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if items.len() > TEXT_LIST_LIMIT {
        let _ = write!(line, ", … and {} more", items.len() - TEXT_LIST_LIMIT);
    }
    line
}

/// Pretty JSON with a final newline, like every other rendering.
pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    let mut json = serde_json::to_string_pretty(value).expect("plans serialise: no maps with non-string keys");
    json.push('\n');
    json
}
