//! The `publickey` method's algorithms: which names we accept, how a key blob must look for
//! each, verifying a signature (server role) and producing one (client role).
//!
//! Facts checked against OpenSSH (auth2-pubkey.c `userauth_pubkey`, sshconnect2.c
//! `sign_and_send_pubkey`/`key_sig_algorithm`, ssh-rsa.c `ssh_rsa_verify`):
//! - the signature covers `string session_id, byte 50, string user, string service,
//!   string "publickey", bool TRUE, string algorithm, string key blob` — exactly the request
//!   up to the blob, prefixed by the session id as a string;
//! - the algorithm's key type must be the decoded key's type (and the ECDSA curve must match);
//! - the signature's own algorithm must be the request's (for RSA: `rsa-sha2-256` for
//!   `rsa-sha2-256` and `rsa-sha2-256-cert-v01@openssh.com`), and RSA signatures shorter than
//!   the modulus are left-padded with zeros;
//! - RSA keys under 1024 bits are refused (OpenSSH `RequiredRSASize` default);
//! - `sk-` signatures carry `byte flags, uint32 counter` after the signature string and, by
//!   default, need the user-presence flag.

use signature::{Signer, Verifier};
use ssh_key::{
    public::KeyData, Algorithm, Certificate, EcdsaCurve, HashAlg, PrivateKey, PublicKey, Signature,
};

use super::AuthError;

/// Signature algorithms the server role verifies, in the order a server advertises them in
/// the `server-sig-algs` extension (RFC 8308). `ssh-rsa` (SHA-1) and `ssh-dss` are not
/// accepted; the `-cert-v01@openssh.com` form of each is accepted too.
pub const SERVER_SIG_ALGS: &[&str] = &[
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
];

/// OpenSSH's minimum RSA modulus (`SSH_RSA_MINIMUM_MODULUS_SIZE`, `RequiredRSASize`).
const RSA_MIN_BITS: u32 = 1024;
/// The `rsa` crate's limit; OpenSSH's own is 16384 but keys above 8192 are not seen in practice.
const RSA_MAX_BITS: u32 = 8192;

/// `flags` bit of an `sk-` signature: the user touched the authenticator.
pub(crate) const SK_USER_PRESENT: u8 = 0x01;

/// One accepted `publickey` algorithm name, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PkAlg {
    /// The (plain) key type the blob must hold, as ssh-key reports it (RSA: `hash: None`).
    pub key: Algorithm,
    /// The algorithm the signature must carry.
    pub sig: Algorithm,
    /// The blob is an OpenSSH certificate of a `key` key.
    pub cert: bool,
}

fn ecdsa(curve: EcdsaCurve) -> Algorithm {
    Algorithm::Ecdsa { curve }
}

/// Resolve an algorithm name from a `USERAUTH_REQUEST`; `None` for anything not accepted.
pub(crate) fn lookup(name: &str) -> Option<PkAlg> {
    let (base, cert) = match name.strip_suffix("-cert-v01@openssh.com") {
        Some(base) => (base, true),
        None => (name, false),
    };
    let rsa = |hash| PkAlg {
        key: Algorithm::Rsa { hash: None },
        sig: Algorithm::Rsa { hash: Some(hash) },
        cert,
    };
    let same = |alg: Algorithm| PkAlg {
        key: alg.clone(),
        sig: alg,
        cert,
    };
    Some(match base {
        "ssh-ed25519" => same(Algorithm::Ed25519),
        "ecdsa-sha2-nistp256" => same(ecdsa(EcdsaCurve::NistP256)),
        "ecdsa-sha2-nistp384" => same(ecdsa(EcdsaCurve::NistP384)),
        "ecdsa-sha2-nistp521" => same(ecdsa(EcdsaCurve::NistP521)),
        "rsa-sha2-256" => rsa(HashAlg::Sha256),
        "rsa-sha2-512" => rsa(HashAlg::Sha512),
        // Plain names end in "@openssh.com"; certificate names are "sk-...-cert-v01@openssh.com".
        "sk-ssh-ed25519@openssh.com" if !cert => same(Algorithm::SkEd25519),
        "sk-ssh-ed25519" if cert => same(Algorithm::SkEd25519),
        "sk-ecdsa-sha2-nistp256@openssh.com" if !cert => same(Algorithm::SkEcdsaSha2NistP256),
        "sk-ecdsa-sha2-nistp256" if cert => same(Algorithm::SkEcdsaSha2NistP256),
        _ => return None,
    })
}

/// A decoded, acceptable public key blob.
#[derive(Debug, Clone)]
pub(crate) struct ParsedKey {
    /// The key that signs (a certificate's subject key).
    pub subject: KeyData,
    pub certificate: Option<Certificate>,
}

/// Decode `blob` and check it is a key of `alg`'s type. `None`: not acceptable (the server
/// answers FAILURE, as OpenSSH does for blobs it cannot parse).
pub(crate) fn parse_key(alg: &PkAlg, blob: &[u8]) -> Option<ParsedKey> {
    let key = PublicKey::from_bytes(blob).ok()?;
    let (subject, certificate) = match key.key_data() {
        KeyData::Certificate(cert) if alg.cert => (cert.public_key().clone(), Some((**cert).clone())),
        KeyData::Certificate(_) => return None,
        _ if alg.cert => return None,
        plain => (plain.clone(), None),
    };
    if subject.algorithm() != alg.key {
        return None;
    }
    if let KeyData::Rsa(rsa) = &subject {
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&rsa.key_size()) {
            return None;
        }
    }
    Some(ParsedKey { subject, certificate })
}

/// Flags and counter of a verified `sk-` signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityKeySignature {
    /// Authenticator flags (0x01 user present, 0x04 user verified).
    pub flags: u8,
    /// The authenticator's signature counter.
    pub counter: u32,
}

/// Why a signature did not verify (kept for tests and debugging; never shown to the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigRejected {
    Malformed,
    WrongAlgorithm,
    Invalid,
    NoUserPresence,
}

/// Verify `sig_blob` (an encoded SSH signature) over `data` with `key` for algorithm `alg`.
pub(crate) fn verify(
    alg: &PkAlg,
    key: &KeyData,
    data: &[u8],
    sig_blob: &[u8],
    require_user_presence: bool,
) -> Result<Option<SecurityKeySignature>, SigRejected> {
    let mut reader = sig_blob;
    let sig = <Signature as ssh_encoding::Decode>::decode(&mut reader).map_err(|_| SigRejected::Malformed)?;
    if !reader.is_empty() {
        return Err(SigRejected::Malformed);
    }
    if sig.algorithm() != alg.sig {
        return Err(SigRejected::WrongAlgorithm);
    }
    let sig = match key {
        KeyData::Rsa(rsa) => {
            // Left-pad to the modulus length like OpenSSH (some signers strip leading zeros).
            let modulus_len = usize::try_from(rsa.key_size().div_ceil(8)).unwrap_or(usize::MAX);
            let raw = sig.as_bytes();
            if raw.len() > modulus_len {
                return Err(SigRejected::Malformed);
            }
            let mut padded = vec![0u8; modulus_len - raw.len()];
            padded.extend_from_slice(raw);
            Signature::new(sig.algorithm(), padded).map_err(|_| SigRejected::Malformed)?
        }
        _ => sig,
    };
    key.verify(data, &sig).map_err(|_| SigRejected::Invalid)?;
    if matches!(alg.sig, Algorithm::SkEd25519 | Algorithm::SkEcdsaSha2NistP256) {
        let raw = sig.as_bytes();
        let trailer = raw
            .len()
            .checked_sub(5)
            .and_then(|at| raw.get(at..))
            .ok_or(SigRejected::Malformed)?;
        let flags = trailer[0];
        let counter = u32::from_be_bytes([trailer[1], trailer[2], trailer[3], trailer[4]]);
        if require_user_presence && flags & SK_USER_PRESENT == 0 {
            return Err(SigRejected::NoUserPresence);
        }
        return Ok(Some(SecurityKeySignature { flags, counter }));
    }
    Ok(None)
}

/// The client's choice for its key: algorithm name for the request, the signature algorithm
/// and the public key blob.
pub(crate) struct ClientKey {
    pub name: String,
    pub sig: Algorithm,
    pub blob: Vec<u8>,
}

pub(crate) fn client_key(
    key: &PrivateKey,
    certificate: Option<&Certificate>,
    rsa_hash: HashAlg,
) -> Result<ClientKey, AuthError> {
    if key.is_encrypted() {
        return Err(AuthError::Credential {
            reason: "private key is encrypted",
        });
    }
    let sig = match key.algorithm() {
        Algorithm::Ed25519 => Algorithm::Ed25519,
        Algorithm::Ecdsa { curve } => Algorithm::Ecdsa { curve },
        Algorithm::Rsa { .. } => Algorithm::Rsa { hash: Some(rsa_hash) },
        _ => {
            return Err(AuthError::Credential {
                reason: "key type cannot sign here (ed25519, ecdsa and rsa only)",
            })
        }
    };
    let (name, blob) = match certificate {
        Some(cert) => {
            if cert.public_key() != key.public_key().key_data() {
                return Err(AuthError::Credential {
                    reason: "certificate is for another key",
                });
            }
            let blob = cert.to_bytes().map_err(|_| AuthError::Credential {
                reason: "certificate cannot be encoded",
            })?;
            (sig.to_certificate_type(), blob)
        }
        None => {
            let blob = key.public_key().to_bytes().map_err(|_| AuthError::Credential {
                reason: "public key cannot be encoded",
            })?;
            (sig.as_str().to_owned(), blob)
        }
    };
    Ok(ClientKey { name, sig, blob })
}

/// Sign `data` with `key` using signature algorithm `sig`; returns the encoded signature.
pub(crate) fn sign(key: &PrivateKey, sig: &Algorithm, data: &[u8]) -> Result<Vec<u8>, AuthError> {
    let signature: Signature = match (sig, key.key_data().rsa()) {
        (Algorithm::Rsa { hash }, Some(rsa)) => (rsa, *hash).try_sign(data),
        _ => key.try_sign(data),
    }
    .map_err(|_| AuthError::Sign)?;
    if &signature.algorithm() != sig {
        return Err(AuthError::Sign);
    }
    ssh_encoding::Encode::encode_vec(&signature).map_err(|_| AuthError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_table() {
        for name in SERVER_SIG_ALGS {
            let alg = lookup(name).unwrap();
            assert!(!alg.cert);
            let cert_name = match *name {
                n if n.ends_with("@openssh.com") => {
                    format!("{}-cert-v01@openssh.com", n.trim_end_matches("@openssh.com"))
                }
                n => format!("{n}-cert-v01@openssh.com"),
            };
            let c = lookup(&cert_name).unwrap();
            assert!(c.cert, "{cert_name}");
            assert_eq!((c.key, c.sig), (alg.key, alg.sig));
        }
        for refused in [
            "ssh-rsa",
            "ssh-rsa-cert-v01@openssh.com",
            "ssh-dss",
            "webauthn-sk-ecdsa-sha2-nistp256@openssh.com",
            "sk-ssh-ed25519@openssh.com-cert-v01@openssh.com",
            "sk-ssh-ed25519",
            "",
            "-cert-v01@openssh.com",
        ] {
            assert_eq!(lookup(refused), None, "{refused}");
        }
        let r = lookup("rsa-sha2-256-cert-v01@openssh.com").unwrap();
        assert_eq!(r.key, Algorithm::Rsa { hash: None });
        assert_eq!(
            r.sig,
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256)
            }
        );
    }

    #[test]
    fn garbage_blobs_are_refused() {
        let alg = lookup("ssh-ed25519").unwrap();
        assert!(parse_key(&alg, b"").is_none());
        assert!(parse_key(&alg, b"\0\0\0\x0bssh-ed25519\0\0\0\x20").is_none());
        let ed = [&b"\0\0\0\x0bssh-ed25519\0\0\0\x20"[..], &[7u8; 32]].concat();
        assert!(parse_key(&alg, &ed).is_some());
        let trailing = [&ed[..], b"x"].concat();
        assert!(parse_key(&alg, &trailing).is_none());
        let p256 = lookup("ecdsa-sha2-nistp256").unwrap();
        assert!(parse_key(&p256, &ed).is_none());
    }
}
