//! The daemon: installs the dataplane for the configuration, serves the steered connections,
//! reloads on SIGHUP and exits on SIGTERM/SIGINT leaving the dataplane in place.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    audit::Audit,
    config,
    dataplane::{Dataplane, DataplaneError},
    identity::Registry,
    policy::Engine,
    proxy::{self, Context, Incoming},
    steer,
    targets::TargetSet,
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
    let ca = crate::ca::load_ca(&a.ca_key)?;
    let recording = match &a.recording_public_key {
        Some(p) => Some(proxy::RecordingSetup {
            key: crate::recording::keys::load_public(p).map_err(|e| DaemonError::Io {
                what: "load the recording public key",
                source: std::io::Error::other(e.to_string()),
            })?,
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

/// What a connection is judged against; replaced whole on reload, so a connection sees
/// one consistent configuration.
pub struct Snapshot {
    pub targets: TargetSet,
    /// (vnet, address) → index into `targets.addrs`: a connection's target in one lookup,
    /// however many targets there are.
    target_index: std::collections::HashMap<(u16, std::net::IpAddr), usize>,
    pub host_keys: crate::hostcheck::Rules,
    pub auth: crate::proxy::AuthMethods,
    pub identities: Registry,
    pub policies: Engine,
}

impl Snapshot {
    fn from(l: config::Loaded) -> Self {
        let target_index = l
            .targets
            .addrs
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.vnet, crate::targets::canonical(t.addr)), i))
            .collect();
        Self {
            target_index,
            targets: l.targets,
            host_keys: l.host_keys,
            auth: l.auth,
            identities: l.identities,
            policies: l.policies,
        }
    }

    /// The target that owns `addr` in vnet `vnet`, if any.
    pub fn target(&self, vnet: u16, addr: std::net::IpAddr) -> Option<&crate::targets::TargetAddr> {
        let i = self.target_index.get(&(vnet, crate::targets::canonical(addr)))?;
        self.targets.addrs.get(*i)
    }
}

pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let loaded = config::load(config_path)?;
    let audit = Arc::new(
        Audit::open(&loaded.config.audit).map_err(|source| DaemonError::Io {
            what: "open the audit trail",
            source,
        })?,
    );
    let ctx = context(&loaded, &audit)?;
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
        tracing::info!(listen = %l.listen, target = %l.target, "listener up");
        tokio::spawn(async move {
            loop {
                match sock.accept().await {
                    Ok((stream, peer)) => {
                        let peer = steer::canonical(peer);
                        if tx
                            .send(Incoming {
                                stream,
                                peer,
                                target_addr,
                                vnet: Some(vnet),
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
    tracing::info!(
        instance = %loaded.config.dataplane.instance,
        targets = loaded.targets.addrs.len(),
        identities = loaded.identities.len(),
        policies = loaded.policies.len(),
        steering,
        pins = %dp.as_ref().map(|d| d.paths().root.display().to_string()).unwrap_or_default(),
        "dataplane up; serving steered connections"
    );
    let state = Arc::new(ArcSwap::from_pointee(Snapshot::from(loaded)));
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
    // Reloads run beside the accept loop: parsing a large configuration and syncing the maps
    // take a second or more, and connections keep being served meanwhile. One pending
    // request is enough — a reload always reads the file as it is then.
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<()>(1);
    let reloader = {
        let (state, path): (_, PathBuf) = (state.clone(), config_path.to_owned());
        tokio::spawn(async move {
            while reload_rx.recv().await.is_some() {
                reload(&path, dp.as_mut(), &state).await;
            }
            dp
        })
    };
    loop {
        let accepted = tokio::select! {
            r = listeners.v4.accept() => r,
            r = accept_opt(listeners.v6.as_ref()) => r,
            Some(inc) = plain.recv() => {
                let (snap, ctx) = (state.load_full(), ctx.clone());
                tokio::spawn(proxy::serve(inc, snap, ctx));
                continue;
            }
            _ = hup.recv() => {
                if let Err(e) = audit.reopen() {
                    tracing::error!(error = %e, "reopening the audit file failed; still writing to the old one");
                }
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = reload_tx.try_send(()) {
                    tracing::error!("the reloader has stopped; restart the daemon to apply configuration changes");
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        match accepted {
            Ok((stream, peer)) => match steer::inspect(stream, peer) {
                Ok(conn) => {
                    let inc = Incoming {
                        stream: conn.stream,
                        peer: conn.peer,
                        target_addr: conn.original_dst,
                        vnet: conn.vnet,
                    };
                    tokio::spawn(proxy::serve(inc, state.load_full(), ctx.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "inspecting an accepted connection failed"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
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
/// connections in flight keep the snapshot they started with.
async fn reload(path: &Path, dp: Option<&mut Dataplane>, state: &ArcSwap<Snapshot>) {
    let p = path.to_owned();
    let loaded = match tokio::task::spawn_blocking(move || config::load(&p)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; the previous configuration keeps serving");
            return;
        }
    };
    let applied = match (&loaded, dp) {
        (Ok(new), Some(dp)) => dp.apply(&new.targets).await,
        _ => Ok(()),
    };
    match loaded {
        Ok(new) => match applied {
            Ok(()) => {
                tracing::info!(
                    targets = new.targets.addrs.len(),
                    identities = new.identities.len(),
                    policies = new.policies.len(),
                    "configuration reloaded"
                );
                state.store(Arc::new(Snapshot::from(new)));
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed while updating the dataplane; previous policy keeps serving")
            }
        },
        Err(e) => tracing::error!(error = %e, "reload rejected; the previous configuration keeps serving"),
    }
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
[[vnet]]
name = "lab"
id = 2
ingress = ["veth1"]
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
        let snap = Snapshot::from(config::parse(Path::new("t.toml"), text).unwrap());
        let name = |v, a: &str| snap.target(v, a.parse().unwrap()).map(|t| t.target.as_str());
        assert_eq!(name(1, "198.18.10.10"), Some("web-01"));
        assert_eq!(name(2, "198.18.10.10"), Some("lab-01"));
        assert_eq!(name(2, "::ffff:198.18.10.10"), Some("lab-01"), "IPv4-mapped");
        assert_eq!(name(2, "2001:db8::10"), Some("lab-01"));
        assert_eq!(name(1, "2001:db8::10"), None);
        assert_eq!(name(3, "198.18.10.10"), None);
    }
}
