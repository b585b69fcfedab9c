//! The proxy's host key for a target (DESIGN §1.3): an Ed25519 key whose seed is
//! HKDF-SHA256(ikm = account secret, salt = a fixed label, info = the target's host key blob).
//! The same target key gives the same derived key on every connection, restart and gateway
//! sharing the secret, so clients' known_hosts keep working; a changed target key changes the
//! derived key, and the client's own host-key warning fires as if it had connected directly.

use hkdf::Hkdf;
use sha2::Sha256;
use ssh_key::{private::Ed25519Keypair, PrivateKey, PublicKey};

/// Domain separation: a key derived for another purpose from the same secret differs.
const SALT: &[u8] = b"portcullis hostkey v1";

/// The fewest bytes of account secret accepted: with an empty or short one, anyone who sees
/// a target's key could derive the host key the gateway shows for it.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("the account secret holds {0} bytes; at least {MIN_SECRET_BYTES} are needed")]
    ShortSecret(usize),
    #[error(transparent)]
    Key(#[from] ssh_key::Error),
}

/// Derives the host key the proxy presents for a target that presented `target`.
pub fn derive(secret: &[u8], target: &PublicKey) -> Result<PrivateKey, DeriveError> {
    // Checked at load already; here too, so that no caller can derive from a guessable secret.
    if secret.len() < MIN_SECRET_BYTES {
        return Err(DeriveError::ShortSecret(secret.len()));
    }
    let blob = target.to_bytes()?;
    let mut seed = [0u8; 32];
    Hkdf::<Sha256>::new(Some(SALT), secret)
        .expand(&blob, &mut seed)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

#[cfg(test)]
mod tests {
    use ssh_key::HashAlg;

    use super::*;

    fn target(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    /// Golden vector (cross-checked with an independent HKDF-SHA256 + Ed25519 in Python).
    /// Changing the derivation changes every client's known_hosts entry, so
    /// it must only ever change on purpose (with a new SALT version).
    #[test]
    fn golden_vector() {
        let k = derive(&[0x42; 32], &target(7)).unwrap();
        assert_eq!(
            k.public_key().fingerprint(HashAlg::Sha256).to_string(),
            "SHA256:bywM1xyI15OhyA0zSkVtw5yPIFMXUwjHABrJ9+1YAWA",
        );
    }

    #[test]
    fn same_target_same_key_other_target_or_secret_other_key() {
        let a = derive(&[1; 32], &target(1)).unwrap();
        assert_eq!(a.public_key(), derive(&[1; 32], &target(1)).unwrap().public_key());
        assert_ne!(a.public_key(), derive(&[1; 32], &target(2)).unwrap().public_key());
        assert_ne!(a.public_key(), derive(&[2; 32], &target(1)).unwrap().public_key());
    }

    #[test]
    fn a_short_secret_derives_nothing() {
        for n in [0, 1, 31] {
            assert!(matches!(
                derive(&vec![7; n], &target(1)),
                Err(DeriveError::ShortSecret(m)) if m == n
            ));
        }
    }
}
