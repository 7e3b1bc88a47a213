//! The daemon's decision, pure: from the task files (desired) and what the daemon installed
//! before (its state record, with what it observed on the host), the actions that bring the
//! host to the desired state.
//!
//! The rule that matters most: interception is never removed for a task whose file still
//! exists, even when the file has become unreadable or the record disagrees with it. A file
//! that cannot be parsed keeps whatever was installed for its task; a changed target (another
//! backend, cgroup or namespace) is applied before the old one is removed.
//!
//! A task that waits for its proxy (`proxy-live`) is first installed only once the caller
//! observed its proxy LIVE ([`Desired::proxy_live`], asked for by [`awaits_proxy`]); once
//! installed it is never held back again, so a restarting proxy never removes interception.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spec::TaskSpec;
use crate::plan::Backend;
use crate::readiness::InstallWhen;

/// What the daemon installed for a task, as its state record keeps it: enough to remove it
/// without the task file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub id: String,
    #[serde(with = "backend_name")]
    pub backend: Backend,
    pub cgroup: String,
    pub netns: Option<PathBuf>,
    /// [`TaskSpec::fingerprint`] of the spec applied.
    pub fingerprint: u64,
}

impl Installed {
    pub fn of(spec: &TaskSpec) -> Installed {
        Installed {
            id: spec.id.clone(),
            backend: spec.backend,
            cgroup: spec.cgroup.clone(),
            netns: spec.netns.clone(),
            fingerprint: spec.fingerprint(),
        }
    }

    /// Whether applying `spec` updates this installation in place (the same backend in the
    /// same [`place`]), so there is nothing else to remove afterwards. An eBPF task whose
    /// namespace changed but not its cgroup is updated in place too: its programs follow the
    /// cgroup (its `sk_lookup` program stays on the namespace it was first attached to).
    fn replaced_in_place_by(&self, spec: &TaskSpec) -> bool {
        self.backend == spec.backend
            && place(self.backend, &self.cgroup, self.netns.as_deref())
                == place(spec.backend, &spec.cgroup, spec.netns.as_deref())
    }
}

mod backend_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::plan::Backend;

    pub fn serialize<S: Serializer>(backend: &Backend, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(backend.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Backend, D::Error> {
        let name = String::deserialize(deserializer)?;
        [Backend::Ebpf, Backend::Iptables, Backend::Nftables]
            .into_iter()
            .find(|b| b.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown backend {name:?}")))
    }
}

/// A task file that parsed, and what the daemon saw of its cgroup and its proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub spec: TaskSpec,
    pub cgroup_exists: bool,
    /// The file's `installWhen`, or the daemon's `--install-when`.
    pub install_when: InstallWhen,
    /// Whether the proxy's admin answered LIVE in this pass; only looked at (and only
    /// observed) when [`awaits_proxy`] says so.
    pub proxy_live: bool,
}

/// Whether the task may be installed only once its proxy is LIVE: a `proxy-live` task that is
/// not installed yet (`recorded`: the daemon installed it before) and can be (its cgroup
/// exists). The caller observes [`Desired::proxy_live`] for exactly these.
pub fn awaits_proxy(desired: &Desired, recorded: bool) -> bool {
    desired.install_when == InstallWhen::ProxyLive && !recorded && desired.cgroup_exists
}

/// The tasks held back because their proxy is not LIVE yet, in id order.
pub fn waiting_for_proxy<'a>(desired: &'a [Desired], recorded: &BTreeMap<String, Installed>) -> Vec<&'a str> {
    let mut ids: Vec<&str> = desired
        .iter()
        .filter(|d| awaits_proxy(d, recorded.contains_key(&d.spec.id)) && !d.proxy_live)
        .map(|d| d.spec.id.as_str())
        .collect();
    ids.sort_unstable();
    ids
}

/// A record of the state, and whether the installation is still whole on the host; `None`
/// when it was not checked (a pass triggered by a file event checks only files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    pub installed: Installed,
    pub intact: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApplyReason {
    /// No record: a new file, or one whose task the daemon never installed. Applying is
    /// idempotent, so an installation left by an earlier run (state lost) is adopted in place.
    New,
    /// The file asks for something other than what was applied.
    Changed,
    /// The record says installed, the host says not (removed by hand, programs detached).
    Drifted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoveReason {
    /// The task file was deleted.
    FileDeleted,
    /// The task's cgroup no longer exists (the task ended): its leftovers are cleaned up.
    CgroupGone,
    /// The task file moved the task elsewhere; the new target is applied first.
    Replaced,
    /// The daemon is stopping with `--remove-on-exit` (not a decision of [`reconcile`]).
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Apply { spec: TaskSpec, reason: ApplyReason },
    Remove { installed: Installed, reason: RemoveReason },
}

impl Action {
    pub fn id(&self) -> &str {
        match self {
            Action::Apply { spec, .. } => &spec.id,
            Action::Remove { installed, .. } => &installed.id,
        }
    }
}

/// The actions, in the order to run them: per task, an apply before the removal of what it
/// replaces; tasks in id order.
///
/// `unreadable` holds the ids of task files that exist but could not be parsed: their tasks
/// are left as they are.
pub fn reconcile(desired: &[Desired], unreadable: &BTreeSet<String>, actual: &[Actual]) -> Vec<Action> {
    let records: BTreeMap<&str, &Actual> = actual.iter().map(|a| (a.installed.id.as_str(), a)).collect();
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.spec.id.as_str()).collect();
    let mut actions = Vec::new();
    for d in desired {
        let record = records.get(d.spec.id.as_str());
        if !d.cgroup_exists {
            if let Some(record) = record {
                actions.push(Action::Remove { installed: record.installed.clone(), reason: RemoveReason::CgroupGone });
            }
            continue;
        }
        match record {
            None if awaits_proxy(d, false) && !d.proxy_live => {}
            None => actions.push(Action::Apply { spec: d.spec.clone(), reason: ApplyReason::New }),
            Some(record) if record.installed.fingerprint != d.spec.fingerprint() => {
                actions.push(Action::Apply { spec: d.spec.clone(), reason: ApplyReason::Changed });
                if !record.installed.replaced_in_place_by(&d.spec) {
                    actions
                        .push(Action::Remove { installed: record.installed.clone(), reason: RemoveReason::Replaced });
                }
            }
            Some(record) if record.intact == Some(false) => {
                actions.push(Action::Apply { spec: d.spec.clone(), reason: ApplyReason::Drifted });
            }
            Some(_) => {}
        }
    }
    for a in actual {
        let id = a.installed.id.as_str();
        if !wanted.contains(id) && !unreadable.contains(id) {
            actions.push(Action::Remove { installed: a.installed.clone(), reason: RemoveReason::FileDeleted });
        }
    }
    // Stable: an apply stays ahead of the removal it replaces.
    actions.sort_by(|a, b| a.id().cmp(b.id()));
    actions
}

/// Where a task's interception lives, for conflicts: an eBPF installation is its cgroup's, the
/// rule backends' are their network namespace's. Two tasks in one place would share (and
/// fight over) one installation, and removing either would remove the other's.
fn place(backend: Backend, cgroup: &str, netns: Option<&std::path::Path>) -> String {
    match backend {
        Backend::Ebpf => format!("cgroup {}", cgroup.trim_matches('/')),
        Backend::Iptables | Backend::Nftables => match netns {
            Some(netns) => format!("network namespace {}", netns.display()),
            None => "the daemon's network namespace".to_owned(),
        },
    }
}

/// Task files that ask for a place another task has: `(id, the other task's id, the place)`.
/// The task already installed there keeps it; between new ones the first id does. The caller
/// leaves a conflicting task alone (like a bad file) until the conflict is gone.
pub fn conflicts(specs: &[TaskSpec], recorded: &BTreeMap<String, Installed>) -> Vec<(String, String, String)> {
    let mut ordered: Vec<&TaskSpec> = specs.iter().collect();
    ordered.sort_by_key(|s| (!recorded.contains_key(&s.id), s.id.clone()));
    let mut owners: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for spec in ordered {
        let place = place(spec.backend, &spec.cgroup, spec.netns.as_deref());
        match owners.get(&place) {
            Some(owner) => out.push((spec.id.clone(), (*owner).to_owned(), place)),
            None => {
                owners.insert(place, &spec.id);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::config::{PortSet, ProxyConfig};

    fn spec(id: &str, backend: Backend, egress: u16) -> TaskSpec {
        TaskSpec {
            id: id.into(),
            cgroup: format!("/ecs/{id}"),
            netns: Some(PathBuf::from(format!("/run/netns/{id}"))),
            backend,
            config: ProxyConfig {
                ignored_uid: Some(1337),
                ignored_gid: None,
                proxy_egress_port: egress,
                ingress: None,
                egress_ignored_ports: PortSet::new(),
                egress_ignored_ips: Vec::new(),
                implicit_exemptions: true,
                ipv6: true,
            },
            install_when: None,
            proxy_admin_url: crate::readiness::DEFAULT_ADMIN_URL.into(),
        }
    }

    fn desired(spec: TaskSpec) -> Desired {
        Desired { spec, cgroup_exists: true, install_when: InstallWhen::Immediately, proxy_live: false }
    }

    fn waiting(spec: TaskSpec, proxy_live: bool) -> Desired {
        Desired { spec, cgroup_exists: true, install_when: InstallWhen::ProxyLive, proxy_live }
    }

    fn actual(spec: &TaskSpec, intact: Option<bool>) -> Actual {
        Actual { installed: Installed::of(spec), intact }
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
        let a = spec("a", Backend::Ebpf, 15001);
        let a_changed = spec("a", Backend::Ebpf, 15002);
        let mut a_moved = a.clone();
        a_moved.backend = Backend::Nftables;
        let mut a_recgrouped = a.clone();
        a_recgrouped.cgroup = "/ecs/a2".into();
        let mut a_renetns = a.clone();
        a_renetns.netns = Some(PathBuf::from("/run/netns/a2"));
        let b = spec("b", Backend::Iptables, 15001);
        let mut b_nft = b.clone();
        b_nft.backend = Backend::Nftables;
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
                vec![actual(&b, Some(true)), actual(&a, Some(true)), actual(&spec("c", Backend::Ebpf, 1), None)],
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
        let a = spec("a", Backend::Ebpf, 15001);
        let variants = [a.clone(), spec("a", Backend::Ebpf, 1), spec("a", Backend::Iptables, 15001)];
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
        let a = spec("a", Backend::Ebpf, 15001);
        let b = spec("b", Backend::Ebpf, 15001);
        let c = spec("c", Backend::Ebpf, 15001);
        let d = spec("d", Backend::Ebpf, 15001);
        let desired = [
            waiting(d.clone(), false),
            waiting(a.clone(), false),
            waiting(b.clone(), true),
            desired(c.clone()),
            Desired { cgroup_exists: false, ..waiting(spec("e", Backend::Ebpf, 1), false) },
        ];
        let none = BTreeMap::new();
        assert_eq!(waiting_for_proxy(&desired, &none), ["a", "d"]);
        let installed: BTreeMap<String, Installed> = [("a".to_owned(), Installed::of(&a))].into();
        assert_eq!(waiting_for_proxy(&desired, &installed), ["d"], "installed once: never waits again");
        let checked: Vec<bool> = desired.iter().map(|x| awaits_proxy(x, installed.contains_key(&x.spec.id))).collect();
        assert_eq!(checked, [true, false, true, false, false], "immediately, installed and cgroup-less: not checked");
    }

    #[test]
    fn two_tasks_in_one_place_conflict_and_the_installed_one_keeps_it() {
        let a = spec("a", Backend::Ebpf, 15001);
        let mut b = spec("b", Backend::Ebpf, 15002);
        b.cgroup = "ecs/a/".into();
        let mut c = spec("c", Backend::Iptables, 15001);
        c.netns = a.netns.clone();
        let mut d = spec("d", Backend::Nftables, 15001);
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
        let b_installed: BTreeMap<String, Installed> = [("b".to_owned(), Installed::of(&b))].into();
        assert_eq!(conflicts(&[a, b], &b_installed), vec![("a".into(), "b".into(), "cgroup ecs/a".into())]);
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = Installed::of(&spec("a", Backend::Nftables, 15001));
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""backend":"nftables""#), "{json}");
        assert_eq!(serde_json::from_str::<Installed>(&json).unwrap(), record);
    }
}
