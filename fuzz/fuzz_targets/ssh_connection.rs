//! The SSH engine's connection layer, server role, fed a sequence of arbitrary messages (each
//! prefixed by a two-byte length): channel opens, data, window adjusts, EOF/close, every
//! channel and global request. The application side opens what it is asked to, consumes
//! half of what it receives, answers requests and sends data back, as the input says.
//!
//! What must hold: no panic; no channel ever holds more unconsumed data than its window.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use portcullis_ssh::connection::{Connection, ConnectionConfig, ConnectionEvent, Side};

fuzz_target!(|data: &[u8]| {
    let mut cfg = ConnectionConfig::new(Side::Server);
    cfg.initial_window = 4096;
    cfg.max_channels = 8;
    let window = cfg.initial_window as usize;
    let mut c = Connection::new(cfg);
    let mut rest = data;
    while rest.len() >= 2 {
        let n = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let msg = Bytes::copy_from_slice(&rest[2..2 + n]);
        let flags = rest[1];
        rest = &rest[2 + n..];
        if c.handle(msg).is_err() {
            return;
        }
        while let Some(ev) = c.poll_event() {
            match ev {
                ConnectionEvent::ChannelOpen { id, .. } => {
                    if flags & 1 == 0 {
                        c.accept_open(id)
                    } else {
                        c.reject_open(id, 1, "no")
                    }
                }
                ConnectionEvent::Data { id, data } | ConnectionEvent::ExtendedData { id, data, .. } => {
                    assert!(c.unconsumed(id) <= window);
                    c.consume(id, data.len() / 2);
                    c.send_data(id, &data);
                }
                ConnectionEvent::Request {
                    id, want_reply: true, ..
                } => c.reply(id, flags & 2 == 0),
                ConnectionEvent::GlobalRequest { want_reply: true, .. } => {
                    c.global_reply(flags & 2 == 0, Bytes::new())
                }
                ConnectionEvent::Eof { id } => c.close(id),
                _ => {}
            }
        }
        while c.poll_transmit().is_some() {}
    }
});
