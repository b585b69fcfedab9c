//! Helpers shared by the privileged integration tests.
#![allow(dead_code)]

pub mod packet;

/// Privileged tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and a mounted bpffs;
/// `cargo xtask test` provides both. Elsewhere they say why they skip.
pub fn privileged() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root (run `cargo xtask test`)");
        return false;
    }
    if portcullis::dataplane::object().is_err() {
        eprintln!("skipping: built without the eBPF object (run `cargo xtask test`)");
        return false;
    }
    true
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scripted SSH client (russh) for what OpenSSH's client will not do; trusts any host key.
pub struct RawClient;

impl russh::client::Handler for RawClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A scripted client connected to the gateway's listener on `port`.
pub async fn connect(port: u16) -> russh::client::Handle<RawClient> {
    let cfg = std::sync::Arc::new(russh::client::Config::default());
    russh::client::connect(cfg, ("127.0.0.1", port), RawClient)
        .await
        .expect("connect to the gateway")
}

/// The same, logged in as root with `none` authentication (the gateway knows who connects
/// by the source address).
pub async fn login(port: u16) -> russh::client::Handle<RawClient> {
    let mut h = connect(port).await;
    assert!(
        h.authenticate_none("root").await.unwrap().success(),
        "`none` login refused"
    );
    h
}

/// Runs `command` on a new session channel of `h`; returns its stdout and exit status (None:
/// the start request was refused).
pub async fn exec_on(h: &russh::client::Handle<RawClient>, command: &str) -> (Vec<u8>, Option<u32>) {
    exec_with_env(h, &[], command).await
}

/// The same, with `env` requests first.
pub async fn exec_with_env(
    h: &russh::client::Handle<RawClient>,
    env: &[(String, String)],
    command: &str,
) -> (Vec<u8>, Option<u32>) {
    let mut ch = h.channel_open_session().await.unwrap();
    for (name, value) in env {
        ch.set_env(false, name.as_str(), value.as_str()).await.unwrap();
    }
    ch.exec(true, command).await.unwrap();
    let (mut out, mut status) = (Vec::new(), None);
    while let Some(m) = ch.wait().await {
        match m {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            russh::ChannelMsg::Failure => return (out, None),
            _ => {}
        }
    }
    (out, status)
}

/// A single-threaded runtime for a test's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
