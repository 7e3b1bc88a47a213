//! Taking the ingress listeners of a proxy that was listening before the programs were
//! attached.

use std::fs;
use std::io;
use std::path::Path;

use aya::maps::{Map, MapData};

use super::{Error, host, maps};

/// What [`adopt_into`] found: the proxy's listening sockets on ProxyIngressPort put into
/// `PROXY_LISTENERS`, and the ones it could not take.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Adopted {
    /// `(pid, fd)` of each listener put into the map.
    pub listeners: Vec<(u32, i32)>,
    /// Why a process's sockets could not be looked at, one line each.
    pub problems: Vec<String>,
}

/// Puts the listening sockets on `port` of the cgroup's processes into `PROXY_LISTENERS`.
///
/// The `sockops` program inserts a listener when it starts listening; a proxy that was already
/// listening when the programs were attached is found here instead: each process of the cgroup
/// and of every cgroup below it (`cgroup.procs`; in ECS the proxy is in a container's cgroup
/// below the task's), each of its socket descriptors
/// (`/proc/PID/fd`), duplicated with `pidfd_getfd(2)` (which needs ptrace access to the process:
/// CAP_SYS_PTRACE for a process of another user) and kept when it is a TCP listener on `port`.
///
/// `dir` holds the pinned map: the installation's, or its staging directory.
pub(super) fn adopt_into(dir: &Path, cgroup: &Path, port: u16) -> Result<Adopted, Error> {
    let path = dir.join(intercept_common::PROXY_LISTENERS_MAP);
    let data = MapData::from_pin(&path).map_err(maps::map_error(intercept_common::PROXY_LISTENERS_MAP))?;
    let mut listeners = aya::maps::SockMap::try_from(
        Map::from_map_data(data).map_err(maps::map_error(intercept_common::PROXY_LISTENERS_MAP))?,
    )
    .map_err(maps::map_error(intercept_common::PROXY_LISTENERS_MAP))?;
    let mut adopted = Adopted::default();
    let (pids, hidden) = processes(cgroup)?;
    if hidden > 0 {
        adopted.problems.push(format!(
            "{hidden} process(es) of the cgroup are in another pid namespace (another container's), so their \
             listeners cannot be taken; give the task one pid namespace (ECS `pidMode: \"task\"`) or start the \
             proxy after intercept (`dependsOn` with SUCCESS)"
        ));
    }
    for pid in pids {
        match host::listeners_of(pid, port) {
            Ok(found) => {
                for (fd, socket, v6) in found {
                    let slot = if v6 { intercept_common::LISTENER_V6 } else { intercept_common::LISTENER_V4 };
                    match listeners.set(slot, &socket, 0) {
                        Ok(()) => adopted.listeners.push((pid, fd)),
                        Err(e) => adopted.problems.push(format!("process {pid}, fd {fd}: {e}")),
                    }
                }
            }
            // The process ended meanwhile: nothing to adopt.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) || e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => adopted
                .problems
                .push(format!("process {pid}: {e} (taking another process's socket needs CAP_SYS_PTRACE)")),
            Err(e) => adopted.problems.push(format!("process {pid}: {e}")),
        }
    }
    Ok(adopted)
}

/// The processes of `cgroup` and of every cgroup below it, and how many more there are in
/// other pid namespaces (the kernel lists those as 0). A child cgroup that goes away meanwhile
/// (its container ended) is passed over.
fn processes(cgroup: &Path) -> Result<(Vec<u32>, usize), Error> {
    let procs_path = cgroup.join("cgroup.procs");
    let procs = fs::read_to_string(&procs_path).map_err(|e| Error::io("read", &procs_path, e))?;
    let listed: Vec<u32> = procs.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let mut hidden = listed.iter().filter(|&&pid| pid == 0).count();
    let mut pids: Vec<u32> = listed.into_iter().filter(|&pid| pid != 0).collect();
    let children = fs::read_dir(cgroup).map_err(|e| Error::io("list", cgroup, e))?;
    for child in children.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
        match processes(&child.path()) {
            Ok((more, more_hidden)) => {
                pids.extend(more);
                hidden += more_hidden;
            }
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((pids, hidden))
}
