//! The iptables backend behind the [`Backend`] interface.

use super::{Error, Iptables, Mode};
use crate::backend::{self, ApplyOptions, Backend, Change, Kind, Requirements, Status, Target};
use crate::config::ProxyConfig;
use crate::netns;
use crate::plan::{Format, IptablesPlan};
use crate::privileges::{NET_ADMIN_RULES, NET_RAW_LEGACY, NET_RAW_SETS};

/// The iptables backend for one network namespace.
#[derive(Debug)]
pub struct Handle {
    netns: netns::Target,
    mode: Option<Mode>,
}

impl Handle {
    /// Nothing is opened or run until an operation (which reports a namespace that cannot
    /// be opened before it changes anything).
    pub fn open(target: &Target) -> Result<Handle, backend::Error> {
        Ok(Handle { netns: target.netns.clone(), mode: target.iptables_mode })
    }

    fn backend(&self) -> Result<Iptables, backend::Error> {
        Iptables::open(self.netns.clone(), self.mode).map_err(from_iptables)
    }
}

/// A namespace that cannot be opened is the target's fault; everything else is the backend's.
pub(crate) fn from_iptables(e: Error) -> backend::Error {
    match e {
        Error::Netns(e) => backend::Error::netns(e),
        other => backend::Error::Iptables(other),
    }
}

/// An apply's or remove's report, with the verb its text starts with.
struct Rendered {
    verb: &'static str,
    report: super::Report,
}

impl backend::Report for Rendered {
    fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.report.render_text(self.verb),
            Format::Json => backend::json(&self.report),
        }
    }
}

impl backend::Report for super::Status {
    fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => backend::json(self),
        }
    }
}

fn change(verb: &'static str, report: super::Report) -> Change {
    Change {
        changed: report.changed,
        warnings: report.warnings.clone(),
        report: Box::new(Rendered { verb, report }),
        events: None,
    }
}

impl Backend for Handle {
    fn kind(&self) -> Kind {
        Kind::Iptables
    }

    /// NET_ADMIN; NET_RAW for iptables-legacy and for a plan whose ignored networks go into
    /// an ipset, kept when held otherwise (the variant is detected later, and an earlier
    /// configuration's set match may have to be deleted).
    fn requirements(&self, config: Option<&ProxyConfig>) -> Requirements {
        let ipsets = config.is_some_and(|config| !IptablesPlan::new(config).ipsets.is_empty());
        let mut capabilities = vec![NET_ADMIN_RULES];
        if self.mode == Some(Mode::Legacy) {
            capabilities.push(NET_RAW_LEGACY);
        } else if ipsets {
            capabilities.push(NET_RAW_SETS);
        }
        let mode = self.mode.unwrap_or(Mode::Nft);
        let mut tools = vec![mode.restore_program(), mode.save_program()];
        if ipsets {
            tools.push(super::IPSET);
        }
        Requirements { capabilities, optional: vec![caps::Capability::CAP_NET_RAW], tools, kernel: Vec::new() }
    }

    fn present(&self) -> Result<bool, backend::Error> {
        match Iptables::open(self.netns.clone(), self.mode) {
            Ok(iptables) => iptables.present().map_err(from_iptables),
            Err(Error::Netns(e)) => Err(backend::Error::netns(e)),
            // Without usable iptables nothing can have been installed with them.
            Err(_) => Ok(false),
        }
    }

    fn apply(&self, config: &ProxyConfig, options: ApplyOptions) -> Result<Change, backend::Error> {
        self.accepts(options)?;
        let report = self.backend()?.apply(&IptablesPlan::new(config), options.dry_run).map_err(from_iptables)?;
        Ok(change("apply", report))
    }

    fn remove(&self, dry_run: bool) -> Result<Change, backend::Error> {
        Ok(change("remove", self.backend()?.remove(dry_run).map_err(from_iptables)?))
    }

    fn status(&self, config: Option<&ProxyConfig>) -> Result<Status, backend::Error> {
        let status = self.backend()?.status(config.map(IptablesPlan::new).as_ref()).map_err(from_iptables)?;
        Ok(Status {
            kind: Kind::Iptables,
            installed: status.installed,
            matches: status.matches,
            reasons: status.reasons.clone(),
            warnings: status.warnings.clone(),
            counters: status.counters.clone(),
            ingress: status.ingress.clone(),
            cgroup: None,
            installation: "intercept's rules with the jump to them",
            exit_code: status.exit_code(),
            report: Box::new(status),
        })
    }
}
