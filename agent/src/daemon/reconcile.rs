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

use super::spec::{Source, TaskSpec};
use crate::backend::{Kind, Scope};
use crate::readiness::InstallWhen;

/// What the daemon installed for a task, as its state record keeps it: enough to remove it
/// without the task file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub id: String,
    pub backend: Kind,
    pub cgroup: String,
    pub netns: Option<PathBuf>,
    /// [`TaskSpec::fingerprint`] of the spec applied.
    pub fingerprint: u64,
    #[serde(default)]
    pub source: Source,
    /// The inode of the network namespace `netns` named when the task was installed: a task
    /// from the engine is named by `/proc/<pid>/ns/net`, which names another namespace once
    /// the pid is reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_inode: Option<u64>,
    /// The id of `cgroup` when the task was installed (eBPF), to remove its pins once the
    /// cgroup is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

impl Installed {
    /// The record of `spec`, installed in the namespace of inode `netns_inode` and the cgroup
    /// of id `cgroup_id`.
    pub fn of(spec: &TaskSpec, netns_inode: Option<u64>, cgroup_id: Option<u64>) -> Installed {
        Installed {
            id: spec.id.clone(),
            backend: spec.backend,
            cgroup: spec.cgroup.clone(),
            netns: spec.netns.clone(),
            fingerprint: spec.fingerprint(),
            source: spec.source,
            netns_inode,
            cgroup_id,
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
    /// The task's last container stopped (a task from the engine).
    TaskEnded,
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

    /// The backend the action works with.
    pub fn backend(&self) -> Kind {
        match self {
            Action::Apply { spec, .. } => spec.backend,
            Action::Remove { installed, .. } => installed.backend,
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
            let reason = match a.installed.source {
                Source::File => RemoveReason::FileDeleted,
                Source::Docker => RemoveReason::TaskEnded,
            };
            actions.push(Action::Remove { installed: a.installed.clone(), reason });
        }
    }
    // Stable: an apply stays ahead of the removal it replaces.
    actions.sort_by(|a, b| a.id().cmp(b.id()));
    actions
}

/// Where a task's interception lives, for conflicts: an eBPF installation is its cgroup's, the
/// rule backends' are their network namespace's. Two tasks in one place would share (and
/// fight over) one installation, and removing either would remove the other's.
fn place(backend: Kind, cgroup: &str, netns: Option<&std::path::Path>) -> String {
    match backend.scope() {
        Scope::Cgroup => format!("cgroup {}", cgroup.trim_matches('/')),
        Scope::Netns => match netns {
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
mod tests;
