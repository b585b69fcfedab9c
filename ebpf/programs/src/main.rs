//! portcullis kernel dataplane.
//!
//! * `pc_xdp_classify` (XDP, ingress interfaces): parses Ethernet / 802.1Q / IPv4 / IPv6 / TCP,
//!   finds the packet's vnet and target, counts the verdict, and hands the steering mark to
//!   TC through XDP metadata. Drops what it cannot vouch for once the destination is a target.
//! * `pc_tc_mark` (TC ingress, same interfaces): sets `skb->mark` from that metadata (or
//!   classifies itself when XDP did not run), so policy routing delivers the flow locally.
//! * `pc_sk_lookup` (netns): hands locally delivered protected flows to the proxy's socket.
//! * `pc_tc_guard` (TC egress, upstream interfaces): second line, drops any packet that still
//!   carries the steering mark, so a flushed routing rule cannot turn into a bypass.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{sk_action, xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_xdp_adjust_meta,
    macros::{classifier, map, sk_lookup, xdp},
    maps::{Array, HashMap, PerCpuArray, SockMap},
    programs::{SkLookupContext, TcContext, XdpContext},
    EbpfContext,
};
use portcullis_common::parse::{self, Outcome, Packet};
use portcullis_common::{
    addr_hash, addr_words, filter_bit, home_slot, v4_mapped, verdict, DestKey, IngressKey, PortKey, Slot,
    TargetKey, TargetValue, XdpMeta, CONTROL_ACTIVE, CONTROL_OVERFLOW, CONTROL_SLOTS, FILTER_WORDS,
    INGRESS_DEFER_UNTAGGED, MARK_STEER, MARK_UPSTREAM, MARK_VNET_MASK, MAX_IFINDEX, MAX_INGRESS, MAX_PORTS,
    MAX_TARGETS, META_MAGIC, PROBES, SOCKET_SLOTS, SOCKET_V4, SOCKET_V6, TABLE_MASK, TABLE_SLOTS, VERDICTS,
};

#[map(name = "PC_INGRESS_IF")]
static PC_INGRESS_IF: Array<u32> = Array::pinned(MAX_IFINDEX, 0);

#[map(name = "PC_INGRESS_VLAN")]
static PC_INGRESS_VLAN: HashMap<IngressKey, u32> = HashMap::pinned(MAX_INGRESS, 0);

#[map(name = "PC_TABLE_A")]
static PC_TABLE_A: Array<Slot> = Array::pinned(TABLE_SLOTS, 0);

#[map(name = "PC_TABLE_B")]
static PC_TABLE_B: Array<Slot> = Array::pinned(TABLE_SLOTS, 0);

#[map(name = "PC_CONTROL")]
static PC_CONTROL: Array<u32> = Array::pinned(CONTROL_SLOTS, 0);

#[map(name = "PC_OVERFLOW")]
static PC_OVERFLOW: HashMap<TargetKey, TargetValue> = HashMap::pinned(MAX_TARGETS, 0);

#[map(name = "PC_PORTS")]
static PC_PORTS: HashMap<PortKey, u32> = HashMap::pinned(MAX_PORTS, 0);

#[map(name = "PC_DESTS")]
static PC_DESTS: HashMap<DestKey, u32> = HashMap::pinned(MAX_PORTS, 0);

#[map(name = "PC_FILTER")]
static PC_FILTER: Array<u64> = Array::pinned(FILTER_WORDS, 0);

#[map(name = "PC_COUNTERS")]
static PC_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_TARGETS * VERDICTS, 0);

#[map(name = "PC_SOCKETS")]
static PC_SOCKETS: SockMap = SockMap::pinned(SOCKET_SLOTS, 0);

/// Upstream interfaces (by ifindex) → the vnet they lead into (0: not an upstream).
#[map(name = "PC_UPSTREAM_IF")]
static PC_UPSTREAM_IF: Array<u32> = Array::pinned(MAX_IFINDEX, 0);

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;

#[inline(always)]
fn count(target: u32, v: u32) {
    if let Some(c) = PC_COUNTERS.get_ptr_mut(target * VERDICTS + v) {
        // Per-CPU slot: no other writer, a plain add is enough.
        unsafe { *c += 1 };
    }
}

/// Classifies one packet and counts the verdict (a deferred packet is counted by TC).
/// `XDP`: whether the caller is the XDP program, which sees no tag a NIC stripped.
#[inline(always)]
fn classify<const XDP: bool>(pkt: &Packet, ifindex: u32, vlan: u16) -> Outcome {
    let out = parse::classify(pkt, ifindex, vlan, &Maps::<XDP>);
    if out.verdict != verdict::DEFERRED {
        count(out.target, out.verdict);
    }
    out
}

/// The classifier's tables are the BPF maps.
struct Maps<const XDP: bool>;

impl<const XDP: bool> parse::Tables for Maps<XDP> {
    #[inline(always)]
    fn vnet(&self, ifindex: u32, vlan: u16) -> Option<u32> {
        if vlan == 0 {
            let e = PC_INGRESS_IF.get(ifindex).copied().unwrap_or(0);
            // A frame that looks untagged on a trunk may have had its tag stripped by the
            // NIC; only TC can see it.
            if XDP && e & INGRESS_DEFER_UNTAGGED != 0 {
                return Some(parse::DEFER);
            }
            let v = e & MARK_VNET_MASK;
            return (v != 0).then_some(v);
        }
        let key = IngressKey {
            ifindex,
            vlan,
            _pad: 0,
        };
        unsafe { PC_INGRESS_VLAN.get(&key).copied() }
    }
    #[inline(always)]
    fn target(&self, vnet: u32, addr: &[u8; 16]) -> Option<&TargetValue> {
        let words = addr_words(addr);
        let hash = addr_hash(vnet, &words);
        // Prefilter: most traffic is not for a target and stops here.
        let bit = filter_bit(hash);
        let word = PC_FILTER.get(bit / 64).copied().unwrap_or(0);
        if word & (1u64 << (bit % 64)) == 0 {
            return None;
        }
        let home = home_slot(hash);
        let found = if PC_CONTROL.get(CONTROL_ACTIVE).copied().unwrap_or(0) == 0 {
            probe(&PC_TABLE_A, home, vnet, &words)
        } else {
            probe(&PC_TABLE_B, home, vnet, &words)
        };
        match found {
            Probe::Found(v) => Some(v),
            Probe::Absent => None,
            Probe::Full if PC_CONTROL.get(CONTROL_OVERFLOW).copied().unwrap_or(0) != 0 => unsafe {
                PC_OVERFLOW.get(&TargetKey { vnet, addr: *addr })
            },
            Probe::Full => None,
        }
    }
    #[inline(always)]
    fn overflow_port(&self, target: u32, port: u16) -> bool {
        let key = PortKey {
            target,
            port,
            _pad: 0,
        };
        unsafe { PC_PORTS.get(&key).is_some() }
    }
}

#[xdp]
pub fn pc_xdp_classify(ctx: XdpContext) -> u32 {
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let out = classify::<true>(&pkt, ifindex, 0);
    match out.verdict {
        verdict::STEERED => {
            write_meta(&ctx, out.mark);
            xdp_action::XDP_PASS
        }
        verdict::DROPPED => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Hands the mark to TC. If the driver has no room for metadata, TC classifies on its own.
#[inline(always)]
fn write_meta(ctx: &XdpContext, mark: u32) {
    let len = core::mem::size_of::<XdpMeta>() as i32;
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -len) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + len as usize > ctx.data() {
        return;
    }
    let meta = meta as *mut XdpMeta;
    unsafe {
        (*meta).magic = META_MAGIC;
        (*meta).mark = mark;
    }
}

enum Probe<'a> {
    Found(&'a TargetValue),
    /// An empty slot ends the probe: the key is in no slot.
    Absent,
    /// Every probed slot held another key: the key may be in the overflow map.
    Full,
}

#[inline(always)]
fn probe(table: &'static Array<Slot>, home: u32, vnet: u32, words: &[u64; 2]) -> Probe<'static> {
    let mut i = 0;
    while i < PROBES {
        let Some(s) = table.get((home + i) & TABLE_MASK) else {
            return Probe::Absent;
        };
        if s.vnet == 0 {
            return Probe::Absent;
        }
        if s.vnet == vnet && s.addr[0] == words[0] && s.addr[1] == words[1] {
            return Probe::Found(&s.value);
        }
        i += 1;
    }
    Probe::Full
}

/// Baseline for benchmarks: what an XDP program costs when it does nothing.
#[xdp]
pub fn pc_xdp_noop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Bytes TC wants in the linear area before it parses: Ethernet + two VLAN tags + IPv6 +
/// the first bytes of TCP (IPv4 with options and IPv6 extension headers are pulled on demand).
const TC_LINEAR: u32 = 14 + 8 + 40 + 20;

#[classifier]
pub fn pc_tc_mark(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + core::mem::size_of::<XdpMeta>() <= data {
        let m = meta as *const XdpMeta;
        if unsafe { (*m).magic } == META_MAGIC {
            ctx.set_mark(unsafe { (*m).mark });
            return TC_ACT_OK;
        }
    }
    // XDP did not run (or had no metadata room): classify here.
    let len = ctx.len();
    let want = if len < 256 { len } else { 256 };
    if (ctx.data_end() - ctx.data()) < want as usize && ctx.pull_data(want).is_err() && len >= TC_LINEAR {
        // Could not linearise the headers of a packet long enough to be TCP: fail closed.
        return TC_ACT_SHOT;
    }
    let (ifindex, vlan) = unsafe {
        let vlan = if (*skb).vlan_present != 0 {
            ((*skb).vlan_tci & 0x0fff) as u16
        } else {
            0
        };
        ((*skb).ingress_ifindex, vlan)
    };
    let pkt = Packet {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let out = classify::<false>(&pkt, ifindex, vlan);
    match out.verdict {
        verdict::STEERED => {
            ctx.set_mark(out.mark);
            TC_ACT_OK
        }
        verdict::DROPPED => TC_ACT_SHOT,
        _ => TC_ACT_OK,
    }
}

/// Upstream interfaces, egress. Drops (a) packets that still carry the steering mark (a
/// flushed routing rule must not turn steering into forwarding), and (b) the proxy's
/// upstream packets of one vnet leaving through another vnet's interface (misrouting would
/// log a user of one vnet in on another vnet's host that shares the address).
#[classifier]
pub fn pc_tc_guard(ctx: TcContext) -> i32 {
    let (mark, ifindex) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ifindex) };
    if mark & MARK_STEER != 0 && mark & !(MARK_STEER | MARK_VNET_MASK) == 0 {
        return TC_ACT_SHOT;
    }
    if mark & MARK_UPSTREAM != 0 && mark & !(MARK_UPSTREAM | MARK_VNET_MASK) == 0 {
        let vnet = PC_UPSTREAM_IF.get(ifindex).copied().unwrap_or(0);
        if vnet != 0 && vnet != mark & MARK_VNET_MASK {
            return TC_ACT_SHOT;
        }
    }
    TC_ACT_OK
}

#[sk_lookup]
pub fn pc_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    let (family, protocol, ifindex, port) =
        unsafe { ((*l).family, (*l).protocol, (*l).ingress_ifindex, (*l).local_port) };
    if protocol != IPPROTO_TCP {
        return sk_action::SK_PASS;
    }
    // Any entry: an ingress interface, or a VLAN device on one (INGRESS_VLAN_DEVICE), whose
    // steered flows arrive here with the VLAN device's ifindex.
    if PC_INGRESS_IF.get(ifindex).copied().unwrap_or(0) == 0 {
        return sk_action::SK_PASS;
    }
    let (addr, slot) = if family == AF_INET {
        let ip4 = unsafe { (*l).local_ip4 };
        (v4_mapped(ip4.to_ne_bytes()), SOCKET_V4)
    } else {
        // One load per field at a constant offset: the verifier rejects context reads
        // through a computed pointer.
        let w = unsafe {
            [
                core::ptr::read_volatile(&(*l).local_ip6[0]),
                core::ptr::read_volatile(&(*l).local_ip6[1]),
                core::ptr::read_volatile(&(*l).local_ip6[2]),
                core::ptr::read_volatile(&(*l).local_ip6[3]),
            ]
        };
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&w[0].to_ne_bytes());
        a[4..8].copy_from_slice(&w[1].to_ne_bytes());
        a[8..12].copy_from_slice(&w[2].to_ne_bytes());
        a[12..16].copy_from_slice(&w[3].to_ne_bytes());
        (a, SOCKET_V6)
    };
    let key = DestKey {
        addr,
        port: port as u16,
        _pad: 0,
    };
    if unsafe { PC_DESTS.get(&key).is_none() } {
        return sk_action::SK_PASS;
    }
    match PC_SOCKETS.redirect_sk_lookup(&ctx, slot, 0) {
        Ok(()) => sk_action::SK_PASS,
        // No proxy socket (daemon down or restarting): refuse rather than fall through to
        // whatever else listens on this port of the gateway.
        Err(_) => sk_action::SK_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// Silence "unused" for the context trait import on some toolchains.
#[allow(dead_code)]
fn _ctx_trait(c: &XdpContext) -> *mut core::ffi::c_void {
    c.as_ptr()
}
