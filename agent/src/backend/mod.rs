//! Backends: the only code that touches the kernel. Each applies a plan built by [`crate::plan`].

pub mod auto;
pub mod ebpf;
pub mod exec;
pub mod iptables;
pub mod nftables;

/// The exit code of `intercept status`, whatever the backend: 0 when installed and matching
/// the configuration (if one was given), else 1.
pub(crate) fn status_exit_code(installed: bool, matches: Option<bool>) -> i32 {
    i32::from(!(installed && matches != Some(false)))
}
