//! Client role: request `ssh-userauth`, then authenticate with `none` or a (certified) key.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use ssh_key::{Certificate, HashAlg, PrivateKey};

use super::pubkey;
use super::wire::{expect_userauth_service, message_number, signed_data, Rd, Wr};
use super::{AuthError, SERVICE_CONNECTION, SERVICE_USERAUTH};
use crate::msg;

/// How the client role authenticates.
// One credential per connection: the size of `PrivateKey` inline does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ClientCredential {
    /// The `none` method.
    None,
    /// `publickey`, signed directly (no query round trip). With a certificate, the request
    /// names the certificate algorithm (`ssh-ed25519-cert-v01@openssh.com`, …) and the blob
    /// is the certificate; the certificate must be for `key`.
    PublicKey {
        key: PrivateKey,
        certificate: Option<Certificate>,
    },
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCredential::None => f.write_str("None"),
            ClientCredential::PublicKey { key, certificate } => f
                .debug_struct("PublicKey")
                .field("algorithm", &key.algorithm())
                .field("fingerprint", &key.fingerprint(HashAlg::Sha256).to_string())
                .field("certificate_key_id", &certificate.as_ref().map(|c| c.key_id()))
                .finish(),
        }
    }
}

/// Events for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuthEvent {
    /// `USERAUTH_SUCCESS`: the connection layer takes over.
    Success,
    /// `USERAUTH_FAILURE`: the method was refused; the client has nothing else to try.
    Failure { methods: Vec<String>, partial: bool },
    /// `USERAUTH_BANNER` text (lossily decoded; sanitize before showing it to anyone).
    Banner(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    AwaitServiceAccept,
    /// The service is accepted; the login is not known yet (see [`ClientAuth::deferred`]).
    AwaitCredential,
    AwaitResult,
    Failed,
    Done,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::Idle => "not started",
            State::AwaitServiceAccept => "awaiting SERVICE_ACCEPT",
            State::AwaitCredential => "awaiting the application's login",
            State::AwaitResult => "awaiting the answer to USERAUTH_REQUEST",
            State::Failed => "authentication failed",
            State::Done => "authenticated",
        }
    }
}

/// The client side of user authentication.
#[derive(Debug)]
pub struct ClientAuth {
    user: String,
    credential: ClientCredential,
    rsa_hash: HashAlg,
    /// `false` until the application gave the login (a [`ClientAuth::deferred`] one).
    ready: bool,
    state: State,
    transmit: VecDeque<Bytes>,
    events: VecDeque<ClientAuthEvent>,
}

impl ClientAuth {
    pub fn new(user: String, credential: ClientCredential) -> Self {
        ClientAuth {
            user,
            credential,
            rsa_hash: HashAlg::Sha512,
            ready: true,
            state: State::Idle,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A client that learns whom to log in as only later ([`ClientAuth::login`]): a relay
    /// connects to its target (whose host key it needs) before its own client has said who
    /// it is. `SERVICE_REQUEST` still goes out after the first key exchange.
    pub fn deferred() -> Self {
        ClientAuth {
            ready: false,
            ..ClientAuth::new(String::new(), ClientCredential::None)
        }
    }

    /// Gives a deferred client its login; the request goes out as soon as the service is
    /// accepted (at once if it was). Ignored once a login was given.
    pub fn login(
        &mut self,
        user: String,
        credential: ClientCredential,
        session_id: &[u8],
    ) -> Result<(), AuthError> {
        if self.ready {
            return Ok(());
        }
        self.user = user;
        self.credential = credential;
        self.ready = true;
        if self.state == State::AwaitCredential {
            let request = self.request(session_id)?;
            self.transmit.push_back(request);
            self.state = State::AwaitResult;
        }
        Ok(())
    }

    /// Tell the client the server's `server-sig-algs` (RFC 8308), before `SERVICE_ACCEPT`
    /// arrives. It only matters for RSA keys: `rsa-sha2-512` unless only `rsa-sha2-256` is
    /// listed. `ssh-rsa` (SHA-1) is never used.
    pub fn set_server_sig_algs<S: AsRef<str>>(&mut self, algs: impl IntoIterator<Item = S>) {
        let algs: Vec<S> = algs.into_iter().collect();
        let has = |name: &str| algs.iter().any(|a| a.as_ref() == name);
        self.rsa_hash = if !has("rsa-sha2-512") && has("rsa-sha2-256") {
            HashAlg::Sha256
        } else {
            HashAlg::Sha512
        };
    }

    /// Queue `SERVICE_REQUEST("ssh-userauth")`. Only the first call does anything.
    pub fn start(&mut self) {
        if self.state == State::Idle {
            self.transmit
                .push_back(Wr::new(msg::SERVICE_REQUEST).string(SERVICE_USERAUTH).finish());
            self.state = State::AwaitServiceAccept;
        }
    }

    /// Process one received payload (messages 6 and 50–79). `session_id` is H of the first
    /// key exchange. An error is fatal: disconnect with [`AuthError::disconnect_reason`].
    pub fn handle(&mut self, payload: &[u8], session_id: &[u8]) -> Result<(), AuthError> {
        let number = message_number(payload)?;
        let unexpected = |state: State| AuthError::UnexpectedMessage {
            number,
            state: state.describe(),
        };
        if self.state == State::Done {
            return if (msg::USERAUTH_REQUEST..=79).contains(&number) {
                Ok(())
            } else {
                Err(unexpected(self.state))
            };
        }
        match (number, self.state) {
            (msg::SERVICE_ACCEPT, State::AwaitServiceAccept) => {
                expect_userauth_service(payload, "SERVICE_ACCEPT")?;
                if !self.ready {
                    self.state = State::AwaitCredential;
                    return Ok(());
                }
                let request = self.request(session_id)?;
                self.transmit.push_back(request);
                self.state = State::AwaitResult;
                Ok(())
            }
            (
                msg::USERAUTH_BANNER,
                State::AwaitServiceAccept | State::AwaitCredential | State::AwaitResult | State::Failed,
            ) => {
                let mut rd = Rd::new(&payload[1..], "USERAUTH_BANNER");
                let text = rd.bytes("message")?;
                rd.bytes("language tag")?;
                rd.finish()?;
                self.events.push_back(ClientAuthEvent::Banner(
                    String::from_utf8_lossy(text).into_owned(),
                ));
                Ok(())
            }
            (msg::USERAUTH_FAILURE, State::AwaitResult) => {
                let mut rd = Rd::new(&payload[1..], "USERAUTH_FAILURE");
                let methods = rd.name_list("authentications that can continue")?;
                let partial = rd.bool("partial success")?;
                rd.finish()?;
                self.events
                    .push_back(ClientAuthEvent::Failure { methods, partial });
                self.state = State::Failed;
                Ok(())
            }
            (msg::USERAUTH_SUCCESS, State::AwaitResult) => {
                Rd::new(&payload[1..], "USERAUTH_SUCCESS").finish()?;
                self.events.push_back(ClientAuthEvent::Success);
                self.state = State::Done;
                Ok(())
            }
            // USERAUTH_PK_OK answers only queries, and this client never sends one.
            (_, state) => Err(unexpected(state)),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientAuthEvent> {
        self.events.pop_front()
    }

    /// `USERAUTH_SUCCESS` received.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn request(&self, session_id: &[u8]) -> Result<Bytes, AuthError> {
        let base = Wr::new(msg::USERAUTH_REQUEST)
            .string(&self.user)
            .string(SERVICE_CONNECTION);
        match &self.credential {
            ClientCredential::None => Ok(base.string("none").finish()),
            ClientCredential::PublicKey { key, certificate } => {
                let chosen = pubkey::client_key(key, certificate.as_ref(), self.rsa_hash)?;
                let unsigned = base
                    .string("publickey")
                    .bool(true)
                    .string(&chosen.name)
                    .string(&chosen.blob);
                let data = signed_data(session_id, unsigned.as_slice());
                let signature = pubkey::sign(key, &chosen.sig, &data)?;
                Ok(unsigned.string(signature).finish())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(credential: ClientCredential) -> ClientAuth {
        let mut c = ClientAuth::new("u".into(), credential);
        c.start();
        assert!(c.poll_transmit().is_some());
        c.handle(
            &Wr::new(msg::SERVICE_ACCEPT).string(SERVICE_USERAUTH).finish(),
            b"H",
        )
        .unwrap();
        assert!(c.poll_transmit().is_some());
        c
    }

    #[test]
    fn pk_ok_is_unexpected_since_we_never_query() {
        let mut c = started(ClientCredential::None);
        let pk_ok = Wr::new(msg::USERAUTH_PK_OK)
            .string("ssh-ed25519")
            .string("")
            .finish();
        assert!(matches!(
            c.handle(&pk_ok, b"H"),
            Err(AuthError::UnexpectedMessage { number: 60, .. })
        ));
    }

    #[test]
    fn failure_is_terminal() {
        let mut c = started(ClientCredential::None);
        let failure = Wr::new(msg::USERAUTH_FAILURE)
            .name_list(&["publickey"])
            .bool(false)
            .finish();
        c.handle(&failure, b"H").unwrap();
        assert_eq!(
            c.poll_event(),
            Some(ClientAuthEvent::Failure {
                methods: vec!["publickey".into()],
                partial: false
            })
        );
        assert!(c.handle(&[msg::USERAUTH_SUCCESS], b"H").is_err());
        assert!(!c.is_done());
    }

    #[test]
    fn wrong_service_accept_and_early_messages() {
        let mut c = ClientAuth::new("u".into(), ClientCredential::None);
        assert!(c.handle(&[msg::USERAUTH_SUCCESS], b"H").is_err());
        c.start();
        let other = Wr::new(msg::SERVICE_ACCEPT).string("ssh-connection").finish();
        assert_eq!(
            c.handle(&other, b"H"),
            Err(AuthError::ServiceNotAvailable {
                message: "SERVICE_ACCEPT"
            })
        );
    }

    #[test]
    fn messages_after_success_are_ignored() {
        let mut c = started(ClientCredential::None);
        c.handle(&[msg::USERAUTH_SUCCESS], b"H").unwrap();
        assert!(c.is_done());
        c.handle(&[msg::USERAUTH_SUCCESS], b"H").unwrap();
        c.handle(&[msg::USERAUTH_BANNER], b"H").unwrap();
        assert!(c.handle(&[msg::CHANNEL_DATA], b"H").is_err());
    }

    #[test]
    fn encrypted_or_unsupported_keys_are_credential_errors() {
        let sk = ssh_key::public::SkEd25519::new(ssh_key::public::Ed25519PublicKey([1; 32]), "ssh:");
        let key = PrivateKey::new(
            ssh_key::private::KeypairData::SkEd25519(
                ssh_key::private::SkEd25519::new(sk, 0, vec![1]).unwrap(),
            ),
            "",
        )
        .unwrap();
        let mut c = ClientAuth::new(
            "u".into(),
            ClientCredential::PublicKey {
                key,
                certificate: None,
            },
        );
        c.start();
        c.poll_transmit();
        let r = c.handle(
            &Wr::new(msg::SERVICE_ACCEPT).string(SERVICE_USERAUTH).finish(),
            b"H",
        );
        assert!(matches!(r, Err(AuthError::Credential { .. })), "{r:?}");
    }
}
