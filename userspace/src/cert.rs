//! Per-connection upstream credentials (DESIGN §3): an ephemeral Ed25519 key and an OpenSSH
//! user certificate for it, signed by the account CA. The certificate only authenticates:
//! it is valid from `now − skew` to `now + lifetime` (3 minutes by default), names exactly
//! the login as principal, and its key id ties it to the identity and session.

use russh::keys::{
    ssh_key::{
        self,
        certificate::{Builder, CertType},
    },
    Algorithm, Certificate, PrivateKey,
};

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
pub fn mint(ca: &PrivateKey, r: &Request<'_>) -> Result<Minted, ssh_key::Error> {
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
    let mut b = Builder::new_with_random_nonce(
        &mut rng,
        key.public_key(),
        now.saturating_sub(skew_secs),
        now + lifetime_secs,
    )?;
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
    }
}
