//! What the gateway lets the target hop do (issue 11 #9): certificates bound to the
//! gateway's address (`[ca] source_address`, checked by a real sshd), forwarded-tcpip
//! channels from a target only for a remote forward the client asked for and was granted,
//! and nothing said on a session before it starts (scripted targets, since sshd does
//! neither). Needs root (sshd, logging in as root).

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Stdio},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use portcullis_testbed::{root_or_skip, Gateway, GatewayOptions};
use russh::{
    keys::{Algorithm, Certificate, PrivateKey},
    server::{self, Auth, Session},
    ChannelOpenFailure,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn with_source_address(list: &str) -> Gateway {
    Gateway::start(
        Path::new(BIN),
        &GatewayOptions {
            extra: format!("\n[ca]\nsource_address = {list}\n"),
            ..Default::default()
        },
    )
}

/// The proxy dials the target from 127.0.0.1 here: a certificate limited to that address
/// logs in; one limited to another address is refused by sshd itself.
#[test]
fn sshd_enforces_the_certificates_source_address() {
    if !root_or_skip() {
        return;
    }
    let g = with_source_address(r#"["127.0.0.1", "2001:db8::1/128"]"#);
    let o = g.run(&[], &["root@127.0.0.1", "echo ok"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ok\n",
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        g.sshd.log()
    );
    drop(g);

    let g = with_source_address(r#"["198.18.0.1"]"#);
    let o = g.run(&[], &["root@127.0.0.1", "echo ok"]);
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not accept the gateway's certificate"), "{err}");
    let denied = g
        .audit()
        .into_iter()
        .any(|e| e["event"] == "deny" && e["reason"] == "upstream_auth_failed");
    assert!(denied, "{:?}", g.audit());
    let log = g.sshd.log();
    assert!(log.contains("not from a permitted source address"), "{log}");
}

const FORWARDING: &str = r#"
[[policy]]
name = "ops-forward"
application = "ssh"
action = "allow"
precedence = 0
include = [{ group = "ops" }]
logins = ["root"]
forwarding = ["remote"]
"#;

/// What the scripted target saw of the forwarded-tcpip channels it tried to open.
#[derive(Debug)]
struct Tried {
    /// (address, port) it reported → how the proxy answered.
    opens: Vec<((String, u32), Result<(), String>)>,
    /// Bytes echoed back through the granted forward.
    echoed: Vec<u8>,
}

/// A target that accepts the gateway's certificate, grants a `tcpip-forward` and then
/// reports connections: first on listens nobody asked for (another port, another address),
/// then on the granted one, through which it sends a line and reads the echo.
struct Target {
    report: mpsc::Sender<Tried>,
}

async fn open(h: &server::Handle, address: &str, port: u32) -> Result<russh::Channel<server::Msg>, String> {
    match h
        .channel_open_forwarded_tcpip(address, port, "192.0.2.7", 40000)
        .await
    {
        Ok(c) => Ok(c),
        Err(russh::Error::ChannelOpenFailure(r)) => Err(format!("{r:?}")),
        Err(e) => Err(e.to_string()),
    }
}

impl server::Handler for Target {
    type Error = russh::Error;

    async fn auth_openssh_certificate(&mut self, _user: &str, _c: &Certificate) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        s: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (h, report, address, port) = (s.handle(), self.report.clone(), address.to_string(), *port);
        tokio::spawn(async move {
            let mut opens = Vec::new();
            for (a, p) in [(address.clone(), port + 1), ("10.9.9.9".to_string(), port)] {
                let r = open(&h, &a, p).await.map(drop);
                opens.push(((a, p), r));
            }
            let mut echoed = Vec::new();
            match open(&h, &address, port).await {
                Ok(mut ch) => {
                    opens.push(((address.clone(), port), Ok(())));
                    let _ = ch.data(&b"through the forward\n"[..]).await;
                    while let Some(m) = ch.wait().await {
                        if let russh::ChannelMsg::Data { data } = m {
                            echoed.extend_from_slice(&data);
                            if echoed.ends_with(b"\n") {
                                break;
                            }
                        }
                    }
                }
                Err(e) => opens.push(((address.clone(), port), Err(e))),
            }
            let _ = report.send(Tried { opens, echoed });
        });
        Ok(true)
    }
}

/// Serves `Target` on `addr` (the gateway's target address, where no sshd listens).
fn scripted_target(addr: SocketAddr) -> mpsc::Receiver<Tried> {
    let (tx, rx) = mpsc::channel();
    serve_scripted(addr, move || Target { report: tx.clone() });
    rx
}

/// Serves a handler `make` gives for each connection on `addr`, with a fresh host key and
/// publickey authentication (the gateway's certificate).
fn serve_scripted<H: server::Handler + Send + 'static>(
    addr: SocketAddr,
    make: impl Fn() -> H + Send + 'static,
) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let config = Arc::new(server::Config {
                keys: vec![PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()],
                methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
                ..Default::default()
            });
            while let Ok((s, _)) = listener.accept().await {
                let (config, h) = (config.clone(), make());
                tokio::spawn(async move {
                    if let Ok(running) = server::run_stream(config, s, h).await {
                        let _ = running.await;
                    }
                });
            }
        });
    });
}

/// A one-shot line echo server: where the client's side of the forward connects.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 256];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    port
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The issue: `upstream.rs` joined every connection the target reported for `-R`. Now one
/// on a listen the client did not ask for (another port, another address) is refused as
/// administratively prohibited and audited; the granted one still works end to end.
#[test]
fn forwarded_connections_only_for_granted_remote_forwards() {
    if !root_or_skip() {
        return;
    }
    let g = Gateway::start(
        Path::new(BIN),
        &GatewayOptions {
            extra: FORWARDING.into(),
            target_down: true,
            ..Default::default()
        },
    );
    let tried = scripted_target(g.target);
    let echo = echo_server();
    let remote = 40123;
    let _client = Kill(
        g.ssh(
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("{remote}:127.0.0.1:{echo}"),
            ],
            &["root@127.0.0.1"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let t = tried
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the target never got a forward: {}", g.daemon_log()));
    let prohibited = format!("{:?}", ChannelOpenFailure::AdministrativelyProhibited);
    let asked = t.opens.last().map(|((a, _), _)| a.clone()).unwrap_or_default();
    let expect = [
        ((asked.clone(), remote + 1), Err(prohibited.clone())),
        (("10.9.9.9".to_string(), remote), Err(prohibited)),
        ((asked.clone(), remote), Ok(())),
    ];
    assert_eq!(t.opens, expect, "{}", g.daemon_log());
    assert_eq!(t.echoed, b"through the forward\n");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = g.audit();
        let refused: Vec<String> = audit
            .iter()
            .filter(|e| e["reason"] == "forwarded_tcpip_refused")
            .map(|e| e["rule"].as_str().unwrap_or_default().to_string())
            .collect();
        let joined = audit.iter().any(|e| e["reason"] == "forwarded_tcpip");
        if refused.len() == 2 && joined {
            assert!(
                refused[0].starts_with(&format!("{asked}:{}", remote + 1)),
                "{refused:?}"
            );
            assert!(
                refused[1].starts_with(&format!("10.9.9.9:{remote}")),
                "{refused:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{audit:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A target that speaks on a session channel before it is asked to start anything, then
/// runs any `exec` as printing one line.
struct Chatty;

impl server::Handler for Chatty {
    type Error = russh::Error;

    async fn auth_openssh_certificate(&mut self, _user: &str, _c: &Certificate) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: russh::Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let h = session.handle();
        tokio::spawn(async move {
            reply.accept().await;
            let _ = h.data(channel.id(), &b"said before any request\n"[..]).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(channel);
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: russh::ChannelId,
        _command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.data(channel, &b"the command's output\n"[..])?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

/// sshd says nothing on a session channel before the client asks for a shell, a command or
/// a subsystem, and the recording starts with that request: what a target sends before it
/// would reach the client unrecorded, so it is dropped. What follows the request is
/// relayed and recorded.
#[test]
fn what_a_target_says_before_the_session_starts_is_dropped() {
    if !root_or_skip() {
        return;
    }
    let g = Gateway::start(
        Path::new(BIN),
        &GatewayOptions {
            record: true,
            target_down: true,
            ..Default::default()
        },
    );
    serve_scripted(g.target, || Chatty);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async {
        let h = support::login(g.proxy_port).await;
        let mut ch = h.channel_open_session().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        ch.exec(true, "anything").await.unwrap();
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await {
            if let russh::ChannelMsg::Data { data } = m {
                out.extend_from_slice(&data);
            }
        }
        out
    });
    assert_eq!(
        String::from_utf8_lossy(&out),
        "the command's output\n",
        "{}",
        g.daemon_log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.audit().iter().any(|e| e["event"] == "recording.end") {
        assert!(Instant::now() < deadline, "no recording.end: {:?}", g.audit());
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = g.recordings();
    let key = portcullis::recording::keys::load_private(&g.private_key()).unwrap();
    let d = portcullis::recording::reader::decrypt(&logs[0], &key).unwrap();
    let from_target = d.data_from(1);
    assert_eq!(String::from_utf8_lossy(&from_target), "the command's output\n");
}
