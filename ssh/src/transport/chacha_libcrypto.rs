//! chacha20-poly1305@openssh.com for large packets, on the system's libcrypto (OpenSSL 3).
//!
//! Why a second library for one cipher: aws-lc's ChaCha20 stops at AVX2 and its Poly1305 is
//! SSE2 C, while OpenSSL 3 has AVX-512 ChaCha20 and an IFMA Poly1305 — the code the OpenSSH
//! client and sshd on either side of the gateway use. Measured on the bench machine (AMD EPYC,
//! AVX-512), one 32 KiB packet sealed: 3.1 GiB/s here against 1.5 GiB/s with aws-lc-rs's
//! `chacha20_poly1305_openssh`. A relay seals and opens every byte once, so with ChaCha20 on
//! both hops that is most of the proxy's CPU. Per packet, though, OpenSSL's EVP calls cost
//! about 0.4 µs more, so below [`MIN_LEN`] bytes `cipher.rs` keeps aws-lc (the crossover
//! measured at about 1 KiB). Both compute the same function, which the tests check.
//!
//! The construction (OpenSSH PROTOCOL.chacha20poly1305): the 64-byte key is K_2 (bytes 0..32,
//! payload and Poly1305 key) and K_1 (bytes 32..64, the 4-byte length); the nonce is the
//! packet sequence number as a 64-bit big-endian value; the Poly1305 key is the first 32 bytes
//! of K_2's keystream at block 0; the payload is encrypted from block 1; the tag covers the
//! encrypted length and payload.
//!
//! Every EVP object is created once per key, at its first large packet, and reused: a packet
//! costs no allocation.

use std::ptr;

use openssl_sys as ossl;

/// Packets (length field included, tag excluded) at least this long go through libcrypto.
pub const MIN_LEN: usize = 1024;

pub const TAG_LEN: usize = 16;

/// One direction's libcrypto key, made when its first large packet comes: a session that
/// never sends one (an interactive shell) holds no libcrypto contexts, only the key.
pub type Bulk = crate::on_first_use::OnFirstUse<[u8; 64], LibcryptoChacha>;

/// One direction's key on libcrypto: ChaCha20 contexts keyed with K_2 and K_1 (only the IV
/// changes per packet) and a Poly1305 MAC context re-keyed per packet.
pub struct LibcryptoChacha {
    main: *mut ossl::EVP_CIPHER_CTX,
    header: *mut ossl::EVP_CIPHER_CTX,
    mac: *mut ossl::EVP_MAC_CTX,
}

// SAFETY: the three contexts are owned by this value alone (created in `new`, freed in
// `drop`, never shared) and OpenSSL allows a context to be used from any thread, one at a
// time, which `&mut self` guarantees.
unsafe impl Send for LibcryptoChacha {}

impl LibcryptoChacha {
    /// `None` when the libcrypto at hand lacks ChaCha20 or Poly1305 (a FIPS-only
    /// configuration, say): the caller then stays on aws-lc for every packet.
    pub fn new(key: &[u8; 64]) -> Option<Self> {
        // No `openssl_sys::init()`: OpenSSL 3 initializes libcrypto on first use, and that call
        // would link libssl for nothing.
        let mut this = LibcryptoChacha {
            main: ptr::null_mut(),
            header: ptr::null_mut(),
            mac: ptr::null_mut(),
        };
        // SAFETY: plain OpenSSL object construction; every pointer is checked before use and
        // whatever was created is freed by `drop` if a later step fails.
        unsafe {
            this.main = ossl::EVP_CIPHER_CTX_new();
            this.header = ossl::EVP_CIPHER_CTX_new();
            if this.main.is_null() || this.header.is_null() {
                return None;
            }
            let cipher = ossl::EVP_chacha20();
            if cipher.is_null() {
                return None;
            }
            let zero_iv = [0u8; 16];
            if ossl::EVP_EncryptInit_ex(this.main, cipher, ptr::null_mut(), key.as_ptr(), zero_iv.as_ptr())
                != 1
                || ossl::EVP_EncryptInit_ex(
                    this.header,
                    cipher,
                    ptr::null_mut(),
                    key[32..].as_ptr(),
                    zero_iv.as_ptr(),
                ) != 1
            {
                return None;
            }
            let mac = ossl::EVP_MAC_fetch(ptr::null_mut(), c"POLY1305".as_ptr(), ptr::null());
            if mac.is_null() {
                return None;
            }
            // The context holds its own reference to the algorithm.
            this.mac = ossl::EVP_MAC_CTX_new(mac);
            ossl::EVP_MAC_free(mac);
            if this.mac.is_null() {
                return None;
            }
        }
        Some(this)
    }

    /// ChaCha20 over `buf` in place from block `counter` of the keystream for `seq`.
    fn xor(ctx: *mut ossl::EVP_CIPHER_CTX, seq: u32, counter: u32, buf: &mut [u8]) -> bool {
        // OpenSSL's IV is a 32-bit little-endian block counter and a 96-bit nonce; OpenSSH's
        // 64-bit counter is that counter and the nonce's first 4 bytes (zero: packets are far
        // shorter than 2^32 blocks), and its 64-bit nonce is the sequence number.
        let mut iv = [0u8; 16];
        iv[..4].copy_from_slice(&counter.to_le_bytes());
        iv[12..].copy_from_slice(&seq.to_be_bytes());
        let Ok(len) = i32::try_from(buf.len()) else {
            return false;
        };
        let mut out_len = 0;
        // SAFETY: `ctx` is a live context keyed in `new`; a null cipher and key keep both and
        // only set the IV; a stream cipher may work in place, and `buf` is valid for `len`.
        unsafe {
            ossl::EVP_EncryptInit_ex(ctx, ptr::null(), ptr::null_mut(), ptr::null(), iv.as_ptr()) == 1
                && ossl::EVP_EncryptUpdate(ctx, buf.as_mut_ptr(), &mut out_len, buf.as_ptr(), len) == 1
                && out_len == len
        }
    }

    /// The Poly1305 tag of `data` under the one-time key for `seq`.
    fn tag(&mut self, seq: u32, data: &[u8]) -> Option<[u8; TAG_LEN]> {
        let mut poly_key = zeroize::Zeroizing::new([0u8; 32]);
        if !Self::xor(self.main, seq, 0, &mut poly_key[..]) {
            return None;
        }
        let mut tag = [0u8; TAG_LEN];
        let mut n = 0;
        // SAFETY: `mac` is a live Poly1305 context; init re-keys it (32-byte key) and resets
        // its state; `data` and `tag` are valid for the lengths given.
        let ok = unsafe {
            ossl::EVP_MAC_init(self.mac, poly_key.as_ptr(), poly_key.len(), ptr::null()) == 1
                && ossl::EVP_MAC_update(self.mac, data.as_ptr(), data.len()) == 1
                && ossl::EVP_MAC_final(self.mac, tag.as_mut_ptr(), &mut n, TAG_LEN) == 1
        };
        (ok && n == TAG_LEN).then_some(tag)
    }

    /// Encrypts `packet` (length field, padding length, payload, padding) in place and
    /// returns its tag. `None`: libcrypto failed, which is not expected once `new` succeeded.
    pub fn seal(&mut self, seq: u32, packet: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        if packet.len() < 4 {
            return None;
        }
        let (len, body) = packet.split_at_mut(4);
        if !Self::xor(self.header, seq, 0, len) || !Self::xor(self.main, seq, 1, body) {
            return None;
        }
        self.tag(seq, packet)
    }

    /// Checks `tag` over `packet` (encrypted length included) and only then decrypts
    /// everything after the length field in place. `Ok(false)`: the tag does not match and
    /// `packet` is untouched. `Err(())`: libcrypto failed.
    pub fn open(&mut self, seq: u32, packet: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<bool, ()> {
        if packet.len() < 4 {
            return Err(());
        }
        let expected = self.tag(seq, packet).ok_or(())?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, tag).is_err() {
            return Ok(false);
        }
        if Self::xor(self.main, seq, 1, &mut packet[4..]) {
            Ok(true)
        } else {
            Err(())
        }
    }
}

impl Drop for LibcryptoChacha {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or a context created in `new` and used by no one
        // else; the free functions accept null and cleanse the key material they hold.
        unsafe {
            ossl::EVP_CIPHER_CTX_free(self.main);
            ossl::EVP_CIPHER_CTX_free(self.header);
            ossl::EVP_MAC_CTX_free(self.mac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::chacha20_poly1305_openssh as awslc;

    fn key() -> [u8; 64] {
        // Distinct halves: a swap of K_1 and K_2 must not go unnoticed.
        std::array::from_fn(|i| (i * 37 + 11) as u8)
    }

    #[test]
    fn seals_as_aws_lc_does_and_opens_what_it_seals() {
        let k = key();
        let Some(mut ours) = LibcryptoChacha::new(&k) else {
            panic!("libcrypto without ChaCha20/Poly1305");
        };
        let theirs = awslc::SealingKey::new(&k);
        let opener = awslc::OpeningKey::new(&k);
        for (seq, n) in [
            (0u32, 4usize),
            (1, 5),
            (7, 1024),
            (u32::MAX, 32_772),
            (99, 262_148),
        ] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 13 + seq as usize) as u8).collect();
            let mut a = plain.clone();
            let mut b = plain.clone();
            let tag_a = ours.seal(seq, &mut a).unwrap();
            let mut tag_b = [0u8; TAG_LEN];
            theirs.seal_in_place(seq, &mut b, &mut tag_b);
            assert_eq!(a, b, "ciphertext, seq {seq} len {n}");
            assert_eq!(tag_a, tag_b, "tag, seq {seq} len {n}");

            // aws-lc opens ours, we open aws-lc's.
            let mut c = a.clone();
            opener.open_in_place(seq, &mut c, &tag_a).unwrap();
            assert_eq!(c[4..], plain[4..]);
            assert!(ours.open(seq, &mut b, &tag_b).unwrap());
            assert_eq!(b[4..], plain[4..]);
        }
    }

    #[test]
    fn a_wrong_tag_or_sequence_number_leaves_the_packet_untouched() {
        let k = key();
        let mut ours = LibcryptoChacha::new(&k).unwrap();
        let mut p = vec![0x5a; 4096];
        let tag = ours.seal(3, &mut p).unwrap();
        let sealed = p.clone();
        let mut bad = tag;
        bad[15] ^= 1;
        assert!(!ours.open(3, &mut p, &bad).unwrap());
        assert!(!ours.open(4, &mut p, &tag).unwrap());
        assert_eq!(p, sealed);
        let mut flipped = sealed.clone();
        flipped[100] ^= 0x80;
        assert!(!ours.open(3, &mut flipped, &tag).unwrap());
    }
}
