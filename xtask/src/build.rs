//! The one place the BPF object is built (userspace's build.rs only embeds it).

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{setup::TOOLS_DIR, util::run};

/// Builds `ebpf/programs` with nightly for bpfel into target/bpf.
pub fn ebpf() -> Result<()> {
    let tools_bin = std::fs::canonicalize(Path::new(TOOLS_DIR).join("bin"))?;
    let path = format!(
        "{}:{}",
        tools_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--quiet",
            "-p",
            "portcullis-ebpf",
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ])
        .env("CARGO_TARGET_DIR", "target/bpf")
        // `allows-misaligned-mem-access`: packet fields sit at any offset, and without it LLVM
        // splits every multi-byte read into single bytes (the IPv6 destination alone was 16
        // loads and 30 shifts). The kernel allows unaligned packet reads where the CPU does;
        // stack accesses stay aligned (the verifier insists, and the tests load every program).
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Ctarget-feature=+allows-misaligned-mem-access",
        )
        .env("PATH", path)
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO"))
}

pub fn all(release: bool) -> Result<()> {
    ebpf()?;
    let mut args = vec!["build"];
    if release {
        args.push("--release");
    }
    crate::util::cargo(&args)
}
