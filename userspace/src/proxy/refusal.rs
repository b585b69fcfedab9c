//! Refusing a client before any key exchange, in words its SSH client prints.
//!
//! A refusal happens before the proxy has a host key to show (the target's decides it, and
//! an unreachable target has none): any key would be a wrong one and make the client warn
//! of a changed host key. So the proxy sends its identification and then an unencrypted
//! `SSH_MSG_DISCONNECT` (RFC 4253 §11.1 allows it at any point). Clients print its text
//! without `-v` (OpenSSH: "Received disconnect from … : <text>"; PuTTY and dbclient alike),
//! whereas lines before the banner are shown by OpenSSH only in debug output.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const MSG_DISCONNECT: u8 = 1;
/// What OpenSSH prints of the description (`%.400s`); longer texts are cut on a char boundary.
const MAX_TEXT: usize = 400;
/// How long the client may take to read the refusal and hang up before the socket is closed.
/// Closing with its banner unread would make the kernel answer with a reset, which can
/// overtake the refusal in the client's receive queue.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much of what the client sends meanwhile is read (and dropped).
const DRAIN_LIMIT: usize = 64 * 1024;

/// RFC 4253 §11.1 reason codes used by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The identity, the policy or the steering does not allow this connection.
    NotAllowed = 1,
    /// The target could not be reached or its SSH handshake failed.
    ServiceNotAvailable = 7,
    /// The target's host key failed its pin or host-CA check.
    HostKeyNotVerifiable = 9,
    /// Too many connections await authentication (`[limits]`).
    TooManyConnections = 12,
}

/// The server identification sent with a refusal.
const IDENTIFICATION: &[u8] = b"SSH-2.0-portcullis\r\n";

/// Sends the identification and a disconnect saying `text`, then closes: after the client
/// had `LINGER` to read it if `linger`, at once otherwise (the gateway is under pressure and
/// the connection's descriptor is worth more than the client seeing the text).
pub async fn refuse(s: TcpStream, reason: Reason, text: &str, linger: bool) {
    let mut out = IDENTIFICATION.to_vec();
    out.extend_from_slice(&disconnect_packet(reason, text));
    send_and_close(s, out, linger).await
}

/// The same, after the proxy's own identification went out already (the connection was
/// admitted, then the target failed): only the disconnect follows.
pub async fn refuse_after_hello(s: TcpStream, reason: Reason, text: &str, linger: bool) {
    send_and_close(s, disconnect_packet(reason, text), linger).await
}

async fn send_and_close(mut s: TcpStream, out: Vec<u8>, linger: bool) {
    if s.write_all(&out).await.is_err() || s.shutdown().await.is_err() || !linger {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while drained < DRAIN_LIMIT {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Refuses without waiting for anything (a connection over a `[limits]` cap): the
/// identification and disconnect go out only if the socket's buffer takes them now, and the
/// caller drops the socket right after.
pub fn refuse_at_once(s: &TcpStream, text: &str) {
    use std::os::fd::AsRawFd;
    let mut out = IDENTIFICATION.to_vec();
    out.extend_from_slice(&disconnect_packet(Reason::TooManyConnections, text));
    // A plain non-blocking send: tokio's `try_write` declines until the reactor has seen the
    // new socket writable, which for a socket closed right away it never does.
    // SAFETY: the descriptor is open for the call (`s` is borrowed) and `out` outlives it;
    // MSG_NOSIGNAL keeps a vanished peer from raising SIGPIPE.
    let _ = unsafe {
        libc::send(
            s.as_raw_fd(),
            out.as_ptr().cast(),
            out.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// An unencrypted binary packet (RFC 4253 §6) carrying `SSH_MSG_DISCONNECT`.
pub fn disconnect_packet(reason: Reason, text: &str) -> Vec<u8> {
    // The text may quote a target's own DISCONNECT: no control characters reach the user's
    // terminal (OpenSSH's client filters them, others may not).
    let text = crate::audit::printable(text, MAX_TEXT);
    let mut payload = Vec::with_capacity(13 + text.len());
    payload.push(MSG_DISCONNECT);
    payload.extend_from_slice(&(reason as u32).to_be_bytes());
    payload.extend_from_slice(&(text.len() as u32).to_be_bytes());
    payload.extend_from_slice(text.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag: empty
                                                    // Length field excluded, the packet (padding length byte, payload, padding) is a
                                                    // multiple of 8 bytes together with the length field, with at least 4 bytes of padding.
    let unpadded = 4 + 1 + payload.len();
    let padding = 4 + (8 - (unpadded + 4) % 8) % 8;
    let packet_len = 1 + payload.len() + padding;
    let mut p = Vec::with_capacity(4 + packet_len);
    p.extend_from_slice(&(packet_len as u32).to_be_bytes());
    p.push(padding as u8);
    p.extend_from_slice(&payload);
    p.resize(p.len() + padding, 0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &[u8]) -> (u32, String) {
        let len = u32::from_be_bytes(p[..4].try_into().unwrap()) as usize;
        assert_eq!(p.len(), 4 + len, "length field covers the rest");
        assert_eq!(p.len() % 8, 0, "block-aligned");
        let pad = p[4] as usize;
        assert!(pad >= 4, "at least 4 bytes of padding");
        let payload = &p[5..4 + len - pad];
        assert_eq!(payload[0], MSG_DISCONNECT);
        let code = u32::from_be_bytes(payload[1..5].try_into().unwrap());
        let n = u32::from_be_bytes(payload[5..9].try_into().unwrap()) as usize;
        let text = String::from_utf8(payload[9..9 + n].to_vec()).unwrap();
        assert_eq!(&payload[9 + n..], &[0, 0, 0, 0], "empty language tag");
        (code, text)
    }

    #[test]
    fn packets_are_well_formed_for_every_length() {
        for n in 0..40 {
            let text = "x".repeat(n);
            assert_eq!(parse(&disconnect_packet(Reason::NotAllowed, &text)), (1, text));
        }
        let (code, _) = parse(&disconnect_packet(Reason::HostKeyNotVerifiable, "k"));
        assert_eq!(code, 9);
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary() {
        let text = "é".repeat(300);
        let (_, got) = parse(&disconnect_packet(Reason::ServiceNotAvailable, &text));
        assert_eq!(got.len(), MAX_TEXT);
        assert!(text.starts_with(&got));
    }
}
