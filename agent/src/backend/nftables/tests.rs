//! The nftables backend against a fake `nft`: what it runs, when it runs nothing, and how
//! it reads a listing. `testdata/seed-listing.json` is real `nft -j list table inet
//! intercept` output (nft 1.0.6) for the seed plan, taken after four connections: the
//! fake's listings are checked against it.

use std::cell::RefCell;

use serde_json::{Value, json};

use super::*;
use crate::backend::exec::{self, Call, Output, Runner};
use crate::config::{Ingress, PortRange, PortSet, ProxyConfig};
use crate::lock::{self, Locks, TempLocks};
use crate::plan::Format;
use crate::plan::nftables::{Elements, Match, Rule, Verdict};
use listing::element;

const SEED_LISTING: &str = include_str!("testdata/seed-listing.json");

fn seed() -> ProxyConfig {
    crate::testdata::seed_config()
}

/// Different in every part: sets, rules, chains.
fn other() -> ProxyConfig {
    ProxyConfig {
        ignored_gids: vec![1338],
        ingress: None,
        egress_ignored_ports: PortSet::from_ranges([PortRange { start: 3000, end: 3010 }]),
        egress_ignored_ips: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
        ..seed()
    }
}

/// What `nft -j list table inet intercept` prints for `plan` right after it was applied.
fn listing_of(plan: &NftablesPlan) -> String {
    let mut objects = vec![
        json!({"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}),
        json!({"table": {"family": "inet", "name": "intercept", "handle": 1}}),
    ];
    for set in &plan.sets {
        let elem: Vec<Value> = match &set.elements {
            Elements::Ports(ranges) => ranges
                .iter()
                .map(|r| if r.start == r.end { json!(r.start) } else { json!({"range": [r.start, r.end]}) })
                .collect(),
            Elements::Nets(nets) => nets
                .iter()
                .map(|n| {
                    if n.prefix_len() == n.max_prefix_len() {
                        json!(n.addr().to_string())
                    } else {
                        json!({"prefix": {"addr": n.addr().to_string(), "len": n.prefix_len()}})
                    }
                })
                .collect(),
        };
        objects.push(json!({"set": {
            "family": "inet", "name": set.name, "table": "intercept", "type": set.set_type.as_str(), "handle": 2,
            "comment": set.comment, "flags": ["interval"], "elem": elem,
        }}));
    }
    for chain in &plan.chains {
        let mut body = json!({"family": "inet", "table": "intercept", "name": chain.name, "handle": 3});
        if let Some(hook) = chain.hook {
            body["type"] = json!("nat");
            body["hook"] = json!(hook.as_str());
            body["prio"] = json!(-100);
            body["policy"] = json!("accept");
        }
        objects.push(json!({ "chain": body }));
    }
    for chain in &plan.chains {
        for rule in &chain.rules {
            objects.push(json!({"rule": {
                "family": "inet", "table": "intercept", "chain": chain.name, "handle": 4,
                "comment": rule.comment, "expr": expr(rule),
            }}));
        }
    }
    json!({ "nftables": objects }).to_string()
}

fn expr(rule: &Rule) -> Vec<Value> {
    let matches = rule.matches.iter().map(|m| {
        let (op, left, right) = match *m {
            Match::Tcp => ("==", json!({"meta": {"key": "l4proto"}}), json!("tcp")),
            Match::Udp => ("==", json!({"meta": {"key": "l4proto"}}), json!("udp")),
            Match::DnsPort(proto) => {
                ("==", json!({"payload": {"protocol": proto.as_str(), "field": "dport"}}), json!(53))
            }
            Match::Ipv4Only => ("==", json!({"meta": {"key": "nfproto"}}), json!("ipv4")),
            Match::NonLocalDestination => {
                ("!=", json!({"fib": {"result": "type", "flags": ["daddr"]}}), json!("local"))
            }
            Match::NonLocalSource => ("!=", json!({"fib": {"result": "type", "flags": ["saddr"]}}), json!("local")),
            Match::Uid(uid) => ("==", json!({"meta": {"key": "skuid"}}), json!(uid)),
            Match::Gid(gid) => ("==", json!({"meta": {"key": "skgid"}}), json!(gid)),
            Match::DportIn(set) => {
                ("==", json!({"payload": {"protocol": "tcp", "field": "dport"}}), json!(format!("@{set}")))
            }
            Match::DaddrIn(family, set) => {
                let protocol = if family == crate::plan::iptables::Family::Ipv4 { "ip" } else { "ip6" };
                ("==", json!({"payload": {"protocol": protocol, "field": "daddr"}}), json!(format!("@{set}")))
            }
        };
        json!({"match": {"op": op, "left": left, "right": right}})
    });
    let verdict = match rule.verdict {
        Verdict::Jump(chain) => json!({"jump": {"target": chain}}),
        Verdict::Return => json!({"return": null}),
        Verdict::Redirect(port) => json!({"redirect": {"port": port}}),
    };
    matches.chain([json!({"counter": {"packets": 0, "bytes": 0}}), verdict]).collect()
}

/// The kernel as far as the backend can tell: `nft` answering from a listing, and applying
/// the scripts it was told about.
#[derive(Default)]
struct FakeNft {
    table: RefCell<Option<String>>,
    /// The plans whose rules transactions it applies (see [`FakeNft::run_rules`]).
    plans: Vec<NftablesPlan>,
    /// `(family, table, chain)` of other tables' chains.
    foreign_chains: Vec<(&'static str, &'static str, &'static str)>,
    /// The next `nft -f -` fails with this message.
    failure: RefCell<Option<String>>,
    calls: RefCell<Vec<Call>>,
    locks: TempLocks,
}

impl FakeNft {
    fn with_table(listing: &str) -> FakeNft {
        FakeNft { table: RefCell::new(Some(listing.to_owned())), ..FakeNft::default() }
    }

    fn knows(mut self, plan: &NftablesPlan) -> FakeNft {
        self.plans.push(plan.clone());
        self
    }

    /// The listing after the rules transaction `script` of an apply (see
    /// [`NftablesPlan::rules_script`]): the plan it installs, its sets under the names the
    /// script uses. A sets transaction changes nothing a test looks at.
    fn run_rules(&self, script: &str) -> Option<String> {
        let own_names: String = script
            .lines()
            .filter(|l| !l.starts_with("delete "))
            .map(|l| format!("{}\n", l.replace(&format!("{SECOND_NAME_SUFFIX} "), " ")))
            .collect();
        let plan = self.plans.iter().find(|p| p.rules_script(&SetNames::default(), &[], &[]) == own_names)?;
        let mut listing = listing_of(plan);
        for set in &plan.sets {
            if script.contains(&format!("@{}{SECOND_NAME_SUFFIX} ", set.name)) {
                listing = listing
                    .replace(&format!("\"{}\"", set.name), &format!("\"{}{SECOND_NAME_SUFFIX}\"", set.name))
                    .replace(&format!("\"@{}\"", set.name), &format!("\"@{}{SECOND_NAME_SUFFIX}\"", set.name));
            }
        }
        Some(listing)
    }

    /// The `nft -f -` inputs run so far.
    fn scripts_run(&self) -> Vec<String> {
        self.calls.borrow().iter().filter(|c| c.args == ["-f", "-"]).map(|c| c.stdin.clone().unwrap()).collect()
    }
}

fn ok(stdout: String) -> Output {
    Output { code: Some(0), stdout, stderr: String::new() }
}

impl Runner for &FakeNft {
    fn run(&self, call: &Call) -> Result<Output, exec::Error> {
        self.calls.borrow_mut().push(call.clone());
        assert_eq!(call.program, "nft");
        let args: Vec<&str> = call.args.iter().map(String::as_str).collect();
        Ok(match args[..] {
            ["-j", "list", "chains"] => {
                let mut chains = vec![json!({"metainfo": {}})];
                if let Some(listing) = self.table.borrow().as_deref() {
                    let listing: Value = serde_json::from_str(listing).unwrap();
                    chains.extend(
                        listing["nftables"].as_array().unwrap().iter().filter(|o| o.get("chain").is_some()).cloned(),
                    );
                }
                for (family, table, name) in &self.foreign_chains {
                    chains.push(json!({"chain": {"family": family, "table": table, "name": name, "handle": 9}}));
                }
                ok(json!({ "nftables": chains }).to_string())
            }
            ["-j", "list", "table", "inet", "intercept"] => match self.table.borrow().clone() {
                Some(listing) => ok(listing),
                None => {
                    Output { code: Some(1), stdout: String::new(), stderr: "Error: No such file or directory".into() }
                }
            },
            ["-f", "-"] => {
                if let Some(stderr) = self.failure.borrow_mut().take() {
                    return Ok(Output { code: Some(1), stdout: String::new(), stderr });
                }
                let script = call.stdin.as_deref().unwrap();
                if script == REMOVE_SCRIPT {
                    *self.table.borrow_mut() = None;
                } else if script.contains(&format!("\nflush table {FAMILY} {TABLE}\n")) {
                    *self.table.borrow_mut() =
                        Some(self.run_rules(script).expect("the rules of a plan the test registered"));
                }
                ok(String::new())
            }
            _ => panic!("unexpected call {call}"),
        })
    }

    fn read_sysctl(&self, path: &str) -> Result<Option<String>, exec::Error> {
        panic!("the nftables backend reads no sysctl ({path})")
    }

    fn describe_target(&self) -> String {
        "fake network namespace".to_owned()
    }

    fn locks(&self) -> Locks {
        self.locks.locks()
    }

    fn lock_key(&self) -> Result<lock::Key, exec::Error> {
        Ok(lock::Key::netns(0, 1, "fake network namespace"))
    }
}

fn zero_counters(mut installed: Installed) -> Installed {
    for rule in installed.chains.iter_mut().flat_map(|c| &mut c.rules) {
        (rule.packets, rule.bytes) = (0, 0);
    }
    installed
}

// ---------------------------------------------------------------------------------------
// Reading a listing

#[test]
fn the_real_listing_of_the_seed_is_the_seed_plan() {
    let installed = Installed::parse(SEED_LISTING).unwrap();
    let plan = NftablesPlan::new(&seed());
    assert_eq!(installed.drift(&plan), Vec::<String>::new());
    assert!(installed.is_complete());
    // Four connections: port 22, a metadata IP, two redirected.
    let counters: Vec<(&str, u64, u64)> = installed
        .chains
        .iter()
        .flat_map(|c| c.rules.iter().map(move |r| (c.name.as_str(), r.packets, r.bytes)))
        .collect();
    assert_eq!(
        counters,
        [
            ("output", 4, 240),
            ("prerouting", 0, 0),
            ("egress", 0, 0),
            ("egress", 1, 60),
            ("egress", 1, 60),
            ("egress", 2, 120),
            ("ingress", 0, 0)
        ]
    );
    // The fake's listings are what nft prints, but for counters and handles.
    assert_eq!(Installed::parse(&listing_of(&plan)).unwrap(), zero_counters(installed));
}

#[test]
fn every_plan_reads_back_without_drift() {
    let configs = [
        seed(),
        other(),
        ProxyConfig { ipv6: false, ..other() },
        ProxyConfig {
            egress_included_ips: None,
            proxy_dns_port: None,
            implicit_exemptions: false,
            egress_ignored_ips: Vec::new(),
            egress_ignored_ports: PortSet::new(),
            ..seed()
        },
        ProxyConfig { egress_ignored_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()], ..seed() },
        ProxyConfig {
            ingress: Some(Ingress {
                proxy_port: 15000,
                app_ports: PortSet::from_ranges([PortRange { start: 8000, end: 8010 }]),
            }),
            ..seed()
        },
    ];
    for config in &configs {
        let plan = NftablesPlan::new(config);
        let installed = Installed::parse(&listing_of(&plan)).unwrap();
        assert_eq!(installed.drift(&plan), Vec::<String>::new(), "{config:?}");
        for other in &configs {
            if other != config {
                assert!(!installed.drift(&NftablesPlan::new(other)).is_empty(), "{config:?} vs {other:?}");
            }
        }
    }
}

/// The seed listing with one change made by `edit` to its objects.
fn tampered(edit: impl FnOnce(&mut Vec<Value>)) -> Installed {
    let mut listing: Value = serde_json::from_str(SEED_LISTING).unwrap();
    edit(listing["nftables"].as_array_mut().unwrap());
    Installed::parse(&listing.to_string()).unwrap()
}

fn find<'a>(objects: &'a mut [Value], kind: &str, pred: impl Fn(&Value) -> bool) -> &'a mut Value {
    objects.iter_mut().filter_map(|o| o.get_mut(kind)).find(|o| pred(o)).unwrap()
}

/// A set under its second name is the plan's set; under both names, an apply stopped between
/// its two transactions.
#[test]
fn sets_under_their_second_name_are_the_plans_and_under_both_an_unfinished_apply() {
    let plan = NftablesPlan::new(&seed());
    let renamed = tampered(|objects| {
        find(objects, "set", |s| s["name"] == "ignored_v4")["name"] = json!("ignored_v4_next");
        for rule in objects.iter_mut().filter_map(|o| o.get_mut("rule")) {
            let text = rule.to_string().replace("\"@ignored_v4\"", "\"@ignored_v4_next\"");
            *rule = serde_json::from_str(&text).unwrap();
        }
    });
    assert_eq!(renamed.drift(&plan), Vec::<String>::new());
    let twice = tampered(|objects| {
        let mut second = json!({"set": find(objects, "set", |s| s["name"] == "ignored_v4").clone()});
        second["set"]["name"] = json!("ignored_v4_next");
        objects.push(second);
    });
    assert_eq!(
        twice.drift(&plan),
        ["set ignored_v4 is installed twice, as ignored_v4 and ignored_v4_next (an apply did not finish)"]
    );
}

#[test]
fn drift_names_what_differs() {
    let plan = NftablesPlan::new(&seed());
    let cases: Vec<(&str, Installed, &str)> = vec![
        (
            "an element removed",
            tampered(|o| {
                find(o, "set", |s| s["name"] == "ignored_v4")["elem"].as_array_mut().unwrap().pop();
            }),
            "set ignored_v4: 1 planned element missing (169.254.170.2)",
        ),
        (
            "an element added",
            tampered(|o| {
                find(o, "set", |s| s["name"] == "ignored_ports")["elem"].as_array_mut().unwrap().push(json!(2222))
            }),
            "set ignored_ports: 1 element not in the plan (2222)",
        ),
        (
            "a rule edited",
            tampered(|o| {
                let rule = find(o, "rule", |r| r["chain"] == "egress" && r["expr"][2].get("redirect").is_some());
                rule["expr"][2]["redirect"]["port"] = json!(15002);
            }),
            "chain egress: 4 rules, the plan has 4; rule 4 is `meta l4proto tcp counter redirect to :15002 comment",
        ),
        (
            "a rule deleted",
            tampered(|o| o.retain(|x| x.get("rule").is_none_or(|r| r["chain"] != "ingress"))),
            "chain ingress: 0 rules, the plan has 1; rule 1 is nothing, the plan has `tcp dport @app_ports",
        ),
        (
            "a statement the plan never writes",
            tampered(|o| {
                let rule = find(o, "rule", |r| r["chain"] == "ingress");
                rule["expr"].as_array_mut().unwrap().insert(0, json!({"log": {"prefix": "x"}}));
            }),
            "rule 1 is `{\"log\":{\"prefix\":\"x\"}} tcp dport @app_ports",
        ),
        (
            "a chain added",
            tampered(|o| {
                o.push(json!({"chain": {"family": "inet", "table": "intercept", "name": "mine", "handle": 99}}))
            }),
            "chain mine is not in the plan",
        ),
        (
            "a hook changed",
            tampered(|o| find(o, "chain", |c| c["name"] == "output")["prio"] = json!(0)),
            "chain output: hooked as Some(InstalledHook { chain_type: \"nat\", hook: \"output\", priority: 0",
        ),
        (
            "a set deleted",
            tampered(|o| o.retain(|x| x.get("set").is_none_or(|s| s["name"] != "app_ports"))),
            "set app_ports is missing",
        ),
        (
            "a map added",
            tampered(|o| o.push(json!({"map": {"family": "inet", "table": "intercept", "name": "m", "handle": 99}}))),
            "the table holds a map m, which intercept does not create",
        ),
    ];
    for (name, installed, expected) in cases {
        let drift = installed.drift(&plan);
        assert!(drift.iter().any(|d| d.contains(expected)), "{name}: {drift:#?}");
    }
}

#[test]
fn other_element_forms_are_read_in_the_plan_syntax() {
    let elements = [
        (json!(22), "22"),
        (json!({"range": [3000, 3010]}), "3000-3010"),
        (json!("10.0.0.1"), "10.0.0.1"),
        (json!({"prefix": {"addr": "2001:db8::", "len": 32}}), "2001:db8::/32"),
        (json!({"elem": {"val": {"prefix": {"addr": "10.0.0.0", "len": 8}}, "comment": "x"}}), "10.0.0.0/8"),
        (json!({"range": ["10.0.0.1", "10.0.0.5"]}), "10.0.0.1-10.0.0.5"),
    ];
    for (value, text) in elements {
        assert_eq!(element(&value), text);
    }
}

// ---------------------------------------------------------------------------------------
// apply, remove

#[test]
fn apply_installs_once_then_has_nothing_to_do() {
    let plan = NftablesPlan::new(&seed());
    let fake = FakeNft::default().knows(&plan);
    let backend = Nftables::new(&fake);
    let report = backend.apply(&plan, false).unwrap();
    assert!(report.changed && !report.dry_run);
    assert_eq!(report.detail.reasons, ["table inet intercept is not installed"]);
    // The table and its sets, then the rules: no rule ever matches on a set filled in its own
    // transaction.
    let names = SetNames::default();
    let all: Vec<&str> = plan.sets.iter().map(|s| s.name).collect();
    let steps = [plan.sets_script(&names, &all, &[], true), plan.rules_script(&names, &[], &[])];
    assert_eq!(fake.scripts_run(), steps);
    assert!(steps[0].contains("comment \"intercept: ") && !steps[0].contains("chain "), "{}", steps[0]);
    assert_eq!(
        report.detail.script,
        Some(format!("{}\n# then, in a second nft -f - transaction:\n{}", steps[0], steps[1]))
    );
    assert!(report.render_text("apply").ends_with(
        "done: table inet intercept: 4 chains, 7 rules, sets ignored_ports (1), ignored_v4 (2), app_ports (1)\n"
    ));

    let again = backend.apply(&plan, false).unwrap();
    assert!(!again.changed && again.detail.script.is_none() && again.detail.reasons.is_empty());
    assert_eq!(fake.scripts_run().len(), 2, "the second apply runs nothing");
    assert!(again.render_text("apply").contains("nothing to change"));
}

#[test]
fn apply_builds_changed_sets_under_their_other_name_then_switches_the_rules_to_them() {
    let (seed_plan, other_plan) = (NftablesPlan::new(&seed()), NftablesPlan::new(&other()));
    let fake = FakeNft::with_table(SEED_LISTING).knows(&other_plan);
    let backend = Nftables::new(&fake);
    let report = backend.apply(&other_plan, false).unwrap();
    assert!(report.changed);
    assert!(
        report.detail.reasons.iter().any(|r| r.starts_with("set ignored_ports: 1 planned element missing (3000-3010)"))
    );
    assert!(report.detail.reasons.iter().any(|r| r == "chain prerouting is not in the plan"));
    // The changed sets under their second names, then every rule replaced (never the table
    // removed first); the old sets and the ingress chains go with the rules.
    let scripts = fake.scripts_run();
    assert_eq!(scripts.len(), 2, "{scripts:?}");
    assert!(scripts[0].starts_with("add table inet intercept\ntable inet intercept {\n\tset ignored_ports_next {"));
    assert!(!scripts[0].contains("delete") && !scripts[0].contains("chain"), "{}", scripts[0]);
    assert!(scripts[1].starts_with("add table inet intercept\nflush table inet intercept\n"), "{}", scripts[1]);
    for line in ["delete chain inet intercept prerouting", "delete set inet intercept ignored_ports"] {
        assert!(scripts[1].lines().any(|l| l == line), "{line}: {}", scripts[1]);
    }
    assert!(scripts[1].contains("tcp dport @ignored_ports_next counter return"), "{}", scripts[1]);
    let installed = Installed::parse(fake.table.borrow().as_deref().unwrap()).unwrap();
    assert!(installed.sets.iter().any(|s| s.name == "ignored_ports_next"));
    assert_eq!(installed.drift(&other_plan), Vec::<String>::new(), "the second names are the plan's sets");
    assert!(backend.apply(&other_plan, false).unwrap().detail.script.is_none());
    assert!(!backend.read().unwrap().unwrap().drift(&seed_plan).is_empty());
}

#[test]
fn dry_run_says_what_would_run_and_runs_nothing() {
    let plan = NftablesPlan::new(&seed());
    let fake = FakeNft::default();
    let report = Nftables::new(&fake).apply(&plan, true).unwrap();
    assert!(!report.changed && report.dry_run);
    assert!(fake.scripts_run().is_empty());
    let text = report.render_text("apply");
    let script = report.detail.script.clone().unwrap();
    assert!(script.contains("\n# then, in a second nft -f - transaction:\n"), "{script}");
    assert!(text.contains(&format!("# dry run: would run nft -f -\n{script}")), "{text}");
    let json: Value = serde_json::from_str(&crate::plan::to_json(&report)).unwrap();
    assert_eq!(json["script"], script);

    let fake = FakeNft::with_table(SEED_LISTING);
    let report = Nftables::new(&fake).remove(true).unwrap();
    assert_eq!(report.detail.script.as_deref(), Some(REMOVE_SCRIPT));
    assert!(fake.scripts_run().is_empty() && fake.table.borrow().is_some());
}

#[test]
fn remove_deletes_the_table_and_then_has_nothing_to_do() {
    let fake = FakeNft::with_table(SEED_LISTING);
    let backend = Nftables::new(&fake);
    let report = backend.remove(false).unwrap();
    assert!(report.changed);
    assert_eq!(fake.scripts_run(), [REMOVE_SCRIPT]);
    assert!(fake.table.borrow().is_none());
    let again = backend.remove(false).unwrap();
    assert!(!again.changed && again.detail.script.is_none());
    assert_eq!(fake.scripts_run().len(), 1);
    assert!(again.render_text("remove").contains("nothing to change: nothing of intercept's is installed"));
}

#[test]
fn a_refused_transaction_changes_nothing_and_says_so() {
    let plan = NftablesPlan::new(&seed());
    let fake = FakeNft::with_table(SEED_LISTING).knows(&NftablesPlan::new(&other()));
    *fake.failure.borrow_mut() =
        Some("/dev/stdin:12:3-9: Error: Could not process rule: Operation not supported".into());
    let err = Nftables::new(&fake).apply(&NftablesPlan::new(&other()), false).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("`nft -f - < (transaction)` failed (exit code 1); the transaction is all or nothing"),
        "{message}"
    );
    assert!(message.contains("\n  /dev/stdin:12:3-9: Error: Could not process rule"), "{message}");
    assert_eq!(Installed::parse(fake.table.borrow().as_deref().unwrap()).unwrap().drift(&plan), Vec::<String>::new());
}

#[test]
fn a_missing_nft_names_the_package() {
    let err = Error::from(exec::Error::MissingProgram { program: "nft".into(), package: "iptables" });
    assert!(err.to_string().contains("install the `nftables` package"), "{err}");
}

// ---------------------------------------------------------------------------------------
// status

#[test]
fn status_shows_counters_and_drift() {
    let fake = FakeNft::with_table(SEED_LISTING);
    let backend = Nftables::new(&fake);
    let status = backend.status(Some(&NftablesPlan::new(&seed()))).unwrap();
    assert!(status.installed && status.matches == Some(true) && status.reasons.is_empty());
    assert_eq!(status.exit_code(), 0);
    insta::assert_snapshot!("status_seed", status.render_text());

    let status = backend.status(Some(&NftablesPlan::new(&other()))).unwrap();
    assert_eq!((status.installed, status.matches, status.exit_code()), (true, Some(false), 1));
    assert!(status.render_text().contains("installed, but does NOT match the configuration\n  - set ignored_ports"));

    let status = backend.status(None).unwrap();
    assert_eq!((status.matches, status.exit_code()), (None, 0));
    let json: Value = serde_json::from_str(&crate::backend::Report::render(&status, Format::Json)).unwrap();
    assert_eq!(json["table"]["chains"][0]["rules"][0]["packets"], 4);
    assert_eq!(json["table"]["sets"][1]["elements"], json!(["169.254.169.254", "169.254.170.2"]));
    assert!(fake.scripts_run().is_empty(), "status changes nothing");
}

#[test]
fn status_of_nothing_and_of_half_a_table() {
    let fake = FakeNft::default();
    let status = Nftables::new(&fake).status(Some(&NftablesPlan::new(&seed()))).unwrap();
    assert_eq!((status.installed, status.matches, status.exit_code()), (false, Some(false), 1));
    assert_eq!(
        status.reasons,
        ["nothing of intercept's is installed in the fake network namespace (no table inet intercept)"]
    );
    assert!(status.render_text().contains("\nnothing installed\n"));

    let half = tampered(|o| o.retain(|x| x.get("rule").is_none_or(|r| r["chain"] != "output")));
    assert!(!half.is_complete());
    let fake = FakeNft { table: RefCell::new(Some(json!({"nftables": []}).to_string())), ..FakeNft::default() };
    let status = Nftables::new(&fake).status(None).unwrap();
    assert_eq!((status.installed, status.exit_code()), (false, 1));
    assert!(status.reasons[0].starts_with("intercept is only partly installed"), "{:?}", status.reasons);
}

#[test]
fn the_iptables_backends_chains_are_a_warning() {
    let fake = FakeNft {
        foreign_chains: vec![("ip", "nat", "INTERCEPT_EGRESS"), ("ip", "nat", "DOCKER")],
        ..FakeNft::default()
    };
    let status = Nftables::new(&fake).status(None).unwrap();
    assert_eq!(status.warnings.len(), 1);
    assert!(status.warnings[0].starts_with("the iptables backend's INTERCEPT_EGRESS chain is installed too (ip nat)"));
    let fake = FakeNft { foreign_chains: vec![("ip", "nat", "DOCKER")], ..FakeNft::default() };
    assert!(Nftables::new(&fake).status(None).unwrap().warnings.is_empty());
}
