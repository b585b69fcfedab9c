//! Per-session and per-byte cryptography (criterion): sealing 64 KiB recording blocks in
//! place (the recorder's sealer, and the hpke crate's own context as the baseline it
//! replaced), a whole recording's writing (records laid out, sealed, written, hashed, the
//! file closed with its trailer and synced), minting a certificate, deriving a target's host
//! key.

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
    // As the proxy holds it.
    let ca = cert::CaKey::new(PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap());
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

/// What a relayed 32 KiB SSH packet costs in cipher work alone: one open (from the client)
/// and one seal (to the target) with the primitives russh uses (aws-lc) — the floor under
/// `ssh.cpu_s_per_gib.proxy.*`.
fn ssh_cipher(c: &mut Criterion) {
    use aws_lc_rs::aead::{
        chacha20_poly1305_openssh::{OpeningKey, SealingKey},
        Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM,
    };
    const PACKET: usize = 32 * 1024 + 4 + 1 + 7;
    let mut g = c.benchmark_group("ssh_cipher");
    g.throughput(Throughput::Bytes(32 * 1024));
    let (seal, open) = (SealingKey::new(&[1u8; 64]), OpeningKey::new(&[1u8; 64]));
    let mut buf = vec![0u8; PACKET];
    buf[..4].copy_from_slice(&((PACKET - 4) as u32).to_be_bytes());
    let mut seq = 0u32;
    g.bench_function("chacha20_poly1305_relay_32k", |b| {
        b.iter(|| {
            let mut tag = [0u8; 16];
            seal.seal_in_place(seq, &mut buf, &mut tag);
            open.open_in_place(seq, &mut buf, &tag).unwrap();
            seq = seq.wrapping_add(1);
        })
    });
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[1u8; 16]).unwrap());
    let mut n = 0u64;
    let nonce = |n: u64| {
        let mut b = [0u8; 12];
        b[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(b)
    };
    // Length (the AAD), body, tag: as OpenSSH lays out an AES-GCM packet.
    let mut abuf = vec![0u8; PACKET + 16];
    g.bench_function("aes128_gcm_relay_32k", |b| {
        b.iter(|| {
            let (len, rest) = abuf.split_at_mut(4);
            let aad = <[u8; 4]>::try_from(&*len).unwrap();
            let (body, tag_out) = rest.split_at_mut(PACKET - 4);
            let tag = key
                .seal_in_place_separate_tag(nonce(n), Aad::from(aad), body)
                .unwrap();
            tag_out.copy_from_slice(tag.as_ref());
            black_box(key.open_in_place(nonce(n), Aad::from(aad), rest).unwrap());
            n += 1;
        })
    });
    g.finish();
}

/// What one session's recording can take when it has a core: 8 MiB in 32 KiB records
/// through the recorder, from `start` to the synced, closed log.
fn recording(c: &mut Criterion) {
    use portcullis::recording::{keys, writer::Recorder};
    const TOTAL: usize = 8 << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("portcullis-bench-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    keys::generate(&dir).unwrap();
    let pk = keys::load_public(&dir.join("sshkey.pub")).unwrap();
    let chunk = bytes::Bytes::from(vec![0x5au8; 32 * 1024]);
    let mut g = c.benchmark_group("recording");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(20);
    let mut n = 0u64;
    g.bench_function("write_8m", |b| {
        b.iter(|| {
            n += 1;
            rt.block_on(async {
                let (r, task) = Recorder::start(&dir, &format!("b{n}"), &pk, None, None, None).unwrap();
                for _ in 0..TOTAL / chunk.len() {
                    r.record(1, 94, chunk.clone()).await.unwrap();
                }
                drop(r);
                let sum = task.await.unwrap().unwrap();
                std::fs::remove_file(sum.path).unwrap();
            })
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(crypto, seal, recording, mint, derive, ssh_cipher);
criterion_main!(crypto);
