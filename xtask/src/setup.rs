//! Idempotent machine setup, sub-second when nothing is missing (TOOLCHAIN.md).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::util::{is_root, output, run as exec};

/// A file the project needs (a command, a header) and the Debian package that provides it.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/bpftool", "bpftool"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/ssh", "openssh-client"),
    ("/usr/bin/rsync", "rsync"),
    ("/usr/bin/iperf3", "iperf3"),
    ("/usr/sbin/nft", "nftables"),
    ("/usr/bin/nsenter", "util-linux"),
    ("/usr/bin/tmux", "tmux"),
    // sshd offers X11 forwarding only with xauth installed.
    ("/usr/bin/xauth", "xauth"),
    // Other SSH clients than OpenSSH's, for the interoperability tests.
    ("/usr/bin/plink", "putty-tools"),
    ("/usr/bin/dbclient", "dropbear-bin"),
    // The unit's checks (`systemd-analyze verify`, `security --offline`).
    ("/usr/bin/systemd-analyze", "systemd"),
    // The package's library dependencies (`cargo xtask dist`) and the stripping of its binary.
    ("/usr/bin/dpkg-shlibdeps", "dpkg-dev"),
    ("/usr/bin/strip", "binutils"),
    // The engine's ChaCha20-Poly1305 links the system's libcrypto (openssl-sys finds it with
    // pkg-config).
    ("/usr/include/openssl/evp.h", "libssl-dev"),
    ("/usr/bin/pkg-config", "pkgconf"),
];

const BPF_LINKER: &str = "0.13.0";
const CARGO_FUZZ: &str = "0.13.2";
pub const TOOLS_DIR: &str = "target/tools";

pub fn run() -> Result<()> {
    apt_packages()?;
    let nightly = nightly_version()?;
    rust_src()?;
    bpf_linker(&nightly)?;
    cargo_fuzz()?;
    bpffs()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(p, _)| !Path::new(p).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `cargo xtask setup` as root (or apt-get install them)"
        );
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_version() -> Result<String> {
    match output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        Ok(v) => Ok(v),
        Err(_) => {
            eprintln!("xtask setup: installing the nightly toolchain");
            exec(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"]))
        }
    }
}

fn nightly_sysroot() -> Result<PathBuf> {
    Ok(output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?.into())
}

fn rust_src() -> Result<()> {
    if nightly_sysroot()?
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to nightly");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must link against the nightly rustc's own LLVM; rebuilt when nightly changes.
fn bpf_linker(nightly: &str) -> Result<()> {
    let dir = Path::new(TOOLS_DIR);
    let stamp = dir.join("bpf-linker.stamp");
    let want = format!("bpf-linker {BPF_LINKER} for {nightly}");
    if dir.join("bin/bpf-linker").exists()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str())
    {
        return Ok(());
    }
    eprintln!(
        "xtask setup: building bpf-linker {BPF_LINKER} against {nightly}'s LLVM (about two minutes, once)"
    );
    let lib = nightly_sysroot()?.join("lib");
    let llvm = fs::read_dir(&lib)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let prefix = fs::canonicalize(dir)
        .or_else(|_| fs::create_dir_all(dir).and_then(|_| fs::canonicalize(dir)))?
        .join("rust-llvm");
    let llvm_lib = prefix.join("lib");
    fs::create_dir_all(&llvm_lib)?;
    for e in fs::read_dir(&lib)?.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("libLLVM") {
            let _ = fs::remove_file(llvm_lib.join(&name));
            symlink(e.path(), llvm_lib.join(&name))?;
        }
    }
    let _ = fs::remove_file(llvm_lib.join("libLLVM.so"));
    symlink(&llvm, llvm_lib.join("libLLVM.so"))?;
    let root = fs::canonicalize(dir)?;
    exec(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
            ])
            .arg(&root)
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTC")
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    fs::write(&stamp, want)?;
    Ok(())
}

/// cargo-fuzz (the fuzz targets' runner, `cargo xtask fuzz`), from crates.io into the
/// tools dir: about a minute and a half, once.
fn cargo_fuzz() -> Result<()> {
    let dir = Path::new(TOOLS_DIR);
    let stamp = dir.join("cargo-fuzz.stamp");
    let want = format!("cargo-fuzz {CARGO_FUZZ}");
    if dir.join("bin/cargo-fuzz").exists()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str())
    {
        return Ok(());
    }
    eprintln!("xtask setup: building cargo-fuzz {CARGO_FUZZ} (about a minute and a half, once)");
    fs::create_dir_all(dir)?;
    let root = fs::canonicalize(dir)?;
    exec(
        Command::new("cargo")
            .args([
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ}"),
                "--locked",
                "--root",
            ])
            .arg(&root)
            .env_remove("RUSTC")
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    fs::write(&stamp, want)?;
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn bpffs() -> Result<()> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::statfs(c"/sys/fs/bpf".as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC;
    if ok || !is_root() {
        return Ok(());
    }
    eprintln!("xtask setup: mounting bpffs at /sys/fs/bpf");
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
