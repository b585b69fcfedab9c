//! `cargo xtask bench`: runs benchmark groups (release builds), merges their metrics into
//! target/bench/report.json (flat: metric → number) and writes report.md with each metric's
//! same-run baseline and the ratio against it.

use std::{collections::BTreeMap, fs, process::Command};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::{build, util};

const GROUPS: &[&str] = &["xdp", "policy"];

/// What a metric is held to.
enum Target {
    /// At most this ratio to a baseline metric measured in the same run.
    Ratio(&'static str, f64),
    /// At most this value.
    Max(f64),
}

const TARGETS: &[(&str, Target)] = &[
    ("xdp.hit_ns", Target::Ratio("xdp.noop_ns", 2.0)),
    ("xdp.miss_ns", Target::Ratio("xdp.noop_ns", 1.5)),
    ("xdp.hit_ns.v4", Target::Ratio("xdp.noop_ns.v4", 2.0)),
    ("xdp.miss_ns.v4", Target::Ratio("xdp.noop_ns.v4", 1.5)),
    ("xdp.hit_ns.v6", Target::Ratio("xdp.noop_ns.v6", 2.0)),
    ("xdp.miss_ns.v6", Target::Ratio("xdp.noop_ns.v6", 1.5)),
    ("policy.eval_ns", Target::Ratio("policy.eval_ns.small", 2.0)),
    ("policy.eval_ns.max", Target::Max(2000.0)),
    ("policy.config_load_ms", Target::Max(2000.0)),
];

/// Runs a criterion bench of the benches crate and returns each benchmark's median (ns).
fn criterion(bench: &str, ids: &[&str], quick: bool) -> Result<Map<String, Value>> {
    let mut args = vec![
        "bench",
        "-p",
        "portcullis-bench",
        "--bench",
        bench,
        "--",
        "--noplot",
    ];
    if quick {
        args.extend(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    util::cargo(&args)?;
    let mut out = Map::new();
    for id in ids {
        let path = format!("target/criterion/{id}/new/estimates.json");
        let v: Value = serde_json::from_slice(&fs::read(&path).with_context(|| format!("read {path}"))?)?;
        let median = v["median"]["point_estimate"]
            .as_f64()
            .with_context(|| format!("{path}: no median"))?;
        out.insert(id.to_string(), median.into());
    }
    Ok(out)
}

/// The `policy` group: criterion medians renamed to the report's metric names.
fn policy(quick: bool) -> Result<Map<String, Value>> {
    let m = criterion(
        "policy",
        &[
            "policy_eval_small",
            "policy_eval_large",
            "config/load_100k_targets",
        ],
        quick,
    )?;
    let get = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    let mut out = Map::new();
    out.insert("policy.eval_ns".into(), get("policy_eval_large").into());
    out.insert("policy.eval_ns.max".into(), get("policy_eval_large").into());
    out.insert("policy.eval_ns.small".into(), get("policy_eval_small").into());
    out.insert(
        "policy.config_load_ms".into(),
        (get("config/load_100k_targets") / 1e6).into(),
    );
    Ok(out)
}

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
    if groups.contains(&"xdp") {
        build::ebpf()?;
        util::cargo(&["build", "--release", "-p", "portcullis-bench"])?;
    }
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
        let metrics = match *g {
            "policy" => policy(quick)?,
            _ => {
                let mut cmd = Command::new("target/release/portcullis-bench");
                cmd.arg(g);
                if quick {
                    cmd.arg("--quick");
                }
                let out = util::output(&mut cmd)?;
                serde_json::from_str(&out).with_context(|| format!("group {g} printed {out:?}"))?
            }
        };
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
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for (k, v) in report {
        let v = v.as_f64().unwrap_or(f64::NAN);
        match TARGETS.iter().find(|(m, _)| m == k).map(|(_, t)| t) {
            Some(Target::Ratio(b, max)) => {
                let bv = report.get(*b).and_then(Value::as_f64).unwrap_or(f64::NAN);
                let ratio = v / bv;
                let ok = verdict(ratio <= *max);
                s.push_str(&format!(
                    "| {k} | {v:.1} | {b} | {bv:.1} | {ratio:.2} | ≤ {max} ({ok}) |\n"
                ));
            }
            Some(Target::Max(max)) => {
                s.push_str(&format!(
                    "| {k} | {v:.1} | | | | ≤ {max} ({}) |\n",
                    verdict(v <= *max)
                ));
            }
            None => s.push_str(&format!("| {k} | {v:.1} | | | | |\n")),
        }
    }
    s
}
