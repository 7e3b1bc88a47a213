//! `cargo xtask fuzz --seconds N`: the cargo-fuzz target `config` (fuzz/) for N seconds, with
//! memory and per-input time bounded, starting from the committed seed corpus.
//!
//! cargo-fuzz is installed into `<target dir>/tools` when missing, as `setup` installs
//! bpf-linker there. The fuzzer builds with the nightly toolchain (libFuzzer's coverage
//! instrumentation needs it) and without a sanitizer: the code under test is safe Rust, so
//! AddressSanitizer would only slow it down; overflow checks and debug assertions stay on.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result};

use crate::{Workspace, display, run_cmd, step};

/// Pinned, so a fresh machine builds what this one tested.
const CARGO_FUZZ_VERSION: &str = "0.13.1";
const TARGET: &str = "config";
/// The committed seeds, relative to the workspace root; libFuzzer reads directories
/// recursively. `intercept`'s unit test `the_fuzz_seed_corpus_replays` replays the same list.
const SEED_DIRS: [&str; 3] = ["fuzz/seeds", "examples", "tests/bad-input"];
/// A run whose resident memory passes this is a failure (a crash input is written).
const RSS_LIMIT_MB: u32 = 2048;
/// One input taking longer than this is a hang: a failure too.
const INPUT_TIMEOUT_SECONDS: u32 = 10;

pub fn run(ws: &Workspace, seconds: u32) -> Result<ExitCode> {
    let tools = ws.target_dir.join("tools");
    install_cargo_fuzz(ws, &tools)?;

    // New inputs the fuzzer finds go to the first corpus directory: keep them out of the
    // repository, and the committed seeds as they are.
    let found = ws.target_dir.join("fuzz").join("corpus").join(TARGET);
    fs::create_dir_all(&found).with_context(|| format!("create {}", found.display()))?;
    let artifacts = ws.root.join("fuzz").join("artifacts").join(TARGET);

    step(&format!("fuzz: {TARGET} for {seconds} s"));
    let mut fuzz = fuzz_run(ws, &tools)?;
    fuzz.arg(&found)
        .args(SEED_DIRS)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1");
    if let Err(e) = run_cmd(&mut fuzz) {
        eprintln!("    FAILED: {e:#}");
        match newest_file(&artifacts) {
            Some(input) => eprintln!(
                "    the failing input: {} (replay it: `{}`); fix the bug, then add the input to \
                 tests/bad-input/ (or fuzz/seeds/ when it is valid) as a regression",
                input.display(),
                display(fuzz_run(ws, &tools)?.arg(&input)),
            ),
            None => eprintln!("    no failing input was written under {}", artifacts.display()),
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo fuzz run <target>` with the nightly toolchain, the build settings of every run, and
/// cargo-fuzz from `tools` on PATH; corpus directories or an input to replay come next.
fn fuzz_run(ws: &Workspace, tools: &Path) -> Result<Command> {
    let path = env::join_paths(
        std::iter::once(tools.join("bin")).chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .context("PATH")?;
    let mut fuzz = ws.nightly_cargo();
    fuzz.env("PATH", path)
        .args(["fuzz", "run", "--fuzz-dir", "fuzz", "--sanitizer", "none", "--debug-assertions", "--target-dir"])
        .arg(ws.target_dir.join("fuzz"))
        .arg(TARGET);
    Ok(fuzz)
}

fn install_cargo_fuzz(ws: &Workspace, tools: &Path) -> Result<()> {
    step("fuzz: cargo-fuzz");
    let bin = tools.join("bin").join("cargo-fuzz");
    if Command::new(&bin).args(["fuzz", "--version"]).output().is_ok_and(|out| out.status.success()) {
        println!("    skip: {} is installed", bin.display());
        return Ok(());
    }
    let mut install = ws.cargo();
    install
        // cargo install builds in a temporary directory unless this points it elsewhere.
        .env_remove("CARGO_TARGET_DIR")
        .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked", "--force", "--root"])
        .arg(tools);
    run_cmd(&mut install)
}

/// The most recently written file in `dir`, if any.
fn newest_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max()
        .map(|(_, path)| path)
}
