//! The configuration as values: what one generation should hold ([`Contents::desired`]), what
//! each generation holds ([`Generations::read`]), and the writes from one to the other.
//!
//! A task's configuration is in the host's maps, keyed by its slot, in two generations (see
//! `intercept-common`); its programs use the one `ACTIVE[slot]` names. [`Generations::switch_to`]
//! is the whole re-apply: fill the inactive generation, flip `ACTIVE[slot]`, wait for programs
//! still deciding with the old one, clear the old one. A connection is therefore decided by the
//! old configuration or the new one, never a mix.
//!
//! What a task's entries are is recorded in its own `RECORD` map ([`Record`]): the host's maps
//! hold every task's, and are never walked to find one task's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::path::Path;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use intercept_common::{
    ACTIVE_MAP, APP_PORTS_MAP, CONFIG_MAP, COUNTERS_MAP, Counter, GENERATIONS, GlobalConfig, HANDOFF_MAP, ID_GID,
    ID_UID, IGNORED_IDS_MAP, IGNORED_IDS_MAX, IGNORED_NETS_V4_MAP, IGNORED_NETS_V6_MAP, IGNORED_PORTS_MAP,
    INCLUDED_NETS_V4_MAP, INCLUDED_NETS_V6_MAP, IdData, KEY_PREFIX_BITS, LOCAL_NETS_CAPACITY, LOCAL_NETS_V4_MAP,
    LOCAL_NETS_V6_MAP, LpmDataV4, LpmDataV6, LpmKeyV4, LpmKeyV6, OrigDst, PRESENT, PortData, RECORD_MAP, RECORD_PAGE,
    SocketPair, TASK_COUNTERS_MAP, TASK_MAP, TaskRef, VERSION_MAP, Version,
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

/// Both generations as the task's record holds them, and which one is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generations {
    pub active: u32,
    /// Indexed by generation.
    pub contents: [Contents; GENERATIONS as usize],
    /// Indexed by generation: an apply was writing it and may not have finished, so what it
    /// holds is at most `contents` (each entry may or may not be in the maps).
    pub dirty: [bool; GENERATIONS as usize],
}

impl Generations {
    /// Reads the task's record and its active generation.
    pub fn read(host: &HostMaps, slot: u32, own: &BTreeMap<&'static str, Map>) -> Result<Generations, Error> {
        let active = host.active.get(&slot, 0).map_err(map_error(ACTIVE_MAP))? & 1;
        let (contents, dirty) = Record::read(own)?;
        Ok(Generations { active, contents, dirty })
    }

    /// What the programs enforce.
    pub fn active(&self) -> &Contents {
        &self.contents[self.active as usize]
    }

    /// Makes `want` what the programs enforce, atomically for every connection: writes it into
    /// the inactive generation (over whatever an interrupted apply left there), flips
    /// `ACTIVE[slot]`, waits until no program can still be deciding with the old generation,
    /// and clears it. The record holds both while both may be in the maps.
    pub fn switch_to(
        &self,
        want: &Contents,
        host: &mut HostMaps,
        slot: u32,
        own: &mut BTreeMap<&'static str, Map>,
    ) -> Result<Changes, Error> {
        let (old, new) = (self.active as usize, 1 - self.active as usize);
        let mut both = self.contents.clone();
        let mut dirty = self.dirty;
        both[new] = union(&both[new], want);
        dirty[new] = true;
        Record::write(own, &both, dirty)?;
        host.write_generation(slot, new as u32, &self.contents[new], want, self.dirty[new])?;
        host.set_active(slot, new as u32)?;
        host::wait_for_running_programs()?;
        dirty[old] = true;
        Record::write(own, &both, dirty)?;
        host.write_generation(slot, old as u32, &self.contents[old], &Contents::empty(), self.dirty[old])?;
        both[new] = want.clone();
        both[old] = Contents::empty();
        Record::write(own, &both, [false, false])?;
        let new = new as u32;
        Ok(Changes::between(self.active(), want, new))
    }

    /// Clears the inactive generation (left over from an interrupted apply; never read).
    pub fn clear_inactive(
        &self,
        host: &mut HostMaps,
        slot: u32,
        own: &mut BTreeMap<&'static str, Map>,
    ) -> Result<(), Error> {
        let inactive = 1 - self.active as usize;
        let mut dirty = self.dirty;
        dirty[inactive] = true;
        Record::write(own, &self.contents, dirty)?;
        host.write_generation(
            slot,
            inactive as u32,
            &self.contents[inactive],
            &Contents::empty(),
            self.dirty[inactive],
        )?;
        let mut both = self.contents.clone();
        both[inactive] = Contents::empty();
        dirty[inactive] = false;
        Record::write(own, &both, dirty)
    }

    /// Entries (and a non-zero `CONFIG`) in the inactive generation.
    pub fn inactive_is_empty(&self) -> bool {
        self.contents[1 - self.active as usize] == Contents::empty()
    }

    /// Deletes every entry of the task from the host's maps (its programs detached): both
    /// generations, and its configurations.
    pub fn clear(&self, host: &mut HostMaps, slot: u32) -> Result<(), Error> {
        for (generation, contents) in (0..GENERATIONS).zip(&self.contents) {
            host.write_generation(slot, generation, contents, &Contents::empty(), self.dirty[generation as usize])?;
            host.config
                .set(slot * GENERATIONS + generation, GlobalConfig::default(), 0)
                .map_err(map_error(CONFIG_MAP))?;
        }
        Ok(())
    }
}

/// Every entry of `a` and of `b`: what the maps may hold while one replaces the other.
fn union(a: &Contents, b: &Contents) -> Contents {
    fn join<T: Ord + Clone>(a: &BTreeSet<T>, b: &BTreeSet<T>) -> BTreeSet<T> {
        a.union(b).cloned().collect()
    }
    Contents {
        config: b.config,
        ignored_ports: join(&a.ignored_ports, &b.ignored_ports),
        app_ports: join(&a.app_ports, &b.app_ports),
        ignored_nets_v4: join(&a.ignored_nets_v4, &b.ignored_nets_v4),
        ignored_nets_v6: join(&a.ignored_nets_v6, &b.ignored_nets_v6),
        local_nets_v4: join(&a.local_nets_v4, &b.local_nets_v4),
        local_nets_v6: join(&a.local_nets_v6, &b.local_nets_v6),
        ignored_ids: join(&a.ignored_ids, &b.ignored_ids),
        included_nets_v4: join(&a.included_nets_v4, &b.included_nets_v4),
        included_nets_v6: join(&a.included_nets_v6, &b.included_nets_v6),
    }
}

/// Fills generation `generation` of a new task's slot with `want` and makes it active.
pub fn install(
    want: &Contents,
    generation: u32,
    host: &mut HostMaps,
    slot: u32,
    own: &mut BTreeMap<&'static str, Map>,
) -> Result<(), Error> {
    let mut both = [Contents::empty(), Contents::empty()];
    both[generation as usize] = want.clone();
    let mut dirty = [false, false];
    dirty[generation as usize] = true;
    Record::write(own, &both, dirty)?;
    host.write_generation(slot, generation, &Contents::empty(), want, false)?;
    host.set_active(slot, generation)?;
    Record::write(own, &both, [false, false])
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
/// The task's counters: what the host programs counted in its cgroup's storage (`cgroup_id`;
/// zeros when its cgroup is gone) plus what its own programs counted.
pub fn read_counters(
    host: &HostMaps,
    cgroup_id: u64,
    own: &BTreeMap<&'static str, Map>,
) -> Result<Vec<(Counter, u64)>, Error> {
    let ncpus = aya::util::nr_cpus()
        .map_err(|(_, e)| Error::io("count the possible CPUs", "/sys/devices/system/cpu/possible", e))?;
    // A per-CPU value is 8-byte aligned per CPU; [u64; COUNT] is already.
    let per_cpu = Counter::COUNT as usize * 8;
    let mut values = vec![0u8; per_cpu * ncpus];
    let found = host::map_lookup(host.task_counters.fd().as_fd(), &cgroup_id.to_ne_bytes(), &mut values)
        .map_err(|e| Error::io("read the map pinned at", host.dir.join(TASK_COUNTERS_MAP), e))?;
    let counters: PerCpuArray<&MapData, u64> = typed(own, COUNTERS_MAP)?;
    Counter::ALL
        .iter()
        .map(|&c| {
            let own: u64 = counters.get(&c.index(), 0).map_err(map_error(COUNTERS_MAP))?.iter().sum();
            let hosted: u64 = if found {
                (0..ncpus)
                    .map(|cpu| {
                        let at = cpu * per_cpu + c.index() as usize * 8;
                        u64::from_ne_bytes(values[at..at + 8].try_into().unwrap_or_default())
                    })
                    .sum()
            } else {
                0
            };
            Ok((c, own + hosted))
        })
        .collect()
}

pub fn handoff_size(maps: &BTreeMap<&'static str, Map>) -> Result<usize, Error> {
    let handoff: HashMap<&MapData, SocketPair, OrigDst> = typed(maps, HANDOFF_MAP)?;
    Ok(handoff.keys().count())
}

/// The pages the task's `RECORD` has.
pub fn record_capacity(maps: &BTreeMap<&'static str, Map>) -> Result<u32, Error> {
    let map = maps.get(RECORD_MAP).ok_or(Error::MissingMap(RECORD_MAP))?;
    let Map::Array(data) = map else { return Err(Error::MissingMap(RECORD_MAP)) };
    Ok(data.info().map_err(map_error(RECORD_MAP))?.max_entries())
}

/// The installation's slot in the host's programs.
pub fn read_task(maps: &BTreeMap<&'static str, Map>) -> Result<u32, Error> {
    let task: Array<&MapData, TaskRef> = typed(maps, TASK_MAP)?;
    Ok(task.get(&0, 0).map_err(map_error(TASK_MAP))?.slot)
}

pub fn write_task(maps: &mut BTreeMap<&'static str, Map>, slot: u32) -> Result<(), Error> {
    let mut task: Array<&mut MapData, TaskRef> = typed_mut(maps, TASK_MAP)?;
    task.set(0, TaskRef { slot, _pad: 0 }, 0).map_err(map_error(TASK_MAP))
}

pub fn read_version(maps: &BTreeMap<&'static str, Map>) -> Result<Version, Error> {
    let version: Array<&MapData, Version> = typed(maps, VERSION_MAP)?;
    version.get(&0, 0).map_err(map_error(VERSION_MAP))
}

pub fn write_version(maps: &mut BTreeMap<&'static str, Map>, value: Version) -> Result<(), Error> {
    let mut version: Array<&mut MapData, Version> = typed_mut(maps, VERSION_MAP)?;
    version.set(0, value, 0).map_err(map_error(VERSION_MAP))
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

/// The host's maps that hold the tasks' configurations, opened from the pins beside the host's
/// programs.
pub struct HostMaps {
    dir: std::path::PathBuf,
    active: Array<MapData, u32>,
    config: Array<MapData, GlobalConfig>,
    ignored_ports: LpmTrie<MapData, PortData, u8>,
    app_ports: LpmTrie<MapData, PortData, u8>,
    ignored_ids: LpmTrie<MapData, IdData, u8>,
    /// IGNORED, LOCAL and INCLUDED, in that order.
    nets_v4: [LpmTrie<MapData, LpmDataV4, u8>; 3],
    nets_v6: [LpmTrie<MapData, LpmDataV6, u8>; 3],
    task_counters: MapData,
}

impl HostMaps {
    pub fn open(dir: &Path) -> Result<HostMaps, Error> {
        let data = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(map_error(name));
        fn typed<T: TryFrom<Map, Error = MapError>>(name: &'static str, data: MapData) -> Result<T, Error> {
            T::try_from(Map::from_map_data(data).map_err(map_error(name))?).map_err(map_error(name))
        }
        Ok(HostMaps {
            dir: dir.to_owned(),
            active: typed(ACTIVE_MAP, data(ACTIVE_MAP)?)?,
            config: typed(CONFIG_MAP, data(CONFIG_MAP)?)?,
            ignored_ports: typed(IGNORED_PORTS_MAP, data(IGNORED_PORTS_MAP)?)?,
            app_ports: typed(APP_PORTS_MAP, data(APP_PORTS_MAP)?)?,
            ignored_ids: typed(IGNORED_IDS_MAP, data(IGNORED_IDS_MAP)?)?,
            nets_v4: [
                typed(IGNORED_NETS_V4_MAP, data(IGNORED_NETS_V4_MAP)?)?,
                typed(LOCAL_NETS_V4_MAP, data(LOCAL_NETS_V4_MAP)?)?,
                typed(INCLUDED_NETS_V4_MAP, data(INCLUDED_NETS_V4_MAP)?)?,
            ],
            nets_v6: [
                typed(IGNORED_NETS_V6_MAP, data(IGNORED_NETS_V6_MAP)?)?,
                typed(LOCAL_NETS_V6_MAP, data(LOCAL_NETS_V6_MAP)?)?,
                typed(INCLUDED_NETS_V6_MAP, data(INCLUDED_NETS_V6_MAP)?)?,
            ],
            task_counters: data(TASK_COUNTERS_MAP)?,
        })
    }

    fn set_active(&mut self, slot: u32, generation: u32) -> Result<(), Error> {
        self.active.set(slot, generation, 0).map_err(map_error(ACTIVE_MAP))
    }

    /// Writes generation `generation` of the task in `slot` from `have` to `want`. `dirty`: what
    /// it holds is only at most `have` (an interrupted write), so every entry of `want` is
    /// written, and the configuration too.
    fn write_generation(
        &mut self,
        slot: u32,
        generation: u32,
        have: &Contents,
        want: &Contents,
        dirty: bool,
    ) -> Result<(), Error> {
        let empty = Contents::empty();
        // What is surely there: nothing, when dirty (inserting an entry that is there is
        // harmless; skipping one that is not would lose it).
        let sure = if dirty { &empty } else { have };
        let port = |port: &u16| Key::new(PortData::BITS, PortData::new(slot, generation, *port));
        sync(
            &mut self.ignored_ports,
            IGNORED_PORTS_MAP,
            (&have.ignored_ports, &sure.ignored_ports),
            &want.ignored_ports,
            port,
        )?;
        sync(&mut self.app_ports, APP_PORTS_MAP, (&have.app_ports, &sure.app_ports), &want.app_ports, port)?;
        let id = |&(kind, id): &(u32, u32)| Key::new(IdData::BITS, IdData::new(slot, generation, kind, id));
        sync(&mut self.ignored_ids, IGNORED_IDS_MAP, (&have.ignored_ids, &sure.ignored_ids), &want.ignored_ids, id)?;
        let v4 = |k: &LpmKeyV4| key_v4(slot, generation, k);
        let v6 = |k: &LpmKeyV6| key_v6(slot, generation, k);
        let [ignored_v4, local_v4, included_v4] = &mut self.nets_v4;
        sync(
            ignored_v4,
            IGNORED_NETS_V4_MAP,
            (&have.ignored_nets_v4, &sure.ignored_nets_v4),
            &want.ignored_nets_v4,
            v4,
        )?;
        sync(local_v4, LOCAL_NETS_V4_MAP, (&have.local_nets_v4, &sure.local_nets_v4), &want.local_nets_v4, v4)?;
        sync(
            included_v4,
            INCLUDED_NETS_V4_MAP,
            (&have.included_nets_v4, &sure.included_nets_v4),
            &want.included_nets_v4,
            v4,
        )?;
        let [ignored_v6, local_v6, included_v6] = &mut self.nets_v6;
        sync(
            ignored_v6,
            IGNORED_NETS_V6_MAP,
            (&have.ignored_nets_v6, &sure.ignored_nets_v6),
            &want.ignored_nets_v6,
            v6,
        )?;
        sync(local_v6, LOCAL_NETS_V6_MAP, (&have.local_nets_v6, &sure.local_nets_v6), &want.local_nets_v6, v6)?;
        sync(
            included_v6,
            INCLUDED_NETS_V6_MAP,
            (&have.included_nets_v6, &sure.included_nets_v6),
            &want.included_nets_v6,
            v6,
        )?;
        if dirty || have.config != want.config || want.config == GlobalConfig::default() {
            self.config.set(slot * GENERATIONS + generation, want.config, 0).map_err(map_error(CONFIG_MAP))?;
        }
        Ok(())
    }
}

/// Deletes what may be there (`have.0`) and `want` has not, and inserts what `want` has and is
/// not surely there (`have.1`), each item's key made by `key`.
fn sync<T: Ord, K: aya::Pod>(
    map: &mut LpmTrie<MapData, K, u8>,
    name: &'static str,
    (have, sure): (&BTreeSet<T>, &BTreeSet<T>),
    want: &BTreeSet<T>,
    key: impl Fn(&T) -> Key<K>,
) -> Result<(), Error> {
    for item in have.difference(want) {
        match map.remove(&key(item)) {
            // Already gone: an interrupted apply's record names more than the maps hold.
            Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            result => result.map_err(map_error(name))?,
        }
    }
    for item in want.difference(sure) {
        map.insert(&key(item), PRESENT, 0).map_err(map_error(name))?;
    }
    Ok(())
}

fn key_v4(slot: u32, generation: u32, key: &LpmKeyV4) -> Key<LpmDataV4> {
    Key::new(
        KEY_PREFIX_BITS + key.prefix_len,
        LpmDataV4 { slot_be: slot.to_be(), generation_be: generation.to_be(), addr: key.addr },
    )
}

fn key_v6(slot: u32, generation: u32, key: &LpmKeyV6) -> Key<LpmDataV6> {
    Key::new(
        KEY_PREFIX_BITS + key.prefix_len,
        LpmDataV6 { slot_be: slot.to_be(), generation_be: generation.to_be(), addr: key.addr },
    )
}

/// A task's record of its entries in the host's maps: both generations' contents, encoded
/// (little-endian) into the pages of its `RECORD` array, the first 4 bytes of page 0 the
/// encoding's length.
pub struct Record;

impl Record {
    /// The pages a record of `contents` takes.
    pub fn pages(contents: [&Contents; 2]) -> u32 {
        let len: usize = contents.iter().map(|c| Self::encoded_len(c)).sum();
        (len as u32 + 4).div_ceil(RECORD_PAGE)
    }

    /// The length of one generation's encoding ([`Record::encode`]), counted rather than
    /// encoded: an apply sizes the record before it writes it.
    fn encoded_len(c: &Contents) -> usize {
        let v4 = c.ignored_nets_v4.len() + c.local_nets_v4.len() + c.included_nets_v4.len();
        let v6 = c.ignored_nets_v6.len() + c.local_nets_v6.len() + c.included_nets_v6.len();
        // The dirty flag, the configuration, then nine counted lists.
        1 + size_of::<GlobalConfig>()
            + 9 * 4
            + 2 * (c.ignored_ports.len() + c.app_ports.len())
            + 8 * c.ignored_ids.len()
            + 5 * v4
            + 17 * v6
    }

    fn encode(contents: &[Contents; 2], dirty: [bool; 2]) -> Vec<u8> {
        let mut out = Vec::new();
        let u32s = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        for (c, dirty) in contents.iter().zip(dirty) {
            out.push(u8::from(dirty));
            let config = c.config;
            // SAFETY: GlobalConfig is repr(C) integers with explicit padding: every byte is
            // initialised.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts((&config as *const GlobalConfig).cast::<u8>(), size_of::<GlobalConfig>())
            });
            for ports in [&c.ignored_ports, &c.app_ports] {
                u32s(&mut out, ports.len() as u32);
                ports.iter().for_each(|p| out.extend_from_slice(&p.to_le_bytes()));
            }
            u32s(&mut out, c.ignored_ids.len() as u32);
            c.ignored_ids.iter().for_each(|&(kind, id)| {
                u32s(&mut out, kind);
                u32s(&mut out, id);
            });
            for nets in [&c.ignored_nets_v4, &c.local_nets_v4, &c.included_nets_v4] {
                u32s(&mut out, nets.len() as u32);
                nets.iter().for_each(|k| {
                    out.push(k.prefix_len as u8);
                    out.extend_from_slice(&k.addr);
                });
            }
            for nets in [&c.ignored_nets_v6, &c.local_nets_v6, &c.included_nets_v6] {
                u32s(&mut out, nets.len() as u32);
                nets.iter().for_each(|k| {
                    out.push(k.prefix_len as u8);
                    out.extend_from_slice(&k.addr);
                });
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<([Contents; 2], [bool; 2])> {
        struct Cursor<'a>(&'a [u8]);
        impl<'a> Cursor<'a> {
            fn take(&mut self, n: usize) -> Option<&'a [u8]> {
                let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
                self.0 = rest;
                Some(head)
            }
            fn u32(&mut self) -> Option<u32> {
                self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
        }
        let mut at = Cursor(bytes);
        let mut out = [Contents::empty(), Contents::empty()];
        let mut dirty = [false, false];
        for (c, dirty) in out.iter_mut().zip(&mut dirty) {
            *dirty = at.take(1)?[0] != 0;
            let config = at.take(size_of::<GlobalConfig>())?;
            // SAFETY: every byte pattern is a valid GlobalConfig (integers only); read unaligned.
            c.config = unsafe { std::ptr::read_unaligned(config.as_ptr().cast::<GlobalConfig>()) };
            for ports in [&mut c.ignored_ports, &mut c.app_ports] {
                for _ in 0..at.u32()? {
                    let b = at.take(2)?;
                    ports.insert(u16::from_le_bytes([b[0], b[1]]));
                }
            }
            for _ in 0..at.u32()? {
                let kind = at.u32()?;
                let id = at.u32()?;
                c.ignored_ids.insert((kind, id));
            }
            for nets in [&mut c.ignored_nets_v4, &mut c.local_nets_v4, &mut c.included_nets_v4] {
                for _ in 0..at.u32()? {
                    let b = at.take(5)?;
                    nets.insert(LpmKeyV4 { prefix_len: u32::from(b[0]), addr: [b[1], b[2], b[3], b[4]] });
                }
            }
            for nets in [&mut c.ignored_nets_v6, &mut c.local_nets_v6, &mut c.included_nets_v6] {
                for _ in 0..at.u32()? {
                    let b = at.take(17)?;
                    let mut addr = [0u8; 16];
                    addr.copy_from_slice(&b[1..]);
                    nets.insert(LpmKeyV6 { prefix_len: u32::from(b[0]), addr });
                }
            }
        }
        at.0.is_empty().then_some((out, dirty))
    }

    /// Reads the record from the task's `RECORD` map.
    pub fn read(own: &BTreeMap<&'static str, Map>) -> Result<([Contents; 2], [bool; 2]), Error> {
        let record: Array<&MapData, [u8; RECORD_PAGE as usize]> = typed(own, RECORD_MAP)?;
        let first = record.get(&0, 0).map_err(map_error(RECORD_MAP))?;
        let len = u32::from_le_bytes([first[0], first[1], first[2], first[3]]) as usize;
        if len == 0 {
            // Created, never written: nothing was put in the host's maps yet.
            return Ok(([Contents::empty(), Contents::empty()], [false, false]));
        }
        let mut bytes = Vec::with_capacity(len + 4);
        for page in 0..(len as u32 + 4).div_ceil(RECORD_PAGE) {
            bytes.extend_from_slice(&record.get(&page, 0).map_err(map_error(RECORD_MAP))?);
        }
        bytes.get(4..4 + len).and_then(Self::decode).ok_or(Error::Incomplete {
            dir: std::path::PathBuf::from(RECORD_MAP),
            missing: "a readable record of the task's configuration".to_owned(),
        })
    }

    /// Writes `contents` into the task's `RECORD` map, which must have room for it
    /// ([`Record::pages`]).
    pub fn write(
        own: &mut BTreeMap<&'static str, Map>,
        contents: &[Contents; 2],
        dirty: [bool; 2],
    ) -> Result<(), Error> {
        let encoded = Self::encode(contents, dirty);
        let mut bytes = (encoded.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&encoded);
        let mut record: Array<&mut MapData, [u8; RECORD_PAGE as usize]> = typed_mut(own, RECORD_MAP)?;
        // Later pages first: page 0 (with the length) is the last to change.
        let pages: Vec<&[u8]> = bytes.chunks(RECORD_PAGE as usize).collect();
        for (index, chunk) in pages.iter().enumerate().rev() {
            let mut page = [0u8; RECORD_PAGE as usize];
            page[..chunk.len()].copy_from_slice(chunk);
            record.set(index as u32, page, 0).map_err(map_error(RECORD_MAP))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_what_was_written() {
        let mut a = Contents::empty();
        a.config.proxy_egress_port = 15001;
        a.ignored_ports.extend([22, 5432]);
        a.ignored_ids.insert((ID_UID, 1337));
        a.ignored_nets_v4.insert(lpm_key_v4("10.0.0.0/8".parse().unwrap()));
        a.local_nets_v6.insert(lpm_key_v6("fd00::2/128".parse().unwrap()));
        let both = [a, Contents::empty()];
        assert_eq!(Record::decode(&Record::encode(&both, [false, true])), Some((both.clone(), [false, true])));
        let encoded = Record::encode(&both, [false, false]);
        assert_eq!(Record::decode(&encoded[..encoded.len() - 1]), None, "a truncated record is refused");
    }

    #[test]
    fn a_records_pages_are_counted_as_its_encoding_takes() {
        let mut a = Contents::empty();
        a.ignored_ports.extend([22, 5432]);
        a.app_ports.insert(9080);
        a.ignored_ids.insert((ID_GID, 7));
        a.included_nets_v4.insert(lpm_key_v4("10.0.0.0/8".parse().unwrap()));
        a.ignored_nets_v6.insert(lpm_key_v6("fd00::/8".parse().unwrap()));
        for contents in [&a, &Contents::empty()] {
            assert_eq!(
                Record::encoded_len(contents),
                Record::encode(&[contents.clone(), Contents::empty()], [false, false]).len()
                    - Record::encoded_len(&Contents::empty())
            );
        }
        assert_eq!(Record::pages([&a, &a]), 1);
    }

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
