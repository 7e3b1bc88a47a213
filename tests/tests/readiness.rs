//! Proxy readiness through the `intercept` binary: a fake Envoy admin on the task
//! namespace's loopback answers `PRE_INITIALIZING` until the test turns it `LIVE`.
//! `--install-when proxy-live` installs nothing before that and everything after;
//! `--install-when immediately --wait-for-proxy` installs first and returns once LIVE; a proxy
//! that never becomes LIVE (or never answers) fails with the URL and the last state seen,
//! nothing installed; bad URLs and an init container the proxy waits for are bad input.
//!
//! Needs root, the tools and the `intercept` binary (`cargo xtask test` builds it).

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
};

use intercept_tests::{
    readiness::FakeAdmin,
    topology::{Netns, intercept_bin, require_netns_privileges},
};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/ec2-taskB.json");
/// A child this test started: killed (by pid) and reaped on drop unless it was waited for.
struct Apply(Option<Child>);

impl Apply {
    fn spawn(bin: &Path, args: &[&str]) -> Apply {
        let child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn intercept apply");
        Apply(Some(child))
    }

    fn running(&mut self) -> bool {
        self.0.as_mut().expect("not waited for").try_wait().expect("try_wait").is_none()
    }

    fn finish(mut self) -> (i32, String) {
        let output: Output = self.0.take().expect("not waited for").wait_with_output().expect("wait for intercept");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Apply {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(bin: &Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(bin).args(args).output().expect("run intercept");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

fn setup(test: &str) -> (std::path::PathBuf, Netns) {
    require_netns_privileges(test);
    (intercept_bin(test), Netns::create("ready"))
}

fn installed(bin: &Path, target: &[&str]) -> bool {
    let (code, text) = run(bin, &[&["status"][..], target].concat());
    assert!(code == 0 || code == 1, "status: {text}");
    code == 0
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn proxy_live_installs_only_once_the_admin_reports_live() {
    let (bin, task) = setup("proxy_live_installs_only_once_the_admin_reports_live");
    let admin = FakeAdmin::start(&task);
    let path = task.path().display().to_string();
    let target = ["--backend", "iptables", "--netns", &path];
    let apply = [&["apply"][..], &target, &["--task-definition", SEED, "--install-when", "proxy-live"]].concat();
    let mut child = Apply::spawn(&bin, &apply);

    admin.wait_for_requests(2);
    assert!(child.running(), "apply returned while the proxy was PRE_INITIALIZING");
    assert!(!installed(&bin, &target), "interception installed before the proxy was LIVE");
    admin.go_live();
    let (code, text) = child.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("the proxy is LIVE ("), "{text}");
    assert!(installed(&bin, &target), "not installed after the proxy went LIVE: {text}");
    run(&bin, &[&["remove"][..], &target].concat());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn immediately_with_wait_for_proxy_installs_first_and_returns_once_live() {
    let (bin, task) = setup("immediately_with_wait_for_proxy_installs_first_and_returns_once_live");
    let admin = FakeAdmin::start(&task);
    let path = task.path().display().to_string();
    let target = ["--backend", "nftables", "--netns", &path];
    let apply = [&["apply"][..], &target, &["--task-definition", SEED, "--wait-for-proxy"]].concat();
    let mut child = Apply::spawn(&bin, &apply);

    admin.wait_for_requests(2);
    assert!(child.running(), "apply returned while the proxy was PRE_INITIALIZING");
    assert!(installed(&bin, &target), "--install-when immediately: installed before waiting");
    admin.go_live();
    let (code, text) = child.finish();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("the proxy is LIVE ("), "{text}");
    run(&bin, &[&["remove"][..], &target].concat());
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn a_proxy_that_never_becomes_live_times_out_naming_the_url_and_the_last_state() {
    let (bin, task) = setup("a_proxy_that_never_becomes_live_times_out_naming_the_url_and_the_last_state");
    let _admin = FakeAdmin::start(&task);
    let path = task.path().display().to_string();
    let target = ["--backend", "iptables", "--netns", &path];
    let live = ["--install-when", "proxy-live", "--proxy-timeout", "1"];
    let (code, text) = run(&bin, &[&["apply"][..], &target, &live, &["--task-definition", SEED]].concat());
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "the proxy at http://127.0.0.1:9901/server_info was not LIVE after 1s (--proxy-timeout); last seen: state \
             PRE_INITIALIZING"
        ),
        "{text}"
    );
    assert!(text.contains("nothing was installed"), "{text}");
    assert!(!installed(&bin, &target));

    // Nobody listening on the port: the last thing seen is the refused connection.
    let url = "http://127.0.0.1:9902/server_info";
    let args = [&["apply"][..], &target, &live, &["--wait-for-proxy", url, "--task-definition", SEED]].concat();
    let (code, text) = run(&bin, &args);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("the proxy at {url} was not LIVE after 1s")), "{text}");
    assert!(text.contains("last seen: no answer ("), "{text}");
    assert!(!installed(&bin, &target));
}

#[test]
#[ignore = "privileged (root, namespaces, cgroups): `cargo xtask test` runs it"]
fn readiness_bad_input_changes_nothing() {
    let (bin, task) = setup("readiness_bad_input_changes_nothing");
    let path = task.path().display().to_string();
    let target = ["--backend", "iptables", "--netns", &path];
    let bad_url = ["--wait-for-proxy", "https://127.0.0.1:9901/server_info", "--task-definition", SEED];
    let (code, text) = run(&bin, &[&["apply"][..], &target, &bad_url].concat());
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("error: --wait-for-proxy https://127.0.0.1:9901/server_info: must be an http:// URL"),
        "{text}"
    );

    // A namespace that is not there is bad input before any waiting.
    let missing = ["--netns", "/nonexistent/netns", "--install-when", "proxy-live", "--task-definition", SEED];
    let (code, text) = run(&bin, &[&["apply", "--backend", "iptables"][..], &missing].concat());
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("error: --netns/--netns-pid: cannot open the network namespace /nonexistent/netns"),
        "{text}"
    );

    // The deploy example with its init container asking to wait for the proxy it blocks.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ecs-task-definition-ec2.json");
    let mut task_definition: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&deploy).expect("read the deploy task definition")).unwrap();
    let containers = task_definition["containerDefinitions"].as_array_mut().unwrap();
    let init = containers.iter_mut().find(|c| c["name"] == "intercept-init").expect("the init container");
    let command = init["command"].as_array_mut().unwrap();
    command.extend(["--install-when".into(), "proxy-live".into()]);
    let file = std::env::temp_dir().join(format!("intercept-deadlock-{}.json", std::process::id()));
    std::fs::write(&file, task_definition.to_string()).unwrap();
    let args =
        [&["apply"][..], &target, &["--install-when", "proxy-live", "--task-definition", file.to_str().unwrap()]]
            .concat();
    let (code, text) = run(&bin, &args);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--install-when proxy-live cannot work in container \"intercept-init\""), "{text}");
    assert!(!installed(&bin, &target));
}
