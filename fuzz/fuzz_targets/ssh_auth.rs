//! The SSH engine's user authentication, server role, fed a sequence of arbitrary messages
//! (each prefixed by a one-byte length): every USERAUTH parser, the publickey signature
//! check, keyboard-interactive, the attempt limit. Attempts are accepted or rejected as the
//! input says.
//!
//! What must hold: no panic; nothing after success is acted on.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_ssh::auth::{ServerAuth, ServerAuthConfig, ServerAuthEvent};

const SID: &[u8] = b"fuzz session identifier";

fuzz_target!(|data: &[u8]| {
    let mut a = ServerAuth::new(ServerAuthConfig::default());
    let mut rest = data;
    let mut i = 0usize;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let (msg, tail) = tail.split_at(n);
        rest = tail;
        if a.handle(msg, SID).is_err() {
            return;
        }
        while let Some(ServerAuthEvent::Attempt { .. }) = a.poll_event() {
            i += 1;
            if len & 1 == 0 {
                a.accept();
            } else {
                a.reject(i % 3 == 0);
            }
        }
        while a.poll_transmit().is_some() {}
    }
});
