//! Reading raw properties from task definitions, bare `proxyConfiguration` objects, the
//! `APPMESH_*` environment and flags.
//!
//! This stage only checks what it must to read the input at all (size, encoding, JSON
//! syntax, the JSON types of the fields intercept uses); every value is kept as the string
//! the user wrote, with where it came from, and judged by [`super::validate`].

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use super::{ConfigErrors, Diagnostic, Property};

/// Input files and stdin are refused above this size: a task definition is a few KiB, and
/// reading without a bound would let a wrong path (a device, a log) eat the memory.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// The variable the EKS App Mesh init container reads to switch IPv6 interception.
pub const ENV_ENABLE_IPV6: &str = "APPMESH_ENABLE_IPV6";

/// The flag that switches IPv6 interception.
pub const FLAG_IPV6: &str = "--ipv6";

/// The environment variable carrying a property, as the EKS App Mesh init container
/// names them.
pub fn env_var(property: Property) -> &'static str {
    match property {
        Property::IgnoredUID => "APPMESH_IGNORE_UID",
        Property::IgnoredGID => "APPMESH_IGNORE_GID",
        Property::ProxyIngressPort => "APPMESH_ENVOY_INGRESS_PORT",
        Property::ProxyEgressPort => "APPMESH_ENVOY_EGRESS_PORT",
        Property::AppPorts => "APPMESH_APP_PORTS",
        Property::EgressIgnoredIPs => "APPMESH_EGRESS_IGNORED_IP",
        Property::EgressIgnoredPorts => "APPMESH_EGRESS_IGNORED_PORTS",
        // No EKS variable exists for these: named like its neighbours.
        Property::ProxyDNSPort => "APPMESH_ENVOY_DNS_PORT",
        Property::EgressIncludedIPs => "APPMESH_EGRESS_INCLUDED_IP",
        Property::IngressFallback => "APPMESH_INGRESS_FALLBACK",
    }
}

/// The field of a CNI network configuration carrying a property, as the ECS agent writes it
/// for the `aws-appmesh` plugin.
pub fn netconf_field(property: Property) -> &'static str {
    match property {
        Property::IgnoredUID => "ignoredUID",
        Property::IgnoredGID => "ignoredGID",
        Property::ProxyIngressPort => "proxyIngressPort",
        Property::ProxyEgressPort => "proxyEgressPort",
        Property::AppPorts => "appPorts",
        Property::EgressIgnoredIPs => "egressIgnoredIPs",
        Property::EgressIgnoredPorts => "egressIgnoredPorts",
        Property::ProxyDNSPort => "proxyDNSPort",
        Property::EgressIncludedIPs => "egressIncludedIPs",
        Property::IngressFallback => "ingressFallback",
    }
}

/// The flag overriding a property.
pub fn flag(property: Property) -> &'static str {
    match property {
        Property::IgnoredUID => "--ignored-uid",
        Property::IgnoredGID => "--ignored-gid",
        Property::ProxyIngressPort => "--proxy-ingress-port",
        Property::ProxyEgressPort => "--proxy-egress-port",
        Property::AppPorts => "--app-ports",
        Property::EgressIgnoredIPs => "--egress-ignored-ips",
        Property::EgressIgnoredPorts => "--egress-ignored-ports",
        Property::ProxyDNSPort => "--proxy-dns-port",
        Property::EgressIncludedIPs => "--egress-included-ips",
        Property::IngressFallback => "--ingress-fallback",
    }
}

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A JSON path inside the input document, e.g. `proxyConfiguration.properties[3]`.
    Json(String),
    Env(&'static str),
    Flag(&'static str),
    /// A field of a CNI network configuration (`appPorts`, or `appPorts[2]` for one entry).
    Netconf(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Json(path) => f.write_str(path),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Netconf(field) => write!(f, "network configuration field {field}"),
        }
    }
}

/// Which kind of input the configuration was read from (flags may override any of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A task definition file (or `<stdin>`), registered form or describe-task-definition form.
    TaskDefinition(String),
    /// A bare `proxyConfiguration` object in a file (or `<stdin>`).
    ProxyConfiguration(String),
    Env,
    Flags,
    /// A CNI network configuration on stdin (intercept as a CNI plugin).
    Cni,
}

impl Source {
    /// How messages name a property that is missing: the way this source spells it.
    pub fn field_name(&self, property: Property) -> &'static str {
        match self {
            Source::TaskDefinition(_) | Source::ProxyConfiguration(_) => property.name(),
            Source::Env => env_var(property),
            Source::Flags => flag(property),
            Source::Cni => netconf_field(property),
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(self, Source::TaskDefinition(_) | Source::ProxyConfiguration(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::TaskDefinition(file) => write!(f, "task definition {file}"),
            Source::ProxyConfiguration(file) => write!(f, "proxy configuration {file}"),
            Source::Env => f.write_str("APPMESH_* environment variables"),
            Source::Flags => f.write_str("flags"),
            Source::Cni => f.write_str("CNI network configuration"),
        }
    }
}

/// One property as found in the input: the name as written (possibly misspelt), the value
/// as written, and where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawProperty {
    pub name: String,
    pub value: String,
    pub origin: Origin,
}

impl RawProperty {
    /// The field a message names: the property name in JSON, otherwise the variable or flag.
    pub fn field(&self) -> String {
        match &self.origin {
            Origin::Json(_) => self.name.clone(),
            Origin::Env(var) => (*var).to_owned(),
            Origin::Flag(flag) => (*flag).to_owned(),
            Origin::Netconf(field) => field.clone(),
        }
    }
}

/// A setting that is not an ECS property (the proxy type, IPv6), as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue {
    pub value: String,
    pub origin: Origin,
}

impl RawValue {
    /// The field a message names: the JSON path, the variable or the flag.
    pub fn field(&self) -> String {
        match &self.origin {
            Origin::Json(path) => path.clone(),
            Origin::Env(var) => (*var).to_owned(),
            Origin::Flag(flag) => (*flag).to_owned(),
            Origin::Netconf(field) => field.clone(),
        }
    }
}

/// The `type` of a proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyType {
    /// The source has no such field (environment, flags).
    NotApplicable,
    /// A JSON proxy configuration without `type`; the JSON path it would have.
    Missing(String),
    Given(RawValue),
}

/// What was read, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawConfig {
    pub source: Source,
    pub proxy_type: ProxyType,
    /// In input order, duplicates and unknown names included (validation reports them).
    pub properties: Vec<RawProperty>,
    /// Off with `--no-implicit-exemptions`: port 22 and the metadata IPs are then only
    /// exempt when listed.
    pub implicit_exemptions: bool,
    /// `APPMESH_ENABLE_IPV6` or `--ipv6`, as written; absent means on.
    pub ipv6: Option<RawValue>,
    /// Warnings about how the input was read, reported with validation's.
    pub notes: Vec<Diagnostic>,
}

impl RawConfig {
    pub fn new(source: Source) -> Self {
        RawConfig {
            source,
            proxy_type: ProxyType::NotApplicable,
            properties: Vec::new(),
            implicit_exemptions: true,
            ipv6: None,
            notes: Vec::new(),
        }
    }

    /// Replaces every occurrence of the property (flags beat file and environment values);
    /// the override takes the place of the first occurrence so messages keep input order.
    pub fn set_override(&mut self, property: Property, value: String, origin: Origin) {
        let name = property.name();
        let new = RawProperty { name: name.to_owned(), value, origin };
        match self.properties.iter().position(|p| p.name == name) {
            Some(first) => {
                self.properties[first] = new;
                let rest = self.properties.split_off(first + 1);
                self.properties.extend(rest.into_iter().filter(|p| p.name != name));
            }
            None => self.properties.push(new),
        }
    }
}

/// A configuration as read, and the whole task definition when there was one (for lint).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub raw: RawConfig,
    /// The task definition document as given (still wrapped in `{"taskDefinition": ...}`
    /// when it was), so that lint paths and these paths agree.
    pub task_definition: Option<Value>,
}

pub(super) fn origin_name(path: &Path) -> String {
    if path == Path::new("-") { "<stdin>".to_owned() } else { path.display().to_string() }
}

pub(super) fn file_error(origin: &str, message: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![Diagnostic::error(origin, None, message)])
}

fn too_large(origin: &str) -> ConfigErrors {
    file_error(origin, format!("larger than {} KiB: refusing to read it as a configuration", MAX_INPUT_BYTES / 1024))
}

/// Reads at most [`MAX_INPUT_BYTES`] (+1 to tell "exactly the limit" from "more").
pub(super) fn read_text(path: &Path, origin: &str, stdin: impl Read) -> Result<String, ConfigErrors> {
    let limit = MAX_INPUT_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        stdin.take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.map_err(|e| file_error(origin, format!("cannot read: {e}")))?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(too_large(origin));
    }
    String::from_utf8(bytes).map_err(|e| {
        file_error(origin, format!("not valid UTF-8 (first invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })
}

/// Parses JSON with serde_json's recursion limit (128) left on, so deeply nested input is
/// an error rather than a stack overflow.
fn parse_json(text: &str, origin: &str) -> Result<Value, ConfigErrors> {
    if text.len() > MAX_INPUT_BYTES {
        return Err(too_large(origin));
    }
    // Editors on Windows like to start files with a byte-order mark; serde_json does not.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).map_err(|e| file_error(origin, format!("not valid JSON: {e}")))
}

/// How messages describe a JSON value of the wrong type.
pub(crate) fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

/// Parses a task definition, either as registered (`{"family": ..., "proxyConfiguration":
/// ...}`) or as `aws ecs describe-task-definition` prints it (`{"taskDefinition": {...}}`).
pub fn parse_task_definition(text: &str, origin: &str) -> Result<Input, ConfigErrors> {
    read_task_definition(parse_json(text, origin)?, origin)
}

/// [`parse_task_definition`] of a parsed document.
pub(super) fn read_task_definition(doc: Value, origin: &str) -> Result<Input, ConfigErrors> {
    let Value::Object(top) = &doc else {
        return Err(file_error(
            origin,
            format!("must be a JSON object (an ECS task definition), found {}", kind(&doc)),
        ));
    };
    let wrapped = !top.contains_key("proxyConfiguration") && !top.contains_key("containerDefinitions");
    let (task_definition, prefix) = match top.get("taskDefinition") {
        Some(inner) if wrapped => match inner {
            Value::Object(_) => (inner, "taskDefinition."),
            other => {
                return Err(ConfigErrors(vec![Diagnostic::error(
                    "taskDefinition",
                    None,
                    format!("must be an object, found {}", kind(other)),
                )]));
            }
        },
        _ => (&doc, ""),
    };
    let path = format!("{prefix}proxyConfiguration");
    let proxy = match task_definition.get("proxyConfiguration") {
        None | Some(Value::Null) => {
            return Err(ConfigErrors(vec![Diagnostic::error(
                path,
                None,
                "missing: the task definition has no proxyConfiguration, so there is nothing to intercept \
                 (add one of type APPMESH, or use --from-env or the property flags)",
            )]));
        }
        Some(proxy) => proxy,
    };
    let raw = read_proxy_object(proxy, &path, Source::TaskDefinition(origin.to_owned()), origin)?;
    Ok(Input { raw, task_definition: Some(doc) })
}

/// Parses a bare `proxyConfiguration` object.
pub fn parse_proxy_configuration(text: &str, origin: &str) -> Result<Input, ConfigErrors> {
    let doc = parse_json(text, origin)?;
    if let Value::Object(top) = &doc
        && !top.contains_key("properties")
        && ["proxyConfiguration", "taskDefinition", "containerDefinitions"].iter().any(|k| top.contains_key(*k))
    {
        return Err(file_error(
            origin,
            "this is a task definition, not a bare proxyConfiguration object: read it with --task-definition",
        ));
    }
    let raw = read_proxy_object(&doc, "", Source::ProxyConfiguration(origin.to_owned()), origin)?;
    Ok(Input { raw, task_definition: None })
}

/// Reads `type` and `properties` of a proxyConfiguration object at `path`, reporting every
/// JSON type error at once. Other fields (`containerName`) are for lint, not checked here.
fn read_proxy_object(value: &Value, path: &str, source: Source, origin: &str) -> Result<RawConfig, ConfigErrors> {
    let Value::Object(object) = value else {
        let field = if path.is_empty() { origin } else { path };
        return Err(ConfigErrors(vec![Diagnostic::error(
            field,
            None,
            format!("must be an object (a proxyConfiguration), found {}", kind(value)),
        )]));
    };
    let mut errors = Vec::new();
    let mut raw = RawConfig::new(source);

    let type_path = join(path, "type");
    raw.proxy_type = match object.get("type") {
        None | Some(Value::Null) => ProxyType::Missing(type_path),
        Some(Value::String(s)) => ProxyType::Given(RawValue { value: s.clone(), origin: Origin::Json(type_path) }),
        Some(other) => {
            errors.push(Diagnostic::error(type_path, None, format!("must be a string, found {}", kind(other))));
            ProxyType::NotApplicable
        }
    };

    let properties_path = join(path, "properties");
    match object.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{properties_path}[{i}]");
                match item {
                    Value::Object(entry) => {
                        let name = string_field(entry, &item_path, "name", &mut errors);
                        let value = string_field(entry, &item_path, "value", &mut errors);
                        if let (Some(name), Some(value)) = (name, value) {
                            raw.properties.push(RawProperty { name, value, origin: Origin::Json(item_path) });
                        }
                    }
                    other => errors.push(Diagnostic::error(
                        item_path,
                        None,
                        format!("must be an object {{\"name\": ..., \"value\": ...}}, found {}", kind(other)),
                    )),
                }
            }
        }
        Some(other) => errors.push(Diagnostic::error(
            properties_path,
            None,
            format!("must be an array of {{\"name\": ..., \"value\": ...}} objects, found {}", kind(other)),
        )),
    }
    if errors.is_empty() { Ok(raw) } else { Err(ConfigErrors(errors)) }
}

fn string_field(
    entry: &Map<String, Value>,
    item_path: &str,
    key: &str,
    errors: &mut Vec<Diagnostic>,
) -> Option<String> {
    let path = format!("{item_path}.{key}");
    match entry.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => {
            errors.push(Diagnostic::error(path, None, "missing: every property needs a name and a value"));
            None
        }
        Some(other @ (Value::Number(_) | Value::Bool(_))) => {
            errors.push(Diagnostic::error(
                path,
                None,
                format!(
                    "must be a string, found {}: write \"{other}\" (ECS property names and values are strings)",
                    kind(other)
                ),
            ));
            None
        }
        Some(other) => {
            errors.push(Diagnostic::error(path, None, format!("must be a string, found {}", kind(other))));
            None
        }
    }
}

/// Reads the `APPMESH_*` variables of the EKS App Mesh init container through `lookup`
/// (the process environment in [`ConfigArgs::read`]). Unset and empty variables are absent.
///
/// `APPMESH_APP_PORTS` set but empty with an ingress port reads as outbound only, with a
/// warning: the App Mesh controller writes that for a virtual node without listeners, and
/// the Envoy image's route manager then intercepts outbound traffic only.
pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> RawConfig {
    let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let mut raw = RawConfig::new(Source::Env);
    let app_ports = env_var(Property::AppPorts);
    let ingress = env_var(Property::ProxyIngressPort);
    let outbound_only = lookup(app_ports).is_some_and(|v| v.trim().is_empty()) && get(ingress).is_some();
    for property in Property::ALL {
        let var = env_var(property);
        if outbound_only && property == Property::ProxyIngressPort {
            continue;
        }
        if let Some(value) = get(var) {
            raw.properties.push(RawProperty { name: property.name().to_owned(), value, origin: Origin::Env(var) });
        }
    }
    if outbound_only {
        raw.notes.push(Diagnostic::warning(
            app_ports,
            Some(""),
            format!(
                "is empty while {ingress} is set: read as outbound only (no inbound traffic is intercepted), as the \
                 Envoy image's route manager does for a virtual node without listeners; {ingress} is ignored"
            ),
        ));
    }
    raw.ipv6 = get(ENV_ENABLE_IPV6).map(|value| RawValue { value, origin: Origin::Env(ENV_ENABLE_IPV6) });
    raw
}
