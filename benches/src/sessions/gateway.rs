//! The gateway of the concurrency figure: `portcullis run` in listener mode in front of the
//! lightweight target, configured for many sessions: one identity for all of 127.0.0.0/8
//! (the harness spreads its connections over loopback sources), `none` accepted (the
//! default `[auth] methods`), and `[limits]` raised so that a ramp of set-ups in parallel
//! is not turned away; audit events to a file, daemon logs at `warn`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use ssh_key::PublicKey;

/// Connections being set up at once that the gateway must let through: the harness's ramp.
pub const SETUP_SLOTS: usize = 256;

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
}

/// Writes the configuration `<name>.toml` in `dir` for a gateway in front of `target`.
fn configure(
    dir: &Path,
    name: &str,
    target: SocketAddr,
    listen: SocketAddr,
    record: bool,
) -> Result<PathBuf> {
    let mut account = String::from("[account]\nsecret = \"keys/secret\"\nca_key = \"keys/ca\"\n");
    let mut recording = String::new();
    if record {
        account.push_str(
            "recording_public_key = \"reckeys/sshkey.pub\"\nrecording_signing_key = \"keys/recsign\"\n",
        );
        recording = format!(
            "[recording]\ndir = \"{}\"\n",
            dir.join(format!("rec-{name}")).display()
        );
    }
    let state = dir.join(format!("state-{name}"));
    let config = format!(
        r#"{account}
[audit]
file = "{audit}"
stdout = false

[dataplane]
instance = "bench{name}{pid}"
state_dir = "{state}"
data_dir = "{state}"

[limits]
unauthenticated = {slots}
unauthenticated_per_source = {slots}
upstream_dials_per_identity = {slots}
upstream_dials_per_target = {slots}

[[target]]
hostname = "bench-target"
ipv4 = "{ip}"

[[application]]
name = "ssh"
target = [{{ hostname = "bench-target", ports = [{port}] }}]

[[identity]]
email = "bench@example.com"
sources = ["127.0.0.0/8"]

[[policy]]
name = "bench"
application = "ssh"
action = "allow"
precedence = 1
include = [{{ everyone = true }}]
logins = ["root"]

[[listener]]
listen = "{listen}"
target = "bench-target"
port = {port}

{recording}"#,
        audit = dir.join(format!("audit-{name}.jsonl")).display(),
        pid = std::process::id(),
        state = state.display(),
        slots = SETUP_SLOTS * 2,
        ip = target.ip(),
        port = target.port(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    Ok(path)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the account keys, the CA and a recording key pair in `dir`; returns the CA's
/// public key (what the target trusts).
pub fn init(bin: &Path, dir: &Path, target: SocketAddr) -> Result<PublicKey> {
    run(Command::new(bin)
        .args(["keygen", "--output"])
        .arg(dir.join("reckeys")))?;
    // With recording, so that the recording-signing key is created too.
    let config = configure(dir, "init", target, "127.0.0.1:1".parse()?, true)?;
    let out = run(Command::new(bin).args(["ca", "init", "--config"]).arg(&config))?;
    let line = out.lines().last().unwrap_or_default();
    PublicKey::from_openssh(line).with_context(|| format!("ca init printed {out:?}"))
}

impl Gateway {
    /// Starts `portcullis run` for a new configuration `name` in `dir` and waits until it
    /// accepts connections.
    pub fn start(bin: &Path, dir: &Path, name: &str, target: SocketAddr, record: bool) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], portcullis_testbed::free_port()));
        let config = configure(dir, name, target, addr, record)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("PORTCULLIS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut g = Gateway { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(st) = g.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                bail!("the gateway exited ({st}): {log}");
            }
            if Instant::now() > deadline {
                bail!("the gateway does not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(g)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
