//! Field readers and writers for connection-layer messages (RFC 4251 §5 encodings).
//!
//! The reader works on a [`Bytes`] so that strings (channel data above all) come out as
//! zero-copy slices of the received payload.

use bytes::{BufMut, Bytes, BytesMut};

use super::ConnectionError;
use crate::msg;

/// The name of a connection-layer message, for errors.
pub(crate) fn msg_name(n: u8) -> &'static str {
    match n {
        msg::GLOBAL_REQUEST => "GLOBAL_REQUEST",
        msg::REQUEST_SUCCESS => "REQUEST_SUCCESS",
        msg::REQUEST_FAILURE => "REQUEST_FAILURE",
        msg::CHANNEL_OPEN => "CHANNEL_OPEN",
        msg::CHANNEL_OPEN_CONFIRMATION => "CHANNEL_OPEN_CONFIRMATION",
        msg::CHANNEL_OPEN_FAILURE => "CHANNEL_OPEN_FAILURE",
        msg::CHANNEL_WINDOW_ADJUST => "CHANNEL_WINDOW_ADJUST",
        msg::CHANNEL_DATA => "CHANNEL_DATA",
        msg::CHANNEL_EXTENDED_DATA => "CHANNEL_EXTENDED_DATA",
        msg::CHANNEL_EOF => "CHANNEL_EOF",
        msg::CHANNEL_CLOSE => "CHANNEL_CLOSE",
        msg::CHANNEL_REQUEST => "CHANNEL_REQUEST",
        msg::CHANNEL_SUCCESS => "CHANNEL_SUCCESS",
        msg::CHANNEL_FAILURE => "CHANNEL_FAILURE",
        _ => "unknown message",
    }
}

/// Reads the fields of one message (or of one request's type-specific part) in order.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes, pos: usize, msg: &'static str) -> Self {
        Reader {
            buf,
            pos: pos.min(buf.len()),
            msg,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<usize, ConnectionError> {
        let start = self.pos;
        match start.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok(start)
            }
            _ => Err(ConnectionError::Truncated { msg: self.msg, field }),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ConnectionError> {
        let at = self.take(1, field)?;
        Ok(self.buf[at])
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ConnectionError> {
        let at = self.take(4, field)?;
        let b = &self.buf[at..at + 4];
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// RFC 4251: any non-zero byte is true.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, ConnectionError> {
        Ok(self.u8(field)? != 0)
    }

    /// A `string` as a zero-copy slice of the payload.
    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<Bytes, ConnectionError> {
        let len = self.u32(field)? as usize;
        let at = self.take(len, field)?;
        Ok(self.buf.slice(at..at + len))
    }

    /// A `string` that must be UTF-8 text.
    pub(crate) fn utf8(&mut self, field: &'static str) -> Result<String, ConnectionError> {
        let len = self.u32(field)? as usize;
        let at = self.take(len, field)?;
        match std::str::from_utf8(&self.buf[at..at + len]) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(ConnectionError::InvalidUtf8 { msg: self.msg, field }),
        }
    }

    /// Everything left, as a zero-copy slice.
    pub(crate) fn rest(&mut self) -> Bytes {
        let rest = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        rest
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Fails when bytes are left after the last field.
    pub(crate) fn end(&self) -> Result<(), ConnectionError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            len => Err(ConnectionError::TrailingData { msg: self.msg, len }),
        }
    }
}

/// Writes an SSH `string` (u32 length, then the bytes). Lengths above u32::MAX cannot occur:
/// every string we write is bounded by a packet.
pub(crate) fn put_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

pub(crate) fn put_bool(out: &mut BytesMut, b: bool) {
    out.put_u8(b as u8);
}

/// The encoded size of a `string`.
pub(crate) fn string_len(s: &[u8]) -> usize {
    4 + s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_fields_and_errors() {
        let mut out = BytesMut::new();
        out.put_u8(7);
        out.put_u32(0xdead_beef);
        put_bool(&mut out, true);
        put_string(&mut out, b"hello");
        put_string(&mut out, &[0xff, 0xfe]);
        let buf = out.freeze();
        let mut r = Reader::new(&buf, 0, "TEST");
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 0xdead_beef);
        assert!(r.bool("c").unwrap());
        assert_eq!(r.utf8("d").unwrap(), "hello");
        assert_eq!(
            r.utf8("e"),
            Err(ConnectionError::InvalidUtf8 {
                msg: "TEST",
                field: "e"
            })
        );
        r.end().unwrap();
        assert_eq!(
            r.u8("f"),
            Err(ConnectionError::Truncated {
                msg: "TEST",
                field: "f"
            })
        );

        // A length that points past the end, and one that overflows usize arithmetic.
        let buf = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]);
        let mut r = Reader::new(&buf, 0, "TEST");
        assert!(r.bytes("g").is_err());
        let mut r = Reader::new(&buf, 9, "TEST");
        assert!(r.u8("h").is_err());
        assert_eq!(r.rest().len(), 0);
    }
}
