//! The trailer that makes a closed log tamper- and truncation-evident, and the verdict on a
//! log read back.
//!
//! At close the writer patches into the header (where ssh-log-cli ignores it) a
//! `portcullis_trailer`: the number of blocks written, the digest of every byte after the
//! header (BLAKE3 in version 2; version 1, still read, had SHA-256 — the writer hashes
//! every byte a session moves, and BLAKE3 costs a quarter of the CPU), and — when the gateway has a recording-signing key — its Ed25519 signature over
//! [`message`]: a domain tag, the header's canonical JSON without the trailer (so exit data,
//! the command, the pty and the encapsulated key), the block count and the digest. A crash
//! leaves no trailer. Because the signed header holds the HPKE encapsulated key, a block
//! that authenticates was sealed by this session's gateway: a log cut short is shown to be
//! an authentic prefix, and nothing can be added or swapped unnoticed.

use std::ops::Range;

use aws_lc_rs::digest;
use base64::{engine::general_purpose::STANDARD, Engine};
use ssh_key::PublicKey;

use super::{
    format::{self, Header, Trailer},
    signing::{self, SigningError, SigningKey},
};

/// The version the writer makes: BLAKE3 digest.
pub const VERSION: u32 = 2;
/// The first version, still verified: SHA-256 digest.
pub const VERSION_SHA256: u32 = 1;

/// The digest of a log's blocks, as the trailer's version names it.
pub enum BlockHash {
    Sha256(Box<digest::Context>),
    Blake3(Box<blake3::Hasher>),
}

impl BlockHash {
    /// The hash of trailer `version`; `None` for a version this build does not know.
    pub fn for_version(version: u32) -> Option<Self> {
        match version {
            VERSION_SHA256 => Some(Self::Sha256(Box::new(digest::Context::new(&digest::SHA256)))),
            VERSION => Some(Self::Blake3(Box::default())),
            _ => None,
        }
    }

    /// The hash the writer uses.
    pub fn current() -> Self {
        Self::Blake3(Box::default())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(c) => c.update(bytes),
            Self::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    pub fn finish(self) -> [u8; 32] {
        match self {
            Self::Sha256(c) => c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes"),
            Self::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

/// Separates these signatures from any other use of the key, and binds the version (so the
/// digest algorithm) into what is signed.
fn domain(version: u32) -> &'static [u8] {
    match version {
        VERSION_SHA256 => b"portcullis recording trailer v1\0",
        _ => b"portcullis recording trailer v2\0",
    }
}

/// What the signature of a trailer of `version` covers.
pub fn message(version: u32, header: &Header, blocks: u64, digest: &[u8; 32]) -> Vec<u8> {
    let json = format::unsealed_json(header);
    let domain = domain(version);
    let mut m = Vec::with_capacity(domain.len() + 4 + json.len() + 8 + 32);
    m.extend_from_slice(domain);
    m.extend_from_slice(&(json.len() as u32).to_be_bytes());
    m.extend_from_slice(&json);
    m.extend_from_slice(&blocks.to_be_bytes());
    m.extend_from_slice(digest);
    m
}

/// "1 block", "8 blocks".
fn blocks(n: impl Into<u64>) -> String {
    match n.into() {
        1 => "1 block".into(),
        n => format!("{n} blocks"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The trailer for `header` (already [`format::fitted`]: what will be written is what is
/// signed) after `blocks` blocks whose bytes hash to `digest` ([`BlockHash::current`]).
pub fn make(
    header: &Header,
    blocks: u64,
    digest: &[u8; 32],
    signer: Option<&SigningKey>,
) -> Result<Trailer, SigningError> {
    make_version(VERSION, header, blocks, digest, signer)
}

fn make_version(
    version: u32,
    header: &Header,
    blocks: u64,
    digest: &[u8; 32],
    signer: Option<&SigningKey>,
) -> Result<Trailer, SigningError> {
    let (signer, signature) = match signer {
        Some(k) => {
            let sig = k.sign(&message(version, header, blocks, digest))?;
            (Some(k.public().to_string()), Some(STANDARD.encode(sig)))
        }
        None => (None, None),
    };
    Ok(Trailer {
        version,
        blocks,
        digest: hex(digest),
        signer,
        signature,
    })
}

/// What a log proves about itself. Worst first: [`judge`] returns the first that applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not what the gateway wrote: a field edited, data added or replaced, another signer.
    Altered(String),
    /// The trailer is intact but blocks are missing from the end.
    Truncated(String),
    /// No trailer: the gateway stopped before closing the log (or it came from elsewhere).
    NoTrailer { ended: bool, blocks: usize },
    /// Complete as sealed, but with no signature (the gateway had no signing key).
    Unsigned { blocks: u64 },
    /// Complete and signed; `checked`: by the signer the reader was told to expect.
    Signed {
        blocks: u64,
        fingerprint: String,
        checked: bool,
    },
}

impl Verdict {
    /// `portcullis verify`'s exit status (0 only for complete and signed by the expected
    /// signer; 1 and 2 are runtime failure and usage).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Signed { checked: true, .. } => 0,
            Self::Signed { checked: false, .. } | Self::Unsigned { .. } => 4,
            Self::NoTrailer { .. } => 5,
            Self::Truncated(_) => 6,
            Self::Altered(_) => 7,
        }
    }

    pub fn is_intact(&self) -> bool {
        matches!(self, Self::Signed { checked: true, .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Altered(why) => write!(f, "altered: {why}"),
            Self::Truncated(why) => write!(f, "truncated: {why}"),
            Self::NoTrailer { ended: false, blocks } => write!(
                f,
                "ended without a trailer: the gateway stopped before closing the log (a crash), \
                 or the log was cut, or it was not written by a gateway (the recording public key \
                 is all it takes to seal one); {} readable, what followed is lost",
                self::blocks(*blocks as u64)
            ),
            Self::NoTrailer { ended: true, blocks } => write!(
                f,
                "no trailer although the log records the session's end: it was removed, or the log \
                 was written without one (another gateway, an older portcullis); {}, completeness \
                 unknown",
                self::blocks(*blocks as u64)
            ),
            Self::Unsigned { blocks } => write!(
                f,
                "complete ({}, as sealed) but unsigned: the gateway had no \
                 recording_signing_key, so edits cannot be told from the original",
                self::blocks(*blocks)
            ),
            Self::Signed {
                blocks,
                fingerprint,
                checked: true,
            } => write!(
                f,
                "intact and signed by {fingerprint} ({})",
                self::blocks(*blocks)
            ),
            Self::Signed {
                blocks,
                fingerprint,
                checked: false,
            } => write!(
                f,
                "intact and signed by {fingerprint} ({}); pass --signer with the gateway's \
                 `portcullis recording pubkey` to check that this is its key",
                self::blocks(*blocks)
            ),
        }
    }
}

/// A log as read: its header (parsed and as bytes), the framing of its blocks, and how many
/// of them authenticated (`None`: not decrypted, no key at hand).
pub struct Evidence<'a> {
    pub file: &'a [u8],
    pub header: &'a Header,
    pub header_json: &'a [u8],
    pub header_end: usize,
    pub blocks: &'a [Range<usize>],
    /// What follows the last whole block, if the file does not end on a block boundary.
    pub tail: Option<&'a str>,
    pub authenticated: Option<usize>,
}

impl Evidence<'_> {
    /// The digest (of trailer `version`) of the first `n` blocks' bytes.
    fn digest_of(&self, version: u32, n: usize) -> [u8; 32] {
        let end = match n {
            0 => self.header_end,
            n => self.blocks[n - 1].end,
        };
        let mut h = BlockHash::for_version(version).unwrap_or_else(BlockHash::current);
        h.update(&self.file[self.header_end..end]);
        h.finish()
    }
}

/// The verdict on a log; `expected` is the signer the reader trusts, if it named one.
pub fn judge(e: &Evidence<'_>, expected: Option<&PublicKey>) -> Verdict {
    let whole = e.blocks.len();
    // The first whole block that did not open, if decrypted.
    let unopened = e.authenticated.filter(|&a| a < whole);
    let Some(t) = &e.header.trailer else {
        if let Some(a) = unopened {
            return Verdict::Altered(format!("block {} does not authenticate", a + 1));
        }
        return Verdict::NoTrailer {
            ended: e.header.exit_data.is_some(),
            blocks: e.authenticated.unwrap_or(whole),
        };
    };
    if !format::is_canonical(e.header_json, e.header) {
        return Verdict::Altered(
            "the header is not byte for byte what the gateway wrote (edited or re-encoded JSON)".into(),
        );
    }
    if BlockHash::for_version(t.version).is_none() {
        return Verdict::Altered(format!("unknown trailer version {}", t.version));
    }
    // As the gateway writes them, byte for byte: the signature covers the digest's value,
    // so another spelling of it (upper case, `+f` for `0f`) would be an edit it cannot see.
    let Some(digest) = unhex32(&t.digest).filter(|d| hex(d) == t.digest) else {
        return Verdict::Altered("the trailer's digest is not 64 lowercase hex digits".into());
    };
    let signer = match (&t.signer, &t.signature) {
        (None, None) => None,
        (Some(s), Some(sig)) => {
            let Some(pk) = signing::parse_signer(s) else {
                return Verdict::Altered("the trailer's signer is not an Ed25519 public key".into());
            };
            let mut bare = pk.clone();
            bare.set_comment("");
            if bare.to_openssh().ok().as_deref() != Some(s.as_str()) {
                return Verdict::Altered(
                    "the trailer's signer is not written as the gateway writes it".into(),
                );
            }
            let sig = STANDARD.decode(sig).unwrap_or_default();
            if !signing::verify(&pk, &message(t.version, e.header, t.blocks, &digest), &sig) {
                return Verdict::Altered(
                    "the signature does not verify: the header (exit status, command, times, pty) \
                     or the trailer was edited"
                        .into(),
                );
            }
            if let Some(x) = expected.filter(|x| !signing::same_key(x, &pk)) {
                return Verdict::Altered(format!(
                    "signed by {}, not by the expected signer {}",
                    signing::fingerprint(&pk),
                    signing::fingerprint(x)
                ));
            }
            Some(pk)
        }
        _ => return Verdict::Altered("the trailer has a signer without a signature, or the reverse".into()),
    };
    let sealed = usize::try_from(t.blocks).unwrap_or(usize::MAX);
    if let Some(a) = unopened.filter(|&a| a < sealed) {
        return Verdict::Altered(format!(
            "block {} of {sealed} does not authenticate; the {a} before it are as written",
            a + 1
        ));
    }
    if whole > sealed || (whole == sealed && e.tail.is_some()) {
        let what = if e.digest_of(t.version, sealed) == digest {
            "which are themselves as written"
        } else {
            "and those differ from the ones written"
        };
        return Verdict::Altered(format!(
            "data was appended after the {sealed} sealed block(s), {what}"
        ));
    }
    if whole < sealed {
        let tail = e.tail.map(|t| format!("; {t}")).unwrap_or_default();
        return Verdict::Truncated(format!(
            "the log ends after {whole} of its {sealed} sealed blocks{tail}"
        ));
    }
    if e.digest_of(t.version, whole) != digest {
        return Verdict::Altered("the blocks are not the ones sealed (their digest differs)".into());
    }
    match signer {
        Some(pk) => Verdict::Signed {
            blocks: t.blocks,
            fingerprint: signing::fingerprint(&pk),
            checked: expected.is_some(),
        },
        None => Verdict::Unsigned { blocks: t.blocks },
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Arc};

    use bytes::Bytes;

    use super::*;
    use crate::recording::{
        format::{ExitData, HEADER_JSON},
        keys,
        reader::{self, Decrypted},
        signing,
        writer::{Recorder, BLOCK},
    };

    struct Fixture {
        dir: std::path::PathBuf,
        sk: keys::PrivateKey,
        signer: Arc<SigningKey>,
        trusted: PublicKey,
    }

    fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("portcullis-trailer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        keys::generate(&dir).unwrap();
        signing::generate(&dir.join("recsign")).unwrap();
        let signer = Arc::new(signing::load(&dir.join("recsign")).unwrap());
        let trusted = signing::parse_signer(signer.public()).unwrap();
        Fixture {
            sk: keys::load_private(&dir.join("sshkey")).unwrap(),
            dir,
            signer,
            trusted,
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A closed exec log of several blocks (each record a whole block), exit status 3.
    async fn log(f: &Fixture, name: &str, signer: Option<Arc<SigningKey>>) -> std::path::PathBuf {
        let pk = keys::load_public(&f.dir.join("sshkey.pub")).unwrap();
        let (r, task) = Recorder::start(
            &f.dir,
            name,
            &pk,
            None,
            Some("exec id".into()),
            Vec::new(),
            signer,
        )
        .unwrap();
        for i in 0..6u8 {
            r.record(1, 94, Bytes::from(vec![b'a' + i; BLOCK])).await.unwrap();
        }
        r.exit(Recorder::exit_status(3)).await;
        let path = r.path.clone();
        drop(r);
        let sum = task.await.unwrap().unwrap();
        assert_eq!(sum.blocks, 6, "one block per record");
        path
    }

    fn open(f: &Fixture, p: &Path) -> Decrypted {
        reader::decrypt_checked(p, &f.sk, Some(&f.trusted)).unwrap()
    }

    /// The verdict with the private key (every block authenticated) and without (framing and
    /// digest only): both must agree.
    fn both(f: &Fixture, p: &Path) -> Verdict {
        let d = open(f, p).verdict;
        assert_eq!(d, reader::verify(p, Some(&f.trusted)).unwrap(), "{}", p.display());
        d
    }

    fn copy(f: &Fixture, src: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> std::path::PathBuf {
        let mut bytes = std::fs::read(src).unwrap();
        edit(&mut bytes);
        let p = f.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Rewrites the header in place, as an editor of the file would (trailer kept).
    fn edit_header(bytes: &mut [u8], change: impl FnOnce(&mut Header)) {
        let (mut h, end) = format::decode_header(bytes).unwrap();
        change(&mut h);
        bytes[..end].copy_from_slice(&format::encode_header(&h).unwrap());
    }

    fn blocks(bytes: &[u8]) -> Vec<Range<usize>> {
        let (_, start) = format::decode_header(bytes).unwrap();
        format::frame_blocks(bytes, start).0
    }

    fn altered(v: &Verdict, why: &str) {
        assert!(
            matches!(v, Verdict::Altered(m) if m.contains(why)),
            "expected altered ({why}), got {v:?}"
        );
        assert_eq!(v.exit_code(), 7);
    }

    #[tokio::test]
    async fn a_closed_signed_log_verifies_and_says_by_whom() {
        let f = fixture("intact");
        let p = log(&f, "s", Some(f.signer.clone())).await;
        let v = both(&f, &p);
        assert!(v.is_intact() && v.exit_code() == 0, "{v:?}");
        assert!(v.to_string().contains(&signing::fingerprint(&f.trusted)));
        // Without a trusted signer the log is self-consistent but not vouched for.
        let loose = reader::decrypt(&p, &f.sk).unwrap().verdict;
        assert!(matches!(loose, Verdict::Signed { checked: false, .. }) && loose.exit_code() == 4);
        assert_eq!(open(&f, &p).records.len(), 6);
    }

    #[tokio::test]
    async fn removing_the_last_blocks_is_truncation_and_the_rest_is_recovered() {
        let f = fixture("trunc");
        let p = log(&f, "s", Some(f.signer.clone())).await;
        let bytes = std::fs::read(&p).unwrap();
        let b = blocks(&bytes);
        // Two whole blocks gone, and a cut inside the one before.
        for (name, end) in [("two.log", b[3].end), ("mid.log", b[3].end - 100)] {
            let t = copy(&f, &p, name, |v| v.truncate(end));
            let v = both(&f, &t);
            assert!(
                matches!(&v, Verdict::Truncated(m) if m.contains("of its 6 sealed blocks")),
                "{v:?}"
            );
            assert_eq!(v.exit_code(), 6);
            let d = open(&f, &t);
            let kept = if name == "two.log" { 4 } else { 3 };
            assert_eq!(d.blocks, kept);
            assert_eq!(d.records.len(), kept, "every authenticated block is recovered");
            assert!(d
                .records
                .iter()
                .enumerate()
                .all(|(i, r)| r.data[0] == b'a' + i as u8));
        }
    }

    #[tokio::test]
    async fn edited_exit_status_or_command_is_altered() {
        let f = fixture("edit");
        let p = log(&f, "s", Some(f.signer.clone())).await;
        let status = copy(&f, &p, "status.log", |v| {
            edit_header(v, |h| h.exit_data.as_mut().unwrap().status = Some(0))
        });
        altered(&both(&f, &status), "signature does not verify");
        let cmd = copy(&f, &p, "cmd.log", |v| {
            edit_header(v, |h| h.request = Some("exec true".into()))
        });
        altered(&both(&f, &cmd), "signature does not verify");
        // The edit still decrypts: the content is recovered, and flagged.
        assert_eq!(open(&f, &cmd).records.len(), 6);
        // A second exit_data the tool's parser would take, added beside the signed one.
        let extra = copy(&f, &p, "extra.log", |v| {
            let (mut json, end) = format::header_json(v).unwrap();
            let at = json.iter().rposition(|&b| b == b'}').unwrap();
            json.splice(at..at, br#","Exit_data":{"status":0}"#.iter().copied());
            json.truncate(HEADER_JSON);
            let b64 = base64::engine::general_purpose::STANDARD.encode(&json);
            v[4..end].copy_from_slice(b64.as_bytes());
        });
        altered(&both(&f, &extra), "not byte for byte");
    }

    #[tokio::test]
    async fn appended_or_replaced_blocks_are_altered() {
        let f = fixture("append");
        let p = log(&f, "s", Some(f.signer.clone())).await;
        let bytes = std::fs::read(&p).unwrap();
        let b = blocks(&bytes);
        let appended = copy(&f, &p, "appended.log", |v| {
            let last = v[b[5].clone()].to_vec();
            v.extend_from_slice(&last);
        });
        altered(&both(&f, &appended), "appended after the 6 sealed block(s)");
        assert_eq!(open(&f, &appended).records.len(), 6);
        let junk = copy(&f, &p, "junk.log", |v| v.extend_from_slice(b"xy"));
        altered(&both(&f, &junk), "appended");
        // A block in the middle changed: everything before it is still recovered.
        let flipped = copy(&f, &p, "flipped.log", |v| v[b[2].start + 40] ^= 1);
        let d = open(&f, &flipped);
        altered(&d.verdict, "block 3 of 6 does not authenticate");
        assert_eq!(d.records.len(), 2);
        altered(
            &reader::verify(&flipped, Some(&f.trusted)).unwrap(),
            "digest differs",
        );
        // Two blocks swapped: neither authenticates in the other's place.
        let swapped = copy(&f, &p, "swapped.log", |v| {
            let (x, y) = (v[b[1].clone()].to_vec(), v[b[2].clone()].to_vec());
            assert_eq!(x.len(), y.len());
            v[b[1].clone()].copy_from_slice(&y);
            v[b[2].clone()].copy_from_slice(&x);
        });
        altered(&open(&f, &swapped).verdict, "block 2 of 6");
        // The first block changed looks like the wrong key to the decryptor; the digest
        // tells it was the file.
        let first = copy(&f, &p, "first.log", |v| v[b[0].start + 40] ^= 1);
        assert!(matches!(
            reader::decrypt(&first, &f.sk),
            Err(reader::DecryptError::WrongKey)
        ));
        altered(
            &reader::judge(&first, Some(&f.sk), Some(&f.trusted)).unwrap(),
            "digest differs",
        );
        let other = keys::generate(&f.dir.join("other")).unwrap().0;
        let wrong = keys::load_private(&other).unwrap();
        assert!(matches!(
            reader::judge(&p, Some(&wrong), Some(&f.trusted)),
            Err(reader::DecryptError::WrongKey)
        ));
    }

    /// A log as a version-1 writer closed it: SHA-256 of the blocks, the v1 domain.
    fn as_version_1(bytes: &mut [u8], signer: &SigningKey) {
        let (mut h, end) = format::decode_header(bytes).unwrap();
        let t = h.trailer.take().unwrap();
        let d = digest::digest(&digest::SHA256, &bytes[end..]);
        let d: [u8; 32] = d.as_ref().try_into().unwrap();
        h.trailer = Some(make_version(VERSION_SHA256, &h, t.blocks, &d, Some(signer)).unwrap());
        bytes[..end].copy_from_slice(&format::encode_header(&h).unwrap());
    }

    #[tokio::test]
    async fn version_1_logs_with_sha256_still_verify_and_the_version_is_signed() {
        let f = fixture("v1");
        let p = log(&f, "s", Some(f.signer.clone())).await;
        let t = format::decode_header(&std::fs::read(&p).unwrap())
            .unwrap()
            .0
            .trailer
            .unwrap();
        assert_eq!(t.version, VERSION);
        let v1 = copy(&f, &p, "v1.log", |v| as_version_1(v, &f.signer));
        let v = both(&f, &v1);
        assert!(v.is_intact() && v.exit_code() == 0, "{v:?}");
        let flipped = copy(&f, &v1, "v1-flipped.log", |v| {
            let b = blocks(v);
            v[b[4].start + 40] ^= 1;
        });
        altered(
            &reader::verify(&flipped, Some(&f.trusted)).unwrap(),
            "digest differs",
        );
        // The version names the hash: relabelling a v1 trailer as v2 breaks its signature.
        let relabelled = copy(&f, &v1, "relabelled.log", |v| {
            edit_header(v, |h| h.trailer.as_mut().unwrap().version = VERSION)
        });
        altered(&both(&f, &relabelled), "signature does not verify");
        let unknown = copy(&f, &p, "v9.log", |v| {
            edit_header(v, |h| h.trailer.as_mut().unwrap().version = 9)
        });
        altered(&both(&f, &unknown), "unknown trailer version 9");
    }

    #[tokio::test]
    async fn another_signer_is_altered_even_when_its_signature_is_good() {
        let f = fixture("signer");
        let p = log(&f, "s", Some(f.signer.clone())).await;
        let other = fixture("signer-other");
        let v = reader::decrypt_checked(&p, &f.sk, Some(&other.trusted))
            .unwrap()
            .verdict;
        altered(&v, "not by the expected signer");
        // A forger edits the exit status and signs the result with their own key.
        let forged = copy(&f, &p, "forged.log", |v| {
            let (mut h, end) = format::decode_header(v).unwrap();
            h.exit_data = Some(ExitData {
                status: Some(0),
                ..h.exit_data.clone().unwrap()
            });
            let t = h.trailer.take().unwrap();
            let digest = unhex32(&t.digest).unwrap();
            h.trailer = Some(make(&h, t.blocks, &digest, Some(&other.signer)).unwrap());
            v[..end].copy_from_slice(&format::encode_header(&h).unwrap());
        });
        altered(&both(&f, &forged), "not by the expected signer");
        // Self-consistent, though: only the trusted key tells.
        assert!(matches!(
            reader::decrypt(&forged, &f.sk).unwrap().verdict,
            Verdict::Signed { checked: false, .. }
        ));
    }

    #[tokio::test]
    async fn a_killed_writer_leaves_no_trailer_and_every_block_readable() {
        let f = fixture("crash");
        let p = log(&f, "s", Some(f.signer.clone())).await;
        // What a writer killed before closing leaves: the header as first written, then
        // whole blocks (and perhaps part of one).
        let crashed = copy(&f, &p, "crashed.log", |v| {
            edit_header(v, |h| {
                h.trailer = None;
                h.exit_data = None;
                h.data_size = 0;
            });
            v.truncate(v.len() - 10);
        });
        let v = both(&f, &crashed);
        assert_eq!(
            v,
            Verdict::NoTrailer {
                ended: false,
                blocks: 5
            }
        );
        assert_eq!(v.exit_code(), 5);
        assert!(v.to_string().starts_with("ended without a trailer"), "{v}");
        let d = open(&f, &crashed);
        assert_eq!((d.blocks, d.records.len()), (5, 5));
        assert!(d.damage.unwrap().contains("cut short"));
        // A trailer removed from a closed log is told apart from a crash.
        let stripped = copy(&f, &p, "stripped.log", |v| edit_header(v, |h| h.trailer = None));
        assert!(matches!(
            both(&f, &stripped),
            Verdict::NoTrailer { ended: true, .. }
        ));
    }

    #[tokio::test]
    async fn without_a_signing_key_logs_are_unsigned_but_still_show_truncation() {
        let f = fixture("unsigned");
        let p = log(&f, "s", None).await;
        let v = both(&f, &p);
        assert_eq!(v, Verdict::Unsigned { blocks: 6 });
        assert_eq!(v.exit_code(), 4);
        let t = copy(&f, &p, "t.log", |v| {
            let end = blocks(v)[4].end;
            v.truncate(end)
        });
        assert!(matches!(both(&f, &t), Verdict::Truncated(_)));
    }

    #[test]
    fn the_largest_trailer_fits_beside_the_largest_header() {
        let h = Header {
            encapsulated_key: "ab".repeat(32),
            request: Some(format!("exec {}", "\u{1}".repeat(5000))),
            exit_data: Some(ExitData {
                signal: Some("S".repeat(5000)),
                error_msg: Some("e".repeat(9000)),
                timestamp: u64::MAX,
                status: Some(u32::MAX),
                core_dumped: true,
            }),
            started_at: u64::MAX,
            data_size: u64::MAX,
            ..Default::default()
        };
        let h = format::fitted(&h);
        let dir = std::env::temp_dir().join(format!("portcullis-trailer-fit-{}", std::process::id()));
        signing::generate(&dir.join("k")).unwrap();
        let k = signing::load(&dir.join("k")).unwrap();
        let mut sealed = h.clone();
        sealed.trailer = Some(make(&h, u64::MAX, &[0xff; 32], Some(&k)).unwrap());
        let room = serde_json::to_vec(&sealed).unwrap().len() - format::unsealed_json(&h).len();
        assert!(room <= format::TRAILER_ROOM, "{room}");
        let enc = format::encode_header(&sealed).unwrap();
        assert_eq!(format::decode_header(&enc).unwrap().0, sealed);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
