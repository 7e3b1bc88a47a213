//! The nftables plan against the real `nft`: every script the plan renders is accepted by
//! `nft -c -f` (check mode: the kernel validates the batch, then it is thrown away), and
//! the apply and remove scripts do what their documentation says when applied for real:
//! create, replace and remove `table inet intercept` atomically and idempotently.
//!
//! Each `nft` runs in a child process that has entered a network namespace of its own
//! (`unshare(CLONE_NEWNET)` between fork and exec): the namespace disappears with the
//! child, and neither the test runner nor the host's rules are ever touched.
//!
//! Needs root and `nft` (`cargo xtask setup` installs nftables); see
//! `intercept_tests::require_privileges`.

use std::{
    fs, io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use intercept::{
    config::{Ingress, PortRange, PortSet, ProxyConfig},
    plan::nftables::{IGNORED_V4_SET, IGNORED_V6_SET, NftablesPlan, REMOVE_SCRIPT},
};
use intercept_tests::{cannot_run, require_privileges, run_with_timeout};
use ipnet::IpNet;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Root, and an `nft` to run; otherwise the test fails, saying why.
fn can_run(test: &str) {
    require_privileges(test);
    match Command::new("nft").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => cannot_run(test, &format!("`nft --version` failed: {}", String::from_utf8_lossy(&out.stderr))),
        Err(e) => cannot_run(test, &format!("cannot run nft ({e}); `cargo xtask setup` installs nftables")),
    }
}

/// A directory of this test's own for the scripts and what `nft` prints; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("intercept-nftables-plan-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Scratch(path)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn read(&self, name: &str) -> String {
        let path = self.0.join(name);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `sh -c script args…` in a new, empty network namespace that only this child (and
/// the commands it runs) ever sees. Output goes through files in `scratch`, so a large
/// listing cannot fill a pipe.
fn in_new_netns(scratch: &Scratch, script: &str, args: &[&Path]) -> Run {
    let stdout = scratch.0.join("stdout");
    let stderr = scratch.0.join("stderr");
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).arg("sh").args(args);
    command.stdin(Stdio::null());
    command.stdout(fs::File::create(&stdout).unwrap()).stderr(fs::File::create(&stderr).unwrap());
    // SAFETY: between fork and exec the closure makes one system call (unshare), which
    // only changes the child's own namespaces.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let status = run_with_timeout(&mut command, TIMEOUT);
    Run { ok: status.success(), stdout: scratch.read("stdout"), stderr: scratch.read("stderr"), took: start.elapsed() }
}

/// `nft -c -f`: the kernel validates the whole batch (sets, chains, hooks, every rule)
/// without committing it.
fn check(name: &str, config: &ProxyConfig) {
    let scratch = Scratch::new();
    let plan = NftablesPlan::new(config);
    let apply = scratch.write("apply.nft", &plan.apply_script());
    let run = in_new_netns(&scratch, r#"exec nft -c -f "$1""#, &[&apply]);
    assert!(run.ok, "{name}: nft -c -f refused the apply script:\n{}", run.stderr);
    // The text rendering is nft syntax too (long sets shortened to a comment).
    let text = scratch.write("text.nft", &plan.render_text());
    let run = in_new_netns(&scratch, r#"exec nft -c -f "$1""#, &[&text]);
    assert!(run.ok, "{name}: nft -c -f refused the text rendering:\n{}", run.stderr);
}

fn ports(ranges: &[(u16, u16)]) -> PortSet {
    PortSet::from_ranges(ranges.iter().map(|&(start, end)| PortRange { start, end }))
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn seed() -> ProxyConfig {
    ProxyConfig {
        ignored_uids: vec![1337],
        ingress: Some(Ingress { proxy_port: 15000, app_ports: ports(&[(9080, 9080)]) }),
        egress_ignored_ports: ports(&[(22, 22)]),
        egress_ignored_ips: nets(&["169.254.169.254/32", "169.254.170.2/32"]),
        ..ProxyConfig::new(15001)
    }
}

/// `count` distinct, non-adjacent /24s (IPv4) or /64s (IPv6).
fn many_cidrs(count: usize, v6: bool) -> Vec<IpNet> {
    (0..count)
        .map(|i| {
            let cidr = if v6 {
                format!("2001:db8:{:x}:{:x}::/64", i / 0x8000, 2 * (i % 0x8000))
            } else {
                format!("{}.{}.{}.0/24", 11 + i / 32768, (i % 32768) / 128, 2 * (i % 128))
            };
            cidr.parse().unwrap()
        })
        .collect()
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn nft_accepts_every_plan() {
    can_run("nft_accepts_every_plan");
    let configs = [
        ("seed", seed()),
        ("gid only", ProxyConfig { ignored_uids: Vec::new(), ignored_gids: vec![1337], ..seed() }),
        ("uid and gid", ProxyConfig { ignored_gids: vec![1338], ..seed() }),
        ("egress only", ProxyConfig { ingress: None, ..seed() }),
        (
            "port ranges",
            ProxyConfig {
                egress_ignored_ports: ports(&[(25, 25), (3000, 3010), (5432, 5432), (6000, 6063), (27017, 27019)]),
                ingress: Some(Ingress { proxy_port: 15000, app_ports: ports(&[(8080, 8080), (9080, 9089)]) }),
                ..seed()
            },
        ),
        (
            "IPv6 CIDRs",
            ProxyConfig {
                egress_ignored_ips: nets(&["10.0.0.0/8", "fd00:ec2::254/128", "2001:db8::/32", "fe80::/10"]),
                ..seed()
            },
        ),
        ("IPv6 off", ProxyConfig { ipv6: false, egress_ignored_ips: nets(&["10.0.0.0/8", "2001:db8::/32"]), ..seed() }),
        (
            "implicit off",
            ProxyConfig {
                egress_ignored_ports: PortSet::new(),
                egress_ignored_ips: Vec::new(),
                egress_included_ips: None,
                proxy_dns_port: None,
                implicit_exemptions: false,
                ..seed()
            },
        ),
        ("every destination", ProxyConfig { egress_ignored_ips: nets(&["0.0.0.0/0", "::/0"]), ..seed() }),
        ("ten thousand CIDRs", ProxyConfig { egress_ignored_ips: many_cidrs(10_000, false), ..seed() }),
    ];
    for (name, config) in &configs {
        check(name, config);
    }
}

/// Applied for real in a throwaway namespace: a first apply creates the table, a second
/// one replaces it (still one table, the new contents), remove removes it and succeeds
/// again when there is nothing left to remove.
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn apply_replace_and_remove_are_atomic_and_idempotent() {
    can_run("apply_replace_and_remove_are_atomic_and_idempotent");
    let scratch = Scratch::new();
    let seed_plan = NftablesPlan::new(&seed());
    let seed_script = scratch.write("seed.nft", &seed_plan.apply_script());
    let other = ProxyConfig { egress_ignored_ips: nets(&["10.0.0.0/8", "2001:db8::/32"]), ingress: None, ..seed() };
    let other_script = scratch.write("other.nft", &NftablesPlan::new(&other).apply_script());
    let remove = scratch.write("remove.nft", REMOVE_SCRIPT);
    let listing = |n: u32| scratch.0.join(format!("listing{n}"));
    let (l1, l2, l3) = (listing(1), listing(2), listing(3));
    let run = in_new_netns(
        &scratch,
        r#"set -e
        nft -f "$1"
        nft -f "$1"
        nft list table inet intercept > "$4"
        nft -f "$2"
        nft list table inet intercept > "$5"
        nft -f "$3"
        nft -f "$3"
        nft list tables > "$6"
        ! nft list table inet intercept 2>/dev/null"#,
        &[&seed_script, &other_script, &remove, &l1, &l2, &l3],
    );
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);

    let seed_listing = scratch.read("listing1");
    assert_eq!(seed_listing.matches("table inet intercept {").count(), 1);
    // What the kernel holds is what the plan says, rule for rule (the listing adds the
    // counters' values and prints dstnat for -100 at prerouting).
    for chain in &seed_plan.chains {
        for rule in &chain.rules {
            let listed = rule.render().replace(" counter ", " counter packets 0 bytes 0 ");
            assert!(seed_listing.contains(&format!("\t\t{listed}\n")), "{listed} not in\n{seed_listing}");
        }
    }
    assert!(seed_listing.contains("elements = { 169.254.169.254, 169.254.170.2 }"), "{seed_listing}");

    let other_listing = scratch.read("listing2");
    assert!(!other_listing.contains("chain prerouting") && !other_listing.contains("app_ports"), "{other_listing}");
    assert!(other_listing.contains("elements = { 2001:db8::/32 }"), "{other_listing}");
    assert!(!scratch.read("listing3").contains("intercept"));
}

/// 100,000 networks: one set, and how long nft takes to apply and replace it (printed;
/// speed is measured, never asserted).
#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_hundred_thousand_cidrs() {
    can_run("a_hundred_thousand_cidrs");
    for (label, v6) in [("IPv4", false), ("IPv6", true)] {
        let config = ProxyConfig { egress_ignored_ips: many_cidrs(100_000, v6), ..seed() };
        let plan = NftablesPlan::new(&config);
        let (set, expected) = if v6 { (IGNORED_V6_SET, 100_000) } else { (IGNORED_V4_SET, 100_002) };
        assert_eq!(plan.set(set).unwrap().len(), expected);

        let scratch = Scratch::new();
        let apply = scratch.write("apply.nft", &plan.apply_script());
        let run = in_new_netns(&scratch, r#"exec nft -c -f "$1""#, &[&apply]);
        assert!(run.ok, "{label}: nft -c -f: {}", run.stderr);
        let checked = run.took;

        let elements = scratch.0.join("elements");
        let run = in_new_netns(
            &scratch,
            r#"set -e
            t0=$(date +%s%N); nft -f "$1"; t1=$(date +%s%N); nft -f "$1"; t2=$(date +%s%N)
            nft list set inet intercept "$3" > "$2"
            echo "$(( (t1 - t0) / 1000000 )) $(( (t2 - t1) / 1000000 ))""#,
            &[&apply, &elements, Path::new(set)],
        );
        assert!(run.ok, "{label}: {}", run.stderr);
        let listed = scratch.read("elements");
        let body = listed.split_once("elements = {").unwrap().1.split_once('}').unwrap().0;
        assert_eq!(body.split(',').filter(|e| !e.trim().is_empty()).count(), expected, "{label}");
        let (first, replace) = run.stdout.trim().split_once(' ').unwrap();
        eprintln!(
            "{label}: {expected} elements, {} bytes of script: nft -c -f {} ms, nft -f {first} ms (new table), \
             {replace} ms (replacing it)",
            plan.apply_script().len(),
            checked.as_millis(),
        );
    }
}
