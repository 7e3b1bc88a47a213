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

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, ensure};

use crate::{
    Workspace, display,
    dist::{self, AARCH64, X86_64},
};

/// QEMU's user-mode emulator for aarch64 (package qemu-user-static).
pub const QEMU: &str = "qemu-aarch64-static";

/// `cargo test` of the agent's and common's unit tests for aarch64, run under QEMU.
pub fn unit_tests(ws: &Workspace) -> Command {
    let mut cmd = ws.cargo();
    let target = AARCH64.triple.to_uppercase().replace('-', "_");
    cmd.env(format!("CARGO_TARGET_{target}_LINKER"), "rust-lld")
        .env(format!("CARGO_TARGET_{target}_RUNNER"), QEMU)
        .args(["test", "--target", AARCH64.triple, "--package", "intercept", "--package", "intercept-common"])
        .args(["--lib", "--bins"]);
    cmd
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
