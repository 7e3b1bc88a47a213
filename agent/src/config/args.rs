//! The command-line arguments that choose where the configuration comes from, and reading
//! it: one configuration, or every task definition of a template.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use super::source::{
    FLAG_IPV6, Input, Origin, RawConfig, RawValue, Source, file_error, flag, from_env, origin_name,
    parse_proxy_configuration, read_task_definition, read_text,
};
use super::template::{self, Form};
use super::{ConfigErrors, Diagnostic, Property};

/// One task definition of the input, read or refused, and what it is called in reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub source: Source,
    pub input: Result<Input, ConfigErrors>,
}

/// Where intercept reads its configuration from. The three sources exclude each other;
/// the property flags override whichever is used, or are the whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ConfigArgs {
    /// Read the proxyConfiguration of an ECS task definition: JSON as registered or as printed
    /// by `aws ecs describe-task-definition`, a CloudFormation template (YAML or JSON, CDK's
    /// synthesized ones too), or Terraform's JSON (`terraform show -json`, terraform.tfstate);
    /// `-` reads stdin
    #[arg(long, value_name = "FILE|-", group = "config-source")]
    pub task_definition: Option<PathBuf>,

    /// Of a template's task definitions, use only this one (a CloudFormation logical id or a
    /// Terraform resource address)
    #[arg(long, value_name = "NAME", requires = "task_definition")]
    pub resource: Option<String>,

    /// A value a CloudFormation template leaves open: a parameter (overriding its Default), a
    /// pseudo parameter (AWS::Region), a resource's Ref, Resource.Attribute, or an export name;
    /// repeatable
    #[arg(long = "parameter", value_name = "NAME=VALUE", requires = "task_definition")]
    pub parameters: Vec<String>,

    /// Read a bare proxyConfiguration object (`{"type": "APPMESH", "properties": [...]}`);
    /// `-` reads stdin
    #[arg(long, value_name = "FILE|-", group = "config-source")]
    pub proxy_configuration: Option<PathBuf>,

    /// Read the APPMESH_* variables of the EKS App Mesh init container (APPMESH_IGNORE_UID,
    /// APPMESH_ENVOY_EGRESS_PORT, ...)
    #[arg(long, group = "config-source")]
    pub from_env: bool,

    /// IgnoredUID: traffic of processes with these uids (comma-separated) is never redirected
    #[arg(long, value_name = "UIDS", allow_negative_numbers = true)]
    pub ignored_uid: Option<String>,

    /// IgnoredGID: traffic of processes with these gids (comma-separated) is never redirected
    #[arg(long, value_name = "GIDS", allow_negative_numbers = true)]
    pub ignored_gid: Option<String>,

    /// ProxyIngressPort: where inbound traffic to AppPorts is sent
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    pub proxy_ingress_port: Option<String>,

    /// ProxyEgressPort: where outbound traffic is sent
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    pub proxy_egress_port: Option<String>,

    /// AppPorts: comma-separated ports or ranges (a-b) the application listens on
    #[arg(long, value_name = "PORTS", allow_negative_numbers = true)]
    pub app_ports: Option<String>,

    /// EgressIgnoredIPs: comma-separated IP addresses or CIDR blocks never redirected
    #[arg(long, value_name = "IPS")]
    pub egress_ignored_ips: Option<String>,

    /// EgressIgnoredPorts: comma-separated destination ports or ranges never redirected
    #[arg(long, value_name = "PORTS", allow_negative_numbers = true)]
    pub egress_ignored_ports: Option<String>,

    /// ProxyDNSPort: DNS (UDP and TCP port 53) to non-local servers is redirected to this
    /// port on loopback, where the proxy's DNS listener answers
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    pub proxy_dns_port: Option<String>,

    /// EgressIncludedIPs: comma-separated IP addresses or CIDR blocks; when given, only
    /// connections to these are redirected (the exemptions still apply)
    #[arg(long, value_name = "IPS")]
    pub egress_included_ips: Option<String>,

    /// IngressFallback: while the proxy has no ingress listener (restarting), inbound
    /// connections to AppPorts are refused (as a REDIRECT to a closed port) or, with the eBPF
    /// backend, go straight to the app; default refuse
    #[arg(long, value_name = "refuse|app")]
    pub ingress_fallback: Option<String>,

    /// Do not exempt port 22 and the metadata IPs 169.254.170.2 and 169.254.169.254 unless
    /// they are listed
    #[arg(long)]
    pub no_implicit_exemptions: bool,

    /// Intercept IPv6 as well as IPv4: true or false (also 1 or 0); default true
    #[arg(long, value_name = "true|false")]
    pub ipv6: Option<String>,
}

impl ConfigArgs {
    /// The property flags that were given, in [`Property::ALL`] order.
    fn property_flags(&self) -> impl Iterator<Item = (Property, &String)> {
        let values = [
            &self.ignored_uid,
            &self.ignored_gid,
            &self.proxy_ingress_port,
            &self.proxy_egress_port,
            &self.app_ports,
            &self.egress_ignored_ips,
            &self.egress_ignored_ports,
            &self.proxy_dns_port,
            &self.egress_included_ips,
            &self.ingress_fallback,
        ];
        Property::ALL.into_iter().zip(values).filter_map(|(p, v)| v.as_ref().map(|v| (p, v)))
    }

    /// Whether any source or property flag was given (`status` works without).
    pub fn given(&self) -> bool {
        self.task_definition.is_some()
            || self.proxy_configuration.is_some()
            || self.from_env
            || self.ipv6.is_some()
            || self.property_flags().next().is_some()
    }

    /// Reads the chosen source from the process environment, the files or stdin: one task
    /// definition (a template holding several needs `--resource`).
    pub fn read(&self) -> Result<Input, ConfigErrors> {
        self.read_with(process_env, std::io::stdin().lock())
    }

    /// Every task definition of the chosen source (a template may hold several).
    pub fn read_all(&self) -> Result<Vec<Entry>, ConfigErrors> {
        self.read_all_with(process_env, std::io::stdin().lock())
    }

    /// [`ConfigArgs::read`] with the environment and stdin supplied by the caller.
    pub fn read_with(&self, env: impl Fn(&str) -> Option<String>, stdin: impl Read) -> Result<Input, ConfigErrors> {
        let mut entries = self.read_all_with(env, stdin)?;
        if entries.len() == 1 {
            return entries.remove(0).input;
        }
        let names: Vec<String> = entries
            .iter()
            .map(|e| match &e.source {
                Source::TaskDefinition(name) => name.clone(),
                other => other.to_string(),
            })
            .collect();
        Err(ConfigErrors(vec![Diagnostic::error(
            "--resource",
            None,
            format!(
                "the template holds {} task definitions with a proxy configuration ({}): choose one with --resource NAME",
                entries.len(),
                template::names(&names)
            ),
        )]))
    }

    /// [`ConfigArgs::read_all`] with the environment and stdin supplied by the caller.
    pub fn read_all_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
        stdin: impl Read,
    ) -> Result<Vec<Entry>, ConfigErrors> {
        let chosen = usize::from(self.task_definition.is_some())
            + usize::from(self.proxy_configuration.is_some())
            + usize::from(self.from_env);
        if chosen > 1 {
            return Err(ConfigErrors(vec![Diagnostic::error(
                "configuration",
                None,
                "give only one of --task-definition, --proxy-configuration and --from-env",
            )]));
        }
        let mut entries = if let Some(path) = &self.task_definition {
            let origin = origin_name(path);
            self.task_definitions(&read_text(path, &origin, stdin)?, &origin)?
        } else {
            vec![self.other_source(env, stdin)?]
        };
        for entry in &mut entries {
            if let Ok(input) = &mut entry.input {
                self.override_with_flags(input);
            }
        }
        Ok(entries)
    }

    /// The task definitions of a `--task-definition` file, `--resource` applied.
    fn task_definitions(&self, text: &str, origin: &str) -> Result<Vec<Entry>, ConfigErrors> {
        let given = self.parameter_values()?;
        // Editors on Windows like to start files with a byte-order mark; serde_json does not.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let form = template::read(text, &given).map_err(|e| file_error(origin, e.to_string()))?;
        let (kind, found) = match form {
            Form::TaskDefinition(doc) => {
                let only =
                    |flag: &str| file_error(flag, format!("applies to templates, and {origin} is one task definition"));
                if self.resource.is_some() {
                    return Err(only("--resource"));
                }
                if !given.is_empty() {
                    return Err(only("--parameter"));
                }
                let input = read_task_definition(doc, origin);
                return Ok(vec![Entry { source: Source::TaskDefinition(origin.to_owned()), input }]);
            }
            Form::Template(kind, found) => (kind, found),
        };
        if !given.is_empty() && kind != template::CLOUDFORMATION {
            return Err(file_error(
                "--parameter",
                format!("applies to CloudFormation templates, and {origin} is {kind}"),
            ));
        }
        let found = found.map_err(|none| file_error(origin, format!("{kind} {}", none.message())))?;
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        if let Some(wanted) = &self.resource
            && !names.contains(&wanted.as_str())
        {
            return Err(ConfigErrors(vec![Diagnostic::error(
                "--resource",
                Some(wanted),
                format!(
                    "names no task definition with a proxy configuration in {origin} (there are: {})",
                    template::names(&names)
                ),
            )]));
        }
        Ok(found
            .into_iter()
            .filter(|f| self.resource.as_ref().is_none_or(|wanted| *wanted == f.name))
            .map(|f| {
                let name = format!("{} in {origin}", f.name);
                let input = f.document.map_err(ConfigErrors).and_then(|doc| read_task_definition(doc, &name));
                Entry { source: Source::TaskDefinition(name), input }
            })
            .collect())
    }

    /// `--parameter NAME=VALUE`, each name once.
    fn parameter_values(&self) -> Result<BTreeMap<String, String>, ConfigErrors> {
        let mut values = BTreeMap::new();
        let mut errors = Vec::new();
        for parameter in &self.parameters {
            match parameter.split_once('=') {
                Some((name, value)) if !name.trim().is_empty() => {
                    if values.insert(name.trim().to_owned(), value.to_owned()).is_some() {
                        errors.push(Diagnostic::error(
                            "--parameter",
                            Some(parameter),
                            format!("gives {name} a second time"),
                        ));
                    }
                }
                _ => errors.push(Diagnostic::error("--parameter", Some(parameter), "must be NAME=VALUE")),
            }
        }
        if errors.is_empty() { Ok(values) } else { Err(ConfigErrors(errors)) }
    }

    /// A configuration that is not a task definition file: a bare proxy configuration, the
    /// environment, or flags alone.
    fn other_source(&self, env: impl Fn(&str) -> Option<String>, stdin: impl Read) -> Result<Entry, ConfigErrors> {
        let input = if let Some(path) = &self.proxy_configuration {
            let origin = origin_name(path);
            parse_proxy_configuration(&read_text(path, &origin, stdin)?, &origin)?
        } else if self.from_env {
            Input { raw: from_env(env), task_definition: None }
        } else if self.property_flags().next().is_some() {
            Input { raw: RawConfig::new(Source::Flags), task_definition: None }
        } else {
            return Err(ConfigErrors(vec![Diagnostic::error(
                "configuration",
                None,
                "nothing to read: give --task-definition, --proxy-configuration, --from-env or the property flags \
                 (at least --proxy-egress-port and --ignored-uid)",
            )]));
        };
        Ok(Entry { source: input.raw.source.clone(), input: Ok(input) })
    }

    fn override_with_flags(&self, input: &mut Input) {
        for (property, value) in self.property_flags() {
            input.raw.set_override(property, value.clone(), Origin::Flag(flag(property)));
        }
        if self.no_implicit_exemptions {
            input.raw.implicit_exemptions = false;
        }
        if let Some(value) = &self.ipv6 {
            input.raw.ipv6 = Some(RawValue { value: value.clone(), origin: Origin::Flag(FLAG_IPV6) });
        }
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}
