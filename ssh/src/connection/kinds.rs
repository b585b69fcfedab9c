//! Typed channel types (CHANNEL_OPEN), channel requests (CHANNEL_REQUEST) and global requests
//! (GLOBAL_REQUEST), with their type-specific fields parsed and serialized.
//!
//! Every type has an `Other { name, data }` form that carries the type-specific bytes
//! verbatim, so anything we do not know (or choose not to interpret) can be relayed as is:
//! [`ChannelRequest::into_other`] turns a typed request into exactly the bytes it came from.
//! Text fields that RFC 4254 defines as names or UTF-8 text are `String` (invalid UTF-8 is a
//! protocol error); fields that are arbitrary byte strings in practice (an exec command, an
//! environment value, encoded terminal modes, key blobs) are `Bytes`.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{put_bool, put_string, Reader};
use super::ConnectionError;

const REQUEST: &str = "CHANNEL_REQUEST";
const GLOBAL: &str = "GLOBAL_REQUEST";

/// The type of a channel and its type-specific open fields (RFC 4254 §6.1, §7.1, §7.2, §6.3.2;
/// OpenSSH PROTOCOL.agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    /// `session`: shell, exec or subsystem (client → server).
    Session,
    /// `direct-tcpip`: a local forward (`ssh -L`, `-D`, `-W`), client → server.
    DirectTcpip {
        host: String,
        port: u32,
        orig_host: String,
        orig_port: u32,
    },
    /// `forwarded-tcpip`: a connection to a remote forward (`ssh -R`), server → client.
    /// `host`/`port` are the address and port that were connected.
    ForwardedTcpip {
        host: String,
        port: u32,
        orig_host: String,
        orig_port: u32,
    },
    /// `x11`: an X11 connection, server → client.
    X11 { orig_host: String, orig_port: u32 },
    /// `auth-agent@openssh.com`: an agent connection, server → client.
    AuthAgent,
    /// Any other type; `data` is the type-specific part, verbatim.
    Other { name: String, data: Bytes },
}

impl ChannelKind {
    /// The channel type name on the wire.
    pub fn name(&self) -> &str {
        match self {
            ChannelKind::Session => "session",
            ChannelKind::DirectTcpip { .. } => "direct-tcpip",
            ChannelKind::ForwardedTcpip { .. } => "forwarded-tcpip",
            ChannelKind::X11 { .. } => "x11",
            ChannelKind::AuthAgent => "auth-agent@openssh.com",
            ChannelKind::Other { name, .. } => name,
        }
    }

    /// Parses the type-specific part that `r` is positioned at (to the end of the message).
    pub(crate) fn parse(name: String, r: &mut Reader<'_>) -> Result<Self, ConnectionError> {
        let kind = match name.as_str() {
            "session" => ChannelKind::Session,
            "direct-tcpip" => ChannelKind::DirectTcpip {
                host: r.utf8("direct-tcpip host to connect")?,
                port: r.u32("direct-tcpip port to connect")?,
                orig_host: r.utf8("direct-tcpip originator address")?,
                orig_port: r.u32("direct-tcpip originator port")?,
            },
            "forwarded-tcpip" => ChannelKind::ForwardedTcpip {
                host: r.utf8("forwarded-tcpip address that was connected")?,
                port: r.u32("forwarded-tcpip port that was connected")?,
                orig_host: r.utf8("forwarded-tcpip originator address")?,
                orig_port: r.u32("forwarded-tcpip originator port")?,
            },
            "x11" => ChannelKind::X11 {
                orig_host: r.utf8("x11 originator address")?,
                orig_port: r.u32("x11 originator port")?,
            },
            "auth-agent@openssh.com" => ChannelKind::AuthAgent,
            _ => return Ok(ChannelKind::Other { name, data: r.rest() }),
        };
        r.end()?;
        Ok(kind)
    }

    /// Appends the type-specific part.
    pub(crate) fn encode_specific(&self, out: &mut BytesMut) {
        match self {
            ChannelKind::Session | ChannelKind::AuthAgent => {}
            ChannelKind::DirectTcpip {
                host,
                port,
                orig_host,
                orig_port,
            }
            | ChannelKind::ForwardedTcpip {
                host,
                port,
                orig_host,
                orig_port,
            } => {
                put_string(out, host.as_bytes());
                out.put_u32(*port);
                put_string(out, orig_host.as_bytes());
                out.put_u32(*orig_port);
            }
            ChannelKind::X11 { orig_host, orig_port } => {
                put_string(out, orig_host.as_bytes());
                out.put_u32(*orig_port);
            }
            ChannelKind::Other { data, .. } => out.put_slice(data),
        }
    }
}

/// A channel request (RFC 4254 §6, RFC 4335, OpenSSH PROTOCOL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRequest {
    /// `pty-req`. `modes` is the encoded terminal modes string, verbatim; see
    /// [`parse_pty_modes`] and [`encode_pty_modes`].
    PtyReq {
        term: String,
        cols: u32,
        rows: u32,
        width_px: u32,
        height_px: u32,
        modes: Bytes,
    },
    /// `x11-req`.
    X11Req {
        single_connection: bool,
        auth_protocol: String,
        auth_cookie: String,
        screen: u32,
    },
    /// `env`.
    Env { name: String, value: Bytes },
    /// `shell`.
    Shell,
    /// `exec`; the command is a byte string (file names need not be UTF-8).
    Exec { command: Bytes },
    /// `subsystem` (e.g. `sftp`).
    Subsystem { name: String },
    /// `window-change`.
    WindowChange {
        cols: u32,
        rows: u32,
        width_px: u32,
        height_px: u32,
    },
    /// `xon-xoff`.
    XonXoff { client_can_do: bool },
    /// `signal`, the name without the `SIG` prefix.
    Signal { name: String },
    /// `exit-status`.
    ExitStatus { status: u32 },
    /// `exit-signal`.
    ExitSignal {
        signal: String,
        core_dumped: bool,
        message: String,
        language: String,
    },
    /// `break` (RFC 4335), length in milliseconds.
    Break { length_ms: u32 },
    /// `eow@openssh.com`: the client's end of write (the server's stdin is gone).
    Eow,
    /// `auth-agent-req@openssh.com`.
    AuthAgentReq,
    /// `keepalive@openssh.com`.
    Keepalive,
    /// Any other request (or a known one relayed verbatim); `data` is the type-specific part.
    Other { name: String, data: Bytes },
}

impl ChannelRequest {
    /// The request name on the wire.
    pub fn name(&self) -> &str {
        match self {
            ChannelRequest::PtyReq { .. } => "pty-req",
            ChannelRequest::X11Req { .. } => "x11-req",
            ChannelRequest::Env { .. } => "env",
            ChannelRequest::Shell => "shell",
            ChannelRequest::Exec { .. } => "exec",
            ChannelRequest::Subsystem { .. } => "subsystem",
            ChannelRequest::WindowChange { .. } => "window-change",
            ChannelRequest::XonXoff { .. } => "xon-xoff",
            ChannelRequest::Signal { .. } => "signal",
            ChannelRequest::ExitStatus { .. } => "exit-status",
            ChannelRequest::ExitSignal { .. } => "exit-signal",
            ChannelRequest::Break { .. } => "break",
            ChannelRequest::Eow => "eow@openssh.com",
            ChannelRequest::AuthAgentReq => "auth-agent-req@openssh.com",
            ChannelRequest::Keepalive => "keepalive@openssh.com",
            ChannelRequest::Other { name, .. } => name,
        }
    }

    /// Parses a request from its name and type-specific bytes (what follows `want reply`).
    /// Unknown names give `Other`; a known name with malformed fields (truncated, trailing
    /// bytes, bad UTF-8) is an error naming the field.
    pub fn parse(name: String, data: Bytes) -> Result<Self, ConnectionError> {
        let mut r = Reader::new(&data, 0, REQUEST);
        let req = match name.as_str() {
            "pty-req" => ChannelRequest::PtyReq {
                term: r.utf8("pty-req TERM")?,
                cols: r.u32("pty-req width in characters")?,
                rows: r.u32("pty-req height in rows")?,
                width_px: r.u32("pty-req width in pixels")?,
                height_px: r.u32("pty-req height in pixels")?,
                modes: r.bytes("pty-req terminal modes")?,
            },
            "x11-req" => ChannelRequest::X11Req {
                single_connection: r.bool("x11-req single connection")?,
                auth_protocol: r.utf8("x11-req authentication protocol")?,
                auth_cookie: r.utf8("x11-req authentication cookie")?,
                screen: r.u32("x11-req screen number")?,
            },
            "env" => ChannelRequest::Env {
                name: r.utf8("env variable name")?,
                value: r.bytes("env variable value")?,
            },
            "shell" => ChannelRequest::Shell,
            "exec" => ChannelRequest::Exec {
                command: r.bytes("exec command")?,
            },
            "subsystem" => ChannelRequest::Subsystem {
                name: r.utf8("subsystem name")?,
            },
            "window-change" => ChannelRequest::WindowChange {
                cols: r.u32("window-change width in characters")?,
                rows: r.u32("window-change height in rows")?,
                width_px: r.u32("window-change width in pixels")?,
                height_px: r.u32("window-change height in pixels")?,
            },
            "xon-xoff" => ChannelRequest::XonXoff {
                client_can_do: r.bool("xon-xoff client can do")?,
            },
            "signal" => ChannelRequest::Signal {
                name: r.utf8("signal name")?,
            },
            "exit-status" => ChannelRequest::ExitStatus {
                status: r.u32("exit-status exit status")?,
            },
            "exit-signal" => ChannelRequest::ExitSignal {
                signal: r.utf8("exit-signal signal name")?,
                core_dumped: r.bool("exit-signal core dumped")?,
                message: r.utf8("exit-signal error message")?,
                language: r.utf8("exit-signal language tag")?,
            },
            "break" => ChannelRequest::Break {
                length_ms: r.u32("break length")?,
            },
            "eow@openssh.com" => ChannelRequest::Eow,
            "auth-agent-req@openssh.com" => ChannelRequest::AuthAgentReq,
            "keepalive@openssh.com" => ChannelRequest::Keepalive,
            _ => return Ok(ChannelRequest::Other { name, data }),
        };
        r.end()?;
        Ok(req)
    }

    /// Appends the type-specific part (what follows `want reply`).
    pub fn encode_data(&self, out: &mut BytesMut) {
        match self {
            ChannelRequest::PtyReq {
                term,
                cols,
                rows,
                width_px,
                height_px,
                modes,
            } => {
                put_string(out, term.as_bytes());
                out.put_u32(*cols);
                out.put_u32(*rows);
                out.put_u32(*width_px);
                out.put_u32(*height_px);
                put_string(out, modes);
            }
            ChannelRequest::X11Req {
                single_connection,
                auth_protocol,
                auth_cookie,
                screen,
            } => {
                put_bool(out, *single_connection);
                put_string(out, auth_protocol.as_bytes());
                put_string(out, auth_cookie.as_bytes());
                out.put_u32(*screen);
            }
            ChannelRequest::Env { name, value } => {
                put_string(out, name.as_bytes());
                put_string(out, value);
            }
            ChannelRequest::Exec { command } => put_string(out, command),
            ChannelRequest::Subsystem { name } | ChannelRequest::Signal { name } => {
                put_string(out, name.as_bytes())
            }
            ChannelRequest::WindowChange {
                cols,
                rows,
                width_px,
                height_px,
            } => {
                out.put_u32(*cols);
                out.put_u32(*rows);
                out.put_u32(*width_px);
                out.put_u32(*height_px);
            }
            ChannelRequest::XonXoff { client_can_do } => put_bool(out, *client_can_do),
            ChannelRequest::ExitStatus { status } => out.put_u32(*status),
            ChannelRequest::ExitSignal {
                signal,
                core_dumped,
                message,
                language,
            } => {
                put_string(out, signal.as_bytes());
                put_bool(out, *core_dumped);
                put_string(out, message.as_bytes());
                put_string(out, language.as_bytes());
            }
            ChannelRequest::Break { length_ms } => out.put_u32(*length_ms),
            ChannelRequest::Shell
            | ChannelRequest::Eow
            | ChannelRequest::AuthAgentReq
            | ChannelRequest::Keepalive => {}
            ChannelRequest::Other { data, .. } => out.put_slice(data),
        }
    }

    /// The same request as `Other { name, data }` with its type-specific bytes, to relay
    /// it verbatim.
    pub fn into_other(self) -> ChannelRequest {
        match self {
            ChannelRequest::Other { .. } => self,
            typed => {
                let mut data = BytesMut::new();
                typed.encode_data(&mut data);
                ChannelRequest::Other {
                    name: typed.name().to_owned(),
                    data: data.freeze(),
                }
            }
        }
    }
}

/// A global request (RFC 4254 §4, §7.1; OpenSSH PROTOCOL §2.5, §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalRequest {
    /// `tcpip-forward` (`ssh -R`). With port 0 the server picks one and returns it in the
    /// success reply's data as a `uint32`.
    TcpipForward { address: String, port: u32 },
    /// `cancel-tcpip-forward`.
    CancelTcpipForward { address: String, port: u32 },
    /// `keepalive@openssh.com`.
    Keepalive,
    /// `no-more-sessions@openssh.com`: the client will open no further session channels.
    NoMoreSessions,
    /// `hostkeys-00@openssh.com`: the server's host key blobs.
    HostKeys { keys: Vec<Bytes> },
    /// `hostkeys-prove-00@openssh.com`: the client asks for proofs of these keys.
    HostKeysProve { keys: Vec<Bytes> },
    /// Any other request; `data` is the type-specific part, verbatim.
    Other { name: String, data: Bytes },
}

impl GlobalRequest {
    /// The request name on the wire.
    pub fn name(&self) -> &str {
        match self {
            GlobalRequest::TcpipForward { .. } => "tcpip-forward",
            GlobalRequest::CancelTcpipForward { .. } => "cancel-tcpip-forward",
            GlobalRequest::Keepalive => "keepalive@openssh.com",
            GlobalRequest::NoMoreSessions => "no-more-sessions@openssh.com",
            GlobalRequest::HostKeys { .. } => "hostkeys-00@openssh.com",
            GlobalRequest::HostKeysProve { .. } => "hostkeys-prove-00@openssh.com",
            GlobalRequest::Other { name, .. } => name,
        }
    }

    /// Parses a request from its name and type-specific bytes (what follows `want reply`).
    pub fn parse(name: String, data: Bytes) -> Result<Self, ConnectionError> {
        let mut r = Reader::new(&data, 0, GLOBAL);
        let req = match name.as_str() {
            "tcpip-forward" => GlobalRequest::TcpipForward {
                address: r.utf8("tcpip-forward address to bind")?,
                port: r.u32("tcpip-forward port to bind")?,
            },
            "cancel-tcpip-forward" => GlobalRequest::CancelTcpipForward {
                address: r.utf8("cancel-tcpip-forward address to bind")?,
                port: r.u32("cancel-tcpip-forward port to bind")?,
            },
            "keepalive@openssh.com" => GlobalRequest::Keepalive,
            "no-more-sessions@openssh.com" => GlobalRequest::NoMoreSessions,
            "hostkeys-00@openssh.com" | "hostkeys-prove-00@openssh.com" => {
                let mut keys = Vec::new();
                while r.position() < data.len() {
                    keys.push(r.bytes("hostkeys host key")?);
                }
                if name.starts_with("hostkeys-00") {
                    GlobalRequest::HostKeys { keys }
                } else {
                    GlobalRequest::HostKeysProve { keys }
                }
            }
            _ => return Ok(GlobalRequest::Other { name, data }),
        };
        r.end()?;
        Ok(req)
    }

    /// Appends the type-specific part (what follows `want reply`).
    pub fn encode_data(&self, out: &mut BytesMut) {
        match self {
            GlobalRequest::TcpipForward { address, port }
            | GlobalRequest::CancelTcpipForward { address, port } => {
                put_string(out, address.as_bytes());
                out.put_u32(*port);
            }
            GlobalRequest::Keepalive | GlobalRequest::NoMoreSessions => {}
            GlobalRequest::HostKeys { keys } | GlobalRequest::HostKeysProve { keys } => {
                for key in keys {
                    put_string(out, key);
                }
            }
            GlobalRequest::Other { data, .. } => out.put_slice(data),
        }
    }

    /// The same request as `Other { name, data }`, to relay it verbatim.
    pub fn into_other(self) -> GlobalRequest {
        match self {
            GlobalRequest::Other { .. } => self,
            typed => {
                let mut data = BytesMut::new();
                typed.encode_data(&mut data);
                GlobalRequest::Other {
                    name: typed.name().to_owned(),
                    data: data.freeze(),
                }
            }
        }
    }
}

/// `TTY_OP_END`, the last opcode of encoded terminal modes.
pub const TTY_OP_END: u8 = 0;

/// Decodes a `pty-req` terminal modes string (RFC 4254 §8) into (opcode, argument) pairs.
/// Opcodes 1..=159 take a `uint32`; `TTY_OP_END` (0) or an undefined opcode (160..=255) ends
/// parsing, as the RFC says; a missing `TTY_OP_END` at the end is tolerated.
pub fn parse_pty_modes(modes: &[u8]) -> Result<Vec<(u8, u32)>, ConnectionError> {
    let buf = Bytes::copy_from_slice(modes);
    let mut r = Reader::new(&buf, 0, "pty-req terminal modes");
    let mut out = Vec::new();
    while r.position() < buf.len() {
        let op = r.u8("opcode")?;
        if op == TTY_OP_END || op >= 160 {
            break;
        }
        out.push((op, r.u32("argument")?));
    }
    Ok(out)
}

/// Encodes (opcode, argument) pairs as a terminal modes string, ending with `TTY_OP_END`.
/// Pairs whose opcode is outside 1..=159 are skipped (they cannot carry an argument).
pub fn encode_pty_modes(modes: &[(u8, u32)]) -> Bytes {
    let mut out = BytesMut::with_capacity(modes.len() * 5 + 1);
    for &(op, arg) in modes {
        if (1..160).contains(&op) {
            out.put_u8(op);
            out.put_u32(arg);
        }
    }
    out.put_u8(TTY_OP_END);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(req: ChannelRequest) {
        let mut data = BytesMut::new();
        req.encode_data(&mut data);
        let data = data.freeze();
        let parsed = ChannelRequest::parse(req.name().to_owned(), data.clone()).unwrap();
        assert_eq!(parsed, req);
        let other = req.clone().into_other();
        assert_eq!(
            other,
            ChannelRequest::Other {
                name: req.name().to_owned(),
                data: data.clone()
            }
        );
        // Every strict prefix of a typed request with fields is an error.
        if !data.is_empty() && !matches!(req, ChannelRequest::Other { .. }) {
            for cut in 0..data.len() {
                assert!(ChannelRequest::parse(req.name().to_owned(), data.slice(..cut)).is_err());
            }
            let mut longer = BytesMut::from(&data[..]);
            longer.put_u8(0);
            assert!(matches!(
                ChannelRequest::parse(req.name().to_owned(), longer.freeze()),
                Err(ConnectionError::TrailingData { .. })
            ));
        }
    }

    #[test]
    fn channel_requests_round_trip() {
        let modes = encode_pty_modes(&[(53, 1), (128, 38400), (129, 38400)]);
        for req in [
            ChannelRequest::PtyReq {
                term: "xterm-256color".into(),
                cols: 80,
                rows: 24,
                width_px: 640,
                height_px: 480,
                modes,
            },
            ChannelRequest::X11Req {
                single_connection: true,
                auth_protocol: "MIT-MAGIC-COOKIE-1".into(),
                auth_cookie: "00112233".into(),
                screen: 0,
            },
            ChannelRequest::Env {
                name: "LANG".into(),
                value: Bytes::from_static(b"C.UTF-8"),
            },
            ChannelRequest::Shell,
            ChannelRequest::Exec {
                command: Bytes::from_static(b"cat \xff"),
            },
            ChannelRequest::Subsystem { name: "sftp".into() },
            ChannelRequest::WindowChange {
                cols: 1,
                rows: 2,
                width_px: 3,
                height_px: 4,
            },
            ChannelRequest::XonXoff { client_can_do: false },
            ChannelRequest::Signal { name: "INT".into() },
            ChannelRequest::ExitStatus { status: 130 },
            ChannelRequest::ExitSignal {
                signal: "SEGV".into(),
                core_dumped: true,
                message: "Segmentation fault".into(),
                language: "en".into(),
            },
            ChannelRequest::Break { length_ms: 750 },
            ChannelRequest::Eow,
            ChannelRequest::AuthAgentReq,
            ChannelRequest::Keepalive,
            ChannelRequest::Other {
                name: "x@example.com".into(),
                data: Bytes::from_static(b"\x01"),
            },
        ] {
            round_trip(req);
        }
    }

    #[test]
    fn empty_requests_reject_trailing_bytes() {
        for name in [
            "shell",
            "eow@openssh.com",
            "auth-agent-req@openssh.com",
            "keepalive@openssh.com",
        ] {
            assert!(ChannelRequest::parse(name.into(), Bytes::from_static(b"x")).is_err());
        }
    }

    #[test]
    fn global_requests_round_trip() {
        let keys = vec![Bytes::from_static(b"key one"), Bytes::from_static(b"")];
        for req in [
            GlobalRequest::TcpipForward {
                address: "localhost".into(),
                port: 0,
            },
            GlobalRequest::CancelTcpipForward {
                address: "".into(),
                port: 8080,
            },
            GlobalRequest::Keepalive,
            GlobalRequest::NoMoreSessions,
            GlobalRequest::HostKeys { keys: keys.clone() },
            GlobalRequest::HostKeysProve { keys },
            GlobalRequest::Other {
                name: "x@example.com".into(),
                data: Bytes::from_static(b"abc"),
            },
        ] {
            let mut data = BytesMut::new();
            req.encode_data(&mut data);
            let data = data.freeze();
            assert_eq!(
                GlobalRequest::parse(req.name().into(), data.clone()).unwrap(),
                req
            );
            assert_eq!(
                req.clone().into_other(),
                GlobalRequest::Other {
                    name: req.name().into(),
                    data: data.clone()
                }
            );
            if matches!(
                req,
                GlobalRequest::TcpipForward { .. } | GlobalRequest::CancelTcpipForward { .. }
            ) {
                for cut in 0..data.len() {
                    assert!(GlobalRequest::parse(req.name().into(), data.slice(..cut)).is_err());
                }
            }
        }
        // A host key list cut inside a key.
        assert!(GlobalRequest::parse(
            "hostkeys-00@openssh.com".into(),
            Bytes::from_static(b"\0\0\0\x05ab")
        )
        .is_err());
    }

    #[test]
    fn channel_kinds_round_trip() {
        for kind in [
            ChannelKind::Session,
            ChannelKind::DirectTcpip {
                host: "db".into(),
                port: 5432,
                orig_host: "::1".into(),
                orig_port: 1,
            },
            ChannelKind::ForwardedTcpip {
                host: "0.0.0.0".into(),
                port: 80,
                orig_host: "a".into(),
                orig_port: 2,
            },
            ChannelKind::X11 {
                orig_host: "127.0.0.1".into(),
                orig_port: 6010,
            },
            ChannelKind::AuthAgent,
            ChannelKind::Other {
                name: "direct-streamlocal@openssh.com".into(),
                data: Bytes::from_static(b"z"),
            },
        ] {
            let mut data = BytesMut::new();
            kind.encode_specific(&mut data);
            let data = data.freeze();
            let mut r = Reader::new(&data, 0, "T");
            assert_eq!(ChannelKind::parse(kind.name().into(), &mut r).unwrap(), kind);
        }
    }

    #[test]
    fn pty_modes() {
        let modes = [(1u8, 3u32), (53, 0), (128, 9600)];
        let enc = encode_pty_modes(&modes);
        assert_eq!(enc.len(), 16);
        assert_eq!(parse_pty_modes(&enc).unwrap(), modes);
        // Parsing stops at an undefined opcode; a truncated argument is an error.
        assert_eq!(parse_pty_modes(&[1, 0, 0, 0, 1, 200, 9]).unwrap(), [(1, 1)]);
        assert!(parse_pty_modes(&[1, 0, 0]).is_err());
        assert_eq!(parse_pty_modes(&[]).unwrap(), []);
    }
}
