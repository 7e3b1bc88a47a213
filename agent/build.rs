//! Builds the eBPF object from `ebpf/` (crate `intercept-ebpf`) with aya-build and leaves it in
//! `OUT_DIR/intercept`, where `src/backend/ebpf.rs` embeds it.
//!
//! aya-build runs `rustup run nightly cargo build --target bpfel-unknown-none -Z build-std=core`,
//! and rustc links the BPF target with `bpf-linker`, looked up on PATH. The bpf-linker that
//! works is the one built against the nightly toolchain's own LLVM, which `cargo xtask setup`
//! installs into `<target dir>/tools/bin`; that directory is put first on PATH here.
//!
//! aya-build keeps its build of the programs under `OUT_DIR`, which is new for every profile
//! and feature set the agent is built with (debug, test, release, clippy, the test crate's),
//! so each would build `core` for the BPF target again (25–30 s). The programs are built the
//! same way whatever the agent's profile, so aya-build is pointed at one directory under the
//! target directory, `ebpf-build/`, shared by all of them, and the object is copied from there.

use std::{env, ffi::OsStr, fs, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;
use cargo_metadata::{Metadata, MetadataCommand, Package};

const EBPF_PACKAGE: &str = "intercept-ebpf";
/// The `bpf_target_arch` the programs are built with, whatever the agent's target.
const EBPF_TARGET_ARCH: &str = "x86_64";

fn main() -> anyhow::Result<()> {
    let Metadata { packages, target_directory, .. } =
        MetadataCommand::new().no_deps().exec().context("cargo metadata")?;

    let tools_bin = target_directory.join("tools").join("bin");
    let bpf_linker = tools_bin.join("bpf-linker");
    // A missing file counts as changed, so after a failed build the script runs again once
    // `cargo xtask setup` has installed the linker; a rebuilt linker also rebuilds the object.
    println!("cargo:rerun-if-changed={bpf_linker}");
    if !bpf_linker.is_file() {
        bail!(
            "bpf-linker not found at {bpf_linker}; it is needed to build the eBPF programs in ebpf/. \
             Run `cargo xtask setup` (it builds bpf-linker against the nightly toolchain's LLVM into \
             {tools_bin})."
        );
    }

    let path = env::var_os("PATH").unwrap_or_default();
    let path = env::join_paths(std::iter::once(PathBuf::from(&tools_bin)).chain(env::split_paths(&path)))
        .context("joining PATH")?;
    set_env("PATH", &path);

    let Package { name, manifest_path, .. } = packages
        .into_iter()
        .find(|Package { name, .. }| name.as_str() == EBPF_PACKAGE)
        .ok_or_else(|| anyhow!("package {EBPF_PACKAGE} not found in the workspace"))?;
    let root_dir = manifest_path.parent().ok_or_else(|| anyhow!("{manifest_path} has no parent"))?;
    let package = aya_build::Package { name: name.as_str(), root_dir: root_dir.as_str(), ..Default::default() };

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    let shared = target_directory.join("ebpf-build").into_std_path_buf();
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Build scripts of several profiles may run at once: one at a time builds into the shared
    // directory and copies the object out, so none reads an object another is writing.
    let lock =
        fs::File::create(shared.join(".lock")).with_context(|| format!("creating {}/.lock", shared.display()))?;
    lock.lock().with_context(|| format!("locking {}/.lock", shared.display()))?;
    set_env("OUT_DIR", shared.as_os_str());
    // aya-build compiles the programs with `bpf_target_arch` set to the agent's target
    // architecture, which only selects aya-ebpf's register layouts (pt_regs, for kprobes). These
    // programs are cgroup and sock_ops hooks that read no registers: built for x86_64 and for
    // aarch64 their code is the same, and only the build path in their debug info differed.
    // One setting for every target makes the x86_64 and aarch64 binaries embed the same object
    // (`cargo xtask dist` checks it) and spares a rebuild of the shared directory per target.
    set_env("CARGO_CFG_TARGET_ARCH", OsStr::new(EBPF_TARGET_ARCH));
    let built = aya_build::build_ebpf([package], Toolchain::default());
    set_env("OUT_DIR", out_dir.as_os_str());
    built.with_context(|| {
        format!(
            "building the eBPF programs in {root_dir} failed (compiler output is above, as \
             warnings). If bpf-linker or the nightly toolchain is the problem, `cargo xtask setup` \
             checks and repairs both."
        )
    })?;
    let built = shared.join("intercept");
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    drop(lock);
    let object = out_dir.join("intercept");
    fs::write(&object, &bytes).with_context(|| format!("writing {}", object.display()))?;

    // An installation records the build that made it, this hash included: a build whose
    // programs differ replaces them (see `backend::ebpf::build`).
    println!("cargo:rustc-env=INTERCEPT_EBPF_OBJECT_HASH={:016x}", fnv1a(&bytes));
    Ok(())
}

/// 64-bit FNV-1a: a stable fingerprint of the object, not a security measure.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn set_env(key: &str, value: &OsStr) {
    // SAFETY: the build script has one thread whenever it changes its environment (aya-build's
    // threads live only inside `build_ebpf`); nothing reads the environment concurrently.
    unsafe { env::set_var(key, value) };
}
