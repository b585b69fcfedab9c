//! Packet ciphers and MACs (RFC 4253 §6, RFC 5647, OpenSSH PROTOCOL.chacha20poly1305 and the
//! `-etm@openssh.com` MACs), each sealing and opening one packet in place.
//!
//! Usable on their own (benchmarks): build [`SealingKeys`] and [`OpeningKeys`] from the same
//! key material, [`SealingKeys::write_packet`] a payload into a buffer and
//! [`OpeningKeys::open_packet`] it back.
//!
//! A packet buffer is `packet_length (4) | padding_length (1) | payload | padding | tag`, where
//! `tag` is the MAC or AEAD tag (`tag_len()` bytes). All crypto runs in place; nothing is
//! allocated per packet.

use std::ops::Range;

use aws_lc_rs::aead::{self, chacha20_poly1305_openssh as chacha};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::{constant_time, hmac, iv::FixedLength};
use zeroize::Zeroize;

use super::chacha_libcrypto::{self, Bulk, LibcryptoChacha};
use super::error::TransportError;

/// The largest `packet_length` we accept or send (OpenSSH's PACKET_MAX_SIZE).
pub const MAX_PACKET_LEN: usize = 256 * 1024;
/// The largest payload [`SealingKeys::write_packet`] takes (room left for padding).
pub const MAX_PAYLOAD_LEN: usize = MAX_PACKET_LEN - 1 - 4 - 32;

/// An encryption algorithm, by its SSH name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherAlg {
    /// No encryption (before the first key exchange).
    None,
    Chacha20Poly1305,
    Aes128Gcm,
    Aes256Gcm,
    Aes128Ctr,
    Aes192Ctr,
    Aes256Ctr,
}

/// All the ciphers we implement, in our default preference order.
pub const CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
];

/// All the MACs we implement, in our default preference order (used with the CTR ciphers).
pub const MACS: &[&str] = &[
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
];

impl CipherAlg {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => CipherAlg::None,
            "chacha20-poly1305@openssh.com" => CipherAlg::Chacha20Poly1305,
            "aes128-gcm@openssh.com" => CipherAlg::Aes128Gcm,
            "aes256-gcm@openssh.com" => CipherAlg::Aes256Gcm,
            "aes128-ctr" => CipherAlg::Aes128Ctr,
            "aes192-ctr" => CipherAlg::Aes192Ctr,
            "aes256-ctr" => CipherAlg::Aes256Ctr,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            CipherAlg::None => "none",
            CipherAlg::Chacha20Poly1305 => "chacha20-poly1305@openssh.com",
            CipherAlg::Aes128Gcm => "aes128-gcm@openssh.com",
            CipherAlg::Aes256Gcm => "aes256-gcm@openssh.com",
            CipherAlg::Aes128Ctr => "aes128-ctr",
            CipherAlg::Aes192Ctr => "aes192-ctr",
            CipherAlg::Aes256Ctr => "aes256-ctr",
        }
    }

    /// Bytes of key material (RFC 4253 §7.2 letters C/D).
    pub fn key_len(self) -> usize {
        match self {
            CipherAlg::None => 0,
            CipherAlg::Chacha20Poly1305 => chacha::KEY_LEN,
            CipherAlg::Aes128Gcm | CipherAlg::Aes128Ctr => 16,
            CipherAlg::Aes192Ctr => 24,
            CipherAlg::Aes256Gcm | CipherAlg::Aes256Ctr => 32,
        }
    }

    /// Bytes of IV (letters A/B).
    pub fn iv_len(self) -> usize {
        match self {
            CipherAlg::None | CipherAlg::Chacha20Poly1305 => 0,
            CipherAlg::Aes128Gcm | CipherAlg::Aes256Gcm => 12,
            CipherAlg::Aes128Ctr | CipherAlg::Aes192Ctr | CipherAlg::Aes256Ctr => 16,
        }
    }

    pub fn block_len(self) -> usize {
        match self {
            CipherAlg::None | CipherAlg::Chacha20Poly1305 => 8,
            _ => 16,
        }
    }

    /// Authenticated encryption: the MAC negotiation is ignored.
    pub fn is_aead(self) -> bool {
        matches!(
            self,
            CipherAlg::Chacha20Poly1305 | CipherAlg::Aes128Gcm | CipherAlg::Aes256Gcm
        )
    }
}

/// A MAC algorithm, by its SSH name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacAlg {
    HmacSha256,
    HmacSha512,
    HmacSha256Etm,
    HmacSha512Etm,
}

impl MacAlg {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "hmac-sha2-256" => MacAlg::HmacSha256,
            "hmac-sha2-512" => MacAlg::HmacSha512,
            "hmac-sha2-256-etm@openssh.com" => MacAlg::HmacSha256Etm,
            "hmac-sha2-512-etm@openssh.com" => MacAlg::HmacSha512Etm,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            MacAlg::HmacSha256 => "hmac-sha2-256",
            MacAlg::HmacSha512 => "hmac-sha2-512",
            MacAlg::HmacSha256Etm => "hmac-sha2-256-etm@openssh.com",
            MacAlg::HmacSha512Etm => "hmac-sha2-512-etm@openssh.com",
        }
    }

    /// Bytes of key material (letters E/F) and of the MAC itself.
    pub fn key_len(self) -> usize {
        match self {
            MacAlg::HmacSha256 | MacAlg::HmacSha256Etm => 32,
            MacAlg::HmacSha512 | MacAlg::HmacSha512Etm => 64,
        }
    }

    pub fn mac_len(self) -> usize {
        self.key_len()
    }

    /// Encrypt-then-MAC: the length travels in clear and the MAC covers the ciphertext.
    pub fn etm(self) -> bool {
        matches!(self, MacAlg::HmacSha256Etm | MacAlg::HmacSha512Etm)
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            MacAlg::HmacSha256 | MacAlg::HmacSha256Etm => hmac::HMAC_SHA256,
            MacAlg::HmacSha512 | MacAlg::HmacSha512Etm => hmac::HMAC_SHA512,
        }
    }
}

struct Mac {
    alg: MacAlg,
    key: hmac::Key,
}

impl Mac {
    fn compute(&self, seq: u32, data: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&seq.to_be_bytes());
        ctx.update(data);
        ctx.sign()
    }
}

struct Ctr {
    key: EncryptingKey,
    /// The counter block as a big-endian number, advanced by the blocks already processed.
    counter: u128,
}

impl Ctr {
    /// Applies the key stream to `data` (a whole number of blocks) from the current counter,
    /// advancing it.
    fn apply(&mut self, data: &mut [u8]) -> Result<(), TransportError> {
        if data.is_empty() {
            return Ok(());
        }
        let iv = FixedLength::<16>::from(self.counter.to_be_bytes());
        self.key
            .less_safe_encrypt(data, EncryptionContext::Iv128(iv))
            .map_err(|_| TransportError::Crypto("AES-CTR"))?;
        self.counter = self.counter.wrapping_add((data.len() / 16) as u128);
        Ok(())
    }
}

enum Inner {
    None,
    /// aws-lc for short packets and the length field, libcrypto (when it has the
    /// algorithms) for the rest: see `chacha_libcrypto.rs`.
    Chacha {
        seal: Option<chacha::SealingKey>,
        open: Option<chacha::OpeningKey>,
        bulk: Bulk,
    },
    Gcm {
        key: aead::LessSafeKey,
        nonce: [u8; 12],
    },
    /// Boxed: the HMAC state is large.
    Ctr(Box<CtrMac>),
}

struct CtrMac {
    ctr: Ctr,
    mac: Mac,
    /// The first block of the packet at the head was decrypted to read its length.
    first_block_done: bool,
}

/// One direction's cipher state; shared shape of [`SealingKeys`] and [`OpeningKeys`].
struct Keys {
    alg: CipherAlg,
    mac: Option<MacAlg>,
    inner: Inner,
}

impl Keys {
    fn new(
        alg: CipherAlg,
        mac: Option<MacAlg>,
        key: &[u8],
        iv: &[u8],
        mac_key: &[u8],
        sealing: bool,
    ) -> Result<Self, TransportError> {
        let bad = |what| TransportError::Config(format!("{}: {what}", alg.name()));
        if key.len() < alg.key_len() || iv.len() < alg.iv_len() {
            return Err(bad("key material too short"));
        }
        let key = &key[..alg.key_len()];
        let iv = &iv[..alg.iv_len()];
        // aws-lc picks its SIMD code from CPU features it detects once; its OpenSSH
        // ChaCha20-Poly1305 keys do not trigger that detection, and before it the portable
        // ChaCha20 runs (a third of the speed, measured). Cheap after the first call.
        aws_lc_rs::init();
        let inner = match alg {
            CipherAlg::None => Inner::None,
            CipherAlg::Chacha20Poly1305 => {
                let mut k = [0u8; chacha::KEY_LEN];
                k.copy_from_slice(key);
                let bulk = Bulk::new(k);
                let inner = if sealing {
                    Inner::Chacha {
                        seal: Some(chacha::SealingKey::new(&k)),
                        open: None,
                        bulk,
                    }
                } else {
                    Inner::Chacha {
                        seal: None,
                        open: Some(chacha::OpeningKey::new(&k)),
                        bulk,
                    }
                };
                k.zeroize();
                inner
            }
            CipherAlg::Aes128Gcm | CipherAlg::Aes256Gcm => {
                let a = if alg == CipherAlg::Aes128Gcm {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                let unbound = aead::UnboundKey::new(a, key).map_err(|_| bad("bad key"))?;
                let mut nonce = [0u8; 12];
                nonce.copy_from_slice(iv);
                Inner::Gcm {
                    key: aead::LessSafeKey::new(unbound),
                    nonce,
                }
            }
            CipherAlg::Aes128Ctr | CipherAlg::Aes192Ctr | CipherAlg::Aes256Ctr => {
                let a = match alg {
                    CipherAlg::Aes128Ctr => &aws_lc_rs::cipher::AES_128,
                    CipherAlg::Aes192Ctr => &aws_lc_rs::cipher::AES_192,
                    _ => &aws_lc_rs::cipher::AES_256,
                };
                let unbound = UnboundCipherKey::new(a, key).map_err(|_| bad("bad key"))?;
                let ctr_key = EncryptingKey::ctr(unbound).map_err(|_| bad("bad key"))?;
                let mut c = [0u8; 16];
                c.copy_from_slice(iv);
                let mac_alg = mac.ok_or_else(|| bad("needs a MAC"))?;
                if mac_key.len() < mac_alg.key_len() {
                    return Err(bad("MAC key material too short"));
                }
                let mac_key = hmac::Key::new(mac_alg.hmac_alg(), &mac_key[..mac_alg.key_len()]);
                Inner::Ctr(Box::new(CtrMac {
                    ctr: Ctr {
                        key: ctr_key,
                        counter: u128::from_be_bytes(c),
                    },
                    mac: Mac {
                        alg: mac_alg,
                        key: mac_key,
                    },
                    first_block_done: false,
                }))
            }
        };
        let mac = if alg.is_aead() || alg == CipherAlg::None {
            None
        } else {
            mac
        };
        Ok(Keys { alg, mac, inner })
    }

    fn tag_len(&self) -> usize {
        match &self.inner {
            Inner::None => 0,
            Inner::Chacha { .. } => chacha::TAG_LEN,
            Inner::Gcm { .. } => 16,
            Inner::Ctr(cm) => cm.mac.alg.mac_len(),
        }
    }

    /// Whether the 4-byte length is outside the encrypted, block-aligned part (AEAD and EtM).
    fn length_apart(&self) -> bool {
        self.alg.is_aead() || self.mac.is_some_and(MacAlg::etm)
    }
}

/// Keys that encrypt and authenticate outgoing packets.
pub struct SealingKeys(Keys);

/// Keys that authenticate and decrypt incoming packets.
pub struct OpeningKeys(Keys);

impl SealingKeys {
    /// `key`, `iv`, `mac_key` as derived by RFC 4253 §7.2 (longer slices are truncated).
    pub fn new(
        cipher: CipherAlg,
        mac: Option<MacAlg>,
        key: &[u8],
        iv: &[u8],
        mac_key: &[u8],
    ) -> Result<Self, TransportError> {
        Keys::new(cipher, mac, key, iv, mac_key, true).map(SealingKeys)
    }

    /// No encryption, no MAC: the state before the first NEWKEYS.
    pub fn plaintext() -> Self {
        SealingKeys(Keys {
            alg: CipherAlg::None,
            mac: None,
            inner: Inner::None,
        })
    }

    pub fn cipher(&self) -> CipherAlg {
        self.0.alg
    }

    pub fn tag_len(&self) -> usize {
        self.0.tag_len()
    }

    /// Padding for a payload of `payload_len` bytes (at least 4, aligning to the block size).
    pub fn padding_len(&self, payload_len: usize) -> usize {
        let bs = self.0.alg.block_len();
        let unpadded = 1 + payload_len + if self.0.length_apart() { 0 } else { 4 };
        let mut pad = bs - unpadded % bs;
        if pad < 4 {
            pad += bs;
        }
        pad
    }

    /// Bytes on the wire for a payload of `payload_len` bytes.
    pub fn packet_len(&self, payload_len: usize) -> usize {
        4 + 1 + payload_len + self.padding_len(payload_len) + self.tag_len()
    }

    /// Frames, pads (random padding), encrypts and authenticates `payload` as packet number
    /// `seq`, appending it to `out`. Returns the bytes appended.
    pub fn write_packet(
        &mut self,
        seq: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, TransportError> {
        self.write_packet_parts(seq, [payload, &[]], out)
    }

    /// [`write_packet`](Self::write_packet) for a payload in two pieces, back to back.
    pub fn write_packet_parts(
        &mut self,
        seq: u32,
        parts: [&[u8]; 2],
        out: &mut Vec<u8>,
    ) -> Result<usize, TransportError> {
        let payload_len = parts[0].len() + parts[1].len();
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(TransportError::PayloadTooLarge {
                length: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let pad = self.padding_len(payload_len);
        let packet_length = 1 + payload_len + pad;
        let total = 4 + packet_length + self.tag_len();
        let start = out.len();
        out.reserve(total);
        out.extend_from_slice(&(packet_length as u32).to_be_bytes());
        out.push(pad as u8);
        out.extend_from_slice(parts[0]);
        out.extend_from_slice(parts[1]);
        out.resize(start + total, 0);
        let pad_range = start + 5 + payload_len..start + 4 + packet_length;
        if self.0.alg != CipherAlg::None {
            aws_lc_rs::rand::fill(&mut out[pad_range])
                .map_err(|_| TransportError::Crypto("random padding"))?;
        }
        self.seal(seq, &mut out[start..])?;
        Ok(total)
    }

    /// Seals a framed packet in place: `packet` holds `packet_length | padding_length | payload
    /// | padding` followed by exactly `tag_len()` bytes for the tag.
    pub fn seal(&mut self, seq: u32, packet: &mut [u8]) -> Result<(), TransportError> {
        let tag_len = self.tag_len();
        let body_end = packet
            .len()
            .checked_sub(tag_len)
            .ok_or(TransportError::Crypto("short packet"))?;
        let etm = self.0.length_apart();
        let (body, tag) = packet.split_at_mut(body_end);
        match &mut self.0.inner {
            Inner::None => {}
            Inner::Chacha { seal, bulk, .. } => {
                if body.len() >= chacha_libcrypto::MIN_LEN {
                    if let Some(bulk) = bulk.get(LibcryptoChacha::new) {
                        let t = bulk
                            .seal(seq, body)
                            .ok_or(TransportError::Crypto("libcrypto chacha20-poly1305 seal"))?;
                        tag.copy_from_slice(&t);
                        return Ok(());
                    }
                }
                let key = seal
                    .as_ref()
                    .ok_or(TransportError::Crypto("chacha sealing key"))?;
                let mut t = [0u8; chacha::TAG_LEN];
                key.seal_in_place(seq, body, &mut t);
                tag.copy_from_slice(&t);
            }
            Inner::Gcm { key, nonce } => {
                let (len, rest) = body.split_at_mut(4);
                let aad = aead::Aad::from([len[0], len[1], len[2], len[3]]);
                let t = key
                    .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(*nonce), aad, rest)
                    .map_err(|_| TransportError::Crypto("AES-GCM seal"))?;
                tag.copy_from_slice(t.as_ref());
                gcm_increment(nonce);
            }
            Inner::Ctr(cm) => {
                let CtrMac { ctr, mac, .. } = &mut **cm;
                if etm {
                    ctr.apply(&mut body[4..])?;
                    tag.copy_from_slice(mac.compute(seq, body).as_ref());
                } else {
                    tag.copy_from_slice(mac.compute(seq, body).as_ref());
                    ctr.apply(body)?;
                }
            }
        }
        Ok(())
    }
}

fn gcm_increment(nonce: &mut [u8; 12]) {
    let mut c = [0u8; 8];
    c.copy_from_slice(&nonce[4..]);
    let next = u64::from_be_bytes(c).wrapping_add(1);
    nonce[4..].copy_from_slice(&next.to_be_bytes());
}

impl OpeningKeys {
    pub fn new(
        cipher: CipherAlg,
        mac: Option<MacAlg>,
        key: &[u8],
        iv: &[u8],
        mac_key: &[u8],
    ) -> Result<Self, TransportError> {
        Keys::new(cipher, mac, key, iv, mac_key, false).map(OpeningKeys)
    }

    pub fn plaintext() -> Self {
        OpeningKeys(Keys {
            alg: CipherAlg::None,
            mac: None,
            inner: Inner::None,
        })
    }

    pub fn cipher(&self) -> CipherAlg {
        self.0.alg
    }

    pub fn tag_len(&self) -> usize {
        self.0.tag_len()
    }

    /// Bytes needed at the head of a packet before [`OpeningKeys::decrypt_length`] can run.
    pub fn length_bytes_needed(&self) -> usize {
        if matches!(self.0.inner, Inner::Ctr(_)) && !self.0.length_apart() {
            16
        } else {
            4
        }
    }

    /// Returns `packet_length` of the packet starting at `head` (at least
    /// `length_bytes_needed()` bytes). Call once per packet: with a CTR cipher and a plain
    /// (non-EtM) MAC this decrypts the first block in place.
    pub fn decrypt_length(&mut self, seq: u32, head: &mut [u8]) -> Result<u32, TransportError> {
        let etm = self.0.length_apart();
        let len4 = match &mut self.0.inner {
            Inner::Chacha { open, .. } => {
                let key = open
                    .as_ref()
                    .ok_or(TransportError::Crypto("chacha opening key"))?;
                key.decrypt_packet_length(seq, [head[0], head[1], head[2], head[3]])
            }
            Inner::Ctr(cm) if !etm => {
                let CtrMac {
                    ctr,
                    first_block_done,
                    ..
                } = &mut **cm;
                if !*first_block_done {
                    ctr.apply(&mut head[..16])?;
                    *first_block_done = true;
                }
                [head[0], head[1], head[2], head[3]]
            }
            _ => [head[0], head[1], head[2], head[3]],
        };
        Ok(u32::from_be_bytes(len4))
    }

    /// Checks `packet_length` against the size limit and the cipher's block alignment.
    pub fn check_length(&self, seq: u32, packet_length: usize) -> Result<(), TransportError> {
        if packet_length > MAX_PACKET_LEN {
            return Err(TransportError::PacketTooLarge {
                length: packet_length,
                max: MAX_PACKET_LEN,
            });
        }
        if packet_length < 5 {
            return Err(TransportError::Framing {
                seq,
                what: "packet_length below 5",
            });
        }
        let aligned = if self.0.length_apart() {
            packet_length
        } else {
            packet_length + 4
        };
        if aligned % self.0.alg.block_len() != 0 {
            return Err(TransportError::Framing {
                seq,
                what: "packet not a multiple of the cipher block size",
            });
        }
        Ok(())
    }

    /// Authenticates and decrypts the packet in place: `packet` is exactly `4 + packet_length +
    /// tag_len()` bytes, after `decrypt_length` ran on it. On success `packet[4..4 +
    /// packet_length]` is the plaintext `padding_length | payload | padding`.
    pub fn open(&mut self, seq: u32, packet: &mut [u8]) -> Result<(), TransportError> {
        let tag_len = self.tag_len();
        let alg = self.0.alg.name();
        let etm = self.0.length_apart();
        let mac_err = TransportError::Mac { seq, cipher: alg };
        let body_end = packet
            .len()
            .checked_sub(tag_len)
            .ok_or(TransportError::Crypto("short packet"))?;
        let (body, tag) = packet.split_at_mut(body_end);
        match &mut self.0.inner {
            Inner::None => {}
            Inner::Chacha { open, bulk, .. } => {
                if body.len() >= chacha_libcrypto::MIN_LEN {
                    if let Some(bulk) = bulk.get(LibcryptoChacha::new) {
                        let mut t = [0u8; chacha::TAG_LEN];
                        t.copy_from_slice(tag);
                        let ok = bulk
                            .open(seq, body, &t)
                            .map_err(|()| TransportError::Crypto("libcrypto chacha20-poly1305 open"))?;
                        return if ok { Ok(()) } else { Err(mac_err) };
                    }
                }
                let key = open
                    .as_ref()
                    .ok_or(TransportError::Crypto("chacha opening key"))?;
                let mut t = [0u8; chacha::TAG_LEN];
                t.copy_from_slice(tag);
                key.open_in_place(seq, body, &t).map_err(|_| mac_err)?;
            }
            Inner::Gcm { key, nonce } => {
                let (len, rest) = body.split_at_mut(4);
                let aad = aead::Aad::from([len[0], len[1], len[2], len[3]]);
                let n = aead::Nonce::assume_unique_for_key(*nonce);
                gcm_increment(nonce);
                key.open_in_place_separate_tag(n, aad, tag, rest)
                    .map_err(|_| mac_err)?;
            }
            Inner::Ctr(cm) => {
                let CtrMac {
                    ctr,
                    mac,
                    first_block_done,
                } = &mut **cm;
                if etm {
                    let ok = constant_time::verify_slices_are_equal(mac.compute(seq, body).as_ref(), tag);
                    // Advance the counter whether or not the MAC verified: the stream stays in
                    // step for an error report and the packet is dropped anyway.
                    ctr.apply(&mut body[4..])?;
                    ok.map_err(|_| mac_err)?;
                } else {
                    if !*first_block_done {
                        ctr.apply(&mut body[..16])?;
                    }
                    *first_block_done = false;
                    ctr.apply(&mut body[16..])?;
                    constant_time::verify_slices_are_equal(mac.compute(seq, body).as_ref(), tag)
                        .map_err(|_| mac_err)?;
                }
            }
        }
        Ok(())
    }

    /// Opens one whole packet at the start of `buf` (a benchmark or test helper): returns the
    /// payload's range in `buf` and the packet's total length on the wire.
    pub fn open_packet(&mut self, seq: u32, buf: &mut [u8]) -> Result<(Range<usize>, usize), TransportError> {
        let need = self.length_bytes_needed();
        if buf.len() < need {
            return Err(TransportError::Framing {
                seq,
                what: "truncated packet",
            });
        }
        let len = self.decrypt_length(seq, buf)? as usize;
        self.check_length(seq, len)?;
        let total = 4 + len + self.tag_len();
        if buf.len() < total {
            return Err(TransportError::Framing {
                seq,
                what: "truncated packet",
            });
        }
        self.open(seq, &mut buf[..total])?;
        let payload = payload_range(seq, &buf[..4 + len])?;
        Ok((payload, total))
    }
}

/// The payload's range in a decrypted `packet_length | padding_length | payload | padding`.
pub(crate) fn payload_range(seq: u32, plain: &[u8]) -> Result<Range<usize>, TransportError> {
    let packet_length = plain.len() - 4;
    let pad = plain[4] as usize;
    if pad < 4 {
        return Err(TransportError::Framing {
            seq,
            what: "padding shorter than 4 bytes",
        });
    }
    if pad + 1 >= packet_length {
        return Err(TransportError::Framing {
            seq,
            what: "padding_length leaves no payload",
        });
    }
    Ok(5..4 + packet_length - pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(c: CipherAlg, m: Option<MacAlg>) -> (SealingKeys, OpeningKeys) {
        let key = [7u8; 64];
        let iv = [9u8; 16];
        let mk = [3u8; 64];
        (
            SealingKeys::new(c, m, &key, &iv, &mk).unwrap(),
            OpeningKeys::new(c, m, &key, &iv, &mk).unwrap(),
        )
    }

    fn all() -> Vec<(CipherAlg, Option<MacAlg>)> {
        let mut v = vec![(CipherAlg::None, None)];
        for c in CIPHERS {
            let c = CipherAlg::from_name(c).unwrap();
            if c.is_aead() {
                v.push((c, None));
            } else {
                for m in MACS {
                    v.push((c, MacAlg::from_name(m)));
                }
            }
        }
        v
    }

    #[test]
    fn seal_open_round_trip_every_cipher() {
        for (c, m) in all() {
            let (mut s, mut o) = pair(c, m);
            let mut wire = Vec::new();
            for (seq, n) in [1usize, 2, 15, 16, 17, 100, 32768].into_iter().enumerate() {
                let payload: Vec<u8> = (0..n).map(|i| (i * 7 + seq) as u8).collect();
                wire.clear();
                let total = s.write_packet(seq as u32, &payload, &mut wire).unwrap();
                assert_eq!(total, wire.len());
                assert_eq!(total, s.packet_len(payload.len()));
                let (r, t) = o.open_packet(seq as u32, &mut wire).unwrap();
                assert_eq!(t, total, "{c:?} {m:?}");
                assert_eq!(&wire[r], &payload[..], "{c:?} {m:?} n={n}");
            }
        }
    }

    /// An interactive session's small packets never make libcrypto contexts; the first
    /// large one does, on each side.
    #[test]
    fn chacha_makes_libcrypto_contexts_at_the_first_large_packet() {
        let (mut s, mut o) = pair(CipherAlg::Chacha20Poly1305, None);
        let state = |k: &Keys| match &k.inner {
            Inner::Chacha {
                bulk: Bulk::Pending(_),
                ..
            } => "pending",
            Inner::Chacha {
                bulk: Bulk::Ready(_), ..
            } => "ready",
            _ => "other",
        };
        let mut wire = Vec::new();
        s.write_packet(0, b"ls -l\n", &mut wire).unwrap();
        o.open_packet(0, &mut wire).unwrap();
        assert_eq!((state(&s.0), state(&o.0)), ("pending", "pending"));
        wire.clear();
        s.write_packet(1, &[7u8; 4096], &mut wire).unwrap();
        let (r, _) = o.open_packet(1, &mut wire).unwrap();
        assert_eq!(wire[r], [7u8; 4096]);
        assert_eq!((state(&s.0), state(&o.0)), ("ready", "ready"));
    }

    #[test]
    fn tampering_is_detected() {
        for (c, m) in all() {
            if c == CipherAlg::None {
                continue;
            }
            let (mut s, mut o) = pair(c, m);
            let mut wire = Vec::new();
            s.write_packet(0, b"hello world", &mut wire).unwrap();
            let last = wire.len() - 1;
            wire[last] ^= 1;
            let e = o.open_packet(0, &mut wire).unwrap_err();
            assert!(matches!(e, TransportError::Mac { .. }), "{c:?} {m:?}: {e}");
        }
    }

    #[test]
    fn oversize_length_is_refused() {
        let o = OpeningKeys::plaintext();
        assert!(matches!(
            o.check_length(0, MAX_PACKET_LEN + 8),
            Err(TransportError::PacketTooLarge { .. })
        ));
    }
}
