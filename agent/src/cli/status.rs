//! `intercept status`: what intercept installed in a target, with its counters, and whether it
//! matches a configuration.

use clap::Args;
use intercept::config::ConfigArgs;
use intercept::plan::Format;

use super::{Outcome, TargetArgs, exit_code, print_report, validated};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Exit 0 when installed and matching the configuration (when one is given), 1 otherwise.
pub fn run(args: StatusArgs) -> Outcome {
    let config = if args.config.given() { Some(validated(&args.config)?.config) } else { None };
    let backend = args.target.open_one(&args.target.target())?;
    let status = backend.status(config.as_ref())?;
    print_report(&status.warnings, status.report.as_ref(), args.format)?;
    Ok(exit_code(status.exit_code))
}
