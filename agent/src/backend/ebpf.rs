//! The eBPF backend: the object built from `ebpf/` (embedded at compile time by `build.rs`) and
//! the code that loads it and attaches its programs to a cgroup.
//!
//! The object's programs are, for now, cgroup `connect4`/`connect6` hooks that count calls and
//! allow every connection unchanged; [`CgroupHooks`] loads them, attaches them and reads the
//! counters.

use std::os::fd::AsFd;

use aya::{
    Ebpf, EbpfError,
    maps::{MapData, MapError, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};

/// Name of the per-CPU call counter map in the object.
const CALLS_MAP: &str = "CALLS";

/// The eBPF object (ELF, bpfel) built from `ebpf/`, 8-byte aligned as aya requires.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/intercept"))
}

/// A cgroup hook of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `cgroup/connect4`: connect(2) on an AF_INET socket (and IPv4-mapped IPv6 addresses).
    Connect4,
    /// `cgroup/connect6`: connect(2) on an AF_INET6 socket to an IPv6 address.
    Connect6,
}

impl Hook {
    pub const ALL: [Self; 2] = [Self::Connect4, Self::Connect6];

    /// The program's name in the object (its function name in `ebpf/src/main.rs`).
    pub const fn program_name(self) -> &'static str {
        match self {
            Self::Connect4 => "connect4",
            Self::Connect6 => "connect6",
        }
    }

    /// The hook's slot in the `CALLS` map; must match the constants in `ebpf/src/main.rs`.
    const fn index(self) -> u32 {
        match self {
            Self::Connect4 => 0,
            Self::Connect6 => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the embedded eBPF object")]
    Load(#[source] Box<EbpfError>),
    #[error("the embedded eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the embedded eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("eBPF program `{program}`")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("eBPF map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

/// The object's programs, loaded and attached to one cgroup.
///
/// Every process in that cgroup (and its descendants) runs the hooks on connect(2). The
/// attachments are bpf links owned by this value and never pinned: dropping it detaches the
/// programs and unloads them.
pub struct CgroupHooks {
    // Owns the programs and their links; dropping it detaches them.
    _ebpf: Ebpf,
    calls: PerCpuArray<MapData, u64>,
}

impl CgroupHooks {
    /// Loads the embedded object and attaches every [`Hook`] to the cgroup open at `cgroup`
    /// (a directory fd in the cgroup2 hierarchy). Needs CAP_BPF and CAP_NET_ADMIN (root).
    pub fn attach(cgroup: impl AsFd) -> Result<Self, Error> {
        let mut ebpf = Ebpf::load(object()).map_err(|e| Error::Load(Box::new(e)))?;
        for hook in Hook::ALL {
            let program = hook.program_name();
            let program_error = |source| Error::Program { program, source: Box::new(source) };
            let prog: &mut CgroupSockAddr =
                ebpf.program_mut(program).ok_or(Error::MissingProgram(program))?.try_into().map_err(program_error)?;
            prog.load().map_err(program_error)?;
            // aya attaches with a bpf link (kernel >= 5.7); cgroup links always coexist with
            // other programs on the cgroup, and the kernel wants no attach flags for them.
            prog.attach(cgroup.as_fd(), CgroupAttachMode::Single).map_err(program_error)?;
        }
        let calls = ebpf.take_map(CALLS_MAP).ok_or(Error::MissingMap(CALLS_MAP))?;
        let calls = PerCpuArray::try_from(calls).map_err(map_error)?;
        Ok(Self { _ebpf: ebpf, calls })
    }

    /// How many times `hook` has run since [`attach`](Self::attach), summed over CPUs.
    pub fn calls(&self, hook: Hook) -> Result<u64, Error> {
        let per_cpu = self.calls.get(&hook.index(), 0).map_err(map_error)?;
        Ok(per_cpu.iter().sum())
    }
}

fn map_error(source: MapError) -> Error {
    Error::Map { map: CALLS_MAP, source: Box::new(source) }
}
