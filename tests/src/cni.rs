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

fn run(cmd: &mut Command, stdin: &[u8]) -> Outcome {
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
/// intercept's.
pub fn nothing_left(netns: &Netns) {
    for save in ["iptables-save", "ip6tables-save"] {
        let out = netns.exec(save, &[]);
        let left: Vec<&str> =
            out.lines().filter(|l| l.starts_with("-A") || (l.starts_with(':') && l.contains(" - "))).collect();
        assert!(left.is_empty(), "{save}: {left:?} is left");
    }
    let tables = netns.exec("nft", &["list", "tables"]);
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
