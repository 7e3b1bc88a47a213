//! Proxy readiness: wait until the Envoy admin reports the server `LIVE` before interception
//! is installed, so no connection is redirected to a port nobody listens on yet.
//!
//! The check is the seed guide's health check (`curl -s http://localhost:9901/server_info |
//! grep state | grep -q LIVE`) done properly: the admin's `server_info` JSON is parsed
//! ([`parse_server_info`]) and its `state` must be `LIVE`. [`wait_until_live`] polls it with
//! backoff until a deadline, from inside the task's network namespace when one is given
//! (Envoy's admin listens on the task's loopback), on a thread of its own
//! ([`Netns::run`]); the caller's thread never changes namespace.
//!
//! Where waiting can work (docs/deploy-ecs.md): in the daemon, or in a container the proxy
//! does not wait for. An ECS init container the proxy `dependsOn` with condition `SUCCESS`
//! must exit before Envoy starts, so it cannot wait for Envoy: it installs immediately
//! ([`InstallWhen::Immediately`], fail-closed), and [`init_container_deadlock`] finds task
//! definitions that ask it to wait anyway.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{self, Netns};

/// The Envoy admin's `server_info`, where the seed guide's health check looks.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901/server_info";
/// `--proxy-timeout`'s default, in seconds: the seed's health check allows a 10 s start
/// period and 3 retries 5 s apart; an Envoy pulling its configuration from a control
/// plane can take longer.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// When `apply` installs the interception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InstallWhen {
    /// Once the proxy's admin reports LIVE: no connection is redirected to a port nobody
    /// listens on, but the workload's connections made before that bypass the proxy.
    ProxyLive,
    /// At once, fail-closed: nothing ever bypasses the proxy, but connections made before the
    /// proxy listens are refused.
    Immediately,
}

/// Envoy's server state (`envoy.admin.v3.ServerInfo.State`), as `server_info` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    Live,
    Draining,
    PreInitializing,
    Initializing,
    /// A state this version does not know, as written.
    Other(String),
}

impl ServerState {
    fn from_name(name: &str) -> ServerState {
        match name {
            "LIVE" => ServerState::Live,
            "DRAINING" => ServerState::Draining,
            "PRE_INITIALIZING" => ServerState::PreInitializing,
            "INITIALIZING" => ServerState::Initializing,
            other => ServerState::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
            ServerState::Other(name) => name,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no \"state\" string in the JSON object")]
    NoState,
}

/// The `state` of a `server_info` response body.
pub fn parse_server_info(body: &str) -> Result<ServerState, ParseError> {
    let value: Value = serde_json::from_str(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let state = value.get("state").and_then(Value::as_str).ok_or(ParseError::NoState)?;
    Ok(ServerState::from_name(state))
}

/// What one poll of the admin found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    State(ServerState),
    /// No answer (connection refused while Envoy starts), a non-200 status, or a body that
    /// is not `server_info`: why, in words.
    NotReady(String),
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::State(state) => write!(f, "state {state}"),
            Observation::NotReady(why) => f.write_str(why),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--wait-for-proxy {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the proxy at {url} was not LIVE after {waited:?} (--proxy-timeout); last seen: {last}")]
    Timeout { url: String, waited: Duration, last: Observation },
    #[error("--wait-for-proxy {url}: {source}")]
    Netns {
        url: String,
        #[source]
        source: netns::Error,
    },
}

impl Error {
    /// A URL intercept cannot poll: bad input, nothing was changed.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::BadUrl { .. })
    }
}

/// Checks that `url` is one the poller can fetch: `http://host[:port]/path` (the admin
/// serves plain HTTP on loopback; https is not supported).
pub fn check_url(url: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::BadUrl { url: url.to_owned(), reason: reason.to_owned() };
    let uri: ureq::http::Uri = url.parse().map_err(|e: ureq::http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "must be an http:// URL (the Envoy admin serves plain HTTP, e.g. http://127.0.0.1:9901/server_info)",
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    Ok(())
}

/// The delays between polls: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(1) }
    }
}

impl Backoff {
    /// The `n`th delay (0-based).
    pub fn delay(&self, n: u32) -> Duration {
        self.initial.saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX)).min(self.max)
    }
}

/// What [`wait_until_live`] saw: how long it took and how many polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub waited: Duration,
    pub polls: u32,
}

/// Calls `poll` until it reports LIVE or `timeout` passes, sleeping per `backoff` between
/// calls (never past the deadline); each call gets the time left (at least
/// [`MIN_POLL_TIMEOUT`]). The error carries the last state the admin reported, or when it never
/// reported one, the last observation.
pub fn poll_until_live(
    url: &str,
    timeout: Duration,
    backoff: Backoff,
    mut poll: impl FnMut(Duration) -> Observation,
) -> Result<Live, Error> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut polls = 0;
    let mut last_state = None;
    loop {
        let observation = poll(deadline.saturating_duration_since(Instant::now()).max(MIN_POLL_TIMEOUT));
        polls += 1;
        match &observation {
            Observation::State(ServerState::Live) => return Ok(Live { waited: start.elapsed(), polls }),
            Observation::State(_) => last_state = Some(observation.clone()),
            Observation::NotReady(_) => {}
        }
        tracing::debug!(url, %observation, "proxy not live yet");
        let timed_out = || Error::Timeout {
            url: url.to_owned(),
            waited: timeout,
            last: last_state.clone().unwrap_or_else(|| observation.clone()),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out());
        }
        thread::sleep(backoff.delay(polls - 1).min(deadline - now));
        if Instant::now() >= deadline {
            return Err(timed_out());
        }
    }
}

/// The least time one poll is given, so the last one before the deadline is not cut short
/// into a meaningless timeout.
pub const MIN_POLL_TIMEOUT: Duration = Duration::from_millis(200);

/// One GET of `url`, given at most `timeout`.
pub fn fetch(url: &str, timeout: Duration) -> Observation {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // The admin is on the task's loopback: an HTTP_PROXY of the environment must not apply.
        .proxy(None)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let mut response = match agent.get(url).call() {
        Ok(response) => response,
        Err(e) => return Observation::NotReady(format!("no answer ({e})")),
    };
    let status = response.status();
    let body = match response.body_mut().with_config().limit(1 << 20).read_to_string() {
        Ok(body) => body,
        Err(e) => return Observation::NotReady(format!("HTTP {status}, reading the body: {e}")),
    };
    if status != ureq::http::StatusCode::OK {
        return Observation::NotReady(format!("HTTP {status}"));
    }
    match parse_server_info(&body) {
        Ok(state) => Observation::State(state),
        Err(e) => Observation::NotReady(format!("HTTP 200 but not server_info: {e}")),
    }
}

/// Waits until the admin at `url` reports LIVE, polling from inside `netns`, for at most
/// `timeout`. What `apply --install-when proxy-live` does before installing (the daemon,
/// which must not block on one task, [`fetch`]es once per pass instead).
pub fn wait_until_live(url: &str, timeout: Duration, netns: &Netns) -> Result<Live, Error> {
    check_url(url)?;
    netns
        .run(|| poll_until_live(url, timeout, Backoff::default(), |remaining| fetch(url, remaining)))
        .map_err(|source| Error::Netns { url: url.to_owned(), source })?
}

/// Whether a task definition asks an init container to wait for a proxy that waits for it:
/// the proxy container (`containerName`) `dependsOn` a container with condition `SUCCESS` or
/// `COMPLETE` whose `command` says `proxy-live`. That container would wait for Envoy until
/// its timeout while Envoy waits for it to exit. Returns the explanation.
pub fn init_container_deadlock(task_definition: &Value) -> Option<String> {
    let task = task_definition.get("taskDefinition").unwrap_or(task_definition);
    let proxy_name = task.get("proxyConfiguration")?.get("containerName")?.as_str()?;
    let containers = task.get("containerDefinitions")?.as_array()?;
    let proxy = containers.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(proxy_name))?;
    for dependency in proxy.get("dependsOn")?.as_array()? {
        let condition = dependency.get("condition").and_then(Value::as_str).unwrap_or_default();
        if !matches!(condition, "SUCCESS" | "COMPLETE") {
            continue;
        }
        let Some(name) = dependency.get("containerName").and_then(Value::as_str) else { continue };
        let Some(init) = containers.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name)) else {
            continue;
        };
        let waits = init
            .get("command")
            .and_then(Value::as_array)
            .is_some_and(|args| args.iter().filter_map(Value::as_str).any(|a| a.contains("proxy-live")));
        if waits {
            return Some(format!(
                "--install-when proxy-live cannot work in container \"{name}\": the proxy container \"{proxy_name}\" \
                 starts only after it exits (dependsOn condition {condition}), so it would wait for a proxy that \
                 never starts; an init container installs with --install-when immediately (fail-closed), and \
                 waiting for the proxy belongs to the daemon or a container the proxy does not wait for \
                 (docs/deploy-ecs.md)"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn server_info_states() {
        let cases = [
            (r#"{"version":"abc/1.29.12","state":"LIVE","uptime_current_epoch":"3s"}"#, Ok(ServerState::Live)),
            (r#"{"state":"PRE_INITIALIZING"}"#, Ok(ServerState::PreInitializing)),
            (r#"{"state":"INITIALIZING"}"#, Ok(ServerState::Initializing)),
            (r#"{"state":"DRAINING"}"#, Ok(ServerState::Draining)),
            (r#"{"state":"SOMETHING_NEW"}"#, Ok(ServerState::Other("SOMETHING_NEW".into()))),
            (r#"{"state":"live"}"#, Ok(ServerState::Other("live".into()))),
            (r#"{"version":"x"}"#, Err(ParseError::NoState)),
            (r#"{"state":1}"#, Err(ParseError::NoState)),
            (r#"["LIVE"]"#, Err(ParseError::NoState)),
        ];
        for (body, expected) in cases {
            assert_eq!(parse_server_info(body), expected, "{body}");
        }
        assert!(matches!(parse_server_info("state: LIVE"), Err(ParseError::NotJson(_))));
    }

    #[test]
    fn urls() {
        for good in [DEFAULT_ADMIN_URL, "http://localhost:9901/server_info", "http://[::1]:9901/server_info"] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("https://127.0.0.1:9901/server_info", "must be an http:// URL"),
            ("127.0.0.1:9901", "must be an http:// URL"),
            ("http://", ""),
            ("not a url", ""),
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(err.is_bad_input());
            assert!(err.to_string().starts_with(&format!("--wait-for-proxy {bad}: ")), "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum() {
        let backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(1) };
        let delays: Vec<u128> = (0..8).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff.delay(40), Duration::from_secs(1));
    }

    #[test]
    fn polling_stops_at_live() {
        let seen = [
            Observation::NotReady("no answer (connection refused)".into()),
            Observation::State(ServerState::PreInitializing),
            Observation::State(ServerState::Initializing),
            Observation::State(ServerState::Live),
        ];
        let n = Cell::new(0);
        let fast = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(2) };
        let live = poll_until_live("u", Duration::from_secs(10), fast, |_| {
            n.set(n.get() + 1);
            seen[n.get() - 1].clone()
        })
        .unwrap();
        assert_eq!(live.polls, 4);
    }

    #[test]
    fn without_any_state_the_timeout_names_the_last_observation() {
        let fast = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(5) };
        let err = poll_until_live("u", Duration::from_millis(10), fast, |_| {
            Observation::NotReady("no answer (connection refused)".into())
        })
        .unwrap_err();
        assert!(err.to_string().ends_with("last seen: no answer (connection refused)"), "{err}");
    }

    #[test]
    fn the_timeout_names_the_url_and_the_last_state() {
        let fast = Backoff { initial: Duration::from_millis(1), max: Duration::from_millis(5) };
        let n = Cell::new(0);
        let err = poll_until_live(DEFAULT_ADMIN_URL, Duration::from_millis(30), fast, |remaining| {
            assert_eq!(remaining, MIN_POLL_TIMEOUT, "30 ms is less than the least time a poll gets");
            n.set(n.get() + 1);
            // A state, then polls without an answer: the state is what the error names.
            if n.get() == 1 {
                Observation::State(ServerState::Draining)
            } else {
                Observation::NotReady("no answer (timeout)".into())
            }
        })
        .unwrap_err();
        assert!(n.get() >= 2, "polled until the deadline");
        assert_eq!(
            err.to_string(),
            "the proxy at http://127.0.0.1:9901/server_info was not LIVE after 30ms (--proxy-timeout); last seen: \
             state DRAINING"
        );
    }

    fn task(proxy_depends: Value, init_command: Value) -> Value {
        serde_json::json!({
            "proxyConfiguration": {"type": "APPMESH", "containerName": "envoy", "properties": []},
            "containerDefinitions": [
                {"name": "intercept-init", "essential": false, "command": init_command},
                {"name": "envoy", "dependsOn": proxy_depends},
            ]
        })
    }

    #[test]
    fn an_init_container_the_proxy_waits_for_cannot_wait_for_the_proxy() {
        let success = serde_json::json!([{"containerName": "intercept-init", "condition": "SUCCESS"}]);
        let waits = serde_json::json!(["apply", "--install-when", "proxy-live", "--from-env"]);
        let message = init_container_deadlock(&task(success.clone(), waits.clone())).unwrap();
        assert!(message.starts_with("--install-when proxy-live cannot work in container \"intercept-init\""));
        assert!(message.contains("dependsOn condition SUCCESS"), "{message}");
        let wrapped = serde_json::json!({ "taskDefinition": task(success.clone(), waits.clone()) });
        assert!(init_container_deadlock(&wrapped).is_some());

        let immediately = serde_json::json!(["apply", "--install-when", "immediately", "--from-env"]);
        assert_eq!(init_container_deadlock(&task(success, immediately)), None);
        let started = serde_json::json!([{"containerName": "intercept-init", "condition": "START"}]);
        assert_eq!(init_container_deadlock(&task(started, waits)), None);
    }
}
