//! What an operator's Prometheus scrapes (`[metrics] listen`): counters the code paths bump
//! as they go ([`get`]), and values read at scrape time ([`scrape::Gauges`]): sessions
//! active, descriptors, caps, and the dataplane's per-target packet counters from the
//! pinned maps. Served by [`http`] with `/healthz` and `/readyz`.
//!
//! One process, one set of metrics: the counters are process-wide statics, like the
//! Prometheus client libraries' default registries, so no hot path carries a handle.
//! Bumping one is one relaxed atomic add (label sets used on hot paths are resolved once).

pub mod http;
pub mod scrape;

use std::sync::LazyLock;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    to_client,
    to_target,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// Why the target could not be used.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamFailure {
    /// Not reachable, refused, or its key exchange failed.
    connect,
    /// Its host key was not the pinned one, or not certified.
    hostkey,
    /// It refused the minted certificate.
    login,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: UpstreamFailure,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    ok,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: Outcome,
}

/// The counters and histograms the code bumps.
pub struct Metrics {
    registry: Registry,
    /// Decisions on connections, by reason (`deny`: the audit's typed reason).
    pub connections: Family<DecisionLabels, Counter>,
    pub audit_events: Family<EventLabels, Counter>,
    pub to_client_bytes: Counter,
    pub to_target_bytes: Counter,
    /// Connected to authenticated (the client's whole handshake through the gateway).
    pub handshake: Histogram,
    /// Dialling the target through its first key exchange.
    pub upstream_connect: Histogram,
    /// The policy decision and the certificate, for a client's first attempt.
    pub authorization: Histogram,
    /// The target accepting the minted certificate.
    pub upstream_login: Histogram,
    pub upstream_failures: Family<KindLabels, Counter>,
    pub recording_blocks: Counter,
    pub recording_bytes: Counter,
    pub recording_failures: Counter,
    /// Bytes handed to recordings' writers and not yet sealed.
    pub recording_queued_bytes: Gauge,
    pub reloads: Family<ResultLabels, Counter>,
    /// Starts at 1; each accepted reload adds one.
    pub config_generation: Gauge,
    pub sessions_terminated: Counter,
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Latency buckets: 0.25 ms to about 33 s, doubling (a policy decision takes well under a
/// millisecond; a dial across a slow network, seconds).
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics {
            registry: Registry::default(),
            connections: Family::default(),
            audit_events: Family::default(),
            to_client_bytes: Counter::default(),
            to_target_bytes: Counter::default(),
            handshake: latency(),
            upstream_connect: latency(),
            authorization: latency(),
            upstream_login: latency(),
            upstream_failures: Family::default(),
            recording_blocks: Counter::default(),
            recording_bytes: Counter::default(),
            recording_failures: Counter::default(),
            recording_queued_bytes: Gauge::default(),
            reloads: Family::default(),
            config_generation: Gauge::default(),
            sessions_terminated: Counter::default(),
        };
        m.config_generation.set(1);
        registry.register(
            "connections",
            "Connections decided, by decision and the audit's reason",
            m.connections.clone(),
        );
        registry.register(
            "audit_events",
            "Audit events written, by event",
            m.audit_events.clone(),
        );
        // The hot path holds the two counters themselves, not a family's lookup.
        registry.register_with_unit(
            "relayed",
            "Channel data relayed, by direction",
            Unit::Bytes,
            RelayedBytes {
                to_client: m.to_client_bytes.clone(),
                to_target: m.to_target_bytes.clone(),
            },
        );
        for (name, help, h) in [
            (
                "handshake_duration",
                "From the client's connection to its session being authenticated",
                &m.handshake,
            ),
            (
                "upstream_connect_duration",
                "Dialling the target through its first key exchange",
                &m.upstream_connect,
            ),
            (
                "authorization_duration",
                "The policy decision and certificate for a client's authentication attempt",
                &m.authorization,
            ),
            (
                "upstream_login_duration",
                "The target accepting the minted certificate",
                &m.upstream_login,
            ),
        ] {
            registry.register_with_unit(name, help, Unit::Seconds, h.clone());
        }
        registry.register(
            "upstream_failures",
            "Connections the target could not serve, by kind",
            m.upstream_failures.clone(),
        );
        registry.register(
            "recording_blocks",
            "Recording blocks sealed",
            m.recording_blocks.clone(),
        );
        registry.register_with_unit(
            "recording_written",
            "Sealed recording bytes written to disk",
            Unit::Bytes,
            m.recording_bytes.clone(),
        );
        registry.register(
            "recording_failures",
            "Recordings that could not start or stopped on a write error",
            m.recording_failures.clone(),
        );
        registry.register_with_unit(
            "recording_queued",
            "Session bytes handed to recording writers and not sealed yet",
            Unit::Bytes,
            m.recording_queued_bytes.clone(),
        );
        registry.register("reloads", "Configuration reloads, by result", m.reloads.clone());
        registry.register(
            "config_generation",
            "The configuration in force: 1 at start, one more per accepted reload",
            m.config_generation.clone(),
        );
        registry.register(
            "sessions_terminated",
            "Sessions ended by an operator (`portcullis terminate`)",
            m.sessions_terminated.clone(),
        );
        Metrics { registry, ..m }
    }

    /// `n` decisions on connections, from their audit event.
    pub fn decided(&self, decision: &'static str, reason: &str, n: u64) {
        self.connections
            .get_or_create(&DecisionLabels {
                decision,
                reason: label(reason),
            })
            .inc_by(n);
    }

    pub fn upstream_failed(&self, kind: UpstreamFailure) {
        self.upstream_failures.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { Outcome::ok } else { Outcome::failed };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        if ok {
            self.config_generation.inc();
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// A label value from an audit reason: the typed reasons are short snake_case words; any
/// other text (none is expected) is counted as `other`, so that a label cannot grow
/// without bound.
fn label(reason: &str) -> String {
    let typed = !reason.is_empty()
        && reason.len() <= 48
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if typed {
        reason.to_owned()
    } else {
        "other".to_owned()
    }
}

/// `portcullis_relayed_bytes_total{direction}` from two plain counters.
#[derive(Debug, Clone)]
struct RelayedBytes {
    to_client: Counter,
    to_target: Counter,
}

impl prometheus_client::encoding::EncodeMetric for RelayedBytes {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        for (direction, c) in [
            (Direction::to_client, &self.to_client),
            (Direction::to_target, &self.to_target),
        ] {
            let labels = DirectionLabels { direction };
            c.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_bounded_labels() {
        assert_eq!(label("upstream_auth_failed"), "upstream_auth_failed");
        assert_eq!(label("bytes_from_client=1 x"), "other");
        assert_eq!(label(""), "other");
        assert_eq!(label(&"a".repeat(49)), "other");
    }

    #[test]
    fn the_text_format_names_follow_prometheus_conventions() {
        // Its own set: other tests bump the process's.
        let m = Metrics::new();
        m.decided("deny", "no_policy", 1);
        m.to_client_bytes.inc_by(5);
        m.handshake.observe(0.01);
        m.reloaded(true);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, m.registry()).unwrap();
        for line in [
            "portcullis_connections_total{decision=\"deny\",reason=\"no_policy\"} 1",
            "portcullis_relayed_bytes_total{direction=\"to_client\"} 5",
            "portcullis_relayed_bytes_total{direction=\"to_target\"} 0",
            "portcullis_handshake_duration_seconds_count 1",
            "portcullis_reloads_total{result=\"ok\"} 1",
            "portcullis_config_generation 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
