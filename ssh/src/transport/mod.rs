//! The SSH transport layer (RFC 4253 and the OpenSSH extensions), sans-IO.
//!
//! [`Transport`] takes received bytes ([`Transport::recv`], any split), hands decrypted
//! upper-layer payloads up ([`Transport::poll_payload`]) and events
//! ([`Transport::poll_event`]), and queues bytes to write ([`Transport::output`]). It runs the
//! identification exchange, the binary packet protocol, key exchanges (initial, and rekeys
//! started by either side or by the byte limit), strict KEX (Terrapin), and `ext-info`.
//!
//! Steady state costs: each packet is decrypted once, in place, in the receive buffer, and its
//! payload is handed up as a [`Bytes`] split off that buffer; each outgoing packet is framed and
//! encrypted in place at the end of the one output buffer, so many packets leave in one write.
//! Nothing is allocated per packet once the buffers have grown to the traffic's size.
//!
//! Module layout: [`cipher`] (packet ciphers and MACs, usable standalone), `kex` (KEXINIT,
//! negotiation, methods, exchange hash, key derivation), `hostkey` (host key signing and
//! verification), `ident` (identification lines), `wire` (field codec), `error`.

mod chacha_libcrypto;
pub mod cipher;
mod error;
mod hostkey;
mod ident;
mod kex;
mod wire;

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use zeroize::Zeroizing;

pub use error::TransportError;
pub use hostkey::HOST_KEY_ALGORITHMS;
pub use kex::KEX_ALGORITHMS;

use crate::msg;
use cipher::{CipherAlg, MacAlg, OpeningKeys, SealingKeys};
use kex::{ClientSecret, KexAlg, KexInit, Proposal};
use wire::{put_string, put_u32, Reader};

/// Which end of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Default KEX preference (post-quantum hybrids first).
pub const DEFAULT_KEX: &[&str] = KEX_ALGORITHMS;
/// Default cipher preference.
pub const DEFAULT_CIPHERS: &[&str] = cipher::CIPHERS;
/// Default MAC preference (for the CTR ciphers).
pub const DEFAULT_MACS: &[&str] = cipher::MACS;
/// Default `server-sig-algs` a server announces in EXT_INFO (user-key signature algorithms).
pub const DEFAULT_SERVER_SIG_ALGS: &[&str] = &[
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
];
/// Default rekey threshold: 1 GiB in either direction.
pub const DEFAULT_REKEY_BYTES: u64 = 1 << 30;
/// Rekey after this many packets in one direction whatever the byte count (keeps sequence
/// numbers and CTR/GCM counters far from wrapping).
pub const REKEY_PACKETS: u64 = 1 << 31;

/// How a [`Transport`] behaves. `Default` gives a client with every algorithm we implement.
#[derive(Clone)]
pub struct TransportConfig {
    pub role: Role,
    /// Our identification line without CR LF, e.g. `SSH-2.0-portcullis_0.1`.
    pub ident: String,
    /// Preference order, names as on the wire. Names we do not implement are dropped.
    pub kex: Vec<&'static str>,
    pub host_key_algorithms: Vec<&'static str>,
    pub ciphers: Vec<&'static str>,
    pub macs: Vec<&'static str>,
    /// Server role: the host keys. A server offers each algorithm of `host_key_algorithms` it
    /// has a key (and for `-cert-v01` names, a certificate) for.
    pub host_keys: Vec<ssh_key::PrivateKey>,
    /// Server role: host certificates, each matched to the host key it certifies.
    pub host_certificates: Vec<ssh_key::Certificate>,
    /// Server role: the `server-sig-algs` value sent in EXT_INFO when the client asks for it.
    pub server_sig_algs: Vec<&'static str>,
    /// Rekey after this many bytes in either direction (0: only the packet-count limit).
    pub rekey_bytes: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            role: Role::Client,
            ident: concat!("SSH-2.0-portcullis_", env!("CARGO_PKG_VERSION")).to_owned(),
            kex: DEFAULT_KEX.to_vec(),
            host_key_algorithms: HOST_KEY_ALGORITHMS.to_vec(),
            ciphers: DEFAULT_CIPHERS.to_vec(),
            macs: DEFAULT_MACS.to_vec(),
            host_keys: Vec::new(),
            host_certificates: Vec::new(),
            server_sig_algs: DEFAULT_SERVER_SIG_ALGS.to_vec(),
            rekey_bytes: DEFAULT_REKEY_BYTES,
        }
    }
}

impl TransportConfig {
    pub fn client() -> Self {
        TransportConfig::default()
    }

    pub fn server(host_keys: Vec<ssh_key::PrivateKey>) -> Self {
        TransportConfig {
            role: Role::Server,
            host_keys,
            ..TransportConfig::default()
        }
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("role", &self.role)
            .field("ident", &self.ident)
            .field("kex", &self.kex)
            .field("host_key_algorithms", &self.host_key_algorithms)
            .field("ciphers", &self.ciphers)
            .field("macs", &self.macs)
            .field("host_keys", &self.host_keys.len())
            .field("host_certificates", &self.host_certificates.len())
            .field("rekey_bytes", &self.rekey_bytes)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("role", &self.cfg.role)
            .field("peer_ident", &self.peer_ident)
            .field("algorithms", &self.algorithms)
            .field("kex_in_progress", &self.kex.is_some())
            .field("closed", &self.closed)
            .field("send_seq", &self.send_seq)
            .field("recv_seq", &self.recv_seq)
            .finish_non_exhaustive()
    }
}

/// What a key exchange settled on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Algorithms {
    pub kex: &'static str,
    pub host_key: &'static str,
    pub cipher_c2s: &'static str,
    pub cipher_s2c: &'static str,
    /// `None` with an AEAD cipher.
    pub mac_c2s: Option<&'static str>,
    pub mac_s2c: Option<&'static str>,
    /// Strict KEX (`kex-strict-*-v00@openssh.com`) is in force.
    pub strict_kex: bool,
}

/// Something the caller should know.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportEvent {
    /// The peer's identification line, without CR LF.
    PeerIdent(String),
    /// Client: the server presented a host certificate (sent just before [`PeerHostKey`] with
    /// the certified key). Its CA, validity and principals are the caller's to check.
    ///
    /// [`PeerHostKey`]: TransportEvent::PeerHostKey
    PeerHostCertificate(Box<ssh_key::Certificate>),
    /// Client, first key exchange: the server's host key, whose signature over the exchange
    /// hash verified. The handshake waits for [`Transport::host_key_verdict`]. On rekeys the
    /// key must be the same one, or the transport fails; no event then.
    PeerHostKey(ssh_key::PublicKey),
    /// A key exchange completed (both NEWKEYS).
    KexDone { first: bool, algorithms: Algorithms },
    /// The peer's EXT_INFO (RFC 8308): (name, value) pairs, e.g. `server-sig-algs`.
    ExtInfo(Vec<(String, Vec<u8>)>),
    /// The peer sent DISCONNECT; the transport is closed.
    Disconnected { reason: u32, description: String },
}

/// One key exchange in progress.
struct Kex {
    initial: bool,
    /// Our KEXINIT payload (I_C or I_S).
    ours: Vec<u8>,
    /// First entries of our kex and host key lists (for first_kex_packet_follows).
    our_first: (&'static str, &'static str),
    peer: Option<Vec<u8>>,
    alg: Option<(KexAlg, Algorithms)>,
    /// The peer guessed wrong with first_kex_packet_follows: drop its next KEX packet.
    skip_next: bool,
    client_secret: Option<(ClientSecret, Vec<u8>)>,
    /// Server: the reply went out.
    replied: bool,
    next_seal: Option<SealingKeys>,
    next_open: Option<OpeningKeys>,
    awaiting_verdict: bool,
    newkeys_sent: bool,
    newkeys_received: bool,
}

/// The transport state machine. See the module docs.
pub struct Transport {
    cfg: TransportConfig,
    /// Host key algorithms we offer (server: those we hold keys for).
    host_key_algs: Vec<&'static str>,
    peer_ident: Option<String>,
    ident_lines: usize,

    rbuf: BytesMut,
    open: OpeningKeys,
    recv_seq: u32,
    /// packet_length of the packet at the head of `rbuf`, once decrypted.
    pending_len: Option<usize>,

    out: Vec<u8>,
    out_pos: usize,
    seal: SealingKeys,
    send_seq: u32,

    payloads: VecDeque<Bytes>,
    events: VecDeque<TransportEvent>,
    /// Upper-layer payloads held during a key exchange: u32 length + payload, in order.
    held: Vec<u8>,

    kex: Option<Box<Kex>>,
    session_id: Option<Vec<u8>>,
    first_kex_done: bool,
    strict: bool,
    /// The peer offered ext-info-c (we are server) or ext-info-s (we are client).
    peer_ext_info: bool,
    /// Client: K_S of the first key exchange (rekeys must present the same).
    first_host_key: Option<Vec<u8>>,
    algorithms: Option<Algorithms>,

    sent_bytes: u64,
    recv_bytes: u64,
    sent_packets: u64,
    recv_packets: u64,

    closed: bool,
    /// An error found outside `recv` (while resuming after a host key verdict), reported by
    /// the next `recv`/`send`.
    deferred_error: Option<TransportError>,
}

fn known(list: &[&'static str], ok: impl Fn(&str) -> bool) -> Vec<&'static str> {
    list.iter().copied().filter(|n| ok(n)).collect()
}

impl Transport {
    /// Creates the transport and queues our identification line and KEXINIT.
    pub fn new(mut cfg: TransportConfig) -> Self {
        cfg.kex = known(&cfg.kex, |n| KexAlg::from_name(n).is_some());
        cfg.ciphers = known(&cfg.ciphers, |n| {
            CipherAlg::from_name(n).is_some_and(|c| c != CipherAlg::None)
        });
        cfg.macs = known(&cfg.macs, |n| MacAlg::from_name(n).is_some());
        cfg.host_key_algorithms = known(&cfg.host_key_algorithms, |n| HOST_KEY_ALGORITHMS.contains(&n));
        let host_key_algs = match cfg.role {
            Role::Client => cfg.host_key_algorithms.clone(),
            Role::Server => {
                hostkey::server_algorithms(&cfg.host_key_algorithms, &cfg.host_keys, &cfg.host_certificates)
            }
        };
        let mut t = Transport {
            host_key_algs,
            peer_ident: None,
            ident_lines: 0,
            // Both buffers grow to what the connection needs: an idle session's hold what
            // its largest packet took, not a preallocation (thousands of sessions are held).
            rbuf: BytesMut::new(),
            open: OpeningKeys::plaintext(),
            recv_seq: 0,
            pending_len: None,
            out: Vec::new(),
            out_pos: 0,
            seal: SealingKeys::plaintext(),
            send_seq: 0,
            payloads: VecDeque::with_capacity(64),
            events: VecDeque::new(),
            held: Vec::new(),
            kex: None,
            session_id: None,
            first_kex_done: false,
            strict: false,
            peer_ext_info: false,
            first_host_key: None,
            algorithms: None,
            sent_bytes: 0,
            recv_bytes: 0,
            sent_packets: 0,
            recv_packets: 0,
            closed: false,
            deferred_error: None,
            cfg,
        };
        t.out.extend_from_slice(t.cfg.ident.as_bytes());
        t.out.extend_from_slice(b"\r\n");
        if let Err(e) = t.start_kex() {
            t.fail(e);
        }
        t
    }

    pub fn role(&self) -> Role {
        self.cfg.role
    }

    /// Feeds received bytes (any split of the stream).
    pub fn recv(&mut self, data: &[u8]) -> Result<(), TransportError> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        if self.closed {
            return Err(TransportError::Closed);
        }
        self.rbuf.extend_from_slice(data);
        self.process().map_err(|e| self.fail_with(e))
    }

    /// Room to read the socket straight into, saving [`recv`](Self::recv)'s copy: the
    /// receive buffer, when at least `want` bytes fit at its end without allocating (once
    /// the space of packets whose payloads were all dropped is taken back — a streaming
    /// connection's buffer after its first large read). With `grow` (a connection that
    /// streams), a buffer with at least a quarter of `want` free is read into as it is, and
    /// one with less gets `want` more room — a fresh buffer if its space is still held by
    /// payloads the application keeps (a recorded session's bytes wait for the log), with
    /// the unparsed bytes copied over. `None`: read elsewhere and `recv`, so an idle
    /// connection never holds a read-sized buffer. Append only (as `try_read_buf` does), then
    /// call [`received`](Self::received).
    pub fn recv_space(&mut self, want: usize, grow: bool) -> Option<&mut BytesMut> {
        if self.closed || self.deferred_error.is_some() {
            return None;
        }
        let free = self.rbuf.capacity() - self.rbuf.len();
        let fits = free >= want || self.rbuf.try_reclaim(want);
        if !fits && grow && free < want / 4 {
            self.rbuf.reserve(want);
        }
        (fits || grow).then_some(&mut self.rbuf)
    }

    /// Takes in what was appended to [`recv_space`](Self::recv_space), as `recv` does.
    pub fn received(&mut self) -> Result<(), TransportError> {
        self.recv(&[])
    }

    /// The next upper-layer payload (message number >= 50, SERVICE_REQUEST/ACCEPT), in order,
    /// message number included.
    pub fn poll_payload(&mut self) -> Option<Bytes> {
        self.payloads.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TransportEvent> {
        self.events.pop_front()
    }

    /// Client: accept or refuse the host key of the last [`TransportEvent::PeerHostKey`]. The
    /// handshake resumes (NEWKEYS goes out) on accept; a refusal closes the transport with a
    /// DISCONNECT. An error found while resuming is returned by the next `recv`/`send`.
    pub fn host_key_verdict(&mut self, accept: bool) {
        let Some(k) = self.kex.as_mut() else { return };
        if !k.awaiting_verdict || self.closed {
            return;
        }
        k.awaiting_verdict = false;
        if !accept {
            let e = self.fail_with(TransportError::HostKeyRejected);
            self.deferred_error = Some(e);
            return;
        }
        if let Err(e) = self.send_newkeys().and_then(|()| self.process()) {
            let e = self.fail_with(e);
            self.deferred_error = Some(e);
        }
    }

    /// Queues an upper-layer payload (message number first). During a key exchange it is held
    /// and sent, in order, right after our NEWKEYS.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        self.send_parts([payload, &[]])
    }

    /// Like [`send`](Self::send) for a payload in two pieces sent back to back (a channel
    /// data header and the data), framed into one packet without joining them first.
    pub fn send_parts(&mut self, parts: [&[u8]; 2]) -> Result<(), TransportError> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        if self.closed {
            return Err(TransportError::Closed);
        }
        let Some(&m) = parts[0].first().or(parts[1].first()) else {
            return Err(TransportError::Protocol("empty payload".into()));
        };
        let len = parts[0].len() + parts[1].len();
        if m < msg::USERAUTH_REQUEST && m != msg::SERVICE_REQUEST && m != msg::SERVICE_ACCEPT {
            return Err(TransportError::Protocol(format!(
                "message {m} belongs to the transport layer and cannot be sent through send()"
            )));
        }
        if len > cipher::MAX_PAYLOAD_LEN {
            return Err(TransportError::PayloadTooLarge {
                length: len,
                max: cipher::MAX_PAYLOAD_LEN,
            });
        }
        if self.holding() {
            put_u32(&mut self.held, len as u32);
            self.held.extend_from_slice(parts[0]);
            self.held.extend_from_slice(parts[1]);
            return Ok(());
        }
        self.send_packet(parts).map_err(|e| self.fail_with(e))?;
        self.check_rekey().map_err(|e| self.fail_with(e))
    }

    /// Bytes to write to the socket.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// The caller wrote `n` bytes of `output()`.
    pub fn advance_output(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// H of the first key exchange.
    pub fn session_id(&self) -> Option<&[u8]> {
        self.session_id.as_deref()
    }

    pub fn peer_ident(&self) -> Option<&str> {
        self.peer_ident.as_deref()
    }

    /// The algorithms of the last completed key exchange.
    pub fn algorithms(&self) -> Option<&Algorithms> {
        self.algorithms.as_ref()
    }

    /// A key exchange is running.
    /// Bytes of upper-layer payloads held until the key exchange in progress completes.
    pub fn held_bytes(&self) -> usize {
        self.held.len()
    }

    pub fn is_kex_in_progress(&self) -> bool {
        self.kex.is_some()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Starts a rekey (no-op before the first key exchange completed or during one).
    pub fn start_rekey(&mut self) {
        if self.closed || !self.first_kex_done || self.kex.is_some() {
            return;
        }
        if let Err(e) = self.start_kex() {
            let e = self.fail_with(e);
            self.deferred_error = Some(e);
        }
    }

    /// Queues a DISCONNECT and closes the transport.
    pub fn disconnect(&mut self, reason: u32, description: &str) {
        if self.closed {
            return;
        }
        let mut p = Vec::with_capacity(description.len() + 16);
        p.push(msg::DISCONNECT);
        put_u32(&mut p, reason);
        put_string(&mut p, description.as_bytes());
        put_string(&mut p, b"");
        let _ = self.send_packet([&p, &[]]);
        self.closed = true;
    }

    // -----------------------------------------------------------------------------------
    // Failure

    fn fail(&mut self, e: TransportError) {
        let e = self.fail_with(e);
        self.deferred_error = Some(e);
    }

    /// Closes the transport after `e`, queueing a DISCONNECT, and gives `e` back.
    fn fail_with(&mut self, e: TransportError) -> TransportError {
        if !self.closed {
            let text = disconnect_text(&e.to_string());
            self.disconnect(e.disconnect_reason(), &text);
        }
        self.closed = true;
        e
    }

    // -----------------------------------------------------------------------------------
    // Sending

    fn holding(&self) -> bool {
        self.kex.as_ref().is_some_and(|k| !k.newkeys_sent)
    }

    fn send_packet(&mut self, parts: [&[u8]; 2]) -> Result<(), TransportError> {
        let n = self
            .seal
            .write_packet_parts(self.send_seq, parts, &mut self.out)?;
        self.send_seq = self.send_seq.wrapping_add(1);
        if self.send_seq == 0 && !self.first_kex_done {
            return Err(TransportError::Protocol(
                "outgoing sequence number wrapped during the initial key exchange".into(),
            ));
        }
        self.sent_bytes += n as u64;
        self.sent_packets += 1;
        Ok(())
    }

    fn check_rekey(&mut self) -> Result<(), TransportError> {
        if self.kex.is_some() || !self.first_kex_done || self.closed {
            return Ok(());
        }
        let limit = self.cfg.rekey_bytes;
        let by_bytes = limit > 0 && (self.sent_bytes >= limit || self.recv_bytes >= limit);
        if by_bytes || self.sent_packets >= REKEY_PACKETS || self.recv_packets >= REKEY_PACKETS {
            self.start_kex()?;
        }
        Ok(())
    }

    fn start_kex(&mut self) -> Result<(), TransportError> {
        let initial = !self.first_kex_done;
        let mut kex_list: Vec<&str> = self.cfg.kex.clone();
        if initial {
            match self.cfg.role {
                Role::Client => kex_list.extend(["ext-info-c", "kex-strict-c-v00@openssh.com"]),
                Role::Server => kex_list.extend(["ext-info-s", "kex-strict-s-v00@openssh.com"]),
            }
        }
        let ours = Proposal {
            kex: kex_list,
            host_key: &self.host_key_algs,
            ciphers: &self.cfg.ciphers,
            macs: &self.cfg.macs,
        }
        .encode()?;
        let our_first = (
            self.cfg.kex.first().copied().unwrap_or(""),
            self.host_key_algs.first().copied().unwrap_or(""),
        );
        self.send_packet([&ours, &[]])?;
        self.kex = Some(Box::new(Kex {
            initial,
            ours,
            our_first,
            peer: None,
            alg: None,
            skip_next: false,
            client_secret: None,
            replied: false,
            next_seal: None,
            next_open: None,
            awaiting_verdict: false,
            newkeys_sent: false,
            newkeys_received: false,
        }));
        Ok(())
    }

    fn send_newkeys(&mut self) -> Result<(), TransportError> {
        self.send_packet([&[msg::NEWKEYS], &[]])?;
        let k = self
            .kex
            .as_mut()
            .ok_or(TransportError::Crypto("no key exchange"))?;
        self.seal = k
            .next_seal
            .take()
            .ok_or(TransportError::Crypto("no derived keys"))?;
        k.newkeys_sent = true;
        let initial = k.initial;
        let done = k.newkeys_received;
        if self.strict {
            self.send_seq = 0;
        }
        self.sent_bytes = 0;
        self.sent_packets = 0;
        if initial && self.cfg.role == Role::Server && self.peer_ext_info {
            let mut p = vec![msg::EXT_INFO];
            put_u32(&mut p, 1);
            put_string(&mut p, b"server-sig-algs");
            put_string(&mut p, self.cfg.server_sig_algs.join(",").as_bytes());
            self.send_packet([&p, &[]])?;
        }
        let held = std::mem::take(&mut self.held);
        let mut r = &held[..];
        while r.len() >= 4 {
            let n = r.get_u32() as usize;
            let (p, rest) = r.split_at(n);
            self.send_packet([p, &[]])?;
            r = rest;
        }
        if done {
            self.finish_kex();
        }
        Ok(())
    }

    fn finish_kex(&mut self) {
        let Some(k) = self.kex.take() else { return };
        let first = !self.first_kex_done;
        self.first_kex_done = true;
        if let Some((_, algorithms)) = k.alg {
            self.algorithms = Some(algorithms.clone());
            self.events
                .push_back(TransportEvent::KexDone { first, algorithms });
        }
    }

    // -----------------------------------------------------------------------------------
    // Receiving

    fn process(&mut self) -> Result<(), TransportError> {
        if self.peer_ident.is_none() {
            let (used, ident) = ident::scan(&self.rbuf, self.cfg.role, &mut self.ident_lines)?;
            self.rbuf.advance(used);
            let Some(ident) = ident else { return Ok(()) };
            self.peer_ident = Some(ident.clone());
            self.events.push_back(TransportEvent::PeerIdent(ident));
        }
        while !self.closed && !self.kex.as_ref().is_some_and(|k| k.awaiting_verdict) {
            let Some((seq, payload)) = self.next_packet()? else {
                break;
            };
            self.handle(seq, payload)?;
            self.check_rekey()?;
        }
        Ok(())
    }

    /// Decrypts the packet at the head of the receive buffer, if it is complete.
    fn next_packet(&mut self) -> Result<Option<(u32, Bytes)>, TransportError> {
        let seq = self.recv_seq;
        let len = match self.pending_len {
            Some(l) => l,
            None => {
                let need = self.open.length_bytes_needed();
                if self.rbuf.len() < need {
                    return Ok(None);
                }
                let l = self.open.decrypt_length(seq, &mut self.rbuf[..need])? as usize;
                self.open.check_length(seq, l)?;
                self.pending_len = Some(l);
                l
            }
        };
        let total = 4 + len + self.open.tag_len();
        if self.rbuf.len() < total {
            // No reserve here: payloads split off this buffer may still be queued, and growing
            // now would copy into a new allocation. The next `recv` grows it, usually after the
            // caller took the payloads, when the buffer's space can be reused in place.
            return Ok(None);
        }
        self.pending_len = None;
        self.open.open(seq, &mut self.rbuf[..total])?;
        let range = cipher::payload_range(seq, &self.rbuf[..4 + len])?;
        let packet = self.rbuf.split_to(total).freeze();
        self.recv_seq = seq.wrapping_add(1);
        if self.recv_seq == 0 && !self.first_kex_done {
            return Err(TransportError::Protocol(
                "incoming sequence number wrapped during the initial key exchange".into(),
            ));
        }
        self.recv_bytes += total as u64;
        self.recv_packets += 1;
        Ok(Some((seq, packet.slice(range))))
    }

    fn handle(&mut self, seq: u32, payload: Bytes) -> Result<(), TransportError> {
        let m = payload[0];
        let strict_initial = self.strict && self.kex.as_ref().is_some_and(|k| k.initial);
        match m {
            msg::DISCONNECT => {
                let mut r = Reader::new("DISCONNECT", &payload[1..]);
                let reason = r.u32("reason code")?;
                let description = String::from_utf8_lossy(r.string("description")?).into_owned();
                self.events
                    .push_back(TransportEvent::Disconnected { reason, description });
                self.closed = true;
            }
            msg::KEXINIT => self.on_kexinit(seq, payload)?,
            msg::NEWKEYS => self.on_newkeys(&payload)?,
            msg::KEX_FIRST..=msg::KEX_LAST => self.on_kex_method(&payload)?,
            _ if strict_initial => {
                return Err(TransportError::StrictKex(format!(
                    "message {m} (sequence number {seq}) during the initial key exchange"
                )));
            }
            msg::IGNORE | msg::DEBUG | msg::UNIMPLEMENTED => {}
            msg::EXT_INFO => self.on_ext_info(&payload)?,
            msg::SERVICE_REQUEST | msg::SERVICE_ACCEPT | msg::USERAUTH_REQUEST.. => {
                if !self.first_kex_done {
                    return Err(TransportError::Protocol(format!(
                        "message {m} before the first key exchange completed"
                    )));
                }
                if self
                    .kex
                    .as_ref()
                    .is_some_and(|k| k.peer.is_some() && !k.newkeys_received)
                {
                    return Err(TransportError::Protocol(format!(
                        "message {m} between the peer's KEXINIT and its NEWKEYS"
                    )));
                }
                self.payloads.push_back(payload);
            }
            _ => {
                let mut p = [0u8; 5];
                p[0] = msg::UNIMPLEMENTED;
                p[1..].copy_from_slice(&seq.to_be_bytes());
                self.send_packet([&p, &[]])?;
            }
        }
        Ok(())
    }

    fn on_kexinit(&mut self, seq: u32, payload: Bytes) -> Result<(), TransportError> {
        let peer = KexInit::parse(&payload)?;
        if self.kex.is_none() {
            self.start_kex()?;
        }
        let role = self.cfg.role;
        let k = self
            .kex
            .as_mut()
            .ok_or(TransportError::Crypto("no key exchange"))?;
        if k.peer.is_some() {
            return Err(TransportError::Protocol(
                "second KEXINIT during one key exchange".into(),
            ));
        }
        if k.initial {
            let (strict_name, ext_name) = match role {
                Role::Server => ("kex-strict-c-v00@openssh.com", "ext-info-c"),
                Role::Client => ("kex-strict-s-v00@openssh.com", "ext-info-s"),
            };
            self.strict = peer.kex.iter().any(|n| n == strict_name);
            self.peer_ext_info = peer.kex.iter().any(|n| n == ext_name);
            if self.strict && seq != 0 {
                return Err(TransportError::StrictKex(format!(
                    "KEXINIT was not the first packet (sequence number {seq})"
                )));
            }
        }
        let client = role == Role::Client;
        let kex_name = kex::choose("kex", client, &self.cfg.kex, &peer.kex)?;
        let alg = KexAlg::from_name(kex_name).ok_or(TransportError::Crypto("kex table"))?;
        let host_key = kex::choose("host key", client, &self.host_key_algs, &peer.host_key)?;
        let (enc_c2s, enc_s2c, mac_c2s, mac_s2c) = (
            kex::choose(
                "cipher (client to server)",
                client,
                &self.cfg.ciphers,
                &peer.enc_c2s,
            )?,
            kex::choose(
                "cipher (server to client)",
                client,
                &self.cfg.ciphers,
                &peer.enc_s2c,
            )?,
            &peer.mac_c2s,
            &peer.mac_s2c,
        );
        let mac_for = |c: &str, theirs: &[String], what| -> Result<Option<&'static str>, TransportError> {
            if CipherAlg::from_name(c).is_some_and(CipherAlg::is_aead) {
                Ok(None)
            } else {
                kex::choose(what, client, &self.cfg.macs, theirs).map(Some)
            }
        };
        let mac_c2s = mac_for(enc_c2s, mac_c2s, "MAC (client to server)")?;
        let mac_s2c = mac_for(enc_s2c, mac_s2c, "MAC (server to client)")?;
        kex::choose(
            "compression (client to server)",
            client,
            &["none"],
            &peer.comp_c2s,
        )?;
        kex::choose(
            "compression (server to client)",
            client,
            &["none"],
            &peer.comp_s2c,
        )?;
        let algorithms = Algorithms {
            kex: kex_name,
            host_key,
            cipher_c2s: enc_c2s,
            cipher_s2c: enc_s2c,
            mac_c2s,
            mac_s2c,
            strict_kex: self.strict,
        };
        let guess_right = peer.kex.first().is_some_and(|n| n == k.our_first.0)
            && peer.host_key.first().is_some_and(|n| n == k.our_first.1);
        k.skip_next = peer.first_kex_follows && !guess_right;
        k.peer = Some(payload.to_vec());
        k.alg = Some((alg, algorithms));
        if client {
            let (secret, q_c) = kex::client_start(alg)?;
            let mut p = Vec::with_capacity(q_c.len() + 16);
            p.push(msg::KEX_ECDH_INIT);
            alg.put_public(&mut p, &q_c);
            k.client_secret = Some((secret, q_c));
            self.send_packet([&p, &[]])?;
        }
        Ok(())
    }

    fn on_kex_method(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        let m = payload[0];
        let k = self.kex.as_mut().ok_or_else(|| {
            TransportError::Protocol(format!("key exchange message {m} outside a key exchange"))
        })?;
        let Some((alg, algorithms)) = k.alg.clone() else {
            return Err(TransportError::Protocol(format!(
                "key exchange message {m} before KEXINIT"
            )));
        };
        if k.skip_next {
            k.skip_next = false;
            return Ok(());
        }
        match self.cfg.role {
            Role::Server => {
                if m != msg::KEX_ECDH_INIT || k.replied {
                    return Err(TransportError::Protocol(format!(
                        "unexpected key exchange message {m}"
                    )));
                }
                let mut r = Reader::new("KEX_ECDH_INIT", &payload[1..]);
                let q_c = alg.read_public(&mut r, "client public value")?;
                r.end("end of message")?;
                let (q_s, key) = kex::server_reply(alg, q_c)?;
                let sk = hostkey::find_server_key(
                    algorithms.host_key,
                    &self.cfg.host_keys,
                    &self.cfg.host_certificates,
                )
                .ok_or_else(|| TransportError::Config(format!("no host key for {}", algorithms.host_key)))?;
                let k_s = sk.blob()?;
                let peer_ident = self.peer_ident.as_deref().unwrap_or("").as_bytes();
                let h = kex::exchange_hash(
                    alg,
                    &kex::HashInput {
                        v_c: peer_ident,
                        v_s: self.cfg.ident.as_bytes(),
                        i_c: k.peer.as_deref().unwrap_or(&[]),
                        i_s: &k.ours,
                        k_s: &k_s,
                        q_c,
                        q_s: &q_s,
                        k: &key,
                    },
                );
                let sig = sk.sign(algorithms.host_key, &h)?;
                let mut p = Vec::with_capacity(k_s.len() + q_s.len() + sig.len() + 16);
                p.push(msg::KEX_ECDH_REPLY);
                put_string(&mut p, &k_s);
                alg.put_public(&mut p, &q_s);
                put_string(&mut p, &sig);
                k.replied = true;
                self.send_packet([&p, &[]])?;
                self.derive_keys(alg, &algorithms, &key, &h)?;
                self.send_newkeys()?;
            }
            Role::Client => {
                if m != msg::KEX_ECDH_REPLY {
                    return Err(TransportError::Protocol(format!(
                        "unexpected key exchange message {m}"
                    )));
                }
                let (secret, q_c) = k
                    .client_secret
                    .take()
                    .ok_or_else(|| TransportError::Protocol("a second key exchange reply".into()))?;
                let mut r = Reader::new("KEX_ECDH_REPLY", &payload[1..]);
                let k_s = r.string("K_S (server host key)")?;
                let q_s = alg.read_public(&mut r, "server public value")?;
                let sig = r.string("signature of H")?;
                r.end("end of message")?;
                let key = kex::client_finish(alg, secret, q_s)?;
                let h = kex::exchange_hash(
                    alg,
                    &kex::HashInput {
                        v_c: self.cfg.ident.as_bytes(),
                        v_s: self.peer_ident.as_deref().unwrap_or("").as_bytes(),
                        i_c: &k.ours,
                        i_s: k.peer.as_deref().unwrap_or(&[]),
                        k_s,
                        q_c: &q_c,
                        q_s,
                        k: &key,
                    },
                );
                let verified = hostkey::verify(algorithms.host_key, k_s, sig, &h)?;
                let initial = k.initial;
                self.derive_keys(alg, &algorithms, &key, &h)?;
                if initial {
                    self.first_host_key = Some(k_s.to_vec());
                    if let Some(cert) = verified.cert {
                        self.events
                            .push_back(TransportEvent::PeerHostCertificate(Box::new(cert)));
                    }
                    self.events.push_back(TransportEvent::PeerHostKey(verified.key));
                    if let Some(k) = self.kex.as_mut() {
                        k.awaiting_verdict = true;
                    }
                } else {
                    if self.first_host_key.as_deref() != Some(k_s) {
                        return Err(TransportError::HostKey("the host key changed in a rekey".into()));
                    }
                    self.send_newkeys()?;
                }
            }
        }
        Ok(())
    }

    /// Derives both directions' keys from K and H into the running key exchange.
    fn derive_keys(
        &mut self,
        alg: KexAlg,
        a: &Algorithms,
        key: &[u8],
        h: &[u8],
    ) -> Result<(), TransportError> {
        let session_id = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        let make = |cipher_name: &str, mac_name: Option<&str>, letters: [u8; 3]| {
            let c = CipherAlg::from_name(cipher_name).ok_or(TransportError::Crypto("cipher table"))?;
            let m = mac_name.and_then(MacAlg::from_name);
            let iv = kex::derive_key(alg, key, h, letters[0], &session_id, c.iv_len());
            let enc = kex::derive_key(alg, key, h, letters[1], &session_id, c.key_len());
            let mac_key = match m {
                Some(m) => kex::derive_key(alg, key, h, letters[2], &session_id, m.key_len()),
                None => Zeroizing::new(Vec::new()),
            };
            Ok::<_, TransportError>((c, m, iv, enc, mac_key))
        };
        let c2s = make(a.cipher_c2s, a.mac_c2s, [b'A', b'C', b'E'])?;
        let s2c = make(a.cipher_s2c, a.mac_s2c, [b'B', b'D', b'F'])?;
        let (out, inn) = match self.cfg.role {
            Role::Client => (c2s, s2c),
            Role::Server => (s2c, c2s),
        };
        let seal = SealingKeys::new(out.0, out.1, &out.3, &out.2, &out.4)?;
        let open = OpeningKeys::new(inn.0, inn.1, &inn.3, &inn.2, &inn.4)?;
        let k = self
            .kex
            .as_mut()
            .ok_or(TransportError::Crypto("no key exchange"))?;
        k.next_seal = Some(seal);
        k.next_open = Some(open);
        Ok(())
    }

    fn on_newkeys(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        if payload.len() != 1 {
            return Err(TransportError::Malformed {
                msg: "NEWKEYS",
                field: "end of message",
            });
        }
        let k = self
            .kex
            .as_mut()
            .ok_or_else(|| TransportError::Protocol("NEWKEYS outside a key exchange".into()))?;
        let open = k
            .next_open
            .take()
            .ok_or_else(|| TransportError::Protocol("NEWKEYS before the key exchange completed".into()))?;
        self.open = open;
        k.newkeys_received = true;
        let done = k.newkeys_sent;
        if self.strict {
            self.recv_seq = 0;
        }
        self.recv_bytes = 0;
        self.recv_packets = 0;
        if done {
            self.finish_kex();
        }
        Ok(())
    }

    fn on_ext_info(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        if !self.first_kex_done && self.kex.as_ref().is_none_or(|k| !k.newkeys_received) {
            return Err(TransportError::Protocol("EXT_INFO before NEWKEYS".into()));
        }
        let mut r = Reader::new("EXT_INFO", &payload[1..]);
        let n = r.u32("nr-extensions")?;
        let mut v = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            let name = r.utf8("extension-name")?.to_owned();
            let value = r.string("extension-value")?.to_vec();
            v.push((name, value));
        }
        self.events.push_back(TransportEvent::ExtInfo(v));
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// What a DISCONNECT says of an error: at most 200 bytes, printable (the error may quote a
/// peer's UTF-8, such as a key type name, and it is shown to a user's terminal).
pub(crate) fn disconnect_text(error: &str) -> String {
    crate::printable::printable(error, 200)
}
