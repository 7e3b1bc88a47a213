//! Port mappings: what each container declares, which containers are the application, and
//! whether the AppPorts are among the declared ports.

use super::json::Node;
use super::ports::{difference, intersection, parse_range};
use super::{Container, Linter, Proxy, essential, property_path};
use crate::config::{Diagnostic, PortRange, PortSet, Property};

/// A container's port mappings, and the findings about them.
pub(super) struct Mappings {
    pub(super) tcp: PortSet,
    pub(super) udp: PortSet,
    pub(super) findings: Vec<Diagnostic>,
}

impl Linter<'_> {
    /// The container's ports; the findings about its portMappings are held in the result.
    pub(super) fn port_mappings(&mut self, c: &Container<'_>) -> Mappings {
        let reported = self.diags.len();
        let (mut tcp, mut udp) = (PortSet::new(), PortSet::new());
        self.read_port_mappings(c, &mut tcp, &mut udp);
        Mappings { tcp, udp, findings: self.diags.split_off(reported) }
    }

    fn read_port_mappings(&mut self, c: &Container<'_>, tcp: &mut PortSet, udp: &mut PortSet) {
        let Some(list) = c.node.get("portMappings") else { return };
        let Some(items) = self.ok(list.as_array()) else { return };
        for item in items {
            if self.ok(item.as_object()).is_none() {
                continue;
            }
            let set = match item.get("protocol") {
                None => &mut *tcp,
                Some(node) => match self.ok(node.as_str()) {
                    Some("tcp") => &mut *tcp,
                    Some("udp") => &mut *udp,
                    Some(_) => {
                        self.diags.push(node.error("must be \"tcp\" or \"udp\""));
                        continue;
                    }
                    None => continue,
                },
            };
            if let Some(port) = item.get("containerPort").and_then(|p| self.ok(p.as_port())) {
                set.insert(PortRange::single(port));
            }
            if let Some(range) = item.get("containerPortRange") {
                match self.ok(range.as_str()).map(|s| (s, parse_range(s))) {
                    Some((_, Some(r))) => set.insert(r),
                    Some((_, None)) => {
                        self.diags.push(range.error("must be a port range \"first-last\", e.g. \"8000-8099\""))
                    }
                    None => {}
                }
            }
        }
    }

    /// The indices of the application's containers, which must wait for the proxy: those that
    /// map an AppPorts port for tcp or, when none does, the only essential container besides
    /// the proxy, its init containers and the containers that bypass it. The others are
    /// sidecars (log routers, agents).
    pub(super) fn applications(
        &self,
        containers: &[Container<'_>],
        mappings: &[Mappings],
        proxy: &Proxy<'_>,
    ) -> Vec<usize> {
        let others = || {
            containers
                .iter()
                .enumerate()
                .filter(|(i, c)| *i != proxy.index && !c.name.is_some_and(|n| proxy.init_containers.contains(&n)))
        };
        if let Some(ingress) = self.config.and_then(|c| c.ingress.as_ref()) {
            let owners: Vec<usize> = others()
                .filter(|(i, _)| {
                    ingress.app_ports.ranges().iter().any(|r| !intersection(*r, &mappings[*i].tcp).is_empty())
                })
                .map(|(i, _)| i)
                .collect();
            if !owners.is_empty() {
                return owners;
            }
        }
        // A container whose traffic bypasses the proxy (the seed's X-Ray daemon) is no candidate.
        let bypasses =
            |c: &Container<'_>| self.bypass(c.node.get("user").and_then(|u| u.value().as_str()), proxy).is_some();
        let candidates: Vec<usize> = others().filter(|(_, c)| essential(c) && !bypasses(c)).map(|(i, _)| i).collect();
        if candidates.len() == 1 { candidates } else { Vec::new() }
    }

    pub(super) fn app_ports(&mut self, td: &Node<'_>, tcp: &PortSet, udp: &PortSet) {
        let Some(ingress) = self.config.and_then(|c| c.ingress.as_ref()) else { return };
        let uncovered = PortSet::from_ranges(ingress.app_ports.ranges().iter().flat_map(|r| difference(*r, tcp)));
        if uncovered.is_empty() {
            return;
        }
        let ports = if uncovered.port_count() == 1 { "port" } else { "ports" };
        let mut message = format!(
            "{ports} {uncovered} in no container's portMappings: AppPorts are the ports the application listens on, and \
             inbound traffic to them is redirected to the proxy; add a tcp portMappings entry (containerPort or \
             containerPortRange) or remove the port from AppPorts"
        );
        let udp_only = PortSet::from_ranges(uncovered.ranges().iter().flat_map(|r| intersection(*r, udp)));
        if !udp_only.is_empty() {
            message.push_str(&format!(" ({udp_only} is mapped for udp only; interception is TCP-only)"));
        }
        let field = property_path(td, Property::AppPorts);
        let value = uncovered.to_string();
        // In awsvpc mode an application listens without portMappings, and ECS wants some
        // AppPorts whenever ProxyIngressPort is set: with no tcp port declared anywhere there
        // is nothing to compare with.
        self.diags.push(if tcp.is_empty() && udp_only.is_empty() {
            Diagnostic::warning(
                field,
                Some(&value),
                format!(
                    "{ports} {uncovered} in no container's portMappings, and no container declares a tcp port, so \
                     intercept cannot tell whether the application listens there (in awsvpc mode it needs no \
                     portMappings to); inbound traffic to AppPorts is redirected to the proxy, so make AppPorts the \
                     ports the application listens on"
                ),
            )
        } else {
            Diagnostic::error(field, Some(&value), message)
        });
    }
}
