//! Field-level reading and writing of the authentication messages (RFC 4251 §5 types).
//!
//! Reading is zero-copy over the received payload and names the message and field in every
//! error; integers go through `ssh-encoding`. Writing goes straight into a `BytesMut`.

use bytes::{BufMut, Bytes, BytesMut};
use ssh_encoding::Decode;

use super::AuthError;

/// A cursor over one message's fields.
pub(crate) struct Rd<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(buf: &'a [u8], message: &'static str) -> Self {
        Rd { buf, message }
    }

    fn malformed(&self, field: &'static str) -> AuthError {
        AuthError::Malformed {
            message: self.message,
            field,
        }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, AuthError> {
        bool::decode(&mut self.buf).map_err(|_| self.malformed(field))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, AuthError> {
        u32::decode(&mut self.buf).map_err(|_| self.malformed(field))
    }

    /// An RFC 4251 `string`, borrowed from the payload.
    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], AuthError> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).map_err(|_| self.malformed(field))?;
        if len > self.buf.len() {
            return Err(self.malformed(field));
        }
        let (value, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(value)
    }

    /// A `string` that must be UTF-8.
    pub(crate) fn utf8(&mut self, field: &'static str) -> Result<&'a str, AuthError> {
        let raw = self.bytes(field)?;
        std::str::from_utf8(raw).map_err(|_| self.malformed(field))
    }

    /// A `name-list`: comma-separated, US-ASCII, no empty names (an empty list is fine).
    pub(crate) fn name_list(&mut self, field: &'static str) -> Result<Vec<String>, AuthError> {
        let raw = self.bytes(field)?;
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        let valid = |name: &[u8]| !name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic() && b != b',');
        let mut names = Vec::new();
        for name in raw.split(|&b| b == b',') {
            if !valid(name) {
                return Err(self.malformed(field));
            }
            // All bytes are ASCII, hence valid UTF-8.
            names.push(String::from_utf8_lossy(name).into_owned());
        }
        Ok(names)
    }

    /// The message must end here.
    pub(crate) fn finish(self) -> Result<(), AuthError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(AuthError::TrailingData {
                message: self.message,
            })
        }
    }
}

/// Builds one payload.
/// The message number of a received payload (an empty one is an error in either role).
pub(crate) fn message_number(payload: &[u8]) -> Result<u8, AuthError> {
    payload.first().copied().ok_or(AuthError::UnexpectedMessage {
        number: 0,
        state: "empty payload",
    })
}

/// Reads SERVICE_REQUEST / SERVICE_ACCEPT (`message` names it) and checks that it names
/// `ssh-userauth`, the only service this layer runs.
pub(crate) fn expect_userauth_service(payload: &[u8], message: &'static str) -> Result<(), AuthError> {
    let mut rd = Rd::new(&payload[1..], message);
    let service = rd.bytes("service name")?;
    rd.finish()?;
    if service != super::SERVICE_USERAUTH.as_bytes() {
        return Err(AuthError::ServiceNotAvailable { message });
    }
    Ok(())
}

pub(crate) struct Wr(BytesMut);

impl Wr {
    pub(crate) fn new(msg: u8) -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u8(msg);
        Wr(buf)
    }

    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.put_u8(v);
        self
    }

    pub(crate) fn bool(self, v: bool) -> Self {
        self.u8(u8::from(v))
    }

    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.put_u32(v);
        self
    }

    /// A `string`. Anything beyond 4 GiB is cut (the length prefix always matches the
    /// content); no caller comes near that, transport packets are far smaller.
    pub(crate) fn string(mut self, v: impl AsRef<[u8]>) -> Self {
        let v = v.as_ref();
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.0.put_u32(len);
        self.0.put_slice(v.get(..len as usize).unwrap_or(v));
        self
    }

    pub(crate) fn name_list(self, names: &[&str]) -> Self {
        self.string(names.join(","))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn finish(self) -> Bytes {
        self.0.freeze()
    }
}

/// `string(session_id) || prefix`: the data a publickey signature covers (RFC 4252 §7)
/// when `prefix` is the request payload up to and including the public key blob.
pub(crate) fn signed_data(session_id: &[u8], request_prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + session_id.len() + request_prefix.len());
    let len = u32::try_from(session_id.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(session_id.get(..len as usize).unwrap_or(session_id));
    out.extend_from_slice(request_prefix);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_round_trip_and_truncation() {
        let b = Wr::new(5).string("ssh-userauth").finish();
        let mut rd = Rd::new(&b[1..], "SERVICE_REQUEST");
        assert_eq!(rd.utf8("service name").unwrap(), "ssh-userauth");
        rd.finish().unwrap();
        for cut in 1..b.len() {
            let mut rd = Rd::new(&b[1..cut], "SERVICE_REQUEST");
            assert!(rd.utf8("service name").is_err());
        }
    }

    #[test]
    fn name_lists() {
        let b = Wr::new(51)
            .name_list(&["publickey", "keyboard-interactive"])
            .finish();
        let mut rd = Rd::new(&b[1..], "USERAUTH_FAILURE");
        assert_eq!(
            rd.name_list("methods").unwrap(),
            vec!["publickey".to_string(), "keyboard-interactive".to_string()]
        );
        let empty = Wr::new(51).name_list(&[]).finish();
        assert!(Rd::new(&empty[1..], "x").name_list("m").unwrap().is_empty());
        for bad in [&b"a,,b"[..], b",a", b"a,", b"a b", b"\xff"] {
            let b = Wr::new(51).string(bad).finish();
            assert!(Rd::new(&b[1..], "x").name_list("m").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trailing_data_is_an_error() {
        let b = Wr::new(52).u8(0).finish();
        let rd = Rd::new(&b[1..], "USERAUTH_SUCCESS");
        assert_eq!(
            rd.finish(),
            Err(AuthError::TrailingData {
                message: "USERAUTH_SUCCESS"
            })
        );
    }

    #[test]
    fn signed_data_layout() {
        assert_eq!(signed_data(b"\x01\x02", b"\x32xy"), b"\0\0\0\x02\x01\x02\x32xy");
    }
}
