//! SFTP file operations for the audit trail (Cloudflare's logs skip SFTP entirely): the
//! client → target stream of an `sftp` subsystem is followed packet by packet, and the
//! operations that name files (open with its mode, remove, rename, mkdir, rmdir, symlink,
//! setstat) become `sftp` audit events. File contents are skipped, not buffered.

use std::sync::Arc;

use crate::audit::{self, Audit, Event};

const FXP_OPEN: u8 = 3;
const FXP_SETSTAT: u8 = 9;
const FXP_OPENDIR: u8 = 11;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_RENAME: u8 = 18;
const FXP_SYMLINK: u8 = 20;
/// Vendor extensions; OpenSSH's client renames with `posix-rename@openssh.com`.
const FXP_EXTENDED: u8 = 200;
/// Packets naming files are small; anything larger is skipped unparsed.
const MAX_PARSED: usize = 64 * 1024;

pub struct Watcher {
    audit: Arc<Audit>,
    base: Event,
    /// Bytes of the current packet kept for parsing (its length prefix included).
    buf: Vec<u8>,
    /// Bytes of the current packet still to skip.
    skip: usize,
}

fn string(p: &[u8], at: &mut usize) -> Option<String> {
    let len = u32::from_be_bytes(p.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let s = p.get(*at + 4..*at + 4 + len)?;
    *at += 4 + len;
    Some(String::from_utf8_lossy(s).into_owned())
}

impl Watcher {
    pub fn new(audit: Arc<Audit>, base: Event) -> Self {
        Self {
            audit,
            base,
            buf: Vec::new(),
            skip: 0,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            // Gather the length and type.
            let need = 5usize.saturating_sub(self.buf.len());
            if need > 0 {
                let n = need.min(data.len());
                self.buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.buf.len() < 5 {
                    return;
                }
            }
            let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
            let kind = self.buf[4];
            let interesting = matches!(
                kind,
                FXP_OPEN
                    | FXP_SETSTAT
                    | FXP_OPENDIR
                    | FXP_REMOVE
                    | FXP_MKDIR
                    | FXP_RMDIR
                    | FXP_RENAME
                    | FXP_SYMLINK
                    | FXP_EXTENDED
            );
            if !interesting {
                self.skip = len.saturating_sub(1);
                self.buf.clear();
                continue;
            }
            if len == 0 {
                // sftp-server executes even this, reading the fields from what follows.
                self.buf.clear();
                self.malformed(kind, None);
                continue;
            }
            // The names come first: an audited packet padded past MAX_PARSED is parsed from
            // its prefix, and the rest skipped, so padding cannot hide an operation.
            let keep = 4 + len.min(MAX_PARSED);
            let want = keep - self.buf.len();
            let n = want.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == keep {
                let packet = std::mem::take(&mut self.buf);
                self.skip = 4 + len - keep;
                self.report(kind, &packet[5..]);
            }
        }
    }

    fn report(&self, kind: u8, body: &[u8]) {
        if !self.report_fields(kind, body) {
            self.malformed(kind, None);
        }
    }

    /// A request of an audited kind whose fields run past its declared length (found by
    /// fuzzing): OpenSSH's sftp-server still executes it, reading the fields from the bytes
    /// that follow, then exits. The watcher cannot tell what it did, so it says so rather
    /// than stay silent; with the path when it was read before the fields ran out.
    fn malformed(&self, kind: u8, path: Option<&str>) {
        let what = "a request of an audited kind whose fields run past its declared length; sftp-server may have executed it";
        self.emit(
            format!("malformed-{kind}"),
            match path {
                Some(p) => format!("{p} ({what})"),
                None => what.into(),
            },
        );
    }

    fn emit(&self, op: String, detail: String) {
        let mut e = self.base.clone();
        e.time = audit::now_rfc3339();
        e.event = "sftp";
        e.reason = Some(op);
        // Two paths at most (a rename), each within PATH_MAX when sftp-server can act on it.
        e.rule = Some(audit::printable(&detail, 2 * 4096 + 8));
        self.audit.emit(&e);
    }

    /// Audits the operation; false if its fields do not fit the packet.
    fn report_fields(&self, kind: u8, body: &[u8]) -> bool {
        // body: request id (u32), then the operation's fields.
        let mut at = 4;
        let (op, detail) = match kind {
            FXP_OPEN => {
                let Some(path) = string(body, &mut at) else {
                    return false;
                };
                // sftp-server reads the flags that follow, whatever the declared length, and
                // opens the path: audited as malformed, with the path.
                let Some(flags) = body.get(at..at + 4) else {
                    self.malformed(FXP_OPEN, Some(&path));
                    return true;
                };
                let flags = u32::from_be_bytes(flags.try_into().unwrap());
                // SSH_FXF_READ 1, WRITE 2, APPEND 4, CREAT 8, TRUNC 16. CREAT or TRUNC
                // without WRITE still creates or empties the file (sftp-server opens it
                // O_RDONLY|O_CREAT|O_TRUNC): a write as far as the trail is concerned.
                let mode = match (flags & 1 != 0, flags & (2 | 4 | 8 | 16) != 0) {
                    (true, true) => "read-write",
                    (false, true) => "write",
                    _ => "read",
                };
                (format!("open-{mode}"), path)
            }
            FXP_EXTENDED => {
                let Some(name) = string(body, &mut at) else {
                    return false;
                };
                let op = match name.as_str() {
                    "posix-rename@openssh.com" => "rename",
                    "hardlink@openssh.com" => "hardlink",
                    // Attributes of a path, without following a symlink: one name.
                    "lsetstat@openssh.com" => {
                        let Some(path) = string(body, &mut at) else {
                            return false;
                        };
                        self.emit("lsetstat".into(), path);
                        return true;
                    }
                    // Other extensions name no file we audit.
                    _ => return true,
                };
                let (Some(a), Some(b)) = (string(body, &mut at), string(body, &mut at)) else {
                    return false;
                };
                (op.to_string(), format!("{a} -> {b}"))
            }
            FXP_RENAME | FXP_SYMLINK => {
                let (Some(a), Some(b)) = (string(body, &mut at), string(body, &mut at)) else {
                    return false;
                };
                (
                    if kind == FXP_RENAME { "rename" } else { "symlink" }.to_string(),
                    format!("{a} -> {b}"),
                )
            }
            _ => {
                let Some(path) = string(body, &mut at) else {
                    return false;
                };
                let op = match kind {
                    FXP_SETSTAT => "setstat",
                    FXP_OPENDIR => "opendir",
                    FXP_REMOVE => "remove",
                    FXP_MKDIR => "mkdir",
                    _ => "rmdir",
                };
                (op.to_string(), path)
            }
        };
        self.emit(op, detail);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind, 0, 0, 0, 1];
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut p = (body.len() as u32).to_be_bytes().to_vec();
        p.extend(body);
        p
    }

    fn s(x: &str) -> Vec<u8> {
        let mut v = (x.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(x.as_bytes());
        v
    }

    #[test]
    fn operations_are_found_across_chunk_boundaries_and_writes_are_skipped() {
        let dir = std::env::temp_dir().join(format!("portcullis-sftp-{}", std::process::id()));
        let path = dir.join("a.jsonl");
        let audit = Arc::new(
            Audit::open(&crate::config::schema::AuditConfig {
                file: Some(path.clone()),
                stdout: false,
            })
            .unwrap(),
        );
        let mut w = Watcher::new(audit, Event::new("connect", "s"));
        let mut stream = packet(
            FXP_OPEN,
            &[&s("/etc/passwd"), &2u32.to_be_bytes(), &0u32.to_be_bytes()],
        );
        stream.extend(packet(
            6,
            &[&s("handle"), &0u64.to_be_bytes(), &s(&"x".repeat(100_000))],
        ));
        // CREAT|TRUNC without WRITE empties the file all the same; READ alone reads.
        stream.extend(packet(
            FXP_OPEN,
            &[&s("/etc/shadow"), &0x18u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        stream.extend(packet(
            FXP_OPEN,
            &[&s("/etc/hosts"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        stream.extend(packet(FXP_RENAME, &[&s("/tmp/a"), &s("/tmp/b")]));
        stream.extend(packet(FXP_REMOVE, &[&s("/tmp/b")]));
        // Padding an audited packet past the parse limit does not hide it.
        stream.extend(packet(
            FXP_REMOVE,
            &[&s("/tmp/hidden"), &vec![0u8; MAX_PARSED * 2]],
        ));
        for chunk in stream.chunks(7) {
            w.feed(chunk);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let ops: Vec<(String, String)> = events
            .iter()
            .map(|e| {
                (
                    e["reason"].as_str().unwrap().to_string(),
                    e["rule"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("open-write".into(), "/etc/passwd".into()),
                ("open-write".into(), "/etc/shadow".into()),
                ("open-read".into(), "/etc/hosts".into()),
                ("rename".into(), "/tmp/a -> /tmp/b".into()),
                ("remove".into(), "/tmp/b".into()),
                ("remove".into(), "/tmp/hidden".into())
            ]
        );
        assert!(w.buf.capacity() < MAX_PARSED, "file data is not buffered");
        // A remove whose declared length is shorter than its path, and one of length 0:
        // sftp-server executes both (reading past the packet), so neither passes silently.
        let mut short = packet(FXP_REMOVE, &[&s("/etc/important")]);
        short[..4].copy_from_slice(&7u32.to_be_bytes());
        w.feed(&short);
        // (sftp-server exits after such a request; what follows it is not a stream any more.)
        let mut w2 = Watcher::new(w.audit.clone(), Event::new("connect", "s"));
        w2.feed(&[0, 0, 0, 0, FXP_REMOVE]);
        let text = std::fs::read_to_string(&path).unwrap();
        let malformed = text.lines().filter(|l| l.contains("\"malformed-13\"")).count();
        assert_eq!(malformed, 2, "{text}");
        // An OPEN whose flags run past the packet: sftp-server reads them from what follows.
        let mut w3 = Watcher::new(w.audit.clone(), Event::new("connect", "s"));
        w3.feed(&packet(FXP_OPEN, &[&s("/etc/sudoers")]));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains("\"malformed-3\"") && l.contains("/etc/sudoers")),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
