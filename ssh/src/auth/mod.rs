//! User authentication (RFC 4252), zero-prompt keyboard-interactive (RFC 4256) and the
//! `ssh-userauth` service request before it, for both roles, sans-IO.
//!
//! - [`ServerAuth`]: the gateway facing a client. Offers `none`, `publickey` (every common
//!   algorithm, certificates and `sk-` keys; an attempt is surfaced only once its signature
//!   verified against the session identifier) and zero-prompt `keyboard-interactive`;
//!   `password` is always refused and never read. The application decides on each
//!   [`ServerAuthEvent::Attempt`] with [`ServerAuth::accept`] / [`ServerAuth::reject`].
//! - [`ClientAuth`]: the gateway facing a target, with `none` or a key (typically a freshly
//!   minted OpenSSH user certificate).
//!
//! Both take the payloads of the authentication-layer messages (5/6 and 50–79) the transport
//! decrypted, and the session identifier H; they return payloads to send and events. The
//! transport owns `EXT_INFO`: as a server it advertises [`SERVER_SIG_ALGS`]; as a client it
//! passes the server's list to [`ClientAuth::set_server_sig_algs`].

mod client;
mod error;
mod pubkey;
mod server;
mod wire;

pub use client::{ClientAuth, ClientAuthEvent, ClientCredential};
pub use error::AuthError;
pub use pubkey::{SecurityKeySignature, SERVER_SIG_ALGS};
pub use server::{AuthMethod, ServerAuth, ServerAuthConfig, ServerAuthEvent};

/// The service a client requests before authenticating.
pub const SERVICE_USERAUTH: &str = "ssh-userauth";
/// The service authenticated for.
pub const SERVICE_CONNECTION: &str = "ssh-connection";
