//! The sustained session set-up rate against a real sshd, through the gateway and direct,
//! with the same harness: `workers` tasks each run sessions back to back (connect, log in,
//! `exec true`, exit status, close) for a while. The testbed's loopback gateway provides
//! both: a `portcullis run` in listener mode in front of a real sshd that trusts its CA.
//! The sshd also gets an authorized key for the direct path, `MaxStartups` raised, and
//! curve25519-sha256 as its only key exchange, so that every hop of both paths runs the
//! same one (as in the ssh group).

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use portcullis_testbed::{Gateway, GatewayOptions};
use ssh_key::{private::Ed25519Keypair, PrivateKey};
use tokio::runtime::Runtime;

use super::{
    client::{Client, Login},
    gateway::SETUP_SLOTS,
};
use crate::cpu_secs;

/// How long one session may take.
const SESSION: Duration = Duration::from_secs(30);

pub struct Bed {
    gw: Gateway,
    key: PrivateKey,
}

impl Bed {
    pub fn start(bin: &Path) -> Result<Self> {
        let opts = GatewayOptions {
            extra: format!(
                "[limits]\nunauthenticated = {n}\nunauthenticated_per_source = {n}\n\
                 upstream_dials_per_identity = {n}\nupstream_dials_per_target = {n}\n",
                n = SETUP_SLOTS
            ),
            sshd_extra: vec![
                format!("MaxStartups {SETUP_SLOTS}"),
                "AuthorizedKeysFile {dir}/authorized_keys".into(),
                "KexAlgorithms curve25519-sha256".into(),
            ],
            ..Default::default()
        };
        let gw = Gateway::start(bin, &opts);
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        std::fs::write(gw.path("authorized_keys"), key.public_key().to_openssh()? + "\n")?;
        Ok(Bed { gw, key })
    }

    /// Sessions through the gateway (`proxied`) or straight to the sshd for `secs`.
    pub fn run(&self, rt: &Runtime, proxied: bool, workers: usize, secs: u64) -> Result<Run> {
        let gateway = self.gw.daemon_pid().unwrap_or_default();
        let sshd = self.gw.sshd.pid();
        let (g0, s0) = (cpu_secs(gateway, false), cpu_secs(sshd, true));
        let (sessions, secs) = self.sessions(rt, proxied, workers, secs)?;
        // The last sessions' sshd processes are reaped (and counted) once they are gone.
        std::thread::sleep(Duration::from_millis(300));
        let run = Run {
            per_s: sessions as f64 / secs,
            gateway_cpu_ms: (cpu_secs(gateway, false) - g0) * 1000.0 / sessions as f64,
            sshd_cpu_ms: (cpu_secs(sshd, true) - s0) * 1000.0 / sessions as f64,
        };
        eprintln!(
            "sessions: {} {:.1}/s; CPU per session: gateway {:.1} ms, sshd {:.1} ms",
            if proxied { "proxied" } else { "direct" },
            run.per_s,
            run.gateway_cpu_ms,
            run.sshd_cpu_ms
        );
        Ok(run)
    }

    /// Sessions completed, and the seconds they took.
    fn sessions(&self, rt: &Runtime, proxied: bool, workers: usize, secs: u64) -> Result<(u64, f64)> {
        let (addr, login) = if proxied {
            (
                SocketAddr::from(([127, 0, 0, 1], self.gw.proxy_port)),
                Login::None,
            )
        } else {
            (self.gw.target, Login::Key(Box::new(self.key.clone())))
        };
        let end = Instant::now() + Duration::from_secs(secs);
        let t0 = Instant::now();
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..workers)
                .map(|_| {
                    let login = login.clone();
                    tokio::spawn(async move {
                        let (mut done, mut failed, mut first_error) = (0u64, 0u64, None);
                        while Instant::now() < end {
                            match tokio::time::timeout(SESSION, once(addr, &login)).await {
                                Ok(Ok(())) => done += 1,
                                Ok(Err(e)) => {
                                    failed += 1;
                                    first_error.get_or_insert(format!("{e:#}"));
                                }
                                Err(_) => {
                                    failed += 1;
                                    first_error.get_or_insert("no exit status within 30 s".into());
                                }
                            }
                        }
                        (done, failed, first_error)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await);
            }
            all
        });
        let secs = t0.elapsed().as_secs_f64();
        let (mut done, mut failed, mut error) = (0, 0, None);
        for r in results {
            let (d, f, e) = r?;
            done += d;
            failed += f;
            error = error.or(e);
        }
        let path = if proxied { "proxied" } else { "direct" };
        if failed > 0 {
            eprintln!(
                "sessions: {failed} of {} {path} set-ups failed, e.g.: {}",
                done + failed,
                error.as_deref().unwrap_or_default()
            );
        }
        if done == 0 {
            bail!(
                "no {path} session completed: {}; sshd: {}",
                error.unwrap_or_default(),
                self.gw
                    .sshd
                    .log()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        Ok((done, secs))
    }
}

/// One measurement: sessions per second, and CPU per session of the gateway and the sshd.
pub struct Run {
    pub per_s: f64,
    pub gateway_cpu_ms: f64,
    pub sshd_cpu_ms: f64,
}

/// One whole session; fails unless `true` exited 0.
async fn once(addr: SocketAddr, login: &Login) -> Result<()> {
    let status = Client::start(addr, None, login, "true").await?.finish().await?;
    if status != 0 {
        bail!("exit status {status}");
    }
    Ok(())
}
