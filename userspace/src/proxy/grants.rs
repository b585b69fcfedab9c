//! What the client was granted that lets the *target* open channels towards it: agent and
//! X11 forwarding once the target accepted the client's request, and the remote forwards
//! (`ssh -R`) the client asked for and the target bound. A channel the target opens is
//! refused unless it matches one of these.

#[derive(Default)]
pub struct Grants {
    /// The client asked for agent forwarding (`ssh -A`), the policy granted it and the
    /// target agreed: only then may the target open agent channels towards the client.
    pub agent: bool,
    /// The same for X11 (`ssh -X`/`-Y`).
    pub x11: bool,
    /// The remote forwards (`ssh -R`) the client asked for and the target granted: only
    /// connections on these may come back as forwarded-tcpip channels.
    remote: RemoteForwards,
}

/// (listen address as the client wrote it, port) of each remote forward.
#[derive(Default)]
struct RemoteForwards {
    granted: Vec<(String, u32)>,
    /// Asked for, not answered yet: the target may report a connection before its answer
    /// reaches us. Port 0 (any port) until the target says which one it bound. The flag:
    /// the client cancelled it meanwhile, so the answer grants nothing.
    pending: Vec<(String, u32, bool)>,
}

/// At most this many remote forwards per connection (OpenSSH's client sets up a handful):
/// more are refused, so the lists stay small.
pub const MAX_REMOTE_FORWARDS: usize = 256;

impl Grants {
    /// A remote forward is being asked of the target. Until `remote_answered`, connections
    /// on it are accepted as granted (they are what the client asked for). `false`: too many.
    pub fn remote_asked(&mut self, address: &str, port: u32) -> bool {
        let r = &mut self.remote;
        if r.pending.len() + r.granted.len() >= MAX_REMOTE_FORWARDS {
            return false;
        }
        r.pending.push((address.to_owned(), port, false));
        true
    }

    /// The target answered the request for (`address`, `asked`): `Some(bound)` if it
    /// listens (on `bound`, which differs from `asked` only when that was 0).
    pub fn remote_answered(&mut self, address: &str, asked: u32, bound: Option<u32>) {
        let r = &mut self.remote;
        let cancelled = match r.pending.iter().position(|(a, p, _)| a == address && *p == asked) {
            Some(i) => r.pending.swap_remove(i).2,
            None => false,
        };
        if let Some(port) = bound.filter(|_| !cancelled) {
            r.granted.push((address.to_owned(), port));
        }
    }

    /// The client cancelled a remote forward (also one whose answer is still on its way).
    pub fn remote_cancelled(&mut self, address: &str, port: u32) {
        let r = &mut self.remote;
        r.granted.retain(|(a, p)| !(a == address && *p == port));
        for (a, p, cancelled) in &mut r.pending {
            if a == address && *p == port {
                *cancelled = true;
            }
        }
    }

    /// Whether the target may report a connection on (`address`, `port`): the client asked
    /// for exactly that listen and the target granted it (or has not answered yet).
    pub fn remote_granted(&self, address: &str, port: u32) -> bool {
        let r = &self.remote;
        r.granted.iter().any(|(a, p)| a == address && *p == port)
            || r.pending
                .iter()
                .any(|(a, p, cancelled)| !cancelled && a == address && (*p == port || *p == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_remote_forwards_may_report_connections() {
        let mut l = Grants::default();
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

        // Cancelled before the target's answer arrived: the answer grants nothing.
        l.remote_asked("localhost", 7070);
        l.remote_cancelled("localhost", 7070);
        assert!(!l.remote_granted("localhost", 7070), "cancelled while in flight");
        l.remote_answered("localhost", 7070, Some(7070));
        assert!(
            !l.remote_granted("localhost", 7070),
            "the late answer brought it back"
        );
    }
}
