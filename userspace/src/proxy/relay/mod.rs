//! Stage 4: the client's SSH session and the target's, driven by one task.
//!
//! Both sessions are the engine's sans-IO state machines; this task owns the two sockets,
//! feeds each session what its socket delivers, writes what each session has to send (all
//! of it at once: writes are batched), and moves everything between them:
//! - [`pairs`]: each client channel joined to its target channel; the bytes on their way
//!   in each direction, which are credited to the sender's window only once the receiver
//!   (and the recording) took them; nothing else holds bytes, so a channel's memory is
//!   bounded by its window and one channel never waits on another.
//! - [`opens`]: channels opened by either side, and the forwarding the policy grants.
//! - [`requests`]: channel and global requests passed through, answers routed back.
//! - [`hooks`]: what the gateway adds to a session channel — recording, the SFTP audit,
//!   the explanation of a refusal.
//!
//! Memory per connection: each channel's bytes in flight are at most the window the proxy
//! grants its sender ([`WINDOW`]). On a connection with one channel they are slices of the
//! receive buffers they arrived in (a buffer holds a read's room, [`READ_CHUNK`], and what
//! is left of a packet from the read before: about 512 KiB at most; a flow's queue keeps at
//! most `pairs::MAX_BUFFERS` of them alive, copying past that); with
//! several channels, and for chunks under 2 KiB, they are copied, so that no channel's
//! bytes keep buffers shared with others alive (`pairs.rs`). Each session's unsent output stays under [`HIGH_WATER`]
//! plus one packet for data and [`READ_PAUSE`] overall (the socket is not read while its
//! peer does not read ours); at most [`MAX_CHANNELS`] channels per hop.

mod hooks;
mod opens;
mod pairs;
mod requests;

use std::{cell::RefCell, pin::Pin, time::Duration};

use futures::{stream::FuturesUnordered, Future, StreamExt};
use portcullis_ssh::{
    auth::{ClientAuthEvent, ServerAuthConfig, ServerAuthEvent},
    msg::disconnect,
    session::{Session, SessionError, SessionEvent},
    transport::TransportEvent,
};
use tokio::{net::TcpStream, time::Instant};

use super::{
    authorize::{self, Decision, Forwarding},
    dial_slots::Slot,
    grants::Grants,
    upstream::Dialled,
    Conn,
};
use crate::admission::Permit;

/// The receive window the proxy grants each channel (the engine's default, OpenSSH's).
pub const WINDOW: u32 = 2 * 1024 * 1024;
/// Channels per hop (the engine's default).
pub const MAX_CHANNELS: usize = 256;
/// Channel data is handed to a session only while its unsent output is below this.
pub const HIGH_WATER: usize = 512 * 1024;
/// A socket is not read while either session's unsent output is above this: a peer that
/// sends requests but does not read the answers (or whose counterpart does not) waits.
pub const READ_PAUSE: usize = 4 * 1024 * 1024;
/// How long a client may take from connecting to being authenticated.
pub const AUTH: Duration = Duration::from_secs(60);
/// How long a refused client is let stay to read why on a channel; then (an `ssh -N`, which
/// opens none, say) it is told in the DISCONNECT, which every client prints.
pub const REFUSED_LINGER: Duration = Duration::from_secs(10);
/// Once one side is gone, how long the other's channels may take to drain.
pub const DRAIN: Duration = Duration::from_secs(30);
/// How long a key exchange after the first may take (while it runs, data to that side is
/// held by its transport: a peer must not stall one to make us buffer).
pub const KEX: Duration = Duration::from_secs(60);
/// Refusal and failure events (`channel.open`, `second_start_request`) audited per
/// connection; the rest are counted for `session.end` (a client opening refused channels in
/// a loop must not flood the trail). What the gateway let run is always audited.
pub const CHANNEL_EVENTS: u32 = 256;
/// One socket read.
const READ_CHUNK: usize = 256 * 1024;
/// A read this large marks a connection that streams: its next read goes straight into
/// its session's buffer even if that takes a fresh one (see `Session::recv_space`).
const STREAMING: usize = 64 * 1024;

thread_local! {
    /// The read buffer, shared by every connection on a runtime thread: an idle connection
    /// holds none.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// The two hops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// The client's session (we are its server).
    Front = 0,
    /// The target's session (we are its client).
    Up = 1,
}

impl Hop {
    fn other(self) -> Hop {
        match self {
            Hop::Front => Hop::Up,
            Hop::Up => Hop::Front,
        }
    }
    fn i(self) -> usize {
        self as usize
    }
}

struct HopIo {
    stream: TcpStream,
    session: Session,
    /// Nothing more will be read: EOF, a socket error, or the session ended.
    gone: bool,
    /// Writing failed: the peer is gone, its output is dropped.
    write_failed: bool,
    /// The relay stopped handing channel data to this session at `HIGH_WATER`.
    blocked: bool,
    /// The last read was large (see [`STREAMING`]).
    streaming: bool,
}

impl HopIo {
    fn backlog(&mut self) -> usize {
        self.session.backlog()
    }

    /// Gone and nothing left to write.
    fn finished(&self) -> bool {
        self.gone && (self.write_failed || self.session.output().is_empty())
    }
}

/// Bytes relayed, and the last exit status, for `session.end`.
#[derive(Default)]
pub struct Totals {
    /// Indexed by the hop the bytes went to: [to the client, to the target].
    pub to: [u64; 2],
    pub exit_status: Option<u32>,
}

type Wake = Pin<Box<dyn Future<Output = usize> + Send>>;

/// Resolves when an operator ends the session (never without a live entry).
async fn stopped(live: Option<&crate::live::Live>) -> crate::live::Termination {
    match live {
        Some(l) => l.stopped().await,
        None => std::future::pending().await,
    }
}

/// What one socket read gave.
enum Got {
    Nothing,
    Eof,
    Fed,
    Failed(SessionError),
}

impl Got {
    /// What a non-blocking socket read came to; `feed` hands the `n` bytes read to the
    /// session.
    fn of(read: std::io::Result<usize>, feed: impl FnOnce(usize) -> Result<(), SessionError>) -> Self {
        match read {
            Ok(0) => Got::Eof,
            Ok(n) => match feed(n) {
                Ok(()) => Got::Fed,
                Err(e) => Got::Failed(e),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Got::Nothing,
            Err(_) => Got::Eof,
        }
    }
}

/// Where the client stands with authentication.
enum AuthState {
    /// No attempt decided yet.
    Open,
    /// Allowed by policy; the target is being logged in to.
    LoggingIn {
        login: String,
        forwarding: Forwarding,
        start: Box<crate::audit::Event>,
        serial: u64,
    },
    /// Logged in upstream and accepted.
    Authorized { login: String },
    /// Refused; accepted only so that the client reads why on its first channel.
    Refused { why: String },
}

pub struct Relay {
    conn: Conn,
    hops: [HopIo; 2],
    pairs: pairs::Pairs,
    auth: AuthState,
    /// Until authenticated: the connection's place among those awaiting authentication
    /// and its slot among the target's connections being set up.
    permit: Option<Permit>,
    slot: Option<Slot>,
    tried_auth: bool,
    forwarding: Forwarding,
    grants: Grants,
    globals: requests::Globals,
    totals: Totals,
    /// Channels waiting for their recording's writer.
    recorder_waits: FuturesUnordered<Wake>,
    auth_deadline: Instant,
    auth_timed_out: bool,
    /// Set once a hop is gone: the rest drains until then.
    drain_deadline: Option<Instant>,
    /// When each hop's key exchange in progress started.
    kex_since: [Option<Instant>; 2],
    /// `channel.open` events audited, and suppressed past [`CHANNEL_EVENTS`].
    channel_events: std::cell::Cell<(u32, u64)>,
    /// Recordings started on this connection: the next one's number in its file name. Not
    /// the channel id, which the engine gives again once a channel is closed.
    recordings: u32,
    started: std::time::Instant,
    /// Once authenticated: the session's entry among the live ones (`portcullis sessions`).
    live: Option<crate::live::Entry>,
    /// An operator asked for the session to end (handled once).
    terminated: bool,
    /// Bytes already added to the process's metrics, per hop they went to.
    reported: [u64; 2],
    /// When the target was asked to take the certificate.
    login_sent: Option<std::time::Instant>,
}

/// TCP keepalives on a relayed socket: a peer that vanished without closing (a laptop
/// closed, a network gone) is noticed within about two minutes of silence, and its session
/// ends instead of holding both connections for the kernel's default two hours.
fn keepalive(s: &TcpStream) {
    use crate::steer::set_sockopt;
    let _ = set_sockopt(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    let _ = set_sockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 60);
    let _ = set_sockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 15);
    let _ = set_sockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4);
}

/// `[auth] methods` as the engine's server authentication settings.
pub fn server_auth_config(m: crate::config::AuthMethods) -> ServerAuthConfig {
    ServerAuthConfig {
        none: m.none,
        publickey: m.publickey,
        keyboard_interactive: m.keyboard_interactive,
        ..ServerAuthConfig::default()
    }
}

impl Relay {
    /// `fed`: an error from feeding the client's first bytes to its session.
    pub fn new(
        conn: Conn,
        stream: TcpStream,
        front: Session,
        up: Dialled,
        permit: Permit,
        slot: Slot,
        fed: Option<SessionError>,
    ) -> Self {
        let mut r = Relay {
            conn,
            hops: [
                HopIo {
                    stream,
                    session: front,
                    gone: false,
                    write_failed: false,
                    blocked: false,
                    streaming: false,
                },
                HopIo {
                    stream: up.stream,
                    session: up.session,
                    gone: false,
                    write_failed: false,
                    blocked: false,
                    streaming: false,
                },
            ],
            pairs: Default::default(),
            auth: AuthState::Open,
            permit: Some(permit),
            slot: Some(slot),
            tried_auth: false,
            forwarding: Forwarding::default(),
            grants: Grants::default(),
            globals: Default::default(),
            totals: Totals::default(),
            recorder_waits: FuturesUnordered::new(),
            auth_deadline: Instant::now() + AUTH,
            auth_timed_out: false,
            drain_deadline: None,
            kex_since: [None; 2],
            channel_events: Default::default(),
            recordings: 0,
            started: std::time::Instant::now(),
            live: None,
            terminated: false,
            reported: [0; 2],
            login_sent: None,
        };
        if let Some(e) = fed {
            r.session_failed(Hop::Front, &e);
        }
        r
    }

    pub async fn run(mut self) {
        for io in &self.hops {
            keepalive(&io.stream);
        }
        loop {
            self.process();
            self.report();
            if self.hops.iter().all(HopIo::finished) {
                break;
            }
            if self.drain_deadline.is_some_and(|d| d <= Instant::now()) {
                break;
            }
            let read = [self.can_read(Hop::Front), self.can_read(Hop::Up)];
            let write = [self.can_write(Hop::Front), self.can_write(Hop::Up)];
            let next = self.next_deadline();
            let [front, up] = &self.hops;
            let live = self.live.as_deref().filter(|_| !self.terminated);
            tokio::select! {
                r = front.stream.readable(), if read[0] => self.read(Hop::Front, r),
                r = up.stream.readable(), if read[1] => self.read(Hop::Up, r),
                r = front.stream.writable(), if write[0] => self.write(Hop::Front, r),
                r = up.stream.writable(), if write[1] => self.write(Hop::Up, r),
                Some(i) = self.recorder_waits.next(), if !self.recorder_waits.is_empty() => {
                    self.pairs.recorder_ready(i);
                }
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => self.on_timer(),
                t = stopped(live), if live.is_some() => self.terminate(t),
            }
        }
        self.report();
        self.end();
    }

    /// The session's figures for `portcullis sessions` and the metrics: a few relaxed
    /// stores and adds per wake-up.
    fn report(&mut self) {
        let to = self.totals.to;
        // The process-wide counters are shared by every connection's thread: touched only
        // when this one relayed something since.
        if to != self.reported {
            let m = crate::metrics::get();
            m.to_client_bytes
                .inc_by(to[Hop::Front.i()] - self.reported[Hop::Front.i()]);
            m.to_target_bytes
                .inc_by(to[Hop::Up.i()] - self.reported[Hop::Up.i()]);
            self.reported = to;
        }
        if let Some(live) = &self.live {
            live.update(to[Hop::Front.i()], to[Hop::Up.i()], self.pairs.len());
        }
    }

    /// An operator ended the session (`portcullis terminate`): audited with who asked, and
    /// both connections told why; what the channels hold still drains.
    fn terminate(&mut self, t: crate::live::Termination) {
        self.terminated = true;
        let mut e = self.conn.event("session.terminated");
        e.reason = Some(t.reason.clone());
        e.requested_by = Some(t.by);
        self.conn.ctx.audit.emit(&e);
        crate::metrics::get().sessions_terminated.inc();
        tracing::info!(session = %self.conn.session, "terminated by the operator");
        let text = format!("portcullis: {}", t.reason);
        for h in [Hop::Front, Hop::Up] {
            self.hops[h.i()]
                .session
                .disconnect(disconnect::BY_APPLICATION, &text);
            self.gone(h);
        }
    }

    /// The earliest of the authentication deadline (until authenticated), the drain
    /// deadline and the key exchanges' deadlines.
    fn next_deadline(&mut self) -> Option<Instant> {
        let now = Instant::now();
        for (h, since) in self.kex_since.iter_mut().enumerate() {
            match self.hops[h].session.is_kex_in_progress() {
                true => {
                    since.get_or_insert(now);
                }
                false => *since = None,
            }
        }
        let authenticating = !self.auth_timed_out && !matches!(self.auth, AuthState::Authorized { .. });
        [
            authenticating.then_some(self.auth_deadline),
            self.drain_deadline,
            self.kex_since[0].map(|t| t + KEX),
            self.kex_since[1].map(|t| t + KEX),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let authenticating = !self.auth_timed_out && !matches!(self.auth, AuthState::Authorized { .. });
        if authenticating && self.auth_deadline <= now {
            self.auth_timeout();
        }
        for h in [Hop::Front, Hop::Up] {
            // The first key exchange of the client's hop is bounded by the authentication
            // deadline already.
            let authenticated = matches!(self.auth, AuthState::Authorized { .. });
            if self.kex_since[h.i()].is_some_and(|t| t + KEX <= now) && (h == Hop::Up || authenticated) {
                tracing::info!(session = %self.conn.session, hop = ?h, "a key exchange took too long");
                self.hops[h.i()]
                    .session
                    .disconnect(disconnect::BY_APPLICATION, "key exchange timed out");
                self.kex_since[h.i()] = None;
                self.gone(h);
            }
        }
    }

    fn can_read(&mut self, h: Hop) -> bool {
        let io = &self.hops[h.i()];
        if io.gone || io.session.is_closed() {
            return false;
        }
        let backlog = self.hops[0].backlog().max(self.hops[1].backlog());
        backlog < READ_PAUSE
    }

    fn can_write(&self, h: Hop) -> bool {
        let io = &self.hops[h.i()];
        !io.write_failed && !io.session.output().is_empty()
    }

    fn read(&mut self, h: Hop, ready: std::io::Result<()>) {
        if ready.is_err() {
            self.gone(h);
            return;
        }
        let io = &mut self.hops[h.i()];
        // Straight into the session's receive buffer when it has the room or the connection
        // streams (its last read was large), else through this thread's buffer and a copy.
        let got = if let Some(buf) = io.session.recv_space(READ_CHUNK, io.streaming) {
            let read = io.stream.try_read_buf(buf);
            io.streaming = matches!(read, Ok(n) if n >= STREAMING);
            Got::of(read, |_| io.session.received())
        } else {
            READ_BUF.with(|b| {
                let mut b = b.borrow_mut();
                let read = io.stream.try_read(&mut b);
                io.streaming = matches!(read, Ok(n) if n >= STREAMING);
                Got::of(read, |n| io.session.recv(&b[..n]))
            })
        };
        self.on_read(h, got);
    }

    fn on_read(&mut self, h: Hop, got: Got) {
        match got {
            Got::Nothing | Got::Fed => {}
            Got::Eof => self.gone(h),
            Got::Failed(e) => self.session_failed(h, &e),
        }
    }

    fn write(&mut self, h: Hop, ready: std::io::Result<()>) {
        let io = &mut self.hops[h.i()];
        if ready.is_err() {
            io.write_failed = true;
            self.gone(h);
            return;
        }
        match io.stream.try_write(io.session.output()) {
            Ok(n) => {
                io.session.advance_output(n);
                if io.blocked && io.backlog() < HIGH_WATER / 2 {
                    io.blocked = false;
                    self.pairs.mark_all();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                io.write_failed = true;
                self.gone(h);
            }
        }
    }

    /// Handles what the sessions produced until neither has anything new.
    fn process(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.hops[0].session.poll_event() {
                progressed = true;
                self.on_event(Hop::Front, ev);
            }
            while let Some(ev) = self.hops[1].session.poll_event() {
                progressed = true;
                self.on_event(Hop::Up, ev);
            }
            self.flush_pairs();
            for h in [Hop::Front, Hop::Up] {
                if let Err(e) = self.hops[h.i()].session.flush() {
                    self.session_failed(h, &e);
                }
                // What the flush produced (a channel's `Closed`, say) is handled now, not at
                // the next wake-up.
                while let Some(ev) = self.hops[h.i()].session.poll_event() {
                    progressed = true;
                    self.on_event(h, ev);
                }
            }
            if !progressed {
                break;
            }
        }
        self.settle();
    }

    fn on_event(&mut self, h: Hop, ev: SessionEvent) {
        match ev {
            SessionEvent::Connection(ev) => self.on_connection(h, ev),
            SessionEvent::ServerAuth(ServerAuthEvent::Attempt { user, .. }) => self.attempt(user),
            SessionEvent::ClientAuth(ev) => self.upstream_auth(ev),
            SessionEvent::Transport(TransportEvent::Disconnected { .. }) => self.gone(h),
            _ => {}
        }
    }

    // ---- authentication ---------------------------------------------------------------

    /// The client's authentication attempt: the first one decides.
    fn attempt(&mut self, user: String) {
        self.tried_auth = true;
        match &self.auth {
            AuthState::Open => {}
            AuthState::Authorized { login } => {
                let same = *login == user;
                if let Some(a) = self.hops[0].session.server_auth() {
                    if same {
                        a.accept()
                    } else {
                        a.reject(false)
                    }
                }
                return;
            }
            // The engine holds one attempt at a time, so this does not happen; should it, the
            // client is not let in before the target has taken the certificate.
            AuthState::LoggingIn { .. } => {
                if let Some(a) = self.hops[0].session.server_auth() {
                    a.reject(false);
                }
                return;
            }
            AuthState::Refused { .. } => {
                self.accept_front();
                return;
            }
        }
        let deciding = std::time::Instant::now();
        let decision = authorize::decide(&self.conn, &user);
        crate::metrics::get()
            .authorization
            .observe(deciding.elapsed().as_secs_f64());
        match decision {
            Decision::Refuse { why } => self.refuse(why),
            Decision::Allow {
                credential,
                serial,
                forwarding,
                start,
            } => {
                self.login_sent = Some(std::time::Instant::now());
                if let Err(e) = self.hops[1].session.login(user.clone(), credential) {
                    self.session_failed(Hop::Up, &e);
                }
                self.auth = AuthState::LoggingIn {
                    login: user,
                    forwarding,
                    start: Box::new(start),
                    serial,
                };
            }
        }
    }

    /// The target's answer to the certificate login.
    fn upstream_auth(&mut self, ev: ClientAuthEvent) {
        let AuthState::LoggingIn { login, .. } = &self.auth else {
            return;
        };
        match ev {
            ClientAuthEvent::Success if self.hops[0].gone => {
                // The client left (or timed out) while the target was logging in. The minted
                // certificate did log in: audited, with why nothing followed.
                if let AuthState::LoggingIn { mut start, .. } =
                    std::mem::replace(&mut self.auth, AuthState::Open)
                {
                    start.reason = Some("client_gone_during_login".into());
                    self.conn.ctx.audit.emit(&start);
                }
                self.drop_upstream("the client is gone");
            }
            ClientAuthEvent::Success => {
                let AuthState::LoggingIn {
                    login,
                    forwarding,
                    start,
                    serial,
                } = std::mem::replace(&mut self.auth, AuthState::Open)
                else {
                    return;
                };
                self.conn.ctx.audit.emit(&start);
                let m = crate::metrics::get();
                if let Some(t) = self.login_sent.take() {
                    m.upstream_login.observe(t.elapsed().as_secs_f64());
                }
                m.handshake.observe(self.conn.accepted.elapsed().as_secs_f64());
                self.live = Some(crate::live::registry().register(crate::live::Identity {
                    session: self.conn.session.clone(),
                    identity: self.conn.identity.email.clone(),
                    source: self.conn.peer,
                    vnet: self.conn.vnet.clone(),
                    target: self.conn.target.clone(),
                    target_addr: self.conn.target_addr,
                    login: login.clone(),
                    started: crate::audit::now_rfc3339(),
                }));
                self.conn.base.login = Some(login.clone());
                self.conn.base.cert_serial = Some(serial);
                self.forwarding = forwarding;
                self.auth = AuthState::Authorized { login };
                self.permit = None;
                self.slot = None;
                self.accept_front();
            }
            ClientAuthEvent::Failure { methods, partial } => {
                crate::metrics::get().upstream_failed(crate::metrics::UpstreamFailure::login);
                let mut ev = self.conn.deny("upstream_auth_failed");
                ev.login = Some(login.clone());
                if let AuthState::LoggingIn { serial, .. } = &self.auth {
                    ev.cert_serial = Some(*serial);
                }
                ev.rule = Some(format!(
                    "the target refused the certificate (methods: {}, partial: {partial})",
                    methods.join(",")
                ));
                self.conn.ctx.audit.emit(&ev);
                let why = authorize::upstream_refused(&self.conn, login);
                self.refuse(why);
            }
            _ => {}
        }
    }

    /// A refused login (audited already): the target connection goes at once; the client is
    /// let in to read `why` on its first channel, for [`REFUSED_LINGER`] at most.
    fn refuse(&mut self, why: String) {
        self.auth = AuthState::Refused { why };
        self.drop_upstream("refused");
        self.accept_front();
        self.auth_deadline = self.auth_deadline.min(Instant::now() + REFUSED_LINGER);
    }

    /// A refused (or abandoned) connection's target connection is closed at once: it is an
    /// unauthenticated connection on the target's sshd, which counts towards `MaxStartups`.
    /// The client stays to read why (until it leaves or the authentication deadline).
    fn drop_upstream(&mut self, why: &str) {
        let up = &mut self.hops[1];
        if !up.gone {
            up.session.disconnect(disconnect::BY_APPLICATION, why);
            up.gone = true;
        }
        self.slot = None;
    }

    fn accept_front(&mut self) {
        if let Some(a) = self.hops[0].session.server_auth() {
            a.accept();
        }
    }

    fn refusal(&self) -> Option<&str> {
        match &self.auth {
            AuthState::Refused { why } => Some(why),
            _ => None,
        }
    }

    fn auth_timeout(&mut self) {
        self.auth_timed_out = true;
        if matches!(self.auth, AuthState::Authorized { .. }) {
            return;
        }
        // A refused client was audited when refused: it is only told why, once more.
        let text = match &self.auth {
            AuthState::Refused { why } => format!("portcullis: {why}"),
            _ => {
                self.conn.ctx.audit.emit(&self.conn.deny("auth_timeout"));
                "authentication timed out".into()
            }
        };
        self.hops[0].session.disconnect(disconnect::BY_APPLICATION, &text);
        self.gone(Hop::Front);
    }

    // ---- life cycle -------------------------------------------------------------------

    /// A session failed (a protocol error): its DISCONNECT is queued; nothing more is read.
    fn session_failed(&mut self, h: Hop, e: &SessionError) {
        tracing::debug!(session = %self.conn.session, hop = ?h, error = %e, "session error");
        // Before any authentication attempt, a client's protocol error is a bad handshake;
        // later ones end a session that is audited already.
        if h == Hop::Front && !self.tried_auth && !self.hops[0].gone {
            let mut d = self.conn.deny("bad_handshake");
            d.rule = Some(crate::audit::clip(&e.to_string()));
            self.conn.ctx.audit.emit(&d);
        }
        self.gone(h);
    }

    /// Nothing more comes from hop `h`. Its channels end: what it sent still drains to the
    /// other side, then their twins are closed.
    fn gone(&mut self, h: Hop) {
        if self.hops[h.i()].gone {
            return;
        }
        self.hops[h.i()].gone = true;
        if h == Hop::Up {
            // Before authentication, the client has nothing to wait for.
            if !matches!(
                self.auth,
                AuthState::Authorized { .. } | AuthState::Refused { .. }
            ) {
                self.hops[0].session.disconnect(
                    disconnect::BY_APPLICATION,
                    "portcullis: the connection to the target was lost",
                );
                self.hops[0].gone = true;
            }
        }
        self.hop_gone(h);
        self.drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN);
    }

    /// Once one hop is gone and every channel has drained, the other is told goodbye.
    fn settle(&mut self) {
        if !self.pairs.is_empty() {
            return;
        }
        for h in [Hop::Front, Hop::Up] {
            // A refused client stays to read why; its target connection went at once.
            if h == Hop::Front && matches!(self.auth, AuthState::Refused { .. }) {
                continue;
            }
            let other = &self.hops[h.other().i()];
            if other.gone && !self.hops[h.i()].gone {
                let text = match h {
                    Hop::Front => "portcullis: the connection to the target was lost",
                    Hop::Up => "the client disconnected",
                };
                let io = &mut self.hops[h.i()];
                io.session.disconnect(disconnect::BY_APPLICATION, text);
                io.gone = true;
            }
        }
    }

    /// The connection is over: audit its end.
    fn end(&mut self) {
        let AuthState::Authorized { .. } = self.auth else {
            return;
        };
        let mut e = self.conn.event("session.end");
        let t = &self.totals;
        let suppressed = self.channel_events.get().1;
        e.reason = Some(format!(
            "bytes_from_client={} bytes_from_target={} exit_status={} duration_ms={}{}",
            t.to[Hop::Up.i()],
            t.to[Hop::Front.i()],
            t.exit_status
                .map_or_else(|| "none".to_string(), |s| s.to_string()),
            self.started.elapsed().as_millis(),
            match suppressed {
                0 => String::new(),
                n => format!(" channel_events_not_audited={n}"),
            }
        ));
        self.conn.ctx.audit.emit(&e);
    }
}

impl Relay {
    fn on_connection(&mut self, h: Hop, ev: portcullis_ssh::connection::ConnectionEvent) {
        use portcullis_ssh::connection::ConnectionEvent as E;
        match ev {
            E::ChannelOpen { id, kind } => self.on_open(h, id, kind),
            E::ChannelOpenConfirmed { id } => self.on_open_confirmed(h, id),
            E::ChannelOpenFailed {
                id,
                reason,
                description,
            } => self.on_open_failed(h, id, reason, &description),
            E::Data { id, data } => self.on_data(h, id, None, data),
            E::ExtendedData { id, code, data } => self.on_data(h, id, Some(code), data),
            E::WindowAvailable { id } => {
                if let Some(i) = self.pairs.find(h, id) {
                    self.pairs.mark(i);
                }
            }
            E::Eof { id } => self.on_eof(h, id),
            E::PeerClosed { id } => self.on_peer_closed(h, id),
            E::Closed { id } => self.on_closed(h, id),
            E::Request {
                id,
                request,
                want_reply,
            } => self.on_request(h, id, request, want_reply),
            E::RequestReply { id, success } => self.on_reply(h, id, success),
            E::GlobalRequest { request, want_reply } => self.on_global(h, request, want_reply),
            E::GlobalReply { success, data } => self.on_global_reply(h, success, data),
        }
    }
}
