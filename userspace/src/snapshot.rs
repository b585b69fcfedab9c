//! What a connection is judged against: the parts of the loaded configuration the proxy
//! reads, swapped whole on reload (the daemon holds it in an `ArcSwap`).

use crate::{config, identity::Registry, policy::Engine, targets::TargetSet};

/// The configuration in force: the daemon swaps in a new [`Snapshot`] on reload.
pub type Snapshots = std::sync::Arc<arc_swap::ArcSwap<Snapshot>>;

/// What a connection is judged against; replaced whole on reload, so a connection sees
/// one consistent configuration.
pub struct Snapshot {
    pub targets: TargetSet,
    /// (vnet, address) → index into `targets.addrs`: a connection's target in one lookup,
    /// however many targets there are.
    target_index: std::collections::HashMap<(u16, std::net::IpAddr), usize>,
    pub host_keys: crate::hostcheck::Rules,
    pub auth: config::AuthMethods,
    pub identities: Registry,
    pub policies: Engine,
    /// `[limits] upstream_dials_per_*`.
    pub dial_caps: crate::admission::DialCaps,
    /// With `[ca] host_certificates`: what each target's host certificate names.
    pub host_certificates: Option<crate::hostcert::Principals>,
}

impl Snapshot {
    pub fn new(l: config::Loaded) -> Self {
        let target_index = l
            .targets
            .addrs
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.vnet, crate::targets::canonical(t.addr)), i))
            .collect();
        let host_certificates = l
            .config
            .ca
            .host_certificates
            .then(|| crate::hostcert::Principals::new(&l.targets));
        Self {
            target_index,
            host_certificates,
            targets: l.targets,
            host_keys: l.host_keys,
            auth: l.auth,
            identities: l.identities,
            policies: l.policies,
            dial_caps: crate::admission::DialCaps::resolve(&l.config.limits),
        }
    }

    /// The target that owns `addr` in vnet `vnet`, if any.
    pub fn target(&self, vnet: u16, addr: std::net::IpAddr) -> Option<&crate::targets::TargetAddr> {
        let i = self.target_index.get(&(vnet, crate::targets::canonical(addr)))?;
        self.targets.addrs.get(*i)
    }
}
