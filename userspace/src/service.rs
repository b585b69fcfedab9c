//! What the service manager is told about the daemon's life (systemd `Type=notify`): ready
//! once the dataplane is up and the listeners are registered, reloading and ready again
//! around a reload, stopping on exit. Without `NOTIFY_SOCKET` (not started by systemd, or
//! `Type=simple`) every call does nothing.

use sd_notify::NotifyState;

/// The daemon serves: `systemctl start` returns and units ordered after it start now.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload began. The timestamp lets systemd ≥ 253 (`Type=notify-reload`) tell this reload
/// from an earlier one; older managers ignore it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    states.extend(NotifyState::monotonic_usec_now().ok());
    send(&states);
}

/// A reload ended, applied or not: either way a configuration is serving.
pub fn reloaded(status: &str) {
    ready(status);
}

/// The daemon is closing its recordings and will exit.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A lost notification is logged, not fatal: the daemon serves either way, and systemd's
/// start timeout says the rest.
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager (NOTIFY_SOCKET)");
    }
}
