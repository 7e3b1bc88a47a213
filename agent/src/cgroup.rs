//! cgroups: which cgroup is a task's, and the refusal of one that is not a single task's.
//!
//! A task's cgroup is named by a path (`--cgroup`, a task file), worked out from where intercept
//! itself runs (`--cgroup auto`: the parent of an init container's own cgroup), or worked out
//! from the cgroups of a task's containers (the daemon's Docker source). What is worked out is
//! never wider than one task: the eBPF programs attached to a cgroup intercept every process
//! below it, so the root, the parents every container or service shares (`system.slice`,
//! `docker`, `kubepods`, …) and any cgroup holding more than one task are refused
//! ([`Error::NotOneTask`]). They are what `auto` finds when the engine did not give the task a
//! cgroup of its own: a plain `docker run`, or ECS with task cgroups turned off
//! (`ECS_ENABLE_TASK_CPU_MEM_LIMIT=false`).
//!
//! Where the ECS agent puts a task's containers:
//! - cgroup v1 or hybrid hosts (Amazon Linux 2): `/ecs/<task id>/<container id>`;
//! - cgroup v2 hosts with systemd (Amazon Linux 2023), Docker's systemd driver and the task's
//!   slice `ecstasks-<task id>.slice` as the containers' cgroup parent:
//!   `/ecstasks.slice/ecstasks-<task id>.slice/docker-<container id>.scope` ([`slice_path`]).
//!
//! A process in a private cgroup namespace (Docker's default on cgroup v2) reads other
//! processes' cgroups relative to its namespace's root, e.g.
//! `0::/../../ecstasks-<t>.slice/docker-<c>.scope` ([`host_path`]).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::mountinfo::{self, Mount};

const SELF_CGROUP: &str = "/proc/self/cgroup";

/// How deep [`own_cgroup`] looks into a hierarchy for this process's cgroup (ECS puts a
/// container at `/ecs/<task>/<container>`; systemd hosts nest a few levels more).
const SEARCH_DEPTH: usize = 8;

/// What [`Error::NotOneTask`] tells the operator to do.
const ONE_TASK_REMEDY: &str = "name the task's cgroup (--cgroup PATH, or a daemon task file's cgroup), or give each \
                               task a cgroup of its own (ECS does while ECS_ENABLE_TASK_CPU_MEM_LIMIT is on, its \
                               default: /ecs/<task id> or ecstasks-<task id>.slice)";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no cgroup2 file system is mounted here (looked in /proc/self/mountinfo): in a container, mount the \
         host's cgroup hierarchy into it (`-v /sys/fs/cgroup:/sys/fs/cgroup`; in ECS a host volume of \
         /sys/fs/cgroup)"
    )]
    NoCgroup2,
    /// The cgroup does not exist (any more): a task that ended took it with it.
    #[error("the cgroup {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is not a cgroup under the cgroup2 mount {}", path.display(), mount.display())]
    NotACgroup { path: PathBuf, mount: PathBuf },
    #[error(
        "{} is the root of the cgroup2 hierarchy: every process of the host would be intercepted; \
         name the task's cgroup",
        .0.display()
    )]
    Root(PathBuf),
    #[error("--cgroup auto: {reason}")]
    Auto { reason: String },
    /// A cgroup that was worked out, not named, and holds more than one task.
    #[error("{} is not one task's cgroup: {why}, and every process in it would be intercepted; {ONE_TASK_REMEDY}", cgroup.display())]
    NotOneTask { cgroup: PathBuf, why: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io { op, path: path.as_ref().to_owned(), source }
    }

    /// Opening the cgroup at `path` failed: a missing one is [`Error::NotFound`].
    fn opening(path: &Path, source: io::Error) -> Error {
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { path: path.to_owned() },
            _ => Error::io("open", path, source),
        }
    }
}

/// The cgroup2 mounts of this mount namespace, in mount order.
pub fn mounts() -> Result<Vec<Mount>, Error> {
    let mounts = mountinfo::read().map_err(|e| Error::io("read", mountinfo::SELF, e))?;
    Ok(cgroup2s(mounts))
}

/// The first cgroup2 mount of this mount namespace.
pub fn mount() -> Result<Mount, Error> {
    mounts()?.into_iter().next().ok_or(Error::NoCgroup2)
}

fn cgroup2s(mounts: Vec<Mount>) -> Vec<Mount> {
    mounts.into_iter().filter(|m| m.fstype == "cgroup2").collect()
}

/// The cgroup `--cgroup` names: `auto` is the parent of this process's own cgroup (the task's
/// cgroup when intercept runs as an init container: see [`own_cgroup`]), refused when it is not
/// one task's ([`check_one_task`]); a path is taken as is when it is a directory under a
/// cgroup2 mount, and otherwise relative to the first one (`/ecs/<task>` works either way).
pub fn resolve(arg: &str) -> Result<PathBuf, Error> {
    let mounts = mounts()?;
    let first = mounts.first().ok_or(Error::NoCgroup2)?;
    let path = if arg == "auto" {
        let own = own_cgroup(&mounts)?;
        own.parent()
            .map(Path::to_owned)
            .ok_or_else(|| Error::Auto { reason: format!("this process's cgroup {} has no parent", own.display()) })?
    } else {
        let given = Path::new(arg);
        if given.is_absolute() && mounts.iter().any(|m| given.starts_with(&m.mount_point)) {
            given.to_owned()
        } else {
            first.mount_point.join(given.strip_prefix("/").unwrap_or(given))
        }
    };
    let path = match fs::canonicalize(&path) {
        Ok(path) => path,
        // Not under the mount, but there elsewhere: a directory that is not a cgroup.
        Err(e) if e.kind() == io::ErrorKind::NotFound && arg != "auto" && Path::new(arg).exists() => {
            return Err(Error::NotACgroup { path: arg.into(), mount: first.mount_point.clone() });
        }
        Err(e) => return Err(Error::opening(&path, e)),
    };
    // The deepest mount holding it: a hierarchy can be mounted inside another directory.
    let Some(mount) =
        mounts.iter().filter(|m| path.starts_with(&m.mount_point)).max_by_key(|m| m.mount_point.as_os_str().len())
    else {
        return Err(Error::NotACgroup { path, mount: first.mount_point.clone() });
    };
    if path == mount.mount_point {
        // Every process of the host would be intercepted, the agent included.
        return Err(Error::Root(path));
    }
    if !path.join("cgroup.procs").is_file() {
        return Err(Error::NotACgroup { path, mount: mount.mount_point.clone() });
    }
    if arg == "auto" {
        check_one_task(&path, &mount.mount_point)?;
    }
    Ok(path)
}

/// The cgroup's id: its inode number in cgroup2 (what `bpf_get_current_cgroup_id` returns).
pub fn id(cgroup: &Path) -> Result<u64, Error> {
    Ok(fs::metadata(cgroup).map_err(|e| Error::opening(cgroup, e))?.ino())
}

/// The cgroup's directory, open (to attach programs to it).
pub fn open(cgroup: &Path) -> Result<fs::File, Error> {
    fs::File::open(cgroup).map_err(|e| Error::opening(cgroup, e))
}

/// The cgroup2 path in a `/proc/<pid>/cgroup` text: its `0::` line (relative to the reader's
/// cgroup namespace).
pub fn unified_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// A path read from `/proc/<pid>/cgroup` ([`unified_path`]) as a path from the hierarchy's
/// root. In the host's cgroup namespace (`namespace_root` `None`) it is one already. In a
/// private one it is relative to the namespace's root, `namespace_root` (a path from the
/// hierarchy's root), and climbs above it with `..` for every process outside it. `None` for
/// a path that climbs above the hierarchy's root, or one that needs a namespace root not given.
pub fn host_path(path: &str, namespace_root: Option<&Path>) -> Option<PathBuf> {
    let joined = match namespace_root {
        Some(root) => root.join(path.trim_start_matches('/')),
        None if path.split('/').any(|c| c == "..") => return None,
        None => PathBuf::from(path),
    };
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The cgroup of a systemd slice unit, from the hierarchy's root: each `-` in the name is a
/// level (`ecstasks-<id>.slice` is `/ecstasks.slice/ecstasks-<id>.slice`), as systemd lays
/// slices out, and as Docker's systemd cgroup driver takes a `--cgroup-parent` (which must be a
/// slice). `None` for a name that is not a slice.
pub fn slice_path(unit: &str) -> Option<PathBuf> {
    let name = unit.strip_suffix(".slice").filter(|n| !n.is_empty() && !n.contains('/'))?;
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return None;
    }
    let mut path = PathBuf::from("/");
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// Why `cgroup` (a path from the hierarchy's root) is shared by more than one task whatever it
/// holds now: the root, and the parents container engines, systemd and orchestrators put
/// every container or service under.
pub fn shared_by_name(cgroup: &Path) -> Option<String> {
    let names: Vec<&str> = cgroup.iter().filter_map(|c| c.to_str()).filter(|c| *c != "/").collect();
    let why = match names.as_slice() {
        [] => "it is the root of the hierarchy",
        ["ecs"] => "it holds every ECS task (/ecs/<task id>)",
        ["ecstasks.slice"] => "it holds every ECS task (ecstasks-<task id>.slice)",
        [.., "system.slice"] => {
            "it is systemd's slice of every system service and of containers without a cgroup parent"
        }
        [.., "machine.slice"] => "it is systemd's slice of every virtual machine and container",
        [.., "user.slice"] => "it is systemd's slice of every user session",
        [.., "init.scope"] => "it is systemd's own",
        [.., "docker"] => "it is Docker's parent of every container without a cgroup parent",
        [.., last] if last.starts_with("kubepods") => "it is Kubernetes' parent of every pod",
        [.., parent, "burstable" | "besteffort"] if parent.starts_with("kubepods") => {
            "it is Kubernetes' parent of every pod of a QoS class"
        }
        _ => return None,
    };
    Some(why.to_owned())
}

/// Whether a cgroup's name is one ECS gives a task: `ecstasks-<id>.slice` (cgroup v2) or the
/// task id itself under `/ecs` (32 hexadecimal digits).
fn task_shaped(name: &str) -> bool {
    let hex = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.strip_prefix("ecstasks-").and_then(|n| n.strip_suffix(".slice")).is_some_and(|n| !n.is_empty()) || hex(name)
}

/// Refuses `cgroup` (a directory under `mount`) when it is not one task's: shared by name
/// ([`shared_by_name`]), or holding cgroups that ECS gives tasks.
pub fn check_one_task(cgroup: &Path, mount: &Path) -> Result<(), Error> {
    let from_root = Path::new("/").join(cgroup.strip_prefix(mount).unwrap_or(cgroup));
    let refuse = |why: String| Err(Error::NotOneTask { cgroup: cgroup.to_owned(), why });
    if let Some(why) = shared_by_name(&from_root) {
        return refuse(why);
    }
    let children = fs::read_dir(cgroup).map_err(|e| Error::io("read", cgroup, e))?;
    let tasks: Vec<String> = children
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| task_shaped(name))
        .collect();
    match tasks.as_slice() {
        [] => Ok(()),
        [first, ..] => refuse(format!("it holds the cgroups of {} task(s), {first} among them", tasks.len())),
    }
}

/// This process's cgroup as a path under a cgroup2 mount: `0::/path` in /proc/self/cgroup,
/// under the first mount.
///
/// In a private cgroup namespace (Docker's default on cgroup v2 hosts) the path reads `/`:
/// the namespace's root, which is the container's own cgroup, and a mount of the hierarchy
/// made in the namespace shows nothing above it. The host's hierarchy, mounted into the
/// container, does: there this process's cgroup is the one whose `cgroup.procs` lists its pid
/// (the kernel shows the processes of other pid namespaces as 0), below the mount's root.
fn own_cgroup(mounts: &[Mount]) -> Result<PathBuf, Error> {
    let text = fs::read_to_string(SELF_CGROUP).map_err(|e| Error::io("read", SELF_CGROUP, e))?;
    let relative = unified_path(&text)
        .ok_or_else(|| Error::Auto { reason: format!("{SELF_CGROUP} has no cgroup2 (\"0::\") line") })?;
    let first = &mounts[0];
    if relative != "/" {
        let relative = Path::new(relative);
        // With a cgroup namespace, both the mount's root and our path are relative to it.
        let relative = relative.strip_prefix(&first.root).unwrap_or(relative);
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        return Ok(first.mount_point.join(relative));
    }
    let pid = std::process::id().to_string();
    for mount in mounts {
        if let Some(found) = find_listing(&mount.mount_point, &pid, SEARCH_DEPTH).filter(|p| *p != mount.mount_point) {
            return Ok(found);
        }
    }
    Err(Error::Auto {
        reason: format!(
            "this process is in a private cgroup namespace ({SELF_CGROUP} reads `0::/`) and no cgroup2 hierarchy \
             mounted here shows its cgroup below the root ({}): mount the host's cgroup hierarchy into the \
             container (`-v /sys/fs/cgroup:/sys/fs/cgroup`; in ECS a host volume of /sys/fs/cgroup) or run it in \
             the host's cgroup namespace (`--cgroupns host`)",
            mounts.iter().map(|m| m.mount_point.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    })
}

/// The root of this process's cgroup namespace, as a path from the hierarchy's root, for
/// [`host_path`]: `None` in the host's namespace, where `/proc/self/cgroup` reads the real path.
/// In a private one it reads `/` (a process never leaves its container's cgroup), and the
/// hierarchy mounted from the host shows where that is.
pub fn namespace_root() -> Result<Option<PathBuf>, Error> {
    let text = fs::read_to_string(SELF_CGROUP).map_err(|e| Error::io("read", SELF_CGROUP, e))?;
    if unified_path(&text) != Some("/") {
        return Ok(None);
    }
    let mounts = mounts()?;
    if mounts.is_empty() {
        return Err(Error::NoCgroup2);
    }
    let own = own_cgroup(&mounts)?;
    let mount = mounts.iter().find(|m| own.starts_with(&m.mount_point)).map_or(Path::new("/"), |m| &m.mount_point);
    Ok(Some(Path::new("/").join(own.strip_prefix(mount).unwrap_or(&own))))
}

/// The cgroup at or below `dir` (at most `depth` levels down) whose `cgroup.procs` lists
/// `pid`. Directories that cannot be read are passed over.
fn find_listing(dir: &Path, pid: &str, depth: usize) -> Option<PathBuf> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if procs.lines().any(|line| line.trim() == pid) {
        return Some(dir.to_owned());
    }
    if depth == 0 {
        return None;
    }
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_listing(&e.path(), pid, depth - 1))
}

/// Makes `command`'s process join the cgroup at `cgroup` between fork and exec, so the program
/// runs in it from its first instruction while the caller stays where it is.
pub fn join(command: &mut Command, cgroup: &Path) -> io::Result<()> {
    let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").into_os_string().into_vec())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // (open, write, close) on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0" moves the writing process.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let result = if written == 1 { Ok(()) } else { Err(io::Error::last_os_error()) };
            libc::close(fd);
            result
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
