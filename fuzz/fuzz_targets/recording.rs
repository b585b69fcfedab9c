//! The session-log reader: header, blocks, records, through the public entry point
//! (`recording::reader::decrypt`) and the format's own parsers.
//!
//! The first input byte picks a mode:
//! - 0: the rest is a log file, decrypted with a fixed key: no panic.
//! - 1: the rest is read by `format::decode_header` and `format::parse_records`: records
//!   written back with `push_record` are the input again; a decoded header encodes to the
//!   fixed size the writer rewrites in place, and decodes back with its key.
//! - 2: a well-formed log built from the input (header flags, block plaintexts sealed to the
//!   fixed key with the hpke crate, then maybe a cut, a flipped bit or appended bytes):
//!   `decrypt` returns exactly the records of the blocks that authenticate, in order, up to
//!   the first empty block (ssh-log-cli's end marker) or the damage, and only those.

#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use hkdf::Hkdf;
use hpke::{kem::X25519HkdfSha256, Deserializable, Kem, Serializable};
use libfuzzer_sys::fuzz_target;
use portcullis::recording::{
    format::{self, ExitData, Header, PtyInfo, Record},
    keys::PrivateKey,
    reader::{decrypt, DecryptError},
};
use sha2::Sha256;

/// The fuzzing key (also in `seeds/generate.py`, which writes a real log for mode 0).
const SECRET: [u8; 32] = [0x42; 32];

fn key() -> PrivateKey {
    PrivateKey::from_bytes(&SECRET).unwrap()
}

fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("portcullis-fuzz-recording-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("session.log")
}

fn read(file: &[u8]) -> Result<portcullis::recording::reader::Decrypted, DecryptError> {
    let path = scratch();
    std::fs::write(&path, file).unwrap();
    decrypt(&path, &key())
}

/// The sealing side of one session, made once per process: the key exchange is the costly
/// part (`decrypt` does its own side of it every time anyway). RFC 9180's key schedule,
/// written here from the RFC, not taken from the writer: the reader must open what any
/// correct sender seals.
struct Sealing {
    hex: String,
    key: [u8; 32],
    base_nonce: [u8; 12],
}

fn sealing() -> &'static Sealing {
    static SEALING: OnceLock<Sealing> = OnceLock::new();
    SEALING.get_or_init(|| {
        let pk = X25519HkdfSha256::sk_to_pk(&key());
        let (shared, enc) = X25519HkdfSha256::encap(&pk, None).unwrap();
        let suite: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";
        let extract = |salt: &[u8], label: &[u8], ikm: &[u8]| {
            Hkdf::<Sha256>::extract(Some(salt), &[b"HPKE-v1", suite, label, ikm].concat())
        };
        let (psk_id_hash, _) = extract(b"", b"psk_id_hash", b"");
        let (info_hash, _) = extract(b"", b"info_hash", b"");
        let context = [&[0u8][..], &psk_id_hash, &info_hash].concat();
        let (_, secret) = extract(&shared.0, b"secret", b"");
        let expand = |label: &[u8], out: &mut [u8]| {
            let len = (out.len() as u16).to_be_bytes();
            secret
                .expand(&[&len[..], b"HPKE-v1", suite, label, &context].concat(), out)
                .unwrap();
        };
        let mut s = Sealing {
            hex: enc.to_bytes().iter().map(|b| format!("{b:02x}")).collect(),
            key: [0; 32],
            base_nonce: [0; 12],
        };
        expand(b"key", &mut s.key);
        expand(b"base_nonce", &mut s.base_nonce);
        s
    })
}

impl Sealing {
    fn seal(&self, seq: u64, plain: &[u8]) -> Vec<u8> {
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &self.key).unwrap());
        let mut nonce = self.base_nonce;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let mut buf = plain.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .unwrap();
        buf
    }
}

fn records_round_trip(data: &[u8]) {
    let Ok((header, off)) = format::decode_header(data) else {
        return;
    };
    assert!(off <= data.len());
    if let Ok(enc) = format::encode_header(&header) {
        assert_eq!(enc.len(), 4 + format::HEADER_B64, "the header must keep its size");
        let (back, end) = format::decode_header(&enc).expect("an encoded header decodes");
        assert_eq!(end, enc.len());
        assert_eq!(back.encapsulated_key, header.encapsulated_key);
    }
    let Ok(records) = format::parse_records(&data[off..]) else {
        return;
    };
    let mut again = Vec::new();
    for r in &records {
        format::push_record(&mut again, r.source, r.code, r.elapsed_us, &r.data);
    }
    assert_eq!(again, &data[off..]);
}

struct Input<'a> {
    b: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let Some((&x, rest)) = self.b.split_first() else {
            return 0;
        };
        self.b = rest;
        x
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.b.split_at(n.min(self.b.len()));
        self.b = b;
        a
    }
}

fn well_formed(data: &[u8]) {
    let mut inp = Input { b: data };
    let flags = inp.byte();
    let at = inp.u16() as usize;
    let nblocks = inp.byte() % 9;
    let mut plain: Vec<Vec<u8>> = Vec::new();
    for i in 0..nblocks {
        let n = inp.u16() as usize % 4096;
        let body = inp.bytes(n);
        plain.push(if flags & 0x10 != 0 && !body.is_empty() {
            // The bytes as the data of one record: most blocks then parse.
            let mut b = Vec::new();
            format::push_record(&mut b, body[0] & 1, 94, i as u64 * 1000, &body[1..]);
            b
        } else {
            body.to_vec()
        });
    }
    let garbage = inp.b;

    let sealing = sealing();
    let header = Header {
        started_at: 1_700_000_000,
        encapsulated_key: sealing.hex.clone(),
        pty: (flags & 1 != 0).then(|| PtyInfo {
            term: Some("xterm".into()),
            width: 80,
            height: 24,
            modes: vec![],
        }),
        exit_data: (flags & 2 != 0).then(|| ExitData {
            timestamp: 1_700_000_009,
            status: Some(3),
            ..Default::default()
        }),
        request: Some("shell".into()),
        ..Default::default()
    };
    let mut file = format::encode_header(&header).unwrap();
    let start = file.len();
    let mut ends = Vec::new();
    for (seq, p) in plain.iter().enumerate() {
        let ct = sealing.seal(seq as u64, p);
        file.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        file.extend_from_slice(&ct);
        ends.push(file.len());
    }
    // The reader stops at the first empty block, as ssh-log-cli does.
    let k = plain.iter().position(Vec::is_empty).unwrap_or(plain.len());
    let blocks_area = file.len() - start;
    // How many blocks must come back, and whether a failure of the first is "wrong key".
    let (expect, first_may_fail) = match (flags >> 2) & 3 {
        1 if blocks_area > 0 => {
            let cut = start + at % blocks_area;
            file.truncate(cut);
            (ends.iter().filter(|&&e| e <= cut).count().min(k), false)
        }
        2 if blocks_area > 0 => {
            let f = start + at % blocks_area;
            file[f] ^= 1 << (flags >> 5);
            let j = ends.iter().position(|&e| f < e).unwrap();
            (j.min(k), j == 0)
        }
        3 if !garbage.is_empty() => {
            file.extend_from_slice(garbage);
            (k, plain.is_empty())
        }
        _ => (k, false),
    };
    let stream: Vec<u8> = plain[..expect].concat();
    let want = format::parse_records(&stream);
    match (read(&file), want) {
        (Ok(d), Ok(want)) => {
            assert_eq!(d.blocks, expect, "blocks read back (damage: {:?})", d.damage);
            assert_eq!(d.records, want, "records read back");
            assert_eq!(d.header.encapsulated_key, header.encapsulated_key);
        }
        (Err(DecryptError::WrongKey), _) if first_may_fail => {}
        (Err(DecryptError::Format(_)), Err(_)) => {}
        (got, want) => panic!(
            "decrypt gave {:?}, expected {expect} blocks of records {:?}",
            got.map(|d| (d.blocks, d.records.len(), d.damage)),
            want.map(|r: Vec<Record>| r.len())
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(d) = read(rest) {
                let (h, _) = format::decode_header(rest).expect("decrypt read a header");
                assert_eq!(d.header, h);
            }
        }
        1 => records_round_trip(rest),
        _ => well_formed(rest),
    }
});
