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
    collections::BTreeMap,
    env, fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sha2::Digest as _;

use crate::{
    Workspace, display,
    dist::{self, Arch},
    run_cmd, step,
};

/// The Debian base: the runtime tools of the iptables and nftables backends, and apt. This is
/// amd64's; another architecture's has its Debian name after a dash.
pub const BASE_IMAGE: &str = "intercept-base:bookworm";
const BASE_SUITE: &str = "bookworm";
/// The architecture of the images' defaults: their tag without an architecture.
pub const DEFAULT_ARCH: &Arch = &dist::X86_64;
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

    /// The cached root file system of `arch`'s base (the container tests import amd64's into
    /// engines of their own).
    pub fn base_tarball(&self, arch: &Arch) -> PathBuf {
        self.dir.join(format!("base-{BASE_SUITE}{}.tar", arch_suffix(arch)))
    }

    /// `arch`'s Debian base, imported from the cached root file system, which is built first
    /// when there is none. Another architecture than the machine's runs its packages' scripts
    /// (mmdebstrap) and the image's build steps under QEMU: see [`Emulation`].
    pub fn ensure_base(&self, arch: &Arch) -> Result<String> {
        let image = format!("{BASE_IMAGE}{}", arch_suffix(arch));
        step(&format!("image: the base {image}"));
        let tarball = self.base_tarball(arch);
        if !tarball.is_file() {
            let partial = partial_output(&tarball)?;
            let mut mmdebstrap = Command::new("mmdebstrap");
            mmdebstrap
                .args(["--variant=apt", "--format=tar", &format!("--include={BASE_PACKAGES}")])
                .arg(format!("--architectures={}", arch.debian))
                .arg(BASE_SUITE)
                .arg(&partial);
            run_cmd(&mut mmdebstrap).context("build the base root file system (package mmdebstrap)")?;
            fs::rename(&partial, &tarball)?;
        }
        if self.docker().args(["image", "inspect", &image]).stdout(Stdio::null()).status()?.success() {
            println!("    skip: the engine has {image}");
            return Ok(image);
        }
        run_cmd(self.docker().args(["import"]).arg(&tarball).arg(&image))?;
        Ok(image)
    }

    /// Builds `intercept:<version>-<arch>` from the project's Dockerfile with the static
    /// release binary of `arch`, on its Debian base; amd64's is also `intercept:<version>`, the
    /// tag returned for it (the other architectures' tag is returned).
    pub fn build_image(&self, ws: &Workspace, arch: &Arch) -> Result<String> {
        let _emulation = Emulation::ensure(arch)?;
        let base = self.ensure_base(arch)?;
        let [binary]: [PathBuf; 1] = dist::build_static(ws, &[arch])?
            .try_into()
            .map_err(|built| anyhow::anyhow!("asked for one binary, built {built:?}"))?;
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
        copy_executable(&binary, &context.join("prebuilt").join("intercept"))?;
        let version = ws.agent_package()?.version;
        let tag = format!("intercept:{version}-{}", arch.debian);
        let mut build = self.docker();
        build
            // No --platform: the classic builder then refuses its own intermediate images (it
            // records them as the engine's platform); the base, imported as `arch`'s, gives the
            // image its architecture.
            .args(["build", "--network", "none", "--build-arg"])
            .arg(format!("BASE={base}"))
            .arg("--build-arg")
            .arg(format!("BUILDER={base}"))
            .args(["--tag", &tag]);
        let default = format!("intercept:{version}");
        if *arch == *DEFAULT_ARCH {
            build.args(["--tag", &default]);
        }
        run_cmd(build.arg(&context))?;
        if arch.name != env::consts::ARCH {
            self.record_architecture(&tag, arch, &context)?;
        }
        Ok(if *arch == *DEFAULT_ARCH { default } else { tag })
    }

    /// The classic builder records what it builds as the engine's architecture (told another
    /// with `--platform`, it refuses its own intermediate images, and `docker import
    /// --platform` is not honoured either), so an image of another architecture is saved, its
    /// configuration's architecture set, and loaded again under the same tag.
    fn record_architecture(&self, tag: &str, arch: &Arch, scratch: &Path) -> Result<()> {
        step(&format!("image: {tag} recorded as linux/{}", arch.debian));
        let saved = scratch.join("saved.tar");
        run_cmd(self.docker().args(["save", "--output"]).arg(&saved).arg(tag))?;
        let mut files = BTreeMap::new();
        for entry in tar::Archive::new(fs::File::open(&saved)?).entries()? {
            let mut entry = entry?;
            if entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut entry, &mut bytes)?;
                files.insert(entry.path()?.to_string_lossy().into_owned(), bytes);
            }
        }
        let files = with_architecture(files, arch)?;
        let loaded = scratch.join("load.tar");
        let mut out = tar::Builder::new(fs::File::create(&loaded)?);
        for (name, bytes) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            out.append_data(&mut header, name, bytes.as_slice())?;
        }
        out.into_inner()?.flush()?;
        run_cmd(self.docker().args(["load", "--input"]).arg(&loaded))?;
        fs::remove_file(&saved)?;
        fs::remove_file(&loaded)?;
        Ok(())
    }
}

/// A saved image (`docker save`'s files by name) whose configuration says `arch`: the
/// configuration is rewritten under its new digest, `manifest.json` names it, and the OCI index
/// (which names the old one) is left out, so that `docker load` reads `manifest.json`.
fn with_architecture(mut files: BTreeMap<String, Vec<u8>>, arch: &Arch) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(files.get("manifest.json").context("no manifest.json in the saved image")?)?;
    let [image] = manifest.as_array_mut().map(Vec::as_mut_slice).context("manifest.json is not a list")? else {
        bail!("the saved image holds other than one image");
    };
    let config_name = image["Config"].as_str().context("manifest.json names no Config")?.to_owned();
    let mut config: serde_json::Value =
        serde_json::from_slice(files.get(&config_name).with_context(|| format!("no {config_name}"))?)?;
    config["architecture"] = serde_json::json!(arch.debian);
    let config = serde_json::to_vec(&config)?;
    let name = format!("blobs/sha256/{:x}", sha2::Sha256::digest(&config));
    image["Config"] = serde_json::json!(name);
    files.remove(&config_name);
    files.insert(name, config);
    files.insert("manifest.json".to_owned(), serde_json::to_vec(&manifest)?);
    files.remove("index.json");
    Ok(files)
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

/// What follows the base's name for `arch`: nothing for the default architecture's.
fn arch_suffix(arch: &Arch) -> String {
    if *arch == *DEFAULT_ARCH { String::new() } else { format!("-{}", arch.debian) }
}

/// QEMU registered with the kernel's binfmt_misc for an architecture other than the machine's,
/// so that mmdebstrap can run that architecture's package scripts and the engine its image's
/// build steps; what systemd-binfmt does at boot with qemu-user-static installed, from the
/// same file (`/usr/lib/binfmt.d/qemu-<arch>.conf`, whose `F` flag keeps the interpreter open
/// for containers). Undone on drop: the registration if made here, and the mount if made here.
pub struct Emulation {
    registered: Option<PathBuf>,
    mounted: bool,
}

const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

impl Emulation {
    /// Nothing for the machine's own architecture.
    pub fn ensure(arch: &Arch) -> Result<Option<Emulation>> {
        if arch.name == env::consts::ARCH {
            return Ok(None);
        }
        step(&format!("{} binaries run under QEMU (binfmt_misc)", arch.name));
        let mut emulation = Emulation { registered: None, mounted: false };
        if !Path::new(BINFMT_MISC).join("register").exists() {
            run_cmd(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT_MISC]))?;
            emulation.mounted = true;
        }
        let entry = Path::new(BINFMT_MISC).join(format!("qemu-{}", arch.name));
        if entry.exists() {
            println!("    skip: {} is registered", entry.display());
            return Ok(Some(emulation));
        }
        let conf = PathBuf::from(format!("/usr/lib/binfmt.d/qemu-{}.conf", arch.name));
        let rule =
            fs::read_to_string(&conf).with_context(|| format!("read {} (package qemu-user-static)", conf.display()))?;
        let rule =
            rule.lines().find(|l| l.starts_with(':')).with_context(|| format!("no rule in {}", conf.display()))?;
        fs::write(Path::new(BINFMT_MISC).join("register"), rule)
            .with_context(|| format!("register {} with binfmt_misc", conf.display()))?;
        println!("    registered {}", entry.display());
        emulation.registered = Some(entry);
        Ok(Some(emulation))
    }
}

impl Drop for Emulation {
    fn drop(&mut self) {
        if let Some(entry) = &self.registered {
            let _ = fs::write(entry, "-1");
        }
        if self.mounted {
            let _ = Command::new("umount").arg(BINFMT_MISC).status();
        }
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
    fn a_saved_image_gets_its_architecture_under_a_new_config_digest() {
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/usr/local/bin/intercept"]}}"#;
        let manifest = br#"[{"Config":"1234.json","RepoTags":["intercept:0.1.0-arm64"],"Layers":["ab/layer.tar"]}]"#;
        let saved = BTreeMap::from([
            ("manifest.json".to_owned(), manifest.to_vec()),
            ("1234.json".to_owned(), config.to_vec()),
            ("ab/layer.tar".to_owned(), b"layer".to_vec()),
            ("index.json".to_owned(), b"{}".to_vec()),
        ]);
        let files = with_architecture(saved, &dist::AARCH64).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        let name = manifest[0]["Config"].as_str().unwrap();
        let config: serde_json::Value = serde_json::from_slice(&files[name]).unwrap();
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/intercept");
        assert_eq!(name, format!("blobs/sha256/{:x}", sha2::Sha256::digest(&files[name])));
        assert_eq!(manifest[0]["RepoTags"][0], "intercept:0.1.0-arm64");
        assert!(!files.contains_key("1234.json") && !files.contains_key("index.json"));
        assert_eq!(files["ab/layer.tar"], b"layer");
    }

    /// The container tests and the bench know amd64's base by its name without an architecture.
    #[test]
    fn only_other_architectures_name_theirs() {
        assert_eq!(arch_suffix(&dist::X86_64), "");
        assert_eq!(arch_suffix(&dist::AARCH64), "-arm64");
    }

    #[test]
    fn partial_output_removes_an_interrupted_runs_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("base-bookworm.tar");
        fs::write(dir.path().join("base-bookworm.tar.partial"), "half a tarball").unwrap();
        assert!(!partial_output(&output).unwrap().exists());
    }
}
