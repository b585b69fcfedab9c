//! Per-connection upstream credentials (DESIGN §3): an ephemeral Ed25519 key and an OpenSSH
//! user certificate for it, signed by the account CA. The certificate only authenticates:
//! it is valid from `now − skew` to `now + lifetime` (3 minutes by default), names exactly
//! the login as principal, and its key id ties it to the identity and session. With
//! `[ca] source_address` it also carries the `source-address` critical option, so targets
//! accept it only from the gateway.

use ssh_key::{
    certificate::{Builder, CertType},
    Algorithm, Certificate, PrivateKey,
};

/// The longest certificate lifetime and backdating `[ca]` accepts: a certificate only
/// authenticates, so anything longer only widens what a stolen one allows.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;
pub const MAX_SKEW_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("validity {lifetime_secs} s after {now} overflows the certificate's time field")]
    Validity { now: u64, lifetime_secs: u64 },
    #[error(transparent)]
    Key(#[from] ssh_key::Error),
}

/// Why a `[ca] source_address` entry is refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceAddressError {
    #[error(transparent)]
    Cidr(#[from] crate::split_tunnel::CidrError),
    #[error("{0:?}: host bits are set (did you mean {1}?); sshd refuses such a prefix")]
    HostBits(String, String),
}

/// The `source-address` option's value for `list` (OpenSSH: comma-separated CIDR prefixes):
/// each entry an address (taken as /32 or /128) or a prefix whose host bits are zero.
pub fn source_address(list: &[&str]) -> Result<String, SourceAddressError> {
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let e = entry.trim();
        let c: crate::split_tunnel::Cidr = e.parse()?;
        // The parse clears host bits; sshd would refuse the prefix instead, so say so here
        // rather than let the gateway certify another network than the one written.
        let written = e.split('/').next().and_then(|a| a.parse().ok());
        if written.map(crate::targets::canonical) != Some(c.addr) {
            return Err(SourceAddressError::HostBits(e.to_string(), c.to_string()));
        }
        out.push(c.to_string());
    }
    Ok(out.join(","))
}

/// What a certificate grants, from the policy that allowed the session.
#[derive(Clone, Debug, Default)]
pub struct Grant {
    pub pty: bool,
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
    pub x11_forwarding: bool,
}

pub struct Minted {
    pub key: PrivateKey,
    pub cert: Certificate,
    pub serial: u64,
}

/// What to certify.
pub struct Request<'a> {
    /// The certificate's principal (the login, or the email prefix).
    pub principal: &'a str,
    pub email: &'a str,
    pub session: &'a str,
    pub lifetime_secs: u64,
    pub skew_secs: u64,
    pub grant: &'a Grant,
    /// The `source-address` critical option (the gateway's upstream address).
    pub source_address: Option<&'a str>,
}

/// Mints a certificate for `r.principal`, with key id `"{email} {session}"`.
pub fn mint(ca: &PrivateKey, r: &Request<'_>) -> Result<Minted, CertError> {
    let Request {
        principal,
        email,
        session,
        lifetime_secs,
        skew_secs,
        grant,
        source_address,
    } = *r;
    let mut rng = rand::rng();
    let key = PrivateKey::random(&mut rng, Algorithm::Ed25519)?;
    let now = crate::audit::unix_secs();
    let serial: u64 = rand::random();
    // `[ca]` bounds the lifetime; checked here too, as a bad clock or caller must not wrap
    // the expiry around to the past (or to forever).
    let before = now
        .checked_add(lifetime_secs)
        .ok_or(CertError::Validity { now, lifetime_secs })?;
    let mut b =
        Builder::new_with_random_nonce(&mut rng, key.public_key(), now.saturating_sub(skew_secs), before)?;
    b.serial(serial)?
        .cert_type(CertType::User)?
        .key_id(format!("{email} {session}"))?
        .valid_principal(principal)?;
    if let Some(a) = source_address {
        b.critical_option("source-address", a)?;
    }
    // Extensions must be sorted by name (OpenSSH rejects certificates otherwise).
    let mut ext: Vec<&str> = Vec::new();
    if grant.agent_forwarding {
        ext.push("permit-agent-forwarding");
    }
    if grant.port_forwarding {
        ext.push("permit-port-forwarding");
    }
    if grant.pty {
        ext.push("permit-pty");
    }
    if grant.x11_forwarding {
        ext.push("permit-X11-forwarding");
    }
    ext.sort_unstable();
    for e in ext {
        b.extension(e, "")?;
    }
    let cert = b.sign(ca)?;
    Ok(Minted { key, cert, serial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_login_identity_and_a_short_validity() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let g = Grant {
            pty: true,
            ..Default::default()
        };
        let r = Request {
            principal: "root",
            email: "alice@example.com",
            session: "s1",
            lifetime_secs: 180,
            skew_secs: 30,
            grant: &g,
            source_address: None,
        };
        let m = mint(&ca, &r).unwrap();
        let c = &m.cert;
        assert_eq!(c.valid_principals(), &["root".to_string()]);
        assert_eq!(c.key_id(), "alice@example.com s1");
        assert_eq!(c.serial(), m.serial);
        assert_eq!(c.valid_before() - c.valid_after(), 210);
        assert!(c.extensions().contains_key("permit-pty"));
        assert!(!c.extensions().contains_key("permit-port-forwarding"));
        assert_eq!(c.public_key(), m.key.public_key().key_data());
        let other = mint(&ca, &r).unwrap();
        assert_ne!(m.serial, other.serial);
        assert!(
            c.critical_options().is_empty(),
            "no source-address unless configured"
        );
    }

    #[test]
    fn source_address_is_a_critical_option_of_validated_prefixes() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let value = source_address(&["198.18.0.1", "2001:db8::1/128", "198.18.4.0/22"]).unwrap();
        assert_eq!(value, "198.18.0.1/32,2001:db8::1/128,198.18.4.0/22");
        let g = Grant::default();
        let r = Request {
            principal: "root",
            email: "alice@example.com",
            session: "s1",
            lifetime_secs: 180,
            skew_secs: 30,
            grant: &g,
            source_address: Some(&value),
        };
        let m = mint(&ca, &r).unwrap();
        assert_eq!(
            m.cert
                .critical_options()
                .get("source-address")
                .map(String::as_str),
            Some(value.as_str())
        );
        for (bad, says) in [
            ("198.18.0.1/24", "host bits"),
            ("gateway", "not an IPv4 or IPv6 address"),
            ("198.18.0.0/33", "longer than 32"),
        ] {
            let e = source_address(&[bad]).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_lifetime_past_the_end_of_time_is_an_error_not_a_wrap() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let g = Grant::default();
        let r = Request {
            principal: "root",
            email: "alice@example.com",
            session: "s1",
            lifetime_secs: u64::MAX,
            skew_secs: 30,
            grant: &g,
            source_address: None,
        };
        match mint(&ca, &r) {
            Err(CertError::Validity { .. }) => {}
            Err(e) => panic!("another error: {e}"),
            Ok(m) => panic!(
                "minted a certificate valid {}..{}",
                m.cert.valid_after(),
                m.cert.valid_before()
            ),
        }
    }
}
