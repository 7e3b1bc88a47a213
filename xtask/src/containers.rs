//! A container engine and the intercept image, for `cargo xtask image` and the container
//! tests of `cargo xtask test`.
//!
//! The engine is the one at `DOCKER_HOST` when that is set; otherwise a private `dockerd`
//! started here, with its data root, exec root, socket and pid file under
//! `<target>/containers/` and no networking of its own (`--iptables=false --bridge=none`), and
//! stopped (by pid) when the [`Engine`] drops. No registry is reachable, so the image's base is
//! made from Debian packages (`mmdebstrap`) once, cached as a tarball under the same directory,
//! and imported into the engine when it lacks it.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, display, dist, run_cmd, step};

/// The Debian base: the runtime tools of the iptables and nftables backends, and apt.
pub const BASE_IMAGE: &str = "intercept-base:bookworm";
const BASE_SUITE: &str = "bookworm";
const BASE_PACKAGES: &str = "iptables,nftables,ipset";
/// How long a started engine may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Directories dockerd and its containerd make on the host whatever their roots are (plugin
/// sockets, shim sockets), removed after the engine stops when it made them and they are
/// empty; deepest first.
const RUNTIME_DIRS: [&str; 4] = ["/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd"];

/// A container engine to talk to: `DOCKER_HOST`'s, or one this process started.
pub struct Engine {
    /// `unix://…`, as `DOCKER_HOST` spells it.
    pub host: String,
    /// The `dockerd` started here, stopped on drop, and the [`RUNTIME_DIRS`] that did not
    /// exist before it.
    started: Option<(Child, Vec<&'static str>)>,
    dir: PathBuf,
}

impl Engine {
    /// The engine at `DOCKER_HOST`, or a private one started under `<target>/containers/`.
    pub fn start(ws: &Workspace) -> Result<Engine> {
        let dir = ws.target_dir.join("containers");
        if let Some(host) = env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
            println!("    using the engine at DOCKER_HOST={host}");
            let engine = Engine { host, started: None, dir };
            engine.wait_until_ready(Duration::from_secs(5))?;
            return Ok(engine);
        }
        let engine_dir = dir.join("engine");
        fs::create_dir_all(&engine_dir).with_context(|| format!("create {}", engine_dir.display()))?;
        let socket = engine_dir.join("docker.sock");
        // A socket left by an engine that was killed would make dockerd refuse to start.
        let _ = fs::remove_file(&socket);
        let log_path = engine_dir.join("dockerd.log");
        let log = fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
        let mut dockerd = Command::new("dockerd");
        dockerd
            .arg("--data-root")
            .arg(engine_dir.join("root"))
            .arg("--exec-root")
            .arg(engine_dir.join("exec"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(engine_dir.join("dockerd.pid"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        println!("    $ {}", display(&dockerd));
        let new_dirs = RUNTIME_DIRS.into_iter().filter(|d| !Path::new(d).exists()).collect();
        let child = dockerd.spawn().context("start dockerd (package docker.io; `cargo xtask setup` installs it)")?;
        let engine = Engine { host: format!("unix://{}", socket.display()), started: Some((child, new_dirs)), dir };
        engine.wait_until_ready(START_TIMEOUT).with_context(|| {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            format!(
                "dockerd's log ({}) ends:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        Ok(engine)
    }

    /// `docker` talking to this engine, with the classic builder (the engine's own).
    pub fn docker(&self) -> Command {
        let mut docker = Command::new("docker");
        docker.env("DOCKER_HOST", &self.host).env("DOCKER_BUILDKIT", "0");
        docker
    }

    fn wait_until_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.docker().args(["version", "--format", "{{.Server.Version}}"]).output();
            match out {
                Ok(out) if out.status.success() => {
                    println!("    engine {} at {}", String::from_utf8_lossy(&out.stdout).trim(), self.host);
                    return Ok(());
                }
                _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
                Ok(out) => bail!(
                    "the engine at {} does not answer: {}",
                    self.host,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => bail!("running docker (the client): {e}"),
            }
        }
    }

    /// The cached root file system of the base (the container tests import it into engines of
    /// their own).
    pub fn base_tarball(&self) -> PathBuf {
        self.dir.join(format!("base-{BASE_SUITE}.tar"))
    }

    /// The Debian base, imported from the cached root file system, which is built first when
    /// there is none.
    pub fn ensure_base(&self) -> Result<()> {
        step(&format!("image: the base {BASE_IMAGE}"));
        let tarball = self.base_tarball();
        if !tarball.is_file() {
            let partial = partial_output(&tarball)?;
            let mut mmdebstrap = Command::new("mmdebstrap");
            mmdebstrap
                .args(["--variant=apt", "--format=tar", &format!("--include={BASE_PACKAGES}"), BASE_SUITE])
                .arg(&partial);
            run_cmd(&mut mmdebstrap).context("build the base root file system (package mmdebstrap)")?;
            fs::rename(&partial, &tarball)?;
        }
        if self.docker().args(["image", "inspect", BASE_IMAGE]).stdout(Stdio::null()).status()?.success() {
            println!("    skip: the engine has {BASE_IMAGE}");
            return Ok(());
        }
        run_cmd(self.docker().args(["import"]).arg(&tarball).arg(BASE_IMAGE))
    }

    /// Builds `intercept:<version>` from the project's Dockerfile with the release binary the
    /// workspace builds; returns the tag.
    pub fn build_image(&self, ws: &Workspace) -> Result<String> {
        self.ensure_base()?;
        step("image: the release binary");
        run_cmd(ws.cargo().args(["build", "--release", "--package", "intercept", "--bin", "intercept"]))?;
        step("image: docker build");
        // The context holds only the Dockerfile, the licence files and the binary, outside the
        // engine's data root.
        let context = self.dir.join("context");
        let _ = fs::remove_dir_all(&context);
        fs::create_dir_all(context.join("prebuilt"))?;
        for file in std::iter::once("Dockerfile").chain(dist::LICENSES.map(|(file, _)| file)) {
            let to = context.join(file);
            fs::create_dir_all(to.parent().context("a context file has a directory")?)?;
            fs::copy(ws.root.join(file), &to).with_context(|| format!("copy {file} into the build context"))?;
        }
        copy_executable(&ws.target_dir.join("release").join("intercept"), &context.join("prebuilt").join("intercept"))?;
        let tag = format!("intercept:{}", ws.agent_package()?.version);
        let mut build = self.docker();
        build
            .args(["build", "--network", "none", "--build-arg"])
            .arg(format!("BASE={BASE_IMAGE}"))
            .arg("--build-arg")
            .arg(format!("BUILDER={BASE_IMAGE}"))
            .args(["--tag", &tag])
            .arg(&context);
        run_cmd(&mut build)?;
        Ok(tag)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let Some((child, new_dirs)) = self.started.as_mut() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!("xtask: dockerd did not stop within {STOP_TIMEOUT:?}; killing it");
            let _ = child.kill();
        }
        let _ = child.wait();
        // What the engine mounted under its directories and left (its exec root's netns).
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let engine_dir = self.dir.join("engine");
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(&engine_dir))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for mount in mounts {
            let _ = Command::new("umount").args(["--lazy", mount]).status();
        }
        for dir in new_dirs.iter() {
            let _ = fs::remove_dir(dir);
        }
        println!("    stopped the engine at {}", self.host);
    }
}

/// Where to write `output` before renaming it into place: `<output>.partial`, in its directory,
/// which exists when this returns (with an engine at `DOCKER_HOST`, nothing else has made
/// `<target>/containers/` on a fresh checkout, and mmdebstrap refuses an output in a directory
/// that does not exist); an earlier, interrupted run's partial output is gone.
pub fn partial_output(output: &Path) -> Result<PathBuf> {
    let dir = output.parent().context("an output path has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    match fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", partial.display()))
        }
        _ => Ok(partial),
    }
}

fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask image` with an engine at DOCKER_HOST on a fresh checkout: nothing has made
    /// `<target>/containers/` yet.
    #[test]
    fn partial_output_makes_its_directory() {
        let target = tempfile::tempdir().unwrap();
        let tarball = target.path().join("containers").join("base-bookworm.tar");
        let partial = partial_output(&tarball).unwrap();
        assert_eq!(partial, target.path().join("containers").join("base-bookworm.tar.partial"));
        assert!(partial.parent().unwrap().is_dir());
        assert!(!partial.exists());
    }

    #[test]
    fn partial_output_removes_an_interrupted_runs_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("base-bookworm.tar");
        fs::write(dir.path().join("base-bookworm.tar.partial"), "half a tarball").unwrap();
        assert!(!partial_output(&output).unwrap().exists());
    }
}
