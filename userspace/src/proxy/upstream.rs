//! The proxy's own SSH connection to the target: dialled inside the target's vnet
//! (SO_MARK 0x40000000 | vnet selects its routing table), key exchange as a client, and the
//! target's host key learned for the derivation.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use portcullis_common::MARK_UPSTREAM;
use russh::server::Handle;

use super::link::Link;
use russh::{
    client,
    keys::{PublicKey, PublicKeyOrCertificate},
};
use tokio::net::TcpSocket;

/// Why the target could not be reached; shown to the user and audited.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("SSH handshake failed: {0}")]
    Ssh(#[source] russh::Error),
    #[error("{0}")]
    HostKey(String),
}

pub struct Up {
    key: Arc<Mutex<Option<PublicKey>>>,
    check: crate::hostcheck::Check,
    /// Why `check` refused the target's key, for the user and the audit.
    rejected: Arc<Mutex<Option<String>>>,
    /// Shared with the client's side: its session, what it was granted, its relays.
    link: Arc<super::link::Link>,
}

impl client::Handler for Up {
    type Error = russh::Error;

    async fn check_server_key(&mut self, k: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // Pins and host CAs are checked here; without them trust on first use is the
        // client's decision (it sees the derived key). The target's key is recorded for the
        // derivation and the hostkey.changed audit.
        if let Err(why) = self.check.verify(k, crate::audit::unix_secs()) {
            *self.rejected.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            return Ok(false);
        }
        *self.key.lock().unwrap_or_else(|e| e.into_inner()) = Some(k.public_key().clone());
        Ok(true)
    }

    /// The target wants the client's agent (only after a forwarded `ssh -A`, which the
    /// policy must allow): open an agent channel to the client and join them.
    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let open = move |f: Handle| async move { f.channel_open_agent().await };
        let granted = self.link.agent.load(Ordering::Relaxed);
        bridge(&self.link, "agent_channel", None, granted, open, channel, reply);
        Ok(())
    }

    /// An X client on the target connected to the forwarded display (only after a forwarded
    /// `ssh -X`, which the policy must allow): open an X11 channel to the client and join them.
    async fn server_channel_open_x11(
        &mut self,
        channel: russh::Channel<client::Msg>,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let from = originator_address.to_owned();
        let what = Some(format!("{from}:{originator_port}"));
        let open = move |f: Handle| async move { f.channel_open_x11(from, originator_port).await };
        let granted = self.link.x11.load(Ordering::Relaxed);
        bridge(&self.link, "x11_channel", what, granted, open, channel, reply);
        Ok(())
    }

    /// The target accepted a connection on a port forwarded with `ssh -R` (only requested
    /// when the policy allows it): open the matching channel to the client and join them.
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let (to, from) = (connected_address.to_owned(), originator_address.to_owned());
        let what = Some(format!("{to}:{connected_port} from {from}:{originator_port}"));
        let open = move |f: Handle| async move {
            f.channel_open_forwarded_tcpip(to, connected_port, from, originator_port)
                .await
        };
        // Only for a listen the client asked for and the target granted (address as the
        // client wrote it, which sshd echoes, and the bound port): a target that reports
        // anything else is not forwarding what this client set up, and is refused.
        let granted = self.link.remote_granted(connected_address, connected_port);
        bridge(&self.link, "forwarded_tcpip", what, granted, open, channel, reply);
        Ok(())
    }
}

/// Answers a channel the target opened: `open`s its twin on the client's session and joins
/// the two; refused when the forwarding was not `granted`, there is no client session yet,
/// or the client said no. In a task: this session's loop must not wait for the client's
/// (see `answers`).
fn bridge<F, Fut>(
    link: &Arc<Link>,
    kind: &'static str,
    detail: Option<String>,
    granted: bool,
    open: F,
    up: russh::Channel<client::Msg>,
    reply: client::ChannelOpenHandle,
) where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<russh::Channel<russh::server::Msg>, russh::Error>> + Send,
{
    let link = link.clone();
    tokio::spawn(async move {
        let front = link.front.get().cloned().filter(|_| granted);
        let Some(front) = front else {
            link.channel_event(&format!("{kind}_refused"), detail);
            return reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        };
        match super::answers::within(open(front)).await {
            Ok(down) => {
                link.channel_event(kind, detail);
                reply.accept().await;
                link.track(super::tunnel::join(down, up));
            }
            Err(why) => {
                link.channel_event(&format!("{kind}_failed"), Some(why));
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await
            }
        }
    });
}

pub struct Connected {
    pub handle: client::Handle<Up>,
    pub host_key: PublicKey,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn connect(
    addr: SocketAddr,
    vnet: u16,
    config: Arc<client::Config>,
    check: crate::hostcheck::Check,
    link: Arc<super::link::Link>,
) -> Result<Connected, UpstreamError> {
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
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| UpstreamError::Timeout(CONNECT_TIMEOUT))?
        .map_err(UpstreamError::Connect)?;
    let key = Arc::new(Mutex::new(None));
    let rejected = Arc::new(Mutex::new(None));
    let up = Up {
        key: key.clone(),
        check,
        rejected: rejected.clone(),
        link,
    };
    let handle = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client::connect_stream(config, crate::proxy::buffered(stream), up),
    )
    .await
    .map_err(|_| UpstreamError::Timeout(CONNECT_TIMEOUT))?
    .map_err(
        |e| match rejected.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(why) => UpstreamError::HostKey(why),
            None => UpstreamError::Ssh(e),
        },
    )?;
    let host_key = key
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or(UpstreamError::Ssh(russh::Error::UnknownKey))?;
    Ok(Connected { handle, host_key })
}
