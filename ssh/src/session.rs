//! One SSH connection end to end: the transport, user authentication and the connection
//! layer wired together, still sans-IO. The caller feeds received bytes to [`Session::recv`],
//! writes [`Session::output`] to the socket, and answers [`SessionEvent`]s through the layer
//! accessors ([`Session::server_auth`], [`Session::connection`], …) followed by
//! [`Session::flush`], which moves what the layers queued into the transport.
//!
//! Routing of received payloads: `SERVICE_REQUEST`/`SERVICE_ACCEPT` and 50–79 go to user
//! authentication; 80–127 to the connection layer, and only once authentication succeeded
//! (before that they are a protocol error: nothing reaches a channel unauthenticated).

use std::collections::VecDeque;

use crate::{
    auth::{
        AuthError, ClientAuth, ClientAuthEvent, ClientCredential, ServerAuth, ServerAuthConfig,
        ServerAuthEvent,
    },
    connection::{Connection, ConnectionConfig, ConnectionError, ConnectionEvent},
    msg,
    transport::{Role, Transport, TransportConfig, TransportError, TransportEvent},
};

/// Something the application should act on or know.
#[derive(Debug)]
pub enum SessionEvent {
    Transport(TransportEvent),
    ServerAuth(ServerAuthEvent),
    ClientAuth(ClientAuthEvent),
    Connection(ConnectionEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("message {0} before user authentication completed")]
    Unauthenticated(u8),
    #[error("message {0} is not one this side accepts")]
    Unexpected(u8),
    #[error("a second key exchange before user authentication")]
    RekeyBeforeAuth,
}

impl SessionError {
    /// The disconnect reason to send the peer for this error.
    pub fn disconnect_reason(&self) -> u32 {
        match self {
            SessionError::Transport(e) => e.disconnect_reason(),
            SessionError::Auth(e) => e.disconnect_reason(),
            SessionError::Connection(e) => e.disconnect_reason(),
            SessionError::Unauthenticated(_)
            | SessionError::Unexpected(_)
            | SessionError::RekeyBeforeAuth => msg::disconnect::PROTOCOL_ERROR,
        }
    }
}

enum Auth {
    Server(ServerAuth),
    /// Boxed: it holds the client's key and certificate.
    Client(Box<ClientAuth>),
}

impl Auth {
    fn is_done(&self) -> bool {
        match self {
            Auth::Server(a) => a.is_done(),
            Auth::Client(a) => a.is_done(),
        }
    }
}

/// One connection, either role.
pub struct Session {
    transport: Transport,
    auth: Auth,
    conn: Connection,
    events: VecDeque<SessionEvent>,
    /// A fatal error happened: only the queued output (a DISCONNECT) is left to send.
    failed: bool,
}

impl Session {
    /// The server end: `transport.role` must be `Server`.
    pub fn server(transport: TransportConfig, auth: ServerAuthConfig, conn: ConnectionConfig) -> Self {
        debug_assert_eq!(transport.role, Role::Server);
        Session {
            transport: Transport::new(transport),
            auth: Auth::Server(ServerAuth::new(auth)),
            conn: Connection::new(conn),
            events: VecDeque::new(),
            failed: false,
        }
    }

    /// The client end: logs in as `user` with `credential` once the first key exchange is done.
    pub fn client(
        transport: TransportConfig,
        user: String,
        credential: ClientCredential,
        conn: ConnectionConfig,
    ) -> Self {
        debug_assert_eq!(transport.role, Role::Client);
        Session {
            transport: Transport::new(transport),
            auth: Auth::Client(Box::new(ClientAuth::new(user, credential))),
            conn: Connection::new(conn),
            events: VecDeque::new(),
            failed: false,
        }
    }

    /// A client end whose login is given later with [`Session::login`]: the key exchange
    /// (and the server's host key) comes first, as a relay needs.
    pub fn client_deferred(transport: TransportConfig, conn: ConnectionConfig) -> Self {
        debug_assert_eq!(transport.role, Role::Client);
        Session {
            transport: Transport::new(transport),
            auth: Auth::Client(Box::new(ClientAuth::deferred())),
            conn: Connection::new(conn),
            events: VecDeque::new(),
            failed: false,
        }
    }

    /// Client role, made with [`Session::client_deferred`]: log in as `user` with
    /// `credential` (once; later calls are ignored). Call [`flush`](Self::flush) after.
    pub fn login(&mut self, user: String, credential: ClientCredential) -> Result<(), SessionError> {
        let sid = self.transport.session_id().unwrap_or_default().to_vec();
        if let Auth::Client(a) = &mut self.auth {
            let r = a.login(user, credential, &sid).map_err(SessionError::from);
            return self.fail_on(r);
        }
        Ok(())
    }

    /// Feeds received bytes (any split). On an error the session is finished: write what
    /// [`output`](Self::output) still holds (a DISCONNECT naming the reason) and close.
    pub fn recv(&mut self, data: &[u8]) -> Result<(), SessionError> {
        if self.failed {
            return Ok(());
        }
        let r = self
            .transport
            .recv(data)
            .map_err(SessionError::from)
            .and_then(|()| self.pump());
        self.fail_on(r)
    }

    /// Room to read the socket into without a copy: see [`Transport::recv_space`]. Then
    /// call [`received`](Self::received).
    pub fn recv_space(&mut self, want: usize, grow: bool) -> Option<&mut bytes::BytesMut> {
        if self.failed {
            return None;
        }
        self.transport.recv_space(want, grow)
    }

    /// Takes in what was appended to [`recv_space`](Self::recv_space), as `recv` does.
    pub fn received(&mut self) -> Result<(), SessionError> {
        self.recv(&[])
    }

    /// Moves what the layers queued (after the application answered events or sent data)
    /// into the transport, and takes in what that unblocked.
    pub fn flush(&mut self) -> Result<(), SessionError> {
        if self.failed {
            return Ok(());
        }
        let r = self.pump();
        self.fail_on(r)
    }

    fn fail_on(&mut self, r: Result<(), SessionError>) -> Result<(), SessionError> {
        if let Err(e) = &r {
            self.failed = true;
            if !self.transport.is_closed() {
                self.transport.disconnect(e.disconnect_reason(), &e.to_string());
            }
        }
        r
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the socket.
    pub fn output(&self) -> &[u8] {
        self.transport.output()
    }

    /// Everything on its way out and not written yet: the output, payloads the transport
    /// holds during a key exchange, and the connection layer's queue. A relay stops handing
    /// over data while this is high (a peer that does not read, or stalls a key exchange,
    /// must not make us buffer).
    pub fn backlog(&self) -> usize {
        self.transport.output().len() + self.transport.held_bytes() + self.conn.queued_transmit_bytes()
    }

    /// A key exchange is in progress (a relay bounds how long it may take).
    pub fn is_kex_in_progress(&self) -> bool {
        self.transport.is_kex_in_progress()
    }

    /// The caller wrote `n` bytes of [`output`](Self::output).
    pub fn advance_output(&mut self, n: usize) {
        self.transport.advance_output(n)
    }

    pub fn transport(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// The server role's authentication (answer `Attempt` events here, then [`flush`](Self::flush)).
    pub fn server_auth(&mut self) -> Option<&mut ServerAuth> {
        match &mut self.auth {
            Auth::Server(a) => Some(a),
            Auth::Client(_) => None,
        }
    }

    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// User authentication succeeded: channels may be used.
    pub fn is_authenticated(&self) -> bool {
        self.auth.is_done()
    }

    /// The transport is closed (DISCONNECT sent or received, or a fatal error).
    pub fn is_closed(&self) -> bool {
        self.failed || self.transport.is_closed()
    }

    /// Sends DISCONNECT; nothing more is accepted.
    pub fn disconnect(&mut self, reason: u32, description: &str) {
        self.transport.disconnect(reason, description);
        self.failed = true;
    }

    fn pump(&mut self) -> Result<(), SessionError> {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.transport.poll_event() {
                match (&ev, &mut self.auth) {
                    // One key exchange is all a login needs. A peer that asks for more
                    // before it authenticated only makes us pay for them (no client rekeys
                    // that early: its limits count gigabytes or hours).
                    (TransportEvent::KexDone { first: false, .. }, a) if !a.is_done() => {
                        return Err(SessionError::RekeyBeforeAuth)
                    }
                    (TransportEvent::KexDone { first: true, .. }, Auth::Client(a)) => a.start(),
                    (TransportEvent::ExtInfo(pairs), Auth::Client(a)) => {
                        if let Some((_, v)) = pairs.iter().find(|(n, _)| n == "server-sig-algs") {
                            let text = String::from_utf8_lossy(v);
                            a.set_server_sig_algs(text.split(','));
                        }
                    }
                    _ => {}
                }
                self.events.push_back(SessionEvent::Transport(ev));
                progressed = true;
            }
            while let Some(p) = self.transport.poll_payload() {
                progressed = true;
                let Some(&n) = p.first() else { continue };
                match n {
                    msg::SERVICE_REQUEST | msg::SERVICE_ACCEPT | 50..=79 => {
                        let sid = self.transport.session_id().unwrap_or_default().to_vec();
                        match &mut self.auth {
                            Auth::Server(a) => a.handle(&p, &sid)?,
                            Auth::Client(a) => a.handle(&p, &sid)?,
                        }
                    }
                    80..=127 if self.auth.is_done() => self.conn.handle(p)?,
                    80..=127 => return Err(SessionError::Unauthenticated(n)),
                    _ => return Err(SessionError::Unexpected(n)),
                }
            }
            match &mut self.auth {
                Auth::Server(a) => {
                    while let Some(ev) = a.poll_event() {
                        self.events.push_back(SessionEvent::ServerAuth(ev));
                    }
                    while let Some(p) = a.poll_transmit() {
                        self.transport.send(&p)?;
                        progressed = true;
                    }
                }
                Auth::Client(a) => {
                    while let Some(ev) = a.poll_event() {
                        self.events.push_back(SessionEvent::ClientAuth(ev));
                    }
                    while let Some(p) = a.poll_transmit() {
                        self.transport.send(&p)?;
                        progressed = true;
                    }
                }
            }
            while let Some(ev) = self.conn.poll_event() {
                self.events.push_back(SessionEvent::Connection(ev));
            }
            while let Some(p) = self.conn.poll_outgoing() {
                self.transport.send_parts(p.parts())?;
                progressed = true;
            }
            if !progressed {
                return Ok(());
            }
        }
    }
}
