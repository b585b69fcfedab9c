//! The client harness: one SSH session on the engine's client role, as many at once as
//! the caller spawns tasks. Connects (from a chosen loopback source address if given),
//! logs in, opens a session channel, execs a command, and then either stays idle (the
//! concurrency figure) or waits for the exit status and the channel's close (the setup rate).
//!
//! Both hops are offered curve25519-sha256 only, the cheapest key exchange: this is the
//! load generator, and its own cost must not crowd out what it measures.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use portcullis_ssh::{
    auth::{ClientAuthEvent, ClientCredential},
    connection::{ChannelKind, ChannelRequest, ConnectionConfig, ConnectionEvent, Side},
    msg::disconnect,
    session::{Session, SessionEvent},
    transport::{TransportConfig, TransportEvent},
};
use ssh_key::PrivateKey;
use tokio::net::{TcpSocket, TcpStream};

use super::pump;

/// How the harness logs in.
#[derive(Clone)]
pub enum Login {
    /// `none`: the gateway takes identity from the source address.
    None,
    /// `publickey` with a key in the server's authorized_keys (the direct path).
    Key(Box<PrivateKey>),
}

/// One connection with a command started on it.
pub struct Client {
    stream: TcpStream,
    s: Session,
    /// The exec was answered with success.
    started: bool,
    exit: Option<u32>,
    /// The channel closed (both CLOSEs).
    closed: bool,
    /// The first bytes of stderr, for an error message (a gateway explains refusals there).
    stderr: Vec<u8>,
}

impl Client {
    /// Connects, logs in as root, opens a session channel and execs `command`; returns once
    /// the exec is accepted.
    pub async fn start(
        addr: SocketAddr,
        source: Option<IpAddr>,
        login: &Login,
        command: &'static str,
    ) -> Result<Self> {
        let stream = connect(addr, source).await?;
        let _ = stream.set_nodelay(true);
        let mut cfg = TransportConfig::client();
        cfg.kex = vec!["curve25519-sha256"];
        let credential = match login {
            Login::None => ClientCredential::None,
            Login::Key(key) => ClientCredential::PublicKey {
                key: (**key).clone(),
                certificate: None,
            },
        };
        let mut c = Client {
            stream,
            s: Session::client(
                cfg,
                "root".into(),
                credential,
                ConnectionConfig::new(Side::Client),
            ),
            started: false,
            exit: None,
            closed: false,
            stderr: Vec::new(),
        };
        c.run_until(|c| c.started, Bytes::from_static(command.as_bytes()))
            .await?;
        Ok(c)
    }

    /// Waits for the command's exit status and the channel's close, then disconnects.
    pub async fn finish(mut self) -> Result<u32> {
        self.run_until(|c| c.closed, Bytes::new()).await?;
        self.s.disconnect(disconnect::BY_APPLICATION, "done");
        let _ = pump::exchange(&mut self.stream, &mut self.s).await;
        self.exit.context("no exit status")
    }

    /// Stays connected, answering whatever arrives (keepalives, rekeys), until the
    /// connection fails or the command ends.
    pub async fn idle(mut self) -> Result<()> {
        self.run_until(|c| c.exit.is_some() || c.closed, Bytes::new())
            .await?;
        bail!("{}", self.ended())
    }

    fn ended(&self) -> String {
        format!(
            "the command ended (exit status {:?}): {}",
            self.exit,
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }

    /// Drives the connection until `done`; `command` is what to exec once a channel opens.
    async fn run_until(&mut self, done: impl Fn(&Self) -> bool, command: Bytes) -> Result<()> {
        while !done(self) {
            pump::exchange(&mut self.stream, &mut self.s).await?;
            while let Some(ev) = self.s.poll_event() {
                self.on_event(ev, &command)?;
            }
            self.s.flush()?;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: SessionEvent, command: &Bytes) -> Result<()> {
        let conn = self.s.connection();
        match ev {
            SessionEvent::Transport(TransportEvent::PeerHostKey(_)) => {
                self.s.transport().host_key_verdict(true)
            }
            SessionEvent::Transport(TransportEvent::Disconnected { description, .. }) => {
                bail!("disconnected: {description}")
            }
            SessionEvent::ClientAuth(ClientAuthEvent::Success) => {
                conn.open(ChannelKind::Session);
            }
            SessionEvent::ClientAuth(ClientAuthEvent::Failure { methods, .. }) => {
                bail!("login refused (methods left: {methods:?})")
            }
            SessionEvent::Connection(ConnectionEvent::ChannelOpenConfirmed { id }) => {
                let command = command.clone();
                conn.request(id, ChannelRequest::Exec { command }, true);
            }
            SessionEvent::Connection(ConnectionEvent::ChannelOpenFailed { description, .. }) => {
                bail!("session channel refused: {description}")
            }
            SessionEvent::Connection(ConnectionEvent::RequestReply { success, .. }) => {
                if !success {
                    bail!("exec refused");
                }
                self.started = true;
            }
            SessionEvent::Connection(ConnectionEvent::Data { id, data }) => conn.consume(id, data.len()),
            SessionEvent::Connection(ConnectionEvent::ExtendedData { id, data, .. }) => {
                if self.stderr.len() < 512 {
                    self.stderr.extend_from_slice(&data);
                }
                conn.consume(id, data.len());
            }
            SessionEvent::Connection(ConnectionEvent::Request {
                request: ChannelRequest::ExitStatus { status },
                ..
            }) => self.exit = Some(status),
            SessionEvent::Connection(ConnectionEvent::Closed { .. }) => self.closed = true,
            _ => {}
        }
        Ok(())
    }
}

/// A TCP connection to `addr`, from `source` if given (port chosen at connect time, so the
/// ephemeral ports are per destination, not per bind).
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let Some(source) = source else {
        return Ok(TcpStream::connect(addr).await?);
    };
    let sock = TcpSocket::new_v4()?;
    set_bind_no_port(&sock);
    sock.bind(SocketAddr::new(source, 0))?;
    Ok(sock.connect(addr).await?)
}

fn set_bind_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and an int option that lives for the call.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
