//! The SSH interception proxy (DESIGN §1, steps 1–7): two SSH connections per client, both
//! on the project's own engine (`portcullis-ssh`), driven by one task.
//!
//! One connection's story, stage by stage (each a module):
//! 1. [`admit`]: who is connecting, to which target, in which vnet; the pre-check that
//!    refuses (with a message the client prints) before anything touches the target.
//! 2. [`hello`]: identifications exchanged; nothing is dialled before the client has sent
//!    its own.
//! 3. [`dial_slots`] and [`upstream`]: a slot among the connections being set up towards
//!    the target, then the target dialled and taken through its key exchange; its host
//!    key (checked against pins and host CAs, [`crate::hostcheck`]) decides the key the
//!    client sees ([`crate::hostkey`]).
//! 4. [`relay`]: the client's key exchange and authentication; on the first attempt
//!    [`authorize`] decides (policy, certificate) and the target is logged in to; then the
//!    channels are relayed with windows credited only as the other side takes the bytes,
//!    through hooks for recording, the SFTP audit ([`sftp`]) and byte totals, and the
//!    forwarding the policy grants ([`grants`]).
//!
//! Refusals before the key exchange are in [`refusal`].

pub mod admit;
pub mod authorize;
pub mod dial_slots;
pub mod grants;
pub mod hello;
pub mod refusal;
pub mod relay;
pub mod sftp;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc};

use portcullis_ssh::{
    connection::{ConnectionConfig, Side},
    session::Session,
    transport::{TransportConfig, DEFAULT_CIPHERS},
};
use ssh_key::{Certificate, PrivateKey};
use tokio::net::TcpStream;

use crate::{
    audit::{self, Audit, Event},
    config::schema::CaConfig,
    hostcert, hostkey,
    identity::Identity,
    snapshot::Snapshot,
};

/// A client connection and where it was going.
#[derive(Debug)]
pub struct Incoming {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub target_addr: SocketAddr,
    /// `None` when the connection did not come through the steering (refused).
    pub vnet: Option<u16>,
    /// Its place among the connections awaiting authentication (`[limits]`), given back
    /// when it authenticates or ends.
    pub permit: crate::admission::Permit,
}

/// What every session shares.
pub struct Context {
    pub secret: Vec<u8>,
    /// The account CA (signs through `cert::CaKey`; derefs to its `PrivateKey`).
    pub ca: crate::cert::CaKey,
    pub ca_cfg: CaConfig,
    /// The certificates' `source-address` critical option (`[ca] source_address`).
    pub source_address: Option<String>,
    pub audit: Arc<Audit>,
    /// The host key each target last presented, per (vnet, address).
    pub seen: crate::hostcheck::KeyMemory,
    /// Session recording, when the account has a recording public key.
    pub recording: Option<RecordingSetup>,
    /// Upstream connections in progress, per identity and per target.
    pub dial_slots: Arc<dial_slots::DialSlots>,
}

pub struct RecordingSetup {
    pub key: crate::recording::keys::PublicKey,
    /// Signs each log's trailer; none: logs are closed unsigned.
    pub signer: Option<std::sync::Arc<crate::recording::signing::SigningKey>>,
    pub dir: std::path::PathBuf,
    pub fail_closed: bool,
}

/// Our identification, on both hops.
pub const IDENT: &str = concat!("SSH-2.0-portcullis_", env!("CARGO_PKG_VERSION"));

impl Context {
    pub fn new(
        secret: Vec<u8>,
        ca: PrivateKey,
        ca_cfg: CaConfig,
        source_address: Option<String>,
        audit: Arc<Audit>,
        recording: Option<RecordingSetup>,
        key_memory: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            secret,
            ca: crate::cert::CaKey::new(ca),
            ca_cfg,
            source_address,
            audit,
            seen: crate::hostcheck::KeyMemory::open(key_memory),
            recording,
            dial_slots: Default::default(),
        }
    }
}

/// The client's hop: the engine's defaults (post-quantum hybrids first; the client's
/// order decides the cipher) with the derived host key and, with `[ca] host_certificates`,
/// its certificate. The engine then offers `ssh-ed25519-cert-v01@openssh.com` as well as
/// `ssh-ed25519`; the client's order picks one (RFC 4253 §7.1): OpenSSH lists certificate
/// algorithms first, and a client that wants the plain key still gets it.
fn front_transport(key: PrivateKey, certificate: Option<Certificate>) -> TransportConfig {
    TransportConfig {
        ident: IDENT.into(),
        host_certificates: certificate.into_iter().collect(),
        ..TransportConfig::server(vec![key])
    }
}

/// The host certificate for the derived `key`, when the configuration asks for one. A
/// failure is logged and the plain key is presented: it is the gateway's identity either
/// way, and the certificate only spares clients a prompt.
fn host_certificate(conn: &Conn, key: &PrivateKey) -> Option<Certificate> {
    let names = conn.snap.host_certificates.as_ref()?;
    let fallback = [conn.target.to_ascii_lowercase()];
    let r = hostcert::Request {
        hostname: &conn.target,
        principals: names.get(conn.vnet_id, &conn.target).unwrap_or(&fallback),
        skew_secs: *conn.ctx.ca_cfg.skew_secs.get_ref(),
        now: audit::unix_secs(),
    };
    match hostcert::mint(&conn.ctx.ca, key.public_key(), &r) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, target = %conn.target, "host certificate not minted; presenting the plain key");
            None
        }
    }
}

/// The target's hop: the proxy is the client and so chooses. AES-GCM first where the CPU
/// has AES and carry-less multiply instructions: there it costs a fraction of
/// ChaCha20-Poly1305 for both the proxy and the target's sshd, whatever the user's client
/// chose for its own hop; a target that allows only ChaCha20 still gets it. Host
/// certificates are asked for only when `[upstream] host_ca_keys` wants them.
fn upstream_transport(wants_certificate: bool) -> TransportConfig {
    let mut t = TransportConfig {
        ident: IDENT.into(),
        ..TransportConfig::client()
    };
    if hardware_aes() {
        let gcm = |c: &&str| c.contains("gcm");
        t.ciphers = DEFAULT_CIPHERS.iter().copied().filter(gcm).collect();
        t.ciphers
            .extend(DEFAULT_CIPHERS.iter().copied().filter(|c| !gcm(c)));
    }
    if !wants_certificate {
        t.host_key_algorithms.retain(|a| !a.contains("-cert-"));
    }
    t
}

fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// One admitted connection: who, where, and what it is judged against.
pub struct Conn {
    pub session: String,
    pub peer: SocketAddr,
    pub target_addr: SocketAddr,
    pub vnet_id: u16,
    pub vnet: String,
    /// The target's name.
    pub target: String,
    pub identity: Identity,
    /// The `connect` event, as the base of this session's events (login and certificate
    /// serial added once authorized).
    pub base: Event,
    pub snap: Arc<Snapshot>,
    /// The configuration in force now (`snap` is the one the connection was admitted
    /// under): the login decision reads it, so a reload that revokes access applies to
    /// every login not made yet.
    pub current: crate::snapshot::Snapshots,
    pub ctx: Arc<Context>,
    /// When the connection was admitted (for the handshake latency).
    pub accepted: std::time::Instant,
}

impl Conn {
    pub fn event(&self, name: &'static str) -> Event {
        let mut e = self.base.clone();
        e.time = audit::now_rfc3339();
        e.event = name;
        e
    }

    pub fn deny(&self, reason: &str) -> Event {
        deny_event(&self.base, reason)
    }
}

fn deny_event(base: &Event, reason: &str) -> Event {
    let mut d = base.clone();
    d.time = audit::now_rfc3339();
    d.event = "deny";
    d.decision = Some("deny");
    d.reason = Some(reason.to_string());
    d
}

/// Serves one client connection to the end.
pub async fn serve(inc: Incoming, current: crate::snapshot::Snapshots, ctx: Option<Arc<Context>>) {
    let Some(admitted) = admit::admit(inc, current, ctx).await else {
        return;
    };
    let admit::Admitted {
        mut stream,
        permit,
        conn,
    } = admitted;

    // 2. Identifications: the client's must come before the target is touched.
    let hello = match hello::exchange(&mut stream, IDENT).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let reason = match e {
                hello::HelloError::Timeout(_) => "handshake_timeout",
                _ => "bad_handshake",
            };
            let mut d = conn.deny(reason);
            if reason == "bad_handshake" {
                d.rule = Some(crate::audit::clip(&e.to_string()));
            }
            conn.ctx.audit.emit(&d);
            return;
        }
    };

    // 3. The target: a slot among the connections being set up, then dialled.
    let target_key = (conn.vnet_id, conn.target_addr.ip());
    let slot = conn
        .ctx
        .dial_slots
        .acquire(&conn.identity.email, target_key, conn.snap.dial_caps)
        .await;
    let Some(slot) = slot else {
        let why = "too many connections to this target are being set up";
        refuse_after_hello(
            &conn,
            stream,
            &permit,
            "upstream_dials_limit",
            why,
            refusal::Reason::TooManyConnections,
        )
        .await;
        return;
    };
    let check = conn
        .snap
        .host_keys
        .for_target(conn.vnet_id, conn.target_addr.ip(), &conn.target);
    let transport = upstream_transport(check.wants_certificate());
    let dialling = std::time::Instant::now();
    let dialled = upstream::dial(conn.target_addr, conn.vnet_id, transport, &check).await;
    let m = crate::metrics::get();
    m.upstream_connect.observe(dialling.elapsed().as_secs_f64());
    let up = match dialled {
        Ok(up) => up,
        Err(e) => {
            let (reason, code, kind) = match e {
                upstream::UpstreamError::HostKey(_) => (
                    "hostkey_rejected",
                    refusal::Reason::HostKeyNotVerifiable,
                    crate::metrics::UpstreamFailure::hostkey,
                ),
                _ => (
                    "upstream_failed",
                    refusal::Reason::ServiceNotAvailable,
                    crate::metrics::UpstreamFailure::connect,
                ),
            };
            m.upstream_failed(kind);
            let text = format!(
                "portcullis: target {} {}: {e} ({reason}) [session {}]",
                conn.target, conn.target_addr, conn.session
            );
            let mut d = conn.deny(reason);
            d.rule = Some(crate::audit::clip(&e.to_string()));
            conn.ctx.audit.emit(&d);
            let linger = !permit.under_pressure();
            refusal::refuse_after_hello(stream, code, &text, linger).await;
            return;
        }
    };
    if let Some(old) = conn
        .ctx
        .seen
        .remember(conn.vnet_id, conn.target_addr, &up.host_key)
    {
        let mut e = conn.event("hostkey.changed");
        e.reason = Some(format!("{old} → {}", up.host_key.fingerprint(Default::default())));
        conn.ctx.audit.emit(&e);
    }
    let key = match hostkey::derive(&conn.ctx.secret, &up.host_key) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "host key derivation failed");
            let mut d = conn.deny("hostkey_derivation_failed");
            d.rule = Some(crate::audit::clip(&e.to_string()));
            conn.ctx.audit.emit(&d);
            return;
        }
    };

    let certificate = host_certificate(&conn, &key);

    // 4. The client's hop, fed what it sent so far; our identification went out already.
    let mut front = Session::server(
        front_transport(key, certificate),
        relay::server_auth_config(conn.snap.auth),
        ConnectionConfig {
            // The client's early CLOSE is answered once the target's channel is closed.
            answer_close: false,
            ..ConnectionConfig::new(Side::Server)
        },
    );
    let ours = format!("{IDENT}\r\n");
    debug_assert!(front.output().starts_with(ours.as_bytes()));
    if front.output().starts_with(ours.as_bytes()) {
        front.advance_output(ours.len());
    }
    let fed = front.recv(&hello);
    relay::Relay::new(conn, stream, front, up, permit, slot, fed.err())
        .run()
        .await;
}

async fn refuse_after_hello(
    conn: &Conn,
    stream: TcpStream,
    permit: &crate::admission::Permit,
    reason: &str,
    why: &str,
    code: refusal::Reason,
) {
    conn.ctx.audit.emit(&conn.deny(reason));
    let text = format!(
        "portcullis: target {} {}: {why} ({reason}) [session {}]",
        conn.target, conn.target_addr, conn.session
    );
    refusal::refuse_after_hello(stream, code, &text, !permit.under_pressure()).await;
}

#[cfg(test)]
mod tests {
    use portcullis_ssh::transport::Transport;
    use ssh_key::{private::Ed25519Keypair, Algorithm};

    use super::*;

    /// The host key algorithms our first KEXINIT offers the client (its second name-list).
    fn offered(cfg: TransportConfig) -> String {
        let t = Transport::new(cfg);
        let out = t.output();
        let ident = out.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        // packet_length, padding_length, then the payload: SSH_MSG_KEXINIT and the cookie.
        assert_eq!(out[ident + 5], 20, "KEXINIT");
        let mut at = ident + 6 + 16;
        let mut list = || {
            let n = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            let s = String::from_utf8_lossy(&out[at + 4..at + 4 + n]).into_owned();
            at += 4 + n;
            s
        };
        let _kex = list();
        list()
    }

    /// With a certificate both algorithms are offered, the certificate's first (the client's
    /// order decides, and OpenSSH's lists certificates first); without one only the plain
    /// key is.
    #[test]
    fn the_certificate_is_offered_first_and_the_plain_key_still() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[3; 32]));
        let r = hostcert::Request {
            hostname: "web-01",
            principals: &["web-01".into()],
            skew_secs: 30,
            now: audit::unix_secs(),
        };
        let cert = hostcert::mint(&ca, key.public_key(), &r).unwrap();
        assert_eq!(
            offered(front_transport(key.clone(), Some(cert))),
            "ssh-ed25519-cert-v01@openssh.com,ssh-ed25519"
        );
        assert_eq!(offered(front_transport(key, None)), "ssh-ed25519");
    }
}
