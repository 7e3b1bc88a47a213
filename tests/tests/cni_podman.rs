//! intercept chained after `bridge` in a real CNI runtime (podman, CNI backend), on the deploy
//! example's network (see `intercept_tests::podman`): interception is in place before a
//! container's first process runs, an ECS-shaped task (a pause container holding the
//! namespace, a proxy and an app joining it) works through it, and removing the containers
//! (CNI DEL) leaves nothing in the namespace.
//!
//! Needs root, podman, runc, containernetworking-plugins and the Debian base tarball, all of
//! which `cargo xtask test` provides.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use intercept::{
    config::ProxyConfig,
    model::{Decision, decide},
};
use intercept_tests::{
    cni::nothing_left,
    podman::Podman,
    seed_guide_config,
    topology::Netns,
    traffic::{Listeners, Reply, Role, agrees, egress},
};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

/// The deploy example's configuration (the seed guide's), as the model reads it: the plugin's
/// IPv6 default is off.
fn example_config() -> ProxyConfig {
    ProxyConfig { ipv6: false, ..seed_guide_config() }
}

fn bins() -> &'static Path {
    Path::new(CLIENT).parent().expect("the test binaries' directory")
}

/// A container whose first process is the test client dialling the gateway as `user`; its
/// output (the reply, or why it failed) and whether it succeeded.
fn first_process_connects(podman: &Podman, name: &str, user: &str) -> (bool, String) {
    let mut args = podman.run_args(bins(), name, "intercept", user, false);
    args.extend(["/bins/intercept-test-client".to_owned(), "--reply".to_owned(), format!("{}:80", podman.gateway())]);
    let out = podman.output(&args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_owned())
}

#[test]
#[ignore = "privileged (root, podman, CNI plugins): `cargo xtask test` runs it"]
fn chained_after_bridge_in_podman() {
    let podman = Podman::start("chained_after_bridge_in_podman");
    let remote: SocketAddr = "0.0.0.0:80".parse().unwrap();
    let _remote = Listeners::start(podman.node(), &[(Role::Remote, remote)]);

    // The very first thing the container's first process does is connect: already redirected
    // (to ProxyEgressPort, where nothing listens in this container, so refused), while the
    // same process as IgnoredUID reaches the real server.
    let (ok, out) = first_process_connects(&podman, "first-app", "1000:1000");
    assert!(!ok && out.contains("Connection refused"), "the app's first connection must be redirected: {out}");
    let (ok, out) = first_process_connects(&podman, "first-proxy", "1337:1337");
    let reply = Reply::parse(&out).unwrap_or_else(|e| panic!("IgnoredUID must reach the server ({e}): {out}"));
    assert!(ok && reply.role == Role::Remote, "{out}");

    // An ECS-shaped task: the pause container's namespace gets the network (ADD), the proxy
    // and the app join it.
    let mut pause = podman.run_args(bins(), "pause", "intercept", "0:0", true);
    pause.extend(["sleep".to_owned(), "infinity".to_owned()]);
    podman.must(&pause);
    // A name for the namespace that outlives the containers, to look into after DEL.
    let task = Netns::attach("podman-task", podman.pid("pause"));
    let mut proxy = podman.run_args(bins(), "proxy", "container:pause", "1337:1337", true);
    proxy.extend(["/bins/intercept-ebpf-probe", "serve", "egress-proxy", "0.0.0.0:15001"].map(str::to_owned));
    podman.must(&proxy);
    wait_ready(&podman, "proxy");
    let mut app = podman.run_args(bins(), "app", "container:pause", "1000:1000", false);
    let destination: SocketAddr = format!("{}:80", podman.gateway()).parse().unwrap();
    app.extend(["/bins/intercept-test-client".to_owned(), "--reply".to_owned(), destination.to_string()]);
    let out = podman.must(&app);
    let reply = Reply::parse(&out).unwrap_or_else(|e| panic!("{e}"));
    let task_ip: IpAddr = podman
        .must(&["inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "pause"])
        .parse()
        .expect("the task's address");
    let connection = egress(1000, 1000, task_ip, destination);
    let local = intercept::model::LocalAddrs::with_addresses([task_ip]);
    let decision = decide(&example_config(), &local, &connection);
    assert!(matches!(decision, Decision::Redirect { .. }), "{decision:?}");
    agrees(&decision, &connection, &reply).unwrap_or_else(|e| panic!("{e}"));
    assert!(task.exec("iptables-save", &["-t", "nat"]).contains("INTERCEPT_EGRESS"));

    // Removing the task's containers is CNI DEL on the pause container's namespace.
    podman.must(&["rm", "--force", "--time", "0", "proxy"]);
    podman.must(&["rm", "--force", "--time", "0", "pause"]);
    nothing_left(&task);
}

/// Waits until the probe in container `name` has bound its listeners (it prints READY).
fn wait_ready(podman: &Podman, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let logs = podman.must(&["logs", name]);
        if logs.contains("READY") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{name} never listened: {logs}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
