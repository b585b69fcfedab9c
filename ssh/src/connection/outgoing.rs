//! One message the connection layer gives the transport to send.

use bytes::{BufMut, Bytes, BytesMut};

/// Channel data keeps its bytes where they are (a slice of the packet they arrived in, on a
/// relay): the message is its few header bytes plus that slice, and the transport frames
/// both into one packet, so relayed data is copied once, into the packet, not first into a
/// payload. Every other message is one payload (`head` empty).
#[derive(Debug, Clone)]
pub struct Outgoing {
    head: [u8; Self::MAX_HEAD],
    head_len: u8,
    body: Bytes,
}

impl Outgoing {
    /// CHANNEL_EXTENDED_DATA's header: message number, channel, code, string length.
    pub const MAX_HEAD: usize = 13;

    pub(crate) fn whole(payload: Bytes) -> Self {
        Self {
            head: [0; Self::MAX_HEAD],
            head_len: 0,
            body: payload,
        }
    }

    /// `head` (at most [`MAX_HEAD`](Self::MAX_HEAD) bytes) followed by `body`.
    pub(crate) fn split(head: &[u8], body: Bytes) -> Self {
        let mut h = [0; Self::MAX_HEAD];
        h[..head.len()].copy_from_slice(head);
        Self {
            head: h,
            head_len: head.len() as u8,
            body,
        }
    }

    /// The message in two pieces, to be sent back to back.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.head[..self.head_len as usize], &self.body]
    }

    pub fn len(&self) -> usize {
        self.head_len as usize + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message as one payload (a copy when it is in two pieces).
    pub fn into_bytes(self) -> Bytes {
        if self.head_len == 0 {
            return self.body;
        }
        let mut b = BytesMut::with_capacity(self.len());
        b.put_slice(&self.head[..self.head_len as usize]);
        b.put_slice(&self.body);
        b.freeze()
    }
}
