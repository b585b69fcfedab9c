//! What can go wrong in the transport, named by message and field.

use crate::msg::disconnect;

/// A transport failure. After one, the transport is closed: `recv`/`send` return
/// [`TransportError::Closed`] and `output()` may still hold a DISCONNECT to write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer's identification line (or a line before it) broke a rule.
    #[error("identification exchange: {0}")]
    Ident(String),
    /// A packet's length field exceeds the limit.
    #[error("packet length {length} exceeds the limit of {max} bytes")]
    PacketTooLarge { length: usize, max: usize },
    /// An upper-layer payload too large to send in one packet.
    #[error("payload of {length} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge { length: usize, max: usize },
    /// Packet framing: length, padding or block alignment wrong.
    #[error("bad packet framing (sequence number {seq}): {what}")]
    Framing { seq: u32, what: &'static str },
    /// The MAC or AEAD tag of a packet did not verify.
    #[error("message authentication failed on packet with sequence number {seq} ({cipher})")]
    Mac { seq: u32, cipher: &'static str },
    /// A message body was cut short or held an invalid value.
    #[error("malformed {msg} message: field `{field}`")]
    Malformed { msg: &'static str, field: &'static str },
    /// A message that may not come now.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Strict key exchange (kex-strict-*-v00@openssh.com) was violated.
    #[error("strict key exchange violation: {0}")]
    StrictKex(String),
    /// Algorithm negotiation found nothing in common.
    #[error("no common {what} algorithm (ours: {ours}; peer's: {theirs})")]
    NoCommonAlgorithm {
        what: &'static str,
        ours: String,
        theirs: String,
    },
    /// The key exchange computation failed (bad public value, KEM failure…).
    #[error("key exchange {kex} failed: {what}")]
    Kex { kex: &'static str, what: String },
    /// The server's host key or its signature over the exchange hash is bad.
    #[error("server host key: {0}")]
    HostKey(String),
    /// The caller refused the server's host key (`host_key_verdict(false)`).
    #[error("server host key rejected")]
    HostKeyRejected,
    /// The configuration cannot work (e.g. a server without host keys).
    #[error("configuration: {0}")]
    Config(String),
    /// A cryptographic primitive failed unexpectedly.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
    /// The transport is closed (after an error, a DISCONNECT sent or received).
    #[error("transport closed")]
    Closed,
}

impl TransportError {
    /// The RFC 4253 §11.1 reason code for the DISCONNECT we send after this error.
    pub fn disconnect_reason(&self) -> u32 {
        match self {
            TransportError::Mac { .. } => disconnect::MAC_ERROR,
            TransportError::NoCommonAlgorithm { .. } | TransportError::Kex { .. } => {
                disconnect::KEY_EXCHANGE_FAILED
            }
            TransportError::HostKey(_) | TransportError::HostKeyRejected => {
                disconnect::HOST_KEY_NOT_VERIFIABLE
            }
            TransportError::Config(_) | TransportError::Crypto(_) => disconnect::BY_APPLICATION,
            _ => disconnect::PROTOCOL_ERROR,
        }
    }
}
