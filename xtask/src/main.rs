//! `cargo xtask`: the project's one entry point for setup, builds, tests, benchmarks and the
//! demo. Every verb runs `setup` first, so a fresh machine needs nothing but this checkout.

mod bench;
mod build;
mod demo;
mod dist;
mod fuzz;
mod setup;
mod util;

use std::path::Path;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks (Debian packages, nightly rust-src, bpf-linker,
    /// cargo-fuzz, bpffs).
    Setup,
    /// Build the eBPF object and the userspace binaries.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Everything CI checks: fmt, clippy, unit, packet and network-namespace tests (as root).
    /// Then the Debian package of the debug build, installed into an empty root, and every
    /// fuzz target for a few seconds (neither when a filter is given).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Fuzz one target (listed in fuzz/README.md and xtask/src/fuzz.rs) or all, in turn.
    Fuzz {
        /// The target (default: all).
        name: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        time: u64,
        /// `address` or `none` (faster, for the safe-Rust parsers).
        #[arg(long, default_value = "address")]
        sanitizer: String,
        /// The unoptimized build `cargo xtask test` runs (`--dev --time 5` is its share).
        #[arg(long)]
        dev: bool,
    },
    /// Bring up the demo topology and show flows being steered; cleans up after itself.
    Demo,
    /// The long soak (as root): sessions with traffic and recording while the daemon is
    /// reloaded every second and killed and restarted `--kills` times; then every recording,
    /// the targets' logs and the daemon's footprint across reloads are checked.
    Soak {
        #[arg(long, default_value_t = 20)]
        kills: u32,
    },
    /// The Debian package: target/dist/portcullis_<version>_<arch>.deb (release build, man
    /// pages, completions, systemd unit, example configuration); lintian's verdict if installed.
    Dist {
        /// Package this binary instead of building the release one.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// Only the check `cargo xtask test` runs: package the debug binary, install it into
        /// an empty root, run it, remove and purge it.
        #[arg(long, conflicts_with = "binary")]
        check: bool,
    },
    /// Benchmarks; writes target/bench/report.{json,md}.
    Bench {
        /// Groups to run (default: all). Known: xdp, policy, ssh, crypto, engine.
        groups: Vec<String>,
        /// Fewer repetitions, for a quick look.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = util::workspace_root();
    std::env::set_current_dir(&root)?;
    setup::run()?;
    match cli.command {
        Command::Setup => Ok(()),
        Command::Build { release } => build::all(release),
        Command::Test { args } => test(&args),
        Command::Fuzz {
            name,
            time,
            sanitizer,
            dev,
        } => fuzz::run_targets(
            name.as_deref(),
            time,
            &fuzz::Build {
                dev,
                sanitizer: &sanitizer,
            },
        ),
        Command::Demo => demo::run(),
        Command::Soak { kills } => soak(kills),
        Command::Dist { check: true, .. } => dist::check(),
        Command::Dist { binary, .. } => dist::run(binary),
        Command::Bench { groups, quick } => bench::run(&groups, quick),
    }
}

/// `cargo xtask test` runs the same soak with 3 kills.
fn soak(kills: u32) -> Result<()> {
    build::ebpf()?;
    std::env::set_var("PORTCULLIS_SOAK_KILLS", kills.to_string());
    util::cargo(&[
        "test",
        "-p",
        "portcullis",
        "--test",
        "proxy_netns",
        "soak",
        "--",
        "--nocapture",
    ])
}

fn test(args: &[String]) -> Result<()> {
    build::ebpf()?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    if !util::is_root() {
        eprintln!("xtask: not root: the privileged tests (eBPF, network namespaces) will skip");
    }
    // The fuzz targets build beside the tests, on the CPU they leave idle (`fuzz`).
    let log = Path::new("target/fuzz-quick-build.log");
    let mut fuzz_build = match args.is_empty() {
        true => Some(fuzz::spawn_quick_build(log)?),
        false => None,
    };
    let mut a = vec!["test"];
    a.extend(args.iter().map(String::as_str));
    let tested = util::cargo(&a);
    if let Some(b) = fuzz_build.as_mut() {
        if tested.is_err() {
            let _ = b.kill();
        }
        let status = b.wait()?;
        tested?;
        if !status.success() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!("building the fuzz targets failed: {status}\n{}", tail.join("\n"));
        }
        dist::check()?;
        return fuzz::quick();
    }
    tested
}
