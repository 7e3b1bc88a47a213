//! `cargo xtask host-vm`: a host shaped like the ECS-optimized Amazon Linux 2023 AMI (see
//! `../shared/reference/ecs-proxy-configuration.md`), booted under QEMU's TCG, that runs one
//! command as root once Docker is up and returns its exit code.
//!
//! - **The root file system** is made from Debian packages (`mmdebstrap`): systemd as PID 1,
//!   Docker (`docker.io`) with its default cgroup driver, which is systemd on a cgroup-v2 host,
//!   iptables (the nf_tables variant, Debian's default) without the `nft` command, python3 and
//!   iproute2. It is an ext4 image, `<target>/host-vm/root-<recipe hash>.img`, built once and
//!   rebuilt only when the recipe below changes. Its first boot loads the project image's base
//!   into its Docker, so that a boot loads only the image's own layers. Every later boot writes
//!   to a throwaway snapshot (QEMU's `snapshot=on`), never to the image.
//! - **The kernels** are those `cargo xtask kernels` fetches (6.1 and 6.12, the ones AL2023
//!   offers). Debian builds virtio, ext4 and 9p as modules, so a small initramfs per kernel
//!   (`<target>/host-vm/initrd-<version>-<hash>.cpio`: static busybox, those modules and
//!   [`init`](../host-vm/init)) mounts the root disk and the kernel's module tree (a read-only
//!   9p share of the extracted package) and starts systemd. The kernel boots cgroup v2 only.
//! - **A boot** shares an exchange directory (`<target>/host-vm/run/`) with the guest: the
//!   command, the working tree's static release `intercept`, the project's image as `docker save`
//!   wrote it (cached per image id under `<target>/host-vm/images/`), and the `--share`
//!   directories to mount. The guest's `host-vm.service` ([`run`](../host-vm/run)) waits for
//!   Docker, loads the image, runs the command with its output in that directory (printed here
//!   as it comes), writes its exit code and powers off. A guest that does not get to the
//!   command in [`BOOT_TIMEOUT`], or whose command outlasts its timeout, is killed.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::{
    Workspace, containers, display,
    kernels::{self, Extracted},
    run_cmd, setup, step,
};

/// The kernels Amazon Linux 2023 offers, as `--kernel` names them.
pub const KERNELS: [&str; 2] = ["6.1", "6.12"];
const SUITE: &str = "bookworm";
/// What the AMI has that the tests use: systemd (and D-Bus, which Docker's systemd cgroup driver
/// talks to), Docker, iptables, python3, iproute2, kmod (modprobe, for Docker and netfilter);
/// and bpftool, with which the tests look at what is attached to the host's cgroups, as an
/// operator would. Recommends are not installed, so iptables comes without nftables and its `nft`.
const PACKAGES: [&str; 9] =
    ["systemd", "systemd-sysv", "dbus", "docker.io", "iptables", "python3", "iproute2", "kmod", "bpftool"];
/// The image's size; it is sparse, and room for Docker's images and containers.
const DISK_SIZE: &str = "4G";
/// Files put into the root file system: (path, contents, mode). Docker's daemon.json leaves the
/// engine without networking of its own (no bridge, no iptables rules): the guest has no
/// network beyond loopback, and tests bring their own namespaces. journald keeps its journal in
/// memory: nothing of a boot outlives it.
const GUEST_FILES: [(&str, &str, u32); 5] = [
    ("etc/systemd/system/host-vm.service", include_str!("../host-vm/host-vm.service"), 0o644),
    ("usr/local/lib/host-vm/run", include_str!("../host-vm/run"), 0o755),
    ("etc/docker/daemon.json", include_str!("../host-vm/daemon.json"), 0o644),
    ("etc/hostname", "host-vm\n", 0o644),
    ("etc/systemd/journald.conf.d/host-vm.conf", "[Journal]\nStorage=volatile\n", 0o644),
];
/// Units that would only slow a boot that lives for one command: logins and gettys, timers,
/// and what keeps records across boots (no boot is kept).
const MASKED: [&str; 11] = [
    "getty.target",
    "serial-getty@ttyS0.service",
    "console-getty.service",
    "timers.target",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_reap.service",
    "systemd-logind.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
];
/// The command of the boot that prepares a new root image, after the base is loaded: Docker
/// stopped and the root read-only, so that the disk is clean when the guest powers off.
const PROVISION: &str =
    "systemctl stop docker.socket docker.service containerd.service && sync && mount -o remount,ro /";
/// The initramfs's `/init`.
const INIT: &str = include_str!("../host-vm/init");
/// What the initramfs loads to reach the root disk and the 9p shares, dependencies found in
/// `modules.dep`; built into the kernel is fine. ext4 asks the crypto API for crc32c, which
/// nothing loads on demand before the root is mounted.
const INITRD_MODULES: [&str; 6] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "9pnet_virtio", "9p"];
/// The kernel's command line: cgroup v2 only (systemd's unified hierarchy, and no v1
/// controller the kernel could hand out); no AppArmor, which Amazon Linux does not have and
/// Docker would fail to start containers under without its profile loader; a panic ends the
/// VM instead of hanging it.
const KERNEL_ARGS: &str = "console=ttyS0 panic=-1 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all apparmor=0 \
                           systemd.show_status=false";
/// From starting QEMU to the command starting: a cold TCG boot, Docker, `docker load`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// The default bound of the command itself (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// `cargo xtask host-vm`: builds the image and the host (when not cached), boots it, runs
/// `command` there and exits with its exit code.
pub fn run(
    ws: &Workspace,
    kernel: &str,
    shares: &[PathBuf],
    timeout: Duration,
    command: &[String],
) -> Result<ExitCode> {
    setup::run(ws)?;
    if !setup::is_root() {
        bail!("the host VM's root file system is made with mmdebstrap and chroot: run it as root");
    }
    step("host-vm: the image");
    let engine = containers::Engine::start(ws)?;
    let tag = engine.build_image(ws, containers::DEFAULT_ARCH)?;
    let vm = HostVm::prepare(ws, kernel, &engine, &tag)?;
    drop(engine);
    let code = vm.run(shares, command, timeout)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
}

/// A host ready to boot: the root image, one kernel with its initramfs, the binary and the
/// image to put into it.
pub struct HostVm {
    dir: PathBuf,
    root: PathBuf,
    kernel: Extracted,
    initrd: PathBuf,
    binary: PathBuf,
    image: PathBuf,
}

impl HostVm {
    /// Builds what is not cached: `kernel` (one of [`KERNELS`]) and its initramfs, the root
    /// image, `tag` saved from `engine`. `engine` has `tag` and its base, as
    /// [`containers::Engine::build_image`] leaves it, which also builds the release binary.
    pub fn prepare(ws: &Workspace, kernel: &str, engine: &containers::Engine, tag: &str) -> Result<HostVm> {
        if !KERNELS.contains(&kernel) {
            bail!("--kernel {kernel}: the host VM boots the kernels Amazon Linux 2023 offers: {}", KERNELS.join(", "));
        }
        let dir = ws.target_dir.join("host-vm");
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let (name, suite) = kernels::kernel(kernel)?;
        step(&format!("host-vm: kernel {name}"));
        let kernel = kernels::fetch(&ws.target_dir.join("kernels"), name, suite, kernels::ARCHITECTURES[0])?;
        let initrd = initrd(&dir, &kernel)?;
        let root = root_image(&dir, engine, &kernel, &initrd)?;
        step(&format!("host-vm: {tag} for the guest"));
        let image = saved_image(&dir, engine, tag)?;
        // The static binary the image holds, as operators get it.
        let binary = ws.target_dir.join(containers::DEFAULT_ARCH.triple).join("release").join("intercept");
        Ok(HostVm { binary, dir, root, kernel, initrd, image })
    }

    /// Boots the host, shares each of `shares` read-only at its own path, runs `command` as
    /// root once Docker is up (in `/`, with systemd's PATH and HOME=/root; its stdout and
    /// stderr printed here as they come) and returns its exit code; an error when the guest
    /// did not run it to the end. One boot at a time per target directory: they share
    /// `<target>/host-vm/run/`.
    pub fn run(&self, shares: &[PathBuf], command: &[String], timeout: Duration) -> Result<i32> {
        step(&format!("host-vm: boot {} and run {}", self.kernel.version, command.join(" ")));
        let boot = Boot {
            disk: &self.root,
            snapshot: true,
            kernel: &self.kernel,
            initrd: &self.initrd,
            binary: Some(&self.binary),
            image: &self.image,
        };
        boot.run(&self.dir.join("run"), shares, command, timeout)
    }
}

/// One boot of a disk.
struct Boot<'a> {
    disk: &'a Path,
    /// Writes go to a throwaway snapshot, not to `disk`.
    snapshot: bool,
    kernel: &'a Extracted,
    initrd: &'a Path,
    /// Installed as /usr/local/bin/intercept.
    binary: Option<&'a Path>,
    /// Loaded into Docker before the command runs.
    image: &'a Path,
}

impl Boot<'_> {
    /// Boots with `io` as the exchange directory (emptied first), runs `command`; its exit code.
    fn run(&self, io: &Path, shares: &[PathBuf], command: &[String], timeout: Duration) -> Result<i32> {
        let _ = fs::remove_dir_all(io);
        fs::create_dir_all(io).with_context(|| format!("create {}", io.display()))?;
        let script: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
        fs::write(io.join("command"), format!("exec {}\n", script.join(" ")))?;
        let mut shared = Vec::new();
        let mut listed = String::new();
        for (i, share) in shares.iter().enumerate() {
            let path = fs::canonicalize(share).with_context(|| format!("--share {}", share.display()))?;
            let text = path.to_str().filter(|p| !p.contains('\n')).with_context(|| {
                format!("--share {}: the guest mounts paths of UTF-8 text on one line", path.display())
            })?;
            if !path.is_dir() {
                bail!("--share {}: not a directory", path.display());
            }
            listed.push_str(&format!("share{i} {text}\n"));
            shared.push((format!("share{i}"), path, true));
        }
        fs::write(io.join("shares"), listed)?;
        if let Some(binary) = self.binary {
            link_or_copy(binary, &io.join("intercept"))?;
        }
        link_or_copy(self.image, &io.join("image.tar"))?;
        shared.push(("modules".into(), self.kernel.modules.clone(), true));
        shared.push(("io".into(), io.to_owned(), false));

        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", KERNEL_ARGS])
            .arg("-serial")
            .arg(format!("file:{}", io.join("console.log").display()))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,{}",
                qemu_path(self.disk),
                // A snapshot is thrown away, so nothing needs to reach the disk.
                if self.snapshot { "snapshot=on,cache=unsafe" } else { "cache=writeback" }
            ));
        for (tag, path, readonly) in &shared {
            qemu.arg("-virtfs").arg(format!(
                "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
                qemu_path(path),
                if *readonly { ",readonly=on" } else { "" }
            ));
        }
        let log = io.join("qemu.log");
        let log_file = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        qemu.stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
        println!("    $ {}", display(&qemu));
        let started = Instant::now();
        let mut child = qemu.spawn().context("start qemu-system-x86_64 (package qemu-system-x86)")?;
        let mut tails = [
            Tail::new(io.join("guest.log"), Sink::Stdout),
            Tail::new(io.join("stdout"), Sink::Stdout),
            Tail::new(io.join("stderr"), Sink::Stderr),
        ];
        let mut command_started = None;
        let killed = loop {
            for tail in &mut tails {
                tail.follow();
            }
            if child.try_wait()?.is_some() {
                break None;
            }
            if command_started.is_none() && io.join("started").exists() {
                command_started = Some(Instant::now());
            }
            let over = match command_started {
                None if started.elapsed() > BOOT_TIMEOUT => {
                    Some(format!("did not start the command within {} s", BOOT_TIMEOUT.as_secs()))
                }
                Some(at) if at.elapsed() > timeout => {
                    Some(format!("ran the command for more than {} s", timeout.as_secs()))
                }
                _ => None,
            };
            if let Some(why) = over {
                // Only the QEMU started here, by its pid.
                let _ = child.kill();
                let _ = child.wait();
                break Some(why);
            }
            thread::sleep(Duration::from_millis(100));
        };
        for tail in &mut tails {
            tail.follow();
        }
        println!("    guest done in {:.0} s", started.elapsed().as_secs_f64());
        let console = || {
            let text = fs::read_to_string(io.join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            format!(
                "the guest's console ({}) ends:\n{}\nQEMU said: {}",
                io.join("console.log").display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                fs::read_to_string(&log).unwrap_or_default().trim()
            )
        };
        if let Some(why) = killed {
            bail!("the host VM {why}: killed it\n{}", console());
        }
        if let Ok(error) = fs::read_to_string(io.join("error")) {
            bail!("the host VM could not run the command: {}", error.trim());
        }
        match fs::read_to_string(io.join("rc")) {
            Ok(rc) => rc.trim().parse().with_context(|| format!("the guest wrote an exit code of {rc:?}")),
            Err(_) => bail!("the host VM stopped without running the command to its end\n{}", console()),
        }
    }
}

/// The cached root image of the current recipe, built first when missing; images of other
/// recipes are removed. The build boots it once (with `kernel`) to load the project image's
/// base into its Docker: a boot then loads only the image's own layers.
fn root_image(dir: &Path, engine: &containers::Engine, kernel: &Extracted, initrd: &Path) -> Result<PathBuf> {
    let (base, _) = inspect(engine, containers::BASE_IMAGE)?;
    let mut recipe = Sha256::new();
    for part in [SUITE, DISK_SIZE, PROVISION, &base].into_iter().chain(PACKAGES).chain(MASKED) {
        recipe.update(part);
        recipe.update([0]);
    }
    for (path, contents, mode) in GUEST_FILES {
        recipe.update(format!("{path}\0{contents}\0{mode:o}\0"));
    }
    let name = format!("root-{}.img", &hex(&recipe.finalize())[..16]);
    let image = dir.join(&name);
    step("host-vm: the root file system");
    if image.is_file() {
        println!("    skip: {} is built", image.display());
        return Ok(image);
    }
    remove_stale(dir, "root-", &name)?;
    let tree = dir.join("root.partial");
    let partial = dir.join("root.img.partial");
    let base_tar = dir.join("base.tar.partial");
    // An earlier run's, interrupted.
    let _ = fs::remove_dir_all(&tree);
    let _ = fs::remove_file(&partial);
    let _ = fs::remove_file(&base_tar);
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=minbase", "--mode=root", "--format=directory"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&tree);
    run_cmd(&mut mmdebstrap).context("build the host's root file system (package mmdebstrap)")?;
    for (path, contents, mode) in GUEST_FILES {
        let file = tree.join(path);
        fs::create_dir_all(file.parent().context("a guest file has a directory")?)?;
        fs::write(&file, contents).with_context(|| format!("write {}", file.display()))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))?;
    }
    let systemctl = |args: &[&str]| run_cmd(Command::new("chroot").arg(&tree).arg("systemctl").args(args));
    systemctl(&["set-default", "multi-user.target"])?;
    systemctl(&["enable", "host-vm.service"])?;
    systemctl(&[&["mask"][..], &MASKED].concat())?;
    check_root(&tree)?;
    run_cmd(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "host-vm", "-d"])
            .arg(&tree)
            .arg(&partial)
            .arg(DISK_SIZE),
    )
    .context("make the root image (package e2fsprogs)")?;
    fs::remove_dir_all(&tree)?;
    step(&format!("host-vm: {} into the root image's Docker", containers::BASE_IMAGE));
    run_cmd(engine.docker().args(["save", "--output"]).arg(&base_tar).arg(containers::BASE_IMAGE))?;
    let boot = Boot { disk: &partial, snapshot: false, kernel, initrd, binary: None, image: &base_tar };
    let command = ["sh".to_owned(), "-c".to_owned(), PROVISION.to_owned()];
    let code = boot.run(&dir.join("provision"), &[], &command, BOOT_TIMEOUT)?;
    if code != 0 {
        bail!("preparing the root image in its first boot failed (exit code {code}): see above");
    }
    fs::remove_file(&base_tar)?;
    fs::rename(&partial, &image)?;
    Ok(image)
}

/// What the host must be, checked on the built tree: no `nft` (nor the nftables package), and
/// `iptables` the nf_tables variant.
fn check_root(tree: &Path) -> Result<()> {
    for nft in ["usr/sbin/nft", "usr/bin/nft"] {
        if tree.join(nft).exists() {
            bail!("the host's root file system has /{nft}; Amazon Linux 2023 has no nft command");
        }
    }
    let iptables = fs::read_link(tree.join("etc/alternatives/iptables")).context("iptables has no alternative")?;
    if !iptables.ends_with("iptables-nft") {
        bail!("iptables in the host's root file system is {}, not the nf_tables variant", iptables.display());
    }
    Ok(())
}

/// The kernel's initramfs: static busybox, [`INITRD_MODULES`] and their dependencies
/// (decompressed: busybox's insmod reads plain modules), and [`INIT`]; cached per kernel
/// version and recipe.
fn initrd(dir: &Path, kernel: &Extracted) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    let mut recipe = Sha256::new();
    recipe.update(INIT);
    for module in INITRD_MODULES {
        recipe.update(module);
        recipe.update([0]);
    }
    recipe.update(fs::read(busybox).context("read /bin/busybox (package busybox-static)")?);
    let name = format!("initrd-{}-{}.cpio", kernel.version, &hex(&recipe.finalize())[..16]);
    let initrd = dir.join(&name);
    if initrd.is_file() {
        return Ok(initrd);
    }
    remove_stale(dir, &format!("initrd-{}-", kernel.version), &name)?;
    let modules = kernel.modules.join(&kernel.version);
    let order = load_order(&modules)?;
    let staging = dir.join("initrd.partial");
    let _ = fs::remove_dir_all(&staging);
    let mut entries = vec![".".to_owned()];
    for sub in ["bin", "modules", "newroot", "proc", "sys", "dev"] {
        fs::create_dir_all(staging.join(sub))?;
        entries.push(sub.into());
    }
    fs::copy(busybox, staging.join("bin/busybox"))?;
    fs::write(staging.join("init"), INIT)?;
    fs::set_permissions(staging.join("init"), fs::Permissions::from_mode(0o755))?;
    entries.extend(["bin/busybox".into(), "init".into(), "modules/order".into()]);
    let mut listed = String::new();
    for (module, path) in &order {
        let file = format!("{module}.ko");
        decompress(&modules.join(path), &staging.join("modules").join(&file))?;
        entries.push(format!("modules/{file}"));
        listed.push_str(&file);
        listed.push('\n');
    }
    fs::write(staging.join("modules/order"), listed)?;
    let partial = dir.join("initrd.cpio.partial");
    let mut cpio = Command::new("busybox");
    cpio.args(["cpio", "-o", "-H", "newc"])
        .current_dir(&staging)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&partial)?);
    let mut child = cpio.spawn().context("run busybox cpio")?;
    child.stdin.take().context("cpio's stdin")?.write_all(format!("{}\n", entries.join("\n")).as_bytes())?;
    if !child.wait()?.success() {
        bail!("{} failed", display(&cpio));
    }
    fs::remove_dir_all(&staging)?;
    fs::rename(&partial, &initrd)?;
    Ok(initrd)
}

/// [`INITRD_MODULES`] that are modules of this kernel and what they need, dependencies first:
/// (name, path under the modules' directory). One that is neither a module nor built in is an
/// error.
fn load_order(modules: &Path) -> Result<Vec<(String, String)>> {
    let read = |name: &str| {
        fs::read_to_string(modules.join(name)).with_context(|| format!("read {}", modules.join(name).display()))
    };
    let (dep, builtin) = (read("modules.dep")?, read("modules.builtin")?);
    let name_of = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let deps: Vec<(String, String, Vec<String>)> = dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(path, needs)| (name_of(path), path.to_owned(), needs.split_whitespace().map(name_of).collect()))
        .collect();
    let builtin: Vec<String> = builtin.lines().map(name_of).collect();
    fn visit(name: &str, deps: &[(String, String, Vec<String>)], order: &mut Vec<(String, String)>) -> Result<bool> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(true);
        }
        let Some((_, path, needs)) = deps.iter().find(|(n, _, _)| n == name) else { return Ok(false) };
        for need in needs {
            if !visit(need, deps, order)? {
                bail!("{name} needs {need}, which modules.dep does not list");
            }
        }
        order.push((name.to_owned(), path.clone()));
        Ok(true)
    }
    let mut order = Vec::new();
    for module in INITRD_MODULES {
        if !visit(module, &deps, &mut order)? && !builtin.iter().any(|b| b == module) {
            bail!("the kernel in {} has no {module}, neither as a module nor built in", modules.display());
        }
    }
    Ok(order)
}

/// Copies a module, decompressing `.ko.xz` and `.ko.zst`.
fn decompress(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|e| e.to_str()) {
        Some("ko") => {
            fs::copy(from, to).with_context(|| format!("copy {}", from.display()))?;
            return Ok(());
        }
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => bail!("{}: a module compressed in a way the host VM does not read", from.display()),
    };
    let mut cmd = Command::new(tool);
    cmd.arg("-dc").arg(from).stdout(fs::File::create(to)?);
    run_cmd(&mut cmd)
}

/// `tag` as `docker save` writes it but for the layers of the project image's base, which the
/// root image's Docker has: `docker load` opens a layer's file only when it lacks the layer, so
/// the guest reads and unpacks only the image's own layers. Cached per image id (the guest
/// loads it at each boot).
fn saved_image(dir: &Path, engine: &containers::Engine, tag: &str) -> Result<PathBuf> {
    let images = dir.join("images");
    fs::create_dir_all(&images)?;
    let prefix = format!("{}-", tag.replace([':', '/'], "_"));
    let (id, layers) = inspect(engine, tag)?;
    let name = format!("{prefix}{id}.tar");
    let saved = images.join(&name);
    if saved.is_file() {
        println!("    skip: {} is saved", saved.display());
        return Ok(saved);
    }
    remove_stale(&images, &prefix, &name)?;
    let whole = images.join(format!("{name}.whole"));
    run_cmd(engine.docker().args(["save", "--output"]).arg(&whole).arg(tag))?;
    let (_, base) = inspect(engine, containers::BASE_IMAGE)?;
    // A layer is the same one only on top of the same layers.
    let shared = layers.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let partial = images.join(format!("{name}.partial"));
    without_layers(&whole, shared, &partial)
        .with_context(|| format!("strip the base's layers from {}", whole.display()))?;
    fs::remove_file(&whole)?;
    fs::rename(&partial, &saved)?;
    Ok(saved)
}

/// Copies the `docker save` archive `from` to `to` without the files of its first `count`
/// layers.
fn without_layers(from: &Path, count: usize, to: &Path) -> Result<()> {
    let open = || -> Result<tar::Archive<fs::File>> { Ok(tar::Archive::new(fs::File::open(from)?)) };
    let mut manifest = None;
    for entry in open()?.entries()? {
        let mut entry = entry?;
        if entry.path()?.as_os_str() == "manifest.json" {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            manifest = Some(serde_json::from_str::<serde_json::Value>(&text)?);
            break;
        }
    }
    let manifest = manifest.context("the archive has no manifest.json")?;
    let layers = manifest[0]["Layers"].as_array().context("manifest.json lists no layers")?;
    let skipped: Vec<&str> = layers.iter().take(count).filter_map(|l| l.as_str()).collect();
    if skipped.len() != count {
        bail!("manifest.json lists {} layers, not the {count} the image shares with its base", layers.len());
    }
    let mut copy = tar::Builder::new(fs::File::create(to)?);
    for entry in open()?.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if skipped.iter().any(|s| path == Path::new(s)) {
            continue;
        }
        let mut header = entry.header().clone();
        copy.append_data(&mut header, &path, &mut entry)?;
    }
    copy.into_inner()?.sync_all()?;
    Ok(())
}

/// The first 16 hex digits of `tag`'s image id in `engine`, and its layers (diff ids).
fn inspect(engine: &containers::Engine, tag: &str) -> Result<(String, Vec<String>)> {
    let out = engine.docker().args(["image", "inspect", tag]).output()?;
    if !out.status.success() {
        bail!("docker image inspect {tag}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).context("docker image inspect's JSON")?;
    let id = inspected[0]["Id"].as_str().context("docker image inspect shows no Id")?;
    let id = id.trim_start_matches("sha256:");
    let layers = inspected[0]["RootFS"]["Layers"]
        .as_array()
        .context("docker image inspect shows no RootFS.Layers")?
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    Ok((id[..id.len().min(16)].to_owned(), layers))
}

/// Removes the files in `dir` named `prefix…` but `keep`: earlier versions of a cached file.
fn remove_stale(dir: &Path, prefix: &str, keep: &str) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name != keep && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A hard link where it can (the image is large), a copy where it cannot.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// A path in a QEMU option, where a comma ends the value unless doubled.
fn qemu_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum Sink {
    Stdout,
    Stderr,
}

/// A file the guest appends to over 9p, copied here as it grows.
struct Tail {
    path: PathBuf,
    offset: u64,
    sink: Sink,
}

impl Tail {
    fn new(path: PathBuf, sink: Sink) -> Tail {
        Tail { path, offset: 0, sink }
    }

    fn follow(&mut self) {
        let Ok(mut file) = fs::File::open(&self.path) else { return };
        let mut new = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut new).is_err() {
            return;
        }
        self.offset += new.len() as u64;
        let _ = match self.sink {
            Sink::Stdout => std::io::stdout().write_all(&new).and_then(|()| std::io::stdout().flush()),
            Sink::Stderr => std::io::stderr().write_all(&new),
        };
    }
}

/// What `cargo xtask test` runs on the host VM: the test binary of `intercept-tests` and its
/// tests (by exact name). The container tests run there as on the hybrid test host, with the
/// tasks laid out as the ECS agent lays them out on cgroup v2 (`ecstasks-<id>.slice`, the
/// engine's systemd cgroup driver); the `al2023_host_*` tests run only there.
const SUITE_TESTS: [(&str, &[&str]); 2] = [
    (
        "containers",
        &[
            "iptables_init_container_intercepts_an_ecs_task",
            "ebpf_init_container_in_a_private_and_in_the_host_cgroup_namespace",
            "cgroup_auto_outside_a_task_is_refused_and_attaches_nothing",
            "the_ecs_agents_cni_calls_from_its_container",
            "the_static_plugin_runs_alone_with_what_the_agents_container_has",
            "al2023_host_the_cni_plugin_uses_the_hosts_tools",
        ],
    ),
    ("daemon_docker", &["the_daemon_runs_as_an_ecs_daemon_service", "al2023_host_the_daemon_runs_as_its_systemd_unit"]),
];

/// The prefix of the tests that need this host; the run on the test host skips them.
pub const ONLY_HERE: &str = "al2023_host_";

/// How long the suite may take in the guest.
const SUITE_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs [`SUITE_TESTS`] on the host VM with `kernel`: the test binaries as `cargo test` built
/// them (the workspace and the target directory shared read-only at their own paths), against
/// the guest's engine and `tag` loaded into it. Whether they all passed.
pub fn test_suite(ws: &Workspace, engine: &containers::Engine, tag: &str, kernel: &str) -> Result<bool> {
    let vm = HostVm::prepare(ws, kernel, engine, tag)?;
    let binaries = kernels::test_binaries(ws)?;
    let mut script = vec![
        "set -e".to_owned(),
        "export DOCKER_HOST=unix:///var/run/docker.sock".to_owned(),
        format!("export INTERCEPT_IMAGE={}", sh_quote(tag)),
        format!(
            "export INTERCEPT_BIN={}",
            sh_quote(&ws.target_dir.join("debug").join("intercept").display().to_string())
        ),
        format!(
            "export INTERCEPT_BASE_TARBALL={}",
            sh_quote(&engine.base_tarball(containers::DEFAULT_ARCH).display().to_string())
        ),
        format!("export CARGO_TARGET_DIR={}", sh_quote(&ws.target_dir.display().to_string())),
    ];
    if let Ok(ci) = std::env::var("CI") {
        script.push(format!("export CI={}", sh_quote(&ci)));
    }
    for (binary, tests) in SUITE_TESTS {
        let (_, path) = binaries
            .iter()
            .find(|(name, _)| name == binary)
            .with_context(|| format!("the test binary {binary} was not built"))?;
        let names: Vec<String> = tests.iter().map(|t| sh_quote(t)).collect();
        script.push(format!(
            "{} --include-ignored --exact --test-threads 1 {}",
            sh_quote(&path.display().to_string()),
            names.join(" ")
        ));
    }
    let mut shares = vec![ws.root.clone()];
    if !ws.target_dir.starts_with(&ws.root) {
        shares.push(ws.target_dir.clone());
    }
    let code = vm.run(&shares, &["sh".to_owned(), "-c".to_owned(), script.join("\n")], SUITE_TIMEOUT)?;
    Ok(code == 0)
}
