//! Fixtures for `intercept daemon`: the daemon as a child process with its own tasks and
//! state directories and a free metrics port, task files, and the metrics endpoint scraped and
//! parsed.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// A running `intercept daemon`, ended (SIGKILL, by pid) on drop if still running.
pub struct Daemon {
    child: Child,
    pub metrics_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// The directories a daemon works on, kept across restarts.
pub struct DaemonDirs {
    dir: tempfile::TempDir,
}

impl DaemonDirs {
    pub fn new() -> DaemonDirs {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        fs::create_dir(dir.path().join("tasks")).expect("create the tasks directory");
        DaemonDirs { dir }
    }

    pub fn tasks(&self) -> PathBuf {
        self.dir.path().join("tasks")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes a task file the way a careful writer does: a temporary file renamed into place.
    pub fn write_task(&self, id: &str, json: &str) {
        let tmp = self.tasks().join(format!(".{id}.json.tmp"));
        fs::write(&tmp, json).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, self.tasks().join(format!("{id}.json"))).expect("rename the task file into place");
    }

    /// Overwrites a task file in place (a careless writer).
    pub fn overwrite_task(&self, id: &str, text: &str) {
        let path = self.tasks().join(format!("{id}.json"));
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn delete_task(&self, id: &str) {
        let path = self.tasks().join(format!("{id}.json"));
        fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    /// The task ids in the daemon's state record.
    pub fn recorded(&self) -> Vec<String> {
        let Ok(text) = fs::read_to_string(self.state().join("state.json")) else { return Vec::new() };
        let json: serde_json::Value = serde_json::from_str(&text).expect("the state record is JSON");
        json["tasks"].as_array().expect("tasks").iter().map(|t| t["id"].as_str().expect("id").to_owned()).collect()
    }
}

impl Default for DaemonDirs {
    fn default() -> Self {
        Self::new()
    }
}

/// A task file's JSON: the seed guide's task definition with `proxy` as its
/// proxyConfiguration.
pub fn task_json(id: &str, backend: &str, cgroup: &Path, netns: &Path, proxy: &serde_json::Value) -> String {
    serde_json::json!({
        "id": id,
        "cgroup": cgroup,
        "netns": netns,
        "backend": backend,
        "taskDefinition": {"family": id, "proxyConfiguration": proxy},
    })
    .to_string()
}

/// The seed guide's proxyConfiguration (`examples/ec2-taskB.json`), with `EgressIgnoredPorts`
/// set to `ignored_ports`.
pub fn seed_proxy_configuration(ignored_ports: &str) -> serde_json::Value {
    let path = crate::seed_task_definition();
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&text).expect("the seed is JSON");
    let mut proxy = doc["proxyConfiguration"].clone();
    for property in proxy["properties"].as_array_mut().expect("properties") {
        if property["name"] == "EgressIgnoredPorts" {
            property["value"] = ignored_ports.into();
        }
    }
    proxy
}

/// A port on 127.0.0.1 free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

impl Daemon {
    /// Starts `bin daemon` on `dirs` and `bpffs` with `extra` flags, and waits until its
    /// metrics endpoint answers.
    pub fn start(bin: &Path, dirs: &DaemonDirs, bpffs: &Path, extra: &[&str]) -> Daemon {
        Daemon::start_with(bin, dirs, bpffs, extra, |_| {})
    }

    /// `bin daemon` on `dirs` and `bpffs` with metrics on `metrics_addr` and `extra` flags; its
    /// standard error piped, for the log.
    pub fn command(bin: &Path, dirs: &DaemonDirs, bpffs: &Path, metrics_addr: SocketAddr, extra: &[&str]) -> Command {
        let mut command = Command::new(bin);
        command
            .arg("daemon")
            .arg("--tasks-dir")
            .arg(dirs.tasks())
            .arg("--state-dir")
            .arg(dirs.state())
            .arg("--bpffs")
            .arg(bpffs)
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// [`Daemon::start`], with `prepare` adding to the command first (e.g. pre-exec steps).
    pub fn start_with(
        bin: &Path,
        dirs: &DaemonDirs,
        bpffs: &Path,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command),
    ) -> Daemon {
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Daemon::command(bin, dirs, bpffs, metrics_addr, extra);
        prepare(&mut command);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut daemon = Daemon { child, metrics_addr, log };
        daemon.wait_until("the metrics endpoint answers", Duration::from_secs(10), |d| d.get("/healthz").is_some());
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// `GET path`: the status code and body, `None` when the endpoint does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.metrics_addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        // HTTP/1.0: the body comes whole, not chunked.
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics_addr).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }

    /// `/metrics`, parsed (see [`parse_metrics`]).
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics").expect("/metrics answers");
        assert_eq!(status, 200, "/metrics: {body}");
        parse_metrics(&body).unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics text: {e}\n{body}"))
    }

    /// One sample of `/metrics` (`name{labels}` as exposed), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics().get(sample).copied().unwrap_or(0.0)
    }

    /// Polls `done` every 50 ms until it holds; fails the test (with the daemon's log) after
    /// `timeout`.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&Daemon) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the daemon exited ({status}) while waiting until {what}; its log:\n{}", self.log().join("\n"));
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what}; the daemon's log:\n{}",
                    self.log().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits (at most 30 s) for the daemon to exit.
    pub fn stop(mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, signal).expect("signal the daemon");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit after {signal}; log:\n{}",
                self.log().join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses the OpenMetrics text exposition into `name{labels}` → value; every line must be a
/// comment (`# HELP`, `# TYPE`, `# UNIT`) or a sample, and the text must end with `# EOF`.
pub fn parse_metrics(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut samples = BTreeMap::new();
    let mut lines = text.lines().peekable();
    let mut eof = false;
    while let Some(line) = lines.next() {
        if line == "# EOF" {
            eof = lines.peek().is_none();
            if !eof {
                return Err("lines after # EOF".into());
            }
            break;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or("");
            if !["HELP", "TYPE", "UNIT"].contains(&kind) {
                return Err(format!("unknown comment line {line:?}"));
            }
            continue;
        }
        let (name, value) = line.rsplit_once(' ').ok_or_else(|| format!("not a sample: {line:?}"))?;
        let value: f64 = value.parse().map_err(|_| format!("not a number in {line:?}"))?;
        let metric = name.split('{').next().unwrap_or("");
        if metric.is_empty() || !metric.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return Err(format!("bad metric name in {line:?}"));
        }
        if name.contains('{') && !name.ends_with('}') {
            return Err(format!("bad label set in {line:?}"));
        }
        samples.insert(name.to_owned(), value);
    }
    if !eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}
