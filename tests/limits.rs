//! Connections that never authenticate (issue 11 #6): anyone who reaches the gateway can
//! open them, so they are capped globally and per source (`[limits]`), those over a cap are
//! closed at once, repeated refusals are audited as one counted `refused.flood` event, and
//! the daemon raises its descriptor limit at start. A real `ssh` of an allowed identity must
//! still get through a flood.
//!
//! Flood sources are other loopback addresses (127.0.0.2, …: the whole 127/8 is the host's
//! own), bound on the client side; `ssh -b` does the same for real clients. Needs root
//! (sshd logging in as root).

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portcullis_testbed::{root_or_skip, Gateway, GatewayOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Extra identities (127.0.0.3 mallory, 127.0.0.4 bob, both in group ops: allowed) and the
/// caps. Refusals are summed over a long interval: the aggregate is written when the daemon
/// stops, so the test reads one complete count per source and reason.
fn options(unauthenticated: usize, per_source: usize) -> GatewayOptions {
    GatewayOptions {
        extra: format!(
            r#"
[[identity]]
email = "mallory@example.com"
groups = ["ops"]
sources = ["127.0.0.3"]

[[identity]]
email = "bob@example.com"
groups = ["ops"]
sources = ["127.0.0.4"]

[limits]
unauthenticated = {unauthenticated}
unauthenticated_per_source = {per_source}
refusal_audit_interval_secs = 3600
"#
        ),
        ..Default::default()
    }
}

/// A connection to the proxy from `source`, which sends nothing.
fn connect_from(rt: &tokio::runtime::Runtime, source: &str, port: u16) -> std::io::Result<TcpStream> {
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
        let stream = s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let std = stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok(std)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Everything the gateway sends until it closes (a hang guard of 30 s, not a threshold).
fn read_to_close(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the gateway neither answered nor closed: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first line the gateway sends: the SSH identification of an admitted connection
/// (`SSH-2.0-portcullis_<version>`), or the refusal's (`SSH-2.0-portcullis`, then a disconnect).
fn first_line(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        match s.read(&mut b) {
            Ok(1) => line.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Admitted: the proxy's SSH server greets it (`SSH-2.0-portcullis_<version>`); a refusal
/// says `SSH-2.0-portcullis` and disconnects.
fn admitted(s: &mut TcpStream) -> bool {
    first_line(s).starts_with("SSH-2.0-portcullis_")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft and hard `Max open files` of `pid`.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

fn source_ip(e: &Value) -> String {
    e["source"]
        .as_str()
        .and_then(|s| s.rsplit_once(':'))
        .map(|(ip, _)| ip.to_string())
        .unwrap_or_default()
}

/// SIGTERM, then the audit trail once the daemon has written its last aggregate.
fn stop_and_read_audit(g: &Gateway) -> Vec<Value> {
    let pid = g.daemon_pid().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The child is reaped by the testbed only on drop: a zombie ("Z") has exited.
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    g.audit()
}

fn echo_ok(g: &Gateway, extra: &[&str]) -> std::process::Output {
    g.run(extra, &["root@127.0.0.1", "echo ok"])
}

#[track_caller]
fn assert_ok(g: &Gateway, o: &std::process::Output) {
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ok\n",
        "ssh failed: {}\ndaemon: {}",
        String::from_utf8_lossy(&o.stderr),
        g.daemon_log()
    );
}

/// The issue's report: a connect flood from an address without identity (refusals used to
/// linger 2 s each) and from an identity that never speaks filled the descriptors, and a
/// legitimate `ssh` timed out. The daemon runs with a soft limit of 128 here (set after it
/// started: a host whose hard limit is that low), which the flood alone would exhaust.
#[test]
fn a_connect_flood_leaves_room_for_an_allowed_identity() {
    if !root_or_skip() {
        return;
    }
    const PER_SOURCE: usize = 4;
    const FLOOD: usize = 200;
    let g = Gateway::start(Path::new(BIN), &options(24, PER_SOURCE));
    let pid = g.daemon_pid().unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads and writes the structs given, which outlive the calls.
    unsafe {
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim),
            0
        );
        lim.rlim_cur = 128;
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()),
            0
        );
    }
    // The flood's own sockets: raise this process's soft limit as the daemon does.
    portcullis::admission::raise_nofile().unwrap();

    let base = fds(pid);
    let rt = runtime();
    let (mut anonymous, mut silent) = (Vec::new(), Vec::new());
    let mut most = base;
    for i in 0..FLOOD {
        anonymous.push(connect_from(&rt, "127.0.0.2", g.proxy_port).unwrap());
        silent.push(connect_from(&rt, "127.0.0.3", g.proxy_port).unwrap());
        if i % 10 == 0 {
            most = most.max(fds(pid));
        }
    }
    most = most.max(fds(pid));
    // Each admitted connection holds at most two descriptors (client, target), one more may
    // be accepted and about to be closed; two sources of PER_SOURCE each are admitted.
    let bound = base + 2 * 2 * PER_SOURCE + 2;
    eprintln!("daemon descriptors: {base} before the flood, at most {most} during it (bound {bound})");
    assert!(
        most <= bound,
        "the daemon held {most} descriptors under the flood (base {base}, bound {bound})"
    );

    // A real client of an allowed identity, from another address, within its own timeouts.
    let o = echo_ok(&g, &[]);
    assert_ok(&g, &o);

    // Every anonymous connection was refused and closed (pre-check or cap), none left open.
    let texts: Vec<String> = anonymous.iter_mut().map(read_to_close).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("too many connections from 127.0.0.2")),
        "no connection was refused at the cap"
    );
    assert!(
        texts.iter().any(|t| t.contains("(no_identity)")),
        "none was refused by the pre-check"
    );

    let audit = stop_and_read_audit(&g);
    let from = |ip: &str| -> Vec<&Value> { audit.iter().filter(|e| source_ip(e) == ip).collect() };
    let anon = from("127.0.0.2");
    let one_by_one = anon.iter().filter(|e| e["event"] == "deny").count();
    let counted: u64 = anon
        .iter()
        .filter(|e| e["event"] == "refused.flood")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        one_by_one as u64 + counted,
        FLOOD as u64,
        "every refusal is audited or counted: {anon:#?}"
    );
    // A few lines per reason (audited one by one, then the aggregate), not two per connection.
    let limit = 2 * portcullis::admission::AUDITED_PER_INTERVAL as usize + 2;
    assert!(
        anon.len() <= limit,
        "{} audit lines for 127.0.0.2: {anon:#?}",
        anon.len()
    );
    assert!(anon.iter().any(|e| e["event"] == "refused.flood"
        && e["reason"] == "unauthenticated_per_source_limit"
        && e["decision"] == "deny"));
    let mal = from("127.0.0.3");
    let over: u64 = mal
        .iter()
        .filter(|e| e["event"] == "refused.flood" && e["reason"] == "unauthenticated_per_source_limit")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert!(over > 0 && over < FLOOD as u64, "{mal:#?}");
    assert!(mal.len() < FLOOD / 2, "{} audit lines for 127.0.0.3", mal.len());
    drop(silent);
}

/// Per source: one source over its cap does not block another. Globally: the sum is capped.
/// Places are given back when a connection ends, and when it authenticates: sessions in use
/// do not count.
#[test]
fn caps_are_per_source_and_global_and_sessions_do_not_count() {
    if !root_or_skip() {
        return;
    }
    let mut g = Gateway::start(Path::new(BIN), &options(6, 3));
    let rt = runtime();
    let mut held3: Vec<TcpStream> = (0..3)
        .map(|_| connect_from(&rt, "127.0.0.3", g.proxy_port).unwrap())
        .collect();
    for s in held3.iter_mut() {
        assert!(admitted(s), "within the caps");
    }
    // 127.0.0.3 is at its cap: closed at once, with a word why.
    let mut over = connect_from(&rt, "127.0.0.3", g.proxy_port).unwrap();
    let text = read_to_close(&mut over);
    assert!(text.contains("too many connections from 127.0.0.3"), "{text:?}");
    // Another source is not blocked by it.
    let mut held4: Vec<TcpStream> = (0..3)
        .map(|_| connect_from(&rt, "127.0.0.4", g.proxy_port).unwrap())
        .collect();
    for s in held4.iter_mut() {
        assert!(admitted(s), "127.0.0.3's cap does not block 127.0.0.4");
    }
    // 6 of 6 in use: the global cap refuses a third source.
    let mut third = connect_from(&rt, "127.0.0.5", g.proxy_port).unwrap();
    let text = read_to_close(&mut third);
    assert!(
        text.contains("too many connections are awaiting authentication"),
        "{text:?}"
    );

    // 127.0.0.4's connections end: their places come back (polled: the release follows
    // the close asynchronously; each try is refused at once while the cap holds).
    drop(held4);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = echo_ok(&g, &[]);
        if o.status.success() {
            assert_ok(&g, &o);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "places were not given back: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Authenticated sessions give their place back: three open sessions from 127.0.0.1
    // (its cap is 3) leave room for a fourth connection from it.
    let mut sessions: Vec<std::process::Child> = Vec::new();
    for _ in 0..3 {
        sessions.push(
            g.ssh(&[], &["root@127.0.0.1", "sleep 120"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while g
        .audit()
        .iter()
        .filter(|e| e["event"] == "session.start" && source_ip(e) == "127.0.0.1")
        .count()
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "sessions did not start: {}",
            g.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = echo_ok(&g, &[]);
    assert_ok(&g, &o);
    for mut s in sessions {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(held3);
    g.kill_daemon();
}

/// The daemon raises its soft descriptor limit to the hard one at start, and says so.
#[test]
fn the_daemon_raises_its_descriptor_limit() {
    if !root_or_skip() {
        return;
    }
    let mut g = Gateway::start(Path::new(BIN), &options(16, 4));
    g.kill_daemon();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&g.config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            l.rlim_cur = 256.min(l.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.iter().any(|l: &String| l.contains("dataplane up")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => log.push(l),
            Err(_) => panic!("daemon not ready: {log:#?}"),
        }
    }
    let (soft, hard) = nofile(pid);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(soft, hard, "soft limit not raised: {log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("descriptor limit raised") && l.contains("soft_before=256")),
        "{log:#?}"
    );
    assert!(log
        .iter()
        .any(|l| l.contains("connections awaiting authentication are capped")));
}
