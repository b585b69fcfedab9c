//! The sessions being relayed now: what `portcullis sessions` lists, what `portcullis
//! terminate` ends, and `portcullis_sessions_active`.
//!
//! A session is registered once it is authenticated (logged in to the target) and leaves
//! the registry when its relay ends ([`Entry`] is dropped). The relay keeps the figures
//! (bytes, channels) up to date with relaxed stores once per wake-up; listing reads them.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, LazyLock, Mutex,
    },
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Who a session is, fixed at registration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    pub session: String,
    pub identity: String,
    pub source: SocketAddr,
    pub vnet: String,
    pub target: String,
    pub target_addr: SocketAddr,
    pub login: String,
    /// RFC 3339, UTC.
    pub started: String,
}

/// A session as listed: who, and its figures now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listed {
    #[serde(flatten)]
    pub who: Identity,
    pub bytes_to_client: u64,
    pub bytes_to_target: u64,
    pub channels: u32,
    /// The session channels' recordings (one file per channel), in the order they started.
    pub recordings: Vec<PathBuf>,
}

/// Why, and at whose request, a session is to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    pub reason: String,
    /// Who asked, e.g. `uid 0 pid 4242`.
    pub by: String,
}

pub struct Live {
    pub who: Identity,
    to_client: AtomicU64,
    to_target: AtomicU64,
    channels: AtomicU32,
    recordings: Mutex<Vec<PathBuf>>,
    stop: Mutex<Option<Termination>>,
    stop_now: Notify,
}

impl Live {
    /// The relay's figures: bytes sent to each side so far, and channels open.
    pub fn update(&self, to_client: u64, to_target: u64, channels: usize) {
        self.to_client.store(to_client, Ordering::Relaxed);
        self.to_target.store(to_target, Ordering::Relaxed);
        self.channels.store(channels as u32, Ordering::Relaxed);
    }

    pub fn recording_started(&self, path: PathBuf) {
        lock(&self.recordings).push(path);
    }

    /// Resolves once an operator asked for the session to end.
    pub async fn stopped(&self) -> Termination {
        loop {
            if let Some(t) = lock(&self.stop).clone() {
                return t;
            }
            self.stop_now.notified().await;
        }
    }

    fn listed(&self) -> Listed {
        Listed {
            who: self.who.clone(),
            bytes_to_client: self.to_client.load(Ordering::Relaxed),
            bytes_to_target: self.to_target.load(Ordering::Relaxed),
            channels: self.channels.load(Ordering::Relaxed),
            recordings: lock(&self.recordings).clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's live sessions.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Arc<Live>>>,
}

pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);
    &REGISTRY
}

/// A session's place in the registry; dropping it removes the session.
pub struct Entry {
    live: Arc<Live>,
    registry: &'static Registry,
}

impl std::ops::Deref for Entry {
    type Target = Live;
    fn deref(&self) -> &Live {
        &self.live
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        lock(&self.registry.map).remove(&self.live.who.session);
    }
}

impl Registry {
    pub fn register(&'static self, who: Identity) -> Entry {
        let live = Arc::new(Live {
            who,
            to_client: AtomicU64::new(0),
            to_target: AtomicU64::new(0),
            channels: AtomicU32::new(0),
            recordings: Mutex::new(Vec::new()),
            stop: Mutex::new(None),
            stop_now: Notify::new(),
        });
        lock(&self.map).insert(live.who.session.clone(), live.clone());
        Entry { live, registry: self }
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<Listed> {
        let all: Vec<Arc<Live>> = lock(&self.map).values().cloned().collect();
        let mut v: Vec<Listed> = all.iter().map(|l| l.listed()).collect();
        v.sort_by(|a, b| (&a.who.started, &a.who.session).cmp(&(&b.who.started, &b.who.session)));
        v
    }

    /// Asks session `id` to end. A second request for the same session keeps the first
    /// reason (the relay audits that one when it ends the session); the caller audits the
    /// repeat.
    pub fn terminate(&self, id: &str, t: Termination) -> Terminate {
        let Some(live) = lock(&self.map).get(id).cloned() else {
            return Terminate::NoSuchSession;
        };
        let first = {
            let mut stop = lock(&live.stop);
            let first = stop.is_none();
            stop.get_or_insert(t);
            first
        };
        // A permit is stored if the relay is not waiting right now: the request is not lost.
        live.stop_now.notify_one();
        match first {
            true => Terminate::Asked,
            false => Terminate::Repeated,
        }
    }
}

/// What a terminate request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminate {
    /// The session will end with this request's reason.
    Asked,
    /// Another request had asked first: the session ends with that one's reason.
    Repeated,
    NoSuchSession,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str) -> Identity {
        Identity {
            session: id.into(),
            identity: "alice@example.com".into(),
            source: "198.18.1.2:40000".parse().unwrap(),
            vnet: "corp".into(),
            target: "web-01".into(),
            target_addr: "198.18.10.10:22".parse().unwrap(),
            login: "alice".into(),
            started: "2026-11-30T07:00:00Z".into(),
        }
    }

    #[tokio::test]
    async fn registered_listed_terminated_and_gone_when_dropped() {
        let r: &'static Registry = Box::leak(Box::default());
        let e = r.register(who("s1"));
        e.update(10, 20, 2);
        e.recording_started("/x/s1-0.log".into());
        let l = r.list();
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].bytes_to_client, l[0].bytes_to_target, l[0].channels),
            (10, 20, 2)
        );
        assert_eq!(
            r.terminate(
                "nope",
                Termination {
                    reason: "x".into(),
                    by: "y".into()
                }
            ),
            Terminate::NoSuchSession
        );
        let t = Termination {
            reason: "maintenance".into(),
            by: "uid 0".into(),
        };
        // Asked before the relay waits: the request is kept.
        assert_eq!(r.terminate("s1", t.clone()), Terminate::Asked);
        let again = Termination {
            reason: "another".into(),
            by: "uid 0 pid 2".into(),
        };
        assert_eq!(r.terminate("s1", again), Terminate::Repeated);
        assert_eq!(e.stopped().await, t, "the first request's reason is kept");
        drop(e);
        assert!(r.is_empty());
    }
}
