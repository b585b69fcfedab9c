//! Reading a session log back: every block that authenticates, in order, an honest
//! account of the first one that does not (truncated by a crash, tampered with, wrong key),
//! and the verdict of its trailer (`trailer.rs`).
//! Outputs: ssh-log-cli's ZIP layout, asciicast v2, and a terminal replay.

use std::{io::Write, path::Path, time::Duration};

use hpke::{aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, OpModeR};

use ssh_key::PublicKey as SignerKey;

use super::{
    format::{self, Header, Record, SOURCE_CLIENT, SOURCE_TARGET},
    keys::PrivateKey,
    trailer::{self, Evidence, Verdict},
};

#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error("the key does not open this log (wrong private key, or its first block was altered)")]
    WrongKey,
}

/// A decrypted log: what authenticated, why reading stopped early if it did, and what the
/// log proves about itself.
#[derive(Debug)]
pub struct Decrypted {
    pub header: Header,
    pub records: Vec<Record>,
    pub blocks: usize,
    /// Set when the file is damaged after `blocks` good blocks.
    pub damage: Option<String>,
    pub verdict: Verdict,
}

fn read(path: &Path) -> Result<Vec<u8>, DecryptError> {
    std::fs::read(path).map_err(|source| DecryptError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Decrypts without naming a trusted signer (the verdict then says which key signed).
impl Decrypted {
    /// What one side sent (`format::SOURCE_CLIENT` or `SOURCE_TARGET`), data and extended
    /// data, in order.
    pub fn data_from(&self, source: u8) -> Vec<u8> {
        self.records
            .iter()
            .filter(|r| r.source == source)
            .flat_map(|r| r.data.iter().copied())
            .collect()
    }
}

pub fn decrypt(path: &Path, key: &PrivateKey) -> Result<Decrypted, DecryptError> {
    decrypt_checked(path, key, None)
}

/// Decrypts every block that authenticates and judges the log against `signer`.
pub fn decrypt_checked(
    path: &Path,
    key: &PrivateKey,
    signer: Option<&SignerKey>,
) -> Result<Decrypted, DecryptError> {
    let file = read(path)?;
    let (json, start) = format::header_json(&file)?;
    let header = format::parse_header(&json)?;
    let not_hex = || format::FormatError::BadHeader("encapsulated_key is not hex".into());
    let hex = header.encapsulated_key.as_bytes();
    if hex.len() % 2 != 0 {
        return Err(not_hex().into());
    }
    let enc_raw: Vec<u8> = hex
        .chunks_exact(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(not_hex)?;
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&enc_raw)
        .map_err(|_| format::FormatError::BadHeader("encapsulated_key is not an X25519 key".into()))?;
    let mut ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        key,
        &enc,
        &[],
    )
    .map_err(|_| DecryptError::WrongKey)?;
    let (frames, tail) = format::frame_blocks(&file, start);
    let mut stream = Vec::new();
    let mut blocks = 0;
    let mut damage = None;
    for (i, r) in frames.iter().enumerate() {
        match ctx.open(&file[r.start + 4..r.end], &[]) {
            Ok(p) if p.is_empty() => {
                // Never written by a gateway; ssh-log-cli stops reading here.
                damage = Some(format!("block {} is empty: the file was altered", i + 1));
                break;
            }
            Ok(p) => stream.extend_from_slice(&p),
            Err(_) if i == 0 => return Err(DecryptError::WrongKey),
            Err(_) => {
                damage = Some(format!(
                    "block {} does not authenticate: the file was altered",
                    i + 1
                ));
                break;
            }
        }
        blocks += 1;
    }
    if blocks == frames.len() {
        damage = tail.clone();
    }
    let records = format::parse_records(&stream)?;
    let verdict = trailer::judge(
        &Evidence {
            file: &file,
            header: &header,
            header_json: &json,
            header_end: start,
            blocks: &frames,
            tail: tail.as_deref(),
            authenticated: Some(blocks),
        },
        signer,
    );
    Ok(Decrypted {
        header,
        records,
        blocks,
        damage,
        verdict,
    })
}

/// Judges a log without decrypting it: the trailer's signature and the blocks' framing and
/// digest need no private key (a block that would not authenticate is then not noticed,
/// unless the digest shows it).
pub fn verify(path: &Path, signer: Option<&SignerKey>) -> Result<Verdict, DecryptError> {
    let file = read(path)?;
    let (json, start) = format::header_json(&file)?;
    let header = format::parse_header(&json)?;
    let (frames, tail) = format::frame_blocks(&file, start);
    Ok(trailer::judge(
        &Evidence {
            file: &file,
            header: &header,
            header_json: &json,
            header_end: start,
            blocks: &frames,
            tail: tail.as_deref(),
            authenticated: None,
        },
        signer,
    ))
}

/// The verdict alone, authenticating every block when `key` is given. A first block that
/// does not open is the wrong key — unless the framing and digest already show the file
/// altered, which is then the verdict.
pub fn judge(
    path: &Path,
    key: Option<&PrivateKey>,
    signer: Option<&SignerKey>,
) -> Result<Verdict, DecryptError> {
    let Some(key) = key else {
        return verify(path, signer);
    };
    match decrypt_checked(path, key, signer) {
        Ok(d) => Ok(d.verdict),
        Err(DecryptError::WrongKey) => match verify(path, signer)? {
            v @ Verdict::Altered(_) => Ok(v),
            _ => Err(DecryptError::WrongKey),
        },
        Err(e) => Err(e),
    }
}

fn utc(secs: u64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The files of ssh-log-cli's ZIP, byte for byte: `term_data.txt` (the target's output between
/// a start and an end line) and `term_times.txt` (scriptreplay timing, deltas computed in
/// f32) for pty sessions; `data_from_client.txt` / `data_from_server.txt` otherwise.
pub fn zip_entries(d: &Decrypted) -> Vec<(&'static str, Vec<u8>)> {
    let h = &d.header;
    match &h.pty {
        Some(pty) => {
            let mut data = format!(
                "Session started on {} [TERM=\"{}\" COLUMNS=\"{}\" LINES=\"{}\"]\n",
                utc(h.started_at),
                pty.term.as_deref().unwrap_or("unknown"),
                pty.width,
                pty.height
            )
            .into_bytes();
            let mut times = String::new();
            let mut last = 0u64;
            for r in d.records.iter().filter(|r| r.source == SOURCE_TARGET) {
                let delta = r.elapsed_us.saturating_sub(last) as f32 / 1_000_000f32;
                times.push_str(&format!("{:.6} {}\n", delta, r.data.len()));
                last = r.elapsed_us;
                data.extend_from_slice(&r.data);
            }
            let end = match &h.exit_data {
                None => "\nSession has no termination data\n".to_string(),
                Some(e) => match (&e.error_msg, e.core_dumped) {
                    (Some(m), _) => format!("\nScript done on {} [ERROR=\"{m}\"]\n", utc(e.timestamp)),
                    (None, true) => format!("\nScript done on {} [CORE DUMPED]\n", utc(e.timestamp)),
                    (None, false) => format!(
                        "\nScript done on {} [COMMAND_EXIT_CODE=\"{}\"]\n",
                        utc(e.timestamp),
                        e.status.unwrap_or(0)
                    ),
                },
            };
            data.extend_from_slice(end.as_bytes());
            vec![("term_data.txt", data), ("term_times.txt", times.into_bytes())]
        }
        None => {
            let pick = |s: u8| {
                d.records
                    .iter()
                    .filter(|r| r.source == s)
                    .flat_map(|r| r.data.iter().copied())
                    .collect()
            };
            vec![
                ("data_from_client.txt", pick(SOURCE_CLIENT)),
                ("data_from_server.txt", pick(SOURCE_TARGET)),
            ]
        }
    }
}

/// Decrypted output for `out`: it holds what the session's user typed, passwords at prompts
/// included. Written to a new 0600 file beside it and renamed over `out` by [`Private::done`]
/// (so nobody who had `out` open reads it, and a symlink at `out` is replaced, not followed).
pub struct Private {
    file: std::fs::File,
    fresh: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl Private {
    pub fn create(out: &Path) -> Result<Self, DecryptError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut name = out.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.new", std::process::id()));
        let fresh = out.with_file_name(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&fresh)
            .map_err(|source| DecryptError::Io {
                path: fresh.clone(),
                source,
            })?;
        Ok(Self {
            file,
            fresh,
            out: out.to_owned(),
        })
    }

    pub fn file(&mut self) -> &mut std::fs::File {
        &mut self.file
    }

    /// Puts the written file at its name.
    pub fn done(self) -> Result<(), DecryptError> {
        std::fs::rename(&self.fresh, &self.out).map_err(|source| DecryptError::Io {
            path: self.out.clone(),
            source,
        })?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Private {
    /// Not done: nothing half-written is left behind.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fresh);
    }
}

pub fn write_zip(d: &Decrypted, out: &Path) -> Result<(), DecryptError> {
    let io = |source| DecryptError::Io {
        path: out.to_owned(),
        source,
    };
    let mut private = Private::create(out)?;
    let mut z = zip::ZipWriter::new(private.file());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o600);
    for (name, body) in zip_entries(d) {
        z.start_file(name, opts)
            .map_err(|e| io(std::io::Error::other(e)))?;
        z.write_all(&body).map_err(io)?;
    }
    z.finish().map_err(|e| io(std::io::Error::other(e)))?;
    private.done()
}

/// asciicast v2 (`asciinema play`): the target's output as "o" events, the client's input as
/// "i" events.
pub fn asciicast(d: &Decrypted) -> String {
    let (w, h, term) = match &d.header.pty {
        Some(p) => (
            p.width,
            p.height,
            p.term.clone().unwrap_or_else(|| "xterm".into()),
        ),
        None => (80, 24, "dumb".into()),
    };
    let head = serde_json::json!({
        "version": 2, "width": w, "height": h, "timestamp": d.header.started_at,
        "env": { "TERM": term }
    });
    let mut out = format!("{head}\n");
    for r in &d.records {
        let kind = if r.source == SOURCE_TARGET { "o" } else { "i" };
        let ev = serde_json::json!([r.elapsed_us as f64 / 1e6, kind, String::from_utf8_lossy(&r.data)]);
        out.push_str(&format!("{ev}\n"));
    }
    out
}

/// Plays the target's output to `out` with its original timing, `speed` times faster, idle
/// gaps capped at `max_idle`; through [`terminal::Filter`] unless `raw`.
///
/// [`terminal::Filter`]: super::terminal::Filter
pub fn replay(
    d: &Decrypted,
    out: &mut impl Write,
    speed: f64,
    max_idle: Option<Duration>,
    raw: bool,
) -> std::io::Result<()> {
    let mut last = 0u64;
    let mut filter = super::terminal::Filter::default();
    let mut shown = Vec::new();
    for r in d.records.iter().filter(|r| r.source == SOURCE_TARGET) {
        let mut gap = Duration::from_micros(r.elapsed_us.saturating_sub(last)).div_f64(speed.max(0.001));
        if let Some(m) = max_idle {
            gap = gap.min(m);
        }
        std::thread::sleep(gap);
        if raw {
            out.write_all(&r.data)?;
        } else {
            shown.clear();
            filter.push(&r.data, &mut shown);
            out.write_all(&shown)?;
        }
        out.flush()?;
        last = r.elapsed_us;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::recording::{
        format::{PtyInfo, CODE_DATA, CODE_EXTENDED},
        keys,
        writer::{Recorder, BLOCK},
    };

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("portcullis-rec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    async fn record(d: &Path, pty: Option<PtyInfo>, chunks: &[(u8, &[u8])]) -> std::path::PathBuf {
        let pk = keys::load_public(&d.join("sshkey.pub")).unwrap();
        let (r, task) = Recorder::start(d, "s1", &pk, pty, Some("shell".into()), Vec::new(), None).unwrap();
        for (src, data) in chunks {
            let code = if *src == 1 && data.starts_with(b"err") {
                CODE_EXTENDED
            } else {
                CODE_DATA
            };
            r.record(*src, code, Bytes::copy_from_slice(data)).await.unwrap();
        }
        r.exit(Recorder::exit_status(3)).await;
        let path = r.path.clone();
        drop(r);
        task.await.unwrap().unwrap();
        path
    }

    #[tokio::test]
    async fn a_recording_decrypts_to_what_was_recorded() {
        let d = dir("rt");
        keys::generate(&d).unwrap();
        assert!(
            !std::fs::read(d.join("sshkey")).unwrap().ends_with(b"\n"),
            "no trailing newline"
        );
        let big = vec![7u8; BLOCK * 3];
        let log = record(
            &d,
            None,
            &[(0, b"ls\n"), (1, b"file\n"), (1, b"err: x\n"), (1, &big)],
        )
        .await;
        let sk = keys::load_private(&d.join("sshkey")).unwrap();
        let out = decrypt(&log, &sk).unwrap();
        assert!(out.damage.is_none());
        assert!(out.blocks >= 1);
        assert_eq!(out.records.len(), 4);
        assert_eq!(out.records[2].code, CODE_EXTENDED);
        assert!(out.records.windows(2).all(|w| w[0].elapsed_us <= w[1].elapsed_us));
        assert_eq!(out.header.exit_data.as_ref().unwrap().status, Some(3));
        let z = zip_entries(&out);
        assert_eq!(z[0].1, b"ls\n");
        assert_eq!(z[1].1.len(), 5 + 7 + big.len());
        std::fs::remove_dir_all(d).unwrap();
    }

    /// The recorded user chooses what the target prints: a replay draws it but does not let
    /// it act on the auditor's terminal (unless asked for raw), and decrypted files, which
    /// hold what the user typed, are private whatever was at their path before.
    #[tokio::test]
    async fn replays_draw_without_acting_and_decrypted_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("hostile");
        keys::generate(&d).unwrap();
        let log = record(
            &d,
            None,
            &[
                (0, b"sudo -s\n"),
                (1, b"\x1b]52;c;aGk=\x07\x1b[2Jok\x1b[6n\x1b[1mbold\x1b[0m"),
            ],
        )
        .await;
        let sk = keys::load_private(&d.join("sshkey")).unwrap();
        let out = decrypt(&log, &sk).unwrap();
        let mut shown = Vec::new();
        replay(&out, &mut shown, 1000.0, None, false).unwrap();
        assert_eq!(shown, b"\x1b[2Jok\x1b[1mbold\x1b[0m");
        let mut raw = Vec::new();
        replay(&out, &mut raw, 1000.0, None, true).unwrap();
        assert_eq!(raw, out.records[1].data);

        let zip = d.join("out.zip");
        std::fs::write(&zip, b"old").unwrap();
        std::fs::set_permissions(&zip, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut before = std::fs::File::open(&zip).unwrap();
        write_zip(&out, &zip).unwrap();
        // Who had the old file open reads the old bytes, not the session.
        assert_eq!(std::io::read_to_string(&mut before).unwrap(), "old");
        let mode = std::fs::metadata(&zip).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let link = d.join("link.zip");
        std::os::unix::fs::symlink(d.join("elsewhere"), &link).unwrap();
        write_zip(&out, &link).unwrap();
        assert!(
            !d.join("elsewhere").exists(),
            "a symlink is replaced, not followed"
        );
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !names.iter().any(|n| n.to_string_lossy().ends_with(".new")),
            "{names:?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[tokio::test]
    async fn pty_sessions_give_scriptreplay_files_and_damage_is_reported_not_fatal() {
        let d = dir("pty");
        keys::generate(&d).unwrap();
        let pty = PtyInfo {
            term: Some("xterm".into()),
            width: 100,
            height: 30,
            modes: vec![],
        };
        let chunks: Vec<(u8, Vec<u8>)> = (0..50).map(|i| (1u8, vec![b'a'; 30_000 + i])).collect();
        let refs: Vec<(u8, &[u8])> = chunks.iter().map(|(s, v)| (*s, v.as_slice())).collect();
        let log = record(&d, Some(pty), &refs).await;
        let sk = keys::load_private(&d.join("sshkey")).unwrap();
        let full = decrypt(&log, &sk).unwrap();
        let z = zip_entries(&full);
        let data = String::from_utf8_lossy(&z[0].1).into_owned();
        assert!(
            data.starts_with("Session started on ")
                && data.contains("[TERM=\"xterm\" COLUMNS=\"100\" LINES=\"30\"]")
        );
        assert!(
            data.ends_with("[COMMAND_EXIT_CODE=\"3\"]\n"),
            "{}",
            &data[data.len() - 80..]
        );
        assert_eq!(String::from_utf8_lossy(&z[1].1).lines().count(), 50);
        assert!(full.blocks > 2);

        // A crash mid-block: every whole block before it still decrypts.
        let bytes = std::fs::read(&log).unwrap();
        let cut = d.join("cut.log");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let part = decrypt(&cut, &sk).unwrap();
        assert!(
            part.damage.as_deref().unwrap().contains("cut short"),
            "{:?}",
            part.damage
        );
        assert_eq!(part.blocks, full.blocks - 1);
        // Tampering: named, and what came before survives.
        let mut t = bytes.clone();
        let n = t.len();
        t[n - 20] ^= 1;
        std::fs::write(&cut, &t).unwrap();
        let part = decrypt(&cut, &sk).unwrap();
        assert!(part.damage.as_deref().unwrap().contains("does not authenticate"));
        // The wrong key.
        let other = dir("other");
        keys::generate(&other).unwrap();
        let wrong = keys::load_private(&other.join("sshkey")).unwrap();
        assert!(matches!(decrypt(&log, &wrong), Err(DecryptError::WrongKey)));
        // asciicast v2: a header line and one event per record.
        let cast = asciicast(&full);
        let first: serde_json::Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
        assert_eq!(first["version"], 2);
        assert_eq!(cast.lines().count(), 51);
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_dir_all(other).unwrap();
    }
}
