//! Prometheus metrics and `/healthz` on `--metrics-addr`, served by a small blocking HTTP
//! server on its own thread (no async runtime: the daemon's memory budget is small).
//!
//! The eBPF tasks' decision counters are read from their pinned maps at scrape time, so a
//! scrape sees what the programs counted up to that moment.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::host::HostOps;
use super::reconcile::Installed;
use crate::config::ProxyConfig;

type Labels = [(&'static str, &'static str); 1];
type TaskLabels = Vec<(String, String)>;

/// A task as its metrics name it: its id, and for a task from the engine its task
/// definition's family and revision (empty for a task file's).
#[derive(Debug, Clone, Default)]
pub struct TaskId {
    pub task: String,
    pub family: String,
    pub revision: String,
}

impl TaskId {
    fn labels(&self) -> TaskLabels {
        vec![
            ("task".to_owned(), self.task.clone()),
            ("family".to_owned(), self.family.clone()),
            ("revision".to_owned(), self.revision.clone()),
        ]
    }
}

/// A task the daemon installed, and its configuration when its task file says it (the rule
/// backends' counters are read through it).
#[derive(Debug, Clone)]
pub struct Managed {
    pub installed: Installed,
    pub config: Option<ProxyConfig>,
}

/// The daemon's own metrics; the clones registered share their values with these.
#[derive(Debug, Clone)]
pub struct Metrics {
    apply: Family<Labels, Counter>,
    remove: Family<Labels, Counter>,
    pub file_errors: Counter,
    pub cgroup_gone: Counter,
    pub proxy_timeouts: Counter,
    pub reconcile_duration: Histogram,
    tasks: Family<Labels, Gauge>,
    /// Per task: installs and removals by result, and waiting for the proxy.
    task_operations: Family<TaskLabels, Counter>,
    task_waiting: Family<TaskLabels, Gauge>,
    /// The Docker source: reconnects to the engine, and each full listing's duration.
    pub docker_reconnects: Counter,
    pub docker_resync_duration: Histogram,
    /// What the daemon manages, for the scrape-time counters.
    managed: Arc<Mutex<Vec<Managed>>>,
    /// A reconcile pass has completed: `/healthz` answers 200.
    reconciled: Arc<AtomicBool>,
}

impl Metrics {
    /// The metrics, and the registry that encodes them (with `host`'s task counters).
    pub fn new(host: Arc<dyn HostOps>) -> (Metrics, Registry) {
        let metrics = Metrics {
            apply: Family::default(),
            remove: Family::default(),
            file_errors: Counter::default(),
            cgroup_gone: Counter::default(),
            proxy_timeouts: Counter::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 4.0, 8)),
            tasks: Family::default(),
            task_operations: Family::default(),
            task_waiting: Family::default(),
            docker_reconnects: Counter::default(),
            docker_resync_duration: Histogram::new(exponential_buckets(0.001, 4.0, 8)),
            managed: Arc::default(),
            reconciled: Arc::default(),
        };
        let mut registry = Registry::default();
        registry.register("intercept_apply", "Task applies by result (ok, error)", metrics.apply.clone());
        registry.register("intercept_remove", "Task removals by result (ok, error)", metrics.remove.clone());
        registry.register(
            "intercept_task_file_errors",
            "Task files that could not be parsed or validated (each version of a file counts once)",
            metrics.file_errors.clone(),
        );
        registry.register(
            "intercept_cgroup_gone",
            "Tasks cleaned up because their cgroup disappeared",
            metrics.cgroup_gone.clone(),
        );
        registry.register(
            "intercept_proxy_timeouts",
            "Tasks that waited for their proxy to be LIVE longer than --proxy-timeout (each wait counts once)",
            metrics.proxy_timeouts.clone(),
        );
        registry.register(
            "intercept_reconcile_duration_seconds",
            "Duration of reconcile passes",
            metrics.reconcile_duration.clone(),
        );
        registry.register("intercept_tasks", "Tasks by state, as of the last reconcile pass", metrics.tasks.clone());
        registry.register(
            "intercept_task_operations",
            "Per task (its id, and for a task from the engine its family and revision): installs and removals by \
             result",
            metrics.task_operations.clone(),
        );
        registry.register(
            "intercept_task_waiting_for_proxy",
            "Per task: 1 while it waits for its proxy to be LIVE before it is installed",
            metrics.task_waiting.clone(),
        );
        registry.register(
            "intercept_docker_reconnects",
            "Reconnects to the container engine after it could not be reached or its event stream broke",
            metrics.docker_reconnects.clone(),
        );
        registry.register(
            "intercept_docker_resync_duration_seconds",
            "Duration of the Docker source's full listings of the engine's task containers",
            metrics.docker_resync_duration.clone(),
        );
        registry.register_collector(Box::new(TaskCounters { host, managed: metrics.managed.clone() }));
        (metrics, registry)
    }

    pub fn applied(&self, ok: bool) {
        self.apply.get_or_create(&[("result", result(ok))]).inc();
    }

    pub fn removed(&self, ok: bool) {
        self.remove.get_or_create(&[("result", result(ok))]).inc();
    }

    /// One install or removal of one task.
    pub fn task_operation(&self, task: &TaskId, operation: &'static str, ok: bool) {
        let mut labels = task.labels();
        labels.extend([("operation".to_owned(), operation.to_owned()), ("result".to_owned(), result(ok).to_owned())]);
        self.task_operations.get_or_create(&labels).inc();
    }

    /// The tasks waiting for their proxy now.
    pub fn waiting(&self, tasks: &[TaskId]) {
        self.task_waiting.clear();
        for task in tasks {
            self.task_waiting.get_or_create(&task.labels()).set(1);
        }
    }

    /// Publishes the outcome of a reconcile pass: task counts by state, what is managed.
    pub fn reconciled(&self, states: &[(&'static str, usize)], managed: Vec<Managed>) {
        for (state, count) in states {
            self.tasks.get_or_create(&[("state", state)]).set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        *self.managed.lock().unwrap_or_else(|e| e.into_inner()) = managed;
        self.reconciled.store(true, Ordering::Relaxed);
    }

    /// Serves `/metrics` and `/healthz` on `addr` from a thread; returns the address bound
    /// (port 0 picks a free one).
    pub fn serve(&self, registry: Registry, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
        let server = tiny_http::Server::http(addr).map_err(|source| ServeError { addr, source })?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let reconciled = self.reconciled.clone();
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let response = match request.url() {
                        "/metrics" => {
                            let mut body = String::new();
                            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                                Ok(()) => tiny_http::Response::from_string(body).with_header(content_type(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )),
                                Err(_) => tiny_http::Response::from_string("encoding failed\n").with_status_code(500),
                            }
                        }
                        "/healthz" if reconciled.load(Ordering::Relaxed) => tiny_http::Response::from_string("ok\n"),
                        "/healthz" => tiny_http::Response::from_string("no reconcile pass has completed yet\n")
                            .with_status_code(503),
                        _ => tiny_http::Response::from_string("not found: try /metrics or /healthz\n")
                            .with_status_code(404),
                    };
                    if let Err(e) = request.respond(response) {
                        tracing::debug!(error = %e, "metrics: responding");
                    }
                }
            })
            .map_err(|e| ServeError { addr, source: Box::new(e) })?;
        Ok(bound)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("serving metrics on {addr}")]
pub struct ServeError {
    addr: SocketAddr,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

fn content_type(value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(&b"Content-Type"[..], value.as_bytes()).expect("a valid header")
}

/// `intercept_task_connections_total{task,decision}`: the eBPF programs' counters of each eBPF
/// task, read at scrape time.
#[derive(Debug)]
struct TaskCounters {
    host: Arc<dyn HostOps>,
    managed: Arc<Mutex<Vec<Managed>>>,
}

impl Collector for TaskCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let managed = self.managed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut samples = Vec::new();
        for task in &managed {
            let id = &task.installed.id;
            match self.host.counters(&task.installed, task.config.as_ref()) {
                Ok(Some(counters)) => samples.push((id.clone(), counters)),
                Ok(None) => {}
                // Being removed, or its cgroup just went: the next pass says so.
                Err(e) => tracing::debug!(task = %id, error = %e, "metrics: reading the task's counters"),
            }
        }
        if samples.is_empty() {
            return Ok(());
        }
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "intercept_task_connections",
            "Connections seen by a task's interception, by decision",
            None,
            counter.metric_type(),
        )?;
        for (task, counters) in &samples {
            for (decision, value) in counters {
                let labels = [("task", task.as_str()), ("decision", decision.name())];
                ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
