//! What is installed on a cgroup, read from its pins, and how `intercept status` shows it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use super::maps::{self, Contents, Generations};
use super::pins::{open_pinned_links, open_pinned_maps};
use super::{Counter, Error, Program, Target, host};

/// A program of an installation, from its pinned link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStatus {
    pub program: Program,
    pub link_id: u32,
    pub program_id: u32,
    /// Whether the kernel lists the program among the cgroup's attached programs (for the
    /// `sk_lookup` program: whether its link is still attached to a network namespace).
    pub attached: bool,
}

/// What is installed on a cgroup, read from its pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub pin_dir: PathBuf,
    pub programs: Vec<ProgramStatus>,
    /// The generation of the maps the programs use.
    pub generation: u32,
    /// What the active generation holds: the configuration enforced.
    pub contents: Contents,
    pub counters: Vec<(Counter, u64)>,
    /// Entries of the hand-off map: established redirected connections whose proxy-side
    /// socket the kernel has not created yet (or whose app socket has not closed since).
    pub handoffs: usize,
    /// The build that made (or last replaced) the programs, and the map layout.
    pub version: intercept_common::Version,
}

/// The target's installation, or `None` when nothing is installed for it.
pub fn status(target: &Target) -> Result<Option<Status>, Error> {
    let Some(dir) = target.installation()? else { return Ok(None) };
    let version = super::installed_version(&dir)?;
    if version.layout != intercept_common::LAYOUT {
        return Err(Error::OlderLayout {
            dir,
            installed_layout: version.layout,
            ours: super::build().build_str().to_owned(),
        });
    }
    let links = open_pinned_links(&dir)?;
    let maps = open_pinned_maps(&dir)?;
    let mut programs = Vec::new();
    for (program, info) in links {
        let attached = if program.on_netns() {
            let path = dir.join(program.link_pin());
            host::obj_get(&path)
                .and_then(|link| host::link_netns_ino(link.as_fd()))
                .map_err(|e| Error::io("read the link pinned at", &path, e))?
                != 0
        } else {
            host::attached_programs(&target.cgroup, program.attach_type())?.contains(&info.program_id())
        };
        programs.push(ProgramStatus { program, link_id: info.id(), program_id: info.program_id(), attached });
    }
    let handoffs = maps::handoff_size(&maps)?;
    let host = maps::HostMaps::open(&dir.join(super::PROGRAMS_LINK))?;
    let slot = maps::read_task(&maps)?;
    let generations = Generations::read(&host, slot, &maps)?;
    Ok(Some(Status {
        cgroup: target.cgroup.clone(),
        cgroup_id: target.cgroup_id,
        pin_dir: dir,
        programs,
        generation: generations.active,
        contents: generations.active().clone(),
        counters: maps::read_counters(&host, target.cgroup_id, &maps)?,
        handoffs,
        version,
    }))
}

impl Status {
    /// Human-readable report for `intercept status`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let c = &self.contents.config;
        let _ = writeln!(out, "eBPF backend: cgroup {} (id {})", self.cgroup.display(), self.cgroup_id);
        let _ = writeln!(out, "pins: {}", self.pin_dir.display());
        let _ = writeln!(out, "made by: {} (map layout {})", self.version.build_str(), self.version.layout);
        out.push_str("programs:\n");
        for p in &self.programs {
            let _ = writeln!(
                out,
                "  {:<18} {:<14} program {:>6}  link {:>6}  {}",
                p.program.section(),
                p.program.name(),
                p.program_id,
                p.link_id,
                if p.attached { "attached" } else { "NOT ATTACHED" }
            );
        }
        let _ = writeln!(out, "configuration enforced (map generation {}):", self.generation);
        let ids = |ids: Vec<u32>| {
            if ids.is_empty() { "-".to_owned() } else { ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",") }
        };
        let (uids, gids) = self.contents.ignored_ids();
        let _ = writeln!(out, "  IgnoredUID         {}", ids(uids));
        let _ = writeln!(out, "  IgnoredGID         {}", ids(gids));
        let _ = writeln!(out, "  ProxyEgressPort    {}", c.proxy_egress_port);
        let _ = writeln!(
            out,
            "  ProxyDNSPort       {}",
            if c.proxy_dns_port == 0 { "-".to_owned() } else { c.proxy_dns_port.to_string() }
        );
        let _ = writeln!(
            out,
            "  ProxyIngressPort   {}",
            if c.proxy_ingress_port == 0 { "-".to_owned() } else { c.proxy_ingress_port.to_string() }
        );
        let _ = writeln!(out, "  IPv6               {}", if c.ipv6 != 0 { "intercepted" } else { "left alone" });
        let list = |v: Vec<String>| if v.is_empty() { "-".to_owned() } else { summarise(&v) };
        let _ = writeln!(
            out,
            "  EgressIgnoredPorts {}",
            list(self.contents.ignored_ports.iter().map(u16::to_string).collect())
        );
        let _ = writeln!(
            out,
            "  EgressIgnoredIPs   {}",
            list(self.contents.ignored_nets().iter().map(ToString::to_string).collect())
        );
        if c.include_only != 0 {
            let _ = writeln!(
                out,
                "  EgressIncludedIPs  {}",
                list(self.contents.included_nets().iter().map(ToString::to_string).collect())
            );
        }
        let _ = writeln!(
            out,
            "  AppPorts           {}",
            list(self.contents.app_ports.iter().map(u16::to_string).collect())
        );
        let _ = writeln!(
            out,
            "  local destinations {}",
            list(self.contents.local_nets().iter().map(ToString::to_string).collect())
        );
        let _ = writeln!(
            out,
            "  inbound            {}",
            if c.proxy_ingress_port == 0 {
                "no ingress configured".to_owned()
            } else {
                format!(
                    "AppPorts from non-local sources to the proxy's listener on {} (sk_lookup); without a \
                     listener: {}",
                    c.proxy_ingress_port,
                    if c.ingress_fallback == intercept_common::INGRESS_FALLBACK_APP { "to the app" } else { "refused" }
                )
            }
        );
        out.push_str("counters:\n");
        for (counter, value) in &self.counters {
            let _ = writeln!(out, "  {:<18} {value}", counter.name());
        }
        let _ = writeln!(out, "original destinations: kept on the sockets; {} hand-off(s) in flight", self.handoffs);
        out
    }

    /// Differences between what is installed and `want` (e.g. from the configuration given to
    /// `status`), one line each; empty when they agree. Detached programs count as drift.
    pub fn drift(&self, want: &Contents) -> Vec<String> {
        let mut out = self.detached();
        out.extend(self.contents.drift(want));
        out
    }

    /// Pinned programs the cgroup does not list as attached, one line each.
    pub fn detached(&self) -> Vec<String> {
        self.programs
            .iter()
            .filter(|p| !p.attached)
            .map(|p| {
                let to = if p.program.on_netns() { "a network namespace" } else { "the cgroup" };
                format!("{} ({}) is pinned but not attached to {to}", p.program.name(), p.program.section())
            })
            .collect()
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters.iter().find(|(c, _)| *c == counter).map_or(0, |(_, v)| *v)
    }
}

/// The JSON of `intercept status --backend ebpf --format json`: the configuration enforced in
/// the configuration's own terms, counters by name.
impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct ProgramJson {
            name: &'static str,
            hook: &'static str,
            program_id: u32,
            link_id: u32,
            attached: bool,
        }
        #[derive(serde::Serialize)]
        struct ConfigJson {
            ignored_uids: Vec<u32>,
            ignored_gids: Vec<u32>,
            proxy_egress_port: u16,
            proxy_dns_port: Option<u16>,
            egress_included_ips: Option<Vec<ipnet::IpNet>>,
            proxy_ingress_port: Option<u16>,
            /// "refuse" or "app", with ingress.
            ingress_fallback: Option<&'static str>,
            ipv6: bool,
            egress_ignored_ports: Vec<u16>,
            egress_ignored_ips: Vec<ipnet::IpNet>,
            app_ports: Vec<u16>,
            local_destinations: Vec<ipnet::IpNet>,
        }
        #[derive(serde::Serialize)]
        struct StatusJson<'a> {
            cgroup: &'a Path,
            cgroup_id: u64,
            pin_dir: &'a Path,
            programs: Vec<ProgramJson>,
            generation: u32,
            configuration: ConfigJson,
            counters: BTreeMap<&'static str, u64>,
            build: &'a str,
            layout: u32,
            handoffs: usize,
        }
        let c = &self.contents.config;
        let (ignored_uids, ignored_gids) = self.contents.ignored_ids();
        StatusJson {
            cgroup: &self.cgroup,
            cgroup_id: self.cgroup_id,
            pin_dir: &self.pin_dir,
            programs: self
                .programs
                .iter()
                .map(|p| ProgramJson {
                    name: p.program.name(),
                    hook: p.program.section(),
                    program_id: p.program_id,
                    link_id: p.link_id,
                    attached: p.attached,
                })
                .collect(),
            generation: self.generation,
            configuration: ConfigJson {
                ignored_uids,
                ignored_gids,
                proxy_egress_port: c.proxy_egress_port,
                proxy_dns_port: (c.proxy_dns_port != 0).then_some(c.proxy_dns_port),
                egress_included_ips: (c.include_only != 0).then(|| self.contents.included_nets()),
                proxy_ingress_port: (c.proxy_ingress_port != 0).then_some(c.proxy_ingress_port),
                ingress_fallback: (c.proxy_ingress_port != 0).then_some(
                    if c.ingress_fallback == intercept_common::INGRESS_FALLBACK_APP { "app" } else { "refuse" },
                ),
                ipv6: c.ipv6 != 0,
                egress_ignored_ports: self.contents.ignored_ports.iter().copied().collect(),
                egress_ignored_ips: self.contents.ignored_nets(),
                app_ports: self.contents.app_ports.iter().copied().collect(),
                local_destinations: self.contents.local_nets(),
            },
            counters: self.counters.iter().map(|(c, v)| (c.name(), *v)).collect(),
            build: self.version.build_str(),
            layout: self.version.layout,
            handoffs: self.handoffs,
        }
        .serialize(serializer)
    }
}

fn summarise(items: &[String]) -> String {
    const SHOWN: usize = 8;
    if items.len() <= SHOWN {
        items.join(",")
    } else {
        format!("{},… ({} in all)", items[..SHOWN].join(","), items.len())
    }
}
