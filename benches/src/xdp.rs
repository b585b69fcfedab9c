//! XDP classifier cost per packet, through BPF_PROG_TEST_RUN (the kernel's own timing over
//! ≥ 1M repeats): a no-op XDP program as the baseline, a miss (TCP to a non-target address
//! on an ingress interface) and a hit (protected port), IPv4 and IPv6. The maps hold 10 000
//! target addresses so the LPM trie has a realistic size. Runs are interleaved and the
//! median of each is reported.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context, Result};
use portcullis::{
    dataplane::{testrun, Detached},
    targets::{Ingress, TargetAddr, TargetSet, Vnet},
};
use portcullis_common::program;
use serde_json::{Map, Value};

use crate::median;

const TARGETS: usize = 10_000;

fn frame(dst: IpAddr, dport: u16) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    let tcp = |p: &mut Vec<u8>| {
        p.extend_from_slice(&40000u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    };
    match dst {
        IpAddr::V4(d) => {
            p.extend_from_slice(&[
                0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 1, 2,
            ]);
            p.extend_from_slice(&d.octets());
        }
        IpAddr::V6(d) => {
            p.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
            p.extend_from_slice(&"2001:db8:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            p.extend_from_slice(&d.octets());
        }
    }
    tcp(&mut p);
    p
}

fn set() -> TargetSet {
    let addrs = (0..TARGETS)
        .flat_map(|i| {
            let (hi, lo) = ((i >> 8) as u8, i as u8);
            [
                TargetAddr {
                    target: format!("t{i}"),
                    vnet: 1,
                    addr: IpAddr::from([198, 19, hi, lo]),
                    ports: vec![22],
                },
                TargetAddr {
                    target: format!("t{i}"),
                    vnet: 1,
                    addr: format!("2001:db8:10::{hi:x}:{lo:x}").parse().unwrap(),
                    ports: vec![22],
                },
            ]
        })
        .collect();
    TargetSet {
        vnets: vec![Vnet {
            name: "bench".into(),
            id: 1,
            ingress: vec![Ingress {
                interface: "lo".into(),
                vlan: None,
            }],
            upstream: vec![],
            table: None,
        }],
        addrs,
    }
}

pub fn run(quick: bool) -> Result<Map<String, Value>> {
    let dir = PathBuf::from("/sys/fs/bpf").join(format!("portcullis-bench-{}", std::process::id()));
    let mut d = Detached::load(&dir).context("load the BPF object (needs root and bpffs)")?;
    d.apply(&set())?;
    let noop = d.program_fd(program::XDP_NOOP)?;
    let classify = d.program_fd(program::XDP_CLASSIFY)?;
    let (repeat, runs) = if quick { (1_000_000, 3) } else { (2_000_000, 9) };

    let cases: Vec<(String, IpAddr, u16)> = vec![
        ("v4".into(), "198.19.10.20".parse()?, 22),
        ("v6".into(), "2001:db8:10::a:14".parse()?, 22),
    ];
    let mut m = Map::new();
    let mut worst = [0f64; 3];
    for (fam, hit_dst, port) in cases {
        let miss_dst: IpAddr = if hit_dst.is_ipv4() {
            "198.18.200.1".parse()?
        } else {
            "2001:db8:200::1".parse()?
        };
        // noop and hit see the same packet; miss goes to an address that is not a target.
        let pkts = [frame(hit_dst, port), frame(miss_dst, port), frame(hit_dst, port)];
        let progs = [&noop, &classify, &classify];
        let mut samples = [vec![], vec![], vec![]];
        for _ in 0..runs {
            for k in 0..3 {
                let r = testrun::xdp(progs[k], &pkts[k], repeat)?;
                samples[k].push(r.duration_ns as f64);
            }
        }
        for (k, name) in ["noop", "miss", "hit"].iter().enumerate() {
            let v = median(samples[k].clone());
            worst[k] = worst[k].max(v);
            m.insert(format!("xdp.{name}_ns.{fam}"), v.into());
        }
    }
    for (k, name) in ["noop", "miss", "hit"].iter().enumerate() {
        m.insert(format!("xdp.{name}_ns"), worst[k].into());
    }
    Ok(m)
}
