//! Channels opened by either side. The client's session and forwarding channels are opened
//! on the target in turn, and confirmed to the client when the target confirms (its
//! refusal is passed back as it came); the target's forwarded, X11 and agent channels are
//! opened on the client only when the policy granted them and the client asked for them.
//! Every forwarding decision is audited as `channel.open`: what ran always, refusals and
//! failures up to a cap per connection (then counted).

use portcullis_ssh::connection::{ChannelId, ChannelKind, OpenFailure};

use super::{
    pairs::{Kind, Pair},
    Hop, Relay,
};
use crate::audit;

const PROHIBITED: u32 = OpenFailure::AdministrativelyProhibited.code();

impl Relay {
    pub(super) fn on_open(&mut self, h: Hop, id: ChannelId, kind: ChannelKind) {
        match h {
            Hop::Front => self.client_opens(id, kind),
            Hop::Up => self.target_opens(id, kind),
        }
    }

    fn reject(&mut self, h: Hop, id: ChannelId, reason: u32, why: &str) {
        self.hops[h.i()].session.connection().reject_open(id, reason, why);
    }

    /// A channel the client opens.
    fn client_opens(&mut self, id: ChannelId, kind: ChannelKind) {
        if self.refusal().is_some() {
            if kind == ChannelKind::Session {
                // Told when the client asks for a shell, command or subsystem (OpenSSH shows
                // stderr only once the session has started).
                self.hops[0].session.connection().accept_open(id);
                let mut p = Pair::new(Kind::Session, [Some(id), None], None);
                p.refused = true;
                self.pairs.insert(p);
            } else {
                self.channel_event(&format!("{}_refused", kind_label(&kind)), None);
                self.reject(Hop::Front, id, PROHIBITED, "refused");
            }
            return;
        }
        match &kind {
            ChannelKind::Session => self.open_twin(Hop::Front, id, kind, Kind::Session, None),
            ChannelKind::DirectTcpip { host, port, .. } => {
                let dest = format!("{host}:{port}");
                if !self.forwarding.local {
                    self.channel_event("local_forwarding_refused", Some(dest));
                    self.reject(Hop::Front, id, PROHIBITED, "port forwarding is not allowed");
                    return;
                }
                // The target opens the forwarded connection (from its side, as with ssh -L
                // directly).
                self.open_twin(
                    Hop::Front,
                    id,
                    kind,
                    Kind::Tunnel,
                    Some(("local_forwarding", Some(dest))),
                );
            }
            other => {
                // Unix-socket forwarding and anything unknown go nowhere: they would reach
                // what the policy does not describe.
                let name = other.name().chars().take(64).collect::<String>();
                self.channel_event("channel_refused", Some(name));
                self.reject(Hop::Front, id, PROHIBITED, "channel type not allowed");
            }
        }
    }

    /// A channel the target opens towards the client: only for what the client set up and
    /// the policy granted.
    fn target_opens(&mut self, id: ChannelId, kind: ChannelKind) {
        let authorized = matches!(self.auth, super::AuthState::Authorized { .. });
        let (label, detail, granted) = match &kind {
            ChannelKind::ForwardedTcpip {
                host,
                port,
                orig_host,
                orig_port,
            } => (
                "forwarded_tcpip",
                Some(format!("{host}:{port} from {orig_host}:{orig_port}")),
                // Only for a listen the client asked for and the target granted (address
                // as the client wrote it, which sshd echoes, and the bound port).
                self.forwarding.remote && self.grants.remote_granted(host, *port),
            ),
            ChannelKind::X11 { orig_host, orig_port } => (
                "x11_channel",
                Some(format!("{orig_host}:{orig_port}")),
                self.forwarding.x11 && self.grants.x11,
            ),
            ChannelKind::AuthAgent => ("agent_channel", None, self.forwarding.agent && self.grants.agent),
            other => ("channel", Some(other.name().chars().take(64).collect()), false),
        };
        if !granted || !authorized || self.hops[0].gone {
            self.channel_event(&format!("{label}_refused"), detail);
            self.reject(Hop::Up, id, PROHIBITED, "refused by the gateway");
            return;
        }
        self.open_twin(Hop::Up, id, kind, Kind::Tunnel, Some((label, detail)));
    }

    /// Opens `kind` on the other hop for hop `h`'s channel `id`; `h`'s open is answered
    /// when the other hop answers.
    fn open_twin(
        &mut self,
        h: Hop,
        id: ChannelId,
        kind: ChannelKind,
        pair_kind: Kind,
        audit: Option<(&'static str, Option<String>)>,
    ) {
        let to = h.other();
        let twin = self.hops[to.i()].session.connection().open(kind);
        let mut ids = [None, None];
        ids[h.i()] = Some(id);
        ids[to.i()] = Some(twin);
        let mut p = Pair::new(pair_kind, ids, Some(to));
        p.audit_open = audit;
        self.pairs.insert(p);
    }

    /// Hop `h` confirmed our open `id`: the twin's open is accepted.
    pub(super) fn on_open_confirmed(&mut self, h: Hop, id: ChannelId) {
        let Some(i) = self.pairs.find(h, id) else { return };
        let Some(p) = self.pairs.get(i) else { return };
        if p.awaiting != Some(h) {
            return;
        }
        p.awaiting = None;
        let audit = p.audit_open.take();
        match p.ids[h.other().i()] {
            Some(twin) => self.hops[h.other().i()].session.connection().accept_open(twin),
            // The twin went away meanwhile: ours is closed again.
            None => self.hops[h.i()].session.connection().close(id),
        }
        if let Some((label, detail)) = audit {
            self.channel_allowed(label, detail);
        }
        self.pairs.mark(i);
    }

    /// Hop `h` refused our open `id`: the twin's open is refused with the same reason.
    pub(super) fn on_open_failed(&mut self, h: Hop, id: ChannelId, reason: u32, description: &str) {
        let Some(i) = self.pairs.find(h, id) else { return };
        let Some(p) = self.pairs.get(i) else { return };
        let audit = p.audit_open.take();
        let twin = p.ids[h.other().i()];
        if let Some(twin) = twin {
            let description: String = description
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            self.hops[h.other().i()]
                .session
                .connection()
                .reject_open(twin, reason, &description);
            self.pairs.forget(i, h.other());
        }
        self.pairs.forget(i, h);
        if let Some((label, detail)) = audit {
            let detail = Some(match detail {
                Some(d) => format!("{d}: {description}"),
                None => description.to_string(),
            });
            self.channel_event(&format!("{label}_failed"), detail);
        }
    }

    /// Audits `channel.open` for a refusal or a failure, with `kind` as its reason and
    /// `detail` as its rule. These cost a client one message each: past [`CHANNEL_EVENTS`]
    /// per connection they are only counted (for `session.end`), so a loop of them cannot
    /// flood the trail.
    ///
    /// [`CHANNEL_EVENTS`]: super::CHANNEL_EVENTS
    pub(super) fn channel_event(&self, kind: &str, detail: Option<String>) {
        if self.past_event_cap() {
            return;
        }
        self.emit_channel_event(kind, detail.map(|d| audit::clip(&d)), None);
    }

    /// Audits `channel.open` for what the gateway let run: a started session, a forwarding
    /// opened, bound or first granted. Always, however many refusals came before (each of these costs
    /// the target a process, a connection or a listening port, not just a message).
    pub(super) fn channel_allowed(&self, kind: &str, detail: Option<String>) {
        self.emit_channel_event(kind, detail.map(|d| audit::clip(&d)), None);
    }

    /// The same for a session's start, with the environment the client asked for; its
    /// detail comes bounded already (`hooks::start_request`: a command keeps more than
    /// `audit::clip` would).
    pub(super) fn channel_started(&self, kind: &str, detail: Option<String>, env: &[String]) {
        self.emit_channel_event(kind, detail, (!env.is_empty()).then(|| env.to_vec()));
    }

    /// Whether a refusal's event is past the cap (then it is counted instead).
    pub(super) fn past_event_cap(&self) -> bool {
        let (audited, suppressed) = self.channel_events.get();
        if audited >= super::CHANNEL_EVENTS {
            self.channel_events.set((audited, suppressed + 1));
            return true;
        }
        self.channel_events.set((audited + 1, suppressed));
        false
    }

    fn emit_channel_event(&self, kind: &str, detail: Option<String>, env: Option<Vec<String>>) {
        let mut e = self.conn.event("channel.open");
        e.env = env;
        e.reason = Some(kind.to_string());
        e.rule = detail;
        self.conn.ctx.audit.emit(&e);
    }
}

fn kind_label(kind: &ChannelKind) -> &'static str {
    match kind {
        ChannelKind::DirectTcpip { .. } => "local_forwarding",
        _ => "channel",
    }
}
