//! Fixtures for the privileged integration tests in `tests/tests/`, modelled on aya's
//! `test_helpers`: the privilege check every test starts with, throwaway child cgroups that
//! remove themselves even when a test panics, and a way to run a client process inside one.
//! [`topology`] builds sandbox network namespaces (a task and a remote one joined by veth),
//! and [`traffic`] runs the test proxy, app and remote listeners, clients with a chosen
//! namespace, cgroup and identity, and the comparison of what happened with the model.
//!
//! Rules the fixtures enforce: programs are only ever attached to a cgroup a test created
//! (never the root of the hierarchy), and the test runner itself never changes cgroup; the
//! processes under test are children placed in the cgroup before they run.

use std::{
    ffi::{CString, OsStr},
    fs,
    io::{self, Write as _},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{self, Child, Command, ExitStatus},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use aya::programs::ProgramType;
use intercept::config::ProxyConfig;

pub mod cases;
pub mod cni;
pub mod containers;
pub mod daemon;
pub mod ebpf;
pub mod lifecycle;
pub mod podman;
pub mod previous;
pub mod readiness;
pub mod topology;
pub mod traffic;

/// What `intercept-test-client` sends after connecting, so a test can tell its connection from
/// any other.
pub const CLIENT_GREETING: &[u8] = b"hello from intercept-test-client\n";

const CGROUP_PROCS: &str = "cgroup.procs";

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{op} {}: {error}", path.display())]
    Io { op: &'static str, path: PathBuf, error: io::Error },
    #[error(transparent)]
    Cgroup2(#[from] intercept::cgroup::Error),
    #[error(transparent)]
    Lock(#[from] intercept::lock::Error),
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FixtureError {
    let path = path.to_owned();
    move |error| FixtureError::Io { op, path, error }
}

/// A host on which privileged tests can run: see [`require_privileges`].
#[derive(Debug)]
pub struct Privileged {
    cgroup2: PathBuf,
}

impl Privileged {
    /// Where the cgroup2 hierarchy is mounted.
    pub fn cgroup2_mount(&self) -> &Path {
        &self.cgroup2
    }

    /// A new, empty cgroup directly under the cgroup2 mount; see [`TestCgroup`].
    pub fn create_cgroup(&self) -> Result<TestCgroup, FixtureError> {
        TestCgroup::create(&self.cgroup2)
    }
}

/// Checks that this test can run: root, a writable cgroup2 mount, and a kernel that loads
/// cgroup sock_addr programs; fails the test, saying why, when it cannot.
///
/// Privileged tests are `#[ignore]`d, so a plain `cargo test` lists them as ignored rather
/// than passing them; `cargo xtask test` runs them with `--include-ignored`, and any that
/// cannot run fails. None passes by skipping.
pub fn require_privileges(test: &str) -> Privileged {
    privileges().unwrap_or_else(|reason| cannot_run(test, &reason))
}

/// Why privileged tests cannot run here, if they cannot (for the fixtures' binaries, which
/// report it as an error).
pub fn privileges() -> Result<Privileged, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (bpf(2) and cgroup writes); run it as root, e.g. `sudo -E cargo xtask test`".into());
    }
    let cgroup2 = match cgroup2_mount() {
        Ok(path) => path,
        Err(e) => return Err(format!("needs a cgroup2 mount: {e}")),
    };
    let c_path = CString::new(cgroup2.as_os_str().as_bytes()).map_err(|e| format!("cgroup2 mount path: {e}"))?;
    // SAFETY: c_path is a valid NUL-terminated string.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("cannot create cgroups under the cgroup2 mount {}: {e}", cgroup2.display()));
    }
    match aya::sys::is_program_supported(ProgramType::CgroupSockAddr) {
        Ok(true) => {}
        Ok(false) => return Err("the kernel does not support cgroup sock_addr eBPF programs".into()),
        Err(e) => return Err(format!("cannot load eBPF programs: {e}")),
    }
    Ok(Privileged { cgroup2 })
}

/// Fails `test`, which cannot run because of `reason`.
/// The tests named `al2023_host_*` run on a host shaped like the default ECS host, Amazon Linux
/// 2023: systemd as init, cgroup v2 only, and no `nft` command. `cargo xtask test` runs them in
/// its virtual machine of such a host (`cargo xtask host-vm`); elsewhere they fail saying so.
pub fn require_al2023_host(test: &str) -> Privileged {
    let privileged = require_privileges(test);
    let mut missing = Vec::new();
    if !Path::new("/run/systemd/system").is_dir() {
        missing.push("systemd is not the init system");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = intercept::mountinfo::parse_mountinfo(&mounts);
    if !mounts.iter().any(|m| m.fstype == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup")) {
        missing.push("cgroup v2 is not the only hierarchy (/sys/fs/cgroup)");
    }
    if intercept::backend::exec::find_program("nft").is_some() {
        missing.push("the nft command is installed");
    }
    if !missing.is_empty() {
        cannot_run(
            test,
            &format!("needs a host shaped like Amazon Linux 2023 (`cargo xtask host-vm`): {}", missing.join("; ")),
        );
    }
    privileged
}

pub fn cannot_run(test: &str, reason: &str) -> ! {
    panic!("{test} cannot run here: {reason}")
}

/// The mount point of the first cgroup2 file system in this process's mount namespace. The
/// hierarchy may be mounted anywhere (e.g. `/sys/fs/cgroup/unified` on hybrid hosts).
pub fn cgroup2_mount() -> Result<PathBuf, FixtureError> {
    Ok(intercept::cgroup::mount()?.mount_point)
}

/// A uniquely named cgroup directly under the cgroup2 mount, created for one test.
///
/// On drop, any process still in it is moved back to the parent (the mount's root cgroup) and
/// the directory is removed, also while the test is unwinding from a panic.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    parent: PathBuf,
}

impl TestCgroup {
    fn create(mount: &Path) -> Result<Self, FixtureError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("intercept-test-{}-{}", process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = mount.join(name);
        fs::create_dir(&path).map_err(io_error("create cgroup", &path))?;
        Ok(Self { path, parent: mount.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's directory, opened to attach programs to it.
    pub fn open(&self) -> Result<fs::File, FixtureError> {
        fs::File::open(&self.path).map_err(io_error("open cgroup", &self.path))
    }

    /// The pids in this cgroup.
    pub fn pids(&self) -> Result<Vec<u32>, FixtureError> {
        let procs = self.path.join(CGROUP_PROCS);
        let pids = fs::read_to_string(&procs).map_err(io_error("read", &procs))?;
        Ok(pids.lines().filter_map(|pid| pid.parse().ok()).collect())
    }

    /// A command whose process joins this cgroup between fork and exec, so everything the
    /// program does runs in the cgroup; the test runner itself stays where it is.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in_cgroup(&self.path, program)
    }

    fn remove(&self) -> Result<(), FixtureError> {
        let parent_procs = self.parent.join(CGROUP_PROCS);
        for pid in self.pids()? {
            match fs::write(&parent_procs, pid.to_string()) {
                // The process exited after the pid list was read.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                result => result.map_err(io_error("move a process back to", &parent_procs))?,
            }
        }
        // The lock file an `apply` on this cgroup left (`intercept::lock`), forgotten once the
        // cgroup is gone, as `remove` does for cgroups it prunes.
        let id = intercept::cgroup::id(&self.path)?;
        // rmdir fails with EBUSY while an exiting process is still being accounted to the
        // cgroup; that settles within milliseconds.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                result => break result.map_err(io_error("remove cgroup", &self.path))?,
            }
        }
        let key = intercept::lock::Key::cgroup(id, self.path.display().to_string());
        Ok(intercept::lock::Locks::system().forget(&key)?)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            if thread::panicking() {
                let _ = writeln!(io::stderr(), "while unwinding: {e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

/// A command whose process joins the cgroup at `cgroup` between fork and exec, so everything
/// the program does runs in the cgroup; the test runner itself stays where it is.
pub fn command_in_cgroup(cgroup: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    intercept::cgroup::join(&mut command, cgroup).expect("cgroup paths built from mountinfo contain no NUL");
    command
}

/// The seed guide's EC2 task definition (`examples/ec2-taskB.json`).
pub fn seed_task_definition() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ec2-taskB.json")
}

/// The configuration the seed guide's task definitions validate to, through the agent's own
/// parser and validator.
pub fn seed_guide_config() -> ProxyConfig {
    let path = seed_task_definition();
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let input = intercept::config::source::parse_task_definition(&text, "ec2-taskB")
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    intercept::config::validate(&input.raw).unwrap_or_else(|e| panic!("{}: {e}", path.display())).config
}

/// Runs `command` (typically the `intercept` binary) to completion: its exit code, stdout
/// and stderr.
pub fn run_output(command: &mut Command) -> (Option<i32>, String, String) {
    let output = command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// Runs `command` to completion and returns its exit status. A child still running after
/// `timeout` is killed (it is our own child, by pid) and the test fails.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> ExitStatus {
    let mut child: Child = command.spawn().unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{command:?} still running after {timeout:?}; killed it");
            }
            Err(e) => panic!("wait for {command:?}: {e}"),
        }
    }
}
