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

fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The gateway's recording-signing public key, as `portcullis recording pubkey` prints it.
fn signer_file(g: &Gateway) -> PathBuf {
    let o = Command::new(BIN)
        .args(["recording", "pubkey", "--config"])
        .arg(&g.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        line.starts_with("ssh-ed25519 AAAA") && line.ends_with(" portcullis-recording"),
        "{line}"
    );
    let p = g.dir.join("recsign.pub");
    std::fs::write(&p, format!("{line}\n")).unwrap();
    p
}

fn verify(signer: &Path, log: &Path, key: Option<&Path>) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(["verify", "--signer"]).arg(signer).arg("--input").arg(log);
    if let Some(k) = key {
        c.arg("--key").arg(k);
    }
    c.output().unwrap()
}

fn decrypt_cli(g: &Gateway, log: &Path, zip: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["decrypt", "--key"])
        .arg(g.private_key())
        .arg("--input")
        .arg(log)
        .arg("--output")
        .arg(zip)
        .output()
        .unwrap()
}

/// Rewrites a log's header in place, as an editor of the file would (trailer kept).
fn edit_header(v: &mut [u8], change: impl FnOnce(&mut portcullis::recording::format::Header)) {
    let (mut h, end) = portcullis::recording::format::decode_header(v).unwrap();
    change(&mut h);
    v[..end].copy_from_slice(&portcullis::recording::format::encode_header(&h).unwrap());
}

/// Issue 11, finding 8: a closed log carries a signed trailer; `verify` tells intact from
/// truncated and altered (with and without the private key), and `decrypt` warns but still
/// recovers what authenticates.
#[test]
fn closed_logs_are_signed_and_verify_tells_truncation_and_tampering() {
    let Some(g) = gateway(recorded()) else { return };
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(g.dir.join("keys/recsign"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "ca init created the signing key, private"
    );
    let input: Vec<u8> = (0..400_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut child = g
        .ssh(&[], &["root@127.0.0.1", "cat >/dev/null; echo done; exit 6"])
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
    let log = &logs[0];
    let signer = signer_file(&g);
    let key = g.private_key();
    for k in [None, Some(key.as_path())] {
        let o = verify(&signer, log, k);
        assert_eq!(o.status.code(), Some(0), "{}", said(&o));
        assert!(said(&o).contains("intact and signed by SHA256:"), "{}", said(&o));
    }
    // The audit trail keeps the digest the trailer holds, named by its hash.
    let (h, start) = portcullis::recording::format::decode_header(&std::fs::read(log).unwrap()).unwrap();
    let t = h.trailer.expect("a trailer");
    assert_eq!(t.version, portcullis::recording::trailer::VERSION);
    let named = format!("blake3={}", t.digest);
    assert!(g
        .audit()
        .iter()
        .any(|e| e["event"] == "recording.end" && e["reason"].as_str().unwrap().contains(&named)));

    let bytes = std::fs::read(log).unwrap();
    let (blocks, _) = portcullis::recording::format::frame_blocks(&bytes, start);
    assert!(blocks.len() >= 3, "{} blocks", blocks.len());
    let variant = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut v = bytes.clone();
        edit(&mut v);
        let p = g.dir.join(name);
        std::fs::write(&p, v).unwrap();
        p
    };
    let expect = |p: &Path, code: i32, says: &str| {
        for k in [None, Some(key.as_path())] {
            let o = verify(&signer, p, k);
            assert_eq!(o.status.code(), Some(code), "{}: {}", p.display(), said(&o));
            assert!(said(&o).contains(says), "{}: {}", p.display(), said(&o));
        }
    };
    // The last two blocks removed: truncated; `decrypt` warns and writes the rest.
    let kept = blocks.len() - 2;
    let cut = variant("cut.log", &|v| v.truncate(blocks[kept - 1].end));
    expect(&cut, 6, "truncated");
    let o = decrypt_cli(&g, &cut, &g.dir.join("cut.zip"));
    assert!(
        o.status.success() && said(&o).contains("warning: truncated"),
        "{}",
        said(&o)
    );
    let d = decrypt(&g, &cut);
    assert_eq!(d.blocks, kept);
    let full = decrypt(&g, log);
    assert!(!d.records.is_empty() && d.records[..] == full.records[..d.records.len()]);
    // The exit status or the command edited in the header: altered.
    let status = variant("status.log", &|v| {
        edit_header(v, |h| h.exit_data.as_mut().unwrap().status = Some(0))
    });
    expect(&status, 7, "altered: the signature does not verify");
    let command = variant("command.log", &|v| {
        edit_header(v, |h| h.request = Some("exec true".into()))
    });
    expect(&command, 7, "altered");
    // The trailer's digest or signer spelt otherwise (the signature cannot see it): altered.
    let digest = variant("digest.log", &|v| {
        edit_header(v, |h| {
            let t = h.trailer.as_mut().unwrap();
            t.digest = t.digest.to_uppercase();
        })
    });
    expect(&digest, 7, "not 64 lowercase hex digits");
    let signer = variant("signer.log", &|v| {
        edit_header(v, |h| {
            let t = h.trailer.as_mut().unwrap();
            t.signer = t.signer.as_ref().map(|s| format!("{s} edited"));
        })
    });
    expect(&signer, 7, "signer is not written as the gateway writes it");
    // A block appended after the sealed end: altered.
    let appended = variant("appended.log", &|v| {
        let last = v[blocks[blocks.len() - 1].clone()].to_vec();
        v.extend_from_slice(&last);
    });
    expect(&appended, 7, "appended after the");
    // Another key named as the signer: altered, with both fingerprints.
    portcullis::recording::signing::generate(&g.dir.join("other")).unwrap();
    let other = portcullis::recording::signing::load(&g.dir.join("other")).unwrap();
    std::fs::write(g.dir.join("other.pub"), other.public_line()).unwrap();
    let o = verify(&g.dir.join("other.pub"), log, None);
    assert_eq!(o.status.code(), Some(7), "{}", said(&o));
    assert!(said(&o).contains("not by the expected signer"), "{}", said(&o));
    // A signing key others may read is refused, as the account's other secrets are.
    let recsign = g.dir.join("keys/recsign");
    std::fs::set_permissions(&recsign, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&g.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", said(&o));
    assert!(
        said(&o).contains("recording_signing_key") && said(&o).contains("chmod 600"),
        "{}",
        said(&o)
    );
}

/// Without a recording-signing key, logs are closed with an unsigned trailer: `verify` says
/// so (exit 4), and the daemon said so once when it started.
#[test]
fn without_a_signing_key_logs_are_unsigned_and_the_daemon_says_so() {
    let Some(g) = gateway(GatewayOptions {
        record: true,
        unsigned: true,
        ..Default::default()
    }) else {
        return;
    };
    let o = g.run(&[], &["root@127.0.0.1", "echo hi"]);
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let logs = finished(&g, 1);
    // Any Ed25519 key will do as the expected signer: there is no signature to match.
    portcullis::recording::signing::generate(&g.dir.join("k")).unwrap();
    let k = portcullis::recording::signing::load(&g.dir.join("k")).unwrap();
    std::fs::write(g.dir.join("k.pub"), k.public_line()).unwrap();
    let o = verify(&g.dir.join("k.pub"), &logs[0], Some(&g.private_key()));
    assert_eq!(o.status.code(), Some(4), "{}", said(&o));
    assert!(said(&o).contains("unsigned"), "{}", said(&o));
    assert_eq!(
        g.daemon_log().matches("recordings are unsigned").count(),
        1,
        "{}",
        g.daemon_log()
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
    // No trailer: `verify` says the log ended without one (exit 5), and `decrypt` warns so
    // while still writing every block.
    let signer = signer_file(&g);
    let o = verify(&signer, log, Some(&g.private_key()));
    assert_eq!(o.status.code(), Some(5), "{}", said(&o));
    assert!(said(&o).contains("ended without a trailer"), "{}", said(&o));
    let o = decrypt_cli(&g, log, &g.dir.join("crash.zip"));
    assert!(
        o.status.success() && said(&o).contains("warning: ended without a trailer"),
        "{}",
        said(&o)
    );
}

/// A recording directory on a 4 MiB file system, mounted for the test and gone with it.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount() -> Self {
        let dir = std::env::temp_dir().join(support::unique("portcullis-full-"));
        std::fs::create_dir_all(&dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount: {}", said(&o));
        Self(dir)
    }

    fn logs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The disk fills up in the middle of a 16 MiB upload. `fail_closed` (the default): the
/// session stops there, and every byte that reached the target is in the log, which holds
/// whole blocks up to the failure. `fail_open`: the upload completes unrecorded from there.
/// Both say it in `recording.end`.
#[test]
fn a_disk_that_fills_up_mid_session_stops_it_when_fail_closed_and_only_the_log_when_fail_open() {
    if !support::privileged() {
        return;
    }
    const SIZE: u64 = 16 << 20;
    for fail_open in [false, true] {
        let disk = SmallDisk::mount();
        let g = Gateway::start(
            Path::new(BIN),
            &GatewayOptions {
                record: true,
                extra: format!(
                    "\n[recording]\ndir = \"{}\"\non_failure = \"{}\"\n",
                    disk.0.display(),
                    if fail_open { "fail_open" } else { "fail_closed" }
                ),
                ..Default::default()
            },
        );
        let upload = g.dir.join("upload");
        std::fs::write(&upload, vec![0x5a; SIZE as usize]).unwrap();
        let landed = g.dir.join("landed");
        let o = g
            .ssh(&[], &["root@127.0.0.1", &format!("cat > {}", landed.display())])
            .stdin(std::fs::File::open(&upload).unwrap())
            .output()
            .unwrap();
        let got = std::fs::metadata(&landed).map(|m| m.len()).unwrap_or(0);
        let ends: Vec<String> = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let ends: Vec<String> = g
                    .audit()
                    .iter()
                    .filter(|e| e["event"] == "recording.end")
                    .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
                    .collect();
                if !ends.is_empty() || Instant::now() > deadline {
                    break ends;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        assert_eq!(ends.len(), 1, "fail_open {fail_open}: {:?}", g.audit());
        assert!(
            ends[0].contains("failed") && ends[0].contains("No space left"),
            "fail_open {fail_open}: {}",
            ends[0]
        );
        let logs = disk.logs();
        assert_eq!(logs.len(), 1);
        let d = decrypt(&g, &logs[0]);
        let recorded: u64 = d
            .records
            .iter()
            .filter(|r| r.source == 0)
            .map(|r| r.data.len() as u64)
            .sum();
        assert!(recorded > 0 && recorded < SIZE, "{recorded} bytes recorded");
        // Whole blocks up to the failure: nothing cut short, only the trailer missing.
        assert!(
            d.damage.as_deref().is_none_or(|m| !m.contains("cut short")),
            "{:?}",
            d.damage
        );
        if fail_open {
            assert_eq!(o.status.code(), Some(0), "{}", said(&o));
            assert_eq!(got, SIZE, "the upload completes unrecorded");
        } else {
            assert_ne!(o.status.code(), Some(0), "the session must not go on unrecorded");
            assert!(
                got <= recorded,
                "{got} bytes reached the target, {recorded} are in the log"
            );
        }
    }
}

/// A daemon stopped (SIGTERM) during a session closes its recording properly: trailer
/// signed, the stop said in the exit data — not a log that looks like a crash's.
#[test]
fn a_stopped_daemon_closes_open_recordings_with_a_signed_trailer() {
    let Some(mut g) = gateway(recorded()) else { return };
    let signer = signer_file(&g);
    let mut child = g
        .ssh(&[], &["root@127.0.0.1", "echo started; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The output has crossed the relay, so the recording has it.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "started\n");
    let (status, log) = g.stop_daemon().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.success(), "{status}: {log:?}");
    assert!(!log.iter().any(|l| l.contains("without a trailer")), "{log:?}");
    let logs = g.recordings();
    let o = verify(&signer, &logs[0], Some(&g.private_key()));
    assert_eq!(o.status.code(), Some(0), "{}", said(&o));
    let d = decrypt(&g, &logs[0]);
    let e = d.header.exit_data.unwrap();
    assert_eq!(
        e.error_msg.as_deref(),
        Some("the gateway stopped during the session")
    );
    assert!(d.records.iter().any(|r| r.data == b"started\n"));
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
        let client_bytes = d.data_from(0).len();
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
    let stream = d.data_from(0);
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

/// The process's thread count, from /proc/self/status.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Raises the open-file soft limit to the hard one; returns it.
fn raise_nofile() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    l.rlim_cur = l.rlim_max;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
    l.rlim_cur
}

/// Recordings hold no thread each (issue 11, finding 7): 10 000 recordings open at once,
/// each fed records from its own task, run on a handful of threads; then each closes and
/// decrypts to what it was fed. Needs no root; one file descriptor per open recording.
#[test]
fn ten_thousand_concurrent_recordings_run_on_a_few_threads() {
    use portcullis::recording::writer::Recorder;

    const WANT: usize = 10_000;
    let limit = raise_nofile();
    // Room for the test harness and the other tests of this binary running alongside.
    let n = WANT.min(limit.saturating_sub(200) as usize);
    if n < WANT {
        eprintln!("RLIMIT_NOFILE hard limit is {limit}: running {n} recordings instead of {WANT}");
    }
    // Each close syncs its file; on tmpfs that is free, so the test measures threads, not
    // the disk's fsync latency.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("portcullis-10k-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    keys::generate(&dir.join("keys")).unwrap();
    let pk = keys::load_public(&dir.join("keys/sshkey.pub")).unwrap();
    let sk = keys::load_private(&dir.join("keys/sshkey")).unwrap();

    // The peak thread count over the whole run, sampled by a thread of its own (counted).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(threads());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (open_threads, logs) = rt.block_on(async {
        // Started from tasks, as sessions start them, on both workers (key agreement is the
        // slow part, and a debug build makes it slower).
        let mut starts = tokio::task::JoinSet::new();
        for i in 0..n {
            let (dir, pk) = (dir.clone(), pk.clone());
            starts.spawn(async move {
                let name = format!("r{i}");
                (
                    i,
                    Recorder::start(
                        &dir,
                        &name,
                        &pk,
                        None,
                        Some(format!("exec job {i}")),
                        Vec::new(),
                        None,
                    )
                    .unwrap(),
                )
            });
        }
        let mut recs: Vec<_> = starts.join_all().await;
        recs.sort_by_key(|(i, _)| *i);
        let recs: Vec<_> = recs.into_iter().map(|(_, r)| r).collect();
        // Every recording fed at once, each by its own task.
        let mut feeders = tokio::task::JoinSet::new();
        for (i, (r, _)) in recs.iter().enumerate() {
            let r = r.clone();
            feeders.spawn(async move {
                for j in 0..3u32 {
                    let data = bytes::Bytes::from(format!("recording {i} record {j}\n"));
                    r.record(1, 94, data).await.unwrap();
                }
                r.exit(portcullis::recording::writer::Recorder::exit_status(
                    i as u32 % 256,
                ))
                .await;
            });
        }
        while let Some(f) = feeders.join_next().await {
            f.unwrap();
        }
        // All still open (their handles are held): each holds a file and a task, no thread.
        let open_threads = threads();
        let mut logs = Vec::with_capacity(n);
        for (r, task) in recs {
            logs.push(r.path.clone());
            drop(r);
            let sum = task.await.unwrap().unwrap();
            assert!(sum.blocks >= 1);
        }
        (open_threads, logs)
    });
    let written = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    // Decrypted on two threads (the machine's cores); each checks every other log.
    std::thread::scope(|s| {
        for part in 0..2 {
            let (logs, sk) = (&logs, &sk);
            s.spawn(move || {
                for (i, log) in logs.iter().enumerate().skip(part).step_by(2) {
                    let d = reader::decrypt(log, sk).unwrap();
                    assert!(d.damage.is_none(), "{}: {:?}", log.display(), d.damage);
                    let text: Vec<u8> = d.records.iter().flat_map(|r| r.data.clone()).collect();
                    let want: String = (0..3).map(|j| format!("recording {i} record {j}\n")).collect();
                    assert_eq!(text, want.as_bytes(), "{}", log.display());
                    assert_eq!(d.header.exit_data.unwrap().status, Some(i as u32 % 256));
                    assert!(matches!(
                        d.verdict,
                        portcullis::recording::trailer::Verdict::Unsigned { .. }
                    ));
                }
            });
        }
    });
    eprintln!(
        "{n} recordings: {open_threads} threads while all were open, peak {peak}; \
         written in {written:.2?}, all decrypted after {:.2?}",
        started.elapsed()
    );
    assert!(
        open_threads < 64 && peak < 64,
        "{open_threads} threads open, peak {peak}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a command runs with is part of what it does (`sh -c "$LC_CMD"` says nothing by
/// itself): the environment a session asked for is in its audit event and its log's header,
/// and past the bound a variable is refused rather than passed on unaudited.
#[test]
fn the_environment_a_session_asked_for_is_audited_and_in_its_log() {
    let Some(g) = gateway(GatewayOptions {
        sshd_extra: vec!["AcceptEnv LC_*".into()],
        ..recorded()
    }) else {
        return;
    };
    let hidden = "LC_CMD=echo hidden-$((6*7)); env | grep -c ^LC_";
    let mut env = vec![("LC_CMD".to_string(), hidden["LC_CMD=".len()..].to_string())];
    env.extend((0..40).map(|n| (format!("LC_X{n}"), "x".to_string())));
    let (out, status) = support::runtime().block_on(async {
        let h = support::login(g.proxy_port).await;
        support::exec_with_env(&h, &env, "sh -c \"$LC_CMD\"").await
    });
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), status),
        ("hidden-42\n32\n", Some(0))
    );
    let audit = g.audit();
    let exec = audit
        .iter()
        .find(|e| e["reason"] == "exec")
        .unwrap_or_else(|| panic!("{audit:?}"));
    let audited: Vec<&str> = exec["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(audited.len(), 32, "{exec}");
    assert_eq!(audited[0], hidden);
    let logs = finished(&g, 1);
    let header = decrypt(&g, &logs[0]).header;
    assert_eq!(header.env[0], hidden);
}

/// Sessions one after another on one connection (what a ControlMaster, Ansible or an IDE's
/// remote does): the engine gives a closed channel's id to the next one, and each session
/// still gets its own log, so none is refused (fail_closed) or runs unrecorded.
#[test]
fn sessions_one_after_another_on_one_connection_each_get_their_log() {
    let Some(g) = gateway(recorded()) else { return };
    let outs = support::runtime().block_on(async {
        let h = support::login(g.proxy_port).await;
        let mut outs = Vec::new();
        for n in 0..3 {
            outs.push(support::exec_on(&h, &format!("echo session-{n}")).await);
        }
        outs
    });
    for (n, (out, status)) in outs.iter().enumerate() {
        assert_eq!(
            (String::from_utf8_lossy(out).as_ref(), *status),
            (format!("session-{n}\n").as_str(), Some(0)),
            "session {n}: {:?}\n{}",
            g.audit()
                .iter()
                .map(|e| format!("{} {} {}", e["event"], e["reason"], e["rule"]))
                .collect::<Vec<_>>(),
            g.daemon_log()
        );
    }
    let logs = finished(&g, 3);
    assert_eq!(logs.len(), 3, "{logs:?}");
    let mut seen: Vec<String> = logs
        .iter()
        .map(|l| {
            let d = decrypt(&g, l);
            let out = d.data_from(1);
            format!(
                "{} → {}",
                d.header.request.unwrap_or_default(),
                String::from_utf8_lossy(&out)
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..3)
            .map(|n| format!("exec echo session-{n} → session-{n}\n"))
            .collect::<Vec<_>>()
    );
}

/// The answer to the channel's next request: `None` if none came within 10 s.
async fn reply(ch: &mut russh::Channel<russh::client::Msg>) -> Option<bool> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ch.wait()).await {
            Ok(Some(russh::ChannelMsg::Success)) => return Some(true),
            Ok(Some(russh::ChannelMsg::Failure)) => return Some(false),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A start request after one the target refused (a subsystem it lacks, then an `exec` on the
/// same channel) would run a command the audit trail and the log's header do not name: it
/// is refused, audited, and nothing runs.
#[test]
fn a_second_start_request_on_a_channel_is_refused() {
    let Some(g) = gateway(recorded()) else { return };
    let marker = g.path("ran-second");
    let (first, second) = support::runtime().block_on(async {
        let h = support::login(g.proxy_port).await;
        let mut ch = h.channel_open_session().await.unwrap();
        ch.request_subsystem(true, "no-such-subsystem").await.unwrap();
        let mut replies = Vec::new();
        replies.push(reply(&mut ch).await);
        ch.exec(true, format!("touch {}", marker.display()))
            .await
            .unwrap();
        replies.push(reply(&mut ch).await);
        (replies[0], replies[1])
    });
    assert_eq!(first, Some(false), "the unknown subsystem was not refused");
    assert_ne!(second, Some(true), "a second start request was accepted");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "the second request's command ran");
    let audit = g.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["event"] == "deny" && e["reason"] == "second_start_request"),
        "{audit:?}"
    );
}
