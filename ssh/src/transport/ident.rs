//! The identification exchange (RFC 4253 §4.2): `SSH-2.0-softwareversion SP comments CR LF`.
//! A server may send other lines first; a client may not.

use super::error::TransportError;
use super::Role;

/// The longest identification line, CR LF included (RFC 4253 §4.2).
pub const MAX_IDENT_LEN: usize = 255;
/// The longest line a server may send before its identification.
pub const MAX_PRE_IDENT_LINE: usize = 8192;
/// How many lines a server may send before its identification (OpenSSH allows 1024).
pub const MAX_PRE_IDENT_LINES: usize = 1024;

/// Scans `buf` for the peer's identification line. Returns the bytes consumed (lines
/// discarded, and the identification line once found) and the line without CR LF.
pub(crate) fn scan(
    buf: &[u8],
    role: Role,
    lines_seen: &mut usize,
) -> Result<(usize, Option<String>), TransportError> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            let limit = if rest.starts_with(b"SSH-") || role == Role::Server {
                MAX_IDENT_LEN
            } else {
                MAX_PRE_IDENT_LINE
            };
            if rest.len() > limit {
                return Err(TransportError::Ident(format!(
                    "line longer than {limit} bytes without a line end"
                )));
            }
            return Ok((pos, None));
        };
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"SSH-") {
            if nl + 1 > MAX_IDENT_LEN {
                return Err(TransportError::Ident(format!(
                    "identification line of {} bytes exceeds {MAX_IDENT_LEN}",
                    nl + 1
                )));
            }
            let text = std::str::from_utf8(line)
                .ok()
                .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .ok_or_else(|| TransportError::Ident("identification line is not printable ASCII".into()))?;
            let version = text[4..].split('-').next().unwrap_or("");
            let ok = version == "2.0" || (role == Role::Client && version == "1.99");
            if !ok || text[4..].len() <= version.len() + 1 {
                return Err(TransportError::Ident(format!(
                    "unsupported protocol version in {text:?}"
                )));
            }
            return Ok((pos + nl + 1, Some(text.to_owned())));
        }
        if role == Role::Server {
            return Err(TransportError::Ident(
                "the client sent a line that is not an SSH identification".into(),
            ));
        }
        *lines_seen += 1;
        if *lines_seen > MAX_PRE_IDENT_LINES || nl + 1 > MAX_PRE_IDENT_LINE {
            return Err(TransportError::Ident(format!(
                "more than {MAX_PRE_IDENT_LINES} lines or a line over {MAX_PRE_IDENT_LINE} bytes before the identification"
            )));
        }
        pos += nl + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_skips_banner_lines() {
        let mut n = 0;
        let buf = b"hello\r\nworld\nSSH-2.0-OpenSSH_9.2 Debian\r\nrest";
        let (used, id) = scan(buf, Role::Client, &mut n).unwrap();
        assert_eq!(id.as_deref(), Some("SSH-2.0-OpenSSH_9.2 Debian"));
        assert_eq!(&buf[used..], b"rest");
        assert_eq!(n, 2);
    }

    #[test]
    fn partial_and_limits() {
        let mut n = 0;
        assert_eq!(scan(b"SSH-2.0-x", Role::Server, &mut n).unwrap(), (0, None));
        assert!(scan(b"junk\r\n", Role::Server, &mut n).is_err());
        assert!(scan(&[b'a'; 300], Role::Server, &mut n).is_err());
        let long = [b"SSH-2.0-".as_slice(), &[b'x'; 300], b"\r\n"].concat();
        assert!(scan(&long, Role::Client, &mut n).is_err());
        assert!(scan(b"SSH-1.5-old\r\n", Role::Client, &mut n).is_err());
        assert!(scan(b"SSH-1.99-compat\r\n", Role::Client, &mut n)
            .unwrap()
            .1
            .is_some());
        let mut many = Vec::new();
        for _ in 0..1100 {
            many.extend_from_slice(b"x\n");
        }
        assert!(scan(&many, Role::Client, &mut 0).is_err());
    }
}
