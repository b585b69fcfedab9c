//! Types shared by the eBPF programs and userspace: map names, keys, values and the
//! constants both sides must agree on. Every type is `#[repr(C)]` with explicit padding so
//! that the byte layout is the same on both sides; sizes are checked at compile time.
#![cfg_attr(not(test), no_std)]

pub mod parse;

/// Names of the programs in the BPF object.
pub mod program {
    pub const XDP_CLASSIFY: &str = "pc_xdp_classify";
    pub const XDP_NOOP: &str = "pc_xdp_noop";
    pub const TC_MARK: &str = "pc_tc_mark";
    pub const TC_GUARD: &str = "pc_tc_guard";
    pub const SK_LOOKUP: &str = "pc_sk_lookup";
}

/// Names of the maps in the BPF object (they are also the names of their bpffs pins).
pub mod map {
    pub const INGRESS: &str = "PC_INGRESS";
    pub const INGRESS_IFINDEX: &str = "PC_INGRESS_IF";
    pub const TARGETS: &str = "PC_TARGETS";
    pub const PORTS: &str = "PC_PORTS";
    pub const DESTS: &str = "PC_DESTS";
    pub const COUNTERS: &str = "PC_COUNTERS";
    pub const SOCKETS: &str = "PC_SOCKETS";
}

/// fwmark layout. A steered packet carries `MARK_STEER | vnet`; the proxy's own upstream
/// connections carry `MARK_UPSTREAM | vnet` so that they are routed inside their vnet and are
/// never mistaken for steered traffic.
pub const MARK_STEER: u32 = 0x8000_0000;
pub const MARK_UPSTREAM: u32 = 0x4000_0000;
pub const MARK_VNET_MASK: u32 = 0x0000_ffff;

/// Magic word the XDP classifier writes in front of the packet (XDP metadata) to hand its
/// verdict to the TC program without parsing the packet twice.
pub const META_MAGIC: u32 = 0x5043_4d31; // "PCM1"

/// Capacity of the maps.
pub const MAX_INGRESS: u32 = 4096;
pub const MAX_TARGETS: u32 = 65_536;
pub const MAX_PORTS: u32 = 262_144;

/// SOCKMAP slots of the proxy's listening sockets.
pub const SOCKET_V4: u32 = 0;
pub const SOCKET_V6: u32 = 1;
pub const SOCKET_SLOTS: u32 = 2;

/// Per-CPU counters are an array indexed `target_id * VERDICTS + verdict`. Target id 0 is
/// reserved for packets that matched no target.
pub const VERDICTS: u32 = 8;
pub mod verdict {
    /// Target, protected port: marked and steered to the proxy.
    pub const STEERED: u32 = 0;
    /// Target address, port not protected: forwarded untouched.
    pub const OTHER_PORT: u32 = 1;
    /// Target address, packet unparseable or a fragment: dropped (fail closed).
    pub const DROPPED: u32 = 2;
    /// Ingress interface, destination not a target.
    pub const NO_TARGET: u32 = 3;
    /// Not an ingress interface (or VLAN) of any vnet.
    pub const NOT_INGRESS: u32 = 4;
    /// Not TCP, or not IP.
    pub const NOT_TCP: u32 = 5;
    /// Malformed before the destination was known: left to the kernel.
    pub const MALFORMED: u32 = 6;
    pub const NAMES: [&str; 7] = [
        "steered",
        "other_port",
        "dropped",
        "no_target",
        "not_ingress",
        "not_tcp",
        "malformed",
    ];
}

/// Key of `INGRESS`: the interface a packet arrived on and its 802.1Q VLAN id (0 when
/// untagged).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IngressKey {
    pub ifindex: u32,
    pub vlan: u16,
    pub _pad: u16,
}

/// Data of an `TARGETS` LPM key: the vnet id (big endian, so that it is the most significant
/// part of the prefix) followed by the IPv6 address (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub vnet_be: [u8; 4],
    pub addr: [u8; 16],
}

/// Prefix length of the vnet part of a `TargetKey`.
pub const TARGET_VNET_BITS: u32 = 32;

/// Key of `PORTS`: (target id, TCP port in host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub target: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of `DESTS` (used by sk_lookup, which has no fwmark): a protected (address, port)
/// in any vnet. The value counts the vnets that protect it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

/// XDP metadata handed from the classifier to the TC program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpMeta {
    pub magic: u32,
    pub mark: u32,
}

const _: () = assert!(core::mem::size_of::<IngressKey>() == 8);
const _: () = assert!(core::mem::size_of::<TargetKey>() == 20);
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);
const _: () = assert!(core::mem::size_of::<DestKey>() == 20);
const _: () = assert!(core::mem::size_of::<XdpMeta>() == 8);

/// IPv4 address as an IPv4-mapped IPv6 address.
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for IngressKey {}
    unsafe impl aya::Pod for TargetKey {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for DestKey {}
}
