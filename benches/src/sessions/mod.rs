//! The `sessions` group: scale and soak (issue 14).
//!
//! - `sessions.concurrent`: idle sessions held at once through a gateway in listener mode,
//!   recording off, in front of the lightweight target of [`target`] (a real sshd forks per
//!   connection and cannot hold that many). The harness of [`client`] ramps them up from
//!   many loopback sources ([`hold`]).
//! - `sessions.rss_kib_per_session`: the daemon's VmRSS growth over those sessions, per
//!   session; `sessions.threads`: its thread count then. The same with recording on, for
//!   fewer sessions: `sessions.rss_kib_per_session.recording_on`.
//! - `sessions.setup_per_s` and `.direct`: whole sessions per second (connect, log in,
//!   `exec true`, exit status, close) from the same harness through a gateway and straight
//!   to a real sshd ([`setup`]), recording off; `sessions.setup_cpu_ms.{gateway,sshd}`: CPU milliseconds
//!   per session of the gateway (proxied) and of the sshd (direct).
//!
//! Modules: [`pump`] moves bytes between a socket and an engine session; [`gateway`] the
//! concurrency figure's daemon; [`procfs`] what is read about processes.

mod client;
mod gateway;
mod hold;
mod procfs;
mod pump;
mod setup;
pub mod target;

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Result};
use serde_json::{Map, Value};
use tokio::runtime::Runtime;

use crate::median;

/// Sessions held for the figure; `--quick` holds fewer.
const CONCURRENT: usize = 10_000;
const CONCURRENT_QUICK: usize = 2_000;
/// Sessions held with recording on (each adds an open log and a writer task).
const RECORDED: usize = 2_000;
const RECORDED_QUICK: usize = 500;
/// Set-up rate: sessions in flight at once, more than enough to keep the sshd busy.
const WORKERS: usize = 16;

struct Sizes {
    concurrent: usize,
    recorded: usize,
    /// Set-up rate: seconds per measurement, and rounds of one direct and one proxied
    /// measurement each (the median of each is reported).
    secs: u64,
    rounds: usize,
}

pub fn run_group(quick: bool, portcullis: &Path) -> Result<Map<String, Value>> {
    let nofile = procfs::raise_nofile()?;
    eprintln!("sessions: descriptor limit {nofile} (the daemon's too)");
    let sizes = if quick {
        Sizes {
            concurrent: CONCURRENT_QUICK,
            recorded: RECORDED_QUICK,
            secs: 4,
            rounds: 1,
        }
    } else {
        Sizes {
            concurrent: CONCURRENT,
            recorded: RECORDED,
            secs: 8,
            rounds: 6,
        }
    };
    // Two threads, as many as the machine has cores: the daemon under test gets the same.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("portcullis-bench-sessions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&rt, portcullis, &dir, &sizes);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(rt: &Runtime, bin: &Path, dir: &Path, sizes: &Sizes) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    // The target's address goes into the gateways' configuration and the CA into the
    // target: the port is chosen first, the target started on it once the CA exists.
    let target_addr = SocketAddr::from(([127, 0, 0, 1], portcullis_testbed::free_port()));
    let ca = gateway::init(bin, dir, target_addr)?;
    let mut fixture = Fixture {
        bin,
        dir,
        target_addr,
        target: target::Target::start(target_addr, &ca)?,
    };
    let off = fixture.held(rt, "off", sizes.concurrent, false)?;
    m.insert("sessions.concurrent".into(), off.alive.into());
    m.insert("sessions.concurrent.attempted".into(), sizes.concurrent.into());
    m.insert(
        "sessions.rss_kib_per_session".into(),
        off.rss_kib_per_session().into(),
    );
    m.insert("sessions.threads".into(), off.threads.into());
    let on = fixture.held(rt, "rec", sizes.recorded, true)?;
    m.insert(
        "sessions.rss_kib_per_session.recording_on".into(),
        on.rss_kib_per_session().into(),
    );
    m.insert("sessions.concurrent.recording_on".into(), on.alive.into());
    drop(fixture);

    let bed = setup::Bed::start(bin)?;
    let (mut proxied, mut direct) = (Vec::new(), Vec::new());
    // Alternating which goes first, so that a load drifting on this shared machine weighs
    // on both alike.
    for round in 0..sizes.rounds {
        for proxy in [round % 2 == 1, round % 2 == 0] {
            let run = bed.run(rt, proxy, WORKERS, sizes.secs)?;
            if proxy { &mut proxied } else { &mut direct }.push(run);
        }
    }
    let med = |runs: &[setup::Run], f: fn(&setup::Run) -> f64| median(runs.iter().map(f).collect());
    m.insert("sessions.setup_per_s".into(), med(&proxied, |r| r.per_s).into());
    m.insert(
        "sessions.setup_per_s.direct".into(),
        med(&direct, |r| r.per_s).into(),
    );
    // Where a set-up's time goes: the sshd's work per session dwarfs the gateway's.
    m.insert(
        "sessions.setup_cpu_ms.gateway".into(),
        med(&proxied, |r| r.gateway_cpu_ms).into(),
    );
    m.insert(
        "sessions.setup_cpu_ms.sshd".into(),
        med(&direct, |r| r.sshd_cpu_ms).into(),
    );
    Ok(m)
}

/// What the daemon looked like holding sessions.
struct Holding {
    alive: usize,
    rss_before_kib: u64,
    rss_kib: u64,
    threads: u64,
}

impl Holding {
    fn rss_kib_per_session(&self) -> f64 {
        (self.rss_kib as f64 - self.rss_before_kib as f64) / self.alive.max(1) as f64
    }
}

/// What the concurrency figures share: the daemon binary, the directory with the account's
/// keys, and the lightweight target.
struct Fixture<'a> {
    bin: &'a Path,
    dir: &'a Path,
    target_addr: SocketAddr,
    target: target::Target,
}

impl Fixture<'_> {
    /// Starts a gateway `name`, ramps `n` sessions through it to the target, and reads the
    /// daemon; leaves no session behind.
    fn held(&mut self, rt: &Runtime, name: &str, n: usize, record: bool) -> Result<Holding> {
        let gw = gateway::Gateway::start(self.bin, self.dir, name, self.target_addr, record)?;
        std::thread::sleep(Duration::from_millis(500));
        let rss_before_kib = procfs::status(gw.pid(), "VmRSS")?;
        let t = std::time::Instant::now();
        let sessions = hold::ramp(rt, gw.addr, n);
        let ramp_s = t.elapsed().as_secs_f64();
        // Let the last set-ups' transient buffers go before reading.
        std::thread::sleep(Duration::from_secs(2));
        let rss_kib = procfs::status(gw.pid(), "VmRSS")?;
        let threads = procfs::status(gw.pid(), "Threads")?;
        let fds = procfs::open_fds(gw.pid());
        let limit = procfs::nofile(gw.pid()).unwrap_or_default();
        // Sessions the harness holds that the target also holds with a command running.
        let alive = sessions.alive().min(self.target.running()?);
        eprintln!(
            "sessions ({name}, recording {}): {alive} of {n} held (ramp {ramp_s:.1} s, {:.0}/s); \
             daemon VmRSS {rss_before_kib} → {rss_kib} KiB, {threads} threads, {fds} descriptors \
             (limit {limit})",
            if record { "on" } else { "off" },
            sessions.up as f64 / ramp_s,
        );
        for e in &sessions.errors {
            eprintln!("  {e}");
        }
        if alive == 0 {
            bail!(
                "no session held through the {name} gateway: {:?}",
                sessions.errors
            );
        }
        drop(sessions);
        drop(gw);
        // The target's connections end as the gateway goes; the next figure starts from none.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.target.running()? > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Holding {
            alive,
            rss_before_kib,
            rss_kib,
            threads,
        })
    }
}
