//! Malformed input: every truncation of every message either role generates (and of the
//! client messages the client role does not generate) is an error; trailing bytes are an
//! error; random mutations never panic.

mod auth_support;

// Inside a module named after the file so that `cargo test -p portcullis-ssh auth` selects them.
mod auth_malformed {
    use crate::auth_support::*;
    use bytes::Bytes;
    use portcullis_ssh::auth::{AuthError, ClientAuth, ClientCredential, ServerAuth, ServerAuthConfig};
    use portcullis_ssh::msg;

    fn client_with(credential: ClientCredential) -> ClientAuth {
        ClientAuth::new("alice".into(), credential)
    }

    fn pk(pem: &str) -> ClientCredential {
        ClientCredential::PublicKey {
            key: key(pem),
            certificate: None,
        }
    }

    fn service_accept() -> Vec<u8> {
        W::new(msg::SERVICE_ACCEPT).string("ssh-userauth").build()
    }

    /// The USERAUTH_REQUEST the client role sends for `credential`.
    fn client_userauth_request(credential: ClientCredential) -> Bytes {
        let mut c = client_with(credential);
        c.start();
        c.poll_transmit().unwrap();
        c.handle(&service_accept(), SID).unwrap();
        c.poll_transmit().unwrap()
    }

    /// Every message a client sends, with a factory for a server in the state to receive it.
    /// (name, payload, a peer in the state to receive it)
    type Case<Peer> = (&'static str, Vec<u8>, fn() -> Peer);

    fn client_messages() -> Vec<Case<ServerAuth>> {
        fn fresh() -> ServerAuth {
            ServerAuth::new(ServerAuthConfig::default())
        }
        fn ready() -> ServerAuth {
            server_ready(ServerAuthConfig::default())
        }
        fn in_ki() -> ServerAuth {
            let mut s = ready();
            s.handle(&ki(), SID).unwrap();
            s.poll_event().unwrap();
            s.accept();
            drain(&mut s);
            s
        }
        fn ki() -> Vec<u8> {
            request("alice", "keyboard-interactive")
                .string("")
                .string("")
                .build()
        }
        let mut c = client_with(ClientCredential::None);
        c.start();
        let service_request = c.poll_transmit().unwrap().to_vec();
        let ed = key(ED25519);
        let ed_blob = ed.public_key().to_bytes().unwrap();
        let cert = user_cert(&ed, &ca());
        vec![
            ("SERVICE_REQUEST", service_request, fresh),
            (
                "none",
                client_userauth_request(ClientCredential::None).to_vec(),
                ready,
            ),
            ("ed25519", client_userauth_request(pk(ED25519)).to_vec(), ready),
            ("p256", client_userauth_request(pk(P256)).to_vec(), ready),
            ("p384", client_userauth_request(pk(P384)).to_vec(), ready),
            ("p521", client_userauth_request(pk(P521)).to_vec(), ready),
            ("rsa", client_userauth_request(pk(RSA2048)).to_vec(), ready),
            (
                "ed25519 certificate",
                client_userauth_request(ClientCredential::PublicKey {
                    key: ed.clone(),
                    certificate: Some(cert),
                })
                .to_vec(),
                ready,
            ),
            (
                "publickey query",
                request("alice", "publickey")
                    .u8(0)
                    .string("ssh-ed25519")
                    .string(&ed_blob)
                    .build(),
                ready,
            ),
            ("keyboard-interactive", ki(), ready),
            (
                "password",
                request("alice", "password").u8(0).string("pw").build(),
                ready,
            ),
            (
                "password change",
                request("alice", "password")
                    .u8(1)
                    .string("pw")
                    .string("new")
                    .build(),
                ready,
            ),
            (
                "INFO_RESPONSE",
                W::new(msg::USERAUTH_INFO_RESPONSE).u32(0).build(),
                in_ki,
            ),
            (
                "INFO_RESPONSE with answers",
                W::new(msg::USERAUTH_INFO_RESPONSE)
                    .u32(2)
                    .string("a")
                    .string("b")
                    .build(),
                in_ki,
            ),
        ]
    }

    /// Every message a server sends, with a factory for a client in the state to receive it.
    fn server_messages() -> Vec<Case<ClientAuth>> {
        fn awaiting_accept() -> ClientAuth {
            let mut c = client_with(pk(ED25519));
            c.start();
            c.poll_transmit().unwrap();
            c
        }
        fn awaiting_result() -> ClientAuth {
            let mut c = awaiting_accept();
            c.handle(&service_accept(), SID).unwrap();
            c.poll_transmit().unwrap();
            c
        }
        let cfg = ServerAuthConfig {
            banner: Some("welcome\n".into()),
            ..Default::default()
        };
        let mut server = ServerAuth::new(cfg);
        server.handle(&service_request(), SID).unwrap();
        let accept = server.poll_transmit().unwrap().to_vec();
        // banner + failure for a hostbased attempt
        server
            .handle(&request("alice", "hostbased").build(), SID)
            .unwrap();
        let banner = server.poll_transmit().unwrap().to_vec();
        let failure = server.poll_transmit().unwrap().to_vec();
        server.handle(&request("alice", "none").build(), SID).unwrap();
        server.reject(true);
        let partial = server.poll_transmit().unwrap().to_vec();
        let blob = key(ED25519).public_key().to_bytes().unwrap();
        server
            .handle(
                &request("alice", "publickey")
                    .u8(0)
                    .string("ssh-ed25519")
                    .string(&blob)
                    .build(),
                SID,
            )
            .unwrap();
        let pk_ok = server.poll_transmit().unwrap().to_vec();
        server
            .handle(
                &request("alice", "keyboard-interactive")
                    .string("")
                    .string("")
                    .build(),
                SID,
            )
            .unwrap();
        server.accept();
        let info_request = server.poll_transmit().unwrap().to_vec();
        server
            .handle(&W::new(msg::USERAUTH_INFO_RESPONSE).u32(0).build(), SID)
            .unwrap();
        let success = server.poll_transmit().unwrap().to_vec();
        assert!(server.is_done());
        vec![
            ("SERVICE_ACCEPT", accept, awaiting_accept),
            ("BANNER", banner, awaiting_result),
            ("FAILURE", failure, awaiting_result),
            ("FAILURE partial", partial, awaiting_result),
            ("PK_OK", pk_ok, awaiting_result),
            ("INFO_REQUEST", info_request, awaiting_result),
            ("SUCCESS", success, awaiting_result),
        ]
    }

    #[test]
    fn every_truncation_of_client_messages_is_an_error() {
        for (name, full, make) in client_messages() {
            // The whole message is fine.
            make()
                .handle(&full, SID)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for cut in 0..full.len() {
                let mut server = make();
                let r = server.handle(&full[..cut], SID);
                assert!(r.is_err(), "{name} cut at {cut}/{} accepted", full.len());
                assert!(server.poll_event().is_none(), "{name} cut at {cut}");
            }
        }
    }

    #[test]
    fn every_truncation_of_server_messages_is_an_error() {
        for (name, full, make) in server_messages() {
            let whole = make().handle(&full, SID);
            if name == "PK_OK" || name == "INFO_REQUEST" {
                // This client never queries and never asks for keyboard-interactive.
                assert!(matches!(whole, Err(AuthError::UnexpectedMessage { .. })));
            } else {
                whole.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            for cut in 0..full.len() {
                let mut client = make();
                let r = client.handle(&full[..cut], SID);
                assert!(r.is_err(), "{name} cut at {cut}/{} accepted", full.len());
                assert!(client.poll_event().is_none(), "{name} cut at {cut}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_errors() {
        for (name, full, make) in client_messages() {
            let mut longer = full.clone();
            longer.push(0);
            let r = make().handle(&longer, SID);
            assert!(matches!(r, Err(AuthError::TrailingData { .. })), "{name}: {r:?}");
        }
        for (name, full, make) in server_messages() {
            if name == "PK_OK" || name == "INFO_REQUEST" {
                continue;
            }
            let mut longer = full.clone();
            longer.push(0);
            let r = make().handle(&longer, SID);
            assert!(matches!(r, Err(AuthError::TrailingData { .. })), "{name}: {r:?}");
        }
    }

    #[test]
    fn errors_name_message_and_field() {
        let mut server = server_ready(ServerAuthConfig::default());
        let e = server
            .handle(&request("alice", "publickey").u8(1).build(), SID)
            .unwrap_err();
        assert_eq!(
            e,
            AuthError::Malformed {
                message: "USERAUTH_REQUEST",
                field: "public key algorithm name"
            }
        );
        assert_eq!(
            e.to_string(),
            "malformed USERAUTH_REQUEST: field `public key algorithm name` missing, truncated or invalid"
        );
        assert_eq!(e.disconnect_reason(), msg::disconnect::PROTOCOL_ERROR);
        let e = server.handle(&[], SID).unwrap_err();
        assert!(matches!(e, AuthError::UnexpectedMessage { number: 0, .. }));
        // Non-UTF-8 user name.
        let bad = W::new(msg::USERAUTH_REQUEST)
            .string(b"\xff\xfe")
            .string("ssh-connection")
            .string("none")
            .build();
        assert_eq!(
            server_ready(ServerAuthConfig::default()).handle(&bad, SID),
            Err(AuthError::Malformed {
                message: "USERAUTH_REQUEST",
                field: "user name"
            })
        );
        // Lengths beyond the payload.
        let huge = W::new(msg::USERAUTH_REQUEST).u32(u32::MAX).raw(b"x").build();
        assert!(server_ready(ServerAuthConfig::default())
            .handle(&huge, SID)
            .is_err());
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, msg: &[u8]) -> Vec<u8> {
        let mut m = msg.to_vec();
        for _ in 0..=rng.below(3) {
            match rng.below(6) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m[i] ^= 1 << rng.below(8);
                }
                1 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(m.len() + 1);
                    m.insert(i, rng.next() as u8);
                }
                3 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m.remove(i);
                }
                4 if m.len() >= 4 => {
                    // Overwrite a would-be length field with something extreme.
                    let i = rng.below(m.len() - 3);
                    let v = [0u32, 1, 0x7fff_ffff, u32::MAX, 0x0010_0000][rng.below(5)];
                    m[i..i + 4].copy_from_slice(&v.to_be_bytes());
                }
                _ => {
                    let i = rng.below(m.len() + 1);
                    m.truncate(i);
                }
            }
        }
        m
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let clients = client_messages();
        let servers = server_messages();
        for _round in 0..300 {
            for (_, full, make) in &clients {
                let m = mutate(&mut rng, full);
                let mut server = make();
                let _ = server.handle(&m, SID);
                while server.poll_event().is_some() {
                    server.accept();
                }
                let _ = format!("{server:?}");
                drain(&mut server);
            }
            for (_, full, make) in &servers {
                let m = mutate(&mut rng, full);
                let mut client = make();
                let _ = client.handle(&m, SID);
                while client.poll_event().is_some() {}
                while client.poll_transmit().is_some() {}
            }
        }
        // Pure noise with every message number, to both roles in every state.
        for _ in 0..3000 {
            let len = rng.below(64);
            let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if !m.is_empty() {
                m[0] = [5u8, 6, 50, 51, 52, 53, 60, 61, rng.next() as u8][rng.below(9)];
            }
            let _ = ServerAuth::new(ServerAuthConfig::default()).handle(&m, SID);
            let _ = server_ready(ServerAuthConfig::default()).handle(&m, SID);
            let mut c = client_with(ClientCredential::None);
            let _ = c.handle(&m, SID);
            c.start();
            let _ = c.handle(&m, SID);
        }
    }
}
