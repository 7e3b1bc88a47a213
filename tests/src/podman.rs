//! A real CNI runtime: Debian's podman with its CNI network backend, everything of it private
//! to the test. Its storage, run root and configuration live in a temporary directory; it runs
//! inside a network namespace the test made (the "node"), so the bridge the `bridge` plugin
//! creates, and every address a container dials, are in that namespace and nowhere else; its
//! containers go under a cgroup parent of the test's own, removed with it. The plugin
//! directory holds Debian's `bridge`, `host-local` and `loopback` and intercept as
//! `intercept-cni`; the network is the deploy example `deploy/cni/10-intercept.conflist` with
//! host-local's state moved into the test directory. The image is the Debian base `cargo
//! xtask test` caches (`INTERCEPT_BASE_TARBALL`), imported.
//!
//! Two traces outside the test's own directories are podman's and libcni's fixed paths:
//! `/var/lib/containers` (a blob cache) and `/var/lib/cni` (empty once the containers are gone); each
//! is removed afterwards when it did not exist before.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::{
    cannot_run,
    cni::PluginDir,
    topology::{Netns, require_netns_privileges},
};

/// Debian's CNI plugins (package containernetworking-plugins).
const CNI_PLUGINS: &str = "/usr/lib/cni";
const IMAGE: &str = "localhost/intercept-base:test";
/// The deploy example the network is made from, relative to the workspace root.
const CONFLIST: &str = "deploy/cni/10-intercept.conflist";
/// Fixed paths podman and libcni write to whatever their configuration says.
const FIXED_PATHS: [&str; 2] = ["/var/lib/containers", "/var/lib/cni"];

pub struct Podman {
    dir: TempDir,
    node: Netns,
    plugins: PluginDir,
    cgroup_parent: String,
    /// The bridge's address, from the conflist's host-local range.
    gateway: String,
    /// The fixed paths that did not exist before, to remove afterwards.
    created: Vec<&'static str>,
}

impl Podman {
    /// The runtime, with the network of the deploy example and the base image imported; the
    /// test cannot run (and fails under CI) without podman, runc, the CNI plugins or the base.
    pub fn start(test: &str) -> Podman {
        require_netns_privileges(test);
        for program in ["podman", "runc"] {
            if intercept::backend::exec::find_program(program).is_none() {
                cannot_run(test, &format!("{program} is not installed (cargo xtask setup installs it)"));
            }
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            if !Path::new(CNI_PLUGINS).join(plugin).is_file() {
                cannot_run(test, &format!("{CNI_PLUGINS}/{plugin} is missing (package containernetworking-plugins)"));
            }
        }
        let Some(tarball) = env::var_os("INTERCEPT_BASE_TARBALL").map(PathBuf::from).filter(|p| p.is_file()) else {
            cannot_run(test, "INTERCEPT_BASE_TARBALL names no file: `cargo xtask test` builds the base and sets it");
        };
        let created = FIXED_PATHS.into_iter().filter(|p| !Path::new(p).exists()).collect();
        let plugins = PluginDir::new(test);
        for plugin in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(Path::new(CNI_PLUGINS).join(plugin), plugins.path().join(plugin))
                .expect("link a CNI plugin");
        }
        let dir = tempfile::Builder::new().prefix("intercept-podman-").tempdir().expect("a temporary directory");
        let mut podman = Podman {
            node: Netns::create("node"),
            cgroup_parent: format!("/intercept-podman-{}", std::process::id()),
            gateway: String::new(),
            created,
            plugins,
            dir,
        };
        podman.gateway = podman.configure();
        podman.must(&[std::ffi::OsStr::new("import"), tarball.as_os_str(), std::ffi::OsStr::new(IMAGE)]);
        podman
    }

    /// Writes the network and podman's configuration; returns the bridge's address.
    fn configure(&self) -> String {
        let d = self.dir.path();
        for sub in ["net", "ipam", "tmp"] {
            fs::create_dir_all(d.join(sub)).expect("a podman directory");
        }
        let root = workspace_root();
        let text = fs::read_to_string(root.join(CONFLIST)).expect("the deploy example conflist");
        let mut conflist: Value = serde_json::from_str(&text).expect("the deploy example is JSON");
        let bridge = conflist["plugins"]
            .as_array_mut()
            .and_then(|plugins| plugins.iter_mut().find(|p| p["type"] == "bridge"))
            .expect("the example has a bridge");
        // Everything host-local records goes to the test's directory, and the node namespace
        // needs no masquerading (nothing leaves it, and masquerading would add nat rules there).
        bridge["ipam"]["dataDir"] = Value::String(d.join("ipam").display().to_string());
        bridge["ipMasq"] = Value::Bool(false);
        let gateway =
            bridge["ipam"]["ranges"][0][0]["gateway"].as_str().expect("the example names its gateway").to_owned();
        fs::write(d.join("net").join("10-intercept.conflist"), conflist.to_string()).expect("write the conflist");
        let conf = format!(
            "[containers]\n\
             # The runner's hard limits are below podman's defaults, which runc would fail to set.\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             runtime = \"runc\"\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{}\"]\n\
             network_config_dir = \"{}\"\n",
            self.plugins.path().display(),
            d.join("net").display()
        );
        fs::write(d.join("containers.conf"), conf).expect("write containers.conf");
        gateway
    }

    /// The node namespace the containers' bridge lives in.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The network's gateway: the bridge's address in the node namespace.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// `podman` with the test's storage and configuration, run in the node namespace.
    pub fn command(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = self.node.command("podman");
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "overlay"]);
        cmd
    }

    /// Runs podman with `args`; it must succeed. Returns its stdout.
    pub fn must(&self, args: &[impl AsRef<std::ffi::OsStr>]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "podman {:?}: {}",
            args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn output(&self, args: &[impl AsRef<std::ffi::OsStr>]) -> Output {
        self.command().args(args).stdin(Stdio::null()).output().expect("run podman")
    }

    /// `podman run` options every container of the tests takes: the intercept network or
    /// another container's namespace, the test's cgroup parent, the image and the test
    /// binaries in `bins` (read-only at /bins).
    pub fn run_args(&self, bins: &Path, name: &str, network: &str, user: &str, detach: bool) -> Vec<String> {
        let mut args = vec!["run".to_owned()];
        args.push(if detach { "--detach" } else { "--rm" }.to_owned());
        args.extend(
            [
                "--name",
                name,
                "--network",
                network,
                "--cgroup-parent",
                &self.cgroup_parent,
                "--user",
                user,
                "--volume",
                &format!("{}:/bins:ro", bins.display()),
                IMAGE,
            ]
            .map(str::to_owned),
        );
        args
    }

    /// The pid of a running container's first process.
    pub fn pid(&self, name: &str) -> u32 {
        self.must(&["inspect", "--format", "{{.State.Pid}}", name]).parse().expect("a pid")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "--all", "--force", "--time", "0"]).stdout(Stdio::null()).status();
        // Unmounts the overlay layers and deletes the storage under the test's directory.
        let _ = self.command().args(["system", "reset", "--force"]).stdout(Stdio::null()).status();
        for hierarchy in cgroup_mounts() {
            let parent = hierarchy.join(self.cgroup_parent.trim_start_matches('/'));
            if parent.exists() {
                remove_cgroup_tree(&parent);
            }
        }
        for path in &self.created {
            let _ = fs::remove_dir_all(path);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = fs::read_dir(dir) {
        for child in children.flatten().filter(|c| c.file_type().is_ok_and(|t| t.is_dir())) {
            remove_cgroup_tree(&child.path());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(dir) {
        if Instant::now() >= deadline {
            eprintln!("remove {}: {e}", dir.display());
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    intercept::mountinfo::parse_mountinfo(&mountinfo)
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_owned()
}
