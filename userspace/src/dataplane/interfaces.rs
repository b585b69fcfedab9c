//! The interfaces a target set names, as the kernel has them now: ifindexes (which change
//! when an interface is deleted and re-created) and the VLAN devices on top of ingress
//! interfaces. Read from one rtnetlink link dump; names the kernel does not have are simply
//! absent — whether that is an error is the caller's call (start: yes; churn: wait for it).

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkInfo, LinkMessage};

use super::DataplaneError;
use crate::targets::TargetSet;

/// A VLAN device: its parent's ifindex and its VLAN id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VlanDevice {
    pub ifindex: u32,
    pub parent: u32,
    pub vid: u16,
}

/// What a sync of the ifindex-keyed maps needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interfaces {
    /// Configured names present now → ifindex.
    pub index: BTreeMap<String, u32>,
    /// Every VLAN device whose parent is a configured ingress interface.
    pub vlans: Vec<VlanDevice>,
    /// Configured interfaces that are loopback devices: they cannot strip a VLAN tag before
    /// XDP (frames come back as sent), so XDP may classify their untagged-looking frames.
    pub loopback: BTreeSet<u32>,
}

impl Interfaces {
    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }
}

/// Every interface name `set` uses (ingress and upstream).
pub fn names(set: &TargetSet) -> BTreeSet<String> {
    set.vnets
        .iter()
        .flat_map(|v| {
            v.ingress
                .iter()
                .map(|i| i.interface.clone())
                .chain(v.upstream.iter().cloned())
        })
        .collect()
}

/// A link's name, parent and VLAN id, from an rtnetlink message.
pub struct LinkFacts {
    pub ifindex: u32,
    pub loopback: bool,
    pub name: Option<String>,
    pub parent: Option<u32>,
    pub vid: Option<u16>,
}

pub fn facts(m: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        ifindex: m.header.index,
        loopback: m
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Loopback),
        name: None,
        parent: None,
        vid: None,
    };
    let mut vlan = false;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => f.name = Some(n.clone()),
            LinkAttribute::Link(p) => f.parent = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vlan) => vlan = true,
                        LinkInfo::Data(InfoData::Vlan(d)) => {
                            f.vid = d.iter().find_map(|x| match x {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !vlan {
        f.vid = None;
    }
    f
}

/// Resolves `set`'s interfaces from the links `links` describes (a dump).
pub fn resolve_from(set: &TargetSet, links: &[LinkFacts]) -> Interfaces {
    let wanted = names(set);
    let mut out = Interfaces::default();
    for l in links {
        if let Some(n) = l.name.as_ref().filter(|n| wanted.contains(*n)) {
            out.index.insert(n.clone(), l.ifindex);
            if l.loopback {
                out.loopback.insert(l.ifindex);
            }
        }
    }
    let ingress: BTreeSet<u32> = set
        .vnets
        .iter()
        .flat_map(|v| v.ingress.iter())
        .filter_map(|i| out.get(&i.interface))
        .collect();
    for l in links {
        if let (Some(parent), Some(vid)) = (l.parent, l.vid) {
            if ingress.contains(&parent) {
                out.vlans.push(VlanDevice {
                    ifindex: l.ifindex,
                    parent,
                    vid,
                });
            }
        }
    }
    out.vlans.sort();
    out
}

/// Resolves `set`'s interface names with `if_nametoindex`, without VLAN devices: for
/// programs loaded but attached nowhere (tests, benchmarks).
pub fn by_name(set: &TargetSet) -> Interfaces {
    let index: BTreeMap<String, u32> = names(set)
        .into_iter()
        .filter_map(|n| super::preflight::ifindex(&n).map(|i| (n, i)))
        .collect();
    // IFF_LOOPBACK, as /sys shows the flags.
    let loopback = index
        .iter()
        .filter(|(n, _)| {
            std::fs::read_to_string(format!("/sys/class/net/{n}/flags"))
                .ok()
                .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
                .is_some_and(|f| f & 0x8 != 0)
        })
        .map(|(_, i)| *i)
        .collect();
    Interfaces {
        index,
        vlans: Vec::new(),
        loopback,
    }
}

/// Resolves `set`'s interfaces as the kernel has them now.
pub async fn resolve(set: &TargetSet) -> Result<Interfaces, DataplaneError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| DataplaneError::io("open a netlink socket", e))?;
    let task = tokio::spawn(conn);
    let links: Result<Vec<LinkMessage>, _> = handle.link().get().execute().try_collect().await;
    task.abort();
    let links = links.map_err(|source| DataplaneError::Netlink {
        what: "list interfaces".into(),
        source,
    })?;
    let facts: Vec<LinkFacts> = links.iter().map(facts).collect();
    Ok(resolve_from(set, &facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{Ingress, Vnet};

    fn set() -> TargetSet {
        TargetSet {
            vnets: vec![Vnet {
                name: "lab".into(),
                id: 2,
                ingress: vec![Ingress {
                    interface: "trunk".into(),
                    vlan: Some(200),
                }],
                upstream: vec!["up".into()],
                table: Some(102),
            }],
            addrs: vec![],
        }
    }

    fn link(ifindex: u32, name: &str, parent: Option<u32>, vid: Option<u16>) -> LinkFacts {
        LinkFacts {
            ifindex,
            loopback: false,
            name: Some(name.into()),
            parent,
            vid,
        }
    }

    /// The kernel here has no 8021q module, so VLAN devices cannot be created in tests: the
    /// resolution is tested on the facts a dump would give.
    #[test]
    fn vlan_devices_on_ingress_interfaces_are_found() {
        let links = [
            link(7, "trunk", None, None),
            link(9, "up", None, None),
            link(11, "trunk.200", Some(7), Some(200)),
            link(12, "other.5", Some(3), Some(5)),
            link(13, "veth-x", Some(7), None),
        ];
        let i = resolve_from(&set(), &links);
        assert_eq!(i.get("trunk"), Some(7));
        assert_eq!(i.get("up"), Some(9));
        assert_eq!(
            i.vlans,
            vec![VlanDevice {
                ifindex: 11,
                parent: 7,
                vid: 200
            }]
        );
        // Absent interfaces are absent, not errors.
        let i = resolve_from(&set(), &links[1..2]);
        assert_eq!(i.get("trunk"), None);
        assert!(i.vlans.is_empty());
    }
}
