//! `cargo xtask bench [--quick]`: builds `intercept` and the bench (`tests/src/bin/
//! intercept-bench.rs`) in release mode and runs it as root; the bench builds the previous
//! release (`tests/src/previous.rs`) in release mode the first time, to measure its eBPF
//! backend beside this one. The full matrix writes
//! `docs/performance.md`, `docs/perf/connection-rate.svg` and `docs/perf/samples.csv`, then the
//! host-scale measurement (below) its section of the same document; a quick
//! run writes the same files under `<target dir>/bench/`, so it never replaces a full run's.
//! `cargo xtask bench --daemon` measures `intercept daemon`'s memory with 100 eBPF tasks
//! instead (printed; docs/daemon.md quotes it), `--dns` DNS queries/s with capture and without
//! (printed; docs/performance.md quotes it), `--host-scale` 1, 100 and 1,000 eBPF tasks on one
//! host (its own section of docs/performance.md and `docs/perf/host-scale.svg`).

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, display, run_cmd, setup, step};

pub fn run(ws: &Workspace, quick: bool, daemon: bool, dns: bool, host_scale: bool) -> Result<ExitCode> {
    setup::run(ws)?;
    if !setup::is_root() {
        bail!(
            "the benchmark creates network namespaces, a cgroup and interception: run it as root, e.g. \
             `sudo -E cargo xtask bench{}`",
            if quick { " --quick" } else { "" }
        );
    }
    step("bench: build intercept and the bench (release)");
    run_cmd(ws.cargo().args([
        "build",
        "--release",
        "--package",
        "intercept",
        "--bin",
        "intercept",
        "--package",
        "intercept-tests",
        "--bin",
        "intercept-bench",
    ]))?;
    let release = ws.target_dir.join("release");
    if dns {
        step("bench: DNS queries/s with capture and without, per backend");
        let mut cmd = Command::new(release.join("intercept-bench"));
        cmd.env("INTERCEPT_BIN", release.join("intercept")).current_dir(&ws.root).arg("dns");
        println!("    $ {}", display(&cmd));
        let status = cmd.status().with_context(|| format!("run {}", display(&cmd)))?;
        return Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    if daemon {
        step("bench: intercept daemon's memory with 100 eBPF tasks");
        let mut cmd = Command::new(release.join("intercept-bench"));
        cmd.env("INTERCEPT_BIN", release.join("intercept")).current_dir(&ws.root).args(["daemon", "--tasks", "100"]);
        println!("    $ {}", display(&cmd));
        let status = cmd.status().with_context(|| format!("run {}", display(&cmd)))?;
        if !status.success() {
            return Ok(ExitCode::FAILURE);
        }
        step("bench: intercept daemon --docker-socket with 100 eBPF tasks from the container engine");
        let engine = crate::containers::Engine::start(ws)?;
        engine.ensure_base(crate::containers::DEFAULT_ARCH)?;
        let mut cmd = Command::new(release.join("intercept-bench"));
        cmd.env("INTERCEPT_BIN", release.join("intercept"))
            .env("DOCKER_HOST", &engine.host)
            .current_dir(&ws.root)
            .args(["daemon", "--docker", "--tasks", "100"]);
        println!("    $ {}", display(&cmd));
        let status = cmd.status().with_context(|| format!("run {}", display(&cmd)))?;
        return Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let (doc, perf_dir) = if quick {
        let dir = ws.target_dir.join("bench");
        (dir.join("performance.md"), dir)
    } else {
        (ws.root.join("docs/performance.md"), ws.root.join("docs/perf"))
    };
    step(match (host_scale, quick) {
        (true, _) => "bench: eBPF tasks on one host",
        (false, true) => "bench: the quick matrix",
        (false, false) => "bench: the full matrix",
    });
    let mut cmd = Command::new(release.join("intercept-bench"));
    cmd.env("INTERCEPT_BIN", release.join("intercept")).current_dir(&ws.root).arg(if host_scale {
        "host-scale"
    } else {
        "run"
    });
    if quick {
        cmd.arg("--quick");
    }
    cmd.arg("--doc").arg(&doc).arg("--perf-dir").arg(&perf_dir);
    println!("    $ {}", display(&cmd));
    let status = cmd.status().with_context(|| format!("run {}", display(&cmd)))?;
    if !status.success() {
        return Ok(ExitCode::FAILURE);
    }
    if host_scale || quick {
        return Ok(ExitCode::SUCCESS);
    }
    // The full run also measures many tasks on one host, into its own section of the same
    // document: every figure of docs/performance.md comes from one run.
    step("bench: eBPF tasks on one host");
    let mut cmd = Command::new(release.join("intercept-bench"));
    cmd.env("INTERCEPT_BIN", release.join("intercept")).current_dir(&ws.root).arg("host-scale");
    cmd.arg("--doc").arg(&doc).arg("--perf-dir").arg(&perf_dir);
    println!("    $ {}", display(&cmd));
    let status = cmd.status().with_context(|| format!("run {}", display(&cmd)))?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
