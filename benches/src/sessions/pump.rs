//! Bytes between a socket and an engine session, for the harness and the target alike: all
//! pending output written, then one read fed in. Thousands of idle connections share one
//! read buffer per thread (an idle connection waits on readiness and holds none).

use std::{cell::RefCell, io};

use anyhow::{bail, Result};
use portcullis_ssh::session::Session;
use tokio::{io::AsyncWriteExt, net::TcpStream};

thread_local! {
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; 64 * 1024].into_boxed_slice());
}

/// Writes what `s` has to send, then waits for bytes and feeds them. Fails at end of file,
/// on a socket error, on a protocol error (after writing the DISCONNECT it leaves), and
/// once the session is closed and its last output written.
pub async fn exchange(stream: &mut TcpStream, s: &mut Session) -> Result<()> {
    write_out(stream, s).await?;
    if s.is_closed() {
        bail!("connection closed");
    }
    loop {
        stream.readable().await?;
        let read = BUF.with(|b| {
            let mut b = b.borrow_mut();
            let n = stream.try_read(&mut b)?;
            Ok::<_, io::Error>((n, s.recv(&b[..n])))
        });
        match read {
            Ok((0, _)) => bail!("connection closed by the peer"),
            Ok((_, Ok(()))) => return Ok(()),
            Ok((_, Err(e))) => {
                let _ = write_out(stream, s).await;
                return Err(e.into());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

async fn write_out(stream: &mut TcpStream, s: &mut Session) -> io::Result<()> {
    while !s.output().is_empty() {
        let n = stream.write(s.output()).await?;
        s.advance_output(n);
    }
    Ok(())
}
