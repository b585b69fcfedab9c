//! Audit events as JSON lines on stdout (and, later, an append-only file).

use std::{
    io::Write,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Event<'a> {
    pub time: String,
    pub event: &'a str,
    pub session: &'a str,
    pub source: SocketAddr,
    pub vnet: Option<&'a str>,
    pub vnet_id: Option<u16>,
    pub target: Option<&'a str>,
    pub target_addr: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// Now, RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A session id unique across restarts: start time and a counter.
pub fn session_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{t:012x}{:04x}{n:06x}", std::process::id() & 0xffff)
}

pub fn emit(e: &Event<'_>) {
    if let Ok(line) = serde_json::to_string(e) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
