//! intercept as a CNI plugin, driven as a runtime drives it: a plugin directory of its own
//! holding the `intercept` binary under the reference plugin's name, `CNI_*` variables and a
//! network configuration on stdin. [`agent_netconf`] writes a configuration the way the ECS
//! agent does.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use intercept::config::ProxyConfig;
use serde_json::{Value, json};
use std::os::unix::fs::MetadataExt as _;
use tempfile::TempDir;

use crate::topology::{Netns, intercept_bin};

/// A plugin directory with the `intercept` binary as `aws-appmesh` and `intercept-cni`
/// (symlinks), removed on drop.
pub struct PluginDir {
    dir: TempDir,
}

/// What one call printed, and how it exited.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The JSON on stdout (a result or a CNI error).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// A CNI error's code, asserting the call failed with one.
    pub fn error_code(&self) -> u64 {
        assert_eq!(self.code, Some(1), "the call must fail: {self:?}");
        self.json()["code"].as_u64().unwrap_or_else(|| panic!("no CNI error code: {self:?}"))
    }

    pub fn assert_success(&self) {
        assert_eq!(self.code, Some(0), "the call must succeed: {self:?}");
    }
}

impl PluginDir {
    pub fn new(test: &str) -> PluginDir {
        let bin = intercept_bin(test);
        let dir = tempfile::Builder::new().prefix("intercept-cni-").tempdir().expect("a temporary directory");
        for name in intercept::cni::PLUGIN_NAMES {
            std::os::unix::fs::symlink(&bin, dir.path().join(name)).expect("link the plugin");
        }
        PluginDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin under the reference's name, as the ECS agent finds it.
    pub fn aws_appmesh(&self) -> PathBuf {
        self.dir.path().join("aws-appmesh")
    }

    /// One call of `aws-appmesh` with `CNI_COMMAND=command`, as libcni makes it (the ECS
    /// agent's interface name), `netns` as `CNI_NETNS` and `stdin` on stdin.
    pub fn call(&self, command: &str, netns: Option<&Path>, stdin: &[u8]) -> Outcome {
        self.call_with(command, netns, stdin, &[])
    }

    /// [`PluginDir::call`] with extra environment variables.
    pub fn call_with(&self, command: &str, netns: Option<&Path>, stdin: &[u8], env: &[(&str, &str)]) -> Outcome {
        let mut cmd = Command::new(self.aws_appmesh());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "intercept-test")
            .env("CNI_IFNAME", "aws-appmesh")
            .env("CNI_PATH", self.dir.path())
            .envs(env.iter().copied());
        if let Some(netns) = netns {
            cmd.env("CNI_NETNS", netns);
        }
        run(cmd.stdin(Stdio::piped()), stdin)
    }

    /// The plugin run with arguments and no CNI environment (`--capabilities`).
    pub fn run_args(&self, args: &[&str]) -> Outcome {
        let mut cmd = Command::new(self.aws_appmesh());
        cmd.env_clear().args(args).stdin(Stdio::null());
        run(&mut cmd, b"")
    }
}

pub(crate) fn run(cmd: &mut Command, stdin: &[u8]) -> Outcome {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run the plugin");
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that refuses before reading closes the pipe: not the test's failure.
        let _ = pipe.write_all(stdin);
    }
    let out = child.wait_with_output().expect("wait for the plugin");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The network configuration the ECS agent gave `aws-appmesh` in a recorded run, byte for byte,
/// the same for ADD and DEL: libcni added `name` and `cniVersion`, the agent appended the two
/// metadata IPs.
pub const RECORDED_NETCONF: &str = r#"{"appPorts":["9080"],"cniVersion":"0.3.0","egressIgnoredIPs":["169.254.170.2","169.254.169.254"],"egressIgnoredPorts":["22"],"ignoredUID":"1337","name":"network-name","proxyEgressPort":"15001","proxyIngressPort":"15000","type":"aws-appmesh"}"#;

/// [`RECORDED_NETCONF`] with other `egressIgnoredPorts`, written as the agent writes them.
pub fn recorded_netconf_with_ports(ports: &[String]) -> String {
    let ports = serde_json::to_string(ports).expect("serialisable");
    let recorded = r#""egressIgnoredPorts":["22"]"#;
    assert!(RECORDED_NETCONF.contains(recorded));
    RECORDED_NETCONF.replace(recorded, &format!(r#""egressIgnoredPorts":{ports}"#))
}

/// The environment the ECS agent runs a CNI plugin with (libcni's `CNI_*`, and the agent's
/// own logging variables), for `command` on the task whose pause container is `container_id`.
pub fn agent_environment(command: &str, container_id: &str, netns: &str) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_ARGS", ""),
        ("CNI_IFNAME", "aws-appmesh"),
        ("CNI_PATH", "/plugins"),
        ("ECS_CNI_LOGLEVEL", "info"),
        ("VPC_CNI_LOG_LEVEL", "info"),
        ("VPC_CNI_LOG_FILE", "/log/vpc-branch-eni.log"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .into()
}

/// Checks that `result` is what libcni accepts as a CNI 0.3.0 result (`types/100`, which
/// the ECS agent parses ADD's output as): the version, and every field it knows with the
/// type it decodes it into (`interfaces`, `ips` with an address in CIDR form, `routes`, `dns`).
pub fn assert_cni_030_result(result: &Value) {
    let object = result.as_object().unwrap_or_else(|| panic!("a result is a JSON object: {result}"));
    assert_eq!(object.get("cniVersion"), Some(&json!("0.3.0")), "{result}");
    let strings = |value: &Value, what: &str| {
        let items = value.as_array().unwrap_or_else(|| panic!("{what} is an array of strings: {result}"));
        assert!(items.iter().all(Value::is_string), "{what} is an array of strings: {result}");
    };
    let array = |key: &str| object.get(key).map(|v| v.as_array().unwrap_or_else(|| panic!("{key}: {result}")).clone());
    for interface in array("interfaces").unwrap_or_default() {
        assert!(interface["name"].is_string(), "an interface has a name: {result}");
    }
    for ip in array("ips").unwrap_or_default() {
        assert!(matches!(ip["version"].as_str(), Some("4" | "6")), "{result}");
        let address = ip["address"].as_str().unwrap_or_else(|| panic!("an ip has an address: {result}"));
        assert!(address.parse::<ipnet::IpNet>().is_ok(), "{address} is in CIDR form: {result}");
    }
    for route in array("routes").unwrap_or_default() {
        assert!(route["dst"].as_str().is_some_and(|d| d.parse::<ipnet::IpNet>().is_ok()), "{result}");
    }
    if let Some(dns) = object.get("dns") {
        let dns = dns.as_object().unwrap_or_else(|| panic!("dns is an object: {result}"));
        for key in ["nameservers", "search", "options"] {
            if let Some(value) = dns.get(key) {
                strings(value, key);
            }
        }
        assert!(dns.get("domain").is_none_or(Value::is_string), "{result}");
    }
}

/// The network configuration the ECS agent writes for `config` (`ecscni.AppMeshConfig`
/// through libcni): every value a string, lists as arrays of strings, `proxyIngressPort` ""
/// and `appPorts` null without ingress, the two metadata IPs appended, no `enableIPv6`. The
/// configuration's IPv6 setting is therefore not written: the plugin intercepts IPv4 only.
pub fn agent_netconf(config: &ProxyConfig) -> Value {
    let strings = |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
    let mut ignored_ips: Vec<String> = config.egress_ignored_ips.iter().map(ToString::to_string).collect();
    for metadata in ["169.254.170.2", "169.254.169.254"] {
        if !ignored_ips.iter().any(|ip| ip == metadata || ip == &format!("{metadata}/32")) {
            ignored_ips.push(metadata.to_owned());
        }
    }
    let mut netconf = json!({
        "type": "aws-appmesh",
        "cniVersion": "0.3.0",
        "proxyIngressPort": config.ingress.as_ref().map(|i| i.proxy_port.to_string()).unwrap_or_default(),
        "proxyEgressPort": config.proxy_egress_port.to_string(),
        "appPorts": config.ingress.as_ref().map(|i| strings(i.app_ports.ranges().iter().map(ToString::to_string).collect())),
        "egressIgnoredIPs": strings(ignored_ips),
        "name": "network-name",
    });
    let ids = |ids: &[u32]| ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    if !config.ignored_uids.is_empty() {
        netconf["ignoredUID"] = Value::String(ids(&config.ignored_uids));
    }
    if !config.ignored_gids.is_empty() {
        netconf["ignoredGID"] = Value::String(ids(&config.ignored_gids));
    }
    if !config.egress_ignored_ports.is_empty() {
        netconf["egressIgnoredPorts"] =
            strings(config.egress_ignored_ports.ranges().iter().map(ToString::to_string).collect());
    }
    netconf
}

/// `netconf` as bytes, with `changes` merged in (a field set to null is removed).
pub fn with(netconf: &Value, changes: Value) -> Vec<u8> {
    let mut netconf = netconf.clone();
    for (key, value) in changes.as_object().expect("an object of changes") {
        match value {
            Value::Null => {
                netconf.as_object_mut().expect("an object").remove(key);
            }
            value => netconf[key] = value.clone(),
        }
    }
    serde_json::to_vec(&netconf).expect("serialisable")
}

/// The model's view of a configuration installed from an agent netconfig: IPv4 only.
pub fn ipv4_only(mut config: ProxyConfig) -> ProxyConfig {
    config.ipv6 = false;
    config
}

/// Nothing of any interception is in the namespace: no rule and no chain of its own in either
/// family's tables (iptables-nft leaves the `nat` table's empty built-in chains, which hold
/// nothing and accept everything, as it does for any removal), and no nftables table of
/// intercept's where the host has nft.
pub fn nothing_left(netns: &Netns) {
    for save in ["iptables-save", "ip6tables-save"] {
        let out = netns.exec(save, &[]);
        let left: Vec<&str> =
            out.lines().filter(|l| l.starts_with("-A") || (l.starts_with(':') && l.contains(" - "))).collect();
        assert!(left.is_empty(), "{save}: {left:?} is left");
    }
    let tables = netns.nft_tables();
    assert!(!tables.contains("intercept"), "{tables}");
    no_lock_left(netns);
}

/// No lock file or unfinished marker of intercept's is left for the namespace.
pub fn no_lock_left(netns: &Netns) {
    let nsfs = std::fs::metadata(netns.path()).expect("the namespace");
    let key = intercept::lock::Key::netns(nsfs.dev(), nsfs.ino(), "");
    for ext in ["lock", "unfinished"] {
        let path = Path::new(intercept::lock::SYSTEM_DIR).join(format!("{}.{ext}", key.name()));
        assert!(!path.exists(), "{} is left", path.display());
    }
}
