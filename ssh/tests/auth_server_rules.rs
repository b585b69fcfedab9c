//! ServerAuth rules: bad signatures, algorithm/key mismatches, queries, keyboard-interactive,
//! password refusal, attempt limits, sk- keys, pipelining and the end of authentication.

mod auth_support;

// Inside a module named after the file so that `cargo test -p portcullis-ssh auth` selects them.
mod auth_server_rules {
    use crate::auth_support::*;
    use portcullis_ssh::auth::{
        AuthError, AuthMethod, ClientAuth, ClientCredential, SecurityKeySignature, ServerAuth,
        ServerAuthConfig, ServerAuthEvent,
    };
    use portcullis_ssh::msg;
    use signature::Signer;
    use ssh_key::private::{EcdsaKeypair, Ed25519Keypair};
    use ssh_key::public::{KeyData, SkEcdsaSha2NistP256, SkEd25519};
    use ssh_key::sha2::{Digest, Sha256};
    use ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey, Signature};

    /// The signed USERAUTH_REQUEST the real client role produces for `key`.
    fn client_request(key: PrivateKey, sid: &[u8]) -> Vec<u8> {
        let mut client = ClientAuth::new(
            "alice".into(),
            ClientCredential::PublicKey {
                key,
                certificate: None,
            },
        );
        client.start();
        client.poll_transmit().unwrap();
        client
            .handle(&W::new(msg::SERVICE_ACCEPT).string("ssh-userauth").build(), sid)
            .unwrap();
        client.poll_transmit().unwrap().to_vec()
    }

    fn expect_failure_no_event(server: &mut ServerAuth, payload: &[u8]) {
        server.handle(payload, SID).unwrap();
        let out = drain(server);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(is_failure(&out[0]), "{out:?}");
        assert!(events(server).is_empty());
        assert!(!server.is_done());
    }

    fn expect_attempt(server: &mut ServerAuth, payload: &[u8]) -> AuthMethod {
        server.handle(payload, SID).unwrap();
        assert!(drain(server).is_empty());
        let mut ev = events(server);
        assert_eq!(ev.len(), 1);
        let ServerAuthEvent::Attempt { method, .. } = ev.remove(0) else {
            unreachable!()
        };
        method
    }

    #[test]
    fn flipped_signature_byte_fails() {
        for pem in [ED25519, P256, P384, P521, RSA2048] {
            let good = client_request(key(pem), SID);
            let mut bad = good.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x01;
            expect_failure_no_event(&mut server_ready(ServerAuthConfig::default()), &bad);
            // And the untouched one verifies.
            expect_attempt(&mut server_ready(ServerAuthConfig::default()), &good);
        }
    }

    #[test]
    fn every_single_byte_flip_is_refused_or_an_error() {
        // Flip each byte of the signed region of an ed25519 request: never an accepted attempt
        // (except flips that do not change what is signed: none exist in this region).
        let good = client_request(key(ED25519), SID);
        for i in 1..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            let mut server = server_ready(ServerAuthConfig::default());
            if server.handle(&bad, SID).is_ok() {
                assert!(events(&mut server).is_empty(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn wrong_session_id_fails() {
        for pem in [ED25519, P256, RSA2048] {
            let req = client_request(key(pem), b"another session");
            expect_failure_no_event(&mut server_ready(ServerAuthConfig::default()), &req);
        }
        // The same through the pump: the client signs one id, the server checks another.
        let mut client = ClientAuth::new(
            "alice".into(),
            ClientCredential::PublicKey {
                key: key(P384),
                certificate: None,
            },
        );
        let mut server = ServerAuth::new(ServerAuthConfig::default());
        let run = run(&mut client, &mut server, b"client view", SID, |_| {
            panic!("no attempt may be surfaced")
        });
        assert!(!client.is_done() && !server.is_done());
        assert!(matches!(
            run.client_events[..],
            [portcullis_ssh::auth::ClientAuthEvent::Failure { .. }]
        ));
    }

    fn sign_request(key: &PrivateKey, alg: &str, blob: &[u8], sig_alg: Option<HashAlg>) -> Vec<u8> {
        let data = signed_data(SID, "alice", alg, blob);
        let sig: Signature = match sig_alg {
            Some(h) => (key.key_data().rsa().unwrap(), Some(h)).try_sign(&data).unwrap(),
            None => key.try_sign(&data).unwrap(),
        };
        request("alice", "publickey")
            .u8(1)
            .string(alg)
            .string(blob)
            .string(ssh_encoding::Encode::encode_vec(&sig).unwrap())
            .build()
    }

    #[test]
    fn hand_built_request_matches_rfc4252_layout() {
        // A signature over our independent rendering of RFC 4252 §7 verifies.
        let k = key(ED25519);
        let blob = k.public_key().to_bytes().unwrap();
        let req = sign_request(&k, "ssh-ed25519", &blob, None);
        expect_attempt(&mut server_ready(ServerAuthConfig::default()), &req);
        // And it is byte-identical to what the client role sends (Ed25519 is deterministic).
        assert_eq!(req, client_request(k, SID));
    }

    #[test]
    fn algorithm_must_match_key_type() {
        let ed = key(ED25519);
        let ed_blob = ed.public_key().to_bytes().unwrap();
        let p256 = key(P256);
        let p256_blob = p256.public_key().to_bytes().unwrap();
        let rsa = key(RSA2048);
        let rsa_blob = rsa.public_key().to_bytes().unwrap();
        let cases: Vec<Vec<u8>> = vec![
            // ed25519 key under an ecdsa name
            sign_request(&ed, "ecdsa-sha2-nistp256", &ed_blob, None),
            // p256 key named p384
            sign_request(&p256, "ecdsa-sha2-nistp384", &p256_blob, None),
            // request says rsa-sha2-256, signature is rsa-sha2-512
            sign_request(&rsa, "rsa-sha2-256", &rsa_blob, Some(HashAlg::Sha512)),
            // ssh-rsa (SHA-1) is not accepted, whatever the signature
            sign_request(&rsa, "ssh-rsa", &rsa_blob, Some(HashAlg::Sha512)),
            // plain key under a certificate name
            sign_request(&ed, "ssh-ed25519-cert-v01@openssh.com", &ed_blob, None),
            // unknown algorithm
            sign_request(&ed, "ssh-ed448", &ed_blob, None),
        ];
        for (i, req) in cases.iter().enumerate() {
            let mut server = server_ready(ServerAuthConfig::default());
            server.handle(req, SID).unwrap();
            let out = drain(&mut server);
            assert!(out.len() == 1 && is_failure(&out[0]), "case {i}");
            assert!(events(&mut server).is_empty(), "case {i}");
        }
        // The matching combinations do verify.
        for req in [
            sign_request(&rsa, "rsa-sha2-256", &rsa_blob, Some(HashAlg::Sha256)),
            sign_request(&rsa, "rsa-sha2-512", &rsa_blob, Some(HashAlg::Sha512)),
            sign_request(&p256, "ecdsa-sha2-nistp256", &p256_blob, None),
        ] {
            expect_attempt(&mut server_ready(ServerAuthConfig::default()), &req);
        }
    }

    #[test]
    fn certificate_name_with_plain_signature_of_wrong_type_fails() {
        let k = key(ED25519);
        let cert = user_cert(&k, &ca());
        let blob = cert.to_bytes().unwrap();
        // Certificate blob under the plain name.
        let req = sign_request(&k, "ssh-ed25519", &blob, None);
        expect_failure_no_event(&mut server_ready(ServerAuthConfig::default()), &req);
        // Under the right name it verifies; the CA's signature is not the one checked.
        let req = sign_request(&k, "ssh-ed25519-cert-v01@openssh.com", &blob, None);
        let AuthMethod::PublicKey { certificate, .. } =
            expect_attempt(&mut server_ready(ServerAuthConfig::default()), &req)
        else {
            panic!()
        };
        assert_eq!(certificate.as_deref(), Some(&cert));
        // Signed by the CA instead of the subject: refused.
        let data = signed_data(SID, "alice", "ssh-ed25519-cert-v01@openssh.com", &blob);
        let by_ca: Signature = ca().try_sign(&data).unwrap();
        let req = request("alice", "publickey")
            .u8(1)
            .string("ssh-ed25519-cert-v01@openssh.com")
            .string(&blob)
            .string(ssh_encoding::Encode::encode_vec(&by_ca).unwrap())
            .build();
        expect_failure_no_event(&mut server_ready(ServerAuthConfig::default()), &req);
    }

    #[test]
    fn query_gets_pk_ok_without_event() {
        let k = key(P521);
        let blob = k.public_key().to_bytes().unwrap();
        let query = request("alice", "publickey")
            .u8(0)
            .string("ecdsa-sha2-nistp521")
            .string(&blob)
            .build();
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&query, SID).unwrap();
        let out = drain(&mut server);
        assert_eq!(
            &out[..],
            &[W::new(msg::USERAUTH_PK_OK)
                .string("ecdsa-sha2-nistp521")
                .string(&blob)
                .build()]
        );
        assert!(events(&mut server).is_empty());
        // Then the signed request succeeds.
        let signed = client_request(k, SID);
        expect_attempt(&mut server, &signed);
        server.accept();
        assert!(server.is_done());
        // A query for an unacceptable algorithm gets FAILURE.
        let query = request("alice", "publickey")
            .u8(0)
            .string("ssh-dss")
            .string(&blob)
            .build();
        expect_failure_no_event(&mut server_ready(ServerAuthConfig::default()), &query);
    }

    fn ki_request(user: &str) -> Vec<u8> {
        request(user, "keyboard-interactive")
            .string("")
            .string("pam,bsdauth")
            .build()
    }

    #[test]
    fn keyboard_interactive_zero_prompt_dance() {
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&ki_request("carol"), SID).unwrap();
        assert!(drain(&mut server).is_empty());
        assert_eq!(
            events(&mut server),
            vec![ServerAuthEvent::Attempt {
                user: "carol".into(),
                method: AuthMethod::KeyboardInteractive {
                    submethods: "pam,bsdauth".into()
                }
            }]
        );
        server.accept();
        assert!(!server.is_done());
        let out = drain(&mut server);
        assert_eq!(
            &out[..],
            &[W::new(msg::USERAUTH_INFO_REQUEST)
                .string("")
                .string("")
                .string("")
                .u32(0)
                .build()]
        );
        server
            .handle(&W::new(msg::USERAUTH_INFO_RESPONSE).u32(0).build(), SID)
            .unwrap();
        assert_eq!(&drain(&mut server)[..], &[vec![msg::USERAUTH_SUCCESS]]);
        assert!(server.is_done());
        assert_eq!(server.user(), Some("carol"));
    }

    #[test]
    fn keyboard_interactive_rejected_and_answers_refused() {
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&ki_request("carol"), SID).unwrap();
        events(&mut server);
        server.reject(false);
        let out = drain(&mut server);
        assert!(out.len() == 1 && is_failure(&out[0]));

        // Answers to a zero-prompt request are refused, and never echoed anywhere.
        server.handle(&ki_request("carol"), SID).unwrap();
        events(&mut server);
        server.accept();
        drain(&mut server);
        let secret = "kb-int-SECRET-answer";
        let resp = W::new(msg::USERAUTH_INFO_RESPONSE).u32(1).string(secret).build();
        server.handle(&resp, SID).unwrap();
        let out = drain(&mut server);
        assert!(out.len() == 1 && is_failure(&out[0]));
        assert!(!server.is_done());
        assert!(!format!("{server:?}").contains(secret));
        // INFO_RESPONSE when none is expected.
        let err = server.handle(&resp, SID).unwrap_err();
        assert!(!err.to_string().contains(secret));
        assert!(!format!("{err:?}").contains(secret));
    }

    #[test]
    fn new_request_abandons_keyboard_interactive() {
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&ki_request("carol"), SID).unwrap();
        events(&mut server);
        server.accept();
        drain(&mut server);
        server.handle(&request("carol", "none").build(), SID).unwrap();
        assert_eq!(events(&mut server).len(), 1);
        server.accept();
        assert!(server.is_done());
    }

    const PASSWORD: &str = "hunter2-TOP-SECRET-pw";

    fn password_request(change: bool) -> Vec<u8> {
        let w = request("dave", "password").u8(u8::from(change)).string(PASSWORD);
        if change {
            w.string("new-TOP-SECRET-pw").build()
        } else {
            w.build()
        }
    }

    #[test]
    fn password_is_refused_and_never_surfaces() {
        for change in [false, true] {
            let mut server = server_ready(ServerAuthConfig::default());
            server.handle(&password_request(change), SID).unwrap();
            let out = drain(&mut server);
            assert!(out.len() == 1 && is_failure(&out[0]));
            let (methods, _) = parse_failure(&out[0]).unwrap();
            assert!(!methods.iter().any(|m| m == "password"));
            assert!(events(&mut server).is_empty());
            let dbg = format!("{server:?}");
            assert!(!dbg.contains(PASSWORD) && !dbg.contains("TOP-SECRET"), "{dbg}");
            for out in &out {
                assert!(!out.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()));
            }
        }
        // Queued behind a pending attempt, too.
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&request("dave", "none").build(), SID).unwrap();
        server.handle(&password_request(false), SID).unwrap();
        assert!(!format!("{server:?}").contains(PASSWORD));
        let evs = events(&mut server);
        assert!(!format!("{evs:?}").contains(PASSWORD));
        server.reject(false);
        let out = drain(&mut server);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|m| is_failure(m)));
        // Errors from any cut password request name the field, not its content.
        let full = password_request(true);
        for cut in 0..full.len() {
            let mut server = server_ready(ServerAuthConfig::default());
            if let Err(e) = server.handle(&full[..cut], SID) {
                let text = format!("{e} {e:?}");
                assert!(!text.contains("TOP-SECRET"), "{text}");
                assert!(!text.contains("hunter"), "{text}");
            }
        }
    }

    #[test]
    fn max_attempts_then_error() {
        let cfg = ServerAuthConfig {
            max_attempts: 3,
            ..Default::default()
        };
        let mut server = server_ready(cfg);
        // The first `none` is free, as in OpenSSH.
        server.handle(&request("eve", "none").build(), SID).unwrap();
        events(&mut server);
        server.reject(false);
        for _ in 0..3 {
            server.handle(&password_request_for("eve"), SID).unwrap();
        }
        assert_eq!(drain(&mut server).len(), 4);
        let err = server.handle(&password_request_for("eve"), SID).unwrap_err();
        assert_eq!(err, AuthError::TooManyAttempts { limit: 3 });
        assert_eq!(
            err.disconnect_reason(),
            msg::disconnect::NO_MORE_AUTH_METHODS_AVAILABLE
        );

        // Default: 20.
        let mut server = server_ready(ServerAuthConfig::default());
        for _ in 0..20 {
            server.handle(&request("eve", "hostbased").build(), SID).unwrap();
        }
        assert!(matches!(
            server.handle(&request("eve", "hostbased").build(), SID),
            Err(AuthError::TooManyAttempts { limit: 20 })
        ));
    }

    #[test]
    fn user_change_and_wrong_service_are_errors() {
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&request("eve", "hostbased").build(), SID).unwrap();
        assert_eq!(
            server.handle(&request("mallory", "none").build(), SID),
            Err(AuthError::UserChanged)
        );
        let mut server = server_ready(ServerAuthConfig::default());
        let other = W::new(msg::USERAUTH_REQUEST)
            .string("eve")
            .string("ssh-agent")
            .string("none")
            .build();
        assert!(matches!(
            server.handle(&other, SID),
            Err(AuthError::ServiceNotAvailable { .. })
        ));
        let mut server = ServerAuth::new(ServerAuthConfig::default());
        let e = server
            .handle(
                &W::new(msg::SERVICE_REQUEST).string("ssh-connection").build(),
                SID,
            )
            .unwrap_err();
        assert_eq!(e.disconnect_reason(), msg::disconnect::SERVICE_NOT_AVAILABLE);
        // USERAUTH_REQUEST before the service request.
        let mut server = ServerAuth::new(ServerAuthConfig::default());
        assert!(matches!(
            server.handle(&request("eve", "none").build(), SID),
            Err(AuthError::UnexpectedMessage { number: 50, .. })
        ));
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&request("amy", "none").build(), SID).unwrap();
        server.handle(&password_request_for("amy"), SID).unwrap();
        server.handle(&ki_request("amy"), SID).unwrap();
        assert_eq!(events(&mut server).len(), 1);
        assert!(drain(&mut server).is_empty());
        server.reject(false);
        // FAILURE for none, FAILURE for password, then the KI attempt surfaces.
        let out = drain(&mut server);
        assert_eq!(out.len(), 2);
        let ev = events(&mut server);
        assert!(matches!(
            &ev[..],
            [ServerAuthEvent::Attempt {
                method: AuthMethod::KeyboardInteractive { .. },
                ..
            }]
        ));
        server.accept();
        assert_eq!(drain(&mut server)[0][0], msg::USERAUTH_INFO_REQUEST);
    }

    fn password_request_for(user: &str) -> Vec<u8> {
        request(user, "password").u8(0).string(PASSWORD).build()
    }

    #[test]
    fn requests_after_success_are_ignored() {
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&request("amy", "none").build(), SID).unwrap();
        // Pipelined request behind the one that will succeed: dropped.
        server.handle(&ki_request("amy"), SID).unwrap();
        events(&mut server);
        server.accept();
        assert_eq!(&drain(&mut server)[..], &[vec![msg::USERAUTH_SUCCESS]]);
        server.handle(&request("amy", "none").build(), SID).unwrap();
        server.handle(&request("zed", "none").build(), SID).unwrap();
        assert!(drain(&mut server).is_empty());
        assert!(events(&mut server).is_empty());
        assert_eq!(server.user(), Some("amy"));
        // accept/reject without a pending attempt do nothing.
        server.accept();
        server.reject(true);
        assert!(drain(&mut server).is_empty());
        // Non-auth messages are not ours.
        assert!(server.handle(&[msg::CHANNEL_OPEN], SID).is_err());
    }

    // ---- sk- keys: signatures built like a FIDO authenticator would ----

    const APP: &str = "ssh:";

    fn sk_message(flags: u8, counter: u32, data: &[u8]) -> Vec<u8> {
        let mut m = Sha256::digest(APP.as_bytes()).to_vec();
        m.push(flags);
        m.extend_from_slice(&counter.to_be_bytes());
        m.extend_from_slice(&Sha256::digest(data));
        m
    }

    fn sk_ed25519_request(flags: u8, counter: u32) -> (Vec<u8>, KeyData) {
        let kp = Ed25519Keypair::from_seed(&[0x5c; 32]);
        let kd = KeyData::SkEd25519(SkEd25519::new(kp.public, APP));
        let blob = PublicKey::from(kd.clone()).to_bytes().unwrap();
        let alg = "sk-ssh-ed25519@openssh.com";
        let data = signed_data(SID, "alice", alg, &blob);
        let sig: Signature = kp.try_sign(&sk_message(flags, counter, &data)).unwrap();
        let mut raw = sig.as_bytes().to_vec();
        raw.push(flags);
        raw.extend_from_slice(&counter.to_be_bytes());
        let sk_sig = Signature::new(Algorithm::SkEd25519, raw).unwrap();
        let req = request("alice", "publickey")
            .u8(1)
            .string(alg)
            .string(&blob)
            .string(ssh_encoding::Encode::encode_vec(&sk_sig).unwrap())
            .build();
        (req, kd)
    }

    fn sk_ecdsa_request(flags: u8, counter: u32) -> (Vec<u8>, KeyData) {
        let k = key(P256);
        let Some(EcdsaKeypair::NistP256 { public, private }) = k.key_data().ecdsa() else {
            panic!()
        };
        let kd = KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(*public, APP));
        let blob = PublicKey::from(kd.clone()).to_bytes().unwrap();
        let alg = "sk-ecdsa-sha2-nistp256@openssh.com";
        let data = signed_data(SID, "alice", alg, &blob);
        let sig: Signature = private.try_sign(&sk_message(flags, counter, &data)).unwrap();
        let mut raw = sig.as_bytes().to_vec();
        raw.push(flags);
        raw.extend_from_slice(&counter.to_be_bytes());
        let sk_sig = Signature::new(Algorithm::SkEcdsaSha2NistP256, raw).unwrap();
        let req = request("alice", "publickey")
            .u8(1)
            .string(alg)
            .string(&blob)
            .string(ssh_encoding::Encode::encode_vec(&sk_sig).unwrap())
            .build();
        (req, kd)
    }

    #[test]
    fn sk_keys_verify_with_flags_and_counter() {
        for build in [sk_ed25519_request, sk_ecdsa_request] {
            let (req, kd) = build(0x01, 77);
            let method = expect_attempt(&mut server_ready(ServerAuthConfig::default()), &req);
            let AuthMethod::PublicKey {
                key, security_key, ..
            } = method
            else {
                panic!()
            };
            assert_eq!(key.key_data(), &kd);
            assert_eq!(
                security_key,
                Some(SecurityKeySignature {
                    flags: 0x01,
                    counter: 77
                })
            );
            // Without user presence: refused by default, allowed when configured.
            let (req, _) = build(0x00, 78);
            expect_failure_no_event(&mut server_ready(ServerAuthConfig::default()), &req);
            let relaxed = ServerAuthConfig {
                sk_require_user_presence: false,
                ..Default::default()
            };
            expect_attempt(&mut server_ready(relaxed), &req);
            // Tampered counter: the signature covers it.
            let (mut req, _) = build(0x01, 79);
            let last = req.len() - 1;
            req[last] ^= 1;
            expect_failure_no_event(&mut server_ready(ServerAuthConfig::default()), &req);
        }
    }

    #[test]
    fn sk_query_gets_pk_ok() {
        let (_, kd) = sk_ed25519_request(1, 1);
        let blob = PublicKey::from(kd).to_bytes().unwrap();
        let query = request("alice", "publickey")
            .u8(0)
            .string("sk-ssh-ed25519@openssh.com")
            .string(&blob)
            .build();
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&query, SID).unwrap();
        assert_eq!(drain(&mut server)[0][0], msg::USERAUTH_PK_OK);
    }
}
