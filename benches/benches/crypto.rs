//! Per-session and per-byte cryptography (criterion): sealing 64 KiB recording blocks in
//! place (the recorder's sealer, and the hpke crate's own context as the baseline it
//! replaced), minting a certificate, deriving a target's host key.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hpke::{aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256, Kem, OpModeS};
use portcullis::{cert, hostkey, recording::seal::Sealer};
use russh::keys::{Algorithm, PrivateKey};

fn seal(c: &mut Criterion) {
    let (_, pk) = X25519HkdfSha256::gen_keypair();
    let (_, mut ctx) =
        hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(&OpModeS::Base, &pk, &[])
            .unwrap();
    let (mut sealer, _) = Sealer::new(&pk).unwrap();
    let mut block = vec![0x5au8; 64 * 1024];
    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("block_64k", |b| {
        b.iter(|| black_box(sealer.seal_in_place(&mut block).unwrap()))
    });
    g.bench_function("block_64k_hpke_crate", |b| {
        b.iter(|| black_box(ctx.seal_inout_detached(block.as_mut_slice().into(), &[]).unwrap()))
    });
    g.finish();
}

fn mint(c: &mut Criterion) {
    let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let grant = cert::Grant {
        pty: true,
        ..Default::default()
    };
    let req = cert::Request {
        principal: "root",
        email: "alice@example.com",
        session: "01a2059fb1d415da000000",
        lifetime_secs: 180,
        skew_secs: 30,
        grant: &grant,
        source_address: None,
    };
    c.bench_function("cert_mint", |b| {
        b.iter(|| black_box(cert::mint(&ca, &req).unwrap()))
    });
}

fn derive(c: &mut Criterion) {
    let target = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .clone();
    let secret = [7u8; 32];
    c.bench_function("hostkey_derive", |b| {
        b.iter(|| black_box(hostkey::derive(&secret, &target).unwrap()))
    });
}

criterion_group!(crypto, seal, mint, derive);
criterion_main!(crypto);
