//! Benchmark drivers. `portcullis-bench GROUP [--quick]` prints one flat JSON object
//! (metric name → number); `cargo xtask bench` merges the groups into target/bench/.

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
        other => bail!("unknown benchmark group {other:?}; known: xdp, ssh"),
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
