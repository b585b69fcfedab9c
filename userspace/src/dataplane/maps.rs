//! Typed access to the pinned maps and the ordered update that keeps them fail-closed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    os::fd::AsRawFd,
    path::Path,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, SockMap},
    util::nr_cpus,
    Ebpf,
};
use portcullis_common::{
    addr_hash, addr_words, filter_bit, home_slot, map, v4_mapped, DestKey, IngressKey, PortKey, Slot,
    TargetKey, TargetValue, CONTROL_ACTIVE, CONTROL_OVERFLOW, FILTER_WORDS, INGRESS_DEFER_UNTAGGED,
    INGRESS_HAS_VLANS, INGRESS_VLAN_DEVICE, INLINE_PORTS, MAX_IFINDEX, MAX_TARGETS, PROBES, TABLE_MASK,
    TABLE_SLOTS, VERDICTS,
};

use super::{interfaces::Interfaces, state::StateEntry, DataplaneError};
use crate::targets::{canonical, TargetSet};

pub struct Maps {
    ingress_if: Array<MapData, u32>,
    upstream_if: Array<MapData, u32>,
    ingress_vlan: HashMap<MapData, IngressKey, u32>,
    tables: [Array<MapData, Slot>; 2],
    control: Array<MapData, u32>,
    overflow: HashMap<MapData, TargetKey, TargetValue>,
    /// What each table holds, kept in step with the kernel; `active` is the one readers use.
    mirror: [Vec<Slot>; 2],
    active: u32,
    ports: HashMap<MapData, PortKey, u32>,
    dests: HashMap<MapData, DestKey, u32>,
    counters: PerCpuArray<MapData, u64>,
    filter: Array<MapData, u64>,
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

fn target_key(vnet: u16, addr: IpAddr) -> TargetKey {
    TargetKey {
        vnet: vnet as u32,
        addr: ip16(addr),
    }
}

const EMPTY: Slot = Slot {
    addr: [0; 2],
    vnet: 0,
    _pad: 0,
    value: TargetValue {
        id: 0,
        nports: 0,
        ports: [0; INLINE_PORTS],
        _pad: 0,
    },
};

/// Lays targets out in a fresh table: linear probing from each key's home slot, at most
/// `PROBES` slots; what does not fit goes to the overflow map.
fn layout(wanted: &BTreeMap<TargetKey, TargetValue>) -> (Vec<Slot>, BTreeMap<TargetKey, TargetValue>) {
    let mut table = vec![EMPTY; TABLE_SLOTS as usize];
    let mut overflow = BTreeMap::new();
    for (k, v) in wanted {
        let words = addr_words(&k.addr);
        let home = home_slot(addr_hash(k.vnet, &words));
        let free = (0..PROBES)
            .map(|i| ((home + i) & TABLE_MASK) as usize)
            .find(|i| table[*i].vnet == 0);
        match free {
            Some(i) => {
                table[i] = Slot {
                    addr: words,
                    vnet: k.vnet,
                    _pad: 0,
                    value: *v,
                }
            }
            None => {
                overflow.insert(*k, *v);
            }
        }
    }
    (table, overflow)
}

fn read_table(t: &Array<MapData, Slot>) -> Result<Vec<Slot>, DataplaneError> {
    (0..TABLE_SLOTS)
        .map(|i| t.get(&i, 0).map_err(DataplaneError::map(map::TABLE_A)))
        .collect()
}

fn target_value(id: u32, ports: &[u16]) -> TargetValue {
    let mut inline = [0u16; INLINE_PORTS];
    for (slot, p) in inline.iter_mut().zip(ports) {
        *slot = *p;
    }
    TargetValue {
        id,
        nports: ports.len().min(u16::MAX as usize) as u16,
        ports: inline,
        _pad: 0,
    }
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut me = Self {
            ingress_if: Array::try_from(take(ebpf, map::INGRESS_IF)?)
                .map_err(DataplaneError::map(map::INGRESS_IF))?,
            upstream_if: Array::try_from(take(ebpf, map::UPSTREAM_IF)?)
                .map_err(DataplaneError::map(map::UPSTREAM_IF))?,
            ingress_vlan: HashMap::try_from(take(ebpf, map::INGRESS_VLAN)?)
                .map_err(DataplaneError::map(map::INGRESS_VLAN))?,
            tables: [
                Array::try_from(take(ebpf, map::TABLE_A)?).map_err(DataplaneError::map(map::TABLE_A))?,
                Array::try_from(take(ebpf, map::TABLE_B)?).map_err(DataplaneError::map(map::TABLE_B))?,
            ],
            control: Array::try_from(take(ebpf, map::CONTROL)?).map_err(DataplaneError::map(map::CONTROL))?,
            overflow: HashMap::try_from(take(ebpf, map::OVERFLOW)?)
                .map_err(DataplaneError::map(map::OVERFLOW))?,
            mirror: [Vec::new(), Vec::new()],
            active: 0,
            ports: HashMap::try_from(take(ebpf, map::PORTS)?).map_err(DataplaneError::map(map::PORTS))?,
            dests: HashMap::try_from(take(ebpf, map::DESTS)?).map_err(DataplaneError::map(map::DESTS))?,
            counters: PerCpuArray::try_from(take(ebpf, map::COUNTERS)?)
                .map_err(DataplaneError::map(map::COUNTERS))?,
            filter: Array::try_from(take(ebpf, map::FILTER)?).map_err(DataplaneError::map(map::FILTER))?,
            sockets: SockMap::try_from(take(ebpf, map::SOCKETS)?)
                .map_err(DataplaneError::map(map::SOCKETS))?,
            ids: Vec::new(),
        };
        // Pinned maps of a previous daemon: learn what they hold.
        me.active = me
            .control
            .get(&CONTROL_ACTIVE, 0)
            .map_err(DataplaneError::map(map::CONTROL))?
            & 1;
        me.mirror = [read_table(&me.tables[0])?, read_table(&me.tables[1])?];
        Ok(me)
    }

    pub fn set_socket(&mut self, slot: u32, fd: &impl AsRawFd) -> Result<(), DataplaneError> {
        self.sockets
            .set(slot, fd, 0)
            .map_err(DataplaneError::map(map::SOCKETS))
    }

    fn current_targets(&self) -> Result<BTreeMap<TargetKey, u32>, DataplaneError> {
        let mut current = BTreeMap::new();
        for slot in self.mirror[self.active as usize].iter().filter(|s| s.vnet != 0) {
            let [a, b] = slot.addr;
            let mut addr = [0u8; 16];
            addr[..8].copy_from_slice(&a.to_ne_bytes());
            addr[8..].copy_from_slice(&b.to_ne_bytes());
            current.insert(
                TargetKey {
                    vnet: slot.vnet,
                    addr,
                },
                slot.value.id,
            );
        }
        for item in self.overflow.iter() {
            let (k, v) = item.map_err(DataplaneError::map(map::OVERFLOW))?;
            current.insert(k, v.id);
        }
        Ok(current)
    }

    /// Makes the maps describe `set`. Order matters: everything that protects is added
    /// before anything that unprotects is removed, and a target's overflow ports are in
    /// place before the target itself becomes visible, so no packet of a protected flow is
    /// classified as unprotected while the update runs. Each target (with its inline ports)
    /// changes in one map update. Address ids are kept across updates.
    pub fn sync(&mut self, set: &TargetSet, ifs: &Interfaces) -> Result<Vec<StateEntry>, DataplaneError> {
        self.sync_interfaces(set, ifs)?;

        // Address ids: kept for addresses that stay, the lowest free one for new ones.
        let current = self.current_targets()?;
        let mut used: BTreeSet<u32> = current.values().copied().collect();
        let mut next_free = 1u32;
        let mut entries = Vec::new();
        let mut fresh = Vec::new();
        let mut wanted: BTreeMap<TargetKey, TargetValue> = BTreeMap::new();
        for t in &set.addrs {
            let key = target_key(t.vnet, t.addr);
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
            wanted.insert(key, target_value(id, &t.ports));
            entries.push(StateEntry {
                id,
                target: t.target.clone(),
                vnet: t.vnet,
                vnet_name: set.vnet_by_id(t.vnet).map(|v| v.name.clone()).unwrap_or_default(),
                addr: canonical(t.addr),
                ports: t.ports.clone(),
            });
        }
        let overflow: BTreeSet<(u32, u16)> = entries
            .iter()
            .flat_map(|e| e.ports.iter().skip(INLINE_PORTS).map(move |p| (e.id, *p)))
            .collect();
        let mut dests: BTreeMap<([u8; 16], u16), u32> = BTreeMap::new();
        for e in &entries {
            for p in &e.ports {
                *dests.entry((ip16(e.addr), *p)).or_default() += 1;
            }
        }

        let mut filter: BTreeMap<u32, u64> = BTreeMap::new();
        for k in wanted.keys() {
            let bit = filter_bit(addr_hash(k.vnet, &addr_words(&k.addr)));
            *filter.entry(bit / 64).or_default() |= 1u64 << (bit % 64);
        }

        // 1. Additions: overflow ports, sk_lookup destinations, prefilter bits (only ever
        // added here, so a reader sees old or new bits, both covering every target that
        // stays), then the targets.
        for (id, port) in &overflow {
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
        for (word, bits) in &filter {
            let old = self
                .filter
                .get(word, 0)
                .map_err(DataplaneError::map(map::FILTER))?;
            if old | bits != old {
                self.filter
                    .set(*word, old | bits, 0)
                    .map_err(DataplaneError::map(map::FILTER))?;
            }
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
        let (table, overflow_entries) = layout(&wanted);
        let old_overflow: Vec<TargetKey> = self.overflow.keys().filter_map(Result::ok).collect();
        for (k, v) in &overflow_entries {
            self.overflow
                .insert(k, v, 0)
                .map_err(DataplaneError::map(map::OVERFLOW))?;
        }
        if !overflow_entries.is_empty() {
            self.control
                .set(CONTROL_OVERFLOW, 1, 0)
                .map_err(DataplaneError::map(map::CONTROL))?;
        }
        // The inactive table has no readers: rewrite what differs, then flip.
        let next = 1 - self.active;
        let t = &mut self.tables[next as usize];
        let mirror = &mut self.mirror[next as usize];
        for (i, slot) in table.iter().enumerate() {
            if mirror[i] != *slot {
                t.set(i as u32, slot, 0)
                    .map_err(DataplaneError::map(map::TABLE_A))?;
                mirror[i] = *slot;
            }
        }
        self.control
            .set(CONTROL_ACTIVE, next, 0)
            .map_err(DataplaneError::map(map::CONTROL))?;
        self.active = next;
        // Programs already running on the old table finish within microseconds (they run
        // with preemption disabled); give them ample time before removing what they may use.
        std::thread::sleep(std::time::Duration::from_millis(10));

        // 2. Removals: what the previous table needed and the new one does not.
        for k in old_overflow.iter().filter(|k| !overflow_entries.contains_key(k)) {
            self.overflow
                .remove(k)
                .map_err(DataplaneError::map(map::OVERFLOW))?;
        }
        if overflow_entries.is_empty() {
            self.control
                .set(CONTROL_OVERFLOW, 0, 0)
                .map_err(DataplaneError::map(map::CONTROL))?;
        }
        let stale: Vec<PortKey> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !overflow.contains(&(k.target, k.port)))
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
        // Prefilter bits of removed targets: words shrink to what the remaining targets need.
        for word in 0..FILTER_WORDS {
            let want = filter.get(&word).copied().unwrap_or(0);
            let old = self
                .filter
                .get(&word, 0)
                .map_err(DataplaneError::map(map::FILTER))?;
            if old != want {
                self.filter
                    .set(word, want, 0)
                    .map_err(DataplaneError::map(map::FILTER))?;
            }
        }
        self.ids = entries.iter().map(|e| e.id).collect();
        Ok(entries)
    }

    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        read_counters(&self.counters, self.ids.iter().copied())
    }

    pub fn ingress_entry(&self, ifindex: u32) -> Result<u32, DataplaneError> {
        self.ingress_if
            .get(&ifindex, 0)
            .map_err(DataplaneError::map(map::INGRESS_IF))
    }

    /// Makes the ifindex-keyed maps describe `set` on the interfaces as they are now
    /// (`ifs`): ingress interfaces and their VLANs, VLAN devices on them (for sk_lookup),
    /// upstream interfaces and their vnet (for the egress guard). Interfaces that do not
    /// exist are skipped: they are picked up when they appear (the link monitor), and the
    /// forward guard covers them meanwhile. Entries of vanished or re-created interfaces
    /// (old ifindexes) are removed.
    pub fn sync_interfaces(&mut self, set: &TargetSet, ifs: &Interfaces) -> Result<(), DataplaneError> {
        let mut ingress_if: BTreeMap<u32, u32> = BTreeMap::new();
        let mut ingress_vlan = BTreeMap::new();
        let mut upstream_if: BTreeMap<u32, u32> = BTreeMap::new();
        let usable = |name: &str| -> Result<Option<u32>, DataplaneError> {
            match ifs.get(name) {
                Some(idx) if idx >= MAX_IFINDEX => Err(DataplaneError::Capacity(format!(
                    "interface {name:?} has ifindex {idx}; the dataplane supports ifindexes below {MAX_IFINDEX}"
                ))),
                Some(idx) => Ok(Some(idx)),
                None => {
                    tracing::warn!(interface = name, "interface absent; it is protected when it appears");
                    Ok(None)
                }
            }
        };
        for v in &set.vnets {
            for i in &v.ingress {
                let Some(idx) = usable(&i.interface)? else {
                    continue;
                };
                let e = ingress_if.entry(idx).or_default();
                match i.vlan {
                    None => *e |= v.id as u32,
                    Some(vlan) => {
                        *e |= INGRESS_HAS_VLANS;
                        if !ifs.loopback.contains(&idx) {
                            *e |= INGRESS_DEFER_UNTAGGED;
                        }
                        ingress_vlan.insert((idx, vlan), v.id as u32);
                    }
                }
            }
            for u in &v.upstream {
                if let Some(idx) = usable(u)? {
                    upstream_if.insert(idx, v.id as u32);
                }
            }
        }
        for d in &ifs.vlans {
            if ingress_vlan.contains_key(&(d.parent, d.vid)) && d.ifindex < MAX_IFINDEX {
                *ingress_if.entry(d.ifindex).or_default() |= INGRESS_VLAN_DEVICE;
            }
        }
        for ((ifindex, vlan), vnet) in &ingress_vlan {
            let k = IngressKey {
                ifindex: *ifindex,
                vlan: *vlan,
                _pad: 0,
            };
            self.ingress_vlan
                .insert(k, vnet, 0)
                .map_err(DataplaneError::map(map::INGRESS_VLAN))?;
        }
        for (idx, v) in &ingress_if {
            self.ingress_if
                .set(*idx, v, 0)
                .map_err(DataplaneError::map(map::INGRESS_IF))?;
        }
        for (idx, v) in &upstream_if {
            self.upstream_if
                .set(*idx, v, 0)
                .map_err(DataplaneError::map(map::UPSTREAM_IF))?;
        }
        let stale: Vec<IngressKey> = self
            .ingress_vlan
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ingress_vlan.contains_key(&(k.ifindex, k.vlan)))
            .collect();
        for k in stale {
            self.ingress_vlan
                .remove(&k)
                .map_err(DataplaneError::map(map::INGRESS_VLAN))?;
        }
        for (arr, want, name) in [
            (&mut self.ingress_if, &ingress_if, map::INGRESS_IF),
            (&mut self.upstream_if, &upstream_if, map::UPSTREAM_IF),
        ] {
            let stale: Vec<u32> = (0..MAX_IFINDEX)
                .filter(|i| !want.contains_key(i))
                .filter(|i| arr.get(i, 0).map(|v| v != 0).unwrap_or(false))
                .collect();
            for i in stale {
                arr.set(i, 0, 0).map_err(DataplaneError::map(name))?;
            }
        }
        Ok(())
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
