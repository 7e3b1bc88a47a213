//! What the eBPF backend needs to know about the host: where bpffs is mounted (by statfs) and
//! which programs are attached to a cgroup; and the bpf() commands
//! aya does not offer, each a `bpf_attr` through the one entry point of `sys.rs`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya_obj::generated::{bpf_link_info, bpf_link_type, bpf_map_type};

use super::Error;
use super::sys::{self, bpf_cmd};

/// Makes sure a writable bpffs is mounted at `path`, an existing directory, mounting one
/// (mode 0700) if none is. Returns whether this call mounted it. A missing path is refused
/// rather than created: a mistyped `--bpffs` would otherwise leave a directory and a mount
/// wherever it pointed.
pub fn ensure_bpffs(path: &Path) -> Result<bool, Error> {
    let bad = |reason| Error::Bpffs { path: path.to_owned(), reason };
    let path = match fs::canonicalize(path) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad("no such directory; name an existing directory (a bpffs is mounted on it if none is)"));
        }
        Err(e) => return Err(Error::io("resolve", path, e)),
    };
    if !path.is_dir() {
        return Err(bad("not a directory"));
    }
    if is_bpffs(&path)? {
        let flags = nix::sys::statvfs::statvfs(&path).map_err(|e| Error::io("statvfs", &path, e.into()))?.flags();
        if flags.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return Err(bad("the bpffs there is mounted read-only, so nothing can be pinned in it"));
        }
        return Ok(false);
    }
    let flags = nix::sys::statvfs::statvfs(&path).map_err(|e| Error::io("statvfs", &path, e.into()))?.flags();
    if flags.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        // A container's /sys: a bpffs mounted there is the container's own, and its pins (and
        // so the interception) would go when the container exits.
        return Err(bad(
            "no bpffs is mounted there, and the directory is on a read-only file system (a container's /sys): \
             a bpffs mounted there would be this container's own and vanish with it; mount the host's bpffs into \
             the container (`-v /sys/fs/bpf:/sys/fs/bpf`; in ECS a host volume of /sys/fs/bpf)",
        ));
    }
    nix::mount::mount(Some("bpf"), &path, Some("bpf"), nix::mount::MsFlags::empty(), Some("mode=0700")).map_err(
        |e| match e {
            nix::errno::Errno::EPERM => {
                Error::MissingCapability { capability: "CAP_SYS_ADMIN", needed_for: "mounting bpffs (--bpffs)" }
            }
            e => Error::io("mount bpffs at", &path, e.into()),
        },
    )?;
    Ok(true)
}

/// Serialises the agents working on one bpffs: an exclusive `flock` on its root directory
/// (never removed, unlike the pin directories), held until the returned value drops. Two
/// concurrent applies to one cgroup would otherwise both write the inactive generation.
pub fn lock_bpffs(path: &Path) -> Result<nix::fcntl::Flock<fs::File>, Error> {
    let dir = fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| Error::io("lock", path, errno.into()))
}

/// Whether a bpffs is mounted exactly at `path` (canonical, existing): its file system is a
/// bpffs, and `path` is the root of its mount (on a device other than its parent's). Asked of
/// the path itself rather than looked up in `/proc/self/mountinfo`, which an apply would
/// otherwise read at each check, and which grows by lines for every task's namespace.
pub fn is_bpffs(path: &Path) -> Result<bool, Error> {
    let fs = nix::sys::statfs::statfs(path).map_err(|e| Error::io("statfs", path, e.into()))?;
    // The magic's type is the C library's `f_type`: a signed or unsigned long.
    #[allow(clippy::unnecessary_cast)]
    if fs.filesystem_type().0 as u64 != libc::BPF_FS_MAGIC as u64 {
        return Ok(false);
    }
    let device = |p: &Path| fs::metadata(p).map(|m| m.dev()).map_err(|e| Error::io("stat", p, e));
    match path.parent() {
        Some(parent) => Ok(device(path)? != device(parent)?),
        None => Ok(true),
    }
}

/// `bpf(BPF_PROG_QUERY)`: the ids of the programs attached to `cgroup` for `attach_type`
/// (directly, not inherited).
pub fn attached_programs(cgroup: &Path, attach_type: u32) -> Result<Vec<u32>, Error> {
    let dir = fs::File::open(cgroup).map_err(|e| Error::io("open cgroup", cgroup, e))?;
    let mut ids = vec![0u32; 64];
    let mut attr = sys::zeroed();
    attr.query.__bindgen_anon_1.target_fd = dir.as_raw_fd() as u32;
    attr.query.attach_type = attach_type;
    // Where the kernel writes the ids, and how many fit; it writes back how many there are.
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = ids.len() as u32;
    sys::sys_bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)
        .map_err(|e| Error::io("query the programs attached to", cgroup, e))?;
    // SAFETY: prog_cnt is a u32 whichever member of the union is read.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt };
    ids.truncate(count as usize);
    Ok(ids)
}

/// `bpf(BPF_LINK_CREATE)`: attaches the program `prog` to `cgroup` at `attach_type` with a
/// bpf link (no flags: links always coexist with the cgroup's other programs). Closing the
/// returned fd detaches the program unless the link was pinned.
///
/// Done here rather than through aya because aya 0.14 cannot turn every cgroup link type
/// (the sockopt one) into a pinnable `FdLink`.
pub fn link_create(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = sys::zeroed();
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_fd = cgroup.as_raw_fd() as u32;
    attr.link_create.attach_type = attach_type;
    sys::sys_bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// `bpf(BPF_OBJ_GET)`: opens the bpf object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    sys::sys_bpf_fd(bpf_cmd::BPF_OBJ_GET, &mut attr)
}

/// `path` as the NUL-terminated string `BPF_OBJ_GET` and `BPF_OBJ_PIN` point to.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a cgroup link: the id of the cgroup it is attached to,
/// 0 once the kernel has detached it because the cgroup is gone.
pub fn link_cgroup_id(link: BorrowedFd<'_>) -> io::Result<u64> {
    let info = link_info(link)?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_CGROUP as u32 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("link type {} is not cgroup", info.type_)));
    }
    // SAFETY: the union's members are integers; a cgroup link's is `cgroup`.
    Ok(unsafe { info.__bindgen_anon_1.cgroup.cgroup_id })
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a network namespace link: the inode of the namespace it is
/// attached to, 0 once detached (the namespace is gone, or the link was detached).
pub fn link_netns_ino(link: BorrowedFd<'_>) -> io::Result<u32> {
    let info = link_info(link)?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_NETNS as u32 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("link type {} is not netns", info.type_)));
    }
    // SAFETY: the union's members are integers; a netns link's is `netns`.
    Ok(unsafe { info.__bindgen_anon_1.netns.netns_ino })
}

/// `bpf(BPF_LINK_DETACH)`: detaches a link from its target at once; the link object stays
/// (detached) as long as something holds it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = sys::zeroed();
    attr.link_detach.link_fd = link.as_raw_fd() as u32;
    sys::sys_bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a link: its `struct bpf_link_info`.
fn link_info(link: BorrowedFd<'_>) -> io::Result<bpf_link_info> {
    // SAFETY: bpf_link_info is integers and unions of integers: all zero bytes is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = sys::zeroed();
    attr.info.bpf_fd = link.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = &mut info as *mut bpf_link_info as u64;
    sys::sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// The TCP listening sockets of process `pid` bound to `port`: `(fd in the process, a
/// duplicate here, whether it is AF_INET6)`. Duplicates with `pidfd_getfd(2)`.
pub fn listeners_of(pid: u32, port: u16) -> io::Result<Vec<(i32, OwnedFd, bool)>> {
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut sockets = Vec::new();
    for entry in fs::read_dir(&fd_dir)? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // Only sockets ("socket:[inode]"); a descriptor closed meanwhile is skipped.
        if fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str().as_bytes().starts_with(b"socket:")) {
            sockets.push(fd);
        }
    }
    if sockets.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: pidfd_open takes a pid and flags; the returned fd is owned below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut found = Vec::new();
    for fd in sockets {
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number of that process and flags.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if dup < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBADF) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let socket = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
        use nix::sys::socket::{SockaddrStorage, getsockname, getsockopt, sockopt};
        let listening = getsockopt(&socket, sockopt::AcceptConn).unwrap_or(false);
        let tcp = getsockopt(&socket, sockopt::SockType).is_ok_and(|t| t == nix::sys::socket::SockType::Stream);
        if !listening || !tcp {
            continue;
        }
        let Ok(addr) = getsockname::<SockaddrStorage>(socket.as_raw_fd()) else { continue };
        let (bound, v6) = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
            (Some(v4), _) => (v4.port(), false),
            (_, Some(v6)) => (v6.port(), true),
            _ => continue,
        };
        if bound == port {
            found.push((fd, socket, v6));
        }
    }
    Ok(found)
}

/// `bpf(BPF_OBJ_PIN)`: pins the bpf object `fd` (here a link) at `path` on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd.as_raw_fd() as u32;
    sys::sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Returns once every eBPF program that was running when it was called has finished.
///
/// Our programs are not sleepable: each run is an RCU read-side critical section. Updating an
/// element of a map-in-map makes the kernel wait for an RCU grace period before returning
/// (`maybe_wait_bpf_programs` in kernel/bpf/syscall.c), exactly "so that userspace, when we
/// return to it, knows that all non-sleepable programs that could be running use the new
/// map value"; the kernel's own selftests use this to wait for programs. So: a throwaway
/// one-slot `ARRAY_OF_MAPS` and one update of it. Both maps are freed when their fds close.
pub fn wait_for_running_programs() -> Result<(), Error> {
    let error = |e| Error::io("wait for running eBPF programs: bpf() on", "a throwaway map-in-map", e);
    let inner = one_slot_map(bpf_map_type::BPF_MAP_TYPE_ARRAY, None).map_err(error)?;
    let outer =
        one_slot_map(bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(inner.as_raw_fd() as u32)).map_err(error)?;
    let key: u32 = 0;
    let value: u32 = inner.as_raw_fd() as u32;
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_2.map_fd = outer.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = &value as *const u32 as u64;
    sys::sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map_err(error)?;
    Ok(())
}

/// `bpf(BPF_MAP_CREATE)` of a one-slot map with `u32` keys and values.
fn one_slot_map(map_type: bpf_map_type, inner_map_fd: Option<u32>) -> io::Result<OwnedFd> {
    let mut attr = create_attr(&MapSpec {
        name: "intercept_sync",
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        flags: 0,
    });
    attr.__bindgen_anon_1.inner_map_fd = inner_map_fd.unwrap_or(0);
    sys::sys_bpf_fd(bpf_cmd::BPF_MAP_CREATE, &mut attr)
}

/// A map to create with [`map_create`] (one without BTF: plain keys and values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    /// The kernel keeps 15 bytes of it.
    pub name: &'static str,
    pub map_type: bpf_map_type,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// `bpf(BPF_MAP_CREATE)`.
pub fn map_create(spec: &MapSpec) -> io::Result<OwnedFd> {
    sys::sys_bpf_fd(bpf_cmd::BPF_MAP_CREATE, &mut create_attr(spec))
}

fn create_attr(spec: &MapSpec) -> sys::bpf_attr {
    let mut map_name = [0 as std::ffi::c_char; 16];
    for (to, from) in map_name.iter_mut().take(15).zip(spec.name.as_bytes()) {
        *to = *from as std::ffi::c_char;
    }
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_1.map_type = spec.map_type as u32;
    attr.__bindgen_anon_1.key_size = spec.key_size;
    attr.__bindgen_anon_1.value_size = spec.value_size;
    attr.__bindgen_anon_1.max_entries = spec.max_entries;
    attr.__bindgen_anon_1.map_flags = spec.flags;
    attr.__bindgen_anon_1.map_name = map_name;
    attr
}

/// `bpf(BPF_MAP_UPDATE_ELEM)` with raw key and value bytes (of the map's sizes).
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key.as_ptr() as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_ptr() as u64;
    attr.__bindgen_anon_2.flags = flags;
    sys::sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// `bpf(BPF_MAP_DELETE_ELEM)`: `Ok(false)` when there was no such entry.
pub fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key.as_ptr() as u64;
    match sys::sys_bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `bpf(BPF_MAP_LOOKUP_ELEM)` into `value`: `Ok(false)` when there is no such entry.
pub fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key.as_ptr() as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    match sys::sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `bpf(BPF_MAP_GET_NEXT_KEY)`: the key after `key` (the first with `None`) into `next`;
/// `Ok(false)` when there is none.
pub fn map_next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = sys::zeroed();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key.map_or(0, |key| key.as_ptr() as u64);
    attr.__bindgen_anon_2.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
    match sys::sys_bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
