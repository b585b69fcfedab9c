//! The typed set of protected targets the dataplane enforces: which interfaces (and VLANs)
//! belong to which virtual network, and which (vnet, address, port) triples are protected.
//! The configuration produces it; the dataplane consumes it.

use std::net::IpAddr;

/// A virtual network: where its clients arrive and how the gateway reaches its targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vnet {
    pub name: String,
    /// 1..=65535; carried in the low 16 bits of the fwmark.
    pub id: u16,
    pub ingress: Vec<Ingress>,
    /// Interfaces towards this vnet's targets: guarded against steered packets leaking out.
    pub upstream: Vec<String>,
    /// Routing table of the proxy's connections into this vnet (selected by the fwmark
    /// `0x40000000 | id` they carry); `None`: the main table.
    pub table: Option<u32>,
}

/// An ingress point of a vnet: an interface, optionally one 802.1Q VLAN on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ingress {
    pub interface: String,
    pub vlan: Option<u16>,
}

/// One protected address of a target in a vnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetAddr {
    pub target: String,
    pub vnet: u16,
    pub addr: IpAddr,
    /// TCP ports steered to the proxy (sorted, unique).
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetSet {
    pub vnets: Vec<Vnet>,
    pub addrs: Vec<TargetAddr>,
}

impl TargetSet {
    pub fn vnet_by_id(&self, id: u16) -> Option<&Vnet> {
        self.vnets.iter().find(|v| v.id == id)
    }

    /// The target that owns `addr` in vnet `vnet`, if any.
    pub fn lookup(&self, vnet: u16, addr: IpAddr) -> Option<&TargetAddr> {
        let addr = canonical(addr);
        self.addrs
            .iter()
            .find(|t| t.vnet == vnet && canonical(t.addr) == addr)
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 addresses.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}
