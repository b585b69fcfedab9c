//! portcullis's SSH protocol engine (RFC 4250–4254 and the OpenSSH extensions the relay
//! needs), sans-IO like rustls or quinn-proto: state machines that take received bytes and
//! give back bytes to send and events. No I/O, no async runtime, no clock: the caller drives
//! them, which makes them fuzzable and lets whole handshakes run in memory in tests.
//!
//! The layers, each a module with one job:
//! - [`msg`]: message numbers and disconnect reasons.
//! - `transport`: identification, binary packet protocol, key exchange, ciphers, rekeying.
//! - `auth`: user authentication, server and client roles.
//! - `connection`: channels with windows credited on consumption, requests.
//! - [`on_first_use`]: a value made from a key when first needed (libcrypto contexts).

pub mod auth;
pub mod connection;
pub mod msg;
pub mod on_first_use;
pub mod printable;
pub mod session;
pub mod transport;
