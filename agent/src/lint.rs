//! `intercept check`'s task-definition lint: the requirements the seed guide (ECS + App
//! Mesh getting started) puts on the task definition around an APPMESH
//! `proxyConfiguration`, checked offline.
//!
//! [`lint`] takes a registered task definition or the output of
//! `aws ecs describe-task-definition` (`{"taskDefinition": {...}}`). Every diagnostic's
//! `field` is a path in the document as given, the way the config reader names JSON
//! fields: `containerDefinitions[1].user`, or `taskDefinition.containerDefinitions[1].user`
//! for the wrapped form; `$` is the document itself. A property of the proxy configuration
//! is addressed where it is written (`proxyConfiguration.properties[3].value`), or by its
//! name when the task definition does not list it (flags or environment supplied it).
//!
//! | rule | severity | field |
//! |---|---|---|
//! | every field read below has the JSON type ECS gives it | error | that field |
//! | `proxyConfiguration` present | error | `proxyConfiguration` |
//! | `containerName` set, and naming a container (with a did-you-mean) | error | `proxyConfiguration.containerName` |
//! | `containerDefinitions` a non-empty array | error | `containerDefinitions` |
//! | every container named, names unique | error | `containerDefinitions[i].name` |
//! | any `user` well-formed (`uid`, `uid:gid`, `user`, `user:group`, …) | error | `containerDefinitions[i].user` |
//! | proxy `user` set, and its uid = IgnoredUID or its gid = IgnoredGID | error | `containerDefinitions[p].user` |
//! | … unless a user/group name or the image's primary group decides it | warning | `containerDefinitions[p].user` |
//! | proxy `essential` (absent means true) | error | `containerDefinitions[p].essential` |
//! | proxy `healthCheck` present, with a non-empty `command` | error | `containerDefinitions[p].healthCheck[.command]` |
//! | proxy health check is Envoy's admin LIVE (or `/ready`) check | warning | `containerDefinitions[p].healthCheck.command` |
//! | proxy has `APPMESH_RESOURCE_ARN` or `APPMESH_VIRTUAL_NODE_NAME` (in `environment` or `secrets`), non-empty | error | `containerDefinitions[p].environment[.j.value]` |
//! | … when `environmentFiles` may supply it | warning | `containerDefinitions[p].environment` |
//! | another container runs as the ignored identity: its traffic bypasses the proxy, so it need not wait (the seed's X-Ray daemon) | warning | `containerDefinitions[i].user` |
//! | the application `dependsOn` the proxy: the containers mapping an AppPorts port for tcp or, if none does, the only essential one besides the proxy (init containers the proxy `dependsOn` with `SUCCESS`/`COMPLETE`, and containers running as the ignored identity, never count) | error | `containerDefinitions[i].dependsOn` |
//! | … any other container (a sidecar, or not essential) | warning | `containerDefinitions[i].dependsOn` |
//! | that dependency has condition `HEALTHY` | error | `containerDefinitions[i].dependsOn[j].condition` |
//! | `portMappings` protocol `tcp`/`udp`, `containerPortRange` `first-last` | error | `containerDefinitions[i].portMappings[k].*` |
//! | every AppPorts port is a tcp `containerPort` or in a tcp `containerPortRange` | error | the AppPorts property |
//! | … when no container declares a tcp port (awsvpc needs none to listen) | warning | the AppPorts property |
//! | `networkMode` is `awsvpc` | warning (error on Fargate) | `networkMode` |
//! | on Fargate, ProxyIngressPort and ProxyEgressPort are greater than 1024 | error | the port's property |
//!
//! Without a validated configuration the rules that need one (identity match, AppPorts,
//! Fargate ports) are skipped; another container counts as bypassing the proxy when its
//! `user` equals the proxy container's.

mod json;
mod mappings;
mod ports;
mod user;

#[cfg(test)]
pub(crate) mod tests;

use serde_json::Value;

use crate::config::{Diagnostic, PortSet, Property, ProxyConfig};
use json::Node;
use mappings::Mappings;
use user::Exemption;

/// The Envoy admin check of the seed guide, which only passes once Envoy is LIVE.
const LIVE_CHECK: &str = "curl -s http://localhost:9901/server_info | grep state | grep -q LIVE";
const MESH_ENV: [&str; 2] = ["APPMESH_RESOURCE_ARN", "APPMESH_VIRTUAL_NODE_NAME"];
/// The seed guide: "Fargate must use port values greater than 1024".
const FARGATE_MIN_PORT: u16 = 1025;

/// Check a task definition against the seed guide's requirements for an App Mesh proxy.
/// `config` is the validated `proxyConfiguration` (`None` when it did not validate: the
/// rules that need it are skipped). Diagnostics come in document order, errors and
/// warnings together.
pub fn lint(task_definition: &Value, config: Option<&ProxyConfig>) -> Vec<Diagnostic> {
    let mut linter = Linter { config, diags: Vec::new() };
    linter.run(task_definition);
    linter.diags
}

struct Linter<'c> {
    config: Option<&'c ProxyConfig>,
    diags: Vec<Diagnostic>,
}

struct Container<'a> {
    node: Node<'a>,
    name: Option<&'a str>,
}

impl Container<'_> {
    fn label(&self) -> String {
        match self.name {
            Some(name) => format!("container \"{name}\""),
            None => format!("the container at {}", self.node.path()),
        }
    }
}

/// What the lint learnt about the proxy container that the other containers are checked
/// against.
struct Proxy<'a> {
    index: usize,
    name: &'a str,
    user: Option<&'a str>,
    /// The containers the proxy `dependsOn` with condition `SUCCESS` or `COMPLETE`: init
    /// containers (intercept's own, in deploy/), which run and exit before the proxy starts.
    init_containers: Vec<&'a str>,
}

impl<'c> Linter<'c> {
    fn ok<T>(&mut self, result: Result<T, Diagnostic>) -> Option<T> {
        result.map_err(|d| self.diags.push(d)).ok()
    }

    fn run(&mut self, doc: &Value) {
        let Some(td) = self.task_definition(doc) else { return };
        let proxy_name = self.proxy_container_name(&td);
        let containers = self.containers(&td);
        let proxy = match (proxy_name, &containers) {
            (Some((name, path)), Some(containers)) => self.resolve_proxy(name, &path, containers),
            _ => None,
        };
        let containers = containers.unwrap_or_default();
        // Read ahead, because which container is the application depends on its ports; the
        // findings are kept to be reported in document order.
        let mappings: Vec<Mappings> = containers.iter().map(|c| self.port_mappings(c)).collect();
        let applications = proxy.as_ref().map(|p| self.applications(&containers, &mappings, p)).unwrap_or_default();
        let (mut tcp, mut udp) = (PortSet::new(), PortSet::new());
        for (index, (container, ports)) in containers.iter().zip(mappings).enumerate() {
            match &proxy {
                Some(p) if p.index == index => self.proxy_container(container),
                Some(p) => self.other_container(container, p, applications.contains(&index)),
                None => {}
            }
            self.diags.extend(ports.findings);
            ports.tcp.ranges().iter().for_each(|r| tcp.insert(*r));
            ports.udp.ranges().iter().for_each(|r| udp.insert(*r));
        }
        // With no containers to read, every AppPort would be reported again.
        if !containers.is_empty() {
            self.app_ports(&td, &tcp, &udp);
        }
        let fargate = self.fargate(&td);
        self.network_mode(&td, fargate);
        if fargate {
            self.fargate_ports(&td);
        }
    }

    /// The task definition object, unwrapping describe-task-definition output.
    fn task_definition<'a>(&mut self, doc: &'a Value) -> Option<Node<'a>> {
        let root = Node::root(doc);
        self.ok(root
            .as_object()
            .map_err(|_| root.type_error("a task definition object or describe-task-definition output")))?;
        if root.get("containerDefinitions").is_none()
            && let Some(inner) = root.get("taskDefinition")
        {
            self.ok(inner.as_object())?;
            return Some(inner);
        }
        Some(root)
    }

    /// The proxy's container name, and the path it is written at.
    fn proxy_container_name<'a>(&mut self, td: &Node<'a>) -> Option<(&'a str, String)> {
        let Some(pc) = td.get("proxyConfiguration") else {
            self.diags.push(td.missing(
                "proxyConfiguration",
                "the task definition has no APPMESH proxyConfiguration, so there is nothing to intercept for; \
                 add one with type, containerName and properties",
            ));
            return None;
        };
        self.ok(pc.as_object())?;
        let Some(name) = pc.get("containerName") else {
            self.diags.push(
                pc.missing("containerName", "name the proxy (Envoy) container of containerDefinitions, e.g. \"envoy\""),
            );
            return None;
        };
        self.ok(name.as_str()).map(|n| (n, name.path().to_owned()))
    }

    /// The containers as objects, with their names (each checked: present, a string, unique).
    fn containers<'a>(&mut self, td: &Node<'a>) -> Option<Vec<Container<'a>>> {
        let Some(defs) = td.get("containerDefinitions") else {
            self.diags.push(td.missing("containerDefinitions", "list the task's containers, the proxy among them"));
            return None;
        };
        let items = self.ok(defs.as_array())?;
        if items.is_empty() {
            self.diags.push(defs.error("is empty: list the task's containers, the proxy among them"));
            return Some(Vec::new());
        }
        let mut containers: Vec<Container<'a>> = Vec::new();
        for node in items {
            if self.ok(node.as_object()).is_none() {
                continue;
            }
            let name = match node.get("name") {
                None => {
                    self.diags.push(node.missing(
                        "name",
                        "every container needs a name: containerName and dependsOn refer to containers by name",
                    ));
                    None
                }
                Some(name_node) => {
                    let name = self.ok(name_node.as_str());
                    if let Some(name) = name
                        && containers.iter().any(|c| c.name == Some(name))
                    {
                        self.diags.push(name_node.error(
                            "is used by an earlier container too: names must be unique, \
                             because containerName and dependsOn refer to containers by name",
                        ));
                    }
                    name
                }
            };
            containers.push(Container { node, name });
        }
        Some(containers)
    }

    fn resolve_proxy<'a>(&mut self, name: &'a str, name_path: &str, containers: &[Container<'a>]) -> Option<Proxy<'a>> {
        if let Some(index) = containers.iter().position(|c| c.name == Some(name)) {
            let node = &containers[index].node;
            let user = node.get("user").and_then(|u| u.value().as_str());
            let init_containers = node
                .value()
                .get("dependsOn")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|d| matches!(d.get("condition").and_then(Value::as_str), Some("SUCCESS" | "COMPLETE")))
                .filter_map(|d| d.get("containerName").and_then(Value::as_str))
                .collect();
            return Some(Proxy { index, name, user, init_containers });
        }
        if containers.is_empty() {
            // Already reported: containerDefinitions is empty or holds no objects.
            return None;
        }
        let names: Vec<&str> = containers.iter().filter_map(|c| c.name).collect();
        let mut message = format!(
            "names no container of containerDefinitions (there are: {}); it must name the proxy (Envoy) container",
            if names.is_empty() { "none with a name".to_owned() } else { quoted_list(&names) }
        );
        if let Some(close) = closest(name, &names) {
            message.push_str(&format!("; did you mean \"{close}\"?"));
        }
        self.diags.push(Diagnostic::error(name_path, Some(name), message));
        None
    }

    fn proxy_container(&mut self, c: &Container<'_>) {
        self.proxy_user(c);
        if let Some(essential) = c.node.get("essential")
            && self.ok(essential.as_bool()) == Some(false)
        {
            self.diags.push(essential.error(
                "the proxy container must be essential: if Envoy stopped while the task ran on, every \
                 intercepted connection would be redirected to a port nobody listens on; set \"essential\": true",
            ));
        }
        self.health_check(c);
        self.mesh_environment(c);
    }

    fn proxy_user(&mut self, c: &Container<'_>) {
        let expected = self.expected_user();
        let Some(node) = c.node.get("user") else {
            let identity = match self.config {
                Some(config) => identity_names(config),
                None => "IgnoredUID".to_owned(),
            };
            self.diags.push(Diagnostic::error(
                c.node.child_path("user"),
                None,
                format!(
                    "the proxy container has no user, so it runs as its image's default user, which must equal \
                     {identity} or Envoy's own connections are redirected back to Envoy; set \"user\": {expected}"
                ),
            ));
            return;
        };
        let Some(text) = self.ok(node.as_str().map_err(|_| {
            let suggestion = match (self.config, node.value()) {
                (None, Value::Number(n)) => format!("\"{n}\""),
                _ => expected.clone(),
            };
            node.error(format!("must be a string (ECS takes user as text): write \"user\": {suggestion}"))
        })) else {
            return;
        };
        let parsed = match user::parse(text) {
            Ok(parsed) => parsed,
            Err(problem) => {
                self.diags.push(node.error(problem));
                return;
            }
        };
        let Some(config) = self.config else { return };
        match user::exemption(&parsed, config) {
            Exemption::Exempt(_) => {}
            Exemption::NotExempt => self.diags.push(node.error(format!(
                "the proxy must run as {}, or Envoy's own outbound connections are redirected back to Envoy \
                 (a loop); set \"user\": {expected}",
                identity_names(config)
            ))),
            Exemption::Unknown(why) => self.diags.push(node.warning(format!(
                "cannot check that the proxy runs as {}: {why}; write \"user\": {expected} so it can be checked",
                identity_names(config)
            ))),
        }
    }

    /// The `user` value to suggest, in JSON.
    fn expected_user(&self) -> String {
        let first = |ids: &[u32]| ids.first().copied();
        match self.config.map(|c| (first(&c.ignored_uids), first(&c.ignored_gids))) {
            Some((Some(uid), _)) => format!("\"{uid}\""),
            Some((None, Some(gid))) => format!("\"<uid>:{gid}\""),
            _ => "\"<IgnoredUID>\" (e.g. \"1337\")".to_owned(),
        }
    }

    fn health_check(&mut self, c: &Container<'_>) {
        let Some(hc) = c.node.get("healthCheck") else {
            self.diags.push(Diagnostic::error(
                c.node.child_path("healthCheck"),
                None,
                format!(
                    "the proxy container has no healthCheck, so it never becomes HEALTHY and the containers that \
                     dependsOn it never start; add {{\"command\": [\"CMD-SHELL\", \"{LIVE_CHECK}\"], \
                     \"startPeriod\": 10, \"interval\": 5, \"timeout\": 2, \"retries\": 3}}"
                ),
            ));
            return;
        };
        if self.ok(hc.as_object()).is_none() {
            return;
        }
        let Some(command) = hc.get("command") else {
            self.diags.push(hc.missing("command", &format!("add \"command\": [\"CMD-SHELL\", \"{LIVE_CHECK}\"]")));
            return;
        };
        let Some(parts) = self.ok(command.as_array()) else { return };
        let mut words = Vec::new();
        for part in &parts {
            match self.ok(part.as_str()) {
                Some(word) => words.push(word),
                None => return,
            }
        }
        if words.is_empty() {
            self.diags.push(command.error(format!("is empty: use [\"CMD-SHELL\", \"{LIVE_CHECK}\"]")));
            return;
        }
        let text = words.join(" ");
        // Envoy's admin interface answers both; each passes only once Envoy has its configuration.
        let live = text.contains("server_info") && text.contains("LIVE");
        let ready = text.contains("/ready");
        if !live && !ready {
            self.diags.push(command.warning(format!(
                "is not Envoy's admin LIVE check (\"{LIVE_CHECK}\"); make sure it passes only once Envoy has loaded \
                 its configuration, or the application starts while the proxy cannot yet route"
            )));
        }
    }

    fn mesh_environment(&mut self, c: &Container<'_>) {
        let env = c.node.get("environment");
        for entry in self.name_value_list(env.as_ref()) {
            let Some(name) = entry.get("name").and_then(|n| n.value().as_str()) else { continue };
            if !MESH_ENV.contains(&name) {
                continue;
            }
            match entry.get("value") {
                Some(value) => match self.ok(value.as_str()) {
                    Some("") => self.diags.push(value.error(format!(
                        "{name} is empty: set it to the mesh resource Envoy serves, e.g. \
                         arn:aws:appmesh:<region>:<account>:mesh/<mesh>/virtualNode/<node>"
                    ))),
                    _ => return,
                },
                None => {
                    self.diags.push(entry.missing("value", &format!("{name} needs the mesh resource as its value")))
                }
            }
            return;
        }
        // Secrets are injected as environment variables of the same name.
        let secrets = c.node.get("secrets");
        for entry in self.name_value_list(secrets.as_ref()) {
            if entry.get("name").and_then(|n| n.value().as_str()).is_some_and(|n| MESH_ENV.contains(&n)) {
                return;
            }
        }
        let path = c.node.child_path("environment");
        let value = env.as_ref().map(Node::rendered);
        let advice = "add APPMESH_RESOURCE_ARN (the virtual node's or gateway's ARN; Envoy image 1.15.0 or later) \
                      or the older APPMESH_VIRTUAL_NODE_NAME (mesh/<mesh>/virtualNode/<node>) to the proxy \
                      container's environment";
        let files = c.node.get("environmentFiles").is_some_and(|f| f.value().as_array().is_some_and(|a| !a.is_empty()));
        self.diags.push(if files {
            Diagnostic::warning(
                path,
                value.as_deref(),
                format!(
                    "neither mesh variable is in environment; the environmentFiles may set one, which intercept \
                     cannot read; otherwise {advice}"
                ),
            )
        } else {
            Diagnostic::error(
                path,
                value.as_deref(),
                format!(
                    "names no mesh resource, so Envoy cannot fetch its configuration and never becomes HEALTHY; \
                     {advice}"
                ),
            )
        });
    }

    /// The objects of an `environment`- or `secrets`-like list, reporting wrong types.
    fn name_value_list<'a>(&mut self, list: Option<&Node<'a>>) -> Vec<Node<'a>> {
        let Some(items) = list.and_then(|l| self.ok(l.as_array())) else { return Vec::new() };
        let mut entries = Vec::new();
        for item in items {
            if self.ok(item.as_object()).is_none() {
                continue;
            }
            match item.get("name") {
                Some(name) if self.ok(name.as_str()).is_none() => continue,
                _ => entries.push(item),
            }
        }
        entries
    }

    /// `application`: the container is the application's (see [`Linter::applications`]).
    fn other_container(&mut self, c: &Container<'_>, proxy: &Proxy<'_>, application: bool) {
        let user = c.node.get("user");
        let user_text = match &user {
            Some(node) => {
                let text = self.ok(node.as_str());
                if let Some(Err(problem)) = text.map(user::parse) {
                    self.diags.push(node.error(problem));
                }
                text
            }
            None => None,
        };
        if let Some(node) = c.node.get("essential") {
            self.ok(node.as_bool());
        }
        // An init container the proxy waits for cannot wait for the proxy: that would be a cycle.
        if c.name.is_some_and(|name| proxy.init_containers.contains(&name)) {
            return;
        }

        let dependency = self.dependency_on(c, proxy.name);
        if let (Some(node), Some(identity)) = (&user, self.bypass(user_text, proxy)) {
            let label = c.label();
            self.diags.push(node.warning(match dependency {
                Dependency::Healthy => format!(
                    "{label} runs as {identity}, like the proxy, so none of its outbound TCP traffic goes through the \
                     proxy; give it another user if it should be part of the mesh"
                ),
                _ => format!(
                    "{label} runs as {identity}, like the proxy, so its outbound TCP traffic bypasses the proxy and it \
                     need not wait for \"{}\" to be HEALTHY (the seed guide's X-Ray daemon is set up this way on \
                     purpose); if its traffic should go through the mesh, give it another user and a dependsOn on \
                     \"{}\" with condition HEALTHY",
                    proxy.name, proxy.name
                ),
            }));
            return;
        }
        match dependency {
            Dependency::Healthy | Dependency::Unreadable => {}
            Dependency::Condition(node, condition) => self.diags.push(node.error(format!(
                "must be HEALTHY: with {condition}, {} does not wait for Envoy's health check, and until Envoy is \
                 ready its connections are redirected to a proxy that cannot serve them",
                c.label()
            ))),
            Dependency::Missing(list) => {
                let message = format!(
                    "{} does not wait for the proxy: interception is in place before any container starts, so until \
                     Envoy is ready its connections are redirected to a proxy that cannot serve them; add \
                     {{\"containerName\": \"{}\", \"condition\": \"HEALTHY\"}} to its dependsOn",
                    c.label(),
                    proxy.name
                );
                let path = c.node.child_path("dependsOn");
                let value = list.as_ref().map(Node::rendered);
                self.diags.push(if !essential(c) {
                    Diagnostic::warning(path, value.as_deref(), format!("{message} (a warning: it is not essential)"))
                } else if application {
                    Diagnostic::error(path, value.as_deref(), message)
                } else {
                    Diagnostic::warning(
                        path,
                        value.as_deref(),
                        format!(
                            "{message} (a warning: it is a sidecar, not the application; its outbound TCP connections \
                             fail until Envoy is up, while UDP, such as X-Ray or StatsD traffic, is not intercepted)"
                        ),
                    )
                });
            }
        }
    }

    /// Which identity makes a container with this `user` bypass the proxy, if any.
    fn bypass(&self, user_text: Option<&str>, proxy: &Proxy<'_>) -> Option<String> {
        let text = user_text?;
        match self.config {
            Some(config) => match user::exemption(&user::parse(text).ok()?, config) {
                Exemption::Exempt(identity) => Some(identity),
                Exemption::NotExempt | Exemption::Unknown(_) => None,
            },
            None => (proxy.user == Some(text)).then(|| format!("the proxy container's user \"{text}\"")),
        }
    }

    fn dependency_on<'a>(&mut self, c: &Container<'a>, proxy: &str) -> Dependency<'a> {
        let Some(list) = c.node.get("dependsOn") else { return Dependency::Missing(None) };
        let Some(items) = self.ok(list.as_array()) else { return Dependency::Unreadable };
        let mut wrong = None;
        for item in items {
            if self.ok(item.as_object()).is_none() {
                continue;
            }
            let Some(target) = item.get("containerName").and_then(|n| self.ok(n.as_str())) else { continue };
            if target != proxy {
                continue;
            }
            match item.get("condition") {
                None => {
                    wrong.get_or_insert(Dependency::Unreadable);
                    self.diags.push(item.missing("condition", "set \"condition\": \"HEALTHY\""));
                }
                Some(node) => match self.ok(node.as_str()) {
                    Some("HEALTHY") => return Dependency::Healthy,
                    Some(condition) => {
                        wrong.get_or_insert(Dependency::Condition(node.clone(), condition));
                    }
                    None => {
                        wrong.get_or_insert(Dependency::Unreadable);
                    }
                },
            }
        }
        wrong.unwrap_or(Dependency::Missing(Some(list)))
    }

    fn fargate(&mut self, td: &Node<'_>) -> bool {
        let Some(list) = td.get("requiresCompatibilities") else { return false };
        let Some(items) = self.ok(list.as_array()) else { return false };
        let mut fargate = false;
        for item in items {
            fargate |= self.ok(item.as_str()) == Some("FARGATE");
        }
        fargate
    }

    fn network_mode(&mut self, td: &Node<'_>, fargate: bool) {
        const WHY: &str = "interception is installed in the task's network namespace, and only awsvpc gives the task \
                           one namespace of its own (with its own ENI) that all its containers share";
        let mode = td.get("networkMode");
        let why_not = match &mode {
            None => "it is not set, so ECS uses bridge, where every container has its own network namespace and \
                     the proxy's 127.0.0.1 is not the application's"
                .to_owned(),
            Some(node) => match self.ok(node.as_str()) {
                None | Some("awsvpc") => return,
                Some("bridge") => {
                    "with bridge every container has its own network namespace, so the proxy's 127.0.0.1 is not \
                     the application's"
                        .to_owned()
                }
                Some("host") => "with host the task shares the instance's network namespace, so the rules would \
                                 capture the traffic of every process on the instance"
                    .to_owned(),
                Some(other) => format!("\"{other}\" gives the task no namespace to intercept in"),
            },
        };
        let path = td.child_path("networkMode");
        let value = mode.as_ref().map(Node::rendered);
        if fargate {
            self.diags.push(Diagnostic::error(
                path,
                value.as_deref(),
                format!("Fargate supports only \"awsvpc\", and so does interception: {WHY}"),
            ));
        } else {
            self.diags.push(Diagnostic::warning(path, value.as_deref(), format!("use \"awsvpc\": {why_not}; {WHY}")));
        }
    }

    fn fargate_ports(&mut self, td: &Node<'_>) {
        let Some(config) = self.config else { return };
        let ports = [
            (Property::ProxyIngressPort, config.ingress.as_ref().map(|i| i.proxy_port)),
            (Property::ProxyEgressPort, Some(config.proxy_egress_port)),
        ];
        for (property, port) in ports {
            let Some(port) = port.filter(|p| *p < FARGATE_MIN_PORT) else { continue };
            self.diags.push(Diagnostic::error(
                property_path(td, property),
                Some(&port.to_string()),
                "on Fargate the seed guide requires port values greater than 1024 (the proxy does not run as root \
                 there); use a port above 1024, by convention ProxyIngressPort 15000 and ProxyEgressPort 15001",
            ));
        }
    }
}

/// ECS's default: a container is essential unless it says otherwise (a mistyped value is
/// reported where it is read).
fn essential(c: &Container<'_>) -> bool {
    c.node.get("essential").and_then(|e| e.value().as_bool()).unwrap_or(true)
}

enum Dependency<'a> {
    Healthy,
    /// A dependency on the proxy with another condition (the first one found).
    Condition(Node<'a>, &'a str),
    /// No dependency on the proxy; the `dependsOn` list if there is one.
    Missing(Option<Node<'a>>),
    /// dependsOn could not be read; its problems are already reported.
    Unreadable,
}

/// Where a property is written in the task definition, or its name if it is not there.
fn property_path(td: &Node<'_>, property: Property) -> String {
    let properties = td.value().get("proxyConfiguration").and_then(|pc| pc.get("properties")?.as_array());
    let index =
        properties.and_then(|list| list.iter().position(|p| p.get("name") == Some(&Value::from(property.name()))));
    match index {
        Some(i) => format!("{}.properties[{i}].value", td.child_path("proxyConfiguration")),
        None => property.name().to_owned(),
    }
}

fn identity_names(config: &ProxyConfig) -> String {
    let (uids, gids) = (user::ids(&config.ignored_uids), user::ids(&config.ignored_gids));
    match (config.ignored_uids.is_empty(), config.ignored_gids.is_empty()) {
        (false, false) => format!("uid {uids} (IgnoredUID) or gid {gids} (IgnoredGID)"),
        (false, true) => format!("uid {uids} (IgnoredUID)"),
        (true, false) => format!("gid {gids} (IgnoredGID)"),
        (true, true) => "IgnoredUID or IgnoredGID".to_owned(),
    }
}

fn quoted_list(names: &[&str]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// A name close enough to `name` to be what was meant.
fn closest<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (strsim::levenshtein(&name.to_lowercase(), &n.to_lowercase()), *n))
        .filter(|(distance, _)| *distance <= 2.max(name.len() / 3))
        .min()
        .map(|(_, n)| n)
}
