//! Attaching the programs and pinning their links, so they outlive the daemon.
//!
//! An existing pinned link is updated in place (`bpf_link_update`): the hook never runs
//! without a program, so a restart or upgrade opens no gap.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        LinkOrder, SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode,
    },
    sys::SyscallError,
    Ebpf,
};
use portcullis_common::program;

use super::{interfaces::Interfaces, DataplaneError, Paths};
use crate::{
    config::{DataplaneConfig, XdpModeConfig},
    targets::TargetSet,
};

fn prog<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Capacity(format!("the BPF object has no program {name}")))?;
    p.try_into()
        .map_err(DataplaneError::program(format!("program {name}")))
}

/// Loads every program into the kernel (verifier included) without attaching it.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let x: &mut Xdp = prog(ebpf, program::XDP_CLASSIFY)?;
    if x.fd().is_err() {
        x.load()
            .map_err(DataplaneError::program("load the XDP classifier"))?;
    }
    for name in [program::TC_MARK, program::TC_GUARD] {
        let t: &mut SchedClassifier = prog(ebpf, name)?;
        if t.fd().is_err() {
            t.load()
                .map_err(DataplaneError::program(format!("load {name}")))?;
        }
    }
    let x: &mut Xdp = prog(ebpf, program::XDP_NOOP)?;
    if x.fd().is_err() {
        x.load()
            .map_err(DataplaneError::program("load the no-op XDP program"))?;
    }
    let s: &mut SkLookup = prog(ebpf, program::SK_LOOKUP)?;
    if s.fd().is_err() {
        s.load()
            .map_err(DataplaneError::program("load the sk_lookup program"))?;
    }
    Ok(())
}

fn pinned(path: &Path) -> Result<Option<PinnedLink>, DataplaneError> {
    match PinnedLink::from_pin(path) {
        Ok(l) => Ok(Some(l)),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(DataplaneError::link(format!(
            "open pinned link {}",
            path.display()
        ))(e)),
    }
}

fn pin(link: FdLink, path: &Path) -> Result<(), DataplaneError> {
    link.pin(path)
        .map(drop)
        .map_err(DataplaneError::link(format!("pin link {}", path.display())))
}

/// The ifindex the link pinned at `path` is attached to; 0 once its interface is gone (the
/// kernel severs the link but the pin keeps it alive, detached). aya exposes neither the
/// link's fd nor this field, so this opens the pin itself (`BPF_OBJ_GET`) and asks the
/// kernel (`BPF_OBJ_GET_INFO_BY_FD`).
fn pinned_ifindex(path: &Path) -> io::Result<u32> {
    use std::os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C, align(8))]
    struct GetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C, align(8))]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let get = GetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the attribute points at a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const GetAttr,
            std::mem::size_of::<GetAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; it is ours to close.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // `struct bpf_link_info`: type, id, prog_id, then a union (8-aligned, at 16) whose xdp
    // and tcx members both start with the ifindex.
    let mut info = [0u64; 12];
    let attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[2] as u32)
}

/// A pinned link still attached to the interface now called by its name, or `None` after
/// removing the pin of one that is not (its interface was deleted, perhaps re-created with
/// a new ifindex): updating a severed link fails, and it protects nothing.
fn live_pin(path: &Path, ifindex: u32) -> Result<Option<PinnedLink>, DataplaneError> {
    let attached = match pinned_ifindex(path) {
        Ok(i) => i,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataplaneError::io(format!("inspect link {}", path.display()), e)),
    };
    if attached == ifindex {
        return pinned(path);
    }
    tracing::info!(link = %path.display(), was = attached, now = ifindex, "replacing a link its interface lost");
    unpin(path)?;
    Ok(None)
}

/// Attaches (or updates) every link `set` needs on the interfaces present now (`ifs`) and
/// removes the pins of links it no longer needs (interfaces that left the config or the
/// kernel). Run again whenever interfaces come and go (the link monitor).
pub fn attach(
    ebpf: &mut Ebpf,
    cfg: &DataplaneConfig,
    paths: &Paths,
    set: &TargetSet,
    ifs: &Interfaces,
) -> Result<(), DataplaneError> {
    load_programs(ebpf)?;
    let mut wanted: BTreeSet<PathBuf> = BTreeSet::new();
    let ingress: BTreeSet<&str> = set
        .vnets
        .iter()
        .flat_map(|v| v.ingress.iter().map(|i| i.interface.as_str()))
        .collect();
    let upstream: BTreeSet<&str> = set
        .vnets
        .iter()
        .flat_map(|v| v.upstream.iter().map(String::as_str))
        .collect();

    for iface in &ingress {
        let Some(idx) = ifs.get(iface) else { continue };
        let path = paths.links.join(format!("xdp-{iface}"));
        attach_xdp(ebpf, cfg, iface, idx, &path)?;
        wanted.insert(path);
        let path = paths.links.join(format!("tc-in-{iface}"));
        attach_tc(ebpf, program::TC_MARK, iface, idx, TcAttachType::Ingress, &path)?;
        wanted.insert(path);
    }
    for iface in &upstream {
        let Some(idx) = ifs.get(iface) else { continue };
        let path = paths.links.join(format!("tc-guard-{iface}"));
        attach_tc(ebpf, program::TC_GUARD, iface, idx, TcAttachType::Egress, &path)?;
        wanted.insert(path);
    }
    let path = paths.links.join("sk_lookup");
    attach_sk_lookup(ebpf, &path)?;
    wanted.insert(path);

    let dir = fs::read_dir(&paths.links)
        .map_err(|e| DataplaneError::io(format!("list {}", paths.links.display()), e))?;
    for entry in dir.flatten() {
        if !wanted.contains(&entry.path()) {
            unpin(&entry.path())?;
        }
    }
    Ok(())
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    cfg: &DataplaneConfig,
    iface: &str,
    idx: u32,
    path: &Path,
) -> Result<(), DataplaneError> {
    let p: &mut Xdp = prog(ebpf, program::XDP_CLASSIFY)?;
    if let Some(old) = live_pin(path, idx)? {
        let link = FdLink::from(old)
            .try_into()
            .map_err(DataplaneError::link(format!("reuse XDP link {}", path.display())))?;
        let id = p
            .attach_to_link(link)
            .map_err(DataplaneError::program(format!("update XDP program on {iface}")))?;
        // The program would keep this descriptor until it is unloaded: one more per reload.
        // The pin holds the link; closing ours leaves it attached.
        let fd: FdLink = p
            .take_link(id)
            .map_err(DataplaneError::program("take XDP link"))?
            .try_into()
            .map_err(DataplaneError::link(format!("XDP link {}", path.display())))?;
        drop(fd);
        return Ok(());
    }
    let id = match cfg.xdp_mode {
        XdpModeConfig::Skb => p
            .attach_to_if_index(idx, XdpMode::Skb)
            .map_err(DataplaneError::program(format!(
                "attach XDP (skb mode) to {iface}"
            )))?,
        XdpModeConfig::Native => {
            p.attach_to_if_index(idx, XdpMode::Driver)
                .map_err(|source| DataplaneError::XdpNative {
                    interface: iface.into(),
                    source,
                })?
        }
        XdpModeConfig::Auto => match p.attach_to_if_index(idx, XdpMode::Driver) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(interface = iface, error = %e, "native XDP unavailable; using generic (skb) mode");
                p.attach_to_if_index(idx, XdpMode::Skb)
                    .map_err(DataplaneError::program(format!(
                        "attach XDP (skb mode) to {iface}"
                    )))?
            }
        },
    };
    let link = p
        .take_link(id)
        .map_err(DataplaneError::program("take XDP link"))?;
    let fd: FdLink = link.try_into().map_err(DataplaneError::link(format!(
        "XDP on {iface} is not a BPF link (kernel too old to pin it)"
    )))?;
    pin(fd, path)
}

fn attach_tc(
    ebpf: &mut Ebpf,
    name: &str,
    iface: &str,
    idx: u32,
    kind: TcAttachType,
    path: &Path,
) -> Result<(), DataplaneError> {
    let p: &mut SchedClassifier = prog(ebpf, name)?;
    if let Some(old) = live_pin(path, idx)? {
        let link = FdLink::from(old)
            .try_into()
            .map_err(DataplaneError::link(format!("reuse TC link {}", path.display())))?;
        let id = p
            .attach_to_link(link)
            .map_err(DataplaneError::program(format!("update {name} on {iface}")))?;
        // As for XDP: the pin holds the link, the program need not hold a descriptor too.
        let fd: FdLink = p
            .take_link(id)
            .map_err(DataplaneError::program("take TC link"))?
            .try_into()
            .map_err(DataplaneError::link(format!("TC link {}", path.display())))?;
        drop(fd);
        return Ok(());
    }
    let id = p
        .attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(DataplaneError::program(format!(
            "attach {name} to {iface} (TCX needs Linux ≥ 6.6)"
        )))?;
    let link = p.take_link(id).map_err(DataplaneError::program("take TC link"))?;
    let fd: FdLink = link
        .try_into()
        .map_err(DataplaneError::link(format!("TC link on {iface}")))?;
    pin(fd, path)
}

fn attach_sk_lookup(ebpf: &mut Ebpf, path: &Path) -> Result<(), DataplaneError> {
    let p: &mut SkLookup = prog(ebpf, program::SK_LOOKUP)?;
    let netns =
        File::open("/proc/self/ns/net").map_err(|e| DataplaneError::io("open /proc/self/ns/net", e))?;
    // sk_lookup links cannot be updated in place; several programs may share a netns, so the
    // new one is attached before the old one is detached.
    let old = pinned(path)?;
    let id = p.attach(&netns).map_err(DataplaneError::program(
        "attach sk_lookup to this network namespace",
    ))?;
    let link = p
        .take_link(id)
        .map_err(DataplaneError::program("take sk_lookup link"))?;
    let fd: FdLink = link.into();
    if let Some(old) = old {
        let old = old
            .unpin()
            .map_err(|e| DataplaneError::io(format!("unpin {}", path.display()), e))?;
        drop(old);
    }
    pin(fd, path)
}

fn unpin(path: &Path) -> Result<(), DataplaneError> {
    match pinned(path)? {
        Some(link) => {
            let fd = link
                .unpin()
                .map_err(|e| DataplaneError::io(format!("unpin {}", path.display()), e))?;
            drop(fd); // last reference: the program is detached
            Ok(())
        }
        None => Ok(()),
    }
}

/// Detaches everything: unpinning drops the last reference to each link.
pub fn remove_all(paths: &Paths) -> Result<(), DataplaneError> {
    let Ok(dir) = fs::read_dir(&paths.links) else {
        return Ok(());
    };
    for entry in dir.flatten() {
        unpin(&entry.path())?;
    }
    Ok(())
}
