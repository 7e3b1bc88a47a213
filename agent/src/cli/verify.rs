//! `intercept verify`: prove that interception works in a live target.

use std::time::Duration;

use clap::Args;
use intercept::config::ConfigArgs;
use intercept::plan::Format;
use intercept::verify;

use super::{Failure, Outcome, TargetArgs, exit_code, print, validated};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Give up (exit 3) after this long: 500ms, 5s, 1m
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = verify::parse_timeout)]
    timeout: Duration,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Exit 0 verified, 3 interception not working.
pub fn run(args: VerifyArgs) -> Outcome {
    if !args.config.given() {
        return Err(Failure::bad_input(
            "verify needs the configuration to verify (--task-definition, --proxy-configuration, --from-env or the \
             property flags)",
        ));
    }
    let validated = validated(&args.config)?;
    let target = args.target.target();
    let backend = args.target.open_one(&target)?;
    let report = match verify::verify(backend.as_ref(), &validated.config, target.netns, args.timeout) {
        Ok(report) => report,
        Err(verify::Error::Backend(e)) => return Err(e.into()),
        Err(verify::Error::Netns(e)) => return Err(intercept::backend::Error::netns(e).into()),
        Err(e) => return Err(Failure::Failed(e.into())),
    };
    print(&report.render(args.format))?;
    Ok(exit_code(report.exit_code()))
}
