//! The nftables backend behind the [`Backend`](crate::backend::Backend) interface, through
//! the rule backends' adapter.

use super::{Error, NFT, Nftables};
use crate::backend::rules::{self, Engine};
use crate::backend::{Kind, Requirements, Target};
use crate::config::ProxyConfig;
use crate::netns;
use crate::plan::NftablesPlan;
use crate::privileges::NET_ADMIN_RULES;

/// The nftables backend for one network namespace.
pub type Handle = rules::Handle<Nftables>;

impl Engine for Nftables {
    const KIND: Kind = Kind::Nftables;
    const OPEN_TO_CHECK: bool = true;
    type Options = ();

    fn options(_: &Target) {}

    fn open(netns: netns::Target, (): ()) -> Result<Nftables, Error> {
        Nftables::open(netns)
    }

    fn plan(config: &ProxyConfig) -> NftablesPlan {
        NftablesPlan::new(config)
    }

    fn requirements((): (), _: Option<&ProxyConfig>) -> Requirements {
        Requirements { capabilities: vec![NET_ADMIN_RULES], optional: Vec::new(), tools: vec![NFT], kernel: Vec::new() }
    }
}
