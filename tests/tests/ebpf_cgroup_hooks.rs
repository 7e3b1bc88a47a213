//! The embedded eBPF object end to end: it loads, its connect hooks attach to a test cgroup,
//! run for the processes in that cgroup and only for them, let their connections through,
//! and everything is gone after the guards drop.
//!
//! Needs root; see `intercept_tests::require_privileges`. Traffic stays on loopback.

use std::{
    io::{ErrorKind, Read as _},
    net::{Ipv4Addr, Ipv6Addr, TcpListener},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use intercept::backend::ebpf::{CgroupHooks, Hook};
use intercept_tests::{CLIENT_GREETING, cannot_run, require_privileges, run_with_timeout};

const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the test client against `addr`, with `command` deciding where it runs, and checks
/// that its connection reached `listener` unchanged.
fn connect(mut command: Command, listener: &TcpListener) {
    let addr = listener.local_addr().expect("listener address");
    let status = run_with_timeout(command.arg(addr.to_string()), TIMEOUT);
    assert!(status.success(), "{CLIENT} {addr}: {status}");
    assert_eq!(accept_greeting(listener), CLIENT_GREETING, "what arrived at {addr}");
}

/// Accepts one connection (already queued: the client has exited) and reads all it sent.
fn accept_greeting(listener: &TcpListener) -> Vec<u8> {
    listener.set_nonblocking(true).expect("non-blocking listener");
    let deadline = Instant::now() + TIMEOUT;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept on {:?}: {e}", listener.local_addr()),
        }
    };
    stream.set_nonblocking(false).expect("blocking stream");
    stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    let mut received = Vec::new();
    stream.read_to_end(&mut received).expect("read from the client");
    received
}

fn calls(hooks: &CgroupHooks, hook: Hook) -> u64 {
    hooks.calls(hook).unwrap_or_else(|e| panic!("read the {hook:?} counter: {e}"))
}

#[test]
fn connect4_in_the_cgroup_is_counted_and_nothing_is_left_behind() {
    let Some(host) = require_privileges("connect4_in_the_cgroup_is_counted_and_nothing_is_left_behind") else {
        return;
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on 127.0.0.1");
    let cgroup = host.create_cgroup().expect("create a test cgroup");
    let cgroup_path = cgroup.path().to_owned();
    let hooks = CgroupHooks::attach(cgroup.open().expect("open the test cgroup")).expect("load and attach");
    assert_eq!(calls(&hooks, Hook::Connect4), 0, "before any connect");

    connect(cgroup.command(CLIENT), &listener);

    assert_eq!(calls(&hooks, Hook::Connect4), 1, "one IPv4 connect(2) in the cgroup");
    assert_eq!(calls(&hooks, Hook::Connect6), 0, "no IPv6 connect(2)");
    assert_eq!(cgroup.pids().expect("cgroup pids"), Vec::<u32>::new(), "the client has exited");

    drop(hooks);
    drop(cgroup);
    assert!(!cgroup_path.exists(), "{} still exists after the guard dropped", cgroup_path.display());
}

#[test]
fn connect6_in_the_cgroup_is_counted() {
    const TEST: &str = "connect6_in_the_cgroup_is_counted";
    let Some(host) = require_privileges(TEST) else {
        return;
    };
    let listener = match TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(listener) => listener,
        Err(e) => return cannot_run(TEST, &format!("cannot listen on [::1] (IPv6 disabled?): {e}")),
    };
    let cgroup = host.create_cgroup().expect("create a test cgroup");
    let hooks = CgroupHooks::attach(cgroup.open().expect("open the test cgroup")).expect("load and attach");

    connect(cgroup.command(CLIENT), &listener);

    assert_eq!(calls(&hooks, Hook::Connect6), 1, "one IPv6 connect(2) in the cgroup");
    assert_eq!(calls(&hooks, Hook::Connect4), 0, "no IPv4 connect(2)");
}

#[test]
fn a_process_outside_the_cgroup_is_not_counted() {
    let Some(host) = require_privileges("a_process_outside_the_cgroup_is_not_counted") else {
        return;
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on 127.0.0.1");
    let cgroup = host.create_cgroup().expect("create a test cgroup");
    let hooks = CgroupHooks::attach(cgroup.open().expect("open the test cgroup")).expect("load and attach");

    // Same client, started like the test runner's other children: not in the test cgroup.
    connect(Command::new(CLIENT), &listener);
    assert_eq!(calls(&hooks, Hook::Connect4), 0, "a connect(2) outside the cgroup");

    // The hooks are live all along: the same client inside the cgroup is counted.
    connect(cgroup.command(CLIENT), &listener);
    assert_eq!(calls(&hooks, Hook::Connect4), 1, "a connect(2) inside the cgroup");
}

#[test]
fn the_cgroup_is_removed_when_a_test_panics() {
    let Some(host) = require_privileges("the_cgroup_is_removed_when_a_test_panics") else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel::<std::path::PathBuf>();
    let panicked = thread::spawn(move || {
        let cgroup = host.create_cgroup().expect("create a test cgroup");
        let _hooks = CgroupHooks::attach(cgroup.open().expect("open the test cgroup")).expect("load and attach");
        tx.send(cgroup.path().to_owned()).expect("send the cgroup path");
        panic!("deliberate panic while the hooks are attached");
    })
    .join();
    assert!(panicked.is_err(), "the thread panicked");
    let path = rx.recv().expect("the cgroup was created");
    assert!(!path.exists(), "{} survived the panic", path.display());
}

/// The object's programs are all attached: a missing or renamed program fails here rather
/// than silently counting nothing.
#[test]
fn every_hook_is_in_the_object() {
    let object = intercept::backend::ebpf::object();
    assert!(object.starts_with(b"\x7fELF"), "the embedded object is an ELF file");
    for hook in Hook::ALL {
        let section = format!("cgroup/{}", hook.program_name());
        assert!(
            object.windows(section.len()).any(|w| w == section.as_bytes()),
            "section {section} in the embedded object"
        );
    }
}
