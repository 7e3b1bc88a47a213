//! The iptables backend behind the [`Backend`](crate::backend::Backend) interface, through
//! the rule backends' adapter.

use super::{Error, Iptables, Mode};
use crate::backend::rules::{self, Engine};
use crate::backend::{Kind, Requirements, Target};
use crate::config::ProxyConfig;
use crate::netns;
use crate::plan::IptablesPlan;
use crate::privileges::{NET_ADMIN_RULES, NET_RAW_LEGACY, NET_RAW_SETS};

/// The iptables backend for one network namespace.
pub type Handle = rules::Handle<Iptables>;

impl Engine for Iptables {
    const KIND: Kind = Kind::Iptables;
    const OPEN_TO_CHECK: bool = false;
    type Options = Option<Mode>;

    fn options(target: &Target) -> Option<Mode> {
        target.options.iptables.mode
    }

    fn open(netns: netns::Target, mode: Option<Mode>) -> Result<Iptables, Error> {
        Iptables::open(netns, mode)
    }

    fn plan(config: &ProxyConfig) -> IptablesPlan {
        IptablesPlan::new(config)
    }

    /// NET_ADMIN; NET_RAW for iptables-legacy and for a plan whose ignored networks go into
    /// an ipset, kept when held otherwise (the variant is detected later, and an earlier
    /// configuration's set match may have to be deleted).
    fn requirements(mode: Option<Mode>, config: Option<&ProxyConfig>) -> Requirements {
        let ipsets = config.is_some_and(|config| !IptablesPlan::new(config).ipsets.is_empty());
        let mut capabilities = vec![NET_ADMIN_RULES];
        if mode == Some(Mode::Legacy) {
            capabilities.push(NET_RAW_LEGACY);
        } else if ipsets {
            capabilities.push(NET_RAW_SETS);
        }
        let mode = mode.unwrap_or(Mode::Nft);
        let mut tools = vec![mode.restore_program(), mode.save_program()];
        if ipsets {
            tools.push(super::IPSET);
        }
        Requirements { capabilities, optional: vec![caps::Capability::CAP_NET_RAW], tools, kernel: Vec::new() }
    }
}
