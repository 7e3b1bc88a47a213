//! Reading what is installed: `iptables-save -c -t nat` and `ipset save` output as values.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::plan::iptables::{COMMENT_PREFIX, Family, IpSet, Rule};

/// A rule as words, the way `iptables-save` prints it after `-A <chain>`. Two rules are the
/// same rule when their words are equal: quoting is gone after [`split_words`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RuleSpec {
    pub chain: String,
    pub args: Vec<String>,
}

impl RuleSpec {
    pub fn from_plan(rule: &Rule) -> RuleSpec {
        RuleSpec { chain: rule.chain.clone(), args: rule.args() }
    }

    /// The value of its `-m comment --comment`.
    pub fn comment(&self) -> Option<&str> {
        self.args.windows(2).find(|w| w[0] == "--comment").map(|w| w[1].as_str())
    }

    /// Written by intercept: its comment starts with [`COMMENT_PREFIX`].
    pub fn is_intercepts(&self) -> bool {
        self.comment().is_some_and(|c| c.starts_with(COMMENT_PREFIX))
    }

    /// The rule as a line of restore input: `<op> <chain> <args>`, e.g. `-A OUTPUT …` or
    /// `-D OUTPUT …`, quoted so that `iptables-restore` reads back the same words.
    pub fn line(&self, op: &str) -> String {
        let mut line = format!("{op} {}", self.chain);
        for arg in &self.args {
            let _ = write!(line, " {}", quote(arg));
        }
        line
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line("-A"))
    }
}

/// Packet and byte counters, as `iptables-save -c` prints them (`[packets:bytes]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedRule {
    pub spec: RuleSpec,
    pub counters: Counters,
}

/// One table of an `iptables-save` dump: its chains in the order declared, and its rules in
/// order (the order within a chain is the order of evaluation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: Vec<String>,
    pub rules: Vec<SavedRule>,
}

impl Table {
    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> + 'a {
        self.rules.iter().filter(move |r| r.spec.chain == chain)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub text: String,
    pub message: &'static str,
}

/// The table `name` of an `iptables-save` dump (with or without `-c`); an empty table when
/// the dump does not have it (nft prints nothing for a table that was never created).
pub fn parse_table(dump: &str, name: &str) -> Result<Table, ParseError> {
    let mut table = Table::default();
    let mut current: Option<&str> = None;
    for (index, raw) in dump.lines().enumerate() {
        let error = |message| ParseError { line: index + 1, text: raw.to_owned(), message };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(table_name) = line.strip_prefix('*') {
            current = Some(table_name);
            continue;
        }
        if line == "COMMIT" {
            current = None;
            continue;
        }
        if current != Some(name) {
            continue;
        }
        if let Some(header) = line.strip_prefix(':') {
            let chain = header.split_whitespace().next().ok_or_else(|| error("a chain line without a name"))?;
            table.chains.push(chain.to_owned());
            continue;
        }
        let (counters, rest) = match line.strip_prefix('[') {
            Some(rest) => {
                let (counters, rest) = rest.split_once(']').ok_or_else(|| error("unterminated counters"))?;
                (parse_counters(counters).ok_or_else(|| error("bad counters"))?, rest.trim_start())
            }
            None => (Counters::default(), line),
        };
        let mut words = split_words(rest).ok_or_else(|| error("unterminated quote"))?.into_iter();
        match (words.next().as_deref(), words.next()) {
            (Some("-A"), Some(chain)) => {
                table.rules.push(SavedRule { spec: RuleSpec { chain, args: words.collect() }, counters });
            }
            _ => return Err(error("expected `-A <chain> …`")),
        }
    }
    Ok(table)
}

/// How many rules a whole `iptables-save` dump (every table) holds.
pub fn count_rules(dump: &str) -> usize {
    dump.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("-A ") || (l.starts_with('[') && l.contains("] -A ")))
        .count()
}

fn parse_counters(text: &str) -> Option<Counters> {
    let (packets, bytes) = text.split_once(':')?;
    Some(Counters { packets: packets.parse().ok()?, bytes: bytes.parse().ok()? })
}

/// Splits a line into words the way `iptables-restore` does: on whitespace, except inside
/// double quotes, where a backslash escapes the next character. `None` on an open quote.
pub fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                word.push(chars.next()?);
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return None;
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// The word as restore input: bare when that reads back the same, else double-quoted.
pub fn quote(word: &str) -> String {
    let bare = !word.is_empty() && !word.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\\' | '\'' | '#'));
    if bare {
        return word.to_owned();
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('"');
    for c in word.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The sets of an `ipset save` dump. Entries are sorted, so that two sets with the same
/// members compare equal whatever order the kernel's hash lists them in.
pub fn parse_ipsets(dump: &str) -> Result<Vec<IpSet>, ParseError> {
    let mut sets: Vec<IpSet> = Vec::new();
    for (index, raw) in dump.lines().enumerate() {
        let error = |message| ParseError { line: index + 1, text: raw.to_owned(), message };
        let words: Vec<&str> = raw.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["create", name, _type, options @ ..] => {
                let option = |key: &str| options.windows(2).find(|w| w[0] == key).map(|w| w[1]);
                let family = match option("family") {
                    Some("inet6") => Family::Ipv6,
                    _ => Family::Ipv4,
                };
                let maxelem = match option("maxelem") {
                    Some(n) => n.parse().map_err(|_| error("bad maxelem"))?,
                    None => 65536,
                };
                sets.push(IpSet { name: (*name).to_owned(), family, maxelem, entries: Vec::new() });
            }
            ["add", name, entry, ..] => {
                let set = sets.iter_mut().find(|s| s.name == *name).ok_or_else(|| error("add to an undeclared set"))?;
                set.entries.push(parse_entry(entry).ok_or_else(|| error("not an address or network"))?);
            }
            _ => return Err(error("expected `create …` or `add …`")),
        }
    }
    for set in &mut sets {
        set.entries.sort();
    }
    Ok(sets)
}

/// `10.0.0.0/8`, or a bare address as ipset prints a host network.
fn parse_entry(entry: &str) -> Option<IpNet> {
    entry.parse::<IpNet>().ok().or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_like_iptables_restore_splits_them() {
        let cases: &[(&str, Option<&[&str]>)] = &[
            ("-A OUTPUT -j RETURN", Some(&["-A", "OUTPUT", "-j", "RETURN"])),
            (
                r#"-m comment --comment "intercept: a b"  -j X"#,
                Some(&["-m", "comment", "--comment", "intercept: a b", "-j", "X"]),
            ),
            (r#"--comment "say \"hi\" \\o/""#, Some(&["--comment", r#"say "hi" \o/"#])),
            (r#"--comment """#, Some(&["--comment", ""])),
            (r#"--comment "open"#, None),
        ];
        for (line, want) in cases {
            let want = want.map(|w| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
            assert_eq!(split_words(line), want, "{line}");
        }
    }

    #[test]
    fn quoting_round_trips() {
        for word in ["plain", "intercept: two words", r#"a "quote""#, r"back\slash", "", "it's", "#hash"] {
            let line = format!("-A X --comment {}", quote(word));
            assert_eq!(split_words(&line).unwrap()[3], word, "{line}");
        }
        assert_eq!(quote("RETURN"), "RETURN");
    }

    #[test]
    fn parses_the_nat_table_with_counters() {
        let dump = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
[5:300] -A INPUT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:INTERCEPT_EGRESS - [0:0]
[3:180] -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -m comment --comment "intercept: egress" -j INTERCEPT_EGRESS
[0:0] -A OUTPUT -m comment --comment user -j RETURN
[1:60] -A INTERCEPT_EGRESS -p tcp -m comment --comment "intercept: redirect" -j REDIRECT --to-ports 15001
COMMIT
"#;
        let table = parse_table(dump, "nat").unwrap();
        assert_eq!(table.chains, ["PREROUTING", "OUTPUT", "INTERCEPT_EGRESS"]);
        assert_eq!(table.rules.len(), 3);
        assert_eq!(table.rules[0].counters, Counters { packets: 3, bytes: 180 });
        assert!(table.rules[0].spec.is_intercepts());
        assert!(!table.rules[1].spec.is_intercepts());
        assert_eq!(table.rules[1].spec.comment(), Some("user"));
        assert_eq!(
            table.rules[2].spec.line("-A"),
            r#"-A INTERCEPT_EGRESS -p tcp -m comment --comment "intercept: redirect" -j REDIRECT --to-ports 15001"#
        );
        assert_eq!(count_rules(dump), 4);
        assert_eq!(parse_table(dump, "mangle").unwrap(), Table::default());
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        let err = parse_table("*nat\n-Z OUTPUT\nCOMMIT\n", "nat").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse_table("*nat\n[1:2 -A X\nCOMMIT\n", "nat").is_err());
    }

    #[test]
    fn plan_rules_and_saved_rules_compare_by_words() {
        let plan = crate::plan::IptablesPlan::new(&crate::config::ProxyConfig {
            ignored_uids: vec![1337],
            ipv6: false,
            ..crate::config::ProxyConfig::new(15001)
        });
        for rule in plan.v4.chains.iter().flat_map(|c| &c.rules).chain(&plan.v4.jumps) {
            let saved = parse_table(&format!("*nat\n{}\nCOMMIT\n", rule.render()), "nat").unwrap();
            assert_eq!(saved.rules[0].spec, RuleSpec::from_plan(rule), "{}", rule.render());
        }
    }

    #[test]
    fn parses_ipset_save() {
        let dump = "create intercept-egress-v4 hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1\n\
                    add intercept-egress-v4 10.2.0.0/16\n\
                    add intercept-egress-v4 10.0.0.1\n\
                    create intercept-egress-v6 hash:net family inet6 hashsize 1024 maxelem 131072\n\
                    add intercept-egress-v6 fd00::/64\n";
        let sets = parse_ipsets(dump).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].family, Family::Ipv4);
        assert_eq!(sets[0].maxelem, 65536);
        assert_eq!(sets[0].entries, ["10.0.0.1/32".parse::<IpNet>().unwrap(), "10.2.0.0/16".parse().unwrap()]);
        assert_eq!(sets[1].family, Family::Ipv6);
        assert_eq!(sets[1].maxelem, 131072);
        assert!(parse_ipsets("add nowhere 10.0.0.1\n").is_err());
        assert!(parse_ipsets("create x hash:net\nadd x not-an-ip\n").is_err());
    }
}
