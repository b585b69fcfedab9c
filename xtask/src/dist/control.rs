//! The package's metadata: `DEBIAN/control`, the copyright file and the Debian changelog.

use std::{collections::BTreeSet, process::Command};

use anyhow::{Context, Result};

use crate::util;

/// Who answers for the package: `DEBFULLNAME` and `DEBEMAIL` (as for `dch`), or this.
const MAINTAINER: (&str, &str) = ("portcullis maintainers", "portcullis@example.org");

pub struct Package<'a> {
    pub version: &'a str,
    pub arch: &'a str,
    pub depends: String,
    pub installed_kib: u64,
}

impl Package<'_> {
    pub fn control(&self) -> String {
        format!(
            "Package: portcullis\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: {maintainer}\n\
             Installed-Size: {size}\n\
             Depends: {depends}\n\
             Section: net\n\
             Priority: optional\n\
             Description: transparent SSH interception gateway\n \
             portcullis steers SSH connections bound for protected servers into a proxy\n \
             with an eBPF dataplane (XDP, TC, sk_lookup), decides by policy who may log\n \
             in as which user, logs in upstream with a short-lived certificate and seals\n \
             a replayable record of each session to the operator's public key.\n \
             .\n \
             Client devices need no SSH configuration; their identity comes from the\n \
             address they connect from. Protected ports stay closed while the daemon\n \
             restarts or is stopped.\n",
            version = self.version,
            arch = self.arch,
            maintainer = maintainer(),
            size = self.installed_kib,
            depends = self.depends,
        )
    }
}

fn maintainer() -> String {
    let name = std::env::var("DEBFULLNAME").unwrap_or_else(|_| MAINTAINER.0.into());
    let email = std::env::var("DEBEMAIL").unwrap_or_else(|_| MAINTAINER.1.into());
    format!("{name} <{email}>")
}

/// The date of the commit being packaged (RFC 2822, as Debian changelogs write it), so the
/// same commit gives the same changelog; now, outside a git checkout.
fn date() -> Result<String> {
    util::output(Command::new("git").args(["log", "-1", "--format=%cD"]))
        .or_else(|_| util::output(Command::new("date").arg("-R")))
}

pub fn changelog(version: &str) -> Result<String> {
    let commit = util::output(Command::new("git").args(["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|_| "an unknown commit".into());
    Ok(format!(
        "portcullis ({version}) unstable; urgency=medium\n\n  \
         * Built by `cargo xtask dist` from {commit}.\n\n \
         -- {}  {}\n",
        maintainer(),
        date()?
    ))
}

/// DEP-5 copyright: portcullis's own licence, and the licence of every crate linked into the
/// binary (it is one static executable), from `cargo metadata`.
pub fn copyright() -> Result<String> {
    let year = date()?
        .split_whitespace()
        .nth(3)
        .context("a date without a year")?
        .to_string();
    let mut crates = String::new();
    for (name, version, license) in linked_crates()? {
        crates.push_str(&format!(" {name} {version}: {license}\n"));
    }
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: portcullis\n\
         Comment: The binary links these Rust crates statically, each under the licence\n \
         named (SPDX expression, from its Cargo manifest):\n\
         {crates}\n\
         Files: *\n\
         Copyright: {year} portcullis maintainers\n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License, Version 2.0, is in\n \
         /usr/share/common-licenses/Apache-2.0.\n"
    ))
}

/// (name, version, licence) of each crate the daemon depends on at run time (not build or
/// dev dependencies), its own workspace crates left out.
fn linked_crates() -> Result<BTreeSet<(String, String, String)>> {
    let host = util::output(Command::new("rustc").args(["--print", "host-tuple"]))?;
    let json = util::output(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            &host,
        ]),
    )?;
    let m: serde_json::Value = serde_json::from_str(&json)?;
    let packages = m["packages"].as_array().context("cargo metadata: no packages")?;
    let nodes = m["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve")?;
    let root = packages
        .iter()
        .find(|p| p["name"] == "portcullis")
        .and_then(|p| p["id"].as_str())
        .context("cargo metadata: no portcullis package")?;
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_string()];
    while let Some(id) = todo.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let node = nodes
            .iter()
            .find(|n| n["id"] == id.as_str())
            .context("cargo metadata: a missing node")?;
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal {
                todo.push(dep["pkg"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    Ok(packages
        .iter()
        .filter(|p| seen.contains(p["id"].as_str().unwrap_or_default()) && !p["source"].is_null())
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("unknown").to_string();
            (s("name"), s("version"), s("license"))
        })
        .collect())
}
