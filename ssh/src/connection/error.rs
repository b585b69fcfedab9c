//! Errors of the connection layer. Every one is a protocol violation by the peer: the caller
//! disconnects with [`ConnectionError::disconnect_reason`].

use crate::msg;

/// A peer's message broke RFC 4254 or one of our limits. The connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// An empty payload (no message number).
    #[error("empty connection-layer message")]
    Empty,
    /// A message number outside the connection layer's range (80..=100) or unassigned in it.
    #[error("message number {0} is not a connection-layer message")]
    NotConnectionMessage(u8),
    /// The message ended inside a field.
    #[error("{msg}: truncated in field `{field}`")]
    Truncated { msg: &'static str, field: &'static str },
    /// A field that must be UTF-8 text (names, host names, messages) is not.
    #[error("{msg}: field `{field}` is not valid UTF-8")]
    InvalidUtf8 { msg: &'static str, field: &'static str },
    /// Bytes after the last field of a message with a fixed layout.
    #[error("{msg}: {len} unexpected bytes after the last field")]
    TrailingData { msg: &'static str, len: usize },
    /// A recipient channel we never allocated (or already freed).
    #[error("{msg}: recipient channel {id} does not exist")]
    UnknownChannel { msg: &'static str, id: u32 },
    /// A message the channel's state does not allow (say a confirmation of an open channel).
    #[error("{msg}: not allowed on channel {id} while it is {state}")]
    UnexpectedMessage {
        msg: &'static str,
        id: u32,
        state: &'static str,
    },
    /// The peer sent more data than the window we granted it.
    #[error("{msg} on channel {id}: {len} bytes exceed the granted window of {window}")]
    WindowExceeded {
        msg: &'static str,
        id: u32,
        len: usize,
        window: u32,
    },
    /// The peer sent more data in one message than our maximum packet size.
    #[error("{msg} on channel {id}: {len} bytes exceed our maximum packet size of {max}")]
    PacketTooLarge {
        msg: &'static str,
        id: u32,
        len: usize,
        max: u32,
    },
    /// Data, extended data or a second EOF after the peer's EOF.
    #[error("{msg} on channel {id} after the peer's CHANNEL_EOF")]
    AfterEof { msg: &'static str, id: u32 },
    /// A window adjustment that takes the window past 2^32 - 1 (fatal in OpenSSH too).
    #[error("CHANNEL_WINDOW_ADJUST on channel {id}: window {window} + {add} overflows 2^32 - 1")]
    WindowOverflow { id: u32, window: u32, add: u32 },
    /// A reply (CHANNEL_SUCCESS/FAILURE, REQUEST_SUCCESS/FAILURE) to no request of ours that
    /// wanted one.
    #[error("{msg}: no request of ours is awaiting a reply")]
    UnexpectedReply { msg: &'static str },
    /// The peer has more requests awaiting our reply than the configured bound.
    #[error("{msg}: more than {max} requests awaiting our reply")]
    TooManyPendingRequests { msg: &'static str, max: usize },
}

impl ConnectionError {
    /// The SSH_MSG_DISCONNECT reason to send: always `PROTOCOL_ERROR`.
    pub fn disconnect_reason(&self) -> u32 {
        msg::disconnect::PROTOCOL_ERROR
    }
}
