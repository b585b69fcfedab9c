//! End to end through the kernel: the client → gateway → target topology in network
//! namespaces, the real daemon with its eBPF dataplane, TCP flows from the clients.
//! Needs root; `cargo xtask test` runs it.

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Output,
};

use portcullis_testbed::{fetch, Daemon, Server, Topology};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A topology, a config for it, and cleanup of the instance's pins and state.
struct Bed {
    topo: Topology,
    dir: PathBuf,
    config: PathBuf,
    instance: String,
}

impl Bed {
    fn new() -> Option<Self> {
        if !support::privileged() {
            return None;
        }
        let topo = Topology::build();
        let instance = portcullis_testbed::unique("t");
        let dir = std::env::temp_dir().join(format!("portcullis-{instance}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("portcullis.toml");
        std::fs::write(&config, topo.config(&dir.join("state"), &instance)).unwrap();
        Some(Self {
            topo,
            dir,
            config,
            instance,
        })
    }

    fn daemon(&self) -> Daemon {
        let mut d = Daemon::start(&self.topo.gw, Path::new(BIN), &self.config);
        d.wait_ready().expect("daemon ready");
        d
    }

    fn cli(&self, args: &str) -> Output {
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides bpffs.
        self.topo
            .gw
            .command(BIN)
            .args(args.split_whitespace())
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run portcullis")
    }

    fn pins(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/portcullis").join(&self.instance)
    }

    fn gw_rules(&self) -> String {
        let o = self.topo.gw.exec("ip rule; ip -6 rule");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.cli("down");
        let _ = std::fs::remove_dir_all(self.pins());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn refused_by_proxy(out: &str, target: &str, dst: &str) {
    assert!(
        out.contains(&format!("portcullis: {target} {dst} refused")),
        "expected the proxy to answer for {target} {dst}, got {out:?}"
    );
}

#[test]
fn steers_protected_flows_and_forwards_the_rest() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let t1_22 = Server::start(&t.target, sa("198.18.10.10:22"), "t1:22");
    let _t1_80 = Server::start(&t.target, sa("198.18.10.10:80"), "t1:80");
    let t2_22 = Server::start(&t.target2, sa("198.18.10.10:22"), "t2:22");
    let _t2_80 = Server::start(&t.target2, sa("198.18.10.10:80"), "t2:80");
    let t1v6_22 = Server::start(&t.target, sa("[2001:db8:10::10]:22"), "t1v6:22");
    let _t1v6_80 = Server::start(&t.target, sa("[2001:db8:10::10]:80"), "t1v6:80");
    let d = bed.daemon();

    // vnet corp: the protected port lands on the proxy with its original destination.
    let out = fetch(&t.client, sa("198.18.10.10:22")).unwrap();
    refused_by_proxy(&out, "web-01", "198.18.10.10:22");
    let ev = d
        .wait_event(&["\"connect\"", "198.18.1.2"])
        .expect("connect event");
    assert!(
        ev.contains("\"vnet\":\"corp\"") && ev.contains("\"target\":\"web-01\""),
        "{ev}"
    );
    assert!(ev.contains("\"target_addr\":\"198.18.10.10:22\""), "{ev}");
    // Another port of the same target is forwarded untouched.
    assert_eq!(fetch(&t.client, sa("198.18.10.10:80")).unwrap(), "t1:80\n");

    // vnet lab: same address, told apart by the vnet.
    let out = fetch(&t.client2, sa("198.18.10.10:22")).unwrap();
    refused_by_proxy(&out, "lab-01", "198.18.10.10:22");
    let ev = d
        .wait_event(&["\"connect\"", "198.18.2.2"])
        .expect("connect event");
    assert!(
        ev.contains("\"vnet\":\"lab\"") && ev.contains("\"target\":\"lab-01\""),
        "{ev}"
    );
    assert_eq!(fetch(&t.client2, sa("198.18.10.10:80")).unwrap(), "t2:80\n");

    // IPv6.
    let out = fetch(&t.client, sa("[2001:db8:10::10]:22")).unwrap();
    refused_by_proxy(&out, "web-01", "[2001:db8:10::10]:22");
    assert!(d
        .wait_event(&["\"connect\"", "2001:db8:1::2", "\"vnet\":\"corp\""])
        .is_some());
    assert_eq!(fetch(&t.client, sa("[2001:db8:10::10]:80")).unwrap(), "t1v6:80\n");

    // The gateway's own connection to a protected port is not captured.
    assert_eq!(fetch(&t.gw, sa("198.18.10.10:22")).unwrap(), "t1:22\n");
    assert_eq!(
        t1_22.hits(),
        1,
        "only the gateway's own connection reached the target"
    );
    assert_eq!(t2_22.hits(), 0);
    assert_eq!(t1v6_22.hits(), 0);

    // Counters from the pinned maps.
    let stats = bed.cli("stats --json");
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(
        v["corp.web-01.198.18.10.10.steered"].as_u64().unwrap() >= 3,
        "{v}"
    );
    assert!(v["lab.lab-01.198.18.10.10.steered"].as_u64().unwrap() >= 3, "{v}");
    assert!(
        v["corp.web-01.198.18.10.10.other_port"].as_u64().unwrap() >= 3,
        "{v}"
    );
}

#[test]
fn fail_closed_when_killed_restarted_stopped_and_only_open_after_down() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let t1_22 = Server::start(&t.target, sa("198.18.10.10:22"), "t1:22");
    let _t1_80 = Server::start(&t.target, sa("198.18.10.10:80"), "t1:80");

    let mut d = bed.daemon();
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:22")).unwrap(),
        "web-01",
        "198.18.10.10:22",
    );

    // Killed: the protected port is refused, never forwarded; other ports still work.
    d.kill9();
    let r = fetch(&t.client, sa("198.18.10.10:22"));
    assert!(
        r.is_err() || r.as_ref().unwrap().is_empty(),
        "no bypass while dead: {r:?}"
    );
    assert_eq!(t1_22.hits(), 0);
    assert_eq!(fetch(&t.client, sa("198.18.10.10:80")).unwrap(), "t1:80\n");

    // Second line: even with the steering rule flushed, marked packets never leave towards
    // the target.
    t.gw.exec("ip rule del pref 90; ip -6 rule del pref 90");
    let r = fetch(&t.client, sa("198.18.10.10:22"));
    assert!(r.is_err(), "flushed rule must not open a bypass: {r:?}");
    assert_eq!(t1_22.hits(), 0);

    // Restart: takes over the pinned dataplane, restores the rule, serves again.
    let mut d = bed.daemon();
    assert!(bed.gw_rules().contains("0x80000000"), "{}", bed.gw_rules());
    // [[vnet]] table: the proxy's upstream connections of each vnet use its table.
    assert!(
        bed.gw_rules().contains("fwmark 0x40000002 lookup 102"),
        "{}",
        bed.gw_rules()
    );
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:22")).unwrap(),
        "web-01",
        "198.18.10.10:22",
    );

    // Clean stop: still closed.
    assert!(d.stop().success());
    let r = fetch(&t.client, sa("198.18.10.10:22"));
    assert!(
        r.is_err() || r.as_ref().unwrap().is_empty(),
        "no bypass after stop: {r:?}"
    );
    assert_eq!(t1_22.hits(), 0);

    // `down` removes everything; only then does the port answer directly.
    let o = bed.cli("down");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!bed.gw_rules().contains("0x80000000"), "{}", bed.gw_rules());
    assert!(
        !bed.gw_rules().contains("0x40000001"),
        "upstream rules removed: {}",
        bed.gw_rules()
    );
    assert!(!bed.pins().exists());
    assert_eq!(fetch(&t.client, sa("198.18.10.10:22")).unwrap(), "t1:22\n");
}

#[test]
fn second_daemon_and_bad_environments_are_refused_and_leave_only_the_guard() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let _t1_22 = Server::start(&t.target, sa("198.18.10.10:22"), "t1:22");
    let _t1_80 = Server::start(&t.target, sa("198.18.10.10:80"), "t1:80");
    let mut d = bed.daemon();

    let mut second = Daemon::start(&t.gw, Path::new(BIN), &bed.config);
    assert!(!second.wait_exit().success());
    let err = second.stderr().join("\n");
    assert!(err.contains("another portcullis daemon"), "{err}");
    assert!(err.contains(&d.pid().to_string()), "names the running pid: {err}");
    drop(second);
    d.stop();
    assert!(bed.cli("down").status.success());

    // An interface that does not exist: one clear line, nothing installed but the forward
    // guard, which keeps the protected ports closed (fail closed) until `down`.
    let text = std::fs::read_to_string(&bed.config)
        .unwrap()
        .replace("\"cl2\"", "\"nope0\"");
    std::fs::write(&bed.config, text).unwrap();
    let mut bad = Daemon::start(&t.gw, Path::new(BIN), &bed.config);
    assert!(!bad.wait_exit().success());
    let err = bad.stderr().join("\n");
    assert!(
        err.contains("interface \"nope0\" of vnet \"lab\" does not exist"),
        "{err}"
    );
    assert!(!bed.pins().exists(), "nothing pinned");
    assert!(!bed.gw_rules().contains("0x80000000"), "no rule installed");
    let closed = |what: &str| {
        let guard = String::from_utf8_lossy(&t.gw.exec("nft list ruleset").stdout).into_owned();
        assert!(guard.contains("portcullis_"), "{what}: no forward guard\n{guard}");
        let r = fetch(&t.client, sa("198.18.10.10:22"));
        assert!(r.is_err(), "{what}: a protected port reached the target: {r:?}");
        // Dropped by the guard, not for want of a path: the unprotected port answers.
        assert_eq!(
            fetch(&t.client, sa("198.18.10.10:80")).unwrap(),
            "t1:80\n",
            "{what}"
        );
    };
    closed("a missing interface");

    // No bpffs at the configured place.
    let text = std::fs::read_to_string(&bed.config)
        .unwrap()
        .replace("\"nope0\"", "\"cl2\"")
        .replace("[dataplane]\n", "[dataplane]\nbpffs = \"/tmp\"\n");
    std::fs::write(&bed.config, text).unwrap();
    let mut bad = Daemon::start(&t.gw, Path::new(BIN), &bed.config);
    assert!(!bad.wait_exit().success());
    let err = bad.stderr().join("\n");
    assert!(err.contains("no BPF filesystem is mounted at /tmp"), "{err}");
    assert!(!bed.gw_rules().contains("0x80000000"));
    closed("no BPF filesystem");
    // `down` opens them, BPF filesystem or not.
    let o = bed.cli("down");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fetch(&t.client, sa("198.18.10.10:22")).unwrap(), "t1:22\n");
}

#[test]
fn reload_applies_a_valid_config_and_rejects_an_invalid_one() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let _t1_80 = Server::start(&t.target, sa("198.18.10.10:80"), "t1:80");
    let d = bed.daemon();
    assert_eq!(fetch(&t.client, sa("198.18.10.10:80")).unwrap(), "t1:80\n");

    // Protect port 80 too; `portcullis reload` validates, then signals the daemon.
    let original = std::fs::read_to_string(&bed.config).unwrap();
    std::fs::write(
        &bed.config,
        original.replace(
            "hostname = \"web-01\", ports = [22]",
            "hostname = \"web-01\", ports = [22, 80]",
        ),
    )
    .unwrap();
    let o = bed.cli("reload");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(|| d.stderr().iter().any(|l| l.contains("configuration reloaded")));
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:80")).unwrap(),
        "web-01",
        "198.18.10.10:80",
    );

    // An invalid configuration is refused by `reload` itself, and by the daemon on SIGHUP;
    // the previous one keeps serving.
    std::fs::write(
        &bed.config,
        format!("{original}\n[[target]]\nhostname = \"-bad\"\nipv4 = \"198.18.10.11\"\n"),
    )
    .unwrap();
    let o = bed.cli("reload");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("target.hostname \"-bad\""));
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    wait_until(|| d.stderr().iter().any(|l| l.contains("reload rejected")));
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:80")).unwrap(),
        "web-01",
        "198.18.10.10:80",
    );
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Issue 11 #1: a re-created ingress interface was left without XDP/TC and its protected
/// ports were forwarded to the target's own sshd; SIGHUP and restarts then failed on the
/// severed links.
#[test]
fn recreated_ingress_interface_is_followed_and_never_bypasses() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let t1_22 = Server::start(&t.target, sa("198.18.10.10:22"), "t1:22");
    let _t1_80 = Server::start(&t.target, sa("198.18.10.10:80"), "t1:80");
    let mut d = bed.daemon();
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:22")).unwrap(),
        "web-01",
        "198.18.10.10:22",
    );

    // Re-created while the daemon runs: the link monitor re-attaches.
    t.recreate_client_link();
    wait_until(|| {
        fetch(&t.client, sa("198.18.10.10:22"))
            .map(|o| o.contains("portcullis: web-01 198.18.10.10:22 refused"))
            .unwrap_or(false)
    });
    assert_eq!(t1_22.hits(), 0, "a protected flow reached the target");
    assert_eq!(fetch(&t.client, sa("198.18.10.10:80")).unwrap(), "t1:80\n");
    assert!(
        d.stderr().iter().any(|l| l.contains("dataplane re-attached")),
        "{:?}",
        d.stderr()
    );

    // The guard flushed by someone else (`systemctl restart nftables`): put back.
    assert!(t.gw.exec("nft flush ruleset").status.success());
    wait_until(|| {
        let guard = t.gw.exec("nft list ruleset");
        String::from_utf8_lossy(&guard.stdout).contains("iifname \"cl1\"")
    });
    wait_until(|| d.stderr().iter().any(|l| l.contains("forward guard was gone")));

    // Second line: the daemon frozen (no re-attach possible), the interface re-created.
    // The forward guard matches the interface by name: the protected port stays closed.
    unsafe { libc::kill(d.pid() as i32, libc::SIGSTOP) };
    t.recreate_client_link();
    let r = fetch(&t.client, sa("198.18.10.10:22"));
    assert!(r.is_err(), "forwarded to the target while unattached: {r:?}");
    assert_eq!(t1_22.hits(), 0);
    assert_eq!(fetch(&t.client, sa("198.18.10.10:80")).unwrap(), "t1:80\n");
    let guard = t.gw.exec("nft list ruleset");
    let guard = String::from_utf8_lossy(&guard.stdout);
    assert!(guard.contains("iifname \"cl1\""), "{guard}");
    unsafe { libc::kill(d.pid() as i32, libc::SIGCONT) };
    wait_until(|| {
        fetch(&t.client, sa("198.18.10.10:22"))
            .map(|o| o.contains("refused"))
            .unwrap_or(false)
    });

    // A reload and a restart after churn work (they failed on severed links before).
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    d.wait_event(&[]).ok_or(()).ok();
    wait_until(|| d.stderr().iter().any(|l| l.contains("configuration reloaded")));
    assert!(
        !d.stderr().iter().any(|l| l.contains("reload failed")),
        "{:?}",
        d.stderr()
    );
    d.kill9();
    // Dead daemon, interface re-created: the guard still holds.
    t.recreate_client_link();
    assert!(fetch(&t.client, sa("198.18.10.10:22")).is_err());
    let _d = bed.daemon();
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:22")).unwrap(),
        "web-01",
        "198.18.10.10:22",
    );
    assert_eq!(t1_22.hits(), 0);

    // `down` removes the guard with the rest: the port is the target's again.
    drop(_d);
    let out = bed.cli("down");
    assert!(out.status.success(), "{out:?}");
    let guard = t.gw.exec("nft list ruleset");
    assert!(!String::from_utf8_lossy(&guard.stdout).contains("portcullis_"));
    assert_eq!(fetch(&t.client, sa("198.18.10.10:22")).unwrap(), "t1:22\n");
}

/// A TCP connection from the gateway's namespace carrying `mark` (as the proxy's upstream
/// connections do): what the target answered, or the error.
fn fetch_marked(ns: &portcullis_testbed::Netns, addr: SocketAddr, mark: u32) -> std::io::Result<String> {
    use std::{io::Read, os::fd::FromRawFd};
    ns.run(move || {
        let SocketAddr::V4(a) = addr else {
            unreachable!("IPv4 only")
        };
        // SAFETY: plain socket calls on a descriptor this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut s = std::net::TcpStream::from_raw_fd(fd);
            let m = mark as libc::c_int;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_MARK,
                &m as *const _ as *const libc::c_void,
                4,
            );
            let tv = libc::timeval {
                tv_sec: 3,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            if libc::connect(
                fd,
                &sin as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        }
    })
}

/// Issue 11 #2: the egress guard checks that an upstream packet's vnet is the vnet of the
/// interface it leaves through, so a misrouted vnet cannot log in on another vnet's host.
#[test]
fn upstream_packets_of_one_vnet_never_leave_through_another() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let _t1 = Server::start(&t.target, sa("198.18.10.10:80"), "t1:80");
    let _t2 = Server::start(&t.target2, sa("198.18.10.10:80"), "t2:80");
    let _d = bed.daemon();
    let corp = 0x4000_0001;
    let lab = 0x4000_0002;
    assert_eq!(
        fetch_marked(&t.gw, sa("198.18.10.10:80"), corp).unwrap(),
        "t1:80\n"
    );
    assert_eq!(
        fetch_marked(&t.gw, sa("198.18.10.10:80"), lab).unwrap(),
        "t2:80\n"
    );
    // An operator mistake: lab's table now leads to corp's network.
    t.gw.exec("ip route replace 198.18.10.10/32 via 198.18.101.2 table 102");
    let r = fetch_marked(&t.gw, sa("198.18.10.10:80"), lab);
    assert!(r.is_err(), "lab's upstream reached corp's host: {r:?}");
    assert_eq!(
        fetch_marked(&t.gw, sa("198.18.10.10:80"), corp).unwrap(),
        "t1:80\n"
    );
}

/// A reload the dataplane cannot apply whole (`xdp_mode = "native"` and a new ingress
/// interface whose driver has no native XDP, a bridge) is refused, and what it had put in place
/// already is taken back: the new file no longer protects port 22, but the previous
/// configuration, which keeps serving, does, so port 22 must still be steered (it was
/// forwarded to the target's own sshd while the proxy went on judging by the old file).
#[test]
fn a_reload_the_dataplane_cannot_apply_leaves_the_previous_one_whole() {
    let Some(bed) = Bed::new() else { return };
    let t = &bed.topo;
    let t1_22 = Server::start(&t.target, sa("198.18.10.10:22"), "t1:22");
    let original = std::fs::read_to_string(&bed.config).unwrap();
    let native = original.replacen("[dataplane]\n", "[dataplane]\nxdp_mode = \"native\"\n", 1);
    assert_ne!(native, original);
    std::fs::write(&bed.config, &native).unwrap();
    let d = bed.daemon();
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:22")).unwrap(),
        "web-01",
        "198.18.10.10:22",
    );

    let o = t.gw.exec("ip link add pcbr0 type bridge && ip link set pcbr0 up");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let changed = native.replace(
        "hostname = \"web-01\", ports = [22]",
        "hostname = \"web-01\", ports = [2222]",
    ) + "\n[[vnet]]\nname = \"extra\"\nid = 3\ningress = [\"pcbr0\"]\n";
    std::fs::write(&bed.config, &changed).unwrap();
    let o = bed.cli("reload");
    assert!(!o.status.success(), "the reload was taken");
    wait_until(|| {
        d.stderr()
            .iter()
            .any(|l| l.contains("reload failed while updating the dataplane"))
    });
    refused_by_proxy(
        &fetch(&t.client, sa("198.18.10.10:22")).unwrap(),
        "web-01",
        "198.18.10.10:22",
    );
    assert_eq!(t1_22.hits(), 0, "a protected flow reached the target");
}
