//! What the eBPF backend needs to know about the host: where bpffs is mounted (from
//! `/proc/self/mountinfo`) and which programs are attached to a cgroup; and the bpf() commands
//! aya does not offer.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::Error;

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

/// Whether a bpffs is mounted exactly at `path` (canonical).
pub fn is_bpffs(path: &Path) -> Result<bool, Error> {
    let mounts = crate::mountinfo::read().map_err(|e| Error::io("read", crate::mountinfo::SELF, e))?;
    Ok(mounts.iter().any(|m| m.fstype == "bpf" && m.mount_point == path))
}

/// `bpf(BPF_PROG_QUERY)`: the ids of the programs attached to `cgroup` for `attach_type`
/// (directly, not inherited).
pub fn attached_programs(cgroup: &Path, attach_type: u32) -> Result<Vec<u32>, Error> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let dir = fs::File::open(cgroup).map_err(|e| Error::io("open cgroup", cgroup, e))?;
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_QUERY; prog_ids points to prog_cnt
    // u32s that outlive the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr as *mut QueryAttr, size_of::<QueryAttr>() as u32)
    };
    if ret < 0 {
        return Err(Error::io("query the programs attached to", cgroup, io::Error::last_os_error()));
    }
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// `bpf(BPF_LINK_CREATE)`: attaches the program `prog` to `cgroup` at `attach_type` with a
/// bpf link (no flags: links always coexist with the cgroup's other programs). Closing the
/// returned fd detaches the program unless the link was pinned.
///
/// Done here rather than through aya because aya 0.14 cannot turn every cgroup link type
/// (the sockopt one) into a pinnable `FdLink`.
pub fn link_create(prog: BorrowedFd<'_>, cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    #[repr(C)]
    struct LinkCreateAttr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        // The rest of the union, zeroed.
        _rest: [u64; 8],
    }
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _rest: [0; 8],
    };
    // SAFETY: attr is a valid bpf_attr for BPF_LINK_CREATE and lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateAttr,
            size_of::<LinkCreateAttr>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `bpf(BPF_OBJ_GET)`: opens the bpf object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: attr is a valid bpf_attr for BPF_OBJ_GET; pathname points to a NUL-terminated
    // string that outlives the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjGetAttr, size_of::<ObjGetAttr>() as u32)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a cgroup link: the id of the cgroup it is attached to,
/// 0 once the kernel has detached it because the cgroup is gone.
pub fn link_cgroup_id(link: BorrowedFd<'_>) -> io::Result<u64> {
    const BPF_LINK_TYPE_CGROUP: u32 = 3;
    let (link_type, target) = link_target(link)?;
    if link_type != BPF_LINK_TYPE_CGROUP {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("link type {link_type} is not cgroup")));
    }
    Ok(target)
}

/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` on a network namespace link: the inode of the namespace it is
/// attached to, 0 once detached (the namespace is gone, or the link was detached).
pub fn link_netns_ino(link: BorrowedFd<'_>) -> io::Result<u32> {
    const BPF_LINK_TYPE_NETNS: u32 = 5;
    let (link_type, target) = link_target(link)?;
    if link_type != BPF_LINK_TYPE_NETNS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("link type {link_type} is not netns")));
    }
    // The union's netns member starts with `__u32 netns_ino` (little-endian hosts).
    Ok(target as u32)
}

/// `bpf(BPF_LINK_DETACH)`: detaches a link from its target at once; the link object stays
/// (detached) as long as something holds it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct DetachAttr {
        link_fd: u32,
        _pad: u32,
    }
    let attr = DetachAttr { link_fd: link.as_raw_fd() as u32, _pad: 0 };
    // SAFETY: attr is a valid bpf_attr for BPF_LINK_DETACH and lives across the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, &attr as *const DetachAttr, size_of::<DetachAttr>() as u32)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `bpf(BPF_LINK_UPDATE)` with `BPF_F_REPLACE`: makes the link run `new` instead of `old`, in
/// one step (the hook runs one or the other, never neither); fails with `EPERM` if the link no
/// longer runs `old`.
pub fn link_update(link: BorrowedFd<'_>, new: BorrowedFd<'_>, old: BorrowedFd<'_>) -> io::Result<()> {
    const BPF_LINK_UPDATE: libc::c_long = 29;
    const BPF_F_REPLACE: u32 = 1 << 2;
    #[repr(C)]
    struct UpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = UpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: new.as_raw_fd() as u32,
        flags: BPF_F_REPLACE,
        old_prog_fd: old.as_raw_fd() as u32,
    };
    // SAFETY: attr is a valid bpf_attr for BPF_LINK_UPDATE and lives across the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_UPDATE, &attr as *const UpdateAttr, size_of::<UpdateAttr>() as u32)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `bpf(BPF_PROG_GET_FD_BY_ID)`: a program by its id.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    #[repr(C)]
    struct ByIdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
        _pad: u32,
    }
    let attr = ByIdAttr { id, next_id: 0, open_flags: 0, _pad: 0 };
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_GET_FD_BY_ID and lives across the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, &attr as *const ByIdAttr, size_of::<ByIdAttr>() as u32)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A link's type and the first 8 bytes of its type-specific info (`struct bpf_link_info`).
fn link_target(link: BorrowedFd<'_>) -> io::Result<(u32, u64)> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// `struct bpf_link_info` up to its cgroup member (the union starts 8-byte aligned).
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _pad2: u32,
    }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = LinkInfo::default();
    let attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: attr is a valid bpf_attr for BPF_OBJ_GET_INFO_BY_FD; info points to info_len
    // writable bytes that outlive the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const InfoAttr, size_of::<InfoAttr>() as u32)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.link_type, info.cgroup_id))
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
    const BPF_OBJ_PIN: libc::c_long = 6;
    #[repr(C)]
    struct ObjPinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjPinAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr is a valid bpf_attr for BPF_OBJ_PIN; pathname points to a NUL-terminated
    // string that outlives the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &attr as *const ObjPinAttr, size_of::<ObjPinAttr>() as u32)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let error = |e| Error::io("wait for running eBPF programs: bpf() on", "a throwaway map-in-map", e);
    let inner = map_create(BPF_MAP_TYPE_ARRAY, None).map_err(error)?;
    let outer = map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(inner.as_raw_fd() as u32)).map_err(error)?;
    #[repr(C)]
    struct UpdateAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let key: u32 = 0;
    let value: u32 = inner.as_raw_fd() as u32;
    let attr = UpdateAttr {
        map_fd: outer.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr for BPF_MAP_UPDATE_ELEM; key and value point to u32s
    // that outlive the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, &attr as *const UpdateAttr, size_of::<UpdateAttr>() as u32)
    };
    if ret < 0 {
        return Err(error(io::Error::last_os_error()));
    }
    Ok(())
}

/// `bpf(BPF_MAP_CREATE)` of a one-slot map with `u32` keys and values.
fn map_create(map_type: u32, inner_map_fd: Option<u32>) -> io::Result<OwnedFd> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    #[repr(C)]
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut map_name = [0u8; 16];
    map_name[..14].copy_from_slice(b"intercept_sync");
    let attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
        inner_map_fd: inner_map_fd.unwrap_or(0),
        numa_node: 0,
        map_name,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_MAP_CREATE and lives across the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr as *const MapCreateAttr, size_of::<MapCreateAttr>() as u32)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
