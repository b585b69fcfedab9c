//! SSH through the proxy against the anchors, all on loopback with real OpenSSH on every
//! hop: direct (client → target sshd), proxied (client → portcullis → target sshd) and
//! ProxyJump (client → bastion sshd → target sshd). The same cipher on every hop (the servers
//! are restarted with `Ciphers` set to it) and curve25519-sha256 key exchange. Variants are
//! interleaved so that every ratio compares figures from the same minutes.
//!
//! `PORTCULLIS_BENCH_BASELINE=/path/to/an/older/portcullis` adds the variant `baseline`: the
//! same gateway run by that binary, measured in the same rounds (a before/after in one run);
//! with `PORTCULLIS_BENCH_BASELINE_RECORDING=1` that gateway records, to compare with
//! `recorded`.
//!
//! `PORTCULLIS_BENCH_SSH_ONLY=aes,proxied,recorded` narrows a run to the listed ciphers
//! (`chacha`, `aes`), variants (`direct`, `proxied`, `proxyjump`, `recorded`, `mixed`) and
//! extra cases (`bidir`, `connect`, `own_core`), for iterating on one figure; a kind not listed is not
//! narrowed, except the extra cases, which run only when listed.
//!
//! The extra case `own_core` runs the recording on/off pair and the two-way `cat` (direct
//! and proxied) again with the gateway on a core of its own and the endpoints (ssh, sshd,
//! `head`, `cat`) on another: the appliance's layout, where the gateway's CPU is not the
//! clients' and targets'. On a two-core machine the unpinned figures share the cores among
//! all of them, so what recording costs the gateway is taken from the endpoints too. There
//! the direct two-way `cat` has the endpoints' core alone and the proxied one the gateway's
//! besides: the question is whether putting the gateway, a machine of its own in that
//! layout, into the path slows the endpoints down.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::{cpu_secs, median};

const CIPHERS: [(&str, &str); 2] = [
    ("chacha", "chacha20-poly1305@openssh.com"),
    ("aes", "aes128-gcm@openssh.com"),
];
const KEX: &str = "curve25519-sha256";
/// Seconds a two-way `cat` may take before it counts as stalled.
const BIDIR_TIMEOUT: u64 = 60;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

struct Bed {
    dir: PathBuf,
    key: PathBuf,
    target_port: u16,
    bastion_port: u16,
    proxy_port: u16,
    rec_port: u16,
    mixed_port: u16,
    mixed_proxy_port: u16,
    target: Option<Proc>,
    mixed_target: Option<Proc>,
    bastion: Option<Proc>,
    proxy: Option<Proc>,
    rec_proxy: Option<Proc>,
    /// `PORTCULLIS_BENCH_BASELINE`'s gateway and its port.
    base_proxy: Option<Proc>,
    base: Option<(PathBuf, u16)>,
    ca_line: String,
    portcullis: PathBuf,
}

impl Bed {
    fn new(portcullis: &Path) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("portcullis-bench-ssh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys"))?;
        std::fs::create_dir_all("/run/sshd")?;
        let key = dir.join("client_ed25519");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key))?;
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join("host_ed25519")))?;
        std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))?;
        let (target_port, bastion_port, proxy_port, rec_port) =
            (free_port(), free_port(), free_port(), free_port());
        let (mixed_port, mixed_proxy_port) = (free_port(), free_port());
        let config = format!(
            r#"[account]
secret = "keys/secret"
ca_key = "keys/ca"
[audit]
stdout = false
[dataplane]
instance = "bench{pid}"
state_dir = "{dir}/state"
[[target]]
hostname = "bench-target"
ipv4 = "127.0.0.1"
[[application]]
name = "ssh"
target = [{{ hostname = "bench-target", ports = [{target_port}, {mixed_port}] }}]
[[identity]]
email = "bench@example.com"
sources = ["127.0.0.1"]
[[policy]]
name = "bench"
application = "ssh"
action = "allow"
precedence = 1
include = [{{ everyone = true }}]
logins = ["root"]
[[listener]]
listen = "127.0.0.1:{proxy_port}"
target = "bench-target"
port = {target_port}
[[listener]]
listen = "127.0.0.1:{mixed_proxy_port}"
target = "bench-target"
port = {mixed_port}
"#,
            pid = std::process::id(),
            dir = dir.display()
        );
        std::fs::write(dir.join("portcullis.toml"), &config)?;
        // The same gateway with session recording on, for the recording_on/off ratio.
        run(Command::new(portcullis)
            .args(["keygen", "--output"])
            .arg(dir.join("reckeys")))?;
        // A second gateway from the same configuration: its own instance and listen ports.
        let another = |tag: &str, port: u16| {
            config
                .replace(
                    &format!("instance = \"bench{}\"", std::process::id()),
                    &format!("instance = \"bench{tag}{}\"", std::process::id()),
                )
                .replace(
                    &format!("listen = \"127.0.0.1:{proxy_port}\""),
                    &format!("listen = \"127.0.0.1:{port}\""),
                )
                .replace(
                    &format!("listen = \"127.0.0.1:{mixed_proxy_port}\""),
                    &format!("listen = \"127.0.0.1:{}\"", free_port()),
                )
        };
        let recorded = |config: String| {
            config.replace(
                "ca_key = \"keys/ca\"\n",
                "ca_key = \"keys/ca\"\nrecording_public_key = \"reckeys/sshkey.pub\"\n",
            ) + &format!("[recording]\ndir = \"{}/rec\"\n", dir.display())
        };
        std::fs::write(
            dir.join("portcullis-rec.toml"),
            recorded(another("rec", rec_port)),
        )?;
        let base = match std::env::var_os("PORTCULLIS_BENCH_BASELINE") {
            Some(bin) => {
                let port = free_port();
                let mut config = another("base", port);
                if std::env::var_os("PORTCULLIS_BENCH_BASELINE_RECORDING").is_some() {
                    config = recorded(config);
                }
                std::fs::write(dir.join("portcullis-base.toml"), config)?;
                Some((PathBuf::from(bin), port))
            }
            None => None,
        };
        let out = Command::new(portcullis)
            .args(["ca", "init", "--config"])
            .arg(dir.join("portcullis.toml"))
            .output()?;
        if !out.status.success() {
            bail!("ca init: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ca_line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        std::fs::write(dir.join("ca.pub"), &ca_line)?;
        Ok(Self {
            dir,
            key,
            target_port,
            bastion_port,
            proxy_port,
            rec_port,
            mixed_port,
            mixed_proxy_port,
            target: None,
            mixed_target: None,
            bastion: None,
            proxy: None,
            rec_proxy: None,
            base_proxy: None,
            base,
            ca_line,
            portcullis: portcullis.to_owned(),
        })
    }

    fn sshd(&self, port: u16, cipher: &str) -> Result<Proc> {
        let cfg = self.dir.join(format!("sshd_{port}"));
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {dir}/host_ed25519\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
                 AuthorizedKeysFile {dir}/authorized_keys\nTrustedUserCAKeys {dir}/ca.pub\nCiphers {cipher}\n\
                 KexAlgorithms {KEX}\nAllowTcpForwarding yes\nCompression no\n",
                dir = self.dir.display()
            ),
        )?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(&cfg)
            .stderr(Stdio::null())
            .spawn()?;
        wait_port(port)?;
        Ok(Proc(child))
    }

    /// (Re)starts both servers for a cipher; the proxy once.
    fn start(&mut self, cipher: &str) -> Result<()> {
        self.target = None;
        self.bastion = None;
        self.target = Some(self.sshd(self.target_port, cipher)?);
        self.bastion = Some(self.sshd(self.bastion_port, cipher)?);
        if self.mixed_target.is_none() {
            // A target with OpenSSH's usual choice of ciphers: the client picks its own hop's
            // cipher and the proxy picks the upstream one.
            let all = CIPHERS.map(|(_, c)| c).join(",");
            self.mixed_target = Some(self.sshd(self.mixed_port, &all)?);
        }
        if self.proxy.is_none() {
            let child = Command::new(&self.portcullis)
                .args(["run", "--config"])
                .arg(self.dir.join("portcullis.toml"))
                .env("PORTCULLIS_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?;
            wait_port(self.proxy_port)?;
            self.proxy = Some(Proc(child));
            let child = Command::new(&self.portcullis)
                .args(["run", "--config"])
                .arg(self.dir.join("portcullis-rec.toml"))
                .env("PORTCULLIS_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?;
            wait_port(self.rec_port)?;
            self.rec_proxy = Some(Proc(child));
            if let Some((bin, port)) = &self.base {
                let child = Command::new(bin)
                    .args(["run", "--config"])
                    .arg(self.dir.join("portcullis-base.toml"))
                    .env("PORTCULLIS_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()?;
                wait_port(*port)?;
                self.base_proxy = Some(Proc(child));
            }
        }
        let _ = &self.ca_line;
        Ok(())
    }

    fn ssh(&self, variant: &str, cipher: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentityAgent=none",
            "-o",
            "Compression=no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([
            "-c".into(),
            cipher.into(),
            "-o".into(),
            format!("KexAlgorithms={KEX}"),
        ]);
        let key = self.key.display().to_string();
        match variant {
            "direct" => a.extend(["-i".into(), key, "-p".into(), self.target_port.to_string()]),
            "proxied" => a.extend(["-p".into(), self.proxy_port.to_string()]),
            "mixed" => a.extend(["-p".into(), self.mixed_proxy_port.to_string()]),
            "recorded" => a.extend(["-p".into(), self.rec_port.to_string()]),
            "baseline" => a.extend(["-p".into(), self.base.as_ref().map_or(0, |b| b.1).to_string()]),
            _ => {
                let hop = format!(
                    "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                     -o LogLevel=ERROR -o IdentityAgent=none -c {cipher} -o KexAlgorithms={KEX} -i {key} -p {} \
                     -W %h:%p root@127.0.0.1",
                    self.bastion_port
                );
                a.extend([
                    "-i".into(),
                    key,
                    "-p".into(),
                    self.target_port.to_string(),
                    "-o".into(),
                    format!("ProxyCommand={hop}"),
                ]);
            }
        }
        a.push("root@127.0.0.1".into());
        a
    }

    /// Seconds to move `bytes` down (target → client) or up.
    fn transfer(&self, variant: &str, cipher: &str, down: bool, bytes: u64) -> Result<f64> {
        let args = self
            .ssh(variant, cipher)
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        let line = if down {
            format!("ssh {args} 'head -c {bytes} /dev/zero' > /dev/null")
        } else {
            format!("head -c {bytes} /dev/zero | ssh {args} 'cat > /dev/null'")
        };
        let t = Instant::now();
        run(Command::new("sh").args(["-c", &line]))?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Seconds for `bytes` to go up and come back down at once (`cat` on the target).
    fn transfer_bidir(&self, variant: &str, cipher: &str, bytes: u64) -> Result<f64> {
        let args = self
            .ssh(variant, cipher)
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        // A relay that stalls on two-way traffic (the russh one did) is given up on: the
        // figure is then 0.
        let line = format!("head -c {bytes} /dev/zero | timeout {BIDIR_TIMEOUT} ssh {args} cat | wc -c");
        let t = Instant::now();
        let out = Command::new("sh").args(["-c", &line]).output()?;
        let secs = t.elapsed().as_secs_f64();
        let got: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        if got != bytes {
            eprintln!("{variant}: two-way cat stalled: {got} of {bytes} bytes in {secs:.0} s");
            return Ok(f64::INFINITY);
        }
        Ok(secs)
    }

    /// The gateways on `gateway`'s CPU, the target sshd and this thread's children (the
    /// clients) on `endpoints`'; `None`: back on every CPU this thread may use.
    fn pin(&self, cores: Option<(usize, usize)>, all: &[usize]) -> Result<()> {
        let (gateway, endpoints): (Vec<usize>, Vec<usize>) = match cores {
            Some((g, e)) => (vec![g], vec![e]),
            None => (all.to_vec(), all.to_vec()),
        };
        for p in [&self.proxy, &self.rec_proxy].into_iter().flatten() {
            pin_process(p.0.id(), &gateway)?;
        }
        // Its sessions' processes are forked later and take the listener's CPUs.
        if let Some(t) = &self.target {
            pin_process(t.0.id(), &endpoints)?;
        }
        set_affinity(0, &endpoints).context("pinning the bench's own thread")
    }

    fn connect_ms(&self, variant: &str, cipher: &str) -> Result<f64> {
        let t = Instant::now();
        run(Command::new("ssh").args(self.ssh(variant, cipher)).arg("true"))?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.proxy = None;
        self.rec_proxy = None;
        self.base_proxy = None;
        self.target = None;
        self.mixed_target = None;
        self.bastion = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The CPUs this thread may run on.
fn own_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| ok && unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Sets thread `tid`'s CPUs (0: the calling thread).
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> Result<()> {
    // SAFETY: as in `own_cpus`; `CPU_SET` only writes inside the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("sched_setaffinity {tid}"));
    }
    Ok(())
}

/// Every thread of process `pid` on `cpus` (threads it starts later inherit their
/// creator's).
fn pin_process(pid: u32, cpus: &[usize]) -> Result<()> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Ok(tid) = t?.file_name().to_string_lossy().parse() {
            // A thread that just ended is no reason to stop.
            let _ = set_affinity(tid, cpus);
        }
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// What `PORTCULLIS_BENCH_SSH_ONLY` lets run.
struct Only(Option<Vec<String>>);

impl Only {
    fn from_env() -> Self {
        Self(
            std::env::var("PORTCULLIS_BENCH_SSH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|w| w.trim().to_string()).collect()),
        )
    }

    /// Whether `word`, one of `kind`, runs: every one does when no word of that kind is listed.
    fn runs(&self, word: &str, kind: &[&str]) -> bool {
        match &self.0 {
            None => true,
            Some(l) => l.iter().any(|w| w == word) || !l.iter().any(|w| kind.contains(&w.as_str())),
        }
    }

    fn extra(&self, case: &str) -> bool {
        self.0.as_ref().is_none_or(|l| l.iter().any(|w| w == case))
    }
}

const VARIANTS: [&str; 5] = ["direct", "proxied", "proxyjump", "recorded", "mixed"];

pub fn run_group(quick: bool, portcullis: &Path) -> Result<Map<String, Value>> {
    let only = Only::from_env();
    let mut bed = Bed::new(portcullis)?;
    let bytes: u64 = if quick { 256 << 20 } else { 1 << 30 };
    let rounds = if quick { 1 } else { 3 };
    let mut m = Map::new();
    let mut connect: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    let names: Vec<&str> = CIPHERS.iter().map(|c| c.0).collect();
    for (cname, cipher) in CIPHERS {
        if !only.runs(cname, &names) {
            continue;
        }
        bed.start(cipher)?;
        // "mixed": a target offering both ciphers, so the upstream hop is the proxy's own
        // choice (AES-GCM with hardware AES) while the client's hop stays `cipher`.
        let mut variants: Vec<&str> = vec!["direct", "proxied", "proxyjump", "recorded"];
        if cname == "chacha" {
            variants.push("mixed");
        }
        variants.retain(|v| only.runs(v, &VARIANTS));
        if bed.base.is_some() {
            variants.push("baseline");
        }
        let variants = &variants[..];
        for dir in ["down", "up"] {
            let mut tput: std::collections::HashMap<&str, Vec<f64>> = Default::default();
            let mut cpu: std::collections::HashMap<&str, (f64, f64)> = Default::default();
            for _ in 0..rounds {
                for &v in variants {
                    let pp = match v {
                        "recorded" => bed.rec_proxy.as_ref().unwrap().0.id(),
                        "baseline" => bed.base_proxy.as_ref().unwrap().0.id(),
                        _ => bed.proxy.as_ref().unwrap().0.id(),
                    };
                    let target = match v {
                        "mixed" => &bed.mixed_target,
                        _ => &bed.target,
                    };
                    let tp = target.as_ref().unwrap().0.id();
                    let (p0, s0) = (cpu_secs(pp, false), cpu_secs(tp, true));
                    let secs = bed.transfer(v, cipher, dir == "down", bytes)?;
                    if matches!(v, "proxied" | "mixed" | "recorded" | "baseline") {
                        // The connection's sshd child is reaped by the listener when it ends.
                        std::thread::sleep(Duration::from_millis(100));
                        let c = cpu.entry(v).or_default();
                        c.0 += cpu_secs(pp, false) - p0;
                        c.1 += cpu_secs(tp, true) - s0;
                    }
                    tput.entry(v)
                        .or_default()
                        .push(bytes as f64 / (1 << 20) as f64 / secs);
                }
            }
            for &v in variants {
                let name = match v {
                    "recorded" => format!("ssh.throughput_mibs.recording_on.{cname}.{dir}"),
                    "mixed" => format!("ssh.throughput_mibs.proxied_upstream_aes.{cname}.{dir}"),
                    _ => format!("ssh.throughput_mibs.{v}.{cname}.{dir}"),
                };
                m.insert(name, median(tput[v].clone()).into());
            }
            if let Some(off) = tput.get("proxied") {
                m.insert(
                    format!("ssh.throughput_mibs.recording_off.{cname}.{dir}"),
                    median(off.clone()).into(),
                );
            }
            // Recordings of 1 GiB transfers are not kept.
            let _ = std::fs::remove_dir_all(bed.dir.join("rec"));
            // Each measured variant moved `bytes` once per round.
            let gib = (rounds as u64 * bytes) as f64 / (1u64 << 30) as f64;
            for (v, suffix) in [
                ("proxied", ""),
                ("mixed", "_upstream_aes"),
                ("recorded", "_recording"),
                ("baseline", "_baseline"),
            ] {
                if let Some((proxy_cpu, sshd_cpu)) = cpu.get(v) {
                    m.insert(
                        format!("ssh.cpu_s_per_gib.proxy{suffix}.{cname}.{dir}"),
                        (proxy_cpu / gib).into(),
                    );
                    m.insert(
                        format!("ssh.cpu_s_per_gib.sshd{suffix}.{cname}.{dir}"),
                        (sshd_cpu / gib).into(),
                    );
                }
            }
        }
        if cname == "chacha" && only.extra("bidir") {
            // Both directions at once: what a remote filter (`cat`, `gzip -c`) does. "mixed":
            // the same with the upstream hop on the proxy's own choice (the default).
            let both: Vec<&str> = ["direct", "proxied", "mixed", "baseline"]
                .into_iter()
                .filter(|v| *v != "baseline" || bed.base.is_some())
                .collect();
            let bidir = median_mibs(&both, rounds, bytes, |v| bed.transfer_bidir(v, cipher, bytes))?;
            for &v in &both {
                let v_name = if v == "mixed" { "proxied_upstream_aes" } else { v };
                m.insert(format!("ssh.throughput_mibs.{v_name}.bidir"), bidir[v].into());
            }
        }
        if only.extra("own_core") {
            own_core(&mut m, &bed, cname, cipher, bytes, rounds)?;
        }
        if cname == "chacha" && only.extra("connect") {
            let mut connected = vec!["direct", "proxied", "proxyjump"];
            if bed.base.is_some() {
                connected.push("baseline");
            }
            for _ in 0..(if quick { 5 } else { 15 }) {
                for &v in &connected {
                    connect.entry(v).or_default().push(bed.connect_ms(v, cipher)?);
                }
            }
        }
    }
    for (v, times) in connect {
        m.insert(format!("ssh.connect_ms_p50.{v}"), median(times).into());
    }
    Ok(m)
}

/// Each of `variants`' median MiB/s over `rounds` interleaved rounds, each round moving
/// `bytes` per variant in the seconds `secs` returns.
fn median_mibs<'a>(
    variants: &[&'a str],
    rounds: usize,
    bytes: u64,
    mut secs: impl FnMut(&str) -> Result<f64>,
) -> Result<std::collections::HashMap<&'a str, f64>> {
    let mut runs: std::collections::HashMap<&str, Vec<f64>> = Default::default();
    for _ in 0..rounds {
        for &v in variants {
            let s = secs(v)?;
            runs.entry(v)
                .or_default()
                .push(bytes as f64 / (1 << 20) as f64 / s);
        }
    }
    Ok(runs.into_iter().map(|(v, r)| (v, median(r))).collect())
}

/// The `own_core` case (see the module's doc): recording on/off per direction, and for
/// ChaCha20 the two-way `cat`, with the gateway and the endpoints on a core each.
fn own_core(
    m: &mut Map<String, Value>,
    bed: &Bed,
    cname: &str,
    cipher: &str,
    bytes: u64,
    rounds: usize,
) -> Result<()> {
    let all = own_cpus();
    let [gateway, endpoints, ..] = all[..] else {
        eprintln!("own_core: needs two CPUs, this thread has {all:?}; skipped");
        return Ok(());
    };
    bed.pin(Some((gateway, endpoints)), &all)?;
    let r = (|| -> Result<()> {
        for dir in ["down", "up"] {
            let tput = median_mibs(&["proxied", "recorded"], rounds, bytes, |v| {
                bed.transfer(v, cipher, dir == "down", bytes)
            })?;
            let _ = std::fs::remove_dir_all(bed.dir.join("rec"));
            for (v, name) in [("proxied", "recording_off"), ("recorded", "recording_on")] {
                m.insert(
                    format!("ssh.throughput_mibs.own_core.{name}.{cname}.{dir}"),
                    tput[v].into(),
                );
            }
        }
        if cname == "chacha" {
            let both = ["direct", "proxied"];
            let bidir = median_mibs(&both, rounds, bytes, |v| bed.transfer_bidir(v, cipher, bytes))?;
            for v in both {
                m.insert(format!("ssh.throughput_mibs.own_core.{v}.bidir"), bidir[v].into());
            }
        }
        Ok(())
    })();
    bed.pin(None, &all)?;
    r
}
