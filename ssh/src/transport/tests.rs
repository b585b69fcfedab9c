//! In-memory tests: a client and a server transport shuttling bytes in random-sized chunks.

use super::*;
use ssh_key::private::Ed25519Keypair;

/// xorshift64*: deterministic chunk sizes and data.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

pub(super) fn ed25519(seed: u8) -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

#[derive(Default)]
pub(super) struct Seen {
    pub payloads: Vec<Bytes>,
    pub kex_done: Vec<(bool, Algorithms)>,
    pub host_keys: Vec<ssh_key::PublicKey>,
    pub certs: Vec<ssh_key::Certificate>,
    pub ext_info: Vec<Vec<(String, Vec<u8>)>>,
    pub disconnects: Vec<(u32, String)>,
    pub idents: Vec<String>,
}

pub(super) struct Pair {
    pub c: Transport,
    pub s: Transport,
    pub cs: Seen,
    pub ss: Seen,
    pub rng: Rng,
    pub max_chunk: usize,
    pub accept_host_key: bool,
}

fn collect(t: &mut Transport, seen: &mut Seen, accept: bool) {
    loop {
        while let Some(p) = t.poll_payload() {
            seen.payloads.push(p);
        }
        let Some(e) = t.poll_event() else { break };
        match e {
            TransportEvent::PeerHostKey(k) => {
                seen.host_keys.push(k);
                t.host_key_verdict(accept);
            }
            TransportEvent::PeerHostCertificate(c) => seen.certs.push(*c),
            TransportEvent::KexDone { first, algorithms } => seen.kex_done.push((first, algorithms)),
            TransportEvent::ExtInfo(v) => seen.ext_info.push(v),
            TransportEvent::Disconnected { reason, description } => {
                seen.disconnects.push((reason, description))
            }
            TransportEvent::PeerIdent(i) => seen.idents.push(i),
        }
    }
}

impl Pair {
    pub(super) fn new(c: TransportConfig, s: TransportConfig, seed: u64) -> Self {
        Pair {
            c: Transport::new(c),
            s: Transport::new(s),
            cs: Seen::default(),
            ss: Seen::default(),
            rng: Rng::new(seed),
            max_chunk: 3000,
            accept_host_key: true,
        }
    }

    fn shuttle(
        from: &mut Transport,
        to: &mut Transport,
        rng: &mut Rng,
        max: usize,
    ) -> Result<bool, TransportError> {
        let n = from.output().len();
        if n == 0 {
            return Ok(false);
        }
        let data = from.output().to_vec();
        from.advance_output(n);
        let mut pos = 0;
        while pos < data.len() {
            let k = rng.range(1, max).min(data.len() - pos);
            // Mostly straight into the receive buffer, as the relay reads when it can (with
            // `grow`, as it does while streaming).
            let mode = rng.range(0, 2);
            match (mode < 2).then(|| to.recv_space(k, mode == 1)).flatten() {
                Some(buf) => {
                    buf.extend_from_slice(&data[pos..pos + k]);
                    to.received()?;
                }
                None => to.recv(&data[pos..pos + k])?,
            }
            pos += k;
        }
        Ok(true)
    }

    /// Moves bytes both ways until both sides are quiet.
    pub(super) fn run(&mut self) -> Result<(), TransportError> {
        loop {
            collect(&mut self.c, &mut self.cs, self.accept_host_key);
            collect(&mut self.s, &mut self.ss, true);
            let a = Self::shuttle(&mut self.c, &mut self.s, &mut self.rng, self.max_chunk)?;
            collect(&mut self.s, &mut self.ss, true);
            let b = Self::shuttle(&mut self.s, &mut self.c, &mut self.rng, self.max_chunk)?;
            collect(&mut self.c, &mut self.cs, self.accept_host_key);
            if !a && !b && self.c.output().is_empty() && self.s.output().is_empty() {
                return Ok(());
            }
        }
    }
}

pub(super) fn server_cfg() -> TransportConfig {
    TransportConfig::server(vec![ed25519(1)])
}

fn channel_data(i: u32, len: usize) -> Vec<u8> {
    let mut p = vec![msg::CHANNEL_DATA];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend((0..len).map(|j| (j as u32 ^ i) as u8));
    p
}

#[test]
fn handshake_every_kex_with_every_cipher_and_mac() {
    // Every (cipher, MAC) combination, each used in both directions across the kex methods.
    let mut combos: Vec<(&'static str, Option<&'static str>)> = Vec::new();
    for c in cipher::CIPHERS {
        if CipherAlg::from_name(c).unwrap().is_aead() {
            combos.push((c, None));
        } else {
            for m in cipher::MACS {
                combos.push((c, Some(m)));
            }
        }
    }
    let mut seed = 1;
    for kex_name in KEX_ALGORITHMS {
        for &(c, m) in &combos {
            let mut ccfg = TransportConfig::client();
            ccfg.kex = vec![kex_name];
            ccfg.ciphers = vec![c];
            ccfg.macs = m.map_or_else(|| cipher::MACS.to_vec(), |m| vec![m]);
            let mut scfg = server_cfg();
            scfg.ciphers = ccfg.ciphers.clone();
            scfg.macs = ccfg.macs.clone();
            seed += 1;
            let mut p = Pair::new(ccfg, scfg, seed);
            p.max_chunk = 700;
            p.run().unwrap_or_else(|e| panic!("{kex_name} {c}/{m:?}: {e}"));
            assert_eq!(p.cs.kex_done.len(), 1, "{kex_name} {c}");
            assert_eq!(p.ss.kex_done.len(), 1, "{kex_name} {c}");
            let a = &p.cs.kex_done[0].1;
            assert_eq!(a, &p.ss.kex_done[0].1);
            assert_eq!((a.kex, a.cipher_c2s, a.cipher_s2c), (*kex_name, c, c));
            assert_eq!((a.mac_c2s, a.mac_s2c), (m, m));
            assert!(a.strict_kex);
            assert_eq!(p.c.session_id(), p.s.session_id());
            // Traffic both ways with the negotiated ciphers.
            for i in 0..10 {
                p.c.send(&channel_data(i, i as usize * 37)).unwrap();
                p.s.send(&channel_data(i + 100, i as usize * 53)).unwrap();
            }
            p.run().unwrap();
            assert_eq!(p.ss.payloads.len(), 10);
            assert_eq!(p.cs.payloads.len(), 10);
            for i in 0..10 {
                assert_eq!(
                    &p.ss.payloads[i as usize][..],
                    &channel_data(i, i as usize * 37)[..]
                );
                assert_eq!(
                    &p.cs.payloads[i as usize][..],
                    &channel_data(i + 100, i as usize * 53)[..]
                );
            }
        }
    }
}

#[test]
fn every_cipher_mac_combination_in_both_directions() {
    // With the fast kex, each combination alone in both directions.
    let mut seed = 1000;
    for c in cipher::CIPHERS {
        let macs: Vec<&'static str> = if CipherAlg::from_name(c).unwrap().is_aead() {
            vec!["hmac-sha2-256"]
        } else {
            cipher::MACS.to_vec()
        };
        for m in macs {
            let mut ccfg = TransportConfig::client();
            ccfg.kex = vec!["curve25519-sha256"];
            ccfg.ciphers = vec![c];
            ccfg.macs = vec![m];
            let mut scfg = server_cfg();
            scfg.ciphers = vec![c];
            scfg.macs = vec![m];
            seed += 1;
            let mut p = Pair::new(ccfg, scfg, seed);
            p.run().unwrap();
            let a = p.cs.kex_done[0].1.clone();
            assert_eq!((a.cipher_c2s, a.cipher_s2c), (*c, *c));
            for i in 0..50 {
                p.c.send(&channel_data(i, (i as usize * 331) % 40000)).unwrap();
                p.s.send(&channel_data(i, (i as usize * 977) % 40000)).unwrap();
            }
            p.run().unwrap();
            assert_eq!(p.ss.payloads.len(), 50, "{c} {m}");
            assert_eq!(p.cs.payloads.len(), 50, "{c} {m}");
        }
    }
}

#[test]
fn ext_info_and_host_key_events() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 7);
    p.run().unwrap();
    assert_eq!(p.cs.host_keys.len(), 1);
    assert_eq!(p.cs.host_keys[0].key_data(), ed25519(1).public_key().key_data());
    assert_eq!(p.cs.ext_info.len(), 1);
    let (name, value) = &p.cs.ext_info[0][0];
    assert_eq!(name, "server-sig-algs");
    assert!(String::from_utf8_lossy(value).contains("ssh-ed25519"));
    assert_eq!(p.cs.idents, vec![p.s.cfg.ident.clone()]);
    assert_eq!(p.ss.idents, vec![p.c.cfg.ident.clone()]);
    assert_eq!(p.cs.kex_done[0].1.kex, "mlkem768x25519-sha256");
    assert_eq!(p.cs.kex_done[0].1.cipher_c2s, "chacha20-poly1305@openssh.com");
    assert!(p.cs.kex_done[0].0);
}

#[test]
fn host_certificate_is_presented_and_surfaced() {
    let host = ed25519(1);
    let ca = ed25519(9);
    let mut b = ssh_key::certificate::Builder::new(
        [7u8; 16].to_vec(),
        host.public_key().key_data().clone(),
        0,
        u64::MAX,
    )
    .unwrap();
    b.cert_type(ssh_key::certificate::CertType::Host).unwrap();
    b.valid_principal("gw.example").unwrap();
    let cert = b.sign(&ca).unwrap();
    let mut scfg = TransportConfig::server(vec![host.clone()]);
    scfg.host_certificates = vec![cert.clone()];
    let mut p = Pair::new(TransportConfig::client(), scfg, 8);
    p.run().unwrap();
    assert_eq!(p.cs.kex_done[0].1.host_key, "ssh-ed25519-cert-v01@openssh.com");
    assert_eq!(p.cs.certs.len(), 1);
    assert_eq!(p.cs.certs[0].signature_key(), ca.public_key().key_data());
    assert_eq!(p.cs.host_keys[0].key_data(), host.public_key().key_data());
}

#[test]
fn rejected_host_key_disconnects() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 9);
    p.accept_host_key = false;
    let _ = p.run();
    assert!(p.c.is_closed());
    assert_eq!(p.ss.disconnects.len(), 1);
    assert_eq!(p.ss.disconnects[0].0, msg::disconnect::HOST_KEY_NOT_VERIFIABLE);
    assert!(matches!(p.c.recv(b"x"), Err(TransportError::HostKeyRejected)));
}

fn stream_with_rekey(initiator_is_client: bool, seed: u64) {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), seed);
    p.run().unwrap();
    let n = 300u32;
    for i in 0..n {
        p.c.send(&channel_data(i, (i as usize * 97) % 5000)).unwrap();
        p.s.send(&channel_data(i, (i as usize * 89) % 5000)).unwrap();
        if i == 100 {
            if initiator_is_client {
                p.c.start_rekey();
            } else {
                p.s.start_rekey();
            }
            assert!(p.c.is_kex_in_progress() || p.s.is_kex_in_progress());
        }
        if i % 7 == 0 {
            p.run().unwrap();
        }
    }
    p.run().unwrap();
    assert_eq!(p.cs.kex_done.len(), 2);
    assert_eq!(p.ss.kex_done.len(), 2);
    assert!(!p.cs.kex_done[1].0);
    assert_eq!(p.ss.payloads.len(), n as usize);
    assert_eq!(p.cs.payloads.len(), n as usize);
    for i in 0..n {
        assert_eq!(
            &p.ss.payloads[i as usize][..],
            &channel_data(i, (i as usize * 97) % 5000)[..]
        );
        assert_eq!(
            &p.cs.payloads[i as usize][..],
            &channel_data(i, (i as usize * 89) % 5000)[..]
        );
    }
    // The session id stays the first exchange hash.
    assert_eq!(p.c.session_id(), p.s.session_id());
}

#[test]
fn rekey_started_by_client_mid_stream() {
    stream_with_rekey(true, 11);
}

#[test]
fn rekey_started_by_server_mid_stream() {
    stream_with_rekey(false, 12);
}

#[test]
fn rekey_started_by_both_at_once() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 13);
    p.run().unwrap();
    p.c.send(&channel_data(1, 10)).unwrap();
    p.c.start_rekey();
    p.s.start_rekey();
    p.c.send(&channel_data(2, 10)).unwrap();
    p.s.send(&channel_data(3, 10)).unwrap();
    p.run().unwrap();
    assert_eq!(p.cs.kex_done.len(), 2);
    assert_eq!(p.ss.kex_done.len(), 2);
    assert_eq!(p.ss.payloads.len(), 2);
    assert_eq!(p.cs.payloads.len(), 1);
}

#[test]
fn byte_limit_triggers_rekeys() {
    let mut ccfg = TransportConfig::client();
    ccfg.rekey_bytes = 64 * 1024;
    let mut scfg = server_cfg();
    scfg.rekey_bytes = 1 << 40;
    let mut p = Pair::new(ccfg, scfg, 14);
    p.run().unwrap();
    for i in 0..64u32 {
        p.c.send(&channel_data(i, 16 * 1024)).unwrap();
        p.run().unwrap();
    }
    // 1 MiB sent over a 64 KiB limit: about 16 rekeys, all started by the client.
    assert!(p.cs.kex_done.len() >= 10, "{} key exchanges", p.cs.kex_done.len());
    assert_eq!(p.cs.kex_done.len(), p.ss.kex_done.len());
    assert_eq!(p.ss.payloads.len(), 64);
    // The receiving side's limit counts too: the server receives 1 MiB against a limit of 64 KiB.
    let mut scfg = server_cfg();
    scfg.rekey_bytes = 64 * 1024;
    let mut ccfg = TransportConfig::client();
    ccfg.rekey_bytes = 1 << 40;
    let mut p = Pair::new(ccfg, scfg, 15);
    p.run().unwrap();
    for i in 0..64u32 {
        p.c.send(&channel_data(i, 16 * 1024)).unwrap();
        p.run().unwrap();
    }
    assert!(p.ss.kex_done.len() >= 10);
    assert_eq!(p.ss.payloads.len(), 64);
}

/// The client's identification and a plaintext packet, as a hostile client would send them.
fn raw_plain_packet(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    SealingKeys::plaintext()
        .write_packet(seq, payload, &mut out)
        .unwrap();
    out
}

#[test]
fn strict_kex_rejects_ignore_before_kexinit() {
    // A real client's KEXINIT (which offers strict kex), preceded by an IGNORE.
    let c = Transport::new(TransportConfig::client());
    let out = c.output().to_vec();
    let ident_end = out.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut s = Transport::new(server_cfg());
    s.recv(&out[..ident_end]).unwrap();
    s.recv(&raw_plain_packet(0, &[msg::IGNORE, 0, 0, 0, 0])).unwrap();
    let e = s.recv(&out[ident_end..]).unwrap_err();
    assert!(matches!(e, TransportError::StrictKex(_)), "{e}");
    // The server queued a DISCONNECT after its own identification and KEXINIT.
    assert!(s.output().len() > 100);
    assert!(matches!(s.recv(b""), Err(TransportError::Closed)));
}

#[test]
fn strict_kex_rejects_ignore_during_initial_kex() {
    let mut c = Transport::new(TransportConfig::client());
    let out = c.output().to_vec();
    let mut s = Transport::new(server_cfg());
    s.recv(&out).unwrap();
    let e = s
        .recv(&raw_plain_packet(1, &[msg::IGNORE, 0, 0, 0, 0]))
        .unwrap_err();
    assert!(matches!(e, TransportError::StrictKex(_)), "{e}");
    c.advance_output(out.len());
}

#[test]
fn non_strict_peer_may_send_ignore() {
    // A client that does not offer strict kex: the IGNORE before KEXINIT is fine.
    let c = Transport::new(TransportConfig::client());
    let out = c.output().to_vec();
    let ident_end = out.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut kexinit = c.kex.as_ref().unwrap().ours.clone();
    let needle = b",kex-strict-c-v00@openssh.com";
    let at = kexinit.windows(needle.len()).position(|w| w == needle).unwrap();
    kexinit.drain(at..at + needle.len());
    // Fix the kex name-list length (first list after the 17-byte header).
    let l = u32::from_be_bytes(kexinit[17..21].try_into().unwrap()) - needle.len() as u32;
    kexinit[17..21].copy_from_slice(&l.to_be_bytes());
    let mut s = Transport::new(server_cfg());
    s.recv(&out[..ident_end]).unwrap();
    s.recv(&raw_plain_packet(0, &[msg::IGNORE, 0, 0, 0, 0])).unwrap();
    s.recv(&raw_plain_packet(1, &kexinit)).unwrap();
    assert!(!s.strict);
}

#[test]
fn upper_layer_message_before_kex_is_refused() {
    let mut s = Transport::new(server_cfg());
    s.recv(b"SSH-2.0-test\r\n").unwrap();
    let e = s
        .recv(&raw_plain_packet(0, &[msg::SERVICE_REQUEST, 0, 0, 0, 0]))
        .unwrap_err();
    assert!(
        matches!(e, TransportError::StrictKex(_) | TransportError::Protocol(_)),
        "{e}"
    );
}

#[test]
fn corrupted_tag_is_an_error_for_every_cipher() {
    for c in cipher::CIPHERS {
        for m in ["hmac-sha2-256", "hmac-sha2-512-etm@openssh.com"] {
            let mut ccfg = TransportConfig::client();
            ccfg.kex = vec!["curve25519-sha256"];
            ccfg.ciphers = vec![c];
            ccfg.macs = vec![m];
            let mut p = Pair::new(ccfg, server_cfg(), 21);
            p.run().unwrap();
            p.c.send(&channel_data(1, 500)).unwrap();
            let mut data = p.c.output().to_vec();
            let last = data.len() - 1;
            data[last] ^= 0x40;
            let e = p.s.recv(&data).unwrap_err();
            assert!(matches!(e, TransportError::Mac { .. }), "{c} {m}: {e}");
            // A DISCONNECT (MAC error) is queued for the client.
            assert!(!p.s.output().is_empty());
        }
    }
}

#[test]
fn corrupted_ciphertext_is_an_error() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 22);
    p.run().unwrap();
    p.c.send(&channel_data(1, 500)).unwrap();
    let mut data = p.c.output().to_vec();
    data[40] ^= 1;
    assert!(matches!(p.s.recv(&data), Err(TransportError::Mac { .. })));
}

#[test]
fn oversize_packet_is_refused() {
    let mut s = Transport::new(server_cfg());
    s.recv(b"SSH-2.0-test\r\n").unwrap();
    let e = s.recv(&[0x00, 0x10, 0x00, 0x00, 4, 1, 2, 3]).unwrap_err();
    assert!(
        matches!(e, TransportError::PacketTooLarge { length: 0x100000, .. }),
        "{e}"
    );
    // Encrypted: a length beyond the limit after the key exchange.
    let mut ccfg = TransportConfig::client();
    ccfg.ciphers = vec!["aes128-gcm@openssh.com"];
    let mut p = Pair::new(ccfg, server_cfg(), 23);
    p.run().unwrap();
    let e = p.s.recv(&[0x7f, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
    assert!(matches!(e, TransportError::PacketTooLarge { .. }), "{e}");
    // And we refuse to send one.
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 24);
    p.run().unwrap();
    let big = vec![msg::CHANNEL_DATA; cipher::MAX_PACKET_LEN];
    assert!(matches!(
        p.c.send(&big),
        Err(TransportError::PayloadTooLarge { .. })
    ));
}

#[test]
fn largest_payload_round_trips() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 25);
    p.run().unwrap();
    let big = vec![msg::CHANNEL_DATA; cipher::MAX_PAYLOAD_LEN];
    p.c.send(&big).unwrap();
    p.run().unwrap();
    assert_eq!(p.ss.payloads[0].len(), big.len());
}

#[test]
fn wrong_guess_kex_packet_is_ignored() {
    let mut ccfg = TransportConfig::client();
    ccfg.kex = vec!["curve25519-sha256", "ecdh-sha2-nistp256"];
    let mut scfg = server_cfg();
    scfg.kex = vec!["ecdh-sha2-nistp256", "curve25519-sha256"];
    let mut c = Transport::new(ccfg);
    let mut s = Transport::new(scfg);
    // Rewrite the client's KEXINIT with first_kex_packet_follows set, and follow it with a
    // guessed (garbage) KEX_ECDH_INIT that the server must drop.
    let out = c.output().to_vec();
    c.advance_output(out.len());
    let ident_end = out.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let kex = c.kex.as_mut().unwrap();
    let at = kex.ours.len() - 5;
    kex.ours[at] = 1;
    let mut forged = out[..ident_end].to_vec();
    forged.extend(raw_plain_packet(0, &kex.ours));
    forged.extend(raw_plain_packet(1, &[msg::KEX_ECDH_INIT, 0, 0, 0, 3, 1, 2, 3]));
    s.recv(&forged).unwrap();
    let mut p = Pair {
        c,
        s,
        cs: Seen::default(),
        ss: Seen::default(),
        rng: Rng::new(5),
        max_chunk: 100,
        accept_host_key: true,
    };
    p.run().unwrap();
    assert_eq!(p.cs.kex_done[0].1.kex, "curve25519-sha256");
    assert_eq!(p.ss.kex_done.len(), 1);
}

#[test]
fn right_guess_kex_packet_is_used() {
    // Same first choices on both sides: the server processes the packet that follows.
    let mut ccfg = TransportConfig::client();
    ccfg.host_key_algorithms = vec!["ssh-ed25519"];
    let mut c = Transport::new(ccfg);
    let mut s = Transport::new(server_cfg());
    let out = c.output().to_vec();
    c.advance_output(out.len());
    let kex = c.kex.as_mut().unwrap();
    let at = kex.ours.len() - 5;
    kex.ours[at] = 1;
    let ident_end = out.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut forged = out[..ident_end].to_vec();
    forged.extend(raw_plain_packet(0, &kex.ours));
    s.recv(&forged).unwrap();
    let mut p = Pair {
        c,
        s,
        cs: Seen::default(),
        ss: Seen::default(),
        rng: Rng::new(6),
        max_chunk: 100,
        accept_host_key: true,
    };
    p.run().unwrap();
    assert_eq!(p.cs.kex_done.len(), 1);
}

#[test]
fn unknown_transport_message_gets_unimplemented() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 26);
    p.run().unwrap();
    // Message 15 is unassigned: inject it through the sealing path.
    let seq = p.c.send_seq;
    p.c.send_packet([&[15, 1, 2], &[]]).unwrap();
    p.run().unwrap();
    // The server answered UNIMPLEMENTED, which the client ignores; both still open.
    assert!(!p.c.is_closed() && !p.s.is_closed());
    assert_eq!(p.c.recv_seq, p.s.send_seq);
    let _ = seq;
}

#[test]
fn disconnect_is_surfaced() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 27);
    p.run().unwrap();
    p.s.disconnect(msg::disconnect::BY_APPLICATION, "bye");
    p.run().unwrap();
    assert_eq!(
        p.cs.disconnects,
        vec![(msg::disconnect::BY_APPLICATION, "bye".to_owned())]
    );
    assert!(p.c.is_closed());
    assert!(matches!(
        p.c.send(&channel_data(1, 1)),
        Err(TransportError::Closed)
    ));
}

#[test]
fn server_banner_lines_are_skipped_by_the_client() {
    let mut c = Transport::new(TransportConfig::client());
    let mut s = Transport::new(server_cfg());
    let mut sout = b"Welcome\r\nto the gateway\r\n".to_vec();
    sout.extend_from_slice(s.output());
    let n = s.output().len();
    s.advance_output(n);
    for b in sout.chunks(3) {
        c.recv(b).unwrap();
    }
    let mut p = Pair {
        c,
        s,
        cs: Seen::default(),
        ss: Seen::default(),
        rng: Rng::new(7),
        max_chunk: 50,
        accept_host_key: true,
    };
    p.run().unwrap();
    assert_eq!(p.cs.kex_done.len(), 1);
}

#[test]
fn sends_before_the_handshake_are_held_in_order() {
    let mut p = Pair::new(TransportConfig::client(), server_cfg(), 28);
    for i in 0..5 {
        p.c.send(&channel_data(i, 100)).unwrap();
    }
    p.run().unwrap();
    assert_eq!(p.ss.payloads.len(), 5);
    for i in 0..5 {
        assert_eq!(&p.ss.payloads[i as usize][..], &channel_data(i, 100)[..]);
    }
}

#[test]
fn mismatched_algorithms_fail_cleanly() {
    let mut ccfg = TransportConfig::client();
    ccfg.ciphers = vec!["aes128-ctr"];
    let mut scfg = server_cfg();
    scfg.ciphers = vec!["aes256-gcm@openssh.com"];
    let mut p = Pair::new(ccfg, scfg, 29);
    let e = p.run().unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::NoCommonAlgorithm {
                what: "cipher (client to server)",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng::new(99);
    for round in 0..300 {
        let role = if round % 2 == 0 {
            Role::Server
        } else {
            Role::Client
        };
        let cfg = if role == Role::Server {
            server_cfg()
        } else {
            TransportConfig::client()
        };
        let mut t = Transport::new(cfg);
        let mut data = b"SSH-2.0-fuzz\r\n".to_vec();
        let n = rng.range(0, 400);
        data.extend((0..n).map(|_| rng.next() as u8));
        // Sometimes a well-formed plaintext packet with a random body.
        if round % 3 == 0 {
            let body: Vec<u8> = (0..rng.range(1, 60)).map(|_| rng.next() as u8).collect();
            data.truncate(14);
            data.extend(raw_plain_packet(0, &body));
        }
        let _ = t.recv(&data);
    }
}

#[test]
fn transport_is_send() {
    fn send<T: Send>() {}
    send::<Transport>();
    send::<SealingKeys>();
    send::<OpeningKeys>();
}

/// A target's key type name (any UTF-8) is quoted in the error a DISCONNECT then carries:
/// cutting it at byte 200 inside a character panicked.
#[test]
fn disconnect_text_is_cut_at_a_character_boundary_without_control_characters() {
    let error = format!(
        "negotiated ssh-ed25519 but the server sent a x{} key\x1b[2J",
        "é".repeat(100)
    );
    for shift in 0..4 {
        let e = format!("{}{error}", "-".repeat(shift));
        let t = disconnect_text(&e);
        assert!(t.len() <= 200 && e.starts_with(&t[..t.len().min(10)]), "{t:?}");
        assert!(!t.chars().any(char::is_control));
    }
    assert_eq!(disconnect_text("short\r\n"), "short");
}
