//! The few SSH wire encodings the transport parses and writes (RFC 4251 §5): a bounds-checked
//! reader whose errors name the message and field, and append-only writers.

use super::error::TransportError;

/// Reads fields of one message; every error names `msg` and the field that was cut short or
/// invalid.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    msg: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(msg: &'static str, buf: &'a [u8]) -> Self {
        Reader { buf, msg }
    }

    pub(crate) fn err(&self, field: &'static str) -> TransportError {
        TransportError::Malformed { msg: self.msg, field }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, TransportError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.err(field))?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, TransportError> {
        Ok(self.u8(field)? != 0)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, TransportError> {
        let b = self.bytes(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TransportError> {
        if self.buf.len() < n {
            return Err(self.err(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// `string`: u32 length and that many bytes.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<&'a [u8], TransportError> {
        let n = self.u32(field)? as usize;
        self.bytes(n, field)
    }

    /// A `string` that must be UTF-8 (names, descriptions).
    pub(crate) fn utf8(&mut self, field: &'static str) -> Result<&'a str, TransportError> {
        let s = self.string(field)?;
        std::str::from_utf8(s).map_err(|_| self.err(field))
    }

    /// `mpint` that must be non-negative; returns its magnitude without leading zero bytes.
    pub(crate) fn mpint_positive(&mut self, field: &'static str) -> Result<&'a [u8], TransportError> {
        let s = self.string(field)?;
        if s.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(self.err(field));
        }
        let start = s.iter().position(|&b| b != 0).unwrap_or(s.len());
        Ok(&s[start..])
    }

    pub(crate) fn end(&self, field: &'static str) -> Result<(), TransportError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err(field))
        }
    }
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

/// `mpint` of an unsigned big-endian magnitude (leading zeros stripped, a 0x00 prepended when
/// the top bit is set).
pub(crate) fn put_mpint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let start = magnitude.iter().position(|&b| b != 0).unwrap_or(magnitude.len());
    let m = &magnitude[start..];
    let pad = m.first().is_some_and(|b| b & 0x80 != 0);
    put_u32(out, (m.len() + usize::from(pad)) as u32);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(m);
}

/// A comma-separated name-list.
pub(crate) fn put_name_list<S: AsRef<str>>(out: &mut Vec<u8>, names: &[S]) {
    let len: usize = names.iter().map(|n| n.as_ref().len()).sum::<usize>() + names.len().saturating_sub(1);
    put_u32(out, len as u32);
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(n.as_ref().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpint_encoding() {
        let mut v = Vec::new();
        put_mpint(&mut v, &[0, 0, 0x80, 1]);
        assert_eq!(v, [0, 0, 0, 3, 0, 0x80, 1]);
        v.clear();
        put_mpint(&mut v, &[0, 0]);
        assert_eq!(v, [0, 0, 0, 0]);
        let mut r = Reader::new("T", &[0, 0, 0, 3, 0, 0x80, 1]);
        assert_eq!(r.mpint_positive("x").unwrap(), &[0x80, 1]);
        let mut r = Reader::new("T", &[0, 0, 0, 1, 0x80]);
        assert!(r.mpint_positive("x").is_err());
    }

    #[test]
    fn reader_errors_name_the_field() {
        let mut r = Reader::new("KEXINIT", &[0, 0, 0, 9, 1]);
        let e = r.string("kex_algorithms").unwrap_err();
        assert!(
            e.to_string().contains("KEXINIT") && e.to_string().contains("kex_algorithms"),
            "{e}"
        );
    }
}
