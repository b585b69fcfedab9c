//! Sealed session recording, wire-compatible with Cloudflare's ssh-log-cli (DESIGN §4).
//!
//! - [`keys`]: the operator's X25519 key pair (`sshkey`, `sshkey.pub`).
//! - [`format`]: header, records, blocks.
//! - [`seal`]: the HPKE sender context that seals each block.
//! - [`writer`]: sealing a session's records while it runs.
//! - [`reader`]: decrypting, ZIP / asciicast export, replay.

pub mod format;
pub mod keys;
pub mod reader;
pub mod seal;
pub mod writer;
