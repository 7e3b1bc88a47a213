//! `cargo xtask setup`: each step checks first and does nothing when already satisfied.

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, aarch64, display, dist, run_cmd, step};

/// bpf-linker release that builds against the nightly toolchain's LLVM (features llvm-21 to
/// llvm-23); pinned so that a fresh machine builds what this one tested.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the iptables backend and the tests need, and the Debian packages providing them:
/// the backends' tools, and for the container tests and `cargo xtask image` a container engine
/// and what builds the image's base from Debian packages. The CNI plugins are not on PATH: their
/// entry is the path of one.
const SYSTEM_TOOLS: [(&str, &str); 20] = [
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("ipset", "ipset"),
    ("ip", "iproute2"),
    ("dockerd", "docker.io"),
    ("mmdebstrap", "mmdebstrap"),
    // The CNI plugin's runtime test: podman (CNI backend, runc) and the standard plugins.
    ("podman", "podman"),
    ("runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    // The DNS tests' real resolvers and servers.
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
    // The kernel matrix (`cargo xtask kernels`): QEMU, virtme-ng's guest tools, depmod.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("depmod", "kmod"),
    // What is attached to which cgroup, as an operator checks it (the container tests).
    ("bpftool", "bpftool"),
    // The host VM (`cargo xtask host-vm`): its root image, the kernel modules of its initramfs.
    ("mke2fs", "e2fsprogs"),
    ("xz", "xz-utils"),
    // The aarch64 build's tests, under user-mode emulation; mmdebstrap's check that it can run
    // another architecture's packages (the arm64 image's base).
    (aarch64::QEMU, "qemu-user-static"),
    ("arch-test", "arch-test"),
    // The arm64 VM (`cargo xtask aarch64`): a Graviton-like machine under TCG.
    ("qemu-system-aarch64", "qemu-system-arm"),
];

pub fn run(ws: &Workspace) -> Result<()> {
    toolchains()?;
    bpf_linker(ws)?;
    system_tools()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The nightly toolchain with rust-src (eBPF is built with -Z build-std=core) and clippy
/// (eBPF lint); rustfmt, clippy and the musl targets for the toolchain running xtask.
fn toolchains() -> Result<()> {
    step("setup: Rust toolchains");
    if which::which("rustup").is_err() {
        bail!("rustup not found on PATH: install it from https://rustup.rs, then rerun `cargo xtask setup`");
    }

    let host = host_triple()?;
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let nightly = format!("nightly-{host}");
    if !installed.lines().any(|line| line.split_whitespace().next() == Some(nightly.as_str())) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy",
        ]))?;
    } else {
        components(Some("nightly"), &["rust-src", "clippy"])?;
    }
    components(None, &["rustfmt", "clippy"])?;
    musl_targets()
}

/// The static (musl) targets of `cargo xtask dist`, the images and the aarch64 tests.
fn musl_targets() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let missing: Vec<&str> =
        dist::ARCHES.iter().map(|a| a.triple).filter(|t| !installed.lines().any(|line| line == *t)).collect();
    if missing.is_empty() {
        println!("    skip: the targets {} are installed", dist::ARCHES.map(|a| a.triple).join(", "));
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["target", "add"]).args(&missing))
}

/// Adds the `wanted` components missing from `toolchain` (None: the active one).
fn components(toolchain: Option<&str>, wanted: &[&str]) -> Result<()> {
    let with_toolchain = |cmd: &mut Command| {
        if let Some(toolchain) = toolchain {
            cmd.args(["--toolchain", toolchain]);
        }
    };
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    with_toolchain(&mut list);
    let installed = output(&mut list)?;
    // Installed components are listed as `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|line| line == *c || line.starts_with(&format!("{c}-"))))
        .collect();
    let which = toolchain.unwrap_or("active toolchain");
    if missing.is_empty() {
        println!("    skip: {which} has {}", wanted.join(", "));
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add"]).args(&missing);
    with_toolchain(&mut add);
    run_cmd(&mut add)
}

/// bpf-linker built against the nightly toolchain's own libLLVM, in `<target dir>/tools`:
/// `tools/llvm/lib` holds symlinks to that libLLVM (as `libLLVM.so` for the build, and under
/// its soname so the installed binary finds it through its RUNPATH without rustup's
/// LD_LIBRARY_PATH), then `LLVM_PREFIX=tools/llvm cargo install bpf-linker` into `tools`.
fn bpf_linker(ws: &Workspace) -> Result<()> {
    step("setup: bpf-linker");
    let tools = ws.target_dir.join("tools");
    let llvm = tools.join("llvm");
    let linker = tools.join("bin").join("bpf-linker");

    let sysroot =
        PathBuf::from(output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?);
    let (libllvm, llvm_major) = nightly_libllvm(&sysroot.join("lib"))?;
    let lib = llvm.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("create {}", lib.display()))?;
    let soname = libllvm.file_name().context("libLLVM path has a file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        ensure_symlink(&libllvm, &link)?;
    }

    if linker.is_file() {
        match Command::new(&linker).arg("--version").output() {
            Ok(out) if out.status.success() => {
                println!("    skip: {} is built ({})", linker.display(), String::from_utf8_lossy(&out.stdout).trim());
                return Ok(());
            }
            // Typically a nightly update: the binary needs a libLLVM that is gone.
            Ok(out) => println!(
                "    {} does not run ({}); rebuilding it",
                linker.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => println!("    {} does not run ({e}); rebuilding it", linker.display()),
        }
    }

    let mut install = ws.cargo();
    install
        .env("LLVM_PREFIX", &llvm)
        // cargo install builds in a temporary directory unless this points it elsewhere.
        .env_remove("CARGO_TARGET_DIR")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}")])
        .arg("--root")
        .arg(&tools);
    println!("    building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major} (takes a minute or two)");
    run_cmd(&mut install)?;

    let out = Command::new(&linker).arg("--version").output().with_context(|| format!("run {}", linker.display()))?;
    if !out.status.success() {
        bail!("the freshly built {} does not run: {}", linker.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The nightly toolchain's `libLLVM.so.<major>.<minor>-rust-<version>` and its LLVM major.
fn nightly_libllvm(lib: &Path) -> Result<(PathBuf, u32)> {
    let entries = fs::read_dir(lib).with_context(|| format!("read {}", lib.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let name = entry.with_context(|| format!("read {}", lib.display()))?.file_name();
        let Some(version) = name.to_str().and_then(|n| n.strip_prefix("libLLVM.so.")) else { continue };
        if let Some(major) = version.split('.').next().and_then(|m| m.parse::<u32>().ok()) {
            found.push((lib.join(&name), major));
        }
    }
    match <[_; 1]>::try_from(found) {
        Ok([one]) => Ok(one),
        Err(found) => bail!(
            "expected one libLLVM.so.<version> in the nightly toolchain's {}, found {found:?}; \
             reinstall it with `rustup toolchain install nightly --force`",
            lib.display()
        ),
    }
}

/// Makes `link` a symlink to `target`, replacing a symlink that points elsewhere.
fn ensure_symlink(target: &Path, link: &Path) -> Result<()> {
    match fs::read_link(link) {
        Ok(current) if current == target => return Ok(()),
        Ok(_) => fs::remove_file(link).with_context(|| format!("remove stale {}", link.display()))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{} should be a symlink", link.display())),
    }
    symlink(target, link).with_context(|| format!("symlink {} -> {}", link.display(), target.display()))?;
    println!("    linked {} -> {}", link.display(), target.display());
    Ok(())
}

/// iptables, nft, ipset, ip, dockerd, mmdebstrap, podman and the CNI plugins, dnsmasq and dig,
/// QEMU, mke2fs and xz. As root, apt-get installs them; otherwise says how to.
fn system_tools() -> Result<()> {
    step(
        "setup: iptables, nftables, ipset, iproute2, docker.io, mmdebstrap, podman, CNI plugins, dnsmasq, dig, QEMU \
         (system and user-mode), e2fsprogs, xz",
    );
    let missing: Vec<(&str, &str)> = SYSTEM_TOOLS.into_iter().filter(|(cmd, _)| find_tool(cmd).is_none()).collect();
    if missing.is_empty() {
        println!("    skip: {} are installed", SYSTEM_TOOLS.map(|(cmd, _)| cmd).join(", "));
        return Ok(());
    }
    let names = missing.iter().map(|(cmd, pkg)| format!("{cmd} (package {pkg})")).collect::<Vec<_>>().join(", ");
    let packages = missing.iter().map(|(_, pkg)| *pkg).collect::<Vec<_>>();
    if !is_root() {
        println!(
            "    missing: {names}. Not root, so not installing them: run `sudo apt-get install -y {}` \
             (or `sudo -E cargo xtask setup`)",
            packages.join(" ")
        );
        return Ok(());
    }
    if which::which("apt-get").is_err() {
        bail!(
            "missing {names}, and apt-get is not available: install {} with the system's package manager",
            packages.join(" ")
        );
    }
    println!("    missing: {names}");
    run_cmd(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").arg("update"))?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&packages),
    )?;
    let still_missing: Vec<&str> =
        SYSTEM_TOOLS.into_iter().map(|(cmd, _)| cmd).filter(|cmd| find_tool(cmd).is_none()).collect();
    if !still_missing.is_empty() {
        bail!("still missing after apt-get install: {}", still_missing.join(", "));
    }
    Ok(())
}

/// On PATH, or in the sbin directories a non-root PATH often lacks.
fn find_tool(cmd: &str) -> Option<PathBuf> {
    which::which(cmd)
        .ok()
        .or_else(|| ["/usr/sbin", "/sbin"].iter().map(|dir| Path::new(dir).join(cmd)).find(|p| p.is_file()))
}

fn host_triple() -> Result<String> {
    let version = output(Command::new("rustc").arg("-vV"))?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` printed no host triple")
}

/// Runs `cmd` quietly and returns its trimmed stdout; an error (with its stderr) if it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {}", display(cmd)))?;
    if !out.status.success() {
        bail!("{} exited with {}: {}", display(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout)
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("{} printed non-UTF-8", display(cmd)))
}
