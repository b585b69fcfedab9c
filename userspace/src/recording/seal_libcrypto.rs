//! ChaCha20-Poly1305 (RFC 8439) for a recording's large blocks, on the system's libcrypto.
//!
//! HPKE's AEAD is fixed by the format, and every byte a recorded session moves is sealed
//! once more here. OpenSSL 3's AVX-512 ChaCha20 and IFMA Poly1305 seal a 256 KiB block at
//! 3.5 GiB/s on the bench machine against 2.0–2.4 for aws-lc's AVX2 code (the engine's
//! transport makes the same choice: `portcullis_ssh`'s `chacha_libcrypto.rs`). Small blocks
//! stay on aws-lc, whose per-call cost is lower; `seal.rs`'s tests open both with the hpke
//! crate. One cipher context per recording, keyed once at its first large block: a block
//! costs no allocation.

use std::ptr;

use openssl_sys as ossl;

/// Blocks at least this long are sealed here.
pub const MIN_LEN: usize = 1024;

/// A recording's libcrypto key, made at its first large block: a recording of an
/// interactive session, whose blocks stay small, holds no libcrypto context.
pub type Bulk = portcullis_ssh::on_first_use::OnFirstUse<[u8; 32], LibcryptoAead>;

pub struct LibcryptoAead {
    ctx: *mut ossl::EVP_CIPHER_CTX,
}

// SAFETY: the context is owned by this value alone and used through `&mut self`, one thread
// at a time, which OpenSSL allows.
unsafe impl Send for LibcryptoAead {}

impl LibcryptoAead {
    /// `None` when the libcrypto at hand lacks ChaCha20-Poly1305 (the caller stays on aws-lc).
    pub fn new(key: &[u8; 32]) -> Option<Self> {
        // SAFETY: object construction with every result checked; `drop` frees the context
        // (null included) whatever step failed.
        unsafe {
            let this = Self {
                ctx: ossl::EVP_CIPHER_CTX_new(),
            };
            let cipher = ossl::EVP_chacha20_poly1305();
            if this.ctx.is_null() || cipher.is_null() {
                return None;
            }
            let zero = [0u8; 12];
            (ossl::EVP_EncryptInit_ex(this.ctx, cipher, ptr::null_mut(), key.as_ptr(), zero.as_ptr()) == 1)
                .then_some(this)
        }
    }

    /// Seals `buf` in place under `nonce` (no associated data); returns the tag. `None`:
    /// libcrypto failed, not expected once `new` succeeded.
    pub fn seal(&mut self, nonce: &[u8; 12], buf: &mut [u8]) -> Option<[u8; 16]> {
        let len = i32::try_from(buf.len()).ok()?;
        let mut n = 0;
        let mut tag = [0u8; 16];
        // SAFETY: a live context keyed in `new`; a null cipher and key keep both, and a new
        // IV restarts the AEAD; a stream cipher may work in place over `buf`'s `len` bytes;
        // the final call writes nothing for this AEAD; the tag buffer holds 16 bytes.
        let ok = unsafe {
            ossl::EVP_EncryptInit_ex(self.ctx, ptr::null(), ptr::null_mut(), ptr::null(), nonce.as_ptr()) == 1
                && ossl::EVP_EncryptUpdate(self.ctx, buf.as_mut_ptr(), &mut n, buf.as_ptr(), len) == 1
                && n == len
                && ossl::EVP_EncryptFinal_ex(self.ctx, buf.as_mut_ptr(), &mut n) == 1
                && n == 0
                // EVP_CTRL_AEAD_GET_TAG, which has GCM's value.
                && ossl::EVP_CIPHER_CTX_ctrl(
                    self.ctx,
                    ossl::EVP_CTRL_GCM_GET_TAG,
                    16,
                    tag.as_mut_ptr().cast(),
                ) == 1
        };
        ok.then_some(tag)
    }
}

impl Drop for LibcryptoAead {
    fn drop(&mut self) {
        // SAFETY: null or the context made in `new`; freeing cleanses the key it holds.
        unsafe { ossl::EVP_CIPHER_CTX_free(self.ctx) }
    }
}
