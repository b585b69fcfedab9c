//! Each client channel joined to its target channel, and the bytes on their way between
//! them.
//!
//! Bytes a session delivers (`Data`, a zero-copy slice of the decrypted packet; copied when
//! the connection carries several channels, see [`Relay::on_data`]) wait in the pair's flow
//! towards the other hop until that session takes them (`send_data` takes what the
//! receiver's window allows); only then are they consumed on the sending side, which
//! credits the sender's window. So what a channel holds is bounded by the window the proxy
//! granted its sender, a stopped reader stops only its own channel's writer, and nothing
//! waits on anything else. Recording takes each chunk before any of it is sent on, and the
//! chunk is sent only once the log's file holds it: every byte that reaches the other side
//! is in the log, even if the daemon is killed the next instant.

use std::collections::{HashMap, VecDeque};

use bytes::{Buf, Bytes, BytesMut};
use portcullis_ssh::connection::{ChannelId, OpenFailure};

use super::{Hop, Relay};
use crate::recording::{
    format::{PtyInfo, CODE_DATA, CODE_EXTENDED, SOURCE_CLIENT, SOURCE_TARGET},
    writer::{Recorder, TryRecord},
};

/// Data or extended data (with its code), as received.
pub(super) type Item = (Option<u32>, Bytes);

/// Chunks up to this size are copied together (one item, one allocation) instead of kept
/// as slices of their packets: a peer sending its window in tiny packets must not turn
/// 2 MiB of window into millions of queue entries, each pinning a receive buffer.
const SMALL: usize = 2048;
/// The most one coalesced item holds.
const TAIL_MAX: usize = 64 * 1024;
/// At most this many receive buffers are kept alive by one flow's queued slices; past it,
/// received bytes are copied. A slice keeps its whole buffer (up to about 512 KiB: a read's
/// room and the packet it began with), so a peer that pads each small data packet with a
/// buffer's worth of other messages (SSH_MSG_IGNORE) would otherwise make a 2 MiB window
/// hold hundreds of MiB. A stream's queue spans about 8 buffers (its window over 256 KiB
/// reads), so honest streams keep their zero-copy path.
pub(super) const MAX_BUFFERS: usize = 8;
/// Two slices this close in memory (the second after the first) are taken to share a
/// buffer: what lies between them in one buffer is a packet's framing and whatever other
/// messages came with it.
const SAME_BUFFER_GAP: usize = 64 * 1024;

/// The bytes on their way to one hop, and what follows them.
#[derive(Default)]
pub(super) struct Flow {
    /// What is on its way, in order; added to by [`push`](Self::push) only.
    pub queue: VecDeque<Item>,
    /// Small chunks being coalesced, after `queue`.
    tail: Option<(Option<u32>, BytesMut)>,
    /// Per item of `queue`: what of a receive buffer it keeps alive (see [`MAX_BUFFERS`]).
    holds: VecDeque<Hold>,
    /// Receive buffers kept alive by the queue: its [`Hold::First`] items.
    buffers: usize,
    /// Where the last queued slice ends, while its buffer is counted.
    last_end: Option<usize>,
    /// The positions in the recording ([`Recorder::try_record`]) of the first items of
    /// `queue`, which the recording has (the head's parts may be sent already). An item is
    /// passed on once the recording's file holds its position.
    pub recorded: VecDeque<u64>,
    /// The sender sent EOF: pass it on once `queue` is empty.
    pub eof: bool,
    pub eof_sent: bool,
    /// The sender's channel is closed: close this side once `queue` is empty.
    pub close: bool,
    pub close_sent: bool,
    /// The receiver closed its side: bytes for it are dropped (its window given back).
    pub discard: bool,
}

impl Flow {
    /// Adds received bytes, after what is queued. `slice`: `data` is part of a receive
    /// buffer (not a copy of its own).
    pub fn push(&mut self, code: Option<u32>, data: Bytes, slice: bool) {
        if data.len() > SMALL {
            self.seal();
            let (data, hold) = if slice { self.keep(data) } else { (data, Hold::Own) };
            self.queue.push_back((code, data));
            self.holds.push_back(hold);
            return;
        }
        match &mut self.tail {
            Some((c, buf)) if *c == code && buf.len() + data.len() <= TAIL_MAX => {
                buf.extend_from_slice(&data)
            }
            _ => {
                self.seal();
                let mut buf = BytesMut::with_capacity(data.len().max(SMALL));
                buf.extend_from_slice(&data);
                self.tail = Some((code, buf));
            }
        }
    }

    /// A slice as it is, with what it holds, or a copy when the queue keeps
    /// [`MAX_BUFFERS`] buffers alive already.
    fn keep(&mut self, data: Bytes) -> (Bytes, Hold) {
        let start = data.as_ptr() as usize;
        let end = start + data.len();
        let same = self
            .last_end
            .is_some_and(|last| start >= last && start - last <= SAME_BUFFER_GAP);
        if same {
            self.last_end = Some(end);
            return (data, Hold::Same);
        }
        if self.buffers >= MAX_BUFFERS {
            return (Bytes::copy_from_slice(&data), Hold::Own);
        }
        self.buffers += 1;
        self.last_end = Some(end);
        (data, Hold::First)
    }

    /// Moves the coalesced chunks into the queue.
    fn seal(&mut self) {
        if let Some((code, buf)) = self.tail.take() {
            self.queue.push_back((code, buf.freeze()));
            self.holds.push_back(Hold::Own);
        }
    }

    /// Takes the head item off the queue (it was sent).
    pub fn pop_front(&mut self) {
        debug_assert_eq!(self.holds.len(), self.queue.len(), "items are queued by push");
        self.queue.pop_front();
        self.recorded.pop_front();
        if self.holds.pop_front() == Some(Hold::First) {
            // The buffer's next slice, if queued, keeps it alive now (a buffer's slices
            // follow its first one, with copies and chunks of their own in between).
            match self.holds.iter_mut().find(|h| **h != Hold::Own) {
                Some(h) if *h == Hold::Same => *h = Hold::First,
                _ => self.buffers -= 1,
            }
        }
        if self.buffers == 0 {
            // The last slice's buffer is no longer counted: a slice next to it starts anew.
            self.last_end = None;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.tail.is_none()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.tail = None;
        self.recorded.clear();
        self.holds.clear();
        self.buffers = 0;
        self.last_end = None;
    }
}

/// What a queued item keeps alive of the receive buffer it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Nothing: a copy, or coalesced chunks.
    Own,
    /// Its buffer, as the first queued slice of it.
    First,
    /// Its buffer, which an earlier queued slice holds already.
    Same,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A session channel: shell, exec or subsystem, recorded.
    Session,
    /// A forwarded connection, agent or X11 channel: bytes joined, not recorded.
    Tunnel,
}

pub(super) struct Pair {
    /// The channel on each hop ([front, up]); `None` once that channel is gone (or for a
    /// refused session, which has no target side).
    pub ids: [Option<ChannelId>; 2],
    /// The hop whose confirmation of our open is awaited (the other hop opened).
    pub awaiting: Option<Hop>,
    pub kind: Kind,
    /// Audited when the open is confirmed (`<kind>`) or fails (`<kind>_failed`).
    pub audit_open: Option<(&'static str, Option<String>)>,
    /// `toward[h]`: bytes on their way to hop `h`.
    pub toward: [Flow; 2],
    /// Client bytes sent before the shell, command or subsystem started: held (their window
    /// not credited) until then, so that the recording and the SFTP audit see them first.
    pub held: Flow,
    /// The client sent EOF before the session started: passed on after the held bytes.
    pub held_eof: bool,
    pub started: bool,
    /// A refused session (or one that may not run unrecorded): it only carries the
    /// explanation, nothing reaches the target.
    pub refused: bool,
    pub rec: Option<Recorder>,
    /// A wake-up is registered for when `rec` has room, or its file has grown.
    pub rec_waiting: bool,
    /// The target's exit status or signal went to the recording (once: a target sending
    /// more must not make the writer's queue overflow into tasks).
    pub exit_recorded: bool,
    pub sftp: Option<crate::proxy::sftp::Watcher>,
    /// The first client bytes of a started session without a watcher: if they are an SFTP
    /// INIT, the session runs an SFTP server (`ForceCommand internal-sftp`, `sftp -s
    /// /path/sftp-server` as an exec) and gets a watcher after all.
    pub sniff: Option<Vec<u8>>,
    pub pty: Option<PtyInfo>,
    /// `env` requests before the start (`NAME=value`), for its audit event and log header
    /// (bounded: see `requests::MAX_ENV`).
    pub env: Vec<String>,
    /// Requests with a reply wanted received from each hop (the engine's `reply_to` seq).
    pub seq: [u64; 2],
    /// `routes[h]`: what to do with each answer hop `h` owes us, in order.
    pub routes: [VecDeque<super::requests::Route>; 2],
}

impl Pair {
    pub fn new(kind: Kind, ids: [Option<ChannelId>; 2], awaiting: Option<Hop>) -> Self {
        Pair {
            ids,
            awaiting,
            kind,
            audit_open: None,
            toward: Default::default(),
            held: Flow::default(),
            held_eof: false,
            started: false,
            refused: false,
            rec: None,
            rec_waiting: false,
            exit_recorded: false,
            sftp: None,
            sniff: None,
            pty: None,
            env: Vec::new(),
            seq: [0; 2],
            routes: Default::default(),
        }
    }
}

/// The pairs of one connection, found by either hop's channel id.
#[derive(Default)]
pub(super) struct Pairs {
    slab: Vec<Option<Pair>>,
    free: Vec<usize>,
    by: [HashMap<ChannelId, usize>; 2],
    dirty: VecDeque<usize>,
    /// Indexed like `slab`: already in `dirty`.
    queued: Vec<bool>,
}

impl Pairs {
    pub fn insert(&mut self, p: Pair) -> usize {
        let ids = p.ids;
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(p);
                i
            }
            None => {
                self.slab.push(Some(p));
                self.queued.push(false);
                self.slab.len() - 1
            }
        };
        for (h, id) in ids.iter().enumerate() {
            if let Some(id) = id {
                self.by[h].insert(*id, i);
            }
        }
        i
    }

    pub fn find(&self, h: Hop, id: ChannelId) -> Option<usize> {
        self.by[h.i()].get(&id).copied()
    }

    pub fn get(&mut self, i: usize) -> Option<&mut Pair> {
        self.slab.get_mut(i).and_then(Option::as_mut)
    }

    /// The pair's channel on `h` is gone (its id is free for reuse); the pair goes with its
    /// last channel.
    pub fn forget(&mut self, i: usize, h: Hop) {
        let Some(p) = self.get(i) else { return };
        let id = p.ids[h.i()].take();
        let empty = p.ids.iter().all(Option::is_none);
        if let Some(id) = id {
            self.by[h.i()].remove(&id);
        }
        if empty {
            self.slab[i] = None;
            self.free.push(i);
        }
    }

    pub fn mark(&mut self, i: usize) {
        if let Some(q) = self.queued.get_mut(i) {
            if !*q {
                *q = true;
                self.dirty.push_back(i);
            }
        }
    }

    pub fn mark_all(&mut self) {
        for i in 0..self.slab.len() {
            if self.slab[i].is_some() {
                self.mark(i);
            }
        }
    }

    pub fn recorder_ready(&mut self, i: usize) {
        if let Some(p) = self.get(i) {
            p.rec_waiting = false;
        }
        self.mark(i);
    }

    fn take_dirty(&mut self) -> Option<usize> {
        let i = self.dirty.pop_front()?;
        self.queued[i] = false;
        Some(i)
    }

    pub fn is_empty(&self) -> bool {
        self.slab.len() == self.free.len()
    }

    /// Channel pairs open.
    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    pub fn indices(&self) -> Vec<usize> {
        (0..self.slab.len()).filter(|&i| self.slab[i].is_some()).collect()
    }
}

impl Relay {
    /// Data (or extended data) from hop `h` on its channel `id`.
    pub(super) fn on_data(&mut self, h: Hop, id: ChannelId, code: Option<u32>, data: Bytes) {
        let Some(i) = self.pairs.find(h, id) else {
            self.hops[h.i()].session.connection().consume(id, data.len());
            return;
        };
        let shared = self.pairs.len() > 1 && data.len() > SMALL;
        let Some(p) = self.pairs.get(i) else { return };
        let to = h.other();
        if p.refused || p.ids[to.i()].is_none() || p.toward[to.i()].discard {
            // Nowhere to go: dropped, and the window given back.
            self.hops[h.i()].session.connection().consume(id, data.len());
            return;
        }
        let unstarted = p.kind == Kind::Session && !p.started;
        if unstarted && h == Hop::Up {
            // sshd says nothing on a session before it is asked to start one, and the
            // recording (which starts with that request) could not have it: dropped.
            self.hops[h.i()].session.connection().consume(id, data.len());
            return;
        }
        // With several channels on the connection, the bytes are copied out of the receive
        // buffer: a slice keeps its whole buffer (up to a read's worth, shared with the other
        // channels' bytes), so a channel whose reader stopped beside a streaming one would
        // hold several times its window. One channel alone keeps the zero-copy slices (its
        // buffers hold its own bytes; how many a flow keeps alive is bounded by `Flow::push`).
        let (data, slice) = match shared {
            true => (Bytes::copy_from_slice(&data), false),
            false => (data, true),
        };
        if unstarted {
            p.held.push(code, data, slice);
            return;
        }
        p.toward[to.i()].push(code, data, slice);
        self.pairs.mark(i);
    }

    pub(super) fn on_eof(&mut self, h: Hop, id: ChannelId) {
        let Some(i) = self.pairs.find(h, id) else { return };
        if let Some(p) = self.pairs.get(i) {
            if h == Hop::Front && p.kind == Kind::Session && !p.started {
                // After the held bytes, once the session starts.
                p.held_eof = true;
                return;
            }
            p.toward[h.other().i()].eof = true;
        }
        self.pairs.mark(i);
    }

    /// The client closed channel `id` first (the front hop does not answer a CLOSE at
    /// once): the target's side is closed, and the client's is closed when the target's
    /// is — after the target's last words, such as the exit status, were passed on.
    pub(super) fn on_peer_closed(&mut self, h: Hop, id: ChannelId) {
        let Some(i) = self.pairs.find(h, id) else {
            self.hops[h.i()].session.connection().close(id);
            return;
        };
        let Some(p) = self.pairs.get(i) else { return };
        // What the peer sent before its CLOSE still goes through, then the close: sshd too
        // drains a closed channel's input to the command (a client may send its input, EOF
        // and CLOSE at once), and the recording has those bytes already.
        p.toward[h.other().i()].close = true;
        p.held.clear();
        let to_h = &mut p.toward[h.i()];
        to_h.discard = true;
        to_h.clear();
        if p.ids[h.other().i()].is_none() || p.refused {
            // No twin to wait for.
            to_h.close = true;
        }
        self.pairs.mark(i);
    }

    /// Both sides of hop `h` closed the channel (the engine answered the peer's CLOSE): its
    /// twin is closed once the bytes on their way to it are through.
    pub(super) fn on_closed(&mut self, h: Hop, id: ChannelId) {
        let Some(i) = self.pairs.find(h, id) else { return };
        if let Some(p) = self.pairs.get(i) {
            p.toward[h.other().i()].close = true;
            p.toward[h.i()].clear();
            p.held.clear();
        }
        self.pairs.forget(i, h);
        self.pairs.mark(i);
    }

    /// Hop `h` is gone: its channels with it; their twins drain and close.
    pub(super) fn hop_gone(&mut self, h: Hop) {
        for i in self.pairs.indices() {
            let Some(p) = self.pairs.get(i) else { continue };
            if h == Hop::Up && p.kind == Kind::Session && p.ids[h.i()].is_some() && !p.refused {
                // The target's side ended without closing: say so rather than end silently.
                let lost = Bytes::from_static(b"\r\nportcullis: the connection to the target was lost\r\n");
                p.toward[Hop::Front.i()].push(Some(1), lost, false);
            }
            p.toward[h.i()].clear();
            p.toward[h.other().i()].close = true;
            p.held.clear();
            let awaited = p.awaiting == Some(h);
            let twin = p.ids[h.other().i()];
            if awaited {
                // The open we made on `h` will never be answered: refuse the twin's.
                if let Some(t) = twin {
                    self.hops[h.other().i()].session.connection().reject_open(
                        t,
                        OpenFailure::ConnectFailed.code(),
                        "the other side is gone",
                    );
                    self.pairs.forget(i, h.other());
                }
            }
            self.pairs.forget(i, h);
            self.pairs.mark(i);
        }
    }

    pub(super) fn flush_pairs(&mut self) {
        while let Some(i) = self.pairs.take_dirty() {
            self.flush_flow(i, Hop::Up);
            self.flush_flow(i, Hop::Front);
        }
    }

    /// Moves what pair `i` has on its way to hop `d` into `d`'s session, as far as the
    /// receiver's window, `d`'s unsent output and the recording allow.
    fn flush_flow(&mut self, i: usize, d: Hop) {
        let s = d.other();
        let fail_closed = self.conn.ctx.recording.as_ref().is_some_and(|r| r.fail_closed);
        let Relay {
            pairs,
            hops,
            totals,
            recorder_waits,
            conn,
            ..
        } = self;
        let Some(p) = pairs.get(i) else { return };
        let Some(dst) = p.ids[d.i()] else {
            p.toward[d.i()].clear();
            return;
        };
        if p.awaiting.is_some() {
            return;
        }
        let src = p.ids[s.i()];
        let flow = &mut p.toward[d.i()];
        let mut abort = false;
        let source = if d == Hop::Up {
            SOURCE_CLIENT
        } else {
            SOURCE_TARGET
        };
        loop {
            if hops[d.i()].backlog() >= super::HIGH_WATER {
                hops[d.i()].blocked = true;
                break;
            }
            if flow.queue.is_empty() {
                flow.seal();
            }
            let rec = p.rec.as_ref().filter(|r| !r.failed());
            // The recording takes (a reference to) everything queued, ahead of sending: the I/O
            // pool seals and writes it block by block while the head waits to be on disk.
            let mut refused = false;
            if let Some(rec) = rec {
                while flow.recorded.len() < flow.queue.len() {
                    let (code, data) = &flow.queue[flow.recorded.len()];
                    let kind = if code.is_some() { CODE_EXTENDED } else { CODE_DATA };
                    match rec.try_record(source, kind, data) {
                        Ok(position) => flow.recorded.push_back(position),
                        Err(TryRecord::Full) => {
                            if !p.rec_waiting {
                                p.rec_waiting = true;
                                let ready = rec.ready();
                                recorder_waits.push(Box::pin(async move {
                                    ready.await;
                                    i
                                }));
                            }
                            break;
                        }
                        Err(TryRecord::Stopped) => {
                            refused = true;
                            break;
                        }
                    }
                }
            }
            if flow.queue.is_empty() {
                break;
            }
            if let Some(rec) = rec {
                let on_disk = flow.recorded.front().is_some_and(|&at| rec.written() >= at);
                if !on_disk {
                    // `refused`: the writer stopped taking records, which it says before its
                    // progress does: no wake-up would come for what it did not take.
                    if rec.stopped() || (refused && flow.recorded.is_empty()) {
                        // The writer failed: what it had not written is not in the log.
                        rec.mark_failed();
                        tracing::error!(session = %conn.session, recording = %rec.path.display(), "recording failed");
                        // A stopping daemon closed the log: nothing more passes, fail-open
                        // or not (its audit says the log is whole, so it must be).
                        if fail_closed || crate::recording::writer::stopping() {
                            abort = true;
                            break;
                        }
                        continue;
                    }
                    if let Some(&at) = flow.recorded.front() {
                        if !p.rec_waiting {
                            p.rec_waiting = true;
                            let written = rec.written_past(at);
                            recorder_waits.push(Box::pin(async move {
                                written.await;
                                i
                            }));
                        }
                    }
                    break;
                }
            }
            let Some((code, data)) = flow.queue.front_mut() else {
                break;
            };
            let c = hops[d.i()].session.connection();
            // The bytes are passed on as they arrived (no copy until the packet is framed).
            let n = c.send_data_bytes(dst, *code, data);
            if n == 0 {
                break;
            }
            if let Some(src) = src {
                hops[s.i()].session.connection().consume(src, n);
            }
            if d == Hop::Up && code.is_none() {
                if let Some(w) = watch_sftp(p.sftp.as_mut(), &mut p.sniff, &data[..n], conn) {
                    p.sftp = Some(w);
                }
            }
            totals.to[d.i()] += n as u64;
            if n == data.len() {
                flow.pop_front();
            } else {
                data.advance(n);
            }
        }
        if abort {
            // The session may not go on unrecorded: both sides closed, nothing more passes.
            for h in [Hop::Front, Hop::Up] {
                p.toward[h.i()].clear();
                if let Some(id) = p.ids[h.i()] {
                    hops[h.i()].session.connection().close(id);
                }
            }
            return;
        }
        if flow.is_empty() {
            let c = hops[d.i()].session.connection();
            if flow.eof && !flow.eof_sent {
                flow.eof_sent = true;
                c.eof(dst);
            }
            if flow.close && !flow.close_sent {
                flow.close_sent = true;
                c.close(dst);
            }
        }
    }
}

/// An SFTP client's first packet begins `uint32 length, byte SSH_FXP_INIT (1), uint32
/// version`: these 9 bytes are what the sniffer looks at. sftp-server takes any version and
/// extension pairs after it (within `length`), so only the type and a length that sftp-server
/// would read (5 to 256 KiB) are required; OpenSSH's client sends `0 0 0 5 1 0 0 0 3`.
const SFTP_INIT_HEAD: usize = 9;
const SFTP_MAX_PACKET: u32 = 256 * 1024;

/// Whether the bytes seen so far can begin an SFTP INIT.
fn may_be_init(head: &[u8]) -> bool {
    if head.first().is_some_and(|&b| b != 0) {
        return false;
    }
    if let Some(len) = head.get(..4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if !(5..=SFTP_MAX_PACKET).contains(&len) {
            return false;
        }
    }
    head.get(4).is_none_or(|&t| t == 1)
}

/// Looks at the next client bytes for an SFTP INIT: `Some((taken, head))` once recognised
/// (the first `taken` bytes of `sent` completed the INIT's first 9 bytes, `head`; the
/// sniffer is done), `None` while undecided or once ruled out (then `sniff` is `None`).
fn sniff_step(sniff: &mut Option<Vec<u8>>, sent: &[u8]) -> Option<(usize, Vec<u8>)> {
    let buf = sniff.as_mut()?;
    let take = (SFTP_INIT_HEAD - buf.len()).min(sent.len());
    buf.extend_from_slice(&sent[..take]);
    if !may_be_init(buf) {
        *sniff = None;
        return None;
    }
    if buf.len() < SFTP_INIT_HEAD {
        return None;
    }
    sniff.take().map(|head| (take, head))
}

/// Feeds `sent` (client bytes that reached the target) to the session's SFTP watcher, or
/// to the sniffer that decides whether the session speaks SFTP; returns a watcher the
/// sniffer just recognised (fed what it saw).
fn watch_sftp(
    watcher: Option<&mut crate::proxy::sftp::Watcher>,
    sniff: &mut Option<Vec<u8>>,
    sent: &[u8],
    conn: &crate::proxy::Conn,
) -> Option<crate::proxy::sftp::Watcher> {
    if let Some(w) = watcher {
        w.feed(sent);
        return None;
    }
    let (take, head) = sniff_step(sniff, sent)?;
    let mut w = crate::proxy::sftp::Watcher::new(conn.ctx.audit.clone(), conn.event("sftp"));
    w.feed(&head);
    w.feed(&sent[take..]);
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_chunks_are_coalesced_and_large_ones_kept_whole_in_order() {
        let mut f = Flow::default();
        for _ in 0..10_000 {
            f.push(None, Bytes::from_static(b"x"), false);
        }
        f.push(Some(1), Bytes::from_static(b"err"), false);
        f.push(None, Bytes::from(vec![7u8; SMALL + 1]), false);
        f.push(None, Bytes::from_static(b"y"), false);
        f.seal();
        let items: Vec<(Option<u32>, usize)> = f.queue.iter().map(|(c, b)| (*c, b.len())).collect();
        assert_eq!(
            items,
            vec![(None, 10_000), (Some(1), 3), (None, SMALL + 1), (None, 1)],
            "tiny packets cost one item, kinds and order are kept"
        );
        // A coalesced item never grows past TAIL_MAX.
        let mut f = Flow::default();
        for _ in 0..(3 * TAIL_MAX / SMALL) {
            f.push(None, Bytes::from(vec![0u8; SMALL]), false);
        }
        f.seal();
        assert!(f.queue.iter().all(|(_, b)| b.len() <= TAIL_MAX));
        assert_eq!(f.queue.iter().map(|(_, b)| b.len()).sum::<usize>(), 3 * TAIL_MAX);
    }

    /// Slices of `n` receive buffers of 256 KiB, `per` from each, each slice padded by
    /// 60 KiB of other messages (as far apart as a buffer's packets may be).
    fn buffers(n: usize, per: usize) -> Vec<Vec<Bytes>> {
        let step = SMALL + 1 + 60 * 1024;
        (0..n)
            .map(|_| {
                let buf = Bytes::from(vec![0u8; 256 * 1024]);
                (0..per)
                    .map(|k| buf.slice(k * step..k * step + SMALL + 1))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn queued_slices_keep_at_most_max_buffers_alive_and_later_ones_are_copied() {
        let mut f = Flow::default();
        let bufs = buffers(MAX_BUFFERS + 3, 4);
        let mut copied = 0;
        for b in &bufs {
            for s in b {
                f.push(None, s.clone(), true);
                if f.queue.back().unwrap().1.as_ptr() != s.as_ptr() {
                    copied += 1;
                }
            }
        }
        assert_eq!(f.buffers, MAX_BUFFERS);
        assert_eq!(
            copied,
            3 * 4,
            "the slices of the buffers past the bound are copied"
        );
        // Sending the first buffer's first slice: its other slices keep it alive.
        f.pop_front();
        assert_eq!(f.buffers, MAX_BUFFERS);
        for _ in 1..4 {
            f.pop_front();
        }
        assert_eq!(f.buffers, MAX_BUFFERS - 1, "the first buffer is no longer held");
        // Room again: the next buffer's slices are kept as they are.
        let next = buffers(1, 2);
        for s in &next[0] {
            f.push(None, s.clone(), true);
            assert_eq!(f.queue.back().unwrap().1.as_ptr(), s.as_ptr());
        }
        assert_eq!(f.buffers, MAX_BUFFERS);
        while !f.queue.is_empty() {
            f.pop_front();
        }
        assert_eq!((f.buffers, f.last_end), (0, None));
        // A copy of its own, or a slice of a buffer of its own, is no receive buffer.
        f.push(None, Bytes::from(vec![1u8; SMALL + 1]), false);
        assert_eq!(f.buffers, 0);
    }

    #[test]
    fn the_sftp_sniffer_recognises_an_init_split_anywhere() {
        // OpenSSH's client (version 3), version 4, and an INIT with an extension pair.
        let mut ext = vec![0, 0, 0, 17, 1, 0, 0, 0, 3, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 2];
        ext.extend_from_slice(b"cd");
        for init in [
            vec![0, 0, 0, 5, 1, 0, 0, 0, 3],
            vec![0, 0, 0, 5, 1, 0, 0, 0, 4],
            ext,
        ] {
            for cut in 0..=init.len() {
                let mut sniff = Some(Vec::new());
                let mut got = None;
                for part in [&init[..cut], &init[cut..]] {
                    if got.is_none() {
                        got = sniff_step(&mut sniff, part);
                    }
                }
                // The part that completes the first 9 bytes says how much of it was taken.
                let completing = if cut >= SFTP_INIT_HEAD {
                    SFTP_INIT_HEAD
                } else {
                    SFTP_INIT_HEAD - cut
                };
                assert_eq!(
                    got,
                    Some((completing, init[..SFTP_INIT_HEAD].to_vec())),
                    "cut at {cut}"
                );
                assert!(sniff.is_none());
            }
        }
        for not in [
            &b"ls -la\n"[..],
            &[0, 0, 0, 4, 1, 0, 0, 0, 3],
            &[0, 0, 0, 5, 2, 0, 0, 0, 3],
            &[0, 9, 0, 0, 1],
        ] {
            let mut sniff = Some(Vec::new());
            assert_eq!(sniff_step(&mut sniff, not), None, "{not:?}");
            assert!(sniff.is_none(), "not SFTP ({not:?}): no more looking");
        }
    }
}
