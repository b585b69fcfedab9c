//! Server role: `ssh-userauth` service, then RFC 4252 requests for `ssh-connection`.

use std::collections::VecDeque;

use bytes::Bytes;
use ssh_key::{Certificate, PublicKey};

use super::pubkey::{self, SecurityKeySignature};
use super::wire::{expect_userauth_service, message_number, signed_data, Rd, Wr};
use super::{AuthError, SERVICE_CONNECTION, SERVICE_USERAUTH};
use crate::msg;

/// Requests buffered (already parsed and checked) while the application decides on a
/// pending attempt. RFC 4252 §5 lets a client send several requests without waiting.
const MAX_QUEUED: usize = 16;

/// What the server role offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAuthConfig {
    /// Offer `none` (each `none` request becomes an [`ServerAuthEvent::Attempt`]).
    pub none: bool,
    /// Offer `publickey`: an attempt is surfaced only after its signature verified.
    pub publickey: bool,
    /// Offer zero-prompt `keyboard-interactive`.
    pub keyboard_interactive: bool,
    /// Authentication requests allowed before the engine gives up with
    /// [`AuthError::TooManyAttempts`]. Every `USERAUTH_REQUEST` counts (publickey queries
    /// too) except the client's first `none`. Default 20.
    pub max_attempts: u32,
    /// Text sent in `SSH_MSG_USERAUTH_BANNER` before the answer to the first request.
    pub banner: Option<String>,
    /// Refuse `sk-` signatures whose user-presence flag is clear (OpenSSH's default).
    pub sk_require_user_presence: bool,
}

impl Default for ServerAuthConfig {
    fn default() -> Self {
        ServerAuthConfig {
            none: true,
            publickey: true,
            keyboard_interactive: true,
            max_attempts: 20,
            banner: None,
            sk_require_user_presence: true,
        }
    }
}

/// The method of an attempt the application is asked to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// `none`.
    None,
    /// `publickey` with a signature that verified against the session identifier.
    PublicKey {
        /// The key that signed (for a certificate: its subject key).
        key: PublicKey,
        /// The certificate the client presented, unvalidated: the engine checked only that
        /// its subject key signed. CA trust, validity, principals and type are the caller's.
        certificate: Option<Box<Certificate>>,
        /// The algorithm name from the request, e.g. `rsa-sha2-512` or
        /// `ssh-ed25519-cert-v01@openssh.com`.
        algorithm: String,
        /// Flags and counter for `sk-` keys.
        security_key: Option<SecurityKeySignature>,
    },
    /// `keyboard-interactive`; accepting it runs a zero-prompt `INFO_REQUEST` round.
    KeyboardInteractive {
        /// The client's `submethods` hint (lossily decoded, for the audit log).
        submethods: String,
    },
}

impl AuthMethod {
    /// The RFC 4252 method name, for audit records.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::PublicKey { .. } => "publickey",
            AuthMethod::KeyboardInteractive { .. } => "keyboard-interactive",
        }
    }
}

/// Events for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerAuthEvent {
    /// A request the engine found acceptable; answer with [`ServerAuth::accept`] or
    /// [`ServerAuth::reject`].
    Attempt { user: String, method: AuthMethod },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Final,
    KeyboardInteractive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitService,
    Ready,
    Pending(Pending),
    AwaitInfoResponse,
    Done,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::AwaitService => "awaiting SERVICE_REQUEST",
            State::Ready => "awaiting USERAUTH_REQUEST",
            State::Pending(_) => "an attempt is pending",
            State::AwaitInfoResponse => "awaiting USERAUTH_INFO_RESPONSE",
            State::Done => "authenticated",
        }
    }
}

/// The result of one request, decided by the engine or handed to the application.
#[derive(Debug)]
enum Outcome {
    Reply(Bytes),
    Attempt { user: String, method: AuthMethod },
}

/// The server side of user authentication. Feed it the payloads of messages 5 and 50–79
/// (decrypted, without packet framing); send what [`ServerAuth::poll_transmit`] returns.
///
/// A `password` request is answered with FAILURE; its fields are checked for shape but never
/// copied, decoded or stored, so the password appears in no event, error or `Debug` output.
#[derive(Debug)]
pub struct ServerAuth {
    cfg: ServerAuthConfig,
    state: State,
    user: Option<String>,
    attempts: u32,
    free_none_used: bool,
    banner_sent: bool,
    queued: VecDeque<Outcome>,
    transmit: VecDeque<Bytes>,
    events: VecDeque<ServerAuthEvent>,
}

impl ServerAuth {
    pub fn new(cfg: ServerAuthConfig) -> Self {
        ServerAuth {
            cfg,
            state: State::AwaitService,
            user: None,
            attempts: 0,
            free_none_used: false,
            banner_sent: false,
            queued: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Process one received payload. `session_id` is the exchange hash H of the first key
    /// exchange. An error is fatal: disconnect with [`AuthError::disconnect_reason`].
    pub fn handle(&mut self, payload: &[u8], session_id: &[u8]) -> Result<(), AuthError> {
        let number = message_number(payload)?;
        let unexpected = |state: State| AuthError::UnexpectedMessage {
            number,
            state: state.describe(),
        };
        if self.state == State::Done {
            // RFC 4252 §5.1: requests after success are ignored, and so is any other
            // authentication-layer message.
            return if (msg::USERAUTH_REQUEST..=79).contains(&number) {
                Ok(())
            } else {
                Err(unexpected(self.state))
            };
        }
        match (number, self.state) {
            (msg::SERVICE_REQUEST, State::AwaitService) => {
                expect_userauth_service(payload, "SERVICE_REQUEST")?;
                self.transmit
                    .push_back(Wr::new(msg::SERVICE_ACCEPT).string(SERVICE_USERAUTH).finish());
                self.state = State::Ready;
                Ok(())
            }
            (msg::USERAUTH_REQUEST, State::Ready | State::AwaitInfoResponse) => {
                // A new request abandons an unanswered keyboard-interactive round, as in
                // OpenSSH (auth2.c stops the challenge when another request arrives).
                let outcome = self.request(payload, session_id)?;
                self.state = State::Ready;
                self.apply(outcome);
                Ok(())
            }
            (msg::USERAUTH_REQUEST, State::Pending(_)) => {
                if self.queued.len() >= MAX_QUEUED {
                    return Err(AuthError::TooManyQueued);
                }
                let outcome = self.request(payload, session_id)?;
                self.queued.push_back(outcome);
                Ok(())
            }
            (msg::USERAUTH_INFO_RESPONSE, State::AwaitInfoResponse) => {
                let mut rd = Rd::new(&payload[1..], "USERAUTH_INFO_RESPONSE");
                let count = rd.u32("num-responses")?;
                // Answers are skipped in place, never copied: they may be secrets.
                for _ in 0..count {
                    rd.bytes("response")?;
                }
                rd.finish()?;
                if count == 0 {
                    self.succeed();
                } else {
                    self.transmit.push_back(self.failure(false));
                    self.state = State::Ready;
                }
                Ok(())
            }
            (_, state) => Err(unexpected(state)),
        }
    }

    /// Next payload to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ServerAuthEvent> {
        self.events.pop_front()
    }

    /// The pending attempt succeeds: `USERAUTH_SUCCESS` (for keyboard-interactive, first the
    /// zero-prompt `INFO_REQUEST` round). No-op without a pending attempt.
    pub fn accept(&mut self) {
        match self.state {
            State::Pending(Pending::Final) => self.succeed(),
            State::Pending(Pending::KeyboardInteractive) => {
                if self.queued.is_empty() {
                    self.transmit.push_back(
                        Wr::new(msg::USERAUTH_INFO_REQUEST)
                            .string("") // name
                            .string("") // instruction
                            .string("") // language tag
                            .u32(0) // num-prompts
                            .finish(),
                    );
                    self.state = State::AwaitInfoResponse;
                } else {
                    // The client already sent another request, which abandons this one.
                    self.state = State::Ready;
                    self.drain();
                }
            }
            _ => {}
        }
    }

    /// The pending attempt fails: `USERAUTH_FAILURE` with the offered methods. No-op without
    /// a pending attempt.
    pub fn reject(&mut self, partial: bool) {
        if let State::Pending(_) = self.state {
            self.transmit.push_back(self.failure(partial));
            self.state = State::Ready;
            self.drain();
        }
    }

    /// `USERAUTH_SUCCESS` was queued; the connection layer takes over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The user name of the requests (it cannot change between them); after
    /// [`is_done`](Self::is_done), the authenticated user.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The method list for `USERAUTH_FAILURE` (`none` is never listed, RFC 4252 §5.1).
    pub fn methods(&self) -> Vec<&'static str> {
        let mut methods = Vec::new();
        if self.cfg.publickey {
            methods.push("publickey");
        }
        if self.cfg.keyboard_interactive {
            methods.push("keyboard-interactive");
        }
        methods
    }

    fn failure(&self, partial: bool) -> Bytes {
        Wr::new(msg::USERAUTH_FAILURE)
            .name_list(&self.methods())
            .bool(partial)
            .finish()
    }

    fn succeed(&mut self) {
        self.transmit.push_back(Wr::new(msg::USERAUTH_SUCCESS).finish());
        self.state = State::Done;
        self.queued.clear();
    }

    fn apply(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Reply(reply) => self.transmit.push_back(reply),
            Outcome::Attempt { user, method } => {
                self.state = State::Pending(match method {
                    AuthMethod::KeyboardInteractive { .. } => Pending::KeyboardInteractive,
                    _ => Pending::Final,
                });
                self.events.push_back(ServerAuthEvent::Attempt { user, method });
            }
        }
    }

    /// Emit queued outcomes until one needs the application again.
    fn drain(&mut self) {
        while self.state == State::Ready {
            let Some(outcome) = self.queued.pop_front() else {
                break;
            };
            self.apply(outcome);
        }
    }

    /// Parse and judge one `USERAUTH_REQUEST`.
    fn request(&mut self, payload: &[u8], session_id: &[u8]) -> Result<Outcome, AuthError> {
        const M: &str = "USERAUTH_REQUEST";
        let mut rd = Rd::new(&payload[1..], M);
        let user = rd.utf8("user name")?;
        let service = rd.bytes("service name")?;
        let method = rd.bytes("method name")?;
        if service != SERVICE_CONNECTION.as_bytes() {
            return Err(AuthError::ServiceNotAvailable { message: M });
        }
        match &self.user {
            Some(known) if known != user => return Err(AuthError::UserChanged),
            Some(_) => {}
            None => self.user = Some(user.to_owned()),
        }
        if method == b"none" && !self.free_none_used {
            self.free_none_used = true;
        } else if self.attempts >= self.cfg.max_attempts {
            return Err(AuthError::TooManyAttempts {
                limit: self.cfg.max_attempts,
            });
        } else {
            self.attempts += 1;
        }

        let outcome = match method {
            b"none" => {
                rd.finish()?;
                if self.cfg.none {
                    Outcome::Attempt {
                        user: user.to_owned(),
                        method: AuthMethod::None,
                    }
                } else {
                    Outcome::Reply(self.failure(false))
                }
            }
            b"publickey" => self.publickey(rd, user, payload, session_id)?,
            b"keyboard-interactive" => {
                rd.bytes("language tag")?;
                let submethods = rd.bytes("submethods")?;
                rd.finish()?;
                if self.cfg.keyboard_interactive {
                    Outcome::Attempt {
                        user: user.to_owned(),
                        method: AuthMethod::KeyboardInteractive {
                            submethods: String::from_utf8_lossy(submethods).into_owned(),
                        },
                    }
                } else {
                    Outcome::Reply(self.failure(false))
                }
            }
            b"password" => {
                // Shape only; the password bytes stay in the caller's buffer, untouched.
                let change = rd.bool("change-password flag")?;
                rd.bytes("password")?;
                if change {
                    rd.bytes("new password")?;
                }
                rd.finish()?;
                Outcome::Reply(self.failure(false))
            }
            // hostbased, gssapi-with-mic, publickey-hostbound-v00@openssh.com (never
            // advertised by us), anything else: not offered.
            _ => Outcome::Reply(self.failure(false)),
        };
        // The banner goes out before the answer to the first request (as OpenSSH does).
        if !self.banner_sent {
            self.banner_sent = true;
            if let Some(text) = &self.cfg.banner {
                self.transmit.push_back(
                    Wr::new(msg::USERAUTH_BANNER)
                        .string(text)
                        .string("") // language tag
                        .finish(),
                );
            }
        }
        Ok(outcome)
    }

    fn publickey(
        &self,
        mut rd: Rd<'_>,
        user: &str,
        payload: &[u8],
        session_id: &[u8],
    ) -> Result<Outcome, AuthError> {
        let has_signature = rd.bool("has-signature flag")?;
        let algorithm = rd.bytes("public key algorithm name")?;
        let blob = rd.bytes("public key blob")?;
        let signed_len = payload.len() - rd.remaining();
        let signature = if has_signature {
            Some(rd.bytes("signature")?)
        } else {
            None
        };
        rd.finish()?;

        let fail = || Outcome::Reply(self.failure(false));
        if !self.cfg.publickey {
            return Ok(fail());
        }
        let Some((name, alg)) = std::str::from_utf8(algorithm)
            .ok()
            .and_then(|name| Some((name, pubkey::lookup(name)?)))
        else {
            return Ok(fail());
        };
        let Some(key) = pubkey::parse_key(&alg, blob) else {
            return Ok(fail());
        };
        let Some(signature) = signature else {
            // A query: the engine itself says the key would be acceptable (RFC 4252 §7).
            return Ok(Outcome::Reply(
                Wr::new(msg::USERAUTH_PK_OK)
                    .string(algorithm)
                    .string(blob)
                    .finish(),
            ));
        };
        let data = signed_data(session_id, &payload[..signed_len]);
        match pubkey::verify(
            &alg,
            &key.subject,
            &data,
            signature,
            self.cfg.sk_require_user_presence,
        ) {
            Ok(security_key) => Ok(Outcome::Attempt {
                user: user.to_owned(),
                method: AuthMethod::PublicKey {
                    key: PublicKey::from(key.subject),
                    certificate: key.certificate.map(Box::new),
                    algorithm: name.to_owned(),
                    security_key,
                },
            }),
            Err(_) => Ok(fail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str) -> Bytes {
        Wr::new(msg::USERAUTH_REQUEST)
            .string("u")
            .string(SERVICE_CONNECTION)
            .string(method)
            .finish()
    }

    fn ready() -> ServerAuth {
        let mut s = ServerAuth::new(ServerAuthConfig::default());
        s.handle(
            &Wr::new(msg::SERVICE_REQUEST).string(SERVICE_USERAUTH).finish(),
            b"H",
        )
        .unwrap();
        assert!(s.poll_transmit().is_some());
        s
    }

    #[test]
    fn queue_is_bounded() {
        let mut s = ready();
        s.handle(&req("none"), b"H").unwrap();
        for _ in 0..MAX_QUEUED {
            s.handle(&req("hostbased"), b"H").unwrap();
        }
        assert_eq!(s.handle(&req("hostbased"), b"H"), Err(AuthError::TooManyQueued));
    }

    #[test]
    fn queued_outcomes_drain_up_to_the_next_attempt() {
        let mut s = ready();
        s.handle(&req("none"), b"H").unwrap();
        s.handle(&req("hostbased"), b"H").unwrap();
        s.handle(&req("none"), b"H").unwrap();
        s.handle(&req("hostbased"), b"H").unwrap();
        assert!(s.poll_event().is_some() && s.poll_event().is_none());
        s.reject(false);
        // FAILURE (first none), FAILURE (hostbased); then the second none is pending.
        assert_eq!(s.transmit.len(), 2);
        assert_eq!(s.state, State::Pending(Pending::Final));
        assert!(s.poll_event().is_some());
        assert_eq!(s.queued.len(), 1);
        s.accept();
        assert!(s.is_done() && s.queued.is_empty());
    }

    #[test]
    fn keyboard_interactive_accept_with_later_request_queued_abandons_it() {
        let mut s = ready();
        let ki = Wr::new(msg::USERAUTH_REQUEST)
            .string("u")
            .string(SERVICE_CONNECTION)
            .string("keyboard-interactive")
            .string("")
            .string("")
            .finish();
        s.handle(&ki, b"H").unwrap();
        s.handle(&req("none"), b"H").unwrap();
        s.poll_event().unwrap();
        s.accept();
        // No INFO_REQUEST: the queued `none` is now the pending attempt.
        assert!(s.poll_transmit().is_none());
        assert!(matches!(
            s.poll_event(),
            Some(ServerAuthEvent::Attempt {
                method: AuthMethod::None,
                ..
            })
        ));
    }

    #[test]
    fn methods_reflect_config() {
        let s = ServerAuth::new(ServerAuthConfig {
            publickey: false,
            ..Default::default()
        });
        assert_eq!(s.methods(), vec!["keyboard-interactive"]);
        let s = ServerAuth::new(ServerAuthConfig::default());
        assert_eq!(s.methods(), vec!["publickey", "keyboard-interactive"]);
    }
}
