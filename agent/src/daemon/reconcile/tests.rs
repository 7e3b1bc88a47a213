use std::fmt::Write as _;

use super::*;
use crate::config::ProxyConfig;

fn spec(id: &str, backend: Kind, egress: u16) -> TaskSpec {
    TaskSpec {
        id: id.into(),
        cgroup: format!("/ecs/{id}"),
        netns: Some(PathBuf::from(format!("/run/netns/{id}"))),
        backend,
        config: ProxyConfig { ignored_uids: vec![1337], ..ProxyConfig::new(egress) },
        install_when: None,
        proxy_admin_url: crate::readiness::DEFAULT_ADMIN_URL.into(),
        source: Source::File,
    }
}

fn desired(spec: TaskSpec) -> Desired {
    Desired { spec, cgroup_exists: true, install_when: InstallWhen::Immediately, proxy_live: false }
}

fn waiting(spec: TaskSpec, proxy_live: bool) -> Desired {
    Desired { spec, cgroup_exists: true, install_when: InstallWhen::ProxyLive, proxy_live }
}

fn actual(spec: &TaskSpec, intact: Option<bool>) -> Actual {
    Actual { installed: Installed::of(spec, None, None), intact }
}

/// One line per action, for the table below.
fn render(actions: &[Action]) -> String {
    let mut out = String::new();
    for action in actions {
        let _ = match action {
            Action::Apply { spec, reason } => {
                writeln!(out, "apply {} {} ({reason:?})", spec.id, spec.backend.name())
            }
            Action::Remove { installed, reason } => {
                writeln!(out, "remove {} {} ({reason:?})", installed.id, installed.backend.name())
            }
        };
    }
    out
}

#[test]
fn table() {
    let a = spec("a", Kind::Ebpf, 15001);
    let a_changed = spec("a", Kind::Ebpf, 15002);
    let mut a_moved = a.clone();
    a_moved.backend = Kind::Nftables;
    let mut a_recgrouped = a.clone();
    a_recgrouped.cgroup = "/ecs/a2".into();
    let mut a_renetns = a.clone();
    a_renetns.netns = Some(PathBuf::from("/run/netns/a2"));
    let b = spec("b", Kind::Iptables, 15001);
    let mut b_nft = b.clone();
    b_nft.backend = Kind::Nftables;
    let none = BTreeSet::new();
    let unreadable_a: BTreeSet<String> = ["a".to_owned()].into();
    let gone = |s: &TaskSpec| Desired { cgroup_exists: false, ..desired(s.clone()) };
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<Desired>, &BTreeSet<String>, Vec<Actual>, &str)> = vec![
        ("nothing at all", vec![], &none, vec![], ""),
        (
            "new files are applied",
            vec![desired(a.clone()), desired(b.clone())],
            &none,
            vec![],
            "apply a ebpf (New)\napply b iptables (New)\n",
        ),
        ("applied and intact: nothing", vec![desired(a.clone())], &none, vec![actual(&a, Some(true))], ""),
        ("applied, not checked: nothing", vec![desired(a.clone())], &none, vec![actual(&a, None)], ""),
        (
            "applied but drifted: re-applied",
            vec![desired(a.clone())],
            &none,
            vec![actual(&a, Some(false))],
            "apply a ebpf (Drifted)\n",
        ),
        (
            "changed config: applied in place",
            vec![desired(a_changed.clone())],
            &none,
            vec![actual(&a, Some(true))],
            "apply a ebpf (Changed)\n",
        ),
        (
            "changed backend: new applied, then old removed",
            vec![desired(a_moved.clone())],
            &none,
            vec![actual(&a, Some(true))],
            "apply a nftables (Changed)\nremove a ebpf (Replaced)\n",
        ),
        (
            "changed cgroup: new applied, then old removed",
            vec![desired(a_recgrouped.clone())],
            &none,
            vec![actual(&a, Some(true))],
            "apply a ebpf (Changed)\nremove a ebpf (Replaced)\n",
        ),
        (
            "eBPF namespace changed, same cgroup: updated in place, nothing removed",
            vec![desired(a_renetns.clone())],
            &none,
            vec![actual(&a, Some(true))],
            "apply a ebpf (Changed)\n",
        ),
        (
            "iptables to nftables in one namespace: the old rules go",
            vec![desired(b_nft.clone())],
            &none,
            vec![actual(&b, Some(true))],
            "apply b nftables (Changed)\nremove b iptables (Replaced)\n",
        ),
        (
            "file deleted: removed",
            vec![],
            &none,
            vec![actual(&a, Some(true)), actual(&b, None)],
            "remove a ebpf (FileDeleted)\nremove b iptables (FileDeleted)\n",
        ),
        ("file unreadable: left alone", vec![], &unreadable_a, vec![actual(&a, Some(true))], ""),
        ("file unreadable, drifted: left alone", vec![], &unreadable_a, vec![actual(&a, Some(false))], ""),
        (
            "cgroup gone: cleaned up",
            vec![gone(&a)],
            &none,
            vec![actual(&a, Some(false))],
            "remove a ebpf (CgroupGone)\n",
        ),
        ("cgroup gone, nothing installed: nothing", vec![gone(&a)], &none, vec![], ""),
        ("proxy-live, proxy not LIVE: held back", vec![waiting(a.clone(), false)], &none, vec![], ""),
        ("proxy-live, proxy LIVE: applied", vec![waiting(a.clone(), true)], &none, vec![], "apply a ebpf (New)\n"),
        (
            "proxy-live, held back; an immediately task beside it is applied",
            vec![waiting(a.clone(), false), desired(b.clone())],
            &none,
            vec![],
            "apply b iptables (New)\n",
        ),
        (
            "proxy-live, installed, proxy not LIVE (restarting): drift still repaired",
            vec![waiting(a.clone(), false)],
            &none,
            vec![actual(&a, Some(false))],
            "apply a ebpf (Drifted)\n",
        ),
        (
            "proxy-live, installed, proxy not LIVE: a changed file is still applied",
            vec![waiting(a_changed.clone(), false)],
            &none,
            vec![actual(&a, Some(true))],
            "apply a ebpf (Changed)\n",
        ),
        (
            "proxy-live, installed, proxy not LIVE: kept",
            vec![waiting(a.clone(), false)],
            &none,
            vec![actual(&a, Some(true))],
            "",
        ),
        (
            "proxy-live, file deleted while installed: removed",
            vec![],
            &none,
            vec![actual(&a, Some(true))],
            "remove a ebpf (FileDeleted)\n",
        ),
        (
            "proxy-live, cgroup gone: cleaned up, not waited for",
            vec![Desired { cgroup_exists: false, ..waiting(a.clone(), false) }],
            &none,
            vec![actual(&a, None)],
            "remove a ebpf (CgroupGone)\n",
        ),
        (
            "mixed, in id order",
            vec![desired(b.clone()), desired(a_changed.clone())],
            &none,
            vec![actual(&b, Some(true)), actual(&a, Some(true)), actual(&spec("c", Kind::Ebpf, 1), None)],
            "apply a ebpf (Changed)\nremove c ebpf (FileDeleted)\n",
        ),
    ];
    for (name, desired, unreadable, actual, want) in cases {
        assert_eq!(render(&reconcile(&desired, unreadable, &actual)), want, "{name}");
    }
}

#[test]
fn a_task_whose_file_exists_is_never_removed_unless_its_cgroup_is_gone_or_it_moved() {
    // Every combination of record and observation for one task with an existing file.
    let a = spec("a", Kind::Ebpf, 15001);
    let variants = [a.clone(), spec("a", Kind::Ebpf, 1), spec("a", Kind::Iptables, 15001)];
    for applied in &variants {
        for intact in [None, Some(true), Some(false)] {
            let actions = reconcile(&[desired(a.clone())], &BTreeSet::new(), &[actual(applied, intact)]);
            for action in &actions {
                if let Action::Remove { reason, .. } = action {
                    assert_eq!(*reason, RemoveReason::Replaced, "{applied:?} {intact:?}");
                    assert!(matches!(actions[0], Action::Apply { .. }), "the new target goes first");
                }
            }
        }
    }
}

#[test]
fn only_proxy_live_tasks_not_yet_installed_wait_and_are_checked() {
    let a = spec("a", Kind::Ebpf, 15001);
    let b = spec("b", Kind::Ebpf, 15001);
    let c = spec("c", Kind::Ebpf, 15001);
    let d = spec("d", Kind::Ebpf, 15001);
    let desired = [
        waiting(d.clone(), false),
        waiting(a.clone(), false),
        waiting(b.clone(), true),
        desired(c.clone()),
        Desired { cgroup_exists: false, ..waiting(spec("e", Kind::Ebpf, 1), false) },
    ];
    let none = BTreeMap::new();
    assert_eq!(waiting_for_proxy(&desired, &none), ["a", "d"]);
    let installed: BTreeMap<String, Installed> = [("a".to_owned(), Installed::of(&a, None, None))].into();
    assert_eq!(waiting_for_proxy(&desired, &installed), ["d"], "installed once: never waits again");
    let checked: Vec<bool> = desired.iter().map(|x| awaits_proxy(x, installed.contains_key(&x.spec.id))).collect();
    assert_eq!(checked, [true, false, true, false, false], "immediately, installed and cgroup-less: not checked");
}

#[test]
fn two_tasks_in_one_place_conflict_and_the_installed_one_keeps_it() {
    let a = spec("a", Kind::Ebpf, 15001);
    let mut b = spec("b", Kind::Ebpf, 15002);
    b.cgroup = "ecs/a/".into();
    let mut c = spec("c", Kind::Iptables, 15001);
    c.netns = a.netns.clone();
    let mut d = spec("d", Kind::Nftables, 15001);
    d.netns = a.netns.clone();
    let specs = [a.clone(), b.clone(), c.clone(), d];
    let none = BTreeMap::new();
    assert_eq!(
        conflicts(&specs, &none),
        vec![
            ("b".into(), "a".into(), "cgroup ecs/a".into()),
            ("d".into(), "c".into(), "network namespace /run/netns/a".into()),
        ],
        "an eBPF task and a rule task may share a namespace; two in one cgroup or two rule tasks in one namespace may not"
    );
    let b_installed: BTreeMap<String, Installed> = [("b".to_owned(), Installed::of(&b, None, None))].into();
    assert_eq!(conflicts(&[a, b], &b_installed), vec![("a".into(), "b".into(), "cgroup ecs/a".into())]);
}

#[test]
fn records_round_trip_through_json() {
    let record = Installed::of(&spec("a", Kind::Nftables, 15001), Some(4026531992), None);
    let json = serde_json::to_string(&record).unwrap();
    assert!(json.contains(r#""backend":"nftables""#), "{json}");
    assert_eq!(serde_json::from_str::<Installed>(&json).unwrap(), record);
}
