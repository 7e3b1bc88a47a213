//! The fuzz target's body (`fuzz/fuzz_targets/config.rs`), kept in the library so that the
//! unit tests replay the committed seed corpus through exactly the same code without
//! cargo-fuzz. It sits above `config` because it drives what is built on it (lint, the check
//! report, every backend's plan): `config` itself knows none of them.
//!
//! One input is fed to every reader intercept has, as the binary would: a task definition and
//! a bare proxyConfiguration on stdin (size limit, UTF-8, JSON, JSON types), the same bytes as
//! an `APPMESH_*` environment (`KEY=VALUE` lines) and as command-line flags (one argument per
//! line); whatever reads is validated, and what validates is linted, reported and planned for
//! every backend. A task definition on stdin may be any form `--task-definition` reads
//! (CloudFormation YAML or JSON, Terraform JSON), each of its task definitions checked. Any
//! panic is a bug; so is an error result that holds no error.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser;

use crate::backend::Kind;
use crate::config::{ConfigArgs, ConfigErrors, Input, Validated, validate};
use crate::plan::Format;
use crate::report::CheckReport;

/// The configuration flags as the `intercept` subcommands take them.
#[derive(Debug, Parser)]
#[command(name = "intercept")]
pub(crate) struct Flags {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
}

/// Runs one fuzz input through every reader, validation, lint, the report and the plans.
///
/// # Panics
/// When intercept has a bug: a reader or validation panics, or an error result carries no
/// error, or a successful validation carries an error among its warnings.
pub fn one_input(data: &[u8]) {
    let stdin = |path: &str| ConfigArgs { task_definition: Some(PathBuf::from(path)), ..ConfigArgs::default() };
    let no_env = |_: &str| None;
    run(&stdin("-"), no_env, data);
    let proxy = ConfigArgs { proxy_configuration: Some(PathBuf::from("-")), ..ConfigArgs::default() };
    run(&proxy, no_env, data);

    let text = String::from_utf8_lossy(data);
    let env: HashMap<&str, &str> = text.lines().filter_map(|line| line.split_once('=')).collect();
    let from_env = ConfigArgs { from_env: true, ..ConfigArgs::default() };
    run(&from_env, |name: &str| env.get(name).map(|v| (*v).to_owned()), &[][..]);

    // Flags name files too (`--task-definition FILE`): only stdin is read, so the fuzzer
    // cannot make intercept open whatever path it spells.
    let args = std::iter::once("intercept").chain(text.lines());
    if let Ok(flags) = Flags::try_parse_from(args)
        && [&flags.config.task_definition, &flags.config.proxy_configuration]
            .iter()
            .all(|path| path.as_ref().is_none_or(|p| p.as_os_str() == "-"))
    {
        run(&flags.config, |name: &str| env.get(name).map(|v| (*v).to_owned()), data);
    }
}

fn run(args: &ConfigArgs, env: impl Fn(&str) -> Option<String>, stdin: &[u8]) {
    let entries = args.read_all_with(env, stdin);
    match &entries {
        Ok(entries) => {
            assert!(!entries.is_empty(), "a source read as no configuration at all");
            entries.iter().for_each(|entry| validate_and_plan(&entry.input));
        }
        Err(errors) => assert_has_errors(errors),
    }
    let reports = CheckReport::check_all(entries, args.no_implicit_exemptions);
    let _ = CheckReport::render_all_text(&reports);
    let _ = CheckReport::render_all_json(&reports);
}

fn validate_and_plan(input: &Result<Input, ConfigErrors>) {
    match input {
        Ok(input) => match validate(&input.raw) {
            Ok(Validated { config, warnings }) => {
                assert!(warnings.iter().all(|d| !d.is_error()), "an error among the warnings: {warnings:?}");
                for backend in Kind::ALL {
                    for format in [Format::Text, Format::Json] {
                        let _ = backend.render_plan(&config, format);
                    }
                }
            }
            Err(errors) => {
                assert_has_errors(&errors);
                let _ = errors.to_string();
            }
        },
        Err(errors) => assert_has_errors(errors),
    }
}

fn assert_has_errors(errors: &ConfigErrors) {
    assert!(errors.errors().count() > 0, "an Err without an error: {errors:?}");
}

#[cfg(test)]
mod tests {
    /// The seed corpus `cargo xtask fuzz` starts from (its list is in xtask/src/fuzz.rs), replayed
    /// through the fuzz target's body, so CI runs every seed without cargo-fuzz.
    #[test]
    fn the_fuzz_seed_corpus_replays() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                if path.is_dir() { files(&path, out) } else { out.push(path) }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seeds = Vec::new();
        for dir in ["fuzz/seeds", "examples", "tests/bad-input"] {
            files(&root.join(dir), &mut seeds);
        }
        assert!(seeds.len() > 100, "{} seeds", seeds.len());
        for seed in seeds {
            super::one_input(&std::fs::read(&seed).unwrap());
        }
    }
}
