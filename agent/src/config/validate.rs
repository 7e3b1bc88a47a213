//! RawConfig → ProxyConfig (owned by the config work).
use super::{ConfigErrors, RawConfig, Validated};

pub fn validate(_raw: &RawConfig) -> Result<Validated, ConfigErrors> {
    Err(ConfigErrors(Vec::new()))
}
