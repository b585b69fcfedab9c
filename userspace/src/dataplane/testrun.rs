//! `BPF_PROG_TEST_RUN`: runs a loaded program on a packet in the kernel, without a network.
//! Used by the packet tests (verdicts of crafted, random and truncated packets) and by the
//! `xdp` benchmarks (ns per packet over millions of repeats).

use std::{io, os::fd::AsRawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct __sk_buff` (192 bytes): the fields a test sets or reads, the rest zero. The
/// kernel wants the whole struct back out (`ENOSPC` otherwise).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SkBuffCtx {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub rest: [u32; 31],
}

const _: () = assert!(std::mem::size_of::<SkBuffCtx>() == 192);

#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    pub retval: u32,
    /// Average ns per run as measured by the kernel.
    pub duration_ns: u32,
}

fn run(attr: &mut TestAttr) -> io::Result<()> {
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs an XDP program `repeat` times on `packet` (ingress is the loopback device).
pub fn xdp(prog: &impl AsRawFd, packet: &[u8], repeat: u32) -> io::Result<RunResult> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    run(&mut attr)?;
    Ok(RunResult {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

/// Runs a TC program once on `packet` with the given context; returns the verdict and the
/// context after the run (its `mark`).
pub fn tc(prog: &impl AsRawFd, packet: &[u8], ctx: SkBuffCtx) -> io::Result<(RunResult, SkBuffCtx)> {
    let mut out = vec![0u8; packet.len() + 256];
    let ctx_in = ctx;
    let mut ctx_out = SkBuffCtx::default();
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of::<SkBuffCtx>() as u32,
        ctx_size_out: std::mem::size_of::<SkBuffCtx>() as u32,
        ctx_in: &ctx_in as *const SkBuffCtx as u64,
        ctx_out: &mut ctx_out as *mut SkBuffCtx as u64,
        ..Default::default()
    };
    run(&mut attr)?;
    Ok((
        RunResult {
            retval: attr.retval,
            duration_ns: attr.duration,
        },
        ctx_out,
    ))
}
