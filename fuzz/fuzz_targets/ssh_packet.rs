//! The SSH engine's packet decoder with keys in force: `OpeningKeys::open_packet` on
//! arbitrary bytes, for every cipher and MAC (the first input byte chooses).
//!
//! What must hold: no panic, never a payload range outside the buffer, and a packet the
//! engine sealed itself opens back to its payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_ssh::transport::cipher::{CipherAlg, MacAlg, OpeningKeys, SealingKeys};

const SUITES: &[(CipherAlg, Option<MacAlg>)] = &[
    (CipherAlg::Chacha20Poly1305, None),
    (CipherAlg::Aes128Gcm, None),
    (CipherAlg::Aes256Gcm, None),
    (CipherAlg::Aes128Ctr, Some(MacAlg::HmacSha256)),
    (CipherAlg::Aes192Ctr, Some(MacAlg::HmacSha512)),
    (CipherAlg::Aes256Ctr, Some(MacAlg::HmacSha256Etm)),
    (CipherAlg::Aes128Ctr, Some(MacAlg::HmacSha512Etm)),
    (CipherAlg::None, None),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (alg, mac) = SUITES[pick as usize % SUITES.len()];
    let (key, iv, mk) = ([7u8; 64], [9u8; 16], [3u8; 64]);
    let k = &key[..alg.key_len()];
    let i = &iv[..alg.iv_len()];
    let m = mac.map(|m| &mk[..m.key_len()]).unwrap_or(&[]);
    let mk_open = || {
        if alg == CipherAlg::None {
            OpeningKeys::plaintext()
        } else {
            OpeningKeys::new(alg, mac, k, i, m).unwrap()
        }
    };
    let mut open = mk_open();
    let mut buf = rest.to_vec();
    if let Ok((range, total)) = open.open_packet(pick as u32, &mut buf) {
        assert!(range.end <= total && total <= buf.len());
    }
    // Sealed by the engine, opened by the engine: the payload comes back.
    // (A payload is at least a message number: an empty one is refused, rightly.)
    if alg != CipherAlg::None && !rest.is_empty() && rest.len() <= 4096 {
        let mut seal = SealingKeys::new(alg, mac, k, i, m).unwrap();
        let mut out = Vec::new();
        seal.write_packet(5, rest, &mut out).unwrap();
        let mut open = mk_open();
        let (range, total) = open.open_packet(5, &mut out).unwrap();
        assert_eq!(total, out.len());
        assert_eq!(&out[range], rest);
    }
});
