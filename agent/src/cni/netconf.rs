//! The network configuration a CNI runtime writes on stdin: the standard fields, the
//! `aws-appmesh` plugin's (as the ECS agent writes them: strings, and arrays of strings), and
//! intercept's own (`backend`, `iptablesMode`).
//!
//! Reading keeps every value as written, with the field it came from, and judges the seven
//! properties with the same [`crate::config::validate`] as every other source, so a
//! netconfig gets the same messages, all at once, as a task definition does.

use serde_json::{Map, Value};

use crate::backend::IptablesMode as Mode;
use crate::backend::{Choice, Kind};
use crate::config::parse::clip;
use crate::config::source::{MAX_INPUT_BYTES, kind, netconf_field};
use crate::config::{
    ConfigErrors, Diagnostic, Origin, Property, RawConfig, RawProperty, RawValue, Source, Validated, validate,
};

use super::{Error, SUPPORTED_VERSIONS, code};

/// The backend when the netconfig names none: on ECS the agent writes the netconfig, so an
/// operator chooses through the agent's environment, which its plugins inherit
/// (`/etc/ecs/ecs.config`).
pub const ENV_BACKEND: &str = "INTERCEPT_CNI_BACKEND";

/// IPv6 interception when the netconfig has no `enableIPv6` (the ECS agent never writes it).
pub const ENV_ENABLE_IPV6: &str = "INTERCEPT_CNI_ENABLE_IPV6";

const BACKEND: &str = "backend";
const IPTABLES_MODE: &str = "iptablesMode";
const ENABLE_IPV6: &str = "enableIPv6";
const PREV_RESULT: &str = "prevResult";

/// The fields this plugin reads besides the properties' ([`netconf_field`]); another field
/// with one of these names in another case is a typo worth an error (a misspelt `ignoredUid`
/// would otherwise leave the proxy's own traffic redirected).
const FIELDS: [&str; 7] = ["cniVersion", "name", "type", PREV_RESULT, BACKEND, IPTABLES_MODE, ENABLE_IPV6];

/// A network configuration as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Netconf {
    pub cni_version: String,
    /// The previous plugin's result in a chain, passed through by ADD.
    pub prev_result: Option<Map<String, Value>>,
    pub backend: Choice,
    pub iptables_mode: Option<Mode>,
    /// The seven properties (and the IPv6 setting), for [`validate`].
    pub raw: RawConfig,
    /// What is wrong with the fields outside the properties, and with the JSON types of the
    /// properties, reported with the properties' problems by [`Netconf::validated`].
    pub problems: Vec<Diagnostic>,
    /// The properties given with the wrong JSON type (reported): validation sees them as
    /// absent, and must not report them missing as well.
    mistyped: Vec<&'static str>,
}

/// Reads the configuration on stdin; `env` is the plugin's environment, for the defaults of
/// [`ENV_BACKEND`] and [`ENV_ENABLE_IPV6`]. Fails at once only when the input cannot be read
/// as a configuration at all (not JSON, not an object, a CNI version not spoken); every other
/// problem is kept for [`Netconf::validated`], because DEL must work whatever they are.
pub fn parse(stdin: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Netconf, Error> {
    if stdin.len() > MAX_INPUT_BYTES {
        return Err(Error::new(
            code::DECODE_FAILURE,
            "the network configuration on stdin is too large",
            format!("{} bytes; at most {MAX_INPUT_BYTES}", stdin.len()),
        ));
    }
    let doc: Value = serde_json::from_slice(stdin).map_err(|e| {
        let shown = clip(&String::from_utf8_lossy(stdin));
        Error::new(code::DECODE_FAILURE, "the network configuration on stdin is not JSON", format!("{e}: {shown:?}"))
    })?;
    let Value::Object(object) = doc else {
        return Err(Error::new(
            code::DECODE_FAILURE,
            "the network configuration on stdin must be a JSON object",
            format!("found {}", kind(&doc)),
        ));
    };
    let cni_version = match object.get("cniVersion") {
        Some(Value::String(v)) if SUPPORTED_VERSIONS.contains(&v.as_str()) => v.clone(),
        Some(Value::String(v)) => {
            return Err(Error::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion = {:?}: incompatible CNI version", clip(v)),
                format!("this plugin supports {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        None | Some(Value::Null) => {
            return Err(Error::new(
                code::INVALID_NETCONF,
                "cniVersion: missing",
                format!("every CNI network configuration names its version: one of {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        Some(other) => {
            return Err(Error::new(
                code::INVALID_NETCONF,
                format!("cniVersion: must be a string, found {}", kind(other)),
                "",
            ));
        }
    };

    let mut reader = Reader { object: &object, problems: Vec::new(), mistyped: Vec::new() };
    reader.string("type", true);
    reader.string("name", false);
    reader.typos();
    let raw = reader.properties(&env);
    let backend = reader.backend(&env);
    let iptables_mode = reader.iptables_mode();
    let prev_result = reader.prev_result();
    let Reader { problems, mistyped, .. } = reader;
    Ok(Netconf { cni_version, prev_result, backend, iptables_mode, raw, problems, mistyped })
}

impl Netconf {
    /// The configuration to install, or every problem with it at once (error code 7); the
    /// warnings go with the configuration.
    pub fn validated(&self) -> Result<Validated, Error> {
        let mut diags = self.problems.clone();
        match validate(&self.raw) {
            Ok(validated) if diags.is_empty() => return Ok(validated),
            Ok(validated) => diags.extend(validated.warnings),
            Err(ConfigErrors(more)) => diags.extend(more.into_iter().filter(|d| !self.reported_mistyped(d))),
        }
        let errors = diags.iter().filter(|d| d.is_error()).count();
        Err(Error::new(
            code::INVALID_NETCONF,
            format!(
                "invalid network configuration: {errors} {}; nothing was changed",
                if errors == 1 { "problem" } else { "problems" }
            ),
            diags.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
        ))
    }
}

impl Netconf {
    /// A "missing" diagnostic about a property already reported as of the wrong type (the
    /// field may name two, as `ignoredUID / ignoredGID`).
    fn reported_mistyped(&self, d: &Diagnostic) -> bool {
        d.message.starts_with("missing") && d.field.split(" / ").any(|field| self.mistyped.contains(&field))
    }
}

struct Reader<'a> {
    object: &'a Map<String, Value>,
    problems: Vec<Diagnostic>,
    mistyped: Vec<&'static str>,
}

impl Reader<'_> {
    fn error(&mut self, field: impl Into<String>, value: Option<&str>, message: impl Into<String>) {
        self.problems.push(Diagnostic::error(field, value, message));
    }

    /// A string field; `None` when absent or not a string (reported).
    fn string(&mut self, key: &str, required: bool) -> Option<String> {
        match self.object.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => {
                if required {
                    self.error(key, None, "missing: every CNI network configuration has one");
                }
                None
            }
            Some(other) => {
                let found = kind(other);
                self.error(key, None, format!("must be a string, found {found}"));
                None
            }
        }
    }

    fn typos(&mut self) {
        let keys: Vec<&String> = self.object.keys().collect();
        for key in keys {
            let mut known = FIELDS.into_iter().chain(Property::ALL.map(netconf_field));
            if let Some(known) = known.find(|f| f.eq_ignore_ascii_case(key) && *f != key.as_str()) {
                self.error(
                    key.clone(),
                    None,
                    format!("unknown field: did you mean `{known}`? (field names are case-sensitive)"),
                );
            }
        }
    }

    /// The properties, as the values validation reads: a scalar as written, a list as its
    /// entries joined with commas (so that `[""]`, the agent's empty list, is absent, as in the
    /// reference plugin). A property of the wrong JSON type is reported here and recorded as
    /// mistyped, so that validation's "missing" for it is not reported as well.
    fn properties(&mut self, env: &impl Fn(&str) -> Option<String>) -> RawConfig {
        let mut raw = RawConfig::new(Source::Cni);
        for property in Property::ALL {
            let key = netconf_field(property);
            let list = matches!(
                property,
                Property::AppPorts
                    | Property::EgressIgnoredIPs
                    | Property::EgressIgnoredPorts
                    | Property::EgressIncludedIPs
            );
            let value = match self.object.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !list => Some(s.clone()),
                Some(Value::Array(items)) if list => {
                    let joined = self.string_items(key, items);
                    if joined.is_none() {
                        self.mistyped.push(key);
                    }
                    joined
                }
                Some(other) => {
                    self.type_error(key, other, list);
                    self.mistyped.push(key);
                    None
                }
            };
            if let Some(value) = value {
                raw.properties.push(RawProperty {
                    name: property.name().to_owned(),
                    value,
                    origin: Origin::Netconf(key.to_owned()),
                });
            }
        }
        raw.ipv6 = match self.object.get(ENABLE_IPV6) {
            Some(Value::Bool(on)) => {
                Some(RawValue { value: on.to_string(), origin: Origin::Netconf(ENABLE_IPV6.into()) })
            }
            None | Some(Value::Null) => Some(match env(ENV_ENABLE_IPV6).filter(|v| !v.trim().is_empty()) {
                Some(value) => RawValue { value, origin: Origin::Env(ENV_ENABLE_IPV6) },
                // The reference plugin's default, which ECS tasks rely on: the agent never
                // enables IPv6, and a proxy listening on IPv4 only would refuse redirected
                // IPv6 connections.
                None => RawValue { value: "false".to_owned(), origin: Origin::Netconf(ENABLE_IPV6.into()) },
            }),
            Some(Value::String(s)) => {
                self.error(ENABLE_IPV6, Some(s), "must be a JSON boolean: write true or false, without quotes");
                None
            }
            Some(other) => {
                let found = kind(other);
                self.error(ENABLE_IPV6, None, format!("must be a boolean (true or false), found {found}"));
                None
            }
        };
        raw
    }

    fn string_items(&mut self, key: &str, items: &[Value]) -> Option<String> {
        let mut entries = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => entries.push(s.as_str()),
                other => {
                    ok = false;
                    let hint = match other {
                        Value::Number(n) => format!(": write \"{n}\""),
                        _ => String::new(),
                    };
                    self.error(format!("{key}[{i}]"), None, format!("must be a string, found {}{hint}", kind(other)));
                }
            }
        }
        ok.then(|| entries.join(","))
    }

    fn type_error(&mut self, key: &str, found: &Value, list: bool) {
        let message = match (list, found) {
            (true, Value::String(s)) => {
                format!("must be an array of strings, found a string: write [{}]", quoted_entries(s))
            }
            (true, other) => format!("must be an array of strings, found {}", kind(other)),
            (false, Value::Number(n)) => format!("must be a string, found number {n}: write \"{n}\""),
            (false, other) => format!("must be a string, found {}", kind(other)),
        };
        self.error(key, None, message);
    }

    /// `backend`, else [`ENV_BACKEND`], else iptables (the reference plugin's rules).
    fn backend(&mut self, env: &impl Fn(&str) -> Option<String>) -> Choice {
        let (value, field) = match self.string(BACKEND, false) {
            Some(value) => (value, BACKEND.to_owned()),
            None => match env(ENV_BACKEND).filter(|v| !v.trim().is_empty()) {
                Some(value) => (value, ENV_BACKEND.to_owned()),
                None => return Choice::Use(Kind::Iptables),
            },
        };
        match value.trim() {
            "auto" => Choice::Auto,
            "iptables" => Choice::Use(Kind::Iptables),
            "nftables" => Choice::Use(Kind::Nftables),
            "ebpf" => {
                self.error(
                    field,
                    Some(&value),
                    "eBPF is not available to the CNI plugin: its programs attach to the task's cgroup, which a CNI \
                     call does not name; use iptables, nftables or auto here, or the eBPF init container or daemon \
                     (docs/deploy-ecs.md)",
                );
                Choice::Use(Kind::Iptables)
            }
            _ => {
                self.error(
                    field,
                    Some(&value),
                    "unknown backend: the CNI plugin's backends are iptables, nftables and auto",
                );
                Choice::Use(Kind::Iptables)
            }
        }
    }

    fn iptables_mode(&mut self) -> Option<Mode> {
        let value = self.string(IPTABLES_MODE, false)?;
        match value.trim() {
            "legacy" => Some(Mode::Legacy),
            "nft" => Some(Mode::Nft),
            _ => {
                self.error(IPTABLES_MODE, Some(&value), "must be legacy or nft");
                None
            }
        }
    }

    fn prev_result(&mut self) -> Option<Map<String, Value>> {
        match self.object.get(PREV_RESULT) {
            None | Some(Value::Null) => None,
            Some(Value::Object(result)) => Some(result.clone()),
            Some(other) => {
                let found = kind(other);
                self.error(
                    PREV_RESULT,
                    None,
                    format!("must be an object (the previous plugin's result), found {found}"),
                );
                None
            }
        }
    }
}

fn quoted_entries(s: &str) -> String {
    let entries: Vec<String> = crate::config::parse::list_entries(s).map(|e| format!("\"{}\"", clip(e))).collect();
    entries.join(", ")
}
