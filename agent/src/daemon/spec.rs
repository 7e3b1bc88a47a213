//! Task files: one JSON file per task in the daemon's tasks directory, parsed into a validated
//! [`TaskSpec`]. Pure: the caller reads the file.
//!
//! ```json
//! {"id": "task1", "cgroup": "/ecs/task1", "netns": "/run/netns/task1", "backend": "ebpf",
//!  "taskDefinition": {...}}
//! ```
//! with `proxyConfiguration` instead of `taskDefinition` for a bare proxy configuration, and
//! optionally `installWhen` (`proxy-live`, `immediately`) and `proxyAdminUrl`. The
//! file is named `<id>.json`, so that a file and a task are one and the same thing: a file
//! deleted is a task gone, whatever the file held.

use std::fmt;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::backend::{Kind, Scope};
use crate::config::source::{parse_proxy_configuration, parse_task_definition};
use crate::config::{ConfigErrors, Diagnostic, ProxyConfig, validate};
use crate::readiness::{self, InstallWhen};

/// Task ids name files, state entries and metric labels: letters, digits, `_`, `-`, `.`,
/// not starting with `.`, at most this long.
pub const MAX_ID_LEN: usize = 128;

/// The extension of a task file; anything else in the directory (editor temp files, notes) is
/// not a task.
pub const EXTENSION: &str = "json";

/// One task as its file asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub id: String,
    /// The task's cgroup, as the backends' `--cgroup` takes it: a path under the cgroup2
    /// mount or relative to it.
    pub cgroup: String,
    /// The task's network namespace; `None`: the daemon's own (host networking).
    pub netns: Option<PathBuf>,
    pub backend: Kind,
    pub config: ProxyConfig,
    /// When to install; `None`: the daemon's `--install-when`.
    pub install_when: Option<InstallWhen>,
    /// The proxy admin polled before a `proxy-live` install, from inside [`Self::netns`].
    pub proxy_admin_url: String,
    /// Where the task is known from.
    pub source: Source,
}

/// Where the daemon learnt of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A task file in the tasks directory.
    #[default]
    File,
    /// The container engine (`--docker-socket`).
    Docker,
}

impl TaskSpec {
    /// Identifies what is installed for this spec: equal fingerprints, nothing to change.
    /// Stable for one build of the daemon (a new build may re-apply once, which is idempotent).
    /// When to install is not part of it: it changes nothing once installed.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.backend.name().hash(&mut hasher);
        self.cgroup.hash(&mut hasher);
        self.netns.hash(&mut hasher);
        serde_json::to_string(&self.config).expect("a ProxyConfig serializes").hash(&mut hasher);
        hasher.finish()
    }
}

/// A task file that cannot be applied: every problem found, each naming the field and the
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub file: PathBuf,
    pub problems: Vec<Diagnostic>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task file {}: ", self.file.display())?;
        let problems: Vec<String> = self.problems.iter().map(ToString::to_string).collect();
        f.write_str(&problems.join("; "))
    }
}

/// The task id a file in the tasks directory stands for, or `None` when the file is not a task
/// file (wrong extension, hidden, editor temp file).
pub fn task_id_of(path: &Path) -> Option<&str> {
    if path.extension()?.to_str()? != EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.starts_with('.')).then_some(stem)
}

/// Whether `id` is a safe task id (see [`MAX_ID_LEN`]).
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Parses and validates the task file `file` whose contents are `text`.
pub fn parse(file: &Path, text: &str) -> Result<TaskSpec, SpecError> {
    let error = |problems: Vec<Diagnostic>| SpecError { file: file.to_owned(), problems };
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| error(vec![Diagnostic::error("(file)", None, format!("not valid JSON: {e}"))]))?;
    let Value::Object(top) = doc else {
        return Err(error(vec![Diagnostic::error("(file)", None, "must be a JSON object")]));
    };
    let mut problems = Vec::new();
    for key in top.keys() {
        if !KEYS.contains(&key.as_str()) {
            problems.push(Diagnostic::error(key, None, format!("unknown field; the fields are {}", KEYS.join(", "))));
        }
    }
    let id = string_field(&top, "id", &mut problems);
    if let Some(id) = &id {
        if !is_safe_id(id) {
            problems.push(Diagnostic::error(
                "id",
                Some(id),
                format!(
                    "not a safe task id: 1 to {MAX_ID_LEN} letters, digits, '_', '-' or '.', not starting with '.'"
                ),
            ));
        } else if task_id_of(file) != Some(id.as_str()) {
            problems.push(Diagnostic::error(
                "id",
                Some(id),
                format!("the file must be named {id}.{EXTENSION}, so that deleting the file removes this task"),
            ));
        }
    }
    let cgroup = string_field(&top, "cgroup", &mut problems);
    if let Some(cgroup) = &cgroup
        && (cgroup.is_empty() || cgroup == "auto" || cgroup.trim_matches('/').is_empty())
    {
        problems.push(Diagnostic::error(
            "cgroup",
            Some(cgroup),
            "must name the task's own cgroup (a path under the cgroup2 mount), not the root or `auto`",
        ));
    }
    let netns = match top.get("netns") {
        None | Some(Value::Null) => None,
        Some(Value::String(path)) if path.starts_with('/') => Some(PathBuf::from(path)),
        Some(other) => {
            problems.push(Diagnostic::error(
                "netns",
                Some(&other.to_string()),
                "must be an absolute path to a network namespace (/run/netns/NAME, /proc/PID/ns/net)",
            ));
            None
        }
    };
    let backend = string_field(&top, "backend", &mut problems).and_then(|name| {
        let backend = Kind::from_name(&name);
        if backend.is_none() {
            problems.push(Diagnostic::error("backend", Some(&name), "must be one of ebpf, iptables, nftables"));
        }
        backend
    });
    if backend.is_some_and(|b| b.scope() == Scope::Netns) && netns.is_none() && !top.contains_key("netns") {
        // Without it the rules would go into the daemon's own namespace: the host's.
        problems.push(Diagnostic::error(
            "netns",
            None,
            "missing: the iptables and nftables backends install rules in the task's network namespace",
        ));
    }
    let install_when = match top.get("installWhen") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name == "proxy-live" => Some(InstallWhen::ProxyLive),
        Some(Value::String(name)) if name == "immediately" => Some(InstallWhen::Immediately),
        Some(other) => {
            let value = other.as_str().map_or_else(|| other.to_string(), str::to_owned);
            problems.push(Diagnostic::error("installWhen", Some(&value), "must be \"proxy-live\" or \"immediately\""));
            None
        }
    };
    let proxy_admin_url = match top.get("proxyAdminUrl") {
        None | Some(Value::Null) => readiness::DEFAULT_ADMIN_URL.to_owned(),
        Some(Value::String(url)) => {
            if let Err(readiness::Error::BadUrl { reason, .. }) = readiness::check_url(url) {
                problems.push(Diagnostic::error("proxyAdminUrl", Some(url), reason));
            }
            url.clone()
        }
        Some(other) => {
            problems.push(Diagnostic::error("proxyAdminUrl", Some(&other.to_string()), "must be a string"));
            String::new()
        }
    };
    let origin = file.display().to_string();
    let config = match (top.get("taskDefinition"), top.get("proxyConfiguration")) {
        (Some(_), Some(_)) | (None, None) => {
            problems.push(Diagnostic::error(
                "taskDefinition",
                None,
                "give exactly one of taskDefinition (an ECS task definition) and proxyConfiguration",
            ));
            None
        }
        (Some(doc), None) => {
            config_of(parse_task_definition(&doc.to_string(), &origin), "taskDefinition.", &mut problems)
        }
        (None, Some(doc)) => {
            config_of(parse_proxy_configuration(&doc.to_string(), &origin), "proxyConfiguration.", &mut problems)
        }
    };
    match (id, cgroup, backend, config) {
        (Some(id), Some(cgroup), Some(backend), Some(config)) if problems.is_empty() => {
            Ok(TaskSpec { id, cgroup, netns, backend, config, install_when, proxy_admin_url, source: Source::File })
        }
        _ => Err(error(problems)),
    }
}

const KEYS: [&str; 8] =
    ["id", "cgroup", "netns", "backend", "taskDefinition", "proxyConfiguration", "installWhen", "proxyAdminUrl"];

fn string_field(top: &Map<String, Value>, key: &str, problems: &mut Vec<Diagnostic>) -> Option<String> {
    match top.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => {
            problems.push(Diagnostic::error(key, None, "missing"));
            None
        }
        Some(other) => {
            problems.push(Diagnostic::error(key, Some(&other.to_string()), "must be a string"));
            None
        }
    }
}

/// The validated configuration, or its problems with their fields placed inside the task
/// file (`taskDefinition.proxyConfiguration.properties[0]`).
fn config_of(
    input: Result<crate::config::source::Input, ConfigErrors>,
    prefix: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<ProxyConfig> {
    let errors = match input.and_then(|input| validate(&input.raw)) {
        Ok(validated) => return Some(validated.config),
        Err(errors) => errors,
    };
    for mut diagnostic in errors.0.into_iter().filter(Diagnostic::is_error) {
        diagnostic.field = format!("{prefix}{}", diagnostic.field);
        problems.push(diagnostic);
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A task definition's `proxyConfiguration`, for the daemon's sources' tests.
    pub(in crate::daemon) const PROXY: &str = r#"{"type": "APPMESH", "containerName": "envoy", "properties": [
        {"name": "IgnoredUID", "value": "1337"},
        {"name": "ProxyIngressPort", "value": "15000"},
        {"name": "ProxyEgressPort", "value": "15001"},
        {"name": "AppPorts", "value": "9080"},
        {"name": "EgressIgnoredIPs", "value": "169.254.170.2,169.254.169.254"}]}"#;

    fn file(body: &str) -> String {
        format!(r#"{{"id": "task1", "cgroup": "/ecs/task1", "netns": "/run/netns/task1", "backend": "ebpf", {body}}}"#)
    }

    fn problems(name: &str, text: &str) -> Vec<String> {
        parse(Path::new(name), text).unwrap_err().problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn proxy_configuration_file_parses() {
        let spec =
            parse(Path::new("/etc/intercept/tasks/task1.json"), &file(&format!(r#""proxyConfiguration": {PROXY}"#)))
                .unwrap();
        assert_eq!(spec.id, "task1");
        assert_eq!(spec.cgroup, "/ecs/task1");
        assert_eq!(spec.netns, Some(PathBuf::from("/run/netns/task1")));
        assert_eq!(spec.backend, Kind::Ebpf);
        assert_eq!(spec.config.proxy_egress_port, 15001);
        assert_eq!(spec.config.ignored_uids, [1337]);
        assert_eq!(spec.install_when, None, "the daemon's --install-when");
        assert_eq!(spec.proxy_admin_url, readiness::DEFAULT_ADMIN_URL);
    }

    /// A task file sets the ingress fallback as a property of its proxyConfiguration.
    #[test]
    fn the_ingress_fallback_is_a_property() {
        let with = |value: &str| {
            let proxy = PROXY.replace("]}", &format!(r#", {{"name": "IngressFallback", "value": "{value}"}}]}}"#));
            file(&format!(r#""proxyConfiguration": {proxy}"#))
        };
        let spec = parse(Path::new("task1.json"), &with("app")).unwrap();
        assert_eq!(spec.config.ingress_fallback, crate::config::IngressFallback::App);
        assert_eq!(
            problems("task1.json", &with("yes")),
            [r#"error: proxyConfiguration.IngressFallback = "yes": invalid ingress fallback: must be refuse or app"#]
        );
    }

    #[test]
    fn install_when_and_the_admin_url_are_read_and_left_out_of_the_fingerprint() {
        let base = parse(Path::new("task1.json"), &file(&format!(r#""proxyConfiguration": {PROXY}"#))).unwrap();
        for (fields, want) in [
            (r#""installWhen": "proxy-live""#, Some(InstallWhen::ProxyLive)),
            (r#""installWhen": "immediately""#, Some(InstallWhen::Immediately)),
            (r#""installWhen": null"#, None),
        ] {
            let spec =
                parse(Path::new("task1.json"), &file(&format!(r#"{fields}, "proxyConfiguration": {PROXY}"#))).unwrap();
            assert_eq!(spec.install_when, want, "{fields}");
            assert_eq!(spec.fingerprint(), base.fingerprint(), "{fields}: installed is installed, however it waited");
        }
        let url = "http://[::1]:19901/server_info";
        let spec = parse(
            Path::new("task1.json"),
            &file(&format!(r#""proxyAdminUrl": "{url}", "proxyConfiguration": {PROXY}"#)),
        )
        .unwrap();
        assert_eq!(spec.proxy_admin_url, url);
    }

    #[test]
    fn task_definition_file_gives_the_same_config_as_the_bare_proxy_configuration() {
        let bare = parse(Path::new("task1.json"), &file(&format!(r#""proxyConfiguration": {PROXY}"#))).unwrap();
        let td = parse(
            Path::new("task1.json"),
            &file(&format!(r#""taskDefinition": {{"family": "t", "proxyConfiguration": {PROXY}}}"#)),
        )
        .unwrap();
        assert_eq!(bare, td);
        assert_eq!(bare.fingerprint(), td.fingerprint());
    }

    #[test]
    fn fingerprint_changes_with_every_part_of_the_spec() {
        let base = parse(Path::new("task1.json"), &file(&format!(r#""proxyConfiguration": {PROXY}"#))).unwrap();
        let mut other = base.clone();
        other.config.proxy_egress_port = 15002;
        let mut netns = base.clone();
        netns.netns = None;
        let mut backend = base.clone();
        backend.backend = Kind::Nftables;
        let mut cgroup = base.clone();
        cgroup.cgroup = "/ecs/task2".into();
        let mut fallback = base.clone();
        fallback.config.ingress_fallback = crate::config::IngressFallback::App;
        for changed in [other, netns, backend, cgroup, fallback] {
            assert_ne!(base.fingerprint(), changed.fingerprint(), "{changed:?}");
        }
    }

    #[test]
    fn bad_files_name_the_field_and_the_value() {
        let proxy = format!(r#""proxyConfiguration": {PROXY}"#);
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            (
                "task1.json",
                "{".into(),
                vec!["error: (file): not valid JSON: EOF while parsing an object at line 1 column 1"],
            ),
            ("task1.json", "[]".into(), vec!["error: (file): must be a JSON object"]),
            (
                "task2.json",
                file(&proxy),
                vec![
                    r#"error: id = "task1": the file must be named task1.json, so that deleting the file removes this task"#,
                ],
            ),
            (
                "x.json",
                file(&proxy).replace(r#""id": "task1""#, r#""id": "../x""#),
                vec![
                    r#"error: id = "../x": not a safe task id: 1 to 128 letters, digits, '_', '-' or '.', not starting with '.'"#,
                ],
            ),
            (
                "task1.json",
                file(&proxy).replace(r#""backend": "ebpf""#, r#""backend": "bpf""#),
                vec![r#"error: backend = "bpf": must be one of ebpf, iptables, nftables"#],
            ),
            (
                "task1.json",
                file(&proxy).replace(r#""cgroup": "/ecs/task1""#, r#""cgroup": "/""#),
                vec![
                    r#"error: cgroup = "/": must name the task's own cgroup (a path under the cgroup2 mount), not the root or `auto`"#,
                ],
            ),
            (
                "task1.json",
                file(&proxy).replace(r#""netns": "/run/netns/task1", "backend": "ebpf""#, r#""backend": "iptables""#),
                vec![
                    "error: netns: missing: the iptables and nftables backends install rules in the task's network namespace",
                ],
            ),
            (
                "task1.json",
                file(&proxy).replace(r#""netns": "/run/netns/task1""#, r#""netns": 7"#),
                vec![
                    r#"error: netns = "7": must be an absolute path to a network namespace (/run/netns/NAME, /proc/PID/ns/net)"#,
                ],
            ),
            (
                "task1.json",
                file(&proxy.replace("15001", "15O01")),
                vec![
                    r#"error: proxyConfiguration.ProxyEgressPort = "15O01": invalid port: must be a decimal number from 1 to 65535"#,
                ],
            ),
            (
                "task1.json",
                file(&format!(r#""installWhen": "proxy_live", {proxy}"#)),
                vec![r#"error: installWhen = "proxy_live": must be "proxy-live" or "immediately""#],
            ),
            (
                "task1.json",
                file(&format!(r#""installWhen": true, {proxy}"#)),
                vec![r#"error: installWhen = "true": must be "proxy-live" or "immediately""#],
            ),
            (
                "task1.json",
                file(&format!(r#""proxyAdminUrl": "https://127.0.0.1:9901/server_info", {proxy}"#)),
                vec![
                    r#"error: proxyAdminUrl = "https://127.0.0.1:9901/server_info": must be an http:// URL (the Envoy admin serves plain HTTP, e.g. http://127.0.0.1:9901/server_info)"#,
                ],
            ),
            (
                "task1.json",
                file(&format!(r#""proxyAdminUrl": 9901, {proxy}"#)),
                vec![r#"error: proxyAdminUrl = "9901": must be a string"#],
            ),
            (
                "task1.json",
                file(r#""extra": 1"#),
                vec![
                    "error: extra: unknown field; the fields are id, cgroup, netns, backend, taskDefinition, proxyConfiguration, installWhen, proxyAdminUrl",
                    "error: taskDefinition: give exactly one of taskDefinition (an ECS task definition) and proxyConfiguration",
                ],
            ),
            (
                "task1.json",
                r#"{"proxyConfiguration": {}}"#.into(),
                vec!["error: id: missing", "error: cgroup: missing", "error: backend: missing"],
            ),
        ];
        for (name, text, want) in cases {
            let got = problems(name, &text);
            assert!(
                want.iter().all(|w| got.iter().any(|g| g == w)),
                "{name}: {text}\nwant (among) {want:#?}\ngot {got:#?}"
            );
        }
    }

    #[test]
    fn the_error_names_the_file() {
        let err = parse(Path::new("/tasks/task1.json"), "[]").unwrap_err();
        assert_eq!(err.to_string(), "task file /tasks/task1.json: error: (file): must be a JSON object");
    }

    #[test]
    fn the_documented_examples_parse() {
        for (name, text, backend, install_when) in [
            ("taskB-1.json", include_str!("../../../examples/daemon/taskB-1.json"), Kind::Ebpf, None),
            (
                "taskC-1.json",
                include_str!("../../../examples/daemon/taskC-1.json"),
                Kind::Nftables,
                Some(InstallWhen::ProxyLive),
            ),
        ] {
            let spec = parse(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(spec.backend, backend);
            assert_eq!(spec.install_when, install_when, "{name}");
            assert_eq!(spec.config.proxy_egress_port, 15001, "{name}");
        }
    }

    #[test]
    fn task_files_are_json_files_not_hidden_ones() {
        for (path, want) in [
            ("/t/task1.json", Some("task1")),
            ("/t/.task1.json", None),
            ("/t/task1.json.tmp", None),
            ("/t/task1.json~", None),
            ("/t/.task1.json.swp", None),
            ("/t/README", None),
        ] {
            assert_eq!(task_id_of(Path::new(path)), want, "{path}");
        }
    }
}
