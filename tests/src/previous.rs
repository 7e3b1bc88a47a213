//! The previous release's `intercept`, built from git: the build an in-place upgrade starts
//! from.
//!
//! [`PREVIOUS_RELEASE`] is the last commit before the eBPF programs were loaded once per host
//! (map layout 3). Its sources come out of this repository with `git archive` (nothing in the
//! working tree or the repository changes), and it is built with its own target directory
//! under `<target>/previous/`, sharing only the bpf-linker `cargo xtask setup` built. Only the
//! binary is kept there: the sources and the build (gigabytes of debug objects that no later
//! run reads) are removed once it is copied out, so only the first run pays for the build (a
//! few minutes) and CI's disk holds one extra binary, not a second target directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The commit whose build is the previous release (map layout 2).
pub const PREVIOUS_RELEASE: &str = "7a2917d44cd0f73914d4c09974a7fefa36aa8623";

/// How the previous release is built: as the tests build this one (debug), or as the bench
/// measures it (release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Debug,
    Release,
}

/// The previous release's debug binary, built when missing; `Err` says why it cannot be.
pub fn previous_release_bin() -> Result<PathBuf, String> {
    previous_release(Build::Debug)
}

/// The previous release's binary of `build`, built when missing; `Err` says why it cannot be.
pub fn previous_release(build: Build) -> Result<PathBuf, String> {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let name = match build {
        Build::Debug => PREVIOUS_RELEASE.to_owned(),
        Build::Release => format!("{PREVIOUS_RELEASE}-release"),
    };
    let dir = target.join("previous").join(name);
    let bin = dir.join("intercept");
    if bin.is_file() {
        return Ok(bin);
    }
    // Tests run in parallel: one builds, the others wait for it.
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let lock = fs::File::create(dir.join("lock")).map_err(|e| format!("create {}/lock: {e}", dir.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock {}/lock: {e}", dir.display()))?;
    if bin.is_file() {
        return Ok(bin);
    }
    let src = dir.join("src");
    if src.exists() {
        fs::remove_dir_all(&src).map_err(|e| format!("remove {}: {e}", src.display()))?;
    }
    fs::create_dir_all(&src).map_err(|e| format!("create {}: {e}", src.display()))?;
    // `git archive | tar -x`: the commit's tree, without touching the repository.
    let archive = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["archive", "--format=tar", PREVIOUS_RELEASE])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run git archive: {e}"))?;
    let untar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(archive.stdout.ok_or("git archive has no stdout")?)
        .status()
        .map_err(|e| format!("run tar: {e}"))?;
    if !untar.success() {
        return Err(format!(
            "git archive {PREVIOUS_RELEASE} | tar -x failed ({untar}): the repository's history must include the \
             previous release (a shallow clone does not)"
        ));
    }
    // Its build script looks for bpf-linker in its target directory's tools/bin.
    let own_target = dir.join("target");
    fs::create_dir_all(&own_target).map_err(|e| format!("create {}: {e}", own_target.display()))?;
    let tools = own_target.join("tools");
    if !tools.exists() {
        std::os::unix::fs::symlink(target.join("tools"), &tools)
            .map_err(|e| format!("link {}: {e}", tools.display()))?;
    }
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.args(["build", "--locked", "--package", "intercept", "--bin", "intercept"]);
    if build == Build::Release {
        cargo.arg("--release");
    }
    let status = cargo
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &own_target)
        .env_remove("RUSTFLAGS")
        // A one-off build: incremental state and dependencies' debug info would only fill
        // the disk.
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only")
        .status()
        .map_err(|e| format!("run cargo build in {}: {e}", src.display()))?;
    let built = own_target.join(if build == Build::Release { "release" } else { "debug" }).join("intercept");
    if !status.success() || !built.is_file() {
        return Err(format!(
            "building the previous release ({PREVIOUS_RELEASE}) in {} failed: {status}",
            src.display()
        ));
    }
    // Copied under a temporary name and renamed, so a build cut short never leaves a
    // partial binary at `bin`.
    let partial = dir.join("intercept.partial");
    fs::copy(&built, &partial).map_err(|e| format!("copy {} to {}: {e}", built.display(), partial.display()))?;
    fs::rename(&partial, &bin).map_err(|e| format!("rename {} to {}: {e}", partial.display(), bin.display()))?;
    for tree in [&own_target, &src] {
        fs::remove_dir_all(tree).map_err(|e| format!("remove {}: {e}", tree.display()))?;
    }
    Ok(bin)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_owned()
}
