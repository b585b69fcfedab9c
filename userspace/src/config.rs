//! The operator's TOML configuration: parsing, validation with precise locations, and the
//! derived [`TargetSet`] the dataplane enforces.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::targets::{Ingress, TargetAddr, TargetSet, Vnet};

/// A configuration error: where (file, line, column, field) and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default, rename = "vnet")]
    pub vnets: Vec<VnetConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    #[serde(default, rename = "application")]
    pub applications: Vec<ApplicationConfig>,
}

/// How the kernel dataplane is installed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Names this gateway's pins, state and lock; two daemons need two instances.
    pub instance: String,
    /// Mount point of the BPF filesystem.
    pub bpffs: PathBuf,
    /// Lock file, target list for `stats`, saved sysctls.
    pub state_dir: PathBuf,
    pub xdp_mode: XdpModeConfig,
    /// Routing table that delivers steered packets locally.
    pub route_table: u32,
    /// Priority of the `fwmark` rule (must come before the main table's 32766).
    pub rule_priority: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            instance: "portcullis".into(),
            bpffs: "/sys/fs/bpf".into(),
            state_dir: "/run/portcullis".into(),
            xdp_mode: XdpModeConfig::Auto,
            route_table: 28771,
            rule_priority: 90,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode, falling back to generic (skb) mode where the driver lacks it.
    Auto,
    Native,
    Skb,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnetConfig {
    pub name: Spanned<String>,
    pub id: Spanned<u32>,
    #[serde(default)]
    pub ingress: Vec<Spanned<IngressConfig>>,
    #[serde(default)]
    pub upstream: Vec<Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum IngressConfig {
    Interface(String),
    Vlan(VlanIngress),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlanIngress {
    pub interface: String,
    pub vlan: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub hostname: Spanned<String>,
    pub ipv4: Option<Spanned<Ipv4Addr>>,
    pub ipv6: Option<Spanned<Ipv6Addr>>,
    #[serde(default = "default_vnet")]
    pub vnet: Spanned<String>,
}

fn default_vnet() -> Spanned<String> {
    Spanned::new(0..0, "default".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplicationConfig {
    pub name: Spanned<String>,
    #[serde(rename = "target")]
    pub targets: Vec<TargetCriteria>,
}

/// Which targets an application covers: by hostname (exact, case-insensitive, or `*` for
/// every target), on which ports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetCriteria {
    pub hostname: Spanned<String>,
    #[serde(default = "default_protocol")]
    pub protocol: Spanned<String>,
    #[serde(default = "default_ports")]
    pub ports: Spanned<Vec<u16>>,
}

fn default_protocol() -> Spanned<String> {
    Spanned::new(0..0, "ssh".to_string())
}

fn default_ports() -> Spanned<Vec<u16>> {
    Spanned::new(0..0, vec![22])
}

/// A loaded, validated configuration with its source for error locations.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
    pub targets: TargetSet,
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let at = |span: Option<Range<usize>>, message: String| {
        let (line, column) = line_col(text, span.map(|s| s.start).unwrap_or(0));
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    };
    let config: Config = toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
    let targets = validate(&config).map_err(|(span, msg)| at(Some(span), msg))?;
    Ok(Loaded {
        path: path.to_owned(),
        config,
        targets,
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

type Invalid = (Range<usize>, String);

/// Seed 004's hostname rules: ≤ 253 characters of alphanumerics, `-` and `.`, starting and
/// ending alphanumeric.
pub fn valid_hostname(h: &str) -> bool {
    let b = h.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn validate(c: &Config) -> Result<TargetSet, Invalid> {
    let d = &c.dataplane;
    if d.instance.is_empty()
        || !d
            .instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err((
            0..0,
            format!(
                "dataplane.instance {:?}: expected letters, digits, '-' or '_'",
                d.instance
            ),
        ));
    }
    if !(2..32766).contains(&d.rule_priority) {
        return Err((
            0..0,
            format!(
                "dataplane.rule_priority {}: expected 2..32765 (before the main table)",
                d.rule_priority
            ),
        ));
    }
    if d.route_table == 0 || (253..=255).contains(&d.route_table) {
        return Err((
            0..0,
            format!(
                "dataplane.route_table {}: expected a table id other than 0, 253, 254, 255",
                d.route_table
            ),
        ));
    }

    let mut vnets: Vec<Vnet> = Vec::new();
    let mut names = HashMap::new();
    let mut ingress_seen: HashSet<Ingress> = HashSet::new();
    for v in &c.vnets {
        let id = *v.id.get_ref();
        if id == 0 || id > u16::MAX as u32 {
            return Err((v.id.span(), format!("vnet.id {id}: expected 1..=65535")));
        }
        if vnets.iter().any(|o| o.id as u32 == id) {
            return Err((v.id.span(), format!("vnet.id {id}: used by another vnet")));
        }
        let name = v.name.get_ref();
        if name.is_empty() || names.insert(name.clone(), id as u16).is_some() {
            return Err((
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
                        return Err((
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
                return Err((
                    i.span(),
                    format!("vnet.ingress {:?}: not an interface name", ing.interface),
                ));
            }
            if !ingress_seen.insert(ing.clone()) {
                return Err((
                    i.span(),
                    format!("vnet.ingress {:?}: already an ingress of a vnet", ing.interface),
                ));
            }
            ingress.push(ing);
        }
        let mut upstream = Vec::new();
        for u in &v.upstream {
            if !valid_ifname(u.get_ref()) {
                return Err((
                    u.span(),
                    format!("vnet.upstream {:?}: not an interface name", u.get_ref()),
                ));
            }
            upstream.push(u.get_ref().clone());
        }
        vnets.push(Vnet {
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
        });
    }

    // Ports per hostname selector, from the applications.
    let mut selectors: Vec<(String, BTreeSet<u16>)> = Vec::new();
    let mut app_names = HashSet::new();
    for a in &c.applications {
        if !app_names.insert(a.name.get_ref().clone()) {
            return Err((
                a.name.span(),
                format!("application.name {:?}: used twice", a.name.get_ref()),
            ));
        }
        for t in &a.targets {
            let h = t.hostname.get_ref();
            if h != "*" && !valid_hostname(h) {
                return Err((t.hostname.span(), format!("application.target.hostname {h:?}: expected a hostname (alphanumerics, '-', '.'; ≤ 253 characters) or \"*\"")));
            }
            if t.protocol.get_ref() != "ssh" {
                return Err((
                    t.protocol.span(),
                    format!(
                        "application.target.protocol {:?}: expected \"ssh\"",
                        t.protocol.get_ref()
                    ),
                ));
            }
            if t.ports.get_ref().is_empty() || t.ports.get_ref().contains(&0) {
                return Err((
                    t.ports.span(),
                    "application.target.ports: expected one or more ports in 1..=65535".into(),
                ));
            }
            selectors.push((
                h.to_ascii_lowercase(),
                t.ports.get_ref().iter().copied().collect(),
            ));
        }
    }

    let mut addrs = Vec::new();
    let mut owners: HashMap<(u16, IpAddr), String> = HashMap::new();
    for t in &c.targets {
        let h = t.hostname.get_ref();
        if !valid_hostname(h) {
            return Err((t.hostname.span(), format!("target.hostname {h:?}: expected ≤ 253 characters of alphanumerics, '-' and '.', starting and ending alphanumeric")));
        }
        let Some(&vnet) = names.get(t.vnet.get_ref()) else {
            return Err((
                t.vnet.span(),
                format!("target.vnet {:?}: no [[vnet]] has this name", t.vnet.get_ref()),
            ));
        };
        if t.ipv4.is_none() && t.ipv6.is_none() {
            return Err((
                t.hostname.span(),
                format!("target {h:?}: expected ipv4 and/or ipv6"),
            ));
        }
        let lower = h.to_ascii_lowercase();
        let ports: BTreeSet<u16> = selectors
            .iter()
            .filter(|(sel, _)| sel == "*" || *sel == lower)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        let ips = [
            t.ipv4.as_ref().map(|s| (s.span(), IpAddr::V4(*s.get_ref()))),
            t.ipv6.as_ref().map(|s| (s.span(), IpAddr::V6(*s.get_ref()))),
        ];
        for (span, ip) in ips.into_iter().flatten() {
            if let Some(other) = owners.insert((vnet, ip), h.clone()) {
                return Err((
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
        }
    }
    Ok(TargetSet { vnets, addrs })
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() < 16 && !s.contains(['/', ' ', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Loaded, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    const GOOD: &str = r#"
[[vnet]]
name = "corp"
id = 7
ingress = ["veth0", { interface = "eth1", vlan = 100 }]

[[target]]
hostname = "Web-01"
ipv4 = "198.18.10.10"
ipv6 = "2001:db8::10"
vnet = "corp"

[[application]]
name = "ssh"
target = [{ hostname = "web-01", ports = [22, 2222] }]
"#;

    #[test]
    fn builds_the_target_set() {
        let l = p(GOOD).unwrap();
        let t = &l.targets;
        assert_eq!(t.addrs.len(), 2);
        assert_eq!(t.addrs[0].ports, vec![22, 2222]);
        assert_eq!(t.addrs[0].vnet, 7);
        assert!(t.vnets.iter().any(|v| v.name == "default"));
        let corp = t.vnet_by_id(7).unwrap();
        assert_eq!(
            corp.ingress[1],
            Ingress {
                interface: "eth1".into(),
                vlan: Some(100)
            }
        );
    }

    #[test]
    fn rejects_duplicate_address_with_location() {
        let text =
            format!("{GOOD}\n[[target]]\nhostname = \"db\"\nipv4 = \"198.18.10.10\"\nvnet = \"corp\"\n");
        let e = p(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:"), "{e}");
        assert!(e.contains("already belongs to target \"Web-01\""), "{e}");
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(text.lines().nth(line - 1).unwrap(), "ipv4 = \"198.18.10.10\"");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_hostnames() {
        assert!(p("[[vnet]]\nname=\"a\"\nid=1\nbogus=1\n")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        let e = p("[[target]]\nhostname=\"-bad\"\nipv4=\"198.18.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.toml:2:10"), "{e}");
        let long = "a".repeat(254);
        assert!(p(&format!("[[target]]\nhostname=\"{long}\"\nipv4=\"198.18.0.1\"\n")).is_err());
        assert!(valid_hostname(&"a".repeat(253)));
    }

    #[test]
    fn rejects_dangling_vnet_and_bad_ids() {
        let e = p("[[target]]\nhostname=\"a\"\nipv4=\"198.18.0.1\"\nvnet=\"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no [[vnet]] has this name"), "{e}");
        assert!(p("[[vnet]]\nname=\"a\"\nid=0\n").is_err());
        assert!(p("[[vnet]]\nname=\"a\"\nid=1\n[[vnet]]\nname=\"b\"\nid=1\n").is_err());
    }
}

#[cfg(test)]
mod shipped {
    /// The configurations shipped in configs/ are valid.
    #[test]
    fn shipped_configs_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "toml") {
                super::load(&e.path()).unwrap_or_else(|err| panic!("{err}"));
                n += 1;
            }
        }
        assert!(n >= 2);
    }
}
