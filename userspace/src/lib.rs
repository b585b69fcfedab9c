//! portcullis: a gateway that steers SSH flows to protected targets into a policy-checking,
//! recording proxy.
//!
//! Layout, each module with one job:
//! - [`config`]: the operator's TOML, validated with file:line:column errors.
//! - [`targets`]: the typed set of vnets and protected (vnet, address, port) triples.
//! - [`dataplane`]: the eBPF programs, pinned maps and links, policy routing, sysctls.
//! - [`steer`]: the proxy's listeners and what an accepted connection tells us.
//! - [`split_tunnel`]: CIDR arithmetic for WARP-style split-tunnel lists.
//! - [`hostcheck`]: which host keys a target may present (pins, host CAs).
//! - [`hostcert`]: the host certificates shown with our derived keys, and the known_hosts
//!   lines that trust them.
//! - [`admission`]: caps on connections that have not authenticated yet.
//! - [`audit`]: JSON-lines audit events.
//! - [`daemon`]: ties them together for `portcullis run`.
//! - [`service`]: readiness, reload and stop notifications to systemd (`Type=notify`).

pub mod admission;
pub mod audit;
pub mod ca;
pub mod cert;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod hostcert;
pub mod hostcheck;
pub mod hostkey;
pub mod identity;
pub mod live;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod recording;
pub mod service;
pub mod snapshot;
pub mod split_tunnel;
pub mod steer;
pub mod targets;
