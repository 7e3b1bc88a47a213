//! `intercept check`, `intercept plan` and `intercept demo`: the configuration, and what each
//! backend would install for it, without installing anything.

use std::process::ExitCode;

use clap::Args;
use intercept::backend::Kind;
use intercept::config::ConfigArgs;
use intercept::config::source::parse_task_definition;
use intercept::config::validate;
use intercept::plan::Format;
use intercept::report::CheckReport;

use super::{Outcome, exit_code, print, validated};

/// The seed guide's EC2 task definition for `taskB`, the demo's input.
const SEED_TASK_DEFINITION: &str = include_str!("../../../examples/ec2-taskB.json");
const SEED_ORIGIN: &str = "examples/ec2-taskB.json (embedded)";

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Also probe the running kernel for the features each backend uses (eBPF program
    /// types), and say which it lacks
    #[arg(long)]
    kernel_features: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long, value_enum)]
    backend: Kind,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Exit 0 when the configuration is valid (warnings allowed), 2 otherwise; with several task
/// definitions (a template), one report each and the worst result.
pub fn check(args: CheckArgs) -> Outcome {
    let reports = CheckReport::check_all(args.config.read_all(), args.config.no_implicit_exemptions);
    print(&match args.format {
        Format::Text => CheckReport::render_all_text(&reports),
        Format::Json => CheckReport::render_all_json(&reports),
    })?;
    if args.kernel_features {
        print(&kernel_features(args.format))?;
    }
    Ok(exit_code(CheckReport::worst_exit_code(&reports)))
}

/// What the running kernel has of what each backend uses.
fn kernel_features(format: Format) -> String {
    let features = intercept::backend::kernel_features();
    let release = intercept::backend::kernel_release();
    match format {
        Format::Text => {
            let mut out = format!("\nkernel features ({release})\n");
            for (kind, name, result) in &features {
                let state = match result {
                    Ok(()) => "yes".to_owned(),
                    Err(why) => format!("NO: {why}"),
                };
                out.push_str(&format!("  {:<9} {name:<32} {state}\n", kind.name()));
            }
            out
        }
        Format::Json => {
            let list: Vec<serde_json::Value> = features
                .iter()
                .map(|(kind, name, result)| {
                    serde_json::json!({"backend": kind.name(), "feature": name, "available": result.is_ok(),
                        "why_not": result.as_ref().err()})
                })
                .collect();
            let mut json = serde_json::to_string_pretty(&serde_json::json!({"kernel": release, "features": list}))
                .unwrap_or_default();
            json.push('\n');
            json
        }
    }
}

pub fn plan(args: PlanArgs) -> Outcome {
    let validated = validated(&args.config)?;
    print(&args.backend.render_plan(&validated.config, args.format))?;
    Ok(ExitCode::SUCCESS)
}

/// The check report and every backend's plan for the seed task definition.
pub fn demo() -> Outcome {
    let input = parse_task_definition(SEED_TASK_DEFINITION, SEED_ORIGIN)
        .map_err(|e| anyhow::anyhow!("the embedded seed task definition does not parse: {e}"))?;
    let validated = validate(&input.raw)
        .map_err(|e| anyhow::anyhow!("the embedded seed task definition does not validate: {e}"))?;
    let report = CheckReport::check(Ok(input), false);
    let mut out = String::new();
    out.push_str(&banner("intercept check --task-definition examples/ec2-taskB.json"));
    out.push_str(&report.render_text());
    for backend in Kind::ALL {
        out.push_str(&banner(&format!("intercept plan --backend {backend} --task-definition examples/ec2-taskB.json")));
        out.push_str(&backend.render_plan(&validated.config, Format::Text));
    }
    print(&out)?;
    Ok(exit_code(report.exit_code()))
}

fn banner(command: &str) -> String {
    format!("\n$ {command}\n\n")
}
