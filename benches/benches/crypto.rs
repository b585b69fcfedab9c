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
/// and one seal (to the target) with the engine's packet keys — the floor under
/// `ssh.cpu_s_per_gib.proxy.*`.
fn ssh_cipher(c: &mut Criterion) {
    use portcullis_ssh::transport::cipher::{CipherAlg, OpeningKeys, SealingKeys};
    let mut g = c.benchmark_group("ssh_cipher");
    g.throughput(Throughput::Bytes(32 * 1024));
    for (name, alg) in [
        ("chacha20_poly1305_relay_32k", CipherAlg::Chacha20Poly1305),
        ("aes128_gcm_relay_32k", CipherAlg::Aes128Gcm),
    ] {
        let (key, iv) = (&[1u8; 64][..alg.key_len()], &[2u8; 16][..alg.iv_len()]);
        let mut seal = SealingKeys::new(alg, None, key, iv, &[]).unwrap();
        let mut open = OpeningKeys::new(alg, None, key, iv, &[]).unwrap();
        // Length, padding length, payload, padding, tag: as the packet is laid out.
        let packet = seal.packet_len(32 * 1024);
        let mut buf = vec![0u8; packet];
        buf[..4].copy_from_slice(&((packet - 4 - seal.tag_len()) as u32).to_be_bytes());
        let mut seq = 0u32;
        g.bench_function(name, |b| {
            b.iter(|| {
                seal.seal(seq, &mut buf).unwrap();
                open.open(seq, &mut buf).unwrap();
                seq = seq.wrapping_add(1);
                black_box(&buf);
            })
        });
    }
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
                let (r, task) =
                    Recorder::start(&dir, &format!("b{n}"), &pk, None, None, Vec::new(), None).unwrap();
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
