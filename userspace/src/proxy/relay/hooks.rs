//! What the gateway adds to a session channel: its recording (started with the shell,
//! command or subsystem, and refused with an explanation when it cannot start and
//! sessions may not run unrecorded), the SFTP audit, and the explanation a refused
//! session shows instead of running.

use portcullis_ssh::connection::{parse_pty_modes, ChannelId, ChannelRequest};

use super::{Hop, Relay};
use crate::{
    audit,
    recording::{format::PtyInfo, writer::Recorder},
};

/// A shell, exec or subsystem request as its `channel.open` label, its detail as audited
/// (the command bounded by `audit::command`, a subsystem name by `audit::clip`) and the log
/// header's `request`; `None` for any other request.
fn start_request(req: &ChannelRequest) -> Option<(&'static str, Option<String>, String)> {
    Some(match req {
        ChannelRequest::Shell => ("shell", None, "shell".to_string()),
        ChannelRequest::Exec { command } => {
            let c = String::from_utf8_lossy(command);
            ("exec", Some(audit::command(&c)), format!("exec {c}"))
        }
        ChannelRequest::Subsystem { name } => {
            ("subsystem", Some(audit::clip(name)), format!("subsystem {name}"))
        }
        _ => return None,
    })
}

impl Relay {
    /// The client asks channel `i` (its `id`) to start `req`. `false`: it may not (answered
    /// and explained here); otherwise the recording and the SFTP audit are in place, and
    /// the bytes held until now follow the request to the target.
    pub(super) fn start_session(
        &mut self,
        i: usize,
        id: ChannelId,
        req: &ChannelRequest,
        seq: Option<u64>,
    ) -> bool {
        let Some((label, detail, request)) = start_request(req) else {
            return true;
        };
        if !self.start_recording(i, id, request, seq) {
            return false;
        }
        let sftp = matches!(req, ChannelRequest::Subsystem { name } if name == "sftp");
        let w = sftp
            .then(|| crate::proxy::sftp::Watcher::new(self.conn.ctx.audit.clone(), self.conn.event("sftp")));
        let env = self
            .pairs
            .get(i)
            .map(|p| std::mem::take(&mut p.env))
            .unwrap_or_default();
        self.channel_started(label, detail, &env);
        if let Some(p) = self.pairs.get(i) {
            p.started = true;
            if w.is_none() {
                p.sniff = Some(Vec::with_capacity(9));
            }
            p.sftp = w;
            // Nothing was queued towards the target before the start: the held bytes are
            // the flow.
            let held = std::mem::take(&mut p.held);
            p.toward[Hop::Up.i()] = held;
            p.toward[Hop::Up.i()].eof = std::mem::take(&mut p.held_eof);
        }
        self.pairs.mark(i);
        true
    }

    /// `false`: the recording could not start and the configuration says sessions may not
    /// run unrecorded; the request was refused with an explanation.
    fn start_recording(&mut self, i: usize, id: ChannelId, request: String, seq: Option<u64>) -> bool {
        let ctx = self.conn.ctx.clone();
        let Some(setup) = &ctx.recording else {
            // Recording is off (no public key configured): said per session, like the rest.
            let mut e = self.conn.event("recording.off");
            e.reason = Some("no recording_public_key configured".into());
            ctx.audit.emit(&e);
            return true;
        };
        let Some(p) = self.pairs.get(i) else { return true };
        if p.rec.is_some() {
            return true;
        }
        let name = format!("{}-{}", self.conn.session, self.recordings);
        self.recordings += 1;
        let start = || {
            Recorder::start(
                &setup.dir,
                &name,
                &setup.key,
                p.pty.clone(),
                Some(request),
                p.env.clone(),
                setup.signer.clone(),
            )
        };
        // Creating the log is file I/O (create, write its header, link): on a slow or hung
        // disk the other connections on this worker thread are handed to another one
        // meanwhile rather than wait with it.
        let started = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(start),
            _ => start(),
        };
        match started {
            Ok((r, task)) => {
                let mut e = self.conn.event("recording.start");
                e.reason = Some(r.path.display().to_string());
                if let Some(live) = &self.live {
                    live.recording_started(r.path.clone());
                }
                ctx.audit.emit(&e);
                p.rec = Some(r);
                let mut end = self.conn.event("recording.end");
                let audit = ctx.audit.clone();
                tokio::spawn(async move {
                    end.reason = Some(match task.await {
                        // The digest lets the audit trail expose a log whose tail and
                        // trailer were both cut off; named by its hash (trailer version 2).
                        Ok(Ok(sum)) => format!(
                            "{} blocks={} bytes={} blake3={}{}",
                            sum.path.display(),
                            sum.blocks,
                            sum.data_bytes,
                            sum.digest,
                            if sum.signed { "" } else { " unsigned" }
                        ),
                        Ok(Err(e)) => {
                            crate::metrics::get().recording_failures.inc();
                            format!("failed: {e}")
                        }
                        Err(e) => {
                            crate::metrics::get().recording_failures.inc();
                            format!("failed: {e}")
                        }
                    });
                    end.time = audit::now_rfc3339();
                    audit.emit(&end);
                });
                true
            }
            Err(e) => {
                crate::metrics::get().recording_failures.inc();
                let mut ev = self.conn.event("deny");
                ev.decision = Some(if setup.fail_closed { "deny" } else { "allow" });
                ev.reason = Some("recording_failed".into());
                ev.rule = Some(crate::audit::clip(&e.to_string()));
                ctx.audit.emit(&ev);
                if !setup.fail_closed {
                    return true;
                }
                // Accepted so that the client shows the explanation (OpenSSH drops output on
                // a failed request), then ended with status 1; nothing reaches the target.
                p.refused = true;
                p.held.clear();
                if let Some(up) = p.ids[Hop::Up.i()] {
                    self.hops[1].session.connection().close(up);
                }
                let msg = "portcullis: the session cannot be recorded, so it may not start (recording fail_closed)\r\n";
                self.explain(id, seq, msg);
                false
            }
        }
    }

    /// A start request on a session channel that had one: refused and audited.
    pub(super) fn second_start_request(&mut self, id: ChannelId, req: &ChannelRequest, seq: Option<u64>) {
        // As cheap to repeat as any refused open: under the same cap.
        if !self.past_event_cap() {
            let mut ev = self.conn.event("deny");
            ev.decision = Some("deny");
            ev.reason = Some("second_start_request".into());
            ev.rule = start_request(req).map(|(_, _, request)| audit::clip(&request));
            self.conn.ctx.audit.emit(&ev);
        }
        if let Some(s) = seq {
            self.hops[0].session.connection().reply_to(id, s, false);
        }
    }

    /// A request on a refused session's channel: accepted; one that starts the session is
    /// answered with the refusal on stderr and exit status 1.
    pub(super) fn refused_request(&mut self, id: ChannelId, req: &ChannelRequest, seq: Option<u64>) {
        let starts = matches!(
            req,
            ChannelRequest::Shell | ChannelRequest::Exec { .. } | ChannelRequest::Subsystem { .. }
        );
        if !starts {
            if let Some(s) = seq {
                self.hops[0].session.connection().reply_to(id, s, true);
            }
            return;
        }
        let why = format!("portcullis: {}\r\n", self.refusal().unwrap_or("refused"));
        self.explain(id, seq, &why);
    }

    /// Answers the client's request `seq` with success, writes `text` on stderr, exit
    /// status 1, and ends the channel.
    fn explain(&mut self, id: ChannelId, seq: Option<u64>, text: &str) {
        let c = self.hops[0].session.connection();
        if let Some(s) = seq {
            c.reply_to(id, s, true);
        }
        c.send_extended_data(id, 1, text.as_bytes());
        c.request(id, ChannelRequest::ExitStatus { status: 1 }, false);
        c.eof(id);
        c.close(id);
    }
}

/// The terminal a `pty-req` asks for, for the recording's header (asciicast, scriptreplay).
pub(super) fn pty_info(term: &str, cols: u32, rows: u32, modes: &[u8]) -> PtyInfo {
    PtyInfo {
        term: Some(term.to_string()),
        width: cols,
        height: rows,
        modes: parse_pty_modes(modes)
            .unwrap_or_default()
            .into_iter()
            .map(|(op, v)| (mode_name(op), v))
            .collect(),
    }
}

/// RFC 4254 §8 terminal mode opcodes by name.
fn mode_name(op: u8) -> String {
    const NAMES: &[(u8, &str)] = &[
        (1, "VINTR"),
        (2, "VQUIT"),
        (3, "VERASE"),
        (4, "VKILL"),
        (5, "VEOF"),
        (6, "VEOL"),
        (7, "VEOL2"),
        (8, "VSTART"),
        (9, "VSTOP"),
        (10, "VSUSP"),
        (11, "VDSUSP"),
        (12, "VREPRINT"),
        (13, "VWERASE"),
        (14, "VLNEXT"),
        (15, "VFLUSH"),
        (16, "VSWTCH"),
        (17, "VSTATUS"),
        (18, "VDISCARD"),
        (30, "IGNPAR"),
        (31, "PARMRK"),
        (32, "INPCK"),
        (33, "ISTRIP"),
        (34, "INLCR"),
        (35, "IGNCR"),
        (36, "ICRNL"),
        (37, "IUCLC"),
        (38, "IXON"),
        (39, "IXANY"),
        (40, "IXOFF"),
        (41, "IMAXBEL"),
        (42, "IUTF8"),
        (50, "ISIG"),
        (51, "ICANON"),
        (52, "XCASE"),
        (53, "ECHO"),
        (54, "ECHOE"),
        (55, "ECHOK"),
        (56, "ECHONL"),
        (57, "NOFLSH"),
        (58, "TOSTOP"),
        (59, "IEXTEN"),
        (60, "ECHOCTL"),
        (61, "ECHOKE"),
        (62, "PENDIN"),
        (70, "OPOST"),
        (71, "OLCUC"),
        (72, "ONLCR"),
        (73, "OCRNL"),
        (74, "ONOCR"),
        (75, "ONLRET"),
        (90, "CS7"),
        (91, "CS8"),
        (92, "PARENB"),
        (93, "PARODD"),
        (128, "TTY_OP_ISPEED"),
        (129, "TTY_OP_OSPEED"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == op)
        .map_or_else(|| format!("MODE_{op}"), |(_, name)| (*name).to_string())
}
