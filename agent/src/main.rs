//! The `intercept` command line: the effectful edge around the library.
//!
//! Exit codes: 0 success, 1 failure of the operation, 2 bad input (nothing was changed).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use intercept::config::source::{Input, parse_task_definition};
use intercept::config::{ConfigArgs, ConfigErrors, Validated, validate};
use intercept::lint::lint;
use intercept::plan::{self, Backend, Format};
use intercept::report::CheckReport;

const EXIT_BAD_INPUT: u8 = 2;

/// The seed guide's EC2 task definition for `taskB`, the demo's input.
const SEED_TASK_DEFINITION: &str = include_str!("../../examples/ec2-taskB.json");
const SEED_ORIGIN: &str = "examples/ec2-taskB.json (embedded)";

#[derive(Debug, Parser)]
#[command(name = "intercept", version, about = "Transparent TCP interception for ECS App Mesh proxy configurations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a proxy configuration and lint the task definition around it.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print what a backend would install for a configuration, without installing anything.
    Plan {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum)]
        backend: Backend,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run intercept on the seed guide's EC2 task definition: the check report and both plans.
    Demo,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { config, format } => {
            let report = check(config.read(), config.no_implicit_exemptions);
            print(&match format {
                Format::Text => report.render_text(),
                Format::Json => report.render_json(),
            })?;
            Ok(exit_code(report.exit_code()))
        }
        Command::Plan { config, backend, format } => {
            let validated = match config.read().and_then(|input| validate(&input.raw)) {
                Ok(validated) => validated,
                Err(errors) => return Ok(bad_input(&errors)),
            };
            warn(&validated);
            print(&plan::render(&validated.config, backend, format))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => demo(),
    }
}

/// Validation and lint findings for one input, all at once.
fn check(input: Result<Input, ConfigErrors>, no_implicit_exemptions: bool) -> CheckReport {
    match input {
        Ok(Input { raw, task_definition }) => {
            let validation = validate(&raw);
            let config = validation.as_ref().ok().map(|v| &v.config);
            let findings = task_definition.as_ref().map(|doc| lint(doc, config));
            CheckReport::new(raw.source.to_string(), validation.clone(), raw.implicit_exemptions, findings)
        }
        Err(errors) => CheckReport::new("input", Err(errors), !no_implicit_exemptions, None),
    }
}

fn demo() -> Result<ExitCode> {
    let input = parse_task_definition(SEED_TASK_DEFINITION, SEED_ORIGIN)
        .map_err(|e| anyhow::anyhow!("the embedded seed task definition does not parse: {e}"))?;
    let validated = validate(&input.raw)
        .map_err(|e| anyhow::anyhow!("the embedded seed task definition does not validate: {e}"))?;
    let report = check(Ok(input), false);
    let mut out = String::new();
    out.push_str(&banner("intercept check --task-definition examples/ec2-taskB.json"));
    out.push_str(&report.render_text());
    for (backend, name) in [(Backend::Iptables, "iptables"), (Backend::Ebpf, "ebpf")] {
        out.push_str(&banner(&format!("intercept plan --backend {name} --task-definition examples/ec2-taskB.json")));
        out.push_str(&plan::render(&validated.config, backend, Format::Text));
    }
    print(&out)?;
    Ok(exit_code(report.exit_code()))
}

fn banner(command: &str) -> String {
    format!("\n$ {command}\n\n")
}

fn warn(validated: &Validated) {
    for warning in &validated.warnings {
        eprintln!("{warning}");
    }
}

fn bad_input(errors: &ConfigErrors) -> ExitCode {
    for diagnostic in &errors.0 {
        eprintln!("{diagnostic}");
    }
    eprintln!("nothing was changed");
    ExitCode::from(EXIT_BAD_INPUT)
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Writes all of `text`; a closed pipe (`intercept plan | head`) is not an error worth a
/// panic, but it is still reported.
fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
