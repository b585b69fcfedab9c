//! A gateway on loopback without eBPF: a real sshd as the target, portcullis in listener
//! mode in front of it, keys created with `portcullis ca init`. For proxy and recording
//! tests that need no network namespaces.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{free_port, ssh_opts, Sshd, SshdOptions};

pub struct Gateway {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub proxy_port: u16,
    /// Where the listener connects: the target sshd's address unless `target_down`.
    pub target: SocketAddr,
    pub sshd: Sshd,
    bin: PathBuf,
    sshd_opts: SshdOptions,
    daemon: Option<(Child, Arc<Mutex<Vec<String>>>)>,
}

/// What the gateway's configuration adds to the minimal one.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// Record sessions to `<dir>/rec` with a key pair in `<dir>/reckeys`, signed with the
    /// recording-signing key `ca init` creates at `<dir>/keys/recsign`...
    pub record: bool,
    /// ... or unsigned, without one.
    pub unsigned: bool,
    /// Extra TOML appended to the configuration.
    pub extra: String,
    /// Start the target sshd without trusting the CA.
    pub untrusted: bool,
    /// The identity's groups instead of `["ops"]` (the policy allows group "ops").
    pub groups: Option<Vec<String>>,
    /// Extra lines of the `ops` policy (e.g. `email_prefix_login = true`).
    pub policy_extra: String,
    /// Extra `sshd_config` lines; `{dir}` stands for the gateway's directory.
    pub sshd_extra: Vec<String>,
    /// Nothing listens on the target's address: the sshd is started on another port.
    pub target_down: bool,
    /// Extra lines of the `[[target]]` (e.g. `host_keys = […]`).
    pub target_extra: String,
    /// The target sshd's host key (default: a new one).
    pub sshd_host_key: Option<PathBuf>,
}

impl Gateway {
    pub fn start(bin: &Path, opts: &GatewayOptions) -> Self {
        let dir = std::env::temp_dir().join(crate::unique("portcullis-gw-"));
        std::fs::create_dir_all(&dir).unwrap();
        let (target_port, proxy_port) = (free_port(), free_port());
        let mut account = "[account]\nsecret = \"keys/secret\"\nca_key = \"keys/ca\"\n".to_string();
        let mut extra = opts.extra.clone();
        if opts.record {
            let o = Command::new(bin)
                .args(["keygen", "--output"])
                .arg(dir.join("reckeys"))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "keygen: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            account.push_str("recording_public_key = \"reckeys/sshkey.pub\"\n");
            if !opts.unsigned {
                account.push_str("recording_signing_key = \"keys/recsign\"\n");
            }
            if !extra.contains("[recording]") {
                extra.push_str(&format!(
                    "\n[recording]\ndir = \"{}\"\n",
                    dir.join("rec").display()
                ));
            }
        }
        let groups = match &opts.groups {
            Some(g) => g.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", "),
            None => "\"ops\"".to_string(),
        };
        let policy_extra = &opts.policy_extra;
        let target_extra = &opts.target_extra;
        let config = dir.join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                r#"{account}
[audit]
file = "{audit}"
stdout = false

[dataplane]
instance = "{instance}"
state_dir = "{state}"
data_dir = "{state}"

[[target]]
hostname = "web-01"
ipv4 = "127.0.0.1"
{target_extra}

[[application]]
name = "ssh"
target = [{{ hostname = "web-01", ports = [{target_port}] }}]

[[identity]]
email = "alice@example.com"
groups = [{groups}]
sources = ["127.0.0.1"]

[[policy]]
name = "ops"
application = "ssh"
action = "allow"
precedence = 1
include = [{{ group = "ops" }}]
logins = ["root"]
{policy_extra}

[[listener]]
listen = "127.0.0.1:{proxy_port}"
target = "web-01"
port = {target_port}
{extra}"#,
                audit = dir.join("audit.jsonl").display(),
                instance = crate::unique("gw"),
                state = dir.join("state").display(),
            ),
        )
        .unwrap();
        let o = Command::new(bin)
            .args(["ca", "init", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ca init: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let ca = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(ca.starts_with("ssh-"), "ca init printed {ca:?}");
        let sshd_opts = SshdOptions {
            trusted_ca: (!opts.untrusted).then_some(ca),
            extra: opts
                .sshd_extra
                .iter()
                .map(|l| l.replace("{dir}", &dir.display().to_string()))
                .collect(),
            host_key: opts.sshd_host_key.clone(),
        };
        let target: SocketAddr = format!("127.0.0.1:{target_port}").parse().unwrap();
        let sshd_addr = if opts.target_down {
            format!("127.0.0.1:{}", free_port()).parse().unwrap()
        } else {
            target
        };
        let sshd = Sshd::start(None, sshd_addr, &sshd_opts);
        let mut g = Self {
            dir,
            config,
            proxy_port,
            target,
            sshd,
            bin: bin.to_owned(),
            sshd_opts,
            daemon: None,
        };
        g.start_daemon();
        g
    }

    pub fn start_daemon(&mut self) {
        let mut child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = lines.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lines.lock().unwrap().iter().any(|l| l.contains("dataplane up")) {
            assert!(
                Instant::now() < deadline,
                "daemon not ready: {:?}",
                lines.lock().unwrap()
            );
            if let Ok(Some(st)) = child.try_wait() {
                // Let the reader thread catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                panic!("daemon exited {st}: {:?}", lines.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some((child, lines));
    }

    /// SIGTERM, as an operator's stop; waits for the exit. Returns its status and log.
    pub fn stop_daemon(&mut self) -> Option<(std::process::ExitStatus, Vec<String>)> {
        let (mut c, lines) = self.daemon.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = c.wait().ok()?;
        // The reader thread sees end of file once the daemon is gone; give it the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let lines = lines.lock().unwrap().clone();
        Some((status, lines))
    }

    /// SIGKILL, as a crash.
    pub fn kill_daemon(&mut self) {
        if let Some((mut c, _)) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|(c, _)| c.id())
    }

    /// The daemon's resident memory (VmRSS), in KiB.
    pub fn daemon_rss_kb(&self) -> Option<u64> {
        crate::procfs::status_field(self.daemon_pid()?, "VmRSS")
    }

    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|(_, l)| l.lock().unwrap().join("\n"))
            .unwrap_or_default()
    }

    /// Stops the target sshd and starts a new one on the same address with a new host key.
    pub fn restart_sshd(&mut self) {
        let addr = self.sshd.addr;
        // An `Sshd` stops when dropped: a stand-in on another port frees the address.
        let stand_in = Sshd::start(
            None,
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            &self.sshd_opts,
        );
        drop(std::mem::replace(&mut self.sshd, stand_in));
        self.sshd = Sshd::start(None, addr, &self.sshd_opts);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `ssh` to the proxy with the test options and a known_hosts file in the gateway dir.
    pub fn ssh(&self, extra: &[&str], dest_cmd: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(ssh_opts(&self.dir.join("known_hosts")))
            .args(["-p", &self.proxy_port.to_string()])
            .args(extra)
            .args(dest_cmd);
        c
    }

    pub fn run(&self, extra: &[&str], dest_cmd: &[&str]) -> Output {
        self.ssh(extra, dest_cmd).output().expect("run ssh")
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The session logs written so far.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.join("rec"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn private_key(&self) -> PathBuf {
        self.dir.join("reckeys/sshkey")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill_daemon();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
