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
/// (`cgroup.procs`, the cgroup itself, not its children), each of its socket descriptors
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
    let procs_path = cgroup.join("cgroup.procs");
    let procs = fs::read_to_string(&procs_path).map_err(|e| Error::io("read", &procs_path, e))?;
    let mut adopted = Adopted::default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
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
