//! `cargo xtask kernels`: the eBPF tests on the kernels ECS hosts run (Amazon Linux 2: 5.10;
//! Amazon Linux 2023: 6.1 and 6.12), each booted in a virtual machine.
//!
//! The kernels come from Debian packages (bullseye-security, bookworm-security, trixie), found
//! through a private apt configuration (its own sources, lists and cache under
//! `<target>/kernels/apt`, from the mirrors the host's own apt sources name), downloaded and
//! extracted, never installed; their modules get a `modules.dep` (`depmod -b`) so that the
//! guest can load veth and the netfilter modules. virtme-ng (from PyPI, in a venv of its own)
//! boots each under QEMU's TCG (`/dev/kvm` here is a stub), with the host's root shared
//! read-only, the kernel's modules at `/lib/modules` and a results directory writable. The
//! guest runs the test binaries that `cargo test --no-run` built, and writes each group's
//! exit code and output there: `vng` itself cannot return the guest's exit code here.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Workspace, display, run_cmd, step};

/// The kernels, as `--kernel` names them, and the Debian suite whose `linux-image-amd64` is it.
pub const KERNELS: [(&str, &str); 3] =
    [("5.10", "bullseye-security"), ("6.1", "bookworm-security"), ("6.12", "trixie")];
const VIRTME_NG: &str = "virtme-ng==1.42";
/// A guest that has not finished by then is killed (by pid) and fails.
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);

/// The Debian architectures whose kernels [`fetch`] gets: the machine's own and Graviton's.
pub(crate) const ARCHITECTURES: [&str; 2] = ["amd64", "arm64"];

/// A test binary of `intercept-tests` and the tests of it to run (all when empty).
pub(crate) struct Group {
    pub(crate) name: &'static str,
    pub(crate) binary: &'static str,
    pub(crate) filters: &'static [&'static str],
    pub(crate) env: &'static [(&'static str, &'static str)],
}

/// What runs on every kernel by default: steering and SO_ORIGINAL_DST (IPv4, IPv6, mapped),
/// ingress through sk_lookup, pinning across the applying process's exit and remove, an
/// in-place update, `verify`, DNS capture with real resolvers (the sendmsg and recvmsg hooks),
/// one batch of the differential test for eBPF, and in-place upgrades from the previous release.
const DEFAULT: [Group; 6] = [
    EBPF_TRAFFIC,
    EBPF_BACKEND,
    VERIFY_EBPF,
    Group { name: "DNS resolvers (eBPF)", binary: "dns", filters: &["resolvers_get_the_proxys_answer_ebpf"], env: &[] },
    Group {
        name: "differential (eBPF)",
        binary: "differential",
        filters: &["every_backend_agrees_with_the_model"],
        env: &[("INTERCEPT_DIFFERENTIAL_BACKENDS", "ebpf"), ("PROPTEST_CASES", "8")],
    },
    Group {
        name: "upgrade (eBPF)",
        binary: "upgrade",
        filters: &[
            "connections_in_flight_across_the_upgrade_keep_their_original_destination",
            "the_cli_upgrades_the_previous_release_under_load_and_refuses_what_it_cannot_read",
        ],
        env: &[],
    },
];

/// Steering and SO_ORIGINAL_DST (IPv4, IPv6, v4-mapped) and ingress through sk_lookup, each
/// connection judged against the decision model.
pub(crate) const EBPF_TRAFFIC: Group = Group { name: "eBPF traffic", binary: "ebpf_traffic", filters: &[], env: &[] };

/// Every decision reason; interception outliving the applying process, and remove; IPv6
/// switched off and on in place; the programs reading only the active generation; cgroups kept
/// apart.
pub(crate) const EBPF_BACKEND: Group = Group {
    name: "eBPF backend",
    binary: "ebpf_backend",
    filters: &[
        "every_decision_reason_matches_the_model",
        "interception_outlives_the_applying_process_and_remove_leaves_nothing",
        "ipv6_switched_off_and_reapplied_in_place",
        "the_programs_read_only_the_active_generation",
        "cgroups_are_independent_children_are_intercepted_outsiders_are_not",
    ],
    env: &[],
};

/// `verify` with the eBPF backend. One test at a time: two verifies sharing two emulated CPUs
/// slow each other past its margin. Under emulation verify's own work (probe processes, eBPF
/// status reads) varies by seconds, so its --timeout is checked there by what it reports, and
/// against the clock on the test host only (INTERCEPT_TEST_EMULATED).
pub(crate) const VERIFY_EBPF: Group = Group {
    name: "verify (eBPF)",
    binary: "verify",
    filters: &["verify_ebpf"],
    env: &[("RUST_TEST_THREADS", "1"), ("INTERCEPT_TEST_EMULATED", "1")],
};

/// The test that builds the previous release on the host (the guest sees the host's files
/// read-only), run before a guest that runs the upgrade tests boots.
const PREVIOUS_RELEASE_BUILD: (&str, &str) = ("upgrade", "the_previous_release_is_built");

/// `--full`: every privileged test binary but those that need a container engine.
const FULL: [&str; 16] = [
    "backend_auto",
    "bad_input",
    "daemon",
    "differential",
    "ebpf_backend",
    "ebpf_cli",
    "ebpf_traffic",
    "faults",
    "iptables_cli",
    "iptables_lifecycle",
    "iptables_traffic",
    "nftables_lifecycle",
    "nftables_traffic",
    "privileges",
    "upgrade",
    "verify",
];

/// One group's outcome on one kernel.
pub(crate) struct Outcome {
    kernel: &'static str,
    group: String,
    pub(crate) passed: bool,
    seconds: u64,
}

/// The machine a kernel boots in.
pub(crate) enum Machine<'a> {
    /// The host's architecture, with the host's root file system shared read-only.
    Host,
    /// Another architecture (vng's `--arch`) with a root file system of its own (`tree`), into
    /// which each of `shares` is mounted read-only at its own path.
    Foreign { arch: &'static str, tree: &'a Path, shares: &'a [PathBuf] },
}

pub fn run(ws: &Workspace, kernels: &[String], full: bool) -> Result<bool> {
    let chosen: Vec<(&'static str, &'static str)> =
        if kernels.is_empty() { KERNELS.to_vec() } else { kernels.iter().map(|k| kernel(k)).collect::<Result<_>>()? };
    let dir = ws.target_dir.join("kernels");
    let vng = virtme_ng(&dir)?;
    step("kernels: the test binaries");
    let binaries = test_binaries(ws)?;
    let bin = ws.target_dir.join("debug").join("intercept");
    run_cmd(ws.cargo().args(["build", "--package", "intercept", "--bin", "intercept"]))?;
    let groups: Vec<Group> = if full {
        FULL.iter().map(|b| Group { name: b, binary: b, filters: &[], env: &[] }).collect()
    } else {
        DEFAULT.into()
    };
    if groups.iter().any(|g| g.binary == PREVIOUS_RELEASE_BUILD.0) {
        step("kernels: the previous release, for the upgrade tests");
        let (binary, test) = PREVIOUS_RELEASE_BUILD;
        let exe = binaries
            .iter()
            .find(|(name, _)| name == binary)
            .map(|(_, exe)| exe.clone())
            .with_context(|| format!("no test binary {binary}"))?;
        run_cmd(Command::new(exe).args(["--ignored", "--exact", test]))?;
    }
    let mut outcomes = Vec::new();
    for (kernel, suite) in chosen {
        let extracted = fetch(&dir, kernel, suite, ARCHITECTURES[0])?;
        step(&format!("kernels: {kernel} ({})", extracted.version));
        outcomes.extend(boot(ws, &vng, &Machine::Host, &extracted, kernel, &groups, &binaries, &bin)?);
    }
    print_outcomes(&outcomes);
    Ok(outcomes.iter().all(|o| o.passed))
}

/// A table of the outcomes, with each group's time in the guest.
pub(crate) fn print_outcomes(outcomes: &[Outcome]) {
    println!("\n{:<8} {:<24} {:<8} {:>6}", "kernel", "tests", "result", "time");
    for o in outcomes {
        println!("{:<8} {:<24} {:<8} {:>5}s", o.kernel, o.group, if o.passed { "passed" } else { "FAILED" }, o.seconds);
    }
}

/// The entry of [`KERNELS`] that `--kernel NAME` names.
pub(crate) fn kernel(name: &str) -> Result<(&'static str, &'static str)> {
    KERNELS
        .iter()
        .copied()
        .find(|(k, _)| *k == name)
        .with_context(|| format!("--kernel {name}: one of {}", KERNELS.map(|(k, _)| k).join(", ")))
}

/// virtme-ng in a venv of its own under `dir` (the kernels' directory, `<target>/kernels`),
/// installed when missing.
pub(crate) fn virtme_ng(dir: &Path) -> Result<PathBuf> {
    step("kernels: virtme-ng");
    let venv = dir.join("venv");
    let vng = venv.join("bin").join("vng");
    if vng.is_file() {
        println!("    skip: {} is installed", vng.display());
        return Ok(vng);
    }
    fs::create_dir_all(dir)?;
    if run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv)).is_err() {
        // Debian keeps venv's ensurepip in a package of its own.
        run_cmd(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "--no-install-recommends",
            "python3-venv",
        ]))?;
        let _ = fs::remove_dir_all(&venv);
        run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_cmd(Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", VIRTME_NG]))?;
    Ok(vng)
}

/// A kernel extracted from its package: the image and the modules' root.
pub(crate) struct Extracted {
    pub(crate) version: String,
    pub(crate) vmlinuz: PathBuf,
    /// Holds `<version>/` with the modules and their `modules.dep`.
    pub(crate) modules: PathBuf,
}

/// Downloads and extracts the current `linux-image-<arch>` of `suite` (`arch` one of
/// [`ARCHITECTURES`]) under `dir` (the kernels' directory, `<target>/kernels`), unless it is
/// there.
pub(crate) fn fetch(dir: &Path, kernel: &str, suite: &str, arch: &str) -> Result<Extracted> {
    let root = if arch == ARCHITECTURES[0] {
        dir.join("root").join(kernel)
    } else {
        dir.join("root").join(format!("{kernel}-{arch}"))
    };
    let done = root.join(".extracted");
    if !done.is_file() {
        step(&format!("kernels: download {kernel} ({arch}) from {suite}"));
        let apt = private_apt(dir)?;
        let apt_get = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            cmd.env("APT_CONFIG", &apt).args(["-q", "-o", "APT::Sandbox::User=root"]).args(args);
            cmd
        };
        let meta_package = format!("linux-image-{arch}:{arch}");
        let madison = output(Command::new("apt-cache").env("APT_CONFIG", &apt).args(["madison", &meta_package]))?;
        let meta = madison
            .lines()
            .find(|l| l.contains(&format!(" {suite}/")) && l.ends_with(&format!(" {arch} Packages")))
            .and_then(|l| l.split('|').nth(1))
            .map(str::trim)
            .with_context(|| format!("no {meta_package} in {suite}:\n{madison}"))?;
        let depends = output(
            Command::new("apt-cache").env("APT_CONFIG", &apt).args(["depends", &format!("{meta_package}={meta}")]),
        )?;
        let package = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
            .map(|p| format!("linux-image-{}", p.split(':').next().unwrap_or(p)))
            .with_context(|| format!("no linux-image package behind {meta_package}={meta}:\n{depends}"))?;
        let debs = dir.join("debs");
        fs::create_dir_all(&debs)?;
        run_cmd(apt_get(&["download", &format!("{package}:{arch}")]).current_dir(&debs))?;
        let deb = fs::read_dir(&debs)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_"))))
            .with_context(|| format!("{package} was not downloaded"))?;
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::remove_file(&deb)?;
        if !root.join("lib").exists() {
            // Newer packages ship /usr/lib/modules (merged /usr).
            std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
        }
        let version = package.trim_start_matches("linux-image-").to_owned();
        run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
        fs::write(&done, &version)?;
    }
    let version = fs::read_to_string(&done)?.trim().to_owned();
    Ok(Extracted {
        vmlinuz: root.join("boot").join(format!("vmlinuz-{version}")),
        modules: root.join("lib").join("modules"),
        version,
    })
}

/// An apt configuration of its own (sources, lists, cache) with the suites of [`KERNELS`] for
/// [`ARCHITECTURES`], on the mirrors the host's apt sources use; updated once a day, and when
/// the sources change.
fn private_apt(dir: &Path) -> Result<PathBuf> {
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    let (archive, security) = host_mirrors()?;
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources: String = KERNELS
        .iter()
        .map(|(_, suite)| {
            let uri = if suite.ends_with("-security") { &security } else { &archive };
            format!("deb [arch={} signed-by={keyring}] {uri} {suite} main\n", ARCHITECTURES.join(","))
        })
        .collect();
    fs::write(apt.join("sources.list"), &sources)?;
    let config = apt.join("apt.conf");
    fs::write(
        &config,
        format!(
            "Dir::Etc::SourceList \"{0}/sources.list\";\nDir::Etc::SourceParts \"-\";\nDir::State::Lists \
             \"{0}/lists\";\nDir::Cache \"{0}/cache\";\nDir::State::status \"/dev/null\";\nAPT::Architectures {{ {1} }};\n",
            apt.display(),
            ARCHITECTURES.map(|a| format!("\"{a}\";")).join(" ")
        ),
    )?;
    let stamp = apt.join("lists").join(".updated");
    // The stamp holds the sources the lists were fetched for.
    let fresh = fs::read_to_string(&stamp).is_ok_and(|fetched| fetched == sources)
        && fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() < 86_400));
    if !fresh {
        run_cmd(Command::new("apt-get").env("APT_CONFIG", &config).args(["-q", "update"]))?;
        fs::write(&stamp, &sources)?;
    }
    Ok(config)
}

/// The Debian archive and security mirrors of the host's apt sources (deb822 or one-line).
fn host_mirrors() -> Result<(String, String)> {
    let mut text = String::new();
    for path in ["/etc/apt/sources.list"]
        .into_iter()
        .map(PathBuf::from)
        .chain(fs::read_dir("/etc/apt/sources.list.d").into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())))
    {
        if path.extension().is_some_and(|e| e == "sources" || e == "list") || path.ends_with("sources.list") {
            text.push_str(&fs::read_to_string(&path).unwrap_or_default());
            text.push('\n');
        }
    }
    let (mut archive, mut security, mut uri) = (None, None, None::<String>);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (entry_uri, suites): (Option<&str>, Vec<&str>) = match words.as_slice() {
            ["URIs:", u, ..] => {
                uri = Some((*u).to_owned());
                continue;
            }
            ["Suites:", s @ ..] => (uri.as_deref(), s.to_vec()),
            ["deb", rest @ ..] => {
                let rest: Vec<&str> =
                    rest.iter().copied().filter(|w| !w.starts_with('[') && !w.ends_with(']')).collect();
                (rest.first().copied(), rest.get(1).copied().into_iter().collect())
            }
            _ => continue,
        };
        let Some(entry_uri) = entry_uri else { continue };
        if !entry_uri.contains("debian") {
            continue;
        }
        if suites.iter().any(|s| s.ends_with("-security")) {
            security.get_or_insert_with(|| entry_uri.to_owned());
        } else if !suites.is_empty() {
            archive.get_or_insert_with(|| entry_uri.to_owned());
        }
    }
    match (archive, security) {
        (Some(a), Some(s)) => Ok((a, s)),
        _ => bail!("the host's apt sources name no Debian archive and security mirror to fetch kernels from"),
    }
}

/// The test binaries `cargo test -p intercept-tests --no-run` builds, by target name.
pub(crate) fn test_binaries(ws: &Workspace) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = ws.cargo();
    cmd.args(["test", "--package", "intercept-tests"]);
    built_tests(cmd)
}

/// The test binaries that `cmd` (a `cargo test` of `intercept-tests`) builds with `--no-run`,
/// by target name.
pub(crate) fn built_tests(mut cmd: Command) -> Result<Vec<(String, PathBuf)>> {
    let out = cmd
        .args(["--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", display(&cmd)))?;
    if !out.status.success() {
        bail!("cargo test --no-run failed");
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(exe)) = (message["target"]["name"].as_str(), message["executable"].as_str()) else {
            continue;
        };
        if message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test")) {
            binaries.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    Ok(binaries)
}

/// Boots `kernel` in `machine` and runs `groups` in it, with `bin` as the `intercept` under
/// test; one outcome per group (all failed when the guest did not come back).
#[allow(clippy::too_many_arguments)]
pub(crate) fn boot(
    ws: &Workspace,
    vng: &Path,
    machine: &Machine,
    kernel_files: &Extracted,
    kernel: &'static str,
    groups: &[Group],
    binaries: &[(String, PathBuf)],
    bin: &Path,
) -> Result<Vec<Outcome>> {
    let dir = ws.target_dir.join("kernels");
    let out = match machine {
        Machine::Host => dir.join("out").join(kernel),
        Machine::Foreign { arch, .. } => dir.join("out").join(format!("{kernel}-{arch}")),
    };
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let mut script = String::from("#!/bin/sh\n# Written by cargo xtask kernels; run in the guest.\n");
    script.push_str(&format!(
        "cd {}\nexport CI=true INTERCEPT_BIN={}\n",
        ws.root.join("tests").display(),
        bin.display()
    ));
    for (i, group) in groups.iter().enumerate() {
        let exe = binaries
            .iter()
            .find(|(name, _)| name == group.binary)
            .map(|(_, exe)| exe)
            .with_context(|| format!("no test binary {}", group.binary))?;
        let env: String = group.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let log = out.join(format!("{i}.log"));
        script.push_str(&format!(
            "start=$(date +%s)\n{env}{} --include-ignored --test-threads 1 {} > {} 2>&1\necho \"$? $(( $(date +%s) - \
             start ))\" > {}\n",
            exe.display(),
            group.filters.join(" "),
            log.display(),
            out.join(format!("{i}.rc")).display()
        ));
    }
    let script_path = out.join("guest.sh");
    fs::write(&script_path, script)?;
    fs::set_permissions(&script_path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut cmd = Command::new(vng);
    // vng runs virtme-run from the venv.
    let path = format!("{}:{}", vng.parent().unwrap_or(Path::new("")).display(), env::var("PATH").unwrap_or_default());
    cmd.env("PATH", path)
        .args(["--disable-kvm", "--force-9p", "--cpus", "2", "--memory", "2G", "--run"])
        .arg(&kernel_files.vmlinuz)
        .arg("--rodir")
        .arg(format!("/lib/modules={}", kernel_files.modules.display()));
    match machine {
        Machine::Host => {
            cmd.arg("--rwdir").arg(&out);
        }
        Machine::Foreign { arch, tree, shares } => {
            // vng mounts a directory at the same path of a root of its own, which must have
            // the mount point.
            let mut mount = |option: &str, path: &Path| -> Result<()> {
                let point =
                    tree.join(path.strip_prefix("/").with_context(|| format!("{} is relative", path.display()))?);
                fs::create_dir_all(&point).with_context(|| format!("create {}", point.display()))?;
                cmd.arg(option).arg(format!("{0}={0}", path.display()));
                Ok(())
            };
            for share in *shares {
                mount("--rodir", share)?;
            }
            mount("--rwdir", &out)?;
            cmd.arg("--arch").arg(arch).arg("--root").arg(tree);
        }
    }
    cmd.arg("--exec")
        .arg(&script_path)
        .stdin(Stdio::null())
        .stdout(fs::File::create(out.join("console.log"))?)
        .stderr(fs::File::create(out.join("vng.log"))?);
    println!("    $ {}", display(&cmd));
    let started = Instant::now();
    let mut child = cmd.spawn().context("start vng")?;
    while child.try_wait()?.is_none() {
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            println!("    the guest did not finish within {GUEST_TIMEOUT:?}: killed");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("    guest done in {:.0} s", started.elapsed().as_secs_f64());
    let mut outcomes = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let rc = fs::read_to_string(out.join(format!("{i}.rc"))).unwrap_or_default();
        let mut words = rc.split_whitespace();
        let (code, seconds) =
            (words.next().and_then(|w| w.parse::<i32>().ok()), words.next().and_then(|w| w.parse().ok()));
        let passed = code == Some(0);
        if !passed {
            let log = fs::read_to_string(out.join(format!("{i}.log")))
                .unwrap_or_else(|_| "(no output: the guest did not run it)".into());
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            println!("    {kernel}: {} FAILED:\n{}", group.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        outcomes.push(Outcome { kernel, group: group.name.to_owned(), passed, seconds: seconds.unwrap_or(0) });
    }
    Ok(outcomes)
}

/// Runs `cmd` and returns its stdout; an error with its stderr if it fails.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {}", display(cmd)))?;
    if !out.status.success() {
        bail!("{} failed: {}", display(cmd), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
