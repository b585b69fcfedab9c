//! Requests passed through, and their answers routed back.
//!
//! Channel requests go to the twin channel at once (not behind the channel's data: a
//! `break` or `signal` must reach a target that stopped reading), with the reply wanted
//! when the sender wanted one; the answer comes back to the request it belongs to (the
//! engine's per-channel `seq`), so requests the gateway answers itself and ones the target
//! answers can interleave. A few are the gateway's to decide: the shell/exec/subsystem
//! that starts a session ([`hooks`](super::hooks)), and agent and X11 forwarding, which
//! the policy must grant. Global requests: remote forwarding (granted by policy, and
//! remembered so that only its connections come back), its cancellation, keepalives; the
//! rest are refused (Unix-socket forwarding would reach what the policy does not name),
//! and the target's (its host keys, keepalives) are answered here.

use std::collections::VecDeque;

use bytes::Bytes;
use portcullis_ssh::connection::{ChannelId, ChannelRequest, GlobalRequest};

use super::{Hop, Relay};
use crate::recording::writer::Recorder;

/// What to do with an answer a hop owes us on a channel.
pub(super) enum Route {
    /// Pass it on to the other hop's request number `seq` on the twin channel.
    Answer(u64),
    /// The gateway's own question (agent or X11 forwarding): on yes the target may open
    /// such channels; audited; `answer` is the client's request, if it wanted a reply.
    Grant {
        grant: Grant,
        answer: Option<u64>,
        detail: Option<String>,
    },
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Grant {
    Agent,
    X11,
}

impl Grant {
    fn label(self) -> &'static str {
        match self {
            Grant::Agent => "agent_forwarding",
            Grant::X11 => "x11_forwarding",
        }
    }
}

/// What to do with a global answer the target owes us.
enum GlobalRoute {
    Answer(Option<u64>),
    RemoteForward {
        address: String,
        port: u32,
        slot: Option<u64>,
    },
}

/// Global requests in flight.
#[derive(Default)]
pub(super) struct Globals {
    /// The client's global requests awaiting an answer, oldest first (`None` until decided):
    /// answers go out in request order.
    client: VecDeque<Option<(bool, Bytes)>>,
    /// Slot number of `client[0]`.
    base: u64,
    /// The target's answers we await, in order.
    up: VecDeque<GlobalRoute>,
}

/// The most global requests of the client awaiting an answer (the engine bounds the
/// client's too).
const MAX_GLOBAL: usize = 64;

/// `env` requests a session channel may make before its start, and their bytes in all
/// (`NAME=value`): far more than `LANG`, `LC_*` and a terminal's few need.
pub const MAX_ENV: usize = 32;
pub const MAX_ENV_BYTES: usize = 8 * 1024;

impl Relay {
    pub(super) fn on_request(&mut self, h: Hop, id: ChannelId, req: ChannelRequest, want_reply: bool) {
        let Some(i) = self.pairs.find(h, id) else {
            if want_reply {
                self.hops[h.i()].session.connection().reply(id, false);
            }
            return;
        };
        let Some(p) = self.pairs.get(i) else { return };
        let seq = want_reply.then(|| {
            let s = p.seq[h.i()];
            p.seq[h.i()] += 1;
            s
        });
        match h {
            Hop::Front => self.client_request(i, id, req, seq),
            Hop::Up => self.target_request(i, req, seq),
        }
    }

    fn client_request(&mut self, i: usize, id: ChannelId, req: ChannelRequest, seq: Option<u64>) {
        let Some(p) = self.pairs.get(i) else { return };
        if p.refused {
            self.refused_request(id, &req, seq);
            return;
        }
        let session = p.kind == super::pairs::Kind::Session;
        let unstarted = session && !p.started;
        match &req {
            ChannelRequest::PtyReq {
                term,
                cols,
                rows,
                modes,
                ..
            } => {
                p.pty = Some(super::hooks::pty_info(term, *cols, *rows, modes));
            }
            // Once per session channel. sshd takes a second start request after refusing the
            // first (a subsystem it lacks, then an `exec`), which would run a command that
            // neither the audit trail nor the log's header names, and feed a shell's bytes to
            // the SFTP audit. No client sends one: it is refused here.
            ChannelRequest::Shell | ChannelRequest::Exec { .. } | ChannelRequest::Subsystem { .. }
                if session =>
            {
                if !unstarted {
                    return self.second_start_request(id, &req, seq);
                }
                if !self.start_session(i, id, &req, seq) {
                    return;
                }
            }
            // What the command will run with is part of what it does (`sh -c "$LC_CMD"`):
            // kept for the start's audit event and the log's header. Bounded: past the
            // bound a variable is refused here, not passed on unaudited.
            ChannelRequest::Env { name, value } if unstarted => {
                let entry = format!("{name}={}", String::from_utf8_lossy(value));
                let kept: usize = p.env.iter().map(String::len).sum();
                if p.env.len() >= MAX_ENV || kept + entry.len() > MAX_ENV_BYTES {
                    if let Some(s) = seq {
                        self.hops[0].session.connection().reply_to(id, s, false);
                    }
                    return;
                }
                p.env.push(entry);
            }
            ChannelRequest::X11Req { screen, .. } => {
                let detail = Some(format!("screen {screen}"));
                return self.ask_grant(i, id, req.clone(), seq, Grant::X11, self.forwarding.x11, detail);
            }
            ChannelRequest::AuthAgentReq => {
                return self.ask_grant(i, id, req, seq, Grant::Agent, self.forwarding.agent, None);
            }
            _ => {}
        }
        self.forward(i, Hop::Front, req, seq);
    }

    fn target_request(&mut self, i: usize, req: ChannelRequest, seq: Option<u64>) {
        let Some(p) = self.pairs.get(i) else { return };
        match &req {
            ChannelRequest::ExitStatus { status } => {
                self.totals.exit_status = Some(*status);
                if let Some(r) = p.rec.as_ref().filter(|_| !p.exit_recorded) {
                    r.exit_now(Recorder::exit_status(*status));
                    p.exit_recorded = true;
                }
            }
            ChannelRequest::ExitSignal {
                signal,
                core_dumped,
                message,
                ..
            } => {
                if let Some(r) = p.rec.as_ref().filter(|_| !p.exit_recorded) {
                    let msg = (!message.is_empty()).then(|| message.clone());
                    r.exit_now(Recorder::exit_signal(signal.clone(), *core_dumped, msg));
                    p.exit_recorded = true;
                }
            }
            _ => {}
        }
        self.forward(i, Hop::Up, req, seq);
    }

    /// Sends `req` from hop `from` on to the twin channel; its answer (if `seq`) goes back.
    fn forward(&mut self, i: usize, from: Hop, req: ChannelRequest, seq: Option<u64>) {
        let to = from.other();
        let Some(p) = self.pairs.get(i) else { return };
        let twin = p.ids[to.i()].filter(|_| !p.toward[to.i()].close_sent);
        let open = twin.is_some_and(|t| self.hops[to.i()].session.connection().is_open(t));
        match (twin, open) {
            (Some(t), true) => {
                self.hops[to.i()]
                    .session
                    .connection()
                    .request(t, req, seq.is_some());
                if let Some(s) = seq {
                    p.routes[to.i()].push_back(Route::Answer(s));
                }
            }
            _ => {
                if let (Some(s), Some(id)) = (seq, p.ids[from.i()]) {
                    self.hops[from.i()].session.connection().reply_to(id, s, false);
                }
            }
        }
    }

    /// Agent or X11 forwarding: refused unless the policy grants it; otherwise asked of
    /// the target, which must say yes before its channels of that kind are accepted.
    #[allow(clippy::too_many_arguments)]
    fn ask_grant(
        &mut self,
        i: usize,
        id: ChannelId,
        req: ChannelRequest,
        seq: Option<u64>,
        grant: Grant,
        allowed: bool,
        detail: Option<String>,
    ) {
        let Some(p) = self.pairs.get(i) else { return };
        let twin = p.ids[Hop::Up.i()].filter(|_| !p.toward[Hop::Up.i()].close_sent);
        let Some(t) = twin.filter(|_| allowed) else {
            self.channel_event(&format!("{}_refused", grant.label()), None);
            if let Some(s) = seq {
                self.hops[0].session.connection().reply_to(id, s, false);
            }
            return;
        };
        self.hops[1].session.connection().request(t, req, true);
        p.routes[Hop::Up.i()].push_back(Route::Grant {
            grant,
            answer: seq,
            detail,
        });
    }

    /// Hop `h` answered a request we sent on its channel `id`.
    pub(super) fn on_reply(&mut self, h: Hop, id: ChannelId, success: bool) {
        let Some(i) = self.pairs.find(h, id) else { return };
        let Some(p) = self.pairs.get(i) else { return };
        let Some(route) = p.routes[h.i()].pop_front() else {
            return;
        };
        let twin = p.ids[h.other().i()];
        match route {
            Route::Answer(seq) => {
                if let Some(t) = twin {
                    self.hops[h.other().i()]
                        .session
                        .connection()
                        .reply_to(t, seq, success);
                }
            }
            Route::Grant {
                grant,
                answer,
                detail,
            } => {
                // The first grant of each kind is always audited; a client repeating the
                // request on its channels gets its repeats counted past the cap.
                let mut first = false;
                if success {
                    let granted = match grant {
                        Grant::Agent => &mut self.grants.agent,
                        Grant::X11 => &mut self.grants.x11,
                    };
                    first = !std::mem::replace(granted, true);
                }
                if let (Some(s), Some(t)) = (answer, twin) {
                    self.hops[0].session.connection().reply_to(t, s, success);
                }
                match (success, first) {
                    (true, true) => self.channel_allowed(grant.label(), detail),
                    (true, false) => self.channel_event(grant.label(), detail),
                    (false, _) => self.channel_event(&format!("{}_failed", grant.label()), detail),
                }
            }
        }
    }

    // ---- global requests --------------------------------------------------------------

    pub(super) fn on_global(&mut self, h: Hop, req: GlobalRequest, want_reply: bool) {
        if h == Hop::Up {
            // The target's host keys (`hostkeys-00@openssh.com`) are not the client's to
            // learn (it knows the derived key); its keepalives are answered here.
            if want_reply {
                self.hops[1]
                    .session
                    .connection()
                    .global_reply(false, Bytes::new());
            }
            return;
        }
        let slot = want_reply.then(|| {
            self.globals.client.push_back(None);
            self.globals.base + self.globals.client.len() as u64 - 1
        });
        // Only a logged-in target is asked anything on the client's behalf.
        let up_gone = self.hops[1].gone
            || self.globals.up.len() >= MAX_GLOBAL
            || !matches!(self.auth, super::AuthState::Authorized { .. });
        match req {
            GlobalRequest::TcpipForward { address, port } => {
                let what = format!("{address}:{port}");
                let allowed = self.forwarding.remote && self.refusal().is_none() && !up_gone;
                if !allowed || !self.grants.remote_asked(&address, port) {
                    self.channel_event("remote_forwarding_refused", Some(what));
                    return self.answer_global(slot, false, Bytes::new());
                }
                let req = GlobalRequest::TcpipForward {
                    address: address.clone(),
                    port,
                };
                self.hops[1].session.connection().global_request(req, true);
                self.globals
                    .up
                    .push_back(GlobalRoute::RemoteForward { address, port, slot });
            }
            GlobalRequest::CancelTcpipForward { address, port } => {
                if !self.forwarding.remote || up_gone {
                    return self.answer_global(slot, false, Bytes::new());
                }
                // Forgotten first: once the client stops listening, a connection the target
                // still reports has nowhere legitimate to go.
                self.grants.remote_cancelled(&address, port);
                let req = GlobalRequest::CancelTcpipForward { address, port };
                self.hops[1].session.connection().global_request(req, true);
                self.globals.up.push_back(GlobalRoute::Answer(slot));
            }
            GlobalRequest::Keepalive if !up_gone => {
                self.hops[1]
                    .session
                    .connection()
                    .global_request(GlobalRequest::Keepalive, want_reply);
                if want_reply {
                    self.globals.up.push_back(GlobalRoute::Answer(slot));
                }
            }
            GlobalRequest::NoMoreSessions if !up_gone => {
                self.hops[1]
                    .session
                    .connection()
                    .global_request(GlobalRequest::NoMoreSessions, false);
                // Answered here, as sshd answers it (success): the target's own answer is not
                // asked for, and an unanswered slot would hold every later reply back.
                self.answer_global(slot, true, Bytes::new());
            }
            _ => self.answer_global(slot, false, Bytes::new()),
        }
    }

    /// The target answered a global request of ours.
    pub(super) fn on_global_reply(&mut self, h: Hop, success: bool, data: Bytes) {
        if h != Hop::Up {
            return;
        }
        match self.globals.up.pop_front() {
            Some(GlobalRoute::Answer(slot)) => self.answer_global(slot, success, data),
            Some(GlobalRoute::RemoteForward { address, port, slot }) => {
                let bound = match (success, port) {
                    (false, _) => None,
                    (true, 0) => data
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                    (true, p) => Some(p),
                };
                self.grants.remote_answered(&address, port, bound);
                match bound {
                    Some(b) => self.channel_allowed("remote_forwarding", Some(format!("{address}:{b}"))),
                    None => self.channel_event("remote_forwarding_failed", Some(format!("{address}:{port}"))),
                }
                self.answer_global(slot, bound.is_some(), data);
            }
            None => {}
        }
    }

    /// Answers the client's global request `slot`; answers go out in request order.
    fn answer_global(&mut self, slot: Option<u64>, ok: bool, data: Bytes) {
        let Some(slot) = slot else { return };
        let g = &mut self.globals;
        if let Some(s) = slot
            .checked_sub(g.base)
            .and_then(|k| g.client.get_mut(k as usize))
        {
            *s = Some((ok, data));
        }
        while let Some(Some(_)) = g.client.front() {
            let Some(Some((ok, data))) = g.client.pop_front() else {
                break;
            };
            g.base += 1;
            self.hops[0].session.connection().global_reply(ok, data);
        }
    }
}
