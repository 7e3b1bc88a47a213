//! `--backend auto` through the `intercept` binary: with a cgroup it picks eBPF (root has
//! every capability, and the kernel has the program types), goes on with the eBPF
//! installation for `status`, and `remove` takes it away. The choice between nftables and
//! iptables is tested in `nftables_lifecycle.rs`.
//!
//! Needs root and the `intercept` binary; see `intercept_tests::require_privileges` and
//! `intercept_tests::topology::intercept_bin`.

use std::process::Command;

use intercept_tests::{
    ebpf::EbpfSandbox, require_privileges, run_output, seed_task_definition, topology::intercept_bin,
};

const PROBE: &str = env!("CARGO_BIN_EXE_intercept-ebpf-probe");
const CLIENT: &str = env!("CARGO_BIN_EXE_intercept-test-client");

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn auto_picks_ebpf_when_given_a_cgroup() {
    let test = "auto_picks_ebpf_when_given_a_cgroup";
    let host = require_privileges(test);
    let bin = intercept_bin(test);
    let world = EbpfSandbox::new(&host, PROBE, CLIENT);
    let target = [
        "--backend".to_owned(),
        "auto".to_owned(),
        "--cgroup".to_owned(),
        world.cgroup.path().display().to_string(),
        "--bpffs".to_owned(),
        world.bpffs.path().display().to_string(),
        "--netns".to_owned(),
        world.sandbox.task().path().display().to_string(),
    ];
    let taskdef = seed_task_definition();
    let intercept = |verb: &str, rest: &[&str]| run_output(Command::new(&bin).arg(verb).args(&target).args(rest));

    let (code, stdout, stderr) = intercept("apply", &["--task-definition", taskdef.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("backend auto: ebpf (the kernel and intercept's capabilities allow eBPF)"), "{stderr}");
    assert!(!world.bpffs.files().is_empty(), "pinned");
    let tables = world.sandbox.task().exec("nft", &["list", "tables"]);
    assert!(!tables.contains("inet intercept"), "no nftables table next to eBPF: {tables}");

    let (code, stdout, stderr) = intercept("status", &["--task-definition", taskdef.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("backend auto: ebpf (intercept's eBPF programs are pinned for the cgroup)"), "{stderr}");

    let (code, stdout, stderr) = intercept("remove", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("backend auto: ebpf (intercept's eBPF programs are pinned for the cgroup)"), "{stderr}");
    assert!(world.bpffs.files().is_empty(), "nothing left pinned: {:?}", world.bpffs.files());
}
