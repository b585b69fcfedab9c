//! A gateway on loopback without eBPF: a real sshd as the target, portcullis in listener
//! mode in front of it, keys created with `portcullis ca init`. For proxy and recording
//! tests that need no network namespaces.

use std::{
    io::{BufRead, BufReader},
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
    pub sshd: Sshd,
    bin: PathBuf,
    daemon: Option<(Child, Arc<Mutex<Vec<String>>>)>,
}

/// What the gateway's configuration adds to the minimal one.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// Record sessions to `<dir>/rec` with a key pair in `<dir>/reckeys`.
    pub record: bool,
    /// Extra TOML appended to the configuration.
    pub extra: String,
    /// Start the target sshd without trusting the CA.
    pub untrusted: bool,
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
            if !extra.contains("[recording]") {
                extra.push_str(&format!(
                    "\n[recording]\ndir = \"{}\"\n",
                    dir.join("rec").display()
                ));
            }
        }
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

[[target]]
hostname = "web-01"
ipv4 = "127.0.0.1"

[[application]]
name = "ssh"
target = [{{ hostname = "web-01", ports = [{target_port}] }}]

[[identity]]
email = "alice@example.com"
groups = ["ops"]
sources = ["127.0.0.1"]

[[policy]]
name = "ops"
application = "ssh"
action = "allow"
precedence = 1
include = [{{ group = "ops" }}]
logins = ["root"]

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
            "ca init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let ca = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        let sopts = SshdOptions {
            trusted_ca: (!opts.untrusted).then_some(ca),
            ..Default::default()
        };
        let sshd = Sshd::start(None, format!("127.0.0.1:{target_port}").parse().unwrap(), &sopts);
        let mut g = Self {
            dir,
            config,
            proxy_port,
            sshd,
            bin: bin.to_owned(),
            daemon: None,
        };
        g.start_daemon();
        g
    }

    pub fn start_daemon(&mut self) {
        let mut child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lines.lock().unwrap().iter().any(|l| l.contains("dataplane up")) {
            assert!(
                Instant::now() < deadline,
                "daemon not ready: {:?}",
                lines.lock().unwrap()
            );
            if let Ok(Some(st)) = child.try_wait() {
                panic!("daemon exited {st}: {:?}", lines.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some((child, lines));
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

    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|(_, l)| l.lock().unwrap().join("\n"))
            .unwrap_or_default()
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
