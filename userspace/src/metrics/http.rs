//! The metrics endpoint (`[metrics] listen`): `/metrics` in the OpenMetrics text format,
//! `/healthz` (the process answers) and `/readyz` (configuration loaded, dataplane attached
//! and listeners registered; 503 until then and once stopping). HTTP/1.1 only, GET only;
//! meant for a loopback or management address, it has no authentication of its own.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What the endpoint serves.
pub struct Endpoint {
    /// Set once the daemon serves steered connections; cleared when it stops.
    pub ready: AtomicBool,
    /// The scrape-time values ([`super::scrape::Gauges`]).
    pub daemon: Registry,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A connection lasts at most this long (a client that never sends its request holds one
/// task for a while, not the endpoint; a scraper simply connects again).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Endpoint {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, kind: &'static str, body: Vec<u8>| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
            r
        };
        let text = |status, body: &str| reply(status, "text/plain; charset=utf-8", body.as_bytes().to_vec());
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match req.uri().path() {
            "/metrics" => match self.encode() {
                Ok(body) => reply(StatusCode::OK, OPENMETRICS, body.into_bytes()),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.ready.load(Ordering::Relaxed) {
                true => text(StatusCode::OK, "ready\n"),
                false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz\n",
            ),
        }
    }

    /// Both registries, one exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        use prometheus_client::encoding::text;
        let mut out = String::with_capacity(16 * 1024);
        text::encode_registry(&mut out, super::get().registry())?;
        text::encode_registry(&mut out, &self.daemon)?;
        text::encode_eof(&mut out)?;
        Ok(out)
    }
}

/// Connections open at once. Past it a new one takes the place of the oldest that has not
/// sent its request yet (so idle connections, however many, cannot keep a scraper or a
/// load balancer's `/readyz` out); if every one is being answered, the new one is closed.
const CONNECTIONS: usize = 32;

/// The connections open, and which of them still wait for their request (oldest first),
/// each with what ends it early.
#[derive(Default)]
struct Open {
    count: usize,
    next: u64,
    waiting: std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
}

impl Open {
    /// Room for one more connection: `None` if every open one is being answered.
    fn admit(&mut self) -> Option<(u64, tokio::sync::oneshot::Receiver<()>)> {
        if self.count >= CONNECTIONS {
            let (_, evict) = self.waiting.pop_front()?;
            // It ends (and is counted out) on its own task.
            let _ = evict.send(());
        }
        self.count += 1;
        self.next += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.push_back((self.next, tx));
        Some((self.next, rx))
    }

    /// Connection `id` sent its request: it is answered, not taken over.
    fn asked(&mut self, id: u64) {
        self.waiting.retain(|(w, _)| *w != id);
    }

    fn closed(&mut self, id: u64) {
        self.asked(id);
        self.count -= 1;
    }
}

/// One open connection, counted out when its task ends (or panics).
struct Counted(Arc<std::sync::Mutex<Open>>, u64);

impl Drop for Counted {
    fn drop(&mut self) {
        lock(&self.0).closed(self.1);
    }
}

fn lock(o: &std::sync::Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    // Every change to `Open` is whole before the next: a panic leaves it usable.
    o.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `listener` until the daemon stops.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let open = Arc::new(std::sync::Mutex::new(Open::default()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((id, evicted)) = lock(&open).admit() else {
            continue;
        };
        let (endpoint, open) = (endpoint.clone(), open.clone());
        tokio::spawn(async move {
            // Counted out however the task ends.
            let _counted = Counted(open.clone(), id);
            let asked = open.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                lock(&asked).asked(id);
                let r = endpoint.answer(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            // One request a connection: a connection that has been answered closes, and
            // cannot sit in its slot (a scraper connects again, as it would after a timeout).
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(REQUEST_TIMEOUT, conn) => {}
                // Only a real eviction: once its request came, the sender is dropped (an
                // error here) and the answer is written to its end.
                Ok(()) = evicted => {}
            }
        });
    }
}
