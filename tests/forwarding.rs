//! Forwarding through the proxy — ports (`-L`, `-R`), the agent (`-A`) and X11 (`-Y`):
//! refused (and audited) unless the allowing policy grants it; then it works end to end.
//! Needs root (sshd).

mod support;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use portcullis_testbed::{free_port, Gateway, GatewayOptions};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A gateway whose policy grants every supported forwarding.
fn granting() -> Gateway {
    Gateway::start(
        Path::new(BIN),
        &GatewayOptions {
            extra: FORWARDING.into(),
            ..Default::default()
        },
    )
}

const FORWARDING: &str = r#"
[[policy]]
name = "ops-forward"
application = "ssh"
action = "allow"
precedence = 0
include = [{ group = "ops" }]
logins = ["root"]
forwarding = ["local", "remote", "agent", "x11"]
"#;

/// A one-shot echo server on loopback.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 64];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    port
}

struct Tunnel(Child);

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ssh -N -L local:127.0.0.1:remote` through the proxy; returns the local port once open.
fn tunnel(g: &Gateway, remote: u16) -> (Tunnel, u16) {
    let local = free_port();
    let child = g
        .ssh(
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("{local}:127.0.0.1:{remote}"),
            ],
            &["root@127.0.0.1"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", local)).is_err() {
        assert!(Instant::now() < deadline, "the tunnel did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Tunnel(child), local)
}

fn roundtrip(port: u16) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"ping through the gateway")?;
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    out.extend_from_slice(&buf[..n]);
    Ok(out)
}

#[test]
fn local_forwarding_works_only_when_the_policy_allows_it() {
    if !support::privileged() {
        return;
    }
    let echo = echo_server();

    // Default policy: the forwarding channel is refused; the client's connection just ends.
    let g = Gateway::start(Path::new(BIN), &GatewayOptions::default());
    let (_t, local) = tunnel(&g, echo);
    let r = roundtrip(local);
    assert!(
        r.as_ref().map(|v| v.is_empty()).unwrap_or(true),
        "refused forwarding carried data: {r:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        g.audit()
            .iter()
            .any(|e| e["reason"] == "local_forwarding_refused"),
        "{:?}",
        g.audit()
    );
    drop(_t);
    drop(g);

    // A policy that grants it: the bytes go through the target.
    let g = granting();
    let (_t, local) = tunnel(&g, echo);
    assert_eq!(roundtrip(local).unwrap(), b"ping through the gateway");
    let audit = g.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["reason"] == "local_forwarding" && e["rule"] == format!("127.0.0.1:{echo}")),
        "{audit:?}"
    );
    assert!(audit
        .iter()
        .any(|e| e["event"] == "session.start" && e["policy"] == "ops-forward"));
}

/// Refusals and failures cost a client one message each, so past a cap per connection they
/// are only counted; what the gateway lets run is audited however many came first, and a
/// command is audited whole even when its first 3 KB are blanks. A destination is the
/// client's text: its event is bounded.
#[test]
fn what_runs_is_audited_after_any_number_of_refusals() {
    if !support::privileged() {
        return;
    }
    let echo = echo_server();
    let closed = free_port();
    let g = granting();
    let long = format!("{}echo MARK", " ".repeat(3000));
    support::runtime().block_on(async {
        let h = support::login(g.proxy_port).await;
        let junk = "\u{1}".repeat(100_000);
        let failed = h.channel_open_direct_tcpip(junk, 22, "127.0.0.1", 1).await;
        assert!(failed.is_err(), "no such host");
        for _ in 0..299 {
            let failed = h
                .channel_open_direct_tcpip("127.0.0.1", u32::from(closed), "127.0.0.1", 1)
                .await;
            assert!(failed.is_err(), "nothing listens on {closed}");
        }
        let ch = h
            .channel_open_direct_tcpip("127.0.0.1", u32::from(echo), "127.0.0.1", 1)
            .await
            .unwrap();
        ch.close().await.unwrap();
        let (out, status) = support::exec_on(&h, &long).await;
        assert_eq!((out.as_slice(), status), (&b"MARK\n"[..], Some(0)));
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = g.audit();
        if audit.iter().any(|e| e["event"] == "session.end") || Instant::now() > deadline {
            break audit;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let failed = audit
        .iter()
        .filter(|e| e["reason"] == "local_forwarding_failed")
        .count();
    assert_eq!(failed, 256, "refusals audited up to the cap");
    let widest = g.audit().iter().map(|e| e.to_string().len()).max().unwrap_or(0);
    assert!(widest < 20_000, "an event of {widest} bytes");
    assert!(
        audit
            .iter()
            .any(|e| e["reason"] == "local_forwarding" && e["rule"] == format!("127.0.0.1:{echo}")),
        "the forwarding that ran is audited"
    );
    assert!(
        audit
            .iter()
            .any(|e| e["reason"] == "exec" && e["rule"] == long.as_str()),
        "the command is audited whole"
    );
    let end = audit
        .iter()
        .find(|e| e["event"] == "session.end")
        .expect("session.end");
    assert!(
        end["reason"]
            .as_str()
            .unwrap()
            .contains("channel_events_not_audited=44"),
        "{end}"
    );
}

#[test]
fn remote_forwarding_works_only_when_the_policy_allows_it() {
    if !support::privileged() {
        return;
    }
    let echo = echo_server();
    let remote = free_port();
    let spec = format!("{remote}:127.0.0.1:{echo}");

    // Refused by default: OpenSSH gives up on the forwarding and says so.
    let g = Gateway::start(Path::new(BIN), &GatewayOptions::default());
    let o = g.run(
        &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec],
        &["root@127.0.0.1"],
    );
    assert_eq!(
        o.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("remote port forwarding failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(g
        .audit()
        .iter()
        .any(|e| e["reason"] == "remote_forwarding_refused"));
    drop(g);

    // Granted: the target listens on `remote`; connections come back to the client's side.
    let g = granting();
    let child = g
        .ssh(
            &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec],
            &["root@127.0.0.1"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _t = Tunnel(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", remote)).is_err() {
        assert!(Instant::now() < deadline, "the target never listened on {remote}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(roundtrip(remote).unwrap(), b"ping through the gateway");
    assert!(
        g.audit().iter().any(|e| e["reason"] == "remote_forwarding"),
        "{:?}",
        g.audit()
    );
    // Each connection the target forwarded back is audited too.
    assert!(
        g.audit().iter().any(|e| e["reason"] == "forwarded_tcpip"),
        "{:?}",
        g.audit()
    );
}

/// An ssh-agent holding one fresh key, stopped on drop.
struct Agent {
    child: Child,
    sock: std::path::PathBuf,
    fingerprint: String,
}

impl Agent {
    fn start(dir: &Path) -> Self {
        let sock = dir.join("agent.sock");
        let child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let key = dir.join("agent_key");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        let st = std::process::Command::new("ssh-add")
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &sock)
            .status()
            .unwrap();
        assert!(st.success());
        let fp = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub"))
            .output()
            .unwrap();
        let fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        Self {
            child,
            sock,
            fingerprint,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh -A … ssh-add -l` with the agent as identity agent (the test options' `IdentityAgent
/// none` would also turn forwarding off).
fn with_agent(g: &Gateway, agent: &Agent) -> std::process::Output {
    std::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            g.dir.join("known_hosts").display()
        ))
        .arg("-o")
        .arg(format!("IdentityAgent={}", agent.sock.display()))
        .args([
            "-A",
            "-p",
            &g.proxy_port.to_string(),
            "root@127.0.0.1",
            "ssh-add -l",
        ])
        .output()
        .unwrap()
}

#[test]
fn agent_forwarding_works_only_when_the_policy_allows_it() {
    if !support::privileged() {
        return;
    }
    let g = Gateway::start(Path::new(BIN), &GatewayOptions::default());
    let agent = Agent::start(&g.dir);
    // Refused by default: the target sees no agent.
    let o = with_agent(&g, &agent);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let events: Vec<String> = g
        .audit()
        .iter()
        .map(|e| format!("{} {}", e["event"], e["reason"]))
        .collect();
    assert!(
        events.iter().any(|e| e.contains("agent_forwarding_refused")),
        "{events:?}"
    );
    drop(agent);
    drop(g);

    // Granted: the target lists the client's key through the forwarded agent.
    let g = granting();
    let agent = Agent::start(&g.dir);
    let o = with_agent(&g, &agent);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&agent.fingerprint),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(g.audit().iter().any(|e| e["reason"] == "agent_forwarding"));
    assert!(
        g.audit().iter().any(|e| e["reason"] == "agent_channel"),
        "the target's use of the agent is audited: {:?}",
        g.audit()
    );
}

/// A stand-in X server on the client's side: accepts one connection, reads the X11
/// connection setup, and answers with a marker. Returns the display number and a receiver
/// for the authorisation protocol name it was shown.
fn fake_x_server() -> (u16, std::sync::mpsc::Receiver<String>) {
    let (l, display) = (100u16..400)
        .find_map(|n| TcpListener::bind(("127.0.0.1", 6000 + n)).ok().map(|l| (l, n)))
        .expect("a free X display port");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else { return };
        let mut head = [0u8; 12];
        if c.read_exact(&mut head).is_err() {
            return;
        }
        let name_len = u16::from_le_bytes([head[6], head[7]]) as usize;
        let data_len = u16::from_le_bytes([head[8], head[9]]) as usize;
        let padded = |n: usize| n.div_ceil(4) * 4;
        let mut rest = vec![0u8; padded(name_len) + padded(data_len)];
        if c.read_exact(&mut rest).is_err() {
            return;
        }
        let _ = tx.send(String::from_utf8_lossy(&rest[..name_len]).into_owned());
        let _ = c.write_all(b"XOK-FAKE");
    });
    (display, rx)
}

/// Plays an X client on the target: connects to the forwarded display with the cookie the
/// target's xauth holds (sshd's X listener is on the target's loopback, which is ours).
fn x_client(display: &str, xauth_line: &str) -> String {
    let n: u16 = display
        .rsplit_once(':')
        .and_then(|(_, d)| d.split('.').next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("DISPLAY {display:?}"));
    let mut f = xauth_line.split_whitespace().skip(1);
    let (proto, cookie) = (f.next().unwrap(), f.next().unwrap());
    let cookie: Vec<u8> = (0..cookie.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cookie[i..i + 2], 16).unwrap())
        .collect();
    let pad = |b: &[u8]| {
        let mut v = b.to_vec();
        v.resize(b.len().div_ceil(4) * 4, 0);
        v
    };
    let mut req = vec![b'l', 0, 11, 0, 0, 0];
    req.extend((proto.len() as u16).to_le_bytes());
    req.extend((cookie.len() as u16).to_le_bytes());
    req.extend([0, 0]);
    req.extend(pad(proto.as_bytes()));
    req.extend(pad(&cookie));
    let mut s = TcpStream::connect(("127.0.0.1", 6000 + n)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// `ssh -Y` with DISPLAY pointing at the fake server; the remote side prints its DISPLAY
/// and xauth entry, then waits for the test to play the X client.
fn with_x11(g: &Gateway, display: u16) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut c = g
        .ssh(
            &["-Y", "-o", "ForwardX11Trusted=yes"],
            &[
                "root@127.0.0.1",
                "echo \"display=$DISPLAY\"; xauth list; sleep 20",
            ],
        )
        .env("DISPLAY", format!("127.0.0.1:{display}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(c.stdout.take().unwrap());
    (c, out)
}

#[test]
fn x11_forwarding_works_only_when_the_policy_allows_it() {
    use std::io::BufRead;
    if !support::privileged() {
        return;
    }
    // Refused by default: the target gets no DISPLAY.
    let g = Gateway::start(Path::new(BIN), &GatewayOptions::default());
    let (display, _) = fake_x_server();
    let (mut c, mut out) = with_x11(&g, display);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let _ = c.kill();
    let _ = c.wait();
    assert_eq!(line.trim(), "display=", "{line}");
    assert!(
        g.audit().iter().any(|e| e["reason"] == "x11_forwarding_refused"),
        "{:?}",
        g.audit()
    );
    drop(g);

    // Granted: an X client on the target reaches the client's display, and the client swaps
    // the target's cookie for its own on the way.
    let g = granting();
    let (display, seen) = fake_x_server();
    let (mut c, mut out) = with_x11(&g, display);
    let (mut d, mut x) = (String::new(), String::new());
    out.read_line(&mut d).unwrap();
    out.read_line(&mut x).unwrap();
    let d = d.trim().strip_prefix("display=").unwrap_or_default().to_string();
    assert!(!d.is_empty() && x.contains("MIT-MAGIC-COOKIE-1"), "{d:?} {x:?}");
    let answer = x_client(&d, &x);
    let _ = c.kill();
    let _ = c.wait();
    assert_eq!(answer, "XOK-FAKE");
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5)).unwrap(),
        "MIT-MAGIC-COOKIE-1"
    );
    let reasons: Vec<String> = g.audit().iter().map(|e| e["reason"].to_string()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("\"x11_forwarding\"")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("\"x11_channel\"")),
        "the X connection is audited: {reasons:?}"
    );
}
