//! The proxy's listening sockets that the dataplane steers protected flows into, and what an
//! accepted connection tells us: the original destination (getsockname, preserved by
//! sk_lookup) and the vnet (the SYN's fwmark, inherited through `tcp_fwmark_accept`).

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use portcullis_common::{MARK_STEER, MARK_VNET_MASK};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One listener per address family; they are bound to loopback on ephemeral ports because
/// only sk_lookup hands them connections.
pub struct Listeners {
    pub v4: TcpListener,
    pub v6: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind() -> io::Result<Self> {
        let v4 = transparent_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let v6 = match transparent_listener(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "no IPv6 loopback: IPv6 targets cannot be steered");
                None
            }
        };
        Ok(Self { v4, v6 })
    }
}

/// A listener with IP_TRANSPARENT: it answers for destination addresses that are not the
/// gateway's own (the target's), which the kernel otherwise refuses as a reply source.
fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let (sock, level, opt) = match addr {
        SocketAddr::V4(_) => (TcpSocket::new_v4()?, libc::SOL_IP, libc::IP_TRANSPARENT),
        SocketAddr::V6(_) => (TcpSocket::new_v6()?, libc::SOL_IPV6, libc::IPV6_TRANSPARENT),
    };
    set_sockopt(&sock, level, opt, 1).map_err(|e| {
        io::Error::other(format!(
            "set IP_TRANSPARENT on the proxy listener (needs CAP_NET_ADMIN): {e}"
        ))
    })?;
    sock.bind(addr)?;
    sock.listen(4096)
}

/// An accepted connection and where it was going.
#[derive(Debug)]
pub struct Steered {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub original_dst: SocketAddr,
    /// `None` when the connection did not come through the steering (e.g. a local process
    /// connecting to the listener directly): such connections are refused.
    pub vnet: Option<u16>,
}

pub fn inspect(stream: TcpStream, peer: SocketAddr) -> io::Result<Steered> {
    let original_dst = canonical(stream.local_addr()?);
    let mark = so_mark(&stream)?;
    let vnet = (mark & MARK_STEER != 0).then_some((mark & MARK_VNET_MASK) as u16);
    Ok(Steered {
        stream,
        peer: canonical(peer),
        original_dst,
        vnet,
    })
}

/// IPv4-mapped IPv6 socket addresses as IPv4 ones.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(crate::targets::canonical(a.ip()), a.port())
}

/// `setsockopt` of a 32-bit option (IP_TRANSPARENT, SO_MARK, …).
pub(crate) fn set_sockopt(
    s: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: u32,
) -> io::Result<()> {
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn so_mark(s: &impl AsRawFd) -> io::Result<u32> {
    let mut mark: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mut mark as *mut u32).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mark)
}
