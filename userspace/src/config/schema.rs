//! The TOML schema, as serde types. Unknown keys are rejected everywhere; fields that later
//! errors must point at are `Spanned`.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    pub account: Option<AccountConfig>,
    #[serde(default)]
    pub ca: CaConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub recording: RecordingConfig,
    pub identities: Option<IdentitiesConfig>,
    #[serde(default, rename = "vnet")]
    pub vnets: Vec<VnetConfig>,
    #[serde(default, rename = "identity")]
    pub identity: Vec<IdentityConfig>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    #[serde(default, rename = "application")]
    pub applications: Vec<ApplicationConfig>,
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// The Prometheus endpoint: off unless `listen` is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// e.g. `127.0.0.1:9186`: `/metrics`, `/healthz`, `/readyz` over plain HTTP, no
    /// authentication — a loopback or management address.
    pub listen: Option<SocketAddr>,
}

/// Bounds on connections that have not authenticated yet: each holds descriptors (the
/// client's socket, then the target's), and anyone who can reach the gateway can open them.
/// Authenticated sessions are not counted.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// At most this many at once, from all sources; beyond it connections are closed at once.
    /// Default: an eighth of the daemon's descriptor limit (after raising it), 16..=4096.
    pub unauthenticated: Option<Spanned<usize>>,
    /// At most this many at once from one source address, so one source cannot take the
    /// others' share. Default: 32 (at most `unauthenticated`).
    pub unauthenticated_per_source: Option<Spanned<usize>>,
    /// Refusals of one source and reason beyond the first few in this many seconds are
    /// audited together, as one `refused.flood` event with a count. Default: 10.
    pub refusal_audit_interval_secs: Option<Spanned<u64>>,
    /// Connections to one target the proxy may have in progress (dialled, not logged in
    /// yet) for one identity; more wait up to 10 s for a slot, then are refused. Each is an
    /// unauthenticated connection on the target's sshd, which turns new ones away past its
    /// `MaxStartups` (10 by default). Default: 4.
    pub upstream_dials_per_identity: Option<Spanned<usize>>,
    /// The same per target, from all identities. Default: 8.
    pub upstream_dials_per_target: Option<Spanned<usize>>,
}

/// How clients may authenticate to the gateway. None of it is identity (that comes from
/// the source address); it is about which clients can connect at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Out of `"none"`, `"publickey"` (any key whose signature verifies) and
    /// `"keyboard-interactive"` (no prompts). Without `"none"`, clients hardened against
    /// trivial authentication (PuTTY `-no-trivial-auth`, dbclient `DisableTrivialAuth`)
    /// connect with any key of theirs.
    #[serde(default = "default_auth_methods")]
    pub methods: Spanned<Vec<Spanned<String>>>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            methods: default_auth_methods(),
        }
    }
}

fn default_auth_methods() -> Spanned<Vec<Spanned<String>>> {
    let m = |s: &str| Spanned::new(0..0, s.to_string());
    Spanned::new(0..0, vec![m("none"), m("publickey"), m("keyboard-interactive")])
}

/// The proxy's connections to targets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host CAs (OpenSSH public key lines): a target without `host_keys` must then show a
    /// host certificate from one of them that names it (hostname or address).
    #[serde(default)]
    pub host_ca_keys: Vec<Spanned<String>>,
}

/// How the kernel dataplane is installed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Names this gateway's pins, state and lock; two daemons need two instances.
    pub instance: String,
    /// Mount point of the BPF filesystem.
    pub bpffs: PathBuf,
    /// Lock file, target list for `stats`, saved sysctls (runtime state).
    pub state_dir: PathBuf,
    /// What must survive a reboot: the host key each target last showed
    /// (`<data_dir>/<instance>/target-keys`).
    pub data_dir: PathBuf,
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
            data_dir: "/var/lib/portcullis".into(),
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

/// Secrets of the account. Paths are relative to the configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// 32 random bytes: the input of host-key derivation (DESIGN §1.3).
    pub secret: Spanned<PathBuf>,
    /// The CA's OpenSSH private key (Ed25519 by default).
    pub ca_key: Spanned<PathBuf>,
    /// ssh-log-cli `sshkey.pub`; absent: sessions are not recorded.
    pub recording_public_key: Option<Spanned<PathBuf>>,
    /// Ed25519 key (OpenSSH format, 0600, made by `portcullis ca init`) that signs each
    /// recording's trailer; absent: recordings are closed unsigned.
    pub recording_signing_key: Option<Spanned<PathBuf>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// Certificate validity after issue (seed 003: 3 minutes). Bounds authentication only.
    pub lifetime_secs: Spanned<u64>,
    /// Backdating against target clocks running behind.
    pub skew_secs: Spanned<u64>,
    /// The gateway's upstream addresses (addresses or CIDR prefixes): when set, certificates
    /// carry them as the `source-address` critical option, so a certificate taken off the
    /// gateway is refused by targets from anywhere else.
    pub source_address: Vec<Spanned<String>>,
    /// What the certificate names as principal: the requested login (default), or the
    /// identity's email prefix as Cloudflare does (seed 002: targets map it to logins with
    /// `AuthorizedPrincipalsFile`).
    pub principal: PrincipalConfig,
    /// Present each target's derived host key with a host certificate signed by the CA,
    /// naming the target's hostname and addresses: users who add the `@cert-authority`
    /// lines of `portcullis ca known-hosts` connect without the changed-key warning their
    /// known_hosts entry for the real host would give. Follows reloads.
    pub host_certificates: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalConfig {
    Login,
    EmailPrefix,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            lifetime_secs: Spanned::new(0..0, 180),
            skew_secs: Spanned::new(0..0, 30),
            source_address: Vec::new(),
            principal: PrincipalConfig::Login,
            host_certificates: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Append-only JSON-lines file (reopened on SIGHUP, for log rotation).
    pub file: Option<PathBuf>,
    /// Also write events to stdout (journald under systemd).
    pub stdout: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            stdout: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Where sealed session logs are written.
    pub dir: PathBuf,
    /// What to do when a recording cannot be written: refuse/end sessions, or go on.
    pub on_failure: RecordingFailure,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            dir: "/var/lib/portcullis/sessions".into(),
            on_failure: RecordingFailure::FailClosed,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordingFailure {
    FailClosed,
    FailOpen,
}

/// Identities kept in a file of their own (reloaded with the configuration).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesConfig {
    pub file: Spanned<PathBuf>,
}

/// The identities file: `[[identity]]` entries only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitiesFile {
    #[serde(default, rename = "identity")]
    pub identity: Vec<IdentityConfig>,
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
    /// Routing table for the proxy's connections to this vnet's targets (SO_MARK
    /// 0x40000000 | id must select it); absent: the main table.
    pub table: Option<u32>,
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
pub struct IdentityConfig {
    pub email: Spanned<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Source addresses or prefixes its devices use in `vnet`.
    pub sources: Vec<Spanned<String>>,
    #[serde(default = "default_vnet")]
    pub vnet: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub hostname: Spanned<String>,
    pub ipv4: Option<Spanned<Ipv4Addr>>,
    pub ipv6: Option<Spanned<Ipv6Addr>>,
    #[serde(default = "default_vnet")]
    pub vnet: Spanned<String>,
    /// Host keys the target may present (OpenSSH public key lines or `SHA256:` fingerprints);
    /// empty: any (trust on first use, changes audited), or a certificate when
    /// `[upstream] host_ca_keys` is set.
    #[serde(default)]
    pub host_keys: Vec<Spanned<String>>,
}

pub fn default_vnet() -> Spanned<String> {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub name: Spanned<String>,
    pub application: Spanned<String>,
    pub action: ActionConfig,
    pub precedence: Spanned<i64>,
    #[serde(default)]
    pub include: Vec<Spanned<SelectorConfig>>,
    #[serde(default)]
    pub require: Vec<Spanned<SelectorConfig>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<SelectorConfig>>,
    /// Connection context: the unix logins this policy allows.
    #[serde(default)]
    pub logins: Vec<Spanned<String>>,
    /// Also allow the identity's email prefix as login (jdoe@example.com → jdoe).
    #[serde(default)]
    pub email_prefix_login: bool,
    /// What an allowed session may do beyond a shell, command or subsystem: `"local"`
    /// (`ssh -L`), `"remote"` (`ssh -R`), `"agent"` (`ssh -A`), `"x11"` (`ssh -X`/`-Y`).
    /// Everything else stays refused.
    #[serde(default)]
    pub forwarding: Vec<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionConfig {
    Allow,
    Block,
}

/// One selector, written as a one-key table: `{ group = "ops" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SelectorConfig {
    Email(String),
    EmailDomain(String),
    Group(String),
    Source(String),
    Vnet(String),
    Everyone(bool),
}

/// A plain TCP listener bound to one target (hosts without eBPF, tests).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: Spanned<SocketAddr>,
    /// The target's hostname; with `vnet` when the hostname is not unique.
    pub target: Spanned<String>,
    #[serde(default = "default_vnet")]
    pub vnet: Spanned<String>,
    /// The target's port (default 22).
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    22
}
