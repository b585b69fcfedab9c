//! The daemon: installs the dataplane for the configuration, serves the steered connections,
//! reloads on SIGHUP and exits on SIGTERM/SIGINT leaving the dataplane in place.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    admission::{Admission, Limits},
    audit::Audit,
    config,
    dataplane::{Dataplane, DataplaneError},
    proxy::{self, Context, Incoming},
    service,
    snapshot::Snapshot,
    steer,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("listener {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("the control socket: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("{path}: the account secret holds {len} bytes; at least {min} random bytes are needed, as anyone could derive the gateway's host keys from a shorter one (move it away and run `portcullis ca init`)", min = crate::hostkey::MIN_SECRET_BYTES)]
    ShortSecret { path: PathBuf, len: usize },
    #[error("[ca] source_address: {0}")]
    SourceAddress(#[from] crate::cert::SourceAddressError),
}

/// The key that signs each recording's trailer; without one, logs are closed unsigned and
/// `portcullis verify` reports them so (said once, here).
fn recording_signer(
    a: &config::Account,
) -> Result<Option<Arc<crate::recording::signing::SigningKey>>, DaemonError> {
    let Some(p) = &a.recording_signing_key else {
        tracing::warn!(
            "no [account] recording_signing_key: recordings are unsigned, so edits to them cannot be detected"
        );
        return Ok(None);
    };
    let key = crate::recording::signing::load(p).map_err(|e| DaemonError::Io {
        what: "load the recording signing key",
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(Some(Arc::new(key)))
}

/// The proxy's shared context, when the account's keys are configured.
fn context(l: &config::Loaded, audit: &Arc<Audit>) -> Result<Option<Arc<Context>>, DaemonError> {
    let Some(a) = &l.account else {
        tracing::warn!(
            "no [account]: connections are identified and audited, then refused (no CA to log in with)"
        );
        return Ok(None);
    };
    let secret = std::fs::read(&a.secret).map_err(|source| DaemonError::Io {
        what: "read the account secret",
        source,
    })?;
    // Checked when the configuration loaded; again here, on the bytes actually read.
    if secret.len() < crate::hostkey::MIN_SECRET_BYTES {
        return Err(DaemonError::ShortSecret {
            path: a.secret.clone(),
            len: secret.len(),
        });
    }
    let ca = crate::ca::load_ca(&a.ca_key)?;
    let list: Vec<&str> = l
        .config
        .ca
        .source_address
        .iter()
        .map(|a| a.get_ref().as_str())
        .collect();
    let source_address = Some(crate::cert::source_address(&list)?).filter(|v| !v.is_empty());
    let recording = match &a.recording_public_key {
        Some(p) => Some(proxy::RecordingSetup {
            key: crate::recording::keys::load_public(p).map_err(|e| DaemonError::Io {
                what: "load the recording public key",
                source: std::io::Error::other(e.to_string()),
            })?,
            signer: recording_signer(a)?,
            dir: l.config.recording.dir.clone(),
            fail_closed: l.config.recording.on_failure == crate::config::schema::RecordingFailure::FailClosed,
        }),
        None => {
            tracing::warn!("no [account] recording_public_key: sessions are not recorded");
            None
        }
    };
    Ok(Some(Arc::new(Context::new(
        secret,
        ca,
        l.config.ca.clone(),
        source_address,
        audit.clone(),
        recording,
        Some(
            l.config
                .dataplane
                .data_dir
                .join(&l.config.dataplane.instance)
                .join("target-keys"),
        ),
    ))))
}

pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let loaded = config::load(config_path)?;
    for w in &loaded.warnings {
        tracing::warn!("{}: {w}", config_path.display());
    }
    let nofile = descriptor_limit();
    let admission = Admission::new(limits(&loaded.config.limits, nofile));
    let audit = Arc::new(
        Audit::open(&loaded.config.audit).map_err(|source| DaemonError::Io {
            what: "open the audit trail",
            source,
        })?,
    );
    let ctx = context(&loaded, &audit)?;
    // The metrics endpoint comes up first, so that /readyz says "not ready" while the
    // dataplane is being installed.
    let metrics_listener = match loaded.config.metrics.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Listen { addr, source })?,
        ),
        None => None,
    };
    // Plain listeners ([[listener]]): the same pipeline without steering.
    let (tx, mut plain) = tokio::sync::mpsc::channel::<Incoming>(64);
    for l in &loaded.listeners {
        let sock = tokio::net::TcpListener::bind(l.listen)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: l.listen,
                source,
            })?;
        let (tx, target_addr, vnet) = (tx.clone(), l.addr, l.vnet);
        let admission = admission.clone();
        tracing::info!(listen = %l.listen, target = %l.target, "listener up");
        tokio::spawn(async move {
            loop {
                match sock.accept().await {
                    Ok((stream, peer)) => {
                        let peer = steer::canonical(peer);
                        let Some(permit) = admit(&admission, &stream, peer) else {
                            continue;
                        };
                        if tx
                            .send(Incoming {
                                stream,
                                peer,
                                target_addr,
                                vnet: Some(vnet),
                                permit,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(tx);
    // eBPF steering only when some vnet has an ingress (hosts without eBPF run listeners).
    let steering = loaded.targets.vnets.iter().any(|v| !v.ingress.is_empty());
    let mut dp = if steering {
        Some(Dataplane::up(&loaded.config.dataplane, &loaded.targets).await?)
    } else {
        None
    };
    let listeners = steer::Listeners::bind().await.map_err(|source| DaemonError::Io {
        what: "bind the proxy listeners",
        source,
    })?;
    if let Some(dp) = dp.as_mut() {
        dp.register_listeners(&listeners.v4, listeners.v6.as_ref())?;
    }
    // Before saying "serving": from then on a SIGTERM or SIGHUP must not kill the daemon.
    let sig = |k| {
        signal(k).map_err(|source| DaemonError::Io {
            what: "install signal handler",
            source,
        })
    };
    let (mut hup, mut term, mut int) = (
        sig(SignalKind::hangup())?,
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
    );
    tracing::info!(
        instance = %loaded.config.dataplane.instance,
        targets = loaded.targets.addrs.len(),
        identities = loaded.identities.len(),
        policies = loaded.policies.len(),
        steering,
        pins = %dp.as_ref().map(|d| d.paths().root.display().to_string()).unwrap_or_default(),
        "dataplane up; serving steered connections"
    );
    let status = serving(&loaded);
    let control = crate::control::bind(&loaded.config.dataplane)?;
    let dataplane_cfg = steering.then(|| loaded.config.dataplane.clone());
    let state = Arc::new(ArcSwap::from_pointee(Snapshot::new(loaded)));
    let endpoint = Arc::new(crate::metrics::http::Endpoint {
        ready: std::sync::atomic::AtomicBool::new(false),
        daemon: {
            let mut r = prometheus_client::registry::Registry::default();
            r.register_collector(Box::new(crate::metrics::scrape::Gauges {
                admission: admission.clone(),
                snapshot: state.clone(),
                dataplane: dataplane_cfg,
            }));
            r
        },
    });
    if let Some(l) = metrics_listener {
        tracing::info!(listen = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics endpoint up");
        tokio::spawn(crate::metrics::http::serve(l, endpoint.clone()));
    }
    // Reloads run beside the accept loop: parsing a large configuration and syncing the maps
    // take a second or more, and connections keep being served meanwhile. One pending
    // request is enough — a reload always reads the file as it is then.
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<crate::control::ReloadRequest>(1);
    // Interface churn: the same task owns the dataplane, so a re-attach never races a reload.
    let mut links = match dp.is_some() {
        true => Some(crate::dataplane::monitor::spawn()?),
        false => None,
    };
    let reloader = {
        let (state, path): (_, PathBuf) = (state.clone(), config_path.to_owned());
        let (admission, audit) = (admission.clone(), audit.clone());
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(crate::dataplane::RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = reload_rx.recv() => match r {
                        Some(crate::control::ReloadRequest { by, answer }) => {
                            service::reloading();
                            let outcome = reload(&path, dp.as_mut(), &state, &admission).await;
                            service::reloaded(match &outcome {
                                Ok((_, status)) => status,
                                Err(e) => e,
                            });
                            audit_reload(&audit, &by, &outcome);
                            if let Some(answer) = answer {
                                let _ = answer.send(outcome.map(|(generation, _)| generation));
                            }
                        }
                        None => break,
                    },
                    Some(ev) = recv_opt(links.as_mut()) => {
                        if let Some(dp) = dp.as_mut() {
                            follow_links(ev, links.as_mut(), dp, &state).await;
                        }
                    }
                    _ = recheck.tick(), if dp.is_some() => {
                        if let Some(dp) = dp.as_mut() {
                            match dp.recheck(&state.load().targets).await {
                                Ok(false) => {}
                                Ok(true) => tracing::warn!("the forward guard was gone (nftables flushed?); put back"),
                                Err(e) => tracing::error!(error = %e, "checking the dataplane failed; the forward guard and the links stay as they are"),
                            }
                        }
                    }
                }
            }
            dp
        })
    };
    tokio::spawn(crate::control::serve(
        control,
        reload_tx.downgrade(),
        audit.clone(),
    ));
    endpoint.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    // Repeated refusals are audited together once per interval (`admission`).
    let period = admission.limits().audit_interval;
    // The first tick one period on (`interval` would tick at once and open a new interval).
    let mut floods = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    floods.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only now: the dataplane steers into registered listeners, the plain listeners are bound,
    // and SIGHUP is handled (before, `systemctl reload` right after start would kill us).
    service::ready(&status);
    loop {
        let accepted = tokio::select! {
            r = listeners.v4.accept() => r,
            r = accept_opt(listeners.v6.as_ref()) => r,
            Some(inc) = plain.recv() => {
                tokio::spawn(proxy::serve(inc, state.clone(), ctx.clone()));
                continue;
            }
            _ = floods.tick() => {
                audit_floods(&admission, &audit);
                continue;
            }
            _ = hup.recv() => {
                if let Err(e) = audit.reopen() {
                    tracing::error!(error = %e, "reopening the audit file failed; still writing to the old one");
                }
                let asked = crate::control::ReloadRequest {
                    by: "SIGHUP".into(),
                    answer: None,
                };
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = reload_tx.try_send(asked) {
                    tracing::error!("the reloader has stopped; restart the daemon to apply configuration changes");
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Capped before anything else is spent on the connection (`admission`).
                let Some(permit) = admit(&admission, &stream, steer::canonical(peer)) else {
                    continue;
                };
                match steer::inspect(stream, peer) {
                    Ok(conn) => {
                        let inc = Incoming {
                            stream: conn.stream,
                            peer: conn.peer,
                            target_addr: conn.original_dst,
                            vnet: conn.vnet,
                            permit,
                        };
                        tokio::spawn(proxy::serve(inc, state.clone(), ctx.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "inspecting an accepted connection failed"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    endpoint.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    service::stopping();
    // Refusals counted since the last aggregate are not lost with the daemon.
    audit_floods(&admission, &audit);
    // Open recordings are closed — trailer written and signed — before the runtime drops
    // their tasks, which would leave them looking like a crash's.
    let open = crate::recording::writer::close_all(std::time::Duration::from_secs(10)).await;
    if open > 0 {
        tracing::warn!(
            open,
            "recordings still open after 10 s are left without a trailer"
        );
    }
    // A reload in progress finishes before the daemon exits.
    drop(reload_tx);
    if tokio::time::timeout(std::time::Duration::from_secs(30), reloader)
        .await
        .is_err()
    {
        tracing::warn!("a reload still running after 30 s was abandoned");
    }
    tracing::info!("stopping; the dataplane stays installed and refuses protected flows until the next start (`portcullis down` removes it)");
    Ok(())
}

/// Raises the soft descriptor limit to the hard one (logged) and returns the limit in force.
fn descriptor_limit() -> u64 {
    match crate::admission::raise_nofile() {
        Ok((before, now, hard)) => {
            if before != now {
                tracing::info!(
                    soft_before = before,
                    soft = now,
                    hard,
                    "descriptor limit raised to the hard limit"
                );
            }
            now
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the descriptor limit; assuming 1024");
            1024
        }
    }
}

/// `[limits]` as they apply under the descriptor limit `nofile`, logged.
fn limits(cfg: &config::schema::LimitsConfig, nofile: u64) -> Limits {
    let l = Limits::resolve(cfg, nofile);
    tracing::info!(
        unauthenticated = l.unauthenticated,
        per_source = l.per_source,
        nofile,
        "connections awaiting authentication are capped"
    );
    // Two descriptors each (client, target), and room for the sessions they become.
    if l.descriptors() + 64 > nofile {
        tracing::warn!(
            unauthenticated = l.unauthenticated,
            nofile,
            "[limits] unauthenticated may need more descriptors than the limit allows: raise LimitNOFILE or lower the cap"
        );
    }
    l
}

/// A connection from `peer` over a `[limits]` cap is closed here and now, with one
/// non-blocking write saying why; counted for the next `refused.flood` event.
fn admit(
    admission: &Admission,
    stream: &tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<crate::admission::Permit> {
    match admission.try_admit(peer.ip()) {
        Ok(p) => Some(p),
        Err(r) => {
            let text = match r {
                crate::admission::Refused::PerSource => format!(
                    "portcullis: too many connections from {} are awaiting authentication; try again later",
                    peer.ip()
                ),
                crate::admission::Refused::Global => {
                    "portcullis: too many connections are awaiting authentication; try again later"
                        .to_string()
                }
            };
            proxy::refusal::refuse_at_once(stream, &text);
            None
        }
    }
}

/// Writes one `refused.flood` event per (source, reason) refused more often than audited
/// one by one since the last call.
fn audit_floods(admission: &Admission, audit: &Audit) {
    let floods = admission.take_floods();
    if floods.is_empty() {
        return;
    }
    let interval = admission.limits().audit_interval.as_secs();
    let total = admission.refused_total();
    for f in floods {
        let mut e = crate::audit::Event::new("refused.flood", &crate::audit::session_id());
        // Many connections, so no port: the source's address with port 0.
        e.source = f.source.map(|ip| std::net::SocketAddr::new(ip, 0));
        e.decision = Some("deny");
        e.reason = Some(f.reason.to_string());
        e.count = Some(f.count);
        e.rule = Some(match f.source {
            Some(ip) => format!(
                "{} connections from {ip} refused ({}) within {interval} s beyond those audited one by one",
                f.count, f.reason
            ),
            None => format!(
                "{} connections from sources beyond the {} tracked refused ({}) within {interval} s",
                f.count,
                crate::admission::MAX_TALLIES,
                f.reason
            ),
        });
        audit.emit(&e);
        tracing::warn!(source = ?f.source, reason = f.reason, count = f.count, total, "connections refused");
    }
}

async fn recv_opt<T>(rx: Option<&mut tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Re-attaches the dataplane to interfaces that were re-created (or appeared, or went),
/// once per burst of link events.
async fn follow_links(
    first: crate::dataplane::monitor::LinkEvent,
    links: Option<&mut tokio::sync::mpsc::Receiver<crate::dataplane::monitor::LinkEvent>>,
    dp: &mut Dataplane,
    state: &ArcSwap<Snapshot>,
) {
    let snap = state.load_full();
    let mut relevant = first.concerns(&snap.targets).then_some(first);
    if let Some(rx) = links {
        while let Ok(ev) = rx.try_recv() {
            if relevant.is_none() && ev.concerns(&snap.targets) {
                relevant = Some(ev);
            }
        }
    }
    let Some(ev) = relevant else { return };
    match dp.refresh_interfaces(&snap.targets).await {
        Ok(()) => {
            tracing::info!(interface = ?ev.name, removed = ev.removed, "interfaces changed; dataplane re-attached")
        }
        Err(e) => {
            tracing::error!(error = %e, interface = ?ev.name, "re-attaching after an interface change failed; the forward guard keeps its protected ports closed")
        }
    }
}

async fn accept_opt(
    l: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Parses and validates the whole configuration first; only then updates the dataplane and
/// swaps the snapshot. Anything invalid is rejected and the old configuration keeps serving;
/// connections in flight keep the snapshot they started with. Returns the new configuration
/// generation and the status to show (`systemctl status`), or why the file was refused.
async fn reload(
    path: &Path,
    dp: Option<&mut Dataplane>,
    state: &ArcSwap<Snapshot>,
    admission: &Admission,
) -> Result<(i64, String), String> {
    let p = path.to_owned();
    let outcome = match tokio::task::spawn_blocking(move || config::load(&p)).await {
        Err(e) => Err(format!("reload failed: {e}")),
        Ok(Err(e)) => Err(format!("reload rejected: {e}")),
        Ok(Ok(new)) => {
            let applied = match dp {
                Some(dp) => match dp.apply(&new.targets).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // Part of the new set may be in place already (the forward guard and
                        // the maps go first): the previous one is put back, so that what the
                        // dataplane protects and steers is again what the proxy serves.
                        let old = state.load();
                        if let Err(back) = dp.apply(&old.targets).await {
                            tracing::error!(error = %back, "restoring the previous configuration in the dataplane failed");
                        }
                        Err(e)
                    }
                },
                None => Ok(()),
            };
            match applied {
                Ok(()) => {
                    tracing::info!(
                        targets = new.targets.addrs.len(),
                        identities = new.identities.len(),
                        policies = new.policies.len(),
                        "configuration reloaded"
                    );
                    for w in &new.warnings {
                        tracing::warn!("{}: {w}", path.display());
                    }
                    admission.set_limits(limits(&new.config.limits, descriptor_limit()));
                    let status = serving(&new);
                    state.store(Arc::new(Snapshot::new(new)));
                    Ok(status)
                }
                Err(e) => Err(format!("reload failed while updating the dataplane: {e}")),
            }
        }
    };
    let m = crate::metrics::get();
    m.reloaded(outcome.is_ok());
    match outcome {
        Ok(status) => Ok((m.config_generation.get(), status)),
        Err(e) => {
            tracing::error!(error = %e, "the previous configuration keeps serving");
            Err(format!("{e}; the previous configuration keeps serving"))
        }
    }
}

/// A reload changes who may do what: audited with who asked for it and what came of it.
fn audit_reload(audit: &Audit, by: &str, outcome: &Result<(i64, String), String>) {
    let (event, reason) = match outcome {
        Ok((generation, status)) => ("config.reload", format!("generation {generation}: {status}")),
        Err(e) => ("config.reload_rejected", crate::audit::clip(e)),
    };
    let mut e = crate::audit::Event::new(event, &crate::audit::session_id());
    e.requested_by = Some(by.to_owned());
    e.reason = Some(reason);
    audit.emit(&e);
}

/// The one-line status the service manager shows while `l` serves.
fn serving(l: &config::Loaded) -> String {
    format!(
        "serving {} target addresses, {} identities, {} policies",
        l.targets.addrs.len(),
        l.identities.len(),
        l.policies.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_found_per_vnet_by_address() {
        let text = r#"
[[vnet]]
name = "corp"
id = 1
ingress = ["veth0"]
table = 101
[[vnet]]
name = "lab"
id = 2
ingress = ["veth1"]
table = 102
[[application]]
name = "ssh"
target = [{ hostname = "*", ports = [22] }]
[[target]]
hostname = "web-01"
ipv4 = "198.18.10.10"
vnet = "corp"
[[target]]
hostname = "lab-01"
ipv4 = "198.18.10.10"
ipv6 = "2001:db8::10"
vnet = "lab"
"#;
        let snap = Snapshot::new(config::parse(Path::new("t.toml"), text).unwrap());
        let name = |v, a: &str| snap.target(v, a.parse().unwrap()).map(|t| t.target.as_str());
        assert_eq!(name(1, "198.18.10.10"), Some("web-01"));
        assert_eq!(name(2, "198.18.10.10"), Some("lab-01"));
        assert_eq!(name(2, "::ffff:198.18.10.10"), Some("lab-01"), "IPv4-mapped");
        assert_eq!(name(2, "2001:db8::10"), Some("lab-01"));
        assert_eq!(name(1, "2001:db8::10"), None);
        assert_eq!(name(3, "198.18.10.10"), None);
    }
}
