use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

/// A real OpenSSH server for tests: its own directory, host key and configuration, trusting
/// the given CA for user certificates. Runs in the foreground (`-D`) and is killed on drop.
pub struct Sshd {
    pub dir: PathBuf,
    pub addr: std::net::SocketAddr,
    child: Child,
}

/// Options a test may change.
#[derive(Clone, Debug, Default)]
pub struct SshdOptions {
    /// `TrustedUserCAKeys` content (one or more `ssh-ed25519 …` lines); none: no CA trusted.
    pub trusted_ca: Option<String>,
    /// Extra `sshd_config` lines (e.g. `AuthorizedPrincipalsFile …`).
    pub extra: Vec<String>,
    /// Reuse this host key file instead of generating one.
    pub host_key: Option<PathBuf>,
}

impl Sshd {
    /// Starts sshd on `addr` (inside `ns` if given) and waits until it accepts connections.
    pub fn start(ns: Option<&Netns>, addr: std::net::SocketAddr, opts: &SshdOptions) -> Self {
        let dir = std::env::temp_dir().join(crate::unique("portcullis-sshd-"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let key = match &opts.host_key {
            Some(k) => k.clone(),
            None => {
                let k = dir.join("host_ed25519");
                let st = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(&k)
                    .status()
                    .unwrap();
                assert!(st.success(), "ssh-keygen");
                k
            }
        };
        let mut cfg = format!(
            "ListenAddress {addr}\nHostKey {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\nLogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\nAcceptEnv LANG PORTCULLIS_*\nAllowTcpForwarding yes\nX11Forwarding yes\n\
             SetEnv XAUTHORITY={}\n",
            key.display(),
            // sshd's xauth writes the forwarded display's cookie here, not in root's home.
            dir.join("xauthority").display()
        );
        if let Some(ca) = &opts.trusted_ca {
            std::fs::write(dir.join("ca.pub"), ca).unwrap();
            cfg.push_str(&format!("TrustedUserCAKeys {}\n", dir.join("ca.pub").display()));
        }
        for l in &opts.extra {
            cfg.push_str(l);
            cfg.push('\n');
        }
        std::fs::write(dir.join("sshd_config"), cfg).unwrap();
        let mut cmd = match ns {
            Some(ns) => ns.command("/usr/sbin/sshd"),
            None => Command::new("/usr/sbin/sshd"),
        };
        let child = cmd
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        let s = Self { dir, addr, child };
        s.wait_listening(ns);
        s
    }

    fn wait_listening(&self, ns: Option<&Netns>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = self.addr;
        loop {
            let up = match ns {
                Some(ns) => ns.run(move || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                }),
                None => std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            };
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {addr}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills (SIGKILL) every per-connection process of this server, as a crash would.
    pub fn kill_sessions(&self) {
        fn descendants(pid: u32, out: &mut Vec<u32>) {
            let o = Command::new("pgrep")
                .args(["-P", &pid.to_string()])
                .output()
                .unwrap();
            for p in String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
            {
                descendants(p, out);
                out.push(p);
            }
        }
        let mut pids = Vec::new();
        descendants(self.pid(), &mut pids);
        // Freeze the whole tree first: killed one by one, a session's shell could see its
        // command die and sshd report a clean exit before sshd itself is killed.
        for &p in &pids {
            unsafe { libc::kill(p as i32, libc::SIGSTOP) };
        }
        for &p in &pids {
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    pub fn host_key(&self) -> PathBuf {
        self.dir.join("host_ed25519")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free TCP port on 127.0.0.1 for a server a test starts. Taken below the kernel's
/// ephemeral range (32768–60999): a port from that range, released and bound again later,
/// can meanwhile become the source port of a parallel test's connection (seen in CI as
/// "Address already in use"). Each test process walks its own part of 20000–31999.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let port = (BASE + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {BASE}..{}", BASE + SPAN)
}

/// `ssh` with options for tests: no known-hosts prompts (a per-test known_hosts file), batch
/// mode, no agent, no user config.
pub fn ssh_command(known_hosts: &Path) -> Command {
    let mut c = Command::new("ssh");
    c.args(ssh_opts(known_hosts));
    c
}

pub fn ssh_opts(known_hosts: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=accept-new".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "IdentityAgent=none".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
    ]
}
