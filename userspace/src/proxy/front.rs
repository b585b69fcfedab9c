//! The client-facing side: authentication and the relay of session channels.
//!
//! The SSH user name is the requested unix login; who the user is comes from the source
//! address (the registry), never from what the client presents. `none`, any verified
//! `publickey` and `keyboard-interactive` without prompts are accepted as ways of saying
//! "go on" (clients differ in which they try); `password` is not offered. On the first
//! attempt the policy decides, and if it allows, a fresh certificate logs in upstream.
//!
//! Requests are forwarded upstream and the target's own reply is returned; data is relayed
//! as the `Bytes` russh decoded, and writes wait for the peer's window, so a slow reader
//! slows its writer instead of filling the proxy's memory.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use russh::{
    client,
    server::{self, Auth, Msg, Session},
    Channel, ChannelId, ChannelMsg, ChannelWriteHalf, Pty, Sig,
};
use tokio::sync::mpsc;

use crate::recording::{
    format::{PtyInfo, CODE_DATA, CODE_EXTENDED, SOURCE_CLIENT, SOURCE_TARGET},
    writer::Recorder,
};
use std::sync::OnceLock;

use super::{
    answers::{within, Answers, Then},
    Context,
};
use crate::{
    audit::{self, Event},
    cert::{self, Grant},
    config::{schema::PrincipalConfig, valid_login},
    daemon::Snapshot,
    identity::Identity,
    policy::Request,
    proxy::upstream::Up,
};

pub struct SessionInfo {
    /// Set once the client is through authentication (for the daemon's auth timeout).
    pub authenticated: Arc<std::sync::atomic::AtomicBool>,
    /// Set at the first authentication attempt: the handshake got that far.
    pub tried_auth: Arc<std::sync::atomic::AtomicBool>,
    /// This session's handle, for the upstream side's `ssh -R` connections.
    pub link: Arc<super::link::Link>,
    pub session: String,
    pub identity: Identity,
    pub vnet: String,
    pub target: String,
    /// The `connect` event, as the base of this session's events.
    pub base: Event,
    pub snap: Arc<Snapshot>,
    pub ctx: Arc<Context>,
    pub up: Arc<client::Handle<Up>>,
    /// The connection's place among those awaiting authentication (`[limits]`): given back
    /// once it is authenticated, since only unauthenticated connections are capped.
    pub permit: Option<crate::admission::Permit>,
}

type UpWrite = Arc<ChannelWriteHalf<client::Msg>>;

struct Chan {
    up: UpWrite,
    /// The target's answers to this channel's requests, taken off the session loop.
    answers: Answers,
    /// Set when the channel's shell/exec/subsystem starts, if sessions are recorded.
    rec: Arc<OnceLock<Recorder>>,
    pty: Option<PtyInfo>,
    /// Follows the client's SFTP requests once the channel runs the sftp subsystem.
    sftp: Arc<std::sync::Mutex<Option<super::sftp::Watcher>>>,
}

/// Hands bytes to the channel's recording, if any. `false`: the recording failed and the
/// configuration says a session may not go on unrecorded.
async fn recorded(
    rec: &OnceLock<Recorder>,
    source: u8,
    code: u32,
    data: &bytes::Bytes,
    fail_closed: bool,
) -> bool {
    match rec.get() {
        // Once failed, the recording is not retried (and not logged again) per packet.
        Some(r) if r.failed() => !fail_closed,
        Some(r) => match r.record(source, code, data.clone()).await {
            Ok(()) => true,
            Err(e) => {
                r.mark_failed();
                tracing::error!(error = %e, recording = %r.path.display(), "recording failed");
                !fail_closed
            }
        },
        None => true,
    }
}

/// Byte counts and exit status, shared with the relay tasks.
#[derive(Default)]
struct Totals {
    from_client: AtomicU64,
    from_target: AtomicU64,
    exit_status: AtomicI64,
}

pub struct Front {
    info: SessionInfo,
    /// The login the policy allowed and upstream accepted.
    authorized: Option<String>,
    /// Why the session cannot go on; told to the user on their first channel.
    refusal: Option<String>,
    chans: HashMap<ChannelId, Chan>,
    /// Channels whose target side opened (in a task of their own, see `answers`), to be
    /// added to `chans` before their first request is handled.
    opened: mpsc::UnboundedReceiver<(ChannelId, Chan)>,
    opened_tx: mpsc::UnboundedSender<(ChannelId, Chan)>,
    /// Channels opened by a refused session: they only carry the explanation.
    refused: std::collections::HashSet<ChannelId>,
    totals: Arc<Totals>,
    started: Instant,
    cert_serial: Option<u64>,
    /// The allowing policy lets this session forward local ports (`ssh -L`).
    local_forwarding: bool,
    /// … and remote ports (`ssh -R`).
    remote_forwarding: bool,
    /// … and the client's agent (`ssh -A`).
    agent_forwarding: bool,
    /// … and X11 (`ssh -X`/`-Y`).
    x11_forwarding: bool,
}

impl Front {
    pub fn new(info: SessionInfo) -> Self {
        let totals = Arc::new(Totals {
            exit_status: AtomicI64::new(-1),
            ..Default::default()
        });
        let (opened_tx, opened) = mpsc::unbounded_channel();
        Self {
            info,
            authorized: None,
            refusal: None,
            chans: HashMap::new(),
            opened,
            opened_tx,
            refused: Default::default(),
            totals,
            started: Instant::now(),
            cert_serial: None,
            local_forwarding: false,
            remote_forwarding: false,
            agent_forwarding: false,
            x11_forwarding: false,
        }
    }

    fn event(&self, name: &'static str) -> Event {
        let mut e = self.info.base.clone();
        e.time = audit::now_rfc3339();
        e.event = name;
        e.cert_serial = self.cert_serial;
        e
    }

    /// A refusal, naming the methods that are offered, when `[auth] methods` leaves this
    /// one out (russh asks the handler whatever it advertised).
    fn unless_offered(&self, offered: bool) -> Option<Auth> {
        self.info.tried_auth.store(true, Ordering::Relaxed);
        (!offered).then(|| Auth::Reject {
            proceed_with_methods: Some(self.info.snap.auth.method_set()),
            partial_success: false,
        })
    }

    /// Decides `login` once: policy, then certificate login upstream. Denials are audited
    /// and turned into a message on the user's first channel.
    async fn authorize(&mut self, login: &str) -> Auth {
        self.info.tried_auth.store(true, Ordering::Relaxed);
        if let Some(l) = &self.authorized {
            return if l == login { Auth::Accept } else { reject() };
        }
        if self.refusal.is_some() {
            return Auth::Accept;
        }
        let mut ev = self.event("deny");
        ev.login = Some(login.chars().filter(|c| !c.is_control()).collect());
        ev.decision = Some("deny");
        if !valid_login(login) {
            ev.reason = Some("invalid_login".into());
            self.info.ctx.audit.emit(&ev);
            self.refusal = Some(format!(
                "{:?} is not a valid unix login",
                ev.login.as_deref().unwrap_or("")
            ));
            return Auth::Accept;
        }
        let r = Request {
            identity: &self.info.identity,
            source: self
                .info
                .base
                .source
                .map(|s| s.ip())
                .unwrap_or([0, 0, 0, 0].into()),
            vnet: &self.info.vnet,
            target: &self.info.target,
            port: self.info.base.port.unwrap_or(22),
            login,
        };
        let d = self.info.snap.policies.evaluate(&r);
        ev.policy = d.policy.clone();
        ev.rule = d.rule.clone();
        if let Err(reason) = d.allow {
            ev.reason = Some(reason.as_str().into());
            self.info.ctx.audit.emit(&ev);
            self.refusal = Some(format!(
                "{} may not log in to {} as {login} ({})",
                self.info.identity.email,
                self.info.target,
                reason.as_str()
            ));
            return Auth::Accept;
        }
        let ctx = &self.info.ctx;
        let grant = Grant {
            pty: true,
            port_forwarding: d.local_forwarding || d.remote_forwarding,
            agent_forwarding: d.agent_forwarding,
            x11_forwarding: d.x11_forwarding,
        };
        let principal = match ctx.ca_cfg.principal {
            PrincipalConfig::Login => login,
            PrincipalConfig::EmailPrefix => self.info.identity.email_prefix(),
        };
        let req = cert::Request {
            principal,
            email: &self.info.identity.email,
            session: &self.info.session,
            lifetime_secs: *ctx.ca_cfg.lifetime_secs.get_ref(),
            skew_secs: *ctx.ca_cfg.skew_secs.get_ref(),
            grant: &grant,
            source_address: ctx.source_address.as_deref(),
        };
        let minted = match cert::mint(&ctx.ca, &req) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "minting a certificate failed");
                ev.reason = Some("certificate_failed".into());
                ctx.audit.emit(&ev);
                self.refusal = Some("the gateway could not issue a certificate".into());
                return Auth::Accept;
            }
        };
        self.cert_serial = Some(minted.serial);
        ev.cert_serial = self.cert_serial;
        let ok = match Arc::get_mut(&mut self.info.up) {
            Some(up) => {
                up.authenticate_openssh_cert(login, Arc::new(minted.key), minted.cert)
                    .await
            }
            None => Err(russh::Error::Inconsistent),
        };
        match ok {
            Ok(r) if r.success() => {
                self.authorized = Some(login.to_string());
                self.local_forwarding = d.local_forwarding;
                self.remote_forwarding = d.remote_forwarding;
                self.agent_forwarding = d.agent_forwarding;
                self.x11_forwarding = d.x11_forwarding;
                let mut s = self.event("session.start");
                s.login = Some(login.to_string());
                s.decision = Some("allow");
                s.policy = d.policy;
                s.rule = d.rule;
                ctx.audit.emit(&s);
                self.info.base.login = Some(login.to_string());
                Auth::Accept
            }
            other => {
                ev.reason = Some("upstream_auth_failed".into());
                ev.rule = Some(format!("{other:?}"));
                ctx.audit.emit(&ev);
                let addr = self
                    .info
                    .base
                    .target_addr
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                self.refusal = Some(format!(
                    "{} ({addr}) did not accept the gateway's certificate for {login}: make the target trust the \
                     gateway CA (`portcullis ca pubkey` into its TrustedUserCAKeys file) and allow principal {login}",
                    self.info.target
                ));
                Auth::Accept
            }
        }
    }

    /// On a refused session's channel: accepts the request and, for one that starts the
    /// session, explains the refusal on stderr and ends with status 1.
    fn refuse(&mut self, id: ChannelId, starts: bool, s: &mut Session) -> Result<bool, russh::Error> {
        if !self.refused.contains(&id) {
            return Ok(false);
        }
        s.channel_success(id)?;
        if starts {
            let why = self.refusal.clone().unwrap_or_default();
            let _ = s.extended_data(id, 1, format!("portcullis: {why}\r\n").into_bytes());
            let _ = s.exit_status_request(id, 1);
            let _ = s.eof(id);
            let _ = s.close(id);
        }
        Ok(true)
    }

    /// Starts the channel's recording. `Ok(false)`: it could not start and sessions may not
    /// run unrecorded — the request was refused with an explanation.
    fn start_recording(
        &mut self,
        id: ChannelId,
        request: String,
        s: &mut Session,
    ) -> Result<bool, russh::Error> {
        let ctx = self.info.ctx.clone();
        let Some(setup) = &ctx.recording else {
            // Recording is off (no public key configured): said per session, like the rest.
            let mut e = self.event("recording.off");
            e.reason = Some("no recording_public_key configured".into());
            ctx.audit.emit(&e);
            return Ok(true);
        };
        let Some((pty, rec)) = self.chan(id).map(|c| (c.pty.clone(), c.rec.clone())) else {
            return Ok(true);
        };
        let name = format!("{}-{}", self.info.session, u32::from(id));
        match Recorder::start(
            &setup.dir,
            &name,
            &setup.key,
            pty,
            Some(request),
            setup.signer.clone(),
        ) {
            Ok((r, task)) => {
                let mut e = self.event("recording.start");
                e.reason = Some(r.path.display().to_string());
                ctx.audit.emit(&e);
                let _ = rec.set(r);
                let mut end = self.event("recording.end");
                let audit = ctx.audit.clone();
                tokio::spawn(async move {
                    match task.await {
                        Ok(Ok(sum)) => {
                            // The digest lets the audit trail expose a log whose tail and
                            // trailer were both cut off.
                            end.reason = Some(format!(
                                "{} blocks={} bytes={} sha256={}{}",
                                sum.path.display(),
                                sum.blocks,
                                sum.data_bytes,
                                sum.digest,
                                if sum.signed { "" } else { " unsigned" }
                            ))
                        }
                        Ok(Err(e)) => end.reason = Some(format!("failed: {e}")),
                        Err(e) => end.reason = Some(format!("failed: {e}")),
                    }
                    end.time = audit::now_rfc3339();
                    audit.emit(&end);
                });
                Ok(true)
            }
            Err(e) => {
                let mut ev = self.event("deny");
                ev.decision = Some(if setup.fail_closed { "deny" } else { "allow" });
                ev.reason = Some("recording_failed".into());
                ev.rule = Some(e.to_string());
                ctx.audit.emit(&ev);
                if !setup.fail_closed {
                    return Ok(true);
                }
                // Accepted so that the client shows the explanation (OpenSSH drops output on a
                // failed request), then ended with status 1; nothing reaches the target.
                s.channel_success(id)?;
                let msg = "portcullis: the session cannot be recorded, so it may not start (recording fail_closed)\r\n";
                let _ = s.extended_data(id, 1, msg.as_bytes().to_vec());
                let _ = s.exit_status_request(id, 1);
                let _ = s.eof(id);
                let _ = s.close(id);
                Ok(false)
            }
        }
    }

    /// Channel `id`, including one whose target side opened since the last request.
    fn chan(&mut self, id: ChannelId) -> Option<&mut Chan> {
        while let Ok((id, c)) = self.opened.try_recv() {
            self.chans.insert(id, c);
        }
        self.chans.get_mut(&id)
    }

    /// The request just forwarded on channel `id` is answered with the target's answer,
    /// in order, by the channel's answer queue; `then` sees the answer too.
    fn answer_from_target(
        &mut self,
        id: ChannelId,
        then: Option<Then>,
        s: &mut Session,
    ) -> Result<(), russh::Error> {
        self.expect(id, true, then, s)
    }

    /// The request just forwarded on channel `id` is answered `ok` now, unless the client
    /// still waits for an earlier answer (then it is the target's, after that one); the
    /// target's answer goes to `then`.
    fn answer_now(
        &mut self,
        id: ChannelId,
        ok: bool,
        then: Option<Then>,
        s: &mut Session,
    ) -> Result<(), russh::Error> {
        let owing = self.chan(id).is_some_and(|c| c.answers.owing());
        self.expect(id, owing, then, s)?;
        if !owing {
            match ok {
                true => s.channel_success(id)?,
                false => s.channel_failure(id)?,
            }
        }
        Ok(())
    }

    fn expect(
        &mut self,
        id: ChannelId,
        to_client: bool,
        then: Option<Then>,
        s: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(c) = self.chan(id) else {
            return s.channel_failure(id);
        };
        if let Err(e) = c.answers.expect(to_client, then) {
            tracing::warn!(session = %self.info.session, error = %e, "closing a flooded channel");
            self.chans.remove(&id);
            return s.close(id);
        }
        Ok(())
    }

    fn up(&mut self, id: ChannelId) -> Option<UpWrite> {
        self.chan(id).map(|c| c.up.clone())
    }

    /// What to do with the target's answer to a forwarding request: on yes, set the
    /// `Link`'s `flag` (channels of that kind from the target are accepted from then on);
    /// audit `kind`, or `kind_failed` on no.
    fn granted_then(
        &self,
        kind: &'static str,
        detail: Option<String>,
        flag: fn(&super::link::Link) -> &std::sync::atomic::AtomicBool,
    ) -> Then {
        let (link, audit, ev) = (
            self.info.link.clone(),
            self.info.ctx.audit.clone(),
            self.event("channel.open"),
        );
        Box::new(move |ok| {
            if ok {
                flag(&link).store(true, Ordering::Relaxed);
            }
            let kind = if ok {
                kind.to_string()
            } else {
                format!("{kind}_failed")
            };
            super::link::emit_channel_event(&audit, ev, &kind, detail);
        })
    }

    fn channel_event(&self, kind: &str, detail: Option<String>) {
        super::link::emit_channel_event(&self.info.ctx.audit, self.event("channel.open"), kind, detail);
    }
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: None,
        partial_success: false,
    }
}

impl Drop for Front {
    /// The client's connection is over: stop what still relays towards it (a pump waiting
    /// for a vanished client's window would keep the target's connection open), and audit
    /// the session's end. What the client sent still drains to the target.
    fn drop(&mut self) {
        self.info.link.stop();
        if self.authorized.is_none() {
            return;
        }
        let mut e = self.event("session.end");
        let t = &self.totals;
        let status = t.exit_status.load(Ordering::Relaxed);
        e.reason = Some(format!(
            "bytes_from_client={} bytes_from_target={} exit_status={} duration_ms={}",
            t.from_client.load(Ordering::Relaxed),
            t.from_target.load(Ordering::Relaxed),
            if status < 0 {
                "none".to_string()
            } else {
                status.to_string()
            },
            self.started.elapsed().as_millis()
        ));
        self.info.ctx.audit.emit(&e);
    }
}

impl server::Handler for Front {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if let Some(no) = self.unless_offered(self.info.snap.auth.none) {
            return Ok(no);
        }
        Ok(self.authorize(user).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self
            .unless_offered(self.info.snap.auth.publickey)
            .unwrap_or(Auth::Accept))
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        // A refused session is only accepted to explain itself: the authentication watchdog
        // still ends it.
        if self.refusal.is_none() {
            self.info.authenticated.store(true, Ordering::Relaxed);
            self.info.permit = None;
        }
        let _ = self.info.link.front.set(session.handle());
        let _ = self
            .info
            .link
            .audit
            .set((self.info.ctx.audit.clone(), self.event("channel.open")));
        Ok(())
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if let Some(no) = self.unless_offered(self.info.snap.auth.publickey) {
            return Ok(no);
        }
        Ok(self.authorize(user).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if let Some(no) = self.unless_offered(self.info.snap.auth.keyboard_interactive) {
            return Ok(no);
        }
        Ok(self.authorize(user).await)
    }

    async fn channel_open_session(
        &mut self,
        ch: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.refusal.is_some() {
            // Told when the client asks for a shell, command or subsystem (OpenSSH shows
            // stderr only once the session has started).
            reply.accept().await;
            self.refused.insert(ch.id());
            drop(ch);
            let _ = session;
            return Ok(());
        }
        let up = self.info.up.clone();
        let opened = self.opened_tx.clone();
        let fail_closed = self.info.ctx.recording.as_ref().is_some_and(|r| r.fail_closed);
        let handle = session.handle();
        let totals = self.totals.clone();
        let link = self.info.link.clone();
        // The target's side is opened by a task of its own: waiting for it here would stop
        // this session's loop (see `answers`).
        tokio::spawn(async move {
            let up = match within(up.channel_open_session()).await {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(error = %why, "target did not open a session channel");
                    reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            let id = ch.id();
            let (mut dr, dw) = ch.split();
            let (mut ur, uw) = up.split();
            let uw = Arc::new(uw);
            let (rtx, rrx) = mpsc::channel(16);
            let rec: Arc<OnceLock<Recorder>> = Arc::default();
            let sftp: Arc<std::sync::Mutex<Option<super::sftp::Watcher>>> = Arc::default();
            let chan = Chan {
                up: uw.clone(),
                answers: Answers::start(id, handle.clone(), rrx),
                rec: rec.clone(),
                pty: None,
                sftp: sftp.clone(),
            };
            // Known to the session before the client can send its first request.
            if opened.send((id, chan)).is_err() {
                return;
            }
            reply.accept().await;
            let (rec_a, totals_a) = (rec.clone(), totals.clone());
            // Target → client.
            let pump = tokio::spawn(async move {
                let (rec, totals) = (rec_a, totals_a);
                // The target's EOF is held until its exit status (or close): a client that closes
                // as soon as it sees EOF (OpenSSH's multiplexing clients do) would otherwise close
                // before the exit status arrives, and russh answers a close at once, losing it.
                let mut eof_held = false;
                let mut closed = false;
                while let Some(m) = ur.wait().await {
                    let r = match m {
                        ChannelMsg::Data { data } => {
                            totals.from_target.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if !recorded(&rec, SOURCE_TARGET, CODE_DATA, &data, fail_closed).await {
                                let msg =
                                    b"\r\nportcullis: the session recording failed; ending the session\r\n";
                                let _ = dw.extended_data_bytes(1, &msg[..]).await;
                                let _ = dw.close().await;
                                closed = true;
                                break;
                            }
                            dw.data_bytes(data).await
                        }
                        ChannelMsg::ExtendedData { data, ext } => {
                            totals.from_target.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if !recorded(&rec, SOURCE_TARGET, CODE_EXTENDED, &data, fail_closed).await {
                                let _ = dw.close().await;
                                closed = true;
                                break;
                            }
                            dw.extended_data_bytes(ext, data).await
                        }
                        ChannelMsg::Eof => {
                            eof_held = true;
                            Ok(())
                        }
                        ChannelMsg::ExitStatus { exit_status } => {
                            totals.exit_status.store(exit_status as i64, Ordering::Relaxed);
                            if let Some(r) = rec.get() {
                                r.exit(Recorder::exit_status(exit_status)).await;
                            }
                            let r = dw.exit_status(exit_status).await;
                            if std::mem::take(&mut eof_held) {
                                let _ = dw.eof().await;
                            }
                            r
                        }
                        ChannelMsg::ExitSignal {
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        } => {
                            if let Some(r) = rec.get() {
                                let msg = (!error_message.is_empty()).then(|| error_message.clone());
                                r.exit(Recorder::exit_signal(
                                    format!("{signal_name:?}"),
                                    core_dumped,
                                    msg,
                                ))
                                .await;
                            }
                            let _ = handle
                                .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                                .await;
                            if std::mem::take(&mut eof_held) {
                                let _ = dw.eof().await;
                            }
                            Ok(())
                        }
                        ChannelMsg::Success => {
                            let _ = rtx.send(true).await;
                            Ok(())
                        }
                        ChannelMsg::Failure => {
                            let _ = rtx.send(false).await;
                            Ok(())
                        }
                        ChannelMsg::Close => {
                            if eof_held {
                                let _ = dw.eof().await;
                            }
                            let _ = dw.close().await;
                            closed = true;
                            break;
                        }
                        _ => Ok(()),
                    };
                    if r.is_err() {
                        break;
                    }
                }
                if !closed {
                    // The target's connection went away without closing the channel (it died):
                    // say so and end the client's channel rather than leave it hanging.
                    let msg = b"\r\nportcullis: the connection to the target was lost\r\n";
                    let _ = dw.extended_data_bytes(1, &msg[..]).await;
                    let _ = dw.close().await;
                }
            });
            link.track(pump.abort_handle());
            // Client → target.
            tokio::spawn(async move {
                while let Some(m) = dr.wait().await {
                    let r = match m {
                        ChannelMsg::Data { data } => {
                            totals.from_client.fetch_add(data.len() as u64, Ordering::Relaxed);
                            if !recorded(&rec, SOURCE_CLIENT, CODE_DATA, &data, fail_closed).await {
                                let _ = uw.close().await;
                                break;
                            }
                            if let Some(w) = sftp.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                                w.feed(&data);
                            }
                            uw.data_bytes(data).await
                        }
                        ChannelMsg::ExtendedData { data, ext } => uw.extended_data_bytes(ext, data).await,
                        ChannelMsg::Eof => uw.eof().await,
                        ChannelMsg::Close => {
                            let _ = uw.close().await;
                            break;
                        }
                        // Requests are handled by the callbacks below, in order, with replies.
                        _ => Ok(()),
                    };
                    if r.is_err() {
                        break;
                    }
                }
            });
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        id: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        modes: &[(Pty, u32)],
        s: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.refuse(id, false, s)? {
            return Ok(());
        }
        if let Some(c) = self.chan(id) {
            c.pty = Some(PtyInfo {
                term: Some(term.to_string()),
                width: cols,
                height: rows,
                modes: modes.iter().map(|(m, v)| (format!("{m:?}"), *v)).collect(),
            });
        }
        if let Some(w) = self.up(id) {
            w.request_pty(true, term, cols, rows, pw, ph, modes).await?;
        }
        // Answered at once: a client sends its next requests (agent, env) without waiting,
        // and russh keeps only the last request's "reply wanted" flag.
        let session = self.info.session.clone();
        let then: Then = Box::new(move |ok| {
            if !ok {
                tracing::warn!(session, "the target refused a terminal");
            }
        });
        self.answer_now(id, true, Some(then), s)
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        k: &str,
        v: &str,
        s: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.refuse(id, false, s)? {
            return Ok(());
        }
        if let Some(w) = self.up(id) {
            w.set_env(true, k, v).await?;
        }
        self.answer_now(id, true, None, s)
    }

    async fn shell_request(&mut self, id: ChannelId, s: &mut Session) -> Result<(), Self::Error> {
        if self.refuse(id, true, s)? || !self.start_recording(id, "shell".into(), s)? {
            return Ok(());
        }
        self.channel_event("shell", None);
        if let Some(w) = self.up(id) {
            w.request_shell(true).await?;
        }
        self.answer_from_target(id, None, s)
    }

    async fn exec_request(&mut self, id: ChannelId, cmd: &[u8], s: &mut Session) -> Result<(), Self::Error> {
        let request = format!("exec {}", String::from_utf8_lossy(cmd));
        if self.refuse(id, true, s)? || !self.start_recording(id, request, s)? {
            return Ok(());
        }
        self.channel_event("exec", Some(String::from_utf8_lossy(cmd).into_owned()));
        if let Some(w) = self.up(id) {
            w.exec(true, cmd.to_vec()).await?;
        }
        self.answer_from_target(id, None, s)
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        s: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.refuse(id, true, s)? || !self.start_recording(id, format!("subsystem {name}"), s)? {
            return Ok(());
        }
        if name == "sftp" {
            let w = super::sftp::Watcher::new(self.info.ctx.audit.clone(), self.event("sftp"));
            if let Some(c) = self.chan(id) {
                *c.sftp.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
            }
        }
        self.channel_event("subsystem", Some(name.to_string()));
        if let Some(w) = self.up(id) {
            w.request_subsystem(true, name).await?;
        }
        self.answer_from_target(id, None, s)
    }

    async fn window_change_request(
        &mut self,
        id: ChannelId,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(w) = self.up(id) {
            w.window_change(cols, rows, pw, ph).await?;
        }
        Ok(())
    }

    async fn signal(&mut self, id: ChannelId, sig: Sig, _s: &mut Session) -> Result<(), Self::Error> {
        if let Some(w) = self.up(id) {
            w.signal(sig).await?;
        }
        Ok(())
    }

    async fn channel_close(&mut self, id: ChannelId, _s: &mut Session) -> Result<(), Self::Error> {
        // Taken in first, so that a channel closed before its first request is forgotten too.
        self.chan(id);
        self.chans.remove(&id);
        self.refused.remove(&id);
        Ok(())
    }

    /// X11 forwarding, when the allowing policy grants it: the request (with the client's
    /// fake cookie — the client swaps in the real one when a connection comes back) goes
    /// upstream, the target's answer comes back, and the target's X connections return
    /// through `Up`. Refused otherwise; always answered, so the client's queue of expected
    /// replies stays in step, and audited either way.
    async fn x11_request(
        &mut self,
        id: ChannelId,
        single: bool,
        protocol: &str,
        cookie: &str,
        screen: u32,
        s: &mut Session,
    ) -> Result<(), Self::Error> {
        let up = self
            .up(id)
            .filter(|_| self.x11_forwarding && !self.refused.contains(&id));
        let Some(w) = up else {
            self.channel_event("x11_forwarding_refused", None);
            return s.channel_failure(id);
        };
        w.request_x11(true, single, protocol, cookie, screen).await?;
        // Answered at once, like a terminal; X11 channels from the target are accepted
        // only once the target has said yes.
        let then = self.granted_then("x11_forwarding", Some(format!("screen {screen}")), |l| &l.x11);
        self.answer_now(id, true, Some(then), s)
    }

    // Other forwarding is refused unless the allowing policy grants it; audited either way.
    async fn agent_request(&mut self, id: ChannelId, _s: &mut Session) -> Result<bool, Self::Error> {
        if !self.agent_forwarding || self.refused.contains(&id) {
            self.channel_event("agent_forwarding_refused", None);
            return Ok(false);
        }
        // russh answers the client from the return value, at once (OpenSSH asks for no
        // answer); agent channels from the target are accepted once the target said yes.
        let Some(w) = self.up(id) else { return Ok(false) };
        w.agent_forward(true).await?;
        let then = self.granted_then("agent_forwarding", None, |l| &l.agent);
        if let Some(c) = self.chan(id) {
            if c.answers.expect(false, Some(then)).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        let what = format!("{address}:{port}");
        if !self.remote_forwarding || self.refusal.is_some() {
            self.channel_event("remote_forwarding_refused", Some(what));
            return Ok(false);
        }
        // The target listens; its connections come back through `Up`, which accepts them
        // only on the (address, port) asked for here and granted (see `Link`).
        // A global request: russh answers from the return value, so this one is waited for
        // here, bounded.
        let asked_port = *port;
        self.info.link.remote_asked(address, asked_port);
        let asked = self.info.up.tcpip_forward(address, asked_port);
        match within(asked).await {
            Ok(bound) => {
                if *port == 0 {
                    *port = bound;
                }
                self.info.link.remote_answered(address, asked_port, Some(*port));
                self.channel_event("remote_forwarding", Some(format!("{address}:{port}")));
                Ok(true)
            }
            Err(e) => {
                self.info.link.remote_answered(address, asked_port, None);
                self.channel_event("remote_forwarding_failed", Some(format!("{what}: {e}")));
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.remote_forwarding {
            return Ok(false);
        }
        // Forgotten first: once the client stops listening, a connection the target still
        // reports has nowhere legitimate to go.
        self.info.link.remote_cancelled(address, port);
        let asked = self.info.up.cancel_tcpip_forward(address, port);
        Ok(within(asked).await.is_ok())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        ch: Channel<Msg>,
        host: &str,
        port: u32,
        orig_addr: &str,
        orig_port: u32,
        reply: server::ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        let dest = format!("{host}:{port}");
        if !self.local_forwarding || self.refusal.is_some() {
            self.channel_event("local_forwarding_refused", Some(dest));
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // The target opens the forwarded connection (from its side, as with ssh -L directly),
        // in a task: waiting here would stop this session's loop (see `answers`).
        let (up, link) = (self.info.up.clone(), self.info.link.clone());
        let (audit, ev) = (self.info.ctx.audit.clone(), self.event("channel.open"));
        let (host, orig_addr) = (host.to_owned(), orig_addr.to_owned());
        tokio::spawn(async move {
            let opened = up.channel_open_direct_tcpip(host, port, orig_addr, orig_port);
            match within(opened).await {
                Ok(up) => {
                    super::link::emit_channel_event(&audit, ev, "local_forwarding", Some(dest));
                    reply.accept().await;
                    link.track(super::tunnel::join(ch, up));
                }
                Err(why) => {
                    let detail = Some(format!("{dest}: {why}"));
                    super::link::emit_channel_event(&audit, ev, "local_forwarding_failed", detail);
                    reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }
}
