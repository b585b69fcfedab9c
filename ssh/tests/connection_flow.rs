//! Flow control of the connection layer: windows credited only on consumption, a stopped
//! reader never holding up another channel, and peers that overrun windows or packets.

mod connection_support;

/// In a module named `connection` so that `cargo test -p portcullis-ssh connection` runs them.
mod connection {
    use std::collections::{HashMap, HashSet};

    use crate::connection_support::{config, pattern, raw_data, raw_extended, raw_u32, Pair};
    use portcullis_ssh::connection::{
        ChannelId, ChannelRequest, ConnectionConfig, ConnectionError, ConnectionEvent, Side,
    };

    /// What one side's application does with what it receives.
    #[derive(Default)]
    struct App {
        got: HashMap<ChannelId, Vec<u8>>,
        /// Channels whose reader consumes what arrives; the others' readers have stopped.
        reading: HashSet<ChannelId>,
        window_available: HashMap<ChannelId, usize>,
        other: Vec<ConnectionEvent>,
    }

    struct Stream {
        from: Side,
        id: ChannelId,
        data: Vec<u8>,
        sent: usize,
    }

    impl Stream {
        fn new(from: Side, id: ChannelId, data: Vec<u8>) -> Self {
            Stream {
                from,
                id,
                data,
                sent: 0,
            }
        }
    }

    fn app(apps: &mut [App; 2], side: Side) -> &mut App {
        &mut apps[side as usize]
    }

    /// Lets the applications deliver what arrived; true if there was anything.
    fn drain(p: &mut Pair, apps: &mut [App; 2]) -> bool {
        let mut any = false;
        for side in [Side::Client, Side::Server] {
            while let Some(ev) = p.events(side).pop_front() {
                any = true;
                let a = app(apps, side);
                match ev {
                    ConnectionEvent::Data { id, data } => {
                        a.got.entry(id).or_default().extend_from_slice(&data);
                        if a.reading.contains(&id) {
                            p.conn(side).consume(id, data.len());
                        }
                    }
                    ConnectionEvent::WindowAvailable { id } => {
                        *a.window_available.entry(id).or_default() += 1
                    }
                    ev => a.other.push(ev),
                }
            }
        }
        any
    }

    /// Starts (or restarts) the reader of a channel: it consumes its backlog and all that comes.
    fn start_reading(p: &mut Pair, apps: &mut [App; 2], side: Side, id: ChannelId) {
        app(apps, side).reading.insert(id);
        let backlog = p.conn(side).unconsumed(id);
        p.conn(side).consume(id, backlog);
    }

    /// Writers offer everything they have left, the wire moves it, readers read, until nothing
    /// moves any more. Returns the number of rounds.
    fn run(p: &mut Pair, apps: &mut [App; 2], streams: &mut [Stream]) -> usize {
        for round in 0..1_000_000 {
            let mut progress = false;
            for s in streams.iter_mut() {
                let n = p.conn(s.from).send_data(s.id, &s.data[s.sent..]);
                s.sent += n;
                progress |= n > 0;
            }
            p.pump();
            progress |= drain(p, apps);
            if !progress {
                return round;
            }
        }
        panic!("no quiescence");
    }

    fn received(apps: &mut [App; 2], side: Side, id: ChannelId) -> usize {
        app(apps, side).got.get(&id).map_or(0, Vec::len)
    }

    const W: u32 = 100_000;
    const MP: u32 = 32768;

    fn small_pair() -> Pair {
        Pair::with(config(Side::Client, W, MP), config(Side::Server, W, MP))
    }

    /// Properties 1–3: a stopped reader gets exactly its window and no more, the sender's
    /// `send_data` returns 0; a neighbour channel meanwhile carries 20 windows; consuming
    /// resumes the stalled channel and everything arrives intact and in order.
    #[test]
    fn stopped_reader_gets_its_window_and_neighbour_keeps_flowing() {
        let mut p = small_pair();
        let mut apps: [App; 2] = Default::default();
        let (ca, sa) = p.session();
        let (cb, sb) = p.session();
        app(&mut apps, Side::Server).reading.insert(sb);

        // (1) A's reader has stopped.
        let mut a = [Stream::new(Side::Client, ca, pattern(1, 5 * W as usize))];
        run(&mut p, &mut apps, &mut a);
        assert_eq!(a[0].sent, W as usize, "the sender took exactly the window");
        assert_eq!(received(&mut apps, Side::Server, sa), W as usize);
        assert_eq!(p.server.unconsumed(sa), W as usize);
        assert_eq!(p.client.send_window(ca), 0);
        assert_eq!(p.client.send_data(ca, b"more"), 0);

        // (2) B flows 20 windows while A stays stalled; A gets nothing more.
        let mut streams = [
            Stream::new(Side::Client, ca, a[0].data.clone()),
            Stream::new(Side::Client, cb, pattern(2, 20 * W as usize)),
        ];
        streams[0].sent = a[0].sent;
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(
            app(&mut apps, Side::Server).got[&sb],
            streams[1].data,
            "B complete and in order"
        );
        assert_eq!(
            received(&mut apps, Side::Server, sa),
            W as usize,
            "A got nothing beyond its window"
        );
        assert_eq!(p.client.send_window(ca), 0);
        assert!(
            p.client.send_window(cb) > W as usize / 2,
            "B's window credited back (bar a sub-packet rest)"
        );
        assert!(!app(&mut apps, Side::Client).window_available.contains_key(&ca));

        // (3) A's reader resumes: the rest flows and arrives intact.
        start_reading(&mut p, &mut apps, Side::Server, sa);
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(streams[0].sent, streams[0].data.len());
        assert_eq!(
            app(&mut apps, Side::Server).got[&sa],
            streams[0].data,
            "A complete and in order"
        );
        assert!(
            app(&mut apps, Side::Client).window_available[&ca] >= 1,
            "the writer was woken"
        );
        assert!(app(&mut apps, Side::Server).other.is_empty());
    }

    /// Property 4: an upload whose reader (the server's application) stops and a download whose
    /// reader (the client's application) stops, on two channels: each side still sends on the
    /// other channel, a third channel echoes both ways, and each resumes independently.
    #[test]
    fn opposite_stalls_never_block_each_other() {
        let mut p = small_pair();
        let mut apps: [App; 2] = Default::default();
        let (cu, su) = p.session();
        let (cd, sd) = p.session();
        let (cc, sc) = p.session();
        app(&mut apps, Side::Server).reading.insert(sc);
        app(&mut apps, Side::Client).reading.insert(cc);

        let up = pattern(3, 7 * W as usize + 123);
        let down = pattern(4, 6 * W as usize + 7);
        let mut streams = vec![
            Stream::new(Side::Client, cu, up.clone()),
            Stream::new(Side::Server, sd, down.clone()),
        ];
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(received(&mut apps, Side::Server, su), W as usize);
        assert_eq!(received(&mut apps, Side::Client, cd), W as usize);
        assert_eq!((p.client.send_window(cu), p.server.send_window(sd)), (0, 0));

        // Both stalled: the third channel carries 10 windows each way.
        streams.push(Stream::new(Side::Client, cc, pattern(5, 10 * W as usize)));
        streams.push(Stream::new(Side::Server, sc, pattern(6, 10 * W as usize)));
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(app(&mut apps, Side::Server).got[&sc], streams[2].data);
        assert_eq!(app(&mut apps, Side::Client).got[&cc], streams[3].data);
        // Requests (control messages) still pass on the stalled channels too.
        p.client.request(
            cu,
            ChannelRequest::WindowChange {
                cols: 1,
                rows: 2,
                width_px: 0,
                height_px: 0,
            },
            true,
        );
        p.pump();
        drain(&mut p, &mut apps);
        assert!(
            matches!(app(&mut apps, Side::Server).other.pop(), Some(ConnectionEvent::Request { id, .. }) if id == su)
        );
        p.server.reply(su, true);
        p.pump();
        drain(&mut p, &mut apps);
        assert_eq!(
            app(&mut apps, Side::Client).other.pop(),
            Some(ConnectionEvent::RequestReply {
                id: cu,
                success: true
            })
        );

        // The upload's reader resumes; the download stays stalled.
        start_reading(&mut p, &mut apps, Side::Server, su);
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(app(&mut apps, Side::Server).got[&su], up);
        assert_eq!(received(&mut apps, Side::Client, cd), W as usize);

        // Then the download's.
        start_reading(&mut p, &mut apps, Side::Client, cd);
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(app(&mut apps, Side::Client).got[&cd], down);
    }

    /// The defaults (2 MiB window, 32 KiB packets): a stopped reader holds exactly 2 MiB and a
    /// neighbour moves five windows meanwhile.
    #[test]
    fn defaults_bound_a_stopped_reader_by_two_mib() {
        let mut p = Pair::new();
        let mut apps: [App; 2] = Default::default();
        let (ca, sa) = p.session();
        let (cb, sb) = p.session();
        app(&mut apps, Side::Server).reading.insert(sb);
        let window = ConnectionConfig::new(Side::Server).initial_window as usize;
        assert_eq!(window, 2 * 1024 * 1024);
        let mut streams = [
            Stream::new(Side::Client, ca, pattern(7, 3 * window)),
            Stream::new(Side::Client, cb, pattern(8, 5 * window)),
        ];
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(received(&mut apps, Side::Server, sa), window);
        assert_eq!(app(&mut apps, Side::Server).got[&sb], streams[1].data);
        start_reading(&mut p, &mut apps, Side::Server, sa);
        run(&mut p, &mut apps, &mut streams);
        assert_eq!(app(&mut apps, Side::Server).got[&sa], streams[0].data);
    }

    /// Extended data shares the channel's window and is credited by `consume` the same way.
    #[test]
    fn extended_data_shares_the_window() {
        let mut p = small_pair();
        let (cid, sid) = p.session();
        let out = pattern(9, W as usize + 10);
        assert_eq!(
            p.server.send_extended_data(sid, 1, &out[..W as usize / 2]),
            W as usize / 2
        );
        assert_eq!(p.server.send_data(sid, &out[W as usize / 2..]), W as usize / 2);
        assert_eq!(p.server.send_extended_data(sid, 1, b"x"), 0);
        p.pump();
        let mut got = Vec::new();
        while let Some(ev) = p.client_events.pop_front() {
            match ev {
                ConnectionEvent::ExtendedData { id, code: 1, data } | ConnectionEvent::Data { id, data } => {
                    assert_eq!(id, cid);
                    got.extend_from_slice(&data);
                }
                ev => panic!("unexpected {ev:?}"),
            }
        }
        assert_eq!(got, out[..W as usize]);
        p.client.consume(cid, W as usize);
        p.pump();
        assert_eq!(p.next(Side::Server), ConnectionEvent::WindowAvailable { id: sid });
        assert_eq!(p.server.send_window(sid), W as usize);
    }

    /// Outgoing data is split at the smaller of the peer's maximum packet and ours, and the
    /// payloads are consecutive slices of one buffer (no allocation per packet).
    #[test]
    fn sending_respects_the_peer_max_packet_without_per_packet_allocation() {
        let mut p = Pair::with(config(Side::Client, W, 1000), config(Side::Server, W, MP));
        let (cid, sid) = p.session();
        let data = pattern(10, 4500);
        assert_eq!(p.server.send_data(sid, &data), 4500);
        let payloads: Vec<_> = std::iter::from_fn(|| p.server.poll_transmit()).collect();
        assert_eq!(
            payloads.iter().map(|p| p.len() - 9).collect::<Vec<_>>(),
            [1000, 1000, 1000, 1000, 500]
        );
        for w in payloads.windows(2) {
            assert_eq!(
                w[0].as_ptr().wrapping_add(w[0].len()),
                w[1].as_ptr(),
                "split from one buffer"
            );
        }
        // The client side's own cap applies too (its max packet is 1000 even if the peer's is more).
        assert_eq!(p.client.send_data(cid, &data[..2500]), 2500);
        let sizes: Vec<_> = std::iter::from_fn(|| p.client.poll_transmit())
            .map(|p| p.len() - 9)
            .collect();
        assert_eq!(sizes, [1000, 1000, 500]);

        // Received data is a slice of the payload handed in (no copy).
        let payload = raw_data(cid.get(), b"zero copy");
        p.client.handle(payload.clone()).unwrap();
        match p.client.poll_event() {
            Some(ConnectionEvent::Data { data, .. }) => {
                assert_eq!(data.as_ptr(), payload[9..].as_ptr());
            }
            ev => panic!("unexpected {ev:?}"),
        }
    }

    /// Data handed over as `Bytes` goes out as the same messages as copied data, split and
    /// windowed the same way, with each packet's data still the caller's bytes (a relay
    /// passes on what it received without copying it first).
    #[test]
    fn data_passed_as_bytes_is_the_same_messages_without_a_copy() {
        for code in [None, Some(1)] {
            let mut a = Pair::with(config(Side::Client, W, 1000), config(Side::Server, 3000, MP));
            let mut b = Pair::with(config(Side::Client, W, 1000), config(Side::Server, 3000, MP));
            let (cid_a, _) = a.session();
            let (cid_b, _) = b.session();
            let data = bytes::Bytes::from(pattern(11, 4500));
            let copied = match code {
                None => a.client.send_data(cid_a, &data),
                Some(c) => a.client.send_extended_data(cid_a, c, &data),
            };
            assert_eq!(b.client.send_data_bytes(cid_b, code, &data), copied);
            assert_eq!(copied, 3000, "the peer's window takes part");
            assert_eq!(a.client.send_window(cid_a), b.client.send_window(cid_b));
            assert_eq!(a.client.queued_transmit_bytes(), b.client.queued_transmit_bytes());
            let mut at = 0;
            loop {
                let (x, y) = (a.client.poll_transmit(), b.client.poll_outgoing());
                let (Some(x), Some(y)) = (x, y) else {
                    break;
                };
                let [head, body] = y.parts();
                assert_eq!(body.as_ptr(), data[at..].as_ptr(), "not copied");
                at += body.len();
                assert_eq!([head, body].concat(), x.to_vec(), "{code:?}");
                assert_eq!(y.into_bytes(), x);
            }
            assert_eq!(at, 3000);
            assert!(a.client.poll_transmit().is_none() && b.client.poll_outgoing().is_none());
            assert_eq!(b.client.queued_transmit_bytes(), 0);
        }
    }

    /// Property 5: a peer that sends beyond the window we granted, or beyond our maximum packet,
    /// is a protocol error; so is data after its EOF.
    #[test]
    fn overrunning_peers_are_protocol_errors() {
        let fresh = || {
            let mut p = Pair::with(config(Side::Client, W, MP), config(Side::Server, 1000, 500));
            let (_, sid) = p.session();
            (p, sid.get())
        };
        let (mut p, sid) = fresh();
        assert!(matches!(
            p.server.handle(raw_data(sid, &[0; 501])),
            Err(ConnectionError::PacketTooLarge {
                len: 501,
                max: 500,
                ..
            })
        ));
        let (mut p, sid) = fresh();
        assert!(matches!(
            p.server.handle(raw_extended(sid, 1, &[0; 501])),
            Err(ConnectionError::PacketTooLarge { .. })
        ));

        let (mut p, sid) = fresh();
        p.server.handle(raw_data(sid, &[0; 500])).unwrap();
        p.server.handle(raw_extended(sid, 1, &[0; 499])).unwrap();
        let err = p.server.handle(raw_data(sid, &[0; 2])).unwrap_err();
        assert_eq!(
            err,
            ConnectionError::WindowExceeded {
                msg: "CHANNEL_DATA",
                id: sid,
                len: 2,
                window: 1
            }
        );
        assert!(err.to_string().contains("CHANNEL_DATA"));

        // Consuming (not receiving) is what makes room.
        let (mut p, sid) = fresh();
        p.server.handle(raw_data(sid, &[0; 500])).unwrap();
        p.server.handle(raw_data(sid, &[0; 500])).unwrap();
        let server_id = match p.server.poll_event() {
            Some(ConnectionEvent::Data { id, .. }) => id,
            ev => panic!("unexpected {ev:?}"),
        };
        p.server.consume(server_id, 1000);
        assert!(p.server.poll_transmit().is_some(), "a WINDOW_ADJUST");
        p.server.handle(raw_data(sid, &[0; 500])).unwrap();
        p.server.handle(raw_data(sid, &[0; 500])).unwrap();
        assert!(matches!(
            p.server.handle(raw_data(sid, &[0; 1])),
            Err(ConnectionError::WindowExceeded { .. })
        ));

        // Data and EOF after EOF.
        let (mut p, sid) = fresh();
        p.server.handle(raw_u32(96, sid)).unwrap();
        assert!(matches!(
            p.server.handle(raw_data(sid, b"late")),
            Err(ConnectionError::AfterEof { .. })
        ));
        let (mut p, sid) = fresh();
        p.server.handle(raw_u32(96, sid)).unwrap();
        assert!(matches!(
            p.server.handle(raw_extended(sid, 1, b"late")),
            Err(ConnectionError::AfterEof { .. })
        ));
        let (mut p, sid) = fresh();
        p.server.handle(raw_u32(96, sid)).unwrap();
        assert!(matches!(
            p.server.handle(raw_u32(96, sid)),
            Err(ConnectionError::AfterEof { .. })
        ));
    }

    /// The peer's window adjustments overflowing 2^32 - 1 is an error; a sane one wakes us.
    #[test]
    fn window_adjust_overflow() {
        let mut p = small_pair();
        let (cid, _) = p.session();
        let mut adjust = raw_u32(93, cid.get()).to_vec();
        adjust.extend_from_slice(&(u32::MAX - W + 1).to_be_bytes());
        assert!(matches!(
            p.client.handle(adjust.into()),
            Err(ConnectionError::WindowOverflow { .. })
        ));
        let mut p = small_pair();
        let (cid, _) = p.session();
        let mut adjust = raw_u32(93, cid.get()).to_vec();
        adjust.extend_from_slice(&(u32::MAX - W).to_be_bytes());
        p.client.handle(adjust.into()).unwrap();
        assert_eq!(p.client.send_window(cid), u32::MAX as usize);
        assert_eq!(
            p.client.poll_event(),
            Some(ConnectionEvent::WindowAvailable { id: cid })
        );
    }
}
