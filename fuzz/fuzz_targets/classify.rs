//! The packet classifier (`portcullis_common::parse::classify`) against an independent
//! parser, etherparse, on arbitrary frames.
//!
//! Input: `CONFIG` bytes describing the tables (ingress interface, VLAN vnets, two target
//! addresses or "every address", up to 16 protected ports of which 8 inline), then the frame.
//!
//! What must hold (the leak direction first, as it is the one that matters):
//! - a frame the classifier lets pass untouched (`NOT_TCP`, `MALFORMED`, `NO_TARGET`,
//!   `NOT_INGRESS`) is not, in etherparse's reading, a non-fragmented TCP segment (at least
//!   a whole fixed header) to a target of the frame's vnet;
//! - `STEERED` / `OTHER_PORT`: etherparse sees TCP, not a fragment, to that target (same vnet,
//!   same address), with its transport header at the same offset and a destination port that
//!   is protected (`STEERED`, with the vnet's mark) or not (`OTHER_PORT`);
//! - `DROPPED` only for a target's address (what etherparse reads as the destination);
//! - no mark but on `STEERED`; a target id only where the address is a target.
//!
//! Where the classifier is deliberately different, the oracle says so (`policy` below):
//! - it reads the frame, not the IP length fields (a kernel never gives a target more than
//!   the frame). The oracle sets IPv4 total length / IPv6 payload length to what the frame
//!   holds before etherparse reads it: the leak check then looks at every byte the frame has.
//! - it knows 0x8100 and 0x88a8 as VLAN TPIDs (as Linux does; not 0x9100) in any position,
//!   skips priority tags (VLAN 0) as Linux strips them, and names the network by the last
//!   other tag (the stripped one if none); past four tags a frame must be `DROPPED` (Linux
//!   would strip any number of priority tags and route it).
//! - it drops any IPv6 fragment header, atomic ones included, and chains of more than six
//!   extension headers (`DROPPED` is always acceptable towards a target).
//! - it walks a hop-by-hop header wherever it appears and an AH of length 0 (IPv6, as
//!   Linux's ipv6_skip_exthdr, and IPv4); etherparse refuses both chains. For those only the
//!   address is compared.
//!
//! Regression seed: `v4-ah` (TCP behind an IPv4 authentication header, once forwarded to a
//! protected port untouched as `NOT_TCP`).

#![no_main]

use etherparse::{
    err::{ip_auth, ipv6_exts},
    Ethernet2HeaderSlice, Ipv4Slice, Ipv6Slice, SingleVlanHeaderSlice, TcpHeaderSlice,
};
use libfuzzer_sys::fuzz_target;
use portcullis_common::{
    parse::{self, classify, Outcome, Packet, Tables},
    v4_mapped, verdict, TargetValue, INLINE_PORTS, MARK_STEER, MARK_VNET_MASK,
};

const CONFIG: usize = 72;
const INGRESS: u32 = 3;

/// The tables, read from the input's first `CONFIG` bytes.
struct Model {
    /// The interface the frame arrived on (`INGRESS` is the one with vnets).
    ifindex: u32,
    /// A VLAN id the driver stripped (0: none).
    stripped: u16,
    untagged_vnet: bool,
    /// Every VLAN id on the ingress interface is a vnet of its own (2 + id).
    every_vlan: bool,
    /// Otherwise this VLAN id is vnet 2.
    vlan: u16,
    every_address: bool,
    /// Explicit targets: address and the vnet it is a target in (0: every vnet).
    addrs: [([u8; 16], u32); 2],
    /// Target values: the two explicit targets, then the "every address" one.
    values: [TargetValue; 3],
    /// Ports after the inline ones.
    overflow: Vec<u16>,
    /// All protected ports, as configured.
    ports: Vec<u16>,
}

impl Model {
    fn read(c: &[u8; CONFIG]) -> Self {
        let flags = c[0];
        let be16 = |i: usize| u16::from_be_bytes([c[i], c[i + 1]]);
        let nports = (c[5] % 17) as usize;
        let ports: Vec<u16> = (0..nports).map(|i| be16(6 + 2 * i)).collect();
        let mut inline = [0u16; INLINE_PORTS];
        for (i, p) in ports.iter().take(INLINE_PORTS).enumerate() {
            inline[i] = *p;
        }
        let addr = |at: usize, v4: bool| -> [u8; 16] {
            let mut a = [0u8; 16];
            a.copy_from_slice(&c[at..at + 16]);
            if v4 {
                v4_mapped([a[0], a[1], a[2], a[3]])
            } else {
                a
            }
        };
        let vnet_of = |sel: u8| match sel & 3 {
            0 | 3 => 0,
            n => n as u32,
        };
        let value = |id: u32| TargetValue {
            id,
            nports: nports as u16,
            ports: inline,
            _pad: 0,
        };
        Self {
            ifindex: if flags & 8 != 0 { INGRESS + 1 } else { INGRESS },
            stripped: be16(3) & 0x0fff,
            untagged_vnet: flags & 1 != 0,
            every_vlan: flags & 2 != 0,
            vlan: be16(1) & 0x0fff,
            every_address: flags & 4 != 0,
            addrs: [
                (addr(38, c[70] & 1 != 0), vnet_of(flags >> 4)),
                (addr(54, c[70] & 2 != 0), vnet_of(flags >> 6)),
            ],
            values: [value(11), value(12), value(13)],
            overflow: ports.iter().skip(INLINE_PORTS).copied().collect(),
            ports,
        }
    }

    /// The oracle's own reading of the port set (not `parse::protected`).
    fn protects(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }
}

impl Tables for Model {
    fn vnet(&self, ifindex: u32, vlan: u16) -> Option<u32> {
        if ifindex != INGRESS {
            return None;
        }
        match vlan {
            0 => self.untagged_vnet.then_some(1),
            v if self.every_vlan => Some(2 + v as u32),
            v if v == self.vlan => Some(2),
            _ => None,
        }
    }

    fn target(&self, vnet: u32, addr: &[u8; 16]) -> Option<&TargetValue> {
        for (i, (a, v)) in self.addrs.iter().enumerate() {
            if a == addr && (*v == 0 || *v == vnet) {
                return Some(&self.values[i]);
            }
        }
        self.every_address.then_some(&self.values[2])
    }

    fn overflow_port(&self, target: u32, port: u16) -> bool {
        assert!(
            (11..=13).contains(&target),
            "overflow lookup for target id {target}"
        );
        self.overflow.contains(&port)
    }
}

/// What etherparse makes of the frame.
#[derive(Debug)]
enum Seen {
    /// Shorter than an Ethernet header or a VLAN tag it announces.
    Short,
    /// More VLAN tags than the classifier reads: dropped by policy (see the top).
    TooManyTags,
    /// Not IPv4 or IPv6 after the tags.
    NotIp,
    /// IPv4 or IPv6, as far as etherparse got.
    Ip { vlan: u16, ip: Ip },
}

#[derive(Debug)]
struct Ip {
    /// Only when the IP header itself parsed.
    dst: Option<[u8; 16]>,
    /// The chain up to the transport header, if etherparse accepted it.
    chain: Result<Chain, String>,
    /// A chain etherparse refuses but the classifier walks on purpose (see the top).
    walked_on_purpose: bool,
}

#[derive(Debug)]
struct Chain {
    proto: u8,
    fragmented: bool,
    /// Offset of the transport header in the frame.
    l4: usize,
    /// Bytes from there to the end of the frame.
    rest: usize,
    /// The TCP destination port, if etherparse parsed a TCP header there.
    tcp_dport: Option<u16>,
}

impl Chain {
    /// A non-fragmented TCP segment with at least a whole fixed header.
    fn is_tcp(&self) -> bool {
        self.proto == 6 && !self.fragmented && self.rest >= 20
    }
}

fn oracle(frame: &[u8], stripped: u16) -> Seen {
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return Seen::Short;
    };
    let mut ether_type = eth.ether_type().0;
    let mut off = eth.slice().len();
    let mut vlan = stripped;
    let is_tag = |t: u16| t == 0x8100 || t == 0x88a8;
    for _ in 0..parse::MAX_TAGS {
        if !is_tag(ether_type) {
            break;
        }
        let Ok(v) = SingleVlanHeaderSlice::from_slice(&frame[off..]) else {
            return Seen::Short;
        };
        if v.vlan_identifier().value() != 0 {
            vlan = v.vlan_identifier().value();
        }
        ether_type = v.ether_type().0;
        off += v.slice().len();
    }
    if is_tag(ether_type) {
        return Seen::TooManyTags;
    }
    // The length fields say what the frame holds (see the top).
    let mut copy = frame.to_vec();
    let rest = frame.len() - off;
    let ip = match ether_type {
        0x0800 => {
            if rest >= 4 {
                copy[off + 2..off + 4].copy_from_slice(&(rest as u16).to_be_bytes());
            }
            let dst = (rest >= 20 && frame[off] >> 4 == 4 && frame[off] & 0x0f >= 5)
                .then(|| v4_mapped(frame[off + 16..off + 20].try_into().unwrap()));
            match Ipv4Slice::from_slice(&copy[off..]) {
                Ok(s) => Ip {
                    dst: Some(v4_mapped(s.header().destination())),
                    chain: Ok(chain(
                        &copy,
                        s.payload().ip_number.0,
                        s.payload().fragmented,
                        s.payload().payload,
                    )),
                    walked_on_purpose: false,
                },
                Err(e) => Ip {
                    dst,
                    walked_on_purpose: matches!(
                        e,
                        etherparse::err::ipv4::SliceError::Exts(ip_auth::HeaderError::ZeroPayloadLen)
                    ),
                    chain: Err(format!("{e:?}")),
                },
            }
        }
        0x86dd => {
            if rest >= 40 {
                copy[off + 4..off + 6].copy_from_slice(&((rest - 40) as u16).to_be_bytes());
            }
            let dst =
                (rest >= 40 && frame[off] >> 4 == 6).then(|| frame[off + 24..off + 40].try_into().unwrap());
            match Ipv6Slice::from_slice(&copy[off..]) {
                Ok(s) => Ip {
                    dst: Some(s.header().destination()),
                    chain: Ok(chain(
                        &copy,
                        s.payload().ip_number.0,
                        s.payload().fragmented,
                        s.payload().payload,
                    )),
                    walked_on_purpose: false,
                },
                Err(e) => {
                    use etherparse::err::ipv6::SliceError;
                    let on_purpose = matches!(
                        e,
                        SliceError::Exts(ipv6_exts::HeaderError::HopByHopNotAtStart)
                            | SliceError::Exts(ipv6_exts::HeaderError::IpAuth(
                                ip_auth::HeaderError::ZeroPayloadLen
                            ))
                    );
                    Ip {
                        dst,
                        chain: Err(format!("{e:?}")),
                        walked_on_purpose: on_purpose,
                    }
                }
            }
        }
        _ => return Seen::NotIp,
    };
    Seen::Ip { vlan, ip }
}

fn chain(frame: &[u8], proto: u8, fragmented: bool, payload: &[u8]) -> Chain {
    // The payload runs to the end of the frame (the length fields were set so).
    let l4 = payload.as_ptr() as usize - frame.as_ptr() as usize;
    let tcp_dport = (proto == 6 && !fragmented)
        .then(|| {
            TcpHeaderSlice::from_slice(payload)
                .ok()
                .map(|t| t.destination_port())
        })
        .flatten();
    Chain {
        proto,
        fragmented,
        l4,
        rest: frame.len() - l4,
        tcp_dport,
    }
}

fn check(m: &Model, frame: &[u8], o: Outcome) {
    let seen = oracle(frame, m.stripped);
    let v = o.verdict;
    let name = verdict::NAMES.get(v as usize).copied().unwrap_or("unknown");
    let fail = |why: &str| -> ! { panic!("classify said {name} ({o:?}) but {why}; etherparse: {seen:#?}") };
    if v != verdict::STEERED && o.mark != 0 {
        fail("a mark was set");
    }
    let (vlan, ip) = match &seen {
        Seen::Short => {
            if v != verdict::MALFORMED {
                fail("the frame is cut inside its Ethernet header or a VLAN tag");
            }
            return;
        }
        Seen::TooManyTags => {
            if v != verdict::DROPPED {
                fail("a frame with more VLAN tags than the classifier reads is dropped (policy)");
            }
            return;
        }
        Seen::NotIp => {
            if v != verdict::NOT_TCP {
                fail("the frame is not IP");
            }
            return;
        }
        Seen::Ip { vlan, ip } => (*vlan, ip),
    };
    let vnet = m.vnet(m.ifindex, vlan);
    if v == verdict::NOT_INGRESS {
        if vnet.is_some() {
            fail("the interface and VLAN belong to a vnet");
        }
        return;
    }
    let Some(vnet) = vnet else {
        fail("the interface and VLAN belong to no vnet");
    };
    let target = ip.dst.and_then(|d| m.target(vnet, &d));
    let tcp = ip.chain.as_ref().ok().filter(|c| c.is_tcp());
    match v {
        verdict::STEERED | verdict::OTHER_PORT => {
            let Some(t) = target else {
                fail("the destination is not a target of the vnet");
            };
            if o.target != t.id {
                fail(&format!("the target is {}", t.id));
            }
            if v == verdict::STEERED && o.mark != MARK_STEER | (vnet & MARK_VNET_MASK) {
                fail(&format!("the mark should be for vnet {vnet}"));
            }
            if ip.walked_on_purpose {
                return;
            }
            let Some(c) = tcp else {
                fail("etherparse does not find a whole non-fragmented TCP header");
            };
            let dport = u16::from_be_bytes([frame[c.l4 + 2], frame[c.l4 + 3]]);
            if let Some(p) = c.tcp_dport {
                assert_eq!(p, dport, "the harness misread the port");
            }
            if m.protects(dport) != (v == verdict::STEERED) {
                fail(&format!("port {dport} is protected: {}", m.protects(dport)));
            }
        }
        verdict::DROPPED => {
            let Some(d) = ip.dst else {
                // etherparse could not read the IP header, the classifier did: nothing to
                // compare (DROPPED is fail-closed).
                return;
            };
            match m.target(vnet, &d) {
                Some(t) if t.id == o.target => {}
                _ => fail("the destination is not that target"),
            }
        }
        verdict::NO_TARGET => {
            if target.is_some() {
                fail("the destination is a target of the vnet");
            }
            if o.target != 0 {
                fail("a target id was given");
            }
        }
        verdict::NOT_TCP | verdict::MALFORMED => {
            if let (Some(t), Some(c)) = (target, tcp) {
                fail(&format!(
                    "etherparse reads a whole TCP segment to target {} port {} at offset {}",
                    t.id,
                    u16::from_be_bytes([frame[c.l4 + 2], frame[c.l4 + 3]]),
                    c.l4
                ));
            }
            if o.target != 0 && target.map(|t| t.id) != Some(o.target) {
                fail("a target id was given that is not the destination's");
            }
        }
        _ => fail("an unexpected verdict"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < CONFIG || data.len() > CONFIG + 9000 {
        return;
    }
    let (config, frame) = data.split_at(CONFIG);
    let m = Model::read(config.try_into().unwrap());
    // The classifier reads through raw pointers: give it exactly the frame, in its own
    // allocation, so that a read past the end is one past the allocation (ASan sees it).
    let buf = frame.to_vec().into_boxed_slice();
    let start = buf.as_ptr() as usize;
    let p = Packet {
        start,
        end: start + buf.len(),
    };
    let o = classify(&p, m.ifindex, m.stripped, &m);
    check(&m, &buf, o);
});
