//! Split-tunnel arithmetic: turn WARP-style "include" and "exclude" CIDR lists into the minimal,
//! non-overlapping list of prefixes covering exactly (union of includes) minus (union of excludes).
//!
//! Every address family is handled as inclusive `u128` ranges (IPv4 in the low 32 bits), because
//! inclusive ends never need the value one past the top of the address space.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix. `addr` is the network address: parsing clears any host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

/// Every variant carries the whole input first, so the message points at the offending list entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// (input, address part)
    #[error("{0:?}: {1:?} is not an IPv4 or IPv6 address")]
    BadAddress(String, String),
    /// (input, length part)
    #[error("{0:?}: prefix length {1:?} is not a decimal number")]
    BadLength(String, String),
    /// (input, length part, longest length for the family)
    #[error("{0:?}: prefix length {1} is longer than {2}")]
    TooLong(String, String, u8),
    /// (input): an IPv4-mapped IPv6 prefix shorter than /96 also covers non-mapped IPv6.
    #[error("{0:?}: an IPv4-mapped prefix must be /96 or longer (write IPv4 prefixes as a.b.c.d/n)")]
    MappedTooShort(String),
    /// (input, the prefix it names)
    #[error("{0:?}: host bits are set (did you mean {1}?)")]
    HostBits(String, String),
}

/// Inclusive `(start, end)` range of address values within one family.
type Range = (u128, u128);

/// Mask of the low `host_bits` bits; 128 host bits (`::/0`) is the whole `u128`.
fn host_mask(host_bits: u32) -> u128 {
    1u128.checked_shl(host_bits).unwrap_or(0).wrapping_sub(1)
}

fn ip(v4: bool, value: u128) -> IpAddr {
    match v4 {
        true => Ipv4Addr::from(value as u32).into(),
        false => Ipv6Addr::from(value).into(),
    }
}

impl Cidr {
    /// Builds the prefix of length `len` containing `value` (host bits are dropped).
    fn from_value(v4: bool, value: u128, len: u8) -> Cidr {
        let start = Cidr {
            addr: ip(v4, value),
            len,
        }
        .range()
        .0;
        Cidr {
            addr: ip(v4, start),
            len,
        }
    }

    /// The fields are public, so tolerate an over-long `len` or set host bits instead of panicking.
    fn range(&self) -> Range {
        let (value, bits) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let mask = host_mask(bits - u32::from(self.len).min(bits));
        (value & !mask, value | mask)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Self, CidrError> {
        let (addr_text, len_text) = match input.trim().split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (input.trim(), None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::BadAddress(input.into(), addr_text.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            // `u8::from_str` would accept "+8"; insist on plain digits.
            Some(l) if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(CidrError::BadLength(input.into(), l.into()));
            }
            Some(l) => match l.parse::<u8>() {
                Ok(len) if len <= max => len,
                _ => return Err(CidrError::TooLong(input.into(), l.into(), max)),
            },
        };
        // One notation per address: `::ffff:a.b.c.d/n` is the IPv4 prefix a.b.c.d/(n-96), as
        // the kernel, the dataplane and every lookup (which canonicalise peers the same way)
        // see it. Keeping the IPv6 form would make a selector or identity silently miss.
        let (addr, len) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if len >= 96 => (IpAddr::V4(v4), len - 96),
                Some(_) => return Err(CidrError::MappedTooShort(input.into())),
                None => (addr, len),
            },
            other => (other, len),
        };
        Ok(Cidr::from_value(
            addr.is_ipv4(),
            Cidr { addr, len }.range().0,
            len,
        ))
    }
}

impl Cidr {
    /// Parses `input` as written: an address (a /32 or /128) or a prefix whose host bits are
    /// zero. Where a prefix says who someone is or what a rule covers, `198.18.1.5/0` (a
    /// typo of /32) must not quietly become every address.
    pub fn exact(input: &str) -> Result<Cidr, CidrError> {
        let c: Cidr = input.parse()?;
        let written = input.trim().split('/').next().and_then(|a| a.parse().ok());
        if written.map(crate::targets::canonical) != Some(c.addr) {
            return Err(CidrError::HostBits(input.into(), c.to_string()));
        }
        Ok(c)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Computes (union of `include`) minus (union of `exclude`) as the minimal sorted list of disjoint
/// prefixes, IPv4 before IPv6.
pub fn split(include: &[Cidr], exclude: &[Cidr]) -> Vec<Cidr> {
    let mut out = Vec::new();
    for v4 in [true, false] {
        let ranges = |list: &[Cidr]| {
            merge(
                list.iter()
                    .filter(|c| c.addr.is_ipv4() == v4)
                    .map(Cidr::range)
                    .collect(),
            )
        };
        for (start, end) in subtract(&ranges(include), &ranges(exclude)) {
            decompose(v4, start, end, &mut out);
        }
    }
    out
}

/// Sorts and coalesces overlapping or touching ranges, so later steps see each gap exactly once.
fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Both inputs must be merged. Excludes are then sorted and separated by gaps, which is what
/// keeps `xs - 1` and `xe + 1` from wrapping.
fn subtract(include: &[Range], exclude: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    for &(first, end) in include {
        let mut start = Some(first);
        for &(xs, xe) in exclude.iter().filter(|&&(xs, xe)| xe >= first && xs <= end) {
            let Some(s) = start else { break };
            if xs > s {
                out.push((s, xs - 1));
            }
            start = if xe >= end { None } else { Some(xe + 1) };
        }
        if let Some(s) = start {
            out.push((s, end));
        }
    }
    out
}

/// Greedy: the largest block that is aligned at `start` and fits in the range yields the fewest
/// prefixes, and the blocks come out in address order.
fn decompose(v4: bool, mut start: u128, end: u128, out: &mut Vec<Cidr>) {
    let bits = if v4 { 32 } else { 128 };
    loop {
        let span = end - start; // block size minus one, so the full space still fits
        let fits = if span == u128::MAX {
            128
        } else {
            (span + 1).ilog2()
        };
        let host_bits = start.trailing_zeros().min(fits).min(bits);
        out.push(Cidr::from_value(v4, start, (bits - host_bits) as u8));
        let last = start | host_mask(host_bits);
        if last >= end {
            return;
        }
        start = last + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Space-separated prefix lists in and out keep the expected values readable.
    fn run(include: &str, exclude: &str) -> String {
        let parse = |list: &str| {
            list.split_whitespace()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<Cidr>>()
        };
        let out = split(&parse(include), &parse(exclude));
        out.iter().map(Cidr::to_string).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn cloudflare_docs_example() {
        let out = run("172.16.0.0/12", "172.31.0.0/16");
        assert_eq!(out, "172.16.0.0/13 172.24.0.0/14 172.28.0.0/15 172.30.0.0/16");
    }

    #[test]
    fn ipv6_and_mixed_families() {
        assert_eq!(run("2001:db8::/32", "2001:db8:8000::/33"), "2001:db8::/33");
        let out = run("2001:db8::/32 10.0.0.0/8", "2001:db8::/33 10.0.0.0/9");
        assert_eq!(out, "10.128.0.0/9 2001:db8:8000::/33");
    }

    #[test]
    fn merges_includes() {
        assert_eq!(run("10.128.0.0/9 10.0.0.0/9", ""), "10.0.0.0/8");
        assert_eq!(run("10.0.0.0/8 10.1.0.0/16 10.0.0.0/8", ""), "10.0.0.0/8");
        assert_eq!(run("10.0.0.0/9 10.128.0.0/10 10.192.0.0/10", ""), "10.0.0.0/8");
    }

    #[test]
    fn exclude_everything_or_nothing() {
        assert_eq!(run("10.1.0.0/16", "10.0.0.0/8"), "");
        assert_eq!(run("10.1.0.0/16", "10.1.0.0/17 10.1.128.0/17"), "");
        assert_eq!(run("10.1.0.0/16", "192.168.0.0/16 2001:db8::/32"), "10.1.0.0/16");
        assert_eq!(run("", "10.0.0.0/8"), "");
    }

    #[test]
    fn top_and_bottom_of_address_space() {
        assert_eq!(run("0.0.0.0/0", "0.0.0.0/1"), "128.0.0.0/1");
        assert_eq!(run("0.0.0.0/0 ::/0", ""), "0.0.0.0/0 ::/0");
        assert_eq!(run("::/0", "::/1"), "8000::/1");
        assert_eq!(run("255.255.255.255", ""), "255.255.255.255/32");
        let out = run("0.0.0.0/0 ::/0", "255.255.255.255/32 ::/128");
        let out: Vec<&str> = out.split(' ').collect();
        assert_eq!(out.len(), 32 + 128);
        assert_eq!(
            [out[0], out[31], out[32], out[159]],
            ["0.0.0.0/1", "255.255.255.254/32", "::1/128", "8000::/1"]
        );
    }

    #[test]
    fn parsing() {
        let ok = |s: &str| s.parse::<Cidr>().unwrap().to_string();
        assert_eq!(ok("10.1.2.3"), "10.1.2.3/32");
        assert_eq!(ok(" 10.1.2.3/8 "), "10.0.0.0/8");
        assert_eq!(ok("2001:db8::1"), "2001:db8::1/128");
        assert_eq!(ok("2001:db8::1/32"), "2001:db8::/32");
        // IPv4-mapped notation is the IPv4 prefix (issue 11 #3: an exclude written this way
        // did not exclude 127.0.0.1).
        assert_eq!(ok("::ffff:127.0.0.0/104"), "127.0.0.0/8");
        assert_eq!(ok("::ffff:198.18.10.10"), "198.18.10.10/32");
        assert_eq!(ok("::FFFF:c612:0a0a/128"), "198.18.10.10/32");
        assert_eq!(ok("::ffff:0:0/96"), "0.0.0.0/0");
        assert_eq!(ok("::/0"), "::/0");
        let err = |s: &str| s.parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(
            err("172.16.0.0/33"),
            r#""172.16.0.0/33": prefix length 33 is longer than 32"#
        );
        assert_eq!(
            err("::ffff:0:0/95"),
            r#""::ffff:0:0/95": an IPv4-mapped prefix must be /96 or longer (write IPv4 prefixes as a.b.c.d/n)"#
        );
        assert_eq!(err("::/129"), r#""::/129": prefix length 129 is longer than 128"#);
        assert_eq!(err("::/999"), r#""::/999": prefix length 999 is longer than 128"#);
        assert_eq!(
            err("10.0.0/8"),
            r#""10.0.0/8": "10.0.0" is not an IPv4 or IPv6 address"#
        );
        assert_eq!(
            err("10.0.0.0/+8"),
            r#""10.0.0.0/+8": prefix length "+8" is not a decimal number"#
        );
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::BadLength(..))
        ));
        assert!(matches!("".parse::<Cidr>(), Err(CidrError::BadAddress(..))));
    }

    /// Inside 10.0.0.0/8 and 2001:db8::/32. Half the draws are short prefixes, which land on a coarse
    /// grid and so nest, abut and pair up as siblings often; the rest cover every length.
    fn prefix() -> impl Strategy<Value = Cidr> {
        let v4 = (any::<u32>(), prop_oneof![8u8..=12, 8u8..=32])
            .prop_map(|(x, len)| Cidr::from_value(true, u128::from(0x0A00_0000 | (x & 0x00FF_FFFF)), len));
        let v6 = (any::<u128>(), prop_oneof![32u8..=36, 32u8..=128])
            .prop_map(|(x, len)| Cidr::from_value(false, 0x2001_0db8 << 96 | (x & host_mask(96)), len));
        prop_oneof![3 => v4, 1 => v6]
    }

    fn contains(c: &Cidr, v4: bool, x: u128) -> bool {
        let (start, end) = c.range();
        c.addr.is_ipv4() == v4 && start <= x && x <= end
    }

    proptest! {
        #[test]
        fn split_is_exact_disjoint_minimal(
            include in vec(prefix(), 0..8),
            exclude in vec(prefix(), 0..8),
            samples in vec(prefix(), 32),
        ) {
            let out = split(&include, &exclude);
            let mut points = Vec::new();
            for c in include.iter().chain(&exclude).chain(&out).chain(&samples) {
                let (v4, (start, end)) = (c.addr.is_ipv4(), c.range());
                let top = if v4 { u128::from(u32::MAX) } else { u128::MAX };
                let after = end.checked_add(1).filter(|&x| x <= top);
                let near = [Some(start), Some(end), start.checked_sub(1), after];
                points.extend(near.into_iter().flatten().map(|x| (v4, x)));
            }
            for (v4, x) in points {
                let hit = |list: &[Cidr]| list.iter().any(|c| contains(c, v4, x));
                prop_assert_eq!(hit(&out), hit(&include) && !hit(&exclude), "{:#x} vs {:?}", x, out);
            }
            prop_assert!(out.windows(2).all(|w| w[0] < w[1]), "unsorted: {:?}", out);
            for (i, a) in out.iter().enumerate() {
                for b in &out[i + 1..] {
                    let same_family = a.addr.is_ipv4() == b.addr.is_ipv4();
                    let ((a_start, a_end), (b_start, b_end)) = (a.range(), b.range());
                    prop_assert!(!same_family || a_end < b_start || b_end < a_start, "{} overlaps {}", a, b);
                    // Siblings differ only in the bit just above the host part, so the starts XOR to the
                    // block size.
                    let size = a_end - a_start + 1;
                    let siblings = same_family && a.len == b.len && a.len > 0 && a_start ^ b_start == size;
                    prop_assert!(!siblings, "{} and {} should have been merged", a, b);
                }
            }
        }
    }
}
