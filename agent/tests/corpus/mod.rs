//! The bad-input corpus (`tests/bad-input/` at the top of the repository) as cases to run
//! through the `intercept` binary: every one must be refused with exit status 2, before
//! anything is touched. Shared by `agent/tests/bad_input.rs` (`check` and `plan`, no
//! privileges) and `tests/tests/bad_input.rs` (`apply` with every backend, as root).
//!
//! The directory a file is in says how it is given to intercept:
//!
//! | directory | given as |
//! |---|---|
//! | `task-definition/*.json` | `--task-definition FILE` |
//! | `describe-task-definition/*.json` | `--task-definition FILE` (the `{"taskDefinition": ...}` form) |
//! | `template/*` | `--task-definition FILE` (CloudFormation, Terraform, and text that is neither) |
//! | `proxy-configuration/*.json` | `--proxy-configuration FILE` |
//! | `env/*.env` | `KEY=VALUE` lines as the whole environment, with `--from-env` |
//! | `flags/*.args` | one argument per line |
//!
//! Inputs too big to commit (10 MB lists, deeply nested JSON, hostile YAML) are generated here.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::{fs, thread};

/// Bounds for one run of intercept on bad input, far above what it needs: past them the
/// kernel stops the process and the case fails, where an unbounded read or a loop would
/// otherwise take the machine or hang the test.
const MEMORY_LIMIT_BYTES: u64 = 1 << 30;
const CPU_LIMIT_SECONDS: u64 = 20;

/// How big the generated "huge" inputs are: ten times intercept's 1 MiB input limit.
const HUGE: usize = 10 << 20;
/// Nesting far deeper than serde_json's recursion limit (128).
const DEEP: usize = 100_000;
/// Just under the kernel's limit for one argument or environment string (128 KiB).
const LONG_ARG: usize = 120 << 10;

/// The repository's top directory (both crates using this module are one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is inside the repository").to_owned()
}

pub struct Case {
    /// `<directory>/<file name without extension>`, or `generated/<what>`.
    pub name: String,
    /// The configuration arguments; files are named relative to the repository's top.
    pub args: Vec<OsString>,
    /// The environment variables given to intercept besides `PATH`.
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Vec<u8>,
}

impl Case {
    /// Runs `program` with `leading` arguments, then the case's, in the repository's top
    /// directory, with only `PATH` and the case's variables in the environment, and bounded
    /// memory and CPU time.
    pub fn run(&self, program: &Path, leading: &[&OsStr]) -> Output {
        let mut command = Command::new(program);
        command
            .current_dir(repo_root())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(leading)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe and only changes the child's limits.
        unsafe {
            command.pre_exec(|| {
                for (resource, limit) in [(libc::RLIMIT_AS, MEMORY_LIMIT_BYTES), (libc::RLIMIT_CPU, CPU_LIMIT_SECONDS)]
                {
                    let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
                    if libc::setrlimit(resource, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("{}: run {}: {e}", self.name, program.display()));
        let mut pipe = child.stdin.take().expect("piped stdin");
        let stdin = self.stdin.clone();
        // intercept stops reading at its limit and exits: a broken pipe is expected then.
        let writer = thread::spawn(move || {
            let _ = pipe.write_all(&stdin);
        });
        let output = child.wait_with_output().expect("wait for intercept");
        writer.join().expect("stdin writer");
        output
    }
}

/// Every case: the committed files in a fixed order, then the generated ones.
pub fn cases() -> Vec<Case> {
    let root = repo_root();
    let dir = Path::new("tests/bad-input");
    let mut cases = Vec::new();
    for (kind, option) in [
        ("task-definition", "--task-definition"),
        ("describe-task-definition", "--task-definition"),
        ("template", "--task-definition"),
        ("proxy-configuration", "--proxy-configuration"),
        ("env", "--from-env"),
        ("flags", ""),
    ] {
        let mut files: Vec<PathBuf> = fs::read_dir(root.join(dir).join(kind))
            .unwrap_or_else(|e| panic!("read {}/{kind}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        files.sort();
        for path in files {
            let relative = path.strip_prefix(&root).expect("under the repository").to_owned();
            let stem = path.file_stem().expect("a file name").to_string_lossy();
            let name = format!("{kind}/{stem}");
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            cases.push(match kind {
                "env" => Case { name, args: vec![option.into()], env: env_lines(&bytes), stdin: Vec::new() },
                "flags" => Case { name, args: arg_lines(&bytes), env: Vec::new(), stdin: Vec::new() },
                _ => Case { name, args: vec![option.into(), relative.into()], env: Vec::new(), stdin: Vec::new() },
            });
        }
    }
    cases.extend(generated());
    cases
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty())
}

fn env_lines(bytes: &[u8]) -> Vec<(OsString, OsString)> {
    lines(bytes)
        .map(|line| {
            let eq = line.iter().position(|&b| b == b'=').expect("an env line is KEY=VALUE");
            (OsStr::from_bytes(&line[..eq]).to_owned(), OsStr::from_bytes(&line[eq + 1..]).to_owned())
        })
        .collect()
}

fn arg_lines(bytes: &[u8]) -> Vec<OsString> {
    lines(bytes).map(|line| OsStr::from_bytes(line).to_owned()).collect()
}

fn stdin_case(name: &str, option: &str, stdin: Vec<u8>) -> Case {
    Case { name: format!("generated/{name}"), args: vec![option.into(), "-".into()], env: Vec::new(), stdin }
}

/// A proxyConfiguration whose property `name` has `value`, besides a valid egress setup.
fn proxy_configuration(name: &str, value: &str) -> String {
    serde_json::json!({
        "type": "APPMESH",
        "properties": [
            {"name": "IgnoredUID", "value": "1337"},
            {"name": "ProxyEgressPort", "value": "15001"},
            {"name": name, "value": value},
        ],
    })
    .to_string()
}

/// `entry,` repeated to `len` bytes, then `last`.
fn list(entry: &str, len: usize, last: &str) -> String {
    let mut out = format!("{entry},").repeat(len / (entry.len() + 1));
    out.push_str(last);
    out
}

/// YAML of intercept's whole input limit that would take far more to hold: a billion laughs
/// (nine levels of nine aliases), nesting a block deeper per line, an unclosed flow mapping
/// per four bytes, and a template of one task definition after another.
fn hostile_yaml() -> Vec<Case> {
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        laughs.push_str(&format!("a{level}: &a{level} [{}]\n", vec![format!("*a{}", level - 1); 9].join(", ")));
    }
    let padding = format!("# {}\n", "lol".repeat(((1 << 20) - laughs.len()) / 3 - 1));
    let nested: String = (0..1000).map(|depth| format!("{}- \n", "  ".repeat(depth))).collect();
    let task_definition =
        "  T{i}:\n    Type: AWS::ECS::TaskDefinition\n    Properties: {ProxyConfiguration: {Type: !Ref X}}\n";
    let mut template = String::from("Resources:\n");
    for i in 0.. {
        let next = task_definition.replace("{i}", &i.to_string());
        if template.len() + next.len() > 1 << 20 {
            break;
        }
        template.push_str(&next);
    }
    vec![
        stdin_case("yaml-1mib-billion-laughs", "--task-definition", format!("{padding}{laughs}").into_bytes()),
        stdin_case("yaml-deeply-nested-blocks", "--task-definition", nested.into_bytes()),
        stdin_case("yaml-1mib-nested-flow-mappings", "--task-definition", "{a: ".repeat((1 << 20) / 4).into_bytes()),
        stdin_case("yaml-1mib-template-of-unresolvable-task-definitions", "--task-definition", template.into_bytes()),
    ]
}

fn generated() -> Vec<Case> {
    let egress_only = [("APPMESH_IGNORE_UID", "1337"), ("APPMESH_ENVOY_EGRESS_PORT", "15001")];
    let mut env: Vec<(OsString, OsString)> = egress_only.iter().map(|(k, v)| (k.into(), v.into())).collect();
    env.push(("APPMESH_EGRESS_IGNORED_IP".into(), list("10.0.0.1", LONG_ARG, "10.0.0.300").into()));
    let container = r#"{"name": "app"}"#;
    let task_definition_10mb = format!(
        r#"{{"family": "taskB", "containerDefinitions": [{}], "proxyConfiguration": {{"type": "APPMESH"}}}}"#,
        list(container, HUGE, container)
    );
    vec![
        stdin_case(
            "10mb-app-ports-list",
            "--proxy-configuration",
            proxy_configuration("AppPorts", &list("9080", HUGE, "9081")).into_bytes(),
        ),
        stdin_case("10mb-container-definitions", "--task-definition", task_definition_10mb.into_bytes()),
        stdin_case("10mb-of-nul-bytes", "--task-definition", vec![0; HUGE]),
        stdin_case("deeply-nested-arrays", "--proxy-configuration", "[".repeat(DEEP).into_bytes()),
        stdin_case(
            "deeply-nested-objects",
            "--task-definition",
            format!("{}1{}", r#"{"a":"#.repeat(DEEP / 2), "}".repeat(DEEP / 2)).into_bytes(),
        ),
        stdin_case(
            "describe-deeply-nested-properties",
            "--task-definition",
            format!(
                r#"{{"taskDefinition": {{"proxyConfiguration": {{"type": "APPMESH", "properties": {}1{}}}}}}}"#,
                "[".repeat(DEEP / 2),
                "]".repeat(DEEP / 2)
            )
            .into_bytes(),
        ),
        stdin_case(
            "1mib-list-of-bad-ports",
            "--proxy-configuration",
            proxy_configuration("EgressIgnoredPorts", &list("x", (1 << 20) - 200, "0")).into_bytes(),
        ),
        stdin_case(
            "1mib-list-of-repeated-ips",
            "--proxy-configuration",
            proxy_configuration("EgressIgnoredIPs", &list("10.1.2.3/8", (1 << 20) - 200, "::1/200")).into_bytes(),
        ),
        Case { name: "generated/env-120kib-ip-list".into(), args: vec!["--from-env".into()], env, stdin: Vec::new() },
        Case {
            name: "generated/flags-120kib-port-list".into(),
            args: ["--ignored-uid", "1337", "--proxy-egress-port", "15001", "--egress-ignored-ports"]
                .into_iter()
                .map(OsString::from)
                .chain([OsString::from(list("8080", LONG_ARG, "65536"))])
                .collect(),
            env: Vec::new(),
            stdin: Vec::new(),
        },
    ]
    .into_iter()
    .chain(hostile_yaml())
    .collect()
}
