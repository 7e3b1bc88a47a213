//! One change at a time per target: an exclusive `flock(2)` on a lock file named after the
//! target, taken by every backend's `apply` and `remove` (`status` only reads and takes none).
//!
//! The lock lives in the library, so the CLI and anything else built on it (a daemon) share
//! it. Targets are named by identity, not by how the user spelled them: a network namespace
//! by its nsfs `dev:ino` (`/run/netns/task` and `/proc/PID/ns/net` of a process in it are
//! one target), a cgroup by its id. The kernel drops a `flock` when its holder dies, even by
//! SIGKILL, so a killed `apply` never leaves a stale lock behind.
//!
//! Next to the lock, a backend whose change is not one kernel transaction (iptables: one per
//! family, plus ipsets) leaves a marker ([`Held::begin`]) while it changes things and
//! deletes it when the target is whole again ([`Held::complete`]); a marker found later
//! ([`Locks::unfinished`]) says that a change was interrupted.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Where the lock files live: on the host's `/run`, which every agent on the host shares
/// (an agent in a container needs it mounted to be serialised with the others).
pub const SYSTEM_DIR: &str = "/run/intercept/locks";

/// How long `apply` and `remove` wait for another one working on the same target.
pub const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "another intercept ({holder}) has been changing the {target} for over {}s: gave up waiting \
         for the lock {}; nothing was changed",
        waited.as_secs(),
        path.display()
    )]
    Timeout { target: String, holder: Holder, waited: Duration, path: PathBuf },
    #[error("{op} the lock file {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Who holds a lock, as far as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Pid(u32),
    /// The holder had not written its pid yet, or the file could not be read.
    Unknown,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Pid(pid) => write!(f, "pid {pid}"),
            Holder::Unknown => f.write_str("pid unknown"),
        }
    }
}

/// A target's identity: the lock file's name, and what to call the target in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    name: String,
    description: String,
}

impl Key {
    /// A network namespace, by its nsfs inode (`stat -L /proc/PID/ns/net`).
    pub fn netns(dev: u64, ino: u64, description: impl Into<String>) -> Key {
        Key { name: format!("netns-{dev}-{ino}"), description: description.into() }
    }

    /// A cgroup, by its id (its cgroup2 inode number).
    pub fn cgroup(id: u64, description: impl Into<String>) -> Key {
        Key { name: format!("cgroup-{id}"), description: description.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// A change that began and was not completed: its marker's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub pid: Option<u32>,
    pub operation: String,
}

impl fmt::Display for Unfinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "an `intercept {}` (pid {pid}) did not finish", self.operation),
            None => write!(f, "an `intercept {}` did not finish", self.operation),
        }
    }
}

/// A directory of lock files: [`SYSTEM_DIR`], or another one (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locks {
    dir: PathBuf,
}

impl Locks {
    pub fn system() -> Locks {
        Locks::in_dir(SYSTEM_DIR)
    }

    pub fn in_dir(dir: impl Into<PathBuf>) -> Locks {
        Locks { dir: dir.into() }
    }

    fn lock_path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.lock", key.name))
    }

    fn marker_path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{}.unfinished", key.name))
    }

    /// Takes `key`'s lock, waiting up to `timeout` for its holder to release it.
    pub fn acquire(&self, key: &Key, timeout: Duration) -> Result<Held, Error> {
        fs::create_dir_all(&self.dir).map_err(io_error("create the directory of", &self.dir))?;
        let path = self.lock_path(key);
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_error("open", &path))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut file) => {
                    // `release` may have unlinked the file between our open and our flock: a
                    // lock on that orphan would exclude nobody. Start again on the new file.
                    if !same_file(&file, &path)? {
                        continue;
                    }
                    write_pid(&mut file).map_err(io_error("write the holder's pid to", &path))?;
                    tracing::debug!(target = %key, lock = %path.display(), "locked");
                    return Ok(Held { file, path, marker: self.marker_path(key) });
                }
                Err((_, Errno::EWOULDBLOCK)) => {}
                Err((_, errno)) => return Err(Error::Io { op: "lock", path, source: errno.into() }),
            }
            if started.elapsed() >= timeout {
                return Err(Error::Timeout {
                    target: key.to_string(),
                    holder: holder(&path),
                    waited: started.elapsed(),
                    path,
                });
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The change to `key` that began and did not complete, if any. Taking no lock, it also
    /// sees a change still in progress.
    pub fn unfinished(&self, key: &Key) -> Result<Option<Unfinished>, Error> {
        let path = self.marker_path(key);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(parse_marker(&text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io { op: "read", path, source: e }),
        }
    }
}

fn same_file(file: &File, path: &Path) -> Result<bool, Error> {
    let open = file.metadata().map_err(io_error("stat", path))?;
    match fs::metadata(path) {
        Ok(named) => Ok((named.dev(), named.ino()) == (open.dev(), open.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io { op: "stat", path: path.to_owned(), source: e }),
    }
}

fn write_pid(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())
}

fn holder(path: &Path) -> Holder {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    match read.ok().and_then(|_| text.trim().parse().ok()) {
        Some(pid) => Holder::Pid(pid),
        None => Holder::Unknown,
    }
}

/// `<pid> <operation>`, as [`Held::begin`] writes it.
fn parse_marker(text: &str) -> Unfinished {
    let (pid, operation) = text.trim().split_once(' ').unwrap_or(("", text.trim()));
    let operation = if operation.is_empty() { "apply or remove" } else { operation };
    Unfinished { pid: pid.parse().ok(), operation: operation.to_owned() }
}

impl Locks {
    /// Deletes `key`'s lock file and marker without taking the lock: for a target that no
    /// longer exists (a removed cgroup), which nobody can lock again.
    pub fn forget(&self, key: &Key) -> Result<(), Error> {
        let marker = self.marker_path(key);
        for path in [self.lock_path(key), staging_path(&marker), marker] {
            remove_if_present(&path)?;
        }
        Ok(())
    }
}

/// Where [`Held::begin`] writes the marker before renaming it into place.
fn staging_path(marker: &Path) -> PathBuf {
    marker.with_extension("unfinished-new")
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::Io { op: "remove", path: path.to_owned(), source: e })
        }
        _ => Ok(()),
    }
}

/// A target's lock, held until dropped (or [`Held::release`]d).
#[derive(Debug)]
pub struct Held {
    file: Flock<File>,
    path: PathBuf,
    marker: PathBuf,
}

impl Held {
    /// Marks the target as being changed by `operation` (`apply`, `remove`), until
    /// [`Held::complete`]. A marker that is already there (an interrupted change) stays.
    pub fn begin(&self, operation: &str) -> Result<(), Error> {
        let text = format!("{} {operation}\n", std::process::id());
        // Written whole under another name and renamed: a reader never sees half of it.
        let staging = staging_path(&self.marker);
        fs::write(&staging, text).map_err(io_error("write", &staging))?;
        fs::rename(&staging, &self.marker).map_err(io_error("rename", &self.marker))
    }

    /// The target is whole again (what was asked for, or as it was before): no marker, and
    /// no staged one either, which a holder killed inside [`Held::begin`] leaves (it had
    /// changed nothing yet).
    pub fn complete(&self) -> Result<(), Error> {
        remove_if_present(&staging_path(&self.marker))?;
        remove_if_present(&self.marker)
    }

    /// Releases the lock and deletes its file, for a target that has nothing installed any
    /// more (otherwise every namespace ever touched would leave a file behind). A waiter
    /// that opened the old file notices and opens a new one.
    pub fn release(self) -> Result<(), Error> {
        self.complete()?;
        fs::remove_file(&self.path).map_err(io_error("remove", &self.path))?;
        drop(self.file);
        Ok(())
    }
}

/// A lock directory of its own, deleted on drop, for the backends' fake namespaces.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TempLocks(tempfile::TempDir);

#[cfg(test)]
impl Default for TempLocks {
    fn default() -> TempLocks {
        TempLocks(tempfile::tempdir().expect("a temporary directory"))
    }
}

#[cfg(test)]
impl TempLocks {
    pub(crate) fn locks(&self) -> Locks {
        Locks::in_dir(self.0.path())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, Mutex};

    use super::*;

    fn key() -> Key {
        Key::netns(4, 4026532281, "network namespace /run/netns/task")
    }

    #[test]
    fn keys_name_targets_by_identity() {
        assert_eq!(key().name(), "netns-4-4026532281");
        assert_eq!(Key::cgroup(7512, "cgroup /sys/fs/cgroup/task").name(), "cgroup-7512");
        assert_eq!(key().to_string(), "network namespace /run/netns/task");
    }

    #[test]
    fn a_second_holder_waits_and_then_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::in_dir(dir.path().join("locks"));
        let held = locks.acquire(&key(), WAIT).unwrap();
        // flock excludes other open file descriptions, in this process as in any other.
        let err = locks.acquire(&key(), Duration::from_millis(50)).unwrap_err();
        let Error::Timeout { holder, waited, .. } = &err else { panic!("{err:?}") };
        assert_eq!(*holder, Holder::Pid(std::process::id()));
        assert!(*waited >= Duration::from_millis(50), "{waited:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "another intercept (pid {}) has been changing the network namespace /run/netns/task for over 0s: \
                 gave up waiting for the lock {}/locks/netns-4-4026532281.lock",
                std::process::id(),
                dir.path().display()
            )),
            "{message}"
        );
        drop(held);
        drop(locks.acquire(&key(), Duration::ZERO).unwrap());
    }

    #[test]
    fn other_targets_are_not_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::in_dir(dir.path());
        let _netns = locks.acquire(&key(), WAIT).unwrap();
        let _cgroup = locks.acquire(&Key::cgroup(1, "a cgroup"), Duration::ZERO).unwrap();
        let _other = locks.acquire(&Key::netns(4, 1, "another namespace"), Duration::ZERO).unwrap();
    }

    #[test]
    fn holders_take_turns_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::in_dir(dir.path());
        let inside = Mutex::new(0u32);
        let most = Mutex::new(0u32);
        let start = Arc::new(Barrier::new(4));
        thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    start.wait();
                    for round in 0..10 {
                        let held = locks.acquire(&key(), WAIT).unwrap();
                        let now = {
                            let mut inside = inside.lock().unwrap();
                            *inside += 1;
                            *inside
                        };
                        let mut most = most.lock().unwrap();
                        *most = (*most).max(now);
                        drop(most);
                        thread::sleep(Duration::from_millis(1));
                        *inside.lock().unwrap() -= 1;
                        // Half the turns end by deleting the lock file, as a `remove` does.
                        if round % 2 == 0 { held.release().unwrap() } else { drop(held) }
                    }
                });
            }
        });
        assert_eq!(*most.lock().unwrap(), 1, "two holders at once");
    }

    #[test]
    fn a_marker_outlives_its_holder_until_a_change_completes() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::in_dir(dir.path());
        assert_eq!(locks.unfinished(&key()).unwrap(), None);
        let held = locks.acquire(&key(), WAIT).unwrap();
        held.begin("apply").unwrap();
        // The holder dies (drop stands in for SIGKILL: the marker is a plain file).
        drop(held);
        let unfinished = locks.unfinished(&key()).unwrap().expect("a marker");
        assert_eq!(unfinished, Unfinished { pid: Some(std::process::id()), operation: "apply".into() });
        assert_eq!(unfinished.to_string(), format!("an `intercept apply` (pid {}) did not finish", std::process::id()));

        let held = locks.acquire(&key(), WAIT).unwrap();
        held.complete().unwrap();
        assert_eq!(locks.unfinished(&key()).unwrap(), None);
        held.complete().unwrap();
        held.release().unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "release leaves no file");
    }

    #[test]
    fn a_marker_staged_by_a_holder_killed_in_begin_goes_when_a_change_completes() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::in_dir(dir.path());
        let held = locks.acquire(&key(), WAIT).unwrap();
        // What `begin` leaves when killed between its write and its rename.
        let staged = staging_path(&locks.marker_path(&key()));
        fs::write(&staged, "17 apply\n").unwrap();
        drop(held);
        assert_eq!(locks.unfinished(&key()).unwrap(), None, "nothing had been changed");

        let held = locks.acquire(&key(), WAIT).unwrap();
        held.complete().unwrap();
        assert!(!staged.exists());
        held.release().unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "release leaves no file");

        fs::write(&staged, "17 apply\n").unwrap();
        locks.forget(&key()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "forget leaves no file");
    }

    #[test]
    fn a_gone_target_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::in_dir(dir.path());
        let gone = Key::cgroup(99, "a removed cgroup");
        locks.acquire(&gone, WAIT).unwrap().begin("apply").unwrap();
        let _other = locks.acquire(&key(), WAIT).unwrap();
        locks.forget(&gone).unwrap();
        locks.forget(&gone).unwrap();
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["netns-4-4026532281.lock"]);
    }

    #[test]
    fn markers_without_a_pid_still_parse() {
        assert_eq!(parse_marker("17 remove\n"), Unfinished { pid: Some(17), operation: "remove".into() });
        assert_eq!(parse_marker(""), Unfinished { pid: None, operation: "apply or remove".into() });
        assert_eq!(parse_marker("garbage"), Unfinished { pid: None, operation: "garbage".into() });
    }

    #[test]
    fn an_unwritable_directory_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        fs::write(&file, "").unwrap();
        let err = Locks::in_dir(&file).acquire(&key(), WAIT).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-directory"), "{err}");
    }
}
