//! The aarch64 (Graviton) build, tested on an x86_64 machine under QEMU's user-mode emulation:
//! `qemu-aarch64-static` runs the aarch64 executables directly (as cargo's runner for the
//! tests), and nothing is registered with the host's binfmt_misc.
//!
//! - The unit tests of the agent and of common, built for `aarch64-unknown-linux-musl`.
//! - The static release binary's `check` of every example task definition: its output and exit
//!   status must be the x86_64 static binary's, and `examples/ec2-taskB.json` must pass.
//!
//! The agent's integration tests (agent/tests) run the binary as a child process, which an
//! emulated process cannot exec without binfmt_misc; they run on x86_64.
//!
//! - [`vm_suite`]: an arm64 virtual machine (qemu-system-aarch64 under TCG, Debian's arm64 6.1
//!   kernel, the kernel Amazon Linux 2023 runs on Graviton) with a Debian arm64 root file
//!   system of its own, made once with mmdebstrap (`<target>/kernels/arm64-root-<recipe>/`).
//!   It runs [`VM_GROUPS`] of the privileged tests, built for aarch64, against the static
//!   aarch64 release binary: the eBPF backend's smoke suite, the iptables backend and the CNI
//!   plugin.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use sha2::{Digest as _, Sha256};

use crate::{
    Workspace, containers, display,
    dist::{self, AARCH64, X86_64},
    host_vm,
    kernels::{self, Group, Machine},
    run_cmd, step,
};

/// QEMU's user-mode emulator for aarch64 (package qemu-user-static).
pub const QEMU: &str = "qemu-aarch64-static";

/// The kernel the VM boots: Amazon Linux 2023's on Graviton (see [`kernels::KERNELS`]).
const VM_KERNEL: &str = "6.1";
/// The guest's packages beyond Debian's minimal base: what the tests run (ip, iptables in both
/// variants, ipset, nft, modprobe, ps) and busybox, which virtme-ng's initramfs is made of.
const VM_PACKAGES: [&str; 7] = ["iproute2", "iptables", "ipset", "nftables", "kmod", "procps", "busybox-static"];
const VM_SUITE: &str = "bookworm";

/// What the arm64 VM runs, one guest for all: the eBPF smoke suite (apply; connections judged
/// against the decision model, IPv4, IPv6 and v4-mapped egress and ingress through sk_lookup;
/// the kernel matrix's eBPF backend group; `status` and `remove` by the CLI; `verify`), the
/// iptables backend (both variants, every decision against the model; the CLI's apply, status
/// and remove) and the CNI plugin's ADD/CHECK/DEL. Chosen to keep a warm run within a few
/// minutes of TCG: the full differential, fault and upgrade suites run on x86_64 and in the
/// kernel matrix.
const VM_GROUPS: [Group; 7] = [
    kernels::EBPF_TRAFFIC,
    kernels::EBPF_BACKEND,
    Group {
        name: "eBPF CLI",
        binary: "ebpf_cli",
        filters: &["apply_exits_interception_continues_status_reports_remove_leaves_nothing"],
        env: &[],
    },
    kernels::VERIFY_EBPF,
    Group {
        name: "iptables traffic",
        binary: "iptables_traffic",
        filters: &["every_decision_matches_the_model_nft", "every_decision_matches_the_model_legacy"],
        env: &[],
    },
    Group {
        name: "iptables CLI",
        binary: "iptables_cli",
        filters: &["apply_status_remove_by_namespace_path"],
        env: &[],
    },
    Group {
        name: "CNI plugin",
        binary: "cni",
        filters: &[
            "add_twice_check_drift_del_twice_del_gone",
            "the_agents_netconfig_every_connection_agrees_with_the_model",
        ],
        env: &[],
    },
];

/// `cargo` for aarch64: linked by rust-lld (no C toolchain for aarch64 is needed), run under
/// QEMU when cargo runs what it built.
fn cargo(ws: &Workspace) -> Command {
    let mut cmd = ws.cargo();
    let target = AARCH64.triple.to_uppercase().replace('-', "_");
    cmd.env(format!("CARGO_TARGET_{target}_LINKER"), "rust-lld").env(format!("CARGO_TARGET_{target}_RUNNER"), QEMU);
    cmd
}

/// `cargo test` of the agent's and common's unit tests for aarch64, run under QEMU.
pub fn unit_tests(ws: &Workspace) -> Command {
    let mut cmd = cargo(ws);
    cmd.args(["test", "--target", AARCH64.triple, "--package", "intercept", "--package", "intercept-common"])
        .args(["--lib", "--bins"]);
    cmd
}

/// Boots the arm64 VM and runs [`VM_GROUPS`] in it; whether every group passed.
pub fn vm_suite(ws: &Workspace) -> Result<bool> {
    let dir = ws.target_dir.join("kernels");
    let vng = kernels::virtme_ng(&dir)?;
    let (kernel, suite) = kernels::kernel(VM_KERNEL)?;
    let extracted = kernels::fetch(&dir, kernel, suite, AARCH64.debian)?;
    let tree = root_tree(&dir)?;
    step("arm64 VM: the tests, built for aarch64");
    let mut build = cargo(ws);
    build.args(["test", "--target", AARCH64.triple, "--package", "intercept-tests"]);
    let binaries = kernels::built_tests(build)?;
    let [bin]: [PathBuf; 1] = dist::build_static(ws, &[&AARCH64])?
        .try_into()
        .map_err(|built| anyhow!("asked for one binary, built {built:?}"))?;
    // What the tests read: their own directory (the working directory), the example task
    // definitions, and what was built for aarch64. Not the whole workspace: vng mounts the
    // writable results directory (under the target directory) first, and a read-only share
    // above it would hide it.
    let shares = [ws.root.join("tests"), ws.root.join("examples"), ws.target_dir.join(AARCH64.triple)];
    step(&format!("arm64 VM: {kernel} ({})", extracted.version));
    let machine = Machine::Foreign { arch: AARCH64.debian, tree: &tree, shares: &shares };
    let outcomes = kernels::boot(ws, &vng, &machine, &extracted, kernel, &VM_GROUPS, &binaries, &bin)?;
    kernels::print_outcomes(&outcomes);
    Ok(outcomes.iter().all(|o| o.passed))
}

/// The guest's root file system: Debian's arm64 minimal base with [`VM_PACKAGES`], made with
/// mmdebstrap (its package scripts run under QEMU through binfmt_misc) when the recipe's tree
/// is missing; trees of other recipes are removed.
fn root_tree(dir: &Path) -> Result<PathBuf> {
    step("arm64 VM: the root file system");
    let mut recipe = Sha256::new();
    for part in [VM_SUITE].into_iter().chain(VM_PACKAGES) {
        recipe.update(part);
        recipe.update([0]);
    }
    let name = format!("arm64-root-{}", &host_vm::hex(&recipe.finalize())[..16]);
    let tree = dir.join(&name);
    if tree.join(".built").is_file() {
        println!("    skip: {} is built", tree.display());
        return Ok(tree);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let stale = path.file_name().and_then(OsStr::to_str).is_some_and(|n| n.starts_with("arm64-root-"));
        if stale {
            std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    let _emulation = containers::Emulation::ensure(&AARCH64)?;
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=minbase", "--mode=root", "--format=directory"])
        .arg(format!("--architectures={}", AARCH64.debian))
        .arg(format!("--include={}", VM_PACKAGES.join(",")))
        .arg(VM_SUITE)
        .arg(&tree);
    run_cmd(&mut mmdebstrap).context("build the arm64 VM's root file system (package mmdebstrap)")?;
    std::fs::write(tree.join(".built"), "")?;
    Ok(tree)
}

/// The static release binaries of both architectures `check` every example task definition
/// alike; the aarch64 one under QEMU.
pub fn check_examples(ws: &Workspace) -> Result<()> {
    let [x86_64, aarch64]: [PathBuf; 2] = dist::build_static(ws, &[&X86_64, &AARCH64])?
        .try_into()
        .map_err(|built| anyhow!("asked for two binaries, built {built:?}"))?;
    let examples = ws.root.join("examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&examples).with_context(|| format!("read {}", examples.display()))? {
        let path = entry?.path();
        if path.extension() != Some(OsStr::new("json")) {
            continue;
        }
        let relative = path.strip_prefix(&ws.root)?;
        let native = check(ws, Command::new(&x86_64), relative)?;
        let mut emulated = Command::new(QEMU);
        emulated.arg(&aarch64);
        let emulated = check(ws, emulated, relative)?;
        ensure!(
            native == emulated,
            "`check --task-definition {}`: the aarch64 binary says\n{}\nthe x86_64 one\n{}",
            relative.display(),
            emulated.1,
            native.1
        );
        println!("    {}: exit {}, the same on aarch64 and x86_64", relative.display(), emulated.0);
        checked.push((relative.to_path_buf(), emulated.0));
    }
    let taskb = (Path::new("examples").join("ec2-taskB.json"), 0);
    ensure!(
        checked.contains(&taskb),
        "the aarch64 binary's check of examples/ec2-taskB.json did not pass: {checked:?}"
    );
    Ok(())
}

/// `<binary> check --task-definition <path>` from the workspace root: exit code and output.
fn check(ws: &Workspace, mut cmd: Command, task_definition: &Path) -> Result<(i32, String)> {
    cmd.args(["check", "--task-definition"]).arg(task_definition).current_dir(&ws.root);
    let out = cmd.output().with_context(|| format!("run {}", display(&cmd)))?;
    let code = out.status.code().with_context(|| format!("{} was killed: {}", display(&cmd), out.status))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((code, text))
}
