//! Crafts Ethernet frames for BPF_PROG_TEST_RUN: VLAN tags, IPv4 with options and
//! fragments, IPv6 with extension headers, TCP. Checksums are not filled in: the classifier
//! does not read them.

use std::net::IpAddr;

#[derive(Clone, Debug)]
pub struct Frame {
    /// (TPID, VLAN id) tags, outermost first.
    pub tags: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 option bytes (padded to a multiple of 4).
    pub v4_options: usize,
    /// IPv6 extension headers by next-header number (0, 43, 60, 51, 44).
    pub v6_ext: Vec<u8>,
    /// IPv4: set the more-fragments flag.
    pub more_fragments: bool,
    pub payload: usize,
}

impl Frame {
    pub fn tcp(dst: &str, dport: u16) -> Self {
        let dst: IpAddr = dst.parse().unwrap();
        let src: IpAddr = if dst.is_ipv4() {
            "198.18.1.2".parse().unwrap()
        } else {
            "2001:db8:1::2".parse().unwrap()
        };
        Self {
            tags: vec![],
            src,
            dst,
            proto: 6,
            sport: 40000,
            dport,
            v4_options: 0,
            v6_ext: vec![],
            more_fragments: false,
            payload: 0,
        }
    }

    pub fn vlan(mut self, vid: u16) -> Self {
        self.tags.push((0x8100, vid));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for (tpid, vid) in &self.tags {
            p.extend_from_slice(&tpid.to_be_bytes());
            p.extend_from_slice(&vid.to_be_bytes());
        }
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                p.extend_from_slice(&0x0800u16.to_be_bytes());
                let opt = self.v4_options.div_ceil(4) * 4;
                let ihl = (20 + opt) / 4;
                let total = (20 + opt + l4.len()) as u16;
                p.push(0x40 | ihl as u8);
                p.push(0);
                p.extend_from_slice(&total.to_be_bytes());
                p.extend_from_slice(&[0x12, 0x34]);
                p.extend_from_slice(&(if self.more_fragments { 0x2000u16 } else { 0x4000 }).to_be_bytes());
                p.push(64);
                p.push(self.proto);
                p.extend_from_slice(&[0, 0]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                // Options: NOPs, then end-of-list.
                for i in 0..opt {
                    p.push(if i + 1 == opt { 0 } else { 1 });
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                p.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ext = Vec::new();
                let kinds: Vec<u8> = self
                    .v6_ext
                    .iter()
                    .copied()
                    .chain(std::iter::once(self.proto))
                    .collect();
                for w in kinds.windows(2) {
                    let (kind, next) = (w[0], w[1]);
                    match kind {
                        44 => ext.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0, 1]),
                        51 => ext.extend_from_slice(&[next, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                        _ => ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
                    }
                }
                let first = kinds[0];
                p.extend_from_slice(&[0x60, 0, 0, 0]);
                p.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                p.push(first);
                p.push(64);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(&ext);
            }
            _ => panic!("mixed address families"),
        }
        p.extend_from_slice(&l4);
        p
    }

    fn l4(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(20 + self.payload);
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend((0..self.payload).map(|i| i as u8));
        t
    }
}

/// A small deterministic generator (xorshift64*): reproducible fuzzing without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
