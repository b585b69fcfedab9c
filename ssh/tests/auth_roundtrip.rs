//! ClientAuth ↔ ServerAuth in memory, with a fixed fake session id: every key type, a user
//! certificate, `none`, banners and method lists.

mod auth_support;

// Inside a module named after the file so that `cargo test -p portcullis-ssh auth` selects them.
mod auth_roundtrip {
    use crate::auth_support::*;
    use portcullis_ssh::auth::{
        AuthMethod, ClientAuth, ClientAuthEvent, ClientCredential, ServerAuth, ServerAuthConfig,
        ServerAuthEvent,
    };
    use portcullis_ssh::msg;
    use ssh_key::{Certificate, PrivateKey, PublicKey};

    struct Seen {
        user: String,
        key: PublicKey,
        certificate: Option<Box<Certificate>>,
        algorithm: String,
    }

    fn publickey_login(key: PrivateKey, cert: Option<Certificate>, sig_algs: Option<&[&str]>) -> (Seen, Run) {
        let mut client = ClientAuth::new(
            "alice".into(),
            ClientCredential::PublicKey {
                key,
                certificate: cert,
            },
        );
        if let Some(algs) = sig_algs {
            client.set_server_sig_algs(algs.iter().copied());
        }
        let mut server = ServerAuth::new(ServerAuthConfig::default());
        let mut seen = None;
        let run = run(&mut client, &mut server, SID, SID, |ev| {
            let ServerAuthEvent::Attempt { user, method } = ev else {
                panic!("unexpected event {ev:?}")
            };
            match method {
                AuthMethod::PublicKey {
                    key,
                    certificate,
                    algorithm,
                    security_key,
                } => {
                    assert!(security_key.is_none());
                    seen = Some(Seen {
                        user: user.clone(),
                        key: key.clone(),
                        certificate: certificate.clone(),
                        algorithm: algorithm.clone(),
                    });
                }
                other => panic!("unexpected method {other:?}"),
            }
            true
        });
        assert!(client.is_done(), "client not done: {run:?}");
        assert!(server.is_done());
        assert_eq!(server.user(), Some("alice"));
        assert_eq!(run.client_events, vec![ClientAuthEvent::Success]);
        assert_eq!(run.server_events.len(), 1);
        // service request, one signed request; service accept, success.
        assert_eq!(run.to_server.len(), 2);
        assert_eq!(run.to_client.len(), 2);
        assert_eq!(&run.to_client[1][..], &[msg::USERAUTH_SUCCESS]);
        (seen.expect("an attempt"), run)
    }

    fn plain(pem: &str, expected_alg: &str) {
        let k = key(pem);
        let public = k.public_key().clone();
        let (seen, _) = publickey_login(k, None, None);
        assert_eq!(seen.user, "alice");
        assert_eq!(seen.algorithm, expected_alg);
        assert_eq!(seen.key.key_data(), public.key_data());
        assert!(seen.certificate.is_none());
    }

    #[test]
    fn ed25519() {
        plain(ED25519, "ssh-ed25519");
    }

    #[test]
    fn ecdsa_p256() {
        plain(P256, "ecdsa-sha2-nistp256");
    }

    #[test]
    fn ecdsa_p384() {
        plain(P384, "ecdsa-sha2-nistp384");
    }

    #[test]
    fn ecdsa_p521() {
        plain(P521, "ecdsa-sha2-nistp521");
    }

    #[test]
    fn rsa_sha2_512_by_default() {
        plain(RSA2048, "rsa-sha2-512");
    }

    #[test]
    fn rsa_sha2_256_when_the_server_lists_only_that() {
        let k = key(RSA2048);
        let (seen, run) = publickey_login(k, None, Some(&["ssh-ed25519", "rsa-sha2-256"]));
        assert_eq!(seen.algorithm, "rsa-sha2-256");
        // The signature inside the request is an rsa-sha2-256 one, never ssh-rsa.
        let req = &run.to_server[1];
        let needle = b"\0\0\0\x0crsa-sha2-256";
        assert_eq!(req.windows(needle.len()).filter(|w| w == needle).count(), 2);
    }

    #[test]
    fn rsa_prefers_512_when_both_listed() {
        let (seen, _) = publickey_login(
            key(RSA2048),
            None,
            Some(&["rsa-sha2-256", "rsa-sha2-512", "ssh-rsa"]),
        );
        assert_eq!(seen.algorithm, "rsa-sha2-512");
    }

    #[test]
    fn ed25519_user_certificate() {
        let k = key(ED25519);
        let ca = ca();
        let cert = user_cert(&k, &ca);
        let (seen, run) = publickey_login(k.clone(), Some(cert.clone()), None);
        assert_eq!(seen.algorithm, "ssh-ed25519-cert-v01@openssh.com");
        assert_eq!(seen.key.key_data(), k.public_key().key_data());
        let got = seen.certificate.expect("certificate in the event");
        assert_eq!(*got, cert);
        assert_eq!(got.key_id(), "jdoe@example.com session 1");
        assert_eq!(got.valid_principals(), ["alice".to_string()]);
        assert_eq!(got.signature_key(), ca.public_key().key_data());
        // The key blob in the request is the certificate itself.
        let blob = cert.to_bytes().unwrap();
        assert!(run.to_server[1].windows(blob.len()).any(|w| w == blob.as_slice()));
    }

    #[test]
    fn ecdsa_and_rsa_certificates() {
        let ca = ca();
        for (pem, alg) in [
            (P256, "ecdsa-sha2-nistp256-cert-v01@openssh.com"),
            (RSA2048, "rsa-sha2-512-cert-v01@openssh.com"),
        ] {
            let k = key(pem);
            let cert = user_cert(&k, &ca);
            let (seen, _) = publickey_login(k, Some(cert.clone()), None);
            assert_eq!(seen.algorithm, alg);
            assert_eq!(seen.certificate.as_deref(), Some(&cert));
        }
        let k = key(RSA2048);
        let cert = user_cert(&k, &ca);
        let (seen, _) = publickey_login(k, Some(cert), Some(&["rsa-sha2-256"]));
        assert_eq!(seen.algorithm, "rsa-sha2-256-cert-v01@openssh.com");
    }

    #[test]
    fn certificate_for_another_key_is_a_client_error() {
        let cert = user_cert(&key(P256), &ca());
        let mut client = ClientAuth::new(
            "alice".into(),
            ClientCredential::PublicKey {
                key: key(ED25519),
                certificate: Some(cert),
            },
        );
        client.start();
        client.poll_transmit().unwrap();
        let accept = W::new(msg::SERVICE_ACCEPT).string("ssh-userauth").build();
        let err = client.handle(&accept, SID).unwrap_err();
        assert!(
            err.to_string().contains("certificate is for another key"),
            "{err}"
        );
    }

    #[test]
    fn none_accepted() {
        let mut client = ClientAuth::new("bob".into(), ClientCredential::None);
        let mut server = ServerAuth::new(ServerAuthConfig::default());
        let run = run(&mut client, &mut server, SID, SID, |ev| {
            assert_eq!(
                ev,
                &ServerAuthEvent::Attempt {
                    user: "bob".into(),
                    method: AuthMethod::None
                }
            );
            true
        });
        assert!(client.is_done() && server.is_done());
        assert_eq!(run.client_events, vec![ClientAuthEvent::Success]);
        assert_eq!(
            &run.to_server[1][..],
            &request("bob", "none").build()[..],
            "none request layout"
        );
    }

    #[test]
    fn rejected_attempt_reports_offered_methods() {
        let mut client = ClientAuth::new("bob".into(), ClientCredential::None);
        let mut server = ServerAuth::new(ServerAuthConfig::default());
        let run = run(&mut client, &mut server, SID, SID, |_| false);
        assert!(!client.is_done() && !server.is_done());
        assert_eq!(
            run.client_events,
            vec![ClientAuthEvent::Failure {
                methods: vec!["publickey".into(), "keyboard-interactive".into()],
                partial: false
            }]
        );
    }

    #[test]
    fn method_list_follows_config_and_disabled_methods_fail_without_event() {
        let cfg = ServerAuthConfig {
            none: false,
            keyboard_interactive: false,
            ..Default::default()
        };
        let mut client = ClientAuth::new("bob".into(), ClientCredential::None);
        let mut server = ServerAuth::new(cfg);
        let t = run(&mut client, &mut server, SID, SID, |_| {
            panic!("no event expected")
        });
        assert_eq!(
            t.client_events,
            vec![ClientAuthEvent::Failure {
                methods: vec!["publickey".into()],
                partial: false
            }]
        );

        let cfg = ServerAuthConfig {
            publickey: false,
            ..Default::default()
        };
        let mut client = ClientAuth::new(
            "bob".into(),
            ClientCredential::PublicKey {
                key: key(ED25519),
                certificate: None,
            },
        );
        let mut server = ServerAuth::new(cfg);
        let t = run(&mut client, &mut server, SID, SID, |_| {
            panic!("no event expected")
        });
        assert_eq!(
            t.client_events,
            vec![ClientAuthEvent::Failure {
                methods: vec!["keyboard-interactive".into()],
                partial: false
            }]
        );
    }

    #[test]
    fn partial_success_flag() {
        let mut server = server_ready(ServerAuthConfig::default());
        server.handle(&request("bob", "none").build(), SID).unwrap();
        assert_eq!(events(&mut server).len(), 1);
        server.reject(true);
        let out = drain(&mut server);
        assert_eq!(
            parse_failure(&out[0]),
            Some((vec!["publickey".into(), "keyboard-interactive".into()], true))
        );
    }

    #[test]
    fn banner_before_first_answer() {
        let cfg = ServerAuthConfig {
            banner: Some("Authorized use only\r\n".into()),
            ..Default::default()
        };
        let mut client = ClientAuth::new("bob".into(), ClientCredential::None);
        let mut server = ServerAuth::new(cfg);
        let run = run(&mut client, &mut server, SID, SID, |_| true);
        assert_eq!(
            run.client_events,
            vec![
                ClientAuthEvent::Banner("Authorized use only\r\n".into()),
                ClientAuthEvent::Success
            ]
        );
        assert_eq!(run.to_client[1][0], msg::USERAUTH_BANNER);
        assert_eq!(run.to_client[2][0], msg::USERAUTH_SUCCESS);
        // Only once.
        assert_eq!(
            run.to_client
                .iter()
                .filter(|m| m[0] == msg::USERAUTH_BANNER)
                .count(),
            1
        );
    }

    #[test]
    fn client_messages_have_the_rfc_layout() {
        let mut client = ClientAuth::new("alice".into(), ClientCredential::None);
        client.start();
        client.start();
        assert_eq!(client.poll_transmit().unwrap(), service_request());
        assert!(client.poll_transmit().is_none());
    }

    #[test]
    fn debug_of_client_credential_hides_the_private_key() {
        let k = key(ED25519);
        let client = ClientAuth::new(
            "alice".into(),
            ClientCredential::PublicKey {
                key: k.clone(),
                certificate: None,
            },
        );
        let dbg = format!("{client:?}");
        assert!(dbg.contains("SHA256:"), "{dbg}");
        let secret = k.key_data().ed25519().unwrap().private.to_bytes();
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.to_lowercase().contains(&hex));
        assert!(!dbg.contains("private"), "{dbg}");
    }
}
