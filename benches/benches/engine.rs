//! The SSH engine's per-packet cryptography (criterion): seal + open of one 32 KiB channel
//! data packet for each cipher the engine implements, and — for chacha20-poly1305@openssh.com,
//! the default of OpenSSH clients and the costliest — the same construction on RustCrypto's
//! `chacha20` + `poly1305` (their SIMD backends), the fastest alternative tried. The engine
//! uses whichever is faster here (aws-lc).

use std::hint::black_box;

use chacha20::{
    cipher::{KeyIvInit, StreamCipher, StreamCipherSeek},
    ChaCha20Legacy,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use poly1305::{universal_hash::KeyInit, Poly1305};
use portcullis_ssh::transport::cipher::{CipherAlg, MacAlg, OpeningKeys, SealingKeys};

const PAYLOAD: usize = 32 * 1024;

fn engine(c: &mut Criterion) {
    let key = [0x42u8; 64];
    let iv = [0x24u8; 16];
    let mac_key = [0x11u8; 64];
    let payload = vec![0x5au8; PAYLOAD];
    let cases: &[(&str, CipherAlg, Option<MacAlg>)] = &[
        ("chacha20-poly1305", CipherAlg::Chacha20Poly1305, None),
        ("aes128-gcm", CipherAlg::Aes128Gcm, None),
        ("aes256-gcm", CipherAlg::Aes256Gcm, None),
        (
            "aes128-ctr+hmac-sha2-256-etm",
            CipherAlg::Aes128Ctr,
            Some(MacAlg::HmacSha256Etm),
        ),
        (
            "aes256-ctr+hmac-sha2-512",
            CipherAlg::Aes256Ctr,
            Some(MacAlg::HmacSha512),
        ),
    ];
    let mut g = c.benchmark_group("engine_seal_open_32k");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, alg, mac) in cases {
        let k = &key[..alg.key_len()];
        let i = &iv[..alg.iv_len()];
        let m = mac.map(|m| &mac_key[..m.key_len()]).unwrap_or(&[]);
        let mut seal = SealingKeys::new(*alg, *mac, k, i, m).unwrap();
        let mut open = OpeningKeys::new(*alg, *mac, k, i, m).unwrap();
        let mut out = Vec::with_capacity(PAYLOAD + 256);
        let mut seq = 0u32;
        g.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                seal.write_packet(seq, &payload, &mut out).unwrap();
                let (range, _) = open.open_packet(seq, &mut out).unwrap();
                seq = seq.wrapping_add(1);
                black_box(range)
            })
        });
    }
    // RustCrypto's ChaCha20 (64-bit nonce = sequence number, as OpenSSH's construction) and
    // Poly1305 over the same packet layout: length with K1, payload with K2 from block 1,
    // Poly1305 keyed by K2's block 0 over length || ciphertext.
    let (k2, k1) = key.split_at(32);
    let mut packet = vec![0u8; 4 + 1 + PAYLOAD + 11];
    let mut seq = 0u64;
    g.bench_function("chacha20-poly1305_rustcrypto", |b| {
        b.iter(|| {
            let nonce = seq.to_be_bytes();
            for _ in 0..2 {
                // seal, then open: the same keystream work each way
                let mut poly_key = [0u8; 32];
                let mut main = ChaCha20Legacy::new(k2.try_into().unwrap(), &nonce.into());
                main.apply_keystream(&mut poly_key);
                ChaCha20Legacy::new(k1.try_into().unwrap(), &nonce.into()).apply_keystream(&mut packet[..4]);
                main.seek(64u64);
                main.apply_keystream(&mut packet[4..]);
                let tag = Poly1305::new((&poly_key).into()).compute_unpadded(&packet);
                black_box(tag);
            }
            seq += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
