//! `cargo xtask`: developer tasks that work on a fresh machine by themselves.
//!
//! - `setup`: installs what building, testing and `dist` need (nightly rust-src, the musl
//!   targets, bpf-linker, the iptables/nftables/ipset/iproute2 tools); every
//!   step is skipped when already satisfied.
//! - `aarch64`: the aarch64 tests of `test` alone: unit tests under qemu-user, the examples'
//!   checks, and the arm64 VM (see `aarch64.rs`).
//! - `dist`: the static binaries, tarballs, RPMs, .debs, SBOMs and SHA256SUMS in
//!   `<target>/dist/` (see `dist.rs`).
//! - `test`: setup, then formatting, clippy (userspace and eBPF), unit tests (x86_64, and
//!   aarch64 under qemu-user), the static binaries' checks of the examples, and the privileged
//!   integration tests, the AL2023-shaped host, the kernel matrix and the arm64 VM; non-zero exit
//!   if anything fails.
//! - `demo`: setup, then the live demo in a sandbox (namespaces, a test cgroup), with the eBPF
//!   backend or, with `--backend iptables`, the iptables one (as root); other arguments go to
//!   the offline `intercept demo`, which is also what runs without root.
//! - `bench`: setup, then the benchmark of every backend against no interception and the
//!   reference rule shape, in a private sandbox; writes `docs/performance.md` and
//!   `docs/perf/` (`--quick`: a reduced matrix, written to `target/bench/`; `--daemon`: `intercept
//!   daemon`'s memory with 100 tasks).
//! - `soak --minutes N`: setup, then the differential test (every backend against the
//!   decision model on random configurations) for N minutes.
//! - `fuzz --seconds N`: the cargo-fuzz target over every configuration reader for N seconds
//!   (see `fuzz.rs`); non-zero exit and the crashing input's path when it finds a bug.
//! - `kernels [--kernel V]... [--full]`: the eBPF tests on 5.10, 6.1 and 6.12 in virtual
//!   machines (see `kernels.rs`); `test` runs the default set on all three.
//! - `image [--arch amd64|arm64]`: the image `intercept:<version>-<arch>` (amd64's also
//!   `intercept:<version>`) from the Dockerfile with the static binary, in the engine at
//!   `DOCKER_HOST` or a private one (see `containers.rs`); `test` builds amd64's too, for the
//!   container tests.
//! - `host-vm [--kernel 6.1|6.12] [--share DIR]... -- CMD...`: CMD as root in a virtual machine
//!   shaped like an Amazon Linux 2023 ECS host (see `host_vm.rs`), with the working tree's
//!   `intercept` and image; exits with CMD's exit code.

mod aarch64;
mod bench;
mod containers;
mod dist;
mod fuzz;
mod host_vm;
mod kernels;
mod setup;

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for intercept")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker (into <target dir>/tools),
    /// iptables, nftables, ipset, iproute2 (as root, with apt-get).
    Setup,
    /// Setup, then into <target dir>/dist/: the static (musl) release
    /// binaries for x86_64 and aarch64, a tarball, an RPM and a .deb for each, their CycloneDX
    /// SBOMs, SHA256SUMS.
    Dist,
    /// Setup, then fmt check, clippy (userspace and eBPF), unit tests (x86_64; aarch64 under
    /// qemu-user), the static binaries' checks of the examples, privileged tests, kernel matrix.
    Test,
    /// Setup, then the aarch64 build's tests of `test`, alone: its unit tests under qemu-user,
    /// the static binaries' checks of the examples (aarch64 under qemu-user, as x86_64's), and
    /// the arm64 VM (eBPF, iptables and CNI tests on Debian's arm64 6.1 kernel; as root).
    Aarch64,
    /// Setup, then the live demo: sandbox namespaces and cgroup, the eBPF backend (or with
    /// `--backend iptables` the iptables one), real connections; needs root. Any other
    /// arguments (`--help` included) go to the offline `intercept demo`, which also runs
    /// instead of the eBPF demo without root.
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then the benchmark (as root): every variant interleaved in a sandbox, written to
    /// docs/performance.md and docs/perf/; `--quick` runs a reduced matrix into <target dir>/bench/.
    Bench {
        #[arg(long)]
        quick: bool,
        /// Measure `intercept daemon`'s memory with 100 eBPF tasks instead (printed)
        #[arg(long, conflicts_with = "quick")]
        daemon: bool,
        /// Measure DNS queries/s with capture and without, per backend, instead (printed)
        #[arg(long, conflicts_with_all = ["quick", "daemon"])]
        dns: bool,
        /// Measure 1, 100 and 1,000 eBPF tasks on one host instead (with --quick: 1, 10 and 100):
        /// kernel memory, apply time, one task's connection rate; writes its section of
        /// docs/performance.md and docs/perf/host-scale.svg (quick: under <target>/bench/)
        #[arg(long, conflicts_with_all = ["daemon", "dns"])]
        host_scale: bool,
    },
    /// Setup, then the differential test (every backend against the decision model on random
    /// configurations and connections, as root) for MINUTES instead of one batch.
    Soak {
        #[arg(long, value_name = "MINUTES")]
        minutes: u64,
    },
    /// Setup, then the eBPF tests in virtual machines booted with the kernels ECS hosts run
    /// (5.10, 6.1, 6.12; from Debian packages, under QEMU's TCG, as root); one result table,
    /// non-zero exit on any failure.
    Kernels {
        /// Only these kernels (repeatable): 5.10, 6.1, 6.12
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
        /// Every privileged test (iptables and nftables included) but the container ones
        #[arg(long)]
        full: bool,
    },
    /// Setup, then build the image `intercept:<version>-<arch>` (amd64's also
    /// `intercept:<version>`) from the Dockerfile with the static release binary, on a Debian
    /// base of that architecture made from Debian packages, in the engine at DOCKER_HOST or one
    /// started for it (as root; arm64 registers QEMU with binfmt_misc while it builds); prints
    /// the tag as its last line (`intercept:<version>` for amd64).
    Image {
        #[arg(long, default_value = "amd64", value_parser = ["amd64", "arm64"])]
        arch: String,
    },
    /// Setup, then boot a host shaped like Amazon Linux 2023's ECS hosts (systemd, cgroup v2
    /// only, Docker with the systemd cgroup driver, iptables-nft without nft; under QEMU's TCG,
    /// cached under <target dir>/host-vm/) with the working tree's intercept at
    /// /usr/local/bin/intercept and its image loaded into Docker, run CMD there as root once
    /// Docker is up, and exit with its exit code (as root).
    HostVm {
        /// The guest's kernel: 6.1 or 6.12
        #[arg(long, value_name = "VERSION", default_value = host_vm::KERNELS[0])]
        kernel: String,
        /// A directory to share with the guest read-only, at the same path (repeatable)
        #[arg(long = "share", value_name = "DIR")]
        shares: Vec<PathBuf>,
        /// Kill the guest when CMD runs longer than this
        #[arg(long, value_name = "SECONDS", default_value_t = host_vm::DEFAULT_TIMEOUT.as_secs())]
        timeout: u64,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Fuzz every configuration reader and validation (cargo-fuzz, nightly) for N seconds from
    /// the committed seeds, memory and per-input time bounded; installs cargo-fuzz if missing.
    Fuzz {
        #[arg(long, value_name = "N", default_value_t = 60)]
        seconds: u32,
    },
}

/// The workspace this xtask belongs to.
pub struct Workspace {
    pub root: PathBuf,
    /// Honours CARGO_TARGET_DIR and cargo config, as cargo metadata reports it.
    pub target_dir: PathBuf,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let metadata = metadata_of(&manifest)?;
        Ok(Self { root: metadata.workspace_root.into(), target_dir: metadata.target_directory.into() })
    }

    /// The workspace's packages (without their dependencies).
    pub fn metadata(&self) -> Result<cargo_metadata::Metadata> {
        metadata_of(&self.root.join("Cargo.toml"))
    }

    /// The agent's package, `intercept`: its version is the binaries', packages' and images'.
    pub fn agent_package(&self) -> Result<cargo_metadata::Package> {
        self.metadata()?
            .packages
            .into_iter()
            .find(|p| p.name.as_str() == "intercept")
            .context("no intercept package in the workspace")
    }

    /// `cargo` of the toolchain running this xtask, in the workspace root.
    fn cargo(&self) -> Command {
        let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&self.root);
        cmd
    }

    /// `cargo` of the nightly toolchain, in the workspace root.
    fn nightly_cargo(&self) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo"]).current_dir(&self.root);
        // Set when xtask itself runs under cargo; they would pin the stable compiler.
        for key in ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER"] {
            cmd.env_remove(key);
        }
        cmd
    }
}

fn metadata_of(manifest: &Path) -> Result<cargo_metadata::Metadata> {
    cargo_metadata::MetadataCommand::new()
        .manifest_path(manifest)
        .no_deps()
        .exec()
        .with_context(|| format!("cargo metadata --manifest-path {}", manifest.display()))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let ws = Workspace::locate()?;
    match cli.task {
        Task::Setup => setup::run(&ws).map(|()| ExitCode::SUCCESS),
        Task::Dist => dist::run(&ws).map(|()| ExitCode::SUCCESS),
        Task::Aarch64 => {
            setup::run(&ws)?;
            step("aarch64: unit tests under qemu-user");
            run_cmd(&mut aarch64::unit_tests(&ws))?;
            step("aarch64: the static binaries check the examples alike");
            aarch64::check_examples(&ws)?;
            step("aarch64: the arm64 VM");
            Ok(if aarch64::vm_suite(&ws)? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Task::Test => test(&ws),
        Task::Demo { args } => demo(&ws, &args),
        Task::Bench { quick, daemon, dns, host_scale } => bench::run(&ws, quick, daemon, dns, host_scale),
        Task::Soak { minutes } => soak(&ws, minutes),
        Task::Fuzz { seconds } => fuzz::run(&ws, seconds),
        Task::Image { arch } => image(&ws, &arch),
        Task::HostVm { kernel, shares, timeout, command } => {
            host_vm::run(&ws, &kernel, &shares, Duration::from_secs(timeout), &command)
        }
        Task::Kernels { kernels, full } => {
            setup::run(&ws)?;
            if !setup::is_root() {
                bail!("the kernel matrix boots virtual machines that create namespaces and cgroups: run it as root");
            }
            Ok(if kernels::run(&ws, &kernels, full)? { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

fn test(ws: &Workspace) -> Result<ExitCode> {
    setup::run(ws)?;

    if !setup::is_root() {
        println!("note: not running as root: the privileged integration tests will fail, each saying why");
    }

    let mut fmt = ws.cargo();
    fmt.args(["fmt", "--all", "--check"]);
    let mut clippy = ws.cargo();
    // The default members, i.e. everything but the eBPF crate, which only builds for BPF.
    clippy.args(["clippy", "--workspace", "--exclude", "intercept-ebpf", "--all-targets", "--", "-D", "warnings"]);
    let mut clippy_ebpf = ws.nightly_cargo();
    clippy_ebpf.args([
        "clippy",
        "--package",
        "intercept-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    let mut unit = ws.cargo();
    unit.args(["test", "--workspace", "--exclude", "intercept-ebpf", "--exclude", "intercept-tests"]);
    // The CLI tests run the `intercept` binary: build it, and tell them where it is.
    let mut build_cli = ws.cargo();
    build_cli.args(["build", "--package", "intercept", "--bin", "intercept"]);
    let mut privileged = ws.cargo();
    privileged.env("INTERCEPT_BIN", ws.target_dir.join("debug").join("intercept"));
    // The privileged tests are #[ignore]d so that a plain `cargo test` lists them as ignored
    // instead of passing them; here every one runs.
    privileged.args(["test", "--package", "intercept-tests", "--", "--include-ignored", "--skip", host_vm::ONLY_HERE]);

    let checks = [
        ("format", fmt),
        ("clippy", clippy),
        ("clippy (eBPF, nightly, bpfel-unknown-none)", clippy_ebpf),
        ("unit tests", unit),
        ("build the intercept binary (for the CLI tests)", build_cli),
        ("unit tests (aarch64, under qemu-user)", aarch64::unit_tests(ws)),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in checks {
        step(&format!("test: {name}"));
        if let Err(e) = run_cmd(&mut cmd) {
            eprintln!("    FAILED: {e:#}");
            failed.push(name);
        }
    }
    let name = "the static binaries check the examples alike (aarch64 under qemu-user)";
    step(&format!("test: {name}"));
    if let Err(e) = aarch64::check_examples(ws) {
        eprintln!("    FAILED: {e:#}");
        failed.push(name);
    }
    // The container tests run the image in a real engine, kept up while the tests run and
    // stopped after (also when they fail). Without it they fail, saying why.
    step("test: the container engine and the image (for the container tests)");
    let default = containers::DEFAULT_ARCH;
    let engine = match containers::Engine::start(ws).and_then(|engine| Ok((engine.build_image(ws, default)?, engine))) {
        Ok((tag, engine)) => {
            privileged
                .env("DOCKER_HOST", &engine.host)
                .env("INTERCEPT_IMAGE", &tag)
                .env("INTERCEPT_BASE_TARBALL", engine.base_tarball(default));
            Some((engine, tag))
        }
        Err(e) => {
            eprintln!("    FAILED: {e:#}");
            failed.push("the container engine and the image");
            None
        }
    };
    step("test: privileged integration tests (tests/)");
    if let Err(e) = run_cmd(&mut privileged) {
        eprintln!("    FAILED: {e:#}");
        failed.push("privileged integration tests (tests/)");
    }
    step("test: an Amazon Linux 2023-shaped host (systemd, cgroup v2, Docker's systemd driver; 6.1, in a VM)");
    let al2023 = match &engine {
        Some((engine, tag)) => host_vm::test_suite(ws, engine, tag, host_vm::KERNELS[0]),
        None => Err(anyhow::anyhow!("it needs the container engine and the image, which did not start")),
    };
    match al2023 {
        Ok(true) => {}
        Ok(false) => failed.push("the AL2023-shaped host"),
        Err(e) => {
            eprintln!("    FAILED: {e:#}");
            failed.push("the AL2023-shaped host");
        }
    }
    drop(engine);
    step("test: the eBPF tests on the kernels ECS hosts run (5.10, 6.1, 6.12, in virtual machines)");
    match kernels::run(ws, &[], false) {
        Ok(true) => {}
        Ok(false) => failed.push("the kernel matrix"),
        Err(e) => {
            eprintln!("    FAILED: {e:#}");
            failed.push("the kernel matrix");
        }
    }

    step("test: the arm64 VM (eBPF, iptables and the CNI plugin on Graviton's 6.1 kernel, under TCG)");
    match aarch64::vm_suite(ws) {
        Ok(true) => {}
        Ok(false) => failed.push("the arm64 VM"),
        Err(e) => {
            eprintln!("    FAILED: {e:#}");
            failed.push("the arm64 VM");
        }
    }

    println!();
    if failed.is_empty() {
        println!("xtask test: all checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("xtask test: FAILED: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn image(ws: &Workspace, arch: &str) -> Result<ExitCode> {
    setup::run(ws)?;
    let arch = dist::ARCHES
        .into_iter()
        .find(|a| a.debian == arch)
        .with_context(|| format!("--arch {arch}: not one of {}", dist::ARCHES.map(|a| a.debian).join(", ")))?;
    if !setup::is_root() && env::var_os("DOCKER_HOST").is_none() {
        bail!("starting a container engine needs root (or set DOCKER_HOST to an engine you may use)");
    }
    let engine = containers::Engine::start(ws)?;
    let tag = engine.build_image(ws, arch)?;
    drop(engine);
    println!("{tag}");
    Ok(ExitCode::SUCCESS)
}

fn demo(ws: &Workspace, args: &[String]) -> Result<ExitCode> {
    setup::run(ws)?;
    let explicit = args.iter().any(|a| a == "--backend" || a.starts_with("--backend="));
    // No arguments: the live eBPF demo, or the offline one where it cannot run.
    let live = explicit || (args.is_empty() && setup::is_root());
    if args.is_empty() && !live {
        println!(
            "note: not running as root: the offline demo instead of the live eBPF demo \
             (`sudo -E cargo xtask demo`)"
        );
    }
    let mut cmd = if live {
        if !setup::is_root() {
            bail!(
                "the live demo creates network namespaces, cgroups and interception: run it as root, \
                 e.g. `sudo -E cargo xtask demo {}`",
                args.join(" ")
            );
        }
        step("demo: build intercept and the sandbox fixtures");
        run_cmd(ws.cargo().args(["build", "--package", "intercept", "--package", "intercept-tests", "--bins"]))?;
        step("demo: intercept live in sandbox network namespaces");
        let debug = ws.target_dir.join("debug");
        let mut cmd = Command::new(debug.join("intercept-live-demo"));
        cmd.env("INTERCEPT_BIN", debug.join("intercept")).current_dir(&ws.root).args(args);
        cmd
    } else {
        step("demo: intercept demo");
        let mut cmd = ws.cargo();
        cmd.args(["run", "--package", "intercept", "--", "demo"]).args(args);
        cmd
    };
    print_cmd(&cmd);
    let status = cmd.status().with_context(|| format!("run {}", display(&cmd)))?;
    // The demo's own exit status is the answer; pass it on.
    Ok(status.code().and_then(|code| u8::try_from(code).ok()).map_or(ExitCode::FAILURE, ExitCode::from))
}

fn soak(ws: &Workspace, minutes: u64) -> Result<ExitCode> {
    setup::run(ws)?;
    if !setup::is_root() {
        bail!("the soak applies every backend in sandbox namespaces and a test cgroup: run it as root");
    }
    step(&format!("soak: the differential test for {minutes} minute(s)"));
    let mut cmd = ws.cargo();
    cmd.env("INTERCEPT_SOAK_SECONDS", (minutes * 60).to_string());
    cmd.args([
        "test",
        "--package",
        "intercept-tests",
        "--test",
        "differential",
        "--",
        "--include-ignored",
        "--nocapture",
    ]);
    run_cmd(&mut cmd)?;
    Ok(ExitCode::SUCCESS)
}

/// Announces a step.
pub fn step(what: &str) {
    println!("==> {what}");
}

/// Prints, then runs `cmd` with inherited stdio; an error if it does not exit 0.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    print_cmd(cmd);
    let status = cmd.status().with_context(|| format!("run {}", display(cmd)))?;
    if !status.success() {
        bail!("{} exited with {status}", display(cmd));
    }
    Ok(())
}

fn print_cmd(cmd: &Command) {
    println!("    $ {}", display(cmd));
}

/// A command line, with the environment it sets, for humans.
pub fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={}", k.display(), v?.display())));
    let words = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(OsStr::display).map(|w| w.to_string());
    envs.chain(words).collect::<Vec<_>>().join(" ")
}
