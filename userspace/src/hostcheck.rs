//! Which host keys the proxy accepts from a target.
//!
//! By default whatever the target shows: the derived key makes a change visible to the user
//! (their client's own host-key warning) and `hostkey.changed` is audited. A `[[target]]` with
//! `host_keys` accepts only those keys; with `[upstream] host_ca_keys`, a target without pins
//! must show a host certificate from one of those CAs that names it. Either way the input of
//! the derivation is the target's key itself (a certificate's subject key), so renewing a
//! host certificate does not change the key users see.

use std::{collections::HashMap, net::IpAddr};

use russh::keys::{
    ssh_key::{certificate::CertType, Fingerprint, HashAlg},
    PublicKey, PublicKeyOrCertificate,
};

/// The configuration's host-key rules (part of the reloadable snapshot).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// SHA256 fingerprints pinned per (vnet, address).
    pub pins: HashMap<(u16, IpAddr), Vec<Fingerprint>>,
    /// Host CAs whose certificates are accepted from targets without pins.
    pub cas: Vec<PublicKey>,
}

/// What one upstream connection checks.
#[derive(Clone, Debug, Default)]
pub struct Check {
    pins: Vec<Fingerprint>,
    cas: Vec<Fingerprint>,
    /// Names a host certificate may carry for this target: its hostname and address.
    names: Vec<String>,
}

impl Rules {
    pub fn for_target(&self, vnet: u16, addr: IpAddr, hostname: &str) -> Check {
        Check {
            pins: self.pins.get(&(vnet, addr)).cloned().unwrap_or_default(),
            cas: self.cas.iter().map(|k| k.fingerprint(HashAlg::Sha256)).collect(),
            names: vec![hostname.to_ascii_lowercase(), addr.to_string()],
        }
    }
}

impl Check {
    /// Whether to ask the target for a host certificate.
    pub fn wants_certificate(&self) -> bool {
        self.pins.is_empty() && !self.cas.is_empty()
    }

    /// `Ok`, or why the key is refused (told to the user and audited).
    pub fn verify(&self, shown: &PublicKeyOrCertificate, unix_now: u64) -> Result<(), String> {
        let fp = shown.public_key().fingerprint(HashAlg::Sha256);
        if !self.pins.is_empty() {
            return match self.pins.contains(&fp) {
                true => Ok(()),
                false => Err(format!("host key {fp} is not pinned for this target (host_keys)")),
            };
        }
        if self.cas.is_empty() {
            return Ok(());
        }
        let PublicKeyOrCertificate::Certificate(cert) = shown else {
            return Err(format!(
                "host key {fp} comes without a certificate, and [upstream] host_ca_keys requires one"
            ));
        };
        if cert.cert_type() != CertType::Host {
            return Err(format!("the certificate for {fp} is not a host certificate"));
        }
        cert.validate_at(unix_now, &self.cas).map_err(|e| {
            format!(
                "host certificate for {fp} (signed by {}): {e}",
                cert.signature_key().fingerprint(HashAlg::Sha256)
            )
        })?;
        // As in OpenSSH, a certificate without principals is valid for any host.
        let principals = cert.valid_principals();
        let named = principals.is_empty()
            || principals
                .iter()
                .any(|p| self.names.iter().any(|n| n.eq_ignore_ascii_case(p)));
        if !named {
            return Err(format!(
                "host certificate for {fp} names {principals:?}, not {}",
                self.names.join(" or ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::{
        ssh_key::{certificate::Builder, Algorithm},
        PrivateKey,
    };

    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn cert(
        ca: &PrivateKey,
        subject: &PrivateKey,
        kind: CertType,
        principals: &[&str],
    ) -> PublicKeyOrCertificate {
        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), subject.public_key(), 1_000, 3_000).unwrap();
        b.cert_type(kind).unwrap();
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        if principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        PublicKeyOrCertificate::Certificate(b.sign(ca).unwrap())
    }

    fn plain(k: &PrivateKey) -> PublicKeyOrCertificate {
        PublicKeyOrCertificate::PublicKey {
            key: k.public_key().clone(),
            hash_alg: None,
        }
    }

    #[test]
    fn without_rules_any_key_is_accepted() {
        let addr: IpAddr = "198.18.10.10".parse().unwrap();
        let c = Rules::default().for_target(1, addr, "web-01");
        assert!(!c.wants_certificate());
        assert_eq!(c.verify(&plain(&key()), 2_000), Ok(()));
    }

    #[test]
    fn pins_accept_only_themselves_certificate_or_not() {
        let (host, other, ca) = (key(), key(), key());
        let addr: IpAddr = "198.18.10.10".parse().unwrap();
        let mut rules = Rules {
            cas: vec![ca.public_key().clone()],
            ..Default::default()
        };
        rules
            .pins
            .insert((1, addr), vec![host.public_key().fingerprint(HashAlg::Sha256)]);
        let c = rules.for_target(1, addr, "web-01");
        assert!(!c.wants_certificate(), "pins take precedence over the CA");
        assert_eq!(c.verify(&plain(&host), 2_000), Ok(()));
        assert_eq!(
            c.verify(&cert(&ca, &host, CertType::Host, &["web-01"]), 2_000),
            Ok(())
        );
        let e = c.verify(&plain(&other), 2_000).unwrap_err();
        assert!(e.contains("not pinned"), "{e}");
        // Another address of the same vnet has no pins: the CA rule applies there.
        assert!(rules
            .for_target(1, "198.18.10.11".parse().unwrap(), "web-02")
            .wants_certificate());
    }

    #[test]
    fn certificates_must_be_host_certificates_from_the_ca_naming_the_target_in_time() {
        let (host, ca, rogue) = (key(), key(), key());
        let addr: IpAddr = "198.18.10.10".parse().unwrap();
        let rules = Rules {
            cas: vec![ca.public_key().clone()],
            ..Default::default()
        };
        let c = rules.for_target(1, addr, "Web-01");
        assert!(c.wants_certificate());
        let ok = |shown: PublicKeyOrCertificate, now| c.verify(&shown, now);
        assert_eq!(ok(cert(&ca, &host, CertType::Host, &["web-01"]), 2_000), Ok(()));
        assert_eq!(
            ok(cert(&ca, &host, CertType::Host, &["198.18.10.10"]), 2_000),
            Ok(())
        );
        assert_eq!(ok(cert(&ca, &host, CertType::Host, &[]), 2_000), Ok(()));
        for (shown, now, why) in [
            (plain(&host), 2_000, "without a certificate"),
            (
                cert(&rogue, &host, CertType::Host, &["web-01"]),
                2_000,
                "signed by",
            ),
            (
                cert(&ca, &host, CertType::User, &["web-01"]),
                2_000,
                "not a host certificate",
            ),
            (cert(&ca, &host, CertType::Host, &["db-01"]), 2_000, "names"),
            (cert(&ca, &host, CertType::Host, &["web-01"]), 5_000, "signed by"),
        ] {
            let e = ok(shown, now).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}
