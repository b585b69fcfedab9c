//! `cargo xtask demo`: the topology of DESIGN §8 with the real daemon and its eBPF dataplane;
//! flows from two clients in two vnets, the gateway's own traffic, a killed daemon, the
//! counters and the audit trail. Everything is removed at the end, also on failure.

use std::{net::SocketAddr, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use portcullis_testbed::{fetch, Daemon, Server, Topology};

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
    println!("\x1b[1mportcullis demo\x1b[0m: client → gateway (XDP/TC/sk_lookup steering) → target, two vnets sharing 198.18.10.10");
    let topo = Topology::build();
    let dir = std::env::temp_dir().join(portcullis_testbed::unique("portcullis-demo-"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("portcullis.toml");
    let instance = portcullis_testbed::unique("demo");
    std::fs::write(&config, topo.config(&dir.join("state"), &instance))?;
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

    let sshd = Server::start(
        &t.target,
        sa("198.18.10.10:22"),
        "web-01 port 22 answered DIRECTLY",
    );
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

    step(
        1,
        "Protected port: steered to the proxy with its original destination and vnet",
    );
    let out = show(
        "client (corp)  → 198.18.10.10:22",
        fetch(&t.client, sa("198.18.10.10:22")),
    );
    expect(
        out.contains("web-01 198.18.10.10:22"),
        "corp flow reaches the proxy",
    )?;
    let out = show(
        "client2 (lab)  → 198.18.10.10:22",
        fetch(&t.client2, sa("198.18.10.10:22")),
    );
    expect(
        out.contains("lab-01 198.18.10.10:22"),
        "lab flow reaches the proxy as lab-01",
    )?;
    let out = show(
        "client (corp)  → [2001:db8:10::10]:22",
        fetch(&t.client, sa("[2001:db8:10::10]:22")),
    );
    expect(
        out.contains("web-01 [2001:db8:10::10]:22"),
        "IPv6 flow reaches the proxy",
    )?;
    println!(
        "   (alice passes the identity and policy pre-check; bob has no policy for lab-01. The SSH proxy"
    );
    println!("    that will serve allowed flows is the next milestone: until then they are refused, never forwarded)");

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
    show(
        "gateway        → 198.18.10.10:22",
        fetch(&t.gw, sa("198.18.10.10:22")),
    );

    step(4, "Fail closed: daemon killed with SIGKILL");
    let mut events = d.stdout();
    d.kill9();
    show(
        "client (corp)  → 198.18.10.10:22",
        fetch(&t.client, sa("198.18.10.10:22")),
    );
    expect(
        sshd.hits() == 1,
        "only the gateway itself reached the target's port 22",
    )?;
    let mut d = Daemon::start(&t.gw, &bin, &demo.config);
    d.wait_ready().map_err(anyhow::Error::msg)?;
    println!(
        "   restarted (pid {}): it takes over the pinned programs and maps",
        d.pid()
    );
    show(
        "client (corp)  → 198.18.10.10:22",
        fetch(&t.client, sa("198.18.10.10:22")),
    );

    step(
        5,
        "Policy: who may log in where, and why (`portcullis policy explain`)",
    );
    for (src, vnet, login) in [
        ("198.18.1.2", "corp", "root"),
        ("198.18.1.2", "corp", "alice"),
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

    step(7, "Audit trail (JSON lines on the daemon's stdout)");
    d.stop();
    events.extend(d.stdout());
    for l in events {
        println!("   {l}");
    }
    println!(
        "\ncleaning up (portcullis down, namespaces removed); demo took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(demo);
    let left = Command::new("ip").args(["netns", "list"]).output()?;
    let left = String::from_utf8_lossy(&left.stdout);
    expect(!left.contains(&gw_name), "namespaces removed")?;
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("     {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
