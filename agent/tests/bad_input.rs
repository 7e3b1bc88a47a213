//! The bad-input corpus (`tests/bad-input/`, see `corpus/mod.rs`) end to end through the
//! `intercept` binary, unprivileged: `plan` and `check` exit 2 on every case, without a panic,
//! within bounded memory and CPU time, and `plan`'s messages (each naming the field and the
//! value) are one snapshot, reviewed once, so that a changed message shows in review.

mod corpus;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Output;

use corpus::{Case, cases};

const BIN: &str = env!("CARGO_BIN_EXE_intercept");

/// Committed cases are at least this many (the issue asks for 60).
const MIN_CASES: usize = 60;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What every refusal has in common, whatever the input: exit 2, messages on stderr and
/// nothing else, no panic or backtrace.
fn assert_refused(case: &Case, verb: &str, out: &Output) -> Vec<String> {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let mut problems = Vec::new();
    if out.status.code() != Some(2) {
        problems.push(format!("{}: {verb} exited with {}", case.name, out.status));
    }
    for marker in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        if stderr.contains(marker) || stdout.contains(marker) {
            problems.push(format!("{}: {verb} printed {marker:?}", case.name));
        }
    }
    if !problems.is_empty() {
        problems.push(format!("stdout:\n{stdout}\nstderr:\n{stderr}"));
    }
    problems
}

#[test]
fn every_bad_input_exits_2_with_a_reviewed_message() {
    let cases = cases();
    let committed = cases.iter().filter(|c| !c.name.starts_with("generated/")).count();
    assert!(committed >= MIN_CASES, "only {committed} committed cases");

    let mut problems = Vec::new();
    let mut messages = String::new();
    let plan = [OsStr::new("plan"), OsStr::new("--backend"), OsStr::new("iptables")];
    for case in &cases {
        let out = case.run(Path::new(BIN), &plan);
        problems.extend(assert_refused(case, "plan", &out));
        let stderr = text(&out.stderr);
        // Refusals of the configuration end so; clap's own (unknown flag, no value) point to --help.
        if !stderr.contains("nothing was changed") && !stderr.contains("try '--help'") {
            problems.push(format!("{}: plan did not say that nothing was changed:\n{stderr}", case.name));
        }
        if !out.stdout.is_empty() {
            problems.push(format!("{}: plan printed on stdout:\n{}", case.name, text(&out.stdout)));
        }
        writeln!(messages, "── {}\n{stderr}", case.name).unwrap();

        let out = case.run(Path::new(BIN), &[OsStr::new("check")]);
        problems.extend(assert_refused(case, "check", &out));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    insta::assert_snapshot!("bad_input_messages", messages);
}
