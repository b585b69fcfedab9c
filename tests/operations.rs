//! Running the gateway like production (issue 14): the metrics endpoint, the control socket
//! (`portcullis sessions`, `terminate`, `reload`), end to end on a loopback gateway with
//! the real OpenSSH client and sshd. Needs root; `cargo xtask test` runs it.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Output, Stdio},
};

use portcullis_testbed::{free_port, poll, root_or_skip, Gateway, GatewayOptions};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One HTTP/1.1 GET: (status, body); status 0 when the endpoint closed the connection
/// without answering (as it does past its connection cap).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut r = Vec::new();
    let _ = s.read_to_end(&mut r);
    let r = text(&r);
    let status = r
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = r
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample named exactly `name` (with its labels), if exposed.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn cli(g: &Gateway, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).arg("--config").arg(&g.config);
    c.output().expect("run portcullis")
}

fn sessions(g: &Gateway) -> Vec<Value> {
    let o = cli(g, &["sessions", "--json"]);
    assert!(o.status.success(), "sessions: {}", text(&o.stderr));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).expect("sessions --json is a JSON array")
}

/// A loopback gateway with its metrics endpoint on `port`.
fn with_metrics(port: u16, record: bool) -> Gateway {
    Gateway::start(
        std::path::Path::new(BIN),
        &GatewayOptions {
            record,
            extra: format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
            ..Default::default()
        },
    )
}

/// Where the daemon of `config` (the configuration's text) has its control socket.
fn control_socket(g: &Gateway, config: &str) -> std::path::PathBuf {
    let instance = config
        .lines()
        .find_map(|l| l.strip_prefix("instance = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    g.dir.join("state").join(instance).join("control.sock")
}

#[test]
fn metrics_sessions_terminate_and_reload_through_the_control_socket() {
    if !root_or_skip() {
        return;
    }
    let port = free_port();
    let g = with_metrics(port, true);
    let diag = |g: &Gateway| format!("\n--- daemon:\n{}", g.daemon_log());

    // Health and readiness.
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
    assert!(
        poll(10, || (get(port, "/readyz").0 == 200).then_some(())).is_some(),
        "never ready{}",
        diag(&g)
    );
    assert_eq!(get(port, "/nope").0, 404);

    // A live session, listed with who it is and its recording.
    let mut ssh = g
        .ssh(&[], &["root@127.0.0.1", "echo started; exec sleep 120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listed = poll(20, || {
        let l = sessions(&g);
        (l.len() == 1 && !l[0]["recordings"].as_array()?.is_empty() && l[0]["bytes_to_client"].as_u64()? > 0)
            .then_some(l)
    })
    .unwrap_or_else(|| panic!("the session is never listed with its recording{}", diag(&g)));
    let s = &listed[0];
    assert_eq!(s["identity"], "alice@example.com");
    assert_eq!(s["login"], "root");
    assert_eq!(s["target"], "web-01");
    assert_eq!(s["channels"], 1);
    let id = s["session"].as_str().unwrap().to_string();
    let table = cli(&g, &["sessions"]);
    assert!(text(&table.stdout).contains(&id), "{}", text(&table.stdout));

    let m = get(port, "/metrics").1;
    assert_eq!(sample(&m, "portcullis_sessions_active"), Some(1.0), "{m}");

    // Ended by the operator: the user reads why, the audit says who asked.
    let o = cli(&g, &["terminate", &id, "--reason", "maintenance window 42"]);
    assert!(o.status.success(), "terminate: {}", text(&o.stderr));
    let done = poll(15, || ssh.try_wait().ok().flatten());
    assert!(done.is_some(), "ssh still running after terminate{}", diag(&g));
    let mut err = String::new();
    ssh.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        err.contains("maintenance window 42"),
        "the user is not told why: {err:?}"
    );
    let ev = poll(10, || {
        g.audit()
            .into_iter()
            .find(|e| e["event"] == "session.terminated" && e["session"] == id.as_str())
    })
    .expect("session.terminated audited");
    assert_eq!(ev["reason"], "maintenance window 42");
    assert!(
        ev["requested_by"]
            .as_str()
            .is_some_and(|b| b.starts_with("uid 0 pid ")),
        "{ev}"
    );
    assert!(
        poll(10, || sessions(&g).is_empty().then_some(())).is_some(),
        "still listed"
    );
    // Nothing left to end: exit 1, and the request is audited.
    let o = cli(&g, &["terminate", &id]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no live session"), "{}", text(&o.stderr));

    // The recording was closed properly (trailer signed), not cut.
    let rec = poll(10, || {
        g.audit()
            .into_iter()
            .find(|e| e["event"] == "recording.end" && e["session"] == id.as_str())
    })
    .expect("recording.end audited");
    assert!(!rec["reason"].as_str().unwrap().contains("failed"), "{rec}");

    // A refusal, counted by reason.
    let o = g.run(&[], &["nobody@127.0.0.1", "true"]);
    assert!(!o.status.success());

    // Reload: accepted (new generation), then refused with the reason and exit 2.
    let o = cli(&g, &["reload"]);
    assert!(o.status.success(), "reload: {}{}", text(&o.stderr), diag(&g));
    assert!(text(&o.stdout).contains("generation 2"), "{}", text(&o.stdout));
    let good = std::fs::read_to_string(&g.config).unwrap();
    std::fs::write(
        &g.config,
        format!("{good}\n[[target]]\nhostname = \"x\"\nipv4 = \"not an address\"\n"),
    )
    .unwrap();
    // The CLI checks the file first (exit 2, nothing sent) ...
    let o = cli(&g, &["reload"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", text(&o.stdout), text(&o.stderr));
    // ... and the daemon refuses it too when asked directly, naming the problem.
    let socket = control_socket(&g, &good);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "control socket mode");
    let mut c = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    c.write_all(b"{\"request\":\"reload\"}\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let a: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(a["answer"], "reload_rejected", "{answer}");
    assert!(
        a["error"].as_str().unwrap().contains("invalid IPv4 address"),
        "{answer}"
    );
    std::fs::write(&g.config, &good).unwrap();
    // Both reloads are in the audit trail, with who asked and what came of it.
    let audit = g.audit();
    let reload = |event: &str, says: &str| {
        audit.iter().any(|e| {
            e["event"] == event
                && e["reason"].as_str().is_some_and(|r| r.contains(says))
                && e["requested_by"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("uid 0 pid "))
        })
    };
    assert!(reload("config.reload", "generation 2: serving"), "{audit:?}");
    assert!(
        reload("config.reload_rejected", "invalid IPv4 address"),
        "{audit:?}"
    );

    let m = get(port, "/metrics").1;
    for (name, want) in [
        ("portcullis_sessions_active", 0.0),
        ("portcullis_sessions_terminated_total", 1.0),
        (
            "portcullis_connections_total{decision=\"allow\",reason=\"policy\"}",
            1.0,
        ),
        ("portcullis_handshake_duration_seconds_count", 1.0),
        ("portcullis_upstream_login_duration_seconds_count", 1.0),
        ("portcullis_reloads_total{result=\"ok\"}", 1.0),
        ("portcullis_reloads_total{result=\"failed\"}", 1.0),
        ("portcullis_config_generation", 2.0),
        ("portcullis_recording_queued_bytes", 0.0),
        ("portcullis_limit{cap=\"upstream_dials_per_target\"}", 8.0),
    ] {
        assert_eq!(sample(&m, name), Some(want), "{name} in\n{m}");
    }
    for name in [
        "portcullis_relayed_bytes_total{direction=\"to_client\"}",
        "portcullis_recording_blocks_total",
        "portcullis_recording_written_bytes_total",
        "portcullis_upstream_connect_duration_seconds_count",
        "process_open_fds",
        "process_resident_memory_bytes",
        "portcullis_audit_events_total{event=\"session.start\"}",
    ] {
        assert!(sample(&m, name).is_some_and(|v| v > 0.0), "{name} in\n{m}");
    }
    assert!(sample(&m, "portcullis_relayed_bytes_total{direction=\"to_target\"}").is_some());
    assert!(
        m.lines()
            .any(|l| l.starts_with("portcullis_connections_total{decision=\"deny\"")),
        "the refusal is not counted:\n{m}"
    );
    assert!(m.ends_with("# EOF\n"), "not OpenMetrics text");
    if std::env::var_os("PORTCULLIS_SHOW_METRICS").is_some() {
        println!("{m}");
    }
}

/// One raw request on the control socket: the daemon's answer, parsed.
fn control(socket: &std::path::Path, request: &[u8]) -> Value {
    let mut c = std::os::unix::net::UnixStream::connect(socket).expect("connect to the control socket");
    let mut w = c.try_clone().unwrap();
    let request = request.to_vec();
    // The daemon stops reading at its cap and answers; the rest of a long request may meet a
    // closed socket.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&request);
    });
    // Closing with a long request unread, the daemon resets the connection: its answer is
    // read first, the reset after it.
    let mut answer = Vec::new();
    let read = c.read_to_end(&mut answer);
    assert!(read.is_ok() || !answer.is_empty(), "no answer: {read:?}");
    let _ = writer.join();
    serde_json::from_slice(&answer).unwrap_or_else(|e| panic!("{e}: {:?}", text(&answer)))
}

/// The caps of the operator-facing endpoints, met the way a stuck script or a scanner meets
/// them: a request line past 64 KiB, bytes that are not text, and more idle connections to
/// the metrics endpoint than it keeps open — each refused plainly while the next good
/// request is served.
#[test]
fn the_control_socket_and_the_metrics_endpoint_hold_their_caps() {
    if !root_or_skip() {
        return;
    }
    let port = free_port();
    let g = with_metrics(port, false);
    let socket = control_socket(&g, &std::fs::read_to_string(&g.config).unwrap());
    assert!(
        poll(10, || socket.exists().then_some(())).is_some(),
        "no control socket\n{}",
        g.daemon_log()
    );

    let mut long = b"{\"request\":\"sessions\",\"pad\":\"".to_vec();
    long.resize(1 << 20, b'x');
    long.extend_from_slice(b"\"}\n");
    let a = control(&socket, &long);
    assert_eq!(a["answer"], "error", "{a}");
    assert!(a["error"].as_str().unwrap().contains("longer than 64 KiB"), "{a}");
    let a = control(&socket, b"\xff\xfe{\"request\":\"sessions\"}\n");
    assert_eq!(a["error"], "not a request: not UTF-8", "{a}");
    let a = control(&socket, b"{\"request\":\"launch\"}\n");
    assert!(a["error"].as_str().unwrap().starts_with("not a request"), "{a}");
    let a = control(&socket, b"{\"request\":\"sessions\"}\n");
    assert_eq!(a["answer"], "sessions", "{a}");

    // 40 connections that never send a request cannot keep a scraper out: each new one
    // takes the place of the oldest idle one, and a request is answered at once.
    assert_eq!(get(port, "/healthz").0, 200);
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let started = std::time::Instant::now();
    assert_eq!(
        get(port, "/readyz"),
        (200, "ready\n".into()),
        "{}",
        g.daemon_log()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "answered only after {:?}",
        started.elapsed()
    );
    // The oldest idle ones were closed to make room.
    let mut first = &held[0];
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut r = Vec::new();
    let _ = first.read_to_end(&mut r);
    assert!(r.is_empty(), "{:?}", text(&r));
    drop(held);
    assert!(
        poll(10, || (get(port, "/healthz").0 == 200).then_some(())).is_some(),
        "the endpoint does not serve again once the held connections close\n{}",
        g.daemon_log()
    );
}

/// A reload that takes access away applies to connections already accepted but not yet
/// logged in: the login is judged by the configuration in force then. One connection waits
/// in authentication while alice leaves group "ops"; another while her identity goes.
#[test]
fn a_reload_revokes_logins_not_made_yet() {
    if !root_or_skip() {
        return;
    }
    let g = Gateway::start(std::path::Path::new(BIN), &GatewayOptions::default());
    let good = std::fs::read_to_string(&g.config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (change, reason) in [
        (
            good.replace("groups = [\"ops\"]", "groups = [\"former\"]"),
            "no_policy",
        ),
        (
            good.replace("sources = [\"127.0.0.1\"]", "sources = [\"198.18.0.9\"]"),
            "identity_changed",
        ),
    ] {
        assert_ne!(change, good);
        rt.block_on(async {
            let mut h = support::connect(g.proxy_port).await;
            std::fs::write(&g.config, &change).unwrap();
            let o = cli(&g, &["reload"]);
            assert!(o.status.success(), "reload: {}", text(&o.stderr));
            // Accepted or not, the gateway says why on the session; the audit tells.
            let _ = h.authenticate_none("root").await;
        });
        let denied = poll(10, || {
            g.audit()
                .iter()
                .any(|e| e["event"] == "deny" && e["reason"] == reason)
                .then_some(())
        });
        let audit = g.audit();
        assert!(denied.is_some(), "no deny {reason}: {audit:?}");
        assert!(
            !audit.iter().any(|e| e["event"] == "session.start"),
            "logged in after the reload took access away ({reason}): {audit:?}"
        );
        std::fs::write(&g.config, &good).unwrap();
        assert!(cli(&g, &["reload"]).status.success());
    }
}
