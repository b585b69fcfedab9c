//! Shared fixtures for the auth_* integration tests: keys (generated once with ssh-keygen,
//! test-only), a certificate authority, hand-built messages and an in-memory pump.
#![allow(dead_code)]

use bytes::Bytes;
use portcullis_ssh::auth::{ClientAuth, ClientAuthEvent, ServerAuth, ServerAuthConfig, ServerAuthEvent};
use portcullis_ssh::msg;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{Certificate, PrivateKey};

/// A fixed fake session identifier.
pub const SID: &[u8] = b"\x5a\x11\x0c\x0f\xfe\xe5portcullis fake session id H!";

pub const ED25519: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACA3/1QCIV1jzB2jAicIqrohEm0mQppWbpoVUUPHFaVDHwAAAJCFkUQWhZFE
FgAAAAtzc2gtZWQyNTUxOQAAACA3/1QCIV1jzB2jAicIqrohEm0mQppWbpoVUUPHFaVDHw
AAAEBFe8mA09rnLXxQnAvmrRMM1TRhiRHsBbLXXJaMcwU6WTf/VAIhXWPMHaMCJwiquiES
bSZCmlZumhVRQ8cVpUMfAAAACXQtZWQyNTUxOQECAwQ=
-----END OPENSSH PRIVATE KEY-----
";

pub const P256: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAaAAAABNlY2RzYS
1zaGEyLW5pc3RwMjU2AAAACG5pc3RwMjU2AAAAQQRhOOdbkp46q3Vqrw30ba23hNejavp0
c1fRP246pqtrgc7TIBPagCmfTbRWCvVhFmPIONI4nCqSDtSbXjfZxdGVAAAAoDJwH3sycB
97AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGE451uSnjqrdWqv
DfRtrbeE16Nq+nRzV9E/bjqmq2uBztMgE9qAKZ9NtFYK9WEWY8g40jicKpIO1JteN9nF0Z
UAAAAhAKY71affBqdapWbfYfF1faKxM7BmhOhdldz0f5C3yBzlAAAABnQtcDI1NgE=
-----END OPENSSH PRIVATE KEY-----
";

pub const P384: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAiAAAABNlY2RzYS
1zaGEyLW5pc3RwMzg0AAAACG5pc3RwMzg0AAAAYQTQLjXcArXVQiAkn+Q23M3wSBr5lTCy
ZHYUErM97i0F6wNMLHFDFhvQ9xUQKsRGXUjRzKKQAFTZ92K7LKOFl9x3U5vQc4FEWKDMP4
0iIFngKOlRECFpQot6vFy4Qmt+gXYAAADQgwJ6KoMCeioAAAATZWNkc2Etc2hhMi1uaXN0
cDM4NAAAAAhuaXN0cDM4NAAAAGEE0C413AK11UIgJJ/kNtzN8Ega+ZUwsmR2FBKzPe4tBe
sDTCxxQxYb0PcVECrERl1I0cyikABU2fdiuyyjhZfcd1Ob0HOBRFigzD+NIiBZ4CjpURAh
aUKLerxcuEJrfoF2AAAAMFeBj+uK9Cmb0ov6kYxfTX/BBdosE8g8wUSNOZijK5VmNeT9J0
EiHEiuqunW6ecJ5AAAAAZ0LXAzODQBAg==
-----END OPENSSH PRIVATE KEY-----
";

pub const P521: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAArAAAABNlY2RzYS
1zaGEyLW5pc3RwNTIxAAAACG5pc3RwNTIxAAAAhQQAQYOuotyihs6pGq4s049GhlDlF2q8
+YeEIXCZ+ZZxDT0/wrUEuBaxfaZwNorsQaO4QGtRvqctykhEy/wY8biIqLwAU9T5HHzzbw
d3V9gaqcv9jaYu/xFdOUlnFS19d+baLBZ4ftSl88iPSOH4CSPh+lMSmLyppC+KhhnS1mDZ
zcpelxEAAAEIi4UxkYuFMZEAAAATZWNkc2Etc2hhMi1uaXN0cDUyMQAAAAhuaXN0cDUyMQ
AAAIUEAEGDrqLcoobOqRquLNOPRoZQ5RdqvPmHhCFwmfmWcQ09P8K1BLgWsX2mcDaK7EGj
uEBrUb6nLcpIRMv8GPG4iKi8AFPU+Rx8828Hd1fYGqnL/Y2mLv8RXTlJZxUtfXfm2iwWeH
7UpfPIj0jh+Akj4fpTEpi8qaQvioYZ0tZg2c3KXpcRAAAAQgGUmuBPWUMX6ww1JgpHpBU9
mZhBsM90X0E9J9f3GyPivgI11IL07klzYxCUsjGtBhtsWbmXwLQkF+F+qjv8G9ZyHAAAAA
Z0LXA1MjEBAgME
-----END OPENSSH PRIVATE KEY-----
";

pub const RSA2048: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAABFwAAAAdzc2gtcn
NhAAAAAwEAAQAAAQEAqL/HqPzWcKC5dNFiQMbINeHC4V12bmmzDXIhBKKtglt2q0EDLzrd
axt60MESjjAde6Cw/AkYig4JEQuxDU+5MVPhzRfO/qTgzKmne4vJczR8vDixlCNol9TRCf
BGYNHg4JnbKtI0VQXTRzjyqBMOiWqJMwIhZQbqqj37WKOvT09fix2f3zL6xyZxWJAEuAqf
ZiFK0C0ZCgI7zaSfOV17IeOObpo3AuL2SOgjbCCQlyDiigVaifOPv/LHyQnJZNMWtEg6c+
Irjb89kevMQjCJVcKIRk7ICrzTxJm9vFoTOeXRj7dfRSGIk9ab9Ftd1qMQQuybYHqfUQAX
DL31/V4/RQAAA8BO6LzSTui80gAAAAdzc2gtcnNhAAABAQCov8eo/NZwoLl00WJAxsg14c
LhXXZuabMNciEEoq2CW3arQQMvOt1rG3rQwRKOMB17oLD8CRiKDgkRC7ENT7kxU+HNF87+
pODMqad7i8lzNHy8OLGUI2iX1NEJ8EZg0eDgmdsq0jRVBdNHOPKoEw6JaokzAiFlBuqqPf
tYo69PT1+LHZ/fMvrHJnFYkAS4Cp9mIUrQLRkKAjvNpJ85XXsh445umjcC4vZI6CNsIJCX
IOKKBVqJ84+/8sfJCclk0xa0SDpz4iuNvz2R68xCMIlVwohGTsgKvNPEmb28WhM55dGPt1
9FIYiT1pv0W13WoxBC7Jtgep9RABcMvfX9Xj9FAAAAAwEAAQAAAQAX/239cjdsvO6i1kQK
wjomr3xvYEM/YHi+KMTZS+kw6KDvqccyKETkvnuwxERHREBtHGUO8pwyxdw0OF1tbzD++t
bZu9EMFZaChH306+QyJfy3J7jZQE/Xh8RSjYD0s+QvDLJGXK5kiPeK4WZg0JT4pdXtExh8
rYchvr7H1D9SH9RoLd7rTfoACJPQpaTRUn4fM+RIQwq9hiI77zyfbe+vjv2FMgNW6TmFv0
HmG4iZfWV1GBclBy3NvE5HVjLQFyBmT+rpUD8R6spwWnUHsv790dp+QbBPM/Z0sSvfjam3
DE0Bb3D1+WFxR2cAbYo7r3N4Ab1q4cnm0TpnZ5aNRiYBAAAAgCBpGEeLIaNSotzA4t18yc
j/JP74qRHLn2Mi4Ce/6DhWErKRlUB4sWp1Wvsg94YjGzrxiKz5y2JFVSvkoKIeDinzoSpv
IQopBZehmigzM3yMnTCAS7++3HUbSHdWUiM04MFMgYrxIqZg9WnYO8eocZe0Y1653ZhLcN
yHaGtmcr7gAAAAgQDW+jCD4dlmuRYSHg57nbwE8eMj1KsrKbobYAm2p/hc/avZIa56SqhZ
zlvzBJFOQpG8SYtK0qqb9ZIn4WCq1op+JP8aHv0xumAG5YSsKQUpvveF1RsE4V2gJU5Ofi
pfypW3MvvkuGzy4e4Vt9mZJan/qTUMHCiYry4rV/wu+MJiMQAAAIEAyPNO62TvE8es8VLb
etkP/fNrGpASb/K3UrE+0jDblU+LEiL2fWiOinzxgAYQgNGlz9Mcxi5uc1NwVfitdIWpDK
dy2ACldbN1SbRmGTohTRu2yN3cH95ShVk1AVoNKqAmddZY99+0KUnyZ7JiRaWAAo1EtH8D
ckoOiT57E5MXtVUAAAAFdC1yc2EBAgMEBQY=
-----END OPENSSH PRIVATE KEY-----
";

pub fn key(pem: &str) -> PrivateKey {
    PrivateKey::from_openssh(pem).expect("fixture key parses")
}

/// An Ed25519 CA with a fixed seed.
pub fn ca() -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[0xca; 32]))
}

/// A user certificate for `subject`, the way the gateway mints them.
pub fn user_cert(subject: &PrivateKey, ca: &PrivateKey) -> Certificate {
    let mut b = Builder::new(
        [0x4e; 32],
        subject.public_key().key_data().clone(),
        1_700_000_000,
        1_700_000_180,
    )
    .unwrap();
    b.serial(42).unwrap();
    b.cert_type(CertType::User).unwrap();
    b.key_id("jdoe@example.com session 1").unwrap();
    b.valid_principal("alice").unwrap();
    b.extension("permit-pty", "").unwrap();
    b.sign(ca).unwrap()
}

/// A message under construction, independent of the engine's own writer.
pub struct W(Vec<u8>);

impl W {
    pub fn new(number: u8) -> Self {
        W(vec![number])
    }
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn string(mut self, v: impl AsRef<[u8]>) -> Self {
        let v = v.as_ref();
        self = self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

pub fn service_request() -> Vec<u8> {
    W::new(msg::SERVICE_REQUEST).string("ssh-userauth").build()
}

/// `USERAUTH_REQUEST` header (user, "ssh-connection", method); append the method fields.
pub fn request(user: &str, method: &str) -> W {
    W::new(msg::USERAUTH_REQUEST)
        .string(user)
        .string("ssh-connection")
        .string(method)
}

/// RFC 4252 §7 signed data, built independently of the engine.
pub fn signed_data(sid: &[u8], user: &str, alg: &str, blob: &[u8]) -> Vec<u8> {
    let mut data = W::new(0).string(sid).build();
    data.remove(0);
    data.extend(request(user, "publickey").u8(1).string(alg).string(blob).build());
    data
}

/// A server past the service request, with the SERVICE_ACCEPT consumed.
pub fn server_ready(cfg: ServerAuthConfig) -> ServerAuth {
    let mut server = ServerAuth::new(cfg);
    server.handle(&service_request(), SID).unwrap();
    let accept = server.poll_transmit().unwrap();
    assert_eq!(
        &accept[..],
        &W::new(msg::SERVICE_ACCEPT).string("ssh-userauth").build()[..]
    );
    assert!(server.poll_transmit().is_none());
    server
}

/// Everything the server queued for sending.
pub fn drain(server: &mut ServerAuth) -> Vec<Bytes> {
    std::iter::from_fn(|| server.poll_transmit()).collect()
}

pub fn events(server: &mut ServerAuth) -> Vec<ServerAuthEvent> {
    std::iter::from_fn(|| server.poll_event()).collect()
}

/// Parse a USERAUTH_FAILURE (test-side parser).
pub fn parse_failure(b: &[u8]) -> Option<(Vec<String>, bool)> {
    if b.first() != Some(&msg::USERAUTH_FAILURE) {
        return None;
    }
    let len = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?) as usize;
    let list = std::str::from_utf8(b.get(5..5 + len)?).ok()?;
    let partial = *b.get(5 + len)?;
    if b.len() != 6 + len {
        return None;
    }
    let methods = if list.is_empty() {
        Vec::new()
    } else {
        list.split(',').map(str::to_owned).collect()
    };
    Some((methods, partial != 0))
}

pub fn is_failure(b: &[u8]) -> bool {
    parse_failure(b).is_some()
}

/// Transcript of one in-memory run.
#[derive(Default, Debug)]
pub struct Run {
    pub to_server: Vec<Bytes>,
    pub to_client: Vec<Bytes>,
    pub server_events: Vec<ServerAuthEvent>,
    pub client_events: Vec<ClientAuthEvent>,
}

/// Shuttle messages until both sides are quiet; `decide` answers each server attempt.
pub fn run(
    client: &mut ClientAuth,
    server: &mut ServerAuth,
    client_sid: &[u8],
    server_sid: &[u8],
    mut decide: impl FnMut(&ServerAuthEvent) -> bool,
) -> Run {
    let mut t = Run::default();
    client.start();
    for _ in 0..100 {
        let mut progressed = false;
        while let Some(m) = client.poll_transmit() {
            server
                .handle(&m, server_sid)
                .expect("server handles client message");
            t.to_server.push(m);
            progressed = true;
        }
        while let Some(ev) = server.poll_event() {
            if decide(&ev) {
                server.accept();
            } else {
                server.reject(false);
            }
            t.server_events.push(ev);
            progressed = true;
        }
        while let Some(m) = server.poll_transmit() {
            client
                .handle(&m, client_sid)
                .expect("client handles server message");
            t.to_client.push(m);
            progressed = true;
        }
        while let Some(ev) = client.poll_event() {
            t.client_events.push(ev);
            progressed = true;
        }
        if !progressed {
            return t;
        }
    }
    panic!("no quiescence after 100 rounds");
}
