//! Benchmark drivers. `portcullis-bench GROUP [--quick]` prints one flat JSON object
//! (metric name → number); `cargo xtask bench` merges the groups into target/bench/.

mod sessions;
mod ssh;
mod xdp;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let metrics = match args.first().map(String::as_str) {
        Some("xdp") => xdp::run(quick)?,
        Some("ssh") => {
            // The release portcullis binary next to this one.
            let bin = std::env::current_exe()?.with_file_name("portcullis");
            ssh::run_group(quick, &bin)?
        }
        // The sessions group's lightweight SSH target, a process of its own.
        Some("sessions-target") => return sessions::target::main(&args[1..]),
        Some("sessions") => {
            let bin = std::env::current_exe()?.with_file_name("portcullis");
            sessions::run_group(quick, &bin)?
        }
        other => bail!("unknown benchmark group {other:?}; known: xdp, ssh, sessions"),
    };
    println!("{}", serde_json::Value::Object(metrics));
    Ok(())
}

/// The median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU seconds of a process (`self_`) or of its reaped children.
pub fn cpu_secs(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the command: state is index 0, utime 11, stime 12, cutime 13, cstime 14.
    let f = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    if children {
        (f(13) + f(14)) / ticks
    } else {
        (f(11) + f(12)) / ticks
    }
}
