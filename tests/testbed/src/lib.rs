//! The test bed shared by the end-to-end tests and `cargo xtask demo`: network namespaces
//! that are always removed, veth links, the client → gateway → target topology of DESIGN §8,
//! small TCP servers and clients that run inside a namespace, and a handle on a running
//! `portcullis` daemon. Built on iproute2 and `setns(2)`: scaffolding, not the product.

mod daemon;
mod loopback;
mod netns;
pub mod procfs;
mod sshd;
mod tcp;
mod topology;

pub use daemon::Daemon;
pub use loopback::{Gateway, GatewayOptions};
pub use netns::{link, sh, Netns};
pub use sshd::{free_port, ssh_command, ssh_opts, Sshd, SshdOptions};
pub use tcp::{fetch, Server};
pub use topology::Topology;

/// A name unique to this process and call, with a short prefix (netns names are global).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether this process can create namespaces and load BPF (root).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root: whether to run, saying why not when skipping.
pub fn root_or_skip() -> bool {
    if !is_root() {
        eprintln!("skipping: needs root (run `cargo xtask test`)");
        return false;
    }
    true
}

/// Polls `f` every 20 ms for up to `secs` seconds.
pub fn poll<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
