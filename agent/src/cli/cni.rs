//! `intercept cni`, and the binary run under a CNI plugin name (`aws-appmesh`,
//! `intercept-cni`): one CNI operation, as the `CNI_*` environment and the network
//! configuration on stdin ask. The result, or the CNI error, is the only thing on stdout;
//! everything else goes to stderr, which runtimes log.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use intercept::backend::{self, ApplyOptions, Choice, Purpose, Target};
use intercept::cni::{self, Command, Error, Netconf, Request, code, netconf};
use intercept::config::source::MAX_INPUT_BYTES;
use intercept::{error_chain, netns, privileges};

#[derive(Debug, Args)]
pub struct CniArgs {
    /// Print the plugin's capabilities as JSON (none: `{}`, as the reference plugin), as the
    /// ECS agent asks every plugin of its directory when it starts
    #[arg(long)]
    capabilities: bool,
}

/// Runs one CNI operation; the exit is 0 on success, 1 with a CNI error on stdout.
pub fn run(args: &CniArgs) -> ExitCode {
    if args.capabilities {
        return emit(&cni::capabilities(), ExitCode::SUCCESS);
    }
    let env = |name: &str| std::env::var(name).ok();
    let request = match cni::read_request(env) {
        Ok(request) => request,
        Err(e) => return fail(&e, cni::LATEST_VERSION),
    };
    if request.command == Command::Version {
        // The configuration's version does not change the answer: every supported one is listed.
        return emit(&cni::version_result(), ExitCode::SUCCESS);
    }
    let netconf = match read_stdin().and_then(|stdin| netconf::parse(&stdin, env)) {
        Ok(netconf) => netconf,
        Err(e) => return fail(&e, cni::LATEST_VERSION),
    };
    let outcome = match request.command {
        Command::Add => add(&request, &netconf),
        Command::Check => check(&request, &netconf),
        Command::Del => del(&request),
        Command::Version => unreachable!("VERSION is answered before the configuration is read"),
    };
    match outcome {
        Ok(out) => emit(&out, ExitCode::SUCCESS),
        Err(e) => fail(&e, &netconf.cni_version),
    }
}

fn read_stdin() -> Result<Vec<u8>, Error> {
    let mut stdin = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| Error::new(code::IO_FAILURE, "cannot read the network configuration on stdin", e.to_string()))?;
    Ok(stdin)
}

/// Installs the configuration in the namespace, or finds it installed already (ADD twice is
/// one installation), and passes the previous result through.
fn add(request: &Request, netconf: &Netconf) -> Result<String, Error> {
    let validated = netconf.validated()?;
    for warning in &validated.warnings {
        eprintln!("{warning}");
    }
    let (netns, target) = target(request, netconf);
    let backend = open(netconf.backend, &target, netns)?;
    let requirements = backend.requirements(Some(&validated.config));
    privileges::check_and_restrict(
        &privileges::apply_requirements(&requirements.capabilities, &target.netns),
        &requirements.optional,
    )
    .map_err(|e| Error::new(code::APPLY_FAILED, "intercept cannot install here; nothing was changed", e.to_string()))?;
    let change = backend
        .apply(&validated.config, ApplyOptions::default())
        .map_err(|e| backend_error(&e, netns, code::APPLY_FAILED, "installing the interception failed"))?;
    for warning in &change.warnings {
        eprintln!("warning: {warning}");
    }
    tracing::info!(backend = %backend.kind(), netns = %netns.display(), changed = change.changed, "ADD");
    Ok(cni::add_result(netconf))
}

/// Reports drift: what is installed must be whole and exactly the configuration's.
fn check(request: &Request, netconf: &Netconf) -> Result<String, Error> {
    if netconf.cni_version.starts_with("0.3.") {
        return Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for cniVersion {}", netconf.cni_version),
            "CHECK came with CNI 0.4.0",
        ));
    }
    let validated = netconf.validated()?;
    let (netns, target) = target(request, netconf);
    let backend = open(netconf.backend, &target, netns)?;
    let status = backend
        .status(Some(&validated.config))
        .map_err(|e| backend_error(&e, netns, code::DRIFT, "reading what is installed failed"))?;
    if status.installed && status.matches == Some(true) {
        return Ok(String::new());
    }
    let what = if status.installed { "is not what the configuration asks for" } else { "is not installed" };
    Err(Error::new(
        code::DRIFT,
        format!("the {} interception in {} {what}", backend.kind().label(), netns.display()),
        status.reasons.join("\n"),
    ))
}

/// Removes whatever intercept installed in the namespace, with any backend: DEL comes when
/// the namespace is being torn down, and may come after the backend setting changed. A
/// namespace that is gone, or holds nothing of intercept's, is success.
fn del(request: &Request) -> Result<String, Error> {
    let Some(netns) = request.netns.as_deref() else { return Ok(String::new()) };
    let target = Target::netns(netns::Target::Path(netns.to_owned()).opened());
    let opened = match backend::open_choice(Choice::Auto, &target, Purpose::Remove) {
        Err(e) if e.target_gone() => return Ok(String::new()),
        other => {
            other.map_err(|e| backend_error(&e, netns, code::REMOVE_FAILED, "removing the interception failed"))?
        }
    };
    for opened in opened {
        match opened.backend.remove(false) {
            Ok(change) => {
                for warning in &change.warnings {
                    eprintln!("warning: {warning}");
                }
                tracing::info!(backend = %opened.backend.kind(), changed = change.changed, "DEL");
            }
            Err(e) if e.target_gone() => return Ok(String::new()),
            Err(e) => return Err(backend_error(&e, netns, code::REMOVE_FAILED, "removing the interception failed")),
        }
    }
    Ok(String::new())
}

/// The namespace of ADD and CHECK (which [`cni::read_request`] requires), and the target.
/// The namespace is opened here, before ADD drops capabilities: the ECS agent names it
/// `/host/proc/<pid>/ns/net`, which only a process holding every capability of the pause
/// container may open ([`netns::Opened`]).
fn target<'a>(request: &'a Request, netconf: &Netconf) -> (&'a Path, Target) {
    let netns = request.netns.as_deref().expect("ADD and CHECK come with CNI_NETNS");
    let target = Target {
        netns: netns::Target::Path(netns.to_owned()).opened(),
        cgroup: None,
        options: backend::Options {
            iptables: backend::IptablesOptions { mode: netconf.iptables_mode },
            ..backend::Options::default()
        },
    };
    (netns, target)
}

/// The backend for ADD and CHECK; what `auto` chose, and why, goes to stderr. Without a
/// cgroup `auto` never chooses eBPF.
fn open(choice: Choice, target: &Target, netns: &Path) -> Result<Box<dyn backend::Backend>, Error> {
    let mut opened = backend::open_choice(choice, target, Purpose::Use)
        .map_err(|e| backend_error(&e, netns, code::APPLY_FAILED, "no backend can work here"))?;
    let opened = opened.remove(0);
    if let Some(reason) = &opened.reason {
        eprintln!("backend auto: {} ({reason})", opened.backend.kind());
    }
    Ok(opened.backend)
}

fn backend_error(e: &backend::Error, netns: &Path, failed: u32, what: &str) -> Error {
    if e.target_gone() {
        return Error::new(
            code::CONTAINER_UNKNOWN,
            format!("CNI_NETNS = {:?}: the network namespace does not exist", netns.display()),
            error_chain(e),
        );
    }
    match e {
        backend::Error::BadTarget { .. } => Error::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS = {:?}: not a network namespace intercept can work in", netns.display()),
            error_chain(e),
        ),
        e if e.is_bad_input() => {
            Error::new(code::INVALID_NETCONF, format!("{what}; nothing was changed"), error_chain(e))
        }
        e => Error::new(failed, what, error_chain(e)),
    }
}

fn fail(e: &Error, cni_version: &str) -> ExitCode {
    eprintln!("error: {e}");
    emit(&e.render(cni_version), ExitCode::FAILURE)
}

/// Writes the one answer on stdout; a runtime that closed the pipe gets the exit code.
fn emit(out: &str, code: ExitCode) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    code
}
