//! The daemon: installs the dataplane for the configuration, serves the steered connections,
//! reloads on SIGHUP and exits on SIGTERM/SIGINT leaving the dataplane in place.

use std::path::{Path, PathBuf};

use tokio::{
    io::AsyncWriteExt,
    signal::unix::{signal, SignalKind},
};

use crate::{
    audit, config,
    dataplane::{Dataplane, DataplaneError},
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

pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let loaded = config::load(config_path)?;
    let mut targets = loaded.targets.clone();
    let mut dp = Dataplane::up(&loaded.config.dataplane, &targets).await?;
    let listeners = steer::Listeners::bind().await.map_err(|source| DaemonError::Io {
        what: "bind the proxy listeners",
        source,
    })?;
    dp.register_listeners(&listeners.v4, listeners.v6.as_ref())?;
    tracing::info!(
        instance = %loaded.config.dataplane.instance,
        targets = targets.addrs.len(),
        pins = %dp.paths().root.display(),
        "dataplane up; serving steered connections"
    );
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
                reload(&path, &mut dp, &mut targets);
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        match accepted {
            Ok((stream, peer)) => match steer::inspect(stream, peer) {
                Ok(conn) => {
                    let targets = targets.clone();
                    tokio::spawn(async move { serve(conn, &targets).await });
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

fn reload(path: &Path, dp: &mut Dataplane, targets: &mut TargetSet) {
    match config::load(path) {
        Ok(new) => match dp.apply(&new.targets) {
            Ok(()) => {
                *targets = new.targets;
                tracing::info!(targets = targets.addrs.len(), "configuration reloaded");
            }
            Err(e) => tracing::error!(error = %e, "reload failed while updating the dataplane"),
        },
        Err(e) => tracing::error!(error = %e, "reload rejected; the previous configuration keeps serving"),
    }
}

/// Serves one steered connection. The SSH proxy is not part of this build yet, so every
/// steered connection is audited and refused — never forwarded unchecked.
async fn serve(mut conn: Steered, targets: &TargetSet) {
    let session = audit::session_id();
    let vnet = conn.vnet.and_then(|id| targets.vnet_by_id(id));
    let target = conn
        .vnet
        .and_then(|id| targets.lookup(id, conn.original_dst.ip()));
    let base = audit::Event {
        time: audit::now_rfc3339(),
        event: "connect",
        session: &session,
        source: conn.peer,
        vnet: vnet.map(|v| v.name.as_str()),
        vnet_id: conn.vnet,
        target: target.map(|t| t.target.as_str()),
        target_addr: conn.original_dst,
        reason: None,
    };
    audit::emit(&base);
    let reason = match (conn.vnet, target) {
        (None, _) => "not_steered",
        (Some(_), None) => "no_target",
        (Some(_), Some(_)) => "proxy_unavailable",
    };
    audit::emit(&audit::Event {
        time: audit::now_rfc3339(),
        event: "deny",
        reason: Some(reason),
        ..base
    });
    let msg = format!(
        "portcullis: {} {} refused ({reason})\r\n",
        target.map(|t| t.target.as_str()).unwrap_or("-"),
        conn.original_dst
    );
    let _ = conn.stream.write_all(msg.as_bytes()).await;
    let _ = conn.stream.shutdown().await;
}
