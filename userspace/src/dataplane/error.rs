use std::path::PathBuf;

/// Why the dataplane could not be installed, changed or read. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("this portcullis binary was built without its eBPF object: build it with `cargo xtask build`")]
    NoObject,
    #[error("the kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing): portcullis needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    #[error(
        "no BPF filesystem is mounted at {0}: mount it with `mount -t bpf bpf {0}` or set dataplane.bpffs"
    )]
    NoBpffs(PathBuf),
    #[error("interface {interface:?} of vnet {vnet:?} does not exist in this network namespace: create it or fix the [[vnet]] entry")]
    NoInterface { interface: String, vnet: String },
    #[error("another portcullis daemon (pid {pid}) is running this instance (lock {path}): stop it first, or give this one its own dataplane.instance")]
    Locked { path: PathBuf, pid: String },
    #[error("loading the eBPF object failed (the kernel may lack XDP, TC or sk_lookup support, or the pinned maps belong to an incompatible version: run `portcullis down` first): {0}")]
    Load(#[source] aya::EbpfError),
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching XDP to {interface:?} in native mode failed (the driver may not support it: set dataplane.xdp_mode = \"skb\" or \"auto\"): {source}")]
    XdpNative {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{what}: {source}")]
    Link {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: nft refused the ruleset: {message}")]
    Nft { what: String, message: String },
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Capacity(String),
}

impl DataplaneError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { map, source }
    }
    pub(crate) fn program(what: impl Into<String>) -> impl FnOnce(aya::programs::ProgramError) -> Self {
        let what = what.into();
        move |source| Self::Program { what, source }
    }
    pub(crate) fn link<E: std::error::Error + Send + Sync + 'static>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let what = what.into();
        move |source| Self::Link {
            what,
            source: Box::new(source),
        }
    }
}
