//! A fake kernel behind the bpf() entry point ([`super::sys::override_bpf`]) that records
//! every command with its attributes decoded, and keeps a bpffs of plain files: a pin is a
//! file holding the name of the object pinned there, and opening it gives an fd of that name.
//! Every fd it hands out is a `memfd` named after its object, so a recorded command names the
//! objects it was given (a link, a program, a cgroup directory by its path) whatever fd
//! numbers the process reuses. It lets the link switching, its rollback, the staging of pins
//! and pruning be tested without root; the privileged tests in `tests/` run the same code
//! against the kernel.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{FromRawFd as _, IntoRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use aya_obj::generated::{bpf_link_info, bpf_link_type};

use super::sys::{self, bpf_attr, bpf_cmd};

/// One bpf() command as the fake received it; fds are given as the names of their objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    ObjGet { path: PathBuf },
    ObjPin { object: String, path: PathBuf },
    ProgGetFdById { id: u32 },
    LinkCreate { prog: String, target: String, attach_type: u32, flags: u32 },
    LinkDetach { link: String },
    LinkInfo { link: String, info_len: u32 },
    ProgQuery { target: String, attach_type: u32, query_flags: u32, room: u32 },
    MapCreate { map_type: u32, key_size: u32, value_size: u32, max_entries: u32, inner: Option<String>, name: String },
    MapUpdateElem { map: String, key: u32, value: String, flags: u64 },
}

type Failure = (Box<dyn Fn(&Call) -> bool>, i32);

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    failures: Vec<Failure>,
    /// By link name: its type and its target (a cgroup id, or a netns inode).
    links: BTreeMap<String, (bpf_link_type, u64)>,
    /// The program ids `BPF_PROG_QUERY` reports.
    attached: Vec<u32>,
}

/// The fake kernel of this thread; made by [`Kernel::install`].
#[derive(Clone)]
pub(super) struct Kernel(Rc<RefCell<State>>);

impl Kernel {
    /// Puts a new fake kernel behind this thread's bpf() commands.
    pub(super) fn install() -> Kernel {
        let kernel = Kernel(Rc::default());
        let hook = kernel.clone();
        sys::override_bpf(move |cmd, attr| hook.bpf(cmd, attr));
        kernel
    }

    /// The commands received so far.
    pub(super) fn calls(&self) -> Vec<Call> {
        self.0.borrow().calls.clone()
    }

    /// Makes every command that `matches` fail with `errno` (it is still recorded).
    pub(super) fn fail(&self, errno: i32, matches: impl Fn(&Call) -> bool + 'static) {
        self.0.borrow_mut().failures.push((Box::new(matches), errno));
    }

    /// What `BPF_OBJ_GET_INFO_BY_FD` tells of the link `name`.
    pub(super) fn link(&self, name: &str, link_type: bpf_link_type, target: u64) {
        self.0.borrow_mut().links.insert(name.to_owned(), (link_type, target));
    }

    /// What `BPF_PROG_QUERY` reports as attached.
    pub(super) fn attach(&self, ids: &[u32]) {
        self.0.borrow_mut().attached = ids.to_vec();
    }

    fn bpf(&self, cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
        // SAFETY (every union read below): the members are integers, and the code under test
        // filled the one `cmd` uses; the pointers in them point to memory it keeps alive across
        // the call, as for the kernel.
        let call = unsafe {
            match cmd {
                bpf_cmd::BPF_OBJ_GET => Call::ObjGet { path: c_path(attr.__bindgen_anon_4.pathname) },
                bpf_cmd::BPF_OBJ_PIN => Call::ObjPin {
                    object: name_of(attr.__bindgen_anon_4.bpf_fd),
                    path: c_path(attr.__bindgen_anon_4.pathname),
                },
                bpf_cmd::BPF_PROG_GET_FD_BY_ID => {
                    Call::ProgGetFdById { id: attr.__bindgen_anon_6.__bindgen_anon_1.prog_id }
                }
                bpf_cmd::BPF_LINK_CREATE => Call::LinkCreate {
                    prog: name_of(attr.link_create.__bindgen_anon_1.prog_fd),
                    target: name_of(attr.link_create.__bindgen_anon_2.target_fd),
                    attach_type: attr.link_create.attach_type,
                    flags: attr.link_create.flags,
                },
                bpf_cmd::BPF_LINK_DETACH => Call::LinkDetach { link: name_of(attr.link_detach.link_fd) },
                bpf_cmd::BPF_OBJ_GET_INFO_BY_FD => {
                    Call::LinkInfo { link: name_of(attr.info.bpf_fd), info_len: attr.info.info_len }
                }
                bpf_cmd::BPF_PROG_QUERY => Call::ProgQuery {
                    target: name_of(attr.query.__bindgen_anon_1.target_fd),
                    attach_type: attr.query.attach_type,
                    query_flags: attr.query.query_flags,
                    room: attr.query.__bindgen_anon_2.prog_cnt,
                },
                bpf_cmd::BPF_MAP_CREATE => {
                    let create = &attr.__bindgen_anon_1;
                    let name = CStr::from_ptr(create.map_name.as_ptr()).to_string_lossy().into_owned();
                    Call::MapCreate {
                        map_type: create.map_type,
                        key_size: create.key_size,
                        value_size: create.value_size,
                        max_entries: create.max_entries,
                        inner: (create.inner_map_fd != 0).then(|| name_of(create.inner_map_fd)),
                        name,
                    }
                }
                bpf_cmd::BPF_MAP_UPDATE_ELEM => {
                    let update = &attr.__bindgen_anon_2;
                    Call::MapUpdateElem {
                        map: name_of(update.map_fd),
                        key: *(update.key as *const u32),
                        value: name_of(*(update.__bindgen_anon_1.value as *const u32)),
                        flags: update.flags,
                    }
                }
                cmd => panic!("the fake kernel does not know {cmd:?}"),
            }
        };
        let mut state = self.0.borrow_mut();
        state.calls.push(call.clone());
        if let Some((_, errno)) = state.failures.iter().find(|(matches, _)| matches(&call)) {
            return Err(io::Error::from_raw_os_error(*errno));
        }
        match call {
            Call::ObjGet { path } => Ok(new_fd(&fs::read_to_string(path)?)),
            Call::ObjPin { object, path } => {
                fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
                fs::write(path, object)?;
                Ok(0)
            }
            Call::ProgGetFdById { id } => Ok(new_fd(&format!("prog {id}"))),
            Call::LinkCreate { prog, .. } => Ok(new_fd(&format!("link {prog}"))),
            Call::LinkInfo { link, .. } => {
                let &(link_type, target) = state.links.get(&link).ok_or(io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: `info` points to `info_len` writable bytes, a bpf_link_info.
                let info = unsafe { &mut *(attr.info.info as *mut bpf_link_info) };
                info.type_ = link_type as u32;
                match link_type {
                    bpf_link_type::BPF_LINK_TYPE_NETNS => info.__bindgen_anon_1.netns.netns_ino = target as u32,
                    _ => info.__bindgen_anon_1.cgroup.cgroup_id = target,
                }
                Ok(0)
            }
            Call::ProgQuery { room, .. } => {
                let count = state.attached.len().min(room as usize);
                // SAFETY: prog_ids points to `room` writable u32s.
                let ids = unsafe { std::slice::from_raw_parts_mut(attr.query.prog_ids as *mut u32, count) };
                ids.copy_from_slice(&state.attached[..count]);
                attr.query.__bindgen_anon_2.prog_cnt = state.attached.len() as u32;
                Ok(0)
            }
            Call::MapCreate { map_type, .. } => Ok(new_fd(&format!("map type {map_type}"))),
            Call::LinkDetach { .. } | Call::MapUpdateElem { .. } => Ok(0),
        }
    }
}

/// An fd of the object `name`, as a test's own program or target: a `memfd` of that name.
pub(super) fn object(name: &str) -> OwnedFd {
    let c_name = CString::new(name).expect("no NUL in a name");
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c_name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: a new fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Pins the object `name` at `path` in a fake bpffs.
pub(super) fn pin(path: &Path, name: &str) {
    fs::write(path, name).expect("a pin written");
}

/// The object the fd stands for: a memfd's name, or else the path it has open.
fn name_of(fd: u32) -> String {
    let target = fs::read_link(format!("/proc/self/fd/{fd}")).map(|t| t.to_string_lossy().into_owned());
    match target {
        Ok(target) => match target.strip_prefix("/memfd:") {
            Some(name) => name.trim_end_matches(" (deleted)").to_owned(),
            None => target,
        },
        Err(_) => format!("closed fd {fd}"),
    }
}

/// A new fd for the object `name`, its ownership passed to the caller of bpf().
fn new_fd(name: &str) -> i64 {
    i64::from(object(name).into_raw_fd())
}

/// The path a `pathname` attribute points to.
///
/// # Safety
/// `pointer` points to a NUL-terminated string.
unsafe fn c_path(pointer: u64) -> PathBuf {
    // SAFETY: as the caller promises.
    let path = unsafe { CStr::from_ptr(pointer as *const std::ffi::c_char) };
    PathBuf::from(path.to_string_lossy().into_owned())
}
