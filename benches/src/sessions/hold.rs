//! Many idle sessions at once: the harness ramps up `n` sessions through a gateway, at most
//! [`RAMP`] being set up at a time, each from one of [`SOURCES`] loopback addresses, and
//! holds them (one task each) until dropped.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    runtime::Runtime,
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};

use super::client::{Client, Login};

/// Sessions being set up at once (within the gateway's `[limits]`).
pub const RAMP: usize = 128;
/// Source addresses 127.0.1.1 … 127.0.1.SOURCES: no source's ephemeral ports run short
/// however many sessions are held.
const SOURCES: u32 = 64;
/// How long one session may take to start.
const START: Duration = Duration::from_secs(60);
/// The command the sessions run: it never ends on a real host either.
const COMMAND: &str = "sleep infinity";

pub struct Held {
    tasks: Vec<JoinHandle<()>>,
    /// Sessions that started.
    pub up: usize,
    /// Sessions that started and have ended since.
    lost: Arc<AtomicUsize>,
    /// The first few reasons sessions failed to start or ended.
    pub errors: Vec<String>,
}

impl Held {
    pub fn alive(&self) -> usize {
        self.up - self.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts `n` sessions to `gateway` and returns once each has started or failed.
pub fn ramp(rt: &Runtime, gateway: SocketAddr, n: usize) -> Held {
    let slots = Arc::new(Semaphore::new(RAMP));
    let lost = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i as u32 % SOURCES) as u8));
        let (slots, lost, tx) = (slots.clone(), lost.clone(), tx.clone());
        tasks.push(rt.spawn(async move {
            let Ok(permit) = slots.acquire_owned().await else {
                return;
            };
            let started =
                tokio::time::timeout(START, Client::start(gateway, Some(source), &Login::None, COMMAND))
                    .await;
            drop(permit);
            let client = match started {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return drop(tx.send(Err(format!("{e:#}")))),
                Err(_) => return drop(tx.send(Err("no session within 60 s".into()))),
            };
            let _ = tx.send(Ok(()));
            let ended = client.idle().await;
            lost.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = ended {
                let _ = tx.send(Err(format!("ended: {e:#}")));
            }
        }));
    }
    drop(tx);
    let (mut up, mut failed, mut errors) = (0, 0, Vec::new());
    rt.block_on(async {
        while up + failed < n {
            let Some(r) = rx.recv().await else { break };
            match r {
                Ok(()) => {
                    up += 1;
                    if up % 1000 == 0 {
                        eprintln!("sessions: {up} up");
                    }
                }
                Err(e) => {
                    if !e.starts_with("ended") {
                        failed += 1;
                    }
                    if errors.len() < 5 {
                        errors.push(e);
                    }
                }
            }
        }
    });
    Held {
        tasks,
        up,
        lost,
        errors,
    }
}
