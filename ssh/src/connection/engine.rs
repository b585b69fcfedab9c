//! The [`Connection`] state machine: dispatch of received messages, and the API that queues
//! messages to send.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::channel::{Channel, State};
use super::wire::{msg_name, put_bool, put_string, string_len, Reader};
use super::{
    ChannelId, ChannelKind, ChannelRequest, ConnectionConfig, ConnectionError, ConnectionEvent,
    GlobalRequest, OpenFailure, Outgoing, Side,
};
use crate::msg;

/// The smallest block the outgoing payload buffer grows by. Payloads are split off it, so
/// most messages cost no allocation: once the transport has dropped the payloads it took,
/// the buffer is reused.
const OUT_CHUNK: usize = 64 * 1024;
/// The outgoing buffer's growth for messages of up to this size.
const SMALL_CHUNK: usize = 4 * 1024;

/// When the transmit queue runs empty, a payload buffer grown past this (by a large
/// `send_data`) is let go, so an idle connection does not keep its biggest burst allocated.
const OUT_KEEP: usize = 256 * 1024;

/// The connection layer of one SSH connection, one side. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct Connection {
    cfg: ConnectionConfig,
    /// Indexed by our channel id; `None` is a free id.
    channels: Vec<Option<Channel>>,
    /// `Some` entries of `channels`.
    live: usize,
    events: VecDeque<ConnectionEvent>,
    transmit: VecDeque<Outgoing>,
    transmit_bytes: usize,
    out: BytesMut,
    /// Our global requests that wanted a reply and have none yet.
    our_global_pending: u64,
    /// The peer's global requests that wanted a reply, oldest first (`None` = unanswered).
    peer_global_pending: VecDeque<Option<(bool, Bytes)>>,
    /// The client sent `no-more-sessions@openssh.com` (server side): session opens are
    /// refused from then on, as OpenSSH's sshd does.
    no_more_sessions: bool,
}

impl Connection {
    /// A connection layer with no channels, for one side (see [`ConnectionConfig::new`] for
    /// the defaults).
    pub fn new(cfg: ConnectionConfig) -> Self {
        Connection {
            cfg,
            channels: Vec::new(),
            live: 0,
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            transmit_bytes: 0,
            out: BytesMut::new(),
            our_global_pending: 0,
            peer_global_pending: VecDeque::new(),
            no_more_sessions: false,
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &ConnectionConfig {
        &self.cfg
    }

    /// The next payload to send (a whole message, message number first), in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.poll_outgoing().map(Outgoing::into_bytes)
    }

    /// The next message to send, in order, as [`poll_transmit`](Self::poll_transmit) but
    /// with channel data from [`send_data_bytes`](Self::send_data_bytes) left uncopied.
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        let p = self.transmit.pop_front()?;
        self.transmit_bytes -= p.len();
        if self.transmit.is_empty() && self.out.capacity() > OUT_KEEP {
            self.out = BytesMut::new();
        }
        Some(p)
    }

    /// The bytes `poll_transmit` has yet to give out: stop reading from a peer (and stop
    /// calling `send_data`) while this stays high, the peer is not reading.
    pub fn queued_transmit_bytes(&self) -> usize {
        self.transmit_bytes
    }

    /// The next event. Polling a `Closed` or `ChannelOpenFailed` event frees its id.
    pub fn poll_event(&mut self) -> Option<ConnectionEvent> {
        let ev = self.events.pop_front()?;
        if let ConnectionEvent::Closed { id } | ConnectionEvent::ChannelOpenFailed { id, .. } = &ev {
            if matches!(self.chan(*id), Some(ch) if ch.state == State::Dead) {
                self.free(*id);
            }
        }
        Some(ev)
    }

    /// How many channels hold an id (open, opening, or closed with the event not yet polled).
    pub fn channel_count(&self) -> usize {
        self.live
    }

    /// Whether the channel is open (confirmed and not closed by both sides).
    pub fn is_open(&self, id: ChannelId) -> bool {
        matches!(self.chan(id), Some(ch) if ch.state == State::Open)
    }

    // ---- received messages ----------------------------------------------------------------

    /// Handles one received message (80..=100, message number included). An error is a
    /// protocol violation: disconnect (with [`ConnectionError::disconnect_reason`]).
    pub fn handle(&mut self, payload: Bytes) -> Result<(), ConnectionError> {
        let Some(&n) = payload.first() else {
            return Err(ConnectionError::Empty);
        };
        let name = msg_name(n);
        let mut r = Reader::new(&payload, 1, name);
        match n {
            msg::GLOBAL_REQUEST => {
                let req_name = r.utf8("request name")?;
                let want_reply = r.bool("want reply")?;
                let request = GlobalRequest::parse(req_name, r.rest())?;
                if self.cfg.side == Side::Server && request == GlobalRequest::NoMoreSessions {
                    self.no_more_sessions = true;
                }
                if want_reply {
                    if self.peer_global_pending.len() >= self.cfg.max_pending_global_requests {
                        return Err(ConnectionError::TooManyPendingRequests {
                            msg: name,
                            max: self.cfg.max_pending_global_requests,
                        });
                    }
                    self.peer_global_pending.push_back(None);
                }
                self.events
                    .push_back(ConnectionEvent::GlobalRequest { request, want_reply });
            }
            msg::REQUEST_SUCCESS | msg::REQUEST_FAILURE => {
                let success = n == msg::REQUEST_SUCCESS;
                let data = if success { r.rest() } else { Bytes::new() };
                r.end()?;
                if self.our_global_pending == 0 {
                    return Err(ConnectionError::UnexpectedReply { msg: name });
                }
                self.our_global_pending -= 1;
                self.events
                    .push_back(ConnectionEvent::GlobalReply { success, data });
            }
            msg::CHANNEL_OPEN => self.on_open(&mut r)?,
            msg::CHANNEL_OPEN_CONFIRMATION => {
                let id = r.u32("recipient channel")?;
                let peer_id = r.u32("sender channel")?;
                let window = r.u32("initial window size")?;
                let max_packet = r.u32("maximum packet size")?;
                // Channel-type-specific data may follow (none is defined): ignored.
                let ch = self.expect(name, id, State::Opening)?;
                ch.state = State::Open;
                ch.peer_id = peer_id;
                ch.send_window = window;
                ch.peer_max_packet = max_packet;
                let (eof, close) = (ch.eof_pending, ch.close_pending);
                let id = ChannelId(id);
                if close {
                    self.close(id);
                } else {
                    self.events
                        .push_back(ConnectionEvent::ChannelOpenConfirmed { id });
                    if eof {
                        self.eof(id);
                    }
                }
            }
            msg::CHANNEL_OPEN_FAILURE => {
                let id = r.u32("recipient channel")?;
                let reason = r.u32("reason code")?;
                let description = r.utf8("description")?;
                let _language = r.utf8("language tag")?;
                r.end()?;
                let ch = self.expect(name, id, State::Opening)?;
                ch.state = State::Dead;
                self.events.push_back(ConnectionEvent::ChannelOpenFailed {
                    id: ChannelId(id),
                    reason,
                    description,
                });
            }
            msg::CHANNEL_WINDOW_ADJUST => {
                let id = r.u32("recipient channel")?;
                let add = r.u32("bytes to add")?;
                r.end()?;
                let Some(ch) = self.expect_open(name, id)? else {
                    return Ok(());
                };
                ch.send_window = ch
                    .send_window
                    .checked_add(add)
                    .ok_or(ConnectionError::WindowOverflow {
                        id,
                        window: ch.send_window,
                        add,
                    })?;
                if add > 0 && ch.can_send() {
                    self.events
                        .push_back(ConnectionEvent::WindowAvailable { id: ChannelId(id) });
                }
            }
            msg::CHANNEL_DATA | msg::CHANNEL_EXTENDED_DATA => {
                let id = r.u32("recipient channel")?;
                let code = match n {
                    msg::CHANNEL_EXTENDED_DATA => Some(r.u32("data type code")?),
                    _ => None,
                };
                let data = r.bytes("data")?;
                r.end()?;
                let max = self.cfg.max_packet;
                let Some(ch) = self.expect_open(name, id)? else {
                    return Ok(());
                };
                if ch.recv_eof {
                    return Err(ConnectionError::AfterEof { msg: name, id });
                }
                if data.len() > max as usize {
                    return Err(ConnectionError::PacketTooLarge {
                        msg: name,
                        id,
                        len: data.len(),
                        max,
                    });
                }
                if data.len() > ch.recv_window as usize {
                    return Err(ConnectionError::WindowExceeded {
                        msg: name,
                        id,
                        len: data.len(),
                        window: ch.recv_window,
                    });
                }
                if data.is_empty() {
                    return Ok(());
                }
                // Both fit in u32: data.len() <= recv_window, and recv_window + unconsumed
                // + credit == window_max.
                ch.recv_window -= data.len() as u32;
                ch.unconsumed += data.len() as u32;
                let id = ChannelId(id);
                self.events.push_back(match code {
                    None => ConnectionEvent::Data { id, data },
                    Some(code) => ConnectionEvent::ExtendedData { id, code, data },
                });
            }
            msg::CHANNEL_EOF => {
                let id = r.u32("recipient channel")?;
                r.end()?;
                let Some(ch) = self.expect_open(name, id)? else {
                    return Ok(());
                };
                if ch.recv_eof {
                    return Err(ConnectionError::AfterEof { msg: name, id });
                }
                ch.recv_eof = true;
                self.events.push_back(ConnectionEvent::Eof { id: ChannelId(id) });
            }
            msg::CHANNEL_CLOSE => {
                let id = r.u32("recipient channel")?;
                r.end()?;
                // Not `expect_open`: the peer's CLOSE is what we wait for after ours.
                let answer_close = self.cfg.answer_close;
                let ch = self.expect(name, id, State::Open)?;
                if ch.recv_close {
                    // A second CLOSE while the first awaits our answer: nothing new.
                    return Ok(());
                }
                ch.peer_pending.clear();
                if !ch.sent_close && !answer_close {
                    ch.recv_close = true;
                    self.events
                        .push_back(ConnectionEvent::PeerClosed { id: ChannelId(id) });
                    return Ok(());
                }
                let answer = !ch.sent_close;
                ch.sent_close = true;
                ch.state = State::Dead;
                ch.peer_pending.clear();
                let peer_id = ch.peer_id;
                if answer {
                    self.queue(5, |out| {
                        out.put_u8(msg::CHANNEL_CLOSE);
                        out.put_u32(peer_id);
                    });
                }
                self.events
                    .push_back(ConnectionEvent::Closed { id: ChannelId(id) });
            }
            msg::CHANNEL_REQUEST => {
                let id = r.u32("recipient channel")?;
                let req_name = r.utf8("request type")?;
                let want_reply = r.bool("want reply")?;
                let request = ChannelRequest::parse(req_name, r.rest())?;
                let max = self.cfg.max_pending_requests;
                // Requests still count after our CLOSE (a server sends exit-status after a
                // client's early CLOSE; OpenSSH's client takes it), but can no longer be
                // answered.
                let ch = self.expect(name, id, State::Open)?;
                if ch.recv_close {
                    return Ok(());
                }
                let want_reply = want_reply && !ch.sent_close;
                if want_reply {
                    if ch.peer_pending.len() >= max {
                        return Err(ConnectionError::TooManyPendingRequests { msg: name, max });
                    }
                    ch.peer_pending.push_back(None);
                }
                self.events.push_back(ConnectionEvent::Request {
                    id: ChannelId(id),
                    request,
                    want_reply,
                });
            }
            msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE => {
                let id = r.u32("recipient channel")?;
                r.end()?;
                let Some(ch) = self.expect_open(name, id)? else {
                    return Ok(());
                };
                if ch.our_pending == 0 {
                    return Err(ConnectionError::UnexpectedReply { msg: name });
                }
                ch.our_pending -= 1;
                self.events.push_back(ConnectionEvent::RequestReply {
                    id: ChannelId(id),
                    success: n == msg::CHANNEL_SUCCESS,
                });
            }
            _ => return Err(ConnectionError::NotConnectionMessage(n)),
        }
        Ok(())
    }

    fn on_open(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let type_name = r.utf8("channel type")?;
        let peer_id = r.u32("sender channel")?;
        let window = r.u32("initial window size")?;
        let max_packet = r.u32("maximum packet size")?;
        let kind = ChannelKind::parse(type_name, r)?;
        let refuse = if self.live >= self.cfg.max_channels {
            Some((OpenFailure::ResourceShortage, "too many channels"))
        } else if self.no_more_sessions && kind == ChannelKind::Session {
            Some((OpenFailure::AdministrativelyProhibited, "no more sessions"))
        } else {
            let wrong_way = matches!(
                (self.cfg.side, &kind),
                (
                    Side::Client,
                    ChannelKind::Session | ChannelKind::DirectTcpip { .. }
                ) | (
                    Side::Server,
                    ChannelKind::ForwardedTcpip { .. } | ChannelKind::X11 { .. } | ChannelKind::AuthAgent
                )
            );
            wrong_way.then_some((
                OpenFailure::AdministrativelyProhibited,
                "channel type not allowed this way",
            ))
        };
        if let Some((reason, description)) = refuse {
            self.queue_open_failure(peer_id, reason.code(), description);
            return Ok(());
        }
        let mut ch = Channel::new(State::PeerOpening, self.cfg.initial_window);
        ch.peer_id = peer_id;
        ch.send_window = window;
        ch.peer_max_packet = max_packet;
        let id = self.alloc(ch);
        self.events.push_back(ConnectionEvent::ChannelOpen { id, kind });
        Ok(())
    }

    /// The channel `id` from a received message, which must be in `state`.
    fn expect(&mut self, msg: &'static str, id: u32, state: State) -> Result<&mut Channel, ConnectionError> {
        let ch = self
            .channels
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(ConnectionError::UnknownChannel { msg, id })?;
        if ch.state != state {
            return Err(ConnectionError::UnexpectedMessage {
                msg,
                id,
                state: ch.state.describe(),
            });
        }
        Ok(ch)
    }

    /// The open channel `id` for a message the peer may send until its CLOSE; `None` when we
    /// sent our CLOSE already (the message is then ignored, RFC 4254 §5.3).
    fn expect_open(&mut self, msg: &'static str, id: u32) -> Result<Option<&mut Channel>, ConnectionError> {
        let ch = self.expect(msg, id, State::Open)?;
        Ok(if ch.sent_close || ch.recv_close {
            None
        } else {
            Some(ch)
        })
    }

    // ---- opening --------------------------------------------------------------------------

    /// Opens a channel. `ChannelOpenConfirmed` or `ChannelOpenFailed` follows. Data and
    /// requests wait for the confirmation (`send_data` takes nothing before); `eof` and
    /// `close` before it are remembered and sent once it arrives.
    pub fn open(&mut self, kind: ChannelKind) -> ChannelId {
        let ch = Channel::new(State::Opening, self.cfg.initial_window);
        let id = self.alloc(ch);
        let (window, max_packet) = (self.cfg.initial_window, self.cfg.max_packet);
        let name = kind.name();
        self.queue(1 + string_len(name.as_bytes()) + 12 + 64, |out| {
            out.put_u8(msg::CHANNEL_OPEN);
            put_string(out, name.as_bytes());
            out.put_u32(id.0);
            out.put_u32(window);
            out.put_u32(max_packet);
            kind.encode_specific(out);
        });
        id
    }

    /// Accepts the peer's open (a `ChannelOpen` event). Ignored for any other channel.
    pub fn accept_open(&mut self, id: ChannelId) {
        let (window, max_packet) = (self.cfg.initial_window, self.cfg.max_packet);
        let Some(ch) = self.chan_mut(id).filter(|ch| ch.state == State::PeerOpening) else {
            return;
        };
        ch.state = State::Open;
        let peer_id = ch.peer_id;
        self.queue(17, |out| {
            out.put_u8(msg::CHANNEL_OPEN_CONFIRMATION);
            out.put_u32(peer_id);
            out.put_u32(id.0);
            out.put_u32(window);
            out.put_u32(max_packet);
        });
    }

    /// Refuses the peer's open (a `ChannelOpen` event) with a reason code
    /// ([`OpenFailure`]); the id is free at once. Ignored for any other channel.
    pub fn reject_open(&mut self, id: ChannelId, reason: u32, description: &str) {
        let Some(ch) = self.chan_mut(id).filter(|ch| ch.state == State::PeerOpening) else {
            return;
        };
        let peer_id = ch.peer_id;
        self.free(id);
        self.queue_open_failure(peer_id, reason, description);
    }

    fn queue_open_failure(&mut self, peer_id: u32, reason: u32, description: &str) {
        self.queue(13 + string_len(description.as_bytes()) + 4, |out| {
            out.put_u8(msg::CHANNEL_OPEN_FAILURE);
            out.put_u32(peer_id);
            out.put_u32(reason);
            put_string(out, description.as_bytes());
            put_string(out, b"");
        });
    }

    // ---- data, flow control ---------------------------------------------------------------

    /// Sends as much of `data` as the peer's window allows (possibly nothing), split into
    /// packets of at most the peer's maximum packet (and ours); returns how much it took.
    /// Nothing is taken before the open is confirmed or after our EOF or CLOSE. Wait for
    /// `WindowAvailable` before offering the rest.
    pub fn send_data(&mut self, id: ChannelId, data: &[u8]) -> usize {
        self.send(id, None, data)
    }

    /// Like `send_data`, as CHANNEL_EXTENDED_DATA with `code` (1 is stderr).
    pub fn send_extended_data(&mut self, id: ChannelId, code: u32, data: &[u8]) -> usize {
        self.send(id, Some(code), data)
    }

    /// Like `send_data` (or `send_extended_data` with `code`), taking the bytes without
    /// copying them: each packet's payload refers to `data` until the transport frames it
    /// (see [`Outgoing`]).
    pub fn send_data_bytes(&mut self, id: ChannelId, code: Option<u32>, data: &Bytes) -> usize {
        let Some((total, chunk, peer_id)) = self.take_window(id, data.len()) else {
            return 0;
        };
        let mut at = 0;
        while at < total {
            let n = chunk.min(total - at);
            let (head, len) = data_header(peer_id, code, n);
            let o = Outgoing::split(&head[..len], data.slice(at..at + n));
            self.transmit_bytes += o.len();
            self.transmit.push_back(o);
            at += n;
        }
        total
    }

    /// How much of `want` bytes the channel's send window takes now (taken from it), the
    /// packet size, and the peer's channel id; `None` when it takes nothing.
    fn take_window(&mut self, id: ChannelId, want: usize) -> Option<(usize, usize, u32)> {
        let our_max = self.cfg.max_packet;
        let ch = self.chan_mut(id).filter(|ch| ch.can_send())?;
        let chunk = ch.peer_max_packet.min(our_max) as usize;
        if chunk == 0 {
            return None;
        }
        let total = want.min(ch.send_window as usize);
        ch.send_window -= total as u32;
        Some((total, chunk, ch.peer_id))
    }

    fn send(&mut self, id: ChannelId, code: Option<u32>, data: &[u8]) -> usize {
        let Some((total, chunk, peer_id)) = self.take_window(id, data.len()) else {
            return 0;
        };
        let header = if code.is_some() { 13 } else { 9 };
        // Room for all the packets at once: at most one allocation per call.
        self.reserve(total + total.div_ceil(chunk) * header);
        for part in data[..total].chunks(chunk) {
            self.queue(header + part.len(), |out| {
                let (head, len) = data_header(peer_id, code, part.len());
                out.put_slice(&head[..len]);
                out.put_slice(part);
            });
        }
        total
    }

    /// What the peer lets us send on the channel now (0 when we may not send at all).
    pub fn send_window(&self, id: ChannelId) -> usize {
        match self.chan(id) {
            Some(ch) if ch.can_send() => ch.send_window as usize,
            _ => 0,
        }
    }

    /// The application consumed `n` bytes it received on the channel (data and extended data
    /// alike; clamped to what it was given and has not consumed). Only this credits the
    /// peer's window: a WINDOW_ADJUST goes out once the credit is worth it (see
    /// `Channel::consume`: half the window, or a packet's worth when the peer runs low).
    pub fn consume(&mut self, id: ChannelId, n: usize) {
        let max_packet = self.cfg.max_packet;
        let Some(ch) = self.chan_mut(id) else {
            return;
        };
        if let Some(add) = ch.consume(n, max_packet) {
            let peer_id = ch.peer_id;
            self.queue(9, |out| {
                out.put_u8(msg::CHANNEL_WINDOW_ADJUST);
                out.put_u32(peer_id);
                out.put_u32(add);
            });
        }
    }

    /// The bytes received on the channel and not consumed yet (at most its window).
    pub fn unconsumed(&self, id: ChannelId) -> usize {
        self.chan(id).map_or(0, |ch| ch.unconsumed as usize)
    }

    /// Sends CHANNEL_EOF (once): we send no more data. Requests may still follow.
    pub fn eof(&mut self, id: ChannelId) {
        let Some(ch) = self.chan_mut(id) else {
            return;
        };
        match ch.state {
            State::Opening => ch.eof_pending = true,
            State::Open if !ch.sent_eof && !ch.sent_close => {
                ch.sent_eof = true;
                let peer_id = ch.peer_id;
                self.queue(5, |out| {
                    out.put_u8(msg::CHANNEL_EOF);
                    out.put_u32(peer_id);
                });
            }
            _ => {}
        }
    }

    /// Sends CHANNEL_CLOSE (once). From then on the peer's messages on the channel are
    /// ignored until its CLOSE, which ends the channel with a `Closed` event. Before the
    /// peer confirmed our open, the CLOSE goes out on confirmation (or the open fails);
    /// on a peer's open we have not answered, it is refused with CONNECT_FAILED and
    /// `Closed` follows at once.
    pub fn close(&mut self, id: ChannelId) {
        let Some(ch) = self.chan_mut(id) else {
            return;
        };
        match ch.state {
            State::Opening => ch.close_pending = true,
            State::PeerOpening => {
                let peer_id = ch.peer_id;
                ch.state = State::Dead;
                self.queue_open_failure(peer_id, OpenFailure::ConnectFailed.code(), "closed");
                self.events.push_back(ConnectionEvent::Closed { id });
            }
            State::Open if !ch.sent_close => {
                ch.sent_close = true;
                ch.peer_pending.clear();
                let peer_id = ch.peer_id;
                // Our answer to the peer's CLOSE (`answer_close` off): the channel is done.
                let done = ch.recv_close;
                if done {
                    ch.state = State::Dead;
                }
                self.queue(5, |out| {
                    out.put_u8(msg::CHANNEL_CLOSE);
                    out.put_u32(peer_id);
                });
                if done {
                    self.events.push_back(ConnectionEvent::Closed { id });
                }
            }
            _ => {}
        }
    }

    // ---- requests -------------------------------------------------------------------------

    /// Sends a channel request; with `want_reply`, a `RequestReply` follows (in order).
    /// Ignored unless the channel is open and we have not sent CLOSE.
    pub fn request(&mut self, id: ChannelId, req: ChannelRequest, want_reply: bool) {
        let Some(ch) = self
            .chan_mut(id)
            .filter(|ch| ch.state == State::Open && !ch.sent_close)
        else {
            return;
        };
        if want_reply {
            ch.our_pending += 1;
        }
        let peer_id = ch.peer_id;
        let name = req.name();
        self.queue(1 + 4 + string_len(name.as_bytes()) + 1 + 64, |out| {
            out.put_u8(msg::CHANNEL_REQUEST);
            out.put_u32(peer_id);
            put_string(out, name.as_bytes());
            put_bool(out, want_reply);
            req.encode_data(out);
        });
    }

    /// Answers the oldest of the peer's requests on the channel that wanted a reply and is
    /// not answered yet. Replies go out in request order: an answer waits for the earlier
    /// ones. Ignored if none is waiting (or we sent CLOSE).
    pub fn reply(&mut self, id: ChannelId, success: bool) {
        let Some(ch) = self.chan_mut(id) else {
            return;
        };
        if let Some(slot) = ch.peer_pending.iter_mut().find(|s| s.is_none()) {
            *slot = Some(success);
            self.flush_replies(id);
        }
    }

    /// Answers a given request of the peer: `seq` counts the `Request` events with
    /// `want_reply` on this channel, from 0. For answering out of order: the reply still
    /// goes out after those of all earlier requests. Ignored if `seq` is not waiting.
    pub fn reply_to(&mut self, id: ChannelId, seq: u64, success: bool) {
        let Some(ch) = self.chan_mut(id) else {
            return;
        };
        let Some(index) = seq.checked_sub(ch.peer_seq_base) else {
            return;
        };
        if let Some(slot @ None) = usize::try_from(index)
            .ok()
            .and_then(|i| ch.peer_pending.get_mut(i))
        {
            *slot = Some(success);
            self.flush_replies(id);
        }
    }

    fn flush_replies(&mut self, id: ChannelId) {
        while let Some(ch) = self.chan_mut(id) {
            let Some(success) = ch.take_ready_reply() else {
                return;
            };
            let peer_id = ch.peer_id;
            self.queue(5, |out| {
                out.put_u8(if success {
                    msg::CHANNEL_SUCCESS
                } else {
                    msg::CHANNEL_FAILURE
                });
                out.put_u32(peer_id);
            });
        }
    }

    /// Sends a global request; with `want_reply`, a `GlobalReply` follows (in order).
    pub fn global_request(&mut self, req: GlobalRequest, want_reply: bool) {
        if want_reply {
            self.our_global_pending += 1;
        }
        let name = req.name();
        self.queue(1 + string_len(name.as_bytes()) + 1 + 64, |out| {
            out.put_u8(msg::GLOBAL_REQUEST);
            put_string(out, name.as_bytes());
            put_bool(out, want_reply);
            req.encode_data(out);
        });
    }

    /// Answers the oldest of the peer's global requests that wanted a reply and is not
    /// answered yet; `data` is the request-specific part of REQUEST_SUCCESS (the bound port,
    /// as a `uint32`, for a `tcpip-forward` with port 0), not sent with a failure. Replies
    /// go out in request order. Ignored if none is waiting.
    pub fn global_reply(&mut self, success: bool, data: Bytes) {
        if let Some(slot) = self.peer_global_pending.iter_mut().find(|s| s.is_none()) {
            *slot = Some((success, data));
        }
        while let Some(Some(_)) = self.peer_global_pending.front() {
            let Some(Some((success, data))) = self.peer_global_pending.pop_front() else {
                break;
            };
            self.queue(1 + data.len(), |out| {
                if success {
                    out.put_u8(msg::REQUEST_SUCCESS);
                    out.put_slice(&data);
                } else {
                    out.put_u8(msg::REQUEST_FAILURE);
                }
            });
        }
    }

    // ---- internals ------------------------------------------------------------------------

    fn chan(&self, id: ChannelId) -> Option<&Channel> {
        self.channels.get(id.0 as usize).and_then(Option::as_ref)
    }

    fn chan_mut(&mut self, id: ChannelId) -> Option<&mut Channel> {
        self.channels.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    /// Takes the lowest free id.
    fn alloc(&mut self, ch: Channel) -> ChannelId {
        self.live += 1;
        match self.channels.iter().position(Option::is_none) {
            Some(i) => {
                self.channels[i] = Some(ch);
                ChannelId(i as u32)
            }
            None => {
                self.channels.push(Some(ch));
                ChannelId((self.channels.len() - 1) as u32)
            }
        }
    }

    fn free(&mut self, id: ChannelId) {
        if let Some(slot @ Some(_)) = self.channels.get_mut(id.0 as usize) {
            *slot = None;
            self.live -= 1;
            while let Some(None) = self.channels.last() {
                self.channels.pop();
            }
        }
    }

    /// Makes room for `n` more bytes in the outgoing buffer, growing it by at least a chunk
    /// (the buffer's old allocation is reclaimed when every payload split off it is gone).
    fn reserve(&mut self, n: usize) {
        if self.out.capacity() - self.out.len() < n {
            // Channel data gets a chunk that holds a few of its payloads; control messages
            // (and a session that only ever sends those) a small one.
            let chunk = if n > SMALL_CHUNK { OUT_CHUNK } else { SMALL_CHUNK };
            self.out.reserve(n.max(chunk));
        }
    }

    /// Writes one payload into the outgoing buffer and queues it as a slice of that buffer.
    fn queue(&mut self, size_hint: usize, write: impl FnOnce(&mut BytesMut)) {
        self.reserve(size_hint);
        write(&mut self.out);
        let payload = self.out.split().freeze();
        self.transmit_bytes += payload.len();
        self.transmit.push_back(Outgoing::whole(payload));
    }
}

/// CHANNEL_DATA's (or with `code`, CHANNEL_EXTENDED_DATA's) header for `n` bytes to the
/// peer's channel `peer_id`, up to the data string's length: the bytes and how many are used.
fn data_header(peer_id: u32, code: Option<u32>, n: usize) -> ([u8; Outgoing::MAX_HEAD], usize) {
    let mut head = [0u8; Outgoing::MAX_HEAD];
    let mut w = &mut head[..];
    match code {
        None => w.put_u8(msg::CHANNEL_DATA),
        Some(_) => w.put_u8(msg::CHANNEL_EXTENDED_DATA),
    }
    w.put_u32(peer_id);
    if let Some(code) = code {
        w.put_u32(code);
    }
    w.put_u32(n as u32);
    let used = Outgoing::MAX_HEAD - w.len();
    (head, used)
}
