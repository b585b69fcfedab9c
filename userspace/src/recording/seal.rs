//! The sending side of a recording's HPKE context (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305), as ssh-log-cli opens it.
//!
//! The KEM comes from the hpke crate and the key schedule is RFC 9180 §5.1 over the hkdf
//! crate; only the per-block AEAD is not the hpke crate's. Every byte a session moves is
//! sealed once more here, and aws-lc's fused ChaCha20-Poly1305 is about twice as fast as the
//! hpke crate's generic one on x86-64, the system's libcrypto faster again for large blocks
//! (`seal_libcrypto.rs`).
//! The unit tests open what this seals with the hpke crate's own receiver.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use hkdf::Hkdf;
use hpke::{kem::X25519HkdfSha256, Kem, Serializable};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    keys::PublicKey,
    seal_libcrypto::{self, Bulk, LibcryptoAead},
};

pub const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;

/// "HPKE" ‖ kem_id 0x0020 ‖ kdf_id 0x0001 ‖ aead_id 0x0003.
const SUITE_ID: [u8; 10] = *b"HPKE\x00\x20\x00\x01\x00\x03";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("HPKE encapsulation to the recording key failed: {0}")]
    Encap(String),
    #[error("the recording's message counter is exhausted")]
    Exhausted,
    #[error("ChaCha20-Poly1305 sealing failed")]
    Aead,
}

pub struct Sealer {
    key: LessSafeKey,
    /// The same key on libcrypto, for blocks of [`seal_libcrypto::MIN_LEN`] and more.
    bulk: Bulk,
    base_nonce: [u8; NONCE_LEN],
    seq: u64,
}

/// `prefix` ‖ "HPKE-v1" ‖ suite_id ‖ `label` ‖ `data`: RFC 9180's labelled inputs.
fn labeled(prefix: &[u8], label: &[u8], data: &[u8]) -> Vec<u8> {
    [prefix, b"HPKE-v1", &SUITE_ID, label, data].concat()
}

/// LabeledExtract: the PRK, and HKDF ready to expand from it.
fn labeled_extract(salt: &[u8], label: &[u8], ikm: &[u8]) -> ([u8; 32], Hkdf<Sha256>) {
    let (prk, hkdf) = Hkdf::<Sha256>::extract(Some(salt), &labeled(b"", label, ikm));
    (prk.into(), hkdf)
}

fn labeled_expand(prk: &Hkdf<Sha256>, label: &[u8], info: &[u8], out: &mut [u8]) {
    let len = (out.len() as u16).to_be_bytes();
    // Lengths here are 32 and 12 bytes, far below HKDF-SHA256's 255 × 32 limit.
    prk.expand(&labeled(&len, label, info), out)
        .expect("HKDF-SHA256 output of at most 32 bytes");
}

impl Sealer {
    /// A fresh context to `pk`; returns it with the encapsulated key for the log's header.
    pub fn new(pk: &PublicKey) -> Result<(Self, [u8; 32]), SealError> {
        let (shared, enc) =
            X25519HkdfSha256::encap(pk, None).map_err(|e| SealError::Encap(format!("{e:?}")))?;
        let mut enc_bytes = [0u8; 32];
        enc_bytes.copy_from_slice(&enc.to_bytes());
        Ok((Self::from_shared_secret(&shared.0), enc_bytes))
    }

    /// The key schedule of RFC 9180 §5.1, mode_base, empty info and PSK.
    fn from_shared_secret(shared_secret: &[u8]) -> Self {
        let (psk_id_hash, _) = labeled_extract(b"", b"psk_id_hash", b"");
        let (info_hash, _) = labeled_extract(b"", b"info_hash", b"");
        let mut context = [0u8; 1 + 32 + 32];
        context[1..33].copy_from_slice(&psk_id_hash);
        context[33..].copy_from_slice(&info_hash);
        // Copies of key material this function owns are wiped once used; the AEAD key
        // lives on inside aws-lc, which wipes it when the context is freed.
        let (prk, secret) = labeled_extract(shared_secret, b"secret", b"");
        let _prk = Zeroizing::new(prk);
        let mut key = Zeroizing::new([0u8; 32]);
        labeled_expand(&secret, b"key", &context, &mut key[..]);
        let mut base_nonce = [0u8; NONCE_LEN];
        labeled_expand(&secret, b"base_nonce", &context, &mut base_nonce);
        let bulk = Bulk::new(*key);
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key[..]).expect("a 32-byte ChaCha20 key");
        Self {
            key: LessSafeKey::new(key),
            bulk,
            base_nonce,
            seq: 0,
        }
    }

    /// Seals `buf` in place as the context's next message; returns the tag.
    pub fn seal_in_place(&mut self, buf: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        // RFC 9180 §5.2: nonce = base_nonce XOR I2OSP(seq, Nn); seq never wraps.
        let mut nonce = self.base_nonce;
        for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self.seq.checked_add(1).ok_or(SealError::Exhausted)?;
        if buf.len() >= seal_libcrypto::MIN_LEN {
            if let Some(bulk) = self.bulk.get(LibcryptoAead::new) {
                return bulk.seal(&nonce, buf).ok_or(SealError::Aead);
            }
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), buf)
            .map_err(|_| SealError::Aead)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use hpke::{aead::ChaCha20Poly1305, kdf::HkdfSha256, Deserializable, OpModeR};

    use super::*;

    #[test]
    fn the_hpke_crate_opens_what_this_seals() {
        let (sk, pk) = X25519HkdfSha256::gen_keypair();
        let (mut sealer, enc) = Sealer::new(&pk).unwrap();
        let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&enc).unwrap();
        let mut rx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &sk,
            &enc,
            &[],
        )
        .unwrap();
        // Both AEADs (aws-lc below 1 KiB, libcrypto above), interleaved.
        for (i, len) in [0usize, 1, 63, 64, 65_536, 70_001, 1023, 1024, 5, 262_144]
            .into_iter()
            .enumerate()
        {
            let plain: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            let mut buf = plain.clone();
            let tag = sealer.seal_in_place(&mut buf).unwrap();
            if len > 0 {
                assert_ne!(buf, plain, "block {i} was not encrypted");
            }
            let tag = hpke::aead::AeadTag::<ChaCha20Poly1305>::from_bytes(&tag).unwrap();
            rx.open_inout_detached(buf.as_mut_slice().into(), &[], &tag)
                .unwrap_or_else(|e| panic!("block {i} ({len} bytes): {e:?}"));
            assert_eq!(buf, plain, "block {i}");
        }
    }

    #[test]
    fn contexts_are_fresh_per_session() {
        let (_, pk) = X25519HkdfSha256::gen_keypair();
        let (mut a, ea) = Sealer::new(&pk).unwrap();
        let (mut b, eb) = Sealer::new(&pk).unwrap();
        assert_ne!(ea, eb);
        let (mut x, mut y) = ([7u8; 32], [7u8; 32]);
        assert_ne!(a.seal_in_place(&mut x).unwrap(), b.seal_in_place(&mut y).unwrap());
        assert_ne!(x, y);
    }
}
