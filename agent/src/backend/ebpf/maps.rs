//! The configuration maps as values: what one generation should hold ([`Contents::desired`]),
//! what each generation holds ([`Generations::read`]), and the writes from one to the other.
//!
//! The maps hold two generations (see `intercept-common`); the programs use the one `ACTIVE`
//! names. [`Generations::switch_to`] is the whole re-apply: fill the inactive generation, flip
//! `ACTIVE`, wait for programs still deciding with the old one, clear the old one. A
//! connection is therefore decided by the old configuration or the new one, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use intercept_common::{
    ACTIVE_MAP, APP_PORTS_MAP, CONFIG_MAP, COUNTERS_MAP, Counter, GENERATION_BITS, GENERATIONS, GlobalConfig,
    HANDOFF_MAP, ID_GID, ID_UID, IGNORED_IDS_MAP, IGNORED_IDS_MAX, IGNORED_NETS_V4_MAP, IGNORED_NETS_V6_MAP,
    IGNORED_PORTS_MAP, INCLUDED_NETS_V4_MAP, INCLUDED_NETS_V6_MAP, IdKey, LEGACY_DNS_MAP, LEGACY_ORIG_MAP,
    LEGACY_PENDING_MAP, LOCAL_NETS_CAPACITY, LOCAL_NETS_V4_MAP, LOCAL_NETS_V6_MAP, LpmDataV4, LpmDataV6, LpmKeyV4,
    LpmKeyV6, OrigDst, PRESENT, PortKey, SocketPair, VERSION_MAP, Version,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Error, host};
use crate::plan::ebpf::{EbpfPlan, lpm_key_v4, lpm_key_v6, net_v4, net_v6};

/// One generation's complete contents: a configuration as the programs see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub config: GlobalConfig,
    pub ignored_ports: BTreeSet<u16>,
    pub app_ports: BTreeSet<u16>,
    pub ignored_nets_v4: BTreeSet<LpmKeyV4>,
    pub ignored_nets_v6: BTreeSet<LpmKeyV6>,
    pub local_nets_v4: BTreeSet<LpmKeyV4>,
    pub local_nets_v6: BTreeSet<LpmKeyV6>,
    /// `(kind, id)`: [`ID_UID`] or [`ID_GID`], and the id.
    pub ignored_ids: BTreeSet<(u32, u32)>,
    pub included_nets_v4: BTreeSet<LpmKeyV4>,
    pub included_nets_v6: BTreeSet<LpmKeyV6>,
}

/// How the configuration changed from the old generation to the new one: whether `CONFIG`
/// differs, and how many entries are new and how many are gone, over all maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changes {
    pub config: bool,
    pub added: usize,
    pub removed: usize,
    /// The generation the programs use now.
    pub generation: u32,
}

impl Changes {
    fn between(old: &Contents, new: &Contents, generation: u32) -> Changes {
        fn diff<T: Ord>(old: &BTreeSet<T>, new: &BTreeSet<T>) -> (usize, usize) {
            (new.difference(old).count(), old.difference(new).count())
        }
        let parts = [
            diff(&old.ignored_ports, &new.ignored_ports),
            diff(&old.app_ports, &new.app_ports),
            diff(&old.ignored_nets_v4, &new.ignored_nets_v4),
            diff(&old.ignored_nets_v6, &new.ignored_nets_v6),
            diff(&old.local_nets_v4, &new.local_nets_v4),
            diff(&old.local_nets_v6, &new.local_nets_v6),
            diff(&old.ignored_ids, &new.ignored_ids),
            diff(&old.included_nets_v4, &new.included_nets_v4),
            diff(&old.included_nets_v6, &new.included_nets_v6),
        ];
        Changes {
            config: old.config != new.config,
            added: parts.iter().map(|p| p.0).sum(),
            removed: parts.iter().map(|p| p.1).sum(),
            generation,
        }
    }
}

/// Both generations as the maps hold them, and which one is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generations {
    pub active: u32,
    /// Indexed by generation.
    pub contents: [Contents; GENERATIONS as usize],
}

impl Generations {
    /// Reads every configuration map, sorting entries by generation.
    pub fn read(maps: &BTreeMap<&'static str, Map>) -> Result<Generations, Error> {
        let active: Array<&MapData, u32> = typed(maps, ACTIVE_MAP)?;
        let active = active.get(&0, 0).map_err(map_error(ACTIVE_MAP))? & 1;
        let config: Array<&MapData, GlobalConfig> = typed(maps, CONFIG_MAP)?;
        let mut contents = [Contents::empty(), Contents::empty()];
        for (generation, c) in (0..GENERATIONS).zip(contents.iter_mut()) {
            c.config = config.get(&generation, 0).map_err(map_error(CONFIG_MAP))?;
        }
        for (generation, port) in read_ports(maps, IGNORED_PORTS_MAP)? {
            contents[generation].ignored_ports.insert(port);
        }
        for (generation, port) in read_ports(maps, APP_PORTS_MAP)? {
            contents[generation].app_ports.insert(port);
        }
        for (generation, key) in read_v4(maps, IGNORED_NETS_V4_MAP)? {
            contents[generation].ignored_nets_v4.insert(key);
        }
        for (generation, key) in read_v6(maps, IGNORED_NETS_V6_MAP)? {
            contents[generation].ignored_nets_v6.insert(key);
        }
        for (generation, key) in read_v4(maps, LOCAL_NETS_V4_MAP)? {
            contents[generation].local_nets_v4.insert(key);
        }
        for (generation, key) in read_v6(maps, LOCAL_NETS_V6_MAP)? {
            contents[generation].local_nets_v6.insert(key);
        }
        for (generation, key) in read_v4(maps, INCLUDED_NETS_V4_MAP)? {
            contents[generation].included_nets_v4.insert(key);
        }
        for (generation, key) in read_v6(maps, INCLUDED_NETS_V6_MAP)? {
            contents[generation].included_nets_v6.insert(key);
        }
        let ids: HashMap<&MapData, IdKey, u8> = typed(maps, IGNORED_IDS_MAP)?;
        for key in ids.keys() {
            let key = key.map_err(map_error(IGNORED_IDS_MAP))?;
            if let Some(c) = contents.get_mut(key.generation as usize) {
                c.ignored_ids.insert((key.kind, key.id));
            }
        }
        Ok(Generations { active, contents })
    }

    /// What the programs enforce.
    pub fn active(&self) -> &Contents {
        &self.contents[self.active as usize]
    }

    /// Makes `want` what the programs enforce, atomically for every connection: writes it into
    /// the inactive generation (over whatever an interrupted apply left there), flips `ACTIVE`,
    /// waits until no program can still be deciding with the old generation, and clears it.
    pub fn switch_to(&self, want: &Contents, maps: &mut BTreeMap<&'static str, Map>) -> Result<Changes, Error> {
        let old = self.active;
        let new = 1 - old;
        write_generation(maps, new, &self.contents[new as usize], want)?;
        set_active(maps, new)?;
        host::wait_for_running_programs()?;
        write_generation(maps, old, &self.contents[old as usize], &Contents::empty())?;
        Ok(Changes::between(self.active(), want, new))
    }

    /// Clears the inactive generation (left over from an interrupted apply; never read).
    pub fn clear_inactive(&self, maps: &mut BTreeMap<&'static str, Map>) -> Result<(), Error> {
        let inactive = 1 - self.active;
        write_generation(maps, inactive, &self.contents[inactive as usize], &Contents::empty())
    }

    /// Entries (and a non-zero `CONFIG`) in the inactive generation.
    pub fn inactive_is_empty(&self) -> bool {
        self.contents[1 - self.active as usize] == Contents::empty()
    }
}

/// Fills generation `generation` of freshly created maps with `want` and makes it active.
pub fn install(want: &Contents, generation: u32, maps: &mut BTreeMap<&'static str, Map>) -> Result<(), Error> {
    write_generation(maps, generation, &Contents::empty(), want)?;
    set_active(maps, generation)
}

impl Contents {
    /// The plan's contents plus the task's own addresses as local destinations (IPv6 ones
    /// only when IPv6 is intercepted, like the plan's `::1`).
    pub fn desired(plan: &EbpfPlan, local_addrs: &[IpAddr]) -> Result<Contents, Error> {
        let mut local_nets_v4: BTreeSet<_> = plan.local_nets_v4.iter().copied().collect();
        let mut local_nets_v6: BTreeSet<_> = plan.local_nets_v6.iter().copied().collect();
        for addr in local_addrs {
            match crate::model::canonical(*addr) {
                IpAddr::V4(v4) => {
                    local_nets_v4.insert(lpm_key_v4(Ipv4Net::from(v4)));
                }
                IpAddr::V6(v6) if plan.config.ipv6 != 0 => {
                    local_nets_v6.insert(lpm_key_v6(Ipv6Net::from(v6)));
                }
                IpAddr::V6(_) => {}
            }
        }
        for (name, len) in [(LOCAL_NETS_V4_MAP, local_nets_v4.len()), (LOCAL_NETS_V6_MAP, local_nets_v6.len())] {
            if len > LOCAL_NETS_CAPACITY as usize {
                return Err(Error::TooManyLocalAddresses { map: name, count: len, capacity: LOCAL_NETS_CAPACITY });
            }
        }
        let ignored_ids: BTreeSet<(u32, u32)> = plan
            .ignored_uids
            .iter()
            .map(|&uid| (ID_UID, uid))
            .chain(plan.ignored_gids.iter().map(|&gid| (ID_GID, gid)))
            .collect();
        if ignored_ids.len() > IGNORED_IDS_MAX as usize {
            return Err(Error::TooManyIgnoredIds { count: ignored_ids.len(), capacity: IGNORED_IDS_MAX });
        }
        Ok(Contents {
            config: plan.config,
            ignored_ports: plan.ignored_ports.iter().copied().collect(),
            app_ports: plan.app_ports.iter().copied().collect(),
            ignored_nets_v4: plan.ignored_nets_v4.iter().copied().collect(),
            ignored_nets_v6: plan.ignored_nets_v6.iter().copied().collect(),
            local_nets_v4,
            local_nets_v6,
            ignored_ids,
            included_nets_v4: plan.included_nets_v4.iter().copied().collect(),
            included_nets_v6: plan.included_nets_v6.iter().copied().collect(),
        })
    }

    /// What an unused generation holds: an all-zero configuration and no entries.
    pub fn empty() -> Contents {
        Contents {
            config: GlobalConfig::default(),
            ignored_ports: BTreeSet::new(),
            app_ports: BTreeSet::new(),
            ignored_nets_v4: BTreeSet::new(),
            ignored_nets_v6: BTreeSet::new(),
            local_nets_v4: BTreeSet::new(),
            local_nets_v6: BTreeSet::new(),
            ignored_ids: BTreeSet::new(),
            included_nets_v4: BTreeSet::new(),
            included_nets_v6: BTreeSet::new(),
        }
    }

    /// Human-readable differences from `self` (installed) to `want`, one line each.
    pub fn drift(&self, want: &Contents) -> Vec<String> {
        let mut out = Vec::new();
        if self.config != want.config {
            out.push(format!("{CONFIG_MAP}: installed {:?}, config wants {:?}", self.config, want.config));
        }
        let mut sets = |name: &str, have: Vec<String>, want: Vec<String>| {
            let have: BTreeSet<_> = have.into_iter().collect();
            let want: BTreeSet<_> = want.into_iter().collect();
            for missing in want.difference(&have) {
                out.push(format!("{name}: missing {missing}"));
            }
            for extra in have.difference(&want) {
                out.push(format!("{name}: unexpected {extra}"));
            }
        };
        let ports = |p: &BTreeSet<u16>| p.iter().map(u16::to_string).collect::<Vec<_>>();
        let v4 = |s: &BTreeSet<LpmKeyV4>| s.iter().map(|k| net_v4(k).to_string()).collect::<Vec<_>>();
        let v6 = |s: &BTreeSet<LpmKeyV6>| s.iter().map(|k| net_v6(k).to_string()).collect::<Vec<_>>();
        sets(IGNORED_PORTS_MAP, ports(&self.ignored_ports), ports(&want.ignored_ports));
        sets(APP_PORTS_MAP, ports(&self.app_ports), ports(&want.app_ports));
        sets(IGNORED_NETS_V4_MAP, v4(&self.ignored_nets_v4), v4(&want.ignored_nets_v4));
        sets(IGNORED_NETS_V6_MAP, v6(&self.ignored_nets_v6), v6(&want.ignored_nets_v6));
        sets(LOCAL_NETS_V4_MAP, v4(&self.local_nets_v4), v4(&want.local_nets_v4));
        sets(LOCAL_NETS_V6_MAP, v6(&self.local_nets_v6), v6(&want.local_nets_v6));
        sets(INCLUDED_NETS_V4_MAP, v4(&self.included_nets_v4), v4(&want.included_nets_v4));
        sets(INCLUDED_NETS_V6_MAP, v6(&self.included_nets_v6), v6(&want.included_nets_v6));
        let ids = |s: &BTreeSet<(u32, u32)>| {
            s.iter().map(|(kind, id)| format!("{} {id}", if *kind == ID_UID { "uid" } else { "gid" })).collect()
        };
        sets(IGNORED_IDS_MAP, ids(&self.ignored_ids), ids(&want.ignored_ids));
        out
    }

    /// The ignored uids, then the ignored gids, ascending.
    pub fn ignored_ids(&self) -> (Vec<u32>, Vec<u32>) {
        let of = |kind| self.ignored_ids.iter().filter(|(k, _)| *k == kind).map(|(_, id)| *id).collect();
        (of(ID_UID), of(ID_GID))
    }

    /// The included networks, both families, as CIDRs.
    pub fn included_nets(&self) -> Vec<IpNet> {
        self.included_nets_v4
            .iter()
            .map(|k| IpNet::V4(net_v4(k)))
            .chain(self.included_nets_v6.iter().map(|k| IpNet::V6(net_v6(k))))
            .collect()
    }

    /// The ignored networks, both families, as CIDRs.
    pub fn ignored_nets(&self) -> Vec<IpNet> {
        self.ignored_nets_v4
            .iter()
            .map(|k| IpNet::V4(net_v4(k)))
            .chain(self.ignored_nets_v6.iter().map(|k| IpNet::V6(net_v6(k))))
            .collect()
    }

    /// The local networks, both families, as CIDRs.
    pub fn local_nets(&self) -> Vec<IpNet> {
        self.local_nets_v4
            .iter()
            .map(|k| IpNet::V4(net_v4(k)))
            .chain(self.local_nets_v6.iter().map(|k| IpNet::V6(net_v6(k))))
            .collect()
    }
}

/// Each counter summed over CPUs, in index order.
pub fn read_counters(maps: &BTreeMap<&'static str, Map>) -> Result<Vec<(Counter, u64)>, Error> {
    let counters: PerCpuArray<&MapData, u64> = typed(maps, COUNTERS_MAP)?;
    Counter::ALL
        .iter()
        .map(|&c| {
            let values = counters.get(&c.index(), 0).map_err(map_error(COUNTERS_MAP))?;
            Ok((c, values.iter().sum()))
        })
        .collect()
}

/// Entries in the hand-off map (handshakes the proxy's side has not taken yet), and in the
/// layout-1 pairing maps (connections redirected before an upgrade from layout 1, still open).
pub fn pairing_sizes(maps: &BTreeMap<&'static str, Map>) -> Result<(usize, usize), Error> {
    let handoff: HashMap<&MapData, SocketPair, OrigDst> = typed(maps, HANDOFF_MAP)?;
    let pending: HashMap<&MapData, u64, OrigDst> = typed(maps, LEGACY_PENDING_MAP)?;
    let orig: HashMap<&MapData, SocketPair, OrigDst> = typed(maps, LEGACY_ORIG_MAP)?;
    let dns: HashMap<&MapData, u64, OrigDst> = typed(maps, LEGACY_DNS_MAP)?;
    Ok((handoff.keys().count(), pending.keys().count() + orig.keys().count() + dns.keys().count()))
}

/// The build and layout recorded in an installation's `VERSION` map.
pub fn read_version(maps: &BTreeMap<&'static str, Map>) -> Result<Version, Error> {
    let version: Array<&MapData, Version> = typed(maps, VERSION_MAP)?;
    version.get(&0, 0).map_err(map_error(VERSION_MAP))
}

pub fn write_version(maps: &mut BTreeMap<&'static str, Map>, value: Version) -> Result<(), Error> {
    let mut version: Array<&mut MapData, Version> = typed_mut(maps, VERSION_MAP)?;
    version.set(0, value, 0).map_err(map_error(VERSION_MAP))
}

/// The capacity per generation of a sized map as created (its `max_entries` over the
/// generations).
pub fn capacity(maps: &BTreeMap<&'static str, Map>, name: &'static str) -> Result<u32, Error> {
    let map = maps.get(name).ok_or(Error::MissingMap(name))?;
    let data: &MapData = match map {
        Map::LpmTrie(data) | Map::HashMap(data) => data,
        _ => return Err(Error::MissingMap(name)),
    };
    Ok(data.info().map_err(map_error(name))?.max_entries() / GENERATIONS)
}

fn typed<'a, T>(maps: &'a BTreeMap<&'static str, Map>, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    let map = maps.get(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(map_error(name))
}

fn typed_mut<'a, T>(maps: &'a mut BTreeMap<&'static str, Map>, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = maps.get_mut(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(map_error(name))
}

pub fn map_error(map: &'static str) -> impl Fn(MapError) -> Error {
    move |source| Error::Map { map, source: Box::new(source) }
}

/// Brings generation `generation` from `have` to `want`: stale entries deleted first (so the
/// generation never holds more than the larger of the two), missing ones added, `CONFIG` last.
fn write_generation(
    maps: &mut BTreeMap<&'static str, Map>,
    generation: u32,
    have: &Contents,
    want: &Contents,
) -> Result<(), Error> {
    sync_ports(maps, IGNORED_PORTS_MAP, generation, &have.ignored_ports, &want.ignored_ports)?;
    sync_ports(maps, APP_PORTS_MAP, generation, &have.app_ports, &want.app_ports)?;
    sync_v4(maps, IGNORED_NETS_V4_MAP, generation, &have.ignored_nets_v4, &want.ignored_nets_v4)?;
    sync_v6(maps, IGNORED_NETS_V6_MAP, generation, &have.ignored_nets_v6, &want.ignored_nets_v6)?;
    sync_v4(maps, LOCAL_NETS_V4_MAP, generation, &have.local_nets_v4, &want.local_nets_v4)?;
    sync_v6(maps, LOCAL_NETS_V6_MAP, generation, &have.local_nets_v6, &want.local_nets_v6)?;
    sync_v4(maps, INCLUDED_NETS_V4_MAP, generation, &have.included_nets_v4, &want.included_nets_v4)?;
    sync_v6(maps, INCLUDED_NETS_V6_MAP, generation, &have.included_nets_v6, &want.included_nets_v6)?;
    {
        let mut map: HashMap<&mut MapData, IdKey, u8> = typed_mut(maps, IGNORED_IDS_MAP)?;
        for &(kind, id) in have.ignored_ids.difference(&want.ignored_ids) {
            map.remove(&IdKey { generation, kind, id }).map_err(map_error(IGNORED_IDS_MAP))?;
        }
        for &(kind, id) in want.ignored_ids.difference(&have.ignored_ids) {
            map.insert(IdKey { generation, kind, id }, PRESENT, 0).map_err(map_error(IGNORED_IDS_MAP))?;
        }
    }
    if have.config != want.config {
        let mut config: Array<&mut MapData, GlobalConfig> = typed_mut(maps, CONFIG_MAP)?;
        config.set(generation, want.config, 0).map_err(map_error(CONFIG_MAP))?;
    }
    Ok(())
}

/// One aligned 4-byte array update: each program reads either the old value or the new one.
fn set_active(maps: &mut BTreeMap<&'static str, Map>, generation: u32) -> Result<(), Error> {
    let mut active: Array<&mut MapData, u32> = typed_mut(maps, ACTIVE_MAP)?;
    active.set(0, generation, 0).map_err(map_error(ACTIVE_MAP))
}

/// Keys of a port map as (generation, port).
fn read_ports(maps: &BTreeMap<&'static str, Map>, name: &'static str) -> Result<Vec<(usize, u16)>, Error> {
    let map: HashMap<&MapData, PortKey, u8> = typed(maps, name)?;
    let keys: Vec<PortKey> = map.keys().collect::<Result<_, _>>().map_err(map_error(name))?;
    Ok(keys.into_iter().filter(|k| k.generation < GENERATIONS).map(|k| (k.generation as usize, k.port)).collect())
}

fn read_v4(maps: &BTreeMap<&'static str, Map>, name: &'static str) -> Result<Vec<(usize, LpmKeyV4)>, Error> {
    let map: LpmTrie<&MapData, LpmDataV4, u8> = typed(maps, name)?;
    let keys: Vec<Key<LpmDataV4>> = map.keys().collect::<Result<_, _>>().map_err(map_error(name))?;
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (generation, data) = (u32::from_be(k.data().generation_be), k.data());
            let prefix_len = k.prefix_len().checked_sub(GENERATION_BITS)?;
            (generation < GENERATIONS).then_some((generation as usize, LpmKeyV4 { prefix_len, addr: data.addr }))
        })
        .collect())
}

fn read_v6(maps: &BTreeMap<&'static str, Map>, name: &'static str) -> Result<Vec<(usize, LpmKeyV6)>, Error> {
    let map: LpmTrie<&MapData, LpmDataV6, u8> = typed(maps, name)?;
    let keys: Vec<Key<LpmDataV6>> = map.keys().collect::<Result<_, _>>().map_err(map_error(name))?;
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (generation, data) = (u32::from_be(k.data().generation_be), k.data());
            let prefix_len = k.prefix_len().checked_sub(GENERATION_BITS)?;
            (generation < GENERATIONS).then_some((generation as usize, LpmKeyV6 { prefix_len, addr: data.addr }))
        })
        .collect())
}

fn sync_ports(
    maps: &mut BTreeMap<&'static str, Map>,
    name: &'static str,
    generation: u32,
    have: &BTreeSet<u16>,
    want: &BTreeSet<u16>,
) -> Result<(), Error> {
    let mut map: HashMap<&mut MapData, PortKey, u8> = typed_mut(maps, name)?;
    for &port in have.difference(want) {
        map.remove(&PortKey::new(generation, port)).map_err(map_error(name))?;
    }
    for &port in want.difference(have) {
        map.insert(PortKey::new(generation, port), PRESENT, 0).map_err(map_error(name))?;
    }
    Ok(())
}

fn key_v4(generation: u32, key: &LpmKeyV4) -> Key<LpmDataV4> {
    Key::new(GENERATION_BITS + key.prefix_len, LpmDataV4 { generation_be: generation.to_be(), addr: key.addr })
}

fn key_v6(generation: u32, key: &LpmKeyV6) -> Key<LpmDataV6> {
    Key::new(GENERATION_BITS + key.prefix_len, LpmDataV6 { generation_be: generation.to_be(), addr: key.addr })
}

fn sync_v4(
    maps: &mut BTreeMap<&'static str, Map>,
    name: &'static str,
    generation: u32,
    have: &BTreeSet<LpmKeyV4>,
    want: &BTreeSet<LpmKeyV4>,
) -> Result<(), Error> {
    let mut map: LpmTrie<&mut MapData, LpmDataV4, u8> = typed_mut(maps, name)?;
    for key in have.difference(want) {
        map.remove(&key_v4(generation, key)).map_err(map_error(name))?;
    }
    for key in want.difference(have) {
        map.insert(&key_v4(generation, key), PRESENT, 0).map_err(map_error(name))?;
    }
    Ok(())
}

fn sync_v6(
    maps: &mut BTreeMap<&'static str, Map>,
    name: &'static str,
    generation: u32,
    have: &BTreeSet<LpmKeyV6>,
    want: &BTreeSet<LpmKeyV6>,
) -> Result<(), Error> {
    let mut map: LpmTrie<&mut MapData, LpmDataV6, u8> = typed_mut(maps, name)?;
    for key in have.difference(want) {
        map.remove(&key_v6(generation, key)).map_err(map_error(name))?;
    }
    for key in want.difference(have) {
        map.insert(&key_v6(generation, key), PRESENT, 0).map_err(map_error(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_count_what_the_new_generation_adds_and_drops() {
        let mut old = Contents::empty();
        old.ignored_ports.extend([22, 5432]);
        old.ignored_nets_v4.insert(lpm_key_v4("10.0.0.0/8".parse().unwrap()));
        let mut new = old.clone();
        new.ignored_ports.remove(&5432);
        new.ignored_ports.insert(8080);
        new.local_nets_v6.insert(lpm_key_v6("fd00::2/128".parse().unwrap()));
        new.config.proxy_egress_port = 15001;
        assert_eq!(Changes::between(&old, &new, 1), Changes { config: true, added: 2, removed: 1, generation: 1 });
        assert_eq!(Changes::between(&old, &old, 0), Changes { config: false, added: 0, removed: 0, generation: 0 });
    }
}
