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
    /// The remote forwards (`ssh -R`) the client asked for and the target granted: only
    /// connections on these may come back as forwarded-tcpip channels.
    remote: Mutex<RemoteForwards>,
    /// Where channel events of this session go, once it is authenticated: the audit trail
    /// and the session's own event (identity, target, login, certificate).
    pub audit: OnceLock<(std::sync::Arc<Audit>, Event)>,
    /// Tasks relaying towards the client, stopped when its connection ends: one waiting for
    /// a vanished client's window would otherwise keep the target's connection open.
    towards_client: Mutex<Vec<AbortHandle>>,
}

/// (listen address as the client wrote it, port) of each remote forward.
#[derive(Default)]
struct RemoteForwards {
    granted: Vec<(String, u32)>,
    /// Asked for, not answered yet: the target may report a connection before its answer
    /// reaches us. Port 0 (any port) until the target says which one it bound.
    pending: Vec<(String, u32)>,
}

impl Link {
    /// A remote forward is being asked of the target. Until `remote_answered`, connections
    /// on it are accepted as granted (they are what the client asked for).
    pub fn remote_asked(&self, address: &str, port: u32) {
        let mut r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        r.pending.push((address.to_owned(), port));
    }

    /// The target answered the request for (`address`, `asked`): `Some(bound)` if it
    /// listens (on `bound`, which differs from `asked` only when that was 0).
    pub fn remote_answered(&self, address: &str, asked: u32, bound: Option<u32>) {
        let mut r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = r.pending.iter().position(|(a, p)| a == address && *p == asked) {
            r.pending.swap_remove(i);
        }
        if let Some(port) = bound {
            r.granted.push((address.to_owned(), port));
        }
    }

    /// The client cancelled a remote forward.
    pub fn remote_cancelled(&self, address: &str, port: u32) {
        let mut r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        r.granted.retain(|(a, p)| !(a == address && *p == port));
    }

    /// Whether the target may report a connection on (`address`, `port`): the client asked
    /// for exactly that listen and the target granted it (or has not answered yet).
    pub fn remote_granted(&self, address: &str, port: u32) -> bool {
        let r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
        r.granted.iter().any(|(a, p)| a == address && *p == port)
            || r.pending
                .iter()
                .any(|(a, p)| a == address && (*p == port || *p == 0))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_remote_forwards_may_report_connections() {
        let l = Link::default();
        assert!(!l.remote_granted("localhost", 8080), "nothing asked yet");
        l.remote_asked("localhost", 8080);
        assert!(l.remote_granted("localhost", 8080), "asked, answer not seen yet");
        assert!(!l.remote_granted("localhost", 8081));
        l.remote_answered("localhost", 8080, Some(8080));
        assert!(l.remote_granted("localhost", 8080));
        assert!(!l.remote_granted("0.0.0.0", 8080), "another address");

        // Port 0: the target picks; then only that port.
        l.remote_asked("127.0.0.1", 0);
        assert!(
            l.remote_granted("127.0.0.1", 40001),
            "while the answer is in flight"
        );
        l.remote_answered("127.0.0.1", 0, Some(40000));
        assert!(l.remote_granted("127.0.0.1", 40000));
        assert!(!l.remote_granted("127.0.0.1", 40001));

        // Refused by the target, or cancelled by the client: no longer accepted.
        l.remote_asked("localhost", 9090);
        l.remote_answered("localhost", 9090, None);
        assert!(!l.remote_granted("localhost", 9090));
        l.remote_cancelled("localhost", 8080);
        assert!(!l.remote_granted("localhost", 8080));
    }
}
