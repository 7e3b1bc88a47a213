//! intercept: steer a workload's TCP traffic into its sidecar proxy, configured like an
//! ECS task definition's APPMESH `proxyConfiguration`.
//!
//! The flow is input → [`config::ProxyConfig`] → pure plans ([`plan`]) → a backend applies
//! them. Everything up to the plan is pure and tested without privileges; the decision
//! model in [`model`] is the oracle every backend is tested against.

pub mod backend;
pub mod cgroup;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod fuzz;
pub mod lint;
pub mod lock;
pub mod model;
pub mod mountinfo;
pub mod netns;
pub mod plan;
pub mod privileges;
pub mod readiness;
pub mod report;
#[cfg(test)]
mod testdata;
pub mod verify;

/// An error and its sources, on one line: for messages that must name the root cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
