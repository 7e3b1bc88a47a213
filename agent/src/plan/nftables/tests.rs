//! Golden tests of the nftables plan, and the plan checked against the decision model: a
//! small interpreter reads the apply script (the exact text `nft -f` gets), runs its rules
//! on random connections the way the kernel would, and must reach the same decision as
//! [`model::decide`].
//!
//! The configurations and strategies are those of `plan/testutil.rs`, shared with the
//! other backends' plan tests.

use std::collections::BTreeMap;

use proptest::prelude::*;

mod interpreter;

use super::*;
use crate::backend::Kind;
use crate::config::{Ingress, PortRange, PortSet, ProxyConfig};
use crate::model::{self, Connection, Direction, LocalAddrs, Protocol, canonical};
use crate::plan::Format;
use crate::plan::testutil::*;
use interpreter::{parse_script, run_nftables};

// ---------------------------------------------------------------------------------------
// Golden snapshots

#[test]
fn snapshots_text() {
    for (name, config) in all_configs() {
        insta::assert_snapshot!(name, Kind::Nftables.render_plan(&config, Format::Text));
    }
}

#[test]
fn snapshots_json() {
    for (name, config) in [("seed", seed()), ("ipv6_cidrs", ipv6_cidrs()), ("port_ranges", port_ranges())] {
        insta::assert_snapshot!(format!("{name}_json"), Kind::Nftables.render_plan(&config, Format::Json));
    }
}

/// The seed guide's four task definitions, through the real parser and validator.
#[test]
fn snapshots_of_the_seed_examples() {
    for name in crate::testdata::EXAMPLES {
        let config = crate::testdata::example_config(name);
        assert_eq!(config, seed(), "{name}");
        insta::assert_snapshot!(format!("example_{name}"), Kind::Nftables.render_plan(&config, Format::Text));
    }
}

// ---------------------------------------------------------------------------------------
// Structure

/// The rule without its comment.
fn bare(rule: &Rule) -> String {
    let text = rule.render();
    text[..text.find(" comment \"").unwrap()].to_owned()
}

fn bare_rules(plan: &NftablesPlan, chain: &str) -> Vec<String> {
    plan.chain(chain).unwrap().rules.iter().map(bare).collect()
}

#[test]
fn seed_has_the_reference_decisions_in_one_table() {
    let plan = NftablesPlan::new(&seed());
    let chains: Vec<(&str, Option<Hook>)> = plan.chains.iter().map(|c| (c.name, c.hook)).collect();
    assert_eq!(
        chains,
        [("output", Some(Hook::Output)), ("prerouting", Some(Hook::Prerouting)), ("egress", None), ("ingress", None),]
    );
    assert_eq!(bare_rules(&plan, OUTPUT_CHAIN), ["meta l4proto tcp fib daddr type != local counter jump egress"]);
    assert_eq!(bare_rules(&plan, PREROUTING_CHAIN), ["meta l4proto tcp fib saddr type != local counter jump ingress"]);
    assert_eq!(
        bare_rules(&plan, EGRESS_CHAIN),
        [
            "meta skuid 1337 counter return",
            "tcp dport @ignored_ports counter return",
            "ip daddr @ignored_v4 counter return",
            "meta l4proto tcp counter redirect to :15001",
        ]
    );
    assert_eq!(bare_rules(&plan, INGRESS_CHAIN), ["tcp dport @app_ports counter redirect to :15000"]);
    let sets: Vec<(&str, SetType, Vec<String>)> =
        plan.sets.iter().map(|s| (s.name, s.set_type, s.rendered_elements())).collect();
    assert_eq!(
        sets,
        [
            ("ignored_ports", SetType::InetService, vec!["22".to_owned()]),
            ("ignored_v4", SetType::Ipv4Addr, vec!["169.254.169.254".to_owned(), "169.254.170.2".to_owned()]),
            ("app_ports", SetType::InetService, vec!["9080".to_owned()]),
        ]
    );
}

#[test]
fn every_rule_has_a_counter_and_an_intercept_comment() {
    for (name, config) in all_configs() {
        let plan = NftablesPlan::new(&config);
        for rule in plan.chains.iter().flat_map(|c| &c.rules) {
            assert!(rule.comment.starts_with(COMMENT_PREFIX), "{name}: {rule:?}");
            assert!(rule.comment.len() <= COMMENT_MAX && !rule.comment.contains('"'), "{name}: {rule:?}");
            let text = rule.render();
            assert!(text.ends_with(&format!(" comment \"{}\"", rule.comment)), "{name}: {text}");
            assert_eq!(text.matches(" counter ").count(), 1, "{name}: {text}");
        }
        for set in &plan.sets {
            assert!(set.comment.starts_with(COMMENT_PREFIX) && set.comment.len() <= COMMENT_MAX, "{name}: {set:?}");
            assert!(!set.is_empty(), "{name}: empty set {}", set.name);
        }
        assert!(TABLE_COMMENT.len() <= COMMENT_MAX);
    }
}

#[test]
fn the_apply_script_replaces_the_table_and_the_remove_script_removes_it() {
    let plan = NftablesPlan::new(&seed());
    let script = plan.apply_script();
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "add table inet intercept",
            "delete table inet intercept",
            "table inet intercept {",
            &format!("\tcomment \"{TABLE_COMMENT}\"")
        ]
    );
    assert_eq!(lines.last(), Some(&"}"));
    // Nothing outside the table: a single table block after the add/delete pair.
    assert_eq!(lines.iter().filter(|l| !l.starts_with('\t')).count(), 4);
    assert_eq!(NftablesPlan::remove_script(), "add table inet intercept\ndelete table inet intercept\n");
    assert!(script.starts_with(NftablesPlan::remove_script()));
    // Base chains carry the nat hook at dstnat priority, the others none.
    assert!(script.contains("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n"));
    assert!(script.contains("\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n"));
    assert!(script.contains("\tchain egress {\n\t\tmeta skuid"));
    // The text rendering is the script itself when no set is long, plus comments.
    let text = plan.render_text();
    assert!(text.contains(&script));
    assert!(text.lines().filter(|l| !script.lines().any(|s| s == *l)).all(|l| l.is_empty() || l.starts_with('#')));
}

#[test]
fn ipv6_off_installs_no_ipv6_rule_and_lets_ipv6_through() {
    let plan = NftablesPlan::new(&ipv6_off());
    let script = plan.apply_script();
    assert!(plan.set(IGNORED_V6_SET).is_none());
    assert!(!script.contains("ip6 ") && !script.contains("ipv6_addr") && !script.contains("2001:db8"));
    assert_eq!(
        bare_rules(&plan, OUTPUT_CHAIN),
        ["meta l4proto tcp meta nfproto ipv4 fib daddr type != local counter jump egress"]
    );
    assert_eq!(
        bare_rules(&plan, PREROUTING_CHAIN),
        ["meta l4proto tcp meta nfproto ipv4 fib saddr type != local counter jump ingress"]
    );
    // IPv6 on: the v6 set and its rule, and no family restriction on the jumps.
    let plan = NftablesPlan::new(&ipv6_cidrs());
    assert_eq!(plan.set(IGNORED_V6_SET).unwrap().rendered_elements(), ["2001:db8::/32", "fd00:ec2::254", "fe80::/10"]);
    assert!(bare_rules(&plan, EGRESS_CHAIN).contains(&"ip6 daddr @ignored_v6 counter return".to_owned()));
    assert!(!plan.apply_script().contains("nfproto"));
}

#[test]
fn egress_only_has_no_prerouting_chain() {
    let plan = NftablesPlan::new(&egress_only());
    assert!(plan.chain(PREROUTING_CHAIN).is_none() && plan.chain(INGRESS_CHAIN).is_none());
    assert!(plan.set(APP_PORTS_SET).is_none());
    assert!(!plan.apply_script().contains("prerouting"));
    // An empty AppPorts list redirects nothing: no chain either.
    let config = ProxyConfig { ingress: Some(Ingress { proxy_port: 15000, app_ports: PortSet::new() }), ..seed() };
    assert!(NftablesPlan::new(&config).chain(PREROUTING_CHAIN).is_none());
}

#[test]
fn empty_lists_leave_their_set_and_rule_out() {
    let plan = NftablesPlan::new(&implicit_off());
    assert_eq!(plan.sets.iter().map(|s| s.name).collect::<Vec<_>>(), [APP_PORTS_SET]);
    assert_eq!(
        bare_rules(&plan, EGRESS_CHAIN),
        ["meta skuid 1337 counter return", "meta l4proto tcp counter redirect to :15001"]
    );
}

#[test]
fn port_ranges_are_interval_elements() {
    let plan = NftablesPlan::new(&port_ranges());
    assert_eq!(
        plan.set(IGNORED_PORTS_SET).unwrap().rendered_elements(),
        [
            "22",
            "25",
            "3000-3010",
            "5432",
            "6000-6063",
            "6379",
            "7000-7100",
            "8000-8010",
            "9000-9099",
            "11211",
            "27017-27019"
        ]
    );
    assert_eq!(plan.set(APP_PORTS_SET).unwrap().rendered_elements(), ["8080", "9080-9089", "50051"]);
    // One rule whatever the number of ports: nothing like multiport's 15.
    assert_eq!(bare_rules(&plan, EGRESS_CHAIN).iter().filter(|r| r.contains("dport")).count(), 1);
}

#[test]
fn long_sets_are_summarised_in_the_text_only() {
    let config = twenty_ports();
    let plan = NftablesPlan::new(&config);
    let set = plan.set(IGNORED_PORTS_SET).unwrap();
    assert_eq!(set.len(), 21, "20 configured + the implicit 22");
    let text = plan.render_text();
    assert!(text.contains("\t\t\t# … and 1 more (--format json lists them all)\n"), "{text}");
    assert!(!text.contains("\t\t\t1038\n"));
    let script = plan.apply_script();
    assert!(!script.contains('#') && script.contains("\t\t\t1036,\n\t\t\t1038\n"));
}

#[test]
fn ten_thousand_cidrs_are_one_set_and_one_rule() {
    let config = ten_thousand_cidrs();
    let plan = NftablesPlan::new(&config);
    let set = plan.set(IGNORED_V4_SET).unwrap();
    assert_eq!(set.len(), 10_002, "10,000 + the two metadata IPs");
    assert_eq!(bare_rules(&plan, EGRESS_CHAIN).len(), 4, "uid, ports, the v4 set, redirect");
    let script = plan.apply_script();
    let parsed = parse_script(&script);
    assert_eq!(parsed.sets[IGNORED_V4_SET].elements.len(), 10_002);

    let text = plan.render_text();
    assert!(text.lines().count() < 80, "{} lines", text.lines().count());
    assert!(text.contains("\t\t\t# … and 9982 more (--format json lists them all)\n"));

    let json: serde_json::Value = serde_json::from_str(&plan.render_json()).unwrap();
    let v4 = json["sets"].as_array().unwrap().iter().find(|s| s["name"] == IGNORED_V4_SET).unwrap();
    assert_eq!(v4["elements"].as_array().unwrap().len(), 10_002);
    assert_eq!(json["apply"].as_str().unwrap(), script);
    assert_eq!(json["remove"].as_str().unwrap(), REMOVE_SCRIPT);
}

#[test]
fn json_describes_the_rules_it_applies() {
    let plan = NftablesPlan::new(&seed());
    let json: serde_json::Value = serde_json::from_str(&plan.render_json()).unwrap();
    assert_eq!(
        (json["backend"].as_str(), json["family"].as_str(), json["table"].as_str()),
        (Some("nftables"), Some("inet"), Some("intercept"))
    );
    let output = &json["chains"][0];
    assert_eq!(
        output["hook"],
        serde_json::json!({"type": "nat", "hook": "output", "priority": -100, "policy": "accept"})
    );
    let rule = &output["rules"][0];
    assert_eq!(rule["matches"], serde_json::json!(["meta l4proto tcp", "fib daddr type != local"]));
    assert_eq!(rule["verdict"], "jump egress");
    assert_eq!(rule["statement"].as_str().unwrap(), plan.chains[0].rules[0].render());
    assert_eq!(json["chains"][2]["hook"], serde_json::Value::Null);
}

#[test]
fn rendering_is_deterministic() {
    for (_, config) in all_configs().into_iter().filter(|(n, _)| *n != "ten_thousand_cidrs") {
        for format in [Format::Text, Format::Json] {
            assert_eq!(Kind::Nftables.render_plan(&config, format), Kind::Nftables.render_plan(&config, format));
        }
    }
    // Input order does not matter: the plan works from the normalised lists.
    let mut shuffled = ipv6_cidrs();
    shuffled.egress_ignored_ips.reverse();
    shuffled.egress_ignored_ports = ports(&[(8000, 8010), (22, 22), (8005, 8020)]);
    let mut sorted = ipv6_cidrs();
    sorted.egress_ignored_ports = ports(&[(22, 22), (8000, 8020)]);
    assert_eq!(Kind::Nftables.render_plan(&shuffled, Format::Json), Kind::Nftables.render_plan(&sorted, Format::Json));
}

#[test]
fn the_script_reads_back_as_the_plan() {
    for (name, config) in all_configs() {
        let plan = NftablesPlan::new(&config);
        let parsed = parse_script(&plan.apply_script());
        let sets: BTreeMap<String, (String, Vec<String>)> = plan
            .sets
            .iter()
            .map(|s| (s.name.to_owned(), (s.set_type.as_str().to_owned(), s.rendered_elements())))
            .collect();
        let parsed_sets: BTreeMap<String, (String, Vec<String>)> =
            parsed.sets.iter().map(|(n, s)| (n.clone(), (s.set_type.clone(), s.elements.clone()))).collect();
        assert_eq!(parsed_sets, sets, "{name}");
        let chains: Vec<(String, Option<String>, Vec<String>)> = plan
            .chains
            .iter()
            .map(|c| {
                (c.name.to_owned(), c.hook.map(|h| h.as_str().to_owned()), c.rules.iter().map(Rule::render).collect())
            })
            .collect();
        let parsed_chains: Vec<(String, Option<String>, Vec<String>)> =
            parsed.chains.iter().map(|c| (c.name.clone(), c.hook.clone(), c.rules.clone())).collect();
        assert_eq!(parsed_chains, chains, "{name}");
    }
}

#[test]
fn the_interpreter_decides_the_seed_like_the_model() {
    let config = seed();
    let script = parse_script(&NftablesPlan::new(&config).apply_script());
    let local = LocalAddrs::with_addresses(["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()]);
    let conn = |direction, uid, src: &str, dst: &str| Connection {
        direction,
        protocol: Protocol::Tcp,
        uid,
        gid: uid,
        source: src.parse().unwrap(),
        destination: dst.parse().unwrap(),
    };
    let cases = [
        conn(Direction::Egress, 1000, "10.0.0.2:1", "192.0.2.10:80"),
        conn(Direction::Egress, 1000, "[fd00::2]:1", "[2001:db8::10]:80"),
        conn(Direction::Egress, 1337, "10.0.0.2:1", "192.0.2.10:80"),
        conn(Direction::Egress, 1000, "10.0.0.2:1", "192.0.2.10:22"),
        conn(Direction::Egress, 1000, "10.0.0.2:1", "169.254.169.254:80"),
        conn(Direction::Egress, 1000, "10.0.0.2:1", "127.0.0.1:80"),
        conn(Direction::Egress, 1000, "10.0.0.2:1", "10.0.0.2:80"),
        conn(Direction::Ingress, 0, "10.0.0.9:1", "10.0.0.2:9080"),
        conn(Direction::Ingress, 0, "10.0.0.9:1", "10.0.0.2:9081"),
        conn(Direction::Ingress, 0, "127.0.0.1:1", "10.0.0.2:9080"),
    ];
    let got: Vec<String> = cases.iter().map(|c| run_nftables(&script, &local, c).to_string()).collect();
    assert_eq!(
        got,
        [
            "redirected to 127.0.0.1:15001",
            "redirected to [::1]:15001",
            "untouched (process runs as IgnoredUID)",
            "untouched (destination port is in EgressIgnoredPorts)",
            "untouched (destination is in EgressIgnoredIPs)",
            "untouched (destination is local to the task)",
            "untouched (destination is local to the task)",
            "redirected to 10.0.0.2:15000",
            "untouched (destination port is not an AppPort)",
            "untouched (source is local to the task)",
        ]
    );
    for c in &cases {
        assert_eq!(run_nftables(&script, &local, c), model::decide(&config, &local, c), "{c:?}");
    }
}

/// The interpreter is only worth something if it tells a wrong table from a right one.
#[test]
fn the_interpreter_notices_a_wrong_table() {
    let config = ProxyConfig { ipv6: false, ignored_gids: vec![1338], ..seed() };
    let local = LocalAddrs::loopback();
    let egress = |uid: u32, dst: &str| Connection {
        direction: Direction::Egress,
        protocol: Protocol::Tcp,
        uid,
        gid: uid,
        source: "10.0.0.2:1".parse().unwrap(),
        destination: dst.parse().unwrap(),
    };
    let disagrees = |plan: &NftablesPlan, conn: &Connection| {
        let script = parse_script(&plan.apply_script());
        run_nftables(&script, &local, conn) != model::decide(&config, &local, conn)
    };
    let good = NftablesPlan::new(&config);
    let cases = [egress(1000, "[2001:db8::10]:80"), egress(1337, "192.0.2.10:22"), egress(1000, "192.0.2.10:80")];
    assert!(cases.iter().all(|c| !disagrees(&good, c)));

    // The jumps without `meta nfproto ipv4`: IPv6 redirected although IPv6 is off.
    let mut bad = good.clone();
    bad.chains.iter_mut().flat_map(|c| &mut c.rules).for_each(|r| r.matches.retain(|m| *m != Match::Ipv4Only));
    assert!(disagrees(&bad, &cases[0]));
    // The ports checked before the uid: the right outcome for the wrong reason.
    let mut bad = good.clone();
    let egress_chain = bad.chains.iter_mut().find(|c| c.name == EGRESS_CHAIN).unwrap();
    egress_chain.rules.swap(0, 2);
    assert!(disagrees(&bad, &cases[1]));
    // A wrong proxy port.
    let mut bad = good.clone();
    let egress_chain = bad.chains.iter_mut().find(|c| c.name == EGRESS_CHAIN).unwrap();
    egress_chain.rules.last_mut().unwrap().verdict = Verdict::Redirect(15002);
    assert!(disagrees(&bad, &cases[2]));
    // A set missing an element.
    let mut bad = good.clone();
    let ports = bad.sets.iter_mut().find(|s| s.name == IGNORED_PORTS_SET).unwrap();
    ports.elements = Elements::Ports(vec![PortRange::single(23)]);
    assert!(disagrees(&bad, &egress(1000, "192.0.2.10:22")));
}

// ---------------------------------------------------------------------------------------
// Against the model, on random configurations

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nftables_plan_agrees_with_the_model(
        config in arb_config(),
        task_addrs in prop::collection::vec(arb_ip(), 0..3),
        conns in prop::collection::vec(arb_connection(), 1..32),
    ) {
        let plan = NftablesPlan::new(&config);
        let script = parse_script(&plan.apply_script());
        let local = LocalAddrs::with_addresses(task_addrs.iter().map(|a| canonical(*a)));
        for conn in conns.iter().chain(&edge_connections(&config)) {
            let want = model::decide(&config, &local, conn);
            let got = run_nftables(&script, &local, conn);
            // Without a prerouting chain nothing decides ingress: "not TCP", "local
            // source" and "not an AppPort" are all right, so only the outcome is compared.
            if conn.direction == Direction::Egress || plan.chain(PREROUTING_CHAIN).is_some() {
                prop_assert_eq!(got, want, "{:?}", conn);
            } else {
                prop_assert_eq!(outcome(got), outcome(want), "{:?}", conn);
            }
        }
    }

    #[test]
    fn plan_invariants(config in arb_config()) {
        let plan = NftablesPlan::new(&config);
        let script = plan.apply_script();
        // Sets are defined before use and every referenced set and chain exists.
        let parsed = parse_script(&script);
        for rule in plan.chains.iter().flat_map(|c| &c.rules) {
            prop_assert!(rule.comment.starts_with(COMMENT_PREFIX) && rule.comment.len() <= COMMENT_MAX);
            for m in &rule.matches {
                if let Match::DportIn(set) | Match::DaddrIn(_, set) = m {
                    prop_assert!(parsed.sets.contains_key(*set));
                }
            }
            if let Verdict::Jump(chain) = rule.verdict {
                prop_assert!(plan.chain(chain).is_some_and(|c| c.hook.is_none()));
            }
        }
        if !config.ipv6 {
            prop_assert!(!script.contains("ip6 ") && plan.set(IGNORED_V6_SET).is_none());
        }
        prop_assert_eq!(plan.chain(PREROUTING_CHAIN).is_some(), config.ingress.as_ref().is_some_and(|i| !i.app_ports.is_empty()));
    }
}
