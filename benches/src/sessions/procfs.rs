//! What the figures read about a process: /proc/<pid>/status fields and open descriptors,
//! and this process's descriptor limit.

use anyhow::{bail, Context, Result};

/// A `/proc/<pid>/status` field's number (`VmRSS` is in KiB, `Threads` a count).
pub fn status(pid: u32, field: &str) -> Result<u64> {
    portcullis_testbed::procfs::status_field(pid, field)
        .with_context(|| format!("no number for {field} in /proc/{pid}/status"))
}

/// The soft descriptor limit of a process (what its `accept` and `connect` run into).
pub fn nofile(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

pub use portcullis_testbed::procfs::open_fds;

/// Raises this process's descriptor limit: soft to hard, and the hard one too where
/// allowed (CAP_SYS_RESOURCE; a container may withhold it). Children inherit it (the daemon
/// raises its soft limit to the hard one anyway). Returns the limit now in force.
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    for want in [WANT_NOFILE.max(lim.rlim_max), lim.rlim_max] {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(want);
        }
    }
    bail!("setrlimit: {}", std::io::Error::last_os_error())
}

/// Enough for 10 000 sessions in any one process with room to spare (the daemon needs two
/// descriptors per session, three with recording).
const WANT_NOFILE: u64 = 1 << 16;
