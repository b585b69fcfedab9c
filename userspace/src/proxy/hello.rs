//! The first exchange with an admitted client: our identification goes out at once, and the
//! client's must arrive within [`HANDSHAKE`] before anything touches the target. An idle TCP
//! connection therefore never costs the target a connection (an allowed identity's idle
//! connections used to push a real sshd past `MaxStartups`).

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long a client may take to send its SSH identification.
pub const HANDSHAKE: Duration = Duration::from_secs(10);
/// RFC 4253 §4.2: the identification line is at most 255 bytes with CR LF.
const MAX_LINE: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("no SSH identification within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before an SSH identification")]
    Closed,
    #[error("not an SSH-2.0 identification: {0:?}")]
    NotSsh(String),
    #[error("the identification line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends `ours` (the identification, without CR LF) and reads the client's line. Returns
/// every byte read, the line included: the SSH session is fed them as received.
pub async fn exchange(stream: &mut TcpStream, ours: &str) -> Result<Vec<u8>, HelloError> {
    let mut line = Vec::with_capacity(ours.len() + 2);
    line.extend_from_slice(ours.as_bytes());
    line.extend_from_slice(b"\r\n");
    stream.write_all(&line).await?;
    tokio::time::timeout(HANDSHAKE, read_line(stream))
        .await
        .map_err(|_| HelloError::Timeout(HANDSHAKE))?
}

async fn read_line(stream: &mut TcpStream) -> Result<Vec<u8>, HelloError> {
    let mut got = Vec::with_capacity(MAX_LINE + 1);
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        got.extend_from_slice(&buf[..n]);
        // A client speaks first with its identification (no lines before it, unlike a
        // server): anything else is not an SSH client.
        let head = &got[..got.len().min(8)];
        if !b"SSH-2.0-".starts_with(head) && !b"SSH-1.99-".starts_with(head) {
            let shown = String::from_utf8_lossy(&got[..got.len().min(40)]).into_owned();
            return Err(HelloError::NotSsh(shown));
        }
        match got.iter().position(|&b| b == b'\n') {
            Some(end) if end < MAX_LINE => return Ok(got),
            Some(_) => return Err(HelloError::TooLong),
            None if got.len() >= MAX_LINE => return Err(HelloError::TooLong),
            None => {}
        }
    }
}
