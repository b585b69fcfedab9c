//! The classifier in the kernel, through BPF_PROG_TEST_RUN: crafted packets (VLAN, IPv4
//! options, IPv6 extension headers, fragments), truncations and random mutations. Needs root.

mod support;

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use portcullis::{
    dataplane::{
        testrun::{self, SkBuffCtx},
        Detached,
    },
    targets::{Ingress, TargetAddr, TargetSet, Vnet},
};
use portcullis_common::{
    parse::{self, Packet, Tables},
    program, verdict, TargetValue, INLINE_PORTS, MARK_STEER,
};
use support::packet::{Frame, Rng};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const LO: u32 = 1;

fn set() -> TargetSet {
    let vnet = |name: &str, id, vlan| Vnet {
        name: name.into(),
        id,
        ingress: vec![Ingress {
            interface: "lo".into(),
            vlan,
        }],
        upstream: vec![],
        table: None,
    };
    let addr = |target: &str, vnet, a: &str, ports: Vec<u16>| TargetAddr {
        target: target.into(),
        vnet,
        addr: a.parse().unwrap(),
        ports,
    };
    TargetSet {
        vnets: vec![vnet("corp", 1, None), vnet("lab", 2, Some(100))],
        addrs: vec![
            addr("web-01", 1, "198.18.10.10", vec![22]),
            addr("web-01", 1, "2001:db8:10::10", vec![22]),
            // Same address in another vnet, another port.
            addr("lab-01", 2, "198.18.10.10", vec![2222]),
        ],
    }
}

fn pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf").join(support::unique("portcullis-test-"))
}

struct Kernel {
    d: Detached,
}

impl Kernel {
    fn new() -> Option<Self> {
        if !support::privileged() {
            return None;
        }
        let mut d = Detached::load(&pin_dir()).expect("load the BPF object");
        d.apply(&set()).expect("fill the maps");
        Some(Self { d })
    }

    /// (TC verdict, mark) of a packet arriving on `ifindex`.
    fn tc(&self, pkt: &[u8], ifindex: u32) -> (u32, u32) {
        let fd = self.d.program_fd(program::TC_MARK).unwrap();
        let ctx = SkBuffCtx {
            ingress_ifindex: ifindex,
            ..Default::default()
        };
        let (r, out) = testrun::tc(&fd, pkt, ctx)
            .unwrap_or_else(|e| panic!("test run of {} bytes {pkt:02x?}: {e}", pkt.len()));
        (r.retval, out.mark)
    }

    /// (dropped, steered) for any packet: through TC where the kernel's skb test harness
    /// accepts the packet, otherwise (it refuses truncated IP headers) through XDP and the
    /// counters.
    fn verdict(&self, pkt: &[u8]) -> (bool, bool) {
        let fd = self.d.program_fd(program::TC_MARK).unwrap();
        let ctx = SkBuffCtx {
            ingress_ifindex: LO,
            ..Default::default()
        };
        match testrun::tc(&fd, pkt, ctx) {
            Ok((r, out)) => (r.retval == TC_ACT_SHOT, out.mark != 0),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let before = self.d.counters().unwrap().total(verdict::STEERED);
                let ret = self.xdp(pkt);
                let after = self.d.counters().unwrap().total(verdict::STEERED);
                (ret == XDP_DROP, after > before)
            }
            Err(e) => panic!("test run of {pkt:02x?}: {e}"),
        }
    }

    fn xdp(&self, pkt: &[u8]) -> u32 {
        let fd = self.d.program_fd(program::XDP_CLASSIFY).unwrap();
        testrun::xdp(&fd, pkt, 1).expect("test run").retval
    }
}

/// The same tables as plain maps, for the host-side model of the classifier.
struct Model {
    ingress: HashMap<(u32, u16), u32>,
    targets: HashMap<(u32, [u8; 16]), TargetValue>,
}

impl Model {
    fn new(s: &TargetSet) -> Self {
        let mut m = Model {
            ingress: HashMap::new(),
            targets: HashMap::new(),
        };
        for v in &s.vnets {
            for i in &v.ingress {
                m.ingress.insert((LO, i.vlan.unwrap_or(0)), v.id as u32);
            }
        }
        for (n, a) in s.addrs.iter().enumerate() {
            let mut ports = [0u16; INLINE_PORTS];
            ports[..a.ports.len()].copy_from_slice(&a.ports);
            let v = TargetValue {
                id: n as u32 + 1,
                nports: a.ports.len() as u16,
                ports,
                _pad: 0,
            };
            let addr = match a.addr {
                IpAddr::V4(x) => x.to_ipv6_mapped().octets(),
                IpAddr::V6(x) => x.octets(),
            };
            m.targets.insert((a.vnet as u32, addr), v);
        }
        m
    }
}

impl Tables for Model {
    fn vnet(&self, ifindex: u32, vlan: u16) -> Option<u32> {
        self.ingress.get(&(ifindex, vlan)).copied()
    }
    fn target(&self, vnet: u32, addr: &[u8; 16]) -> Option<&TargetValue> {
        self.targets.get(&(vnet, *addr))
    }
    fn overflow_port(&self, _target: u32, _port: u16) -> bool {
        false
    }
}

fn model_verdict(m: &Model, pkt: &[u8]) -> parse::Outcome {
    let p = Packet {
        start: pkt.as_ptr() as usize,
        end: pkt.as_ptr() as usize + pkt.len(),
    };
    parse::classify(&p, LO, 0, m)
}

#[test]
fn ipv4_protected_port_is_marked_with_its_vnet() {
    let Some(k) = Kernel::new() else { return };
    let pkt = Frame::tcp("198.18.10.10", 22).build();
    assert_eq!(k.tc(&pkt, LO), (TC_ACT_OK, MARK_STEER | 1));
    assert_eq!(k.xdp(&pkt), XDP_PASS);
    let c = k.d.counters().unwrap();
    assert_eq!(c.total(verdict::STEERED), 2, "one TC + one XDP run: {c:?}");
}

#[test]
fn other_ports_other_addresses_and_other_interfaces_are_untouched() {
    let Some(k) = Kernel::new() else { return };
    assert_eq!(k.tc(&Frame::tcp("198.18.10.10", 80).build(), LO), (TC_ACT_OK, 0));
    assert_eq!(k.tc(&Frame::tcp("198.18.10.11", 22).build(), LO), (TC_ACT_OK, 0));
    assert_eq!(k.tc(&Frame::tcp("198.18.10.10", 22).build(), 999), (TC_ACT_OK, 0));
    let mut udp = Frame::tcp("198.18.10.10", 22);
    udp.proto = 17;
    assert_eq!(k.tc(&udp.build(), LO), (TC_ACT_OK, 0));
    let c = k.d.counters().unwrap();
    assert_eq!(c.total(verdict::OTHER_PORT), 1);
    assert_eq!(c.total(verdict::NO_TARGET), 1);
    assert_eq!(c.total(verdict::NOT_INGRESS), 1);
    assert_eq!(c.total(verdict::NOT_TCP), 1);
}

#[test]
fn ipv6_with_extension_headers() {
    let Some(k) = Kernel::new() else { return };
    assert_eq!(
        k.tc(&Frame::tcp("2001:db8:10::10", 22).build(), LO),
        (TC_ACT_OK, MARK_STEER | 1)
    );
    let mut f = Frame::tcp("2001:db8:10::10", 22);
    f.v6_ext = vec![0, 60, 43, 51];
    assert_eq!(k.tc(&f.build(), LO), (TC_ACT_OK, MARK_STEER | 1));
    f.dport = 80;
    assert_eq!(k.tc(&f.build(), LO), (TC_ACT_OK, 0));
    // A fragment of a flow to a target cannot be vouched for: dropped, never forwarded.
    let mut frag = Frame::tcp("2001:db8:10::10", 22);
    frag.v6_ext = vec![44];
    assert_eq!(k.tc(&frag.build(), LO).0, TC_ACT_SHOT);
    assert_eq!(k.xdp(&frag.build()), XDP_DROP);
    // Too many extension headers: dropped.
    let mut long = Frame::tcp("2001:db8:10::10", 22);
    long.v6_ext = vec![60; 7];
    assert_eq!(k.tc(&long.build(), LO).0, TC_ACT_SHOT);
}

#[test]
fn ipv4_options_and_fragments() {
    let Some(k) = Kernel::new() else { return };
    for opt in [4, 8, 20, 40] {
        let mut f = Frame::tcp("198.18.10.10", 22);
        f.v4_options = opt;
        assert_eq!(
            k.tc(&f.build(), LO),
            (TC_ACT_OK, MARK_STEER | 1),
            "{opt} option bytes"
        );
    }
    let mut f = Frame::tcp("198.18.10.10", 22);
    f.more_fragments = true;
    assert_eq!(k.tc(&f.build(), LO).0, TC_ACT_SHOT);
    assert_eq!(k.xdp(&f.build()), XDP_DROP);
}

/// Found by the differential fuzzer: TCP behind an IPv4 authentication header was left
/// alone (`NOT_TCP`) and so forwarded to the protected port untouched.
#[test]
fn ipv4_authentication_header_is_walked() {
    let Some(k) = Kernel::new() else { return };
    let ah = |dport: u16, next: u8| {
        let mut f = Frame::tcp("198.18.10.10", dport).build();
        f.splice(34..34, [next, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        f[14 + 9] = 51;
        let total = u16::from_be_bytes([f[16], f[17]]) + 12;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f
    };
    assert_eq!(k.tc(&ah(22, 6), LO), (TC_ACT_OK, MARK_STEER | 1));
    assert_eq!(k.tc(&ah(80, 6), LO), (TC_ACT_OK, 0));
    assert_eq!(k.tc(&ah(22, 17), LO), (TC_ACT_OK, 0), "UDP behind AH is not TCP");
    // Cut inside the AH or the TCP header behind it: dropped, never forwarded.
    let full = ah(22, 6);
    for len in [35, 40, 50] {
        assert!(k.verdict(&full[..len]).0, "cut to {len}");
    }
    assert_eq!(k.xdp(&ah(22, 6)), XDP_PASS);
}

#[test]
fn vlan_tags_select_the_vnet() {
    let Some(k) = Kernel::new() else { return };
    // VLAN 100 on lo is vnet "lab", where 198.18.10.10 protects 2222, not 22.
    assert_eq!(
        k.tc(&Frame::tcp("198.18.10.10", 2222).vlan(100).build(), LO),
        (TC_ACT_OK, MARK_STEER | 2)
    );
    assert_eq!(
        k.tc(&Frame::tcp("198.18.10.10", 22).vlan(100).build(), LO),
        (TC_ACT_OK, 0)
    );
    // Untagged: vnet "corp".
    assert_eq!(
        k.tc(&Frame::tcp("198.18.10.10", 2222).build(), LO),
        (TC_ACT_OK, 0)
    );
    // Unknown VLAN: not an ingress of any vnet.
    assert_eq!(
        k.tc(&Frame::tcp("198.18.10.10", 22).vlan(200).build(), LO),
        (TC_ACT_OK, 0)
    );
    // 802.1ad outer tag + 802.1Q inner tag: the inner one names the network.
    let mut qinq = Frame::tcp("198.18.10.10", 2222);
    qinq.tags = vec![(0x88a8, 7), (0x8100, 100)];
    assert_eq!(k.tc(&qinq.build(), LO), (TC_ACT_OK, MARK_STEER | 2));
    assert_eq!(k.xdp(&qinq.build()), XDP_PASS);
}

/// Priority tags (VLAN 0) name no network: the kernel strips them wherever they are and
/// delivers the frame by its other tag (or untagged). A lab client's frame tagged
/// `[VLAN 100][VLAN 0]` reaches `lo.100`, so it is lab's; read by its inner tag it would
/// have been no vnet's and passed unsteered to a lab target. Past `MAX_TAGS` tags a frame
/// is dropped: the kernel would strip any number of priority tags and route it.
#[test]
fn priority_tags_are_skipped_as_the_kernel_skips_them() {
    let Some(k) = Kernel::new() else { return };
    let tagged = |tags: &[(u16, u16)], dst: &str, port: u16| {
        let mut f = Frame::tcp(dst, port);
        f.tags = tags.to_vec();
        f.build()
    };
    for tags in [
        &[(0x8100, 100), (0x8100, 0)][..],
        &[(0x8100, 0), (0x8100, 100)],
        &[(0x8100, 0), (0x8100, 100), (0x8100, 0), (0x8100, 0)],
        &[(0x88a8, 0), (0x8100, 100)],
    ] {
        assert_eq!(
            k.tc(&tagged(tags, "198.18.10.10", 2222), LO),
            (TC_ACT_OK, MARK_STEER | 2),
            "{tags:x?}"
        );
    }
    // Only priority tags: untagged, vnet "corp", whose 198.18.10.10 protects 22.
    for n in 1..=parse::MAX_TAGS {
        let tags = vec![(0x8100, 0); n];
        assert_eq!(
            k.tc(&tagged(&tags, "198.18.10.10", 22), LO),
            (TC_ACT_OK, MARK_STEER | 1),
            "{n} priority tags"
        );
    }
    // One tag too many, whatever it is for: dropped by both programs.
    let tags = vec![(0x8100, 0); parse::MAX_TAGS + 1];
    for (dst, port) in [("198.18.10.10", 22), ("198.18.99.99", 80)] {
        assert_eq!(k.xdp(&tagged(&tags, dst, port)), XDP_DROP);
        assert_eq!(k.tc(&tagged(&tags, dst, port), LO).0, TC_ACT_SHOT);
    }
}

/// Issue 11 #5: a NIC that strips the VLAN tag before XDP shows a tagged frame as
/// untagged, so on an interface with VLAN vnets XDP leaves such frames to TC (which sees
/// the stripped tag in `skb->vlan_tci`); and steered flows of a VLAN arrive on the VLAN
/// device, whose ifindex sk_lookup must accept. What test runs cannot show: a tag in
/// `skb->vlan_tci` (the kernel refuses VLAN fields in a test run's context), sk_lookup's
/// `ingress_ifindex` (it must be zero in a test run) and a real VLAN device (no 8021q here).
#[test]
fn vlan_trunks_leave_untagged_frames_to_tc_and_vlan_devices_reach_the_proxy() {
    use portcullis::dataplane::interfaces::{Interfaces, VlanDevice};
    use portcullis_common::{INGRESS_DEFER_UNTAGGED, INGRESS_VLAN_DEVICE};
    let Some(mut k) = Kernel::new() else { return };
    // lo standing in for a NIC (not known to be loopback), with a VLAN device for VLAN 100
    // and one for an unconfigured VLAN.
    let ifs = Interfaces {
        index: [("lo".to_string(), LO)].into_iter().collect(),
        vlans: vec![
            VlanDevice {
                ifindex: 4242,
                parent: LO,
                vid: 100,
            },
            VlanDevice {
                ifindex: 4243,
                parent: LO,
                vid: 300,
            },
        ],
        loopback: Default::default(),
    };
    k.d.apply_with(&set(), &ifs).unwrap();
    assert_ne!(k.d.ingress_entry(LO).unwrap() & INGRESS_DEFER_UNTAGGED, 0);
    assert_eq!(k.d.ingress_entry(4242).unwrap(), INGRESS_VLAN_DEVICE);
    assert_eq!(k.d.ingress_entry(4243).unwrap(), 0, "VLAN 300 is no vnet's");
    let all = |k: &Kernel| -> u64 { (0..7).map(|v| k.d.counters().unwrap().total(v)).sum() };

    let before = all(&k);
    let untagged = Frame::tcp("198.18.10.10", 22).build();
    assert_eq!(k.xdp(&untagged), XDP_PASS);
    assert_eq!(all(&k), before, "XDP deferred the frame: no verdict, no count");
    assert_eq!(k.tc(&untagged, LO), (TC_ACT_OK, MARK_STEER | 1), "TC decides");
    // Fragments are still dropped, by TC.
    let mut frag = Frame::tcp("198.18.10.10", 22);
    frag.more_fragments = true;
    assert_eq!(k.xdp(&frag.build()), XDP_PASS);
    assert_eq!(k.tc(&frag.build(), LO).0, TC_ACT_SHOT);
    // A tag XDP can see is classified there as before.
    let steered = k.d.counters().unwrap().total(verdict::STEERED);
    assert_eq!(
        k.xdp(&Frame::tcp("198.18.10.10", 2222).vlan(100).build()),
        XDP_PASS
    );
    assert_eq!(k.d.counters().unwrap().total(verdict::STEERED), steered + 1);

    // The VLAN device goes away: its entry with it.
    let gone = Interfaces {
        vlans: vec![],
        ..ifs.clone()
    };
    k.d.apply_with(&set(), &gone).unwrap();
    assert_eq!(k.d.ingress_entry(4242).unwrap(), 0);
    // lo as itself (a loopback device cannot strip tags): XDP classifies untagged frames.
    k.d.apply(&set()).unwrap();
    assert_eq!(k.d.ingress_entry(LO).unwrap() & INGRESS_DEFER_UNTAGGED, 0);
    let steered = k.d.counters().unwrap().total(verdict::STEERED);
    assert_eq!(k.xdp(&untagged), XDP_PASS);
    assert_eq!(k.d.counters().unwrap().total(verdict::STEERED), steered + 1);
}

/// Issue 11 #2, in the kernel: the egress guard drops an upstream packet whose vnet is not
/// the vnet of the interface it leaves through.
#[test]
fn egress_guard_checks_the_upstream_vnet() {
    use portcullis::dataplane::interfaces::Interfaces;
    let Some(mut k) = Kernel::new() else { return };
    let mut s = set();
    s.vnets[0].upstream = vec!["lo".into()];
    let ifs = Interfaces {
        index: [("lo".to_string(), LO)].into_iter().collect(),
        ..Default::default()
    };
    k.d.apply_with(&s, &ifs).unwrap();
    let fd = k.d.program_fd(program::TC_GUARD).unwrap();
    let pkt = Frame::tcp("198.18.10.10", 22).build();
    let run = |mark: u32, ifindex: u32| {
        let ctx = SkBuffCtx {
            mark,
            ifindex,
            ..Default::default()
        };
        testrun::tc(&fd, &pkt, ctx).unwrap().0.retval
    };
    assert_eq!(
        run(0x4000_0001, LO),
        TC_ACT_OK,
        "corp's upstream on corp's interface"
    );
    assert_eq!(
        run(0x4000_0002, LO),
        TC_ACT_SHOT,
        "lab's upstream on corp's interface"
    );
    assert_eq!(run(0x8000_0001, LO), TC_ACT_SHOT, "steered packets never leave");
    assert_eq!(run(0, LO), TC_ACT_OK, "the gateway's own traffic");
    assert_eq!(run(0x1234, LO), TC_ACT_OK, "others' marks");
}

fn well_formed() -> Vec<Frame> {
    let mut v = vec![
        Frame::tcp("198.18.10.10", 22),
        Frame::tcp("198.18.10.10", 80),
        Frame::tcp("2001:db8:10::10", 22),
        Frame::tcp("198.18.10.10", 2222).vlan(100),
        Frame::tcp("198.18.99.1", 22),
    ];
    let mut o = Frame::tcp("198.18.10.10", 22);
    o.v4_options = 12;
    v.push(o);
    let mut e = Frame::tcp("2001:db8:10::10", 22);
    e.v6_ext = vec![0, 60];
    v.push(e);
    v
}

#[test]
fn truncated_packets_are_never_steered_and_never_forwarded_to_a_target() {
    let Some(k) = Kernel::new() else { return };
    let m = Model::new(&set());
    for f in well_formed() {
        let full = f.build();
        let base = k.tc(&full, LO);
        // The kernel refuses test runs of a bare 14-byte Ethernet header.
        for len in 15..full.len() {
            let cut = &full[..len];
            let (dropped, steered) = k.verdict(cut);
            assert!(!steered, "{f:?} cut to {len} was steered");
            let expect = model_verdict(&m, cut);
            assert_eq!(
                dropped,
                expect.verdict == verdict::DROPPED,
                "{f:?} cut to {len}: model {expect:?}"
            );
            // Once the packet is known to go to a target, a cut TCP header is dropped.
            if expect.target != 0 && expect.verdict != verdict::NOT_TCP {
                assert!(dropped, "{f:?} cut to {len} would be forwarded to a target");
            }
        }
        // Payload bytes never change the verdict.
        let mut g = f.clone();
        g.payload = 1000;
        assert_eq!(k.tc(&g.build(), LO), base, "{f:?} with payload");
    }
}

#[test]
fn random_mutations_agree_with_the_model() {
    let Some(k) = Kernel::new() else { return };
    let m = Model::new(&set());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bases: Vec<Vec<u8>> = well_formed().iter().map(Frame::build).collect();
    let mut steered = 0;
    for i in 0..20_000 {
        let mut pkt = if i % 4 == 0 {
            // Pure noise.
            let len = 15 + rng.below(120) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            bases[rng.below(bases.len() as u64) as usize].clone()
        };
        for _ in 0..=rng.below(4) {
            let at = rng.below(pkt.len().min(80) as u64) as usize;
            pkt[at] = rng.next() as u8;
        }
        if rng.below(3) == 0 {
            let len = 15 + rng.below((pkt.len() - 14) as u64) as usize;
            pkt.truncate(len);
        }
        let (dropped, is_steered) = k.verdict(&pkt);
        let expect = model_verdict(&m, &pkt);
        assert_eq!(
            is_steered,
            expect.mark != 0,
            "packet {pkt:02x?}: model {expect:?}"
        );
        assert_eq!(
            dropped,
            expect.verdict == verdict::DROPPED,
            "packet {pkt:02x?}: model {expect:?}"
        );
        if is_steered {
            steered += 1;
        }
    }
    assert!(
        steered > 100,
        "mutations should keep many packets steerable: {steered}"
    );
}

/// Addresses in 2001:db8::/32 whose table home slot (in vnet 1) is the same. (Consecutive
/// addresses never collide: the multiplicative hash spreads them evenly.)
fn colliding(n: usize) -> Vec<std::net::Ipv6Addr> {
    use portcullis_common::{addr_hash, addr_words, home_slot};
    let home = |a: std::net::Ipv6Addr| home_slot(addr_hash(1, &addr_words(&a.octets())));
    let addr = |i: u32| std::net::Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
    let h = home(addr(0));
    let out: Vec<_> = (0u32..1 << 24)
        .map(addr)
        .filter(|a| home(*a) == h)
        .take(n)
        .collect();
    assert_eq!(out.len(), n, "found {} colliding addresses", out.len());
    out
}

#[test]
fn colliding_targets_spill_into_the_overflow_map_and_stay_protected() {
    let Some(mut k) = Kernel::new() else { return };
    let addrs = colliding(8);
    let mut s = set();
    // Six targets share one home slot: four fit the probe window, two overflow.
    for a in &addrs[..6] {
        s.addrs.push(TargetAddr {
            target: format!("c{a}"),
            vnet: 1,
            addr: IpAddr::V6(*a),
            ports: vec![22],
        });
    }
    k.d.apply(&s).unwrap();
    for a in &addrs[..6] {
        assert_eq!(
            k.tc(&Frame::tcp(&a.to_string(), 22).build(), LO),
            (TC_ACT_OK, MARK_STEER | 1),
            "{a}"
        );
        assert_eq!(
            k.tc(&Frame::tcp(&a.to_string(), 80).build(), LO),
            (TC_ACT_OK, 0),
            "{a}"
        );
    }
    // Colliding, but not a target: probes the full window, then misses in the overflow map.
    for a in &addrs[6..] {
        assert_eq!(
            k.tc(&Frame::tcp(&a.to_string(), 22).build(), LO),
            (TC_ACT_OK, 0),
            "{a}"
        );
    }
    // Removing the in-table ones leaves the overflowed ones protected after the rebuild.
    let keep: Vec<_> = s
        .addrs
        .iter()
        .filter(|t| !addrs[..2].iter().any(|a| t.addr == IpAddr::V6(*a)))
        .cloned()
        .collect();
    s.addrs = keep;
    k.d.apply(&s).unwrap();
    for a in &addrs[2..6] {
        assert_eq!(
            k.tc(&Frame::tcp(&a.to_string(), 22).build(), LO),
            (TC_ACT_OK, MARK_STEER | 1),
            "{a}"
        );
    }
    for a in &addrs[..2] {
        assert_eq!(
            k.tc(&Frame::tcp(&a.to_string(), 22).build(), LO),
            (TC_ACT_OK, 0),
            "{a} removed"
        );
    }
}

#[test]
fn updates_change_verdicts_and_keep_address_ids() {
    let Some(mut k) = Kernel::new() else { return };
    let first = k.d.apply(&set()).unwrap();
    let mut s = set();
    // web-01's IPv4 address now protects 22 and 2200; its IPv6 address is gone; a new
    // target with more ports than fit inline appears.
    s.addrs[0].ports = vec![22, 2200];
    s.addrs.remove(1);
    let many: Vec<u16> = (1000..1012).collect();
    s.addrs.push(TargetAddr {
        target: "db-01".into(),
        vnet: 1,
        addr: "198.18.10.20".parse().unwrap(),
        ports: many.clone(),
    });
    let second = k.d.apply(&s).unwrap();
    assert_eq!(
        first[0].id, second[0].id,
        "an address keeps its id across updates"
    );
    assert_eq!(
        k.tc(&Frame::tcp("198.18.10.10", 2200).build(), LO),
        (TC_ACT_OK, MARK_STEER | 1)
    );
    assert_eq!(
        k.tc(&Frame::tcp("2001:db8:10::10", 22).build(), LO),
        (TC_ACT_OK, 0)
    );
    for p in many {
        assert_eq!(
            k.tc(&Frame::tcp("198.18.10.20", p).build(), LO),
            (TC_ACT_OK, MARK_STEER | 1),
            "port {p}"
        );
    }
    assert_eq!(k.tc(&Frame::tcp("198.18.10.20", 999).build(), LO), (TC_ACT_OK, 0));
}
