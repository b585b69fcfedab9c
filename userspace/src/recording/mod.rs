//! Sealed session recording, wire-compatible with Cloudflare's ssh-log-cli (DESIGN §4).
//!
//! - [`keys`]: the operator's X25519 key pair (`sshkey`, `sshkey.pub`).
//! - [`format`]: header, records, blocks.
//! - [`seal`]: the HPKE sender context that seals each block ([`seal_libcrypto`]: its
//!   AEAD for large blocks).
//! - [`writer`]: sealing a session's records while it runs.
//! - [`append`]: the sealed blocks staged for the file, written whole.
//! - [`disk`]: the few threads that write every recording's blocks.
//! - [`write_behind`]: pushing a log to disk behind its writer, out of the page cache.
//! - [`signing`]: the gateway's Ed25519 recording-signing key.
//! - [`trailer`]: the signed trailer patched in at close, and the verdict on a log.
//! - [`reader`]: decrypting, verifying, ZIP / asciicast export, replay.
//! - [`terminal`]: what a replay lets through to the operator's terminal.

pub mod append;
pub mod disk;
pub mod format;
pub mod keys;
pub mod reader;
pub mod seal;
pub mod seal_libcrypto;
pub mod signing;
pub mod terminal;
pub mod trailer;
pub mod write_behind;
pub mod writer;
