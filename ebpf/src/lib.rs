//! The eBPF programs live in `main.rs` (the `intercept` binary target, built for
//! bpfel-unknown-none by agent/build.rs). This library target only exists so that the agent
//! can declare a build-dependency on this crate; see `Cargo.toml`.
#![no_std]
