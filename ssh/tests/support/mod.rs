//! A small SSH server built on the engine, for tests against real OpenSSH clients: any user,
//! `none`/publickey/keyboard-interactive accepted; `exec` and `shell` run `sh`, the `sftp`
//! subsystem runs OpenSSH's sftp-server; `break` requests are counted. Flow control end to
//! end: a child's stdin is credited to the client only once written, a child's output is
//! read only as the client's window allows.
#![allow(dead_code)]

use std::{
    collections::{HashMap, VecDeque},
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use portcullis_ssh::{
    auth::{ServerAuthConfig, ServerAuthEvent},
    connection::{ChannelId, ChannelKind, ChannelRequest, ConnectionConfig, ConnectionEvent, Side},
    session::{Session, SessionEvent},
    transport::TransportConfig,
};
use ssh_key::{private::Ed25519Keypair, PrivateKey};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

/// What the server saw, for assertions.
#[derive(Default)]
pub struct Seen {
    pub breaks: AtomicUsize,
    pub connections: AtomicUsize,
}

pub struct TestServer {
    pub port: u16,
    pub host_key: PrivateKey,
    pub seen: Arc<Seen>,
    _rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl Fn(&mut TransportConfig) + Send + Sync + 'static) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let port = portcullis_testbed::free_port();
        let host_key = PrivateKey::from(Ed25519Keypair::from_seed(&[42; 32]));
        let seen = Arc::new(Seen::default());
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", port))).unwrap();
        let (key, s2) = (host_key.clone(), seen.clone());
        let tweak = Arc::new(tweak);
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                s2.connections.fetch_add(1, Ordering::Relaxed);
                let mut cfg = TransportConfig::server(vec![key.clone()]);
                tweak(&mut cfg);
                tokio::spawn(serve(stream, cfg, s2.clone()));
            }
        });
        TestServer {
            port,
            host_key,
            seen,
            _rt: rt,
        }
    }
}

/// Messages from a channel's child tasks to the connection's loop.
enum FromChild {
    /// Output to send; the reader waits for `ack` before it reads more.
    Output {
        id: ChannelId,
        code: Option<u32>,
        data: Bytes,
        ack: oneshot::Sender<()>,
    },
    OutputDone {
        id: ChannelId,
    },
    /// `n` bytes of client data reached the child's stdin: credit them.
    Written {
        id: ChannelId,
        n: usize,
    },
    Exited {
        id: ChannelId,
        status: u32,
    },
}

#[derive(Default)]
struct Chan {
    stdin: Option<mpsc::UnboundedSender<Bytes>>,
    pending: VecDeque<(Option<u32>, Bytes, Option<oneshot::Sender<()>>)>,
    outputs_open: usize,
    exit: Option<u32>,
    finished: bool,
    client_eof: bool,
}

async fn serve(stream: TcpStream, cfg: TransportConfig, seen: Arc<Seen>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut s = Session::server(
        cfg,
        ServerAuthConfig::default(),
        ConnectionConfig::new(Side::Server),
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<FromChild>();
    let mut chans: HashMap<ChannelId, Chan> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Output taken from the session and not yet written: reading goes on while the socket
    // is not writable (both peers may be writing at once).
    let (mut out, mut off) = (Vec::new(), 0usize);
    loop {
        if off == out.len() {
            out.clear();
            off = 0;
            out.extend_from_slice(s.output());
            let n = out.len();
            s.advance_output(n);
        }
        if s.is_closed() && out.is_empty() {
            return;
        }
        tokio::select! {
            r = wr.write(&out[off..]), if off < out.len() => match r {
                Ok(n) if n > 0 => off += n,
                _ => return,
            },
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if s.recv(&buf[..n]).is_err() { continue },
            },
            Some(m) = rx.recv() => match m {
                FromChild::Output { id, code, data, ack } => {
                    if let Some(c) = chans.get_mut(&id) { c.pending.push_back((code, data, Some(ack))); }
                }
                FromChild::OutputDone { id } => if let Some(c) = chans.get_mut(&id) { c.outputs_open -= 1; },
                FromChild::Written { id, n } => s.connection().consume(id, n),
                FromChild::Exited { id, status } => if let Some(c) = chans.get_mut(&id) { c.exit = Some(status); },
            },
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                SessionEvent::ServerAuth(ServerAuthEvent::Attempt { .. }) => {
                    if let Some(a) = s.server_auth() {
                        a.accept();
                    }
                }
                SessionEvent::Connection(ev) => on_connection(&mut s, ev, &mut chans, &tx, &seen),
                _ => {}
            }
        }
        // Send what the windows allow; finish channels whose child is done.
        for (id, c) in chans.iter_mut() {
            while let Some((code, data, ack)) = c.pending.front_mut() {
                let n = match code {
                    Some(code) => s.connection().send_extended_data(*id, *code, data),
                    None => s.connection().send_data(*id, data),
                };
                let _ = data.split_to(n);
                if !data.is_empty() {
                    break;
                }
                if let Some(ack) = ack.take() {
                    let _ = ack.send(());
                }
                c.pending.pop_front();
            }
            if !c.finished && c.pending.is_empty() && c.outputs_open == 0 {
                if let Some(status) = c.exit {
                    c.finished = true;
                    s.connection()
                        .request(*id, ChannelRequest::ExitStatus { status }, false);
                    s.connection().eof(*id);
                    s.connection().close(*id);
                }
            }
        }
        if s.flush().is_err() {
            continue;
        }
    }
}

fn on_connection(
    s: &mut Session,
    ev: ConnectionEvent,
    chans: &mut HashMap<ChannelId, Chan>,
    tx: &mpsc::UnboundedSender<FromChild>,
    seen: &Seen,
) {
    match ev {
        ConnectionEvent::ChannelOpen {
            id,
            kind: ChannelKind::Session,
        } => {
            s.connection().accept_open(id);
            chans.insert(id, Chan::default());
        }
        ConnectionEvent::ChannelOpen { id, .. } => s.connection().reject_open(id, 1, "not here"),
        ConnectionEvent::Request {
            id,
            request,
            want_reply,
        } => {
            let ok = match request {
                ChannelRequest::Exec { command } => {
                    spawn(id, "sh", &["-c", &String::from_utf8_lossy(&command)], chans, tx);
                    true
                }
                ChannelRequest::Shell => {
                    spawn(id, "sh", &[], chans, tx);
                    true
                }
                ChannelRequest::Subsystem { name } if name == "sftp" => {
                    spawn(id, "/usr/lib/openssh/sftp-server", &[], chans, tx);
                    true
                }
                ChannelRequest::Break { .. } => {
                    seen.breaks.fetch_add(1, Ordering::Relaxed);
                    true
                }
                ChannelRequest::PtyReq { .. }
                | ChannelRequest::Env { .. }
                | ChannelRequest::WindowChange { .. } => true,
                _ => false,
            };
            if want_reply {
                s.connection().reply(id, ok);
            }
        }
        ConnectionEvent::Data { id, data } => match chans.get(&id).and_then(|c| c.stdin.as_ref()) {
            Some(stdin) => {
                let _ = stdin.send(data);
            }
            None => s.connection().consume(id, data.len()),
        },
        ConnectionEvent::Eof { id } => {
            if let Some(c) = chans.get_mut(&id) {
                c.client_eof = true;
                c.stdin = None;
            }
        }
        ConnectionEvent::Closed { id } => {
            chans.remove(&id);
        }
        _ => {}
    }
}

fn spawn(
    id: ChannelId,
    prog: &str,
    args: &[&str],
    chans: &mut HashMap<ChannelId, Chan>,
    tx: &mpsc::UnboundedSender<FromChild>,
) {
    let Some(c) = chans.get_mut(&id) else { return };
    let mut child = match tokio::process::Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(ch) => ch,
        Err(_) => {
            c.exit = Some(127);
            return;
        }
    };
    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Bytes>();
    if !c.client_eof {
        c.stdin = Some(in_tx);
    }
    let mut stdin = child.stdin.take().unwrap();
    let t = tx.clone();
    tokio::spawn(async move {
        while let Some(b) = in_rx.recv().await {
            if stdin.write_all(&b).await.is_err() {
                break;
            }
            let _ = t.send(FromChild::Written { id, n: b.len() });
        }
    });
    c.outputs_open = 2;
    for (code, mut out) in [
        (
            None,
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        ),
        (Some(1), Box::new(child.stderr.take().unwrap())),
    ] {
        let t = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = out.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let (ack, done) = oneshot::channel();
                let data = Bytes::copy_from_slice(&buf[..n]);
                if t.send(FromChild::Output { id, code, data, ack }).is_err() || done.await.is_err() {
                    break;
                }
            }
            let _ = t.send(FromChild::OutputDone { id });
        });
    }
    let t = tx.clone();
    tokio::spawn(async move {
        let status = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(255) as u32;
        let _ = t.send(FromChild::Exited { id, status });
    });
}

/// `ssh` against the test server with throwaway host-key checking; `extra` are more options.
pub fn ssh(port: u16, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("ssh");
    c.args([
        "-p",
        &port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]);
    c.args(extra);
    c
}
