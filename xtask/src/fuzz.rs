//! Fuzzing with cargo-fuzz (libFuzzer, nightly) in `fuzz/`, its own workspace and target dir.
//!
//! Each target reads its checked-in seeds (`fuzz/seeds/NAME`, read only) and grows its own
//! corpus (`fuzz/corpus/NAME`, not checked in); a crash leaves its input under
//! `fuzz/artifacts/NAME/` and fails the verb.
//!
//! Two builds, each built only when used: `cargo xtask test` runs every target for
//! `QUICK_SECONDS`, from its seeds, with an unoptimized build (debug assertions and overflow
//! checks on), which costs less than half the CPU of an optimized one to build cold;
//! `cargo xtask fuzz` runs an optimized build for long campaigns.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{anyhow, bail, Result};

use crate::{setup::TOOLS_DIR, util::run};

/// The targets, and the longest input each is given (a recording log's header alone is
/// 4100 bytes).
pub const TARGETS: &[(&str, usize)] = &[
    ("config", 4096),
    ("recording", 8192),
    ("sftp", 4096),
    ("target_keys", 4096),
    ("classify", 2048),
    ("ssh_packet", 8192),
    ("ssh_transport", 8192),
    ("ssh_auth", 4096),
    ("ssh_connection", 8192),
    ("terminal", 4096),
];

/// Seconds per target in `cargo xtask test`.
pub const QUICK_SECONDS: u64 = 5;
/// Seconds per target in `cargo xtask fuzz` without `--time`.
pub const DEFAULT_SECONDS: u64 = 60;

/// How the targets are built.
pub struct Build<'a> {
    /// Unoptimized, with debug assertions.
    pub dev: bool,
    /// cargo-fuzz's `--sanitizer`: `address` (default; the classifier reads packets through
    /// raw pointers) or `none` (about twice the executions per second on the safe-Rust
    /// parsers), built in its own target dir so that switching does not rebuild.
    pub sanitizer: &'a str,
}

fn cargo_fuzz(verb: &str, b: &Build, args: &[&str]) -> Command {
    let mut c = Command::new(Path::new(TOOLS_DIR).join("bin/cargo-fuzz"));
    c.args(["fuzz", verb, "--fuzz-dir", "fuzz", "--sanitizer", b.sanitizer]);
    if b.dev {
        c.arg("--dev");
    }
    if b.sanitizer != "address" {
        c.arg("--target-dir").arg(format!("fuzz/target/{}", b.sanitizer));
    }
    c.args(args)
        .env("RUSTUP_TOOLCHAIN", "nightly")
        // The fuzz targets do not load the BPF object: do not rebuild them when it changes.
        .env("PORTCULLIS_BPF_OBJECT", "/dev/null")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR");
    c
}

/// Runs `name` (every target if `None`) for `seconds` each.
pub fn run_targets(name: Option<&str>, seconds: u64, b: &Build) -> Result<()> {
    let targets: Vec<(&str, usize)> = match name {
        None => TARGETS.to_vec(),
        Some(n) => match TARGETS.iter().find(|(t, _)| *t == n) {
            Some(t) => vec![*t],
            None => bail!(
                "no fuzz target {n:?}; known: {}",
                TARGETS.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
            ),
        },
    };
    let t = Instant::now();
    run(&mut cargo_fuzz("build", b, &[]))?;
    eprintln!("xtask fuzz: targets built in {:.0} s", t.elapsed().as_secs_f64());
    for (target, max_len) in targets {
        // The quick runs start from the seeds alone, so that their time stays bounded however
        // large the long runs' corpus grows.
        let corpus = if b.dev {
            let c = format!("fuzz/target/quick-corpus/{target}");
            let _ = std::fs::remove_dir_all(&c);
            c
        } else {
            format!("fuzz/corpus/{target}")
        };
        std::fs::create_dir_all(&corpus)?;
        let seeds = format!("fuzz/seeds/{target}");
        eprintln!("xtask fuzz: {target} for {seconds} s");
        run(&mut cargo_fuzz(
            "run",
            b,
            &[
                target,
                &corpus,
                &seeds,
                "--",
                &format!("-max_total_time={seconds}"),
                &format!("-max_len={max_len}"),
                "-timeout=10",
                "-print_funcs=0",
                "-print_final_stats=1",
            ],
        ))
        .map_err(|e| anyhow!("fuzz target {target}: {e} (its input is under fuzz/artifacts/{target}/)"))?;
    }
    Ok(())
}

const QUICK: Build<'static> = Build {
    dev: true,
    sanitizer: "address",
};

/// The quick build started in the background at the lowest CPU priority, its output to
/// `log`: `cargo xtask test` builds the fuzz targets (two minutes of CPU cold) on what the
/// tests leave idle — many of them mostly wait on timers and sockets — instead of after them.
/// At nice 19 it takes almost nothing from a test that needs the CPU.
pub fn spawn_quick_build(log: &Path) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::File::create(log)?;
    let mut c = cargo_fuzz("build", &QUICK, &[]);
    c.stdout(out.try_clone()?).stderr(out);
    // SAFETY: setpriority is async-signal-safe and touches only the child being started.
    unsafe {
        c.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            Ok(())
        });
    }
    Ok(c.spawn()?)
}

/// `cargo xtask test`'s share: every target for a few seconds.
pub fn quick() -> Result<()> {
    run_targets(None, QUICK_SECONDS, &QUICK)
}
