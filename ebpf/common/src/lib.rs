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
    pub const INGRESS_IF: &str = "PC_INGRESS_IF";
    pub const INGRESS_VLAN: &str = "PC_INGRESS_VLAN";
    pub const TABLE_A: &str = "PC_TABLE_A";
    pub const TABLE_B: &str = "PC_TABLE_B";
    pub const CONTROL: &str = "PC_CONTROL";
    pub const OVERFLOW: &str = "PC_OVERFLOW";
    pub const PORTS: &str = "PC_PORTS";
    pub const DESTS: &str = "PC_DESTS";
    pub const COUNTERS: &str = "PC_COUNTERS";
    pub const FILTER: &str = "PC_FILTER";
    pub const SOCKETS: &str = "PC_SOCKETS";
    pub const UPSTREAM_IF: &str = "PC_UPSTREAM_IF";
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

/// Capacity of the maps. Interfaces are indexed directly by ifindex (an array lookup is
/// inlined by the verifier, a hash lookup is not), so ifindexes must stay below this.
pub const MAX_IFINDEX: u32 = 65_536;
pub const MAX_INGRESS: u32 = 4096;
pub const MAX_TARGETS: u32 = 65_536;
pub const MAX_PORTS: u32 = 262_144;

/// Prefilter: a bitmap with one bit per hash of (vnet, address), set for every target
/// address. Non-target traffic (the bulk) is dismissed with an array read, which the
/// verifier inlines, instead of a hash-map lookup (≈ 20 ns measured).
pub const FILTER_WORDS: u32 = 1 << 14;
pub const FILTER_BITS: u32 = FILTER_WORDS * 64;

/// The prefilter bit of a target address.
#[inline(always)]
pub fn filter_bit(hash: u64) -> u32 {
    (hash >> (64 - 20)) as u32
}

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
    /// XDP could not tell the vnet (an interface with VLAN vnets, a frame that looks
    /// untagged): left to TC, which classifies and counts it. Never counted itself.
    pub const DEFERRED: u32 = 7;
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

/// Value of `INGRESS_IF` (indexed by ifindex): the vnet of untagged traffic in the low 16
/// bits (0: none) and `INGRESS_HAS_VLANS` if VLANs on it belong to vnets.
///
pub const INGRESS_HAS_VLANS: u32 = 1 << 16;
/// `INGRESS_IF` flag of a VLAN device on top of an ingress interface: no vnet of its own
/// (the parent's TC classifies its frames), but steered flows arrive on it, so `sk_lookup`
/// must accept it as an ingress.
pub const INGRESS_VLAN_DEVICE: u32 = 1 << 17;
/// `INGRESS_IF` flag: XDP leaves frames that look untagged to TC. Set on interfaces with
/// VLAN vnets (except loopback devices): a NIC that strips the tag before XDP shows a tagged
/// frame as untagged, and only TC sees the stripped tag (`skb->vlan_tci`); classified in
/// XDP, it would land in the untagged vnet.
pub const INGRESS_DEFER_UNTAGGED: u32 = 1 << 18;

/// Key of `INGRESS_VLAN`: an interface and an 802.1Q VLAN id on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IngressKey {
    pub ifindex: u32,
    pub vlan: u16,
    pub _pad: u16,
}

/// Target addresses live in an open-addressing table in a BPF array (array reads are
/// inlined by the verifier; a hash-map lookup measured ≈ 38 ns of a 27 ns budget). There
/// are two tables: userspace rebuilds the inactive one and flips `CONTROL[CONTROL_ACTIVE]`,
/// so readers never see a half-written slot. Keys that find no free slot within `PROBES`
/// of their home go to the `OVERFLOW` hash map.
pub const TABLE_SLOTS: u32 = 1 << 17;
pub const TABLE_MASK: u32 = TABLE_SLOTS - 1;
pub const PROBES: u32 = 4;
pub const CONTROL_ACTIVE: u32 = 0;
pub const CONTROL_OVERFLOW: u32 = 1;
pub const CONTROL_SLOTS: u32 = 2;

/// A slot of a target table; `vnet == 0` marks it empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The address's 16 bytes (IPv4 mapped) as two native-endian words.
    pub addr: [u64; 2],
    pub vnet: u32,
    pub _pad: u32,
    pub value: TargetValue,
}

/// Key of `OVERFLOW`: (vnet id, address, IPv4 mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub vnet: u32,
    pub addr: [u8; 16],
}

/// The 16 address bytes as the two words a `Slot` holds.
#[inline(always)]
pub fn addr_words(addr: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]),
        u64::from_ne_bytes([
            addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
        ]),
    ]
}

/// Hash of (vnet, address): the prefilter uses its top 20 bits, the table its top 17.
#[inline(always)]
pub fn addr_hash(vnet: u32, words: &[u64; 2]) -> u64 {
    (words[0].rotate_left(17) ^ words[1] ^ ((vnet as u64) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[inline(always)]
pub fn home_slot(hash: u64) -> u32 {
    (hash >> (64 - 17)) as u32
}

/// Protected ports kept inline in a target's map value: the common case costs one lookup.
pub const INLINE_PORTS: usize = 8;

/// Value of the target maps: the address id (counters, overflow ports) and its protected
/// ports. With more than `INLINE_PORTS` ports, the rest are in `PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetValue {
    pub id: u32,
    pub nports: u16,
    pub ports: [u16; INLINE_PORTS],
    pub _pad: u16,
}

/// Key of `PORTS` (overflow ports): (address id, TCP port in host order).
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
const _: () = assert!(core::mem::size_of::<Slot>() == 48);
const _: () = assert!(TABLE_SLOTS == 1 << 17);
const _: () = assert!(core::mem::size_of::<TargetValue>() == 24);
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
    unsafe impl aya::Pod for Slot {}
    unsafe impl aya::Pod for TargetValue {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for DestKey {}
}
