//! Who is connecting: the registry that maps a client's (vnet, source address) to an
//! identity — the stand-in for the WARP client's authenticated device identity. Identity
//! never comes from anything the client says.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use crate::{split_tunnel::Cidr, targets::canonical};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub email: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The part before '@' (seed 002: jdoe@example.com logs in as `jdoe`).
    pub fn email_prefix(&self) -> &str {
        self.email.split('@').next().unwrap_or(&self.email)
    }

    pub fn email_domain(&self) -> &str {
        self.email.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// Longest-prefix match of source addresses, per vnet. Lookups cost one hash probe per
/// distinct prefix length in use, whatever the number of identities.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    identities: Vec<Identity>,
    /// vnet → prefix length (longest first) → network address → identity index.
    by_vnet: HashMap<u16, BTreeMap<std::cmp::Reverse<u8>, HashMap<u128, usize>>>,
}

/// Two identities claim the same source prefix in the same vnet.
#[derive(Debug, thiserror::Error)]
#[error("source {prefix} in vnet {vnet} is already used by {other}")]
pub struct Conflict {
    pub prefix: Cidr,
    pub vnet: u16,
    pub other: String,
}

fn key(addr: IpAddr) -> (bool, u128) {
    match canonical(addr) {
        IpAddr::V4(a) => (true, u32::from(a) as u128),
        IpAddr::V6(a) => (false, u128::from(a)),
    }
}

/// Prefix lengths are stored on a common scale: IPv4 /n as n, IPv6 /n as 64 + n, so the
/// families never share a length bucket.
fn scaled(v4: bool, len: u8) -> u8 {
    if v4 {
        len
    } else {
        64 + len
    }
}

/// The network part of `value` for a prefix of `len` bits. `Cidr` parsing guarantees
/// `len` fits the family (mapped IPv6 prefixes become IPv4 ones); it is clamped anyway, so a
/// prefix built by hand can never underflow into a mask that matches other addresses.
fn mask(v4: bool, value: u128, len: u8) -> u128 {
    let bits: u32 = if v4 { 32 } else { 128 };
    let host = bits - u32::from(len).min(bits);
    let keep = u128::MAX.checked_shl(host).unwrap_or(0) & if v4 { u32::MAX as u128 } else { u128::MAX };
    value & keep
}

impl Registry {
    pub fn add(&mut self, identity: Identity, vnet: u16, sources: &[Cidr]) -> Result<(), Conflict> {
        let idx = self.identities.len();
        for s in sources {
            let (v4, value) = key(s.addr);
            let by_len = self.by_vnet.entry(vnet).or_default();
            let bucket = by_len.entry(std::cmp::Reverse(scaled(v4, s.len))).or_default();
            if let Some(other) = bucket.insert(mask(v4, value, s.len), idx) {
                return Err(Conflict {
                    prefix: *s,
                    vnet,
                    other: self.identities[other].email.clone(),
                });
            }
        }
        self.identities.push(identity);
        Ok(())
    }

    pub fn lookup(&self, vnet: u16, source: IpAddr) -> Option<&Identity> {
        let (v4, value) = key(source);
        let by_len = self.by_vnet.get(&vnet)?;
        for (std::cmp::Reverse(len), bucket) in by_len {
            let family_v4 = *len <= 32;
            if family_v4 != v4 {
                continue;
            }
            let plen = if v4 { *len } else { *len - 64 };
            if let Some(i) = bucket.get(&mask(v4, value, plen)) {
                return Some(&self.identities[*i]);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    pub fn by_email(&self, email: &str) -> Option<&Identity> {
        self.identities
            .iter()
            .find(|i| i.email.eq_ignore_ascii_case(email))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(e: &str) -> Identity {
        Identity {
            email: e.into(),
            groups: vec![],
        }
    }

    #[test]
    fn longest_prefix_wins_per_vnet() {
        let mut r = Registry::default();
        r.add(id("net@example.com"), 1, &["198.18.1.0/24".parse().unwrap()])
            .unwrap();
        r.add(id("host@example.com"), 1, &["198.18.1.2".parse().unwrap()])
            .unwrap();
        r.add(id("v6@example.com"), 1, &["2001:db8:1::/64".parse().unwrap()])
            .unwrap();
        r.add(id("lab@example.com"), 2, &["198.18.1.0/24".parse().unwrap()])
            .unwrap();
        let l = |v, a: &str| r.lookup(v, a.parse().unwrap()).map(|i| i.email.clone());
        assert_eq!(l(1, "198.18.1.2").as_deref(), Some("host@example.com"));
        assert_eq!(l(1, "198.18.1.3").as_deref(), Some("net@example.com"));
        assert_eq!(l(1, "::ffff:198.18.1.3").as_deref(), Some("net@example.com"));
        assert_eq!(l(1, "2001:db8:1::9").as_deref(), Some("v6@example.com"));
        assert_eq!(l(2, "198.18.1.2").as_deref(), Some("lab@example.com"));
        assert_eq!(l(1, "198.18.2.1"), None);
        assert_eq!(l(3, "198.18.1.2"), None);
    }

    #[test]
    fn duplicate_prefix_is_a_conflict() {
        let mut r = Registry::default();
        r.add(id("a@example.com"), 1, &["198.18.1.0/24".parse().unwrap()])
            .unwrap();
        let e = r
            .add(id("b@example.com"), 1, &["198.18.1.7/24".parse().unwrap()])
            .unwrap_err();
        assert!(e.to_string().contains("a@example.com"), "{e}");
    }

    #[test]
    fn mapped_notation_is_the_ipv4_prefix() {
        // Issue 11 #3: written as `::ffff:198.18.1.0/120`, the identity panicked `check`
        // (debug) or claimed `::1` (release).
        let mut r = Registry::default();
        r.add(
            id("m@example.com"),
            1,
            &["::ffff:198.18.1.0/120".parse().unwrap()],
        )
        .unwrap();
        let l = |a: &str| r.lookup(1, a.parse().unwrap()).map(|i| i.email.clone());
        assert_eq!(l("198.18.1.7").as_deref(), Some("m@example.com"));
        assert_eq!(l("::ffff:198.18.1.7").as_deref(), Some("m@example.com"));
        assert_eq!(l("::1"), None);
        assert_eq!(l("198.18.2.7"), None);
        // A prefix built by hand with a length beyond its family never matches everything.
        let mut r = Registry::default();
        let odd = Cidr {
            addr: "198.18.1.0".parse().unwrap(),
            len: 120,
        };
        r.add(id("o@example.com"), 1, &[odd]).unwrap();
        assert_eq!(r.lookup(1, "::1".parse().unwrap()), None);
    }

    #[test]
    fn email_parts() {
        let i = id("jdoe@example.com");
        assert_eq!(i.email_prefix(), "jdoe");
        assert_eq!(i.email_domain(), "example.com");
    }
}
