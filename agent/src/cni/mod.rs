//! intercept as a CNI plugin: a drop-in for the `aws-appmesh` plugin that the ECS agent runs
//! while it sets up an awsvpc task's network namespace (before any task container starts),
//! and a plugin any CNI runtime can chain after its network plugins.
//!
//! This module is the pure part: the `CNI_*` environment and the network configuration on
//! stdin become a [`Request`], and results and errors are rendered as the CNI specification's
//! JSON. The command line (`intercept cni`, or the binary under a plugin name) carries a
//! request out with a backend.

pub mod netconf;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

pub use netconf::Netconf;

/// The names under which the `intercept` binary acts as a CNI plugin (a symlink or a copy):
/// the reference plugin's, for the ECS agent, and one of its own for chained configurations.
pub const PLUGIN_NAMES: [&str; 2] = ["aws-appmesh", "intercept-cni"];

/// The CNI specification versions spoken, as the reference plugin: 0.3.0 is what the ECS agent
/// writes.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The version of results that name none of their own (VERSION, errors before the
/// configuration was read).
pub const LATEST_VERSION: &str = "1.0.0";

/// The CNI specification's error codes this plugin uses, and its own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_NETCONF: u32 = 7;
    /// Installing the interception failed (nothing of it is left half-installed: every
    /// backend applies atomically).
    pub const APPLY_FAILED: u32 = 100;
    /// Removing the interception failed.
    pub const REMOVE_FAILED: u32 = 101;
    /// CHECK: the interception is missing or not what the configuration asks for.
    pub const DRIFT: u32 = 102;
}

/// A CNI error: printed on stdout as `{"cniVersion", "code", "msg", "details"}`, with a
/// non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Error {
        Error { code, msg: msg.into(), details: details.into() }
    }

    /// The error as the specification's JSON object, for the configuration's version.
    pub fn render(&self, cni_version: &str) -> String {
        let mut object = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            object["details"] = Value::String(self.details.clone());
        }
        format!("{object}\n")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (CNI error {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, "\n{}", self.details)?;
        }
        Ok(())
    }
}

/// The operation a runtime asks for in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        match s {
            "ADD" => Some(Command::Add),
            "DEL" => Some(Command::Del),
            "CHECK" => Some(Command::Check),
            "VERSION" => Some(Command::Version),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// What the runtime asked for, from the `CNI_*` environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub container_id: Option<String>,
    /// The task's network namespace (`CNI_NETNS`); DEL may come without one, once the
    /// namespace is gone.
    pub netns: Option<PathBuf>,
}

/// Reads the `CNI_*` variables through `lookup`, reporting every missing or malformed one at
/// once (error code 4). `CNI_IFNAME` and `CNI_PATH` are required by the specification but not
/// used: this plugin makes no interface and calls no other plugin.
pub fn read_request(lookup: impl Fn(&str) -> Option<String>) -> Result<Request, Error> {
    let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
    let Some(command) = get("CNI_COMMAND") else {
        return Err(Error::new(
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
            "intercept runs as a CNI plugin under this name: a CNI runtime sets CNI_COMMAND (ADD, DEL, CHECK or \
             VERSION) and the other CNI_* variables and writes the network configuration on stdin; \
             `--capabilities` and `--version` print what the ECS agent asks for",
        ));
    };
    let Some(command) = Command::parse(&command) else {
        return Err(Error::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND = {:?}: unknown command", crate::config::parse::clip(&command)),
            "the commands are ADD, DEL, CHECK and VERSION",
        ));
    };
    if command == Command::Version {
        return Ok(Request { command, container_id: None, netns: None });
    }
    let mut required = vec!["CNI_CONTAINERID", "CNI_IFNAME"];
    if command != Command::Del {
        required.push("CNI_NETNS");
    }
    let mut problems: Vec<String> = required
        .iter()
        .filter(|name| get(name).is_none())
        .map(|name| format!("{name} is not set (required for {})", command.name()))
        .collect();
    let netns = get("CNI_NETNS").map(PathBuf::from);
    if let Some(path) = &netns
        && !path.is_absolute()
    {
        problems.push(format!("CNI_NETNS = {:?}: must be an absolute path to a network namespace", path.display()));
    }
    if !problems.is_empty() {
        return Err(Error::new(
            code::INVALID_ENVIRONMENT,
            format!("invalid CNI environment for {}", command.name()),
            problems.join("\n"),
        ));
    }
    Ok(Request { command, container_id: get("CNI_CONTAINERID"), netns })
}

/// The result of ADD: the previous plugin's result passed through (in a chain), else an empty
/// one, in the configuration's version.
pub fn add_result(netconf: &Netconf) -> String {
    let mut result = netconf.prev_result.clone().unwrap_or_else(|| {
        let mut empty = Map::new();
        empty.insert("dns".to_owned(), Value::Object(Map::new()));
        empty
    });
    result.insert("cniVersion".to_owned(), Value::String(netconf.cni_version.clone()));
    format!("{}\n", Value::Object(result))
}

/// The answer to VERSION.
pub fn version_result() -> String {
    format!("{}\n", json!({ "cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS }))
}

/// The answer to `--capabilities`, the reference plugin's: an empty object. The ECS agent runs
/// every plugin of its directory with that flag at start and fails on an answer that is not
/// JSON, but it checks the capabilities of its networking plugins only; `aws-appmesh` has
/// none, and claiming `awsvpc-network-mode` would be claiming to set up a task's network.
pub fn capabilities() -> String {
    "{}\n".to_owned()
}
