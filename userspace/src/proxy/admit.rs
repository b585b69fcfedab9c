//! Stage 1: what a connection is (identity from its source address, target and vnet from
//! where it was going) and whether it can possibly be allowed. A refusal here costs the
//! target nothing and tells the client why, in words its SSH client prints.

use std::sync::Arc;

use super::{deny_event, refusal, Conn, Context, Incoming};
use crate::{
    audit::{self, Event},
    policy::Request,
    snapshot::Snapshot,
};

pub struct Admitted {
    pub stream: tokio::net::TcpStream,
    /// The connection's place among those awaiting authentication (`[limits]`): given back
    /// once it is authenticated, since only unauthenticated connections are capped.
    pub permit: crate::admission::Permit,
    pub conn: Conn,
}

/// Audits the connection and either admits it or refuses it (and returns `None`).
pub async fn admit(
    inc: Incoming,
    current: crate::snapshot::Snapshots,
    ctx: Option<Arc<Context>>,
) -> Option<Admitted> {
    let snap: Arc<Snapshot> = current.load_full();
    let session = audit::session_id();
    let vnet = inc.vnet.and_then(|id| snap.targets.vnet_by_id(id));
    let target = inc.vnet.and_then(|id| snap.target(id, inc.target_addr.ip()));
    let identity = inc.vnet.and_then(|id| snap.identities.lookup(id, inc.peer.ip()));
    let mut ev = Event::new("connect", &session);
    ev.identity = identity.map(|i| i.email.clone());
    ev.source = Some(inc.peer);
    ev.vnet = vnet.map(|v| v.name.clone());
    ev.target = target.map(|t| t.target.clone());
    ev.target_addr = Some(inc.target_addr);
    ev.port = Some(inc.target_addr.port());
    let emit = |e: &Event| match &ctx {
        Some(c) => c.audit.emit(e),
        None => crate::audit::Audit::stdout_only().emit(e),
    };
    // Pre-check before the target is touched: the reason audited, and what the user reads.
    let pre: Result<(), (&'static str, String)> = match (inc.vnet, target, identity) {
        (None, _, _) => Err((
            "not_steered",
            "the connection did not come through the gateway's steering".into(),
        )),
        (_, None, _) => Err(("no_target", "not a protected target".into())),
        (_, _, None) => Err((
            "no_identity",
            format!("no identity is registered for {} in this network", inc.peer.ip()),
        )),
        (_, Some(t), Some(id)) => {
            let r = Request {
                identity: id,
                source: inc.peer.ip(),
                vnet: vnet.map(|v| v.name.as_str()).unwrap_or(""),
                target: &t.target,
                port: inc.target_addr.port(),
                login: "",
            };
            if !snap.policies.could_allow(&r) {
                Err((
                    "no_policy",
                    format!("no policy lets {} reach this target", id.email),
                ))
            } else if ctx.is_none() {
                Err(("proxy_unavailable", "the SSH proxy is not available".into()))
            } else {
                Ok(())
            }
        }
    };
    if let Err((reason, why)) = pre {
        // A source refused again and again (a scan, a flood) is audited a few times per
        // interval and then counted, for one `refused.flood` event (see `admission`).
        if inc.permit.audit_refusal(reason) {
            emit(&ev);
            emit(&deny_event(&ev, reason));
        }
        let linger = !inc.permit.under_pressure();
        refusal::refuse(
            inc.stream,
            refusal::Reason::NotAllowed,
            &format!(
                "portcullis: {} {} refused ({reason}): {why} [session {session}]",
                ev.target.as_deref().unwrap_or("-"),
                inc.target_addr
            ),
            linger,
        )
        .await;
        return None;
    }
    emit(&ev);
    let (Some(ctx), Some(target), Some(identity), Some(vnet_id)) = (ctx, target, identity, inc.vnet) else {
        return None;
    };
    let conn = Conn {
        session,
        peer: inc.peer,
        target_addr: inc.target_addr,
        vnet_id,
        vnet: vnet.map(|v| v.name.clone()).unwrap_or_default(),
        target: target.target.clone(),
        identity: identity.clone(),
        base: ev,
        snap: snap.clone(),
        current,
        ctx,
        accepted: std::time::Instant::now(),
    };
    Some(Admitted {
        stream: inc.stream,
        permit: inc.permit,
        conn,
    })
}
