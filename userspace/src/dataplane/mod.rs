//! The kernel dataplane: one owner for the BPF programs, their pinned maps and links, the
//! policy-routing rules and the sysctls they need. Nothing else touches the maps.
//!
//! Everything is pinned under `<bpffs>/portcullis/<instance>/` and left in place when the
//! daemon exits or dies, so protected ports stay closed (fail closed) until the next daemon
//! registers its sockets; only [`down`] removes it.

mod error;
mod forward_guard;
pub mod interfaces;
mod links;
mod lock;
mod maps;
pub mod monitor;
mod preflight;
mod routing;
mod state;
mod sysctl;
pub mod testrun;

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader};
pub use error::DataplaneError;
pub use lock::InstanceLock;
pub use maps::Counters;
use portcullis_common::{SOCKET_V4, SOCKET_V6};
pub use state::StateEntry;

use crate::{config::DataplaneConfig, targets::TargetSet};

/// The BPF object embedded at build time (empty if it was not built).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis.bpf.o"));

/// The BPF object, or an error that says how to build it. `PORTCULLIS_BPF_OBJECT` names a
/// file to load instead of the embedded object (development, benchmarks of variants).
pub fn object() -> Result<&'static [u8], DataplaneError> {
    static OVERRIDE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let over =
        OVERRIDE.get_or_init(|| std::env::var_os("PORTCULLIS_BPF_OBJECT").and_then(|p| fs::read(p).ok()));
    match over {
        Some(bytes) => Ok(bytes),
        None if OBJECT.is_empty() => Err(DataplaneError::NoObject),
        None => Ok(OBJECT),
    }
}

/// Where an instance keeps its pins and state.
#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
    pub maps: PathBuf,
    pub links: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    pub fn new(cfg: &DataplaneConfig) -> Self {
        let root = cfg.bpffs.join("portcullis").join(&cfg.instance);
        Self {
            maps: root.join("maps"),
            links: root.join("links"),
            root,
            state: cfg.state_dir.join(&cfg.instance),
        }
    }
}

/// How often a running daemon checks its forward guard and links ([`Dataplane::recheck`]).
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// A running dataplane. Dropping it leaves everything installed (fail closed).
pub struct Dataplane {
    // Keeps the programs loaded until their links are pinned; links outlive it.
    _ebpf: Ebpf,
    maps: maps::Maps,
    cfg: DataplaneConfig,
    paths: Paths,
    _lock: InstanceLock,
    /// The interfaces the maps and links were last made to follow: a recheck that resolves
    /// the same ones has nothing to do (a sync scans every ifindex slot of two maps).
    followed: Option<interfaces::Interfaces>,
}

impl Dataplane {
    /// Installs (or takes over) the dataplane for `set`. The forward guard goes in first,
    /// as soon as the instance is ours, and stays whatever becomes of this start: after a
    /// reboot nothing else protects the targets, and a start that fails (an ingress
    /// interface not there yet, no BPF filesystem) must leave their ports closed, not open
    /// (fail closed; `portcullis down` opens them). Everything else is checked before it is
    /// changed, and if a fresh install fails halfway it is rolled back, the guard excepted.
    pub async fn up(cfg: &DataplaneConfig, set: &TargetSet) -> Result<Self, DataplaneError> {
        let object = object()?;
        preflight::check_kernel()?;
        let paths = Paths::new(cfg);
        let lock = InstanceLock::acquire(&paths.state)?;
        // It protects by interface name whatever happens next.
        forward_guard::install(&cfg.instance, set)?;
        preflight::check_bpffs(&cfg.bpffs)?;
        preflight::resolve_interfaces(set)?;
        let fresh = !paths.root.exists();
        match Self::install(object, cfg, &paths, set, lock).await {
            Ok(dp) => Ok(dp),
            Err(e) => {
                if fresh {
                    tracing::warn!(error = %e, "install failed; removing what was installed but the forward guard");
                    if let Err(undo) = teardown(cfg, &paths, Guard::Keep).await {
                        tracing::error!(error = %undo, "rollback incomplete");
                    }
                }
                Err(e)
            }
        }
    }

    async fn install(
        object: &[u8],
        cfg: &DataplaneConfig,
        paths: &Paths,
        set: &TargetSet,
        lock: InstanceLock,
    ) -> Result<Self, DataplaneError> {
        for dir in [&paths.maps, &paths.links] {
            fs::create_dir_all(dir)
                .map_err(|e| DataplaneError::io(format!("create {}", dir.display()), e))?;
        }
        let mut ebpf = load(object, &paths.maps)?;
        let maps = maps::Maps::take(&mut ebpf)?;
        let mut dp = Self {
            _ebpf: ebpf,
            maps,
            cfg: cfg.clone(),
            paths: paths.clone(),
            _lock: lock,
            followed: None,
        };
        // (The forward guard is in already: see `up`.)
        sysctl::apply(&paths.state)?;
        routing::install(cfg).await?;
        routing::sync_upstream(cfg, set).await?;
        let ifs = interfaces::resolve(set).await?;
        dp.sync_maps(set, &ifs)?;
        links::attach(&mut dp._ebpf, cfg, paths, set, &ifs)?;
        dp.followed = Some(ifs);
        Ok(dp)
    }

    /// Applies a new target set (reload): the forward guard and the maps first, in an order
    /// that never leaves a protected port unprotected, then links for interfaces that came
    /// or went. Interfaces absent now are attached when they appear (see [`monitor`]).
    pub async fn apply(&mut self, set: &TargetSet) -> Result<(), DataplaneError> {
        // Whatever part of this fails, the next recheck syncs again.
        self.followed = None;
        forward_guard::install(&self.cfg.instance, set)?;
        let ifs = interfaces::resolve(set).await?;
        self.sync_maps(set, &ifs)?;
        routing::sync_upstream(&self.cfg, set).await?;
        links::attach(&mut self._ebpf, &self.cfg, &self.paths, set, &ifs)?;
        self.followed = Some(ifs);
        Ok(())
    }

    /// Follows interface churn: re-resolves `set`'s interfaces, rewrites the ifindex-keyed
    /// maps and re-attaches (or replaces severed) links.
    pub async fn refresh_interfaces(&mut self, set: &TargetSet) -> Result<(), DataplaneError> {
        let ifs = interfaces::resolve(set).await?;
        self.follow(set, ifs)
    }

    /// Makes the ifindex-keyed maps and the links follow `ifs`; remembered once done (a
    /// failure leaves nothing remembered, so the next recheck tries again).
    fn follow(&mut self, set: &TargetSet, ifs: interfaces::Interfaces) -> Result<(), DataplaneError> {
        self.followed = None;
        self.maps.sync_interfaces(set, &ifs)?;
        links::attach(&mut self._ebpf, &self.cfg, &self.paths, set, &ifs)?;
        self.followed = Some(ifs);
        Ok(())
    }

    /// What the daemon checks every [`RECHECK`], since nothing tells it reliably when either
    /// goes: the forward guard, which a `flush ruleset` elsewhere removes (put back, `true`),
    /// and the links and interface maps, which miss a re-created interface (a new ifindex)
    /// when the link monitor's events were lost (netlink overrun, a full queue). Only
    /// interfaces that resolve differently from what was last followed cost a sync.
    pub async fn recheck(&mut self, set: &TargetSet) -> Result<bool, DataplaneError> {
        let restored = !forward_guard::present(&self.cfg.instance)?;
        if restored {
            forward_guard::install(&self.cfg.instance, set)?;
        }
        let ifs = interfaces::resolve(set).await?;
        if self.followed.as_ref() != Some(&ifs) {
            self.follow(set, ifs)?;
        }
        Ok(restored)
    }

    fn sync_maps(&mut self, set: &TargetSet, ifs: &interfaces::Interfaces) -> Result<(), DataplaneError> {
        let entries = self.maps.sync(set, ifs)?;
        state::write(&self.paths.state, &entries)
    }

    /// Registers the proxy's listening sockets: from now on steered flows land on them.
    pub fn register_listeners(
        &mut self,
        v4: &impl AsRawFd,
        v6: Option<&impl AsRawFd>,
    ) -> Result<(), DataplaneError> {
        self.maps.set_socket(SOCKET_V4, v4)?;
        if let Some(v6) = v6 {
            self.maps.set_socket(SOCKET_V6, v6)?;
        }
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        self.maps.counters()
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }
}

/// Loads the object, reusing maps already pinned in `maps_dir`.
fn load(object: &[u8], maps_dir: &Path) -> Result<Ebpf, DataplaneError> {
    EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .load(object)
        .map_err(DataplaneError::Load)
}

/// Removes an instance's dataplane: links (detaching the programs), the forward guard,
/// routing rules, maps, sysctls and state. Refuses while a daemon holds the instance. Works
/// without a BPF filesystem too (nothing can be pinned then, but a failed start's forward
/// guard is there to remove).
pub async fn down(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    let paths = Paths::new(cfg);
    let _lock = InstanceLock::acquire(&paths.state)?;
    teardown(cfg, &paths, Guard::Remove).await
}

/// Whether a teardown removes the forward guard.
#[derive(PartialEq)]
enum Guard {
    Keep,
    Remove,
}

async fn teardown(cfg: &DataplaneConfig, paths: &Paths, guard: Guard) -> Result<(), DataplaneError> {
    links::remove_all(paths)?;
    if guard == Guard::Remove {
        forward_guard::remove(&cfg.instance)?;
    }
    routing::remove(cfg).await?;
    sysctl::restore(&paths.state)?;
    if paths.root.exists() {
        fs::remove_dir_all(&paths.root)
            .map_err(|e| DataplaneError::io(format!("remove {}", paths.root.display()), e))?;
    }
    state::remove(&paths.state)?;
    Ok(())
}

/// Reads the counters of an installed instance from its pins (for `portcullis stats`).
pub fn read_stats(cfg: &DataplaneConfig) -> Result<(Counters, Vec<StateEntry>), DataplaneError> {
    preflight::check_bpffs(&cfg.bpffs)?;
    let paths = Paths::new(cfg);
    let entries = state::read(&paths.state)?;
    let counters = maps::counters_from_pin(&paths.maps, entries.iter().map(|e| e.id))?;
    Ok((counters, entries))
}

/// The programs and maps loaded but attached nowhere, with maps pinned in a private
/// directory that is removed on drop: for `BPF_PROG_TEST_RUN` tests and benchmarks.
pub struct Detached {
    ebpf: Ebpf,
    maps: maps::Maps,
    dir: PathBuf,
}

impl Detached {
    /// `dir` must be on a bpffs and must not exist yet.
    pub fn load(dir: &Path) -> Result<Self, DataplaneError> {
        let object = object()?;
        fs::create_dir_all(dir).map_err(|e| DataplaneError::io(format!("create {}", dir.display()), e))?;
        let mut ebpf = load(object, dir)?;
        let maps = maps::Maps::take(&mut ebpf)?;
        let mut me = Self {
            ebpf,
            maps,
            dir: dir.to_owned(),
        };
        links::load_programs(&mut me.ebpf)?;
        Ok(me)
    }

    pub fn apply(&mut self, set: &TargetSet) -> Result<Vec<StateEntry>, DataplaneError> {
        self.maps.sync(set, &interfaces::by_name(set))
    }

    /// Like [`apply`](Self::apply), with the interfaces given (VLAN devices included).
    pub fn apply_with(
        &mut self,
        set: &TargetSet,
        ifs: &interfaces::Interfaces,
    ) -> Result<Vec<StateEntry>, DataplaneError> {
        self.maps.sync(set, ifs)
    }

    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        self.maps.counters()
    }

    /// The `PC_INGRESS_IF` entry of `ifindex` (tests: vnet and flags).
    pub fn ingress_entry(&self, ifindex: u32) -> Result<u32, DataplaneError> {
        self.maps.ingress_entry(ifindex)
    }

    /// The file descriptor of a loaded program, by name (`portcullis_common::program`).
    pub fn program_fd(&self, name: &str) -> Result<std::os::fd::BorrowedFd<'_>, DataplaneError> {
        use std::os::fd::AsFd;
        let p = self
            .ebpf
            .program(name)
            .ok_or_else(|| DataplaneError::Capacity(format!("the BPF object has no program {name}")))?;
        let fd = p
            .fd()
            .map_err(DataplaneError::program(format!("program {name}")))?;
        Ok(fd.as_fd())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
