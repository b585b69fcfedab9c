//! The whole product through the kernel: stock OpenSSH clients in two vnets, eBPF steering,
//! the proxy with certificate login, and real OpenSSH servers in the target namespaces —
//! both targets at the same address, told apart by the vnet. Needs root.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use portcullis_testbed::{ssh_opts, Daemon, Sshd, SshdOptions, Topology};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Who may do what in these tests, added to the topology's configuration: bob may log in to
/// lab-01 as root; alice (ops) to web-01 as root or alice (from the topology's policy).
const EXTRA: &str = r#"
[[policy]]
name = "bob-in-lab"
application = "ssh"
action = "allow"
precedence = 20
include = [{ email = "bob@example.com" }]
require = [{ vnet = "lab" }]
logins = ["root"]
"#;

struct Bed {
    topo: Topology,
    dir: PathBuf,
    config: PathBuf,
    instance: String,
    _sshd: Vec<Sshd>,
}

impl Bed {
    fn new() -> Option<Self> {
        Self::build(false)
    }

    /// `record`: sessions recorded to `<dir>/rec`, logs signed, key pair in `<dir>/reckeys`.
    fn build(record: bool) -> Option<Self> {
        if !support::privileged() {
            return None;
        }
        let topo = Topology::build();
        let instance = portcullis_testbed::unique("p");
        let dir = std::env::temp_dir().join(format!("portcullis-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("portcullis.toml");
        let mut text = topo.config(&dir.join("state"), &instance);
        text.push_str(&format!(
            "{EXTRA}\n[account]\nsecret = \"keys/secret\"\nca_key = \"keys/ca\"\n{}\n[audit]\nfile = \"{}\"\nstdout = true\n",
            if record {
                "recording_public_key = \"reckeys/sshkey.pub\"\nrecording_signing_key = \"keys/recsign\"\n"
            } else {
                ""
            },
            dir.join("audit.jsonl").display()
        ));
        if record {
            text.push_str(&format!(
                "\n[recording]\ndir = \"{}\"\n",
                dir.join("rec").display()
            ));
            let o = std::process::Command::new(BIN)
                .args(["keygen", "--output"])
                .arg(dir.join("reckeys"))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        std::fs::write(&config, text).unwrap();
        let o = std::process::Command::new(BIN)
            .args(["ca", "init", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ca = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        let opts = SshdOptions {
            trusted_ca: Some(ca),
            ..Default::default()
        };
        let sshd = vec![
            Sshd::start(Some(&topo.target), "198.18.10.10:22".parse().unwrap(), &opts),
            Sshd::start(Some(&topo.target), "[2001:db8:10::10]:22".parse().unwrap(), &opts),
            Sshd::start(Some(&topo.target2), "198.18.10.10:22".parse().unwrap(), &opts),
        ];
        Some(Self {
            topo,
            dir,
            config,
            instance,
            _sshd: sshd,
        })
    }

    fn daemon(&self) -> Daemon {
        let mut d = Daemon::start(&self.topo.gw, Path::new(BIN), &self.config);
        d.wait_ready().expect("daemon ready");
        d
    }

    /// Runs `ssh user@dst cmd` from a client namespace.
    fn ssh(&self, from: &portcullis_testbed::Netns, known_hosts: &str, dest: &str, cmd: &str) -> Output {
        let mut c = from.command("ssh");
        c.args(ssh_opts(&self.dir.join(known_hosts))).arg(dest).arg(cmd);
        c.output().expect("run ssh")
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit.jsonl")).unwrap_or_default()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self
            .topo
            .gw
            .command(BIN)
            .arg("down")
            .arg("--config")
            .arg(&self.config)
            .output();
        let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/portcullis").join(&self.instance));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn stock_ssh_through_the_steering_with_certificate_login() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let _d = bed.daemon();

    // alice in corp reaches web-01 (the first target: its eth0 is 198.18.101.2).
    let o = bed.ssh(
        &t.client,
        "kh-alice",
        "root@198.18.10.10",
        "ip -o -4 addr show eth0; echo err >&2; exit 7",
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("198.18.101.2/24"),
        "{}",
        text(&o)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().last(),
        Some("err"),
        "{}",
        text(&o)
    );

    // The same address over IPv6.
    let o = bed.ssh(&t.client, "kh-alice", "root@2001:db8:10::10", "echo v6 ok");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // bob in lab reaches lab-01: same address, the other target.
    let o = bed.ssh(
        &t.client2,
        "kh-bob",
        "root@198.18.10.10",
        "ip -o -4 addr show eth0",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("198.18.102.2/24"),
        "{}",
        text(&o)
    );

    // Different targets, different derived host keys.
    let kh = |f: &str| std::fs::read_to_string(bed.dir.join(f)).unwrap();
    let key = |s: String| {
        s.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_ne!(key(kh("kh-alice")), key(kh("kh-bob")));

    // alice as a login her policy does not allow: told why, on stderr.
    let o = bed.ssh(&t.client, "kh-alice", "admin@198.18.10.10", "true");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("may not log in to web-01 as admin"),
        "{}",
        text(&o)
    );

    let audit = bed.audit();
    assert!(
        audit.contains("\"event\":\"session.start\"") && audit.contains("\"policy\":\"ops-on-web\""),
        "{audit}"
    );
    assert!(audit.contains("\"policy\":\"bob-in-lab\""), "{audit}");
    assert!(audit.contains("\"reason\":\"login_not_allowed\""), "{audit}");
}

#[test]
fn a_client_without_a_policy_is_stopped_before_the_target() {
    let Some(bed) = Bed::new() else { return };
    // Only the topology's policy (ops in corp): bob has none.
    let text_cfg = std::fs::read_to_string(&bed.config).unwrap().replace(EXTRA, "");
    std::fs::write(&bed.config, text_cfg).unwrap();
    let _d = bed.daemon();
    let o = bed.ssh(&bed.topo.client2, "kh-bob", "root@198.18.10.10", "true");
    assert_eq!(o.status.code(), Some(255), "{}", text(&o));
    let audit = bed.audit();
    assert!(
        audit.contains("\"reason\":\"no_policy\"") && audit.contains("bob@example.com"),
        "{audit}"
    );
    assert!(!audit.contains("session.start"), "{audit}");
}

/// What a process's descriptors are, counted by kind (`anon_inode:bpf-map`, `socket`, ...).
fn fd_kinds(pid: u32) -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let t = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let kind = t.split(['[', ':']).next().unwrap_or("").to_string();
        let kind = if t.starts_with("anon_inode:") {
            t.clone()
        } else {
            kind
        };
        *kinds.entry(kind).or_default() += 1;
    }
    format!("{kinds:?}")
}

/// `(open descriptors, threads, resident KiB)` of a process.
fn footprint(pid: u32) -> (usize, u64, u64) {
    use portcullis_testbed::procfs::{open_fds, status_field};
    let field = |name| status_field(pid, name).unwrap();
    (open_fds(pid), field("Threads"), field("VmRSS"))
}

/// Issue 14's soak: sessions with traffic and recording on while the daemon is reloaded
/// every second and killed with SIGKILL and restarted (`PORTCULLIS_SOAK_KILLS` times,
/// default 3; `cargo xtask soak` runs 20). Afterwards: every recording decrypts to its last
/// block (closed ones signed, killed ones without a trailer, none damaged); every session
/// the client saw finish is in a recording to its last line; no connection reached the
/// target's sshd except from the gateway, in particular none while the daemon was down;
/// and repeated reloads leak no descriptor, thread or memory.
#[test]
fn soak_reloads_and_kills_lose_no_recording_and_open_no_bypass() {
    use std::sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    };
    let Some(bed) = Bed::build(true) else { return };
    // The metrics endpoint, inside the gateway's namespace.
    let mut cfg = std::fs::read_to_string(&bed.config).unwrap();
    cfg.push_str("\n[metrics]\nlisten = \"127.0.0.1:9186\"\n");
    std::fs::write(&bed.config, cfg).unwrap();
    let bed = Arc::new(bed);
    let kills: u32 = std::env::var("PORTCULLIS_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut d = bed.daemon();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU32::new(0));
    // Sessions the client saw complete (exit 0 and their last line).
    let finished: Arc<Mutex<Vec<u32>>> = Arc::default();
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (bed, stop, next, finished) = (bed.clone(), stop.clone(), next.clone(), finished.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let o = bed.ssh(
                        &bed.topo.client,
                        &format!("kh-soak-{c}"),
                        "root@198.18.10.10",
                        &format!("echo MARK-{n}; seq 1 30000; sleep 0.2; echo END-{n}"),
                    );
                    if o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&format!("END-{n}"))
                    {
                        finished.lock().unwrap().push(n);
                    }
                }
            })
        })
        .collect();
    let reloader = {
        let (bed, stop) = (bed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ok = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let o = std::process::Command::new(BIN)
                    .args(["reload", "--config"])
                    .arg(&bed.config)
                    .output()
                    .unwrap();
                ok += u32::from(o.status.success());
                std::thread::sleep(Duration::from_secs(1));
            }
            ok
        })
    };
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(2500));
        d.kill9();
        // Down: the protected address answers nobody (the dataplane stays and drops).
        let probe = bed.topo.client.run(|| {
            std::net::TcpStream::connect_timeout(
                &"198.18.10.10:22".parse().unwrap(),
                Duration::from_millis(700),
            )
            .is_ok()
        });
        assert!(!probe, "a connection was accepted while the daemon was down");
        d = bed.daemon();
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let reloads_ok = reloader.join().unwrap();
    let finished = finished.lock().unwrap().clone();
    assert!(
        finished.len() as u32 > kills,
        "only {} sessions finished: {}",
        finished.len(),
        d.stderr().join("\n")
    );
    assert!(reloads_ok > 0, "no reload was accepted");

    // Every recording decrypts to its last block; collect what each recorded.
    let key = portcullis::recording::keys::load_private(&bed.dir.join("reckeys/sshkey")).unwrap();
    let mut recorded = String::new();
    let (mut closed, mut cut) = (0, 0);
    for e in std::fs::read_dir(bed.dir.join("rec")).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let dec = portcullis::recording::reader::decrypt(&p, &key)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(dec.damage.is_none(), "{}: {:?}", p.display(), dec.damage);
        use portcullis::recording::trailer::Verdict;
        match &dec.verdict {
            Verdict::Signed { .. } => closed += 1,
            Verdict::NoTrailer { .. } => cut += 1,
            v => panic!("{}: {v:?}", p.display()),
        }
        for r in &dec.records {
            recorded.push_str(&String::from_utf8_lossy(&r.data));
        }
    }
    for n in &finished {
        assert!(
            recorded.contains(&format!("MARK-{n}\n")) && recorded.contains(&format!("END-{n}\n")),
            "session {n} finished for the client but is not recorded to its end"
        );
    }
    // No connection reached a target from anywhere but the gateway's upstream address.
    for sshd in &bed._sshd {
        let log = sshd.log();
        assert!(
            !log.contains("198.18.1.2") && !log.contains("2001:db8:1::2"),
            "the target saw the client directly:\n{log}"
        );
    }

    // The metrics the operator's Prometheus would scrape: ready, and the dataplane's
    // counters per target read from the pinned maps.
    let scrape = |path: &'static str| {
        bed.topo.gw.run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect("127.0.0.1:9186").unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r
        })
    };
    assert!(scrape("/readyz").starts_with("HTTP/1.1 200"), "not ready");
    let m = scrape("/metrics");
    let steered = m
        .lines()
        .find(|l| {
            l.starts_with("portcullis_dataplane_packets_total{")
                && l.contains("target=\"web-01\"")
                && l.contains("address=\"198.18.10.10\"")
                && l.contains("verdict=\"steered\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(steered.is_some_and(|n| n > 0), "no steered packets counted:\n{m}");

    // Reloads leak nothing: the same footprint before and after many more.
    let pid = d.pid();
    let reload = || {
        let o = std::process::Command::new(BIN)
            .args(["reload", "--config"])
            .arg(&bed.config)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    for _ in 0..10 {
        reload();
    }
    // The last request's control connection closes just after its answer was read: the
    // fewest descriptors seen over a moment, not one sample.
    let settled = || {
        let mut f = footprint(pid);
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(25));
            let g = footprint(pid);
            f = (f.0.min(g.0), g.1, g.2);
        }
        f
    };
    let before = settled();
    let rounds = 10 * kills.max(1);
    for _ in 0..rounds {
        reload();
    }
    let after = settled();
    eprintln!(
        "soak: {kills} kills, {} sessions finished ({closed} logs closed, {cut} cut by a kill), \
         {reloads_ok} reloads during traffic; {rounds} reloads: fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        finished.len(),
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    assert!(
        after.0 <= before.0,
        "descriptors leaked across {rounds} reloads: {before:?} -> {after:?}: {}",
        fd_kinds(pid)
    );
    assert!(
        after.1 <= before.1 + 2,
        "threads grew across reloads: {before:?} -> {after:?}"
    );
    assert!(
        after.2 <= before.2 + 8 * 1024,
        "memory grew across reloads: {before:?} -> {after:?}"
    );
}
