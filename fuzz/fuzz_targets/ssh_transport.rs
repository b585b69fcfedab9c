//! The SSH engine's transport state machine fed arbitrary bytes, in both roles: identification
//! lines, packets, KEXINIT and every key-exchange message parser (the input's second half is
//! also offered after a complete, valid key exchange, so the encrypted paths are reached).
//!
//! What must hold: no panic, and after an error nothing but the queued DISCONNECT.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_ssh::transport::{Transport, TransportConfig, TransportEvent};
use ssh_key::{private::Ed25519Keypair, PrivateKey};

fn host() -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[1; 32]))
}

fn drain(t: &mut Transport) {
    while let Some(ev) = t.poll_event() {
        if let TransportEvent::PeerHostKey(_) = ev {
            t.host_key_verdict(true);
        }
    }
    while t.poll_payload().is_some() {}
    let n = t.output().len();
    t.advance_output(n);
}

/// Moves bytes between two transports until both are idle.
fn shuttle(a: &mut Transport, b: &mut Transport) {
    for _ in 0..64 {
        let (x, y) = (a.output().to_vec(), b.output().to_vec());
        if x.is_empty() && y.is_empty() {
            return;
        }
        a.advance_output(x.len());
        b.advance_output(y.len());
        let _ = b.recv(&x);
        let _ = a.recv(&y);
        for t in [&mut *a, &mut *b] {
            while let Some(ev) = t.poll_event() {
                if let TransportEvent::PeerHostKey(_) = ev {
                    t.host_key_verdict(true);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // A server facing arbitrary client bytes (a valid identification first, half the time).
        0 => {
            let mut s = Transport::new(TransportConfig::server(vec![host()]));
            let prefix: &[u8] = if rest.first().is_some_and(|b| b & 1 == 0) {
                b"SSH-2.0-fuzz\r\n"
            } else {
                b""
            };
            for chunk in [prefix, rest] {
                if s.recv(chunk).is_err() {
                    break;
                }
                drain(&mut s);
            }
        }
        // A client facing an arbitrary server.
        1 => {
            let mut c = Transport::new(TransportConfig::client());
            let _ = c.recv(b"SSH-2.0-fuzz\r\n");
            drain(&mut c);
            for piece in rest.chunks(97) {
                if c.recv(piece).is_err() {
                    break;
                }
                drain(&mut c);
            }
        }
        // After a real key exchange (curve25519, chacha20-poly1305): arbitrary bytes where
        // encrypted packets are expected.
        _ => {
            let mut cfg = TransportConfig::client();
            cfg.kex = vec!["curve25519-sha256"];
            cfg.ciphers = vec!["chacha20-poly1305@openssh.com"];
            let mut c = Transport::new(cfg);
            let mut scfg = TransportConfig::server(vec![host()]);
            scfg.kex = vec!["curve25519-sha256"];
            let mut s = Transport::new(scfg);
            shuttle(&mut c, &mut s);
            let _ = s.recv(rest);
            drain(&mut s);
        }
    }
});
