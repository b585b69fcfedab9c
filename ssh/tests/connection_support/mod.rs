//! Two `Connection`s wired back to back, for the connection-layer integration tests.
#![allow(dead_code)]

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use portcullis_ssh::connection::{
    ChannelId, ChannelKind, Connection, ConnectionConfig, ConnectionError, ConnectionEvent, Side,
};

/// One message as it was delivered: who received it, the receiver's state just before, and
/// the payload. The fuzz test replays variants of it on a clone of that state.
pub struct Delivery {
    pub to: Side,
    pub before: Connection,
    pub payload: Bytes,
}

pub struct Pair {
    pub client: Connection,
    pub server: Connection,
    pub client_events: VecDeque<ConnectionEvent>,
    pub server_events: VecDeque<ConnectionEvent>,
    /// `Some` to record every delivery.
    pub log: Option<Vec<Delivery>>,
}

pub fn config(side: Side, window: u32, max_packet: u32) -> ConnectionConfig {
    ConnectionConfig {
        initial_window: window,
        max_packet,
        ..ConnectionConfig::new(side)
    }
}

impl Pair {
    pub fn new() -> Self {
        Pair::with(
            ConnectionConfig::new(Side::Client),
            ConnectionConfig::new(Side::Server),
        )
    }

    pub fn with(client: ConnectionConfig, server: ConnectionConfig) -> Self {
        Pair {
            client: Connection::new(client),
            server: Connection::new(server),
            client_events: VecDeque::new(),
            server_events: VecDeque::new(),
            log: None,
        }
    }

    pub fn conn(&mut self, side: Side) -> &mut Connection {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    pub fn events(&mut self, side: Side) -> &mut VecDeque<ConnectionEvent> {
        match side {
            Side::Client => &mut self.client_events,
            Side::Server => &mut self.server_events,
        }
    }

    /// Moves every queued payload across, both ways, until both are quiet; collects events.
    pub fn try_pump(&mut self) -> Result<(), ConnectionError> {
        loop {
            let mut moved = false;
            for from in [Side::Client, Side::Server] {
                let to = other(from);
                while let Some(p) = self.conn(from).poll_transmit() {
                    moved = true;
                    if let Some(log) = self.log.as_mut() {
                        let before = match to {
                            Side::Client => self.client.clone(),
                            Side::Server => self.server.clone(),
                        };
                        log.push(Delivery {
                            to,
                            before,
                            payload: p.clone(),
                        });
                    }
                    self.conn(to).handle(p)?;
                    while let Some(ev) = self.conn(to).poll_event() {
                        self.events(to).push_back(ev);
                    }
                }
            }
            for side in [Side::Client, Side::Server] {
                while let Some(ev) = self.conn(side).poll_event() {
                    self.events(side).push_back(ev);
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }

    pub fn pump(&mut self) {
        self.try_pump().expect("protocol error between two engines");
    }

    pub fn next(&mut self, side: Side) -> ConnectionEvent {
        self.events(side)
            .pop_front()
            .unwrap_or_else(|| panic!("no event on the {side:?} side"))
    }

    pub fn assert_quiet(&mut self) {
        assert!(
            self.client_events.is_empty(),
            "client events left: {:?}",
            self.client_events
        );
        assert!(
            self.server_events.is_empty(),
            "server events left: {:?}",
            self.server_events
        );
    }

    /// Opens a channel from `from` with `kind`, accepted by the other side. Returns
    /// (opener's id, acceptor's id).
    pub fn open(&mut self, from: Side, kind: ChannelKind) -> (ChannelId, ChannelId) {
        let ours = self.conn(from).open(kind.clone());
        self.pump();
        let to = other(from);
        let theirs = match self.next(to) {
            ConnectionEvent::ChannelOpen { id, kind: k } => {
                assert_eq!(k, kind);
                id
            }
            ev => panic!("expected ChannelOpen, got {ev:?}"),
        };
        self.conn(to).accept_open(theirs);
        self.pump();
        assert_eq!(
            self.next(from),
            ConnectionEvent::ChannelOpenConfirmed { id: ours }
        );
        (ours, theirs)
    }

    /// A session channel from the client: (client id, server id).
    pub fn session(&mut self) -> (ChannelId, ChannelId) {
        self.open(Side::Client, ChannelKind::Session)
    }
}

pub fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
}

/// Deterministic test bytes: a position-dependent pattern per stream, so that a lost,
/// duplicated or reordered byte shows.
pub fn pattern(stream: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ stream)
        .collect()
}

/// A CHANNEL_DATA payload built by hand (a misbehaving peer).
pub fn raw_data(recipient: u32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(94);
    out.put_u32(recipient);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// A CHANNEL_EXTENDED_DATA payload built by hand.
pub fn raw_extended(recipient: u32, code: u32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(95);
    out.put_u32(recipient);
    out.put_u32(code);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// A payload of message `n` with a u32 field (recipient channel) and nothing else.
pub fn raw_u32(n: u8, v: u32) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(n);
    out.put_u32(v);
    out.freeze()
}
