//! The nftables plan as text: the `nft -f -` scripts the backend runs (whole, or in the two
//! transactions a replace takes) and the renderings `intercept plan` prints.

use std::fmt::Write as _;

use serde::Serialize;

use super::*;

impl NftablesPlan {
    /// The complete `nft -f -` input: creates or atomically replaces the table.
    pub fn apply_script(&self) -> String {
        self.render_script(false)
    }

    /// The first of the two transactions a backend replacing the table runs (see
    /// [`NftablesPlan::rules_script`]): the sets in `build`, each under the name `names` gives
    /// it, added to the table (created, with its comment, when `new_table`), after deleting the
    /// sets in `stale` (left by an interrupted run; no rule uses them). No rule matches on the
    /// new sets yet.
    pub fn sets_script(&self, names: &SetNames, build: &[&str], stale: &[String], new_table: bool) -> String {
        let mut out = format!("add table {FAMILY} {TABLE}\n");
        for name in stale {
            let _ = writeln!(out, "delete set {FAMILY} {TABLE} {name}");
        }
        let _ = writeln!(out, "table {FAMILY} {TABLE} {{");
        if new_table {
            let _ = writeln!(out, "\tcomment \"{TABLE_COMMENT}\"");
        }
        for set in self.sets.iter().filter(|s| build.contains(&s.name)) {
            set.push_as(names.name(set.name), &mut out, false);
        }
        out.push_str("}\n");
        out
    }

    /// The second: every rule of the table replaced by the plan's, matching on the sets under
    /// the names `names` gives them, and the chains and sets the plan has no use for deleted.
    /// The kernel makes a set's elements match only once the transaction that filled it is
    /// over, after it has switched to the new rules: rules switched to a set filled in the same
    /// transaction would briefly match nothing.
    pub fn rules_script(&self, names: &SetNames, delete_chains: &[String], delete_sets: &[String]) -> String {
        let mut out = format!("add table {FAMILY} {TABLE}\nflush table {FAMILY} {TABLE}\n");
        for chain in delete_chains {
            let _ = writeln!(out, "delete chain {FAMILY} {TABLE} {chain}");
        }
        for set in delete_sets {
            let _ = writeln!(out, "delete set {FAMILY} {TABLE} {set}");
        }
        let _ = writeln!(out, "table {FAMILY} {TABLE} {{");
        for chain in &self.chains {
            let _ = writeln!(out, "\tchain {} {{", chain.name);
            if let Some(hook) = chain.hook {
                let _ = writeln!(out, "\t\ttype nat hook {} priority {NAT_PRIORITY}; policy accept;", hook.as_str());
            }
            for rule in &chain.rules {
                let _ = writeln!(out, "\t\t{}", names.rename(&rule.render()));
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }

    /// The `nft -f -` input that removes the table; see [`REMOVE_SCRIPT`].
    pub fn remove_script() -> &'static str {
        REMOVE_SCRIPT
    }

    fn render_script(&self, summarise: bool) -> String {
        let mut out = String::from(REMOVE_SCRIPT);
        let _ = writeln!(out, "table {FAMILY} {TABLE} {{");
        let _ = writeln!(out, "\tcomment \"{TABLE_COMMENT}\"");
        for set in &self.sets {
            set.push(&mut out, summarise);
        }
        for chain in &self.chains {
            let _ = writeln!(out, "\tchain {} {{", chain.name);
            if let Some(hook) = chain.hook {
                let _ = writeln!(out, "\t\ttype nat hook {} priority {NAT_PRIORITY}; policy accept;", hook.as_str());
            }
            for rule in &chain.rules {
                let _ = writeln!(out, "\t\t{}", rule.render());
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }

    /// For `intercept plan`: the apply script with sets of more than
    /// [`TEXT_LIST_LIMIT`] elements summarised, and the remove script.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        out.push_str("# intercept plan: nftables backend\n");
        out.push_str("# What intercept installs, as one `nft -f -` script that installs it by hand: `add table` +\n");
        out.push_str("# `delete table` + the table's definition replace table inet intercept in one transaction.\n");
        out.push_str("# `apply` first fills changed sets under a second name, then switches the rules to them in a\n");
        out.push_str("# second transaction (docs/backends.md, Transactions). Every rule has a counter and a comment\n");
        out.push_str(
            "# starting with \"intercept: \". Long sets are summarised here; the backend applies them whole.\n\n",
        );
        out.push_str(&self.render_script(true));
        out.push_str("\n# remove (nft -f -):\n");
        for line in REMOVE_SCRIPT.lines() {
            let _ = writeln!(out, "# {line}");
        }
        out
    }

    /// The complete plan as data, plus the exact scripts.
    pub fn render_json(&self) -> String {
        #[derive(Serialize)]
        struct SetJson<'a> {
            name: &'a str,
            #[serde(rename = "type")]
            set_type: SetType,
            flags: [&'static str; 1],
            comment: &'a str,
            elements: Vec<String>,
        }
        #[derive(Serialize)]
        struct HookJson {
            #[serde(rename = "type")]
            chain_type: &'static str,
            hook: Hook,
            priority: i32,
            policy: &'static str,
        }
        #[derive(Serialize)]
        struct RuleJson<'a> {
            #[serde(flatten)]
            rule: &'a Rule,
            statement: String,
        }
        #[derive(Serialize)]
        struct ChainJson<'a> {
            name: &'a str,
            hook: Option<HookJson>,
            rules: Vec<RuleJson<'a>>,
        }
        #[derive(Serialize)]
        struct Json<'a> {
            backend: &'static str,
            family: &'static str,
            table: &'static str,
            comment: &'static str,
            sets: Vec<SetJson<'a>>,
            chains: Vec<ChainJson<'a>>,
            apply: String,
            remove: &'static str,
        }
        let sets = self
            .sets
            .iter()
            .map(|s| SetJson {
                name: s.name,
                set_type: s.set_type,
                flags: ["interval"],
                comment: &s.comment,
                elements: s.rendered_elements(),
            })
            .collect();
        let chains = self
            .chains
            .iter()
            .map(|c| ChainJson {
                name: c.name,
                hook: c.hook.map(|hook| HookJson { chain_type: "nat", hook, priority: NAT_PRIORITY, policy: "accept" }),
                rules: c.rules.iter().map(|rule| RuleJson { rule, statement: rule.render() }).collect(),
            })
            .collect();
        to_json(&Json {
            backend: "nftables",
            family: FAMILY,
            table: TABLE,
            comment: TABLE_COMMENT,
            sets,
            chains,
            apply: self.apply_script(),
            remove: REMOVE_SCRIPT,
        })
    }
}
