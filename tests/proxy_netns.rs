//! The whole product through the kernel: stock OpenSSH clients in two vnets, eBPF steering,
//! the proxy with certificate login, and real OpenSSH servers in the target namespaces —
//! both targets at the same address, told apart by the vnet. Needs root.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Output,
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
            "{EXTRA}\n[account]\nsecret = \"keys/secret\"\nca_key = \"keys/ca\"\n\n[audit]\nfile = \"{}\"\nstdout = true\n",
            dir.join("audit.jsonl").display()
        ));
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
