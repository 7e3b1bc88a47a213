//! Reading raw properties from task definitions, proxyConfiguration objects, the
//! environment and flags (owned by the config work; placeholder types below).

/// One property as found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawProperty {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig {
    pub properties: Vec<RawProperty>,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {}
