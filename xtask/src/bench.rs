//! `cargo xtask bench`: runs benchmark groups (release builds), merges their metrics into
//! target/bench/report.json (flat: metric → number) and writes report.md with each metric's
//! same-run baseline and the ratio against it.

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::{build, util};

const GROUPS: &[&str] = &["xdp"];

/// (metric, baseline metric, target ratio or 0 for none, what the target means).
const BASELINES: &[(&str, &str, f64)] = &[
    ("xdp.hit_ns", "xdp.noop_ns", 2.0),
    ("xdp.miss_ns", "xdp.noop_ns", 1.5),
    ("xdp.hit_ns.v4", "xdp.noop_ns.v4", 2.0),
    ("xdp.miss_ns.v4", "xdp.noop_ns.v4", 1.5),
    ("xdp.hit_ns.v6", "xdp.noop_ns.v6", 2.0),
    ("xdp.miss_ns.v6", "xdp.noop_ns.v6", 1.5),
];

pub fn run(groups: &[String], quick: bool) -> Result<()> {
    let groups: Vec<&str> = if groups.is_empty() {
        GROUPS.to_vec()
    } else {
        groups.iter().map(String::as_str).collect()
    };
    for g in &groups {
        if !GROUPS.contains(g) {
            bail!("unknown benchmark group {g:?}; known: {}", GROUPS.join(", "));
        }
    }
    build::ebpf()?;
    util::cargo(&["build", "--release", "-p", "portcullis-bench"])?;
    fs::create_dir_all("target/bench")?;
    let path = "target/bench/report.json";
    // Keep other groups' figures from earlier runs; this run's groups replace theirs.
    let mut report: BTreeMap<String, Value> = fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    for g in &groups {
        eprintln!("xtask bench: {g}");
        let mut cmd = Command::new("target/release/portcullis-bench");
        cmd.arg(g);
        if quick {
            cmd.arg("--quick");
        }
        let out = util::output(&mut cmd)?;
        let metrics: Map<String, Value> =
            serde_json::from_str(&out).with_context(|| format!("group {g} printed {out:?}"))?;
        report.retain(|k, _| !k.starts_with(&format!("{g}.")));
        report.extend(metrics);
    }
    let json: Map<String, Value> = report.clone().into_iter().collect();
    fs::write(path, serde_json::to_string_pretty(&Value::Object(json))? + "\n")?;
    let md = markdown(&report, quick);
    fs::write("target/bench/report.md", &md)?;
    print!("{md}");
    Ok(())
}

fn markdown(report: &BTreeMap<String, Value>, quick: bool) -> String {
    let mut s = String::from("# portcullis benchmarks\n\n");
    if quick {
        s.push_str("_Quick run: fewer repetitions._\n\n");
    }
    s.push_str(
        "| metric | value | baseline | baseline value | ratio | target |\n|---|---:|---|---:|---:|---|\n",
    );
    for (k, v) in report {
        let v = v.as_f64().unwrap_or(f64::NAN);
        match BASELINES.iter().find(|(m, _, _)| m == k) {
            Some((_, b, target)) => {
                let bv = report.get(*b).and_then(Value::as_f64).unwrap_or(f64::NAN);
                let ratio = v / bv;
                let verdict = if ratio <= *target { "met" } else { "MISSED" };
                s.push_str(&format!(
                    "| {k} | {v:.1} | {b} | {bv:.1} | {ratio:.2} | ≤ {target} ({verdict}) |\n"
                ));
            }
            None => s.push_str(&format!("| {k} | {v:.1} | | | | |\n")),
        }
    }
    s
}
