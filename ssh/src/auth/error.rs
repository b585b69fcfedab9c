//! The one error type of the authentication layer.

use crate::msg::disconnect;

/// Why the authentication layer cannot go on. Every variant is fatal for the connection: the
/// caller sends `SSH_MSG_DISCONNECT` with [`AuthError::disconnect_reason`] and closes.
///
/// Errors name the message and the field, never a field's content: no user name, password,
/// key or signature bytes ever appear in an error's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A field is missing, cut short, too long or not valid (UTF-8, name-list).
    #[error("malformed {message}: field `{field}` missing, truncated or invalid")]
    Malformed {
        message: &'static str,
        field: &'static str,
    },
    /// Bytes follow the last field of a message.
    #[error("malformed {message}: trailing bytes after the last field")]
    TrailingData { message: &'static str },
    /// A message that has no place in the current state (or an empty payload: number 0).
    #[error("unexpected message number {number} while {state}")]
    UnexpectedMessage { number: u8, state: &'static str },
    /// `SSH_MSG_SERVICE_REQUEST` / `SERVICE_ACCEPT` / `USERAUTH_REQUEST` named a service
    /// other than `ssh-userauth` (resp. `ssh-connection`).
    #[error("{message}: requested service is not available")]
    ServiceNotAvailable { message: &'static str },
    /// The client changed the user name between requests (OpenSSH disconnects too).
    #[error("USERAUTH_REQUEST: user name changed between authentication requests")]
    UserChanged,
    /// The client made more authentication requests than the configured maximum.
    #[error("too many authentication attempts (limit {limit})")]
    TooManyAttempts { limit: u32 },
    /// More requests arrived while the application was deciding than the engine buffers.
    #[error("USERAUTH_REQUEST: too many requests queued while an attempt is pending")]
    TooManyQueued,
    /// The client's own credential cannot be used (encrypted key, unsupported key type,
    /// certificate for another key).
    #[error("client credential unusable: {reason}")]
    Credential { reason: &'static str },
    /// Signing the publickey request failed.
    #[error("USERAUTH_REQUEST: signing with the client key failed")]
    Sign,
}

impl AuthError {
    /// The RFC 4253 §11.1 reason code for the `SSH_MSG_DISCONNECT` this error calls for.
    pub fn disconnect_reason(&self) -> u32 {
        match self {
            AuthError::Malformed { .. }
            | AuthError::TrailingData { .. }
            | AuthError::UnexpectedMessage { .. }
            | AuthError::UserChanged
            | AuthError::TooManyQueued => disconnect::PROTOCOL_ERROR,
            AuthError::ServiceNotAvailable { .. } => disconnect::SERVICE_NOT_AVAILABLE,
            AuthError::TooManyAttempts { .. } => disconnect::NO_MORE_AUTH_METHODS_AVAILABLE,
            AuthError::Credential { .. } | AuthError::Sign => disconnect::BY_APPLICATION,
        }
    }
}
