//! The transport against real OpenSSH (both directions), on loopback:
//! (a) our client `Transport` against a real `sshd`: every KEX × cipher × MAC OpenSSH offers
//!     here, every host key type (and host certificates), a rekey, then SERVICE_REQUEST →
//!     SERVICE_ACCEPT and a `none` USERAUTH_REQUEST → USERAUTH_FAILURE;
//! (b) the real `ssh` client against a small server on our server `Transport`: every KEX ×
//!     cipher × MAC and host key type, checked in `ssh -vvv`'s log.
//! Skipped (with a message) where `sshd`/`ssh`/`ssh-keygen` are missing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use portcullis_ssh::msg;
use portcullis_ssh::transport::{Algorithms, Transport, TransportConfig, TransportEvent};

const SSHD: &str = "/usr/sbin/sshd";

/// What OpenSSH 9.2 implements of ours (no mlkem768x25519-sha256 before 9.9).
fn openssh_kex() -> Vec<&'static str> {
    let supported = Command::new("ssh")
        .args(["-Q", "kex"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let supported = String::from_utf8_lossy(&supported).to_string();
    portcullis_ssh::transport::KEX_ALGORITHMS
        .iter()
        .copied()
        .filter(|k| supported.lines().any(|l| l.trim() == *k))
        .collect()
}

fn combos() -> Vec<(&'static str, Option<&'static str>)> {
    let mut v = Vec::new();
    for c in portcullis_ssh::transport::cipher::CIPHERS {
        if c.contains("gcm") || c.starts_with("chacha") {
            v.push((*c, None));
        } else {
            for m in portcullis_ssh::transport::cipher::MACS {
                v.push((*c, Some(*m)));
            }
        }
    }
    v
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("portcullis-transport-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen {name}");
    path
}

/// Host keys (ed25519, ecdsa 256/384/521, rsa) and an ed25519 CA that certified the ed25519
/// and rsa keys.
struct HostKeys {
    files: Vec<(&'static str, PathBuf)>,
    ca: PathBuf,
}

fn host_keys(dir: &Path) -> HostKeys {
    let files = vec![
        ("ssh-ed25519", keygen(dir, "host_ed25519", &["-t", "ed25519"])),
        (
            "ecdsa-sha2-nistp256",
            keygen(dir, "host_ecdsa256", &["-t", "ecdsa", "-b", "256"]),
        ),
        (
            "ecdsa-sha2-nistp384",
            keygen(dir, "host_ecdsa384", &["-t", "ecdsa", "-b", "384"]),
        ),
        (
            "ecdsa-sha2-nistp521",
            keygen(dir, "host_ecdsa521", &["-t", "ecdsa", "-b", "521"]),
        ),
        ("rsa", keygen(dir, "host_rsa", &["-t", "rsa", "-b", "2048"])),
    ];
    let ca = keygen(dir, "ca", &["-t", "ed25519"]);
    for key in ["host_ed25519", "host_rsa"] {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-h", "-I", "host", "-n", "127.0.0.1,localhost", "-s"])
            .arg(&ca)
            .arg(dir.join(format!("{key}.pub")))
            .status()
            .unwrap();
        assert!(st.success());
    }
    HostKeys { files, ca }
}

fn public_of(path: &Path) -> ssh_key::PublicKey {
    ssh_key::PublicKey::read_openssh_file(path.with_extension("pub")).unwrap()
}

fn free_port(salt: u16) -> u16 {
    let base = (std::process::id().wrapping_mul(7) + u32::from(salt) * 997) % 12000;
    for i in 0..200u32 {
        let p = 20000 + ((base + i * 13) % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in 20000-31999");
}

struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sshd(dir: &Path, keys: &HostKeys, kex: &[&str]) -> (Sshd, u16) {
    if !Path::new("/run/sshd").exists() {
        let _ = std::fs::create_dir_all("/run/sshd");
    }
    for attempt in 0..5 {
        let port = free_port(attempt);
        let mut cfg = format!("Port {port}\nListenAddress 127.0.0.1\n");
        for (_, f) in &keys.files {
            cfg += &format!("HostKey {}\n", f.display());
        }
        for key in ["host_ed25519", "host_rsa"] {
            cfg += &format!(
                "HostCertificate {}\n",
                dir.join(format!("{key}-cert.pub")).display()
            );
        }
        cfg += &format!(
            "PidFile {}\nUsePAM no\nStrictModes no\nMaxStartups 100\nLogLevel DEBUG1\n\
             PermitRootLogin prohibit-password\nAuthorizedKeysFile {}\n\
             KexAlgorithms {}\nCiphers {}\nMACs {}\nHostKeyAlgorithms {}\n",
            dir.join("sshd.pid").display(),
            dir.join("authorized_keys").display(),
            kex.join(","),
            portcullis_ssh::transport::cipher::CIPHERS.join(","),
            portcullis_ssh::transport::cipher::MACS.join(","),
            portcullis_ssh::transport::HOST_KEY_ALGORITHMS.join(","),
        );
        let cfg_path = dir.join("sshd_config");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = std::fs::File::create(dir.join(format!("sshd-{attempt}.log"))).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut sshd = Sshd(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = sshd.0.try_wait() {
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (sshd, port);
            }
            thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(dir.join(format!("sshd-{attempt}.log"))).unwrap_or_default();
        eprintln!("sshd on port {port} did not come up (attempt {attempt}):\n{log}");
    }
    panic!("could not start sshd");
}

fn flush(t: &mut Transport, sock: &mut TcpStream) -> std::io::Result<()> {
    while !t.output().is_empty() {
        let n = sock.write(t.output())?;
        t.advance_output(n);
    }
    Ok(())
}

fn service_request(name: &str) -> Vec<u8> {
    let mut p = vec![msg::SERVICE_REQUEST];
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p
}

struct ClientOutcome {
    algorithms: Vec<Algorithms>,
    host_key: Option<ssh_key::PublicKey>,
    cert: Option<ssh_key::Certificate>,
    ext_info: Vec<(String, Vec<u8>)>,
}

fn put_str(p: &mut Vec<u8>, s: &[u8]) {
    p.extend_from_slice(&(s.len() as u32).to_be_bytes());
    p.extend_from_slice(s);
}

/// A signed `publickey` USERAUTH_REQUEST for root (RFC 4252 §7).
fn pubkey_auth(session_id: &[u8], key: &ssh_key::PrivateKey) -> Vec<u8> {
    use signature::Signer;
    let blob = key.public_key().to_bytes().unwrap();
    let mut body = vec![msg::USERAUTH_REQUEST];
    put_str(&mut body, b"root");
    put_str(&mut body, b"ssh-connection");
    put_str(&mut body, b"publickey");
    body.push(1);
    put_str(&mut body, b"ssh-ed25519");
    put_str(&mut body, &blob);
    let mut signed = Vec::new();
    put_str(&mut signed, session_id);
    signed.extend_from_slice(&body);
    let sig: ssh_key::Signature = key.try_sign(&signed).unwrap();
    put_str(&mut body, &ssh_key::encoding::Encode::encode_vec(&sig).unwrap());
    body
}

/// Our client against sshd: handshake, SERVICE_REQUEST/ACCEPT, publickey authentication as
/// root, a rekey (OpenSSH refuses one before authentication), then a global request answered
/// after the rekey.
fn client_session(
    port: u16,
    cfg: TransportConfig,
    user_key: &ssh_key::PrivateKey,
) -> Result<ClientOutcome, String> {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut t = Transport::new(cfg);
    let mut out = ClientOutcome {
        algorithms: Vec::new(),
        host_key: None,
        cert: None,
        ext_info: Vec::new(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut step = 0;
    loop {
        while let Some(ev) = t.poll_event() {
            match ev {
                TransportEvent::PeerHostKey(k) => {
                    out.host_key = Some(k);
                    t.host_key_verdict(true);
                }
                TransportEvent::PeerHostCertificate(c) => out.cert = Some(*c),
                TransportEvent::KexDone { first, algorithms } => {
                    out.algorithms.push(algorithms);
                    if first {
                        t.send(&service_request("ssh-userauth"))
                            .map_err(|e| e.to_string())?;
                    } else if step == 2 {
                        let mut p = vec![msg::GLOBAL_REQUEST];
                        put_str(&mut p, b"keepalive@openssh.com");
                        p.push(1);
                        t.send(&p).map_err(|e| e.to_string())?;
                        step = 3;
                    }
                }
                TransportEvent::ExtInfo(v) => out.ext_info = v,
                TransportEvent::Disconnected { reason, description } => {
                    return Err(format!("sshd disconnected: {reason} {description}"));
                }
                _ => {}
            }
        }
        while let Some(p) = t.poll_payload() {
            match p[0] {
                msg::SERVICE_ACCEPT if step == 0 => {
                    if &p[5..] != b"ssh-userauth" {
                        return Err("SERVICE_ACCEPT for another service".into());
                    }
                    let sid = t.session_id().unwrap().to_vec();
                    t.send(&pubkey_auth(&sid, user_key)).map_err(|e| e.to_string())?;
                    step = 1;
                }
                msg::USERAUTH_SUCCESS if step == 1 => {
                    step = 2;
                    t.start_rekey();
                    if !t.is_kex_in_progress() {
                        return Err("rekey did not start".into());
                    }
                }
                msg::USERAUTH_FAILURE => return Err(format!("authentication failed at step {step}")),
                msg::REQUEST_SUCCESS | msg::REQUEST_FAILURE if step == 3 => {
                    flush(&mut t, &mut sock).map_err(|e| e.to_string())?;
                    return Ok(out);
                }
                msg::USERAUTH_BANNER | msg::GLOBAL_REQUEST => {}
                m => return Err(format!("unexpected message {m} at step {step}")),
            }
        }
        flush(&mut t, &mut sock).map_err(|e| e.to_string())?;
        let n = sock
            .read(&mut buf)
            .map_err(|e| format!("read at step {step}: {e}"))?;
        if n == 0 {
            return Err(format!("sshd closed the connection at step {step}"));
        }
        t.recv(&buf[..n]).map_err(|e| format!("transport: {e}"))?;
    }
}

fn client_cfg(
    kex: &'static str,
    cipher: &'static str,
    mac: Option<&'static str>,
    hk: &'static str,
) -> TransportConfig {
    let mut cfg = TransportConfig::client();
    cfg.kex = vec![kex];
    cfg.ciphers = vec![cipher];
    cfg.macs = mac.map_or_else(|| portcullis_ssh::transport::cipher::MACS.to_vec(), |m| vec![m]);
    cfg.host_key_algorithms = vec![hk];
    cfg
}

#[test]
fn client_against_openssh_sshd() {
    if !Path::new(SSHD).exists() || !have("ssh-keygen") || !have("ssh") {
        eprintln!("SKIPPED: sshd/ssh/ssh-keygen not installed");
        return;
    }
    let dir = TempDir::new("sshd");
    let keys = host_keys(&dir.0);
    let kex = openssh_kex();
    let user = keygen(&dir.0, "user_ed25519", &["-t", "ed25519"]);
    std::fs::copy(user.with_extension("pub"), dir.0.join("authorized_keys")).unwrap();
    let user_key = ssh_key::PrivateKey::read_openssh_file(&user).unwrap();
    let (_sshd, port) = start_sshd(&dir.0, &keys, &kex);
    let mut failures = Vec::new();
    let mut ok = 0;
    // Every kex × cipher × MAC, with the ed25519 host key.
    for k in &kex {
        for (c, m) in combos() {
            match client_session(port, client_cfg(k, c, m, "ssh-ed25519"), &user_key) {
                Ok(o) => {
                    let a = &o.algorithms[0];
                    assert_eq!(
                        (a.kex, a.cipher_c2s, a.cipher_s2c, a.mac_c2s, a.mac_s2c),
                        (*k, c, c, m, m)
                    );
                    assert!(a.strict_kex, "sshd 9.2 offers strict kex");
                    assert_eq!(o.algorithms.len(), 2, "rekey");
                    assert!(
                        o.ext_info.iter().any(|(n, _)| n == "server-sig-algs"),
                        "EXT_INFO server-sig-algs"
                    );
                    assert_eq!(
                        o.host_key.unwrap().key_data(),
                        public_of(&keys.files[0].1).key_data()
                    );
                    ok += 1;
                }
                Err(e) => failures.push(format!("{k} {c} {m:?}: {e}")),
            }
            if failures.len() >= 3 {
                break;
            }
        }
    }
    // Every host key algorithm (and certificates).
    let hk_cases: &[(&str, &str)] = &[
        ("ssh-ed25519", "host_ed25519"),
        ("ecdsa-sha2-nistp256", "host_ecdsa256"),
        ("ecdsa-sha2-nistp384", "host_ecdsa384"),
        ("ecdsa-sha2-nistp521", "host_ecdsa521"),
        ("rsa-sha2-256", "host_rsa"),
        ("rsa-sha2-512", "host_rsa"),
        ("ssh-ed25519-cert-v01@openssh.com", "host_ed25519"),
        ("rsa-sha2-256-cert-v01@openssh.com", "host_rsa"),
        ("rsa-sha2-512-cert-v01@openssh.com", "host_rsa"),
    ];
    let ca = public_of(&keys.ca);
    for (hk, file) in hk_cases {
        match client_session(
            port,
            client_cfg("curve25519-sha256", "aes256-gcm@openssh.com", None, hk),
            &user_key,
        ) {
            Ok(o) => {
                assert_eq!(o.algorithms[0].host_key, *hk);
                assert_eq!(
                    o.host_key.unwrap().key_data(),
                    public_of(&dir.0.join(file)).key_data(),
                    "{hk}"
                );
                if hk.contains("-cert-") {
                    let cert = o.cert.expect("certificate event");
                    assert_eq!(cert.signature_key(), ca.key_data());
                    assert!(cert.valid_principals().iter().any(|p| p == "127.0.0.1"));
                } else {
                    assert!(o.cert.is_none());
                }
                ok += 1;
            }
            Err(e) => failures.push(format!("host key {hk}: {e}")),
        }
    }
    eprintln!("client vs sshd: {ok} sessions passed, {} failed", failures.len());
    if !failures.is_empty() {
        let log: String = std::fs::read_dir(&dir.0)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        let tail: String = log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("failures:\n{}\nsshd log tail:\n{tail}", failures.join("\n"));
    }
}

// ---------------------------------------------------------------------------------------
// (b) the real ssh client against our server

fn server_cfg(dir: &Path, keys: &HostKeys) -> TransportConfig {
    let host_keys = keys
        .files
        .iter()
        .map(|(_, f)| ssh_key::PrivateKey::read_openssh_file(f).unwrap())
        .collect();
    let mut cfg = TransportConfig::server(host_keys);
    cfg.host_certificates = ["host_ed25519", "host_rsa"]
        .iter()
        .map(|k| ssh_key::Certificate::read_file(&dir.join(format!("{k}-cert.pub"))).unwrap())
        .collect();
    cfg
}

/// One connection: answers SERVICE_REQUEST with SERVICE_ACCEPT and every USERAUTH_REQUEST
/// with USERAUTH_FAILURE "publickey". (No rekey here: OpenSSH's client refuses KEXINIT during
/// user authentication, and sshd never sends one then.)
fn serve(mut sock: TcpStream, cfg: TransportConfig) {
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut t = Transport::new(cfg);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if flush(&mut t, &mut sock).is_err() {
            return;
        }
        let n = match sock.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Err(e) = t.recv(&buf[..n]) {
            eprintln!("server transport: {e}");
            let _ = flush(&mut t, &mut sock);
            return;
        }
        while t.poll_event().is_some() {}
        while let Some(p) = t.poll_payload() {
            match p[0] {
                msg::SERVICE_REQUEST => {
                    let mut r = vec![msg::SERVICE_ACCEPT];
                    r.extend_from_slice(&p[1..]);
                    let _ = t.send(&r);
                }
                msg::USERAUTH_REQUEST => {
                    let mut r = vec![msg::USERAUTH_FAILURE];
                    r.extend_from_slice(&9u32.to_be_bytes());
                    r.extend_from_slice(b"publickey");
                    r.push(0);
                    let _ = t.send(&r);
                }
                _ => {}
            }
        }
    }
}

struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn start_server(cfg: TransportConfig) -> Server {
    let mut listener = None;
    for salt in 100..120 {
        let port = free_port(salt);
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            listener = Some((l, port));
            break;
        }
    }
    let (listener, port) = listener.expect("a free port");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                return;
            }
            let Ok(sock) = conn else { continue };
            let cfg = cfg.clone();
            thread::spawn(move || serve(sock, cfg));
        }
    });
    Server { port, stop }
}

/// Runs `ssh -vvv` against our server and returns its log.
fn run_ssh(port: u16, known_hosts: &Path, opts: &[String]) -> String {
    let mut cmd = Command::new("ssh");
    cmd.args(["-vvv", "-F", "/dev/null", "-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
        ])
        .args(["-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=no"])
        .args([
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "GSSAPIAuthentication=no",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(opts.iter().flat_map(|o| ["-o", o.as_str()]))
        .args(["nobody@127.0.0.1", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    reader.join().unwrap()
}

fn check_ssh_log(log: &str, want: &[String]) -> Result<(), String> {
    for w in want {
        if !log.contains(w.as_str()) {
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            return Err(format!(
                "missing {w:?}; log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    Ok(())
}

#[test]
fn openssh_client_against_our_server() {
    if !have("ssh") || !have("ssh-keygen") {
        eprintln!("SKIPPED: ssh/ssh-keygen not installed");
        return;
    }
    let dir = TempDir::new("ssh");
    let keys = host_keys(&dir.0);
    let server = start_server(server_cfg(&dir.0, &keys));
    let known_hosts = dir.0.join("known_hosts");
    let ca_line = std::fs::read_to_string(keys.ca.with_extension("pub")).unwrap();
    std::fs::write(&known_hosts, format!("@cert-authority * {ca_line}")).unwrap();
    let mut failures = Vec::new();
    let mut ok = 0;
    for k in openssh_kex() {
        for (c, m) in combos() {
            let mut opts = vec![
                format!("KexAlgorithms={k}"),
                format!("Ciphers={c}"),
                "HostKeyAlgorithms=ssh-ed25519".into(),
            ];
            if let Some(m) = m {
                opts.push(format!("MACs={m}"));
            }
            let log = run_ssh(server.port, &dev_null_known_hosts(), &opts);
            let mac = m.unwrap_or("<implicit>");
            let want = vec![
                format!("kex: algorithm: {k}"),
                "kex: host key algorithm: ssh-ed25519".to_string(),
                format!("kex: server->client cipher: {c} MAC: {mac} compression: none"),
                format!("kex: client->server cipher: {c} MAC: {mac} compression: none"),
                "SSH2_MSG_NEWKEYS received".to_string(),
                "server-sig-algs=<ssh-ed25519".to_string(),
                "Permission denied (publickey)".to_string(),
            ];
            match check_ssh_log(&log, &want) {
                Ok(()) => ok += 1,
                Err(e) => failures.push(format!("{k} {c} {m:?}: {e}")),
            }
        }
    }
    for hk in [
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "rsa-sha2-256",
        "rsa-sha2-512",
        "ssh-ed25519-cert-v01@openssh.com",
        "rsa-sha2-512-cert-v01@openssh.com",
        "rsa-sha2-256-cert-v01@openssh.com",
    ] {
        let opts = vec![format!("HostKeyAlgorithms={hk}")];
        let kh = if hk.contains("-cert-") {
            known_hosts.clone()
        } else {
            dev_null_known_hosts()
        };
        let log = run_ssh(server.port, &kh, &opts);
        let mut want = vec![
            format!("kex: host key algorithm: {hk}"),
            "Permission denied (publickey)".to_string(),
        ];
        if hk.contains("-cert-") {
            want.push("Server host certificate: ".into());
            want.push("host certificate.".into());
        }
        match check_ssh_log(&log, &want) {
            Ok(()) => ok += 1,
            Err(e) => failures.push(format!("host key {hk}: {e}")),
        }
    }
    eprintln!(
        "ssh vs our server: {ok} sessions passed, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n\n"));
}

fn dev_null_known_hosts() -> PathBuf {
    PathBuf::from("/dev/null")
}
