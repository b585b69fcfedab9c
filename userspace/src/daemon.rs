//! The daemon: installs the dataplane for the configuration, serves the steered connections,
//! reloads on SIGHUP and exits on SIGTERM/SIGINT leaving the dataplane in place.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio::{
    io::AsyncWriteExt,
    signal::unix::{signal, SignalKind},
};

use crate::{
    audit::{self, Audit, Event},
    config,
    dataplane::{Dataplane, DataplaneError},
    identity::Registry,
    policy::{Engine, Request},
    steer::{self, Steered},
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
}

/// What a connection is judged against; replaced whole on reload, so a connection sees
/// one consistent configuration.
pub struct Snapshot {
    pub targets: TargetSet,
    pub identities: Registry,
    pub policies: Engine,
}

impl Snapshot {
    fn from(l: config::Loaded) -> Self {
        Self {
            targets: l.targets,
            identities: l.identities,
            policies: l.policies,
        }
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
    let mut dp = Dataplane::up(&loaded.config.dataplane, &loaded.targets).await?;
    let listeners = steer::Listeners::bind().await.map_err(|source| DaemonError::Io {
        what: "bind the proxy listeners",
        source,
    })?;
    dp.register_listeners(&listeners.v4, listeners.v6.as_ref())?;
    tracing::info!(
        instance = %loaded.config.dataplane.instance,
        targets = loaded.targets.addrs.len(),
        identities = loaded.identities.len(),
        policies = loaded.policies.len(),
        pins = %dp.paths().root.display(),
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
    let path: PathBuf = config_path.to_owned();
    loop {
        let accepted = tokio::select! {
            r = listeners.v4.accept() => r,
            r = accept_opt(listeners.v6.as_ref()) => r,
            _ = hup.recv() => {
                if let Err(e) = audit.reopen() {
                    tracing::error!(error = %e, "reopening the audit file failed; still writing to the old one");
                }
                reload(&path, &mut dp, &state);
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        match accepted {
            Ok((stream, peer)) => match steer::inspect(stream, peer) {
                Ok(conn) => {
                    let (snap, audit) = (state.load_full(), audit.clone());
                    tokio::spawn(async move { serve(conn, &snap, &audit).await });
                }
                Err(e) => tracing::warn!(error = %e, "inspecting an accepted connection failed"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
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
fn reload(path: &Path, dp: &mut Dataplane, state: &ArcSwap<Snapshot>) {
    match config::load(path) {
        Ok(new) => match dp.apply(&new.targets) {
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

/// Serves one steered connection: who is it, and could any policy let them in? The SSH
/// proxy is not part of this build yet, so even a connection that passes is audited and
/// refused — never forwarded unchecked.
async fn serve(mut conn: Steered, snap: &Snapshot, audit: &Audit) {
    let session = audit::session_id();
    let vnet = conn.vnet.and_then(|id| snap.targets.vnet_by_id(id));
    let target = conn
        .vnet
        .and_then(|id| snap.targets.lookup(id, conn.original_dst.ip()));
    let identity = conn
        .vnet
        .and_then(|id| snap.identities.lookup(id, conn.peer.ip()));
    let mut ev = Event::new("connect", &session);
    ev.identity = identity.map(|i| i.email.clone());
    ev.source = Some(conn.peer);
    ev.vnet = vnet.map(|v| v.name.clone());
    ev.target = target.map(|t| t.target.clone());
    ev.target_addr = Some(conn.original_dst);
    ev.port = Some(conn.original_dst.port());
    audit.emit(&ev);
    let reason = match (conn.vnet, target, identity) {
        (None, _, _) => "not_steered",
        (_, None, _) => "no_target",
        (_, _, None) => "no_identity",
        (_, Some(t), Some(id)) => {
            let r = Request {
                identity: id,
                source: conn.peer.ip(),
                vnet: vnet.map(|v| v.name.as_str()).unwrap_or(""),
                target: &t.target,
                port: conn.original_dst.port(),
                login: "",
            };
            if snap.policies.could_allow(&r) {
                "proxy_unavailable"
            } else {
                "no_policy"
            }
        }
    };
    let mut deny = ev.clone();
    deny.time = audit::now_rfc3339();
    deny.event = "deny";
    deny.decision = Some("deny");
    deny.reason = Some(reason.to_string());
    audit.emit(&deny);
    let msg = format!(
        "portcullis: {} {} refused ({reason})\r\n",
        target.map(|t| t.target.as_str()).unwrap_or("-"),
        conn.original_dst
    );
    let _ = conn.stream.write_all(msg.as_bytes()).await;
    let _ = conn.stream.shutdown().await;
}
