//! Host certificates for the derived host keys (issue 14). With `[ca] host_certificates`
//! the proxy presents its derived Ed25519 key for a target together with an OpenSSH host
//! certificate signed by the account CA, naming the target's hostname and addresses. A
//! client whose known_hosts trusts the CA for those names (`@cert-authority`, the lines
//! `portcullis ca known-hosts` prints) then accepts the gateway without a prompt, whatever
//! plain key it recorded for the real host before: OpenSSH looks a certificate's CA up
//! among `@cert-authority` lines only, and a plain line for the same name is not consulted.
//!
//! The principals and the known_hosts patterns are made here together because they must
//! agree: OpenSSH finds the `@cert-authority` line by the name the user typed (`[name]:port`
//! on a port other than 22; the `HostKeyAlias` as it is), then requires that name, without
//! the port, among the principals.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ssh_key::{
    certificate::{Builder, CertType},
    Certificate, PrivateKey, PublicKey,
};

use crate::targets::{canonical, TargetSet};

/// How long a host certificate is valid after it is minted (before, it is valid for
/// `[ca] skew_secs`, for clients whose clocks run behind). One is minted per connection, so
/// this is not a renewal period but how long that connection may go on showing it. OpenSSH
/// checks the certificate at the first key exchange and accepts the same one on a rekey
/// without looking again, but other clients (Go's `CertChecker`) check it at every key
/// exchange, so it must outlast the sessions that rekey, and it covers clocks running ahead:
/// a week does both for nearly all. Longer would gain little and widen what a derived key
/// taken from a gateway's memory, with its certificate, could impersonate to clients that
/// trust the CA.
pub const LIFETIME_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum HostCertError {
    #[error("validity {LIFETIME_SECS} s after {now} overflows the certificate's time field")]
    Validity { now: u64 },
    #[error(transparent)]
    Key(#[from] ssh_key::Error),
}

/// Each (vnet, hostname)'s principals, built once per configuration: a connection finds
/// its target's in one lookup, however many targets there are.
#[derive(Debug, Default)]
pub struct Principals(HashMap<(u16, String), Vec<String>>);

impl Principals {
    pub fn new(targets: &TargetSet) -> Self {
        let mut addrs: HashMap<(u16, String), BTreeSet<IpAddr>> = HashMap::new();
        for t in &targets.addrs {
            addrs
                .entry((t.vnet, t.target.to_ascii_lowercase()))
                .or_default()
                .insert(canonical(t.addr));
        }
        let names = addrs
            .into_iter()
            .map(|((vnet, host), ips)| {
                let mut v = vec![host.clone()];
                v.extend(ips.iter().map(IpAddr::to_string));
                ((vnet, host), v)
            })
            .collect();
        Self(names)
    }

    /// The hostname then every address of the targets named `hostname` in `vnet`.
    pub fn get(&self, vnet: u16, hostname: &str) -> Option<&[String]> {
        self.0
            .get(&(vnet, hostname.to_ascii_lowercase()))
            .map(Vec::as_slice)
    }
}

/// What to certify.
pub struct Request<'a> {
    /// The target's hostname, for the key id.
    pub hostname: &'a str,
    pub principals: &'a [String],
    /// `[ca] skew_secs`: backdating against client clocks running behind.
    pub skew_secs: u64,
    pub now: u64,
}

/// A host certificate for `key` (the derived key), signed by `ca`.
///
/// Minted per connection rather than cached: Ed25519 signing costs about 20 µs, beside
/// hundreds for the key exchange the connection is about to run, and a certificate made
/// from the configuration the connection was admitted with always names what that
/// configuration says — a cache would have to follow reloads and the target's key.
pub fn mint(ca: &PrivateKey, key: &PublicKey, r: &Request<'_>) -> Result<Certificate, HostCertError> {
    let now = r.now;
    let before = now
        .checked_add(LIFETIME_SECS)
        .ok_or(HostCertError::Validity { now })?;
    let mut rng = rand::rng();
    let mut b = Builder::new_with_random_nonce(&mut rng, key, now.saturating_sub(r.skew_secs), before)?;
    b.serial(rand::random())?
        .cert_type(CertType::Host)?
        .key_id(format!("portcullis host certificate for {}", r.hostname))?;
    for p in r.principals {
        b.valid_principal(p.as_str())?;
    }
    Ok(b.sign(ca)?)
}

/// The known_hosts host patterns that cover each protected hostname, one list per hostname
/// (lowercased, sorted): the hostname, then each of its addresses in any vnet. Each name
/// appears bare — port 22, and clients that set `HostKeyAlias` to it, as `[[listener]]`
/// clients must — and as `[name]:port` for each other port protected there (for the
/// hostname, on any of its addresses): OpenSSH looks a non-standard port up under that
/// form, IPv6 addresses included (`[2001:db8::1]:2222`; bare, an IPv6 address is written as
/// is). Principals carry no port, so all of a hostname's patterns accept the same
/// certificates.
pub fn known_hosts_patterns(targets: &TargetSet) -> Vec<Vec<String>> {
    // Per hostname: its addresses, each with the ports protected there.
    let mut hosts: BTreeMap<String, BTreeMap<IpAddr, BTreeSet<u16>>> = BTreeMap::new();
    for t in &targets.addrs {
        hosts
            .entry(t.target.to_ascii_lowercase())
            .or_default()
            .entry(canonical(t.addr))
            .or_default()
            .extend(t.ports.iter().copied());
    }
    let with_ports = |name: String, ports: &BTreeSet<u16>| {
        let other = ports
            .iter()
            .filter(|p| **p != 22)
            .map(|p| format!("[{name}]:{p}"));
        std::iter::once(name.clone()).chain(other).collect::<Vec<_>>()
    };
    hosts
        .into_iter()
        .map(|(name, addrs)| {
            let all: BTreeSet<u16> = addrs.values().flatten().copied().collect();
            let mut patterns = with_ports(name, &all);
            for (ip, ports) in &addrs {
                patterns.extend(with_ports(ip.to_string(), ports));
            }
            patterns
        })
        .collect()
}

/// The `@cert-authority` lines for a user's known_hosts: one per protected hostname, or with
/// `any_host` one line trusting the CA for every host (`*`).
pub fn known_hosts_lines(ca_line: &str, targets: &TargetSet, any_host: bool) -> Vec<String> {
    let line = |patterns: &str| format!("@cert-authority {patterns} {ca_line}");
    if any_host {
        return vec![line("*")];
    }
    known_hosts_patterns(targets)
        .iter()
        .map(|p| line(&p.join(",")))
        .collect()
}

#[cfg(test)]
mod tests {
    use ssh_key::{private::Ed25519Keypair, Algorithm, HashAlg};

    use super::*;
    use crate::targets::TargetAddr;

    fn addr(target: &str, vnet: u16, ip: &str, ports: &[u16]) -> TargetAddr {
        TargetAddr {
            target: target.into(),
            vnet,
            addr: ip.parse().unwrap(),
            ports: ports.to_vec(),
        }
    }

    fn targets() -> TargetSet {
        TargetSet {
            vnets: Vec::new(),
            addrs: vec![
                addr("Web-01", 1, "198.18.10.10", &[22, 2222]),
                addr("Web-01", 1, "2001:db8::a", &[22, 2222]),
                addr("web-01", 2, "10.0.0.10", &[22]),
                addr("db-01", 1, "2001:db8:0:0:1::b", &[22]),
            ],
        }
    }

    #[test]
    fn principals_are_the_hostname_and_its_addresses_in_the_vnet() {
        let p = Principals::new(&targets());
        assert_eq!(
            p.get(1, "web-01").unwrap(),
            ["web-01", "198.18.10.10", "2001:db8::a"]
        );
        assert_eq!(p.get(1, "WEB-01"), p.get(1, "web-01"));
        assert_eq!(p.get(2, "web-01").unwrap(), ["web-01", "10.0.0.10"]);
        assert_eq!(p.get(1, "db-01").unwrap(), ["db-01", "2001:db8::1:0:0:b"]);
        assert!(p.get(2, "db-01").is_none());
    }

    #[test]
    fn certificate_is_a_host_certificate_for_the_derived_key_signed_by_the_ca() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let key = crate::hostkey::derive(
            &[7; 32],
            &PrivateKey::from(Ed25519Keypair::from_seed(&[1; 32]))
                .public_key()
                .clone(),
        )
        .unwrap();
        let principals = Principals::new(&targets());
        let now = 1_700_000_000;
        let r = Request {
            hostname: "Web-01",
            principals: principals.get(1, "Web-01").unwrap(),
            skew_secs: 30,
            now,
        };
        let c = mint(&ca, key.public_key(), &r).unwrap();
        assert_eq!(c.cert_type(), CertType::Host);
        assert_eq!(c.algorithm(), Algorithm::Ed25519);
        assert_eq!(c.public_key(), key.public_key().key_data());
        assert_eq!(c.signature_key(), ca.public_key().key_data());
        assert_eq!(c.valid_principals(), ["web-01", "198.18.10.10", "2001:db8::a"]);
        assert_eq!(c.key_id(), "portcullis host certificate for Web-01");
        assert_eq!(c.valid_after(), now - 30);
        assert_eq!(c.valid_before(), now + LIFETIME_SECS);
        assert!(c.critical_options().is_empty() && c.extensions().is_empty());
        let fp = ca.public_key().fingerprint(HashAlg::Sha256);
        c.validate_at(now, [&fp]).unwrap();
        c.validate_at(now - 30, [&fp]).unwrap();
        assert!(c.validate_at(now - 31, [&fp]).is_err(), "not before now − skew");
        assert!(c.validate_at(now + LIFETIME_SECS, [&fp]).is_err(), "expires");
        let other = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        assert!(c
            .validate_at(now, [&other.public_key().fingerprint(HashAlg::Sha256)])
            .is_err());
        assert_ne!(c.serial(), mint(&ca, key.public_key(), &r).unwrap().serial());
    }

    #[test]
    fn a_validity_past_the_end_of_time_is_an_error_not_a_wrap() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let r = Request {
            hostname: "web-01",
            principals: &["web-01".into()],
            skew_secs: 30,
            now: u64::MAX - 1,
        };
        assert!(matches!(
            mint(&ca, ca.public_key(), &r),
            Err(HostCertError::Validity { .. })
        ));
    }

    #[test]
    fn known_hosts_patterns_follow_openssh_host_and_port_notation() {
        assert_eq!(
            known_hosts_patterns(&targets()),
            [
                vec!["db-01", "2001:db8::1:0:0:b"],
                vec![
                    "web-01",
                    "[web-01]:2222",
                    "10.0.0.10",
                    "198.18.10.10",
                    "[198.18.10.10]:2222",
                    "2001:db8::a",
                    "[2001:db8::a]:2222",
                ],
            ]
        );
        let lines = known_hosts_lines("ssh-ed25519 AAAA portcullis-ca", &targets(), false);
        assert_eq!(
            lines[0],
            "@cert-authority db-01,2001:db8::1:0:0:b ssh-ed25519 AAAA portcullis-ca"
        );
        assert_eq!(
            known_hosts_lines("ssh-ed25519 AAAA portcullis-ca", &targets(), true),
            ["@cert-authority * ssh-ed25519 AAAA portcullis-ca"]
        );
    }
}
