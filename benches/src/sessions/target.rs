//! The lightweight target of the concurrency figure. A real sshd forks a process (two, with
//! privilege separation) per connection and cannot hold 10 000 sessions in 24 GiB, so the
//! gateway logs in here instead: the engine's server role, one tokio task per connection.
//!
//! It accepts only a `publickey` login with a user certificate from the gateway's CA (the
//! engine verified the subject key's signature; this checks the CA's signature and the
//! validity window, not principals: it is a bench target), confirms session channels,
//! answers `exec` and `shell` with success and runs nothing. The channel then stays open and
//! idle until the peer goes, like a `sleep` that never ends.
//!
//! It runs as its own process (`portcullis-bench sessions-target`), so that the harness and
//! the target each have a whole descriptor limit: one process holding both ends of 10 000
//! sessions would need more than this machine's hard limit of 20 000.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context, Result};
use portcullis_ssh::{
    auth::{AuthMethod, ServerAuthConfig, ServerAuthEvent},
    connection::{ChannelKind, ChannelRequest, ConnectionConfig, ConnectionEvent, Side},
    session::{Session, SessionEvent},
    transport::TransportConfig,
};
use ssh_key::{private::Ed25519Keypair, Fingerprint, HashAlg, PrivateKey, PublicKey};
use tokio::net::{TcpListener, TcpStream};

use super::pump;

/// How many sessions the target holds with a command "running": the check that every
/// session the harness counts really reached the target (a gateway that refused would
/// still accept the client and explain on its channel).
#[derive(Default)]
struct Running(AtomicUsize);

impl Running {
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The target process, as the bench driver sees it.
pub struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Target {
    /// Starts `portcullis-bench sessions-target` on `addr`, trusting `ca`.
    pub fn start(addr: SocketAddr, ca: &PublicKey) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["sessions-target", &addr.to_string(), &ca.to_openssh()?])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut t = Target { child, stdin, stdout };
        let mut line = String::new();
        t.stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the target did not start: {line:?}");
        }
        Ok(t)
    }

    /// Sessions with a command running.
    pub fn running(&mut self) -> Result<usize> {
        writeln!(self.stdin)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.trim()
            .parse()
            .with_context(|| format!("the target said {line:?}"))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The target process: `sessions-target LISTEN CA-PUBLIC-KEY`. Says `ready` once it
/// listens, then answers each line on stdin with the number of sessions running; exits at
/// end of input.
pub fn main(args: &[String]) -> Result<()> {
    let [addr, ca] = args else {
        bail!("usage: sessions-target LISTEN CA-PUBLIC-KEY");
    };
    let ca = PublicKey::from_openssh(ca)?;
    super::procfs::raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let running = rt.block_on(spawn(&ca, addr.parse()?))?;
    println!("ready");
    for line in std::io::stdin().lines() {
        line?;
        println!("{}", running.get());
    }
    Ok(())
}

/// Listens on `addr` and serves until the runtime stops.
async fn spawn(ca: &PublicKey, addr: SocketAddr) -> Result<Arc<Running>> {
    let listener = TcpListener::bind(addr).await?;
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let host = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let ca = Arc::new(ca.fingerprint(HashAlg::Sha256));
    let running = Arc::new(Running::default());
    let r = running.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, most likely: the harness sees its session fail.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let mut cfg = TransportConfig::server(vec![host.clone()]);
            // The cheapest key exchange: the ramp's cost is not what this figure measures.
            cfg.kex = vec!["curve25519-sha256"];
            tokio::spawn(serve(stream, cfg, ca.clone(), r.clone()));
        }
    });
    Ok(running)
}

async fn serve(mut stream: TcpStream, cfg: TransportConfig, ca: Arc<Fingerprint>, running: Arc<Running>) {
    let _ = stream.set_nodelay(true);
    let auth = ServerAuthConfig {
        none: false,
        keyboard_interactive: false,
        ..ServerAuthConfig::default()
    };
    let mut s = Session::server(cfg, auth, ConnectionConfig::new(Side::Server));
    let mut started = Started(running, 0);
    while pump::exchange(&mut stream, &mut s).await.is_ok() {
        while let Some(ev) = s.poll_event() {
            match ev {
                SessionEvent::ServerAuth(ServerAuthEvent::Attempt { method, .. }) => {
                    let ok = trusted(&method, &ca);
                    if let Some(a) = s.server_auth() {
                        if ok {
                            a.accept()
                        } else {
                            a.reject(false)
                        }
                    }
                }
                SessionEvent::Connection(ev) => started.add(on_connection(&mut s, ev)),
                _ => {}
            }
        }
        let _ = s.flush();
    }
}

/// A connection's commands, counted in [`Running`] and out again when the connection ends,
/// whatever ends it.
struct Started(Arc<Running>, usize);

impl Started {
    fn add(&mut self, n: usize) {
        (self.0).0.fetch_add(n, Ordering::Relaxed);
        self.1 += n;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

fn trusted(method: &AuthMethod, ca: &Fingerprint) -> bool {
    match method {
        AuthMethod::PublicKey {
            certificate: Some(cert),
            ..
        } => cert.validate([ca]).is_ok(),
        _ => false,
    }
}

/// Answers one connection event; returns how many commands it started (0 or 1).
fn on_connection(s: &mut Session, ev: ConnectionEvent) -> usize {
    match ev {
        ConnectionEvent::ChannelOpen {
            id,
            kind: ChannelKind::Session,
        } => s.connection().accept_open(id),
        ConnectionEvent::ChannelOpen { id, .. } => s.connection().reject_open(id, 1, "sessions only"),
        ConnectionEvent::Request {
            id,
            request,
            want_reply,
        } => {
            let (ok, started) = match request {
                ChannelRequest::Exec { .. } | ChannelRequest::Shell => (true, 1),
                ChannelRequest::PtyReq { .. } | ChannelRequest::Env { .. } => (true, 0),
                _ => (false, 0),
            };
            if want_reply {
                s.connection().reply(id, ok);
            }
            return started;
        }
        ConnectionEvent::Data { id, data } | ConnectionEvent::ExtendedData { id, data, .. } => {
            s.connection().consume(id, data.len())
        }
        _ => {}
    }
    0
}
