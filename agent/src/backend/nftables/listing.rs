//! `table inet intercept` as `nft -j list table` shows it, read back in the plan's own
//! syntax, and compared with a plan.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::backend::counters::{self, Counters};
use crate::backend::rules::RuleStatus;
use crate::plan::nftables::{EGRESS_CHAIN, NAT_PRIORITY, NftablesPlan, OUTPUT_CHAIN, SECOND_NAME_SUFFIX};

/// The objects of an `nft -j` listing.
pub(super) fn objects(json: &str) -> Result<Vec<Value>, String> {
    let mut value: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    match value.get_mut("nftables").map(Value::take) {
        Some(Value::Array(objects)) => Ok(objects),
        _ => Err("no \"nftables\" array".to_owned()),
    }
}

pub(super) fn str_field<'a>(object: &'a Value, field: &str) -> &'a str {
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
pub struct InstalledChain {
    pub name: String,
    pub hook: Option<InstalledHook>,
    /// Each in the plan's syntax (see [`crate::plan::nftables::Rule::render`]), the counter
    /// without its values; statements the plan never writes appear as nft's JSON.
    pub rules: Vec<RuleStatus>,
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

    /// The packet counters of the installed rules that are `plan`'s, added up by the decision
    /// each rule makes (its connections: a `nat` chain sees a connection's first packet only).
    pub fn counters(&self, plan: &NftablesPlan) -> Counters {
        let (normal, _) = self.normalised();
        let mut counters = Counters::new();
        for chain in &plan.chains {
            let Some(installed) = normal.chain(chain.name) else { continue };
            for rule in &chain.rules {
                let Some(effect) = rule.effect else { continue };
                let text = rule.render();
                if let Some(found) = installed.rules.iter().find(|r| r.rule == text) {
                    counters::add(&mut counters, effect, found.packets);
                }
            }
        }
        counters
    }

    /// Whether `plan`'s chains `hooked` (the base chain) and `redirects` are installed with all
    /// their rules, the base chain at its hook.
    pub fn has_chains(&self, plan: &NftablesPlan, names: &[&str]) -> Vec<bool> {
        let (normal, _) = self.normalised();
        names
            .iter()
            .map(|name| {
                let (Some(planned), Some(installed)) = (plan.chain(name), normal.chain(name)) else { return false };
                let hooked =
                    planned.hook.is_none_or(|hook| installed.hook.as_ref().is_some_and(|h| h.hook == hook.as_str()));
                hooked && planned.rules.iter().all(|rule| installed.rules.iter().any(|r| r.rule == rule.render()))
            })
            .collect()
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
pub(super) fn element(value: &Value) -> String {
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

pub(super) fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// A listed rule in the plan's syntax, and its counter.
fn parse_rule(rule: &Value) -> RuleStatus {
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
    RuleStatus { rule: text, packets, bytes }
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
