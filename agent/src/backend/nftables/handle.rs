//! The nftables backend behind the [`Backend`] interface.

use super::{Error, NFT, Nftables};
use crate::backend::{self, ApplyOptions, Backend, Change, Kind, Requirements, Status, Target};
use crate::config::ProxyConfig;
use crate::netns;
use crate::plan::{Format, NftablesPlan};
use crate::privileges::NET_ADMIN_RULES;

/// The nftables backend for one network namespace.
#[derive(Debug)]
pub struct Handle {
    netns: netns::Target,
}

impl Handle {
    /// Nothing is opened or run until an operation (which reports a namespace that cannot
    /// be opened before it changes anything).
    pub fn open(target: &Target) -> Result<Handle, backend::Error> {
        Ok(Handle { netns: target.netns.clone() })
    }

    fn backend(&self) -> Result<Nftables, backend::Error> {
        Nftables::open(self.netns.clone()).map_err(from_nftables)
    }
}

fn from_nftables(e: Error) -> backend::Error {
    match e {
        Error::Netns(e) => backend::Error::netns(e),
        other => backend::Error::Nftables(other),
    }
}

struct Rendered {
    verb: &'static str,
    report: super::Report,
}

impl backend::Report for Rendered {
    fn render(&self, format: Format) -> String {
        self.report.render(self.verb, format)
    }
}

impl backend::Report for super::Status {
    fn render(&self, format: Format) -> String {
        super::Status::render(self, format)
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
        Kind::Nftables
    }

    fn requirements(&self, _: Option<&ProxyConfig>) -> Requirements {
        Requirements { capabilities: vec![NET_ADMIN_RULES], optional: Vec::new(), tools: vec![NFT], kernel: Vec::new() }
    }

    /// The requirements, and that the kernel answers nft in the namespace.
    fn usable(&self) -> Result<(), String> {
        let unmet = self.requirements(None).unmet();
        if !unmet.is_empty() {
            return Err(unmet.join("; "));
        }
        self.backend().map(drop).map_err(|e| e.to_string())
    }

    fn present(&self) -> Result<bool, backend::Error> {
        match Nftables::open(self.netns.clone()) {
            Ok(nft) => nft.is_installed().map_err(from_nftables),
            Err(Error::Netns(e)) => Err(backend::Error::netns(e)),
            // Without a working nft nothing can have been installed with it.
            Err(_) => Ok(false),
        }
    }

    fn apply(&self, config: &ProxyConfig, options: ApplyOptions) -> Result<Change, backend::Error> {
        self.accepts(options)?;
        let report = self.backend()?.apply(&NftablesPlan::new(config), options.dry_run).map_err(from_nftables)?;
        Ok(change("apply", report))
    }

    fn remove(&self, dry_run: bool) -> Result<Change, backend::Error> {
        Ok(change("remove", self.backend()?.remove(dry_run).map_err(from_nftables)?))
    }

    fn status(&self, config: Option<&ProxyConfig>) -> Result<Status, backend::Error> {
        let status = self.backend()?.status(config.map(NftablesPlan::new).as_ref()).map_err(from_nftables)?;
        Ok(Status {
            kind: Kind::Nftables,
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
