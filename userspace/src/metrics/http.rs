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

/// Connections served at once; more are closed at once.
const CONNECTIONS: usize = 32;

/// Serves `listener` until the daemon stops.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = endpoint.answer(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
}
