//! The SSH proxy end to end on loopback, in listener mode (no eBPF): the real OpenSSH client
//! tools (`ssh`, `scp`, `sftp`, `rsync`, `script`) → `portcullis run` with a `[[listener]]`
//! → a real `/usr/sbin/sshd` that trusts the account CA. Needs root (the proxy's transparent
//! listeners, sshd logging in as root); `cargo xtask test` runs it.
//!
//! Every test has its own directory, ports, known_hosts file, daemon and sshd (a testbed
//! `Gateway`), so the tests run in parallel. Failure messages carry the client's stderr and
//! the tails of the daemon's stderr, `sshd.log` and the audit trail.

use std::{
    io::{Read, Write},
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use portcullis_testbed::{poll, root_or_skip, ssh_opts, Gateway, GatewayOptions};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Where the proxy's client connects: `[[identity]] sources = ["127.0.0.1"]`.
const HOST: &str = "127.0.0.1";

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A child process killed on drop (ssh masters, slow readers).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A testbed `Gateway` (the proxy in listener mode in front of one sshd, in a directory of
/// its own) with the client commands, audit checks and failure diagnostics of these tests.
struct Bed(Gateway);

impl Deref for Bed {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.0
    }
}

impl DerefMut for Bed {
    fn deref_mut(&mut self) -> &mut Gateway {
        &mut self.0
    }
}

impl Bed {
    /// A gateway set up as `opts` says, or `None` (test skipped) without root.
    fn new(opts: GatewayOptions) -> Option<Self> {
        root_or_skip().then(|| Self(Gateway::start(Path::new(BIN), &opts)))
    }

    /// The known-good setup.
    fn known_good() -> Option<Self> {
        Self::new(GatewayOptions::default())
    }

    /// The client options every test uses: quiet, per-test known_hosts, no agent. Options
    /// given first win in OpenSSH, so `extra` can override the defaults.
    fn client_opts(&self, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for e in extra {
            v.push("-o".into());
            v.push((*e).into());
        }
        v.extend(["-o".into(), "LogLevel=ERROR".into()]);
        v.extend(ssh_opts(&self.path("known_hosts")));
        v
    }

    /// `ssh [-o extra…] <defaults> -p PROXY login@127.0.0.1`; the caller adds the command.
    fn ssh_as(&self, login: &str, extra: &[&str]) -> Command {
        self.ssh_port(self.proxy_port, login, extra)
    }

    /// `ssh` to another port (the target itself, for control runs).
    fn ssh_port(&self, port: u16, login: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.client_opts(extra))
            .args(["-p", &port.to_string()])
            .arg(format!("{login}@{HOST}"));
        c
    }

    /// Runs `cmd` as root through the proxy, with `-o extra…`, and asserts its exit code.
    #[track_caller]
    fn exec_with(&self, extra: &[&str], cmd: &str, code: i32, what: &str) -> Output {
        let o = self.ssh_as("root", extra).arg(cmd).output().unwrap();
        self.expect_code(&o, code, what);
        o
    }

    /// Runs `cmd` as root through the proxy and asserts its exit code.
    #[track_caller]
    fn exec(&self, cmd: &str, code: i32, what: &str) -> Output {
        self.exec_with(&[], cmd, code, what)
    }

    /// Runs `cmd` as root with `input` on stdin and asserts its exit code.
    #[track_caller]
    fn exec_with_input(&self, cmd: &str, input: &[u8], code: i32, what: &str) -> Output {
        let mut c = self.ssh_as("root", &[]);
        c.arg(cmd);
        let o = feed(c, input);
        self.expect_code(&o, code, what);
        o
    }

    /// The `ssh …` command line for `rsync -e` / `script -c`.
    fn ssh_line(&self, extra: &[&str]) -> String {
        format!("ssh {} -p {}", self.client_opts(extra).join(" "), self.proxy_port)
    }

    /// A new client key pair `id_ed25519{,.pub}` in the bed; returns its `IdentityFile=` option.
    fn client_key(&self) -> String {
        let key = self.path("id_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success(), "ssh-keygen");
        format!("IdentityFile={}", key.display())
    }

    /// The audit events named `name`; every line of the trail must be JSON.
    fn events(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.path("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .filter(|e: &Value| e["event"] == name)
            .collect()
    }

    /// Waits for an audit event named `name` that satisfies `pred` (events such as
    /// `session.end` are written after the client has gone).
    #[track_caller]
    fn wait_event(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match poll(10, || self.events(name).into_iter().find(&pred)) {
            Some(e) => e,
            None => panic!("no matching {name:?} audit event{}", self.diag(None)),
        }
    }

    /// Asserts `e[key] == value` for every `key: value` of the object `fields`.
    #[track_caller]
    fn expect_fields(&self, e: &Value, fields: Value) {
        for (key, value) in fields.as_object().expect("fields: a JSON object") {
            assert_eq!(&e[key.as_str()], value, "{key}{}", self.diag_event(e));
        }
    }

    /// Waits for the `deny` audit event and checks its `fields`.
    #[track_caller]
    fn expect_deny(&self, fields: Value) -> Value {
        let d = self.wait_event("deny", |_| true);
        self.expect_fields(&d, fields);
        d
    }

    /// What a failure message needs: the client's stderr, the daemon's and sshd's logs and
    /// the audit trail.
    fn diag(&self, o: Option<&Output>) -> String {
        let mut s = String::new();
        if let Some(o) = o {
            s += &format!(
                "\n--- client: {}\n--- client stdout (tail):\n{}\n--- client stderr:\n{}",
                o.status,
                tail(&stdout(o), 10),
                stderr(o)
            );
        }
        s += &format!(
            "\n--- portcullis stderr (tail):\n{}",
            tail(&self.daemon_log(), 25)
        );
        s += &format!("\n--- sshd.log (tail):\n{}", tail(&self.sshd.log(), 25));
        s += &format!(
            "\n--- audit (tail):\n{}",
            tail(
                &std::fs::read_to_string(self.path("audit.jsonl")).unwrap_or_default(),
                15
            )
        );
        s
    }

    /// An audit event and the logs.
    fn diag_event(&self, e: &Value) -> String {
        format!("\n--- event: {e}{}", self.diag(None))
    }

    /// Asserts the exit code of a client command.
    #[track_caller]
    fn expect_code(&self, o: &Output, code: i32, what: &str) {
        assert_eq!(o.status.code(), Some(code), "{what}{}", self.diag(Some(o)));
    }

    /// The host key the proxy presented, as the client recorded it: `(type, base64)`.
    fn recorded_host_key(&self) -> (String, String) {
        let kh = std::fs::read_to_string(self.path("known_hosts")).unwrap_or_default();
        let marker = format!("[{HOST}]:{} ", self.proxy_port);
        let line = kh
            .lines()
            .find(|l| l.starts_with(&marker))
            .unwrap_or_else(|| panic!("no {marker:?} in known_hosts:\n{kh}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[1].to_string(), f[2].to_string())
    }
}

/// Runs `c` with `input` on stdin (written from a thread so large inputs cannot deadlock).
fn feed(c: Command, input: &[u8]) -> Output {
    let (child, mut stdin) = spawn_stdin_open(c);
    let input = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let o = child.wait_with_output().unwrap();
    w.join().unwrap();
    o
}

/// Spawns `c` with stdin a pipe that the caller holds open (and stdout/stderr piped).
fn spawn_stdin_open(mut c: Command) -> (Child, ChildStdin) {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// Reads `r` to its end on a thread.
fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Waits up to `secs` seconds for `child` to exit, calling `tick` while it runs, and collects
/// the stdout and stderr it still has piped. `Err`: it did not exit in time and was killed.
fn finish(child: &mut Child, secs: u64, mut tick: impl FnMut()) -> Result<Output, Output> {
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let exited = poll(secs, || {
        tick();
        child.try_wait().unwrap()
    });
    let status = match exited {
        Some(s) => s,
        None => {
            let _ = child.kill();
            child.wait().unwrap()
        }
    };
    let join = |h: Option<JoinHandle<Vec<u8>>>| h.map(|h| h.join().unwrap()).unwrap_or_default();
    let o = Output {
        status,
        stdout: join(out),
        stderr: join(err),
    };
    match exited {
        Some(_) => Ok(o),
        None => Err(o),
    }
}

/// An OpenSSH control master (`ControlMaster=yes`, no `ControlPersist`, so it stays our
/// child and is killed on drop), for sessions multiplexed over one connection.
struct Master<'a> {
    bed: &'a Bed,
    port: u16,
    /// `-o` options for the mux clients: ControlPath plus what the master was given.
    opts: Vec<String>,
    log: PathBuf,
    _child: Guard,
}

impl<'a> Master<'a> {
    fn start(bed: &'a Bed, port: u16, name: &str, extra: &[&str]) -> Self {
        let mut opts = vec![format!("ControlPath={}/cm-{name}-%C", bed.dir.display())];
        opts.extend(extra.iter().map(|e| e.to_string()));
        let log = bed.path(&format!("master-{name}.log"));
        let mut master_opts: Vec<&str> = vec!["ControlMaster=yes"];
        master_opts.extend(opts.iter().map(String::as_str));
        let child = Guard(
            bed.ssh_port(port, "root", &master_opts)
                .arg("-N")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let m = Self {
            bed,
            port,
            opts,
            log,
            _child: child,
        };
        let ready = poll(15, || {
            m.client()
                .args(["-O", "check"])
                .output()
                .unwrap()
                .status
                .success()
                .then_some(())
        });
        assert!(
            ready.is_some(),
            "control master up: {}{}",
            m.log(),
            bed.diag(None)
        );
        m
    }

    /// A mux client of this master (`ControlMaster=auto`, as a user would configure it).
    fn client(&self) -> Command {
        let mut o: Vec<&str> = vec!["ControlMaster=auto", "ControlPersist=10"];
        o.extend(self.opts.iter().map(String::as_str));
        self.bed.ssh_port(self.port, "root", &o)
    }

    /// Runs `cmd` in a session of this master, stdin at EOF.
    fn exec(&self, cmd: &str) -> Output {
        self.client().arg(cmd).stdin(Stdio::null()).output().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh -O exit`.
    fn exit(self) {
        let o = self.client().args(["-O", "exit"]).output().unwrap();
        self.bed.expect_code(&o, 0, "ssh -O exit");
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a == b
}

/// The `(type, base64)` of an OpenSSH public key file.
fn pub_key_file(p: &Path) -> (String, String) {
    let s = std::fs::read_to_string(p).unwrap();
    let f: Vec<&str> = s.split_whitespace().collect();
    (f[0].to_string(), f[1].to_string())
}

// ---------------------------------------------------------------------------------------

#[test]
fn exec_relays_stdout_stderr_exit_status_env_and_is_audited() {
    let Some(bed) = Bed::known_good() else {
        return;
    };

    let o = bed.exec(
        "echo to-stdout; echo to-stderr >&2; exit 7",
        7,
        "exit status of `exit 7`",
    );
    assert_eq!(stdout(&o), "to-stdout\n", "stdout{}", bed.diag(Some(&o)));
    assert_eq!(stderr(&o), "to-stderr\n", "stderr{}", bed.diag(Some(&o)));

    let o = bed.exec_with(
        &["SetEnv=PORTCULLIS_T=1"],
        "echo \"[$PORTCULLIS_T]\"",
        0,
        "SetEnv",
    );
    assert_eq!(stdout(&o), "[1]\n", "environment forwarded{}", bed.diag(Some(&o)));

    // The audit trail of the first session.
    let start = bed.wait_event("session.start", |_| true);
    let session = start["session"].as_str().unwrap().to_string();
    bed.expect_fields(
        &start,
        json!({
            "policy": "ops",
            "login": "root",
            "decision": "allow",
            "identity": "alice@example.com",
        }),
    );
    assert!(
        start["cert_serial"].is_u64(),
        "numeric cert_serial{}",
        bed.diag_event(&start)
    );
    let connect = bed.wait_event("connect", |e| e["session"] == session.as_str());
    bed.expect_fields(
        &connect,
        json!({
            "target": "web-01",
            "vnet": "default",
            "target_addr": bed.target.to_string(),
        }),
    );
    let open = bed.wait_event("channel.open", |e| e["session"] == session.as_str());
    bed.expect_fields(
        &open,
        json!({
            "reason": "exec",
            "rule": "echo to-stdout; echo to-stderr >&2; exit 7",
        }),
    );
    let end = bed.wait_event("session.end", |e| e["session"] == session.as_str());
    let why = end["reason"].as_str().unwrap_or_default();
    assert!(why.contains("exit_status=7"), "{}", bed.diag_event(&end));
    bed.expect_fields(&end, json!({ "cert_serial": start["cert_serial"] }));
}

#[test]
fn binary_data_round_trips_byte_exact() {
    let Some(bed) = Bed::known_good() else {
        return;
    };
    let data = random_bytes(20 << 20);
    let remote = bed.path("upload.bin");

    let o = bed.exec_with_input(&format!("cat > {}", remote.display()), &data, 0, "upload via cat");
    let stored = std::fs::read(&remote).unwrap();
    assert!(
        same_bytes(&stored, &data),
        "upload: {} bytes stored of {}{}",
        stored.len(),
        data.len(),
        bed.diag(Some(&o))
    );

    let o = bed.exec(&format!("cat {}", remote.display()), 0, "download via cat");
    assert!(
        same_bytes(&o.stdout, &data),
        "download: {} bytes received of {}{}",
        o.stdout.len(),
        data.len(),
        bed.diag(Some(&o))
    );
}

#[test]
fn scp_sftp_and_rsync_copy_files_exactly() {
    let Some(bed) = Bed::known_good() else {
        return;
    };
    let port = bed.proxy_port.to_string();
    let data = random_bytes(3 << 20);
    let local = bed.path("local.bin");
    std::fs::write(&local, &data).unwrap();
    let local = local.display().to_string();
    let check = |name: &str, what: &str, o: &Output| {
        let p = bed.path(name);
        let got = std::fs::read(&p).unwrap_or_default();
        assert!(
            same_bytes(&got, &data),
            "{what}: {} has {} bytes, expected {}{}",
            p.display(),
            got.len(),
            data.len(),
            bed.diag(Some(o))
        );
    };
    // Runs a copy that must succeed and leave the data in the bed's file `name`.
    let copy = |mut c: Command, name: &str, what: &str| {
        let o = c.output().unwrap();
        bed.expect_code(&o, 0, what);
        check(name, what, &o);
    };
    let remote = |name: &str| format!("root@{HOST}:{}", bed.path(name).display());
    let here = |name: &str| bed.path(name).display().to_string();

    // scp, legacy protocol (-O) and SFTP-based (the default), both directions.
    let scp = |flags: &[&str], from: &str, to: &str| {
        let mut c = Command::new("scp");
        c.args(flags)
            .args(bed.client_opts(&[]))
            .args(["-P", &port, from, to]);
        c
    };
    for (mode, flags) in [("legacy", &["-O"][..]), ("sftp", &[][..])] {
        let up = format!("scp-{mode}-up.bin");
        let down = format!("scp-{mode}-down.bin");
        copy(
            scp(flags, &local, &remote(&up)),
            &up,
            &format!("scp {mode} upload"),
        );
        copy(
            scp(flags, &remote(&up), &here(&down)),
            &down,
            &format!("scp {mode} download"),
        );
    }

    // sftp batch: put, ls, get.
    let batch = bed.path("sftp.batch");
    std::fs::write(
        &batch,
        format!(
            "put {local} {up}\nls -l {up}\nget {up} {down}\n",
            up = here("sftp-up.bin"),
            down = here("sftp-down.bin")
        ),
    )
    .unwrap();
    let o = Command::new("sftp")
        .args(bed.client_opts(&[]))
        .args(["-P", &port, "-b"])
        .arg(&batch)
        .arg(format!("root@{HOST}"))
        .output()
        .unwrap();
    bed.expect_code(&o, 0, "sftp -b");
    assert!(
        stdout(&o).contains("sftp-up.bin"),
        "sftp ls lists the file{}",
        bed.diag(Some(&o))
    );
    check("sftp-up.bin", "sftp put", &o);
    check("sftp-down.bin", "sftp get", &o);

    // rsync over the proxy, both directions.
    let e = bed.ssh_line(&[]);
    let rsync = |from: &str, to: &str| {
        let mut c = Command::new("rsync");
        c.args(["-a", "-e", &e, from, to]);
        c
    };
    copy(
        rsync(&local, &remote("rsync-up.bin")),
        "rsync-up.bin",
        "rsync upload",
    );
    copy(
        rsync(&remote("rsync-up.bin"), &here("rsync-down.bin")),
        "rsync-down.bin",
        "rsync download",
    );

    // scp, sftp and rsync asked for what they needed.
    let opens = bed.events("channel.open");
    assert!(
        opens
            .iter()
            .any(|e| e["reason"] == "subsystem" && e["rule"] == "sftp"),
        "an sftp subsystem was audited{}",
        bed.diag(None)
    );
}

#[test]
fn interactive_pty_session() {
    let Some(bed) = Bed::known_good() else {
        return;
    };
    let mut script = Command::new("script");
    script
        .arg("-qec")
        .arg(format!("{} -tt root@{HOST}", bed.ssh_line(&[])))
        .arg("/dev/null");
    // Kept open until the session ends: EOF on script's stdin would end it early.
    let (mut child, mut stdin) = spawn_stdin_open(script);
    stdin.write_all(b"echo PTY_$((6*7)); tty; exit 5\n").unwrap();
    // Not ended within 30 s: killed, and the checks below say what it printed.
    let o = finish(&mut child, 30, || {}).unwrap_or_else(|o| o);
    drop(stdin);
    let text = stdout(&o);
    assert!(
        text.contains("PTY_42"),
        "command ran in the shell{}",
        bed.diag(Some(&o))
    );
    assert!(
        text.contains("/dev/pts/"),
        "a pty was allocated upstream{}",
        bed.diag(Some(&o))
    );
    bed.expect_code(&o, 5, "exit status of the interactive shell");
    let open = bed.wait_event("channel.open", |e| e["reason"] == "shell");
    bed.expect_fields(&open, json!({ "login": "root" }));
}

#[test]
fn host_key_is_derived_stable_and_follows_the_target() {
    let Some(mut bed) = Bed::known_good() else {
        return;
    };
    let strict = ["StrictHostKeyChecking=yes"];
    let target_key = |bed: &Bed| pub_key_file(&bed.sshd.host_key().with_extension("pub"));

    // First connection: trust on first use.
    let o = bed.exec("true", 0, "first connection");
    let first = bed.recorded_host_key();
    let old_target_key = target_key(&bed);
    assert_ne!(
        first.1,
        old_target_key.1,
        "the proxy must present a derived key, not the target's own{}",
        bed.diag(Some(&o))
    );

    // Same key on a second connection and after a daemon restart.
    bed.exec_with(&strict, "true", 0, "second connection, StrictHostKeyChecking=yes");
    bed.kill_daemon();
    bed.start_daemon();
    let o = bed.exec_with(
        &strict,
        "true",
        0,
        "after a daemon restart, StrictHostKeyChecking=yes",
    );
    assert_eq!(
        bed.recorded_host_key(),
        first,
        "known_hosts unchanged{}",
        bed.diag(Some(&o))
    );

    // The target gets a new host key: so does the proxy, and the client notices. The daemon
    // restarts as well: the key the target showed before is remembered across restarts.
    bed.restart_sshd();
    bed.kill_daemon();
    bed.start_daemon();
    assert_ne!(
        target_key(&bed),
        old_target_key,
        "the target's key changed{}",
        bed.diag(None)
    );
    let o = bed.exec_with(
        &["StrictHostKeyChecking=yes", "LogLevel=INFO"],
        "true",
        255,
        "a changed derived host key is refused",
    );
    assert!(
        stderr(&o).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "OpenSSH's warning{}",
        bed.diag(Some(&o))
    );
    let ev = bed.wait_event("hostkey.changed", |_| true);
    bed.expect_fields(&ev, json!({ "target": "web-01" }));
    assert!(
        ev["reason"].as_str().unwrap_or_default().contains("SHA256:"),
        "old → new fingerprints{}",
        bed.diag_event(&ev)
    );
}

/// Issue 14: with `[ca] host_certificates` the proxy shows its derived key with a host
/// certificate from the account CA. A known_hosts holding the line `portcullis ca
/// known-hosts` prints and, as users who knew the target before have, the target's own key
/// (which the proxy's differs from) lets `ssh -o StrictHostKeyChecking=yes` in without a
/// warning, by hostname or address (`HostKeyAlias`: in listener mode the client connects to
/// the listener, which no certificate names). Without the line the plain derived key is
/// recorded on first use as before, and clients asking for the plain key get it. After a
/// reload that turns the setting off, the old entry makes OpenSSH refuse, as it always did.
#[test]
fn host_certificates_get_users_past_their_entry_for_the_real_host() {
    let Some(bed) = Bed::new(GatewayOptions {
        extra: "\n[ca]\nhost_certificates = true\n".into(),
        ..Default::default()
    }) else {
        return;
    };
    let o = Command::new(BIN)
        .args(["ca", "known-hosts", "--config"])
        .arg(&bed.config)
        .output()
        .unwrap();
    let ca_line = stdout(&o);
    let port = bed.target.port();
    assert!(
        o.status.success()
            && ca_line.starts_with(&format!(
                "@cert-authority web-01,[web-01]:{port},127.0.0.1,[127.0.0.1]:{port} ssh-ed25519 "
            ))
            && ca_line.lines().count() == 1,
        "{ca_line}{}",
        stderr(&o)
    );
    let (kind, real) = pub_key_file(&bed.sshd.host_key().with_extension("pub"));
    let trusting = bed.path("known_hosts.ca");
    let before = format!("web-01 {kind} {real}\n127.0.0.1 {kind} {real}\n{ca_line}");
    std::fs::write(&trusting, &before).unwrap();
    let strict = |kh: &Path, alias: &str| {
        [
            format!("UserKnownHostsFile={}", kh.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            format!("HostKeyAlias={alias}"),
            "LogLevel=DEBUG1".into(),
        ]
    };
    // The certified key's fingerprint, as ssh -v prints it.
    let mut certified = Vec::new();
    for alias in ["web-01", "127.0.0.1"] {
        let opts = strict(&trusting, alias);
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let o = bed.exec_with(&opts, "echo certified", 0, alias);
        let err = stderr(&o);
        assert_eq!(stdout(&o), "certified\n", "{alias}{}", bed.diag(Some(&o)));
        let matched = format!("Host '{alias}' is known and matches the ED25519-CERT host certificate");
        assert!(
            err.contains(&matched)
                && err.contains("ID \"portcullis host certificate for web-01\"")
                && !err.contains("WARNING")
                && !err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{alias}: certified, no warning{}",
            bed.diag(Some(&o))
        );
        // "Server host certificate: ssh-ed25519-cert-v01@openssh.com SHA256:…, serial …"
        let fp = err
            .lines()
            .find_map(|l| l.split("Server host certificate: ").nth(1))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .trim_end_matches(',');
        certified.push(fp.to_string());
    }
    assert!(
        certified[0].starts_with("SHA256:") && certified[0] == certified[1],
        "one derived key: {certified:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&trusting).unwrap(),
        before,
        "known_hosts untouched"
    );

    // No line: trust on first use records the plain derived key, the one certified.
    let o = bed.exec("echo first", 0, "first use, accept-new");
    let (kind, recorded) = bed.recorded_host_key();
    std::fs::write(bed.path("recorded.pub"), format!("{kind} {recorded}\n")).unwrap();
    assert_eq!(
        (kind.as_str(), fingerprint(&bed.path("recorded.pub"))),
        ("ssh-ed25519", certified[0].clone()),
        "{}",
        bed.diag(Some(&o))
    );
    let plain = ["StrictHostKeyChecking=yes", "HostKeyAlgorithms=ssh-ed25519"];
    bed.exec_with(&plain, "true", 0, "a client that wants the plain key");

    // Off (a reload): the plain key only; the entry for the real host is a changed key.
    let cfg = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(
        &bed.config,
        cfg.replace("host_certificates = true", "host_certificates = false"),
    )
    .unwrap();
    unsafe { libc::kill(bed.daemon_pid().unwrap() as i32, libc::SIGHUP) };
    poll(10, || {
        bed.daemon_log().contains("configuration reloaded").then_some(())
    })
    .unwrap_or_else(|| panic!("no reload{}", bed.diag(None)));
    let opts = strict(&trusting, "web-01");
    let mut opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    opts.retain(|o| !o.starts_with("LogLevel"));
    let o = bed.exec_with(&opts, "true", 255, "certificates off: the old entry wins");
    assert!(
        stderr(&o).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        bed.diag(Some(&o))
    );
    bed.exec_with(
        &["StrictHostKeyChecking=yes"],
        "true",
        0,
        "the key recorded on first use",
    );
}

#[test]
fn login_not_allowed_by_policy_is_explained() {
    let Some(bed) = Bed::known_good() else {
        return;
    };
    let o = bed.ssh_as("admin", &[]).arg("id").output().unwrap();
    bed.expect_code(&o, 1, "login admin is denied");
    assert!(
        stderr(&o)
            .contains("portcullis: alice@example.com may not log in to web-01 as admin (login_not_allowed)"),
        "explanation on stderr{}",
        bed.diag(Some(&o))
    );
    assert!(o.stdout.is_empty(), "nothing ran{}", bed.diag(Some(&o)));
    bed.expect_deny(json!({ "reason": "login_not_allowed", "login": "admin" }));
    assert!(bed.events("session.start").is_empty(), "{}", bed.diag(None));
}

#[test]
fn identity_without_policy_is_refused_before_ssh() {
    let Some(bed) = Bed::new(GatewayOptions {
        groups: Some(vec!["dev".into()]),
        ..Default::default()
    }) else {
        return;
    };
    // sshd logs one connection already: the testbed's probe that it listens (logged by
    // sshd's child a moment later, which a busy machine can stretch: waited for).
    let connections = || bed.sshd.log().matches("Connection from").count();
    poll(10, || (connections() >= 1).then_some(()));
    let before = connections();
    let o = bed.exec("id", 255, "no policy: disconnected before the key exchange");
    assert!(o.stdout.is_empty(), "nothing ran{}", bed.diag(Some(&o)));
    // The reason is printed by the stock client without -v, and no host key was shown.
    let err = stderr(&o);
    assert!(
        err.contains("Received disconnect")
            && err.contains("refused (no_policy): no policy lets alice@example.com reach this target"),
        "the refusal explained on stderr{}",
        bed.diag(Some(&o))
    );
    assert!(
        !err.to_lowercase().contains("host key"),
        "no host key involved{}",
        bed.diag(Some(&o))
    );
    bed.expect_deny(json!({ "reason": "no_policy", "identity": "alice@example.com" }));
    // The target was never touched.
    assert_eq!(
        connections(),
        before,
        "sshd saw a connection{}",
        bed.diag(Some(&o))
    );
}

#[test]
fn target_that_does_not_trust_the_ca_is_explained() {
    let Some(bed) = Bed::new(GatewayOptions {
        untrusted: true,
        ..Default::default()
    }) else {
        return;
    };
    let o = bed.exec("id", 1, "upstream refused the certificate");
    let err = stderr(&o);
    assert!(
        err.contains("did not accept the gateway's certificate") && err.contains("portcullis ca pubkey"),
        "explanation on stderr{}",
        bed.diag(Some(&o))
    );
    let d = bed.expect_deny(json!({ "reason": "upstream_auth_failed" }));
    assert!(
        d["cert_serial"].is_u64(),
        "the refused certificate\'s serial{}",
        bed.diag_event(&d)
    );
}

#[test]
fn target_down_fails_and_is_audited() {
    let Some(bed) = Bed::new(GatewayOptions {
        target_down: true,
        ..Default::default()
    }) else {
        return;
    };
    let o = bed.exec("id", 255, "target down");
    assert!(
        stderr(&o).contains("portcullis: target web-01") && stderr(&o).contains("(upstream_failed)"),
        "the user is told which target failed{}",
        bed.diag(Some(&o))
    );
    let d = bed.expect_deny(json!({ "reason": "upstream_failed" }));
    assert!(
        d["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("connection failed"),
        "the cause is audited{}",
        bed.diag_event(&d)
    );
}

/// Seed 002 describes targets whose `AuthorizedPrincipalsFile` lists the user's email prefix
/// (policy `email_prefix_login = true`: alice@example.com → principal `alice`, while logging
/// in as e.g. root). The product issues exactly one principal, the login itself
/// (`cert::mint`), so such a target accepts the certificate only if its principals file
/// lists the login. This documents that behaviour: a file naming `alice` refuses a root
/// login; a file naming `root` accepts it.
#[test]
fn authorized_principals_file_must_list_the_login() {
    let Some(bed) = Bed::new(GatewayOptions {
        policy_extra: "email_prefix_login = true".into(),
        sshd_extra: vec!["AuthorizedPrincipalsFile {dir}/principals/%u".into()],
        ..Default::default()
    }) else {
        return;
    };
    std::fs::create_dir_all(bed.path("principals")).unwrap();
    std::fs::write(bed.path("principals/root"), "alice\n").unwrap();

    let o = bed.exec("id -un", 1, "principal root is not in principals/root (alice)");
    assert!(
        stderr(&o).contains("did not accept the gateway's certificate for root"),
        "{}",
        bed.diag(Some(&o))
    );
    bed.expect_deny(json!({ "reason": "upstream_auth_failed" }));
    assert!(
        bed.sshd
            .log()
            .contains("Certificate does not contain an authorized principal"),
        "sshd says why{}",
        bed.diag(Some(&o))
    );

    // Listing the login makes it work (the file is read per authentication).
    std::fs::write(bed.path("principals/root"), "alice\nroot\n").unwrap();
    let o = bed.exec("id -un", 0, "principal root listed");
    assert_eq!(stdout(&o), "root\n", "{}", bed.diag(Some(&o)));
}

/// Which authentication methods a client may offer. The identity comes from the source
/// address, so the proxy accepts `none`, any verified `publickey` and prompt-less
/// `keyboard-interactive`, and never offers `password` (`proxy/front.rs`). OpenSSH always
/// sends a `none` request first, whatever `PreferredAuthentications` says, and the proxy
/// accepts it: every one of these clients, including a password-only one, is let in with
/// `none` before its preferred method is tried. Refusing a password-only client (exit 255)
/// would need the proxy to stop accepting `none`; this test pins the current design.
#[test]
fn client_auth_methods() {
    let Some(bed) = Bed::known_good() else {
        return;
    };
    let identity_file = bed.client_key();

    let cases: [(&str, Vec<&str>); 3] = [
        (
            "publickey-only",
            vec![
                "PreferredAuthentications=publickey",
                "IdentitiesOnly=yes",
                &identity_file,
            ],
        ),
        (
            "keyboard-interactive-only",
            vec![
                "PreferredAuthentications=keyboard-interactive",
                "KbdInteractiveAuthentication=yes",
            ],
        ),
        (
            "password-only",
            vec!["PreferredAuthentications=password", "PasswordAuthentication=yes"],
        ),
    ];
    for (what, mut opts) in cases {
        opts.push("LogLevel=VERBOSE");
        let o = bed.exec_with(&opts, "echo in", 0, &format!("{what} client"));
        assert_eq!(stdout(&o), "in\n", "{what}{}", bed.diag(Some(&o)));
        assert!(
            stderr(&o).contains("using \"none\""),
            "{what}: authenticated with `none`{}",
            bed.diag(Some(&o))
        );
    }
    assert_eq!(bed.events("session.start").len(), 3, "{}", bed.diag(None));
}

#[test]
fn slow_reader_does_not_grow_proxy_memory() {
    const TOTAL: u64 = 300_000_000;
    const LIMIT_KB: u64 = 200 * 1024;
    let Some(bed) = Bed::known_good() else {
        return;
    };
    let before = bed.daemon_rss_kb().unwrap_or(0);
    let mut c = bed.ssh_as("root", &[]);
    c.arg(format!("head -c {TOTAL} /dev/zero"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guard(c.spawn().unwrap());
    let mut out = child.0.stdout.take().unwrap();
    // The reader stalls for 2 s (the point of the test), then drains.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        std::io::copy(&mut out, &mut std::io::sink()).unwrap_or(0)
    });
    let mut peak = before;
    let o = finish(&mut child.0, 120, || {
        if let Some(kb) = bed.daemon_rss_kb() {
            peak = peak.max(kb);
        }
    })
    .unwrap_or_else(|o| {
        panic!(
            "the transfer did not finish within 2 minutes{}",
            bed.diag(Some(&o))
        )
    });
    let received = reader.join().unwrap();
    bed.expect_code(&o, 0, "bulk download");
    assert_eq!(received, TOTAL, "bytes received{}", bed.diag(Some(&o)));
    eprintln!("proxy RSS: {before} kB before, peak {peak} kB");
    assert!(
        peak < LIMIT_KB,
        "proxy RSS peaked at {peak} kB (limit {LIMIT_KB} kB){}",
        bed.diag(Some(&o))
    );
}

/// russh refills a channel's window when data arrives, not when it is relayed, so its
/// bounded per-channel queue is what holds a fast writer back; when the queue of a channel
/// whose reader is slow is full, the connection's other channels wait behind it. What the
/// proxy guarantees: a slow reader on one channel delays its neighbours (opens, requests,
/// data) but never stops them, in either direction, and memory stays bounded. Before the
/// fix the second session hung for good: its open waited on the client's session loop for
/// the target's loop, which waited for window updates only the client's loop could read.
#[test]
fn slow_channel_delays_but_never_stops_its_neighbour() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    const LIMIT_KB: u64 = 200 * 1024;
    let Some(bed) = Bed::known_good() else {
        return;
    };
    let master = Master::start(&bed, bed.proxy_port, "proxy", &[]);
    // A second session on the connection: a hang (the connection's loops waiting on each
    // other) fails the test instead of stopping it.
    let beside = |m: &Master, cmd: &str| {
        let mut c = m.client();
        c.arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Guard(c.spawn().unwrap());
        finish(&mut child.0, 60, || {})
            .unwrap_or_else(|o| panic!("`{cmd}` beside a slow channel hung{}", bed.diag(Some(&o))))
    };
    let mut peak = bed.daemon_rss_kb().unwrap_or(0);
    let slow_read = |r: &mut dyn Read, fast: &std::sync::atomic::AtomicBool| {
        // 16 KiB every 10 ms until told to hurry.
        let mut buf = vec![0u8; 16 * 1024];
        let mut n = 0u64;
        loop {
            if !fast.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k as u64,
            }
        }
    };

    // Target → client: the local reader of channel A is slow.
    let mut a = master.client();
    a.arg(format!("head -c {TOTAL} /dev/zero"));
    let (a, a_stdin) = spawn_stdin_open(a);
    let mut a = Guard(a);
    let mut out = a.0.stdout.take().unwrap();
    let hurry = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = hurry.clone();
    let reader = std::thread::spawn(move || slow_read(&mut out, &h));
    // Let A's queues fill before B starts.
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let b = beside(&master, "echo b");
    let waited = started.elapsed();
    hurry.store(true, std::sync::atomic::Ordering::Relaxed);
    bed.expect_code(&b, 0, "channel B beside a slow download");
    assert_eq!(stdout(&b), "b\n", "{}", bed.diag(Some(&b)));
    let oa = finish(&mut a.0, 120, || {
        peak = peak.max(bed.daemon_rss_kb().unwrap_or(0));
    })
    .unwrap_or_else(|o| panic!("the slow download did not finish{}", bed.diag(Some(&o))));
    drop(a_stdin);
    bed.expect_code(&oa, 0, "slow download");
    assert_eq!(
        reader.join().unwrap(),
        TOTAL,
        "bytes downloaded{}",
        bed.diag(Some(&oa))
    );
    eprintln!("beside a slow download, `echo b` took {waited:?}");

    // Client → target: the target's reader of channel C is slow (a shell loop of small reads).
    let mut c = master.client();
    // Ends at EOF (dd itself succeeds on an empty read, which would loop forever once the
    // channel is gone, leaving the loop behind on the target).
    c.arg("while [ \"$(dd bs=16k count=1 2>/dev/null | wc -c)\" -gt 0 ]; do sleep 0.01; done");
    let (c, mut c_stdin) = spawn_stdin_open(c);
    let mut c = Guard(c);
    let writer = std::thread::spawn(move || {
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < TOTAL && c_stdin.write_all(&chunk).is_ok() {
            sent += chunk.len() as u64;
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let d = beside(&master, "echo d");
    let waited_up = started.elapsed();
    bed.expect_code(&d, 0, "channel D beside a slow upload");
    assert_eq!(stdout(&d), "d\n", "{}", bed.diag(Some(&d)));
    eprintln!("beside a slow upload, `echo d` took {waited_up:?}");
    // The upload itself is not waited for: it would take minutes at this pace.
    let _ = c.0.kill();
    let _ = writer.join();
    peak = peak.max(bed.daemon_rss_kb().unwrap_or(0));
    eprintln!("proxy RSS peak {peak} kB");
    assert!(
        peak < LIMIT_KB,
        "proxy RSS peaked at {peak} kB (limit {LIMIT_KB} kB){}",
        bed.diag(None)
    );
    master.exit();
}

#[test]
fn multiplexed_channels_share_one_connection() {
    let Some(bed) = Bed::known_good() else {
        return;
    };
    // ControlPath=DIR/cm-…-%C, ControlMaster=auto, ControlPersist=10 for the sessions.
    let master = Master::start(&bed, bed.proxy_port, "proxy", &[]);

    // Both clients keep their stdin open: a client whose stdin is at EOF may close its
    // channel first, which loses the exit status (see `exit_status_survives_client_closing_first`).
    let mut slow = master.client();
    slow.arg("sleep 1; echo a");
    let (slow, slow_stdin) = spawn_stdin_open(slow);
    bed.wait_event("channel.open", |e| e["rule"] == "sleep 1; echo a");
    let mut fast = master.client();
    fast.arg("echo b");
    let (fast, fast_stdin) = spawn_stdin_open(fast);
    let o = fast.wait_with_output().unwrap();
    drop(fast_stdin);
    bed.expect_code(&o, 0, "second multiplexed session");
    assert_eq!(stdout(&o), "b\n", "{}", bed.diag(Some(&o)));
    let mut slow = Guard(slow);
    assert!(
        slow.0.try_wait().unwrap().is_none(),
        "the first session is still running while the second one completed{}",
        bed.diag(Some(&o))
    );
    let oa = finish(&mut slow.0, 15, || {})
        .unwrap_or_else(|oa| panic!("the first session did not end{}", bed.diag(Some(&oa))));
    drop(slow_stdin);
    bed.expect_code(&oa, 0, "first multiplexed session");
    assert_eq!(stdout(&oa), "a\n", "{}", bed.diag(Some(&oa)));

    master.exit();

    // One proxied connection, one certificate, two exec channels.
    let starts = bed.events("session.start");
    assert_eq!(starts.len(), 1, "one SSH connection{}", bed.diag(None));
    let session = starts[0]["session"].clone();
    let execs: Vec<Value> = bed
        .events("channel.open")
        .into_iter()
        .filter(|e| e["reason"] == "exec")
        .collect();
    assert_eq!(execs.len(), 2, "two exec channels{}", bed.diag(None));
    assert!(
        execs.iter().all(|e| e["session"] == session),
        "both on the one connection{}",
        bed.diag(None)
    );
    bed.wait_event("session.end", |e| e["session"] == session);
}

/// The target may send `exit-status` after its EOF (sshd does when the command closes its
/// output before it exits). A multiplexed OpenSSH session whose stdin is at EOF then closes
/// its channel as soon as it has the target's EOF, still expecting the exit status: sshd
/// sends it before its own CHANNEL_CLOSE, and so must the proxy. Control: the same through
/// a master connected straight to sshd (key in a test-only `AuthorizedKeysFile`).
///
/// Plain (non-multiplexed) `ssh` waits for the server's close, so it is not affected; the
/// multiplexed sessions hit this as a race whenever EOF and exit-status arrive apart.
#[test]
fn exit_status_survives_client_closing_first() {
    let Some(bed) = Bed::new(GatewayOptions {
        sshd_extra: vec!["AuthorizedKeysFile {dir}/authorized_keys".into()],
        ..Default::default()
    }) else {
        return;
    };
    let identity = bed.client_key();
    std::fs::copy(bed.path("id_ed25519.pub"), bed.path("authorized_keys")).unwrap();
    let cmd = "echo out; exec >&- 2>&-; sleep 0.5; exit 3";

    let direct = Master::start(
        &bed,
        bed.target.port(),
        "direct",
        &["IdentitiesOnly=yes", &identity],
    );
    let o = direct.exec(cmd);
    assert_eq!(
        stdout(&o),
        "out\n",
        "control{}\n{}",
        bed.diag(Some(&o)),
        direct.log()
    );
    bed.expect_code(&o, 3, "control: multiplexed straight to sshd");
    direct.exit();

    let proxied = Master::start(&bed, bed.proxy_port, "proxy", &[]);
    let o = proxied.exec(cmd);
    assert_eq!(stdout(&o), "out\n", "{}", bed.diag(Some(&o)));
    bed.expect_code(
        &o,
        3,
        "exit status through the proxy when the client closes the channel first \
         (255: the proxy answered the client's CHANNEL_CLOSE before relaying the target's exit-status)",
    );
    proxied.exit();
}

/// Keepalives from both ends are answered: the client's (`ServerAliveInterval`, a global
/// request to the proxy) and the target's (`ClientAliveInterval`, a channel request to the
/// proxy's upstream connection). Either side hangs up after two unanswered ones, so an idle
/// five-second command would be cut off.
#[test]
fn keepalives_from_either_end_are_answered() {
    let Some(bed) = Bed::new(GatewayOptions {
        sshd_extra: vec!["ClientAliveInterval 1".into(), "ClientAliveCountMax 2".into()],
        ..Default::default()
    }) else {
        return;
    };
    let o = bed.exec_with(
        &["ServerAliveInterval=1", "ServerAliveCountMax=2"],
        "sleep 5; echo alive",
        0,
        "an idle session with keepalives both ways",
    );
    assert_eq!(stdout(&o), "alive\n", "{}", bed.diag(Some(&o)));
}

/// `ssh-keygen` in `dir`: a new Ed25519 key `name` (and `name.pub`); returns the public line.
fn keygen(dir: &Path, name: &str) -> String {
    let k = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&k)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen {name}");
    std::fs::read_to_string(k.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn fingerprint(pub_file: &Path) -> String {
    let o = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A target's host key can be pinned (`host_keys`: key lines or SHA256 fingerprints): the
/// pinned key logs in; any other is refused before the client is answered, and audited.
#[test]
fn pinned_host_keys_are_enforced() {
    if !root_or_skip() {
        return;
    }
    let keys = scratch("pins");
    let host_line = keygen(&keys, "host");
    let other_line = keygen(&keys, "other");
    let fp = fingerprint(&keys.join("host.pub"));
    for pins in [format!("{host_line:?}"), format!("{fp:?}, {other_line:?}")] {
        let bed = Bed::new(GatewayOptions {
            sshd_host_key: Some(keys.join("host")),
            target_extra: format!("host_keys = [{pins}]"),
            ..Default::default()
        })
        .unwrap();
        let o = bed.exec("echo pinned", 0, "the pinned key");
        assert_eq!(stdout(&o), "pinned\n", "{}", bed.diag(Some(&o)));
    }
    let bed = Bed::new(GatewayOptions {
        sshd_host_key: Some(keys.join("host")),
        target_extra: format!("host_keys = [{other_line:?}]"),
        ..Default::default()
    })
    .unwrap();
    let o = bed.exec("id", 255, "a key that is not pinned");
    assert!(
        stderr(&o).contains("not pinned") && stderr(&o).contains("(hostkey_rejected)"),
        "the user is told why{}",
        bed.diag(Some(&o))
    );
    let d = bed.expect_deny(json!({ "reason": "hostkey_rejected" }));
    let why = d["rule"].as_str().unwrap_or_default();
    assert!(
        why.contains(&fp) && why.contains("not pinned"),
        "{}",
        bed.diag_event(&d)
    );
    assert!(bed.events("session.start").is_empty(), "{}", bed.diag(None));
    let _ = std::fs::remove_dir_all(&keys);
}

/// With `[upstream] host_ca_keys` a target must show a host certificate from one of those
/// CAs that names it (hostname or address): such a target logs in; a plain key, another
/// CA's certificate or one for another host is refused and audited.
#[test]
fn host_certificates_are_checked_against_the_host_ca() {
    if !root_or_skip() {
        return;
    }
    let keys = scratch("hostca");
    let ca_line = keygen(&keys, "hostca");
    keygen(&keys, "rogueca");
    keygen(&keys, "host");
    let sign = |ca: &str, principals: &str, out: &str| {
        std::fs::copy(keys.join("host.pub"), keys.join(format!("{out}.pub"))).unwrap();
        let st = Command::new("ssh-keygen")
            .args(["-q", "-h", "-I", "web-01", "-n", principals, "-s"])
            .arg(keys.join(ca))
            .arg(keys.join(format!("{out}.pub")))
            .status()
            .unwrap();
        assert!(st.success(), "sign {out}");
        keys.join(format!("{out}-cert.pub"))
    };
    let cases = [
        (
            Some(sign("hostca", "web-01", "good")),
            true,
            "a certificate naming the target",
        ),
        (
            Some(sign("hostca", "127.0.0.1", "byaddr")),
            true,
            "one naming its address",
        ),
        (None, false, "a plain host key"),
        (
            Some(sign("rogueca", "web-01", "rogue")),
            false,
            "another CA's certificate",
        ),
        (
            Some(sign("hostca", "db-01", "elsewhere")),
            false,
            "a certificate for another host",
        ),
    ];
    for (cert, ok, what) in cases {
        let bed = Bed::new(GatewayOptions {
            sshd_host_key: Some(keys.join("host")),
            sshd_extra: cert
                .iter()
                .map(|c| format!("HostCertificate {}", c.display()))
                .collect(),
            extra: format!("\n[upstream]\nhost_ca_keys = [{ca_line:?}]\n"),
            ..Default::default()
        })
        .unwrap();
        if ok {
            let o = bed.exec("echo certified", 0, what);
            assert_eq!(stdout(&o), "certified\n", "{what}{}", bed.diag(Some(&o)));
        } else {
            bed.exec("id", 255, what);
            bed.expect_deny(json!({ "reason": "hostkey_rejected" }));
        }
    }
    let _ = std::fs::remove_dir_all(&keys);
}
