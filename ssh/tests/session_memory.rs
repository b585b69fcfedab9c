//! Whole connections in memory: a client Session and a server Session wired back to back,
//! through key exchange, user authentication (a certificate, as the gateway logs in
//! upstream) and a session channel with an exec request, data both ways, exit status, EOF
//! and close; and a channel whose reader stops while its neighbour keeps flowing.

use bytes::Bytes;
use portcullis_ssh::{
    auth::{AuthMethod, ClientCredential, ServerAuthConfig, ServerAuthEvent},
    connection::{ChannelId, ChannelKind, ChannelRequest, ConnectionConfig, ConnectionEvent, Side},
    session::{Session, SessionEvent},
    transport::{TransportConfig, TransportEvent},
};
use ssh_key::{
    certificate::{Builder, CertType},
    private::Ed25519Keypair,
    PrivateKey,
};

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

fn certificate(user: &PrivateKey, ca: &PrivateKey) -> ssh_key::Certificate {
    let mut b = Builder::new([9u8; 32], user.public_key().key_data().clone(), 0, u64::MAX).unwrap();
    b.cert_type(CertType::User).unwrap();
    b.valid_principal("root").unwrap();
    b.sign(ca).unwrap()
}

/// Moves `from`'s pending output into `to` (in odd-sized pieces: any split must work).
fn pass(from: &mut Session, to: &mut Session, events: &mut Vec<SessionEvent>) -> bool {
    let out = from.output().to_vec();
    from.advance_output(out.len());
    for piece in out.chunks(1021) {
        to.recv(piece).expect("recv");
    }
    while let Some(e) = to.poll_event() {
        events.push(e);
    }
    !out.is_empty()
}

/// Moves bytes both ways until neither side has anything to send, collecting events.
fn shuttle(c: &mut Session, s: &mut Session, ce: &mut Vec<SessionEvent>, se: &mut Vec<SessionEvent>) {
    while pass(c, s, se) | pass(s, c, ce) {}
}

fn connected() -> (Session, Session) {
    let host = key(1);
    let user = key(2);
    let ca = key(3);
    let cert = certificate(&user, &ca);
    let mut s = Session::server(
        TransportConfig::server(vec![host.clone()]),
        ServerAuthConfig::default(),
        ConnectionConfig::new(Side::Server),
    );
    let mut c = Session::client(
        TransportConfig::client(),
        "root".into(),
        ClientCredential::PublicKey {
            key: user,
            certificate: Some(cert),
        },
        ConnectionConfig::new(Side::Client),
    );
    let (mut ce, mut se) = (vec![], vec![]);
    for _ in 0..20 {
        shuttle(&mut c, &mut s, &mut ce, &mut se);
        for e in ce.drain(..) {
            if let SessionEvent::Transport(TransportEvent::PeerHostKey(k)) = e {
                assert_eq!(k, *host.public_key());
                c.transport().host_key_verdict(true);
                c.flush().unwrap();
            }
        }
        for e in se.drain(..) {
            if let SessionEvent::ServerAuth(ServerAuthEvent::Attempt { user, method }) = e {
                assert_eq!(user, "root");
                match method {
                    AuthMethod::PublicKey {
                        certificate,
                        algorithm,
                        ..
                    } => {
                        assert_eq!(algorithm, "ssh-ed25519-cert-v01@openssh.com");
                        assert_eq!(certificate.unwrap().valid_principals(), ["root".to_string()]);
                        s.server_auth().unwrap().accept();
                    }
                    other => panic!("unexpected method {other:?}"),
                }
                s.flush().unwrap();
            }
        }
        if c.is_authenticated() && s.is_authenticated() {
            return (c, s);
        }
    }
    panic!("no connection");
}

fn conn_events(v: &mut Vec<SessionEvent>) -> Vec<ConnectionEvent> {
    v.drain(..)
        .filter_map(|e| match e {
            SessionEvent::Connection(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn exec_round_trip_with_exit_status() {
    let (mut c, mut s) = connected();
    let (mut ce, mut se) = (vec![], vec![]);
    let ch = c.connection().open(ChannelKind::Session);
    c.flush().unwrap();
    shuttle(&mut c, &mut s, &mut ce, &mut se);
    let sid = match conn_events(&mut se).as_slice() {
        [ConnectionEvent::ChannelOpen {
            id,
            kind: ChannelKind::Session,
        }] => *id,
        other => panic!("{other:?}"),
    };
    s.connection().accept_open(sid);
    s.flush().unwrap();
    shuttle(&mut c, &mut s, &mut ce, &mut se);
    assert!(matches!(
        conn_events(&mut ce).as_slice(),
        [ConnectionEvent::ChannelOpenConfirmed { .. }]
    ));
    c.connection().request(
        ch,
        ChannelRequest::Exec {
            command: Bytes::from_static(b"cat"),
        },
        true,
    );
    c.connection()
        .request(ch, ChannelRequest::Break { length_ms: 500 }, false);
    assert_eq!(c.connection().send_data(ch, b"hello through the engine"), 24);
    c.connection().eof(ch);
    c.flush().unwrap();
    shuttle(&mut c, &mut s, &mut ce, &mut se);
    let ev = conn_events(&mut se);
    assert!(
        matches!(&ev[0], ConnectionEvent::Request { request: ChannelRequest::Exec { command }, want_reply: true, .. } if &command[..] == b"cat"),
        "{ev:?}"
    );
    assert!(
        matches!(
            &ev[1],
            ConnectionEvent::Request {
                request: ChannelRequest::Break { length_ms: 500 },
                want_reply: false,
                ..
            }
        ),
        "{ev:?}"
    );
    let data = match &ev[2] {
        ConnectionEvent::Data { data, .. } => data.clone(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(&ev[3], ConnectionEvent::Eof { .. }));
    s.connection().reply(sid, true);
    s.connection().consume(sid, data.len());
    assert_eq!(s.connection().send_data(sid, &data), data.len());
    s.connection()
        .request(sid, ChannelRequest::ExitStatus { status: 3 }, false);
    s.connection().eof(sid);
    s.connection().close(sid);
    s.flush().unwrap();
    shuttle(&mut c, &mut s, &mut ce, &mut se);
    let ev = conn_events(&mut ce);
    // The server's CLOSE is answered by the engine at once: the channel is done.
    assert!(
        matches!(ev.last(), Some(ConnectionEvent::Closed { .. })),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[0], ConnectionEvent::RequestReply { success: true, .. }),
        "{ev:?}"
    );
    assert!(matches!(&ev[1], ConnectionEvent::Data { data, .. } if &data[..] == b"hello through the engine"));
    assert!(matches!(
        &ev[2],
        ConnectionEvent::Request {
            request: ChannelRequest::ExitStatus { status: 3 },
            ..
        }
    ));
    assert!(matches!(&ev[3], ConnectionEvent::Eof { .. }));
    assert!(conn_events(&mut se)
        .iter()
        .any(|e| matches!(e, ConnectionEvent::Closed { .. })));
}

/// The reason for the engine: a channel whose reader stopped gets its window and no more,
/// and its neighbour keeps flowing through the same connection — also across a rekey.
#[test]
fn a_stopped_reader_never_holds_up_its_neighbour() {
    let (mut c, mut s) = connected();
    let (mut ce, mut se) = (vec![], vec![]);
    let a = c.connection().open(ChannelKind::Session);
    let b = c.connection().open(ChannelKind::Session);
    c.flush().unwrap();
    shuttle(&mut c, &mut s, &mut ce, &mut se);
    let ids: Vec<ChannelId> = conn_events(&mut se)
        .into_iter()
        .filter_map(|e| match e {
            ConnectionEvent::ChannelOpen { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    for id in &ids {
        s.connection().accept_open(*id);
    }
    s.flush().unwrap();
    shuttle(&mut c, &mut s, &mut ce, &mut se);
    let (sa, sb) = (ids[0], ids[1]);
    let chunk = vec![7u8; 32 * 1024];
    let mut sent_a = 0usize;
    let mut got_b = 0usize;
    for round in 0..400 {
        if round == 100 {
            c.transport().start_rekey();
        }
        // The server never consumes channel a; it drains channel b.
        sent_a += c.connection().send_data(a, &chunk);
        c.connection().send_data(b, &chunk);
        c.flush().unwrap();
        shuttle(&mut c, &mut s, &mut ce, &mut se);
        for e in conn_events(&mut se) {
            if let ConnectionEvent::Data { id, data } = e {
                if id == sb {
                    got_b += data.len();
                    s.connection().consume(sb, data.len());
                }
            }
        }
        s.flush().unwrap();
    }
    let window = ConnectionConfig::new(Side::Server).initial_window as usize;
    assert_eq!(sent_a, window, "the stopped channel got exactly its window");
    assert_eq!(got_b, 400 * chunk.len(), "the neighbour kept flowing, every byte");
    assert!(got_b > 5 * window);
    assert_eq!(s.connection().unconsumed(sa), window);
}

/// A client that asks for key exchange after key exchange before it authenticates makes the
/// server pay for each: the second one ends the connection (no client rekeys that early).
#[test]
fn a_second_key_exchange_before_authentication_ends_the_connection() {
    let host = key(1);
    let mut s = Session::server(
        TransportConfig::server(vec![host]),
        ServerAuthConfig::default(),
        ConnectionConfig::new(Side::Server),
    );
    let mut c = Session::client(
        TransportConfig::client(),
        "root".into(),
        ClientCredential::None,
        ConnectionConfig::new(Side::Client),
    );
    let mut refused = None;
    let mut rekeyed = false;
    for _ in 0..50 {
        let out = c.output().to_vec();
        c.advance_output(out.len());
        if let Err(e) = s.recv(&out) {
            refused = Some(e);
            break;
        }
        let back = s.output().to_vec();
        s.advance_output(back.len());
        // The client's own second key exchange before authentication ends its side too;
        // what it sent before that (its NEWKEYS) still reaches the server.
        let _ = c.recv(&back);
        while let Some(e) = c.poll_event() {
            match e {
                SessionEvent::Transport(TransportEvent::PeerHostKey(_)) => {
                    c.transport().host_key_verdict(true);
                    c.flush().unwrap();
                }
                SessionEvent::Transport(TransportEvent::KexDone { first: true, .. }) if !rekeyed => {
                    rekeyed = true;
                    c.transport().start_rekey();
                    c.flush().unwrap();
                }
                _ => {}
            }
        }
        while s.poll_event().is_some() {}
    }
    assert!(rekeyed, "the first key exchange did not finish");
    assert!(
        matches!(
            refused,
            Some(portcullis_ssh::session::SessionError::RekeyBeforeAuth)
        ),
        "{refused:?}"
    );
    assert!(!s.is_authenticated());
}
