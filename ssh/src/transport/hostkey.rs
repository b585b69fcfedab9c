//! Server host keys: which algorithms a key (and its certificate) can serve, signing the
//! exchange hash, and, as a client, checking the server's key and signature.

use signature::{Signer, Verifier};
use ssh_key::certificate::CertType;
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, Certificate, EcdsaCurve, HashAlg, PrivateKey, PublicKey, Signature};

use super::error::TransportError;
use super::wire::Reader;

/// One host key algorithm: its name in KEXINIT, the type name inside the key blob, and the
/// signature algorithm it signs H with.
struct HostKeyAlg {
    name: &'static str,
    blob_type: &'static str,
    sig: &'static str,
    cert: bool,
}

const fn alg(name: &'static str, blob_type: &'static str, sig: &'static str, cert: bool) -> HostKeyAlg {
    HostKeyAlg {
        name,
        blob_type,
        sig,
        cert,
    }
}

const TABLE: &[HostKeyAlg] = &[
    alg(
        "ssh-ed25519-cert-v01@openssh.com",
        "ssh-ed25519-cert-v01@openssh.com",
        "ssh-ed25519",
        true,
    ),
    alg(
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256",
        true,
    ),
    alg(
        "ecdsa-sha2-nistp384-cert-v01@openssh.com",
        "ecdsa-sha2-nistp384-cert-v01@openssh.com",
        "ecdsa-sha2-nistp384",
        true,
    ),
    alg(
        "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        "ecdsa-sha2-nistp521",
        true,
    ),
    alg(
        "rsa-sha2-512-cert-v01@openssh.com",
        "ssh-rsa-cert-v01@openssh.com",
        "rsa-sha2-512",
        true,
    ),
    alg(
        "rsa-sha2-256-cert-v01@openssh.com",
        "ssh-rsa-cert-v01@openssh.com",
        "rsa-sha2-256",
        true,
    ),
    alg("ssh-ed25519", "ssh-ed25519", "ssh-ed25519", false),
    alg(
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp256",
        false,
    ),
    alg(
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp384",
        false,
    ),
    alg(
        "ecdsa-sha2-nistp521",
        "ecdsa-sha2-nistp521",
        "ecdsa-sha2-nistp521",
        false,
    ),
    alg("rsa-sha2-512", "ssh-rsa", "rsa-sha2-512", false),
    alg("rsa-sha2-256", "ssh-rsa", "rsa-sha2-256", false),
];

/// Every host key algorithm we implement, in our default preference order (certificates
/// first, as OpenSSH orders them; ssh-rsa with SHA-1 is not implemented).
pub const HOST_KEY_ALGORITHMS: &[&str] = &[
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
];

fn lookup(name: &str) -> Option<&'static HostKeyAlg> {
    TABLE.iter().find(|a| a.name == name)
}

/// The plain key type name of a public key (`ssh-rsa` for RSA).
fn key_type(k: &KeyData) -> Option<&'static str> {
    Some(match k.algorithm() {
        Algorithm::Ed25519 => "ssh-ed25519",
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        } => "ecdsa-sha2-nistp256",
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        } => "ecdsa-sha2-nistp384",
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP521,
        } => "ecdsa-sha2-nistp521",
        Algorithm::Rsa { .. } => "ssh-rsa",
        _ => return None,
    })
}

fn cert_type_name(plain: &str) -> String {
    format!("{plain}-cert-v01@openssh.com")
}

/// A server's host key with the certificate that certifies it, if one was configured.
pub(crate) struct ServerKey<'a> {
    pub key: &'a PrivateKey,
    pub cert: Option<&'a Certificate>,
}

/// The host key algorithms of `wanted` (in that order) that `keys`/`certs` can serve.
pub(crate) fn server_algorithms(
    wanted: &[&'static str],
    keys: &[PrivateKey],
    certs: &[Certificate],
) -> Vec<&'static str> {
    wanted
        .iter()
        .copied()
        .filter(|name| find_server_key(name, keys, certs).is_some())
        .collect()
}

pub(crate) fn find_server_key<'a>(
    name: &str,
    keys: &'a [PrivateKey],
    certs: &'a [Certificate],
) -> Option<ServerKey<'a>> {
    let a = lookup(name)?;
    let plain = if a.cert {
        a.blob_type.trim_end_matches("-cert-v01@openssh.com")
    } else {
        a.blob_type
    };
    for key in keys {
        let kd = key.public_key().key_data();
        if key_type(kd) != Some(plain) {
            continue;
        }
        if !a.cert {
            return Some(ServerKey { key, cert: None });
        }
        if let Some(cert) = certs
            .iter()
            .find(|c| c.public_key() == kd && c.cert_type() == CertType::Host)
        {
            return Some(ServerKey {
                key,
                cert: Some(cert),
            });
        }
    }
    None
}

impl ServerKey<'_> {
    /// K_S: the public key blob, or the certificate blob.
    pub(crate) fn blob(&self) -> Result<Vec<u8>, TransportError> {
        let r = match self.cert {
            Some(c) => c.to_bytes(),
            None => self.key.public_key().to_bytes(),
        };
        r.map_err(|e| TransportError::Config(format!("encoding the host key: {e}")))
    }

    /// The signature blob (`string algorithm, string signature`) over `data` for `name`.
    pub(crate) fn sign(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, TransportError> {
        let a = lookup(name)
            .ok_or_else(|| TransportError::Config(format!("unknown host key algorithm {name}")))?;
        let fail =
            |e: signature::Error| TransportError::Config(format!("signing with the {name} host key: {e}"));
        let sig: Signature = match a.sig {
            "rsa-sha2-256" | "rsa-sha2-512" => {
                let rsa = self
                    .key
                    .key_data()
                    .rsa()
                    .ok_or_else(|| TransportError::Config("not an RSA key".into()))?;
                let hash = if a.sig == "rsa-sha2-256" {
                    HashAlg::Sha256
                } else {
                    HashAlg::Sha512
                };
                (rsa, Some(hash)).try_sign(data).map_err(fail)?
            }
            _ => self.key.try_sign(data).map_err(fail)?,
        };
        ssh_key::encoding::Encode::encode_vec(&sig)
            .map_err(|e| TransportError::Config(format!("encoding the host key signature: {e}")))
    }
}

/// What the client learnt about the server's host key.
pub(crate) struct PeerKey {
    pub key: PublicKey,
    pub cert: Option<Certificate>,
}

/// Client: checks that K_S is a key of the negotiated algorithm `name` and that `sig_blob` is
/// its valid signature over `h`. A certificate's CA is not checked here (the caller does it).
pub(crate) fn verify(name: &str, k_s: &[u8], sig_blob: &[u8], h: &[u8]) -> Result<PeerKey, TransportError> {
    let a = lookup(name)
        .ok_or_else(|| TransportError::HostKey(format!("unsupported host key algorithm {name}")))?;
    let blob_type = Reader::new("KEX_ECDH_REPLY", k_s).utf8("K_S key type")?;
    if blob_type != a.blob_type {
        return Err(TransportError::HostKey(format!(
            "negotiated {name} but the server sent a {blob_type} key"
        )));
    }
    let (key, cert) = if a.cert {
        let cert = Certificate::from_bytes(k_s)
            .map_err(|e| TransportError::HostKey(format!("cannot parse the {blob_type} certificate: {e}")))?;
        if cert.cert_type() != CertType::Host {
            return Err(TransportError::HostKey(
                "the server presented a user certificate".into(),
            ));
        }
        if key_type(cert.public_key()).map(cert_type_name).as_deref() != Some(blob_type) {
            return Err(TransportError::HostKey(
                "certificate key type does not match its name".into(),
            ));
        }
        (PublicKey::new(cert.public_key().clone(), ""), Some(cert))
    } else {
        let key = PublicKey::from_bytes(k_s)
            .map_err(|e| TransportError::HostKey(format!("cannot parse the {blob_type} host key: {e}")))?;
        (key, None)
    };
    let sig = Signature::try_from(sig_blob)
        .map_err(|e| TransportError::HostKey(format!("cannot parse the host key signature: {e}")))?;
    if sig.algorithm().as_str() != a.sig {
        return Err(TransportError::HostKey(format!(
            "signature algorithm {} where {} was negotiated",
            sig.algorithm().as_str(),
            a.sig
        )));
    }
    key.key_data().verify(h, &sig).map_err(|_| {
        TransportError::HostKey(format!("the {name} signature over the exchange hash is invalid"))
    })?;
    Ok(PeerKey { key, cert })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::private::Ed25519Keypair;

    #[test]
    fn ed25519_sign_verify() {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[5u8; 32]));
        let keys = vec![key];
        let sk = find_server_key("ssh-ed25519", &keys, &[]).unwrap();
        let blob = sk.blob().unwrap();
        let sig = sk.sign("ssh-ed25519", b"hash").unwrap();
        let pk = verify("ssh-ed25519", &blob, &sig, b"hash").unwrap();
        assert_eq!(pk.key.key_data(), keys[0].public_key().key_data());
        assert!(verify("ssh-ed25519", &blob, &sig, b"other").is_err());
        assert!(verify("ecdsa-sha2-nistp256", &blob, &sig, b"hash").is_err());
        assert!(find_server_key("ssh-ed25519-cert-v01@openssh.com", &keys, &[]).is_none());
    }
}
