//! Access policies (seed 004 / Cloudflare Access for Infrastructure semantics): applications
//! select targets by hostname, protocol and port; their policies allow or block with
//! `include` (any), `require` (all) and `exclude` (none) rules over selectors, plus the
//! connection context — the unix logins a policy allows. Default deny.
//!
//! Evaluation takes the policies of the applications covering (target hostname, port), in
//! precedence order; the first whose rules match the identity decides. An allow policy that
//! does not list the requested login does not decide: a later one may. Applications are
//! indexed by hostname, so the cost does not grow with unrelated policies or targets.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{identity::Identity, split_tunnel::Cidr, targets::canonical};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Email(String),
    EmailDomain(String),
    Group(String),
    Source(Cidr),
    Vnet(String),
    Everyone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Block,
}

#[derive(Clone, Debug)]
pub struct Policy {
    pub name: String,
    pub application: String,
    pub action: Action,
    pub precedence: i64,
    pub include: Vec<Selector>,
    pub require: Vec<Selector>,
    pub exclude: Vec<Selector>,
    /// Unix logins this policy allows.
    pub logins: Vec<String>,
    /// Also allow the identity's email prefix as login (seed 002).
    pub email_prefix_login: bool,
    /// Allow the session's client to open local port forwardings (`ssh -L`).
    pub local_forwarding: bool,
    /// Allow remote port forwardings (`ssh -R`): the target listens, the client connects.
    pub remote_forwarding: bool,
    /// Allow agent forwarding (`ssh -A`) to the target.
    pub agent_forwarding: bool,
    /// Allow X11 forwarding (`ssh -X` / `-Y`): the target's X clients reach the client's display.
    pub x11_forwarding: bool,
}

/// Which targets an application covers: a hostname (lowercase) or every target (`*`),
/// and the ports.
#[derive(Clone, Debug)]
pub struct Criterion {
    pub hostname: String,
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug)]
pub struct Application {
    pub name: String,
    pub criteria: Vec<Criterion>,
}

/// Who wants what.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub identity: &'a Identity,
    pub source: IpAddr,
    pub vnet: &'a str,
    pub target: &'a str,
    pub port: u16,
    pub login: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No policy of an application covering the target matched the identity.
    NoPolicy,
    /// A block policy matched.
    Blocked,
    /// Policies matched the identity but none allows this login.
    LoginNotAllowed,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPolicy => "no_policy",
            Self::Blocked => "blocked_by_policy",
            Self::LoginNotAllowed => "login_not_allowed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: Result<(), DenyReason>,
    /// The policy that decided (for a login mismatch: the last that matched the identity).
    pub policy: Option<String>,
    /// The rule of that policy that matched, e.g. `include group=ops`.
    pub rule: Option<String>,
    /// Why each policy considered did or did not decide, in evaluation order.
    pub trace: Vec<String>,
    /// What the allowing policy grants beyond a session.
    pub local_forwarding: bool,
    pub remote_forwarding: bool,
    pub agent_forwarding: bool,
    pub x11_forwarding: bool,
}

/// The policies that apply to one port of a hostname, in precedence order.
type PortPolicies = Vec<(u16, Arc<[Arc<Policy>]>)>;
/// The same while the index is built.
type Building = Vec<(u16, Vec<Arc<Policy>>)>;

/// Policies indexed for evaluation.
#[derive(Clone, Debug, Default)]
pub struct Engine {
    /// hostname (lowercase) → its ports' policies.
    by_host: HashMap<String, PortPolicies>,
    /// Applications covering every target.
    wildcard: PortPolicies,
    policies: usize,
}

/// The order policies of several applications covering one target are tried in: by
/// precedence, and at equal precedence a block first. (Within one application precedence
/// is unique; across applications a tie must not let an allow win by the order the
/// applications happen to be listed in.)
fn order(p: &Policy) -> (i64, bool) {
    (p.precedence, p.action != Action::Block)
}

impl Engine {
    /// Builds the index. Policies are sorted by [`order`] (configuration order among
    /// equals); a target covered by several applications sees their policies merged so.
    pub fn new(applications: &[Application], policies: Vec<Policy>) -> Self {
        let mut per_app: HashMap<&str, Vec<Arc<Policy>>> = HashMap::new();
        let n = policies.len();
        let mut policies: Vec<Arc<Policy>> = policies.into_iter().map(Arc::new).collect();
        policies.sort_by_key(|p| p.precedence);
        for p in &policies {
            per_app.entry(p.application.as_str()).or_default().push(p.clone());
        }
        let mut by_host: HashMap<String, Building> = HashMap::new();
        let mut wildcard: Building = Vec::new();
        for app in applications {
            let ps = per_app.get(app.name.as_str()).cloned().unwrap_or_default();
            for c in &app.criteria {
                let list = if c.hostname == "*" {
                    &mut wildcard
                } else {
                    by_host.entry(c.hostname.to_ascii_lowercase()).or_default()
                };
                for port in &c.ports {
                    match list.iter_mut().find(|(p, _)| p == port) {
                        Some((_, v)) => v.extend(ps.iter().cloned()),
                        None => list.push((*port, ps.clone())),
                    }
                }
            }
        }
        let finish = |v: Building| -> PortPolicies {
            v.into_iter()
                .map(|(port, mut ps)| {
                    ps.sort_by_key(|p| order(p));
                    (port, ps.into())
                })
                .collect()
        };
        Self {
            by_host: by_host.into_iter().map(|(h, v)| (h, finish(v))).collect(),
            wildcard: finish(wildcard),
            policies: n,
        }
    }

    pub fn len(&self) -> usize {
        self.policies
    }

    pub fn is_empty(&self) -> bool {
        self.policies == 0
    }

    /// The policies that apply to (target, port), in precedence order.
    fn candidates(&self, target: &str, port: u16) -> Vec<&Arc<Policy>> {
        let mut out: Vec<&Arc<Policy>> = Vec::new();
        let host = self
            .by_host
            .get(target)
            .or_else(|| self.by_host.get(&target.to_ascii_lowercase()));
        for list in [host.map(Vec::as_slice).unwrap_or(&[]), self.wildcard.as_slice()] {
            for (p, ps) in list {
                if *p == port {
                    out.extend(ps.iter());
                }
            }
        }
        if !self.wildcard.is_empty() && host.is_some() {
            out.sort_by_key(|p| order(p));
        }
        out
    }

    /// Decides a request (the per-connection path: no trace is built).
    pub fn evaluate(&self, r: &Request<'_>) -> Decision {
        self.decide(r, false)
    }

    /// Decides a request and records why each policy considered did or did not decide.
    pub fn explain(&self, r: &Request<'_>) -> Decision {
        self.decide(r, true)
    }

    fn decide(&self, r: &Request<'_>, tracing: bool) -> Decision {
        let mut trace = Vec::new();
        let mut note = |f: &dyn Fn() -> String| {
            if tracing {
                trace.push(f());
            }
        };
        let mut login_miss: Option<&Arc<Policy>> = None;
        let mut considered = false;
        for p in self.candidates(r.target, r.port) {
            considered = true;
            let Some(inc) = matches(p, r) else {
                note(&|| format!("{}: identity did not match its rules", p.name));
                continue;
            };
            let rule = || format!("include {}", describe(inc));
            match p.action {
                Action::Block => {
                    note(&|| format!("{}: block ({})", p.name, rule()));
                    return Decision {
                        allow: Err(DenyReason::Blocked),
                        policy: Some(p.name.clone()),
                        rule: Some(rule()),
                        trace,
                        local_forwarding: false,
                        remote_forwarding: false,
                        agent_forwarding: false,
                        x11_forwarding: false,
                    };
                }
                Action::Allow if login_allowed(p, r) => {
                    note(&|| format!("{}: allow ({}) as {}", p.name, rule(), r.login));
                    return Decision {
                        allow: Ok(()),
                        policy: Some(p.name.clone()),
                        rule: Some(rule()),
                        trace,
                        local_forwarding: p.local_forwarding,
                        remote_forwarding: p.remote_forwarding,
                        agent_forwarding: p.agent_forwarding,
                        x11_forwarding: p.x11_forwarding,
                    };
                }
                Action::Allow => {
                    note(&|| {
                        format!(
                            "{}: matched ({}) but does not allow login {:?}",
                            p.name,
                            rule(),
                            r.login
                        )
                    });
                    login_miss = login_miss.or(Some(p));
                }
            }
        }
        match login_miss {
            Some(p) => {
                let rule = matches(p, r).map(|inc| format!("include {}", describe(inc)));
                Decision {
                    allow: Err(DenyReason::LoginNotAllowed),
                    policy: Some(p.name.clone()),
                    rule,
                    trace,
                    local_forwarding: false,
                    remote_forwarding: false,
                    agent_forwarding: false,
                    x11_forwarding: false,
                }
            }
            None => {
                if !considered {
                    note(&|| format!("no application covers {}:{}", r.target, r.port));
                }
                Decision {
                    allow: Err(DenyReason::NoPolicy),
                    policy: None,
                    rule: None,
                    trace,
                    local_forwarding: false,
                    remote_forwarding: false,
                    agent_forwarding: false,
                    x11_forwarding: false,
                }
            }
        }
    }

    /// Whether any policy could allow this identity to reach (target, port) as some login:
    /// the check made at accept time, before the target is touched.
    pub fn could_allow(&self, r: &Request<'_>) -> bool {
        for p in self.candidates(r.target, r.port) {
            if matches(p, r).is_some() {
                return p.action == Action::Allow;
            }
        }
        false
    }
}

fn login_allowed(p: &Policy, r: &Request<'_>) -> bool {
    p.logins.iter().any(|l| l == r.login) || (p.email_prefix_login && r.identity.email_prefix() == r.login)
}

fn selector_matches(s: &Selector, r: &Request<'_>) -> bool {
    match s {
        Selector::Email(e) => r.identity.email.eq_ignore_ascii_case(e),
        Selector::EmailDomain(d) => r.identity.email_domain().eq_ignore_ascii_case(d),
        Selector::Group(g) => r.identity.groups.iter().any(|x| x == g),
        Selector::Source(c) => cidr_contains(c, canonical(r.source)),
        Selector::Vnet(v) => v == r.vnet,
        Selector::Everyone => true,
    }
}

/// Whether `addr` lies in the prefix `c` (same family only).
pub fn cidr_contains(c: &Cidr, addr: IpAddr) -> bool {
    fn bits(a: IpAddr) -> (bool, u128) {
        match a {
            IpAddr::V4(a) => (true, u32::from(a) as u128),
            IpAddr::V6(a) => (false, u128::from(a)),
        }
    }
    let ((v4a, a), (v4c, n)) = (bits(addr), bits(c.addr));
    if v4a != v4c {
        return false;
    }
    let width = if v4a { 32 } else { 128 };
    let len = (c.len as u32).min(width);
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (a >> shift) == (n >> shift)
}

pub fn describe(s: &Selector) -> String {
    match s {
        Selector::Email(e) => format!("email={e}"),
        Selector::EmailDomain(d) => format!("email_domain={d}"),
        Selector::Group(g) => format!("group={g}"),
        Selector::Source(c) => format!("source={c}"),
        Selector::Vnet(v) => format!("vnet={v}"),
        Selector::Everyone => "everyone".into(),
    }
}

/// `Some(the include selector that matched)` if the policy's rules match the request.
fn matches<'p>(p: &'p Policy, r: &Request<'_>) -> Option<&'p Selector> {
    let inc = p.include.iter().find(|s| selector_matches(s, r))?;
    if !p.require.iter().all(|s| selector_matches(s, r)) {
        return None;
    }
    if p.exclude.iter().any(|s| selector_matches(s, r)) {
        return None;
    }
    Some(inc)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pol(
        name: &str,
        app: &str,
        action: Action,
        prec: i64,
        include: Vec<Selector>,
        logins: &[&str],
    ) -> Policy {
        Policy {
            name: name.into(),
            application: app.into(),
            action,
            precedence: prec,
            include,
            require: vec![],
            exclude: vec![],
            logins: logins.iter().map(|s| s.to_string()).collect(),
            email_prefix_login: false,
            local_forwarding: false,
            remote_forwarding: false,
            agent_forwarding: false,
            x11_forwarding: false,
        }
    }

    fn app(name: &str, host: &str, ports: &[u16]) -> Application {
        Application {
            name: name.into(),
            criteria: vec![Criterion {
                hostname: host.into(),
                ports: ports.to_vec(),
            }],
        }
    }

    fn who(email: &str, groups: &[&str]) -> Identity {
        Identity {
            email: email.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn req<'a>(id: &'a Identity, target: &'a str, login: &'a str) -> Request<'a> {
        Request {
            identity: id,
            source: "198.18.1.2".parse().unwrap(),
            vnet: "corp",
            target,
            port: 22,
            login,
        }
    }

    /// Two applications cover web-01 (its own, and one for every host) with an allow and a
    /// block at the same precedence: the block decides, whichever application comes first.
    #[test]
    fn a_block_wins_a_precedence_tie_across_applications() {
        let contractor = who("c@contractor.example", &["ops"]);
        for apps in [
            [app("web", "web-01", &[22]), app("all", "*", &[22])],
            [app("all", "*", &[22]), app("web", "web-01", &[22])],
        ] {
            let e = Engine::new(
                &apps,
                vec![
                    pol(
                        "web-ops",
                        "web",
                        Action::Allow,
                        1,
                        vec![Selector::Everyone],
                        &["root"],
                    ),
                    pol(
                        "no-contractors",
                        "all",
                        Action::Block,
                        1,
                        vec![Selector::EmailDomain("contractor.example".into())],
                        &[],
                    ),
                ],
            );
            assert_eq!(
                e.evaluate(&req(&contractor, "web-01", "root")).allow,
                Err(DenyReason::Blocked),
                "{:?}",
                apps.iter().map(|a| &a.name).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn default_deny_and_first_match_by_precedence() {
        let e = Engine::new(
            &[app("ssh", "web-01", &[22])],
            vec![
                pol(
                    "ops",
                    "ssh",
                    Action::Allow,
                    2,
                    vec![Selector::Group("ops".into())],
                    &["root"],
                ),
                pol(
                    "no-contractors",
                    "ssh",
                    Action::Block,
                    1,
                    vec![Selector::EmailDomain("contractor.example".into())],
                    &[],
                ),
            ],
        );
        let ops = who("a@example.com", &["ops"]);
        assert_eq!(e.evaluate(&req(&ops, "web-01", "root")).allow, Ok(()));
        assert_eq!(
            e.evaluate(&req(&ops, "WEB-01", "root")).allow,
            Ok(()),
            "hostnames are case-insensitive"
        );
        assert_eq!(
            e.evaluate(&req(&ops, "web-02", "root")).allow,
            Err(DenyReason::NoPolicy)
        );
        assert_eq!(
            e.evaluate(&req(&ops, "web-01", "admin")).allow,
            Err(DenyReason::LoginNotAllowed)
        );
        let c = who("b@contractor.example", &["ops"]);
        let d = e.evaluate(&req(&c, "web-01", "root"));
        assert_eq!(d.allow, Err(DenyReason::Blocked));
        assert_eq!(d.policy.as_deref(), Some("no-contractors"));
        assert!(!e.could_allow(&req(&c, "web-01", "root")));
        let nobody = who("c@example.com", &[]);
        assert_eq!(
            e.evaluate(&req(&nobody, "web-01", "root")).allow,
            Err(DenyReason::NoPolicy)
        );
    }

    #[test]
    fn require_exclude_and_email_prefix() {
        let mut p = pol("eng", "ssh", Action::Allow, 1, vec![Selector::Everyone], &[]);
        p.require = vec![
            Selector::EmailDomain("example.com".into()),
            Selector::Vnet("corp".into()),
        ];
        p.exclude = vec![Selector::Source("198.18.1.0/24".parse().unwrap())];
        p.email_prefix_login = true;
        let e = Engine::new(&[app("ssh", "*", &[22])], vec![p]);
        let j = who("jdoe@example.com", &[]);
        let mut r = req(&j, "any-host", "jdoe");
        assert_eq!(
            e.evaluate(&r).allow,
            Err(DenyReason::NoPolicy),
            "excluded by source"
        );
        r.source = "198.18.2.2".parse().unwrap();
        assert_eq!(e.evaluate(&r).allow, Ok(()));
        r.login = "root";
        assert_eq!(e.evaluate(&r).allow, Err(DenyReason::LoginNotAllowed));
        r.login = "jdoe";
        r.vnet = "lab";
        assert_eq!(e.evaluate(&r).allow, Err(DenyReason::NoPolicy), "required vnet");
    }

    #[test]
    fn a_later_policy_may_allow_another_login() {
        let e = Engine::new(
            &[app("ssh", "web-01", &[22])],
            vec![
                pol(
                    "a",
                    "ssh",
                    Action::Allow,
                    1,
                    vec![Selector::Everyone],
                    &["ubuntu"],
                ),
                pol("b", "ssh", Action::Allow, 2, vec![Selector::Everyone], &["root"]),
            ],
        );
        let x = who("x@example.com", &[]);
        let d = e.explain(&req(&x, "web-01", "root"));
        assert_eq!(d.allow, Ok(()));
        assert_eq!(d.policy.as_deref(), Some("b"));
        assert_eq!(d.trace.len(), 2);
        assert_eq!(
            e.evaluate(&req(&x, "web-01", "root")).trace.len(),
            0,
            "no trace on the hot path"
        );
    }

    fn selector() -> impl Strategy<Value = Selector> {
        prop_oneof![
            (0..3u8).prop_map(|i| Selector::Email(format!("u{i}@example.com"))),
            (0..2u8).prop_map(|i| Selector::EmailDomain(format!("d{i}.example"))),
            (0..3u8).prop_map(|i| Selector::Group(format!("g{i}"))),
            (0..2u8).prop_map(|i| Selector::Vnet(format!("v{i}"))),
            Just(Selector::Everyone),
        ]
    }

    fn policy(i: usize) -> impl Strategy<Value = Policy> {
        (
            any::<bool>(),
            0..5i64,
            prop::collection::vec(selector(), 0..3),
            prop::collection::vec(selector(), 0..2),
            prop::collection::vec(selector(), 0..2),
            prop::collection::vec(
                prop_oneof![Just("root".to_string()), Just("ubuntu".to_string())],
                0..2,
            ),
        )
            .prop_map(
                move |(allow, precedence, include, require, exclude, logins)| Policy {
                    name: format!("p{i}"),
                    application: "ssh".into(),
                    action: if allow { Action::Allow } else { Action::Block },
                    precedence,
                    include,
                    require,
                    exclude,
                    logins,
                    email_prefix_login: false,
                    local_forwarding: false,
                    remote_forwarding: false,
                    agent_forwarding: false,
                    x11_forwarding: false,
                },
            )
    }

    proptest! {
        /// The engine agrees with the specification evaluated naively: sort by precedence
        /// (stable; at equal precedence a block first), the first policy matching include-any,
        /// require-all, exclude-none decides
        /// (block denies; allow allows if the login is listed, else evaluation goes on).
        #[test]
        fn engine_matches_the_naive_specification(
            ps in prop::collection::vec(0..6usize, 0..6).prop_flat_map(|v| {
                v.into_iter().enumerate().map(|(i, _)| policy(i)).collect::<Vec<_>>()
            }),
            user in 0..3u8, domain in 0..2u8, groups in prop::collection::vec(0..3u8, 0..3),
            vnet in 0..2u8, root in any::<bool>(),
        ) {
            let id = Identity {
                email: format!("u{user}@d{domain}.example"),
                groups: groups.iter().map(|g| format!("g{g}")).collect(),
            };
            let v = format!("v{vnet}");
            let login = if root { "root" } else { "ubuntu" };
            let r = Request { identity: &id, source: "198.18.1.2".parse().unwrap(), vnet: &v, target: "h", port: 22, login };
            let e = Engine::new(&[app("ssh", "h", &[22])], ps.clone());
            let got = e.evaluate(&r).allow;
            prop_assert_eq!(&e.explain(&r).allow, &got);

            let mut sorted = ps.clone();
            sorted.sort_by_key(|p| (p.precedence, p.action != Action::Block));
            let m = |s: &Selector| selector_matches(s, &r);
            let mut want = Err(DenyReason::NoPolicy);
            for p in &sorted {
                let hit = p.include.iter().any(m) && p.require.iter().all(m) && !p.exclude.iter().any(m);
                if !hit { continue; }
                if p.action == Action::Block { want = Err(DenyReason::Blocked); break; }
                if p.logins.iter().any(|l| l == login) { want = Ok(()); break; }
                want = Err(DenyReason::LoginNotAllowed);
            }
            prop_assert_eq!(got, want);
            // Allowed implies the pre-check would have let the connection in.
            if got.is_ok() { prop_assert!(e.could_allow(&r)); }
            // No policy → never allowed.
            let empty = Engine::new(&[app("ssh", "h", &[22])], vec![]);
            prop_assert_eq!(empty.evaluate(&r).allow, Err(DenyReason::NoPolicy));
        }
    }
}
