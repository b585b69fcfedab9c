//! Channels end to end between a client and a server `Connection`: every channel type,
//! every request type relayed typed and verbatim, replies in order, global requests, the
//! EOF/CLOSE state machine, id reuse and limits.

mod connection_support;

/// In a module named `connection` so that `cargo test -p portcullis-ssh connection` runs them.
mod connection {
    use crate::connection_support::{config, raw_data, raw_u32, Pair};
    use bytes::Bytes;
    use portcullis_ssh::connection::{
        encode_pty_modes, parse_pty_modes, ChannelKind, ChannelRequest, ConnectionConfig, ConnectionError,
        ConnectionEvent, GlobalRequest, OpenFailure, Side,
    };

    fn all_client_requests() -> Vec<ChannelRequest> {
        vec![
            ChannelRequest::PtyReq {
                term: "xterm-256color".into(),
                cols: 120,
                rows: 40,
                width_px: 0,
                height_px: 0,
                modes: encode_pty_modes(&[(1, 3), (53, 1), (128, 38400), (129, 38400)]),
            },
            ChannelRequest::X11Req {
                single_connection: false,
                auth_protocol: "MIT-MAGIC-COOKIE-1".into(),
                auth_cookie: "0123456789abcdef0123456789abcdef".into(),
                screen: 0,
            },
            ChannelRequest::Env {
                name: "LC_ALL".into(),
                value: Bytes::from_static(b"C\xff"),
            },
            ChannelRequest::AuthAgentReq,
            ChannelRequest::Shell,
            ChannelRequest::Exec {
                command: Bytes::from_static(b"rsync --server -vlogDtpre.iLsfxC . /tmp"),
            },
            ChannelRequest::Subsystem { name: "sftp".into() },
            ChannelRequest::WindowChange {
                cols: 200,
                rows: 50,
                width_px: 1600,
                height_px: 1000,
            },
            ChannelRequest::Signal { name: "TERM".into() },
            ChannelRequest::Break { length_ms: 500 },
            ChannelRequest::Eow,
            ChannelRequest::Keepalive,
            ChannelRequest::Other {
                name: "custom@example.com".into(),
                data: Bytes::from_static(b"\0\x01"),
            },
        ]
    }

    fn all_server_requests() -> Vec<ChannelRequest> {
        vec![
            ChannelRequest::XonXoff { client_can_do: true },
            ChannelRequest::ExitStatus { status: 255 },
            ChannelRequest::ExitSignal {
                signal: "ABRT".into(),
                core_dumped: true,
                message: "aborted (core dumped)".into(),
                language: "".into(),
            },
            ChannelRequest::Keepalive,
        ]
    }

    /// Every request type goes across typed, as is; with want_reply the answers (given out of
    /// order with `reply_to`) come back in request order.
    #[test]
    fn every_request_type_is_relayed_and_replies_keep_order() {
        let mut p = Pair::new();
        let (cid, sid) = p.session();
        let reqs = all_client_requests();
        for (i, req) in reqs.iter().enumerate() {
            p.client.request(cid, req.clone(), i % 2 == 0);
        }
        p.pump();
        for (i, req) in reqs.iter().enumerate() {
            assert_eq!(
                p.next(Side::Server),
                ConnectionEvent::Request {
                    id: sid,
                    request: req.clone(),
                    want_reply: i % 2 == 0
                }
            );
        }
        // Seven requests wanted a reply; answer them backwards: nothing goes out until the first
        // is answered, then all in order.
        let wanted = reqs.len().div_ceil(2) as u64;
        for seq in (1..wanted).rev() {
            p.server.reply_to(sid, seq, seq % 3 != 0);
            assert!(
                p.server.poll_transmit().is_none(),
                "reply {seq} must wait for the earlier ones"
            );
        }
        p.server.reply_to(sid, 0, false);
        p.server.reply_to(sid, 0, true); // already answered: ignored
        p.pump();
        for seq in 0..wanted {
            assert_eq!(
                p.next(Side::Client),
                ConnectionEvent::RequestReply {
                    id: cid,
                    success: seq % 3 != 0
                }
            );
        }
        p.assert_quiet();

        // The server's requests to the client; `reply` answers the oldest.
        for req in all_server_requests() {
            p.server.request(sid, req.clone(), true);
            p.pump();
            assert_eq!(
                p.next(Side::Client),
                ConnectionEvent::Request {
                    id: cid,
                    request: req,
                    want_reply: true
                }
            );
        }
        p.client.reply(cid, false);
        p.client.reply(cid, true);
        p.pump();
        assert_eq!(
            p.next(Side::Server),
            ConnectionEvent::RequestReply {
                id: sid,
                success: false
            }
        );
        assert_eq!(
            p.next(Side::Server),
            ConnectionEvent::RequestReply {
                id: sid,
                success: true
            }
        );
        p.client.reply(cid, true);
        p.client.reply(cid, true);
        p.client.reply(cid, true); // nothing left to answer: ignored
        p.pump();
        assert_eq!(
            p.next(Side::Server),
            ConnectionEvent::RequestReply {
                id: sid,
                success: true
            }
        );
        assert_eq!(
            p.next(Side::Server),
            ConnectionEvent::RequestReply {
                id: sid,
                success: true
            }
        );
        p.assert_quiet();
    }

    /// A request relayed as `Other` (verbatim bytes) arrives typed, and vice versa.
    #[test]
    fn requests_relay_verbatim_as_other() {
        let mut p = Pair::new();
        let (cid, sid) = p.session();
        for req in all_client_requests().into_iter().chain(all_server_requests()) {
            p.client.request(cid, req.clone().into_other(), false);
            p.pump();
            let ev = p.next(Side::Server);
            assert_eq!(
                ev,
                ConnectionEvent::Request {
                    id: sid,
                    request: req.clone(),
                    want_reply: false
                }
            );
            // And the typed request the server got relays on, verbatim, to another peer.
            let ConnectionEvent::Request { request, .. } = ev else {
                unreachable!()
            };
            p.server.request(sid, request.into_other(), false);
            p.pump();
            assert_eq!(
                p.next(Side::Client),
                ConnectionEvent::Request {
                    id: cid,
                    request: req,
                    want_reply: false
                }
            );
        }
    }

    #[test]
    fn pty_modes_survive_the_trip() {
        let mut p = Pair::new();
        let (cid, sid) = p.session();
        let modes = [(1u8, 3u32), (2, 28), (3, 127), (53, 1), (128, 9600), (129, 9600)];
        let req = ChannelRequest::PtyReq {
            term: "vt100".into(),
            cols: 80,
            rows: 24,
            width_px: 640,
            height_px: 480,
            modes: encode_pty_modes(&modes),
        };
        p.client.request(cid, req, true);
        p.pump();
        let ConnectionEvent::Request {
            id,
            request: ChannelRequest::PtyReq {
                modes: got, cols: 80, ..
            },
            want_reply: true,
        } = p.next(Side::Server)
        else {
            panic!("not a pty-req")
        };
        assert_eq!(id, sid);
        assert_eq!(parse_pty_modes(&got).unwrap(), modes);
    }

    /// direct-tcpip from the client; forwarded-tcpip, x11 and agent from the server; each side
    /// refuses the types that only the other side may open; unknown types are the application's.
    #[test]
    fn channel_types_and_their_directions() {
        let mut p = Pair::new();
        let direct = ChannelKind::DirectTcpip {
            host: "db.internal".into(),
            port: 5432,
            orig_host: "127.0.0.1".into(),
            orig_port: 50123,
        };
        let forwarded = ChannelKind::ForwardedTcpip {
            host: "0.0.0.0".into(),
            port: 8080,
            orig_host: "198.18.0.7".into(),
            orig_port: 40000,
        };
        let x11 = ChannelKind::X11 {
            orig_host: "127.0.0.1".into(),
            orig_port: 6010,
        };
        let (c1, s1) = p.open(Side::Client, direct.clone());
        let (s2, c2) = p.open(Side::Server, forwarded.clone());
        let (s3, c3) = p.open(Side::Server, x11.clone());
        let (s4, c4) = p.open(Side::Server, ChannelKind::AuthAgent);
        assert_eq!([c1, c2, c3, c4].map(|c| c.get()), [0, 1, 2, 3]);
        assert_eq!([s1, s2, s3, s4].map(|s| s.get()), [0, 1, 2, 3]);

        // Data both ways on an agent channel.
        assert_eq!(p.server.send_data(s4, b"agent request"), 13);
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::Data {
                id: c4,
                data: Bytes::from_static(b"agent request")
            }
        );

        // Wrong directions are refused by the engine itself, without an event.
        for kind in [forwarded, x11, ChannelKind::AuthAgent] {
            let id = p.client.open(kind);
            p.pump();
            assert_eq!(
                p.next(Side::Client),
                ConnectionEvent::ChannelOpenFailed {
                    id,
                    reason: OpenFailure::AdministrativelyProhibited.code(),
                    description: "channel type not allowed this way".into()
                }
            );
        }
        for kind in [ChannelKind::Session, direct] {
            let id = p.server.open(kind);
            p.pump();
            assert!(
                matches!(p.next(Side::Server), ConnectionEvent::ChannelOpenFailed { id: i, reason: 1, .. } if i == id)
            );
        }
        p.assert_quiet();

        // An unknown type comes up as Other, verbatim; the application refuses it.
        let other = ChannelKind::Other {
            name: "direct-streamlocal@openssh.com".into(),
            data: Bytes::from_static(b"\0\0\0\x01s"),
        };
        let id = p.client.open(other.clone());
        p.pump();
        let ConnectionEvent::ChannelOpen { id: sid, kind } = p.next(Side::Server) else {
            panic!()
        };
        assert_eq!(kind, other);
        p.server.reject_open(
            sid,
            OpenFailure::UnknownChannelType.code(),
            "unknown channel type",
        );
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::ChannelOpenFailed {
                id,
                reason: 3,
                description: "unknown channel type".into()
            }
        );
        assert_eq!(OpenFailure::from_code(3), Some(OpenFailure::UnknownChannelType));
        assert_eq!(OpenFailure::from_code(9), None);
        p.assert_quiet();
    }

    /// Global requests both ways, replies in order, tcpip-forward with port 0 gets the port.
    #[test]
    fn global_requests_and_replies_in_order() {
        let mut p = Pair::new();
        let reqs = [
            (
                GlobalRequest::TcpipForward {
                    address: "localhost".into(),
                    port: 0,
                },
                true,
            ),
            (GlobalRequest::Keepalive, true),
            (GlobalRequest::NoMoreSessions, false),
            (
                GlobalRequest::TcpipForward {
                    address: "".into(),
                    port: 2222,
                },
                true,
            ),
            (
                GlobalRequest::CancelTcpipForward {
                    address: "localhost".into(),
                    port: 40001,
                },
                true,
            ),
            (
                GlobalRequest::Other {
                    name: "x@example.com".into(),
                    data: Bytes::from_static(b"?"),
                },
                true,
            ),
        ];
        for (req, want) in &reqs {
            p.client.global_request(req.clone(), *want);
        }
        p.pump();
        for (req, want) in &reqs {
            assert_eq!(
                p.next(Side::Server),
                ConnectionEvent::GlobalRequest {
                    request: req.clone(),
                    want_reply: *want
                }
            );
        }
        p.server
            .global_reply(true, Bytes::copy_from_slice(&40001u32.to_be_bytes()));
        p.server
            .global_reply(false, Bytes::from_static(b"dropped with a failure"));
        p.server.global_reply(true, Bytes::new());
        p.server.global_reply(true, Bytes::new());
        p.server.global_reply(false, Bytes::new());
        p.server.global_reply(true, Bytes::new()); // nothing left: ignored
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::GlobalReply {
                success: true,
                data: Bytes::from_static(&[0, 0, 0x9c, 0x41])
            }
        );
        for success in [false, true, true, false] {
            assert_eq!(
                p.next(Side::Client),
                ConnectionEvent::GlobalReply {
                    success,
                    data: Bytes::new()
                }
            );
        }

        // The server's host keys (OpenSSH sends them without want_reply) and the client's proof
        // request.
        let keys = vec![
            Bytes::from_static(b"\0\0\0\x0bssh-ed25519..."),
            Bytes::from_static(b"k2"),
        ];
        p.server
            .global_request(GlobalRequest::HostKeys { keys: keys.clone() }, false);
        p.client
            .global_request(GlobalRequest::HostKeysProve { keys: keys.clone() }, true);
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::GlobalRequest {
                request: GlobalRequest::HostKeys { keys: keys.clone() },
                want_reply: false
            }
        );
        assert_eq!(
            p.next(Side::Server),
            ConnectionEvent::GlobalRequest {
                request: GlobalRequest::HostKeysProve { keys },
                want_reply: true
            }
        );
        p.server.global_reply(true, Bytes::from_static(b"\0\0\0\x03sig"));
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::GlobalReply {
                success: true,
                data: Bytes::from_static(b"\0\0\0\x03sig")
            }
        );
        p.assert_quiet();

        // Replies nobody asked for.
        assert_eq!(
            p.client.handle(Bytes::from_static(&[81])),
            Err(ConnectionError::UnexpectedReply {
                msg: "REQUEST_SUCCESS"
            })
        );
        assert_eq!(
            p.server.handle(Bytes::from_static(&[82])),
            Err(ConnectionError::UnexpectedReply {
                msg: "REQUEST_FAILURE"
            })
        );
    }

    #[test]
    fn pending_reply_bounds() {
        let mut server = ConnectionConfig::new(Side::Server);
        server.max_pending_requests = 3;
        server.max_pending_global_requests = 2;
        let mut p = Pair::with(ConnectionConfig::new(Side::Client), server.clone());
        let (cid, _) = p.session();
        for _ in 0..3 {
            p.client.request(cid, ChannelRequest::Keepalive, true);
        }
        // Requests without want_reply do not count.
        p.client.request(cid, ChannelRequest::Keepalive, false);
        p.pump();
        p.client.request(cid, ChannelRequest::Keepalive, true);
        assert_eq!(
            p.try_pump(),
            Err(ConnectionError::TooManyPendingRequests {
                msg: "CHANNEL_REQUEST",
                max: 3
            })
        );

        let mut p = Pair::with(ConnectionConfig::new(Side::Client), server);
        for _ in 0..2 {
            p.client.global_request(GlobalRequest::Keepalive, true);
        }
        p.pump();
        p.server.global_reply(false, Bytes::new());
        p.client.global_request(GlobalRequest::Keepalive, true);
        p.pump();
        p.client.global_request(GlobalRequest::Keepalive, true);
        assert!(matches!(
            p.try_pump(),
            Err(ConnectionError::TooManyPendingRequests { max: 2, .. })
        ));
    }

    #[test]
    fn unexpected_channel_replies_are_errors() {
        let mut p = Pair::new();
        let (cid, sid) = p.session();
        assert_eq!(
            p.client.handle(raw_u32(99, cid.get())),
            Err(ConnectionError::UnexpectedReply {
                msg: "CHANNEL_SUCCESS"
            })
        );
        let mut p = Pair::new();
        let (_, sid2) = p.session();
        assert_eq!(sid, sid2);
        assert!(p.server.handle(raw_u32(100, sid2.get())).is_err());
        // Unknown channels.
        assert_eq!(
            p.server.handle(raw_data(7, b"x")),
            Err(ConnectionError::UnknownChannel {
                msg: "CHANNEL_DATA",
                id: 7
            })
        );
    }

    /// RFC 4254 §5.3: EOF then requests then CLOSE, answered with CLOSE; `Closed` on both sides
    /// once both sent it; nothing can be sent after EOF; ids are reused afterwards.
    #[test]
    fn eof_and_close_state_machine() {
        let mut p = Pair::new();
        let (cid, sid) = p.session();
        p.client.request(
            cid,
            ChannelRequest::Exec {
                command: Bytes::from_static(b"true"),
            },
            true,
        );
        p.pump();
        p.server_events.clear();
        p.server.reply(sid, true);
        assert_eq!(p.server.send_data(sid, b"output"), 6);
        p.server.eof(sid);
        p.server.eof(sid); // once only
        assert_eq!(p.server.send_data(sid, b"late"), 0, "no data after our EOF");
        assert_eq!(p.server.send_window(sid), 0);
        p.server
            .request(sid, ChannelRequest::ExitStatus { status: 0 }, false);
        p.server.close(sid);
        p.server.close(sid); // once only
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::RequestReply {
                id: cid,
                success: true
            }
        );
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::Data {
                id: cid,
                data: Bytes::from_static(b"output")
            }
        );
        assert_eq!(p.next(Side::Client), ConnectionEvent::Eof { id: cid });
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::Request {
                id: cid,
                request: ChannelRequest::ExitStatus { status: 0 },
                want_reply: false
            }
        );
        assert_eq!(p.next(Side::Client), ConnectionEvent::Closed { id: cid });
        assert_eq!(p.next(Side::Server), ConnectionEvent::Closed { id: sid });
        p.assert_quiet();
        assert_eq!((p.client.channel_count(), p.server.channel_count()), (0, 0));
        assert!(!p.client.is_open(cid));

        // Ids are reused.
        let (cid2, sid2) = p.session();
        assert_eq!((cid2, sid2), (cid, sid));

        // Messages from the peer for a channel we closed (before its CLOSE) are ignored,
        // except requests (an exit-status after a client's early CLOSE is still news),
        // which can no longer be answered.
        p.client.close(cid2);
        assert_eq!(p.server.send_data(sid2, b"in flight"), 9);
        p.server
            .request(sid2, ChannelRequest::ExitStatus { status: 1 }, true);
        p.server.eof(sid2);
        let in_flight: Vec<_> = std::iter::from_fn(|| p.server.poll_transmit()).collect();
        for m in in_flight {
            p.client.handle(m).unwrap();
        }
        assert_eq!(
            p.client.poll_event(),
            Some(ConnectionEvent::Request {
                id: cid2,
                request: ChannelRequest::ExitStatus { status: 1 },
                want_reply: false,
            }),
            "requests still delivered after our CLOSE, unanswerable"
        );
        assert_eq!(
            p.client.poll_event(),
            None,
            "data and EOF ignored after our CLOSE"
        );
        p.pump();
        assert_eq!(p.next(Side::Server), ConnectionEvent::Closed { id: sid2 });
        assert_eq!(p.next(Side::Client), ConnectionEvent::Closed { id: cid2 });
        p.assert_quiet();

        // After both CLOSEs the id is unknown: anything for it is an error.
        assert!(matches!(
            p.client.handle(raw_data(cid2.get(), b"x")),
            Err(ConnectionError::UnknownChannel { .. })
        ));
    }

    /// `eof`/`close` before the peer confirmed our open are sent once it does.
    #[test]
    fn eof_and_close_before_confirmation() {
        let mut p = Pair::new();
        let cid = p.client.open(ChannelKind::Session);
        p.client.eof(cid);
        p.pump();
        let ConnectionEvent::ChannelOpen { id: sid, .. } = p.next(Side::Server) else {
            panic!()
        };
        assert_eq!(p.client.send_data(cid, b"x"), 0, "no window before confirmation");
        p.server.accept_open(sid);
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::ChannelOpenConfirmed { id: cid }
        );
        assert_eq!(p.next(Side::Server), ConnectionEvent::Eof { id: sid });

        let cid = p.client.open(ChannelKind::Session);
        p.client.close(cid);
        p.pump();
        let ConnectionEvent::ChannelOpen { id: sid, .. } = p.next(Side::Server) else {
            panic!()
        };
        p.server.accept_open(sid);
        p.pump();
        assert_eq!(p.next(Side::Server), ConnectionEvent::Closed { id: sid });
        assert_eq!(p.next(Side::Client), ConnectionEvent::Closed { id: cid });

        // Closing a peer's open we have not answered refuses it.
        let cid = p.client.open(ChannelKind::Session);
        p.pump();
        let ConnectionEvent::ChannelOpen { id: sid, .. } = p.next(Side::Server) else {
            panic!()
        };
        p.server.close(sid);
        p.pump();
        assert_eq!(p.next(Side::Server), ConnectionEvent::Closed { id: sid });
        assert!(
            matches!(p.next(Side::Client), ConnectionEvent::ChannelOpenFailed { id, reason: 2, .. } if id == cid)
        );
        p.assert_quiet();
    }

    /// A peer's opens beyond `max_channels` are refused with RESOURCE_SHORTAGE; an id is only
    /// reused once its `Closed` event has been polled.
    #[test]
    fn channel_limit_and_id_reuse() {
        let mut server = ConnectionConfig::new(Side::Server);
        server.max_channels = 2;
        let mut p = Pair::with(ConnectionConfig::new(Side::Client), server);
        let (c0, s0) = p.session();
        let (_c1, _s1) = p.session();
        let c2 = p.client.open(ChannelKind::Session);
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::ChannelOpenFailed {
                id: c2,
                reason: OpenFailure::ResourceShortage.code(),
                description: "too many channels".into()
            }
        );
        p.assert_quiet();

        // Close channel 0 but do not poll the server's Closed event yet: its id stays taken.
        p.client.close(c0);
        let close = p.client.poll_transmit().unwrap();
        p.server.handle(close).unwrap();
        assert_eq!(p.server.channel_count(), 2);
        p.client.handle(p.server.poll_transmit().unwrap()).unwrap();
        assert_eq!(p.client.poll_event(), Some(ConnectionEvent::Closed { id: c0 }));
        let again = p.server.open(ChannelKind::Other {
            name: "x".into(),
            data: Bytes::new(),
        });
        assert_ne!(again, s0, "not reused before the Closed event is polled");
        assert_eq!(p.server.poll_event(), Some(ConnectionEvent::Closed { id: s0 }));
        assert_eq!(p.server.channel_count(), 2);
    }

    #[test]
    fn confirmation_and_failure_need_an_opening_channel() {
        let mut p = Pair::new();
        let (cid, _) = p.session();
        let mut confirm = vec![91];
        for v in [cid.get(), 5, 1000, 1000] {
            confirm.extend_from_slice(&v.to_be_bytes());
        }
        assert!(matches!(
            p.client.handle(confirm.into()),
            Err(ConnectionError::UnexpectedMessage { .. })
        ));
        let mut failure = vec![92];
        failure.extend_from_slice(&cid.get().to_be_bytes());
        failure.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            p.client.handle(failure.into()),
            Err(ConnectionError::UnexpectedMessage { .. })
        ));
        // A channel the peer opened and we have not confirmed cannot get data.
        let _ = p.client.open(ChannelKind::Session);
        let open = p.client.poll_transmit().unwrap();
        p.server.handle(open).unwrap();
        let ConnectionEvent::ChannelOpen { id, .. } = p.server.poll_event().unwrap() else {
            panic!()
        };
        assert!(matches!(
            p.server.handle(raw_data(id.get(), b"x")),
            Err(ConnectionError::UnexpectedMessage { .. })
        ));
        let _ = config(Side::Client, 1, 1);
    }

    /// After `no-more-sessions@openssh.com` the server refuses session channels, not others.
    #[test]
    fn no_more_sessions_is_enforced_by_the_server() {
        let mut p = Pair::new();
        let (_c, _s) = p.session();
        p.client.global_request(GlobalRequest::NoMoreSessions, false);
        p.pump();
        assert_eq!(
            p.next(Side::Server),
            ConnectionEvent::GlobalRequest {
                request: GlobalRequest::NoMoreSessions,
                want_reply: false
            }
        );
        let id = p.client.open(ChannelKind::Session);
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::ChannelOpenFailed {
                id,
                reason: 1,
                description: "no more sessions".into()
            }
        );
        p.open(
            Side::Client,
            ChannelKind::DirectTcpip {
                host: "h".into(),
                port: 1,
                orig_host: "o".into(),
                orig_port: 2,
            },
        );
        p.assert_quiet();
    }

    /// A relay's server side (`answer_close` off) answers a client's early CLOSE only when
    /// it says so, after sending what it still has (an exit-status), as sshd does.
    #[test]
    fn early_close_is_answered_by_the_application_when_answer_close_is_off() {
        let server = ConnectionConfig {
            answer_close: false,
            ..ConnectionConfig::new(Side::Server)
        };
        let mut p = Pair::with(ConnectionConfig::new(Side::Client), server);
        let (cid, sid) = p.session();
        p.client.close(cid);
        p.pump();
        assert_eq!(p.next(Side::Server), ConnectionEvent::PeerClosed { id: sid });
        p.assert_quiet();
        // The peer's data is no longer taken; requests can still go out to it.
        assert!(p.server.is_open(sid));
        p.server
            .request(sid, ChannelRequest::ExitStatus { status: 3 }, false);
        p.server.close(sid);
        assert_eq!(p.server.poll_event(), Some(ConnectionEvent::Closed { id: sid }));
        p.pump();
        assert_eq!(
            p.next(Side::Client),
            ConnectionEvent::Request {
                id: cid,
                request: ChannelRequest::ExitStatus { status: 3 },
                want_reply: false,
            }
        );
        assert_eq!(p.next(Side::Client), ConnectionEvent::Closed { id: cid });
        p.assert_quiet();
        assert_eq!((p.client.channel_count(), p.server.channel_count()), (0, 0));
    }
}
