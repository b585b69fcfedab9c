//! The decision on the client's first authentication attempt: is this identity allowed to
//! log in to this target as the login it asked for (the SSH user name)? If so, a fresh
//! certificate for the upstream login. Denials are audited here and become the text the
//! user reads on their first channel.

use portcullis_ssh::auth::ClientCredential;

use super::Conn;
use crate::{
    audit::Event,
    cert::{self, Grant},
    config::{schema::PrincipalConfig, valid_login},
    policy::Request,
};

/// What the allowing policy grants beyond a session.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forwarding {
    /// `ssh -L`.
    pub local: bool,
    /// `ssh -R`.
    pub remote: bool,
    /// `ssh -A`.
    pub agent: bool,
    /// `ssh -X`/`-Y`.
    pub x11: bool,
}

// One per connection, moved once: the size of the allowed variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// Log in upstream with `credential`; on success audit `start` (a `session.start`).
    Allow {
        credential: ClientCredential,
        serial: u64,
        forwarding: Forwarding,
        start: Event,
    },
    /// Refused (audited): the client is let in only to read `why` on its first channel.
    Refuse { why: String },
}

/// Decides `login` for the connection `c` (once per connection).
pub fn decide(c: &Conn, login: &str) -> Decision {
    let mut ev = c.event("deny");
    ev.login = Some(login.chars().filter(|ch| !ch.is_control()).collect());
    ev.decision = Some("deny");
    if !valid_login(login) {
        ev.reason = Some("invalid_login".into());
        c.ctx.audit.emit(&ev);
        let why = format!(
            "{:?} is not a valid unix login",
            ev.login.as_deref().unwrap_or("")
        );
        return Decision::Refuse { why };
    }
    // Judged by the configuration in force now, not the one the connection was admitted
    // under (up to the authentication deadline ago): a reload that removes an identity, a
    // group or a policy applies to every login not made yet.
    let now = c.current.load();
    let identity = now.identities.lookup(c.vnet_id, c.peer.ip());
    let Some(identity) = identity.filter(|i| i.email == c.identity.email) else {
        ev.reason = Some("identity_changed".into());
        c.ctx.audit.emit(&ev);
        let why = format!(
            "{} is no longer who {} is (the configuration was reloaded)",
            c.identity.email,
            c.peer.ip()
        );
        return Decision::Refuse { why };
    };
    let r = Request {
        identity,
        source: c.peer.ip(),
        vnet: &c.vnet,
        target: &c.target,
        port: c.target_addr.port(),
        login,
    };
    let d = now.policies.evaluate(&r);
    ev.policy = d.policy.clone();
    ev.rule = d.rule.clone();
    if let Err(reason) = d.allow {
        ev.reason = Some(reason.as_str().into());
        c.ctx.audit.emit(&ev);
        let why = format!(
            "{} may not log in to {} as {login} ({})",
            c.identity.email,
            c.target,
            reason.as_str()
        );
        return Decision::Refuse { why };
    }
    let ctx = &c.ctx;
    let grant = Grant {
        pty: true,
        port_forwarding: d.local_forwarding || d.remote_forwarding,
        agent_forwarding: d.agent_forwarding,
        x11_forwarding: d.x11_forwarding,
    };
    let principal = match ctx.ca_cfg.principal {
        PrincipalConfig::Login => login,
        PrincipalConfig::EmailPrefix => c.identity.email_prefix(),
    };
    if !cert::valid_principal(principal) {
        // sshd splits a certificate's principal on commas when it matches it against
        // `principals="…"` or an AuthorizedPrincipalsFile: `a,root@example.com` would log in
        // wherever `root` is a principal.
        ev.reason = Some("invalid_principal".into());
        ctx.audit.emit(&ev);
        let why = format!("{principal:?} cannot be a certificate principal");
        return Decision::Refuse { why };
    }
    let req = cert::Request {
        principal,
        email: &c.identity.email,
        session: &c.session,
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
            return Decision::Refuse {
                why: "the gateway could not issue a certificate".into(),
            };
        }
    };
    let mut start = c.event("session.start");
    start.login = Some(login.to_string());
    start.decision = Some("allow");
    start.policy = d.policy;
    start.rule = d.rule;
    start.cert_serial = Some(minted.serial);
    Decision::Allow {
        credential: ClientCredential::PublicKey {
            key: minted.key,
            certificate: Some(minted.cert),
        },
        serial: minted.serial,
        forwarding: Forwarding {
            local: d.local_forwarding,
            remote: d.remote_forwarding,
            agent: d.agent_forwarding,
            x11: d.x11_forwarding,
        },
        start,
    }
}

/// The refusal for a target that did not take the gateway's certificate (audited by the
/// caller with the target's answer).
pub fn upstream_refused(c: &Conn, login: &str) -> String {
    format!(
        "{} ({}) did not accept the gateway's certificate for {login}: make the target trust the \
         gateway CA (`portcullis ca pubkey` into its TrustedUserCAKeys file) and allow principal {login}",
        c.target, c.target_addr
    )
}
