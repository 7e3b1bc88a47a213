//! Backends: the only code that touches the kernel. Each applies a plan built by [`crate::plan`].

pub mod auto;
pub mod ebpf;
pub mod iptables;
pub mod nftables;
