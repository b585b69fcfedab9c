//! Typed access to the pinned maps and the ordered update that keeps them fail-closed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::AsRawFd,
    path::Path,
};

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, SockMap},
    util::nr_cpus,
    Ebpf,
};
use portcullis_common::{
    map, v4_mapped, DestKey, IngressKey, PortKey, TargetKey, MAX_TARGETS, TARGET_VNET_BITS, VERDICTS,
};

use super::{preflight::ifindex, state::StateEntry, DataplaneError};
use crate::targets::{canonical, TargetSet};

pub struct Maps {
    ingress: HashMap<MapData, IngressKey, u32>,
    ingress_if: HashMap<MapData, u32, u32>,
    targets: LpmTrie<MapData, TargetKey, u32>,
    ports: HashMap<MapData, PortKey, u32>,
    dests: HashMap<MapData, DestKey, u32>,
    counters: PerCpuArray<MapData, u64>,
    sockets: SockMap<MapData>,
    /// Address ids of the last sync, for reading counters.
    ids: Vec<u32>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name)
        .ok_or_else(|| DataplaneError::Capacity(format!("the BPF object has no map {name}")))
}

/// Per-CPU counters summed over CPUs, indexed like the BPF array.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// `(target id, verdict) → packets`; target id 0 holds the packets of no target.
    pub by_target: BTreeMap<(u32, u32), u64>,
}

impl Counters {
    pub fn get(&self, target: u32, verdict: u32) -> u64 {
        self.by_target.get(&(target, verdict)).copied().unwrap_or(0)
    }
    pub fn total(&self, verdict: u32) -> u64 {
        self.by_target
            .iter()
            .filter(|((_, v), _)| *v == verdict)
            .map(|(_, n)| n)
            .sum()
    }
}

fn ip16(addr: IpAddr) -> [u8; 16] {
    match canonical(addr) {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn lpm_key(vnet: u16, addr: IpAddr) -> Key<TargetKey> {
    Key::new(
        TARGET_VNET_BITS + 128,
        TargetKey {
            vnet_be: (vnet as u32).to_be_bytes(),
            addr: ip16(addr),
        },
    )
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            ingress: HashMap::try_from(take(ebpf, map::INGRESS)?)
                .map_err(DataplaneError::map(map::INGRESS))?,
            ingress_if: HashMap::try_from(take(ebpf, map::INGRESS_IFINDEX)?)
                .map_err(DataplaneError::map(map::INGRESS_IFINDEX))?,
            targets: LpmTrie::try_from(take(ebpf, map::TARGETS)?)
                .map_err(DataplaneError::map(map::TARGETS))?,
            ports: HashMap::try_from(take(ebpf, map::PORTS)?).map_err(DataplaneError::map(map::PORTS))?,
            dests: HashMap::try_from(take(ebpf, map::DESTS)?).map_err(DataplaneError::map(map::DESTS))?,
            counters: PerCpuArray::try_from(take(ebpf, map::COUNTERS)?)
                .map_err(DataplaneError::map(map::COUNTERS))?,
            sockets: SockMap::try_from(take(ebpf, map::SOCKETS)?)
                .map_err(DataplaneError::map(map::SOCKETS))?,
            ids: Vec::new(),
        })
    }

    pub fn set_socket(&mut self, slot: u32, fd: &impl AsRawFd) -> Result<(), DataplaneError> {
        self.sockets
            .set(slot, fd, 0)
            .map_err(DataplaneError::map(map::SOCKETS))
    }

    /// Makes the maps describe `set`. Order matters: everything that protects is added
    /// before anything that unprotects is removed, and a target address's ports are in place
    /// before the address itself becomes visible, so no packet of a protected flow is ever
    /// classified as unprotected while the update runs. Address ids are kept across updates.
    pub fn sync(&mut self, set: &TargetSet) -> Result<Vec<StateEntry>, DataplaneError> {
        // Desired ingress entries.
        let mut ingress = BTreeMap::new();
        let mut ingress_if = BTreeSet::new();
        for v in &set.vnets {
            for i in &v.ingress {
                let idx = ifindex(&i.interface).ok_or_else(|| DataplaneError::NoInterface {
                    interface: i.interface.clone(),
                    vnet: v.name.clone(),
                })?;
                ingress.insert((idx, i.vlan.unwrap_or(0)), v.id as u32);
                ingress_if.insert(idx);
            }
        }

        // Current address ids, kept for addresses that stay.
        let mut current: BTreeMap<([u8; 4], [u8; 16]), u32> = BTreeMap::new();
        for item in self.targets.iter() {
            let (k, id) = item.map_err(DataplaneError::map(map::TARGETS))?;
            let data = k.data();
            current.insert((data.vnet_be, data.addr), id);
        }
        let mut used: BTreeSet<u32> = current.values().copied().collect();
        let mut next_free = 1u32;
        let mut entries = Vec::new();
        let mut fresh = Vec::new();
        for t in &set.addrs {
            let key = ((t.vnet as u32).to_be_bytes(), ip16(t.addr));
            let id = match current.get(&key) {
                Some(id) => *id,
                None => {
                    while used.contains(&next_free) {
                        next_free += 1;
                    }
                    if next_free >= MAX_TARGETS {
                        return Err(DataplaneError::Capacity(format!(
                            "more than {} target addresses",
                            MAX_TARGETS - 1
                        )));
                    }
                    used.insert(next_free);
                    fresh.push(next_free);
                    next_free
                }
            };
            entries.push(StateEntry {
                id,
                target: t.target.clone(),
                vnet: t.vnet,
                vnet_name: set.vnet_by_id(t.vnet).map(|v| v.name.clone()).unwrap_or_default(),
                addr: canonical(t.addr),
                ports: t.ports.clone(),
            });
        }
        let ports: BTreeSet<(u32, u16)> = entries
            .iter()
            .flat_map(|e| e.ports.iter().map(move |p| (e.id, *p)))
            .collect();
        let mut dests: BTreeMap<([u8; 16], u16), u32> = BTreeMap::new();
        for e in &entries {
            for p in &e.ports {
                *dests.entry((ip16(e.addr), *p)).or_default() += 1;
            }
        }

        // 1. Additions: ingress, ports, dests, then the addresses themselves.
        for ((ifindex, vlan), vnet) in &ingress {
            let k = IngressKey {
                ifindex: *ifindex,
                vlan: *vlan,
                _pad: 0,
            };
            self.ingress
                .insert(k, vnet, 0)
                .map_err(DataplaneError::map(map::INGRESS))?;
        }
        for idx in &ingress_if {
            self.ingress_if
                .insert(idx, 1, 0)
                .map_err(DataplaneError::map(map::INGRESS_IFINDEX))?;
        }
        for (id, port) in &ports {
            let k = PortKey {
                target: *id,
                port: *port,
                _pad: 0,
            };
            self.ports
                .insert(k, 1, 0)
                .map_err(DataplaneError::map(map::PORTS))?;
        }
        for ((addr, port), n) in &dests {
            let k = DestKey {
                addr: *addr,
                port: *port,
                _pad: 0,
            };
            self.dests
                .insert(k, n, 0)
                .map_err(DataplaneError::map(map::DESTS))?;
        }
        let cpus = nr_cpus().map_err(|(_, e)| DataplaneError::io("read possible CPUs", e))?;
        for id in &fresh {
            for v in 0..VERDICTS {
                let zero = PerCpuValues::try_from(vec![0u64; cpus])
                    .map_err(|e| DataplaneError::io("per-CPU values", e))?;
                self.counters
                    .set(id * VERDICTS + v, zero, 0)
                    .map_err(DataplaneError::map(map::COUNTERS))?;
            }
        }
        for (t, e) in set.addrs.iter().zip(&entries) {
            self.targets
                .insert(&lpm_key(t.vnet, t.addr), e.id, 0)
                .map_err(DataplaneError::map(map::TARGETS))?;
        }

        // 2. Removals: addresses first, then what hung off them.
        let keep: BTreeSet<_> = set
            .addrs
            .iter()
            .map(|t| ((t.vnet as u32).to_be_bytes(), ip16(t.addr)))
            .collect();
        for ((vnet_be, addr), _) in current.iter().filter(|(k, _)| !keep.contains(k)) {
            let k = Key::new(
                TARGET_VNET_BITS + 128,
                TargetKey {
                    vnet_be: *vnet_be,
                    addr: *addr,
                },
            );
            self.targets
                .remove(&k)
                .map_err(DataplaneError::map(map::TARGETS))?;
        }
        let stale: Vec<PortKey> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ports.contains(&(k.target, k.port)))
            .collect();
        for k in stale {
            self.ports.remove(&k).map_err(DataplaneError::map(map::PORTS))?;
        }
        let stale: Vec<DestKey> = self
            .dests
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !dests.contains_key(&(k.addr, k.port)))
            .collect();
        for k in stale {
            self.dests.remove(&k).map_err(DataplaneError::map(map::DESTS))?;
        }
        let stale: Vec<IngressKey> = self
            .ingress
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ingress.contains_key(&(k.ifindex, k.vlan)))
            .collect();
        for k in stale {
            self.ingress
                .remove(&k)
                .map_err(DataplaneError::map(map::INGRESS))?;
        }
        let stale: Vec<u32> = self
            .ingress_if
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ingress_if.contains(k))
            .collect();
        for k in stale {
            self.ingress_if
                .remove(&k)
                .map_err(DataplaneError::map(map::INGRESS_IFINDEX))?;
        }
        self.ids = entries.iter().map(|e| e.id).collect();
        Ok(entries)
    }

    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        read_counters(&self.counters, self.ids.iter().copied())
    }
}

/// Reads the counters of "no target" (id 0) and of the given address ids.
fn read_counters(
    arr: &PerCpuArray<MapData, u64>,
    ids: impl IntoIterator<Item = u32>,
) -> Result<Counters, DataplaneError> {
    let mut c = Counters::default();
    for id in std::iter::once(0).chain(ids) {
        for v in 0..VERDICTS {
            let vals = arr
                .get(&(id * VERDICTS + v), 0)
                .map_err(DataplaneError::map(map::COUNTERS))?;
            let n: u64 = vals.iter().sum();
            if n != 0 {
                c.by_target.insert((id, v), n);
            }
        }
    }
    Ok(c)
}

pub fn counters_from_pin(
    maps_dir: &Path,
    ids: impl IntoIterator<Item = u32>,
) -> Result<Counters, DataplaneError> {
    let path = maps_dir.join(map::COUNTERS);
    let data = MapData::from_pin(&path).map_err(DataplaneError::map(map::COUNTERS))?;
    let arr = PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(DataplaneError::map(map::COUNTERS))?;
    read_counters(&arr, ids)
}
