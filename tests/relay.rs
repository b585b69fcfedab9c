//! The proxy's relay under load, end to end on loopback (listener mode, no eBPF): real
//! clients (OpenSSH's `ssh`, also as a ControlMaster, PuTTY's `plink`, Dropbear's `dbclient`)
//! → `portcullis run` → a real `/usr/sbin/sshd`. Needs root (sshd logging in as root).
//!
//! What this file proves:
//! - large `cat` round trips (upload and download at the same time, on one channel) arrive
//!   byte-exact (SHA-256) with every cipher OpenSSH 9.2 offers, with PuTTY's and Dropbear's
//!   clients, and across many rekeys on both hops (client → proxy, proxy → target);
//! - on one multiplexed connection a channel whose local reader stops entirely does not
//!   delay its neighbour, and an upload the target reads late next to a download the client
//!   reads late both finish — channels of one connection have their own flow control;
//! - proxy memory stays bounded while readers stall;
//! - OpenSSH's `~B` (an RFC 4335 `break` request) reaches the target;
//! - neither hop is downgraded from the post-quantum KEX OpenSSH 9.2 prefers
//!   (sntrup761x25519-sha512).
//!
//! The oracles read from sshd's log need `LogLevel DEBUG1` (see [`debug_target`] for why
//! that is not an `sshd_extra` line); the tests that use them first check them against a
//! connection straight to the target sshd where that is cheap (`~B`, the KEX).
//!
//! Every transfer is 1 GiB each way: each cipher OpenSSH 9.2 has, the default one (with
//! rekeys), `plink` and `dbclient`. Measured through the proxy (debug build): `ssh` 58–82
//! MiB/s each way, `plink` ~66 MiB/s, `dbclient` ~31 MiB/s. What comes back is hashed
//! by `sha256sum`, not the `sha2` crate: unoptimised in test builds it hashes ~25 MiB/s and
//! would cap every transfer. The tests of this file run one at a time (see [`serial`]): they
//! would otherwise share two cores, and the one-second threshold of
//! `a_stopped_reader_does_not_delay_its_neighbour` would measure the machine. Throughput
//! figures are printed (`--nocapture`), never asserted.
//!
//! Before the relay is on the project's own engine (russh refills a channel's window when
//! data arrives, not when it is relayed) the big round trips and the two multiplexing tests
//! are expected to stall: every wait has a deadline and a failure says how far each
//! direction got, with the tails of the daemon's and sshd's logs.

use std::{
    fs::File,
    io::{Read, Write},
    ops::Deref,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use portcullis_testbed::{poll, root_or_skip, ssh_opts, Gateway, GatewayOptions};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Where the proxy's client connects from and to: `[[identity]] sources = ["127.0.0.1"]`.
const HOST: &str = "127.0.0.1";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// How long one big transfer may take before the test fails instead of hanging.
const DEADLINE: u64 = 300;
/// The proxy's resident memory while readers stall (it must not buffer what they do not read).
const RSS_LIMIT_KB: u64 = 200 * 1024;

/// The tests of this file run one at a time: they move gigabytes on a two-core machine, and
/// one of them has a timing threshold.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

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

/// Waits up to `secs` seconds for `child` to exit, calling `tick` while it runs. Its pipes
/// are not touched: a ControlMaster holds the mux client's stdio, so a reader of a killed
/// mux client's stdout would not see its end.
fn exited_within(child: &mut Child, secs: u64, tick: impl FnMut()) -> Option<ExitStatus> {
    let mut tick = tick;
    poll(secs, || {
        tick();
        child.try_wait().unwrap()
    })
}

/// A child process killed on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `c` with stdin a pipe that the caller holds (and stdout/stderr piped).
fn spawn_stdin_open(mut c: Command) -> (Guard, ChildStdin) {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (Guard(child), stdin)
}

/// Reads `r` to its end on a thread.
fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Reads `r` to its end on a thread, after `delay`, counting into `seen` as it goes.
fn count(r: impl Read + Send + 'static, delay: Duration, seen: Arc<AtomicU64>) -> JoinHandle<u64> {
    let mut r = r;
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return seen.load(Ordering::Relaxed),
                Ok(n) => {
                    seen.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    })
}

/// MiB/s of `bytes` in `d`.
fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-6)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// A testbed `Gateway` (the proxy in listener mode in front of one sshd, in a directory of
/// its own) with the client commands and failure diagnostics of these tests.
struct Bed(Gateway);

impl Deref for Bed {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.0
    }
}

impl Bed {
    /// A gateway set up as `opts` says, or `None` (test skipped) without root.
    fn new(opts: GatewayOptions) -> Option<Self> {
        root_or_skip().then(|| Self(Gateway::start(Path::new(BIN), &opts)))
    }

    /// A gateway whose target sshd lets a client key of the bed in (`authorized_keys` in the
    /// bed), for control runs straight to the target; with `sshd_extra` lines besides.
    fn with_direct_access(sshd_extra: &[&str]) -> Option<Self> {
        let mut extra = vec!["AuthorizedKeysFile {dir}/authorized_keys".to_string()];
        extra.extend(sshd_extra.iter().map(|l| l.to_string()));
        Self::new(GatewayOptions {
            sshd_extra: extra,
            ..Default::default()
        })
    }

    /// The client options every test uses: quiet, per-test known_hosts, no agent. Options
    /// given first win in OpenSSH, so `extra` can override the defaults (`LogLevel=DEBUG1`).
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

    /// `ssh [-o extra…] <defaults> [args…] -p PORT root@127.0.0.1`; the caller adds the command.
    fn ssh_port(&self, port: u16, extra: &[&str], args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.client_opts(extra))
            .args(args)
            .args(["-p", &port.to_string()])
            .arg(format!("root@{HOST}"));
        c
    }

    /// `ssh` through the proxy.
    fn ssh(&self, extra: &[&str], args: &[&str]) -> Command {
        self.ssh_port(self.proxy_port, extra, args)
    }

    /// The `ssh …` command line for `script -c` (ends with the destination).
    fn ssh_line(&self, port: u16, extra: &[&str], args: &[&str]) -> String {
        format!(
            "ssh {} {} -p {port} root@{HOST}",
            self.client_opts(extra).join(" "),
            args.join(" ")
        )
    }

    /// A client key pair `id_ed25519{,.pub}` in the bed that the target accepts (the bed was
    /// made `with_direct_access`); returns its `IdentityFile=` option.
    fn direct_key(&self) -> String {
        let key = self.path("id_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success(), "ssh-keygen");
        std::fs::copy(key.with_extension("pub"), self.path("authorized_keys")).unwrap();
        format!("IdentityFile={}", key.display())
    }

    /// What a failure message needs: the client's status and stderr, the daemon's and sshd's
    /// logs and the audit trail.
    fn diag(&self, o: Option<&Output>) -> String {
        let mut s = String::new();
        if let Some(o) = o {
            s += &format!(
                "\n--- client: {}\n--- client stdout (tail):\n{}\n--- client stderr (tail):\n{}",
                o.status,
                tail(&stdout(o), 10),
                tail(&stderr(o), 40)
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

    #[track_caller]
    fn expect_code(&self, o: &Output, code: i32, what: &str) {
        assert_eq!(o.status.code(), Some(code), "{what}{}", self.diag(Some(o)));
    }

    /// sshd's log from byte `from` on (what a test's connection made it log).
    fn sshd_log_since(&self, from: usize) -> String {
        let log = self.sshd.log();
        log.get(from..).unwrap_or_default().to_string()
    }
}

/// sshd keeps the first value it reads for a keyword, and the testbed's `sshd_config`
/// begins with `LogLevel VERBOSE`: an `sshd_extra` line `LogLevel DEBUG1` has no effect
/// (`sshd -T` says `loglevel VERBOSE`), and one in a `Match all` block applies only once the
/// user is looked up, after the first key exchange. A command-line `-o` is read before the
/// file. So the target sshd is replaced by one with the same configuration file (host key,
/// CA, `sshd_extra`) on the same address, started with `-o LogLevel=DEBUG1` and writing to
/// the same `sshd.log` (emptied), which `bed.sshd.log()` and the diagnostics read.
///
/// The guard stops it: bind it after the bed, so that it is dropped first.
fn debug_target(bed: &Bed) -> Guard {
    let pid = bed.sshd.pid();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // Dead (its listening socket closed) once it is a zombie: the testbed reaps it later.
    let dead = poll(10, || {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Some(()),
            Ok(stat) => {
                let state = stat.rsplit(')').next()?.split_whitespace().next()?;
                (state == "Z").then_some(())
            }
        }
    });
    assert!(dead.is_some(), "the testbed's sshd {pid} did not die");
    let log = File::create(bed.sshd.path("sshd.log")).unwrap();
    let mut child = Guard(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-o", "LogLevel=DEBUG1", "-f"])
            .arg(bed.sshd.path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let up = poll(10, || {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("sshd at DEBUG1 exited {st}:\n{}", bed.sshd.log());
        }
        std::net::TcpStream::connect_timeout(&bed.target, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    });
    assert!(
        up.is_some(),
        "sshd at DEBUG1 does not listen on {}:\n{}",
        bed.target,
        bed.sshd.log()
    );
    child
}

/// `len` random bytes in the bed's file `name`; returns its path and SHA-256 (hex).
fn random_file(name: &str, len: u64) -> (PathBuf, String) {
    // Made once and kept in cargo's scratch directory for integration tests (under
    // target/): the tests of this file, and later runs, share it instead of spending
    // seconds each on 1 GiB of /dev/urandom.
    static MADE: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, sha)) = made.as_ref() {
        return (p.clone(), sha.clone());
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let p = dir.join(format!("relay-{name}-{len}"));
    let sha_file = p.with_extension("sha256");
    let kept = std::fs::read_to_string(&sha_file)
        .ok()
        .filter(|_| std::fs::metadata(&p).map(|m| m.len() == len).unwrap_or(false));
    let sha = match kept {
        Some(sha) => sha.trim().to_string(),
        None => {
            let started = Instant::now();
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "head -c {len} /dev/urandom | tee {} | sha256sum",
                    p.display()
                ))
                .output()
                .unwrap();
            assert!(o.status.success(), "random data: {}", stderr(&o));
            assert_eq!(std::fs::metadata(&p).unwrap().len(), len, "random data");
            eprintln!("{} of random data in {:.1?}", mib(len), started.elapsed());
            let sha = stdout(&o).split_whitespace().next().unwrap().to_string();
            std::fs::write(&sha_file, &sha).unwrap();
            sha
        }
    };
    *made = Some((p.clone(), sha.clone()));
    (p, sha)
}

/// Runs `c` — a client whose remote command is `cat` — with the first `len` bytes of `data`
/// on its stdin while its stdout is counted and hashed as it arrives: upload and download at once, on
/// one channel. Asserts exit status 0, `len` bytes back and their SHA-256 `sha`; a client
/// not done within [`DEADLINE`] is killed and the failure says how far each direction got.
/// Prints the throughput. Returns the client's status and stderr.
#[track_caller]
fn cat_round_trip(bed: &Bed, mut c: Command, data: &Path, len: u64, sha: &str, what: &str) -> Output {
    let (mut child, mut stdin) = spawn_stdin_open({
        c.env("HOME", &bed.dir);
        c
    });
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let src = File::open(data).unwrap();
    let s = sent.clone();
    let writer = std::thread::spawn(move || {
        let mut src = src.take(len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) => return Err(format!("reading the data: {e}")),
            };
            if let Err(e) = stdin.write_all(&buf[..n]) {
                return Err(format!("writing to the client: {e}"));
            }
            s.fetch_add(n as u64, Ordering::Relaxed);
        }
        // stdin is dropped here: end of file for the client, which sends the channel's EOF.
    });
    // Hashed by `sha256sum`, fed by a thread that counts: the `sha2` crate is unoptimised in
    // test builds (~25 MiB/s measured here) and would cap the transfer.
    let mut sum = Guard(
        Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut sum_in = sum.0.stdin.take().unwrap();
    let sum_out = drain(sum.0.stdout.take().unwrap());
    let mut out = child.0.stdout.take().unwrap();
    let r = received.clone();
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    r.fetch_add(n as u64, Ordering::Relaxed);
                    if sum_in.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        // sum_in dropped: sha256sum prints the digest.
    });
    let err = drain(child.0.stderr.take().unwrap());
    let started = Instant::now();
    let status = exited_within(&mut child.0, DEADLINE, || {});
    let elapsed = started.elapsed();
    let timed_out = status.is_none();
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.0.kill();
            child.0.wait().unwrap()
        }
    };
    // The client is gone: its pipes are closed and the threads end.
    counter.join().unwrap();
    let got = String::from_utf8_lossy(&sum_out.join().unwrap())
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let wrote = writer.join().unwrap();
    let o = Output {
        status,
        stdout: Vec::new(),
        stderr: err.join().unwrap(),
    };
    let (up, down) = (sent.load(Ordering::Relaxed), received.load(Ordering::Relaxed));
    if timed_out {
        panic!(
            "{what}: not done within {DEADLINE} s (killed): {} of {} sent, {} received{}",
            mib(up),
            mib(len),
            mib(down),
            bed.diag(Some(&o))
        );
    }
    bed.expect_code(&o, 0, what);
    assert!(wrote.is_ok(), "{what}: {wrote:?}{}", bed.diag(Some(&o)));
    assert_eq!(down, len, "{what}: bytes back{}", bed.diag(Some(&o)));
    assert_eq!(
        got,
        sha,
        "{what}: SHA-256 of what came back{}",
        bed.diag(Some(&o))
    );
    eprintln!(
        "{what}: {} each way in {elapsed:.1?}: {:.1} MiB/s each way",
        mib(len),
        rate(len, elapsed)
    );
    o
}

/// The algorithm names of `debug1: kex: algorithm: NAME` lines (client `-v` output or sshd's
/// DEBUG1 log, where sshd adds ` [preauth]`).
fn kex_algorithms(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("kex: algorithm: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Key exchanges a side started: its `SSH2_MSG_KEXINIT sent` lines. Each key exchange logs
/// one on each side, whoever started it; sshd tags the first one (before authentication)
/// ` [preauth]`.
fn kexinits_sent(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("debug1: SSH2_MSG_KEXINIT sent"))
        .collect()
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
            bed.ssh_port(port, &master_opts, &["-N"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap())
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
        self.bed.ssh_port(self.port, &o, &[])
    }

    /// Runs `cmd` in a session of this master, stdin at EOF, and returns how long it took;
    /// a session not done within 60 s fails the test (its pipes are left to the master).
    #[track_caller]
    fn timed_exec(&self, cmd: &str, expect: &str) -> Duration {
        let started = Instant::now();
        let mut c = self.client();
        c.arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Guard(c.spawn().unwrap());
        let out = drain(child.0.stdout.take().unwrap());
        let err = drain(child.0.stderr.take().unwrap());
        let Some(status) = exited_within(&mut child.0, 60, || {}) else {
            panic!(
                "`{cmd}` not done within 60 s\n--- master:\n{}{}",
                self.log(),
                self.bed.diag(None)
            );
        };
        let took = started.elapsed();
        let o = Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        };
        self.bed.expect_code(&o, 0, cmd);
        assert_eq!(stdout(&o), expect, "{cmd}{}", self.bed.diag(Some(&o)));
        took
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

// ---------------------------------------------------------------------------------------

/// `cat` both ways at once, 1 GiB with the default cipher and 256 MiB (for test time) with
/// each cipher OpenSSH 9.2 has (`-c` restricts the client hop to it; the CTR ciphers with
/// an ETM MAC), each on a connection of its own.
#[test]
fn one_gib_cat_round_trips_with_every_openssh_cipher() {
    let _serial = serial();
    let Some(bed) = Bed::new(GatewayOptions::default()) else {
        return;
    };
    let (data, sha) = random_file("random.bin", GIB);
    let etm = "hmac-sha2-256-etm@openssh.com";
    let runs: [(&str, &[&str]); 5] = [
        (
            "chacha20-poly1305@openssh.com",
            &["-c", "chacha20-poly1305@openssh.com"],
        ),
        ("aes128-gcm@openssh.com", &["-c", "aes128-gcm@openssh.com"]),
        ("aes256-gcm@openssh.com", &["-c", "aes256-gcm@openssh.com"]),
        ("aes128-ctr", &["-c", "aes128-ctr", "-m", etm]),
        ("aes256-ctr", &["-c", "aes256-ctr", "-m", etm]),
    ];
    for (name, args) in runs {
        let mut c = bed.ssh(&["LogLevel=DEBUG1"], args);
        c.arg("cat");
        let o = cat_round_trip(&bed, c, &data, GIB, &sha, &format!("ssh cat, {name}"));
        // The client hop negotiated what was asked for.
        let wanted = format!("cipher: {name} ");
        let err = stderr(&o);
        assert!(
            err.lines()
                .any(|l| l.contains("kex: client->server cipher:") && l.contains(&wanted)),
            "{name} negotiated{}",
            bed.diag(Some(&o))
        );
    }
}

/// `RekeyLimit 64M` at sshd (it starts the key exchanges of the proxy → target hop) and at
/// the client (those of the client → proxy hop): a 1 GiB `cat` round trip rekeys every
/// 64 MiB or so on both hops while data flows both ways, and arrives intact.
#[test]
fn rekeys_mid_transfer_on_both_hops() {
    let _serial = serial();
    let Some(bed) = Bed::new(GatewayOptions {
        sshd_extra: vec!["RekeyLimit 64M".into()],
        ..Default::default()
    }) else {
        return;
    };
    let _sshd = debug_target(&bed);
    let (data, sha) = random_file("random.bin", GIB);
    let from = bed.sshd.log().len();
    let mut c = bed.ssh(&["LogLevel=DEBUG1", "RekeyLimit=64M"], &[]);
    c.arg("cat");
    let o = cat_round_trip(&bed, c, &data, GIB, &sha, "ssh cat with RekeyLimit=64M");

    // Client hop: the client's own `-v` output; the first KEXINIT is the initial exchange.
    let err = stderr(&o);
    let client_rekeys = kexinits_sent(&err).len().saturating_sub(1);
    // Target hop: sshd's log of this connection; the initial exchange is `[preauth]`.
    let log = bed.sshd_log_since(from);
    let initial = kexinits_sent(&log)
        .iter()
        .filter(|l| l.contains("[preauth]"))
        .count();
    let target_rekeys = kexinits_sent(&log)
        .iter()
        .filter(|l| !l.contains("[preauth]"))
        .count();
    eprintln!("rekeys: {client_rekeys} on the client hop, {target_rekeys} on the target hop");
    assert!(
        client_rekeys >= 3,
        "client → proxy rekeyed {client_rekeys} times, expected ≥ 3{}",
        bed.diag(Some(&o))
    );
    assert_eq!(initial, 1, "one connection to the target{}", bed.diag(Some(&o)));
    assert!(
        target_rekeys >= 3,
        "proxy → target rekeyed {target_rekeys} times, expected ≥ 3{}",
        bed.diag(Some(&o))
    );
}

/// The same round trip with PuTTY's and Dropbear's clients: their own window and packet
/// sizes, cipher preferences and end-of-file handling.
#[test]
fn plink_and_dbclient_cat_one_gib() {
    let _serial = serial();
    if !have("plink") || !have("dbclient") {
        eprintln!("skipping: needs plink (putty-tools) and dbclient (dropbear-bin)");
        return;
    }
    let Some(bed) = Bed::new(GatewayOptions::default()) else {
        return;
    };
    let (data, sha) = random_file("random.bin", GIB);
    let port = bed.proxy_port.to_string();

    // plink in batch mode wants the host key's fingerprint given.
    let scan = Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &port, HOST])
        .output()
        .unwrap();
    let mut fp = Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    fp.stdin.take().unwrap().write_all(&scan.stdout).unwrap();
    let fp = stdout(&fp.wait_with_output().unwrap())
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no host key from ssh-keyscan: {}", stderr(&scan)))
        .to_string();
    let mut plink = Command::new("plink");
    plink
        .args(["-batch", "-ssh", "-P", &port, "-hostkey", &fp])
        .args([&format!("root@{HOST}"), "cat"]);
    cat_round_trip(&bed, plink, &data, GIB, &sha, "plink cat");

    // -y: accept the unknown host key (into $HOME/.ssh/known_hosts: HOME is the bed).
    let mut dbclient = Command::new("dbclient");
    dbclient
        .args(["-y", "-p", &port])
        .args([&format!("root@{HOST}"), "cat"]);
    cat_round_trip(&bed, dbclient, &data, GIB, &sha, "dbclient cat");
}

/// Two sessions of one ControlMaster connection: A downloads 512 MiB into a pipe nobody
/// reads for 15 s; meanwhile `echo b` on a second channel, run again and again, takes no
/// more than it takes on the idle connection plus one second (the requirement). Then A is
/// read to its end. The proxy's memory stays bounded throughout.
#[test]
fn a_stopped_reader_does_not_delay_its_neighbour() {
    const A: u64 = 512 * MIB;
    const STOPPED: Duration = Duration::from_secs(15);
    let _serial = serial();
    let Some(bed) = Bed::new(GatewayOptions::default()) else {
        return;
    };
    let master = Master::start(&bed, bed.proxy_port, "proxy", &[]);
    let mut peak = bed.daemon_rss_kb().unwrap_or(0);
    let sample = |peak: &mut u64| *peak = (*peak).max(bed.daemon_rss_kb().unwrap_or(0));

    // The baseline: `echo b` on the idle connection (the slowest of three).
    let baseline = (0..3).map(|_| master.timed_exec("echo b", "b\n")).max().unwrap();
    let allowed = baseline + Duration::from_secs(1);
    eprintln!("`echo b` on the idle connection: {baseline:.1?}; allowed beside A: {allowed:.1?}");

    // A: its stdout is a pipe this test does not read for 15 s. Its stdin stays open (a mux
    // session at EOF on stdin may close its channel before the exit status arrives).
    let mut a = master.client();
    a.arg(format!("head -c {A} /dev/zero"));
    let (mut a, a_stdin) = spawn_stdin_open(a);
    let a_out = a.0.stdout.take().unwrap();
    let a_err = drain(a.0.stderr.take().unwrap());
    let started = Instant::now();
    let mut times = Vec::new();
    while started.elapsed() + allowed + Duration::from_millis(500) < STOPPED {
        std::thread::sleep(Duration::from_millis(500));
        sample(&mut peak);
        let took = master.timed_exec("echo b", "b\n");
        times.push(took);
        assert!(
            took <= allowed,
            "`echo b` beside a stopped reader took {took:.1?} (baseline {baseline:.1?}, \
             allowed {allowed:.1?}), at {:.1?} into the stop{}",
            started.elapsed(),
            bed.diag(None)
        );
        sample(&mut peak);
    }
    eprintln!("beside the stopped reader, `echo b` took {times:.2?}");
    assert!(times.len() >= 5, "ran `echo b` {} times", times.len());
    while started.elapsed() < STOPPED {
        sample(&mut peak);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        a.0.try_wait().unwrap().is_none(),
        "A ended while nobody read it{}",
        bed.diag(None)
    );

    // Now A is read to its end.
    let seen = Arc::new(AtomicU64::new(0));
    let reading = Instant::now();
    let reader = count(a_out, Duration::ZERO, seen.clone());
    let Some(status) = exited_within(&mut a.0, DEADLINE, || sample(&mut peak)) else {
        panic!(
            "A not done within {DEADLINE} s of reading: {} of {} read{}",
            mib(seen.load(Ordering::Relaxed)),
            mib(A),
            bed.diag(None)
        );
    };
    let took = reading.elapsed();
    drop(a_stdin);
    let o = Output {
        status,
        stdout: Vec::new(),
        stderr: a_err.join().unwrap(),
    };
    bed.expect_code(&o, 0, "A");
    assert_eq!(reader.join().unwrap(), A, "bytes of A{}", bed.diag(Some(&o)));
    eprintln!(
        "A drained: {} in {took:.1?}: {:.1} MiB/s; proxy RSS peak {peak} kB",
        mib(A),
        rate(A, took)
    );
    assert!(
        peak < RSS_LIMIT_KB,
        "proxy RSS peaked at {peak} kB (limit {RSS_LIMIT_KB} kB){}",
        bed.diag(None)
    );
    master.exit();
}

/// Two sessions of one ControlMaster connection at once: U uploads 256 MiB to a command
/// that reads nothing for 10 s, D downloads 256 MiB that the client reads only after 10 s.
/// Both finish, byte-exact in count, with the proxy's memory bounded (a proxy that buffered
/// everything would finish too).
#[test]
fn late_read_upload_and_download_on_two_channels_both_finish() {
    const LEN: u64 = 256 * MIB;
    const LATE: Duration = Duration::from_secs(10);
    let _serial = serial();
    let Some(bed) = Bed::new(GatewayOptions::default()) else {
        return;
    };
    let master = Master::start(&bed, bed.proxy_port, "proxy", &[]);
    let mut peak = bed.daemon_rss_kb().unwrap_or(0);
    let started = Instant::now();

    // U: the target's `wc -c` starts reading after 10 s.
    let mut u = master.client();
    u.arg(format!("sleep {}; wc -c", LATE.as_secs()));
    let (mut u, mut u_stdin) = spawn_stdin_open(u);
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let writer = std::thread::spawn(move || {
        let chunk = vec![0x55u8; 1 << 20];
        while s.load(Ordering::Relaxed) < LEN {
            if u_stdin.write_all(&chunk).is_err() {
                return;
            }
            s.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        // u_stdin dropped: EOF.
    });
    let u_out = drain(u.0.stdout.take().unwrap());
    let u_err = drain(u.0.stderr.take().unwrap());

    // D: this test reads its stdout after 10 s.
    let mut d = master.client();
    d.arg(format!("head -c {LEN} /dev/zero"));
    let (mut d, d_stdin) = spawn_stdin_open(d);
    let received = Arc::new(AtomicU64::new(0));
    let reader = count(d.0.stdout.take().unwrap(), LATE, received.clone());
    let d_err = drain(d.0.stderr.take().unwrap());

    let progress = || {
        format!(
            "after {:.1?}: U sent {} of {}, D received {} of {}",
            started.elapsed(),
            mib(sent.load(Ordering::Relaxed)),
            mib(LEN),
            mib(received.load(Ordering::Relaxed)),
            mib(LEN)
        )
    };
    let mut statuses = [None, None];
    let done = poll(DEADLINE, || {
        peak = peak.max(bed.daemon_rss_kb().unwrap_or(0));
        for (i, c) in [&mut u, &mut d].into_iter().enumerate() {
            if statuses[i].is_none() {
                statuses[i] = c.0.try_wait().unwrap().map(|s| (s, started.elapsed()));
            }
        }
        statuses.iter().all(Option::is_some).then_some(())
    });
    if done.is_none() {
        panic!(
            "not both done within {DEADLINE} s: {}\n--- master:\n{}{}",
            progress(),
            master.log(),
            bed.diag(None)
        );
    }
    drop(d_stdin);
    writer.join().unwrap();
    let [Some((u_status, u_took)), Some((d_status, d_took))] = statuses else {
        unreachable!()
    };
    let ou = Output {
        status: u_status,
        stdout: u_out.join().unwrap(),
        stderr: u_err.join().unwrap(),
    };
    let od = Output {
        status: d_status,
        stdout: Vec::new(),
        stderr: d_err.join().unwrap(),
    };
    bed.expect_code(&ou, 0, "U (upload read late)");
    bed.expect_code(&od, 0, "D (download read late)");
    assert_eq!(
        stdout(&ou).trim(),
        LEN.to_string(),
        "bytes the target counted on U{}",
        bed.diag(Some(&ou))
    );
    assert_eq!(
        reader.join().unwrap(),
        LEN,
        "bytes received on D{}",
        bed.diag(Some(&od))
    );
    // Throughput after the 10 s nobody read.
    eprintln!(
        "U done in {u_took:.1?} ({:.1} MiB/s after the late start), D done in {d_took:.1?} \
         ({:.1} MiB/s after the late start); proxy RSS peak {peak} kB",
        rate(LEN, u_took.saturating_sub(LATE)),
        rate(LEN, d_took.saturating_sub(LATE))
    );
    assert!(
        peak < RSS_LIMIT_KB,
        "proxy RSS peaked at {peak} kB (limit {RSS_LIMIT_KB} kB){}",
        bed.diag(None)
    );
    master.exit();
}

/// Sends OpenSSH's `~B` escape (it needs a terminal: `script` gives the client one) in an
/// interactive session to `port` until sshd logs a `break` channel request or 20 s pass;
/// then exits the shell. Returns the log line.
fn send_break(bed: &Bed, port: u16, extra: &[&str], what: &str) -> String {
    let from = bed.sshd.log().len();
    // Quoted: the shell `script` runs would expand `EscapeChar=~` to a home directory.
    let line = bed.ssh_line(port, extra, &["-tt", "-o", "EscapeChar='~'"]);
    let mut c = Command::new("script");
    c.arg("-qec").arg(&line).arg("/dev/null");
    let (mut child, mut stdin) = spawn_stdin_open(c);
    let out = drain(child.0.stdout.take().unwrap());
    let err = drain(child.0.stderr.take().unwrap());
    let found = |log: &str| {
        log.lines()
            .find(|l| l.contains("server_input_channel_req: channel") && l.contains("request break"))
            .map(str::to_string)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    // The escape is only seen at the start of a line, once the session is up: repeat it.
    while Instant::now() < deadline && child.0.try_wait().unwrap().is_none() {
        let _ = stdin.write_all(b"\r~B");
        let _ = stdin.flush();
        std::thread::sleep(Duration::from_millis(300));
        seen = found(&bed.sshd_log_since(from));
        if seen.is_some() {
            break;
        }
    }
    let _ = stdin.write_all(b"\rexit\r");
    let _ = stdin.flush();
    let status = exited_within(&mut child.0, 10, || {}).unwrap_or_else(|| {
        let _ = child.0.kill();
        child.0.wait().unwrap()
    });
    drop(stdin);
    let o = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    match seen {
        Some(l) => l,
        None => panic!(
            "{what}: sshd logged no break request\n--- sshd.log of this session:\n{}{}",
            tail(&bed.sshd_log_since(from), 40),
            bed.diag(Some(&o))
        ),
    }
}

/// RFC 4335: OpenSSH's `~B` in a pty session through the proxy reaches the target as a
/// `break` channel request. sshd (DEBUG1) logs `server_input_channel_req: channel N request
/// break reply 0` (OpenSSH's client wants no reply); checked first straight to sshd.
#[test]
fn openssh_break_reaches_the_target() {
    let _serial = serial();
    if !have("script") {
        eprintln!("skipping: needs script (bsdutils)");
        return;
    }
    let Some(bed) = Bed::with_direct_access(&[]) else {
        return;
    };
    let _sshd = debug_target(&bed);
    let identity = bed.direct_key();
    let control = send_break(
        &bed,
        bed.target.port(),
        &["IdentitiesOnly=yes", &identity],
        "control: straight to sshd",
    );
    eprintln!("straight to sshd: {control}");
    let proxied = send_break(&bed, bed.proxy_port, &[], "through the proxy");
    eprintln!("through the proxy: {proxied}");
}

/// OpenSSH 9.2 prefers sntrup761x25519-sha512 (its post-quantum hybrid); the proxy's ends
/// must agree on it with the client (client hop, from the client's `-v` output) and with
/// sshd (target hop, from sshd's DEBUG1 log: `kex: algorithm: … [preauth]`). Checked first
/// straight to sshd: both sides name it there.
#[test]
fn openssh_9_2_keeps_sntrup761_on_both_hops() {
    const PQ: &str = "sntrup761x25519-sha512";
    let _serial = serial();
    let Some(bed) = Bed::with_direct_access(&[]) else {
        return;
    };
    let _sshd = debug_target(&bed);
    let identity = bed.direct_key();

    // Control: the stock client straight to sshd.
    let from = bed.sshd.log().len();
    let o = bed
        .ssh_port(
            bed.target.port(),
            &["LogLevel=DEBUG1", "IdentitiesOnly=yes", &identity],
            &[],
        )
        .arg("true")
        .output()
        .unwrap();
    bed.expect_code(&o, 0, "control: straight to sshd");
    let client = kex_algorithms(&stderr(&o));
    let server = kex_algorithms(&bed.sshd_log_since(from));
    assert!(
        client.len() == 1 && client[0].starts_with(PQ),
        "control: the client negotiated {client:?}{}",
        bed.diag(Some(&o))
    );
    assert!(
        server.len() == 1 && server[0].starts_with(PQ),
        "control: sshd negotiated {server:?}{}",
        bed.diag(Some(&o))
    );
    eprintln!("straight to sshd: client {client:?}, sshd {server:?}");

    // Through the proxy.
    let from = bed.sshd.log().len();
    let o = bed
        .ssh(&["LogLevel=DEBUG1"], &[])
        .arg("echo through")
        .output()
        .unwrap();
    bed.expect_code(&o, 0, "through the proxy");
    assert_eq!(stdout(&o), "through\n", "{}", bed.diag(Some(&o)));
    let client_hop = kex_algorithms(&stderr(&o));
    let target_hop = kex_algorithms(&bed.sshd_log_since(from));
    eprintln!("through the proxy: client hop {client_hop:?}, target hop {target_hop:?}");
    assert!(
        !client_hop.is_empty() && client_hop.iter().all(|k| k.starts_with(PQ)),
        "client → proxy negotiated {client_hop:?}, not {PQ}{}",
        bed.diag(Some(&o))
    );
    assert!(
        !target_hop.is_empty() && target_hop.iter().all(|k| k.starts_with(PQ)),
        "proxy → target negotiated {target_hop:?}, not {PQ}{}",
        bed.diag(Some(&o))
    );
}
