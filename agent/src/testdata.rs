//! The seed guide's task definitions (`examples/`) and the configuration they validate to,
//! shared by the unit tests of every module.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{ConfigArgs, Ingress, PortRange, PortSet, ProxyConfig};

/// The four task definitions of the seed guide: Fargate and EC2, each with and without X-Ray.
pub(crate) const EXAMPLES: [&str; 4] = ["fargate-taskB", "fargate-xray-taskB", "ec2-taskB", "ec2-xray-taskB"];

pub(crate) fn example_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples").join(format!("{name}.json"))
}

pub(crate) fn example_text(name: &str) -> String {
    let path = example_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The configuration the seed example `name` validates to, through the real parser and
/// validator.
pub(crate) fn example_config(name: &str) -> ProxyConfig {
    let input = crate::config::source::parse_task_definition(&example_text(name), name).unwrap();
    crate::config::validate(&input.raw).unwrap().config
}

/// The configuration all four seed examples' proxyConfiguration blocks validate to.
pub(crate) fn seed_config() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![1337],
        ingress: Some(Ingress { proxy_port: 15000, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
        egress_ignored_ports: PortSet::from_ranges([PortRange::single(22)]),
        egress_ignored_ips: vec!["169.254.169.254/32".parse().unwrap(), "169.254.170.2/32".parse().unwrap()],
        ..ProxyConfig::new(15001)
    }
}

pub(crate) use crate::fuzz::Flags as Cli;

/// The configuration arguments of an `intercept` command line (without the program name).
pub(crate) fn config_args(argv: &[&str]) -> ConfigArgs {
    Cli::try_parse_from(std::iter::once("intercept").chain(argv.iter().copied())).unwrap().config
}
