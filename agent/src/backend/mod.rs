//! Backends: the only code that touches the kernel. Each applies a plan built by [`crate::plan`].

pub mod ebpf;
