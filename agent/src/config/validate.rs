//! RawConfig → ProxyConfig, reporting every problem at once.
//!
//! Diagnostics come in input order: the proxy type and IPv6 setting first, then each
//! property as listed (errors and warnings about its value), then what is missing or
//! contradictory across properties. Messages name the field as the user wrote it (the
//! property, environment variable or flag) and quote the value.

mod lists;

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;

use super::parse::{self, ParseError, clip, list_entries};
use super::source::{ProxyType, RawConfig, RawProperty, env_var};
use super::{
    ConfigErrors, DNS_PORT, Diagnostic, ECS_MAX_IGNORED_PORTS, Ingress, IngressFallback, MAX_IGNORED_IDS, PortRange,
    PortSet, Property, ProxyConfig, SSH_PORT, Severity, Validated,
};

/// The only proxy type ECS defines.
pub const APPMESH: &str = "APPMESH";

/// Per-entry errors, and separately warnings, shown for one list property; the rest are
/// counted in a summary, so that a 1 MiB list of bad or repeated entries gets a screenful,
/// not megabytes, and a bad entry is never hidden behind warnings.
pub const LIST_DIAGNOSTICS_SHOWN: usize = 10;

/// A property's value after parsing: absent (not given, or blank), given but wrong (already
/// reported, so "missing" must not be reported as well), or good.
enum Slot<T> {
    Absent,
    Invalid,
    Valid(T),
}

impl<T> Slot<T> {
    fn is_absent(&self) -> bool {
        matches!(self, Slot::Absent)
    }

    fn valid(&self) -> Option<&T> {
        match self {
            Slot::Valid(v) => Some(v),
            _ => None,
        }
    }
}

struct Values {
    uid: Slot<Vec<u32>>,
    gid: Slot<Vec<u32>>,
    ingress: Slot<u16>,
    egress: Slot<u16>,
    app_ports: Slot<Vec<PortRange>>,
    ignored_ports: Slot<Vec<PortRange>>,
    ignored_ips: Slot<Vec<IpNet>>,
    dns: Slot<u16>,
    included_ips: Slot<Vec<IpNet>>,
    fallback: Slot<IngressFallback>,
}

struct Validation<'a> {
    raw: &'a RawConfig,
    diags: Vec<Diagnostic>,
    /// The first occurrence of each known property: later ones are duplicates.
    seen: BTreeMap<Property, &'a RawProperty>,
    values: Values,
}

pub fn validate(raw: &RawConfig) -> Result<Validated, ConfigErrors> {
    let mut v = Validation {
        raw,
        diags: raw.notes.clone(),
        seen: BTreeMap::new(),
        values: Values {
            uid: Slot::Absent,
            gid: Slot::Absent,
            ingress: Slot::Absent,
            egress: Slot::Absent,
            app_ports: Slot::Absent,
            ignored_ports: Slot::Absent,
            ignored_ips: Slot::Absent,
            dns: Slot::Absent,
            included_ips: Slot::Absent,
            fallback: Slot::Absent,
        },
    };
    v.proxy_type();
    let ipv6 = v.ipv6();
    for property in &raw.properties {
        v.property(property, ipv6.unwrap_or(true));
    }
    v.requirements();

    let Validation { diags, values, .. } = v;
    // A missing or bad ProxyEgressPort or IPv6 setting has been reported as an error.
    let (Slot::Valid(proxy_egress_port), Some(ipv6), false) =
        (values.egress, ipv6, diags.iter().any(Diagnostic::is_error))
    else {
        return Err(ConfigErrors(diags));
    };
    let ingress = match (values.ingress, values.app_ports) {
        (Slot::Valid(proxy_port), Slot::Valid(app_ports)) => {
            Some(Ingress { proxy_port, app_ports: PortSet::from_ranges(app_ports) })
        }
        _ => None,
    };
    let mut egress_ignored_ips: Vec<IpNet> = match values.ignored_ips {
        Slot::Valid(nets) => nets,
        _ => Vec::new(),
    };
    egress_ignored_ips.sort();
    egress_ignored_ips.dedup();
    let ids = |slot: Slot<Vec<u32>>| {
        let mut ids = match slot {
            Slot::Valid(ids) => ids,
            _ => Vec::new(),
        };
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let egress_included_ips = match values.included_ips {
        Slot::Valid(mut nets) => {
            nets.sort();
            nets.dedup();
            Some(nets)
        }
        _ => None,
    };
    let config = ProxyConfig {
        ignored_uids: ids(values.uid),
        ignored_gids: ids(values.gid),
        egress_included_ips,
        proxy_dns_port: values.dns.valid().copied(),
        ingress_fallback: values.fallback.valid().copied().unwrap_or_default(),
        proxy_egress_port,
        ingress,
        egress_ignored_ports: match values.ignored_ports {
            Slot::Valid(ranges) => PortSet::from_ranges(ranges),
            _ => PortSet::new(),
        },
        egress_ignored_ips,
        implicit_exemptions: raw.implicit_exemptions,
        ipv6,
    };
    Ok(Validated { config, warnings: diags })
}

impl<'a> Validation<'a> {
    fn error(&mut self, field: impl Into<String>, value: Option<&str>, message: impl Into<String>) {
        self.diags.push(Diagnostic::error(field, value.map(clip).as_deref(), message));
    }

    fn warning(&mut self, field: impl Into<String>, value: Option<&str>, message: impl Into<String>) {
        self.diags.push(Diagnostic::warning(field, value.map(clip).as_deref(), message));
    }

    /// How messages name a property: as the user gave it, or as the source spells it when
    /// it was not given.
    fn name_of(&self, property: Property) -> String {
        match self.seen.get(&property) {
            Some(p) => p.field(),
            None => self.raw.source.field_name(property).to_owned(),
        }
    }

    fn proxy_type(&mut self) {
        match &self.raw.proxy_type {
            ProxyType::NotApplicable => {}
            ProxyType::Missing(path) => self.warning(
                path.clone(),
                None,
                format!("missing: ECS treats a proxyConfiguration without a type as {APPMESH}; write \"type\": \"{APPMESH}\""),
            ),
            ProxyType::Given(t) if t.value == APPMESH => {}
            ProxyType::Given(t) => {
                let message = if t.value.trim().eq_ignore_ascii_case(APPMESH) {
                    format!("unsupported proxy type: did you mean `{APPMESH}`? (the type is case-sensitive)")
                } else {
                    format!("unsupported proxy type: the only proxy type is {APPMESH}")
                };
                self.error(t.field(), Some(&t.value), message);
            }
        }
    }

    /// `None` when the setting is given but not a boolean (reported).
    fn ipv6(&mut self) -> Option<bool> {
        let Some(setting) = &self.raw.ipv6 else { return Some(true) };
        match parse::parse_bool(&setting.value) {
            Ok(on) => Some(on),
            Err(e) => {
                self.error(setting.field(), Some(&setting.value), e.to_string());
                None
            }
        }
    }

    fn property(&mut self, p: &'a RawProperty, ipv6: bool) {
        let Some(property) = Property::from_name(&p.name) else {
            self.unknown(p);
            return;
        };
        if let Some(first) = self.seen.get(&property) {
            let message =
                format!("{property} is given more than once (at {} and at {}): remove one", first.origin, p.origin);
            self.error(p.field(), Some(&p.value), message);
            return;
        }
        self.seen.insert(property, p);
        if property.is_extension() && in_task_definition(p) && !p.value.trim().is_empty() {
            self.warning(
                p.field(),
                Some(&p.value),
                format!(
                    "{property} is intercept's own extension: ECS's interception ignores it, so it takes effect only \
                     where intercept installs the task (its init container, daemon or CNI plugin)"
                ),
            );
        }
        match property {
            Property::IgnoredUID => self.values.uid = self.id_list(p),
            Property::IgnoredGID => self.values.gid = self.id_list(p),
            Property::ProxyDNSPort => self.values.dns = self.scalar(p, parse::parse_port),
            Property::EgressIncludedIPs => self.values.included_ips = self.ip_list(p, ipv6),
            Property::IngressFallback => self.values.fallback = self.scalar(p, parse::parse_ingress_fallback),
            Property::ProxyIngressPort => self.values.ingress = self.scalar(p, parse::parse_port),
            Property::ProxyEgressPort => self.values.egress = self.scalar(p, parse::parse_port),
            Property::AppPorts => self.values.app_ports = self.port_list(p),
            Property::EgressIgnoredPorts => {
                self.values.ignored_ports = self.port_list(p);
                let entries = list_entries(&p.value).count();
                if entries > ECS_MAX_IGNORED_PORTS {
                    self.warning(
                        p.field(),
                        Some(&p.value),
                        format!(
                            "{entries} entries: ECS registers at most {ECS_MAX_IGNORED_PORTS} EgressIgnoredPorts \
                             (and the reference plugin silently drops the rest); intercept honours all {entries}"
                        ),
                    );
                }
            }
            Property::EgressIgnoredIPs => self.values.ignored_ips = self.ip_list(p, ipv6),
        }
    }

    fn unknown(&mut self, p: &RawProperty) {
        let field = if p.name.trim().is_empty() { p.origin.to_string() } else { p.field() };
        let hint = match suggest(&p.name) {
            Some(s) if s.name().eq_ignore_ascii_case(p.name.trim()) => {
                format!("did you mean `{s}`? (property names are case-sensitive)")
            }
            Some(s) => format!("did you mean `{s}`?"),
            None => {
                format!("the properties are {}", Property::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "))
            }
        };
        self.error(field, Some(&p.value), format!("unknown property (at {}): {hint}", p.origin));
    }

    fn scalar<T>(&mut self, p: &RawProperty, parse: fn(&str) -> Result<T, ParseError>) -> Slot<T> {
        if p.value.trim().is_empty() {
            return Slot::Absent;
        }
        match parse(&p.value) {
            Ok(v) => Slot::Valid(v),
            Err(e) => {
                self.error(p.field(), Some(&p.value), e.to_string());
                Slot::Invalid
            }
        }
    }

    fn requirements(&mut self) {
        let uid = self.name_of(Property::IgnoredUID);
        let gid = self.name_of(Property::IgnoredGID);
        if self.values.uid.is_absent() && self.values.gid.is_absent() {
            self.error(
                format!("{uid} / {gid}"),
                None,
                format!(
                    "missing: at least one of {uid} and {gid} is required (the proxy runs as that user or group, \
                     and its own traffic must not be redirected back to it)"
                ),
            );
        }

        let ids = self.values.uid.valid().map_or(0, Vec::len) + self.values.gid.valid().map_or(0, Vec::len);
        if ids > MAX_IGNORED_IDS {
            self.error(
                format!("{uid} / {gid}"),
                None,
                format!("{ids} ids: at most {MAX_IGNORED_IDS} IgnoredUIDs and IgnoredGIDs together"),
            );
        }

        let egress = self.name_of(Property::ProxyEgressPort);
        if self.values.egress.is_absent() {
            self.error(
                egress.clone(),
                None,
                "missing: the port outbound traffic is redirected to is required (15001 by convention)",
            );
        }

        let ingress = self.name_of(Property::ProxyIngressPort);
        let app = self.name_of(Property::AppPorts);
        match (self.values.ingress.is_absent(), self.values.app_ports.is_absent()) {
            (false, true) => self.error(
                app.clone(),
                None,
                format!(
                    "missing: {ingress} is set but {app} is not; give both to intercept inbound traffic, \
                     or neither for outbound only"
                ),
            ),
            (true, false) => self.error(
                ingress.clone(),
                None,
                format!(
                    "missing: {app} is set but {ingress} is not; give both to intercept inbound traffic, \
                     or neither for outbound only"
                ),
            ),
            _ => {}
        }

        let egress_port = self.values.egress.valid().copied();
        let ingress_port = self.values.ingress.valid().copied();
        if let (Some(e), Some(i)) = (egress_port, ingress_port)
            && e == i
        {
            let value = self.seen[&Property::ProxyIngressPort].value.as_str();
            self.error(
                ingress.clone(),
                Some(value),
                format!("same port as {egress} ({e}): inbound and outbound traffic need separate proxy listeners"),
            );
        }

        let app_set = self.values.app_ports.valid().map(|r| PortSet::from_ranges(r.iter().copied()));
        if let Some(set) = app_set {
            let value = self.seen[&Property::AppPorts].value.as_str();
            for (name, port) in [(&ingress, ingress_port), (&egress, egress_port)] {
                if let Some(port) = port.filter(|&p| set.contains(p)) {
                    self.error(
                        app.clone(),
                        Some(value),
                        format!(
                            "contains {name} ({port}): AppPorts are the ports the application listens on, not the \
                             proxy's; inbound connections to this proxy listener would be redirected to {ingress}"
                        ),
                    );
                }
            }
        }

        if let Some(port) = egress_port.filter(|&p| p == SSH_PORT && self.raw.implicit_exemptions) {
            let value = self.seen[&Property::ProxyEgressPort].value.as_str();
            self.error(
                egress.clone(),
                Some(value),
                format!(
                    "port {port} (SSH) is always exempt from redirection unless implicit exemptions are turned off \
                     (--no-implicit-exemptions), so it cannot be the port outbound traffic is redirected to"
                ),
            );
        }

        if let Some(dns) = self.values.dns.valid().copied() {
            let name = self.name_of(Property::ProxyDNSPort);
            let value = self.seen[&Property::ProxyDNSPort].value.as_str();
            for (other, port) in [(&egress, egress_port), (&ingress, ingress_port)] {
                if port == Some(dns) {
                    self.error(
                        name.clone(),
                        Some(value),
                        format!("same port as {other} ({dns}): DNS needs a listener of its own"),
                    );
                }
            }
            if let Some(set) = self.values.app_ports.valid().map(|r| PortSet::from_ranges(r.iter().copied()))
                && set.contains(dns)
            {
                self.error(
                    name.clone(),
                    Some(value),
                    format!("{dns} is one of {app}: the proxy's DNS port cannot be an application port"),
                );
            }
            if let Some(ranges) = self.values.ignored_ports.valid()
                && ranges.iter().any(|r| r.contains(DNS_PORT))
            {
                let p = self.seen[&Property::EgressIgnoredPorts];
                self.warning(
                    p.field(),
                    Some(&p.value),
                    format!(
                        "contains {DNS_PORT}: DNS capture ({name} {dns}) is off, and DNS goes to its servers directly"
                    ),
                );
            }
        }

        let ignores_egress = self.values.ignored_ports.valid().zip(egress_port);
        if let Some((ranges, port)) = ignores_egress
            && ranges.iter().any(|r| r.contains(port))
        {
            let p = self.seen[&Property::EgressIgnoredPorts];
            self.error(
                p.field(),
                Some(&p.value),
                format!(
                    "contains {egress} ({port}): every outbound connection to port {port}, on any host, would \
                     bypass the proxy; the proxy's own port never needs exempting (connections to the local \
                     proxy are never redirected)"
                ),
            );
        }
    }
}

/// Written in a task definition's (or a bare) `proxyConfiguration`, which ECS's own
/// interception would read: not a flag, variable or netconfig field.
fn in_task_definition(p: &RawProperty) -> bool {
    matches!(p.origin, crate::config::Origin::Json(_))
}

/// The property a misspelt name most likely means: the same name in another case, a
/// property's environment variable, a name with a part left out (`IgnoredIPs`) when only
/// one property fits, or the closest spelling.
fn suggest(name: &str) -> Option<Property> {
    let name = name.trim();
    if let Some(p) = Property::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(name) || env_var(*p) == name) {
        return Some(p);
    }
    let lower = name.to_ascii_lowercase();
    let lower_name = |p: &Property| p.name().to_ascii_lowercase();
    let containing: Vec<Property> = Property::ALL.into_iter().filter(|p| lower_name(p).contains(&lower)).collect();
    if lower.len() >= 4 && containing.len() == 1 {
        return Some(containing[0]);
    }
    Property::ALL
        .into_iter()
        .map(|p| (p, strsim::normalized_damerau_levenshtein(&lower, &lower_name(&p))))
        .filter(|(_, score)| *score >= 0.6)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let cases: &[(&str, Option<Property>)] = &[
            ("IgnoreUID", Some(Property::IgnoredUID)),
            ("ignoredgid", Some(Property::IgnoredGID)),
            (" IGNOREDUID ", Some(Property::IgnoredUID)),
            ("IgnoredPorts", Some(Property::EgressIgnoredPorts)),
            ("IgnoredIPs", Some(Property::EgressIgnoredIPs)),
            ("EgressIgnoredIP", Some(Property::EgressIgnoredIPs)),
            ("ProxyIngresPort", Some(Property::ProxyIngressPort)),
            ("ProxyEgresPort", Some(Property::ProxyEgressPort)),
            ("AppPort", Some(Property::AppPorts)),
            ("APPMESH_IGNORE_UID", Some(Property::IgnoredUID)),
            ("APPMESH_EGRESS_IGNORED_IP", Some(Property::EgressIgnoredIPs)),
            ("containerName", None),
            ("", None),
            ("x", None),
            ("Port", None),
            ("Ports", Some(Property::AppPorts)),
        ];
        for (name, want) in cases {
            assert_eq!(suggest(name), *want, "{name:?}");
        }
    }
}
