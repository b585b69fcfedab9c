//! Packet classification shared by the XDP and TC programs (and unit-tested on the host).
//!
//! Every read is bounds-checked against the end of the packet, in the shape the BPF
//! verifier accepts. Once the destination is known to be a target, anything the parser cannot
//! vouch for (truncated TCP header, fragments, over-long IPv6 extension chains) is
//! `DROPPED`: forwarding it could let a segment reach the target's protected port.

use crate::{v4_mapped, verdict, TargetValue, INLINE_PORTS, MARK_STEER, MARK_VNET_MASK};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_AH: u8 = 51;
const TCP_HDR: usize = 20;
/// IPv6 extension headers walked before giving up (and dropping, if the packet is for a target).
const MAX_V6_EXT: usize = 6;

/// The lookups the classifier needs: BPF maps in the kernel, plain tables in unit tests.
pub trait Tables {
    /// The vnet of traffic arriving on `ifindex` with VLAN id `vlan` (0: untagged), or
    /// [`DEFER`] when this program cannot tell (see `INGRESS_HAS_VLANS`).
    fn vnet(&self, ifindex: u32, vlan: u16) -> Option<u32>;
    /// The target at (vnet, address); IPv4 addresses come mapped (`::ffff:a.b.c.d`).
    fn target(&self, vnet: u32, addr: &[u8; 16]) -> Option<&TargetValue>;
    /// Ports beyond the inline ones.
    fn overflow_port(&self, target: u32, port: u16) -> bool;
}

/// What `Tables::vnet` answers when the program cannot know the vnet and leaves the packet
/// to the next one (XDP to TC), which sees more of it. Outside the 16-bit vnet range.
pub const DEFER: u32 = u32::MAX;

/// Whether `port` is protected on the target `t`.
#[inline(always)]
pub fn protected<T: Tables>(t: &T, v: &TargetValue, port: u16) -> bool {
    let n = v.nports as usize;
    let mut i = 0;
    while i < INLINE_PORTS {
        if i < n && v.ports[i] == port {
            return true;
        }
        i += 1;
    }
    n > INLINE_PORTS && t.overflow_port(v.id, port)
}

/// A packet as the half-open byte range `[start, end)` in memory.
pub struct Packet {
    pub start: usize,
    pub end: usize,
}

impl Packet {
    /// Whether `len` bytes at `off` are inside the packet. Every read below follows such a
    /// check on the same offset, one statement at a time: the verifier follows that shape,
    /// while combined checks (tuples of options) get folded by LLVM into forms it rejects.
    #[inline(always)]
    fn has(&self, off: usize, len: usize) -> bool {
        self.start + off + len <= self.end
    }

    /// Reads `N` bytes at `off`.
    ///
    /// # Safety
    /// `self.has(off, N)` must hold.
    #[inline(always)]
    unsafe fn get<const N: usize>(&self, off: usize) -> [u8; N] {
        unsafe { core::ptr::read_unaligned((self.start + off) as *const [u8; N]) }
    }

    /// Reads a 16-byte address at `off` as two 8-byte loads: byte-wise, the IPv6 destination
    /// costs 16 loads and 30 shifts and ors on the miss path, a third of its time (the BPF
    /// object is built with `allows-misaligned-mem-access`, which the kernel permits for
    /// packet data on architectures with efficient unaligned access).
    ///
    /// # Safety
    /// `self.has(off, 16)` must hold.
    #[inline(always)]
    unsafe fn addr16(&self, off: usize) -> [u8; 16] {
        let w0 = unsafe { core::ptr::read_unaligned((self.start + off) as *const u64) };
        let w1 = unsafe { core::ptr::read_unaligned((self.start + off + 8) as *const u64) };
        let (a, b) = (w0.to_ne_bytes(), w1.to_ne_bytes());
        [
            a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]
    }

    #[inline(always)]
    unsafe fn byte(&self, off: usize) -> u8 {
        unsafe { *((self.start + off) as *const u8) }
    }

    #[inline(always)]
    unsafe fn be16(&self, off: usize) -> u16 {
        u16::from_be_bytes(unsafe { self.get::<2>(off) })
    }
}

/// What the classifier decided: a `verdict::*`, the target id (0 if none) and, for
/// `STEERED`, the fwmark to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: u32,
    pub target: u32,
    pub mark: u32,
}

#[inline(always)]
const fn outcome(verdict: u32, target: u32) -> Outcome {
    Outcome {
        verdict,
        target,
        mark: 0,
    }
}

/// VLAN tags read in a frame. A frame with more is dropped: no network stacks that many,
/// and the kernel would strip any number of priority tags (VLAN 0) and deliver it.
pub const MAX_TAGS: usize = 4;

/// Classifies an Ethernet frame that arrived on `ifindex`. `vlan` is a VLAN id the driver
/// already stripped (0 if none), the frame's outermost tag.
///
/// The network is named the way the kernel delivers the frame: priority tags (VLAN 0) are
/// stripped wherever they are, and the remaining tag names the VLAN device. So
/// `[VLAN 200][VLAN 0]` is VLAN 200's, as on `trunk0.200`, and `[VLAN 0]` × 4 is untagged.
/// With two non-zero tags (802.1ad outer, 802.1Q inner) the inner one names the network.
#[inline(always)]
pub fn classify<T: Tables>(p: &Packet, ifindex: u32, vlan: u16, t: &T) -> Outcome {
    let mut vlan = vlan;
    if !p.has(0, 14) {
        return outcome(verdict::MALFORMED, 0);
    }
    let mut proto = unsafe { p.be16(12) };
    let mut off = 14;
    for _ in 0..MAX_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        if !p.has(off, 4) {
            return outcome(verdict::MALFORMED, 0);
        }
        let vid = unsafe { p.be16(off) } & 0x0fff;
        if vid != 0 {
            vlan = vid;
        }
        proto = unsafe { p.be16(off + 2) };
        off += 4;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return outcome(verdict::DROPPED, 0);
    }
    if proto != ETH_P_IPV4 && proto != ETH_P_IPV6 {
        return outcome(verdict::NOT_TCP, 0);
    }
    let Some(vnet) = t.vnet(ifindex, vlan) else {
        return outcome(verdict::NOT_INGRESS, 0);
    };
    if vnet == DEFER {
        return outcome(verdict::DEFERRED, 0);
    }
    if proto == ETH_P_IPV4 {
        ipv4(p, off, vnet, t)
    } else {
        ipv6(p, off, vnet, t)
    }
}

#[inline(always)]
fn ipv4<T: Tables>(p: &Packet, off: usize, vnet: u32, t: &T) -> Outcome {
    if !p.has(off, 20) {
        return outcome(verdict::MALFORMED, 0);
    }
    let ver_ihl = unsafe { p.byte(off) };
    let ihl = (ver_ihl & 0x0f) as usize * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return outcome(verdict::MALFORMED, 0);
    }
    let proto = unsafe { p.byte(off + 9) };
    if proto != IPPROTO_TCP && proto != IPPROTO_AH {
        return outcome(verdict::NOT_TCP, 0);
    }
    let dst = unsafe { p.get::<4>(off + 16) };
    let Some(target) = t.target(vnet, &v4_mapped(dst)) else {
        return outcome(verdict::NO_TARGET, 0);
    };
    // More-fragments or a fragment offset: the ports may be in another fragment.
    if unsafe { p.be16(off + 6) } & 0x3fff != 0 {
        return outcome(verdict::DROPPED, target.id);
    }
    let mut l4 = off + ihl;
    // An authentication header (RFC 4302) in front of TCP, as IPv6 allows too: walked, or a
    // segment behind it would be forwarded to the protected port untouched (found by the
    // differential fuzzer). One header; anything else behind it is not TCP.
    if proto == IPPROTO_AH {
        if !p.has(l4, 2) {
            return outcome(verdict::DROPPED, target.id);
        }
        let [next, len] = unsafe { p.get::<2>(l4) };
        if next != IPPROTO_TCP {
            return outcome(verdict::NOT_TCP, target.id);
        }
        l4 += (len as usize + 2) * 4;
    }
    tcp(p, l4, vnet, target, t)
}

#[inline(always)]
fn ipv6<T: Tables>(p: &Packet, off: usize, vnet: u32, t: &T) -> Outcome {
    if !p.has(off, 40) {
        return outcome(verdict::MALFORMED, 0);
    }
    if unsafe { p.byte(off) } >> 4 != 6 {
        return outcome(verdict::MALFORMED, 0);
    }
    let mut next = unsafe { p.byte(off + 6) };
    let dst = unsafe { p.addr16(off + 24) };
    let Some(target) = t.target(vnet, &dst) else {
        return outcome(verdict::NO_TARGET, 0);
    };
    let mut l4 = off + 40;
    let mut i = 0;
    while i < MAX_V6_EXT {
        match next {
            IPPROTO_TCP => return tcp(p, l4, vnet, target, t),
            // Hop-by-hop, routing, destination options: length in 8-octet units, minus one.
            0 | 43 | 60 => {
                if !p.has(l4, 2) {
                    return outcome(verdict::DROPPED, target.id);
                }
                let [n, len] = unsafe { p.get::<2>(l4) };
                next = n;
                l4 += (len as usize + 1) * 8;
            }
            // Authentication header: length in 4-octet units, minus two.
            51 => {
                if !p.has(l4, 2) {
                    return outcome(verdict::DROPPED, target.id);
                }
                let [n, len] = unsafe { p.get::<2>(l4) };
                next = n;
                l4 += (len as usize + 2) * 4;
            }
            // Fragment header: the ports may be in another fragment.
            44 => return outcome(verdict::DROPPED, target.id),
            _ => return outcome(verdict::NOT_TCP, target.id),
        }
        i += 1;
    }
    outcome(verdict::DROPPED, target.id)
}

#[inline(always)]
fn tcp<T: Tables>(p: &Packet, l4: usize, vnet: u32, target: &TargetValue, t: &T) -> Outcome {
    if !p.has(l4, TCP_HDR) {
        return outcome(verdict::DROPPED, target.id);
    }
    let dport = unsafe { p.be16(l4 + 2) };
    if protected(t, target, dport) {
        Outcome {
            verdict: verdict::STEERED,
            target: target.id,
            mark: MARK_STEER | (vnet & MARK_VNET_MASK),
        }
    } else {
        outcome(verdict::OTHER_PORT, target.id)
    }
}
