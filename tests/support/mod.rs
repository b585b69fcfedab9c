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

/// A single-threaded runtime for a test's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
