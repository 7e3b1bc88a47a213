//! The daemon's Docker source: the ECS tasks running on the host, found through the container
//! engine, as the ECS agent lays them out on an EC2 container instance.
//!
//! A thread of its own follows the engine with the Docker Engine API (bollard, over the unix
//! socket, on a current-thread tokio runtime): it lists the running containers that carry the
//! ECS task label, then follows the engine's container events, and lists everything again
//! every resync period and after the event stream breaks (reconnecting with backoff). It keeps
//! a [`View`] of the tasks, grouped by their task ARN, and wakes the daemon's loop whenever it
//! changes; the loop turns each task into a [`TaskSpec`] with [`spec_of`] (pure) and reconciles
//! them with the task files' tasks.
//!
//! While the engine cannot be reached the view says so ([`View::connected`]), and the loop
//! leaves every task it installed from the engine as it is: an engine restart never removes
//! interception.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use bollard::{ClientVersion, Docker};
use futures_util::StreamExt as _;
use tracing::{debug, info, warn};

use super::spec::{Source, TaskSpec};
use crate::backend::{Kind, Scope};
use crate::cgroup;
use crate::config::source::{from_env, parse_proxy_configuration};
use crate::config::{ProxyConfig, validate};
use crate::readiness::{self, InstallWhen};

/// The labels the ECS agent puts on every task container.
pub const TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
pub const CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
pub const FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
pub const REVISION: &str = "com.amazonaws.ecs.task-definition-version";
/// The container the ECS agent starts first to hold an `awsvpc` task's network namespace.
pub const PAUSE: &str = "~internal~ecs~pause";
/// intercept's own labels (a container definition's `dockerLabels`).
pub const PROXY_CONFIGURATION: &str = "intercept.proxy-configuration";
pub const BACKEND: &str = "intercept.backend";
pub const INSTALL_WHEN: &str = "intercept.install-when";
pub const PROXY_ADMIN_URL: &str = "intercept.proxy-admin-url";

/// Docker Engine 20.10's API version (the oldest engine ECS-optimized AMIs run): newer
/// engines answer it, and an older one would refuse a newer version.
const API_VERSION: ClientVersion = ClientVersion { major_version: 1, minor_version: 41 };
/// How long one request may take to answer (the event stream is not bounded by it).
const REQUEST_TIMEOUT_SECS: u64 = 30;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One container of a task, as inspected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Its name in the task definition (the ECS label), else its engine name.
    pub name: String,
    /// Its first process on the host (the engine runs containers in the host's pid namespace).
    pub pid: u32,
    pub labels: HashMap<String, String>,
    /// `NAME=value` items.
    pub env: Vec<String>,
    /// `none`, `bridge`, `host`, `container:<id or name>`, …
    pub network_mode: String,
    /// Its cgroup in the cgroup2 hierarchy (`/ecs/<task>/<id>`); `None` without one, or when
    /// the daemon cannot see it (it runs in a cgroup namespace of its own).
    pub cgroup: Option<String>,
    /// The cgroup the engine put it under (`--cgroup-parent`; the ECS agent gives
    /// `/ecs/<task id>`); empty when none was given.
    pub cgroup_parent: String,
}

/// One ECS task: its running containers, grouped by the task ARN label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerTask {
    pub arn: String,
    /// The ARN's last part: the task id, the task's id for the daemon too.
    pub id: String,
    pub family: String,
    pub revision: String,
    pub containers: Vec<Container>,
}

/// What the source knows of the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The engine answered the last listing and the event stream is followed. When it is not,
    /// `tasks` is what was seen last.
    pub connected: bool,
    pub tasks: BTreeMap<String, DockerTask>,
}

/// How the source is doing, for the daemon's metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub reconnects: u64,
    /// Each full listing's duration.
    pub resyncs: Vec<Duration>,
}

/// The task id of an ARN (`arn:aws:ecs:region:account:task/cluster/<id>`).
pub fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The tasks of `containers`, by task id.
pub fn group(containers: impl IntoIterator<Item = Container>) -> BTreeMap<String, DockerTask> {
    let mut tasks: BTreeMap<String, DockerTask> = BTreeMap::new();
    for container in containers {
        let Some(arn) = container.labels.get(TASK_ARN).cloned() else { continue };
        let id = task_id(&arn).to_owned();
        let label = |key: &str| container.labels.get(key).cloned().unwrap_or_default();
        let task = tasks.entry(id.clone()).or_insert_with(|| DockerTask {
            family: label(FAMILY),
            revision: label(REVISION),
            arn,
            id,
            containers: Vec::new(),
        });
        task.containers.push(container);
    }
    for task in tasks.values_mut() {
        task.containers.sort_by(|a, b| (a.name.as_str(), a.id.as_str()).cmp(&(b.name.as_str(), b.id.as_str())));
    }
    tasks
}

/// What the daemon installs for `task`: `Ok(None)` when nothing asks for interception (no
/// `intercept.proxy-configuration` label and no APPMESH_* environment); `Err` with every
/// problem, each naming the label or variable, when what asks for it does not hold together.
/// `others` are the engine's tasks (the task itself may be among them): the task's cgroup must
/// hold none of theirs.
pub fn spec_of(task: &DockerTask, others: &[&DockerTask], default_backend: Kind) -> Result<Option<TaskSpec>, String> {
    let mut problems = Vec::new();
    let Some(config) = config_of(task, &mut problems) else {
        return if problems.is_empty() { Ok(None) } else { Err(problems.join("; ")) };
    };
    let backend = match single_label(task, BACKEND, &mut problems) {
        None => Some(default_backend),
        Some(name) => Kind::from_name(&name).or_else(|| {
            problems.push(format!("label {BACKEND} = {name:?}: must be one of ebpf, iptables, nftables"));
            None
        }),
    };
    let install_when = single_label(task, INSTALL_WHEN, &mut problems).and_then(|name| match name.as_str() {
        "proxy-live" => Some(InstallWhen::ProxyLive),
        "immediately" => Some(InstallWhen::Immediately),
        _ => {
            problems.push(format!("label {INSTALL_WHEN} = {name:?}: must be \"proxy-live\" or \"immediately\""));
            None
        }
    });
    let proxy_admin_url = match single_label(task, PROXY_ADMIN_URL, &mut problems) {
        None => readiness::DEFAULT_ADMIN_URL.to_owned(),
        Some(url) => {
            if let Err(e) = readiness::check_url(&url) {
                problems.push(format!("label {PROXY_ADMIN_URL} = {url:?}: {e}"));
            }
            url
        }
    };
    let netns = netns_of(task, &mut problems);
    let cgroup = cgroup_of(task, others);
    if let (Err(why), Some(backend)) = (&cgroup, backend)
        && backend.scope() == Scope::Cgroup
    {
        problems.push(format!("{why}: the {} backend needs the task's own cgroup", backend.label()));
    }
    match (backend, netns) {
        (Some(backend), Some(netns)) if problems.is_empty() => Ok(Some(TaskSpec {
            id: task.id.clone(),
            cgroup: cgroup.unwrap_or_default(),
            netns: Some(netns),
            backend,
            config,
            install_when,
            proxy_admin_url,
            source: Source::Docker,
        })),
        _ => Err(problems.join("; ")),
    }
}

/// The label `key` as all of the task's containers that have it agree on it.
fn single_label(task: &DockerTask, key: &str, problems: &mut Vec<String>) -> Option<String> {
    let mut values: Vec<(&str, &str)> =
        task.containers.iter().filter_map(|c| c.labels.get(key).map(|v| (c.name.as_str(), v.as_str()))).collect();
    values.dedup_by(|a, b| a.1 == b.1);
    match values.as_slice() {
        [] => None,
        [(_, value)] => Some((*value).to_owned()),
        [(a, _), (b, _), ..] => {
            problems.push(format!("label {key} differs between containers {a} and {b}: give it once"));
            None
        }
    }
}

/// The configuration: the `intercept.proxy-configuration` label (the `proxyConfiguration`
/// JSON as registered), else the APPMESH_* environment of the container that has it (the
/// proxy's, as the EKS init container reads it).
fn config_of(task: &DockerTask, problems: &mut Vec<String>) -> Option<ProxyConfig> {
    let (origin, input) = match single_label(task, PROXY_CONFIGURATION, problems) {
        Some(json) => (format!("label {PROXY_CONFIGURATION}"), parse_proxy_configuration(&json, PROXY_CONFIGURATION)),
        None => {
            if !problems.is_empty() {
                return None;
            }
            let container = task.containers.iter().find(|c| c.env.iter().any(|e| e.starts_with("APPMESH_")))?;
            let env = |name: &str| {
                container.env.iter().find_map(|e| e.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
            };
            let raw = from_env(env);
            (
                format!("the APPMESH_* environment of container {}", container.name),
                Ok(crate::config::source::Input { raw, task_definition: None }),
            )
        }
    };
    match input.and_then(|input| validate(&input.raw)) {
        Ok(validated) => Some(validated.config),
        Err(errors) => {
            let messages: Vec<String> = errors.errors().map(ToString::to_string).collect();
            problems.push(format!("{origin}: {}", messages.join("; ")));
            None
        }
    }
}

/// The task's network namespace: the pause container's (`awsvpc`), else the one every
/// container shares. Host networking is refused: the rules would go into the host's.
fn netns_of(task: &DockerTask, problems: &mut Vec<String>) -> Option<PathBuf> {
    let netns = |c: &Container| PathBuf::from(format!("/proc/{}/ns/net", c.pid));
    if let Some(pause) = task.containers.iter().find(|c| c.name == PAUSE) {
        return Some(netns(pause));
    }
    if let Some(host) = task.containers.iter().find(|c| c.network_mode == "host") {
        problems.push(format!(
            "container {} uses the host's network (network mode host): intercept works on a task with a network \
             namespace of its own (awsvpc)",
            host.name
        ));
        return None;
    }
    let holders: Vec<&Container> =
        task.containers.iter().filter(|c| !c.network_mode.starts_with("container:")).collect();
    match holders.as_slice() {
        [one] => Some(netns(one)),
        _ => {
            problems.push(format!(
                "the task's containers have {} network namespaces of their own (bridge mode): intercept works on a \
                 task with one (awsvpc)",
                holders.len()
            ));
            None
        }
    }
}

/// The task's cgroup, from the hierarchy's root: the parent its containers' cgroups share
/// (`/ecs/<task>` for `/ecs/<task>/<id>`, `/ecstasks.slice/ecstasks-<task>.slice` for a
/// container scope in it), else the cgroup parent the engine was given when they all share one
/// (a slice name is where Docker's systemd driver puts it, [`cgroup::slice_path`]). A cgroup
/// that is not one task's is refused, saying why: one shared by name, or one holding a
/// container of any of `others`.
fn cgroup_of(task: &DockerTask, others: &[&DockerTask]) -> Result<String, String> {
    let own: Option<Vec<PathBuf>> =
        task.containers.iter().map(|c| Some(Path::new(c.cgroup.as_deref()?).parent()?.to_owned())).collect();
    let parents = match own {
        Some(parents) => parents,
        None => task
            .containers
            .iter()
            .map(|c| match c.cgroup_parent.as_str() {
                absolute if absolute.starts_with('/') => Some(PathBuf::from(absolute)),
                slice => cgroup::slice_path(slice),
            })
            .collect::<Option<_>>()
            .ok_or("the cgroups of the task's containers are not known, nor a cgroup parent of each")?,
    };
    let first = parents.first().ok_or("the task has no container")?;
    if parents.iter().any(|p| p != first) {
        return Err("the task's containers are not all in one cgroup of the cgroup2 hierarchy".to_owned());
    }
    let refuse = |why: String| Err(cgroup::Error::NotOneTask { cgroup: first.clone(), why }.to_string());
    if let Some(why) = cgroup::shared_by_name(first) {
        return refuse(why);
    }
    let below = |c: &Container| c.cgroup.as_deref().is_some_and(|cg| Path::new(cg).starts_with(first));
    if let Some(other) = others.iter().find(|o| o.id != task.id && o.containers.iter().any(below)) {
        return refuse(format!("it holds a container of task {} too", other.id));
    }
    first.to_str().map(str::to_owned).ok_or_else(|| format!("the cgroup {} is not UTF-8", first.display()))
}

/// The source's thread and what it has seen.
pub struct Watcher {
    view: Arc<Mutex<View>>,
    stats: Arc<Mutex<Stats>>,
}

impl Watcher {
    /// Starts following the engine at `socket`; `wake` is called whenever the view changes.
    pub fn start(socket: PathBuf, resync: Duration, wake: impl Fn() + Send + 'static) -> std::io::Result<Watcher> {
        let view = Arc::new(Mutex::new(View::default()));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (shared, counted) = (Arc::clone(&view), Arc::clone(&stats));
        thread::Builder::new().name("docker".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "the Docker source cannot start its runtime");
                    return;
                }
            };
            runtime.block_on(follow(socket, resync, shared, counted, wake));
        })?;
        Ok(Watcher { view, stats })
    }
}

/// Where the daemon's tasks from the engine come from: the [`Watcher`], or a view a unit test
/// sets.
pub trait TaskSource: Send {
    /// What the source knows of the engine now.
    fn view(&self) -> View;

    /// The reconnects and listing durations since the last call.
    fn take_stats(&self) -> Stats;
}

impl TaskSource for Watcher {
    fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn take_stats(&self) -> Stats {
        std::mem::take(&mut *self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Follows the engine for ever: connect, list, follow events; after any failure, say so,
/// back off and start again.
async fn follow(socket: PathBuf, resync: Duration, view: Arc<Mutex<View>>, stats: Arc<Mutex<Stats>>, wake: impl Fn()) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        let started = Instant::now();
        let result = session(&socket, resync, &view, &stats, &wake).await;
        let was_connected = {
            let mut view = view.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut view.connected, false)
        };
        if was_connected {
            wake();
        }
        if let Err(e) = result {
            if first || was_connected {
                warn!(socket = %socket.display(), error = %e, "the Docker engine: retrying with backoff");
            } else {
                debug!(socket = %socket.display(), error = %e, "the Docker engine: still unreachable");
            }
        }
        first = false;
        // A session that ran a while was a connection: the next one starts quickly again.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        stats.lock().unwrap_or_else(|e| e.into_inner()).reconnects += 1;
    }
}

/// One connection: the event stream opened first (so nothing that happens during the listing
/// is missed), a full listing, then each event, and a full listing again every `resync`.
async fn session(
    socket: &Path,
    resync: Duration,
    view: &Mutex<View>,
    stats: &Mutex<Stats>,
    wake: &impl Fn(),
) -> Result<(), DockerError> {
    let docker = Docker::connect_with_unix(&socket.to_string_lossy(), REQUEST_TIMEOUT_SECS, &API_VERSION)?;
    docker.ping().await?;
    let filters = HashMap::from([("type", vec!["container"]), ("label", vec![TASK_ARN])]);
    let mut events = Box::pin(docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build())));
    let mut containers = list(&docker, stats).await?;
    publish(view, &containers, wake);
    info!(socket = %socket.display(), tasks = view.lock().unwrap_or_else(|e| e.into_inner()).tasks.len(), "following the Docker engine");
    let mut tick = tokio::time::interval(resync);
    tick.tick().await;
    loop {
        tokio::select! {
            event = events.next() => {
                let event = match event {
                    Some(event) => event?,
                    None => return Err(DockerError::IOError { err: std::io::Error::other("the event stream ended") }),
                };
                let Some(id) = event.actor.and_then(|a| a.id) else { continue };
                let action = event.action.unwrap_or_default();
                match action.split(':').next().unwrap_or_default() {
                    "start" | "restart" | "unpause" => match inspect(&docker, &id).await? {
                        Some(container) => { containers.insert(id, container); }
                        None => { containers.remove(&id); }
                    },
                    "die" | "stop" | "kill" | "destroy" | "pause" => {
                        if containers.remove(&id).is_none() {
                            continue;
                        }
                    }
                    _ => continue,
                }
                publish(view, &containers, wake);
            }
            _ = tick.tick() => {
                containers = list(&docker, stats).await?;
                publish(view, &containers, wake);
            }
        }
    }
}

/// The view of a connected session: `containers`, grouped into tasks.
fn publish(view: &Mutex<View>, containers: &HashMap<String, Container>, wake: &impl Fn()) {
    let next = View { connected: true, tasks: group(containers.values().cloned()) };
    let changed = {
        let mut view = view.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *view != next;
        *view = next;
        changed
    };
    if changed {
        wake();
    }
}

/// Every running container with the task label, inspected.
async fn list(docker: &Docker, stats: &Mutex<Stats>) -> Result<HashMap<String, Container>, DockerError> {
    let started = Instant::now();
    let filters = HashMap::from([("label", vec![TASK_ARN]), ("status", vec!["running"])]);
    let summaries = docker.list_containers(Some(ListContainersOptionsBuilder::new().filters(&filters).build())).await?;
    let mut containers = HashMap::new();
    for id in summaries.into_iter().filter_map(|s| s.id) {
        // One that ended between the listing and the inspection is left out.
        if let Some(container) = inspect(docker, &id).await? {
            containers.insert(id, container);
        }
    }
    stats.lock().unwrap_or_else(|e| e.into_inner()).resyncs.push(started.elapsed());
    Ok(containers)
}

/// The running container `id`; `None` when it is gone or not running any more.
async fn inspect(docker: &Docker, id: &str) -> Result<Option<Container>, DockerError> {
    let info = match docker.inspect_container(id, None).await {
        Ok(info) => info,
        Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let state = info.state.unwrap_or_default();
    let pid = state.pid.and_then(|p| u32::try_from(p).ok()).filter(|&p| p != 0);
    let (Some(pid), Some(true)) = (pid, state.running) else { return Ok(None) };
    let config = info.config.unwrap_or_default();
    let labels = config.labels.unwrap_or_default();
    let engine_name = info.name.unwrap_or_default().trim_start_matches('/').to_owned();
    Ok(Some(Container {
        id: id.to_owned(),
        name: labels.get(CONTAINER_NAME).cloned().unwrap_or(engine_name),
        pid,
        env: config.env.unwrap_or_default(),
        network_mode: info.host_config.as_ref().and_then(|h| h.network_mode.clone()).unwrap_or_default(),
        cgroup: cgroup_of_process(pid),
        cgroup_parent: info.host_config.as_ref().and_then(|h| h.cgroup_parent.clone()).unwrap_or_default(),
        labels,
    }))
}

/// A process's cgroup in the cgroup2 hierarchy, from `/proc/<pid>/cgroup`: a path from the
/// hierarchy's root, also when the daemon runs in a private cgroup namespace (an ECS daemon
/// service on cgroup v2), where it reads paths relative to its own namespace's root.
fn cgroup_of_process(pid: u32) -> Option<String> {
    /// The daemon's own namespace root, looked up once: it never changes.
    static NAMESPACE_ROOT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroup::unified_path(&text)?;
    let root = if path.starts_with("/..") {
        NAMESPACE_ROOT
            .get_or_init(|| {
                cgroup::namespace_root()
                    .inspect_err(
                        |e| warn!(error = %e, "the daemon's cgroup namespace: task cgroups seen from it are unknown"),
                    )
                    .ok()
                    .flatten()
            })
            .as_deref()
    } else {
        None
    };
    let path = cgroup::host_path(path, root)?;
    (path != Path::new("/")).then(|| path.to_str().map(str::to_owned)).flatten()
}

#[cfg(test)]
mod tests;
