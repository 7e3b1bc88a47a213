//! The eBPF plan: the contents of every map the programs read, as typed data.
//!
//! The programs decide each connection the way [`crate::model::decide`] does, looking
//! things up in these maps: [`CONFIG_MAP`] for the proxy ports (DNS's too), the IPv6 and
//! include-only switches; [`IGNORED_IDS_MAP`] for every IgnoredUID and IgnoredGID; the port
//! sets for EgressIgnoredPorts and AppPorts (LPM tries matched on every bit; ranges expanded to
//! single ports: a lookup is one exact match whatever the configuration); LPM tries for EgressIgnoredIPs,
//! EgressIncludedIPs and the task's local networks, one per family.
//!
//! The local-networks tries hold the loopback ranges here; the backend adds the network
//! namespace's own addresses when it applies the plan, because only it can see them.
//!
//! The maps are the host's, shared by every task: each entry's key starts with the task's slot
//! and a generation (`CONFIG` is indexed by both), and [`ACTIVE_MAP`] says, for each slot,
//! which generation the task's programs use: the backend writes the plan into the inactive
//! generation and then flips `ACTIVE[slot]`, so each connection follows one configuration, the
//! old or the new. The plan is one task's entries of one generation; capacities are the
//! host's.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use intercept_common::{
    ACTIVE_MAP, APP_PORTS_MAP, CONFIG_MAP, Counter, GENERATIONS, GlobalConfig, HOST_NETS_CAPACITY, HOST_SETS_CAPACITY,
    IGNORED_IDS_MAP, IGNORED_NETS_V4_MAP, IGNORED_NETS_V6_MAP, IGNORED_PORTS_MAP, INCLUDED_NETS_V4_MAP,
    INCLUDED_NETS_V6_MAP, INGRESS_FALLBACK_APP, INGRESS_FALLBACK_REFUSE, LOCAL_NETS_V4_MAP, LOCAL_NETS_V6_MAP,
    LpmKeyV4, LpmKeyV6, MAX_TASKS, TASK_COUNTERS_MAP,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::{push_summarised, summarised_inline, to_json};
use crate::config::{IngressFallback, ProxyConfig};
use crate::model::LocalAddrs;

/// What every map of the eBPF backend holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfPlan {
    /// The value of [`CONFIG_MAP`] at the generation being written.
    pub config: GlobalConfig,
    /// Keys of [`IGNORED_PORTS_MAP`], ascending (each maps to [`intercept_common::PRESENT`]).
    pub ignored_ports: Vec<u16>,
    /// Keys of [`APP_PORTS_MAP`], ascending; empty without ingress.
    pub app_ports: Vec<u16>,
    /// Keys of [`IGNORED_NETS_V4_MAP`].
    pub ignored_nets_v4: Vec<LpmKeyV4>,
    /// Keys of [`IGNORED_NETS_V6_MAP`]; empty when IPv6 is not intercepted.
    pub ignored_nets_v6: Vec<LpmKeyV6>,
    /// Keys of [`LOCAL_NETS_V4_MAP`] known before apply time: the loopback range.
    pub local_nets_v4: Vec<LpmKeyV4>,
    /// Keys of [`LOCAL_NETS_V6_MAP`] known before apply time: `::1`; empty when IPv6 is
    /// not intercepted.
    pub local_nets_v6: Vec<LpmKeyV6>,
    /// The IgnoredUIDs and IgnoredGIDs: [`IGNORED_IDS_MAP`]'s keys, ascending.
    pub ignored_uids: Vec<u32>,
    pub ignored_gids: Vec<u32>,
    /// Keys of [`INCLUDED_NETS_V4_MAP`] and [`INCLUDED_NETS_V6_MAP`]; read only when
    /// `config.include_only` is 1.
    pub included_nets_v4: Vec<LpmKeyV4>,
    pub included_nets_v6: Vec<LpmKeyV6>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    Array,
    Hash,
    LpmTrie,
    PerCpuCgroupStorage,
}

impl MapKind {
    fn label(self) -> &'static str {
        match self {
            MapKind::Array => "array",
            MapKind::Hash => "hash",
            MapKind::LpmTrie => "LPM trie",
            MapKind::PerCpuCgroupStorage => "per-CPU cgroup storage",
        }
    }
}

/// A map's shape and the capacity the backend must give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key: &'static str,
    pub value: &'static str,
    /// The host's capacity, for every task's entries (0: a cgroup storage, one value per cgroup).
    pub max_entries: u32,
    /// How many generations a task's entries span (1 for `ACTIVE` and `TASK_COUNTERS`).
    pub generations: u32,
}

impl EbpfPlan {
    pub fn new(config: &ProxyConfig) -> EbpfPlan {
        let ignored_nets = config.effective_ignored_ips();
        let loopback = LocalAddrs::loopback();
        let (ignored_nets_v4, ignored_nets_v6) = split_keys(&ignored_nets, config.ipv6);
        let (local_nets_v4, local_nets_v6) = split_keys(loopback.nets(), config.ipv6);
        let included = config.egress_included_ips.as_ref().map(IpNet::aggregate).unwrap_or_default();
        let (included_nets_v4, included_nets_v6) = split_keys(&included, config.ipv6);
        EbpfPlan {
            config: GlobalConfig {
                proxy_egress_port: config.proxy_egress_port,
                proxy_ingress_port: config.ingress.as_ref().map_or(0, |i| i.proxy_port),
                proxy_dns_port: config.dns_capture().unwrap_or(0),
                has_ignored_uids: (!config.ignored_uids.is_empty()).into(),
                has_ignored_gids: (!config.ignored_gids.is_empty()).into(),
                ipv6: config.ipv6.into(),
                ingress_fallback: match config.ingress_fallback {
                    IngressFallback::Refuse => INGRESS_FALLBACK_REFUSE,
                    IngressFallback::App => INGRESS_FALLBACK_APP,
                },
                include_only: config.egress_included_ips.is_some().into(),
                _pad: [0; 5],
            },
            ignored_uids: config.ignored_uids.clone(),
            ignored_gids: config.ignored_gids.clone(),
            included_nets_v4,
            included_nets_v6,
            ignored_ports: config.effective_ignored_ports().ports().collect(),
            app_ports: config.ingress.as_ref().map(|i| i.app_ports.ports().collect()).unwrap_or_default(),
            ignored_nets_v4,
            ignored_nets_v6,
            local_nets_v4,
            local_nets_v6,
        }
    }

    /// IngressFallback, as `CONFIG` holds it.
    pub fn ingress_fallback(&self) -> IngressFallback {
        if self.config.ingress_fallback == INGRESS_FALLBACK_APP {
            IngressFallback::App
        } else {
            IngressFallback::Refuse
        }
    }

    /// Every map the plan writes, with the host's capacity (the tries allocate an entry when it
    /// is inserted: the capacity is only a limit).
    pub fn map_specs(&self) -> [MapSpec; 12] {
        let spec = |name, kind, key, value, max_entries, generations| MapSpec {
            name,
            kind,
            key,
            value,
            max_entries,
            generations,
        };
        let v4 = "(slot, generation, LpmKeyV4)";
        let v6 = "(slot, generation, LpmKeyV6)";
        let port = "PortData (slot, generation, port), every bit";
        let (nets, sets) = (HOST_NETS_CAPACITY, HOST_SETS_CAPACITY);
        [
            spec(ACTIVE_MAP, MapKind::Array, "u32 slot", "u32", MAX_TASKS, 1),
            spec(
                CONFIG_MAP,
                MapKind::Array,
                "u32 slot × 2 + generation",
                "GlobalConfig",
                MAX_TASKS * GENERATIONS,
                GENERATIONS,
            ),
            spec(IGNORED_PORTS_MAP, MapKind::LpmTrie, port, "u8", sets, GENERATIONS),
            spec(APP_PORTS_MAP, MapKind::LpmTrie, port, "u8", sets, GENERATIONS),
            spec(IGNORED_NETS_V4_MAP, MapKind::LpmTrie, v4, "u8", nets, GENERATIONS),
            spec(IGNORED_NETS_V6_MAP, MapKind::LpmTrie, v6, "u8", nets, GENERATIONS),
            spec(LOCAL_NETS_V4_MAP, MapKind::LpmTrie, v4, "u8", nets, GENERATIONS),
            spec(LOCAL_NETS_V6_MAP, MapKind::LpmTrie, v6, "u8", nets, GENERATIONS),
            spec(TASK_COUNTERS_MAP, MapKind::PerCpuCgroupStorage, "u64 cgroup", "[u64; 18]", 0, 1),
            spec(
                IGNORED_IDS_MAP,
                MapKind::LpmTrie,
                "IdData (slot, generation, uid or gid, id), every bit",
                "u8",
                sets,
                GENERATIONS,
            ),
            spec(INCLUDED_NETS_V4_MAP, MapKind::LpmTrie, v4, "u8", nets, GENERATIONS),
            spec(INCLUDED_NETS_V6_MAP, MapKind::LpmTrie, v6, "u8", nets, GENERATIONS),
        ]
    }

    /// For `intercept plan`: each map and its contents, long lists summarised.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        out.push_str("# intercept plan: eBPF backend\n");
        out.push_str("# The contents of the maps the programs read. The agent adds the network namespace's own\n");
        out.push_str(&format!(
            "# addresses to {LOCAL_NETS_V4_MAP} and {LOCAL_NETS_V6_MAP} when it applies the plan.\n"
        ));
        out.push_str("# The maps are the host's: a task's entries are keyed by its slot and one of its\n");
        out.push_str(&format!(
            "# {GENERATIONS} generations; the plan is written into the one {ACTIVE_MAP}[slot] does not name (g below),\n"
        ));
        out.push_str(&format!(
            "# then {ACTIVE_MAP}[slot] is set to g: each connection follows the old plan or this one.\n"
        ));
        for spec in self.map_specs() {
            let capacity = match spec.max_entries {
                0 => "one per cgroup".to_owned(),
                max => format!("max {max} for the host"),
            };
            let _ = write!(out, "\n{} ({}, {} → {}, {capacity})", spec.name, spec.kind.label(), spec.key, spec.value);
            match spec.name {
                ACTIVE_MAP => out.push_str(": [slot] = g, the generation the task's programs use\n"),
                CONFIG_MAP => {
                    let c = &self.config;
                    out.push_str(":\n");
                    let fields: [(&str, String); 8] = [
                        ("proxy_egress_port", c.proxy_egress_port.to_string()),
                        ("proxy_ingress_port", c.proxy_ingress_port.to_string()),
                        ("proxy_dns_port", c.proxy_dns_port.to_string()),
                        ("has_ignored_uids", c.has_ignored_uids.to_string()),
                        ("has_ignored_gids", c.has_ignored_gids.to_string()),
                        ("ipv6", c.ipv6.to_string()),
                        ("ingress_fallback", format!("{} ({})", c.ingress_fallback, self.ingress_fallback())),
                        ("include_only", c.include_only.to_string()),
                    ];
                    for (field, value) in fields {
                        let _ = writeln!(out, "  [g].{field:<18} = {value}");
                    }
                }
                IGNORED_PORTS_MAP => push_ports(&mut out, &self.ignored_ports),
                APP_PORTS_MAP => push_ports(&mut out, &self.app_ports),
                IGNORED_NETS_V4_MAP => push_nets(&mut out, &nets_v4(&self.ignored_nets_v4)),
                IGNORED_NETS_V6_MAP => push_nets(&mut out, &nets_v6(&self.ignored_nets_v6)),
                LOCAL_NETS_V4_MAP => push_nets(&mut out, &nets_v4(&self.local_nets_v4)),
                LOCAL_NETS_V6_MAP => push_nets(&mut out, &nets_v6(&self.local_nets_v6)),
                INCLUDED_NETS_V4_MAP => push_nets(&mut out, &nets_v4(&self.included_nets_v4)),
                INCLUDED_NETS_V6_MAP => push_nets(&mut out, &nets_v6(&self.included_nets_v6)),
                IGNORED_IDS_MAP => push_ids(&mut out, &self.ignored_uids, &self.ignored_gids),
                TASK_COUNTERS_MAP => {
                    out.push_str(": the task's cgroup's, one u64 per CPU for each reason, starting at 0\n");
                    for counter in Counter::ALL {
                        let _ = writeln!(out, "  [{}] {}", counter.index(), counter.name());
                    }
                }
                other => unreachable!("map_specs lists {other} without contents"),
            }
        }
        out
    }

    /// Every map's shape and complete contents.
    pub fn render_json(&self) -> String {
        #[derive(Serialize)]
        struct ConfigJson {
            proxy_egress_port: u16,
            proxy_ingress_port: u16,
            proxy_dns_port: u16,
            has_ignored_uids: u8,
            has_ignored_gids: u8,
            ipv6: u8,
            ingress_fallback: u8,
            include_only: u8,
        }
        #[derive(Serialize)]
        struct IdsJson {
            uids: Vec<u32>,
            gids: Vec<u32>,
        }
        #[derive(Serialize)]
        struct LpmJson {
            cidr: IpNet,
            prefix_len: u32,
            /// The key's address bytes (network order), in hex.
            addr: String,
        }
        #[derive(Serialize)]
        struct CounterJson {
            index: u32,
            name: &'static str,
        }
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Contents {
            /// What `ACTIVE` holds, in words.
            Active(&'static str),
            Config([ConfigJson; 1]),
            Ports(Vec<u16>),
            Nets(Vec<LpmJson>),
            Counters(Vec<CounterJson>),
            Ids(IdsJson),
        }
        #[derive(Serialize)]
        struct MapJson {
            #[serde(flatten)]
            spec: MapSpec,
            entries: Contents,
        }
        #[derive(Serialize)]
        struct Json {
            backend: &'static str,
            maps: Vec<MapJson>,
        }
        let lpm = |prefix_len: u32, addr: &[u8], cidr: IpNet| LpmJson {
            cidr,
            prefix_len,
            addr: addr.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let v4 = |keys: &[LpmKeyV4]| {
            Contents::Nets(keys.iter().map(|k| lpm(k.prefix_len, &k.addr, IpNet::V4(net_v4(k)))).collect())
        };
        let v6 = |keys: &[LpmKeyV6]| {
            Contents::Nets(keys.iter().map(|k| lpm(k.prefix_len, &k.addr, IpNet::V6(net_v6(k)))).collect())
        };
        let c = &self.config;
        let maps = self
            .map_specs()
            .into_iter()
            .map(|spec| {
                let entries = match spec.name {
                    ACTIVE_MAP => {
                        Contents::Active("the generation the programs use, set to the plan's once it is written")
                    }
                    CONFIG_MAP => Contents::Config([ConfigJson {
                        proxy_egress_port: c.proxy_egress_port,
                        proxy_ingress_port: c.proxy_ingress_port,
                        proxy_dns_port: c.proxy_dns_port,
                        has_ignored_uids: c.has_ignored_uids,
                        has_ignored_gids: c.has_ignored_gids,
                        ipv6: c.ipv6,
                        ingress_fallback: c.ingress_fallback,
                        include_only: c.include_only,
                    }]),
                    IGNORED_IDS_MAP => {
                        Contents::Ids(IdsJson { uids: self.ignored_uids.clone(), gids: self.ignored_gids.clone() })
                    }
                    INCLUDED_NETS_V4_MAP => v4(&self.included_nets_v4),
                    INCLUDED_NETS_V6_MAP => v6(&self.included_nets_v6),
                    IGNORED_PORTS_MAP => Contents::Ports(self.ignored_ports.clone()),
                    APP_PORTS_MAP => Contents::Ports(self.app_ports.clone()),
                    IGNORED_NETS_V4_MAP => v4(&self.ignored_nets_v4),
                    IGNORED_NETS_V6_MAP => v6(&self.ignored_nets_v6),
                    LOCAL_NETS_V4_MAP => v4(&self.local_nets_v4),
                    LOCAL_NETS_V6_MAP => v6(&self.local_nets_v6),
                    TASK_COUNTERS_MAP => Contents::Counters(
                        Counter::ALL.iter().map(|c| CounterJson { index: c.index(), name: c.name() }).collect(),
                    ),
                    other => unreachable!("map_specs lists {other} without contents"),
                };
                MapJson { spec, entries }
            })
            .collect();
        to_json(&Json { backend: "ebpf", maps })
    }
}

/// The LPM key for `net`: prefix length, then the address in network byte order.
pub fn lpm_key_v4(net: Ipv4Net) -> LpmKeyV4 {
    LpmKeyV4 { prefix_len: net.prefix_len().into(), addr: net.network().octets() }
}

pub fn lpm_key_v6(net: Ipv6Net) -> LpmKeyV6 {
    LpmKeyV6 { prefix_len: net.prefix_len().into(), addr: net.network().octets() }
}

/// The network an LPM key stands for. Keys come from [`lpm_key_v4`], so the prefix length
/// is at most 32.
pub fn net_v4(key: &LpmKeyV4) -> Ipv4Net {
    let prefix = u8::try_from(key.prefix_len).expect("IPv4 prefix length fits in u8");
    Ipv4Net::new(Ipv4Addr::from(key.addr), prefix).expect("IPv4 prefix length at most 32")
}

pub fn net_v6(key: &LpmKeyV6) -> Ipv6Net {
    let prefix = u8::try_from(key.prefix_len).expect("IPv6 prefix length fits in u8");
    Ipv6Net::new(Ipv6Addr::from(key.addr), prefix).expect("IPv6 prefix length at most 128")
}

fn split_keys(nets: &[IpNet], ipv6: bool) -> (Vec<LpmKeyV4>, Vec<LpmKeyV6>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in nets {
        match net {
            IpNet::V4(n) => v4.push(lpm_key_v4(*n)),
            IpNet::V6(n) if ipv6 => v6.push(lpm_key_v6(*n)),
            IpNet::V6(_) => {}
        }
    }
    (v4, v6)
}

fn nets_v4(keys: &[LpmKeyV4]) -> Vec<Ipv4Net> {
    keys.iter().map(net_v4).collect()
}

fn nets_v6(keys: &[LpmKeyV6]) -> Vec<Ipv6Net> {
    keys.iter().map(net_v6).collect()
}

fn push_ports(out: &mut String, ports: &[u16]) {
    match ports.len() {
        0 => out.push_str(": empty\n"),
        n => {
            let _ = writeln!(out, ": {n} {}", if n == 1 { "port" } else { "ports" });
            let _ = writeln!(out, "  {}", summarised_inline(ports));
        }
    }
}

fn push_ids(out: &mut String, uids: &[u32], gids: &[u32]) {
    if uids.is_empty() && gids.is_empty() {
        out.push_str(": empty\n");
        return;
    }
    out.push_str(":\n");
    for (what, ids) in [("uid", uids), ("gid", gids)] {
        if !ids.is_empty() {
            let _ = writeln!(out, "  {what} {}", summarised_inline(ids));
        }
    }
}

fn push_nets<N: std::fmt::Display>(out: &mut String, nets: &[N]) {
    match nets.len() {
        0 => out.push_str(": empty\n"),
        n => {
            let _ = writeln!(out, ": {n} {}", if n == 1 { "network" } else { "networks" });
            push_summarised(out, "  ", nets, "  ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Ingress, PortRange, PortSet};

    fn config(ingress: bool, ignored_ips: usize) -> ProxyConfig {
        ProxyConfig {
            ignored_uids: vec![1337],
            ingress: ingress
                .then(|| Ingress { proxy_port: 15000, app_ports: PortSet::from_ranges([PortRange::single(9080)]) }),
            egress_ignored_ports: PortSet::from_ranges([PortRange::single(5432)]),
            // Enough networks for the iptables plan to use ipsets.
            egress_ignored_ips: (0..ignored_ips).map(|i| format!("10.{i}.0.0/16").parse().unwrap()).collect(),
            ..ProxyConfig::new(15001)
        }
    }

    #[test]
    fn ingress_fallback_is_refuse_unless_asked() {
        assert_eq!(EbpfPlan::new(&config(true, 0)).config.ingress_fallback, INGRESS_FALLBACK_REFUSE);
        let plan = EbpfPlan::new(&ProxyConfig { ingress_fallback: IngressFallback::App, ..config(true, 0) });
        assert_eq!(plan.config.ingress_fallback, INGRESS_FALLBACK_APP);
        assert_eq!(plan.config.proxy_ingress_port, 15000);
        assert_eq!(plan.app_ports, [9080]);
    }
}
