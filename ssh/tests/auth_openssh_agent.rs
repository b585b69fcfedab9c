//! Cross-check against OpenSSH's own signing code: `ssh-agent` signs our RFC 4252 §7 data
//! (the same `sshkey_sign` path `ssh` uses for publickey authentication), and
//! - the server role accepts the agent's signatures (every key type, and a certificate the
//!   agent loaded through `ssh-add`, which also proves OpenSSH parses the certificate);
//! - for deterministic algorithms (Ed25519, RSA PKCS#1 v1.5) the client role's signature
//!   is byte-identical to the agent's.
//!
//! Skipped (with a note) when `ssh-agent` / `ssh-add` are not installed.

mod auth_support;

// Inside a module named after the file so that `cargo test -p portcullis-ssh auth` selects them.
mod auth_openssh_agent {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use crate::auth_support::*;
    use portcullis_ssh::auth::{AuthMethod, ClientAuth, ClientCredential, ServerAuthConfig, ServerAuthEvent};
    use portcullis_ssh::msg;
    use ssh_key::{Certificate, PrivateKey};

    const SIGN_REQUEST: u8 = 13;
    const SIGN_RESPONSE: u8 = 14;
    const FLAG_RSA_SHA2_256: u32 = 2;
    const FLAG_RSA_SHA2_512: u32 = 4;

    struct Agent {
        child: Child,
        dir: PathBuf,
        sock: PathBuf,
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn have(tool: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn start_agent() -> Option<Agent> {
        if !have("ssh-agent") || !have("ssh-add") {
            eprintln!("ssh-agent/ssh-add not installed: skipping the OpenSSH cross-check");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "portcullis-auth-agent-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let sock = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, dir, sock };
        // Wait for the socket (no timing assertion: a generous bound, then fail clearly).
        for _ in 0..1000 {
            if agent.sock.exists() {
                return Some(agent);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("ssh-agent did not create its socket");
    }

    fn add(agent: &Agent, name: &str, key: &PrivateKey, cert: Option<&Certificate>) {
        let path = agent.dir.join(name);
        write_secret(&path, key.to_openssh(ssh_key::LineEnding::LF).unwrap().as_bytes());
        if let Some(cert) = cert {
            // ssh-add picks up "<key>-cert.pub" and loads key and certificate.
            std::fs::write(
                agent.dir.join(format!("{name}-cert.pub")),
                cert.to_openssh().unwrap(),
            )
            .unwrap();
        }
        let out = Command::new("ssh-add")
            .arg(&path)
            .env("SSH_AUTH_SOCK", &agent.sock)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ssh-add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn write_secret(path: &Path, data: &[u8]) {
        std::fs::write(path, data).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// SSH2_AGENTC_SIGN_REQUEST → the encoded signature.
    fn agent_sign(agent: &Agent, blob: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
        let body = W::new(SIGN_REQUEST).string(blob).string(data).u32(flags).build();
        let mut s = UnixStream::connect(&agent.sock).unwrap();
        s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut resp = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut resp).unwrap();
        assert_eq!(resp[0], SIGN_RESPONSE, "agent refused to sign");
        let n = u32::from_be_bytes(resp[1..5].try_into().unwrap()) as usize;
        assert_eq!(resp.len(), 5 + n);
        resp[5..].to_vec()
    }

    /// The signature string at the end of a signed publickey request.
    fn signature_of(request_bytes: &[u8], prefix_len: usize) -> Vec<u8> {
        let n = u32::from_be_bytes(request_bytes[prefix_len..prefix_len + 4].try_into().unwrap());
        assert_eq!(request_bytes.len(), prefix_len + 4 + n as usize);
        request_bytes[prefix_len + 4..].to_vec()
    }

    fn client_request(key: &PrivateKey, cert: Option<&Certificate>, sig_algs: &[&str]) -> Vec<u8> {
        let mut client = ClientAuth::new(
            "alice".into(),
            ClientCredential::PublicKey {
                key: key.clone(),
                certificate: cert.cloned(),
            },
        );
        client.set_server_sig_algs(sig_algs.iter().copied());
        client.start();
        client.poll_transmit().unwrap();
        client
            .handle(&W::new(msg::SERVICE_ACCEPT).string("ssh-userauth").build(), SID)
            .unwrap();
        client.poll_transmit().unwrap().to_vec()
    }

    struct Case {
        name: &'static str,
        key: PrivateKey,
        cert: Option<Certificate>,
        alg: &'static str,
        flags: u32,
        deterministic: bool,
        sig_algs: &'static [&'static str],
    }

    #[test]
    fn openssh_agent_signatures_match_and_verify() {
        let Some(agent) = start_agent() else {
            return;
        };
        let ca = ca();
        let ed = key(ED25519);
        let ed_cert = user_cert(&ed, &ca);
        let rsa = key(RSA2048);
        let p256 = key(P256);
        let p256_cert = user_cert(&p256, &ca);
        add(&agent, "ed25519", &ed, Some(&ed_cert));
        add(&agent, "p256", &p256, Some(&p256_cert));
        add(&agent, "p384", &key(P384), None);
        add(&agent, "p521", &key(P521), None);
        add(&agent, "rsa", &rsa, None);

        let cases = [
            Case {
                name: "ed25519",
                key: ed.clone(),
                cert: None,
                alg: "ssh-ed25519",
                flags: 0,
                deterministic: true,
                sig_algs: &[],
            },
            Case {
                name: "ed25519 cert",
                key: ed.clone(),
                cert: Some(ed_cert.clone()),
                alg: "ssh-ed25519-cert-v01@openssh.com",
                flags: 0,
                deterministic: true,
                sig_algs: &[],
            },
            Case {
                name: "rsa-sha2-256",
                key: rsa.clone(),
                cert: None,
                alg: "rsa-sha2-256",
                flags: FLAG_RSA_SHA2_256,
                deterministic: true,
                sig_algs: &["rsa-sha2-256"],
            },
            Case {
                name: "rsa-sha2-512",
                key: rsa.clone(),
                cert: None,
                alg: "rsa-sha2-512",
                flags: FLAG_RSA_SHA2_512,
                deterministic: true,
                sig_algs: &["rsa-sha2-512"],
            },
            Case {
                name: "p256",
                key: p256.clone(),
                cert: None,
                alg: "ecdsa-sha2-nistp256",
                flags: 0,
                deterministic: false,
                sig_algs: &[],
            },
            Case {
                name: "p256 cert",
                key: p256.clone(),
                cert: Some(p256_cert.clone()),
                alg: "ecdsa-sha2-nistp256-cert-v01@openssh.com",
                flags: 0,
                deterministic: false,
                sig_algs: &[],
            },
            Case {
                name: "p384",
                key: key(P384),
                cert: None,
                alg: "ecdsa-sha2-nistp384",
                flags: 0,
                deterministic: false,
                sig_algs: &[],
            },
            Case {
                name: "p521",
                key: key(P521),
                cert: None,
                alg: "ecdsa-sha2-nistp521",
                flags: 0,
                deterministic: false,
                sig_algs: &[],
            },
        ];
        for case in cases {
            let blob = match &case.cert {
                Some(c) => c.to_bytes().unwrap(),
                None => case.key.public_key().to_bytes().unwrap(),
            };
            let data = signed_data(SID, "alice", case.alg, &blob);
            let agent_sig = agent_sign(&agent, &blob, &data, case.flags);
            let prefix = request("alice", "publickey")
                .u8(1)
                .string(case.alg)
                .string(&blob)
                .build();

            // Our server accepts OpenSSH's signature.
            let req = W::new(0).raw(&prefix[1..]).string(&agent_sig).build();
            let mut req = req;
            req[0] = msg::USERAUTH_REQUEST;
            let mut server = server_ready(ServerAuthConfig::default());
            server.handle(&req, SID).unwrap();
            let ev = events(&mut server);
            assert!(
                matches!(
                    &ev[..],
                    [ServerAuthEvent::Attempt { method: AuthMethod::PublicKey { algorithm, .. }, .. }]
                        if algorithm == case.alg
                ),
                "{}: server refused OpenSSH's signature: {:?}",
                case.name,
                drain(&mut server)
            );

            // Our client builds the same request prefix, and for deterministic schemes the
            // same signature bytes as OpenSSH.
            let ours = client_request(&case.key, case.cert.as_ref(), case.sig_algs);
            assert_eq!(
                &ours[..prefix.len()],
                &prefix[..],
                "{}: request prefix",
                case.name
            );
            if case.deterministic {
                assert_eq!(
                    signature_of(&ours, prefix.len()),
                    agent_sig,
                    "{}: signature differs from OpenSSH's",
                    case.name
                );
            }
        }
    }
}
