//! Validation: from the schema to the domain objects, each error pointing at its field.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::{
    relative_to,
    schema::{ActionConfig, Config, IdentityConfig, IngressConfig, SelectorConfig},
    valid_hostname, valid_login, Bad, Source,
};
use crate::{
    identity::{Identity, Registry},
    policy::{Action, Application, Criterion, Engine, Policy, Selector},
    split_tunnel::Cidr,
    targets::{Ingress, TargetAddr, TargetSet, Vnet},
};

/// The account's secret files, resolved and checked (present, private).
#[derive(Clone, Debug)]
pub struct Account {
    pub secret: PathBuf,
    pub ca_key: PathBuf,
    pub recording_public_key: Option<PathBuf>,
    pub recording_signing_key: Option<PathBuf>,
}

/// A `[[listener]]`: a plain TCP address whose connections go to one target.
#[derive(Clone, Debug)]
pub struct Listener {
    pub listen: SocketAddr,
    pub target: String,
    pub vnet: u16,
    pub addr: SocketAddr,
}

pub(super) struct Built {
    pub targets: TargetSet,
    pub auth: crate::config::AuthMethods,
    pub host_keys: crate::hostcheck::Rules,
    pub identities: Registry,
    pub policies: Engine,
    pub account: Option<Account>,
    pub listeners: Vec<Listener>,
    pub warnings: Vec<String>,
}

type R<T> = Result<T, Bad>;

pub(super) fn build(
    path: &Path,
    c: &Config,
    extra_identities: &[IdentityConfig],
    check_secrets: bool,
) -> R<Built> {
    dataplane(c)?;
    let (vnets, names) = vnets(c)?;
    let apps = applications(c)?;
    let targets = targets(c, &names, &vnets, &apps)?;
    let host_keys = host_keys(c, &names)?;
    let auth = auth_methods(c)?;
    let mut identities = Registry::default();
    for (source, list) in [
        (Source::Main, c.identity.as_slice()),
        (Source::Identities, extra_identities),
    ] {
        for i in list {
            identity(&mut identities, i, &names).map_err(|mut b| {
                b.source = source;
                b
            })?;
        }
    }
    let policies = policies(c, &apps, &names)?;
    ca(c)?;
    limits(c)?;
    let mut warnings = email_prefix_collisions(c, extra_identities);
    warnings.extend(vlan_ingress_without_upstream(c));
    let account = match &c.account {
        Some(a) => {
            let secret = relative_to(path, a.secret.get_ref());
            let ca_key = relative_to(path, a.ca_key.get_ref());
            if check_secrets {
                check_secret(&secret)
                    .and_then(|()| check_secret_length(&secret))
                    .map_err(|m| Bad::at(a.secret.span(), format!("account.secret: {m}")))?;
                check_secret(&ca_key)
                    .map_err(|m| Bad::at(a.ca_key.span(), format!("account.ca_key: {m}")))?;
            }
            let recording_public_key = match &a.recording_public_key {
                Some(p) => {
                    let rp = relative_to(path, p.get_ref());
                    std::fs::metadata(&rp).map_err(|e| {
                        Bad::at(p.span(), format!("account.recording_public_key {}: {e} (create a key pair with `portcullis keygen`)", rp.display()))
                    })?;
                    Some(rp)
                }
                None => None,
            };
            let recording_signing_key = match &a.recording_signing_key {
                Some(p) => {
                    let sk = relative_to(path, p.get_ref());
                    if check_secrets {
                        check_secret(&sk)
                            .map_err(|m| Bad::at(p.span(), format!("account.recording_signing_key: {m}")))?;
                    }
                    Some(sk)
                }
                None => None,
            };
            Some(Account {
                secret,
                ca_key,
                recording_public_key,
                recording_signing_key,
            })
        }
        None => None,
    };
    let listeners = listeners(c, &names, &targets)?;
    Ok(Built {
        targets,
        auth,
        host_keys,
        identities,
        policies: Engine::new(&apps, policies),
        account,
        listeners,
        warnings,
    })
}

fn check_secret_length(p: &Path) -> Result<(), String> {
    use crate::hostkey::MIN_SECRET_BYTES;
    let len = std::fs::metadata(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .len();
    if len < MIN_SECRET_BYTES as u64 {
        return Err(format!(
            "{} holds {len} bytes; at least {MIN_SECRET_BYTES} random bytes are needed, as anyone could derive the gateway's host keys from a shorter secret (move it away and run `portcullis ca init` for a new one; clients will then see new host keys)",
            p.display()
        ));
    }
    Ok(())
}

/// `[ca]`: a bounded lifetime and backdating, and `source_address` prefixes sshd accepts.
fn ca(c: &Config) -> R<()> {
    use crate::cert::{MAX_LIFETIME_SECS, MAX_SKEW_SECS};
    let ca = &c.ca;
    let lifetime = *ca.lifetime_secs.get_ref();
    if !(1..=MAX_LIFETIME_SECS).contains(&lifetime) {
        return Err(Bad::at(
            ca.lifetime_secs.span(),
            format!("ca.lifetime_secs {lifetime}: expected 1..={MAX_LIFETIME_SECS} seconds (a certificate only logs in; the session outlives it)"),
        ));
    }
    let skew = *ca.skew_secs.get_ref();
    if skew > MAX_SKEW_SECS {
        return Err(Bad::at(
            ca.skew_secs.span(),
            format!("ca.skew_secs {skew}: expected 0..={MAX_SKEW_SECS} seconds"),
        ));
    }
    for a in &ca.source_address {
        crate::cert::source_address(&[a.get_ref()])
            .map_err(|e| Bad::at(a.span(), format!("ca.source_address: {e}")))?;
    }
    Ok(())
}

/// `[limits]`: caps of at least one, the per-source one within the global one.
fn limits(c: &Config) -> R<()> {
    let l = &c.limits;
    for (what, v) in [
        ("limits.unauthenticated", &l.unauthenticated),
        ("limits.unauthenticated_per_source", &l.unauthenticated_per_source),
        (
            "limits.upstream_dials_per_identity",
            &l.upstream_dials_per_identity,
        ),
        ("limits.upstream_dials_per_target", &l.upstream_dials_per_target),
    ] {
        if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
            return Err(Bad::at(
                v.span(),
                format!("{what} 0: expected at least 1 (0 would refuse every connection)"),
            ));
        }
    }
    if let (Some(g), Some(p)) = (&l.unauthenticated, &l.unauthenticated_per_source) {
        if p.get_ref() > g.get_ref() {
            return Err(Bad::at(
                p.span(),
                format!(
                    "limits.unauthenticated_per_source {}: more than limits.unauthenticated ({})",
                    p.get_ref(),
                    g.get_ref()
                ),
            ));
        }
    }
    if let Some(i) = l.refusal_audit_interval_secs.as_ref() {
        if !(1..=3600).contains(i.get_ref()) {
            return Err(Bad::at(
                i.span(),
                format!(
                    "limits.refusal_audit_interval_secs {}: expected 1..=3600",
                    i.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

/// Vnets with VLAN ingress and no `upstream`: the forward guard (`dataplane/forward_guard.rs`)
/// matches interfaces by name, and a VLAN device's name is not in the configuration, so
/// while the daemon is down (or a VLAN device is re-created under it) only an upstream rule
/// keeps such a vnet's protected ports from being forwarded. A warning: the operator may
/// guard the path otherwise.
fn vlan_ingress_without_upstream(c: &Config) -> Vec<String> {
    c.vnets
        .iter()
        .filter(|v| v.upstream.is_empty())
        .filter(|v| {
            v.ingress
                .iter()
                .any(|i| matches!(i.get_ref(), super::schema::IngressConfig::Vlan(_)))
        })
        .map(|v| {
            format!(
                "vnet {:?} has VLAN ingress but no upstream interfaces: while the daemon is down, \
                 nothing stops its protected ports from being forwarded from the VLAN (name the \
                 interfaces towards its targets in `upstream`)",
                v.name.get_ref()
            )
        })
        .collect()
}

/// Identities whose email prefixes are equal, when email prefixes name principals
/// (`[ca] principal = "email_prefix"`) or logins (`email_prefix_login`): targets could not
/// tell their certificates apart, or both may log in as the same user. A warning: the
/// operator may mean it (one person, two domains).
fn email_prefix_collisions(c: &Config, extra: &[IdentityConfig]) -> Vec<String> {
    use std::collections::BTreeMap;
    let principal = c.ca.principal == super::schema::PrincipalConfig::EmailPrefix;
    let logins: Vec<&str> = c
        .policies
        .iter()
        .filter(|p| p.email_prefix_login && p.action == ActionConfig::Allow)
        .map(|p| p.name.get_ref().as_str())
        .collect();
    if !principal && logins.is_empty() {
        return Vec::new();
    }
    let mut by_prefix: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in c.identity.iter().chain(extra) {
        let email = i.email.get_ref().as_str();
        let prefix = email.split('@').next().unwrap_or(email);
        let emails = by_prefix.entry(prefix).or_default();
        // One identity may be listed per vnet: the same email is the same person.
        if !emails.iter().any(|e| e.eq_ignore_ascii_case(email)) {
            emails.push(email);
        }
    }
    let mut why = Vec::new();
    if principal {
        why.push("with [ca] principal = \"email_prefix\" their certificates name the same principal, so targets cannot tell them apart".to_string());
    }
    if !logins.is_empty() {
        let names: Vec<String> = logins.iter().map(|n| format!("{n:?}")).collect();
        why.push(format!(
            "email_prefix_login (policy {}) lets each of them log in as that user",
            names.join(", ")
        ));
    }
    by_prefix
        .into_iter()
        .filter(|(_, emails)| emails.len() > 1)
        .map(|(prefix, emails)| {
            format!(
                "identities {} share the email prefix {prefix:?}: {}",
                emails.join(" and "),
                why.join("; ")
            )
        })
        .collect()
}

/// Secrets must exist and be private: refuse group/world access rather than run with a key
/// others may have read.
fn check_secret(p: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(p).map_err(|e| {
        format!(
            "{}: {e} (create the account's keys with `portcullis ca init`)",
            p.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {mode:04o}): chmod 600 it",
            p.display()
        ));
    }
    std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(())
}

fn dataplane(c: &Config) -> R<()> {
    let d = &c.dataplane;
    if d.instance.is_empty()
        || !d
            .instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Bad::at(
            0..0,
            format!(
                "dataplane.instance {:?}: expected letters, digits, '-' or '_'",
                d.instance
            ),
        ));
    }
    if !(2..32766).contains(&d.rule_priority) {
        return Err(Bad::at(
            0..0,
            format!(
                "dataplane.rule_priority {}: expected 2..32765 (before the main table)",
                d.rule_priority
            ),
        ));
    }
    if d.route_table == 0 || (253..=255).contains(&d.route_table) {
        return Err(Bad::at(
            0..0,
            format!(
                "dataplane.route_table {}: expected a table id other than 0, 253, 254, 255",
                d.route_table
            ),
        ));
    }
    Ok(())
}

/// Linux interface names: 1..=15 bytes, no '/', ':' or whitespace. Quotes and backslashes
/// are refused too: names are written into the nftables forward guard.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b':' | b'"' | b'\\' | b'\''))
}

fn vnets(c: &Config) -> R<(Vec<Vnet>, HashMap<String, u16>)> {
    let mut vnets: Vec<Vnet> = Vec::new();
    let mut names = HashMap::new();
    let mut ingress_seen: HashSet<Ingress> = HashSet::new();
    for v in &c.vnets {
        let id = *v.id.get_ref();
        if id == 0 || id > u16::MAX as u32 {
            return Err(Bad::at(v.id.span(), format!("vnet.id {id}: expected 1..=65535")));
        }
        if vnets.iter().any(|o| o.id as u32 == id) {
            return Err(Bad::at(
                v.id.span(),
                format!("vnet.id {id}: used by another vnet"),
            ));
        }
        let name = v.name.get_ref();
        if name.is_empty() || names.insert(name.clone(), id as u16).is_some() {
            return Err(Bad::at(
                v.name.span(),
                format!("vnet.name {name:?}: expected a unique, non-empty name"),
            ));
        }
        let mut ingress = Vec::new();
        for i in &v.ingress {
            let ing = match i.get_ref() {
                IngressConfig::Interface(s) => Ingress {
                    interface: s.clone(),
                    vlan: None,
                },
                IngressConfig::Vlan(v) => {
                    if v.vlan == 0 || v.vlan > 4094 {
                        return Err(Bad::at(
                            i.span(),
                            format!("vnet.ingress vlan {}: expected 1..=4094", v.vlan),
                        ));
                    }
                    Ingress {
                        interface: v.interface.clone(),
                        vlan: Some(v.vlan),
                    }
                }
            };
            if !valid_ifname(&ing.interface) {
                return Err(Bad::at(
                    i.span(),
                    format!("vnet.ingress {:?}: not an interface name", ing.interface),
                ));
            }
            if !ingress_seen.insert(ing.clone()) {
                return Err(Bad::at(
                    i.span(),
                    format!("vnet.ingress {:?}: already an ingress of a vnet", ing.interface),
                ));
            }
            ingress.push(ing);
        }
        let mut upstream = Vec::new();
        for u in &v.upstream {
            if !valid_ifname(u.get_ref()) {
                return Err(Bad::at(
                    u.span(),
                    format!("vnet.upstream {:?}: not an interface name", u.get_ref()),
                ));
            }
            // The egress guard checks that an upstream packet's vnet is the interface's vnet;
            // an interface shared by two vnets could not be checked.
            if let Some(o) = vnets.iter().find(|o| o.upstream.contains(u.get_ref())) {
                return Err(Bad::at(
                    u.span(),
                    format!("vnet.upstream {:?}: already an upstream interface of vnet {:?}; each vnet needs its own", u.get_ref(), o.name),
                ));
            }
            upstream.push(u.get_ref().clone());
        }
        if let Some(t) = v.table {
            // 253 (default), 254 (main) and 255 (local) are the system's own: a vnet's table
            // must be its own, or it routes like a vnet without one (see `shared_addresses`).
            if t == 0 || (253..=255).contains(&t) {
                return Err(Bad::at(
                    v.id.span(),
                    format!("vnet {name:?}: table {t} is not a usable routing table (0, 253 default, 254 main and 255 local are the system's; pick one of its own)"),
                ));
            }
        }
        vnets.push(Vnet {
            table: v.table,
            name: name.clone(),
            id: id as u16,
            ingress,
            upstream,
        });
    }
    if !names.contains_key("default") {
        // The default vnet always exists; with no ingress it steers nothing.
        let id = (1..=u16::MAX)
            .find(|i| !vnets.iter().any(|v| v.id == *i))
            .unwrap_or(1);
        names.insert("default".into(), id);
        vnets.push(Vnet {
            name: "default".into(),
            id,
            ingress: vec![],
            upstream: vec![],
            table: None,
        });
    }
    Ok((vnets, names))
}

/// Applications with their (hostname selector, ports), as the policy engine needs them.
fn applications(c: &Config) -> R<Vec<Application>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for a in &c.applications {
        if !seen.insert(a.name.get_ref().clone()) {
            return Err(Bad::at(
                a.name.span(),
                format!("application.name {:?}: used twice", a.name.get_ref()),
            ));
        }
        let mut criteria = Vec::new();
        for t in &a.targets {
            let h = t.hostname.get_ref();
            if h != "*" && !valid_hostname(h) {
                return Err(Bad::at(t.hostname.span(), format!("application.target.hostname {h:?}: expected a hostname (alphanumerics, '-', '.'; ≤ 253 characters) or \"*\"")));
            }
            if t.protocol.get_ref() != "ssh" {
                return Err(Bad::at(
                    t.protocol.span(),
                    format!(
                        "application.target.protocol {:?}: expected \"ssh\"",
                        t.protocol.get_ref()
                    ),
                ));
            }
            if t.ports.get_ref().is_empty() || t.ports.get_ref().contains(&0) {
                return Err(Bad::at(
                    t.ports.span(),
                    "application.target.ports: expected one or more ports in 1..=65535",
                ));
            }
            criteria.push(Criterion {
                hostname: h.to_ascii_lowercase(),
                ports: t.ports.get_ref().clone(),
            });
        }
        out.push(Application {
            name: a.name.get_ref().clone(),
            criteria,
        });
    }
    Ok(out)
}

fn targets(c: &Config, names: &HashMap<String, u16>, vnets: &[Vnet], apps: &[Application]) -> R<TargetSet> {
    // Ports per hostname selector.
    let mut by_host: HashMap<&str, BTreeSet<u16>> = HashMap::new();
    let mut wildcard: BTreeSet<u16> = BTreeSet::new();
    for a in apps {
        for cr in &a.criteria {
            if cr.hostname == "*" {
                wildcard.extend(cr.ports.iter().copied());
            } else {
                by_host
                    .entry(cr.hostname.as_str())
                    .or_default()
                    .extend(cr.ports.iter().copied());
            }
        }
    }
    let mut addrs = Vec::new();
    let mut owners: HashMap<(u16, IpAddr), String> = HashMap::new();
    let mut by_addr: HashMap<IpAddr, Vec<u16>> = HashMap::new();
    for t in &c.targets {
        let h = t.hostname.get_ref();
        if !valid_hostname(h) {
            return Err(Bad::at(t.hostname.span(), format!("target.hostname {h:?}: expected ≤ 253 characters of alphanumerics, '-' and '.', starting and ending alphanumeric")));
        }
        let Some(&vnet) = names.get(t.vnet.get_ref()) else {
            return Err(Bad::at(
                t.vnet.span(),
                format!("target.vnet {:?}: no [[vnet]] has this name", t.vnet.get_ref()),
            ));
        };
        if t.ipv4.is_none() && t.ipv6.is_none() {
            return Err(Bad::at(
                t.hostname.span(),
                format!("target {h:?}: expected ipv4 and/or ipv6"),
            ));
        }
        let lower = h.to_ascii_lowercase();
        let mut ports = wildcard.clone();
        if let Some(p) = by_host.get(lower.as_str()) {
            ports.extend(p.iter().copied());
        }
        let ips = [
            t.ipv4.as_ref().map(|s| (s.span(), IpAddr::V4(*s.get_ref()))),
            t.ipv6.as_ref().map(|s| (s.span(), IpAddr::V6(*s.get_ref()))),
        ];
        for (span, ip) in ips.into_iter().flatten() {
            if let IpAddr::V6(v6) = ip {
                // One notation per address (issue 11 #3): a mapped address is the IPv4 one;
                // accepted, it would bypass the duplicate check below and overwrite the other
                // target's ports in the dataplane.
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Err(Bad::at(
                        span,
                        format!(
                            "target {h:?}: ipv6 {v6} is an IPv4-mapped address; write it as ipv4 = \"{v4}\""
                        ),
                    ));
                }
            }
            if let Some(other) = owners.insert((vnet, ip), h.clone()) {
                return Err(Bad::at(
                    span,
                    format!(
                        "target {h:?}: address {ip} in vnet {:?} already belongs to target {other:?}",
                        t.vnet.get_ref()
                    ),
                ));
            }
            addrs.push(TargetAddr {
                target: h.clone(),
                vnet,
                addr: ip,
                ports: ports.iter().copied().collect(),
            });
            if let Some(err) = shared_address(&mut by_addr, vnets, vnet, ip, h, span.clone()) {
                return Err(err);
            }
        }
        if ports.is_empty() {
            // Fail closed (issue 11 #4): a target no application selects (a hostname typo,
            // a forgotten application) would have every port forwarded untouched while it
            // looks protected in the configuration. An error, not a warning: a gateway
            // must not start believing it protects a host it does not.
            return Err(Bad::at(
                t.hostname.span(),
                format!("target {h:?}: no [[application]] selects this hostname, so none of its ports would be protected; add it to an application's targets (or remove the target)"),
            ));
        }
    }
    Ok(TargetSet {
        vnets: vnets.to_vec(),
        addrs,
    })
}

/// An address that is a target in several vnets is only told apart by the vnet's routing:
/// the proxy's upstream connection carries `0x40000000 | vnet` and is routed by the vnet's
/// `table`. A vnet without a table uses the main table, which reaches one of the hosts
/// sharing the address — possibly another vnet's (issue 11 #2: a lab session logged in on
/// corp's host). So every vnet sharing an address needs a table of its own.
fn shared_address(
    by_addr: &mut HashMap<IpAddr, Vec<u16>>,
    vnets: &[Vnet],
    vnet: u16,
    ip: IpAddr,
    host: &str,
    span: std::ops::Range<usize>,
) -> Option<Bad> {
    let seen = by_addr.entry(ip).or_default();
    seen.push(vnet);
    if seen.len() < 2 {
        return None;
    }
    let v = |id: u16| vnets.iter().find(|v| v.id == id);
    let name = |id: u16| v(id).map(|v| v.name.as_str()).unwrap_or("?");
    let others: Vec<&str> = seen.iter().filter(|o| **o != vnet).map(|o| name(*o)).collect();
    for id in seen.iter() {
        match v(*id).and_then(|v| v.table) {
            None => {
                return Some(Bad::at(span, format!("target {host:?}: address {ip} is also a target in vnet {:?}, but vnet {:?} has no `table`: its upstream connections would follow the main routing table and could reach another vnet's host; give every vnet that shares addresses its own routing table", others.join("\", \""), name(*id))));
            }
            Some(t) => {
                if let Some(o) = seen
                    .iter()
                    .find(|o| **o != *id && v(**o).and_then(|v| v.table) == Some(t))
                {
                    return Some(Bad::at(span, format!("target {host:?}: address {ip} is a target in vnets {:?} and {:?}, which share routing table {t}: their upstream connections could not be told apart; give each its own table", name(*id), name(*o))));
                }
            }
        }
    }
    None
}

fn auth_methods(c: &Config) -> R<crate::config::AuthMethods> {
    let mut m = crate::config::AuthMethods {
        none: false,
        publickey: false,
        keyboard_interactive: false,
    };
    for s in c.auth.methods.get_ref() {
        match s.get_ref().as_str() {
            "none" => m.none = true,
            "publickey" => m.publickey = true,
            "keyboard-interactive" => m.keyboard_interactive = true,
            "password" => {
                return Err(Bad::at(
                    s.span(),
                    "auth.methods \"password\": not supported (the gateway must not collect the users' secrets; identity comes from the source address)".to_string(),
                ))
            }
            other => {
                return Err(Bad::at(
                    s.span(),
                    format!("auth.methods {other:?}: expected \"none\", \"publickey\" or \"keyboard-interactive\""),
                ))
            }
        }
    }
    if !(m.none || m.publickey || m.keyboard_interactive) {
        return Err(Bad::at(
            c.auth.methods.span(),
            "auth.methods: at least one method is needed".to_string(),
        ));
    }
    Ok(m)
}

/// Pinned host keys per (vnet, address) and the host CAs; see `hostcheck`.
fn host_keys(c: &Config, names: &HashMap<String, u16>) -> R<crate::hostcheck::Rules> {
    use ssh_key::{Fingerprint, PublicKey};
    let key_line = |s: &toml::Spanned<String>, what: &str| {
        PublicKey::from_openssh(s.get_ref().trim()).map_err(|e| {
            Bad::at(
                s.span(),
                format!(
                    "{what} {:?}: expected an OpenSSH public key line ({e})",
                    s.get_ref()
                ),
            )
        })
    };
    let mut rules = crate::hostcheck::Rules::default();
    for t in &c.targets {
        if t.host_keys.is_empty() {
            continue;
        }
        let mut pins = Vec::new();
        for k in &t.host_keys {
            let text = k.get_ref().trim();
            let fp = if text.starts_with("SHA256:") {
                text.parse::<Fingerprint>().map_err(|e| {
                    Bad::at(
                        k.span(),
                        format!("target.host_keys {text:?}: not a SHA256 fingerprint ({e})"),
                    )
                })?
            } else {
                key_line(k, "target.host_keys")?.fingerprint(ssh_key::HashAlg::Sha256)
            };
            pins.push(fp);
        }
        // `targets` has checked the vnet name and that some address is given.
        let vnet = names.get(t.vnet.get_ref()).copied().unwrap_or_default();
        let ips = [
            t.ipv4.as_ref().map(|s| IpAddr::V4(*s.get_ref())),
            t.ipv6.as_ref().map(|s| IpAddr::V6(*s.get_ref())),
        ];
        for ip in ips.into_iter().flatten() {
            rules.pins.insert((vnet, ip), pins.clone());
        }
    }
    for k in &c.upstream.host_ca_keys {
        rules
            .cas
            .push(key_line(k, "upstream.host_ca_keys")?.fingerprint(ssh_key::HashAlg::Sha256));
    }
    Ok(rules)
}

/// `user@domain`: one `@`, something on each side, no white space or control characters.
fn valid_email(e: &str) -> bool {
    e.split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
        && !e.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn identity(reg: &mut Registry, i: &IdentityConfig, names: &HashMap<String, u16>) -> R<()> {
    let email = i.email.get_ref();
    if !valid_email(email) {
        return Err(Bad::at(
            i.email.span(),
            format!("identity.email {email:?}: expected user@domain"),
        ));
    }
    let Some(&vnet) = names.get(i.vnet.get_ref()) else {
        return Err(Bad::at(
            i.vnet.span(),
            format!("identity.vnet {:?}: no [[vnet]] has this name", i.vnet.get_ref()),
        ));
    };
    let mut sources = Vec::new();
    for s in &i.sources {
        let c = Cidr::exact(s.get_ref()).map_err(|e| Bad::at(s.span(), format!("identity.sources: {e}")))?;
        sources.push(c);
    }
    if sources.is_empty() {
        return Err(Bad::at(
            i.email.span(),
            format!("identity {email:?}: expected at least one source address"),
        ));
    }
    reg.add(
        Identity {
            email: email.clone(),
            groups: i.groups.clone(),
        },
        vnet,
        &sources,
    )
    .map_err(|e| Bad::at(i.sources[0].span(), format!("identity {email:?}: {e}")))
}

fn selector(s: &toml::Spanned<SelectorConfig>, names: &HashMap<String, u16>) -> R<Selector> {
    Ok(match s.get_ref() {
        // A selector that can match nobody fails open in `exclude` and `require` rules and
        // in block policies: the notation is checked here.
        SelectorConfig::Email(e) => {
            if !valid_email(e) {
                return Err(Bad::at(
                    s.span(),
                    format!("policy selector email {e:?}: expected user@domain"),
                ));
            }
            Selector::Email(e.clone())
        }
        SelectorConfig::EmailDomain(d) => {
            if d.is_empty() || d.contains('@') || d.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(Bad::at(
                    s.span(),
                    format!("policy selector email_domain {d:?}: expected a domain such as \"example.com\" (no @)"),
                ));
            }
            Selector::EmailDomain(d.clone())
        }
        SelectorConfig::Group(g) => {
            if g.trim().is_empty() || g.trim() != g {
                return Err(Bad::at(
                    s.span(),
                    format!("policy selector group {g:?}: expected a group name without surrounding spaces"),
                ));
            }
            Selector::Group(g.clone())
        }
        SelectorConfig::Source(c) => Selector::Source(
            Cidr::exact(c).map_err(|e| Bad::at(s.span(), format!("policy selector source: {e}")))?,
        ),
        SelectorConfig::Vnet(v) => {
            if !names.contains_key(v) {
                return Err(Bad::at(
                    s.span(),
                    format!("policy selector vnet {v:?}: no [[vnet]] has this name"),
                ));
            }
            Selector::Vnet(v.clone())
        }
        SelectorConfig::Everyone(true) => Selector::Everyone,
        SelectorConfig::Everyone(false) => {
            return Err(Bad::at(
                s.span(),
                "policy selector everyone: expected `everyone = true` (omit it otherwise)",
            ))
        }
    })
}

fn policies(c: &Config, apps: &[Application], names: &HashMap<String, u16>) -> R<Vec<Policy>> {
    let mut out = Vec::new();
    let mut seen_names = HashSet::new();
    let mut seen_prec = HashSet::new();
    for p in &c.policies {
        let name = p.name.get_ref();
        if !seen_names.insert(name.clone()) {
            return Err(Bad::at(
                p.name.span(),
                format!("policy.name {name:?}: used twice"),
            ));
        }
        let app = p.application.get_ref();
        if !apps.iter().any(|a| &a.name == app) {
            return Err(Bad::at(
                p.application.span(),
                format!("policy.application {app:?}: no [[application]] has this name"),
            ));
        }
        if !seen_prec.insert((app.clone(), *p.precedence.get_ref())) {
            return Err(Bad::at(
                p.precedence.span(),
                format!(
                    "policy.precedence {}: another policy of application {app:?} has it",
                    p.precedence.get_ref()
                ),
            ));
        }
        if p.include.is_empty() {
            return Err(Bad::at(
                p.name.span(),
                format!(
                    "policy {name:?}: expected at least one `include` selector (e.g. {{ everyone = true }})"
                ),
            ));
        }
        let mut logins = Vec::new();
        for l in &p.logins {
            if !valid_login(l.get_ref()) {
                return Err(Bad::at(l.span(), format!("policy.logins {:?}: expected a unix user name (lowercase letters, digits, '_', '-', '.'; ≤ 32)", l.get_ref())));
            }
            logins.push(l.get_ref().clone());
        }
        let action = match p.action {
            ActionConfig::Allow => Action::Allow,
            ActionConfig::Block => Action::Block,
        };
        if action == Action::Allow && logins.is_empty() && !p.email_prefix_login {
            return Err(Bad::at(
                p.name.span(),
                format!("policy {name:?}: an allow policy needs `logins` or `email_prefix_login = true`"),
            ));
        }
        let (mut local_forwarding, mut remote_forwarding, mut agent_forwarding, mut x11_forwarding) =
            (false, false, false, false);
        for f in &p.forwarding {
            match f.get_ref().as_str() {
                "local" => local_forwarding = true,
                "remote" => remote_forwarding = true,
                "agent" => agent_forwarding = true,
                "x11" => x11_forwarding = true,
                other => {
                    return Err(Bad::at(
                        f.span(),
                        format!(
                        "policy.forwarding {other:?}: expected \"local\", \"remote\", \"agent\" or \"x11\""
                    ),
                    ))
                }
            }
        }
        let sel = |v: &Vec<toml::Spanned<SelectorConfig>>| {
            v.iter().map(|s| selector(s, names)).collect::<R<Vec<_>>>()
        };
        out.push(Policy {
            name: name.clone(),
            application: app.clone(),
            action,
            precedence: *p.precedence.get_ref(),
            include: sel(&p.include)?,
            require: sel(&p.require)?,
            exclude: sel(&p.exclude)?,
            logins,
            email_prefix_login: p.email_prefix_login,
            local_forwarding,
            remote_forwarding,
            agent_forwarding,
            x11_forwarding,
        });
    }
    Ok(out)
}

fn listeners(c: &Config, names: &HashMap<String, u16>, targets: &TargetSet) -> R<Vec<Listener>> {
    let mut out = Vec::new();
    for l in &c.listeners {
        let Some(&vnet) = names.get(l.vnet.get_ref()) else {
            return Err(Bad::at(
                l.vnet.span(),
                format!("listener.vnet {:?}: no [[vnet]] has this name", l.vnet.get_ref()),
            ));
        };
        let host = l.target.get_ref();
        let found: Vec<&TargetAddr> = targets
            .addrs
            .iter()
            .filter(|t| t.vnet == vnet && t.target.eq_ignore_ascii_case(host))
            .collect();
        let Some(first) = found.iter().find(|t| t.addr.is_ipv4()).or(found.first()) else {
            return Err(Bad::at(
                l.target.span(),
                format!(
                    "listener.target {host:?}: no target has this hostname in vnet {:?}",
                    l.vnet.get_ref()
                ),
            ));
        };
        if found.iter().map(|t| &t.target).collect::<HashSet<_>>().len() > 1 || found.len() > 2 {
            return Err(Bad::at(l.target.span(), format!("listener.target {host:?}: several targets have this hostname; a listener needs exactly one")));
        }
        out.push(Listener {
            listen: *l.listen.get_ref(),
            target: first.target.clone(),
            vnet,
            addr: SocketAddr::new(first.addr, l.port),
        });
    }
    Ok(out)
}
