//! The connection layer (RFC 4254 + the OpenSSH extensions a relay needs): channels,
//! channel requests and global requests, sans-IO.
//!
//! [`Connection`] takes the decrypted payloads of messages 80..=100 from the transport
//! ([`Connection::handle`]), gives back payloads to send ([`Connection::poll_transmit`]) and
//! events for the application ([`Connection::poll_event`]). Drain both after every call.
//!
//! # Flow control as explicit credit
//! A channel's receive window is credited only when the application says it *consumed*
//! bytes ([`Connection::consume`]), never when they arrive (quinn's stream receive window
//! works this way). Data beyond the window we granted, or beyond our maximum packet, is a
//! protocol error, so the unconsumed data of a channel never exceeds its window. Sending
//! never exceeds the peer's window or maximum packet, and [`Connection::send_data`] takes
//! only what fits: there is no queue a stalled channel could fill, so one channel's lack of
//! window never holds up another.
//!
//! # Bounds (see [`ConnectionConfig`])
//! - Live channels: `max_channels` (default 256). A peer's open beyond it is refused with
//!   `RESOURCE_SHORTAGE`. Channels the application opens itself are not refused (it bounds
//!   them), but count towards the limit for the peer's opens.
//! - Unconsumed received data per channel: `initial_window` (default 2 MiB); per connection
//!   at most `max_channels × initial_window`.
//! - The peer's requests awaiting our reply: `max_pending_requests` per channel (default 64)
//!   and `max_pending_global_requests` for global requests (default 64); more is a protocol
//!   error. Each costs a few bytes; the request itself goes out in its event.
//! - Our own requests awaiting replies are counters (no memory).
//! - Events and the transmit queue grow only by what one `handle` call or one API call
//!   produces (one message in, a bounded number of events/messages out), plus the data
//!   `send_data` accepted (bounded by the peer's windows): drain them after each call, and
//!   use [`Connection::queued_transmit_bytes`] to stop reading from a peer that does not read
//!   what we send.

mod channel;
mod engine;
mod error;
mod kinds;
mod outgoing;
mod wire;

use bytes::Bytes;

pub use engine::Connection;
pub use error::ConnectionError;
pub use kinds::{encode_pty_modes, parse_pty_modes, ChannelKind, ChannelRequest, GlobalRequest, TTY_OP_END};
pub use outgoing::Outgoing;

/// Which end of the SSH connection we are. It decides which channel types the peer may open
/// (a client refuses `session` and `direct-tcpip`; a server refuses `forwarded-tcpip`, `x11`
/// and `auth-agent@openssh.com`, each with `ADMINISTRATIVELY_PROHIBITED`; a server that
/// received `no-more-sessions@openssh.com` refuses further `session` opens the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

/// Settings of one [`Connection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub side: Side,
    /// The receive window we grant each channel, and so the bound on its unconsumed data.
    /// Default 2 MiB (OpenSSH's session window).
    pub initial_window: u32,
    /// The maximum data bytes per CHANNEL_DATA / CHANNEL_EXTENDED_DATA we accept (announced
    /// in opens and confirmations) and the most we put in one. Default 32768 (OpenSSH's).
    pub max_packet: u32,
    /// The most live channels; a peer's open beyond it is refused with RESOURCE_SHORTAGE.
    /// Default 256.
    pub max_channels: usize,
    /// The most peer requests awaiting our reply per channel. Default 64.
    pub max_pending_requests: usize,
    /// The most peer global requests awaiting our reply. Default 64.
    pub max_pending_global_requests: usize,
    /// Answer the peer's CHANNEL_CLOSE at once (default). A relay sets `false`: it gets
    /// `PeerClosed` and closes when the other side has said what it still has to say (as
    /// sshd sends a command's exit-status before answering a client's early CLOSE).
    pub answer_close: bool,
}

impl ConnectionConfig {
    /// The defaults for one side.
    pub fn new(side: Side) -> Self {
        ConnectionConfig {
            side,
            initial_window: 2 * 1024 * 1024,
            max_packet: 32768,
            max_channels: 256,
            max_pending_requests: 64,
            max_pending_global_requests: 64,
            answer_close: true,
        }
    }
}

/// Our id of a channel: a small integer, reused after the channel is done (once the
/// application has polled its `Closed` or `ChannelOpenFailed` event, or after `reject_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub(crate) u32);

impl ChannelId {
    /// The number on the wire (our side's channel number).
    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// CHANNEL_OPEN_FAILURE reason codes (RFC 4254 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum OpenFailure {
    AdministrativelyProhibited = 1,
    ConnectFailed = 2,
    UnknownChannelType = 3,
    ResourceShortage = 4,
}

impl OpenFailure {
    /// The code on the wire.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The reason for a code, if it is one of the four RFC 4254 defines.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(OpenFailure::AdministrativelyProhibited),
            2 => Some(OpenFailure::ConnectFailed),
            3 => Some(OpenFailure::UnknownChannelType),
            4 => Some(OpenFailure::ResourceShortage),
            _ => None,
        }
    }
}

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The peer wants a channel: answer with `accept_open` or `reject_open`.
    ChannelOpen { id: ChannelId, kind: ChannelKind },
    /// The peer confirmed our open.
    ChannelOpenConfirmed { id: ChannelId },
    /// The peer refused our open; the id is free once this event is polled.
    ChannelOpenFailed {
        id: ChannelId,
        reason: u32,
        description: String,
    },
    /// Channel data, a zero-copy slice of the received payload. Call `consume` once the
    /// bytes are dealt with: only that credits the peer's window.
    Data { id: ChannelId, data: Bytes },
    /// Extended data (code 1 is stderr), like `Data`; it shares the channel's window.
    ExtendedData { id: ChannelId, code: u32, data: Bytes },
    /// The peer granted more window (wake a writer blocked on `send_data`).
    WindowAvailable { id: ChannelId },
    /// The peer will send no more data on the channel.
    Eof { id: ChannelId },
    /// The peer sent CHANNEL_CLOSE and `answer_close` is off: send what is left (requests
    /// such as exit-status), then `close`; `Closed` follows at once. The peer's data is no
    /// longer accepted.
    PeerClosed { id: ChannelId },
    /// Both sides sent CHANNEL_CLOSE; the id is free once this event is polled.
    Closed { id: ChannelId },
    /// A channel request. If `want_reply`, answer with `reply` (or `reply_to`).
    Request {
        id: ChannelId,
        request: ChannelRequest,
        want_reply: bool,
    },
    /// The peer's answer to our request that wanted a reply (in the order we sent them).
    RequestReply { id: ChannelId, success: bool },
    /// A global request. If `want_reply`, answer with `global_reply`.
    GlobalRequest {
        request: GlobalRequest,
        want_reply: bool,
    },
    /// The peer's answer to our global request that wanted a reply (in order); `data` is
    /// the request-specific part of REQUEST_SUCCESS (the bound port of a `tcpip-forward`
    /// with port 0), empty for a failure.
    GlobalReply { success: bool, data: Bytes },
}
