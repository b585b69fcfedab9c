//! The target's answers to one channel's requests, waited for off the client's session.
//!
//! russh runs each session as one loop that handles a packet at a time, and its loop for
//! the target stops while a channel's queue towards a slow client is full. A request
//! handler on the client's loop that waited there for the target's answer would stop the
//! client's loop too, and with it the window updates the full queue is waiting for: the
//! whole connection would hang as soon as a second channel (or a request) arrived during a
//! download the client reads slower than the target sends. So requests go upstream at
//! once, and a task per channel takes the target's answers in order.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use russh::{server, ChannelId};
use tokio::sync::mpsc;

/// How long the target may take to answer one request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// What `f` (a request to the target) gave, if it came within [`REPLY_TIMEOUT`]; otherwise
/// why not, for the log and the audit.
pub async fn within<T>(f: impl std::future::Future<Output = Result<T, russh::Error>>) -> Result<T, String> {
    match tokio::time::timeout(REPLY_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// Requests of one channel awaiting the target's answer; a client that has more
/// outstanding is flooding and its channel is closed.
const MAX_OUTSTANDING: usize = 64;

/// Called with the target's answer (`false` also when none came in time).
pub type Then = Box<dyn FnOnce(bool) + Send>;

struct Job {
    /// Pass the answer on to the client (otherwise it was answered already).
    to_client: bool,
    then: Option<Then>,
}

/// The channel's queue of requests awaiting the target's answer.
pub struct Answers {
    jobs: mpsc::Sender<Job>,
    /// Answers the client is still owed, in order.
    owed: Arc<AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
#[error("more than {MAX_OUTSTANDING} requests of one channel await the target's answer")]
pub struct Flooded;

impl Answers {
    /// Starts taking the answers that arrive on `replies` (the target's success/failure
    /// replies on channel `id`) for the requests announced with [`Answers::expect`].
    pub fn start(id: ChannelId, front: server::Handle, replies: mpsc::Receiver<bool>) -> Self {
        let (jobs, rx) = mpsc::channel(MAX_OUTSTANDING);
        let owed = Arc::new(AtomicUsize::new(0));
        tokio::spawn(take(id, front, replies, rx, owed.clone()));
        Self { jobs, owed }
    }

    /// Whether the client still waits for an answer to an earlier request: a later one
    /// must then be answered after it, by this queue.
    pub fn owing(&self) -> bool {
        self.owed.load(Ordering::Acquire) > 0
    }

    /// A request has gone upstream with a reply wanted; its answer goes to the client if
    /// `to_client`, and to `then` in any case.
    pub fn expect(&self, to_client: bool, then: Option<Then>) -> Result<(), Flooded> {
        if to_client {
            self.owed.fetch_add(1, Ordering::AcqRel);
        }
        self.jobs.try_send(Job { to_client, then }).map_err(|_| {
            if to_client {
                self.owed.fetch_sub(1, Ordering::AcqRel);
            }
            Flooded
        })
    }
}

async fn take(
    id: ChannelId,
    front: server::Handle,
    mut replies: mpsc::Receiver<bool>,
    mut jobs: mpsc::Receiver<Job>,
    owed: Arc<AtomicUsize>,
) {
    // Answers still owed by the target for requests given up on: the next ones to arrive
    // belong to those, not to the request being waited for now.
    let mut stale = 0usize;
    while let Some(job) = jobs.recv().await {
        let ok = next(&mut replies, &mut stale).await;
        if let Some(then) = job.then {
            then(ok);
        }
        if job.to_client {
            let _ = match ok {
                true => front.channel_success(id).await,
                false => front.channel_failure(id).await,
            };
            owed.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

async fn next(replies: &mut mpsc::Receiver<bool>, stale: &mut usize) -> bool {
    while *stale > 0 {
        match tokio::time::timeout(REPLY_TIMEOUT, replies.recv()).await {
            Ok(Some(_)) => *stale -= 1,
            _ => return false,
        }
    }
    match tokio::time::timeout(REPLY_TIMEOUT, replies.recv()).await {
        Ok(Some(ok)) => ok,
        Ok(None) => false,
        Err(_) => {
            *stale += 1;
            false
        }
    }
}
