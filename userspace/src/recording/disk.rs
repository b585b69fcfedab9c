//! The recordings' blocking file I/O, on a small fixed pool of threads shared by every
//! recording in the process. A recording has at most one job in flight (sealing and
//! writing its pending blocks, or at close its header patch), so its blocks reach the file
//! in order whichever thread writes them.
//!
//! Why not a thread per recording, or tokio's `spawn_blocking`: a recording lives as long
//! as its session, and tokio's blocking pool stops at 512 threads, after which every other
//! blocking call in the daemon (session starts, reloads) queues behind the recordings.
//! Writes to the page cache take microseconds; a few threads keep one slow `fsync` from
//! holding the others up.

use std::{
    panic::AssertUnwindSafe,
    sync::{mpsc, Arc, Mutex, OnceLock, PoisonError},
};

use tokio::sync::oneshot;

/// Threads in the pool, started on first use and kept for the life of the process.
pub const THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
#[error("no recording I/O thread is running")]
pub struct PoolGone;

fn pool() -> &'static mpsc::Sender<Job> {
    static POOL: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..THREADS {
            let rx = rx.clone();
            // A thread that cannot start leaves fewer; with none, `run` reports `PoolGone`
            // (the channel has no receiver) and the recording fails as configured.
            let _ = std::thread::Builder::new()
                .name(format!("recording-io-{i}"))
                .spawn(move || loop {
                    // The lock is held while waiting for a job, not while running it.
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = job else { return };
                    // A panicking job loses its answer (its caller sees `PoolGone`), not
                    // the thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                });
        }
        tx
    })
}

/// Runs `f` on the pool and waits for its result without holding a thread meanwhile.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolGone> {
    let (done, answer) = oneshot::channel();
    pool()
        .send(Box::new(move || {
            let _ = done.send(f());
        }))
        .map_err(|_| PoolGone)?;
    answer.await.map_err(|_| PoolGone)
}

/// Runs `f` on the pool without waiting for it (it reports through state it shares).
pub fn spawn(f: impl FnOnce() + Send + 'static) -> Result<(), PoolGone> {
    pool().send(Box::new(f)).map_err(|_| PoolGone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_share_the_few_threads() {
        let names: Vec<_> = (0..64)
            .map(|i| {
                tokio::spawn(run(move || {
                    (i, std::thread::current().name().unwrap_or_default().to_string())
                }))
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for (i, h) in names.into_iter().enumerate() {
            let (j, name) = h.await.unwrap().unwrap();
            assert_eq!(i, j);
            assert!(name.starts_with("recording-io-"), "{name}");
            seen.insert(name);
        }
        assert!(seen.len() <= THREADS);
        // A panicking job is reported to its caller and the pool keeps serving.
        assert!(run(|| -> u8 { panic!("job fails") }).await.is_err());
        assert_eq!(run(|| 7).await.unwrap(), 7);
    }
}
