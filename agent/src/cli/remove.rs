//! `intercept remove`: remove everything intercept installed in a target.

use std::process::ExitCode;

use clap::Args;
use intercept::backend::Purpose;
use intercept::plan::Format;

use super::{Outcome, TargetArgs, print_report};

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print the transactions that would run, and run none
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Removes with the backend named, or with every backend `auto` finds something of; nothing
/// to remove is not an error.
pub fn run(args: RemoveArgs) -> Outcome {
    for opened in args.target.open(Purpose::Remove)? {
        let change = opened.backend.remove(args.dry_run)?;
        print_report(&change.warnings, change.report.as_ref(), args.format)?;
    }
    Ok(ExitCode::SUCCESS)
}
