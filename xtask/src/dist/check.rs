//! The package, checked as `cargo xtask test` can afford to: the debug binary packaged like
//! the release one, its contents and metadata read back with `dpkg-deb`, then installed into
//! an empty root with `dpkg --root` (its own database; no chroot, so no Debian base system
//! to bootstrap), run from there, removed and purged.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};

use super::{Options, CONFFILES};
use crate::util;

/// (path in the package, mode and owner `dpkg-deb -c` shows).
const EXPECTED: &[(&str, &str)] = &[
    ("./usr/bin/portcullis", "-rwxr-xr-x root/root"),
    ("./lib/systemd/system/portcullis.service", "-rw-r--r-- root/root"),
    ("./etc/portcullis/portcullis.toml", "-rw-r--r-- root/root"),
    ("./usr/share/man/man1/portcullis.1.gz", "-rw-r--r-- root/root"),
    ("./usr/share/man/man1/portcullis-run.1.gz", "-rw-r--r-- root/root"),
    (
        "./usr/share/man/man1/portcullis-policy-explain.1.gz",
        "-rw-r--r-- root/root",
    ),
    (
        "./usr/share/bash-completion/completions/portcullis",
        "-rw-r--r-- root/root",
    ),
    (
        "./usr/share/zsh/vendor-completions/_portcullis",
        "-rw-r--r-- root/root",
    ),
    (
        "./usr/share/fish/vendor_completions.d/portcullis.fish",
        "-rw-r--r-- root/root",
    ),
    ("./usr/share/doc/portcullis/README.md.gz", "-rw-r--r-- root/root"),
    ("./usr/share/doc/portcullis/copyright", "-rw-r--r-- root/root"),
    (
        "./usr/share/doc/portcullis/changelog.Debian.gz",
        "-rw-r--r-- root/root",
    ),
    (
        "./usr/share/doc/portcullis/examples/example-full.toml",
        "-rw-r--r-- root/root",
    ),
    (
        "./usr/share/doc/portcullis/examples/identities.toml",
        "-rw-r--r-- root/root",
    ),
];

pub fn check() -> Result<()> {
    let started = Instant::now();
    let dir = util::target_dir().join(format!("tmp/dist-check-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let result = run(&dir);
    let _ = fs::remove_dir_all(&dir);
    result.context("dist check (the Debian package of the debug binary)")?;
    eprintln!("xtask: dist check: ok ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn run(dir: &Path) -> Result<()> {
    let binary = util::target_dir().join("debug/portcullis");
    ensure!(
        binary.exists(),
        "no {} (`cargo test` builds it)",
        binary.display()
    );
    let deb = super::build(&Options {
        binary: Some(binary),
        out_dir: dir.to_path_buf(),
        // A debug binary is large; compressing it would be most of this check's time.
        compression: "none",
    })?;
    contents(&deb)?;
    metadata(&deb)?;
    if !util::is_root() {
        // dpkg gives every installed file to root.
        eprintln!("xtask: dist check: not root: the package is built and read, not installed");
        return Ok(());
    }
    install(&deb, &dir.join("root"))
}

/// Every expected path, with its mode and owner; nothing writable by others.
fn contents(deb: &Path) -> Result<()> {
    let listing = util::output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let entries: Vec<(&str, String)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.last()?, format!("{} {}", f.first()?, f.get(1)?)))
        })
        .collect();
    for (path, mode) in EXPECTED {
        match entries.iter().find(|(p, _)| p == path) {
            Some((_, m)) => ensure!(m == mode, "{path} is {m}, expected {mode}"),
            None => bail!("{path} is missing from the package:\n{listing}"),
        }
    }
    for (path, mode) in &entries {
        ensure!(
            mode.ends_with("root/root") && mode.as_bytes().get(8) != Some(&b'w'),
            "{path}: {mode}"
        );
    }
    Ok(())
}

/// The control fields, the conffiles and the maintainer scripts' syntax.
fn metadata(deb: &Path) -> Result<()> {
    let field = |name: &str| util::output(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name));
    ensure!(field("Package")? == "portcullis");
    ensure!(field("Version")? == format!("{}-1", env!("CARGO_PKG_VERSION")));
    let arch = util::output(Command::new("dpkg").arg("--print-architecture"))?;
    ensure!(field("Architecture")? == arch);
    let depends = field("Depends")?;
    ensure!(
        depends.contains("libc6 (>= ") && depends.contains("nftables"),
        "Depends: {depends}"
    );
    let conffiles = util::output(Command::new("dpkg-deb").arg("--info").arg(deb).arg("conffiles"))?;
    ensure!(conffiles == CONFFILES.join("\n"), "conffiles: {conffiles}");
    for script in ["postinst", "prerm", "postrm"] {
        let body = util::output(Command::new("dpkg-deb").arg("--info").arg(deb).arg(script))?;
        util::run(Command::new("sh").args(["-n", "-c", &body]))
            .with_context(|| format!("{script} is not valid sh"))?;
    }
    Ok(())
}

/// `dpkg --root` into an empty directory: `--force-script-chrootless` runs the maintainer
/// scripts from the host with DPKG_ROOT set (they then leave this system's systemd alone),
/// `--force-depends` because the empty root has no libc6 in its database.
fn install(deb: &Path, root: &Path) -> Result<()> {
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(d))?;
    }
    fs::write(admin.join("status"), "")?;
    fs::write(admin.join("available"), "")?;
    let dpkg = |args: &[&str]| -> Result<String> {
        util::output(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .arg(format!("--log={}", root.join("dpkg.log").display()))
                .args(["--force-script-chrootless", "--force-depends"])
                .args(args),
        )
    };
    dpkg(&["--install", deb.to_str().context("a non-UTF-8 path")?])?;
    let status = dpkg(&["--status", "portcullis"])?;
    ensure!(status.contains("Status: install ok installed"), "{status}");

    let bin = root.join("usr/bin/portcullis");
    let version = util::output(Command::new(&bin).arg("--version"))?;
    ensure!(
        version == format!("portcullis {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let config = root.join("etc/portcullis/portcullis.toml");
    let checked = util::output(Command::new(&bin).arg("check").arg("--config").arg(&config))?;
    ensure!(checked.contains(": ok ("), "{checked}");
    // The unit tests/cli.rs verifies with systemd-analyze, byte for byte.
    let unit = root.join("lib/systemd/system/portcullis.service");
    ensure!(
        fs::read(&unit)? == fs::read("configs/portcullis.service")?,
        "the installed unit differs"
    );

    // Removal keeps the configuration (a conffile); purging removes it.
    dpkg(&["--remove", "portcullis"])?;
    ensure!(
        !bin.exists() && !unit.exists(),
        "remove left the binary or the unit"
    );
    ensure!(config.exists(), "remove took the configuration");
    let status = dpkg(&["--status", "portcullis"])?;
    ensure!(status.contains("Status: deinstall ok config-files"), "{status}");
    dpkg(&["--purge", "portcullis"])?;
    ensure!(!config.exists(), "purge left the configuration");
    let left: Vec<PathBuf> = super::walk(root)?
        .into_iter()
        .filter(|p| p.is_file() && !p.starts_with(&admin) && !p.ends_with("dpkg.log"))
        .collect();
    ensure!(left.is_empty(), "purge left files behind: {left:?}");
    Ok(())
}
