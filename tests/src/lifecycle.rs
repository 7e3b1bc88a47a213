//! What the iptables and nftables backends' life-cycle tests share: a sandbox with one remote
//! destination and two egress proxy ports, a client connecting to it from the task, and other
//! tools' xtables rules. (Replacing the configuration while connections flow, for every
//! backend: `tests/tests/faults.rs`.)
//!
//! Backend-neutral: each test file opens its own backend and hands over what differs.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Stdio,
};

use crate::{
    topology::Netns,
    traffic::{Client, Reply, Sandbox, SandboxSpec},
};

pub const REMOTE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 5, 0, 1));
pub const REMOTE_PORT: u16 = 80;

/// Egress proxies on 15001 (the seed's) and 15002 (the replacement's), the ingress proxy,
/// the app on 9080, and [`REMOTE`].
pub fn sandbox() -> Sandbox {
    Sandbox::new(&SandboxSpec {
        egress_proxy_ports: vec![15001, 15002],
        ingress_proxy_ports: vec![15000],
        app_ports: vec![9080],
        remote_ports: vec![REMOTE_PORT],
        remote_addresses: vec![REMOTE],
        ..SandboxSpec::default()
    })
}

/// A connection from the task, as an app (uid and gid 1000), to [`REMOTE`], with the test
/// client at `client`.
pub fn egress_reply(client: &str, sandbox: &Sandbox) -> Reply {
    Client::new(client)
        .netns(sandbox.task())
        .identity(1000, 1000)
        .connect(SocketAddr::new(REMOTE, REMOTE_PORT))
        .expect("connect")
}

/// `iptables-restore --noflush` input for another tool's state in one family: a chain of its
/// own and rules in the nat table, and a rule in the filter table, all matching `source`.
/// None of it touches the tests' TCP traffic.
pub fn foreign_xtables(source: &str) -> String {
    format!(
        "*nat\n:OTHER_TOOL - [0:0]\n-A OTHER_TOOL -p udp --dport 53 -j RETURN\n\
         -A OUTPUT -p udp -m comment --comment \"user rule\" -j OTHER_TOOL\n\
         -A PREROUTING -s {source} -p tcp -j RETURN\nCOMMIT\n\
         *filter\n-A INPUT -s {source} -j DROP\nCOMMIT\n"
    )
}

/// Runs `program args` in `netns` with `input` on its standard input; it must succeed.
pub fn feed(netns: &Netns, program: &str, args: &[&str], input: &str) {
    let mut child =
        netns.command(program).args(args).stdin(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "{program} <<< {input}");
}
