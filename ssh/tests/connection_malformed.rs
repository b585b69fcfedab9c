//! Malformed input never panics the connection layer: every message a whole conversation
//! produces (every message type 80..=100, every channel type, every request), replayed
//! against the receiver's state of that moment cut short at every length (an error, for
//! every message whose fields are all delimited), with a byte appended, with bytes flipped;
//! and random payloads.

mod connection_support;

/// In a module named `connection` so that `cargo test -p portcullis-ssh connection` runs them.
mod connection {
    use std::collections::BTreeSet;

    use crate::connection_support::{config, other, pattern, Delivery, Pair};
    use bytes::{BufMut, Bytes, BytesMut};
    use portcullis_ssh::connection::{
        encode_pty_modes, ChannelKind, ChannelRequest, Connection, ConnectionEvent, GlobalRequest,
        OpenFailure, Side,
    };

    /// Runs a conversation that uses every connection-layer message, recording every delivery.
    fn conversation() -> Vec<Delivery> {
        let mut p = Pair::with(config(Side::Client, 4096, 1024), config(Side::Server, 4096, 1024));
        p.log = Some(Vec::new());

        // Global requests and replies.
        p.client.global_request(
            GlobalRequest::TcpipForward {
                address: "localhost".into(),
                port: 0,
            },
            true,
        );
        p.client.global_request(
            GlobalRequest::CancelTcpipForward {
                address: "localhost".into(),
                port: 1,
            },
            true,
        );
        p.client.global_request(GlobalRequest::Keepalive, true);
        p.client.global_request(
            GlobalRequest::Other {
                name: "x@example.com".into(),
                data: Bytes::from_static(b"abc"),
            },
            true,
        );
        p.client.global_request(
            GlobalRequest::HostKeysProve {
                keys: vec![Bytes::from_static(b"key")],
            },
            true,
        );
        p.server.global_request(
            GlobalRequest::HostKeys {
                keys: vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")],
            },
            false,
        );
        p.pump();
        p.server
            .global_reply(true, Bytes::from_static(&[0, 0, 0x9c, 0x41]));
        p.server.global_reply(false, Bytes::new());
        p.server.global_reply(true, Bytes::new());
        p.server.global_reply(false, Bytes::new());
        p.server.global_reply(true, Bytes::from_static(b"\0\0\0\x03sig"));
        p.pump();
        p.client_events.clear();
        p.server_events.clear();

        // Channels of every type, one refused.
        let (c, s) = p.session();
        let direct = ChannelKind::DirectTcpip {
            host: "h".into(),
            port: 22,
            orig_host: "o".into(),
            orig_port: 9,
        };
        let (cd, sd) = p.open(Side::Client, direct);
        let (sf, cf) = p.open(
            Side::Server,
            ChannelKind::ForwardedTcpip {
                host: "a".into(),
                port: 80,
                orig_host: "b".into(),
                orig_port: 1,
            },
        );
        let (sx, cx) = p.open(
            Side::Server,
            ChannelKind::X11 {
                orig_host: "127.0.0.1".into(),
                orig_port: 6010,
            },
        );
        let (sa, ca) = p.open(Side::Server, ChannelKind::AuthAgent);
        p.client.open(ChannelKind::Other {
            name: "y@example.com".into(),
            data: Bytes::from_static(b"data"),
        });
        p.pump();
        let Some(ConnectionEvent::ChannelOpen { id, .. }) = p.server_events.pop_back() else {
            panic!()
        };
        p.server
            .reject_open(id, OpenFailure::UnknownChannelType.code(), "no");
        p.pump();
        p.client_events.clear();

        // Every request, with and without want_reply, and the replies.
        let requests = [
            ChannelRequest::PtyReq {
                term: "xterm".into(),
                cols: 80,
                rows: 24,
                width_px: 1,
                height_px: 2,
                modes: encode_pty_modes(&[(1, 3), (128, 9600)]),
            },
            ChannelRequest::X11Req {
                single_connection: true,
                auth_protocol: "p".into(),
                auth_cookie: "c".into(),
                screen: 1,
            },
            ChannelRequest::Env {
                name: "A".into(),
                value: Bytes::from_static(b"b"),
            },
            ChannelRequest::AuthAgentReq,
            ChannelRequest::Shell,
            ChannelRequest::Exec {
                command: Bytes::from_static(b"ls"),
            },
            ChannelRequest::Subsystem { name: "sftp".into() },
            ChannelRequest::WindowChange {
                cols: 1,
                rows: 2,
                width_px: 3,
                height_px: 4,
            },
            ChannelRequest::XonXoff { client_can_do: true },
            ChannelRequest::Signal { name: "HUP".into() },
            ChannelRequest::Break { length_ms: 300 },
            ChannelRequest::Eow,
            ChannelRequest::Keepalive,
            ChannelRequest::ExitStatus { status: 3 },
            ChannelRequest::ExitSignal {
                signal: "KILL".into(),
                core_dumped: false,
                message: "m".into(),
                language: "en".into(),
            },
            ChannelRequest::Other {
                name: "z@example.com".into(),
                data: Bytes::from_static(b"zz"),
            },
        ];
        for (i, req) in requests.iter().enumerate() {
            p.client.request(c, req.clone(), i % 2 == 0);
            p.server.request(s, req.clone(), i % 3 == 0);
        }
        p.pump();
        for i in 0..requests.len() {
            if i % 2 == 0 {
                p.server.reply(s, i % 4 == 0);
            }
            if i % 3 == 0 {
                p.client.reply(c, i % 6 == 0);
            }
        }
        p.pump();
        p.client_events.clear();
        p.server_events.clear();

        // Data, extended data and window adjusts on every channel, both ways.
        let chans = [(c, s), (cd, sd), (cf, sf), (cx, sx), (ca, sa)];
        for (k, &(cc, ss)) in chans.iter().enumerate() {
            let data = pattern(k as u8, 6000);
            let (mut up, mut down) = (0, 0);
            while up < data.len() || down < data.len() {
                up += p.client.send_data(cc, &data[up..]);
                down += p.server.send_extended_data(ss, 1, &data[down..]);
                p.pump();
                for side in [Side::Client, Side::Server] {
                    let evs: Vec<_> = p.events(side).drain(..).collect();
                    for ev in evs {
                        if let ConnectionEvent::Data { id, data }
                        | ConnectionEvent::ExtendedData { id, data, .. } = ev
                        {
                            p.conn(side).consume(id, data.len());
                        }
                    }
                }
                p.pump();
            }
        }

        // (Last: the server refuses session channels after it.)
        p.client.global_request(GlobalRequest::NoMoreSessions, false);
        p.pump();
        p.server_events.clear();

        // EOF and CLOSE from either side.
        for (k, &(cc, ss)) in chans.iter().enumerate() {
            let (first, id1, id2) = if k % 2 == 0 {
                (Side::Client, cc, ss)
            } else {
                (Side::Server, ss, cc)
            };
            p.conn(first).eof(id1);
            p.conn(first).close(id1);
            p.conn(other(first)).eof(id2);
        }
        p.pump();
        p.log.take().unwrap()
    }

    /// The name in a message whose first field (after the recipient, for CHANNEL_REQUEST) is one.
    fn name_of(p: &[u8]) -> Option<&[u8]> {
        let at = if p[0] == 98 { 5 } else { 1 };
        let len = u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?) as usize;
        p.get(at + 4..at + 4 + len)
    }

    /// Whether a message's last field runs to the end of the payload, so that a shorter or
    /// longer payload can still be a well-formed message.
    fn open_ended(p: &[u8]) -> bool {
        const GLOBAL: &[&[u8]] = &[
            b"tcpip-forward",
            b"cancel-tcpip-forward",
            b"keepalive@openssh.com",
            b"no-more-sessions@openssh.com",
        ];
        const OPEN: &[&[u8]] = &[
            b"session",
            b"direct-tcpip",
            b"forwarded-tcpip",
            b"x11",
            b"auth-agent@openssh.com",
        ];
        match p[0] {
            81 => true,
            80 => !GLOBAL.contains(&name_of(p).unwrap()),
            90 => !OPEN.contains(&name_of(p).unwrap()),
            98 => name_of(p).unwrap().ends_with(b"example.com"),
            _ => false,
        }
    }

    /// Feeds `payload` to a copy of `before` and everything that follows from it; must not panic.
    fn feed(before: &Connection, payload: Bytes) -> bool {
        let mut conn = before.clone();
        let ok = conn.handle(payload).is_ok();
        // Whatever state it left, the API and the queues must not panic either.
        while let Some(ev) = conn.poll_event() {
            match ev {
                ConnectionEvent::ChannelOpen { id, .. } => conn.accept_open(id),
                ConnectionEvent::Data { id, data } => conn.consume(id, data.len()),
                ConnectionEvent::Request {
                    id, want_reply: true, ..
                } => conn.reply(id, true),
                ConnectionEvent::GlobalRequest { want_reply: true, .. } => {
                    conn.global_reply(true, Bytes::new())
                }
                ConnectionEvent::WindowAvailable { id } => {
                    conn.send_data(id, b"x");
                }
                _ => {}
            }
        }
        while conn.poll_transmit().is_some() {}
        ok
    }

    #[test]
    fn every_message_cut_extended_or_flipped_never_panics() {
        let log = conversation();
        let seen: BTreeSet<u8> = log.iter().map(|d| d.payload[0]).collect();
        let all: BTreeSet<u8> = (80..=82).chain(90..=100).collect();
        assert_eq!(seen, all, "the conversation uses every connection-layer message");
        let mut checked = 0usize;
        for Delivery { before, payload, to } in &log {
            assert!(
                feed(before, payload.clone()),
                "the message itself is fine ({to:?})"
            );
            let strict = !open_ended(payload);
            // Every cut (for big data messages: the header area and the end).
            let len = payload.len();
            let cuts = (0..len).filter(|&c| c < 80 || c + 16 > len);
            for cut in cuts {
                let ok = feed(before, payload.slice(..cut));
                if strict {
                    assert!(
                        !ok,
                        "a {}-byte prefix of message {} (of {len}) was accepted",
                        cut, payload[0]
                    );
                }
                checked += 1;
            }
            // One byte more: every fixed-layout message refuses it (a confirmation may carry
            // channel-type-specific data).
            let mut longer = BytesMut::from(&payload[..]);
            longer.put_u8(0);
            let ok = feed(before, longer.freeze());
            if strict && payload[0] != 91 {
                assert!(!ok, "message {} with a trailing byte was accepted", payload[0]);
            }
            // Flipped bytes in the header area: anything may happen except a panic.
            for at in 0..len.min(64) {
                for f in [|b: u8| b ^ 0x01, |b: u8| b ^ 0x80, |_| 0, |_| 0xff] {
                    let mut m = payload.to_vec();
                    m[at] = f(m[at]);
                    feed(before, m.into());
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    /// Random payloads with connection-layer message numbers and plausible small lengths, fed to
    /// connections in a few states.
    #[test]
    fn random_payloads_never_panic() {
        let log = conversation();
        let states: Vec<&Connection> = log.iter().step_by(log.len() / 16).map(|d| &d.before).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let state = states[(rand() % states.len() as u64) as usize];
            let len = (rand() % 48) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            if let Some(first) = m.first_mut() {
                *first = 80 + (rand() % 21) as u8;
            }
            // Small channel numbers and lengths make it past the first checks more often.
            for at in [1usize, 5, 9] {
                if m.len() > at + 3 && rand() % 2 == 0 {
                    m[at..at + 3].fill(0);
                }
            }
            feed(state, m.into());
        }
        // Messages outside the layer and the empty payload.
        let mut c = Connection::new(config(Side::Server, 10, 10));
        for n in [0u8, 1, 20, 50, 79, 83, 89, 101, 255] {
            assert!(c.handle(Bytes::copy_from_slice(&[n, 0, 0, 0, 0])).is_err());
        }
        assert!(c.handle(Bytes::new()).is_err());
    }
}
