//! The SFTP watcher (`proxy::sftp::Watcher`) on arbitrary client → target streams.
//!
//! Input: one byte choosing how the stream is cut into chunks, then the stream.
//!
//! What must hold: no panic; the same audit events however the stream is cut (whole, in
//! the input's chunks, byte by byte); and, for a stream of well-formed packets (every
//! request's fields inside its declared length), exactly the operations a reference reading
//! of SFTP v3 finds, in order: open (with its read/write mode), opendir, setstat, remove,
//! mkdir, rmdir, rename, symlink, and the posix-rename / hardlink extensions.
//!
//! A request whose fields run past its declared length is not well-formed. OpenSSH's
//! sftp-server still executes it, reading the fields from the bytes that follow, before it
//! notices and exits; the watcher does not audit it. That is a known finding: with
//! `PORTCULLIS_FUZZ_STRICT=1` the watcher is held to what the server executes.

#![no_main]

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use libfuzzer_sys::fuzz_target;
use portcullis::{
    audit::{Audit, Event},
    config::schema::AuditConfig,
    proxy::sftp::Watcher,
};

/// Known findings are held against the code too with `PORTCULLIS_FUZZ_STRICT=1` (for checking
/// a fix: the reproducers under fuzz/artifacts/ then pass or fail).
fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("PORTCULLIS_FUZZ_STRICT").is_some_and(|v| v == "1"))
}
/// As the watcher (and far below OpenSSH's 256 KiB limit): names come first.
const MAX_PARSED: usize = 64 * 1024;
/// OpenSSH's sftp-server exits on a longer message.
const SFTP_MAX_MSG_LENGTH: usize = 256 * 1024;

/// One audit file per process, read from where the last feeding left it (opening files
/// for each input would cost more than the watcher).
struct Sink {
    audit: Arc<Audit>,
    file: File,
}

fn sink() -> &'static Mutex<Sink> {
    static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();
    SINK.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!("portcullis-fuzz-sftp-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let audit = Arc::new(
            Audit::open(&AuditConfig {
                file: Some(path.clone()),
                stdout: false,
            })
            .unwrap(),
        );
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        Mutex::new(Sink { audit, file })
    })
}

/// Feeds `chunks` to a fresh watcher and returns the (operation, detail) of each event.
fn watch<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Vec<(String, String)> {
    let mut sink = sink().lock().unwrap();
    // The audit appends: empty the file, and what is there afterwards is this feeding's.
    sink.file.set_len(0).unwrap();
    let mut w = Watcher::new(sink.audit.clone(), Event::new("connect", "fuzz"));
    for c in chunks {
        w.feed(c);
    }
    drop(w);
    let mut text = String::new();
    sink.file.seek(SeekFrom::Start(0)).unwrap();
    sink.file.read_to_string(&mut text).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["event"], "sftp");
            (
                v["reason"].as_str().unwrap().to_string(),
                v["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Option<u32> {
        let v = u32::from_be_bytes(self.b.get(self.at..self.at + 4)?.try_into().unwrap());
        self.at += 4;
        Some(v)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(String::from_utf8_lossy(s).into_owned())
    }
}

/// The audited operation in a request body (after the type byte), if its fields are there.
fn request(kind: u8, body: &[u8]) -> Option<Option<(String, String)>> {
    let mut r = Reader { b: body, at: 0 };
    // The request id.
    r.u32()?;
    // The audit shows names without their control characters (an extension's name is
    // compared as sent: OpenSSH refuses one with a NUL).
    let op = |o: &str, d: String| {
        Some(Some((
            o.to_string(),
            d.chars().filter(|c| !c.is_control()).collect(),
        )))
    };
    match kind {
        3 => {
            let path = r.string()?;
            let flags = r.u32()?;
            // WRITE, APPEND, CREAT or TRUNC changes the file (sftp-server opens it with
            // O_CREAT / O_TRUNC even without WRITE).
            let mode = match (flags & 1 != 0, flags & (2 | 4 | 8 | 16) != 0) {
                (true, true) => "read-write",
                (false, true) => "write",
                _ => "read",
            };
            op(&format!("open-{mode}"), path)
        }
        9 => op("setstat", r.string()?),
        11 => op("opendir", r.string()?),
        13 => op("remove", r.string()?),
        14 => op("mkdir", r.string()?),
        15 => op("rmdir", r.string()?),
        18 | 20 => {
            let (a, b) = (r.string()?, r.string()?);
            op(
                if kind == 18 { "rename" } else { "symlink" },
                format!("{a} -> {b}"),
            )
        }
        200 => {
            let name = r.string()?;
            let o = match name.as_str() {
                "posix-rename@openssh.com" => "rename",
                "hardlink@openssh.com" => "hardlink",
                _ => return Some(None),
            };
            let (a, b) = (r.string()?, r.string()?);
            op(o, format!("{a} -> {b}"))
        }
        _ => Some(None),
    }
}

/// The operations in `stream`, and whether every request was well-formed.
fn reference(stream: &[u8]) -> (Vec<(String, String)>, bool) {
    let mut ops = Vec::new();
    let mut at = 0;
    while at + 5 <= stream.len() {
        let len = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        let kind = stream[at + 4];
        if len == 0 || len > SFTP_MAX_MSG_LENGTH {
            // OpenSSH takes the type and fields of an empty packet from the bytes after it
            // (and then exits); a longer one than it accepts ends the session.
            if let (0, true, Some(Some(op))) = (len, strict(), request(kind, &stream[at + 5..])) {
                ops.push(op);
            }
            return (ops, false);
        }
        // The part of the packet read for names, as far as the stream goes.
        let end = (at + 4 + len.min(MAX_PARSED)).min(stream.len());
        let complete = at + 4 + len.min(MAX_PARSED) <= stream.len();
        match request(kind, &stream[at + 5..end]) {
            Some(Some(op)) if complete => ops.push(op),
            Some(_) => {}
            None if !complete => {}
            None => {
                // The fields are not inside the packet: malformed if they are in the bytes
                // after it (OpenSSH would execute that), else OpenSSH stops on it.
                let past = request(kind, &stream[at + 5..]);
                if let (true, Some(Some(op))) = (strict(), past) {
                    ops.push(op);
                }
                return (ops, false);
            }
        }
        at += 4 + len;
    }
    (ops, true)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = watch(std::iter::once(stream));
    // Chunks of 1 + (cut, cut*7, cut*13 ...) % 61 bytes: cuts inside lengths and fields.
    let mut chunks = Vec::new();
    let (mut at, mut i) = (0usize, 0usize);
    while at < stream.len() {
        let n = (1 + (cut as usize).wrapping_mul(1 + 6 * i) % 61).min(stream.len() - at);
        chunks.push(&stream[at..at + n]);
        at += n;
        i += 1;
    }
    let cut_up = watch(chunks.into_iter());
    assert_eq!(whole, cut_up, "the events depend on how the stream is cut");
    if stream.len() <= 1024 {
        let bytes = watch(stream.chunks(1));
        assert_eq!(
            whole, bytes,
            "the events depend on how the stream is cut (byte by byte)"
        );
    }
    let (expected, well_formed) = reference(stream);
    if well_formed || strict() {
        assert_eq!(whole, expected, "the watcher and the reference disagree");
    } else {
        // Up to the first malformed request, they agree.
        assert!(
            whole.len() >= expected.len() && whole[..expected.len()] == expected[..],
            "{whole:?} vs {expected:?}"
        );
    }
});
