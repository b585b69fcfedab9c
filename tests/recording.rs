//! Session recording end to end: real OpenSSH client and server through the proxy, then the
//! sealed logs decrypted and compared with what was typed and printed. Needs root (sshd).

mod support;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portcullis::recording::{format::CODE_EXTENDED, keys, reader};
use portcullis_testbed::{Gateway, GatewayOptions};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn gateway(opts: GatewayOptions) -> Option<Gateway> {
    support::privileged().then(|| Gateway::start(Path::new(BIN), &opts))
}

fn recorded() -> GatewayOptions {
    GatewayOptions {
        record: true,
        ..Default::default()
    }
}

fn decrypt(g: &Gateway, log: &Path) -> reader::Decrypted {
    reader::decrypt(log, &keys::load_private(&g.private_key()).unwrap()).unwrap()
}

/// Waits until `n` recordings are finished (their `recording.end` audit event).
fn finished(g: &Gateway, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ends = g.audit().iter().filter(|e| e["event"] == "recording.end").count();
        if ends >= n {
            return g.recordings();
        }
        assert!(
            Instant::now() < deadline,
            "{} recordings finished: {:?}",
            ends,
            g.audit()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_session_is_recorded_byte_exact_with_exit_status() {
    let Some(g) = gateway(recorded()) else { return };
    let input: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut child = g
        .ssh(&[], &["root@127.0.0.1", "cat; echo done; echo oops >&2; exit 6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = finished(&g, 1);
    assert_eq!(logs.len(), 1);
    let d = decrypt(&g, &logs[0]);
    assert!(d.damage.is_none());
    assert_eq!(d.header.exit_data.as_ref().unwrap().status, Some(6));
    assert!(d.header.pty.is_none());
    assert!(d.header.request.as_deref().unwrap().starts_with("exec cat;"));
    let files = reader::zip_entries(&d);
    assert_eq!(files[0].0, "data_from_client.txt");
    assert_eq!(files[0].1, input, "what the client typed");
    // What the target printed: stdout and stderr, stderr told apart by the record code.
    let stdout: Vec<u8> = d
        .records
        .iter()
        .filter(|r| r.source == 1 && r.code != CODE_EXTENDED)
        .flat_map(|r| r.data.clone())
        .collect();
    assert_eq!(stdout, out.stdout);
    let stderr: Vec<u8> = d
        .records
        .iter()
        .filter(|r| r.code == CODE_EXTENDED)
        .flat_map(|r| r.data.clone())
        .collect();
    assert_eq!(stderr, b"oops\n");
    // `portcullis decrypt` writes the ssh-log-cli ZIP.
    let zip = g.dir.join("out.zip");
    let o = Command::new(BIN)
        .args(["decrypt", "--key"])
        .arg(g.private_key())
        .arg("--input")
        .arg(&logs[0])
        .arg("--output")
        .arg(&zip)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let z = zip_names(&zip);
    assert_eq!(z, vec!["data_from_client.txt", "data_from_server.txt"]);
    // Files are private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&logs[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

fn zip_names(p: &Path) -> Vec<String> {
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))",
        ])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn pty_session_replays_with_scriptreplay_and_exports_asciicast() {
    let Some(g) = gateway(recorded()) else { return };
    let ssh = g.ssh(&["-tt"], &["root@127.0.0.1"]);
    let args: Vec<String> = std::iter::once("ssh".to_string())
        .chain(ssh.get_args().map(|a| a.to_string_lossy().into_owned()))
        .map(|a| format!("'{a}'"))
        .collect();
    let mut child = Command::new("script")
        .args(["-qec", &args.join(" "), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo PTY_$((6*7))\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stdin.write_all(b"exit 5\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PTY_42"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let logs = finished(&g, 1);
    let d = decrypt(&g, &logs[0]);
    let pty = d.header.pty.as_ref().expect("pty recorded");
    assert!(pty.term.is_some());
    let files = reader::zip_entries(&d);
    let data = String::from_utf8_lossy(&files[0].1).into_owned();
    assert!(
        data.starts_with("Session started on ") && data.contains("PTY_42"),
        "{data}"
    );
    assert!(data.ends_with("[COMMAND_EXIT_CODE=\"5\"]\n"), "{data}");
    // scriptreplay accepts the timing file.
    std::fs::write(g.dir.join("term_data.txt"), &files[0].1).unwrap();
    std::fs::write(g.dir.join("term_times.txt"), &files[1].1).unwrap();
    let r = Command::new("scriptreplay")
        .args(["--timing"])
        .arg(g.dir.join("term_times.txt"))
        .arg(g.dir.join("term_data.txt"))
        .args(["--divisor", "100"])
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "scriptreplay: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stdout).contains("PTY_42"));
    // `portcullis replay` plays the target's output with its timing (here 100× faster).
    let o = Command::new(BIN)
        .arg("replay")
        .arg(&logs[0])
        .arg("--key")
        .arg(g.private_key())
        .args(["--speed", "100", "--max-idle", "0.1"])
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("PTY_42"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // asciicast v2: a header line, then [time, "o"|"i", data] events in time order.
    let cast = g.dir.join("s.cast");
    let o = Command::new(BIN)
        .args(["export", "asciicast", "--key"])
        .arg(g.private_key())
        .arg("--input")
        .arg(&logs[0])
        .arg("--output")
        .arg(&cast)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&cast).unwrap();
    let mut lines = text.lines();
    let head: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(head["version"], 2);
    let mut last = 0.0;
    for l in lines {
        let ev: serde_json::Value = serde_json::from_str(l).unwrap();
        let t = ev[0].as_f64().unwrap();
        assert!(t >= last && (ev[1] == "o" || ev[1] == "i"), "{l}");
        last = t;
    }
}

#[test]
fn a_killed_daemon_leaves_a_decryptable_prefix() {
    let Some(mut g) = gateway(recorded()) else { return };
    // A session that keeps printing; the daemon dies while it runs.
    let mut child = g
        .ssh(
            &[],
            &[
                "root@127.0.0.1",
                "for i in $(seq 1 400); do echo line-$i; sleep 0.01; done",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.recordings().is_empty()
        || std::fs::metadata(&g.recordings()[0])
            .map(|m| m.len())
            .unwrap_or(0)
            < 4200
    {
        assert!(Instant::now() < deadline, "no recording grew");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    g.kill_daemon();
    let _ = child.wait();
    let log = &g.recordings()[0];
    let d = decrypt(&g, log);
    assert!(d.blocks > 0 && !d.records.is_empty());
    assert!(
        d.header.exit_data.is_none(),
        "a crashed session has no termination data"
    );
    let text: String = d
        .records
        .iter()
        .flat_map(|r| {
            String::from_utf8_lossy(&r.data)
                .into_owned()
                .chars()
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(text.starts_with("line-1\n"), "{text}");
    // The ZIP says so, as ssh-log-cli does.
    let files = reader::zip_entries(&d);
    assert_eq!(files[1].0, "data_from_server.txt");
}

#[test]
fn unwritable_recording_dir_refuses_sessions_when_fail_closed_and_not_when_fail_open() {
    let closed = GatewayOptions {
        record: true,
        extra: "\n[recording]\ndir = \"/proc/portcullis-nope\"\n".into(),
        ..Default::default()
    };
    let Some(g) = gateway(closed) else { return };
    let o = g.run(&[], &["root@127.0.0.1", "echo should-not-run"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be recorded"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("should-not-run"));
    assert!(g
        .audit()
        .iter()
        .any(|e| e["reason"] == "recording_failed" && e["decision"] == "deny"));

    let open = GatewayOptions {
        record: true,
        extra: "\n[recording]\ndir = \"/proc/portcullis-nope\"\non_failure = \"fail_open\"\n".into(),
        ..Default::default()
    };
    let g = Gateway::start(Path::new(BIN), &open);
    let o = g.run(&[], &["root@127.0.0.1", "echo ran"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(g
        .audit()
        .iter()
        .any(|e| e["reason"] == "recording_failed" && e["decision"] == "allow"));
}

#[test]
fn without_a_recording_key_sessions_run_and_the_audit_says_unrecorded() {
    let Some(g) = gateway(GatewayOptions::default()) else {
        return;
    };
    let o = g.run(&[], &["root@127.0.0.1", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(g.audit().iter().any(|e| e["event"] == "recording.off"));
    assert!(g.recordings().is_empty());
}

#[test]
fn scp_and_rsync_transfers_are_recorded() {
    let Some(g) = gateway(recorded()) else { return };
    let src = g.dir.join("payload.bin");
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &payload).unwrap();
    let opts = portcullis_testbed::ssh_opts(&g.dir.join("known_hosts"));
    let o = Command::new("scp")
        .args(&opts)
        .args(["-O", "-P", &g.proxy_port.to_string()])
        .arg(&src)
        .arg(format!("root@127.0.0.1:{}", g.dir.join("scp.out").display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rsh = format!("ssh {} -p {}", opts.join(" "), g.proxy_port);
    let o = Command::new("rsync")
        .args(["-a", "-e", &rsh])
        .arg(&src)
        .arg(format!("root@127.0.0.1:{}", g.dir.join("rsync.out").display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(g.dir.join("scp.out")).unwrap(), payload);
    assert_eq!(std::fs::read(g.dir.join("rsync.out")).unwrap(), payload);
    let logs = finished(&g, 2);
    for log in &logs {
        let d = decrypt(&g, log);
        let client_bytes: usize = d
            .records
            .iter()
            .filter(|r| r.source == 0)
            .map(|r| r.data.len())
            .sum();
        assert!(
            client_bytes >= payload.len() / 2,
            "{}: {client_bytes} bytes from the client",
            log.display()
        );
    }
    // legacy scp carries the file as-is: it is in the client's recorded stream verbatim.
    let scp_log = logs
        .iter()
        .find(|l| {
            decrypt(&g, l)
                .header
                .request
                .as_deref()
                .is_some_and(|r| r.contains("scp"))
        })
        .unwrap();
    let d = decrypt(&g, scp_log);
    let stream: Vec<u8> = d
        .records
        .iter()
        .filter(|r| r.source == 0)
        .flat_map(|r| r.data.clone())
        .collect();
    assert!(
        stream.windows(payload.len()).any(|w| w == &payload[..]),
        "the file's bytes are in the recording"
    );
}

#[test]
fn sftp_sessions_are_recorded_and_their_file_operations_audited() {
    let Some(g) = gateway(recorded()) else { return };
    let src = g.dir.join("up.txt");
    std::fs::write(&src, "hello sftp\n").unwrap();
    let remote = g.dir.join("remote.txt");
    let renamed = g.dir.join("renamed.txt");
    let batch = g.dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nrename {} {}\nget {} {}\nrm {}\n",
            src.display(),
            remote.display(),
            remote.display(),
            renamed.display(),
            renamed.display(),
            g.dir.join("down.txt").display(),
            renamed.display()
        ),
    )
    .unwrap();
    let opts = portcullis_testbed::ssh_opts(&g.dir.join("known_hosts"));
    let o = Command::new("sftp")
        .args(&opts)
        .args(["-P", &g.proxy_port.to_string(), "-b"])
        .arg(&batch)
        .arg("root@127.0.0.1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(g.dir.join("down.txt")).unwrap(),
        "hello sftp\n"
    );
    let logs = finished(&g, 1);
    let d = decrypt(&g, &logs[0]);
    assert_eq!(d.header.request.as_deref(), Some("subsystem sftp"));
    let ops: Vec<(String, String)> = g
        .audit()
        .iter()
        .filter(|e| e["event"] == "sftp")
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |op: &str, path: &str| ops.iter().any(|(o, p)| o == op && p.contains(path));
    assert!(has("open-write", &remote.display().to_string()), "{ops:?}");
    assert!(has("rename", &renamed.display().to_string()), "{ops:?}");
    assert!(has("open-read", &renamed.display().to_string()), "{ops:?}");
    assert!(has("remove", &renamed.display().to_string()), "{ops:?}");
}
