//! The engine against real OpenSSH (Debian's 9.2 here): the stock `ssh`, `sftp` and `scp`
//! clients against a small server on the engine (tests/support), and the engine's client
//! role against a real `sshd` with a certificate login. Skipped without OpenSSH.

mod support;

use std::{io::Write, process::Stdio};

use support::{ssh, TestServer};

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn openssh_client_runs_commands_with_exit_status() {
    if !have("ssh") {
        eprintln!("skipped: no ssh");
        return;
    }
    let srv = TestServer::start();
    let out = ssh(srv.port, &["root@127.0.0.1", "echo hello; echo oops >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// Every key exchange, cipher and MAC OpenSSH 9.2 and the engine share, negotiated by the
/// stock client (mlkem768x25519-sha256 arrived in OpenSSH 9.9: tested in memory only).
#[test]
fn openssh_client_negotiates_every_algorithm() {
    if !have("ssh") {
        return;
    }
    let srv = TestServer::start();
    let kex = [
        "sntrup761x25519-sha512",
        "sntrup761x25519-sha512@openssh.com",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group14-sha256",
    ];
    for k in kex {
        negotiates(
            &srv,
            &[&format!("KexAlgorithms={k}")],
            &format!("kex: algorithm: {k}"),
        );
    }
    for c in [
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
    ] {
        negotiates(&srv, &[&format!("Ciphers={c}")], &format!("cipher: {c}"));
    }
    for c in ["aes128-ctr", "aes192-ctr", "aes256-ctr"] {
        for m in [
            "hmac-sha2-256",
            "hmac-sha2-512",
            "hmac-sha2-256-etm@openssh.com",
            "hmac-sha2-512-etm@openssh.com",
        ] {
            negotiates(
                &srv,
                &[&format!("Ciphers={c}"), &format!("MACs={m}")],
                &format!("cipher: {c} MAC: {m}"),
            );
        }
    }
}

/// `ssh -o OPTION… -v` runs `echo ok` on the test server and its log says `expect`.
fn negotiates(srv: &TestServer, options: &[&str], expect: &str) {
    let mut args: Vec<&str> = options.iter().flat_map(|o| ["-o", o]).collect();
    args.extend(["-v", "root@127.0.0.1", "echo ok"]);
    let out = ssh(srv.port, &args).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{options:?}: {log}");
    assert!(log.contains(expect), "{options:?}: {log}");
}

/// A remote `cat` of 96 MiB of random bytes: both directions at once, with the client
/// rekeying every 16 MiB. Hashes compared.
#[test]
fn openssh_client_two_way_cat_with_rekeys() {
    if !have("ssh") {
        return;
    }
    let srv = TestServer::start();
    let dir = std::env::temp_dir().join(portcullis_testbed::unique("engine-cat-"));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in");
    let mut data = vec![0u8; 96 << 20];
    aws_lc_rs::rand::fill(&mut data).unwrap();
    std::fs::write(&input, &data).unwrap();
    let out = ssh(srv.port, &["-o", "RekeyLimit=16M", "-v", "root@127.0.0.1", "cat"])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        out.stdout == data,
        "{} bytes back, {} sent",
        out.stdout.len(),
        data.len()
    );
    assert!(
        log.matches("SSH2_MSG_NEWKEYS received").count() > 3,
        "rekeys: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn openssh_sftp_and_scp_through_the_engine() {
    if !have("sftp") || !std::path::Path::new("/usr/lib/openssh/sftp-server").exists() {
        return;
    }
    let srv = TestServer::start();
    let dir = std::env::temp_dir().join(portcullis_testbed::unique("engine-sftp-"));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src");
    let mut data = vec![0u8; 3 << 20];
    aws_lc_rs::rand::fill(&mut data).unwrap();
    std::fs::write(&src, &data).unwrap();
    let opts = [
        "-P".to_string(),
        srv.port.to_string(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
    ];
    let mut sftp = std::process::Command::new("sftp")
        .args(&opts)
        .args(["-b", "-", "root@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        sftp.stdin.take().unwrap(),
        "put {} {}\nget {} {}\n",
        src.display(),
        dir.join("put").display(),
        dir.join("put").display(),
        dir.join("got").display()
    )
    .unwrap();
    let out = sftp.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read(dir.join("got")).unwrap() == data);
    let out = std::process::Command::new("scp")
        .args(&opts)
        .arg(&src)
        .arg(format!("root@127.0.0.1:{}", dir.join("scp").display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read(dir.join("scp")).unwrap() == data);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The engine's client role against a real sshd that trusts a CA: it logs in with a user
/// certificate (as the gateway does upstream), runs a command, gets its output, stderr and
/// exit status; and sends a `break`, which sshd answers (it has no tty to pass it to: the
/// answer is a failure, but an answer).
#[test]
fn engine_client_logs_in_to_sshd_with_a_certificate() {
    use portcullis_ssh::{
        auth::{ClientAuthEvent, ClientCredential},
        connection::{ChannelKind, ChannelRequest, ConnectionConfig, ConnectionEvent, Side},
        session::{Session, SessionEvent},
        transport::{TransportConfig, TransportEvent},
    };
    use ssh_key::{certificate::Builder, private::Ed25519Keypair, PrivateKey};
    use std::io::Read;
    if !have("sshd") {
        return;
    }
    let ca = PrivateKey::from(Ed25519Keypair::from_seed(&[5; 32]));
    let user = PrivateKey::from(Ed25519Keypair::from_seed(&[6; 32]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut b = Builder::new(
        [1u8; 32],
        user.public_key().key_data().clone(),
        now - 60,
        now + 180,
    )
    .unwrap();
    b.cert_type(ssh_key::certificate::CertType::User).unwrap();
    b.valid_principal("root").unwrap();
    b.key_id("engine-test").unwrap();
    let cert = b.sign(&ca).unwrap();
    let port = portcullis_testbed::free_port();
    let sshd = portcullis_testbed::Sshd::start(
        None,
        format!("127.0.0.1:{port}").parse().unwrap(),
        &portcullis_testbed::SshdOptions {
            trusted_ca: Some(ca.public_key().to_openssh().unwrap()),
            ..Default::default()
        },
    );
    let mut sock = std::net::TcpStream::connect(sshd.addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut s = Session::client(
        TransportConfig::client(),
        "root".into(),
        ClientCredential::PublicKey {
            key: user,
            certificate: Some(cert),
        },
        ConnectionConfig::new(Side::Client),
    );
    let (mut stdout, mut stderr, mut status, mut break_answered) = (Vec::new(), Vec::new(), None, false);
    let mut chan = None;
    let mut kex = None;
    let mut buf = vec![0u8; 65536];
    loop {
        while !s.output().is_empty() {
            let n = sock.write(s.output()).unwrap();
            s.advance_output(n);
        }
        let n = sock
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reading from sshd: {e}: {}", sshd.log()));
        if n == 0 {
            break;
        }
        s.recv(&buf[..n])
            .unwrap_or_else(|e| panic!("{e}: {}", sshd.log()));
        while let Some(ev) = s.poll_event() {
            match ev {
                SessionEvent::Transport(TransportEvent::PeerHostKey(_)) => {
                    s.transport().host_key_verdict(true)
                }
                SessionEvent::Transport(TransportEvent::KexDone { algorithms, .. }) => kex = Some(algorithms),
                SessionEvent::ClientAuth(ClientAuthEvent::Success) => {
                    let id = s.connection().open(ChannelKind::Session);
                    chan = Some(id);
                }
                SessionEvent::ClientAuth(e) => panic!("{e:?}: {}", sshd.log()),
                SessionEvent::Connection(ConnectionEvent::ChannelOpenConfirmed { id }) => {
                    s.connection()
                        .request(id, ChannelRequest::Break { length_ms: 100 }, true);
                    let command = bytes::Bytes::from_static(b"echo hi from sshd; echo err >&2; exit 7");
                    s.connection().request(id, ChannelRequest::Exec { command }, true);
                }
                SessionEvent::Connection(ConnectionEvent::RequestReply { .. }) if !break_answered => {
                    break_answered = true
                }
                SessionEvent::Connection(ConnectionEvent::Data { id, data }) => {
                    stdout.extend_from_slice(&data);
                    s.connection().consume(id, data.len());
                }
                SessionEvent::Connection(ConnectionEvent::ExtendedData { id, data, .. }) => {
                    stderr.extend_from_slice(&data);
                    s.connection().consume(id, data.len());
                }
                SessionEvent::Connection(ConnectionEvent::Request {
                    request: ChannelRequest::ExitStatus { status: st },
                    ..
                }) => status = Some(st),
                // sshd may send EOF before exit-status: wait for its CLOSE (the engine answers it).
                SessionEvent::Connection(ConnectionEvent::Closed { .. }) => {
                    s.disconnect(portcullis_ssh::msg::disconnect::BY_APPLICATION, "done");
                }
                _ => {}
            }
        }
        s.flush().unwrap();
        if s.is_closed() {
            let out = s.output().to_vec();
            let _ = sock.write_all(&out);
            break;
        }
    }
    assert!(chan.is_some());
    assert_eq!(String::from_utf8_lossy(&stdout), "hi from sshd\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "err\n");
    assert_eq!(status, Some(7));
    assert!(break_answered);
    let kex = kex.unwrap();
    // The post-quantum hybrid OpenSSH 9.2 prefers, not a downgrade.
    assert!(kex.kex.starts_with("sntrup761x25519-sha512"), "{kex:?}");
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );
    assert!(sshd.log().contains("ID engine-test"), "{}", sshd.log());
}

/// RFC 4335: OpenSSH's `~B` escape (it needs a terminal: `script` gives it one) reaches the
/// engine as a `break` request.
#[test]
fn openssh_escape_b_arrives_as_a_break() {
    if !have("ssh") || !have("script") {
        return;
    }
    let srv = TestServer::start();
    let cmd = format!(
        "ssh -tt -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes \
         -o LogLevel=ERROR -o EscapeChar='~' root@127.0.0.1 'sleep 20'",
        srv.port
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    // The escape is only seen at the start of a line, once the session is up: repeat it
    // until the server has counted a break.
    while srv.seen.breaks.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "no break arrived");
        let _ = stdin.write_all(b"\r~B");
        let _ = stdin.flush();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}
