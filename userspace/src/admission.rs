//! Admission of connections that have not authenticated yet (`[limits]`).
//!
//! Anyone who can reach a protected address can open connections, and each one holds
//! descriptors until it is refused, times out or authenticates: the client's socket, and
//! from the pre-check on the target's too. So the daemon caps how many such connections
//! exist at once, globally and per source address, and closes those over a cap at once —
//! before any task, timer or audit line is spent on them. A [`Permit`] is the right to be
//! one of them: it is given back when the connection authenticates or ends.
//!
//! Refusals are counted rather than audited one by one when they repeat: per (source,
//! reason), the first [`AUDITED_PER_INTERVAL`] in an interval are audited as usual, the rest
//! are added up and written as one `refused.flood` event per interval. A flood thus costs the
//! audit trail a few lines per source and interval, not two per connection.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::config::schema::LimitsConfig;

/// Per source when `[limits]` does not say: enough for a device's parallel `ssh`, `scp` and
/// multiplexed masters starting together, far too few to hold a gateway's descriptors.
pub const DEFAULT_PER_SOURCE: usize = 32;
/// How often repeated refusals are summed up when `[limits]` does not say.
pub const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(10);
/// Refusals of one (source, reason) audited one by one per interval; the rest are counted.
pub const AUDITED_PER_INTERVAL: u32 = 5;
/// Sources tracked per interval for the aggregate; refusals from more sources than this
/// are counted under no source, so that a flood from many addresses cannot grow the table.
pub const MAX_TALLIES: usize = 4096;

/// The caps in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub unauthenticated: usize,
    pub per_source: usize,
    pub audit_interval: Duration,
}

impl Limits {
    /// The configured caps; what is not configured is derived from the descriptor limit
    /// `nofile`. An unauthenticated connection holds up to two descriptors (client and
    /// target), so an eighth of the limit leaves three quarters for authenticated sessions
    /// (two sockets and their recordings each), the audit trail and the listeners.
    pub fn resolve(cfg: &LimitsConfig, nofile: u64) -> Self {
        let derived = (nofile / 8).clamp(16, 4096) as usize;
        let unauthenticated = cfg.unauthenticated.as_ref().map_or(derived, |v| *v.get_ref());
        let per_source = cfg
            .unauthenticated_per_source
            .as_ref()
            .map_or(DEFAULT_PER_SOURCE, |v| *v.get_ref())
            .min(unauthenticated);
        let audit_interval = cfg
            .refusal_audit_interval_secs
            .as_ref()
            .map_or(DEFAULT_AUDIT_INTERVAL, |v| Duration::from_secs(*v.get_ref()));
        Self {
            unauthenticated: unauthenticated.max(1),
            per_source: per_source.max(1),
            audit_interval,
        }
    }

    /// The most descriptors unauthenticated connections can hold at once.
    pub fn descriptors(&self) -> u64 {
        2 * self.unauthenticated as u64
    }
}

/// Defaults of `[limits] upstream_dials_per_identity` / `upstream_dials_per_target`:
/// below OpenSSH's `MaxStartups` start of 10.
pub const DEFAULT_DIALS_PER_IDENTITY: usize = 4;
pub const DEFAULT_DIALS_PER_TARGET: usize = 8;
/// Caps on upstream connections in progress (`proxy::dial_slots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialCaps {
    pub per_identity: usize,
    pub per_target: usize,
}

impl Default for DialCaps {
    fn default() -> Self {
        Self {
            per_identity: DEFAULT_DIALS_PER_IDENTITY,
            per_target: DEFAULT_DIALS_PER_TARGET,
        }
    }
}

impl DialCaps {
    /// `[limits] upstream_dials_per_*`, defaults for what is not set.
    pub fn resolve(l: &LimitsConfig) -> Self {
        let d = Self::default();
        Self {
            per_identity: l
                .upstream_dials_per_identity
                .as_ref()
                .map_or(d.per_identity, |v| *v.get_ref()),
            per_target: l
                .upstream_dials_per_target
                .as_ref()
                .map_or(d.per_target, |v| *v.get_ref()),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `[limits] unauthenticated` connections await authentication already.
    Global,
    /// Its source has `[limits] unauthenticated_per_source` awaiting authentication.
    PerSource,
}

impl Refused {
    /// The audited reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Global => "unauthenticated_limit",
            Refused::PerSource => "unauthenticated_per_source_limit",
        }
    }
}

/// Refusals of one (source, reason) in the current interval.
#[derive(Default)]
struct Tally {
    audited: u32,
    counted: u64,
}

struct State {
    caps: Limits,
    in_use: usize,
    per_source: HashMap<IpAddr, usize>,
    /// `None` as source: refusals beyond `MAX_TALLIES` sources.
    tallies: HashMap<(Option<IpAddr>, &'static str), Tally>,
}

struct Inner {
    state: Mutex<State>,
    refused_total: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Repeated refusals of one source and reason, summed over an interval.
#[derive(Debug, PartialEq, Eq)]
pub struct Flood {
    /// `None`: refusals from sources beyond the ones tracked one by one.
    pub source: Option<IpAddr>,
    pub reason: &'static str,
    pub count: u64,
}

/// The caps and the counts; cloned into every accept loop.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    caps: limits,
                    in_use: 0,
                    per_source: HashMap::new(),
                    tallies: HashMap::new(),
                }),
                refused_total: AtomicU64::new(0),
            }),
        }
    }

    /// New caps (a reload); connections admitted already keep their permits.
    pub fn set_limits(&self, limits: Limits) {
        self.inner.lock().caps = limits;
    }

    pub fn limits(&self) -> Limits {
        self.inner.lock().caps
    }

    /// Admits a connection from `source` if both caps allow; a refusal is counted (and
    /// audited in the next aggregate), never audited on its own.
    pub fn try_admit(&self, source: IpAddr) -> Result<Permit, Refused> {
        let source = source_key(source);
        let mut s = self.inner.lock();
        let caps = s.caps;
        let mine = s.per_source.get(&source).copied().unwrap_or(0);
        let refused = if mine >= caps.per_source {
            Some(Refused::PerSource)
        } else if s.in_use >= caps.unauthenticated {
            Some(Refused::Global)
        } else {
            None
        };
        if let Some(r) = refused {
            count(&mut s, source, r.as_str(), 0);
            drop(s);
            self.inner.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        s.in_use += 1;
        *s.per_source.entry(source).or_insert(0) += 1;
        Ok(Permit {
            inner: self.inner.clone(),
            source,
        })
    }

    /// Connections awaiting authentication now.
    pub fn in_use(&self) -> usize {
        self.inner.lock().in_use
    }

    /// Refusals since the daemon started: over a cap, or refused by the pre-check while
    /// counted instead of audited.
    pub fn refused_total(&self) -> u64 {
        self.inner.refused_total.load(Ordering::Relaxed)
    }

    /// The refusals counted since the last call (a new interval starts: every (source,
    /// reason) may again be audited one by one a few times).
    pub fn take_floods(&self) -> Vec<Flood> {
        let tallies = std::mem::take(&mut self.inner.lock().tallies);
        let mut v: Vec<Flood> = tallies
            .into_iter()
            .filter(|(_, t)| t.counted > 0)
            .map(|((source, reason), t)| Flood {
                source,
                reason,
                count: t.counted,
            })
            .collect();
        v.sort_by(|a, b| (a.source, a.reason).cmp(&(b.source, b.reason)));
        v
    }
}

/// Counts a refusal of `source` for `reason`: audited one by one while fewer than
/// `audit_first` were this interval (returns `true`), counted for the aggregate otherwise.
fn count(s: &mut State, source: IpAddr, reason: &'static str, audit_first: u32) -> bool {
    let key = if s.tallies.len() < MAX_TALLIES || s.tallies.contains_key(&(Some(source), reason)) {
        (Some(source), reason)
    } else {
        (None, reason)
    };
    let t = s.tallies.entry(key).or_default();
    if t.audited < audit_first {
        t.audited += 1;
        return true;
    }
    t.counted += 1;
    false
}

/// One connection's place among those awaiting authentication; given back on drop.
pub struct Permit {
    inner: Arc<Inner>,
    source: IpAddr,
}

impl Permit {
    /// Half of a cap is in use (globally, or by this source): refusals then close at once
    /// instead of waiting for the client to read why, so that they give their place back.
    pub fn under_pressure(&self) -> bool {
        let s = self.inner.lock();
        let caps = s.caps;
        let mine = s.per_source.get(&self.source).copied().unwrap_or(0);
        s.in_use * 2 >= caps.unauthenticated || mine * 2 >= caps.per_source
    }

    /// The pre-check refused this connection for `reason`: `true` if it is to be audited
    /// on its own, `false` if it was counted for this interval's `refused.flood` instead.
    pub fn audit_refusal(&self, reason: &'static str) -> bool {
        let audited = count(&mut self.inner.lock(), self.source, reason, AUDITED_PER_INTERVAL);
        if !audited {
            self.inner.refused_total.fetch_add(1, Ordering::Relaxed);
        }
        audited
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.in_use = s.in_use.saturating_sub(1);
        if let Some(n) = s.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Sources come and go: only those with connections in flight are kept.
                s.per_source.remove(&self.source);
            }
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("source", &self.source).finish()
    }
}

/// Raises the soft descriptor limit to the hard one: the kernel's default soft limit (1024)
/// is far below what a gateway's connections need, and only the hard limit is a decision
/// (the unit's `LimitNOFILE`). Returns (soft before, soft now, hard).
/// RLIMIT_NOFILE: the soft and hard descriptor limits.
fn nofile() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// The soft descriptor limit in force.
pub fn nofile_limit() -> std::io::Result<u64> {
    Ok(nofile()?.rlim_cur)
}

pub fn raise_nofile() -> std::io::Result<(u64, u64, u64)> {
    let mut lim = nofile()?;
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((before, lim.rlim_cur, lim.rlim_max))
}

/// What `unauthenticated_per_source` counts by: an IPv4 address, or an IPv6 /64 (one host
/// is given a /64 to pick addresses from, so counting single addresses would let it fill
/// the global cap alone).
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_none() => {
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & !(u64::MAX as u128)))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_counted_by_its_64() {
        let a = Admission::new(limits(100, 2));
        let _p = [
            a.try_admit(ip("2001:db8:1:2::1")).unwrap(),
            a.try_admit(ip("2001:db8:1:2:ffff::9")).unwrap(),
        ];
        assert_eq!(
            a.try_admit(ip("2001:db8:1:2:abcd::1")).unwrap_err(),
            Refused::PerSource,
            "a third address of the same /64"
        );
        let _q = a.try_admit(ip("2001:db8:1:3::1")).unwrap();
        let _r = [
            a.try_admit(ip("198.18.1.1")).unwrap(),
            a.try_admit(ip("198.18.1.2")).unwrap(),
        ];
    }

    fn limits(global: usize, per: usize) -> Limits {
        Limits {
            unauthenticated: global,
            per_source: per,
            audit_interval: DEFAULT_AUDIT_INTERVAL,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_are_per_source_and_global_and_given_back_on_drop() {
        let a = Admission::new(limits(3, 2));
        let p1 = a.try_admit(ip("198.18.1.1")).unwrap();
        let p2 = a.try_admit(ip("198.18.1.1")).unwrap();
        assert_eq!(a.try_admit(ip("198.18.1.1")).unwrap_err(), Refused::PerSource);
        let q1 = a.try_admit(ip("198.18.1.2")).unwrap();
        assert_eq!(a.try_admit(ip("198.18.1.3")).unwrap_err(), Refused::Global);
        assert_eq!(a.in_use(), 3);
        drop(p1);
        let p3 = a.try_admit(ip("198.18.1.3")).unwrap();
        drop((p2, q1, p3));
        assert_eq!(a.in_use(), 0);
        assert!(
            a.inner.lock().per_source.is_empty(),
            "no source kept without connections"
        );
        assert_eq!(a.refused_total(), 2);
    }

    #[test]
    fn pressure_starts_at_half_a_cap() {
        let a = Admission::new(limits(8, 4));
        let p1 = a.try_admit(ip("198.18.1.1")).unwrap();
        assert!(!p1.under_pressure());
        let p2 = a.try_admit(ip("198.18.1.1")).unwrap();
        assert!(
            p1.under_pressure() && p2.under_pressure(),
            "2 of 4 for this source"
        );
        let other = a.try_admit(ip("198.18.1.2")).unwrap();
        assert!(!other.under_pressure(), "3 of 8 globally, 1 of 4 for its source");
    }

    #[test]
    fn repeated_refusals_are_audited_a_few_times_then_counted() {
        let a = Admission::new(limits(100, 100));
        let p = a.try_admit(ip("198.18.1.1")).unwrap();
        let audited = (0..50).filter(|_| p.audit_refusal("no_identity")).count();
        assert_eq!(audited, AUDITED_PER_INTERVAL as usize);
        let full = Admission::new(limits(1, 1));
        let _held = full.try_admit(ip("198.18.1.9")).unwrap();
        for _ in 0..7 {
            assert!(full.try_admit(ip("198.18.1.9")).is_err());
        }
        assert_eq!(
            full.take_floods(),
            vec![Flood {
                source: Some(ip("198.18.1.9")),
                reason: "unauthenticated_per_source_limit",
                count: 7
            }]
        );
        assert_eq!(
            a.take_floods(),
            vec![Flood {
                source: Some(ip("198.18.1.1")),
                reason: "no_identity",
                count: 50 - AUDITED_PER_INTERVAL as u64
            }]
        );
        assert!(a.take_floods().is_empty(), "taken once");
        assert!(p.audit_refusal("no_identity"), "a new interval audits again");
    }

    #[test]
    fn many_sources_cannot_grow_the_tally_table() {
        let a = Admission::new(limits(1, 1));
        let _held = a.try_admit(ip("10.0.0.1")).unwrap();
        for i in 0..(MAX_TALLIES as u32 + 100) {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            assert!(a.try_admit(src).is_err());
        }
        let floods = a.take_floods();
        assert_eq!(floods.len(), MAX_TALLIES + 1);
        let rest = floods.iter().find(|f| f.source.is_none()).unwrap();
        assert_eq!(rest.count, 100);
        assert_eq!(
            floods.iter().map(|f| f.count).sum::<u64>(),
            MAX_TALLIES as u64 + 100
        );
    }

    #[test]
    fn defaults_follow_the_descriptor_limit() {
        let none = LimitsConfig::default();
        assert_eq!(Limits::resolve(&none, 1024), limits(128, 32));
        assert_eq!(Limits::resolve(&none, 64).unauthenticated, 16);
        assert_eq!(Limits::resolve(&none, 1 << 20).unauthenticated, 4096);
        let small = LimitsConfig {
            unauthenticated: Some(toml::Spanned::new(0..0, 8)),
            ..Default::default()
        };
        assert_eq!(Limits::resolve(&small, 1 << 20), limits(8, 8));
    }
}
