//! The ssh-log-cli file format (facts checked against the tool's source and binary):
//!
//! ```text
//! u32 BE n | base64(JSON header, space-padded to HEADER_JSON bytes)      n = 4·HEADER_JSON/3
//! (u32 BE m | HPKE ciphertext of m bytes)*                               one block each
//! ```
//! The blocks' plaintexts form one stream of records
//! `u32 BE len | u8 source | u32 BE code | u64 BE elapsed_µs | data`, `len` counting the
//! bytes after itself. Each block holds whole records and is never empty (the tool stops at
//! an empty plaintext and fails on a record prefix spread over more than two blocks).
//!
//! Ours, beside the tool's fields: `request` and, patched in at close, `portcullis_trailer`
//! ([`Trailer`], see `trailer.rs`). The tool's JSON parser (serde, no
//! `deny_unknown_fields`) ignores both, and the trailing spaces of the padding.

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};

/// Room reserved for the header JSON, so `exit_data` can be written in place at the end
/// (the tool's JSON parser accepts trailing spaces). A multiple of 3: no base64 padding.
pub const HEADER_JSON: usize = 3072;
/// Of which this much is kept for the trailer: the other fields are cut to fit the rest.
/// A trailer serializes to at most about 340 bytes (a test holds it to this bound).
pub const TRAILER_ROOM: usize = 512;
pub const HEADER_B64: usize = HEADER_JSON / 3 * 4;
/// Offset of the base64 header in the file.
pub const HEADER_OFFSET: u64 = 4;
/// Record header after its length: source, code, elapsed.
pub const RECORD_HEAD: usize = 13;

pub const SOURCE_CLIENT: u8 = 0;
pub const SOURCE_TARGET: u8 = 1;
/// Our use of the record code: the SSH message that carried the bytes.
pub const CODE_DATA: u32 = 94;
pub const CODE_EXTENDED: u32 = 95;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Unix seconds.
    pub started_at: u64,
    pub data_size: u64,
    /// Hex of the HPKE encapsulated key.
    pub encapsulated_key: String,
    pub pty: Option<PtyInfo>,
    pub exit_data: Option<ExitData>,
    /// Ours (the tool ignores unknown fields): what the channel ran — `exec <command>`,
    /// `subsystem <name>` or `shell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Ours: the environment the client asked for before the start (`NAME=value`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Ours, written at close only: what makes the log tamper- and truncation-evident.
    #[serde(
        rename = "portcullis_trailer",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub trailer: Option<Trailer>,
}

/// The seal over a finished log (its checks are in `trailer.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub version: u32,
    /// How many blocks the writer wrote.
    pub blocks: u64,
    /// Hex digest of every byte after the header, the blocks as written: BLAKE3 in version 2,
    /// SHA-256 in version 1.
    pub digest: String,
    /// The gateway's recording-signing key (`ssh-ed25519 AAAA…`); absent when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Base64 Ed25519 signature over `trailer::message`; absent when unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyInfo {
    pub term: Option<String>,
    pub width: u32,
    pub height: u32,
    pub modes: Vec<(String, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitData {
    /// Unix seconds.
    pub timestamp: u64,
    pub status: Option<u32>,
    pub signal: Option<String>,
    #[serde(default)]
    pub core_dumped: bool,
    pub error_msg: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("session header is {0} bytes of JSON, more than the {HEADER_JSON} reserved")]
    HeaderTooLarge(usize),
    #[error("not a session log: {0}")]
    BadHeader(String),
    #[error("record {0}: {1}")]
    BadRecord(usize, String),
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("…[truncated]");
    }
}

fn json(h: &Header) -> Vec<u8> {
    // Plain structs of strings and integers: serializing them cannot fail.
    serde_json::to_vec(h).expect("header serializes")
}

/// The header's JSON without its trailer: what the trailer's signature covers. For a log
/// the gateway closed, the file holds exactly this with the trailer added (see
/// [`is_canonical`]).
pub fn unsealed_json(h: &Header) -> Vec<u8> {
    let mut h = h.clone();
    h.trailer = None;
    json(&h)
}

/// Shrinks what the client or target controls (command, terminal, modes, error message)
/// until the header without its trailer fits `HEADER_JSON - TRAILER_ROOM`: a long command
/// must not stop a recording, nor crowd out the trailer. Idempotent.
pub fn fitted(h: &Header) -> Header {
    const ROOM: usize = HEADER_JSON - TRAILER_ROOM;
    if unsealed_json(h).len() <= ROOM {
        return h.clone();
    }
    let mut h = h.clone();
    if let Some(r) = h.request.as_mut() {
        cut(r, 512);
    }
    if h.env.len() > 8 {
        let more = h.env.len() - 7;
        h.env.truncate(7);
        h.env.push(format!("[{more} more: see the audit trail]"));
    }
    for e in &mut h.env {
        cut(e, 128);
    }
    if let Some(p) = h.pty.as_mut() {
        if let Some(t) = p.term.as_mut() {
            cut(t, 64);
        }
        p.modes.truncate(64);
        for (name, _) in &mut p.modes {
            cut(name, 16);
        }
    }
    if let Some(e) = h.exit_data.as_mut() {
        if let Some(m) = e.error_msg.as_mut() {
            cut(m, 256);
        }
        // A signal name is the target's to choose (RFC 4254 allows any string).
        if let Some(s) = e.signal.as_mut() {
            cut(s, 32);
        }
    }
    if unsealed_json(&h).len() <= ROOM {
        return h;
    }
    // Control characters escape to six bytes each: drop the free text altogether.
    h.request = Some("[too long for the header]".into());
    if !h.env.is_empty() {
        h.env = vec!["[too long for the header: see the audit trail]".into()];
    }
    if let Some(e) = h.exit_data.as_mut() {
        e.error_msg = None;
    }
    if let Some(p) = h.pty.as_mut() {
        p.modes.clear();
        p.term = None;
    }
    h
}

/// The header as it sits in the file: length prefix and padded base64 JSON.
pub fn encode_header(h: &Header) -> Result<Vec<u8>, FormatError> {
    let mut json = json(&fitted(h));
    if json.len() > HEADER_JSON {
        return Err(FormatError::HeaderTooLarge(json.len()));
    }
    json.resize(HEADER_JSON, b' ');
    let b64 = STANDARD.encode(&json);
    debug_assert_eq!(b64.len(), HEADER_B64);
    let mut out = Vec::with_capacity(4 + b64.len());
    out.extend_from_slice(&(b64.len() as u32).to_be_bytes());
    out.extend_from_slice(b64.as_bytes());
    Ok(out)
}

/// Parses the header at the start of `file`; returns it and the offset of the first block.
pub fn decode_header(file: &[u8]) -> Result<(Header, usize), FormatError> {
    let (json, end) = header_json(file)?;
    Ok((parse_header(&json)?, end))
}

/// The header's JSON (with its padding) and the offset of the first block.
pub fn header_json(file: &[u8]) -> Result<(Vec<u8>, usize), FormatError> {
    let bad = |m: &str| FormatError::BadHeader(m.to_string());
    let len = u32::from_be_bytes(
        file.get(..4)
            .ok_or_else(|| bad("shorter than 4 bytes"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let b64 = file.get(4..4 + len).ok_or_else(|| bad("cut inside the header"))?;
    let json = STANDARD
        .decode(b64)
        .map_err(|e| bad(&format!("header is not base64: {e}")))?;
    Ok((json, 4 + len))
}

pub fn parse_header(json: &[u8]) -> Result<Header, FormatError> {
    serde_json::from_slice(json)
        .map_err(|e| FormatError::BadHeader(format!("header is not the expected JSON: {e}")))
}

/// Whether `json` is byte for byte what the gateway writes for `h` (then padding). The
/// signature covers the parsed fields; this closes what parsing forgives — added keys,
/// reordering, escapes — so that no reader can be shown a header other than the signed one.
pub fn is_canonical(json: &[u8], h: &Header) -> bool {
    let end = json.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    json[..end] == self::json(h)[..]
}

/// The blocks after the header, each as the byte range of its length prefix and
/// ciphertext, and what follows the last whole one if the file does not end on a block
/// boundary. No key needed: this is the framing only.
pub fn frame_blocks(file: &[u8], start: usize) -> (Vec<std::ops::Range<usize>>, Option<String>) {
    let mut blocks = Vec::new();
    let mut off = start;
    while off < file.len() {
        let n = blocks.len() + 1;
        let Some(len) = file.get(off..off + 4) else {
            return (blocks, Some(format!("cut inside the length of block {n}")));
        };
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        let end = off + 4 + len;
        if end > file.len() {
            let have = file.len() - off - 4;
            return (
                blocks,
                Some(format!(
                    "block {n} is cut short ({have} of {len} bytes): the writer stopped mid-block"
                )),
            );
        }
        blocks.push(off..end);
        off = end;
    }
    (blocks, None)
}

/// Appends one record to `buf`.
pub fn push_record(buf: &mut Vec<u8>, source: u8, code: u32, elapsed_us: u64, data: &[u8]) {
    buf.extend_from_slice(&((RECORD_HEAD + data.len()) as u32).to_be_bytes());
    buf.push(source);
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(&elapsed_us.to_be_bytes());
    buf.extend_from_slice(data);
}

/// The bytes a record of `data` bytes takes in a block: its length, its head, the data.
pub fn record_len(data: usize) -> usize {
    4 + RECORD_HEAD + data
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub source: u8,
    pub code: u32,
    pub elapsed_us: u64,
    pub data: Vec<u8>,
}

/// Splits a decrypted stream into records.
pub fn parse_records(mut s: &[u8]) -> Result<Vec<Record>, FormatError> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let n = out.len();
        let head = s
            .get(..4)
            .ok_or_else(|| FormatError::BadRecord(n, "cut inside its length".into()))?;
        let len = u32::from_be_bytes(head.try_into().unwrap()) as usize;
        if len < RECORD_HEAD {
            return Err(FormatError::BadRecord(
                n,
                format!("length {len} is shorter than a record header"),
            ));
        }
        let body = s
            .get(4..4 + len)
            .ok_or_else(|| FormatError::BadRecord(n, "cut inside its data".into()))?;
        let source = body[0];
        if source > SOURCE_TARGET {
            return Err(FormatError::BadRecord(
                n,
                format!("source {source} is neither client (0) nor target (1)"),
            ));
        }
        out.push(Record {
            source,
            code: u32::from_be_bytes(body[1..5].try_into().unwrap()),
            elapsed_us: u64::from_be_bytes(body[5..13].try_into().unwrap()),
            data: body[13..].to_vec(),
        });
        s = &s[4 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_at_a_fixed_size() {
        let mut h = Header {
            started_at: 1_700_000_000,
            encapsulated_key: "ab".repeat(32),
            ..Default::default()
        };
        let a = encode_header(&h).unwrap();
        h.pty = Some(PtyInfo {
            term: Some("xterm".into()),
            width: 80,
            height: 24,
            modes: vec![("ECHO".into(), 1)],
        });
        h.exit_data = Some(ExitData {
            timestamp: 1_700_000_009,
            status: Some(3),
            ..Default::default()
        });
        let b = encode_header(&h).unwrap();
        assert_eq!(a.len(), b.len(), "the header can be rewritten in place");
        assert_eq!(decode_header(&b).unwrap(), (h, b.len()));
    }

    #[test]
    fn oversized_client_text_is_cut_not_fatal() {
        let h = Header {
            encapsulated_key: "ab".repeat(32),
            request: Some(format!("exec {}", "\u{1}".repeat(5000))),
            pty: Some(PtyInfo {
                term: Some("x".repeat(5000)),
                width: 80,
                height: 24,
                modes: vec![],
            }),
            exit_data: Some(ExitData {
                error_msg: Some("e".repeat(9000)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let enc = encode_header(&h).unwrap();
        let (back, _) = decode_header(&enc).unwrap();
        assert_eq!(back.encapsulated_key, h.encapsulated_key);
        assert!(back.request.unwrap().len() < 600);
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let mut buf = Vec::new();
        push_record(&mut buf, SOURCE_CLIENT, CODE_DATA, 5, b"ls\r");
        push_record(&mut buf, SOURCE_TARGET, CODE_EXTENDED, 9, b"");
        let r = parse_records(&buf).unwrap();
        assert_eq!(
            r[0],
            Record {
                source: 0,
                code: 94,
                elapsed_us: 5,
                data: b"ls\r".to_vec()
            }
        );
        assert_eq!(r[1].data, b"");
        assert!(parse_records(&buf[..buf.len() - 1])
            .unwrap_err()
            .to_string()
            .contains("record 1"));
        let mut bad = buf.clone();
        bad[4] = 7;
        assert!(parse_records(&bad).unwrap_err().to_string().contains("source 7"));
    }
}
