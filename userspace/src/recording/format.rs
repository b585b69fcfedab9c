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

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Deserialize, Serialize};

/// Room reserved for the header JSON, so `exit_data` can be written in place at the end
/// (the tool's JSON parser accepts trailing spaces). A multiple of 3: no base64 padding.
pub const HEADER_JSON: usize = 3072;
pub const HEADER_B64: usize = HEADER_JSON / 3 * 4;
/// Offset of the base64 header in the file.
pub const HEADER_OFFSET: u64 = 4;
/// Record header: source, code, elapsed.
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

/// Shrinks what the client or target controls (command, terminal, modes, error message)
/// until the header fits its reserved room: a long command must not stop a recording.
fn fit(h: &Header) -> Vec<u8> {
    let json = serde_json::to_vec(h).expect("header serializes");
    if json.len() <= HEADER_JSON {
        return json;
    }
    let mut h = h.clone();
    if let Some(r) = h.request.as_mut() {
        cut(r, 512);
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
    if let Some(e) = h.exit_data.as_mut().and_then(|e| e.error_msg.as_mut()) {
        cut(e, 256);
    }
    let json = serde_json::to_vec(&h).expect("header serializes");
    if json.len() <= HEADER_JSON {
        return json;
    }
    // Control characters escape to six bytes each: drop the free text altogether.
    h.request = Some("[too long for the header]".into());
    if let Some(e) = h.exit_data.as_mut() {
        e.error_msg = None;
    }
    if let Some(p) = h.pty.as_mut() {
        p.modes.clear();
        p.term = None;
    }
    serde_json::to_vec(&h).expect("header serializes")
}

/// The header as it sits in the file: length prefix and padded base64 JSON.
pub fn encode_header(h: &Header) -> Result<Vec<u8>, FormatError> {
    let mut json = fit(h);
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
    let h =
        serde_json::from_slice(&json).map_err(|e| bad(&format!("header is not the expected JSON: {e}")))?;
    Ok((h, 4 + len))
}

/// Appends one record to `buf`.
pub fn push_record(buf: &mut Vec<u8>, source: u8, code: u32, elapsed_us: u64, data: &[u8]) {
    buf.extend_from_slice(&((RECORD_HEAD + data.len()) as u32).to_be_bytes());
    buf.push(source);
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(&elapsed_us.to_be_bytes());
    buf.extend_from_slice(data);
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
