//! `intercept daemon`: keeps the host's interception equal to a directory of task files.
//!
//! Each pass reads every task file ([`spec`]), observes the host ([`host`]), decides
//! ([`reconcile::reconcile`], pure) and runs the actions, recording what it installed
//! ([`state`]) so that a restarted daemon adopts its earlier work. A pass runs on start, after
//! every burst of changes in the directory (inotify, through `notify`), and every
//! `--resync-interval`; the periodic pass also checks that every installation is still whole.
//! While a task waits for its proxy to be LIVE (`proxy-live`), a pass also runs every
//! [`PROXY_RECHECK`].
//!
//! SIGTERM and SIGINT end the loop and leave interception in place (a daemon upgrade is
//! invisible to the tasks) unless `--remove-on-exit` is given.

pub mod docker;
pub mod host;
pub mod metrics;
pub mod reconcile;
pub mod spec;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use notify::Watcher as _;
use tracing::{debug, error, info, warn};

use self::docker::TaskSource;
use self::host::{Host, HostOps};
use self::metrics::Metrics;
use self::reconcile::{Action, Actual, Desired, Installed, RemoveReason};
use self::spec::Source;
use crate::backend::Kind;
use crate::config::source::MAX_INPUT_BYTES;
use crate::error_chain;
use crate::readiness::{InstallWhen, Observation, ServerState};

/// A burst of file events ends after this long without another one.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// ... or after this long, however busy the directory is.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);
/// How often the proxies of waiting tasks are looked at again.
pub const PROXY_RECHECK: Duration = Duration::from_millis(500);
/// How long one look at a proxy admin may take: the looks run in parallel, so a pass waits
/// about this long at most for all of them, and the tasks that do not wait are applied after.
pub const PROXY_FETCH_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct Options {
    /// The task files' directory; `None`: no file source.
    pub tasks_dir: Option<PathBuf>,
    /// The container engine's socket; `None`: no Docker source.
    pub docker_socket: Option<PathBuf>,
    /// The backend of a task from the engine without an `intercept.backend` label.
    pub default_backend: Kind,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub metrics_addr: SocketAddr,
    pub resync_interval: Duration,
    pub remove_on_exit: bool,
    /// When a task whose file does not say (`installWhen`) is installed.
    pub install_when: InstallWhen,
    /// How long a task may wait for its proxy before it counts as failed (it keeps waiting).
    pub proxy_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the tasks directory {}", path.display())]
    TasksDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("watching the tasks directory {}", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::ServeError),
    #[error("installing the SIGTERM/SIGINT handlers")]
    Signals(#[source] io::Error),
    #[error("starting the Docker source")]
    Docker(#[source] io::Error),
    #[error("{failed} task(s) could not be removed on exit")]
    RemoveOnExit { failed: usize },
}

enum Event {
    /// Something changed in the tasks directory, or the engine's tasks.
    Files,
    WatchFailed(notify::Error),
    Stop(i32),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: Options) -> Result<(), Error> {
    if let Some(dir) = &options.tasks_dir {
        fs::create_dir_all(dir).map_err(|source| Error::TasksDir { path: dir.clone(), source })?;
    }
    let host: Arc<dyn HostOps> = Arc::new(Host { bpffs: options.bpffs.clone() });
    let (metrics, registry) = Metrics::new(Arc::clone(&host));
    let records = state::load(&options.state_dir)?;
    if !records.is_empty() {
        info!(tasks = records.len(), state = %options.state_dir.display(), "adopting the tasks of an earlier run");
    }
    let bound = metrics.serve(registry, options.metrics_addr)?;
    info!(addr = %bound, "serving /metrics and /healthz");

    let (tx, rx) = mpsc::channel();
    let watcher = match &options.tasks_dir {
        Some(dir) => {
            let files = tx.clone();
            let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let _ = match event {
                    Ok(event) if is_relevant(&event) => files.send(Event::Files),
                    Ok(_) => Ok(()),
                    Err(e) => files.send(Event::WatchFailed(e)),
                };
            })
            .map_err(|source| Error::Watch { path: dir.clone(), source })?;
            watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .map_err(|source| Error::Watch { path: dir.clone(), source })?;
            Some(watcher)
        }
        None => None,
    };
    let docker = match &options.docker_socket {
        Some(socket) => {
            let changed = tx.clone();
            let source = docker::Watcher::start(socket.clone(), options.resync_interval, move || {
                let _ = changed.send(Event::Files);
            })
            .map_err(Error::Docker)?;
            Some(Box::new(source) as Box<dyn TaskSource>)
        }
        None => None,
    };
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(Error::Signals)?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = tx.send(Event::Stop(signal));
            }
        })
        .map_err(Error::Signals)?;

    let mut daemon = Daemon::new(options, host, metrics, docker, records);
    daemon.pass(true);
    let mut next_resync = Instant::now() + daemon.options.resync_interval;
    loop {
        let mut timeout = next_resync.saturating_duration_since(Instant::now());
        if !daemon.waiting.is_empty() {
            timeout = timeout.min(PROXY_RECHECK);
        }
        let mut event = rx.recv_timeout(timeout);
        if let Ok(Event::Files) = event {
            let pending = debounce(&rx);
            daemon.pass(false);
            match pending {
                Some(other) => event = Ok(other),
                None => continue,
            }
        }
        match event {
            Ok(Event::Files) => {}
            Ok(Event::WatchFailed(e)) => {
                // The periodic pass still catches every change.
                warn!(error = %e, "watching the tasks directory");
            }
            Ok(Event::Stop(signal)) => {
                info!(signal, "stopping");
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < next_resync => {
                // A task waits for its proxy: a pass like a file event's, which looks again.
                daemon.pass(false);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                daemon.pass(true);
                next_resync = Instant::now() + daemon.options.resync_interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(watcher);
    if daemon.options.remove_on_exit {
        return daemon.remove_all();
    }
    info!(tasks = daemon.records.len(), "interception left in place (no --remove-on-exit)");
    Ok(())
}

/// A change to a task file (not an access, not an editor's temp file).
fn is_relevant(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_)) && event.paths.iter().any(|p| spec::task_id_of(p).is_some())
}

/// Waits for the burst of file events to end (a writer's create, write and rename), so the
/// pass sees the files as they end up. Returns another kind of event that arrived meanwhile,
/// for the loop to handle after the pass.
fn debounce(rx: &mpsc::Receiver<Event>) -> Option<Event> {
    let deadline = Instant::now() + DEBOUNCE_MAX;
    while Instant::now() < deadline {
        match rx.recv_timeout(DEBOUNCE) {
            Ok(Event::Files) => {}
            Ok(other) => return Some(other),
            Err(_) => return None,
        }
    }
    None
}

struct Daemon {
    options: Options,
    host: Arc<dyn HostOps>,
    metrics: Metrics,
    /// The Docker source, with `--docker-socket`.
    docker: Option<Box<dyn TaskSource>>,
    /// The family and revision of each task from the engine, by task id, for logs and metrics.
    labels: BTreeMap<String, (String, String)>,
    /// What the daemon installed, by task id: its state record.
    records: BTreeMap<String, Installed>,
    /// The last problem reported per task id, so an unchanged bad file is reported once.
    reported: BTreeMap<String, String>,
    /// The tasks waiting for their proxy to be LIVE, by id.
    waiting: BTreeMap<String, Waiting>,
}

/// A task held back until its proxy is LIVE.
struct Waiting {
    since: Instant,
    /// Whether it has waited longer than `--proxy-timeout` (reported once, counted as failed).
    overdue: bool,
}

impl Daemon {
    /// A daemon that has installed `records` (a previous run's, adopted).
    fn new(
        options: Options,
        host: Arc<dyn HostOps>,
        metrics: Metrics,
        docker: Option<Box<dyn TaskSource>>,
        records: BTreeMap<String, Installed>,
    ) -> Daemon {
        Daemon {
            options,
            host,
            metrics,
            records,
            reported: BTreeMap::new(),
            waiting: BTreeMap::new(),
            docker,
            labels: BTreeMap::new(),
        }
    }

    /// One reconcile pass; `check_host` also checks that each installation is still whole.
    fn pass(&mut self, check_host: bool) {
        let started = Instant::now();
        let (mut desired, unreadable, broken) = self.read_tasks();
        let observations = self.observe_proxies(&mut desired);
        let actual: Vec<Actual> = self
            .records
            .values()
            .map(|installed| Actual {
                installed: installed.clone(),
                intact: check_host.then(|| self.intact(installed)).flatten(),
            })
            .collect();
        let actions = reconcile::reconcile(&desired, &unreadable, &actual);
        let ebpf = actions.iter().any(|a| a.backend() == Kind::Ebpf);
        let mut failed = BTreeSet::new();
        for action in actions {
            if let Err(()) = self.execute(&action, &failed) {
                failed.insert(action.id().to_owned());
            }
        }
        if ebpf {
            self.prune();
        }
        // A task whose new version failed to apply counts as failed, though its old one stays.
        let applied =
            desired.iter().filter(|d| self.records.contains_key(&d.spec.id) && !failed.contains(&d.spec.id)).count();
        let missing = desired.iter().filter(|d| !d.cgroup_exists).count();
        let overdue = self.track_waiting(&desired, &observations);
        let states = [
            ("applied", applied),
            ("failed", failed.len() + broken + overdue),
            ("invalid", unreadable.len() - broken),
            ("cgroup_missing", missing),
            ("waiting_for_proxy", self.waiting.len() - overdue),
        ];
        let waiting: Vec<metrics::TaskId> = self.waiting.keys().map(|id| self.task_id(id)).collect();
        self.metrics.waiting(&waiting);
        let managed = self
            .records
            .values()
            .map(|installed| metrics::Managed {
                installed: installed.clone(),
                config: desired.iter().find(|d| d.spec.id == installed.id).map(|d| d.spec.config.clone()),
            })
            .collect();
        self.metrics.reconciled(&states, managed);
        self.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    }

    /// Looks at the proxy of every task that waits for it ([`reconcile::awaits_proxy`]), all at
    /// once, and marks the LIVE ones; returns what was seen, by task id.
    fn observe_proxies(&self, desired: &mut [Desired]) -> BTreeMap<String, Observation> {
        let host = self.host.as_ref();
        let seen: Vec<(usize, Observation)> = thread::scope(|scope| {
            let looks: Vec<_> = desired
                .iter()
                .enumerate()
                .filter(|(_, d)| reconcile::awaits_proxy(d, self.records.contains_key(&d.spec.id)))
                .map(|(i, d)| (i, scope.spawn(move || host.proxy(&d.spec, PROXY_FETCH_TIMEOUT))))
                .collect();
            looks
                .into_iter()
                .map(|(i, look)| (i, look.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))))
                .collect()
        });
        let mut observations = BTreeMap::new();
        for (i, observation) in seen {
            desired[i].proxy_live = observation == Observation::State(ServerState::Live);
            observations.insert(desired[i].spec.id.clone(), observation);
        }
        observations
    }

    /// Keeps track of the tasks waiting for their proxy after a pass: logs a task that starts
    /// waiting and one that stopped because it was installed, and reports (once) one that has
    /// waited longer than `--proxy-timeout`. Returns how many have.
    fn track_waiting(&mut self, desired: &[Desired], observations: &BTreeMap<String, Observation>) -> usize {
        let now = Instant::now();
        let waiting = reconcile::waiting_for_proxy(desired, &self.records);
        let records = &self.records;
        self.waiting.retain(|id, w| {
            let still = waiting.contains(&id.as_str());
            if !still && records.contains_key(id) {
                info!(task = %id, waited = ?now.duration_since(w.since), "the proxy is LIVE: installed");
            }
            still
        });
        let timeout = self.options.proxy_timeout;
        for d in desired.iter().filter(|d| waiting.contains(&d.spec.id.as_str())) {
            let id = &d.spec.id;
            let url = &d.spec.proxy_admin_url;
            let last = observations.get(id).map(ToString::to_string).unwrap_or_default();
            let entry = self.waiting.entry(id.clone()).or_insert_with(|| {
                info!(task = %id, url = %url, last = %last, "waiting for the proxy to be LIVE before installing");
                Waiting { since: now, overdue: false }
            });
            if !entry.overdue && now.duration_since(entry.since) >= timeout {
                entry.overdue = true;
                self.metrics.proxy_timeouts.inc();
                error!(
                    task = %id, url = %url, last = %last, waited = ?timeout,
                    "the proxy is not LIVE after --proxy-timeout: nothing installed; still waiting"
                );
            }
        }
        self.waiting.values().filter(|w| w.overdue).count()
    }

    /// The tasks of every source: the specs that parsed (with whether their cgroup exists),
    /// and the ids of tasks to leave alone: unreadable ones, and (counted apart, the third
    /// value) ones whose cgroup path cannot be judged.
    fn read_tasks(&mut self) -> (Vec<Desired>, BTreeSet<String>, usize) {
        let mut specs = Vec::new();
        let mut unreadable = BTreeSet::new();
        // This pass's problem with each bad task, by task id.
        let mut problems = BTreeMap::new();
        if let Some(dir) = self.options.tasks_dir.clone() {
            self.read_files(&dir, &mut specs, &mut unreadable, &mut problems);
        }
        if self.docker.is_some() {
            self.read_docker(&mut specs, &mut unreadable, &mut problems);
        }
        let mut desired = Vec::new();
        let mut broken = 0;
        for spec in specs {
            // A rule backend's task from the engine may have no cgroup2 cgroup: it needs none.
            let cgroup = if spec.cgroup.is_empty() { Ok(true) } else { self.host.cgroup_exists(&spec.cgroup) };
            match cgroup {
                Ok(cgroup_exists) => {
                    let install_when = spec.install_when.unwrap_or(self.options.install_when);
                    desired.push(Desired { spec, cgroup_exists, install_when, proxy_live: false });
                }
                Err(e) => {
                    error!(task = %spec.id, cgroup = %spec.cgroup, error = %error_chain(&e), "task's cgroup");
                    unreadable.insert(spec.id);
                    broken += 1;
                }
            }
        }
        let specs: Vec<spec::TaskSpec> = desired.iter().map(|d| d.spec.clone()).collect();
        for (id, owner, place) in reconcile::conflicts(&specs, &self.records) {
            problems
                .insert(id.clone(), format!("the {place} is task {owner}'s: one installation cannot serve two tasks"));
            desired.retain(|d| d.spec.id != id);
            unreadable.insert(id);
        }
        // Each problem is reported once, until the task changes or is fixed.
        for (id, problem) in &problems {
            if self.reported.get(id) != Some(problem) {
                let (family, revision) = self.labels.get(id).cloned().unwrap_or_default();
                error!(task = %id, family = %family, revision = %revision, error = %problem, "task skipped");
                self.metrics.file_errors.inc();
            }
        }
        self.reported = problems;
        (desired, unreadable, broken)
    }

    /// The task files' specs; a file that cannot be read or parsed is a problem.
    fn read_files(
        &self,
        dir: &Path,
        specs: &mut Vec<spec::TaskSpec>,
        unreadable: &mut BTreeSet<String>,
        problems: &mut BTreeMap<String, String>,
    ) {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                // Nothing can be told about the files: act as if every task's file were there
                // but unreadable, so nothing is removed.
                error!(dir = %dir.display(), error = %e, "reading the tasks directory");
                unreadable.extend(self.records.values().filter(|r| r.source == Source::File).map(|r| r.id.clone()));
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(id) = spec::task_id_of(&path).map(str::to_owned) else { continue };
            match read_task_file(&path).and_then(|text| spec::parse(&path, &text).map_err(|e| e.to_string())) {
                Ok(spec) => specs.push(spec),
                Err(problem) => {
                    problems.insert(id.clone(), problem);
                    unreadable.insert(id);
                }
            }
        }
    }

    /// The engine's tasks' specs. A task known from a file too is a conflict, left alone; a
    /// task whose labels do not hold together is a problem. While the engine cannot be
    /// reached, every task installed from it is left as it is.
    fn read_docker(
        &mut self,
        specs: &mut Vec<spec::TaskSpec>,
        unreadable: &mut BTreeSet<String>,
        problems: &mut BTreeMap<String, String>,
    ) {
        let Some(source) = &self.docker else { return };
        let stats = source.take_stats();
        self.metrics.docker_reconnects.inc_by(stats.reconnects);
        for resync in stats.resyncs {
            self.metrics.docker_resync_duration.observe(resync.as_secs_f64());
        }
        let view = source.view();
        if !view.connected {
            unreadable.extend(self.records.values().filter(|r| r.source == Source::Docker).map(|r| r.id.clone()));
            return;
        }
        self.labels = view.tasks.values().map(|t| (t.id.clone(), (t.family.clone(), t.revision.clone()))).collect();
        let all: Vec<&docker::DockerTask> = view.tasks.values().collect();
        for task in view.tasks.values() {
            match docker::spec_of(task, &all, self.options.default_backend) {
                Ok(Some(spec)) if specs.iter().any(|s| s.id == spec.id) => {
                    specs.retain(|s| s.id != spec.id);
                    problems.insert(
                        spec.id.clone(),
                        format!(
                            "task {} is known from a task file and from the container engine: neither is installed \
                             until one of them goes",
                            spec.id
                        ),
                    );
                    unreadable.insert(spec.id);
                }
                Ok(Some(spec)) => specs.push(spec),
                Ok(None) => debug!(task = %task.id, family = %task.family, "no interception asked for"),
                Err(problem) => {
                    problems.insert(task.id.clone(), format!("task {} ({}): {problem}", task.id, task.arn));
                    unreadable.insert(task.id.clone());
                }
            }
        }
    }

    fn intact(&self, installed: &Installed) -> Option<bool> {
        match self.host.intact(installed) {
            Ok(intact) => Some(intact),
            Err(e) => {
                warn!(task = %installed.id, error = %e, "checking the task's installation");
                None
            }
        }
    }

    /// Runs one action and records it; `Err` when it failed (logged and counted). The removal
    /// that an apply replaces is skipped when that apply failed: the old interception stays.
    fn execute(&mut self, action: &Action, failed: &BTreeSet<String>) -> Result<(), ()> {
        match action {
            Action::Apply { spec, reason } => {
                let result = self.host.apply(spec);
                self.metrics.applied(result.is_ok());
                self.metrics.task_operation(&self.task_id(&spec.id), "install", result.is_ok());
                match result {
                    Ok(()) => {
                        info!(task = %spec.id, backend = %spec.backend, cgroup = %spec.cgroup, reason = ?reason, "applied");
                        let inode = spec.netns.as_deref().and_then(|p| self.host.netns_inode(p));
                        let cgroup_id = self.host.cgroup_id(spec);
                        self.records.insert(spec.id.clone(), Installed::of(spec, inode, cgroup_id));
                        self.save();
                        Ok(())
                    }
                    Err(e) => {
                        let e = error_chain(&e);
                        error!(task = %spec.id, backend = %spec.backend, reason = ?reason, error = %e, "apply failed");
                        Err(())
                    }
                }
            }
            Action::Remove { installed, reason } => {
                if *reason == RemoveReason::Replaced && failed.contains(&installed.id) {
                    return Ok(());
                }
                let inode = installed.netns.as_deref().and_then(|p| self.host.netns_inode(p));
                let result = self.host.remove(installed, &host::netns_for_removal(installed, inode));
                self.metrics.removed(result.is_ok());
                self.metrics.task_operation(&self.task_id(&installed.id), "remove", result.is_ok());
                match result {
                    Ok(()) => {
                        if *reason == RemoveReason::CgroupGone {
                            self.metrics.cgroup_gone.inc();
                            warn!(task = %installed.id, cgroup = %installed.cgroup, "the task's cgroup is gone: cleaned up");
                        } else {
                            info!(task = %installed.id, backend = %installed.backend, reason = ?reason, "removed");
                        }
                        // A replaced record was overwritten by the apply before it.
                        if *reason != RemoveReason::Replaced {
                            self.records.remove(&installed.id);
                            self.save();
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let e = error_chain(&e);
                        error!(task = %installed.id, backend = %installed.backend, reason = ?reason, error = %e, "remove failed");
                        Err(())
                    }
                }
            }
        }
    }

    /// How metrics and logs name a task.
    fn task_id(&self, id: &str) -> metrics::TaskId {
        let (family, revision) = self.labels.get(id).cloned().unwrap_or_default();
        metrics::TaskId { task: id.to_owned(), family, revision }
    }

    fn save(&self) {
        // The next successful save catches up; until then a restart re-applies (idempotent).
        if let Err(e) = state::save(&self.options.state_dir, &self.records) {
            error!(error = %error_chain(&e), "saving the state record");
        }
    }

    /// The pins of ended tasks, removed once after a pass's eBPF actions: the backend leaves
    /// it to the daemon ([`crate::backend::EbpfOptions::pruned_by_caller`]), as it walks
    /// every installation.
    fn prune(&self) {
        match self.host.prune() {
            Ok(pruned) if !pruned.is_empty() => info!(cgroup_ids = ?pruned, "removed the pins of ended tasks"),
            Ok(_) => {}
            Err(e) => error!(error = %error_chain(&e), "removing the pins of ended tasks"),
        }
    }

    /// `--remove-on-exit`: removes every task the daemon manages.
    fn remove_all(mut self) -> Result<(), Error> {
        let mut failed = 0;
        let ebpf = self.records.values().any(|installed| installed.backend == Kind::Ebpf);
        for installed in self.records.clone().into_values() {
            let action = Action::Remove { installed, reason: RemoveReason::Shutdown };
            if self.execute(&action, &BTreeSet::new()).is_err() {
                failed += 1;
            }
        }
        if ebpf {
            self.prune();
        }
        if failed > 0 {
            return Err(Error::RemoveOnExit { failed });
        }
        info!("every task's interception removed (--remove-on-exit)");
        Ok(())
    }
}

/// A task file's text; a file larger than any task file is refused unread.
fn read_task_file(path: &Path) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|e| format!("task file {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("task file {}: {e}", path.display()))?;
    if text.len() > MAX_INPUT_BYTES {
        return Err(format!("task file {}: larger than {MAX_INPUT_BYTES} bytes", path.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
