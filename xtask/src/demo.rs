//! `cargo xtask demo`: the topology of DESIGN §8 with the real daemon and its eBPF dataplane;
//! flows from two clients in two vnets, the gateway's own traffic, a killed daemon, the
//! counters, a decrypted session recording and the audit trail. Everything is removed at the end, also on failure.

use std::{net::SocketAddr, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use portcullis_testbed::{fetch, ssh_opts, Daemon, Netns, Server, Sshd, SshdOptions, Topology};

use crate::{build, util};

const BIN: &str = "target/debug/portcullis";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Demo {
    topo: Topology,
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Demo {
    fn cli(&self, args: &[&str]) -> Result<String> {
        let bin = std::fs::canonicalize(BIN)?;
        let mut c = self.topo.gw.command(bin.to_str().unwrap());
        c.args(args).arg("--config").arg(&self.config);
        util::output(&mut c)
    }
}

impl Demo {
    /// Runs a subcommand whatever its exit status (explain exits 3 on deny).
    fn cli_any(&self, args: &[&str]) -> Result<String> {
        let bin = std::fs::canonicalize(BIN)?;
        let out = self
            .topo
            .gw
            .command(bin.to_str().unwrap())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.cli(&["down"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn step(n: u32, what: &str) {
    println!("\n\x1b[1m{n}. {what}\x1b[0m");
}

fn show(label: &str, r: std::io::Result<String>) -> String {
    let text = match &r {
        Ok(s) if s.is_empty() => "(connection closed, nothing received)".to_string(),
        Ok(s) => s.trim_end().to_string(),
        Err(e) => format!("(no connection: {e})"),
    };
    println!("   {label:<46} → {text}");
    r.unwrap_or_default()
}

fn expect(ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("demo expectation failed: {what}");
    }
    Ok(())
}

pub fn run() -> Result<()> {
    if !util::is_root() {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    build::all(false)?;
    let started = Instant::now();
    println!(
        "\x1b[1mportcullis demo\x1b[0m: client → gateway (XDP/TC/sk_lookup steering, SSH proxy) → target sshd, \
         two vnets sharing 198.18.10.10"
    );
    let topo = Topology::build();
    let dir = std::env::temp_dir().join(portcullis_testbed::unique("portcullis-demo-"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("portcullis.toml");
    let instance = portcullis_testbed::unique("demo");
    // The operator's recording key pair: the gateway gets only the public half.
    util::output(
        Command::new(std::fs::canonicalize(BIN)?)
            .args(["keygen", "--output"])
            .arg(dir.join("reckeys")),
    )?;
    let mut text = topo.config(&dir.join("state"), &instance);
    text.push_str(&format!(
        "\n[account]\nsecret = \"keys/account.secret\"\nca_key = \"keys/ca\"\n\
         recording_public_key = \"reckeys/sshkey.pub\"\nrecording_signing_key = \"keys/recording-signing\"\n\n[audit]\nfile = \"{}\"\nstdout = true\n\n\
         [recording]\ndir = \"{}\"\n",
        dir.join("audit.jsonl").display(),
        dir.join("rec").display()
    ));
    std::fs::write(&config, text)?;
    let demo = Demo { topo, dir, config };
    let t = &demo.topo;
    println!(
        "   namespaces: {} {} {} {} {}",
        t.client.name, t.client2.name, t.gw.name, t.target.name, t.target2.name
    );
    println!(
        "   config ({}):\n{}",
        demo.config.display(),
        indent(&std::fs::read_to_string(&demo.config)?)
    );

    // The account's CA, trusted by the targets' real OpenSSH servers (seed 004's ca.pub).
    let ca = demo.cli_any(&["ca", "init"])?;
    let ca_line = ca.lines().last().unwrap_or_default().to_string();
    println!("   `portcullis ca init` → the line for the targets' TrustedUserCAKeys:\n     {ca_line}");
    let opts = SshdOptions {
        trusted_ca: Some(ca_line),
        ..Default::default()
    };
    let _sshd = Sshd::start(Some(&t.target), sa("198.18.10.10:22"), &opts);
    let _sshd6 = Sshd::start(Some(&t.target), sa("[2001:db8:10::10]:22"), &opts);
    let _sshd_lab = Sshd::start(Some(&t.target2), sa("198.18.10.10:22"), &opts);
    let _web = Server::start(
        &t.target,
        sa("198.18.10.10:80"),
        "web-01 (corp) port 80: forwarded untouched",
    );
    let _lab = Server::start(
        &t.target2,
        sa("198.18.10.10:80"),
        "lab-01 (lab) port 80: forwarded untouched",
    );
    let _web6 = Server::start(
        &t.target,
        sa("[2001:db8:10::10]:80"),
        "web-01 (corp) [v6] port 80: forwarded untouched",
    );

    let gw_name = t.gw.name.clone();
    let bin = std::fs::canonicalize(BIN)?;
    let mut d = Daemon::start(&t.gw, &bin, &demo.config);
    d.wait_ready()
        .map_err(anyhow::Error::msg)
        .context("start the daemon")?;
    println!("   daemon up in {} (pid {})", t.gw.name, d.pid());

    let kh = demo.dir.join("known_hosts");
    // Sessions without input get an empty standard input.
    let ssh = |ns: &Netns, dest: &str, cmd: &str| ssh_input(ns, &kh, dest, cmd, "");

    step(
        1,
        "Real SSH sessions: stock OpenSSH client → eBPF steering → portcullis → OpenSSH server",
    );
    let o = ssh(
        &t.client,
        "root@198.18.10.10",
        "echo \"hello from $(ip -o -4 addr show eth0 | head -1 | cut -d' ' -f7) as $(id -un)\"; exit 3",
    )?;
    show_ssh("alice (corp): ssh root@198.18.10.10 'echo hello…; exit 3'", &o);
    expect(
        o.status.code() == Some(3) && String::from_utf8_lossy(&o.stdout).contains("198.18.101.2"),
        "alice's session",
    )?;
    let o = ssh(&t.client, "root@2001:db8:10::10", "echo hello over IPv6")?;
    show_ssh(
        "alice (corp): ssh root@2001:db8:10::10 'echo hello over IPv6'",
        &o,
    );
    let typed = "the launch code is 0000";
    let o = ssh_input(
        &t.client,
        &kh,
        "root@198.18.10.10",
        "read line; echo \"target read: $line\"",
        &format!("{typed}\n"),
    )?;
    show_ssh(
        &format!("alice (corp): echo '{typed}' | ssh root@198.18.10.10 'read line; echo …'"),
        &o,
    );
    expect(o.status.success(), "the session with input")?;
    let recorded = newest_log(&demo.dir.join("rec"))?;
    let o = ssh(&t.client, "admin@198.18.10.10", "true")?;
    show_ssh(
        "alice (corp): ssh admin@198.18.10.10 true   # a login her policy does not allow",
        &o,
    );
    expect(o.status.code() == Some(1), "admin refused with a message")?;
    let o = ssh(&t.client2, "root@198.18.10.10", "true")?;
    show_ssh(
        "bob (lab): ssh root@198.18.10.10 true       # no policy: stopped before the target",
        &o,
    );
    expect(o.status.code() == Some(255), "bob refused")?;

    step(
        2,
        "Other ports of the same targets: forwarded untouched, each vnet to its own target",
    );
    show(
        "client (corp)  → 198.18.10.10:80",
        fetch(&t.client, sa("198.18.10.10:80")),
    );
    show(
        "client2 (lab)  → 198.18.10.10:80",
        fetch(&t.client2, sa("198.18.10.10:80")),
    );
    show(
        "client (corp)  → [2001:db8:10::10]:80",
        fetch(&t.client, sa("[2001:db8:10::10]:80")),
    );

    step(3, "The gateway's own connections are never captured");
    let banner = show(
        "gateway        → 198.18.10.10:22 (first line)",
        fetch_line(&t.gw, sa("198.18.10.10:22")),
    );
    expect(
        banner.starts_with("SSH-2.0-OpenSSH"),
        "the gateway reaches the target's sshd directly",
    )?;

    step(4, "Fail closed: daemon killed with SIGKILL");
    let mut events = d.stdout();
    d.kill9();
    let o = ssh(&t.client, "root@198.18.10.10", "true")?;
    show_ssh(
        "alice: ssh root@198.18.10.10 true            # daemon dead: no bypass",
        &o,
    );
    expect(
        o.status.code() == Some(255),
        "no session while the daemon is dead",
    )?;
    let mut d = Daemon::start(&t.gw, &bin, &demo.config);
    d.wait_ready().map_err(anyhow::Error::msg)?;
    println!(
        "   restarted (pid {}): it takes over the pinned programs and maps",
        d.pid()
    );
    let o = ssh(&t.client, "root@198.18.10.10", "echo back in")?;
    show_ssh(
        "alice: ssh root@198.18.10.10 'echo back in'  # same derived host key: no warning",
        &o,
    );
    expect(o.status.code() == Some(0), "session after restart")?;

    step(
        5,
        "Policy: who may log in where, and why (`portcullis policy explain`)",
    );
    for (src, vnet, login) in [
        ("198.18.1.2", "corp", "root"),
        ("198.18.1.2", "corp", "admin"),
        ("198.18.2.2", "lab", "root"),
    ] {
        let target = if vnet == "corp" { "web-01" } else { "lab-01" };
        let out = demo.cli_any(&[
            "policy", "explain", "--source", src, "--vnet", vnet, "--target", target, "--login", login,
        ])?;
        println!("{}", indent(&out));
    }

    step(6, "Counters from the pinned maps (`portcullis stats`)");
    println!("{}", indent(&demo.cli(&["stats"])?));

    step(
        7,
        "Sealed session recording: only the operator's private key opens it",
    );
    show_recording(&demo.dir, &recorded, typed)?;

    step(8, "Audit trail (JSON lines)");
    d.stop();
    events.extend(d.stdout());
    for l in events {
        println!("   {l}");
    }
    println!(
        "\ncleaning up (portcullis down, namespaces removed); demo took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(_sshd);
    drop(_sshd6);
    drop(_sshd_lab);
    drop(demo);
    let left = Command::new("ip").args(["netns", "list"]).output()?;
    let left = String::from_utf8_lossy(&left.stdout);
    expect(!left.contains(&gw_name), "namespaces removed")?;
    Ok(())
}

fn show_ssh(label: &str, o: &std::process::Output) {
    println!("   $ {label}");
    for l in String::from_utf8_lossy(&o.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&o.stderr).lines())
    {
        if !l.starts_with("Warning: Permanently added") {
            println!("     {l}");
        }
    }
    println!(
        "     (exit status {})",
        o.status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into())
    );
}

/// The first line a server sends (an SSH banner).
/// `ssh` with `input` on its standard input.
fn ssh_input(
    ns: &Netns,
    kh: &std::path::Path,
    dest: &str,
    cmd: &str,
    input: &str,
) -> Result<std::process::Output> {
    use std::io::Write;
    let mut c = ns
        .command("ssh")
        .args(ssh_opts(kh))
        .args(["-o", "ConnectTimeout=3"])
        .arg(dest)
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    c.stdin.take().context("ssh stdin")?.write_all(input.as_bytes())?;
    Ok(c.wait_with_output()?)
}

/// The most recently written session log in `dir`.
fn newest_log(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let mut logs: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    logs.sort();
    logs.pop().map(|(_, p)| p).context("no session log was written")
}

/// Decrypts a log with `portcullis decrypt` (ssh-log-cli's ZIP) and exports it as asciicast,
/// showing what the gateway stored and what the key recovers.
fn show_recording(dir: &std::path::Path, log: &std::path::Path, typed: &str) -> Result<()> {
    let bin = std::fs::canonicalize(BIN)?;
    let key = dir.join("reckeys/sshkey");
    let raw = std::fs::read(log)?;
    println!(
        "   {} ({} bytes, 0600): a JSON header with the HPKE encapsulated key, then sealed blocks",
        log.display(),
        raw.len()
    );
    let zip = dir.join("session.zip");
    let cast = dir.join("session.cast");
    for (args, out) in [
        (["decrypt"].as_slice(), &zip),
        (["export", "asciicast"].as_slice(), &cast),
    ] {
        util::output(
            Command::new(&bin)
                .args(args)
                .arg("--key")
                .arg(&key)
                .arg("--input")
                .arg(log)
                .arg("--output")
                .arg(out),
        )?;
        println!(
            "   portcullis {} --key reckeys/sshkey --input … --output {}",
            args.join(" "),
            out.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    // The gateway signs each log's trailer (header + digest of every block): `verify` tells
    // intact from truncated or altered with the public key alone.
    let signer = dir.join("recording-signing.pub");
    std::fs::write(
        &signer,
        demo_cli(&bin, &dir.join("portcullis.toml"), &["recording", "pubkey"])?,
    )?;
    let verify = |input: &std::path::Path| -> Result<(i32, String)> {
        let out = Command::new(&bin)
            .args(["verify", "--signer"])
            .arg(&signer)
            .arg("--input")
            .arg(input)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.code().unwrap_or(-1), text.trim().to_string()))
    };
    let (code, text) = verify(log)?;
    println!("   portcullis verify --signer recording-signing.pub --input … → exit {code}: {text}");
    expect(code == 0, "the log is intact and signed by this gateway")?;
    let cut = dir.join("truncated.log");
    std::fs::write(&cut, &raw[..raw.len() - 8])?;
    let (code, text) = verify(&cut)?;
    println!("   the same log with its last bytes cut off → exit {code}: {text}");
    expect(code != 0, "a truncated log is reported")?;
    let cast_text = std::fs::read_to_string(&cast)?;
    println!("   the session as asciicast v2 (header, then [seconds, \"i\" typed / \"o\" printed, data]):");
    println!("{}", indent(cast_text.trim_end()));
    expect(
        cast_text.contains(typed) && cast_text.contains("target read"),
        "the recording holds what was typed and what was printed",
    )?;
    expect(
        !raw.windows(typed.len()).any(|w| w == typed.as_bytes()),
        "the stored log does not contain the plaintext",
    )?;
    Ok(())
}

/// `portcullis ARGS --config CONFIG`'s standard output.
fn demo_cli(bin: &std::path::Path, config: &std::path::Path, args: &[&str]) -> Result<String> {
    util::output(Command::new(bin).args(args).arg("--config").arg(config))
}

fn fetch_line(ns: &Netns, addr: SocketAddr) -> std::io::Result<String> {
    ns.run(move || {
        use std::io::BufRead;
        let s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    })
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("     {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
