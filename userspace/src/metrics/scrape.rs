//! Values read when Prometheus scrapes: live sessions, descriptors, memory, the caps in
//! force, connections awaiting authentication, and the dataplane's packet counters per
//! target and verdict (from the pinned maps, as `portcullis stats` reads them).

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use crate::{admission::Admission, config::schema::DataplaneConfig, snapshot::Snapshot};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapLabels {
    cap: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    vnet: String,
    target: String,
    address: String,
    verdict: &'static str,
}

/// The daemon's state a scrape reads.
pub struct Gauges {
    pub admission: Admission,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Where the dataplane's maps are pinned; `None` without steering.
    pub dataplane: Option<DataplaneConfig>,
}

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauges").finish_non_exhaustive()
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
}

/// `(open descriptors, resident bytes, threads)` from /proc.
fn process() -> (i64, i64, i64) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (fds, field("VmRSS:") * 1024, field("Threads:"))
}

impl Collector for Gauges {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut e,
            "portcullis_sessions_active",
            "Authenticated sessions being relayed",
            None,
            crate::live::registry().len() as i64,
        )?;
        gauge(
            &mut e,
            "portcullis_unauthenticated_connections",
            "Connections admitted and not authenticated yet",
            None,
            self.admission.in_use() as i64,
        )?;
        let caps = self.admission.limits();
        let dials = self.snapshot.load().dial_caps;
        let g = ConstGauge::new(0i64);
        let mut m = e.encode_descriptor(
            "portcullis_limit",
            "The caps in force ([limits])",
            None,
            g.metric_type(),
        )?;
        for (cap, v) in [
            ("unauthenticated", caps.unauthenticated),
            ("unauthenticated_per_source", caps.per_source),
            ("upstream_dials_per_identity", dials.per_identity),
            ("upstream_dials_per_target", dials.per_target),
        ] {
            let labels = CapLabels { cap };
            ConstGauge::new(v as i64).encode(m.encode_family(&labels)?)?;
        }
        let (fds, rss, threads) = process();
        gauge(&mut e, "process_open_fds", "Open file descriptors", None, fds)?;
        let max = crate::admission::nofile_limit().map_or(-1, |n| n as i64);
        gauge(
            &mut e,
            "process_max_fds",
            "The descriptor limit (soft)",
            None,
            max,
        )?;
        gauge(
            &mut e,
            "process_resident_memory",
            "Resident memory",
            Some(&Unit::Bytes),
            rss,
        )?;
        gauge(&mut e, "process_threads", "OS threads", None, threads)?;
        if let Some(cfg) = &self.dataplane {
            // Read from the pins each scrape; a dataplane being re-attached is skipped once.
            if let Ok((c, entries)) = crate::dataplane::read_stats(cfg) {
                let zero = ConstCounter::new(0u64);
                let mut m = e.encode_descriptor(
                    "portcullis_dataplane_packets",
                    "Packets the dataplane classified, by target address and verdict",
                    None,
                    zero.metric_type(),
                )?;
                for t in &entries {
                    for (v, verdict) in portcullis_common::verdict::NAMES.iter().enumerate() {
                        let n = c.get(t.id, v as u32);
                        if n == 0 {
                            continue;
                        }
                        let labels = PacketLabels {
                            vnet: t.vnet_name.clone(),
                            target: t.target.clone(),
                            address: t.addr.to_string(),
                            verdict,
                        };
                        ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}
