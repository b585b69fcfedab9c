//! Follows interface churn over rtnetlink. An interface deleted and re-created (a
//! `wg-quick` restart, a container's veth) gets a new ifindex and none of our programs; the
//! monitor reports every link that appears or goes, so the daemon can re-attach within
//! milliseconds (`Dataplane::refresh_interfaces`). Until then the forward guard, which
//! matches names, keeps protected ports closed.

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_sys::{AsyncSocket, SocketAddr};
use rtnetlink::{constants::RTMGRP_LINK, packet_route::RouteNetlinkMessage};
use tokio::sync::mpsc;

use super::{interfaces, DataplaneError};
use crate::targets::TargetSet;

/// A link that appeared, changed or went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEvent {
    pub name: Option<String>,
    /// Set for VLAN devices: a new one on an ingress must be accepted by sk_lookup.
    pub vlan: bool,
    pub removed: bool,
}

impl LinkEvent {
    /// Whether this event can change what the dataplane of `set` must do.
    pub fn concerns(&self, set: &TargetSet) -> bool {
        self.vlan
            || self
                .name
                .as_ref()
                .is_some_and(|n| interfaces::names(set).contains(n))
    }
}

/// Subscribes to link notifications; events arrive on the returned channel until it is
/// dropped. Subscribing happens before this returns, so no event after it is missed.
pub fn spawn() -> Result<mpsc::Receiver<LinkEvent>, DataplaneError> {
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().map_err(|e| DataplaneError::io("open a netlink socket", e))?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .map_err(|e| DataplaneError::io("subscribe to link notifications", e))?;
    let (tx, rx) = mpsc::channel(256);
    let conn_task = tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let (m, removed) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => (m, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => (m, true),
                _ => continue,
            };
            let f = interfaces::facts(&m);
            let ev = LinkEvent {
                name: f.name,
                vlan: f.vid.is_some(),
                removed,
            };
            // A full queue means a refresh is pending anyway; the reader re-reads all links.
            match tx.try_send(ev) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        conn_task.abort();
        tracing::warn!("link notifications ended; interface churn is no longer followed");
    });
    Ok(rx)
}
