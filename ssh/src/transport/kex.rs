//! Key exchange: KEXINIT, algorithm negotiation, the key exchange methods, the exchange hash
//! and key derivation (RFC 4253 §7–8, RFC 5656, RFC 8731, OpenSSH's sntrup761x25519 and
//! mlkem768x25519 hybrids).

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::{digest, kem, rand as awsrand};
use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};
use zeroize::{Zeroize, Zeroizing};

use super::error::TransportError;
use super::wire::{put_mpint, put_string, Reader};

/// All the key exchange methods we implement, in our default preference order.
pub const KEX_ALGORITHMS: &[&str] = &[
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512",
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
];

/// A key exchange method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KexAlg {
    MlKem768X25519,
    Sntrup761X25519,
    Curve25519,
    Nistp256,
    Nistp384,
    Nistp521,
    Dh16,
    Dh14,
}

impl KexAlg {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "mlkem768x25519-sha256" => KexAlg::MlKem768X25519,
            "sntrup761x25519-sha512" | "sntrup761x25519-sha512@openssh.com" => KexAlg::Sntrup761X25519,
            "curve25519-sha256" | "curve25519-sha256@libssh.org" => KexAlg::Curve25519,
            "ecdh-sha2-nistp256" => KexAlg::Nistp256,
            "ecdh-sha2-nistp384" => KexAlg::Nistp384,
            "ecdh-sha2-nistp521" => KexAlg::Nistp521,
            "diffie-hellman-group16-sha512" => KexAlg::Dh16,
            "diffie-hellman-group14-sha256" => KexAlg::Dh14,
            _ => return None,
        })
    }

    pub(crate) fn hash(self) -> &'static digest::Algorithm {
        match self {
            KexAlg::MlKem768X25519 | KexAlg::Curve25519 | KexAlg::Nistp256 | KexAlg::Dh14 => &digest::SHA256,
            KexAlg::Nistp384 => &digest::SHA384,
            KexAlg::Sntrup761X25519 | KexAlg::Nistp521 | KexAlg::Dh16 => &digest::SHA512,
        }
    }

    /// DH sends e and f as mpints; every other method as strings.
    fn is_dh(self) -> bool {
        matches!(self, KexAlg::Dh14 | KexAlg::Dh16)
    }

    fn name(self) -> &'static str {
        match self {
            KexAlg::MlKem768X25519 => "mlkem768x25519-sha256",
            KexAlg::Sntrup761X25519 => "sntrup761x25519-sha512",
            KexAlg::Curve25519 => "curve25519-sha256",
            KexAlg::Nistp256 => "ecdh-sha2-nistp256",
            KexAlg::Nistp384 => "ecdh-sha2-nistp384",
            KexAlg::Nistp521 => "ecdh-sha2-nistp521",
            KexAlg::Dh16 => "diffie-hellman-group16-sha512",
            KexAlg::Dh14 => "diffie-hellman-group14-sha256",
        }
    }

    fn err(self, what: impl Into<String>) -> TransportError {
        TransportError::Kex {
            kex: self.name(),
            what: what.into(),
        }
    }

    /// Writes a public value (Q_C/Q_S, e/f) as it goes on the wire and into the hash.
    pub(crate) fn put_public(self, out: &mut Vec<u8>, q: &[u8]) {
        if self.is_dh() {
            put_mpint(out, q)
        } else {
            put_string(out, q)
        }
    }

    pub(crate) fn read_public<'a>(
        self,
        r: &mut Reader<'a>,
        field: &'static str,
    ) -> Result<&'a [u8], TransportError> {
        if self.is_dh() {
            r.mpint_positive(field)
        } else {
            r.string(field)
        }
    }
}

// ---------------------------------------------------------------------------------------
// KEXINIT

/// A parsed KEXINIT (RFC 4253 §7.1).
#[derive(Debug)]
pub(crate) struct KexInit {
    pub kex: Vec<String>,
    pub host_key: Vec<String>,
    pub enc_c2s: Vec<String>,
    pub enc_s2c: Vec<String>,
    pub mac_c2s: Vec<String>,
    pub mac_s2c: Vec<String>,
    pub comp_c2s: Vec<String>,
    pub comp_s2c: Vec<String>,
    pub first_kex_follows: bool,
}

const KEXINIT_FIELDS: [&str; 10] = [
    "kex_algorithms",
    "server_host_key_algorithms",
    "encryption_algorithms_client_to_server",
    "encryption_algorithms_server_to_client",
    "mac_algorithms_client_to_server",
    "mac_algorithms_server_to_client",
    "compression_algorithms_client_to_server",
    "compression_algorithms_server_to_client",
    "languages_client_to_server",
    "languages_server_to_client",
];

impl KexInit {
    /// Parses a KEXINIT payload (message number included).
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, TransportError> {
        let mut r = Reader::new("KEXINIT", payload);
        r.u8("message number")?;
        r.bytes(16, "cookie")?;
        let mut lists: Vec<Vec<String>> = Vec::with_capacity(10);
        for field in KEXINIT_FIELDS {
            let s = r.utf8(field)?;
            if !s.is_ascii() {
                return Err(r.err(field));
            }
            lists.push(
                s.split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
        let first_kex_follows = r.bool("first_kex_packet_follows")?;
        r.u32("reserved")?;
        // Trailing bytes are tolerated (RFC 4253 §7.1 leaves room for extension).
        let mut it = lists.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(KexInit {
            kex: next(),
            host_key: next(),
            enc_c2s: next(),
            enc_s2c: next(),
            mac_c2s: next(),
            mac_s2c: next(),
            comp_c2s: next(),
            comp_s2c: next(),
            first_kex_follows,
        })
    }
}

/// Our side's lists for one KEXINIT.
pub(crate) struct Proposal<'a> {
    pub kex: Vec<&'a str>,
    pub host_key: &'a [&'static str],
    pub ciphers: &'a [&'static str],
    pub macs: &'a [&'static str],
}

impl Proposal<'_> {
    /// The KEXINIT payload (message number included), with a random cookie.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, TransportError> {
        let mut out = Vec::with_capacity(1024);
        out.push(crate::msg::KEXINIT);
        let mut cookie = [0u8; 16];
        awsrand::fill(&mut cookie).map_err(|_| TransportError::Crypto("random cookie"))?;
        out.extend_from_slice(&cookie);
        super::wire::put_name_list(&mut out, &self.kex);
        super::wire::put_name_list(&mut out, self.host_key);
        for _ in 0..2 {
            super::wire::put_name_list(&mut out, self.ciphers);
        }
        for _ in 0..2 {
            super::wire::put_name_list(&mut out, self.macs);
        }
        for _ in 0..2 {
            super::wire::put_name_list(&mut out, &["none"]);
        }
        for _ in 0..2 {
            super::wire::put_name_list::<&str>(&mut out, &[]);
        }
        out.push(0); // first_kex_packet_follows
        out.extend_from_slice(&[0, 0, 0, 0]);
        Ok(out)
    }
}

/// RFC 4253 §7.1: the first client algorithm the server also supports. Returns our spelling.
pub(crate) fn choose(
    what: &'static str,
    we_are_client: bool,
    ours: &[&'static str],
    theirs: &[String],
) -> Result<&'static str, TransportError> {
    let found = if we_are_client {
        ours.iter().find(|o| theirs.iter().any(|t| t == *o)).copied()
    } else {
        theirs
            .iter()
            .find_map(|t| ours.iter().find(|o| **o == t.as_str()).copied())
    };
    found.ok_or_else(|| TransportError::NoCommonAlgorithm {
        what,
        ours: ours.join(","),
        theirs: theirs.join(","),
    })
}

// ---------------------------------------------------------------------------------------
// Methods

/// The client's secret half between its init message and the server's reply.
pub(crate) enum ClientSecret {
    X25519(EphemeralPrivateKey),
    Ecdh(EphemeralPrivateKey),
    Dh(Box<BoxedUint>),
    MlKem(Box<kem::DecapsulationKey>, EphemeralPrivateKey),
    Sntrup(Box<sntrup761::DecapsulationKey>, EphemeralPrivateKey),
}

fn ecdh_alg(alg: KexAlg) -> &'static agreement::Algorithm {
    match alg {
        KexAlg::Nistp256 => &agreement::ECDH_P256,
        KexAlg::Nistp384 => &agreement::ECDH_P384,
        KexAlg::Nistp521 => &agreement::ECDH_P521,
        _ => &agreement::X25519,
    }
}

fn ecdh_point_len(alg: KexAlg) -> usize {
    match alg {
        KexAlg::Nistp256 => 65,
        KexAlg::Nistp384 => 97,
        KexAlg::Nistp521 => 133,
        _ => 32,
    }
}

fn ephemeral(
    alg: KexAlg,
    a: &'static agreement::Algorithm,
) -> Result<(EphemeralPrivateKey, Vec<u8>), TransportError> {
    let rng = awsrand::SystemRandom::new();
    let k = EphemeralPrivateKey::generate(a, &rng).map_err(|_| alg.err("key generation"))?;
    let public = k
        .compute_public_key()
        .map_err(|_| alg.err("public key"))?
        .as_ref()
        .to_vec();
    Ok((k, public))
}

/// The raw shared secret of an X25519/ECDH agreement with the peer's public value.
fn agree(alg: KexAlg, k: EphemeralPrivateKey, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, TransportError> {
    let a = ecdh_alg(alg);
    if peer.len() != ecdh_point_len(alg) || (a != &agreement::X25519 && peer[0] != 4) {
        return Err(alg.err(format!(
            "peer public key of {} bytes is not a valid point",
            peer.len()
        )));
    }
    let secret = agreement::agree_ephemeral(k, UnparsedPublicKey::new(a, peer), (), |s| Ok(s.to_vec()))
        .map_err(|_| alg.err("peer public key rejected"))?;
    if secret.iter().all(|&b| b == 0) {
        return Err(alg.err("all-zero shared secret"));
    }
    Ok(Zeroizing::new(secret))
}

fn mpint_k(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut k = Vec::with_capacity(raw.len() + 5);
    put_mpint(&mut k, raw);
    Zeroizing::new(k)
}

/// K for the hybrids: HASH(kem secret || x25519 secret) as a string.
fn hybrid_k(alg: KexAlg, kem_ss: &[u8], x_ss: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut ctx = digest::Context::new(alg.hash());
    ctx.update(kem_ss);
    ctx.update(x_ss);
    let d = ctx.finish();
    let mut k = Vec::with_capacity(4 + d.as_ref().len());
    put_string(&mut k, d.as_ref());
    Zeroizing::new(k)
}

/// Client: generate the ephemeral secret and the public init value (Q_C, or e for DH).
pub(crate) fn client_start(alg: KexAlg) -> Result<(ClientSecret, Vec<u8>), TransportError> {
    Ok(match alg {
        KexAlg::Curve25519 => {
            let (k, q) = ephemeral(alg, &agreement::X25519)?;
            (ClientSecret::X25519(k), q)
        }
        KexAlg::Nistp256 | KexAlg::Nistp384 | KexAlg::Nistp521 => {
            let (k, q) = ephemeral(alg, ecdh_alg(alg))?;
            (ClientSecret::Ecdh(k), q)
        }
        KexAlg::Dh14 | KexAlg::Dh16 => {
            let group = DhGroup::of(alg);
            let (x, e) = group.keypair()?;
            (ClientSecret::Dh(Box::new(x)), e)
        }
        KexAlg::MlKem768X25519 => {
            let dk = kem::DecapsulationKey::generate(&kem::ML_KEM_768).map_err(|_| alg.err("ML-KEM key"))?;
            let ek = dk.encapsulation_key().map_err(|_| alg.err("ML-KEM key"))?;
            let mut q = ek
                .key_bytes()
                .map_err(|_| alg.err("ML-KEM key"))?
                .as_ref()
                .to_vec();
            let (x, xq) = ephemeral(alg, &agreement::X25519)?;
            q.extend_from_slice(&xq);
            (ClientSecret::MlKem(Box::new(dk), x), q)
        }
        KexAlg::Sntrup761X25519 => {
            let mut seed = Zeroizing::new([0u8; 32]);
            awsrand::fill(&mut seed[..]).map_err(|_| alg.err("random seed"))?;
            let (ek, dk) = sntrup761::generate_key_from_seed(*seed);
            let mut q = ek.as_ref().to_vec();
            let (x, xq) = ephemeral(alg, &agreement::X25519)?;
            q.extend_from_slice(&xq);
            (ClientSecret::Sntrup(Box::new(dk), x), q)
        }
    })
}

/// Client: K (encoded as it enters the hash) from the server's reply value.
pub(crate) fn client_finish(
    alg: KexAlg,
    secret: ClientSecret,
    q_s: &[u8],
) -> Result<Zeroizing<Vec<u8>>, TransportError> {
    match secret {
        ClientSecret::X25519(k) | ClientSecret::Ecdh(k) => Ok(mpint_k(&agree(alg, k, q_s)?)),
        ClientSecret::Dh(x) => DhGroup::of(alg).shared(&x, q_s),
        ClientSecret::MlKem(dk, x) => {
            const CT: usize = 1088;
            if q_s.len() != CT + 32 {
                return Err(alg.err(format!(
                    "server reply of {} bytes, expected {}",
                    q_s.len(),
                    CT + 32
                )));
            }
            let ss = dk
                .decapsulate(kem::Ciphertext::from(&q_s[..CT]))
                .map_err(|_| alg.err("ML-KEM decapsulation"))?;
            let xs = agree(KexAlg::Curve25519, x, &q_s[CT..]).map_err(|_| alg.err("X25519 part"))?;
            Ok(hybrid_k(alg, ss.as_ref(), &xs))
        }
        ClientSecret::Sntrup(dk, x) => {
            const CT: usize = sntrup761::CIPHERTEXT_SIZE;
            if q_s.len() != CT + 32 {
                return Err(alg.err(format!(
                    "server reply of {} bytes, expected {}",
                    q_s.len(),
                    CT + 32
                )));
            }
            let ct =
                sntrup761::Ciphertext::try_from(&q_s[..CT]).map_err(|_| alg.err("sntrup761 ciphertext"))?;
            let ss = dk.decapsulate(&ct);
            let xs = agree(KexAlg::Curve25519, x, &q_s[CT..]).map_err(|_| alg.err("X25519 part"))?;
            Ok(hybrid_k(alg, ss.as_ref(), &xs))
        }
    }
}

/// Server: the reply value (Q_S, or f) and K from the client's init value.
pub(crate) fn server_reply(alg: KexAlg, q_c: &[u8]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), TransportError> {
    match alg {
        KexAlg::Curve25519 | KexAlg::Nistp256 | KexAlg::Nistp384 | KexAlg::Nistp521 => {
            let (k, q_s) = ephemeral(alg, ecdh_alg(alg))?;
            let ss = agree(alg, k, q_c)?;
            Ok((q_s, mpint_k(&ss)))
        }
        KexAlg::Dh14 | KexAlg::Dh16 => {
            let group = DhGroup::of(alg);
            let (y, f) = group.keypair()?;
            let k = group.shared(&y, q_c)?;
            Ok((f, k))
        }
        KexAlg::MlKem768X25519 => {
            const PK: usize = 1184;
            if q_c.len() != PK + 32 {
                return Err(alg.err(format!(
                    "client value of {} bytes, expected {}",
                    q_c.len(),
                    PK + 32
                )));
            }
            let ek = kem::EncapsulationKey::new(&kem::ML_KEM_768, &q_c[..PK])
                .map_err(|_| alg.err("ML-KEM public key rejected"))?;
            let (ct, ss) = ek.encapsulate().map_err(|_| alg.err("ML-KEM encapsulation"))?;
            let (x, xq) = ephemeral(alg, &agreement::X25519)?;
            let xs = agree(KexAlg::Curve25519, x, &q_c[PK..]).map_err(|_| alg.err("X25519 part"))?;
            let mut q_s = ct.as_ref().to_vec();
            q_s.extend_from_slice(&xq);
            Ok((q_s, hybrid_k(alg, ss.as_ref(), &xs)))
        }
        KexAlg::Sntrup761X25519 => {
            const PK: usize = sntrup761::PUBLIC_KEY_SIZE;
            if q_c.len() != PK + 32 {
                return Err(alg.err(format!(
                    "client value of {} bytes, expected {}",
                    q_c.len(),
                    PK + 32
                )));
            }
            let ek =
                sntrup761::EncapsulationKey::try_from(&q_c[..PK]).map_err(|_| alg.err("sntrup761 key"))?;
            let mut seed = Zeroizing::new([0u8; 32]);
            awsrand::fill(&mut seed[..]).map_err(|_| alg.err("random seed"))?;
            let (ct, ss) = ek.encapsulate_deterministic(*seed);
            let (x, xq) = ephemeral(alg, &agreement::X25519)?;
            let xs = agree(KexAlg::Curve25519, x, &q_c[PK..]).map_err(|_| alg.err("X25519 part"))?;
            let mut q_s = ct.as_ref().to_vec();
            q_s.extend_from_slice(&xq);
            Ok((q_s, hybrid_k(alg, ss.as_ref(), &xs)))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Finite-field Diffie-Hellman (RFC 3526 groups 14 and 16, generator 2)

const GROUP14_P: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";
const GROUP16_P: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D788719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA993B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF";

/// Private exponent size: twice the 256-bit security target (as OpenSSH sizes it).
const DH_EXPONENT_BYTES: usize = 64;

struct DhGroup {
    alg: KexAlg,
    p_hex: &'static str,
}

impl DhGroup {
    fn of(alg: KexAlg) -> Self {
        DhGroup {
            alg,
            p_hex: if alg == KexAlg::Dh16 { GROUP16_P } else { GROUP14_P },
        }
    }

    fn bits(&self) -> u32 {
        (self.p_hex.len() * 4) as u32
    }

    fn p(&self) -> BoxedUint {
        let bytes: Vec<u8> = (0..self.p_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&self.p_hex[i..i + 2], 16).unwrap_or(0))
            .collect();
        BoxedUint::from_be_slice(&bytes, self.bits()).expect("the MODP prime fits its size")
    }

    fn params(&self) -> BoxedMontyParams {
        let p = Odd::new(self.p()).expect("the MODP primes are odd");
        BoxedMontyParams::new_vartime(p)
    }

    /// `base`^`exp` mod p, for our exponent `exp` ([`DH_EXPONENT_BYTES`] long): `pow` would
    /// walk every bit of its 2048–8192-bit precision, 4–16 times the work, and a client may
    /// ask for a key exchange again and again.
    fn modpow(&self, base: BoxedUint, exp: &BoxedUint) -> BoxedUint {
        let params = self.params();
        BoxedMontyForm::new(base, &params)
            .pow_bounded_exp(exp, (DH_EXPONENT_BYTES * 8) as u32)
            .retrieve()
    }

    fn to_bytes(&self, v: &BoxedUint) -> Vec<u8> {
        v.to_be_bytes().into_vec()
    }

    /// A random exponent x and the public value g^x mod p.
    fn keypair(&self) -> Result<(BoxedUint, Vec<u8>), TransportError> {
        let mut xb = Zeroizing::new([0u8; DH_EXPONENT_BYTES]);
        awsrand::fill(&mut xb[..]).map_err(|_| self.alg.err("random exponent"))?;
        xb[0] |= 0x80; // full-size exponent, never 0 or 1
        let x = BoxedUint::from_be_slice(&xb[..], self.bits()).map_err(|_| self.alg.err("exponent"))?;
        let g = BoxedUint::from_be_slice(&[2], self.bits()).map_err(|_| self.alg.err("generator"))?;
        let e = self.modpow(g, &x);
        Ok((x, self.to_bytes(&e)))
    }

    /// K = peer^x mod p as an mpint, after checking 1 < peer < p-1.
    fn shared(&self, x: &BoxedUint, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        let p = self.p();
        if peer.len() > (self.bits() / 8) as usize {
            return Err(self.alg.err("peer's public value is larger than the group"));
        }
        let y =
            BoxedUint::from_be_slice(peer, self.bits()).map_err(|_| self.alg.err("peer's public value"))?;
        let one = BoxedUint::from_be_slice(&[1], self.bits()).map_err(|_| self.alg.err("constant"))?;
        let p_minus_1 = p.wrapping_sub(&one);
        if y <= one || y >= p_minus_1 {
            return Err(self.alg.err("peer's public value out of range (1, p-1)"));
        }
        let mut k = self.to_bytes(&self.modpow(y, x));
        let enc = mpint_k(&k);
        k.zeroize();
        Ok(enc)
    }
}

// ---------------------------------------------------------------------------------------
// Exchange hash and key derivation

/// The parts of the exchange hash H (RFC 4253 §8, RFC 5656 §4).
pub(crate) struct HashInput<'a> {
    pub v_c: &'a [u8],
    pub v_s: &'a [u8],
    pub i_c: &'a [u8],
    pub i_s: &'a [u8],
    pub k_s: &'a [u8],
    pub q_c: &'a [u8],
    pub q_s: &'a [u8],
    /// K already encoded (mpint, or string for the hybrids).
    pub k: &'a [u8],
}

pub(crate) fn exchange_hash(alg: KexAlg, h: &HashInput<'_>) -> Vec<u8> {
    let mut buf = Zeroizing::new(Vec::with_capacity(
        h.v_c.len() + h.v_s.len() + h.i_c.len() + h.i_s.len() + h.k_s.len() + h.q_c.len() + h.q_s.len() + 64,
    ));
    put_string(&mut buf, h.v_c);
    put_string(&mut buf, h.v_s);
    put_string(&mut buf, h.i_c);
    put_string(&mut buf, h.i_s);
    put_string(&mut buf, h.k_s);
    alg.put_public(&mut buf, h.q_c);
    alg.put_public(&mut buf, h.q_s);
    buf.extend_from_slice(h.k);
    digest::digest(alg.hash(), &buf).as_ref().to_vec()
}

/// RFC 4253 §7.2: HASH(K || H || letter || session_id), extended by HASH(K || H || K1 || …).
pub(crate) fn derive_key(
    alg: KexAlg,
    k: &[u8],
    h: &[u8],
    letter: u8,
    session_id: &[u8],
    need: usize,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(need + 64));
    let mut ctx = digest::Context::new(alg.hash());
    ctx.update(k);
    ctx.update(h);
    ctx.update(&[letter]);
    ctx.update(session_id);
    out.extend_from_slice(ctx.finish().as_ref());
    while out.len() < need {
        let mut ctx = digest::Context::new(alg.hash());
        ctx.update(k);
        ctx.update(h);
        ctx.update(&out);
        out.extend_from_slice(ctx.finish().as_ref());
    }
    out.truncate(need);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(alg: KexAlg) {
        let (secret, q_c) = client_start(alg).unwrap();
        let (q_s, k_server) = server_reply(alg, &q_c).unwrap();
        let k_client = client_finish(alg, secret, &q_s).unwrap();
        assert_eq!(*k_client, *k_server, "{alg:?}");
    }

    #[test]
    fn every_method_agrees() {
        for name in KEX_ALGORITHMS {
            round_trip(KexAlg::from_name(name).unwrap());
        }
    }

    #[test]
    fn dh_rejects_degenerate_values() {
        let g = DhGroup::of(KexAlg::Dh14);
        let (x, _) = g.keypair().unwrap();
        assert!(g.shared(&x, &[1]).is_err());
        assert!(g.shared(&x, &[]).is_err());
        let p = g.to_bytes(&g.p());
        assert!(g.shared(&x, &p).is_err());
    }

    #[test]
    fn x25519_rejects_bad_lengths_and_zero_point() {
        let (secret, _) = client_start(KexAlg::Curve25519).unwrap();
        assert!(client_finish(KexAlg::Curve25519, secret, &[0u8; 31]).is_err());
        let (secret, _) = client_start(KexAlg::Curve25519).unwrap();
        assert!(client_finish(KexAlg::Curve25519, secret, &[0u8; 32]).is_err());
    }

    #[test]
    fn derive_key_extends() {
        let k = derive_key(KexAlg::Curve25519, b"k", b"h", b'A', b"s", 100);
        assert_eq!(k.len(), 100);
        let short = derive_key(KexAlg::Curve25519, b"k", b"h", b'A', b"s", 16);
        assert_eq!(&k[..16], &short[..]);
    }
}
