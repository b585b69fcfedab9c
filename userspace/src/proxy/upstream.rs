//! The proxy's own SSH connection to the target: dialled inside the target's vnet
//! (SO_MARK 0x40000000 | vnet selects its routing table), and taken through its first key
//! exchange as a client, which yields the target's host key — the input of the key the
//! proxy shows the client (`hostkey`). The login follows later, once the client has said
//! who it logs in as ([`Session::login`]).

use std::{net::SocketAddr, time::Duration};

use portcullis_common::MARK_UPSTREAM;
use portcullis_ssh::{
    connection::{ConnectionConfig, Side},
    session::{Session, SessionEvent},
    transport::{TransportConfig, TransportEvent},
};
use ssh_key::{Certificate, PublicKey};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Why the target could not be reached; shown to the user and audited.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("SSH handshake failed: {0}")]
    Ssh(String),
    #[error("{0}")]
    HostKey(String),
}

/// A target connection through its first key exchange, not logged in yet.
pub struct Dialled {
    pub stream: TcpStream,
    pub session: Session,
    /// The key that signed the exchange (a host certificate's subject key).
    pub host_key: PublicKey,
}

/// Connecting and the first key exchange together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn dial(
    addr: SocketAddr,
    vnet: u16,
    transport: TransportConfig,
    check: &crate::hostcheck::Check,
) -> Result<Dialled, UpstreamError> {
    tokio::time::timeout(CONNECT_TIMEOUT, dial_inner(addr, vnet, transport, check))
        .await
        .map_err(|_| UpstreamError::Timeout(CONNECT_TIMEOUT))?
}

async fn dial_inner(
    addr: SocketAddr,
    vnet: u16,
    transport: TransportConfig,
    check: &crate::hostcheck::Check,
) -> Result<Dialled, UpstreamError> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(UpstreamError::Connect)?;
    crate::steer::set_sockopt(
        &sock,
        libc::SOL_SOCKET,
        libc::SO_MARK,
        MARK_UPSTREAM | vnet as u32,
    )
    .map_err(UpstreamError::Connect)?;
    sock.set_nodelay(true).map_err(UpstreamError::Connect)?;
    let mut stream = sock.connect(addr).await.map_err(UpstreamError::Connect)?;
    let mut session = Session::client_deferred(transport, ConnectionConfig::new(Side::Client));
    let mut cert: Option<Certificate> = None;
    let mut host_key: Option<PublicKey> = None;
    let mut buf = vec![0u8; 16 * 1024];
    // Until both NEWKEYS of the first exchange, so that the relay starts on a settled
    // transport.
    loop {
        while let Some(ev) = session.poll_event() {
            match ev {
                SessionEvent::Transport(TransportEvent::PeerHostCertificate(c)) => cert = Some(*c),
                SessionEvent::Transport(TransportEvent::PeerHostKey(key)) => {
                    // Pins and host CAs are checked here; without them trust on first use
                    // is the client's decision (it sees the derived key).
                    let verdict = check.verify(&key, cert.as_ref(), crate::audit::unix_secs());
                    session.transport().host_key_verdict(verdict.is_ok());
                    if let Err(why) = verdict {
                        let _ = write_all(&mut stream, &mut session).await;
                        return Err(UpstreamError::HostKey(why));
                    }
                    session.flush().map_err(|e| UpstreamError::Ssh(e.to_string()))?;
                    host_key = Some(key);
                }
                SessionEvent::Transport(TransportEvent::KexDone { first: true, .. }) => {
                    // The transport emits KexDone only after a verdict on the host key.
                    let host_key = host_key
                        .take()
                        .ok_or_else(|| UpstreamError::Ssh("key exchange without a host key".into()))?;
                    write_all(&mut stream, &mut session).await?;
                    return Ok(Dialled {
                        stream,
                        session,
                        host_key,
                    });
                }
                SessionEvent::Transport(TransportEvent::Disconnected { description, .. }) => {
                    return Err(UpstreamError::Ssh(format!(
                        "the target disconnected: {description}"
                    )));
                }
                _ => {}
            }
        }
        write_all(&mut stream, &mut session).await?;
        let n = stream.read(&mut buf).await.map_err(UpstreamError::Connect)?;
        if n == 0 {
            return Err(UpstreamError::Ssh("the target closed the connection".into()));
        }
        if let Err(e) = session.recv(&buf[..n]) {
            let _ = write_all(&mut stream, &mut session).await;
            return Err(UpstreamError::Ssh(e.to_string()));
        }
    }
}

async fn write_all(stream: &mut TcpStream, session: &mut Session) -> Result<(), UpstreamError> {
    while !session.output().is_empty() {
        let n = stream
            .write(session.output())
            .await
            .map_err(UpstreamError::Connect)?;
        session.advance_output(n);
    }
    Ok(())
}
