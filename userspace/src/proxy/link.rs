//! What the client's side (`front.rs`) and the target's side (`upstream.rs`) of one proxied
//! connection share.

use std::sync::{atomic::AtomicBool, Mutex, OnceLock};

use russh::server;
use tokio::task::AbortHandle;

use crate::audit::{self, Audit, Event};

#[derive(Default)]
pub struct Link {
    /// The client's session, once it exists: where channels the target opens are joined.
    pub front: OnceLock<server::Handle>,
    /// The client asked for agent forwarding (`ssh -A`), the policy granted it and the
    /// target agreed: only then may the target open agent channels towards the client.
    pub agent: AtomicBool,
    /// The same for X11 (`ssh -X`/`-Y`).
    pub x11: AtomicBool,
    /// Where channel events of this session go, once it is authenticated: the audit trail
    /// and the session's own event (identity, target, login, certificate).
    pub audit: OnceLock<(std::sync::Arc<Audit>, Event)>,
    /// Tasks relaying towards the client, stopped when its connection ends: one waiting for
    /// a vanished client's window would otherwise keep the target's connection open.
    towards_client: Mutex<Vec<AbortHandle>>,
}

impl Link {
    pub fn track(&self, task: AbortHandle) {
        let mut v = self.towards_client.lock().unwrap_or_else(|e| e.into_inner());
        // Finished relays are forgotten, so a long session with many channels stays small.
        v.retain(|t| !t.is_finished());
        v.push(task);
    }

    pub fn stop(&self) {
        let mut v = self.towards_client.lock().unwrap_or_else(|e| e.into_inner());
        for t in v.drain(..) {
            t.abort();
        }
    }

    /// Audits a channel the target opened (`channel.open`, reason `kind`).
    pub fn channel_event(&self, kind: &str, detail: Option<String>) {
        if let Some((a, base)) = self.audit.get() {
            let mut e = base.clone();
            e.time = audit::now_rfc3339();
            emit_channel_event(a, e, kind, detail);
        }
    }
}

/// `e` as a `channel.open` event with `kind` as its reason and `detail` as its rule: how the
/// client's side and the target's side both audit channels.
pub fn emit_channel_event(a: &Audit, mut e: Event, kind: &str, detail: Option<String>) {
    e.event = "channel.open";
    e.reason = Some(kind.to_string());
    e.rule = detail;
    a.emit(&e);
}
