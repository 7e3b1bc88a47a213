//! Types shared by the agent and the eBPF programs (owned by the build-pipeline work).
#![no_std]
