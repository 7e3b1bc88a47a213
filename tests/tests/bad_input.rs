//! Bad input against the real backends, as root: every case of the bad-input corpus
//! (`tests/bad-input/`, see `agent/tests/corpus/mod.rs`) through `intercept apply` with the
//! iptables, nftables and eBPF backends in a test namespace, and hostile targets (`--netns`,
//! `--cgroup`, `--bpffs` naming the wrong thing): exit 2, a message naming the option and the
//! path, and afterwards nothing installed and nothing left behind.
//!
//! Bad input is refused before anything is touched, so these are process spawns only.

#[path = "../../agent/tests/corpus/mod.rs"]
mod corpus;

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

use intercept::backend::ebpf::{self, Program};
use intercept_tests::{
    Privileged, TestCgroup,
    ebpf::TestBpffs,
    require_privileges,
    topology::{Netns, intercept_bin, require_nft},
};

const BACKENDS: [&str; 3] = ["iptables", "nftables", "ebpf"];
const SAVE: [&str; 4] = ["iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"];

/// A namespace, a cgroup and a bpffs of the test's own, all removed on drop.
struct World {
    netns: Netns,
    cgroup: TestCgroup,
    bpffs: TestBpffs,
}

impl World {
    fn new(host: &Privileged) -> World {
        World {
            netns: Netns::create("bad-input"),
            cgroup: host.create_cgroup().expect("create a test cgroup"),
            bpffs: TestBpffs::mounted(),
        }
    }

    /// `apply --backend <backend>` on this world's namespace (and cgroup and bpffs for eBPF).
    fn apply_args(&self, backend: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["apply", "--backend", backend].map(OsString::from).to_vec();
        args.extend(["--netns".into(), self.netns.path().into()]);
        if backend == "ebpf" {
            args.extend(["--cgroup".into(), self.cgroup.path().into()]);
            args.extend(["--bpffs".into(), self.bpffs.path().into()]);
        }
        args
    }

    /// Nothing of intercept's anywhere: no iptables chains (either variant, either family), no
    /// nft table, no program on the cgroup or the namespace, no pin.
    fn assert_nothing_installed(&self, after: &str) {
        for save in SAVE {
            let rules = self.netns.exec(save, &[]);
            assert!(!rules.contains("INTERCEPT"), "{after}: {save} shows intercept's chains:\n{rules}");
        }
        let ruleset = self.netns.exec("nft", &["list", "ruleset"]);
        assert!(!ruleset.contains("intercept"), "{after}: nft has intercept's table:\n{ruleset}");
        for program in Program::CGROUP {
            let attached = ebpf::attached_programs(self.cgroup.path(), program.attach_type()).unwrap();
            assert!(attached.is_empty(), "{after}: {program:?} programs attached to the cgroup: {attached:?}");
        }
        let attached = ebpf::attached_programs(&self.netns.path(), Program::SkLookup.attach_type()).unwrap();
        assert!(attached.is_empty(), "{after}: sk_lookup programs attached to the namespace: {attached:?}");
        assert!(self.bpffs.files().is_empty(), "{after}: pins left: {:?}", self.bpffs.files());
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn every_bad_input_is_refused_by_every_backend_and_nothing_is_installed() {
    let test = "every_bad_input_is_refused_by_every_backend_and_nothing_is_installed";
    let host = require_privileges(test);
    require_nft(test);
    let bin = intercept_bin(test);
    let world = World::new(&host);
    let cases = corpus::cases();
    let mut problems = Vec::new();
    for backend in BACKENDS {
        let leading = world.apply_args(backend);
        let leading: Vec<&OsStr> = leading.iter().map(OsString::as_os_str).collect();
        for case in &cases {
            let out = case.run(&bin, &leading);
            let stderr = text(&out.stderr);
            if out.status.code() != Some(2) || stderr.contains("panicked") {
                problems.push(format!("{backend} {}: {}\n{}{stderr}", case.name, out.status, text(&out.stdout)));
            }
        }
        world.assert_nothing_installed(&format!("after the corpus through --backend {backend}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A tmpfs mounted on a fresh directory: a place that is not cgroup2, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let path = std::env::temp_dir().join(format!("intercept-tmpfs-{}", process::id()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let tmpfs = Tmpfs { path };
        let status = Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&tmpfs.path).status().unwrap();
        assert!(status.success(), "mount -t tmpfs tmpfs {}: {status}", tmpfs.path.display());
        tmpfs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c_path = CString::new(self.path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: c_path is a valid NUL-terminated path.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
            let _ = writeln!(io::stderr(), "umount {}: {}", self.path.display(), io::Error::last_os_error());
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// Mount points at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn hostile_targets_are_refused_with_the_option_and_path_and_leave_nothing() {
    let test = "hostile_targets_are_refused_with_the_option_and_path_and_leave_nothing";
    let host = require_privileges(test);
    require_nft(test);
    let bin = intercept_bin(test);
    let world = World::new(&host);
    let regular = tempfile::NamedTempFile::new().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount();
    let not_cgroup = tmpfs.path.join("task");
    fs::create_dir(&not_cgroup).unwrap();
    let read_only = TestBpffs::unmounted();
    let status = Command::new("mount").args(["-t", "bpf", "-o", "ro", "bpf"]).arg(read_only.path()).status().unwrap();
    assert!(status.success(), "mount -o ro bpffs: {status}");
    let missing = directory.path().join("missing");
    let config = ["--ignored-uid", "1337", "--proxy-egress-port", "15001"];

    let mut cases: Vec<(String, Vec<OsString>, &str, PathBuf)> = Vec::new();
    for netns in [regular.path(), directory.path(), Path::new("/proc/self/ns/mnt"), &missing] {
        for backend in BACKENDS {
            let mut args = world.apply_args(backend);
            let at = args.iter().position(|a| a == "--netns").unwrap() + 1;
            args[at] = netns.into();
            cases.push((format!("{backend} --netns {}", netns.display()), args, "--netns", netns.to_owned()));
        }
    }
    let ebpf_with = |option: &str, value: &Path| {
        let mut args = world.apply_args("ebpf");
        let at = args.iter().position(|a| a == option).unwrap() + 1;
        args[at] = value.into();
        args
    };
    for cgroup in [&not_cgroup, &missing] {
        cases.push((
            format!("--cgroup {}", cgroup.display()),
            ebpf_with("--cgroup", cgroup),
            "--cgroup",
            cgroup.clone(),
        ));
    }
    for bpffs in [&missing, &read_only.path().to_owned(), &regular.path().to_owned()] {
        cases.push((format!("--bpffs {}", bpffs.display()), ebpf_with("--bpffs", bpffs), "--bpffs", bpffs.clone()));
    }

    for (name, mut args, option, path) in cases {
        args.extend(config.map(OsString::from));
        let out = Command::new(&bin).args(&args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {}{stderr}", text(&out.stdout));
        assert!(stderr.contains(option), "{name}: the message does not name {option}:\n{stderr}");
        // The missing cgroup is looked up under the cgroup2 mount, and named so.
        let shown = path.strip_prefix("/").unwrap_or(&path).display().to_string();
        assert!(stderr.contains(&shown), "{name}: the message does not name the path:\n{stderr}");
        assert!(stderr.contains("nothing was changed") && !stderr.contains("panicked"), "{name}:\n{stderr}");
    }

    world.assert_nothing_installed("after the hostile targets");
    assert!(!missing.exists(), "a missing --bpffs or --cgroup was created");
    assert_eq!(mounts_under(directory.path()), Vec::<String>::new(), "mounts left in the temporary directory");
    assert_eq!(mounts_under(&tmpfs.path), [tmpfs.path.display().to_string()], "a mount was added on the tmpfs");
    assert_eq!(
        mounts_under(read_only.path()),
        [read_only.path().display().to_string()],
        "a mount was added on the read-only bpffs"
    );
    assert!(fs::read_dir(read_only.path()).unwrap().flatten().all(|e| e.file_name().to_string_lossy().contains('.')));
}
