//! A bound on upstream connections *in progress* (dialled, not yet logged in): each is an
//! unauthenticated connection on the target's sshd, which refuses new ones past its
//! `MaxStartups` — real users included. Counted per identity (one identity cannot take a
//! target's share) and per target; a connection over either cap waits for a slot for a
//! while, then is refused.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

pub use crate::admission::DialCaps as Caps;

/// How long a connection waits for a slot.
pub const WAIT: Duration = Duration::from_secs(10);

type TargetKey = (u16, IpAddr);

#[derive(Default)]
struct Counts {
    identity: HashMap<String, usize>,
    target: HashMap<TargetKey, usize>,
}

#[derive(Default)]
pub struct DialSlots {
    counts: Mutex<Counts>,
    freed: Notify,
}

/// A slot, given back when dropped (once the upstream login is done or failed).
pub struct Slot {
    slots: Arc<DialSlots>,
    identity: String,
    target: TargetKey,
}

impl DialSlots {
    /// Takes a slot for `identity` dialling `target`, waiting up to [`WAIT`] for one.
    pub async fn acquire(self: &Arc<Self>, identity: &str, target: TargetKey, caps: Caps) -> Option<Slot> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // Registered before the check, so a slot freed in between is not missed.
            let freed = self.freed.notified();
            if self.try_take(identity, target, caps) {
                return Some(Slot {
                    slots: self.clone(),
                    identity: identity.to_owned(),
                    target,
                });
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }

    fn try_take(&self, identity: &str, target: TargetKey, caps: Caps) -> bool {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let i = c.identity.get(identity).copied().unwrap_or(0);
        let t = c.target.get(&target).copied().unwrap_or(0);
        if i >= caps.per_identity.max(1) || t >= caps.per_target.max(1) {
            return false;
        }
        *c.identity.entry(identity.to_owned()).or_default() += 1;
        *c.target.entry(target).or_default() += 1;
        true
    }

    /// Slots in use (for tests and metrics).
    pub fn in_use(&self) -> usize {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.target.values().sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.identity.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                c.identity.remove(&self.identity);
            }
        }
        if let Some(n) = c.target.get_mut(&self.target) {
            *n -= 1;
            if *n == 0 {
                c.target.remove(&self.target);
            }
        }
        drop(c);
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_per_identity_and_per_target_and_slots_come_back() {
        let s = Arc::new(DialSlots::default());
        let caps = Caps {
            per_identity: 2,
            per_target: 3,
        };
        let t1 = (1, IpAddr::from([198, 18, 0, 1]));
        let a = s.acquire("alice", t1, caps).await.unwrap();
        let _b = s.acquire("alice", t1, caps).await.unwrap();
        assert!(!s.try_take("alice", t1, caps), "alice is at her cap");
        let _c = s.acquire("bob", t1, caps).await.unwrap();
        assert!(!s.try_take("carol", t1, caps), "the target is at its cap");
        assert!(s.try_take("carol", (1, IpAddr::from([198, 18, 0, 2])), caps));
        // A waiter gets the slot given back.
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.acquire("alice", t1, caps).await.is_some() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(a);
        assert!(waiter.await.unwrap());
    }
}
